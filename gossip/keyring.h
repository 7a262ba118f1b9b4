/* keyring.h - memberlist's AES-GCM encryption of gossip.
 *
 * Keys of 16, 24 or 32 bytes (AES-128/192/256 GCM, 12-byte random nonce,
 * 16-byte tag). The first key (primary) encrypts; every key is tried on
 * decrypt, primary first. Version byte 1 = no padding (what we send);
 * version 0 = PKCS#7 padded (accepted). UDP: no additional data. TCP: the
 * 5-byte [10][len] header is the additional data.
 */
#ifndef REGMESH_GOSSIP_KEYRING_H
#define REGMESH_GOSSIP_KEYRING_H

#include <stddef.h>
#include <stdint.h>

#define KEYRING_MAX_KEYS 8
#define KEYRING_OVERHEAD 29 /* version + nonce + tag */

struct keyring {
  uint8_t keys[KEYRING_MAX_KEYS][32];
  uint8_t key_len[KEYRING_MAX_KEYS];
  int n;
};

void keyring_init(struct keyring *kr);
/* keyring_add appends a key (the first added is primary). 0, UV_EINVAL for a
 * bad length, RM_ETOOBIG when full. */
int keyring_add(struct keyring *kr, const uint8_t *key, size_t len);
/* keyring_add_base64: a key as serf prints it (`serf keygen`). */
int keyring_add_base64(struct keyring *kr, const char *b64);
/* keyring_encrypt: [1][nonce][ciphertext][tag] into out; ad may be NULL.
 * Returns bytes written or a negative error. */
int keyring_encrypt(const struct keyring *kr, const uint8_t *plain, size_t len,
                    const uint8_t *ad, size_t ad_len, uint8_t *out, size_t cap);
/* keyring_decrypt tries every key; returns the plaintext length or RM_EAUTH
 * when no key opens it (RM_EPARSE when too short / bad version). */
int keyring_decrypt(const struct keyring *kr, const uint8_t *in, size_t len,
                    const uint8_t *ad, size_t ad_len, uint8_t *out, size_t cap);

#endif
