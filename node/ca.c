/* ca.c - a small certificate authority for a regmesh cluster.
 *
 * Peers authenticate each other with mutual TLS, so an operator needs a CA
 * and a certificate per node, and should not need an openssl.cnf to get
 * them right. The CA lives in a directory: ca.key next to ca.crt, and each
 * node's NAME.key and NAME.crt beside them. Certificates are built with the
 * same extension syntax openssl.cnf uses (X509V3_EXT_conf_nid), except the
 * subjectAltNames, which are built one GENERAL_NAME at a time so that no
 * name needs quoting. ca_cert_sign, which builds them all from a profile,
 * is also how the proxy mints its leaves (leafcert.c), so there is one
 * place that knows what a regmesh certificate holds.
 *
 * Every file is written to a temporary in its directory, fsynced, then
 * given its name with link(2), which fails when the name exists: an
 * existing key is never replaced, not even by a concurrent run, and a crash
 * leaves at most a stray ".NAME.XXXXXX", never half a key. --force renames
 * over the old files instead.
 */
#include "ca.h"

#include "../common/errors.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#define CA_DAYS 3650
/* notBefore is an hour back, so a peer whose clock is a little behind
 * accepts a certificate issued a minute ago */
#define CA_BACKDATE_SEC 3600
#define CA_CURVE "P-256"
#define CA_CN_MAX 64 /* ub-common-name (RFC 5280) */

int ca_fail(char *err, size_t errlen, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return code;
}

int ca_ssl_fail(char *err, size_t errlen, const char *what) {
  char reason[256] = "unknown OpenSSL error";
  unsigned long e = ERR_get_error();
  if (e)
    ERR_error_string_n(e, reason, sizeof reason);
  ERR_clear_error();
  return ca_fail(err, errlen, RM_ETLS, "%s: %s", what, reason);
}

static int sys_fail(char *err, size_t errlen, const char *path, int code) {
  return ca_fail(err, errlen, code, "%s: %s", path, uv_strerror(code));
}

static int path_join(char *out, const char *dir, const char *name) {
  int n = snprintf(out, PATH_MAX, "%s/%s", dir, name);
  return n < 0 || n >= PATH_MAX ? UV_ENAMETOOLONG : 0;
}

/* ---- files ---- */

static int write_all(int fd, const char *p, size_t len) {
  while (len > 0) {
    ssize_t w = write(fd, p, len);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return w < 0 ? uv_translate_sys_error(errno) : UV_EIO;
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

/* dir_sync makes the directory entries we just made survive a crash. */
static int dir_sync(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return uv_translate_sys_error(errno);
  int r = fsync(fd) == 0 ? 0 : uv_translate_sys_error(errno);
  close(fd);
  return r;
}

/* file_put makes dir/name hold data with mode, through a temporary in dir
 * (mkstemp: O_EXCL, 0600 from the start, so a key is never readable by
 * others, not even for a moment). Without replace an existing name is left
 * alone and UV_EEXIST returned. Returns 0 or a UV_E* code, err set. */
static int file_put(const char *dir, const char *name, const char *data, size_t len,
                    mode_t mode, int replace, char *err, size_t errlen) {
  char path[PATH_MAX], tmp[PATH_MAX];
  int n = snprintf(tmp, sizeof tmp, "%s/.%s.XXXXXX", dir, name);
  if (path_join(path, dir, name) != 0 || n < 0 || (size_t)n >= sizeof tmp)
    return ca_fail(err, errlen, UV_ENAMETOOLONG, "%s: path too long", dir);
  int fd = mkstemp(tmp);
  if (fd < 0)
    return sys_fail(err, errlen, tmp, uv_translate_sys_error(errno));
  int r = fchmod(fd, mode) == 0 ? 0 : uv_translate_sys_error(errno);
  if (r == 0)
    r = write_all(fd, data, len);
  if (r == 0 && fsync(fd) != 0)
    r = uv_translate_sys_error(errno);
  if (close(fd) != 0 && r == 0)
    r = uv_translate_sys_error(errno);
  if (r == 0 && (replace ? rename(tmp, path) : link(tmp, path)) != 0)
    r = uv_translate_sys_error(errno);
  if (r != 0 || !replace)
    unlink(tmp); /* after link, tmp is a second name for path */
  if (r == 0)
    r = dir_sync(dir);
  if (r == UV_EEXIST)
    return ca_fail(err, errlen, r, "%s already exists; not overwriting it", path);
  return r ? sys_fail(err, errlen, path, r) : 0;
}

/* check_absent refuses early, before any key is made, when dir/name
 * exists. Returns 0 or UV_EEXIST (or the lstat error), err set. */
static int check_absent(const char *dir, const char *name, char *err, size_t errlen) {
  char path[PATH_MAX];
  struct stat st;
  if (path_join(path, dir, name) != 0)
    return ca_fail(err, errlen, UV_ENAMETOOLONG, "%s: path too long", dir);
  if (lstat(path, &st) == 0)
    return ca_fail(err, errlen, UV_EEXIST, "%s already exists; not overwriting it", path);
  if (errno != ENOENT)
    return sys_fail(err, errlen, path, uv_translate_sys_error(errno));
  return 0;
}

static int dir_make(const char *dir, char *err, size_t errlen) {
  struct stat st;
  if (mkdir(dir, 0700) == 0)
    return 0;
  int r = uv_translate_sys_error(errno);
  if (r == UV_EEXIST)
    r = stat(dir, &st) != 0   ? uv_translate_sys_error(errno)
        : S_ISDIR(st.st_mode) ? 0
                              : UV_ENOTDIR;
  return r ? sys_fail(err, errlen, dir, r) : 0;
}

/* write_pair writes dir/base.key (0600) then dir/base.crt (0644). When the
 * certificate cannot be written the new key is removed again, so a failed
 * run leaves no key without its certificate. */
static int write_pair(const char *dir, const char *base, EVP_PKEY *key, X509 *x,
                      int replace, char *err, size_t errlen) {
  char kname[CA_NAME_MAX + 8], cname[CA_NAME_MAX + 8], kpath[PATH_MAX];
  snprintf(kname, sizeof kname, "%s.key", base);
  snprintf(cname, sizeof cname, "%s.crt", base);
  /* secure memory is cleared when freed: the key's PEM leaves no copy */
  BIO *kb = BIO_new(BIO_s_secmem()), *cb = BIO_new(BIO_s_mem());
  int r;
  if (kb == NULL || cb == NULL ||
      !PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL) ||
      !PEM_write_bio_X509(cb, x)) {
    r = ca_ssl_fail(err, errlen, "encoding PEM");
  } else {
    char *kp, *cp;
    long kl = BIO_get_mem_data(kb, &kp), cl = BIO_get_mem_data(cb, &cp);
    r = file_put(dir, kname, kp, (size_t)kl, 0600, replace, err, errlen);
    if (r == 0 &&
        (r = file_put(dir, cname, cp, (size_t)cl, 0644, replace, err, errlen)) != 0 &&
        path_join(kpath, dir, kname) == 0)
      unlink(kpath);
  }
  BIO_free(kb);
  BIO_free(cb);
  return r;
}

/* ---- certificates ---- */

/* The extensions of each profile, in the syntax of openssl.cnf. */
static const struct {
  const char *bc, *ku, *eku;
} profiles[] = {
    /* pathlen:0: the CA signs node certificates, never another CA */
    [CA_PROFILE_ROOT] = {"critical,CA:TRUE,pathlen:0", "critical,keyCertSign,cRLSign",
                         NULL},
    /* One certificate serves both ends of a peer connection, hence both
     * purposes. digitalSignature is all an EC key does in TLS:
     * keyEncipherment is for RSA key transport (RFC 5480 leaves it out) */
    [CA_PROFILE_PEER] = {"CA:FALSE", "critical,digitalSignature",
                         "serverAuth,clientAuth"},
    [CA_PROFILE_SERVER] = {"critical,CA:FALSE", "critical,digitalSignature",
                           "serverAuth"},
};

/* cert_new starts a v3 certificate for key: a random 128-bit serial (from
 * unsigned bytes, so positive), subject CN=cn (at most the 64 bytes X.520
 * allows), valid from not_before to not_after, issued by issuer (NULL: by
 * itself). The caller adds the extensions and signs. */
static X509 *cert_new(EVP_PKEY *key, const char *cn, time_t not_before, time_t not_after,
                      X509 *issuer) {
  unsigned char rnd[16];
  BIGNUM *bn = NULL;
  X509 *x = X509_new();
  int ok = x != NULL && X509_set_version(x, X509_VERSION_3) &&
           RAND_bytes(rnd, sizeof rnd) == 1 &&
           (bn = BN_bin2bn(rnd, sizeof rnd, NULL)) != NULL &&
           BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL &&
           ASN1_TIME_set(X509_getm_notBefore(x), not_before) != NULL &&
           ASN1_TIME_set(X509_getm_notAfter(x), not_after) != NULL &&
           X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                                      (const unsigned char *)cn,
                                      (int)strnlen(cn, CA_CN_MAX), -1, 0) &&
           X509_set_issuer_name(x, X509_get_subject_name(issuer ? issuer : x)) &&
           X509_set_pubkey(x, key);
  BN_free(bn);
  if (!ok) {
    X509_free(x);
    return NULL;
  }
  return x;
}

/* cert_ext adds one extension written as in openssl.cnf; ctx names the
 * issuer and subject the key identifiers are taken from. */
static int cert_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value) {
  X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
  int ok = e != NULL && X509_add_ext(x, e, -1);
  X509_EXTENSION_free(e);
  return ok;
}

static int san_push(GENERAL_NAMES *gens, int type, const char *value) {
  GENERAL_NAME *g = a2i_GENERAL_NAME(NULL, NULL, NULL, type, value, 0);
  if (g == NULL || !sk_GENERAL_NAME_push(gens, g)) {
    GENERAL_NAME_free(g);
    return 0;
  }
  return 1;
}

/* cert_san adds the subjectAltNames one GENERAL_NAME at a time, so that no
 * name needs quoting. An empty SAN is invalid DER: none means no extension. */
static int cert_san(X509 *x, const struct ca_san *san, size_t n) {
  if (n == 0)
    return 1;
  GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
  int ok = gens != NULL;
  for (size_t i = 0; ok && i < n; i++)
    ok = san_push(gens, san[i].type == CA_SAN_IP ? GEN_IPADD : GEN_DNS, san[i].value);
  if (ok)
    ok = X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) == 1;
  GENERAL_NAMES_free(gens);
  return ok;
}

X509 *ca_cert_sign(const struct ca_cert_spec *spec, EVP_PKEY *key, X509 *issuer,
                   EVP_PKEY *issuer_key) {
  if ((unsigned)spec->profile >= sizeof profiles / sizeof profiles[0] ||
      spec->cn == NULL || (spec->n_san > 0 && spec->san == NULL) ||
      (issuer != NULL && issuer_key == NULL))
    return NULL;
  X509 *x = cert_new(key, spec->cn, spec->not_before, spec->not_after, issuer);
  if (x == NULL)
    return NULL;
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
  X509V3_set_ctx_nodb(&ctx);
  const char *eku = profiles[spec->profile].eku;
  if (!cert_ext(x, &ctx, NID_basic_constraints, profiles[spec->profile].bc) ||
      !cert_ext(x, &ctx, NID_key_usage, profiles[spec->profile].ku) ||
      (eku && !cert_ext(x, &ctx, NID_ext_key_usage, eku)) ||
      !cert_ext(x, &ctx, NID_subject_key_identifier, "hash") ||
      (issuer && !cert_ext(x, &ctx, NID_authority_key_identifier, "keyid:always")) ||
      !cert_san(x, spec->san, spec->n_san) ||
      X509_sign(x, issuer ? issuer_key : key, EVP_sha256()) <= 0) {
    X509_free(x);
    return NULL;
  }
  return x;
}

#define IS_ALNUM(c)                                                                      \
  (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z') || ((c) >= '0' && (c) <= '9'))

int ca_dns_name_ok(const char *s, int wildcard) {
  size_t label = 0;
  if (wildcard && strncmp(s, "*.", 2) == 0)
    s += 2;
  /* strnlen: a name from the network need not be short */
  if (s[0] == '\0' || strnlen(s, 254) > 253)
    return 0;
  for (const char *p = s;; p++) {
    if (*p == '.' || *p == '\0') {
      if (label == 0 || label > 63 || p[-1] == '-')
        return 0;
      if (*p == '\0')
        return 1;
      label = 0;
    } else if (IS_ALNUM(*p) || (*p == '-' && label > 0)) {
      label++;
    } else {
      return 0;
    }
  }
}

/* name_san_type: the SAN NAME adds for itself, CA_SAN_IP for an IPv4
 * literal or CA_SAN_DNS for a DNS name, or 0 when it is neither or already
 * listed (inet_pton accepts only the canonical dotted quad, so equal
 * addresses are equal strings). */
static int name_san_type(const struct ca_issue_opts *o) {
  unsigned char a[4];
  int ip = inet_pton(AF_INET, o->name, a) == 1;
  if (!ip && !ca_dns_name_ok(o->name, 0))
    return 0;
  for (size_t i = 0; i < (ip ? o->n_ips : o->n_dns); i++)
    if (ip ? strcmp(o->ips[i], o->name) == 0 : strcasecmp(o->dns[i], o->name) == 0)
      return 0;
  return ip ? CA_SAN_IP : CA_SAN_DNS;
}

/* issue_sans lists o's subjectAltNames: the IPs, the DNS names, then NAME
 * when it adds one. Returns the array (the caller frees it) or NULL. */
static struct ca_san *issue_sans(const struct ca_issue_opts *o, size_t *n) {
  struct ca_san *san = calloc(o->n_ips + o->n_dns + 1, sizeof *san);
  int self = name_san_type(o);
  *n = 0;
  if (san == NULL)
    return NULL;
  for (size_t i = 0; i < o->n_ips; i++)
    san[(*n)++] = (struct ca_san){CA_SAN_IP, o->ips[i]};
  for (size_t i = 0; i < o->n_dns; i++)
    san[(*n)++] = (struct ca_san){CA_SAN_DNS, o->dns[i]};
  /* a NAME like "node_1" alone gets none */
  if (self)
    san[(*n)++] = (struct ca_san){(enum ca_san_type)self, o->name};
  return san;
}

/* ---- commands ---- */

int ca_keygen(char *out, size_t cap) {
  unsigned char key[32];
  if (cap < CA_KEYGEN_LEN)
    return UV_EINVAL;
  if (RAND_bytes(key, sizeof key) != 1)
    return RM_ETLS;
  EVP_EncodeBlock((unsigned char *)out, key, sizeof key);
  OPENSSL_cleanse(key, sizeof key);
  return 0;
}

int ca_init(const char *dir, char *err, size_t errlen) {
  int r = dir_make(dir, err, errlen);
  if (r == 0)
    r = check_absent(dir, "ca.key", err, errlen);
  if (r == 0)
    r = check_absent(dir, "ca.crt", err, errlen);
  if (r != 0)
    return r;
  char host[256] = "", cn[CA_NAME_MAX + 1];
  if (gethostname(host, sizeof host - 1) != 0)
    host[0] = '\0';
  /* a CN holds at most 64 characters */
  snprintf(cn, sizeof cn, "regmesh CA %.53s", host);
  time_t now = time(NULL);
  struct ca_cert_spec spec = {.profile = CA_PROFILE_ROOT,
                              .cn = cn,
                              .not_before = now - CA_BACKDATE_SEC,
                              .not_after = now + (time_t)CA_DAYS * 86400};
  X509 *x = NULL;
  EVP_PKEY *key = EVP_EC_gen(CA_CURVE);
  if (key == NULL)
    r = ca_ssl_fail(err, errlen, "generating the CA key");
  else if ((x = ca_cert_sign(&spec, key, NULL, NULL)) == NULL)
    r = ca_ssl_fail(err, errlen, "signing the CA certificate");
  if (r == 0)
    r = write_pair(dir, "ca", key, x, 0, err, errlen);
  X509_free(x);
  EVP_PKEY_free(key);
  return r;
}

static int issue_check(const struct ca_issue_opts *o, char *err, size_t errlen) {
  static const char name_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                   "0123456789._-";
  unsigned char a[16];
  size_t n = strlen(o->name);
  if (n == 0 || n > CA_NAME_MAX || o->name[0] == '.' || strspn(o->name, name_chars) != n)
    return ca_fail(err, errlen, RM_EPARSE,
                "invalid NAME '%.80s': 1 to %d of A-Z a-z 0-9 . _ -, not starting "
                "with a dot",
                o->name, CA_NAME_MAX);
  if (strcmp(o->name, "ca") == 0)
    return ca_fail(err, errlen, RM_EPARSE, "NAME 'ca' is taken by the CA's own files");
  for (size_t i = 0; i < o->n_ips; i++)
    if (inet_pton(AF_INET, o->ips[i], a) != 1 && inet_pton(AF_INET6, o->ips[i], a) != 1)
      return ca_fail(err, errlen, RM_EPARSE, "--ip '%.80s' is not an IPv4 or IPv6 address",
                  o->ips[i]);
  for (size_t i = 0; i < o->n_dns; i++)
    if (!ca_dns_name_ok(o->dns[i], 1))
      return ca_fail(err, errlen, RM_EPARSE, "--dns '%.80s' is not a DNS name", o->dns[i]);
  if (o->days < 1 || o->days > CA_ISSUE_MAX_DAYS)
    return ca_fail(err, errlen, UV_EINVAL, "--days %d: expected 1 to %d", o->days,
                CA_ISSUE_MAX_DAYS);
  return 0;
}

/* no_passphrase keeps OpenSSL from prompting on the terminal for an
 * encrypted ca.key: we never write one, so it is an error. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  (void)buf, (void)size, (void)rwflag, (void)u;
  return -1;
}

int ca_load_pem(const char *cert_file, const char *key_file, X509 **cert, EVP_PKEY **key,
                char *err, size_t errlen) {
  int r = 0;
  *cert = NULL;
  FILE *f = fopen(key_file, "re");
  if (f == NULL)
    return sys_fail(err, errlen, key_file, uv_translate_sys_error(errno));
  *key = PEM_read_PrivateKey(f, NULL, no_passphrase, NULL);
  fclose(f);
  if (*key == NULL)
    return ca_ssl_fail(err, errlen, key_file);
  if ((f = fopen(cert_file, "re")) == NULL) {
    r = sys_fail(err, errlen, cert_file, uv_translate_sys_error(errno));
  } else {
    *cert = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (*cert == NULL)
      r = ca_ssl_fail(err, errlen, cert_file);
  }
  if (r != 0) {
    EVP_PKEY_free(*key);
    *key = NULL;
  }
  return r;
}

/* ca_load reads dir's CA into *key and *cert, which the caller frees. */
static int ca_load(const char *dir, EVP_PKEY **key, X509 **cert, char *err,
                   size_t errlen) {
  char kpath[PATH_MAX], cpath[PATH_MAX];
  if (path_join(kpath, dir, "ca.key") != 0 || path_join(cpath, dir, "ca.crt") != 0)
    return ca_fail(err, errlen, UV_ENAMETOOLONG, "%s: path too long", dir);
  int r = ca_load_pem(cpath, kpath, cert, key, err, errlen);
  if (r == 0 && X509_check_private_key(*cert, *key) != 1)
    r = ca_ssl_fail(err, errlen, "ca.key does not belong to ca.crt");
  return r;
}

int ca_issue(const struct ca_issue_opts *o, char *err, size_t errlen) {
  char kname[CA_NAME_MAX + 8], cname[CA_NAME_MAX + 8];
  int r = issue_check(o, err, errlen);
  if (r != 0)
    return r;
  snprintf(kname, sizeof kname, "%s.key", o->name);
  snprintf(cname, sizeof cname, "%s.crt", o->name);
  if (!o->force && ((r = check_absent(o->dir, kname, err, errlen)) != 0 ||
                    (r = check_absent(o->dir, cname, err, errlen)) != 0))
    return r;
  time_t now = time(NULL);
  struct ca_cert_spec spec = {.profile = CA_PROFILE_PEER,
                              .cn = o->name,
                              .not_before = now - CA_BACKDATE_SEC,
                              .not_after = now + (time_t)o->days * 86400};
  struct ca_san *san = issue_sans(o, &spec.n_san);
  spec.san = san;
  EVP_PKEY *cakey = NULL, *key = NULL;
  X509 *ca = NULL, *x = NULL;
  r = san ? ca_load(o->dir, &cakey, &ca, err, errlen)
          : ca_fail(err, errlen, UV_ENOMEM, "out of memory");
  if (r == 0 && (key = EVP_EC_gen(CA_CURVE)) == NULL)
    r = ca_ssl_fail(err, errlen, "generating the key");
  if (r == 0 && (x = ca_cert_sign(&spec, key, ca, cakey)) == NULL)
    r = ca_ssl_fail(err, errlen, "signing the certificate");
  if (r == 0)
    r = write_pair(o->dir, o->name, key, x, o->force, err, errlen);
  X509_free(x);
  X509_free(ca);
  EVP_PKEY_free(key);
  EVP_PKEY_free(cakey);
  free(san);
  return r;
}

/* ---- command line ---- */

static const char ca_usage[] =
    "usage: regmesh ca init DIR\n"
    "       regmesh ca issue DIR NAME [--ip IP]... [--dns NAME]... [--days N] [--force]\n"
    "\n"
    "init   creates DIR (mode 0700) and a new CA in it: ca.key (EC P-256) and\n"
    "       ca.crt (self-signed, 10 years); never overwrites an existing CA\n"
    "issue  writes DIR/NAME.key and DIR/NAME.crt signed by DIR's CA, for both TLS\n"
    "       server and client use; NAME is the CN, and a SAN too when it is a DNS\n"
    "       name or an IPv4 address\n"
    "\n"
    "  --ip IP     add an IPv4 or IPv6 subjectAltName (repeatable)\n"
    "  --dns NAME  add a DNS subjectAltName (repeatable)\n"
    "  --days N    validity in days, 1 to 3650 (default 397)\n"
    "  --force     replace an existing NAME.key and NAME.crt\n";

int ca_cli_keygen(int argc, char **argv) {
  char key[CA_KEYGEN_LEN], reason[256] = "no randomness";
  (void)argv;
  if (argc != 0) {
    fprintf(stderr, "usage: regmesh keygen\n");
    return 2;
  }
  if (ca_keygen(key, sizeof key) != 0) {
    unsigned long e = ERR_get_error();
    if (e)
      ERR_error_string_n(e, reason, sizeof reason);
    fprintf(stderr, "regmesh keygen: %s\n", reason);
    return 1;
  }
  int bad = printf("%s\n", key) < 0 || fflush(stdout) != 0;
  OPENSSL_cleanse(key, sizeof key);
  if (bad)
    fprintf(stderr, "regmesh keygen: writing stdout: %s\n", strerror(errno));
  return bad;
}

/* opt_value: the value of `--name V` or `--name=V` at argv[*i] (moving *i
 * past V), or NULL when argv[*i] is not that option. */
static const char *opt_value(int argc, char **argv, int *i, const char *name) {
  size_t n = strlen(name);
  if (strncmp(argv[*i], name, n) != 0)
    return NULL;
  if (argv[*i][n] == '=')
    return argv[*i] + n + 1;
  if (argv[*i][n] == '\0' && *i + 1 < argc)
    return argv[++*i];
  return NULL;
}

static int cli_issue(int argc, char **argv) {
  struct ca_issue_opts o = {.days = CA_ISSUE_DAYS};
  const char **ips = calloc((size_t)argc + 1, sizeof *ips);
  const char **dns = calloc((size_t)argc + 1, sizeof *dns);
  const char *pos[2], *v;
  size_t n_pos = 0;
  char err[PATH_MAX + 256];
  int rc = 0;
  if (ips == NULL || dns == NULL) {
    fprintf(stderr, "regmesh ca issue: out of memory\n");
    rc = 1;
  }
  for (int i = 0; rc == 0 && i < argc; i++) {
    if ((v = opt_value(argc, argv, &i, "--ip")) != NULL) {
      ips[o.n_ips++] = v;
    } else if ((v = opt_value(argc, argv, &i, "--dns")) != NULL) {
      dns[o.n_dns++] = v;
    } else if ((v = opt_value(argc, argv, &i, "--days")) != NULL) {
      char *end;
      errno = 0;
      long d = strtol(v, &end, 10);
      if (errno != 0 || end == v || *end != '\0' || d < 1 || d > CA_ISSUE_MAX_DAYS) {
        fprintf(stderr, "regmesh ca issue: --days '%s': expected 1 to %d\n", v,
                CA_ISSUE_MAX_DAYS);
        rc = 2;
      }
      o.days = (int)d;
    } else if (strcmp(argv[i], "--force") == 0) {
      o.force = 1;
    } else if (argv[i][0] != '-' && n_pos < 2) {
      pos[n_pos++] = argv[i];
    } else {
      fprintf(stderr, "regmesh ca issue: unexpected argument '%s'\n%s", argv[i],
              ca_usage);
      rc = 2;
    }
  }
  if (rc == 0 && n_pos != 2) {
    fprintf(stderr, "regmesh ca issue: expected DIR and NAME\n%s", ca_usage);
    rc = 2;
  }
  if (rc == 0) {
    o.dir = pos[0];
    o.name = pos[1];
    o.ips = ips;
    o.dns = dns;
    if (ca_issue(&o, err, sizeof err) != 0) {
      fprintf(stderr, "regmesh ca issue: %s\n", err);
      rc = 1;
    } else {
      printf("%s/%s.key\n%s/%s.crt\n", o.dir, o.name, o.dir, o.name);
    }
  }
  free(ips);
  free(dns);
  return rc;
}

int ca_cli(int argc, char **argv) {
  char err[PATH_MAX + 256];
  const char *sub = argc > 0 ? argv[0] : "";
  if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0 || strcmp(sub, "help") == 0) {
    fputs(ca_usage, stdout);
    return 0;
  }
  if (strcmp(sub, "issue") == 0)
    return cli_issue(argc - 1, argv + 1);
  if (strcmp(sub, "init") != 0 || argc != 2) {
    fputs(ca_usage, stderr);
    return 2;
  }
  if (ca_init(argv[1], err, sizeof err) != 0) {
    fprintf(stderr, "regmesh ca init: %s\n", err);
    return 1;
  }
  printf("%s/ca.key\n%s/ca.crt\n", argv[1], argv[1]);
  return 0;
}
