/* swim_member.c - the member table and the rules that change it.
 *
 * This is SWIM's state machine as memberlist runs it (memberlist-wire.md
 * section 11): alive, suspect and dead messages are accepted or ignored by
 * comparing incarnation numbers, news about ourselves is refuted by bumping
 * our incarnation, and a suspected member is declared dead by a Lifeguard
 * timer that starts long and shrinks with every independent confirmation.
 * Every change of a member's state goes through swim__set_state, which
 * keeps the counters, logs the move at debug level and tells the host.
 *
 * Members live in a name map (lookups) and in an array that doubles as the
 * probe list: new members are inserted at a random position and the array
 * is reshuffled at every wrap-around of the probe round robin, which is also
 * when members dead for longer than dead_reap_ms are forgotten.
 */
#include "swim_internal.h"

#include "../common/log.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t our_vsn[WIRE_VSN_LEN] = {1, 5, 2, 2, 5, 5};

/* ---- formulas ---- */

uint64_t swim__suspicion_timeout(unsigned mult, size_t n, uint64_t interval_ms) {
  /* memberlist keeps 3 decimals of the node scale: log10(20) -> 1.301 */
  double scale = fmax(1.0, log10(fmax(1.0, (double)n)));
  uint64_t scale_milli = (uint64_t)(scale * 1000.0);
  return (uint64_t)mult * scale_milli * interval_ms / 1000;
}

uint64_t swim__suspicion_remaining(unsigned confirmations, unsigned k, uint64_t elapsed,
                                   uint64_t min_ms, uint64_t max_ms) {
  double frac = log((double)confirmations + 1.0) / log((double)k + 1.0);
  double raw =
      (double)max_ms / 1000.0 - frac * ((double)max_ms - (double)min_ms) / 1000.0;
  double ms = floor(1000.0 * raw);
  uint64_t timeout = ms < (double)min_ms ? min_ms : (uint64_t)ms;
  return timeout > elapsed ? timeout - elapsed : 0;
}

unsigned swim__retransmit_limit(unsigned mult, size_t n) {
  return mult * (unsigned)ceil(log10((double)n + 1.0));
}

uint64_t swim__push_pull_scale(uint64_t interval, size_t n) {
  if (n <= 32)
    return interval;
  double mult = ceil(log2((double)n) - log2(32.0)) + 1.0;
  return (uint64_t)mult * interval;
}

size_t swim__est_nodes(const struct swim *s) {
  size_t n = s->n_members > s->n_stale ? s->n_members - s->n_stale : 1;
  return n ? n : 1;
}

/* ---- table ---- */

struct swim__member *swim__member_find(const struct swim *s, const char *name) {
  return strmap_get(&s->by_name, name);
}

static void suspect_fired(struct swim *s, struct swim__timer *t);

struct swim__member *swim__member_add(struct swim *s, const char *name) {
  if (s->n_members == s->cap_members) {
    size_t cap = s->cap_members ? s->cap_members * 2 : 16;
    struct swim__member **a = realloc(s->members, cap * sizeof *a);
    if (a == NULL)
      return NULL;
    s->members = a;
    s->cap_members = cap;
  }
  struct swim__member *m = calloc(1, sizeof *m);
  if (m == NULL)
    return NULL;
  swim__name_copy(m->name, name);
  m->is_new = 1;
  m->state = SWIM_DEAD;
  swim__timer_init(&m->suspect_timer, suspect_fired);
  if (strmap_put(&s->by_name, m->name, m) != 0) {
    free(m);
    return NULL;
  }
  /* a random slot in the probe list keeps the detection bound low on
   * average: appending would probe newcomers last */
  size_t n = s->n_members++;
  size_t off = swim__rand_below(s, (uint32_t)n + 1);
  s->members[n] = m;
  m->idx = n;
  if (off != n) {
    s->members[n] = s->members[off];
    s->members[n]->idx = n;
    s->members[off] = m;
    m->idx = off;
  }
  return m;
}

static void suspicion_clear(struct swim *s, struct swim__member *m) {
  swim__timer_cancel(s, &m->suspect_timer);
  if (m->suspicion) {
    free(m->suspicion->confirmed);
    free(m->suspicion);
    m->suspicion = NULL;
  }
}

void swim__member_remove(struct swim *s, struct swim__member *m) {
  suspicion_clear(s, m);
  strmap_del(&s->by_name, m->name);
  if (!m->is_new) {
    if (m->state == SWIM_ALIVE || m->state == SWIM_SUSPECT)
      s->n_live--;
    else if (m->state == SWIM_DEAD)
      s->n_dead--;
    if (m->state == SWIM_SUSPECT)
      s->n_suspect--;
  }
  size_t last = --s->n_members;
  if (m->idx != last) {
    s->members[m->idx] = s->members[last];
    s->members[m->idx]->idx = m->idx;
  }
  free(m);
}

void swim__member_view(const struct swim__member *m, struct swim_member *v) {
  v->name = m->name;
  v->addr = m->addr;
  v->state = m->state;
  v->incarnation = m->incarnation;
  v->meta = m->meta;
  v->meta_len = m->meta_len;
  memcpy(v->vsn, m->vsn, WIRE_VSN_LEN);
  v->is_self = m->is_self;
}

void swim__emit(struct swim *s, enum swim_event ev, const struct swim__member *m) {
  if (m->is_self || s->cb.on_event == NULL)
    return;
  struct swim_member v;
  swim__member_view(m, &v);
  s->cb.on_event(s->cb.ud, ev, &v);
}

static int is_live(enum swim_state st) {
  return st == SWIM_ALIVE || st == SWIM_SUSPECT;
}

void swim__set_state(struct swim *s, struct swim__member *m, enum swim_state st,
                     uint32_t inc, const char *why) {
  int was_new = m->is_new;
  enum swim_state old = m->state;
  uint32_t old_inc = m->incarnation;
  m->incarnation = inc;
  if (!was_new && old == st)
    return;
  m->is_new = 0;
  m->state = st;
  m->state_change = swim__now(s);
  if (!was_new) {
    if (is_live(old))
      s->n_live--;
    else if (old == SWIM_DEAD)
      s->n_dead--;
    if (old == SWIM_SUSPECT)
      s->n_suspect--;
  }
  if (is_live(st))
    s->n_live++;
  else if (st == SWIM_DEAD)
    s->n_dead++;
  if (st == SWIM_SUSPECT)
    s->n_suspect++;
  if (log_enabled(LOG_DEBUG)) {
    char a[64];
    LOG_D("swim %s: member %s (%s) %s -> %s, incarnation %u -> %u: %s", s->cfg.name,
          m->name, swim__addr_str(&m->addr, a, sizeof a),
          was_new ? "new" : swim_state_str(old), swim_state_str(st), old_inc, inc, why);
  }
  enum swim_event ev;
  switch (st) {
  case SWIM_ALIVE: ev = was_new ? SWIM_EV_JOIN : SWIM_EV_ALIVE; break;
  case SWIM_SUSPECT: ev = SWIM_EV_SUSPECT; break;
  case SWIM_DEAD: ev = SWIM_EV_DEAD; break;
  default: ev = SWIM_EV_LEAVE; break;
  }
  if (was_new && st != SWIM_ALIVE)
    return; /* first heard of as already gone: nothing to tell */
  swim__emit(s, ev, m);
}

void swim__awareness_delta(struct swim *s, int delta) {
  int max = (int)s->cfg.awareness_max_multiplier - 1;
  int v = s->awareness + delta;
  if (v < 0)
    v = 0;
  if (v > max)
    v = max;
  if (v != s->awareness)
    LOG_D("swim %s: awareness %d -> %d", s->cfg.name, s->awareness, v);
  s->awareness = v;
}

/* ---- messages ---- */

static void self_alive_msg(const struct swim *s, struct wire_alive *a) {
  memset(a, 0, sizeof *a);
  const struct swim__member *me = s->self;
  a->incarnation = me->incarnation;
  memcpy(a->node, me->name, sizeof a->node);
  a->addr = me->addr;
  memcpy(a->meta, me->meta, me->meta_len);
  a->meta_len = me->meta_len;
  memcpy(a->vsn, our_vsn, WIRE_VSN_LEN);
  a->vsn_len = WIRE_VSN_LEN;
}

void swim__queue_self_alive(struct swim *s) {
  struct wire_alive a;
  self_alive_msg(s, &a);
  swim__queue_alive(s, &a);
}

void swim__refute(struct swim *s, uint32_t accused) {
  struct swim__member *me = s->self;
  uint32_t inc = me->incarnation + 1;
  if (accused >= inc)
    inc = accused + 1;
  LOG_D("swim %s: refuting (accused at incarnation %u), now %u", s->cfg.name, accused,
        inc);
  me->incarnation = inc;
  s->stats.refutations++;
  swim__awareness_delta(s, 1);
  swim__queue_self_alive(s);
}

void swim__on_alive(struct swim *s, const struct wire_alive *a) {
  if (a->node[0] == '\0' || (a->addr.ip_len != 4 && a->addr.ip_len != 16)) {
    s->stats.dropped_malformed++;
    return;
  }
  if (s->leaving && strcmp(a->node, s->cfg.name) == 0)
    return; /* a late alive must not undo our leave */
  if (a->vsn_len >= 3 && (a->vsn[0] == 0 || a->vsn[1] == 0 || a->vsn[0] > a->vsn[1])) {
    LOG_D("swim %s: ignoring alive for %s with protocol versions %u..%u", s->cfg.name,
          a->node, a->vsn[0], a->vsn[1]);
    return;
  }
  struct swim__member *m = swim__member_find(s, a->node);
  int updates_addr = 0;
  if (m == NULL) {
    m = swim__member_add(s, a->node);
    if (m == NULL)
      return;
  } else if (!swim__addr_eq(&m->addr, &a->addr)) {
    /* a name is only taken over from a member that left (memberlist's
     * DeadNodeReclaimTime is 0 in serf: a failed member keeps its name) */
    if (m->state == SWIM_LEFT && !m->is_self) {
      updates_addr = 1;
    } else {
      char x[64], y[64];
      s->stats.name_conflicts++;
      swim__addr_str(&m->addr, x, sizeof x);
      swim__addr_str(&a->addr, y, sizeof y);
      snprintf(s->stats.last_conflict, sizeof s->stats.last_conflict,
               "%.60s at %.60s, claimed from %.60s", a->node, x, y);
      if (m->is_self) {
        s->stats.self_conflicts++;
        s->stats.self_conflict_from = a->addr;
      }
      LOG_D("swim %s: conflicting address for %s: known %s, claimed %s", s->cfg.name,
            a->node, x, y);
      return;
    }
  }
  if (!m->is_new) {
    if (a->incarnation <= m->incarnation && !m->is_self && !updates_addr)
      return;
    if (a->incarnation < m->incarnation && m->is_self)
      return;
  }
  suspicion_clear(s, m);
  if (m->is_self) {
    if (a->incarnation == m->incarnation && a->meta_len == m->meta_len &&
        memcmp(a->meta, m->meta, m->meta_len) == 0 && a->vsn_len == WIRE_VSN_LEN &&
        memcmp(a->vsn, our_vsn, WIRE_VSN_LEN) == 0)
      return;
    swim__refute(s, a->incarnation);
    return;
  }
  swim__queue_alive(s, a);
  int meta_changed =
      m->meta_len != a->meta_len || memcmp(m->meta, a->meta, a->meta_len) != 0;
  int addr_changed = !swim__addr_eq(&m->addr, &a->addr);
  if (a->vsn_len == WIRE_VSN_LEN)
    memcpy(m->vsn, a->vsn, WIRE_VSN_LEN);
  memcpy(m->meta, a->meta, a->meta_len);
  m->meta_len = a->meta_len;
  m->addr = a->addr;
  if (m->is_new || m->state != SWIM_ALIVE)
    swim__set_state(s, m, SWIM_ALIVE, a->incarnation, "alive");
  else {
    m->incarnation = a->incarnation;
    if (meta_changed || addr_changed)
      swim__emit(s, SWIM_EV_UPDATE, m);
  }
}

static void suspect_fired(struct swim *s, struct swim__timer *t) {
  struct swim__member *m = swim__container_of(t, struct swim__member, suspect_timer);
  if (m->state != SWIM_SUSPECT || m->suspicion == NULL ||
      m->suspicion->start != m->state_change)
    return;
  LOG_D("swim %s: suspicion of %s timed out after %llu ms (%u/%u confirmations)",
        s->cfg.name, m->name, (unsigned long long)(swim__now(s) - m->suspicion->start),
        m->suspicion->n, m->suspicion->k);
  struct wire_suspect d;
  memset(&d, 0, sizeof d);
  d.incarnation = m->incarnation;
  memcpy(d.node, m->name, sizeof d.node);
  memcpy(d.from, s->cfg.name, sizeof d.from);
  s->stats.deaths_declared++;
  swim__on_dead(s, &d, NULL);
}

/* Counts a new independent accuser; re-arms the timer. 1 if it counted. */
static int suspicion_confirm(struct swim *s, struct swim__member *m, const char *from) {
  struct swim__suspicion *sp = m->suspicion;
  if (sp->n >= sp->k || strcmp(from, sp->from) == 0)
    return 0;
  for (unsigned i = 0; i < sp->n; i++)
    if (strcmp(sp->confirmed[i], from) == 0)
      return 0;
  swim__name_copy(sp->confirmed[sp->n], from);
  sp->n++;
  uint64_t now = swim__now(s);
  uint64_t elapsed = now - sp->start;
  uint64_t left =
      swim__suspicion_remaining(sp->n, sp->k, elapsed, sp->min_ms, sp->max_ms);
  swim__timer_arm(s, &m->suspect_timer, now + left);
  return 1;
}

static void suspicion_start(struct swim *s, struct swim__member *m, const char *from) {
  struct swim__suspicion *sp = calloc(1, sizeof *sp);
  if (sp == NULL)
    return;
  size_t n = swim__est_nodes(s);
  unsigned k = s->cfg.suspicion_mult > 2 ? s->cfg.suspicion_mult - 2 : 0;
  /* the accused and we cannot confirm: too few others to expect k */
  if (n < (size_t)k + 2)
    k = 0;
  sp->k = k;
  sp->start = m->state_change;
  sp->min_ms =
      swim__suspicion_timeout(s->cfg.suspicion_mult, n, s->cfg.probe_interval_ms);
  sp->max_ms = (uint64_t)s->cfg.suspicion_max_timeout_mult * sp->min_ms;
  swim__name_copy(sp->from, from);
  if (k > 0) {
    sp->confirmed = calloc(k, sizeof *sp->confirmed);
    if (sp->confirmed == NULL) {
      free(sp);
      return;
    }
  }
  m->suspicion = sp;
  swim__timer_arm(s, &m->suspect_timer, sp->start + (k < 1 ? sp->min_ms : sp->max_ms));
}

/* A suspect or dead message older than the alive we hold means its sender
 * missed the refutation: gossip dies out after retransmit_limit sends and
 * can skip a node, which would then declare a live member dead when its
 * suspicion timer runs out. memberlist just ignores the stale message; we
 * also send our newer alive straight back to whoever sent it (an accuser
 * re-gossiping its suspicion, or probing the suspect with the buddy
 * system). Likewise a suspicion of a member that left is answered with
 * its leave. Wire-wise these are ordinary alive / dead messages; at most
 * one per stale message received. */
static void correct_sender(struct swim *s, struct swim__member *m,
                           const struct wire_addr *from) {
  if (from == NULL)
    return;
  /* When a refutation overtakes a suspicion, every node that took the
   * suspicion keeps re-gossiping it for a while; a bystander answers at most
   * one stale copy per gossip interval (the accused answers every one: it is
   * the one the accuser keeps telling). */
  uint64_t now = swim__now(s);
  if (!m->is_self && m->corrected_at && now - m->corrected_at < s->cfg.gossip_interval_ms)
    return;
  m->corrected_at = now;
  uint8_t buf[WIRE_META_MAX + WIRE_NAME_MAX + 128];
  if (m->state == SWIM_LEFT && !m->is_self) {
    /* it missed the leave: tell it, or its probes will call it a failure */
    struct wire_suspect d;
    memset(&d, 0, sizeof d);
    d.incarnation = m->incarnation;
    memcpy(d.node, m->name, sizeof d.node);
    memcpy(d.from, m->name, sizeof d.from);
    int n = wire_encode_dead(buf, sizeof buf, &d);
    if (n > 0) {
      s->stats.corrections++;
      swim__send_one(s, from, NULL, buf, (size_t)n);
    }
    return;
  }
  if (m->state != SWIM_ALIVE)
    return;
  struct wire_alive a;
  if (m->is_self) {
    self_alive_msg(s, &a);
  } else {
    memset(&a, 0, sizeof a);
    a.incarnation = m->incarnation;
    memcpy(a.node, m->name, sizeof a.node);
    a.addr = m->addr;
    memcpy(a.meta, m->meta, m->meta_len);
    a.meta_len = m->meta_len;
    memcpy(a.vsn, m->vsn, WIRE_VSN_LEN);
    a.vsn_len = m->vsn[0] ? WIRE_VSN_LEN : 0;
  }
  int n = wire_encode_alive(buf, sizeof buf, &a);
  if (n > 0) {
    s->stats.corrections++;
    swim__send_one(s, from, NULL, buf, (size_t)n);
  }
}

void swim__on_suspect(struct swim *s, const struct wire_suspect *sm,
                      const struct wire_addr *from) {
  struct swim__member *m = swim__member_find(s, sm->node);
  if (m == NULL || m->is_new)
    return;
  if (sm->incarnation < m->incarnation ||
      (m->state == SWIM_LEFT && sm->incarnation == m->incarnation)) {
    correct_sender(s, m, from);
    return;
  }
  if (m->suspicion) {
    /* new independent accusers shorten the timeout and are passed on, so
     * confirmations flow even when several nodes probe a suspect */
    if (suspicion_confirm(s, m, sm->from))
      swim__queue_suspect(s, sm);
    return;
  }
  if (m->state != SWIM_ALIVE)
    return;
  if (m->is_self) {
    LOG_D("swim %s: suspected by %s", s->cfg.name, sm->from);
    swim__refute(s, sm->incarnation);
    return;
  }
  swim__queue_suspect(s, sm);
  s->stats.suspicions++;
  swim__set_state(s, m, SWIM_SUSPECT, sm->incarnation, sm->from);
  suspicion_start(s, m, sm->from);
}

void swim__on_dead(struct swim *s, const struct wire_suspect *d,
                   const struct wire_addr *from) {
  struct swim__member *m = swim__member_find(s, d->node);
  if (m == NULL || m->is_new)
    return;
  if (d->incarnation < m->incarnation) {
    correct_sender(s, m, from);
    return;
  }
  suspicion_clear(s, m);
  if (m->state == SWIM_DEAD || m->state == SWIM_LEFT)
    return;
  if (m->is_self && !s->leaving) {
    LOG_D("swim %s: declared dead by %s", s->cfg.name, d->from);
    swim__refute(s, d->incarnation);
    return;
  }
  int left = strcmp(d->node, d->from) == 0;
  swim__queue_dead(s, d, m->is_self ? SWIM__NOTIFY_LEAVE_DEAD : SWIM__NOTIFY_NONE);
  swim__set_state(s, m, left ? SWIM_LEFT : SWIM_DEAD, d->incarnation, d->from);
}

/* ---- probe list maintenance ---- */

void swim__members_reset(struct swim *s) {
  uint64_t now = swim__now(s);
  size_t stale = 0;
  for (size_t i = 0; i < s->n_members;) {
    struct swim__member *m = s->members[i];
    if (!m->is_self && (m->state == SWIM_DEAD || m->state == SWIM_LEFT)) {
      uint64_t age = now - m->state_change;
      if (age > s->cfg.dead_reap_ms) {
        LOG_D("swim %s: member %s forgotten after %llu ms %s", s->cfg.name, m->name,
              (unsigned long long)age, swim_state_str(m->state));
        swim__emit(s, SWIM_EV_REAP, m);
        swim__member_remove(s, m);
        continue; /* the last member moved into slot i */
      }
      if (age > s->cfg.gossip_to_the_dead_ms)
        stale++;
    }
    i++;
  }
  s->n_stale = stale;
  for (size_t i = s->n_members; i > 1; i--) {
    size_t j = swim__rand_below(s, (uint32_t)i);
    struct swim__member *t = s->members[i - 1];
    s->members[i - 1] = s->members[j];
    s->members[i - 1]->idx = i - 1;
    s->members[j] = t;
    t->idx = j;
  }
}

size_t swim__random_members(struct swim *s, size_t k,
                            int (*ok)(const struct swim *, const struct swim__member *),
                            struct swim__member **out) {
  size_t got = 0, n = s->n_members;
  /* memberlist's kRandomNodes: 3n random draws at most */
  for (size_t tries = 0; tries < 3 * n && got < k; tries++) {
    struct swim__member *m = s->members[swim__rand_below(s, (uint32_t)n)];
    if (!ok(s, m))
      continue;
    size_t j;
    for (j = 0; j < got; j++)
      if (out[j] == m)
        break;
    if (j == got)
      out[got++] = m;
  }
  return got;
}
