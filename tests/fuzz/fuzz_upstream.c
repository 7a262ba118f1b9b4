/* fuzz_upstream.c - libFuzzer target for the upstream response path: a
 * fake upstream in this process answers every connection with the fuzz
 * input (status line, headers, body, as raw bytes) and closes, and the
 * node's real upstream client (libcurl and our header, auth, retry,
 * resume and body callbacks) fetches a blob from it. Every request of one
 * input (the /v2/ ping, the fetch, a token request, redirects) gets the
 * same bytes. Whatever comes, the fetch must end with exactly one on_done,
 * body bytes never past what was allowed.
 *
 * A fuzzed WWW-Authenticate realm or Location may name any host, so the
 * process first moves into a network namespace of its own with only
 * loopback (unshare(CLONE_NEWNET), root): nothing it does can leave the
 * machine. Without that right it runs nothing and says so.
 */
#include "config.h"
#include "log.h"
#include "upstream.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_BODY (256 * 1024)

static uv_loop_t loop;
static struct upclient *uc;
static int listen_fd = -1, port;
static int usable;
/* the current input, answered to every connection: a copy, since the
 * server thread may still answer a connection of the previous input */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static uint8_t cur[65536];
static size_t cur_len;

static void *server(void *arg) {
  (void)arg;
  for (;;) {
    int fd = accept(listen_fd, NULL, NULL);
    if (fd < 0)
      continue;
    /* read the request head (bounded in bytes and time), then answer */
    char buf[8192];
    size_t got = 0;
    struct pollfd p = {fd, POLLIN, 0};
    while (got < sizeof buf - 1 && poll(&p, 1, 200) > 0) {
      ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
      if (n <= 0)
        break;
      got += (size_t)n;
      buf[got] = '\0';
      if (strstr(buf, "\r\n\r\n"))
        break;
    }
    pthread_mutex_lock(&mu);
    size_t off = 0;
    while (off < cur_len) {
      ssize_t n = write(fd, cur + off, cur_len - off);
      if (n <= 0)
        break;
      off += (size_t)n;
    }
    pthread_mutex_unlock(&mu);
    shutdown(fd, SHUT_WR);
    close(fd);
  }
  return NULL;
}

static int own_network(void) {
  if (unshare(CLONE_NEWNET) != 0)
    return -1;
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
  int r = s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0 ? 0 : -1;
  ifr.ifr_flags |= IFF_UP;
  if (r == 0)
    r = ioctl(s, SIOCSIFFLAGS, &ifr);
  if (s >= 0)
    close(s);
  return r;
}

static void init(void) {
  log_set_level(getenv("FUZZ_UPSTREAM_DEBUG") ? LOG_DEBUG : LOG_ERROR);
  if (own_network() != 0) {
    fprintf(stderr, "fuzz_upstream: no network namespace of its own (needs root): "
                    "not fuzzing, a fuzzed realm could reach other hosts\n");
    return;
  }
  listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      listen(listen_fd, 64) != 0 || getsockname(listen_fd, (struct sockaddr *)&a, &al) != 0)
    abort();
  port = ntohs(a.sin_port);
  pthread_t th;
  if (pthread_create(&th, NULL, server, NULL) != 0)
    abort();
  pthread_detach(th);
  uv_loop_init(&loop);
  if (upclient_new(&uc, &loop) != 0)
    abort();
  upclient_set_backoff(uc, 1, 2);
  usable = 1;
}

struct run {
  int done, err, headers;
  size_t body;
};

static int on_headers(void *ud, const struct upstream_response *resp) {
  struct run *r = ud;
  if (r->headers++ || r->done)
    abort(); /* one final response, before the end */
  (void)resp;
  return 0;
}

static int on_data(void *ud, const char *p, size_t n) {
  struct run *r = ud;
  (void)p;
  if (!r->headers || r->done)
    abort();
  r->body += n;
  if (r->body > MAX_BODY)
    abort(); /* max_body was not kept */
  return 0;
}

static void on_done(void *ud, int err) {
  struct run *r = ud;
  if (r->done++)
    abort(); /* exactly once */
  r->err = err;
}

static const struct upstream_cbs cbs = {on_headers, on_data, on_done};

static void on_deadline(uv_timer_t *t) {
  upstream_req_cancel(t->data);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int ready;
  if (!ready) {
    init();
    ready = 1;
  }
  if (!usable || size > 65536)
    return 0;
  pthread_mutex_lock(&mu);
  memcpy(cur, data, size);
  cur_len = size;
  pthread_mutex_unlock(&mu);

  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
  struct config_upstream cfg = {
      .host = "fuzz.test", .url = url, .tls_verify = 1, .connect_timeout_ms = 1000,
      .low_speed_time_ms = 1000, .max_retries = 1, .tag_ttl_ms = 1000,
      .username = "u", .password = "p"};
  struct upstream *u;
  if (upstream_new(&u, uc, &cfg) != 0)
    abort();
  struct run r = {0};
  struct upstream_fetch_opts o = {
      .method = UPSTREAM_GET,
      .path = "/v2/a/b/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
      .repo = "a/b", .kind = "blob", .resumable = 1, .max_body = MAX_BODY};
  struct upstream_req *req;
  if (upstream_fetch(u, &o, &cbs, &r, &req) != 0)
    abort();
  uv_timer_t deadline;
  uv_timer_init(&loop, &deadline);
  deadline.data = req;
  uv_timer_start(&deadline, on_deadline, 1000, 0);
  while (!r.done)
    uv_run(&loop, UV_RUN_ONCE);
  uv_timer_stop(&deadline);
  uv_close((uv_handle_t *)&deadline, NULL);
  upstream_free(u);
  uv_run(&loop, UV_RUN_NOWAIT);
  return 0;
}
