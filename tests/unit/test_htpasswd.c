/* test_htpasswd.c - config/htpasswd: the file format, its errors, the
 * index, and bcrypt verification.
 *
 * Errors are read by operators, so each refusal asserts the whole message
 * with its line and column. Verification runs against a hash made here with
 * libxcrypt (random salt, cost 5 to keep the test fast) and against one
 * fixed line written by Apache's `htpasswd -nbB user pass`, so a change in
 * how we call crypt cannot drift away from what the real tool writes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the four headers above first */
#include <cmocka.h>

#include <crypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "errors.h"
#include "htpasswd.h"

/* `htpasswd -nbB user pass` (apache2-utils 2.4) */
static const char apache_line[] =
    "user:$2y$05$j5BGT5g5j0fHLdn0hBk2hugKJf.DUyrYst4v37xpYLZ9.XgJa5HjW";
#define H "$2y$05$j5BGT5g5j0fHLdn0hBk2hugKJf.DUyrYst4v37xpYLZ9.XgJa5HjW"
#define H2 "$2b$10$abcdefghijklmnopqrstuu5Wm3xXx2B0xVQwYyZz.1234567890ab"
#define H3 "$2a$31$ABCDEFGHIJKLMNOPQRSTUOabcdefghijklmnopqrstuvwxyz01234"

static int parse(struct htpasswd *h, const char *s, char *err, size_t n) {
  return htpasswd_parse(h, s, strlen(s), "f", err, n);
}

static void test_parse_ok(void **state) {
  (void)state;
  static const char data[] = "# users of the mirror\n"
                             "\n"
                             "alice:" H "\r\n"
                             "   \t\n"
                             "#bob:" H "\n"
                             "bob smith:" H2 "\n"
                             "\xc3\xa9mile:" H3; /* no final newline */
  struct htpasswd h;
  char err[256];
  assert_int_equal(parse(&h, data, err, sizeof err), 0);
  assert_string_equal(err, "");
  assert_int_equal(h.n, 3);
  assert_string_equal(h.e[0].user, "alice");
  assert_string_equal(h.e[0].hash, H); /* the CR is gone */
  assert_string_equal(h.e[1].user, "bob smith");
  assert_string_equal(h.e[2].user, "\xc3\xa9mile");
  assert_string_equal(htpasswd_lookup(&h, "alice", 5), H);
  assert_string_equal(htpasswd_lookup(&h, "bob smith", 9), H2);
  assert_string_equal(htpasswd_lookup(&h, "\xc3\xa9mile", 6), H3);
  /* only len bytes count, and the match is exact */
  assert_string_equal(htpasswd_lookup(&h, "alice:secret", 5), H);
  assert_null(htpasswd_lookup(&h, "alic", 4));
  assert_null(htpasswd_lookup(&h, "alicee", 6));
  assert_null(htpasswd_lookup(&h, "Alice", 5));
  assert_null(htpasswd_lookup(&h, "#bob", 4));
  assert_null(htpasswd_lookup(&h, "", 0));
  htpasswd_free(&h);
  assert_int_equal(h.n, 0);
  assert_null(htpasswd_lookup(&h, "alice", 5));
  htpasswd_free(&h); /* safe twice */

  /* an empty file, or only comments: no users, no error */
  assert_int_equal(parse(&h, "", err, sizeof err), 0);
  assert_int_equal(h.n, 0);
  assert_null(htpasswd_lookup(&h, "alice", 5));
  htpasswd_free(&h);
  assert_int_equal(parse(&h, "# nobody\r\n\r\n", err, sizeof err), 0);
  assert_int_equal(h.n, 0);
  htpasswd_free(&h);

  /* the line htpasswd writes */
  assert_int_equal(parse(&h, apache_line, err, sizeof err), 0);
  assert_string_equal(htpasswd_lookup(&h, "user", 4), H);
  htpasswd_free(&h);
}

static void test_parse_errors(void **state) {
  (void)state;
  static const struct {
    const char *data;
    const char *want;
  } cases[] = {
      {"alice\n", "f:1:1: expected user:hash"},
      {"# c\nalice " H "\n", "f:2:1: expected user:hash"},
      {":" H "\n", "f:1:1: empty user name"},
      {"al\x01ice:" H "\n", "f:1:3: control character 0x01 in the user name"},
      {"alice\x7f:" H "\n", "f:1:6: control character 0x7f in the user name"},
      {"ali\tce:" H "\n", "f:1:4: control character 0x09 in the user name"},
      {" alice:" H "\n", "f:1:1: the user name starts with a space"},
      {"alice :" H "\n", "f:1:6: the user name ends with a space"},
      /* the other htpasswd schemes */
      {"alice:$apr1$Qv0kG1nR$6Ydtd7JdbmQDe9I5rLV6a1\n",
       "f:1:7: an MD5 ($apr1$) hash; only bcrypt (htpasswd -B) is accepted"},
      {"alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
       "f:1:7: a SHA-1 ({SHA}) hash; only bcrypt (htpasswd -B) is accepted"},
      {"alice:secret\n",
       "f:1:7: not a bcrypt hash ($2y$, $2b$ or $2a$; crypt, SHA-crypt and "
       "plain passwords are refused); only bcrypt (htpasswd -B) is accepted"},
      {"alice:$6$salt$abcdef\n",
       "f:1:7: not a bcrypt hash ($2y$, $2b$ or $2a$; crypt, SHA-crypt and "
       "plain passwords are refused); only bcrypt (htpasswd -B) is accepted"},
      {"alice:$2x$05$j5BGT5g5j0fHLdn0hBk2hugKJf.DUyrYst4v37xpYLZ9.XgJa5HjW\n",
       "f:1:7: not a bcrypt hash ($2y$, $2b$ or $2a$; crypt, SHA-crypt and "
       "plain passwords are refused); only bcrypt (htpasswd -B) is accepted"},
      {"alice:\n",
       "f:1:7: no hash after the user name; only bcrypt (htpasswd -B) is "
       "accepted"},
      /* bcrypt, but not right */
      {"alice:$2y$5$j5BGT5g5j0fHLdn0hBk2hugKJf.DUyrYst4v37xpYLZ9.XgJa5HjWx\n",
       "f:1:11: malformed bcrypt hash: expected a two-digit cost and '$' "
       "after $2y$"},
      {"alice:$2y$03$j5BGT5g5j0fHLdn0hBk2hugKJf.DUyrYst4v37xpYLZ9.XgJa5HjW\n",
       "f:1:11: bcrypt cost 03 is outside 04..31"},
      {"alice:$2b$32$j5BGT5g5j0fHLdn0hBk2hugKJf.DUyrYst4v37xpYLZ9.XgJa5HjW\n",
       "f:1:11: bcrypt cost 32 is outside 04..31"},
      {"alice:$2y$05$j5BGT5g5j0fHLdn0hBk2hugKJf.DUyrYst4v37xpYLZ9.XgJa5Hj\n",
       "f:1:14: malformed bcrypt hash: 52 characters after the cost, expected "
       "53"},
      {"alice:" H "W\n",
       "f:1:67: malformed bcrypt hash: 54 characters after the cost, expected "
       "53"},
      {"alice:" H " \n",
       "f:1:67: malformed bcrypt hash: 54 characters after the cost, expected "
       "53"},
      {"alice:$2y$05$j5BGT5g5j0fHLdn0hBk2hugKJf-DUyrYst4v37xpYLZ9.XgJa5HjW\n",
       "f:1:40: malformed bcrypt hash: byte 0x2d is not in bcrypt's alphabet "
       "(./A-Za-z0-9)"},
      /* duplicates, line numbers across CRLF, comments and blank lines */
      {"alice:" H "\r\n# x\r\n\r\nbob:" H "\r\nalice:" H2 "\r\n",
       "f:5:1: user \"alice\" is listed twice (first on line 1)"},
      {"a:" H "\nb:" H "\nc:" H "\nd\n", "f:4:1: expected user:hash"},
  };
  int failed = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct htpasswd h;
    char err[512];
    memset(&h, 0x5a, sizeof h);
    int rc = parse(&h, cases[i].data, err, sizeof err);
    if (rc != RM_ECONFIG || strcmp(err, cases[i].want) != 0) {
      print_error("case %zu: rc %d\n got: %s\nwant: %s\n", i, rc, err,
                  cases[i].want);
      failed++;
    }
    /* a refused file leaves nothing behind */
    assert_int_equal(h.n, 0);
    assert_null(h.e);
    htpasswd_free(&h);
  }
  assert_int_equal(failed, 0);

  /* a NUL is a control character, not the end of the name */
  static const char nul[] = "al\0ce:" H "\n";
  struct htpasswd h;
  char err[256];
  assert_int_equal(htpasswd_parse(&h, nul, sizeof nul - 1, "f", err, sizeof err),
                   RM_ECONFIG);
  assert_string_equal(err, "f:1:3: control character 0x00 in the user name");
  /* a tiny err buffer truncates, never overflows; NULL err is fine */
  char tiny[6];
  assert_int_equal(parse(&h, "alice\n", tiny, sizeof tiny), RM_ECONFIG);
  assert_string_equal(tiny, "f:1:1");
  assert_int_equal(parse(&h, "alice\n", NULL, 0), RM_ECONFIG);
}

static void test_many_users(void **state) {
  (void)state;
  size_t n = HTPASSWD_MAX_USERS + 1, o = 0;
  char *data = malloc(n * 80);
  assert_non_null(data);
  for (size_t i = 0; i < n; i++)
    o += (size_t)sprintf(data + o, "user%zu:" H "\n", i);
  struct htpasswd h;
  char err[256];
  assert_int_equal(htpasswd_parse(&h, data, o, "f", err, sizeof err),
                   RM_ECONFIG);
  assert_string_equal(err, "f:100001:1: more than 100000 users");
  /* exactly the cap loads, and every user is found */
  size_t last = o - strlen("user100000:" H "\n");
  assert_int_equal(htpasswd_parse(&h, data, last, "f", err, sizeof err), 0);
  assert_int_equal(h.n, HTPASSWD_MAX_USERS);
  for (size_t i = 0; i < HTPASSWD_MAX_USERS; i += 997) {
    char u[32];
    int ul = snprintf(u, sizeof u, "user%zu", i);
    assert_non_null(htpasswd_lookup(&h, u, (size_t)ul));
  }
  assert_non_null(htpasswd_lookup(&h, "user99999", 9));
  assert_null(htpasswd_lookup(&h, "user100000", 10));
  htpasswd_free(&h);
  free(data);
}

static void write_file(const char *path, const char *data, size_t len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  fclose(f);
}

static void test_load(void **state) {
  (void)state;
  char dir[64], path[128], err[512], want[512];
  struct htpasswd h;
  snprintf(dir, sizeof dir, "/tmp/test_htpasswd.XXXXXX");
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/htpasswd", dir);

  /* errors are named by the path */
  static const char bad[] = "user:" H "\nsecond:$apr1$x$y\n";
  write_file(path, bad, strlen(bad));
  assert_int_equal(htpasswd_load(&h, path, err, sizeof err), RM_ECONFIG);
  snprintf(want, sizeof want,
           "%s:2:8: an MD5 ($apr1$) hash; only bcrypt (htpasswd -B) is "
           "accepted",
           path);
  assert_string_equal(err, want);
  assert_int_equal(h.n, 0);

  write_file(path, apache_line, strlen(apache_line));
  assert_int_equal(htpasswd_load(&h, path, err, sizeof err), 0);
  assert_int_equal(h.n, 1);
  assert_string_equal(htpasswd_lookup(&h, "user", 4), H);
  htpasswd_free(&h);

  /* over 1 MiB, even of comments; a pipe-like endless source too */
  size_t big = HTPASSWD_MAX_FILE + 1;
  char *data = malloc(big);
  assert_non_null(data);
  memset(data, '#', big);
  write_file(path, data, big);
  free(data);
  assert_int_equal(htpasswd_load(&h, path, err, sizeof err), RM_ECONFIG);
  snprintf(want, sizeof want, "%s: file is larger than 1048576 bytes", path);
  assert_string_equal(err, want);
  /* a device or a FIFO is refused at once, never read (a FIFO nobody
   * writes would hang the load) */
  assert_int_equal(htpasswd_load(&h, "/dev/zero", err, sizeof err), UV_EINVAL);
  assert_string_equal(err, "/dev/zero: not a regular file");
  char fifo[300];
  snprintf(fifo, sizeof fifo, "%s.fifo", path);
  assert_int_equal(mkfifo(fifo, 0600), 0);
  assert_int_equal(htpasswd_load(&h, fifo, err, sizeof err), UV_EINVAL);
  unlink(fifo);
  /* exactly 1 MiB loads */
  data = malloc(HTPASSWD_MAX_FILE);
  assert_non_null(data);
  memset(data, '#', HTPASSWD_MAX_FILE);
  write_file(path, data, HTPASSWD_MAX_FILE);
  free(data);
  assert_int_equal(htpasswd_load(&h, path, err, sizeof err), 0);
  assert_int_equal(h.n, 0);
  htpasswd_free(&h);

  /* missing, a directory: the errno as a UV code, the system's text */
  unlink(path);
  assert_int_equal(htpasswd_load(&h, path, err, sizeof err), UV_ENOENT);
  snprintf(want, sizeof want, "%s: No such file or directory", path);
  assert_string_equal(err, want);
  assert_int_equal(htpasswd_load(&h, dir, err, sizeof err), UV_EISDIR);
  snprintf(want, sizeof want, "%s: Is a directory", dir);
  assert_string_equal(err, want);
  /* no err buffer is fine */
  assert_int_equal(htpasswd_load(&h, path, NULL, 0), UV_ENOENT);
  rmdir(dir);
}

static void test_verify(void **state) {
  (void)state;
  char salt[CRYPT_GENSALT_OUTPUT_SIZE], hash[128];
  struct crypt_data *cd = calloc(1, sizeof *cd);
  assert_non_null(cd);
  /* NULL random bytes: libxcrypt reads the OS's */
  assert_non_null(crypt_gensalt_rn("$2b$", 5, NULL, 0, salt, sizeof salt));
  const char *out = crypt_rn("correct horse", salt, cd, (int)sizeof *cd);
  assert_non_null(out);
  snprintf(hash, sizeof hash, "%s", out);
  free(cd);
  assert_int_equal(strncmp(hash, "$2b$05$", 7), 0);
  assert_int_equal(strlen(hash), 60);

  /* what we generate is what we accept */
  char line[160], err[256];
  struct htpasswd h;
  snprintf(line, sizeof line, "ci:%s\n", hash);
  assert_int_equal(parse(&h, line, err, sizeof err), 0);
  const char *stored = htpasswd_lookup(&h, "ci", 2);
  assert_non_null(stored);
  assert_int_equal(htpasswd_verify(stored, "correct horse", 13), 1);
  assert_int_equal(htpasswd_verify(stored, "correct horsf", 13), 0);
  assert_int_equal(htpasswd_verify(stored, "correct hors", 12), 0);
  assert_int_equal(htpasswd_verify(stored, "correct horse ", 14), 0);
  assert_int_equal(htpasswd_verify(stored, "", 0), 0);
  /* only pwlen bytes count, and a NUL inside never matches a prefix */
  assert_int_equal(htpasswd_verify(stored, "correct horse battery", 13), 1);
  assert_int_equal(htpasswd_verify(stored, "correct horse\0x", 15), 0);
  htpasswd_free(&h);

  /* the fixed line from Apache's htpasswd */
  assert_int_equal(parse(&h, apache_line, err, sizeof err), 0);
  stored = htpasswd_lookup(&h, "user", 4);
  assert_int_equal(htpasswd_verify(stored, "pass", 4), 1);
  assert_int_equal(htpasswd_verify(stored, "Pass", 4), 0);
  assert_int_equal(htpasswd_verify(stored, "pas", 3), 0);
  assert_int_equal(htpasswd_verify(stored, "passs", 5), 0);
  htpasswd_free(&h);

  /* anything but a valid bcrypt hash, and absurd passwords, never match */
  assert_int_equal(htpasswd_verify("pass", "pass", 4), 0);
  assert_int_equal(htpasswd_verify("", "", 0), 0);
  assert_int_equal(htpasswd_verify("$apr1$x$y", "pass", 4), 0);
  assert_int_equal(htpasswd_verify(NULL, "pass", 4), 0);
  assert_int_equal(htpasswd_verify(H, NULL, 0), 0);
  char *huge = malloc(4096);
  assert_non_null(huge);
  memset(huge, 'p', 4096);
  assert_int_equal(htpasswd_verify(H, huge, 4096), 0);
  free(huge);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_ok),
      cmocka_unit_test(test_parse_errors),
      cmocka_unit_test(test_many_users),
      cmocka_unit_test(test_load),
      cmocka_unit_test(test_verify),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
