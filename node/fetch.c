/* fetch.c - single-flight downloads of blobs and manifests by digest.
 *
 * A source is one upstream GET shared by every request for its digest. Its
 * state moves through one function (src_set_state) so each move is logged:
 *
 *   STARTING -> STREAMING -> COMMITTING -> DONE
 *        \__________\_____________\_____-> FAILED
 *
 * The commit (digest check, fsync, rename) runs on libuv's thread pool; the
 * source stays in the table until it finishes, so requests arriving during
 * the commit still join it instead of starting a second download.
 * References: the table holds one while the source is running, and each
 * joined waiter holds one; the last release frees it.
 */
#include "fetch.h"

#include "metrics.h"
#include "upstream.h"

#include "../common/buf.h"
#include "../common/digest.h"
#include "../common/errors.h"
#include "../common/log.h"
#include "../common/strmap.h"
#include "../config/config.h"
#include "../storage/storage.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MANIFEST_MAX (4u << 20)
#define UPSTREAM_PATH_MAX 512 /* containerd refuses manifests above ~4 MiB */

/* Every media type a mirror may be asked for; one Accept for manifest GETs
 * by digest, since the digest already fixes which one it is. */
static const char manifest_accept[] =
    "application/vnd.oci.image.index.v1+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.v1+prettyjws, "
    "application/vnd.docker.distribution.manifest.v1+json, */*";

enum src_state { SRC_STARTING, SRC_STREAMING, SRC_COMMITTING, SRC_DONE, SRC_FAILED };

static const char *src_state_str(enum src_state s) {
  static const char *names[] = {"starting", "streaming", "committing", "done", "failed"};
  return names[s];
}

struct fetcher {
  uv_loop_t *loop;
  struct blobstore *bs;
  struct fetch_hooks hooks;
  struct strmap srcs; /* key "b:<hex>" / "m:<hex>" -> struct fetch_src */
  unsigned active;
};

struct fetch_src {
  struct fetcher *f;
  enum fetch_kind kind;
  enum src_state state;
  char key[2 + DIGEST_HEX_LEN + 1];
  char hex[DIGEST_HEX_LEN + 1];
  char upstream_host[144]; /* label of the current source, for logs */
  char repo[320];
  struct fetch_plan plan;
  size_t cur;         /* index of the source in use */
  unsigned used_mask; /* sources that delivered bytes */
  int via_peer;
  uint64_t skip;      /* a resumed source ignored Range: drop this many */
  int refs;
  int in_table;
  int err;
  int upstream_status;
  char holders[200];  /* a peer's X-Regmesh-Holders, with RM_EREDIRECT */
  unsigned redirects; /* times a peer sent us elsewhere */
  int size_known;
  int verified; /* blob hash checked: every byte may be served */
  uint64_t size;
  uint64_t written;
  char media_type[STORAGE_MEDIA_TYPE_MAX];
  struct blob_writer *writer; /* blob: owned until commit/abort */
  int read_fd;                /* blob: read-only fd on the temp file */
  struct buf body;            /* manifest bytes */
  struct upstream_req *ureq;  /* while the upstream request runs */
  struct fetch_waiter *waiters;
  uv_work_t work;
  int commit_result;
  /* deferred hashing on the pool */
  int deferred_hash;
  int hashing;        /* a hash_work is queued or running */
  int hash_err;
  int body_done;      /* the upstream finished sending */
  uint64_t hashed_to; /* bytes the last hash round was started for */
  uv_work_t hash_req;
};

static void src_unref(struct fetch_src *s);
static void hash_kick(struct fetch_src *s);

static void src_set_state(struct fetch_src *s, enum src_state st) {
  LOG_D("fetch %s %s: %s -> %s", s->kind == FETCH_BLOB ? "blob" : "manifest",
        s->hex, src_state_str(s->state), src_state_str(st));
  s->state = st;
}

static void set_inflight_gauge(struct fetcher *f) {
  metrics_set("regmesh_inflight_downloads", "", (int64_t)f->active);
}

static void remove_from_table(struct fetch_src *s) {
  if (!s->in_table)
    return;
  strmap_del(&s->f->srcs, s->key);
  s->in_table = 0;
  s->f->active--;
  set_inflight_gauge(s->f);
  src_unref(s);
}

/* Calls `which` on each waiter. A callback may leave (only its own waiter),
 * so the next pointer is taken first and the source is held meanwhile. */
enum notify { NOTIFY_READY, NOTIFY_DATA, NOTIFY_DONE };

static void notify(struct fetch_src *s, enum notify which, int err) {
  s->refs++;
  struct fetch_waiter *w = s->waiters;
  while (w) {
    struct fetch_waiter *next = w->next;
    switch (which) {
    case NOTIFY_READY: w->on_ready(w, err); break;
    case NOTIFY_DATA: w->on_data(w); break;
    case NOTIFY_DONE: w->on_done(w, err); break;
    }
    w = next;
  }
  src_unref(s);
}

static void src_fail(struct fetch_src *s, int err) {
  if (s->state == SRC_DONE || s->state == SRC_FAILED)
    return;
  enum src_state was = s->state;
  s->err = err;
  if (s->writer && !s->hashing) { /* else hash_done aborts it */
    blob_writer_abort(s->writer);
    s->writer = NULL;
  }
  src_set_state(s, SRC_FAILED);
  LOG_W("fetch %s sha256:%s from %s failed: %s (upstream status %d)",
        s->kind == FETCH_BLOB ? "blob" : "manifest", s->hex, s->upstream_host,
        rm_strerror(err), s->upstream_status);
  metrics_add("regmesh_fetch_failures_total",
              s->kind == FETCH_BLOB ? "kind=\"blob\"" : "kind=\"manifest\"", 1);
  s->refs++;
  remove_from_table(s);
  /* Waiters that saw "ready" get on_done, the others on_ready: each gets
   * exactly one final callback. */
  notify(s, was == SRC_STARTING || !s->size_known ? NOTIFY_READY : NOTIFY_DONE, err);
  src_unref(s);
}

static int status_to_err(int status) {
  switch (status) {
  case 404: return RM_ENOTFOUND;
  case 401:
  case 403: return RM_EAUTH;
  case 429: return RM_ERATELIMIT;
  default: return RM_EUPSTREAM;
  }
}

/* The media type of a manifest: the upstream's Content-Type unless absent
 * or generic, then the body's own mediaType field. */
static void manifest_media_type(struct fetch_src *s) {
  if (s->media_type[0] && strcmp(s->media_type, "application/octet-stream") != 0 &&
      strcmp(s->media_type, "text/plain") != 0)
    return;
  json_error_t jerr;
  json_t *doc = json_loadb(s->body.data, s->body.len, 0, &jerr);
  const char *mt = doc ? json_string_value(json_object_get(doc, "mediaType")) : NULL;
  snprintf(s->media_type, sizeof s->media_type, "%s",
           mt ? mt : "application/vnd.docker.distribution.manifest.v2+json");
  json_decref(doc);
}

/* A later source continuing a blob whose writer is open: its answer must
 * fit what was already written. */
static int on_resumed_headers(struct fetch_src *s, const struct upstream_response *resp) {
  int64_t total = resp->status == 206 ? resp->total_size : resp->content_length;
  if (resp->status == 206 && (uint64_t)resp->range_start != s->written)
    return RM_EUPSTREAM;
  if (s->size_known && total >= 0 && (uint64_t)total != s->size)
    return RM_ESIZE;
  if (resp->status == 200)
    s->skip = s->written; /* it sent the whole body again */
  if (!s->size_known && total >= 0) {
    s->size_known = 1;
    s->size = (uint64_t)total;
    src_set_state(s, SRC_STREAMING);
    notify(s, NOTIFY_READY, 0);
  }
  return 0;
}

static int on_up_headers(void *ud, const struct upstream_response *resp) {
  struct fetch_src *s = ud;
  int resumed = s->kind == FETCH_BLOB && s->writer;
  if (s->plan.src[s->cur].kind == FETCH_SRC_PEER &&
      (resp->status == 307 || resp->status == 503)) {
    /* A busy peer: it names other holders, or none (docs/cluster.md). */
    snprintf(s->holders, sizeof s->holders, "%s",
             resp->regmesh_holders ? resp->regmesh_holders : "");
    return s->holders[0] ? RM_EREDIRECT : RM_EBUSY;
  }
  if (resp->status != 200 && !(resumed && s->written > 0 && resp->status == 206)) {
    s->upstream_status = resp->status;
    return status_to_err(resp->status);
  }
  if (resp->digest && strncmp(resp->digest, "sha256:", 7) == 0 &&
      strcmp(resp->digest + 7, s->hex) != 0) {
    LOG_W("source %s announced digest %s for sha256:%s", s->upstream_host,
          resp->digest, s->hex);
    return RM_EDIGEST;
  }
  if (resumed)
    return on_resumed_headers(s, resp);
  if (resp->content_type)
    snprintf(s->media_type, sizeof s->media_type, "%s", resp->content_type);
  if (resp->content_length >= 0) {
    s->size_known = 1;
    s->size = (uint64_t)resp->content_length;
  }
  if (s->kind == FETCH_MANIFEST) {
    if (s->size_known && s->size > MANIFEST_MAX)
      return RM_ETOOBIG;
    return 0;
  }
  int r = blobstore_writer_open(s->f->bs, s->hex, s->size_known ? s->size : 0, &s->writer);
  if (r)
    return r;
  s->read_fd = open(blob_writer_path(s->writer), O_RDONLY | O_CLOEXEC);
  if (s->read_fd < 0)
    return -errno;
  /* Without it the writer hashes inline: slower, same result. */
  s->deferred_hash = blob_writer_defer_hash(s->writer) == 0;
  if (s->size_known) {
    src_set_state(s, SRC_STREAMING);
    notify(s, NOTIFY_READY, 0);
  }
  return 0;
}

static int on_up_data(void *ud, const char *p, size_t n) {
  struct fetch_src *s = ud;
  if (s->skip) {
    size_t k = s->skip < n ? (size_t)s->skip : n;
    s->skip -= k;
    p += k;
    n -= k;
    if (!n)
      return 0;
  }
  s->used_mask |= 1u << s->cur;
  if (s->plan.src[s->cur].kind != FETCH_SRC_UPSTREAM)
    s->via_peer = 1;
  if (s->kind == FETCH_MANIFEST)
    return buf_append(&s->body, p, n);
  if (s->size_known && s->written + n > s->size)
    return RM_ESIZE;
  int r = blob_writer_write(s->writer, p, n);
  if (r)
    return r;
  s->written += n;
  metrics_add(s->plan.src[s->cur].kind == FETCH_SRC_UPSTREAM
                  ? "regmesh_upstream_fill_bytes_total"
                  : "regmesh_peer_bytes_total",
              "", n);
  hash_kick(s);
  if (s->state == SRC_STREAMING)
    notify(s, NOTIFY_DATA, 0);
  return 0;
}

static void commit_work(uv_work_t *req) {
  struct fetch_src *s = req->data;
  if (s->kind == FETCH_BLOB) {
    s->commit_result = blob_writer_commit(s->writer, NULL);
    s->writer = NULL; /* freed by commit whatever the result */
  } else {
    s->commit_result = blobstore_put(s->f->bs, s->hex, s->body.data, s->body.len,
                                     s->media_type);
  }
}

static void commit_done(uv_work_t *req, int status) {
  struct fetch_src *s = req->data;
  (void)status;
  int r = s->commit_result;
  if (r == RM_EDIGEST) {
    src_fail(s, r);
  } else {
    if (r)
      /* The bytes were verified; only caching failed. Serve them anyway. */
      LOG_W("storing sha256:%s failed: %s", s->hex, rm_strerror(r));
    src_set_state(s, SRC_DONE);
    s->refs++;
    remove_from_table(s);
    if (!r && s->f->hooks.on_commit)
      s->f->hooks.on_commit(s->f->hooks.ud, s->kind, s->hex, s->repo, s->plan.up);
    if (s->kind == FETCH_BLOB && !s->size_known) {
      /* Without a Content-Length the waiters were not told "ready" yet. */
      s->size_known = 1;
      s->size = s->written;
      notify(s, NOTIFY_READY, 0);
    }
    notify(s, NOTIFY_DONE, 0);
    src_unref(s);
  }
  src_unref(s); /* the work item's reference */
}

/* The content is complete and verified (or a manifest in memory): start the
 * commit on the pool. Consumes the caller's reference on success or not. */
static void src_commit(struct fetch_src *s) {
  src_set_state(s, SRC_COMMITTING);
  if (s->verified && s->size_known)
    notify(s, NOTIFY_DATA, 0);
  s->work.data = s;
  s->refs++;
  int r = uv_queue_work(s->f->loop, &s->work, commit_work, commit_done);
  if (r) {
    s->refs--;
    src_fail(s, r);
  }
}

/* Tells the cluster about every peer that contributed to a bad blob. */
static void report_peers(struct fetch_src *s, int err) {
  for (size_t i = 0; i < s->plan.n; i++)
    if ((s->used_mask & (1u << i)) && s->plan.src[i].kind != FETCH_SRC_UPSTREAM &&
        s->f->hooks.on_peer_error)
      s->f->hooks.on_peer_error(s->f->hooks.ud, &s->plan.src[i], err);
}

/* All of a blob arrived and is hashed: check it here, fsync on the pool, so
 * waiters get the last byte as soon as the content is known good. */
static void blob_finish(struct fetch_src *s) {
  int err = blob_writer_verify(s->writer);
  if (err) {
    if (err == UV_EINVAL)
      err = RM_EDIGEST; /* the hasher missed bytes: treat as unverifiable */
    if (err == RM_EDIGEST)
      report_peers(s, err);
    src_fail(s, err);
    return;
  }
  s->verified = 1;
  src_commit(s);
}

/* Hashing runs on the thread pool behind the download (reading the temp
 * file back from the page cache), so the loop thread only receives, writes
 * and sends: SHA-256 was a third of its CPU on a cold miss. */
static void hash_work(uv_work_t *req) {
  struct fetch_src *s = req->data;
  int64_t k;
  do {
    k = blob_writer_hash_step(s->writer, 4u << 20);
  } while (k > 0);
  s->hash_err = k < 0 ? (int)k : 0;
}

static void hash_done(uv_work_t *req, int status) {
  struct fetch_src *s = req->data;
  (void)status;
  s->hashing = 0;
  if (s->state == SRC_FAILED) {
    /* src_fail left the writer to us while the hasher still used it */
    if (s->writer) {
      blob_writer_abort(s->writer);
      s->writer = NULL;
    }
  } else if (s->hash_err) {
    src_fail(s, s->hash_err);
  } else if (s->hashed_to < s->written) {
    hash_kick(s);
  } else if (s->body_done) {
    blob_finish(s);
  }
  src_unref(s);
}

static void hash_kick(struct fetch_src *s) {
  if (!s->deferred_hash || s->hashing || s->state == SRC_FAILED)
    return;
  s->hashing = 1;
  s->hashed_to = s->written; /* what this round will cover at least */
  s->hash_req.data = s;
  s->refs++;
  int r = uv_queue_work(s->f->loop, &s->hash_req, hash_work, hash_done);
  if (r) {
    s->hashing = 0;
    s->refs--;
    src_fail(s, r);
  }
}

static int src_request(struct fetch_src *s);

/* After source s->cur failed with err: start the next one if the rules of
 * fetch.h allow it. Returns 1 when a request is running again. */
#define REDIRECTS_MAX 2

/* A peer sent us to other holders: they go right after it in the plan
 * (the sources after them keep their order; the upstream stays last). */
static void insert_holders(struct fetch_src *s) {
  struct fetch_plan *p = &s->plan;
  struct fetch_source extra[FETCH_MAX_SOURCES];
  size_t room = FETCH_MAX_SOURCES - p->n;
  if (!s->f->hooks.on_redirect || room == 0 || ++s->redirects > REDIRECTS_MAX)
    return;
  size_t k = s->f->hooks.on_redirect(s->f->hooks.ud, s->kind, s->hex, s->repo, p->up,
                                     &p->src[s->cur], s->holders, extra, room);
  if (k > room)
    k = room;
  memmove(&p->src[s->cur + 1 + k], &p->src[s->cur + 1],
          (p->n - s->cur - 1) * sizeof p->src[0]);
  memcpy(&p->src[s->cur + 1], extra, k * sizeof extra[0]);
  p->n += k;
  metrics_add("regmesh_holder_redirects_total", "", 1);
}

static int try_next_source(struct fetch_src *s, int err) {
  const struct fetch_source *cur = &s->plan.src[s->cur];
  if (err == RM_EREDIRECT)
    insert_holders(s);
  else if (cur->kind != FETCH_SRC_UPSTREAM && err != RM_EBUSY && s->f->hooks.on_peer_error)
    s->f->hooks.on_peer_error(s->f->hooks.ud, cur, err);
  size_t next = s->cur + 1;
  if (next >= s->plan.n || s->state == SRC_FAILED)
    return 0;
  if (cur->kind == FETCH_SRC_UPSTREAM &&
      !(err == RM_ERATELIMIT && s->plan.src[next].kind == FETCH_SRC_DELEGATE))
    return 0;
  LOG_I("fetch %s sha256:%s: %s failed (%s); trying %s from byte %llu",
        s->kind == FETCH_BLOB ? "blob" : "manifest", s->hex, cur->label, rm_strerror(err),
        s->plan.src[next].label, (unsigned long long)s->written);
  s->cur = next;
  if (s->kind == FETCH_MANIFEST) {
    s->body.len = 0;
    s->media_type[0] = '\0';
  }
  metrics_add("regmesh_fetch_fallbacks_total", "", 1);
  return src_request(s) == 0;
}

static void on_up_done(void *ud, int err) {
  struct fetch_src *s = ud;
  s->ureq = NULL;
  if (err == 0 && s->upstream_status)
    err = status_to_err(s->upstream_status);
  if (!err && s->kind == FETCH_BLOB) {
    if (!s->writer)
      err = RM_EUPSTREAM;
    else if (s->size_known && s->written != s->size)
      err = RM_ESIZE;
  } else if (!err) {
    char hex[DIGEST_HEX_LEN + 1];
    if (sha256_hex(s->body.data ? s->body.data : "", s->body.len, hex) != 0 ||
        strcmp(hex, s->hex) != 0) {
      err = RM_EDIGEST;
    } else {
      manifest_media_type(s);
      s->size_known = 1;
      s->size = s->body.len;
    }
  }
  if (err && try_next_source(s, err)) {
    /* the next source's request holds its own reference */
  } else if (err) {
    src_fail(s, err);
  } else if (s->kind == FETCH_MANIFEST) {
    src_commit(s);
  } else {
    s->body_done = 1;
    if (s->deferred_hash && (s->hashing || s->hashed_to < s->written))
      hash_kick(s); /* blob_finish runs once the hasher caught up */
    else
      blob_finish(s);
  }
  src_unref(s); /* the upstream request's reference */
}

static const struct upstream_cbs src_cbs = {
    .on_headers = on_up_headers,
    .on_data = on_up_data,
    .on_done = on_up_done,
};

static void src_free(struct fetch_src *s) {
  if (s->writer)
    blob_writer_abort(s->writer);
  if (s->read_fd >= 0)
    close(s->read_fd);
  buf_free(&s->body);
  free(s);
}

/* Not inlined: at -O3 gcc inlines two unrefs in a row (src_fail, notify)
 * and cannot see that the first leaves a reference, so -Wuse-after-free
 * fires on the second. */
__attribute__((noinline)) static void src_unref(struct fetch_src *s) {
  if (--s->refs == 0)
    src_free(s);
}

/* Starts the request to source s->cur (a blob from byte s->written). */
static int src_request(struct fetch_src *s) {
  const struct fetch_source *fs = &s->plan.src[s->cur];
  char path[UPSTREAM_PATH_MAX + 200];
  int n = snprintf(path, sizeof path, "/v2/%s/%s/sha256:%s%s", s->repo,
                   s->kind == FETCH_BLOB ? "blobs" : "manifests", s->hex, fs->query);
  if (n < 0 || (size_t)n >= sizeof path)
    return UV_EINVAL;
  struct upstream_fetch_opts o = {
      .method = UPSTREAM_GET,
      .path = path,
      .repo = s->repo,
      .accept = s->kind == FETCH_MANIFEST ? manifest_accept : NULL,
      .kind = s->kind == FETCH_BLOB ? "blob" : "manifest",
      .range_start = s->kind == FETCH_BLOB ? s->written : 0,
      .resumable = s->kind == FETCH_BLOB,
      .max_body = s->kind == FETCH_MANIFEST ? MANIFEST_MAX : 0,
      .extra_headers = fs->headers[0] ? fs->headers : NULL,
      .max_recv_speed = fs->rate,
  };
  snprintf(s->upstream_host, sizeof s->upstream_host, "%s", fs->label);
  if (fs->kind == FETCH_SRC_DELEGATE) {
    char labels[200];
    snprintf(labels, sizeof labels, "upstream=\"%s\"",
             strncmp(fs->query, "?ns=", 4) == 0 ? fs->query + 4 : "");
    metrics_add("regmesh_ratelimit_delegations_total", labels, 1);
  }
  s->upstream_status = 0;
  s->skip = 0;
  s->refs++; /* the request's */
  int r = upstream_fetch(fs->u, &o, &src_cbs, s, &s->ureq);
  if (r)
    s->refs--;
  return r;
}

static int src_start(struct fetcher *f, enum fetch_kind kind, const char *hex,
                     const char *key, const struct fetch_plan *plan, const char *repo,
                     struct fetch_src **out) {
  if (!plan || plan->n == 0 || plan->n > FETCH_MAX_SOURCES)
    return UV_EINVAL;
  struct fetch_src *s = calloc(1, sizeof *s);
  if (!s)
    return UV_ENOMEM;
  s->f = f;
  s->kind = kind;
  s->state = SRC_STARTING;
  s->read_fd = -1;
  s->plan = *plan;
  snprintf(s->key, sizeof s->key, "%s", key);
  snprintf(s->hex, sizeof s->hex, "%s", hex);
  snprintf(s->repo, sizeof s->repo, "%s", repo);
  buf_init(&s->body, MANIFEST_MAX);
  s->refs = 1; /* the table's */
  int r = src_request(s);
  if (r) {
    buf_free(&s->body);
    free(s);
    return r;
  }
  r = strmap_put(&f->srcs, key, s);
  if (r) {
    /* on_done will still come and drop the request's reference */
    upstream_req_cancel(s->ureq);
    s->refs--;
    return r;
  }
  s->in_table = 1;
  f->active++;
  set_inflight_gauge(f);
  LOG_D("fetch %s sha256:%s from %s started", kind == FETCH_BLOB ? "blob" : "manifest",
        hex, s->upstream_host);
  *out = s;
  return 0;
}

static void make_key(char *key, size_t len, enum fetch_kind kind, const char *hex) {
  snprintf(key, len, "%c:%s", kind == FETCH_BLOB ? 'b' : 'm', hex);
}

struct fetch_src *fetcher_find(struct fetcher *f, enum fetch_kind kind, const char *hex) {
  char key[2 + DIGEST_HEX_LEN + 1];
  make_key(key, sizeof key, kind, hex);
  return strmap_get(&f->srcs, key);
}

void fetch_plan_upstream(struct fetch_plan *p, struct upstream *u) {
  memset(p, 0, sizeof *p);
  p->n = 1;
  p->up = -1;
  p->src[0].kind = FETCH_SRC_UPSTREAM;
  p->src[0].u = u;
  snprintf(p->src[0].label, sizeof p->src[0].label, "%s", upstream_config(u)->host);
}

void fetcher_set_hooks(struct fetcher *f, const struct fetch_hooks *h) { f->hooks = *h; }

int fetcher_join(struct fetcher *f, enum fetch_kind kind, const char *hex,
                 const struct fetch_plan *plan, const char *repo, struct fetch_waiter *w) {
  char key[2 + DIGEST_HEX_LEN + 1];
  make_key(key, sizeof key, kind, hex);
  struct fetch_src *s = strmap_get(&f->srcs, key);
  if (!s) {
    int r = src_start(f, kind, hex, key, plan, repo, &s);
    if (r)
      return r;
  }
  s->refs++;
  w->src = s;
  w->prev = NULL;
  w->next = s->waiters;
  if (s->waiters)
    s->waiters->prev = w;
  s->waiters = w;
  return 0;
}

void fetcher_leave(struct fetch_waiter *w) {
  struct fetch_src *s = w->src;
  if (!s)
    return;
  if (w->prev)
    w->prev->next = w->next;
  else
    s->waiters = w->next;
  if (w->next)
    w->next->prev = w->prev;
  w->src = NULL;
  w->prev = w->next = NULL;
  src_unref(s);
}

int fetch_src_ready(const struct fetch_src *s) {
  return s->state == SRC_DONE ||
         ((s->state == SRC_STREAMING || s->state == SRC_COMMITTING) && s->size_known);
}

int fetch_src_done(const struct fetch_src *s) { return s->state == SRC_DONE; }

uint64_t fetch_src_size(const struct fetch_src *s) { return s->size; }

uint64_t fetch_src_available(const struct fetch_src *s) {
  if (s->state == SRC_DONE || s->verified)
    return s->written;
  if (s->written == 0)
    return 0;
  /* Withhold the last byte until the digest is verified. */
  return s->written < s->size ? s->written : s->size - 1;
}

int fetch_src_fd(const struct fetch_src *s) { return s->read_fd; }

const char *fetch_src_body(const struct fetch_src *s, size_t *len) {
  *len = s->body.len;
  return s->body.data ? s->body.data : "";
}

const char *fetch_src_media_type(const struct fetch_src *s) { return s->media_type; }

int fetch_src_upstream_status(const struct fetch_src *s) { return s->upstream_status; }

int fetch_src_via_peer(const struct fetch_src *s) { return s->via_peer; }

const char *fetch_src_label(const struct fetch_src *s) { return s->upstream_host; }

unsigned fetcher_active(const struct fetcher *f) { return f->active; }

int fetcher_new(struct fetcher **out, uv_loop_t *loop, struct blobstore *bs) {
  struct fetcher *f = calloc(1, sizeof *f);
  if (!f)
    return UV_ENOMEM;
  f->loop = loop;
  f->bs = bs;
  strmap_init(&f->srcs);
  metrics_describe("regmesh_inflight_downloads", METRIC_GAUGE,
                   "Downloads from upstream in progress.");
  metrics_describe("regmesh_fetch_failures_total", METRIC_COUNTER,
                   "Downloads that failed (upstream error, digest mismatch, ...).");
  metrics_describe("regmesh_upstream_fill_bytes_total", METRIC_COUNTER,
                   "Blob bytes written to the cache from upstream.");
  metrics_describe("regmesh_peer_bytes_total", METRIC_COUNTER,
                   "Blob bytes written to the cache from peers.");
  metrics_describe("regmesh_fetch_fallbacks_total", METRIC_COUNTER,
                   "Downloads moved to their next source after one failed.");
  metrics_describe("regmesh_holder_redirects_total", METRIC_COUNTER,
                   "Downloads a busy peer sent to other holders of the blob.");
  set_inflight_gauge(f);
  *out = f;
  return 0;
}

void fetcher_free(struct fetcher *f) {
  if (!f)
    return;
  /* The node frees the upstream client first: its requests end with
   * on_done(UV_ECANCELED), which takes every source out of the table. */
  if (f->srcs.count)
    LOG_W("fetcher freed with %zu downloads still listed", f->srcs.count);
  strmap_free(&f->srcs);
  free(f);
}
