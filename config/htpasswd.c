/* htpasswd.c - parse an htpasswd file and check passwords with crypt(3).
 *
 * Parsing walks the bytes once, line by line, with the line number and the
 * byte column at hand, so every refusal names its place; the first one
 * stops the parse. Users go into an open-addressing index as they are read,
 * which finds duplicates without a quadratic scan (the file may hold 100000
 * users) and makes the per-request lookup O(1).
 *
 * Verification hands the stored hash to libxcrypt's crypt_rn as the setting
 * (bcrypt carries its cost and salt in it) and compares the result with the
 * stored hash in constant time. The crypt_data scratch (32 KiB) is on the
 * heap: verify runs on thread-pool threads, whose stacks we do not size.
 */
#include "htpasswd.h"
#include "config.h"
#include "config_internal.h"

#include "errors.h"

#include <crypt.h>
#include <openssl/crypto.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define BCRYPT_LEN 60
#define BCRYPT_TAIL 53 /* 22 characters of salt, 31 of hash */
#define ONLY_BCRYPT "only bcrypt (htpasswd -B) is accepted"

static uint64_t user_hash(const char *s, size_t len) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  for (size_t i = 0; i < len; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ULL;
  }
  return h;
}

/* find_slot: the slot holding user, or the empty slot where it would go. */
static size_t find_slot(const struct htpasswd *h, const char *user,
                        size_t len) {
  size_t mask = h->n_slot - 1, i = (size_t)user_hash(user, len) & mask;
  for (;;) {
    size_t e = h->slot[i];
    if (e == 0)
      return i;
    const char *u = h->e[e - 1].user;
    if (strlen(u) == len && memcmp(u, user, len) == 0)
      return i;
    i = (i + 1) & mask;
  }
}

/* index_grow keeps the index at most half full, so probes stay short. */
static int index_grow(struct htpasswd *h, size_t want) {
  if (want * 2 <= h->n_slot)
    return 0;
  size_t n = h->n_slot ? h->n_slot * 2 : 64;
  while (want * 2 > n)
    n *= 2;
  size_t *slot = calloc(n, sizeof *slot);
  if (slot == NULL)
    return UV_ENOMEM;
  free(h->slot);
  h->slot = slot;
  h->n_slot = n;
  for (size_t i = 0; i < h->n; i++) {
    const char *u = h->e[i].user;
    h->slot[find_slot(h, u, strlen(u))] = i + 1;
  }
  return 0;
}

void htpasswd_free(struct htpasswd *h) {
  if (h == NULL)
    return;
  for (size_t i = 0; i < h->n; i++) {
    free(h->e[i].user);
    if (h->e[i].hash != NULL)
      OPENSSL_cleanse(h->e[i].hash, strlen(h->e[i].hash));
    free(h->e[i].hash);
  }
  free(h->e);
  free(h->slot);
  memset(h, 0, sizeof *h);
}

static int is_b64(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '.' || c == '/';
}

/* check_hash: 0 when (s, len) is a bcrypt hash we accept; else a reason in
 * why and, in *col, the 0-based offset of the fault within s. */
static int check_hash(const char *s, size_t len, char *why, size_t whylen,
                      size_t *col) {
  *col = 0;
  if (len == 0) {
    snprintf(why, whylen, "no hash after the user name; " ONLY_BCRYPT);
    return RM_EPARSE;
  }
  if (len >= 6 && memcmp(s, "$apr1$", 6) == 0) {
    snprintf(why, whylen, "an MD5 ($apr1$) hash; " ONLY_BCRYPT);
    return RM_EPARSE;
  }
  if (len >= 5 && memcmp(s, "{SHA}", 5) == 0) {
    snprintf(why, whylen, "a SHA-1 ({SHA}) hash; " ONLY_BCRYPT);
    return RM_EPARSE;
  }
  if (len < 4 || s[0] != '$' || s[1] != '2' ||
      (s[2] != 'y' && s[2] != 'b' && s[2] != 'a') || s[3] != '$') {
    snprintf(why, whylen,
             "not a bcrypt hash ($2y$, $2b$ or $2a$; crypt, SHA-crypt and "
             "plain passwords are refused); " ONLY_BCRYPT);
    return RM_EPARSE;
  }
  if (len < 7 || s[4] < '0' || s[4] > '9' || s[5] < '0' || s[5] > '9' ||
      s[6] != '$') {
    *col = 4;
    snprintf(why, whylen, "malformed bcrypt hash: expected a two-digit cost "
                          "and '$' after %.4s",
             s);
    return RM_EPARSE;
  }
  int cost = (s[4] - '0') * 10 + (s[5] - '0');
  if (cost < 4 || cost > 31) {
    *col = 4;
    snprintf(why, whylen, "bcrypt cost %02d is outside 04..31", cost);
    return RM_EPARSE;
  }
  for (size_t i = 7; i < len && i < BCRYPT_LEN; i++) {
    if (!is_b64(s[i])) {
      *col = i;
      snprintf(why, whylen,
               "malformed bcrypt hash: byte 0x%02x is not in bcrypt's "
               "alphabet (./A-Za-z0-9)",
               (unsigned char)s[i]);
      return RM_EPARSE;
    }
  }
  if (len != BCRYPT_LEN) {
    *col = len < BCRYPT_LEN ? 7 : BCRYPT_LEN;
    snprintf(why, whylen,
             "malformed bcrypt hash: %zu characters after the cost, "
             "expected %d",
             len - 7, BCRYPT_TAIL);
    return RM_EPARSE;
  }
  return 0;
}

/* parse_line handles one non-blank, non-comment line (l, ll): a message in
 * err and RM_ECONFIG, UV_ENOMEM, or 0 with the entry added to h. lines[i]
 * is the line entry i came from, for the duplicate message. */
static int parse_line(struct htpasswd *h, size_t *cap, size_t **lines,
                      const char *l, size_t ll, size_t line, const char *name,
                      char *err, size_t errlen) {
  char why[256];
  const char *colon = memchr(l, ':', ll);
  if (colon == NULL) {
    snprintf(err, errlen, "%s:%zu:1: expected user:hash", name, line);
    return RM_ECONFIG;
  }
  size_t ul = (size_t)(colon - l);
  if (ul == 0) {
    snprintf(err, errlen, "%s:%zu:1: empty user name", name, line);
    return RM_ECONFIG;
  }
  for (size_t i = 0; i < ul; i++) {
    unsigned char c = (unsigned char)l[i];
    if (c < 0x20 || c == 0x7f) {
      snprintf(err, errlen,
               "%s:%zu:%zu: control character 0x%02x in the user name", name,
               line, i + 1, c);
      return RM_ECONFIG;
    }
  }
  /* a user "alice " would never match what a client sends */
  if (l[0] == ' ' || l[ul - 1] == ' ') {
    snprintf(err, errlen, "%s:%zu:%zu: the user name %s with a space", name,
             line, l[0] == ' ' ? (size_t)1 : ul,
             l[0] == ' ' ? "starts" : "ends");
    return RM_ECONFIG;
  }
  const char *hs = colon + 1;
  size_t hl = ll - ul - 1, col;
  if (check_hash(hs, hl, why, sizeof why, &col) != 0) {
    snprintf(err, errlen, "%s:%zu:%zu: %s", name, line, ul + 2 + col, why);
    return RM_ECONFIG;
  }
  if (h->n_slot > 0) {
    size_t s = find_slot(h, l, ul);
    if (h->slot[s] != 0) {
      snprintf(err, errlen, "%s:%zu:1: user \"%.*s\" is listed twice (first "
                            "on line %zu)",
               name, line, (int)(ul > 64 ? 64 : ul), l,
               (*lines)[h->slot[s] - 1]);
      return RM_ECONFIG;
    }
  }
  if (h->n >= HTPASSWD_MAX_USERS) {
    snprintf(err, errlen, "%s:%zu:1: more than %d users", name, line,
             HTPASSWD_MAX_USERS);
    return RM_ECONFIG;
  }
  if (h->n == *cap) {
    size_t nc = *cap ? *cap * 2 : 16;
    struct htpasswd_entry *e = realloc(h->e, nc * sizeof *e);
    if (e == NULL)
      return UV_ENOMEM;
    h->e = e;
    size_t *nl = realloc(*lines, nc * sizeof *nl);
    if (nl == NULL)
      return UV_ENOMEM;
    *lines = nl;
    *cap = nc;
  }
  if (index_grow(h, h->n + 1) != 0)
    return UV_ENOMEM;
  struct htpasswd_entry *e = &h->e[h->n];
  e->user = strndup(l, ul);
  e->hash = strndup(hs, hl);
  if (e->user == NULL || e->hash == NULL) {
    free(e->user);
    free(e->hash);
    return UV_ENOMEM;
  }
  (*lines)[h->n] = line;
  h->n++;
  h->slot[find_slot(h, l, ul)] = h->n;
  return 0;
}

int htpasswd_parse(struct htpasswd *out, const char *data, size_t len,
                   const char *name, char *err, size_t errlen) {
  struct htpasswd h = {0};
  size_t cap = 0, pos = 0, line = 0, *lines = NULL;
  int rc = 0;
  char dummy[1];

  if (err == NULL || errlen == 0) {
    err = dummy;
    errlen = sizeof dummy;
  }
  err[0] = '\0';
  if (name == NULL)
    name = "htpasswd";
  while (rc == 0 && pos < len) {
    line++;
    const char *l = data + pos;
    const char *nl = memchr(l, '\n', len - pos);
    size_t ll = nl ? (size_t)(nl - l) : len - pos;
    pos += ll + (nl ? 1 : 0);
    if (ll > 0 && l[ll - 1] == '\r')
      ll--;
    size_t blank = 0;
    while (blank < ll && (l[blank] == ' ' || l[blank] == '\t'))
      blank++;
    if (blank == ll || l[0] == '#')
      continue;
    rc = parse_line(&h, &cap, &lines, l, ll, line, name, err, errlen);
  }
  free(lines);
  if (rc == UV_ENOMEM)
    snprintf(err, errlen, "%s: out of memory", name);
  if (rc != 0) {
    htpasswd_free(&h);
    memset(out, 0, sizeof *out);
    return rc;
  }
  *out = h;
  return 0;
}

int htpasswd_load(struct htpasswd *out, const char *path, char *err,
                  size_t errlen) {
  char *buf;
  size_t len;
  int rc;

  memset(out, 0, sizeof *out);
  rc = config_read_regular_file(path, HTPASSWD_MAX_FILE, &buf, &len, err, errlen);
  if (rc != 0)
    return rc;
  rc = htpasswd_parse(out, buf, len, path, err, errlen);
  OPENSSL_cleanse(buf, len);
  free(buf);
  return rc;
}

const char *htpasswd_lookup(const struct htpasswd *h, const char *user,
                            size_t len) {
  if (h == NULL || h->n_slot == 0 || user == NULL)
    return NULL;
  size_t e = h->slot[find_slot(h, user, len)];
  return e ? h->e[e - 1].hash : NULL;
}

int htpasswd_verify(const char *hash, const char *password, size_t pwlen) {
  char pw[CRYPT_MAX_PASSPHRASE_SIZE + 1];
  size_t col, hl;
  char why[256];
  /* bcrypt stops at a NUL: "abc\0x" would pass as "abc" */
  if (hash == NULL || password == NULL || pwlen > CRYPT_MAX_PASSPHRASE_SIZE ||
      memchr(password, '\0', pwlen) != NULL)
    return 0;
  hl = strlen(hash);
  if (check_hash(hash, hl, why, sizeof why, &col) != 0)
    return 0;
  struct crypt_data *cd = calloc(1, sizeof *cd);
  if (cd == NULL)
    return 0;
  memcpy(pw, password, pwlen);
  pw[pwlen] = '\0';
  const char *out = crypt_rn(pw, hash, cd, (int)sizeof *cd);
  int ok = out != NULL && strlen(out) == hl &&
           CRYPTO_memcmp(out, hash, hl) == 0;
  OPENSSL_cleanse(pw, sizeof pw);
  OPENSSL_cleanse(cd, sizeof *cd);
  free(cd);
  return ok;
}
