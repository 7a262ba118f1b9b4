/* leafcert.h - TLS server certificates for intercepted hosts, made on the fly.
 *
 * The proxy listener terminates TLS for configured upstream hosts (docs/
 * proxy.md). For each host a leaf certificate (SAN = the host, short-lived)
 * is signed by the configured proxy CA the first time it is needed and kept
 * in a small cache, each with a ready server SSL_CTX; one EC P-256 key made
 * at start serves every leaf, so minting is one signature and one SSL_CTX
 * (about 0.2-0.25 ms with OpenSSL 3.0, most of it SSL_CTX_new: fine on the
 * loop, and once per host per renewal). The leaf is sent alone: clients
 * trust the proxy CA itself. Not thread-safe: the loop thread's.
 */
#ifndef REGMESH_NODE_LEAFCERT_H
#define REGMESH_NODE_LEAFCERT_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct ssl_ctx_st; /* OpenSSL's SSL_CTX */
struct leafcert;

#define LEAFCERT_MAX_CACHED 256

struct leafcert_stats {
  uint64_t minted;  /* leaves signed so far (first use and renewals) */
  uint64_t hits;    /* served from the cache */
  uint64_t failed;  /* refused hosts or signing errors */
  unsigned cached;  /* leaves in the cache now */
};

/* leafcert_new loads the CA certificate and key (blocking: call at start),
 * checks they match, that the certificate is a CA (basicConstraints
 * CA:TRUE) and unexpired, makes the leaf key and signs one trial leaf.
 * ttl_ms is each leaf's lifetime, 1 s to 3650 days (capped at the CA's own
 * notAfter). Returns 0 or RM_ETLS / UV_E* (UV_EINVAL for ttl_ms) with a
 * one-line reason naming the file in err. The caller owns *out
 * (leafcert_free). */
int leafcert_new(struct leafcert **out, const char *ca_cert_file, const char *ca_key_file,
                 uint64_t ttl_ms, char *err, size_t errlen);
/* leafcert_ctx returns a server SSL_CTX whose certificate is valid for host
 * (a DNS name of any case, or an IPv4/IPv6 literal without brackets) at
 * `now`, from the cache or minted now; a cached leaf with less than a
 * quarter of its life left is replaced, and the least recently used of
 * LEAFCERT_MAX_CACHED goes to make room. The caller gets its own reference
 * (SSL_CTX_free); contexts handed out stay usable after their leaf is
 * replaced or evicted, and after leafcert_free. NULL for a host that is not
 * a valid name or when signing fails (logged; a leaf due for renewal is
 * still returned while valid if its successor cannot be signed). */
struct ssl_ctx_st *leafcert_ctx(struct leafcert *lc, const char *host, time_t now);
void leafcert_get_stats(const struct leafcert *lc, struct leafcert_stats *st);
/* leafcert_free releases the CA, the keys and the cache's references; NULL
 * is fine. */
void leafcert_free(struct leafcert *lc);

#endif
