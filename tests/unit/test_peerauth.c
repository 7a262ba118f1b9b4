/* test_peerauth.c - signatures on peer requests: a good one verifies, and
 * every change to what it covers, a stale time, another key or a mangled
 * header is refused. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>
#include <uv.h>

#include "../../common/errors.h"
#include "../../node/peerauth.h"

static const uint8_t secret[32] = "0123456789abcdef0123456789abcdef";
static const int64_t now = 1800000000000;

static void sign(const struct peerauth *pa, char *hdr, char *sig) {
  assert_int_equal(peerauth_sign(pa, "GET", "/v2/a/blobs/sha256:00?ns=docker.io", "n1",
                                 now, hdr, sig),
                   0);
}

static void test_roundtrip(void **state) {
  (void)state;
  struct peerauth pa;
  peerauth_init(&pa, secret, sizeof secret);
  char hdr[PEERAUTH_HDR_MAX], sig[65], got[65];
  sign(&pa, hdr, sig);
  assert_int_equal(strlen(sig), 64);
  assert_int_equal(peerauth_verify(&pa, "GET", "/v2/a/blobs/sha256:00?ns=docker.io", "n1",
                                   hdr, now + 1000, got),
                   0);
  assert_string_equal(sig, got);
}

static void test_refusals(void **state) {
  (void)state;
  struct peerauth pa, other;
  peerauth_init(&pa, secret, sizeof secret);
  peerauth_init(&other, secret, 16);
  char hdr[PEERAUTH_HDR_MAX], sig[65], got[65];
  sign(&pa, hdr, sig);
  const char *t = "/v2/a/blobs/sha256:00?ns=docker.io";
  assert_int_equal(peerauth_verify(&pa, "HEAD", t, "n1", hdr, now, got), RM_EAUTH);
  assert_int_equal(peerauth_verify(&pa, "GET", "/v2/a/blobs/sha256:01?ns=docker.io", "n1",
                                   hdr, now, got),
                   RM_EAUTH);
  assert_int_equal(peerauth_verify(&pa, "GET", t, "n2", hdr, now, got), RM_EAUTH);
  assert_int_equal(peerauth_verify(&other, "GET", t, "n1", hdr, now, got), RM_EAUTH);
  assert_int_equal(peerauth_verify(&pa, "GET", t, "n1", hdr, now + PEERAUTH_SKEW_MS + 1, got),
                   RM_EAUTH);
  assert_int_equal(peerauth_verify(&pa, "GET", t, "n1", hdr, now - PEERAUTH_SKEW_MS - 1, got),
                   RM_EAUTH);
  assert_int_equal(peerauth_verify(&pa, "GET", t, "n1", NULL, now, got), RM_EAUTH);
  char bad[PEERAUTH_HDR_MAX];
  strcpy(bad, hdr);
  bad[strlen(bad) - 1] ^= 1;
  assert_int_equal(peerauth_verify(&pa, "GET", t, "n1", bad, now, got), RM_EAUTH);
  assert_int_equal(peerauth_verify(&pa, "GET", t, "n1", "t=1,sig=", now, got), RM_EAUTH);
  assert_int_equal(peerauth_verify(&pa, "GET", t, "n1", "garbage", now, got), RM_EAUTH);
  struct peerauth off;
  peerauth_init(&off, NULL, 0);
  assert_int_equal(off.enabled, 0);
  assert_int_equal(peerauth_sign(&off, "GET", t, "n1", now, hdr, sig), UV_EINVAL);
}

static void test_reply(void **state) {
  (void)state;
  struct peerauth pa, other;
  peerauth_init(&pa, secret, sizeof secret);
  peerauth_init(&other, secret + 1, 16);
  char hdr[PEERAUTH_HDR_MAX], sig[65], reply[80];
  sign(&pa, hdr, sig);
  peerauth_reply(&pa, sig, "abc\n12\napplication/x\n5", reply, sizeof reply);
  assert_int_equal(peerauth_reply_check(&pa, sig, "abc\n12\napplication/x\n5", reply), 0);
  assert_int_equal(peerauth_reply_check(&pa, sig, "abd\n12\napplication/x\n5", reply),
                   RM_EAUTH);
  assert_int_equal(peerauth_reply_check(&other, sig, "abc\n12\napplication/x\n5", reply),
                   RM_EAUTH);
  char sig2[65];
  memcpy(sig2, sig, sizeof sig2);
  sig2[0] = sig2[0] == 'a' ? 'b' : 'a';
  assert_int_equal(peerauth_reply_check(&pa, sig2, "abc\n12\napplication/x\n5", reply),
                   RM_EAUTH);
  assert_int_equal(peerauth_reply_check(&pa, sig, "abc\n12\napplication/x\n5", NULL), RM_EAUTH);
  assert_int_equal(peerauth_reply_check(&pa, sig, "abc\n12\napplication/x\n5", "sig=none"),
                   RM_EAUTH);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_reply),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
