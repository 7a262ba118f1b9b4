/* leafcert.c - server certificates for the proxy's intercepted hosts.
 *
 * The proxy listener answers TLS for registry hosts it does not own, so for
 * each host it needs a certificate the client trusts: the operator's proxy
 * CA signs one the first time the host is seen, for the one key made at
 * start. Signing goes through ca_cert_sign (ca.c, the server profile) and
 * the context through tlsctx_server_new_mem, so a leaf holds what every
 * regmesh certificate holds and negotiates like every other listener.
 *
 * Leaves are found by host in a strmap and kept on a list in order of use;
 * when the cache is full the least recently used one goes. A leaf is
 * replaced once less than a quarter of its life is left, so a client never
 * gets one about to expire. Time is always the caller's `now`, so tests
 * need no clock. Everything runs on the loop thread.
 */
#include "leafcert.h"

#include "../common/errors.h"
#include "../common/log.h"
#include "../common/strmap.h"
#include "../common/tlsctx.h"
#include "ca.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define LEAF_HOST_MAX 253     /* a DNS name's limit; IP literals are shorter */
#define LEAF_BACKDATE_SEC 300 /* a client whose clock is a little behind */
#define LEAF_TTL_MIN_MS 1000  /* certificate times have whole seconds */
#define LEAF_TTL_MAX_MS ((uint64_t)CA_ISSUE_MAX_DAYS * 86400 * 1000)
/* leafcert_new signs one for this name to prove the CA key can sign */
#define LEAF_PROBE_HOST "regmesh.invalid"

struct leaf {
  struct leaf *prev, *next; /* on lc's list, most recently used first */
  SSL_CTX *ctx;             /* ours; each connection holds its own reference */
  time_t minted, not_before, not_after;
  char host[]; /* canonical: lower case, or inet_ntop's form of an address */
};

/* Owns the CA, both keys and every leaf (the strmap holds no references of
 * its own: a leaf is on the list exactly when it is in the map). */
struct leafcert {
  X509 *ca;
  EVP_PKEY *ca_key;
  EVP_PKEY *key;       /* every leaf's */
  EVP_PKEY *pub;       /* its public half, quick to encode (pub_quick) */
  time_t ca_not_after; /* no leaf outlives its issuer */
  time_t ttl;          /* seconds */
  struct strmap by_host;
  struct leaf *head, *tail;
  struct leafcert_stats st;
  int capped_logged;
};

/* host_canon writes host's canonical form to out (LEAF_HOST_MAX + 1 bytes),
 * so that one host has one cache entry whatever its spelling. Returns
 * CA_SAN_IP, CA_SAN_DNS, or 0 for anything else. */
static int host_canon(const char *host, char *out) {
  unsigned char a[16];
  size_t n = strnlen(host, LEAF_HOST_MAX + 1);
  if (n == 0 || n > LEAF_HOST_MAX)
    return 0;
  if (inet_pton(AF_INET, host, a) == 1)
    return inet_ntop(AF_INET, a, out, LEAF_HOST_MAX + 1) ? CA_SAN_IP : 0;
  if (inet_pton(AF_INET6, host, a) == 1)
    return inet_ntop(AF_INET6, a, out, LEAF_HOST_MAX + 1) ? CA_SAN_IP : 0;
  if (!ca_dns_name_ok(host, 0))
    return 0;
  for (size_t i = 0; i <= n; i++)
    out[i] = host[i] >= 'A' && host[i] <= 'Z' ? (char)(host[i] - 'A' + 'a') : host[i];
  return CA_SAN_DNS;
}

/* host_printable: a refused host as it may go in a log line, cut short
 * and with anything but printable ASCII as '?'. */
static void host_printable(const char *host, char *out, size_t cap) {
  size_t i = 0;
  for (; host[i] != '\0' && i + 1 < cap; i++)
    out[i] = host[i] >= 0x20 && host[i] < 0x7f ? host[i] : '?';
  out[i] = '\0';
}

/* asn1_time_t converts a certificate time to seconds since the epoch. */
static int asn1_time_t(const ASN1_TIME *t, time_t *out) {
  ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
  int days, secs, ok = epoch != NULL && ASN1_TIME_diff(&days, &secs, epoch, t) == 1;
  ASN1_TIME_free(epoch);
  if (ok)
    *out = (time_t)days * 86400 + secs;
  return ok;
}

/* pub_quick returns key's public half as a legacy (not provider) key, or
 * NULL. OpenSSL 3.0 writes a provider key into a certificate through its
 * encoder framework, about 270 us per X509_set_pubkey, more than the rest
 * of a leaf; a legacy key takes the old per-type encoder, under 5 us.
 * d2i_PublicKey of the EC point onto a parameters-only key makes one. */
static EVP_PKEY *pub_quick(EVP_PKEY *key) {
  unsigned char *pt = NULL;
  int n = i2d_PublicKey(key, &pt);
  const unsigned char *p = pt;
  EVP_PKEY *pub = EVP_PKEY_new();
  if (n <= 0 || pub == NULL || EVP_PKEY_copy_parameters(pub, key) != 1 ||
      d2i_PublicKey(EVP_PKEY_EC, &pub, &p, n) == NULL || EVP_PKEY_eq(pub, key) != 1) {
    EVP_PKEY_free(pub);
    pub = NULL;
  }
  OPENSSL_free(pt);
  ERR_clear_error();
  return pub;
}

/* leaf_mint signs a leaf for host (canonical, of SAN type) valid from a
 * little before now for lc->ttl, or until the CA expires if sooner, and
 * wraps it in a server context. Returns 0 or RM_ETLS with err set. */
static int leaf_mint(struct leafcert *lc, const char *host, int type, time_t now,
                     SSL_CTX **out, time_t *not_before, time_t *not_after, char *err,
                     size_t errlen) {
  if (now >= lc->ca_not_after)
    return ca_fail(err, errlen, RM_ETLS, "the proxy CA certificate has expired");
  struct ca_san san = {(enum ca_san_type)type, host};
  struct ca_cert_spec spec = {.profile = CA_PROFILE_SERVER,
                              .cn = host, /* cut to 64: the SAN has all of it */
                              .san = &san,
                              .n_san = 1,
                              .not_before = now - LEAF_BACKDATE_SEC,
                              .not_after = now + lc->ttl};
  if (spec.not_after > lc->ca_not_after) {
    spec.not_after = lc->ca_not_after;
    if (!lc->capped_logged) { /* once: it holds for every host from now on */
      LOG_W("leafcert: the proxy CA expires within the leaf lifetime; leaves end "
            "with it and are renewed ever more often");
      lc->capped_logged = 1;
    }
  }
  ERR_clear_error();
  X509 *x = ca_cert_sign(&spec, lc->pub ? lc->pub : lc->key, lc->ca, lc->ca_key);
  if (x == NULL)
    return ca_ssl_fail(err, errlen, "signing the leaf");
  int r = tlsctx_server_new_mem(out, x, lc->key, TLSCTX_MIN_TLS12, err, errlen);
  X509_free(x); /* the context holds its own reference */
  *not_before = spec.not_before;
  *not_after = spec.not_after;
  return r;
}

/* leaf_fresh: valid at now with more than a quarter of its life left.
 * Before not_before (the clock went back) it is not. */
static int leaf_fresh(const struct leaf *l, time_t now) {
  if (now < l->not_before || now >= l->not_after)
    return 0;
  /* bounded by the lifetime once now >= not_before: no overflow */
  return (l->not_after - now) * 4 > l->not_after - l->minted;
}

static void lru_unlink(struct leafcert *lc, struct leaf *l) {
  if (l->prev)
    l->prev->next = l->next;
  else
    lc->head = l->next;
  if (l->next)
    l->next->prev = l->prev;
  else
    lc->tail = l->prev;
  l->prev = l->next = NULL;
}

static void lru_push_front(struct leafcert *lc, struct leaf *l) {
  l->prev = NULL;
  l->next = lc->head;
  if (lc->head)
    lc->head->prev = l;
  lc->head = l;
  if (lc->tail == NULL)
    lc->tail = l;
}

static void leaf_evict(struct leafcert *lc, struct leaf *l) {
  lru_unlink(lc, l);
  strmap_del(&lc->by_host, l->host);
  SSL_CTX_free(l->ctx);
  free(l);
}

int leafcert_new(struct leafcert **out, const char *ca_cert_file, const char *ca_key_file,
                 uint64_t ttl_ms, char *err, size_t errlen) {
  if (ca_cert_file == NULL || ca_key_file == NULL)
    return ca_fail(err, errlen, UV_EINVAL, "the proxy CA needs both cert and key");
  if (ttl_ms < LEAF_TTL_MIN_MS || ttl_ms > LEAF_TTL_MAX_MS)
    return ca_fail(err, errlen, UV_EINVAL, "leaf lifetime %llu ms: expected 1 s to %d days",
                (unsigned long long)ttl_ms, CA_ISSUE_MAX_DAYS);
  struct leafcert *lc = calloc(1, sizeof *lc);
  if (lc == NULL)
    return ca_fail(err, errlen, UV_ENOMEM, "out of memory");
  strmap_init(&lc->by_host);
  lc->ttl = (time_t)(ttl_ms / 1000);
  int r = ca_load_pem(ca_cert_file, ca_key_file, &lc->ca, &lc->ca_key, err, errlen);
  if (r != 0)
    goto fail;
  /* flags also parse the extensions: a malformed one sets EXFLAG_INVALID */
  uint32_t flags = X509_get_extension_flags(lc->ca);
  if (X509_check_private_key(lc->ca, lc->ca_key) != 1) {
    char what[64 + 2 * 256];
    snprintf(what, sizeof what, "%.256s does not belong to %.256s", ca_key_file,
             ca_cert_file);
    r = ca_ssl_fail(err, errlen, what);
  } else if ((flags & EXFLAG_INVALID) || !(flags & EXFLAG_CA)) {
    /* clients refuse a leaf whose issuer is not a CA; say so at start */
    r = ca_fail(err, errlen, RM_ETLS,
             "%s: not a CA certificate (needs basicConstraints CA:TRUE)", ca_cert_file);
  } else if ((flags & EXFLAG_KUSAGE) &&
             !(X509_get_key_usage(lc->ca) & KU_KEY_CERT_SIGN)) {
    r = ca_fail(err, errlen, RM_ETLS, "%s: its keyUsage does not allow signing certificates",
             ca_cert_file);
  } else if (!asn1_time_t(X509_get0_notAfter(lc->ca), &lc->ca_not_after)) {
    r = ca_ssl_fail(err, errlen, "reading the proxy CA's notAfter");
  } else if (lc->ca_not_after <= time(NULL)) {
    r = ca_fail(err, errlen, RM_ETLS, "%s: the CA certificate has expired", ca_cert_file);
  } else if ((lc->key = EVP_EC_gen("P-256")) == NULL) {
    r = ca_ssl_fail(err, errlen, "generating the leaf key");
  } else {
    if ((lc->pub = pub_quick(lc->key)) == NULL) /* correct, only slower */
      LOG_W("leafcert: no quick public key; each leaf costs 0.3 ms more");
    /* one leaf now, so a CA key that cannot sign (say an AKID-less CA or
     * an Ed25519 key) is refused at start rather than on every request */
    SSL_CTX *probe = NULL;
    time_t nb, na;
    r = leaf_mint(lc, LEAF_PROBE_HOST, CA_SAN_DNS, time(NULL), &probe, &nb, &na, err,
                  errlen);
    SSL_CTX_free(probe);
  }
  if (r != 0)
    goto fail;
  *out = lc;
  return 0;
fail:
  leafcert_free(lc);
  return r;
}

struct ssl_ctx_st *leafcert_ctx(struct leafcert *lc, const char *host, time_t now) {
  char canon[LEAF_HOST_MAX + 1], err[512];
  int type = host ? host_canon(host, canon) : 0;
  if (type == 0) {
    char shown[81];
    host_printable(host ? host : "", shown, sizeof shown);
    LOG_W("leafcert: no certificate for '%s': not a DNS name or IP address", shown);
    lc->st.failed++;
    return NULL;
  }
  struct leaf *l = strmap_get(&lc->by_host, canon);
  if (l && leaf_fresh(l, now)) {
    lc->st.hits++;
    lru_unlink(lc, l);
    lru_push_front(lc, l);
    SSL_CTX_up_ref(l->ctx);
    return l->ctx;
  }
  SSL_CTX *ctx = NULL;
  time_t nb, na;
  if (leaf_mint(lc, canon, type, now, &ctx, &nb, &na, err, sizeof err) != 0) {
    lc->st.failed++;
    /* a leaf due for renewal still serves while it is valid */
    int old = l && now >= l->not_before && now < l->not_after;
    LOG_E("leafcert: %s: %s%s", canon, err, old ? "; serving the previous leaf" : "");
    if (!old)
      return NULL;
    SSL_CTX_up_ref(l->ctx);
    return l->ctx;
  }
  if (l == NULL) {
    if (lc->by_host.count >= LEAFCERT_MAX_CACHED && lc->tail)
      leaf_evict(lc, lc->tail);
    size_t n = strlen(canon) + 1;
    l = calloc(1, sizeof *l + n);
    if (l == NULL || strmap_put(&lc->by_host, canon, l) != 0) {
      free(l);
      SSL_CTX_free(ctx);
      lc->st.failed++;
      LOG_E("leafcert: %s: out of memory", canon);
      return NULL;
    }
    memcpy(l->host, canon, n);
  } else {
    lru_unlink(lc, l);
    SSL_CTX_free(l->ctx); /* connections on the old leaf keep their own refs */
  }
  l->ctx = ctx;
  l->minted = now;
  l->not_before = nb;
  l->not_after = na;
  lru_push_front(lc, l);
  lc->st.minted++;
  LOG_D("leafcert: minted a leaf for %s, valid %lld s", canon, (long long)(na - now));
  SSL_CTX_up_ref(ctx);
  return ctx;
}

void leafcert_get_stats(const struct leafcert *lc, struct leafcert_stats *st) {
  *st = lc->st;
  st->cached = (unsigned)lc->by_host.count;
}

void leafcert_free(struct leafcert *lc) {
  if (lc == NULL)
    return;
  for (struct leaf *l = lc->head, *next; l; l = next) {
    next = l->next;
    SSL_CTX_free(l->ctx);
    free(l);
  }
  strmap_free(&lc->by_host);
  X509_free(lc->ca);
  EVP_PKEY_free(lc->ca_key);
  EVP_PKEY_free(lc->key);
  EVP_PKEY_free(lc->pub);
  free(lc);
}
