/* node.h - one regmesh node: the parts wired together on one libuv loop.
 *
 * The node owns the configuration, the HTTP server and its listeners, the
 * upstream client with one struct upstream per configured registry, the
 * blob store, the single-flight fetcher, the tag cache and, in a fleet, its
 * cluster membership.
 */
#ifndef REGMESH_NODE_NODE_H
#define REGMESH_NODE_NODE_H

#include <stdint.h>
#include <uv.h>

#include "../config/config.h" /* struct config, CONFIG_ERR_LEN */

struct http_server;
struct upclient;
struct upstream;
struct blobstore;
struct fetcher;
struct tagcache;
struct tagslist_cache;
struct cluster;
struct access;
struct tls_source;
struct strmap;
struct rreq;
struct egress;
struct proxy;

/* Listener ids handed to the HTTP server: >= 0 is an upstream's own port.
 * MAIN and the upstreams' ports are client listeners; PEER is
 * cluster.peer_listen, the only one that serves fleet peers. */
#define NODE_LISTENER_MAIN (-1)
#define NODE_LISTENER_ADMIN (-2)
#define NODE_LISTENER_PEER (-3)
#define NODE_LISTENER_PROXY (-4) /* proxy.listen: HTTPS_PROXY for clients */

struct node {
  uv_loop_t *loop;
  struct config *cfg;          /* owned */
  struct http_server *http;
  struct upclient *upc;
  struct upstream **ups;       /* cfg->n_upstreams entries */
  struct blobstore *bs;
  struct fetcher *fetcher;
  struct tagcache *tags;
  struct tagslist_cache *tagslists;
  struct cluster *cluster;     /* NULL without a cluster: section */
  struct egress *peer_egress;  /* cluster.peer_egress, or NULL: unlimited */
  struct access *access;       /* allow list and client passwords */
  struct proxy *proxy;         /* proxy.listen, or NULL */
  /* certificates: of the client listeners (`tls:`), of the peer listener
   * (cluster.tls), and of upstreams whose listener has its own `tls:`
   * (NULL entries share tls_main) */
  struct tls_source *tls_main, *tls_peer;
  struct tls_source **tls_up;  /* cfg->n_upstreams entries */
  uv_signal_t sigint, sigterm, sighup;
  uv_timer_t drain_timer;      /* shutdown_timeout, while draining */
  int drain_timer_init;
  /* /readyz: storage/tmp is checked for write access every few seconds on
   * the thread pool (never on the loop) */
  uv_timer_t health_timer;
  uv_fs_t health_fs;
  int health_init, health_busy;
  int storage_writable;
  /* SIGHUP: the config file is read on the thread pool */
  uv_work_t reload_work;
  struct config *reload_cfg; /* the new one, NULL if it did not load */
  char reload_err[CONFIG_ERR_LEN];
  int reload_busy, reload_again;
  /* private upstreams: "<upstream>|<repo>|<hex>" -> expiry (unix s) of an
   * upstream HEAD that confirmed the blob under that repository */
  struct strmap *confirmed;
  /* cached blobs re-hashed since this process started: hex -> the file's
   * ctime (ns, + 1) when it hashed right; served without a check while the
   * file is unchanged (registry.c, serve_local) */
  struct strmap *verified;
  /* requests still owing their client a status line, checked against each
   * upstream's first_byte_timeout by a tick that runs while any wait */
  struct rreq *waiting;
  uv_timer_t deadline_timer;
  int deadline_init;
  int cache_verify_busy; /* one `cache verify` at a time */
  int cache_cancel;      /* atomic: set at stop, read by cache jobs */
  int ready;
  int cluster_left;   /* cluster_stop finished (hand-over told, gossip left) */
  int drained_early;  /* drained before it: node_stop waits for it */
  int draining; /* SIGTERM: finishing responses in flight */
  int stopping;
};

/* node_start opens the store, creates the clients and binds every listener.
 * Takes ownership of cfg. Returns 0 or a negative error (logged). */
int node_start(struct node *n, uv_loop_t *loop, struct config *cfg);
/* node_shutdown is SIGTERM's graceful stop: stop accepting, leave the
 * fleet, give responses in flight up to shutdown_timeout, then node_stop. */
void node_shutdown(struct node *n);
/* node_stop closes listeners and connections; the loop then runs dry. */
void node_stop(struct node *n);
/* node_free releases everything after the loop has stopped. */
void node_free(struct node *n);

#endif
