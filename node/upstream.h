/* upstream.h - HTTP client for upstream registries (and, later, peers).
 *
 * libcurl's multi interface driven by the libuv loop: one loop, no thread
 * per request. An upstream is one configured registry; it owns its token
 * cache, its one-time /v2/ ping state and its rate-limit view. Auth, redirects
 * and retries are invisible to the caller:
 *   - 401 -> WWW-Authenticate: Bearer (realm/service/scope, anonymous or with
 *     credentials, tokens cached per scope until shortly before expiry) or
 *     Basic; then the request is redone once.
 *   - redirects are followed without sending Authorization to the new host.
 *   - idempotent requests are retried with backoff on connect errors, 5xx
 *     and 429 (Retry-After honoured) before any body byte was delivered.
 *   - a resumable (content-addressed) body that breaks mid-way is resumed
 *     with Range from the bytes already delivered; the caller sees one
 *     continuous stream.
 *
 * Ownership: upclient and upstream belong to the node; a request belongs to
 * the upstream until on_done has been called.
 */
#ifndef REGMESH_NODE_UPSTREAM_H
#define REGMESH_NODE_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct config_upstream;
struct config_tls;
struct upclient;
struct upstream;
struct upstream_req;

enum upstream_method { UPSTREAM_GET = 0, UPSTREAM_HEAD = 1 };

struct upstream_response {
  int status;                /* final status after auth and redirects */
  int64_t content_length;    /* -1 when unknown */
  const char *content_type;  /* parameters stripped; NULL when absent */
  const char *digest;        /* Docker-Content-Digest, or NULL */
  const char *link;          /* Link header, or NULL */
  const char *retry_after;   /* Retry-After, or NULL */
  const char *ratelimit_remaining; /* raw header value, or NULL */
  int64_t range_start;       /* 206: first byte; else 0 */
  int64_t total_size;        /* 206: size from Content-Range; else content_length */
  const char *www_authenticate; /* WWW-Authenticate (several joined by ", "), or NULL */
  const char *regmesh_auth_reply; /* X-Regmesh-Auth-Reply (from a peer), or NULL */
  const char *regmesh_tag_time;   /* X-Regmesh-Tag-Fetched (from a peer), or NULL */
  const char *oci_filters_applied; /* OCI-Filters-Applied (referrers), or NULL */
  const char *regmesh_holders;    /* X-Regmesh-Holders (from a peer), or NULL */
};

struct upstream_cbs {
  /* The final response's status and headers, once. Return 0 to receive the
   * body, or a negative code to cancel (on_done then gets that code). */
  int (*on_headers)(void *ud, const struct upstream_response *resp);
  /* Body bytes in order (a resume is invisible). Return 0, or a negative
   * code to cancel. */
  int (*on_data)(void *ud, const char *p, size_t n);
  /* Exactly once, last: 0 when the whole body arrived; otherwise
   * RM_EUNREACH (no connection), UV_ETIMEDOUT, RM_EUPSTREAM (bad status
   * after headers were given), RM_ESIZE (body shorter than announced),
   * RM_ETOOBIG (max_body exceeded), RM_EPARSE (response head over 64 KiB),
   * RM_ERATELIMIT (a resumed body answered 429 past the retries),
   * UV_ECANCELED, or the code returned by a callback.
   * The request is freed right after on_done returns: drop every pointer
   * to it there. */
  void (*on_done)(void *ud, int err);
};

struct upstream_fetch_opts {
  enum upstream_method method;
  const char *path;     /* "/v2/<name>/blobs/<digest>", may carry a query */
  const char *repo;     /* repository for the token scope "repository:R:pull" */
  const char *accept;   /* Accept header value, or NULL */
  const char *kind;     /* metrics label: "manifest", "blob", "tags", ... */
  uint64_t range_start; /* > 0: ask for bytes from here (expects 206) */
  int resumable;        /* content-addressed body: may resume with Range */
  size_t max_body;      /* > 0: cancel with RM_ETOOBIG past this many bytes */
  /* More request headers: "Name: value" lines separated by '\n' (no CR,
   * at most 1 KiB), or NULL. For peer requests (hop, signature). */
  const char *extra_headers;
  uint64_t max_recv_speed; /* > 0: bytes/s cap on this transfer */
};

/* upclient_new creates the shared curl multi handle on loop. */
int upclient_new(struct upclient **out, uv_loop_t *loop);
/* upclient_free cancels every request (their on_done gets UV_ECANCELED
 * synchronously) and frees the client once its handles closed (run the loop
 * afterwards). Upstreams still alive are detached and must still be freed
 * with upstream_free. Not from within a request callback. */
void upclient_free(struct upclient *c);

/* upclient_set_backoff: retry delays are base_ms, 2*base_ms, ... capped at
 * max_ms (defaults 200 ms and 5 s). For tests. */
void upclient_set_backoff(struct upclient *c, uint64_t base_ms, uint64_t max_ms);

/* upstream_new: one registry from its config (credentials resolved from
 * password_env here; a missing variable is an error). */
int upstream_new(struct upstream **out, struct upclient *c,
                 const struct config_upstream *cfg);
/* upstream_free cancels the upstream's requests (on_done(UV_ECANCELED),
 * synchronously) and frees it. Not from within on_headers/on_data. */
void upstream_free(struct upstream *u);
/* upstream_new_peer: a client for another regmesh node's registry API at
 * url (metrics label "peer:<name>"). No /v2/ ping, no auth rounds and no
 * retries or resumes of its own: the caller moves to its next source on any
 * failure. A stream slower than 1 KiB/s for stall_ms is cut. With tls
 * (cluster.tls), an https peer must present a certificate of tls->ca and we
 * present ours. */
int upstream_new_peer(struct upstream **out, struct upclient *c, const char *name,
                      const char *url, const struct config_tls *tls,
                      uint64_t connect_timeout_ms, uint64_t stall_ms);
const struct config_upstream *upstream_config(const struct upstream *u);
/* upstream_reconfigure takes from a reloaded configuration everything but
 * host, listen, default and tls: url, credentials, TLS verification,
 * timeouts, retries, private and the TTLs. Requests in flight finish as
 * they started; with a new URL or new credentials, cached tokens and the
 * learnt challenge are dropped (and with a new URL the circuit closes).
 * 0, RM_ECONFIG (password_env is not set: nothing changes) or UV_ENOMEM. */
int upstream_reconfigure(struct upstream *u, const struct config_upstream *from);

/* upstream_ping starts the upstream's /v2/ ping now if it has none (the
 * node calls it at start so the first client request does not wait for it,
 * and unreachable upstreams show in the log at once). No callback. */
void upstream_ping(struct upstream *u);

/* upstream_fetch starts a request. Returns 0 (then on_done is called exactly
 * once, never from within this call) or a negative error (then no callback
 * is ever called). *out (optional) can be used to cancel. */
int upstream_fetch(struct upstream *u, const struct upstream_fetch_opts *o,
                   const struct upstream_cbs *cbs, void *ud,
                   struct upstream_req **out);
/* upstream_req_cancel: no on_headers/on_data after this; on_done(UV_ECANCELED)
 * follows on a later loop iteration unless it already ran (then r is gone:
 * never call this after on_done). Safe from within the request's own
 * callbacks. */
void upstream_req_cancel(struct upstream_req *r);

/* Rate limit last seen on this upstream (ratelimit-limit / -remaining, "N;w=S").
 * Fields are -1 when never seen. */
struct upstream_ratelimit {
  int64_t limit;
  int64_t remaining;
  int64_t window_s;
  uint64_t seen_at_ms;
};
void upstream_get_ratelimit(const struct upstream *u, struct upstream_ratelimit *rl);

/* The upstream's circuit breaker (upstream.c explains it). */
enum upstream_circuit {
  UPSTREAM_CIRCUIT_CLOSED,
  UPSTREAM_CIRCUIT_OPEN,
  UPSTREAM_CIRCUIT_HALF_OPEN,
};
struct upstream_circuit_info {
  enum upstream_circuit state;
  unsigned failures;    /* attempts failed in a row */
  uint64_t opens;       /* times it opened */
  uint64_t retry_in_ms; /* open: until the next probe */
};
void upstream_get_circuit(const struct upstream *u, struct upstream_circuit_info *out);
const char *upstream_circuit_str(enum upstream_circuit s);
/* upstream_labels: `upstream="<host>"`, escaped for a metrics label set. */
const char *upstream_labels(const struct upstream *u);

#endif
