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
#include <time.h>

#include <openssl/types.h>

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

/* What a certificate is for: each profile is one fixed set of extensions. */
enum ca_profile {
  CA_PROFILE_ROOT = 0, /* the CA itself: CA:TRUE, pathlen:0, keyCertSign, cRLSign */
  CA_PROFILE_PEER,     /* a node: TLS server and client, as peers use one for both */
  CA_PROFILE_SERVER,   /* a TLS server only (the proxy's leaves), CA:FALSE critical */
};

enum ca_san_type { CA_SAN_DNS = 1, CA_SAN_IP = 2 };

struct ca_san {
  enum ca_san_type type;
  const char *value; /* a DNS name (maybe "*."), or an IPv4 or IPv6 literal */
};

/* What ca_cert_sign puts in a certificate. The strings belong to the caller. */
struct ca_cert_spec {
  enum ca_profile profile;
  const char *cn;           /* subject CN, non-empty; cut to its first 64 bytes */
  const struct ca_san *san; /* subjectAltNames in this order (none: n_san 0) */
  size_t n_san;
  time_t not_before, not_after;
};

/* ca_cert_sign builds a v3 certificate for key's public half as spec says,
 * with a random positive 128-bit serial, the profile's extensions and a
 * subject key identifier (plus an authority one unless self-signed), and
 * signs it with SHA-256 by issuer_key in the name of issuer's subject, or by
 * key itself when issuer is NULL. Returns the certificate (the caller's:
 * X509_free) or NULL with the reason on OpenSSL's error queue. Pure CPU: one
 * signature, safe on the event loop; but OpenSSL 3.0 takes ~0.27 ms to
 * encode a provider-made key, so a hot caller passes a legacy public copy
 * of it (leafcert.c's pub_quick) as key. */
X509 *ca_cert_sign(const struct ca_cert_spec *spec, EVP_PKEY *key, X509 *issuer,
                   EVP_PKEY *issuer_key);

/* ca_dns_name_ok: 1 when s is a DNS name a certificate may carry: labels of
 * letters, digits and inner dashes, 1 to 63 each, 253 in all, no trailing
 * dot; with wildcard a leading "*." is allowed too. 0 otherwise. */
int ca_dns_name_ok(const char *s, int wildcard);

/* ca_load_pem reads a PEM private key (unencrypted: never prompts) from
 * key_file and the first PEM certificate of cert_file. Blocking file I/O.
 * Returns 0 with *key and *cert the caller's, or RM_ETLS / UV_E* with a
 * one-line reason naming the file in err and both left NULL. It does not
 * check that they match: X509_check_private_key. */
int ca_load_pem(const char *cert_file, const char *key_file, X509 **cert, EVP_PKEY **key,
                char *err, size_t errlen);

/* ca_fail writes the message into err and returns code; ca_ssl_fail writes
 * "what: <OpenSSL's first queued reason>" (the one closest to the cause),
 * clears the queue and returns RM_ETLS. For ca.c and leafcert.c. */
int ca_fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int ca_ssl_fail(char *err, size_t errlen, const char *what);

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
