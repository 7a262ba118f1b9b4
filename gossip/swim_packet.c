/* swim_packet.c - UDP datagrams in and out.
 *
 * Receiving undoes memberlist's layers from the outside in (memberlist-wire.md
 * section 5): decrypt when we hold a keyring (plaintext is then refused),
 * verify a CRC wrapper, decompress an LZW wrapper, split a compound, and
 * hand each message to its handler. Every layer is bounds checked by the
 * codec; whatever does not decode is dropped and counted, never trusted.
 *
 * Sending goes the other way: the message (or the buddy-system pair of ping
 * and suspect) is topped up with queued gossip into a compound that fits
 * udp_buffer_size, wrapped in a CRC for peers that understand it, and
 * encrypted. We never compress: receivers handle both, and our datagrams
 * stay small.
 */
#include "swim_internal.h"

#include "../common/errors.h"
#include "../common/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define COMPOUND_HEADER 2 /* type byte + count */
#define COMPOUND_PART 2   /* length of each part */

int swim__send_udp(struct swim *s, const struct wire_addr *to,
                   const struct swim__member *dst, const uint8_t *const *parts,
                   const size_t *lens, size_t n) {
  const uint8_t *all[WIRE_COMPOUND_MAX_SEND];
  size_t all_lens[WIRE_COMPOUND_MAX_SEND];
  uint8_t susp[2 * WIRE_NAME_MAX + 64];
  size_t used = 0;
  if (n >= WIRE_COMPOUND_MAX_SEND)
    return RM_ETOOBIG;
  for (size_t i = 0; i < n; i++) {
    all[i] = parts[i];
    all_lens[i] = lens[i];
    used += lens[i];
  }
  /* The buddy system, for every datagram to a member we suspect, not only
   * probes: it either refutes, or, if our suspicion is already stale, tells
   * us so (swim_member.c, correct_sender). Without this a node that missed
   * the refutation only learns better when it happens to probe the
   * suspect, and may declare a live node dead first. */
  if (dst && dst->state == SWIM_SUSPECT && !dst->is_self) {
    struct wire_suspect sm;
    memset(&sm, 0, sizeof sm);
    sm.incarnation = dst->incarnation;
    memcpy(sm.node, dst->name, sizeof sm.node);
    memcpy(sm.from, s->cfg.name, sizeof sm.from);
    int r = wire_encode_suspect(susp, sizeof susp, &sm);
    if (r > 0) {
      all[n] = susp;
      all_lens[n++] = (size_t)r;
      used += (size_t)r;
    }
  }
  size_t budget = s->cfg.udp_buffer_size;
  size_t overhead = COMPOUND_HEADER + used + n * COMPOUND_PART;
  if (s->cfg.keyring)
    overhead += KEYRING_OVERHEAD;
  size_t extra = 0;
  if (budget > overhead)
    extra = swim__bq_take(s, COMPOUND_PART, budget - overhead, all + n, all_lens + n,
                          WIRE_COMPOUND_MAX_SEND - n);
  size_t total = n + extra;
  if (total == 0)
    return 1;
  const uint8_t *payload;
  size_t plen;
  if (total == 1) {
    payload = all[0];
    plen = all_lens[0];
  } else {
    int r = wire_compound_encode(s->tx_a, s->tx_cap, all, all_lens, total);
    if (r < 0) {
      s->bq.ntaken = 0;
      LOG_W("swim %s: cannot build a compound of %zu parts: %s", s->cfg.name, total,
            rm_strerror(r));
      return r;
    }
    payload = s->tx_a;
    plen = (size_t)r;
  }
  /* The CRC wrapper goes to every peer that understands it (PMax >= 5),
   * and to unknown ones: serf accepts it on every message. */
  if (dst == NULL || dst->vsn[1] == 0 || dst->vsn[1] >= 5) {
    int r = wire_crc_wrap(s->tx_b, s->tx_cap, payload, plen);
    if (r < 0) {
      s->bq.ntaken = 0;
      return r;
    }
    payload = s->tx_b;
    plen = (size_t)r;
  }
  if (s->cfg.keyring) {
    uint8_t *out = payload == s->tx_a ? s->tx_b : s->tx_a;
    int r = keyring_encrypt(s->cfg.keyring, payload, plen, NULL, 0, out, s->tx_cap);
    if (r < 0) {
      s->bq.ntaken = 0;
      LOG_W("swim %s: encryption failed: %s", s->cfg.name, rm_strerror(r));
      return r;
    }
    payload = out;
    plen = (size_t)r;
  }
  s->stats.udp_sent++;
  s->stats.udp_bytes_sent += plen;
  int r = s->env.udp_send(s->env.ctx, to, payload, plen);
  /* after the send: a lone broadcast may be the payload itself. Counted as
   * a transmission whether or not the host managed: UDP is best effort. */
  swim__bq_commit(s);
  if (r < 0) {
    char a[64];
    LOG_D("swim %s: udp send to %s failed: %s", s->cfg.name,
          swim__addr_str(to, a, sizeof a), rm_strerror(r));
  }
  return r < 0 ? r : 0;
}

int swim__send_one(struct swim *s, const struct wire_addr *to,
                   const struct swim__member *dst, const uint8_t *msg, size_t len) {
  return swim__send_udp(s, to, dst, &msg, &len, 1);
}

/* Where the message came from and how deep in the wrappers we are. */
struct rx {
  const struct wire_addr *from;
  int decompressed;
  int in_compound;
};

static void dispatch(struct swim *s, struct rx *rx, const uint8_t *p, size_t len);

static void handle_compound(struct swim *s, struct rx *rx, const uint8_t *p, size_t len) {
  const uint8_t *parts[SWIM__COMPOUND_MAX_RECV];
  size_t lens[SWIM__COMPOUND_MAX_RECV];
  size_t truncated = 0;
  if (rx->in_compound) {
    s->stats.dropped_malformed++;
    return;
  }
  int n = wire_compound_decode(p, len, parts, lens, SWIM__COMPOUND_MAX_RECV, &truncated);
  if (n < 0) {
    s->stats.dropped_malformed++;
    return;
  }
  if (truncated)
    s->stats.dropped_malformed++;
  rx->in_compound = 1;
  for (int i = 0; i < n; i++)
    dispatch(s, rx, parts[i], lens[i]);
  rx->in_compound = 0;
}

static void handle_compressed(struct swim *s, struct rx *rx, const uint8_t *p,
                              size_t len) {
  if (rx->decompressed) {
    s->stats.dropped_malformed++;
    return;
  }
  if (s->rx_decomp == NULL) {
    s->rx_decomp = malloc(SWIM__UDP_DECOMP_MAX);
    if (s->rx_decomp == NULL)
      return;
  }
  int n = wire_decompress(p, len, s->rx_decomp, SWIM__UDP_DECOMP_MAX);
  if (n < 0) {
    if (n == RM_ETOOBIG)
      s->stats.dropped_oversize++;
    else
      s->stats.dropped_malformed++;
    return;
  }
  rx->decompressed = 1;
  /* a compound inside the compressed payload starts a fresh level */
  int in_compound = rx->in_compound;
  rx->in_compound = 0;
  dispatch(s, rx, s->rx_decomp, (size_t)n);
  rx->in_compound = in_compound;
}

static void dispatch(struct swim *s, struct rx *rx, const uint8_t *p, size_t len) {
  if (len == 0) {
    s->stats.dropped_malformed++;
    return;
  }
  int type = p[0];
  const uint8_t *body = p + 1;
  size_t blen = len - 1;
  int r = 0;
  switch (type) {
  case WIRE_COMPOUND: handle_compound(s, rx, body, blen); return;
  case WIRE_COMPRESS: handle_compressed(s, rx, body, blen); return;
  case WIRE_PING: {
    struct wire_ping m;
    if ((r = wire_decode_ping(body, blen, &m)) >= 0)
      swim__on_ping(s, rx->from, &m);
    break;
  }
  case WIRE_INDIRECT_PING: {
    struct wire_indirect_ping m;
    if ((r = wire_decode_indirect_ping(body, blen, &m)) >= 0)
      swim__on_indirect(s, rx->from, &m);
    break;
  }
  case WIRE_ACK: {
    struct wire_ack m;
    if ((r = wire_decode_ack(body, blen, &m)) >= 0)
      swim__on_ack(s, m.seq_no);
    break;
  }
  case WIRE_NACK: {
    struct wire_nack m;
    if ((r = wire_decode_nack(body, blen, &m)) >= 0)
      swim__on_nack(s, m.seq_no);
    break;
  }
  case WIRE_SUSPECT: {
    struct wire_suspect m;
    if ((r = wire_decode_suspect(body, blen, &m)) >= 0)
      swim__on_suspect(s, &m, rx->from);
    break;
  }
  case WIRE_ALIVE: {
    struct wire_alive m;
    if ((r = wire_decode_alive(body, blen, &m)) >= 0)
      swim__on_alive(s, &m);
    break;
  }
  case WIRE_DEAD: {
    struct wire_suspect m;
    if ((r = wire_decode_dead(body, blen, &m)) >= 0)
      swim__on_dead(s, &m, rx->from);
    break;
  }
  case WIRE_USER: swim__serf_user_msg(s, body, blen); break;
  default: r = RM_EPARSE; break;
  }
  if (r < 0) {
    s->stats.dropped_malformed++;
    if (log_enabled(LOG_DEBUG)) {
      char a[64];
      LOG_D("swim %s: undecodable %s (%zu bytes) from %s", s->cfg.name,
            wire_type_str(type), len, swim__addr_str(rx->from, a, sizeof a));
    }
  }
}

void swim_on_udp(struct swim *s, const struct wire_addr *from, const uint8_t *buf,
                 size_t len) {
  s->stats.udp_recv++;
  s->stats.udp_bytes_recv += len;
  if (len == 0) {
    s->stats.dropped_malformed++;
    return;
  }
  if (len > WIRE_UDP_MAX) {
    s->stats.dropped_oversize++;
    return;
  }
  if (s->cfg.keyring) {
    if (s->rx_plain == NULL) {
      s->rx_plain = malloc(WIRE_UDP_MAX);
      if (s->rx_plain == NULL)
        return;
    }
    /* plaintext does not open either: an encrypted cluster refuses it */
    int n = keyring_decrypt(s->cfg.keyring, buf, len, NULL, 0, s->rx_plain, WIRE_UDP_MAX);
    if (n < 0) {
      s->stats.dropped_auth++;
      return;
    }
    buf = s->rx_plain;
    len = (size_t)n;
    if (len == 0) {
      s->stats.dropped_malformed++;
      return;
    }
  }
  const uint8_t *inner;
  size_t ilen;
  if (wire_crc_unwrap(buf, len, &inner, &ilen) < 0) {
    s->stats.dropped_crc++;
    return;
  }
  struct rx rx = {.from = from};
  dispatch(s, &rx, inner, ilen);
}
