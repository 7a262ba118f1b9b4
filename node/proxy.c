/* proxy.c - the proxy listener's own requests: CONNECT and plain http://.
 *
 * What a CONNECT is for is decided by its host alone: a configured
 * upstream's host or alias is intercepted (the node is that registry for
 * the client, so the client needs the proxy CA and nothing else), anything
 * else is someone else's traffic and is tunnelled untouched or refused.
 * Tunnel targets come from proxy.hosts, an IP literal, or getaddrinfo on
 * the thread pool; every address is checked after resolution (a name that
 * resolves to 127.0.0.1 is loopback too) against the default refusals and
 * the node's own listeners, so the proxy cannot be turned on the node or
 * on the machine's private services. Steps that wait (a Proxy-Authorization
 * bcrypt check, the resolver) hold the request in a struct pconn; a client
 * that leaves meanwhile has its request aborted when the step returns.
 */
#include "proxy.h"

#include "access.h"
#include "errors.h"
#include "http_server.h"
#include "leafcert.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "tunnel.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PROXY_OWN_MAX 32
#define PROXY_MAX_TUNNELS 1024
#define PROXY_CONNECT_TIMEOUT_MS 10000

struct proxy {
  struct node *n;
  struct leafcert *lc;
  struct tunnels *tunnels;
  struct sockaddr_storage own[PROXY_OWN_MAX]; /* the node's listeners */
  size_t n_own;
  uv_interface_address_t *ifs; /* this machine's addresses, for wildcard binds */
  int n_ifs;
  unsigned pending; /* pconns alive: p is freed after the last at close */
  int closing;
};

/* A CONNECT waiting for its credentials check or its resolver. */
struct pconn {
  struct proxy *p;
  struct http_request *req;
  uv_getaddrinfo_t gai;
  char host[256];
  unsigned port;
  int upstream; /* -1: a tunnel */
  int gone;     /* the client left */
  char user[64];
};

static const struct http_header text_plain[] = {{"Content-Type", 0, "text/plain", 0}};

static void count(const char *action) {
  char labels[48];
  snprintf(labels, sizeof labels, "action=\"%s\"", action);
  metrics_add("regmesh_proxy_connects_total", labels, 1);
}

static void answer(struct http_request *req, int status, const char *action, const char *msg) {
  char body[600];
  int len = snprintf(body, sizeof body, "regmesh proxy: %s\n", msg);
  if (len < 0 || (size_t)len >= sizeof body)
    len = (int)sizeof body - 1;
  if (action)
    count(action);
  req->log_source = "proxy";
  if (status >= 400)
    http_request_close_after(req);
  if (status == 407) {
    struct http_header h[] = {text_plain[0], {"Proxy-Authenticate", 0, "Basic realm=\"regmesh\"", 0}};
    http_respond_simple(req, status, h, 2, body, (size_t)len);
    return;
  }
  http_respond_simple(req, status, text_plain, 1, body, (size_t)len);
}

/* ---- targets ---- */

static int label_ok(const char *s, size_t n) {
  if (n == 0 || n > 63 || s[0] == '-' || s[n - 1] == '-')
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_')
      return 0;
  return 1;
}

int proxy_parse_target(const char *s, size_t len, unsigned default_port, char *host,
                       size_t cap, unsigned *port) {
  if (!s || cap < 256 || len == 0 || len > 300)
    return RM_EPARSE;
  const char *hs = s, *he, *rest;
  const char *end = s + len;
  if (s[0] == '[') {
    const char *rb = memchr(s, ']', len);
    if (!rb)
      return RM_EPARSE;
    hs = s + 1;
    he = rb;
    rest = rb + 1;
  } else {
    const char *colon = memchr(s, ':', len);
    he = colon ? colon : end;
    rest = he;
  }
  size_t hl = (size_t)(he - hs);
  if (hl == 0 || hl > PROXY_HOST_MAX || memchr(hs, '\0', hl))
    return RM_EPARSE;
  unsigned p = 0;
  if (rest == end) {
    if (!default_port)
      return RM_EPARSE;
    p = default_port;
  } else {
    if (*rest != ':' || end - rest < 2 || end - rest > 6)
      return RM_EPARSE;
    for (const char *q = rest + 1; q < end; q++) {
      if (*q < '0' || *q > '9')
        return RM_EPARSE;
      p = p * 10 + (unsigned)(*q - '0');
    }
    if (p == 0 || p > 65535)
      return RM_EPARSE;
  }
  for (size_t i = 0; i < hl; i++)
    host[i] = (char)tolower((unsigned char)hs[i]);
  host[hl] = '\0';
  unsigned char buf[16];
  if (s[0] == '[') {
    if (inet_pton(AF_INET6, host, buf) != 1)
      return RM_EPARSE;
  } else if (inet_pton(AF_INET, host, buf) != 1) {
    /* a name: dot-separated labels, an optional final dot dropped */
    if (host[hl - 1] == '.')
      host[--hl] = '\0';
    const char *l = host;
    for (;;) {
      const char *dot = strchr(l, '.');
      size_t ll = dot ? (size_t)(dot - l) : strlen(l);
      if (!label_ok(l, ll))
        return RM_EPARSE;
      if (!dot)
        break;
      l = dot + 1;
    }
  }
  *port = p;
  return 0;
}

static int in_prefix(const uint8_t *a, const uint8_t *net, unsigned bits) {
  for (unsigned i = 0; i < bits / 8; i++)
    if (a[i] != net[i])
      return 0;
  unsigned rem = bits % 8;
  return !rem || ((a[bits / 8] ^ net[bits / 8]) & (0xff << (8 - rem))) == 0;
}

/* the answers is_own tells apart, by pointer */
static const char addr_loopback[] = "loopback";
static const char addr_unspec[] = "an unspecified address";

const char *proxy_addr_refused(const struct sockaddr *sa) {
  uint8_t v4[4];
  if (sa->sa_family == AF_INET6) {
    const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t mapped[12] = {[10] = 0xff, [11] = 0xff};
    if (memcmp(a, mapped, 12) != 0) {
      static const uint8_t zero[16], ll[2] = {0xfe, 0x80}, mc[1] = {0xff};
      static const uint8_t one[16] = {[15] = 1};
      if (memcmp(a, zero, 16) == 0)
        return addr_unspec;
      if (memcmp(a, one, 16) == 0)
        return addr_loopback;
      if (in_prefix(a, ll, 10))
        return "link-local";
      if (in_prefix(a, mc, 8))
        return "multicast";
      return NULL;
    }
    memcpy(v4, a + 12, 4);
  } else if (sa->sa_family == AF_INET) {
    memcpy(v4, &((const struct sockaddr_in *)sa)->sin_addr, 4);
  } else {
    return "not an IP address";
  }
  if (v4[0] == 127)
    return addr_loopback;
  if (v4[0] == 0)
    return addr_unspec;
  if (v4[0] == 169 && v4[1] == 254)
    return "link-local";
  if (v4[0] >= 224)
    return "multicast or reserved";
  return NULL;
}

/* addr_parts: the address bytes (IPv4-mapped as IPv4) and port of sa. */
static int addr_parts(const struct sockaddr *sa, uint8_t out[16], unsigned *port) {
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    memset(out, 0, 16);
    memcpy(out, &s4->sin_addr, 4);
    *port = ntohs(s4->sin_port);
    return 4;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    static const uint8_t mapped[12] = {[10] = 0xff, [11] = 0xff};
    *port = ntohs(s6->sin6_port);
    if (memcmp(s6->sin6_addr.s6_addr, mapped, 12) == 0) {
      memset(out, 0, 16);
      memcpy(out, s6->sin6_addr.s6_addr + 12, 4);
      return 4;
    }
    memcpy(out, s6->sin6_addr.s6_addr, 16);
    return 16;
  }
  return 0;
}

static int addr_eq(const struct sockaddr *a, const struct sockaddr *b) {
  uint8_t x[16], y[16];
  unsigned px, py;
  int lx = addr_parts(a, x, &px), ly = addr_parts(b, y, &py);
  return lx && lx == ly && memcmp(x, y, (size_t)lx) == 0;
}

static int addr_is_wildcard(const struct sockaddr *sa) {
  uint8_t x[16];
  unsigned p;
  static const uint8_t zero[16];
  int l = addr_parts(sa, x, &p);
  return l && memcmp(x, zero, (size_t)l) == 0;
}

/* is_own: a connection to sa would reach one of the node's own listeners
 * (a loop). 0.0.0.0 and :: reach the local host; a wildcard listener also
 * answers on loopback and every address of this machine. */
static int is_own(const struct proxy *p, const struct sockaddr *sa) {
  uint8_t x[16];
  unsigned port;
  if (!addr_parts(sa, x, &port))
    return 0;
  const char *kind = proxy_addr_refused(sa);
  int local = kind == addr_loopback || kind == addr_unspec;
  for (int k = 0; !local && k < p->n_ifs; k++)
    local = addr_eq((const struct sockaddr *)&p->ifs[k].address, sa);
  for (size_t i = 0; i < p->n_own; i++) {
    const struct sockaddr *o = (const struct sockaddr *)&p->own[i];
    uint8_t y[16];
    unsigned oport;
    if (!addr_parts(o, y, &oport) || oport != port)
      continue;
    if (addr_eq(o, sa) || addr_is_wildcard(sa) || (addr_is_wildcard(o) && local))
      return 1;
  }
  return 0;
}

/* target_check: NULL when a tunnel may go to sa, else why not. */
static const char *target_check(const struct proxy *p, const struct sockaddr *sa) {
  const struct config_proxy *pc = &p->n->cfg->proxy;
  if (is_own(p, sa))
    return "that is one of this node's own listeners";
  const char *why = proxy_addr_refused(sa);
  if (why && !config_cidr_match(pc->tunnel_allow, pc->n_tunnel_allow, sa))
    return why;
  return NULL;
}

/* ---- CONNECT ---- */

static void proxy_maybe_free(struct proxy *p) {
  if (!p->closing || p->pending)
    return;
  uv_free_interface_addresses(p->ifs, p->n_ifs);
  free(p);
}

static void pconn_free(struct pconn *pc) {
  struct proxy *p = pc->p;
  free(pc);
  p->pending--;
  proxy_maybe_free(p);
}

static void on_pconn_close(struct http_request *req, void *ud) {
  struct pconn *pc = ud;
  (void)req;
  pc->gone = 1;
}

static void tunnel_to(struct pconn *pc, const struct sockaddr_storage *cands, size_t n) {
  struct proxy *p = pc->p;
  struct sockaddr_storage ok[TUNNEL_MAX_ADDRS];
  size_t k = 0;
  const char *why = NULL;
  for (size_t i = 0; i < n && k < TUNNEL_MAX_ADDRS; i++) {
    const char *w = target_check(p, (const struct sockaddr *)&cands[i]);
    if (w)
      why = w;
    else
      ok[k++] = cands[i];
  }
  char label[300];
  snprintf(label, sizeof label, "%s:%u", pc->host, pc->port);
  if (k == 0) {
    char msg[400];
    snprintf(msg, sizeof msg, "%s is refused: %s (proxy.tunnel_allow lists what may be)",
             label, why ? why : "no address");
    LOG_I("proxy: CONNECT %s from %s refused: %s", label, pc->req->remote, why ? why : "no address");
    answer(pc->req, 403, "refused", msg);
    return;
  }
  count("tunnel");
  tunnel_open(p->tunnels, pc->req, ok, k, PROXY_CONNECT_TIMEOUT_MS, label);
}

static void on_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *res) {
  struct pconn *pc = g->data;
  if (pc->gone) {
    http_respond_abort(pc->req);
  } else if (status < 0) {
    char msg[400];
    snprintf(msg, sizeof msg, "cannot resolve %s: %s", pc->host, uv_strerror(status));
    answer(pc->req, 502, "failed", msg);
  } else if (pc->p->closing) {
    answer(pc->req, 503, NULL, "the node is shutting down");
  } else {
    struct sockaddr_storage cands[TUNNEL_MAX_ADDRS];
    size_t n = 0;
    for (struct addrinfo *a = res; a && n < TUNNEL_MAX_ADDRS; a = a->ai_next) {
      if ((a->ai_family != AF_INET && a->ai_family != AF_INET6) ||
          a->ai_addrlen > sizeof cands[n])
        continue;
      memset(&cands[n], 0, sizeof cands[n]);
      memcpy(&cands[n], a->ai_addr, a->ai_addrlen);
      n++;
    }
    tunnel_to(pc, cands, n);
  }
  uv_freeaddrinfo(res);
  pconn_free(pc);
}

static int literal_addr(const char *host, unsigned port, struct sockaddr_storage *out) {
  memset(out, 0, sizeof *out);
  struct sockaddr_in *s4 = (struct sockaddr_in *)out;
  struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)out;
  if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)port);
    return 1;
  }
  if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons((uint16_t)port);
    return 1;
  }
  return 0;
}

/* start_tunnel: resolve pc->host (proxy.hosts, a literal, or the resolver)
 * and tunnel; pc is freed here or by on_resolved. */
static void start_tunnel(struct pconn *pc) {
  struct proxy *p = pc->p;
  const struct config_proxy *cp = &p->n->cfg->proxy;
  if (!cp->tunnel_others) {
    char msg[400];
    snprintf(msg, sizeof msg,
             "%s is not a registry this node serves, and proxy.tunnel_others is off", pc->host);
    answer(pc->req, 403, "refused", msg);
    pconn_free(pc);
    return;
  }
  const char *lit = pc->host;
  for (size_t i = 0; i < cp->n_hosts; i++)
    if (strcmp(cp->hosts[i].name, pc->host) == 0)
      lit = cp->hosts[i].addr;
  struct sockaddr_storage a;
  if (literal_addr(lit, pc->port, &a)) {
    tunnel_to(pc, &a, 1);
    pconn_free(pc);
    return;
  }
  char port[8];
  snprintf(port, sizeof port, "%u", pc->port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  pc->gai.data = pc;
  int rc = uv_getaddrinfo(p->n->loop, &pc->gai, on_resolved, pc->host, port, &hints);
  if (rc < 0) {
    answer(pc->req, 502, "failed", "cannot start the resolver");
    pconn_free(pc);
  }
}

static void intercept(struct pconn *pc) {
  struct proxy *p = pc->p;
  SSL_CTX *ctx = leafcert_ctx(p->lc, pc->host, time(NULL));
  if (!ctx) {
    answer(pc->req, 502, "failed", "could not make a certificate for this host");
    pconn_free(pc);
    return;
  }
  count("intercept");
  pc->req->log_source = "intercept";
  int rc = http_respond_connect_tls(pc->req, ctx, pc->host, pc->port, pc->user);
  SSL_CTX_free(ctx);
  if (rc == UV_EINVAL)
    answer(pc->req, 400, "failed", "cannot intercept this CONNECT");
  pconn_free(pc);
}

static void proceed(struct pconn *pc) {
  if (pc->p->closing) {
    answer(pc->req, 503, NULL, "the node is shutting down");
    pconn_free(pc);
  } else if (pc->upstream >= 0)
    intercept(pc);
  else
    start_tunnel(pc);
}

static void on_proxy_auth(void *ud, enum access_verdict v) {
  struct pconn *pc = ud;
  if (pc->gone) {
    http_respond_abort(pc->req);
    pconn_free(pc);
    return;
  }
  if (v != ACCESS_OK) {
    LOG_I("proxy: %s: wrong proxy password for '%s'", pc->req->remote, pc->user);
    answer(pc->req, 407, "refused", "wrong user name or password");
    pconn_free(pc);
    return;
  }
  proceed(pc);
}

static void handle_connect(struct proxy *p, struct http_request *req) {
  struct pconn *pc = calloc(1, sizeof *pc);
  if (!pc) {
    answer(req, 503, "failed", "out of memory");
    return;
  }
  pc->p = p;
  pc->req = req;
  p->pending++;
  if (proxy_parse_target(req->path, req->path_len, 0, pc->host, sizeof pc->host, &pc->port) !=
      0) {
    answer(req, 400, "refused", "CONNECT wants host:port");
    pconn_free(pc);
    return;
  }
  pc->upstream = config_upstream_proxy_match(p->n->cfg, pc->host, strlen(pc->host), pc->port, 0);
  http_request_on_close(req, on_pconn_close, pc);
  if (access_auth_enabled(p->n->access)) {
    const struct http_header *h = http_request_header(req, "Proxy-Authorization");
    if (!h) {
      /* an intercepted CONNECT may log in inside instead */
      if (pc->upstream >= 0) {
        proceed(pc);
      } else {
        answer(req, 407, "refused", "log in to tunnel through this proxy");
        pconn_free(pc);
      }
      return;
    }
    enum access_verdict v =
        access_check(p->n->access, h->value, on_proxy_auth, pc, pc->user, sizeof pc->user);
    if (v == ACCESS_PENDING)
      return;
    on_proxy_auth(pc, v);
    return;
  }
  proceed(pc);
}

int proxy_handle(struct proxy *p, struct http_request *req) {
  if (!access_allowed(p->n->access, &req->remote_addr)) {
    metrics_add("regmesh_denied_total", "why=\"allow\"", 1);
    answer(req, 403, req->method == HTTP_CONNECT ? "refused" : NULL,
           "this address may not use this node");
    return 1;
  }
  if (req->method == HTTP_CONNECT) {
    handle_connect(p, req);
    return 1;
  }
  if (req->authority[0]) {
    char host[256];
    unsigned port;
    int up = -1;
    if (proxy_parse_target(req->authority, strlen(req->authority), 80, host, sizeof host,
                           &port) == 0)
      up = config_upstream_proxy_match(p->n->cfg, host, strlen(host), port, 1);
    if (up >= 0)
      return 0;
    answer(req, 403, "refused",
           "plain http:// is served for the configured registries only; other hosts go "
           "through CONNECT (https)");
    return 1;
  }
  answer(req, 400, NULL,
         "this is a proxy listener: use it as HTTPS_PROXY (docs/proxy.md), or the registry "
         "port for plain registry requests");
  return 1;
}

int proxy_request_upstream(const struct node *n, const struct http_request *req) {
  if (req->proxy_host && req->proxy_host[0])
    return config_upstream_proxy_match(n->cfg, req->proxy_host, strlen(req->proxy_host),
                                       req->proxy_port, 0);
  if (req->authority && req->authority[0]) {
    char host[256];
    unsigned port;
    if (proxy_parse_target(req->authority, strlen(req->authority), 80, host, sizeof host,
                           &port) == 0)
      return config_upstream_proxy_match(n->cfg, host, strlen(host), port, 1);
  }
  return -1;
}

int proxy_new(struct proxy **out, struct node *n) {
  const struct config_proxy *cp = &n->cfg->proxy;
  struct proxy *p = calloc(1, sizeof *p);
  if (!p)
    return UV_ENOMEM;
  p->n = n;
  char err[512];
  int rc = leafcert_new(&p->lc, cp->ca_cert, cp->ca_key, cp->leaf_ttl_ms, err, sizeof err);
  if (rc < 0) {
    LOG_E("proxy: %s", err);
    free(p);
    return rc;
  }
  if ((rc = tunnels_new(&p->tunnels, n->loop, PROXY_MAX_TUNNELS)) < 0) {
    leafcert_free(p->lc);
    free(p);
    return rc;
  }
  p->n_own = http_server_bound_addrs(n->http, p->own, PROXY_OWN_MAX);
  if (uv_interface_addresses(&p->ifs, &p->n_ifs) < 0) {
    p->ifs = NULL;
    p->n_ifs = 0;
  }
  metrics_describe("regmesh_proxy_connects_total", METRIC_COUNTER,
                   "CONNECT requests on the proxy listener by what became of them: intercept "
                   "(a configured registry, served from the cache), tunnel, refused, failed.");
  metrics_describe("regmesh_proxy_leaf_certs_total", METRIC_COUNTER,
                   "Leaf certificates for intercepted hosts: minted (first use and renewals), "
                   "cached (a connection served from the cache), failed.");
  metrics_describe("regmesh_proxy_leaf_certs_cached", METRIC_GAUGE,
                   "Leaf certificates in the cache.");
  metrics_describe("regmesh_proxy_tunnels_open", METRIC_GAUGE,
                   "CONNECT tunnels connecting or relaying.");
  metrics_describe("regmesh_proxy_tunnels_total", METRIC_COUNTER,
                   "CONNECT tunnels by result: relayed, or failed (no address of the target "
                   "answered).");
  metrics_describe("regmesh_proxy_tunnel_bytes_total", METRIC_COUNTER,
                   "Bytes relayed through tunnels: out (client to target), in.");
  proxy_update_metrics(p);
  static const char *const actions[] = {"intercept", "tunnel", "refused", "failed"};
  for (size_t i = 0; i < 4; i++) {
    char labels[48];
    snprintf(labels, sizeof labels, "action=\"%s\"", actions[i]);
    metrics_add("regmesh_proxy_connects_total", labels, 0);
  }
  *out = p;
  return 0;
}

void proxy_update_metrics(const struct proxy *p) {
  struct leafcert_stats ls;
  struct tunnel_stats ts;
  leafcert_get_stats(p->lc, &ls);
  tunnels_get_stats(p->tunnels, &ts);
  metrics_set("regmesh_proxy_leaf_certs_total", "result=\"minted\"", (int64_t)ls.minted);
  metrics_set("regmesh_proxy_leaf_certs_total", "result=\"cached\"", (int64_t)ls.hits);
  metrics_set("regmesh_proxy_leaf_certs_total", "result=\"failed\"", (int64_t)ls.failed);
  metrics_set("regmesh_proxy_leaf_certs_cached", "", (int64_t)ls.cached);
  metrics_set("regmesh_proxy_tunnels_open", "", (int64_t)ts.open);
  metrics_set("regmesh_proxy_tunnels_total", "result=\"relayed\"", (int64_t)ts.opened);
  metrics_set("regmesh_proxy_tunnels_total", "result=\"failed\"", (int64_t)ts.failed);
  metrics_set("regmesh_proxy_tunnel_bytes_total", "direction=\"out\"", (int64_t)ts.bytes_out);
  metrics_set("regmesh_proxy_tunnel_bytes_total", "direction=\"in\"", (int64_t)ts.bytes_in);
}

void proxy_close(struct proxy *p) {
  if (!p)
    return;
  p->closing = 1;
  tunnels_close(p->tunnels);
  leafcert_free(p->lc);
  p->lc = NULL;
  proxy_maybe_free(p);
}
