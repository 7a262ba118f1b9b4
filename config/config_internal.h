/* config_internal.h - what the files of config/ share, and nobody else.
 *
 *   config_tree.c   YAML text -> a small node tree with 1-based marks, plus
 *                   the one-line error format every message goes through.
 *   config_value.c  pure string parsers: sizes, durations, numbers,
 *                   booleans, listen addresses, registry hosts, URLs,
 *                   proxy aliases, gossip addresses, join seeds, base64.
 *   config_cidr.c   `allow:` (and proxy.tunnel_allow) entries: CIDR parsing
 *                   and address matching.
 *   config_file.c   reading a file whole, bounded (config, htpasswd).
 *   htpasswd.c      the `auth.htpasswd` file (its own header, htpasswd.h,
 *                   since the node reloads it too).
 *   config.c        the schema (a key table per section), the walk over the
 *                   tree, cross-key validation, and the public API.
 */
#ifndef REGMESH_CONFIG_CONFIG_INTERNAL_H
#define REGMESH_CONFIG_CONFIG_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

struct config_cidr;

/* ---- files (config_file.c) ---- */

/* ---- tree (config_tree.c) ---- */

enum config__kind {
  CONFIG__SCALAR = 0,
  CONFIG__SEQUENCE = 1,
  CONFIG__MAPPING = 2,
  CONFIG__ALIAS = 3, /* kept (never resolved) so the walk can reject it */
};

/* One YAML node. A mapping's children alternate key, value; libyaml always
 * emits both, so the count is even. */
struct config__node {
  enum config__kind kind;
  unsigned line, col; /* 1-based */
  int has_anchor;
  int is_null;      /* plain untagged "", "~", "null", "Null", "NULL" */
  const char *text; /* scalar bytes plus a NUL; may also contain a NUL */
  size_t len;       /* scalar length in bytes */
  struct config__node *child; /* first child */
  struct config__node *next;  /* next sibling */
  size_t n_children;
};

struct config__arena;

/* A parsed document. The arena owns every node and string. */
struct config__tree {
  struct config__node *root; /* NULL when the stream holds no document */
  struct config__arena *arena;
};

/* config__tree_parse parses one YAML document from (yaml, len). Returns 0,
 * RM_ECONFIG (syntax error, more than one document, nesting or node count
 * over the limits) or UV_ENOMEM, with the message in err. On error the tree
 * holds nothing; config__tree_free is safe either way. */
int config__tree_parse(struct config__tree *t, const char *yaml, size_t len,
                       const char *name, char *err, size_t errlen);
void config__tree_free(struct config__tree *t);

/* config__error writes "name:line:col: path: why" (or "name:line:col: why"
 * when path is empty) into err. */
void config__error(char *err, size_t errlen, const char *name, unsigned line,
                   unsigned col, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

/* config__quote copies at most 40 characters of s into buf for a message:
 * printable ASCII as is, anything else as \xNN, "..." when cut. */
const char *config__quote(char *buf, size_t buflen, const char *s, size_t len);
#define CONFIG__QUOTE_MAX 200
/* config__quote_max: the same with at most max characters, for file paths,
 * which are useless cut at 40. */
const char *config__quote_max(char *buf, size_t buflen, const char *s,
                              size_t len, size_t max);

/* ---- values (config_value.c) ---- */

/* A parsed listen address, normalised for comparison. */
struct config__addr {
  char host[256]; /* lower case; IPv6 in inet_ntop form, no brackets */
  unsigned port;
  int wildcard; /* 0.0.0.0 or :: (binds every address of the port) */
};

/* Each returns 0, or RM_EPARSE with a static reason in *why. */
int config__parse_bool(const char *s, int *out);
/* config__parse_uint: decimal digits only. 0, RM_EPARSE or RM_ETOOBIG. */
int config__parse_uint(const char *s, uint64_t *out);
int config__parse_listen(const char *s, struct config__addr *out,
                         const char **why);
int config__check_registry_host(const char *s, const char **why);
/* config__check_url returns the URL's length without trailing slashes
 * (> 0), or RM_EPARSE with *why. */
int config__check_url(const char *s, const char **why);
int config__check_env_name(const char *s);
/* config__parse_ip_port: a numeric "ip:port" or "[v6]:port" (no host
 * names), port min_port..65535. For cluster.bind (min 0) and advertise. */
int config__parse_ip_port(const char *s, unsigned min_port,
                          struct config__addr *out, const char **why);
/* config__parse_seed: a join seed "host", "host:port", "[v6]" or
 * "[v6]:port", host a DNS name or an IP address. Writes "host:port" (port
 * CONFIG_CLUSTER_PORT when omitted, host in lower case) into out; outlen
 * CONFIG__SEED_MAX fits any valid seed. */
#define CONFIG__SEED_MAX 272
int config__parse_seed(const char *s, char *out, size_t outlen,
                       const char **why);
/* config__check_dns_name: letters, digits, dots and dashes, labels 1..63
 * bytes not starting or ending with a dash, 1..253 bytes in all. */
int config__check_dns_name(const char *s, size_t len);
/* config__parse_alias: an `aliases:` entry "host", "host:port", "[v6]" or
 * "[v6]:port", host a DNS name or an IP address. Writes its normal form
 * into out: lower case, IPv6 in brackets in inet_ntop form, ":port" only
 * when one was given (a name without one means 443, or 80 for plain
 * http://). outlen CONFIG__ALIAS_MAX fits any valid entry. */
#define CONFIG__ALIAS_MAX 272
int config__parse_alias(const char *s, char *out, size_t outlen, const char **why);
/* config__check_member_name: 1..max bytes of printable ASCII, no spaces. */
int config__check_member_name(const char *s, size_t len, size_t max,
                              const char **why);
/* config__base64_decode decodes standard base64 (padding optional) into
 * out. Returns 0, RM_EPARSE (alphabet, padding or length) or RM_ETOOBIG
 * (more than cap bytes); *outlen is the decoded length in both the first
 * and the last case, so a caller can say how long a wrong key was. */
int config__base64_decode(const char *s, size_t len, uint8_t *out, size_t cap,
                          size_t *outlen);
/* config__is_docker_hub: docker.io, index.docker.io, registry-1.docker.io,
 * any case. */
int config__is_docker_hub(const char *host, size_t len);
/* config__edit_distance: case-insensitive Levenshtein distance with adjacent
 * transpositions; strings over 64 bytes compare as "far" (SIZE_MAX). */
size_t config__edit_distance(const char *a, size_t alen, const char *b,
                             size_t blen);

/* ---- allow entries (config_cidr.c) ---- */

/* config__parse_cidr is config_parse_cidr with a reason in *why. When the
 * only fault is host bits set below the prefix, *network (if not NULL)
 * receives the net the text probably meant, for the message. */
int config__parse_cidr(const char *s, struct config_cidr *out,
                       struct config_cidr *network, const char **why);
/* config__format_cidr writes "net/prefix" into buf and returns buf. */
const char *config__format_cidr(const struct config_cidr *c, char *buf,
                                size_t len);

#endif
