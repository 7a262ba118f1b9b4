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

struct config;
struct http_server;
struct upclient;
struct upstream;
struct blobstore;
struct fetcher;
struct tagcache;
struct tagslist_cache;
struct cluster;

/* Listener ids handed to the HTTP server: >= 0 is an upstream's own port. */
#define NODE_LISTENER_MAIN (-1)
#define NODE_LISTENER_ADMIN (-2)

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
  uv_signal_t sigint, sigterm;
  int ready;
  int stopping;
};

/* node_start opens the store, creates the clients and binds every listener.
 * Takes ownership of cfg. Returns 0 or a negative error (logged). */
int node_start(struct node *n, uv_loop_t *loop, struct config *cfg);
/* node_stop closes listeners and connections; the loop then runs dry. */
void node_stop(struct node *n);
/* node_free releases everything after the loop has stopped. */
void node_free(struct node *n);

#endif
