/* tlsctx.h - an OpenSSL 3 server context from a certificate, key and CA.
 *
 * One builder for every place that reads TLS files, so `check-config`, the
 * node's start and its reloads accept and refuse exactly the same files,
 * and one for certificates made in memory; both share every protocol
 * setting (versions, options, sessions, ALPN).
 */
#ifndef REGMESH_COMMON_TLSCTX_H
#define REGMESH_COMMON_TLSCTX_H

#include <stddef.h>
#include <openssl/ssl.h>

#define TLSCTX_MIN_TLS12 0x0303
#define TLSCTX_MIN_TLS13 0x0304

/* tlsctx_server_new reads cert (a PEM chain, leaf first) and key, checks
 * they match, and returns a server context in *out: TLS 1.2 (or
 * min_version) to 1.3, ALPN http/1.1, no renegotiation, no compression.
 * With ca, clients must present a certificate it signed. Blocking file I/O:
 * call it off the event loop. Returns 0, or RM_ETLS with a one-line reason
 * naming the file in err (and *out untouched). The caller owns *out
 * (SSL_CTX_free). */
int tlsctx_server_new(SSL_CTX **out, const char *cert, const char *key,
                      const char *ca, int min_version, char *err,
                      size_t errlen);

/* tlsctx_server_new_mem is tlsctx_server_new for a certificate and key in
 * memory, without client verification: the context takes its own
 * references to cert and key (the caller keeps and frees its own) and sends
 * cert alone as the chain. Returns 0 or RM_ETLS with a one-line reason in
 * err. The caller owns *out (SSL_CTX_free). */
int tlsctx_server_new_mem(SSL_CTX **out, X509 *cert, EVP_PKEY *key,
                          int min_version, char *err, size_t errlen);

#endif
