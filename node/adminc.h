/* adminc.h - asking a running node's admin API from the command line. */
#ifndef REGMESH_NODE_ADMINC_H
#define REGMESH_NODE_ADMINC_H

#include <stddef.h>

/* an answer is bounded: 64 MiB is far past a member list or a cache listing
 * of a million blobs, and bounds what a wrong address makes us buffer */
#define ADMINC_MAX_BODY (64 * 1024 * 1024)

struct adminc_body {
  char *data; /* owned, NUL-terminated */
  size_t len;
  int too_big;
};

/* adminc_dial_address turns a listen address into one to connect to (a
 * wildcard host is asked on loopback); only host:port or [v6]:port with
 * plain host characters pass, so the result is safe in a URL. 0 or
 * RM_EPARSE. */
int adminc_dial_address(const char *in, char *out, size_t outlen);
/* adminc_target picks the node: `admin` (HOST:PORT), else the config's
 * admin_listen or listen, else 127.0.0.1:5000. Returns 0 or an exit code
 * (after printing why, prefixed with prog). */
int adminc_target(const char *prog, const char *admin, const char *config, char *out,
                  size_t outlen);
/* adminc_request does one request (method GET or POST, empty body).
 * Returns 0 with the status and body, or 1 after printing why nothing
 * usable came back. The caller frees b->data. */
int adminc_request(const char *prog, const char *method, const char *url, long timeout_ms,
                   struct adminc_body *b, long *status);
/* adminc_body_write is a CURLOPT_WRITEFUNCTION filling an adminc_body up
 * to ADMINC_MAX_BODY (past it: too_big, and curl stops). */
size_t adminc_body_write(char *p, size_t size, size_t n, void *arg);
/* adminc_fail prints a non-2xx answer (the registry error's message when
 * the body is one) and returns 1. */
int adminc_fail(const char *prog, const char *url, long status, const struct adminc_body *b);
/* adminc_term_copy copies at most cap-1 bytes of s, bytes outside printable
 * ASCII replaced by '?'; NULL or "" prints as "-". */
void adminc_term_copy(char *dst, size_t cap, const char *s);

#endif
