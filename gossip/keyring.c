/* keyring.c - memberlist's AES-GCM sealing of datagrams and streams.
 *
 * Layout of a sealed message (memberlist's encryptPayload):
 *
 *   [vsn:1][nonce:12][ciphertext][tag:16]
 *
 * Version 1 seals the plaintext as is; version 0 (what a node running
 * memberlist protocol 1 sends) PKCS#7-pads it to a multiple of 16 first.
 * We send 1 and open both. The primary key seals; opening tries every key,
 * primary first, because during a key rotation peers still seal with the
 * old primary. Nothing here allocates in proportion to the input: OpenSSL
 * writes straight into the caller's buffer, and a failed attempt leaves no
 * unauthenticated plaintext behind (it is wiped before returning).
 */
#include "keyring.h"
#include "errors.h"

#include <ctype.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <string.h>
#include <uv.h>

#define NONCE_LEN 12
#define TAG_LEN 16
#define BLOCK 16

void keyring_init(struct keyring *kr) {
  memset(kr, 0, sizeof *kr);
}

static const EVP_CIPHER *gcm_cipher(size_t key_len) {
  switch (key_len) {
  case 16: return EVP_aes_128_gcm();
  case 24: return EVP_aes_192_gcm();
  case 32: return EVP_aes_256_gcm();
  default: return NULL;
  }
}

int keyring_add(struct keyring *kr, const uint8_t *key, size_t len) {
  if (!key || !gcm_cipher(len))
    return UV_EINVAL;
  /* memberlist's AddKey installs a key once; adding it again is a no-op */
  for (int i = 0; i < kr->n; i++)
    if (kr->key_len[i] == len && CRYPTO_memcmp(kr->keys[i], key, len) == 0)
      return 0;
  if (kr->n >= KEYRING_MAX_KEYS)
    return RM_ETOOBIG;
  memcpy(kr->keys[kr->n], key, len);
  kr->key_len[kr->n] = (uint8_t)len;
  kr->n++;
  return 0;
}

int keyring_add_base64(struct keyring *kr, const char *b64) {
  /* room for a 32-byte key: 44 characters, decoded in 3-byte groups */
  uint8_t raw[48];
  size_t n, pad = 0;
  int got, rc;

  if (!b64)
    return UV_EINVAL;
  while (isspace((unsigned char)*b64)) /* a key read from a file may */
    b64++;                             /* carry a newline */
  n = strlen(b64);
  while (n > 0 && isspace((unsigned char)b64[n - 1]))
    n--;
  if (n == 0 || n % 4 != 0 || n > 44)
    return UV_EINVAL;
  /* EVP_DecodeBlock decodes '=' as zero bits and counts those bytes, and is
   * lax about '=' placement: check the alphabet ourselves, allow '=' only
   * as the last one or two characters, and drop what it stands for. */
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)b64[i];
    if (c == '=') {
      if (i < n - 2 || (i == n - 2 && b64[n - 1] != '='))
        return UV_EINVAL;
      pad++;
    } else if (!isalnum(c) && c != '+' && c != '/') {
      return UV_EINVAL;
    }
  }
  got = EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)n);
  if (got < 0 || (size_t)got < pad) {
    rc = UV_EINVAL;
  } else {
    rc = keyring_add(kr, raw, (size_t)got - pad);
  }
  OPENSSL_cleanse(raw, sizeof raw);
  return rc;
}

/* One AES-GCM operation with one key. enc: seal `len` bytes of in into out
 * and write the tag to `tag`; !enc: open, checking `tag`. Returns 0, or
 * RM_EAUTH when opening fails (wrong key, altered data or AD), or UV_EIO
 * when OpenSSL itself fails. */
static int gcm(int enc, const uint8_t *key, size_t key_len, const uint8_t *nonce,
               const uint8_t *ad, size_t ad_len, const uint8_t *in, size_t len,
               uint8_t *out, uint8_t tag[TAG_LEN]) {
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  uint8_t fin[BLOCK]; /* GCM's final step writes nothing; out may be NULL */
  int outl, ok;
  if (!ctx)
    return UV_ENOMEM;
  ok = EVP_CipherInit_ex(ctx, gcm_cipher(key_len), NULL, NULL, NULL, enc) == 1 &&
       EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) == 1 &&
       EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, enc) == 1;
  if (ok && ad && ad_len)
    ok = EVP_CipherUpdate(ctx, NULL, &outl, ad, (int)ad_len) == 1;
  if (ok && len)
    ok = EVP_CipherUpdate(ctx, out, &outl, in, (int)len) == 1;
  if (!ok) {
    EVP_CIPHER_CTX_free(ctx);
    return UV_EIO;
  }
  if (enc) {
    ok = EVP_CipherFinal_ex(ctx, fin, &outl) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) == 1;
    EVP_CIPHER_CTX_free(ctx);
    return ok ? 0 : UV_EIO;
  }
  ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) == 1 &&
       EVP_CipherFinal_ex(ctx, fin, &outl) == 1;
  EVP_CIPHER_CTX_free(ctx);
  return ok ? 0 : RM_EAUTH;
}

int keyring_encrypt(const struct keyring *kr, const uint8_t *plain, size_t len,
                    const uint8_t *ad, size_t ad_len, uint8_t *out, size_t cap) {
  uint8_t tag[TAG_LEN];
  int rc;
  if (kr->n < 1)
    return UV_EINVAL;
  if (len > INT_MAX - KEYRING_OVERHEAD || ad_len > INT_MAX)
    return RM_ETOOBIG;
  if (!out || cap < KEYRING_OVERHEAD || len > cap - KEYRING_OVERHEAD)
    return RM_ETOOBIG;
  out[0] = 1;
  if (RAND_bytes(out + 1, NONCE_LEN) != 1)
    return UV_EIO;
  rc = gcm(1, kr->keys[0], kr->key_len[0], out + 1, ad, ad_len, plain, len,
           out + 1 + NONCE_LEN, tag);
  if (rc < 0)
    return rc;
  memcpy(out + 1 + NONCE_LEN + len, tag, TAG_LEN);
  return (int)(len + KEYRING_OVERHEAD);
}

/* PKCS#7: the last byte says how many bytes (1..16), all equal to it, were
 * added. Returns the unpadded length or RM_EPARSE. The message was
 * authenticated, so this only guards against a buggy sender. */
static int pkcs7_unpad(const uint8_t *p, size_t len) {
  if (len == 0 || len % BLOCK != 0)
    return RM_EPARSE;
  uint8_t n = p[len - 1];
  if (n == 0 || n > BLOCK)
    return RM_EPARSE;
  for (size_t i = len - n; i < len; i++)
    if (p[i] != n)
      return RM_EPARSE;
  return (int)(len - n);
}

int keyring_decrypt(const struct keyring *kr, const uint8_t *in, size_t len,
                    const uint8_t *ad, size_t ad_len, uint8_t *out, size_t cap) {
  uint8_t tag[TAG_LEN];
  size_t ct_len;
  if (!in || len < 1)
    return RM_EPARSE;
  if (in[0] > 1) /* versions 0 and 1 exist; memberlist rejects the rest */
    return RM_EPARSE;
  /* shortest sealed forms: v1 of nothing, v0 of one block of padding */
  if (len < (in[0] == 0 ? KEYRING_OVERHEAD + BLOCK : KEYRING_OVERHEAD))
    return RM_EPARSE;
  if (len > INT_MAX || ad_len > INT_MAX)
    return RM_ETOOBIG;
  ct_len = len - KEYRING_OVERHEAD;
  if (ct_len > cap || (ct_len && !out))
    return RM_ETOOBIG;
  memcpy(tag, in + len - TAG_LEN, TAG_LEN);
  for (int i = 0; i < kr->n; i++) {
    int rc = gcm(0, kr->keys[i], kr->key_len[i], in + 1, ad, ad_len, in + 1 + NONCE_LEN,
                 ct_len, out, tag);
    if (rc == RM_EAUTH)
      continue;
    if (rc == 0 && in[0] == 0)
      rc = pkcs7_unpad(out, ct_len);
    else if (rc == 0)
      rc = (int)ct_len;
    if (rc < 0 && ct_len)
      OPENSSL_cleanse(out, ct_len);
    return rc;
  }
  if (ct_len)
    OPENSSL_cleanse(out, ct_len);
  return RM_EAUTH;
}
