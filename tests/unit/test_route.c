/* test_route.c - picking the upstream and the endpoint from a request. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "../../config/config.h"
#include "../../node/route.h"

static struct config cfg;

static int setup(void **state) {
  (void)state;
  static const char yaml[] =
      "listen: 127.0.0.1:5000\n"
      "upstreams:\n"
      "  - host: docker.io\n"
      "    url: https://registry-1.docker.io\n"
      "    default: true\n"
      "  - host: ghcr.io\n"
      "    url: https://ghcr.io\n"
      "    listen: 127.0.0.1:5002\n"
      "  - host: reg.local:5000\n"
      "    url: http://127.0.0.1:5999\n";
  char err[256];
  int r = config_load_string(&cfg, yaml, sizeof yaml - 1, "test.yml", err, sizeof err);
  if (r)
    print_error("%s\n", err);
  return r;
}

static int teardown(void **state) {
  (void)state;
  config_free(&cfg);
  return 0;
}

static int route(const char *path, const char *query, int listener, struct route *rt,
                 enum route_error *err) {
  char msg[256];
  return route_request(&cfg, listener, path, query, rt, err, msg, sizeof msg);
}

static const char D[] = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

static void test_endpoints(void **state) {
  (void)state;
  struct route rt;
  enum route_error err;
  assert_int_equal(route("/v2/", NULL, -1, &rt, &err), 0);
  assert_int_equal(rt.kind, ROUTE_BASE);
  assert_int_equal(route("/v2", NULL, -1, &rt, &err), 0);
  assert_int_equal(rt.kind, ROUTE_BASE);

  assert_int_equal(route("/v2/library/alpine/manifests/3.19", NULL, -1, &rt, &err), 0);
  assert_int_equal(rt.kind, ROUTE_MANIFEST);
  assert_string_equal(rt.name, "library/alpine");
  assert_string_equal(rt.ref, "3.19");
  assert_false(rt.by_digest);

  char path[300];
  snprintf(path, sizeof path, "/v2/team/sub/app/blobs/%s", D);
  assert_int_equal(route(path, NULL, -1, &rt, &err), 0);
  assert_int_equal(rt.kind, ROUTE_BLOB);
  assert_string_equal(rt.name, "team/sub/app");
  assert_true(rt.by_digest);
  assert_string_equal(rt.hex, D + 7);

  /* a repository may itself be called "manifests" */
  assert_int_equal(route("/v2/manifests/manifests/latest", NULL, -1, &rt, &err), 0);
  assert_string_equal(rt.name, "library/manifests");
  assert_int_equal(rt.kind, ROUTE_MANIFEST);

  assert_int_equal(route("/v2/team/app/tags/list", NULL, -1, &rt, &err), 0);
  assert_int_equal(rt.kind, ROUTE_TAGS);
  assert_string_equal(rt.name, "team/app");

  snprintf(path, sizeof path, "/v2/team/app/referrers/%s", D);
  assert_int_equal(route(path, NULL, -1, &rt, &err), 0);
  assert_int_equal(rt.kind, ROUTE_REFERRERS);
}

static void test_invalid(void **state) {
  (void)state;
  struct route rt;
  enum route_error err;
  assert_int_not_equal(route("/v2/Alpine/manifests/latest", NULL, -1, &rt, &err), 0);
  assert_int_equal(err, ROUTE_ERR_NAME_INVALID);
  assert_int_not_equal(route("/v2/a/../b/manifests/latest", NULL, -1, &rt, &err), 0);
  assert_int_equal(err, ROUTE_ERR_NAME_INVALID);
  assert_int_not_equal(route("/v2/alpine/manifests/-bad", NULL, -1, &rt, &err), 0);
  assert_int_equal(err, ROUTE_ERR_TAG_INVALID);
  assert_int_not_equal(route("/v2/alpine/blobs/latest", NULL, -1, &rt, &err), 0);
  assert_int_equal(err, ROUTE_ERR_DIGEST_INVALID);
  assert_int_not_equal(route("/v2/alpine/blobs/sha256:abc", NULL, -1, &rt, &err), 0);
  assert_int_equal(err, ROUTE_ERR_DIGEST_INVALID);
  assert_int_not_equal(route("/v2/alpine/blobs/sha512:abc", NULL, -1, &rt, &err), 0);
  assert_int_equal(err, ROUTE_ERR_DIGEST_INVALID);
  assert_int_not_equal(route("/v3/alpine/manifests/x", NULL, -1, &rt, &err), 0);
  assert_int_equal(err, ROUTE_ERR_NOT_FOUND);
  assert_int_not_equal(route("/v2/alpine/whatever/x", NULL, -1, &rt, &err), 0);
  assert_int_equal(err, ROUTE_ERR_NOT_FOUND);

  /* one component that outgrows the name limit with library/: 400, never
   * a name the upstream refuses (a 502) */
  char path[600], name[300];
  memset(name, 'a', 250);
  name[250] = '\0';
  snprintf(path, sizeof path, "/v2/%s/manifests/1", name);
  assert_int_not_equal(route(path, NULL, -1, &rt, &err), 0);
  assert_int_equal(err, ROUTE_ERR_NAME_INVALID);
  snprintf(path, sizeof path, "/v2/x/%s/manifests/1", name); /* no library/: fits */
  assert_int_equal(route(path, NULL, -1, &rt, &err), 0);
  /* an ns= that is too long or holds NUL is an error, not the default */
  char q[400] = "ns=";
  memset(q + 3, 'h', 300);
  q[303] = '\0';
  assert_int_not_equal(route("/v2/a/b/manifests/1", q, -1, &rt, &err), 0);
  assert_int_equal(err, ROUTE_ERR_NAME_INVALID);
  assert_int_not_equal(route("/v2/a/b/manifests/1", "ns=ghcr.io%00x", -1, &rt, &err), 0);
  assert_int_equal(err, ROUTE_ERR_NAME_INVALID);
}

static void test_upstream_choice(void **state) {
  (void)state;
  struct route rt;
  enum route_error err;
  /* default: docker.io, library/ added for one component */
  assert_int_equal(route("/v2/alpine/manifests/3", NULL, -1, &rt, &err), 0);
  assert_string_equal(cfg.upstreams[rt.upstream].host, "docker.io");
  assert_string_equal(rt.name, "library/alpine");
  /* path prefix (podman) */
  assert_int_equal(route("/v2/ghcr.io/org/app/manifests/1", NULL, -1, &rt, &err), 0);
  assert_string_equal(cfg.upstreams[rt.upstream].host, "ghcr.io");
  assert_string_equal(rt.name, "org/app");
  /* no library/ on other registries */
  assert_int_equal(route("/v2/ghcr.io/app/manifests/1", NULL, -1, &rt, &err), 0);
  assert_string_equal(rt.name, "app");
  /* host with a port */
  assert_int_equal(route("/v2/reg.local:5000/x/manifests/1", NULL, -1, &rt, &err), 0);
  assert_string_equal(cfg.upstreams[rt.upstream].host, "reg.local:5000");
  /* ns= (containerd), form-encoded, wins over a prefix-less name */
  assert_int_equal(route("/v2/org/app/manifests/1", "ns=ghcr.io", -1, &rt, &err), 0);
  assert_string_equal(cfg.upstreams[rt.upstream].host, "ghcr.io");
  assert_true(rt.via_ns);
  assert_int_equal(route("/v2/x/manifests/1", "foo=1&ns=reg.local%3A5000", -1, &rt, &err), 0);
  assert_string_equal(cfg.upstreams[rt.upstream].host, "reg.local:5000");
  /* docker.io aliases */
  assert_int_equal(route("/v2/alpine/manifests/1", "ns=registry-1.docker.io", -1, &rt, &err), 0);
  assert_string_equal(cfg.upstreams[rt.upstream].host, "docker.io");
  assert_string_equal(rt.name, "library/alpine");
  /* listener owned by an upstream wins over everything */
  assert_int_equal(route("/v2/app/manifests/1", "ns=docker.io", 1, &rt, &err), 0);
  assert_string_equal(cfg.upstreams[rt.upstream].host, "ghcr.io");
  assert_string_equal(rt.name, "app");
}

static void test_unknown_upstream(void **state) {
  (void)state;
  struct route rt;
  enum route_error err;
  char msg[256];
  assert_int_not_equal(route_request(&cfg, -1, "/v2/x/manifests/1", "ns=quay.io", &rt,
                                     &err, msg, sizeof msg), 0);
  assert_int_equal(err, ROUTE_ERR_NAME_UNKNOWN);
  assert_non_null(strstr(msg, "quay.io"));
  assert_non_null(strstr(msg, "docker.io, ghcr.io, reg.local:5000"));
  assert_int_not_equal(route_request(&cfg, -1, "/v2/quay.io/org/x/manifests/1", NULL, &rt,
                                     &err, msg, sizeof msg), 0);
  assert_int_equal(err, ROUTE_ERR_NAME_UNKNOWN);
}

static void test_query_param(void **state) {
  (void)state;
  char v[16];
  assert_int_equal(query_param("n=10&last=abc", "last", v, sizeof v), 1);
  assert_string_equal(v, "abc");
  assert_int_equal(query_param("n=10&last=abc", "n", v, sizeof v), 1);
  assert_string_equal(v, "10");
  assert_int_equal(query_param("nn=10", "n", v, sizeof v), 0);
  assert_int_equal(query_param(NULL, "n", v, sizeof v), 0);
  assert_int_equal(query_param("ns=a%3", "ns", v, sizeof v), -1);
  assert_int_equal(query_param("ns=a%00b", "ns", v, sizeof v), -1);
  assert_int_equal(query_param("ns=0123456789abcdefXYZ", "ns", v, sizeof v), -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_endpoints),
      cmocka_unit_test(test_invalid),
      cmocka_unit_test(test_upstream_choice),
      cmocka_unit_test(test_unknown_upstream),
      cmocka_unit_test(test_query_param),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
