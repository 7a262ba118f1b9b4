/* tags.h - tag -> digest resolution with a TTL cache and single flight.
 *
 * A tag resolves with an upstream HEAD (free on Docker Hub), cached for the
 * upstream's tag_ttl in memory and in the store (so a restarted node still
 * serves tags while the upstream is down). Concurrent resolutions of one tag
 * share one HEAD. When the upstream fails or answers 429, or has not answered
 * within its resolve_timeout, a cached record is served stale; only a 404 is
 * taken as the answer.
 */
#ifndef REGMESH_NODE_TAGS_H
#define REGMESH_NODE_TAGS_H

#include "../storage/storage.h"

#include <stddef.h>
#include <stdint.h>

struct tagcache;
struct tag_entry;
struct upstream;
struct peerauth;

/* In a fleet with a secret, a tag is resolved by its owner: the request
 * goes there first (signed), and its answer counts only with a valid reply
 * signature; otherwise (or when the owner fails) the upstream is asked. */
struct tag_peer {
  struct upstream *u;             /* the owner's HTTP client */
  const struct peerauth *auth;
  char query[160];                /* "?ns=<upstream host>" */
  char headers[600];              /* hop and signature headers */
  char sig[65];                   /* the request's signature */
};

/* tag_owner_key: the ring key of a tag: "tag:<upstream>/<name>:<tag>". */
int tag_owner_key(char *out, size_t len, const char *host, const char *name,
                  const char *tag);
/* tag_reply_payload: what an owner's reply signature covers. */
void tag_reply_payload(char *out, size_t len, const struct tag_record *rec);

struct tag_waiter {
  /* err 0: rec is valid (stale = 1 when served past its TTL because the
   * upstream failed). Otherwise err and the upstream's status (0 if none). */
  void (*cb)(struct tag_waiter *w, int err, const struct tag_record *rec,
             int stale, int upstream_status);
  /* owned by the cache while waiting */
  struct tag_entry *entry;
  struct tag_waiter *next;
};

struct uv_loop_s;
int tagcache_new(struct tagcache **out, struct uv_loop_s *loop, struct blobstore *bs);
/* tagcache_close closes the cache's timer (before the loop's last run). */
void tagcache_close(struct tagcache *tc);
void tagcache_free(struct tagcache *tc);

/* tagcache_resolve looks up (upstream u, name, tag) for clients accepting
 * `accept` (the Accept sent upstream; `variant` distinguishes caches for
 * different Accept sets, "" for the usual all-types one).
 * Returns 1 with *rec filled when a fresh record exists (no callback), 0 when
 * w->cb will be called later (never from within this call), or a negative
 * error (no callback). */
int tagcache_resolve(struct tagcache *tc, struct upstream *u, const char *name,
                     const char *tag, const char *variant, const char *accept,
                     const struct tag_peer *peer, struct tag_waiter *w,
                     struct tag_record *rec);
/* tagcache_forget drops what memory holds of every variant of a tag whose
 * record `cache rm` removed, so the next pull asks again. */
void tagcache_forget(struct tagcache *tc, const char *host, const char *name,
                     const char *tag);
/* tagcache_cancel detaches a waiting w; its callback is not called. */
void tagcache_cancel(struct tag_waiter *w);

#endif
