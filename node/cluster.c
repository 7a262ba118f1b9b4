/* cluster.c - a node's membership in its fleet.
 *
 * Runs the gossip library (SWIM on memberlist's wire) on the node's loop,
 * keeps one struct cluster_peer per member seen (state, gossip address and
 * what its serf tags say: registry URL, weight, zone, version, rate-limit
 * budget), rebuilds the hash ring when the set of live members changes, and
 * turns "who owns this key" into fetch plans and signed peer requests.
 * Joining runs in the background: seeds are resolved with DNS (every
 * address of a name), and resolved and joined again for as long as this
 * node is alone, so seeds may come up after us.
 */
#include "cluster.h"

#include "holders.h"
#include "http_server.h"
#include "metrics.h"
#include "node.h"
#include "upstream.h"

#include "../common/errors.h"
#include "../common/log.h"
#include "../common/strmap.h"
#include "../config/config.h"
#include "../storage/storage.h"
#include "../gossip/env_uv.h"
#include "../gossip/keyring.h"
#include "../gossip/ring.h"
#include "../gossip/swim.h"
#include "../gossip/wire.h"

#include <inttypes.h>
#include <jansson.h>
#include <netdb.h>
#include <stdio.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TICK_MS 1000
#define JOIN_RETRY_MS 10000
#define META_MIN_INTERVAL_MS 5000 /* rate-limit news never floods gossip */
#define SEEDS_MAX 64
#define QUARANTINE_DIGEST_MS (10 * 60 * 1000)
#define QUARANTINE_STALL_MS (30 * 1000)
#define QUARANTINE_OTHER_MS (5 * 1000)
#define DELEGATES_MAX 2
#define PEER_URL_MAX 256
#define NOTICES_MAX 1024    /* notices to peers in flight; more are dropped */
#define FILLS_PARALLEL 2    /* replica fills running at once */
#define HANDOVER_WAIT_MS 2000
#define HANDOVER_SOURCES 2  /* hand-over holders asked before the upstream */

struct fill;

struct cluster_peer {
  char name[WIRE_NAME_MAX + 1];
  char url[PEER_URL_MAX];
  char zone[64];
  char version[32];
  char addr[64];
  unsigned weight;
  enum swim_state state;
  int is_self;
  struct upstream *http;       /* NULL for ourselves or without a URL */
  int64_t *rl;                 /* budget per configured upstream, -1 unknown */
  uint64_t quarantined_until;  /* loop time */
};

struct cluster {
  struct node *n;
  uv_loop_t *loop;
  const struct config_cluster *cfg;
  struct keyring kr;
  struct peerauth auth;
  struct gossip_uv *g;
  struct strmap peers; /* name -> struct cluster_peer */
  struct upstream **retired;
  size_t n_retired;
  struct ring *ring;
  struct cluster_peer *self;
  char self_url[PEER_URL_MAX];
  char rl_meta[200]; /* last published rl tag */
  uint64_t meta_at;
  uv_timer_t rebuild;
  uv_timer_t tick;
  uint64_t next_join;
  uint64_t conflicts_logged, next_conflict_log; /* name conflicts said so far */
  /* our gossip address as members see it (advertise, else the bound one) */
  char self_gossip[64];
  uint64_t self_conflicts_seen; /* swim's count at the last tick */
  uint64_t first_self_conflict; /* loop time: alone, and our name claimed */
  int renamed;
  /* seed resolution in progress */
  unsigned resolving;
  char seeds[SEEDS_MAX][80];
  size_t n_seeds;
  /* beyond the owner: who holds what we stream, our peer uploads, notices
   * in flight, and the replica fills waiting (a ring of replica_queue) */
  struct holders *holders;
  unsigned uploads;
  unsigned notices;
  struct fill **fillq;
  size_t fq_head, fq_len;
  unsigned fills_running;
  uv_timer_t handover_timer;
  int handover_waiting;
  int left; /* gossip told to leave */
  int stopping;
  int timers_init;
  unsigned open_handles;
  void (*stop_done)(void *ud);
  void *stop_ud;
};

/* ---- peers ---------------------------------------------------------------- */

static struct cluster_peer *peer_get(struct cluster *c, const char *name) {
  struct cluster_peer *p = strmap_get(&c->peers, name);
  if (p)
    return p;
  p = calloc(1, sizeof *p);
  int64_t *rl = calloc(c->n->cfg->n_upstreams ? c->n->cfg->n_upstreams : 1, sizeof *rl);
  if (!p || !rl || strmap_put(&c->peers, name, p) != 0) {
    free(p);
    free(rl);
    return NULL;
  }
  snprintf(p->name, sizeof p->name, "%s", name);
  p->rl = rl;
  for (size_t i = 0; i < c->n->cfg->n_upstreams; i++)
    p->rl[i] = -1;
  p->weight = 1;
  return p;
}

static int peer_usable(const struct cluster *c, const struct cluster_peer *p) {
  return p && !p->is_self && p->http &&
         (p->state == SWIM_ALIVE || p->state == SWIM_SUSPECT) &&
         uv_now(c->loop) >= p->quarantined_until;
}

/* "docker.io=93,ghcr.io=-1" -> p->rl by configured upstream. */
static void peer_parse_rl(struct cluster *c, struct cluster_peer *p, const char *v) {
  const struct config *cfg = c->n->cfg;
  for (size_t i = 0; i < cfg->n_upstreams; i++)
    p->rl[i] = -1;
  while (*v) {
    const char *comma = strchr(v, ',');
    size_t len = comma ? (size_t)(comma - v) : strlen(v);
    const char *eq = memchr(v, '=', len);
    if (eq) {
      const struct config_upstream *u = config_upstream_find(cfg, v, (size_t)(eq - v));
      if (u) {
        char num[24];
        size_t nl = len - (size_t)(eq + 1 - v);
        if (nl < sizeof num) {
          memcpy(num, eq + 1, nl);
          num[nl] = '\0';
          p->rl[u - cfg->upstreams] = strtoll(num, NULL, 10);
        }
      }
    }
    v += len + (comma ? 1 : 0);
  }
}

static void peer_set_url(struct cluster *c, struct cluster_peer *p, const char *url) {
  if (strcmp(p->url, url) == 0 && (p->http || !url[0]))
    return;
  if (p->http) {
    /* A request may still hold the old client: retire it, never free it. */
    struct upstream **r = realloc(c->retired, (c->n_retired + 1) * sizeof *r);
    if (!r)
      return;
    c->retired = r;
    c->retired[c->n_retired++] = p->http;
    p->http = NULL;
  }
  snprintf(p->url, sizeof p->url, "%s", url);
  if (!url[0] || p->is_self)
    return;
  if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) {
    LOG_W("cluster: member %s advertises a bad url '%s'; not used", p->name, url);
    return;
  }
  int r = upstream_new_peer(&p->http, c->n->upc, p->name, url, c->cfg->tls,
                            c->cfg->peer_timeout_ms,
                            c->cfg->peer_stall_timeout_ms);
  if (r)
    LOG_W("cluster: client for %s at %s: %s", p->name, url, rm_strerror(r));
}

static void peer_update(struct cluster *c, struct cluster_peer *p, const struct swim_member *m) {
  char v[PEER_URL_MAX];
  p->state = m->state;
  gossip_uv_format_addr(&m->addr, p->addr, sizeof p->addr);
  if (wire_tags_get(m->meta, m->meta_len, "zone", v, sizeof v) == 1)
    snprintf(p->zone, sizeof p->zone, "%.*s", (int)sizeof p->zone - 1, v);
  if (wire_tags_get(m->meta, m->meta_len, "version", v, sizeof v) == 1)
    snprintf(p->version, sizeof p->version, "%.*s", (int)sizeof p->version - 1, v);
  if (wire_tags_get(m->meta, m->meta_len, "weight", v, sizeof v) == 1) {
    long w = strtol(v, NULL, 10);
    p->weight = w >= 1 && w <= RING_WEIGHT_MAX ? (unsigned)w : 1;
  }
  if (wire_tags_get(m->meta, m->meta_len, "rl", v, sizeof v) == 1)
    peer_parse_rl(c, p, v);
  if (wire_tags_get(m->meta, m->meta_len, "url", v, sizeof v) == 1)
    peer_set_url(c, p, v);
  else
    peer_set_url(c, p, "");
}

/* ---- the ring ------------------------------------------------------------- */

struct ring_build {
  const char **names;
  unsigned *weights;
  size_t n, cap;
};

static void collect_live(const char *key, void *value, void *ud) {
  (void)key;
  struct cluster_peer *p = value;
  struct ring_build *b = ud;
  /* Suspects stay on the ring: moving keys on every suspicion would cost
   * more refills than asking a slow owner (which we skip on error anyway).
   * A member we cannot ask (no usable registry URL in its metadata: a serf
   * agent, a bad URL) owns nothing, or its keys would go upstream. */
  int reachable = p->is_self || p->http;
  if ((p->state == SWIM_ALIVE || p->state == SWIM_SUSPECT) && reachable &&
      b->n < b->cap) {
    b->names[b->n] = p->name;
    b->weights[b->n] = p->weight;
    b->n++;
  }
}

static void ring_rebuild(uv_timer_t *t) {
  struct cluster *c = t->data;
  struct ring_build b = {.cap = c->peers.count};
  b.names = calloc(b.cap ? b.cap : 1, sizeof *b.names);
  b.weights = calloc(b.cap ? b.cap : 1, sizeof *b.weights);
  if (!b.names || !b.weights) {
    free(b.names);
    free(b.weights);
    return;
  }
  strmap_each(&c->peers, collect_live, &b);
  int r = ring_set(c->ring, b.names, b.weights, b.n);
  if (r)
    LOG_W("cluster: ring update failed: %s", rm_strerror(r));
  else
    LOG_I("cluster: ring has %zu members", b.n);
  free(b.names);
  free(b.weights);
  cluster_update_metrics(c);
}

static void schedule_rebuild(struct cluster *c) {
  if (!c->stopping)
    uv_timer_start(&c->rebuild, ring_rebuild, 0, 0);
}

static void on_swim_event(void *ud, enum swim_event ev, const struct swim_member *m) {
  struct cluster *c = ud;
  struct cluster_peer *p = peer_get(c, m->name);
  if (!p)
    return;
  peer_update(c, p, m);
  if (ev == SWIM_EV_REAP)
    p->state = SWIM_DEAD;
  LOG_I("cluster: %s %s (%s) %s", m->name, swim_event_str(ev), p->addr, p->url);
  schedule_rebuild(c); /* also on updates: a weight may have changed */
}

/* Owners of key in preference order, as peers (self included). */
static size_t owners_of(struct cluster *c, const char *key, struct cluster_peer **out,
                        size_t max) {
  size_t idx[8];
  if (max > 8)
    max = 8;
  size_t n = ring_lookup(c->ring, key, strlen(key), idx, max);
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    struct cluster_peer *p = strmap_get(&c->peers, ring_member_name(c->ring, idx[i]));
    if (p)
      out[k++] = p;
  }
  return k;
}

/* ---- peer requests -------------------------------------------------------- */

static int peer_headers(struct cluster *c, const char *method, const char *target,
                        int delegate, char *out, size_t len, char *sig) {
  int n = snprintf(out, len, "%s: %s", CLUSTER_HOP_HEADER, c->self->name);
  if (c->auth.enabled) {
    char hdr[PEERAUTH_HDR_MAX], s[PEERAUTH_SIG_HEX + 1];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (peerauth_sign(&c->auth, method, target, c->self->name, now, hdr, s) == 0) {
      n += snprintf(out + n, len - (size_t)n, "\n%s: %s", CLUSTER_AUTH_HEADER, hdr);
      if (sig)
        memcpy(sig, s, sizeof s);
    }
  }
  if (delegate && (size_t)n < len)
    n += snprintf(out + n, len - (size_t)n, "\n%s: 1", CLUSTER_DELEGATE_HEADER);
  return n > 0 && (size_t)n < len ? 0 : UV_ENOBUFS;
}

static int add_peer_source(struct cluster *c, struct fetch_plan *plan,
                           enum fetch_source_kind kind, struct cluster_peer *p,
                           const char *target, const char *host) {
  if (plan->n >= FETCH_MAX_SOURCES)
    return UV_ENOBUFS;
  struct fetch_source *fs = &plan->src[plan->n];
  memset(fs, 0, sizeof *fs);
  fs->kind = kind;
  fs->u = p->http;
  snprintf(fs->label, sizeof fs->label, "peer:%s", p->name);
  snprintf(fs->query, sizeof fs->query, "?ns=%s", host);
  char full[900];
  snprintf(full, sizeof full, "%s%s", target, fs->query);
  if (peer_headers(c, "GET", full, kind == FETCH_SRC_DELEGATE, fs->headers,
                   sizeof fs->headers, NULL) != 0)
    return UV_ENOBUFS;
  plan->n++;
  return 0;
}

static int budget_spent(struct cluster *c, struct upstream *u) {
  struct upstream_ratelimit rl;
  upstream_get_ratelimit(u, &rl);
  if (rl.remaining != 0 || rl.seen_at_ms == 0)
    return 0;
  uint64_t window = rl.window_s > 0 ? (uint64_t)rl.window_s * 1000 : 60000;
  return uv_now(c->loop) < rl.seen_at_ms + window;
}

struct budget_scan {
  struct cluster *c;
  int up;
  struct cluster_peer *best[DELEGATES_MAX];
  size_t n;
};

static void collect_budget(const char *key, void *value, void *ud) {
  (void)key;
  struct cluster_peer *p = value;
  struct budget_scan *b = ud;
  /* A peer that saw no budget figure (-1) may still have one; only a known
   * 0 rules it out. Known budgets sort first. */
  if (!peer_usable(b->c, p) || p->rl[b->up] == 0)
    return;
  /* keep the DELEGATES_MAX richest, richest first */
  size_t i = b->n < DELEGATES_MAX ? b->n++ : DELEGATES_MAX;
  while (i > 0 && b->best[i - 1]->rl[b->up] < p->rl[b->up]) {
    if (i < DELEGATES_MAX)
      b->best[i] = b->best[i - 1];
    i--;
  }
  if (i < DELEGATES_MAX)
    b->best[i] = p;
}

/* A source that answers from its cache or in-flight download only. */
static void add_holder_source(struct cluster *c, struct fetch_plan *plan,
                              struct cluster_peer *p, const char *target, const char *host) {
  for (size_t i = 0; i < plan->n; i++)
    if (plan->src[i].u == p->http)
      return;
  if (add_peer_source(c, plan, FETCH_SRC_PEER, p, target, host) != 0)
    return;
  struct fetch_source *fs = &plan->src[plan->n - 1];
  size_t l = strlen(fs->headers);
  snprintf(fs->headers + l, sizeof fs->headers - l, "\n%s: 1", CLUSTER_HOLDER_ONLY_HEADER);
}

void cluster_plan(struct cluster *c, int is_manifest, const char *hex, const char *repo,
                  int up, const char *asker, struct fetch_plan *plan) {
  struct upstream *u = c->n->ups[up];
  const char *host = c->n->cfg->upstreams[up].host;
  memset(plan, 0, sizeof *plan);
  plan->up = up;
  char target[700];
  snprintf(target, sizeof target, "/v2/%s/%s/sha256:%s", repo,
           is_manifest ? "manifests" : "blobs", hex);
  struct cluster_peer *own[8];
  unsigned want = c->cfg->replicas < 2 ? 2 : c->cfg->replicas;
  size_t n = owners_of(c, hex, own, want);
  if (n > 0 && own[0]->is_self) {
    /* Hand-over: the fleet may hold what we now own (a node joined, an
     * owner left): ask the holders we were told of, then the owner the
     * ring had without us, before the upstream. */
    const char *known[HANDOVER_SOURCES];
    size_t k = is_manifest ? 0
                           : holders_known(c->holders, hex, uv_now(c->loop), known,
                                           HANDOVER_SOURCES);
    for (size_t i = 0; i < k; i++) {
      struct cluster_peer *p = strmap_get(&c->peers, known[i]);
      if (peer_usable(c, p) && (!asker || strcmp(p->name, asker) != 0))
        add_holder_source(c, plan, p, target, host);
    }
    if (n > 1 && peer_usable(c, own[1]) && (!asker || strcmp(own[1]->name, asker) != 0))
      add_holder_source(c, plan, own[1], target, host);
  } else if (!asker) {
    for (size_t i = 0; i < n && i < c->cfg->replicas; i++)
      if (peer_usable(c, own[i]))
        add_peer_source(c, plan, FETCH_SRC_PEER, own[i], target, host);
  }
  struct budget_scan b = {.c = c, .up = up};
  int spent = 0;
  if (is_manifest && c->auth.enabled && !asker) {
    strmap_each(&c->peers, collect_budget, &b);
    spent = budget_spent(c, u);
  }
  if (spent)
    for (size_t i = 0; i < b.n; i++)
      add_peer_source(c, plan, FETCH_SRC_DELEGATE, b.best[i], target, host);
  if (plan->n < FETCH_MAX_SOURCES) {
    struct fetch_source *fs = &plan->src[plan->n++];
    fs->kind = FETCH_SRC_UPSTREAM;
    fs->u = u;
    snprintf(fs->label, sizeof fs->label, "%s", host);
  }
  if (!spent)
    for (size_t i = 0; i < b.n; i++)
      add_peer_source(c, plan, FETCH_SRC_DELEGATE, b.best[i], target, host);
}

struct upstream *cluster_owner_peer(struct cluster *c, const char *key, const char *method,
                                    const char *target, int need_auth, char *hdrs,
                                    size_t hdrs_len, char *sig) {
  if (need_auth && !c->auth.enabled)
    return NULL;
  struct cluster_peer *own[8];
  size_t n = owners_of(c, key, own, c->cfg->replicas);
  for (size_t i = 0; i < n; i++) {
    if (own[i]->is_self)
      return NULL;
    if (peer_usable(c, own[i]) &&
        peer_headers(c, method, target, 0, hdrs, hdrs_len, sig) == 0)
      return own[i]->http;
  }
  return NULL;
}

static void on_peer_error(void *ud, const struct fetch_source *src, int err) {
  struct cluster *c = ud;
  if (strncmp(src->label, "peer:", 5) != 0)
    return;
  struct cluster_peer *p = strmap_get(&c->peers, src->label + 5);
  const char *kind = "other";
  uint64_t q = QUARANTINE_OTHER_MS;
  if (err == RM_EDIGEST) {
    kind = "digest";
    q = QUARANTINE_DIGEST_MS;
  } else if (err == UV_ETIMEDOUT) {
    kind = "stall";
    q = QUARANTINE_STALL_MS;
  } else if (err == RM_EUNREACH || err == UV_ECONNREFUSED || err == UV_ECONNRESET) {
    kind = "unreachable";
  } else if (err == RM_ESIZE) {
    kind = "broken";
  } else if (err == RM_ENOTFOUND || err == RM_EUPSTREAM || err == RM_ERATELIMIT ||
             err == RM_EAUTH) {
    kind = "status";
    q = 0; /* the peer is fine; its upstream said no */
  }
  char labels[64];
  snprintf(labels, sizeof labels, "kind=\"%s\"", kind);
  metrics_add("regmesh_peer_errors_total", labels, 1);
  if (p && q) {
    p->quarantined_until = uv_now(c->loop) + q;
    LOG_W("cluster: peer %s failed (%s); not asked for %" PRIu64 " s", p->name,
          rm_strerror(err), q / 1000);
  }
}

/* ---- beyond the owner ------------------------------------------------------
 *
 * A node streaming a blob to `fanout` peers sends further askers to
 * holders (holders.c), so a hot blob spreads down a tree; the first owner
 * asks the next owners to keep a replica; a node leaving tells the new
 * owners who holds its keys. Notices are signed HEADs of the content's
 * path with X-Regmesh-Notice, so the peer listener's checks cover them. */

static int rank_holder(void *ud, const char *asker, const char *cand) {
  struct cluster *c = ud;
  struct cluster_peer *p = strmap_get(&c->peers, cand);
  if (!peer_usable(c, p))
    return -1;
  struct cluster_peer *a = strmap_get(&c->peers, asker);
  return a && a->zone[0] && strcmp(a->zone, p->zone) == 0 ? 0 : 1;
}

enum cluster_upload cluster_upload_decide(struct cluster *c, const char *hex,
                                          const char *asker, const char *repo,
                                          const char *ns, const char *target,
                                          int may_redirect, char *holders, size_t hl,
                                          char *location, size_t ll) {
  uint64_t now = uv_now(c->loop);
  holders_note(c->holders, hex, asker, 0, repo, ns, now);
  int full = c->uploads >= c->cfg->max_peer_uploads;
  if (may_redirect && c->cfg->fanout > 0 &&
      (full || holders_uploads(c->holders, hex) >= c->cfg->fanout)) {
    const char *names[2];
    size_t k = holders_pick(c->holders, hex, asker, c->cfg->fanout, now, rank_holder, c,
                            names, 2);
    if (k > 0) {
      struct cluster_peer *first = strmap_get(&c->peers, names[0]);
      snprintf(holders, hl, "%s%s%s", names[0], k > 1 ? "," : "", k > 1 ? names[1] : "");
      snprintf(location, ll, "%s%s", first ? first->url : "", target);
      metrics_add("regmesh_peer_upload_decisions_total", "decision=\"redirect\"", 1);
      return CLUSTER_REDIRECT;
    }
  }
  if (full) {
    metrics_add("regmesh_peer_upload_decisions_total", "decision=\"busy\"", 1);
    return CLUSTER_BUSY;
  }
  metrics_add("regmesh_peer_upload_decisions_total", "decision=\"serve\"", 1);
  return CLUSTER_SERVE;
}

void cluster_upload_begin(struct cluster *c, const char *hex) {
  c->uploads++;
  holders_upload_begin(c->holders, hex);
  metrics_add("regmesh_peer_uploads_total", "", 1);
  metrics_set("regmesh_peer_uploads_active", "", c->uploads);
}

void cluster_upload_end(struct cluster *c, const char *hex) {
  if (c->uploads)
    c->uploads--;
  holders_upload_end(c->holders, hex);
  metrics_set("regmesh_peer_uploads_active", "", c->uploads);
}

static void content_target(char *out, size_t len, enum fetch_kind kind, const char *hex,
                           const char *repo) {
  snprintf(out, len, "/v2/%s/%s/sha256:%s", repo,
           kind == FETCH_MANIFEST ? "manifests" : "blobs", hex);
}

/* The sources a busy peer named: each asked for what it has or is
 * downloading, then the busy peer again, told to serve it itself. */
static size_t on_redirect(void *ud, enum fetch_kind kind, const char *hex, const char *repo,
                          int up, const struct fetch_source *from, const char *list,
                          struct fetch_source *out, size_t max) {
  struct cluster *c = ud;
  if (up < 0 || (size_t)up >= c->n->cfg->n_upstreams || strncmp(from->label, "peer:", 5))
    return 0;
  const char *host = c->n->cfg->upstreams[up].host;
  char target[700];
  content_target(target, sizeof target, kind, hex, repo);
  struct fetch_plan tmp;
  memset(&tmp, 0, sizeof tmp);
  char names[4][HOLDERS_NAME_MAX];
  size_t k = holders_parse_list(list, names, 4);
  for (size_t i = 0; i < k && tmp.n < 2 && tmp.n + 1 < max; i++) {
    struct cluster_peer *p = strmap_get(&c->peers, names[i]);
    if (peer_usable(c, p))
      add_holder_source(c, &tmp, p, target, host);
  }
  struct cluster_peer *busy = strmap_get(&c->peers, from->label + 5);
  if (tmp.n < max && busy && busy->http &&
      add_peer_source(c, &tmp, FETCH_SRC_PEER, busy, target, host) == 0) {
    struct fetch_source *fs = &tmp.src[tmp.n - 1];
    size_t l = strlen(fs->headers);
    snprintf(fs->headers + l, sizeof fs->headers - l, "\n%s: 1", CLUSTER_NO_REDIRECT_HEADER);
  }
  memcpy(out, tmp.src, tmp.n * sizeof tmp.src[0]);
  return tmp.n;
}

/* -- notices: fire and forget, bounded -- */

struct notice {
  struct cluster *c;
  char kind[16];
};

static int notice_headers(void *ud, const struct upstream_response *resp) {
  struct notice *nt = ud;
  char labels[80];
  snprintf(labels, sizeof labels, "kind=\"%s\",result=\"%s\"", nt->kind,
           resp->status < 300 ? "ok" : "refused");
  metrics_add("regmesh_peer_notices_total", labels, 1);
  return 0;
}

static int notice_data(void *ud, const char *p, size_t n) {
  (void)ud;
  (void)p;
  (void)n;
  return 0;
}

static void handover_maybe_done(struct cluster *c);

static void notice_done(void *ud, int err) {
  struct notice *nt = ud;
  struct cluster *c = nt->c;
  if (err) {
    char labels[80];
    snprintf(labels, sizeof labels, "kind=\"%s\",result=\"failed\"", nt->kind);
    metrics_add("regmesh_peer_notices_total", labels, 1);
  }
  free(nt);
  c->notices--;
  handover_maybe_done(c);
}

static const struct upstream_cbs notice_cbs = {
    .on_headers = notice_headers, .on_data = notice_data, .on_done = notice_done};

static int send_notice(struct cluster *c, struct cluster_peer *p, const char *kind,
                       enum fetch_kind fk, const char *hex, const char *repo, const char *ns,
                       const char *holders) {
  if (!peer_usable(c, p) || !repo[0] || !ns[0])
    return UV_EINVAL;
  if (c->notices >= NOTICES_MAX) {
    char labels[80];
    snprintf(labels, sizeof labels, "kind=\"%s\",result=\"dropped\"", kind);
    metrics_add("regmesh_peer_notices_total", labels, 1);
    return UV_ENOBUFS;
  }
  char target[900], hdrs[600];
  content_target(target, sizeof target, fk, hex, repo);
  size_t tl = strlen(target);
  snprintf(target + tl, sizeof target - tl, "?ns=%s", ns);
  if (peer_headers(c, "HEAD", target, 0, hdrs, sizeof hdrs, NULL) != 0)
    return UV_ENOBUFS;
  size_t l = strlen(hdrs);
  int w = snprintf(hdrs + l, sizeof hdrs - l, "\n%s: %s", CLUSTER_NOTICE_HEADER, kind);
  if (holders && w > 0 && (size_t)w < sizeof hdrs - l) {
    l += (size_t)w;
    w = snprintf(hdrs + l, sizeof hdrs - l, "\n%s: %s", CLUSTER_HOLDERS_HEADER, holders);
  }
  if (w < 0 || (size_t)w >= sizeof hdrs - l)
    return UV_ENOBUFS;
  struct notice *nt = calloc(1, sizeof *nt);
  if (!nt)
    return UV_ENOMEM;
  nt->c = c;
  snprintf(nt->kind, sizeof nt->kind, "%s", kind);
  struct upstream_fetch_opts o = {
      .method = UPSTREAM_HEAD, .path = target, .kind = "notice", .extra_headers = hdrs};
  int r = upstream_fetch(p->http, &o, &notice_cbs, nt, NULL);
  if (r) {
    free(nt);
    return r;
  }
  c->notices++;
  return 0;
}

/* -- replica fills: a queue, FILLS_PARALLEL at a time, rate-capped -- */

struct fill {
  struct fetch_waiter w;
  struct cluster *c;
  enum fetch_kind kind;
  int up;
  char hex[65];
  char repo[320];
  char from[WIRE_NAME_MAX + 1];
};

static void fills_pump(struct cluster *c);

static void fill_gauge(struct cluster *c) {
  metrics_set("regmesh_replica_queue", "", (int64_t)c->fq_len);
  metrics_set("regmesh_replica_fills_running", "", c->fills_running);
}

static void fill_end(struct fill *f, int err) {
  struct cluster *c = f->c;
  fetcher_leave(&f->w);
  metrics_add("regmesh_replica_fills_total", err ? "result=\"failed\"" : "result=\"done\"",
              1);
  if (err)
    LOG_I("cluster: replica of sha256:%s from %s failed: %s", f->hex, f->from,
          rm_strerror(err));
  free(f);
  c->fills_running--;
  fill_gauge(c);
  fills_pump(c);
}

static void fill_on_ready(struct fetch_waiter *w, int err) {
  if (err)
    fill_end((struct fill *)w, err); /* final: no on_done follows */
}

static void fill_on_data(struct fetch_waiter *w) { (void)w; }

static void fill_on_done(struct fetch_waiter *w, int err) { fill_end((struct fill *)w, err); }

static int have_content(struct cluster *c, enum fetch_kind kind, const char *hex) {
  struct blob_info info;
  return blobstore_peek(c->n->bs, hex, &info) == 0 || fetcher_find(c->n->fetcher, kind, hex);
}

static void fill_start(struct cluster *c, struct fill *f) {
  struct cluster_peer *p = strmap_get(&c->peers, f->from);
  if (have_content(c, f->kind, f->hex) || !peer_usable(c, p)) {
    metrics_add("regmesh_replica_fills_total", "result=\"skipped\"", 1);
    free(f);
    return;
  }
  char target[700];
  content_target(target, sizeof target, f->kind, f->hex, f->repo);
  struct fetch_plan plan;
  memset(&plan, 0, sizeof plan);
  plan.up = f->up;
  add_holder_source(c, &plan, p, target, c->n->cfg->upstreams[f->up].host);
  if (plan.n == 0) {
    free(f);
    return;
  }
  plan.src[0].rate = c->cfg->replica_rate;
  f->w.on_ready = fill_on_ready;
  f->w.on_data = fill_on_data;
  f->w.on_done = fill_on_done;
  int r = fetcher_join(c->n->fetcher, f->kind, f->hex, &plan, f->repo, &f->w);
  if (r) {
    metrics_add("regmesh_replica_fills_total", "result=\"failed\"", 1);
    free(f);
    return;
  }
  c->fills_running++;
}

static void fills_pump(struct cluster *c) {
  while (!c->stopping && c->fills_running < FILLS_PARALLEL && c->fq_len > 0) {
    struct fill *f = c->fillq[c->fq_head];
    c->fq_head = (c->fq_head + 1) % c->cfg->replica_queue;
    c->fq_len--;
    fill_start(c, f);
  }
  fill_gauge(c);
}

static int fill_enqueue(struct cluster *c, enum fetch_kind kind, const char *hex,
                        const char *repo, int up, const char *from) {
  if (have_content(c, kind, hex))
    return 200;
  if (c->fq_len >= c->cfg->replica_queue || c->stopping) {
    metrics_add("regmesh_replica_fills_total", "result=\"dropped\"", 1);
    return 503;
  }
  for (size_t i = 0; i < c->fq_len; i++)
    if (strcmp(c->fillq[(c->fq_head + i) % c->cfg->replica_queue]->hex, hex) == 0)
      return 202;
  struct fill *f = calloc(1, sizeof *f);
  if (!f)
    return 503;
  f->c = c;
  f->kind = kind;
  f->up = up;
  snprintf(f->hex, sizeof f->hex, "%s", hex);
  snprintf(f->repo, sizeof f->repo, "%s", repo);
  snprintf(f->from, sizeof f->from, "%s", from);
  c->fillq[(c->fq_head + c->fq_len) % c->cfg->replica_queue] = f;
  c->fq_len++;
  fills_pump(c);
  return 202;
}

int cluster_notice(struct cluster *c, const char *kind, int is_manifest, const char *hex,
                   const char *repo, int up, const char *from, const char *holders) {
  uint64_t now = uv_now(c->loop);
  if (strcmp(kind, "held") == 0) {
    holders_note(c->holders, hex, from, 1, repo, c->n->cfg->upstreams[up].host, now);
    return 200;
  }
  if (strcmp(kind, "replicate") == 0)
    return fill_enqueue(c, is_manifest ? FETCH_MANIFEST : FETCH_BLOB, hex, repo, up, from);
  if (strcmp(kind, "handover") == 0 && holders) {
    char names[8][HOLDERS_NAME_MAX];
    size_t k = holders_parse_list(holders, names, 8);
    for (size_t i = 0; i < k; i++)
      if (strcmp(names[i], c->self->name) != 0)
        holders_note(c->holders, hex, names[i], 1, repo, c->n->cfg->upstreams[up].host, now);
    metrics_add("regmesh_handover_received_total", "", 1);
    return 200;
  }
  return 400;
}

/* Stored: the first owner asks the next ones to keep a replica; anyone
 * else tells the first owner it holds the blob now. */
static void on_commit(void *ud, enum fetch_kind kind, const char *hex, const char *repo,
                      int up) {
  struct cluster *c = ud;
  if (c->stopping || up < 0 || (size_t)up >= c->n->cfg->n_upstreams)
    return;
  const char *ns = c->n->cfg->upstreams[up].host;
  struct cluster_peer *own[8];
  size_t n = owners_of(c, hex, own, c->cfg->replicas);
  if (n == 0)
    return;
  if (own[0]->is_self) {
    for (size_t i = 1; i < n; i++)
      send_notice(c, own[i], "replicate", kind, hex, repo, ns, NULL);
  } else if (kind == FETCH_BLOB) {
    send_notice(c, own[0], "held", kind, hex, repo, ns, NULL);
  }
}

/* -- leaving: tell the new owners who holds our keys -- */

static void handover_one(void *ud, const char *hex, const char *const *names, size_t k,
                         const char *repo, const char *ns) {
  struct cluster *c = ud;
  if (!repo[0] || !ns[0])
    return;
  struct cluster_peer *own[2];
  size_t n = owners_of(c, hex, own, 2);
  if (n < 2 || !own[0]->is_self)
    return; /* not ours */
  char list[200];
  size_t l = 0;
  list[0] = '\0';
  for (size_t i = 0; i < k; i++) {
    size_t nl = strlen(names[i]);
    if (strcmp(names[i], own[1]->name) == 0 || l + nl + 2 >= sizeof list)
      continue;
    l += (size_t)snprintf(list + l, sizeof list - l, "%s%s", l ? "," : "", names[i]);
  }
  if (l)
    send_notice(c, own[1], "handover", FETCH_BLOB, hex, repo, ns, list);
}

static void leave_now(struct cluster *c);

static void handover_maybe_done(struct cluster *c) {
  if (c->handover_waiting && c->notices == 0) {
    c->handover_waiting = 0;
    uv_timer_stop(&c->handover_timer);
    leave_now(c);
  }
}

static void on_handover_timeout(uv_timer_t *t) {
  struct cluster *c = t->data;
  if (!c->handover_waiting)
    return;
  LOG_W("cluster: %u hand-over notice(s) unanswered after %d ms; leaving", c->notices,
        HANDOVER_WAIT_MS);
  c->handover_waiting = 0;
  leave_now(c);
}

/* ---- metadata ------------------------------------------------------------- */

static void rl_string(struct cluster *c, char *out, size_t len) {
  size_t k = 0;
  out[0] = '\0';
  for (size_t i = 0; i < c->n->cfg->n_upstreams; i++) {
    struct upstream_ratelimit rl;
    upstream_get_ratelimit(c->n->ups[i], &rl);
    int64_t v = rl.remaining;
    uint64_t window = rl.window_s > 0 ? (uint64_t)rl.window_s * 1000 : 60000;
    if (rl.seen_at_ms == 0 || uv_now(c->loop) >= rl.seen_at_ms + window)
      v = -1; /* nothing seen, or a window ago: unknown */
    int n = snprintf(out + k, len - k, "%s%s=%" PRId64, k ? "," : "",
                     c->n->cfg->upstreams[i].host, v);
    if (n < 0 || (size_t)n >= len - k) {
      out[k] = '\0'; /* the rest does not fit the 512-byte metadata */
      break;
    }
    k += (size_t)n;
  }
}

static int build_meta(struct cluster *c, uint8_t *meta, size_t cap) {
  char weight[8];
  snprintf(weight, sizeof weight, "%u", c->cfg->weight);
  const char *keys[] = {"url", "weight", "zone", "version", "rl"};
  const char *vals[] = {c->self_url, weight, c->cfg->zone ? c->cfg->zone : "",
                        REGMESH_VERSION, c->rl_meta};
  int n = wire_tags_encode(meta, cap, keys, vals, 5);
  if (n < 0) /* without the budget it always fits (url and zone are bounded) */
    n = wire_tags_encode(meta, cap, keys, vals, 4);
  return n;
}

static void maybe_publish_rl(struct cluster *c) {
  char rl[sizeof c->rl_meta];
  rl_string(c, rl, sizeof rl);
  if (strcmp(rl, c->rl_meta) == 0 || uv_now(c->loop) < c->meta_at + META_MIN_INTERVAL_MS)
    return;
  snprintf(c->rl_meta, sizeof c->rl_meta, "%s", rl);
  uint8_t meta[WIRE_META_MAX];
  int n = build_meta(c, meta, sizeof meta);
  if (n > 0 && gossip_uv_set_meta(c->g, meta, (size_t)n) == 0)
    c->meta_at = uv_now(c->loop);
}

/* ---- joining -------------------------------------------------------------- */

static void join_now(struct cluster *c) {
  if (c->n_seeds == 0 || c->stopping)
    return;
  const char *list[SEEDS_MAX];
  for (size_t i = 0; i < c->n_seeds; i++)
    list[i] = c->seeds[i];
  int r = gossip_uv_join(c->g, list, c->n_seeds);
  if (r)
    LOG_W("cluster: join: %s", rm_strerror(r));
  else
    LOG_I("cluster: joining through %zu seed address(es)", c->n_seeds);
}

static void add_seed(struct cluster *c, const char *s) {
  char self[64];
  gossip_uv_format_addr(gossip_uv_addr(c->g), self, sizeof self);
  if (strcmp(s, self) == 0 || c->n_seeds >= SEEDS_MAX)
    return;
  for (size_t i = 0; i < c->n_seeds; i++)
    if (strcmp(c->seeds[i], s) == 0)
      return;
  snprintf(c->seeds[c->n_seeds++], sizeof c->seeds[0], "%s", s);
}

static void maybe_done(struct cluster *c);

struct resolve {
  uv_getaddrinfo_t req;
  struct cluster *c;
  char port[8];
  char host[256];
};

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  struct resolve *rs = req->data;
  struct cluster *c = rs->c;
  if (status)
    LOG_W("cluster: cannot resolve seed %s: %s", rs->host, uv_strerror(status));
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    char ip[64], s[80];
    if (a->ai_family == AF_INET)
      uv_ip4_name((struct sockaddr_in *)a->ai_addr, ip, sizeof ip);
    else if (a->ai_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)a->ai_addr, ip, sizeof ip);
    else
      continue;
    snprintf(s, sizeof s, a->ai_family == AF_INET6 ? "[%s]:%s" : "%s:%s", ip, rs->port);
    if (!c->stopping)
      add_seed(c, s);
  }
  uv_freeaddrinfo(res);
  free(rs);
  c->open_handles--;
  if (--c->resolving == 0 && !c->stopping)
    join_now(c);
  maybe_done(c);
}

/* Splits "host:port" / "[v6]:port" / "host" (port 7946). */
static int split_seed(const char *s, char *host, size_t hl, char *port, size_t pl) {
  const char *colon;
  if (s[0] == '[') {
    const char *rb = strchr(s, ']');
    if (!rb)
      return UV_EINVAL;
    snprintf(host, hl, "%.*s", (int)(rb - s - 1), s + 1);
    colon = rb[1] == ':' ? rb + 1 : NULL;
  } else {
    colon = strrchr(s, ':');
    snprintf(host, hl, "%.*s", colon ? (int)(colon - s) : (int)strlen(s), s);
  }
  snprintf(port, pl, "%s", colon ? colon + 1 : "7946");
  return 0;
}

static void resolve_seeds(struct cluster *c) {
  if (c->resolving || c->stopping)
    return;
  c->n_seeds = 0;
  const struct config_cluster *cc = c->cfg;
  c->resolving = 1; /* held while starting, so join_now runs once */
  for (size_t i = 0; i < cc->n_join; i++) {
    struct resolve *rs = calloc(1, sizeof *rs);
    if (!rs)
      break;
    rs->c = c;
    rs->req.data = rs;
    if (split_seed(cc->join[i], rs->host, sizeof rs->host, rs->port, sizeof rs->port)) {
      free(rs);
      continue;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_DGRAM};
    c->resolving++;
    c->open_handles++;
    if (uv_getaddrinfo(c->loop, &rs->req, on_resolved, rs->host, rs->port, &hints) != 0) {
      c->resolving--;
      c->open_handles--;
      free(rs);
    }
  }
  if (--c->resolving == 0)
    join_now(c);
}

/* ---- a default name somebody else has ----
 * Cloned machines share host names. A node whose cluster.name is the
 * default (its host name), that finds another member claiming that name
 * and is alone because of it (nobody took its alive), takes
 * "<host name>-<advertise ip>" (with the port if even that is taken). A
 * node already in a fleet never renames: the newcomer does, so no fleet's
 * keys move. Of two lone clones the one with the greater address renames
 * at once; the other waits RENAME_GRACE_MS (two join retries, time for the
 * first to rename and join it) in case its claimant never renames (an
 * explicit name). */
#define RENAME_GRACE_MS (2 * JOIN_RETRY_MS + 5000)

static void maybe_rename(struct cluster *c, const struct swim_stats *st, uint64_t now) {
  if (!c->cfg->name_defaulted || c->renamed)
    return;
  struct swim *sw = gossip_uv_swim(c->g);
  if (swim_num_alive(sw) > 1) {
    c->first_self_conflict = 0;
    c->self_conflicts_seen = st->self_conflicts;
    return;
  }
  if (st->self_conflicts != c->self_conflicts_seen) {
    c->self_conflicts_seen = st->self_conflicts;
    if (!c->first_self_conflict)
      c->first_self_conflict = now;
  }
  if (!c->first_self_conflict)
    return;
  char theirs[64];
  gossip_uv_format_addr(&st->self_conflict_from, theirs, sizeof theirs);
  if (strcmp(c->self_gossip, theirs) <= 0 && now - c->first_self_conflict < RENAME_GRACE_MS)
    return;
  char ip[64], name[WIRE_NAME_MAX + 1];
  snprintf(ip, sizeof ip, "%s", c->self_gossip);
  char *colon = strrchr(ip, ':');
  if (colon)
    *colon = '\0';
  snprintf(name, sizeof name, "%s-%s", c->cfg->name, ip);
  int r = swim_rename(sw, name);
  if (r == -EEXIST) {
    snprintf(name, sizeof name, "%s-%s", c->cfg->name, c->self_gossip);
    r = swim_rename(sw, name);
  }
  if (r) {
    c->renamed = 1; /* once: the conflict stays logged as an error */
    LOG_E("cluster: cannot take a name of our own (%s): %s", name, rm_strerror(r));
    return;
  }
  LOG_W("cluster: member %s at %s has our default name (the host name); this node is "
        "now %s (set cluster.name to choose)",
        c->cfg->name, theirs, name);
  strmap_del(&c->peers, c->self->name);
  snprintf(c->self->name, sizeof c->self->name, "%s", name);
  if (strmap_put(&c->peers, c->self->name, c->self) != 0)
    LOG_E("cluster: out of memory renaming ourselves");
  c->renamed = 1;
  c->next_join = now; /* the claimant never took us: join again now */
  schedule_rebuild(c);
}

static void on_tick(uv_timer_t *t) {
  struct cluster *c = t->data;
  if (c->stopping)
    return;
  maybe_publish_rl(c);
  uint64_t now = uv_now(c->loop);
  /* Cloned machines share host names, and a fleet that silently never
   * forms is the symptom: say it as an error, once a minute while it lasts. */
  struct swim_stats st = {0};
  if (c->g)
    swim_get_stats(gossip_uv_swim(c->g), &st);
  if (st.name_conflicts > c->conflicts_logged && now >= c->next_conflict_log) {
    LOG_E("cluster: member name conflict: %s (%llu so far); every node needs its own "
          "cluster.name (cloned machines share host names)",
          st.last_conflict, (unsigned long long)st.name_conflicts);
    c->conflicts_logged = st.name_conflicts;
    c->next_conflict_log = now + 60 * 1000;
  }
  if (c->g)
    maybe_rename(c, &st, now);
  if (c->cfg->n_join && swim_num_alive(gossip_uv_swim(c->g)) <= 1 && now >= c->next_join) {
    c->next_join = now + JOIN_RETRY_MS;
    resolve_seeds(c);
  }
}

/* ---- start and stop ------------------------------------------------------- */

static int listen_port(struct node *n) {
  int p = http_server_bound_port(n->http, NODE_LISTENER_PEER);
  return p > 0 ? p : 0;
}

int cluster_start(struct cluster **out, struct node *n) {
  const struct config_cluster *cc = &n->cfg->cluster;
  struct cluster *c = calloc(1, sizeof *c);
  if (!c)
    return UV_ENOMEM;
  c->n = n;
  c->loop = n->loop;
  c->cfg = cc;
  strmap_init(&c->peers);
  *out = c;
  int r = ring_new(&c->ring, 0);
  if (r)
    return r;
  keyring_init(&c->kr);
  if (cc->secret_len && (r = keyring_add(&c->kr, cc->secret, cc->secret_len)) != 0)
    return r;
  peerauth_init(&c->auth, cc->secret, cc->secret_len);
  if (!c->auth.enabled)
    LOG_W("cluster: no secret: gossip is not encrypted, peer requests are not signed, "
          "and tags are resolved by each node itself");

  struct swim_config sc;
  swim_config_lan(&sc);
  snprintf(sc.name, sizeof sc.name, "%s", cc->name);
  if (cc->advertise && (r = gossip_uv_parse_addr(cc->advertise, &sc.advertise)) != 0) {
    LOG_E("cluster.advertise %s is not ip:port", cc->advertise);
    return r;
  }
  sc.keyring = cc->secret_len ? &c->kr : NULL;
  sc.probe_interval_ms = cc->probe_interval_ms;
  sc.probe_timeout_ms = cc->probe_timeout_ms;
  sc.push_pull_interval_ms = cc->push_pull_interval_ms;
  /* The URL goes into the metadata, so the address must be known first:
   * start without metadata, then set it (nobody has heard of us yet). */
  sc.meta_len = 0;
  struct swim_callbacks cb = {.ud = c, .on_event = on_swim_event};
  r = gossip_uv_start(&c->g, c->loop, &sc, cc->bind, &cb);
  if (r) {
    LOG_E("cluster: cannot start gossip on %s: %s%s", cc->bind, rm_strerror(r),
          cc->advertise ? "" : " (set cluster.advertise when bind is 0.0.0.0)");
    return r;
  }
  char gaddr[64];
  gossip_uv_format_addr(gossip_uv_addr(c->g), gaddr, sizeof gaddr);
  gossip_uv_format_addr(sc.advertise.ip_len ? &sc.advertise : gossip_uv_addr(c->g),
                        c->self_gossip, sizeof c->self_gossip);
  if (cc->peer_url) {
    snprintf(c->self_url, sizeof c->self_url, "%s", cc->peer_url);
  } else {
    struct wire_addr adv = sc.advertise;
    if (adv.ip_len == 0)
      adv = *gossip_uv_addr(c->g);
    char a[64];
    gossip_uv_format_addr(&adv, a, sizeof a);
    char *colon = strrchr(a, ':');
    if (colon)
      *colon = '\0';
    snprintf(c->self_url, sizeof c->self_url, "%s://%s:%d", cc->tls ? "https" : "http",
             a, listen_port(n));
  }
  rl_string(c, c->rl_meta, sizeof c->rl_meta);
  uint8_t meta[WIRE_META_MAX];
  int ml = build_meta(c, meta, sizeof meta);
  if (ml < 0 || (r = gossip_uv_set_meta(c->g, meta, (size_t)ml)) != 0) {
    LOG_E("cluster: metadata does not fit 512 bytes (url or zone too long)");
    return ml < 0 ? ml : r;
  }
  c->meta_at = uv_now(c->loop);

  c->self = peer_get(c, cc->name);
  if (!c->self)
    return UV_ENOMEM;
  c->self->is_self = 1;
  c->self->state = SWIM_ALIVE;
  c->self->weight = cc->weight;
  snprintf(c->self->addr, sizeof c->self->addr, "%s", gaddr);
  snprintf(c->self->url, sizeof c->self->url, "%s", c->self_url);
  snprintf(c->self->zone, sizeof c->self->zone, "%s", cc->zone ? cc->zone : "");
  snprintf(c->self->version, sizeof c->self->version, "%s", REGMESH_VERSION);

  if ((r = holders_new(&c->holders)) != 0)
    return r;
  c->fillq = calloc(cc->replica_queue ? cc->replica_queue : 1, sizeof *c->fillq);
  if (!c->fillq)
    return UV_ENOMEM;
  struct fetch_hooks hooks = {.on_peer_error = on_peer_error,
                              .on_redirect = on_redirect,
                              .on_commit = on_commit,
                              .ud = c};
  fetcher_set_hooks(n->fetcher, &hooks);
  metrics_describe("regmesh_peer_uploads_total", METRIC_COUNTER,
                   "Blob streams to peers started.");
  metrics_describe("regmesh_peer_uploads_active", METRIC_GAUGE,
                   "Blob streams to peers running now (cluster.max_peer_uploads).");
  metrics_describe("regmesh_peer_upload_bytes_total", METRIC_COUNTER,
                   "Blob bytes streamed to peers.");
  metrics_describe("regmesh_peer_upload_decisions_total", METRIC_COUNTER,
                   "Peer blob requests: served, sent to other holders, or refused busy.");
  metrics_describe("regmesh_peer_notices_total", METRIC_COUNTER,
                   "Notices to peers (held, replicate, handover) by result.");
  metrics_describe("regmesh_replica_fills_total", METRIC_COUNTER,
                   "Background replica fills by result.");
  metrics_describe("regmesh_replica_queue", METRIC_GAUGE, "Replica fills waiting.");
  metrics_describe("regmesh_replica_fills_running", METRIC_GAUGE,
                   "Replica fills running.");
  metrics_describe("regmesh_handover_received_total", METRIC_COUNTER,
                   "Digests a leaving node handed to us with their holders.");
  metrics_set("regmesh_peer_uploads_total", "", 0);
  metrics_set("regmesh_peer_uploads_active", "", 0);
  metrics_set("regmesh_peer_upload_bytes_total", "", 0);
  fill_gauge(c);
  metrics_describe("regmesh_cluster_members", METRIC_GAUGE, "Fleet members by state.");
  metrics_describe("regmesh_cluster_ring_share_permille", METRIC_GAUGE,
                   "Share of the key space this node owns, in thousandths.");
  metrics_describe("regmesh_gossip_udp_bytes_total", METRIC_COUNTER,
                   "Gossip datagram bytes (TCP push/pull streams not included).");
  metrics_describe("regmesh_gossip_streams_total", METRIC_COUNTER,
                   "Gossip TCP streams (push/pull, fallback probes).");
  metrics_describe("regmesh_gossip_dropped_total", METRIC_COUNTER,
                   "Gossip packets dropped: failed decryption, malformed.");
  metrics_describe("regmesh_cluster_name_conflicts_total", METRIC_COUNTER,
                   "Gossip messages claiming a known member's name from another "
                   "address (two nodes with one cluster.name).");
  metrics_set("regmesh_cluster_name_conflicts_total", "", 0);
  metrics_describe("regmesh_peer_errors_total", METRIC_COUNTER,
                   "Peer requests that failed, by kind.");
  metrics_describe("regmesh_ratelimit_delegations_total", METRIC_COUNTER,
                   "Manifest GETs handed to a peer with rate-limit budget.");

  uv_timer_init(c->loop, &c->rebuild);
  uv_timer_init(c->loop, &c->tick);
  uv_timer_init(c->loop, &c->handover_timer);
  c->rebuild.data = c->tick.data = c->handover_timer.data = c;
  c->timers_init = 1;
  c->open_handles += 3;
  ring_rebuild(&c->rebuild);
  uv_timer_start(&c->tick, on_tick, TICK_MS, TICK_MS);
  resolve_seeds(c);
  c->next_join = uv_now(c->loop) + JOIN_RETRY_MS;
  LOG_I("cluster: %s on %s, registry %s, %zu seed(s), replicas %u%s", cc->name, gaddr,
        c->self_url, cc->n_join, cc->replicas, c->auth.enabled ? ", encrypted" : "");
  return 0;
}

static void maybe_done(struct cluster *c) {
  if (!c->stopping)
    return;
  if (c->open_handles == 0 && !c->g && c->stop_done) {
    void (*done)(void *) = c->stop_done;
    c->stop_done = NULL;
    done(c->stop_ud);
  }
}

static void on_timer_closed(uv_handle_t *h) {
  struct cluster *c = h->data;
  c->open_handles--;
  maybe_done(c);
}

static void on_gossip_stopped(void *ud) {
  struct cluster *c = ud;
  c->g = NULL;
  maybe_done(c);
}

static void leave_now(struct cluster *c) {
  if (c->left)
    return;
  c->left = 1;
  if (c->timers_init)
    uv_close((uv_handle_t *)&c->handover_timer, on_timer_closed);
  if (c->g && gossip_uv_stop(c->g, GOSSIP_UV_LEAVE_TIMEOUT_MS, on_gossip_stopped, c) != 0)
    c->g = NULL;
  maybe_done(c);
}

void cluster_stop(struct cluster *c, void (*done)(void *ud), void *ud) {
  if (!c || c->stopping)
    return;
  c->stopping = 1;
  c->stop_done = done;
  c->stop_ud = ud;
  if (c->timers_init) {
    uv_close((uv_handle_t *)&c->rebuild, on_timer_closed);
    uv_close((uv_handle_t *)&c->tick, on_timer_closed);
  }
  /* Hand-over first, while peers still route to us and the ring has us. */
  unsigned before = c->notices;
  if (c->holders && c->timers_init)
    holders_each(c->holders, uv_now(c->loop), handover_one, c);
  if (c->notices > before) {
    LOG_I("cluster: leaving; told the new owners of %u key(s) who holds them",
          c->notices - before);
    c->handover_waiting = 1;
    uv_timer_start(&c->handover_timer, on_handover_timeout, HANDOVER_WAIT_MS, 0);
    return;
  }
  leave_now(c);
}

static void free_peer(const char *key, void *value, void *ud) {
  (void)key;
  (void)ud;
  struct cluster_peer *p = value;
  upstream_free(p->http);
  free(p->rl);
  free(p);
}

void cluster_free(struct cluster *c) {
  if (!c)
    return;
  strmap_each(&c->peers, free_peer, NULL);
  strmap_free(&c->peers);
  for (size_t i = 0; i < c->n_retired; i++)
    upstream_free(c->retired[i]);
  free(c->retired);
  ring_free(c->ring);
  holders_free(c->holders);
  for (size_t i = 0; c->fillq && i < c->fq_len; i++)
    free(c->fillq[(c->fq_head + i) % c->cfg->replica_queue]);
  free(c->fillq);
  free(c);
}

const char *cluster_self(const struct cluster *c) { return c->self->name; }

const struct peerauth *cluster_auth(const struct cluster *c) { return &c->auth; }

/* ---- reports -------------------------------------------------------------- */

static double share_of(struct cluster *c, const char *name) {
  for (size_t i = 0; i < ring_members(c->ring); i++)
    if (strcmp(ring_member_name(c->ring, i), name) == 0)
      return ring_share(c->ring, i);
  return 0;
}

struct members_scan {
  struct cluster *c;
  json_t *arr;
};

static void member_json(const char *key, void *value, void *ud) {
  (void)key;
  struct cluster_peer *p = value;
  struct members_scan *ms = ud;
  struct cluster *c = ms->c;
  json_t *arr = ms->arr;
  json_t *rl = json_object();
  for (size_t i = 0; i < c->n->cfg->n_upstreams; i++) {
    int64_t v = p->rl[i];
    if (p->is_self) {
      struct upstream_ratelimit r;
      upstream_get_ratelimit(c->n->ups[i], &r);
      v = r.remaining;
    }
    json_object_set_new(rl, c->n->cfg->upstreams[i].host, json_integer(v));
  }
  json_array_append_new(
      arr, json_pack("{s:s,s:s,s:s,s:s,s:s,s:i,s:s,s:f,s:o,s:b}", "name", p->name, "state",
                     swim_state_str(p->state), "addr", p->addr, "url", p->url, "zone",
                     p->zone, "weight", (int)p->weight, "version", p->version, "share",
                     share_of(c, p->name), "ratelimit", rl, "self", p->is_self));
}

char *cluster_members_json(struct cluster *c) {
  json_t *arr = json_array();
  struct members_scan ms = {.c = c, .arr = arr};
  strmap_each(&c->peers, member_json, &ms);
  struct swim_stats st = {0};
  if (c->g)
    swim_get_stats(gossip_uv_swim(c->g), &st);
  json_t *doc = json_pack("{s:s,s:o,s:I,s:s}", "self", c->self->name, "members", arr,
                          "name_conflicts", (json_int_t)st.name_conflicts, "last_conflict",
                          st.last_conflict);
  char *txt = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  return txt;
}

int cluster_owners_json(struct cluster *c, const char *key, char **out) {
  *out = NULL;
  struct cluster_peer *own[8];
  size_t n = owners_of(c, key, own, c->cfg->replicas + 1);
  size_t k = n > c->cfg->replicas ? c->cfg->replicas : n;
  json_t *arr = json_array();
  for (size_t i = 0; i < k; i++)
    json_array_append_new(arr, json_string(own[i]->name));
  /* heir: where the key goes when an owner leaves (the next member) */
  json_t *doc = json_pack("{s:s,s:o,s:s?}", "key", key, "owners", arr, "heir",
                          n > k ? own[k]->name : NULL);
  *out = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  return *out ? 0 : UV_ENOMEM;
}

struct state_count {
  int64_t n[4];
};

static void count_state(const char *key, void *value, void *ud) {
  (void)key;
  struct cluster_peer *p = value;
  struct state_count *sc = ud;
  if (p->state <= SWIM_LEFT)
    sc->n[p->state]++;
}

void cluster_update_metrics(struct cluster *c) {
  struct state_count sc = {{0}};
  strmap_each(&c->peers, count_state, &sc);
  for (int s = SWIM_ALIVE; s <= SWIM_LEFT; s++) {
    char labels[32];
    snprintf(labels, sizeof labels, "state=\"%s\"", swim_state_str((enum swim_state)s));
    metrics_set("regmesh_cluster_members", labels, sc.n[s]);
  }
  metrics_set("regmesh_cluster_ring_share_permille", "",
              (int64_t)(share_of(c, c->self->name) * 1000 + 0.5));
  if (c->g) {
    struct swim_stats st;
    swim_get_stats(gossip_uv_swim(c->g), &st);
    metrics_set("regmesh_gossip_udp_bytes_total", "dir=\"sent\"", (int64_t)st.udp_bytes_sent);
    metrics_set("regmesh_gossip_udp_bytes_total", "dir=\"received\"",
                (int64_t)st.udp_bytes_recv);
    metrics_set("regmesh_gossip_streams_total", "dir=\"out\"", (int64_t)st.streams_out);
    metrics_set("regmesh_gossip_streams_total", "dir=\"in\"", (int64_t)st.streams_in);
    metrics_set("regmesh_gossip_dropped_total", "why=\"auth\"", (int64_t)st.dropped_auth);
    metrics_set("regmesh_gossip_dropped_total", "why=\"malformed\"",
                (int64_t)st.dropped_malformed);
    metrics_set("regmesh_cluster_name_conflicts_total", "", (int64_t)st.name_conflicts);
  }
}
