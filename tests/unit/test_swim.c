/* test_swim.c - single mechanisms of the SWIM core (gossip/swim*.c).
 *
 * Two or three cores wired by hand: their struct swim_env records every
 * datagram and stream write instead of sending it, the test decides what
 * to deliver, and one shared fake clock moves only when the test says so.
 * Packets are built and taken apart with gossip/wire.h, so the checks are
 * about bytes on the wire as memberlist sees them. Formulas are checked
 * against the values of memberlist-wire.md sections 9 and 11.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/errors.h"
#include "../../gossip/keyring.h"
#include "../../gossip/swim_internal.h"
#include "../../gossip/wire.h"

/* ---- a hand-wired host ---- */

#define MAX_PKTS 256
#define MAX_STREAMS 64
#define MAX_EVENTS 64

struct pkt {
  struct wire_addr to;
  uint8_t buf[2048];
  size_t len;
};

struct tstream {
  uint64_t id;
  struct wire_addr to;
  int outbound, closed;
  uint8_t data[32768];
  size_t len;
};

struct tnode {
  struct swim *s;
  struct swim_config cfg;
  struct pkt out[MAX_PKTS];
  size_t nout;
  struct tstream streams[MAX_STREAMS];
  size_t nstreams;
  enum swim_event ev[MAX_EVENTS];
  char ev_name[MAX_EVENTS][WIRE_NAME_MAX + 1];
  size_t nev;
};

static uint64_t g_now = 5000000;
static uint64_t g_rng = 42;
static uint64_t g_stream_id = 100;

static uint64_t t_now(void *ctx) {
  (void)ctx;
  return g_now;
}

static uint32_t t_random(void *ctx) {
  (void)ctx;
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (uint32_t)(g_rng >> 16);
}

static int t_udp_send(void *ctx, const struct wire_addr *to, const uint8_t *buf,
                      size_t len) {
  struct tnode *t = ctx;
  if (t->nout == MAX_PKTS || len > sizeof t->out[0].buf)
    return -ENOBUFS;
  t->out[t->nout].to = *to;
  memcpy(t->out[t->nout].buf, buf, len);
  t->out[t->nout].len = len;
  t->nout++;
  return 0;
}

static struct tstream *new_stream(struct tnode *t, uint64_t id,
                                  const struct wire_addr *to, int outbound) {
  assert_true(t->nstreams < MAX_STREAMS);
  struct tstream *st = &t->streams[t->nstreams++];
  memset(st, 0, sizeof *st);
  st->id = id;
  st->to = *to;
  st->outbound = outbound;
  return st;
}

static struct tstream *find_stream(struct tnode *t, uint64_t id) {
  for (size_t i = 0; i < t->nstreams; i++)
    if (t->streams[i].id == id)
      return &t->streams[i];
  return NULL;
}

static int t_stream_open(void *ctx, const struct wire_addr *to, uint64_t *id) {
  *id = ++g_stream_id;
  new_stream(ctx, *id, to, 1);
  return 0;
}

static int t_stream_write(void *ctx, uint64_t id, const uint8_t *buf, size_t len) {
  struct tstream *st = find_stream(ctx, id);
  assert_non_null(st);
  assert_false(st->closed);
  assert_true(st->len + len <= sizeof st->data);
  memcpy(st->data + st->len, buf, len);
  st->len += len;
  return 0;
}

static void t_stream_close(void *ctx, uint64_t id) {
  struct tstream *st = find_stream(ctx, id);
  assert_non_null(st);
  assert_false(st->closed); /* exactly once */
  st->closed = 1;
}

static void t_event(void *ud, enum swim_event ev, const struct swim_member *m) {
  struct tnode *t = ud;
  if (t->nev < MAX_EVENTS) {
    t->ev[t->nev] = ev;
    snprintf(t->ev_name[t->nev], sizeof t->ev_name[0], "%s", m->name);
    t->nev++;
  }
}

static void addr_of(int i, struct wire_addr *a) {
  memset(a, 0, sizeof *a);
  a->ip_len = 4;
  a->ip[0] = 10;
  a->ip[3] = (uint8_t)i;
  a->port = 7946;
}

static struct tnode *tnode_start(const char *name, int i, const struct keyring *kr) {
  struct tnode *t = calloc(1, sizeof *t);
  assert_non_null(t);
  swim_config_lan(&t->cfg);
  snprintf(t->cfg.name, sizeof t->cfg.name, "%s", name);
  addr_of(i, &t->cfg.advertise);
  t->cfg.keyring = kr;
  struct swim_env env = {
      t, t_now, t_random, t_udp_send, t_stream_open, t_stream_write, t_stream_close};
  struct swim_callbacks cb = {t, t_event};
  assert_int_equal(swim_new(&t->s, &t->cfg, &env, &cb), 0);
  return t;
}

static void tnode_stop(struct tnode *t) {
  swim_free(t->s);
  /* every stream the core knew was handed back */
  for (size_t i = 0; i < t->nstreams; i++)
    assert_true(t->streams[i].closed);
  free(t);
}

static void tick_to(struct tnode **nodes, size_t n, uint64_t t) {
  for (;;) {
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < n; i++) {
      uint64_t d = swim_next_deadline(nodes[i]->s);
      if (d < next)
        next = d;
    }
    if (next > t)
      break;
    g_now = next > g_now ? next : g_now;
    for (size_t i = 0; i < n; i++)
      if (swim_next_deadline(nodes[i]->s) <= g_now)
        swim_tick(nodes[i]->s);
  }
  g_now = t;
}

static void advance(struct tnode **nodes, size_t n, uint64_t ms) {
  tick_to(nodes, n, g_now + ms);
}

/* Delivers every datagram between the given nodes until none is left. */
static void flush(struct tnode **nodes, size_t n) {
  for (int round = 0; round < 50; round++) {
    int moved = 0;
    for (size_t i = 0; i < n; i++) {
      struct tnode *from = nodes[i];
      size_t cnt = from->nout;
      struct pkt *copy = malloc(cnt * sizeof *copy + 1);
      memcpy(copy, from->out, cnt * sizeof *copy);
      from->nout = 0;
      for (size_t k = 0; k < cnt; k++)
        for (size_t j = 0; j < n; j++)
          if (swim__addr_eq(&copy[k].to, &nodes[j]->cfg.advertise)) {
            swim_on_udp(nodes[j]->s, &from->cfg.advertise, copy[k].buf, copy[k].len);
            moved = 1;
          }
      free(copy);
    }
    if (!moved)
      return;
  }
}

/* Runs outbound streams of `a` towards `b` (by address) to completion:
 * accept, connect, bytes both ways, closes. */
static void pump_streams(struct tnode *a, struct tnode *b) {
  for (size_t i = 0; i < a->nstreams; i++) {
    struct tstream *sa = &a->streams[i];
    if (!sa->outbound || sa->closed || !swim__addr_eq(&sa->to, &b->cfg.advertise))
      continue;
    uint64_t bid = ++g_stream_id;
    struct tstream *sb = new_stream(b, bid, &a->cfg.advertise, 0);
    swim_on_stream_accept(b->s, bid, &a->cfg.advertise);
    swim_on_stream_connected(a->s, sa->id, 0);
    size_t a_sent = 0, b_sent = 0;
    for (int round = 0; round < 10; round++) {
      sa = find_stream(a, sa->id);
      sb = find_stream(b, bid);
      if (sa->len > a_sent && !sb->closed) {
        swim_on_stream_data(b->s, bid, sa->data + a_sent, sa->len - a_sent);
        a_sent = sa->len;
      }
      if (sb->len > b_sent && !sa->closed) {
        swim_on_stream_data(a->s, sa->id, sb->data + b_sent, sb->len - b_sent);
        b_sent = sb->len;
      }
    }
    if (!sa->closed)
      swim_on_stream_closed(a->s, sa->id, 0);
    if (!sb->closed)
      swim_on_stream_closed(b->s, bid, 0);
  }
}

/* ---- reading what a core sent ---- */

struct found {
  int type;
  uint8_t msg[2048];
  size_t len;
};

static size_t split_packet(const struct keyring *kr, const struct pkt *p,
                           struct found *out, size_t max) {
  uint8_t plain[4096];
  const uint8_t *buf = p->buf;
  size_t len = p->len;
  if (kr) {
    int n = keyring_decrypt(kr, buf, len, NULL, 0, plain, sizeof plain);
    assert_true(n > 0);
    buf = plain;
    len = (size_t)n;
  }
  const uint8_t *inner;
  size_t ilen;
  assert_int_equal(wire_crc_unwrap(buf, len, &inner, &ilen), 0);
  size_t got = 0;
  if (inner[0] == WIRE_COMPOUND) {
    const uint8_t *parts[255];
    size_t lens[255], trunc;
    int n = wire_compound_decode(inner + 1, ilen - 1, parts, lens, 255, &trunc);
    assert_true(n > 0);
    assert_int_equal(trunc, 0);
    for (int i = 0; i < n && got < max; i++) {
      out[got].type = parts[i][0];
      memcpy(out[got].msg, parts[i], lens[i]);
      out[got++].len = lens[i];
    }
  } else if (got < max) {
    out[got].type = inner[0];
    memcpy(out[got].msg, inner, ilen);
    out[got++].len = ilen;
  }
  return got;
}

/* Finds the first message of `type` sent by t to `to` (any if NULL). */
static int find_sent(struct tnode *t, const struct wire_addr *to, int type,
                     struct found *f) {
  for (size_t i = 0; i < t->nout; i++) {
    if (to && !swim__addr_eq(&t->out[i].to, to))
      continue;
    struct found parts[128];
    size_t n = split_packet(t->cfg.keyring, &t->out[i], parts, 128);
    for (size_t k = 0; k < n; k++)
      if (parts[k].type == type) {
        *f = parts[k];
        return 1;
      }
  }
  return 0;
}

/* Finds the first alive/suspect/dead about `node` sent by t to `to`. */
static int find_about(struct tnode *t, const struct wire_addr *to, int type,
                      const char *node, struct found *f) {
  for (size_t i = 0; i < t->nout; i++) {
    if (to && !swim__addr_eq(&t->out[i].to, to))
      continue;
    struct found parts[128];
    size_t n = split_packet(t->cfg.keyring, &t->out[i], parts, 128);
    for (size_t k = 0; k < n; k++) {
      if (parts[k].type != type)
        continue;
      char name[WIRE_NAME_MAX + 1];
      if (type == WIRE_ALIVE) {
        struct wire_alive al;
        assert_true(wire_decode_alive(parts[k].msg + 1, parts[k].len - 1, &al) > 0);
        memcpy(name, al.node, sizeof name);
      } else {
        struct wire_suspect sm;
        assert_true(wire_decode_suspect(parts[k].msg + 1, parts[k].len - 1, &sm) > 0);
        memcpy(name, sm.node, sizeof name);
      }
      if (strcmp(name, node) == 0) {
        *f = parts[k];
        return 1;
      }
    }
  }
  return 0;
}

static const struct swim_member *member(struct tnode *t, const char *name,
                                        struct swim_member *buf) {
  struct swim_member all[32];
  size_t n = swim_members(t->s, all, 32);
  for (size_t i = 0; i < n && i < 32; i++)
    if (strcmp(all[i].name, name) == 0) {
      *buf = all[i];
      return buf;
    }
  return NULL;
}

/* ---- crafting input ---- */

static const uint8_t VSN[6] = {1, 5, 2, 2, 5, 5};

static void send_alive(struct tnode *to, const char *name, int i, uint32_t inc) {
  struct wire_alive a;
  memset(&a, 0, sizeof a);
  a.incarnation = inc;
  snprintf(a.node, sizeof a.node, "%s", name);
  addr_of(i, &a.addr);
  memcpy(a.vsn, VSN, 6);
  a.vsn_len = 6;
  uint8_t buf[1024];
  int n = wire_encode_alive(buf, sizeof buf, &a);
  assert_true(n > 0);
  struct wire_addr from;
  addr_of(i, &from);
  swim_on_udp(to->s, &from, buf, (size_t)n);
}

static void send_accusation(struct tnode *to, int type, const char *node,
                            const char *from, uint32_t inc, int from_idx) {
  struct wire_suspect m;
  memset(&m, 0, sizeof m);
  m.incarnation = inc;
  snprintf(m.node, sizeof m.node, "%s", node);
  snprintf(m.from, sizeof m.from, "%s", from);
  uint8_t buf[512];
  int n = type == WIRE_SUSPECT ? wire_encode_suspect(buf, sizeof buf, &m)
                               : wire_encode_dead(buf, sizeof buf, &m);
  assert_true(n > 0);
  struct wire_addr src;
  addr_of(from_idx, &src);
  swim_on_udp(to->s, &src, buf, (size_t)n);
}

static struct swim__member *internal(struct tnode *t, const char *name) {
  return swim__member_find(t->s, name);
}

/* ---- tests ---- */

static void test_formulas(void **state) {
  (void)state;
  /* section 9: min = 4 x max(1, log10(n)) x 1 s, max = 6 x min */
  for (size_t n = 1; n <= 10; n++)
    assert_int_equal(swim__suspicion_timeout(4, n, 1000), 4000);
  assert_int_equal(swim__suspicion_timeout(4, 20, 1000), 5204);
  assert_int_equal(swim__suspicion_timeout(4, 100, 1000), 8000);
  /* section 11.3: with k = 2 expected confirmations, n <= 10 */
  assert_int_equal(swim__suspicion_remaining(0, 2, 0, 4000, 24000), 24000);
  assert_int_equal(swim__suspicion_remaining(1, 2, 0, 4000, 24000), 11381);
  assert_int_equal(swim__suspicion_remaining(2, 2, 0, 4000, 24000), 4000);
  /* measured from the start; already past means at once */
  assert_int_equal(swim__suspicion_remaining(1, 2, 1381, 4000, 24000), 10000);
  assert_int_equal(swim__suspicion_remaining(2, 2, 9000, 4000, 24000), 0);
  /* retransmit limit = 4 x ceil(log10(n + 1)) */
  assert_int_equal(swim__retransmit_limit(4, 1), 4);
  assert_int_equal(swim__retransmit_limit(4, 9), 4);
  assert_int_equal(swim__retransmit_limit(4, 10), 8);
  assert_int_equal(swim__retransmit_limit(4, 99), 8);
  assert_int_equal(swim__retransmit_limit(4, 100), 12);
  assert_int_equal(swim__retransmit_limit(4, 999), 12);
  /* push/pull interval stretches past 32 nodes */
  assert_int_equal(swim__push_pull_scale(30000, 32), 30000);
  assert_int_equal(swim__push_pull_scale(30000, 33), 60000);
  assert_int_equal(swim__push_pull_scale(30000, 64), 60000);
  assert_int_equal(swim__push_pull_scale(30000, 65), 90000);
}

/* A suspicion timer as a core runs it: 24 s, 11.38 s after one
 * confirmation, 4 s after two; and k = 0 (min at once) under 4 nodes. */
static void test_suspicion_timer(void **state) {
  (void)state;
  struct tnode *a;
  a = tnode_start("a", 1, NULL);
  send_alive(a, "b", 2, 1);
  send_alive(a, "c", 3, 1);
  /* n = 3: the accused and we leave one node, fewer than k = 2 */
  uint64_t t0 = g_now;
  send_accusation(a, WIRE_SUSPECT, "b", "c", 1, 3);
  struct swim__member *b = internal(a, "b");
  assert_int_equal(b->state, SWIM_SUSPECT);
  assert_non_null(b->suspicion);
  assert_int_equal(b->suspicion->k, 0);
  assert_int_equal(b->suspect_timer.when, t0 + 4000);
  tnode_stop(a);

  a = tnode_start("a", 1, NULL);
  send_alive(a, "b", 2, 1);
  send_alive(a, "c", 3, 1);
  send_alive(a, "d", 4, 1);
  t0 = g_now;
  send_accusation(a, WIRE_SUSPECT, "b", "c", 1, 3);
  b = internal(a, "b");
  assert_int_equal(b->suspicion->k, 2);
  assert_int_equal(b->suspect_timer.when, t0 + 24000);
  /* the first accuser again, and a repeat, do not count */
  send_accusation(a, WIRE_SUSPECT, "b", "c", 1, 3);
  assert_int_equal(b->suspect_timer.when, t0 + 24000);
  struct tnode *nodes[] = {a};
  send_accusation(a, WIRE_SUSPECT, "b", "d", 1, 4);
  assert_int_equal(b->suspicion->n, 1);
  assert_int_equal(b->suspect_timer.when, t0 + 11381);
  send_accusation(a, WIRE_SUSPECT, "b", "d", 1, 4);
  assert_int_equal(b->suspicion->n, 1);
  send_accusation(a, WIRE_SUSPECT, "b", "e", 1, 4);
  assert_int_equal(b->suspicion->n, 2);
  assert_int_equal(b->suspect_timer.when, t0 + 4000);
  /* it fires at exactly 4 s: dead, from us */
  a->nev = 0;
  a->nout = 0;
  tick_to(nodes, 1, t0 + 3999);
  assert_int_equal(internal(a, "b")->state, SWIM_SUSPECT);
  tick_to(nodes, 1, t0 + 4000);
  assert_int_equal(internal(a, "b")->state, SWIM_DEAD);
  int dead_ev = 0;
  for (size_t i = 0; i < a->nev; i++)
    dead_ev += a->ev[i] == SWIM_EV_DEAD && strcmp(a->ev_name[i], "b") == 0;
  assert_int_equal(dead_ev, 1);
  struct swim_stats st;
  swim_get_stats(a->s, &st);
  assert_int_equal(st.deaths_declared, 1);
  tnode_stop(a);
}

/* Suspected at our incarnation: refute with a higher one and gossip it;
 * an older accusation is answered with our current alive instead. */
static void test_refutation(void **state) {
  (void)state;
  struct tnode *a, *b;
  a = tnode_start("a", 1, NULL);
  b = tnode_start("b", 2, NULL);
  send_alive(a, "b", 2, 1);
  send_accusation(a, WIRE_SUSPECT, "a", "b", 1, 2);
  struct swim_stats st;
  swim_get_stats(a->s, &st);
  assert_int_equal(st.refutations, 1);
  assert_int_equal(st.awareness, 1); /* Lifeguard: refuting costs health */
  struct swim_member m;
  assert_non_null(member(a, "a", &m));
  assert_int_equal(m.incarnation, 2);
  assert_int_equal(m.state, SWIM_ALIVE);
  /* the refutation goes out with the next gossip round */
  struct tnode *nodes[] = {a, b};
  a->nout = 0;
  advance(nodes, 2, 1000);
  struct found f;
  assert_true(find_about(a, &b->cfg.advertise, WIRE_ALIVE, "a", &f));
  struct wire_alive al;
  assert_true(wire_decode_alive(f.msg + 1, f.len - 1, &al) > 0);
  assert_int_equal(al.incarnation, 2);
  assert_memory_equal(al.vsn, VSN, 6);
  /* b accepts it */
  flush(nodes, 2);
  assert_non_null(member(b, "a", &m));
  assert_int_equal(m.incarnation, 2);
  /* dead about us: refuted past the accused incarnation */
  send_accusation(a, WIRE_DEAD, "a", "b", 7, 2);
  assert_non_null(member(a, "a", &m));
  assert_int_equal(m.incarnation, 8);
  /* a stale suspicion: no refutation, a correction to its sender */
  a->nout = 0;
  send_accusation(a, WIRE_SUSPECT, "a", "b", 3, 2);
  swim_get_stats(a->s, &st);
  assert_int_equal(st.refutations, 2);
  assert_int_equal(st.corrections, 1);
  assert_true(find_about(a, &b->cfg.advertise, WIRE_ALIVE, "a", &f));
  assert_true(wire_decode_alive(f.msg + 1, f.len - 1, &al) > 0);
  assert_int_equal(al.incarnation, 8);
  /* alive about us with other meta at our incarnation: refute too */
  struct wire_alive fake = al;
  fake.meta_len = 2;
  fake.meta[0] = 0xff;
  fake.meta[1] = 0x80;
  uint8_t buf[1024];
  int n = wire_encode_alive(buf, sizeof buf, &fake);
  swim_on_udp(a->s, &b->cfg.advertise, buf, (size_t)n);
  assert_non_null(member(a, "a", &m));
  assert_int_equal(m.incarnation, 9);
  assert_int_equal(m.meta_len, 0);
  tnode_stop(a);
  tnode_stop(b);
}

/* A stale accusation about someone else is answered with what we know
 * better (at most once per gossip interval per member); a suspicion of a
 * member that left, with its leave. */
static void test_corrections(void **state) {
  (void)state;
  struct tnode *a = tnode_start("a", 1, NULL);
  send_alive(a, "b", 2, 2);
  send_alive(a, "c", 3, 1);
  struct wire_addr c;
  addr_of(3, &c);
  a->nout = 0;
  send_accusation(a, WIRE_SUSPECT, "b", "c", 1, 3);
  struct found f;
  assert_true(find_about(a, &c, WIRE_ALIVE, "b", &f));
  struct wire_alive al;
  assert_true(wire_decode_alive(f.msg + 1, f.len - 1, &al) > 0);
  assert_int_equal(al.incarnation, 2);
  struct swim_member m;
  assert_non_null(member(a, "b", &m));
  assert_int_equal(m.state, SWIM_ALIVE);
  a->nout = 0;
  send_accusation(a, WIRE_DEAD, "b", "c", 1, 3);
  assert_int_equal(a->nout, 0); /* within the gossip interval */
  struct tnode *nodes[] = {a};
  advance(nodes, 1, 200);
  a->nout = 0;
  send_accusation(a, WIRE_DEAD, "b", "c", 1, 3);
  assert_true(find_about(a, &c, WIRE_ALIVE, "b", &f));
  /* b leaves; c still suspects it: c is told about the leave */
  send_accusation(a, WIRE_DEAD, "b", "b", 2, 2);
  advance(nodes, 1, 200);
  a->nout = 0;
  send_accusation(a, WIRE_SUSPECT, "b", "c", 2, 3);
  assert_true(find_about(a, &c, WIRE_DEAD, "b", &f));
  struct wire_suspect d;
  assert_true(wire_decode_dead(f.msg + 1, f.len - 1, &d) > 0);
  assert_string_equal(d.from, "b");
  assert_int_equal(d.incarnation, 2);
  struct swim_stats st;
  swim_get_stats(a->s, &st);
  assert_int_equal(st.corrections, 3);
  tnode_stop(a);
}

/* Lifeguard awareness: +missing nacks after a failed probe, -1 after a
 * good one, and the probe interval stretches by (score + 1). */
static void test_awareness(void **state) {
  (void)state;
  struct tnode *a;
  a = tnode_start("a", 1, NULL);
  send_alive(a, "b", 2, 1);
  send_alive(a, "c", 3, 1);
  send_alive(a, "d", 4, 1);
  struct tnode *nodes[] = {a};
  /* first probe: wait for a ping, deliver nothing */
  a->nout = 0;
  struct found f;
  while (!find_sent(a, NULL, WIRE_PING, &f))
    advance(nodes, 1, 1);
  uint64_t start = g_now;
  a->nout = 0;
  advance(nodes, 1, 500);
  /* indirect pings to both other members, asking for nacks (PMax 5) */
  size_t ind = 0;
  for (size_t i = 0; i < a->nout; i++) {
    struct found parts[8];
    size_t n = split_packet(NULL, &a->out[i], parts, 8);
    for (size_t k = 0; k < n; k++)
      if (parts[k].type == WIRE_INDIRECT_PING) {
        struct wire_indirect_ping ip;
        assert_true(wire_decode_indirect_ping(parts[k].msg + 1, parts[k].len - 1, &ip) >
                    0);
        assert_true(ip.nack);
        ind++;
      }
  }
  assert_int_equal(ind, 2);
  /* and a TCP ping to the target */
  assert_int_equal(a->nstreams, 1);
  tick_to(nodes, 1, start + 1000);
  struct swim_stats st;
  swim_get_stats(a->s, &st);
  assert_int_equal(st.probe_failures, 1);
  assert_int_equal(st.awareness, 2); /* two nacks missing */
  /* the next probe waits 3 probe intervals; answer it */
  struct wire_ping p;
  assert_true(find_sent(a, NULL, WIRE_PING, &f));
  assert_true(wire_decode_ping(f.msg + 1, f.len - 1, &p) > 0);
  assert_int_equal(swim_next_deadline(a->s) <= g_now + 500, 1); /* probe timeout first */
  struct wire_ack ack = {.seq_no = p.seq_no};
  uint8_t buf[64];
  int n = wire_encode_ack(buf, sizeof buf, &ack);
  swim_on_udp(a->s, &a->cfg.advertise, buf, (size_t)n);
  swim_get_stats(a->s, &st);
  assert_int_equal(st.awareness, 1);
  assert_int_equal(a->s->probe_timer.when, g_now + 3000);
  /* refutations push it up, never past awareness_max_multiplier - 1 */
  for (uint32_t i = 1; i < 20; i++)
    send_accusation(a, WIRE_SUSPECT, "a", "b", i + 1, 2);
  swim_get_stats(a->s, &st);
  assert_int_equal(st.awareness, 7);
  tnode_stop(a);
}

/* Helpers relay the target's ack under the requester's sequence number,
 * or nack after probe_timeout when asked to. */
static void test_indirect_probe(void **state) {
  (void)state;
  struct tnode *h;
  h = tnode_start("h", 1, NULL);
  struct wire_indirect_ping ip;
  memset(&ip, 0, sizeof ip);
  ip.seq_no = 77;
  addr_of(3, &ip.target);
  snprintf(ip.node, sizeof ip.node, "t");
  ip.nack = 1;
  ip.has_source = 1;
  addr_of(2, &ip.source);
  snprintf(ip.source_node, sizeof ip.source_node, "r");
  uint8_t buf[512];
  int n = wire_encode_indirect_ping(buf, sizeof buf, &ip);
  struct wire_addr r, t;
  addr_of(2, &r);
  addr_of(3, &t);
  h->nout = 0;
  swim_on_udp(h->s, &r, buf, (size_t)n);
  struct found f;
  struct wire_ping p;
  assert_true(find_sent(h, &t, WIRE_PING, &f));
  assert_true(wire_decode_ping(f.msg + 1, f.len - 1, &p) > 0);
  assert_string_equal(p.node, "t");
  assert_string_equal(p.source_node, "h");
  /* the target answers: the requester gets an ack with its own seq */
  h->nout = 0;
  struct wire_ack ack = {.seq_no = p.seq_no};
  n = wire_encode_ack(buf, sizeof buf, &ack);
  swim_on_udp(h->s, &t, buf, (size_t)n);
  assert_true(find_sent(h, &r, WIRE_ACK, &f));
  assert_true(wire_decode_ack(f.msg + 1, f.len - 1, &ack) > 0);
  assert_int_equal(ack.seq_no, 77);
  /* second request, no answer: a nack after probe_timeout */
  ip.seq_no = 78;
  n = wire_encode_indirect_ping(buf, sizeof buf, &ip);
  swim_on_udp(h->s, &r, buf, (size_t)n);
  h->nout = 0;
  struct tnode *nodes[] = {h};
  advance(nodes, 1, 499);
  assert_false(find_sent(h, &r, WIRE_NACK, &f));
  advance(nodes, 1, 1);
  assert_true(find_sent(h, &r, WIRE_NACK, &f));
  struct wire_nack nack;
  assert_true(wire_decode_nack(f.msg + 1, f.len - 1, &nack) > 0);
  assert_int_equal(nack.seq_no, 78);
  /* a ping for another name gets no answer, ours an ack to SourceAddr */
  h->nout = 0;
  struct wire_ping q;
  memset(&q, 0, sizeof q);
  q.seq_no = 5;
  snprintf(q.node, sizeof q.node, "someone-else");
  n = wire_encode_ping(buf, sizeof buf, &q);
  swim_on_udp(h->s, &r, buf, (size_t)n);
  assert_int_equal(h->nout, 0);
  snprintf(q.node, sizeof q.node, "h");
  q.has_source = 1;
  q.source = t;
  snprintf(q.source_node, sizeof q.source_node, "t");
  n = wire_encode_ping(buf, sizeof buf, &q);
  swim_on_udp(h->s, &r, buf, (size_t)n);
  assert_true(find_sent(h, &t, WIRE_ACK, &f));
  tnode_stop(h);
}

/* dead with From == Node is a leave; From another node a failure. */
static void test_dead_from_self_is_left(void **state) {
  (void)state;
  struct tnode *a;
  a = tnode_start("a", 1, NULL);
  send_alive(a, "b", 2, 1);
  send_alive(a, "c", 3, 1);
  a->nev = 0;
  send_accusation(a, WIRE_DEAD, "b", "b", 1, 2);
  send_accusation(a, WIRE_DEAD, "c", "b", 1, 2);
  struct swim_member m;
  assert_non_null(member(a, "b", &m));
  assert_int_equal(m.state, SWIM_LEFT);
  assert_non_null(member(a, "c", &m));
  assert_int_equal(m.state, SWIM_DEAD);
  assert_int_equal(a->nev, 2);
  assert_int_equal(a->ev[0], SWIM_EV_LEAVE);
  assert_int_equal(a->ev[1], SWIM_EV_DEAD);
  assert_int_equal(swim_num_alive(a->s), 1);
  /* c comes back with a higher incarnation; an older dead is ignored */
  send_alive(a, "c", 3, 2);
  assert_non_null(member(a, "c", &m));
  assert_int_equal(m.state, SWIM_ALIVE);
  assert_int_equal(a->ev[2], SWIM_EV_ALIVE);
  send_accusation(a, WIRE_DEAD, "c", "b", 1, 2);
  assert_non_null(member(a, "c", &m));
  assert_int_equal(m.state, SWIM_ALIVE);
  tnode_stop(a);
}

/* A known name claimed from another address is a conflict: ignored,
 * unless the old holder left. */
static void test_name_conflict(void **state) {
  (void)state;
  struct tnode *a;
  a = tnode_start("a", 1, NULL);
  send_alive(a, "b", 2, 1);
  a->nev = 0;
  send_alive(a, "b", 9, 5);
  struct swim_member m;
  assert_non_null(member(a, "b", &m));
  assert_int_equal(m.addr.ip[3], 2);
  assert_int_equal(m.incarnation, 1);
  assert_int_equal(a->nev, 0);
  struct swim_stats st;
  swim_get_stats(a->s, &st);
  assert_int_equal(st.name_conflicts, 1);
  /* our own name from elsewhere is not taken over either */
  send_alive(a, "a", 9, 5);
  assert_non_null(member(a, "a", &m));
  assert_int_equal(m.addr.ip[3], 1);
  assert_int_equal(m.incarnation, 1);
  swim_get_stats(a->s, &st);
  assert_int_equal(st.self_conflicts, 1);
  assert_int_equal(st.self_conflict_from.ip[3], 9);
  /* after b left, the name is free for a new address */
  send_accusation(a, WIRE_DEAD, "b", "b", 1, 2);
  send_alive(a, "b", 9, 1);
  assert_non_null(member(a, "b", &m));
  assert_int_equal(m.state, SWIM_ALIVE);
  assert_int_equal(m.addr.ip[3], 9);
  /* an alive with impossible protocol versions is ignored */
  struct wire_alive al;
  memset(&al, 0, sizeof al);
  al.incarnation = 3;
  snprintf(al.node, sizeof al.node, "x");
  addr_of(7, &al.addr);
  al.vsn[0] = 3;
  al.vsn[1] = 2;
  al.vsn_len = 6;
  uint8_t buf[512];
  int n = wire_encode_alive(buf, sizeof buf, &al);
  swim_on_udp(a->s, &al.addr, buf, (size_t)n);
  assert_null(member(a, "x", &m));
  tnode_stop(a);
}

/* swim_rename: the self member moves to the new name with a higher
 * incarnation; the old name is free (the claimant may now be added), a
 * known name or a bad one is refused and nothing changes. */
static void test_rename(void **state) {
  (void)state;
  struct tnode *a = tnode_start("a", 1, NULL);
  send_alive(a, "b", 2, 1);
  struct swim_member m;
  assert_int_equal(swim_rename(a->s, "b"), -EEXIST);
  assert_int_equal(swim_rename(a->s, ""), -EINVAL);
  char longname[WIRE_NAME_MAX + 2];
  memset(longname, 'x', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  assert_int_equal(swim_rename(a->s, longname), -EINVAL);
  assert_non_null(member(a, "a", &m));
  assert_int_equal(swim_rename(a->s, "a-10.0.0.1"), 0);
  assert_null(member(a, "a", &m));
  assert_non_null(member(a, "a-10.0.0.1", &m));
  assert_true(m.is_self);
  assert_int_equal(m.incarnation, 2);
  assert_int_equal(m.addr.ip[3], 1);
  assert_int_equal(swim_num_alive(a->s), 2);
  /* the other node with our old name is a member like any other now */
  send_alive(a, "a", 9, 1);
  assert_non_null(member(a, "a", &m));
  assert_false(m.is_self);
  assert_int_equal(m.addr.ip[3], 9);
  assert_int_equal(swim_num_alive(a->s), 3);
  tnode_stop(a);
}

/* Builds a push/pull message from entries. */
static size_t build_push_pull(uint8_t *out, size_t cap, int join,
                              struct wire_push_node *nodes, size_t n, const uint8_t *user,
                              size_t ulen) {
  struct wire_push_pull_header h = {join, (uint32_t)n, (uint32_t)ulen};
  int r = wire_encode_push_pull_header(out, cap, &h);
  assert_true(r > 0);
  size_t pos = (size_t)r;
  for (size_t i = 0; i < n; i++) {
    r = wire_encode_push_node(out + pos, cap - pos, &nodes[i]);
    assert_true(r > 0);
    pos += (size_t)r;
  }
  if (ulen)
    memcpy(out + pos, user, ulen);
  return pos + ulen;
}

static void push_node(struct wire_push_node *pn, const char *name, int i, uint32_t inc,
                      int state, const uint8_t *vsn) {
  memset(pn, 0, sizeof *pn);
  snprintf(pn->name, sizeof pn->name, "%s", name);
  addr_of(i, &pn->addr);
  pn->incarnation = inc;
  pn->state = state;
  memcpy(pn->vsn, vsn, 6);
  pn->vsn_len = 6;
}

/* memberlist's version check: every node's current versions must lie in
 * the range all alive nodes understand, or nothing is merged. */
static void test_push_pull_versions(void **state) {
  (void)state;
  struct tnode *a;
  a = tnode_start("a", 1, NULL);
  struct wire_push_node pn[2];
  static const uint8_t NEWER[6] = {3, 5, 4, 2, 5, 5}; /* understands 3..5 only */
  push_node(&pn[0], "x", 2, 1, WIRE_STATE_ALIVE, VSN);
  push_node(&pn[1], "y", 3, 1, WIRE_STATE_ALIVE, NEWER);
  uint8_t msg[4096];
  size_t len = build_push_pull(msg, sizeof msg, 0, pn, 2, NULL, 0);
  struct wire_addr from;
  addr_of(2, &from);
  swim_on_stream_accept(a->s, 900, &from);
  struct tstream *st = new_stream(a, 900, &from, 0);
  swim_on_stream_data(a->s, 900, msg, len);
  struct swim_stats stats;
  swim_get_stats(a->s, &stats);
  assert_int_equal(stats.push_pull_rejected, 1);
  assert_int_equal(swim_members(a->s, NULL, 0), 1); /* nothing merged */
  /* memberlist answers before checking: our state went out */
  assert_true(st->len > 0);
  assert_int_equal(st->data[0], WIRE_PUSH_PULL);
  assert_true(st->closed);
  /* a compatible one is merged: alive as alive, dead as our suspicion,
   * left as left */
  push_node(&pn[1], "y", 3, 1, WIRE_STATE_ALIVE, VSN);
  len = build_push_pull(msg, sizeof msg, 0, pn, 2, NULL, 0);
  swim_on_stream_accept(a->s, 901, &from);
  new_stream(a, 901, &from, 0);
  swim_on_stream_data(a->s, 901, msg, len);
  assert_int_equal(swim_members(a->s, NULL, 0), 3);
  push_node(&pn[0], "x", 2, 1, WIRE_STATE_DEAD, VSN);
  push_node(&pn[1], "y", 3, 1, WIRE_STATE_LEFT, VSN);
  len = build_push_pull(msg, sizeof msg, 0, pn, 2, NULL, 0);
  swim_on_stream_accept(a->s, 902, &from);
  new_stream(a, 902, &from, 0);
  swim_on_stream_data(a->s, 902, msg, len);
  struct swim_member m;
  assert_non_null(member(a, "x", &m));
  assert_int_equal(m.state, SWIM_SUSPECT);
  assert_non_null(member(a, "y", &m));
  assert_int_equal(m.state, SWIM_LEFT);
  /* an outbound join whose answer is incompatible fails and is retried */
  struct wire_addr seed;
  addr_of(9, &seed);
  size_t before = a->nstreams;
  assert_int_equal(swim_join(a->s, &seed, 1), 0);
  assert_int_equal(a->nstreams, before + 1);
  struct tstream *js = &a->streams[before];
  swim_on_stream_connected(a->s, js->id, 0);
  assert_true(js->len > 0);
  struct wire_push_pull_header h;
  assert_true(wire_decode_push_pull_header(js->data + 1, js->len - 1, &h) > 0);
  assert_true(h.join);
  assert_int_equal(h.nodes, 3);
  push_node(&pn[0], "s", 9, 1, WIRE_STATE_ALIVE, NEWER);
  len = build_push_pull(msg, sizeof msg, 1, pn, 1, NULL, 0);
  swim_on_stream_data(a->s, js->id, msg, len);
  assert_true(js->closed);
  assert_null(member(a, "s", &m));
  assert_true(swim__timer_armed(&a->s->join_timer));
  assert_int_equal(a->s->join_timer.when, g_now + 1000);
  tnode_stop(a);
}

/* With a keyring, plaintext is dropped (UDP) or refused (TCP), and two
 * encrypted cores join each other over streams. */
static void test_encryption(void **state) {
  (void)state;
  struct keyring kr;
  keyring_init(&kr);
  assert_int_equal(
      keyring_add_base64(&kr, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="), 0);
  struct tnode *a, *b;
  a = tnode_start("a", 1, &kr);
  b = tnode_start("b", 2, &kr);
  /* a plaintext ping: dropped, counted, unanswered */
  struct wire_ping p;
  memset(&p, 0, sizeof p);
  p.seq_no = 9;
  snprintf(p.node, sizeof p.node, "a");
  uint8_t buf[1024], enc[1200];
  int n = wire_encode_ping(buf, sizeof buf, &p);
  a->nout = 0;
  swim_on_udp(a->s, &b->cfg.advertise, buf, (size_t)n);
  struct swim_stats st;
  swim_get_stats(a->s, &st);
  assert_int_equal(st.dropped_auth, 1);
  assert_int_equal(a->nout, 0);
  /* the same ping encrypted: answered, encrypted */
  int m = keyring_encrypt(&kr, buf, (size_t)n, NULL, 0, enc, sizeof enc);
  assert_true(m > 0);
  swim_on_udp(a->s, &b->cfg.advertise, enc, (size_t)m);
  assert_int_equal(a->nout, 1);
  struct found f;
  assert_true(find_sent(a, &b->cfg.advertise, WIRE_ACK, &f)); /* decrypts with kr */
  /* a plaintext push/pull stream: refused with an (encrypted) err */
  struct wire_push_node pn;
  push_node(&pn, "x", 5, 1, WIRE_STATE_ALIVE, VSN);
  size_t len = build_push_pull(buf, sizeof buf, 0, &pn, 1, NULL, 0);
  swim_on_stream_accept(a->s, 700, &b->cfg.advertise);
  struct tstream *ts = new_stream(a, 700, &b->cfg.advertise, 0);
  swim_on_stream_data(a->s, 700, buf, len);
  swim_get_stats(a->s, &st);
  assert_int_equal(st.dropped_auth, 2);
  assert_true(ts->closed);
  assert_true(ts->len > 5);
  assert_int_equal(ts->data[0], WIRE_ENCRYPT);
  uint8_t plain[512];
  int pl =
      keyring_decrypt(&kr, ts->data + 5, ts->len - 5, ts->data, 5, plain, sizeof plain);
  assert_true(pl > 0);
  assert_int_equal(plain[0], WIRE_ERR);
  assert_int_equal(swim_members(a->s, NULL, 0), 1);
  /* b joins a: encrypted push/pull both ways */
  assert_int_equal(swim_join(b->s, &a->cfg.advertise, 1), 0);
  pump_streams(b, a);
  struct swim_member mm;
  assert_non_null(member(a, "b", &mm));
  assert_int_equal(mm.state, SWIM_ALIVE);
  assert_non_null(member(b, "a", &mm));
  assert_int_equal(b->s->joining, 0);
  /* and their gossip goes through */
  struct tnode *nodes[] = {a, b};
  advance(nodes, 2, 3000);
  flush(nodes, 2);
  swim_get_stats(b->s, &st);
  assert_int_equal(st.dropped_auth + st.dropped_malformed, 0);
  tnode_stop(a);
  tnode_stop(b);
}

/* Graceful leave: serf's leave intent first, exactly as serf encodes it,
 * then memberlist's dead about ourselves with From == Node. */
static void test_leave_intent(void **state) {
  (void)state;
  struct tnode *a, *b;
  a = tnode_start("a", 1, NULL);
  b = tnode_start("b", 2, NULL);
  send_alive(a, "b", 2, 1);
  /* serf's clock from a push/pull user state: byte 2 + {LTime: 41, ...} */
  struct wire_push_node pn;
  push_node(&pn, "b", 2, 1, WIRE_STATE_ALIVE, VSN);
  static const uint8_t user[] = {2,    0x82, 0xa5, 'L', 'T', 'i', 'm', 'e', 41,
                                 0xa6, 'E',  'v',  'e', 'n', 't', 's', 0x90};
  uint8_t msg[1024];
  size_t len = build_push_pull(msg, sizeof msg, 0, &pn, 1, user, sizeof user);
  swim_on_stream_accept(a->s, 800, &b->cfg.advertise);
  new_stream(a, 800, &b->cfg.advertise, 0);
  swim_on_stream_data(a->s, 800, msg, len);
  assert_int_equal(a->s->serf_ltime, 41);
  struct tnode *nodes[] = {a, b};
  for (int i = 0; i < 20; i++) {
    advance(nodes, 2, 100);
    flush(nodes, 2); /* b answers a's probes and learns a */
  }
  a->nout = 0;
  assert_int_equal(swim_leave(a->s, 10000), 0);
  assert_false(swim_leave_done(a->s));
  advance(nodes, 2, 250);
  struct found f;
  assert_true(find_sent(a, &b->cfg.advertise, WIRE_USER, &f));
  /* [8][0 = leave intent][{LTime: 42, Node: "a", Prune: false}] as go-msgpack
   * writes it: keys sorted, strings in raw form */
  static const uint8_t want[] = {8,   0,    0x83, 0xa5, 'L', 'T', 'i', 'm',
                                 'e', 42,   0xa4, 'N',  'o', 'd', 'e', 0xa1,
                                 'a', 0xa5, 'P',  'r',  'u', 'n', 'e', 0xc2};
  assert_int_equal(f.len, sizeof want);
  assert_memory_equal(f.msg, want, sizeof want);
  /* and it decodes as serf reads it */
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  assert_int_equal(msgpack_unpack_next(&u, (const char *)f.msg + 2, f.len - 2, &off),
                   MSGPACK_UNPACK_SUCCESS);
  assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
  assert_int_equal(u.data.via.map.size, 3);
  assert_int_equal(u.data.via.map.ptr[0].val.via.u64, 42);
  assert_memory_equal(u.data.via.map.ptr[1].val.via.str.ptr, "a", 1);
  assert_false(u.data.via.map.ptr[2].val.via.boolean);
  msgpack_unpacked_destroy(&u);
  /* no dead yet: it follows once the intent has gone out */
  assert_false(find_sent(a, NULL, WIRE_DEAD, &f));
  a->nout = 0;
  advance(nodes, 2, 2000);
  assert_true(find_sent(a, &b->cfg.advertise, WIRE_DEAD, &f));
  struct wire_suspect d;
  assert_true(wire_decode_dead(f.msg + 1, f.len - 1, &d) > 0);
  assert_string_equal(d.node, "a");
  assert_string_equal(d.from, "a");
  struct swim_member m;
  assert_non_null(member(a, "a", &m));
  assert_int_equal(m.state, SWIM_LEFT);
  advance(nodes, 2, 2000);
  assert_true(swim_leave_done(a->s));
  /* b takes it as a leave; a does not refute what it hears about itself */
  flush(nodes, 2);
  assert_non_null(member(b, "a", &m));
  assert_int_equal(m.state, SWIM_LEFT);
  send_accusation(a, WIRE_SUSPECT, "a", "b", 5, 2);
  struct swim_stats st;
  swim_get_stats(a->s, &st);
  assert_int_equal(st.refutations, 0);
  tnode_stop(a);
  tnode_stop(b);
}

/* Junk, truncated and oversized input is dropped and counted; the core
 * keeps working. */
static void test_malformed_input(void **state) {
  (void)state;
  struct tnode *a;
  a = tnode_start("a", 1, NULL);
  struct wire_addr from;
  addr_of(2, &from);
  uint8_t buf[2048];
  struct wire_alive al;
  memset(&al, 0, sizeof al);
  al.incarnation = 1;
  snprintf(al.node, sizeof al.node, "b");
  addr_of(2, &al.addr);
  memcpy(al.vsn, VSN, 6);
  al.vsn_len = 6;
  int n = wire_encode_alive(buf, sizeof buf, &al);
  /* every truncation of a valid alive, with and without CRC */
  for (int cut = 0; cut < n; cut++)
    swim_on_udp(a->s, &from, buf, (size_t)cut);
  uint8_t crc[2048];
  int c = wire_crc_wrap(crc, sizeof crc, buf, (size_t)n);
  crc[c - 1] ^= 1;
  swim_on_udp(a->s, &from, crc, (size_t)c);
  /* a compound claiming more than it holds, an unknown type */
  static const uint8_t bad_compound[] = {7, 3, 0, 10, 0, 10, 0, 10, 4, 0x80};
  swim_on_udp(a->s, &from, bad_compound, sizeof bad_compound);
  static const uint8_t unknown[] = {99, 1, 2, 3};
  swim_on_udp(a->s, &from, unknown, sizeof unknown);
  /* random bytes */
  uint64_t x = 12345;
  for (int i = 0; i < 2000; i++) {
    size_t len = 1 + (size_t)(x % 300);
    for (size_t k = 0; k < len; k++) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      buf[k] = (uint8_t)(x >> 56);
    }
    swim_on_udp(a->s, &from, buf, len);
  }
  struct swim_stats st;
  swim_get_stats(a->s, &st);
  assert_true(st.dropped_malformed >= (uint64_t)n);
  assert_true(st.dropped_crc >= 1);
  /* still works */
  send_alive(a, "b", 2, 1);
  struct swim_member m;
  assert_non_null(member(a, "b", &m));
  /* a compressed compound is taken apart */
  uint8_t parts_buf[1024];
  al.incarnation = 1;
  snprintf(al.node, sizeof al.node, "c");
  addr_of(3, &al.addr);
  int l1 = wire_encode_alive(parts_buf, sizeof parts_buf, &al);
  const uint8_t *parts[2] = {parts_buf, parts_buf};
  size_t lens[2] = {(size_t)l1, (size_t)l1};
  uint8_t comp[2048], z[2048];
  int cl = wire_compound_encode(comp, sizeof comp, parts, lens, 2);
  int zl = wire_compress(z, sizeof z, comp, (size_t)cl);
  assert_true(zl > 0);
  swim_on_udp(a->s, &from, z, (size_t)zl);
  assert_non_null(member(a, "c", &m));
  /* streams: garbage gets an err and a close; a huge declared user state
   * waits until the cap */
  swim_on_stream_accept(a->s, 600, &from);
  struct tstream *ts = new_stream(a, 600, &from, 0);
  static const uint8_t junk[] = {0x42, 1, 2, 3};
  swim_on_stream_data(a->s, 600, junk, sizeof junk);
  assert_true(ts->closed);
  assert_int_equal(ts->data[0], WIRE_ERR);
  /* random streams starting with every type byte: answered, closed or
   * left to time out, never a crash */
  for (int i = 0; i < 600; i++) {
    uint64_t id = 1000 + (uint64_t)i;
    size_t len = 1 + (size_t)(x % 200);
    for (size_t k = 0; k < len; k++) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      buf[k] = (uint8_t)(x >> 56);
    }
    buf[0] = (uint8_t)(i % 15);
    if (a->nstreams >= MAX_STREAMS / 2) {
      struct tnode *nodes[] = {a};
      advance(nodes, 1, 10001); /* everything accepted times out */
      size_t keep = 0;
      for (size_t k = 0; k < a->nstreams; k++) {
        assert_true(a->streams[k].closed || a->streams[k].outbound);
        if (!a->streams[k].closed)
          a->streams[keep++] = a->streams[k];
      }
      a->nstreams = keep;
    }
    swim_on_stream_accept(a->s, id, &from);
    new_stream(a, id, &from, 0);
    swim_on_stream_data(a->s, id, buf, len / 2);
    swim_on_stream_data(a->s, id, buf + len / 2, len - len / 2);
  }
  tnode_stop(a);
}

/* A stream message is parsed as its bytes trickle in, one at a time. */
static void test_stream_framing(void **state) {
  (void)state;
  struct tnode *a;
  a = tnode_start("a", 1, NULL);
  struct wire_push_node pn[3];
  push_node(&pn[0], "x", 2, 1, WIRE_STATE_ALIVE, VSN);
  push_node(&pn[1], "y", 3, 4, WIRE_STATE_ALIVE, VSN);
  push_node(&pn[2], "z", 4, 2, WIRE_STATE_ALIVE, VSN);
  static const uint8_t user[] = {7, 7, 7};
  uint8_t msg[4096];
  size_t len = build_push_pull(msg, sizeof msg, 1, pn, 3, user, sizeof user);
  struct wire_addr from;
  addr_of(2, &from);
  swim_on_stream_accept(a->s, 500, &from);
  struct tstream *ts = new_stream(a, 500, &from, 0);
  for (size_t i = 0; i + 1 < len; i++) {
    swim_on_stream_data(a->s, 500, msg + i, 1);
    assert_int_equal(ts->len, 0);
    assert_false(ts->closed);
  }
  swim_on_stream_data(a->s, 500, msg + len - 1, 1);
  assert_true(ts->closed);
  assert_int_equal(swim_members(a->s, NULL, 0), 4);
  /* the answer echoes Join and, written before the merge as memberlist
   * does, lists only what we knew */
  struct wire_push_pull_header h;
  assert_true(wire_decode_push_pull_header(ts->data + 1, ts->len - 1, &h) > 0);
  assert_true(h.join);
  assert_int_equal(h.nodes, 1);
  assert_int_equal(h.user_state_len, 0);
  /* the same, LZW-compressed as Go peers send it by default */
  push_node(&pn[0], "w", 5, 1, WIRE_STATE_ALIVE, VSN);
  len = build_push_pull(msg, sizeof msg, 0, pn, 1, NULL, 0);
  uint8_t z[4096];
  int zl = wire_compress(z, sizeof z, msg, len);
  assert_true(zl > 0);
  swim_on_stream_accept(a->s, 503, &from);
  ts = new_stream(a, 503, &from, 0);
  swim_on_stream_data(a->s, 503, z, (size_t)zl / 2);
  assert_false(ts->closed);
  swim_on_stream_data(a->s, 503, z + zl / 2, (size_t)zl - (size_t)zl / 2);
  assert_true(ts->closed);
  assert_int_equal(swim_members(a->s, NULL, 0), 5);
  /* a TCP ping is answered with an ack over the stream */
  struct wire_ping p;
  memset(&p, 0, sizeof p);
  p.seq_no = 31;
  snprintf(p.node, sizeof p.node, "a");
  len = (size_t)wire_encode_ping(msg, sizeof msg, &p);
  swim_on_stream_accept(a->s, 501, &from);
  ts = new_stream(a, 501, &from, 0);
  swim_on_stream_data(a->s, 501, msg, 3);
  swim_on_stream_data(a->s, 501, msg + 3, len - 3);
  assert_true(ts->closed);
  struct wire_ack ack;
  assert_int_equal(ts->data[0], WIRE_ACK);
  assert_true(wire_decode_ack(ts->data + 1, ts->len - 1, &ack) > 0);
  assert_int_equal(ack.seq_no, 31);
  /* a stream nobody finishes ends at tcp_timeout */
  swim_on_stream_accept(a->s, 502, &from);
  ts = new_stream(a, 502, &from, 0);
  swim_on_stream_data(a->s, 502, msg, 2);
  struct tnode *nodes[] = {a};
  advance(nodes, 1, 9999);
  assert_false(ts->closed);
  advance(nodes, 1, 1);
  assert_true(ts->closed);
  tnode_stop(a);
}

/* Dead members are gossiped to for gossip_to_the_dead, then only kept
 * (for push/pull and reconnects) until dead_reap_ms, when they are
 * forgotten at the next wrap-around of the probe list. */
static void test_dead_reaped(void **state) {
  (void)state;
  struct tnode *a = tnode_start("a", 1, NULL);
  send_alive(a, "b", 2, 1);
  send_alive(a, "c", 3, 1);
  a->s->cfg.dead_reap_ms = 60000;
  send_accusation(a, WIRE_DEAD, "c", "b", 1, 2);
  struct tnode *nodes[] = {a};
  /* b answers nothing either: keep it alive by hand */
  for (int i = 0; i < 70; i++) {
    advance(nodes, 1, 1000);
    send_alive(a, "b", 2, (uint32_t)i + 2);
  }
  struct swim_member m;
  assert_null(member(a, "c", &m));
  int reaped = 0;
  for (size_t i = 0; i < a->nev; i++)
    reaped += a->ev[i] == SWIM_EV_REAP && strcmp(a->ev_name[i], "c") == 0;
  assert_int_equal(reaped, 1);
  assert_non_null(member(a, "b", &m));
  /* the name is free again, for any address */
  send_alive(a, "c", 9, 1);
  assert_non_null(member(a, "c", &m));
  assert_int_equal(m.addr.ip[3], 9);
  tnode_stop(a);
}

/* The gossip queue: a newer message about X replaces the older, the least
 * sent go first, and each goes out retransmit_limit times. */
static void test_broadcast_queue(void **state) {
  (void)state;
  struct tnode *a;
  a = tnode_start("a", 1, NULL);
  struct swim *s = a->s;
  swim__bq_free(&s->bq);
  swim__bq_init(&s->bq);
  static const uint8_t m1[] = {4, 1}, m2[] = {4, 2, 2}, m3[] = {4, 3, 3, 3};
  swim__bq_push(s, "x", 0, m1, sizeof m1, SWIM__NOTIFY_NONE);
  swim__bq_push(s, "x", 0, m2, sizeof m2, SWIM__NOTIFY_NONE);
  swim__bq_push(s, "x", 1, m3, sizeof m3, SWIM__NOTIFY_NONE); /* user: another key */
  assert_int_equal(s->bq.count, 2);
  const uint8_t *parts[8];
  size_t lens[8];
  /* n = 1: limit 4 */
  size_t sends = 0;
  for (;;) {
    size_t k = swim__bq_take(s, 2, 1400, parts, lens, 8);
    swim__bq_commit(s);
    if (k == 0)
      break;
    sends += k;
  }
  assert_int_equal(sends, 2 * 4);
  /* least sent first: a fresh message goes ahead of one already sent */
  swim__bq_push(s, "x", 0, m1, sizeof m1, SWIM__NOTIFY_NONE);
  swim__bq_take(s, 2, 1400, parts, lens, 8);
  swim__bq_commit(s);
  swim__bq_push(s, "y", 0, m3, sizeof m3, SWIM__NOTIFY_NONE);
  size_t k = swim__bq_take(s, 2, 1400, parts, lens, 1);
  assert_int_equal(k, 1);
  assert_int_equal(lens[0], sizeof m3);
  s->bq.ntaken = 0;
  /* only what fits */
  k = swim__bq_take(s, 2, 5, parts, lens, 8);
  assert_int_equal(k, 0);
  tnode_stop(a);
}

/* The deadline heap hands out timers in order whatever the arm order. */
static int fired_order[64], nfired;
static uint64_t fired_base;
static void note_fire(struct swim *s, struct swim__timer *t) {
  (void)s;
  fired_order[nfired++] = (int)(t->when - fired_base);
}

static void test_timer_heap(void **state) {
  (void)state;
  struct tnode *a;
  a = tnode_start("a", 1, NULL);
  struct swim *s = a->s;
  struct swim__timer t[40];
  uint64_t base = g_now + 10000000;
  fired_base = base;
  for (int i = 0; i < 40; i++) {
    swim__timer_init(&t[i], note_fire);
    swim__timer_arm(s, &t[i], base + (uint64_t)((i * 17) % 40));
  }
  for (int i = 0; i < 40; i += 3)
    swim__timer_cancel(s, &t[i]);
  swim__timer_arm(s, &t[1], base + 999); /* re-arm later */
  nfired = 0;
  g_now = base + 1000; /* the core's own timers re-arm past this */
  swim__timers_run(s, g_now);
  for (int i = 1; i < nfired; i++)
    assert_true(fired_order[i - 1] <= fired_order[i]);
  assert_int_equal(nfired, 40 - 14);
  tnode_stop(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_formulas),
      cmocka_unit_test(test_suspicion_timer),
      cmocka_unit_test(test_refutation),
      cmocka_unit_test(test_corrections),
      cmocka_unit_test(test_awareness),
      cmocka_unit_test(test_indirect_probe),
      cmocka_unit_test(test_dead_from_self_is_left),
      cmocka_unit_test(test_name_conflict),
      cmocka_unit_test(test_rename),
      cmocka_unit_test(test_push_pull_versions),
      cmocka_unit_test(test_encryption),
      cmocka_unit_test(test_leave_intent),
      cmocka_unit_test(test_malformed_input),
      cmocka_unit_test(test_stream_framing),
      cmocka_unit_test(test_dead_reaped),
      cmocka_unit_test(test_broadcast_queue),
      cmocka_unit_test(test_timer_heap),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
