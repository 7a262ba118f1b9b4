/* fsutil.c - the small file-system helpers storage/ is built from.
 *
 * Everything here is plain blocking POSIX I/O, meant for the thread pool or
 * for blobstore_open. The helpers exist so the rules that make the store
 * crash-safe are written once: writes survive short counts and EINTR, temp
 * files are created exclusively under names no other writer can pick, and
 * walking a directory we are about to empty never follows a symlink out of
 * the store.
 */
#include "storage_internal.h"

#include "errors.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

/* tmp/ only ever holds flat files we made; nesting deeper than this is
 * someone else's tree, and bounding it bounds our recursion. */
#define EMPTY_DIR_MAX_DEPTH 16

int storage__read_upto(int fd, char *buf, size_t cap, size_t *len) {
  size_t got = 0;
  while (got < cap) {
    ssize_t r = read(fd, buf + got, cap - got);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0)
      break;
    got += (size_t)r;
  }
  *len = got;
  return 0;
}

int storage__fsync_dir(const char *path) {
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  int r = fsync(fd) == 0 ? 0 : -errno;
  close(fd);
  return r;
}

/* empty_dirfd removes the contents of the directory open as fd and closes
 * it. Directories are entered through openat(O_NOFOLLOW), so a symlink in
 * tmp/ is unlinked, never followed. */
static int empty_dirfd(int fd, int depth) {
  DIR *d = fdopendir(fd);
  if (!d) {
    int r = -errno;
    close(fd);
    return r;
  }
  int err = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    const char *n = de->d_name;
    if (strcmp(n, ".") == 0 || strcmp(n, "..") == 0)
      continue;
    if (unlinkat(dirfd(d), n, 0) == 0)
      continue;
    if (errno != EISDIR && errno != EPERM) {
      err = -errno;
      continue;
    }
    if (depth >= EMPTY_DIR_MAX_DEPTH) {
      err = UV_ELOOP;
      continue;
    }
    int sub = openat(dirfd(d), n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub < 0) {
      err = -errno;
      continue;
    }
    int r = empty_dirfd(sub, depth + 1);
    if (r)
      err = r;
    if (unlinkat(dirfd(d), n, AT_REMOVEDIR) != 0)
      err = -errno;
  }
  closedir(d);
  return err;
}

int storage__empty_dir(const char *path) {
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  return empty_dirfd(fd, 0);
}

int storage__create_tmp(struct blobstore *bs, const char *prefix, char *path,
                        size_t size) {
  /* pid + a per-store counter is unique within this process and against a
   * forked child; EEXIST (a leftover we did not clean) just takes the next
   * number. */
  for (int tries = 0; tries < 64; tries++) {
    int n = snprintf(path, size, "%s/tmp/%s.%ld.%llu", storage__root(bs), prefix,
                     (long)getpid(), (unsigned long long)storage__next_seq(bs));
    if (n < 0 || (size_t)n >= size)
      return UV_ENAMETOOLONG;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0)
      return fd;
    if (errno != EEXIST && errno != EINTR)
      return -errno;
  }
  return UV_EEXIST;
}

int storage__media_type_valid(const char *s) {
  size_t i;
  for (i = 0; s[i]; i++) {
    if (i >= STORAGE_MEDIA_TYPE_MAX - 1)
      return 0;
    if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
      return 0;
  }
  return 1;
}
