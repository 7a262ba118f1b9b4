/* test_storage.c - the blob store and tag store against a real directory.
 *
 * Each test gets a fresh root under $TMPDIR and removes it afterwards. The
 * tests look at the disk directly (what is in blobs/ and tmp/) as well as
 * through the API, because the store's promises are about the disk: nothing
 * partial is ever visible, and a restart finds what was committed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "digest.h"
#include "errors.h"
#include "log.h"
#include "storage.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define MT_MANIFEST "application/vnd.oci.image.manifest.v1+json"

struct fixture {
  char root[512];       /* short, so every path built from it fits PATH_MAX */
  struct blobstore *bs; /* tests open it themselves, with their budget */
};

/* --- helpers ------------------------------------------------------------- */

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)ftw;
  return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void rm_rf(const char *path) {
  nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static int g_count;
static uint64_t g_bytes;
static int count_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)ftw;
  size_t n = strlen(path);
  if (flag == FTW_F || flag == FTW_SL) {
    g_count++;
    if (!(n > 5 && strcmp(path + n - 5, ".meta") == 0))
      g_bytes += (uint64_t)st->st_size;
  }
  return 0;
}

/* count_files: files (not directories) anywhere under root/sub; *bytes gets
 * the size of those that are not .meta. */
static int count_files(const char *root, const char *sub, uint64_t *bytes) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s", root, sub);
  g_count = 0;
  g_bytes = 0;
  nftw(path, count_cb, 16, FTW_PHYS);
  if (bytes)
    *bytes = g_bytes;
  return g_count;
}

static void path_of(char *buf, const char *root, const char *hex, const char *suffix) {
  snprintf(buf, PATH_MAX, "%s/blobs/sha256/%.2s/%s%s", root, hex, hex, suffix);
}

static int exists(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0;
}

static void write_file(const char *path, const void *p, size_t n) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, p, n), (ssize_t)n);
  close(fd);
}

static void mkdirs(const char *root, const char *sub) {
  char cmd[PATH_MAX * 2];
  snprintf(cmd, sizeof cmd, "mkdir -p '%s/%s'", root, sub);
  assert_int_equal(system(cmd), 0);
}

/* blob makes n bytes that differ per seed, and their hex. */
static unsigned char *blob(size_t n, unsigned seed, char hex[65]) {
  unsigned char *p = malloc(n ? n : 1);
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; i++) {
    x = x * 1103515245u + 12345u;
    p[i] = (unsigned char)(x >> 16);
  }
  assert_int_equal(sha256_hex(p, n, hex), 0);
  return p;
}

/* commit writes p through a writer in uneven chunks. */
static int commit(struct blobstore *bs, const void *p, size_t n, const char *hex,
                  uint64_t expected, const char *mt) {
  struct blob_writer *w;
  int r = blobstore_writer_open(bs, hex, expected, &w);
  if (r)
    return r;
  size_t off = 0, chunk = 1;
  while (off < n) {
    size_t k = n - off < chunk ? n - off : chunk;
    r = blob_writer_write(w, (const char *)p + off, k);
    if (r) {
      blob_writer_abort(w);
      return r;
    }
    off += k;
    chunk = chunk * 3 + 7;
  }
  return blob_writer_commit(w, mt);
}

/* add_blob commits a fresh blob of n bytes and hands back its hex. */
static void add_blob(struct blobstore *bs, size_t n, unsigned seed, char hex[65],
                     uint64_t expected) {
  unsigned char *p = blob(n, seed, hex);
  assert_int_equal(commit(bs, p, n, hex, expected, NULL), 0);
  free(p);
}

static void reopen(struct fixture *f, uint64_t max) {
  blobstore_close(f->bs);
  f->bs = NULL;
  assert_int_equal(blobstore_open(&f->bs, f->root, max), 0);
}

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  const char *t = getenv("TMPDIR");
  snprintf(f->root, sizeof f->root, "%s/rm-storage-XXXXXX", t ? t : "/tmp");
  if (!mkdtemp(f->root))
    return -1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  blobstore_close(f->bs);
  rm_rf(f->root);
  free(f);
  return 0;
}

/* --- blobs ----------------------------------------------------------------- */

static void test_round_trip(void **state) {
  struct fixture *f = *state;
  char hex[65], path[PATH_MAX];
  size_t n = 1 << 20;
  unsigned char *p = blob(n, 1, hex);
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);

  struct blob_writer *w;
  assert_int_equal(blobstore_writer_open(f->bs, hex, n, &w), 0);
  assert_int_equal(blob_writer_write(w, p, n / 2), 0);
  assert_int_equal(blob_writer_size(w), n / 2);
  /* A reader of the download in progress sees the bytes written so far. */
  struct stat st;
  assert_int_equal(stat(blob_writer_path(w), &st), 0);
  assert_int_equal(st.st_size, n / 2);
  assert_non_null(strstr(blob_writer_path(w), "/tmp/"));
  assert_int_equal(blobstore_stat(f->bs, hex, NULL), RM_ENOTFOUND);
  assert_int_equal(blob_writer_write(w, p + n / 2, n - n / 2), 0);
  assert_int_equal(blob_writer_commit(w, NULL), 0);

  path_of(path, f->root, hex, "");
  assert_true(exists(path));
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);

  struct blob_info info;
  int fd = -1;
  assert_int_equal(blobstore_open_read(f->bs, hex, &fd, &info), 0);
  assert_int_equal(info.size, n);
  assert_string_equal(info.media_type, "");
  unsigned char *q = malloc(n + 1);
  size_t got = 0;
  ssize_t k;
  while ((k = read(fd, q + got, n + 1 - got)) > 0)
    got += (size_t)k;
  close(fd);
  blobstore_unpin(f->bs, hex);
  assert_int_equal(got, n);
  assert_memory_equal(p, q, n);

  struct blobstore_stats s;
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.bytes, n);
  assert_int_equal(s.blobs, 1);
  assert_int_equal(blobstore_remove(f->bs, hex), 0);
  assert_false(exists(path));
  assert_int_equal(blobstore_remove(f->bs, hex), RM_ENOTFOUND);
  free(p);
  free(q);
}

static void test_empty_blob(void **state) {
  struct fixture *f = *state;
  char hex[65];
  struct blob_info info;
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  assert_int_equal(sha256_hex("", 0, hex), 0);
  assert_int_equal(blobstore_put(f->bs, hex, "", 0, NULL), 0);
  assert_int_equal(blobstore_stat(f->bs, hex, &info), 0);
  assert_int_equal(info.size, 0);
}

static void test_digest_mismatch(void **state) {
  struct fixture *f = *state;
  char hex[65], other[65];
  unsigned char *p = blob(5000, 2, hex);
  unsigned char *q = blob(10, 3, other);
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  assert_int_equal(commit(f->bs, p, 5000, other, 5000, NULL), RM_EDIGEST);
  assert_int_equal(commit(f->bs, p, 4999, hex, 0, MT_MANIFEST), RM_EDIGEST);
  assert_int_equal(blobstore_put(f->bs, other, p, 5000, NULL), RM_EDIGEST);
  assert_int_equal(count_files(f->root, "blobs", NULL), 0);
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);
  assert_int_equal(blobstore_stat(f->bs, hex, NULL), RM_ENOTFOUND);
  assert_int_equal(blobstore_stat(f->bs, other, NULL), RM_ENOTFOUND);
  struct blobstore_stats s;
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.blobs, 0);
  assert_int_equal(s.bytes, 0);
  /* Bad hex is refused before anything touches the disk. */
  struct blob_writer *w;
  assert_int_equal(blobstore_writer_open(f->bs, "../../etc", 0, &w), RM_EPARSE);
  assert_int_equal(blobstore_stat(f->bs, "ABC", NULL), RM_ENOTFOUND);
  free(p);
  free(q);
}

/* verify on the loop, commit on the pool: the split the node uses to
 * release a download's last byte before the fsync. */
static void test_verify_then_commit(void **state) {
  struct fixture *f = *state;
  char hex[65], other[65];
  unsigned char *p = blob(3000, 7, hex);
  unsigned char *q = blob(10, 8, other);
  struct blob_writer *w;
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  assert_int_equal(blobstore_writer_open(f->bs, hex, 3000, &w), 0);
  assert_int_equal(blob_writer_write(w, p, 3000), 0);
  assert_int_equal(blob_writer_verify(w), 0);
  assert_int_equal(blob_writer_verify(w), 0);
  assert_int_equal(blob_writer_write(w, "x", 1), UV_EINVAL);
  assert_int_equal(blob_writer_commit(w, NULL), 0);
  assert_int_equal(blobstore_stat(f->bs, hex, NULL), 0);
  /* a mismatch found by verify makes the commit fail and leaves nothing */
  assert_int_equal(blobstore_writer_open(f->bs, other, 0, &w), 0);
  assert_int_equal(blob_writer_write(w, p, 100), 0);
  assert_int_equal(blob_writer_verify(w), RM_EDIGEST);
  assert_int_equal(blob_writer_commit(w, NULL), RM_EDIGEST);
  assert_int_equal(blobstore_stat(f->bs, other, NULL), RM_ENOTFOUND);
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);
  free(p);
  free(q);
}

/* Deferred hashing: writes skip the hash, hash_step catches up from the
 * file (the node runs it on the thread pool). */
static void test_deferred_hash(void **state) {
  struct fixture *f = *state;
  char hex[65];
  unsigned char *p = blob(700000, 9, hex);
  struct blob_writer *w;
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  assert_int_equal(blobstore_writer_open(f->bs, hex, 700000, &w), 0);
  assert_int_equal(blob_writer_defer_hash(w), 0);
  assert_int_equal(blob_writer_write(w, p, 300000), 0);
  assert_int_equal(blob_writer_hash_step(w, 100000), 100000);
  assert_int_equal(blob_writer_hash_step(w, SIZE_MAX), 200000);
  assert_int_equal(blob_writer_hash_step(w, SIZE_MAX), 0);
  assert_int_equal(blob_writer_write(w, p + 300000, 400000), 0);
  /* not caught up yet: verify refuses rather than judging half the data */
  assert_int_equal(blob_writer_verify(w), UV_EINVAL);
  assert_int_equal(blob_writer_hash_step(w, SIZE_MAX), 400000);
  assert_int_equal(blob_writer_verify(w), 0);
  assert_int_equal(blob_writer_commit(w, NULL), 0);
  assert_int_equal(blobstore_stat(f->bs, hex, NULL), 0);
  /* too late to defer once bytes were written */
  char hex2[65];
  unsigned char *q = blob(1000, 10, hex2);
  assert_int_equal(blobstore_writer_open(f->bs, hex2, 0, &w), 0);
  assert_int_equal(blob_writer_write(w, q, 10), 0);
  assert_int_equal(blob_writer_defer_hash(w), UV_EINVAL);
  blob_writer_abort(w);
  /* a deferred writer with wrong content: commit catches up and refuses */
  assert_int_equal(blobstore_writer_open(f->bs, hex2, 0, &w), 0);
  assert_int_equal(blob_writer_defer_hash(w), 0);
  assert_int_equal(blob_writer_write(w, p, 1000), 0);
  assert_int_equal(blob_writer_commit(w, NULL), RM_EDIGEST);
  assert_int_equal(blobstore_stat(f->bs, hex2, NULL), RM_ENOTFOUND);
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);
  free(p);
  free(q);
}

static void test_abort(void **state) {
  struct fixture *f = *state;
  char hex[65];
  unsigned char *p = blob(100, 4, hex);
  struct blob_writer *w;
  assert_int_equal(blobstore_open(&f->bs, f->root, 250), 0);
  assert_int_equal(blobstore_writer_open(f->bs, hex, 200, &w), 0);
  assert_int_equal(blob_writer_write(w, p, 100), 0);
  assert_int_equal(count_files(f->root, "tmp", NULL), 1);
  blob_writer_abort(w);
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);
  /* The 200 announced bytes were given back: two 100-byte blobs fit. */
  char a[65], b[65];
  add_blob(f->bs, 100, 5, a, 100);
  add_blob(f->bs, 100, 6, b, 100);
  struct blobstore_stats s;
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.evictions, 0);
  assert_int_equal(s.bytes, 200);
  free(p);
}

static void test_restart(void **state) {
  struct fixture *f = *state;
  char a[65], b[65], path[PATH_MAX];
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  add_blob(f->bs, 3000, 10, a, 3000);
  add_blob(f->bs, 7000, 11, b, 0);
  blobstore_close(f->bs);
  f->bs = NULL;

  /* What a crashed process leaves in tmp/: a partial download, a nested
   * directory and a symlink (which must be removed, not followed). */
  snprintf(path, sizeof path, "%s/tmp/%s.1234.1", f->root, a);
  write_file(path, "partial", 7);
  mkdirs(f->root, "tmp/d1/d2");
  snprintf(path, sizeof path, "%s/tmp/d1/d2/x", f->root);
  write_file(path, "x", 1);
  char target[PATH_MAX];
  path_of(target, f->root, a, "");
  snprintf(path, sizeof path, "%s/tmp/link", f->root);
  assert_int_equal(symlink(target, path), 0);

  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);
  assert_true(exists(target));
  struct blob_info info;
  assert_int_equal(blobstore_stat(f->bs, a, &info), 0);
  assert_int_equal(info.size, 3000);
  assert_int_equal(blobstore_stat(f->bs, b, &info), 0);
  assert_int_equal(info.size, 7000);
  struct blobstore_stats s;
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.blobs, 2);
  assert_int_equal(s.bytes, 10000);
}

static void test_lru_eviction(void **state) {
  struct fixture *f = *state;
  char a[65], b[65], c[65], d[65], path[PATH_MAX];
  assert_int_equal(blobstore_open(&f->bs, f->root, 250), 0);
  add_blob(f->bs, 100, 20, a, 100);
  add_blob(f->bs, 100, 21, b, 100);
  assert_int_equal(blobstore_stat(f->bs, a, NULL), 0); /* A is now MRU */
  add_blob(f->bs, 100, 22, c, 100);                    /* room is made at writer_open */

  assert_int_equal(blobstore_stat(f->bs, b, NULL), RM_ENOTFOUND);
  path_of(path, f->root, b, "");
  assert_false(exists(path));
  assert_int_equal(blobstore_stat(f->bs, a, NULL), 0);
  assert_int_equal(blobstore_stat(f->bs, c, NULL), 0);
  struct blobstore_stats s;
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.evictions, 1);
  assert_int_equal(s.evicted_bytes, 100);
  assert_int_equal(s.bytes, 200);

  /* Size unknown up front: the eviction happens at commit. LRU is A
   * (stat'ed before C was), then C. */
  add_blob(f->bs, 100, 23, d, 0);
  assert_int_equal(blobstore_stat(f->bs, a, NULL), RM_ENOTFOUND);
  assert_int_equal(blobstore_stat(f->bs, c, NULL), 0);
  assert_int_equal(blobstore_stat(f->bs, d, NULL), 0);
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.evictions, 2);
  assert_int_equal(s.bytes, 200);
  uint64_t disk;
  assert_int_equal(count_files(f->root, "blobs", &disk), 2);
  assert_int_equal(disk, 200);
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);
}

static void test_pinned_not_evicted(void **state) {
  struct fixture *f = *state;
  char a[65], b[65], c[65];
  int fd;
  assert_int_equal(blobstore_open(&f->bs, f->root, 250), 0);
  add_blob(f->bs, 100, 30, a, 100);
  add_blob(f->bs, 100, 31, b, 100);
  assert_int_equal(blobstore_open_read(f->bs, a, &fd, NULL), 0);
  assert_int_equal(blobstore_stat(f->bs, b, NULL), 0); /* A is LRU again */
  add_blob(f->bs, 100, 32, c, 100);
  /* A was the LRU candidate but is pinned: B went instead. */
  assert_int_equal(blobstore_stat(f->bs, a, NULL), 0);
  assert_int_equal(blobstore_stat(f->bs, b, NULL), RM_ENOTFOUND);
  assert_int_equal(blobstore_remove(f->bs, a), UV_EBUSY);
  close(fd);
  blobstore_unpin(f->bs, a);

  /* Budget 150, A pinned and LRU: committing D must keep both (over
   * budget); the unpin then evicts A. */
  reopen(f, 150);
  struct blobstore_stats s;
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.blobs, 1); /* 200 > 150 at open: one went */
  char d[65];
  const char *kept = blobstore_stat(f->bs, a, NULL) == 0 ? a : c;
  assert_int_equal(blobstore_open_read(f->bs, kept, &fd, NULL), 0);
  add_blob(f->bs, 100, 33, d, 0);
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.bytes, 200);
  assert_int_equal(s.blobs, 2);
  char pk[PATH_MAX];
  path_of(pk, f->root, kept, ""); /* not stat: that would be an access */
  assert_true(exists(pk));
  close(fd);
  blobstore_unpin(f->bs, kept);
  assert_false(exists(pk));
  assert_int_equal(blobstore_stat(f->bs, kept, NULL), RM_ENOTFOUND);
  assert_int_equal(blobstore_stat(f->bs, d, NULL), 0);
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.bytes, 100);
}

static void test_enospace(void **state) {
  struct fixture *f = *state;
  char a[65], big[65];
  struct blob_writer *w;
  assert_int_equal(blobstore_open(&f->bs, f->root, 100), 0);
  add_blob(f->bs, 60, 40, a, 60);
  unsigned char *p = blob(150, 41, big);
  assert_int_equal(blobstore_writer_open(f->bs, big, 101, &w), RM_ENOSPACE);
  assert_int_equal(blobstore_put(f->bs, big, p, 150, NULL), RM_ENOSPACE);
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);
  /* Nothing was evicted to make room for a blob that can never fit. */
  assert_int_equal(blobstore_stat(f->bs, a, NULL), 0);
  assert_int_equal(blobstore_writer_open(f->bs, big, 100, &w), 0);
  blob_writer_abort(w);

  /* Size unknown: the oversized blob is kept, everything else goes. */
  char b[65];
  add_blob(f->bs, 30, 42, b, 0);
  assert_int_equal(blobstore_stat(f->bs, b, NULL), 0);
  assert_int_equal(commit(f->bs, p, 150, big, 0, NULL), 0);
  assert_int_equal(blobstore_stat(f->bs, big, NULL), 0);
  assert_int_equal(blobstore_stat(f->bs, b, NULL), RM_ENOTFOUND);
  struct blobstore_stats s;
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.bytes, 150);
  assert_int_equal(s.max_size, 100);
  free(p);
}

static void test_meta(void **state) {
  struct fixture *f = *state;
  char hex[65], plain[65], path[PATH_MAX], buf[512];
  struct blob_info info;
  const char *doc = "{\"schemaVersion\":2}";
  assert_int_equal(sha256_hex(doc, strlen(doc), hex), 0);
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  assert_int_equal(blobstore_put(f->bs, hex, doc, strlen(doc), "bad\ntype"), RM_EPARSE);
  assert_int_equal(blobstore_put(f->bs, hex, doc, strlen(doc), MT_MANIFEST), 0);
  add_blob(f->bs, 50, 50, plain, 0);

  path_of(path, f->root, hex, ".meta");
  int fd = open(path, O_RDONLY);
  assert_true(fd >= 0);
  ssize_t n = read(fd, buf, sizeof buf);
  close(fd);
  assert_int_equal(n, strlen(MT_MANIFEST) + 1);
  assert_memory_equal(buf, MT_MANIFEST "\n", (size_t)n);
  path_of(path, f->root, plain, ".meta");
  assert_false(exists(path));

  assert_int_equal(blobstore_stat(f->bs, hex, &info), 0);
  assert_string_equal(info.media_type, MT_MANIFEST);
  assert_int_equal(info.size, strlen(doc));
  reopen(f, 0);
  assert_int_equal(blobstore_stat(f->bs, hex, &info), 0);
  assert_string_equal(info.media_type, MT_MANIFEST);
  assert_int_equal(blobstore_open_read(f->bs, hex, &fd, &info), 0);
  assert_string_equal(info.media_type, MT_MANIFEST);
  close(fd);
  blobstore_unpin(f->bs, hex);
  assert_int_equal(blobstore_stat(f->bs, plain, &info), 0);
  assert_string_equal(info.media_type, "");

  /* Committing the same blob again with another type updates the meta. */
  assert_int_equal(blobstore_put(f->bs, hex, doc, strlen(doc), "text/plain"), 0);
  assert_int_equal(blobstore_stat(f->bs, hex, &info), 0);
  assert_string_equal(info.media_type, "text/plain");
  struct blobstore_stats s;
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.blobs, 2);
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);

  assert_int_equal(blobstore_remove(f->bs, hex), 0);
  path_of(path, f->root, hex, ".meta");
  assert_false(exists(path));
}

static void test_invalid_names_ignored(void **state) {
  struct fixture *f = *state;
  char hex[65], other[65], path[PATH_MAX], upper[65];
  log_set_level(LOG_DEBUG);
  unsigned char *p = blob(300, 60, hex);
  unsigned char *q = blob(10, 61, other);
  mkdirs(f->root, "blobs/sha256/zz");
  mkdirs(f->root, "tmp");
  char dir[8];
  snprintf(dir, sizeof dir, "%.2s", hex);
  mkdirs(f->root, "blobs/sha256/ab");
  snprintf(path, sizeof path, "%s/blobs/sha256/%s", f->root, dir);
  mkdir(path, 0755);

  path_of(path, f->root, hex, "");
  write_file(path, p, 300); /* the one real blob */
  snprintf(path, sizeof path, "%s/blobs/sha256/%s/notahex", f->root, dir);
  write_file(path, "x", 1);
  for (int i = 0; i < 64; i++)
    upper[i] = (char)(hex[i] >= 'a' ? hex[i] - 'a' + 'A' : hex[i]);
  upper[64] = '\0';
  snprintf(path, sizeof path, "%s/blobs/sha256/%s/%s", f->root, dir, upper);
  write_file(path, p, 300);
  snprintf(path, sizeof path, "%s/blobs/sha256/zz/%s", f->root, hex);
  write_file(path, p, 300);
  snprintf(path, sizeof path, "%s/blobs/sha256/junk", f->root);
  write_file(path, "j", 1);
  snprintf(path, sizeof path, "%s/blobs/sha256/cd", f->root);
  write_file(path, "file where a directory should be", 32);
  /* Right name, wrong directory: never reachable by its path. */
  const char *wrong = other[0] == 'a' && other[1] == 'b' ? "ac" : "ab";
  snprintf(path, sizeof path, "%s/blobs/sha256/%s", f->root, wrong);
  mkdir(path, 0755);
  snprintf(path, sizeof path, "%s/blobs/sha256/%s/%s", f->root, wrong, other);
  write_file(path, q, 10);
  /* A directory named like a blob. */
  path_of(path, f->root, other, "");
  mkdirs(f->root, "blobs/sha256");
  char odir[PATH_MAX];
  snprintf(odir, sizeof odir, "%s/blobs/sha256/%.2s", f->root, other);
  mkdir(odir, 0755);
  assert_int_equal(mkdir(path, 0755), 0);
  /* A stray .meta, and a truncated one for the real blob. */
  char stray[PATH_MAX];
  snprintf(stray, sizeof stray, "%s/blobs/sha256/%.2s/%s.meta", f->root, other, other);
  write_file(stray, "text/plain\n", 11);
  char trunc[PATH_MAX];
  path_of(trunc, f->root, hex, ".meta");
  write_file(trunc, "application/vnd.oci.ima", 23);

  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  log_set_level(LOG_INFO);
  struct blobstore_stats s;
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.blobs, 1);
  assert_int_equal(s.bytes, 300);
  struct blob_info info;
  assert_int_equal(blobstore_stat(f->bs, hex, &info), 0);
  assert_string_equal(info.media_type, "");
  assert_int_equal(blobstore_stat(f->bs, other, NULL), RM_ENOTFOUND);
  int fd;
  assert_int_equal(blobstore_open_read(f->bs, other, &fd, NULL), RM_ENOTFOUND);
  assert_false(exists(stray));
  assert_false(exists(trunc));
  /* Ignored means left alone, not deleted. */
  snprintf(path, sizeof path, "%s/blobs/sha256/%s/notahex", f->root, dir);
  assert_true(exists(path));
  snprintf(path, sizeof path, "%s/blobs/sha256/cd", f->root);
  assert_true(exists(path));
  /* The store still works next to the junk. */
  char c[65];
  add_blob(f->bs, 10, 62, c, 10);
  assert_int_equal(blobstore_stat(f->bs, c, NULL), 0);
  free(p);
  free(q);
}

static void test_corrupt_on_disk(void **state) {
  struct fixture *f = *state;
  char a[65], b[65], path[PATH_MAX];
  int fd;
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  add_blob(f->bs, 1000, 70, a, 0);
  add_blob(f->bs, 1000, 71, b, 0);
  /* Truncated behind our back: dropped, not served with the wrong size. */
  path_of(path, f->root, a, "");
  assert_int_equal(truncate(path, 10), 0);
  assert_int_equal(blobstore_open_read(f->bs, a, &fd, NULL), RM_ENOTFOUND);
  assert_int_equal(blobstore_stat(f->bs, a, NULL), RM_ENOTFOUND);
  /* Replaced by a directory. */
  path_of(path, f->root, b, "");
  assert_int_equal(unlink(path), 0);
  assert_int_equal(mkdir(path, 0755), 0);
  assert_int_equal(blobstore_open_read(f->bs, b, &fd, NULL), RM_ENOTFOUND);
  assert_int_equal(blobstore_stat(f->bs, b, NULL), RM_ENOTFOUND);
  struct blobstore_stats s;
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.blobs, 0);
  assert_int_equal(s.bytes, 0);
  assert_int_equal(s.evictions, 0);
  reopen(f, 0);
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.blobs, 0);
}

static void test_lru_survives_restart(void **state) {
  struct fixture *f = *state;
  char a[65], b[65], pa[PATH_MAX], pb[PATH_MAX];
  struct stat st;
  time_t now = time(NULL);
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  add_blob(f->bs, 100, 80, a, 0);
  add_blob(f->bs, 100, 81, b, 0);
  path_of(pa, f->root, a, "");
  path_of(pb, f->root, b, "");
  /* B committed last, but on disk A was used more recently. */
  struct timespec ta[2] = {{now - 1000, 0}, {now - 1000, 0}};
  struct timespec tb[2] = {{now - 2000, 0}, {now - 2000, 0}};
  assert_int_equal(utimensat(AT_FDCWD, pa, ta, 0), 0);
  assert_int_equal(utimensat(AT_FDCWD, pb, tb, 0), 0);
  reopen(f, 150);
  assert_int_equal(blobstore_stat(f->bs, b, NULL), RM_ENOTFOUND);
  assert_true(exists(pa));
  assert_false(exists(pb));

  /* A's mtime is 1000 s old: this access writes it ... */
  assert_int_equal(blobstore_stat(f->bs, a, NULL), 0);
  assert_int_equal(stat(pa, &st), 0);
  assert_true(st.st_mtime >= now);
  /* ... and the next one within a minute does not. */
  assert_int_equal(utimensat(AT_FDCWD, pa, ta, 0), 0);
  int fd;
  assert_int_equal(blobstore_open_read(f->bs, a, &fd, NULL), 0);
  close(fd);
  blobstore_unpin(f->bs, a);
  assert_int_equal(stat(pa, &st), 0);
  assert_int_equal(st.st_mtime, now - 1000);
}

static void test_lru_order_at_open(void **state) {
  struct fixture *f = *state;
  enum { N = 16 };
  char hex[N][65], path[PATH_MAX];
  time_t now = time(NULL);
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  /* Ages unrelated to commit order and to name order: blob i was last
   * used (i * 7 % N) hours ago. */
  for (int i = 0; i < N; i++) {
    add_blob(f->bs, 100, 200 + (unsigned)i, hex[i], 0);
    time_t t = now - 3600 * (time_t)((i * 7) % N) - 60;
    struct timespec ts[2] = {{t, 0}, {t, 0}};
    path_of(path, f->root, hex[i], "");
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
  }
  /* Room for 10: the 6 oldest (age N-1 .. N-6 hours) must go. */
  reopen(f, 1000);
  for (int i = 0; i < N; i++) {
    int age = (i * 7) % N;
    path_of(path, f->root, hex[i], "");
    assert_int_equal(exists(path), age < N - 6);
  }
  struct blobstore_stats s;
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.blobs, N - 6);
}

/* --- threads and crashes ---------------------------------------------------- */

#define THREADS 4
#define PER_THREAD 25

struct worker {
  struct blobstore *bs;
  unsigned id;
  uint64_t bytes;
  int err;
};

static void *worker_main(void *arg) {
  struct worker *w = arg;
  for (unsigned i = 0; i < PER_THREAD && !w->err; i++) {
    char hex[65];
    size_t n = 1000 + (w->id * 7919 + i * 104729) % 30000;
    unsigned char *p = blob(n, 1000 + w->id * 100 + i, hex);
    int r = commit(w->bs, p, n, hex, i % 2 ? n : 0, i % 3 ? NULL : "a/b");
    if (r)
      w->err = r;
    else
      w->bytes += n;
    /* Readers interleave with the commits of the other threads. */
    int fd;
    if (!r && blobstore_open_read(w->bs, hex, &fd, NULL) == 0) {
      close(fd);
      blobstore_unpin(w->bs, hex);
    }
    free(p);
  }
  return NULL;
}

static void run_workers(struct blobstore *bs, uint64_t *total) {
  pthread_t t[THREADS];
  struct worker w[THREADS];
  for (unsigned i = 0; i < THREADS; i++) {
    w[i] = (struct worker){.bs = bs, .id = i};
    assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
  }
  *total = 0;
  for (unsigned i = 0; i < THREADS; i++) {
    pthread_join(t[i], NULL);
    assert_int_equal(w[i].err, 0);
    *total += w[i].bytes;
  }
}

static void test_concurrent_commits(void **state) {
  struct fixture *f = *state;
  uint64_t total, disk;
  struct blobstore_stats s;
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  run_workers(f->bs, &total);
  blobstore_get_stats(f->bs, &s);
  assert_int_equal(s.blobs, THREADS * PER_THREAD);
  assert_int_equal(s.bytes, total);
  assert_int_equal(s.evictions, 0);
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);
  count_files(f->root, "blobs", &disk);
  assert_int_equal(disk, total);

  /* Again under a budget that forces evictions from every thread: the
   * index must still describe exactly what is on disk. */
  rm_rf(f->root);
  reopen(f, 200000);
  run_workers(f->bs, &total);
  blobstore_get_stats(f->bs, &s);
  assert_true(s.evictions > 0);
  assert_true(s.bytes <= 200000);
  assert_int_equal(s.bytes + s.evicted_bytes, total);
  int files = count_files(f->root, "blobs", &disk);
  assert_int_equal(disk, s.bytes);
  assert_true((uint64_t)files >= s.blobs); /* plus some .meta */
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);
  reopen(f, 200000);
  struct blobstore_stats s2;
  blobstore_get_stats(f->bs, &s2);
  assert_int_equal(s2.blobs, s.blobs);
  assert_int_equal(s2.bytes, s.bytes);
}

static void test_crash_mid_write(void **state) {
  struct fixture *f = *state;
  char hex[65];
  size_t n = 200000;
  unsigned char *p = blob(n, 90, hex);
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    struct blob_writer *w;
    if (blobstore_writer_open(f->bs, hex, n, &w) != 0 ||
        blob_writer_write(w, p, n / 2) != 0)
      _exit(1);
    _exit(0); /* no commit, no abort, no cleanup: a kill -9 */
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  uint64_t partial;
  assert_int_equal(count_files(f->root, "tmp", &partial), 1);
  assert_int_equal(partial, n / 2);
  reopen(f, 0);
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);
  assert_int_equal(count_files(f->root, "blobs", NULL), 0);
  assert_int_equal(blobstore_stat(f->bs, hex, NULL), RM_ENOTFOUND);
  /* And the blob can still be downloaded properly afterwards. */
  assert_int_equal(commit(f->bs, p, n, hex, n, NULL), 0);
  assert_int_equal(blobstore_stat(f->bs, hex, NULL), 0);
  free(p);
}

/* A file size limit makes write(2) stop short at the limit and then fail
 * with EFBIG: the writer must count exactly the bytes that landed, report
 * the error, and leave nothing behind when the commit refuses. Runs in a
 * child so the limit does not outlive the test. */
static void test_short_write(void **state) {
  struct fixture *f = *state;
  char hex[65];
  size_t n = 100000;
  unsigned char *p = blob(n, 95, hex);
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    struct blob_writer *w;
    struct rlimit rl = {.rlim_cur = 30000, .rlim_max = RLIM_INFINITY};
    signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
      _exit(10);
    if (blobstore_writer_open(f->bs, hex, n, &w) != 0)
      _exit(11);
    if (blob_writer_write(w, p, 20000) != 0)
      _exit(12);
    if (blob_writer_write(w, p + 20000, n - 20000) != UV_EFBIG)
      _exit(13);
    if (blob_writer_size(w) != 30000)
      _exit(14);
    if (blob_writer_write(w, p, 1) != UV_EFBIG) /* sticky */
      _exit(15);
    if (blob_writer_commit(w, NULL) != UV_EFBIG)
      _exit(16);
    _exit(0);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);
  assert_int_equal(count_files(f->root, "blobs", NULL), 0);
  assert_int_equal(blobstore_stat(f->bs, hex, NULL), RM_ENOTFOUND);
  free(p);
}

/* --- tags ------------------------------------------------------------------- */

static struct tag_record sample_record(void) {
  struct tag_record r = {0};
  char hex[65];
  assert_int_equal(sha256_hex("x", 1, hex), 0);
  memcpy(r.hex, hex, 65);
  snprintf(r.media_type, sizeof r.media_type, "%s", MT_MANIFEST);
  r.size = 1234;
  r.fetched_at_ms = 1764273481123LL;
  return r;
}

static void test_tags(void **state) {
  struct fixture *f = *state;
  struct tag_record in = sample_record(), out;
  char path[PATH_MAX], buf[512];
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  assert_int_equal(tagstore_get(f->bs, "docker.io", "library/nginx", "latest", &out),
                   RM_ENOTFOUND);
  assert_int_equal(tagstore_put(f->bs, "docker.io", "library/nginx", "latest", &in), 0);
  memset(&out, 0x55, sizeof out);
  assert_int_equal(tagstore_get(f->bs, "docker.io", "library/nginx", "latest", &out), 0);
  assert_string_equal(out.hex, in.hex);
  assert_string_equal(out.media_type, in.media_type);
  assert_int_equal(out.size, in.size);
  assert_int_equal(out.fetched_at_ms, in.fetched_at_ms);

  snprintf(path, sizeof path, "%s/tags/docker.io/library/nginx/_tags/latest", f->root);
  int fd = open(path, O_RDONLY);
  assert_true(fd >= 0);
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  assert_true(n > 0);
  buf[n] = '\0';
  char want[512];
  snprintf(want, sizeof want, "sha256:%s\n%s\n1234\n1764273481123\n", in.hex,
           MT_MANIFEST);
  assert_string_equal(buf, want);

  /* Overwrite, empty media type, negative time. */
  in.media_type[0] = '\0';
  in.fetched_at_ms = -5;
  in.size = UINT64_MAX;
  assert_int_equal(tagstore_put(f->bs, "docker.io", "library/nginx", "latest", &in), 0);
  assert_int_equal(tagstore_get(f->bs, "docker.io", "library/nginx", "latest", &out), 0);
  assert_string_equal(out.media_type, "");
  assert_int_equal(out.fetched_at_ms, -5);
  assert_true(out.size == UINT64_MAX);
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);

  /* A bad record is refused. */
  struct tag_record bad = sample_record();
  bad.hex[3] = 'G';
  assert_int_equal(tagstore_put(f->bs, "u", "n", "t", &bad), RM_EPARSE);
  bad = sample_record();
  snprintf(bad.media_type, sizeof bad.media_type, "a\nb");
  assert_int_equal(tagstore_put(f->bs, "u", "n", "t", &bad), RM_EPARSE);
}

static void test_tag_components(void **state) {
  struct fixture *f = *state;
  struct tag_record in = sample_record(), out;
  static const char *const bad[][3] = {
      {"..", "n", "t"},   {"u", "a/../b", "t"}, {"u", "n", ".hidden"}, {"", "n", "t"},
      {"u", "", "t"},     {"u", "n", ""},       {".", "n", "t"},       {"u", "/abs", "t"},
      {"u", "a//b", "t"}, {"u", "a/", "t"},     {"u", "..", "t"},      {"a/b", "n", "t"},
      {"u", "n", "a/b"},  {"u", "n", ".."},     {"u", ".git/x", "t"},
  };
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(tagstore_put(f->bs, bad[i][0], bad[i][1], bad[i][2], &in),
                     RM_EPARSE);
    assert_int_equal(tagstore_get(f->bs, bad[i][0], bad[i][1], bad[i][2], &out),
                     RM_EPARSE);
  }
  char longname[400];
  memset(longname, 'a', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  assert_int_equal(tagstore_put(f->bs, "u", "n", longname, &in), RM_EPARSE);
  assert_int_equal(count_files(f->root, "tags", NULL), 0);
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);
  /* Dots inside a component are fine. */
  assert_int_equal(tagstore_put(f->bs, "ghcr.io", "a.b/c..d", "v1.2", &in), 0);
  assert_int_equal(tagstore_get(f->bs, "ghcr.io", "a.b/c..d", "v1.2", &out), 0);
}

static void check_malformed(struct fixture *f, const char *content, size_t n) {
  char path[PATH_MAX];
  struct tag_record out;
  snprintf(path, sizeof path, "%s/tags/u/n/_tags/t", f->root);
  write_file(path, content, n);
  assert_int_equal(tagstore_get(f->bs, "u", "n", "t", &out), RM_EPARSE);
  assert_false(exists(path));
  assert_int_equal(tagstore_get(f->bs, "u", "n", "t", &out), RM_ENOTFOUND);
}

static void test_tag_malformed(void **state) {
  struct fixture *f = *state;
  struct tag_record in = sample_record(), out;
  char good[512], path[PATH_MAX];
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  assert_int_equal(tagstore_put(f->bs, "u", "n", "t", &in), 0);
  int len = snprintf(good, sizeof good, "sha256:%s\n%s\n1234\n99\n", in.hex, MT_MANIFEST);

  check_malformed(f, "garbage", 7);
  check_malformed(f, "", 0);
  check_malformed(f, good, (size_t)len - 1); /* truncated */
  check_malformed(f, good, 20);
  char *big = malloc(5000);
  memset(big, 'x', 5000);
  memcpy(big, good, (size_t)len);
  check_malformed(f, big, 5000); /* over the 4 KiB bound */
  free(big);
  char mod[512];
  memcpy(mod, good, (size_t)len);
  mod[10] = 'Z'; /* not hex */
  check_malformed(f, mod, (size_t)len);
  memcpy(mod, good, (size_t)len);
  memcpy(mod, "sha512", 6);
  check_malformed(f, mod, (size_t)len);
  int k = snprintf(mod, sizeof mod, "sha256:%s\nx\n12a\n1\n", in.hex);
  check_malformed(f, mod, (size_t)k);
  k = snprintf(mod, sizeof mod, "sha256:%s\nx\n99999999999999999999\n1\n", in.hex);
  check_malformed(f, mod, (size_t)k); /* size overflows */
  k = snprintf(mod, sizeof mod, "sha256:%s\nx\n1\n1\nextra\n", in.hex);
  check_malformed(f, mod, (size_t)k);
  k = snprintf(mod, sizeof mod, "sha256:%s\nx\x01y\n1\n1\n", in.hex);
  check_malformed(f, mod, (size_t)k);
  k = snprintf(mod, sizeof mod, "sha256:%s\nx\n1\n-\n", in.hex);
  check_malformed(f, mod, (size_t)k);
  memcpy(mod, good, (size_t)len);
  mod[75] = '\0'; /* a NUL inside the media type line */
  check_malformed(f, mod, (size_t)len);

  /* The good text itself parses. */
  snprintf(path, sizeof path, "%s/tags/u/n/_tags/t", f->root);
  write_file(path, good, (size_t)len);
  assert_int_equal(tagstore_get(f->bs, "u", "n", "t", &out), 0);
  assert_int_equal(out.fetched_at_ms, 99);

  /* A directory where the tag file should be: a miss, not a crash, and a
   * put there fails cleanly. */
  snprintf(path, sizeof path, "%s/tags/u/n/_tags/dir", f->root);
  assert_int_equal(mkdir(path, 0755), 0);
  assert_int_equal(tagstore_get(f->bs, "u", "n", "dir", &out), RM_ENOTFOUND);
  assert_true(tagstore_put(f->bs, "u", "n", "dir", &in) < 0);
  assert_int_equal(count_files(f->root, "tmp", NULL), 0);
  /* Repository "n/t" and tag "t" of repository "n" do not collide. */
  assert_int_equal(tagstore_put(f->bs, "u", "n/t", "x", &in), 0);
  assert_int_equal(tagstore_get(f->bs, "u", "n/t", "x", &out), 0);
  /* A file where a name directory should be. */
  snprintf(path, sizeof path, "%s/tags/u/blocked", f->root);
  write_file(path, "x", 1);
  assert_true(tagstore_put(f->bs, "u", "blocked/r", "x", &in) < 0);
  assert_int_equal(tagstore_get(f->bs, "u", "blocked/r", "x", &out), RM_ENOTFOUND);
  /* A symlink is not ours: removed. */
  snprintf(path, sizeof path, "%s/tags/u/n/_tags/link", f->root);
  assert_int_equal(symlink("/etc/passwd", path), 0);
  assert_int_equal(tagstore_get(f->bs, "u", "n", "link", &out), RM_EPARSE);
  assert_false(exists(path));
}

/* One store per root: a second open (another process, or this one) is
 * refused while the first is open, naming the holder in the lock file, and
 * leaves the holder's tmp/ alone; a closed store frees the root. */
static void test_root_lock(void **state) {
  struct fixture *f = *state;
  char path[PATH_MAX], buf[32];
  struct blobstore *second = NULL;
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);

  snprintf(path, sizeof path, "%s/tmp/inflight", f->root);
  int fd = open(path, O_WRONLY | O_CREAT, 0644);
  assert_true(fd >= 0);
  close(fd);

  snprintf(path, sizeof path, "%s/lock", f->root);
  fd = open(path, O_RDONLY);
  assert_true(fd >= 0);
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  assert_true(n > 0);
  buf[n] = '\0';
  assert_int_equal(strtol(buf, NULL, 10), (long)getpid());

  pid_t child = fork();
  assert_true(child >= 0);
  if (child == 0) {
    struct blobstore *bs = NULL;
    _exit(blobstore_open(&bs, f->root, 0) == RM_ELOCKED ? 0 : 1);
  }
  int status = 0;
  assert_int_equal(waitpid(child, &status, 0), child);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  assert_int_equal(blobstore_open(&second, f->root, 0), RM_ELOCKED);
  assert_null(second);
  snprintf(path, sizeof path, "%s/tmp/inflight", f->root);
  assert_true(exists(path));

  blobstore_close(f->bs);
  f->bs = NULL;
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  assert_false(exists(path)); /* a real restart empties tmp/ */
}

/* --- durable pins, verify, the admin's listings --------------------------- */

static void test_durable_pin(void **state) {
  struct fixture *f = *state;
  char a[65], b[65], c[65], later[65];
  assert_int_equal(blobstore_open(&f->bs, f->root, 250), 0);
  add_blob(f->bs, 100, 40, a, 100);
  add_blob(f->bs, 100, 41, b, 100);
  /* the pin names a digest not cached yet too: kept once it lands */
  unsigned char *lp = blob(100, 43, later);
  free(lp);
  char set[2][65];
  memcpy(set[0], a, 65);
  memcpy(set[1], later, 65);
  assert_int_equal(blobstore_pin_set(f->bs, "docker.io/library/a:1", (const char(*)[65])set, 2), 0);
  assert_true(blobstore_pinned(f->bs, a));
  assert_false(blobstore_pinned(f->bs, b));
  assert_int_equal(blobstore_remove(f->bs, a), UV_EPERM);
  add_blob(f->bs, 100, 42, c, 100); /* a is LRU but pinned: b goes */
  assert_int_equal(blobstore_stat(f->bs, a, NULL), 0);
  assert_int_equal(blobstore_stat(f->bs, b, NULL), RM_ENOTFOUND);
  struct blobstore_stats st;
  blobstore_get_stats(f->bs, &st);
  assert_int_equal(st.kept_bytes, 100);

  /* survives a reopen; the list says which blobs are pinned */
  reopen(f, 250);
  assert_true(blobstore_pinned(f->bs, a));
  assert_true(blobstore_pinned(f->bs, later));
  struct blob_listing *v;
  size_t n;
  assert_int_equal(blobstore_list(f->bs, &v, &n), 0);
  assert_int_equal(n, 2);
  for (size_t i = 0; i < n; i++)
    assert_int_equal(v[i].pinned, strcmp(v[i].hex, a) == 0);
  free(v);
  struct blobstore_pin *pins;
  assert_int_equal(blobstore_pins(f->bs, &pins, &n), 0);
  assert_int_equal(n, 1);
  assert_string_equal(pins[0].name, "docker.io/library/a:1");
  assert_int_equal(pins[0].n, 2);
  blobstore_pins_free(pins, n);

  /* replacing the pin moves the claim; clearing it lets eviction in */
  assert_int_equal(blobstore_pin_set(f->bs, "docker.io/library/a:1", (const char(*)[65])set + 1, 1), 0);
  assert_false(blobstore_pinned(f->bs, a));
  assert_int_equal(blobstore_pin_clear(f->bs, "docker.io/library/a:1"), 0);
  assert_int_equal(blobstore_pin_clear(f->bs, "docker.io/library/a:1"), RM_ENOTFOUND);
  assert_false(blobstore_pinned(f->bs, later));
  assert_int_equal(blobstore_pin_set(f->bs, "bad\nname", NULL, 0), RM_EPARSE);
  assert_int_equal(count_files(f->root, "pins", NULL), 0);
}

static void test_pin_file_parse(void **state) {
  (void)state;
  struct blobstore_pin p;
  const char ok[] = "regmesh-pin 1\nname x/y:z\nsha256:"
                    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
  assert_int_equal(storage_pin_parse(ok, sizeof ok - 1, &p), 0);
  assert_string_equal(p.name, "x/y:z");
  assert_int_equal(p.n, 1);
  free(p.hex);
  /* truncated last line, bad digest, wrong magic, empty name: refused */
  assert_int_equal(storage_pin_parse(ok, sizeof ok - 2, &p), RM_EPARSE);
  assert_null(p.hex);
  const char bad[] = "regmesh-pin 1\nname x\nsha256:zz\n";
  assert_int_equal(storage_pin_parse(bad, sizeof bad - 1, &p), RM_EPARSE);
  assert_int_equal(storage_pin_parse("regmesh-pin 2\nname x\n", 21, &p), RM_EPARSE);
  assert_int_equal(storage_pin_parse("regmesh-pin 1\nname \n", 21, &p), RM_EPARSE);
}

static void test_verify_quarantines(void **state) {
  struct fixture *f = *state;
  char a[65], b[65], path[PATH_MAX];
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  add_blob(f->bs, 5000, 50, a, 0);
  add_blob(f->bs, 5000, 51, b, 0);
  uint64_t hashed;
  assert_int_equal(blobstore_verify(f->bs, a, &hashed), 0);
  assert_int_equal(hashed, 5000);
  /* one byte changed behind the store's back */
  path_of(path, f->root, b, "");
  int fd = open(path, O_WRONLY);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, "x", 1, 2500), 1);
  close(fd);
  /* while it is being read it stays (its reader owns the entry) */
  int rfd;
  assert_int_equal(blobstore_open_read(f->bs, b, &rfd, NULL), 0);
  assert_int_equal(blobstore_verify(f->bs, b, &hashed), UV_EBUSY);
  close(rfd);
  blobstore_unpin(f->bs, b);
  assert_int_equal(blobstore_verify(f->bs, b, &hashed), RM_EDIGEST);
  assert_false(exists(path));
  assert_int_equal(blobstore_stat(f->bs, b, NULL), RM_ENOTFOUND);
  assert_int_equal(count_files(f->root, "quarantine", NULL), 1);
  struct blobstore_stats st;
  blobstore_get_stats(f->bs, &st);
  assert_int_equal(st.bytes, 5000);
  assert_int_equal(blobstore_verify(f->bs, b, &hashed), RM_ENOTFOUND);
  /* a fresh commit of the same digest is served again */
  add_blob(f->bs, 5000, 51, b, 0);
  assert_int_equal(blobstore_verify(f->bs, b, &hashed), 0);
}

static int collect_tags(const char *up, const char *name, const char *tag,
                        const struct tag_record *rec, void *ud) {
  char *out = ud;
  (void)rec;
  snprintf(out + strlen(out), 512 - strlen(out), "%s|%s|%s;", up, name, tag);
  return 0;
}

static void test_tag_walk_and_remove(void **state) {
  struct fixture *f = *state;
  assert_int_equal(blobstore_open(&f->bs, f->root, 0), 0);
  struct tag_record rec = {.size = 3, .fetched_at_ms = 1};
  memset(rec.hex, 'a', 64);
  assert_int_equal(tagstore_put(f->bs, "docker.io", "a/b", "1", &rec), 0);
  assert_int_equal(tagstore_put(f->bs, "docker.io", "a/b/c", "2", &rec), 0);
  assert_int_equal(tagstore_put(f->bs, "ghcr.io", "x", "3@v", &rec), 0);
  char seen[512] = "";
  assert_int_equal(tagstore_each(f->bs, collect_tags, seen), 0);
  assert_non_null(strstr(seen, "docker.io|a/b|1;"));
  assert_non_null(strstr(seen, "docker.io|a/b/c|2;"));
  assert_non_null(strstr(seen, "ghcr.io|x|3@v;"));
  assert_int_equal(tagstore_remove(f->bs, "docker.io", "a/b", "1"), 0);
  assert_int_equal(tagstore_remove(f->bs, "docker.io", "a/b", "1"), RM_ENOTFOUND);
  assert_int_equal(tagstore_remove(f->bs, "docker.io", "../x", "1"), RM_EPARSE);
  seen[0] = '\0';
  assert_int_equal(tagstore_each(f->bs, collect_tags, seen), 0);
  assert_null(strstr(seen, "a/b|1;"));
  assert_non_null(strstr(seen, "a/b/c|2;"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
      T(test_round_trip),
      T(test_root_lock),
      T(test_empty_blob),
      T(test_digest_mismatch),
      T(test_verify_then_commit),
      T(test_deferred_hash),
      T(test_abort),
      T(test_restart),
      T(test_lru_eviction),
      T(test_pinned_not_evicted),
      T(test_enospace),
      T(test_meta),
      T(test_invalid_names_ignored),
      T(test_corrupt_on_disk),
      T(test_lru_survives_restart),
      T(test_lru_order_at_open),
      T(test_concurrent_commits),
      T(test_crash_mid_write),
      T(test_short_write),
      T(test_tags),
      T(test_tag_components),
      T(test_tag_malformed),
      T(test_durable_pin),
      T(test_verify_quarantines),
      T(test_tag_walk_and_remove),
      cmocka_unit_test(test_pin_file_parse),
#undef T
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
