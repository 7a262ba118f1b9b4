/* fuzz_http.c - libFuzzer target for the HTTP server: raw bytes, as a
 * client would send them, go through the real parser, connection state
 * machine and response paths (simple, chunked, file bodies) on one end of
 * a socketpair the server adopts. Requests, pipelining, bodies, limits and
 * early closes are all reachable; the server must neither crash nor keep
 * the connection forever once the client has hung up. A CONNECT is
 * answered as the proxy listener does: its TLS terminated with a leaf from
 * a CA made at start (the bytes after it are then the handshake), or, for
 * a target starting with "t", the socket taken out as for a tunnel.
 */
#include "ca.h"
#include "http_server.h"
#include "leafcert.h"
#include "log.h"

#include <http_parser.h>

#include <fcntl.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FILE_LEN 70000
#define LOOP_ROUNDS 400

static uv_loop_t loop;
static struct http_server *srv;
static char file_path[64];

static void file_sent(struct http_request *req, int status, void *ud) {
  close((int)(intptr_t)ud);
  if (status == 0)
    http_respond_end(req);
  else
    http_respond_abort(req); /* the handler's part: let the request go */
}

static void chunk_sent(struct http_request *req, int status, void *ud) {
  (void)ud;
  if (status == 0)
    http_respond_end(req);
  else
    http_respond_abort(req);
}

static SSL_CTX *leaf_ctx;

static void handler(struct http_request *req, void *ud) {
  (void)ud;
  if (req->method == HTTP_CONNECT) {
    if (req->path[0] == 't') {
      int fd;
      char *extra;
      size_t len;
      if (http_request_detach(req, 200, &fd, &extra, &len) == 0) {
        close(fd);
        free(extra);
      }
      return;
    }
    if (http_respond_connect_tls(req, leaf_ctx, "fuzz.test", 443, "u") == UV_EINVAL)
      http_respond_simple(req, 400, NULL, 0, NULL, 0);
    return;
  }
  if (strcmp(req->path, "/file") == 0) {
    int fd = open(file_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || http_respond_start(req, 200, NULL, 0, FILE_LEN) != 0 ||
        http_respond_sendfile(req, fd, 0, FILE_LEN, file_sent, (void *)(intptr_t)fd) != 0) {
      if (fd >= 0)
        close(fd);
      http_respond_abort(req);
    }
  } else if (strcmp(req->path, "/chunked") == 0) {
    if (http_respond_start(req, 200, NULL, 0, -1) != 0 ||
        http_respond_write(req, "hello ", 6, NULL, NULL) != 0 ||
        http_respond_write(req, "world\n", 6, chunk_sent, NULL) != 0)
      http_respond_abort(req);
  } else {
    struct http_header h[] = {{"Content-Type", 0, "text/plain", 0}};
    http_respond_simple(req, req->method == HTTP_GET ? 200 : 405, h, 1, "ok\n", 3);
  }
}

static void init(void) {
  log_set_level(getenv("FUZZ_HTTP_DEBUG") ? LOG_DEBUG : LOG_ERROR);
  uv_loop_init(&loop);
  struct http_server_limits lim = {.max_header_bytes = 4096, .max_headers = 32,
                                   .header_timeout_ms = 1000, .idle_timeout_ms = 1000,
                                   .send_timeout_ms = 1000, .max_connections = 64};
  if (http_server_new(&srv, &loop, &lim, handler, NULL) != 0)
    abort();
  snprintf(file_path, sizeof file_path, "/tmp/fuzz_http_XXXXXX");
  int fd = mkstemp(file_path);
  if (fd < 0)
    abort();
  static char buf[FILE_LEN];
  memset(buf, 'f', sizeof buf);
  if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf)
    abort();
  close(fd);
  char dir[64] = "/tmp/fuzz_http_ca_XXXXXX", err[512], crt[96], key[96];
  if (!mkdtemp(dir))
    abort();
  snprintf(dir + strlen(dir), sizeof dir - strlen(dir), "/ca");
  snprintf(crt, sizeof crt, "%s/ca.crt", dir);
  snprintf(key, sizeof key, "%s/ca.key", dir);
  struct leafcert *lc;
  if (ca_init(dir, err, sizeof err) != 0 ||
      leafcert_new(&lc, crt, key, 3600 * 1000, err, sizeof err) != 0 ||
      !(leaf_ctx = leafcert_ctx(lc, "fuzz.test", time(NULL))))
    abort();
  leafcert_free(lc); /* leaf_ctx holds its own reference */
  unlink(crt);
  unlink(key);
  rmdir(dir);
  dir[strlen(dir) - 3] = '\0';
  rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int ready;
  if (!ready) {
    init();
    ready = 1;
  }
  if (size > 65536)
    return 0;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
    return 0;
  if (http_server_adopt(srv, sv[0], 1) != 0) {
    close(sv[1]);
    return 0;
  }
  size_t sent = 0;
  int shut = 0;
  char sink[65536];
  for (int round = 0; round < LOOP_ROUNDS; round++) {
    if (sent < size) {
      ssize_t n = write(sv[1], data + sent, size - sent);
      if (n > 0)
        sent += (size_t)n;
    } else if (!shut) {
      shutdown(sv[1], SHUT_WR);
      shut = 1;
    }
    uv_run(&loop, UV_RUN_NOWAIT);
    ssize_t r = read(sv[1], sink, sizeof sink);
    if (r == 0 && shut)
      break; /* the server closed its end */
  }
  close(sv[1]);
  /* the server sees the hang-up and lets the connection go (a file read on
   * the thread pool may take a moment: at most ~0.2 s) */
  for (int round = 0; round < 2000 && http_server_n_connections(srv) > 0; round++) {
    uv_run(&loop, UV_RUN_NOWAIT);
    if (round > 50)
      usleep(100);
  }
  if (http_server_n_connections(srv) > 0)
    abort(); /* a connection that outlives its client */
  return 0;
}
