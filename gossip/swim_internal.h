/* swim_internal.h - what the files of the SWIM core share.
 *
 * The core is split by job: swim.c (public API, life cycle), swim_timer.c
 * (the one deadline heap), swim_member.c (member table, the state funnel,
 * alive/suspect/dead rules, Lifeguard suspicion and awareness),
 * swim_broadcast.c (the transmit-limited gossip queue), swim_packet.c (UDP
 * in and out: decrypt, CRC, decompress, compound, dispatch), swim_probe.c
 * (failure detection: probes, indirect probes, acks, nacks, gossip rounds),
 * swim_stream.c (TCP streams: incremental framing, encryption, TCP ping),
 * swim_sync.c (push/pull, join with backoff, reconnect of dead members) and
 * swim_serf.c (the serf user messages we need: leave intent, Lamport clock).
 *
 * Nothing here is exported beyond gossip/ (names swim__*), but the unit
 * tests include it to check formulas and state directly.
 */
#ifndef REGMESH_GOSSIP_SWIM_INTERNAL_H
#define REGMESH_GOSSIP_SWIM_INTERNAL_H

#include "swim.h"

#include "../common/strmap.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SWIM__TIMER_IDLE ((size_t)-1)
#define SWIM__BCAST_BUCKETS 64            /* transmit counts tracked; limits clamp here */
#define SWIM__MAX_INBOUND_STREAMS 128     /* memberlist's cap on concurrent push/pulls */
#define SWIM__UDP_DECOMP_MAX (256u << 10) /* a compressed datagram may expand to */
#define SWIM__COMPOUND_MAX_RECV 255

struct swim;

/* ---- deadlines (swim_timer.c) ----
 * One binary min-heap of timers embedded in their owners; the callback
 * finds its owner with swim__container_of. A timer is popped before its
 * callback runs, so the callback may re-arm it. */
struct swim__timer {
  uint64_t when;
  size_t idx; /* heap position, SWIM__TIMER_IDLE when not armed */
  void (*fn)(struct swim *s, struct swim__timer *t);
};

#define swim__container_of(ptr, type, field)                                             \
  ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

void swim__timer_init(struct swim__timer *t,
                      void (*fn)(struct swim *, struct swim__timer *));
/* swim__timer_arm (re)schedules t at absolute time when. 0 or -ENOMEM. */
int swim__timer_arm(struct swim *s, struct swim__timer *t, uint64_t when);
void swim__timer_cancel(struct swim *s, struct swim__timer *t);
static inline int swim__timer_armed(const struct swim__timer *t) {
  return t->idx != SWIM__TIMER_IDLE;
}
/* Runs every timer due at or before now. */
void swim__timers_run(struct swim *s, uint64_t now);
uint64_t swim__timers_next(const struct swim *s);

/* ---- members (swim_member.c) ---- */

/* Lifeguard suspicion of one member, owned by that member. */
struct swim__suspicion {
  uint64_t start; /* when the member became suspect (== member state_change) */
  uint64_t min_ms, max_ms;
  unsigned k;                           /* confirmations expected */
  unsigned n;                           /* confirmations received */
  char from[WIRE_NAME_MAX + 1];         /* the first accuser: does not count */
  char (*confirmed)[WIRE_NAME_MAX + 1]; /* k names, owned */
};

struct swim__member {
  char name[WIRE_NAME_MAX + 1];
  struct wire_addr addr;
  enum swim_state state;
  uint32_t incarnation;
  uint8_t meta[WIRE_META_MAX];
  size_t meta_len;
  uint8_t vsn[WIRE_VSN_LEN];
  uint64_t state_change; /* ms, last change of state */
  size_t idx;            /* position in s->members (the probe list) */
  int is_self;
  int is_new;            /* created, not yet given a first state */
  uint64_t corrected_at; /* last stale accusation about it we answered */
  struct swim__timer suspect_timer;
  struct swim__suspicion *suspicion; /* set while suspect with a running timer */
};

/* ---- gossip queue (swim_broadcast.c) ---- */

enum swim__notify {
  SWIM__NOTIFY_NONE = 0,
  SWIM__NOTIFY_LEAVE_INTENT,
  SWIM__NOTIFY_LEAVE_DEAD
};

/* One queued message; the queue owns it. Keyed by member name (plus a
 * flag telling memberlist messages from serf user messages about that name),
 * so a newer message about X replaces the older one. */
struct swim__bcast {
  struct swim__bcast *prev, *next; /* in buckets[transmits] */
  unsigned transmits;
  enum swim__notify notify;
  size_t len;
  char key[WIRE_NAME_MAX + 3];
  uint8_t msg[]; /* complete message, type byte first */
};

struct swim__bqueue {
  struct swim__bcast *buckets[SWIM__BCAST_BUCKETS]; /* head = newest */
  struct strmap by_key;
  size_t count;
  struct swim__bcast *taken[WIRE_COMPOUND_MAX_SEND]; /* between take and commit */
  size_t ntaken;
};

/* ---- probes (swim_probe.c) ---- */

/* An indirect probe we run for someone else: relay the target's ack to the
 * requester under its sequence number, or a nack after probe_timeout. */
struct swim__relay {
  struct swim__relay *next;
  uint32_t seq;      /* ours, sent to the target */
  uint32_t orig_seq; /* the requester's */
  struct wire_addr requester;
  int nack;
  struct swim__timer timer;
};

struct swim__probe {
  int active; /* a probe is in its period */
  int acked;
  uint32_t seq;
  struct swim__member *target; /* valid while active: reaping waits for the next probe */
  uint32_t target_inc;         /* incarnation when the probe started */
  uint64_t start, deadline;
  unsigned expected_nacks, nacks;
  int tcp_open; /* a TCP fallback ping is in flight on tcp_stream */
  uint64_t tcp_stream;
};

/* ---- streams (swim_stream.c) ---- */

enum swim__stream_kind {
  SWIM__ST_INBOUND,   /* accepted: one request, maybe one reply */
  SWIM__ST_PUSH_PULL, /* ours: send state, read the reply, merge */
  SWIM__ST_PING,      /* ours: TCP fallback ping */
};

enum swim__pp_purpose { SWIM__PP_PERIODIC, SWIM__PP_JOIN, SWIM__PP_RECONNECT };

/* Incremental framing of one stream message (see swim__frame). */
struct swim__frame {
  int stage;
  size_t off; /* bytes accepted so far */
  uint32_t nodes_left;
  uint64_t raw_left;
};

struct swim__stream {
  struct swim__stream *next;
  uint64_t id;
  enum swim__stream_kind kind;
  enum swim__pp_purpose purpose;
  int connected;
  int done; /* request handled; waiting for nothing */
  struct wire_addr peer;
  uint32_t ping_seq;
  char node[WIRE_NAME_MAX + 1]; /* a TCP ping's target */
  struct swim__timer timer;     /* tcp_timeout (or the probe deadline for pings) */
  uint8_t *buf;
  size_t len, cap;
  struct swim__frame fr;
};

/* ---- the core ---- */
struct swim {
  struct swim_config cfg;
  struct swim_env env;
  struct swim_callbacks cb;
  struct swim_stats stats;

  struct swim__member *self;
  struct strmap by_name;         /* name -> struct swim__member*, owns nothing */
  struct swim__member **members; /* every member, self included: the probe list */
  size_t n_members, cap_members;
  size_t n_live; /* alive + suspect, self included */
  size_t n_dead; /* dead (failed), not left */
  size_t n_suspect;
  size_t n_stale; /* dead/left past gossip_to_the_dead at the last wrap-around */
  size_t probe_index;

  uint32_t seq;
  int awareness;

  struct swim__timer **heap;
  size_t heap_len, heap_cap;

  struct swim__timer probe_timer, probe_timeout_timer, gossip_timer, push_pull_timer,
      join_timer, reconnect_timer, leave_timer;
  struct swim__probe probe;
  struct swim__relay *relays;
  struct swim__bqueue bq;

  struct swim__stream *streams;
  size_t n_streams_in;

  struct wire_addr *seeds;
  size_t n_seeds;
  int joining;             /* swim_join called, no seed has answered yet */
  size_t join_outstanding; /* join streams in flight */
  uint64_t join_backoff;

  int leaving;     /* swim_leave called: no refuting, no rejoining */
  int leave_phase; /* 1 intent out, 2 dead out, 3 done */
  uint64_t leave_deadline;
  uint64_t serf_ltime; /* highest serf Lamport clock seen */

  /* scratch */
  uint8_t *tx_a, *tx_b; /* UDP send: compound, then wrappers */
  size_t tx_cap;
  uint8_t *rx_plain;  /* decrypted datagram, WIRE_UDP_MAX */
  uint8_t *rx_decomp; /* decompressed datagram, SWIM__UDP_DECOMP_MAX */
};

/* copies a node name into a WIRE_NAME_MAX + 1 buffer, truncating */
static inline void swim__name_copy(char *dst, const char *src) {
  size_t n = strnlen(src, WIRE_NAME_MAX);
  memcpy(dst, src, n);
  dst[n] = '\0';
}

uint64_t swim__now(const struct swim *s);
uint32_t swim__rand(struct swim *s);
/* uniform enough below n (n > 0) */
static inline uint32_t swim__rand_below(struct swim *s, uint32_t n) {
  return n ? swim__rand(s) % n : 0;
}
int swim__addr_eq(const struct wire_addr *a, const struct wire_addr *b);
/* "1.2.3.4:7946" for logs */
const char *swim__addr_str(const struct wire_addr *a, char *buf, size_t len);

/* swim_member.c */
struct swim__member *swim__member_find(const struct swim *s, const char *name);
/* Creates a member (is_new, not yet counted as live); NULL on ENOMEM. */
struct swim__member *swim__member_add(struct swim *s, const char *name);
void swim__member_remove(struct swim *s, struct swim__member *m);
/* The funnel: every state change of a member goes through here. */
void swim__set_state(struct swim *s, struct swim__member *m, enum swim_state st,
                     uint32_t inc, const char *why);
void swim__emit(struct swim *s, enum swim_event ev, const struct swim__member *m);
size_t swim__est_nodes(const struct swim *s);
void swim__on_alive(struct swim *s, const struct wire_alive *a);
/* from: where a gossiped message came from (NULL when not from the
 * network): a stale accusation is answered there with the newer alive. */
void swim__on_suspect(struct swim *s, const struct wire_suspect *m,
                      const struct wire_addr *from);
void swim__on_dead(struct swim *s, const struct wire_suspect *d,
                   const struct wire_addr *from);
void swim__refute(struct swim *s, uint32_t accused);
void swim__awareness_delta(struct swim *s, int delta);
/* Queues an alive about ourselves (after a meta change or refutation). */
void swim__queue_self_alive(struct swim *s);
void swim__member_view(const struct swim__member *m, struct swim_member *v);
/* Reap expired dead/left members and shuffle the probe list. */
void swim__members_reset(struct swim *s);
/* Up to k distinct random members passing ok(); returns how many. */
size_t swim__random_members(struct swim *s, size_t k,
                            int (*ok)(const struct swim *, const struct swim__member *),
                            struct swim__member **out);
/* Lifeguard formulas (memberlist-wire.md sections 9 and 11.3). */
uint64_t swim__suspicion_timeout(unsigned mult, size_t n, uint64_t interval_ms);
uint64_t swim__suspicion_remaining(unsigned confirmations, unsigned k, uint64_t elapsed,
                                   uint64_t min_ms, uint64_t max_ms);
unsigned swim__retransmit_limit(unsigned mult, size_t n);
uint64_t swim__push_pull_scale(uint64_t interval, size_t n);

/* swim_broadcast.c */
void swim__bq_init(struct swim__bqueue *q);
void swim__bq_free(struct swim__bqueue *q);
/* Queues msg keyed by (name, user); replaces an older one with that key. */
void swim__bq_push(struct swim *s, const char *name, int user, const uint8_t *msg,
                   size_t len, enum swim__notify notify);
/* Picks broadcasts that fit avail bytes, each costing overhead more, fewest
 * transmissions first; at most max. They stay valid until swim__bq_commit,
 * which counts the transmission and retires those at the limit. */
size_t swim__bq_take(struct swim *s, size_t overhead, size_t avail, const uint8_t **parts,
                     size_t *lens, size_t max);
void swim__bq_commit(struct swim *s);
/* encodes and queues one membership message */
void swim__queue_alive(struct swim *s, const struct wire_alive *a);
void swim__queue_suspect(struct swim *s, const struct wire_suspect *m);
void swim__queue_dead(struct swim *s, const struct wire_suspect *d, enum swim__notify n);

/* swim_packet.c */
/* Sends parts (a bare message when only one) to `to`, topped up with queued
 * gossip. dst, the member at `to` if known (else NULL), decides the CRC
 * wrapper, and a suspect dst also gets our suspicion of it. Returns 0, 1
 * when nothing was sent (no parts, no gossip), or a negative error. */
int swim__send_udp(struct swim *s, const struct wire_addr *to,
                   const struct swim__member *dst, const uint8_t *const *parts,
                   const size_t *lens, size_t n);
int swim__send_one(struct swim *s, const struct wire_addr *to,
                   const struct swim__member *dst, const uint8_t *msg, size_t len);

/* swim_probe.c */
void swim__probe_start(struct swim *s);
void swim__probe_stop(struct swim *s);
void swim__on_ping(struct swim *s, const struct wire_addr *from,
                   const struct wire_ping *p);
void swim__on_indirect(struct swim *s, const struct wire_addr *from,
                       const struct wire_indirect_ping *p);
void swim__on_ack(struct swim *s, uint32_t seq);
void swim__on_nack(struct swim *s, uint32_t seq);
void swim__relays_free(struct swim *s);
/* encodes a ping from us to target name */
int swim__encode_ping(struct swim *s, uint32_t seq, const char *node, uint8_t *out,
                      size_t cap);

/* swim_stream.c */
/* Opens a stream of kind PUSH_PULL or PING (ping_seq to node); what it
 * carries is sent on connect; it is closed at deadline. *id may be NULL. */
int swim__stream_open(struct swim *s, enum swim__stream_kind kind,
                      enum swim__pp_purpose p, const struct wire_addr *to,
                      uint32_t ping_seq, const char *node, uint64_t deadline,
                      uint64_t *id);
void swim__stream_close(struct swim *s, uint64_t id);
void swim__streams_free(struct swim *s);
/* Writes one message on a stream, encrypted when a keyring is set. */
int swim__stream_send(struct swim *s, struct swim__stream *st, const uint8_t *msg,
                      size_t len);
/* Writes our full state as a push/pull message. */
int swim__stream_send_state(struct swim *s, struct swim__stream *st, int join);
/* Framing: 1 when buf[0..len) holds a complete message (its length in
 * *msg_len), 0 when more bytes are needed, RM_EPARSE when malformed. */
int swim__frame(struct swim__frame *fr, const uint8_t *buf, size_t len, size_t *msg_len);
/* Length of the msgpack object at p: 1 complete (*used set), 0 incomplete,
 * negative when malformed. */
int swim__mp_skip(const uint8_t *p, size_t len, size_t *used);

/* swim_sync.c */
/* Builds our full state as a push/pull message; caller frees *out. */
int swim__push_pull_build(struct swim *s, int join, uint8_t **out, size_t *len);
/* Handles a complete push/pull message (type byte first) from a peer:
 * decodes it whole, answers with our state on `reply` (an inbound stream,
 * or NULL), checks versions, merges. 0, RM_EPARSE, or -EPROTO when the
 * versions are incompatible (nothing merged then). */
int swim__push_pull_merge(struct swim *s, const uint8_t *msg, size_t len,
                          struct swim__stream *reply);
void swim__sync_start(struct swim *s);
void swim__sync_stop(struct swim *s);
void swim__join_result(struct swim *s, enum swim__pp_purpose p, int ok);

/* swim_serf.c */
/* serf leave intent as a user message: [8][0][msgpack {LTime, Node, Prune}] */
int swim__serf_leave_intent(uint8_t *out, size_t cap, uint64_t ltime, const char *node);
/* Notes serf's Lamport clock from a user message / push-pull user state. */
void swim__serf_user_msg(struct swim *s, const uint8_t *p, size_t len);
void swim__serf_user_state(struct swim *s, const uint8_t *p, size_t len);
/* swim.c: a leave step's message has gone out (or was replaced) */
void swim__leave_notify(struct swim *s, enum swim__notify n);

#endif
