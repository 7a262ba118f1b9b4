/* http_server.c - HTTP/1.1 server on libuv with http-parser.
 *
 * Every connection is an explicit state machine (enum conn_state); each move
 * goes through conn_set_state, which logs it and arms the connection's one
 * timer for the new state (head timeout, keep-alive idle, send progress,
 * lingering close). Input lands in a per-connection buffer of
 * max_header_bytes: while a head is being read it is fed to http_parser at
 * once and the URL and headers are copied into a per-request arena of the
 * same size, so a request's strings never move while the handler holds it;
 * while a request is in service, further bytes are only buffered (pipelining)
 * and reading stops when the buffer is full. Responses go out as owned
 * uv_write buffers, or, for file bodies, with pread into a buffer of the
 * server's fixed pool and write(2) (sendfile(2) when the pool is empty),
 * driven by a uv_poll_t on a dup of the socket, because a uv_tcp_t has no
 * "writable" callback.
 *
 * TLS sits between the socket and all of the above (memory BIOs, so the
 * libuv I/O stays as it is): ciphertext read by libuv is fed to OpenSSL and
 * the plaintext lands in the same input buffer; every output buffer is
 * encrypted as it is queued, through a "sink" BIO that appends to the
 * connection's scratch buffer. A file body is read into a scratch buffer and
 * encrypted straight into a pool buffer, which then goes out with write(2)
 * like a plain one; with the pool empty a connection encrypts into a small
 * buffer of its own instead of using sendfile. Kernel TLS is not used: the
 * kernels we run on had no `tls` ULP (docs/decisions.md).
 *
 * Lifetime: a connection is refcounted - one reference for its libuv handles
 * (dropped in the last close callback), one while the handler holds the
 * request, one while it sits in the server's deferred-work list. Work that
 * must not run inside the handler's own call chain (parsing the next
 * pipelined request, the callbacks of writes that were dropped) is deferred
 * to a uv_idle_t, so a handler never re-enters itself through us.
 */
#include "http_server.h"

#include "errors.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/sendfile.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define HTTP_BACKLOG 511
/* Request bodies (pushes, stray POSTs) are read and thrown away up to this;
 * larger ones get 413 and a close. The handler refuses them anyway. */
#define CONN_BODY_CAP (64 * 1024)
/* After the last response on a connection the write side is shut and input
 * is read and dropped for a while, so the kernel does not answer unread
 * input with a RST that could destroy the response in flight. */
#define CONN_LINGER_MS 2000
#define CONN_LINGER_MAX_BYTES (1024 * 1024)
/* file bytes per poll callback, so one fast reader cannot hog the loop */
#define CONN_SENDFILE_SLICE (4 * 1024 * 1024)
/* File bodies are copied (pread into a buffer, write to the socket) rather
 * than sent with sendfile: on loopback a 256 MiB blob went out 1.5-1.8x
 * faster that way, and no slower for small ones (docs/decisions.md). The
 * buffers are a fixed pool of the server's, allocated on first use and kept;
 * a connection holds one only while copied bytes wait for room in its
 * socket, so they never take more than COPY_BUFS * COPY_BUF_SIZE (8 MiB)
 * whatever the number of connections. When none is free the file bytes go
 * out with sendfile, which needs no buffer. 512 KiB beat 256 KiB by ~10%
 * and 1 MiB was not measurably better than 512 KiB. */
#define COPY_BUFS 16
#define COPY_BUF_SIZE (512 * 1024)
/* TLS: a file piece is encrypted into a pool buffer whole, so it leaves
 * room for each 16 KiB record's header, IV, MAC and padding (at most ~85
 * bytes with CBC suites; 128 are kept per record). The own buffer of a TLS
 * connection that found the pool empty holds four records. */
#define TLS_RECORD 16384
#define TLS_RECORD_ROOM 128
#define TLS_PIECE (COPY_BUF_SIZE - (COPY_BUF_SIZE / TLS_RECORD) * TLS_RECORD_ROOM)
#define TLS_OWN_PLAIN (4 * TLS_RECORD)
#define TLS_OWN_BUF (4 * (TLS_RECORD + TLS_RECORD_ROOM))
#define TLS_READ_BUF (64 * 1024)
#define CONN_MAX_RESP_HEAD (64 * 1024)
#define CONN_MAX_WRITE ((size_t)1 << 30)

enum conn_state {
  CONN_NEW,       /* allocated, not yet reading */
  CONN_READ_HEAD, /* reading a request head (and a small body); head timer */
  CONN_SERVICE,   /* the handler holds a request, no response yet */
  CONN_WRITING,   /* response started; send timer while bytes are pending */
  CONN_FLUSHING,  /* response ended (or an error reply queued); draining */
  CONN_IDLE,      /* keep-alive, waiting for the next request; idle timer */
  CONN_LINGER,    /* write side shut, dropping input until EOF or timer */
  CONN_CLOSING,   /* uv_close issued on every handle */
  CONN_CLOSED,    /* handles closed; waiting for the last reference */
};

static const char *conn_state_str(enum conn_state s) {
  switch (s) {
  case CONN_NEW: return "NEW";
  case CONN_READ_HEAD: return "READ_HEAD";
  case CONN_SERVICE: return "SERVICE";
  case CONN_WRITING: return "WRITING";
  case CONN_FLUSHING: return "FLUSHING";
  case CONN_IDLE: return "IDLE";
  case CONN_LINGER: return "LINGER";
  case CONN_CLOSING: return "CLOSING";
  case CONN_CLOSED: return "CLOSED";
  }
  return "?";
}

/* What the head parser is currently appending to the arena. */
enum conn_item { ITEM_NONE, ITEM_URL, ITEM_NAME, ITEM_VALUE };

/* One queued output buffer. Owned by the connection's uv_write until its
 * callback, or by the connection's dropped list (HEAD bodies). */
struct conn_write {
  uv_write_t req;
  struct http_conn *conn;
  http_write_cb cb;
  void *ud;
  uint64_t body_len;        /* body bytes in data, for the access log */
  struct conn_write *next;  /* dropped list */
  size_t len;
  char data[];
};

struct http_listener {
  uv_tcp_t tcp;
  struct http_server *srv;
  int id;
  SSL_CTX *const *tls_ctx; /* NULL: plain HTTP */
  /* a listener with its own budget (the admin one) counts its connections
   * apart, so a full registry port never takes /healthz down */
  unsigned budget; /* 0: the server's max_connections, shared */
  struct http_listener *next;
};

/* The server owns its listeners and connections; it is freed once all of
 * them are gone after http_server_close. */
struct http_server {
  uv_loop_t *loop;
  struct http_server_limits limits;
  http_handler_cb handler;
  void *ud;
  struct http_listener *listeners;
  unsigned n_listeners_open;   /* listener handles not yet closed */
  struct http_conn *conns;     /* every connection until it is freed */
  unsigned n_conns;
  /* open connections of listeners with their own budget, by listener id
   * (few: the admin listener today) */
  struct {
    int id;
    unsigned open;
  } budgeted[4];
  uv_idle_t idle;              /* runs the deferred list */
  struct http_conn *defer_head, *defer_tail;
  struct http_server_stats stats;
  uint64_t next_conn_id, next_req_id;
  int closing;
  void (*close_cb)(void *ud);
  void *close_ud;
  int draining; /* 1 while draining, 2 once drain_cb ran */
  void (*drain_cb)(void *ud);
  void *drain_ud;
  time_t date_sec;
  char date[40];
  uint64_t refuse_log_ms;
  char *copy_free[COPY_BUFS]; /* copy buffers not held by a connection */
  unsigned n_copy_free, n_copy_alloc;
  /* TLS scratch, used only within one call: ciphertext read by libuv on
   * its way into OpenSSL, and file plaintext on its way to encryption */
  char *tls_rbuf, *tls_plain;
  BIO_METHOD *sink_meth;
};

/* A client connection. Owns its buffers; embedded handles keep it alive
 * until their close callbacks (see the lifetime note on top). */
struct http_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_poll_t poll;              /* on dupfd, only while a sendfile is pending */
  uv_shutdown_t shutdown;
  struct http_server *srv;
  struct http_conn *prev, *next; /* srv->conns */
  struct http_conn *defer_next;
  uint64_t id;
  int listener_id;
  enum conn_state state;
  unsigned refs;
  unsigned handles_open;
  int err; /* why the connection went down, returned by late calls */
  char remote[64];
  struct sockaddr_storage remote_addr;

  unsigned deferred : 1, reading : 1, poll_init : 1, poll_active : 1;
  unsigned got_bytes : 1, peer_eof : 1, keep_alive : 1, notify_close : 1;

  /* input: unparsed bytes, at most max_header_bytes */
  char *in;
  size_t in_len, in_cap;
  size_t linger_bytes;

  /* the head being parsed */
  http_parser parser;
  char *arena;
  size_t arena_len, arena_cap;
  struct http_header *hdrs;
  size_t n_hdrs, hdr_cap;
  enum conn_item item;
  size_t url_off, url_len;
  const char *chunk;     /* start of the bytes given to http_parser_execute */
  size_t head_seen;      /* head bytes before chunk */
  size_t req_bytes;      /* bytes of this request consumed so far */
  uint64_t head_start_ms; /* when READ_HEAD was entered, for rejects */
  uint64_t body_seen;
  int reject_status;     /* set by a parser callback that fails */
  unsigned head_done : 1, method : 8;
  unsigned short http_major, http_minor;

  /* the request in service and its response */
  struct http_request req;
  /* proxy listeners: the CONNECT this TLS connection was opened by, and
   * an absolute-form request's authority (see http_request) */
  char proxy_host[256];
  char conn_user[64];
  unsigned proxy_port;
  char authority[264];
  unsigned has_req : 1, req_active : 1, resp_started : 1, resp_chunked : 1;
  unsigned resp_no_body : 1, close_notified : 1, broken : 1;
  unsigned resp_complete : 1; /* ended and flushed: else logged aborted=1 */
  int status;
  int64_t resp_len;
  uint64_t body_queued, body_sent;
  http_close_cb close_cb;
  void *close_ud;

  /* output */
  unsigned n_writes;      /* uv_writes not yet called back */
  unsigned n_dropped;     /* dropped writes not yet called back */
  struct conn_write *dropped_head, *dropped_tail;
  size_t mark_queue;      /* send-progress marks taken when the timer armed */
  uint64_t mark_sf, sf_progress;

  /* TLS: OpenSSL's output appends to sink_buf while a file piece is
   * encrypted into a copy buffer, else to tout (turned into a conn_write
   * as soon as the call that produced it returns) */
  SSL *ssl;
  BIO *rbio;
  char *tout;
  size_t tout_len, tout_cap;
  char *sink_buf;
  size_t sink_len, sink_cap;
  size_t cp_plain; /* plaintext bytes behind the ciphertext in cp_buf */
  unsigned tls_up : 1, tls_seen : 1, tls_failed : 1, cp_own : 1;

  /* file body (copied through a pool buffer, or sendfile) */
  int dupfd;
  int sf_fd;
  unsigned sf_pending : 1;
  uint64_t sf_off, sf_left; /* the file bytes not yet read or sent */
  char *cp_buf;             /* a pool buffer while it holds unsent bytes */
  size_t cp_pos, cp_len;    /* its unsent bytes are [cp_pos, cp_len) */
  http_write_cb sf_cb;
  void *sf_ud;

  /* A file read that would wait for the disk runs on libuv's pool instead
   * (file_read_*): while rd_busy the job owns cp_buf (copy), rd_plain (TLS)
   * and rd_fd, a dup of sf_fd, so the handler may close its fd meanwhile. */
  uv_work_t rd_work;
  unsigned rd_busy : 1;
  int rd_kind;
  int rd_fd;
  char *rd_dst;
  char *rd_plain;
  size_t rd_want;
  uint64_t rd_off;
  ssize_t rd_n;
  int rd_err;
  uint64_t ahead_end; /* sendfile: file bytes below this are in the page cache */
};

static void conn_set_state(struct http_conn *c, enum conn_state to);
static void conn_close(struct http_conn *c, int err);
static void conn_parse(struct http_conn *c);
static void conn_after_io(struct http_conn *c, int progressed);
static void conn_copy_release(struct http_conn *c);
static void conn_update_reading(struct http_conn *c);
static void server_maybe_done(struct http_server *srv);
static void server_on_idle(uv_idle_t *h);

static struct http_conn *conn_of(struct http_request *req) {
  return (struct http_conn *)((char *)req - offsetof(struct http_conn, req));
}

/* ---- references and deferred work ---- */

static void conn_ref(struct http_conn *c) { c->refs++; }

/* conn_buffers allocates a connection's input buffer, header arena and
 * header table when its first bytes arrive, not at accept: an idle or
 * never-speaking socket then costs a few hundred bytes, not ~35 KiB, so
 * thousands of them stay cheap. Returns 0 or UV_ENOMEM. */
static int conn_buffers(struct http_conn *c) {
  if (c->in)
    return 0;
  char *in = malloc(c->in_cap);
  char *arena = malloc(c->arena_cap);
  struct http_header *hdrs = calloc(c->hdr_cap, sizeof *hdrs);
  if (!in || !arena || !hdrs) {
    free(in);
    free(arena);
    free(hdrs);
    return UV_ENOMEM;
  }
  c->in = in;
  c->arena = arena;
  c->hdrs = hdrs;
  return 0;
}

static void conn_free(struct http_conn *c) {
  struct http_server *srv = c->srv;
  if (c->prev)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  while (c->dropped_head) {
    struct conn_write *w = c->dropped_head;
    c->dropped_head = w->next;
    free(w);
  }
  free(c->in);
  free(c->arena);
  free(c->hdrs);
  SSL_free(c->ssl); /* and its BIOs */
  free(c->tout);
  free(c->rd_plain);
  free(c);
  srv->n_conns--;
  server_maybe_done(srv);
}

static void conn_unref(struct http_conn *c) {
  if (--c->refs == 0)
    conn_free(c);
}

/* conn_defer queues c for the server's idle callback (conn_run_deferred). */
static void conn_defer(struct http_conn *c) {
  struct http_server *srv = c->srv;
  if (c->deferred)
    return;
  c->deferred = 1;
  conn_ref(c);
  c->defer_next = NULL;
  if (srv->defer_tail)
    srv->defer_tail->defer_next = c;
  else
    srv->defer_head = c;
  srv->defer_tail = c;
  uv_idle_start(&srv->idle, server_on_idle);
}

static int conn_io_idle(const struct http_conn *c) {
  return c->n_writes == 0 && c->n_dropped == 0 && !c->sf_pending;
}

static int conn_err(const struct http_conn *c) {
  return c->err ? c->err : UV_ECONNRESET;
}

/* ---- timers ---- */

static void conn_on_timer(uv_timer_t *t);

static void conn_timer_start(struct http_conn *c, uint64_t ms) {
  uv_timer_start(&c->timer, conn_on_timer, ms, 0);
}

static size_t conn_queue_size(struct http_conn *c) {
  return uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
}

/* The send timer runs only while bytes are pending; any progress (a write
 * finished, the kernel took part of a queued write, file bytes went out)
 * gives a fresh send_timeout_ms. So a stalled send is detected after
 * between one and two timeouts. */
static void conn_send_timer_update(struct http_conn *c, int progressed) {
  if (c->n_writes == 0 && !c->sf_pending) {
    uv_timer_stop(&c->timer);
    return;
  }
  if (progressed || !uv_is_active((uv_handle_t *)&c->timer)) {
    c->mark_queue = conn_queue_size(c);
    c->mark_sf = c->sf_progress;
    conn_timer_start(c, c->srv->limits.send_timeout_ms);
  }
}

/* ---- the state funnel ---- */

static void conn_on_handle_closed(uv_handle_t *h);
static void conn_on_poll_closed(uv_handle_t *h);

static void conn_set_state(struct http_conn *c, enum conn_state to) {
  enum conn_state from = c->state;
  if (from == to)
    return;
  /* a closing connection never comes back */
  if (from >= CONN_CLOSING && to < CONN_CLOSING)
    return;
  LOG_D("http conn=%" PRIu64 " %s -> %s", c->id, conn_state_str(from),
        conn_state_str(to));
  c->state = to;
  switch (to) {
  case CONN_NEW:
    break;
  case CONN_READ_HEAD:
    c->head_start_ms = uv_now(c->srv->loop);
    conn_timer_start(c, c->srv->limits.header_timeout_ms);
    break;
  case CONN_SERVICE:
    uv_timer_stop(&c->timer);
    break;
  case CONN_WRITING:
  case CONN_FLUSHING:
    conn_send_timer_update(c, 0);
    break;
  case CONN_IDLE:
    conn_timer_start(c, c->srv->limits.idle_timeout_ms);
    break;
  case CONN_LINGER:
    conn_timer_start(c, CONN_LINGER_MS);
    break;
  case CONN_CLOSING:
    c->reading = 0;
    uv_close((uv_handle_t *)&c->timer, conn_on_handle_closed);
    /* the poll watches a dup of the socket: stop it before the socket goes */
    if (c->poll_init)
      uv_close((uv_handle_t *)&c->poll, conn_on_poll_closed);
    c->poll_active = 0;
    uv_close((uv_handle_t *)&c->tcp, conn_on_handle_closed);
    break;
  case CONN_CLOSED:
    break;
  }
}

/* ---- access log ---- */

/* conn_escape copies s for the log: bytes outside printable ASCII, quotes
 * and backslashes become \xHH; truncated with "..." to fit. */
static void conn_escape(char *out, size_t cap, const char *s, size_t len) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)s[i];
    int plain = ch > 0x20 && ch < 0x7f && ch != '"' && ch != '\\';
    size_t need = plain ? 1 : 4;
    if (o + need + 4 >= cap) {
      memcpy(out + o, "...", 3);
      o += 3;
      break;
    }
    if (plain) {
      out[o++] = (char)ch;
    } else {
      out[o++] = '\\';
      out[o++] = 'x';
      out[o++] = hex[ch >> 4];
      out[o++] = hex[ch & 15];
    }
  }
  out[o] = '\0';
}

/* conn_retire logs the finished request and forgets it. Called once the
 * handler released it and the response is flushed or the connection died. */
static void conn_retire(struct http_conn *c) {
  struct http_request *r = &c->req;
  if (!c->has_req)
    return;
  c->has_req = 0;
  enum log_level lvl = r->log_quiet ? LOG_DEBUG : LOG_INFO;
  if (c->srv->limits.no_access_log || !log_enabled(lvl))
    return;
  char path[1024], query[512];
  const char *method = c->head_done ? http_method_str(c->method) : "-";
  if (r->path)
    conn_escape(path, sizeof path, r->path, r->path_len);
  else
    strcpy(path, "-");
  if (r->query)
    conn_escape(query, sizeof query, r->query, r->query_len);
  uint64_t now = uv_now(c->srv->loop);
  uint64_t ms = now > r->start_ms ? now - r->start_ms : 0;
  /* through the proxy listener: which registry it was for */
  char host[300] = "";
  if (c->proxy_host[0])
    snprintf(host, sizeof host, "%s:%u", c->proxy_host, c->proxy_port);
  else if (c->authority[0])
    conn_escape(host, sizeof host, c->authority, strlen(c->authority));
  if (log_get_format() == LOG_FORMAT_JSON) {
    struct log_field f[] = {
        {"id", NULL, (int64_t)r->id},
        {"remote", c->remote, 0},
        {"method", method, 0},
        {"path", path, 0},
        {"query", r->query ? query : "", 0},
        {"status", NULL, c->status},
        {"bytes", NULL, (int64_t)c->body_sent},
        {"ms", NULL, (int64_t)ms},
        {"src", r->log_source ? r->log_source : "-", 0},
        {"aborted", NULL, c->resp_complete ? 0 : 1},
        {"host", host, 0},
    };
    log_event(lvl, "access", f, sizeof f / sizeof f[0] - (host[0] ? 0 : 1));
    return;
  }
  /* a response cut short (client gone, handler abort, shutdown) must not
   * read as a plain success */
  log_msg(lvl,
        "access id=%" PRIu64 " remote=%s \"%s %s%s%s\" status=%d bytes=%" PRIu64
        " ms=%" PRIu64 " src=%s%s%s%s",
        r->id, c->remote, method, path, r->query ? "?" : "",
        r->query ? query : "", c->status, c->body_sent, ms,
        r->log_source ? r->log_source : "-", c->resp_complete ? "" : " aborted=1",
        host[0] ? " host=" : "", host);
}

/* ---- closing ---- */

static void conn_close(struct http_conn *c, int err) {
  if (c->state >= CONN_CLOSING)
    return;
  if (err && !c->err)
    c->err = err;
  conn_set_state(c, CONN_CLOSING);
}

static void conn_notify_close(struct http_conn *c) {
  if (!c->has_req || !c->req_active || !c->close_cb || c->close_notified)
    return;
  c->close_notified = 1;
  c->close_cb(&c->req, c->close_ud);
}

/* budget_slot: the counter of a listener with its own budget, or NULL. */
static unsigned *budget_slot(struct http_server *srv, int listener_id) {
  for (size_t i = 0; i < sizeof srv->budgeted / sizeof srv->budgeted[0]; i++)
    if (srv->budgeted[i].id == listener_id && srv->budgeted[i].id != INT32_MIN)
      return &srv->budgeted[i].open;
  return NULL;
}

static unsigned budgeted_open(const struct http_server *srv) {
  unsigned n = 0;
  for (size_t i = 0; i < sizeof srv->budgeted / sizeof srv->budgeted[0]; i++)
    n += srv->budgeted[i].open;
  return n;
}

/* conn_closed runs once every handle is closed: fail what is still pending,
 * tell the handler, drop the handles' reference. */
static void conn_closed(struct http_conn *c) {
  conn_set_state(c, CONN_CLOSED);
  c->srv->stats.connections_open--;
  unsigned *slot = budget_slot(c->srv, c->listener_id);
  if (slot && *slot)
    (*slot)--;
  conn_ref(c);
  conn_copy_release(c);
  if (c->sf_pending) {
    http_write_cb cb = c->sf_cb;
    void *ud = c->sf_ud;
    c->sf_pending = 0;
    c->sf_cb = NULL;
    if (cb)
      cb(&c->req, UV_ECANCELED, ud);
  }
  conn_notify_close(c);
  if (c->has_req && !c->req_active)
    conn_retire(c);
  conn_unref(c);
  conn_unref(c); /* the handles' reference */
}

static void conn_on_handle_closed(uv_handle_t *h) {
  struct http_conn *c = h->data;
  if (--c->handles_open == 0)
    conn_closed(c);
}

static void conn_on_poll_closed(uv_handle_t *h) {
  struct http_conn *c = h->data;
  /* only now is the dup no longer watched by the loop */
  if (c->dupfd >= 0)
    close(c->dupfd);
  c->dupfd = -1;
  conn_on_handle_closed(h);
}

/* ---- output ---- */

static void conn_on_write(uv_write_t *req, int status);

static struct conn_write *conn_write_new(struct http_conn *c, size_t len) {
  struct conn_write *w = malloc(sizeof *w + len);
  if (!w)
    return NULL;
  memset(w, 0, sizeof *w);
  w->conn = c;
  w->len = len;
  return w;
}

/* conn_write_send_raw queues w's bytes as they are; on failure w is freed
 * and no callback runs. */
static int conn_write_send_raw(struct http_conn *c, struct conn_write *w) {
  uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
  int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, conn_on_write);
  if (rc < 0) {
    free(w);
    return rc;
  }
  c->n_writes++;
  conn_send_timer_update(c, 0);
  return 0;
}

/* ---- TLS ---- */

/* The sink BIO: OpenSSL's output for this connection. */
static int tls_sink_write(BIO *b, const char *data, int len) {
  struct http_conn *c = BIO_get_data(b);
  size_t n = (size_t)len;
  BIO_clear_retry_flags(b);
  if (len <= 0)
    return 0;
  if (c->sink_buf) {
    if (n > c->sink_cap - c->sink_len)
      return -1; /* cannot happen with TLS_RECORD_ROOM; fails the write */
    memcpy(c->sink_buf + c->sink_len, data, n);
    c->sink_len += n;
    return len;
  }
  if (n > c->tout_cap - c->tout_len) {
    size_t cap = c->tout_cap ? c->tout_cap : 4096;
    while (cap - c->tout_len < n)
      cap *= 2;
    char *p = realloc(c->tout, cap);
    if (!p)
      return -1;
    c->tout = p;
    c->tout_cap = cap;
  }
  memcpy(c->tout + c->tout_len, data, n);
  c->tout_len += n;
  return len;
}

static long tls_sink_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)b;
  (void)num;
  (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static BIO_METHOD *tls_sink_method(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
                               "regmesh sink");
  if (m && (!BIO_meth_set_write(m, tls_sink_write) ||
            !BIO_meth_set_ctrl(m, tls_sink_ctrl))) {
    BIO_meth_free(m);
    m = NULL;
  }
  return m;
}

/* conn_tls_take moves OpenSSL's pending output into a new conn_write
 * (NULL when there is none or memory ran out; *err says which). A scratch
 * buffer that grew large for one response is given back. */
static struct conn_write *conn_tls_take(struct http_conn *c, int *err) {
  *err = 0;
  if (c->tout_len == 0)
    return NULL;
  struct conn_write *w = conn_write_new(c, c->tout_len);
  if (!w) {
    *err = UV_ENOMEM;
    return NULL;
  }
  memcpy(w->data, c->tout, c->tout_len);
  c->tout_len = 0;
  if (c->tout_cap > 64 * 1024) {
    free(c->tout);
    c->tout = NULL;
    c->tout_cap = 0;
  }
  return w;
}

/* conn_tls_flush queues handshake records, alerts and tickets. */
static int conn_tls_flush(struct http_conn *c) {
  int err;
  struct conn_write *w = conn_tls_take(c, &err);
  return w ? conn_write_send_raw(c, w) : err;
}

static void conn_tls_log_error(struct http_conn *c, const char *what) {
  char reason[200] = "connection closed";
  unsigned long e = ERR_get_error();
  if (e)
    ERR_error_string_n(e, reason, sizeof reason);
  ERR_clear_error();
  LOG_D("http conn=%" PRIu64 " remote=%s: TLS %s: %s", c->id, c->remote, what,
        reason);
}

/* conn_write_send queues w, encrypted on a TLS connection (the buffer that
 * goes out carries w's callback); on failure w is freed and no callback
 * runs. */
static int conn_write_send(struct http_conn *c, struct conn_write *w) {
  if (!c->ssl || w->len == 0)
    return conn_write_send_raw(c, w);
  ERR_clear_error();
  int n = SSL_write(c->ssl, w->data, (int)w->len);
  int err = 0;
  struct conn_write *cw = n > 0 ? conn_tls_take(c, &err) : NULL;
  if (!cw) {
    if (n <= 0) {
      conn_tls_log_error(c, "write");
      err = RM_ETLS;
    }
    free(w);
    return err ? err : RM_ETLS;
  }
  cw->cb = w->cb;
  cw->ud = w->ud;
  cw->body_len = w->body_len;
  free(w);
  return conn_write_send_raw(c, cw);
}

static int conn_write_copy(struct http_conn *c, const void *data, size_t len) {
  struct conn_write *w = conn_write_new(c, len);
  if (!w)
    return UV_ENOMEM;
  memcpy(w->data, data, len);
  return conn_write_send(c, w);
}

/* conn_write_drop accepts a write that sends nothing (HEAD, empty, no-body
 * status); its callback runs from the deferred list with status 0. */
static int conn_write_drop(struct http_conn *c, http_write_cb cb, void *ud) {
  if (!cb)
    return 0;
  struct conn_write *w = conn_write_new(c, 0);
  if (!w)
    return UV_ENOMEM;
  w->cb = cb;
  w->ud = ud;
  if (c->dropped_tail)
    c->dropped_tail->next = w;
  else
    c->dropped_head = w;
  c->dropped_tail = w;
  c->n_dropped++;
  conn_defer(c);
  return 0;
}

static void conn_write_done(struct http_conn *c, struct conn_write *w,
                            int status) {
  c->n_writes--;
  if (status == 0) {
    c->body_sent += w->body_len;
  } else {
    c->broken = 1;
    conn_close(c, status);
  }
  if (w->cb)
    w->cb(&c->req, status, w->ud);
  free(w);
  conn_after_io(c, status == 0);
}

static void conn_on_write(uv_write_t *req, int status) {
  struct conn_write *w = (struct conn_write *)req;
  conn_write_done(w->conn, w, status);
}

/* ---- sendfile ---- */

static void conn_on_poll(uv_poll_t *h, int status, int events);

static int conn_poll_init(struct http_conn *c) {
  uv_os_fd_t fd;
  int rc = uv_fileno((uv_handle_t *)&c->tcp, &fd);
  if (rc < 0)
    return rc;
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0)
    return -errno;
  rc = uv_poll_init(c->srv->loop, &c->poll, d);
  if (rc < 0) {
    close(d);
    return rc;
  }
  c->poll.data = c;
  c->dupfd = d;
  c->poll_init = 1;
  c->handles_open++;
  return 0;
}

/* server_copy_get hands out a pool buffer, or NULL when all are held. */
static char *server_copy_get(struct http_server *srv) {
  if (srv->n_copy_free > 0)
    return srv->copy_free[--srv->n_copy_free];
  if (srv->n_copy_alloc >= COPY_BUFS)
    return NULL;
  char *b = malloc(COPY_BUF_SIZE);
  if (b)
    srv->n_copy_alloc++;
  return b; /* out of memory: sendfile needs no buffer */
}

static void conn_copy_release(struct http_conn *c) {
  struct http_server *srv = c->srv;
  if (!c->cp_buf || c->rd_busy) /* a read job fills it: its end releases it */
    return;
  if (c->cp_own)
    free(c->cp_buf);
  else
    srv->copy_free[srv->n_copy_free++] = c->cp_buf;
  c->cp_buf = NULL;
  c->cp_own = 0;
  c->cp_pos = c->cp_len = c->cp_plain = 0;
}

static void conn_sendfile_done(struct http_conn *c, int status) {
  http_write_cb cb = c->sf_cb;
  void *ud = c->sf_ud;
  uv_poll_stop(&c->poll);
  c->poll_active = 0;
  c->sf_pending = 0;
  c->sf_cb = NULL;
  conn_copy_release(c);
  if (status == 0 && c->resp_chunked) {
    /* close the file's chunk; if the handler already ended the response,
     * the last-chunk marker it could not queue before the file goes too */
    int ended = c->state == CONN_FLUSHING;
    int rc = conn_write_copy(c, ended ? "\r\n0\r\n\r\n" : "\r\n",
                             ended ? 7 : 2);
    if (rc < 0)
      status = rc;
  }
  if (status < 0) {
    c->broken = 1;
    conn_close(c, status);
  }
  if (cb)
    cb(&c->req, status, ud);
  conn_after_io(c, status == 0);
}

/* conn_sent counts n bytes of a file body the socket took (ciphertext on
 * TLS, whose plaintext is counted once its whole buffer is out). */
static void conn_sent(struct http_conn *c, size_t n) {
  c->sf_progress += n;
  if (!c->ssl)
    c->body_sent += n;
  else if (c->cp_pos == c->cp_len)
    c->body_sent += c->cp_plain;
}

/* ---- file reads off the loop ----
 *
 * Each file read is first tried with preadv2(RWF_NOWAIT), which answers
 * from the page cache or says EAGAIN at once; only a read that would wait
 * for the disk goes to libuv's thread pool (file_read_start), and the
 * connection's poll is stopped until it is back. A sendfile from a cold
 * file is preceded the same way by a readahead(2) on the pool. So the loop
 * only ever copies from memory, and a download from a cold disk no longer
 * stalls every other client for each chunk (docs/decisions.md). */
#define RD_PENDING 1 /* a fill that handed its read to the pool */
enum { RD_COPY, RD_TLS, RD_AHEAD };

static void conn_sendfile_step(struct http_conn *c);
static int conn_sendfile_begin(struct http_conn *c);

static ssize_t read_nowait(int fd, void *buf, size_t n, uint64_t off) {
  struct iovec io = {buf, n};
  ssize_t r;
  do
    r = preadv2(fd, &io, 1, (off_t)off, RWF_NOWAIT);
  while (r < 0 && errno == EINTR);
  return r;
}

/* would_wait: the errno of a NOWAIT read that must go to the pool (EAGAIN:
 * not cached; EOPNOTSUPP: a file system that cannot tell). */
static int would_wait(int e) { return e == EAGAIN || e == EWOULDBLOCK || e == EOPNOTSUPP; }

static void file_read_work(uv_work_t *w) {
  struct http_conn *c = w->data;
  ssize_t n;
  if (c->rd_kind == RD_AHEAD) {
    n = readahead(c->rd_fd, (off64_t)c->rd_off, c->rd_want);
    c->rd_err = n < 0 ? -errno : 0;
    return;
  }
  do
    n = pread(c->rd_fd, c->rd_dst, c->rd_want, (off_t)c->rd_off);
  while (n < 0 && errno == EINTR);
  c->rd_n = n;
  c->rd_err = n < 0 ? -errno : 0;
}

static int conn_tls_encrypt(struct http_conn *c, const char *plain, size_t n);

static void file_read_done(uv_work_t *w, int status) {
  struct http_conn *c = w->data;
  close(c->rd_fd);
  c->rd_fd = -1;
  c->rd_busy = 0;
  c->srv->stats.file_reads_offloop++;
  int err = status < 0 ? status : c->rd_err;
  if (c->state >= CONN_CLOSING || !c->sf_pending) {
    conn_copy_release(c); /* gone meanwhile: the buffer goes back */
  } else if (err) {
    conn_sendfile_done(c, err);
  } else {
    if (c->rd_kind == RD_AHEAD) {
      c->ahead_end = c->rd_off + c->rd_want;
    } else if (c->rd_n == 0) {
      err = RM_ESIZE; /* the file is shorter than the promised range */
    } else if (c->rd_kind == RD_COPY) {
      c->cp_pos = 0;
      c->cp_len = (size_t)c->rd_n;
      c->sf_off += (uint64_t)c->rd_n;
      c->sf_left -= (uint64_t)c->rd_n;
    } else {
      err = conn_tls_encrypt(c, c->rd_plain, (size_t)c->rd_n);
    }
    if (err) {
      conn_sendfile_done(c, err);
    } else if (c->n_writes == 0) {
      int rc = conn_sendfile_begin(c);
      if (rc < 0)
        conn_sendfile_done(c, rc);
    }
  }
  free(c->rd_plain);
  c->rd_plain = NULL;
  conn_unref(c);
}

/* file_read_start hands the read of want bytes at sf_off (into dst; for
 * RD_AHEAD only into the page cache) to the pool. Returns RD_PENDING or a
 * negative error. */
static int file_read_start(struct http_conn *c, int kind, char *dst, size_t want) {
  int fd = fcntl(c->sf_fd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  c->rd_fd = fd;
  c->rd_kind = kind;
  c->rd_dst = dst;
  c->rd_want = want;
  c->rd_off = c->sf_off;
  c->rd_n = 0;
  c->rd_err = 0;
  c->rd_work.data = c;
  int rc = uv_queue_work(c->srv->loop, &c->rd_work, file_read_work, file_read_done);
  if (rc < 0) {
    close(fd);
    c->rd_fd = -1;
    return rc;
  }
  c->rd_busy = 1;
  conn_ref(c); /* the job's */
  if (c->poll_active) {
    uv_poll_stop(&c->poll);
    c->poll_active = 0;
  }
  return RD_PENDING;
}

/* conn_copy_fill reads the next file bytes into c->cp_buf (which is
 * empty): 0, RD_PENDING (the pool reads them), RM_ESIZE at the end of a
 * file shorter than promised, or a negative errno. */
static int conn_copy_fill(struct http_conn *c) {
  size_t want = c->sf_left < COPY_BUF_SIZE ? (size_t)c->sf_left : COPY_BUF_SIZE;
  ssize_t n = read_nowait(c->sf_fd, c->cp_buf, want, c->sf_off);
  if (n < 0 && would_wait(errno))
    return file_read_start(c, RD_COPY, c->cp_buf, want);
  if (n < 0)
    return -errno;
  if (n == 0)
    return RM_ESIZE;
  c->cp_pos = 0;
  c->cp_len = (size_t)n;
  c->sf_off += (uint64_t)n;
  c->sf_left -= (uint64_t)n;
  return 0;
}

/* conn_tls_encrypt encrypts n plaintext file bytes into c->cp_buf (which
 * is empty): 0 or RM_ETLS. */
static int conn_tls_encrypt(struct http_conn *c, const char *plain, size_t n) {
  struct http_server *srv = c->srv;
  c->sink_buf = c->cp_buf;
  c->sink_len = 0;
  c->sink_cap = c->cp_own ? TLS_OWN_BUF : COPY_BUF_SIZE;
  ERR_clear_error();
  int w = SSL_write(c->ssl, plain, (int)n);
  c->sink_buf = NULL;
  if (w != (int)n) {
    conn_tls_log_error(c, "file write");
    return RM_ETLS;
  }
  c->cp_pos = 0;
  c->cp_len = c->sink_len;
  c->cp_plain = n;
  c->sf_off += (uint64_t)n;
  c->sf_left -= (uint64_t)n;
  srv->stats.tls_file_bytes += (uint64_t)n;
  return 0;
}

/* conn_tls_fill reads the next file piece and encrypts it into c->cp_buf
 * (which is empty): 0, RD_PENDING, RM_ESIZE at the end of a file shorter
 * than promised, RM_ETLS, or a negative errno. */
static int conn_tls_fill(struct http_conn *c) {
  struct http_server *srv = c->srv;
  size_t room = c->cp_own ? TLS_OWN_PLAIN : TLS_PIECE;
  size_t want = c->sf_left < room ? (size_t)c->sf_left : room;
  if (!srv->tls_plain && !(srv->tls_plain = malloc(TLS_PIECE)))
    return UV_ENOMEM;
  ssize_t n = read_nowait(c->sf_fd, srv->tls_plain, want, c->sf_off);
  if (n < 0 && would_wait(errno)) {
    /* the job needs a plaintext buffer of its own: the shared one is the
     * loop's */
    if (!(c->rd_plain = malloc(want)))
      return UV_ENOMEM;
    int rc = file_read_start(c, RD_TLS, c->rd_plain, want);
    if (rc < 0) {
      free(c->rd_plain);
      c->rd_plain = NULL;
    }
    return rc;
  }
  if (n < 0)
    return -errno;
  if (n == 0)
    return RM_ESIZE;
  return conn_tls_encrypt(c, srv->tls_plain, (size_t)n);
}

/* conn_ahead_check: before a sendfile of want bytes at sf_off, whether
 * they are in the page cache (their first and last byte, NOWAIT); if not,
 * a readahead on the pool brings them: RD_PENDING. */
static int conn_ahead_check(struct http_conn *c, size_t want) {
  if (c->sf_off + want <= c->ahead_end)
    return 0;
  char b;
  ssize_t x = read_nowait(c->sf_fd, &b, 1, c->sf_off);
  ssize_t y = x == 1 ? read_nowait(c->sf_fd, &b, 1, c->sf_off + want - 1) : -1;
  if (x == 1 && y == 1) {
    c->ahead_end = c->sf_off + want;
    return 0;
  }
  if ((x < 0 && !would_wait(errno)) || x == 0)
    return 0; /* sendfile reports the error or the short file itself */
  return file_read_start(c, RD_AHEAD, NULL, want);
}

/* conn_sendfile_step pushes file bytes until the socket is full, the range
 * is done, or this callback's slice is used up. Bytes already copied into
 * the connection's buffer go first, so nothing overtakes them; then the next
 * piece is read into a pool buffer, or, when the pool is empty, sent with
 * sendfile (a body may switch between the two at any byte). */
static void conn_sendfile_step(struct http_conn *c) {
  size_t budget = CONN_SENDFILE_SLICE;
  int err = 0, progressed = 0;
  while (budget > 0) {
    ssize_t n;
    if (c->cp_pos < c->cp_len) {
      size_t want = c->cp_len - c->cp_pos;
      n = write(c->dupfd, c->cp_buf + c->cp_pos, want < budget ? want : budget);
      if (n > 0) {
        c->cp_pos += (size_t)n;
        conn_sent(c, (size_t)n);
        budget -= (size_t)n;
        progressed = 1;
        continue;
      }
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
        err = -errno;
      break; /* full: the poll calls again when there is room */
    }
    if (c->sf_left == 0)
      break;
    if (!c->cp_buf)
      c->cp_buf = server_copy_get(c->srv);
    if (!c->cp_buf && c->ssl) {
      /* no sendfile for TLS: a small buffer of its own instead */
      c->cp_buf = malloc(TLS_OWN_BUF);
      c->cp_own = c->cp_buf != NULL;
      if (!c->cp_buf) {
        err = UV_ENOMEM;
        break;
      }
    }
    if (c->cp_buf) {
      err = c->ssl ? conn_tls_fill(c) : conn_copy_fill(c);
      if (err == RD_PENDING)
        return; /* the job's end goes on from here */
      if (err)
        break;
      continue;
    }
    size_t want = c->sf_left < budget ? (size_t)c->sf_left : budget;
    err = conn_ahead_check(c, want);
    if (err == RD_PENDING)
      return;
    if (err)
      break;
    off_t off = (off_t)c->sf_off;
    n = sendfile(c->dupfd, c->sf_fd, &off, want);
    if (n > 0) {
      c->sf_off += (uint64_t)n;
      c->sf_left -= (uint64_t)n;
      conn_sent(c, (size_t)n);
      budget -= (size_t)n;
      progressed = 1;
      continue;
    }
    if (n == 0) {
      err = RM_ESIZE; /* the file is shorter than the promised range */
      break;
    }
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      err = -errno;
    break;
  }
  /* an emptied buffer goes back at once: only connections with copied
   * bytes waiting for room hold one */
  if (c->cp_buf && c->cp_pos == c->cp_len)
    conn_copy_release(c);
  if (err) {
    LOG_D("http conn=%" PRIu64 " file body: %s", c->id, rm_strerror(err));
    conn_sendfile_done(c, err);
    return;
  }
  if (c->sf_left == 0 && !c->cp_buf) {
    conn_sendfile_done(c, 0);
    return;
  }
  if (progressed)
    conn_send_timer_update(c, 1);
}

static void conn_on_poll(uv_poll_t *h, int status, int events) {
  struct http_conn *c = h->data;
  (void)events;
  if (status < 0) {
    conn_sendfile_done(c, status);
    return;
  }
  conn_sendfile_step(c);
}

/* conn_sendfile_begin watches for writability once the earlier writes are
 * out, so file bytes never overtake queued header or chunk bytes. */
static int conn_sendfile_begin(struct http_conn *c) {
  int rc = uv_poll_start(&c->poll, UV_WRITABLE, conn_on_poll);
  if (rc == 0)
    c->poll_active = 1;
  return rc;
}

/* ---- response lifecycle ---- */

static void conn_request_reset(struct http_conn *c) {
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  c->arena_len = 0;
  c->n_hdrs = 0;
  c->item = ITEM_NONE;
  c->url_off = c->url_len = 0;
  c->head_seen = c->req_bytes = 0;
  c->body_seen = 0;
  c->reject_status = 0;
  c->head_done = 0;
  c->method = 0;
  c->resp_started = c->resp_chunked = c->resp_no_body = c->resp_complete = 0;
  c->close_notified = 0;
  c->status = 0;
  c->resp_len = -1;
  c->body_queued = c->body_sent = 0;
  c->close_cb = NULL;
  c->close_ud = NULL;
  memset(&c->req, 0, sizeof c->req);
}

/* conn_linger ends a connection gracefully: FIN after the response, then
 * drop input until the client closes too (or the linger timer fires). */
static void conn_linger(struct http_conn *c) {
  if (c->peer_eof) {
    conn_close(c, 0);
    return;
  }
  conn_set_state(c, CONN_LINGER);
  c->in_len = 0;
  if (c->ssl && c->tls_up) {
    /* close_notify, so the client can tell our end from a cut */
    ERR_clear_error();
    SSL_shutdown(c->ssl);
    if (conn_tls_flush(c) < 0) {
      conn_close(c, UV_EPIPE);
      return;
    }
  }
  int rc = uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, NULL);
  if (rc < 0) {
    conn_close(c, rc);
    return;
  }
  conn_update_reading(c);
}

/* conn_finish: the response is ended and flushed. Log it, then keep the
 * connection for the next request or close it. */
static void conn_finish(struct http_conn *c) {
  c->resp_complete = 1;
  conn_retire(c);
  if (!c->keep_alive || c->broken || c->srv->closing || c->srv->draining) {
    conn_linger(c);
    return;
  }
  conn_request_reset(c);
  if (c->in_len > 0) {
    /* a pipelined request is waiting; parse it outside this call chain */
    conn_set_state(c, CONN_READ_HEAD);
    conn_defer(c);
  } else {
    conn_set_state(c, CONN_IDLE);
  }
  conn_update_reading(c);
}

/* conn_after_io runs after any write or sendfile completion. */
static void conn_after_io(struct http_conn *c, int progressed) {
  if (c->state != CONN_WRITING && c->state != CONN_FLUSHING)
    return;
  if (c->sf_pending && c->n_writes == 0 && !c->poll_active && !c->rd_busy) {
    int rc = conn_sendfile_begin(c);
    if (rc < 0)
      conn_sendfile_done(c, rc);
  }
  if (c->state != CONN_WRITING && c->state != CONN_FLUSHING)
    return;
  conn_send_timer_update(c, progressed);
  if (c->state == CONN_FLUSHING && conn_io_idle(c))
    conn_finish(c);
}

static void conn_tls_input(struct http_conn *c);

static void conn_run_deferred(struct http_conn *c) {
  while (c->dropped_head) {
    struct conn_write *w = c->dropped_head;
    c->dropped_head = w->next;
    if (!c->dropped_head)
      c->dropped_tail = NULL;
    c->n_dropped--;
    if (w->cb)
      w->cb(&c->req, 0, w->ud);
    free(w);
  }
  if (c->notify_close) {
    c->notify_close = 0;
    conn_notify_close(c);
  }
  conn_after_io(c, 0);
  if (c->state == CONN_READ_HEAD && c->in_len > 0)
    conn_parse(c);
  if (c->ssl)
    conn_tls_input(c);
}

static const char *server_date(struct http_server *srv) {
  static const char *days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char *months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  time_t now = time(NULL);
  if (now != srv->date_sec) {
    struct tm tm;
    gmtime_r(&now, &tm);
    snprintf(srv->date, sizeof srv->date, "%s, %02d %s %04d %02d:%02d:%02d GMT",
             days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
             tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    srv->date_sec = now;
  }
  return srv->date;
}

static const char *conn_reason(int status) {
  const char *s = http_status_str((enum http_status)status);
  return (s && s[0] != '<') ? s : "Unknown";
}

/* conn_reject answers a request the handler never sees (400, 408, 413, 431)
 * and closes after it. */
static void conn_reject(struct http_conn *c, int status) {
  struct http_server *srv = c->srv;
  char buf[512];
  const char *reason = conn_reason(status);
  if (status == 408)
    srv->stats.timeouts++;
  else
    srv->stats.bad_requests++;
  c->has_req = 1;
  c->req_active = 0;
  c->req.id = ++srv->next_req_id;
  c->req.start_ms = c->head_start_ms;
  c->req.log_source = "server";
  if (c->head_done && c->url_len) {
    c->req.path = c->arena + c->url_off;
    c->req.path_len = c->url_len;
  }
  c->status = status;
  c->keep_alive = 0;
  c->in_len = 0;
  int body = (int)strlen(reason) + 1;
  int n = snprintf(buf, sizeof buf,
                   "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
                   "Content-Length: %d\r\nConnection: close\r\nDate: %s\r\n\r\n"
                   "%s\n",
                   status, reason, body, server_date(srv), reason);
  struct conn_write *w = conn_write_new(c, (size_t)n);
  if (!w) {
    conn_close(c, UV_ENOMEM);
    return;
  }
  memcpy(w->data, buf, (size_t)n);
  w->body_len = (uint64_t)body;
  conn_set_state(c, CONN_FLUSHING);
  int rc = conn_write_send(c, w);
  if (rc < 0)
    conn_close(c, rc);
}

static void conn_tls_reject(struct http_conn *c) {
  static const char msg[] =
      "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n"
      "Connection: close\r\n\r\n"
      "Client sent a TLS handshake to a plain HTTP port.\n";
  c->srv->stats.tls_rejected++;
  LOG_D("http conn=%" PRIu64 " remote=%s: TLS handshake on a plain port",
        c->id, c->remote);
  c->keep_alive = 0;
  c->in_len = 0;
  conn_set_state(c, CONN_FLUSHING);
  int rc = conn_write_copy(c, msg, sizeof msg - 1);
  if (rc < 0)
    conn_close(c, rc);
}

/* ---- request head parsing ---- */

static struct http_conn *conn_of_parser(http_parser *p) { return p->data; }

static int conn_fail(struct http_conn *c, int status) {
  if (!c->reject_status)
    c->reject_status = status;
  return -1;
}

/* conn_head_check: the head so far ends at `end` inside the current chunk. */
static int conn_head_check(struct http_conn *c, const char *end) {
  size_t seen = c->head_seen + (size_t)(end - c->chunk);
  if (seen > c->srv->limits.max_header_bytes)
    return conn_fail(c, 431);
  return 0;
}

/* conn_arena_put appends to the current item, keeping room for its NUL. */
static int conn_arena_put(struct http_conn *c, const char *at, size_t len) {
  if (c->arena_len + len + 1 > c->arena_cap)
    return conn_fail(c, 431);
  memcpy(c->arena + c->arena_len, at, len);
  c->arena_len += len;
  return 0;
}

/* conn_item_end NUL-terminates the item being collected and records its
 * length; the arena never moves, so the pointers stay valid. */
static int conn_item_end(struct http_conn *c, size_t start) {
  if (c->item == ITEM_NONE)
    return 0;
  if (c->arena_len + 1 > c->arena_cap)
    return conn_fail(c, 431);
  size_t len = c->arena_len - start;
  c->arena[c->arena_len++] = '\0';
  switch (c->item) {
  case ITEM_URL:
    c->url_len = len;
    break;
  case ITEM_NAME:
    c->hdrs[c->n_hdrs - 1].name_len = len;
    break;
  case ITEM_VALUE:
    c->hdrs[c->n_hdrs - 1].value_len = len;
    break;
  case ITEM_NONE:
    break;
  }
  c->item = ITEM_NONE;
  return 0;
}

static size_t conn_item_start(struct http_conn *c) {
  switch (c->item) {
  case ITEM_URL:
    return c->url_off;
  case ITEM_NAME:
    return (size_t)(c->hdrs[c->n_hdrs - 1].name - c->arena);
  case ITEM_VALUE:
    return (size_t)(c->hdrs[c->n_hdrs - 1].value - c->arena);
  case ITEM_NONE:
    break;
  }
  return c->arena_len;
}

static int conn_on_url(http_parser *p, const char *at, size_t len) {
  struct http_conn *c = conn_of_parser(p);
  if (conn_head_check(c, at + len))
    return -1;
  if (c->item != ITEM_URL) {
    c->item = ITEM_URL;
    c->url_off = c->arena_len;
  }
  return conn_arena_put(c, at, len);
}

static int conn_on_header_field(http_parser *p, const char *at, size_t len) {
  struct http_conn *c = conn_of_parser(p);
  if (conn_head_check(c, at + len))
    return -1;
  if (c->item != ITEM_NAME) {
    if (conn_item_end(c, conn_item_start(c)))
      return -1;
    if (c->n_hdrs == c->hdr_cap)
      return conn_fail(c, 431);
    struct http_header *h = &c->hdrs[c->n_hdrs++];
    h->name = c->arena + c->arena_len;
    h->name_len = 0;
    h->value = "";
    h->value_len = 0;
    c->item = ITEM_NAME;
  }
  return conn_arena_put(c, at, len);
}

static int conn_on_header_value(http_parser *p, const char *at, size_t len) {
  struct http_conn *c = conn_of_parser(p);
  if (conn_head_check(c, at + len))
    return -1;
  if (c->item != ITEM_VALUE) {
    if (c->item != ITEM_NAME)
      return conn_fail(c, 400);
    if (conn_item_end(c, conn_item_start(c)))
      return -1;
    c->hdrs[c->n_hdrs - 1].value = c->arena + c->arena_len;
    c->item = ITEM_VALUE;
  }
  return conn_arena_put(c, at, len);
}

static int name_is(const struct http_header *h, const char *name) {
  size_t n = strlen(name);
  return h->name_len == n && strncasecmp(h->name, name, n) == 0;
}

/* conn_head_strict holds a complete head to RFC 9112 where http_parser is
 * lenient: no whitespace between a field name and its colon (a front proxy
 * may read "Content-Length : 5" otherwise: request smuggling), HTTP/1.x
 * only, one Host (required on 1.1). Returns 0 or the status to refuse with. */
static int conn_head_strict(struct http_conn *c, const http_parser *p) {
  if (p->http_major == 0)
    return 400; /* no HTTP-version in the request line */
  if (p->http_major != 1)
    return 505;
  unsigned hosts = 0;
  for (unsigned i = 0; i < c->n_hdrs; i++) {
    const struct http_header *h = &c->hdrs[i];
    if (h->name_len == 0 || memchr(h->name, ' ', h->name_len) ||
        memchr(h->name, '\t', h->name_len))
      return 400;
    hosts += name_is(h, "Host");
  }
  if (hosts > 1 || (hosts == 0 && p->http_minor >= 1))
    return 400;
  return 0;
}

/* conn_expect answers Expect: 100-continue for a request with a body (so
 * a client waiting for it sends the body) and refuses any other
 * expectation with 417 (RFC 9110 10.1.1). Returns 0 or a status. */
static int conn_expect(struct http_conn *c, const http_parser *p) {
  int cont = 0;
  for (unsigned i = 0; i < c->n_hdrs; i++) {
    const struct http_header *h = &c->hdrs[i];
    if (!name_is(h, "Expect"))
      continue;
    const char *v = h->value;
    size_t n = h->value_len;
    while (n && (*v == ' ' || *v == '\t'))
      v++, n--;
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
      n--;
    if (n != 12 || strncasecmp(v, "100-continue", 12) != 0)
      return 417;
    cont = 1;
  }
  int body = (p->flags & F_CHUNKED) || (p->content_length != ULLONG_MAX && p->content_length > 0);
  if (cont && body && p->http_minor >= 1) {
    static const char line[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (conn_write_copy(c, line, sizeof line - 1) != 0)
      return 503;
  }
  return 0;
}

static int conn_on_headers_complete(http_parser *p) {
  struct http_conn *c = conn_of_parser(p);
  if (conn_item_end(c, conn_item_start(c)))
    return -1;
  c->head_done = 1;
  c->method = p->method;
  c->http_major = p->http_major;
  c->http_minor = p->http_minor;
  c->keep_alive = http_should_keep_alive(p) ? 1 : 0;
  int bad = conn_head_strict(c, p);
  if (bad)
    return conn_fail(c, bad);
  if (!(p->flags & F_CHUNKED) && p->content_length != ULLONG_MAX &&
      p->content_length > CONN_BODY_CAP)
    return conn_fail(c, 413);
  if ((bad = conn_expect(c, p)) != 0)
    return conn_fail(c, bad);
  return 0;
}

static int conn_on_body(http_parser *p, const char *at, size_t len) {
  struct http_conn *c = conn_of_parser(p);
  (void)at;
  c->body_seen += len;
  if (c->body_seen > CONN_BODY_CAP)
    return conn_fail(c, 413);
  return 0;
}

static int conn_on_message_complete(http_parser *p) {
  /* stop right after this request; the rest stays buffered */
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings conn_parser_settings = {
    .on_url = conn_on_url,
    .on_header_field = conn_on_header_field,
    .on_header_value = conn_on_header_value,
    .on_headers_complete = conn_on_headers_complete,
    .on_body = conn_on_body,
    .on_message_complete = conn_on_message_complete,
};

static void conn_consume(struct http_conn *c, size_t n) {
  if (n >= c->in_len) {
    c->in_len = 0;
    return;
  }
  memmove(c->in, c->in + n, c->in_len - n);
  c->in_len -= n;
}

/* conn_split_url turns the raw request target into path and query, in
 * place. Origin-form is taken as is; absolute-form only when a '/' path
 * follows the authority. Returns 0 or -1 (400). */
static int conn_split_url(struct http_conn *c) {
  char *u = c->arena + c->url_off;
  char *end = u + c->url_len;
  char *path = NULL;
  struct http_request *r = &c->req;
  c->authority[0] = '\0';
  if (c->method == HTTP_CONNECT) {
    /* authority-form: the handler parses "host:port" (proxy_parse_target) */
    if (c->url_len == 0 || memchr(u, '/', c->url_len))
      return -1;
    r->path = u;
    r->path_len = c->url_len;
    r->query = NULL;
    r->query_len = 0;
    return 0;
  }
  if (c->url_len > 0 && u[0] == '/') {
    path = u;
  } else {
    char *s = u;
    while (s < end && ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')))
      s++;
    if (s == u || end - s < 3 || memcmp(s, "://", 3) != 0)
      return -1;
    char *auth = s + 3;
    for (s += 3; s < end && *s != '/'; s++)
      if (*s == '?' || *s == '#')
        return -1;
    if (s == end || (size_t)(s - auth) >= sizeof c->authority)
      return -1;
    memcpy(c->authority, auth, (size_t)(s - auth));
    c->authority[s - auth] = '\0';
    path = s;
  }
  char *hash = memchr(path, '#', (size_t)(end - path));
  if (hash) {
    *hash = '\0';
    end = hash;
  }
  char *q = memchr(path, '?', (size_t)(end - path));
  r->path = path;
  if (q) {
    *q = '\0';
    r->path_len = (size_t)(q - path);
    r->query = q + 1;
    r->query_len = (size_t)(end - (q + 1));
  } else {
    r->path_len = (size_t)(end - path);
    r->query = NULL;
    r->query_len = 0;
  }
  return 0;
}

/* conn_dispatch hands a complete request to the handler. */
static void conn_dispatch(struct http_conn *c) {
  struct http_server *srv = c->srv;
  struct http_request *r = &c->req;
  if (conn_split_url(c) < 0) {
    LOG_D("http conn=%" PRIu64 " bad request target", c->id);
    conn_reject(c, 400);
    return;
  }
  r->method = c->method;
  r->headers = c->hdrs;
  r->n_headers = c->n_hdrs;
  r->listener_id = c->listener_id;
  memcpy(r->remote, c->remote, sizeof r->remote);
  r->remote_addr = c->remote_addr;
  r->tls = c->ssl != NULL;
  r->start_ms = uv_now(srv->loop);
  r->id = ++srv->next_req_id;
  r->log_source = NULL;
  r->handler_data = NULL;
  r->proxy_host = c->proxy_host;
  r->proxy_port = c->proxy_port;
  r->conn_user = c->conn_user;
  r->authority = c->authority;
  if (srv->closing)
    c->keep_alive = 0;
  c->has_req = 1;
  c->req_active = 1;
  c->resp_len = -1;
  srv->stats.requests_total++;
  conn_set_state(c, CONN_SERVICE);
  conn_ref(c); /* the handler's reference, dropped by end or abort */
  srv->handler(r, srv->ud);
}

/* conn_parse feeds buffered input to the parser while a head is wanted. */
static void conn_parse(struct http_conn *c) {
  if (c->state != CONN_READ_HEAD || c->in_len == 0)
    return;
  c->chunk = c->in;
  size_t n = http_parser_execute(&c->parser, &conn_parser_settings, c->in,
                                 c->in_len);
  enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
  if (e == HPE_OK && n != c->in_len)
    e = HPE_UNKNOWN;
  c->req_bytes += n;
  if (!c->head_done)
    c->head_seen += n;
  conn_consume(c, n);
  if (e == HPE_OK) {
    if (!c->head_done && c->head_seen > c->srv->limits.max_header_bytes)
      conn_reject(c, 431);
    else
      conn_update_reading(c);
    return;
  }
  if (e == HPE_PAUSED) {
    conn_dispatch(c);
    conn_update_reading(c);
    return;
  }
  int status = c->reject_status ? c->reject_status : 400;
  if (e == HPE_HEADER_OVERFLOW)
    status = 431;
  LOG_D("http conn=%" PRIu64 " remote=%s: %s -> %d", c->id, c->remote,
        http_errno_name(e), status);
  conn_reject(c, status);
}

/* ---- input ---- */

static void conn_on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  struct http_conn *c = h->data;
  (void)hint;
  if (c->ssl) {
    /* consumed by conn_on_read before the next alloc: one buffer for all */
    buf->base = c->srv->tls_rbuf;
    buf->len = TLS_READ_BUF;
    return;
  }
  if (conn_buffers(c) != 0) {
    buf->base = NULL; /* libuv reports UV_ENOBUFS: the connection closes */
    buf->len = 0;
    return;
  }
  if (c->state == CONN_LINGER || (c->state == CONN_FLUSHING && !c->keep_alive))
    c->in_len = 0; /* input is thrown away from here on */
  buf->base = c->in + c->in_len;
  buf->len = c->in_cap - c->in_len;
}

static void conn_input_end(struct http_conn *c, int err) {
  if (err == UV_EOF) {
    c->peer_eof = 1;
    /* a client that half-closes after its request still gets the reply
     * that is already on its way */
    if (c->state == CONN_FLUSHING) {
      c->keep_alive = 0;
      conn_update_reading(c);
      return;
    }
    if (c->state == CONN_SERVICE || c->state == CONN_WRITING)
      LOG_D("http conn=%" PRIu64 " client hung up", c->id);
    conn_close(c, UV_EPIPE);
    return;
  }
  LOG_D("http conn=%" PRIu64 " read: %s", c->id, uv_strerror(err));
  conn_close(c, err);
}

static void conn_input(struct http_conn *c, ssize_t nread) {
  if (nread == UV_ENOBUFS) {
    conn_update_reading(c);
    return;
  }
  if (nread < 0) {
    conn_input_end(c, (int)nread);
    return;
  }
  if (!c->got_bytes) {
    c->got_bytes = 1;
    if ((unsigned char)c->in[c->in_len] == 0x16) {
      conn_tls_reject(c);
      return;
    }
  }
  switch (c->state) {
  case CONN_LINGER:
    c->linger_bytes += (size_t)nread;
    c->in_len = 0;
    if (c->linger_bytes > CONN_LINGER_MAX_BYTES)
      conn_close(c, 0);
    return;
  case CONN_IDLE:
    c->in_len += (size_t)nread;
    conn_set_state(c, CONN_READ_HEAD);
    conn_parse(c);
    return;
  case CONN_READ_HEAD:
    c->in_len += (size_t)nread;
    conn_parse(c);
    return;
  case CONN_FLUSHING:
    if (!c->keep_alive) {
      c->in_len = 0;
      return;
    }
    /* fall through */
  default:
    c->in_len += (size_t)nread;
    conn_update_reading(c);
    return;
  }
}

/* conn_tls_plain_reject: a plain HTTP request on a TLS port gets a plain
 * 400 saying so (as Go and nginx do), not a handshake failure. */
static void conn_tls_plain_reject(struct http_conn *c) {
  static const char msg[] =
      "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n"
      "Connection: close\r\n\r\n"
      "Client sent an HTTP request to an HTTPS server.\n";
  c->srv->stats.tls_handshake_errors++;
  LOG_D("http conn=%" PRIu64 " remote=%s: plain HTTP on a TLS port", c->id,
        c->remote);
  c->keep_alive = 0;
  c->in_len = 0;
  SSL_free(c->ssl); /* nothing of TLS goes out on this connection */
  c->ssl = NULL;
  c->rbio = NULL;
  conn_set_state(c, CONN_FLUSHING);
  int rc = conn_write_copy(c, msg, sizeof msg - 1);
  if (rc < 0)
    conn_close(c, rc);
}

/* conn_tls_input runs the handshake and decrypts buffered ciphertext into
 * the input buffer while there is room; input waits while a file body is
 * being sent, so no record OpenSSL writes (a key update) can overtake the
 * file's records. */
static void conn_tls_input(struct http_conn *c) {
  struct http_server *srv = c->srv;
  if (!c->ssl || c->state >= CONN_CLOSING)
    return;
  if (c->tls_failed) {
    /* the alert is on its way out; later bytes are noise, not a second
     * failed handshake */
    (void)BIO_reset(c->rbio);
    c->in_len = 0;
    return;
  }
  if (!c->tls_up) {
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    int rc = conn_tls_flush(c);
    if (r != 1) {
      int e = SSL_get_error(c->ssl, r);
      if (e == SSL_ERROR_WANT_READ && rc == 0)
        return;
      srv->stats.tls_handshake_errors++;
      c->tls_failed = 1;
      conn_tls_log_error(c, "handshake");
      /* the alert, if any, is queued: let it go before closing */
      if (rc == 0 && c->n_writes > 0) {
        c->keep_alive = 0;
        c->in_len = 0;
        conn_set_state(c, CONN_FLUSHING);
        c->broken = 1;
      } else {
        conn_close(c, RM_ETLS);
      }
      return;
    }
    c->tls_up = 1;
    srv->stats.tls_handshakes++;
  }
  while (c->state < CONN_CLOSING && !c->sf_pending) {
    if (c->state == CONN_LINGER ||
        (c->state == CONN_FLUSHING && !c->keep_alive))
      c->in_len = 0; /* thrown away from here on */
    if (conn_buffers(c) != 0) {
      conn_close(c, UV_ENOMEM);
      return;
    }
    if (c->in_len >= c->in_cap)
      break;
    ERR_clear_error();
    int n = SSL_read(c->ssl, c->in + c->in_len, (int)(c->in_cap - c->in_len));
    if (n > 0) {
      conn_input(c, n);
      continue;
    }
    int e = SSL_get_error(c->ssl, n);
    if (e == SSL_ERROR_WANT_READ)
      break;
    if (e == SSL_ERROR_ZERO_RETURN) {
      conn_tls_flush(c);
      conn_input(c, UV_EOF);
      return;
    }
    conn_tls_log_error(c, "read");
    conn_close(c, RM_ETLS);
    return;
  }
  if (c->state < CONN_CLOSING && conn_tls_flush(c) < 0)
    conn_close(c, UV_ENOMEM);
}

/* conn_tls_feed hands ciphertext to OpenSSL; 0, or -1 when the
 * connection was answered or closed instead. */
static int conn_tls_feed(struct http_conn *c, const char *data, size_t n) {
  if (!c->tls_seen) {
    c->tls_seen = 1;
    if ((unsigned char)data[0] != 0x16) {
      conn_tls_plain_reject(c);
      return -1;
    }
  }
  if (n > INT_MAX || BIO_write(c->rbio, data, (int)n) != (int)n) {
    conn_close(c, UV_ENOMEM);
    return -1;
  }
  return 0;
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct http_conn *c = s->data;
  if (nread == 0)
    return;
  if (c->ssl && nread > 0) {
    if (conn_tls_feed(c, buf->base, (size_t)nread) == 0)
      conn_tls_input(c);
    return;
  }
  conn_input(c, nread);
}

/* conn_update_reading reads whenever there is room for input, so a
 * hang-up is noticed even while a response is in progress; a full buffer
 * of pipelined bytes pauses reading until the parser drains it. */
static void conn_update_reading(struct http_conn *c) {
  int want = c->state < CONN_CLOSING && c->state != CONN_NEW &&
             !c->peer_eof && c->in_len < c->in_cap;
  if (c->ssl && want) {
    if (c->sf_pending)
      want = 0; /* see conn_tls_input */
    else if (BIO_ctrl_pending(c->rbio) > 0 || SSL_pending(c->ssl) > 0)
      conn_defer(c); /* decrypt what is buffered, outside this call chain */
  }
  if (want && !c->reading) {
    int rc = uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read);
    if (rc < 0) {
      conn_close(c, rc);
      return;
    }
    c->reading = 1;
  } else if (!want && c->reading && c->state < CONN_CLOSING) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
}

/* ---- timeouts ---- */

static void conn_timeout(struct http_conn *c) {
  switch (c->state) {
  case CONN_READ_HEAD:
    LOG_D("http conn=%" PRIu64 " remote=%s: head timeout", c->id, c->remote);
    if (c->req_bytes > 0 || c->in_len > 0) {
      conn_reject(c, 408);
    } else {
      c->srv->stats.timeouts++;
      conn_close(c, UV_ETIMEDOUT);
    }
    return;
  case CONN_IDLE:
  case CONN_LINGER:
    conn_close(c, 0);
    return;
  case CONN_WRITING:
  case CONN_FLUSHING:
    if (c->n_writes == 0 && !c->sf_pending)
      return;
    if (conn_queue_size(c) != c->mark_queue || c->sf_progress != c->mark_sf) {
      conn_send_timer_update(c, 1);
      return;
    }
    c->srv->stats.timeouts++;
    LOG_I("http conn=%" PRIu64 " remote=%s: send timeout, closing", c->id,
          c->remote);
    c->broken = 1;
    conn_close(c, UV_ETIMEDOUT);
    return;
  default:
    return;
  }
}

static void conn_on_timer(uv_timer_t *t) {
  struct http_conn *c = t->data;
  conn_timeout(c);
}

/* ---- accepting ---- */

static void conn_on_refused_closed(uv_handle_t *h) { free(h); }

/* server_refuse accepts a connection over the limit and closes it at once,
 * so it does not wait in the backlog. */
static void server_refuse(struct http_server *srv, uv_stream_t *ls) {
  uv_tcp_t *t = malloc(sizeof *t);
  if (!t)
    return;
  if (uv_tcp_init(srv->loop, t) < 0) {
    free(t);
    return;
  }
  uv_accept(ls, (uv_stream_t *)t);
  uv_close((uv_handle_t *)t, conn_on_refused_closed);
  uint64_t now = uv_now(srv->loop);
  if (now - srv->refuse_log_ms >= 1000 || srv->refuse_log_ms == 0) {
    srv->refuse_log_ms = now ? now : 1;
    LOG_W("http: %" PRIu64 " connections open, refusing new ones",
          srv->stats.connections_open);
  }
}

static void conn_remote_name(struct http_conn *c) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char ip[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  strcpy(c->remote, "?");
  memset(&c->remote_addr, 0, sizeof c->remote_addr);
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) < 0)
    return;
  c->remote_addr = ss;
  if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    uv_ip6_name(a, ip, sizeof ip);
    port = ntohs(a->sin6_port);
    snprintf(c->remote, sizeof c->remote, "[%s]:%d", ip, port);
  } else if (ss.ss_family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    uv_ip4_name(a, ip, sizeof ip);
    port = ntohs(a->sin_port);
    snprintf(c->remote, sizeof c->remote, "%s:%d", ip, port);
  }
}

/* conn_tls_init gives c its TLS session on ctx, server side. */
static int conn_tls_init(struct http_conn *c, SSL_CTX *ctx) {
  struct http_server *srv = c->srv;
  if (!ctx)
    return RM_ETLS;
  if (!srv->tls_rbuf && !(srv->tls_rbuf = malloc(TLS_READ_BUF)))
    return UV_ENOMEM;
  if (!srv->sink_meth && !(srv->sink_meth = tls_sink_method()))
    return UV_ENOMEM;
  SSL *ssl = SSL_new(ctx);
  BIO *rb = BIO_new(BIO_s_mem());
  BIO *wb = BIO_new(srv->sink_meth);
  if (!ssl || !rb || !wb) {
    SSL_free(ssl);
    BIO_free(rb);
    BIO_free(wb);
    return UV_ENOMEM;
  }
  BIO_set_data(wb, c);
  BIO_set_init(wb, 1);
  /* an empty memory BIO says "retry", not EOF */
  BIO_set_mem_eof_return(rb, -1);
  SSL_set_bio(ssl, rb, wb);
  SSL_set_accept_state(ssl);
  c->ssl = ssl;
  c->rbio = rb;
  c->got_bytes = 1; /* no plain-port TLS sniffing */
  return 0;
}

/* conn_new makes a connection of listener_id with its buffers and handles
 * (the socket still unconnected), counted against the budget `slot` when
 * it has one. NULL when out of memory. */
static struct http_conn *conn_new(struct http_server *srv, int listener_id, unsigned *slot) {
  struct http_conn *c = calloc(1, sizeof *c);
  if (c) {
    c->in_cap = srv->limits.max_header_bytes;
    c->arena_cap = srv->limits.max_header_bytes + 1;
    c->hdr_cap = srv->limits.max_headers;
  }
  if (!c || uv_tcp_init(srv->loop, &c->tcp)) {
    free(c);
    return NULL;
  }
  uv_timer_init(srv->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->shutdown.data = c;
  c->srv = srv;
  c->dupfd = -1;
  c->sf_fd = -1;
  c->rd_fd = -1;
  c->listener_id = listener_id;
  c->handles_open = 2;
  c->refs = 1; /* the handles' reference */
  c->id = ++srv->next_conn_id;
  c->state = CONN_NEW;
  c->next = srv->conns;
  if (srv->conns)
    srv->conns->prev = c;
  srv->conns = c;
  srv->n_conns++;
  srv->stats.connections_open++;
  srv->stats.connections_total++;
  if (slot)
    (*slot)++;
  conn_request_reset(c);
  return c;
}

/* conn_begin starts reading a connected c (TLS first when ctx is set). */
static void conn_begin(struct http_conn *c, SSL_CTX *ctx) {
  int rc;
  uv_tcp_nodelay(&c->tcp, 1);
  conn_remote_name(c);
  if (ctx && (rc = conn_tls_init(c, ctx)) < 0) {
    LOG_W("http: TLS for a connection from %s: %s", c->remote, rm_strerror(rc));
    conn_close(c, rc);
    return;
  }
  LOG_D("http conn=%" PRIu64 " from %s on listener %d", c->id, c->remote, c->listener_id);
  conn_set_state(c, CONN_READ_HEAD);
  conn_update_reading(c);
}

static void server_accept(struct http_listener *l) {
  struct http_server *srv = l->srv;
  uv_stream_t *ls = (uv_stream_t *)&l->tcp;
  unsigned *slot = l->budget ? budget_slot(srv, l->id) : NULL;
  int full = slot ? *slot >= l->budget
                  : srv->stats.connections_open - budgeted_open(srv) >=
                        srv->limits.max_connections;
  struct http_conn *c = srv->closing || full ? NULL : conn_new(srv, l->id, slot);
  if (!c) {
    server_refuse(srv, ls);
    return;
  }
  int rc = uv_accept(ls, (uv_stream_t *)&c->tcp);
  if (rc < 0) {
    LOG_D("http: accept: %s", uv_strerror(rc));
    conn_close(c, rc);
    return;
  }
  conn_begin(c, l->tls_ctx ? *l->tls_ctx : NULL);
}

int http_server_adopt(struct http_server *srv, int fd, int listener_id) {
  if (srv->closing)
    return UV_EINVAL;
  struct http_conn *c = conn_new(srv, listener_id, NULL);
  if (!c)
    return UV_ENOMEM;
  int rc = uv_tcp_open(&c->tcp, fd);
  if (rc < 0) {
    conn_close(c, rc);
    return rc;
  }
  conn_begin(c, NULL);
  return 0;
}

static void listener_on_connection(uv_stream_t *s, int status) {
  struct http_listener *l = s->data;
  if (status < 0) {
    uint64_t now = uv_now(l->srv->loop);
    if (now - l->srv->refuse_log_ms >= 1000 || l->srv->refuse_log_ms == 0) {
      l->srv->refuse_log_ms = now ? now : 1;
      LOG_W("http: listener %d: accept failed: %s", l->id, uv_strerror(status));
    }
    return;
  }
  server_accept(l);
}

/* ---- server ---- */

static void listener_on_closed(uv_handle_t *h) {
  struct http_listener *l = h->data;
  struct http_server *srv = l->srv;
  free(l);
  srv->n_listeners_open--;
  server_maybe_done(srv);
}

static void server_on_idle_closed(uv_handle_t *h) {
  struct http_server *srv = h->data;
  void (*cb)(void *) = srv->close_cb;
  void *ud = srv->close_ud;
  /* every connection returned its buffer before it was freed */
  while (srv->n_copy_free > 0)
    free(srv->copy_free[--srv->n_copy_free]);
  free(srv->tls_rbuf);
  free(srv->tls_plain);
  BIO_meth_free(srv->sink_meth);
  free(srv);
  if (cb)
    cb(ud);
}

static void server_maybe_done(struct http_server *srv) {
  if (srv->draining == 1 && srv->n_conns == 0) {
    srv->draining = 2;
    if (srv->drain_cb)
      srv->drain_cb(srv->drain_ud); /* may call http_server_close */
  }
  if (srv->closing == 1 && srv->n_conns == 0 && srv->n_listeners_open == 0) {
    srv->closing = 2;
    uv_close((uv_handle_t *)&srv->idle, server_on_idle_closed);
  }
}

static void server_on_idle(uv_idle_t *h) {
  struct http_server *srv = h->data;
  struct http_conn *list = srv->defer_head;
  srv->defer_head = srv->defer_tail = NULL;
  uv_idle_stop(h);
  while (list) {
    struct http_conn *c = list;
    list = c->defer_next;
    c->defer_next = NULL;
    c->deferred = 0;
    conn_run_deferred(c);
    conn_unref(c);
  }
}

static void limits_defaults(struct http_server_limits *L) {
  if (L->max_header_bytes == 0)
    L->max_header_bytes = 16 * 1024;
  if (L->max_header_bytes < 256)
    L->max_header_bytes = 256;
  if (L->max_headers == 0)
    L->max_headers = 100;
  if (L->header_timeout_ms == 0)
    L->header_timeout_ms = 10000;
  if (L->idle_timeout_ms == 0)
    L->idle_timeout_ms = 60000;
  if (L->send_timeout_ms == 0)
    L->send_timeout_ms = 60000;
  if (L->max_connections == 0)
    L->max_connections = 4096;
}

int http_server_new(struct http_server **out, uv_loop_t *loop,
                    const struct http_server_limits *limits,
                    http_handler_cb handler, void *ud) {
  if (!out || !loop || !handler)
    return UV_EINVAL;
  struct http_server *srv = calloc(1, sizeof *srv);
  if (!srv)
    return UV_ENOMEM;
  if (limits)
    srv->limits = *limits;
  limits_defaults(&srv->limits);
  for (size_t i = 0; i < sizeof srv->budgeted / sizeof srv->budgeted[0]; i++)
    srv->budgeted[i].id = INT32_MIN; /* free: every real listener id is larger */
  srv->loop = loop;
  srv->handler = handler;
  srv->ud = ud;
  uv_idle_init(loop, &srv->idle);
  srv->idle.data = srv;
  /* A write to a socket the client reset raises SIGPIPE, which would kill
   * the daemon; libuv reports EPIPE instead once the signal is ignored.
   * Only the default disposition is changed, never a handler someone set. */
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
    signal(SIGPIPE, SIG_IGN);
  *out = srv;
  return 0;
}

void http_server_set_limits(struct http_server *srv, const struct http_server_limits *limits) {
  struct http_server_limits L = *limits;
  limits_defaults(&L);
  /* connections size their buffers by these at accept */
  L.max_header_bytes = srv->limits.max_header_bytes;
  L.max_headers = srv->limits.max_headers;
  srv->limits = L;
}

/* server_parse_addr accepts "host:port", "[v6]:port" and ":port" (all
 * IPv4 interfaces); hosts are numeric. */
static int server_parse_addr(const char *addr, struct sockaddr_storage *ss) {
  char host[INET6_ADDRSTRLEN + 1];
  const char *colon, *hs = addr;
  size_t hl;
  int v6 = 0;
  if (!addr)
    return UV_EINVAL;
  if (addr[0] == '[') {
    const char *rb = strchr(addr, ']');
    if (!rb || rb[1] != ':')
      return UV_EINVAL;
    hs = addr + 1;
    hl = (size_t)(rb - hs);
    colon = rb + 1;
    v6 = 1;
  } else {
    colon = strrchr(addr, ':');
    if (!colon || memchr(addr, ':', (size_t)(colon - addr)))
      return UV_EINVAL;
    hl = (size_t)(colon - addr);
  }
  if (hl >= sizeof host)
    return UV_EINVAL;
  memcpy(host, hs, hl);
  host[hl] = '\0';
  const char *ps = colon + 1;
  if (!*ps || strlen(ps) > 5)
    return UV_EINVAL;
  long port = 0;
  for (const char *p = ps; *p; p++) {
    if (*p < '0' || *p > '9')
      return UV_EINVAL;
    port = port * 10 + (*p - '0');
  }
  if (port > 65535)
    return UV_EINVAL;
  memset(ss, 0, sizeof *ss);
  if (v6)
    return uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss);
  return uv_ip4_addr(hl ? host : "0.0.0.0", (int)port, (struct sockaddr_in *)ss);
}

static int server_listen(struct http_server *srv, const char *addr,
                         int listener_id, SSL_CTX *const *ctxp, unsigned budget) {
  struct sockaddr_storage ss;
  if (srv->closing)
    return UV_EINVAL;
  if (budget) {
    size_t i = 0, n = sizeof srv->budgeted / sizeof srv->budgeted[0];
    while (i < n && srv->budgeted[i].id != INT32_MIN && srv->budgeted[i].id != listener_id)
      i++;
    if (i == n)
      return UV_ENOSPC;
    srv->budgeted[i].id = listener_id;
  }
  int rc = server_parse_addr(addr, &ss);
  if (rc < 0)
    return rc;
  struct http_listener *l = calloc(1, sizeof *l);
  if (!l)
    return UV_ENOMEM;
  l->srv = srv;
  l->id = listener_id;
  l->tls_ctx = ctxp;
  l->budget = budget;
  rc = uv_tcp_init(srv->loop, &l->tcp);
  if (rc < 0) {
    free(l);
    return rc;
  }
  l->tcp.data = l;
  srv->n_listeners_open++;
  rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&l->tcp, HTTP_BACKLOG, listener_on_connection);
  if (rc < 0) {
    uv_close((uv_handle_t *)&l->tcp, listener_on_closed);
    return rc;
  }
  l->next = srv->listeners;
  srv->listeners = l;
  LOG_D("http: listening on %s (listener %d)", addr, listener_id);
  return 0;
}

int http_server_listen(struct http_server *srv, const char *addr,
                       int listener_id) {
  return server_listen(srv, addr, listener_id, NULL, 0);
}

int http_server_listen_budget(struct http_server *srv, const char *addr, int listener_id,
                              unsigned max_connections) {
  return server_listen(srv, addr, listener_id, NULL, max_connections);
}

int http_server_listen_tls(struct http_server *srv, const char *addr,
                           int listener_id, struct ssl_ctx_st *const *ctxp) {
  if (!ctxp)
    return UV_EINVAL;
  return server_listen(srv, addr, listener_id, ctxp, 0);
}

int http_server_bound_port(struct http_server *srv, int listener_id) {
  for (struct http_listener *l = srv->listeners; l; l = l->next) {
    if (l->id != listener_id)
      continue;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    int rc = uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&ss, &len);
    if (rc < 0)
      return rc;
    if (ss.ss_family == AF_INET6)
      return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  }
  return UV_ENOENT;
}

size_t http_server_bound_addrs(struct http_server *srv, struct sockaddr_storage *out,
                               size_t cap) {
  size_t n = 0;
  for (struct http_listener *l = srv->listeners; l && n < cap; l = l->next) {
    int len = sizeof out[n];
    if (uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&out[n], &len) == 0)
      n++;
  }
  return n;
}

static void server_close_listeners(struct http_server *srv) {
  struct http_listener *l = srv->listeners;
  srv->listeners = NULL;
  while (l) {
    struct http_listener *next = l->next;
    uv_close((uv_handle_t *)&l->tcp, listener_on_closed);
    l = next;
  }
}

void http_server_drain(struct http_server *srv, void (*cb)(void *ud),
                       void *ud) {
  if (srv->closing || srv->draining)
    return;
  srv->draining = 1;
  srv->drain_cb = cb;
  srv->drain_ud = ud;
  server_close_listeners(srv);
  /* nothing in flight on these: a client reconnects (to another node) */
  for (struct http_conn *c = srv->conns; c; c = c->next)
    if (c->state == CONN_NEW || c->state == CONN_IDLE ||
        (c->state == CONN_READ_HEAD && c->in_len == 0 && c->arena_len == 0 &&
         c->url_len == 0))
      conn_close(c, UV_ECANCELED);
  server_maybe_done(srv);
}

unsigned http_server_n_connections(const struct http_server *srv) {
  return srv->n_conns;
}

void http_server_close(struct http_server *srv, void (*cb)(void *ud),
                       void *ud) {
  if (srv->closing)
    return;
  srv->closing = 1;
  srv->close_cb = cb;
  srv->close_ud = ud;
  server_close_listeners(srv);
  for (struct http_conn *c = srv->conns; c; c = c->next)
    conn_close(c, UV_ECANCELED);
  server_maybe_done(srv);
}

void http_server_get_stats(struct http_server *srv,
                           struct http_server_stats *st) {
  *st = srv->stats;
}

/* ---- request helpers ---- */

const struct http_header *http_request_header_next(
    const struct http_request *req, const char *name,
    const struct http_header *prev) {
  size_t len = strlen(name);
  size_t i = prev ? (size_t)(prev - req->headers) + 1 : 0;
  for (; i < req->n_headers; i++) {
    const struct http_header *h = &req->headers[i];
    if (h->name_len == len && strncasecmp(h->name, name, len) == 0)
      return h;
  }
  return NULL;
}

const struct http_header *http_request_header(const struct http_request *req,
                                              const char *name) {
  return http_request_header_next(req, name, NULL);
}

void http_request_on_close(struct http_request *req, http_close_cb cb,
                           void *ud) {
  struct http_conn *c = conn_of(req);
  c->close_cb = cb;
  c->close_ud = ud;
  if (c->state == CONN_CLOSED && cb && !c->close_notified) {
    /* it is already gone: tell the handler, but not from inside this call */
    c->notify_close = 1;
    conn_defer(c);
  }
}

/* ---- responses ---- */

static int conn_is_tchar(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch >= '0' && ch <= '9') || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* The server writes these itself; the handler's copies are dropped. */
static int conn_reserved_header(const char *name, size_t len) {
  static const char *names[] = {"content-length", "transfer-encoding",
                                "connection", "date", "keep-alive"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strlen(names[i]) == len && strncasecmp(names[i], name, len) == 0)
      return 1;
  return 0;
}

/* conn_header_len resolves a length of 0 with a non-NULL string to strlen. */
static size_t conn_header_len(const char *s, size_t len) {
  return (len == 0 && s) ? strlen(s) : len;
}

static int conn_check_header(const struct http_header *h, size_t nl,
                             size_t vl) {
  if (!h->name || nl == 0 || (vl && !h->value))
    return UV_EINVAL;
  for (size_t i = 0; i < nl; i++)
    if (!conn_is_tchar((unsigned char)h->name[i]))
      return UV_EINVAL;
  for (size_t i = 0; i < vl; i++) {
    unsigned char ch = (unsigned char)h->value[i];
    if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
      return UV_EINVAL;
  }
  return 0;
}

int http_respond_start(struct http_request *req, int status,
                       const struct http_header *headers, size_t n_headers,
                       int64_t content_length) {
  struct http_conn *c = conn_of(req);
  if (!c->req_active || c->resp_started || status < 200 || status > 999)
    return UV_EINVAL;
  if (c->state >= CONN_CLOSING)
    return conn_err(c);
  int is_head = c->method == HTTP_HEAD;
  int no_content = status == 204 || status == 304;
  int http11 = c->http_major > 1 || (c->http_major == 1 && c->http_minor >= 1);
  int chunked = 0;
  if (content_length < 0 && !no_content) {
    if (http11)
      chunked = 1;
    else if (!is_head)
      c->keep_alive = 0; /* HTTP/1.0: the body ends when we close */
  }
  if (c->srv->closing || c->srv->draining)
    c->keep_alive = 0;

  size_t total = 128 + 64 + 48 + 64;
  for (size_t i = 0; i < n_headers; i++) {
    size_t nl = conn_header_len(headers[i].name, headers[i].name_len);
    size_t vl = conn_header_len(headers[i].value, headers[i].value_len);
    int rc = conn_check_header(&headers[i], nl, vl);
    if (rc < 0)
      return rc;
    total += nl + vl + 4;
    if (total > CONN_MAX_RESP_HEAD)
      return UV_E2BIG;
  }
  struct conn_write *w = conn_write_new(c, total);
  if (!w)
    return UV_ENOMEM;
  char *p = w->data;
  p += snprintf(p, 128, "HTTP/1.1 %d %s\r\n", status, conn_reason(status));
  for (size_t i = 0; i < n_headers; i++) {
    size_t nl = conn_header_len(headers[i].name, headers[i].name_len);
    size_t vl = conn_header_len(headers[i].value, headers[i].value_len);
    if (conn_reserved_header(headers[i].name, nl)) {
      LOG_D("http id=%" PRIu64 ": dropping handler header %.*s", req->id,
            (int)nl, headers[i].name);
      continue;
    }
    memcpy(p, headers[i].name, nl);
    p += nl;
    *p++ = ':';
    *p++ = ' ';
    if (vl)
      memcpy(p, headers[i].value, vl);
    p += vl;
    *p++ = '\r';
    *p++ = '\n';
  }
  p += snprintf(p, 64, "Date: %s\r\n", server_date(c->srv));
  if (content_length >= 0 && status != 204)
    p += snprintf(p, 48, "Content-Length: %" PRId64 "\r\n", content_length);
  else if (chunked)
    p += snprintf(p, 48, "Transfer-Encoding: chunked\r\n");
  p += snprintf(p, 64, "Connection: %s\r\n\r\n",
                c->keep_alive ? "keep-alive" : "close");
  w->len = (size_t)(p - w->data);
  int rc = conn_write_send(c, w);
  if (rc < 0)
    return rc;
  c->resp_started = 1;
  c->status = status;
  c->resp_len = no_content ? 0 : content_length;
  c->resp_chunked = chunked;
  c->resp_no_body = is_head || no_content;
  conn_set_state(c, CONN_WRITING);
  return 0;
}

/* conn_body_check validates a body write; 1 means "drop it", 0 "send it". */
static int conn_body_check(struct http_conn *c, uint64_t len) {
  if (!c->req_active || !c->resp_started)
    return UV_EINVAL;
  if (c->state >= CONN_CLOSING)
    return conn_err(c);
  if (c->sf_pending)
    return UV_EBUSY;
  if (c->resp_no_body || len == 0)
    return 1;
  if (c->resp_len >= 0 && c->body_queued + len > (uint64_t)c->resp_len)
    return UV_EINVAL; /* more than the announced Content-Length */
  return 0;
}

int http_respond_write(struct http_request *req, const void *data, size_t len,
                       http_write_cb cb, void *ud) {
  struct http_conn *c = conn_of(req);
  if (len > CONN_MAX_WRITE)
    return UV_E2BIG;
  int rc = conn_body_check(c, len);
  if (rc < 0)
    return rc;
  if (rc == 1)
    return conn_write_drop(c, cb, ud);
  char frame[24] = "";
  size_t fl = 0;
  if (c->resp_chunked)
    fl = (size_t)snprintf(frame, sizeof frame, "%zx\r\n", len);
  struct conn_write *w = conn_write_new(c, fl + len + (c->resp_chunked ? 2 : 0));
  if (!w)
    return UV_ENOMEM;
  memcpy(w->data, frame, fl);
  memcpy(w->data + fl, data, len);
  if (c->resp_chunked)
    memcpy(w->data + fl + len, "\r\n", 2);
  w->body_len = len;
  w->cb = cb;
  w->ud = ud;
  rc = conn_write_send(c, w);
  if (rc < 0)
    return rc;
  c->body_queued += len;
  return 0;
}

int http_respond_sendfile(struct http_request *req, int fd, uint64_t offset,
                          uint64_t len, http_write_cb cb, void *ud) {
  struct http_conn *c = conn_of(req);
  if (fd < 0 || offset > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - offset)
    return UV_EINVAL;
  int rc = conn_body_check(c, len);
  if (rc < 0)
    return rc;
  if (rc == 1)
    return conn_write_drop(c, cb, ud);
  if (!c->poll_init) {
    rc = conn_poll_init(c);
    if (rc < 0)
      return rc;
  }
  if (c->resp_chunked) {
    char frame[24];
    int fl = snprintf(frame, sizeof frame, "%" PRIx64 "\r\n", len);
    rc = conn_write_copy(c, frame, (size_t)fl);
    if (rc < 0)
      return rc;
  }
  c->sf_fd = fd;
  c->sf_off = offset;
  c->sf_left = len;
  c->ahead_end = 0; /* another file: nothing known to be cached */
  c->sf_cb = cb;
  c->sf_ud = ud;
  /* wait for queued header/chunk bytes first; conn_after_io starts it then */
  if (c->n_writes == 0) {
    rc = conn_sendfile_begin(c);
    if (rc < 0)
      return rc;
  }
  c->sf_pending = 1;
  c->body_queued += len;
  conn_send_timer_update(c, 0);
  return 0;
}

void http_respond_end(struct http_request *req) {
  struct http_conn *c = conn_of(req);
  if (!c->req_active) {
    LOG_E("http id=%" PRIu64 ": request ended twice", req->id);
    return;
  }
  if (c->state < CONN_CLOSING && !c->resp_started) {
    LOG_W("http id=%" PRIu64 ": handler ended without a response", req->id);
    c->keep_alive = 0;
    if (http_respond_start(req, 500, NULL, 0, 0) < 0)
      conn_close(c, UV_EINVAL);
  }
  c->req_active = 0;
  if (c->state < CONN_CLOSING) {
    /* with a sendfile pending, conn_sendfile_done writes the marker */
    if (c->resp_chunked && !c->resp_no_body && !c->sf_pending &&
        conn_write_copy(c, "0\r\n\r\n", 5) < 0)
      conn_close(c, UV_EPIPE);
    if (c->resp_len >= 0 && !c->resp_no_body &&
        c->body_queued != (uint64_t)c->resp_len) {
      /* the client would wait for the missing bytes: close instead */
      LOG_W("http id=%" PRIu64 ": body %" PRIu64 " of %" PRId64
            " bytes, closing",
            req->id, c->body_queued, c->resp_len);
      c->keep_alive = 0;
    }
  }
  if (c->state < CONN_CLOSING) {
    conn_set_state(c, CONN_FLUSHING);
    if (conn_io_idle(c))
      conn_finish(c);
  } else {
    conn_retire(c);
  }
  conn_unref(c);
}

int http_respond_connect_tls(struct http_request *req, SSL_CTX *ctx, const char *host,
                             unsigned port, const char *user) {
  struct http_conn *c = conn_of(req);
  size_t hl = host ? strlen(host) : 0;
  if (!c->req_active || c->resp_started || c->method != HTTP_CONNECT || c->ssl || !ctx ||
      hl == 0 || hl >= sizeof c->proxy_host)
    return UV_EINVAL;
  static const char line[] = "HTTP/1.1 200 Connection established\r\n\r\n";
  int rc = c->state < CONN_CLOSING ? conn_write_copy(c, line, sizeof line - 1) : conn_err(c);
  c->resp_started = 1;
  c->status = 200;
  c->resp_len = 0;
  c->resp_no_body = 1;
  if (rc == 0) {
    /* the 200 is queued in the clear; everything after it is TLS */
    rc = conn_tls_init(c, ctx);
    c->tls_seen = 0;
  }
  if (rc == 0) {
    memcpy(c->proxy_host, host, hl + 1);
    c->proxy_port = port;
    snprintf(c->conn_user, sizeof c->conn_user, "%s", user ? user : "");
    /* bytes the client sent right behind the CONNECT are its handshake */
    if (c->in_len > 0 && conn_tls_feed(c, c->in, c->in_len) < 0)
      rc = conn_err(c);
    c->in_len = 0;
    c->keep_alive = 1;
  }
  if (rc < 0 && c->state < CONN_CLOSING) {
    c->broken = 1;
    conn_close(c, rc);
  }
  http_respond_end(req);
  return rc;
}

int http_request_detach(struct http_request *req, int status, int *fd, char **extra,
                        size_t *extra_len) {
  struct http_conn *c = conn_of(req);
  *fd = -1;
  *extra = NULL;
  *extra_len = 0;
  if (!c->req_active || c->resp_started || c->ssl)
    return UV_EINVAL;
  int rc = c->state >= CONN_CLOSING ? conn_err(c) : 0;
  uv_os_fd_t sock;
  if (rc == 0 && c->n_writes > 0)
    rc = UV_EBUSY; /* a 100-continue on its way: not ours to cut */
  if (rc == 0)
    rc = uv_fileno((uv_handle_t *)&c->tcp, &sock);
  if (rc == 0 && c->in_len > 0) {
    if (!(*extra = malloc(c->in_len)))
      rc = UV_ENOMEM;
    else {
      memcpy(*extra, c->in, c->in_len);
      *extra_len = c->in_len;
    }
  }
  if (rc == 0 && (*fd = fcntl(sock, F_DUPFD_CLOEXEC, 0)) < 0)
    rc = -errno;
  if (rc < 0) {
    free(*extra);
    *extra = NULL;
    *extra_len = 0;
    http_respond_abort(req);
    return rc;
  }
  /* the dup keeps the socket: closing our handle sends nothing */
  c->status = status;
  c->resp_started = 1;
  c->resp_complete = 1;
  c->req_active = 0;
  c->keep_alive = 0;
  c->in_len = 0;
  conn_retire(c);
  conn_close(c, 0);
  conn_unref(c);
  return 0;
}

void http_request_close_after(struct http_request *req) {
  conn_of(req)->keep_alive = 0;
}

void http_respond_abort(struct http_request *req) {
  struct http_conn *c = conn_of(req);
  if (!c->req_active) {
    LOG_E("http id=%" PRIu64 ": request aborted after its end", req->id);
    return;
  }
  c->req_active = 0;
  c->keep_alive = 0;
  if (c->state < CONN_CLOSING) {
    LOG_D("http conn=%" PRIu64 " id=%" PRIu64 ": response aborted", c->id,
          req->id);
    c->broken = 1;
    conn_close(c, UV_ECANCELED);
  }
  conn_retire(c);
  conn_unref(c);
}

int http_respond_simple(struct http_request *req, int status,
                        const struct http_header *headers, size_t n_headers,
                        const void *body, size_t len) {
  int rc = http_respond_start(req, status, headers, n_headers, (int64_t)len);
  if (rc == 0 && len > 0)
    rc = http_respond_write(req, body, len, NULL, NULL);
  if (rc == 0)
    http_respond_end(req);
  else
    http_respond_abort(req);
  return rc;
}
