/* test_upstream.c - the upstream client against a scripted HTTP server.
 *
 * The server runs in threads of this process on 127.0.0.1 and 127.0.0.2
 * (two listeners, so a redirect can go to "another host"), reads each
 * request head, records it, and lets the test's handler answer with canned
 * bytes: a cut body, a stall, a 429 with Retry-After, a challenge. The
 * client runs on a libuv loop in the test thread; each test asserts what the
 * caller saw (callbacks, bytes, error) and what went over the wire (the
 * recorded requests). Delays are kept short with upclient_set_backoff.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "errors.h"
#include "log.h"
#include "metrics.h"
#include "upstream.h"

/* --- scripted server --------------------------------------------------------- */

#define SRV_MAX_REQS 256

struct srv_req {
  int listener; /* 0: 127.0.0.1, 1: 127.0.0.2 */
  int conn;     /* which accepted connection carried it */
  char method[8];
  char path[1024]; /* without the query */
  char query[1024];
  char head[8192];
};

typedef int (*srv_handler_cb)(int fd, const struct srv_req *rq, int nth);

static struct {
  int lfd[2];
  int port[2];
  pthread_t acceptor;
  pthread_mutex_t mu;
  struct srv_req reqs[SRV_MAX_REQS];
  int nreqs;
  int conns;
  int conn_seq;
  volatile int stopping;
  srv_handler_cb handler;
} S;

static void send_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
    if (w <= 0) {
      if (w < 0 && errno == EINTR)
        continue;
      return;
    }
    c += w;
    n -= (size_t)w;
  }
}

static void sendf(int fd, const char *fmt, ...) {
  char b[100000];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(b, sizeof b, fmt, ap);
  va_end(ap);
  send_all(fd, b, (size_t)n);
}

/* A whole response with a Content-Length. */
static void reply(int fd, const char *status, const char *extra, const void *body,
                  size_t len) {
  sendf(fd, "HTTP/1.1 %s\r\nContent-Length: %zu\r\n%s\r\n", status, len,
        extra ? extra : "");
  if (len)
    send_all(fd, body, len);
}

/* Blocks until the peer closes or `ms` pass: a stalled server. */
static void stall(int fd, int ms) {
  char b[4096];
  for (int waited = 0; waited < ms && !S.stopping; waited += 50) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 50) > 0 && recv(fd, b, sizeof b, 0) <= 0)
      return;
  }
}

static int hdr_get(const struct srv_req *rq, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name);
  const char *p = strstr(rq->head, "\r\n");
  while (p && p[2]) {
    p += 2;
    if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
      const char *v = p + nl + 1, *e = strstr(v, "\r\n");
      while (*v == ' ')
        v++;
      snprintf(out, cap, "%.*s", (int)(e - v), v);
      return 1;
    }
    p = strstr(p, "\r\n");
  }
  return 0;
}

struct conn_arg {
  int fd;
  int listener;
  int conn;
};

static void *conn_main(void *arg) {
  struct conn_arg ca = *(struct conn_arg *)arg;
  free(arg);
  char buf[16384];
  size_t have = 0;
  for (;;) {
    char *end = NULL;
    while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
      if (S.stopping || have == sizeof buf)
        goto out;
      struct pollfd p = {ca.fd, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0)
        continue;
      ssize_t n = recv(ca.fd, buf + have, sizeof buf - have, 0);
      if (n <= 0)
        goto out;
      have += (size_t)n;
    }
    size_t hl = (size_t)(end + 4 - buf);
    struct srv_req rq;
    memset(&rq, 0, sizeof rq);
    rq.listener = ca.listener;
    rq.conn = ca.conn;
    snprintf(rq.head, sizeof rq.head, "%.*s", (int)hl, buf);
    char target[2048] = "";
    sscanf(rq.head, "%7s %2047s", rq.method, target);
    char *q = strchr(target, '?');
    if (q) {
      snprintf(rq.query, sizeof rq.query, "%.1023s", q + 1);
      *q = '\0';
    }
    snprintf(rq.path, sizeof rq.path, "%.1023s", target);
    memmove(buf, buf + hl, have - hl);
    have -= hl;
    int nth = 0;
    pthread_mutex_lock(&S.mu);
    if (S.nreqs < SRV_MAX_REQS)
      S.reqs[S.nreqs++] = rq;
    for (int i = 0; i < S.nreqs; i++)
      if (strcmp(S.reqs[i].path, rq.path) == 0)
        nth++;
    srv_handler_cb h = S.handler;
    pthread_mutex_unlock(&S.mu);
    if (!h || !h(ca.fd, &rq, nth))
      break;
  }
out:
  close(ca.fd);
  pthread_mutex_lock(&S.mu);
  S.conns--;
  pthread_mutex_unlock(&S.mu);
  return NULL;
}

static void *acceptor_main(void *arg) {
  (void)arg;
  while (!S.stopping) {
    struct pollfd p[2] = {{S.lfd[0], POLLIN, 0}, {S.lfd[1], POLLIN, 0}};
    if (poll(p, 2, 50) <= 0)
      continue;
    for (int i = 0; i < 2; i++) {
      if (!(p[i].revents & POLLIN))
        continue;
      int fd = accept(S.lfd[i], NULL, NULL);
      if (fd < 0)
        continue;
      struct conn_arg *ca = malloc(sizeof *ca);
      ca->fd = fd;
      ca->listener = i;
      pthread_mutex_lock(&S.mu);
      S.conns++;
      ca->conn = ++S.conn_seq;
      pthread_mutex_unlock(&S.mu);
      pthread_t t;
      pthread_create(&t, NULL, conn_main, ca);
      pthread_detach(t);
    }
  }
  return NULL;
}

static int listen_on(const char *ip, int *port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  inet_pton(AF_INET, ip, &a.sin_addr);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0) {
    close(fd);
    return -1;
  }
  socklen_t l = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &l);
  *port = ntohs(a.sin_port);
  return fd;
}

static void srv_start(void) {
  memset(&S, 0, sizeof S);
  pthread_mutex_init(&S.mu, NULL);
  S.lfd[0] = listen_on("127.0.0.1", &S.port[0]);
  S.lfd[1] = listen_on("127.0.0.2", &S.port[1]);
  assert_true(S.lfd[0] >= 0 && S.lfd[1] >= 0);
  pthread_create(&S.acceptor, NULL, acceptor_main, NULL);
}

static void srv_stop(void) {
  S.stopping = 1;
  pthread_join(S.acceptor, NULL);
  for (int i = 0; i < 500; i++) {
    pthread_mutex_lock(&S.mu);
    int n = S.conns;
    pthread_mutex_unlock(&S.mu);
    if (!n)
      break;
    usleep(10000);
  }
  close(S.lfd[0]);
  close(S.lfd[1]);
  pthread_mutex_destroy(&S.mu);
}

static void srv_set(srv_handler_cb h) {
  pthread_mutex_lock(&S.mu);
  S.handler = h;
  pthread_mutex_unlock(&S.mu);
}

/* Copies of the recorded requests for `path` (or all when NULL). */
static int srv_reqs(const char *path, struct srv_req *out, int max) {
  int n = 0;
  pthread_mutex_lock(&S.mu);
  for (int i = 0; i < S.nreqs && n < max; i++)
    if (!path || strcmp(S.reqs[i].path, path) == 0)
      out[n++] = S.reqs[i];
  pthread_mutex_unlock(&S.mu);
  return n;
}

static int srv_count(const char *path) {
  static struct srv_req tmp[SRV_MAX_REQS];
  return srv_reqs(path, tmp, SRV_MAX_REQS);
}

/* --- client harness ---------------------------------------------------------- */

struct call {
  int nheaders, ndata, ndone;
  int bad_order; /* a callback after on_done, or data before headers */
  int status;
  int64_t clen, range_start, total;
  char ct[256], digest[256], rl[64];
  int ct_null;
  char *body;
  size_t len;
  int err;
  int cancel_in_data; /* cancel from within the first on_data */
  int headers_ret;    /* what on_headers returns */
  struct upstream_req *req;
  uint64_t done_ms;
};

static struct {
  uv_loop_t loop;
  struct upclient *c;
  struct upstream *u;
  uv_timer_t tick;
  struct config_upstream cfg;
  char url[64];
} F;

static int cb_headers(void *ud, const struct upstream_response *r) {
  struct call *k = ud;
  if (k->ndone || k->nheaders)
    k->bad_order = 1;
  k->nheaders++;
  k->status = r->status;
  k->clen = r->content_length;
  k->range_start = r->range_start;
  k->total = r->total_size;
  k->ct_null = r->content_type == NULL;
  snprintf(k->ct, sizeof k->ct, "%s", r->content_type ? r->content_type : "");
  snprintf(k->digest, sizeof k->digest, "%s", r->digest ? r->digest : "");
  snprintf(k->rl, sizeof k->rl, "%s",
           r->ratelimit_remaining ? r->ratelimit_remaining : "");
  return k->headers_ret;
}

static int cb_data(void *ud, const char *p, size_t n) {
  struct call *k = ud;
  if (k->ndone || !k->nheaders)
    k->bad_order = 1;
  k->ndata++;
  k->body = realloc(k->body, k->len + n + 1);
  memcpy(k->body + k->len, p, n);
  k->len += n;
  if (k->cancel_in_data)
    upstream_req_cancel(k->req);
  return 0;
}

static void cb_done(void *ud, int err) {
  struct call *k = ud;
  if (k->ndone)
    k->bad_order = 1;
  k->ndone++;
  k->err = err;
  k->req = NULL;
  k->done_ms = uv_now(&F.loop);
}

static const struct upstream_cbs CBS = {cb_headers, cb_data, cb_done};

static void call_free(struct call *k) {
  free(k->body);
}

static void start(struct call *k, enum upstream_method m, const char *path,
                  const char *repo, int resumable, size_t max_body) {
  struct upstream_fetch_opts o;
  memset(&o, 0, sizeof o);
  o.method = m;
  o.path = path;
  o.repo = repo;
  o.kind = "blob";
  o.resumable = resumable;
  o.max_body = max_body;
  o.accept = "application/vnd.oci.image.manifest.v1+json";
  assert_int_equal(upstream_fetch(F.u, &o, &CBS, k, &k->req), 0);
  /* Never a callback from within upstream_fetch. */
  assert_int_equal(k->nheaders + k->ndata + k->ndone, 0);
}

static void on_tick(uv_timer_t *t) {
  (void)t;
}

static int all_done(struct call **ks, int n) {
  for (int i = 0; i < n; i++)
    if (!ks[i]->ndone)
      return 0;
  return 1;
}

/* Runs the loop until every call is done (or 10 s), then a little more so
 * any stray callback after on_done would be seen. */
static void run_calls(struct call **ks, int n) {
  uint64_t t0 = uv_now(&F.loop);
  uv_timer_start(&F.tick, on_tick, 10, 10);
  while (!all_done(ks, n) && uv_now(&F.loop) - t0 < 10000)
    uv_run(&F.loop, UV_RUN_ONCE);
  uint64_t t1 = uv_now(&F.loop);
  while (uv_now(&F.loop) - t1 < 50)
    uv_run(&F.loop, UV_RUN_ONCE);
  uv_timer_stop(&F.tick);
  for (int i = 0; i < n; i++) {
    assert_int_equal(ks[i]->ndone, 1);
    assert_false(ks[i]->bad_order);
  }
}

static void run1(struct call *k) {
  run_calls(&k, 1);
}

static void make_upstream(struct upstream **u, const char *url, const char *user,
                          const char *pw_env, unsigned retries) {
  memset(&F.cfg, 0, sizeof F.cfg);
  F.cfg.host = (char *)"test.local";
  F.cfg.url = (char *)url;
  F.cfg.username = (char *)user;
  F.cfg.password_env = (char *)pw_env;
  F.cfg.tls_verify = 1;
  F.cfg.connect_timeout_ms = 1000;
  F.cfg.low_speed_time_ms = 1000;
  F.cfg.max_retries = retries;
  assert_int_equal(upstream_new(u, F.c, &F.cfg), 0);
}

static int setup(void **state) {
  (void)state;
  if (getenv("UPSTREAM_TEST_DEBUG"))
    log_set_level(LOG_DEBUG);
  else
    log_set_level(LOG_ERROR);
  metrics_reset();
  srv_start();
  uv_loop_init(&F.loop);
  uv_timer_init(&F.loop, &F.tick);
  assert_int_equal(upclient_new(&F.c, &F.loop), 0);
  upclient_set_backoff(F.c, 10, 100);
  snprintf(F.url, sizeof F.url, "http://127.0.0.1:%d", S.port[0]);
  make_upstream(&F.u, F.url, NULL, NULL, 2);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  upstream_free(F.u);
  upclient_free(F.c);
  F.u = NULL;
  F.c = NULL;
  uv_close((uv_handle_t *)&F.tick, NULL);
  uv_run(&F.loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&F.loop), 0);
  srv_stop();
  return 0;
}

/* --- handlers ------------------------------------------------------------- */

static char PATTERN[300000];

static void pattern_init(void) {
  for (size_t i = 0; i < sizeof PATTERN; i++)
    PATTERN[i] = (char)('a' + (i * 7 + i / 251) % 26);
}

static int ok_v2(int fd, const struct srv_req *rq) {
  if (strcmp(rq->path, "/v2/") == 0) {
    reply(fd, "200 OK", "Content-Type: application/json\r\n", "{}", 2);
    return 1;
  }
  return 0;
}

static int h_basic_200(int fd, const struct srv_req *rq, int nth) {
  (void)nth;
  if (ok_v2(fd, rq))
    return 1;
  reply(fd, "200 OK",
        "Content-Type: application/vnd.oci.image.manifest.v1+json; "
        "charset=utf-8\r\n"
        "Docker-Content-Digest: sha256:abcd\r\n"
        "ratelimit-limit: 100;w=21600\r\n"
        "ratelimit-remaining: 76;w=21600\r\n",
        PATTERN, sizeof PATTERN);
  return 1;
}

/* --- tests ------------------------------------------------------------------- */

static void test_get_200(void **state) {
  (void)state;
  srv_set(h_basic_200);
  struct call a = {0}, b = {0};
  start(&a, UPSTREAM_GET, "/v2/lib/x/blobs/sha256:abcd", "lib/x", 0, 0);
  run1(&a);
  start(&b, UPSTREAM_GET, "/v2/lib/x/blobs/sha256:abcd", "lib/x", 0, 0);
  run1(&b);
  struct call *ks[] = {&a, &b};
  for (int i = 0; i < 2; i++) {
    struct call *k = ks[i];
    assert_int_equal(k->err, 0);
    assert_int_equal(k->nheaders, 1);
    assert_int_equal(k->status, 200);
    assert_int_equal(k->clen, (int64_t)sizeof PATTERN);
    assert_string_equal(k->ct, "application/vnd.oci.image.manifest.v1+json");
    assert_string_equal(k->digest, "sha256:abcd");
    assert_string_equal(k->rl, "76;w=21600");
    assert_int_equal(k->len, sizeof PATTERN);
    assert_memory_equal(k->body, PATTERN, sizeof PATTERN);
  }
  /* One ping for the upstream, not one per request. */
  assert_int_equal(srv_count("/v2/"), 1);
  struct srv_req rq[4];
  assert_int_equal(srv_reqs("/v2/lib/x/blobs/sha256:abcd", rq, 4), 2);
  /* The connection cache works: both went over one connection. */
  assert_int_equal(rq[0].conn, rq[1].conn);
  char v[256];
  assert_false(hdr_get(&rq[0], "Accept-Encoding", v, sizeof v));
  assert_false(hdr_get(&rq[0], "Authorization", v, sizeof v));
  assert_true(hdr_get(&rq[0], "User-Agent", v, sizeof v));
  assert_true(strncmp(v, "regmesh/", 8) == 0);
  assert_true(hdr_get(&rq[0], "Accept", v, sizeof v));
  assert_string_equal(v, "application/vnd.oci.image.manifest.v1+json");
  struct upstream_ratelimit rl;
  upstream_get_ratelimit(F.u, &rl);
  assert_int_equal(rl.limit, 100);
  assert_int_equal(rl.remaining, 76);
  assert_int_equal(rl.window_s, 21600);
  assert_int_equal(
      metrics_get("regmesh_upstream_ratelimit_remaining", "upstream=\"test.local\""), 76);
  assert_int_equal(metrics_get("regmesh_upstream_requests_total",
                               "upstream=\"test.local\",kind=\"blob\","
                               "status=\"200\""),
                   2);
  assert_int_equal(metrics_get("regmesh_upstream_requests_total",
                               "upstream=\"test.local\",kind=\"ping\","
                               "status=\"200\""),
                   1);
  assert_true(metrics_get("regmesh_upstream_bytes_total", "upstream=\"test.local\"") >=
              (int64_t)(2 * sizeof PATTERN));
  call_free(&a);
  call_free(&b);
}

/* The node pings every upstream at start; a later request must not ping
 * again, and a second upstream_ping is a no-op. */
static void test_eager_ping(void **state) {
  (void)state;
  srv_set(h_basic_200);
  upstream_ping(F.u);
  upstream_ping(F.u);
  uint64_t t0 = uv_now(&F.loop);
  uv_timer_start(&F.tick, on_tick, 10, 10);
  while (srv_count("/v2/") < 1 && uv_now(&F.loop) - t0 < 5000)
    uv_run(&F.loop, UV_RUN_ONCE);
  uv_timer_stop(&F.tick);
  assert_int_equal(srv_count("/v2/"), 1);
  struct call a = {0};
  start(&a, UPSTREAM_GET, "/v2/lib/x/blobs/sha256:abcd", "lib/x", 0, 0);
  run1(&a);
  assert_int_equal(a.err, 0);
  assert_int_equal(a.status, 200);
  assert_int_equal(srv_count("/v2/"), 1);
  call_free(&a);
}

static int h_head(int fd, const struct srv_req *rq, int nth) {
  (void)nth;
  if (ok_v2(fd, rq))
    return 1;
  if (strcmp(rq->method, "HEAD") != 0) { /* no cmocka asserts off the main thread */
    reply(fd, "405 Method Not Allowed", NULL, "", 0);
    return 1;
  }
  sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n"
            "Content-Type: application/vnd.docker.distribution.manifest.v2+"
            "json\r\nDocker-Content-Digest: sha256:feed\r\n\r\n");
  return 1;
}

static void test_head(void **state) {
  (void)state;
  srv_set(h_head);
  struct call a = {0};
  start(&a, UPSTREAM_HEAD, "/v2/lib/x/manifests/latest", "lib/x", 0, 0);
  run1(&a);
  assert_int_equal(a.err, 0);
  assert_int_equal(a.nheaders, 1);
  assert_int_equal(a.status, 200);
  assert_int_equal(a.clen, 1234);
  assert_int_equal(a.ndata, 0);
  assert_string_equal(a.digest, "sha256:feed");
  assert_string_equal(a.ct, "application/vnd.docker.distribution.manifest.v2+json");
  call_free(&a);
}

static int h_error_json(int fd, const struct srv_req *rq, int nth) {
  (void)nth;
  if (ok_v2(fd, rq))
    return 1;
  const char *b = "{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\"}]}";
  reply(fd, "404 Not Found", "Content-Type: application/json\r\n", b, strlen(b));
  return 1;
}

static void test_error_body_delivered(void **state) {
  (void)state;
  srv_set(h_error_json);
  struct call a = {0};
  start(&a, UPSTREAM_GET, "/v2/lib/x/manifests/nope", "lib/x", 0, 0);
  run1(&a);
  assert_int_equal(a.err, 0);
  assert_int_equal(a.status, 404);
  assert_int_equal(a.len, strlen("{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\"}]}"));
  assert_int_equal(srv_count("/v2/lib/x/manifests/nope"), 1); /* no retry */
  call_free(&a);
}

/* Bearer: the blob path wants a token; /token hands out "tok-<n>". */
static volatile int g_revoked; /* tokens below this number are refused */
static volatile int g_ping_401;

static void bearer_challenge(int fd, const char *extra_err) {
  char h[512];
  snprintf(h, sizeof h,
           "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:%d/token\","
           "service=\"test-svc\"%s\r\nContent-Type: application/json\r\n",
           S.port[0], extra_err);
  const char *b = "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}";
  reply(fd, "401 Unauthorized", h, b, strlen(b));
}

static int h_bearer(int fd, const struct srv_req *rq, int nth) {
  char auth[512] = "";
  hdr_get(rq, "Authorization", auth, sizeof auth);
  if (strcmp(rq->path, "/v2/") == 0) {
    if (g_ping_401 && !auth[0])
      bearer_challenge(fd, "");
    else
      reply(fd, "200 OK", NULL, "{}", 2);
    return 1;
  }
  if (strcmp(rq->path, "/token") == 0) {
    char b[256];
    if (nth % 2)
      snprintf(b, sizeof b, "{\"token\":\"tok-%d\",\"expires_in\":300}", nth);
    else
      snprintf(b, sizeof b,
               "{\"access_token\":\"tok-%d\",\"expires_in\":300,"
               "\"issued_at\":\"2020-01-01T00:00:00Z\"}",
               nth);
    usleep(20000); /* let concurrent requests pile up on it */
    reply(fd, "200 OK", "Content-Type: application/json\r\n", b, strlen(b));
    return 1;
  }
  int n = -1;
  if (sscanf(auth, "Bearer tok-%d", &n) != 1) {
    bearer_challenge(fd, "");
    return 1;
  }
  if (n < g_revoked) {
    bearer_challenge(fd, ",error=\"invalid_token\"");
    return 1;
  }
  reply(fd, "200 OK", "Content-Type: application/octet-stream\r\n", PATTERN, 1000);
  return 1;
}

static void test_bearer_401_then_cached(void **state) {
  (void)state;
  g_revoked = 0;
  g_ping_401 = 0;
  srv_set(h_bearer);
  struct call a = {0}, b = {0};
  start(&a, UPSTREAM_GET, "/v2/a/b/blobs/sha256:1", "a/b", 0, 0);
  run1(&a);
  assert_int_equal(a.err, 0);
  assert_int_equal(a.status, 200);
  assert_int_equal(a.nheaders, 1);
  assert_int_equal(a.len, 1000);
  struct srv_req rq[8];
  assert_int_equal(srv_reqs("/token", rq, 8), 1);
  assert_non_null(strstr(rq[0].query, "service=test-svc"));
  assert_non_null(strstr(rq[0].query, "scope=repository%3Aa%2Fb%3Apull"));
  assert_int_equal(srv_reqs("/v2/a/b/blobs/sha256:1", rq, 8), 2);
  char v[256] = "";
  assert_false(hdr_get(&rq[0], "Authorization", v, sizeof v));
  assert_true(hdr_get(&rq[1], "Authorization", v, sizeof v));
  assert_string_equal(v, "Bearer tok-1");

  /* The second request sends the cached token up front. */
  start(&b, UPSTREAM_GET, "/v2/a/b/blobs/sha256:1", "a/b", 0, 0);
  run1(&b);
  assert_int_equal(b.err, 0);
  assert_int_equal(b.status, 200);
  assert_int_equal(srv_count("/token"), 1);
  assert_int_equal(srv_reqs("/v2/a/b/blobs/sha256:1", rq, 8), 3);
  assert_true(hdr_get(&rq[2], "Authorization", v, sizeof v));
  assert_string_equal(v, "Bearer tok-1");
  assert_int_equal(metrics_get("regmesh_upstream_requests_total",
                               "upstream=\"test.local\",kind=\"token\","
                               "status=\"200\""),
                   1);
  call_free(&a);
  call_free(&b);
}

static void test_bearer_ping_shared_token(void **state) {
  (void)state;
  g_revoked = 0;
  g_ping_401 = 1;
  srv_set(h_bearer);
  struct call k[4];
  struct call *ks[4];
  memset(k, 0, sizeof k);
  for (int i = 0; i < 4; i++) {
    ks[i] = &k[i];
    start(&k[i], UPSTREAM_GET, "/v2/a/b/blobs/sha256:2", "a/b", 0, 0);
  }
  run_calls(ks, 4);
  for (int i = 0; i < 4; i++) {
    assert_int_equal(k[i].err, 0);
    assert_int_equal(k[i].status, 200);
    assert_int_equal(k[i].len, 1000);
    call_free(&k[i]);
  }
  /* One ping, one token for four requests; no 401 on the blob itself. */
  assert_int_equal(srv_count("/v2/"), 1);
  assert_int_equal(srv_count("/token"), 1);
  assert_int_equal(srv_count("/v2/a/b/blobs/sha256:2"), 4);
  struct srv_req rq[8];
  srv_reqs("/v2/a/b/blobs/sha256:2", rq, 8);
  for (int i = 0; i < 4; i++) {
    char v[256] = "";
    assert_true(hdr_get(&rq[i], "Authorization", v, sizeof v));
    assert_string_equal(v, "Bearer tok-1");
  }
  /* Another repository is another scope: a second token. */
  struct call c = {0};
  start(&c, UPSTREAM_GET, "/v2/c/d/blobs/sha256:2", "c/d", 0, 0);
  run1(&c);
  assert_int_equal(c.status, 200);
  assert_int_equal(srv_count("/token"), 2);
  srv_reqs("/token", rq, 8);
  assert_non_null(strstr(rq[1].query, "scope=repository%3Ac%2Fd%3Apull"));
  call_free(&c);
}

static void test_bearer_invalid_token(void **state) {
  (void)state;
  g_revoked = 0;
  g_ping_401 = 0;
  srv_set(h_bearer);
  struct call a = {0}, b = {0};
  start(&a, UPSTREAM_GET, "/v2/a/b/blobs/sha256:3", "a/b", 0, 0);
  run1(&a);
  assert_int_equal(a.status, 200);
  g_revoked = 2; /* tok-1 is now refused as invalid_token */
  start(&b, UPSTREAM_GET, "/v2/a/b/blobs/sha256:3", "a/b", 0, 0);
  run1(&b);
  assert_int_equal(b.err, 0);
  assert_int_equal(b.status, 200);
  assert_int_equal(srv_count("/token"), 2);
  struct srv_req rq[8];
  assert_int_equal(srv_reqs("/v2/a/b/blobs/sha256:3", rq, 8), 4);
  char v[256] = "";
  assert_true(hdr_get(&rq[2], "Authorization", v, sizeof v));
  assert_string_equal(v, "Bearer tok-1");
  assert_true(hdr_get(&rq[3], "Authorization", v, sizeof v));
  assert_string_equal(v, "Bearer tok-2");
  call_free(&a);
  call_free(&b);
}

static void test_bearer_refused_goes_to_caller(void **state) {
  (void)state;
  g_revoked = 1000; /* every token refused */
  g_ping_401 = 0;
  srv_set(h_bearer);
  struct call a = {0};
  start(&a, UPSTREAM_GET, "/v2/a/b/blobs/sha256:4", "a/b", 0, 0);
  run1(&a);
  /* 401 -> token -> 401 invalid_token -> token again -> 401: the caller
   * gets the last 401 with its body. */
  assert_int_equal(a.err, 0);
  assert_int_equal(a.status, 401);
  assert_true(a.len > 0);
  assert_int_equal(srv_count("/token"), 2);
  assert_int_equal(srv_count("/v2/a/b/blobs/sha256:4"), 3);
  call_free(&a);
}

static int h_basic_auth(int fd, const struct srv_req *rq, int nth) {
  (void)nth;
  char auth[256] = "";
  hdr_get(rq, "Authorization", auth, sizeof auth);
  /* "u:p" */
  if (strcmp(auth, "Basic dTpw") != 0) {
    reply(fd, "401 Unauthorized", "WWW-Authenticate: Basic realm=\"Registry Realm\"\r\n",
          "no", 2);
    return 1;
  }
  reply(fd, "200 OK", NULL, PATTERN, 500);
  return 1;
}

static void test_basic_auth(void **state) {
  (void)state;
  srv_set(h_basic_auth);
  setenv("UPTEST_PW", "p", 1);
  struct upstream *u2;
  make_upstream(&u2, F.url, "u", "UPTEST_PW", 2);
  struct upstream_fetch_opts o;
  memset(&o, 0, sizeof o);
  o.path = "/v2/a/blobs/sha256:5";
  o.repo = "a";
  struct call a = {0}, b = {0};
  assert_int_equal(upstream_fetch(u2, &o, &CBS, &a, &a.req), 0);
  run1(&a);
  assert_int_equal(a.err, 0);
  assert_int_equal(a.status, 200);
  assert_int_equal(a.len, 500);
  /* The ping learnt Basic; the request went with credentials at once. */
  struct srv_req rq[8];
  assert_int_equal(srv_reqs("/v2/a/blobs/sha256:5", rq, 8), 1);
  char v[256];
  assert_true(hdr_get(&rq[0], "Authorization", v, sizeof v));
  assert_string_equal(v, "Basic dTpw");
  upstream_free(u2);

  /* Wrong password: the 401 reaches the caller, after one try. */
  setenv("UPTEST_PW", "wrong", 1);
  make_upstream(&u2, F.url, "u", "UPTEST_PW", 2);
  assert_int_equal(upstream_fetch(u2, &o, &CBS, &b, &b.req), 0);
  run1(&b);
  assert_int_equal(b.err, 0);
  assert_int_equal(b.status, 401);
  assert_int_equal(b.len, 2);
  upstream_free(u2);

  /* A missing variable is a configuration error. */
  unsetenv("UPTEST_PW");
  memset(&F.cfg, 0, sizeof F.cfg);
  F.cfg.host = (char *)"x";
  F.cfg.url = F.url;
  F.cfg.password_env = (char *)"UPTEST_PW";
  assert_int_equal(upstream_new(&u2, F.c, &F.cfg), RM_ECONFIG);
  call_free(&a);
  call_free(&b);
}

static int h_503_then_200(int fd, const struct srv_req *rq, int nth) {
  if (ok_v2(fd, rq))
    return 1;
  if (nth == 1) {
    reply(fd, "503 Service Unavailable", NULL, "busy", 4);
    return 1;
  }
  reply(fd, "200 OK", NULL, PATTERN, 4000);
  return 1;
}

static void test_retry_503(void **state) {
  (void)state;
  srv_set(h_503_then_200);
  struct call a = {0};
  start(&a, UPSTREAM_GET, "/v2/r/blobs/sha256:6", "r", 0, 0);
  run1(&a);
  assert_int_equal(a.err, 0);
  assert_int_equal(a.status, 200);
  assert_int_equal(a.nheaders, 1);
  assert_int_equal(a.len, 4000);
  assert_memory_equal(a.body, PATTERN, 4000);
  assert_int_equal(srv_count("/v2/r/blobs/sha256:6"), 2);
  call_free(&a);
}

static int h_429_retry_after(int fd, const struct srv_req *rq, int nth) {
  if (ok_v2(fd, rq))
    return 1;
  if (nth == 1) {
    reply(fd, "429 Too Many Requests", "Retry-After: 1\r\n", "slow", 4);
    return 1;
  }
  reply(fd, "200 OK", NULL, PATTERN, 10);
  return 1;
}

static void test_retry_after(void **state) {
  (void)state;
  srv_set(h_429_retry_after);
  struct call a = {0};
  uv_update_time(&F.loop);
  uint64_t t0 = uv_now(&F.loop);
  start(&a, UPSTREAM_GET, "/v2/r/manifests/sha256:7", "r", 0, 0);
  run1(&a);
  uint64_t took = a.done_ms - t0;
  assert_int_equal(a.err, 0);
  assert_int_equal(a.status, 200);
  assert_int_equal(a.len, 10);
  /* Retry-After: 1 honoured (the backoff alone would be 10 ms). */
  assert_true(took >= 950);
  assert_true(took < 3000);
  call_free(&a);
}

static int h_429_always(int fd, const struct srv_req *rq, int nth) {
  (void)nth;
  if (ok_v2(fd, rq))
    return 1;
  const char *b = "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\"}]}";
  reply(fd, "429 Too Many Requests", "ratelimit-remaining: 0;w=21600\r\n", b, strlen(b));
  return 1;
}

static void test_429_to_caller(void **state) {
  (void)state;
  srv_set(h_429_always);
  struct call a = {0};
  start(&a, UPSTREAM_GET, "/v2/r/manifests/latest", "r", 0, 0);
  run1(&a);
  assert_int_equal(a.err, 0);
  assert_int_equal(a.status, 429);
  assert_int_equal(a.nheaders, 1);
  assert_int_equal(a.len, strlen("{\"errors\":[{\"code\":\"TOOMANYREQUESTS\"}]}"));
  /* One try and max_retries (2) retries. */
  assert_int_equal(srv_count("/v2/r/manifests/latest"), 3);
  struct upstream_ratelimit rl;
  upstream_get_ratelimit(F.u, &rl);
  assert_int_equal(rl.remaining, 0);
  call_free(&a);
}

/* Resume: the first answer is cut after half of 1000 bytes. `mode` picks how
 * the server answers the resumed request. */
static volatile int g_resume_mode; /* 0: 206, 1: 200 full, 2: stall */

static int h_cut(int fd, const struct srv_req *rq, int nth) {
  if (ok_v2(fd, rq))
    return 1;
  char range[128] = "";
  hdr_get(rq, "Range", range, sizeof range);
  if (nth == 1) {
    sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n"
              "Docker-Content-Digest: sha256:cut\r\n\r\n");
    send_all(fd, PATTERN, 500);
    if (g_resume_mode == 2)
      stall(fd, 3000); /* the client's low-speed limit fires first */
    return 0;          /* and close */
  }
  if (g_resume_mode == 1) {
    reply(fd, "200 OK", NULL, PATTERN, 1000);
    return 1;
  }
  int from = -1;
  if (sscanf(range, "bytes=%d-", &from) != 1 || from < 0 || from > 1000) {
    reply(fd, "400 Bad Request", NULL, "", 0);
    return 1;
  }
  char h[128];
  snprintf(h, sizeof h, "Content-Range: bytes %d-999/1000\r\n", from);
  reply(fd, "206 Partial Content", h, PATTERN + from, (size_t)(1000 - from));
  return 1;
}

static void check_resumed(struct call *a, const char *path) {
  assert_int_equal(a->err, 0);
  assert_int_equal(a->nheaders, 1);
  assert_int_equal(a->status, 200);
  assert_int_equal(a->clen, 1000);
  assert_int_equal(a->len, 1000);
  assert_memory_equal(a->body, PATTERN, 1000);
  struct srv_req rq[8];
  assert_int_equal(srv_reqs(path, rq, 8), 2);
  char v[128] = "";
  assert_false(hdr_get(&rq[0], "Range", v, sizeof v));
  assert_true(hdr_get(&rq[1], "Range", v, sizeof v));
  assert_string_equal(v, "bytes=500-");
}

static void test_resume_206(void **state) {
  (void)state;
  g_resume_mode = 0;
  srv_set(h_cut);
  struct call a = {0};
  start(&a, UPSTREAM_GET, "/v2/r/blobs/sha256:cut", "r", 1, 0);
  run1(&a);
  check_resumed(&a, "/v2/r/blobs/sha256:cut");
  call_free(&a);
}

static void test_resume_200_skips(void **state) {
  (void)state;
  g_resume_mode = 1;
  srv_set(h_cut);
  struct call a = {0};
  start(&a, UPSTREAM_GET, "/v2/r/blobs/sha256:cut", "r", 1, 0);
  run1(&a);
  check_resumed(&a, "/v2/r/blobs/sha256:cut");
  call_free(&a);
}

static void test_resume_after_low_speed(void **state) {
  (void)state;
  g_resume_mode = 2;
  srv_set(h_cut);
  struct call a = {0};
  start(&a, UPSTREAM_GET, "/v2/r/blobs/sha256:cut", "r", 1, 0);
  run1(&a);
  check_resumed(&a, "/v2/r/blobs/sha256:cut");
  call_free(&a);
}

static void test_cut_not_resumable(void **state) {
  (void)state;
  g_resume_mode = 0;
  srv_set(h_cut);
  struct call a = {0};
  start(&a, UPSTREAM_GET, "/v2/r/blobs/sha256:cut", "r", 0, 0);
  run1(&a);
  assert_int_equal(a.err, RM_ESIZE);
  assert_int_equal(a.nheaders, 1);
  assert_int_equal(a.len, 500);
  assert_int_equal(srv_count("/v2/r/blobs/sha256:cut"), 1);
  call_free(&a);
}

/* The registry sends blobs to "another host" (127.0.0.2) with a 302. */
static int h_redirect(int fd, const struct srv_req *rq, int nth) {
  (void)nth;
  char auth[256] = "";
  hdr_get(rq, "Authorization", auth, sizeof auth);
  if (rq->listener == 1) {
    reply(fd, "200 OK", "Content-Type: application/octet-stream\r\n", PATTERN, 2000);
    return 1;
  }
  if (strcmp(rq->path, "/v2/") == 0 && !auth[0]) {
    bearer_challenge(fd, "");
    return 1;
  }
  if (strcmp(rq->path, "/token") == 0) {
    const char *b = "{\"token\":\"tok-9\"}";
    reply(fd, "200 OK", NULL, b, strlen(b));
    return 1;
  }
  if (strcmp(auth, "Bearer tok-9") != 0) {
    bearer_challenge(fd, "");
    return 1;
  }
  char h[256];
  snprintf(h, sizeof h, "Location: http://127.0.0.2:%d/cdn/blob?sig=1\r\n", S.port[1]);
  reply(fd, "302 Found", h, "", 0);
  return 1;
}

static void test_redirect_drops_auth(void **state) {
  (void)state;
  srv_set(h_redirect);
  struct call a = {0};
  start(&a, UPSTREAM_GET, "/v2/r/blobs/sha256:8", "r", 1, 0);
  run1(&a);
  assert_int_equal(a.err, 0);
  assert_int_equal(a.status, 200);
  assert_int_equal(a.nheaders, 1);
  assert_int_equal(a.len, 2000);
  assert_memory_equal(a.body, PATTERN, 2000);
  struct srv_req rq[8];
  char v[256] = "";
  assert_int_equal(srv_reqs("/v2/r/blobs/sha256:8", rq, 8), 1);
  assert_true(hdr_get(&rq[0], "Authorization", v, sizeof v));
  assert_string_equal(v, "Bearer tok-9");
  assert_int_equal(srv_reqs("/cdn/blob", rq, 8), 1);
  assert_int_equal(rq[0].listener, 1);
  assert_string_equal(rq[0].query, "sig=1");
  assert_false(hdr_get(&rq[0], "Authorization", v, sizeof v));
  call_free(&a);
}

static int h_stall(int fd, const struct srv_req *rq, int nth) {
  (void)nth;
  if (ok_v2(fd, rq))
    return 1;
  sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
  send_all(fd, PATTERN, 1000);
  stall(fd, 5000);
  return 0;
}

static void test_cancel_in_data(void **state) {
  (void)state;
  srv_set(h_stall);
  struct call a = {0};
  a.cancel_in_data = 1;
  start(&a, UPSTREAM_GET, "/v2/r/blobs/sha256:9", "r", 1, 0);
  uv_update_time(&F.loop);
  uint64_t t0 = uv_now(&F.loop);
  run1(&a);
  assert_int_equal(a.err, UV_ECANCELED);
  assert_int_equal(a.nheaders, 1);
  assert_int_equal(a.ndata, 1);
  assert_true(a.done_ms - t0 < 1000);
  call_free(&a);
}

static struct call *g_cancel_me;

static void on_cancel_timer(uv_timer_t *t) {
  if (g_cancel_me->req && g_cancel_me->ndata) {
    upstream_req_cancel(g_cancel_me->req);
    /* A second cancel before on_done is harmless. */
    upstream_req_cancel(g_cancel_me->req);
    uv_timer_stop(t);
  }
}

static void test_cancel_from_outside(void **state) {
  (void)state;
  srv_set(h_stall);
  struct call a = {0}, b = {0};
  start(&a, UPSTREAM_GET, "/v2/r/blobs/sha256:10", "r", 1, 0);
  /* Cancelled before it even began: on_done only, later. */
  start(&b, UPSTREAM_GET, "/v2/r/blobs/sha256:11", "r", 1, 0);
  upstream_req_cancel(b.req);
  assert_int_equal(b.ndone, 0);
  g_cancel_me = &a;
  static uv_timer_t t; /* must outlive its close callback */
  uv_timer_init(&F.loop, &t);
  uv_timer_start(&t, on_cancel_timer, 5, 5);
  struct call *ks[] = {&a, &b};
  run_calls(ks, 2);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&F.loop, UV_RUN_NOWAIT);
  assert_int_equal(a.err, UV_ECANCELED);
  assert_int_equal(a.nheaders, 1);
  assert_true(a.ndata >= 1);
  assert_int_equal(b.err, UV_ECANCELED);
  assert_int_equal(b.nheaders, 0);
  assert_int_equal(b.ndata, 0);
  assert_int_equal(srv_count("/v2/r/blobs/sha256:11"), 0);
  call_free(&a);
  call_free(&b);
}

static void test_connection_refused(void **state) {
  (void)state;
  int port;
  int fd = listen_on("127.0.0.1", &port);
  close(fd); /* nothing listens there now */
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
  struct upstream *u2;
  make_upstream(&u2, url, NULL, NULL, 2);
  struct upstream_fetch_opts o;
  memset(&o, 0, sizeof o);
  o.path = "/v2/r/blobs/sha256:12";
  o.kind = "blob";
  struct call a = {0};
  uv_update_time(&F.loop);
  uint64_t t0 = uv_now(&F.loop);
  assert_int_equal(upstream_fetch(u2, &o, &CBS, &a, &a.req), 0);
  run1(&a);
  assert_int_equal(a.err, RM_EUNREACH);
  assert_int_equal(a.nheaders, 0);
  /* Two backoffs of 10 and 20 ms, no connect timeout waited. */
  assert_true(a.done_ms - t0 >= 30);
  assert_true(a.done_ms - t0 < 2000);
  assert_int_equal(metrics_get("regmesh_upstream_requests_total",
                               "upstream=\"test.local\",kind=\"ping\","
                               "status=\"error\""),
                   3);
  upstream_free(u2);
  call_free(&a);
}

static int h_big(int fd, const struct srv_req *rq, int nth) {
  (void)nth;
  if (ok_v2(fd, rq))
    return 1;
  if (strstr(rq->path, "sized")) {
    reply(fd, "200 OK", NULL, PATTERN, 5000);
    return 1;
  }
  /* No length: the body runs to the close. */
  sendf(fd, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
  send_all(fd, PATTERN, 5000);
  return 0;
}

static void test_max_body(void **state) {
  (void)state;
  srv_set(h_big);
  struct call a = {0}, b = {0};
  start(&a, UPSTREAM_GET, "/v2/r/manifests/sized", "r", 0, 1000);
  start(&b, UPSTREAM_GET, "/v2/r/manifests/streamed", "r", 0, 1000);
  struct call *ks[] = {&a, &b};
  run_calls(ks, 2);
  /* Announced too big: refused before on_headers. */
  assert_int_equal(a.err, RM_ETOOBIG);
  assert_int_equal(a.nheaders, 0);
  /* Found too big while streaming. */
  assert_int_equal(b.err, RM_ETOOBIG);
  assert_int_equal(b.nheaders, 1);
  assert_true(b.len <= 1000);
  call_free(&a);
  call_free(&b);
}

static int h_huge_head(int fd, const struct srv_req *rq, int nth) {
  (void)nth;
  if (ok_v2(fd, rq))
    return 1;
  sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
  char line[1100];
  memset(line, 'x', sizeof line);
  memcpy(line, "X-Filler: ", 10);
  memcpy(line + sizeof line - 2, "\r\n", 2);
  for (int i = 0; i < 70; i++)
    send_all(fd, line, sizeof line);
  /* An absurd single value is dropped, not fatal, when under the cap. */
  sendf(fd, "\r\nok");
  return 0;
}

static int h_long_digest(int fd, const struct srv_req *rq, int nth) {
  (void)nth;
  if (ok_v2(fd, rq))
    return 1;
  char h[2000];
  memset(h, 'd', sizeof h);
  memcpy(h, "Docker-Content-Digest: ", 23);
  memcpy(h + sizeof h - 3, "\r\n", 3);
  reply(fd, "200 OK", h, "ok", 2);
  return 1;
}

static void test_header_limits(void **state) {
  (void)state;
  srv_set(h_huge_head);
  struct call a = {0}, b = {0};
  start(&a, UPSTREAM_GET, "/v2/r/manifests/huge", "r", 0, 0);
  run1(&a);
  assert_int_equal(a.err, RM_EPARSE);
  assert_int_equal(a.nheaders, 0);
  srv_set(h_long_digest);
  start(&b, UPSTREAM_GET, "/v2/r/manifests/long", "r", 0, 0);
  run1(&b);
  assert_int_equal(b.err, 0);
  assert_int_equal(b.status, 200);
  assert_string_equal(b.digest, "");
  assert_true(b.ct_null);
  call_free(&a);
  call_free(&b);
}

static void test_headers_cb_error(void **state) {
  (void)state;
  srv_set(h_basic_200);
  struct call a = {0};
  a.headers_ret = RM_ENOSPACE;
  start(&a, UPSTREAM_GET, "/v2/lib/x/blobs/sha256:abcd", "lib/x", 0, 0);
  run1(&a);
  assert_int_equal(a.err, RM_ENOSPACE);
  assert_int_equal(a.nheaders, 1);
  assert_int_equal(a.ndata, 0);
  call_free(&a);
}

static struct call g_free_calls[3];

static void test_free_with_requests_in_flight(void **state) {
  (void)state;
  srv_set(h_stall);
  memset(g_free_calls, 0, sizeof g_free_calls);
  for (int i = 0; i < 3; i++)
    start(&g_free_calls[i], UPSTREAM_GET, "/v2/r/blobs/sha256:13", "r", 1, 0);
  /* Let them get going, then tear everything down under them. */
  uv_update_time(&F.loop);
  uint64_t t0 = uv_now(&F.loop);
  uv_timer_start(&F.tick, on_tick, 10, 10);
  while (uv_now(&F.loop) - t0 < 300)
    uv_run(&F.loop, UV_RUN_ONCE);
  uv_timer_stop(&F.tick);
  upstream_free(F.u);
  F.u = NULL;
  for (int i = 0; i < 3; i++) {
    assert_int_equal(g_free_calls[i].ndone, 1);
    assert_int_equal(g_free_calls[i].err, UV_ECANCELED);
    assert_false(g_free_calls[i].bad_order);
    call_free(&g_free_calls[i]);
  }
}

static void test_cancel_in_backoff(void **state) {
  (void)state;
  srv_set(h_429_retry_after); /* the retry waits 1 s */
  struct call a = {0};
  start(&a, UPSTREAM_GET, "/v2/r/manifests/sha256:14", "r", 0, 0);
  uv_update_time(&F.loop);
  uint64_t t0 = uv_now(&F.loop);
  uv_timer_start(&F.tick, on_tick, 10, 10);
  while (srv_count("/v2/r/manifests/sha256:14") < 1 && uv_now(&F.loop) - t0 < 5000)
    uv_run(&F.loop, UV_RUN_ONCE);
  t0 = uv_now(&F.loop);
  while (uv_now(&F.loop) - t0 < 100)
    uv_run(&F.loop, UV_RUN_ONCE);
  upstream_req_cancel(a.req);
  run1(&a);
  assert_int_equal(a.err, UV_ECANCELED);
  assert_int_equal(a.nheaders, 0);
  assert_true(a.done_ms - t0 < 500);
  assert_int_equal(srv_count("/v2/r/manifests/sha256:14"), 1);
  call_free(&a);
}

/* on_headers of one request starts another: curl must not see a handle
 * added from within its own callback. */
static struct call g_inner;

static int cb_headers_starts(void *ud, const struct upstream_response *r) {
  int rc = cb_headers(ud, r);
  struct upstream_fetch_opts o;
  memset(&o, 0, sizeof o);
  o.path = "/v2/lib/x/blobs/sha256:inner";
  o.repo = "lib/x";
  if (upstream_fetch(F.u, &o, &CBS, &g_inner, &g_inner.req) != 0)
    return UV_EINVAL;
  return rc;
}

static void test_fetch_from_callback(void **state) {
  (void)state;
  srv_set(h_basic_200);
  memset(&g_inner, 0, sizeof g_inner);
  static const struct upstream_cbs cbs = {cb_headers_starts, cb_data, cb_done};
  struct upstream_fetch_opts o;
  memset(&o, 0, sizeof o);
  o.path = "/v2/lib/x/blobs/sha256:outer";
  o.repo = "lib/x";
  struct call a = {0};
  assert_int_equal(upstream_fetch(F.u, &o, &cbs, &a, &a.req), 0);
  run1(&a);
  struct call *ks[] = {&g_inner};
  run_calls(ks, 1);
  assert_int_equal(a.err, 0);
  assert_int_equal(a.len, sizeof PATTERN);
  assert_int_equal(g_inner.err, 0);
  assert_int_equal(g_inner.len, sizeof PATTERN);
  assert_memory_equal(g_inner.body, PATTERN, sizeof PATTERN);
  call_free(&a);
  call_free(&g_inner);
}

/* 127.0.0.1 streams and stalls; 127.0.0.2 wants a token whose endpoint
 * stalls. */
static int h_stall_or_token_stall(int fd, const struct srv_req *rq, int nth) {
  if (rq->listener == 0)
    return h_stall(fd, rq, nth);
  if (strcmp(rq->path, "/token") == 0) {
    stall(fd, 5000);
    return 0;
  }
  char h[256];
  snprintf(h, sizeof h,
           "WWW-Authenticate: Bearer realm=\"http://127.0.0.2:%d/token\"\r\n", S.port[1]);
  reply(fd, "401 Unauthorized", h, "", 0);
  return 1;
}

static void test_client_free_in_flight(void **state) {
  (void)state;
  srv_set(h_stall_or_token_stall);
  char url2[64];
  snprintf(url2, sizeof url2, "http://127.0.0.2:%d", S.port[1]);
  struct upstream *u2;
  make_upstream(&u2, url2, NULL, NULL, 2);
  struct upstream_fetch_opts o;
  memset(&o, 0, sizeof o);
  o.path = "/v2/t/blobs/sha256:18";
  o.repo = "t";
  struct call a = {0}, b = {0}, c = {0}, w1 = {0}, w2 = {0};
  start(&a, UPSTREAM_GET, "/v2/r/blobs/sha256:15", "r", 1, 0);
  start(&b, UPSTREAM_GET, "/v2/r/blobs/sha256:16", "r", 1, 0);
  assert_int_equal(upstream_fetch(u2, &o, &CBS, &w1, &w1.req), 0);
  assert_int_equal(upstream_fetch(u2, &o, &CBS, &w2, &w2.req), 0);
  uv_update_time(&F.loop);
  uint64_t t0 = uv_now(&F.loop);
  uv_timer_start(&F.tick, on_tick, 10, 10);
  while ((!a.ndata || srv_count("/token") < 1) && uv_now(&F.loop) - t0 < 3000)
    uv_run(&F.loop, UV_RUN_ONCE);
  uv_timer_stop(&F.tick);
  assert_true(a.ndata > 0);
  assert_int_equal(srv_count("/token"), 1);
  start(&c, UPSTREAM_GET, "/v2/r/blobs/sha256:17", "r", 1, 0); /* queued */
  /* Every on_done runs synchronously, once, with UV_ECANCELED. */
  upclient_free(F.c);
  F.c = NULL;
  upstream_free(u2);
  struct call *ks[] = {&a, &b, &c, &w1, &w2};
  for (int i = 0; i < 5; i++) {
    assert_int_equal(ks[i]->ndone, 1);
    assert_int_equal(ks[i]->err, UV_ECANCELED);
    assert_false(ks[i]->bad_order);
    call_free(ks[i]);
  }
  /* The orphaned upstream refuses new work and is still freed normally. */
  o.path = "/v2/";
  struct call d = {0};
  assert_int_equal(upstream_fetch(F.u, &o, &CBS, &d, &d.req), UV_ECANCELED);
}

int main(void) {
  pattern_init();
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_get_200),
      T(test_head),
      T(test_error_body_delivered),
      T(test_bearer_401_then_cached),
      T(test_bearer_ping_shared_token),
      T(test_eager_ping),
      T(test_bearer_invalid_token),
      T(test_bearer_refused_goes_to_caller),
      T(test_basic_auth),
      T(test_retry_503),
      T(test_retry_after),
      T(test_429_to_caller),
      T(test_resume_206),
      T(test_resume_200_skips),
      T(test_resume_after_low_speed),
      T(test_cut_not_resumable),
      T(test_redirect_drops_auth),
      T(test_cancel_in_data),
      T(test_cancel_from_outside),
      T(test_connection_refused),
      T(test_max_body),
      T(test_header_limits),
      T(test_headers_cb_error),
      T(test_free_with_requests_in_flight),
      T(test_cancel_in_backoff),
      T(test_fetch_from_callback),
      T(test_client_free_in_flight),
  };
#undef T
  return cmocka_run_group_tests(tests, NULL, NULL);
}
