/* fsutil.c - blocking file-system helpers more than one library needs:
 * writes that survive short counts and EINTR, and mkdir -p. Plain POSIX;
 * callers keep them off the event loop.
 */
#include "fsutil.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

int rm_write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (w == 0) /* no progress and no error: would loop forever */
      return UV_EIO;
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

int rm_mkdir(const char *path, int *created) {
  struct stat st;
  if (created)
    *created = 0;
  if (mkdir(path, 0755) == 0) {
    if (created)
      *created = 1;
    return 0;
  }
  if (errno != EEXIST)
    return -errno;
  /* EEXIST also covers a file sitting where the directory should be. */
  if (stat(path, &st) != 0)
    return -errno;
  return S_ISDIR(st.st_mode) ? 0 : UV_ENOTDIR;
}

int rm_mkdir_p(const char *path) {
  char buf[PATH_MAX];
  size_t len = strlen(path);
  if (len == 0 || len >= sizeof buf)
    return UV_ENAMETOOLONG;
  memcpy(buf, path, len + 1);
  for (size_t i = 1; i < len; i++) {
    if (buf[i] != '/')
      continue;
    buf[i] = '\0';
    int r = rm_mkdir(buf, NULL);
    buf[i] = '/';
    if (r)
      return r;
  }
  return rm_mkdir(buf, NULL);
}
