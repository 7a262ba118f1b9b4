/* test_http_server.c - the HTTP server driven over real sockets.
 *
 * Each test starts a server on 127.0.0.1:<ephemeral> whose libuv loop runs in
 * a second thread, with a small handler (/hello, /info, /file via sendfile,
 * /chunked, /slow answered from a timer, /big for send stalls ...). The test
 * thread talks to it with plain blocking sockets, so it controls every byte
 * and every split: pipelining, fragmented heads, slowloris, hang-ups, TLS
 * probes. State the handler records for the test lives in atomics.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "http_server.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
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
static atomic_int g_slow_done;    /* /slow timers fired */
static atomic_int g_slow_rc;      /* what http_respond_simple returned then */
static atomic_int g_big_failed;   /* /big write error status */

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
           "open=%llu total=%llu requests=%llu tls=%llu timeouts=%llu bad=%llu",
           (unsigned long long)st.connections_open,
           (unsigned long long)st.connections_total,
           (unsigned long long)st.requests_total,
           (unsigned long long)st.tls_rejected,
           (unsigned long long)st.timeouts,
           (unsigned long long)st.bad_requests);
  respond_text(req, 200, body);
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
  sem_post(&t->ready);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  t->loop_close_rc = uv_loop_close(&t->loop);
  return NULL;
}

static int server_start(unsigned max_connections) {
  memset(&g_srv, 0, sizeof g_srv);
  atomic_store(&g_close_calls, 0);
  atomic_store(&g_slow_done, 0);
  atomic_store(&g_slow_rc, 0);
  atomic_store(&g_big_failed, 0);
  g_srv.limits.max_header_bytes = 4096;
  g_srv.limits.max_headers = 32;
  g_srv.limits.header_timeout_ms = 300;
  g_srv.limits.idle_timeout_ms = 600;
  g_srv.limits.send_timeout_ms = 300;
  g_srv.limits.max_connections = max_connections;
  sem_init(&g_srv.ready, 0, 0);
  if (pthread_create(&g_srv.th, NULL, server_thread, &g_srv) != 0)
    return -1;
  sem_wait(&g_srv.ready);
  return g_srv.listen_rc == 0 && g_srv.port > 0 ? 0 : -1;
}

static int setup(void **state) {
  (void)state;
  return server_start(64);
}

static int setup_two_conns(void **state) {
  (void)state;
  return server_start(2);
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

struct client {
  int fd;
  char *buf;
  size_t len, cap;
};

static void cl_open_opts(struct client *cl, int rcvbuf) {
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
  a.sin_port = htons((uint16_t)g_srv.port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(cl->fd, (struct sockaddr *)&a, sizeof a), 0);
  cl->cap = 1 << 16;
  cl->buf = malloc(cl->cap);
}

static void cl_open(struct client *cl) { cl_open_opts(cl, 0); }

static void cl_close(struct client *cl) {
  close(cl->fd);
  free(cl->buf);
  cl->buf = NULL;
}

static void cl_send(struct client *cl, const void *p, size_t n) {
  const char *s = p;
  while (n > 0) {
    ssize_t w = send(cl->fd, s, n, MSG_NOSIGNAL);
    assert_true(w > 0);
    s += w;
    n -= (size_t)w;
  }
}

static void cl_sends(struct client *cl, const char *s) {
  cl_send(cl, s, strlen(s));
}

/* cl_fill reads more; returns bytes read, 0 on EOF, -1 on error/timeout. */
static ssize_t cl_fill(struct client *cl) {
  if (cl->cap - cl->len < 65536) {
    cl->cap *= 2;
    cl->buf = realloc(cl->buf, cl->cap);
  }
  ssize_t n = recv(cl->fd, cl->buf + cl->len, cl->cap - cl->len - 1, 0);
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
  unsigned long long open, total, requests, tls, timeouts, bad;
  cl_open(&cl);
  cl_sends(&cl, "GET /stats HTTP/1.1\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(sscanf(r.body,
                          "open=%llu total=%llu requests=%llu tls=%llu "
                          "timeouts=%llu bad=%llu",
                          &open, &total, &requests, &tls, &timeouts, &bad),
                   6);
  st->connections_open = open;
  st->connections_total = total;
  st->requests_total = requests;
  st->tls_rejected = tls;
  st->timeouts = timeouts;
  st->bad_requests = bad;
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
  get_ok(&cl, "GET /hello HTTP/1.1\r\n\r\n", "hello world\n");
  get_ok(&cl, "GET /info?a=b HTTP/1.1\r\nX-A: 1\r\n\r\n",
         "method=GET path=/info query=a=b n=1 x-a=1 x-b=-,-,-");
  get_ok(&cl, "GET /hello HTTP/1.1\r\n\r\n", "hello world\n");
  cl_close(&cl);
}

static void test_pipelined(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  cl_open(&cl);
  cl_sends(&cl, "GET /hello HTTP/1.1\r\n\r\n"
                "POST /push HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde"
                "PUT /chunky HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                "3\r\nabc\r\n0\r\n\r\n"
                "GET /info?x=1 HTTP/1.1\r\nX-B: one\r\nX-B: two\r\n\r\n");
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
                      "method=GET path=/info query=x=1 n=2 x-a=- x-b=one,two,-");
  resp_free(&r);
  cl_close(&cl);
}

static void test_pipelined_behind_slow(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  cl_open(&cl);
  cl_sends(&cl, "GET /slow HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_string_equal(r.body, "slow done\n");
  resp_free(&r);
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_string_equal(r.body, "hello world\n");
  resp_free(&r);
  assert_int_equal(atomic_load(&g_close_calls), 0);
  cl_close(&cl);
}

static void test_fragmented_head(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  const char *req = "GET /info?q=%20x HTTP/1.1\r\nX-A: va lue\r\nX-B:\r\n"
                    "X-B: 2\r\nX-B: 3\r\n\r\n";
  cl_open(&cl);
  for (const char *p = req; *p; p++) {
    cl_send(&cl, p, 1);
    if ((p - req) % 7 == 0)
      sleep_ms(1);
  }
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_string_equal(r.body,
                      "method=GET path=/info query=q=%20x n=4 x-a=va lue x-b=,2,3");
  resp_free(&r);
  cl_close(&cl);
}

static void test_absolute_form(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  cl_open(&cl);
  get_ok(&cl, "GET http://mirror:5000/info?k=v#frag HTTP/1.1\r\n\r\n",
         "method=GET path=/info query=k=v n=0 x-a=- x-b=-,-,-");
  cl_sends(&cl, "GET http://mirror:5000 HTTP/1.1\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 400);
  assert_true(cl_wait_eof(&cl));
  resp_free(&r);
  cl_close(&cl);

  cl_open(&cl);
  cl_sends(&cl, "OPTIONS * HTTP/1.1\r\n\r\n");
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
  cl_sends(&cl, "HEAD /hello HTTP/1.1\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 1), 0);
  assert_int_equal(r.status, 200);
  assert_true(resp_header(&r, "Content-Length", v, sizeof v));
  assert_string_equal(v, "12");
  resp_free(&r);
  /* no body followed: the next bytes are the next response */
  cl_sends(&cl, "HEAD /file HTTP/1.1\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 1), 0);
  assert_true(resp_header(&r, "Content-Length", v, sizeof v));
  assert_int_equal(strtoull(v, NULL, 10), FILE_SIZE);
  resp_free(&r);
  cl_sends(&cl, "HEAD /chunked HTTP/1.1\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 1), 0);
  assert_int_equal(r.status, 200);
  resp_free(&r);
  get_ok(&cl, "GET /hello HTTP/1.1\r\n\r\n", "hello world\n");
  cl_close(&cl);
}

static void test_sendfile(void **state) {
  (void)state;
  struct client cl;
  struct resp r;
  cl_open(&cl);
  cl_sends(&cl, "GET /file HTTP/1.1\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.body_len, FILE_SIZE);
  assert_memory_equal(r.body, g_file, FILE_SIZE);
  resp_free(&r);

  cl_sends(&cl, "GET /file?part HTTP/1.1\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.body_len, 70000);
  assert_memory_equal(r.body, g_file + 1000, 70000);
  resp_free(&r);

  cl_sends(&cl, "GET /file?chunked HTTP/1.1\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.body_len, FILE_SIZE);
  assert_memory_equal(r.body, g_file, FILE_SIZE);
  char frame[32];
  int fl = snprintf(frame, sizeof frame, "%x\r\n", FILE_SIZE);
  assert_memory_equal(r.raw, frame, (size_t)fl);
  assert_int_equal(r.raw_len, (size_t)fl + FILE_SIZE + 2 + 5);
  resp_free(&r);

  /* the handler may end before the sendfile finished */
  cl_sends(&cl, "GET /file?chunked-end HTTP/1.1\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.body_len, FILE_SIZE);
  assert_memory_equal(r.body, g_file, FILE_SIZE);
  resp_free(&r);
  cl_sends(&cl, "GET /file?plain-end HTTP/1.1\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.body_len, FILE_SIZE);
  assert_memory_equal(r.body, g_file, FILE_SIZE);
  resp_free(&r);
  get_ok(&cl, "GET /hello HTTP/1.1\r\n\r\n", "hello world\n");

  /* a file shorter than promised: the connection is cut, not left hanging */
  cl_sends(&cl, "GET /file?short HTTP/1.1\r\n\r\n");
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
  cl_sends(&cl, "GET /chunked HTTP/1.1\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_true(resp_header(&r, "Transfer-Encoding", v, sizeof v));
  assert_false(resp_header(&r, "Content-Length", v, sizeof v));
  assert_string_equal(r.raw, "a\r\nfirst part\r\nb\r\nsecond part\r\n0\r\n\r\n");
  assert_string_equal(r.body, "first partsecond part");
  resp_free(&r);
  get_ok(&cl, "GET /hello HTTP/1.1\r\n\r\n", "hello world\n");
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
  cl_sends(&cl, "GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n"
                "GET /hello HTTP/1.1\r\n\r\n");
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
  strcpy(big, "GET /hello HTTP/1.1\r\nX-Big: ");
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
  strcpy(big + 5005, " HTTP/1.1\r\n\r\n");
  cl_sends(&cl, big);
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 431);
  resp_free(&r);
  cl_close(&cl);

  /* too many headers */
  cl_open(&cl);
  strcpy(big, "GET /hello HTTP/1.1\r\n");
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
  strcpy(big, "GET /hello HTTP/1.1\r\n");
  for (int i = 0; i < 31; i++)
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
  cl_sends(&cl, "PUT /v2/x/blobs/uploads/ HTTP/1.1\r\nContent-Length: 100000\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 413);
  resp_free(&r);
  cl_close(&cl);

  /* chunked body over the cap */
  cl_open(&cl);
  cl_sends(&cl, "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
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
  cl_sends(&cl, "POST /x HTTP/1.1\r\nContent-Length: 3\r\n"
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
  cl_sends(&cl, "GET /hello HTTP/1.1\r\nBad Header Line\r\n\r\n");
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
  get_ok(&cl, "GET /hello HTTP/1.1\r\n\r\n", "hello world\n");
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
  const char *head = "GET /hello HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
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
  get_ok(&cl, "GET /hello HTTP/1.1\r\n\r\n", "hello world\n");
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
  cl_sends(&cl, "GET /slow HTTP/1.1\r\n\r\n");
  sleep_ms(50);
  cl_close(&cl);
  assert_true(wait_for(&g_close_calls, 1, 2000));
  assert_true(wait_for(&g_slow_done, 1, 2000));
  assert_true(atomic_load(&g_slow_rc) < 0);
  sleep_ms(20);
  assert_int_equal(atomic_load(&g_close_calls), 1);
  /* and the server goes on */
  cl_open(&cl);
  get_ok(&cl, "GET /hello HTTP/1.1\r\n\r\n", "hello world\n");
  cl_close(&cl);
}

static void test_close_while_slow(void **state) {
  (void)state;
  /* the server shuts down with a request in service: the handler gets its
   * close callback and its late end is harmless (teardown checks the rest) */
  struct client cl;
  cl_open(&cl);
  cl_sends(&cl, "GET /slow HTTP/1.1\r\n\r\n");
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
  cl_sends(&cl, "GET /big HTTP/1.1\r\n\r\n");
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
  cl_sends(&cl, "GET /abort HTTP/1.1\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), -1); /* 10 of 100 bytes */
  assert_int_equal(r.status, 200);
  resp_free(&r);
  cl_close(&cl);

  cl_open(&cl);
  cl_sends(&cl, "GET /noresp HTTP/1.1\r\n\r\n");
  assert_int_equal(cl_read_resp(&cl, &r, 0), 0);
  assert_int_equal(r.status, 500);
  assert_true(cl_wait_eof(&cl));
  resp_free(&r);
  cl_close(&cl);

  cl_open(&cl);
  get_ok(&cl, "GET /badheader HTTP/1.1\r\n\r\n", "rc=-22");
  cl_close(&cl);
}

static void test_max_connections(void **state) {
  (void)state;
  struct client a, b, c;
  cl_open(&a);
  cl_open(&b);
  get_ok(&a, "GET /hello HTTP/1.1\r\n\r\n", "hello world\n");
  get_ok(&b, "GET /hello HTTP/1.1\r\n\r\n", "hello world\n");
  cl_open(&c); /* the kernel accepts; the server closes it at once */
  uint64_t t0 = now_ms();
  assert_true(cl_wait_eof(&c));
  assert_true(now_ms() - t0 < 250);
  cl_close(&c);
  cl_close(&a);
  cl_close(&b);
  sleep_ms(100);
  cl_open(&c);
  get_ok(&c, "GET /hello HTTP/1.1\r\n\r\n", "hello world\n");
  cl_close(&c);
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
  get_ok(&cl, "GET /hello?x=\"y\" HTTP/1.1\r\n\r\n", "hello world\n");
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
      "GET /hello HTTP/1.1\r\n\r\n",
      "HEAD /file HTTP/1.1\r\n\r\n",
      "GET /file HTTP/1.1\r\n\r\n",
      "GET /file?chunked HTTP/1.1\r\n\r\n",
      "GET /chunked HTTP/1.1\r\n\r\n",
      "GET /slow HTTP/1.1\r\n\r\n",
      "GET /big HTTP/1.1\r\n\r\n",
      "GET /info?a HTTP/1.1\r\nX-A: 1\r\n\r\n",
      "POST /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd",
      "GET /abort HTTP/1.1\r\n\r\n",
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
  get_ok(&cl, "GET /hello HTTP/1.1\r\n\r\n", "hello world\n");
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
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  unlink(g_file_path);
  free(g_file);
  return 0;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_get_simple),
      T(test_keep_alive),
      T(test_pipelined),
      T(test_pipelined_behind_slow),
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
      cmocka_unit_test_setup_teardown(test_max_connections, setup_two_conns,
                                      teardown),
      T(test_access_log),
      T(test_stress),
      cmocka_unit_test(test_listen_addresses),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
