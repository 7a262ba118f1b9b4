/* tunnel.c - CONNECT tunnels relayed byte for byte (see tunnel.h).
 *
 * A tunnel holds the client's request while it connects (so a target that
 * does not answer gets the client a 502 and an access line saying so), then
 * takes the socket from the HTTP server and relays. Each read lands in a
 * buffer that is written, as is, to the other side: no copy. A side stops
 * being read while more than TUNNEL_HIGH bytes wait to be written to the
 * other, and resumes below TUNNEL_LOW, so a fast target and a slow client
 * cost at most a megabyte per tunnel. An EOF is passed on as a shutdown of
 * the other side's write half once what was queued before it is written;
 * the tunnel closes when both halves are done or either side fails.
 */
#include "tunnel.h"

#include "errors.h"
#include "http_server.h"
#include "log.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TUNNEL_BUF (64 * 1024)
#define TUNNEL_HIGH (1024 * 1024)
#define TUNNEL_LOW (256 * 1024)
#define TUNNEL_TICK_MS 30000

struct tunnel;

struct tside {
  uv_tcp_t tcp;
  struct tunnel *t;
  size_t pending;         /* bytes queued for writing to this side */
  uv_shutdown_t shutdown;
  unsigned open : 1, reading : 1, eof : 1, shut : 1;
};

struct tunnel {
  struct tunnels *ts;
  struct tunnel *prev, *next;
  struct http_request *req; /* until answered or detached */
  struct tside up, down;    /* the target; the client */
  uv_connect_t connect;
  uv_timer_t timer;
  struct sockaddr_storage addrs[TUNNEL_MAX_ADDRS];
  size_t n_addrs, next_addr;
  uint64_t timeout_ms, last_ms;
  uint64_t bytes_out, bytes_in;
  unsigned handles;
  unsigned retrying : 1, relaying : 1, dead : 1, timer_open : 1;
  char label[272];
};

struct tunnels {
  uv_loop_t *loop;
  struct tunnel *list;
  unsigned max;
  int closing;
  struct tunnel_stats st;
};

/* One read, written to the other side as it is. */
struct twrite {
  uv_write_t w;
  struct tside *to;
  size_t len;
  char data[];
};

static void t_kill(struct tunnel *t);

static void ts_maybe_free(struct tunnels *ts) {
  if (ts->closing && !ts->list)
    free(ts);
}

static void t_free(struct tunnel *t) {
  struct tunnels *ts = t->ts;
  if (t->prev)
    t->prev->next = t->next;
  else
    ts->list = t->next;
  if (t->next)
    t->next->prev = t->prev;
  ts->st.open--;
  if (t->relaying)
    LOG_D("tunnel %s closed: %" PRIu64 " bytes out, %" PRIu64 " in", t->label, t->bytes_out,
          t->bytes_in);
  free(t);
  ts_maybe_free(ts);
}

static void t_attempt(struct tunnel *t);

static void t_closed(struct tunnel *t, int was_up) {
  t->handles--;
  if (!t->dead && t->retrying && was_up) {
    t->retrying = 0;
    t_attempt(t);
    return;
  }
  if (t->dead && t->handles == 0)
    t_free(t);
}

static void t_on_side_closed(uv_handle_t *h) {
  struct tside *s = h->data;
  struct tunnel *t = s->t;
  s->open = 0;
  s->reading = 0;
  t_closed(t, s == &t->up);
}

static void t_on_timer_closed(uv_handle_t *h) {
  struct tunnel *t = h->data;
  t->timer_open = 0;
  t_closed(t, 0);
}

static void t_close_handle(uv_handle_t *h, int open, uv_close_cb cb) {
  if (open && !uv_is_closing(h))
    uv_close(h, cb);
}

static void t_answer(struct tunnel *t, int status, const char *msg) {
  struct http_request *req = t->req;
  if (!req)
    return;
  t->req = NULL;
  struct http_header h[] = {{"Content-Type", 0, "text/plain", 0}};
  req->log_source = "tunnel";
  http_request_close_after(req);
  http_respond_simple(req, status, h, 1, msg, strlen(msg));
}

/* t_kill closes every handle; the last close frees t. */
static void t_kill(struct tunnel *t) {
  if (t->dead)
    return;
  t->dead = 1;
  t_answer(t, 503, "the proxy is shutting down\n");
  t_close_handle((uv_handle_t *)&t->timer, t->timer_open, t_on_timer_closed);
  t_close_handle((uv_handle_t *)&t->up.tcp, t->up.open, t_on_side_closed);
  t_close_handle((uv_handle_t *)&t->down.tcp, t->down.open, t_on_side_closed);
  if (t->handles == 0)
    t_free(t);
}

static void t_on_req_close(struct http_request *req, void *ud) {
  struct tunnel *t = ud;
  (void)req;
  /* the client left while we were connecting */
  if (t->req) {
    struct http_request *r = t->req;
    t->req = NULL;
    http_respond_abort(r);
  }
  t_kill(t);
}

/* ---- relaying ---- */

static struct tside *t_other(struct tside *s) {
  struct tunnel *t = s->t;
  return s == &t->up ? &t->down : &t->up;
}

static void t_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void t_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  struct twrite *w = malloc(sizeof *w + TUNNEL_BUF);
  (void)h;
  buf->base = w ? w->data : NULL;
  buf->len = w ? TUNNEL_BUF : 0;
}

static struct twrite *t_write_of(const uv_buf_t *buf) {
  return (struct twrite *)(void *)(buf->base - offsetof(struct twrite, data));
}

static void t_update_reading(struct tside *s) {
  struct tunnel *t = s->t;
  if (t->dead || !s->open)
    return;
  int want = !s->eof && t_other(s)->pending < TUNNEL_HIGH && !t_other(s)->shut;
  if (want && !s->reading) {
    if (uv_read_start((uv_stream_t *)&s->tcp, t_alloc, t_on_read) < 0) {
      t_kill(t);
      return;
    }
    s->reading = 1;
  } else if (!want && s->reading) {
    uv_read_stop((uv_stream_t *)&s->tcp);
    s->reading = 0;
  }
}

static void t_maybe_done(struct tunnel *t) {
  if (t->up.eof && t->down.eof && t->up.pending == 0 && t->down.pending == 0)
    t_kill(t);
}

static void t_on_shutdown(uv_shutdown_t *sd, int status) {
  struct tside *s = sd->data;
  if (status == UV_ECANCELED)
    return;
  if (status < 0) {
    t_kill(s->t);
    return;
  }
  t_maybe_done(s->t);
}

/* t_pass_eof: the peer of `to` sent EOF; shut to's write half once the
 * bytes queued before the EOF are written (uv_shutdown waits for them). */
static void t_pass_eof(struct tside *to) {
  if (to->shut || !to->open)
    return;
  to->shut = 1;
  to->shutdown.data = to;
  if (uv_shutdown(&to->shutdown, (uv_stream_t *)&to->tcp, t_on_shutdown) < 0)
    t_kill(to->t);
}

static void t_on_write(uv_write_t *req, int status) {
  struct twrite *w = req->data;
  struct tside *to = w->to;
  struct tunnel *t = to->t;
  to->pending -= w->len;
  free(w);
  if (t->dead)
    return;
  if (status < 0) {
    t_kill(t);
    return;
  }
  if (to->pending < TUNNEL_LOW)
    t_update_reading(t_other(to));
  t_maybe_done(t);
}

static int t_send(struct tside *to, struct twrite *w, size_t len) {
  struct tunnel *t = to->t;
  w->to = to;
  w->len = len;
  w->w.data = w;
  uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
  int rc = uv_write(&w->w, (uv_stream_t *)&to->tcp, &b, 1, t_on_write);
  if (rc < 0) {
    free(w);
    return rc;
  }
  to->pending += len;
  t->last_ms = uv_now(t->ts->loop);
  return 0;
}

static int t_send_copy(struct tside *to, const void *data, size_t len) {
  struct twrite *w = malloc(sizeof *w + len);
  if (!w)
    return UV_ENOMEM;
  memcpy(w->data, data, len);
  return t_send(to, w, len);
}

static void t_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  struct tside *s = st->data;
  struct tunnel *t = s->t;
  struct tside *to = t_other(s);
  if (nread <= 0) {
    if (buf->base)
      free(t_write_of(buf));
    if (nread == 0 || t->dead)
      return;
    if (nread != UV_EOF) {
      LOG_D("tunnel %s: %s side: %s", t->label, s == &t->up ? "target" : "client",
            uv_strerror((int)nread));
      t_kill(t);
      return;
    }
    s->eof = 1;
    t_update_reading(s);
    t_pass_eof(to);
    t_maybe_done(t);
    return;
  }
  if (t->dead) {
    free(t_write_of(buf));
    return;
  }
  if (s == &t->up) {
    t->bytes_in += (uint64_t)nread;
    t->ts->st.bytes_in += (uint64_t)nread;
  } else {
    t->bytes_out += (uint64_t)nread;
    t->ts->st.bytes_out += (uint64_t)nread;
  }
  if (t_send(to, t_write_of(buf), (size_t)nread) < 0) {
    t_kill(t);
    return;
  }
  t_update_reading(s);
}

static void t_on_tick(uv_timer_t *tm) {
  struct tunnel *t = tm->data;
  if (uv_now(t->ts->loop) - t->last_ms >= TUNNEL_IDLE_MS) {
    LOG_D("tunnel %s: idle, closing", t->label);
    t_kill(t);
  }
}

static void t_relay(struct tunnel *t) {
  static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
  struct http_request *req = t->req;
  int fd = -1;
  char *extra = NULL;
  size_t elen = 0;
  t->req = NULL;
  req->log_source = "tunnel";
  int rc = http_request_detach(req, 200, &fd, &extra, &elen);
  if (rc < 0) {
    if (rc == UV_EINVAL) /* still ours: cannot happen for a plain CONNECT */
      http_respond_abort(req);
    t_kill(t);
    return;
  }
  uv_timer_stop(&t->timer);
  rc = uv_tcp_init(t->ts->loop, &t->down.tcp);
  if (rc == 0) {
    t->down.tcp.data = &t->down;
    t->down.open = 1;
    t->handles++;
    rc = uv_tcp_open(&t->down.tcp, fd);
    if (rc < 0)
      close(fd);
  } else {
    close(fd);
  }
  t->relaying = 1;
  t->ts->st.opened++;
  if (rc == 0)
    rc = t_send_copy(&t->down, ok, sizeof ok - 1);
  if (rc == 0 && elen > 0)
    rc = t_send_copy(&t->up, extra, elen);
  free(extra);
  if (rc == 0)
    rc = uv_timer_start(&t->timer, t_on_tick, TUNNEL_TICK_MS, TUNNEL_TICK_MS);
  if (rc < 0) {
    t_kill(t);
    return;
  }
  uv_tcp_nodelay(&t->up.tcp, 1);
  uv_tcp_nodelay(&t->down.tcp, 1);
  t_update_reading(&t->up);
  t_update_reading(&t->down);
}

/* ---- connecting ---- */

static void t_give_up(struct tunnel *t, const char *why) {
  t->ts->st.failed++;
  LOG_I("tunnel %s: %s", t->label, why);
  char msg[400];
  snprintf(msg, sizeof msg, "regmesh proxy: %s: %s\n", t->label, why);
  t_answer(t, 502, msg);
  t_kill(t);
}

static void t_retry(struct tunnel *t) {
  uv_timer_stop(&t->timer);
  t->retrying = 1;
  uv_close((uv_handle_t *)&t->up.tcp, t_on_side_closed);
}

static void t_on_connect(uv_connect_t *cr, int status) {
  struct tunnel *t = cr->data;
  if (status == UV_ECANCELED || t->dead)
    return; /* closed by the timer or t_kill, which carry on */
  if (status < 0) {
    LOG_D("tunnel %s: connect: %s", t->label, uv_strerror(status));
    t_retry(t);
    return;
  }
  t_relay(t);
}

static void t_on_timeout(uv_timer_t *tm) {
  struct tunnel *t = tm->data;
  if (!t->relaying && t->up.open && !uv_is_closing((uv_handle_t *)&t->up.tcp)) {
    LOG_D("tunnel %s: connect timed out", t->label);
    t_retry(t);
  }
}

static void t_attempt(struct tunnel *t) {
  while (t->next_addr < t->n_addrs) {
    const struct sockaddr *sa = (const struct sockaddr *)&t->addrs[t->next_addr++];
    if (uv_tcp_init(t->ts->loop, &t->up.tcp) < 0)
      break;
    t->up.tcp.data = &t->up;
    t->up.open = 1;
    t->handles++;
    t->connect.data = t;
    int rc = uv_tcp_connect(&t->connect, &t->up.tcp, sa, t_on_connect);
    if (rc == 0) {
      uv_timer_start(&t->timer, t_on_timeout, t->timeout_ms, 0);
      return;
    }
    LOG_D("tunnel %s: connect: %s", t->label, uv_strerror(rc));
    t_retry(t);
    return;
  }
  t_give_up(t, "no address of the target accepted a connection");
}

int tunnels_new(struct tunnels **out, uv_loop_t *loop, unsigned max) {
  struct tunnels *ts = calloc(1, sizeof *ts);
  if (!ts)
    return UV_ENOMEM;
  ts->loop = loop;
  ts->max = max;
  *out = ts;
  return 0;
}

void tunnel_open(struct tunnels *ts, struct http_request *req,
                 const struct sockaddr_storage *addrs, size_t n, uint64_t timeout_ms,
                 const char *label) {
  static const struct http_header text[] = {{"Content-Type", 0, "text/plain", 0}};
  static const char busy[] = "regmesh proxy: too many tunnels open, try again\n";
  struct tunnel *t = NULL;
  req->log_source = "tunnel";
  if (ts->closing || ts->st.open >= ts->max || n == 0 || n > TUNNEL_MAX_ADDRS ||
      !(t = calloc(1, sizeof *t))) {
    http_request_close_after(req);
    http_respond_simple(req, 503, text, 1, busy, sizeof busy - 1);
    return;
  }
  t->ts = ts;
  t->req = req;
  memcpy(t->addrs, addrs, n * sizeof *addrs);
  t->n_addrs = n;
  t->timeout_ms = timeout_ms ? timeout_ms : 10000;
  snprintf(t->label, sizeof t->label, "%s", label);
  t->up.t = t->down.t = t;
  uv_timer_init(ts->loop, &t->timer);
  t->timer.data = t;
  t->timer_open = 1;
  t->handles = 1;
  t->last_ms = uv_now(ts->loop);
  t->next = ts->list;
  if (ts->list)
    ts->list->prev = t;
  ts->list = t;
  ts->st.open++;
  http_request_on_close(req, t_on_req_close, t);
  t_attempt(t);
}

void tunnels_get_stats(const struct tunnels *ts, struct tunnel_stats *st) { *st = ts->st; }

void tunnels_close(struct tunnels *ts) {
  if (!ts || ts->closing)
    return;
  ts->closing = 1;
  for (struct tunnel *t = ts->list, *next; t; t = next) {
    next = t->next;
    t_kill(t);
  }
  ts_maybe_free(ts);
}
