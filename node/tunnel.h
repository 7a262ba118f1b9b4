/* tunnel.h - CONNECT tunnels to hosts the proxy does not serve itself.
 *
 * A tunnel connects to the target first (each address in turn, with a
 * deadline), and only then takes the client's socket from the HTTP server
 * (http_request_detach), answers `200 Connection established` and relays
 * bytes both ways untouched, with back-pressure (a side whose peer is slow
 * to take bytes stops being read) and half-close passed through. Idle
 * tunnels close after TUNNEL_IDLE_MS.
 */
#ifndef REGMESH_NODE_TUNNEL_H
#define REGMESH_NODE_TUNNEL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

struct http_request;
struct tunnels;

#define TUNNEL_IDLE_MS (10 * 60 * 1000)
#define TUNNEL_MAX_ADDRS 8

struct tunnel_stats {
  uint64_t opened;       /* relaying tunnels so far */
  uint64_t failed;       /* targets that did not answer */
  uint64_t bytes_out;    /* client -> target */
  uint64_t bytes_in;     /* target -> client */
  unsigned open;         /* connecting or relaying now */
};

/* tunnels_new: at most max tunnels at once (more get 503). 0 or UV_ENOMEM. */
int tunnels_new(struct tunnels **out, uv_loop_t *loop, unsigned max);
/* tunnel_open answers req (a CONNECT) itself: a tunnel to the first of
 * addrs (n <= TUNNEL_MAX_ADDRS, ports set) that accepts within timeout_ms,
 * 502 when none does, 503 when the limit is reached or memory is short.
 * label ("host:port") names it in logs. */
void tunnel_open(struct tunnels *ts, struct http_request *req,
                 const struct sockaddr_storage *addrs, size_t n, uint64_t timeout_ms,
                 const char *label);
void tunnels_get_stats(const struct tunnels *ts, struct tunnel_stats *st);
/* tunnels_close cuts every tunnel (connecting ones answer 503) and frees ts
 * once their handles are closed. */
void tunnels_close(struct tunnels *ts);

#endif
