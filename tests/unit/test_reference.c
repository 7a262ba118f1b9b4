/* test_reference.c - the distribution grammar for names, tags and digests. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "../../common/digest.h"
#include "../../node/reference.h"

#define NAME_OK(s) assert_true(ref_name_valid(s, strlen(s)))
#define NAME_BAD(s) assert_false(ref_name_valid(s, strlen(s)))
#define TAG_OK(s) assert_true(ref_tag_valid(s, strlen(s)))
#define TAG_BAD(s) assert_false(ref_tag_valid(s, strlen(s)))

static void test_names(void **state) {
  (void)state;
  NAME_OK("alpine");
  NAME_OK("library/alpine");
  NAME_OK("team/sub/app");
  NAME_OK("a.b_c__d-e---f/x0");
  NAME_OK("0");
  NAME_BAD("");
  NAME_BAD("Alpine");        /* uppercase */
  NAME_BAD("/alpine");
  NAME_BAD("alpine/");
  NAME_BAD("a//b");
  NAME_BAD("a/../b");
  NAME_BAD("..");
  NAME_BAD("a.");
  NAME_BAD("a___b");         /* at most two underscores */
  NAME_BAD("-a");
  NAME_BAD("a b");
  NAME_BAD("a%2fb");
  char longname[300];
  memset(longname, 'a', sizeof longname);
  assert_true(ref_name_valid(longname, 255));
  assert_false(ref_name_valid(longname, 256));
  /* length is honoured: no reliance on a NUL */
  assert_true(ref_name_valid("abc/def", 3));
}

static void test_tags(void **state) {
  (void)state;
  TAG_OK("latest");
  TAG_OK("3.19");
  TAG_OK("LATEST");
  TAG_OK("_x");
  TAG_OK("v1.2.3-rc_1");
  TAG_BAD("");
  TAG_BAD(".x");
  TAG_BAD("-x");
  TAG_BAD("a/b");
  TAG_BAD("a:b");
  TAG_BAD("a@b");
  char t[200];
  memset(t, 'a', sizeof t);
  assert_true(ref_tag_valid(t, 128));
  assert_false(ref_tag_valid(t, 129));
}

static void test_digests(void **state) {
  (void)state;
  char hex[65];
  const char *good = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  assert_int_equal(digest_parse(good, strlen(good), hex), 0);
  assert_string_equal(hex, good + 7);
  const char *upper = "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
  assert_int_not_equal(digest_parse(upper, strlen(upper), hex), 0);
  const char *short_ = "sha256:e3b0";
  assert_int_not_equal(digest_parse(short_, strlen(short_), hex), 0);
  const char *algo = "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  assert_int_not_equal(digest_parse(algo, strlen(algo), hex), 0);
  const char *slash = "sha256:../0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  assert_int_not_equal(digest_parse(slash, strlen(slash), hex), 0);
  /* the empty string's well-known digest */
  assert_int_equal(sha256_hex("", 0, hex), 0);
  assert_string_equal(hex, good + 7);
}

static void test_host_component(void **state) {
  (void)state;
  assert_true(ref_component_is_host("ghcr.io", 7));
  assert_true(ref_component_is_host("localhost", 9));
  assert_true(ref_component_is_host("reg:5000", 8));
  assert_false(ref_component_is_host("library", 7));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_names),
      cmocka_unit_test(test_tags),
      cmocka_unit_test(test_digests),
      cmocka_unit_test(test_host_component),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
