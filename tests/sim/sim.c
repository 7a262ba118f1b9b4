/* sim.c - the simulated network and fake clock behind tests/sim.
 *
 * Two priority queues drive the run: one of in-flight events (datagrams,
 * stream connects, stream bytes, stream closes), ordered by delivery time
 * and then by creation order so equal times stay deterministic, and one of
 * the cores ordered by swim_next_deadline(). The loop always takes the
 * earlier of the two heads, sets the clock there and delivers or ticks.
 * After every call into a core its deadline is re-read and its heap slot
 * fixed, so each step is O(log n) and a 200-node run never scans all nodes.
 *
 * Streams are pairs of endpoints with their own ids. Bytes keep their order
 * (a later write is never delivered before an earlier one), a close follows
 * the last bytes, and an endpoint whose core called stream_close gets
 * nothing more. A connect to a stopped or partitioned node is never
 * answered (the core's own deadline ends it, like a dropped SYN); a connect
 * failing by the loss rate or a blocked node is refused after one latency.
 */
#include "sim.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef SIM_HAVE_RING
#include "ring.h"
#endif

enum ev_kind { EV_UDP, EV_CONNECT, EV_CONNECTED, EV_DATA, EV_CLOSED };

struct ev {
  uint64_t t, order;
  enum ev_kind kind;
  size_t from, to; /* node indexes */
  uint64_t stream; /* endpoint id the event is for (or the opener's) */
  int status;
  size_t len;
  uint8_t data[];
};

struct endpoint {
  size_t node;
  uint64_t peer;   /* the other endpoint's id, 0 while connecting */
  uint64_t last_t; /* latest delivery time scheduled towards the peer */
  int open;        /* the core has not called stream_close */
  size_t target;   /* connect target (opener only) */
};

struct sim {
  uint64_t seed, rng, now, order;
  unsigned lat_min, lat_max;
  double loss, connect_fail;
  struct sim_node **nodes;
  size_t n, cap;
  struct ev **evs;
  size_t nev, capev;
  size_t *heap; /* node indexes ordered by deadline */
  size_t nheap;
  struct endpoint *eps; /* by id; id 0 unused */
  size_t neps, capeps;
  unsigned char *blocked;
  sim_event_cb on_event;
  void *event_ud;
  sim_filter_cb filter;
  void *filter_ud;
};

/* ---- random ---- */

uint64_t sim_rand(struct sim *sim) {
  /* splitmix64: tiny, good enough, and identical everywhere */
  uint64_t z = (sim->rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static double rand01(struct sim *sim) {
  return (double)(sim_rand(sim) >> 11) / 9007199254740992.0;
}

static uint64_t latency(struct sim *sim) {
  return sim->lat_min + sim_rand(sim) % (sim->lat_max - sim->lat_min + 1);
}

/* ---- event heap ---- */

static int ev_less(const struct ev *a, const struct ev *b) {
  return a->t < b->t || (a->t == b->t && a->order < b->order);
}

static void ev_push(struct sim *sim, struct ev *e) {
  if (sim->nev == sim->capev) {
    sim->capev = sim->capev ? sim->capev * 2 : 1024;
    sim->evs = realloc(sim->evs, sim->capev * sizeof *sim->evs);
    if (!sim->evs)
      abort();
  }
  e->order = sim->order++;
  size_t i = sim->nev++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!ev_less(e, sim->evs[p]))
      break;
    sim->evs[i] = sim->evs[p];
    i = p;
  }
  sim->evs[i] = e;
}

static struct ev *ev_pop(struct sim *sim) {
  struct ev *top = sim->evs[0];
  struct ev *last = sim->evs[--sim->nev];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    const struct ev *mv = last;
    if (l < sim->nev && ev_less(sim->evs[l], mv)) {
      m = l;
      mv = sim->evs[l];
    }
    if (r < sim->nev && ev_less(sim->evs[r], mv))
      m = r;
    if (m == i)
      break;
    sim->evs[i] = sim->evs[m];
    i = m;
  }
  if (sim->nev > 0)
    sim->evs[i] = last;
  return top;
}

static struct ev *ev_new(struct sim *sim, enum ev_kind kind, uint64_t t, size_t len) {
  struct ev *e = malloc(sizeof *e + len);
  if (!e)
    abort();
  memset(e, 0, sizeof *e);
  e->kind = kind;
  e->t = t;
  e->len = len;
  (void)sim;
  return e;
}

/* ---- core heap ---- */

static uint64_t key(const struct sim *sim, size_t idx) {
  const struct sim_node *n = sim->nodes[idx];
  return n->stopped ? UINT64_MAX : swim_next_deadline(n->swim);
}

static void heap_swap(struct sim *sim, size_t a, size_t b) {
  size_t t = sim->heap[a];
  sim->heap[a] = sim->heap[b];
  sim->heap[b] = t;
  sim->nodes[sim->heap[a]]->heap_idx = a;
  sim->nodes[sim->heap[b]]->heap_idx = b;
}

static void heap_fix(struct sim *sim, size_t i) {
  uint64_t k = key(sim, sim->heap[i]);
  while (i > 0 && key(sim, sim->heap[(i - 1) / 2]) > k) {
    heap_swap(sim, i, (i - 1) / 2);
    i = (i - 1) / 2;
  }
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    uint64_t mk = k;
    if (l < sim->nheap && key(sim, sim->heap[l]) < mk) {
      m = l;
      mk = key(sim, sim->heap[l]);
    }
    if (r < sim->nheap && key(sim, sim->heap[r]) < mk)
      m = r;
    if (m == i)
      break;
    heap_swap(sim, i, m);
    i = m;
  }
}

void sim_poke(struct sim *sim, size_t idx) {
  heap_fix(sim, sim->nodes[idx]->heap_idx);
}

/* ---- env ---- */

static uint64_t env_now(void *ctx) {
  return ((struct sim_node *)ctx)->sim->now;
}

static uint32_t env_random(void *ctx) {
  return (uint32_t)(sim_rand(((struct sim_node *)ctx)->sim) >> 32);
}

static int node_of_addr(const struct sim *sim, const struct wire_addr *a, size_t *idx) {
  if (a->ip_len != 4 || a->ip[0] != 10 || a->ip[1] != 0 || a->port != 7946)
    return 0;
  size_t i = (size_t)a->ip[2] << 8 | a->ip[3];
  if (i >= sim->n)
    return 0;
  *idx = i;
  return 1;
}

/* Can a packet go from a to b right now? */
static int path_up(const struct sim *sim, size_t a, size_t b) {
  const struct sim_node *x = sim->nodes[a], *y = sim->nodes[b];
  return !x->stopped && !y->stopped && x->group == y->group;
}

static int env_udp_send(void *ctx, const struct wire_addr *to, const uint8_t *buf,
                        size_t len) {
  struct sim_node *n = ctx;
  struct sim *sim = n->sim;
  size_t dst;
  n->udp_bytes += len;
  if (!node_of_addr(sim, to, &dst))
    return 0; /* nobody there: lost like any datagram */
  if (!path_up(sim, n->idx, dst) || rand01(sim) < sim->loss)
    return 0;
  if (sim->filter && sim->filter(sim, n->idx, dst, buf, len, sim->filter_ud))
    return 0;
  struct ev *e = ev_new(sim, EV_UDP, sim->now + latency(sim), len);
  e->from = n->idx;
  e->to = dst;
  memcpy(e->data, buf, len);
  ev_push(sim, e);
  return 0;
}

static uint64_t ep_new(struct sim *sim, size_t node) {
  if (sim->neps == sim->capeps) {
    sim->capeps = sim->capeps ? sim->capeps * 2 : 1024;
    sim->eps = realloc(sim->eps, sim->capeps * sizeof *sim->eps);
    if (!sim->eps)
      abort();
    if (sim->neps == 0)
      sim->neps = 1; /* id 0 means none */
  }
  uint64_t id = sim->neps++;
  memset(&sim->eps[id], 0, sizeof sim->eps[id]);
  sim->eps[id].node = node;
  sim->eps[id].open = 1;
  return id;
}

static int env_stream_open(void *ctx, const struct wire_addr *to, uint64_t *id) {
  struct sim_node *n = ctx;
  struct sim *sim = n->sim;
  size_t dst;
  if (!node_of_addr(sim, to, &dst))
    return -EHOSTUNREACH;
  *id = ep_new(sim, n->idx);
  sim->eps[*id].target = dst;
  struct ev *e = ev_new(sim, EV_CONNECT, sim->now + latency(sim), 0);
  e->from = n->idx;
  e->to = dst;
  e->stream = *id;
  ev_push(sim, e);
  return 0;
}

static int env_stream_write(void *ctx, uint64_t id, const uint8_t *buf, size_t len) {
  struct sim_node *n = ctx;
  struct sim *sim = n->sim;
  if (id == 0 || id >= sim->neps || !sim->eps[id].open || sim->eps[id].peer == 0)
    return -ENOTCONN;
  struct endpoint *ep = &sim->eps[id];
  n->tcp_bytes += len;
  uint64_t t = sim->now + latency(sim);
  if (t < ep->last_t)
    t = ep->last_t; /* TCP keeps order */
  ep->last_t = t;
  struct ev *e = ev_new(sim, EV_DATA, t, len);
  e->from = n->idx;
  e->to = sim->eps[ep->peer].node;
  e->stream = ep->peer;
  memcpy(e->data, buf, len);
  ev_push(sim, e);
  return 0;
}

static void env_stream_close(void *ctx, uint64_t id) {
  struct sim_node *n = ctx;
  struct sim *sim = n->sim;
  if (id == 0 || id >= sim->neps || !sim->eps[id].open)
    return;
  struct endpoint *ep = &sim->eps[id];
  ep->open = 0;
  if (ep->peer && sim->eps[ep->peer].open) {
    uint64_t t = sim->now + latency(sim);
    if (t < ep->last_t)
      t = ep->last_t;
    struct ev *e = ev_new(sim, EV_CLOSED, t, 0);
    e->from = n->idx;
    e->to = sim->eps[ep->peer].node;
    e->stream = ep->peer;
    ev_push(sim, e);
  }
}

static void on_event(void *ud, enum swim_event ev, const struct swim_member *m) {
  struct sim_node *n = ud;
  if (n->sim->on_event)
    n->sim->on_event(n->sim, n, ev, m, n->sim->event_ud);
}

/* ---- delivery ---- */

static void deliver(struct sim *sim, struct ev *e) {
  struct sim_node *to = sim->nodes[e->to];
  struct wire_addr from_addr = sim->nodes[e->from]->cfg.advertise;
  switch (e->kind) {
  case EV_UDP:
    if (path_up(sim, e->from, e->to))
      swim_on_udp(to->swim, &from_addr, e->data, e->len);
    break;
  case EV_CONNECT: {
    struct endpoint *op = &sim->eps[e->stream];
    if (!op->open)
      break; /* the opener gave up already */
    if (!path_up(sim, e->from, e->to))
      break; /* a SYN into the void: the opener's deadline ends it */
    if (sim->blocked[e->to] || rand01(sim) < sim->connect_fail) {
      struct ev *r = ev_new(sim, EV_CONNECTED, sim->now + latency(sim), 0);
      r->from = e->to;
      r->to = e->from;
      r->stream = e->stream;
      r->status = -ECONNREFUSED;
      ev_push(sim, r);
      break;
    }
    uint64_t acc = ep_new(sim, e->to);
    op = &sim->eps[e->stream]; /* ep_new may move the array */
    op->peer = acc;
    sim->eps[acc].peer = e->stream;
    swim_on_stream_accept(to->swim, acc, &from_addr);
    struct ev *r = ev_new(sim, EV_CONNECTED, sim->now + latency(sim), 0);
    r->from = e->to;
    r->to = e->from;
    r->stream = e->stream;
    ev_push(sim, r);
    break;
  }
  case EV_CONNECTED:
    if (sim->eps[e->stream].open && !to->stopped)
      swim_on_stream_connected(to->swim, e->stream, e->status);
    break;
  case EV_DATA:
    if (sim->eps[e->stream].open && !to->stopped)
      swim_on_stream_data(to->swim, e->stream, e->data, e->len);
    break;
  case EV_CLOSED:
    if (sim->eps[e->stream].open && !to->stopped)
      swim_on_stream_closed(to->swim, e->stream, 0);
    break;
  }
  sim_poke(sim, e->to);
}

void sim_run_until(struct sim *sim, uint64_t t) {
  for (;;) {
    uint64_t te = sim->nev ? sim->evs[0]->t : UINT64_MAX;
    uint64_t tc = sim->nheap ? key(sim, sim->heap[0]) : UINT64_MAX;
    uint64_t next = te < tc ? te : tc;
    if (next > t)
      break;
    if (next > sim->now)
      sim->now = next;
    if (te <= tc) {
      struct ev *e = ev_pop(sim);
      if (!sim->nodes[e->to]->stopped)
        deliver(sim, e);
      free(e);
    } else {
      size_t idx = sim->heap[0];
      swim_tick(sim->nodes[idx]->swim);
      heap_fix(sim, 0);
    }
  }
  if (t > sim->now)
    sim->now = t;
}

void sim_run_for(struct sim *sim, uint64_t ms) {
  sim_run_until(sim, sim->now + ms);
}

/* ---- setup ---- */

struct sim *sim_new(uint64_t seed, const char *label) {
  struct sim *sim = calloc(1, sizeof *sim);
  if (!sim)
    abort();
  const char *env = getenv("SIM_SEED");
  if (env && *env)
    seed = strtoull(env, NULL, 0);
  sim->seed = seed;
  sim->rng = seed;
  sim->now = 1000000; /* not 0: catches code that treats 0 as "never" */
  sim->lat_min = 1;
  sim->lat_max = 5;
  printf("[%s] seed %llu (replay with SIM_SEED=%llu)\n", label, (unsigned long long)seed,
         (unsigned long long)seed);
  fflush(stdout);
  return sim;
}

void sim_free(struct sim *sim) {
  for (size_t i = 0; i < sim->n; i++) {
    swim_free(sim->nodes[i]->swim);
    free(sim->nodes[i]);
  }
  while (sim->nev)
    free(ev_pop(sim));
  free(sim->evs);
  free(sim->nodes);
  free(sim->heap);
  free(sim->eps);
  free(sim->blocked);
  free(sim);
}

uint64_t sim_seed(const struct sim *sim) {
  return sim->seed;
}
uint64_t sim_now(const struct sim *sim) {
  return sim->now;
}
size_t sim_count(const struct sim *sim) {
  return sim->n;
}
struct sim_node *sim_node(struct sim *sim, size_t idx) {
  return sim->nodes[idx];
}

void sim_set_latency(struct sim *sim, unsigned min_ms, unsigned max_ms) {
  sim->lat_min = min_ms;
  sim->lat_max = max_ms < min_ms ? min_ms : max_ms;
}

void sim_set_loss(struct sim *sim, double udp_loss, double connect_fail) {
  sim->loss = udp_loss;
  sim->connect_fail = connect_fail;
}

void sim_set_filter(struct sim *sim, sim_filter_cb fn, void *ud) {
  sim->filter = fn;
  sim->filter_ud = ud;
}

void sim_set_event_cb(struct sim *sim, sim_event_cb fn, void *ud) {
  sim->on_event = fn;
  sim->event_ud = ud;
}

void sim_block_streams(struct sim *sim, size_t idx, int blocked) {
  sim->blocked[idx] = (unsigned char)blocked;
}

struct sim_node *sim_add_node(struct sim *sim,
                              void (*tweak)(struct swim_config *cfg, void *ud),
                              void *ud) {
  if (sim->n == sim->cap) {
    sim->cap = sim->cap ? sim->cap * 2 : 64;
    sim->nodes = realloc(sim->nodes, sim->cap * sizeof *sim->nodes);
    sim->heap = realloc(sim->heap, sim->cap * sizeof *sim->heap);
    sim->blocked = realloc(sim->blocked, sim->cap);
    if (!sim->nodes || !sim->heap || !sim->blocked)
      abort();
  }
  struct sim_node *n = calloc(1, sizeof *n);
  if (!n)
    abort();
  n->sim = sim;
  n->idx = sim->n;
  snprintf(n->name, sizeof n->name, "n%03zu", n->idx);
  swim_config_lan(&n->cfg);
  snprintf(n->cfg.name, sizeof n->cfg.name, "%s", n->name);
  n->cfg.advertise.ip_len = 4;
  n->cfg.advertise.ip[0] = 10;
  n->cfg.advertise.ip[1] = 0;
  n->cfg.advertise.ip[2] = (uint8_t)(n->idx >> 8);
  n->cfg.advertise.ip[3] = (uint8_t)n->idx;
  n->cfg.advertise.port = 7946;
  if (tweak)
    tweak(&n->cfg, ud);
  struct swim_env env = {
      .ctx = n,
      .now_ms = env_now,
      .random = env_random,
      .udp_send = env_udp_send,
      .stream_open = env_stream_open,
      .stream_write = env_stream_write,
      .stream_close = env_stream_close,
  };
  struct swim_callbacks cb = {.ud = n, .on_event = on_event};
  sim->nodes[sim->n] = n;
  sim->blocked[sim->n] = 0;
  sim->n++;
  if (swim_new(&n->swim, &n->cfg, &env, &cb) != 0) {
    fprintf(stderr, "sim: swim_new failed for %s\n", n->name);
    abort();
  }
  n->heap_idx = sim->nheap;
  sim->heap[sim->nheap++] = n->idx;
  sim_poke(sim, n->idx);
  return n;
}

void sim_stop_node(struct sim *sim, size_t idx) {
  sim->nodes[idx]->stopped = 1;
  sim_poke(sim, idx);
}

void sim_set_group(struct sim *sim, size_t idx, int group) {
  sim->nodes[idx]->group = group;
}

/* ---- checks ---- */

static struct swim_member *members_of(struct sim_node *n, size_t *count) {
  size_t total = swim_members(n->swim, NULL, 0);
  struct swim_member *v = calloc(total + 1, sizeof *v);
  if (!v)
    abort();
  *count = swim_members(n->swim, v, total);
  return v;
}

int sim_all_see_running_alive(struct sim *sim) {
  size_t running = 0;
  for (size_t i = 0; i < sim->n; i++)
    running += !sim->nodes[i]->stopped;
  for (size_t i = 0; i < sim->n; i++) {
    struct sim_node *n = sim->nodes[i];
    if (n->stopped)
      continue;
    size_t cnt, alive = 0;
    struct swim_member *v = members_of(n, &cnt);
    int ok = 1;
    for (size_t j = 0; j < cnt && ok; j++) {
      size_t idx;
      int live = v[j].state == SWIM_ALIVE;
      if (v[j].state == SWIM_SUSPECT) {
        ok = 0;
      } else if (live) {
        alive++;
        if (!node_of_addr(sim, &v[j].addr, &idx) || sim->nodes[idx]->stopped)
          ok = 0;
      }
    }
    free(v);
    if (!ok || alive != running)
      return 0;
  }
  return 1;
}

void sim_print_views(struct sim *sim, size_t max_lines) {
  size_t lines = 0;
  for (size_t i = 0; i < sim->n && lines < max_lines; i++) {
    struct sim_node *n = sim->nodes[i];
    if (n->stopped)
      continue;
    size_t cnt;
    struct swim_member *v = members_of(n, &cnt);
    unsigned char *seen = calloc(sim->n, 1);
    for (size_t j = 0; j < cnt; j++) {
      size_t idx;
      if (!node_of_addr(sim, &v[j].addr, &idx))
        continue;
      seen[idx] = 1;
      int want_alive = !sim->nodes[idx]->stopped;
      if ((v[j].state == SWIM_ALIVE) != want_alive && lines++ < max_lines)
        printf("  %s sees %s %s (incarnation %u)\n", n->name, v[j].name,
               swim_state_str(v[j].state), v[j].incarnation);
    }
    for (size_t j = 0; j < sim->n; j++)
      if (!seen[j] && !sim->nodes[j]->stopped && lines++ < max_lines)
        printf("  %s does not know %s\n", n->name, sim->nodes[j]->name);
    free(seen);
    free(v);
  }
}

static int cmp_member(const void *a, const void *b) {
  return strcmp(((const struct swim_member *)a)->name,
                ((const struct swim_member *)b)->name);
}

int sim_agree(struct sim *sim) {
  struct swim_member *ref = NULL;
  size_t nref = 0, refidx = 0;
  int ok = 1;
  for (size_t i = 0; i < sim->n && ok; i++) {
    struct sim_node *n = sim->nodes[i];
    if (n->stopped)
      continue;
    size_t cnt;
    struct swim_member *v = members_of(n, &cnt);
    qsort(v, cnt, sizeof *v, cmp_member);
    if (ref == NULL) {
      ref = v;
      nref = cnt;
      refidx = i;
      continue;
    }
    if (cnt != nref) {
      printf("  disagree: %s sees %zu members, %s sees %zu\n", n->name, cnt,
             sim->nodes[refidx]->name, nref);
      ok = 0;
    }
    for (size_t j = 0; j < cnt && ok; j++) {
      if (strcmp(v[j].name, ref[j].name) != 0 || v[j].state != ref[j].state) {
        printf("  disagree: %s sees %s %s, %s sees %s %s\n", n->name, v[j].name,
               swim_state_str(v[j].state), sim->nodes[refidx]->name, ref[j].name,
               swim_state_str(ref[j].state));
        ok = 0;
      }
    }
    free(v);
  }
#ifdef SIM_HAVE_RING
  /* the ring each node would route with, from its own member list */
  size_t keys = 1000, owners_ref[1000];
  int have_ref = 0;
  for (size_t i = 0; i < sim->n && ok; i++) {
    struct sim_node *n = sim->nodes[i];
    if (n->stopped)
      continue;
    size_t cnt, na = 0;
    struct swim_member *v = members_of(n, &cnt);
    qsort(v, cnt, sizeof *v, cmp_member);
    const char **names = calloc(cnt + 1, sizeof *names);
    unsigned *weights = calloc(cnt + 1, sizeof *weights);
    /* suspects stay in the ring until declared dead (no churn on one
     * missed probe); shuffled insertion order: the ring must not depend
     * on it */
    for (size_t j = 0; j < cnt; j++)
      if (v[j].state == SWIM_ALIVE || v[j].state == SWIM_SUSPECT) {
        names[na] = v[j].name;
        weights[na++] = 1;
      }
    for (size_t j = na; j > 1; j--) {
      size_t k = sim_rand(sim) % j;
      const char *t = names[j - 1];
      names[j - 1] = names[k];
      names[k] = t;
    }
    struct ring *r;
    if (ring_new(&r, 64) != 0 || ring_set(r, names, weights, na) != 0) {
      printf("  ring: cannot build for %s\n", n->name);
      ok = 0;
    } else {
      for (size_t k = 0; k < keys && ok; k++) {
        char key[32];
        size_t owner;
        int kl = snprintf(key, sizeof key, "sha256:%016zx", k * 2654435761u);
        if (ring_lookup(r, key, (size_t)kl, &owner, 1) != 1) {
          ok = 0;
          break;
        }
        /* compare by name: indexes are per ring_set call */
        const char *name = names[owner];
        if (!have_ref) {
          size_t j;
          for (j = 0; j < nref; j++)
            if (strcmp(ref[j].name, name) == 0)
              break;
          owners_ref[k] = j;
        } else if (owners_ref[k] >= nref || strcmp(ref[owners_ref[k]].name, name) != 0) {
          printf("  ring: %s routes key %zu to %s, others to %s\n", n->name, k, name,
                 owners_ref[k] < nref ? ref[owners_ref[k]].name : "?");
          ok = 0;
        }
      }
      have_ref = 1;
      ring_free(r);
    }
    free(names);
    free(weights);
    free(v);
  }
#endif
  free(ref);
  return ok;
}
