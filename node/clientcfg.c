/* clientcfg.c - `regmesh client-config`: the files each registry client
 * needs to pull through a node, printed, written under a root, or checked.
 *
 * Everything is derived from the node's configuration: the main listener
 * (which routes by containerd's and buildkit's `?ns=` and by the first path
 * component for containers-registries.conf), each upstream's own listener
 * (the only way for dockerd's registry-mirrors and for renamed images), and
 * TLS (https and a CA to trust). Files regmesh owns whole (hosts.toml) are
 * replaced; files with the user's other settings are merged: daemon.json
 * through jansson, registries.conf and buildkitd.toml by replacing the
 * `[[registry]]` tables for our prefixes (or the block between our markers)
 * and leaving every other line as it was. Each write says what changed.
 *
 * With --proxy the node is not named in any registry setting at all: each
 * client gets HTTPS_PROXY pointing at the proxy listener (a systemd drop-in
 * for the daemons, containers.conf for podman) and trusts the proxy CA for
 * exactly the upstream hosts and aliases it intercepts, where the client
 * allows that per host (certs.d, hosts.toml, buildkitd.toml); dockerd takes
 * Docker Hub's trust from the system store only, so Hub's CA goes there.
 */
#include "clientcfg.h"

#include "../common/errors.h"
#include "../common/fsutil.h"
#include "../config/config.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#define CC_FILE_MAX (1024 * 1024) /* existing client files we merge into */
#define MARK_BEGIN "# BEGIN regmesh client-config"
#define MARK_END "# END regmesh client-config"

static const char cc_usage[] =
    "usage: regmesh client-config docker|containerd|buildkit|podman|all\n"
    "           [--config FILE] [--node URL] [--ca FILE] [--no-fallback]\n"
    "           [--proxy [--proxy-url URL]] [--write ROOT | --check ROOT]\n"
    "\n"
    "Prints the files each client needs to pull every upstream of the node\n"
    "through it (or writes them under ROOT, e.g. /, merging into an existing\n"
    "daemon.json, registries.conf or buildkitd.toml and saying what changed;\n"
    "or tells whether the files under ROOT point at the node: exit 0 if so).\n"
    "\n"
    "  --config FILE   the node's configuration (default: the built-in one)\n"
    "  --node URL      how clients reach the main listener, e.g.\n"
    "                  https://build-07.example:5000 (default: from `listen`,\n"
    "                  a wildcard address as 127.0.0.1)\n"
    "  --ca FILE       CA certificate clients trust for an https node\n"
    "  --no-fallback   clients never go to the upstream registries themselves\n"
    "  --proxy         instead, the files that send each client through the node's\n"
    "                  HTTPS proxy (the proxy: section; image names stay as they\n"
    "                  are): HTTPS_PROXY for the daemon and the proxy CA for each\n"
    "                  upstream host and alias (docs/proxy.md)\n"
    "  --proxy-url URL how clients reach the proxy, e.g. http://build-07.example:3128\n"
    "                  (default: from proxy.listen, a wildcard address as 127.0.0.1)\n";

enum cc_client { CC_DOCKER = 1, CC_CONTAINERD = 2, CC_BUILDKIT = 4, CC_PODMAN = 8 };

/* How clients reach one listener of the node. */
struct cc_addr {
  char scheme[8];     /* "http" or "https" */
  char host[256];     /* how clients name the node: "127.0.0.1", "[::1]" */
  char hostport[300]; /* host:port */
};

struct cc {
  const struct config *cfg;
  struct cc_addr node; /* the main listener */
  const char *ca;
  int no_fallback;
  const char *root; /* --write / --check */
  int check;
  int mismatches;
  /* --proxy */
  int proxy_mode;
  char proxy_url[320];               /* "http://127.0.0.1:3128" */
  char *proxy_pem;                   /* proxy.ca.cert's text, owned */
  const struct config_upstream *hub; /* Docker Hub's upstream, or NULL */
};

/* ---- small helpers ---- */

static int cc_join(char *out, size_t len, const char *root, const char *rel) {
  int n = snprintf(out, len, "%s/%s", root, rel);
  return n > 0 && (size_t)n < len ? 0 : RM_ETOOBIG;
}

/* read_all: the file whole, NUL-terminated; *out NULL when it does not
 * exist. 0, a negative errno, RM_ECONFIG (too large) or RM_EPARSE (a NUL
 * byte inside: these are text files). */
static int read_all(const char *path, char **out) {
  char *buf = NULL, err[8];
  size_t len = 0;
  *out = NULL;
  int r = config_read_file(path, CC_FILE_MAX, &buf, &len, err, sizeof err);
  if (r == UV_ENOENT)
    return 0;
  if (r)
    return r;
  char *t = memchr(buf, '\0', len) ? NULL : realloc(buf, len + 1);
  if (!t) {
    int nul = memchr(buf, '\0', len) != NULL;
    free(buf);
    return nul ? RM_EPARSE : UV_ENOMEM;
  }
  t[len] = '\0';
  *out = t;
  return 0;
}

/* write_atomic: a temporary file next to path, then rename, so a client
 * never reads half a file. */
static int write_atomic(const char *path, const char *text) {
  char tmp[4200], dir[4200];
  if (snprintf(tmp, sizeof tmp, "%s.regmesh-tmp", path) >= (int)sizeof tmp)
    return RM_ETOOBIG;
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash && slash != dir) {
    *slash = '\0';
    int r = rm_mkdir_p(dir);
    if (r)
      return r;
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return -errno;
  /* 0644 whatever the umask: rootless podman and buildkitd read these as
   * other users, and a CA nobody can read is no CA */
  int r = fchmod(fd, 0644) != 0 ? -errno : 0;
  if (r == 0)
    r = rm_write_all(fd, text, strlen(text));
  if (r == 0 && fsync(fd) != 0)
    r = -errno;
  if (close(fd) != 0 && r == 0)
    r = -errno;
  if (r == 0 && rename(tmp, path) != 0)
    r = -errno;
  if (r)
    unlink(tmp);
  return r;
}

/* A growing string; on allocation failure it stays as it was and `bad` is set. */
struct sbuf {
  char *s;
  size_t n, cap;
  int bad;
};

static void sb_add(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(struct sbuf *b, const char *fmt, ...) {
  va_list ap;
  for (;;) {
    size_t room = b->cap - b->n;
    va_start(ap, fmt);
    int w = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? room : 0, fmt, ap);
    va_end(ap);
    if (w < 0) {
      b->bad = 1;
      return;
    }
    if (b->s && (size_t)w < room) {
      b->n += (size_t)w;
      return;
    }
    size_t cap = (b->cap ? b->cap * 2 : 1024) + (size_t)w;
    char *s = realloc(b->s, cap);
    if (!s) {
      b->bad = 1;
      return;
    }
    b->s = s;
    b->cap = cap;
  }
}

/* ---- where each upstream is reached ---- */

static int is_hub(const char *host) { return strcmp(host, "docker.io") == 0; }

/* The registry a client falls back to: docker.io's API host, else the name. */
static const char *fallback_host(const char *host) {
  return is_hub(host) ? "registry-1.docker.io" : host;
}

static int listener_https(const struct cc *c, const struct config_upstream *u) {
  return (u && u->tls) || c->cfg->tls;
}

/* host:port of an upstream's own listener, named like the main one. */
static void upstream_hostport(const struct cc *c, const struct config_upstream *u, char *out,
                              size_t len) {
  const char *colon = strrchr(u->listen, ':');
  snprintf(out, len, "%s:%s", c->node.host, colon ? colon + 1 : "");
}

static int is_loopback_host(const char *h) {
  return strncmp(h, "127.", 4) == 0 || strcmp(h, "[::1]") == 0 || strcmp(h, "localhost") == 0;
}

/* ---- writing, merging, checking one file ---- */

/* emit_known: print (no root), or write/check ROOT/rel, which now holds
 * `have` (NULL: absent), against `want`. */
static int emit_known(struct cc *c, const char *rel, const char *have, const char *want,
                      const char *note) {
  char path[4096];
  int r = 0;
  if (!c->root) {
    printf("# ---- /%s%s%s\n%s\n", rel, note ? " " : "", note ? note : "", want);
    return 0;
  }
  if (cc_join(path, sizeof path, c->root, rel) != 0)
    return RM_ETOOBIG;
  int same = have && strcmp(have, want) == 0;
  if (c->check) {
    printf("%-8s %s\n", same ? "ok" : have ? "differs" : "missing", path);
    c->mismatches += !same;
  } else if (same) {
    printf("unchanged %s\n", path);
  } else if ((r = write_atomic(path, want)) != 0) {
    fprintf(stderr, "regmesh client-config: cannot write %s: %s\n", path, rm_strerror(r));
  } else {
    printf("%s %s%s%s\n", have ? "updated" : "wrote", path, note ? " " : "", note ? note : "");
  }
  return r;
}

/* existing: what ROOT/rel holds now (NULL when absent or printing). */
static int existing(const struct cc *c, const char *rel, char **out) {
  char path[4096];
  *out = NULL;
  if (!c->root)
    return 0;
  if (cc_join(path, sizeof path, c->root, rel) != 0)
    return RM_ETOOBIG;
  int r = read_all(path, out);
  if (r)
    fprintf(stderr, "regmesh client-config: %s: %s\n", path, rm_strerror(r));
  return r;
}

/* emit: emit_known for a file regmesh owns whole. */
static int emit(struct cc *c, const char *rel, const char *want, const char *note) {
  char *have = NULL;
  int r = existing(c, rel, &have);
  if (r == 0)
    r = emit_known(c, rel, have, want, note);
  free(have);
  return r;
}

/* ---- containerd and dockerd's containerd store: hosts.toml ---- */

static void hosts_toml(const struct cc *c, const struct config_upstream *u, struct sbuf *b) {
  sb_add(b, "# regmesh client-config: %s through the node at %s://%s\n", u->host,
         c->node.scheme, c->node.hostport);
  if (c->no_fallback) {
    /* the node is the server too, so nothing else is ever asked (containerd
     * wants a [host] table all the same) */
    sb_add(b, "server = \"%s://%s\"\n", c->node.scheme, c->node.hostport);
    if (c->ca)
      sb_add(b, "ca = \"%s\"\n", c->ca);
    sb_add(b, "\n");
  } else {
    sb_add(b, "server = \"https://%s\"\n\n", fallback_host(u->host));
  }
  sb_add(b, "[host.\"%s://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
         c->node.scheme, c->node.hostport);
  if (c->ca)
    sb_add(b, "  ca = \"%s\"\n", c->ca);
}

static int gen_hosts_dir(struct cc *c, const char *dir) {
  int rc = 0;
  for (size_t i = 0; i < c->cfg->n_upstreams; i++) {
    const struct config_upstream *u = &c->cfg->upstreams[i];
    struct sbuf b = {0};
    char rel[600];
    hosts_toml(c, u, &b);
    snprintf(rel, sizeof rel, "%s/%s/hosts.toml", dir, u->host);
    int r = b.bad ? UV_ENOMEM : emit(c, rel, b.s, NULL);
    free(b.s);
    if (r)
      rc = r;
  }
  return rc;
}

/* ---- dockerd: daemon.json ---- */

/* json_str_array_has: index of s in the array, or -1. */
static int json_str_array_find(json_t *a, const char *s) {
  for (size_t i = 0; i < json_array_size(a); i++) {
    const char *v = json_string_value(json_array_get(a, i));
    if (v && strcmp(v, s) == 0)
      return (int)i;
  }
  return -1;
}

static int gen_daemon_json(struct cc *c) {
  const struct config *cfg = c->cfg;
  const struct config_upstream *hub = config_upstream_find(cfg, "docker.io", 9);
  char mirror[400] = "", note[600] = "";
  json_t *insecure = json_array();
  if (!insecure)
    return UV_ENOMEM;
  /* registry-mirrors sends no registry name: the listener must be docker.io's */
  if (hub && hub->listen)
    snprintf(mirror, sizeof mirror, "%s://%s:%s", listener_https(c, hub) ? "https" : "http",
             c->node.host, strrchr(hub->listen, ':') + 1);
  else if (hub && hub->is_default)
    snprintf(mirror, sizeof mirror, "%s://%s", c->node.scheme, c->node.hostport);
  else
    snprintf(note, sizeof note, "(docker.io is not the default upstream and has no listen: "
                                "registry-mirrors cannot reach it)");
  /* renamed images (<node>:<port>/org/app) over plain HTTP beyond loopback */
  for (size_t i = 0; i < cfg->n_upstreams; i++) {
    const struct config_upstream *u = &cfg->upstreams[i];
    char hp[300];
    if (!u->listen || listener_https(c, u) || is_loopback_host(c->node.host))
      continue;
    upstream_hostport(c, u, hp, sizeof hp);
    json_array_append_new(insecure, json_string(hp));
  }
  char *have = NULL;
  int r = existing(c, "etc/docker/daemon.json", &have);
  if (r) {
    json_decref(insecure);
    return r;
  }
  json_t *doc = NULL;
  if (have && have[strspn(have, " \t\r\n")]) {
    json_error_t e;
    doc = json_loads(have, JSON_REJECT_DUPLICATES, &e);
    if (!json_is_object(doc)) {
      fprintf(stderr, "regmesh client-config: %s/etc/docker/daemon.json:%d:%d: %s; not changed\n",
              c->root, e.line, e.column, doc ? "not a JSON object" : e.text);
      json_decref(doc);
      json_decref(insecure);
      free(have);
      return RM_EPARSE;
    }
  } else {
    doc = json_object();
  }
  json_t *before = json_deep_copy(doc);
  if (mirror[0]) {
    json_t *m = json_object_get(doc, "registry-mirrors");
    if (!json_is_array(m)) {
      m = json_array();
      json_object_set_new(doc, "registry-mirrors", m);
    }
    int at = json_str_array_find(m, mirror);
    if (at != 0) { /* first: dockerd tries mirrors in order */
      if (at > 0)
        json_array_remove(m, (size_t)at);
      json_array_insert_new(m, 0, json_string(mirror));
      snprintf(note, sizeof note, "(registry-mirrors: %s %s", mirror, at > 0 ? "moved first" : "added first");
    }
  }
  if (json_array_size(insecure)) {
    json_t *a = json_object_get(doc, "insecure-registries");
    if (!json_is_array(a)) {
      a = json_array();
      json_object_set_new(doc, "insecure-registries", a);
    }
    for (size_t i = 0; i < json_array_size(insecure); i++) {
      const char *hp = json_string_value(json_array_get(insecure, i));
      if (json_str_array_find(a, hp) < 0) {
        json_array_append_new(a, json_string(hp));
        size_t l = strlen(note);
        snprintf(note + l, sizeof note - l, "%sinsecure-registries: %s added", l ? "; " : "(", hp);
      }
    }
  }
  json_decref(insecure);
  if (note[0] != '\0' && note[strlen(note) - 1] != ')') {
    size_t l = strlen(note);
    snprintf(note + l, sizeof note - l, ")");
  }
  if (c->check) {
    /* what matters is the keys, not how the file is laid out */
    int same = before && json_object_size(before) && json_equal(before, doc);
    printf("%-8s %s/etc/docker/daemon.json\n", same ? "ok" : "differs", c->root);
    c->mismatches += !same;
    json_decref(before);
    json_decref(doc);
    free(have);
    return 0;
  }
  json_decref(before);
  char *text = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(doc);
  if (!text) {
    free(have);
    return UV_ENOMEM;
  }
  struct sbuf b = {0};
  sb_add(&b, "%s\n", text);
  free(text);
  r = b.bad ? UV_ENOMEM
            : emit_known(c, "etc/docker/daemon.json", have, b.s, note[0] ? note : NULL);
  free(b.s);
  free(have);
  return r;
}

/* ---- TOML files shared with the user: a marked block ---- */

/* Removes lines [from, to) of text (offsets), in place. */
static void cut(char *text, size_t from, size_t to) {
  memmove(text + from, text + to, strlen(text + to) + 1);
}

/* drop_marked removes our previous block (markers included). */
static void drop_marked(char *text) {
  char *b = strstr(text, MARK_BEGIN);
  if (!b)
    return;
  char *e = strstr(b, MARK_END);
  size_t to = e ? (size_t)(e - text) + strlen(MARK_END) : strlen(text);
  if (text[to] == '\n')
    to++;
  cut(text, (size_t)(b - text), to);
}

/* A line's text without leading blanks. */
static const char *lstrip(const char *p) {
  while (*p == ' ' || *p == '\t')
    p++;
  return p;
}

/* drop_registries removes registries.conf [[registry]] tables (with their
 * [[registry.mirror]] sub-tables) whose prefix (or location, without a
 * prefix) is one of `hosts`: ours replace them. Other lines stay. */
static void drop_registries(char *text, const struct config *cfg) {
  size_t pos = 0;
  while (text[pos]) {
    const char *line = text + pos;
    const char *t = lstrip(line);
    if (strncmp(t, "[[registry]]", 12) != 0) {
      const char *nl = strchr(line, '\n');
      pos = nl ? (size_t)(nl - text) + 1 : strlen(text);
      continue;
    }
    /* the table runs to the next table header other than a mirror */
    size_t end = pos;
    const char *nl = strchr(line, '\n');
    end = nl ? (size_t)(nl - text) + 1 : strlen(text);
    char key[300] = "";
    int has_prefix = 0;
    while (text[end]) {
      const char *l = text + end;
      const char *lt = lstrip(l);
      if (lt[0] == '[' && strncmp(lt, "[[registry.mirror]]", 19) != 0)
        break;
      char v[300];
      if (!has_prefix && sscanf(lt, "prefix = \"%299[^\"]\"", v) == 1) {
        snprintf(key, sizeof key, "%s", v);
        has_prefix = 1;
      } else if (!key[0] && sscanf(lt, "location = \"%299[^\"]\"", v) == 1) {
        snprintf(key, sizeof key, "%s", v);
      }
      const char *n2 = strchr(l, '\n');
      end = n2 ? (size_t)(n2 - text) + 1 : strlen(text);
    }
    int ours = 0;
    for (size_t i = 0; i < cfg->n_upstreams && !ours; i++)
      ours = strcmp(key, cfg->upstreams[i].host) == 0;
    if (ours)
      cut(text, pos, end);
    else
      pos = end;
  }
}

/* ours_removed: a copy of have (NULL: "") without our marked block and,
 * for registries.conf, without other tables for our upstreams. */
static char *ours_removed(const char *have, const struct config *cfg, int registries) {
  char *t = strdup(have ? have : "");
  if (!t)
    return NULL;
  drop_marked(t);
  if (registries)
    drop_registries(t, cfg);
  return t;
}

/* emit_merged: the user's lines (rest), then our block, against have.
 * Frees have, rest and the block. */
static int emit_merged(struct cc *c, const char *rel, char *have, char *rest,
                       struct sbuf *blk) {
  struct sbuf b = {0};
  size_t n = strlen(rest);
  while (n > 0 && rest[n - 1] == '\n')
    rest[--n] = '\0';
  if (n)
    sb_add(&b, "%s\n\n", rest);
  sb_add(&b, "%s\n%s%s\n", MARK_BEGIN, blk->s, MARK_END);
  int r = b.bad ? UV_ENOMEM : emit_known(c, rel, have, b.s, NULL);
  free(b.s);
  free(have);
  free(rest);
  free(blk->s);
  return r;
}

/* ---- buildkitd.toml ---- */

#define BUILDKIT_TOML "etc/buildkit/buildkitd.toml"

/* emit_buildkit merges our [registry."..."] tables (blk, freed) into
 * buildkitd.toml. */
static int emit_buildkit(struct cc *c, struct sbuf *blk) {
  char *have = NULL, *rest = NULL;
  int r = blk->bad ? UV_ENOMEM : existing(c, BUILDKIT_TOML, &have);
  if (r == 0 && !(rest = ours_removed(have, c->cfg, 0)))
    r = UV_ENOMEM;
  /* a table of ours outside the block would be a duplicate TOML table */
  for (const char *l = blk->s; r == 0 && l && *l;) {
    size_t n = strcspn(l, "\n");
    char hdr[400];
    if (l[0] == '[' && n < sizeof hdr) {
      snprintf(hdr, sizeof hdr, "%.*s", (int)n, l);
      if (strstr(rest, hdr)) {
        fprintf(stderr,
                "regmesh client-config: %s/" BUILDKIT_TOML " already has "
                "%s; remove it (regmesh writes its own) and run again\n",
                c->root, hdr);
        r = RM_ECONFIG;
      }
    }
    l += n + (l[n] == '\n');
  }
  if (r) {
    free(have);
    free(rest);
    free(blk->s);
    return r;
  }
  return emit_merged(c, BUILDKIT_TOML, have, rest, blk);
}

static int gen_buildkit(struct cc *c) {
  struct sbuf blk = {0};
  for (size_t i = 0; i < c->cfg->n_upstreams; i++)
    sb_add(&blk, "[registry.\"%s\"]\n  mirrors = [\"%s\"]\n", c->cfg->upstreams[i].host,
           c->node.hostport);
  /* a mirror's own settings come from its own table (buildkit reads
   * [registry."<mirror host>"], not the upstream's) */
  sb_add(&blk, "[registry.\"%s\"]\n", c->node.hostport);
  if (strcmp(c->node.scheme, "http") == 0)
    sb_add(&blk, "  http = true\n");
  else if (c->ca)
    sb_add(&blk, "  ca = [\"%s\"]\n", c->ca);
  else
    sb_add(&blk, "  http = false\n");
  return emit_buildkit(c, &blk);
}

/* ---- containers-registries.conf ---- */

static int gen_podman(struct cc *c) {
  struct sbuf blk = {0};
  int insecure = strcmp(c->node.scheme, "http") == 0;
  for (size_t i = 0; i < c->cfg->n_upstreams; i++) {
    const char *h = c->cfg->upstreams[i].host;
    /* the first path component names the upstream for the node */
    sb_add(&blk, "[[registry]]\nprefix = \"%s\"\n", h);
    if (c->no_fallback) {
      sb_add(&blk, "location = \"%s/%s\"\n%s", c->node.hostport, h,
             insecure ? "insecure = true\n" : "");
    } else {
      sb_add(&blk, "location = \"%s\"\n[[registry.mirror]]\nlocation = \"%s/%s\"\n%s", h,
             c->node.hostport, h, insecure ? "insecure = true\n" : "");
    }
  }
  char *have = NULL, *rest = NULL;
  int r = blk.bad ? UV_ENOMEM : existing(c, "etc/containers/registries.conf", &have);
  if (r == 0 && !(rest = ours_removed(have, c->cfg, 1)))
    r = UV_ENOMEM;
  if (r) {
    free(have);
    free(blk.s);
    return r;
  }
  r = emit_merged(c, "etc/containers/registries.conf", have, rest, &blk);
  if (r == 0 && c->ca && strcmp(c->node.scheme, "https") == 0) {
    /* containers/image trusts per host:port directory */
    char *pem = NULL, rel[400];
    if ((r = read_all(c->ca, &pem)) == 0 && pem) {
      snprintf(rel, sizeof rel, "etc/containers/certs.d/%s/ca.crt", c->node.hostport);
      r = emit(c, rel, pem, NULL);
    }
    free(pem);
  }
  return r;
}

static int gen_docker(struct cc *c) {
  int r = gen_daemon_json(c);
  return r ? r : gen_hosts_dir(c, "etc/docker/certs.d");
}

static int gen_containerd(struct cc *c) {
  return gen_hosts_dir(c, "etc/containerd/certs.d");
}

/* ---- arguments ---- */

/* addr_parse parses --node or --proxy-url: http(s)://host[:port], no path;
 * no characters that would need quoting in the files that embed it (JSON,
 * TOML, systemd's Environment=, where % starts a specifier). */
static int addr_parse(struct cc_addr *a, const char *url) {
  const char *rest;
  if (strncmp(url, "http://", 7) == 0) {
    snprintf(a->scheme, sizeof a->scheme, "http");
    rest = url + 7;
  } else if (strncmp(url, "https://", 8) == 0) {
    snprintf(a->scheme, sizeof a->scheme, "https");
    rest = url + 8;
  } else {
    return RM_EPARSE;
  }
  size_t n = strlen(rest);
  while (n > 0 && rest[n - 1] == '/')
    n--;
  if (n == 0 || n >= sizeof a->hostport || strcspn(rest, "/@? \"\\%") < n)
    return RM_EPARSE;
  memcpy(a->hostport, rest, n);
  a->hostport[n] = '\0';
  const char *colon = strrchr(a->hostport, ':');
  const char *close = strrchr(a->hostport, ']');
  if (!colon || (close && colon < close)) { /* no port: the scheme's */
    size_t l = strlen(a->hostport);
    snprintf(a->hostport + l, sizeof a->hostport - l, ":%s",
             strcmp(a->scheme, "https") == 0 ? "443" : "80");
    colon = strrchr(a->hostport, ':');
  }
  snprintf(a->host, sizeof a->host, "%.*s", (int)(colon - a->hostport), a->hostport);
  return 0;
}

/* addr_from_listen: a listener ("host:port", validated by the config) as
 * clients on the node's own host reach it: a wildcard address is loopback. */
static void addr_from_listen(struct cc_addr *a, const char *listen, int tls) {
  const char *colon = strrchr(listen, ':');
  size_t hl = colon ? (size_t)(colon - listen) : strlen(listen);
  snprintf(a->scheme, sizeof a->scheme, "%s", tls ? "https" : "http");
  snprintf(a->host, sizeof a->host, "%.*s", (int)hl, listen);
  if (a->host[0] == '\0' || strcmp(a->host, "0.0.0.0") == 0)
    snprintf(a->host, sizeof a->host, "127.0.0.1");
  else if (strcmp(a->host, "[::]") == 0 || strcmp(a->host, "::") == 0)
    snprintf(a->host, sizeof a->host, "[::1]");
  snprintf(a->hostport, sizeof a->hostport, "%s:%s", a->host, colon ? colon + 1 : "");
}

/* ---- --proxy: HTTPS_PROXY and the proxy CA ---- */

#define PROXY_CA "regmesh-proxy-ca.crt"
/* Go never proxies loopback anyway; these keep other tools (curl) off it too */
#define PROXY_NO_PROXY "localhost,127.0.0.0/8,::1"

/* proxy_name: the k-th name clients reach an upstream by through the proxy
 * (each upstream's host, then its aliases), its upstream in *up; NULL past
 * the last. Docker Hub's implied names need no trust of their own: clients
 * use docker.io's settings for them. */
static const char *proxy_name(const struct config *cfg, size_t k,
                              const struct config_upstream **up) {
  for (size_t i = 0; i < cfg->n_upstreams; i++) {
    const struct config_upstream *u = &cfg->upstreams[i];
    if (k <= u->n_aliases) {
      *up = u;
      return k == 0 ? u->host : u->aliases[k - 1];
    }
    k -= 1 + u->n_aliases;
  }
  return NULL;
}

/* A name becomes a directory under ROOT and a TOML string: host[:port] only. */
static int proxy_name_ok(const char *h) {
  size_t n = strlen(h);
  return n > 0 && n < 256 && h[0] != '.' &&
         strspn(h, "abcdefghijklmnopqrstuvwxyz0123456789.-_:[]") == n;
}

/* then: what to run for the client to read the files (not for --check). */
static void then(const struct cc *c, const char *what) {
  if (!c->check)
    printf("# then: %s\n", what);
}

/* gen_dropin: a systemd drop-in putting the proxy into a daemon's
 * environment; dockerd, containerd and buildkitd fetch through Go's
 * http.ProxyFromEnvironment. */
static int gen_dropin(struct cc *c, const char *unit) {
  struct sbuf b = {0};
  char rel[200];
  sb_add(&b,
         "# regmesh client-config --proxy: %s pulls through the node's proxy\n"
         "[Service]\n"
         "Environment=\"HTTPS_PROXY=%s\" \"HTTP_PROXY=%s\" \"NO_PROXY=" PROXY_NO_PROXY
         "\"\n",
         unit, c->proxy_url, c->proxy_url);
  snprintf(rel, sizeof rel, "etc/systemd/system/%s.service.d/regmesh-proxy.conf", unit);
  int r = b.bad ? UV_ENOMEM : emit(c, rel, b.s, NULL);
  free(b.s);
  return r;
}

/* emit_ca: the proxy CA at rel. Printing names the file to copy there
 * rather than print a certificate in the middle of config files. */
static int emit_ca(struct cc *c, const char *rel) {
  if (!c->root) {
    printf("# ---- /%s: a copy of %s\n\n", rel, c->cfg->proxy.ca_cert);
    return 0;
  }
  return emit(c, rel, c->proxy_pem, NULL);
}

/* gen_ca_dirs: the proxy CA in dir/<name>/ for every proxy name (but
 * Docker Hub's with skip_hub), the per-registry layout of dockerd's,
 * containers/image's and containerd's certs.d; with toml also a
 * containerd hosts.toml that names it. */
static int gen_ca_dirs(struct cc *c, const char *dir, int skip_hub, int toml) {
  const struct config_upstream *u;
  const char *h;
  int rc = 0;
  for (size_t k = 0; (h = proxy_name(c->cfg, k, &u)) != NULL; k++) {
    char rel[600];
    int r = 0;
    if (skip_hub && u == c->hub)
      continue;
    if (toml) {
      /* the upstream itself with our CA, no mirror; the CA is added to the
       * system roots. containerd 1.6 and 1.7 refuse a hosts.toml without
       * a [host] table (containerd #10027); an empty one adds no host. */
      struct sbuf b = {0};
      sb_add(&b,
             "# regmesh client-config --proxy: %s through the node's proxy at %s\n"
             "server = \"https://%s\"\nca = \"/%s/%s/" PROXY_CA "\"\n\n[host]\n",
             h, c->proxy_url, fallback_host(h), dir, h);
      snprintf(rel, sizeof rel, "%s/%s/hosts.toml", dir, h);
      r = b.bad ? UV_ENOMEM : emit(c, rel, b.s, NULL);
      free(b.s);
    }
    snprintf(rel, sizeof rel, "%s/%s/" PROXY_CA, dir, h);
    if (r == 0)
      r = emit_ca(c, rel);
    if (r)
      rc = r;
  }
  return rc;
}

static int gen_docker_proxy(struct cc *c) {
  int r = gen_dropin(c, "docker");
  if (r == 0)
    r = gen_ca_dirs(c, "etc/docker/certs.d", 1, 0);
  /* dockerd checks registry-1.docker.io against the system roots only,
   * never certs.d (lookupV2Endpoints); auth.docker.io rides along */
  if (r == 0 && c->hub &&
      (r = emit_ca(c, "usr/local/share/ca-certificates/" PROXY_CA)) == 0)
    then(c, "update-ca-certificates  (Fedora, RHEL: the CA goes to "
            "/etc/pki/ca-trust/source/anchors/, then update-ca-trust)");
  if (r == 0)
    then(c, "systemctl daemon-reload && systemctl restart docker");
  return r;
}

static int gen_containerd_proxy(struct cc *c) {
  int r = gen_dropin(c, "containerd");
  if (r == 0)
    r = gen_ca_dirs(c, "etc/containerd/certs.d", 0, 1);
  if (r == 0)
    then(c, "systemctl daemon-reload && systemctl restart containerd  (CRI reads these "
            "with config_path = \"/etc/containerd/certs.d\"; ctr wants --hosts-dir)");
  return r;
}

static int gen_buildkit_proxy(struct cc *c) {
  const struct config_upstream *u;
  const char *h;
  struct sbuf blk = {0};
  /* docker.io's table serves registry-1.docker.io too */
  for (size_t k = 0; (h = proxy_name(c->cfg, k, &u)) != NULL; k++)
    sb_add(&blk, "[registry.\"%s\"]\n  ca = [\"/etc/buildkit/" PROXY_CA "\"]\n", h);
  /* first: a table of the user's for one of our hosts stops it all */
  int r = emit_buildkit(c, &blk);
  if (r == 0)
    r = gen_dropin(c, "buildkit");
  if (r == 0)
    r = emit_ca(c, "etc/buildkit/" PROXY_CA);
  if (r == 0)
    then(c, "systemctl daemon-reload && systemctl restart buildkit");
  return r;
}

static int gen_podman_proxy(struct cc *c) {
  struct sbuf b = {0};
  /* podman is daemonless: each run sets [engine] env in its own
   * environment (containers/common setupEnv), unless already set there */
  sb_add(&b,
         "# regmesh client-config --proxy: podman and buildah pull through the node's "
         "proxy\n"
         "[engine]\n"
         "env = [\"HTTPS_PROXY=%s\", \"HTTP_PROXY=%s\", \"NO_PROXY=" PROXY_NO_PROXY
         "\"]\n\n"
         "[containers]\n"
         "# else podman hands these on to every container, whose loopback has no proxy\n"
         "http_proxy = false\n",
         c->proxy_url, c->proxy_url);
  int r = b.bad
              ? UV_ENOMEM
              : emit(c, "etc/containers/containers.conf.d/regmesh-proxy.conf", b.s, NULL);
  free(b.s);
  if (r == 0)
    r = gen_ca_dirs(c, "etc/containers/certs.d", 0, 0);
  return r;
}

/* proxy_setup: the proxy's URL (--proxy-url's, parsed into `given`, or
 * from proxy.listen when NULL) and CA for --proxy. 0, or 1 after saying
 * why. */
static int proxy_setup(struct cc *c, const struct cc_addr *given) {
  const struct config_proxy *p = &c->cfg->proxy;
  const struct config_upstream *u;
  const char *h;
  if (!p->listen || !p->ca_cert) {
    fprintf(stderr, "regmesh client-config: the config has no proxy: section; "
                    "see docs/proxy.md\n");
    return 1;
  }
  struct cc_addr a;
  if (!given) /* the listener speaks plain HTTP; CONNECT carries the TLS */
    addr_from_listen(&a, p->listen, 0);
  snprintf(c->proxy_url, sizeof c->proxy_url, "http://%s",
           given ? given->hostport : a.hostport);
  for (size_t k = 0; (h = proxy_name(c->cfg, k, &u)) != NULL; k++) {
    if (!proxy_name_ok(h)) {
      fprintf(stderr, "regmesh client-config: upstream %s: '%s' is not a host[:port]\n",
              u->host, h);
      return 1;
    }
  }
  int r = read_all(p->ca_cert, &c->proxy_pem);
  if (r == 0 && !c->proxy_pem)
    r = UV_ENOENT;
  if (r) {
    fprintf(stderr, "regmesh client-config: %s: %s\n", p->ca_cert, rm_strerror(r));
    return 1;
  }
  /* every client would get the key that lets anyone impersonate any registry */
  if (strstr(c->proxy_pem, "PRIVATE KEY")) {
    fprintf(stderr,
            "regmesh client-config: %s holds a private key: clients get the "
            "certificate only, so give proxy.ca the key in a file of its own\n",
            p->ca_cert);
    return 1;
  }
  return 0;
}

int clientcfg_cli(int argc, char **argv) {
  if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
    fputs(cc_usage, argc < 1 ? stderr : stdout);
    return argc < 1 ? 2 : 0;
  }
  unsigned which = 0;
  if (strcmp(argv[0], "docker") == 0)
    which = CC_DOCKER;
  else if (strcmp(argv[0], "containerd") == 0)
    which = CC_CONTAINERD;
  else if (strcmp(argv[0], "buildkit") == 0)
    which = CC_BUILDKIT;
  else if (strcmp(argv[0], "podman") == 0)
    which = CC_PODMAN;
  else if (strcmp(argv[0], "all") == 0)
    which = CC_DOCKER | CC_CONTAINERD | CC_BUILDKIT | CC_PODMAN;
  else {
    fprintf(stderr, "regmesh client-config: unknown client '%s'\n%s", argv[0], cc_usage);
    return 2;
  }
  struct cc c = {0};
  const char *config = NULL, *node = NULL, *proxy_url = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int more = i + 1 < argc;
    if (strcmp(a, "--config") == 0 && more)
      config = argv[++i];
    else if (strcmp(a, "--node") == 0 && more)
      node = argv[++i];
    else if (strcmp(a, "--ca") == 0 && more)
      c.ca = argv[++i];
    else if (strcmp(a, "--write") == 0 && more && !c.root)
      c.root = argv[++i];
    else if (strcmp(a, "--check") == 0 && more && !c.root) {
      c.root = argv[++i];
      c.check = 1;
    } else if (strcmp(a, "--no-fallback") == 0)
      c.no_fallback = 1;
    else if (strcmp(a, "--proxy") == 0)
      c.proxy_mode = 1;
    else if (strcmp(a, "--proxy-url") == 0 && more)
      proxy_url = argv[++i];
    else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      fputs(cc_usage, stdout);
      return 0;
    } else {
      fprintf(stderr, "regmesh client-config: bad argument '%s'\n%s", a, cc_usage);
      return 2;
    }
  }
  if (c.ca && (c.ca[0] != '/' || strpbrk(c.ca, "\"\\\n\r\t"))) {
    fprintf(stderr, "regmesh client-config: --ca needs an absolute path (clients read it "
                    "from their own directory)\n");
    return 2;
  }
  if (c.proxy_mode ? node || c.ca || c.no_fallback : proxy_url != NULL) {
    fprintf(stderr, "regmesh client-config: %s\n%s",
            c.proxy_mode
                ? "--node, --ca and --no-fallback are for the mirror files, not --proxy"
                : "--proxy-url goes with --proxy",
            cc_usage);
    return 2;
  }
  struct cc_addr given;
  if (proxy_url &&
      (addr_parse(&given, proxy_url) != 0 || strcmp(given.scheme, "http") != 0)) {
    fprintf(stderr,
            "regmesh client-config: --proxy-url wants http://host[:port], got '%s'\n",
            proxy_url);
    return 2;
  }
  struct config cfg;
  char err[CONFIG_ERR_LEN];
  int r = config ? config_load_file(&cfg, config, err, sizeof err) : config_default_builtin(&cfg);
  if (r) {
    fprintf(stderr, "%s\n", config ? err : rm_strerror(r));
    return 1;
  }
  c.cfg = &cfg;
  c.hub = config_upstream_find(&cfg, "docker.io", 9);
  if (node && addr_parse(&c.node, node) != 0) {
    fprintf(stderr,
            "regmesh client-config: --node wants http(s)://host[:port], got '%s'\n",
            node);
    config_free(&cfg);
    return 2;
  }
  if (!node)
    addr_from_listen(&c.node, cfg.listen, cfg.tls != NULL);
  /* by bit of enum cc_client */
  static int (*const gen[2][4])(struct cc *) = {
      {gen_docker, gen_containerd, gen_buildkit, gen_podman},
      {gen_docker_proxy, gen_containerd_proxy, gen_buildkit_proxy, gen_podman_proxy}};
  int setup = c.proxy_mode ? proxy_setup(&c, proxy_url ? &given : NULL) : 0;
  int rc = setup;
  for (unsigned i = 0; setup == 0 && i < 4; i++)
    if ((which & 1u << i) && (r = gen[c.proxy_mode][i](&c)) != 0)
      rc = r;
  free(c.proxy_pem);
  config_free(&cfg);
  if (rc)
    return 1;
  return c.check && c.mismatches ? 1 : 0;
}
