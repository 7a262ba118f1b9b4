/* env_uv.h - the libuv host of the SWIM core (swim.h).
 *
 * A struct gossip_uv owns one struct swim and everything it talks through:
 * one UDP socket and one TCP listener bound to the same ip:port (memberlist
 * style), the TCP streams the core opens or accepts, and one timer armed at
 * swim_next_deadline(). It implements struct swim_env on top of the loop:
 *
 *   now_ms        uv_now(loop)
 *   random        xorshift64* seeded from getrandom(2)
 *   udp_send      uv_udp_try_send, else uv_udp_send with a copy (bounded)
 *   stream_open   uv_tcp_connect   -> swim_on_stream_connected
 *   (listener)    accept           -> swim_on_stream_accept
 *   (reads)       data / EOF       -> swim_on_stream_data / _closed
 *   stream_write  uv_try_write, the rest copied into a uv_write (bounded)
 *   stream_close  after pending writes flush (or a linger deadline)
 *
 * Limits: at most GOSSIP_UV_MAX_INBOUND accepted streams at once (like
 * memberlist's 128 concurrent push/pulls; extra connections are closed at
 * once), GOSSIP_UV_MAX_OUTBOUND opened ones, GOSSIP_UV_MAX_STREAM_OUT bytes
 * queued per stream and GOSSIP_UV_MAX_UDP_QUEUE bytes of queued datagrams.
 * A stream the core neither finishes nor closes is reported closed with
 * UV_ETIMEDOUT after 3 x tcp_timeout_ms, and closed a tcp_timeout later.
 *
 * Threading: everything runs on the loop's thread.
 */
#ifndef REGMESH_GOSSIP_ENV_UV_H
#define REGMESH_GOSSIP_ENV_UV_H

#include "swim.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define GOSSIP_UV_MAX_INBOUND 128
#define GOSSIP_UV_MAX_OUTBOUND 256
#define GOSSIP_UV_MAX_STREAM_OUT (WIRE_STREAM_MAX + 4096)
#define GOSSIP_UV_MAX_UDP_QUEUE (4u << 20)
#define GOSSIP_UV_LEAVE_TIMEOUT_MS 5000

struct gossip_uv;

/* gossip_uv_parse_addr parses "a.b.c.d:port" or "[v6]:port" into a
 * wire_addr. Returns 0 or UV_EINVAL. */
int gossip_uv_parse_addr(const char *s, struct wire_addr *out);
/* gossip_uv_format_addr writes "ip:port" ("[v6]:port") into out (at least
 * 64 bytes) and returns out. */
char *gossip_uv_format_addr(const struct wire_addr *a, char *out, size_t len);

/* gossip_uv_start binds UDP and TCP on bind_addr ("ip:port"; port 0 picks a
 * free port, the same for both), creates the core and arms its timer.
 * cfg->advertise with ip_len 0 is filled from the bound address (which then
 * must not be 0.0.0.0 / ::). cfg is copied; cfg->keyring must outlive the
 * host. cb->on_event is called from inside the core: it must not call the
 * core (defer through the loop). Returns 0 and *out, or a negative error
 * (nothing left open). */
int gossip_uv_start(struct gossip_uv **out, uv_loop_t *loop,
                    const struct swim_config *cfg, const char *bind_addr,
                    const struct swim_callbacks *cb);

/* The core, for reads (swim_members, swim_get_stats). After calling a
 * mutating core function directly, call gossip_uv_poke so the timer follows
 * the new deadline; gossip_uv_join and gossip_uv_set_meta do it for you. */
struct swim *gossip_uv_swim(struct gossip_uv *g);
void gossip_uv_poke(struct gossip_uv *g);
/* The address we bound (the real port when bind_addr said 0). */
const struct wire_addr *gossip_uv_addr(const struct gossip_uv *g);

/* gossip_uv_join parses n "ip:port" seeds and calls swim_join. Returns 0,
 * UV_EINVAL for a bad address (naming none joined), or the core's error. */
int gossip_uv_join(struct gossip_uv *g, const char *const *seeds, size_t n);
int gossip_uv_set_meta(struct gossip_uv *g, const uint8_t *meta, size_t len);

/* gossip_uv_stop leaves gracefully: swim_leave(timeout_ms, 0 = default),
 * then once swim_leave_done() or the timeout passed (plus a short flush of
 * queued datagrams), closes every handle, frees the core and g, and calls
 * done(ud) exactly once. Safe to call from any callback (it defers through
 * the loop). Returns 0, or UV_EALREADY if a stop or close is under way (done
 * will not be called for this call). */
int gossip_uv_stop(struct gossip_uv *g, uint64_t timeout_ms, void (*done)(void *ud),
                   void *ud);
/* gossip_uv_close stops without telling anyone (as if the process died):
 * closes everything, frees, calls done(ud) once. Same return rules. */
int gossip_uv_close(struct gossip_uv *g, void (*done)(void *ud), void *ud);

/* Host-side counters (the core keeps its own in swim_get_stats). */
struct gossip_uv_stats {
  uint64_t udp_send_errors, udp_queued, udp_queue_full, udp_recv_truncated;
  uint64_t streams_refused, streams_timed_out, stream_write_full;
  unsigned streams_in, streams_out; /* open now */
};
void gossip_uv_get_stats(const struct gossip_uv *g, struct gossip_uv_stats *st);

#endif
