/* swim.c - the SWIM core's public face: life cycle, time, leave, queries.
 *
 * A struct swim is a pure state machine (see swim.h): it owns its member
 * table, timers and buffers, and reaches the world only through the host's
 * struct swim_env. This file creates and frees it, turns swim_tick into the
 * due timers of the one deadline heap, answers queries, and runs the
 * graceful leave: first a serf leave intent, so serf shows us as left
 * rather than failed, and once that has gone out, memberlist's dead message
 * about ourselves (memberlist-wire.md sections 10 and 11.5). The protocol
 * itself lives in the swim_*.c files named in swim_internal.h.
 */
#include "swim_internal.h"

#include "../common/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t our_vsn[WIRE_VSN_LEN] = {1, 5, 2, 2, 5, 5};

void swim_config_lan(struct swim_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->probe_interval_ms = 1000;
  cfg->probe_timeout_ms = 500;
  cfg->indirect_checks = 3;
  cfg->suspicion_mult = 4;
  cfg->suspicion_max_timeout_mult = 6;
  cfg->retransmit_mult = 4;
  cfg->gossip_interval_ms = 200;
  cfg->gossip_nodes = 3;
  cfg->gossip_to_the_dead_ms = 30000;
  cfg->push_pull_interval_ms = 30000;
  cfg->tcp_timeout_ms = 10000;
  cfg->awareness_max_multiplier = 8;
  cfg->udp_buffer_size = 1400;
  cfg->dead_reap_ms = 24ull * 3600 * 1000;
  cfg->tcp_pings = 1;
  cfg->reconnect_interval_ms = 30000;
}

const char *swim_state_str(enum swim_state st) {
  switch (st) {
  case SWIM_ALIVE: return "alive";
  case SWIM_SUSPECT: return "suspect";
  case SWIM_DEAD: return "dead";
  case SWIM_LEFT: return "left";
  }
  return "?";
}

const char *swim_event_str(enum swim_event e) {
  switch (e) {
  case SWIM_EV_JOIN: return "join";
  case SWIM_EV_UPDATE: return "update";
  case SWIM_EV_SUSPECT: return "suspect";
  case SWIM_EV_ALIVE: return "alive";
  case SWIM_EV_DEAD: return "dead";
  case SWIM_EV_LEAVE: return "leave";
  case SWIM_EV_REAP: return "reap";
  }
  return "?";
}

uint64_t swim__now(const struct swim *s) {
  return s->env.now_ms(s->env.ctx);
}

uint32_t swim__rand(struct swim *s) {
  return s->env.random(s->env.ctx);
}

/* The IPv4 address inside an IPv4-mapped IPv6 one, or NULL. */
static const uint8_t *v4_of(const struct wire_addr *a) {
  static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (a->ip_len == 4)
    return a->ip;
  if (a->ip_len == 16 && memcmp(a->ip, prefix, 12) == 0)
    return a->ip + 12;
  return NULL;
}

int swim__addr_eq(const struct wire_addr *a, const struct wire_addr *b) {
  if (a->port != b->port)
    return 0;
  /* a Go peer may name an IPv4 address in its 16-byte mapped form */
  const uint8_t *a4 = v4_of(a), *b4 = v4_of(b);
  if (a4 || b4)
    return a4 && b4 && memcmp(a4, b4, 4) == 0;
  return a->ip_len == b->ip_len && memcmp(a->ip, b->ip, a->ip_len) == 0;
}

const char *swim__addr_str(const struct wire_addr *a, char *buf, size_t len) {
  char ip[INET6_ADDRSTRLEN] = "?";
  const uint8_t *v4 = v4_of(a);
  if (v4)
    inet_ntop(AF_INET, v4, ip, sizeof ip);
  else if (a->ip_len == 16)
    inet_ntop(AF_INET6, a->ip, ip, sizeof ip);
  snprintf(buf, len, a->ip_len == 16 && !v4 ? "[%s]:%u" : "%s:%u", ip, a->port);
  return buf;
}

static int config_ok(const struct swim_config *c, const struct swim_env *env) {
  return c->name[0] != '\0' && strlen(c->name) <= WIRE_NAME_MAX &&
         (c->advertise.ip_len == 4 || c->advertise.ip_len == 16) &&
         c->meta_len <= WIRE_META_MAX && c->probe_interval_ms > 0 &&
         c->probe_timeout_ms > 0 && c->probe_timeout_ms <= c->probe_interval_ms &&
         c->gossip_interval_ms > 0 && c->tcp_timeout_ms > 0 &&
         c->awareness_max_multiplier > 0 && c->retransmit_mult > 0 &&
         c->suspicion_mult > 0 && c->suspicion_max_timeout_mult > 0 &&
         c->udp_buffer_size >= 512 && c->udp_buffer_size <= WIRE_UDP_MAX &&
         c->probe_interval_ms <= UINT32_MAX && c->gossip_interval_ms <= UINT32_MAX &&
         c->push_pull_interval_ms <= UINT32_MAX &&
         c->reconnect_interval_ms <= UINT32_MAX && env && env->now_ms && env->random &&
         env->udp_send && env->stream_open && env->stream_write && env->stream_close;
}

static void leave_step(struct swim *s, struct swim__timer *t);

int swim_new(struct swim **out, const struct swim_config *cfg, const struct swim_env *env,
             const struct swim_callbacks *cb) {
  if (cfg == NULL || !config_ok(cfg, env))
    return -EINVAL;
  struct swim *s = calloc(1, sizeof *s);
  if (s == NULL)
    return -ENOMEM;
  s->cfg = *cfg;
  s->env = *env;
  if (cb)
    s->cb = *cb;
  strmap_init(&s->by_name);
  swim__bq_init(&s->bq);
  swim__timer_init(&s->leave_timer, leave_step);
  s->tx_cap = 2 * cfg->udp_buffer_size + 4096;
  s->tx_a = malloc(s->tx_cap);
  s->tx_b = malloc(s->tx_cap);
  struct swim__member *me = NULL;
  if (s->tx_a && s->tx_b)
    me = swim__member_add(s, cfg->name);
  if (me == NULL) {
    swim_free(s);
    return -ENOMEM;
  }
  me->is_self = 1;
  me->addr = cfg->advertise;
  memcpy(me->meta, cfg->meta, cfg->meta_len);
  me->meta_len = cfg->meta_len;
  memcpy(me->vsn, our_vsn, WIRE_VSN_LEN);
  s->self = me;
  swim__set_state(s, me, SWIM_ALIVE, 1, "start");
  /* our own alive goes out with the first messages, as memberlist does */
  swim__queue_self_alive(s);
  swim__probe_start(s);
  swim__sync_start(s);
  *out = s;
  return 0;
}

void swim_free(struct swim *s) {
  if (s == NULL)
    return;
  swim__probe_stop(s);
  swim__sync_stop(s);
  swim__timer_cancel(s, &s->leave_timer);
  swim__streams_free(s);
  while (s->n_members > 0)
    swim__member_remove(s, s->members[s->n_members - 1]);
  free(s->members);
  strmap_free(&s->by_name);
  swim__bq_free(&s->bq);
  free(s->heap);
  free(s->seeds);
  free(s->tx_a);
  free(s->tx_b);
  free(s->rx_plain);
  free(s->rx_decomp);
  free(s);
}

uint64_t swim_next_deadline(const struct swim *s) {
  return swim__timers_next(s);
}

void swim_tick(struct swim *s) {
  swim__timers_run(s, swim__now(s));
}

int swim_set_meta(struct swim *s, const uint8_t *meta, size_t len) {
  if (len > WIRE_META_MAX || s->leaving)
    return -EINVAL;
  memcpy(s->self->meta, meta, len);
  s->self->meta_len = len;
  s->self->incarnation++;
  swim__queue_self_alive(s);
  return 0;
}

int swim_rename(struct swim *s, const char *name) {
  size_t len = strlen(name);
  if (len == 0 || len > WIRE_NAME_MAX || s->leaving)
    return -EINVAL;
  if (swim__member_find(s, name))
    return -EEXIST;
  struct swim__member *me = s->self;
  char old[WIRE_NAME_MAX + 1];
  memcpy(old, me->name, sizeof old);
  strmap_del(&s->by_name, me->name);
  swim__name_copy(me->name, name);
  if (strmap_put(&s->by_name, me->name, me) != 0) {
    memcpy(me->name, old, sizeof old);
    strmap_put(&s->by_name, me->name, me); /* had room a moment ago */
    return -ENOMEM;
  }
  memset(s->cfg.name, 0, sizeof s->cfg.name);
  memcpy(s->cfg.name, name, len);
  me->incarnation++;
  swim__queue_self_alive(s);
  return 0;
}

/* ---- leave ---- */

static void leave_dead(struct swim *s) {
  s->leave_phase = 2;
  struct wire_suspect d;
  memset(&d, 0, sizeof d);
  d.incarnation = s->self->incarnation;
  memcpy(d.node, s->cfg.name, sizeof d.node);
  memcpy(d.from, s->cfg.name, sizeof d.from);
  swim__on_dead(s, &d, NULL); /* From == Node: left, and queued for gossip */
  if (s->leave_phase == 2)
    swim__timer_arm(s, &s->leave_timer, s->leave_deadline);
}

static void leave_finish(struct swim *s) {
  s->leave_phase = 3;
  swim__timer_cancel(s, &s->leave_timer);
  LOG_D("swim %s: leave done", s->cfg.name);
}

static void leave_step(struct swim *s, struct swim__timer *t) {
  (void)t;
  if (s->leave_phase == 1)
    leave_dead(s);
  else if (s->leave_phase == 2)
    leave_finish(s);
}

void swim__leave_notify(struct swim *s, enum swim__notify n) {
  if (n == SWIM__NOTIFY_LEAVE_INTENT && s->leave_phase == 1)
    leave_dead(s);
  else if (n == SWIM__NOTIFY_LEAVE_DEAD && s->leave_phase == 2)
    leave_finish(s);
}

int swim_leave(struct swim *s, uint64_t timeout_ms) {
  if (s->leaving)
    return 0;
  uint64_t now = swim__now(s);
  s->leaving = 1;
  s->joining = 0;
  swim__timer_cancel(s, &s->join_timer);
  s->leave_deadline = now + timeout_ms;
  if (s->n_live <= 1) {
    /* nobody to tell */
    leave_dead(s);
    leave_finish(s);
    return 0;
  }
  uint8_t msg[WIRE_NAME_MAX + 64];
  int n = swim__serf_leave_intent(msg, sizeof msg, s->serf_ltime + 1, s->cfg.name);
  s->leave_phase = 1;
  if (n > 0)
    swim__bq_push(s, s->cfg.name, 1, msg, (size_t)n, SWIM__NOTIFY_LEAVE_INTENT);
  /* the intent gets at most half the time, the dead message the rest */
  if (s->leave_phase == 1)
    swim__timer_arm(s, &s->leave_timer, now + timeout_ms / 2);
  return 0;
}

int swim_leave_done(const struct swim *s) {
  return s->leave_phase == 3;
}

/* ---- queries ---- */

size_t swim_members(const struct swim *s, struct swim_member *out, size_t max) {
  for (size_t i = 0; i < s->n_members && i < max; i++)
    swim__member_view(s->members[i], &out[i]);
  return s->n_members;
}

size_t swim_num_alive(const struct swim *s) {
  return s->n_live;
}

void swim_get_stats(const struct swim *s, struct swim_stats *st) {
  *st = s->stats;
  st->awareness = s->awareness;
}
