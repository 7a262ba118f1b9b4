/* cache.c - the admin API's cache jobs: list, stat, remove, pin, verify.
 *
 * An image in the cache is a tag record (tags/) naming a manifest, and the
 * manifests, configs and layers that manifest reaches. The store itself only
 * knows blobs; this file walks manifests to give an operator images: their
 * size, whether they are whole, and, for rm and pin, exactly which blobs
 * belong to them. rm keeps blobs that another cached image or a pin still
 * needs; pin names every digest the image reaches, cached or not yet, so a
 * layer fetched later is kept too. Everything here blocks and runs on
 * libuv's thread pool (cache.h).
 */
#include "cache.h"

#include "config.h"
#include "digest.h"
#include "errors.h"
#include "log.h"
#include "manifest.h"
#include "reference.h"
#include "route.h"
#include "storage.h"
#include "strmap.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

/* manifests larger than this are not parsed (the registry's own limit) */
#define MANIFEST_PARSE_MAX (4u << 20)
/* an index of indexes of manifests is as deep as images go */
#define CLOSURE_MAX_DEPTH 4

int cache_job_new(struct cache_job **out, struct blobstore *bs, const struct config *cfg,
                  enum cache_op op, const char *arg, const char *upstream) {
  struct cache_job *j = calloc(1, sizeof *j);
  if (!j)
    return UV_ENOMEM;
  j->bs = bs;
  j->op = op;
  snprintf(j->arg, sizeof j->arg, "%s", arg ? arg : "");
  snprintf(j->upstream, sizeof j->upstream, "%s", upstream ? upstream : "");
  j->hosts = calloc(cfg->n_upstreams ? cfg->n_upstreams : 1, sizeof *j->hosts);
  if (!j->hosts) {
    free(j);
    return UV_ENOMEM;
  }
  for (size_t i = 0; i < cfg->n_upstreams; i++) {
    j->hosts[i] = strdup(cfg->upstreams[i].host);
    if (!j->hosts[i]) {
      j->n_hosts = i;
      cache_job_free(j);
      return UV_ENOMEM;
    }
    if (cfg->upstreams[i].is_default)
      j->default_up = i;
  }
  j->n_hosts = cfg->n_upstreams;
  *out = j;
  return 0;
}

void cache_job_free(struct cache_job *j) {
  if (!j)
    return;
  for (size_t i = 0; i < j->n_hosts; i++)
    free(j->hosts[i]);
  free(j->hosts);
  free(j->body);
  free(j);
}

/* ---- answers ------------------------------------------------------------- */

static void reply(struct cache_job *j, int status, json_t *doc) {
  free(j->body);
  j->body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  j->status = j->body ? status : 500;
}

static void fail(struct cache_job *j, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(struct cache_job *j, int status, const char *code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  reply(j, status, json_pack("{s:[{s:s,s:s}]}", "errors", "code", code, "message", msg));
}

static json_t *digest_json(const char *hex) {
  char d[DIGEST_STR_LEN + 1];
  snprintf(d, sizeof d, "sha256:%s", hex);
  return json_string(d);
}

/* ---- digest sets and the manifest walk ----------------------------------- */

/* A set of hex digests: the map's values are unused (non-NULL). */
static int set_add(struct strmap *s, const char *hex) {
  return strmap_get(s, hex) ? 1 : strmap_put(s, hex, (void *)1) == 0 ? 0 : UV_ENOMEM;
}

struct walk {
  struct blobstore *bs;
  struct strmap *seen;     /* every digest reached */
  struct strmap *sizes;    /* hex -> blob_listing of what is cached */
  uint64_t bytes;          /* cached bytes reached */
  size_t present, missing; /* digests reached that are / are not cached */
  int64_t last_use;
};

static void walk_digest(struct walk *w, const char *hex, int depth);

struct walk_at {
  struct walk *w;
  int depth;
};

static int walk_ref(const struct manifest_ref *ref, void *ud) {
  struct walk_at *at = ud;
  walk_digest(at->w, ref->hex, at->depth);
  return 0;
}

static void walk_digest(struct walk *w, const char *hex, int depth) {
  if (set_add(w->seen, hex) != 0)
    return; /* seen already (or out of memory: the walk only undercounts) */
  const struct blob_listing *b = strmap_get(w->sizes, hex);
  if (!b) {
    w->missing++;
    return;
  }
  w->present++;
  w->bytes += b->size;
  if (b->last_use_s > w->last_use)
    w->last_use = b->last_use_s;
  if (b->media_type[0] == '\0' || depth >= CLOSURE_MAX_DEPTH)
    return;
  char *text;
  size_t len;
  if (blobstore_read_small(w->bs, hex, MANIFEST_PARSE_MAX, &text, &len) != 0)
    return;
  struct walk_at at = {w, depth + 1};
  manifest_each_ref(text, len, walk_ref, &at);
  free(text);
}

/* The store's blobs by digest, for the walks. */
struct inventory {
  struct blob_listing *blobs;
  size_t n;
  struct strmap by_hex;
};

static int inventory_load(struct inventory *inv, struct blobstore *bs) {
  strmap_init(&inv->by_hex);
  int r = blobstore_list(bs, &inv->blobs, &inv->n);
  if (r)
    return r;
  for (size_t i = 0; i < inv->n; i++)
    if (strmap_put(&inv->by_hex, inv->blobs[i].hex, &inv->blobs[i]) != 0)
      return UV_ENOMEM;
  return 0;
}

static void inventory_free(struct inventory *inv) {
  strmap_free(&inv->by_hex);
  free(inv->blobs);
}

static void walk_init(struct walk *w, struct blobstore *bs, struct strmap *seen,
                      struct inventory *inv) {
  memset(w, 0, sizeof *w);
  w->bs = bs;
  w->seen = seen;
  w->sizes = &inv->by_hex;
}

/* ---- tag records --------------------------------------------------------- */

struct record {
  char host[128], name[300], file[200];
  struct tag_record rec;
};

struct records {
  struct record *v;
  size_t n, cap;
  /* filters; NULL = any */
  const char *host, *name, *tag;
};

/* file_is_tag: a record file for `tag` is "tag" or "tag@<variant>". */
static int file_is_tag(const char *file, const char *tag) {
  size_t n = strlen(tag);
  return strncmp(file, tag, n) == 0 && (file[n] == '\0' || file[n] == '@');
}

static int collect_record(const char *up, const char *name, const char *file,
                          const struct tag_record *rec, void *ud) {
  struct records *rs = ud;
  if ((rs->host && strcmp(up, rs->host) != 0) || (rs->name && strcmp(name, rs->name) != 0) ||
      (rs->tag && !file_is_tag(file, rs->tag)))
    return 0;
  if (strlen(up) >= sizeof rs->v->host || strlen(name) >= sizeof rs->v->name ||
      strlen(file) >= sizeof rs->v->file)
    return 0;
  if (rs->n == rs->cap) {
    size_t nc = rs->cap ? rs->cap * 2 : 16;
    struct record *nv = realloc(rs->v, nc * sizeof *nv);
    if (!nv)
      return UV_ENOMEM;
    rs->v = nv;
    rs->cap = nc;
  }
  struct record *r = &rs->v[rs->n++];
  snprintf(r->host, sizeof r->host, "%s", up);
  snprintf(r->name, sizeof r->name, "%s", name);
  snprintf(r->file, sizeof r->file, "%s", file);
  r->rec = *rec;
  return 0;
}

static int records_load(struct records *rs, struct blobstore *bs) {
  int r = tagstore_each(bs, collect_record, rs);
  return r == UV_ENOENT ? 0 : r;
}

/* ---- references ---------------------------------------------------------- */

/* What rm/pin/unpin name: a bare digest, or an image by tag or digest. */
struct target {
  int bare;                  /* "sha256:..." alone */
  char hex[DIGEST_HEX_LEN + 1]; /* bare, or the @digest of an image */
  int has_digest;
  char host[128], name[300], tag[REF_TAG_MAX + 1];
  char canon[CACHE_ARG_MAX + 64]; /* host/name:tag, host/name@sha256:.., or the digest */
};

/* parse_target reads docker's reference grammar against the configured
 * upstreams: no host means the default upstream, a Docker Hub name of one
 * component gets "library/", no tag and no digest means ":latest". */
static int parse_target(struct cache_job *j, struct target *t) {
  memset(t, 0, sizeof *t);
  const char *s = j->arg;
  size_t len = strlen(s);
  if (len == 0) {
    fail(j, 400, "NAME_INVALID", "name an image (e.g. alpine:3.19) or a digest (sha256:...)");
    return -1;
  }
  if (strncmp(s, "sha256:", 7) == 0) {
    if (digest_parse(s, len, t->hex) != 0) {
      fail(j, 400, "DIGEST_INVALID", "'%s' is not a sha256 digest", s);
      return -1;
    }
    t->bare = 1;
    snprintf(t->canon, sizeof t->canon, "sha256:%s", t->hex);
    return 0;
  }
  char rest[CACHE_ARG_MAX];
  snprintf(rest, sizeof rest, "%s", s);
  char *at = strchr(rest, '@');
  if (at) {
    *at = '\0';
    if (digest_parse(at + 1, strlen(at + 1), t->hex) != 0) {
      fail(j, 400, "DIGEST_INVALID", "'%s' is not a sha256 digest", at + 1);
      return -1;
    }
    t->has_digest = 1;
  }
  char *name = rest;
  char *slash = strchr(rest, '/');
  const char *host = j->n_hosts ? j->hosts[j->default_up] : "";
  if (slash && ref_component_is_host(rest, (size_t)(slash - rest))) {
    *slash = '\0';
    host = rest;
    name = slash + 1;
  }
  char *colon = strrchr(name, ':');
  if (colon) {
    *colon = '\0';
    snprintf(t->tag, sizeof t->tag, "%s", colon + 1);
    if (!ref_tag_valid(t->tag, strlen(t->tag)) || strlen(colon + 1) >= sizeof t->tag) {
      fail(j, 400, "TAG_INVALID", "'%s' is not a valid tag", colon + 1);
      return -1;
    }
  } else if (!t->has_digest) {
    snprintf(t->tag, sizeof t->tag, "latest");
  }
  size_t up = j->n_hosts;
  for (size_t i = 0; i < j->n_hosts && up == j->n_hosts; i++)
    if (strcmp(j->hosts[i], host) == 0)
      up = i;
  for (size_t i = 0; i < j->n_hosts && up == j->n_hosts && route_is_docker_hub(host); i++)
    if (route_is_docker_hub(j->hosts[i]))
      up = i;
  if (up == j->n_hosts) {
    fail(j, 404, "NAME_UNKNOWN", "no upstream '%s' in this node's config", host);
    return -1;
  }
  snprintf(t->host, sizeof t->host, "%s", j->hosts[up]);
  int lib = route_is_docker_hub(t->host) && !strchr(name, '/');
  int n = snprintf(t->name, sizeof t->name, "%s%s", lib ? "library/" : "", name);
  if (n < 0 || (size_t)n >= sizeof t->name || !ref_name_valid(t->name, strlen(t->name))) {
    fail(j, 400, "NAME_INVALID", "'%s' is not a valid repository name", name);
    return -1;
  }
  if (t->tag[0])
    snprintf(t->canon, sizeof t->canon, "%s/%s:%s", t->host, t->name, t->tag);
  else
    snprintf(t->canon, sizeof t->canon, "%s/%s@sha256:%s", t->host, t->name, t->hex);
  return 0;
}

/* target_roots finds what the target names in the cache: its tag records
 * (kept in *rs) or its digest. Returns the number of roots, 0 when it is
 * not cached, or a negative error. */
static int target_roots(struct cache_job *j, const struct target *t, struct records *rs) {
  if (t->bare || t->has_digest)
    return blobstore_peek(j->bs, t->hex, NULL) == 0 ? 1 : 0;
  rs->host = t->host;
  rs->name = t->name;
  rs->tag = t->tag;
  int r = records_load(rs, j->bs);
  return r ? r : (int)rs->n;
}

/* find_roots is target_roots that answers the job itself when there is
 * nothing to act on (404 with `hint`, or 500). Returns 1 to go on, 0 when
 * it answered. */
static int find_roots(struct cache_job *j, const struct target *t, struct records *rs,
                      const char *code, const char *hint) {
  int roots = target_roots(j, t, rs);
  if (roots < 0)
    fail(j, 500, "UNKNOWN", "cannot read the cache: %s", rm_strerror(roots));
  else if (roots == 0)
    fail(j, 404, code, "%s is not in the cache%s", t->canon, hint);
  return roots > 0;
}

/* ---- ls and stat --------------------------------------------------------- */

static json_t *pins_json(struct blobstore *bs, struct strmap *names) {
  struct blobstore_pin *pins;
  size_t n;
  json_t *arr = json_array();
  if (blobstore_pins(bs, &pins, &n) != 0)
    return arr;
  for (size_t i = 0; i < n; i++) {
    json_array_append_new(arr, json_pack("{s:s,s:I}", "name", pins[i].name, "digests",
                                         (json_int_t)pins[i].n));
    if (names)
      strmap_put(names, pins[i].name, (void *)1);
  }
  blobstore_pins_free(pins, n);
  return arr;
}

static void do_ls(struct cache_job *j) {
  struct inventory inv;
  struct records rs = {.host = j->upstream[0] ? j->upstream : NULL};
  struct strmap pinned, reached;
  strmap_init(&pinned);
  strmap_init(&reached);
  int r = inventory_load(&inv, j->bs);
  if (!r)
    r = records_load(&rs, j->bs);
  if (r) {
    fail(j, 500, "UNKNOWN", "cannot read the cache: %s", rm_strerror(r));
    goto out;
  }
  json_t *pins = pins_json(j->bs, &pinned);
  json_t *images = json_array();
  for (size_t i = 0; i < rs.n; i++) {
    struct record *rec = &rs.v[i];
    struct strmap seen;
    struct walk w;
    strmap_init(&seen);
    walk_init(&w, j->bs, &seen, &inv);
    walk_digest(&w, rec->rec.hex, 0);
    if (j->upstream[0])
      for (size_t k = 0; k < inv.n; k++)
        if (strmap_get(&seen, inv.blobs[k].hex))
          set_add(&reached, inv.blobs[k].hex);
    strmap_free(&seen);
    char tag[200], ref[700];
    const char *variant = strchr(rec->file, '@');
    snprintf(tag, sizeof tag, "%.*s", (int)(variant ? (size_t)(variant - rec->file) : strlen(rec->file)),
             rec->file);
    snprintf(ref, sizeof ref, "%s/%s:%s", rec->host, rec->name, tag);
    json_t *img = json_pack("{s:s,s:s,s:s,s:s,s:o,s:s,s:I,s:I,s:I,s:I,s:I,s:b}", "ref", ref,
                            "upstream", rec->host, "name", rec->name, "tag", tag, "digest",
                            digest_json(rec->rec.hex), "media_type", rec->rec.media_type,
                            "fetched_at_ms", (json_int_t)rec->rec.fetched_at_ms, "size",
                            (json_int_t)w.bytes, "blobs", (json_int_t)w.present, "missing",
                            (json_int_t)w.missing, "last_use", (json_int_t)w.last_use,
                            "pinned", strmap_get(&pinned, ref) != NULL);
    if (img && variant)
      json_object_set_new(img, "variant", json_string(variant + 1));
    json_array_append_new(images, img);
  }
  json_t *blobs = json_array();
  for (size_t k = 0; k < inv.n; k++) {
    const struct blob_listing *b = &inv.blobs[k];
    if (j->upstream[0] && !strmap_get(&reached, b->hex))
      continue;
    json_array_append_new(
        blobs, json_pack("{s:o,s:I,s:s,s:I,s:b,s:I}", "digest", digest_json(b->hex), "size",
                         (json_int_t)b->size, "media_type", b->media_type, "last_use",
                         (json_int_t)b->last_use_s, "pinned", b->pinned, "readers",
                         (json_int_t)b->readers));
  }
  reply(j, 200, json_pack("{s:o,s:o,s:o}", "images", images, "blobs", blobs, "pins", pins));
out:
  strmap_free(&pinned);
  strmap_free(&reached);
  inventory_free(&inv);
  free(rs.v);
}

static int count_record(const char *up, const char *name, const char *file,
                        const struct tag_record *rec, void *ud) {
  (void)up, (void)name, (void)file, (void)rec;
  (*(uint64_t *)ud)++;
  return 0;
}

static void do_stat(struct cache_job *j) {
  struct blobstore_stats st;
  blobstore_get_stats(j->bs, &st);
  uint64_t tags = 0, qfiles = 0, qbytes = 0;
  tagstore_each(j->bs, count_record, &tags);
  char dir[4200];
  struct blobstore_pin *pins;
  size_t npins = 0;
  if (blobstore_pins(j->bs, &pins, &npins) == 0)
    blobstore_pins_free(pins, npins);
  snprintf(dir, sizeof dir, "%s/quarantine", blobstore_root(j->bs));
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
      char p[4500];
      struct stat sb;
      if (de->d_name[0] == '.')
        continue;
      snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
      if (lstat(p, &sb) == 0 && S_ISREG(sb.st_mode)) {
        qfiles++;
        qbytes += (uint64_t)sb.st_size;
      }
    }
    closedir(d);
  }
  json_t *doc =
      json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "root", blobstore_root(j->bs),
                "bytes", (json_int_t)st.bytes, "blobs", (json_int_t)st.blobs, "max_size",
                (json_int_t)st.max_size, "images", (json_int_t)tags, "pins",
                (json_int_t)npins, "pinned_bytes", (json_int_t)st.kept_bytes, "evictions",
                (json_int_t)st.evictions, "evicted_bytes", (json_int_t)st.evicted_bytes,
                "quarantined", (json_int_t)qfiles);
  if (doc && qbytes)
    json_object_set_new(doc, "quarantined_bytes", json_integer((json_int_t)qbytes));
  reply(j, 200, doc);
}

/* ---- rm, pin, unpin ------------------------------------------------------ */

static void do_rm(struct cache_job *j) {
  struct target t;
  struct records rs = {0}, others = {0};
  struct inventory inv = {0};
  struct strmap set, keep;
  strmap_init(&set);
  strmap_init(&keep);
  if (parse_target(j, &t) != 0)
    goto out;
  if (t.bare && blobstore_pinned(j->bs, t.hex)) {
    fail(j, 409, "DENIED", "%s is pinned: unpin the image that names it first", t.canon);
    goto out;
  }
  if (!find_roots(j, &t, &rs, t.bare ? "BLOB_UNKNOWN" : "MANIFEST_UNKNOWN", ""))
    goto out;
  if (t.bare) {
    struct blob_info info = {.size = 0};
    blobstore_peek(j->bs, t.hex, &info);
    int r = blobstore_remove(j->bs, t.hex);
    if (r == UV_EBUSY)
      fail(j, 409, "DENIED", "%s is being sent to a client: try again", t.canon);
    else if (r == UV_EPERM)
      fail(j, 409, "DENIED", "%s is pinned: unpin the image that names it first", t.canon);
    else if (r)
      fail(j, r == RM_ENOTFOUND ? 404 : 500, "BLOB_UNKNOWN", "%s: %s", t.canon, rm_strerror(r));
    else
      reply(j, 200, json_pack("{s:[o],s:I,s:[]}", "removed", digest_json(t.hex), "bytes",
                              (json_int_t)info.size, "tags"));
    goto out;
  }
  /* a pinned image stays whole until it is unpinned */
  struct blobstore_pin *pins;
  size_t npins = 0;
  int pinned = 0;
  if (blobstore_pins(j->bs, &pins, &npins) == 0) {
    for (size_t i = 0; i < npins; i++) {
      pinned |= strcmp(pins[i].name, t.canon) == 0;
      for (size_t k = 0; k < pins[i].n; k++)
        set_add(&keep, pins[i].hex[k]);
    }
    blobstore_pins_free(pins, npins);
  }
  if (pinned) {
    fail(j, 409, "DENIED", "%s is pinned: regmesh cache unpin it first", t.canon);
    goto out;
  }
  json_t *tags = json_array();
  for (size_t i = 0; i < rs.n; i++) {
    if (tagstore_remove(j->bs, rs.v[i].host, rs.v[i].name, rs.v[i].file) != 0)
      continue;
    json_array_append_new(tags, json_string(rs.v[i].file));
    if (j->n_forget < CACHE_MAX_FORGET) {
      snprintf(j->forget[j->n_forget].host, sizeof j->forget[0].host, "%s", rs.v[i].host);
      snprintf(j->forget[j->n_forget].name, sizeof j->forget[0].name, "%s", rs.v[i].name);
      snprintf(j->forget[j->n_forget].tag, sizeof j->forget[0].tag, "%s", t.tag);
      j->n_forget++;
    }
  }
  int r = inventory_load(&inv, j->bs);
  if (!r)
    r = records_load(&others, j->bs);
  if (r) {
    json_decref(tags);
    fail(j, 500, "UNKNOWN", "cannot read the cache: %s", rm_strerror(r));
    goto out;
  }
  struct walk w;
  walk_init(&w, j->bs, &set, &inv);
  if (t.has_digest)
    walk_digest(&w, t.hex, 0);
  for (size_t i = 0; i < rs.n; i++)
    walk_digest(&w, rs.v[i].rec.hex, 0);
  /* what other cached images reach stays */
  for (size_t i = 0; i < others.n; i++) {
    struct walk ow;
    walk_init(&ow, j->bs, &keep, &inv);
    walk_digest(&ow, others.v[i].rec.hex, 0);
  }
  json_t *removed = json_array(), *busy = json_array();
  uint64_t bytes = 0;
  size_t shared = 0;
  for (size_t k = 0; k < inv.n; k++) {
    const struct blob_listing *b = &inv.blobs[k];
    if (!strmap_get(&set, b->hex))
      continue;
    if (strmap_get(&keep, b->hex)) {
      shared++;
      continue;
    }
    int rr = blobstore_remove(j->bs, b->hex);
    if (rr == 0) {
      json_array_append_new(removed, digest_json(b->hex));
      bytes += b->size;
    } else if (rr != RM_ENOTFOUND) {
      json_array_append_new(busy, digest_json(b->hex));
    }
  }
  LOG_I("cache: removed %s: %zu blobs, %" PRIu64 " bytes (%zu shared kept)", t.canon,
        json_array_size(removed), bytes, shared);
  reply(j, 200, json_pack("{s:s,s:o,s:o,s:I,s:I,s:o}", "ref", t.canon, "tags", tags, "removed",
                          removed, "bytes", (json_int_t)bytes, "shared", (json_int_t)shared,
                          "busy", busy));
out:
  strmap_free(&set);
  strmap_free(&keep);
  inventory_free(&inv);
  free(rs.v);
  free(others.v);
}

struct hexlist {
  char (*v)[DIGEST_HEX_LEN + 1];
  size_t n, cap;
};

static void hex_collect(const char *key, void *value, void *ud) {
  (void)value;
  struct hexlist *h = ud;
  if (h->n < h->cap)
    snprintf(h->v[h->n++], DIGEST_HEX_LEN + 1, "%s", key);
}

static void do_pin(struct cache_job *j) {
  struct target t;
  struct records rs = {0};
  struct inventory inv = {0};
  struct strmap set;
  struct hexlist hl = {0};
  strmap_init(&set);
  if (parse_target(j, &t) != 0)
    goto out;
  if (!find_roots(j, &t, &rs, "MANIFEST_UNKNOWN", ": regmesh cache warm it first, then pin it"))
    goto out;
  int r = inventory_load(&inv, j->bs);
  if (r) {
    fail(j, 500, "UNKNOWN", "cannot read the cache: %s", rm_strerror(r));
    goto out;
  }
  struct walk w;
  walk_init(&w, j->bs, &set, &inv);
  if (t.bare || t.has_digest)
    walk_digest(&w, t.hex, 0);
  for (size_t i = 0; i < rs.n; i++)
    walk_digest(&w, rs.v[i].rec.hex, 0);
  hl.cap = set.count;
  hl.v = calloc(hl.cap ? hl.cap : 1, sizeof *hl.v);
  if (!hl.v) {
    fail(j, 500, "UNKNOWN", "out of memory");
    goto out;
  }
  strmap_each(&set, hex_collect, &hl);
  r = blobstore_pin_set(j->bs, t.canon, (const char(*)[65])hl.v, hl.n);
  if (r) {
    fail(j, r == RM_ETOOBIG ? 413 : 500, "UNKNOWN", "cannot pin %s: %s", t.canon,
         rm_strerror(r));
    goto out;
  }
  LOG_I("cache: pinned %s: %zu digests, %" PRIu64 " bytes cached", t.canon, hl.n, w.bytes);
  reply(j, 200, json_pack("{s:s,s:I,s:I,s:I}", "pinned", t.canon, "digests", (json_int_t)hl.n,
                          "bytes", (json_int_t)w.bytes, "missing", (json_int_t)w.missing));
out:
  free(hl.v);
  strmap_free(&set);
  inventory_free(&inv);
  free(rs.v);
}

static void do_unpin(struct cache_job *j) {
  struct target t;
  if (parse_target(j, &t) != 0)
    return;
  int r = blobstore_pin_clear(j->bs, t.canon);
  if (r == RM_ENOTFOUND)
    fail(j, 404, "MANIFEST_UNKNOWN", "%s is not pinned", t.canon);
  else if (r)
    fail(j, 500, "UNKNOWN", "cannot unpin %s: %s", t.canon, rm_strerror(r));
  else
    reply(j, 200, json_pack("{s:s}", "unpinned", t.canon));
}

/* ---- verify -------------------------------------------------------------- */

static void do_verify(struct cache_job *j) {
  struct blob_listing *blobs;
  size_t n;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int r = blobstore_list(j->bs, &blobs, &n);
  if (r) {
    fail(j, 500, "UNKNOWN", "cannot list the cache: %s", rm_strerror(r));
    return;
  }
  json_t *corrupt = json_array(), *busy = json_array();
  uint64_t bytes = 0, gone = 0;
  size_t i;
  for (i = 0; i < n; i++) {
    if (j->cancel && __atomic_load_n(j->cancel, __ATOMIC_RELAXED))
      break;
    uint64_t h = 0;
    r = blobstore_verify(j->bs, blobs[i].hex, &h);
    bytes += h;
    if (r == 0)
      j->verified++;
    else if (r == RM_EDIGEST)
      json_array_append_new(corrupt, digest_json(blobs[i].hex)), j->corrupt++;
    else if (r == UV_EBUSY)
      json_array_append_new(busy, digest_json(blobs[i].hex)), j->corrupt++;
    else
      gone++;
  }
  size_t skipped = n - i;
  free(blobs);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  LOG_I("cache: verified %" PRIu64 " blobs (%" PRIu64 " bytes) in %.1f s: %zu corrupt and "
        "quarantined, %zu corrupt but in use",
        j->verified + j->corrupt, bytes, secs, json_array_size(corrupt), json_array_size(busy));
  if (skipped) {
    json_decref(corrupt);
    json_decref(busy);
    fail(j, 503, "UNAVAILABLE", "the node is stopping: verify ended with %zu blobs unchecked",
         skipped);
    return;
  }
  reply(j, 200, json_pack("{s:I,s:I,s:I,s:o,s:o,s:I,s:f}", "checked",
                          (json_int_t)(j->verified + j->corrupt), "intact",
                          (json_int_t)j->verified, "bytes", (json_int_t)bytes, "quarantined",
                          corrupt, "corrupt_in_use", busy, "gone", (json_int_t)gone, "seconds",
                          secs));
}

void cache_job_run(struct cache_job *j) {
  switch (j->op) {
  case CACHE_OP_LS: do_ls(j); break;
  case CACHE_OP_STAT: do_stat(j); break;
  case CACHE_OP_RM: do_rm(j); break;
  case CACHE_OP_PIN: do_pin(j); break;
  case CACHE_OP_UNPIN: do_unpin(j); break;
  case CACHE_OP_VERIFY: do_verify(j); break;
  }
  if (!j->body) {
    j->status = 500;
    j->body = strdup("{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"out of memory\"}]}");
  }
}
