/* peerauth.c - HMAC-SHA256 signatures on peer requests and answers (see
 * peerauth.h for the format). Comparisons are constant-time; a timestamp
 * outside PEERAUTH_SKEW_MS of our clock is refused, which bounds replays to
 * that window (the requests it protects are idempotent reads).
 */
#include "peerauth.h"

#include "../common/errors.h"

#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define MSG_MAX 4096

static const char label[] = "regmesh peer http v1";

void peerauth_init(struct peerauth *pa, const uint8_t *secret, size_t len) {
  memset(pa, 0, sizeof *pa);
  if (!secret || len == 0)
    return;
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  unsigned outl = 0;
  if (c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
      EVP_DigestUpdate(c, label, sizeof label) == 1 &&
      EVP_DigestUpdate(c, secret, len) == 1 && EVP_DigestFinal_ex(c, pa->key, &outl) == 1 &&
      outl == sizeof pa->key)
    pa->enabled = 1;
  EVP_MD_CTX_free(c);
}

static void to_hex(const uint8_t *p, size_t n, char *out) {
  static const char d[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = d[p[i] >> 4];
    out[2 * i + 1] = d[p[i] & 15];
  }
  out[2 * n] = '\0';
}

static int mac_hex(const struct peerauth *pa, const char *msg, size_t len, char *out) {
  uint8_t mac[32];
  unsigned ml = 0;
  if (!HMAC(EVP_sha256(), pa->key, (int)sizeof pa->key, (const uint8_t *)msg, len, mac, &ml) ||
      ml != sizeof mac)
    return UV_EINVAL;
  to_hex(mac, sizeof mac, out);
  return 0;
}

static int request_mac(const struct peerauth *pa, const char *method, const char *target,
                       const char *sender, int64_t t, char *sig) {
  char msg[MSG_MAX];
  int n = snprintf(msg, sizeof msg, "%s\n%s\n%" PRId64 "\n%s", method, target, t, sender);
  if (n < 0 || (size_t)n >= sizeof msg)
    return UV_EINVAL;
  return mac_hex(pa, msg, (size_t)n, sig);
}

int peerauth_sign(const struct peerauth *pa, const char *method, const char *target,
                  const char *sender, int64_t now_ms, char *hdr, char *sig) {
  if (!pa->enabled)
    return UV_EINVAL;
  int r = request_mac(pa, method, target, sender, now_ms, sig);
  if (r)
    return r;
  snprintf(hdr, PEERAUTH_HDR_MAX, "t=%" PRId64 ",sig=%s", now_ms, sig);
  return 0;
}

int peerauth_verify(const struct peerauth *pa, const char *method, const char *target,
                    const char *sender, const char *hdr, int64_t now_ms, char *sig) {
  if (!pa->enabled)
    return UV_EINVAL;
  if (!hdr || strncmp(hdr, "t=", 2) != 0)
    return RM_EAUTH;
  char *end;
  long long t = strtoll(hdr + 2, &end, 10);
  if (end == hdr + 2 || strncmp(end, ",sig=", 5) != 0 ||
      strlen(end + 5) != PEERAUTH_SIG_HEX)
    return RM_EAUTH;
  if (t > now_ms + PEERAUTH_SKEW_MS || t < now_ms - PEERAUTH_SKEW_MS)
    return RM_EAUTH;
  char want[PEERAUTH_SIG_HEX + 1];
  if (request_mac(pa, method, target, sender, (int64_t)t, want) != 0)
    return RM_EAUTH;
  if (CRYPTO_memcmp(want, end + 5, PEERAUTH_SIG_HEX) != 0)
    return RM_EAUTH;
  memcpy(sig, want, sizeof want);
  return 0;
}

void peerauth_reply(const struct peerauth *pa, const char *req_sig, const char *payload,
                    char *out, size_t outlen) {
  char msg[MSG_MAX], mac[PEERAUTH_SIG_HEX + 1];
  int n = snprintf(msg, sizeof msg, "reply\n%s\n%s", req_sig, payload);
  if (!pa->enabled || n < 0 || (size_t)n >= sizeof msg || mac_hex(pa, msg, (size_t)n, mac)) {
    snprintf(out, outlen, "sig=none");
    return;
  }
  snprintf(out, outlen, "sig=%s", mac);
}

int peerauth_reply_check(const struct peerauth *pa, const char *req_sig,
                         const char *payload, const char *got) {
  if (!pa->enabled || !got || strncmp(got, "sig=", 4) != 0 ||
      strlen(got + 4) != PEERAUTH_SIG_HEX)
    return RM_EAUTH;
  char want[80];
  peerauth_reply(pa, req_sig, payload, want, sizeof want);
  if (strncmp(want, "sig=", 4) != 0 || strlen(want) != 4 + PEERAUTH_SIG_HEX)
    return RM_EAUTH;
  return CRYPTO_memcmp(want + 4, got + 4, PEERAUTH_SIG_HEX) == 0 ? 0 : RM_EAUTH;
}
