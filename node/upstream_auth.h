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

/* token_response_parse reads a token endpoint's JSON: "token" (or
 * "access_token"; visible ASCII, at most 16 KiB), "expires_in" (default and
 * floor 60 s, at most a day) and "issued_at" (RFC 3339; an issuer clock
 * ahead of now_s never lengthens the lifetime). Returns 0 with *token
 * (owned by the caller) and *lifetime_s, RM_EPARSE or UV_ENOMEM. */
#define TOKEN_LEN_MAX 16384 /* a JWT is a few KiB */
#define TOKEN_MIN_S 60
#define TOKEN_MAX_S 86400
int token_response_parse(const char *body, size_t len, int64_t now_s, char **token,
                         int64_t *lifetime_s);

#endif
