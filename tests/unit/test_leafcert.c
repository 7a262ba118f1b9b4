/* test_leafcert.c - the proxy's leaf certificates, minted by a real CA.
 *
 * A throwaway CA made with ca_init in a temp dir (plus a node certificate
 * from ca_issue, a valid certificate that is not a CA) signs every leaf.
 * Leaves are checked the way a client would check them: X509_verify_cert
 * against the CA for the sslserver purpose, X509_check_host/_ip_asc, and a
 * full handshake over memory BIOs with SNI and verification on. Time is the
 * `now` argument, so renewal and expiry are tested without waiting.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "ca.h"
#include "errors.h"
#include "leafcert.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define TTL_S 86400
#define TTL_MS ((uint64_t)TTL_S * 1000)

static struct {
  char base[64];
  char dir[96];
  char ca_crt[128], ca_key[128], n1_crt[128], n1_key[128];
  X509 *ca;
} g;

static int group_setup(void **state) {
  (void)state;
  char err[512];
  strcpy(g.base, "/tmp/rm_leafcert_XXXXXX");
  if (!mkdtemp(g.base))
    return -1;
  snprintf(g.dir, sizeof g.dir, "%s/ca", g.base);
  snprintf(g.ca_crt, sizeof g.ca_crt, "%s/ca.crt", g.dir);
  snprintf(g.ca_key, sizeof g.ca_key, "%s/ca.key", g.dir);
  snprintf(g.n1_crt, sizeof g.n1_crt, "%s/n1.crt", g.dir);
  snprintf(g.n1_key, sizeof g.n1_key, "%s/n1.key", g.dir);
  if (ca_init(g.dir, err, sizeof err) != 0) {
    fprintf(stderr, "ca_init: %s\n", err);
    return -1;
  }
  struct ca_issue_opts o = {.dir = g.dir, .name = "n1", .days = 30};
  if (ca_issue(&o, err, sizeof err) != 0) {
    fprintf(stderr, "ca_issue: %s\n", err);
    return -1;
  }
  FILE *f = fopen(g.ca_crt, "r");
  if (!f)
    return -1;
  g.ca = PEM_read_X509(f, NULL, NULL, NULL);
  fclose(f);
  return g.ca ? 0 : -1;
}

static int group_teardown(void **state) {
  (void)state;
  static const char *files[] = {"ca.crt", "ca.key", "n1.crt", "n1.key"};
  char p[160];
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    snprintf(p, sizeof p, "%s/%s", g.dir, files[i]);
    unlink(p);
  }
  rmdir(g.dir);
  rmdir(g.base);
  X509_free(g.ca);
  return 0;
}

static struct leafcert *lc_new(void) {
  struct leafcert *lc = NULL;
  char err[512] = "";
  int r = leafcert_new(&lc, g.ca_crt, g.ca_key, TTL_MS, err, sizeof err);
  if (r != 0)
    fprintf(stderr, "leafcert_new: %s\n", err);
  assert_int_equal(r, 0);
  assert_non_null(lc);
  return lc;
}

/* Each test that mints gets a fresh cache in *state (lc_setup), freed
 * after it (lc_teardown); one that frees it early sets *state to NULL. */
static int lc_setup(void **state) {
  *state = lc_new();
  return 0;
}

static int lc_teardown(void **state) {
  leafcert_free(*state);
  return 0;
}

static struct leafcert_stats stats(const struct leafcert *lc) {
  struct leafcert_stats st;
  leafcert_get_stats(lc, &st);
  return st;
}

/* expect_stats: every counter of lc is as in want. */
static void expect_stats(const struct leafcert *lc, struct leafcert_stats want) {
  struct leafcert_stats st = stats(lc);
  assert_int_equal(st.minted, want.minted);
  assert_int_equal(st.hits, want.hits);
  assert_int_equal(st.failed, want.failed);
  assert_int_equal(st.cached, want.cached);
}

/* ctx_ok: leafcert_ctx for host at now, which must succeed. */
static SSL_CTX *ctx_ok(struct leafcert *lc, const char *host, time_t now) {
  SSL_CTX *ctx = leafcert_ctx(lc, host, now);
  assert_non_null(ctx);
  return ctx;
}

/* verify: X509_verify_cert of x against the CA alone, as a TLS server, at t. */
static int verify(X509 *x, time_t t) {
  X509_STORE *store = X509_STORE_new();
  X509_STORE_CTX *sc = X509_STORE_CTX_new();
  assert_non_null(store);
  assert_non_null(sc);
  assert_int_equal(X509_STORE_add_cert(store, g.ca), 1);
  assert_int_equal(X509_STORE_CTX_init(sc, store, x, NULL), 1);
  assert_int_equal(X509_STORE_CTX_set_purpose(sc, X509_PURPOSE_SSL_SERVER), 1);
  X509_STORE_CTX_set_time(sc, 0, t);
  int ok = X509_verify_cert(sc);
  if (ok != 1)
    fprintf(stderr, "verify: %s\n",
            X509_verify_cert_error_string(X509_STORE_CTX_get_error(sc)));
  X509_STORE_CTX_free(sc);
  X509_STORE_free(store);
  return ok;
}

static time_t asn1_to_time(const ASN1_TIME *a) {
  struct tm tm;
  assert_int_equal(ASN1_TIME_to_tm(a, &tm), 1);
  return timegm(&tm);
}

static void test_leaf_verifies(void **state) {
  struct leafcert *lc = *state;
  time_t now = time(NULL);
  SSL_CTX *ctx = ctx_ok(lc, "ghcr.test", now);
  X509 *x = SSL_CTX_get0_certificate(ctx);
  assert_non_null(x);
  assert_int_equal(verify(x, now), 1);
  assert_int_equal(X509_check_host(x, "ghcr.test", 0, 0, NULL), 1);
  assert_int_not_equal(X509_check_host(x, "other.test", 0, 0, NULL), 1);
  assert_int_not_equal(X509_check_ip_asc(x, "127.0.0.5", 0), 1);

  /* what a client is shown */
  assert_int_equal(X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(g.ca)),
                   0);
  char cn[128];
  assert_int_equal(
      X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn),
      9);
  assert_string_equal(cn, "ghcr.test");
  assert_int_equal(X509_get_signature_nid(x), NID_ecdsa_with_SHA256);
  assert_int_equal(asn1_to_time(X509_get0_notBefore(x)), now - 300);
  assert_int_equal(asn1_to_time(X509_get0_notAfter(x)), now + TTL_S);
  const ASN1_INTEGER *serial = X509_get0_serialNumber(x);
  BIGNUM *bn = ASN1_INTEGER_to_BN(serial, NULL);
  assert_non_null(bn);
  assert_false(BN_is_negative(bn));
  assert_in_range(BN_num_bytes(bn), 8, 16);
  BN_free(bn);
  uint32_t flags = X509_get_extension_flags(x);
  assert_false(flags & EXFLAG_CA);
  assert_true(flags & EXFLAG_BCONS);
  assert_int_equal(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE);
  assert_int_equal(X509_get_extended_key_usage(x), XKU_SSL_SERVER);
  int crit = -1;
  BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(x, NID_basic_constraints, &crit, NULL);
  assert_non_null(bc);
  assert_int_equal(crit, 1);
  BASIC_CONSTRAINTS_free(bc);
  ASN1_BIT_STRING *ku = X509_get_ext_d2i(x, NID_key_usage, &crit, NULL);
  assert_non_null(ku);
  assert_int_equal(crit, 1);
  ASN1_BIT_STRING_free(ku);
  assert_non_null(X509_get0_subject_key_id(x));
  assert_int_equal(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(x),
                                         X509_get0_subject_key_id(g.ca)),
                   0);
  GENERAL_NAMES *san = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  assert_non_null(san);
  assert_int_equal(sk_GENERAL_NAME_num(san), 1);
  GENERAL_NAMES_free(san);

  /* a different spelling of the same host is the same leaf */
  SSL_CTX *again = leafcert_ctx(lc, "GHCR.Test", now);
  assert_ptr_equal(SSL_CTX_get0_certificate(again), x);
  SSL_CTX_free(again);
  SSL_CTX_free(ctx);
}

static void test_ip_hosts(void **state) {
  struct leafcert *lc = *state;
  time_t now = time(NULL);
  SSL_CTX *v4 = ctx_ok(lc, "127.0.0.5", now);
  SSL_CTX *v6 = ctx_ok(lc, "fd00::5", now);
  SSL_CTX *v6b = ctx_ok(lc, "fd00:0::0005", now); /* same address */
  X509 *x4 = SSL_CTX_get0_certificate(v4), *x6 = SSL_CTX_get0_certificate(v6);
  assert_int_equal(verify(x4, now), 1);
  assert_int_equal(verify(x6, now), 1);
  assert_int_equal(X509_check_ip_asc(x4, "127.0.0.5", 0), 1);
  assert_int_not_equal(X509_check_ip_asc(x4, "127.0.0.6", 0), 1);
  /* an IP SAN, not a DNS one that merely spells the address */
  assert_int_not_equal(
      X509_check_host(x4, "127.0.0.5", 0, X509_CHECK_FLAG_NEVER_CHECK_SUBJECT, NULL), 1);
  assert_int_equal(X509_check_ip_asc(x6, "fd00::5", 0), 1);
  assert_ptr_equal(SSL_CTX_get0_certificate(v6b), x6);
  expect_stats(lc, (struct leafcert_stats){.minted = 2, .hits = 1, .cached = 2});
  SSL_CTX_free(v4);
  SSL_CTX_free(v6);
  SSL_CTX_free(v6b);
}

static void test_cache_and_renewal(void **state) {
  struct leafcert *lc = *state;
  time_t t0 = time(NULL);
  SSL_CTX *a = ctx_ok(lc, "ghcr.test", t0);
  SSL_CTX *b = leafcert_ctx(lc, "ghcr.test", t0 + 1);
  assert_ptr_equal(a, b);
  X509 *xa = SSL_CTX_get0_certificate(a);
  expect_stats(lc, (struct leafcert_stats){.minted = 1, .hits = 1, .cached = 1});
  SSL_CTX_free(b);

  /* reused while more than a quarter of the life is left */
  SSL_CTX *c = leafcert_ctx(lc, "ghcr.test", t0 + TTL_S * 3 / 4 - 1);
  assert_ptr_equal(SSL_CTX_get0_certificate(c), xa);
  SSL_CTX_free(c);
  assert_int_equal(stats(lc).minted, 1);

  /* past three quarters: a new leaf; the old context lives on for us */
  time_t t1 = t0 + TTL_S * 3 / 4 + 1;
  SSL_CTX *d = ctx_ok(lc, "ghcr.test", t1);
  assert_ptr_not_equal(d, a);
  X509 *xd = SSL_CTX_get0_certificate(d);
  assert_int_not_equal(
      ASN1_INTEGER_cmp(X509_get0_serialNumber(xa), X509_get0_serialNumber(xd)), 0);
  assert_int_equal(asn1_to_time(X509_get0_notAfter(xd)), t1 + TTL_S);
  assert_int_equal(verify(xa, t0), 1); /* still ours, still whole */
  assert_int_equal(verify(xd, t1), 1);
  expect_stats(lc, (struct leafcert_stats){.minted = 2, .hits = 2, .cached = 1});
  SSL_CTX_free(a);

  /* a clock set back past notBefore gets a leaf valid now */
  SSL_CTX *e = leafcert_ctx(lc, "ghcr.test", t1 - 3600);
  assert_ptr_not_equal(SSL_CTX_get0_certificate(e), xd);
  assert_int_equal(verify(SSL_CTX_get0_certificate(e), t1 - 3600), 1);
  assert_int_equal(stats(lc).minted, 3);
  SSL_CTX_free(e);
  SSL_CTX_free(d);
}

static void test_ca_expiry(void **state) {
  struct leafcert *lc = *state;
  time_t end = asn1_to_time(X509_get0_notAfter(g.ca));
  /* no leaf outlives its CA */
  SSL_CTX *ctx = ctx_ok(lc, "ghcr.test", end - 3600);
  X509 *x = SSL_CTX_get0_certificate(ctx);
  assert_int_equal(ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(g.ca)), 0);
  assert_int_equal(verify(x, end - 3600), 1);
  SSL_CTX_free(ctx);
  /* after it, nothing is signed */
  assert_null(leafcert_ctx(lc, "other.test", end));
  assert_int_equal(stats(lc).failed, 1);
}

static void test_invalid_hosts(void **state) {
  struct leafcert *lc = *state;
  char longname[301], max[254], over[255];
  memset(longname, 'a', 300);
  longname[300] = '\0';
  /* 63.63.63.61: 253, the longest name there is */
  memset(max, 'b', 253);
  max[63] = max[127] = max[191] = '.';
  max[253] = '\0';
  snprintf(over, sizeof over, "c%s", max);
  const char *bad[] = {"",      "a..b",   "-x.com",      longname,         "ho st",
                       "[::1]", "x-.com", ".a.b",        "a.b.",           "a_b.com",
                       over,    "::1%lo", "1.2.3.4:443", "h\xc3\xa9.test", "ghcr.test\n"};
  size_t n = sizeof bad / sizeof bad[0];
  time_t now = time(NULL);
  for (size_t i = 0; i < n; i++)
    assert_null(leafcert_ctx(lc, bad[i], now));
  assert_null(leafcert_ctx(lc, NULL, now));
  expect_stats(lc, (struct leafcert_stats){.failed = n + 1});

  /* the longest name: CN cut to 64, the SAN carries all of it */
  SSL_CTX *ctx = ctx_ok(lc, max, now);
  X509 *x = SSL_CTX_get0_certificate(ctx);
  char cn[300];
  assert_int_equal(
      X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn),
      64);
  assert_int_equal(X509_check_host(x, max, 0, 0, NULL), 1);
  assert_int_equal(verify(x, now), 1);
  SSL_CTX_free(ctx);
}

static void test_lru(void **state) {
  struct leafcert *lc = *state;
  time_t now = time(NULL);
  char host[64];
  for (int i = 0; i < LEAFCERT_MAX_CACHED; i++) {
    snprintf(host, sizeof host, "h%d.test", i);
    SSL_CTX_free(leafcert_ctx(lc, host, now));
  }
  assert_int_equal(stats(lc).cached, LEAFCERT_MAX_CACHED);
  SSL_CTX_free(leafcert_ctx(lc, "h0.test", now)); /* h1 is now the oldest */
  assert_int_equal(stats(lc).hits, 1);
  SSL_CTX_free(leafcert_ctx(lc, "new.test", now));
  expect_stats(lc, (struct leafcert_stats){.minted = LEAFCERT_MAX_CACHED + 1,
                                           .hits = 1,
                                           .cached = LEAFCERT_MAX_CACHED});
  SSL_CTX_free(leafcert_ctx(lc, "h0.test", now)); /* kept */
  assert_int_equal(stats(lc).hits, 2);
  SSL_CTX_free(leafcert_ctx(lc, "h1.test", now)); /* evicted: minted again */
  assert_int_equal(stats(lc).minted, LEAFCERT_MAX_CACHED + 2);
  for (int i = 0; i < 40; i++) {
    snprintf(host, sizeof host, "more%d.test", i);
    SSL_CTX_free(leafcert_ctx(lc, host, now));
  }
  expect_stats(lc, (struct leafcert_stats){.minted = LEAFCERT_MAX_CACHED + 2 + 40,
                                           .hits = 2,
                                           .cached = LEAFCERT_MAX_CACHED});
}

/* test_bad_ca: leafcert_new refuses each, with its code and a reason that
 * says why (says: a part of it). */
static void test_bad_ca(void **state) {
  (void)state;
  char missing[160];
  snprintf(missing, sizeof missing, "%s/nope.crt", g.dir);
  const struct {
    const char *cert, *key;
    uint64_t ttl_ms;
    int rc;
    const char *says;
  } cases[] = {
      /* a key that is not the certificate's */
      {g.ca_crt, g.n1_key, TTL_MS, RM_ETLS, "does not belong to"},
      /* a good pair, but not a CA */
      {g.n1_crt, g.n1_key, TTL_MS, RM_ETLS, "not a CA"},
      /* missing files, and lifetimes out of range */
      {missing, g.ca_key, TTL_MS, UV_ENOENT, "nope.crt"},
      {g.ca_crt, g.ca_key, 0, UV_EINVAL, "leaf lifetime"},
      {g.ca_crt, NULL, TTL_MS, UV_EINVAL, "needs both cert and key"},
      /* a certificate file as the key */
      {g.ca_crt, g.ca_crt, TTL_MS, RM_ETLS, ""},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct leafcert *lc = NULL;
    char err[512] = "";
    assert_int_equal(
        leafcert_new(&lc, cases[i].cert, cases[i].key, cases[i].ttl_ms, err, sizeof err),
        cases[i].rc);
    assert_null(lc);
    assert_true(err[0] != '\0');
    assert_non_null(strstr(err, cases[i].says));
  }
}

/* handshake drives client and server over a BIO pair until both are done. */
static int handshake(SSL *cli, SSL *srv) {
  int c = 0, s = 0;
  for (int i = 0; i < 32 && (c != 1 || s != 1); i++) {
    if (c != 1) {
      c = SSL_do_handshake(cli);
      if (c != 1 && SSL_get_error(cli, c) != SSL_ERROR_WANT_READ)
        return -1;
    }
    if (s != 1) {
      s = SSL_do_handshake(srv);
      if (s != 1 && SSL_get_error(srv, s) != SSL_ERROR_WANT_READ)
        return -2;
    }
  }
  return c == 1 && s == 1 ? 0 : -3;
}

/* ssl_pair: a client SSL on cctx and a server SSL on sctx, joined by a
 * BIO pair, each in its role. */
static void ssl_pair(SSL_CTX *cctx, SSL_CTX *sctx, SSL **cli, SSL **srv) {
  BIO *cb, *sb;
  *cli = SSL_new(cctx);
  *srv = SSL_new(sctx);
  assert_non_null(*cli);
  assert_non_null(*srv);
  assert_int_equal(BIO_new_bio_pair(&cb, 0, &sb, 0), 1);
  SSL_set_bio(*cli, cb, cb);
  SSL_set_bio(*srv, sb, sb);
  SSL_set_connect_state(*cli);
  SSL_set_accept_state(*srv);
}

/* handshake_at verifies a handshake on sctx (taking the caller's ref). */
static void handshake_at(SSL_CTX *sctx, int max_version) {
  assert_non_null(sctx);
  SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
  assert_non_null(cctx);
  assert_int_equal(SSL_CTX_set_max_proto_version(cctx, max_version), 1);
  assert_int_equal(X509_STORE_add_cert(SSL_CTX_get_cert_store(cctx), g.ca), 1);
  SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL);
  SSL *cli, *srv;
  ssl_pair(cctx, sctx, &cli, &srv);
  SSL_CTX_free(sctx); /* the SSL holds its own reference, as a connection does */
  assert_int_equal(SSL_set_tlsext_host_name(cli, "registry-1.docker.test"), 1);
  assert_int_equal(SSL_set1_host(cli, "registry-1.docker.test"), 1);
  static const unsigned char alpn[] = "\x02h2\x08http/1.1";
  assert_int_equal(SSL_set_alpn_protos(cli, alpn, sizeof alpn - 1), 0);
  int r = handshake(cli, srv);
  if (r != 0)
    ERR_print_errors_fp(stderr);
  assert_int_equal(r, 0);
  assert_int_equal(SSL_get_verify_result(cli), X509_V_OK);
  assert_int_equal(SSL_version(cli), max_version);
  /* only the leaf is sent: the CA is the client's own anchor */
  assert_int_equal(sk_X509_num(SSL_get_peer_cert_chain(cli)), 1);
  const unsigned char *proto;
  unsigned len;
  SSL_get0_alpn_selected(cli, &proto, &len);
  assert_int_equal(len, 8);
  assert_memory_equal(proto, "http/1.1", 8);
  SSL_free(cli);
  SSL_free(srv);
  SSL_CTX_free(cctx);
}

static void test_handshake(void **state) {
  struct leafcert *lc = *state;
  time_t now = time(NULL);
  handshake_at(leafcert_ctx(lc, "registry-1.docker.test", now), TLS1_3_VERSION);
  handshake_at(leafcert_ctx(lc, "registry-1.docker.test", now), TLS1_2_VERSION);
  /* TLS 1.1 is never offered */
  SSL_CTX *sctx = leafcert_ctx(lc, "registry-1.docker.test", now);
  SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_security_level(cctx, 0);
  assert_int_equal(SSL_CTX_set_min_proto_version(cctx, TLS1_VERSION), 1);
  assert_int_equal(SSL_CTX_set_max_proto_version(cctx, TLS1_1_VERSION), 1);
  SSL *cli, *srv;
  ssl_pair(cctx, sctx, &cli, &srv);
  assert_int_not_equal(handshake(cli, srv), 0);
  ERR_clear_error();
  SSL_free(cli);
  SSL_free(srv);
  SSL_CTX_free(cctx);
  SSL_CTX_free(sctx);
  /* a context handed out outlives the cache */
  sctx = leafcert_ctx(lc, "registry-1.docker.test", now);
  leafcert_free(lc);
  *state = NULL;
  handshake_at(sctx, TLS1_3_VERSION);
}

/* us_per_ctx asks lc for cost0.test .. cost<n-1>.test at now and returns
 * the microseconds one ask took, on average. */
static double us_per_ctx(struct leafcert *lc, int n, time_t now) {
  char host[64];
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (int i = 0; i < n; i++) {
    snprintf(host, sizeof host, "cost%d.test", i);
    SSL_CTX_free(ctx_ok(lc, host, now));
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  return ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / 1e3 / n;
}

/* test_mint_cost prints what one leaf costs: a signature and a context. */
static void test_mint_cost(void **state) {
  struct leafcert *lc = *state;
  enum { N = 200 };
  time_t now = time(NULL);
  double mint_us = us_per_ctx(lc, N, now); /* every host is new */
  double hit_us = us_per_ctx(lc, N, now);  /* every host is cached */
  print_message("leafcert: %.1f us per minted leaf, %.2f us per cache hit\n", mint_us,
                hit_us);
  expect_stats(lc, (struct leafcert_stats){.minted = N, .hits = N, .cached = N});
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_leaf_verifies, lc_setup, lc_teardown),
      cmocka_unit_test_setup_teardown(test_ip_hosts, lc_setup, lc_teardown),
      cmocka_unit_test_setup_teardown(test_cache_and_renewal, lc_setup, lc_teardown),
      cmocka_unit_test_setup_teardown(test_ca_expiry, lc_setup, lc_teardown),
      cmocka_unit_test_setup_teardown(test_invalid_hosts, lc_setup, lc_teardown),
      cmocka_unit_test_setup_teardown(test_lru, lc_setup, lc_teardown),
      cmocka_unit_test(test_bad_ca),
      cmocka_unit_test_setup_teardown(test_handshake, lc_setup, lc_teardown),
      cmocka_unit_test_setup_teardown(test_mint_cost, lc_setup, lc_teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
