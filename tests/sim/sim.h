/* sim.h - many SWIM cores in one process on a simulated network and clock.
 *
 * Each node is a real struct swim (gossip/swim.h) whose struct swim_env is
 * backed by the simulation: now_ms reads the fake clock, random draws from
 * one seeded PRNG, udp_send and the stream calls become events delivered
 * after a random latency, unless loss, a partition or a stopped node
 * swallows them. The loop advances the clock straight to the earliest
 * deadline among the cores and the packets in flight, so simulated minutes
 * take real milliseconds and a run is a pure function of its seed (printed;
 * SIM_SEED=<n> replays it).
 */
#ifndef REGMESH_TESTS_SIM_H
#define REGMESH_TESTS_SIM_H

#include "swim.h"

#include <stddef.h>
#include <stdint.h>

struct sim;

struct sim_node {
  struct sim *sim;
  size_t idx;
  struct swim *swim;
  struct swim_config cfg;
  char name[32];
  int stopped; /* drops everything to and from it, not ticked */
  int group;   /* partition group: packets only flow within a group */
  size_t heap_idx;
  uint64_t udp_bytes, tcp_bytes; /* sent */
};

/* Called for every membership event of every core. */
typedef void (*sim_event_cb)(struct sim *sim, struct sim_node *observer,
                             enum swim_event ev, const struct swim_member *m, void *ud);
/* Return 1 to drop this datagram (on top of the loss rate). */
typedef int (*sim_filter_cb)(struct sim *sim, size_t from, size_t to, const uint8_t *buf,
                             size_t len, void *ud);

/* sim_new: seed is used unless SIM_SEED is set in the environment; the
 * seed in use is printed with label. */
struct sim *sim_new(uint64_t seed, const char *label);
void sim_free(struct sim *sim);
uint64_t sim_seed(const struct sim *sim);
uint64_t sim_now(const struct sim *sim);
uint64_t sim_rand(struct sim *sim);

/* Network: latency uniform in [min, max] ms; UDP loss and stream connect
 * failure probabilities. */
void sim_set_latency(struct sim *sim, unsigned min_ms, unsigned max_ms);
void sim_set_loss(struct sim *sim, double udp_loss, double connect_fail);
void sim_set_filter(struct sim *sim, sim_filter_cb fn, void *ud);
void sim_set_event_cb(struct sim *sim, sim_event_cb fn, void *ud);
/* Refuse stream connects to node idx (blocked = 1) */
void sim_block_streams(struct sim *sim, size_t idx, int blocked);

/* Adds a node named n000, n001, ... at 10.0.x.y:7946 with the LAN
 * configuration, optionally adjusted by tweak (may be NULL). */
struct sim_node *sim_add_node(struct sim *sim,
                              void (*tweak)(struct swim_config *cfg, void *ud), void *ud);
size_t sim_count(const struct sim *sim);
struct sim_node *sim_node(struct sim *sim, size_t idx);
void sim_stop_node(struct sim *sim, size_t idx);
void sim_set_group(struct sim *sim, size_t idx, int group);
/* The core changed outside the loop (swim_join, swim_leave): reschedule. */
void sim_poke(struct sim *sim, size_t idx);

/* Runs events up to and including time t (absolute ms). */
void sim_run_until(struct sim *sim, uint64_t t);
void sim_run_for(struct sim *sim, uint64_t ms);

/* Checks: every running node sees exactly the members of `expect_alive`
 * (running nodes) as alive and no other member as alive or suspect.
 * Returns 1 when so. */
int sim_all_see_running_alive(struct sim *sim);
/* Every running node agrees on the member set and each member's state, and
 * rings built from each node's alive set answer 1000 lookups the same.
 * Prints what differs; returns 1 when all agree. */
int sim_agree(struct sim *sim);
/* Prints up to max_lines of what running nodes see wrongly (a running node
 * not alive, a stopped one alive, a running one unknown). */
void sim_print_views(struct sim *sim, size_t max_lines);

#endif
