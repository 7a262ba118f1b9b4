/* peerauth.h - signed HTTP requests between the nodes of one fleet.
 *
 * Content by digest needs no trust (it is verified), but a tag answer or a
 * request to spend someone's rate-limit budget does. With a cluster secret,
 * a peer request carries
 *   X-Regmesh-Auth: t=<unix ms>,sig=<hex HMAC-SHA256(key, method \n target \n t \n sender)>
 * where target is the path with its query, and an answer that must be
 * trusted carries X-Regmesh-Auth-Reply: sig=<hex HMAC(key, "reply" \n
 * request sig \n payload)>. The key is SHA-256 of a label and the secret, so
 * it differs from the gossip encryption key made from the same secret.
 */
#ifndef REGMESH_NODE_PEERAUTH_H
#define REGMESH_NODE_PEERAUTH_H

#include <stddef.h>
#include <stdint.h>

#define PEERAUTH_SKEW_MS (5 * 60 * 1000) /* clocks of a fleet agree this well */
#define PEERAUTH_SIG_HEX 64
#define PEERAUTH_HDR_MAX 96 /* "t=<20 digits>,sig=<64 hex>" */

struct peerauth {
  int enabled;
  uint8_t key[32];
};

/* peerauth_init: enabled when len > 0. */
void peerauth_init(struct peerauth *pa, const uint8_t *secret, size_t len);

/* peerauth_sign writes the X-Regmesh-Auth value into hdr (PEERAUTH_HDR_MAX)
 * and the bare signature into sig (65). Returns 0, or UV_EINVAL when
 * disabled or an argument is too long. */
int peerauth_sign(const struct peerauth *pa, const char *method, const char *target,
                  const char *sender, int64_t now_ms, char *hdr, char *sig);

/* peerauth_verify checks an X-Regmesh-Auth value. Returns 0 (and the
 * signature in sig, for the reply), RM_EAUTH when wrong, stale or absent
 * (hdr NULL), UV_EINVAL when disabled. */
int peerauth_verify(const struct peerauth *pa, const char *method, const char *target,
                    const char *sender, const char *hdr, int64_t now_ms, char *sig);

/* peerauth_reply: the X-Regmesh-Auth-Reply value ("sig=<hex>", 70 bytes)
 * binding payload to the request signature. */
void peerauth_reply(const struct peerauth *pa, const char *req_sig, const char *payload,
                    char *out, size_t outlen);
/* peerauth_reply_check: 0 when got is the reply for (req_sig, payload),
 * else RM_EAUTH. */
int peerauth_reply_check(const struct peerauth *pa, const char *req_sig,
                         const char *payload, const char *got);

#endif
