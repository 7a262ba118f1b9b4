/* upstream_auth.h - parsers for the headers of the upstream auth and rate
 * limit flows, kept pure so they are unit tested on their own.
 */
#ifndef REGMESH_NODE_UPSTREAM_AUTH_H
#define REGMESH_NODE_UPSTREAM_AUTH_H

#include <stddef.h>
#include <stdint.h>

enum www_auth_scheme { WWW_AUTH_NONE = 0, WWW_AUTH_BASIC, WWW_AUTH_BEARER };

struct www_auth {
  enum www_auth_scheme scheme;
  char realm[1024];
  char service[256];
  char scope[1024];
  char error[64];
};

/* www_auth_parse reads a WWW-Authenticate value: one or more comma-joined
 * challenges, quoted or token parameter values, any case for scheme and
 * parameter names. Bearer is preferred over Basic when both are offered.
 * Returns 0 or RM_EPARSE (also when a value does not fit its field). */
int www_auth_parse(const char *s, size_t len, struct www_auth *out);

/* ratelimit_parse reads "76;w=21600" (also "100" or "100, 100;w=21600").
 * *window_s is -1 when absent. Returns 0 or RM_EPARSE. */
int ratelimit_parse(const char *s, size_t len, int64_t *n, int64_t *window_s);

#endif
