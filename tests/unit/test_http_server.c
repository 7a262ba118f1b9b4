/* test_http_server.c - the HTTP server driven over real sockets.
 *
 * Each test starts a server on 127.0.0.1:<ephemeral> whose libuv loop runs in
 * a second thread, with a small handler (/hello, /info, /file via sendfile,
 * /chunked, /slow answered from a timer, /big for send stalls ...). The test
 * thread talks to it with plain blocking sockets, so it controls every byte
 * and every split: pipelining, fragmented heads, slowloris, hang-ups, TLS
 * probes. State the handler records for the test lives in atomics.
 *
 * The same server also listens with TLS (listener 8, and listener 9 which
 * requires client certificates), on certificates made at start by a
 * throwaway CA in a temp dir. The client side of those tests is a blocking
 * socket under SSL_connect that verifies the server against that CA, so
 * the same request/response helpers drive plain and TLS connections.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "http_server.h"
#include "log.h"
#include "tlsctx.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define FILE_SIZE (4 * 1024 * 1024 + 123)
#define BIG_LEN ((uint64_t)256 * 1024 * 1024)
#define BIG_CHUNK (256 * 1024)

/* ---- the server thread ---- */

struct tsrv {
  pthread_t th;
  uv_loop_t loop;
  uv_async_t stop;
  struct http_server *srv;
  struct http_server_limits limits;
  int port;
  int listen_rc;
  /* TLS listeners: 8 reads tls_ctx at each accept (/swap changes it on the
   * loop thread), 9 requires a client certificate */
  SSL_CTX *tls_ctx, *mtls_ctx;
  int tls_port, mtls_port;
  int budget_port; /* listener 10: its own budget of 1 connection */
  sem_t ready;
  atomic_int closed; /* http_server_close's callback ran */
  atomic_int stop_sent;
  int loop_close_rc;
};

static struct tsrv g_srv;
static char g_file_path[64];
static unsigned char *g_file;
static char g_big_chunk[BIG_CHUNK];

static atomic_int g_close_calls;  /* /slow close callbacks */
static atomic_int g_drained;      /* http_server_drain's callback ran */
static atomic_int g_slow_done;    /* /slow timers fired */
static atomic_int g_slow_rc;      /* what http_respond_simple returned then */
static atomic_int g_big_failed;   /* /big write error status */

/* TLS server contexts, built once by group_setup: the first certificate,
 * the one /swap installs, and the first with client certificates required */
static SSL_CTX *g_ctx_a, *g_ctx_b, *g_ctx_mtls;

/* ---- handler ---- */

static void respond_text(struct http_request *req, int status,
                         const char *text) {
  struct http_header h[] = {{"Content-Type", 0, "text/plain", 0}};
  http_respond_simple(req, status, h, 1, text, strlen(text));
}

static void info_handle(struct http_request *req) {
  char body[2048];
  const struct http_header *a = http_request_header(req, "x-a");
  const struct http_header *b1 = http_request_header(req, "X-B");
  const struct http_header *b2 =
      b1 ? http_request_header_next(req, "x-b", b1) : NULL;
  const struct http_header *b3 =
      b2 ? http_request_header_next(req, "x-b", b2) : NULL;
  snprintf(body, sizeof body,
           "method=%s path=%s query=%s n=%zu x-a=%s x-b=%s,%s,%s", http_method_str(req->method),
           req->path, req->query ? req->query : "(null)", req->n_headers,
           a ? a->value : "-", b1 ? b1->value : "-", b2 ? b2->value : "-",
           b3 ? "3" : "-");
  respond_text(req, 200, body);
}

static void file_sent(struct http_request *req, int status, void *ud) {
  close((int)(intptr_t)ud);
  if (status == 0)
    http_respond_end(req);
  else
    http_respond_abort(req);
}

static void file_closefd(struct http_request *req, int status, void *ud) {
  (void)req;
  (void)status;
  close((int)(intptr_t)ud);
}

static void file_handle(struct http_request *req) {
  int fd = open(g_file_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    respond_text(req, 500, "open");
    return;
  }
  int chunked = req->query && strncmp(req->query, "chunked", 7) == 0;
  /* "...-end": end right after queueing the file, before its callback */
  int early_end = req->query && strstr(req->query, "-end") != NULL;
  int part = req->query && strcmp(req->query, "part") == 0;
  uint64_t off = part ? 1000 : 0, len = part ? 70000 : FILE_SIZE;
  if (req->query && strcmp(req->query, "short") == 0)
    len = FILE_SIZE + 100; /* promises more than the file has */
  struct http_header h[] = {{"Content-Type", 0, "application/octet-stream", 0}};
  int rc = http_respond_start(req, 200, h, 1, chunked ? -1 : (int64_t)len);
  if (rc == 0)
    rc = http_respond_sendfile(req, fd, off, len,
                               early_end ? file_closefd : file_sent,
                               (void *)(intptr_t)fd);
  if (rc < 0) {
    close(fd);
    http_respond_abort(req);
  } else if (early_end) {
    http_respond_end(req);
  }
}

static void chunk2_done(struct http_request *req, int status, void *ud) {
  (void)ud;
  if (status == 0)
    http_respond_end(req);
  else
    http_respond_abort(req);
}

static void chunk1_done(struct http_request *req, int status, void *ud) {
  (void)ud;
  if (status == 0 &&
      http_respond_write(req, "second part", 11, chunk2_done, NULL) == 0)
    return;
  http_respond_abort(req);
}

static void chunked_handle(struct http_request *req) {
  if (http_respond_start(req, 200, NULL, 0, -1) < 0 ||
      http_respond_write(req, "first part", 10, chunk1_done, NULL) < 0)
    http_respond_abort(req);
}

struct slow {
  uv_timer_t t;
  struct http_request *req;
};

static void slow_on_close(struct http_request *req, void *ud) {
  (void)req;
  (void)ud;
  atomic_fetch_add(&g_close_calls, 1);
}

static void slow_free(uv_handle_t *h) { free(h->data); }

static void slow_fire(uv_timer_t *t) {
  struct slow *s = t->data;
  int rc = http_respond_simple(s->req, 200, NULL, 0, "slow done\n", 10);
  atomic_store(&g_slow_rc, rc);
  atomic_fetch_add(&g_slow_done, 1);
  uv_close((uv_handle_t *)t, slow_free);
}

static void slow_handle(struct http_request *req) {
  struct slow *s = calloc(1, sizeof *s);
  s->req = req;
  uv_timer_init(&g_srv.loop, &s->t);
  s->t.data = s;
  http_request_on_close(req, slow_on_close, s);
  uv_timer_start(&s->t, slow_fire, 300, 0);
}

static void big_next(struct http_request *req);

static void big_written(struct http_request *req, int status, void *ud) {
  (void)ud;
  uint64_t *left = req->handler_data;
  if (status < 0) {
    atomic_store(&g_big_failed, status);
    free(left);
    http_respond_abort(req);
    return;
  }
  if (*left == 0) {
    free(left);
    http_respond_end(req);
    return;
  }
  big_next(req);
}

static void big_next(struct http_request *req) {
  uint64_t *left = req->handler_data;
  size_t n = *left < BIG_CHUNK ? (size_t)*left : BIG_CHUNK;
  *left -= n;
  if (http_respond_write(req, g_big_chunk, n, big_written, NULL) < 0) {
    free(left);
    http_respond_abort(req);
  }
}

static void big_handle(struct http_request *req) {
  uint64_t *left = malloc(sizeof *left);
  *left = BIG_LEN;
  req->handler_data = left;
  if (http_respond_start(req, 200, NULL, 0, (int64_t)BIG_LEN) < 0) {
    free(left);
    http_respond_abort(req);
    return;
  }
  big_next(req);
}

static void stats_handle(struct http_request *req) {
  struct http_server_stats st;
  char body[512];
  http_server_get_stats(g_srv.srv, &st);
  snprintf(body, sizeof body,
           "open=%llu total=%llu requests=%llu tls=%llu timeouts=%llu bad=%llu "
           "hs=%llu hserr=%llu tlsfile=%llu offloop=%llu",
           (unsigned long long)st.connections_open,
           (unsigned long long)st.connections_total,
           (unsigned long long)st.requests_total,
           (unsigned long long)st.tls_rejected,
           (unsigned long long)st.timeouts,
           (unsigned long long)st.bad_requests,
           (unsigned long long)st.tls_handshakes,
           (unsigned long long)st.tls_handshake_errors,
           (unsigned long long)st.tls_file_bytes,
           (unsigned long long)st.file_reads_offloop);
  respond_text(req, 200, body);
}

static void on_drained(void *ud) {
  (void)ud;
  atomic_fetch_add(&g_drained, 1);
}

static void handler(struct http_request *req, void *ud) {
  (void)ud;
  const char *p = req->path;
  if (strcmp(p, "/hello") == 0) {
    struct http_header h[] = {{"Content-Type", 0, "text/plain", 0},
                              {"X-Test", 6, "yes", 3},
                              {"Content-Length", 0, "999", 0}};
    req->log_source = "test";
    http_respond_simple(req, 200, h, 3, "hello world\n", 12);
  } else if (strcmp(p, "/info") == 0) {
    info_handle(req);
  } else if (strcmp(p, "/file") == 0) {
    file_handle(req);
  } else if (strcmp(p, "/chunked") == 0) {
    chunked_handle(req);
  } else if (strcmp(p, "/slow") == 0) {
    slow_handle(req);
  } else if (strcmp(p, "/big") == 0) {
    big_handle(req);
  } else if (strcmp(p, "/stats") == 0) {
    stats_handle(req);
  } else if (strcmp(p, "/whoami") == 0) {
    char body[64];
    snprintf(body, sizeof body, "tls=%d listener=%d", req->tls, req->listener_id);
    respond_text(req, 200, body);
  } else if (strcmp(p, "/swap") == 0) {
    /* on the loop thread, like a reload: the next TLS accept reads it */
    g_srv.tls_ctx = g_ctx_b;
    respond_text(req, 200, "swapped");
  } else if (strcmp(p, "/drain") == 0) {
    http_server_drain(g_srv.srv, on_drained, NULL);
    respond_text(req, 200, "draining");
  } else if (strcmp(p, "/abort") == 0) {
    if (http_respond_start(req, 200, NULL, 0, 100) == 0)
      http_respond_write(req, "0123456789", 10, NULL, NULL);
    http_respond_abort(req);
  } else if (strcmp(p, "/noresp") == 0) {
    http_respond_end(req);
  } else if (strcmp(p, "/badheader") == 0) {
    struct http_header h[] = {{"X-Evil", 0, "a\r\nInjected: 1", 0}};
    int rc = http_respond_start(req, 200, h, 1, 0);
    char body[64];
    snprintf(body, sizeof body, "rc=%d", rc);
    respond_text(req, 200, body);
  } else {
    respond_text(req, 404, "not found\n");
  }
}

/* ---- server thread control ---- */

static void on_server_closed(void *ud) {
  struct tsrv *t = ud;
  atomic_store(&t->closed, 1);
}

static void on_stop(uv_async_t *a) {
  struct tsrv *t = a->data;
  http_server_close(t->srv, on_server_closed, t);
  uv_close((uv_handle_t *)a, NULL);
}

static void *server_thread(void *arg) {
  struct tsrv *t = arg;
  uv_loop_init(&t->loop);
  uv_async_init(&t->loop, &t->stop, on_stop);
  t->stop.data = t;
  http_server_new(&t->srv, &t->loop, &t->limits, handler, t);
  t->listen_rc = http_server_listen(t->srv, "127.0.0.1:0", 7);
  t->port = http_server_bound_port(t->srv, 7);
  if (t->listen_rc == 0)
    t->listen_rc = http_server_listen_tls(t->srv, "127.0.0.1:0", 8, &t->tls_ctx);
  if (t->listen_rc == 0)
    t->listen_rc = http_server_listen_tls(t->srv, "127.0.0.1:0", 9, &t->mtls_ctx);
  if (t->listen_rc == 0)
    t->listen_rc = http_server_listen_budget(t->srv, "127.0.0.1:0", 10, 1);
  t->budget_port = http_server_bound_port(t->srv, 10);
  t->tls_port = http_server_bound_port(t->srv, 8);
  t->mtls_port = http_server_bound_port(t->srv, 9);
  sem_post(&t->ready);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  t->loop_close_rc = uv_loop_close(&t->loop);
  return NULL;
}

static uint64_t g_send_timeout_ms = 300;

static int server_start(unsigned max_connections) {
  memset(&g_srv, 0, sizeof g_srv);
  atomic_store(&g_close_calls, 0);
  atomic_store(&g_drained, 0);
  atomic_store(&g_slow_done, 0);
  atomic_store(&g_slow_rc, 0);
  atomic_store(&g_big_failed, 0);
  g_srv.limits.max_header_bytes = 4096;
  g_srv.limits.max_headers = 32;
  g_srv.limits.header_timeout_ms = 300;
  g_srv.limits.idle_timeout_ms = 600;
  g_srv.limits.send_timeout_ms = g_send_timeout_ms;
  g_srv.limits.max_connections = max_connections;
  g_srv.tls_ctx = g_ctx_a;
  g_srv.mtls_ctx = g_ctx_mtls;
  sem_init(&g_srv.ready, 0, 0);
  if (pthread_create(&g_srv.th, NULL, server_thread, &g_srv) != 0)
    return -1;
  sem_wait(&g_srv.ready);
  return g_srv.listen_rc == 0 && g_srv.port > 0 && g_srv.tls_port > 0 &&
                 g_srv.mtls_port > 0
             ? 0
             : -1;
}

static int setup(void **state) {
  (void)state;
  return server_start(64);
}

static int setup_two_conns(void **state) {
  (void)state;
  return server_start(2);
}

static int setup_slow_send(void **state) {
  (void)state;
  g_send_timeout_ms = 10000; /* ASan builds are several times slower */
  int rc = server_start(64);
  g_send_timeout_ms = 300;
  return rc;
}

static void server_stop(void) {
  if (atomic_exchange(&g_srv.stop_sent, 1) == 0)
    uv_async_send(&g_srv.stop);
}

static int teardown(void **state) {
  (void)state;
  server_stop();
  pthread_join(g_srv.th, NULL);
  sem_destroy(&g_srv.ready);
  assert_int_equal(atomic_load(&g_srv.closed), 1);
  assert_int_equal(g_srv.loop_close_rc, 0);
  return 0;
}

/* ---- client side ---- */

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

/* How a TLS connection ended, as the client saw it. */
enum tls_end { TLS_END_NONE, TLS_END_NOTIFY, TLS_END_CUT, TLS_END_ERROR };

struct client {
  int fd;
  SSL *ssl;        /* NULL: plain HTTP */
  enum tls_end tls_end;
  size_t max_read; /* 0: read as much as fits */
  char *buf;
  size_t len, cap;
};

static void cl_open_port(struct client *cl, int port, int rcvbuf) {
  memset(cl, 0, sizeof *cl);
  cl->fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(cl->fd >= 0);
  struct timeval tv = {5, 0};
  setsockopt(cl->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(cl->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (rcvbuf)
    setsockopt(cl->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(cl->fd, (struct sockaddr *)&a, sizeof a), 0);
  cl->cap = 1 << 16;
  cl->buf = malloc(cl->cap);
}

static void cl_open_opts(struct client *cl, int rcvbuf) {
  cl_open_port(cl, g_srv.port, rcvbuf);
}

static void cl_open(struct client *cl) { cl_open_opts(cl, 0); }

static void cl_close(struct client *cl) {
  SSL_free(cl->ssl);
  cl->ssl = NULL;
  close(cl->fd);
  free(cl->buf);
  cl->buf = NULL;
}

static void cl_send(struct client *cl, const void *p, size_t n) {
  const char *s = p;
  while (n > 0) {
    ssize_t w = cl->ssl ? SSL_write(cl->ssl, s, (int)n)
                        : send(cl->fd, s, n, MSG_NOSIGNAL);
    assert_true(w > 0);
    s += w;
    n -= (size_t)w;
  }
}

static void cl_sends(struct client *cl, const char *s) {
  cl_send(cl, s, strlen(s));
}

/* tls_read is SSL_read with recv's answers: bytes, 0 when the server
 * closed (cl->tls_end says whether with close_notify), -1 on an error or
 * an alert (TLS_END_ERROR) or a timeout. */
static ssize_t tls_read(struct client *cl, void *p, size_t want) {
  ERR_clear_error();
  int n = SSL_read(cl->ssl, p, (int)want);
  int saved = errno;
  if (n > 0)
    return n;
  int e = SSL_get_error(cl->ssl, n);
  unsigned long le = ERR_peek_error();
  ERR_clear_error();
  if (e == SSL_ERROR_ZERO_RETURN) {
    cl->tls_end = TLS_END_NOTIFY;
    return 0;
  }
  if ((e == SSL_ERROR_SSL &&
       ERR_GET_REASON(le) == SSL_R_UNEXPECTED_EOF_WHILE_READING) ||
      (e == SSL_ERROR_SYSCALL && (saved == ECONNRESET || saved == EPIPE))) {
    cl->tls_end = TLS_END_CUT;
    return 0;
  }
  if (e != SSL_ERROR_WANT_READ)
    cl->tls_end = TLS_END_ERROR;
  return -1;
}

/* cl_fill reads more; returns bytes read, 0 on EOF, -1 on error/timeout. */
static ssize_t cl_fill(struct client *cl) {
  if (cl->cap - cl->len < 65536) {
    cl->cap *= 2;
    cl->buf = realloc(cl->buf, cl->cap);
  }
  size_t want = cl->cap - cl->len - 1;
  if (cl->max_read && want > cl->max_read)
    want = cl->max_read;
  ssize_t n = cl->ssl ? tls_read(cl, cl->buf + cl->len, want)
                      : recv(cl->fd, cl->buf + cl->len, want, 0);
  if (n > 0)
    cl->len += (size_t)n;
  return n < 0 ? -1 : n;
}

static void cl_consume(struct client *cl, size_t n) {
  memmove(cl->buf, cl->buf + n, cl->len - n);
  cl->len -= n;
}

struct resp {
  int status;
  char head[8192];
  char *body;     /* decoded */
  size_t body_len;
  char *raw;      /* body bytes as on the wire */
  size_t raw_len;
};

static void resp_free(struct resp *r) {
  free(r->body);
  free(r->raw);
  memset(r, 0, sizeof *r);
}

/* resp_header copies the value of header `name` into out; 0 if absent. */
static int resp_header(const struct resp *r, const char *name, char *out,
                       size_t cap) {
  size_t nl = strlen(name);
  const char *line = strstr(r->head, "\r\n");
  while (line && line[2] != '\r') {
    line += 2;
    const char *eol = strstr(line, "\r\n");
    if (!eol)
      break;
    if ((size_t)(eol - line) > nl && strncasecmp(line, name, nl) == 0 &&
        line[nl] == ':') {
      const char *v = line + nl + 1;
      while (*v == ' ')
        v++;
      size_t vl = (size_t)(eol - v);
      if (vl >= cap)
        vl = cap - 1;
      memcpy(out, v, vl);
      out[vl] = '\0';
      return 1;
    }
    line = eol;
  }
  return 0;
}

static int cl_need(struct client *cl, size_t n) {
  while (cl->len < n)
    if (cl_fill(cl) <= 0)
      return -1;
  return 0;
}

/* cl_read_resp reads one response; no_body for HEAD. -1 if the connection
 * ended before a full response. */
static int cl_read_resp(struct client *cl, struct resp *r, int no_body) {
  memset(r, 0, sizeof *r);
  char *end;
  for (;;) {
    cl->buf[cl->len] = '\0';
    end = cl->len ? strstr(cl->buf, "\r\n\r\n") : NULL;
    if (end)
      break;
    if (cl_fill(cl) <= 0)
      return -1;
  }
  size_t hl = (size_t)(end - cl->buf) + 4;
  assert_true(hl < sizeof r->head);
  memcpy(r->head, cl->buf, hl);
  r->head[hl] = '\0';
  cl_consume(cl, hl);
  if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1)
    return -1;
  char v[64];
  if (no_body)
    return 0;
  if (resp_header(r, "Content-Length", v, sizeof v)) {
    size_t n = strtoull(v, NULL, 10);
    if (cl_need(cl, n) < 0)
      return -1;
    r->body = malloc(n + 1);
    memcpy(r->body, cl->buf, n);
    r->body[n] = '\0';
    r->body_len = n;
    cl_consume(cl, n);
    return 0;
  }
  if (resp_header(r, "Transfer-Encoding", v, sizeof v)) {
    assert_string_equal(v, "chunked");
    size_t pos = 0, out = 0;
    r->body = malloc(1);
    for (;;) {
      char *eol;
      for (;;) {
        cl->buf[cl->len] = '\0';
        eol = strstr(cl->buf + pos, "\r\n");
        if (eol)
          break;
        if (cl_fill(cl) <= 0)
          return -1;
      }
      size_t sz = strtoull(cl->buf + pos, NULL, 16);
      pos = (size_t)(eol - cl->buf) + 2;
      if (cl_need(cl, pos + sz + 2) < 0)
        return -1;
      assert_memory_equal(cl->buf + pos + sz, "\r\n", 2);
      r->body = realloc(r->body, out + sz + 1);
      memcpy(r->body + out, cl->buf + pos, sz);
      out += sz;
      pos += sz + 2;
      if (sz == 0)
        break;
    }
    r->body[out] = '\0';
    r->body_len = out;
    r->raw = malloc(pos + 1);
    memcpy(r->raw, cl->buf, pos);
    r->raw[pos] = '\0';
    r->raw_len = pos;
    cl_consume(cl, pos);
    return 0;
  }
  /* delimited by close */
  while (cl_fill(cl) > 0)
    ;
  r->body = malloc(cl->len + 1);
  memcpy(r->body, cl->buf, cl->len);
  r->body[cl->len] = '\0';
  r->body_len = cl->len;
  cl->len = 0;
  return 0;
}

/* cl_wait_eof: 1 when the server closed (EOF or reset) with no further
 * bytes, 0 on extra data or timeout. */
static int cl_wait_eof(struct client *cl) {
  char c;
  if (cl->ssl)
    return tls_read(cl, &c, 1) == 0;
  ssize_t n = recv(cl->fd, &c, 1, 0);
  if (n == 0)
    return 1;
  if (n < 0 && errno == ECONNRESET)
    return 1;
  return 0;
}

static void get_ok(struct client *cl, const char *req, const char *body) {
  struct resp r;
  cl_sends(cl, req);
  assert_int_equal(cl_read_resp(cl, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, body);
  resp_free(&r);
}

static int wait_for(atomic_int *v, int want, unsigned ms) {
  uint64_t end = now_ms() + ms;
  while (atomic_load(v) != want && now_ms() < end)
    sleep_ms(5);
  return atomic_load(v) == want;
}

/* fetch_stats asks the server itself, so the counters are read on its loop */
static void fetch_stats(struct http_server_stats *st) {
  struct client cl;
  struct resp r;
  unsigned long long open, total, requests, tls, timeouts, bad, hs, hserr, tf, off;
  cl_open(&cl);
  cl_sends(&cl, "GET /stats HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(sscanf(r.body,
                          "open=%llu total=%llu requests=%llu tls=%llu "
                          "timeouts=%llu bad=%llu hs=%llu hserr=%llu tlsfile=%llu "
                          "offloop=%llu",
                          &open, &total, &requests, &tls, &timeouts, &bad, &hs,
                          &hserr, &tf, &off),
                   10);
  st->file_reads_offloop = off;
  st->connections_open = open;
  st->connections_total = total;
  st->requests_total = requests;
  st->tls_rejected = tls;
  st->timeouts = timeouts;
  st->bad_requests = bad;
  st->tls_handshakes = hs;
  st->tls_handshake_errors = hserr;
  st->tls_file_bytes = tf;
  resp_free(&r);
  cl_close(&cl);
}

/* ---- tests ---- */

static void test_get_simple(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  char v[128];
  cl_open(&cl);
  cl_sends(&cl, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_true(strncmp(r.head, "HTTP/1.1 200 OK\r\n", 17) == 0);
  assert_string_equal(r.body, "hello world\n");
  assert_true(resp_header(&r, "Content-Type", v, sizeof v));
  assert_string_equal(v, "text/plain");
  assert_true(resp_header(&r, "X-Test", v, sizeof v));
  assert_string_equal(v, "yes");
  assert_true(resp_header(&r, "Content-Length", v, sizeof v));
  assert_string_equal(v, "12"); /* the handler's own Content-Length is dropped */
  assert_true(resp_header(&r, "Connection", v, sizeof v));
  assert_string_equal(v, "keep-alive");
  assert_true(resp_header(&r, "Date", v, sizeof v));
  assert_true(strstr(v, " GMT") != NULL);
  assert_null(strstr(r.head, "999"));
  resp_free(&r);
  cl_close(&cl);
}

static void test_keep_alive(void **state) {
  (void)state;
  struct client cl;
  cl_open(&cl);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  get_ok(&cl, "GET /info?a=b HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\r\n",
         "method=GET path=/info query=a=b n=2 x-a=1 x-b=-,-,-");
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&cl);
}

static void test_pipelined(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  cl_open(&cl);
  cl_sends(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
                "POST /push HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nabcde"
                "PUT /chunky HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                "3\r\nabc\r\n0\r\n\r\n"
                "GET /info?x=1 HTTP/1.1\r\nHost: t\r\nX-B: one\r\nX-B: two\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "hello world\n");
  resp_free(&r);
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 404);
  resp_free(&r);
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 404);
  resp_free(&r);
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body,
                      "method=GET path=/info query=x=1 n=3 x-a=- x-b=one,two,-");
  resp_free(&r);
  cl_close(&cl);
}

static void test_pipelined_behind_slow(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  cl_open(&cl);
  cl_sends(&cl, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_string_equal(r.body, "slow done\n");
  resp_free(&r);
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_string_equal(r.body, "hello world\n");
  resp_free(&r);
  assert_int_equal(atomic_load(&g_close_calls), 0);
  cl_close(&cl);
}

/* Draining closes the idle connection at once, lets the one in service
 * finish (with Connection: close), refuses new ones, and calls back when
 * the last is gone. */
static void test_drain(void **state) {
  (void)state;
  struct client idle, busy, ctl;
  struct resp r;
  char v[64];
  cl_open(&idle);
  get_ok(&idle, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_open(&busy);
  cl_sends(&busy, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
  sleep_ms(50); /* /slow is in service */
  cl_open(&ctl);
  cl_sends(&ctl, "GET /drain HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&ctl, &r, 0), 0);
  assert_string_equal(r.body, "draining");
  assert_true(resp_header(&r, "Connection", v, sizeof v));
  assert_string_equal(v, "close");
  resp_free(&r);
  assert_true(cl_wait_eof(&ctl));
  assert_true(cl_wait_eof(&idle));
  assert_int_equal(atomic_load(&g_drained), 0);

  assert_int_equal(cl_read_resp(&busy, &r, 0), 0);
  assert_string_equal(r.body, "slow done\n");
  assert_true(resp_header(&r, "Connection", v, sizeof v));
  assert_string_equal(v, "close");
  resp_free(&r);
  assert_true(cl_wait_eof(&busy));
  assert_true(wait_for(&g_drained, 1, 3000));
  assert_int_equal(atomic_load(&g_close_calls), 0); /* finished, not cut */

  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_srv.port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_true(connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0);
  close(fd);
  cl_close(&idle);
  cl_close(&busy);
  cl_close(&ctl);
}

static void test_fragmented_head(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  const char *req = "GET /info?q=%20x HTTP/1.1\r\nHost: t\r\nX-A: va lue\r\nX-B:\r\n"
                    "X-B: 2\r\nX-B: 3\r\n\r\n";
  cl_open(&cl);
  for (const char *p = req; *p; p++) {
    cl_send(&cl, p, 1);
    if ((p - req) % 7 == 0)
      sleep_ms(1);
  }
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_string_equal(r.body,
                      "method=GET path=/info query=q=%20x n=5 x-a=va lue x-b=,2,3");
  resp_free(&r);
  cl_close(&cl);
}

static void test_absolute_form(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  cl_open(&cl);
  get_ok(&cl, "GET http://mirror:5000/info?k=v#frag HTTP/1.1\r\nHost: t\r\n\r\n",
         "method=GET path=/info query=k=v n=1 x-a=- x-b=-,-,-");
  cl_sends(&cl, "GET http://mirror:5000 HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 400);
  assert_true(cl_wait_eof(&cl));
  resp_free(&r);
  cl_close(&cl);

  cl_open(&cl);
  cl_sends(&cl, "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 400);
  resp_free(&r);
  cl_close(&cl);
}

static void test_head(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  char v[64];
  cl_open(&cl);
  cl_sends(&cl, "HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 1), 0);
  assert_int_equal(r.status, 200);
  assert_true(resp_header(&r, "Content-Length", v, sizeof v));
  assert_string_equal(v, "12");
  resp_free(&r);
  /* no body followed: the next bytes are the next response */
  cl_sends(&cl, "HEAD /file HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 1), 0);
  assert_true(resp_header(&r, "Content-Length", v, sizeof v));
  assert_int_equal(strtoull(v, NULL, 10), FILE_SIZE);
  resp_free(&r);
  cl_sends(&cl, "HEAD /chunked HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 1), 0);
  assert_int_equal(r.status, 200);
  resp_free(&r);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&cl);
}

static void test_sendfile(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  cl_open(&cl);
  cl_sends(&cl, "GET /file HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.body_len, FILE_SIZE);
  assert_memory_equal(r.body, g_file, FILE_SIZE);
  resp_free(&r);

  cl_sends(&cl, "GET /file?part HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.body_len, 70000);
  assert_memory_equal(r.body, g_file + 1000, 70000);
  resp_free(&r);

  cl_sends(&cl, "GET /file?chunked HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.body_len, FILE_SIZE);
  assert_memory_equal(r.body, g_file, FILE_SIZE);
  char frame[32];
  int fl = snprintf(frame, sizeof frame, "%x\r\n", FILE_SIZE);
  assert_memory_equal(r.raw, frame, (size_t)fl);
  assert_int_equal(r.raw_len, (size_t)fl + FILE_SIZE + 2 + 5);
  resp_free(&r);

  /* the handler may end before the sendfile finished */
  cl_sends(&cl, "GET /file?chunked-end HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.body_len, FILE_SIZE);
  assert_memory_equal(r.body, g_file, FILE_SIZE);
  resp_free(&r);
  cl_sends(&cl, "GET /file?plain-end HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.body_len, FILE_SIZE);
  assert_memory_equal(r.body, g_file, FILE_SIZE);
  resp_free(&r);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");

  /* a file shorter than promised: the connection is cut, not left hanging */
  cl_sends(&cl, "GET /file?short HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 1), 0);
  while (cl_fill(&cl) > 0)
    ;
  assert_int_equal(cl.len, FILE_SIZE);
  resp_free(&r);
  cl_close(&cl);
}

static void test_chunked(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  char v[64];
  cl_open(&cl);
  cl_sends(&cl, "GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_true(resp_header(&r, "Transfer-Encoding", v, sizeof v));
  assert_false(resp_header(&r, "Content-Length", v, sizeof v));
  assert_string_equal(r.raw, "a\r\nfirst part\r\nb\r\nsecond part\r\n0\r\n\r\n");
  assert_string_equal(r.body, "first partsecond part");
  resp_free(&r);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&cl);
}

static void test_http10(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  char v[64];
  cl_open(&cl);
  cl_sends(&cl, "GET /hello HTTP/1.0\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_true(resp_header(&r, "Connection", v, sizeof v));
  assert_string_equal(v, "close");
  assert_true(cl_wait_eof(&cl));
  resp_free(&r);
  cl_close(&cl);

  /* unknown length on HTTP/1.0: the body ends with the connection */
  cl_open(&cl);
  cl_sends(&cl, "GET /chunked HTTP/1.0\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_false(resp_header(&r, "Transfer-Encoding", v, sizeof v));
  assert_string_equal(r.body, "first partsecond part");
  resp_free(&r);
  cl_close(&cl);

  cl_open(&cl);
  cl_sends(&cl, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_true(resp_header(&r, "Connection", v, sizeof v));
  assert_string_equal(v, "keep-alive");
  resp_free(&r);
  get_ok(&cl, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
         "hello world\n");
  cl_close(&cl);
}

static void test_connection_close(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  char v[64];
  cl_open(&cl);
  /* the second request must not be served after Connection: close */
  cl_sends(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_true(resp_header(&r, "Connection", v, sizeof v));
  assert_string_equal(v, "close");
  assert_true(cl_wait_eof(&cl));
  resp_free(&r);
  cl_close(&cl);
}

static void test_too_large_head(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  char *big = malloc(9000);
  cl_open(&cl);
  strcpy(big, "GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: ");
  size_t n = strlen(big);
  memset(big + n, 'a', 8000);
  strcpy(big + n + 8000, "\r\n\r\n");
  cl_sends(&cl, big);
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 431);
  assert_true(cl_wait_eof(&cl));
  resp_free(&r);
  cl_close(&cl);

  /* a long URL counts too */
  cl_open(&cl);
  strcpy(big, "GET /");
  memset(big + 5, 'u', 5000);
  strcpy(big + 5005, " HTTP/1.1\r\nHost: t\r\n\r\n");
  cl_sends(&cl, big);
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 431);
  resp_free(&r);
  cl_close(&cl);

  /* too many headers */
  cl_open(&cl);
  strcpy(big, "GET /hello HTTP/1.1\r\nHost: t\r\n");
  for (int i = 0; i < 40; i++)
    sprintf(big + strlen(big), "H%d: v\r\n", i);
  strcat(big, "\r\n");
  cl_sends(&cl, big);
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 431);
  resp_free(&r);
  cl_close(&cl);

  /* exactly at both limits is fine: 32 headers, 4096 bytes */
  cl_open(&cl);
  strcpy(big, "GET /hello HTTP/1.1\r\nHost: t\r\n");
  for (int i = 0; i < 30; i++)
    sprintf(big + strlen(big), "H%d: v\r\n", i);
  n = strlen(big);
  strcpy(big + n, "X: ");
  memset(big + n + 3, 'b', 4096 - n - 3 - 4);
  strcpy(big + 4096 - 4, "\r\n\r\n");
  assert_int_equal(strlen(big), 4096);
  get_ok(&cl, big, "hello world\n");
  cl_close(&cl);
  free(big);
}

static void test_body_limits(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  cl_open(&cl);
  cl_sends(&cl, "PUT /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 413);
  resp_free(&r);
  cl_close(&cl);

  /* chunked body over the cap */
  cl_open(&cl);
  cl_sends(&cl, "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
  char *chunk = malloc(20000);
  memset(chunk, 'z', 20000);
  for (int i = 0; i < 4; i++) {
    cl_sends(&cl, "4e20\r\n");
    cl_send(&cl, chunk, 20000);
    cl_sends(&cl, "\r\n");
  }
  free(chunk);
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 413);
  resp_free(&r);
  cl_close(&cl);

  /* smuggling shape: both Content-Length and chunked */
  cl_open(&cl);
  cl_sends(&cl, "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 400);
  resp_free(&r);
  cl_close(&cl);
}

static void test_garbage(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  cl_open(&cl);
  cl_sends(&cl, "\x01\x02 hello there\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 400);
  assert_true(strncmp(r.head, "HTTP/1.1 400 Bad Request\r\n", 26) == 0);
  assert_true(cl_wait_eof(&cl));
  resp_free(&r);
  cl_close(&cl);

  cl_open(&cl);
  cl_sends(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\nBad Header Line\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 400);
  resp_free(&r);
  cl_close(&cl);

  /* random bytes on a few connections: a response or a close, never a hang */
  srand(1234);
  for (int i = 0; i < 20; i++) {
    unsigned char junk[512];
    size_t n = 1 + (size_t)rand() % sizeof junk;
    for (size_t k = 0; k < n; k++)
      junk[k] = (unsigned char)rand();
    if (junk[0] == 0x16)
      junk[0] = 'G';
    cl_open(&cl);
    cl_send(&cl, junk, n);
    cl_sends(&cl, "\r\n\r\n");
    int rc = cl_read_resp(&cl, &r, 0);
    if (rc == 0) {
      assert_true(r.status == 400 || r.status == 404 || r.status == 431 ||
                  r.status == 413 || r.status == 408);
      resp_free(&r);
    }
    cl_close(&cl);
  }
  /* the server is still fine */
  cl_open(&cl);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&cl);
}

static void test_tls_probe(void **state) {
  (void)state;
  static const char want[] =
      "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n"
      "Connection: close\r\n\r\n"
      "Client sent a TLS handshake to a plain HTTP port.\n";
  struct client cl;
  struct http_server_stats st;
  unsigned char hello[300] = {0x16, 0x03, 0x01, 0x01, 0x27, 0x01, 0x00};
  cl_open(&cl);
  cl_send(&cl, hello, sizeof hello);
  while (cl_fill(&cl) > 0)
    ;
  assert_int_equal(cl.len, sizeof want - 1);
  assert_memory_equal(cl.buf, want, sizeof want - 1);
  cl_close(&cl);
  fetch_stats(&st);
  assert_int_equal(st.tls_rejected, 1);
}

static void test_header_timeout(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  struct http_server_stats st;
  /* slowloris: a byte every 50 ms never completes the head */
  cl_open(&cl);
  uint64_t t0 = now_ms();
  const char *head = "GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
  const char *p = head;
  while (*p && now_ms() - t0 < 1000) {
    if (send(cl.fd, p++, 1, MSG_NOSIGNAL) != 1)
      break;
    sleep_ms(50);
    struct timeval tv = {0, 0};
    fd_set rf;
    FD_ZERO(&rf);
    FD_SET(cl.fd, &rf);
    if (select(cl.fd + 1, &rf, NULL, NULL, &tv) > 0)
      break;
  }
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  uint64_t dt = now_ms() - t0;
  assert_int_equal(r.status, 408);
  assert_true(dt >= 250);
  assert_true(dt < 1500);
  assert_true(cl_wait_eof(&cl));
  resp_free(&r);
  cl_close(&cl);

  /* nothing at all: closed without a word */
  cl_open(&cl);
  t0 = now_ms();
  assert_int_equal(cl_fill(&cl), 0);
  dt = now_ms() - t0;
  assert_true(dt >= 250);
  assert_true(dt < 1500);
  cl_close(&cl);

  fetch_stats(&st);
  assert_int_equal(st.timeouts, 2);
}

static void test_idle_timeout(void **state) {
  (void)state;
  struct client cl;
  cl_open(&cl);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  uint64_t t0 = now_ms();
  assert_int_equal(cl_fill(&cl), 0);
  uint64_t dt = now_ms() - t0;
  assert_true(dt >= 500);
  assert_true(dt < 2000);
  cl_close(&cl);
}

static void test_hangup_during_slow(void **state) {
  (void)state;
  struct client cl;
  cl_open(&cl);
  cl_sends(&cl, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
  sleep_ms(50);
  cl_close(&cl);
  assert_true(wait_for(&g_close_calls, 1, 2000));
  assert_true(wait_for(&g_slow_done, 1, 2000));
  assert_true(atomic_load(&g_slow_rc) < 0);
  sleep_ms(20);
  assert_int_equal(atomic_load(&g_close_calls), 1);
  /* and the server goes on */
  cl_open(&cl);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&cl);
}

static void test_close_while_slow(void **state) {
  (void)state;
  /* the server shuts down with a request in service: the handler gets its
   * close callback and its late end is harmless (teardown checks the rest) */
  struct client cl;
  cl_open(&cl);
  cl_sends(&cl, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
  sleep_ms(50);
  server_stop();
  assert_true(wait_for(&g_close_calls, 1, 2000));
  assert_true(wait_for(&g_slow_done, 1, 2000));
  assert_true(wait_for(&g_srv.closed, 1, 2000));
  cl_close(&cl);
}

static void test_send_timeout(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  struct http_server_stats st;
  cl_open_opts(&cl, 4096);
  cl_sends(&cl, "GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 1), 0);
  resp_free(&r);
  /* never read: the server must give up after about send_timeout_ms */
  assert_true(wait_for(&g_big_failed, UV_ECANCELED, 5000));
  cl_close(&cl);
  fetch_stats(&st);
  assert_int_equal(st.timeouts, 1);
}

static void test_abort(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  cl_open(&cl);
  cl_sends(&cl, "GET /abort HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), -1); /* 10 of 100 bytes */
  assert_int_equal(r.status, 200);
  resp_free(&r);
  cl_close(&cl);

  cl_open(&cl);
  cl_sends(&cl, "GET /noresp HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 500);
  assert_true(cl_wait_eof(&cl));
  resp_free(&r);
  cl_close(&cl);

  cl_open(&cl);
  get_ok(&cl, "GET /badheader HTTP/1.1\r\nHost: t\r\n\r\n", "rc=-22");
  cl_close(&cl);
}

static void test_max_connections(void **state) {
  (void)state;
  struct client a, b, c;
  cl_open(&a);
  cl_open(&b);
  get_ok(&a, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  get_ok(&b, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_open(&c); /* the kernel accepts; the server closes it at once */
  uint64_t t0 = now_ms();
  assert_true(cl_wait_eof(&c));
  assert_true(now_ms() - t0 < 250);
  cl_close(&c);
  cl_close(&a);
  cl_close(&b);
  sleep_ms(100);
  cl_open(&c);
  get_ok(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&c);
}

/* A listener with its own budget (the admin one) is served while the
 * shared budget is spent, and keeps to its own. */
static void test_listener_budget(void **state) {
  (void)state;
  struct client a, b, adm, adm2;
  cl_open(&a);
  cl_open(&b);
  get_ok(&a, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  get_ok(&b, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_open_port(&adm, g_srv.budget_port, 0);
  get_ok(&adm, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_open_port(&adm2, g_srv.budget_port, 0); /* over its budget of 1 */
  assert_true(cl_wait_eof(&adm2));
  cl_close(&adm2);
  cl_close(&adm);
  cl_close(&a);
  cl_close(&b);
}

/* RFC 9112 where http_parser is lenient. */
static void expect_status(const char *req, int status) {
  struct client cl;
  struct resp r;
  cl_open(&cl);
  cl_sends(&cl, req);
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  if (r.status != status)
    print_error("%s -> %d, want %d\n", req, r.status, status);
  assert_int_equal(r.status, status);
  resp_free(&r);
  cl_close(&cl);
}

static void test_rfc9112(void **state) {
  (void)state;
  /* whitespace before the colon: a smuggling vector behind a front proxy */
  expect_status("GET /hello HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\nhello", 400);
  expect_status("GET /hello HTTP/1.1\r\nHost: t\r\nX-A\t: 1\r\n\r\n", 400);
  /* Host: required once on 1.1, optional on 1.0, never twice */
  expect_status("GET /hello HTTP/1.1\r\n\r\n", 400);
  expect_status("GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
  expect_status("GET /hello HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", 400);
  expect_status("GET /hello HTTP/1.0\r\n\r\n", 200);
  /* versions */
  expect_status("GET /hello HTTP/2.0\r\nHost: t\r\n\r\n", 505);
  expect_status("GET /hello HTTP/3.1\r\nHost: t\r\n\r\n", 505);
  expect_status("GET /hello\r\nHost: t\r\n\r\n", 400);
  /* expectations: only 100-continue */
  expect_status("GET /hello HTTP/1.1\r\nHost: t\r\nExpect: tea\r\n\r\n", 417);
  expect_status("GET /hello HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\r\n", 200);

  /* 100 Continue comes before the body is sent, then the answer */
  struct client cl;
  struct resp r;
  cl_open(&cl);
  cl_sends(&cl, "POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                "Expect: 100-continue\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 1), 0);
  assert_int_equal(r.status, 100);
  resp_free(&r);
  cl_sends(&cl, "hello");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 200);
  resp_free(&r);
  cl_close(&cl);
}

static void test_access_log(void **state) {
  (void)state;
  char path[] = "/tmp/rm_http_log_XXXXXX";
  int lfd = mkstemp(path);
  assert_true(lfd >= 0);
  int saved = dup(STDERR_FILENO);
  dup2(lfd, STDERR_FILENO);
  log_set_level(LOG_INFO);
  struct client cl;
  cl_open(&cl);
  get_ok(&cl, "GET /hello?x=\"y\" HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&cl);
  sleep_ms(50);
  log_set_level(LOG_WARN);
  dup2(saved, STDERR_FILENO);
  close(saved);
  char buf[4096] = "";
  ssize_t n = pread(lfd, buf, sizeof buf - 1, 0);
  assert_true(n > 0);
  close(lfd);
  unlink(path);
  const char *line = strstr(buf, "access id=");
  assert_non_null(line);
  assert_non_null(strstr(line, " remote=127.0.0.1:"));
  assert_non_null(strstr(line, "\"GET /hello?x=\\x22y\\x22\" status=200 bytes=12 ms="));
  assert_non_null(strstr(line, " src=test"));
}

/* stress: client threads doing random things - complete requests,
 * hang-ups at every stage, garbage, pipelining without reading. The server
 * must stay up and, once the clients are gone, hold no connection. */
static void stress_once(unsigned *seed) {
  static const char *reqs[] = {
      "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n",
      "HEAD /file HTTP/1.1\r\nHost: t\r\n\r\n",
      "GET /file HTTP/1.1\r\nHost: t\r\n\r\n",
      "GET /file?chunked HTTP/1.1\r\nHost: t\r\n\r\n",
      "GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n",
      "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n",
      "GET /big HTTP/1.1\r\nHost: t\r\n\r\n",
      "GET /info?a HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\r\n",
      "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nabcd",
      "GET /abort HTTP/1.1\r\nHost: t\r\n\r\n",
      "GET /hello HTTP/1.0\r\n\r\n",
      "\x16\x03\x01garbage",
      "GET /hel",
      "\r\n\r\nxx yy zz\r\n\r\n",
  };
  const size_t nreq = sizeof reqs / sizeof reqs[0];
  struct client cl;
  cl_open(&cl);
  int n = 1 + (int)(rand_r(seed) % 4);
  for (int i = 0; i < n; i++) {
    const char *r = reqs[rand_r(seed) % nreq];
    size_t len = strlen(r);
    if (rand_r(seed) % 3 == 0) {
      /* split at a random point */
      size_t cut = (size_t)rand_r(seed) % len;
      if (send(cl.fd, r, cut, MSG_NOSIGNAL) < 0)
        break;
      sleep_ms((unsigned)(rand_r(seed) % 3));
      r += cut;
      len -= cut;
    }
    if (send(cl.fd, r, len, MSG_NOSIGNAL) < 0)
      break;
  }
  switch (rand_r(seed) % 4) {
  case 0: /* hang up at once */
    break;
  case 1: /* read a little */
    cl_fill(&cl);
    break;
  case 2: { /* read for a short while */
    struct timeval tv = {0, 20000};
    setsockopt(cl.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while (cl_fill(&cl) > 0 && cl.len < (1 << 20))
      cl.len = 0;
    break;
  }
  case 3: /* half-close, then read until the server is done */
    shutdown(cl.fd, SHUT_WR);
    {
      struct timeval tv = {0, 200000};
      setsockopt(cl.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    while (cl_fill(&cl) > 0)
      cl.len = 0;
    break;
  }
  if (rand_r(seed) % 2) {
    /* abortive close: RST instead of FIN */
    struct linger lg = {1, 0};
    setsockopt(cl.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  cl_close(&cl);
}

static void *stress_thread(void *arg) {
  unsigned seed = (unsigned)(uintptr_t)arg;
  uint64_t end = now_ms() + 1500;
  while (now_ms() < end)
    stress_once(&seed);
  return NULL;
}

static void test_stress(void **state) {
  (void)state;
  pthread_t th[6];
  for (unsigned i = 0; i < 6; i++)
    pthread_create(&th[i], NULL, stress_thread, (void *)(uintptr_t)(i + 7));
  for (unsigned i = 0; i < 6; i++)
    pthread_join(th[i], NULL);
  /* /slow answers after 300 ms, lingering closes end on the clients' FIN */
  struct http_server_stats st;
  uint64_t end = now_ms() + 3000;
  do {
    sleep_ms(100);
    fetch_stats(&st);
  } while (st.connections_open != 1 && now_ms() < end);
  assert_int_equal(st.connections_open, 1);
  assert_true(st.connections_total > 50);
  struct client cl;
  cl_open(&cl);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&cl);
}

static void on_flag(void *ud) { *(int *)ud = 1; }

static void test_listen_addresses(void **state) {
  (void)state;
  uv_loop_t loop;
  struct http_server *srv;
  int closed = 0;
  uv_loop_init(&loop);
  assert_int_equal(http_server_new(&srv, &loop, NULL, handler, NULL), 0);
  assert_int_equal(http_server_listen(srv, "127.0.0.1:0", 1), 0);
  int port = http_server_bound_port(srv, 1);
  assert_true(port > 0);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  assert_int_equal(http_server_listen(srv, addr, 2), UV_EADDRINUSE);
  assert_int_equal(http_server_listen(srv, "bogus", 3), UV_EINVAL);
  assert_int_equal(http_server_listen(srv, "localhost:80", 3), UV_EINVAL);
  assert_int_equal(http_server_listen(srv, "127.0.0.1:99999", 3), UV_EINVAL);
  assert_int_equal(http_server_listen(srv, "127.0.0.1:", 3), UV_EINVAL);
  assert_int_equal(http_server_listen(srv, "[::1:80", 3), UV_EINVAL);
  assert_int_equal(http_server_listen(srv, "::1:80", 3), UV_EINVAL);
  int rc = http_server_listen(srv, "[::1]:0", 4);
  assert_true(rc == 0 || rc == UV_EADDRNOTAVAIL || rc == UV_EAFNOSUPPORT);
  if (rc == 0)
    assert_true(http_server_bound_port(srv, 4) > 0);
  assert_int_equal(http_server_bound_port(srv, 99), UV_ENOENT);
  http_server_close(srv, on_flag, &closed);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(closed, 1);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- a throwaway PKI ---- */

enum cert_kind { CERT_CA, CERT_SERVER, CERT_CLIENT };

/* The CA signs two server certificates (SAN IP 127.0.0.1; the second is
 * what /swap installs) and a client certificate; "rogue" is a client
 * certificate that signs itself. Files live in dir until group_teardown. */
struct pki {
  char dir[64];
  EVP_PKEY *ca_key, *srv_key, *cli_key, *rogue_key;
  X509 *ca, *srv, *srv2, *cli, *rogue;
};

static struct pki g_pki;

#define SERIAL_SRV 1001
#define SERIAL_SRV2 1002

static int cert_ext(X509 *x, X509 *issuer, int nid, const char *value) {
  X509V3_CTX v;
  X509V3_set_ctx_nodb(&v);
  X509V3_set_ctx(&v, issuer, x, NULL, NULL, 0);
  X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v, nid, value);
  if (!e)
    return -1;
  int ok = X509_add_ext(x, e, -1);
  X509_EXTENSION_free(e);
  return ok ? 0 : -1;
}

/* cert_make: a certificate for key, signed by issuer_key (self-signed when
 * issuer is NULL); NULL on failure. */
static X509 *cert_make(EVP_PKEY *key, long serial, const char *cn,
                       enum cert_kind kind, X509 *issuer, EVP_PKEY *issuer_key) {
  X509 *x = X509_new();
  if (!x)
    return NULL;
  X509_NAME *name = X509_get_subject_name(x);
  int ok = X509_set_version(x, 2) &&
           ASN1_INTEGER_set(X509_get_serialNumber(x), serial) &&
           X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
           X509_gmtime_adj(X509_getm_notAfter(x), 86400) &&
           X509_set_pubkey(x, key) &&
           X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                      (const unsigned char *)"regmesh test", -1,
                                      -1, 0) &&
           X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                      (const unsigned char *)cn, -1, -1, 0) &&
           X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
  X509 *iss = issuer ? issuer : x;
  if (ok)
    ok = cert_ext(x, iss, NID_subject_key_identifier, "hash") == 0 &&
         cert_ext(x, iss, NID_authority_key_identifier, "keyid:always") == 0;
  if (ok && kind == CERT_CA)
    ok = cert_ext(x, iss, NID_basic_constraints, "critical,CA:TRUE") == 0 &&
         cert_ext(x, iss, NID_key_usage, "critical,keyCertSign,cRLSign") == 0;
  if (ok && kind != CERT_CA)
    ok = cert_ext(x, iss, NID_basic_constraints, "critical,CA:FALSE") == 0 &&
         cert_ext(x, iss, NID_key_usage, "critical,digitalSignature") == 0 &&
         cert_ext(x, iss, NID_ext_key_usage,
                  kind == CERT_SERVER ? "serverAuth" : "clientAuth") == 0;
  if (ok && kind == CERT_SERVER)
    ok = cert_ext(x, iss, NID_subject_alt_name, "IP:127.0.0.1") == 0;
  if (ok)
    ok = X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0;
  if (!ok) {
    X509_free(x);
    return NULL;
  }
  return x;
}

static int pki_write(const char *dir, const char *file, X509 *x, EVP_PKEY *k) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  FILE *f = fopen(path, "w");
  if (!f)
    return -1;
  int ok = x ? PEM_write_X509(f, x) : PEM_write_PrivateKey(f, k, NULL, NULL, 0,
                                                           NULL, NULL);
  return fclose(f) == 0 && ok ? 0 : -1;
}

static int pki_ctx(SSL_CTX **out, const char *cert, const char *key,
                   const char *ca) {
  char c[256], k[256], a[256], err[256];
  snprintf(c, sizeof c, "%s/%s", g_pki.dir, cert);
  snprintf(k, sizeof k, "%s/%s", g_pki.dir, key);
  snprintf(a, sizeof a, "%s/%s", g_pki.dir, ca ? ca : "");
  int rc = tlsctx_server_new(out, c, k, ca ? a : NULL, TLSCTX_MIN_TLS12, err,
                             sizeof err);
  if (rc != 0)
    fprintf(stderr, "tlsctx_server_new: %s\n", err);
  return rc;
}

static int pki_make(void) {
  struct pki *p = &g_pki;
  strcpy(p->dir, "/tmp/rm_http_tls_XXXXXX");
  if (!mkdtemp(p->dir))
    return -1;
  p->ca_key = EVP_EC_gen("P-256");
  p->srv_key = EVP_EC_gen("P-256");
  p->cli_key = EVP_EC_gen("P-256");
  p->rogue_key = EVP_EC_gen("P-256");
  if (!p->ca_key || !p->srv_key || !p->cli_key || !p->rogue_key)
    return -1;
  p->ca = cert_make(p->ca_key, 1, "regmesh test CA", CERT_CA, NULL, NULL);
  if (!p->ca)
    return -1;
  p->srv = cert_make(p->srv_key, SERIAL_SRV, "regmesh test server", CERT_SERVER,
                     p->ca, p->ca_key);
  p->srv2 = cert_make(p->srv_key, SERIAL_SRV2, "regmesh test server 2",
                      CERT_SERVER, p->ca, p->ca_key);
  p->cli = cert_make(p->cli_key, 2001, "regmesh test client", CERT_CLIENT, p->ca,
                     p->ca_key);
  p->rogue = cert_make(p->rogue_key, 3001, "regmesh rogue client", CERT_CLIENT,
                       NULL, NULL);
  if (!p->srv || !p->srv2 || !p->cli || !p->rogue)
    return -1;
  if (pki_write(p->dir, "ca.pem", p->ca, NULL) < 0 ||
      pki_write(p->dir, "srv.pem", p->srv, NULL) < 0 ||
      pki_write(p->dir, "srv2.pem", p->srv2, NULL) < 0 ||
      pki_write(p->dir, "srv.key", NULL, p->srv_key) < 0)
    return -1;
  if (pki_ctx(&g_ctx_a, "srv.pem", "srv.key", NULL) != 0 ||
      pki_ctx(&g_ctx_b, "srv2.pem", "srv.key", NULL) != 0 ||
      pki_ctx(&g_ctx_mtls, "srv.pem", "srv.key", "ca.pem") != 0)
    return -1;
  return 0;
}

static void pki_free(void) {
  static const char *files[] = {"ca.pem", "srv.pem", "srv2.pem", "srv.key"};
  struct pki *p = &g_pki;
  char path[256];
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", p->dir, files[i]);
    unlink(path);
  }
  if (p->dir[0])
    rmdir(p->dir);
  SSL_CTX_free(g_ctx_a);
  SSL_CTX_free(g_ctx_b);
  SSL_CTX_free(g_ctx_mtls);
  X509_free(p->ca);
  X509_free(p->srv);
  X509_free(p->srv2);
  X509_free(p->cli);
  X509_free(p->rogue);
  EVP_PKEY_free(p->ca_key);
  EVP_PKEY_free(p->srv_key);
  EVP_PKEY_free(p->cli_key);
  EVP_PKEY_free(p->rogue_key);
  memset(p, 0, sizeof *p);
}

/* ---- TLS client side ---- */

enum tcl_cert { TCL_NO_CERT, TCL_CLIENT_CERT, TCL_ROGUE_CERT };

/* tcl_ctx_new: a client context that verifies the server against the test
 * CA; versions 0 mean OpenSSL's defaults. */
static SSL_CTX *tcl_ctx_new(int min_version, int max_version, enum tcl_cert cert) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  assert_non_null(ctx);
  assert_int_equal(X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), g_pki.ca), 1);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  if (min_version)
    assert_int_equal(SSL_CTX_set_min_proto_version(ctx, min_version), 1);
  if (max_version)
    assert_int_equal(SSL_CTX_set_max_proto_version(ctx, max_version), 1);
  if (cert == TCL_CLIENT_CERT) {
    assert_int_equal(SSL_CTX_use_certificate(ctx, g_pki.cli), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(ctx, g_pki.cli_key), 1);
  } else if (cert == TCL_ROGUE_CERT) {
    assert_int_equal(SSL_CTX_use_certificate(ctx, g_pki.rogue), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(ctx, g_pki.rogue_key), 1);
  }
  return ctx;
}

/* tcl_open_alpn connects to port and runs the handshake, checking the
 * server's certificate for IP 127.0.0.1. 1 on success, else what
 * SSL_connect returned; cl must be closed either way. */
static int tcl_open_opts(struct client *cl, int port, SSL_CTX *ctx,
                         const char *alpn, size_t alpn_len, int rcvbuf) {
  cl_open_port(cl, port, rcvbuf);
  cl->ssl = SSL_new(ctx);
  assert_non_null(cl->ssl);
  assert_int_equal(SSL_set_fd(cl->ssl, cl->fd), 1);
  assert_int_equal(X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(cl->ssl),
                                                 "127.0.0.1"),
                   1);
  if (alpn)
    assert_int_equal(SSL_set_alpn_protos(cl->ssl, (const unsigned char *)alpn,
                                         (unsigned)alpn_len),
                     0);
  ERR_clear_error();
  int rc = SSL_connect(cl->ssl);
  if (rc == 1)
    assert_int_equal(SSL_get_verify_result(cl->ssl), X509_V_OK);
  ERR_clear_error();
  return rc;
}

static int tcl_open_alpn(struct client *cl, int port, SSL_CTX *ctx,
                         const char *alpn, size_t alpn_len) {
  return tcl_open_opts(cl, port, ctx, alpn, alpn_len, 0);
}

static int tcl_open(struct client *cl, int port, SSL_CTX *ctx) {
  return tcl_open_opts(cl, port, ctx, NULL, 0, 0);
}

/* tcl_serial: the serial number of the server's certificate. */
static long tcl_serial(struct client *cl) {
  X509 *x = SSL_get1_peer_certificate(cl->ssl);
  assert_non_null(x);
  long serial = ASN1_INTEGER_get(X509_get0_serialNumber(x));
  X509_free(x);
  return serial;
}

/* tcl_try_send: SSL_write that may fail (the server refused us). */
static int tcl_try_send(struct client *cl, const char *s) {
  ERR_clear_error();
  int n = SSL_write(cl->ssl, s, (int)strlen(s));
  ERR_clear_error();
  return n == (int)strlen(s) ? 0 : -1;
}

/* tcl_wait_closed: the server closes the connection (EOF, reset, alert)
 * within ms, without sending anything readable. 1 if so. */
static int tcl_wait_closed_raw(int fd, unsigned ms) {
  struct timeval tv = {ms / 1000, (long)(ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno == ECONNRESET))
      return 1;
    if (n < 0)
      return 0; /* timeout */
    /* an alert record is fine; keep reading until the close */
  }
}

static void get_file_ok(struct client *cl, const char *req, uint64_t off,
                        size_t len) {
  struct resp r;
  cl_sends(cl, req);
  assert_int_equal(cl_read_resp(cl, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.body_len, len);
  assert_memory_equal(r.body, g_file + off, len);
  resp_free(&r);
}

/* ---- TLS tests ---- */

/* drop_cache takes the test file out of the page cache, as a cold disk
 * would have it. */
static void drop_cache(void) {
  int fd = open(g_file_path, O_RDONLY);
  assert_true(fd >= 0);
  fdatasync(fd);
  assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  close(fd);
}

/* A file not in the page cache is read on the thread pool, never on the
 * loop, and the bytes are the same; a warm one is read on the loop. */
static void test_cold_file_read_off_loop(void **state) {
  (void)state;
  struct http_server_stats st0, st1;
  struct client cl;
  struct resp r;
  fetch_stats(&st0);
  drop_cache();
  cl_open(&cl);
  cl_sends(&cl, "GET /file HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.body_len, FILE_SIZE);
  assert_memory_equal(r.body, g_file, FILE_SIZE);
  resp_free(&r);
  fetch_stats(&st1);
  assert_true(st1.file_reads_offloop > st0.file_reads_offloop);
  /* warm now: no job */
  cl_sends(&cl, "GET /file HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_memory_equal(r.body, g_file, FILE_SIZE);
  resp_free(&r);
  fetch_stats(&st0);
  assert_int_equal(st0.file_reads_offloop, st1.file_reads_offloop);
  cl_close(&cl);

  /* TLS: the plaintext is read off the loop, encrypted on it */
  drop_cache();
  SSL_CTX *ctx = tcl_ctx_new(0, 0, TCL_NO_CERT);
  assert_int_equal(tcl_open(&cl, g_srv.tls_port, ctx), 1);
  cl_sends(&cl, "GET /file HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.body_len, FILE_SIZE);
  assert_memory_equal(r.body, g_file, FILE_SIZE);
  resp_free(&r);
  cl_close(&cl);
  SSL_CTX_free(ctx);
  fetch_stats(&st1);
  assert_true(st1.file_reads_offloop > st0.file_reads_offloop);

  /* the client going away while a read is on the pool */
  drop_cache();
  cl_open(&cl);
  cl_sends(&cl, "GET /file HTTP/1.1\r\nHost: t\r\n\r\n");
  cl_close(&cl);
  sleep_ms(100);
  cl_open(&cl);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&cl);
}

static void test_tls_get(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  struct http_server_stats st0, st;
  char v[64];
  fetch_stats(&st0);
  SSL_CTX *ctx = tcl_ctx_new(0, 0, TCL_NO_CERT);
  assert_int_equal(tcl_open(&cl, g_srv.tls_port, ctx), 1);
  assert_int_equal(tcl_serial(&cl), SERIAL_SRV);
  cl_sends(&cl, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "hello world\n");
  assert_true(resp_header(&r, "Content-Length", v, sizeof v));
  assert_string_equal(v, "12");
  assert_true(resp_header(&r, "X-Test", v, sizeof v));
  assert_string_equal(v, "yes");
  resp_free(&r);
  /* the handler sees req->tls and the listener */
  get_ok(&cl, "GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n", "tls=1 listener=8");
  /* Connection: close ends with close_notify, not a bare FIN */
  cl_sends(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_string_equal(r.body, "hello world\n");
  assert_true(resp_header(&r, "Connection", v, sizeof v));
  assert_string_equal(v, "close");
  resp_free(&r);
  assert_true(cl_wait_eof(&cl));
  assert_int_equal(cl.tls_end, TLS_END_NOTIFY);
  cl_close(&cl);

  /* and the plain listener says tls=0 */
  cl_open(&cl);
  get_ok(&cl, "GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n", "tls=0 listener=7");
  cl_close(&cl);
  SSL_CTX_free(ctx);

  fetch_stats(&st);
  assert_int_equal(st.tls_handshakes - st0.tls_handshakes, 1);
  assert_int_equal(st.tls_handshake_errors, st0.tls_handshake_errors);
}

static void test_tls_keep_alive(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  struct http_server_stats st0, st;
  fetch_stats(&st0);
  SSL_CTX *ctx = tcl_ctx_new(0, 0, TCL_NO_CERT);
  assert_int_equal(tcl_open(&cl, g_srv.tls_port, ctx), 1);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  get_ok(&cl, "GET /info?a=b HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\r\n",
         "method=GET path=/info query=a=b n=2 x-a=1 x-b=-,-,-");
  get_ok(&cl, "GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n", "first partsecond part");

  /* three requests in one SSL_write (one record), answered in order */
  cl_sends(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /info?x=1 HTTP/1.1\r\nHost: t\r\nX-B: one\r\nX-B: two\r\n\r\n"
                "GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_string_equal(r.body, "hello world\n");
  resp_free(&r);
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_string_equal(r.body,
                      "method=GET path=/info query=x=1 n=3 x-a=- x-b=one,two,-");
  resp_free(&r);
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_string_equal(r.body, "tls=1 listener=8");
  resp_free(&r);

  /* a file body in the middle: input waits while it is sent, then the
   * buffered request behind it is served */
  cl_sends(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /file?part HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_string_equal(r.body, "hello world\n");
  resp_free(&r);
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.body_len, 70000);
  assert_memory_equal(r.body, g_file + 1000, 70000);
  resp_free(&r);
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_string_equal(r.body, "tls=1 listener=8");
  resp_free(&r);

  /* more pipelined plaintext than the 4 KiB input buffer holds: the rest
   * waits inside OpenSSL and is decrypted as the buffer drains */
  const char *one = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
  size_t ol = strlen(one), n = 300;
  char *many = malloc(ol * n + 1);
  for (size_t i = 0; i < n; i++)
    memcpy(many + i * ol, one, ol);
  many[ol * n] = '\0';
  cl_sends(&cl, many);
  free(many);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello world\n");
    resp_free(&r);
  }
  get_ok(&cl, "GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n", "tls=1 listener=8");
  cl_close(&cl);
  SSL_CTX_free(ctx);
  fetch_stats(&st);
  assert_int_equal(st.tls_handshakes - st0.tls_handshakes, 1);
}

static void test_tls_file(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  struct http_server_stats st0, st;
  fetch_stats(&st0);
  SSL_CTX *ctx = tcl_ctx_new(0, 0, TCL_NO_CERT);
  assert_int_equal(tcl_open(&cl, g_srv.tls_port, ctx), 1);
  get_file_ok(&cl, "GET /file HTTP/1.1\r\nHost: t\r\n\r\n", 0, FILE_SIZE);
  fetch_stats(&st);
  assert_int_equal(st.tls_file_bytes - st0.tls_file_bytes, FILE_SIZE);

  get_file_ok(&cl, "GET /file?part HTTP/1.1\r\nHost: t\r\n\r\n", 1000, 70000);

  cl_sends(&cl, "GET /file?chunked HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.body_len, FILE_SIZE);
  assert_memory_equal(r.body, g_file, FILE_SIZE);
  char frame[32];
  int fl = snprintf(frame, sizeof frame, "%x\r\n", FILE_SIZE);
  assert_memory_equal(r.raw, frame, (size_t)fl);
  assert_int_equal(r.raw_len, (size_t)fl + FILE_SIZE + 2 + 5);
  resp_free(&r);

  /* the handler ends before the file is out */
  get_file_ok(&cl, "GET /file?chunked-end HTTP/1.1\r\nHost: t\r\n\r\n", 0, FILE_SIZE);
  get_file_ok(&cl, "GET /file?plain-end HTTP/1.1\r\nHost: t\r\n\r\n", 0, FILE_SIZE);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  fetch_stats(&st);
  assert_int_equal(st.tls_file_bytes - st0.tls_file_bytes,
                   (uint64_t)FILE_SIZE * 4 + 70000);

  /* a file shorter than promised: every byte it has, then a cut (no
   * close_notify, so the client can tell it from a complete body) */
  cl_sends(&cl, "GET /file?short HTTP/1.1\r\nHost: t\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 1), 0);
  while (cl_fill(&cl) > 0)
    ;
  assert_int_equal(cl.len, FILE_SIZE);
  assert_memory_equal(cl.buf, g_file, FILE_SIZE);
  assert_int_equal(cl.tls_end, TLS_END_CUT);
  resp_free(&r);
  cl_close(&cl);
  SSL_CTX_free(ctx);
}

/* More TLS downloads at once than the pool has buffers (16): every
 * connection stalls holding encrypted bytes, so the last ones encrypt into
 * buffers of their own. Small receive buffers on the clients and a fixed
 * send buffer on the listener keep the file out of the kernel. Runs with a
 * longer send timeout, as twenty slow readers share one thread. */
#define TLS_MANY 20

static int resp_complete(struct client *cl, size_t body) {
  cl->buf[cl->len] = '\0';
  const char *end = strstr(cl->buf, "\r\n\r\n");
  return end && cl->len >= (size_t)(end - cl->buf) + 4 + body;
}

/* cap_listener_sndbuf fixes SO_SNDBUF on the listening socket on port
 * (accepted sockets inherit it), so the kernel's send-buffer autotuning
 * (up to tcp_wmem's 4 MiB) cannot take a whole file off the server. */
static void cap_listener_sndbuf(int port, int bytes) {
  int found = 0;
  for (int fd = 3; fd < 1024; fd++) {
    struct sockaddr_in a;
    socklen_t al = sizeof a;
    int listening = 0;
    socklen_t ll = sizeof listening;
    if (getsockname(fd, (struct sockaddr *)&a, &al) != 0 ||
        a.sin_family != AF_INET || ntohs(a.sin_port) != port ||
        getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ll) != 0 ||
        !listening)
      continue;
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes), 0);
    found = 1;
  }
  assert_true(found);
}

static void test_tls_file_many(void **state) {
  (void)state;
  cap_listener_sndbuf(g_srv.tls_port, 64 * 1024);
  struct client cl[TLS_MANY];
  struct resp r;
  struct http_server_stats st0, st;
  SSL_CTX *ctx = tcl_ctx_new(0, 0, TCL_NO_CERT);
  fetch_stats(&st0);
  for (int i = 0; i < TLS_MANY; i++)
    assert_int_equal(tcl_open_opts(&cl[i], g_srv.tls_port, ctx, NULL, 0, 32 * 1024),
                     1);
  for (int i = 0; i < TLS_MANY; i++)
    cl_sends(&cl[i], "GET /file HTTP/1.1\r\nHost: t\r\n\r\n");
  sleep_ms(100); /* let every connection fill its socket and stall */
  /* all stalled early in the body, each with encrypted bytes waiting in a
   * buffer (a connection that had all its bytes in the kernel holds none) */
  fetch_stats(&st);
  assert_true(st.tls_file_bytes - st0.tls_file_bytes > 0);
  assert_true(st.tls_file_bytes - st0.tls_file_bytes < (uint64_t)TLS_MANY * FILE_SIZE / 4);
  int left = TLS_MANY;
  int done[TLS_MANY] = {0};
  while (left > 0) {
    for (int i = 0; i < TLS_MANY; i++) {
      if (done[i])
        continue;
      cl[i].max_read = 1000 + (size_t)i * 300;
      assert_true(cl_fill(&cl[i]) > 0);
      if (!resp_complete(&cl[i], FILE_SIZE))
        continue;
      done[i] = 1;
      left--;
      /* checked at once: an idle connection meets the 300 ms head timeout */
      cl[i].max_read = 0;
      assert_int_equal(cl_read_resp(&cl[i], &r, 0), 0);
      assert_int_equal(r.status, 200);
      assert_int_equal(r.body_len, FILE_SIZE);
      assert_memory_equal(r.body, g_file, FILE_SIZE);
      resp_free(&r);
      /* the connection is still good afterwards */
      get_ok(&cl[i], "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
      cl_close(&cl[i]);
    }
  }
  SSL_CTX_free(ctx);
}

static void test_tls_plain_request(void **state) {
  (void)state;
  static const char want[] =
      "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n"
      "Connection: close\r\n\r\n"
      "Client sent an HTTP request to an HTTPS server.\n";
  struct client cl;
  struct http_server_stats st0, st;
  fetch_stats(&st0);
  cl_open_port(&cl, g_srv.tls_port, 0);
  cl_sends(&cl, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  ssize_t n;
  while ((n = cl_fill(&cl)) > 0)
    ;
  assert_int_equal(n, 0); /* closed, not timed out */
  cl.buf[cl.len] = '\0';
  assert_true(strncmp(cl.buf, "HTTP/1.0 400", 12) == 0);
  assert_non_null(strstr(cl.buf, "HTTPS"));
  assert_int_equal(cl.len, sizeof want - 1);
  assert_memory_equal(cl.buf, want, sizeof want - 1);
  cl_close(&cl);
  fetch_stats(&st);
  assert_int_equal(st.tls_handshake_errors - st0.tls_handshake_errors, 1);
  assert_int_equal(st.tls_handshakes, st0.tls_handshakes);
  assert_int_equal(st.requests_total - st0.requests_total, 1); /* the /stats */
}

static void test_tls_versions(void **state) {
  (void)state;
  struct client cl;
  struct http_server_stats st0, st;
  fetch_stats(&st0);

  /* TLS 1.1 at most: refused (Debian's default security level would not
   * even offer it, hence level 0 on the client) */
  SSL_CTX *old = tcl_ctx_new(TLS1_VERSION, TLS1_1_VERSION, TCL_NO_CERT);
  SSL_CTX_set_security_level(old, 0);
  assert_true(tcl_open(&cl, g_srv.tls_port, old) != 1);
  cl_close(&cl);
  SSL_CTX_free(old);
  fetch_stats(&st);
  assert_int_equal(st.tls_handshake_errors - st0.tls_handshake_errors, 1);
  assert_int_equal(st.tls_handshakes, st0.tls_handshakes);

  /* the server is fine afterwards */
  SSL_CTX *ctx = tcl_ctx_new(0, 0, TCL_NO_CERT);
  assert_int_equal(tcl_open(&cl, g_srv.tls_port, ctx), 1);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&cl);
  SSL_CTX_free(ctx);

  SSL_CTX *v13 = tcl_ctx_new(TLS1_3_VERSION, TLS1_3_VERSION, TCL_NO_CERT);
  assert_int_equal(tcl_open(&cl, g_srv.tls_port, v13), 1);
  assert_int_equal(SSL_version(cl.ssl), TLS1_3_VERSION);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&cl);
  SSL_CTX_free(v13);

  SSL_CTX *v12 = tcl_ctx_new(TLS1_2_VERSION, TLS1_2_VERSION, TCL_NO_CERT);
  assert_int_equal(tcl_open(&cl, g_srv.tls_port, v12), 1);
  assert_int_equal(SSL_version(cl.ssl), TLS1_2_VERSION);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  get_file_ok(&cl, "GET /file?part HTTP/1.1\r\nHost: t\r\n\r\n", 1000, 70000);
  cl_close(&cl);

  /* TLS 1.2 with a CBC suite has the largest record overhead (IV, SHA-384
   * MAC, padding): a whole file must still fit the pool buffers */
  assert_int_equal(SSL_CTX_set_cipher_list(v12, "ECDHE-ECDSA-AES256-SHA384"), 1);
  assert_int_equal(tcl_open(&cl, g_srv.tls_port, v12), 1);
  assert_string_equal(SSL_get_cipher_name(cl.ssl), "ECDHE-ECDSA-AES256-SHA384");
  get_file_ok(&cl, "GET /file HTTP/1.1\r\nHost: t\r\n\r\n", 0, FILE_SIZE);
  get_file_ok(&cl, "GET /file?chunked HTTP/1.1\r\nHost: t\r\n\r\n", 0, FILE_SIZE);
  cl_close(&cl);
  SSL_CTX_free(v12);

  fetch_stats(&st);
  assert_int_equal(st.tls_handshake_errors - st0.tls_handshake_errors, 1);
  assert_int_equal(st.tls_handshakes - st0.tls_handshakes, 4);
}

static void test_tls_alpn(void **state) {
  (void)state;
  struct client cl;
  const unsigned char *sel;
  unsigned sel_len;
  SSL_CTX *ctx = tcl_ctx_new(0, 0, TCL_NO_CERT);

  /* h2 alone: no ALPN, but the handshake completes and HTTP/1.1 works */
  static const char h2[] = "\x02h2";
  assert_int_equal(tcl_open_alpn(&cl, g_srv.tls_port, ctx, h2, sizeof h2 - 1), 1);
  SSL_get0_alpn_selected(cl.ssl, &sel, &sel_len);
  assert_int_equal(sel_len, 0);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&cl);

  static const char both[] = "\x02h2\x08http/1.1";
  assert_int_equal(tcl_open_alpn(&cl, g_srv.tls_port, ctx, both, sizeof both - 1),
                   1);
  SSL_get0_alpn_selected(cl.ssl, &sel, &sel_len);
  assert_int_equal(sel_len, 8);
  assert_memory_equal(sel, "http/1.1", 8);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&cl);
  SSL_CTX_free(ctx);
}

/* client_hello: the first flight of a real client, from memory BIOs. */
static size_t client_hello(SSL_CTX *ctx, unsigned char *out, size_t cap) {
  SSL *s = SSL_new(ctx);
  BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
  SSL_set_bio(s, rb, wb);
  SSL_set_connect_state(s);
  assert_int_equal(SSL_do_handshake(s), -1);
  int n = BIO_read(wb, out, (int)cap);
  assert_true(n > 100);
  assert_int_equal(out[0], 0x16);
  SSL_free(s);
  ERR_clear_error();
  return (size_t)n;
}

static void test_tls_garbage(void **state) {
  (void)state;
  struct client cl;
  struct http_server_stats st0, st;
  unsigned char hello[4096], junk[2048];
  SSL_CTX *ctx = tcl_ctx_new(0, 0, TCL_NO_CERT);
  size_t hl = client_hello(ctx, hello, sizeof hello);
  srand(99);
  for (size_t k = 0; k < sizeof junk; k++)
    junk[k] = (unsigned char)rand();
  fetch_stats(&st0);

  /* a ClientHello that turns into random bytes after its first 60: the
   * handshake fails at once (well before the 300 ms head timeout) */
  cl_open_port(&cl, g_srv.tls_port, 0);
  assert_true(hl > 60);
  memcpy(hello + 60, junk, hl - 60);
  cl_send(&cl, hello, hl);
  uint64_t t0 = now_ms();
  assert_true(tcl_wait_closed_raw(cl.fd, 2000));
  assert_true(now_ms() - t0 < 250);
  cl_close(&cl);
  fetch_stats(&st);
  assert_int_equal(st.tls_handshake_errors - st0.tls_handshake_errors, 1);
  assert_int_equal(st.timeouts, st0.timeouts);

  /* random bytes behind 0x16: closed, by a handshake error or the head
   * timeout if the random record length asks for more */
  fetch_stats(&st0);
  for (int i = 0; i < 8; i++) {
    unsigned char b[300];
    b[0] = 0x16;
    for (size_t k = 1; k < sizeof b; k++)
      b[k] = (unsigned char)rand();
    cl_open_port(&cl, g_srv.tls_port, 0);
    cl_send(&cl, b, 1 + (size_t)rand() % (sizeof b - 1));
    assert_true(tcl_wait_closed_raw(cl.fd, 2000));
    cl_close(&cl);
  }
  fetch_stats(&st);
  assert_int_equal((st.tls_handshake_errors - st0.tls_handshake_errors) +
                       (st.timeouts - st0.timeouts),
                   8);
  assert_int_equal(st.connections_open, 1); /* the stats request's own */

  /* the server is fine */
  assert_int_equal(tcl_open(&cl, g_srv.tls_port, ctx), 1);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&cl);
  SSL_CTX_free(ctx);
}

/* Garbage that keeps coming after a failed handshake (the first bytes were
 * refused, the alert is on its way, more arrive) is one failed handshake. */
static void test_tls_garbage_more(void **state) {
  (void)state;
  struct client cl;
  struct http_server_stats st0, st;
  unsigned char hello[4096], junk[1024];
  SSL_CTX *ctx = tcl_ctx_new(0, 0, TCL_NO_CERT);
  size_t hl = client_hello(ctx, hello, sizeof hello);
  srand(7);
  for (size_t k = 0; k < sizeof junk; k++)
    junk[k] = (unsigned char)rand();
  memcpy(hello + 60, junk, hl - 60);
  fetch_stats(&st0);
  cl_open_port(&cl, g_srv.tls_port, 0);
  cl_send(&cl, hello, hl);
  sleep_ms(30);
  /* the server has shut its write side by now, but still reads */
  send(cl.fd, junk, sizeof junk, MSG_NOSIGNAL);
  assert_true(tcl_wait_closed_raw(cl.fd, 2000));
  cl_close(&cl);
  fetch_stats(&st);
  assert_int_equal(st.tls_handshake_errors - st0.tls_handshake_errors, 1);
  SSL_CTX_free(ctx);
}

static void test_tls_swap(void **state) {
  (void)state;
  struct client old, fresh, plain;
  struct resp r;
  SSL_CTX *ctx = tcl_ctx_new(0, 0, TCL_NO_CERT);
  assert_int_equal(tcl_open(&old, g_srv.tls_port, ctx), 1);
  assert_int_equal(tcl_serial(&old), SERIAL_SRV);
  /* the old connection is in the middle of a file body */
  cl_sends(&old, "GET /file HTTP/1.1\r\nHost: t\r\n\r\n");
  while (old.len < 300 * 1024)
    assert_true(cl_fill(&old) > 0);

  cl_open(&plain);
  get_ok(&plain, "GET /swap HTTP/1.1\r\nHost: t\r\n\r\n", "swapped");
  cl_close(&plain);

  assert_int_equal(tcl_open(&fresh, g_srv.tls_port, ctx), 1);
  assert_int_equal(tcl_serial(&fresh), SERIAL_SRV2);
  X509 *peer = SSL_get1_peer_certificate(fresh.ssl);
  char cn[64] = "";
  X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn,
                            sizeof cn);
  X509_free(peer);
  assert_string_equal(cn, "regmesh test server 2");
  get_ok(&fresh, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&fresh);

  /* the old one finishes on its old certificate and keeps going */
  assert_int_equal(cl_read_resp(&old, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.body_len, FILE_SIZE);
  assert_memory_equal(r.body, g_file, FILE_SIZE);
  resp_free(&r);
  assert_int_equal(tcl_serial(&old), SERIAL_SRV);
  get_ok(&old, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&old);
  SSL_CTX_free(ctx);
}

static void test_tls_client_cert(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  struct http_server_stats st0, st;
  fetch_stats(&st0);

  /* without a certificate: refused. With TLS 1.3 the client's SSL_connect
   * may already have returned when the server checks, so the refusal can
   * also show as an alert instead of the response */
  SSL_CTX *none = tcl_ctx_new(0, 0, TCL_NO_CERT);
  int rc = tcl_open(&cl, g_srv.mtls_port, none);
  if (rc == 1 && tcl_try_send(&cl, "GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n") == 0) {
    assert_int_equal(cl_read_resp(&cl, &r, 0), -1);
    resp_free(&r);
    assert_true(cl.tls_end == TLS_END_ERROR || cl.tls_end == TLS_END_CUT);
  }
  cl_close(&cl);
  /* the same over TLS 1.2, where the handshake itself fails */
  SSL_CTX_set_max_proto_version(none, TLS1_2_VERSION);
  assert_true(tcl_open(&cl, g_srv.mtls_port, none) != 1);
  cl_close(&cl);
  SSL_CTX_free(none);

  /* a certificate the CA did not sign: refused too */
  SSL_CTX *rogue = tcl_ctx_new(0, TLS1_2_VERSION, TCL_ROGUE_CERT);
  assert_true(tcl_open(&cl, g_srv.mtls_port, rogue) != 1);
  cl_close(&cl);
  SSL_CTX_free(rogue);

  fetch_stats(&st);
  assert_int_equal(st.tls_handshake_errors - st0.tls_handshake_errors, 3);
  assert_int_equal(st.tls_handshakes, st0.tls_handshakes);

  /* with the client certificate, over 1.3 and 1.2 */
  SSL_CTX *good = tcl_ctx_new(0, 0, TCL_CLIENT_CERT);
  assert_int_equal(tcl_open(&cl, g_srv.mtls_port, good), 1);
  get_ok(&cl, "GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n", "tls=1 listener=9");
  get_file_ok(&cl, "GET /file?part HTTP/1.1\r\nHost: t\r\n\r\n", 1000, 70000);
  cl_close(&cl);
  SSL_CTX_set_max_proto_version(good, TLS1_2_VERSION);
  assert_int_equal(tcl_open(&cl, g_srv.mtls_port, good), 1);
  get_ok(&cl, "GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n", "tls=1 listener=9");
  cl_close(&cl);
  SSL_CTX_free(good);

  fetch_stats(&st);
  assert_int_equal(st.tls_handshake_errors - st0.tls_handshake_errors, 3);
  assert_int_equal(st.tls_handshakes - st0.tls_handshakes, 2);
}

/* wait_conns_open: the server's open connections (counting the stats
 * request's own) drop to want within ms. */
static int wait_conns_open(uint64_t want, unsigned ms) {
  struct http_server_stats st;
  uint64_t end = now_ms() + ms;
  for (;;) {
    fetch_stats(&st);
    if (st.connections_open == want || now_ms() >= end)
      return st.connections_open == want;
    sleep_ms(20);
  }
}

static void test_tls_hangup_mid_file(void **state) {
  (void)state;
  struct client cl;
  SSL_CTX *ctx = tcl_ctx_new(0, 0, TCL_NO_CERT);
  /* three ways out in the middle of a body: close with unread data (RST),
   * an abortive close, and close_notify first */
  for (int how = 0; how < 3; how++) {
    assert_int_equal(tcl_open(&cl, g_srv.tls_port, ctx), 1);
    cl_sends(&cl, how == 1 ? "GET /file?chunked HTTP/1.1\r\nHost: t\r\n\r\n"
                           : "GET /file HTTP/1.1\r\nHost: t\r\n\r\n");
    while (cl.len < 200 * 1024)
      assert_true(cl_fill(&cl) > 0);
    if (how == 1) {
      struct linger lg = {1, 0};
      setsockopt(cl.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    } else if (how == 2) {
      SSL_shutdown(cl.ssl);
    }
    cl_close(&cl);
    assert_true(wait_conns_open(1, 2000));
  }

  /* a half-close mid-body still gets the whole body, then the close */
  assert_int_equal(tcl_open(&cl, g_srv.tls_port, ctx), 1);
  cl_sends(&cl, "GET /file HTTP/1.1\r\nHost: t\r\n\r\n");
  while (cl.len < 200 * 1024)
    assert_true(cl_fill(&cl) > 0);
  shutdown(cl.fd, SHUT_WR);
  struct resp r;
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.body_len, FILE_SIZE);
  assert_memory_equal(r.body, g_file, FILE_SIZE);
  resp_free(&r);
  assert_true(cl_wait_eof(&cl));
  cl_close(&cl);
  assert_true(wait_conns_open(1, 2000));

  assert_int_equal(tcl_open(&cl, g_srv.tls_port, ctx), 1);
  get_ok(&cl, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", "hello world\n");
  cl_close(&cl);
  SSL_CTX_free(ctx);
}

static int group_setup(void **state) {
  (void)state;
  if (!getenv("HTTP_TEST_DEBUG"))
    log_set_level(LOG_WARN);
  else
    log_set_level(LOG_DEBUG);
  strcpy(g_file_path, "/tmp/rm_http_file_XXXXXX");
  int fd = mkstemp(g_file_path);
  if (fd < 0)
    return -1;
  g_file = malloc(FILE_SIZE);
  srand(42);
  for (size_t i = 0; i < FILE_SIZE; i++)
    g_file[i] = (unsigned char)rand();
  if (write(fd, g_file, FILE_SIZE) != FILE_SIZE)
    return -1;
  close(fd);
  memset(g_big_chunk, 'B', sizeof g_big_chunk);
  if (pki_make() < 0) {
    fprintf(stderr, "cannot make the test certificates\n");
    ERR_print_errors_fp(stderr);
    return -1;
  }
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  unlink(g_file_path);
  free(g_file);
  pki_free();
  return 0;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_get_simple),
      T(test_keep_alive),
      T(test_pipelined),
      T(test_pipelined_behind_slow),
      T(test_drain),
      T(test_fragmented_head),
      T(test_absolute_form),
      T(test_head),
      T(test_sendfile),
      T(test_chunked),
      T(test_http10),
      T(test_connection_close),
      T(test_too_large_head),
      T(test_body_limits),
      T(test_garbage),
      T(test_tls_probe),
      T(test_header_timeout),
      T(test_idle_timeout),
      T(test_hangup_during_slow),
      T(test_close_while_slow),
      T(test_send_timeout),
      T(test_abort),
      cmocka_unit_test_setup_teardown(test_listener_budget, setup_two_conns, teardown),
      T(test_rfc9112),
      T(test_cold_file_read_off_loop),
      cmocka_unit_test_setup_teardown(test_max_connections, setup_two_conns,
                                      teardown),
      T(test_access_log),
      T(test_stress),
      cmocka_unit_test(test_listen_addresses),
      T(test_tls_get),
      T(test_tls_keep_alive),
      T(test_tls_file),
      cmocka_unit_test_setup_teardown(test_tls_file_many, setup_slow_send, teardown),
      T(test_tls_plain_request),
      T(test_tls_versions),
      T(test_tls_alpn),
      T(test_tls_garbage),
      T(test_tls_garbage_more),
      T(test_tls_swap),
      T(test_tls_client_cert),
      T(test_tls_hangup_mid_file),
  };
  /* HTTP_TEST_FILTER=test_tls_* runs a subset */
  if (getenv("HTTP_TEST_FILTER"))
    cmocka_set_test_filter(getenv("HTTP_TEST_FILTER"));
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
