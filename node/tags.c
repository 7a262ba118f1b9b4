/* tags.c - tag resolution: memory cache over the tag store, one upstream
 * HEAD per tag at a time.
 *
 * An entry per (upstream, name, tag, variant) holds the last record and the
 * list of requests waiting for a resolution in progress. Records carry the
 * wall-clock time they were fetched, so the TTL means the same after a
 * restart. The memory cache is bounded: past TAGCACHE_MAX entries, idle
 * ones are dropped (the store still has them).
 *
 * A build waits on tags, so an upstream that is slow to answer must not make
 * it wait long: a tag with a cached record whose HEAD has no answer within
 * the upstream's resolve_timeout is served stale, and the HEAD goes on to
 * refresh the record when it lands. Entries with such a deadline sit on a
 * short list that one timer walks.
 */
#include "tags.h"

#include "metrics.h"
#include "peerauth.h"
#include "upstream.h"

#include "../common/digest.h"
#include "../common/errors.h"
#include "../common/log.h"
#include "../common/strmap.h"
#include "../config/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#define TAGCACHE_MAX 8192
#define DEADLINE_TICK_MS 100

struct tagcache {
  uv_loop_t *loop;
  struct blobstore *bs;
  struct strmap entries; /* key -> struct tag_entry */
  uv_timer_t tick;       /* runs while `due` is not empty */
  int tick_init;
  struct tag_entry *due; /* HEADs in flight with a stale record to fall back on */
};

struct tag_entry {
  struct tagcache *tc;
  char *key; /* owned */
  char upstream_host[128];
  char name[300];
  char tag[200]; /* tag[@variant]: the store's file name */
  char reftag[130];
  int has_rec;
  struct tag_record rec;
  struct upstream_req *ureq; /* resolution in progress */
  struct tag_waiter *waiters;
  /* asking the owner first: the upstream comes next if that fails */
  int via_peer;
  struct upstream *up;   /* the upstream, for the fallback */
  char accept[700];
  struct tag_peer peer;
  char reply[80];
  char tag_time[32];
  /* collected from the upstream answer */
  int status;
  struct tag_record fresh;
  int fresh_ok;
  /* resolve_timeout: on tc->due until the HEAD ends or the deadline passes;
   * `late` once it passed, so waiters that come later are served at once */
  uint64_t deadline_ms;
  struct tag_entry *due_next, **due_pprev;
  int late;
};

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int tagcache_new(struct tagcache **out, uv_loop_t *loop, struct blobstore *bs) {
  struct tagcache *tc = calloc(1, sizeof *tc);
  if (!tc)
    return UV_ENOMEM;
  tc->loop = loop;
  tc->bs = bs;
  if (uv_timer_init(loop, &tc->tick) == 0) {
    tc->tick.data = tc;
    tc->tick_init = 1;
  }
  strmap_init(&tc->entries);
  metrics_describe("regmesh_tag_resolutions_total", METRIC_COUNTER,
                   "Tag lookups by outcome (fresh, upstream, stale, error).");
  metrics_describe("regmesh_tag_peer_answers_total", METRIC_COUNTER,
                   "Tags asked of their owner in the fleet, by result.");
  metrics_describe("regmesh_tag_resolve_timeouts_total", METRIC_COUNTER,
                   "Tag resolutions answered stale because the upstream had "
                   "not answered within resolve_timeout.");
  metrics_set("regmesh_tag_resolve_timeouts_total", "", 0);
  *out = tc;
  return 0;
}

static void entry_free(struct tag_entry *e) {
  free(e->key);
  free(e);
}

static void free_one(const char *key, void *value, void *ud) {
  (void)key;
  (void)ud;
  entry_free(value);
}

void tagcache_close(struct tagcache *tc) {
  if (tc && tc->tick_init) {
    tc->tick_init = 0;
    uv_close((uv_handle_t *)&tc->tick, NULL);
  }
}

void tagcache_free(struct tagcache *tc) {
  if (!tc)
    return;
  strmap_each(&tc->entries, free_one, NULL);
  strmap_free(&tc->entries);
  free(tc);
}

struct forget {
  char prefix[700];
  size_t len;
};

static void forget_one(const char *key, void *value, void *ud) {
  struct tag_entry *e = value;
  struct forget *f = ud;
  /* keys are host|name|tag@variant: every variant of the tag */
  if (strncmp(key, f->prefix, f->len) == 0 && !e->ureq)
    e->has_rec = 0;
}

void tagcache_forget(struct tagcache *tc, const char *host, const char *name,
                     const char *tag) {
  struct forget f;
  int n = snprintf(f.prefix, sizeof f.prefix, "%s|%s|%s@", host, name, tag);
  if (n < 0 || (size_t)n >= sizeof f.prefix)
    return;
  f.len = (size_t)n;
  strmap_each(&tc->entries, forget_one, &f);
}

struct idle_scan {
  char *keys[64];
  int n;
};

static void collect_idle(const char *key, void *value, void *ud) {
  struct tag_entry *e = value;
  struct idle_scan *sc = ud;
  (void)key;
  if (!e->ureq && !e->waiters && sc->n < 64)
    sc->keys[sc->n++] = e->key;
}

/* Keeps the memory cache bounded; entries are cheap to reload from disk. */
static void trim(struct tagcache *tc) {
  if (tc->entries.count < TAGCACHE_MAX)
    return;
  struct idle_scan sc = {.n = 0};
  strmap_each(&tc->entries, collect_idle, &sc);
  for (int i = 0; i < sc.n; i++) {
    struct tag_entry *e = strmap_del(&tc->entries, sc.keys[i]);
    if (e)
      entry_free(e);
  }
}

static void finish_waiters(struct tag_entry *e, int err) {
  struct tag_waiter *w = e->waiters;
  e->waiters = NULL;
  int stale = 0;
  const char *outcome = "upstream";
  if (err) {
    /* A 404 is an answer; anything else is a failure to ask. */
    if (e->has_rec && err != RM_ENOTFOUND) {
      stale = 1;
      outcome = "stale";
      if (err == UV_ETIMEDOUT)
        LOG_W("tag %s/%s:%s served stale: no answer within resolve_timeout "
              "(the request goes on)", e->upstream_host, e->name, e->reftag);
      else
        LOG_W("tag %s/%s:%s served stale: upstream failed (status %d)",
              e->upstream_host, e->name, e->reftag, e->status);
      err = 0;
    } else {
      outcome = "error";
    }
  }
  char labels[64];
  snprintf(labels, sizeof labels, "outcome=\"%s\"", outcome);
  while (w) {
    struct tag_waiter *next = w->next;
    w->entry = NULL;
    w->next = NULL;
    metrics_add("regmesh_tag_resolutions_total", labels, 1);
    w->cb(w, err, err ? NULL : &e->rec, stale, e->status);
    w = next;
  }
}

/* ---- resolve_timeout ---- */

static void due_remove(struct tag_entry *e) {
  if (!e->due_pprev)
    return;
  *e->due_pprev = e->due_next;
  if (e->due_next)
    e->due_next->due_pprev = e->due_pprev;
  e->due_next = NULL;
  e->due_pprev = NULL;
  if (!e->tc->due && e->tc->tick_init)
    uv_timer_stop(&e->tc->tick);
}

static void on_tick(uv_timer_t *t) {
  struct tagcache *tc = t->data;
  uint64_t now = uv_now(tc->loop);
  struct tag_entry *e = tc->due;
  while (e) {
    struct tag_entry *next = e->due_next;
    if (now >= e->deadline_ms) {
      due_remove(e);
      e->late = 1;
      if (e->waiters && e->has_rec) {
        metrics_add("regmesh_tag_resolve_timeouts_total", "", 1);
        finish_waiters(e, UV_ETIMEDOUT);
      }
    }
    e = next;
  }
}

static void due_add(struct tag_entry *e, uint64_t deadline_ms) {
  struct tagcache *tc = e->tc;
  if (!tc->tick_init)
    return;
  e->deadline_ms = deadline_ms;
  if (e->due_pprev)
    return;
  e->due_next = tc->due;
  if (tc->due)
    tc->due->due_pprev = &e->due_next;
  tc->due = e;
  e->due_pprev = &tc->due;
  if (!uv_is_active((uv_handle_t *)&tc->tick))
    uv_timer_start(&tc->tick, on_tick, DEADLINE_TICK_MS, DEADLINE_TICK_MS);
}

static int on_head_headers(void *ud, const struct upstream_response *resp) {
  struct tag_entry *e = ud;
  e->status = resp->status;
  e->fresh_ok = 0;
  if (resp->status != 200)
    return 0;
  if (!resp->digest || strncmp(resp->digest, "sha256:", 7) != 0 ||
      !digest_hex_valid(resp->digest + 7)) {
    LOG_W("upstream %s sent no usable Docker-Content-Digest for %s:%s",
          e->upstream_host, e->name, e->reftag);
    return 0;
  }
  if (resp->content_length <= 0)
    return 0;
  if (e->via_peer) {
    snprintf(e->reply, sizeof e->reply, "%s",
             resp->regmesh_auth_reply ? resp->regmesh_auth_reply : "");
    snprintf(e->tag_time, sizeof e->tag_time, "%s",
             resp->regmesh_tag_time ? resp->regmesh_tag_time : "");
  }
  memset(&e->fresh, 0, sizeof e->fresh);
  snprintf(e->fresh.hex, sizeof e->fresh.hex, "%s", resp->digest + 7);
  snprintf(e->fresh.media_type, sizeof e->fresh.media_type, "%s",
           resp->content_type ? resp->content_type
                              : "application/vnd.docker.distribution.manifest.v2+json");
  e->fresh.size = (uint64_t)resp->content_length;
  e->fresh.fetched_at_ms = wall_ms();
  e->fresh_ok = 1;
  return 0;
}

static int on_head_data(void *ud, const char *p, size_t n) {
  (void)ud;
  (void)p;
  (void)n;
  return 0;
}

static int start_head(struct tag_entry *e, struct upstream *u, const struct tag_peer *peer);

/* The owner's answer stands only with its signature; the record then keeps
 * the owner's fetch time, so the fleet's TTL runs from one upstream HEAD. */
static int peer_answer_ok(struct tag_entry *e) {
  if (e->status != 200 || !e->fresh_ok)
    return 0;
  char *end;
  long long t = strtoll(e->tag_time, &end, 10);
  if (end == e->tag_time || *end || t <= 0)
    return 0;
  e->fresh.fetched_at_ms = t;
  char payload[400];
  tag_reply_payload(payload, sizeof payload, &e->fresh);
  if (peerauth_reply_check(e->peer.auth, e->peer.sig, payload, e->reply) != 0) {
    LOG_W("tag %s/%s:%s: owner's answer is not signed right; asking upstream",
          e->upstream_host, e->name, e->reftag);
    return 0;
  }
  return 1;
}

static void on_head_done(void *ud, int err) {
  struct tag_entry *e = ud;
  e->ureq = NULL;
  if (e->via_peer) {
    e->via_peer = 0;
    if (!err && peer_answer_ok(e)) {
      metrics_add("regmesh_tag_peer_answers_total", "result=\"ok\"", 1);
    } else {
      metrics_add("regmesh_tag_peer_answers_total", "result=\"failed\"", 1);
      if (start_head(e, e->up, NULL) == 0)
        return;
      err = RM_EUNREACH;
    }
  }
  if (!err) {
    if (e->status == 200 && e->fresh_ok) {
      e->rec = e->fresh;
      e->has_rec = 1;
      int r = tagstore_put(e->tc->bs, e->upstream_host, e->name, e->tag, &e->rec);
      if (r)
        LOG_W("saving tag %s/%s:%s: %s", e->upstream_host, e->name, e->tag, rm_strerror(r));
    } else if (e->status == 404) {
      err = RM_ENOTFOUND;
    } else if (e->status == 429) {
      err = RM_ERATELIMIT;
    } else {
      err = RM_EUPSTREAM;
    }
  } else {
    e->status = 0;
  }
  due_remove(e); /* kept above while the upstream is asked after the owner */
  e->late = 0;
  finish_waiters(e, err);
}

static const struct upstream_cbs head_cbs = {
    .on_headers = on_head_headers,
    .on_data = on_head_data,
    .on_done = on_head_done,
};

static struct tag_entry *entry_get(struct tagcache *tc, const char *host,
                                   const char *name, const char *tag,
                                   const char *variant) {
  char key[700];
  int n = snprintf(key, sizeof key, "%s|%s|%s@%s", host, name, tag, variant);
  if (n < 0 || (size_t)n >= sizeof key)
    return NULL;
  struct tag_entry *e = strmap_get(&tc->entries, key);
  if (e)
    return e;
  trim(tc);
  e = calloc(1, sizeof *e);
  if (!e)
    return NULL;
  e->tc = tc;
  e->key = strdup(key);
  snprintf(e->upstream_host, sizeof e->upstream_host, "%s", host);
  snprintf(e->name, sizeof e->name, "%s", name);
  snprintf(e->reftag, sizeof e->reftag, "%s", tag);
  /* '@' is outside the tag grammar, so a variant never names another tag. */
  snprintf(e->tag, sizeof e->tag, "%s%s%s", tag, variant[0] ? "@" : "", variant);
  if (!e->key || strmap_put(&tc->entries, key, e) != 0) {
    entry_free(e);
    return NULL;
  }
  if (tagstore_get(tc->bs, host, name, e->tag, &e->rec) == 0)
    e->has_rec = 1;
  return e;
}

/* One HEAD for the entry: to the owner peer when given, else upstream. */
static int start_head(struct tag_entry *e, struct upstream *u, const struct tag_peer *peer) {
  char path[800];
  snprintf(path, sizeof path, "/v2/%s/manifests/%s%s", e->name, e->reftag,
           peer ? peer->query : "");
  struct upstream_fetch_opts o = {
      .method = UPSTREAM_HEAD,
      .path = path,
      .repo = e->name,
      .accept = e->accept[0] ? e->accept : NULL,
      .kind = "tag",
      .extra_headers = peer ? peer->headers : NULL,
  };
  e->status = 0;
  e->via_peer = peer != NULL;
  if (peer)
    e->peer = *peer;
  e->reply[0] = e->tag_time[0] = '\0';
  return upstream_fetch(peer ? peer->u : u, &o, &head_cbs, e, &e->ureq);
}

int tag_owner_key(char *out, size_t len, const char *host, const char *name,
                  const char *tag) {
  int n = snprintf(out, len, "tag:%s/%s:%s", host, name, tag);
  return n > 0 && (size_t)n < len ? 0 : UV_ENOBUFS;
}

void tag_reply_payload(char *out, size_t len, const struct tag_record *rec) {
  snprintf(out, len, "%s\n%llu\n%s\n%lld", rec->hex, (unsigned long long)rec->size,
           rec->media_type, (long long)rec->fetched_at_ms);
}

int tagcache_resolve(struct tagcache *tc, struct upstream *u, const char *name,
                     const char *tag, const char *variant, const char *accept,
                     const struct tag_peer *peer, struct tag_waiter *w,
                     struct tag_record *rec) {
  const struct config_upstream *cfg = upstream_config(u);
  struct tag_entry *e = entry_get(tc, cfg->host, name, tag, variant);
  if (!e)
    return UV_ENOMEM;
  int64_t now = wall_ms();
  if (e->has_rec && now >= e->rec.fetched_at_ms &&
      (uint64_t)(now - e->rec.fetched_at_ms) < cfg->tag_ttl_ms) {
    *rec = e->rec;
    metrics_add("regmesh_tag_resolutions_total", "outcome=\"fresh\"", 1);
    return 1;
  }
  if (!e->ureq) {
    e->up = u;
    snprintf(e->accept, sizeof e->accept, "%s", accept ? accept : "");
    int r = start_head(e, u, peer);
    if (r)
      return r;
    if (e->has_rec)
      due_add(e, uv_now(tc->loop) + cfg->resolve_timeout_ms);
  } else if (e->late && e->has_rec) {
    due_add(e, uv_now(tc->loop)); /* past the deadline: at the next tick */
  }
  w->entry = e;
  w->next = e->waiters;
  e->waiters = w;
  return 0;
}

void tagcache_cancel(struct tag_waiter *w) {
  struct tag_entry *e = w->entry;
  if (!e)
    return;
  for (struct tag_waiter **pp = &e->waiters; *pp; pp = &(*pp)->next) {
    if (*pp == w) {
      *pp = w->next;
      break;
    }
  }
  w->entry = NULL;
  w->next = NULL;
  /* The HEAD goes on: its answer refreshes the cache for the next request. */
}
