/* access.h - who may use a node: address allow lists and client passwords.
 *
 * The allow list is the config's `allow:` (loopback only when it is
 * absent). Passwords come from `auth.htpasswd` (bcrypt only), which is
 * re-read when the file changes; a bad new file keeps the old one. bcrypt
 * costs tens of milliseconds by design, so a check runs on the thread pool
 * and its answer is cached per (user, password) until the file changes:
 * a client sends its credentials with every request.
 */
#ifndef REGMESH_NODE_ACCESS_H
#define REGMESH_NODE_ACCESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

struct config;
struct access;

/* access_new: for cfg (which must outlive it). Loads the htpasswd file
 * now (blocking: call at start). Returns 0 or a negative error (logged). */
int access_new(struct access **out, uv_loop_t *loop, const struct config *cfg);
void access_close(struct access *a);

/* access_allowed: 1 when the address may connect, else 0. */
int access_allowed(const struct access *a, const struct sockaddr_storage *ss);
/* access_auth_enabled: 1 when clients must log in. */
int access_auth_enabled(const struct access *a);
/* access_is_loopback: 127.0.0.0/8 or ::1. */
int access_is_loopback(const struct sockaddr_storage *ss);

/* Answers of access_check. */
enum access_verdict {
  ACCESS_OK = 1,      /* a valid user and password */
  ACCESS_DENIED = 0,  /* none, malformed, unknown user or wrong password */
  ACCESS_PENDING = 2, /* being checked: cb will say */
};
typedef void (*access_cb)(void *ud, enum access_verdict v);
/* access_check looks at an Authorization header value (may be NULL). A
 * cached or plainly bad answer is returned at once and cb is not called;
 * ACCESS_PENDING means cb runs exactly once later, on the loop. user (if
 * not NULL, cap >= 1) gets the user name for logs. */
enum access_verdict access_check(struct access *a, const char *authorization,
                                 access_cb cb, void *ud, char *user,
                                 size_t cap);

/* access_parse_basic: an Authorization value "Basic <base64(user:pass)>"
 * -> cred (NUL-terminated, at most cap - 1 bytes), its length and the
 * offset of the first colon. 0 or RM_EPARSE (not Basic, bad base64, no
 * colon, empty user, NUL inside, too long). */
int access_parse_basic(const char *v, char *cred, size_t cap, size_t *len,
                       size_t *colon);

/* Node tokens: what the proxy's token endpoint hands a client that logged
 * in (docs/proxy.md), "rm1.<hex user>.<expiry>.<hex HMAC-SHA256>" under a
 * key made at start, so a token is good on this node only and until it
 * restarts. access_check takes "Bearer <token>" as well as Basic. */
#define ACCESS_TOKEN_MAX 256
#define ACCESS_TOKEN_TTL_S 900
/* access_token_issue writes a token for user (may be "": anonymous, for a
 * node without auth) valid until now_s + ttl_s. 0, UV_EINVAL (user longer
 * than 63 bytes) or UV_ENOBUFS (cap < ACCESS_TOKEN_MAX). */
int access_token_issue(const struct access *a, const char *user, int64_t now_s,
                       int64_t ttl_s, char *out, size_t cap);
/* access_token_verify: 0 when tok is a token of this node not expired at
 * now_s (user gets its user, cap >= 64), RM_EPARSE when malformed, UV_EACCES
 * when forged or expired. */
int access_token_verify(const struct access *a, const char *tok, int64_t now_s, char *user,
                        size_t cap);

/* Reload the htpasswd file now (SIGHUP). */
void access_reload(struct access *a);
/* access_set_htpasswd: read users from another file from now on (a reload
 * that renamed auth.htpasswd); a file that does not load keeps the old
 * users. Only while auth is on: turning it on or off needs a restart.
 * 0, UV_EINVAL or UV_ENOMEM. */
int access_set_htpasswd(struct access *a, const char *path);

#endif
