/* route.h - from a request path to (upstream, API endpoint, name, reference).
 *
 * A request is matched to an upstream by, in order: the listener it came in
 * on (an upstream may own a port: dockerd sends no registry name), `?ns=`
 * (containerd names the real registry), a first path component naming a
 * configured registry (podman/cri-o mirrors with a path prefix), else the
 * default upstream. Docker Hub names of one component get "library/".
 */
#ifndef REGMESH_NODE_ROUTE_H
#define REGMESH_NODE_ROUTE_H

#include "reference.h"

#include "../common/digest.h"

#include <stddef.h>

struct config;
struct config_upstream;

enum route_kind {
  ROUTE_BASE,      /* /v2/ */
  ROUTE_MANIFEST,  /* /v2/<name>/manifests/<ref> */
  ROUTE_BLOB,      /* /v2/<name>/blobs/<digest> */
  ROUTE_TAGS,      /* /v2/<name>/tags/list */
  ROUTE_REFERRERS, /* /v2/<name>/referrers/<digest> */
  ROUTE_CATALOG,   /* /v2/_catalog */
};

/* route_kind_str: the metrics label of a kind. */
const char *route_kind_str(enum route_kind k);

struct route {
  enum route_kind kind;
  int upstream;                     /* index into cfg->upstreams */
  char name[REF_NAME_MAX + 1 + 8];  /* repository at the upstream ("library/x") */
  char client_name[REF_NAME_MAX + 1]; /* as the client spelled it (path form) */
  char ref[REF_TAG_MAX + 1 + DIGEST_STR_LEN]; /* tag or "sha256:<hex>" */
  int by_digest;                    /* ref is a digest; hex holds it */
  char hex[DIGEST_HEX_LEN + 1];
  int via_ns;                       /* the upstream came from ?ns= */
};

/* Why a path could not be routed: the registry error to send. */
enum route_error {
  ROUTE_ERR_NONE = 0,
  ROUTE_ERR_NOT_FOUND,      /* not a registry API path: 404 */
  ROUTE_ERR_NAME_INVALID,   /* 400 NAME_INVALID */
  ROUTE_ERR_TAG_INVALID,    /* 400 TAG_INVALID */
  ROUTE_ERR_DIGEST_INVALID, /* 400 DIGEST_INVALID */
  ROUTE_ERR_NAME_UNKNOWN,   /* 404 NAME_UNKNOWN: registry not configured */
};

/* route_request parses path (no query) and query (may be NULL) for a request
 * that came in on a listener owned by upstream `listener_upstream` (-1 for
 * the main listener). On failure returns a negative code and sets *err and
 * a message for the client in msg (it names the configured upstreams for
 * NAME_UNKNOWN). */
int route_request(const struct config *cfg, int listener_upstream,
                  const char *path, const char *query, struct route *out,
                  enum route_error *err, char *msg, size_t msglen);

/* route_is_docker_hub: docker.io and the names Docker Hub also answers to
 * (index.docker.io, registry-1.docker.io). */
int route_is_docker_hub(const char *host);

/* query_param finds `key` in a raw query string and copies its
 * percent-decoded value into out (NUL-terminated). Returns 1 when found and
 * it fit, 0 when absent, -1 when malformed or too long. */
int query_param(const char *query, const char *key, char *out, size_t outlen);

#endif
