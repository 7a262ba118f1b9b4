/* tlsctx.c - build an OpenSSL server context from PEM files or memory.
 *
 * The files are loaded into a fresh SSL_CTX and checked (chain parses, the
 * key matches the leaf, the CA bundle holds at least one certificate); any
 * failure becomes one line naming the file and OpenSSL's first reason. The
 * protocol floor is TLS 1.2 whatever min_version says: 1.0 and 1.1 are
 * never offered. Certificates made in memory (the proxy's leaves) get the
 * same settings from the same function, tlsctx_server_base.
 */
#include "tlsctx.h"

#include "errors.h"

#include <openssl/err.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>

/* ALPN: we speak HTTP/1.1 only. A client that offers something else (h2
 * alone) proceeds without ALPN rather than failing the handshake, as nginx
 * does without http2. */
static int tlsctx_alpn_select(SSL *ssl, const unsigned char **out,
                              unsigned char *outlen, const unsigned char *in,
                              unsigned inlen, void *arg) {
  (void)ssl;
  (void)arg;
  unsigned char *sel = NULL;
  /* static: OpenSSL points *out into this list */
  static const unsigned char ours[] = "\x08http/1.1";
  if (SSL_select_next_proto(&sel, outlen, ours, sizeof ours - 1, in, inlen) ==
      OPENSSL_NPN_NEGOTIATED) {
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

static int tlsctx_fail(char *err, size_t errlen, const char *what,
                       const char *file) {
  char reason[256] = "unknown reason";
  unsigned long e = ERR_peek_last_error();
  if (e) {
    const char *r = ERR_reason_error_string(e);
    if (r)
      snprintf(reason, sizeof reason, "%s", r);
    else
      ERR_error_string_n(e, reason, sizeof reason);
  }
  ERR_clear_error();
  if (file)
    snprintf(err, errlen, "%s: %s (%s)", file, what, reason);
  else
    snprintf(err, errlen, "%s (%s)", what, reason);
  return RM_ETLS;
}

/* tlsctx_server_base makes a server context with the settings every
 * regmesh listener shares, whatever its certificate comes from, so a proxy
 * leaf and a configured listener negotiate exactly alike. */
static int tlsctx_server_base(SSL_CTX **out, int min_version, char *err,
                              size_t errlen) {
  ERR_clear_error();
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx)
    return tlsctx_fail(err, errlen, "cannot create a TLS context", NULL);
  int floor = min_version >= TLS1_3_VERSION ? TLS1_3_VERSION : TLS1_2_VERSION;
  if (!SSL_CTX_set_min_proto_version(ctx, floor) ||
      !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)) {
    int rc = tlsctx_fail(err, errlen, "cannot set the TLS versions", NULL);
    SSL_CTX_free(ctx);
    return rc;
  }
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE);
  /* AES-128-GCM first (OpenSSL's default puts AES-256 first): the clients'
   * own first choice, and the bulk of a pull is their decryption, which
   * costs a quarter less (docs/decisions.md) */
  if (!SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                     "TLS_CHACHA20_POLY1305_SHA256")) {
    int rc = tlsctx_fail(err, errlen, "cannot set the TLS 1.3 ciphersuites", NULL);
    SSL_CTX_free(ctx);
    return rc;
  }
  /* idle keep-alive connections give their record buffers back */
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
  /* resumption with client certificates needs a context id */
  static const unsigned char sid_ctx[] = "regmesh";
  SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1);
  SSL_CTX_set_alpn_select_cb(ctx, tlsctx_alpn_select, NULL);
  *out = ctx;
  return 0;
}

int tlsctx_server_new(SSL_CTX **out, const char *cert, const char *key,
                      const char *ca, int min_version, char *err,
                      size_t errlen) {
  SSL_CTX *ctx;
  int rc = tlsctx_server_base(&ctx, min_version, err, errlen);
  if (rc != 0)
    return rc;
  rc = RM_ETLS;
  if (!cert || !key) {
    snprintf(err, errlen, "tls needs both cert and key");
    goto fail;
  }
  if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
    rc = tlsctx_fail(err, errlen, "no usable PEM certificate", cert);
    goto fail;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
    rc = tlsctx_fail(err, errlen, "no usable PEM private key", key);
    goto fail;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    rc = tlsctx_fail(err, errlen, "the key does not match the certificate", key);
    goto fail;
  }
  if (ca) {
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
    if (!names || sk_X509_NAME_num(names) == 0 ||
        SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
      sk_X509_NAME_pop_free(names, X509_NAME_free);
      rc = tlsctx_fail(err, errlen, "no usable PEM CA certificate", ca);
      goto fail;
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                       NULL);
  }
  *out = ctx;
  return 0;
fail:
  SSL_CTX_free(ctx);
  return rc;
}

int tlsctx_server_new_mem(SSL_CTX **out, X509 *cert, EVP_PKEY *key,
                          int min_version, char *err, size_t errlen) {
  SSL_CTX *ctx;
  int rc = tlsctx_server_base(&ctx, min_version, err, errlen);
  if (rc != 0)
    return rc;
  /* no chain certificates and an empty store: only the leaf is sent, as
   * the issuer is the client's own trust anchor */
  if (SSL_CTX_use_certificate(ctx, cert) != 1 ||
      SSL_CTX_use_PrivateKey(ctx, key) != 1) {
    rc = tlsctx_fail(err, errlen, "cannot use the certificate or key", NULL);
  } else if (SSL_CTX_check_private_key(ctx) != 1) {
    rc = tlsctx_fail(err, errlen, "the key does not match the certificate", NULL);
  } else {
    *out = ctx;
    return 0;
  }
  SSL_CTX_free(ctx);
  return rc;
}
