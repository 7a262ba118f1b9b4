/* digest.c - digest string validation and SHA-256 through OpenSSL's EVP API.
 *
 * Validation is strict (lowercase hex only) because the hex becomes a file
 * name: anything looser would let two spellings name one blob or let a
 * request reach outside the store.
 */
#include "digest.h"
#include "errors.h"

#include <openssl/evp.h>
#include <string.h>
#include <uv.h>

int digest_hex_valid(const char *hex) {
  size_t i;
  for (i = 0; hex[i]; i++) {
    char c = hex[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
      return 0;
  }
  return i == DIGEST_HEX_LEN;
}

int digest_parse(const char *s, size_t len, char hex_out[DIGEST_HEX_LEN + 1]) {
  if (len != DIGEST_STR_LEN || memcmp(s, "sha256:", 7) != 0)
    return RM_EPARSE;
  char tmp[DIGEST_HEX_LEN + 1];
  memcpy(tmp, s + 7, DIGEST_HEX_LEN);
  tmp[DIGEST_HEX_LEN] = '\0';
  if (!digest_hex_valid(tmp))
    return RM_EPARSE;
  memcpy(hex_out, tmp, sizeof tmp);
  return 0;
}

int sha256_init(struct sha256_ctx *c) {
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  if (!md)
    return UV_ENOMEM;
  if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
    EVP_MD_CTX_free(md);
    return UV_ENOMEM;
  }
  c->md = md;
  return 0;
}

void sha256_update(struct sha256_ctx *c, const void *p, size_t n) {
  EVP_DigestUpdate((EVP_MD_CTX *)c->md, p, n);
}

static void to_hex(const unsigned char *d, unsigned n, char *out) {
  static const char hx[] = "0123456789abcdef";
  for (unsigned i = 0; i < n; i++) {
    out[2 * i] = hx[d[i] >> 4];
    out[2 * i + 1] = hx[d[i] & 15];
  }
  out[2 * n] = '\0';
}

void sha256_final(struct sha256_ctx *c, char hex_out[DIGEST_HEX_LEN + 1]) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  EVP_DigestFinal_ex((EVP_MD_CTX *)c->md, d, &n);
  to_hex(d, n, hex_out);
  sha256_free(c);
}

void sha256_free(struct sha256_ctx *c) {
  if (c->md)
    EVP_MD_CTX_free((EVP_MD_CTX *)c->md);
  c->md = NULL;
}

int sha256_hex(const void *p, size_t n, char hex_out[DIGEST_HEX_LEN + 1]) {
  struct sha256_ctx c;
  int r = sha256_init(&c);
  if (r)
    return r;
  sha256_update(&c, p, n);
  sha256_final(&c, hex_out);
  return 0;
}
