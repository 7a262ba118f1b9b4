/* cachecli.c - `regmesh cache ...`: see and steer a running node's cache.
 *
 * ls, stat, rm, pin, unpin and verify ask the node's admin API (/cache/ on
 * admin_listen, docs/operations.md) and print its JSON answer as a table.
 * warm is a pull: it fetches the image's manifests and blobs through the
 * node's registry port like any client, so in a fleet each blob lands on
 * its owner and on this node, with the same single flight, auth and
 * metrics as a real pull, and the node needs no second download path.
 * Blobs go in parallel (curl multi), bytes are counted and dropped; on a
 * terminal a progress line is redrawn on stderr.
 */
#include "cachecli.h"

#include "adminc.h"
#include "manifest.h"

#include "../common/digest.h"
#include "../config/config.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define PROG "regmesh cache"
#define ADMIN_TIMEOUT_MS 60000L
#define MANIFEST_MAX (4 * 1024 * 1024)
#define WARM_MAX_BLOBS 4096

static const char usage[] =
    "usage: regmesh cache <command> [--config FILE] [--admin HOST:PORT] [--json]\n"
    "\n"
    "  ls [--upstream HOST]     cached images (tag, digest, size, blobs, last use, pin)\n"
    "                           and blobs; --upstream: only that upstream's\n"
    "  stat                     totals: bytes, blobs, budget, pins, quarantined files\n"
    "  rm REF|DIGEST            remove an image (its tag and the blobs no other cached\n"
    "                           image needs) or one blob\n"
    "  pin IMAGE                never evict the image's manifests and blobs\n"
    "  unpin IMAGE              undo pin\n"
    "  verify                   re-hash every cached blob; mismatches are quarantined\n"
    "  warm IMAGE... [--platform OS/ARCH[/VARIANT] | --all-platforms] [--node URL]\n"
    "       [--user USER:PASSWORD] [--ca FILE] [--jobs N]\n"
    "                           pull images through the node (default platform: this\n"
    "                           machine's), so later pulls are hits\n"
    "\n"
    "The admin API is asked at --admin, else the config's admin_listen (or listen),\n"
    "else 127.0.0.1:5000. warm pulls from --node, else the config's listen (https\n"
    "when it has tls:), else http://127.0.0.1:5000. IMAGE is docker's reference\n"
    "grammar: [HOST/]NAME[:TAG][@DIGEST]; no HOST is the node's default upstream.\n";

struct opts {
  const char *config, *admin, *node, *user, *ca, *upstream, *platform;
  int json, all_platforms, jobs;
  const char *args[64];
  int nargs;
};

static int parse_opts(int argc, char **argv, struct opts *o) {
  memset(o, 0, sizeof *o);
  o->jobs = 4;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    const char **slot = NULL;
    if (strcmp(a, "--config") == 0 || strcmp(a, "-c") == 0)
      slot = &o->config;
    else if (strcmp(a, "--admin") == 0)
      slot = &o->admin;
    else if (strcmp(a, "--node") == 0)
      slot = &o->node;
    else if (strcmp(a, "--user") == 0)
      slot = &o->user;
    else if (strcmp(a, "--ca") == 0)
      slot = &o->ca;
    else if (strcmp(a, "--upstream") == 0)
      slot = &o->upstream;
    else if (strcmp(a, "--platform") == 0)
      slot = &o->platform;
    if (slot) {
      if (i + 1 >= argc) {
        fprintf(stderr, PROG ": %s needs a value\n", a);
        return 2;
      }
      *slot = argv[++i];
    } else if (strcmp(a, "--json") == 0) {
      o->json = 1;
    } else if (strcmp(a, "--all-platforms") == 0) {
      o->all_platforms = 1;
    } else if (strcmp(a, "--jobs") == 0 && i + 1 < argc) {
      o->jobs = atoi(argv[++i]);
      if (o->jobs < 1 || o->jobs > 64) {
        fprintf(stderr, PROG ": --jobs wants 1 to 64\n");
        return 2;
      }
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      fputs(usage, stdout);
      return 1;
    } else if (a[0] == '-') {
      fprintf(stderr, PROG ": unknown option '%s'\n%s", a, usage);
      return 2;
    } else if (o->nargs < (int)(sizeof o->args / sizeof o->args[0])) {
      o->args[o->nargs++] = a;
    } else {
      fprintf(stderr, PROG ": too many arguments\n");
      return 2;
    }
  }
  if (o->platform && o->all_platforms) {
    fprintf(stderr, PROG ": --platform and --all-platforms exclude each other\n");
    return 2;
  }
  return 0;
}

/* ---- sizes and times for people ------------------------------------------ */

static void human_bytes(char *out, size_t cap, uint64_t n) {
  static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)n;
  size_t u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    u++;
  }
  if (u == 0)
    snprintf(out, cap, "%" PRIu64 " B", n);
  else
    snprintf(out, cap, "%.1f %s", v, units[u]);
}

static void human_age(char *out, size_t cap, int64_t then_s) {
  int64_t d = (int64_t)time(NULL) - then_s;
  if (then_s <= 0)
    snprintf(out, cap, "-");
  else if (d < 120)
    snprintf(out, cap, "just now");
  else if (d < 7200)
    snprintf(out, cap, "%" PRId64 " min ago", d / 60);
  else if (d < 172800)
    snprintf(out, cap, "%" PRId64 " h ago", d / 3600);
  else
    snprintf(out, cap, "%" PRId64 " days ago", d / 86400);
}

static int64_t jint(const json_t *o, const char *k) {
  const json_t *v = json_object_get(o, k);
  return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

static void jstr(char *out, size_t cap, const json_t *o, const char *k) {
  adminc_term_copy(out, cap, json_string_value(json_object_get(o, k)));
}

/* short_digest: "sha256:" and the first 12 hex, as docker prints them. */
static void short_digest(char *out, size_t cap, const json_t *o, const char *k) {
  char d[80];
  jstr(d, sizeof d, o, k);
  snprintf(out, cap, "%.19s", d);
}

/* ---- the admin API ------------------------------------------------------- */

static int admin_call(const struct opts *o, const char *method, const char *path,
                      const char *param, const char *value, long timeout_ms, json_t **out) {
  char addr[300], url[2400];
  int r = adminc_target(PROG, o->admin, o->config, addr, sizeof addr);
  if (r)
    return r;
  int n = snprintf(url, sizeof url, "http://%s%s", addr, path);
  if (param && value) {
    char *esc = curl_easy_escape(NULL, value, 0); /* the handle is unused (curl >= 7.82) */
    if (esc)
      n = snprintf(url, sizeof url, "http://%s%s?%s=%s", addr, path, param, esc);
    curl_free(esc);
    if (!esc) {
      fprintf(stderr, PROG ": out of memory\n");
      return 1;
    }
  }
  if (n < 0 || (size_t)n >= sizeof url) {
    fprintf(stderr, PROG ": argument too long\n");
    return 2;
  }
  struct adminc_body b = {0};
  long status = 0;
  r = adminc_request(PROG, method, url, timeout_ms, &b, &status);
  if (r == 0 && (status < 200 || status > 299))
    r = adminc_fail(PROG, url, status, &b);
  if (r == 0) {
    json_error_t jerr;
    *out = json_loadb(b.data ? b.data : "", b.len, 0, &jerr);
    if (!json_is_object(*out)) {
      fprintf(stderr, PROG ": unexpected answer from %s: %s\n", url, jerr.text);
      json_decref(*out);
      r = 1;
    }
  }
  free(b.data);
  return r;
}

static void print_json(const json_t *doc) {
  char *t = json_dumps(doc, JSON_INDENT(2));
  if (t)
    puts(t);
  free(t);
}

static int cmd_ls(const struct opts *o) {
  json_t *doc;
  int r = admin_call(o, "GET", "/cache/ls", o->upstream ? "upstream" : NULL, o->upstream,
                     ADMIN_TIMEOUT_MS, &doc);
  if (r)
    return r;
  if (o->json) {
    print_json(doc);
    json_decref(doc);
    return 0;
  }
  size_t i;
  json_t *v;
  json_t *images = json_object_get(doc, "images"), *blobs = json_object_get(doc, "blobs");
  printf("%-56s %-19s %10s %6s %8s %-12s %s\n", "IMAGE", "DIGEST", "SIZE", "BLOBS", "MISSING",
         "LAST USE", "PINNED");
  json_array_foreach(images, i, v) {
    char ref[300], dig[40], size[32], age[32];
    jstr(ref, sizeof ref, v, "ref");
    short_digest(dig, sizeof dig, v, "digest");
    human_bytes(size, sizeof size, (uint64_t)jint(v, "size"));
    human_age(age, sizeof age, jint(v, "last_use"));
    printf("%-56s %-19s %10s %6" PRId64 " %8" PRId64 " %-12s %s\n", ref, dig, size,
           jint(v, "blobs"), jint(v, "missing"), age,
           json_is_true(json_object_get(v, "pinned")) ? "yes" : "-");
  }
  printf("\n%-71s %10s %-12s %-6s %s\n", "BLOB", "SIZE", "LAST USE", "PINNED", "MEDIA TYPE");
  uint64_t total = 0;
  json_array_foreach(blobs, i, v) {
    char dig[80], size[32], age[32], mt[120];
    jstr(dig, sizeof dig, v, "digest");
    human_bytes(size, sizeof size, (uint64_t)jint(v, "size"));
    human_age(age, sizeof age, jint(v, "last_use"));
    jstr(mt, sizeof mt, v, "media_type");
    total += (uint64_t)jint(v, "size");
    printf("%-71s %10s %-12s %-6s %s\n", dig, size, age,
           json_is_true(json_object_get(v, "pinned")) ? "yes" : "-", mt);
  }
  char tot[32];
  human_bytes(tot, sizeof tot, total);
  printf("\n%zu images, %zu blobs, %s\n", json_array_size(images), json_array_size(blobs), tot);
  json_decref(doc);
  return 0;
}

static int cmd_stat(const struct opts *o) {
  json_t *doc;
  int r = admin_call(o, "GET", "/cache/stat", NULL, NULL, ADMIN_TIMEOUT_MS, &doc);
  if (r)
    return r;
  if (o->json) {
    print_json(doc);
  } else {
    char root[300], b[32], m[32], p[32], e[32];
    jstr(root, sizeof root, doc, "root");
    human_bytes(b, sizeof b, (uint64_t)jint(doc, "bytes"));
    human_bytes(p, sizeof p, (uint64_t)jint(doc, "pinned_bytes"));
    human_bytes(e, sizeof e, (uint64_t)jint(doc, "evicted_bytes"));
    if (jint(doc, "max_size"))
      human_bytes(m, sizeof m, (uint64_t)jint(doc, "max_size"));
    else
      snprintf(m, sizeof m, "unlimited");
    printf("root:        %s\n", root);
    printf("size:        %s of %s (%" PRId64 " blobs)\n", b, m, jint(doc, "blobs"));
    printf("images:      %" PRId64 " tags\n", jint(doc, "images"));
    printf("pins:        %" PRId64 " (%s)\n", jint(doc, "pins"), p);
    printf("evicted:     %" PRId64 " blobs (%s) since start\n", jint(doc, "evictions"), e);
    printf("quarantined: %" PRId64 " files in %s/quarantine\n", jint(doc, "quarantined"), root);
  }
  json_decref(doc);
  return 0;
}

static int cmd_change(const struct opts *o, const char *what) {
  if (o->nargs != 1) {
    fprintf(stderr, PROG " %s: name one image or digest\n", what);
    return 2;
  }
  char path[32];
  snprintf(path, sizeof path, "/cache/%s", what);
  json_t *doc;
  int r = admin_call(o, "POST", path, "ref", o->args[0], ADMIN_TIMEOUT_MS, &doc);
  if (r)
    return r;
  if (o->json) {
    print_json(doc);
  } else if (strcmp(what, "rm") == 0) {
    char b[32];
    human_bytes(b, sizeof b, (uint64_t)jint(doc, "bytes"));
    printf("removed %zu blobs (%s)", json_array_size(json_object_get(doc, "removed")), b);
    if (jint(doc, "shared"))
      printf("; %" PRId64 " shared with other cached images kept", jint(doc, "shared"));
    if (json_array_size(json_object_get(doc, "busy")))
      printf("; %zu being read or pinned left", json_array_size(json_object_get(doc, "busy")));
    printf("\n");
  } else if (strcmp(what, "pin") == 0) {
    char ref[300], b[32];
    jstr(ref, sizeof ref, doc, "pinned");
    human_bytes(b, sizeof b, (uint64_t)jint(doc, "bytes"));
    printf("pinned %s: %" PRId64 " digests, %s cached", ref, jint(doc, "digests"), b);
    if (jint(doc, "missing"))
      printf(", %" PRId64 " not cached yet (kept once fetched)", jint(doc, "missing"));
    printf("\n");
  } else {
    char ref[300];
    jstr(ref, sizeof ref, doc, "unpinned");
    printf("unpinned %s\n", ref);
  }
  json_decref(doc);
  return 0;
}

static int cmd_verify(const struct opts *o) {
  json_t *doc;
  /* re-hashing a big cache takes as long as reading it: no deadline */
  int r = admin_call(o, "POST", "/cache/verify", NULL, NULL, 0, &doc);
  if (r)
    return r;
  size_t bad = json_array_size(json_object_get(doc, "quarantined"));
  size_t busy = json_array_size(json_object_get(doc, "corrupt_in_use"));
  if (o->json) {
    print_json(doc);
  } else {
    char b[32];
    human_bytes(b, sizeof b, (uint64_t)jint(doc, "bytes"));
    json_t *sec = json_object_get(doc, "seconds");
    printf("checked %" PRId64 " blobs (%s) in %.1f s: %" PRId64 " intact, %zu quarantined", jint(doc, "checked"), b,
           json_is_number(sec) ? json_number_value(sec) : 0.0, jint(doc, "intact"), bad);
    if (busy)
      printf(", %zu corrupt but being read (run verify again)", busy);
    printf("\n");
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(doc, "quarantined"), i, v) {
      char d[80];
      adminc_term_copy(d, sizeof d, json_string_value(v));
      printf("quarantined %s\n", d);
    }
  }
  json_decref(doc);
  return bad || busy ? 3 : 0;
}

/* ---- warm ---------------------------------------------------------------- */

static const char accept_manifests[] =
    "Accept: application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json";

struct warm {
  const struct opts *o;
  char base[600];         /* scheme://host:port */
  char ns[256];           /* upstream host, "" = the node's default */
  char name[300];
  struct curl_slist *hdrs;
  /* blobs to fetch */
  struct {
    char digest[DIGEST_STR_LEN + 1];
    uint64_t size;
  } blobs[WARM_MAX_BLOBS];
  size_t nblobs;
  uint64_t total, done_bytes;
  size_t manifests, blobs_done;
  int tty;
  struct timespec t0;
};

static void setup_handle(struct warm *w, CURL *h, const char *url) {
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(h, CURLOPT_USERAGENT, "regmesh-cache-warm/" REGMESH_VERSION);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  /* a cold blob may take long, but never stand still for a minute */
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 60L);
  if (w->o->user)
    curl_easy_setopt(h, CURLOPT_USERPWD, w->o->user);
  if (w->o->ca)
    curl_easy_setopt(h, CURLOPT_CAINFO, w->o->ca);
}

static int url_for(struct warm *w, char *out, size_t cap, const char *kind, const char *ref) {
  int n;
  if (w->ns[0])
    n = snprintf(out, cap, "%s/v2/%s/%s/%s?ns=%s", w->base, w->name, kind, ref, w->ns);
  else
    n = snprintf(out, cap, "%s/v2/%s/%s/%s", w->base, w->name, kind, ref);
  return n < 0 || (size_t)n >= cap ? -1 : 0;
}

static int fetch_manifest(struct warm *w, const char *ref, struct adminc_body *out) {
  char url[1400];
  if (url_for(w, url, sizeof url, "manifests", ref) != 0) {
    fprintf(stderr, PROG " warm: reference too long\n");
    return 2;
  }
  CURL *h = curl_easy_init();
  struct adminc_body b = {0};
  char err[CURL_ERROR_SIZE] = "";
  if (!h)
    return 1;
  setup_handle(w, h, url);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, w->hdrs);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, err);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, adminc_body_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)MANIFEST_MAX);
  CURLcode rc = curl_easy_perform(h);
  long status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(h);
  int r = 0;
  if (rc != CURLE_OK) {
    fprintf(stderr, PROG " warm: %s: %s\n", url, err[0] ? err : curl_easy_strerror(rc));
    r = 1;
  } else if (status != 200) {
    char prog[1000];
    snprintf(prog, sizeof prog, PROG " warm: %s/%s:%s", w->ns[0] ? w->ns : "(default)",
             w->name, ref);
    r = adminc_fail(prog, url, status, &b);
  } else if (!b.data) {
    fprintf(stderr, PROG " warm: %s: an empty manifest\n", url);
    r = 1;
  }
  if (r) {
    free(b.data);
    return r;
  }
  *out = b;
  w->manifests++;
  return 0;
}

static void add_blob(struct warm *w, const struct manifest_ref *ref) {
  if (w->nblobs >= WARM_MAX_BLOBS)
    return;
  for (size_t i = 0; i < w->nblobs; i++)
    if (strcmp(w->blobs[i].digest + 7, ref->hex) == 0)
      return; /* shared by two platforms: once is enough */
  memcpy(w->blobs[w->nblobs].digest, "sha256:", 7);
  memcpy(w->blobs[w->nblobs].digest + 7, ref->hex, DIGEST_HEX_LEN + 1);
  w->blobs[w->nblobs].size = ref->size > 0 ? (uint64_t)ref->size : 0;
  w->total += w->blobs[w->nblobs].size;
  w->nblobs++;
}

/* What the top manifest names: the children to fetch (an index), or the
 * blobs (an image). */
#define WARM_MAX_CHILDREN 256
struct top_refs {
  struct warm *w;
  const char *want;
  char child[WARM_MAX_CHILDREN][DIGEST_HEX_LEN + 1];
  size_t picked, children;
};

static int on_top_ref(const struct manifest_ref *ref, void *ud) {
  struct top_refs *t = ud;
  if (ref->kind != MANIFEST_REF_CHILD) {
    add_blob(t->w, ref);
    return 0;
  }
  t->children++;
  if ((t->w->o->all_platforms || manifest_platform_matches(ref, t->want)) &&
      t->picked < WARM_MAX_CHILDREN)
    memcpy(t->child[t->picked++], ref->hex, DIGEST_HEX_LEN + 1);
  return 0;
}

/* An image manifest's config, layers and blobs (an index of indexes is
 * not followed further). */
static int on_image_ref(const struct manifest_ref *ref, void *ud) {
  if (ref->kind != MANIFEST_REF_CHILD)
    add_blob(ud, ref);
  return 0;
}

static void default_platform(char *out, size_t cap) {
  struct utsname u;
  const char *arch = "amd64";
  if (uname(&u) == 0) {
    if (strcmp(u.machine, "aarch64") == 0)
      arch = "arm64";
    else if (strncmp(u.machine, "armv7", 5) == 0)
      arch = "arm/v7";
    else if (strcmp(u.machine, "ppc64le") == 0 || strcmp(u.machine, "s390x") == 0 ||
             strcmp(u.machine, "riscv64") == 0)
      arch = u.machine;
    else if (strcmp(u.machine, "i686") == 0)
      arch = "386";
  }
  snprintf(out, cap, "linux/%s", arch);
}

static void progress(struct warm *w, int final) {
  if (!w->tty && !final)
    return;
  char d[32], t[32];
  human_bytes(d, sizeof d, w->done_bytes);
  human_bytes(t, sizeof t, w->total);
  int width = 30, fill = w->total ? (int)(width * (double)w->done_bytes / (double)w->total) : 0;
  if (fill > width)
    fill = width;
  if (w->tty)
    fprintf(stderr, "\r[%.*s%*s] %s / %s, %zu/%zu blobs ", fill,
            "==============================", width - fill, "", d, t, w->blobs_done, w->nblobs);
  if (final && w->tty)
    fputc('\n', stderr);
}

struct xfer {
  struct warm *w;
  size_t idx;
  uint64_t got;
  struct sha256_ctx sha;
};

static size_t xfer_write(char *p, size_t size, size_t n, void *ud) {
  struct xfer *x = ud;
  size_t len = size * n;
  x->got += len;
  x->w->done_bytes += len;
  sha256_update(&x->sha, p, len);
  return len;
}

/* fetch_blobs pulls every collected blob, jobs at a time, and checks each
 * one's digest and size: a node that served wrong bytes is an error. */
static int fetch_blobs(struct warm *w) {
  CURLM *m = curl_multi_init();
  struct xfer *x = calloc(w->nblobs ? w->nblobs : 1, sizeof *x);
  size_t next = 0, running = 0;
  int failed = 0;
  struct timespec last = {0};
  if (!m || !x) {
    curl_multi_cleanup(m);
    free(x);
    return 1;
  }
  while (next < w->nblobs || running > 0) {
    while (next < w->nblobs && running < (size_t)w->o->jobs) {
      char url[1400];
      CURL *h = curl_easy_init();
      if (!h || url_for(w, url, sizeof url, "blobs", w->blobs[next].digest) != 0 ||
          sha256_init(&x[next].sha) != 0) {
        curl_easy_cleanup(h);
        failed = 1;
        next = w->nblobs;
        break;
      }
      x[next].w = w;
      x[next].idx = next;
      setup_handle(w, h, url);
      curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, xfer_write);
      curl_easy_setopt(h, CURLOPT_WRITEDATA, &x[next]);
      curl_easy_setopt(h, CURLOPT_PRIVATE, &x[next]);
      curl_multi_add_handle(m, h);
      next++;
      running++;
    }
    int still;
    curl_multi_perform(m, &still);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left)) != NULL) {
      if (msg->msg != CURLMSG_DONE)
        continue;
      CURL *h = msg->easy_handle;
      struct xfer *xf;
      long status = 0;
      curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **)&xf);
      curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
      char hex[DIGEST_HEX_LEN + 1];
      sha256_final(&xf->sha, hex);
      const char *want = w->blobs[xf->idx].digest;
      if (msg->data.result != CURLE_OK || status != 200) {
        fprintf(stderr, "%s" PROG " warm: %s: %s\n", w->tty ? "\n" : "", want,
                msg->data.result != CURLE_OK ? curl_easy_strerror(msg->data.result)
                                             : status == 404 ? "not found (HTTP 404)"
                                                             : "the node refused it");
        failed = 1;
      } else if (strcmp(hex, want + 7) != 0) {
        fprintf(stderr, "%s" PROG " warm: %s: the node sent bytes that hash to sha256:%s\n",
                w->tty ? "\n" : "", want, hex);
        failed = 1;
      } else {
        w->blobs_done++;
      }
      curl_multi_remove_handle(m, h);
      curl_easy_cleanup(h);
      running--;
    }
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if ((now.tv_sec - last.tv_sec) * 1000 + (now.tv_nsec - last.tv_nsec) / 1000000 > 200) {
      progress(w, 0);
      last = now;
    }
    if (running)
      curl_multi_poll(m, NULL, 0, 200, NULL);
  }
  curl_multi_cleanup(m);
  free(x);
  return failed;
}

/* split_ref: [HOST/]NAME[:TAG][@DIGEST] into the node's ns, name and the
 * manifest reference (the digest when there is one, else the tag). */
static int split_ref(struct warm *w, const char *img, char *ref, size_t rcap) {
  char s[700];
  if (snprintf(s, sizeof s, "%s", img) >= (int)sizeof s)
    return -1;
  char *at = strchr(s, '@');
  const char *digest = NULL;
  if (at) {
    *at = '\0';
    digest = at + 1;
  }
  char *name = s, *slash = strchr(s, '/');
  w->ns[0] = '\0';
  if (slash) {
    size_t hl = (size_t)(slash - s);
    if ((memchr(s, '.', hl) || memchr(s, ':', hl) || (hl == 9 && memcmp(s, "localhost", 9) == 0)) &&
        hl < sizeof w->ns) {
      *slash = '\0';
      memcpy(w->ns, s, hl + 1);
      name = slash + 1;
    }
  }
  char *colon = strrchr(name, ':');
  const char *tag = "latest";
  if (colon) {
    *colon = '\0';
    tag = colon + 1;
  }
  size_t nl = strlen(name);
  if (!name[0] || nl >= sizeof w->name)
    return -1;
  /* only [a-z0-9._/-] may reach the URL; the node checks the grammar */
  if (strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789._-/") != strlen(name) ||
      strspn(w->ns, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:") !=
          strlen(w->ns))
    return -1;
  memcpy(w->name, name, nl + 1);
  const char *r = digest ? digest : tag;
  if (strspn(r, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:") != strlen(r))
    return -1;
  size_t rl = strlen(r);
  if (rl >= rcap)
    return -1;
  memcpy(ref, r, rl + 1);
  return 0;
}

static int warm_one(struct warm *w, const char *img) {
  char ref[300], want[96];
  if (split_ref(w, img, ref, sizeof ref) != 0) {
    fprintf(stderr, PROG " warm: '%s' is not an image reference\n", img);
    return 2;
  }
  if (w->o->platform)
    snprintf(want, sizeof want, "%s", w->o->platform);
  else
    default_platform(want, sizeof want);
  w->nblobs = 0;
  w->total = w->done_bytes = 0;
  w->manifests = w->blobs_done = 0;
  clock_gettime(CLOCK_MONOTONIC, &w->t0);
  struct adminc_body top = {0};
  int r = fetch_manifest(w, ref, &top);
  if (r)
    return r;
  struct top_refs *t = calloc(1, sizeof *t);
  if (!t) {
    free(top.data);
    return 1;
  }
  t->w = w;
  t->want = want;
  if (manifest_each_ref(top.data, top.len, on_top_ref, t) != 0) {
    fprintf(stderr, PROG " warm: %s: the manifest is not a JSON object\n", img);
    r = 1;
  } else if (t->children > 0 && t->picked == 0) {
    fprintf(stderr, PROG " warm: %s has no manifest for %s (try --platform or "
                    "--all-platforms)\n", img, want);
    r = 1;
  }
  free(top.data);
  char sha[DIGEST_STR_LEN + 1];
  for (size_t i = 0; !r && i < t->picked; i++) {
    struct adminc_body m = {0};
    snprintf(sha, sizeof sha, "sha256:%s", t->child[i]);
    if ((r = fetch_manifest(w, sha, &m)) != 0)
      break;
    if (manifest_each_ref(m.data, m.len, on_image_ref, w) != 0) {
      fprintf(stderr, PROG " warm: %s: manifest %s is not a JSON object\n", img, sha);
      r = 1;
    }
    free(m.data);
  }
  free(t);
  if (!r)
    r = fetch_blobs(w);
  progress(w, 1);
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - w->t0.tv_sec) + (double)(t1.tv_nsec - w->t0.tv_nsec) / 1e9;
  char tb[32];
  human_bytes(tb, sizeof tb, w->done_bytes);
  if (!r)
    printf("warmed %s: %zu manifest%s, %zu blob%s, %s in %.1f s\n", img, w->manifests,
           w->manifests == 1 ? "" : "s", w->blobs_done, w->blobs_done == 1 ? "" : "s", tb, secs);
  return r;
}

static int node_base(const struct opts *o, char *out, size_t cap) {
  if (o->node) {
    size_t n = strlen(o->node);
    while (n > 0 && o->node[n - 1] == '/')
      n--;
    if ((strncmp(o->node, "http://", 7) != 0 && strncmp(o->node, "https://", 8) != 0) ||
        n >= cap) {
      fprintf(stderr, PROG " warm: --node wants http://HOST:PORT or https://HOST:PORT\n");
      return 2;
    }
    snprintf(out, cap, "%.*s", (int)n, o->node);
    return 0;
  }
  struct config cfg;
  char err[CONFIG_ERR_LEN], addr[300];
  const char *listen = "127.0.0.1:5000";
  int loaded = 0, tls = 0;
  if (o->config) {
    if (config_load_file(&cfg, o->config, err, sizeof err) != 0) {
      fprintf(stderr, "%s\n", err);
      return 1;
    }
    loaded = 1;
    listen = cfg.listen;
    tls = cfg.tls != NULL;
  }
  int r = adminc_dial_address(listen, addr, sizeof addr);
  if (!r)
    snprintf(out, cap, "%s://%s", tls ? "https" : "http", addr);
  else
    fprintf(stderr, PROG " warm: cannot dial '%s'\n", listen);
  if (loaded)
    config_free(&cfg);
  return r ? 2 : 0;
}

static int cmd_warm(const struct opts *o) {
  if (o->nargs < 1) {
    fprintf(stderr, PROG " warm: name at least one image\n");
    return 2;
  }
  struct warm *w = calloc(1, sizeof *w);
  if (!w)
    return 1;
  w->o = o;
  w->tty = isatty(STDERR_FILENO);
  int r = node_base(o, w->base, sizeof w->base);
  w->hdrs = curl_slist_append(NULL, accept_manifests);
  for (int i = 0; !r && i < o->nargs; i++)
    r = warm_one(w, o->args[i]);
  curl_slist_free_all(w->hdrs);
  free(w);
  return r;
}

int cachecli(int argc, char **argv) {
  if (argc < 1) {
    fputs(usage, stderr);
    return 2;
  }
  const char *cmd = argv[0];
  struct opts o;
  int r = parse_opts(argc - 1, argv + 1, &o);
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
    fputs(usage, stdout);
    return 0;
  }
  if (r)
    return r == 1 ? 0 : r;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, PROG ": libcurl initialisation failed\n");
    return 1;
  }
  if (strcmp(cmd, "ls") == 0)
    r = cmd_ls(&o);
  else if (strcmp(cmd, "stat") == 0)
    r = cmd_stat(&o);
  else if (strcmp(cmd, "rm") == 0 || strcmp(cmd, "pin") == 0 || strcmp(cmd, "unpin") == 0)
    r = cmd_change(&o, cmd);
  else if (strcmp(cmd, "verify") == 0)
    r = cmd_verify(&o);
  else if (strcmp(cmd, "warm") == 0)
    r = cmd_warm(&o);
  else {
    fprintf(stderr, PROG ": unknown command '%s'\n%s", cmd, usage);
    r = 2;
  }
  curl_global_cleanup();
  return r;
}
