/* route.c - matches registry API paths and picks the upstream.
 *
 * The endpoint is recognised from the end of the path, because a repository
 * name may itself contain "manifests" or "blobs" components. The upstream
 * choice follows DESIGN.md section 3; names are validated before they are
 * used for anything.
 */
#include "route.h"

#include "../common/errors.h"
#include "../config/config.h"

#include <stdio.h>
#include <string.h>

const char *route_kind_str(enum route_kind k) {
  switch (k) {
  case ROUTE_BASE: return "base";
  case ROUTE_MANIFEST: return "manifest";
  case ROUTE_BLOB: return "blob";
  case ROUTE_TAGS: return "tags";
  case ROUTE_REFERRERS: return "referrers";
  case ROUTE_CATALOG: return "catalog";
  }
  return "unknown";
}

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

int query_param(const char *query, const char *key, char *out, size_t outlen) {
  if (!query)
    return 0;
  size_t klen = strlen(key);
  const char *p = query;
  while (*p) {
    const char *amp = strchr(p, '&');
    const char *end = amp ? amp : p + strlen(p);
    if ((size_t)(end - p) > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
      size_t o = 0;
      for (const char *v = p + klen + 1; v < end; v++) {
        char c = *v;
        if (c == '+') {
          c = ' ';
        } else if (c == '%') {
          if (end - v < 3 || hexval(v[1]) < 0 || hexval(v[2]) < 0)
            return -1;
          c = (char)(hexval(v[1]) * 16 + hexval(v[2]));
          v += 2;
        }
        if (c == '\0' || o + 1 >= outlen)
          return -1;
        out[o++] = c;
      }
      out[o] = '\0';
      return 1;
    }
    if ((size_t)(end - p) == klen && strncmp(p, key, klen) == 0) {
      if (outlen == 0)
        return -1;
      out[0] = '\0';
      return 1;
    }
    p = amp ? amp + 1 : end;
  }
  return 0;
}

static int ends_with(const char *s, size_t len, const char *suffix) {
  size_t n = strlen(suffix);
  return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

/* Finds "/<word>/<last component>" at the end of p; on success sets
 * *name_len to the length before it and *ref to the last component. */
static int split_endpoint(const char *p, size_t len, const char *word,
                          size_t *name_len, const char **ref, size_t *ref_len) {
  const char *slash = memrchr(p, '/', len);
  if (!slash || slash == p)
    return 0;
  size_t rl = len - (size_t)(slash + 1 - p);
  size_t wl = strlen(word);
  size_t before = (size_t)(slash - p);
  if (before < wl + 1 || memcmp(slash - wl, word, wl) != 0 || slash[-(long)wl - 1] != '/')
    return 0;
  *name_len = before - wl - 1;
  *ref = slash + 1;
  *ref_len = rl;
  return 1;
}

static void list_upstreams(const struct config *cfg, char *msg, size_t msglen,
                           const char *what, size_t what_len) {
  int n = snprintf(msg, msglen, "registry %.*s is not mirrored here; upstreams: ",
                   (int)(what_len > 100 ? 100 : what_len), what);
  for (size_t i = 0; i < cfg->n_upstreams && n >= 0 && (size_t)n < msglen; i++)
    n += snprintf(msg + n, msglen - (size_t)n, "%s%s", i ? ", " : "",
                  cfg->upstreams[i].host);
}

static int upstream_index(const struct config *cfg, const struct config_upstream *u) {
  return u ? (int)(u - cfg->upstreams) : -1;
}

int route_is_docker_hub(const char *host) {
  return strcmp(host, "docker.io") == 0 || strcmp(host, "index.docker.io") == 0 ||
         strcmp(host, "registry-1.docker.io") == 0;
}

int route_request(const struct config *cfg, int listener_upstream,
                  const char *path, const char *query, struct route *out,
                  enum route_error *err, char *msg, size_t msglen) {
  memset(out, 0, sizeof *out);
  *err = ROUTE_ERR_NOT_FOUND;
  msg[0] = '\0';
  size_t len = strlen(path);
  if (len < 4 || memcmp(path, "/v2/", 4) != 0) {
    if (strcmp(path, "/v2") == 0) {
      out->kind = ROUTE_BASE;
      *err = ROUTE_ERR_NONE;
      return 0;
    }
    return RM_ENOTFOUND;
  }
  const char *p = path + 4;
  len -= 4;
  if (len == 0) {
    out->kind = ROUTE_BASE;
    *err = ROUTE_ERR_NONE;
    return 0;
  }
  if (len == 8 && memcmp(p, "_catalog", 8) == 0) {
    out->kind = ROUTE_CATALOG;
    *err = ROUTE_ERR_NONE;
    return 0;
  }

  size_t name_len = 0, ref_len = 0;
  const char *ref = NULL;
  if (ends_with(p, len, "/tags/list")) {
    out->kind = ROUTE_TAGS;
    name_len = len - 10;
  } else if (split_endpoint(p, len, "manifests", &name_len, &ref, &ref_len)) {
    out->kind = ROUTE_MANIFEST;
  } else if (split_endpoint(p, len, "blobs", &name_len, &ref, &ref_len)) {
    out->kind = ROUTE_BLOB;
  } else if (split_endpoint(p, len, "referrers", &name_len, &ref, &ref_len)) {
    out->kind = ROUTE_REFERRERS;
  } else {
    return RM_ENOTFOUND;
  }

  if (name_len == 0 || name_len > REF_NAME_MAX) {
    *err = ROUTE_ERR_NAME_INVALID;
    snprintf(msg, msglen, "invalid repository name");
    return RM_EPARSE;
  }
  memcpy(out->client_name, p, name_len);
  out->client_name[name_len] = '\0';

  if (ref) {
    if (ref_len > 7 && memcmp(ref, "sha256:", 7) == 0) {
      if (digest_parse(ref, ref_len, out->hex) != 0) {
        *err = ROUTE_ERR_DIGEST_INVALID;
        snprintf(msg, msglen, "invalid digest");
        return RM_EPARSE;
      }
      out->by_digest = 1;
    } else if (memchr(ref, ':', ref_len)) {
      *err = ROUTE_ERR_DIGEST_INVALID;
      snprintf(msg, msglen, "unsupported digest algorithm");
      return RM_EPARSE;
    } else if (out->kind != ROUTE_MANIFEST || !ref_tag_valid(ref, ref_len)) {
      *err = out->kind == ROUTE_MANIFEST ? ROUTE_ERR_TAG_INVALID : ROUTE_ERR_DIGEST_INVALID;
      snprintf(msg, msglen, out->kind == ROUTE_MANIFEST ? "invalid tag" : "invalid digest");
      return RM_EPARSE;
    }
    memcpy(out->ref, ref, ref_len);
    out->ref[ref_len] = '\0';
  }

  /* Pick the upstream. */
  const struct config_upstream *up = NULL;
  const char *name = p;
  char ns[256];
  int q = query_param(query, "ns", ns, sizeof ns);
  if (listener_upstream >= 0 && (size_t)listener_upstream < cfg->n_upstreams) {
    up = &cfg->upstreams[listener_upstream];
  } else if (q < 0) {
    /* too long, or %00 inside: never the default upstream instead */
    *err = ROUTE_ERR_NAME_INVALID;
    snprintf(msg, msglen, "invalid ns= parameter (a registry host name)");
    return RM_EPARSE;
  } else if (q == 1 && ns[0]) {
    up = config_upstream_find(cfg, ns, strlen(ns));
    if (!up) {
      *err = ROUTE_ERR_NAME_UNKNOWN;
      list_upstreams(cfg, msg, msglen, ns, strlen(ns));
      return RM_ENOTFOUND;
    }
    out->via_ns = 1;
  } else {
    const char *slash = memchr(p, '/', name_len);
    if (slash && slash > p && ref_component_is_host(p, (size_t)(slash - p))) {
      size_t hl = (size_t)(slash - p);
      up = config_upstream_find(cfg, p, hl);
      if (!up) {
        *err = ROUTE_ERR_NAME_UNKNOWN;
        list_upstreams(cfg, msg, msglen, p, hl);
        return RM_ENOTFOUND;
      }
      name = slash + 1;
      name_len -= hl + 1;
    } else {
      up = config_upstream_default(cfg);
    }
  }
  if (!up) {
    *err = ROUTE_ERR_NAME_UNKNOWN;
    list_upstreams(cfg, msg, msglen, "(default)", 9);
    return RM_ENOTFOUND;
  }
  /* Validated after the registry prefix is gone: a host may have a port. */
  if (!ref_name_valid(name, name_len)) {
    *err = ROUTE_ERR_NAME_INVALID;
    snprintf(msg, msglen, "invalid repository name");
    return RM_EPARSE;
  }
  out->upstream = upstream_index(cfg, up);

  int add_library = route_is_docker_hub(up->host) && memchr(name, '/', name_len) == NULL;
  if (add_library && name_len + 8 > REF_NAME_MAX) {
    *err = ROUTE_ERR_NAME_INVALID;
    snprintf(msg, msglen, "repository name too long once prefixed with library/");
    return RM_EPARSE;
  }
  snprintf(out->name, sizeof out->name, "%s%.*s", add_library ? "library/" : "",
           (int)name_len, name);
  *err = ROUTE_ERR_NONE;
  return 0;
}
