/* swim.h - SWIM membership with Lifeguard, speaking memberlist's protocol.
 *
 * The protocol core is a pure state machine: it never calls a clock, a
 * random source or a socket itself. The host hands it a struct swim_env
 * (time, randomness, UDP send, TCP streams) and feeds it what arrives
 * (swim_on_udp, swim_on_stream_*) and the passing of time (swim_tick at
 * swim_next_deadline). gossip/env_uv.c is the libuv host; tests/sim/ runs
 * many cores in one process on a simulated network with a fake clock.
 *
 * Ownership: a struct swim owns its member table and buffers; struct
 * swim_member views handed to callbacks or swim_members are valid until the
 * next call into the core.
 */
#ifndef REGMESH_GOSSIP_SWIM_H
#define REGMESH_GOSSIP_SWIM_H

#include "keyring.h"
#include "wire.h"

#include <stddef.h>
#include <stdint.h>

struct swim;

/* Timing and sizes; swim_config_lan fills memberlist's LAN defaults
 * (memberlist-wire.md section 9). */
struct swim_config {
  char name[WIRE_NAME_MAX + 1];
  struct wire_addr advertise;      /* address and port others reach us at */
  uint8_t meta[WIRE_META_MAX];     /* opaque node metadata (serf tags) */
  size_t meta_len;
  const struct keyring *keyring;   /* NULL: no encryption; else owned by caller */
  uint64_t probe_interval_ms;      /* 1000 */
  uint64_t probe_timeout_ms;       /* 500 */
  unsigned indirect_checks;        /* 3 */
  unsigned suspicion_mult;         /* 4 */
  unsigned suspicion_max_timeout_mult; /* 6 */
  unsigned retransmit_mult;        /* 4 */
  uint64_t gossip_interval_ms;     /* 200 */
  unsigned gossip_nodes;           /* 3 */
  uint64_t gossip_to_the_dead_ms;  /* 30000 */
  uint64_t push_pull_interval_ms;  /* 30000 */
  uint64_t tcp_timeout_ms;         /* 10000 */
  unsigned awareness_max_multiplier; /* 8 */
  size_t udp_buffer_size;          /* 1400 */
  uint64_t dead_reap_ms;           /* forget dead/left members after (default 24 h) */
  int tcp_pings;                   /* 1: TCP fallback probe */
  /* Like serf, every reconnect_interval_ms try a join to one failed
   * member's last address (with probability failed/alive), so the halves of
   * a healed partition find each other. 30000; 0 = never. */
  uint64_t reconnect_interval_ms;
};
void swim_config_lan(struct swim_config *cfg);

/* What the host provides. All calls are synchronous and must not call back
 * into the core. Stream ids are chosen by the host. */
struct swim_env {
  void *ctx;
  uint64_t (*now_ms)(void *ctx);
  uint32_t (*random)(void *ctx);
  /* best effort; an error is counted, never fatal */
  int (*udp_send)(void *ctx, const struct wire_addr *to, const uint8_t *buf, size_t len);
  /* starts a TCP connection; later swim_on_stream_connected(id, status) */
  int (*stream_open)(void *ctx, const struct wire_addr *to, uint64_t *id);
  int (*stream_write)(void *ctx, uint64_t id, const uint8_t *buf, size_t len);
  /* closes (after pending writes flush); no further swim_on_stream_* for id.
   * The core calls it exactly once for every id it got from a successful
   * stream_open or from swim_on_stream_accept, also after a failed connect,
   * after swim_on_stream_closed, and in swim_free: the host can release
   * the id's resources then. */
  void (*stream_close)(void *ctx, uint64_t id);
};

enum swim_state { SWIM_ALIVE = 0, SWIM_SUSPECT = 1, SWIM_DEAD = 2, SWIM_LEFT = 3 };
const char *swim_state_str(enum swim_state s);

struct swim_member {
  const char *name;
  struct wire_addr addr;
  enum swim_state state;
  uint32_t incarnation;
  const uint8_t *meta;
  size_t meta_len;
  uint8_t vsn[WIRE_VSN_LEN];
  int is_self;
};

enum swim_event {
  SWIM_EV_JOIN,    /* a new member is alive */
  SWIM_EV_UPDATE,  /* alive member's metadata or address changed */
  SWIM_EV_SUSPECT, /* alive -> suspect */
  SWIM_EV_ALIVE,   /* suspect (or dead, on rejoin) -> alive */
  SWIM_EV_DEAD,    /* declared dead (failed) */
  SWIM_EV_LEAVE,   /* left gracefully */
  SWIM_EV_REAP,    /* forgotten after dead_reap_ms */
};
const char *swim_event_str(enum swim_event e);

/* Events are about other members only, never about ourselves; the callback
 * must not call back into the core except for swim_members / swim_num_alive
 * / swim_get_stats. */
struct swim_callbacks {
  void *ud;
  void (*on_event)(void *ud, enum swim_event ev, const struct swim_member *m);
};

struct swim_stats {
  uint64_t udp_sent, udp_recv, udp_bytes_sent, udp_bytes_recv;
  uint64_t streams_out, streams_in;
  uint64_t dropped_malformed;  /* undecodable packets / streams */
  uint64_t dropped_auth;       /* failed decryption or plaintext with a keyring */
  uint64_t dropped_oversize;
  uint64_t dropped_crc;
  uint64_t probes, probe_failures, suspicions, refutations, deaths_declared;
  int awareness;               /* Lifeguard local health score */
  uint64_t name_conflicts;     /* alive for a known name from another address */
  /* the last one: "<name> at <known addr>, claimed from <other addr>" */
  char last_conflict[200];
  /* of those, the ones claiming our own name, and the last claimant */
  uint64_t self_conflicts;
  struct wire_addr self_conflict_from;
  uint64_t push_pull_rejected; /* push/pulls aborted by the version check */
  uint64_t corrections;        /* newer alive sent back for a stale suspect/dead */
};

int swim_new(struct swim **out, const struct swim_config *cfg, const struct swim_env *env,
             const struct swim_callbacks *cb);
void swim_free(struct swim *s);

/* Inputs from the host. */
void swim_on_udp(struct swim *s, const struct wire_addr *from, const uint8_t *buf, size_t len);
void swim_on_stream_accept(struct swim *s, uint64_t id, const struct wire_addr *from);
void swim_on_stream_connected(struct swim *s, uint64_t id, int status);
void swim_on_stream_data(struct swim *s, uint64_t id, const uint8_t *buf, size_t len);
/* EOF (err 0) or error from the peer side */
void swim_on_stream_closed(struct swim *s, uint64_t id, int err);
/* Time: call swim_tick at or after swim_next_deadline() (absolute ms). */
uint64_t swim_next_deadline(const struct swim *s);
void swim_tick(struct swim *s);

/* Joins through seeds (push/pull with Join=true to each; retried with
 * backoff until one answers or swim_leave). Returns 0 or an error. */
int swim_join(struct swim *s, const struct wire_addr *seeds, size_t n);
/* New metadata: bumps our incarnation and gossips an alive. */
int swim_set_meta(struct swim *s, const uint8_t *meta, size_t len);
/* swim_rename gives this node a new name (another member holds ours:
 * nobody took our alive, so nobody knows the old one). The new name is
 * gossiped with a higher incarnation. 0, -EINVAL (empty, too long,
 * leaving), -EEXIST (a known member has it) or -ENOMEM. */
int swim_rename(struct swim *s, const char *name);
/* Graceful leave: serf leave intent + dead about ourselves, gossiped;
 * swim_leave_done() becomes true once it has been sent to enough members or
 * after timeout_ms. */
int swim_leave(struct swim *s, uint64_t timeout_ms);
int swim_leave_done(const struct swim *s);

/* Members (self included), in no particular order. Returns the total count;
 * fills at most max. */
size_t swim_members(const struct swim *s, struct swim_member *out, size_t max);
size_t swim_num_alive(const struct swim *s); /* alive + suspect, self included */
void swim_get_stats(const struct swim *s, struct swim_stats *st);

#endif
