/* test_holders.c - the holders table: askers go only to older holders, no
 * holder gets more than fanout askers, ranks order the candidates, entries
 * expire, and the table stays bounded. Also the tree it builds: 15 askers
 * of one blob with fanout 2 never put more than 2 streams on any node. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "../../node/holders.h"

static const char hex[] = "aa00000000000000000000000000000000000000000000000000000000000000";

static void test_order_and_fanout(void **state) {
  (void)state;
  struct holders *h;
  assert_int_equal(holders_new(&h), 0);
  const char *out[4];
  /* nobody holds it yet */
  assert_int_equal(holders_pick(h, hex, "a", 2, 0, NULL, NULL, out, 4), 0);
  assert_int_equal(holders_note(h, hex, "a", 0, "lib/x", "docker.io", 0), 0);
  /* a is never sent to itself */
  assert_int_equal(holders_pick(h, hex, "a", 2, 0, NULL, NULL, out, 4), 0);
  assert_int_equal(holders_note(h, hex, "b", 0, NULL, NULL, 0), 0);
  /* b may go to a (older), a never to b (younger) */
  assert_int_equal(holders_pick(h, hex, "a", 2, 0, NULL, NULL, out, 4), 0);
  assert_int_equal(holders_pick(h, hex, "b", 2, 0, NULL, NULL, out, 4), 1);
  assert_string_equal(out[0], "a");
  /* an asker not in the table may go anywhere; a has one asker, b none */
  assert_int_equal(holders_pick(h, hex, "c", 2, 0, NULL, NULL, out, 4), 2);
  assert_string_equal(out[0], "b");
  assert_int_equal(holders_pick(h, hex, "d", 2, 0, NULL, NULL, out, 4), 2);
  assert_string_equal(out[0], "a"); /* a: 1, b: 1, a is older */
  assert_int_equal(holders_pick(h, hex, "e", 2, 0, NULL, NULL, out, 4), 1);
  assert_string_equal(out[0], "b");
  /* both full */
  assert_int_equal(holders_pick(h, hex, "f", 2, 0, NULL, NULL, out, 4), 0);
  /* fanout 0: never */
  assert_int_equal(holders_pick(h, hex, "f", 0, 0, NULL, NULL, out, 4), 0);
  holders_free(h);
}

static int rank_zone(void *ud, const char *asker, const char *cand) {
  (void)ud;
  if (strcmp(cand, "dead") == 0)
    return -1;
  return asker[0] == cand[0] ? 0 : 1; /* same first letter: same zone */
}

static void test_rank(void **state) {
  (void)state;
  struct holders *h;
  assert_int_equal(holders_new(&h), 0);
  holders_note(h, hex, "dead", 1, NULL, NULL, 0);
  holders_note(h, hex, "x1", 0, NULL, NULL, 0);
  holders_note(h, hex, "y1", 0, NULL, NULL, 0);
  const char *out[4];
  assert_int_equal(holders_pick(h, hex, "y9", 4, 0, rank_zone, NULL, out, 4), 2);
  assert_string_equal(out[0], "y1");
  assert_string_equal(out[1], "x1");
  holders_free(h);
}

static void test_expiry_and_forget(void **state) {
  (void)state;
  struct holders *h;
  assert_int_equal(holders_new(&h), 0);
  const char *out[2];
  holders_note(h, hex, "a", 0, NULL, NULL, 1000);
  holders_note(h, hex, "b", 1, NULL, NULL, 1000);
  uint64_t later = 1000 + HOLDERS_TTL_FETCHING_MS + 1;
  assert_int_equal(holders_pick(h, hex, "z", 8, later, NULL, NULL, out, 2), 1);
  assert_string_equal(out[0], "b"); /* a downloading entry expires first */
  assert_int_equal(holders_pick(h, hex, "z", 8, 1000 + HOLDERS_TTL_HELD_MS + 1, NULL,
                                NULL, out, 2),
                   0);
  holders_note(h, hex, "c", 1, NULL, NULL, 2000);
  holders_note(h, hex, "d", 1, NULL, NULL, 2000);
  holders_forget(h, hex, "c");
  assert_int_equal(holders_pick(h, hex, "z", 8, 2000, NULL, NULL, out, 2), 1);
  assert_string_equal(out[0], "d");
  /* known: whole copies only */
  holders_note(h, hex, "e", 0, NULL, NULL, 2000);
  assert_int_equal(holders_known(h, hex, 2000, out, 2), 1);
  assert_string_equal(out[0], "d");
  holders_free(h);
}

static void test_uploads_and_bounds(void **state) {
  (void)state;
  struct holders *h;
  assert_int_equal(holders_new(&h), 0);
  holders_upload_begin(h, hex);
  holders_upload_begin(h, hex);
  assert_int_equal(holders_uploads(h, hex), 2);
  holders_upload_end(h, hex);
  holders_upload_end(h, hex);
  holders_upload_end(h, hex); /* one too many: ignored */
  assert_int_equal(holders_uploads(h, hex), 0);
  assert_int_equal(holders_digests(h), 0);
  /* per digest: the oldest of 33 goes */
  char name[16];
  for (int i = 0; i < HOLDERS_PER_DIGEST + 1; i++) {
    snprintf(name, sizeof name, "n%d", i);
    assert_int_equal(holders_note(h, hex, name, 0, NULL, NULL, 0), 0);
  }
  const char *out[HOLDERS_PER_DIGEST + 1];
  size_t n = holders_pick(h, hex, "z", 1, 0, NULL, NULL, out, HOLDERS_PER_DIGEST + 1);
  assert_int_equal(n, HOLDERS_PER_DIGEST);
  for (size_t i = 0; i < n; i++)
    assert_string_not_equal(out[i], "n0");
  /* the table: full of live digests, then refused; expired ones make room */
  char d[72];
  for (int i = 1; i < HOLDERS_DIGESTS_MAX; i++) {
    snprintf(d, sizeof d, "%064x", i);
    assert_int_equal(holders_note(h, d, "a", 0, NULL, NULL, 0), 0);
  }
  assert_int_equal(holders_note(h, "ff", "a", 0, NULL, NULL, 0), UV_ENOSPC);
  assert_int_equal(holders_note(h, "ff", "a", 0, NULL, NULL, HOLDERS_TTL_FETCHING_MS + 1),
                   0);
  /* names too long for an entry */
  char longname[HOLDERS_NAME_MAX + 8];
  memset(longname, 'x', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  assert_int_equal(holders_note(h, hex, longname, 0, NULL, NULL, 0), UV_EINVAL);
  holders_free(h);
}

/* The owner serves `fanout` askers itself and sends the rest down the
 * tree: count every node's streams. */
static void test_tree(void **state) {
  (void)state;
  struct holders *h;
  assert_int_equal(holders_new(&h), 0);
  int uploads[16] = {0}; /* index 0: the owner */
  char names[16][8];
  for (int i = 1; i < 16; i++) {
    snprintf(names[i], sizeof names[i], "n%d", i);
    holders_note(h, hex, names[i], 0, NULL, NULL, 0);
    const char *out[2];
    if (holders_uploads(h, hex) >= 2 &&
        holders_pick(h, hex, names[i], 2, 0, NULL, NULL, out, 2) > 0) {
      int k = 0;
      sscanf(out[0], "n%d", &k);
      assert_true(k > 0 && k < i);
      uploads[k]++;
    } else {
      holders_upload_begin(h, hex);
      uploads[0]++;
    }
  }
  for (int i = 0; i < 16; i++)
    assert_true(uploads[i] <= 2);
  assert_int_equal(uploads[0], 2);
  holders_free(h);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_order_and_fanout),
      cmocka_unit_test(test_rank),
      cmocka_unit_test(test_expiry_and_forget),
      cmocka_unit_test(test_uploads_and_bounds),
      cmocka_unit_test(test_tree),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
