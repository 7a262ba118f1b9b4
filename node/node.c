/* node.c - wires one node together: store, upstreams, fetcher, tag cache
 * and the HTTP listeners on a single libuv loop, and takes it apart again
 * in the one order that is safe (listeners and requests first, then the
 * upstream client, whose cancelled requests end every download, then the
 * caches and the store).
 */
#include "node.h"

#include "access.h"
#include "cluster.h"
#include "egress.h"
#include "fetch.h"
#include "http_server.h"
#include "proxy.h"
#include "registry.h"
#include "reload.h"
#include "tags.h"
#include "tls.h"
#include "upstream.h"

#include "../common/errors.h"
#include "../common/log.h"
#include "../common/strmap.h"
#include "../config/config.h"
#include "../storage/storage.h"
#include "regmesh_commit.h"

#include <signal.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

static void on_signal(uv_signal_t *h, int signum) {
  struct node *n = h->data;
  if (n->draining) {
    LOG_I("signal %d again: stopping now", signum);
    node_stop(n);
    return;
  }
  LOG_I("signal %d: shutting down", signum);
  node_shutdown(n);
}

/* SIGHUP: the configuration (reload.c), certificates and the htpasswd file
 * are read again (the files are also watched; this makes it immediate). */
static void on_sighup(uv_signal_t *h, int signum) {
  struct node *n = h->data;
  (void)signum;
  LOG_I("SIGHUP: reloading the configuration, certificates and passwords");
  node_reload(n);
  if (n->tls_main)
    tls_source_reload(n->tls_main);
  if (n->tls_peer)
    tls_source_reload(n->tls_peer);
  for (size_t i = 0; n->tls_up && i < n->cfg->n_upstreams; i++)
    if (n->tls_up[i])
      tls_source_reload(n->tls_up[i]);
  access_reload(n->access);
}

/* The admin listener's own budget: probes, scrapes and the operator's
 * commands need few, and never the registry port's. */
#define ADMIN_MAX_CONNECTIONS 64

static int addr_is_loopback(const char *addr) {
  return strncmp(addr, "127.", 4) == 0 || strncmp(addr, "[::1]:", 6) == 0;
}

/* listen_one binds a listener, with TLS when ts is set. Client listeners
 * (guarded is set) beyond loopback without an `allow:` serve loopback only,
 * which surprises: say so once at start. */
static int listen_one(struct node *n, const char *addr, int id, const char *what,
                      struct tls_source *ts, int guarded) {
  int r = ts ? http_server_listen_tls(n->http, addr, id, tls_source_ctx(ts))
          : id == NODE_LISTENER_ADMIN
              ? http_server_listen_budget(n->http, addr, id, ADMIN_MAX_CONNECTIONS)
              : http_server_listen(n->http, addr, id);
  if (r) {
    LOG_E("cannot listen on %s (%s): %s", addr, what, rm_strerror(r));
    return r;
  }
  LOG_I("listening on %s (%s%s)", addr, what, ts ? ", TLS" : "");
  if (guarded && !n->cfg->allow_set && !addr_is_loopback(addr))
    LOG_W("listener %s (%s) is reachable beyond loopback but `allow:` is not set: "
          "only loopback clients are served; list your build hosts' networks in "
          "`allow:`",
          addr, what);
  return 0;
}

/* start_tls loads every `tls:` block's files and starts watching them. */
static int start_tls(struct node *n) {
  const struct config *cfg = n->cfg;
  int r;
  if (cfg->tls && (r = tls_source_new(&n->tls_main, n->loop, cfg->tls, "listen")) != 0)
    return r;
  if (cfg->cluster.enabled && cfg->cluster.tls &&
      (r = tls_source_new(&n->tls_peer, n->loop, cfg->cluster.tls, "cluster.peer_listen")) != 0)
    return r;
  n->tls_up = calloc(cfg->n_upstreams ? cfg->n_upstreams : 1, sizeof *n->tls_up);
  if (!n->tls_up)
    return UV_ENOMEM;
  for (size_t i = 0; i < cfg->n_upstreams; i++) {
    const struct config_upstream *u = &cfg->upstreams[i];
    if (u->listen && u->tls &&
        (r = tls_source_new(&n->tls_up[i], n->loop, u->tls, u->host)) != 0)
      return r;
  }
  return 0;
}

#define HEALTH_CHECK_MS 5000

static void on_health_access(uv_fs_t *req) {
  struct node *n = req->data;
  int ok = req->result == 0;
  if (ok && !n->storage_writable)
    LOG_I("storage %s is writable again", n->cfg->storage.root);
  else if (!ok && n->storage_writable)
    LOG_W("storage %s is not writable (%s): /readyz answers 503", n->cfg->storage.root,
          rm_strerror((int)req->result));
  n->storage_writable = ok;
  n->health_busy = 0;
  uv_fs_req_cleanup(req);
}

static void on_health_timer(uv_timer_t *t) {
  struct node *n = t->data;
  char path[4200];
  if (n->health_busy || n->stopping)
    return;
  snprintf(path, sizeof path, "%s/tmp", n->cfg->storage.root);
  n->health_fs.data = n;
  if (uv_fs_access(n->loop, &n->health_fs, path, W_OK, on_health_access) == 0)
    n->health_busy = 1;
}

int node_start(struct node *n, uv_loop_t *loop, struct config *cfg) {
  memset(n, 0, sizeof *n);
  n->loop = loop;
  n->cfg = cfg;
  enum log_level lvl;
  if (cfg->log_level && log_level_parse(cfg->log_level, &lvl) == 0)
    log_set_level(lvl);
  log_set_format(cfg->log_json ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT);
  signal(SIGPIPE, SIG_IGN);

  int r = blobstore_open(&n->bs, cfg->storage.root, cfg->storage.max_size);
  if (r) {
    LOG_E("cannot open storage at %s: %s", cfg->storage.root, rm_strerror(r));
    return r;
  }
  if ((r = upclient_new(&n->upc, loop)) != 0)
    return r;
  n->ups = calloc(cfg->n_upstreams, sizeof *n->ups);
  if (!n->ups)
    return UV_ENOMEM;
  for (size_t i = 0; i < cfg->n_upstreams; i++) {
    r = upstream_new(&n->ups[i], n->upc, &cfg->upstreams[i]);
    if (r) {
      LOG_E("upstream %s: %s", cfg->upstreams[i].host, rm_strerror(r));
      return r;
    }
  }
  if ((r = fetcher_new(&n->fetcher, loop, n->bs)) != 0)
    return r;
  if ((r = tagcache_new(&n->tags, loop, n->bs)) != 0)
    return r;
  if ((r = access_new(&n->access, loop, cfg)) != 0)
    return r;
  if (!(n->confirmed = malloc(sizeof *n->confirmed)) ||
      !(n->verified = malloc(sizeof *n->verified)))
    return UV_ENOMEM;
  strmap_init(n->confirmed);
  strmap_init(n->verified);
  if ((r = start_tls(n)) != 0)
    return r;
  registry_init(n);

  struct http_server_limits lim = {
      .max_header_bytes = cfg->http.max_header_bytes,
      .max_headers = cfg->http.max_headers,
      .header_timeout_ms = cfg->http.header_timeout_ms,
      .idle_timeout_ms = cfg->http.idle_timeout_ms,
      .send_timeout_ms = cfg->http.send_timeout_ms,
      .max_connections = cfg->http.max_connections,
      .no_access_log = !cfg->access_log,
  };
  if ((r = http_server_new(&n->http, loop, &lim, registry_handle, n)) != 0)
    return r;
  if ((r = listen_one(n, cfg->listen, NODE_LISTENER_MAIN, "registry API", n->tls_main,
                      1)) != 0)
    return r;
  if (cfg->admin_listen &&
      (r = listen_one(n, cfg->admin_listen, NODE_LISTENER_ADMIN, "admin", NULL, 1)) != 0)
    return r;
  for (size_t i = 0; i < cfg->n_upstreams; i++) {
    struct tls_source *ts = n->tls_up[i] ? n->tls_up[i] : n->tls_main;
    if (cfg->upstreams[i].listen &&
        (r = listen_one(n, cfg->upstreams[i].listen, (int)i, cfg->upstreams[i].host, ts,
                        1)) != 0)
      return r;
  }
  /* with a secret, signatures guard the peer port; without one, `allow:` */
  if (cfg->cluster.enabled &&
      (r = listen_one(n, cfg->cluster.peer_listen, NODE_LISTENER_PEER, "fleet peers",
                      n->tls_peer, cfg->cluster.secret_len == 0)) != 0)
    return r;
  /* last, so the proxy knows every listener it must never tunnel to */
  if (cfg->proxy.listen &&
      ((r = listen_one(n, cfg->proxy.listen, NODE_LISTENER_PROXY, "proxy", NULL, 1)) != 0 ||
       (r = proxy_new(&n->proxy, n)) != 0))
    return r;
  for (size_t i = 0; i < cfg->n_upstreams; i++) {
    LOG_I("upstream %s -> %s%s", cfg->upstreams[i].host, cfg->upstreams[i].url,
          cfg->upstreams[i].is_default ? " (default)" : "");
    upstream_ping(n->ups[i]);
  }

  if (cfg->cluster.enabled && cfg->cluster.peer_egress &&
      (r = egress_new(&n->peer_egress, loop, cfg->cluster.peer_egress)) != 0)
    return r;
  if (cfg->cluster.enabled && (r = cluster_start(&n->cluster, n)) != 0)
    return r;

  uv_signal_init(loop, &n->sigint);
  uv_signal_init(loop, &n->sigterm);
  n->sigint.data = n->sigterm.data = n;
  uv_signal_start(&n->sigint, on_signal, SIGINT);
  uv_signal_start(&n->sigterm, on_signal, SIGTERM);
  uv_signal_init(loop, &n->sighup);
  n->sighup.data = n;
  uv_signal_start(&n->sighup, on_sighup, SIGHUP);
  n->storage_writable = 1; /* blobstore_open just wrote there */
  if (uv_timer_init(loop, &n->health_timer) == 0) {
    n->health_timer.data = n;
    n->health_init = 1;
    uv_timer_start(&n->health_timer, on_health_timer, HEALTH_CHECK_MS, HEALTH_CHECK_MS);
  }
  n->ready = 1;
  LOG_I("regmesh %s (commit %s) ready; storage %s", REGMESH_VERSION, REGMESH_COMMIT,
        cfg->storage.root);
  return 0;
}

static void on_http_closed(void *ud) {
  struct node *n = ud;
  n->http = NULL;
  egress_free(n->peer_egress); /* no request is left to wait on it */
  n->peer_egress = NULL;
  /* Cancels every upstream request: downloads end with UV_ECANCELED. */
  upclient_free(n->upc);
  n->upc = NULL;
}

static void on_drained(void *ud) {
  struct node *n = ud;
  if (n->stopping)
    return; /* the timeout cut the rest: that was logged */
  LOG_I("shutdown: every response finished");
  if (n->cluster && !n->cluster_left) {
    n->drained_early = 1; /* the hand-over still talks to peers */
    return;
  }
  node_stop(n);
}

static void on_cluster_left(void *ud) {
  struct node *n = ud;
  n->cluster_left = 1;
  if (n->drained_early)
    node_stop(n);
}

static void on_drain_timeout(uv_timer_t *t) {
  struct node *n = t->data;
  unsigned left = n->http ? http_server_n_connections(n->http) : 0;
  LOG_W("shutdown_timeout (%llu ms) reached: cutting %u connection(s)",
        (unsigned long long)n->cfg->shutdown_timeout_ms, left);
  node_stop(n);
}

void node_shutdown(struct node *n) {
  if (n->draining || n->stopping)
    return;
  n->draining = 1;
  n->ready = 0;
  /* leave first, so peers stop sending us work while we finish ours */
  if (n->cluster)
    cluster_stop(n->cluster, on_cluster_left, n);
  if (!n->http || n->cfg->shutdown_timeout_ms == 0) {
    node_stop(n);
    return;
  }
  http_server_drain(n->http, on_drained, n); /* may stop the node at once */
  if (n->stopping)
    return;
  LOG_I("shutdown: not accepting; %u connection(s) in flight get up to %llu ms",
        http_server_n_connections(n->http),
        (unsigned long long)n->cfg->shutdown_timeout_ms);
  uv_timer_init(n->loop, &n->drain_timer);
  n->drain_timer.data = n;
  n->drain_timer_init = 1;
  uv_timer_start(&n->drain_timer, on_drain_timeout, n->cfg->shutdown_timeout_ms, 0);
}

void node_stop(struct node *n) {
  if (n->stopping)
    return;
  n->stopping = 1;
  n->ready = 0;
  /* a cache job on the thread pool (a long verify) ends early: the loop
   * waits for it before the process can exit */
  __atomic_store_n(&n->cache_cancel, 1, __ATOMIC_RELAXED);
  if (n->drain_timer_init) {
    n->drain_timer_init = 0;
    uv_close((uv_handle_t *)&n->drain_timer, NULL);
  }
  if (n->health_init) {
    n->health_init = 0;
    uv_close((uv_handle_t *)&n->health_timer, NULL);
  }
  if (uv_is_active((uv_handle_t *)&n->sigint)) {
    uv_close((uv_handle_t *)&n->sigint, NULL);
    uv_close((uv_handle_t *)&n->sigterm, NULL);
    uv_close((uv_handle_t *)&n->sighup, NULL);
  }
  tls_source_close(n->tls_main);
  tls_source_close(n->tls_peer);
  for (size_t i = 0; n->tls_up && i < n->cfg->n_upstreams; i++)
    tls_source_close(n->tls_up[i]);
  proxy_close(n->proxy);
  n->proxy = NULL;
  access_close(n->access);
  tagcache_close(n->tags);
  registry_stop(n);
  /* Leaving is gossiped while the listeners drain; both end on their own. */
  if (n->cluster)
    cluster_stop(n->cluster, NULL, NULL);
  if (n->http)
    http_server_close(n->http, on_http_closed, n);
  else if (n->upc)
    on_http_closed(n);
}

void node_free(struct node *n) {
  cluster_free(n->cluster);
  tagcache_free(n->tags);
  fetcher_free(n->fetcher);
  registry_tagslist_free(n);
  if (n->ups) {
    for (size_t i = 0; i < n->cfg->n_upstreams; i++)
      if (n->ups[i])
        upstream_free(n->ups[i]);
    free(n->ups);
  }
  if (n->bs)
    blobstore_close(n->bs);
  free(n->tls_up);
  if (n->confirmed) {
    strmap_free(n->confirmed);
    free(n->confirmed);
  }
  if (n->verified) {
    strmap_free(n->verified);
    free(n->verified);
  }
  if (n->cfg) {
    config_free(n->cfg);
    free(n->cfg);
  }
  memset(n, 0, sizeof *n);
}
