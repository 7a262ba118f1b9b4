/* ca.h - the cluster's own certificate authority and secret, made offline.
 *
 * `regmesh ca init DIR` makes a CA (DIR/ca.key, DIR/ca.crt), `regmesh ca
 * issue DIR NAME` signs a node certificate with it, usable both as TLS
 * server and client since peers talk mutual TLS with one certificate, and
 * `regmesh keygen` prints a cluster.secret. Keys are EC P-256, signatures
 * SHA-256. A key file is never overwritten unless asked (--force), and a
 * crash never leaves half a file.
 */
#ifndef REGMESH_NODE_CA_H
#define REGMESH_NODE_CA_H

#include <stddef.h>

#define CA_KEYGEN_LEN 45       /* base64 of 32 bytes, and the NUL */
#define CA_ISSUE_DAYS 397      /* what browsers still accept, a habit worth keeping */
#define CA_ISSUE_MAX_DAYS 3650 /* as long as the CA itself lives */
#define CA_NAME_MAX 64         /* NAME is a file name and the CN (at most 64) */

/* What ca_issue signs. The strings belong to the caller. */
struct ca_issue_opts {
  const char *dir;  /* holds ca.key and ca.crt; NAME.key and NAME.crt go here */
  const char *name; /* [A-Za-z0-9._-]{1,64}, no leading dot */
  const char *const *ips;
  size_t n_ips;
  const char *const *dns;
  size_t n_dns;
  int days;  /* 1 .. CA_ISSUE_MAX_DAYS */
  int force; /* replace an existing NAME.key and NAME.crt */
};

/* ca_keygen writes 32 random bytes, base64 with padding and a NUL, to out
 * (cap >= CA_KEYGEN_LEN): a value cluster.secret accepts as it is. Returns 0,
 * UV_EINVAL (cap too small) or RM_ETLS (no randomness; on OpenSSL's queue). */
int ca_keygen(char *out, size_t cap);

/* ca_init creates dir (mode 0700) if missing and writes a new CA into it:
 * ca.key (PKCS#8, mode 0600) and a self-signed ca.crt valid for 10 years.
 * Refuses with UV_EEXIST when either file exists. Returns 0 or a negative
 * code with a one-line reason in err. */
int ca_init(const char *dir, char *err, size_t errlen);

/* ca_issue writes o->dir/NAME.key and NAME.crt, signed by the CA in o->dir,
 * with subjectAltNames o->ips, o->dns and NAME itself when it is a DNS name
 * or an IPv4 address. Returns 0, RM_EPARSE / UV_EINVAL (bad option),
 * UV_EEXIST (without force), RM_ETLS or a UV_E* file error, with a one-line
 * reason in err. */
int ca_issue(const struct ca_issue_opts *o, char *err, size_t errlen);

/* ca_cli_keygen and ca_cli run `regmesh keygen` and `regmesh ca` on the
 * arguments after the command's name. They print results to stdout, errors
 * to stderr, and return the exit code: 0, 1 (failed) or 2 (usage). */
int ca_cli_keygen(int argc, char **argv);
int ca_cli(int argc, char **argv);

#endif
