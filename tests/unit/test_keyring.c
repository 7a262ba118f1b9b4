/* test_keyring.c - gossip/keyring.c: AES-GCM sealing as memberlist does it,
 * checked against messages sealed by Python's cryptography AESGCM with the
 * test keys of memberlist-wire.md section 13.4.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <string.h>
#include <uv.h>

#include "../../common/errors.h"
#include "../../gossip/keyring.h"

/* section 13.4: bytes 0x00, 0x01, ... */
#define KEY16_B64 "AAECAwQFBgcICQoLDA0ODw=="
#define KEY32_B64 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

/* memberlist-wire.md 13.2: ping a -> b, seq 1 */
static const uint8_t PING[59] = {
    0x00, 0x85, 0xa4, 'N', 'o', 'd', 'e', 0xa1, 'b', 0xa5, 'S', 'e',  'q',  'N',  'o',
    0x01, 0xaa, 'S',  'o', 'u', 'r', 'c', 'e',  'A', 'd',  'd', 'r',  0xa4, 0x7f, 0x00,
    0x00, 0x01, 0xaa, 'S', 'o', 'u', 'r', 'c',  'e', 'N',  'o', 'd',  'e',  0xa1, 'a',
    0xaa, 'S',  'o',  'u', 'r', 'c', 'e', 'P',  'o', 'r',  't', 0xcd, 0x1f, 0x0a,
};
/* ... and dead b from b (the leave) */
static const uint8_t DEAD[29] = {
    0x05, 0x83, 0xa4, 'F', 'r', 'o', 'm',  0xa1, 'b', 0xab, 'I', 'n', 'c',  'a', 'r',
    'n',  'a',  't',  'i', 'o', 'n', 0x01, 0xa4, 'N', 'o',  'd', 'e', 0xa1, 'b',
};

/* Python cryptography AESGCM, key AAECAwQFBgcICQoLDA0ODw== (00..0f),
 * nonce 30fdc88ae33ce2e10d057762, no AD, plaintext = the 59-byte ping:
 * version 1 as serf sends on UDP */
static const uint8_t enc_v1_ping[88] = {
    0x01, 0x30, 0xfd, 0xc8, 0x8a, 0xe3, 0x3c, 0xe2, 0xe1, 0x0d, 0x05, 0x77, 0x62,
    0x18, 0x7f, 0xcc, 0xfb, 0x33, 0xb7, 0x0d, 0x65, 0x31, 0x4a, 0x57, 0x97, 0x1d,
    0x03, 0x3a, 0x3d, 0x90, 0xaf, 0x01, 0xc4, 0xea, 0xaf, 0x25, 0x38, 0x49, 0x1f,
    0xfa, 0x5c, 0xb9, 0xbc, 0x78, 0xb8, 0xea, 0x8e, 0x49, 0x16, 0x7e, 0x14, 0x7d,
    0x21, 0x58, 0x53, 0x71, 0xa1, 0xb8, 0xc9, 0xae, 0xea, 0x8f, 0x1c, 0x23, 0xc3,
    0xc0, 0x9b, 0x8a, 0x49, 0x7c, 0x59, 0x84, 0x6a, 0x89, 0x3e, 0xd9, 0x1c, 0xc9,
    0x4f, 0x1e, 0x78, 0xc8, 0x89, 0xa6, 0x0e, 0x8a, 0xed, 0x4e,
};
/* version 0: the ping PKCS#7-padded to 64 bytes, nonce 000102..0b */
static const uint8_t enc_v0_ping[93] = {
    0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x93,
    0xe9, 0x03, 0x80, 0x09, 0x7f, 0x92, 0xf5, 0x29, 0x77, 0x32, 0xef, 0x47, 0xed, 0x1f,
    0x09, 0x19, 0x75, 0x75, 0x93, 0x21, 0x8e, 0x98, 0xb7, 0x82, 0x45, 0x83, 0x89, 0x6b,
    0x44, 0xa2, 0x6d, 0x2f, 0xf7, 0xb4, 0x82, 0x86, 0xe3, 0xd2, 0xad, 0x2f, 0x90, 0x6c,
    0x46, 0xa1, 0x23, 0x84, 0xfd, 0xb9, 0xed, 0x77, 0x95, 0x54, 0xe8, 0x44, 0x0f, 0xe3,
    0x51, 0x78, 0xd7, 0xaf, 0x49, 0x13, 0xe1, 0x91, 0x16, 0x9e, 0x3a, 0xc0, 0x56, 0x1e,
    0xe9, 0xd8, 0x61, 0x08, 0xb0, 0x46, 0x96, 0x14, 0x76,
};
/* TCP: [0a][len:u32] header as AD, 32-byte key 00..1f, nonce
 * 1bc5ff9c5fbfe2f73d2c1473, plaintext = the 29-byte dead b */
static const uint8_t enc_tcp_dead[63] = {
    0x0a, 0x00, 0x00, 0x00, 0x3a, 0x01, 0x1b, 0xc5, 0xff, 0x9c, 0x5f, 0xbf, 0xe2,
    0xf7, 0x3d, 0x2c, 0x14, 0x73, 0x88, 0xa8, 0x26, 0x2d, 0x76, 0x18, 0x94, 0x94,
    0x0f, 0xa9, 0xf6, 0x8c, 0xc8, 0x52, 0x76, 0x12, 0x32, 0x71, 0x21, 0xc5, 0xd7,
    0xa8, 0x4d, 0x78, 0x6a, 0x42, 0x7b, 0x9b, 0xee, 0xb6, 0x97, 0x39, 0x64, 0x4a,
    0x88, 0x28, 0x49, 0x42, 0xe2, 0x06, 0xe1, 0x9c, 0xf8, 0x5d, 0x52,
};

static void key_bytes(uint8_t *k, size_t n, uint8_t first) {
  for (size_t i = 0; i < n; i++)
    k[i] = (uint8_t)(first + i);
}

/* Seals like memberlist's encryptPayload with a chosen version and nonce
 * and no padding logic of its own, to build version 0 messages (good and
 * bad) that our keyring never sends. */
static size_t seal_raw(const uint8_t *key, size_t key_len, uint8_t vsn, const uint8_t *pt,
                       size_t len, uint8_t *out) {
  static const uint8_t nonce[12] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2};
  const EVP_CIPHER *c = key_len == 16   ? EVP_aes_128_gcm()
                        : key_len == 24 ? EVP_aes_192_gcm()
                                        : EVP_aes_256_gcm();
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  int outl;
  out[0] = vsn;
  memcpy(out + 1, nonce, 12);
  assert_int_equal(EVP_EncryptInit_ex(ctx, c, NULL, key, nonce), 1);
  assert_int_equal(EVP_EncryptUpdate(ctx, out + 13, &outl, pt, (int)len), 1);
  assert_int_equal(EVP_EncryptFinal_ex(ctx, out + 13 + len, &outl), 1);
  assert_int_equal(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, out + 13 + len), 1);
  EVP_CIPHER_CTX_free(ctx);
  return 13 + len + 16;
}

static void test_round_trip_key_sizes(void **state) {
  (void)state;
  static const size_t sizes[] = {16, 24, 32};
  uint8_t key[32], sealed[256], plain[256];
  const uint8_t ad[5] = {0x0a, 0, 0, 0, 88};
  for (size_t s = 0; s < 3; s++) {
    struct keyring kr;
    keyring_init(&kr);
    key_bytes(key, sizes[s], (uint8_t)(s * 40));
    assert_int_equal(keyring_add(&kr, key, sizes[s]), 0);

    /* UDP: no additional data */
    int n = keyring_encrypt(&kr, PING, sizeof PING, NULL, 0, sealed, sizeof sealed);
    assert_int_equal(n, (int)sizeof PING + KEYRING_OVERHEAD);
    assert_int_equal(sealed[0], 1);
    assert_int_equal(
        keyring_decrypt(&kr, sealed, (size_t)n, NULL, 0, plain, sizeof plain),
        (int)sizeof PING);
    assert_memory_equal(plain, PING, sizeof PING);

    /* TCP: the 5-byte header is additional data; another one fails */
    n = keyring_encrypt(&kr, DEAD, sizeof DEAD, ad, sizeof ad, sealed, sizeof sealed);
    assert_int_equal(n, (int)sizeof DEAD + KEYRING_OVERHEAD);
    assert_int_equal(
        keyring_decrypt(&kr, sealed, (size_t)n, ad, sizeof ad, plain, sizeof plain),
        (int)sizeof DEAD);
    assert_memory_equal(plain, DEAD, sizeof DEAD);
    const uint8_t ad2[5] = {0x0a, 0, 0, 0, 89};
    assert_int_equal(
        keyring_decrypt(&kr, sealed, (size_t)n, ad2, sizeof ad2, plain, sizeof plain),
        RM_EAUTH);
    assert_int_equal(
        keyring_decrypt(&kr, sealed, (size_t)n, NULL, 0, plain, sizeof plain), RM_EAUTH);

    /* an empty plaintext seals to the bare overhead */
    n = keyring_encrypt(&kr, PING, 0, NULL, 0, sealed, sizeof sealed);
    assert_int_equal(n, KEYRING_OVERHEAD);
    assert_int_equal(keyring_decrypt(&kr, sealed, (size_t)n, NULL, 0, NULL, 0), 0);
  }
}

static void test_tamper_and_wrong_key(void **state) {
  (void)state;
  struct keyring kr, other;
  uint8_t key[32], sealed[128], plain[128];
  keyring_init(&kr);
  keyring_init(&other);
  key_bytes(key, 32, 0);
  assert_int_equal(keyring_add(&kr, key, 32), 0);
  key[31] ^= 1;
  assert_int_equal(keyring_add(&other, key, 32), 0);
  int n = keyring_encrypt(&kr, PING, sizeof PING, NULL, 0, sealed, sizeof sealed);
  assert_int_equal(
      keyring_decrypt(&other, sealed, (size_t)n, NULL, 0, plain, sizeof plain), RM_EAUTH);
  /* a flip anywhere - nonce, ciphertext, tag - fails authentication */
  for (int i = 1; i < n; i++) {
    sealed[i] ^= 0x01;
    assert_int_equal(
        keyring_decrypt(&kr, sealed, (size_t)n, NULL, 0, plain, sizeof plain), RM_EAUTH);
    sealed[i] ^= 0x01;
  }
  /* an empty keyring opens nothing and seals nothing */
  struct keyring none;
  keyring_init(&none);
  assert_int_equal(
      keyring_decrypt(&none, sealed, (size_t)n, NULL, 0, plain, sizeof plain), RM_EAUTH);
  assert_int_equal(
      keyring_encrypt(&none, PING, sizeof PING, NULL, 0, sealed, sizeof sealed),
      UV_EINVAL);
  /* two seals of one message differ: fresh random nonces */
  uint8_t again[128];
  assert_int_equal(keyring_encrypt(&kr, PING, sizeof PING, NULL, 0, again, sizeof again),
                   n);
  assert_memory_not_equal(sealed + 1, again + 1, 12);
}

static void test_multiple_keys(void **state) {
  (void)state;
  struct keyring old_primary, rotated;
  uint8_t k1[16], k2[24], k3[32], sealed[128], plain[128];
  key_bytes(k1, 16, 1);
  key_bytes(k2, 24, 2);
  key_bytes(k3, 32, 3);
  keyring_init(&old_primary);
  assert_int_equal(keyring_add(&old_primary, k2, 24), 0);
  keyring_init(&rotated);
  assert_int_equal(keyring_add(&rotated, k1, 16), 0); /* primary */
  assert_int_equal(keyring_add(&rotated, k3, 32), 0);
  assert_int_equal(keyring_add(&rotated, k2, 24), 0);
  assert_int_equal(keyring_add(&rotated, k2, 24), 0); /* installed once */
  assert_int_equal(rotated.n, 3);

  /* a peer still on the old primary: opened by our third key */
  int n =
      keyring_encrypt(&old_primary, PING, sizeof PING, NULL, 0, sealed, sizeof sealed);
  assert_int_equal(
      keyring_decrypt(&rotated, sealed, (size_t)n, NULL, 0, plain, sizeof plain),
      (int)sizeof PING);
  assert_memory_equal(plain, PING, sizeof PING);
  /* we seal with our primary, which the old peer does not have */
  n = keyring_encrypt(&rotated, PING, sizeof PING, NULL, 0, sealed, sizeof sealed);
  assert_int_equal(
      keyring_decrypt(&old_primary, sealed, (size_t)n, NULL, 0, plain, sizeof plain),
      RM_EAUTH);
  struct keyring k1_only;
  keyring_init(&k1_only);
  assert_int_equal(keyring_add(&k1_only, k1, 16), 0);
  assert_int_equal(
      keyring_decrypt(&k1_only, sealed, (size_t)n, NULL, 0, plain, sizeof plain),
      (int)sizeof PING);

  /* limits */
  struct keyring full;
  uint8_t k[16];
  keyring_init(&full);
  for (int i = 0; i < KEYRING_MAX_KEYS; i++) {
    key_bytes(k, 16, (uint8_t)(i * 16));
    assert_int_equal(keyring_add(&full, k, 16), 0);
  }
  k[0] ^= 0xff;
  assert_int_equal(keyring_add(&full, k, 16), RM_ETOOBIG);
  assert_int_equal(keyring_add(&full, k, 20), UV_EINVAL);
  assert_int_equal(keyring_add(&full, k, 0), UV_EINVAL);
}

static void test_version0(void **state) {
  (void)state;
  struct keyring kr;
  uint8_t key[16], pt[80], sealed[160], plain[160];
  keyring_init(&kr);
  assert_int_equal(keyring_add_base64(&kr, KEY16_B64), 0);
  key_bytes(key, 16, 0);

  /* sealed by Python, padded 59 -> 64 */
  assert_int_equal(
      keyring_decrypt(&kr, enc_v0_ping, sizeof enc_v0_ping, NULL, 0, plain, sizeof plain),
      (int)sizeof PING);
  assert_memory_equal(plain, PING, sizeof PING);

  /* a whole block of padding: 48 bytes + 16 x 0x10 */
  memcpy(pt, PING, 48);
  memset(pt + 48, 16, 16);
  size_t n = seal_raw(key, 16, 0, pt, 64, sealed);
  assert_int_equal(keyring_decrypt(&kr, sealed, n, NULL, 0, plain, sizeof plain), 48);
  assert_memory_equal(plain, PING, 48);
  /* the smallest v0 message: only padding */
  memset(pt, 16, 16);
  n = seal_raw(key, 16, 0, pt, 16, sealed);
  assert_int_equal(n, 45);
  assert_int_equal(keyring_decrypt(&kr, sealed, n, NULL, 0, plain, sizeof plain), 0);

  /* bad padding under a valid tag: pad byte 0, 17, inconsistent, not a
   * whole block */
  memcpy(pt, PING, sizeof PING);
  memset(pt + 59, 5, 5);
  pt[63] = 0;
  n = seal_raw(key, 16, 0, pt, 64, sealed);
  assert_int_equal(keyring_decrypt(&kr, sealed, n, NULL, 0, plain, sizeof plain),
                   RM_EPARSE);
  pt[63] = 17;
  n = seal_raw(key, 16, 0, pt, 64, sealed);
  assert_int_equal(keyring_decrypt(&kr, sealed, n, NULL, 0, plain, sizeof plain),
                   RM_EPARSE);
  memset(pt + 60, 4, 4);
  pt[61] = 3;
  n = seal_raw(key, 16, 0, pt, 64, sealed);
  assert_int_equal(keyring_decrypt(&kr, sealed, n, NULL, 0, plain, sizeof plain),
                   RM_EPARSE);
  memset(pt + 60, 4, 4);
  n = seal_raw(key, 16, 0, pt, 64, sealed);
  assert_int_equal(keyring_decrypt(&kr, sealed, n, NULL, 0, plain, sizeof plain), 60);
  n = seal_raw(key, 16, 0, pt, 63, sealed);
  assert_int_equal(keyring_decrypt(&kr, sealed, n, NULL, 0, plain, sizeof plain),
                   RM_EPARSE);
}

static void test_truncated_and_versions(void **state) {
  (void)state;
  struct keyring kr;
  uint8_t plain[128], buf[128];
  keyring_init(&kr);
  assert_int_equal(keyring_add_base64(&kr, KEY16_B64), 0);
  /* every cut of a valid message: too short, or the tag no longer fits */
  for (size_t cut = 0; cut < sizeof enc_v1_ping; cut++) {
    int rc = keyring_decrypt(&kr, enc_v1_ping, cut, NULL, 0, plain, sizeof plain);
    assert_int_equal(rc, cut < KEYRING_OVERHEAD ? RM_EPARSE : RM_EAUTH);
  }
  assert_int_equal(keyring_decrypt(&kr, NULL, 0, NULL, 0, plain, sizeof plain),
                   RM_EPARSE);
  /* version 2 and up are not ours; version 0 needs 45 bytes */
  memcpy(buf, enc_v1_ping, sizeof enc_v1_ping);
  buf[0] = 2;
  assert_int_equal(
      keyring_decrypt(&kr, buf, sizeof enc_v1_ping, NULL, 0, plain, sizeof plain),
      RM_EPARSE);
  buf[0] = 0;
  assert_int_equal(keyring_decrypt(&kr, buf, 44, NULL, 0, plain, sizeof plain),
                   RM_EPARSE);
  assert_int_equal(keyring_decrypt(&kr, buf, 45, NULL, 0, plain, sizeof plain), RM_EAUTH);
  /* output too small */
  assert_int_equal(
      keyring_decrypt(&kr, enc_v1_ping, sizeof enc_v1_ping, NULL, 0, plain, 58),
      RM_ETOOBIG);
  assert_int_equal(keyring_encrypt(&kr, PING, sizeof PING, NULL, 0, buf, 87), RM_ETOOBIG);
  assert_int_equal(keyring_encrypt(&kr, PING, sizeof PING, NULL, 0, buf, 88), 88);
}

/* Messages sealed by Python's cryptography (what serf's Go code produces,
 * per the captures of section 13.4). */
static void test_python_interop(void **state) {
  (void)state;
  struct keyring kr;
  uint8_t plain[128];
  keyring_init(&kr);
  assert_int_equal(keyring_add_base64(&kr, KEY16_B64), 0);
  assert_int_equal(kr.key_len[0], 16);
  assert_int_equal(
      keyring_decrypt(&kr, enc_v1_ping, sizeof enc_v1_ping, NULL, 0, plain, sizeof plain),
      (int)sizeof PING);
  assert_memory_equal(plain, PING, sizeof PING);

  /* TCP: [0a][len] header (the AD), then the sealed blob */
  struct keyring kr32;
  keyring_init(&kr32);
  assert_int_equal(keyring_add_base64(&kr32, KEY32_B64), 0);
  assert_int_equal(kr32.key_len[0], 32);
  size_t body = (size_t)enc_tcp_dead[1] << 24 | (size_t)enc_tcp_dead[2] << 16 |
                (size_t)enc_tcp_dead[3] << 8 | enc_tcp_dead[4];
  assert_int_equal(body + 5, sizeof enc_tcp_dead);
  assert_int_equal(keyring_decrypt(&kr32, enc_tcp_dead + 5, body, enc_tcp_dead, 5, plain,
                                   sizeof plain),
                   (int)sizeof DEAD);
  assert_memory_equal(plain, DEAD, sizeof DEAD);
  /* the wrong key size class does not open it */
  assert_int_equal(
      keyring_decrypt(&kr, enc_tcp_dead + 5, body, enc_tcp_dead, 5, plain, sizeof plain),
      RM_EAUTH);
  /* both keys in one ring: the second opens it */
  assert_int_equal(keyring_add_base64(&kr, KEY32_B64), 0);
  assert_int_equal(
      keyring_decrypt(&kr, enc_tcp_dead + 5, body, enc_tcp_dead, 5, plain, sizeof plain),
      (int)sizeof DEAD);
}

static void test_base64(void **state) {
  (void)state;
  struct keyring kr;
  uint8_t k[32];
  keyring_init(&kr);
  /* 16 (two '='), 24 (none), 32 (one '=') bytes */
  assert_int_equal(keyring_add_base64(&kr, KEY16_B64), 0);
  assert_int_equal(keyring_add_base64(&kr, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX"), 0);
  assert_int_equal(keyring_add_base64(&kr, " " KEY32_B64 "\n"), 0);
  assert_int_equal(kr.n, 3);
  assert_int_equal(kr.key_len[0], 16);
  assert_int_equal(kr.key_len[1], 24);
  assert_int_equal(kr.key_len[2], 32);
  key_bytes(k, 32, 0);
  assert_memory_equal(kr.keys[0], k, 16);
  assert_memory_equal(kr.keys[1], k, 24);
  assert_memory_equal(kr.keys[2], k, 32);

  struct keyring bad;
  keyring_init(&bad);
  assert_int_equal(keyring_add_base64(&bad, NULL), UV_EINVAL);
  assert_int_equal(keyring_add_base64(&bad, ""), UV_EINVAL);
  assert_int_equal(keyring_add_base64(&bad, "   "), UV_EINVAL);
  /* 15 and 17 bytes: no such AES key */
  assert_int_equal(keyring_add_base64(&bad, "AAECAwQFBgcICQoLDA0O"), UV_EINVAL);
  assert_int_equal(keyring_add_base64(&bad, "AAECAwQFBgcICQoLDA0ODxA="), UV_EINVAL);
  /* not a multiple of 4, bad characters, '=' in the middle, 3 x '=' */
  assert_int_equal(keyring_add_base64(&bad, "AAECAwQFBgcICQoLDA0ODw="), UV_EINVAL);
  assert_int_equal(keyring_add_base64(&bad, "AAECAwQFBgcICQoLDA0OD*=="), UV_EINVAL);
  assert_int_equal(keyring_add_base64(&bad, "AAECAwQFBgcI=QoLDA0ODw=="), UV_EINVAL);
  assert_int_equal(keyring_add_base64(&bad, "AAECAwQFBgcICQoLDA0OD==="), UV_EINVAL);
  assert_int_equal(keyring_add_base64(&bad, "AAECAwQFBgcICQoLDA0OD=w="), UV_EINVAL);
  /* too long for any key */
  assert_int_equal(
      keyring_add_base64(&bad, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIj"),
      UV_EINVAL);
  assert_int_equal(bad.n, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip_key_sizes),
      cmocka_unit_test(test_tamper_and_wrong_key),
      cmocka_unit_test(test_multiple_keys),
      cmocka_unit_test(test_version0),
      cmocka_unit_test(test_truncated_and_versions),
      cmocka_unit_test(test_python_interop),
      cmocka_unit_test(test_base64),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
