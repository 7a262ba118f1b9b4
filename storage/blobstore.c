/* blobstore.c - the index of committed blobs, LRU eviction and pinning.
 *
 * The disk is the truth: at open we scan blobs/sha256/ and rebuild an
 * in-memory index (a chained hash table keyed by hex, plus an intrusive
 * doubly linked list in last-access order, oldest at the head). Last access
 * survives restarts as the file's mtime, refreshed at most once a minute per
 * blob so a hot blob does not cost a metadata write per hit.
 *
 * One mutex guards the index, and every change to the blobs/ namespace
 * (rename into place, eviction) happens under it, so "indexed" and "on disk"
 * never disagree between threads. The slow parts stay outside the lock: data
 * and directory fsyncs, and freeing an evicted file's blocks - an evicted
 * blob is renamed into tmp/ under the lock (cheap) and unlinked after it.
 * A crash in between leaves it in tmp/, which open empties.
 */
#include "storage_internal.h"

#include "digest.h"
#include "errors.h"
#include "log.h"
#include "strmap.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

/* Refresh a blob's mtime on access at most this often (seconds). */
#define TOUCH_INTERVAL_S 60
#define TABLE_MIN_BUCKETS 64

/* One committed blob. Owned by the table while indexed; by a local doomed
 * list between its removal and the unlink of its file. */
struct blob_entry {
  char hex[DIGEST_HEX_LEN + 1];
  char *media_type; /* owned; NULL when the blob has no .meta */
  uint64_t size;
  int64_t touched_s; /* mtime we last put on disk; throttles utimensat */
  uint32_t pins;     /* open readers; a pinned blob is never evicted */
  int evicted;       /* while doomed: evicted (logged) or removed */
  uint64_t doom_seq; /* while doomed: its name in tmp/, 0 = nothing left */
  struct blob_entry *hnext;
  struct blob_entry *prev; /* toward the LRU head (older) */
  struct blob_entry *next; /* toward the MRU tail; links the doomed list */
};

/* The store. Owned by the caller of blobstore_open. Fields below `mu` are
 * guarded by it. */
struct blobstore {
  char *root; /* owned, no trailing slash */
  uint64_t max_size; /* atomic: a reload may change it (budget()) */
  uint64_t seq; /* temp-name counter, atomic */
  pthread_mutex_t mu;
  struct blob_entry **buckets; /* owned */
  size_t nbuckets;             /* a power of two */
  size_t count;
  struct blob_entry *lru_head, *lru_tail;
  uint64_t bytes;    /* committed */
  uint64_t reserved; /* announced by writers still in tmp/ */
  uint64_t evictions, evicted_bytes;
  /* digests named by pins ("cache pin"): hex -> how many pins name it, as
   * a pointer-sized count; eviction skips them */
  struct strmap kept;
  uint64_t kept_bytes; /* committed bytes of kept blobs, for stats */
  pthread_mutex_t pin_mu; /* serialises pin file changes (pins.c) */
  int lock_fd; /* <root>/lock, flock'ed for the store's life; -1 if none */
};

static int64_t now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec;
}

const char *storage__root(const struct blobstore *bs) {
  return bs->root;
}

const char *blobstore_root(const struct blobstore *bs) {
  return bs->root;
}

uint64_t storage__next_seq(struct blobstore *bs) {
  return __atomic_add_fetch(&bs->seq, 1, __ATOMIC_RELAXED);
}

/* blob_path builds <root>/blobs/sha256/<2>/<hex><suffix>. The root's length
 * is bounded at open, so this only fails on a programming error. */
static int blob_path(const struct blobstore *bs, const char *hex, const char *suffix,
                     char *buf, size_t size) {
  int n = snprintf(buf, size, "%s/blobs/sha256/%.2s/%s%s", bs->root, hex, hex, suffix);
  return (n < 0 || (size_t)n >= size) ? UV_ENAMETOOLONG : 0;
}

static int prefix_dir(const struct blobstore *bs, const char *hex, char *buf,
                      size_t size) {
  int n = snprintf(buf, size, "%s/blobs/sha256/%.2s", bs->root, hex);
  return (n < 0 || (size_t)n >= size) ? UV_ENAMETOOLONG : 0;
}

static int doom_path(const struct blobstore *bs, const struct blob_entry *e, char *buf,
                     size_t size) {
  int n = snprintf(buf, size, "%s/tmp/%s.evict.%ld.%llu", bs->root, e->hex,
                   (long)getpid(), (unsigned long long)e->doom_seq);
  return (n < 0 || (size_t)n >= size) ? UV_ENAMETOOLONG : 0;
}

/* --- hash table ---------------------------------------------------------- */

/* FNV-1a over the hex. Keys are digests of verified content, so they are
 * uniform already; this just folds all 64 characters in. */
static size_t hash_hex(const char *hex) {
  uint64_t h = 1469598103934665603ULL;
  for (int i = 0; i < DIGEST_HEX_LEN; i++) {
    h ^= (unsigned char)hex[i];
    h *= 1099511628211ULL;
  }
  return (size_t)h;
}

static struct blob_entry *table_find(struct blobstore *bs, const char *hex) {
  struct blob_entry *e = bs->buckets[hash_hex(hex) & (bs->nbuckets - 1)];
  while (e && memcmp(e->hex, hex, DIGEST_HEX_LEN) != 0)
    e = e->hnext;
  return e;
}

/* table_grow doubles the buckets. Failing to allocate only makes chains
 * longer, so an insert never fails. */
static void table_grow(struct blobstore *bs) {
  size_t n = bs->nbuckets * 2;
  struct blob_entry **b = calloc(n, sizeof *b);
  if (!b)
    return;
  for (size_t i = 0; i < bs->nbuckets; i++) {
    struct blob_entry *e = bs->buckets[i];
    while (e) {
      struct blob_entry *next = e->hnext;
      size_t j = hash_hex(e->hex) & (n - 1);
      e->hnext = b[j];
      b[j] = e;
      e = next;
    }
  }
  free(bs->buckets);
  bs->buckets = b;
  bs->nbuckets = n;
}

static void table_insert(struct blobstore *bs, struct blob_entry *e) {
  if (bs->count >= bs->nbuckets)
    table_grow(bs);
  size_t i = hash_hex(e->hex) & (bs->nbuckets - 1);
  e->hnext = bs->buckets[i];
  bs->buckets[i] = e;
  bs->count++;
}

static void table_remove(struct blobstore *bs, struct blob_entry *e) {
  struct blob_entry **pp = &bs->buckets[hash_hex(e->hex) & (bs->nbuckets - 1)];
  while (*pp && *pp != e)
    pp = &(*pp)->hnext;
  if (*pp) {
    *pp = e->hnext;
    bs->count--;
  }
  e->hnext = NULL;
}

/* --- LRU list ------------------------------------------------------------ */

static void lru_unlink(struct blobstore *bs, struct blob_entry *e) {
  if (e->prev)
    e->prev->next = e->next;
  else
    bs->lru_head = e->next;
  if (e->next)
    e->next->prev = e->prev;
  else
    bs->lru_tail = e->prev;
  e->prev = e->next = NULL;
}

static void lru_push_mru(struct blobstore *bs, struct blob_entry *e) {
  e->prev = bs->lru_tail;
  e->next = NULL;
  if (bs->lru_tail)
    bs->lru_tail->next = e;
  else
    bs->lru_head = e;
  bs->lru_tail = e;
}

/* --- eviction ------------------------------------------------------------ */

static void entry_free(struct blob_entry *e) {
  free(e->media_type);
  free(e);
}

static int kept_locked(const struct blobstore *bs, const char *hex) {
  return strmap_get(&bs->kept, hex) != NULL;
}

/* doom_locked takes e out of the index and out of blobs/: its file is
 * renamed into tmp/ (unlinked later by finish_doomed, outside the lock) and
 * its .meta removed. e joins *doomed. */
static void doom_locked(struct blobstore *bs, struct blob_entry *e, int evicted,
                        struct blob_entry **doomed) {
  char path[PATH_MAX], tmp[PATH_MAX];
  table_remove(bs, e);
  lru_unlink(bs, e);
  bs->bytes -= e->size;
  if (kept_locked(bs, e->hex))
    bs->kept_bytes -= e->size;
  if (evicted) {
    bs->evictions++;
    bs->evicted_bytes += e->size;
  }
  e->evicted = evicted;
  e->doom_seq = storage__next_seq(bs);
  if (blob_path(bs, e->hex, "", path, sizeof path) == 0) {
    if (doom_path(bs, e, tmp, sizeof tmp) != 0 || rename(path, tmp) != 0) {
      /* Already gone, or tmp/ unusable: delete in place, under the lock,
       * so a concurrent commit of the same digest cannot lose its file. */
      e->doom_seq = 0;
      if (unlink(path) != 0 && errno != ENOENT)
        LOG_W("storage: cannot remove blob %s: %s", e->hex, strerror(errno));
    }
  }
  if (blob_path(bs, e->hex, ".meta", path, sizeof path) == 0)
    if (unlink(path) != 0 && errno != ENOENT)
      LOG_W("storage: cannot remove %s.meta: %s", e->hex, strerror(errno));
  e->next = *doomed;
  *doomed = e;
}

static uint64_t budget(const struct blobstore *bs) {
  return __atomic_load_n(&bs->max_size, __ATOMIC_RELAXED);
}

static int over_budget(const struct blobstore *bs) {
  uint64_t max = budget(bs);
  return max && bs->bytes + bs->reserved > max;
}

/* evict_locked drops least recently used, unpinned blobs other than `keep`
 * until committed bytes plus bytes announced by open writers fit max_size,
 * or nothing evictable is left (pinned blobs wait for their unpin). */
static void evict_locked(struct blobstore *bs, const struct blob_entry *keep,
                         struct blob_entry **doomed) {
  struct blob_entry *e = bs->lru_head;
  while (e && over_budget(bs)) {
    struct blob_entry *next = e->next;
    if (e->pins == 0 && e != keep && !kept_locked(bs, e->hex))
      doom_locked(bs, e, 1, doomed);
    e = next;
  }
}

/* finish_doomed does the slow half of an eviction without the lock: unlink
 * the renamed file (freeing its blocks), log, free the entries. */
static void finish_doomed(struct blobstore *bs, struct blob_entry *doomed) {
  char tmp[PATH_MAX];
  while (doomed) {
    struct blob_entry *e = doomed;
    doomed = e->next;
    if (e->doom_seq && doom_path(bs, e, tmp, sizeof tmp) == 0 && unlink(tmp) != 0 &&
        errno != ENOENT)
      LOG_W("storage: cannot unlink %s: %s", tmp, strerror(errno));
    if (e->evicted)
      LOG_I("storage: evicted %s (%llu bytes)", e->hex, (unsigned long long)e->size);
    else
      LOG_D("storage: removed %s", e->hex);
    entry_free(e);
  }
}

/* --- access -------------------------------------------------------------- */

/* access_locked makes e the most recently used and says whether its mtime
 * is stale enough to refresh on disk (done by the caller, unlocked). */
static int access_locked(struct blobstore *bs, struct blob_entry *e) {
  lru_unlink(bs, e);
  lru_push_mru(bs, e);
  int64_t now = now_s();
  /* A clock that went backwards also refreshes, or the blob would keep a
   * future mtime and look hot forever after a restart. */
  if (now - e->touched_s >= TOUCH_INTERVAL_S || now < e->touched_s) {
    e->touched_s = now;
    return 1;
  }
  return 0;
}

static void touch_file(struct blobstore *bs, const char *hex) {
  char path[PATH_MAX];
  if (blob_path(bs, hex, "", path, sizeof path) != 0)
    return;
  /* ENOENT: evicted meanwhile, nothing to keep warm. Other errors only
   * cost LRU precision across a restart. */
  if (utimensat(AT_FDCWD, path, NULL, AT_SYMLINK_NOFOLLOW) != 0 && errno != ENOENT)
    LOG_D("storage: utimensat %s: %s", hex, strerror(errno));
}

static void fill_info(const struct blob_entry *e, struct blob_info *info) {
  if (!info)
    return;
  info->size = e->size;
  info->media_type[0] = '\0';
  if (e->media_type)
    snprintf(info->media_type, sizeof info->media_type, "%s", e->media_type);
}

int blobstore_stat(struct blobstore *bs, const char *hex, struct blob_info *info) {
  if (!digest_hex_valid(hex))
    return RM_ENOTFOUND;
  pthread_mutex_lock(&bs->mu);
  struct blob_entry *e = table_find(bs, hex);
  if (!e) {
    pthread_mutex_unlock(&bs->mu);
    return RM_ENOTFOUND;
  }
  int touch = access_locked(bs, e);
  fill_info(e, info);
  pthread_mutex_unlock(&bs->mu);
  if (touch)
    touch_file(bs, hex);
  return 0;
}

int blobstore_peek(struct blobstore *bs, const char *hex, struct blob_info *info) {
  if (!digest_hex_valid(hex))
    return RM_ENOTFOUND;
  pthread_mutex_lock(&bs->mu);
  struct blob_entry *e = table_find(bs, hex);
  if (e)
    fill_info(e, info);
  pthread_mutex_unlock(&bs->mu);
  return e ? 0 : RM_ENOTFOUND;
}

int blobstore_read_small(struct blobstore *bs, const char *hex, size_t max, char **out,
                         size_t *len) {
  char path[PATH_MAX];
  struct blob_info info;
  int r = blobstore_peek(bs, hex, &info);
  if (r)
    return r;
  if (info.size > max)
    return RM_ETOOBIG;
  if ((r = blob_path(bs, hex, "", path, sizeof path)) != 0)
    return r;
  /* no pin: evicted meanwhile is ENOENT; the name is the content's hash, so
   * whatever file is there holds the bytes the caller asked for */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0)
    return errno == ENOENT ? RM_ENOTFOUND : -errno;
  char *buf = malloc(info.size + 2);
  size_t got = 0;
  r = buf ? storage__read_upto(fd, buf, info.size + 1, &got) : UV_ENOMEM;
  close(fd);
  if (!r && got != info.size)
    r = RM_ENOTFOUND; /* changed on disk: not the indexed blob */
  if (r) {
    free(buf);
    return r;
  }
  buf[got] = '\0';
  *out = buf;
  *len = got;
  return 0;
}

/* unpin_locked drops one pin; the last one may let a pending eviction
 * through, since commits skipped this blob while it was read. */
static void unpin_locked(struct blobstore *bs, struct blob_entry *e,
                         struct blob_entry **doomed) {
  if (--e->pins == 0)
    evict_locked(bs, NULL, doomed);
}

int blobstore_open_read(struct blobstore *bs, const char *hex, int *fd,
                        struct blob_info *info) {
  char path[PATH_MAX];
  struct blob_entry *doomed = NULL;
  if (!digest_hex_valid(hex))
    return RM_ENOTFOUND;
  pthread_mutex_lock(&bs->mu);
  struct blob_entry *e = table_find(bs, hex);
  if (!e) {
    pthread_mutex_unlock(&bs->mu);
    return RM_ENOTFOUND;
  }
  e->pins++; /* from here on e cannot be freed by another thread */
  int touch = access_locked(bs, e);
  uint64_t size = e->size;
  fill_info(e, info);
  pthread_mutex_unlock(&bs->mu);

  int r = blob_path(bs, hex, "", path, sizeof path);
  int f = -1;
  const char *why = NULL;
  if (r == 0) {
    /* O_NONBLOCK so a FIFO planted in the store cannot hang us. */
    f = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (f < 0)
      r = -errno;
  }
  if (f >= 0) {
    struct stat st;
    if (fstat(f, &st) != 0)
      r = -errno;
    else if (!S_ISREG(st.st_mode))
      r = RM_ENOTFOUND, why = "not a regular file";
    else if ((uint64_t)st.st_size != size)
      r = RM_ENOTFOUND, why = "size changed on disk";
    else if (fcntl(f, F_SETFL, fcntl(f, F_GETFL) & ~O_NONBLOCK) != 0)
      r = -errno;
    if (r) {
      close(f);
      f = -1;
    }
  } else if (r == UV_ENOENT || r == UV_ENOTDIR || r == UV_ELOOP) {
    why = "missing on disk";
    r = RM_ENOTFOUND;
  }
  if (r) {
    pthread_mutex_lock(&bs->mu);
    /* The index lied (the store was changed behind our back): drop the
     * entry so the blob is fetched again instead of failing every time. */
    if (why && e->pins == 1)
      doom_locked(bs, e, 0, &doomed);
    else
      unpin_locked(bs, e, &doomed);
    pthread_mutex_unlock(&bs->mu);
    if (why)
      LOG_W("storage: dropping %s from the index: %s", hex, why);
    finish_doomed(bs, doomed);
    return r;
  }
  if (touch)
    touch_file(bs, hex);
  *fd = f;
  return 0;
}

void blobstore_unpin(struct blobstore *bs, const char *hex) {
  struct blob_entry *doomed = NULL;
  if (!digest_hex_valid(hex))
    return;
  pthread_mutex_lock(&bs->mu);
  struct blob_entry *e = table_find(bs, hex);
  int bad = !e || e->pins == 0;
  if (!bad)
    unpin_locked(bs, e, &doomed);
  pthread_mutex_unlock(&bs->mu);
  if (bad)
    LOG_W("storage: unpin of %s, which is not pinned", hex);
  finish_doomed(bs, doomed);
}

int blobstore_remove(struct blobstore *bs, const char *hex) {
  struct blob_entry *doomed = NULL;
  if (!digest_hex_valid(hex))
    return RM_ENOTFOUND;
  pthread_mutex_lock(&bs->mu);
  struct blob_entry *e = table_find(bs, hex);
  int r = 0;
  if (!e)
    r = RM_ENOTFOUND;
  else if (e->pins)
    r = UV_EBUSY;
  else if (kept_locked(bs, hex))
    r = UV_EPERM;
  else
    doom_locked(bs, e, 0, &doomed);
  pthread_mutex_unlock(&bs->mu);
  finish_doomed(bs, doomed);
  return r;
}

void blobstore_get_stats(struct blobstore *bs, struct blobstore_stats *st) {
  pthread_mutex_lock(&bs->mu);
  st->bytes = bs->bytes;
  st->blobs = bs->count;
  st->evictions = bs->evictions;
  st->evicted_bytes = bs->evicted_bytes;
  st->max_size = budget(bs);
  st->kept_bytes = bs->kept_bytes;
  pthread_mutex_unlock(&bs->mu);
}

/* --- pins and the admin's view ------------------------------------------- */

void storage__keep_adjust(struct blobstore *bs, const char (*hex)[DIGEST_HEX_LEN + 1],
                          size_t n, int delta) {
  struct blob_entry *doomed = NULL;
  pthread_mutex_lock(&bs->mu);
  for (size_t i = 0; i < n; i++) {
    uintptr_t c = (uintptr_t)strmap_get(&bs->kept, hex[i]);
    uintptr_t nc = delta > 0 ? c + 1 : (c ? c - 1 : 0);
    if (nc == c)
      continue;
    struct blob_entry *e = table_find(bs, hex[i]);
    if (nc == 0) {
      strmap_del(&bs->kept, hex[i]);
      if (e)
        bs->kept_bytes -= e->size;
    } else if (strmap_put(&bs->kept, hex[i], (void *)nc) == 0) {
      if (c == 0 && e)
        bs->kept_bytes += e->size;
    }
  }
  /* unpinned blobs may now be what stands between the store and its budget */
  if (delta < 0)
    evict_locked(bs, NULL, &doomed);
  pthread_mutex_unlock(&bs->mu);
  finish_doomed(bs, doomed);
}

void storage__pin_lock(struct blobstore *bs) { pthread_mutex_lock(&bs->pin_mu); }
void storage__pin_unlock(struct blobstore *bs) { pthread_mutex_unlock(&bs->pin_mu); }

int blobstore_pinned(struct blobstore *bs, const char *hex) {
  pthread_mutex_lock(&bs->mu);
  int k = kept_locked(bs, hex);
  pthread_mutex_unlock(&bs->mu);
  return k;
}

int blobstore_list(struct blobstore *bs, struct blob_listing **out, size_t *n) {
  pthread_mutex_lock(&bs->mu);
  size_t cap = bs->count, i = 0;
  struct blob_listing *v = calloc(cap ? cap : 1, sizeof *v);
  if (!v) {
    pthread_mutex_unlock(&bs->mu);
    return UV_ENOMEM;
  }
  for (struct blob_entry *e = bs->lru_head; e && i < cap; e = e->next, i++) {
    memcpy(v[i].hex, e->hex, sizeof v[i].hex);
    v[i].size = e->size;
    v[i].last_use_s = e->touched_s;
    v[i].readers = e->pins;
    v[i].pinned = kept_locked(bs, e->hex);
    if (e->media_type)
      snprintf(v[i].media_type, sizeof v[i].media_type, "%s", e->media_type);
  }
  pthread_mutex_unlock(&bs->mu);
  *out = v;
  *n = i;
  return 0;
}

/* quarantine_path names where a corrupt blob goes: out of blobs/, so it is
 * neither served nor indexed again, but kept for whoever investigates. */
static int quarantine_path(const struct blobstore *bs, const char *hex, char *buf,
                           size_t size) {
  int n = snprintf(buf, size, "%s/quarantine/sha256-%s.%lld", bs->root, hex,
                   (long long)now_s());
  return (n < 0 || (size_t)n >= size) ? UV_ENAMETOOLONG : 0;
}

int blobstore_verify(struct blobstore *bs, const char *hex, uint64_t *hashed) {
  char path[PATH_MAX], qpath[PATH_MAX], got[DIGEST_HEX_LEN + 1];
  *hashed = 0;
  if (!digest_hex_valid(hex) || blob_path(bs, hex, "", path, sizeof path) != 0)
    return RM_ENOTFOUND;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0)
    return errno == ENOENT ? RM_ENOTFOUND : -errno;
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return RM_ENOTFOUND;
  }
  struct sha256_ctx ctx;
  int r = sha256_init(&ctx);
  char *chunk = r ? NULL : malloc(1u << 20);
  if (!chunk) {
    sha256_free(&ctx);
    close(fd);
    return r ? r : UV_ENOMEM;
  }
  for (;;) {
    ssize_t k = read(fd, chunk, 1u << 20);
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0) {
      r = -errno;
      break;
    }
    if (k == 0)
      break;
    sha256_update(&ctx, chunk, (size_t)k);
    *hashed += (uint64_t)k;
  }
  free(chunk);
  if (r) {
    sha256_free(&ctx);
    close(fd);
    return r;
  }
  sha256_final(&ctx, got);
  int intact = memcmp(got, hex, DIGEST_HEX_LEN) == 0;

  struct blob_entry *doomed = NULL;
  pthread_mutex_lock(&bs->mu);
  struct blob_entry *e = table_find(bs, hex);
  if (!e) {
    r = RM_ENOTFOUND; /* evicted or removed while we read */
  } else if (intact && e->size == (uint64_t)st.st_size) {
    r = 0;
  } else if (e->pins) {
    r = UV_EBUSY; /* being read: its entry cannot go from under the reader */
  } else {
    /* Same inode still in place? A fresh commit of the same digest may
     * have replaced the file after we read it. */
    struct stat now;
    if (lstat(path, &now) != 0 || now.st_ino != st.st_ino || now.st_dev != st.st_dev) {
      r = 0;
    } else {
      char qdir[PATH_MAX];
      snprintf(qdir, sizeof qdir, "%s/quarantine", bs->root);
      r = rm_mkdir(qdir, NULL);
      if (r == 0 && quarantine_path(bs, hex, qpath, sizeof qpath) == 0 &&
          rename(path, qpath) == 0) {
        e->doom_seq = 0; /* nothing left in blobs/ for doom_locked to move */
        table_remove(bs, e);
        lru_unlink(bs, e);
        bs->bytes -= e->size;
        if (kept_locked(bs, e->hex))
          bs->kept_bytes -= e->size;
        e->next = doomed;
        doomed = e;
        if (blob_path(bs, hex, ".meta", path, sizeof path) == 0)
          unlink(path);
        r = RM_EDIGEST;
      } else {
        /* cannot keep it aside: delete it, a corrupt blob must not be served */
        doom_locked(bs, e, 0, &doomed);
        r = RM_EDIGEST;
      }
    }
  }
  pthread_mutex_unlock(&bs->mu);
  close(fd);
  if (r == RM_EDIGEST)
    LOG_W("storage: %s does not hash to its name (got %s, %llu bytes); quarantined", hex,
          got, (unsigned long long)st.st_size);
  finish_doomed(bs, doomed);
  return r;
}

/* --- writers' side --------------------------------------------------------- */

int storage__reserve(struct blobstore *bs, uint64_t n) {
  struct blob_entry *doomed = NULL;
  uint64_t max = budget(bs);
  if (max && n > max)
    return RM_ENOSPACE;
  pthread_mutex_lock(&bs->mu);
  bs->reserved += n;
  evict_locked(bs, NULL, &doomed);
  pthread_mutex_unlock(&bs->mu);
  finish_doomed(bs, doomed);
  return 0;
}

void blobstore_set_max_size(struct blobstore *bs, uint64_t max_size) {
  struct blob_entry *doomed = NULL;
  pthread_mutex_lock(&bs->mu);
  __atomic_store_n(&bs->max_size, max_size, __ATOMIC_RELAXED);
  evict_locked(bs, NULL, &doomed);
  pthread_mutex_unlock(&bs->mu);
  finish_doomed(bs, doomed);
}

static void unreserve_locked(struct blobstore *bs, uint64_t n) {
  bs->reserved -= n < bs->reserved ? n : bs->reserved;
}

void storage__unreserve(struct blobstore *bs, uint64_t n) {
  pthread_mutex_lock(&bs->mu);
  unreserve_locked(bs, n);
  pthread_mutex_unlock(&bs->mu);
}

int storage__install(struct blobstore *bs, const char *hex, const char *blob_tmp,
                     const char *meta_tmp, const char *media_type, uint64_t size,
                     uint64_t reserved) {
  char path[PATH_MAX], meta[PATH_MAX], dir[PATH_MAX];
  struct blob_entry *doomed = NULL;
  int created = 0, renamed = 0, meta_renamed = 0;
  struct blob_entry *fresh = calloc(1, sizeof *fresh);
  char *mt = media_type ? strdup(media_type) : NULL;

  int r = (!fresh || (media_type && !mt)) ? UV_ENOMEM : 0;
  if (!r)
    r = blob_path(bs, hex, "", path, sizeof path);
  if (!r)
    r = blob_path(bs, hex, ".meta", meta, sizeof meta);
  if (!r)
    r = prefix_dir(bs, hex, dir, sizeof dir);
  if (!r)
    r = rm_mkdir(dir, &created);
  if (!r && created) {
    /* The new prefix directory's own entry must be durable too. */
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s/blobs/sha256", bs->root);
    r = storage__fsync_dir(parent);
  }

  /* Step 1, locked: the namespace changes. The .meta goes first so that a
   * visible blob always has its media type. If the blob is already
   * committed, the temp is the same bytes: drop it. */
  if (!r) {
    pthread_mutex_lock(&bs->mu);
    struct blob_entry *e = table_find(bs, hex);
    int same_meta = e && mt && e->media_type && strcmp(e->media_type, mt) == 0;
    if (meta_tmp && !same_meta) {
      if (rename(meta_tmp, meta) == 0)
        meta_renamed = 1;
      else
        r = -errno;
    }
    if (!r && !e) {
      if (rename(blob_tmp, path) == 0) {
        renamed = 1;
      } else {
        r = -errno;
        if (meta_renamed)
          unlink(meta);
        meta_renamed = 0;
      }
    }
    pthread_mutex_unlock(&bs->mu);
  }
  if (!renamed)
    unlink(blob_tmp);
  if (meta_tmp && !meta_renamed)
    unlink(meta_tmp);
  if (r) {
    storage__unreserve(bs, reserved);
    free(fresh);
    free(mt);
    return r;
  }

  if (renamed || meta_renamed) {
    int fr = storage__fsync_dir(dir);
    /* The file itself is fsynced; only the rename may not survive a crash,
     * which costs a re-fetch, not a wrong answer. */
    if (fr)
      LOG_W("storage: fsync of %s failed: %s", dir, rm_strerror(fr));
  }

  /* Step 2, locked: index it. Between the steps a concurrent commit of the
   * same digest may have indexed it (fine) or even had it evicted already;
   * the lstat keeps the index from naming a file that is not there. */
  pthread_mutex_lock(&bs->mu);
  struct blob_entry *e = table_find(bs, hex);
  if (e) {
    lru_unlink(bs, e);
    lru_push_mru(bs, e);
    if (meta_renamed) {
      free(e->media_type);
      e->media_type = mt;
      mt = NULL;
    }
  } else if (renamed) {
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISREG(st.st_mode)) {
      e = fresh;
      fresh = NULL;
      memcpy(e->hex, hex, DIGEST_HEX_LEN + 1);
      e->media_type = mt;
      mt = NULL;
      e->size = size;
      e->touched_s = now_s();
      table_insert(bs, e);
      lru_push_mru(bs, e);
      bs->bytes += size;
      if (kept_locked(bs, hex))
        bs->kept_bytes += size;
    }
  }
  unreserve_locked(bs, reserved);
  evict_locked(bs, e, &doomed);
  pthread_mutex_unlock(&bs->mu);

  finish_doomed(bs, doomed);
  free(fresh);
  free(mt);
  uint64_t max = budget(bs);
  if (max && size > max)
    LOG_W("storage: blob %s (%llu bytes) alone exceeds max_size %llu; kept", hex,
          (unsigned long long)size, (unsigned long long)max);
  return 0;
}

/* --- open: scanning the disk --------------------------------------------- */

struct scan_item {
  struct blob_entry *e;
  struct timespec mtime;
};

struct scan {
  struct scan_item *items; /* owned; entries are owned by the table */
  size_t n, cap;
  uint64_t ignored;
};

static int is_hex2(const char *s) {
  for (int i = 0; i < 2; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return 0;
  return s[2] == '\0';
}

static void scan_ignore(struct scan *sc, const char *dir, const char *name,
                        const char *why) {
  sc->ignored++;
  LOG_D("storage: ignoring blobs/sha256/%s%s%s: %s", dir, *dir ? "/" : "", name, why);
}

static int scan_add(struct blobstore *bs, struct scan *sc, const char *hex,
                    const struct stat *st) {
  if (sc->n == sc->cap) {
    size_t cap = sc->cap ? sc->cap * 2 : 256;
    struct scan_item *it = realloc(sc->items, cap * sizeof *it);
    if (!it)
      return UV_ENOMEM;
    sc->items = it;
    sc->cap = cap;
  }
  struct blob_entry *e = calloc(1, sizeof *e);
  if (!e)
    return UV_ENOMEM;
  memcpy(e->hex, hex, DIGEST_HEX_LEN + 1);
  e->size = (uint64_t)st->st_size;
  e->touched_s = (int64_t)st->st_mtim.tv_sec;
  table_insert(bs, e);
  bs->bytes += e->size;
  sc->items[sc->n].e = e;
  sc->items[sc->n].mtime = st->st_mtim;
  sc->n++;
  return 0;
}

/* read_meta parses "<media type>\n" from a .meta file. Anything else (too
 * long, no newline because truncated, control bytes, not a regular file) is
 * malformed: returns RM_EPARSE. */
static int read_meta(int dfd, const char *name, char **out) {
  char buf[STORAGE_MEDIA_TYPE_MAX + 1];
  size_t len = 0;
  struct stat st;
  int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0)
    return errno == ELOOP ? RM_EPARSE : -errno;
  int r = fstat(fd, &st) != 0 ? -errno : 0;
  if (!r && !S_ISREG(st.st_mode))
    r = RM_EPARSE;
  if (!r)
    r = storage__read_upto(fd, buf, sizeof buf, &len);
  close(fd);
  if (r)
    return r;
  if (len < 2 || len > STORAGE_MEDIA_TYPE_MAX || buf[len - 1] != '\n')
    return RM_EPARSE;
  buf[len - 1] = '\0';
  if (!storage__media_type_valid(buf))
    return RM_EPARSE;
  *out = strdup(buf);
  return *out ? 0 : UV_ENOMEM;
}

/* scan_prefix indexes blobs/sha256/<prefix>/ in two passes: blobs first, so
 * that the .meta pass can tell a blob's meta from a stray one. */
static int scan_prefix(struct blobstore *bs, struct scan *sc, int parent,
                       const char *prefix) {
  int fd = openat(parent, prefix, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    LOG_W("storage: cannot open blobs/sha256/%s: %s", prefix, strerror(errno));
    return 0;
  }
  DIR *d = fdopendir(fd);
  if (!d) {
    close(fd);
    return UV_ENOMEM;
  }
  int r = 0;
  struct dirent *de;
  while (!r && (de = readdir(d)) != NULL) {
    const char *n = de->d_name;
    size_t len = strlen(n);
    struct stat st;
    if (strcmp(n, ".") == 0 || strcmp(n, "..") == 0)
      continue;
    if (len == DIGEST_HEX_LEN + 5 && strcmp(n + DIGEST_HEX_LEN, ".meta") == 0)
      continue; /* second pass */
    if (len != DIGEST_HEX_LEN || !digest_hex_valid(n) || memcmp(n, prefix, 2) != 0) {
      scan_ignore(sc, prefix, n, "not a digest of this directory");
      continue;
    }
    if (fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) {
      scan_ignore(sc, prefix, n, "not a regular file");
      continue;
    }
    r = scan_add(bs, sc, n, &st);
  }
  rewinddir(d);
  while (!r && (de = readdir(d)) != NULL) {
    const char *n = de->d_name;
    char hex[DIGEST_HEX_LEN + 1];
    if (strlen(n) != DIGEST_HEX_LEN + 5 || strcmp(n + DIGEST_HEX_LEN, ".meta") != 0)
      continue;
    memcpy(hex, n, DIGEST_HEX_LEN);
    hex[DIGEST_HEX_LEN] = '\0';
    if (!digest_hex_valid(hex) || memcmp(hex, prefix, 2) != 0) {
      scan_ignore(sc, prefix, n, "not a digest of this directory");
      continue;
    }
    struct blob_entry *e = table_find(bs, hex);
    if (!e) {
      /* Its blob was never committed (crash between the two renames) or
       * was removed by hand. */
      LOG_D("storage: removing stray %s", n);
      if (unlinkat(dirfd(d), n, 0) != 0)
        scan_ignore(sc, prefix, n, "stray .meta that cannot be removed");
      continue;
    }
    int mr = read_meta(dirfd(d), n, &e->media_type);
    if (mr == UV_ENOMEM) {
      r = mr;
    } else if (mr) {
      LOG_W("storage: malformed %s (%s); the blob keeps no media type", n,
            rm_strerror(mr));
      unlinkat(dirfd(d), n, 0);
    }
  }
  closedir(d);
  return r;
}

static int cmp_mtime(const void *a, const void *b) {
  const struct scan_item *x = a, *y = b;
  if (x->mtime.tv_sec != y->mtime.tv_sec)
    return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
  if (x->mtime.tv_nsec != y->mtime.tv_nsec)
    return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
  return memcmp(x->e->hex, y->e->hex, DIGEST_HEX_LEN);
}

static int scan_blobs(struct blobstore *bs, uint64_t *ignored) {
  char path[PATH_MAX];
  struct scan sc = {0};
  snprintf(path, sizeof path, "%s/blobs/sha256", bs->root);
  DIR *d = opendir(path);
  if (!d)
    return -errno;
  int r = 0;
  struct dirent *de;
  while (!r && (de = readdir(d)) != NULL) {
    const char *n = de->d_name;
    struct stat st;
    if (strcmp(n, ".") == 0 || strcmp(n, "..") == 0)
      continue;
    if (!is_hex2(n)) {
      scan_ignore(&sc, "", n, "not a prefix directory");
      continue;
    }
    if (fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode)) {
      scan_ignore(&sc, "", n, "not a directory");
      continue;
    }
    r = scan_prefix(bs, &sc, dirfd(d), n);
  }
  closedir(d);
  if (!r) {
    /* Oldest mtime = least recently used. */
    if (sc.n > 1)
      qsort(sc.items, sc.n, sizeof *sc.items, cmp_mtime);
    for (size_t i = 0; i < sc.n; i++)
      lru_push_mru(bs, sc.items[i].e);
    *ignored = sc.ignored;
  }
  free(sc.items);
  return r;
}

/* --- open / close ---------------------------------------------------------- */

void blobstore_close(struct blobstore *bs) {
  if (!bs)
    return;
  if (bs->buckets) {
    for (size_t i = 0; i < bs->nbuckets; i++) {
      struct blob_entry *e = bs->buckets[i];
      while (e) {
        struct blob_entry *next = e->hnext;
        entry_free(e);
        e = next;
      }
    }
  }
  pthread_mutex_destroy(&bs->mu);
  pthread_mutex_destroy(&bs->pin_mu);
  strmap_free(&bs->kept);
  if (bs->lock_fd >= 0)
    close(bs->lock_fd); /* drops the flock */
  free(bs->buckets);
  free(bs->root);
  free(bs);
}

/* lock_root takes <root>/lock with flock before anything in the root is
 * touched: a second process on the same root would empty the first one's
 * tmp/ and evict under its feet. The holder writes its PID into the file
 * so the refusal can name it; the lock, not the PID, is what counts, so a
 * stale PID from a killed process never blocks a start. */
static int lock_root(struct blobstore *bs) {
  char path[PATH_MAX], pidtxt[32];
  snprintf(path, sizeof path, "%s/lock", bs->root);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    int e = -errno;
    LOG_E("storage: cannot open %s: %s", path, rm_strerror(e));
    return e;
  }
  int r;
  do
    r = flock(fd, LOCK_EX | LOCK_NB);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    int e = errno;
    ssize_t n = pread(fd, pidtxt, sizeof pidtxt - 1, 0);
    close(fd);
    if (e != EWOULDBLOCK) {
      LOG_E("storage: cannot lock %s: %s", path, rm_strerror(-e));
      return -e;
    }
    long pid = 0;
    if (n > 0) {
      pidtxt[n] = '\0';
      pid = strtol(pidtxt, NULL, 10);
    }
    if (pid > 0)
      LOG_E("storage: %s is in use by another process (pid %ld holds %s); "
            "each node needs its own storage.root", bs->root, pid, path);
    else
      LOG_E("storage: %s is in use by another process (it holds %s); "
            "each node needs its own storage.root", bs->root, path);
    return RM_ELOCKED;
  }
  int len = snprintf(pidtxt, sizeof pidtxt, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pidtxt, (size_t)len, 0) != len)
    LOG_W("storage: cannot write the PID into %s: %s", path, rm_strerror(-errno));
  bs->lock_fd = fd;
  return 0;
}

int blobstore_open(struct blobstore **out, const char *root, uint64_t max_size) {
  static const char *const dirs[] = {"blobs/sha256", "tags", "tmp"};
  char path[PATH_MAX];
  struct blob_entry *doomed = NULL;
  uint64_t ignored = 0;
  size_t len = root ? strlen(root) : 0;
  while (len > 1 && root[len - 1] == '/')
    len--;
  if (len == 0)
    return UV_EINVAL;
  if (len > PATH_MAX - STORAGE__NAME_RESERVE)
    return UV_ENAMETOOLONG;

  struct blobstore *bs = calloc(1, sizeof *bs);
  if (!bs)
    return UV_ENOMEM;
  bs->root = strndup(root, len);
  bs->nbuckets = TABLE_MIN_BUCKETS;
  bs->buckets = calloc(bs->nbuckets, sizeof *bs->buckets);
  bs->max_size = max_size;
  if (!bs->root || !bs->buckets) {
    free(bs->root);
    free(bs->buckets);
    free(bs);
    return UV_ENOMEM;
  }
  bs->lock_fd = -1;
  pthread_mutex_init(&bs->mu, NULL);
  pthread_mutex_init(&bs->pin_mu, NULL);
  strmap_init(&bs->kept);

  int r = rm_mkdir_p(bs->root);
  if (r)
    LOG_E("storage: cannot create %s: %s", bs->root, rm_strerror(r));
  if (!r)
    r = lock_root(bs);
  for (size_t i = 0; !r && i < sizeof dirs / sizeof dirs[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", bs->root, dirs[i]);
    r = rm_mkdir_p(path);
    if (r)
      LOG_E("storage: cannot create %s: %s", path, rm_strerror(r));
  }
  if (!r) {
    /* Whatever is in tmp/ was in flight when the last process died. */
    snprintf(path, sizeof path, "%s/tmp", bs->root);
    int er = storage__empty_dir(path);
    if (er)
      LOG_W("storage: could not empty %s: %s", path, rm_strerror(er));
    r = scan_blobs(bs, &ignored);
    if (r)
      LOG_E("storage: cannot index %s: %s", bs->root, rm_strerror(r));
  }
  if (!r)
    r = storage__pins_load(bs);
  if (r) {
    blobstore_close(bs);
    return r;
  }
  LOG_I("storage: %s: %llu blobs, %llu bytes (max %llu), %llu unexpected "
        "entries ignored",
        bs->root, (unsigned long long)bs->count, (unsigned long long)bs->bytes,
        (unsigned long long)max_size, (unsigned long long)ignored);
  evict_locked(bs, NULL, &doomed); /* not shared yet: no lock needed */
  finish_doomed(bs, doomed);
  *out = bs;
  return 0;
}
