/* tagstore.c - (upstream, name, tag) -> digest records, one small file each.
 *
 *   <root>/tags/<upstream>/<name...>/_tags/<tag>
 *
 *   sha256:<64 hex>\n
 *   <media type>\n          (may be empty)
 *   <size>\n                (decimal)
 *   <fetched_at_ms>\n       (decimal, may be negative)
 *
 * A record is only a cache of an upstream answer, so it is written with
 * tmp + rename (never torn) but not fsynced: losing one to a crash costs one
 * upstream request. Components come from request paths, so each one is
 * checked here again to never leave tags/; a record that fails to parse is
 * removed and reported as RM_EPARSE, so the caller refetches it.
 *
 * The "_tags" directory keeps tag files apart from nested repositories
 * ("a/b" tag "c" vs. repository "a/b/c"): no name component may start with
 * '_', so it can never be a repository's directory.
 */
#include "storage_internal.h"

#include "digest.h"
#include "errors.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#define TAG_FILE_MAX 4096
#define COMPONENT_MAX 255 /* NAME_MAX on the file systems we run on */

/* segment_ok: one path component that stays in its directory: not empty,
 * no leading '.' (covers "." and ".."), no '/', fits a file name. */
static int segment_ok(const char *s, size_t n) {
  return n > 0 && n <= COMPONENT_MAX && s[0] != '.' && !memchr(s, '/', n);
}

/* name_ok: '/'-separated segments, each segment_ok ("a//b", "/a", "a/"
 * have an empty one). */
static int name_ok(const char *name) {
  const char *p = name;
  for (;;) {
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (!segment_ok(p, n))
      return 0;
    if (!slash)
      return 1;
    p = slash + 1;
  }
}

static int tag_path(struct blobstore *bs, const char *upstream, const char *name,
                    const char *tag, char *buf, size_t size) {
  if (!upstream || !name || !tag || !segment_ok(upstream, strlen(upstream)) ||
      !name_ok(name) || !segment_ok(tag, strlen(tag)))
    return RM_EPARSE;
  int n = snprintf(buf, size, "%s/tags/%s/%s/_tags/%s", storage__root(bs), upstream, name, tag);
  return (n < 0 || (size_t)n >= size) ? RM_EPARSE : 0;
}

/* next_line returns the line at *pos (without its '\n') and moves past it.
 * A last line without '\n' is a truncated file: RM_EPARSE. */
static int next_line(const char **pos, const char *end, const char **s, size_t *n) {
  const char *nl = memchr(*pos, '\n', (size_t)(end - *pos));
  if (!nl)
    return RM_EPARSE;
  *s = *pos;
  *n = (size_t)(nl - *pos);
  *pos = nl + 1;
  return 0;
}

static int parse_u64(const char *s, size_t n, uint64_t *out) {
  uint64_t v = 0;
  if (n == 0 || n > 20)
    return RM_EPARSE;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return RM_EPARSE;
    unsigned d = (unsigned)(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10)
      return RM_EPARSE;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}

static int parse_i64(const char *s, size_t n, int64_t *out) {
  uint64_t v;
  int neg = n > 0 && s[0] == '-';
  if (parse_u64(s + neg, n - (size_t)neg, &v))
    return RM_EPARSE;
  if (v > (uint64_t)INT64_MAX + (uint64_t)neg)
    return RM_EPARSE;
  *out = neg ? (int64_t)(0 - v) : (int64_t)v;
  return 0;
}

static int parse_record(const char *buf, size_t len, struct tag_record *out) {
  const char *pos = buf, *end = buf + len, *s;
  size_t n;
  struct tag_record rec;
  if (next_line(&pos, end, &s, &n) || digest_parse(s, n, rec.hex))
    return RM_EPARSE;
  if (next_line(&pos, end, &s, &n) || n >= sizeof rec.media_type)
    return RM_EPARSE;
  memcpy(rec.media_type, s, n);
  rec.media_type[n] = '\0';
  if (strlen(rec.media_type) != n || !storage__media_type_valid(rec.media_type))
    return RM_EPARSE; /* an embedded NUL or a control byte */
  if (next_line(&pos, end, &s, &n) || parse_u64(s, n, &rec.size))
    return RM_EPARSE;
  if (next_line(&pos, end, &s, &n) || parse_i64(s, n, &rec.fetched_at_ms))
    return RM_EPARSE;
  if (pos != end)
    return RM_EPARSE;
  *out = rec;
  return 0;
}

int tagstore_get(struct blobstore *bs, const char *upstream, const char *name,
                 const char *tag, struct tag_record *out) {
  char path[PATH_MAX];
  char buf[TAG_FILE_MAX + 1];
  size_t len = 0;
  struct stat st;
  int r = tag_path(bs, upstream, name, tag, path, sizeof path);
  if (r)
    return r;
  /* O_NOFOLLOW: we never create symlinks here; O_NONBLOCK: a FIFO must not
   * hang the caller. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT || errno == ENOTDIR)
      return RM_ENOTFOUND;
    if (errno != ELOOP)
      return -errno;
    r = RM_EPARSE; /* a symlink */
  } else {
    if (fstat(fd, &st) != 0)
      r = -errno;
    else if (S_ISDIR(st.st_mode))
      r = RM_ENOTFOUND; /* a repository directory, see the note on top */
    else if (!S_ISREG(st.st_mode))
      r = RM_EPARSE;
    else
      r = storage__read_upto(fd, buf, sizeof buf, &len);
    close(fd);
    if (!r && (len > TAG_FILE_MAX || parse_record(buf, len, out) != 0))
      r = RM_EPARSE;
  }
  if (r == RM_EPARSE) {
    LOG_W("storage: removing malformed tag record %s/%s:%s", upstream, name, tag);
    unlink(path);
  }
  return r;
}

int tagstore_put(struct blobstore *bs, const char *upstream, const char *name,
                 const char *tag, const struct tag_record *rec) {
  char path[PATH_MAX], tmp[PATH_MAX];
  char text[TAG_FILE_MAX];
  int r = tag_path(bs, upstream, name, tag, path, sizeof path);
  if (r)
    return r;
  if (!memchr(rec->hex, '\0', sizeof rec->hex) || !digest_hex_valid(rec->hex) ||
      !memchr(rec->media_type, '\0', sizeof rec->media_type) ||
      !storage__media_type_valid(rec->media_type))
    return RM_EPARSE;
  int n = snprintf(text, sizeof text, "sha256:%s\n%s\n%" PRIu64 "\n%" PRId64 "\n",
                   rec->hex, rec->media_type, rec->size, rec->fetched_at_ms);
  if (n < 0 || (size_t)n >= sizeof text)
    return RM_EPARSE;

  /* The parent of the tag file: tags/<upstream>/<name...>/_tags. */
  char *slash = strrchr(path, '/');
  *slash = '\0';
  r = rm_mkdir_p(path);
  *slash = '/';
  if (r)
    return r;

  int fd = storage__create_tmp(bs, "tag", tmp, sizeof tmp);
  if (fd < 0)
    return fd;
  r = rm_write_all(fd, text, (size_t)n);
  if (close(fd) != 0 && !r)
    r = -errno;
  if (!r && rename(tmp, path) != 0)
    r = -errno;
  if (r)
    unlink(tmp);
  return r;
}

int tagstore_remove(struct blobstore *bs, const char *upstream, const char *name,
                    const char *tag) {
  char path[PATH_MAX];
  int r = tag_path(bs, upstream, name, tag, path, sizeof path);
  if (r)
    return r;
  if (unlink(path) != 0)
    return errno == ENOENT || errno == ENOTDIR || errno == EISDIR ? RM_ENOTFOUND : -errno;
  return 0;
}

/* A name has at most REF_NAME_MAX (255) bytes, so at most 128 components. */
#define WALK_MAX_DEPTH 128

struct walk {
  struct blobstore *bs;
  tagstore_each_fn fn;
  void *ud;
  char upstream[COMPONENT_MAX + 1];
  char name[PATH_MAX];
};

static int walk_tags_dir(struct walk *w, const char *dir) {
  DIR *d = opendir(dir);
  if (!d)
    return 0; /* raced with a removal: nothing to report */
  struct dirent *de;
  int r = 0;
  while (!r && (de = readdir(d)) != NULL) {
    struct tag_record rec;
    if (de->d_name[0] == '.')
      continue;
    if (tagstore_get(w->bs, w->upstream, w->name, de->d_name, &rec) == 0)
      r = w->fn(w->upstream, w->name, de->d_name, &rec, w->ud);
  }
  closedir(d);
  return r;
}

/* walk_names descends tags/<upstream>/<name...>: `name` holds the
 * components so far; a "_tags" directory holds that name's records. */
static int walk_names(struct walk *w, const char *dir, size_t name_len, int depth) {
  if (depth > WALK_MAX_DEPTH)
    return 0;
  DIR *d = opendir(dir);
  if (!d)
    return 0;
  struct dirent *de;
  int r = 0;
  char sub[PATH_MAX];
  while (!r && (de = readdir(d)) != NULL) {
    if (de->d_name[0] == '.')
      continue;
    int n = snprintf(sub, sizeof sub, "%s/%s", dir, de->d_name);
    if (n < 0 || (size_t)n >= sizeof sub)
      continue;
    struct stat st;
    if (lstat(sub, &st) != 0 || !S_ISDIR(st.st_mode))
      continue;
    if (strcmp(de->d_name, "_tags") == 0) {
      if (name_len > 0)
        r = walk_tags_dir(w, sub);
      continue;
    }
    size_t add = strlen(de->d_name) + (name_len ? 1 : 0);
    if (name_len + add >= sizeof w->name)
      continue;
    snprintf(w->name + name_len, sizeof w->name - name_len, "%s%s", name_len ? "/" : "",
             de->d_name);
    r = walk_names(w, sub, name_len + add, depth + 1);
    w->name[name_len] = '\0';
  }
  closedir(d);
  return r;
}

int tagstore_each(struct blobstore *bs, tagstore_each_fn fn, void *ud) {
  char root[PATH_MAX], sub[PATH_MAX];
  struct walk w = {.bs = bs, .fn = fn, .ud = ud};
  snprintf(root, sizeof root, "%s/tags", storage__root(bs));
  DIR *d = opendir(root);
  if (!d)
    return -errno;
  struct dirent *de;
  int r = 0;
  while (!r && (de = readdir(d)) != NULL) {
    if (!segment_ok(de->d_name, strlen(de->d_name)) || strlen(de->d_name) >= sizeof w.upstream)
      continue;
    snprintf(w.upstream, sizeof w.upstream, "%s", de->d_name);
    int n = snprintf(sub, sizeof sub, "%s/%s", root, de->d_name);
    if (n < 0 || (size_t)n >= sizeof sub)
      continue;
    w.name[0] = '\0';
    r = walk_names(&w, sub, 0, 0);
  }
  closedir(d);
  return r;
}
