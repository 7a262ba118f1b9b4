/* digest.h - content digests ("sha256:<64 hex>") and streaming SHA-256.
 *
 * Only sha256 is accepted: it is what every registry uses for content
 * addressing, and a path is only ever built from a validated digest's hex.
 */
#ifndef REGMESH_COMMON_DIGEST_H
#define REGMESH_COMMON_DIGEST_H

#include <stddef.h>

#define DIGEST_HEX_LEN 64
#define DIGEST_STR_LEN (7 + DIGEST_HEX_LEN) /* "sha256:" + hex */

/* digest_parse validates "sha256:<64 lowercase hex>" of length len and, on
 * success, copies the hex (NUL-terminated) into hex_out[65]. Returns 0 or
 * RM_EPARSE. */
int digest_parse(const char *s, size_t len, char hex_out[DIGEST_HEX_LEN + 1]);
/* digest_hex_valid: 64 lowercase hex characters, nothing else. */
int digest_hex_valid(const char *hex);

struct sha256_ctx {
  void *md; /* EVP_MD_CTX, owned */
};
int sha256_init(struct sha256_ctx *c);
void sha256_update(struct sha256_ctx *c, const void *p, size_t n);
/* sha256_final writes 64 hex chars + NUL and releases the context. */
void sha256_final(struct sha256_ctx *c, char hex_out[DIGEST_HEX_LEN + 1]);
/* sha256_free releases a context that was not finalised (safe after final). */
void sha256_free(struct sha256_ctx *c);
/* sha256_hex hashes a buffer in one call. */
int sha256_hex(const void *p, size_t n, char hex_out[DIGEST_HEX_LEN + 1]);

#endif
