/* reload.c - SIGHUP: read the configuration file again and apply in place
 * what can change without dropping a connection.
 *
 * The file is parsed and validated on the thread pool (check-config's
 * loader); a file that does not pass is refused with its errors and the
 * running configuration stays. Of a valid one, everything a running node
 * can take is applied at once: log level and format, shutdown_timeout, the
 * HTTP timeouts, max_connections and access_log, `allow:`, the htpasswd
 * file's path, storage.max_size (evicting down to it, on the thread pool),
 * and per upstream (matched by host) its url, credentials, TLS checks,
 * timeouts, retries, private and TTLs. What a running node cannot take
 * (listeners, storage.root, header limits, TLS file paths, the upstream
 * list, cluster, proxy, upstream aliases, turning auth on or off) is named
 * in a warning and waits for a restart. The node's own struct config is
 * kept true: applied fields are swapped into it, so the new config's free
 * releases the old values, and what waits keeps its running value.
 */
#include "reload.h"

#include "access.h"
#include "http_server.h"
#include "node.h"
#include "upstream.h"

#include "../common/errors.h"
#include "../common/log.h"
#include "../config/config.h"
#include "../storage/storage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A comma-joined list of key names for the log. */
struct keylist {
  char s[1024];
  size_t n;
};

static void key_add(struct keylist *l, const char *fmt, const char *arg) {
  if (l->n >= sizeof l->s - 1)
    return;
  int w = snprintf(l->s + l->n, sizeof l->s - l->n, "%s", l->n ? ", " : "");
  if (w > 0)
    l->n += (size_t)w;
  if (l->n < sizeof l->s - 1) {
    w = snprintf(l->s + l->n, sizeof l->s - l->n, fmt, arg);
    if (w > 0)
      l->n += (size_t)w;
  }
  if (l->n > sizeof l->s - 1)
    l->n = sizeof l->s - 1;
}

static int str_eq(const char *a, const char *b) {
  return a == b || (a && b && strcmp(a, b) == 0);
}

static void str_swap(char **a, char **b) {
  char *t = *a;
  *a = *b;
  *b = t;
}

static int tls_eq(const struct config_tls *a, const struct config_tls *b) {
  if (!a || !b)
    return a == b;
  return str_eq(a->cert, b->cert) && str_eq(a->key, b->key) && str_eq(a->ca, b->ca) &&
         a->min_version == b->min_version;
}

static int cluster_eq(const struct config_cluster *a, const struct config_cluster *b) {
  if (a->enabled != b->enabled || !str_eq(a->name, b->name) || !str_eq(a->bind, b->bind) ||
      !str_eq(a->advertise, b->advertise) || !str_eq(a->peer_listen, b->peer_listen) ||
      !str_eq(a->peer_url, b->peer_url) || !tls_eq(a->tls, b->tls) || a->n_join != b->n_join ||
      a->secret_len != b->secret_len || memcmp(a->secret, b->secret, a->secret_len) != 0 ||
      a->replicas != b->replicas || a->weight != b->weight || !str_eq(a->zone, b->zone) ||
      a->peer_timeout_ms != b->peer_timeout_ms ||
      a->peer_stall_timeout_ms != b->peer_stall_timeout_ms ||
      a->probe_interval_ms != b->probe_interval_ms ||
      a->probe_timeout_ms != b->probe_timeout_ms ||
      a->push_pull_interval_ms != b->push_pull_interval_ms)
    return 0;
  for (size_t i = 0; i < a->n_join; i++)
    if (!str_eq(a->join[i], b->join[i]))
      return 0;
  return 1;
}

static int aliases_eq(const struct config_upstream *a, const struct config_upstream *b) {
  if (a->n_aliases != b->n_aliases)
    return 0;
  for (size_t i = 0; i < a->n_aliases; i++)
    if (!str_eq(a->aliases[i], b->aliases[i]))
      return 0;
  return 1;
}

/* The proxy listener holds its CA, leaf cache and tunnel rules from start,
 * so any change under proxy: waits for a restart. */
static int proxy_eq(const struct config_proxy *a, const struct config_proxy *b) {
  if (!str_eq(a->listen, b->listen) || !str_eq(a->ca_cert, b->ca_cert) ||
      !str_eq(a->ca_key, b->ca_key) || a->tunnel_others != b->tunnel_others ||
      a->leaf_ttl_ms != b->leaf_ttl_ms || a->n_tunnel_allow != b->n_tunnel_allow ||
      (a->n_tunnel_allow && memcmp(a->tunnel_allow, b->tunnel_allow,
                                   a->n_tunnel_allow * sizeof *a->tunnel_allow) != 0) ||
      a->n_hosts != b->n_hosts)
    return 0;
  for (size_t i = 0; i < a->n_hosts; i++)
    if (!str_eq(a->hosts[i].name, b->hosts[i].name) ||
        !str_eq(a->hosts[i].addr, b->hosts[i].addr))
      return 0;
  return 1;
}

/* ---- the thread pool side ---- */

static void reload_job(uv_work_t *w) {
  struct node *n = w->data;
  struct config *c = calloc(1, sizeof *c);
  n->reload_err[0] = '\0';
  if (!c) {
    snprintf(n->reload_err, sizeof n->reload_err, "out of memory");
  } else if (config_load_file(c, n->cfg->path, n->reload_err, sizeof n->reload_err) != 0) {
    config_free(c);
    free(c);
    c = NULL;
  } else if (c->storage.max_size != n->cfg->storage.max_size) {
    /* n->cfg changes only in reload_done, and one job runs at a time */
    blobstore_set_max_size(n->bs, c->storage.max_size); /* evicts: not on the loop */
  }
  n->reload_cfg = c;
}

/* ---- applying, on the loop ---- */

/* One upstream present in both files. */
static void apply_upstream(struct node *n, size_t i, struct config_upstream *nu,
                           struct keylist *applied, struct keylist *restart) {
  struct config_upstream *ou = &n->cfg->upstreams[i];
  char key[200];
  if (!str_eq(ou->listen, nu->listen) || ou->is_default != nu->is_default ||
      !tls_eq(ou->tls, nu->tls)) {
    snprintf(key, sizeof key, "upstreams[%s].listen/default/tls", ou->host);
    key_add(restart, "%s", key);
  }
  /* n->cfg keeps the aliases the proxy listener started with */
  if (!aliases_eq(ou, nu)) {
    snprintf(key, sizeof key, "upstreams[%s].aliases", ou->host);
    key_add(restart, "%s", key);
  }
#define UP_DIFF(cond, name)                                                                   \
  do {                                                                                        \
    if (cond) {                                                                               \
      snprintf(key, sizeof key, "upstreams[%s].%s", ou->host, name);                          \
      key_add(applied, "%s", key);                                                            \
      changed = 1;                                                                            \
    }                                                                                         \
  } while (0)
  int changed = 0;
  UP_DIFF(!str_eq(ou->url, nu->url), "url");
  UP_DIFF(!str_eq(ou->username, nu->username) || !str_eq(ou->password, nu->password) ||
              !str_eq(ou->password_env, nu->password_env),
          "credentials");
  UP_DIFF(ou->tls_verify != nu->tls_verify || !str_eq(ou->ca_file, nu->ca_file), "tls_verify/ca_file");
  UP_DIFF(ou->tag_ttl_ms != nu->tag_ttl_ms, "tag_ttl");
  UP_DIFF(ou->tags_list_ttl_ms != nu->tags_list_ttl_ms, "tags_list_ttl");
  UP_DIFF(ou->resolve_timeout_ms != nu->resolve_timeout_ms, "resolve_timeout");
  UP_DIFF(ou->first_byte_timeout_ms != nu->first_byte_timeout_ms, "first_byte_timeout");
  UP_DIFF(ou->connect_timeout_ms != nu->connect_timeout_ms, "connect_timeout");
  UP_DIFF(ou->low_speed_time_ms != nu->low_speed_time_ms, "low_speed_time");
  UP_DIFF(ou->max_retries != nu->max_retries, "max_retries");
  UP_DIFF(ou->is_private != nu->is_private, "private");
#undef UP_DIFF
  if (!changed)
    return;
  int r = upstream_reconfigure(n->ups[i], nu);
  if (r) {
    LOG_E("SIGHUP: upstream %s keeps its old settings: %s", ou->host,
          r == RM_ECONFIG ? "password_env is not set" : "out of memory");
    return;
  }
  /* and the node's copy, which routing and private checks read */
  str_swap(&ou->url, &nu->url);
  str_swap(&ou->username, &nu->username);
  str_swap(&ou->password, &nu->password);
  str_swap(&ou->password_env, &nu->password_env);
  str_swap(&ou->ca_file, &nu->ca_file);
  ou->tls_verify = nu->tls_verify;
  ou->tag_ttl_ms = nu->tag_ttl_ms;
  ou->tags_list_ttl_ms = nu->tags_list_ttl_ms;
  ou->resolve_timeout_ms = nu->resolve_timeout_ms;
  ou->first_byte_timeout_ms = nu->first_byte_timeout_ms;
  ou->connect_timeout_ms = nu->connect_timeout_ms;
  ou->low_speed_time_ms = nu->low_speed_time_ms;
  ou->max_retries = nu->max_retries;
  ou->is_private = nu->is_private;
}

static void apply_upstreams(struct node *n, struct config *c, struct keylist *applied,
                            struct keylist *restart) {
  struct config *o = n->cfg;
  for (size_t i = 0; i < o->n_upstreams; i++) {
    const char *host = o->upstreams[i].host;
    struct config_upstream *nu =
        (struct config_upstream *)config_upstream_find(c, host, strlen(host));
    if (nu)
      apply_upstream(n, i, nu, applied, restart);
    else
      key_add(restart, "upstreams (%s removed)", host);
  }
  for (size_t i = 0; i < c->n_upstreams; i++) {
    const char *host = c->upstreams[i].host;
    if (!config_upstream_find(o, host, strlen(host)))
      key_add(restart, "upstreams (%s added)", host);
  }
}

static void apply_http(struct node *n, struct config *c, struct keylist *applied,
                       struct keylist *restart) {
  struct config_http *oh = &n->cfg->http, *nh = &c->http;
  if (oh->max_header_bytes != nh->max_header_bytes || oh->max_headers != nh->max_headers)
    key_add(restart, "%s", "http.max_header_bytes/max_headers");
  if (oh->header_timeout_ms == nh->header_timeout_ms &&
      oh->idle_timeout_ms == nh->idle_timeout_ms &&
      oh->send_timeout_ms == nh->send_timeout_ms &&
      oh->max_connections == nh->max_connections && n->cfg->access_log == c->access_log)
    return;
  oh->header_timeout_ms = nh->header_timeout_ms;
  oh->idle_timeout_ms = nh->idle_timeout_ms;
  oh->send_timeout_ms = nh->send_timeout_ms;
  oh->max_connections = nh->max_connections;
  n->cfg->access_log = c->access_log;
  struct http_server_limits lim = {
      .max_header_bytes = oh->max_header_bytes,
      .max_headers = oh->max_headers,
      .header_timeout_ms = oh->header_timeout_ms,
      .idle_timeout_ms = oh->idle_timeout_ms,
      .send_timeout_ms = oh->send_timeout_ms,
      .max_connections = oh->max_connections,
      .no_access_log = !n->cfg->access_log,
  };
  if (n->http)
    http_server_set_limits(n->http, &lim);
  key_add(applied, "%s", "http timeouts/max_connections/access_log");
}

static void apply_access(struct node *n, struct config *c, struct keylist *applied,
                         struct keylist *restart) {
  struct config *o = n->cfg;
  if (o->allow_set != c->allow_set || o->n_allow != c->n_allow ||
      (o->n_allow && memcmp(o->allow, c->allow, o->n_allow * sizeof *o->allow) != 0)) {
    /* access_allowed reads n->cfg at every accept */
    struct config_cidr *t = o->allow;
    o->allow = c->allow;
    c->allow = t;
    size_t tn = o->n_allow;
    o->n_allow = c->n_allow;
    c->n_allow = tn;
    int ts = o->allow_set;
    o->allow_set = c->allow_set;
    c->allow_set = ts;
    key_add(applied, "%s", "allow");
  }
  if (str_eq(o->auth_htpasswd, c->auth_htpasswd))
    return;
  if (!o->auth_htpasswd || !c->auth_htpasswd) {
    key_add(restart, "%s", o->auth_htpasswd ? "auth (turned off)" : "auth (turned on)");
    return;
  }
  if (access_set_htpasswd(n->access, c->auth_htpasswd) == 0) {
    str_swap(&o->auth_htpasswd, &c->auth_htpasswd);
    key_add(applied, "%s", "auth.htpasswd");
  }
}

static void reload_apply(struct node *n, struct config *c) {
  struct config *o = n->cfg;
  struct keylist applied = {.n = 0}, restart = {.n = 0};
  enum log_level lvl;
  if (!str_eq(o->log_level, c->log_level) && c->log_level &&
      log_level_parse(c->log_level, &lvl) == 0) {
    log_set_level(lvl);
    str_swap(&o->log_level, &c->log_level);
    key_add(&applied, "%s", "log_level");
  }
  if (o->log_json != c->log_json) {
    log_set_format(c->log_json ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT);
    o->log_json = c->log_json;
    key_add(&applied, "%s", "log_format");
  }
  if (o->shutdown_timeout_ms != c->shutdown_timeout_ms) {
    o->shutdown_timeout_ms = c->shutdown_timeout_ms;
    key_add(&applied, "%s", "shutdown_timeout");
  }
  if (o->storage.max_size != c->storage.max_size) {
    o->storage.max_size = c->storage.max_size; /* the store has it: reload_job */
    key_add(&applied, "%s", "storage.max_size");
  }
  apply_http(n, c, &applied, &restart);
  apply_access(n, c, &applied, &restart);
  apply_upstreams(n, c, &applied, &restart);

  if (!str_eq(o->listen, c->listen))
    key_add(&restart, "%s", "listen");
  if (!str_eq(o->admin_listen, c->admin_listen))
    key_add(&restart, "%s", "admin_listen");
  if (!str_eq(o->storage.root, c->storage.root))
    key_add(&restart, "%s", "storage.root");
  if (!tls_eq(o->tls, c->tls))
    key_add(&restart, "%s", "tls (file names; the files themselves are reloaded)");
  if (!cluster_eq(&o->cluster, &c->cluster))
    key_add(&restart, "%s", "cluster");
  if (!proxy_eq(&o->proxy, &c->proxy))
    key_add(&restart, "%s", "proxy");

  LOG_I("SIGHUP: %s reloaded; %s%s", o->path, applied.n ? "applied: " : "no change applied",
        applied.s);
  if (restart.n)
    LOG_W("SIGHUP: changed but not applied until the next restart: %s", restart.s);
}

static void reload_start(struct node *n);

static void reload_done(uv_work_t *w, int status) {
  struct node *n = w->data;
  struct config *c = n->reload_cfg;
  n->reload_cfg = NULL;
  n->reload_busy = 0;
  if (status == 0 && !n->stopping) {
    if (c) {
      reload_apply(n, c);
    } else {
      for (char *p = n->reload_err; (p = strchr(p, '\n')) != NULL;)
        *p = ';'; /* one log line: "a; b" */
      LOG_E("SIGHUP: %s refused, the running configuration stays: %s", n->cfg->path,
            n->reload_err);
    }
  }
  if (c) {
    config_free(c);
    free(c);
  }
  if (n->reload_again && !n->stopping) {
    n->reload_again = 0;
    reload_start(n); /* a SIGHUP came while the file was being read */
  }
}

static void reload_start(struct node *n) {
  if (n->reload_busy) {
    n->reload_again = 1; /* read it once more when this read is done */
    return;
  }
  n->reload_work.data = n;
  if (uv_queue_work(n->loop, &n->reload_work, reload_job, reload_done) == 0)
    n->reload_busy = 1;
}

void node_reload(struct node *n) {
  if (!n->cfg->path) {
    LOG_I("SIGHUP: running on the built-in configuration; nothing to re-read");
    return;
  }
  reload_start(n);
}
