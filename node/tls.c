/* tls.c - certificates that follow their files.
 *
 * Every TLS_WATCH_MS a job on the thread pool stats the cert, key and CA
 * files; when their (inode, size, mtime) differ from the last build, or a
 * reload was asked for, it builds a new context with tlsctx_server_new.
 * The loop thread then swaps it in. One job runs at a time, so the job's
 * fields need no lock: the loop touches them only after the job is done.
 */
#include "tls.h"

#include "../common/errors.h"
#include "../common/log.h"
#include "../common/tlsctx.h"
#include "../config/config.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct tls_sig {
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime;
};

struct tls_source {
  uv_loop_t *loop;
  const struct config_tls *cfg;
  char what[64];
  SSL_CTX *ctx;
  uv_timer_t timer;
  uv_work_t work;
  int busy, want_reload, closing, timer_closed;
  uint64_t n_ok, n_failed;
  /* the job's */
  struct tls_sig sig[3], job_sig[3];
  int job_force;
  SSL_CTX *job_ctx;
  int job_changed;
  char job_err[512];
};

static void tls_sig_read(const struct config_tls *cfg, struct tls_sig out[3]) {
  const char *files[3] = {cfg->cert, cfg->key, cfg->ca};
  memset(out, 0, 3 * sizeof *out);
  for (int i = 0; i < 3; i++) {
    struct stat st;
    if (files[i] && stat(files[i], &st) == 0)
      out[i] = (struct tls_sig){st.st_dev, st.st_ino, st.st_size, st.st_mtim};
  }
}

static void tls_job(uv_work_t *w) {
  struct tls_source *ts = w->data;
  tls_sig_read(ts->cfg, ts->job_sig);
  ts->job_ctx = NULL;
  ts->job_err[0] = '\0';
  ts->job_changed = ts->job_force || memcmp(ts->job_sig, ts->sig, sizeof ts->sig) != 0;
  if (!ts->job_changed)
    return;
  tlsctx_server_new(&ts->job_ctx, ts->cfg->cert, ts->cfg->key, ts->cfg->ca,
                    ts->cfg->min_version, ts->job_err, sizeof ts->job_err);
}

static void tls_start_job(struct tls_source *ts);

static void tls_job_done(uv_work_t *w, int status) {
  struct tls_source *ts = w->data;
  ts->busy = 0;
  if (ts->closing) {
    SSL_CTX_free(ts->job_ctx);
    ts->job_ctx = NULL;
    if (ts->timer_closed) { /* else the timer's close callback frees it */
      SSL_CTX_free(ts->ctx);
      free(ts);
    }
    return;
  }
  if (status == 0 && ts->job_changed) {
    memcpy(ts->sig, ts->job_sig, sizeof ts->sig);
    if (ts->job_ctx) {
      SSL_CTX_free(ts->ctx);
      ts->ctx = ts->job_ctx;
      ts->n_ok++;
      LOG_I("tls: %s: certificate reloaded from %s", ts->what, ts->cfg->cert);
    } else {
      ts->n_failed++;
      LOG_E("tls: %s: reload refused, still serving the old certificate: %s",
            ts->what, ts->job_err);
    }
  }
  ts->job_ctx = NULL;
  if (ts->want_reload)
    tls_start_job(ts);
}

static void tls_start_job(struct tls_source *ts) {
  if (ts->busy || ts->closing)
    return;
  ts->job_force = ts->want_reload;
  ts->want_reload = 0;
  ts->work.data = ts;
  if (uv_queue_work(ts->loop, &ts->work, tls_job, tls_job_done) == 0)
    ts->busy = 1;
}

static void tls_on_timer(uv_timer_t *t) { tls_start_job(t->data); }

int tls_source_new(struct tls_source **out, uv_loop_t *loop,
                   const struct config_tls *cfg, const char *what) {
  struct tls_source *ts = calloc(1, sizeof *ts);
  if (!ts)
    return UV_ENOMEM;
  ts->loop = loop;
  ts->cfg = cfg;
  snprintf(ts->what, sizeof ts->what, "%s", what);
  tls_sig_read(cfg, ts->sig);
  char err[512];
  int r = tlsctx_server_new(&ts->ctx, cfg->cert, cfg->key, cfg->ca,
                            cfg->min_version, err, sizeof err);
  if (r) {
    LOG_E("tls: %s: %s", what, err);
    free(ts);
    return r;
  }
  uv_timer_init(loop, &ts->timer);
  ts->timer.data = ts;
  uv_timer_start(&ts->timer, tls_on_timer, TLS_WATCH_MS, TLS_WATCH_MS);
  /* a watcher must not keep a stopping node's loop alive */
  uv_unref((uv_handle_t *)&ts->timer);
  *out = ts;
  return 0;
}

SSL_CTX *const *tls_source_ctx(struct tls_source *ts) { return &ts->ctx; }

void tls_source_reload(struct tls_source *ts) {
  ts->want_reload = 1;
  tls_start_job(ts);
}

void tls_source_counts(const struct tls_source *ts, uint64_t *ok,
                       uint64_t *failed) {
  *ok = ts->n_ok;
  *failed = ts->n_failed;
}

static void tls_on_timer_closed(uv_handle_t *h) {
  struct tls_source *ts = h->data;
  ts->timer_closed = 1;
  if (ts->busy)
    return; /* tls_job_done frees it */
  SSL_CTX_free(ts->ctx);
  free(ts);
}

void tls_source_close(struct tls_source *ts) {
  if (!ts || ts->closing)
    return;
  ts->closing = 1;
  uv_close((uv_handle_t *)&ts->timer, tls_on_timer_closed);
}
