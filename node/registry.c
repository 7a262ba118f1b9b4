/* registry.c - the registry API: routes each request to the cache, a
 * download in flight, or the upstream, and writes the response.
 *
 * One struct rreq per request carries it from routing to the last byte.
 * Content is served from a file descriptor - the committed blob, or the
 * temp file of a download in progress - with sendfile, pumped as the client
 * drains it and as the download grows (headers first: status and headers go
 * out as soon as the size is known). Small upstream answers (HEAD of a miss,
 * tag lists, referrers) are proxied through a bounded buffer.
 *
 * Lifetime: the rreq ends with the HTTP response (rr_finish). If an
 * upstream request of its own is still running then, it is cancelled and the
 * rreq is freed by that request's on_done.
 */
#include "registry.h"

#include "access.h"

#include "cluster.h"
#include "egress.h"
#include "fetch.h"
#include "http_server.h"
#include "httpval.h"
#include "cache.h"
#include "metrics.h"
#include "node.h"
#include "peerauth.h"
#include "proxy.h"
#include "route.h"
#include "tags.h"
#include "upstream.h"

#include "../common/buf.h"
#include "../common/digest.h"
#include "../common/errors.h"
#include "../common/log.h"
#include "../common/strmap.h"
#include "../config/config.h"
#include "../storage/storage.h"
#include "regmesh_commit.h"

#include <dirent.h>
#include <fcntl.h>
#include <http_parser.h>
#include <inttypes.h>
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define PROXY_BODY_MAX (4u << 20)
#define MAX_RESP_HEADERS 16
#define ACCEPT_MAX 2048

#define container_of(p, type, member) ((type *)((char *)(p) - offsetof(type, member)))

static const char api_version_hdr[] = "registry/2.0";

/* Manifest media types a client may list in Accept, as bits. */
static const char *const manifest_types[] = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
};
#define N_MANIFEST_TYPES (sizeof manifest_types / sizeof manifest_types[0])
#define MODERN_TYPES_MASK 0xfu /* the first four: what current clients send */

struct rreq {
  struct node *n;
  struct http_request *req;
  struct route rt;
  int is_head;
  int status;         /* of the response, for metrics */
  const char *source; /* local, inflight, upstream, stale */
  const char *route_label; /* metrics route when not an API route */
  uint64_t sent;
  int started;        /* status line written */
  int finished;       /* ended or aborted: req is gone */
  int free_on_up_done;

  /* body streaming from a file */
  int fd;
  int fd_local; /* fd is ours: close it and unpin pin_hex */
  char pin_hex[DIGEST_HEX_LEN + 1];
  uint64_t pos, end, last_len;
  int sending;
  int src_failed;
  struct fetch_waiter fw;

  struct tag_waiter tw;
  /* a request from a fleet peer: never ask further peers */
  int hop;
  char hop_from[72];      /* its X-Regmesh-Hop: the sender's name */
  int holder_only;        /* X-Regmesh-Holder-Only: cache or in-flight only */
  int upload;             /* a blob stream to a peer (cluster_upload_begin) */
  struct egress_waiter ew; /* parked on cluster.peer_egress */
  int hop_authed;         /* its X-Regmesh-Auth checked out */
  int authed;             /* a client that logged in (auth.htpasswd) */
  int auth_pending;       /* its password is being checked */
  int job_pending;        /* a cache job runs on the thread pool */
  /* a local blob not verified in this process: its last byte waits for
   * the hash (verify_local) */
  uint64_t gate;          /* bytes below it may go out (UINT64_MAX: all) */
  int need_verify;
  uint64_t ctime_ns;
  struct verify_job *vj;
  int corrupt_local;      /* it hashed wrong: quarantine once unpinned */
  int client_gone;        /* ... and it hung up meanwhile */
  char user[64];
  char hop_sig[PEERAUTH_SIG_HEX + 1];
  char accept[ACCEPT_MAX];
  unsigned accept_mask;
  int accept_any;
  char warning[200];
  char ns_echo[128];

  /* proxied upstream request */
  struct upstream_req *ureq;
  void (*proxy_done)(struct rreq *r, int err);
  struct buf pbody;
  int pstatus;
  int64_t plen;
  char pctype[STORAGE_MEDIA_TYPE_MAX];
  char plink[1024];
  char pfilters[128];
  char pretry[32];
  int basic_challenge; /* 401s carry WWW-Authenticate: Basic ... */
  int bearer_challenge; /* ... or Bearer, our token endpoint (proxy listener) */
  int proxy_up;        /* proxy listener: the upstream it is for, or -1 */
  int token_req;       /* proxy listener: GET /token, our token endpoint */
  json_t *tl_all; /* tags gathered over the upstream's pages */
  int tl_pages;

  /* on n->waiting until the status line is out: first_byte_timeout */
  struct rreq *wait_prev, *wait_next;
  uint64_t deadline_ms; /* loop time; 0 = not waiting */

  /* response header scratch: values are formatted into hbuf */
  struct http_header hdrs[MAX_RESP_HEADERS];
  size_t nh;
  char hbuf[3072];
  size_t hlen;
};

/* ---- tag list cache ---------------------------------------------------- */

#define TAGSLIST_MAX 1024

struct tagslist_entry {
  json_t *tags;        /* sorted array of strings, owned */
  uint64_t fetched_ms; /* loop time */
};

struct tagslist_cache {
  struct strmap map;
};

static void tl_free_one(const char *key, void *value, void *ud) {
  (void)key;
  (void)ud;
  struct tagslist_entry *e = value;
  json_decref(e->tags);
  free(e);
}

static struct tagslist_cache *tagslist_cache(struct node *n) {
  if (!n->tagslists) {
    n->tagslists = calloc(1, sizeof *n->tagslists);
    if (n->tagslists)
      strmap_init(&n->tagslists->map);
  }
  return n->tagslists;
}

void registry_tagslist_free(struct node *n) {
  if (!n->tagslists)
    return;
  strmap_each(&n->tagslists->map, tl_free_one, NULL);
  strmap_free(&n->tagslists->map);
  free(n->tagslists);
  n->tagslists = NULL;
}

/* ---- response helpers ---------------------------------------------------- */

static void hdr_reset(struct rreq *r) {
  r->nh = 0;
  r->hlen = 0;
}

static void hdr_add(struct rreq *r, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void hdr_add(struct rreq *r, const char *name, const char *fmt, ...) {
  if (r->nh == MAX_RESP_HEADERS)
    return;
  va_list ap;
  va_start(ap, fmt);
  size_t room = sizeof r->hbuf - r->hlen;
  int len = vsnprintf(r->hbuf + r->hlen, room, fmt, ap);
  va_end(ap);
  if (len < 0 || (size_t)len >= room)
    return;
  struct http_header *h = &r->hdrs[r->nh++];
  h->name = name;
  h->name_len = strlen(name);
  h->value = r->hbuf + r->hlen;
  h->value_len = (size_t)len;
  r->hlen += (size_t)len + 1;
}

static void hdr_common(struct rreq *r) {
  hdr_reset(r);
  hdr_add(r, "Docker-Distribution-API-Version", "%s", api_version_hdr);
  if (r->warning[0])
    hdr_add(r, "Warning", "%s", r->warning);
  if (r->ns_echo[0])
    hdr_add(r, "OCI-Namespace", "%s", r->ns_echo);
}

static void quarantine_later(struct node *n, const char *hex);

static void rr_release_fetch(struct rreq *r) {
  if (r->fw.src)
    fetcher_leave(&r->fw);
  tagcache_cancel(&r->tw);
  if (r->fd_local) {
    close(r->fd);
    blobstore_unpin(r->n->bs, r->pin_hex);
    r->fd_local = 0;
    if (r->corrupt_local)
      quarantine_later(r->n, r->pin_hex);
  }
  r->fd = -1;
}

static void deadline_clear(struct rreq *r);

struct verify_job {
  uv_work_t work;
  struct node *n;
  struct rreq *r; /* NULL once the request is gone */
  int fd;         /* a dup: the request's fd may close first */
  char hex[DIGEST_HEX_LEN + 1];
  uint64_t ctime_ns;
  int ok;
};

static void rr_free(struct rreq *r) {
  if (r->vj)
    r->vj->r = NULL; /* the job finishes alone */
  deadline_clear(r);
  buf_free(&r->pbody);
  json_decref(r->tl_all);
  free(r);
}

/* A download that took bytes from a peer is a peer hit. */
static void rr_fix_source(struct rreq *r) {
  if (r->fw.src && r->source && strcmp(r->source, "upstream") == 0 &&
      fetch_src_via_peer(r->fw.src))
    r->source = "peer";
}

/* cache_result: what a served blob or manifest was for the cache. A
 * download shared with another request ("inflight") was a miss all the
 * same: the bytes were not there. */
static const char *cache_result(const char *source) {
  if (strcmp(source, "local") == 0)
    return "hit";
  if (strcmp(source, "peer") == 0)
    return "peer";
  if (strcmp(source, "stale") == 0)
    return "stale";
  return "miss";
}

static void rr_metrics(struct rreq *r) {
  char labels[96];
  const char *route = r->route_label ? r->route_label : route_kind_str(r->rt.kind);
  snprintf(labels, sizeof labels, "route=\"%s\",status=\"%d\"", route, r->status);
  metrics_add("regmesh_http_requests_total", labels, 1);
  /* until the response is complete on our side (the last bytes queued) */
  uint64_t now = uv_now(r->n->loop);
  uint64_t ms = now > r->req->start_ms ? now - r->req->start_ms : 0;
  snprintf(labels, sizeof labels, "route=\"%s\",source=\"%s\"", route,
           r->source ? r->source : "none");
  metrics_observe_us("regmesh_http_request_duration_seconds", labels, ms * 1000);
  if (r->source && (r->rt.kind == ROUTE_BLOB || r->rt.kind == ROUTE_MANIFEST) &&
      r->status < 300) {
    snprintf(labels, sizeof labels, "source=\"%s\"", r->source);
    metrics_add("regmesh_hits_total", labels, 1);
    metrics_add("regmesh_served_bytes_total", labels, r->sent);
    snprintf(labels, sizeof labels, "kind=\"%s\",result=\"%s\"",
             r->rt.kind == ROUTE_BLOB ? "blob" : "manifest", cache_result(r->source));
    metrics_add("regmesh_cache_requests_total", labels, 1);
  }
}

/* After the response is over: drop what the request held; the rreq is freed
 * here unless an upstream request of its own still has to report back. */
static void rr_cleanup(struct rreq *r) {
  deadline_clear(r);
  egress_cancel(r->n->peer_egress, &r->ew);
  if (r->upload && r->n->cluster)
    cluster_upload_end(r->n->cluster, r->rt.hex);
  r->upload = 0;
  rr_release_fetch(r);
  r->req = NULL;
  if (r->ureq) {
    upstream_req_cancel(r->ureq);
    r->free_on_up_done = 1;
    return;
  }
  rr_free(r);
}

/* Ends (ok) or aborts the response. */
static void repo_mark(struct rreq *r);

/* rr_proved: a manifest the upstream served under this name proves the
 * repository exists there (handle_blob). */
static void rr_proved(struct rreq *r, int ok) {
  if (ok && r->status == 200 && r->rt.kind == ROUTE_MANIFEST && r->source &&
      strcmp(r->source, "upstream") == 0)
    repo_mark(r);
}

static void rr_finish(struct rreq *r, int ok) {
  if (r->finished)
    return;
  r->finished = 1;
  rr_fix_source(r);
  rr_proved(r, ok);
  r->req->log_source = r->source;
  rr_metrics(r);
  struct http_request *req = r->req;
  if (ok)
    http_respond_end(req);
  else
    http_respond_abort(req);
  rr_cleanup(r);
}

static int rr_start(struct rreq *r, int status, int64_t len) {
  r->status = status;
  r->started = 1;
  deadline_clear(r);
  /* a cold miss: how long the client waited for the first byte */
  const char *result = r->source ? cache_result(r->source) : "";
  if (strcmp(result, "miss") == 0 || strcmp(result, "peer") == 0) {
    uint64_t now = uv_now(r->n->loop);
    uint64_t ms = now > r->req->start_ms ? now - r->req->start_ms : 0;
    metrics_observe_us("regmesh_cold_first_byte_seconds",
                       r->rt.kind == ROUTE_BLOB ? "kind=\"blob\"" : "kind=\"manifest\"",
                       ms * 1000);
  }
  return http_respond_start(r->req, status, r->hdrs, r->nh, len);
}

static void respond_body(struct rreq *r, int status, const char *ctype,
                         const void *body, size_t len) {
  if (ctype)
    hdr_add(r, "Content-Type", "%s", ctype);
  r->status = status;
  r->started = 1;
  r->sent = r->is_head ? 0 : len;
  /* simple always finishes the request itself, also when it fails, so
   * everything that reads req happens first. */
  r->finished = 1;
  rr_fix_source(r);
  rr_proved(r, 1);
  r->req->log_source = r->source;
  rr_metrics(r);
  http_respond_simple(r->req, status, r->hdrs, r->nh, body, len);
  rr_cleanup(r);
}

static void respond_error(struct rreq *r, int status, const char *code,
                          const char *msg) {
  if (r->started) {
    rr_finish(r, 0);
    return;
  }
  hdr_common(r);
  json_t *doc = json_pack("{s:[{s:s,s:s,s:n}]}", "errors", "code", code,
                          "message", msg, "detail");
  char *txt = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  if (status == 429 && r->pretry[0])
    hdr_add(r, "Retry-After", "%s", r->pretry);
  if (status == 401 && r->bearer_challenge) {
    /* the realm is the registry's own host: the client asks us (through the
     * proxy again) for a token, never the real registry */
    const struct http_request *q = r->req;
    hdr_add(r, "WWW-Authenticate", "Bearer realm=\"%s://%s/token\",service=\"regmesh\"",
            q->tls ? "https" : "http", q->proxy_host[0] ? q->proxy_host : q->authority);
  } else if (status == 401 && r->basic_challenge) {
    hdr_add(r, "WWW-Authenticate", "Basic realm=\"regmesh\"");
  }
  respond_body(r, status, "application/json", txt ? txt : "{}", txt ? strlen(txt) : 2);
  free(txt);
}

/* respond_bare answers a status the spec's error table has no code for
 * (416, a bad page size, a path that is not the API) without inventing
 * one: a plain-text reason, headers already added kept. */
static void respond_bare(struct rreq *r, int status, const char *msg) {
  if (r->started) {
    rr_finish(r, 0);
    return;
  }
  char text[400];
  int n = snprintf(text, sizeof text, "%s\n", msg);
  hdr_add(r, "Docker-Distribution-API-Version", "%s", api_version_hdr);
  respond_body(r, status, "text/plain; charset=utf-8", text,
               n < 0 ? 0 : (size_t)n >= sizeof text ? sizeof text - 1 : (size_t)n);
}

static const char *up_host(struct rreq *r) {
  return r->n->cfg->upstreams[r->rt.upstream].host;
}

/* One place maps a failure to the client's status and registry error code.
 * Messages name the upstream by its registry name, never an address. */
static void respond_failure(struct rreq *r, int err, int upstream_status) {
  char msg[300];
  const char *host = up_host(r);
  switch (err) {
  case RM_ENOTFOUND:
    if (r->rt.kind == ROUTE_BLOB) {
      respond_error(r, 404, "BLOB_UNKNOWN", "blob unknown to registry");
    } else if (r->rt.kind == ROUTE_MANIFEST) {
      respond_error(r, 404, "MANIFEST_UNKNOWN", "manifest unknown");
    } else {
      respond_error(r, 404, "NAME_UNKNOWN", "repository name not known to registry");
    }
    return;
  case RM_ERATELIMIT:
    snprintf(msg, sizeof msg, "upstream %s rate limit reached", host);
    respond_error(r, 429, "TOOMANYREQUESTS", msg);
    return;
  case RM_EAUTH:
    snprintf(msg, sizeof msg, "upstream %s denied access (status %d)", host, upstream_status);
    respond_error(r, 403, "DENIED", msg);
    return;
  case RM_EDIGEST:
    snprintf(msg, sizeof msg, "upstream %s sent content that does not match its digest", host);
    respond_error(r, 502, "UNKNOWN", msg);
    return;
  case RM_ENOSPACE:
    respond_error(r, 507, "UNKNOWN",
                  "no room in the cache for the object (size budget or free disk space)");
    return;
  case RM_EUPSTREAM:
    snprintf(msg, sizeof msg, "upstream %s answered with status %d", host, upstream_status);
    respond_error(r, 502, "UNKNOWN", msg);
    return;
  default:
    if (err == RM_EUNREACH || err == UV_ETIMEDOUT || err == UV_ECONNREFUSED ||
        err == UV_ECONNRESET || err == UV_EHOSTUNREACH || err == UV_ENETUNREACH ||
        err == UV_EAI_NONAME || err == UV_ECANCELED) {
      snprintf(msg, sizeof msg, "upstream %s is unreachable", host);
      respond_error(r, 503, "UNAVAILABLE", msg);
    } else {
      snprintf(msg, sizeof msg, "upstream %s failed: %s", host, rm_strerror(err));
      respond_error(r, 502, "UNKNOWN", msg);
    }
  }
}

/* ---- first_byte_timeout -------------------------------------------------- */

/* A client pulling a cold blob or manifest hears something within its
 * upstream's first_byte_timeout: the status line of the content, or a 504.
 * The download itself goes on (it has other waiters, or fills the cache for
 * the retry). Peers' requests carry no deadline: the asking node's covers
 * its client, and a 504 from the owner would send the asker upstream. */
#define DEADLINE_TICK_MS 100

static void deadline_clear(struct rreq *r) {
  if (!r->deadline_ms)
    return;
  struct node *n = r->n;
  if (r->wait_prev)
    r->wait_prev->wait_next = r->wait_next;
  else
    n->waiting = r->wait_next;
  if (r->wait_next)
    r->wait_next->wait_prev = r->wait_prev;
  r->wait_prev = r->wait_next = NULL;
  r->deadline_ms = 0;
  if (!n->waiting && n->deadline_init)
    uv_timer_stop(&n->deadline_timer);
}

static void on_deadline_tick(uv_timer_t *t);

static void deadline_set(struct rreq *r) {
  struct node *n = r->n;
  uint64_t ms = upstream_config(n->ups[r->rt.upstream])->first_byte_timeout_ms;
  if (r->hop || ms == 0 || !n->deadline_init)
    return;
  r->deadline_ms = uv_now(n->loop) + ms;
  r->wait_prev = NULL;
  r->wait_next = n->waiting;
  if (n->waiting)
    n->waiting->wait_prev = r;
  else
    uv_timer_start(&n->deadline_timer, on_deadline_tick, DEADLINE_TICK_MS, DEADLINE_TICK_MS);
  n->waiting = r;
}

static void deadline_fire(struct rreq *r) {
  struct node *n = r->n;
  const struct config_upstream *uc = upstream_config(n->ups[r->rt.upstream]);
  char msg[300];
  metrics_add("regmesh_first_byte_timeouts_total", upstream_labels(n->ups[r->rt.upstream]), 1);
  snprintf(msg, sizeof msg,
           "upstream %s sent nothing within first_byte_timeout (%llu ms); the download "
           "goes on, try again",
           uc->host, (unsigned long long)uc->first_byte_timeout_ms);
  LOG_D("%s %s: %s", route_kind_str(r->rt.kind), r->rt.name, msg);
  respond_error(r, 504, "UNAVAILABLE", msg);
}

static void on_deadline_tick(uv_timer_t *t) {
  struct node *n = t->data;
  uint64_t now = uv_now(n->loop);
  /* Answering one may end others (a shared wait); rescan after each. */
  for (;;) {
    struct rreq *due = NULL;
    for (struct rreq *r = n->waiting; r && !due; r = r->wait_next)
      if (now >= r->deadline_ms && !r->started && !r->finished)
        due = r;
    if (!due)
      break;
    deadline_fire(due); /* its cleanup takes it off the list (and may free it) */
  }
}

/* ---- request parsing helpers --------------------------------------------- */

/* Merges every Accept line: clients send one line per type or a comma list. */
static void collect_accept(struct rreq *r) {
  size_t len = 0;
  r->accept[0] = '\0';
  r->accept_mask = 0;
  r->accept_any = 0;
  for (const struct http_header *h = http_request_header(r->req, "accept"); h;
       h = http_request_header_next(r->req, "accept", h)) {
    if (len + h->value_len + 2 >= sizeof r->accept)
      break;
    if (len) {
      memcpy(r->accept + len, ", ", 2);
      len += 2;
    }
    memcpy(r->accept + len, h->value, h->value_len);
    len += h->value_len;
    r->accept[len] = '\0';
  }
  for (unsigned i = 0; i < N_MANIFEST_TYPES; i++)
    if (strstr(r->accept, manifest_types[i]))
      r->accept_mask |= 1u << i;
  if (len == 0 || strstr(r->accept, "*/*") || r->accept_mask == 0)
    r->accept_any = 1;
}

/* The Accept to send upstream for a tag, and the cache variant it implies:
 * clients that take all modern types share one cache entry. */
static void tag_accept(struct rreq *r, char *accept, size_t alen, char *variant,
                       size_t vlen) {
  unsigned mask = r->accept_any ? MODERN_TYPES_MASK : r->accept_mask;
  if ((mask & MODERN_TYPES_MASK) == MODERN_TYPES_MASK)
    mask = MODERN_TYPES_MASK;
  size_t len = 0;
  accept[0] = '\0';
  for (unsigned i = 0; i < N_MANIFEST_TYPES; i++) {
    if (!(mask & (1u << i)))
      continue;
    int w = snprintf(accept + len, alen - len, "%s%s", len ? ", " : "", manifest_types[i]);
    if (w < 0 || (size_t)w >= alen - len)
      break;
    len += (size_t)w;
  }
  if (mask == MODERN_TYPES_MASK)
    variant[0] = '\0';
  else
    snprintf(variant, vlen, "a%x", mask);
}

/* If-None-Match against our (strong) ETag, "sha256:<hex>" (httpval.h). */
static int not_modified(struct rreq *r, const char *hex) {
  const struct http_header *h = http_request_header(r->req, "if-none-match");
  return h && httpval_etag_match(h->value, h->value_len, hex);
}

/* A single "bytes=a-b" / "a-" / "-n" range (httpval.h): 1 with [*start,
 * *end), 0 to serve it all, -1 for a 416. */
static int parse_range(struct rreq *r, uint64_t size, uint64_t *start, uint64_t *end) {
  const struct http_header *h = http_request_header(r->req, "range");
  return h ? httpval_range(h->value, size, start, end) : 0;
}

/* ---- streaming a body from a file -------------------------------------- */

static void pump(struct rreq *r);

static void on_sent(struct http_request *req, int status, void *ud) {
  (void)req;
  struct rreq *r = ud;
  r->sending = 0;
  if (r->finished)
    return;
  if (status < 0) {
    rr_finish(r, 0);
    return;
  }
  r->pos += r->last_len;
  r->sent += r->last_len;
  if (r->upload)
    metrics_add("regmesh_peer_upload_bytes_total", "", r->last_len);
  pump(r);
}

#define EGRESS_CHUNK (256u * 1024) /* peer streams share cluster.peer_egress in these */

static void on_egress(struct egress_waiter *w) { pump(container_of(w, struct rreq, ew)); }

static void pump(struct rreq *r) {
  if (r->sending || r->finished || r->ew.parked)
    return;
  uint64_t avail = r->end < r->gate ? r->end : r->gate;
  if (r->fw.src) {
    uint64_t a = fetch_src_available(r->fw.src);
    if (a < avail)
      avail = a;
  }
  if (r->pos < avail) {
    uint64_t len = avail - r->pos;
    if (r->upload && r->n->peer_egress) {
      len = egress_take(r->n->peer_egress, len < EGRESS_CHUNK ? len : EGRESS_CHUNK);
      if (len == 0) {
        r->ew.cb = on_egress;
        egress_wait(r->n->peer_egress, &r->ew);
        return;
      }
    }
    r->sending = 1;
    r->last_len = len;
    int rc = http_respond_sendfile(r->req, r->fd, r->pos, r->last_len, on_sent, r);
    if (rc) {
      r->sending = 0;
      rr_finish(r, 0);
    }
  } else if (r->pos >= r->end) {
    rr_finish(r, 1);
  } else if (r->src_failed) {
    /* The download broke after the headers went out: closing without the
     * rest is the only way to tell an HTTP/1.1 client. */
    rr_finish(r, 0);
  }
}

/* ---- verifying a cached blob as it is served ---------------------------
 *
 * A file changed behind the node's back (a disk fault, a tool writing into
 * the cache) must not go out as the blob: the first time this process
 * serves a cached blob, and whenever its ctime changed since, the file is
 * re-hashed on the thread pool while its bytes go out, and the last byte
 * waits for the answer, as for downloads. A mismatch cuts the response
 * (the client sees an incomplete body and retries) and quarantines the
 * file, so the retry fetches it again. */
#define VERIFIED_MAX 65536

struct quarantine_job {
  uv_work_t work;
  struct blobstore *bs;
  char hex[DIGEST_HEX_LEN + 1];
};

static void quarantine_work(uv_work_t *w) {
  struct quarantine_job *q = w->data;
  uint64_t hashed;
  blobstore_verify(q->bs, q->hex, &hashed); /* moves it aside if still wrong */
}

static void quarantine_done(uv_work_t *w, int status) {
  (void)status;
  free(w->data);
}

/* quarantine_later re-checks hex on the pool, which moves the file aside
 * (the store refuses while a reader holds it: call after the unpin). */
static void quarantine_later(struct node *n, const char *hex) {
  struct quarantine_job *q = calloc(1, sizeof *q);
  if (!q)
    return;
  q->bs = n->bs;
  memcpy(q->hex, hex, sizeof q->hex);
  q->work.data = q;
  if (uv_queue_work(n->loop, &q->work, quarantine_work, quarantine_done) != 0)
    free(q);
}

static void verify_work(uv_work_t *w) {
  struct verify_job *j = w->data;
  struct sha256_ctx ctx;
  char got[DIGEST_HEX_LEN + 1];
  static const size_t chunk = 256u << 10; /* x pool threads: little memory */
  char *buf = malloc(chunk);
  j->ok = 0;
  if (!buf || sha256_init(&ctx) != 0) {
    free(buf);
    j->ok = -1; /* could not check: serve as before */
    return;
  }
  uint64_t off = 0;
  for (;;) {
    ssize_t n = pread(j->fd, buf, chunk, (off_t)off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      if (n < 0)
        j->ok = -1;
      break;
    }
    sha256_update(&ctx, buf, (size_t)n);
    off += (uint64_t)n;
  }
  free(buf);
  sha256_final(&ctx, got);
  if (j->ok == 0)
    j->ok = memcmp(got, j->hex, DIGEST_HEX_LEN) == 0;
}

static void verify_done(uv_work_t *w, int status) {
  struct verify_job *j = w->data;
  struct rreq *r = j->r;
  close(j->fd);
  if (status == 0 && j->ok == 1) {
    if (j->n->verified->count >= VERIFIED_MAX) {
      strmap_free(j->n->verified);
      strmap_init(j->n->verified);
    }
    strmap_put(j->n->verified, j->hex, (void *)(uintptr_t)(j->ctime_ns + 1));
  }
  int bad = status == 0 && j->ok == 0;
  if (r) {
    r->vj = NULL;
    /* bad: the gate stays shut and pump ends the response once the bytes
     * before it are out (a sendfile may be pending: never finish here) */
    if (bad) {
      r->src_failed = 1;
      r->corrupt_local = 1;
    } else {
      r->gate = UINT64_MAX;
    }
  }
  if (bad) {
    LOG_W("storage: cached %s does not hash to its name; response cut, file quarantined",
          j->hex);
    metrics_add("regmesh_cache_corrupt_blobs_total", "", 1);
  }
  if (bad && !r)
    quarantine_later(j->n, j->hex); /* the reader is gone: its pin too */
  free(j);
  if (r)
    pump(r);
}

static void verify_local(struct rreq *r, uint64_t size) {
  struct verify_job *j = calloc(1, sizeof *j);
  int fd = j ? fcntl(r->fd, F_DUPFD_CLOEXEC, 0) : -1;
  if (fd < 0) {
    free(j);
    return; /* cannot check now: serve as before */
  }
  j->n = r->n;
  j->r = r;
  j->fd = fd;
  j->ctime_ns = r->ctime_ns;
  memcpy(j->hex, r->rt.hex, sizeof j->hex);
  j->work.data = j;
  if (uv_queue_work(r->n->loop, &j->work, verify_work, verify_done) != 0) {
    close(fd);
    free(j);
    return;
  }
  r->vj = j;
  r->gate = size - 1;
}

/* Writes status and headers for a body of `size` bytes at fd (a committed
 * blob or a download in flight) and starts streaming. */
static void serve_fd(struct rreq *r, uint64_t size, const char *ctype, int allow_range) {
  const char *hex = r->rt.hex;
  hdr_common(r);
  hdr_add(r, "Content-Type", "%s", ctype);
  hdr_add(r, "Docker-Content-Digest", "sha256:%s", hex);
  hdr_add(r, "Etag", "\"sha256:%s\"", hex);
  if (allow_range)
    hdr_add(r, "Accept-Ranges", "bytes");
  if (not_modified(r, hex)) {
    r->is_head = 1; /* no body either way */
    rr_start(r, 304, 0);
    rr_finish(r, 1);
    return;
  }
  uint64_t start = 0, end = size;
  int status = 200;
  int rg = allow_range ? parse_range(r, size, &start, &end) : 0;
  if (rg < 0) {
    hdr_reset(r);
    hdr_add(r, "Content-Range", "bytes */%" PRIu64, size);
    respond_bare(r, 416, "requested range not satisfiable");
    return;
  }
  if (rg > 0) {
    status = 206;
    hdr_add(r, "Content-Range", "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, start,
            end - 1, size);
  }
  if (rr_start(r, status, (int64_t)(end - start)) != 0) {
    rr_finish(r, 0);
    return;
  }
  if (r->is_head || end == start) {
    rr_finish(r, 1);
    return;
  }
  r->pos = start;
  r->end = end;
  if (r->need_verify && end == size && size > 0)
    verify_local(r, size);
  pump(r);
}

static const char *blob_ctype(const char *media_type) {
  /* A manifest fetched through /blobs/ keeps its type: containerd stores the
   * type it sees (containerd #13007). */
  return media_type && media_type[0] ? media_type : "application/octet-stream";
}

/* Serves hex from the store if present. Returns 0 when it took the request,
 * RM_ENOTFOUND when the blob is not cached. */
static int serve_local(struct rreq *r, int is_manifest) {
  struct blob_info info;
  int fd;
  int rc = blobstore_open_read(r->n->bs, r->rt.hex, &fd, &info);
  if (rc)
    return rc;
  r->fd = fd;
  r->fd_local = 1;
  memcpy(r->pin_hex, r->rt.hex, sizeof r->pin_hex);
  if (!r->source)
    r->source = "local";
  struct stat st;
  if (fstat(fd, &st) == 0) {
    r->ctime_ns = (uint64_t)st.st_ctim.tv_sec * 1000000000u + (uint64_t)st.st_ctim.tv_nsec;
    r->need_verify = (uintptr_t)strmap_get(r->n->verified, r->rt.hex) != r->ctime_ns + 1;
  }
  const char *ctype = blob_ctype(info.media_type);
  if (is_manifest && !info.media_type[0])
    ctype = "application/vnd.docker.distribution.manifest.v2+json";
  serve_fd(r, info.size, ctype, !is_manifest);
  return 0;
}

/* ---- blobs in flight ----------------------------------------------------- */

/* The download failed before this request sent anything: leave it and
 * answer with the error (and the upstream's status, for the message). */
static void src_failed(struct rreq *r, int err) {
  int st = fetch_src_upstream_status(r->fw.src);
  fetcher_leave(&r->fw);
  respond_failure(r, err, st);
}

static void blob_src_ready(struct rreq *r) {
  struct fetch_src *s = r->fw.src;
  r->fd = fetch_src_fd(s);
  r->source = r->source ? r->source : "inflight";
  serve_fd(r, fetch_src_size(s), blob_ctype(fetch_src_media_type(s)), 1);
}

static void blob_on_ready(struct fetch_waiter *w, int err) {
  struct rreq *r = container_of(w, struct rreq, fw);
  if (err) {
    src_failed(r, err);
    return;
  }
  blob_src_ready(r);
}

static void blob_on_data(struct fetch_waiter *w) {
  struct rreq *r = container_of(w, struct rreq, fw);
  if (r->started)
    pump(r);
}

static void blob_on_done(struct fetch_waiter *w, int err) {
  struct rreq *r = container_of(w, struct rreq, fw);
  if (err)
    r->src_failed = 1;
  if (!r->started) {
    if (err) {
      src_failed(r, err);
    }
    return;
  }
  pump(r);
}

/* Where a missing digest comes from: in a fleet its owners first, unless
 * the request is itself from a peer (no loops). */
static void make_plan(struct rreq *r, int is_manifest, struct fetch_plan *plan) {
  if (r->n->cluster) {
    cluster_plan(r->n->cluster, is_manifest, r->rt.hex, r->rt.name, r->rt.upstream,
                 r->hop ? r->hop_from : NULL, plan);
  } else {
    fetch_plan_upstream(plan, r->n->ups[r->rt.upstream]);
    plan->up = r->rt.upstream;
  }
}

static void join_blob(struct rreq *r, int starting) {
  r->fw.on_ready = blob_on_ready;
  r->fw.on_data = blob_on_data;
  r->fw.on_done = blob_on_done;
  struct fetch_plan plan;
  if (starting)
    make_plan(r, 0, &plan);
  else
    fetch_plan_upstream(&plan, r->n->ups[r->rt.upstream]);
  int rc = fetcher_join(r->n->fetcher, FETCH_BLOB, r->rt.hex, &plan, r->rt.name, &r->fw);
  if (rc) {
    respond_failure(r, rc, 0);
    return;
  }
  r->source = starting ? "upstream" : "inflight";
  if (fetch_src_ready(r->fw.src))
    blob_src_ready(r);
}

/* ---- small proxied upstream requests ------------------------------------ */

static int proxy_on_headers(void *ud, const struct upstream_response *resp) {
  struct rreq *r = ud;
  r->pstatus = resp->status;
  r->plen = resp->content_length;
  snprintf(r->pctype, sizeof r->pctype, "%s", resp->content_type ? resp->content_type : "");
  snprintf(r->plink, sizeof r->plink, "%s", resp->link ? resp->link : "");
  snprintf(r->pfilters, sizeof r->pfilters, "%s",
           resp->oci_filters_applied ? resp->oci_filters_applied : "");
  snprintf(r->pretry, sizeof r->pretry, "%s", resp->retry_after ? resp->retry_after : "");
  return 0;
}

static int proxy_on_data(void *ud, const char *p, size_t n) {
  struct rreq *r = ud;
  return buf_append(&r->pbody, p, n);
}

static void proxy_on_done(void *ud, int err) {
  struct rreq *r = ud;
  r->ureq = NULL;
  if (r->free_on_up_done) {
    rr_free(r);
    return;
  }
  r->proxy_done(r, err);
}

static const struct upstream_cbs proxy_cbs = {
    .on_headers = proxy_on_headers,
    .on_data = proxy_on_data,
    .on_done = proxy_on_done,
};

/* Sends one request to u (the upstream, or a peer with extra headers). */
static int proxy_to(struct rreq *r, struct upstream *u, enum upstream_method m,
                    const char *path, const char *accept, const char *kind,
                    const char *extra_headers, void (*done)(struct rreq *r, int err)) {
  struct upstream_fetch_opts o = {
      .method = m,
      .path = path,
      .repo = r->rt.name,
      .accept = accept,
      .kind = kind,
      .max_body = PROXY_BODY_MAX,
      .extra_headers = extra_headers,
  };
  buf_free(&r->pbody);
  buf_init(&r->pbody, PROXY_BODY_MAX);
  r->proxy_done = done;
  r->pstatus = 0;
  r->plen = -1;
  r->pctype[0] = '\0';
  return upstream_fetch(u, &o, &proxy_cbs, r, &r->ureq);
}

static void proxy(struct rreq *r, enum upstream_method m, const char *path,
                  const char *accept, const char *kind,
                  void (*done)(struct rreq *r, int err)) {
  r->source = "upstream";
  int rc = proxy_to(r, r->n->ups[r->rt.upstream], m, path, accept, kind, NULL, done);
  if (rc)
    respond_failure(r, rc, 0);
}

/* Passes an upstream's error answer through when it is a registry error
 * (4xx JSON); maps everything else. Returns 1 when it answered. */
static int proxy_error(struct rreq *r, int err) {
  if (err) {
    respond_failure(r, err, 0);
    return 1;
  }
  if (r->pstatus >= 200 && r->pstatus < 300)
    return 0;
  if (r->pstatus == 404) {
    respond_failure(r, RM_ENOTFOUND, 404);
  } else if (r->pstatus == 429) {
    respond_failure(r, RM_ERATELIMIT, 429);
  } else if (r->pstatus == 401 || r->pstatus == 403) {
    respond_failure(r, RM_EAUTH, r->pstatus);
  } else {
    respond_failure(r, RM_EUPSTREAM, r->pstatus);
  }
  return 1;
}

/* HEAD of a blob or manifest we do not have: ask the upstream with a HEAD
 * too, so nothing is downloaded (and nothing counted on Docker Hub). */
static void head_miss_done(struct rreq *r, int err) {
  if (proxy_error(r, err))
    return;
  hdr_common(r);
  const char *ctype = r->pctype[0] ? r->pctype : "application/octet-stream";
  hdr_add(r, "Content-Type", "%s", ctype);
  hdr_add(r, "Docker-Content-Digest", "sha256:%s", r->rt.hex);
  hdr_add(r, "Etag", "\"sha256:%s\"", r->rt.hex);
  if (r->plen < 0) {
    respond_failure(r, RM_EUPSTREAM, r->pstatus);
    return;
  }
  if (rr_start(r, 200, r->plen) != 0) {
    rr_finish(r, 0);
    return;
  }
  rr_finish(r, 1);
}

static void head_miss_upstream(struct rreq *r) {
  int blob = r->rt.kind == ROUTE_BLOB;
  char path[600];
  snprintf(path, sizeof path, "/v2/%s/%s/sha256:%s", r->rt.name, blob ? "blobs" : "manifests",
           r->rt.hex);
  proxy(r, UPSTREAM_HEAD, path, blob ? NULL : (r->accept[0] ? r->accept : NULL),
        blob ? "blob" : "manifest", head_miss_done);
}

/* The owner's answer to our HEAD: a size from it is as good as the
 * upstream's (the digest is the same); anything else asks the upstream. */
static void head_peer_done(struct rreq *r, int err) {
  if (!err && r->pstatus == 200 && r->plen >= 0) {
    r->source = "peer";
    head_miss_done(r, 0);
    return;
  }
  head_miss_upstream(r);
}

static void head_miss(struct rreq *r) {
  if (r->n->cluster && !r->hop) {
    int blob = r->rt.kind == ROUTE_BLOB;
    char target[900], hdrs[600];
    snprintf(target, sizeof target, "/v2/%s/%s/sha256:%s?ns=%s", r->rt.name,
             blob ? "blobs" : "manifests", r->rt.hex, up_host(r));
    struct upstream *peer = cluster_owner_peer(r->n->cluster, r->rt.hex, "HEAD", target, 0,
                                               hdrs, sizeof hdrs, NULL);
    if (peer && proxy_to(r, peer, UPSTREAM_HEAD, target,
                         blob ? NULL : (r->accept[0] ? r->accept : NULL),
                         blob ? "blob" : "manifest", hdrs, head_peer_done) == 0)
      return;
  }
  head_miss_upstream(r);
}

/* ---- blobs ---------------------------------------------------------------- */

/* A private upstream's blob is served under a repository only once the
 * upstream said (to a HEAD with the node's credentials) that the
 * repository has it: a digest learnt from one repository must not open the
 * bytes to a client naming another. Answers are kept for an hour. */
#define CONFIRM_TTL_S 3600
#define CONFIRM_MAX 65536

static void confirm_key(struct rreq *r, char *key, size_t len) {
  snprintf(key, len, "%d|%s|%s", r->rt.upstream, r->rt.name, r->rt.hex);
}

static void handle_blob_confirmed(struct rreq *r);

/* confirmed_put remembers an upstream's yes for ttl seconds; a full map
 * starts over (it is only a cache of answers). */
static void confirmed_put(struct node *n, const char *key, long ttl) {
  if (n->confirmed->count >= CONFIRM_MAX) {
    strmap_free(n->confirmed);
    strmap_init(n->confirmed);
  }
  strmap_put(n->confirmed, key, (void *)(uintptr_t)(time(NULL) + ttl));
}

static void confirm_done(struct rreq *r, int err) {
  if (!err && r->pstatus == 200) {
    char key[700];
    confirm_key(r, key, sizeof key);
    confirmed_put(r->n, key, CONFIRM_TTL_S);
    r->source = NULL;
    handle_blob_confirmed(r);
    return;
  }
  if (!err && (r->pstatus == 404 || r->pstatus == 401 || r->pstatus == 403)) {
    respond_error(r, 404, "BLOB_UNKNOWN", "blob unknown to registry");
    return;
  }
  proxy_error(r, err ? err : RM_EUPSTREAM);
}

/* Any other upstream: a blob is content-addressed, but a repository the
 * upstream does not have has no blobs (the spec's 404). One HEAD per
 * repository and hour proves it exists; a manifest fetched from the
 * upstream under it does too, so an ordinary pull never pays the HEAD and
 * the warm path stays a local hit. An upstream that cannot answer does not
 * stop the cache from serving what it has. */
#define REPO_KNOWN_TTL_S 3600

static void repo_key(struct rreq *r, char *key, size_t len) {
  snprintf(key, len, "%d|%s|", r->rt.upstream, r->rt.name);
}

static int repo_known(struct rreq *r) {
  char key[700];
  repo_key(r, key, sizeof key);
  return (uintptr_t)strmap_get(r->n->confirmed, key) >= (uintptr_t)time(NULL);
}

static void repo_mark(struct rreq *r) {
  char key[700];
  repo_key(r, key, sizeof key);
  confirmed_put(r->n, key, REPO_KNOWN_TTL_S);
}

static void repo_check_done(struct rreq *r, int err) {
  if (!err && r->pstatus == 200)
    repo_mark(r);
  if (!err && r->pstatus == 404) {
    respond_error(r, 404, "BLOB_UNKNOWN", "blob unknown to registry");
    return;
  }
  /* anything else (no answer, 401/403 to our credentials, 5xx) says
   * nothing about the repository: go on as without the check */
  r->source = NULL;
  handle_blob_confirmed(r);
}

static void handle_blob(struct rreq *r) {
  if (!r->hop && !r->n->cfg->upstreams[r->rt.upstream].is_private && !repo_known(r)) {
    char path[600];
    snprintf(path, sizeof path, "/v2/%s/blobs/sha256:%s", r->rt.name, r->rt.hex);
    proxy(r, UPSTREAM_HEAD, path, NULL, "blob", repo_check_done);
    return;
  }
  if (!r->hop && r->n->cfg->upstreams[r->rt.upstream].is_private) {
    char key[700];
    confirm_key(r, key, sizeof key);
    uintptr_t until = (uintptr_t)strmap_get(r->n->confirmed, key);
    if (until < (uintptr_t)time(NULL)) {
      char path[600];
      snprintf(path, sizeof path, "/v2/%s/blobs/sha256:%s", r->rt.name, r->rt.hex);
      proxy(r, UPSTREAM_HEAD, path, NULL, "blob", confirm_done);
      return;
    }
  }
  handle_blob_confirmed(r);
}

/* A holder asked for what it has: its cache, or a download in flight that
 * is not itself waiting on the asker. Returns 1 when it answered. */
static int holder_only_miss(struct rreq *r, enum fetch_kind kind) {
  struct fetch_src *s = fetcher_find(r->n->fetcher, kind, r->rt.hex);
  char label[80];
  snprintf(label, sizeof label, "peer:%s", r->hop_from);
  if (s && strcmp(fetch_src_label(s), label) != 0)
    return 0;
  hdr_common(r);
  respond_bare(r, 404, "not held here");
  return 1;
}

/* A peer's blob GET: it becomes a holder; a node already streaming the
 * blob to `fanout` peers sends it to other holders instead (307), one at
 * max_peer_uploads says busy (503). Returns 1 when it answered. */
static int peer_blob_get(struct rreq *r) {
  struct cluster *c = r->n->cluster;
  if (!r->holder_only) {
    char target[700], holders[200], loc[900];
    snprintf(target, sizeof target, "/v2/%s/blobs/sha256:%s?ns=%s", r->rt.name, r->rt.hex,
             up_host(r));
    int may = http_request_header(r->req, CLUSTER_NO_REDIRECT_HEADER) == NULL;
    enum cluster_upload d = cluster_upload_decide(c, r->rt.hex, r->hop_from, r->rt.name,
                                                  up_host(r), target, may, holders,
                                                  sizeof holders, loc, sizeof loc);
    if (d == CLUSTER_REDIRECT) {
      hdr_common(r);
      hdr_add(r, "Location", "%s", loc);
      hdr_add(r, CLUSTER_HOLDERS_HEADER, "%s", holders);
      respond_bare(r, 307, "busy: ask the holders in " CLUSTER_HOLDERS_HEADER);
      return 1;
    }
    if (d == CLUSTER_BUSY) {
      hdr_common(r);
      hdr_add(r, "Retry-After", "1");
      respond_bare(r, 503, "busy: at cluster.max_peer_uploads");
      return 1;
    }
  } else {
    struct blob_info info;
    if (blobstore_peek(r->n->bs, r->rt.hex, &info) != 0 && holder_only_miss(r, FETCH_BLOB))
      return 1;
  }
  r->upload = 1;
  cluster_upload_begin(c, r->rt.hex);
  return 0;
}

static void handle_blob_confirmed(struct rreq *r) {
  if (r->hop && r->hop_from[0] && !r->is_head && r->n->cluster && peer_blob_get(r))
    return;
  if (serve_local(r, 0) == 0)
    return;
  if (r->holder_only && holder_only_miss(r, FETCH_BLOB)) /* evicted meanwhile */
    return;
  struct fetch_src *s = fetcher_find(r->n->fetcher, FETCH_BLOB, r->rt.hex);
  if (s || !r->is_head) {
    join_blob(r, s == NULL);
    return;
  }
  head_miss(r);
}

/* ---- manifests ------------------------------------------------------------- */

static void manifest_serve_src(struct rreq *r) {
  struct fetch_src *s = r->fw.src;
  size_t len;
  const char *body = fetch_src_body(s, &len);
  hdr_common(r);
  hdr_add(r, "Docker-Content-Digest", "sha256:%s", r->rt.hex);
  hdr_add(r, "Etag", "\"sha256:%s\"", r->rt.hex);
  if (not_modified(r, r->rt.hex)) {
    r->is_head = 1;
    respond_body(r, 304, fetch_src_media_type(s), "", 0);
    return;
  }
  respond_body(r, 200, fetch_src_media_type(s), body, len);
}

static void manifest_on_ready(struct fetch_waiter *w, int err) {
  struct rreq *r = container_of(w, struct rreq, fw);
  if (err) {
    src_failed(r, err);
  }
  /* ready without error: wait for on_done (manifests are served whole) */
}

static void manifest_on_data(struct fetch_waiter *w) { (void)w; }

static void manifest_on_done(struct fetch_waiter *w, int err) {
  struct rreq *r = container_of(w, struct rreq, fw);
  if (err) {
    src_failed(r, err);
    return;
  }
  manifest_serve_src(r);
}

static void manifest_by_digest(struct rreq *r) {
  if (serve_local(r, 1) == 0)
    return;
  if (r->hop && r->holder_only && holder_only_miss(r, FETCH_MANIFEST))
    return;
  struct fetch_src *s = fetcher_find(r->n->fetcher, FETCH_MANIFEST, r->rt.hex);
  if (!s && r->is_head) {
    head_miss(r);
    return;
  }
  r->fw.on_ready = manifest_on_ready;
  r->fw.on_data = manifest_on_data;
  r->fw.on_done = manifest_on_done;
  struct fetch_plan plan;
  if (s)
    fetch_plan_upstream(&plan, r->n->ups[r->rt.upstream]); /* joins; not used */
  else
    make_plan(r, 1, &plan);
  int rc = fetcher_join(r->n->fetcher, FETCH_MANIFEST, r->rt.hex, &plan, r->rt.name,
                        &r->fw);
  if (rc) {
    respond_failure(r, rc, 0);
    return;
  }
  if (!r->source || strcmp(r->source, "stale") != 0)
    r->source = s ? "inflight" : "upstream";
  if (fetch_src_done(r->fw.src))
    manifest_serve_src(r);
}

static void manifest_tag_resolved(struct rreq *r, const struct tag_record *rec, int stale) {
  memcpy(r->rt.hex, rec->hex, sizeof r->rt.hex);
  if (stale) {
    snprintf(r->warning, sizeof r->warning,
             "299 - \"upstream %s unavailable; tag served from cache\"", up_host(r));
    metrics_add("regmesh_stale_tags_served_total", "", 1);
    r->source = "stale";
  }
  if (r->is_head) {
    /* Everything a HEAD needs is in the tag record: no upstream request. */
    hdr_common(r);
    hdr_add(r, "Content-Type", "%s", rec->media_type);
    hdr_add(r, "Docker-Content-Digest", "sha256:%s", rec->hex);
    hdr_add(r, "Etag", "\"sha256:%s\"", rec->hex);
    if (r->hop_authed) {
      /* a fleet peer asked us as the tag's owner: sign what we answer */
      char payload[400], reply[80];
      tag_reply_payload(payload, sizeof payload, rec);
      peerauth_reply(cluster_auth(r->n->cluster), r->hop_sig, payload, reply, sizeof reply);
      hdr_add(r, CLUSTER_TAG_TIME_HEADER, "%lld", (long long)rec->fetched_at_ms);
      hdr_add(r, CLUSTER_REPLY_HEADER, "%s", reply);
    }
    if (!r->source)
      r->source = "local";
    if (rr_start(r, 200, (int64_t)rec->size) != 0) {
      rr_finish(r, 0);
      return;
    }
    rr_finish(r, 1);
    return;
  }
  manifest_by_digest(r);
}

static void tag_cb(struct tag_waiter *w, int err, const struct tag_record *rec,
                   int stale, int upstream_status) {
  struct rreq *r = container_of(w, struct rreq, tw);
  if (err) {
    respond_failure(r, err, upstream_status);
    return;
  }
  if (!stale)
    r->source = r->is_head ? "upstream" : NULL;
  manifest_tag_resolved(r, rec, stale);
}

static void handle_manifest(struct rreq *r) {
  collect_accept(r);
  if (r->rt.by_digest) {
    manifest_by_digest(r);
    return;
  }
  char accept[600], variant[16];
  tag_accept(r, accept, sizeof accept, variant, sizeof variant);
  struct tag_record rec;
  r->tw.cb = tag_cb;
  struct tag_peer peer, *pp = NULL;
  if (r->n->cluster && !r->hop) {
    char key[700];
    memset(&peer, 0, sizeof peer);
    snprintf(peer.query, sizeof peer.query, "?ns=%s", up_host(r));
    char target[900];
    snprintf(target, sizeof target, "/v2/%s/manifests/%s%s", r->rt.name, r->rt.ref,
             peer.query);
    if (tag_owner_key(key, sizeof key, up_host(r), r->rt.name, r->rt.ref) == 0 &&
        (peer.u = cluster_owner_peer(r->n->cluster, key, "HEAD", target, 1, peer.headers,
                                     sizeof peer.headers, peer.sig)) != NULL) {
      peer.auth = cluster_auth(r->n->cluster);
      pp = &peer;
    }
  }
  int rc = tagcache_resolve(r->n->tags, r->n->ups[r->rt.upstream], r->rt.name,
                            r->rt.ref, variant, accept, pp, &r->tw, &rec);
  if (rc < 0) {
    respond_failure(r, rc, 0);
  } else if (rc == 1) {
    manifest_tag_resolved(r, &rec, 0);
  }
}

/* ---- tag lists and referrers ------------------------------------------ */

/* Tag lists are fetched whole from the upstream (following its Link pages),
 * sorted, cached for tags_list_ttl, and paginated here with n/last: the
 * upstream may not paginate (distribution 2.x ignores n) or may paginate
 * differently, and clients must get the spec's lexical order either way. */
#define TAGS_PAGES_MAX 100

static void tags_key(struct rreq *r, char *key, size_t len) {
  snprintf(key, len, "%s|%s", up_host(r), r->rt.name);
}

static int cmp_tag(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Answers one page from a sorted list of tags. */
static void tags_reply(struct rreq *r, json_t *tags) {
  char nbuf[32] = "", last[REF_TAG_MAX + 1] = "";
  query_param(r->req->query, "n", nbuf, sizeof nbuf);
  query_param(r->req->query, "last", last, sizeof last);
  size_t total = json_array_size(tags);
  size_t n = nbuf[0] ? (size_t)strtoull(nbuf, NULL, 10) : total;
  size_t i = 0;
  if (last[0])
    while (i < total && strcmp(json_string_value(json_array_get(tags, i)), last) <= 0)
      i++;
  json_t *page = json_array();
  for (size_t k = 0; page && k < n && i + k < total; k++)
    json_array_append(page, json_array_get(tags, i + k));
  size_t shown = json_array_size(page);
  hdr_common(r);
  if (nbuf[0] && n > 0 && i + shown < total && shown > 0) {
    char ns[160] = "";
    if (r->ns_echo[0])
      snprintf(ns, sizeof ns, "&ns=%s", r->ns_echo);
    hdr_add(r, "Link", "<%s?n=%zu&last=%s%s>; rel=\"next\"", r->req->path, n,
            json_string_value(json_array_get(page, shown - 1)), ns);
  }
  json_t *doc = json_pack("{s:s,s:o}", "name", r->rt.client_name, "tags",
                          page ? page : json_array());
  char *txt = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  if (!txt) {
    respond_error(r, 500, "UNKNOWN", "out of memory");
    return;
  }
  respond_body(r, 200, "application/json", txt, strlen(txt));
  free(txt);
}

static struct tagslist_entry *tags_cached(struct rreq *r) {
  struct tagslist_cache *tc = tagslist_cache(r->n);
  char key[700];
  tags_key(r, key, sizeof key);
  return tc ? strmap_get(&tc->map, key) : NULL;
}

static void tags_store(struct rreq *r, json_t *tags) {
  struct tagslist_cache *tc = tagslist_cache(r->n);
  char key[700];
  tags_key(r, key, sizeof key);
  struct tagslist_entry *e = tc ? strmap_get(&tc->map, key) : NULL;
  if (!e && tc && tc->map.count < TAGSLIST_MAX) {
    e = calloc(1, sizeof *e);
    if (e && strmap_put(&tc->map, key, e) != 0) {
      free(e);
      e = NULL;
    }
  }
  if (!e)
    return;
  json_decref(e->tags);
  e->tags = json_incref(tags);
  e->fetched_ms = uv_now(r->n->loop);
}

static void tags_page_done(struct rreq *r, int err);

static void tags_fetch(struct rreq *r, const char *path) {
  buf_free(&r->pbody);
  proxy(r, UPSTREAM_GET, path, "application/json", "tags", tags_page_done);
}

static void tags_page_done(struct rreq *r, int err) {
  int failed = err || r->pstatus >= 500 || r->pstatus == 429 || r->pstatus == 401 ||
               r->pstatus == 403;
  struct tagslist_entry *e = tags_cached(r);
  if (failed && e && e->tags) {
    snprintf(r->warning, sizeof r->warning,
             "299 - \"upstream %s unavailable; tag list served from cache\"", up_host(r));
    r->source = "stale";
    tags_reply(r, e->tags);
    return;
  }
  if (proxy_error(r, err))
    return;
  json_error_t jerr;
  json_t *doc = json_loadb(r->pbody.data ? r->pbody.data : "", r->pbody.len, 0, &jerr);
  json_t *tags = json_object_get(doc, "tags");
  if (!doc || (tags && !json_is_array(tags))) {
    json_decref(doc);
    respond_error(r, 502, "UNKNOWN", "upstream sent a malformed tag list");
    return;
  }
  if (!r->tl_all)
    r->tl_all = json_array();
  size_t i;
  json_t *t;
  json_array_foreach(tags, i, t) {
    if (json_is_string(t) && ref_tag_valid(json_string_value(t), json_string_length(t)))
      json_array_append(r->tl_all, t);
  }
  json_decref(doc);
  /* Follow the upstream's own pagination, within bounds. */
  const char *lt = strchr(r->plink, '<');
  const char *gt = lt ? strchr(lt, '>') : NULL;
  if (lt && gt && strstr(r->plink, "rel=\"next\"") && gt - lt - 1 > 4 &&
      strncmp(lt + 1, "/v2/", 4) == 0 && ++r->tl_pages < TAGS_PAGES_MAX) {
    char path[1024];
    snprintf(path, sizeof path, "%.*s", (int)(gt - lt - 1), lt + 1);
    tags_fetch(r, path);
    return;
  }
  /* Sort once; the cache keeps the sorted list. */
  size_t n = json_array_size(r->tl_all);
  const char **v = calloc(n ? n : 1, sizeof *v);
  json_t *sorted = json_array();
  if (!v || !sorted) {
    free(v);
    json_decref(sorted);
    respond_error(r, 500, "UNKNOWN", "out of memory");
    return;
  }
  for (i = 0; i < n; i++)
    v[i] = json_string_value(json_array_get(r->tl_all, i));
  qsort(v, n, sizeof *v, cmp_tag);
  for (i = 0; i < n; i++)
    if (i == 0 || strcmp(v[i], v[i - 1]) != 0)
      json_array_append_new(sorted, json_string(v[i]));
  free(v);
  tags_store(r, sorted);
  tags_reply(r, sorted);
  json_decref(sorted);
}

static void handle_tags(struct rreq *r) {
  char n[32] = "", last[256] = "";
  if (query_param(r->req->query, "n", n, sizeof n) < 0 ||
      query_param(r->req->query, "last", last, sizeof last) < 0) {
    hdr_reset(r);
    respond_bare(r, 400, "invalid pagination parameters");
    return;
  }
  for (const char *p = n; *p; p++) {
    if (*p < '0' || *p > '9' || p - n > 9) {
      hdr_reset(r);
      respond_bare(r, 400, "invalid number of results requested (n)");
      return;
    }
  }
  if (last[0] && !ref_tag_valid(last, strlen(last))) {
    respond_error(r, 400, "TAG_INVALID", "invalid tag in last");
    return;
  }
  struct tagslist_entry *e = tags_cached(r);
  /* the upstream's copy: a reload changes it there */
  uint64_t ttl = upstream_config(r->n->ups[r->rt.upstream])->tags_list_ttl_ms;
  if (e && e->tags && uv_now(r->n->loop) - e->fetched_ms < ttl) {
    r->source = "local";
    tags_reply(r, e->tags);
    return;
  }
  char path[600];
  snprintf(path, sizeof path, "/v2/%s/tags/list", r->rt.name);
  tags_fetch(r, path);
}

/* query_forward copies a raw query without its ns= parameter, as it came
 * (percent-encoding kept: "application/vnd.x%2Bjson" must not become a
 * '+', which a server reads as a space). Only URL-safe bytes pass.
 * Returns 0 or -1 (a byte that may not be in a query, or too long). */
static int query_forward(const char *q, char *out, size_t cap) {
  size_t o = 0;
  out[0] = '\0';
  while (q && *q) {
    const char *amp = strchr(q, '&');
    size_t n = amp ? (size_t)(amp - q) : strlen(q);
    if (!(n >= 3 && strncmp(q, "ns=", 3) == 0) && !(n == 2 && strncmp(q, "ns", 2) == 0) &&
        n > 0) {
      for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)q[i];
        if (c <= 0x20 || c >= 0x7f || c == '#' || c == '"' || c == '<' || c == '>')
          return -1;
      }
      if (o + n + 2 > cap)
        return -1;
      if (o)
        out[o++] = '&';
      memcpy(out + o, q, n);
      o += n;
      out[o] = '\0';
    }
    q = amp ? amp + 1 : q + n;
  }
  return 0;
}

static void referrers_done(struct rreq *r, int err) {
  if (!err && r->pstatus == 404) {
    /* the spec's answer of a registry without the API: clients fall back
     * to the tag schema; no registry code would be right here */
    char msg[300];
    snprintf(msg, sizeof msg, "upstream %s does not offer the referrers API", up_host(r));
    hdr_reset(r);
    respond_bare(r, 404, msg);
    return;
  }
  if (proxy_error(r, err))
    return;
  hdr_common(r);
  if (r->pfilters[0])
    hdr_add(r, "OCI-Filters-Applied", "%s", r->pfilters);
  /* the next page, at the client's own path (its name, its ns=) */
  const char *lt = strchr(r->plink, '<');
  const char *gt = lt ? strchr(lt, '>') : NULL;
  const char *qm = lt && gt ? memchr(lt, '?', (size_t)(gt - lt)) : NULL;
  char fq[700];
  if (qm && strstr(gt, "rel=\"next\"")) {
    char raw[700];
    snprintf(raw, sizeof raw, "%.*s", (int)(gt - qm - 1), qm + 1);
    if (query_forward(raw, fq, sizeof fq) == 0)
      hdr_add(r, "Link", "</v2/%s/referrers/sha256:%s?%s%s%s>; rel=\"next\"", r->rt.client_name,
              r->rt.hex, fq, r->ns_echo[0] ? "&ns=" : "", r->ns_echo);
  }
  respond_body(r, 200,
               r->pctype[0] ? r->pctype : "application/vnd.oci.image.index.v1+json",
               r->pbody.data ? r->pbody.data : "", r->pbody.len);
}

static void handle_referrers(struct rreq *r) {
  char path[1500], fq[700];
  if (query_forward(r->req->query, fq, sizeof fq) != 0) {
    hdr_reset(r);
    respond_bare(r, 400, "malformed query");
    return;
  }
  snprintf(path, sizeof path, "/v2/%s/referrers/sha256:%s%s%s", r->rt.name, r->rt.hex,
           fq[0] ? "?" : "", fq);
  r->pfilters[0] = '\0';
  r->plink[0] = '\0';
  proxy(r, UPSTREAM_GET, path, "application/vnd.oci.image.index.v1+json", "referrers",
        referrers_done);
}

/* ---- operational endpoints ------------------------------------------------ */

/* process_*: the names every Prometheus client library exports, read from
 * /proc (memory, not disk) at scrape time. */
static time_t g_start_time;

static void process_metrics(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) == 0)
    metrics_set_float("process_cpu_seconds_total", "",
                      (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
                          ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6);
  char buf[128];
  int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ssize_t k = read(fd, buf, sizeof buf - 1);
    close(fd);
    unsigned long long vm, rss;
    if (k > 0) {
      buf[k] = '\0';
      if (sscanf(buf, "%llu %llu", &vm, &rss) == 2) {
        long page = sysconf(_SC_PAGESIZE);
        metrics_set("process_virtual_memory_bytes", "", (int64_t)(vm * (unsigned long long)page));
        metrics_set("process_resident_memory_bytes", "", (int64_t)(rss * (unsigned long long)page));
      }
    }
  }
  DIR *d = opendir("/proc/self/fd");
  if (d) {
    int64_t nfd = 0;
    while (readdir(d))
      nfd++;
    closedir(d);
    metrics_set("process_open_fds", "", nfd - 3); /* ., .. and the DIR's own */
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    metrics_set("process_max_fds", "", (int64_t)rl.rlim_cur);
  metrics_set("process_start_time_seconds", "", (int64_t)g_start_time);
}

static void update_gauges(struct node *n) {
  if (n->cluster)
    cluster_update_metrics(n->cluster);
  process_metrics();
  struct blobstore_stats st;
  blobstore_get_stats(n->bs, &st);
  metrics_set("regmesh_storage_bytes", "", (int64_t)st.bytes);
  metrics_set("regmesh_storage_blobs", "", (int64_t)st.blobs);
  metrics_set("regmesh_storage_max_bytes", "", (int64_t)st.max_size);
  metrics_set("regmesh_storage_evictions_total", "", (int64_t)st.evictions);
  metrics_set("regmesh_storage_evicted_bytes_total", "", (int64_t)st.evicted_bytes);
  struct http_server_stats hs;
  http_server_get_stats(n->http, &hs);
  metrics_set("regmesh_http_connections_open", "", (int64_t)hs.connections_open);
  metrics_set("regmesh_http_connections_total", "", (int64_t)hs.connections_total);
  metrics_set("regmesh_http_tls_rejected_total", "", (int64_t)hs.tls_rejected);
  metrics_set("regmesh_http_timeouts_total", "", (int64_t)hs.timeouts);
  metrics_set("regmesh_http_bad_requests_total", "", (int64_t)hs.bad_requests);
  metrics_set("regmesh_tls_handshakes_total", "result=\"ok\"", (int64_t)hs.tls_handshakes);
  metrics_set("regmesh_tls_handshakes_total", "result=\"failed\"",
              (int64_t)hs.tls_handshake_errors);
  metrics_set("regmesh_tls_body_bytes_total", "path=\"userspace\"",
              (int64_t)hs.tls_file_bytes);
  metrics_set("regmesh_tls_body_bytes_total", "path=\"ktls\"", 0);
  metrics_set("regmesh_http_file_reads_offloop_total", "", (int64_t)hs.file_reads_offloop);
  if (n->proxy)
    proxy_update_metrics(n->proxy);
  for (size_t i = 0; i < n->cfg->n_upstreams; i++) {
    struct upstream_ratelimit rl;
    upstream_get_ratelimit(n->ups[i], &rl);
    char labels[200];
    snprintf(labels, sizeof labels, "upstream=\"%s\"", n->cfg->upstreams[i].host);
    struct upstream_circuit_info ci;
    upstream_get_circuit(n->ups[i], &ci);
    for (int s = UPSTREAM_CIRCUIT_CLOSED; s <= UPSTREAM_CIRCUIT_HALF_OPEN; s++) {
      char sl[260];
      snprintf(sl, sizeof sl, "%s,state=\"%s\"", labels, upstream_circuit_str(s));
      metrics_set("regmesh_upstream_circuit_state", sl, ci.state == (enum upstream_circuit)s);
    }
    metrics_set("regmesh_upstream_circuit_opens_total", labels, (int64_t)ci.opens);
    if (rl.remaining >= 0)
      metrics_set("regmesh_upstream_ratelimit_remaining", labels, rl.remaining);
    if (rl.limit >= 0)
      metrics_set("regmesh_upstream_ratelimit_limit", labels, rl.limit);
  }
}

/* GET /cluster/members and /cluster/owners?digest=|tag= (docs/cluster.md). */
static void handle_cluster(struct rreq *r) {
  struct cluster *c = r->n->cluster;
  const char *p = r->req->path;
  if (!c) {
    respond_error(r, 404, "UNSUPPORTED", "this node runs without a cluster: section");
    return;
  }
  char *txt = NULL;
  if (strcmp(p, "/cluster/members") == 0) {
    txt = cluster_members_json(c);
  } else if (strcmp(p, "/cluster/owners") == 0) {
    char v[600], key[700], hex[DIGEST_HEX_LEN + 1];
    if (query_param(r->req->query, "digest", v, sizeof v) == 1 &&
        digest_parse(v, strlen(v), hex) == 0) {
      snprintf(key, sizeof key, "%s", hex);
    } else if (query_param(r->req->query, "tag", v, sizeof v) == 1 && strchr(v, '/') &&
               strrchr(v, ':') > strchr(v, '/')) {
      snprintf(key, sizeof key, "tag:%s", v);
    } else {
      respond_error(r, 400, "UNSUPPORTED",
                    "want ?digest=sha256:<hex> or ?tag=<upstream>/<name>:<tag>");
      return;
    }
    cluster_owners_json(c, key, &txt);
  } else {
    hdr_reset(r);
    respond_bare(r, 404, "unknown cluster endpoint");
    return;
  }
  hdr_reset(r);
  if (!txt) {
    respond_body(r, 500, "text/plain", "out of memory\n", 14);
    return;
  }
  respond_body(r, 200, "application/json", txt, strlen(txt));
  free(txt);
}

/* /readyz: 200 only when this node can do its job. JSON with the reason
 * and every upstream's circuit, so a load balancer's log says why. */
static void handle_readyz(struct rreq *r) {
  struct node *n = r->n;
  struct blobstore_stats st;
  blobstore_get_stats(n->bs, &st);
  json_t *ups = json_array();
  size_t open = 0;
  for (size_t i = 0; i < n->cfg->n_upstreams; i++) {
    struct upstream_circuit_info ci;
    upstream_get_circuit(n->ups[i], &ci);
    if (ci.state != UPSTREAM_CIRCUIT_CLOSED) /* half-open: nothing proved it back */
      open++;
    json_array_append_new(
        ups, json_pack("{s:s,s:s,s:I,s:I}", "host", n->cfg->upstreams[i].host, "circuit",
                       upstream_circuit_str(ci.state), "failures", (json_int_t)ci.failures,
                       "retry_in_ms", (json_int_t)ci.retry_in_ms));
  }
  const char *reason = NULL;
  if (n->draining || n->stopping)
    reason = "shutting down";
  else if (!n->ready)
    reason = "starting";
  else if (!n->storage_writable)
    reason = "storage is not writable";
  else if (n->cfg->n_upstreams > 0 && open == n->cfg->n_upstreams && st.blobs == 0)
    reason = "every upstream's circuit is open and nothing is cached";
  json_t *doc = json_pack("{s:b,s:s,s:b,s:I,s:o}", "ready", reason == NULL, "reason",
                          reason ? reason : "ok", "storage_writable", n->storage_writable,
                          "cached_blobs", (json_int_t)st.blobs, "upstreams", ups);
  char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  hdr_reset(r);
  if (!text) {
    respond_body(r, 503, "text/plain", "not ready\n", 10);
    return;
  }
  size_t len = strlen(text);
  respond_body(r, reason ? 503 : 200, "application/json", text, len);
  free(text);
}

static void deny(struct rreq *r, int status, const char *why, const char *msg);

/* ---- /cache/: the operator's view (cache.c, docs/operations.md) ---------- */

struct cache_work {
  uv_work_t work;
  struct rreq *r;
  struct cache_job *job;
};

static void cache_work(uv_work_t *w) {
  struct cache_work *cw = w->data;
  cache_job_run(cw->job);
}

static void cache_after(uv_work_t *w, int status) {
  struct cache_work *cw = w->data;
  struct rreq *r = cw->r;
  struct cache_job *j = cw->job;
  struct node *n = r->n;
  (void)status;
  if (j->op == CACHE_OP_VERIFY) {
    n->cache_verify_busy = 0;
    metrics_add("regmesh_cache_verified_blobs_total", "", (int64_t)j->verified);
    metrics_add("regmesh_cache_corrupt_blobs_total", "", (int64_t)j->corrupt);
  }
  for (size_t i = 0; i < j->n_forget; i++)
    tagcache_forget(n->tags, j->forget[i].host, j->forget[i].name, j->forget[i].tag);
  r->job_pending = 0;
  if (r->client_gone) {
    rr_finish(r, 0);
  } else {
    hdr_reset(r);
    respond_body(r, j->status, "application/json", j->body, strlen(j->body));
  }
  cache_job_free(j);
  free(cw);
}

static void handle_cache(struct rreq *r) {
  static const struct {
    const char *path;
    enum cache_op op;
    int post;
  } ops[] = {{"/cache/ls", CACHE_OP_LS, 0},        {"/cache/stat", CACHE_OP_STAT, 0},
             {"/cache/rm", CACHE_OP_RM, 1},        {"/cache/pin", CACHE_OP_PIN, 1},
             {"/cache/unpin", CACHE_OP_UNPIN, 1},  {"/cache/verify", CACHE_OP_VERIFY, 1}};
  struct http_request *req = r->req;
  struct node *n = r->n;
  size_t i = 0;
  while (i < sizeof ops / sizeof ops[0] && strcmp(req->path, ops[i].path) != 0)
    i++;
  if (i == sizeof ops / sizeof ops[0]) {
    respond_error(r, 404, "UNSUPPORTED",
                  "cache endpoints: GET /cache/ls, /cache/stat; POST /cache/rm, /cache/pin, "
                  "/cache/unpin, /cache/verify");
    return;
  }
  int want = ops[i].post ? HTTP_POST : HTTP_GET;
  if ((int)req->method != want && !(want == HTTP_GET && req->method == HTTP_HEAD)) {
    respond_error(r, 405, "UNSUPPORTED", ops[i].post ? "use POST" : "use GET");
    return;
  }
  /* Changing the cache is for the operator: the admin listener (which
   * obeys allow:), or this host when there is no admin listener. */
  if (ops[i].post && req->listener_id != NODE_LISTENER_ADMIN &&
      !access_is_loopback(&req->remote_addr)) {
    deny(r, 403, "allow", "changing the cache is allowed from admin_listen or this host only");
    return;
  }
  char arg[CACHE_ARG_MAX] = "", up[256] = "";
  if (query_param(req->query, "ref", arg, sizeof arg) < 0 ||
      query_param(req->query, "upstream", up, sizeof up) < 0) {
    respond_error(r, 400, "UNSUPPORTED", "a query parameter is malformed or too long");
    return;
  }
  if (ops[i].op == CACHE_OP_VERIFY && n->cache_verify_busy) {
    respond_error(r, 409, "DENIED", "a cache verify is already running");
    return;
  }
  struct cache_work *cw = calloc(1, sizeof *cw);
  if (!cw || cache_job_new(&cw->job, n->bs, n->cfg, ops[i].op, arg, up) != 0) {
    free(cw);
    respond_error(r, 503, "UNAVAILABLE", "out of memory");
    return;
  }
  cw->job->cancel = &n->cache_cancel;
  cw->r = r;
  cw->work.data = cw;
  if (uv_queue_work(n->loop, &cw->work, cache_work, cache_after) != 0) {
    cache_job_free(cw->job);
    free(cw);
    respond_error(r, 503, "UNAVAILABLE", "cannot start the job");
    return;
  }
  if (ops[i].op == CACHE_OP_VERIFY)
    n->cache_verify_busy = 1;
  r->job_pending = 1;
}

static int handle_admin(struct rreq *r) {
  const char *p = r->req->path;
  struct node *n = r->n;
  r->route_label = "admin";
  /* probed every few seconds: at info level they would drown the pulls */
  r->req->log_quiet = strcmp(p, "/healthz") == 0 || strcmp(p, "/readyz") == 0 ||
                      strcmp(p, "/metrics") == 0;
  if (strcmp(p, "/healthz") == 0) {
    hdr_reset(r);
    respond_body(r, 200, "text/plain", "ok\n", 3);
  } else if (strcmp(p, "/readyz") == 0) {
    handle_readyz(r);
  } else if (strcmp(p, "/metrics") == 0) {
    update_gauges(n);
    struct buf b;
    buf_init(&b, 8u << 20);
    int rc = metrics_render(&b);
    hdr_reset(r);
    if (rc)
      respond_body(r, 500, "text/plain", "metrics unavailable\n", 20);
    else
      respond_body(r, 200, "text/plain; version=0.0.4", b.data ? b.data : "", b.len);
    buf_free(&b);
  } else if (strncmp(p, "/cluster/", 9) == 0) {
    handle_cluster(r);
  } else if (strncmp(p, "/cache/", 7) == 0) {
    handle_cache(r);
  } else {
    r->route_label = "other";
    r->req->log_quiet = 0;
    return 0;
  }
  return 1;
}

/* ---- dispatch -------------------------------------------------------------- */

static void on_client_close(struct http_request *req, void *ud) {
  (void)req;
  struct rreq *r = ud;
  if (r->auth_pending || r->job_pending) { /* on_auth_done / cache_after end it */
    r->client_gone = 1;
    return;
  }
  /* A pending sendfile reports the failure itself; otherwise end here. */
  if (!r->sending && !r->finished)
    rr_finish(r, 0);
}

/* deny refuses a request the node will not serve to this client, counted
 * by why: 403 for an address outside `allow:`, 401 (with the Basic
 * challenge clients answer with their credentials) for a missing or wrong
 * login or peer signature. A refused client is not kept alive. */
static void deny(struct rreq *r, int status, const char *why, const char *msg) {
  char labels[40];
  snprintf(labels, sizeof labels, "why=\"%s\"", why);
  metrics_add("regmesh_denied_total", labels, 1);
  r->route_label = "denied";
  if (status == 403)
    http_request_close_after(r->req);
  r->basic_challenge = status == 401 && strcmp(why, "auth") == 0;
  r->bearer_challenge = r->basic_challenge && r->req->listener_id == NODE_LISTENER_PROXY &&
                        !r->token_req;
  respond_error(r, status, status == 403 ? "DENIED" : "UNAUTHORIZED", msg);
}

/* A peer's notice (held, replicate, handover) about content by digest: a
 * HEAD with X-Regmesh-Notice, answered with its status and no body. */
static int peer_notice(struct rreq *r) {
  const struct http_header *nt = http_request_header(r->req, CLUSTER_NOTICE_HEADER);
  if (!nt || !r->is_head)
    return 0;
  if (!(r->rt.kind == ROUTE_BLOB || (r->rt.kind == ROUTE_MANIFEST && r->rt.by_digest))) {
    hdr_common(r);
    respond_bare(r, 400, "notices are about content by digest");
    return 1;
  }
  const struct http_header *hl = http_request_header(r->req, CLUSTER_HOLDERS_HEADER);
  int st = cluster_notice(r->n->cluster, nt->value, r->rt.kind == ROUTE_MANIFEST, r->rt.hex,
                          r->rt.name, r->rt.upstream, r->hop_from, hl ? hl->value : NULL);
  hdr_common(r);
  respond_bare(r, st, "notice");
  return 1;
}

/* respond_token is the token endpoint of the registries the proxy
 * intercepts (the realm of their Bearer challenges, and auth.docker.io's
 * /token): a client that logged in (or anyone, without auth:) gets a token
 * good on this node only; the upstream's own credentials stay here. */
static void respond_token(struct rreq *r) {
  char tok[ACCESS_TOKEN_MAX];
  time_t now = time(NULL);
  if (access_token_issue(r->n->access, r->user, (int64_t)now, ACCESS_TOKEN_TTL_S, tok,
                         sizeof tok) < 0) {
    respond_error(r, 500, "UNKNOWN", "cannot issue a token");
    return;
  }
  struct tm tm;
  char issued[32];
  gmtime_r(&now, &tm);
  strftime(issued, sizeof issued, "%Y-%m-%dT%H:%M:%SZ", &tm);
  json_t *doc = json_pack("{s:s,s:s,s:i,s:s}", "token", tok, "access_token", tok, "expires_in",
                          ACCESS_TOKEN_TTL_S, "issued_at", issued);
  char *txt = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  if (!txt) {
    respond_error(r, 500, "UNKNOWN", "cannot issue a token");
    return;
  }
  r->req->log_source = "token";
  hdr_common(r);
  hdr_add(r, "Cache-Control", "no-store");
  respond_body(r, 200, "application/json", txt, strlen(txt));
  free(txt);
}

/* dispatch serves a request that passed its listener's checks. */
static void dispatch(struct rreq *r) {
  struct http_request *req = r->req;
  struct node *n = r->n;
  if (req->method != HTTP_GET && req->method != HTTP_HEAD) {
    respond_error(r, 405, "UNSUPPORTED", "this registry is a read-only mirror");
    return;
  }
  r->is_head = req->method == HTTP_HEAD;
  if (r->token_req) {
    respond_token(r);
    return;
  }

  enum route_error rerr;
  char msg[512];
  int lu = req->listener_id == NODE_LISTENER_PROXY ? r->proxy_up : req->listener_id;
  int rc = route_request(n->cfg, lu, req->path, req->query, &r->rt, &rerr, msg, sizeof msg);
  if (rc) {
    /* errors for valid-looking API paths keep their route's label */
    if (rerr != ROUTE_ERR_NOT_FOUND)
      r->route_label = NULL;
    switch (rerr) {
    case ROUTE_ERR_NAME_INVALID: respond_error(r, 400, "NAME_INVALID", msg); break;
    case ROUTE_ERR_TAG_INVALID: respond_error(r, 400, "TAG_INVALID", msg); break;
    case ROUTE_ERR_DIGEST_INVALID: respond_error(r, 400, "DIGEST_INVALID", msg); break;
    case ROUTE_ERR_NAME_UNKNOWN: respond_error(r, 404, "NAME_UNKNOWN", msg); break;
    default: hdr_reset(r); respond_bare(r, 404, "not a registry API path"); break;
    }
    return;
  }
  r->route_label = NULL;
  if (!r->hop && n->cfg->upstreams[r->rt.upstream].is_private && !r->authed) {
    deny(r, 401, "auth", "this upstream is private: log in");
    return;
  }
  /* The spec asks proxies to echo the namespace they used. */
  if (r->rt.via_ns && query_param(req->query, "ns", r->ns_echo, sizeof r->ns_echo) != 1)
    r->ns_echo[0] = '\0';
  if (r->hop && r->hop_from[0] && r->n->cluster && peer_notice(r))
    return;
  if (r->rt.kind != ROUTE_BASE && r->rt.kind != ROUTE_CATALOG)
    deadline_set(r);
  switch (r->rt.kind) {
  case ROUTE_BASE:
    hdr_common(r);
    respond_body(r, 200, "application/json", "{}", 2);
    break;
  case ROUTE_CATALOG:
    respond_error(r, 404, "UNSUPPORTED", "a mirror does not serve the catalog");
    break;
  case ROUTE_BLOB: handle_blob(r); break;
  case ROUTE_MANIFEST: handle_manifest(r); break;
  case ROUTE_TAGS: handle_tags(r); break;
  case ROUTE_REFERRERS: handle_referrers(r); break;
  }
}

/* The peer listener serves fleet peers only: with a cluster secret every
 * request must carry a valid signature (a replay outside the skew window
 * fails too), and nothing is fetched for one that does not. */
static void handle_peer(struct rreq *r) {
  struct http_request *req = r->req;
  struct node *n = r->n;
  if (!n->cluster) {
    respond_error(r, 404, "UNSUPPORTED", "not a fleet member");
    return;
  }
  const struct peerauth *pa = cluster_auth(n->cluster);
  if (!pa->enabled && !access_allowed(n->access, &req->remote_addr)) {
    deny(r, 403, "allow", "this address may not use this node");
    return;
  }
  const struct http_header *hop = http_request_header(req, CLUSTER_HOP_HEADER);
  r->hop = 1;
  if (hop && strlen(hop->value) >= sizeof r->hop_from) {
    respond_error(r, 400, "UNSUPPORTED", CLUSTER_HOP_HEADER " is too long");
    return;
  }
  snprintf(r->hop_from, sizeof r->hop_from, "%s", hop ? hop->value : "");
  r->holder_only = http_request_header(req, CLUSTER_HOLDER_ONLY_HEADER) != NULL;
  if (pa->enabled) {
    const struct http_header *auth = http_request_header(req, CLUSTER_AUTH_HEADER);
    char target[2400];
    int tl = snprintf(target, sizeof target, "%s%s%s", req->path, req->query ? "?" : "",
                      req->query ? req->query : "");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (!hop || !auth || tl <= 0 || (size_t)tl >= sizeof target ||
        peerauth_verify(pa, req->method == HTTP_HEAD ? "HEAD" : "GET", target, hop->value,
                        auth->value, now, r->hop_sig) != 0) {
      LOG_W("peer request from %s (%s) %s; refused", hop ? hop->value : "?", req->remote,
            auth ? "has a bad or expired signature" : "is not signed");
      deny(r, 401, "peer_auth", "peer requests must be signed with the cluster secret");
      return;
    }
    r->hop_authed = 1;
  }
  dispatch(r);
}

static void on_auth_done(void *ud, enum access_verdict v) {
  struct rreq *r = ud;
  r->auth_pending = 0;
  if (r->client_gone) {
    rr_finish(r, 0);
    return;
  }
  if (v != ACCESS_OK) {
    LOG_I("auth: %s: wrong password for '%s'", r->req->remote, r->user);
    deny(r, 401, "auth", "wrong user name or password");
    return;
  }
  r->authed = 1;
  dispatch(r);
}

void registry_handle(struct http_request *req, void *ud) {
  struct node *n = ud;
  if (req->listener_id == NODE_LISTENER_PROXY && !req->proxy_host[0] && n->proxy &&
      proxy_handle(n->proxy, req))
    return;
  struct rreq *r = calloc(1, sizeof *r);
  if (!r) {
    http_respond_abort(req);
    return;
  }
  r->n = n;
  r->req = req;
  r->proxy_up = -1;
  r->fd = -1;
  r->gate = UINT64_MAX;
  r->rt.kind = ROUTE_BASE;
  buf_init(&r->pbody, PROXY_BODY_MAX);
  http_request_on_close(req, on_client_close, r);

  if (req->listener_id == NODE_LISTENER_PEER) {
    handle_peer(r);
    return;
  }
  if (!access_allowed(n->access, &req->remote_addr)) {
    deny(r, 403, "allow", "this address may not use this node");
    return;
  }
  if (req->listener_id == NODE_LISTENER_ADMIN) {
    if (!handle_admin(r))
      respond_error(r, 404, "UNSUPPORTED",
                    "the admin listener serves /metrics, /healthz, /readyz, /cluster/, /cache/");
    return;
  }
  if (req->listener_id == NODE_LISTENER_PROXY) {
    /* inside an intercepted CONNECT, or a plain http:// request for an
     * upstream (proxy_handle sent everything else its own way) */
    r->proxy_up = proxy_request_upstream(n, req);
    if (r->proxy_up < 0) {
      respond_error(r, 404, "NAME_UNKNOWN", "not a registry this node serves");
      return;
    }
    r->token_req = strcmp(req->path, "/token") == 0;
    if (req->conn_user[0]) {
      /* the CONNECT carried a good Proxy-Authorization */
      snprintf(r->user, sizeof r->user, "%s", req->conn_user);
      r->authed = 1;
    }
  } else if (!n->cfg->admin_listen && handle_admin(r)) {
    /* with an admin listener, the public one serves none of it */
    return;
  }
  r->route_label = NULL;
  /* X-Regmesh-Hop means nothing here: only the peer listener serves peers */
  if (access_auth_enabled(n->access) && !r->authed) {
    const struct http_header *h = http_request_header(req, "Authorization");
    enum access_verdict v = access_check(n->access, h ? h->value : NULL, on_auth_done, r,
                                         r->user, sizeof r->user);
    if (v == ACCESS_PENDING) {
      r->auth_pending = 1;
      return;
    }
    if (v != ACCESS_OK) {
      deny(r, 401, "auth", h ? "wrong user name or password" : "authentication required");
      return;
    }
    r->authed = 1;
  }
  dispatch(r);
}

void registry_stop(struct node *n) {
  if (n->deadline_init) {
    n->deadline_init = 0;
    uv_close((uv_handle_t *)&n->deadline_timer, NULL);
  }
}

void registry_init(struct node *n) {
  if (uv_timer_init(n->loop, &n->deadline_timer) == 0) {
    n->deadline_timer.data = n;
    n->deadline_init = 1;
  }
  g_start_time = time(NULL);
  metrics_describe("regmesh_first_byte_timeouts_total", METRIC_COUNTER,
                   "Cold requests answered 504 because the upstream sent nothing within "
                   "first_byte_timeout.");
  metrics_describe("regmesh_build_info", METRIC_GAUGE,
                   "Always 1; the labels say which regmesh this is.");
  metrics_set("regmesh_build_info", "version=\"" REGMESH_VERSION "\",commit=\"" REGMESH_COMMIT "\"",
              1);
  metrics_describe("process_cpu_seconds_total", METRIC_COUNTER,
                   "User and system CPU time spent, in seconds.");
  metrics_describe("process_resident_memory_bytes", METRIC_GAUGE, "Resident memory size.");
  metrics_describe("process_virtual_memory_bytes", METRIC_GAUGE, "Virtual memory size.");
  metrics_describe("process_open_fds", METRIC_GAUGE, "Open file descriptors.");
  metrics_describe("process_max_fds", METRIC_GAUGE, "The limit on open file descriptors.");
  metrics_describe("process_start_time_seconds", METRIC_GAUGE,
                   "Start time of the process since the Unix epoch, in seconds.");
  metrics_describe("regmesh_http_request_duration_seconds", METRIC_HISTOGRAM,
                   "Time from a request's head to its response complete on the node's "
                   "side, by route and source.");
  metrics_describe("regmesh_cold_first_byte_seconds", METRIC_HISTOGRAM,
                   "For blobs and manifests not in the cache: time from the request's head "
                   "to the response's status line.");
  metrics_describe("regmesh_cache_requests_total", METRIC_COUNTER,
                   "Blobs and manifests served, by what they were for the cache: hit (on "
                   "disk), miss (fetched, or sharing a fetch), peer (from the fleet), stale.");
  static const char *const results[] = {"hit", "miss", "peer", "stale"};
  for (size_t i = 0; i < 4; i++) {
    char labels[64];
    snprintf(labels, sizeof labels, "kind=\"blob\",result=\"%s\"", results[i]);
    metrics_add("regmesh_cache_requests_total", labels, 0);
    snprintf(labels, sizeof labels, "kind=\"manifest\",result=\"%s\"", results[i]);
    metrics_add("regmesh_cache_requests_total", labels, 0);
  }
  metrics_describe("regmesh_cache_verified_blobs_total", METRIC_COUNTER,
                   "Blobs re-hashed by cache verify and found intact.");
  metrics_describe("regmesh_cache_corrupt_blobs_total", METRIC_COUNTER,
                   "Blobs cache verify found not to hash to their digest.");
  metrics_add("regmesh_cache_verified_blobs_total", "", 0);
  metrics_add("regmesh_cache_corrupt_blobs_total", "", 0);
  metrics_describe("regmesh_denied_total", METRIC_COUNTER,
                   "Requests refused: why=allow (address outside allow:), auth (no or wrong "
                   "login), peer_auth (peer request without a valid signature).");
  metrics_describe("regmesh_tls_handshakes_total", METRIC_COUNTER,
                   "TLS handshakes on the node's listeners by result.");
  metrics_describe("regmesh_upstream_circuit_state", METRIC_GAUGE,
                   "1 for the upstream's circuit breaker state (closed, open, "
                   "half_open), 0 for the others.");
  metrics_describe("regmesh_upstream_circuit_opens_total", METRIC_COUNTER,
                   "Times the upstream's circuit opened after failures in a row.");
  metrics_describe("regmesh_tls_body_bytes_total", METRIC_COUNTER,
                   "Cached file bytes sent over TLS, by path: userspace (encrypted by "
                   "OpenSSL through the buffer pool) or ktls (kernel TLS).");
  metrics_describe("regmesh_http_requests_total", METRIC_COUNTER,
                   "HTTP requests by API route and status.");
  metrics_describe("regmesh_hits_total", METRIC_COUNTER,
                   "Deprecated, use regmesh_cache_requests_total: blob and manifest "
                   "responses by source (local, inflight, upstream, peer, stale).");
  metrics_describe("regmesh_served_bytes_total", METRIC_COUNTER,
                   "Body bytes sent to clients by source.");
  metrics_describe("regmesh_stale_tags_served_total", METRIC_COUNTER,
                   "Tags served past their TTL because the upstream failed.");
  metrics_describe("regmesh_storage_bytes", METRIC_GAUGE, "Bytes in the cache.");
  metrics_describe("regmesh_storage_blobs", METRIC_GAUGE, "Objects in the cache.");
  metrics_describe("regmesh_storage_max_bytes", METRIC_GAUGE, "The cache's size budget (0: none).");
  metrics_describe("regmesh_storage_evictions_total", METRIC_COUNTER, "Objects evicted.");
  metrics_describe("regmesh_storage_evicted_bytes_total", METRIC_COUNTER, "Bytes evicted.");
  metrics_describe("regmesh_http_connections_open", METRIC_GAUGE, "Client connections open.");
  metrics_describe("regmesh_http_file_reads_offloop_total", METRIC_COUNTER,
                   "Reads of cached files that missed the page cache and ran on the thread "
                   "pool instead of the event loop.");
  metrics_describe("regmesh_http_connections_total", METRIC_COUNTER, "Client connections accepted.");
  metrics_describe("regmesh_http_tls_rejected_total", METRIC_COUNTER,
                   "Connections that sent TLS to the plain HTTP port.");
  metrics_describe("regmesh_http_timeouts_total", METRIC_COUNTER, "Connections closed by a timeout.");
  metrics_describe("regmesh_http_bad_requests_total", METRIC_COUNTER, "Malformed requests.");
  metrics_describe("regmesh_upstream_ratelimit_limit", METRIC_GAUGE,
                   "Upstream rate limit (ratelimit-limit) last seen.");
}
