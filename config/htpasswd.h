/* htpasswd.h - an htpasswd file of bcrypt hashes (`htpasswd -B`).
 *
 * Lines "user:hash"; blank lines and lines starting with '#' are skipped,
 * and a CR before the newline is ignored. Only bcrypt ($2y$, $2b$, $2a$,
 * cost 04..31) is accepted: the other htpasswd schemes (MD5 $apr1$, {SHA},
 * crypt, plain text) are fast hashes a stolen file gives up at once. User
 * names are non-empty, without ':' or control characters, and unique.
 * Errors are one line, "name:line:col: why" (1-based, columns in bytes).
 *
 *   alice:$2y$05$j5BGT5g5j0fHLdn0hBk2hugKJf.DUyrYst4v37xpYLZ9.XgJa5HjW
 *   |user|$2y$|cc|$|<------- 22 salt + 31 hash, bcrypt base64 ------>|
 */
#ifndef REGMESH_CONFIG_HTPASSWD_H
#define REGMESH_CONFIG_HTPASSWD_H

#include <stddef.h>

#define HTPASSWD_MAX_FILE (1024 * 1024)
#define HTPASSWD_MAX_USERS 100000

struct htpasswd_entry {
  char *user;
  char *hash; /* 60 bytes of bcrypt, NUL-terminated */
};

/* Owns its entries, their strings and the index. A zeroed struct is an
 * empty file; htpasswd_free is safe on it. Moving the struct (a = b, then
 * forgetting b) moves the ownership. */
struct htpasswd {
  struct htpasswd_entry *e; /* n entries, in file order */
  size_t n;
  size_t *slot; /* open-addressing index: entry number + 1, 0 = empty */
  size_t n_slot; /* a power of two, at least 2 n; 0 when n is 0 */
};

/* htpasswd_parse fills out from (data, len), which needs no NUL; `name`
 * stands for the file in messages. Returns 0, RM_ECONFIG (message in err)
 * or UV_ENOMEM; on error out is left empty. */
int htpasswd_parse(struct htpasswd *out, const char *data, size_t len,
                   const char *name, char *err, size_t errlen);
/* htpasswd_load reads path (blocking; at most HTPASSWD_MAX_FILE bytes) and
 * parses it with path as the name. Returns 0, a negative errno (UV_ENOENT,
 * ...: "path: reason" in err), RM_ECONFIG or UV_ENOMEM. */
int htpasswd_load(struct htpasswd *out, const char *path, char *err,
                  size_t errlen);
/* htpasswd_lookup: the hash of user (len bytes, no NUL needed), or NULL.
 * The pointer lives as long as h. */
const char *htpasswd_lookup(const struct htpasswd *h, const char *user,
                            size_t len);
/* htpasswd_verify: 1 when password (pwlen bytes) matches hash, else 0 (a
 * password with a NUL byte or over 512 bytes never matches). Compares in
 * constant time. Slow by design (bcrypt): call it off the event loop. */
int htpasswd_verify(const char *hash, const char *password, size_t pwlen);
/* htpasswd_free releases everything and leaves h empty. */
void htpasswd_free(struct htpasswd *h);

#endif
