/* fetch.h - single-flight downloads of content by digest.
 *
 * Any number of requests for one missing digest share one download (a
 * "source"): the first starts the upstream GET, later ones join it. A blob
 * streams into the store's temp file, and every waiter reads from that file
 * up to the bytes written, so memory use does not grow with blob size or
 * with slow clients. A manifest is small and kept in memory.
 *
 * Verification gates the end: until the digest is checked the last byte of
 * a blob is withheld, so no client ever receives a complete body whose hash
 * is wrong. A waiter leaving (its client hung up) never stops the download.
 *
 * Waiter protocol: fetcher_join never calls back. After it returns 0, check
 * fetch_src_ready(): if not ready, wait for on_ready(0) or on_ready(err)
 * (final). After ready, on_data tells that fetch_src_available() grew, and
 * on_done(err) ends it. In every case the owner calls fetcher_leave(w) once,
 * which releases its reference to the source.
 */
#ifndef REGMESH_NODE_FETCH_H
#define REGMESH_NODE_FETCH_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct blobstore;
struct upstream;
struct fetcher;
struct fetch_src;

enum fetch_kind { FETCH_BLOB, FETCH_MANIFEST };

/* Where a download may come from, tried in order (a fleet node asks the
 * digest's owners before the upstream). A source that fails or stalls is
 * replaced by the next one, which resumes a blob with Range from the bytes
 * already written; the waiters see one stream. Rules for moving on: after
 * a peer or a delegate, on any failure; after the upstream, only on a 429
 * (to a delegate). A peer whose bytes fail the digest check is reported to
 * on_peer_error; a manifest then comes from the next source, a blob fails
 * (its bytes already went out to clients, whose retry is served anew). */
enum fetch_source_kind {
  FETCH_SRC_UPSTREAM, /* the configured registry */
  FETCH_SRC_PEER,     /* an owner of the digest in the fleet */
  FETCH_SRC_DELEGATE, /* a peer asked to spend its rate-limit budget */
};

#define FETCH_MAX_SOURCES 8

struct fetch_source {
  enum fetch_source_kind kind;
  struct upstream *u;  /* borrowed: must outlive the download */
  char label[144];     /* for logs: "docker.io", "peer:node-b" */
  char query[160];     /* appended to the path ("?ns=docker.io"), or "" */
  char headers[600];   /* extra request headers ("Name: value" lines) */
  uint64_t rate;       /* bytes/s cap on this source (replica fills), 0 none */
};

struct fetch_plan {
  struct fetch_source src[FETCH_MAX_SOURCES];
  size_t n;
  int up; /* index of the configured upstream, for the hooks (-1: unknown) */
};

/* fetch_plan_upstream: a plan of just the upstream u. */
void fetch_plan_upstream(struct fetch_plan *p, struct upstream *u);

struct fetch_waiter {
  void (*on_ready)(struct fetch_waiter *w, int err);
  void (*on_data)(struct fetch_waiter *w);
  void (*on_done)(struct fetch_waiter *w, int err);
  /* owned by the fetcher while joined */
  struct fetch_src *src;
  struct fetch_waiter *prev, *next;
};

int fetcher_new(struct fetcher **out, uv_loop_t *loop, struct blobstore *bs);
/* fetcher_free: after the upstream client was freed (which ended every
 * download) and every waiter left. */
void fetcher_free(struct fetcher *f);

/* What the fleet layer learns from downloads (all optional):
 * - on_peer_error: a peer source failed (RM_EDIGEST: it sent bad bytes);
 *   not called when it only sent us elsewhere (RM_EREDIRECT, RM_EBUSY).
 * - on_redirect: a peer answered with other holders (X-Regmesh-Holders,
 *   the value in holders): write up to max sources to try next into out
 *   and return how many. They go right after the current source.
 * - on_commit: content of digest hex was verified and stored. */
struct fetch_hooks {
  void (*on_peer_error)(void *ud, const struct fetch_source *src, int err);
  size_t (*on_redirect)(void *ud, enum fetch_kind kind, const char *hex, const char *repo,
                        int up, const struct fetch_source *from, const char *holders,
                        struct fetch_source *out, size_t max);
  void (*on_commit)(void *ud, enum fetch_kind kind, const char *hex, const char *repo,
                    int up);
  void *ud;
};
void fetcher_set_hooks(struct fetcher *f, const struct fetch_hooks *h);

/* fetcher_join attaches w to the download of hex (starting it with plan,
 * repository repo, when none runs; the plan is copied). Returns 0 or a
 * negative error (then w is not attached). */
int fetcher_join(struct fetcher *f, enum fetch_kind kind, const char *hex,
                 const struct fetch_plan *plan, const char *repo, struct fetch_waiter *w);
void fetcher_leave(struct fetch_waiter *w);

/* fetcher_find returns the running download of hex, or NULL. */
struct fetch_src *fetcher_find(struct fetcher *f, enum fetch_kind kind, const char *hex);

int fetch_src_ready(const struct fetch_src *s);
int fetch_src_done(const struct fetch_src *s); /* verified and complete */
uint64_t fetch_src_size(const struct fetch_src *s);
/* Bytes a waiter may send now (the last byte only once verified). */
uint64_t fetch_src_available(const struct fetch_src *s);
/* Read-only fd on the blob's file (valid while the waiter is joined). */
int fetch_src_fd(const struct fetch_src *s);
/* Manifest body (valid while joined, after on_done(0)). */
const char *fetch_src_body(const struct fetch_src *s, size_t *len);
/* Media type from the upstream ("" when none). */
const char *fetch_src_media_type(const struct fetch_src *s);
/* The upstream's HTTP status when it failed with one, else 0. */
int fetch_src_upstream_status(const struct fetch_src *s);
/* Some of the bytes came from a peer (for the "peer" hit source). */
int fetch_src_via_peer(const struct fetch_src *s);
/* Label of the source in use ("peer:n2", "docker.io"). */
const char *fetch_src_label(const struct fetch_src *s);

unsigned fetcher_active(const struct fetcher *f);

#endif
