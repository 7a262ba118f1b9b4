/* http_server.h - HTTP/1.1 server on libuv with http-parser.
 *
 * The server parses requests and hands each one to a single handler; the
 * handler answers with the http_respond_* calls, possibly much later and in
 * several steps (status and headers first, then body pieces as they arrive).
 * One request per connection is in service at a time; pipelined requests
 * wait. Keep-alive, limits on the request head (size, header count), and
 * timeouts for slow heads, idle keep-alive and stalled sends are enforced
 * here. On a plain listener a connection whose first byte is a TLS
 * handshake (0x16) gets a quick 400 and is closed (skopeo probes TLS on
 * every start); on a TLS listener (http_server_listen_tls) the server does
 * the handshake and the handler sees plaintext requests as usual.
 *
 * Lifetime: a struct http_request is owned by the server and stays valid
 * until the handler calls http_respond_end or http_respond_abort - even if
 * the client went away meanwhile (then writes fail with a negative status and
 * the close callback, if set, is called once). The handler must always end
 * or abort every request it was given.
 */
#ifndef REGMESH_NODE_HTTP_SERVER_H
#define REGMESH_NODE_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct ssl_ctx_st; /* OpenSSL's SSL_CTX */

struct http_server;
struct http_conn;

struct http_header {
  const char *name;
  size_t name_len;
  const char *value;
  size_t value_len;
};

struct http_request {
  int method;          /* enum http_method from http_parser.h */
  const char *path;    /* raw path, NUL-terminated, no query */
  size_t path_len;
  const char *query;   /* raw query without '?', NUL-terminated, or NULL */
  size_t query_len;
  const struct http_header *headers; /* values NUL-terminated */
  size_t n_headers;
  int listener_id;     /* the id given to http_server_listen */
  char remote[64];     /* "ip:port" of the client */
  struct sockaddr_storage remote_addr; /* the same, for allow lists */
  int tls;             /* arrived over TLS */
  uint64_t start_ms;   /* uv_now when the head was complete */
  uint64_t id;         /* request id for logs */
  /* Set by the handler, read by the access log: where the response came
   * from ("local", "upstream", "inflight", ...), a static string. */
  const char *log_source;
  /* set by the handler for probes and scrapes (/healthz, /metrics): their
   * access lines go out at debug level only */
  int log_quiet;
  void *handler_data;  /* free for the handler's use */
  /* Proxy listeners (docs/proxy.md). A CONNECT request has method
   * HTTP_CONNECT and its target ("host:port") as path. A request inside a
   * tunnel the handler terminated with http_respond_connect_tls names the
   * CONNECT's host (lower case, no port, no brackets) and port here, and
   * the user the handler gave for the connection; an absolute-form request
   * ("GET http://host/v2/ HTTP/1.1") has its authority ("host[:port]", as
   * sent) in `authority`. All NUL-terminated, "" when not so. */
  const char *proxy_host;
  unsigned proxy_port;
  const char *conn_user;
  const char *authority;
};

/* Called once per request; must eventually lead to end or abort. */
typedef void (*http_handler_cb)(struct http_request *req, void *ud);
/* Write completion: status 0 once the bytes are handed to the kernel, or a
 * negative error when the connection failed. */
typedef void (*http_write_cb)(struct http_request *req, int status, void *ud);
/* The client connection closed before the response ended. */
typedef void (*http_close_cb)(struct http_request *req, void *ud);

struct http_server_limits {
  size_t max_header_bytes;    /* request line + headers */
  unsigned max_headers;
  uint64_t header_timeout_ms; /* to receive a full request head */
  uint64_t idle_timeout_ms;   /* keep-alive idle */
  uint64_t send_timeout_ms;   /* no write progress for this long: close */
  unsigned max_connections;   /* beyond this, new connections are closed */
  int no_access_log;          /* `access_log: false`: no line per request */
};

/* http_server_new: server on loop; handler gets every request. limits may
 * be NULL; a zero field takes its default (16 KiB head, 100 headers, 10 s
 * head, 60 s idle, 60 s send, 4096 connections). Sets SIGPIPE to ignored if
 * it still has the default disposition (a write to a reset socket must give
 * EPIPE, not kill the process). */
int http_server_new(struct http_server **out, uv_loop_t *loop,
                    const struct http_server_limits *limits,
                    http_handler_cb handler, void *ud);
/* http_server_set_limits changes timeouts, max_connections and the access
 * log at once (a reload): timers armed from now on use the new values. The
 * head size limits stay: connections size their buffers by them. */
void http_server_set_limits(struct http_server *srv, const struct http_server_limits *limits);
/* http_server_listen binds "host:port" (IPv4, [IPv6]) and tags its requests
 * with listener_id. Hosts are numeric; ":port" means 0.0.0.0. Returns 0 or a
 * negative error (UV_EINVAL for a malformed address, UV_EADDRINUSE ...). */
int http_server_listen(struct http_server *srv, const char *addr,
                       int listener_id);
/* http_server_adopt serves a connected stream socket (e.g. one end of a
 * socketpair: the fuzzer's way in) as a plain HTTP connection of
 * listener_id. The server owns fd from here, also on failure after
 * uv_tcp_open took it. Returns 0 or a negative error. */
int http_server_adopt(struct http_server *srv, int fd, int listener_id);
/* http_server_listen_budget: the same, with its own connection budget of
 * max_connections instead of the server's shared one (the admin listener:
 * a registry port full of clients, or of idle sockets, must not take the
 * health checks down). At most 4 such listener ids per server. */
int http_server_listen_budget(struct http_server *srv, const char *addr, int listener_id,
                              unsigned max_connections);
/* http_server_listen_tls: the same, speaking TLS. *ctxp is read at every
 * accept, so the owner swaps certificates by storing a new SSL_CTX there
 * (connections keep the one they started with: SSL_new holds a
 * reference). *ctxp must stay valid until the server is closed. */
int http_server_listen_tls(struct http_server *srv, const char *addr,
                           int listener_id, struct ssl_ctx_st *const *ctxp);
/* http_server_bound_port returns the local port of the first listener
 * tagged listener_id (useful after binding port 0), or UV_ENOENT. */
int http_server_bound_port(struct http_server *srv, int listener_id);
/* http_server_bound_addrs writes the local address of every listener (at
 * most cap) to out and returns how many it wrote. */
size_t http_server_bound_addrs(struct http_server *srv, struct sockaddr_storage *out,
                               size_t cap);
/* http_server_close stops listening, closes every connection (in-service
 * requests get their close callback) and frees the server once all handles
 * are closed; cb (optional) is called then. The server also waits for the
 * handler to end or abort every request it still holds. A second call is
 * ignored. */
void http_server_close(struct http_server *srv, void (*cb)(void *ud), void *ud);
/* http_server_drain stops listening and closes connections with nothing in
 * flight; every other one finishes the request it is serving (responses
 * begun from now on say Connection: close) and then closes. cb (optional)
 * runs once no connection is left, possibly before this returns.
 * http_server_close may follow at any time to cut what remains; a cut
 * response is access-logged with aborted=1. A second call is ignored. */
void http_server_drain(struct http_server *srv, void (*cb)(void *ud), void *ud);
unsigned http_server_n_connections(const struct http_server *srv);

/* Request helpers. http_request_header returns the first header named
 * `name` (case-insensitive) or NULL; http_request_header_next the next one
 * after `prev` (for repeated headers like Accept; prev must come from
 * req->headers). */
const struct http_header *http_request_header(const struct http_request *req,
                                              const char *name);
const struct http_header *http_request_header_next(
    const struct http_request *req, const char *name,
    const struct http_header *prev);

/* http_respond_start sends the status line and headers. The server adds
 * Date, Content-Length (when content_length >= 0) and Connection. With
 * content_length < 0 the body is chunked (or close-delimited for HTTP/1.0).
 * For a HEAD request no body is sent: call http_respond_end next. The header
 * bytes are copied. Returns 0 or a negative error.
 * - a name_len or value_len of 0 with a non-NULL string means strlen();
 * - the handler's own Content-Length, Transfer-Encoding, Connection, Date and
 *   Keep-Alive headers are dropped (the server writes those);
 * - UV_EINVAL for a status outside 200..999, a second start, a name that is
 *   not a token or a value with CR/LF/control bytes (nothing is sent);
 * - 204 and 304 carry no body, like HEAD;
 * - the connection's error (e.g. UV_EPIPE) when the client is gone. */
int http_respond_start(struct http_request *req, int status,
                       const struct http_header *headers, size_t n_headers,
                       int64_t content_length);
/* http_respond_write queues body bytes (copied); cb (optional) once they
 * are written - use it for flow control. On HEAD/204/304, and for len 0,
 * nothing is sent and cb runs later with 0. Returns 0 or a negative error,
 * and then cb is never called: UV_EINVAL before start or beyond the
 * announced Content-Length, UV_EBUSY while a sendfile is pending, the
 * connection's error once it is gone. Several writes may be queued. */
int http_respond_write(struct http_request *req, const void *data, size_t len,
                       http_write_cb cb, void *ud);
/* http_respond_sendfile sends len bytes of fd from offset as the socket
 * accepts them, copied with pread through a buffer of the server's fixed
 * pool, or with sendfile(2) while every buffer is in use; cb once all are
 * sent or the connection failed. fd stays the caller's. At most one write
 * or sendfile may be pending. The file bytes go out after any queued
 * writes. A file shorter than offset + len fails with RM_ESIZE and the
 * connection is closed. fd must stay open until cb, also when
 * http_respond_end was called before it. */
int http_respond_sendfile(struct http_request *req, int fd, uint64_t offset,
                          uint64_t len, http_write_cb cb, void *ud);
/* http_respond_end finishes the response (after pending writes flush); the
 * connection is kept alive or closed. req is invalid afterwards. Callbacks
 * of writes still pending run later with this req pointer: do not use it
 * there. Ending without a response sends 500 and closes; ending with fewer
 * body bytes than the announced Content-Length closes the connection. */
void http_respond_end(struct http_request *req);
/* http_respond_abort closes the connection at once (a response that cannot
 * be completed, e.g. the source failed mid-body). req is invalid afterwards. */
void http_respond_abort(struct http_request *req);
/* http_request_on_close: cb is called once if the client connection closes
 * before the handler ended the request. */
void http_request_on_close(struct http_request *req, http_close_cb cb, void *ud);

/* http_request_close_after: the connection closes once this response is
 * sent (a refused client is not kept alive). */
void http_request_close_after(struct http_request *req);

/* http_respond_connect_tls answers a CONNECT (`200 Connection
 * established`) and makes the connection a TLS server with ctx (the caller
 * keeps its reference; SSL_new takes one). The requests that follow inside
 * carry host and port as proxy_host/proxy_port and user (may be NULL) as
 * conn_user. req is finished when it returns. UV_EINVAL when req is not a
 * CONNECT on a plain connection or a response was started, or host is
 * longer than 255 bytes (then nothing was sent and req is still the
 * caller's); other errors close the connection. */
int http_respond_connect_tls(struct http_request *req, struct ssl_ctx_st *ctx,
                             const char *host, unsigned port, const char *user);

/* http_request_detach takes the client's socket out of the server, for a
 * handler that relays a CONNECT tunnel itself: *fd is a dup the caller
 * owns, and *extra (malloc'd, caller frees; NULL when none) the bytes the
 * client sent after the request head. The request is access-logged with
 * `status` (what the caller will answer) and finished; the server forgets
 * the connection. UV_EINVAL when a response was started or the connection
 * speaks TLS (req stays the caller's), else 0 or an error (req finished). */
int http_request_detach(struct http_request *req, int status, int *fd, char **extra,
                        size_t *extra_len);

/* http_respond_simple: start + whole body + end. The request is always
 * finished when it returns (aborted if start or write failed); returns 0 or
 * that error. */
int http_respond_simple(struct http_request *req, int status,
                        const struct http_header *headers, size_t n_headers,
                        const void *body, size_t len);

/* Figures for /metrics. */
struct http_server_stats {
  uint64_t connections_open;
  uint64_t connections_total;
  uint64_t requests_total;
  uint64_t tls_rejected;
  uint64_t timeouts;
  uint64_t bad_requests;
  uint64_t tls_handshakes;       /* completed */
  uint64_t tls_handshake_errors; /* failed, incl. refused versions */
  uint64_t tls_file_bytes;       /* file body bytes encrypted in user space */
  uint64_t file_reads_offloop;   /* file reads that missed the page cache and ran
                                    on the thread pool */
};
void http_server_get_stats(struct http_server *srv, struct http_server_stats *st);

#endif
