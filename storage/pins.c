/* pins.c - durable pins: named sets of digests that eviction never takes.
 *
 *   <root>/pins/<sha256 of the name>
 *
 *   regmesh-pin 1\n
 *   name <name>\n
 *   sha256:<hex>\n            (one per digest, at most STORAGE_PIN_MAX_DIGESTS)
 *
 * An operator who pins an image expects it to survive restarts, so a pin is
 * written like a blob (temp file, fsync, rename, fsync of the directory) and
 * read back at open. The file name is the hash of the pin's name, which may
 * hold '/' and ':' (an image reference). blobstore.c counts, per digest, how
 * many pins name it; this file keeps that count in step with the files,
 * one change at a time under pin_mu.
 */
#include "storage_internal.h"
#include "digest.h"
#include "errors.h"
#include "log.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#define PIN_MAGIC "regmesh-pin 1\n"
/* magic + name line + one line per digest */
#define PIN_FILE_MAX                                                                     \
  (sizeof PIN_MAGIC + 6 + STORAGE_PIN_NAME_MAX + (size_t)STORAGE_PIN_MAX_DIGESTS * 72)

static int name_valid(const char *s, size_t n) {
  if (n == 0 || n > STORAGE_PIN_NAME_MAX)
    return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
      return 0;
  return 1;
}

int storage_pin_parse(const char *buf, size_t len, struct blobstore_pin *out) {
  const char *p = buf, *end = buf + len;
  memset(out, 0, sizeof *out);
  if (len > PIN_FILE_MAX)
    return RM_ETOOBIG;
  size_t ml = sizeof PIN_MAGIC - 1;
  if (len < ml || memcmp(p, PIN_MAGIC, ml) != 0)
    return RM_EPARSE;
  p += ml;
  const char *nl = memchr(p, '\n', (size_t)(end - p));
  if (!nl || nl - p < 5 || memcmp(p, "name ", 5) != 0 || !name_valid(p + 5, (size_t)(nl - p - 5)))
    return RM_EPARSE;
  memcpy(out->name, p + 5, (size_t)(nl - p - 5));
  out->name[nl - p - 5] = '\0';
  p = nl + 1;
  size_t lines = 0;
  for (const char *q = p; q < end; q++)
    lines += *q == '\n';
  if (lines > STORAGE_PIN_MAX_DIGESTS)
    return RM_ETOOBIG;
  out->hex = calloc(lines ? lines : 1, sizeof *out->hex);
  if (!out->hex)
    return UV_ENOMEM;
  while (p < end) {
    nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl || digest_parse(p, (size_t)(nl - p), out->hex[out->n]) != 0) {
      free(out->hex);
      out->hex = NULL;
      out->n = 0;
      return RM_EPARSE;
    }
    out->n++;
    p = nl + 1;
  }
  return 0;
}

static int pin_path(struct blobstore *bs, const char *name, const char *suffix, char *buf,
                    size_t size) {
  char h[DIGEST_HEX_LEN + 1];
  int r = sha256_hex(name, strlen(name), h);
  if (r)
    return r;
  int n = snprintf(buf, size, "%s/pins/%s%s", storage__root(bs), h, suffix);
  return (n < 0 || (size_t)n >= size) ? UV_ENAMETOOLONG : 0;
}

static int join(char *buf, size_t size, const char *dir, const char *name) {
  int n = snprintf(buf, size, "%s/%s", dir, name);
  return (n < 0 || (size_t)n >= size) ? UV_ENAMETOOLONG : 0;
}

/* read_pin loads one pin file; RM_ENOTFOUND when there is none. */
static int read_pin(const char *path, struct blobstore_pin *out) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0)
    return errno == ENOENT ? RM_ENOTFOUND : -errno;
  struct stat st;
  int r = fstat(fd, &st) != 0 ? -errno : !S_ISREG(st.st_mode) ? RM_EPARSE : 0;
  char *buf = NULL;
  size_t len = 0;
  if (!r && (uint64_t)st.st_size > PIN_FILE_MAX)
    r = RM_ETOOBIG;
  if (!r && !(buf = malloc((size_t)st.st_size + 2)))
    r = UV_ENOMEM;
  if (!r)
    r = storage__read_upto(fd, buf, (size_t)st.st_size + 1, &len);
  close(fd);
  if (!r)
    r = len > PIN_FILE_MAX ? RM_ETOOBIG : storage_pin_parse(buf, len, out);
  free(buf);
  return r;
}

int storage__pins_load(struct blobstore *bs) {
  char dir[PATH_MAX], path[PATH_MAX];
  snprintf(dir, sizeof dir, "%s/pins", storage__root(bs));
  int r = rm_mkdir_p(dir);
  if (r) {
    LOG_E("storage: cannot create %s: %s", dir, rm_strerror(r));
    return r;
  }
  DIR *d = opendir(dir);
  if (!d)
    return -errno;
  size_t pins = 0, digests = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    if (!digest_hex_valid(de->d_name)) {
      /* a temp file of a pin write that a crash cut short */
      if (strstr(de->d_name, ".tmp") && join(path, sizeof path, dir, de->d_name) == 0)
        unlink(path);
      continue;
    }
    if (join(path, sizeof path, dir, de->d_name) != 0)
      continue;
    struct blobstore_pin p;
    int pr = read_pin(path, &p);
    if (pr) {
      LOG_W("storage: ignoring pin file %s: %s", path, rm_strerror(pr));
      continue;
    }
    storage__keep_adjust(bs, (const char(*)[65])p.hex, p.n, +1);
    pins++;
    digests += p.n;
    free(p.hex);
  }
  closedir(d);
  if (pins)
    LOG_I("storage: %zu pins naming %zu digests", pins, digests);
  return 0;
}

int blobstore_pin_set(struct blobstore *bs, const char *name, const char (*hex)[65],
                      size_t n) {
  char path[PATH_MAX], tmp[PATH_MAX], dir[PATH_MAX];
  if (!name || !name_valid(name, strlen(name)))
    return RM_EPARSE;
  if (n > STORAGE_PIN_MAX_DIGESTS)
    return RM_ETOOBIG;
  for (size_t i = 0; i < n; i++)
    if (!digest_hex_valid(hex[i]))
      return RM_EPARSE;
  int r = pin_path(bs, name, "", path, sizeof path);
  if (!r)
    r = pin_path(bs, name, ".tmp", tmp, sizeof tmp);
  if (r)
    return r;
  snprintf(dir, sizeof dir, "%s/pins", storage__root(bs));

  size_t cap = sizeof PIN_MAGIC + 6 + strlen(name) + n * 72;
  char *text = malloc(cap);
  if (!text)
    return UV_ENOMEM;
  size_t len = (size_t)snprintf(text, cap, PIN_MAGIC "name %s\n", name);
  for (size_t i = 0; i < n; i++)
    len += (size_t)snprintf(text + len, cap - len, "sha256:%s\n", hex[i]);

  storage__pin_lock(bs);
  struct blobstore_pin old = {.n = 0};
  int had = read_pin(path, &old) == 0;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  r = fd < 0 ? -errno : 0;
  if (!r)
    r = rm_write_all(fd, text, len);
  if (!r && fsync(fd) != 0)
    r = -errno;
  if (fd >= 0)
    close(fd);
  if (!r && rename(tmp, path) != 0)
    r = -errno;
  if (r) {
    unlink(tmp);
  } else {
    int fr = storage__fsync_dir(dir);
    if (fr)
      LOG_W("storage: fsync of %s failed: %s", dir, rm_strerror(fr));
    /* claim the new set before dropping the old: a digest in both is
     * never evictable in between */
    storage__keep_adjust(bs, hex, n, +1);
    if (had)
      storage__keep_adjust(bs, (const char(*)[65])old.hex, old.n, -1);
  }
  storage__pin_unlock(bs);
  free(old.hex);
  free(text);
  return r;
}

int blobstore_pin_clear(struct blobstore *bs, const char *name) {
  char path[PATH_MAX], dir[PATH_MAX];
  if (!name || !name_valid(name, strlen(name)))
    return RM_EPARSE;
  int r = pin_path(bs, name, "", path, sizeof path);
  if (r)
    return r;
  snprintf(dir, sizeof dir, "%s/pins", storage__root(bs));
  storage__pin_lock(bs);
  struct blobstore_pin old = {.n = 0};
  r = read_pin(path, &old);
  if (r == 0 && strcmp(old.name, name) != 0)
    r = RM_ENOTFOUND; /* a hash collision is not this pin */
  if (r == 0) {
    if (unlink(path) != 0) {
      r = -errno;
    } else {
      storage__fsync_dir(dir);
      storage__keep_adjust(bs, (const char(*)[65])old.hex, old.n, -1);
    }
  }
  free(old.hex);
  storage__pin_unlock(bs);
  return r;
}

void blobstore_pins_free(struct blobstore_pin *p, size_t n) {
  for (size_t i = 0; p && i < n; i++)
    free(p[i].hex);
  free(p);
}

int blobstore_pins(struct blobstore *bs, struct blobstore_pin **out, size_t *n) {
  char dir[PATH_MAX], path[PATH_MAX];
  struct blobstore_pin *v = NULL;
  size_t cnt = 0, cap = 0;
  snprintf(dir, sizeof dir, "%s/pins", storage__root(bs));
  *out = NULL;
  *n = 0;
  storage__pin_lock(bs);
  DIR *d = opendir(dir);
  if (!d) {
    int e = errno;
    storage__pin_unlock(bs);
    return e == ENOENT ? 0 : -e;
  }
  int r = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    if (!digest_hex_valid(de->d_name))
      continue;
    if (cnt == cap) {
      size_t nc = cap ? cap * 2 : 8;
      struct blobstore_pin *nv = realloc(v, nc * sizeof *nv);
      if (!nv) {
        r = UV_ENOMEM;
        break;
      }
      v = nv;
      cap = nc;
    }
    if (join(path, sizeof path, dir, de->d_name) == 0 && read_pin(path, &v[cnt]) == 0)
      cnt++;
  }
  closedir(d);
  storage__pin_unlock(bs);
  if (r) {
    blobstore_pins_free(v, cnt);
    return r;
  }
  *out = v;
  *n = cnt;
  return 0;
}
