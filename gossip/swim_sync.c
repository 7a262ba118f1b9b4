/* swim_sync.c - anti-entropy: push/pull, join, and reconnecting the dead.
 *
 * Gossip spreads news quickly but can lose it; push/pull repairs that. Two
 * members exchange their full member lists over TCP and merge what they
 * receive (memberlist-wire.md section 6.1): alive entries as alive
 * messages, left as leaves, and dead or suspect entries only as our own
 * suspicion, so one member's stale view never kills a live node outright
 * but does make a wrongly accused one hear of it and refute. Before merging,
 * the protocol versions of both lists are checked (section 8) and an
 * incompatible exchange is aborted.
 *
 * A join is a push/pull with Join=true to each seed, retried with backoff
 * (1 s doubling to 30 s) until one answers. The periodic push/pull goes to
 * one random alive member every push_pull_interval, stretched past 32
 * members. Like serf (section 10), every reconnect_interval we may try a
 * join to one failed member's last address: that is how the two sides of a
 * healed partition, which declared each other dead, find each other again.
 */
#include "swim_internal.h"

#include "../common/errors.h"
#include "../common/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define JOIN_BACKOFF_MIN 1000
#define JOIN_BACKOFF_MAX 30000

static void join_retry(struct swim *s, struct swim__timer *t);
static void push_pull_tick(struct swim *s, struct swim__timer *t);
static void reconnect_tick(struct swim *s, struct swim__timer *t);

int swim__push_pull_build(struct swim *s, int join, uint8_t **out, size_t *len) {
  size_t cap = 64;
  for (size_t i = 0; i < s->n_members; i++) {
    const struct swim__member *m = s->members[i];
    cap += 96 + strlen(m->name) + m->meta_len + WIRE_ADDR_MAX + WIRE_VSN_LEN;
  }
  uint8_t *buf = malloc(cap);
  if (buf == NULL)
    return -ENOMEM;
  struct wire_push_pull_header h = {
      .join = join, .nodes = (uint32_t)s->n_members, .user_state_len = 0};
  int r = wire_encode_push_pull_header(buf, cap, &h);
  if (r < 0)
    goto fail;
  size_t pos = (size_t)r;
  struct wire_push_node *pn = malloc(sizeof *pn);
  if (pn == NULL) {
    r = -ENOMEM;
    goto fail;
  }
  for (size_t i = 0; i < s->n_members; i++) {
    const struct swim__member *m = s->members[i];
    memset(pn, 0, sizeof *pn);
    memcpy(pn->name, m->name, sizeof pn->name);
    pn->addr = m->addr;
    pn->incarnation = m->incarnation;
    pn->state = (int)m->state;
    memcpy(pn->meta, m->meta, m->meta_len);
    pn->meta_len = m->meta_len;
    memcpy(pn->vsn, m->vsn, WIRE_VSN_LEN);
    /* a member heard of without versions is listed without them too */
    pn->vsn_len = m->vsn[0] || m->vsn[1] || m->vsn[2] ? WIRE_VSN_LEN : 0;
    r = wire_encode_push_node(buf + pos, cap - pos, pn);
    if (r < 0) {
      free(pn);
      goto fail;
    }
    pos += (size_t)r;
  }
  free(pn);
  *out = buf;
  *len = pos;
  return 0;
fail:
  LOG_W("swim %s: cannot encode our state: %s", s->cfg.name, rm_strerror(r));
  free(buf);
  return r;
}

struct vrange {
  uint8_t pmin, pmax, dmin, dmax; /* largest minimum, smallest maximum */
};

static void range_add(struct vrange *v, const uint8_t *vsn) {
  if (vsn[0] > v->pmin)
    v->pmin = vsn[0];
  if (vsn[1] < v->pmax)
    v->pmax = vsn[1];
  if (vsn[3] > v->dmin)
    v->dmin = vsn[3];
  if (vsn[4] < v->dmax)
    v->dmax = vsn[4];
}

static int range_ok(const struct vrange *v, uint8_t pcur, uint8_t dcur) {
  return pcur >= v->pmin && pcur <= v->pmax && dcur >= v->dmin && dcur <= v->dmax;
}

int swim__push_pull_merge(struct swim *s, const uint8_t *msg, size_t len,
                          struct swim__stream *reply) {
  struct wire_push_pull_header h;
  if (len < 1 || msg[0] != WIRE_PUSH_PULL)
    return RM_EPARSE;
  int r = wire_decode_push_pull_header(msg + 1, len - 1, &h);
  if (r < 0)
    return RM_EPARSE;
  size_t start = 1 + (size_t)r, pos = start;
  struct wire_push_node *pn = malloc(sizeof *pn);
  if (pn == NULL)
    return -ENOMEM;
  /* pass 1: everything must decode before we answer or believe any of it;
   * memberlist's version check (section 8) runs over both lists */
  struct vrange v = {0, 255, 0, 255};
  for (uint32_t i = 0; i < h.nodes; i++) {
    if ((r = wire_decode_push_node(msg + pos, len - pos, pn)) < 0) {
      free(pn);
      return RM_EPARSE;
    }
    pos += (size_t)r;
    if (pn->state == WIRE_STATE_ALIVE && pn->vsn_len == WIRE_VSN_LEN)
      range_add(&v, pn->vsn);
  }
  if (len - pos < h.user_state_len) {
    free(pn);
    return RM_EPARSE;
  }
  const uint8_t *user = msg + pos;
  if (reply)
    swim__stream_send_state(s, reply, h.join);
  for (size_t i = 0; i < s->n_members; i++)
    if (s->members[i]->state == SWIM_ALIVE)
      range_add(&v, s->members[i]->vsn);
  int ok = 1;
  pos = start;
  for (uint32_t i = 0; i < h.nodes && ok; i++) {
    pos += (size_t)wire_decode_push_node(msg + pos, len - pos, pn);
    uint8_t pcur = pn->vsn_len == WIRE_VSN_LEN ? pn->vsn[2] : 0;
    uint8_t dcur = pn->vsn_len == WIRE_VSN_LEN ? pn->vsn[5] : 0;
    if (!range_ok(&v, pcur, dcur)) {
      LOG_D("swim %s: push/pull entry %s has versions %u/%u outside [%u,%u]/[%u,%u]",
            s->cfg.name, pn->name, pcur, dcur, v.pmin, v.pmax, v.dmin, v.dmax);
      ok = 0;
    }
  }
  for (size_t i = 0; i < s->n_members && ok; i++) {
    const struct swim__member *m = s->members[i];
    if (!range_ok(&v, m->vsn[2], m->vsn[5])) {
      LOG_D("swim %s: member %s has versions %u/%u outside [%u,%u]/[%u,%u]", s->cfg.name,
            m->name, m->vsn[2], m->vsn[5], v.pmin, v.pmax, v.dmin, v.dmax);
      ok = 0;
    }
  }
  if (!ok) {
    free(pn);
    return -EPROTO;
  }
  if (h.user_state_len > 0)
    swim__serf_user_state(s, user, h.user_state_len);
  /* pass 2: merge (section 6.1) */
  pos = start;
  for (uint32_t i = 0; i < h.nodes; i++) {
    pos += (size_t)wire_decode_push_node(msg + pos, len - pos, pn);
    switch (pn->state) {
    case WIRE_STATE_ALIVE: {
      struct wire_alive *a = malloc(sizeof *a);
      if (a == NULL)
        break;
      memset(a, 0, sizeof *a);
      a->incarnation = pn->incarnation;
      memcpy(a->node, pn->name, sizeof a->node);
      a->addr = pn->addr;
      memcpy(a->meta, pn->meta, pn->meta_len);
      a->meta_len = pn->meta_len;
      memcpy(a->vsn, pn->vsn, WIRE_VSN_LEN);
      a->vsn_len = pn->vsn_len;
      swim__on_alive(s, a);
      free(a);
      break;
    }
    case WIRE_STATE_LEFT: {
      struct wire_suspect d;
      memset(&d, 0, sizeof d);
      d.incarnation = pn->incarnation;
      memcpy(d.node, pn->name, sizeof d.node);
      memcpy(d.from, pn->name, sizeof d.from);
      swim__on_dead(s, &d, NULL);
      break;
    }
    case WIRE_STATE_DEAD:
    case WIRE_STATE_SUSPECT: {
      /* someone else's verdict is only a suspicion here */
      struct wire_suspect d;
      memset(&d, 0, sizeof d);
      d.incarnation = pn->incarnation;
      memcpy(d.node, pn->name, sizeof d.node);
      memcpy(d.from, s->cfg.name, sizeof d.from);
      swim__on_suspect(s, &d, NULL);
      break;
    }
    default: break;
    }
  }
  free(pn);
  return 0;
}

/* ---- join ---- */

static void join_attempt(struct swim *s) {
  s->join_outstanding = 0;
  int others = 0;
  for (size_t i = 0; i < s->n_seeds; i++) {
    if (swim__addr_eq(&s->seeds[i], &s->self->addr))
      continue; /* joining ourselves would prove nothing */
    others++;
    if (swim__stream_open(s, SWIM__ST_PUSH_PULL, SWIM__PP_JOIN, &s->seeds[i], 0, NULL,
                          swim__now(s) + s->cfg.tcp_timeout_ms, NULL) == 0)
      s->join_outstanding++;
  }
  if (!others) {
    s->joining = 0; /* we are the seed: the cluster starts here */
    return;
  }
  if (s->join_outstanding == 0)
    swim__join_result(s, SWIM__PP_JOIN, 0);
}

int swim_join(struct swim *s, const struct wire_addr *seeds, size_t n) {
  if (n == 0 || s->leaving)
    return -EINVAL;
  struct wire_addr *copy = malloc(n * sizeof *copy);
  if (copy == NULL)
    return -ENOMEM;
  memcpy(copy, seeds, n * sizeof *copy);
  free(s->seeds);
  s->seeds = copy;
  s->n_seeds = n;
  s->joining = 1;
  s->join_backoff = JOIN_BACKOFF_MIN;
  swim__timer_cancel(s, &s->join_timer);
  join_attempt(s);
  return 0;
}

static void join_retry(struct swim *s, struct swim__timer *t) {
  (void)t;
  if (s->joining && !s->leaving)
    join_attempt(s);
}

void swim__join_result(struct swim *s, enum swim__pp_purpose p, int ok) {
  if (p != SWIM__PP_JOIN || !s->joining)
    return;
  if (ok) {
    s->joining = 0;
    swim__timer_cancel(s, &s->join_timer);
    LOG_D("swim %s: joined, %zu members known", s->cfg.name, s->n_members);
    return;
  }
  if (s->join_outstanding > 0)
    s->join_outstanding--;
  if (s->join_outstanding > 0 || swim__timer_armed(&s->join_timer))
    return;
  LOG_D("swim %s: no seed answered, retrying in %llu ms", s->cfg.name,
        (unsigned long long)s->join_backoff);
  swim__timer_arm(s, &s->join_timer, swim__now(s) + s->join_backoff);
  s->join_backoff *= 2;
  if (s->join_backoff > JOIN_BACKOFF_MAX)
    s->join_backoff = JOIN_BACKOFF_MAX;
}

/* ---- periodic exchanges ---- */

static int pp_ok(const struct swim *s, const struct swim__member *m) {
  (void)s;
  return !m->is_self && m->state == SWIM_ALIVE;
}

static void push_pull_tick(struct swim *s, struct swim__timer *t) {
  (void)t;
  uint64_t now = swim__now(s);
  swim__timer_arm(
      s, &s->push_pull_timer,
      now + swim__push_pull_scale(s->cfg.push_pull_interval_ms, swim__est_nodes(s)));
  struct swim__member *m;
  if (swim__random_members(s, 1, pp_ok, &m) == 1)
    swim__stream_open(s, SWIM__ST_PUSH_PULL, SWIM__PP_PERIODIC, &m->addr, 0, NULL,
                      now + s->cfg.tcp_timeout_ms, NULL);
}

static void reconnect_tick(struct swim *s, struct swim__timer *t) {
  (void)t;
  uint64_t now = swim__now(s);
  swim__timer_arm(s, &s->reconnect_timer, now + s->cfg.reconnect_interval_ms);
  if (s->leaving || s->n_dead == 0)
    return;
  /* serf: with probability failed/alive, so that the cluster as a whole
   * tries each failed member about once per interval */
  double alive = s->n_live ? (double)s->n_live : 1.0;
  double prob = (double)s->n_dead / alive;
  if ((double)swim__rand(s) / 4294967296.0 > prob)
    return;
  size_t pick = swim__rand_below(s, (uint32_t)s->n_dead);
  for (size_t i = 0; i < s->n_members; i++) {
    struct swim__member *m = s->members[i];
    if (m->state != SWIM_DEAD || m->is_self)
      continue;
    if (pick-- == 0) {
      char a[64];
      LOG_D("swim %s: trying to reconnect to %s at %s", s->cfg.name, m->name,
            swim__addr_str(&m->addr, a, sizeof a));
      swim__stream_open(s, SWIM__ST_PUSH_PULL, SWIM__PP_RECONNECT, &m->addr, 0, NULL,
                        now + s->cfg.tcp_timeout_ms, NULL);
      return;
    }
  }
}

void swim__sync_start(struct swim *s) {
  swim__timer_init(&s->join_timer, join_retry);
  swim__timer_init(&s->push_pull_timer, push_pull_tick);
  swim__timer_init(&s->reconnect_timer, reconnect_tick);
  uint64_t now = swim__now(s);
  if (s->cfg.push_pull_interval_ms)
    swim__timer_arm(s, &s->push_pull_timer,
                    now + swim__rand_below(s, (uint32_t)s->cfg.push_pull_interval_ms));
  if (s->cfg.reconnect_interval_ms)
    swim__timer_arm(s, &s->reconnect_timer,
                    now + swim__rand_below(s, (uint32_t)s->cfg.reconnect_interval_ms));
}

void swim__sync_stop(struct swim *s) {
  swim__timer_cancel(s, &s->join_timer);
  swim__timer_cancel(s, &s->push_pull_timer);
  swim__timer_cancel(s, &s->reconnect_timer);
}
