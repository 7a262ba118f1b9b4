/* access.c - allow lists, and HTTP Basic checked against an htpasswd file.
 *
 * The htpasswd file is watched like the TLS files (stat on the thread pool
 * every ACCESS_WATCH_MS, reloaded when inode, size or mtime change). Each
 * check hashes "user:password" with SHA-256 into a small direct-mapped
 * cache tagged with the file's generation, so a reload forgets every answer
 * and a client's repeated credentials cost one lookup; a miss runs
 * crypt(3) on the thread pool. Wrong passwords are cached too, so guessing
 * costs the guesser a round trip per try and the node one bcrypt per
 * distinct guess.
 */
#include "access.h"

#include "../common/errors.h"
#include "../common/log.h"
#include "../config/config.h"
#include "../config/htpasswd.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#define ACCESS_WATCH_MS 2000
#define ACCESS_CACHE 1024
#define ACCESS_CRED_MAX 1024

/* Loopback: what may connect when the config has no `allow:`. */
static const struct config_cidr access_loopback[] = {
    {.family = AF_INET, .prefix = 8, .addr = {127}},
    {.family = AF_INET6, .prefix = 128, .addr = {[15] = 1}},
};

struct access_slot {
  uint8_t key[SHA256_DIGEST_LENGTH];
  uint32_t gen;
  uint8_t used, ok;
};

struct access_job {
  uv_work_t work;
  struct access *a;
  uint8_t key[SHA256_DIGEST_LENGTH];
  uint32_t gen;
  char *hash;     /* copy of the user's entry */
  char *password; /* wiped after use */
  size_t pw_len;
  int ok;
  access_cb cb;
  void *ud;
};

struct access {
  uv_loop_t *loop;
  const struct config *cfg;
  struct htpasswd pw;
  int have_pw;
  /* the file: a copy, so a reload can point it elsewhere; replaced only
   * between jobs (a job reads it on the thread pool) */
  char *path, *next_path;
  uint32_t gen;
  struct access_slot cache[ACCESS_CACHE];
  unsigned jobs;   /* checks on the thread pool */
  int closing, timer_closed;
  uv_timer_t timer;
  /* the file watcher's job */
  uv_work_t reload;
  int reload_busy, reload_force;
  struct stat sig, job_sig;
  int job_changed, job_rc;
  struct htpasswd job_pw;
  char job_err[512];
  uint8_t token_key[32]; /* node tokens: random at start */
};

static void access_maybe_free(struct access *a) {
  if (!a->closing || a->jobs || a->reload_busy || !a->timer_closed)
    return;
  if (a->have_pw)
    htpasswd_free(&a->pw);
  free(a->path);
  free(a->next_path);
  OPENSSL_cleanse(a->cache, sizeof a->cache);
  free(a);
}

/* ---- addresses ---- */

int access_allowed(const struct access *a, const struct sockaddr_storage *ss) {
  const struct config *cfg = a->cfg;
  if (cfg->allow_set)
    return config_cidr_match(cfg->allow, cfg->n_allow, (const struct sockaddr *)ss);
  return config_cidr_match(access_loopback, 2, (const struct sockaddr *)ss);
}

int access_is_loopback(const struct sockaddr_storage *ss) {
  return config_cidr_match(access_loopback, 2, (const struct sockaddr *)ss);
}

int access_auth_enabled(const struct access *a) { return a->have_pw; }

/* ---- the htpasswd file ---- */

static int access_same(const struct stat *x, const struct stat *y) {
  return x->st_dev == y->st_dev && x->st_ino == y->st_ino &&
         x->st_size == y->st_size &&
         x->st_mtim.tv_sec == y->st_mtim.tv_sec &&
         x->st_mtim.tv_nsec == y->st_mtim.tv_nsec;
}

static void access_reload_job(uv_work_t *w) {
  struct access *a = w->data;
  memset(&a->job_sig, 0, sizeof a->job_sig);
  if (stat(a->path, &a->job_sig) != 0)
    memset(&a->job_sig, 0, sizeof a->job_sig);
  a->job_changed = a->reload_force || !access_same(&a->job_sig, &a->sig);
  if (!a->job_changed)
    return;
  a->job_rc = htpasswd_load(&a->job_pw, a->path, a->job_err,
                            sizeof a->job_err);
}

static void access_start_reload(struct access *a, int force);

static void access_reload_done(uv_work_t *w, int status) {
  struct access *a = w->data;
  a->reload_busy = 0;
  int changed = status == 0 && a->job_changed;
  if (changed)
    a->sig = a->job_sig;
  if (changed && a->job_rc == 0) {
    if (a->closing) {
      htpasswd_free(&a->job_pw);
    } else {
      htpasswd_free(&a->pw);
      a->pw = a->job_pw;
      a->gen++; /* every cached answer is now stale */
      LOG_I("auth: %s reloaded: %zu users", a->path, a->pw.n);
    }
  } else if (changed) {
    LOG_E("auth: %s: reload refused, keeping the old users: %s", a->path, a->job_err);
  }
  memset(&a->job_pw, 0, sizeof a->job_pw);
  if (a->next_path && !a->closing) {
    access_start_reload(a, 1); /* a new file was named meanwhile */
    return;
  }
  access_maybe_free(a);
}

static void access_start_reload(struct access *a, int force) {
  if (a->reload_busy || a->closing || !a->have_pw)
    return;
  if (a->next_path) {
    free(a->path);
    a->path = a->next_path;
    a->next_path = NULL;
    a->sig = (struct stat){0};
    force = 1;
  }
  a->reload_force = force;
  a->reload.data = a;
  if (uv_queue_work(a->loop, &a->reload, access_reload_job, access_reload_done) == 0)
    a->reload_busy = 1;
}

static void access_on_timer(uv_timer_t *t) { access_start_reload(t->data, 0); }

void access_reload(struct access *a) { access_start_reload(a, 1); }

int access_set_htpasswd(struct access *a, const char *path) {
  if (!a->have_pw || !path)
    return UV_EINVAL;
  if (a->path && strcmp(a->path, path) == 0 && !a->next_path)
    return 0;
  char *p = strdup(path);
  if (!p)
    return UV_ENOMEM;
  free(a->next_path);
  a->next_path = p;
  access_start_reload(a, 1); /* now, or when the running job is done */
  return 0;
}

int access_new(struct access **out, uv_loop_t *loop, const struct config *cfg) {
  struct access *a = calloc(1, sizeof *a);
  if (!a)
    return UV_ENOMEM;
  a->loop = loop;
  a->cfg = cfg;
  if (RAND_bytes(a->token_key, sizeof a->token_key) != 1) {
    LOG_E("auth: no randomness for the token key");
    free(a);
    return RM_ETLS;
  }
  if (cfg->auth_htpasswd && !(a->path = strdup(cfg->auth_htpasswd))) {
    free(a);
    return UV_ENOMEM;
  }
  if (cfg->auth_htpasswd) {
    char err[512];
    if (stat(cfg->auth_htpasswd, &a->sig) != 0)
      memset(&a->sig, 0, sizeof a->sig);
    int r = htpasswd_load(&a->pw, cfg->auth_htpasswd, err, sizeof err);
    if (r) {
      LOG_E("auth: %s", err);
      free(a->path);
      free(a);
      return r;
    }
    a->have_pw = 1;
    LOG_I("auth: %zu users from %s", a->pw.n, cfg->auth_htpasswd);
  }
  uv_timer_init(loop, &a->timer);
  a->timer.data = a;
  if (a->have_pw) {
    uv_timer_start(&a->timer, access_on_timer, ACCESS_WATCH_MS, ACCESS_WATCH_MS);
    uv_unref((uv_handle_t *)&a->timer);
  }
  *out = a;
  return 0;
}

static void access_on_timer_closed(uv_handle_t *h) {
  struct access *a = h->data;
  a->timer_closed = 1;
  access_maybe_free(a);
}

void access_close(struct access *a) {
  if (!a || a->closing)
    return;
  a->closing = 1;
  uv_close((uv_handle_t *)&a->timer, access_on_timer_closed);
}

/* ---- checks ---- */

static void access_job_run(uv_work_t *w) {
  struct access_job *j = w->data;
  j->ok = htpasswd_verify(j->hash, j->password, j->pw_len);
}

static void access_job_done(uv_work_t *w, int status) {
  struct access_job *j = w->data;
  struct access *a = j->a;
  a->jobs--;
  int ok = status == 0 && j->ok == 1;
  if (status == 0 && j->gen == a->gen) {
    struct access_slot *s = &a->cache[(j->key[0] | (j->key[1] << 8)) % ACCESS_CACHE];
    memcpy(s->key, j->key, sizeof s->key);
    s->gen = j->gen;
    s->used = 1;
    s->ok = (uint8_t)ok;
  }
  OPENSSL_cleanse(j->password, j->pw_len);
  free(j->password);
  free(j->hash);
  access_cb cb = j->cb;
  void *ud = j->ud;
  free(j);
  cb(ud, ok ? ACCESS_OK : ACCESS_DENIED);
  access_maybe_free(a);
}

int access_parse_basic(const char *v, char *cred, size_t cap, size_t *len,
                       size_t *colon) {
  if (!v || strncasecmp(v, "Basic ", 6) != 0)
    return RM_EPARSE;
  v += 6;
  while (*v == ' ')
    v++;
  size_t n = strlen(v);
  while (n > 0 && v[n - 1] == ' ')
    n--;
  if (n == 0 || n % 4 != 0 || n / 4 * 3 >= cap)
    return RM_EPARSE;
  int out = EVP_DecodeBlock((unsigned char *)cred, (const unsigned char *)v, (int)n);
  if (out < 0)
    return RM_EPARSE;
  /* EVP_DecodeBlock counts the padding's zero bytes */
  if (v[n - 1] == '=')
    out--;
  if (v[n - 2] == '=')
    out--;
  cred[out] = '\0';
  const char *c = memchr(cred, ':', (size_t)out);
  if (!c || c == cred || memchr(cred, '\0', (size_t)out))
    return RM_EPARSE;
  *len = (size_t)out;
  *colon = (size_t)(c - cred);
  return 0;
}

/* token_mac: hex HMAC of the token's first len bytes into out (65). */
static int token_mac(const struct access *a, const char *tok, size_t len, char out[65]) {
  uint8_t mac[32];
  unsigned ml = 0;
  if (!HMAC(EVP_sha256(), a->token_key, sizeof a->token_key, (const unsigned char *)tok, len,
            mac, &ml) ||
      ml != sizeof mac)
    return RM_ETLS;
  static const char hx[] = "0123456789abcdef";
  for (unsigned i = 0; i < ml; i++) {
    out[2 * i] = hx[mac[i] >> 4];
    out[2 * i + 1] = hx[mac[i] & 15];
  }
  out[64] = '\0';
  return 0;
}

int access_token_issue(const struct access *a, const char *user, int64_t now_s,
                       int64_t ttl_s, char *out, size_t cap) {
  size_t ul = strlen(user);
  if (ul > 63)
    return UV_EINVAL;
  if (cap < ACCESS_TOKEN_MAX)
    return UV_ENOBUFS;
  static const char hx[] = "0123456789abcdef";
  char *p = out + 4;
  memcpy(out, "rm1.", 4);
  for (size_t i = 0; i < ul; i++) {
    *p++ = hx[(unsigned char)user[i] >> 4];
    *p++ = hx[(unsigned char)user[i] & 15];
  }
  p += snprintf(p, 24, ".%" PRId64, now_s + ttl_s);
  char mac[65];
  if (token_mac(a, out, (size_t)(p - out), mac) < 0)
    return RM_ETLS;
  snprintf(p, cap - (size_t)(p - out), ".%s", mac);
  return 0;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

int access_token_verify(const struct access *a, const char *tok, int64_t now_s, char *user,
                        size_t cap) {
  if (cap < 64 || strncmp(tok, "rm1.", 4) != 0)
    return RM_EPARSE;
  const char *h = tok + 4, *d1 = strchr(h, '.');
  if (!d1 || (d1 - h) % 2 || d1 - h > 126)
    return RM_EPARSE;
  const char *e = d1 + 1, *d2 = strchr(e, '.');
  if (!d2 || d2 == e || d2 - e > 18)
    return RM_EPARSE;
  int64_t exp = 0;
  for (const char *q = e; q < d2; q++) {
    if (*q < '0' || *q > '9')
      return RM_EPARSE;
    exp = exp * 10 + (*q - '0');
  }
  if (strlen(d2 + 1) != 64)
    return RM_EPARSE;
  size_t n = (size_t)(d1 - h) / 2;
  for (size_t i = 0; i < n; i++) {
    int hi = hexval(h[2 * i]), lo = hexval(h[2 * i + 1]);
    if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
      return RM_EPARSE;
    user[i] = (char)(hi << 4 | lo);
  }
  user[n] = '\0';
  char mac[65];
  if (token_mac(a, tok, (size_t)(d2 - tok), mac) < 0 ||
      CRYPTO_memcmp(mac, d2 + 1, 64) != 0 || exp < now_s) {
    user[0] = '\0';
    return UV_EACCES;
  }
  return 0;
}

enum access_verdict access_check(struct access *a, const char *authorization,
                                 access_cb cb, void *ud, char *user,
                                 size_t cap) {
  char cred[ACCESS_CRED_MAX];
  size_t len, colon;
  if (user && cap)
    user[0] = '\0';
  if (a->have_pw && authorization && strncasecmp(authorization, "Bearer ", 7) == 0) {
    /* a token of ours: signed, unexpired, and its user still in the file */
    char tu[64];
    const char *t = authorization + 7;
    while (*t == ' ')
      t++;
    if (access_token_verify(a, t, (int64_t)time(NULL), tu, sizeof tu) != 0 || !tu[0] ||
        !htpasswd_lookup(&a->pw, tu, strlen(tu)))
      return ACCESS_DENIED;
    if (user && cap)
      snprintf(user, cap, "%s", tu);
    return ACCESS_OK;
  }
  if (!a->have_pw || access_parse_basic(authorization, cred, sizeof cred, &len,
                                        &colon) != 0)
    return ACCESS_DENIED;
  if (user && cap)
    snprintf(user, cap, "%.*s", (int)colon, cred);
  enum access_verdict v = ACCESS_DENIED;
  const char *hash = htpasswd_lookup(&a->pw, cred, colon);
  if (!hash)
    goto out;
  uint8_t key[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)cred, len, key);
  struct access_slot *s = &a->cache[(key[0] | (key[1] << 8)) % ACCESS_CACHE];
  if (s->used && s->gen == a->gen && CRYPTO_memcmp(s->key, key, sizeof key) == 0) {
    v = s->ok ? ACCESS_OK : ACCESS_DENIED;
    goto out;
  }
  struct access_job *j = calloc(1, sizeof *j);
  if (!j)
    goto out;
  j->a = a;
  memcpy(j->key, key, sizeof key);
  j->gen = a->gen;
  j->hash = strdup(hash);
  j->pw_len = len - colon - 1;
  j->password = malloc(j->pw_len + 1);
  j->cb = cb;
  j->ud = ud;
  j->work.data = j;
  if (!j->hash || !j->password) {
    free(j->hash);
    free(j->password);
    free(j);
    goto out;
  }
  memcpy(j->password, cred + colon + 1, j->pw_len);
  j->password[j->pw_len] = '\0';
  if (uv_queue_work(a->loop, &j->work, access_job_run, access_job_done) != 0) {
    OPENSSL_cleanse(j->password, j->pw_len);
    free(j->password);
    free(j->hash);
    free(j);
    goto out;
  }
  a->jobs++;
  v = ACCESS_PENDING;
out:
  OPENSSL_cleanse(cred, sizeof cred);
  return v;
}
