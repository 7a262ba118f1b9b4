/* test_common.c - the small containers of common/: buf, strmap, sha256. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/buf.h"
#include "../../common/digest.h"
#include "../../common/errors.h"
#include "../../common/log.h"
#include "../../common/strmap.h"

static void test_buf_limit(void **state) {
  (void)state;
  struct buf b;
  buf_init(&b, 10);
  assert_int_equal(buf_append(&b, "hello", 5), 0);
  assert_int_equal(buf_appendf(&b, "%d", 1234), 0);
  assert_string_equal(b.data, "hello1234");
  assert_int_equal(buf_append(&b, "xy", 2), RM_ETOOBIG);
  assert_int_equal(b.len, 9); /* unchanged by the refused append */
  assert_int_equal(buf_append(&b, "x", 1), 0);
  buf_reset(&b);
  assert_int_equal(b.len, 0);
  buf_free(&b);
  assert_null(b.data);
}

static void test_strmap(void **state) {
  (void)state;
  struct strmap m;
  strmap_init(&m);
  static int vals[1000];
  char key[32];
  for (int i = 0; i < 1000; i++) {
    snprintf(key, sizeof key, "k%d", i);
    assert_int_equal(strmap_put(&m, key, &vals[i]), 0);
  }
  assert_int_equal(m.count, 1000);
  for (int i = 0; i < 1000; i++) {
    snprintf(key, sizeof key, "k%d", i);
    assert_ptr_equal(strmap_get(&m, key), &vals[i]);
  }
  assert_null(strmap_get(&m, "missing"));
  assert_ptr_equal(strmap_del(&m, "k500"), &vals[500]);
  assert_null(strmap_get(&m, "k500"));
  assert_null(strmap_del(&m, "k500"));
  assert_int_equal(m.count, 999);
  /* replace keeps the count */
  assert_int_equal(strmap_put(&m, "k1", &vals[2]), 0);
  assert_ptr_equal(strmap_get(&m, "k1"), &vals[2]);
  assert_int_equal(m.count, 999);
  strmap_free(&m);
  assert_int_equal(m.count, 0);
}

static void test_sha256_stream(void **state) {
  (void)state;
  /* "abc" split across updates hashes like one buffer (FIPS 180-2 vector) */
  struct sha256_ctx c;
  char hex[65];
  assert_int_equal(sha256_init(&c), 0);
  sha256_update(&c, "a", 1);
  sha256_update(&c, "bc", 2);
  sha256_final(&c, hex);
  assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  assert_true(digest_hex_valid(hex));
  assert_false(digest_hex_valid("abc"));
}

/* capture_log runs fn with stderr sent to a temporary file and returns
 * what was written (static buffer). */
static const char *capture_log(void (*fn)(void)) {
  static char out[8192];
  FILE *tmp = tmpfile();
  assert_non_null(tmp);
  int saved = dup(STDERR_FILENO);
  dup2(fileno(tmp), STDERR_FILENO);
  fn();
  dup2(saved, STDERR_FILENO);
  close(saved);
  rewind(tmp);
  size_t n = fread(out, 1, sizeof out - 1, tmp);
  out[n] = '\0';
  fclose(tmp);
  return out;
}

static void log_some(void) {
  log_msg(LOG_INFO, "say \"hi\"\\ \x01\n\xc3\xa9");
  struct log_field f[] = {{"path", "/v2/a\"b", 0}, {"status", NULL, 503}};
  log_event(LOG_WARN, "access", f, 2);
  log_msg(LOG_DEBUG, "not shown");
}

/* JSON lines escape quotes, backslashes, control and non-ASCII bytes, keep
 * numbers as numbers, and one line is one object. */
static void test_log_json(void **state) {
  (void)state;
  log_set_format(LOG_FORMAT_JSON);
  const char *out = capture_log(log_some);
  log_set_format(LOG_FORMAT_TEXT);
  const char *l2 = strchr(out, '\n');
  assert_non_null(l2);
  assert_int_equal(strncmp(out, "{\"ts\":\"", 7), 0);
  assert_non_null(strstr(out, "\"level\":\"info\",\"msg\":\"say \\\"hi\\\"\\\\ \\u0001\\u000a"
                              "\\u00c3\\u00a9\"}\n"));
  assert_non_null(strstr(l2, "\"level\":\"warn\",\"msg\":\"access\","
                             "\"path\":\"/v2/a\\\"b\",\"status\":503}\n"));
  assert_null(strstr(out, "not shown"));
  int lines = 0;
  for (const char *p = out; *p; p++)
    lines += *p == '\n';
  assert_int_equal(lines, 2); /* the message's own newline was escaped */

  out = capture_log(log_some);
  assert_non_null(strstr(out, " warn access path=/v2/a\"b status=503\n"));
  enum log_format f;
  assert_int_equal(log_format_parse("JSON", &f), 0);
  assert_int_equal(f, LOG_FORMAT_JSON);
  assert_int_equal(log_format_parse("yaml", &f), RM_EPARSE);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_buf_limit),
      cmocka_unit_test(test_log_json),
      cmocka_unit_test(test_strmap),
      cmocka_unit_test(test_sha256_stream),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
