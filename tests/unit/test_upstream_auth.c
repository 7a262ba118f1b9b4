/* test_upstream_auth.c - WWW-Authenticate and ratelimit-* parsing.
 *
 * The challenges are the ones registries really send (Docker Hub, ghcr,
 * quay, gcr's unquoted service, GCP Artifact Registry without service) plus
 * the malformed and oversized inputs a hostile upstream could send.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "errors.h"
#include "upstream_auth.h"

static int parse(const char *s, struct www_auth *a) {
  return www_auth_parse(s, strlen(s), a);
}

static void test_docker_hub(void **state) {
  (void)state;
  struct www_auth a;
  assert_int_equal(
      parse("Bearer realm=\"https://auth.docker.io/token\",service=\"registry."
            "docker.io\",scope=\"repository:library/alpine:pull\"",
            &a),
      0);
  assert_int_equal(a.scheme, WWW_AUTH_BEARER);
  assert_string_equal(a.realm, "https://auth.docker.io/token");
  assert_string_equal(a.service, "registry.docker.io");
  assert_string_equal(a.scope, "repository:library/alpine:pull");
  assert_string_equal(a.error, "");
}

static void test_ghcr(void **state) {
  (void)state;
  struct www_auth a;
  assert_int_equal(parse("Bearer realm=\"https://ghcr.io/token\",service=\"ghcr."
                         "io\",scope=\"repository:user/image:pull\"",
                         &a),
                   0);
  assert_int_equal(a.scheme, WWW_AUTH_BEARER);
  assert_string_equal(a.realm, "https://ghcr.io/token");
  assert_string_equal(a.service, "ghcr.io");
  assert_string_equal(a.scope, "repository:user/image:pull");
}

static void test_quay_spaces_and_case(void **state) {
  (void)state;
  struct www_auth a;
  /* quay puts blanks after commas; scheme and names in any case. */
  assert_int_equal(parse("bearer Realm=\"https://quay.io/v2/auth\", "
                         "SERVICE=\"quay.io\" , scope = \"repository:a/b:pull\"",
                         &a),
                   0);
  assert_int_equal(a.scheme, WWW_AUTH_BEARER);
  assert_string_equal(a.realm, "https://quay.io/v2/auth");
  assert_string_equal(a.service, "quay.io");
  assert_string_equal(a.scope, "repository:a/b:pull");
}

static void test_unquoted_values(void **state) {
  (void)state;
  struct www_auth a;
  assert_int_equal(parse("Bearer realm=\"https://gcr.io/v2/token\",service=gcr.io", &a),
                   0);
  assert_string_equal(a.service, "gcr.io");
  assert_int_equal(parse("Bearer realm=https://r.example/token,service=r", &a), 0);
  assert_string_equal(a.realm, "https://r.example/token");
  assert_string_equal(a.service, "r");
}

static void test_no_service(void **state) {
  (void)state;
  struct www_auth a;
  assert_int_equal(parse("Bearer realm=\"https://europe-docker.pkg.dev/v2/token\"", &a),
                   0);
  assert_int_equal(a.scheme, WWW_AUTH_BEARER);
  assert_string_equal(a.realm, "https://europe-docker.pkg.dev/v2/token");
  assert_string_equal(a.service, "");
  assert_string_equal(a.scope, "");
}

static void test_basic(void **state) {
  (void)state;
  struct www_auth a;
  assert_int_equal(parse("Basic realm=\"Registry Realm\"", &a), 0);
  assert_int_equal(a.scheme, WWW_AUTH_BASIC);
  assert_string_equal(a.realm, "Registry Realm");
  assert_int_equal(parse("BASIC", &a), 0);
  assert_int_equal(a.scheme, WWW_AUTH_BASIC);
}

static void test_basic_and_bearer(void **state) {
  (void)state;
  struct www_auth a;
  /* Bearer wins whichever comes first. */
  assert_int_equal(parse("Basic realm=\"x, y\", Bearer realm=\"https://t/"
                         "token\",service=\"s\"",
                         &a),
                   0);
  assert_int_equal(a.scheme, WWW_AUTH_BEARER);
  assert_string_equal(a.realm, "https://t/token");
  assert_string_equal(a.service, "s");
  assert_int_equal(parse("Bearer realm=\"https://t/token\", Basic realm=\"b\"", &a), 0);
  assert_int_equal(a.scheme, WWW_AUTH_BEARER);
  assert_string_equal(a.realm, "https://t/token");
  /* An unknown scheme in between, with a token68 credential. */
  assert_int_equal(parse("Negotiate abc==, Basic realm=\"b\"", &a), 0);
  assert_int_equal(a.scheme, WWW_AUTH_BASIC);
  assert_string_equal(a.realm, "b");
}

static void test_error_and_quoting(void **state) {
  (void)state;
  struct www_auth a;
  assert_int_equal(
      parse("Bearer realm=\"https://auth.docker.io/token\",service=\"registry."
            "docker.io\",scope=\"repository:samalba/my-app:pull,push\","
            "error=\"insufficient_scope\"",
            &a),
      0);
  assert_string_equal(a.scope, "repository:samalba/my-app:pull,push");
  assert_string_equal(a.error, "insufficient_scope");
  assert_int_equal(parse("Bearer realm=\"a\\\"b\\\\c\",error=invalid_token", &a), 0);
  assert_string_equal(a.realm, "a\"b\\c");
  assert_string_equal(a.error, "invalid_token");
  /* A scope list with blanks stays one value. */
  assert_int_equal(
      parse("Bearer realm=\"r\",scope=\"repository:a:pull repository:b:pull\"", &a), 0);
  assert_string_equal(a.scope, "repository:a:pull repository:b:pull");
  /* Unknown params are skipped, also on unknown schemes. */
  assert_int_equal(parse("Bearer realm=\"r\",charset=\"UTF-8\",x=y", &a), 0);
  assert_string_equal(a.realm, "r");
  assert_int_equal(parse("Digest realm=\"d\", nonce=\"n,n\"", &a), 0);
  assert_int_equal(a.scheme, WWW_AUTH_NONE);
}

static void test_garbage(void **state) {
  (void)state;
  struct www_auth a;
  const char *bad[] = {
      "",
      "   ",
      ",,,",
      "realm=\"x\"", /* param before any scheme */
      "Bearer realm=\"unterminated",
      "Bearer realm=\"x\" service=\"y\"", /* missing comma */
      "Bearer realm=",
      "Bearer realm=\"x\",service=\"a\x01\"", /* control byte */
      "Bearer \"realm\"",
      "{json: true}",
      "Bearer realm=\"x\"\\",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    memset(&a, 0x55, sizeof a);
    assert_int_equal(www_auth_parse(bad[i], strlen(bad[i]), &a), RM_EPARSE);
  }
  /* Length-bounded: no NUL needed, nothing read past len. */
  const char *s = "Bearer realm=\"https://x/token\"GARBAGE";
  assert_int_equal(www_auth_parse(s, strlen(s) - 7, &a), 0);
  assert_string_equal(a.realm, "https://x/token");
  assert_int_equal(www_auth_parse(NULL, 0, &a), RM_EPARSE);
}

static void test_overlong(void **state) {
  (void)state;
  struct www_auth a;
  char big[4096];
  /* realm of exactly the field's capacity minus NUL fits... */
  int n = snprintf(big, sizeof big, "Bearer realm=\"%1023d\"", 7);
  assert_int_equal(www_auth_parse(big, (size_t)n, &a), 0);
  assert_int_equal(strlen(a.realm), 1023);
  /* ...one more byte does not. */
  n = snprintf(big, sizeof big, "Bearer realm=\"%1024d\"", 7);
  assert_int_equal(www_auth_parse(big, (size_t)n, &a), RM_EPARSE);
  n = snprintf(big, sizeof big, "Bearer realm=\"r\",error=%0100d", 1);
  assert_int_equal(www_auth_parse(big, (size_t)n, &a), RM_EPARSE);
  /* Long values of params we do not keep are fine. */
  n = snprintf(big, sizeof big, "Bearer realm=\"r\",nonce=\"%3000d\"", 1);
  assert_int_equal(www_auth_parse(big, (size_t)n, &a), 0);
  /* Absurd input is refused without reading it all. */
  static char huge[20000];
  memset(huge, 'a', sizeof huge);
  memcpy(huge, "Bearer realm=\"", 14);
  assert_int_equal(www_auth_parse(huge, sizeof huge, &a), RM_EPARSE);
}

static void test_ratelimit(void **state) {
  (void)state;
  int64_t n = 0, w = 0;
  assert_int_equal(ratelimit_parse("76;w=21600", 10, &n, &w), 0);
  assert_int_equal(n, 76);
  assert_int_equal(w, 21600);
  assert_int_equal(ratelimit_parse("100", 3, &n, &w), 0);
  assert_int_equal(n, 100);
  assert_int_equal(w, -1);
  const char *s = "100;w=21600, 100;w=21600";
  assert_int_equal(ratelimit_parse(s, strlen(s), &n, &w), 0);
  assert_int_equal(n, 100);
  assert_int_equal(w, 21600);
  s = "100, 100;w=21600";
  assert_int_equal(ratelimit_parse(s, strlen(s), &n, &w), 0);
  assert_int_equal(n, 100);
  assert_int_equal(w, -1);
  s = " 0 ; w = 60 ;comment=\"x;y\"";
  assert_int_equal(ratelimit_parse(s, strlen(s), &n, &w), 0);
  assert_int_equal(n, 0);
  assert_int_equal(w, 60);
  s = "5;foo=bar;W=3600";
  assert_int_equal(ratelimit_parse(s, strlen(s), &n, &w), 0);
  assert_int_equal(n, 5);
  assert_int_equal(w, 3600);
  /* Length-bounded. */
  assert_int_equal(ratelimit_parse("42x", 2, &n, &w), 0);
  assert_int_equal(n, 42);
}

static void test_ratelimit_garbage(void **state) {
  (void)state;
  int64_t n = 7, w = 7;
  const char *bad[] = {"",
                       "abc",
                       "-5",
                       "1.5",
                       "76;w=",
                       "76;w=x",
                       "76;",
                       "76 77",
                       "limit=100, remaining=50",
                       "9999999999999999999999",
                       ";w=5"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(ratelimit_parse(bad[i], strlen(bad[i]), &n, &w), RM_EPARSE);
  /* Untouched on error. */
  assert_int_equal(n, 7);
  assert_int_equal(w, 7);
  assert_int_equal(ratelimit_parse(NULL, 0, &n, &w), RM_EPARSE);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_docker_hub),
      cmocka_unit_test(test_ghcr),
      cmocka_unit_test(test_quay_spaces_and_case),
      cmocka_unit_test(test_unquoted_values),
      cmocka_unit_test(test_no_service),
      cmocka_unit_test(test_basic),
      cmocka_unit_test(test_basic_and_bearer),
      cmocka_unit_test(test_error_and_quoting),
      cmocka_unit_test(test_garbage),
      cmocka_unit_test(test_overlong),
      cmocka_unit_test(test_ratelimit),
      cmocka_unit_test(test_ratelimit_garbage),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
