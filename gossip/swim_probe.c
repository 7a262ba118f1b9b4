/* swim_probe.c - failure detection and the periodic gossip round.
 *
 * Each protocol period we ping the next member of the shuffled round robin
 * (memberlist-wire.md section 11.1). A suspect target gets its suspicion in
 * the same datagram so it can refute at once. Without an ack after
 * probe_timeout we ask indirect_checks random members to ping it for us
 * (with nacks from helpers that speak protocol 4+, which tell our own
 * health apart from the target's) and try a TCP ping in parallel. Any ack
 * before the end of the period, which Lifeguard stretches by our awareness
 * score, counts; otherwise the target is suspected.
 *
 * The same file answers pings, runs indirect probes for others (relaying
 * the target's ack, or a nack after probe_timeout), and sends the gossip
 * round: every gossip_interval, queued broadcasts go to gossip_nodes random
 * members, including the recently dead so they can hear of it and refute.
 */
#include "swim_internal.h"

#include "../common/log.h"

#include <stdlib.h>
#include <string.h>

#define MAX_HELPERS 16
#define MAX_GOSSIP_TARGETS 64
#define MAX_RELAYS 1024 /* indirect probes we run for others at once */

static void probe_period(struct swim *s, struct swim__timer *t);
static void probe_timed_out(struct swim *s, struct swim__timer *t);
static void gossip_round(struct swim *s, struct swim__timer *t);

int swim__encode_ping(struct swim *s, uint32_t seq, const char *node, uint8_t *out,
                      size_t cap) {
  struct wire_ping p;
  memset(&p, 0, sizeof p);
  p.seq_no = seq;
  swim__name_copy(p.node, node);
  p.has_source = 1;
  p.source = s->self->addr;
  memcpy(p.source_node, s->self->name, sizeof p.source_node);
  return wire_encode_ping(out, cap, &p);
}

void swim__probe_start(struct swim *s) {
  swim__timer_init(&s->probe_timer, probe_period);
  swim__timer_init(&s->probe_timeout_timer, probe_timed_out);
  swim__timer_init(&s->gossip_timer, gossip_round);
  uint64_t now = swim__now(s);
  /* a random stagger keeps the cores of one cluster out of lock step */
  swim__timer_arm(s, &s->probe_timer,
                  now + swim__rand_below(s, (uint32_t)s->cfg.probe_interval_ms));
  swim__timer_arm(s, &s->gossip_timer,
                  now + swim__rand_below(s, (uint32_t)s->cfg.gossip_interval_ms));
}

static void relay_free(struct swim *s, struct swim__relay *r) {
  for (struct swim__relay **pp = &s->relays; *pp; pp = &(*pp)->next) {
    if (*pp == r) {
      *pp = r->next;
      break;
    }
  }
  swim__timer_cancel(s, &r->timer);
  free(r);
}

void swim__relays_free(struct swim *s) {
  while (s->relays)
    relay_free(s, s->relays);
}

void swim__probe_stop(struct swim *s) {
  swim__timer_cancel(s, &s->probe_timer);
  swim__timer_cancel(s, &s->probe_timeout_timer);
  swim__timer_cancel(s, &s->gossip_timer);
  s->probe.active = 0;
  s->probe.target = NULL;
  swim__relays_free(s);
}

/* Ends the current probe: a probe without any ack suspects its target. */
static void probe_finish(struct swim *s) {
  struct swim__probe *p = &s->probe;
  if (!p->active)
    return;
  p->active = 0;
  swim__timer_cancel(s, &s->probe_timeout_timer);
  if (p->tcp_open) {
    p->tcp_open = 0;
    swim__stream_close(s, p->tcp_stream);
  }
  struct swim__member *m = p->target;
  p->target = NULL;
  if (p->acked)
    return;
  /* Lifeguard: missing nacks mean our own links are in trouble; without
   * helpers that nack, any failed probe counts against us */
  int delta;
  if (p->expected_nacks > 0)
    delta = p->nacks < p->expected_nacks ? (int)(p->expected_nacks - p->nacks) : 0;
  else
    delta = 1;
  swim__awareness_delta(s, delta);
  s->stats.probe_failures++;
  LOG_D("swim %s: probe of %s failed (%u/%u nacks)", s->cfg.name, m->name, p->nacks,
        p->expected_nacks);
  struct wire_suspect sm;
  memset(&sm, 0, sizeof sm);
  sm.incarnation = p->target_inc;
  memcpy(sm.node, m->name, sizeof sm.node);
  memcpy(sm.from, s->cfg.name, sizeof sm.from);
  swim__on_suspect(s, &sm, NULL);
}

static struct swim__member *next_target(struct swim *s) {
  for (size_t checked = 0; checked <= s->n_members; checked++) {
    if (s->probe_index >= s->n_members) {
      swim__members_reset(s);
      s->probe_index = 0;
    }
    struct swim__member *m = s->members[s->probe_index++];
    if (m->is_self || m->state == SWIM_DEAD || m->state == SWIM_LEFT)
      continue;
    return m;
  }
  return NULL;
}

static void probe_period(struct swim *s, struct swim__timer *t) {
  (void)t;
  probe_finish(s);
  uint64_t now = swim__now(s);
  struct swim__member *m = next_target(s);
  if (m == NULL) {
    swim__timer_arm(s, &s->probe_timer, now + s->cfg.probe_interval_ms);
    return;
  }
  struct swim__probe *p = &s->probe;
  memset(p, 0, sizeof *p);
  p->active = 1;
  p->seq = ++s->seq;
  p->target = m;
  p->target_inc = m->incarnation;
  p->start = now;
  p->deadline = now + s->cfg.probe_interval_ms * (uint64_t)(s->awareness + 1);
  s->stats.probes++;

  /* a suspect target also gets its suspicion in the same datagram (the
   * buddy system, added by swim__send_udp) so it can refute at once */
  uint8_t ping[WIRE_NAME_MAX * 2 + 96];
  int r = swim__encode_ping(s, p->seq, m->name, ping, sizeof ping);
  if (r > 0)
    swim__send_one(s, &m->addr, m, ping, (size_t)r);
  swim__timer_arm(s, &s->probe_timeout_timer, now + s->cfg.probe_timeout_ms);
  swim__timer_arm(s, &s->probe_timer, p->deadline);
}

static int helper_ok(const struct swim *s, const struct swim__member *m) {
  return !m->is_self && m->state == SWIM_ALIVE && m != s->probe.target;
}

static void probe_timed_out(struct swim *s, struct swim__timer *t) {
  (void)t;
  struct swim__probe *p = &s->probe;
  if (!p->active || p->acked)
    return;
  struct swim__member *m = p->target;
  struct swim__member *helpers[MAX_HELPERS];
  size_t k = s->cfg.indirect_checks < MAX_HELPERS ? s->cfg.indirect_checks : MAX_HELPERS;
  size_t nh = swim__random_members(s, k, helper_ok, helpers);
  struct wire_indirect_ping ind;
  memset(&ind, 0, sizeof ind);
  ind.seq_no = p->seq;
  ind.target = m->addr;
  memcpy(ind.node, m->name, sizeof ind.node);
  ind.has_source = 1;
  ind.source = s->self->addr;
  memcpy(ind.source_node, s->self->name, sizeof ind.source_node);
  for (size_t i = 0; i < nh; i++) {
    uint8_t buf[WIRE_NAME_MAX * 2 + 160];
    /* only protocol 4+ helpers know to nack */
    ind.nack = helpers[i]->vsn[1] >= 4;
    if (ind.nack)
      p->expected_nacks++;
    int r = wire_encode_indirect_ping(buf, sizeof buf, &ind);
    if (r > 0)
      swim__send_one(s, &helpers[i]->addr, helpers[i], buf, (size_t)r);
  }
  /* TCP gets through where UDP is filtered or lossy: a peer reachable only
   * that way is not flapped to dead */
  if (s->cfg.tcp_pings && m->vsn[1] >= 3 && !p->tcp_open) {
    uint64_t id;
    if (swim__stream_open(s, SWIM__ST_PING, SWIM__PP_PERIODIC, &m->addr, p->seq, m->name,
                          p->deadline, &id) == 0) {
      p->tcp_stream = id;
      p->tcp_open = 1;
    }
  }
}

void swim__on_ack(struct swim *s, uint32_t seq) {
  struct swim__probe *p = &s->probe;
  if (p->active && !p->acked && seq == p->seq) {
    p->acked = 1;
    swim__awareness_delta(s, -1);
    swim__timer_cancel(s, &s->probe_timeout_timer);
    if (p->tcp_open) {
      p->tcp_open = 0;
      swim__stream_close(s, p->tcp_stream);
    }
    return;
  }
  for (struct swim__relay *r = s->relays; r; r = r->next) {
    if (r->seq != seq)
      continue;
    struct wire_ack ack;
    memset(&ack, 0, sizeof ack);
    ack.seq_no = r->orig_seq;
    uint8_t buf[64];
    int n = wire_encode_ack(buf, sizeof buf, &ack);
    if (n > 0)
      swim__send_one(s, &r->requester, NULL, buf, (size_t)n);
    relay_free(s, r);
    return;
  }
}

void swim__on_nack(struct swim *s, uint32_t seq) {
  struct swim__probe *p = &s->probe;
  if (p->active && seq == p->seq)
    p->nacks++;
}

static const struct wire_addr *reply_addr(const struct wire_addr *from, int has_source,
                                          const struct wire_addr *source) {
  if (has_source && source->port != 0 && (source->ip_len == 4 || source->ip_len == 16))
    return source;
  return from;
}

void swim__on_ping(struct swim *s, const struct wire_addr *from,
                   const struct wire_ping *p) {
  if (p->node[0] != '\0' && strcmp(p->node, s->cfg.name) != 0) {
    LOG_D("swim %s: ping for %s ignored", s->cfg.name, p->node);
    return;
  }
  struct wire_ack ack;
  memset(&ack, 0, sizeof ack);
  ack.seq_no = p->seq_no;
  uint8_t buf[64];
  int n = wire_encode_ack(buf, sizeof buf, &ack);
  if (n <= 0)
    return;
  const struct swim__member *dst =
      p->has_source ? swim__member_find(s, p->source_node) : NULL;
  swim__send_one(s, reply_addr(from, p->has_source, &p->source), dst, buf, (size_t)n);
}

static void relay_expired(struct swim *s, struct swim__timer *t) {
  struct swim__relay *r = swim__container_of(t, struct swim__relay, timer);
  if (r->nack) {
    struct wire_nack nack = {.seq_no = r->orig_seq};
    uint8_t buf[32];
    int n = wire_encode_nack(buf, sizeof buf, &nack);
    if (n > 0)
      swim__send_one(s, &r->requester, NULL, buf, (size_t)n);
  }
  relay_free(s, r);
}

void swim__on_indirect(struct swim *s, const struct wire_addr *from,
                       const struct wire_indirect_ping *ind) {
  if (ind->target.ip_len != 4 && ind->target.ip_len != 16) {
    s->stats.dropped_malformed++;
    return;
  }
  size_t nrelays = 0;
  for (struct swim__relay *r = s->relays; r; r = r->next)
    nrelays++;
  if (nrelays >= MAX_RELAYS)
    return;
  struct swim__relay *r = calloc(1, sizeof *r);
  if (r == NULL)
    return;
  r->seq = ++s->seq;
  r->orig_seq = ind->seq_no;
  r->requester = *reply_addr(from, ind->has_source, &ind->source);
  r->nack = ind->nack;
  swim__timer_init(&r->timer, relay_expired);
  r->next = s->relays;
  s->relays = r;
  swim__timer_arm(s, &r->timer, swim__now(s) + s->cfg.probe_timeout_ms);
  uint8_t buf[WIRE_NAME_MAX * 2 + 96];
  int n = swim__encode_ping(s, r->seq, ind->node, buf, sizeof buf);
  if (n > 0)
    swim__send_one(s, &ind->target, swim__member_find(s, ind->node), buf, (size_t)n);
}

static int gossip_ok(const struct swim *s, const struct swim__member *m) {
  if (m->is_self)
    return 0;
  switch (m->state) {
  case SWIM_ALIVE:
  case SWIM_SUSPECT: return 1;
  case SWIM_DEAD: return swim__now(s) - m->state_change <= s->cfg.gossip_to_the_dead_ms;
  default: return 0;
  }
}

static void gossip_round(struct swim *s, struct swim__timer *t) {
  (void)t;
  swim__timer_arm(s, &s->gossip_timer, swim__now(s) + s->cfg.gossip_interval_ms);
  /* with nothing queued a round is only worth it for the suspects we hold:
   * swim__send_udp hands a suspect its suspicion (refute, or correct us) */
  if (s->bq.count == 0 && s->n_suspect == 0)
    return;
  struct swim__member *to[MAX_GOSSIP_TARGETS];
  size_t k =
      s->cfg.gossip_nodes < MAX_GOSSIP_TARGETS ? s->cfg.gossip_nodes : MAX_GOSSIP_TARGETS;
  size_t n = swim__random_members(s, k, gossip_ok, to);
  for (size_t i = 0; i < n; i++)
    swim__send_udp(s, &to[i]->addr, to[i], NULL, NULL, 0);
}
