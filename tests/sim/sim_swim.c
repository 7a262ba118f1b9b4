/* sim_swim.c - SWIM scenarios on the simulated network (ctest label sim).
 *
 * Each scenario builds a cluster of real cores on tests/sim's fake network,
 * does one thing to it (join, stop a node, lose packets, partition, make a
 * live node look dead) and asserts timing bounds on both sides, derived in
 * the comments from the protocol parameters (memberlist-wire.md sections 9
 * and 11), then that every running node agrees on membership and on the
 * ring. `figures` measures and prints (does not assert) convergence,
 * detection time and bandwidth. Usage: sim_swim <scenario>|all.
 */
#include "sim.h"
#include "swim_internal.h"

#include "../../common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXN 256

static int failures;

#define CHECK(cond, ...)                                                                 \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      printf("  FAIL %s:%d: ", __FILE__, __LINE__);                                      \
      printf(__VA_ARGS__);                                                               \
      printf("\n");                                                                      \
      failures++;                                                                        \
    }                                                                                    \
  } while (0)

/* ---- what the cores report ---- */

struct rec {
  uint64_t dead_at[MAXN][MAXN]; /* [observer][target], first DEAD event */
  uint64_t first_suspect[MAXN]; /* by target */
  uint64_t first_dead[MAXN];    /* by target */
  size_t dead_events, suspect_events;
  size_t dead_about[MAXN];
  /* scenario 5: unblock the victim once it is suspected */
  int victim;
  int victim_blocked;
};

static struct rec rec;

static double secs(uint64_t ms) {
  return (double)ms / 1000.0;
}

static size_t idx_of(const char *name) {
  return (size_t)strtoul(name + 1, NULL, 10);
}

static void on_event(struct sim *sim, struct sim_node *obs, enum swim_event ev,
                     const struct swim_member *m, void *ud) {
  (void)ud;
  size_t t = idx_of(m->name);
  if (t >= MAXN)
    return;
  if (getenv("SIM_DEBUG"))
    printf("  %10.3f %s: %s %s (incarnation %u)\n", secs(sim_now(sim)), obs->name,
           swim_event_str(ev), m->name, m->incarnation);
  if (ev == SWIM_EV_SUSPECT) {
    rec.suspect_events++;
    if (!rec.first_suspect[t])
      rec.first_suspect[t] = sim_now(sim);
    if ((int)t == rec.victim && rec.victim_blocked) {
      rec.victim_blocked = 0;
      sim_block_streams(sim, t, 0);
    }
  } else if (ev == SWIM_EV_DEAD) {
    rec.dead_events++;
    rec.dead_about[t]++;
    if (!rec.first_dead[t])
      rec.first_dead[t] = sim_now(sim);
    if (!rec.dead_at[obs->idx][t])
      rec.dead_at[obs->idx][t] = sim_now(sim);
  }
}

static int drop_victim(struct sim *sim, size_t from, size_t to, const uint8_t *buf,
                       size_t len, void *ud) {
  (void)sim, (void)to, (void)buf, (void)len, (void)ud;
  return rec.victim_blocked && (int)from == rec.victim;
}

static struct sim *new_sim(uint64_t seed, const char *label) {
  memset(&rec, 0, sizeof rec);
  rec.victim = -1;
  struct sim *sim = sim_new(seed, label);
  sim_set_event_cb(sim, on_event, NULL);
  sim_set_filter(sim, drop_victim, NULL);
  return sim;
}

/* n nodes; 1..n-1 join through node 0 at an even pace over spread_ms.
 * Returns the time of the last join. */
static uint64_t make_cluster(struct sim *sim, size_t n, uint64_t spread_ms) {
  for (size_t i = 0; i < n; i++)
    sim_add_node(sim, NULL, NULL);
  struct wire_addr seed = sim_node(sim, 0)->cfg.advertise;
  for (size_t i = 1; i < n; i++) {
    sim_run_for(sim, spread_ms / (n - 1));
    int r = swim_join(sim_node(sim, i)->swim, &seed, 1);
    CHECK(r == 0, "swim_join: %d", r);
    sim_poke(sim, i);
  }
  return sim_now(sim);
}

/* Runs until every running node sees exactly the running nodes alive, or
 * deadline. Returns the time it happened, 0 if it did not. */
static uint64_t run_until_converged(struct sim *sim, uint64_t deadline) {
  uint64_t start = sim_now(sim);
  while (sim_now(sim) < deadline) {
    if (sim_all_see_running_alive(sim))
      return sim_now(sim);
    sim_run_for(sim, 50);
    if (getenv("SIM_DEBUG") && (sim_now(sim) - start) % 1000 == 0) {
      printf(" t+%.1f s:\n", secs(sim_now(sim) - start));
      sim_print_views(sim, 10);
    }
  }
  return sim_all_see_running_alive(sim) ? sim_now(sim) : 0;
}

/* Our own cores never send anything another core drops. */
static void check_no_drops(struct sim *sim, const char *what) {
  uint64_t mal = 0, crc = 0, big = 0, auth = 0, rej = 0;
  for (size_t i = 0; i < sim_count(sim); i++) {
    struct swim_stats st;
    swim_get_stats(sim_node(sim, i)->swim, &st);
    mal += st.dropped_malformed;
    crc += st.dropped_crc;
    big += st.dropped_oversize;
    auth += st.dropped_auth;
    rej += st.push_pull_rejected;
  }
  CHECK(mal + crc + big + auth + rej == 0,
        "%s: dropped %llu malformed, %llu crc, %llu oversize, %llu auth, %llu push/pull",
        what, (unsigned long long)mal, (unsigned long long)crc, (unsigned long long)big,
        (unsigned long long)auth, (unsigned long long)rej);
}

static void check_agree(struct sim *sim, const char *what) {
  check_no_drops(sim, what);
  int ok = sim_agree(sim);
  CHECK(ok, "%s: running nodes disagree on membership or ring", what);
#ifdef SIM_HAVE_RING
  const char *ring = " and on the owners of 1000 keys in their rings";
#else
  const char *ring = " (gossip/ring.c missing: rings not compared)";
#endif
  if (ok)
    printf("  %s: all running nodes agree on members and states%s\n", what, ring);
}

/* ---- bounds from the parameters ---- */

static uint64_t susp_min(size_t n) {
  struct swim_config c;
  swim_config_lan(&c);
  return swim__suspicion_timeout(c.suspicion_mult, n, c.probe_interval_ms);
}

static uint64_t susp_max(size_t n) {
  struct swim_config c;
  swim_config_lan(&c);
  return c.suspicion_max_timeout_mult * susp_min(n);
}

/* ---- 1: 50 nodes join through one seed ---- */

/* Convergence bound. A joiner's alive is re-gossiped by every node that
 * accepts it, retransmit_limit(50) = 8 times each, to 3 random members
 * every 200 ms: an epidemic that reaches all 50 in about log3(50) ~ 4
 * rounds (< 1 s). It can die out just short of a node (every holder spends
 * its 8 sends within ~3 rounds); push/pull repairs that: every node syncs
 * with a random member within its first staggered push/pull interval
 * (< 30 s from its start) and again one scaled interval later (60 s at
 * n = 50, section 9). Upper bound: 30 + 60 = 90 s after the last join.
 * Lower bound: the last joiner cannot know the others before its join
 * round trip, 2 x the minimum latency. */
static uint64_t scenario_join(uint64_t seed, size_t n, int quiet) {
  char label[64];
  snprintf(label, sizeof label, "join%zu", n);
  struct sim *sim = new_sim(seed, label);
  uint64_t last = make_cluster(sim, n, 1000);
  uint64_t bound = 30000 + swim__push_pull_scale(30000, n);
  uint64_t t = run_until_converged(sim, last + bound);
  uint64_t took = t ? t - last : 0;
  CHECK(t != 0, "%zu nodes did not converge within %.0f s of the last join", n,
        secs(bound));
  CHECK(t == 0 || took >= 2,
        "converged %llu ms after the last join: faster than a round trip",
        (unsigned long long)took);
  if (!quiet)
    printf("  %zu nodes: all see %zu alive %.2f s after the last join (bound %.0f s)\n",
           n, n, secs(took), secs(bound));
  CHECK(rec.dead_events == 0, "%zu dead events while joining", rec.dead_events);
  sim_run_for(sim, 2000);
  if (!quiet)
    check_agree(sim, "join");
  else
    CHECK(sim_agree(sim), "join: disagreement");
  sim_free(sim);
  return took;
}

/* ---- 2: a node stops ---- */

struct detect {
  uint64_t first, all; /* after the stop */
};

/* Lower bound: a node is declared dead only when a suspicion timer runs
 * out, never shorter than suspicion min (4 x log10(50) x 1 s = 6.792 s at
 * n = 50, section 9), and the first suspicion needs a failed probe, which
 * waits at least probe_timeout (0.5 s): dead >= stop + 7.292 s.
 * Upper bound, in two steps: someone probes X within 2(n-1) probe periods
 * (each running node walks a shuffled list holding X once; X may be first
 * in one round and last in the next), and from that first suspicion every
 * node declares X dead within suspicion max (6 x min = 40.752 s) plus the
 * few gossip rounds (5 s allowed) the suspicion needs to reach it. */
static struct detect scenario_failure(uint64_t seed, size_t n, int quiet) {
  struct detect d = {0, 0};
  char label[64];
  snprintf(label, sizeof label, "failure%zu", n);
  struct sim *sim = new_sim(seed, label);
  uint64_t last = make_cluster(sim, n, 1000);
  CHECK(run_until_converged(sim, last + 90000), "no convergence before the failure");
  sim_run_for(sim, 5000);
  size_t x = 1 + sim_rand(sim) % (n - 1);
  uint64_t t0 = sim_now(sim);
  sim_stop_node(sim, x);
  struct swim_config c;
  swim_config_lan(&c);
  uint64_t lower = c.probe_timeout_ms + susp_min(n);
  uint64_t probe_bound = 2 * (n - 1) * c.probe_interval_ms;
  uint64_t spread = susp_max(n) + 5000;
  uint64_t end = t0 + probe_bound + spread;
  for (;;) {
    size_t seen = 0;
    for (size_t i = 0; i < n; i++)
      seen += i != x && rec.dead_at[i][x];
    if (seen == n - 1 || sim_now(sim) >= end)
      break;
    sim_run_for(sim, 50);
  }
  uint64_t first = UINT64_MAX, lastd = 0;
  size_t seen = 0;
  for (size_t i = 0; i < n; i++) {
    if (i == x || !rec.dead_at[i][x])
      continue;
    seen++;
    if (rec.dead_at[i][x] < first)
      first = rec.dead_at[i][x];
    if (rec.dead_at[i][x] > lastd)
      lastd = rec.dead_at[i][x];
  }
  CHECK(seen == n - 1, "only %zu of %zu nodes declared %s dead", seen, n - 1,
        sim_node(sim, x)->name);
  CHECK(rec.first_suspect[x] && rec.first_suspect[x] >= t0 + c.probe_timeout_ms,
        "first suspicion %lld ms after the stop, before probe_timeout",
        (long long)(rec.first_suspect[x] - t0));
  CHECK(rec.first_suspect[x] && rec.first_suspect[x] <= t0 + probe_bound,
        "nobody suspected the stopped node within 2(n-1) probe periods");
  if (seen) {
    CHECK(first >= t0 + lower, "declared dead %.3f s after the stop, before %.3f s",
          secs(first - t0), secs(lower));
    CHECK(lastd <= rec.first_suspect[x] + spread,
          "last node declared dead %.3f s after the first suspicion (bound %.3f s)",
          secs(lastd - rec.first_suspect[x]), secs(spread));
    d.first = first - t0;
    d.all = lastd - t0;
  }
  if (!quiet)
    printf("  %zu nodes, %s stopped: first suspicion %.3f s, first dead %.3f s, all %zu "
           "dead %.3f s (bounds: dead >= %.3f s, first suspicion <= %.0f s, all <= first "
           "suspicion + %.3f s)\n",
           n, sim_node(sim, x)->name, secs(rec.first_suspect[x] - t0), secs(d.first),
           seen, secs(d.all), secs(lower), secs(probe_bound), secs(spread));
  /* no one else died on the way */
  CHECK(rec.dead_events == n - 1, "%zu dead events, expected %zu", rec.dead_events,
        n - 1);
  sim_run_for(sim, 10000);
  if (!quiet)
    check_agree(sim, "failure");
  else
    CHECK(sim_agree(sim), "failure: disagreement");
  sim_free(sim);
  return d;
}

/* ---- 3: 10 % loss for 10 minutes ---- */

/* No bound to derive but zero: with 10 % loss a probe fails only if the
 * direct ping or ack is lost (19 %), all 3 indirect paths of 4 datagrams
 * each fail (34 % each) and the TCP ping cannot connect (10 %): ~8e-4 per
 * probe, ~24 false suspicions in 30000 probes. Each is refuted by the
 * suspect within a few gossip rounds, long before suspicion max (40.8 s;
 * with 2 independent confirmations still >= min 6.8 s). So: no healthy
 * node may ever be declared dead. */
static size_t scenario_loss(uint64_t seed, uint64_t minutes, int quiet) {
  size_t n = 50;
  struct sim *sim = new_sim(seed, "loss");
  uint64_t last = make_cluster(sim, n, 1000);
  CHECK(run_until_converged(sim, last + 90000), "no convergence before the loss");
  sim_set_loss(sim, 0.10, 0.10);
  sim_run_for(sim, minutes * 60000);
  uint64_t refutes = 0, failed = 0, corrections = 0;
  for (size_t i = 0; i < n; i++) {
    struct swim_stats st;
    swim_get_stats(sim_node(sim, i)->swim, &st);
    refutes += st.refutations;
    failed += st.probe_failures;
    corrections += st.corrections;
  }
  if (!quiet)
    printf(
        "  %zu nodes, %llu min at 10%% UDP loss and 10%% connect failures: %llu failed "
        "probes, %zu suspect events, %llu refutations, %llu stale accusations "
        "corrected, false-positive deaths: %zu\n",
        n, (unsigned long long)minutes, (unsigned long long)failed, rec.suspect_events,
        (unsigned long long)refutes, (unsigned long long)corrections, rec.dead_events);
  CHECK(rec.dead_events == 0, "%zu healthy nodes declared dead under loss",
        rec.dead_events);
  sim_set_loss(sim, 0, 0);
  CHECK(run_until_converged(sim, sim_now(sim) + 90000), "no convergence after the loss");
  sim_run_for(sim, 5000);
  if (!quiet)
    check_agree(sim, "loss");
  else
    CHECK(sim_agree(sim), "loss: disagreement");
  size_t fp = rec.dead_events;
  sim_free(sim);
  return fp;
}

/* ---- 4: partition and heal ---- */

/* The halves are kept apart for 90 s: longer than 2(n-1) probe periods
 * (38 s) plus suspicion max at n = 20 (6 x 5.2 s = 31.2 s), so each half
 * has declared the other dead (checked). After the heal, each side still
 * holds the other dead at the old incarnations, so alive gossip alone
 * cannot revive anyone; the reconnect loop (every reconnect_interval, 30 s,
 * each node tries a failed member with probability failed/alive = 1 here)
 * does a join push/pull across. The first exchange makes both ends suspect
 * their own side from the other's list, so those nodes refute with higher
 * incarnations; the next exchange carries the new incarnations across,
 * where they beat the dead records, and gossip does the rest. Upper bound:
 * two reconnect intervals plus a push/pull round for stragglers (30 s):
 * 90 s. Lower bound: at least one round trip (2 x min latency). */
static uint64_t scenario_partition(uint64_t seed) {
  size_t n = 20;
  struct sim *sim = new_sim(seed, "partition");
  uint64_t last = make_cluster(sim, n, 1000);
  CHECK(run_until_converged(sim, last + 90000), "no convergence before the partition");
  sim_run_for(sim, 5000);
  for (size_t i = n / 2; i < n; i++)
    sim_set_group(sim, i, 1);
  uint64_t t0 = sim_now(sim);
  sim_run_for(sim, 90000);
  size_t missing = 0;
  for (size_t i = 0; i < n; i++)
    for (size_t j = 0; j < n; j++)
      if ((i < n / 2) != (j < n / 2) && !rec.dead_at[i][j])
        missing++;
  CHECK(missing == 0, "%zu cross-partition pairs not declared dead after 90 s", missing);
  size_t deaths = rec.dead_events;
  for (size_t i = 0; i < n; i++)
    sim_set_group(sim, i, 0);
  uint64_t heal = sim_now(sim);
  uint64_t t = run_until_converged(sim, heal + 90000);
  CHECK(t != 0, "not healed within 90 s");
  CHECK(t == 0 || t - heal >= 2, "healed faster than a round trip");
  printf(
      "  %zu nodes split %zu/%zu for %.0f s (%zu dead events, %zu expected): all alive "
      "again %.2f s after the heal (bound 90 s)\n",
      n, n / 2, n - n / 2, secs(heal - t0), deaths, n * n / 2, t ? secs(t - heal) : -1.0);
  CHECK(deaths == n * n / 2, "dead events during the partition: %zu", deaths);
  sim_run_for(sim, 5000);
  check_agree(sim, "partition");
  sim_free(sim);
  return t ? t - heal : 0;
}

/* ---- 5: a live node gets suspected and refutes ---- */

/* The victim's datagrams and TCP connects are dropped until the first
 * suspicion of it, then delivered normally. Lower bound for that first
 * suspicion: a failed probe waits at least probe_timeout. It must then
 * hear of the suspicion (buddy ping or gossip) and refute with a higher
 * incarnation well within suspicion min (4 s at n = 8; the timer starts
 * at max 24 s and needs 2 independent confirmations to come down to min),
 * so nobody may declare it dead. */
static void scenario_refute(uint64_t seed) {
  size_t n = 8;
  struct sim *sim = new_sim(seed, "refute");
  uint64_t last = make_cluster(sim, n, 500);
  CHECK(run_until_converged(sim, last + 90000), "no convergence");
  sim_run_for(sim, 3000);
  size_t v = 1 + sim_rand(sim) % (n - 1);
  struct swim_config c;
  swim_config_lan(&c);
  uint64_t t0 = sim_now(sim);
  rec.victim = (int)v;
  rec.victim_blocked = 1;
  sim_block_streams(sim, v, 1);
  while (rec.victim_blocked && sim_now(sim) < t0 + 60000)
    sim_run_for(sim, 10);
  CHECK(!rec.victim_blocked, "victim never suspected");
  uint64_t ts = rec.first_suspect[v];
  CHECK(ts >= t0 + c.probe_timeout_ms,
        "suspected %lld ms after the block, before probe_timeout", (long long)(ts - t0));
  sim_run_for(sim, 60000);
  struct swim_stats st;
  swim_get_stats(sim_node(sim, v)->swim, &st);
  CHECK(st.refutations >= 1, "victim never refuted");
  CHECK(rec.dead_about[v] == 0, "victim declared dead %zu times", rec.dead_about[v]);
  CHECK(rec.dead_events == 0, "%zu dead events", rec.dead_events);
  uint32_t min_inc = UINT32_MAX;
  for (size_t i = 0; i < n; i++) {
    struct swim_member ms[16];
    size_t cnt = swim_members(sim_node(sim, i)->swim, ms, 16);
    for (size_t j = 0; j < cnt && j < 16; j++)
      if (strcmp(ms[j].name, sim_node(sim, v)->name) == 0) {
        CHECK(ms[j].state == SWIM_ALIVE, "%s sees the victim %s", sim_node(sim, i)->name,
              swim_state_str(ms[j].state));
        if (ms[j].incarnation < min_inc)
          min_inc = ms[j].incarnation;
      }
  }
  CHECK(min_inc >= 2, "victim's incarnation seen as %u", min_inc);
  printf("  %zu nodes, %s silenced: suspected %.3f s later (>= %.3f s), refuted %llu "
         "time(s), "
         "everyone sees it alive at incarnation >= %u, never dead\n",
         n, sim_node(sim, v)->name, secs(ts - t0), secs(c.probe_timeout_ms),
         (unsigned long long)st.refutations, min_inc);
  check_agree(sim, "refute");
  sim_free(sim);
}

/* ---- 7: graceful leave (scenario 6, agreement and rings, ends each one) ---- */

/* A node leaves with a 5 s timeout: serf's leave intent first, then the
 * dead message about itself, each sent retransmit_limit(20) = 8 times
 * before the next step, then the process goes away. Everyone else must
 * record it as left, never as failed: bound, the leave timeout (5 s) plus
 * a few gossip rounds for the last copies (5 s). Lower bound: the dead
 * message waits for the intent, which needs at least ceil(8 / 3) gossip
 * rounds of 3 sends (probes and acks may carry it sooner, so only one
 * latency is asserted). */
static void scenario_leave(uint64_t seed) {
  size_t n = 20;
  struct sim *sim = new_sim(seed, "leave");
  uint64_t last = make_cluster(sim, n, 1000);
  CHECK(run_until_converged(sim, last + 90000), "no convergence");
  sim_run_for(sim, 3000);
  size_t x = 1 + sim_rand(sim) % (n - 1);
  struct sim_node *nx = sim_node(sim, x);
  uint64_t t0 = sim_now(sim);
  CHECK(swim_leave(nx->swim, 5000) == 0, "swim_leave failed");
  sim_poke(sim, x);
  while (!swim_leave_done(nx->swim) && sim_now(sim) < t0 + 5000)
    sim_run_for(sim, 10);
  uint64_t done = sim_now(sim);
  CHECK(swim_leave_done(nx->swim), "leave not done within its timeout");
  sim_stop_node(sim, x);
  sim_run_for(sim, 60000);
  size_t left = 0;
  for (size_t i = 0; i < n; i++) {
    if (i == x)
      continue;
    struct swim_member ms[32];
    size_t cnt = swim_members(sim_node(sim, i)->swim, ms, 32);
    for (size_t j = 0; j < cnt && j < 32; j++)
      if (strcmp(ms[j].name, nx->name) == 0)
        left += ms[j].state == SWIM_LEFT;
  }
  CHECK(left == n - 1, "%zu of %zu nodes see the leaver as left", left, n - 1);
  CHECK(rec.dead_events == 0, "%zu dead events", rec.dead_events);
  printf("  %zu nodes, %s leaves: leave done after %.3f s (bound 5 s), %zu/%zu record it "
         "as left, %zu as failed\n",
         n, nx->name, secs(done - t0), left, n - 1, rec.dead_events);
  check_agree(sim, "leave");
  sim_free(sim);
}

/* ---- figures ---- */

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static void med_max(uint64_t *v, size_t n, double *med, double *max) {
  qsort(v, n, sizeof *v, cmp_u64);
  *med = secs(v[n / 2]);
  *max = secs(v[n - 1]);
}

/* Bytes each node sends per second once the cluster is quiet: probes,
 * acks, gossip rounds (empty queues send nothing) and push/pull. */
static void figure_bandwidth(uint64_t seed) {
  size_t n = 50;
  struct sim *sim = new_sim(seed, "bandwidth");
  uint64_t last = make_cluster(sim, n, 1000);
  CHECK(run_until_converged(sim, last + 90000), "no convergence");
  sim_run_for(sim, 120000);
  uint64_t udp0 = 0, tcp0 = 0;
  for (size_t i = 0; i < n; i++) {
    udp0 += sim_node(sim, i)->udp_bytes;
    tcp0 += sim_node(sim, i)->tcp_bytes;
  }
  uint64_t win = 300000;
  sim_run_for(sim, win);
  uint64_t udp1 = 0, tcp1 = 0;
  for (size_t i = 0; i < n; i++) {
    udp1 += sim_node(sim, i)->udp_bytes;
    tcp1 += sim_node(sim, i)->tcp_bytes;
  }
  double per = 1.0 / ((double)n * secs(win));
  printf(
      "  bandwidth, %zu nodes steady state: %.0f B/s UDP + %.0f B/s TCP = %.0f B/s sent "
      "per node\n",
      n, (double)(udp1 - udp0) * per, (double)(tcp1 - tcp0) * per,
      (double)(udp1 - udp0 + tcp1 - tcp0) * per);
  sim_free(sim);
}

static void figures(uint64_t seed) {
  enum { SEEDS = 5 };
  uint64_t v[SEEDS];
  double med, max;
  size_t sizes[2] = {50, 200};
  for (size_t k = 0; k < 2; k++) {
    for (size_t i = 0; i < SEEDS; i++)
      v[i] = scenario_join(seed + i, sizes[k], 1);
    med_max(v, SEEDS, &med, &max);
    printf("  convergence, %zu nodes joining through one seed within 1 s: median %.2f s, "
           "worst %.2f s (%d seeds)\n",
           sizes[k], med, max, SEEDS);
  }
  uint64_t f[SEEDS], a[SEEDS];
  for (size_t k = 0; k < 2; k++) {
    for (size_t i = 0; i < SEEDS; i++) {
      struct detect d = scenario_failure(seed + 100 + 10 * k + i, sizes[k], 1);
      f[i] = d.first;
      a[i] = d.all;
    }
    med_max(f, SEEDS, &med, &max);
    printf("  failure detection, %zu nodes, one stopped: first dead median %.2f s, worst "
           "%.2f s;",
           sizes[k], med, max);
    med_max(a, SEEDS, &med, &max);
    printf(" all nodes median %.2f s, worst %.2f s\n", med, max);
  }
  size_t fp = 0;
  for (size_t i = 0; i < SEEDS; i++)
    fp += scenario_loss(seed + 300 + i, 10, 1);
  printf("  false-positive deaths, 50 nodes, 10 min at 10%% loss: %zu in %d runs\n", fp,
         SEEDS);
  figure_bandwidth(seed + 200);
}

int main(int argc, char **argv) {
  const char *which = argc > 1 ? argv[1] : "all";
  /* SIM_DEBUG=1 prints every membership event with its simulated time;
   * SIM_LOG=debug adds the cores' own debug log (stderr) */
  enum log_level lvl;
  if (getenv("SIM_LOG") && log_level_parse(getenv("SIM_LOG"), &lvl) == 0)
    log_set_level(lvl);
  int all = strcmp(which, "all") == 0;
  int ran = 0;
  if (all || strcmp(which, "join") == 0) {
    printf("scenario 1: 50 nodes join through one seed\n");
    scenario_join(1001, 50, 0);
    ran++;
  }
  if (all || strcmp(which, "failure") == 0) {
    printf("scenario 2: one node stops answering\n");
    scenario_failure(2002, 50, 0);
    ran++;
  }
  if (all || strcmp(which, "loss") == 0) {
    printf("scenario 3: 10%% packet loss for 10 minutes\n");
    scenario_loss(3003, 10, 0);
    ran++;
  }
  if (all || strcmp(which, "partition") == 0) {
    printf("scenario 4: partition into two halves, then heal\n");
    scenario_partition(4004);
    ran++;
  }
  if (all || strcmp(which, "refute") == 0) {
    printf("scenario 5: a live node is suspected and refutes\n");
    scenario_refute(5005);
    ran++;
  }
  if (all || strcmp(which, "leave") == 0) {
    printf("scenario 7 (beyond the brief): a node leaves gracefully\n");
    scenario_leave(7007);
    ran++;
  }
  if (all || strcmp(which, "figures") == 0) {
    printf("figures (printed, not asserted)\n");
    figures(6006);
    ran++;
  }
  if (!ran) {
    fprintf(stderr, "usage: %s join|failure|loss|partition|refute|leave|figures|all\n",
            argv[0]);
    return 2;
  }
  printf(failures ? "FAILED: %d check(s)\n" : "ok\n", failures);
  return failures ? 1 : 0;
}
