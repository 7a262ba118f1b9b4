/* config_file.c - reading a configuration-side file whole, with a bound.
 *
 * The config and the htpasswd file are read the same way: all of it into
 * one heap buffer, at most one byte past the limit, so a file that is too
 * big (or a pipe, or /dev/zero) is refused without reading it all. Files a
 * configuration names (htpasswd) must be regular files, opened without
 * blocking: a FIFO there would hang a load; the configuration itself may
 * come from a pipe (`check-config <(...)`). The
 * buffer is wiped before it is freed on error, since it may hold password
 * hashes.
 */
#include "config.h"
#include "config_internal.h"

#include "errors.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

static int read_file(const char *path, size_t max, int regular_only, char **out,
                     size_t *outlen, char *err, size_t errlen) {
  char ebuf[128], dummy[1];
  size_t cap = 4096, len = 0;
  char *buf = NULL;
  int fd, rc = 0;

  *out = NULL;
  *outlen = 0;
  if (err == NULL || errlen == 0) {
    err = dummy;
    errlen = sizeof dummy;
  }
  do
    fd = open(path, O_RDONLY | O_CLOEXEC | (regular_only ? O_NONBLOCK : 0));
  while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    rc = -errno;
    snprintf(err, errlen, "%s: %s", path, strerror_r(-rc, ebuf, sizeof ebuf));
    return rc;
  }
  struct stat sb;
  int st_ok = !regular_only || fstat(fd, &sb) == 0;
  if (regular_only && (!st_ok || !S_ISREG(sb.st_mode))) {
    /* a FIFO or a device would hang the read */
    int dir = st_ok && S_ISDIR(sb.st_mode);
    close(fd);
    rc = dir ? UV_EISDIR : UV_EINVAL;
    snprintf(err, errlen, "%s: %s", path, dir ? "Is a directory" : "not a regular file");
    return rc;
  }
  for (;;) {
    if (buf == NULL || len == cap) {
      size_t ncap = buf == NULL ? cap : cap * 2;
      if (ncap > max + 1)
        ncap = max + 1;
      char *nbuf = realloc(buf, ncap);
      if (nbuf == NULL) {
        rc = UV_ENOMEM;
        snprintf(err, errlen, "%s: out of memory", path);
        break;
      }
      buf = nbuf;
      cap = ncap;
    }
    ssize_t r = read(fd, buf + len, cap - len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      rc = -errno;
      snprintf(err, errlen, "%s: %s", path,
               strerror_r(-rc, ebuf, sizeof ebuf));
      break;
    }
    if (r == 0)
      break;
    len += (size_t)r;
    if (len > max) {
      rc = RM_ECONFIG;
      snprintf(err, errlen, "%s: file is larger than %zu bytes", path, max);
      break;
    }
  }
  close(fd);
  if (rc != 0) {
    if (buf != NULL)
      OPENSSL_cleanse(buf, len);
    free(buf);
    return rc;
  }
  *out = buf;
  *outlen = len;
  return 0;
}

int config_read_file(const char *path, size_t max, char **out, size_t *outlen,
                     char *err, size_t errlen) {
  return read_file(path, max, 0, out, outlen, err, errlen);
}

int config_read_regular_file(const char *path, size_t max, char **out, size_t *outlen,
                             char *err, size_t errlen) {
  return read_file(path, max, 1, out, outlen, err, errlen);
}
