/* upstream.c - the upstream HTTP client: libcurl's multi interface on libuv.
 *
 * The wiring follows curl's docs/examples/multi-uv.c: curl tells us which
 * sockets to watch (one uv_poll_t each) and when to wake it (one uv_timer_t);
 * we hand events back through curl_multi_socket_action and collect finished
 * transfers with curl_multi_info_read. Everything runs on the loop thread.
 *
 * One logical request (struct upstream_req) is a small state machine whose
 * every move goes through req_set_state: it may wait for the upstream's
 * one-time /v2/ ping, wait for a bearer token, run one *attempt* (one curl
 * easy handle), sleep in backoff, and finish. Auth rounds, retries and
 * resumes are new attempts of the same request; the caller sees one
 * on_headers, one body stream and one on_done. Each attempt's final
 * response gets a verdict at its first body byte (or at its end when it has
 * no body): deliver it, swallow it and retry, swallow it and authenticate,
 * or continue a resumed stream.
 *
 * Re-entrancy is the hard part of driving curl from callbacks: curl forbids
 * adding or removing handles from within its callbacks, and the caller's
 * callbacks may cancel anything. So finishing a request only marks it DONE
 * and queues it; a uv_idle handle (never inside a curl callback) detaches
 * the easy handle, calls on_done and frees the request. New requests are
 * started from the same queue, which also keeps "never call back from within
 * upstream_fetch" true by construction.
 */
#include "upstream.h"
#include "upstream_auth.h"

#include "../common/buf.h"
#include "../common/errors.h"
#include "../common/log.h"
#include "../config/config.h"
#include "metrics.h"

#include <curl/curl.h>
#include <jansson.h>

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#ifndef REGMESH_VERSION
#define REGMESH_VERSION "dev"
#endif

#define UP_HEAD_MAX (64 * 1024)       /* one response's header bytes */
#define UP_SWALLOW_MAX (64 * 1024)    /* error body we read to keep the conn */
#define UP_TOKEN_BODY_MAX (64 * 1024) /* token endpoint JSON */
#define UP_TOKEN_CACHE_MAX 128        /* scopes per upstream */
#define UP_TOKEN_MARGIN_MS 30000      /* stop using a token this early */
#define UP_RETRY_AFTER_MAX_MS 30000
#define UP_BACKOFF_BASE_MS 200
#define UP_BACKOFF_MAX_MS 5000
#define UP_MAX_REDIRS 10L
#define UP_LOW_SPEED_BYTES 1024L

#define M_REQUESTS "regmesh_upstream_requests_total"
#define M_DURATION "regmesh_upstream_request_duration_seconds"
#define M_BYTES "regmesh_upstream_bytes_total"
#define M_RL_REMAINING "regmesh_upstream_ratelimit_remaining"

/* A minimal intrusive circular list (libuv's QUEUE idea): a node that is
 * not on a list points to itself, so removing it twice is harmless. */
struct upq {
  struct upq *next;
  struct upq *prev;
};

#define UPQ_DATA(ptr, type, field) ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

static void upq_init(struct upq *q) {
  q->next = q->prev = q;
}
static int upq_empty(const struct upq *q) {
  return q->next == q;
}

static void upq_insert_tail(struct upq *head, struct upq *q) {
  q->next = head;
  q->prev = head->prev;
  head->prev->next = q;
  head->prev = q;
}

static void upq_remove(struct upq *q) {
  q->prev->next = q->next;
  q->next->prev = q->prev;
  upq_init(q);
}

/* --- types ---------------------------------------------------------------- */

struct upclient {
  uv_loop_t *loop;
  CURLM *multi;
  CURLSH *share;
  uv_timer_t timer;   /* curl's timeout */
  uv_idle_t idle;     /* runs `pending` */
  struct upq reqs;    /* every request not yet freed */
  struct upq pending; /* requests to start or to complete */
  struct upq socks;   /* live poll contexts */
  struct upq ups;     /* upstreams attached to this client */
  uint64_t backoff_base_ms;
  uint64_t backoff_max_ms;
  unsigned next_id;
  int closing;
  int open_handles; /* uv handles whose close callback is still due */
};

/* One socket curl asked us to watch; freed in its close callback. */
struct upsock {
  uv_poll_t poll;
  curl_socket_t fd;
  struct upclient *c;
  struct upq link; /* c->socks while open */
};

enum ping_state { PING_NONE, PING_RUNNING, PING_DONE };

/* A bearer token for one (realm, service, scope). Owned by the upstream. */
struct uptoken {
  struct upq link; /* u->tokens */
  struct upstream *u;
  char *key;             /* realm \n service \n scope */
  char *token;           /* NULL until fetched */
  uint64_t usable_until; /* loop time */
  uint64_t last_used;
  struct upstream_req *fetch; /* the token request in flight, or NULL */
  struct upq waiters;         /* requests waiting for it (r->wait) */
  struct buf body;            /* token response being read */
  int status;
};

struct upstream {
  struct upclient *c;         /* NULL once the client was freed */
  struct config_upstream cfg; /* deep copy: strings owned */
  char *password;             /* resolved: literal or from password_env */
  char labels[160];           /* upstream="<host>" */
  enum ping_state ping;
  struct upq ping_waiters;
  struct www_auth chal; /* from the ping or the last 401; scheme NONE = open */
  struct upq tokens;
  unsigned ntokens;
  struct upq reqs; /* requests of this upstream (r->by_up) */
  struct upq link; /* c->ups */
  struct upstream_ratelimit rl;
  int is_peer; /* another regmesh node: no ping, auth, retries */
  char *peer_cert, *peer_key; /* our certificate for mutual TLS to peers */
  int closing;
  /* circuit breaker (not for peers, which the fetch plan already skips) */
  enum upstream_circuit brk;
  unsigned brk_failures;   /* attempts failed in a row */
  uint64_t brk_until_ms;   /* open: refuse until then (uv_now) */
  uint64_t brk_backoff_ms; /* the last open period */
  int brk_probing;         /* half-open: the one attempt let through */
  uint64_t brk_opens;
};

enum upreq_state {
  UPREQ_NEW,        /* queued to begin on the next idle pass */
  UPREQ_WAIT_PING,  /* on u->ping_waiters */
  UPREQ_WAIT_TOKEN, /* on a token's waiters */
  UPREQ_RUNNING,    /* an attempt (easy handle) is in the multi */
  UPREQ_BACKOFF,    /* r->timer armed for the next attempt */
  UPREQ_DONE,       /* result decided; on_done queued */
};

enum upreq_auth { UPAUTH_NONE, UPAUTH_BASIC, UPAUTH_BEARER };

/* What the current attempt's final response is for. */
enum upreq_verdict {
  VERDICT_NONE,     /* not seen yet */
  VERDICT_DELIVER,  /* first response given to the caller */
  VERDICT_CONTINUE, /* resumed stream: body continues the delivered one */
  VERDICT_RETRY,    /* swallow it, back off, try again */
  VERDICT_AUTH,     /* swallow the 401, authenticate, try again */
};

/* Headers of the response being read, copied into bounded fields; a value
 * that does not fit is dropped (an empty field reads as absent). */
struct uphead {
  int status;
  int64_t content_length;
  char content_type[256];
  char digest[256];
  char link[2048];
  char retry_after[64];
  char rl_limit[64];
  char rl_remaining[64];
  char content_range[128];
  char www_auth[4096];
  char rm_reply[80];
  char rm_tag_time[32];
  char rm_holders[200];
  char filters[128];
  size_t bytes;
};

struct upstream_req {
  unsigned id;
  struct upclient *c;
  struct upstream *u;
  /* stall detection of the current attempt (on_curl_progress): body bytes
   * seen and the loop time they last grew */
  int64_t stall_dl;
  uint64_t stall_at_ms;
  int stalled;
  enum upreq_state state;
  /* what to fetch (owned copies) */
  enum upstream_method method;
  char *url;
  char *accept;
  char *repo;
  char *extra_headers;
  char kind[32];
  uint64_t range_start;
  int resumable;
  size_t max_body;
  uint64_t max_recv_speed;
  int internal; /* ping or token: no ping, no auth rounds */
  int brk_probe; /* this attempt is the half-open circuit's probe */
  uint64_t t0_ms; /* created (uv_now), for the latency histogram */
  struct upstream_cbs cbs;
  void *ud;
  /* links */
  struct upq all;   /* c->reqs */
  struct upq by_up; /* u->reqs */
  struct upq pend;  /* c->pending */
  struct upq wait;  /* u->ping_waiters or a token's waiters */
  uv_timer_t timer; /* backoff; its close callback frees the request */
  /* the current attempt */
  CURL *easy;
  struct curl_slist *hdrlist;
  char errbuf[CURL_ERROR_SIZE];
  struct uphead h;
  enum upreq_verdict verdict;
  uint64_t skip; /* resumed with a 200: bytes already delivered */
  size_t swallowed;
  /* the whole request */
  int headers_given;
  uint64_t delivered;
  uint64_t stream_base; /* offset of the first delivered byte */
  int64_t expect_len;   /* body length announced to the caller, or -1 */
  unsigned retries;
  unsigned resumes;
  unsigned auth_rounds;
  enum upreq_auth auth;
  char *token;          /* bearer sent with the attempts, owned */
  char *token_key;      /* its cache key, owned */
  struct www_auth chal; /* last 401's challenge */
  int err;
  int done_called;
};

static void req_set_state(struct upstream_req *r, enum upreq_state s);
static void req_finish(struct upstream_req *r, int err);
static void breaker_record(struct upstream_req *r, int failed);
static void req_attempt_start(struct upstream_req *r);
static void req_auth_upfront(struct upstream_req *r);
static void req_complete(struct upstream_req *r);

/* --- small helpers ---------------------------------------------------------- */

static const char *upreq_state_str(enum upreq_state s) {
  switch (s) {
  case UPREQ_NEW: return "NEW";
  case UPREQ_WAIT_PING: return "WAIT_PING";
  case UPREQ_WAIT_TOKEN: return "WAIT_TOKEN";
  case UPREQ_RUNNING: return "RUNNING";
  case UPREQ_BACKOFF: return "BACKOFF";
  case UPREQ_DONE: return "DONE";
  }
  return "?";
}

static int has_ctl(const char *s, int allow_space) {
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch < 0x20 || ch == 0x7f || (ch == ' ' && !allow_space))
      return 1;
  }
  return 0;
}

static int is_http_url(const char *s) {
  return strncasecmp(s, "http://", 7) == 0 || strncasecmp(s, "https://", 8) == 0;
}

/* Percent-encodes all but RFC 3986 unreserved characters. */
static int url_escape(struct buf *b, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    int r;
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
        (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_' || ch == '~') {
      r = buf_append(b, s, 1);
    } else {
      char e[3] = {'%', hex[ch >> 4], hex[ch & 15]};
      r = buf_append(b, e, 3);
    }
    if (r)
      return r;
  }
  return 0;
}

static int64_t parse_int64(const char *p, size_t n) {
  int64_t v = 0;
  if (n == 0 || n > 18)
    return -1;
  for (size_t i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9')
      return -1;
    v = v * 10 + (p[i] - '0');
  }
  return v;
}

/* "bytes START-END/TOTAL" (TOTAL may be '*'). */
static int parse_content_range(const char *s, int64_t *start, int64_t *total) {
  if (strncasecmp(s, "bytes", 5) != 0)
    return RM_EPARSE;
  s += 5;
  while (*s == ' ')
    s++;
  const char *dash = strchr(s, '-');
  const char *slash = dash ? strchr(dash, '/') : NULL;
  if (!dash || !slash)
    return RM_EPARSE;
  int64_t a = parse_int64(s, (size_t)(dash - s));
  int64_t b = parse_int64(dash + 1, (size_t)(slash - dash - 1));
  if (a < 0 || b < a)
    return RM_EPARSE;
  *start = a;
  *total = strcmp(slash + 1, "*") == 0 ? -1 : parse_int64(slash + 1, strlen(slash + 1));
  return 0;
}

/* Retry-After: delta-seconds or an HTTP-date; -1 when absent or bad. */
static int64_t retry_after_ms(const char *v) {
  if (!v[0])
    return -1;
  int64_t s = parse_int64(v, strlen(v));
  if (s < 0) {
    time_t t = curl_getdate(v, NULL);
    if (t == -1)
      return -1;
    s = (int64_t)t - (int64_t)time(NULL);
    if (s < 0)
      s = 0;
  }
  return s * 1000 > UP_RETRY_AFTER_MAX_MS ? UP_RETRY_AFTER_MAX_MS : s * 1000;
}


/* --- request lifecycle ------------------------------------------------------ */

/* Every state change of a request goes through here (curl's mstate idea). */
static void req_set_state(struct upstream_req *r, enum upreq_state s) {
  if (r->state != s)
    LOG_D("upstream %s req %u (%s): %s -> %s", r->u->cfg.host, r->id, r->kind,
          upreq_state_str(r->state), upreq_state_str(s));
  r->state = s;
}

static void on_idle(uv_idle_t *h);

static void req_enqueue(struct upstream_req *r) {
  upq_remove(&r->pend);
  upq_insert_tail(&r->c->pending, &r->pend);
  if (!r->c->closing)
    uv_idle_start(&r->c->idle, on_idle);
}

static struct upstream_req *req_new(struct upstream *u, const char *url,
                                    const char *kind) {
  struct upclient *c = u->c;
  struct upstream_req *r = calloc(1, sizeof *r);
  if (!r)
    return NULL;
  r->url = strdup(url);
  if (!r->url) {
    free(r);
    return NULL;
  }
  r->id = ++c->next_id;
  r->c = c;
  r->t0_ms = uv_now(c->loop);
  r->u = u;
  r->state = UPREQ_NEW;
  r->expect_len = -1;
  snprintf(r->kind, sizeof r->kind, "%s", kind ? kind : "other");
  for (char *p = r->kind; *p; p++)
    if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
      *p = '_';
  upq_init(&r->all);
  upq_init(&r->by_up);
  upq_init(&r->pend);
  upq_init(&r->wait);
  uv_timer_init(c->loop, &r->timer);
  r->timer.data = r;
  c->open_handles++;
  upq_insert_tail(&c->reqs, &r->all);
  upq_insert_tail(&u->reqs, &r->by_up);
  return r;
}

/* req_finish decides the request's result. It never touches curl (we may be
 * inside a curl callback): the idle pass detaches and calls on_done. */
static void req_finish(struct upstream_req *r, int err) {
  if (r->state == UPREQ_DONE)
    return;
  r->err = err;
  upq_remove(&r->wait);
  uv_timer_stop(&r->timer);
  req_set_state(r, UPREQ_DONE);
  req_enqueue(r);
}

static void count_exchange(struct upstream_req *r, const char *status) {
  char labels[256];
  snprintf(labels, sizeof labels, "%s,kind=\"%s\",status=\"%s\"", r->u->labels, r->kind,
           status);
  metrics_add(M_REQUESTS, labels, 1);
}

/* Removes the attempt's easy handle; counts the exchange once. `cc` is the
 * transfer's result, or -1 when it was cut short by us. */
static void req_attempt_end(struct upstream_req *r, int cc) {
  if (!r->easy)
    return;
  /* our own aborts (caller stopped, body over its limit) say nothing of the
   * upstream's health */
  if (cc < 0 || cc == CURLE_WRITE_ERROR || cc == CURLE_ABORTED_BY_CALLBACK)
    breaker_record(r, r->h.status > 0 && r->h.status < 500 ? 0 : -1);
  else
    breaker_record(r, cc != CURLE_OK || r->h.status >= 500 || r->h.status <= 0);
  if (r->h.status > 0) {
    char st[16];
    snprintf(st, sizeof st, "%d", r->h.status);
    count_exchange(r, st);
  } else if (cc > 0) {
    count_exchange(r, "error");
  }
  curl_multi_remove_handle(r->c->multi, r->easy);
  curl_easy_cleanup(r->easy);
  r->easy = NULL;
  curl_slist_free_all(r->hdrlist);
  r->hdrlist = NULL;
}

/* --- circuit breaker ---------------------------------------------------------
 * An upstream that keeps failing (no connection, timeouts, 5xx) costs every
 * request its connect and retry time before the cache or a peer can answer.
 * After BREAKER_FAILURES failed attempts in a row the circuit opens: attempts
 * fail at once with RM_EUNREACH (callers then serve stale or ask peers) for
 * a back-off that doubles from BREAKER_BASE_MS to BREAKER_MAX_MS. Then one
 * attempt goes through as a probe; its success closes the circuit, its
 * failure opens it again. */
#define BREAKER_FAILURES 5
#define BREAKER_BASE_MS 1000
#define BREAKER_MAX_MS 60000

const char *upstream_circuit_str(enum upstream_circuit s) {
  switch (s) {
  case UPSTREAM_CIRCUIT_CLOSED: return "closed";
  case UPSTREAM_CIRCUIT_OPEN: return "open";
  case UPSTREAM_CIRCUIT_HALF_OPEN: return "half_open";
  }
  return "?";
}

/* breaker_admit says whether an attempt of r may go out now. */
static int breaker_admit(struct upstream_req *r) {
  struct upstream *u = r->u;
  if (u->is_peer || u->brk == UPSTREAM_CIRCUIT_CLOSED)
    return 1;
  if (u->brk == UPSTREAM_CIRCUIT_OPEN && uv_now(r->c->loop) >= u->brk_until_ms)
    u->brk = UPSTREAM_CIRCUIT_HALF_OPEN;
  if (u->brk == UPSTREAM_CIRCUIT_HALF_OPEN && !u->brk_probing) {
    u->brk_probing = 1;
    r->brk_probe = 1;
    LOG_I("upstream %s: circuit half-open, probing with req %u", u->cfg.host, r->id);
    return 1;
  }
  return 0;
}

/* breaker_record takes an attempt's outcome: failed 1, succeeded 0, or -1
 * when it was cut short by us (no verdict on the upstream). */
static void breaker_record(struct upstream_req *r, int failed) {
  struct upstream *u = r->u;
  if (u->is_peer)
    return;
  if (r->brk_probe) {
    r->brk_probe = 0;
    u->brk_probing = 0;
  }
  if (failed < 0)
    return;
  if (!failed) {
    if (u->brk != UPSTREAM_CIRCUIT_CLOSED)
      LOG_I("upstream %s: answering again; circuit closed", u->cfg.host);
    u->brk = UPSTREAM_CIRCUIT_CLOSED;
    u->brk_failures = 0;
    u->brk_backoff_ms = 0;
    return;
  }
  u->brk_failures++;
  if (u->brk == UPSTREAM_CIRCUIT_OPEN ||
      (u->brk == UPSTREAM_CIRCUIT_CLOSED && u->brk_failures < BREAKER_FAILURES))
    return;
  u->brk_backoff_ms = u->brk_backoff_ms ? u->brk_backoff_ms * 2 : BREAKER_BASE_MS;
  if (u->brk_backoff_ms > BREAKER_MAX_MS)
    u->brk_backoff_ms = BREAKER_MAX_MS;
  u->brk_until_ms = uv_now(r->c->loop) + u->brk_backoff_ms;
  u->brk = UPSTREAM_CIRCUIT_OPEN;
  u->brk_opens++;
  LOG_W("upstream %s: %u failed attempts in a row; circuit open for %llu ms "
        "(requests go to the cache and the fleet meanwhile)",
        u->cfg.host, u->brk_failures, (unsigned long long)u->brk_backoff_ms);
}

void upstream_get_circuit(const struct upstream *u, struct upstream_circuit_info *out) {
  out->state = u->brk;
  if (u->brk == UPSTREAM_CIRCUIT_OPEN && u->c && uv_now(u->c->loop) >= u->brk_until_ms)
    out->state = UPSTREAM_CIRCUIT_HALF_OPEN; /* the next attempt probes */
  out->failures = u->brk_failures;
  out->opens = u->brk_opens;
  out->retry_in_ms = 0;
  if (out->state == UPSTREAM_CIRCUIT_OPEN)
    out->retry_in_ms = u->brk_until_ms - uv_now(u->c->loop);
}

static void req_timer_closed(uv_handle_t *h) {
  struct upstream_req *r = h->data;
  struct upclient *c = r->c;
  free(r->url);
  free(r->accept);
  free(r->repo);
  free(r->extra_headers);
  free(r->token);
  free(r->token_key);
  free(r);
  c->open_handles--;
  if (c->closing && c->open_handles == 0)
    free(c);
}

/* The end of a request: off every list, on_done once, memory freed in the
 * timer's close callback. Only called outside curl callbacks. */
static void req_complete(struct upstream_req *r) {
  assert(r->state == UPREQ_DONE);
  req_attempt_end(r, -1);
  upq_remove(&r->pend);
  upq_remove(&r->wait);
  upq_remove(&r->by_up);
  upq_remove(&r->all);
  if (r->err && r->err != UV_ECANCELED && !r->internal)
    LOG_D("upstream %s req %u (%s): %s", r->u->cfg.host, r->id, r->kind,
          rm_strerror(r->err));
  if (!r->done_called && !r->u->is_peer && r->err != UV_ECANCELED) {
    /* the whole request: retries, auth rounds and body included */
    char labels[256];
    uint64_t now = uv_now(r->c->loop);
    snprintf(labels, sizeof labels, "%s,kind=\"%s\"", r->u->labels, r->kind);
    metrics_observe_us(M_DURATION, labels, (now > r->t0_ms ? now - r->t0_ms : 0) * 1000);
  }
  if (!r->done_called) {
    r->done_called = 1;
    if (r->cbs.on_done)
      r->cbs.on_done(r->ud, r->err);
  }
  uv_close((uv_handle_t *)&r->timer, req_timer_closed);
}

/* Synchronous cancel for teardown: on_done(UV_ECANCELED) now. */
static void req_cancel_now(struct upstream_req *r) {
  if (r->state != UPREQ_DONE) {
    r->err = UV_ECANCELED;
    upq_remove(&r->wait);
    uv_timer_stop(&r->timer);
    req_set_state(r, UPREQ_DONE);
  }
  req_complete(r);
}

static void req_begin(struct upstream_req *r);

static void on_idle(uv_idle_t *h) {
  struct upclient *c = h->data;
  while (!upq_empty(&c->pending)) {
    struct upstream_req *r = UPQ_DATA(c->pending.next, struct upstream_req, pend);
    upq_remove(&r->pend);
    if (r->state == UPREQ_DONE)
      req_complete(r);
    else if (r->state == UPREQ_NEW)
      req_begin(r);
  }
  uv_idle_stop(h);
}

/* --- backoff ------------------------------------------------------------------ */

static uint64_t backoff_ms(const struct upclient *c, unsigned n) {
  uint64_t d = c->backoff_base_ms;
  for (unsigned i = 0; i < n && d < c->backoff_max_ms; i++)
    d *= 2;
  return d > c->backoff_max_ms ? c->backoff_max_ms : d;
}

static void on_backoff(uv_timer_t *t) {
  struct upstream_req *r = t->data;
  if (r->state == UPREQ_BACKOFF)
    req_attempt_start(r);
}

/* Another attempt after a delay. `why` is for the log. Counts against the
 * retry budget, or against the resume budget once the caller has headers. */
static void req_retry(struct upstream_req *r, int64_t delay_ms, const char *why) {
  unsigned *used = r->headers_given ? &r->resumes : &r->retries;
  unsigned n = (*used)++;
  if (delay_ms < 0)
    delay_ms = (int64_t)backoff_ms(r->c, n);
  LOG_I("upstream %s req %u (%s): %s; %s %u/%u in %lld ms", r->u->cfg.host, r->id,
        r->kind, why, r->headers_given ? "resume" : "retry", *used, r->u->cfg.max_retries,
        (long long)delay_ms);
  req_set_state(r, UPREQ_BACKOFF);
  uv_timer_start(&r->timer, on_backoff, (uint64_t)delay_ms, 0);
}

static int req_budget_left(const struct upstream_req *r) {
  unsigned used = r->headers_given ? r->resumes : r->retries;
  return used < r->u->cfg.max_retries;
}

/* --- tokens ------------------------------------------------------------------ */

static void token_free(struct uptoken *e) {
  upq_remove(&e->link);
  e->u->ntokens--;
  buf_free(&e->body);
  free(e->key);
  free(e->token);
  free(e);
}

/* Makes room for one more entry: drops the least recently used entry that
 * nobody waits for. When every entry is busy the cache grows past its cap
 * rather than fail a request. */
static void token_evict(struct upstream *u) {
  struct uptoken *victim = NULL;
  for (struct upq *q = u->tokens.next; q != &u->tokens; q = q->next) {
    struct uptoken *e = UPQ_DATA(q, struct uptoken, link);
    if (e->fetch || !upq_empty(&e->waiters))
      continue;
    if (!victim || e->last_used < victim->last_used)
      victim = e;
  }
  if (victim)
    token_free(victim);
}

/* The scope part of a cache key, for logs (the key holds newlines). */
static const char *key_scope(const char *key) {
  const char *nl = strrchr(key, '\n');
  return nl ? nl + 1 : key;
}

static struct uptoken *token_find(struct upstream *u, const char *key) {
  for (struct upq *q = u->tokens.next; q != &u->tokens; q = q->next) {
    struct uptoken *e = UPQ_DATA(q, struct uptoken, link);
    if (strcmp(e->key, key) == 0)
      return e;
  }
  return NULL;
}

static int req_take_token(struct upstream_req *r, const struct uptoken *e) {
  char *t = strdup(e->token), *k = strdup(e->key);
  if (!t || !k) {
    free(t);
    free(k);
    return UV_ENOMEM;
  }
  free(r->token);
  free(r->token_key);
  r->token = t;
  r->token_key = k;
  r->auth = UPAUTH_BEARER;
  return 0;
}

/* A token the registry refused: forget it unless it was already replaced. */
static void token_drop(struct upstream *u, const char *key, const char *token) {
  struct uptoken *e = token_find(u, key);
  if (e && e->token && token && strcmp(e->token, token) == 0) {
    LOG_D("upstream %s: dropping refused token for '%s'", u->cfg.host, key_scope(key));
    free(e->token);
    e->token = NULL;
  }
}

/* Reads the token endpoint's answer (token_response_parse). */
static int token_parse(struct uptoken *e, uint64_t now) {
  char *tok;
  int64_t left;
  int r = token_response_parse(e->body.data ? e->body.data : "", e->body.len,
                               (int64_t)time(NULL), &tok, &left);
  if (r)
    return r;
  free(e->token);
  e->token = tok;
  uint64_t life = (uint64_t)left * 1000;
  e->usable_until = life > UP_TOKEN_MARGIN_MS ? now + life - UP_TOKEN_MARGIN_MS : now;
  return 0;
}

static int token_on_headers(void *ud, const struct upstream_response *resp) {
  struct uptoken *e = ud;
  e->status = resp->status;
  buf_reset(&e->body);
  return 0;
}

static int token_on_data(void *ud, const char *p, size_t n) {
  struct uptoken *e = ud;
  return buf_append(&e->body, p, n);
}

/* The token request ended: hand the result to every waiter. */
static void token_on_done(void *ud, int err) {
  struct uptoken *e = ud;
  struct upstream *u = e->u;
  e->fetch = NULL;
  if (u->closing || !u->c || u->c->closing)
    return; /* teardown cancels the waiters itself */
  int r = err;
  if (r == 0 && e->status != 200)
    r = RM_EAUTH;
  if (r == 0)
    r = token_parse(e, uv_now(u->c->loop));
  buf_reset(&e->body);
  if (r)
    LOG_W("upstream %s: token request failed (HTTP %d): %s", u->cfg.host, e->status,
          rm_strerror(r));
  else
    LOG_D("upstream %s: new token for '%s'", u->cfg.host, key_scope(e->key));
  while (!upq_empty(&e->waiters)) {
    struct upstream_req *w = UPQ_DATA(e->waiters.next, struct upstream_req, wait);
    upq_remove(&w->wait);
    if (r == 0) {
      int rr = req_take_token(w, e);
      if (rr) {
        req_finish(w, rr);
        continue;
      }
    } else if (err == RM_EUNREACH || err == UV_ETIMEDOUT) {
      /* The realm was unreachable: so is the registry, for this request. */
      req_finish(w, err);
      continue;
    } else {
      /* The realm refused us: redo without a token so the caller gets the
       * registry's own 401, and spend no more rounds on it. */
      w->auth = UPAUTH_NONE;
      w->auth_rounds = 2;
    }
    req_attempt_start(w);
  }
}

static const struct upstream_cbs token_cbs = {token_on_headers, token_on_data,
                                              token_on_done};

/* Builds "<realm>?service=S&scope=A&scope=B". */
static int token_url(struct buf *b, const struct www_auth *ch, const char *scope) {
  int r = buf_append(b, ch->realm, strlen(ch->realm));
  char sep = strchr(ch->realm, '?') ? '&' : '?';
  if (!r && ch->service[0]) {
    r = buf_appendf(b, "%cservice=", sep);
    if (!r)
      r = url_escape(b, ch->service);
    sep = '&';
  }
  /* A scope list is space separated; each one is its own parameter. */
  const char *p = scope;
  while (!r && *p) {
    while (*p == ' ')
      p++;
    size_t n = strcspn(p, " ");
    if (!n)
      break;
    char one[1024];
    snprintf(one, sizeof one, "%.*s", (int)(n < sizeof one ? n : sizeof one - 1), p);
    r = buf_appendf(b, "%cscope=", sep);
    if (!r)
      r = url_escape(b, one);
    sep = '&';
    p += n;
  }
  return r;
}

/* Gets r a bearer token for `scope` under challenge `ch`: from the cache, or
 * by joining (or starting) the one token request for that key. */
static void req_get_token(struct upstream_req *r, const struct www_auth *ch,
                          const char *scope) {
  struct upstream *u = r->u;
  uint64_t now = uv_now(r->c->loop);
  struct buf key;
  buf_init(&key, 4096);
  if (buf_appendf(&key, "%s\n%s\n%s", ch->realm, ch->service, scope)) {
    buf_free(&key);
    req_finish(r, UV_ENOMEM);
    return;
  }
  struct uptoken *e = token_find(u, key.data);
  if (e && e->token && now < e->usable_until) {
    buf_free(&key);
    e->last_used = now;
    int rr = req_take_token(r, e);
    if (rr)
      req_finish(r, rr);
    else
      req_attempt_start(r);
    return;
  }
  if (!e) {
    if (u->ntokens >= UP_TOKEN_CACHE_MAX)
      token_evict(u);
    e = calloc(1, sizeof *e);
    if (!e) {
      buf_free(&key);
      req_finish(r, UV_ENOMEM);
      return;
    }
    e->u = u;
    e->key = key.data; /* ownership moves */
    key.data = NULL;
    upq_init(&e->waiters);
    buf_init(&e->body, UP_TOKEN_BODY_MAX);
    upq_insert_tail(&u->tokens, &e->link);
    u->ntokens++;
  }
  buf_free(&key);
  e->last_used = now;
  if (!e->fetch) {
    struct buf url;
    buf_init(&url, 16384);
    struct upstream_req *t = NULL;
    if (token_url(&url, ch, scope) == 0)
      t = req_new(u, url.data, "token");
    buf_free(&url);
    if (!t) {
      req_finish(r, UV_ENOMEM);
      return;
    }
    t->internal = 1;
    t->cbs = token_cbs;
    t->ud = e;
    t->max_body = UP_TOKEN_BODY_MAX;
    /* Credentials, when we have them, are for the realm: that is where
     * Docker Hub, ghcr and quay turn them into a token. */
    t->auth = u->cfg.username ? UPAUTH_BASIC : UPAUTH_NONE;
    e->fetch = t;
    LOG_D("upstream %s: token request %u for '%s'", u->cfg.host, t->id, scope);
    req_attempt_start(t);
  }
  req_set_state(r, UPREQ_WAIT_TOKEN);
  upq_insert_tail(&e->waiters, &r->wait);
}

/* --- ping ----------------------------------------------------------------- */

static int ping_on_headers(void *ud, const struct upstream_response *resp) {
  struct upstream *u = ud;
  if (resp->status == 401 && resp->www_authenticate &&
      www_auth_parse(resp->www_authenticate, strlen(resp->www_authenticate), &u->chal) ==
          0) {
    LOG_D("upstream %s: /v2/ wants %s auth", u->cfg.host,
          u->chal.scheme == WWW_AUTH_BEARER ? "bearer" : "basic");
  } else {
    memset(&u->chal, 0, sizeof u->chal);
  }
  /* 5xx/429 tell nothing about auth: ping again with the next request. */
  u->ping = (resp->status >= 500 || resp->status == 429) ? PING_NONE : PING_DONE;
  return 0;
}

static int ping_on_data(void *ud, const char *p, size_t n) {
  (void)ud, (void)p, (void)n;
  return 0;
}

static void ping_on_done(void *ud, int err) {
  struct upstream *u = ud;
  if (u->closing || !u->c || u->c->closing)
    return;
  if (err) {
    u->ping = PING_NONE;
    LOG_W("upstream %s: /v2/ ping failed: %s", u->cfg.host, rm_strerror(err));
  }
  while (!upq_empty(&u->ping_waiters)) {
    struct upstream_req *w = UPQ_DATA(u->ping_waiters.next, struct upstream_req, wait);
    upq_remove(&w->wait);
    if (err)
      req_finish(w, err); /* unreachable now means unreachable for them */
    else
      req_auth_upfront(w);
  }
}

static const struct upstream_cbs ping_cbs = {ping_on_headers, ping_on_data, ping_on_done};

/* A request past its ping: authenticate up front as the registry asked. */
static void req_auth_upfront(struct upstream_req *r) {
  struct upstream *u = r->u;
  if (u->chal.scheme == WWW_AUTH_BEARER && is_http_url(u->chal.realm)) {
    char scope[1024] = "";
    if (r->repo)
      snprintf(scope, sizeof scope, "repository:%s:pull", r->repo);
    req_get_token(r, &u->chal, scope);
    return;
  }
  if (u->chal.scheme == WWW_AUTH_BASIC && u->cfg.username)
    r->auth = UPAUTH_BASIC;
  req_attempt_start(r);
}

static int ping_start(struct upstream *u) {
  char url[2048];
  snprintf(url, sizeof url, "%s/v2/", u->cfg.url);
  struct upstream_req *p = req_new(u, url, "ping");
  if (!p)
    return UV_ENOMEM;
  p->internal = 1;
  p->cbs = ping_cbs;
  p->ud = u;
  u->ping = PING_RUNNING;
  req_attempt_start(p);
  return 0;
}

void upstream_ping(struct upstream *u) {
  if (u->ping == PING_NONE && !u->closing && u->c && !u->c->closing)
    ping_start(u);
}

/* The first step of a request, from the idle pass. */
static void req_begin(struct upstream_req *r) {
  struct upstream *u = r->u;
  if (r->internal) {
    req_attempt_start(r);
    return;
  }
  if (u->ping == PING_DONE) {
    req_auth_upfront(r);
    return;
  }
  if (u->ping == PING_NONE && ping_start(u) != 0) {
    req_finish(r, UV_ENOMEM);
    return;
  }
  req_set_state(r, UPREQ_WAIT_PING);
  upq_insert_tail(&u->ping_waiters, &r->wait);
}

/* --- one attempt: curl callbacks ----------------------------------------- */

static void head_reset(struct uphead *h) {
  memset(h, 0, sizeof *h);
  h->content_length = -1;
}

/* Copies a header value into a bounded field; oversized values are
 * dropped, not truncated (a cut digest or URL would be worse than none). */
static void head_set(char *dst, size_t cap, const char *v, size_t n) {
  if (n >= cap)
    return;
  memcpy(dst, v, n);
  dst[n] = '\0';
}

static void head_line(struct upstream_req *r, const char *line, size_t n) {
  struct uphead *h = &r->h;
  while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
    n--;
  if (n >= 5 && memcmp(line, "HTTP/", 5) == 0) {
    /* A new response (redirect hop, 1xx): only the last one counts. */
    size_t bytes = h->bytes;
    head_reset(h);
    h->bytes = bytes;
    const char *sp = memchr(line, ' ', n);
    if (sp && (size_t)(line + n - sp) >= 4)
      h->status = (int)parse_int64(sp + 1, 3);
    return;
  }
  const char *colon = memchr(line, ':', n);
  if (!colon || line[0] == ' ' || line[0] == '\t')
    return; /* blank line, or obsolete folding we do not need */
  size_t nlen = (size_t)(colon - line);
  const char *v = colon + 1, *end = line + n;
  while (v < end && (*v == ' ' || *v == '\t'))
    v++;
  while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
    end--;
  size_t vlen = (size_t)(end - v);
#define IS(name) (nlen == sizeof(name) - 1 && strncasecmp(line, name, nlen) == 0)
  if (IS("content-length")) {
    h->content_length = parse_int64(v, vlen);
  } else if (IS("content-type")) {
    size_t k = 0;
    while (k < vlen && v[k] != ';')
      k++;
    while (k && (v[k - 1] == ' ' || v[k - 1] == '\t'))
      k--;
    head_set(h->content_type, sizeof h->content_type, v, k);
  } else if (IS("docker-content-digest")) {
    head_set(h->digest, sizeof h->digest, v, vlen);
  } else if (IS("link")) {
    head_set(h->link, sizeof h->link, v, vlen);
  } else if (IS("retry-after")) {
    head_set(h->retry_after, sizeof h->retry_after, v, vlen);
  } else if (IS("ratelimit-limit")) {
    head_set(h->rl_limit, sizeof h->rl_limit, v, vlen);
  } else if (IS("ratelimit-remaining")) {
    head_set(h->rl_remaining, sizeof h->rl_remaining, v, vlen);
  } else if (IS("content-range")) {
    head_set(h->content_range, sizeof h->content_range, v, vlen);
  } else if (IS("x-regmesh-auth-reply")) {
    head_set(h->rm_reply, sizeof h->rm_reply, v, vlen);
  } else if (IS("oci-filters-applied")) {
    head_set(h->filters, sizeof h->filters, v, vlen);
  } else if (IS("x-regmesh-holders")) {
    head_set(h->rm_holders, sizeof h->rm_holders, v, vlen);
  } else if (IS("x-regmesh-tag-fetched")) {
    head_set(h->rm_tag_time, sizeof h->rm_tag_time, v, vlen);
  } else if (IS("www-authenticate")) {
    size_t have = strlen(h->www_auth);
    if (have == 0)
      head_set(h->www_auth, sizeof h->www_auth, v, vlen);
    else if (have + 2 + vlen < sizeof h->www_auth) {
      memcpy(h->www_auth + have, ", ", 2);
      head_set(h->www_auth + have + 2, sizeof h->www_auth - have - 2, v, vlen);
    }
  }
#undef IS
}

static size_t on_curl_header(char *p, size_t size, size_t nitems, void *ud) {
  struct upstream_req *r = ud;
  size_t n = size * nitems;
  if (r->state != UPREQ_RUNNING)
    return 0;
  if (r->verdict != VERDICT_NONE)
    return n; /* trailers after the body began: nothing we use */
  r->h.bytes += n;
  if (r->h.bytes > UP_HEAD_MAX) {
    LOG_W("upstream %s req %u (%s): response head over %d bytes", r->u->cfg.host, r->id,
          r->kind, UP_HEAD_MAX);
    req_finish(r, RM_EPARSE);
    return 0;
  }
  head_line(r, p, n);
  return n;
}

static void note_ratelimit(struct upstream_req *r) {
  struct upstream *u = r->u;
  int64_t n, w;
  int seen = 0;
  if (r->h.rl_limit[0] &&
      ratelimit_parse(r->h.rl_limit, strlen(r->h.rl_limit), &n, &w) == 0) {
    u->rl.limit = n;
    if (w >= 0)
      u->rl.window_s = w;
    seen = 1;
  }
  if (r->h.rl_remaining[0] &&
      ratelimit_parse(r->h.rl_remaining, strlen(r->h.rl_remaining), &n, &w) == 0) {
    u->rl.remaining = n;
    if (w >= 0)
      u->rl.window_s = w;
    metrics_set(M_RL_REMAINING, u->labels, n);
    seen = 1;
  }
  if (seen)
    u->rl.seen_at_ms = uv_now(r->c->loop);
}

/* May this 401 be answered by authenticating? Parses the challenge. */
static int req_can_auth(struct upstream_req *r) {
  struct upstream *u = r->u;
  if (r->internal || u->is_peer || !r->h.www_auth[0] ||
      www_auth_parse(r->h.www_auth, strlen(r->h.www_auth), &r->chal) != 0)
    return 0;
  if (r->chal.scheme == WWW_AUTH_BASIC)
    return u->cfg.username && r->auth != UPAUTH_BASIC && r->auth_rounds == 0;
  if (r->chal.scheme != WWW_AUTH_BEARER || !is_http_url(r->chal.realm))
    return 0;
  if (r->auth_rounds == 0)
    return 1;
  /* One more round only for a token the registry calls invalid. */
  return r->auth_rounds == 1 && r->auth == UPAUTH_BEARER &&
         strcasecmp(r->chal.error, "invalid_token") == 0;
}

static int status_retryable(int status) {
  return status >= 500 || status == 429;
}

/* The verdict on a resumed attempt's response. */
static void req_decide_resume(struct upstream_req *r) {
  uint64_t want = r->stream_base + r->delivered;
  int status = r->h.status;
  int64_t start, total;
  if (status == 206 && parse_content_range(r->h.content_range, &start, &total) == 0 &&
      (uint64_t)start <= want) {
    r->skip = want - (uint64_t)start;
    r->verdict = VERDICT_CONTINUE;
  } else if (status == 200) {
    r->skip = want; /* the whole body again: drop what the caller has */
    r->verdict = VERDICT_CONTINUE;
  } else if (status_retryable(status) && req_budget_left(r)) {
    r->verdict = VERDICT_RETRY;
  } else {
    LOG_W("upstream %s req %u (%s): resume at %llu answered %d", r->u->cfg.host, r->id,
          r->kind, (unsigned long long)want, status);
    req_finish(r, status == 429 ? RM_ERATELIMIT : RM_EUPSTREAM);
  }
}

/* The verdict on an attempt's final response, at its first body byte or at
 * its end. Calls on_headers when the response is the caller's. */
static void req_decide(struct upstream_req *r) {
  note_ratelimit(r);
  if (r->headers_given) {
    req_decide_resume(r);
    return;
  }
  int status = r->h.status;
  if (status == 401 && req_can_auth(r)) {
    r->verdict = VERDICT_AUTH;
    return;
  }
  if (status_retryable(status) && req_budget_left(r)) {
    r->verdict = VERDICT_RETRY;
    return;
  }
  if (r->method == UPSTREAM_GET && r->max_body && r->h.content_length >= 0 &&
      (uint64_t)r->h.content_length > r->max_body) {
    LOG_W("upstream %s req %u (%s): body of %lld bytes over the limit %zu",
          r->u->cfg.host, r->id, r->kind, (long long)r->h.content_length, r->max_body);
    req_finish(r, RM_ETOOBIG);
    return;
  }
  struct upstream_response resp;
  memset(&resp, 0, sizeof resp);
  resp.status = status;
  resp.content_length = r->h.content_length;
  resp.total_size = r->h.content_length;
#define OPT(f) (r->h.f[0] ? r->h.f : NULL)
  resp.content_type = OPT(content_type);
  resp.digest = OPT(digest);
  resp.link = OPT(link);
  resp.retry_after = OPT(retry_after);
  resp.ratelimit_remaining = OPT(rl_remaining);
  resp.www_authenticate = OPT(www_auth);
  resp.regmesh_auth_reply = OPT(rm_reply);
  resp.regmesh_tag_time = OPT(rm_tag_time);
  resp.regmesh_holders = OPT(rm_holders);
  resp.oci_filters_applied = OPT(filters);
#undef OPT
  int64_t start, total;
  if (status == 206 && parse_content_range(r->h.content_range, &start, &total) == 0) {
    resp.range_start = start;
    resp.total_size = total;
    r->stream_base = (uint64_t)start;
  }
  r->headers_given = 1;
  r->expect_len = r->method == UPSTREAM_GET ? r->h.content_length : -1;
  r->verdict = VERDICT_DELIVER;
  int rc = r->cbs.on_headers ? r->cbs.on_headers(r->ud, &resp) : 0;
  if (rc && r->state == UPREQ_RUNNING)
    req_finish(r, rc);
}

/* A body that stops for low_speed_time is cut at once. curl's own low
 * speed check averages over several seconds of earlier progress, so a
 * sender that froze mid-body (a SIGSTOPped peer) would be waited on that
 * much longer. Only after the first body byte: a slow first answer is what
 * first_byte_timeout is for. */
static int on_curl_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                            curl_off_t ulnow) {
  struct upstream_req *r = ud;
  (void)dltotal, (void)ultotal, (void)ulnow;
  uint64_t now = uv_now(r->c->loop);
  if (dlnow != r->stall_dl || dlnow == 0) {
    r->stall_dl = dlnow;
    r->stall_at_ms = now;
    return 0;
  }
  uint64_t limit = r->u->cfg.low_speed_time_ms;
  if (limit && now - r->stall_at_ms >= limit) {
    r->stalled = 1;
    return 1; /* CURLE_ABORTED_BY_CALLBACK, reported as a timeout */
  }
  return 0;
}

static size_t on_curl_write(char *p, size_t size, size_t nmemb, void *ud) {
  struct upstream_req *r = ud;
  size_t n = size * nmemb, total = n;
  if (r->state != UPREQ_RUNNING)
    return 0;
  metrics_add(M_BYTES, r->u->labels, n);
  if (r->verdict == VERDICT_NONE) {
    req_decide(r);
    if (r->state != UPREQ_RUNNING)
      return 0;
  }
  if (r->verdict == VERDICT_RETRY || r->verdict == VERDICT_AUTH) {
    /* An error body: read it so the connection can be reused, within
     * reason; cutting it short only costs the connection. */
    r->swallowed += n;
    return r->swallowed > UP_SWALLOW_MAX ? 0 : n;
  }
  if (r->skip) {
    size_t k = r->skip < n ? (size_t)r->skip : n;
    r->skip -= k;
    p += k;
    n -= k;
    if (!n)
      return total;
  }
  if (r->max_body && r->delivered + n > r->max_body) {
    LOG_W("upstream %s req %u (%s): body over the limit %zu", r->u->cfg.host, r->id,
          r->kind, r->max_body);
    req_finish(r, RM_ETOOBIG);
    return 0;
  }
  int rc = r->cbs.on_data ? r->cbs.on_data(r->ud, p, n) : 0;
  if (r->state != UPREQ_RUNNING)
    return 0; /* cancelled from within on_data */
  if (rc) {
    req_finish(r, rc);
    return 0;
  }
  r->delivered += n;
  return total;
}

/* --- one attempt: start and end -------------------------------------------- */

#define SETOPT(easy, opt, val)                                                           \
  do {                                                                                   \
    if (curl_easy_setopt(easy, opt, val) != CURLE_OK)                                    \
      goto fail;                                                                         \
  } while (0)

static void req_attempt_start(struct upstream_req *r) {
  struct upclient *c = r->c;
  const struct config_upstream *cfg = &r->u->cfg;
  if (c->closing || r->u->closing) {
    req_finish(r, UV_ECANCELED);
    return;
  }
  if (!breaker_admit(r)) {
    LOG_D("upstream %s req %u (%s): circuit open, not sent", r->u->cfg.host, r->id,
          r->kind);
    req_finish(r, RM_EUNREACH);
    return;
  }
  assert(!r->easy);
  head_reset(&r->h);
  r->verdict = VERDICT_NONE;
  r->skip = 0;
  r->swallowed = 0;
  r->errbuf[0] = '\0';
  CURL *e = curl_easy_init();
  if (!e) {
    req_finish(r, UV_ENOMEM);
    return;
  }
  r->easy = e;
  SETOPT(e, CURLOPT_URL, r->url);
  SETOPT(e, CURLOPT_PRIVATE, (void *)r);
  SETOPT(e, CURLOPT_SHARE, c->share);
  SETOPT(e, CURLOPT_NOSIGNAL, 1L);
  /* Blob bodies arrive in larger reads: a quarter of the syscalls and
   * wake-ups of curl's 16 KiB default, for 128 KiB per transfer. */
  if (r->resumable)
    SETOPT(e, CURLOPT_BUFFERSIZE, 128L * 1024);
  SETOPT(e, CURLOPT_ERRORBUFFER, r->errbuf);
  SETOPT(e, CURLOPT_PROTOCOLS_STR, "http,https");
  SETOPT(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  SETOPT(e, CURLOPT_USERAGENT, "regmesh/" REGMESH_VERSION);
  SETOPT(e, CURLOPT_HEADERFUNCTION, on_curl_header);
  SETOPT(e, CURLOPT_HEADERDATA, (void *)r);
  SETOPT(e, CURLOPT_WRITEFUNCTION, on_curl_write);
  SETOPT(e, CURLOPT_WRITEDATA, (void *)r);
  /* Exact bytes: no Accept-Encoding (ACCEPT_ENCODING unset) and no
   * decoding of whatever a server sends anyway. */
  SETOPT(e, CURLOPT_HTTP_CONTENT_DECODING, 0L);
  /* A peer's 307 names other holders of a blob: the fetch decides where
   * to go (docs/cluster.md), curl must not. */
  SETOPT(e, CURLOPT_FOLLOWLOCATION, r->u->is_peer ? 0L : 1L);
  SETOPT(e, CURLOPT_MAXREDIRS, UP_MAX_REDIRS);
  if (r->max_recv_speed)
    SETOPT(e, CURLOPT_MAX_RECV_SPEED_LARGE, (curl_off_t)r->max_recv_speed);
  SETOPT(e, CURLOPT_CONNECTTIMEOUT_MS, (long)cfg->connect_timeout_ms);
  long lst = (long)((cfg->low_speed_time_ms + 999) / 1000);
  SETOPT(e, CURLOPT_LOW_SPEED_LIMIT, UP_LOW_SPEED_BYTES);
  SETOPT(e, CURLOPT_LOW_SPEED_TIME, lst > 0 ? lst : 1L);
  r->stall_dl = 0;
  r->stall_at_ms = uv_now(r->c->loop);
  r->stalled = 0;
  SETOPT(e, CURLOPT_XFERINFOFUNCTION, on_curl_progress);
  SETOPT(e, CURLOPT_XFERINFODATA, (void *)r);
  SETOPT(e, CURLOPT_NOPROGRESS, 0L);
  SETOPT(e, CURLOPT_SSL_VERIFYPEER, cfg->tls_verify ? 1L : 0L);
  SETOPT(e, CURLOPT_SSL_VERIFYHOST, cfg->tls_verify ? 2L : 0L);
  if (cfg->ca_file)
    SETOPT(e, CURLOPT_CAINFO, cfg->ca_file);
  if (r->u->peer_cert) {
    SETOPT(e, CURLOPT_SSLCERT, r->u->peer_cert);
    SETOPT(e, CURLOPT_SSLKEY, r->u->peer_key);
  }
  if (r->method == UPSTREAM_HEAD)
    SETOPT(e, CURLOPT_NOBODY, 1L);
  if (r->accept) {
    char line[1200];
    snprintf(line, sizeof line, "Accept: %s", r->accept);
    struct curl_slist *l = curl_slist_append(r->hdrlist, line);
    if (!l)
      goto fail;
    r->hdrlist = l;
  }
  for (const char *p = r->extra_headers; p && *p;) {
    const char *nl = strchr(p, '\n');
    size_t len = nl ? (size_t)(nl - p) : strlen(p);
    char line[1100];
    if (len > 0 && len < sizeof line) {
      memcpy(line, p, len);
      line[len] = '\0';
      struct curl_slist *l = curl_slist_append(r->hdrlist, line);
      if (!l)
        goto fail;
      r->hdrlist = l;
    }
    p = nl ? nl + 1 : p + len;
  }
  if (r->hdrlist)
    SETOPT(e, CURLOPT_HTTPHEADER, r->hdrlist);
  uint64_t from = r->headers_given ? r->stream_base + r->delivered : r->range_start;
  if (from > 0) {
    char range[32];
    snprintf(range, sizeof range, "%llu-", (unsigned long long)from);
    SETOPT(e, CURLOPT_RANGE, range); /* copied by curl */
  }
  /* Authorization through curl's own auth, never a raw header: curl then
   * withholds it from a redirect to another host (the CDN). */
  if (r->auth == UPAUTH_BEARER && r->token) {
    SETOPT(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BEARER);
    SETOPT(e, CURLOPT_XOAUTH2_BEARER, r->token);
  } else if (r->auth == UPAUTH_BASIC && cfg->username) {
    SETOPT(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    SETOPT(e, CURLOPT_USERNAME, cfg->username);
    SETOPT(e, CURLOPT_PASSWORD, r->u->password ? r->u->password : "");
  }
  if (curl_multi_add_handle(c->multi, e) != CURLM_OK)
    goto fail;
  req_set_state(r, UPREQ_RUNNING);
  return;
fail:
  curl_easy_cleanup(e);
  r->easy = NULL;
  curl_slist_free_all(r->hdrlist);
  r->hdrlist = NULL;
  req_finish(r, UV_ENOMEM);
}

static int curl_code_err(CURLcode cc) {
  switch (cc) {
  case CURLE_OPERATION_TIMEDOUT: return UV_ETIMEDOUT;
  case CURLE_PARTIAL_FILE: return RM_ESIZE;
  case CURLE_OUT_OF_MEMORY: return UV_ENOMEM;
  case CURLE_TOO_MANY_REDIRECTS:
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_URL_MALFORMAT:
  case CURLE_WEIRD_SERVER_REPLY:
  case CURLE_BAD_CONTENT_ENCODING: return RM_EUPSTREAM;
  default: return RM_EUNREACH;
  }
}

/* Failures worth another attempt: the network, not the request. */
static int curl_code_transient(CURLcode cc) {
  switch (cc) {
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_CONNECT:
  case CURLE_OPERATION_TIMEDOUT:
  case CURLE_GOT_NOTHING:
  case CURLE_SEND_ERROR:
  case CURLE_RECV_ERROR:
  case CURLE_PARTIAL_FILE:
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_HTTP2:
  case CURLE_HTTP2_STREAM: return 1;
  default: return 0;
  }
}

/* A 401 was swallowed: authenticate and go again. */
static void req_auth_round(struct upstream_req *r) {
  struct upstream *u = r->u;
  r->auth_rounds++;
  /* The challenge is what a new ping would tell: later requests of this
   * upstream authenticate up front. */
  u->chal = r->chal;
  u->ping = PING_DONE;
  if (r->chal.scheme == WWW_AUTH_BASIC) {
    r->auth = UPAUTH_BASIC;
    req_attempt_start(r);
    return;
  }
  char scope[1024] = "";
  if (r->chal.scope[0])
    snprintf(scope, sizeof scope, "%s", r->chal.scope);
  else if (r->repo)
    snprintf(scope, sizeof scope, "repository:%s:pull", r->repo);
  if (r->auth == UPAUTH_BEARER && r->token_key)
    token_drop(u, r->token_key, r->token);
  req_get_token(r, &r->chal, scope);
}

/* The attempt's transfer ended with `cc` (its easy handle is gone). */
static void req_attempt_done(struct upstream_req *r, CURLcode cc) {
  if (r->state != UPREQ_RUNNING)
    return;
  if (cc == CURLE_OK && r->verdict == VERDICT_NONE) {
    req_decide(r);
    if (r->state != UPREQ_RUNNING)
      return;
  }
  const char *why = cc ? (r->errbuf[0] ? r->errbuf : curl_easy_strerror(cc)) : "";
  switch (r->verdict) {
  case VERDICT_AUTH: req_auth_round(r); return;
  case VERDICT_RETRY: {
    char msg[64];
    snprintf(msg, sizeof msg, "HTTP %d", r->h.status);
    req_retry(r, retry_after_ms(r->h.retry_after), msg);
    return;
  }
  case VERDICT_DELIVER:
  case VERDICT_CONTINUE:
    if (cc == CURLE_OK) {
      if (r->expect_len >= 0 && r->delivered != (uint64_t)r->expect_len) {
        LOG_W("upstream %s req %u (%s): got %llu of %lld bytes", r->u->cfg.host, r->id,
              r->kind, (unsigned long long)r->delivered, (long long)r->expect_len);
        req_finish(r, RM_ESIZE);
      } else {
        req_finish(r, 0);
      }
      return;
    }
    break;
  case VERDICT_NONE: break;
  }
  /* The transport failed. Before the caller has headers this is a retry;
   * after, only a resumable 2xx body can go on, from where it broke. */
  int can = curl_code_transient(cc) && req_budget_left(r);
  if (r->headers_given)
    can = can && r->resumable && r->method == UPSTREAM_GET &&
          (r->verdict == VERDICT_NONE || r->h.status / 100 == 2);
  if (can) {
    req_retry(r, -1, why);
    return;
  }
  LOG_W("upstream %s req %u (%s) %s: %s after %llu bytes", r->u->cfg.host, r->id, r->kind,
        r->url, why, (unsigned long long)r->delivered);
  req_finish(r, curl_code_err(cc));
}

/* --- curl <-> libuv --------------------------------------------------------- */

static void client_check_done(struct upclient *c) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(c->multi, &left))) {
    if (m->msg != CURLMSG_DONE)
      continue;
    CURL *easy = m->easy_handle;
    CURLcode cc = m->data.result;
    char *priv = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
    struct upstream_req *r = (struct upstream_req *)(void *)priv;
    assert(r && r->easy == easy);
    if (r->stalled && cc == CURLE_ABORTED_BY_CALLBACK)
      cc = CURLE_OPERATION_TIMEDOUT; /* the sender stalled: not our abort */
    req_attempt_end(r, (int)cc);
    req_attempt_done(r, cc);
  }
}

static void sock_closed(uv_handle_t *h) {
  struct upsock *s = h->data;
  struct upclient *c = s->c;
  free(s);
  c->open_handles--;
  if (c->closing && c->open_handles == 0)
    free(c);
}

static void sock_close(struct upsock *s) {
  upq_remove(&s->link);
  uv_poll_stop(&s->poll);
  uv_close((uv_handle_t *)&s->poll, sock_closed);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  struct upsock *s = h->data;
  struct upclient *c = s->c;
  curl_socket_t fd = s->fd; /* s may be closed by the call below */
  int flags = 0, running;
  if (status < 0)
    flags = CURL_CSELECT_ERR;
  else {
    if (events & UV_READABLE)
      flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
      flags |= CURL_CSELECT_OUT;
  }
  curl_multi_socket_action(c->multi, fd, flags, &running);
  client_check_done(c);
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp,
                          void *socketp) {
  struct upclient *c = userp;
  struct upsock *s = socketp;
  (void)easy;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      if (!c->closing) /* not while curl_multi_cleanup runs */
        curl_multi_assign(c->multi, fd, NULL);
      sock_close(s);
    }
    return 0;
  }
  if (!s) {
    s = calloc(1, sizeof *s);
    if (!s)
      return -1;
    if (uv_poll_init_socket(c->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->fd = fd;
    s->c = c;
    s->poll.data = s;
    c->open_handles++;
    upq_insert_tail(&c->socks, &s->link);
    curl_multi_assign(c->multi, fd, s);
  }
  int ev = 0;
  if (what & CURL_POLL_IN)
    ev |= UV_READABLE;
  if (what & CURL_POLL_OUT)
    ev |= UV_WRITABLE;
  uv_poll_start(&s->poll, ev, on_poll);
  return 0;
}

static void on_timeout(uv_timer_t *t) {
  struct upclient *c = t->data;
  int running;
  curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  client_check_done(c);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp) {
  struct upclient *c = userp;
  (void)multi;
  if (timeout_ms < 0)
    uv_timer_stop(&c->timer);
  else
    uv_timer_start(&c->timer, on_timeout, (uint64_t)timeout_ms, 0);
  return 0;
}

/* --- public API ------------------------------------------------------------ */

static void client_handle_closed(uv_handle_t *h) {
  struct upclient *c = h->data;
  c->open_handles--;
  if (c->open_handles == 0)
    free(c);
}

int upclient_new(struct upclient **out, uv_loop_t *loop) {
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    return UV_ENOMEM;
  struct upclient *c = calloc(1, sizeof *c);
  if (!c)
    goto fail;
  c->loop = loop;
  c->backoff_base_ms = UP_BACKOFF_BASE_MS;
  c->backoff_max_ms = UP_BACKOFF_MAX_MS;
  upq_init(&c->reqs);
  upq_init(&c->pending);
  upq_init(&c->socks);
  upq_init(&c->ups);
  c->multi = curl_multi_init();
  c->share = curl_share_init();
  if (!c->multi || !c->share)
    goto fail;
  /* One loop thread: no lock callbacks needed. */
  curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
  curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
  uv_timer_init(loop, &c->timer);
  c->timer.data = c;
  uv_idle_init(loop, &c->idle);
  c->idle.data = c;
  c->open_handles = 2;
  metrics_describe(M_REQUESTS, METRIC_COUNTER, "HTTP exchanges with upstream registries");
  metrics_describe(M_DURATION, METRIC_HISTOGRAM,
                   "Upstream requests from start to end (retries, auth and body included), "
                   "by upstream and kind.");
  metrics_describe(M_BYTES, METRIC_COUNTER,
                   "Body bytes received from upstream registries");
  metrics_describe(M_RL_REMAINING, METRIC_GAUGE,
                   "Last ratelimit-remaining seen from the upstream");
  *out = c;
  return 0;
fail:
  if (c) {
    if (c->multi)
      curl_multi_cleanup(c->multi);
    if (c->share)
      curl_share_cleanup(c->share);
    free(c);
  }
  curl_global_cleanup();
  return UV_ENOMEM;
}

void upclient_set_backoff(struct upclient *c, uint64_t base_ms, uint64_t max_ms) {
  c->backoff_base_ms = base_ms ? base_ms : 1;
  c->backoff_max_ms = max_ms < c->backoff_base_ms ? c->backoff_base_ms : max_ms;
}

void upclient_free(struct upclient *c) {
  if (!c)
    return;
  c->closing = 1;
  while (!upq_empty(&c->reqs))
    req_cancel_now(UPQ_DATA(c->reqs.next, struct upstream_req, all));
  while (!upq_empty(&c->ups)) {
    struct upstream *u = UPQ_DATA(c->ups.next, struct upstream, link);
    upq_remove(&u->link);
    u->c = NULL;
  }
  curl_multi_cleanup(c->multi);
  curl_share_cleanup(c->share);
  curl_global_cleanup();
  while (!upq_empty(&c->socks))
    sock_close(UPQ_DATA(c->socks.next, struct upsock, link));
  uv_timer_stop(&c->timer);
  uv_idle_stop(&c->idle);
  uv_close((uv_handle_t *)&c->timer, client_handle_closed);
  uv_close((uv_handle_t *)&c->idle, client_handle_closed);
}

/* Copies an optional string; returns 1 on success (also for NULL). */
static int cfg_dup(char **dst, const char *src) {
  *dst = src ? strdup(src) : NULL;
  return !src || *dst;
}

static void upstream_cfg_free(struct config_upstream *cfg) {
  free(cfg->host);
  free(cfg->url);
  free(cfg->listen);
  free(cfg->username);
  free(cfg->password);
  free(cfg->password_env);
  free(cfg->ca_file);
}

int upstream_new(struct upstream **out, struct upclient *c,
                 const struct config_upstream *cfg) {
  if (!cfg->host || !cfg->url || !is_http_url(cfg->url) || has_ctl(cfg->url, 0))
    return RM_ECONFIG;
  const char *pw = cfg->password;
  if (cfg->password_env) {
    pw = getenv(cfg->password_env);
    if (!pw) {
      LOG_E("upstream %s: environment variable %s is not set", cfg->host,
            cfg->password_env);
      return RM_ECONFIG;
    }
  }
  struct upstream *u = calloc(1, sizeof *u);
  if (!u)
    return UV_ENOMEM;
  u->cfg = *cfg;
  int ok = cfg_dup(&u->cfg.host, cfg->host) && cfg_dup(&u->cfg.url, cfg->url) &&
           cfg_dup(&u->cfg.listen, cfg->listen) &&
           cfg_dup(&u->cfg.username, cfg->username) &&
           cfg_dup(&u->cfg.password, cfg->password) &&
           cfg_dup(&u->cfg.password_env, cfg->password_env) &&
           cfg_dup(&u->cfg.ca_file, cfg->ca_file) && cfg_dup(&u->password, pw);
  if (!ok) {
    upstream_cfg_free(&u->cfg);
    free(u->password);
    free(u);
    return UV_ENOMEM;
  }
  /* A trailing slash would double the one every path starts with. */
  size_t n = strlen(u->cfg.url);
  while (n > 0 && u->cfg.url[n - 1] == '/')
    u->cfg.url[--n] = '\0';
  snprintf(u->labels, sizeof u->labels, "upstream=\"");
  size_t k = strlen(u->labels);
  for (const char *p = u->cfg.host; *p && k < sizeof u->labels - 2; p++)
    u->labels[k++] = (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) ? '_' : *p;
  u->labels[k++] = '"';
  u->labels[k] = '\0';
  u->c = c;
  u->ping = PING_NONE;
  upq_init(&u->ping_waiters);
  upq_init(&u->tokens);
  upq_init(&u->reqs);
  upq_insert_tail(&c->ups, &u->link);
  u->rl.limit = u->rl.remaining = u->rl.window_s = -1;
  *out = u;
  return 0;
}

int upstream_new_peer(struct upstream **out, struct upclient *c, const char *name,
                      const char *url, const struct config_tls *tls,
                      uint64_t connect_timeout_ms, uint64_t stall_ms) {
  char host[160];
  snprintf(host, sizeof host, "peer:%s", name);
  struct config_upstream cfg = {
      .host = host,
      .url = (char *)url,
      .tls_verify = 1,
      .connect_timeout_ms = connect_timeout_ms,
      .low_speed_time_ms = stall_ms,
      .max_retries = 0,
      .ca_file = tls ? tls->ca : NULL,
  };
  int r = upstream_new(out, c, &cfg);
  if (r)
    return r;
  (*out)->is_peer = 1;
  if (tls) {
    (*out)->peer_cert = strdup(tls->cert);
    (*out)->peer_key = strdup(tls->key);
    if (!(*out)->peer_cert || !(*out)->peer_key) {
      upstream_free(*out);
      *out = NULL;
      return UV_ENOMEM;
    }
  }
  (*out)->ping = PING_DONE; /* a regmesh node answers /v2/ without auth */
  return 0;
}

void upstream_free(struct upstream *u) {
  if (!u)
    return;
  u->closing = 1;
  /* Callers' requests first, so the internal ones they wait on end with
   * nobody to wake. Rescan after each: on_done may change the list. */
  for (;;) {
    struct upstream_req *victim = NULL;
    for (struct upq *q = u->reqs.next; q != &u->reqs && !victim; q = q->next)
      if (!UPQ_DATA(q, struct upstream_req, by_up)->internal)
        victim = UPQ_DATA(q, struct upstream_req, by_up);
    if (!victim)
      break;
    req_cancel_now(victim);
  }
  while (!upq_empty(&u->reqs))
    req_cancel_now(UPQ_DATA(u->reqs.next, struct upstream_req, by_up));
  upq_remove(&u->link);
  while (!upq_empty(&u->tokens))
    token_free(UPQ_DATA(u->tokens.next, struct uptoken, link));
  upstream_cfg_free(&u->cfg);
  free(u->password);
  free(u->peer_cert);
  free(u->peer_key);
  free(u);
}

static int str_differs(const char *a, const char *b) {
  return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

int upstream_reconfigure(struct upstream *u, const struct config_upstream *from) {
  const char *pw = from->password;
  if (from->password_env && !(pw = getenv(from->password_env)))
    return RM_ECONFIG;
  struct config_upstream next = *from;
  next.host = next.listen = NULL;
  char *pw_copy = NULL;
  if (!cfg_dup(&next.url, from->url) || !cfg_dup(&next.username, from->username) ||
      !cfg_dup(&next.password, from->password) ||
      !cfg_dup(&next.password_env, from->password_env) ||
      !cfg_dup(&next.ca_file, from->ca_file) || !cfg_dup(&pw_copy, pw)) {
    upstream_cfg_free(&next);
    free(pw_copy);
    return UV_ENOMEM;
  }
  size_t n = strlen(next.url);
  while (n > 0 && next.url[n - 1] == '/')
    next.url[--n] = '\0';
  int new_url = strcmp(next.url, u->cfg.url) != 0;
  int new_creds = str_differs(next.username, u->cfg.username) ||
                  str_differs(pw_copy, u->password) || new_url;
  /* what stays: the identity and the listener */
  next.host = u->cfg.host;
  next.listen = u->cfg.listen;
  next.is_default = u->cfg.is_default;
  next.tls = u->cfg.tls;
  u->cfg.host = u->cfg.listen = NULL;
  upstream_cfg_free(&u->cfg);
  u->cfg = next;
  free(u->password);
  u->password = pw_copy;
  if (new_creds) {
    /* tokens of the old identity: those nobody waits for go now; one being
     * fetched serves its waiters and is refetched when refused */
    for (struct upq *q = u->tokens.next; q != &u->tokens;) {
      struct uptoken *e = UPQ_DATA(q, struct uptoken, link);
      q = q->next;
      if (!e->fetch && upq_empty(&e->waiters))
        token_free(e);
      else if (e->token) {
        free(e->token);
        e->token = NULL;
      }
    }
    if (u->ping == PING_DONE)
      u->ping = PING_NONE; /* learn the challenge again */
  }
  if (new_url) {
    u->brk = UPSTREAM_CIRCUIT_CLOSED;
    u->brk_failures = 0;
    u->brk_probing = 0;
    u->brk_backoff_ms = 0;
    u->rl.limit = u->rl.remaining = u->rl.window_s = -1;
    LOG_I("upstream %s -> %s (reloaded)", u->cfg.host, u->cfg.url);
  }
  return 0;
}

const char *upstream_labels(const struct upstream *u) { return u->labels; }

const struct config_upstream *upstream_config(const struct upstream *u) {
  return &u->cfg;
}

void upstream_get_ratelimit(const struct upstream *u, struct upstream_ratelimit *rl) {
  *rl = u->rl;
}

int upstream_fetch(struct upstream *u, const struct upstream_fetch_opts *o,
                   const struct upstream_cbs *cbs, void *ud, struct upstream_req **out) {
  if (!u->c || u->c->closing || u->closing)
    return UV_ECANCELED;
  if (!o->path || o->path[0] != '/' || has_ctl(o->path, 0) ||
      (o->accept && has_ctl(o->accept, 1)) || (o->accept && strlen(o->accept) > 1024) ||
      (o->repo && (has_ctl(o->repo, 0) || strlen(o->repo) > 512)) ||
      (o->extra_headers && (strchr(o->extra_headers, '\r') || strlen(o->extra_headers) > 1024)))
    return UV_EINVAL;
  struct buf url;
  buf_init(&url, 16384);
  if (buf_appendf(&url, "%s%s", u->cfg.url, o->path)) {
    buf_free(&url);
    return UV_ENOMEM;
  }
  struct upstream_req *r = req_new(u, url.data, o->kind);
  buf_free(&url);
  if (!r)
    return UV_ENOMEM;
  r->method = o->method;
  r->range_start = o->range_start;
  r->resumable = o->resumable;
  r->max_body = o->max_body;
  r->max_recv_speed = o->max_recv_speed;
  r->cbs = *cbs;
  r->ud = ud;
  if ((o->accept && !(r->accept = strdup(o->accept))) ||
      (o->repo && !(r->repo = strdup(o->repo))) ||
      (o->extra_headers && !(r->extra_headers = strdup(o->extra_headers)))) {
    /* Not started: unwind without callbacks. */
    r->done_called = 1;
    req_set_state(r, UPREQ_DONE);
    req_complete(r);
    return UV_ENOMEM;
  }
  req_enqueue(r);
  if (out)
    *out = r;
  return 0;
}

void upstream_req_cancel(struct upstream_req *r) {
  if (!r || r->done_called)
    return;
  if (r->state == UPREQ_DONE) {
    r->err = UV_ECANCELED; /* decided but not yet told: the caller wins */
    return;
  }
  req_finish(r, UV_ECANCELED);
}
