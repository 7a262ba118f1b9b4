/* config.c - the configuration schema and the walk that applies it.
 *
 * The YAML document is first read into a small tree (config_tree.c); this
 * file then walks it against the schema. The schema is data: each section is
 * a table of keys, each key names a setter for its type (string, listen
 * address, size, duration, ...), the offset of the field it fills, and its
 * bounds. One generic function applies a table to a mapping: it rejects
 * unknown keys (suggesting the nearest known one), duplicate keys and
 * missing required keys, and then runs the section's cross-key check. A new
 * section is a struct, a table, and one row in top_keys; `cluster:` and
 * `proxy:` were added that way.
 *
 * Checks that span sections run last, in top_check: the default upstream,
 * `private: true` without `auth:`, upstream aliases that another upstream
 * already answers to (the proxy listener could not tell them apart), and
 * listeners that would collide at bind time (the peer and proxy listeners
 * included). Every error stops the walk
 * and is reported once, as "file:line:col: key.path: why", with the position
 * of the offending node.
 *
 * String defaults set by config_init point at static storage so that
 * config_init cannot fail; str_free knows them. A loaded configuration
 * replaces them with heap copies, so after a load every string is owned.
 *
 * The cluster secret is the one value that must not leak: messages about
 * `secret` or `secret_file` never quote the key, only its decoded length,
 * and every buffer that held it is wiped before it is freed.
 *
 * Files the configuration names (secret_file, auth.htpasswd, every tls:
 * block's cert, key and CA, the proxy's CA) are read and checked during the
 * load, blocking,
 * with the same code the node uses at start and on reload: check-config
 * then refuses exactly what the node would, with the key's file:line:col.
 */
#include "config.h"
#include "config_internal.h"

#include "errors.h"
#include "htpasswd.h"
#include "log.h"
#include "tlsctx.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <unistd.h>
#include <uv.h>

static const char default_listen[] = "127.0.0.1:5000";
static const char default_root[] = "./regmesh-data";
static const char default_log_level[] = "info";
static const char default_cluster_bind[] = "0.0.0.0:7946";
static const char default_zone[] = "";
/* the default bind's port + 1, as cluster_check derives it */
static const char default_peer_listen[] = "0.0.0.0:7947";

/* A secret file holds one line of base64; a few KiB is already absurd. */
#define SECRET_FILE_MAX 4096
/* Gossip metadata (memberlist's limit is 512 bytes) carries the peer URL,
 * the zone, the version and rate-limit budgets; these bounds leave room. */
#define CLUSTER_NAME_MAX 128
#define CLUSTER_ZONE_MAX 64
#define CLUSTER_URL_MAX 256

static int is_static(const char *s) {
  return s == default_listen || s == default_root ||
         s == default_log_level || s == default_cluster_bind ||
         s == default_zone || s == default_peer_listen;
}

static void str_free(char *s) {
  if (!is_static(s))
    free(s);
}

/* str_set replaces *field with a copy of (s, len). */
static int str_set(char **field, const char *s, size_t len) {
  char *copy = malloc(len + 1);
  if (copy == NULL)
    return UV_ENOMEM;
  memcpy(copy, s, len);
  copy[len] = '\0';
  str_free(*field);
  *field = copy;
  return 0;
}

static void tls_free(struct config_tls *t) {
  if (t == NULL)
    return;
  free(t->cert);
  free(t->key);
  free(t->ca);
  free(t);
}

static int str_own(char **field) {
  if (*field == NULL || !is_static(*field))
    return 0;
  return str_set(field, *field, strlen(*field));
}

/* ---- walk state and messages ---- */

/* A tls: block whose files are still to be read: top_check loads them
 * once the whole structure is valid, so a config with a missing `listen:`
 * hears about that before about a certificate. */
struct tls_pending {
  const struct config_tls *t;
  const struct config__node *cert, *key, *ca;
  const char *ca_name; /* "client_ca" or "ca" */
  char path[256];      /* "upstreams[3].tls", like walk.path */
};

struct walk {
  struct config *cfg;
  const char *name;
  char *err;
  size_t errlen;
  char path[256]; /* "upstreams[1].url" of the node being applied */
  unsigned nerr;  /* errors so far; the walk goes on past each */
  /* top-level, one per upstream, cluster */
  struct tls_pending tls[CONFIG_MAX_UPSTREAMS + 2];
  size_t n_tls;
  /* proxy.ca's cert and key, checked with the tls: files */
  const struct config__node *proxy_ca_cert, *proxy_ca_key;
};

static size_t path_push_key(struct walk *w, const char *key, size_t len) {
  size_t old = strlen(w->path);
  snprintf(w->path + old, sizeof w->path - old, "%s%.*s", old ? "." : "",
           (int)len, key);
  return old;
}

static size_t path_push_index(struct walk *w, size_t i) {
  size_t old = strlen(w->path);
  snprintf(w->path + old, sizeof w->path - old, "[%zu]", i);
  return old;
}

static void path_pop(struct walk *w, size_t old) { w->path[old] = '\0'; }

static int fail(struct walk *w, const struct config__node *at, const char *fmt,
                ...) __attribute__((format(printf, 3, 4)));

static int fail(struct walk *w, const struct config__node *at, const char *fmt,
                ...) {
  char why[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  /* One line per error, so check-config shows them all at once; past the
   * cap (or the buffer) the last line says how many more there were. */
  unsigned k = w->nerr++;
  if (w->err == NULL || w->errlen == 0 || k > CONFIG_MAX_ERRORS)
    return RM_ECONFIG;
  size_t used = k ? strlen(w->err) : 0;
  if (k == CONFIG_MAX_ERRORS) {
    snprintf(w->err + used, w->errlen - used, "\n%s: more errors follow", w->name);
    return RM_ECONFIG;
  }
  char line[768];
  config__error(k ? line : w->err, k ? sizeof line : w->errlen, w->name,
                at ? at->line : 1, at ? at->col : 1, w->path, "%s", why);
  if (k == 0) /* the first one always, truncated to the buffer if need be */
    return RM_ECONFIG;
  if (used + 1 + strlen(line) < w->errlen)
    snprintf(w->err + used, w->errlen - used, "\n%s", line);
  else
    w->nerr = CONFIG_MAX_ERRORS + 1; /* full: stop adding */
  return RM_ECONFIG;
}

static int fail_nomem(struct walk *w) {
  config__error(w->err, w->errlen, w->name, 1, 1, NULL, "out of memory");
  return UV_ENOMEM;
}

static const char *kind_name(const struct config__node *n) {
  switch (n->kind) {
  case CONFIG__SEQUENCE:
    return "a sequence";
  case CONFIG__MAPPING:
    return "a mapping";
  case CONFIG__ALIAS:
    return "an alias";
  default:
    return n->is_null ? "an empty value" : "a scalar";
  }
}

static int check_plain(struct walk *w, const struct config__node *n) {
  if (n->kind == CONFIG__ALIAS || n->has_anchor)
    return fail(w, n, "anchors and aliases are not supported");
  return 0;
}

/* scalar_text: the text of a non-empty scalar, or an error. */
static int scalar_text(struct walk *w, const struct config__node *n,
                       const char **out) {
  int rc;
  *out = ""; /* defined on failure too: gcc -O3 cannot see callers stop */
  if ((rc = check_plain(w, n)) != 0)
    return rc;
  if (n->kind != CONFIG__SCALAR)
    return fail(w, n, "expected a scalar, got %s", kind_name(n));
  if (n->is_null || n->len == 0)
    return fail(w, n, "value is empty");
  if (strlen(n->text) != n->len)
    return fail(w, n, "value contains a NUL byte");
  *out = n->text;
  return 0;
}

#define Q(buf, s) config__quote((buf), sizeof(buf), (s), strlen(s))
/* QP quotes a file path: up to 256 characters into a PATH_QUOTE_MAX buffer */
#define PATH_QUOTE_MAX 1100
#define QP(buf, s)                                                             \
  config__quote_max((buf), sizeof(buf), (s), strlen(s), 256)

/* ---- the schema ---- */

struct key_spec;

struct section_spec {
  const struct key_spec *keys;
  size_t n_keys;
  /* check runs after every key of one mapping was applied: vals[i] is the
   * value node of keys[i], or NULL when the key is absent. */
  int (*check)(struct walk *w, const struct config__node *map,
               const struct config__node *const *vals, void *base);
};

struct key_spec {
  const char *name;
  /* set validates v and fills the field at base + offset */
  int (*set)(struct walk *w, const struct config__node *v, void *field,
             const struct key_spec *k);
  size_t offset;
  uint64_t min, max; /* bounds for numbers, sizes, durations; max 0: none */
  int required;
  const struct section_spec *section; /* for set_section */
  const char *why;                    /* for set_refused */
};

#define SECTION_MAX_KEYS 32

static int apply_section(struct walk *w, const struct config__node *map,
                         const struct section_spec *sec, void *base);

/* config_relative_path: a relative path is relative to the configuration's
 * directory, so a config and the files it names can move together; one
 * that starts with $CREDENTIALS_DIRECTORY/ is in the directory systemd's
 * LoadCredential= fills for the service. Returns 0, RM_ETOOBIG, or
 * RM_ENOTFOUND when that variable is not set. */
#define CRED_PREFIX "$CREDENTIALS_DIRECTORY/"
static int config_relative_path(const struct walk *w, const char *s, char *out,
                                size_t outlen) {
  const char *slash = strrchr(w->name, '/');
  int n;
  if (strncmp(s, CRED_PREFIX, sizeof CRED_PREFIX - 1) == 0) {
    const char *dir = getenv("CREDENTIALS_DIRECTORY");
    if (dir == NULL || dir[0] != '/')
      return RM_ENOTFOUND;
    n = snprintf(out, outlen, "%s/%s", dir, s + sizeof CRED_PREFIX - 1);
  } else if (s[0] == '/' || slash == NULL) {
    n = snprintf(out, outlen, "%s", s);
  } else {
    n = snprintf(out, outlen, "%.*s/%s", (int)(slash - w->name), w->name, s);
  }
  return n < 0 || (size_t)n >= outlen ? RM_ETOOBIG : 0;
}

/* resolve_path is config_relative_path with the failure reported at v. */
static int resolve_path(struct walk *w, const struct config__node *v, const char *s,
                        char *out, size_t outlen) {
  int r = config_relative_path(w, s, out, outlen);
  if (r == RM_ENOTFOUND)
    return fail(w, v, "$CREDENTIALS_DIRECTORY is not set: it names the directory of "
                      "systemd's LoadCredential= (run under the unit, or give the path)");
  if (r != 0)
    return fail(w, v, "path is too long");
  return 0;
}

/* ---- setters, one per value type ---- */

static int set_string(struct walk *w, const struct config__node *v, void *field,
                      const struct key_spec *k) {
  const char *s;
  int rc;
  (void)k;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  return str_set(field, s, v->len) ? fail_nomem(w) : 0;
}

static int set_listen(struct walk *w, const struct config__node *v, void *field,
                      const struct key_spec *k) {
  const char *s, *why = NULL;
  struct config__addr addr;
  char q[CONFIG__QUOTE_MAX];
  int rc;
  (void)k;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  if (config__parse_listen(s, &addr, &why) != 0)
    return fail(w, v, "invalid address \"%s\": %s", Q(q, s), why);
  return str_set(field, s, v->len) ? fail_nomem(w) : 0;
}

static int set_bool(struct walk *w, const struct config__node *v, void *field,
                    const struct key_spec *k) {
  const char *s;
  char q[CONFIG__QUOTE_MAX];
  int rc;
  (void)k;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  if (config__parse_bool(s, field) != 0)
    return fail(w, v, "expected true or false, got \"%s\"", Q(q, s));
  return 0;
}

static int check_bounds(struct walk *w, const struct config__node *v,
                        uint64_t x, const struct key_spec *k,
                        const char *unit) {
  if (x < k->min)
    return fail(w, v, "must be at least %llu%s", (unsigned long long)k->min,
                unit);
  if (k->max != 0 && x > k->max)
    return fail(w, v, "must be at most %llu%s", (unsigned long long)k->max,
                unit);
  return 0;
}

/* set_uint fills an unsigned. */
static int set_uint(struct walk *w, const struct config__node *v, void *field,
                    const struct key_spec *k) {
  const char *s;
  char q[CONFIG__QUOTE_MAX];
  uint64_t x;
  int rc;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  rc = config__parse_uint(s, &x);
  if (rc == RM_ETOOBIG || (rc == 0 && x > UINT_MAX))
    return fail(w, v, "number \"%s\" is too large", Q(q, s));
  if (rc != 0)
    return fail(w, v, "expected a whole number, got \"%s\"", Q(q, s));
  if ((rc = check_bounds(w, v, x, k, "")) != 0)
    return rc;
  *(unsigned *)field = (unsigned)x;
  return 0;
}

static int parse_size_node(struct walk *w, const struct config__node *v,
                           const struct key_spec *k, uint64_t *x) {
  const char *s;
  char q[CONFIG__QUOTE_MAX];
  int rc;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  rc = config_parse_size(s, x);
  if (rc == RM_ETOOBIG)
    return fail(w, v, "size \"%s\" is too large", Q(q, s));
  if (rc != 0)
    return fail(w, v, "invalid size \"%s\" (examples: 512MiB, 20GiB, 1048576)",
                Q(q, s));
  return check_bounds(w, v, *x, k, " bytes");
}

/* set_size fills a uint64_t; set_size_t a size_t. */
static int set_size(struct walk *w, const struct config__node *v, void *field,
                    const struct key_spec *k) {
  uint64_t x;
  int rc = parse_size_node(w, v, k, &x);
  if (rc == 0)
    *(uint64_t *)field = x;
  return rc;
}

static int set_size_t(struct walk *w, const struct config__node *v, void *field,
                      const struct key_spec *k) {
  uint64_t x;
  int rc = parse_size_node(w, v, k, &x);
  if (rc == 0)
    *(size_t *)field = (size_t)x;
  return rc;
}

static int parse_duration_node(struct walk *w, const struct config__node *v,
                               uint64_t *x) {
  const char *s;
  char q[CONFIG__QUOTE_MAX];
  int rc;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  rc = config_parse_duration(s, x);
  if (rc == RM_ETOOBIG)
    return fail(w, v, "duration \"%s\" is too large", Q(q, s));
  if (rc != 0)
    return fail(w, v, "invalid duration \"%s\" (examples: 500ms, 10s, 5m, 1h)",
                Q(q, s));
  return 0;
}

/* set_duration fills a uint64_t in milliseconds. */
static int set_duration(struct walk *w, const struct config__node *v, void *field,
                        const struct key_spec *k) {
  uint64_t x;
  int rc;
  if ((rc = parse_duration_node(w, v, &x)) != 0 ||
      (rc = check_bounds(w, v, x, k, " ms")) != 0)
    return rc;
  *(uint64_t *)field = x;
  return 0;
}

/* set_leaf_ttl: proxy.leaf_ttl, its bounds said in the units people write
 * (durations have no day unit). Under 10 minutes leaves would be re-signed
 * all the time; 397 days is the longest a public CA may issue (as for
 * `regmesh ca issue`), and a leaf minted on demand gains nothing beyond. */
#define LEAF_TTL_MIN_MS (10 * 60 * UINT64_C(1000))
#define LEAF_TTL_MAX_MS (397 * 24 * UINT64_C(3600000))
static int set_leaf_ttl(struct walk *w, const struct config__node *v, void *field,
                        const struct key_spec *k) {
  char q[CONFIG__QUOTE_MAX];
  uint64_t x;
  int rc;
  (void)k;
  if ((rc = parse_duration_node(w, v, &x)) != 0)
    return rc;
  if (x < LEAF_TTL_MIN_MS || x > LEAF_TTL_MAX_MS)
    return fail(w, v, "must be from 10m to 397 days (9528h), got \"%s\"", Q(q, v->text));
  *(uint64_t *)field = x;
  return 0;
}

static int set_log_level(struct walk *w, const struct config__node *v,
                         void *field, const struct key_spec *k) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  const char *s;
  char q[CONFIG__QUOTE_MAX];
  enum log_level level;
  int rc;
  (void)k;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  if (log_level_parse(s, &level) != 0 || (unsigned)level > 3)
    return fail(w, v, "expected debug, info, warn or error, got \"%s\"",
                Q(q, s));
  const char *canon = names[level];
  return str_set(field, canon, strlen(canon)) ? fail_nomem(w) : 0;
}

static int set_log_format(struct walk *w, const struct config__node *v,
                          void *field, const struct key_spec *k) {
  const char *s;
  char q[CONFIG__QUOTE_MAX];
  enum log_format f;
  int rc;
  (void)k;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  if (log_format_parse(s, &f) != 0)
    return fail(w, v, "expected text or json, got \"%s\"", Q(q, s));
  *(int *)field = f == LOG_FORMAT_JSON;
  return 0;
}

/* set_host stores the registry host in lower case: it names the upstream in
 * tag keys and metrics, where "GHCR.io" and "ghcr.io" must be one. */
static int set_host(struct walk *w, const struct config__node *v, void *field,
                    const struct key_spec *k) {
  const char *s, *why = NULL;
  char q[CONFIG__QUOTE_MAX];
  int rc;
  (void)k;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  const char *scheme = strstr(s, "://");
  if (scheme != NULL) {
    /* the likeliest slip: the URL where the name goes */
    const char *name = scheme + 3;
    return fail(w, v, "host is the registry's name, not a URL: write "
                "host: %s (and the URL under url:)",
                config__quote(q, sizeof q, name, strcspn(name, "/")));
  }
  if (config__check_registry_host(s, &why) != 0)
    return fail(w, v, "invalid registry host \"%s\": %s", Q(q, s), why);
  if (str_set(field, s, v->len) != 0)
    return fail_nomem(w);
  for (char *p = *(char **)field; *p; p++)
    *p = (char)tolower((unsigned char)*p);
  return 0;
}

static int set_url(struct walk *w, const struct config__node *v, void *field,
                   const struct key_spec *k) {
  const char *s, *why = NULL;
  char q[CONFIG__QUOTE_MAX];
  int rc;
  (void)k;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  int len = config__check_url(s, &why);
  if (len < 0)
    return fail(w, v, "invalid URL \"%s\": %s", Q(q, s), why);
  /* regmesh appends /v2/ itself; with it here every request would 404 */
  if (len >= 3 && strncasecmp(s + len - 3, "/v2", 3) == 0)
    return fail(w, v, "url is the registry's base URL, without /v2: write "
                "url: %s", config__quote_max(q, sizeof q, s, (size_t)len - 3, 100));
  return str_set(field, s, (size_t)len) ? fail_nomem(w) : 0;
}

static int set_env_name(struct walk *w, const struct config__node *v,
                        void *field, const struct key_spec *k) {
  const char *s;
  char q[CONFIG__QUOTE_MAX];
  int rc;
  (void)k;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  if (config__check_env_name(s) != 0)
    return fail(w, v,
                "invalid environment variable name \"%s\" (letters, digits "
                "and _, not starting with a digit)",
                Q(q, s));
  return str_set(field, s, v->len) ? fail_nomem(w) : 0;
}

static int set_section(struct walk *w, const struct config__node *v,
                       void *field, const struct key_spec *k) {
  return apply_section(w, v, k->section, field);
}

static int set_upstreams(struct walk *w, const struct config__node *v,
                         void *field, const struct key_spec *k);

/* set_member_name: cluster.name and zone, which other nodes and
 * `regmesh members` show, so printable and without spaces; k->max bytes. */
static int set_member_name(struct walk *w, const struct config__node *v,
                           void *field, const struct key_spec *k) {
  const char *s, *why = NULL;
  char q[CONFIG__QUOTE_MAX];
  int rc;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  if (config__check_member_name(s, v->len, k->max, &why) != 0) {
    if (v->len > k->max)
      return fail(w, v, "\"%s\" is %zu bytes, at most %llu", Q(q, s),
                  v->len, (unsigned long long)k->max);
    return fail(w, v, "invalid value \"%s\": %s", Q(q, s), why);
  }
  return str_set(field, s, v->len) ? fail_nomem(w) : 0;
}

/* set_gossip_addr: a numeric ip:port, port k->min..65535. bind may use port
 * 0 (the kernel picks one, for tests); what others dial may not, nor may it
 * be a wildcard. */
static int set_gossip_addr(struct walk *w, const struct config__node *v,
                           void *field, const struct key_spec *k) {
  const char *s, *why = NULL;
  struct config__addr addr;
  char q[CONFIG__QUOTE_MAX];
  int rc;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  if (config__parse_ip_port(s, (unsigned)k->min, &addr, &why) != 0)
    return fail(w, v, "invalid address \"%s\": %s", Q(q, s), why);
  if (k->min > 0 && addr.wildcard)
    return fail(w, v,
                "invalid address \"%s\": other nodes cannot dial a wildcard "
                "address; give this node's own IP",
                Q(q, s));
  return str_set(field, s, v->len) ? fail_nomem(w) : 0;
}

static int set_peer_url(struct walk *w, const struct config__node *v,
                        void *field, const struct key_spec *k) {
  const char *s, *why = NULL;
  char q[CONFIG__QUOTE_MAX];
  int rc;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  /* checked before config__check_url, whose advice is for upstreams */
  const char *auth = strstr(s, "://");
  if (auth != NULL && memchr(auth + 3, '@', strcspn(auth + 3, "/")) != NULL)
    return fail(w, v, "invalid URL \"%s\": must not carry credentials",
                Q(q, s));
  int len = config__check_url(s, &why);
  if (len < 0)
    return fail(w, v, "invalid URL \"%s\": %s", Q(q, s), why);
  if ((uint64_t)len > k->max)
    return fail(w, v, "URL is %d bytes, at most %llu", len,
                (unsigned long long)k->max);
  return str_set(field, s, (size_t)len) ? fail_nomem(w) : 0;
}

/* string_list: how set_string_list names and parses one kind of list */
struct string_list {
  const char *expected;   /* "expected a sequence of <expected>" */
  const char *one, *many; /* "invalid <one> ...", "too many <many> ..." */
  int (*parse)(const char *s, char *out, size_t outlen, const char **why);
};

static const struct string_list seed_list = {"host:port", "seed", "seeds",
                                             config__parse_seed};
static const struct string_list alias_list = {"host or host:port", "alias",
                                              "aliases", config__parse_alias};

_Static_assert(CONFIG__ALIAS_MAX <= CONFIG__SEED_MAX,
               "set_string_list's buffer holds an alias");

/* set_string_list fills *list item by item with what kind->parse writes
 * for each; *n counts the stored ones so config_free is right at any point
 * of failure. A null value is an empty list, like a section with every
 * entry commented out. */
static int set_string_list(struct walk *w, const struct config__node *v,
                           const struct key_spec *k, const struct string_list *kind,
                           char ***list, size_t *n) {
  int rc;
  if ((rc = check_plain(w, v)) != 0)
    return rc;
  if (v->kind == CONFIG__SCALAR && v->is_null)
    return 0;
  if (v->kind != CONFIG__SEQUENCE)
    return fail(w, v, "expected a sequence of %s, got %s", kind->expected,
                kind_name(v));
  if (v->n_children > k->max)
    return fail(w, v, "too many %s (%zu, at most %llu)", kind->many, v->n_children,
                (unsigned long long)k->max);
  if (v->n_children == 0)
    return 0;
  *list = calloc(v->n_children, sizeof **list);
  if (*list == NULL)
    return fail_nomem(w);
  size_t i = 0;
  for (const struct config__node *item = v->child; item;
       item = item->next, i++) {
    const char *s, *why = NULL;
    char out[CONFIG__SEED_MAX], q[CONFIG__QUOTE_MAX];
    size_t old = path_push_index(w, i);
    rc = scalar_text(w, item, &s);
    if (rc == 0 && kind->parse(s, out, sizeof out, &why) != 0)
      rc = fail(w, item, "invalid %s \"%s\": %s", kind->one, Q(q, s), why);
    path_pop(w, old);
    if (rc != 0)
      return rc;
    if (((*list)[i] = strdup(out)) == NULL)
      return fail_nomem(w);
    *n = i + 1;
  }
  return 0;
}

/* set_join fills cluster.join, seeds in "host:port" form. */
static int set_join(struct walk *w, const struct config__node *v, void *field,
                    const struct key_spec *k) {
  struct config_cluster *c =
      (struct config_cluster *)((char *)field -
                                offsetof(struct config_cluster, join));
  return set_string_list(w, v, k, &seed_list, &c->join, &c->n_join);
}

/* secret and secret_file are only checked for shape here: cluster_check
 * decodes them once it knows both were not given. */
static int set_secret_source(struct walk *w, const struct config__node *v,
                             void *field, const struct key_spec *k) {
  const char *s;
  (void)field;
  (void)k;
  return scalar_text(w, v, &s);
}

static int set_cluster(struct walk *w, const struct config__node *v,
                       void *field, const struct key_spec *k) {
  struct config_cluster *c = field;
  c->enabled = 1;
  return apply_section(w, v, k->section, field);
}

/* set_refused: a key that belongs to a sibling block; k->why says which. */
static int set_refused(struct walk *w, const struct config__node *v,
                       void *field, const struct key_spec *k) {
  (void)field;
  return fail(w, v, "%s", k->why);
}

/* set_path stores a file name resolved against the configuration's
 * directory: the node may run from anywhere, the message names the file
 * it actually tried. */
static int set_path(struct walk *w, const struct config__node *v, void *field,
                    const struct key_spec *k) {
  char path[PATH_MAX];
  const char *s;
  int rc;
  (void)k;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  if ((rc = resolve_path(w, v, s, path, sizeof path)) != 0)
    return rc;
  return str_set(field, path, strlen(path)) ? fail_nomem(w) : 0;
}

static int set_tls_version(struct walk *w, const struct config__node *v,
                           void *field, const struct key_spec *k) {
  const char *s;
  char q[CONFIG__QUOTE_MAX];
  int rc;
  (void)k;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  if (strcmp(s, "1.2") == 0)
    *(int *)field = TLSCTX_MIN_TLS12;
  else if (strcmp(s, "1.3") == 0)
    *(int *)field = TLSCTX_MIN_TLS13;
  else if (strcmp(s, "1.0") == 0 || strcmp(s, "1.1") == 0)
    return fail(w, v, "TLS %s is not offered: TLS 1.2 is the minimum", s);
  else
    return fail(w, v, "expected \"1.2\" or \"1.3\", got \"%s\"", Q(q, s));
  return 0;
}

/* set_tls allocates the block before applying it, so config_free releases
 * whatever part of it was filled when a key fails. */
static int set_tls(struct walk *w, const struct config__node *v, void *field,
                   const struct key_spec *k) {
  struct config_tls *t = calloc(1, sizeof *t);
  if (t == NULL)
    return fail_nomem(w);
  t->min_version = TLSCTX_MIN_TLS12;
  *(struct config_tls **)field = t;
  return apply_section(w, v, k->section, t);
}

/* names_file: msg is "<file>: ...", as tlsctx_server_new writes it. */
static int names_file(const char *msg, const char *file) {
  size_t n = strlen(file);
  return strncmp(msg, file, n) == 0 && msg[n] == ':';
}

/* tls_defer records a block for tls_check_files; the section checks call
 * it with the block's value nodes. */
static int tls_defer(struct walk *w, const struct config__node *map,
                     const struct config_tls *t,
                     const struct config__node *cert,
                     const struct config__node *key,
                     const struct config__node *ca, const char *ca_name) {
  if (w->n_tls == sizeof w->tls / sizeof w->tls[0])
    return fail(w, map, "too many tls: blocks"); /* the schema allows 66 */
  struct tls_pending *p = &w->tls[w->n_tls++];
  *p = (struct tls_pending){t, cert, key, ca, ca_name, ""};
  snprintf(p->path, sizeof p->path, "%s", w->path);
  return 0;
}

/* check_regular_file: file (the value of key `name` under path `base`, at
 * node at) can be opened and is a regular file. O_NONBLOCK and a regular
 * file only: a FIFO (or /dev/stdin) named here must not hang check-config,
 * nor OpenSSL reading it next. OpenSSL says "system lib" for a missing
 * file; this says what the system said. */
static int check_regular_file(struct walk *w, const char *base, const char *name,
                              const struct config__node *at, const char *file) {
  char q[PATH_QUOTE_MAX], ebuf[128];
  struct stat sb;
  int fd;
  do
    fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  while (fd < 0 && errno == EINTR);
  if (fd >= 0 && (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))) {
    close(fd);
    fd = -1;
    errno = EINVAL;
  }
  if (fd >= 0) {
    close(fd);
    return 0;
  }
  int e = errno;
  snprintf(w->path, sizeof w->path, "%s", base);
  path_push_key(w, name, strlen(name));
  if (e == EINVAL)
    return fail(w, at, "\"%s\" is not a regular file", QP(q, file));
  return fail(w, at, "cannot read \"%s\": %s", QP(q, file),
              strerror_r(e, ebuf, sizeof ebuf));
}

/* tls_check_files builds the server context the node would and throws it
 * away: a wrong pair or an unreadable file is a check-config error, not a
 * failed start. The error goes to the key whose file the reason names. */
static int tls_check_files(struct walk *w, const struct tls_pending *p) {
  const struct config_tls *t = p->t;
  const struct config__node *cert = p->cert, *key = p->key, *ca = p->ca;
  const char *ca_name = p->ca_name;
  char msg[512];
  SSL_CTX *ctx = NULL;
  /* only what tlsctx would refuse anyway is refused here */
  const struct config__node *nodes[3] = {cert, key, ca};
  const char *files[3] = {t->cert, t->key, t->ca};
  const char *names[3] = {"cert", "key", ca_name};
  for (int i = 0; i < 3; i++) {
    int rc = files[i] ? check_regular_file(w, p->path, names[i], nodes[i], files[i]) : 0;
    if (rc != 0)
      return rc;
  }
  int rc = tlsctx_server_new(&ctx, t->cert, t->key, t->ca, t->min_version, msg,
                             sizeof msg);
  if (rc == 0) {
    SSL_CTX_free(ctx);
    return 0;
  }
  const struct config__node *at = cert;
  const char *name = "cert";
  if (t->ca != NULL && ca != NULL && names_file(msg, t->ca) &&
      strcmp(t->ca, t->cert) != 0 && strcmp(t->ca, t->key) != 0) {
    at = ca;
    name = ca_name;
  } else if (names_file(msg, t->key) && strcmp(t->key, t->cert) != 0) {
    at = key;
    name = "key";
  }
  snprintf(w->path, sizeof w->path, "%s", p->path);
  path_push_key(w, name, strlen(name));
  return fail(w, at, "%s", msg);
}

/* ssl_reason: OpenSSL's last reason, for "file: what (reason)"; clears the
 * queue so the next check starts clean. */
static const char *ssl_reason(char *buf, size_t len) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  snprintf(buf, len, "%s", r ? r : "unknown reason");
  ERR_clear_error();
  return buf;
}

/* no_passphrase: an encrypted key is refused, never prompted for: the
 * node starts unattended, and check-config must not hang on a tty. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  (void)buf;
  (void)size;
  (void)rwflag;
  (void)u;
  return -1;
}

/* proxy_check_ca reads proxy.ca and asks for what the proxy will need of
 * it: a certificate, its key, and a CA. A leaf signed by anything but a CA
 * is refused by every client, which would look like a network fault at
 * the first pull rather than a configuration error. The first certificate
 * of the file is the one that signs. */
static int proxy_check_ca(struct walk *w) {
  const struct config_proxy *p = &w->cfg->proxy;
  const struct config__node *cert = w->proxy_ca_cert, *key = w->proxy_ca_key;
  char why[256];
  X509 *x = NULL;
  EVP_PKEY *pk = NULL;
  BIO *b;
  int rc;
  if (p->ca_cert == NULL || p->ca_key == NULL)
    return 0;
  if ((rc = check_regular_file(w, "proxy.ca", "cert", cert, p->ca_cert)) != 0 ||
      (rc = check_regular_file(w, "proxy.ca", "key", key, p->ca_key)) != 0)
    return rc;
  ERR_clear_error();
  snprintf(w->path, sizeof w->path, "proxy.ca.cert");
  if ((b = BIO_new_file(p->ca_cert, "r")) != NULL) {
    x = PEM_read_bio_X509(b, NULL, no_passphrase, NULL);
    BIO_free(b);
  }
  if (x == NULL)
    return fail(w, cert, "%s: no usable PEM certificate (%s)", p->ca_cert,
                ssl_reason(why, sizeof why));
  uint32_t flags = X509_get_extension_flags(x);
  if (!(flags & EXFLAG_CA)) {
    rc = fail(w, cert,
              "%s: not a CA certificate (no basicConstraints CA:TRUE); make "
              "one with: regmesh ca init DIR",
              p->ca_cert);
    goto out;
  }
  if ((flags & EXFLAG_KUSAGE) && !(X509_get_key_usage(x) & KU_KEY_CERT_SIGN)) {
    rc = fail(w, cert, "%s: the CA certificate's keyUsage lacks keyCertSign", p->ca_cert);
    goto out;
  }
  snprintf(w->path, sizeof w->path, "proxy.ca.key");
  if ((b = BIO_new_file(p->ca_key, "r")) != NULL) {
    pk = PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL);
    BIO_free(b);
  }
  if (pk == NULL && ERR_GET_REASON(ERR_peek_last_error()) == PEM_R_BAD_PASSWORD_READ)
    rc = fail(w, key,
              "%s: the key is encrypted; give it unencrypted (the node "
              "starts unattended)",
              p->ca_key);
  else if (pk == NULL)
    rc = fail(w, key, "%s: no usable PEM private key (%s)", p->ca_key,
              ssl_reason(why, sizeof why));
  else if (X509_check_private_key(x, pk) != 1)
    rc = fail(w, key, "%s: the key does not match the certificate %s", p->ca_key,
              p->ca_cert);
out:
  ERR_clear_error();
  EVP_PKEY_free(pk);
  X509_free(x);
  return rc;
}

/* set_networks fills *list with v's networks entry by entry; *n counts the
 * stored ones so config_free is right at any point of failure. Each error
 * points at its entry. */
static int set_networks(struct walk *w, const struct config__node *v, size_t max,
                        struct config_cidr **list, size_t *n) {
  int rc;
  if (v->kind != CONFIG__SEQUENCE)
    return fail(w, v,
                "expected a sequence of networks (\"10.0.0.0/8\", \"::1\"), "
                "got %s",
                kind_name(v));
  if (v->n_children > max)
    return fail(w, v, "too many entries (%zu, at most %zu)", v->n_children, max);
  if (v->n_children == 0)
    return 0;
  *list = calloc(v->n_children, sizeof **list);
  if (*list == NULL)
    return fail_nomem(w);
  size_t i = 0;
  for (const struct config__node *item = v->child; item;
       item = item->next, i++) {
    const char *s, *why = NULL;
    char q[CONFIG__QUOTE_MAX], net[64];
    struct config_cidr c, guess;
    size_t old = path_push_index(w, i);
    memset(&guess, 0, sizeof guess);
    rc = scalar_text(w, item, &s);
    if (rc == 0 && config__parse_cidr(s, &c, &guess, &why) != 0) {
      if (guess.family != 0)
        rc = fail(w, item,
                  "invalid network \"%s\": %s; did you mean %s?", Q(q, s), why,
                  config__format_cidr(&guess, net, sizeof net));
      else
        rc = fail(w, item, "invalid network \"%s\": %s", Q(q, s), why);
    }
    path_pop(w, old);
    if (rc != 0)
      return rc;
    (*list)[i] = c;
    *n = i + 1;
  }
  return 0;
}

/* set_allow fills cfg->allow. An empty list is refused: it would shut
 * every client out, which is never what a short list was meant to do. */
static int set_allow(struct walk *w, const struct config__node *v, void *field,
                     const struct key_spec *k) {
  struct config *cfg = w->cfg;
  int rc;
  (void)field;
  if ((rc = check_plain(w, v)) != 0)
    return rc;
  if ((v->kind == CONFIG__SCALAR && v->is_null) ||
      (v->kind == CONFIG__SEQUENCE && v->n_children == 0))
    return fail(w, v, "empty list lets nobody in; remove the key for loopback-only");
  if ((rc = set_networks(w, v, (size_t)k->max, &cfg->allow, &cfg->n_allow)) != 0)
    return rc;
  cfg->allow_set = 1;
  return 0;
}

/* set_tunnel_allow: proxy.tunnel_allow, parsed as allow: is. Empty (or
 * null) is the default: no exception to the refusal of loopback and
 * link-local targets. */
static int set_tunnel_allow(struct walk *w, const struct config__node *v, void *field,
                            const struct key_spec *k) {
  struct config_proxy *p =
      (struct config_proxy *)((char *)field -
                              offsetof(struct config_proxy, tunnel_allow));
  int rc;
  if ((rc = check_plain(w, v)) != 0)
    return rc;
  if (v->kind == CONFIG__SCALAR && v->is_null)
    return 0;
  return set_networks(w, v, (size_t)k->max, &p->tunnel_allow, &p->n_tunnel_allow);
}

/* is_ipv4_text: digits and dots only, which check_dns_name would take for
 * a name. */
static int is_ipv4_text(const char *s, size_t len) {
  return strspn(s, "0123456789.") == len;
}

/* set_proxy_hosts fills proxy.hosts pair by pair; n_hosts counts the
 * stored ones. Numeric addresses only: the point of the table is that the
 * proxy asks no resolver about these names. */
static int set_proxy_hosts(struct walk *w, const struct config__node *v, void *field,
                           const struct key_spec *k) {
  struct config_proxy *p =
      (struct config_proxy *)((char *)field - offsetof(struct config_proxy, hosts));
  char q[CONFIG__QUOTE_MAX];
  int rc;
  if ((rc = check_plain(w, v)) != 0)
    return rc;
  if (v->kind == CONFIG__SCALAR && v->is_null)
    return 0;
  if (v->kind != CONFIG__MAPPING)
    return fail(w, v, "expected a mapping of host name: address, got %s", kind_name(v));
  size_t n = v->n_children / 2;
  if (n > k->max)
    return fail(w, v, "too many entries (%zu, at most %llu)", n,
                (unsigned long long)k->max);
  if (n == 0)
    return 0;
  p->hosts = calloc(n, sizeof *p->hosts);
  if (p->hosts == NULL)
    return fail_nomem(w);
  size_t i = 0;
  for (const struct config__node *kn = v->child; kn && kn->next;
       kn = kn->next->next, i++) {
    const struct config__node *vn = kn->next;
    struct config_proxy_host *h = &p->hosts[i];
    const char *name, *addr;
    unsigned char bin[16];
    if ((rc = scalar_text(w, kn, &name)) != 0)
      return rc;
    if (config__check_dns_name(name, kn->len) != 0)
      return fail(w, kn,
                  "invalid host name \"%s\" (letters, digits, dots and "
                  "dashes)",
                  Q(q, name));
    if (is_ipv4_text(name, kn->len))
      return fail(w, kn, "\"%s\" is an address; hosts: maps names to addresses",
                  Q(q, name));
    for (size_t j = 0; j < i; j++) {
      if (strcasecmp(p->hosts[j].name, name) != 0)
        continue;
      const struct config__node *first = v->child;
      for (size_t m = 0; m < j; m++)
        first = first->next->next;
      return fail(w, kn, "duplicate host name %s (first at %u:%u)", p->hosts[j].name,
                  first->line, first->col);
    }
    size_t old = path_push_key(w, name, kn->len);
    rc = scalar_text(w, vn, &addr);
    if (rc == 0 && inet_pton(AF_INET, addr, bin) != 1 &&
        inet_pton(AF_INET6, addr, bin) != 1) {
      if (addr[0] == '[')
        rc = fail(w, vn,
                  "invalid address \"%s\": an IPv6 address goes "
                  "without brackets here",
                  Q(q, addr));
      else
        rc = fail(w, vn,
                  "invalid address \"%s\": expected a numeric IPv4 "
                  "or IPv6 address",
                  Q(q, addr));
    }
    path_pop(w, old);
    if (rc != 0)
      return rc;
    if (str_set(&h->name, name, kn->len) != 0 || str_set(&h->addr, addr, vn->len) != 0) {
      p->n_hosts = i + 1; /* the half-filled entry too, for config_free */
      return fail_nomem(w);
    }
    for (char *c = h->name; *c; c++)
      *c = (char)tolower((unsigned char)*c);
    p->n_hosts = i + 1;
  }
  return 0;
}

/* set_htpasswd reads and validates the file now, so a typo in it is a
 * check-config error at this key rather than a node that answers 401 to
 * everyone. The users themselves are the node's to load (it reloads them
 * when the file changes); only the resolved path is kept. */
static int set_htpasswd(struct walk *w, const struct config__node *v,
                        void *field, const struct key_spec *k) {
  char path[PATH_MAX], msg[512];
  struct htpasswd h;
  const char *s;
  int rc;
  (void)k;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  if ((rc = resolve_path(w, v, s, path, sizeof path)) != 0)
    return rc;
  rc = htpasswd_load(&h, path, msg, sizeof msg);
  if (rc == UV_ENOMEM)
    return fail_nomem(w);
  if (rc != 0)
    return fail(w, v, "%s", msg);
  htpasswd_free(&h);
  return str_set(field, path, strlen(path)) ? fail_nomem(w) : 0;
}

/* set_peer_listen: a numeric ip:port, as the node's listener takes it
 * (it binds without resolving), wildcards allowed: this is where we
 * listen, not what others dial. */
static int set_peer_listen(struct walk *w, const struct config__node *v,
                           void *field, const struct key_spec *k) {
  const char *s, *why = NULL;
  struct config__addr addr;
  char q[CONFIG__QUOTE_MAX];
  int rc;
  (void)k;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  if (config__parse_ip_port(s, 1, &addr, &why) != 0)
    return fail(w, v, "invalid address \"%s\": %s", Q(q, s), why);
  return str_set(field, s, v->len) ? fail_nomem(w) : 0;
}

/* ---- sections ---- */

#define FIELD(type, member) .offset = offsetof(type, member)
#define HOUR_MS UINT64_C(3600000)

static const struct key_spec storage_keys[] = {
    {.name = "root", .set = set_string, FIELD(struct config_storage, root)},
    {.name = "max_size",
     .set = set_size,
     FIELD(struct config_storage, max_size)},
};

static const struct section_spec storage_section = {
    storage_keys, sizeof storage_keys / sizeof storage_keys[0], NULL};

static const struct key_spec http_keys[] = {
    {.name = "max_header_bytes",
     .set = set_size_t,
     FIELD(struct config_http, max_header_bytes),
     .min = 1024,
     .max = 1024 * 1024},
    {.name = "max_headers",
     .set = set_uint,
     FIELD(struct config_http, max_headers),
     .min = 1,
     .max = 10000},
    {.name = "header_timeout",
     .set = set_duration,
     FIELD(struct config_http, header_timeout_ms),
     .min = 1,
     .max = 24 * HOUR_MS},
    {.name = "idle_timeout",
     .set = set_duration,
     FIELD(struct config_http, idle_timeout_ms),
     .min = 1,
     .max = 24 * HOUR_MS},
    {.name = "send_timeout",
     .set = set_duration,
     FIELD(struct config_http, send_timeout_ms),
     .min = 1,
     .max = 24 * HOUR_MS},
    {.name = "max_connections",
     .set = set_uint,
     FIELD(struct config_http, max_connections),
     .min = 1,
     .max = 1000000},
};

static const struct section_spec http_section = {
    http_keys, sizeof http_keys / sizeof http_keys[0], NULL};

/* `tls:` of client listeners (top level and upstreams[].tls) */
enum { TLS_CERT, TLS_KEY, TLS_CLIENT_CA, TLS_MIN_VERSION, TLS_CA };

static const struct key_spec tls_keys[] = {
    [TLS_CERT] = {.name = "cert",
                  .set = set_path,
                  FIELD(struct config_tls, cert),
                  .required = 1},
    [TLS_KEY] = {.name = "key",
                 .set = set_path,
                 FIELD(struct config_tls, key),
                 .required = 1},
    [TLS_CLIENT_CA] = {.name = "client_ca",
                       .set = set_path,
                       FIELD(struct config_tls, ca)},
    [TLS_MIN_VERSION] = {.name = "min_version",
                         .set = set_tls_version,
                         FIELD(struct config_tls, min_version)},
    /* a likely slip from cluster.tls; say so rather than "unknown key" */
    [TLS_CA] = {.name = "ca",
                .set = set_refused,
                .why = "a client listener's CA is client_ca: (clients must "
                       "then present a certificate it signed); ca: is for "
                       "cluster.tls"},
};

static int tls_check(struct walk *w, const struct config__node *map,
                     const struct config__node *const *vals, void *base) {
  return tls_defer(w, map, base, vals[TLS_CERT], vals[TLS_KEY],
                   vals[TLS_CLIENT_CA], "client_ca");
}

static const struct section_spec tls_section = {
    tls_keys, sizeof tls_keys / sizeof tls_keys[0], tls_check};

/* `cluster.tls:`: mutual TLS between nodes, so the CA is required */
enum { CTLS_CERT, CTLS_KEY, CTLS_CA, CTLS_CLIENT_CA };

static const struct key_spec cluster_tls_keys[] = {
    [CTLS_CERT] = {.name = "cert",
                   .set = set_path,
                   FIELD(struct config_tls, cert),
                   .required = 1},
    [CTLS_KEY] = {.name = "key",
                  .set = set_path,
                  FIELD(struct config_tls, key),
                  .required = 1},
    [CTLS_CA] = {.name = "ca",
                 .set = set_path,
                 FIELD(struct config_tls, ca),
                 .required = 1},
    [CTLS_CLIENT_CA] = {.name = "client_ca",
                        .set = set_refused,
                        .why = "cluster.tls takes ca: (it verifies peers both "
                               "ways), not client_ca:"},
};

static int cluster_tls_check(struct walk *w, const struct config__node *map,
                             const struct config__node *const *vals,
                             void *base) {
  return tls_defer(w, map, base, vals[CTLS_CERT], vals[CTLS_KEY],
                   vals[CTLS_CA], "ca");
}

static const struct section_spec cluster_tls_section = {
    cluster_tls_keys, sizeof cluster_tls_keys / sizeof cluster_tls_keys[0],
    cluster_tls_check};

static const struct key_spec auth_keys[] = {
    {.name = "htpasswd",
     .set = set_htpasswd,
     FIELD(struct config, auth_htpasswd),
     .required = 1},
};

static const struct section_spec auth_section = {
    auth_keys, sizeof auth_keys / sizeof auth_keys[0], NULL};

enum {
  UP_HOST,
  UP_URL,
  UP_DEFAULT,
  UP_LISTEN,
  UP_TAG_TTL,
  UP_TAGS_LIST_TTL,
  UP_USERNAME,
  UP_PASSWORD,
  UP_PASSWORD_ENV,
  UP_TLS_VERIFY,
  UP_CA_FILE,
  UP_CONNECT_TIMEOUT,
  UP_LOW_SPEED_TIME,
  UP_MAX_RETRIES,
  UP_PRIVATE,
  UP_TLS,
  UP_RESOLVE_TIMEOUT,
  UP_FIRST_BYTE_TIMEOUT,
  UP_PASSWORD_FILE,
  UP_ALIASES,
};

static int read_value_file(struct walk *w, const struct config__node *v, char *path,
                           size_t pathlen, char buf[SECRET_FILE_MAX + 1], size_t *lenp);

/* set_password_file reads the upstream's password from a file now (e.g.
 * $CREDENTIALS_DIRECTORY/dockerhub-token), so it never sits in the config
 * or the environment; a reload reads it again. */
static int set_password_file(struct walk *w, const struct config__node *v, void *field,
                             const struct key_spec *k) {
  char path[PATH_MAX], buf[SECRET_FILE_MAX + 1];
  size_t len = 0;
  const char *s;
  int rc;
  (void)k;
  if ((rc = scalar_text(w, v, &s)) != 0)
    return rc;
  rc = read_value_file(w, v, path, sizeof path, buf, &len);
  if (rc == 0 && memchr(buf, '\0', len) != NULL)
    rc = fail(w, v, "the password file holds a NUL byte");
  if (rc == 0 && str_set(field, buf, len) != 0)
    rc = fail_nomem(w);
  explicit_bzero(buf, sizeof buf);
  return rc;
}

/* set_aliases fills the upstream's aliases in normal form
 * (config__parse_alias). Whether another upstream answers to one is
 * top_check's to say, once all are read. */
static int set_aliases(struct walk *w, const struct config__node *v, void *field,
                       const struct key_spec *k) {
  struct config_upstream *u =
      (struct config_upstream *)((char *)field -
                                 offsetof(struct config_upstream, aliases));
  return set_string_list(w, v, k, &alias_list, &u->aliases, &u->n_aliases);
}

/* indexed by the enum above, which upstream_check relies on */
static const struct key_spec upstream_keys[] = {
    [UP_HOST] = {.name = "host",
                 .set = set_host,
                 FIELD(struct config_upstream, host),
                 .required = 1},
    [UP_URL] = {.name = "url",
                .set = set_url,
                FIELD(struct config_upstream, url),
                .required = 1},
    [UP_DEFAULT] = {.name = "default",
                    .set = set_bool,
                    FIELD(struct config_upstream, is_default)},
    [UP_LISTEN] = {.name = "listen",
                   .set = set_listen,
                   FIELD(struct config_upstream, listen)},
    [UP_TAG_TTL] = {.name = "tag_ttl",
                    .set = set_duration,
                    FIELD(struct config_upstream, tag_ttl_ms),
                    .min = 0,
                    .max = 365 * 24 * HOUR_MS},
    [UP_RESOLVE_TIMEOUT] = {.name = "resolve_timeout",
                            .set = set_duration,
                            FIELD(struct config_upstream, resolve_timeout_ms),
                            .min = 1,
                            .max = HOUR_MS},
    [UP_FIRST_BYTE_TIMEOUT] = {.name = "first_byte_timeout",
                               .set = set_duration,
                               FIELD(struct config_upstream, first_byte_timeout_ms),
                               .min = 0,
                               .max = HOUR_MS},
    [UP_TAGS_LIST_TTL] = {.name = "tags_list_ttl",
                          .set = set_duration,
                          FIELD(struct config_upstream, tags_list_ttl_ms),
                          .min = 0,
                          .max = 365 * 24 * HOUR_MS},
    [UP_USERNAME] = {.name = "username",
                     .set = set_string,
                     FIELD(struct config_upstream, username)},
    [UP_PASSWORD] = {.name = "password",
                     .set = set_string,
                     FIELD(struct config_upstream, password)},
    [UP_PASSWORD_ENV] = {.name = "password_env",
                         .set = set_env_name,
                         FIELD(struct config_upstream, password_env)},
    [UP_PASSWORD_FILE] = {.name = "password_file",
                          .set = set_password_file,
                          FIELD(struct config_upstream, password)},
    [UP_TLS_VERIFY] = {.name = "tls_verify",
                       .set = set_bool,
                       FIELD(struct config_upstream, tls_verify)},
    [UP_CA_FILE] = {.name = "ca_file",
                    .set = set_string,
                    FIELD(struct config_upstream, ca_file)},
    [UP_CONNECT_TIMEOUT] = {.name = "connect_timeout",
                            .set = set_duration,
                            FIELD(struct config_upstream, connect_timeout_ms),
                            .min = 1,
                            .max = 24 * HOUR_MS},
    [UP_LOW_SPEED_TIME] = {.name = "low_speed_time",
                           .set = set_duration,
                           FIELD(struct config_upstream, low_speed_time_ms),
                           .min = 1,
                           .max = 24 * HOUR_MS},
    [UP_MAX_RETRIES] = {.name = "max_retries",
                        .set = set_uint,
                        FIELD(struct config_upstream, max_retries),
                        .min = 0,
                        .max = 100},
    [UP_PRIVATE] = {.name = "private",
                    .set = set_bool,
                    FIELD(struct config_upstream, is_private)},
    [UP_TLS] = {.name = "tls",
                .set = set_tls,
                FIELD(struct config_upstream, tls),
                .section = &tls_section},
    [UP_ALIASES] = {.name = "aliases",
                    .set = set_aliases,
                    FIELD(struct config_upstream, aliases),
                    .max = CONFIG_MAX_ALIASES},
};

static int upstream_check(struct walk *w, const struct config__node *map,
                          const struct config__node *const *vals, void *base) {
  (void)map;
  const struct config__node *pw = vals[UP_PASSWORD];
  const struct config__node *env = vals[UP_PASSWORD_ENV];
  const struct config__node *pf = vals[UP_PASSWORD_FILE];
  if (pf != NULL && (pw != NULL || env != NULL)) {
    size_t old = path_push_key(w, "password_file", 13);
    int rc = fail(w, pf, "password_file excludes password and password_env");
    path_pop(w, old);
    return rc;
  }
  if (pw != NULL && env != NULL) {
    /* blame whichever came second: that is the line the user just added */
    int env_later =
        env->line > pw->line || (env->line == pw->line && env->col > pw->col);
    const char *key = env_later ? "password_env" : "password";
    size_t old = path_push_key(w, key, strlen(key));
    int rc = fail(w, env_later ? env : pw,
                  "password and password_env cannot both be set");
    path_pop(w, old);
    return rc;
  }
  const struct config_upstream *u = base;
  if (env != NULL && u->password_env != NULL && getenv(u->password_env) == NULL) {
    /* caught here, not at the first pull: check-config runs where the
     * service will (ExecStartPre, with its EnvironmentFile) */
    size_t old = path_push_key(w, "password_env", 12);
    int rc = fail(w, env,
                  "environment variable %s is not set (put it in the "
                  "service's environment, e.g. EnvironmentFile=/etc/regmesh/env)",
                  u->password_env);
    path_pop(w, old);
    return rc;
  }
  if (vals[UP_TLS] != NULL && vals[UP_LISTEN] == NULL) {
    size_t old = path_push_key(w, "tls", 3);
    int rc = fail(w, vals[UP_TLS],
                  "tls: is for this upstream's own listen:, and it has none "
                  "(the top-level tls: covers the shared listeners)");
    path_pop(w, old);
    return rc;
  }
  if (u->first_byte_timeout_ms != 0 && u->first_byte_timeout_ms < u->resolve_timeout_ms) {
    /* the stale tag would never get its chance: the 504 would come first */
    const struct config__node *at = vals[UP_FIRST_BYTE_TIMEOUT] ? vals[UP_FIRST_BYTE_TIMEOUT]
                                                                : vals[UP_RESOLVE_TIMEOUT];
    const char *key = vals[UP_FIRST_BYTE_TIMEOUT] ? "first_byte_timeout" : "resolve_timeout";
    size_t old = path_push_key(w, key, strlen(key));
    int rc = fail(w, at,
                  "first_byte_timeout (%llu ms) is shorter than resolve_timeout (%llu ms); "
                  "a stale tag could never be served",
                  (unsigned long long)u->first_byte_timeout_ms,
                  (unsigned long long)u->resolve_timeout_ms);
    path_pop(w, old);
    return rc;
  }
  return 0;
}

static const struct section_spec upstream_section = {
    upstream_keys, sizeof upstream_keys / sizeof upstream_keys[0],
    upstream_check};

enum {
  CL_NAME,
  CL_BIND,
  CL_ADVERTISE,
  CL_PEER_URL,
  CL_PEER_LISTEN,
  CL_TLS,
  CL_JOIN,
  CL_SECRET,
  CL_SECRET_FILE,
  CL_REPLICAS,
  CL_WEIGHT,
  CL_ZONE,
  CL_PEER_TIMEOUT,
  CL_PEER_STALL_TIMEOUT,
  CL_PROBE_INTERVAL,
  CL_PROBE_TIMEOUT,
  CL_PUSH_PULL_INTERVAL,
  CL_FANOUT,
  CL_MAX_PEER_UPLOADS,
  CL_PEER_EGRESS,
  CL_REPLICA_RATE,
  CL_REPLICA_QUEUE,
};

/* indexed by the enum above, which cluster_check relies on */
static const struct key_spec cluster_keys[] = {
    [CL_NAME] = {.name = "name",
                 .set = set_member_name,
                 FIELD(struct config_cluster, name),
                 .max = CLUSTER_NAME_MAX},
    /* .min is the lowest port allowed */
    [CL_BIND] = {.name = "bind",
                 .set = set_gossip_addr,
                 FIELD(struct config_cluster, bind),
                 .min = 0},
    [CL_ADVERTISE] = {.name = "advertise",
                      .set = set_gossip_addr,
                      FIELD(struct config_cluster, advertise),
                      .min = 1},
    [CL_PEER_URL] = {.name = "peer_url",
                     .set = set_peer_url,
                     FIELD(struct config_cluster, peer_url),
                     .max = CLUSTER_URL_MAX},
    [CL_PEER_LISTEN] = {.name = "peer_listen",
                        .set = set_peer_listen,
                        FIELD(struct config_cluster, peer_listen)},
    [CL_TLS] = {.name = "tls",
                .set = set_tls,
                FIELD(struct config_cluster, tls),
                .section = &cluster_tls_section},
    [CL_JOIN] = {.name = "join",
                 .set = set_join,
                 FIELD(struct config_cluster, join),
                 .max = CONFIG_CLUSTER_MAX_JOIN},
    [CL_SECRET] = {.name = "secret",
                   .set = set_secret_source,
                   FIELD(struct config_cluster, secret)},
    [CL_SECRET_FILE] = {.name = "secret_file",
                        .set = set_secret_source,
                        FIELD(struct config_cluster, secret)},
    [CL_REPLICAS] = {.name = "replicas",
                     .set = set_uint,
                     FIELD(struct config_cluster, replicas),
                     .min = 1,
                     .max = 8},
    [CL_WEIGHT] = {.name = "weight",
                   .set = set_uint,
                   FIELD(struct config_cluster, weight),
                   .min = 1,
                   .max = 16},
    [CL_ZONE] = {.name = "zone",
                 .set = set_member_name,
                 FIELD(struct config_cluster, zone),
                 .max = CLUSTER_ZONE_MAX},
    [CL_PEER_TIMEOUT] = {.name = "peer_timeout",
                         .set = set_duration,
                         FIELD(struct config_cluster, peer_timeout_ms),
                         .min = 1,
                         .max = 24 * HOUR_MS},
    [CL_PEER_STALL_TIMEOUT] = {.name = "peer_stall_timeout",
                               .set = set_duration,
                               FIELD(struct config_cluster,
                                     peer_stall_timeout_ms),
                               .min = 1,
                               .max = 24 * HOUR_MS},
    [CL_PROBE_INTERVAL] = {.name = "probe_interval",
                           .set = set_duration,
                           FIELD(struct config_cluster, probe_interval_ms),
                           .min = 1,
                           .max = 24 * HOUR_MS},
    [CL_PROBE_TIMEOUT] = {.name = "probe_timeout",
                          .set = set_duration,
                          FIELD(struct config_cluster, probe_timeout_ms),
                          .min = 1,
                          .max = 24 * HOUR_MS},
    [CL_PUSH_PULL_INTERVAL] = {.name = "push_pull_interval",
                               .set = set_duration,
                               FIELD(struct config_cluster,
                                     push_pull_interval_ms),
                               .min = 1,
                               .max = 24 * HOUR_MS},
    [CL_FANOUT] = {.name = "fanout",
                   .set = set_uint,
                   FIELD(struct config_cluster, fanout),
                   .min = 0,
                   .max = 64},
    [CL_MAX_PEER_UPLOADS] = {.name = "max_peer_uploads",
                             .set = set_uint,
                             FIELD(struct config_cluster, max_peer_uploads),
                             .min = 1,
                             .max = 4096},
    /* sizes read as bytes per second: "40MiB" */
    [CL_PEER_EGRESS] = {.name = "peer_egress",
                        .set = set_size,
                        FIELD(struct config_cluster, peer_egress)},
    [CL_REPLICA_RATE] = {.name = "replica_rate",
                         .set = set_size,
                         FIELD(struct config_cluster, replica_rate)},
    [CL_REPLICA_QUEUE] = {.name = "replica_queue",
                          .set = set_uint,
                          FIELD(struct config_cluster, replica_queue),
                          .min = 1,
                          .max = 1u << 20},
};

static int cluster_check(struct walk *w, const struct config__node *map,
                         const struct config__node *const *vals, void *base);

static const struct section_spec cluster_section = {
    cluster_keys, sizeof cluster_keys / sizeof cluster_keys[0],
    cluster_check};

/* `proxy.ca:`, whose two files land in struct config_proxy itself */
enum { PCA_CERT, PCA_KEY };

static const struct key_spec proxy_ca_keys[] = {
    [PCA_CERT] = {.name = "cert",
                  .set = set_path,
                  FIELD(struct config_proxy, ca_cert),
                  .required = 1},
    [PCA_KEY] = {.name = "key",
                 .set = set_path,
                 FIELD(struct config_proxy, ca_key),
                 .required = 1},
};

/* the files are read in top_check, after every other check, as tls: are */
static int proxy_ca_check(struct walk *w, const struct config__node *map,
                          const struct config__node *const *vals, void *base) {
  (void)map;
  (void)base;
  w->proxy_ca_cert = vals[PCA_CERT];
  w->proxy_ca_key = vals[PCA_KEY];
  return 0;
}

static const struct section_spec proxy_ca_section = {
    proxy_ca_keys, sizeof proxy_ca_keys / sizeof proxy_ca_keys[0], proxy_ca_check};

enum {
  PX_LISTEN,
  PX_CA,
  PX_TUNNEL_OTHERS,
  PX_TUNNEL_ALLOW,
  PX_HOSTS,
  PX_LEAF_TTL,
};

static const struct key_spec proxy_keys[] = {
    [PX_LISTEN] = {.name = "listen",
                   .set = set_listen,
                   FIELD(struct config_proxy, listen),
                   .required = 1},
    [PX_CA] = {.name = "ca",
               .set = set_section,
               .offset = 0, /* its keys are fields of struct config_proxy */
               .required = 1,
               .section = &proxy_ca_section},
    [PX_TUNNEL_OTHERS] = {.name = "tunnel_others",
                          .set = set_bool,
                          FIELD(struct config_proxy, tunnel_others)},
    [PX_TUNNEL_ALLOW] = {.name = "tunnel_allow",
                         .set = set_tunnel_allow,
                         FIELD(struct config_proxy, tunnel_allow),
                         .max = CONFIG_MAX_ALLOW},
    [PX_HOSTS] = {.name = "hosts",
                  .set = set_proxy_hosts,
                  FIELD(struct config_proxy, hosts),
                  .max = CONFIG_MAX_PROXY_HOSTS},
    [PX_LEAF_TTL] = {.name = "leaf_ttl",
                     .set = set_leaf_ttl,
                     FIELD(struct config_proxy, leaf_ttl_ms)},
};

static const struct section_spec proxy_section = {
    proxy_keys, sizeof proxy_keys / sizeof proxy_keys[0], NULL};

enum {
  TOP_LISTEN,
  TOP_ADMIN_LISTEN,
  TOP_LOG_LEVEL,
  TOP_ACCESS_LOG,
  TOP_STORAGE,
  TOP_HTTP,
  TOP_UPSTREAMS,
  TOP_CLUSTER,
  TOP_ALLOW,
  TOP_AUTH,
  TOP_TLS,
  TOP_SHUTDOWN_TIMEOUT,
  TOP_LOG_FORMAT,
  TOP_PROXY,
};

static int top_check(struct walk *w, const struct config__node *map,
                     const struct config__node *const *vals, void *base);

static const struct key_spec top_keys[] = {
    [TOP_LISTEN] = {.name = "listen",
                    .set = set_listen,
                    FIELD(struct config, listen)},
    [TOP_ADMIN_LISTEN] = {.name = "admin_listen",
                          .set = set_listen,
                          FIELD(struct config, admin_listen)},
    [TOP_LOG_LEVEL] = {.name = "log_level",
                       .set = set_log_level,
                       FIELD(struct config, log_level)},
    [TOP_ACCESS_LOG] = {.name = "access_log",
                        .set = set_bool,
                        FIELD(struct config, access_log)},
    [TOP_STORAGE] = {.name = "storage",
                     .set = set_section,
                     FIELD(struct config, storage),
                     .section = &storage_section},
    [TOP_HTTP] = {.name = "http",
                  .set = set_section,
                  FIELD(struct config, http),
                  .section = &http_section},
    [TOP_UPSTREAMS] = {.name = "upstreams",
                       .set = set_upstreams,
                       FIELD(struct config, upstreams)},
    [TOP_CLUSTER] = {.name = "cluster",
                     .set = set_cluster,
                     FIELD(struct config, cluster),
                     .section = &cluster_section},
    [TOP_ALLOW] = {.name = "allow",
                   .set = set_allow,
                   FIELD(struct config, allow),
                   .max = CONFIG_MAX_ALLOW},
    [TOP_AUTH] = {.name = "auth",
                  .set = set_section,
                  .offset = 0, /* auth's one key is a field of struct config */
                  .section = &auth_section},
    [TOP_TLS] = {.name = "tls",
                 .set = set_tls,
                 FIELD(struct config, tls),
                 .section = &tls_section},
    [TOP_LOG_FORMAT] = {.name = "log_format",
                        .set = set_log_format,
                        FIELD(struct config, log_json)},
    [TOP_SHUTDOWN_TIMEOUT] = {.name = "shutdown_timeout",
                              .set = set_duration,
                              FIELD(struct config, shutdown_timeout_ms),
                              .min = 0,
                              .max = 24 * HOUR_MS},
    [TOP_PROXY] = {.name = "proxy",
                   .set = set_section,
                   FIELD(struct config, proxy),
                   .section = &proxy_section},
};

static const struct section_spec top_section = {
    top_keys, sizeof top_keys / sizeof top_keys[0], top_check};

/* ---- the generic walk ---- */

static int unknown_key(struct walk *w, const struct config__node *key,
                       const struct section_spec *sec) {
  const char *best = NULL;
  size_t best_d = 3;
  char q[CONFIG__QUOTE_MAX];
  for (size_t i = 0; i < sec->n_keys; i++) {
    const char *name = sec->keys[i].name;
    size_t d = config__edit_distance(key->text, key->len, name, strlen(name));
    if (d < best_d) {
      best_d = d;
      best = name;
    }
  }
  config__quote(q, sizeof q, key->text, key->len);
  size_t old = path_push_key(w, q, strlen(q));
  int rc = best ? fail(w, key, "unknown key (did you mean %s?)", best)
                : fail(w, key, "unknown key");
  path_pop(w, old);
  return rc;
}

static const struct config__node *map_get(const struct config__node *map,
                                          const char *key) {
  if (map == NULL || map->kind != CONFIG__MAPPING)
    return NULL;
  size_t len = strlen(key);
  for (const struct config__node *k = map->child; k && k->next;
       k = k->next->next)
    if (k->kind == CONFIG__SCALAR && k->len == len &&
        memcmp(k->text, key, len) == 0)
      return k->next;
  return NULL;
}

static int apply_section(struct walk *w, const struct config__node *map,
                         const struct section_spec *sec, void *base) {
  const struct config__node *vals[SECTION_MAX_KEYS] = {0};
  const struct config__node *keys[SECTION_MAX_KEYS] = {0};
  unsigned nerr0 = w->nerr;
  int rc;

  if (sec->n_keys > SECTION_MAX_KEYS)
    abort(); /* a schema bug, caught by the first test run */
  if ((rc = check_plain(w, map)) != 0)
    return rc;
  /* "storage:" with every child commented out means "all defaults" */
  if (map->kind == CONFIG__SCALAR && map->is_null)
    goto required;
  if (map->kind != CONFIG__MAPPING)
    return fail(w, map, "expected a mapping, got %s", kind_name(map));

  /* An RM_ECONFIG from a key is counted by fail() and the walk goes on to
   * the next key; anything else (out of memory) ends it. */
  for (const struct config__node *k = map->child; k && k->next;
       k = k->next->next) {
    const struct config__node *v = k->next;
    if ((rc = check_plain(w, k)) != 0) {
      if (rc != RM_ECONFIG)
        return rc;
      continue;
    }
    if (k->kind != CONFIG__SCALAR) {
      fail(w, k, "keys must be scalars, got %s", kind_name(k));
      continue;
    }
    size_t i;
    for (i = 0; i < sec->n_keys; i++)
      if (strlen(sec->keys[i].name) == k->len &&
          memcmp(sec->keys[i].name, k->text, k->len) == 0)
        break;
    if (i == sec->n_keys) {
      unknown_key(w, k, sec);
      continue;
    }
    const struct key_spec *spec = &sec->keys[i];
    size_t old = path_push_key(w, spec->name, strlen(spec->name));
    if (vals[i] != NULL) {
      rc = fail(w, k, "duplicate key (first at %u:%u)", keys[i]->line,
                keys[i]->col);
    } else {
      vals[i] = v;
      keys[i] = k;
      rc = spec->set(w, v, (char *)base + spec->offset, spec);
    }
    path_pop(w, old);
    if (rc != 0 && rc != RM_ECONFIG)
      return rc;
  }

required:
  for (size_t i = 0; i < sec->n_keys; i++) {
    if (sec->keys[i].required && vals[i] == NULL) {
      size_t old =
          path_push_key(w, sec->keys[i].name, strlen(sec->keys[i].name));
      fail(w, map, "required key is missing");
      path_pop(w, old);
    }
  }
  /* checks across keys read the values: only when each of them is valid */
  if (w->nerr != nerr0)
    return RM_ECONFIG;
  return sec->check ? sec->check(w, map, vals, base) : 0;
}

static void upstream_init(struct config_upstream *u) {
  memset(u, 0, sizeof *u);
  u->tag_ttl_ms = 60 * 1000;
  u->resolve_timeout_ms = 3000;
  u->first_byte_timeout_ms = 10 * 1000;
  u->tags_list_ttl_ms = 30 * 1000;
  u->tls_verify = 1;
  u->connect_timeout_ms = 10 * 1000;
  u->low_speed_time_ms = 30 * 1000;
  u->max_retries = 3;
}

static void upstream_free(struct config_upstream *u) {
  free(u->host);
  free(u->url);
  free(u->listen);
  free(u->username);
  free(u->password);
  free(u->password_env);
  free(u->ca_file);
  tls_free(u->tls);
  for (size_t i = 0; i < u->n_aliases; i++)
    free(u->aliases[i]);
  free(u->aliases);
  memset(u, 0, sizeof *u);
}

static int same_host(const char *a, const char *b) {
  size_t alen = strlen(a), blen = strlen(b);
  if (config__is_docker_hub(a, alen) && config__is_docker_hub(b, blen))
    return 1;
  return alen == blen && strcasecmp(a, b) == 0;
}

/* set_upstreams fills cfg->upstreams item by item; n_upstreams counts the
 * initialised ones so config_free is right at any point of failure. */
static int set_upstreams(struct walk *w, const struct config__node *v,
                         void *field, const struct key_spec *k) {
  struct config *cfg = w->cfg;
  int rc;
  (void)field;
  (void)k;
  if ((rc = check_plain(w, v)) != 0)
    return rc;
  if (v->kind == CONFIG__SCALAR && v->is_null)
    return fail(w, v, "at least one upstream is required");
  if (v->kind != CONFIG__SEQUENCE)
    return fail(w, v, "expected a sequence, got %s", kind_name(v));
  if (v->n_children == 0)
    return fail(w, v, "at least one upstream is required");
  if (v->n_children > CONFIG_MAX_UPSTREAMS)
    return fail(w, v, "too many upstreams (%zu, at most %d)", v->n_children,
                CONFIG_MAX_UPSTREAMS);
  cfg->upstreams = calloc(v->n_children, sizeof *cfg->upstreams);
  if (cfg->upstreams == NULL)
    return fail_nomem(w);
  unsigned nerr0 = w->nerr;

  size_t i = 0;
  for (const struct config__node *item = v->child; item;
       item = item->next, i++) {
    struct config_upstream *u = &cfg->upstreams[i];
    upstream_init(u);
    cfg->n_upstreams = i + 1;
    size_t old = path_push_index(w, i);
    rc = apply_section(w, item, &upstream_section, u);
    for (size_t j = 0; rc == 0 && j < i; j++) {
      const struct config_upstream *o = &cfg->upstreams[j];
      if (o->host == NULL) /* that item failed */
        continue;
      if (same_host(u->host, o->host)) {
        size_t o2 = path_push_key(w, "host", 4);
        rc = fail(w, map_get(item, "host"),
                  "duplicate upstream: %s is already upstreams[%zu] (%s)",
                  u->host, j, o->host);
        path_pop(w, o2);
      } else if (u->is_default && o->is_default) {
        size_t o2 = path_push_key(w, "default", 7);
        rc = fail(w, map_get(item, "default"),
                  "only one upstream can be the default (upstreams[%zu] "
                  "already is)",
                  j);
        path_pop(w, o2);
      }
    }
    path_pop(w, old);
    if (rc != 0 && rc != RM_ECONFIG)
      return rc;
  }
  return w->nerr != nerr0 ? RM_ECONFIG : 0;
}

/* One listener for the collision check; node NULL for a default value. */
struct listener {
  const char *addr;
  const struct config__node *node;
  char label[48];
};

static int node_after(const struct config__node *a,
                      const struct config__node *b) {
  if (a == NULL)
    return 0;
  if (b == NULL)
    return 1;
  return a->line > b->line || (a->line == b->line && a->col > b->col);
}

/* ---- cluster ---- */

/* blame_later: of two keys of one mapping that conflict, report the one
 * written second: that is the line the user just added. */
static int blame_later(struct walk *w, const struct config__node *a,
                       const char *akey, const struct config__node *b,
                       const char *bkey, const char *why) {
  int b_later = node_after(b, a);
  const char *key = b_later ? bkey : akey;
  size_t old = path_push_key(w, key, strlen(key));
  int rc = fail(w, b_later ? b : a, "%s", why);
  path_pop(w, old);
  return rc;
}

/* key_decode puts the key that base64 (s, len) encodes into c->secret.
 * Returns 0, RM_EPARSE (not base64) or RM_ETOOBIG (not 16, 24 or 32 bytes
 * long; *n is the length it has). */
static int key_decode(const char *s, size_t len, struct config_cluster *c,
                      size_t *n) {
  uint8_t buf[32];
  *n = 0;
  int rc = config__base64_decode(s, len, buf, sizeof buf, n);
  if (rc == 0 && (*n == 16 || *n == 24 || *n == 32)) {
    memcpy(c->secret, buf, *n);
    c->secret_len = *n;
  } else if (rc != RM_EPARSE) {
    rc = RM_ETOOBIG;
  }
  explicit_bzero(buf, sizeof buf);
  return rc;
}

#define KEY_HINT "make one with: head -c 32 /dev/urandom | base64"

static int set_key(struct walk *w, const struct config__node *v,
                   const char *key, const char *s, size_t len,
                   const char *what, struct config_cluster *c) {
  size_t n, old = path_push_key(w, key, strlen(key));
  int rc = key_decode(s, len, c, &n);
  if (rc == RM_EPARSE)
    rc = fail(w, v, "%s is not base64 (%s)", what, KEY_HINT);
  else if (rc != 0)
    rc = fail(w, v, "%s decodes to %zu bytes; a key is 16, 24 or 32 bytes (%s)",
              what, n, KEY_HINT);
  path_pop(w, old);
  return rc;
}


/* read_value_file reads a secret's file (v's path): at most
 * SECRET_FILE_MAX bytes, trailing whitespace (the newline `echo` and
 * `base64` write) dropped, not empty. The caller wipes buf. */
static int read_value_file(struct walk *w, const struct config__node *v, char *path,
                           size_t pathlen, char buf[SECRET_FILE_MAX + 1], size_t *lenp) {
  char q[PATH_QUOTE_MAX], ebuf[128];
  size_t len = 0;
  int fd, rc;
  *lenp = 0;
  if ((rc = resolve_path(w, v, v->text, path, pathlen)) != 0)
    return rc;
  do
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    int e = errno;
    return fail(w, v, "cannot read \"%s\": %s", QP(q, path), strerror_r(e, ebuf, sizeof ebuf));
  }
  struct stat sb;
  int st_ok = fstat(fd, &sb) == 0;
  if (!st_ok || !S_ISREG(sb.st_mode)) {
    int dir = st_ok && S_ISDIR(sb.st_mode);
    close(fd); /* a FIFO or a device must not hang the load */
    if (dir)
      return fail(w, v, "cannot read \"%s\": %s", QP(q, path),
                  strerror_r(EISDIR, ebuf, sizeof ebuf));
    return fail(w, v, "\"%s\" is not a regular file", QP(q, path));
  }
  /* one byte past the limit is enough to know the file is too big */
  while (len < SECRET_FILE_MAX + 1) {
    ssize_t r = read(fd, buf + len, SECRET_FILE_MAX + 1 - len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      int e = errno;
      close(fd);
      *lenp = len;
      return fail(w, v, "cannot read \"%s\": %s", QP(q, path),
                  strerror_r(e, ebuf, sizeof ebuf));
    }
    if (r == 0)
      break;
    len += (size_t)r;
  }
  close(fd);
  *lenp = len;
  if (len > SECRET_FILE_MAX)
    return fail(w, v, "\"%s\" is larger than %d bytes", QP(q, path), SECRET_FILE_MAX);
  while (len > 0 && strchr(" \t\r\n", buf[len - 1]) != NULL)
    len--;
  *lenp = len;
  if (len == 0)
    return fail(w, v, "\"%s\" is empty", QP(q, path));
  return 0;
}

/* read_secret_file reads the key's base64 from v's path. */
static int read_secret_file(struct walk *w, const struct config__node *v,
                            struct config_cluster *c) {
  char path[PATH_MAX], q[PATH_QUOTE_MAX];
  char buf[SECRET_FILE_MAX + 1];
  size_t len = 0, old = path_push_key(w, "secret_file", 11);
  int rc = read_value_file(w, v, path, sizeof path, buf, &len);
  path_pop(w, old);
  if (rc == 0) {
    char what[PATH_QUOTE_MAX + 32];
    snprintf(what, sizeof what, "the content of \"%s\"", QP(q, path));
    rc = set_key(w, v, "secret_file", buf, len, what, c);
  }
  explicit_bzero(buf, sizeof buf);
  return rc;
}

/* host_name: this machine's name, the default member name. Returns 0 or
 * a negative errno. */
static int host_name(char *buf, size_t len) {
  if (gethostname(buf, len) != 0)
    return -errno;
  buf[len - 1] = '\0';
  return 0;
}

static int cluster_default_name(struct walk *w, const struct config__node *at,
                                struct config_cluster *c) {
  char host[256], q[CONFIG__QUOTE_MAX], ebuf[128];
  const char *why = NULL;
  size_t old = path_push_key(w, "name", 4);
  int rc = host_name(host, sizeof host);
  if (rc != 0)
    rc = fail(w, at, "cannot read the host name (%s); set a name",
              strerror_r(-rc, ebuf, sizeof ebuf));
  else if (config__check_member_name(host, strlen(host), CLUSTER_NAME_MAX,
                                     &why) != 0)
    rc = fail(w, at, "the host name \"%s\" is not a valid member name (%s); "
                     "set a name",
              Q(q, host), why);
  else if (str_set(&c->name, host, strlen(host)) != 0)
    rc = fail_nomem(w);
  else
    c->name_defaulted = 1;
  path_pop(w, old);
  return rc;
}

/* cluster_default_peer_listen: the bind address's host, port + 1, so a
 * node needs one line of config for both ports and two nodes on one host
 * need only distinct binds. Port 0 (the kernel's pick, for tests) stays 0. */
static int cluster_default_peer_listen(struct walk *w,
                                       const struct config__node *map,
                                       const struct config__node *bind,
                                       struct config_cluster *c) {
  struct config__addr a;
  const char *why = NULL, *colon = strrchr(c->bind, ':');
  char buf[96];
  /* the setter (or the default) already checked bind */
  if (colon == NULL || config__parse_ip_port(c->bind, 0, &a, &why) != 0)
    return fail(w, bind ? bind : map, "invalid bind address");
  if (a.port == 65535) {
    size_t old = path_push_key(w, "bind", 4);
    int rc = fail(w, bind ? bind : map,
                  "port 65535 leaves no port for the default peer_listen "
                  "(bind port + 1); set peer_listen");
    path_pop(w, old);
    return rc;
  }
  snprintf(buf, sizeof buf, "%.*s:%u", (int)(colon - c->bind), c->bind,
           a.port == 0 ? 0 : a.port + 1);
  return str_set(&c->peer_listen, buf, strlen(buf)) ? fail_nomem(w) : 0;
}

static int cluster_check(struct walk *w, const struct config__node *map,
                         const struct config__node *const *vals, void *base) {
  struct config_cluster *c = base;
  const struct config__node *secret = vals[CL_SECRET];
  const struct config__node *file = vals[CL_SECRET_FILE];
  const struct config__node *pt = vals[CL_PROBE_TIMEOUT];
  const struct config__node *pi = vals[CL_PROBE_INTERVAL];
  int rc = 0;

  if (secret != NULL && file != NULL)
    return blame_later(w, secret, "secret", file, "secret_file",
                       "secret and secret_file cannot both be set");
  if (secret != NULL)
    rc = set_key(w, secret, "secret", secret->text, secret->len,
                 "the secret", c);
  else if (file != NULL)
    rc = read_secret_file(w, file, c);
  if (rc != 0)
    return rc;
  /* a probe waits probe_timeout for the direct ack and then asks others
   * until the period ends: with no time left there is no indirect probe */
  if (c->probe_timeout_ms >= c->probe_interval_ms)
    return blame_later(w, pi, "probe_interval", pt, "probe_timeout",
                       "probe_timeout must be shorter than probe_interval");
  if (vals[CL_PEER_LISTEN] == NULL &&
      (rc = cluster_default_peer_listen(w, map, vals[CL_BIND], c)) != 0)
    return rc;
  if (vals[CL_NAME] == NULL)
    return cluster_default_name(w, map, c);
  return 0;
}

static int check_listeners(struct walk *w,
                           const struct config__node *const *vals) {
  struct listener ls[CONFIG_MAX_UPSTREAMS + 5];
  const struct config__node *ups = vals[TOP_UPSTREAMS];
  const struct config__node *item = ups ? ups->child : NULL;
  size_t n = 0;
  struct config *cfg = w->cfg;

  ls[n] = (struct listener){cfg->listen, vals[TOP_LISTEN], "listen"};
  if (vals[TOP_LISTEN] == NULL)
    snprintf(ls[n].label, sizeof ls[n].label, "listen (default)");
  n++;
  if (cfg->admin_listen != NULL)
    ls[n++] = (struct listener){cfg->admin_listen, vals[TOP_ADMIN_LISTEN],
                                "admin_listen"};
  for (size_t i = 0; i < cfg->n_upstreams; i++, item = item ? item->next : 0) {
    if (cfg->upstreams[i].listen == NULL)
      continue;
    ls[n] = (struct listener){cfg->upstreams[i].listen, map_get(item, "listen"),
                              ""};
    snprintf(ls[n].label, sizeof ls[n].label, "upstreams[%zu].listen", i);
    n++;
  }
  if (cfg->proxy.listen != NULL)
    ls[n++] = (struct listener){cfg->proxy.listen, map_get(vals[TOP_PROXY], "listen"),
                                "proxy.listen"};
  /* gossip takes TCP on its port too; port 0 is the kernel's pick */
  if (cfg->cluster.enabled) {
    struct config__addr a;
    const char *why;
    if (config__parse_ip_port(cfg->cluster.bind, 0, &a, &why) == 0 &&
        a.port != 0) {
      const struct config__node *b = map_get(vals[TOP_CLUSTER], "bind");
      ls[n] = (struct listener){cfg->cluster.bind, b, "cluster.bind"};
      if (b == NULL)
        snprintf(ls[n].label, sizeof ls[n].label, "cluster.bind (default)");
      n++;
    }
    if (config__parse_ip_port(cfg->cluster.peer_listen, 0, &a, &why) == 0 &&
        a.port != 0) {
      const struct config__node *p =
          map_get(vals[TOP_CLUSTER], "peer_listen");
      ls[n] = (struct listener){cfg->cluster.peer_listen, p,
                                "cluster.peer_listen"};
      if (p == NULL)
        snprintf(ls[n].label, sizeof ls[n].label,
                 "cluster.peer_listen (default)");
      n++;
    }
  }

  for (size_t i = 0; i < n; i++) {
    for (size_t j = i + 1; j < n; j++) {
      struct config__addr a, b;
      const char *why;
      /* every address was validated by its setter; the defaults are valid */
      if (config__parse_listen(ls[i].addr, &a, &why) != 0 ||
          config__parse_listen(ls[j].addr, &b, &why) != 0 || a.port != b.port)
        continue;
      int same = strcmp(a.host, b.host) == 0;
      if (!same && !a.wildcard && !b.wildcard)
        continue;
      const struct listener *late =
          node_after(ls[j].node, ls[i].node) ? &ls[j] : &ls[i];
      const struct listener *early = late == &ls[j] ? &ls[i] : &ls[j];
      snprintf(w->path, sizeof w->path, "%s", late->label);
      if (same)
        return fail(w, late->node, "address %s is already used by %s",
                    late->addr, early->label);
      return fail(w, late->node, "address %s overlaps %s (%s) on port %u",
                  late->addr, early->label, early->addr, a.port);
    }
  }
  return 0;
}

/* ---- proxy names ---- */

/* entry_split: a host or alias in normal form ("name", "name:port",
 * "[v6]", "[v6]:port") -> the name without brackets and the port, 0 when
 * none was given. */
static void entry_split(const char *e, const char **name, size_t *len, unsigned *port) {
  const char *colon;
  if (e[0] == '[') {
    const char *close = strchr(e, ']');
    *name = e + 1;
    *len = close ? (size_t)(close - e - 1) : strlen(e + 1);
    colon = close && close[1] == ':' ? close + 1 : NULL;
  } else {
    colon = strchr(e, ':');
    *name = e;
    *len = colon ? (size_t)(colon - e) : strlen(e);
  }
  *port = colon ? (unsigned)strtoul(colon + 1, NULL, 10) : 0;
}

/* A name without a port is intercepted on these (plain: an http:// proxy
 * request rather than a CONNECT). */
#define PROXY_TLS_PORT 443u
#define PROXY_PLAIN_PORT 80u

/* entries_overlap: 1 when a CONNECT (or plain request) exists that both
 * entries would take, *port its port: the same name with the same port, or
 * no port beside 443 or 80. */
static int entries_overlap(const char *a, const char *b, unsigned *port) {
  const char *an, *bn;
  size_t al, bl;
  unsigned ap, bp;
  entry_split(a, &an, &al, &ap);
  entry_split(b, &bn, &bl, &bp);
  if (al != bl || strncasecmp(an, bn, al) != 0)
    return 0;
  if (ap == bp)
    *port = ap ? ap : PROXY_TLS_PORT;
  else if (ap == 0 && (bp == PROXY_TLS_PORT || bp == PROXY_PLAIN_PORT))
    *port = bp;
  else if (bp == 0 && (ap == PROXY_TLS_PORT || ap == PROXY_PLAIN_PORT))
    *port = ap;
  else
    return 0;
  return 1;
}

/* Docker Hub's names beyond its host: clients log in at auth.docker.io and
 * pull from registry-1.docker.io whatever the mirror calls the upstream. */
static int is_hub_implied(const char *host, size_t len) {
  return config__is_docker_hub(host, len) ||
         (len == 14 && strncasecmp(host, "auth.docker.io", 14) == 0);
}

/* alias_clash: what upstream j (host, hub names, aliases up to n_aliases)
 * has that overlaps alias a of upstream i; writes the message into why.
 * An upstream's own hub names are no clash: listing them is harmless. */
static int alias_clash(const struct config *cfg, size_t i, const char *a, size_t j,
                       size_t n_aliases, char *why, size_t whylen) {
  const struct config_upstream *o = &cfg->upstreams[j];
  unsigned port;
  if (entries_overlap(a, o->host, &port)) {
    if (strcasecmp(a, o->host) == 0)
      snprintf(why, whylen, "alias %s is already upstreams[%zu].host", a, j);
    else
      snprintf(why, whylen, "alias %s overlaps upstreams[%zu].host (%s) on port %u", a, j,
               o->host, port);
    return 1;
  }
  const char *an;
  size_t al;
  unsigned ap;
  entry_split(a, &an, &al, &ap);
  if (j != i && config__is_docker_hub(o->host, strlen(o->host)) &&
      is_hub_implied(an, al) &&
      (ap == 0 || ap == PROXY_TLS_PORT || ap == PROXY_PLAIN_PORT)) {
    snprintf(why, whylen,
             "alias %s is already upstreams[%zu] (%s): Docker Hub "
             "answers to it",
             a, j, o->host);
    return 1;
  }
  for (size_t m = 0; m < n_aliases; m++) {
    if (!entries_overlap(a, o->aliases[m], &port))
      continue;
    if (strcmp(a, o->aliases[m]) == 0)
      snprintf(why, whylen, "alias %s is already upstreams[%zu].aliases[%zu]", a, j, m);
    else
      snprintf(why, whylen,
               "alias %s overlaps upstreams[%zu].aliases[%zu] (%s) on port %u", a, j, m,
               o->aliases[m], port);
    return 1;
  }
  return 0;
}

/* check_aliases: every name the proxy listener intercepts belongs to one
 * upstream, else which one serves a CONNECT would depend on list order.
 * The alias is blamed (the host is the upstream's identity), and of two
 * aliases the later one. */
static int check_aliases(struct walk *w, const struct config__node *const *vals) {
  const struct config *cfg = w->cfg;
  const struct config__node *item = vals[TOP_UPSTREAMS]->child;
  char why[768];
  for (size_t i = 0; i < cfg->n_upstreams; i++, item = item ? item->next : NULL) {
    const struct config_upstream *u = &cfg->upstreams[i];
    const struct config__node *an = map_get(item, "aliases");
    const struct config__node *at = an ? an->child : NULL;
    for (size_t k = 0; k < u->n_aliases; k++, at = at ? at->next : NULL) {
      int clash = 0;
      for (size_t j = 0; j < cfg->n_upstreams && !clash; j++) {
        /* aliases: those of earlier upstreams, and this one's before k */
        size_t n = j < i ? cfg->upstreams[j].n_aliases : j == i ? k : 0;
        clash = alias_clash(cfg, i, u->aliases[k], j, n, why, sizeof why);
      }
      if (!clash)
        continue;
      snprintf(w->path, sizeof w->path, "upstreams[%zu].aliases[%zu]", i, k);
      return fail(w, at ? at : an, "%s", why);
    }
  }
  return 0;
}

static int top_check(struct walk *w, const struct config__node *map,
                     const struct config__node *const *vals, void *base) {
  struct config *cfg = base;
  if (vals[TOP_UPSTREAMS] == NULL) {
    size_t old = path_push_key(w, "upstreams", 9);
    int rc = fail(w, map, "at least one upstream is required");
    path_pop(w, old);
    return rc;
  }
  /* No explicit default: Docker Hub, because dockerd's registry-mirrors
   * only ever asks for it; else the first listed. */
  struct config_upstream *def = NULL;
  for (size_t i = 0; i < cfg->n_upstreams && def == NULL; i++)
    if (cfg->upstreams[i].is_default)
      def = &cfg->upstreams[i];
  for (size_t i = 0; i < cfg->n_upstreams && def == NULL; i++)
    if (config__is_docker_hub(cfg->upstreams[i].host,
                              strlen(cfg->upstreams[i].host)))
      def = &cfg->upstreams[i];
  if (def == NULL)
    def = &cfg->upstreams[0];
  def->is_default = 1;
  /* here, not in upstream_check: auth: may come after upstreams: */
  const struct config__node *item = vals[TOP_UPSTREAMS]->child;
  for (size_t i = 0; i < cfg->n_upstreams && cfg->auth_htpasswd == NULL;
       i++, item = item ? item->next : NULL) {
    if (!cfg->upstreams[i].is_private)
      continue;
    snprintf(w->path, sizeof w->path, "upstreams[%zu].private", i);
    return fail(w, map_get(item, "private"),
                "private: true needs auth.htpasswd (nobody could pull it)");
  }
  int rc = check_aliases(w, vals);
  if (rc == 0)
    rc = check_listeners(w, vals);
  /* last: the only checks that read files (and the slowest) */
  for (size_t i = 0; rc == 0 && i < w->n_tls; i++)
    rc = tls_check_files(w, &w->tls[i]);
  if (rc == 0)
    rc = proxy_check_ca(w);
  return rc;
}

/* ---- public API ---- */

void config_init(struct config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->listen = (char *)default_listen;
  cfg->log_level = (char *)default_log_level;
  cfg->shutdown_timeout_ms = 30000;
  cfg->access_log = 1;
  cfg->storage.root = (char *)default_root;
  cfg->storage.max_size = 0;
  cfg->http.max_header_bytes = 16 * 1024;
  cfg->http.max_headers = 100;
  cfg->http.header_timeout_ms = 10 * 1000;
  cfg->http.idle_timeout_ms = 60 * 1000;
  cfg->http.send_timeout_ms = 60 * 1000;
  cfg->http.max_connections = 4096;
  cfg->cluster.bind = (char *)default_cluster_bind;
  cfg->cluster.peer_listen = (char *)default_peer_listen;
  cfg->cluster.zone = (char *)default_zone;
  cfg->cluster.replicas = 2;
  cfg->cluster.weight = 1;
  cfg->cluster.peer_timeout_ms = 2000;
  cfg->cluster.peer_stall_timeout_ms = 5000;
  cfg->cluster.fanout = 2;
  cfg->cluster.max_peer_uploads = 8;
  cfg->cluster.replica_queue = 1024;
  cfg->cluster.probe_interval_ms = 1000;
  cfg->cluster.probe_timeout_ms = 500;
  cfg->cluster.push_pull_interval_ms = 30000;
  cfg->proxy.tunnel_others = 1;
  cfg->proxy.leaf_ttl_ms = 24 * HOUR_MS;
}

static void cluster_free(struct config_cluster *c) {
  free(c->name);
  str_free(c->bind);
  free(c->advertise);
  str_free(c->peer_listen);
  free(c->peer_url);
  tls_free(c->tls);
  for (size_t i = 0; i < c->n_join; i++)
    free(c->join[i]);
  free(c->join);
  str_free(c->zone);
  explicit_bzero(c->secret, sizeof c->secret);
  memset(c, 0, sizeof *c);
}

static void proxy_free(struct config_proxy *p) {
  free(p->listen);
  free(p->ca_cert);
  free(p->ca_key);
  free(p->tunnel_allow);
  for (size_t i = 0; i < p->n_hosts; i++) {
    free(p->hosts[i].name);
    free(p->hosts[i].addr);
  }
  free(p->hosts);
  memset(p, 0, sizeof *p);
}

void config_free(struct config *cfg) {
  if (cfg == NULL)
    return;
  for (size_t i = 0; i < cfg->n_upstreams; i++)
    upstream_free(&cfg->upstreams[i]);
  free(cfg->upstreams);
  free(cfg->path);
  str_free(cfg->listen);
  free(cfg->admin_listen);
  str_free(cfg->log_level);
  str_free(cfg->storage.root);
  cluster_free(&cfg->cluster);
  free(cfg->allow);
  free(cfg->auth_htpasswd);
  tls_free(cfg->tls);
  proxy_free(&cfg->proxy);
  memset(cfg, 0, sizeof *cfg);
}

/* own_strings turns the static defaults into heap copies, and gives a
 * configuration without `cluster:` its default member name too (best
 * effort: without a host name it stays NULL; with `cluster:` cluster_check
 * has already set it or refused the file). */
static int own_strings(struct config *cfg) {
  char host[256];
  if (str_own(&cfg->listen) || str_own(&cfg->log_level) ||
      str_own(&cfg->storage.root) || str_own(&cfg->cluster.bind) ||
      str_own(&cfg->cluster.zone) || str_own(&cfg->cluster.peer_listen))
    return UV_ENOMEM;
  if (cfg->cluster.name == NULL && host_name(host, sizeof host) == 0 &&
      str_set(&cfg->cluster.name, host, strlen(host)) != 0)
    return UV_ENOMEM;
  return 0;
}

int config_default_builtin(struct config *cfg) {
  static const struct {
    const char *host, *url;
  } builtin[] = {
      {"docker.io", "https://registry-1.docker.io"},
      {"ghcr.io", "https://ghcr.io"},
      {"quay.io", "https://quay.io"},
  };
  size_t n = sizeof builtin / sizeof builtin[0];
  config_init(cfg);
  cfg->storage.max_size = 20ULL << 30;
  cfg->upstreams = calloc(n, sizeof *cfg->upstreams);
  if (cfg->upstreams == NULL)
    goto nomem;
  for (size_t i = 0; i < n; i++) {
    struct config_upstream *u = &cfg->upstreams[i];
    upstream_init(u);
    cfg->n_upstreams = i + 1;
    u->host = strdup(builtin[i].host);
    u->url = strdup(builtin[i].url);
    if (u->host == NULL || u->url == NULL)
      goto nomem;
  }
  cfg->upstreams[0].is_default = 1;
  if (own_strings(cfg) != 0)
    goto nomem;
  return 0;
nomem:
  config_free(cfg);
  config_init(cfg);
  return UV_ENOMEM;
}

int config_load_string(struct config *cfg, const char *yaml, size_t len,
                       const char *name, char *err, size_t errlen) {
  struct config__tree tree = {0};
  struct walk w;
  int rc;

  if (err != NULL && errlen > 0)
    err[0] = '\0';
  if (name == NULL)
    name = "<string>";
  config_init(cfg);
  if (len > CONFIG_MAX_FILE_SIZE) {
    config__error(err, errlen, name, 1, 1, NULL,
                  "configuration is larger than %d bytes",
                  CONFIG_MAX_FILE_SIZE);
    return RM_ECONFIG;
  }
  if (yaml == NULL)
    len = 0;
  rc = config__tree_parse(&tree, yaml ? yaml : "", len, name, err, errlen);
  if (rc != 0)
    return rc;

  const struct config__node *root = tree.root;
  if (root == NULL ||
      (root->kind == CONFIG__SCALAR && root->is_null && !root->has_anchor)) {
    config__error(err, errlen, name, root ? root->line : 1,
                  root ? root->col : 1, NULL, "no configuration");
    rc = RM_ECONFIG;
    goto out;
  }
  memset(&w, 0, sizeof w);
  w.cfg = cfg;
  w.name = name;
  w.err = err;
  w.errlen = errlen;
  if (root->kind != CONFIG__MAPPING && root->kind != CONFIG__ALIAS) {
    rc = fail(&w, root, "the configuration must be a mapping, got %s",
              kind_name(root));
    goto out;
  }
  rc = apply_section(&w, root, &top_section, cfg);
  if (rc == 0 && (cfg->path = strdup(name)) == NULL)
    rc = fail_nomem(&w);
  if (rc == 0 && own_strings(cfg) != 0)
    rc = fail_nomem(&w);

out:
  config__tree_free(&tree);
  if (rc != 0) {
    config_free(cfg);
    config_init(cfg);
  }
  return rc;
}

int config_load_file(struct config *cfg, const char *path, char *err,
                     size_t errlen) {
  char *buf;
  size_t len;
  int rc;

  config_init(cfg);
  if (err != NULL && errlen > 0)
    err[0] = '\0';
  rc = config_read_file(path, CONFIG_MAX_FILE_SIZE, &buf, &len, err, errlen);
  if (rc != 0)
    return rc;
  rc = config_load_string(cfg, buf, len, path, err, errlen);
  free(buf);
  return rc;
}

const struct config_upstream *
config_upstream_find(const struct config *cfg, const char *host, size_t len) {
  if (cfg == NULL || host == NULL)
    return NULL;
  int hub = config__is_docker_hub(host, len);
  for (size_t i = 0; i < cfg->n_upstreams; i++) {
    const char *h = cfg->upstreams[i].host;
    size_t hlen = strlen(h);
    if (hub ? config__is_docker_hub(h, hlen)
            : hlen == len && strncasecmp(h, host, len) == 0)
      return &cfg->upstreams[i];
  }
  return NULL;
}

/* entry_matches: entry (a host or alias in normal form) takes (name, len)
 * on port, a missing port meaning dflt. */
static int entry_matches(const char *entry, const char *name, size_t len, unsigned port,
                         unsigned dflt) {
  const char *en;
  size_t el;
  unsigned ep;
  entry_split(entry, &en, &el, &ep);
  return el == len && strncasecmp(en, name, len) == 0 && port == (ep ? ep : dflt);
}

int config_upstream_proxy_match(const struct config *cfg, const char *host, size_t len,
                                unsigned port, int plain) {
  char v6[INET6_ADDRSTRLEN];
  unsigned char bin[16];
  /* no name is longer than 253 bytes, nor a bracketed IPv6 literal */
  if (cfg == NULL || host == NULL || len == 0 || len > 255 || port == 0 || port > 65535)
    return -1;
  if (len > 2 && host[0] == '[' && host[len - 1] == ']') {
    host++;
    len -= 2;
  }
  if (memchr(host, ':', len) != NULL) {
    /* IPv6: aliases hold the inet_ntop spelling, so compare in that one */
    char buf[INET6_ADDRSTRLEN];
    if (len >= sizeof buf)
      return -1;
    memcpy(buf, host, len);
    buf[len] = '\0';
    if (inet_pton(AF_INET6, buf, bin) != 1 ||
        inet_ntop(AF_INET6, bin, v6, sizeof v6) == NULL)
      return -1;
    host = v6;
    len = strlen(v6);
  }
  unsigned dflt = plain ? PROXY_PLAIN_PORT : PROXY_TLS_PORT;
  int hub_name = port == dflt && is_hub_implied(host, len);
  for (size_t i = 0; i < cfg->n_upstreams; i++) {
    const struct config_upstream *u = &cfg->upstreams[i];
    if (u->host == NULL)
      continue;
    if (entry_matches(u->host, host, len, port, dflt) ||
        (hub_name && config__is_docker_hub(u->host, strlen(u->host))))
      return (int)i;
    for (size_t k = 0; k < u->n_aliases; k++)
      if (entry_matches(u->aliases[k], host, len, port, dflt))
        return (int)i;
  }
  return -1;
}

const struct config_upstream *
config_upstream_default(const struct config *cfg) {
  if (cfg == NULL || cfg->n_upstreams == 0)
    return NULL;
  for (size_t i = 0; i < cfg->n_upstreams; i++)
    if (cfg->upstreams[i].is_default)
      return &cfg->upstreams[i];
  return &cfg->upstreams[0];
}
