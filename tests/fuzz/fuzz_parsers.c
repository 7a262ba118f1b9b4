/* fuzz_parsers.c - libFuzzer target for the parsers of outside input that
 * are pure functions: the first byte picks one, the rest is its input.
 *   0: a request target, path and query split at the first '?', routed
 *      against a config with Docker Hub, ghcr.io and a per-upstream listener
 *   1: a Range value against a size (the first 8 bytes)
 *   2: an If-None-Match value
 *   3: a configuration (YAML)
 *   4: a WWW-Authenticate value
 *   5: a ratelimit-* value
 *   6: a token endpoint's JSON answer
 *   7: a manifest or index (JSON), then its platforms matched
 *   8: an X-Regmesh-Auth value, with method and target before it
 *   9: a query string, every parameter the node reads taken from it
 *  10: an X-Regmesh-Holders list, its names then noted in and picked from
 *      a holders table (the first two bytes are the clock)
 *  11: a CONNECT target or a proxy request's authority (proxy_parse_target,
 *      with and without a default port), an IP literal then checked
 *      against the tunnel refusals, a name matched to the upstreams
 * Each checks what its result promises (bounds, NUL-terminated fields), so
 * a wrong answer is a crash too, not only a memory error.
 */
#include "config.h"
#include "holders.h"
#include "httpval.h"
#include "manifest.h"
#include "peerauth.h"
#include "proxy.h"
#include "reference.h"
#include "route.h"
#include "upstream_auth.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* not CHECK(): the replay build is RelWithDebInfo, with NDEBUG */
#define CHECK(x)                                                                         \
  do {                                                                                   \
    if (!(x))                                                                            \
      abort();                                                                           \
  } while (0)

static const char base_yaml[] =
    "upstreams:\n"
    "  - host: docker.io\n    url: https://registry-1.docker.io\n    default: true\n"
    "  - host: ghcr.io\n    url: https://ghcr.io\n"
    "  - host: quay.io\n    url: https://quay.io\n    listen: 127.0.0.1:5003\n";

static struct config *base_config(void) {
  static struct config cfg;
  static int loaded;
  char err[512];
  if (!loaded) {
    if (config_load_string(&cfg, base_yaml, sizeof base_yaml - 1, "fuzz", err, sizeof err))
      abort();
    loaded = 1;
  }
  return &cfg;
}

static void one_route(const char *s) {
  char buf[8192];
  snprintf(buf, sizeof buf, "%s", s);
  char *q = strchr(buf, '?');
  if (q)
    *q++ = '\0';
  struct route rt;
  enum route_error err;
  char msg[512];
  const struct config *cfg = base_config();
  for (int listener = -1; listener <= 2; listener++) {
    if (route_request(cfg, listener, buf, q, &rt, &err, msg, sizeof msg) != 0) {
      CHECK(err != ROUTE_ERR_NONE);
      CHECK(memchr(msg, '\0', sizeof msg));
      continue;
    }
    CHECK(rt.upstream >= 0 && (size_t)rt.upstream < cfg->n_upstreams);
    if (rt.kind == ROUTE_BLOB || rt.kind == ROUTE_MANIFEST || rt.kind == ROUTE_TAGS ||
        rt.kind == ROUTE_REFERRERS) {
      size_t n = strlen(rt.name);
      CHECK(n > 0 && n <= REF_NAME_MAX);
      CHECK(ref_name_valid(rt.name, n));
    }
    if (rt.by_digest)
      CHECK(strlen(rt.hex) == 64);
  }
}

static void one_range(const uint8_t *d, size_t n) {
  if (n < 8)
    return;
  uint64_t size;
  memcpy(&size, d, 8);
  size %= (uint64_t)1 << 50;
  char *v = strndup((const char *)d + 8, n - 8);
  if (!v)
    return;
  uint64_t a = 0, b = 0;
  int r = httpval_range(v, size, &a, &b);
  CHECK(r >= -1 && r <= 1);
  if (r == 1)
    CHECK(a < b && b <= size);
  free(v);
}

static void one_token(const char *s, size_t n) {
  char *tok = NULL;
  int64_t life = 0;
  if (token_response_parse(s, n, 1700000000, &tok, &life) == 0) {
    size_t l = strlen(tok);
    CHECK(l > 0 && l <= TOKEN_LEN_MAX);
    for (size_t i = 0; i < l; i++)
      CHECK(tok[i] > 0x20 && tok[i] < 0x7f);
    CHECK(life >= 0 && life <= TOKEN_MAX_S);
    free(tok);
  }
}

static int on_ref(const struct manifest_ref *ref, void *ud) {
  CHECK(strlen(ref->hex) == 64);
  CHECK(strlen(ref->os) < sizeof ref->os && strlen(ref->arch) < sizeof ref->arch);
  (void)manifest_platform_matches(ref, "linux/amd64");
  (void)manifest_platform_matches(ref, "linux/arm64/v8");
  (*(size_t *)ud)++;
  return 0;
}

static void one_peerauth(const char *s) {
  static struct peerauth pa;
  static int init;
  if (!init) {
    static const uint8_t key[32] = {1, 2, 3};
    peerauth_init(&pa, key, sizeof key);
    init = 1;
  }
  /* "METHOD\nTARGET\nHEADER" */
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", s);
  char *t = strchr(buf, '\n');
  char *h = t ? strchr(t + 1, '\n') : NULL;
  if (!h)
    return;
  *t++ = '\0';
  *h++ = '\0';
  char sig[PEERAUTH_SIG_HEX + 1];
  int r = peerauth_verify(&pa, buf, t, "peer", h, 1700000000000, sig);
  CHECK(r == 0 || r < 0);
}

static void one_query(const char *q) {
  static const char *const keys[] = {"ns", "n", "last", "digest", "tag", "ref", "upstream",
                                     "artifactType"};
  char out[300];
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    int r = query_param(q, keys[i], out, sizeof out);
    CHECK(r >= -1 && r <= 1);
    if (r == 1)
      CHECK(strlen(out) < sizeof out);
  }
}

static void one_holders(const char *s, const uint8_t *d, size_t n) {
  static struct holders *h;
  if (!h && holders_new(&h) != 0)
    return;
  char names[8][HOLDERS_NAME_MAX];
  size_t k = holders_parse_list(s, names, 8);
  CHECK(k <= 8);
  uint64_t now = n >= 2 ? (uint64_t)d[0] << 24 | (uint64_t)d[1] << 16 : 0;
  const char *hex = n >= 3 && d[2] & 1 ? "aa" : "bb";
  for (size_t i = 0; i < k; i++) {
    CHECK(names[i][0] && strlen(names[i]) < HOLDERS_NAME_MAX && !strpbrk(names[i], ", \t"));
    holders_note(h, hex, names[i], (int)(i & 1), s, "docker.io", now);
    if (i % 3 == 2)
      holders_upload_begin(h, hex);
  }
  const char *out[4];
  size_t m = holders_pick(h, hex, k ? names[0] : "x", 2, now, NULL, NULL, out, 4);
  CHECK(m <= 4);
  for (size_t i = 0; i < m; i++)
    CHECK(strlen(out[i]) < HOLDERS_NAME_MAX && (!k || strcmp(out[i], names[0]) != 0));
  CHECK(holders_digests(h) <= HOLDERS_DIGESTS_MAX);
  if (k > 1)
    holders_forget(h, hex, names[1]);
}

static void one_target(const char *s, size_t n) {
  static struct config cfg;
  static int ready;
  if (!ready) {
    char err[CONFIG_ERR_LEN];
    static const char y[] = "upstreams:\n"
                            "  - {host: docker.io, url: 'https://registry-1.docker.io'}\n"
                            "  - {host: ghcr.io, url: 'https://ghcr.io', aliases: ['pkg.example:8443']}\n";
    if (config_load_string(&cfg, y, sizeof y - 1, "fuzz.yml", err, sizeof err) != 0)
      abort();
    ready = 1;
  }
  for (unsigned dflt = 0; dflt <= 80; dflt += 80) {
    char host[256];
    unsigned port = 0;
    if (proxy_parse_target(s, n, dflt, host, sizeof host, &port) != 0)
      continue;
    size_t hl = strnlen(host, sizeof host);
    CHECK(hl > 0 && hl <= PROXY_HOST_MAX && port >= 1 && port <= 65535);
    CHECK(!strpbrk(host, "[]/ \t\r\n"));
    struct sockaddr_storage ss = {0};
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1)
      ss.ss_family = AF_INET;
    else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1)
      ss.ss_family = AF_INET6;
    if (ss.ss_family)
      (void)proxy_addr_refused((const struct sockaddr *)&ss);
    int up = config_upstream_proxy_match(&cfg, host, hl, port, dflt != 0);
    CHECK(up >= -1 && up < (int)cfg.n_upstreams);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1 || size > 65536)
    return 0;
  const uint8_t *d = data + 1;
  size_t n = size - 1;
  char *s = malloc(n + 1);
  if (!s)
    return 0;
  memcpy(s, d, n);
  s[n] = '\0'; /* most of these parsers take C strings, as the server hands them */
  switch (data[0] % 12) {
  case 0: one_route(s); break;
  case 1: one_range(d, n); break;
  case 2: {
    static const char hex[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    (void)httpval_etag_match(s, n, hex);
    break;
  }
  case 3: {
    struct config cfg;
    char err[CONFIG_ERR_LEN];
    if (config_load_string(&cfg, s, n, "fuzz.yml", err, sizeof err) == 0)
      CHECK(cfg.n_upstreams > 0);
    else
      CHECK(memchr(err, '\0', sizeof err));
    config_free(&cfg);
    break;
  }
  case 4: {
    struct www_auth a;
    if (www_auth_parse(s, n, &a) == 0)
      CHECK(memchr(a.realm, '\0', sizeof a.realm) && memchr(a.scope, '\0', sizeof a.scope));
    break;
  }
  case 5: {
    int64_t v, w;
    if (ratelimit_parse(s, n, &v, &w) == 0)
      CHECK(v >= 0 && w >= -1);
    break;
  }
  case 6: one_token(s, n); break;
  case 7: {
    size_t refs = 0;
    (void)manifest_each_ref(s, n, on_ref, &refs);
    break;
  }
  case 8: one_peerauth(s); break;
  case 9: one_query(s); break;
  case 10: one_holders(s, d, n); break;
  case 11: one_target(s, n); break;
  }
  free(s);
  return 0;
}
