/* blob_writer.c - downloads into tmp/, hashed as written, committed whole.
 *
 * A writer owns one exclusive temp file in tmp/ and a running SHA-256 of the
 * bytes that actually reached it. Nothing a writer does is visible under
 * blobs/ until commit has checked the digest and fsynced the data; only
 * then does storage__install rename it into place. A process killed at any
 * point leaves at most a file in tmp/, which the next open removes.
 */
#include "storage_internal.h"

#include "digest.h"
#include "errors.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <uv.h>

/* Owned by its caller from blobstore_writer_open until commit or abort. */
struct blob_writer {
  struct blobstore *bs;
  char hex[DIGEST_HEX_LEN + 1];
  int fd;            /* the temp file; -1 once closed */
  int err;           /* first write error: commit fails with it */
  uint64_t size;     /* bytes written; atomic, read by other threads */
  uint64_t reserved; /* bytes counted against the budget at open */
  struct sha256_ctx sha;
  int verified;        /* blob_writer_verify matched: the hash is final */
  int deferred;        /* hashed from the file by blob_writer_hash_step */
  int hash_fd;         /* read side for deferred hashing, or -1 */
  uint64_t hashed;     /* deferred: bytes hashed so far (hasher's own) */
  char path[PATH_MAX]; /* the temp file */
};

int blobstore_writer_open(struct blobstore *bs, const char *hex, uint64_t expected_size,
                          struct blob_writer **out) {
  if (!digest_hex_valid(hex))
    return RM_EPARSE;
  int r = storage__reserve(bs, expected_size);
  if (r) {
    LOG_W("storage: %s (%llu bytes) cannot fit the budget", hex,
          (unsigned long long)expected_size);
    return r;
  }
  /* The budget is not the disk: a blob the file system cannot hold is
   * refused before its first byte (a clean 507), not cut half-way. */
  char tmpdir[PATH_MAX];
  struct statvfs vs;
  snprintf(tmpdir, sizeof tmpdir, "%s/tmp", storage__root(bs));
  if (expected_size > 0 && statvfs(tmpdir, &vs) == 0 &&
      (uint64_t)vs.f_bavail * vs.f_frsize < expected_size) {
    LOG_W("storage: %s (%llu bytes) does not fit the free space of %s (%llu bytes)", hex,
          (unsigned long long)expected_size, tmpdir,
          (unsigned long long)vs.f_bavail * vs.f_frsize);
    storage__unreserve(bs, expected_size);
    return RM_ENOSPACE;
  }
  struct blob_writer *w = calloc(1, sizeof *w);
  if (!w) {
    storage__unreserve(bs, expected_size);
    return UV_ENOMEM;
  }
  w->bs = bs;
  w->fd = -1;
  w->hash_fd = -1;
  w->reserved = expected_size;
  memcpy(w->hex, hex, DIGEST_HEX_LEN + 1);
  r = sha256_init(&w->sha);
  if (!r) {
    w->fd = storage__create_tmp(bs, hex, w->path, sizeof w->path);
    if (w->fd < 0)
      r = w->fd;
  }
  if (r) {
    sha256_free(&w->sha);
    storage__unreserve(bs, expected_size);
    free(w);
    return r;
  }
  *out = w;
  return 0;
}

int blob_writer_write(struct blob_writer *w, const void *p, size_t n) {
  const char *c = p;
  if (w->err)
    return w->err;
  if (w->verified)
    return UV_EINVAL; /* the hash is final */
  while (n > 0) {
    ssize_t k = write(w->fd, c, n);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0) {
      w->err = k < 0 ? -errno : UV_EIO;
      return w->err;
    }
    /* Hash exactly what reached the file, so a short write followed by an
     * error still leaves hash and file in step. */
    if (!w->deferred)
      sha256_update(&w->sha, c, (size_t)k);
    c += k;
    n -= (size_t)k;
    __atomic_store_n(&w->size, w->size + (uint64_t)k, __ATOMIC_RELEASE);
  }
  return 0;
}

int blob_writer_defer_hash(struct blob_writer *w) {
  if (w->deferred)
    return 0;
  if (blob_writer_size(w) > 0 || w->verified)
    return UV_EINVAL;
  w->hash_fd = open(w->path, O_RDONLY | O_CLOEXEC);
  if (w->hash_fd < 0)
    return -errno;
  w->deferred = 1;
  return 0;
}

int64_t blob_writer_hash_step(struct blob_writer *w, size_t max) {
  static __thread char chunk[256 * 1024];
  if (!w->deferred || w->verified)
    return UV_EINVAL;
  uint64_t size = blob_writer_size(w);
  uint64_t left = size - w->hashed;
  if (left > max)
    left = max;
  uint64_t done = 0;
  while (done < left) {
    size_t want = left - done < sizeof chunk ? (size_t)(left - done) : sizeof chunk;
    ssize_t k = pread(w->hash_fd, chunk, want, (off_t)w->hashed);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      return k < 0 ? -errno : UV_EIO;
    sha256_update(&w->sha, chunk, (size_t)k);
    w->hashed += (uint64_t)k;
    done += (uint64_t)k;
  }
  return (int64_t)done;
}

uint64_t blob_writer_size(const struct blob_writer *w) {
  return __atomic_load_n(&w->size, __ATOMIC_ACQUIRE);
}

const char *blob_writer_path(const struct blob_writer *w) {
  return w->path;
}

void blob_writer_abort(struct blob_writer *w) {
  if (!w)
    return;
  if (w->fd >= 0)
    close(w->fd);
  if (w->hash_fd >= 0)
    close(w->hash_fd);
  unlink(w->path);
  sha256_free(&w->sha);
  storage__unreserve(w->bs, w->reserved);
  free(w);
}

/* write_meta_tmp writes "<media type>\n" to a fsynced file in tmp/, ready to
 * be renamed next to the blob. */
static int write_meta_tmp(struct blob_writer *w, const char *media_type, char *path,
                          size_t size) {
  char line[STORAGE_MEDIA_TYPE_MAX + 1];
  char prefix[DIGEST_HEX_LEN + 6];
  snprintf(prefix, sizeof prefix, "%s.meta", w->hex);
  int n = snprintf(line, sizeof line, "%s\n", media_type);
  int fd = storage__create_tmp(w->bs, prefix, path, size);
  if (fd < 0)
    return fd;
  int r = rm_write_all(fd, line, (size_t)n);
  if (!r && fsync(fd) != 0)
    r = -errno;
  if (close(fd) != 0 && !r)
    r = -errno;
  if (r)
    unlink(path);
  return r;
}

int blob_writer_verify(struct blob_writer *w) {
  if (w->verified)
    return 0;
  if (w->err)
    return w->err;
  if (w->deferred && w->hashed != blob_writer_size(w))
    return UV_EINVAL; /* the hasher has not caught up */
  char got[DIGEST_HEX_LEN + 1];
  sha256_final(&w->sha, got);
  if (strcmp(got, w->hex) != 0) {
    LOG_W("storage: digest mismatch for %s: got %s after %llu bytes", w->hex, got,
          (unsigned long long)w->size);
    /* The hash context is gone: no more writes, commit fails. */
    w->err = RM_EDIGEST;
    return RM_EDIGEST;
  }
  w->verified = 1;
  return 0;
}

int blob_writer_commit(struct blob_writer *w, const char *media_type) {
  char meta_tmp[PATH_MAX];
  const char *mt = media_type && *media_type ? media_type : NULL;
  int r = w->err;
  if (!r && mt && !storage__media_type_valid(mt))
    r = RM_EPARSE;
  if (r) {
    blob_writer_abort(w);
    return r;
  }
  /* A deferred hash still behind is finished here (commit may block). */
  while (w->deferred && !w->verified && w->hashed < blob_writer_size(w)) {
    int64_t k = blob_writer_hash_step(w, SIZE_MAX);
    if (k < 0) {
      blob_writer_abort(w);
      return (int)k;
    }
  }
  if (!w->verified && (r = blob_writer_verify(w)) != 0) {
    blob_writer_abort(w);
    return r;
  }
  if (fsync(w->fd) != 0) {
    r = -errno;
    blob_writer_abort(w);
    return r;
  }
  r = close(w->fd) != 0 ? -errno : 0;
  w->fd = -1;
  if (w->hash_fd >= 0) {
    close(w->hash_fd);
    w->hash_fd = -1;
  }
  if (!r && mt)
    r = write_meta_tmp(w, mt, meta_tmp, sizeof meta_tmp);
  if (r) {
    blob_writer_abort(w);
    return r;
  }
  r = storage__install(w->bs, w->hex, w->path, mt ? meta_tmp : NULL, mt, w->size,
                       w->reserved);
  free(w);
  return r;
}

int blobstore_put(struct blobstore *bs, const char *hex, const void *p, size_t n,
                  const char *media_type) {
  char got[DIGEST_HEX_LEN + 1];
  struct blob_writer *w;
  if (!digest_hex_valid(hex))
    return RM_EPARSE;
  if (media_type && !storage__media_type_valid(media_type))
    return RM_EPARSE;
  /* Check before touching the disk: a bad object must not make room for
   * itself by evicting good ones. */
  int r = sha256_hex(p, n, got);
  if (r)
    return r;
  if (strcmp(got, hex) != 0) {
    LOG_W("storage: digest mismatch for %s: got %s (%zu bytes)", hex, got, n);
    return RM_EDIGEST;
  }
  r = blobstore_writer_open(bs, hex, n, &w);
  if (r)
    return r;
  r = blob_writer_write(w, p, n);
  if (r) {
    blob_writer_abort(w);
    return r;
  }
  return blob_writer_commit(w, media_type);
}
