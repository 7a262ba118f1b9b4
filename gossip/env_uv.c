/* env_uv.c - runs the SWIM core (swim.c) on a libuv loop.
 *
 * The core is a pure state machine; this file is everything it is not: the
 * sockets, the clock, the random source and the timer that drives it. Each
 * libuv callback recovers its context, checks its status and calls one step
 * function; the steps that feed the core go through gossip_uv__enter/leave,
 * which re-arm the single timer at swim_next_deadline() afterwards. The env
 * functions the core calls (udp_send, stream_*) only queue work on the loop
 * and never call back into the core, so the core is never re-entered.
 *
 * A TCP stream is a small state machine (gossip_uv__stream_set_state logs
 * every move): CONNECTING or accepted -> OPEN -> PEER_CLOSED (EOF or error
 * reported to the core) and/or FLUSHING (the core closed it, writes still
 * pending) -> CLOSED (uv_close called; freed in the close callback). A
 * housekeeping timer bounds the time a stream may stay in any state, so a
 * peer that never reads, or a core that forgets a stream, cannot pin a slot.
 *
 * Stopping runs through phases: RUNNING -> LEAVING (swim_leave, until
 * swim_leave_done or a deadline) -> FLUSH (queued datagrams get a moment)
 * -> CLOSING (every handle closed; the last close callback frees the core
 * and the host, then calls the user's done callback).
 */
#include "env_uv.h"

#include "errors.h"
#include "log.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define GOSSIP_UV_BUCKETS 256
#define GOSSIP_UV_HOUSEKEEP_MS 1000
#define GOSSIP_UV_FLUSH_MS 500         /* queued datagrams get this long after a leave */
#define GOSSIP_UV_LEAVE_GRACE_MS 1000  /* on top of the core's own leave timeout */
#define GOSSIP_UV_UDP_RCVBUF (2 << 20) /* memberlist asks for 2 MiB */
#define GOSSIP_UV_MAX_SLEEP_MS 3600000u
#define GOSSIP_UV_LISTEN_BACKLOG 128

#define gossip_uv__container_of(ptr, type, member)                                       \
  ((type *)((char *)(ptr)-offsetof(type, member)))

enum gossip_uv_phase {
  GOSSIP_UV_RUNNING,
  GOSSIP_UV_LEAVING, /* swim_leave called; still a member until done */
  GOSSIP_UV_FLUSH,   /* left; inputs dropped, queued datagrams drain */
  GOSSIP_UV_CLOSING, /* handles closing; nothing reaches the core any more */
};

enum gossip_uv_stop_kind {
  GOSSIP_UV_STOP_NONE,
  GOSSIP_UV_STOP_LEAVE,
  GOSSIP_UV_STOP_CLOSE
};

enum gossip_uv_stream_state {
  GOSSIP_UV_S_CONNECTING,  /* outbound, connect pending; writes queue in libuv */
  GOSSIP_UV_S_OPEN,        /* reading; the core owns the stream */
  GOSSIP_UV_S_PEER_CLOSED, /* EOF or error reported; waiting for stream_close */
  GOSSIP_UV_S_FLUSHING,    /* the core closed it; writes still pending */
  GOSSIP_UV_S_CLOSED,      /* uv_close called, off the id table */
};

static const char *gossip_uv__stream_state_str(enum gossip_uv_stream_state s) {
  switch (s) {
  case GOSSIP_UV_S_CONNECTING: return "connecting";
  case GOSSIP_UV_S_OPEN: return "open";
  case GOSSIP_UV_S_PEER_CLOSED: return "peer-closed";
  case GOSSIP_UV_S_FLUSHING: return "flushing";
  case GOSSIP_UV_S_CLOSED: return "closed";
  }
  return "?";
}

/* One TCP stream. Owned by its gossip_uv (on its list from creation to the
 * close callback, which frees it); on the id table while the core may name
 * it. */
struct gossip_uv_stream {
  uv_tcp_t tcp;
  uv_connect_t connect;
  struct gossip_uv *g;
  uint64_t id;
  enum gossip_uv_stream_state state;
  int inbound;
  int err;                              /* first error; stream_write returns it */
  size_t queued;                        /* bytes held by pending uv_write requests */
  uint64_t deadline_ms;                 /* housekeeping acts on the stream at this time */
  struct gossip_uv_stream *hnext;       /* id table chain */
  struct gossip_uv_stream *prev, *next; /* every stream with a handle */
};

/* A copied datagram or stream write; freed in its send/write callback. */
struct gossip_uv_dgram {
  uv_udp_send_t req;
  struct gossip_uv *g;
  size_t len;
  uint8_t data[];
};

struct gossip_uv_write {
  uv_write_t req;
  size_t len;
  uint8_t data[];
};

struct gossip_uv {
  uv_loop_t *loop;
  struct swim *swim;      /* owned */
  struct swim_config cfg; /* copy handed to swim_new */
  struct swim_env env;
  uv_udp_t udp;
  uv_tcp_t listener;
  uv_timer_t timer;     /* the core's deadline and the stop steps */
  uv_timer_t housekeep; /* stream deadlines */
  unsigned inited;      /* which of the four handles above exist */
  int handles;          /* handles (streams included) not yet close-called-back */
  struct wire_addr bound;
  int family;
  uint64_t rng;
  uint64_t next_id;
  struct gossip_uv_stream *table[GOSSIP_UV_BUCKETS];
  struct gossip_uv_stream *streams;
  unsigned n_in, n_out;
  size_t udp_queued; /* bytes in pending uv_udp_send requests */
  enum gossip_uv_phase phase;
  enum gossip_uv_stop_kind stop_kind;
  uint64_t leave_timeout_ms, leave_deadline, flush_deadline, ticked_at;
  void (*done)(void *ud);
  void *done_ud;
  int in_core;
  struct gossip_uv_stats stats;
  uint8_t rbuf[WIRE_UDP_MAX]; /* shared: each alloc is consumed by its read at once */
};

enum {
  GOSSIP_UV_H_UDP = 1,
  GOSSIP_UV_H_LISTENER = 2,
  GOSSIP_UV_H_TIMER = 4,
  GOSSIP_UV_H_HOUSEKEEP = 8
};

static void gossip_uv__rearm(struct gossip_uv *g);
static void gossip_uv__begin_close(struct gossip_uv *g);
static void gossip_uv__on_timer(uv_timer_t *t);
static void gossip_uv__on_stream_closed(uv_handle_t *h);

/* ---- addresses */

int gossip_uv_parse_addr(const char *s, struct wire_addr *out) {
  char host[INET6_ADDRSTRLEN + 1];
  const char *colon, *hs = s, *he;
  char *end;
  unsigned long port;

  if (s == NULL)
    return UV_EINVAL;
  if (s[0] == '[') {
    hs = s + 1;
    he = strchr(hs, ']');
    if (he == NULL || he[1] != ':')
      return UV_EINVAL;
    colon = he + 1;
  } else {
    colon = strrchr(s, ':');
    if (colon == NULL || memchr(s, ':', (size_t)(colon - s)) != NULL)
      return UV_EINVAL;
    he = colon;
  }
  if (he == hs || (size_t)(he - hs) >= sizeof host)
    return UV_EINVAL;
  memcpy(host, hs, (size_t)(he - hs));
  host[he - hs] = '\0';
  if (colon[1] < '0' || colon[1] > '9')
    return UV_EINVAL;
  port = strtoul(colon + 1, &end, 10);
  if (*end != '\0' || port > 65535)
    return UV_EINVAL;

  memset(out, 0, sizeof *out);
  out->port = (uint16_t)port;
  if (inet_pton(AF_INET, host, out->ip) == 1) {
    out->ip_len = 4;
    return 0;
  }
  if (inet_pton(AF_INET6, host, out->ip) == 1) {
    out->ip_len = 16;
    return 0;
  }
  return UV_EINVAL;
}

char *gossip_uv_format_addr(const struct wire_addr *a, char *out, size_t len) {
  char ip[INET6_ADDRSTRLEN];

  if (a->ip_len == 4 && inet_ntop(AF_INET, a->ip, ip, sizeof ip) != NULL)
    snprintf(out, len, "%s:%u", ip, (unsigned)a->port);
  else if (a->ip_len == 16 && inet_ntop(AF_INET6, a->ip, ip, sizeof ip) != NULL)
    snprintf(out, len, "[%s]:%u", ip, (unsigned)a->port);
  else
    snprintf(out, len, "?:%u", (unsigned)a->port);
  return out;
}

static const uint8_t gossip_uv__v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* A wire address as a sockaddr our sockets (of family g->family) can use. */
static int gossip_uv__to_sockaddr(const struct gossip_uv *g, const struct wire_addr *a,
                                  struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  if (g->family == AF_INET) {
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    if (a->ip_len == 4)
      memcpy(&sin->sin_addr, a->ip, 4);
    else if (a->ip_len == 16 && memcmp(a->ip, gossip_uv__v4mapped, 12) == 0)
      memcpy(&sin->sin_addr, a->ip + 12, 4);
    else
      return UV_EAFNOSUPPORT;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(a->port);
    return 0;
  }
  struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
  if (a->ip_len == 4) {
    memcpy(&sin6->sin6_addr, gossip_uv__v4mapped, 12);
    memcpy((uint8_t *)&sin6->sin6_addr + 12, a->ip, 4);
  } else if (a->ip_len == 16) {
    memcpy(&sin6->sin6_addr, a->ip, 16);
  } else {
    return UV_EAFNOSUPPORT;
  }
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(a->port);
  return 0;
}

/* A peer's sockaddr as a wire address; IPv4-mapped IPv6 comes out as IPv4. */
static int gossip_uv__from_sockaddr(const struct sockaddr *sa, struct wire_addr *a) {
  memset(a, 0, sizeof *a);
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
    memcpy(a->ip, &sin->sin_addr, 4);
    a->ip_len = 4;
    a->port = ntohs(sin->sin_port);
    return 0;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
    const uint8_t *ip = (const uint8_t *)&sin6->sin6_addr;
    if (memcmp(ip, gossip_uv__v4mapped, 12) == 0) {
      memcpy(a->ip, ip + 12, 4);
      a->ip_len = 4;
    } else {
      memcpy(a->ip, ip, 16);
      a->ip_len = 16;
    }
    a->port = ntohs(sin6->sin6_port);
    return 0;
  }
  return UV_EAFNOSUPPORT;
}

/* ---- calling the core: every input goes through enter/leave */

static void gossip_uv__enter(struct gossip_uv *g) {
  g->in_core++;
}

static void gossip_uv__leave(struct gossip_uv *g) {
  g->in_core--;
  gossip_uv__rearm(g);
}

static int gossip_uv__live(const struct gossip_uv *g) {
  return g->phase == GOSSIP_UV_RUNNING || g->phase == GOSSIP_UV_LEAVING;
}

/* ---- swim_env: clock and randomness */

static uint64_t gossip_uv__now_ms(void *ctx) {
  struct gossip_uv *g = ctx;
  return uv_now(g->loop);
}

/* xorshift64*: fast, good enough for probe order and sequence numbers
 * (nonces come from keyring.c, which uses OpenSSL). */
static uint32_t gossip_uv__random(void *ctx) {
  struct gossip_uv *g = ctx;
  uint64_t x = g->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  g->rng = x;
  return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

static uint64_t gossip_uv__seed(void) {
  uint64_t seed = 0;
  if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed)
    seed = uv_hrtime() ^ ((uint64_t)getpid() << 32);
  return seed ? seed : 0x9E3779B97F4A7C15ULL;
}

/* ---- swim_env: UDP */

static void gossip_uv__on_udp_sent(uv_udp_send_t *req, int status) {
  struct gossip_uv_dgram *d = gossip_uv__container_of(req, struct gossip_uv_dgram, req);
  struct gossip_uv *g = d->g;
  g->udp_queued -= d->len;
  if (status < 0 && status != UV_ECANCELED)
    g->stats.udp_send_errors++;
  free(d);
}

static int gossip_uv__udp_send(void *ctx, const struct wire_addr *to, const uint8_t *buf,
                               size_t len) {
  struct gossip_uv *g = ctx;
  struct sockaddr_storage ss;
  struct gossip_uv_dgram *d;
  uv_buf_t b;
  int rc;

  if (g->phase == GOSSIP_UV_CLOSING)
    return UV_ECANCELED;
  rc = gossip_uv__to_sockaddr(g, to, &ss);
  if (rc < 0) {
    g->stats.udp_send_errors++;
    return rc;
  }
  b = uv_buf_init((char *)buf, (unsigned)len);
  rc = uv_udp_try_send(&g->udp, &b, 1, (const struct sockaddr *)&ss);
  if (rc >= 0)
    return 0;
  if (rc != UV_EAGAIN && rc != UV_ENOSYS) {
    g->stats.udp_send_errors++;
    return rc;
  }
  if (g->udp_queued + len > GOSSIP_UV_MAX_UDP_QUEUE) {
    g->stats.udp_queue_full++;
    return UV_ENOBUFS;
  }
  d = malloc(sizeof *d + len);
  if (d == NULL)
    return UV_ENOMEM;
  d->g = g;
  d->len = len;
  memcpy(d->data, buf, len);
  b = uv_buf_init((char *)d->data, (unsigned)len);
  rc = uv_udp_send(&d->req, &g->udp, &b, 1, (const struct sockaddr *)&ss,
                   gossip_uv__on_udp_sent);
  if (rc < 0) {
    free(d);
    g->stats.udp_send_errors++;
    return rc;
  }
  g->udp_queued += len;
  g->stats.udp_queued++;
  return 0;
}

static void gossip_uv__udp_input(struct gossip_uv *g, ssize_t nread,
                                 const struct sockaddr *sa, unsigned flags) {
  struct wire_addr from;

  if (nread < 0) {
    LOG_D("gossip: udp recv: %s", uv_strerror((int)nread));
    return;
  }
  if (flags & UV_UDP_PARTIAL) {
    g->stats.udp_recv_truncated++;
    return;
  }
  if (nread == 0 || !gossip_uv__live(g) || gossip_uv__from_sockaddr(sa, &from) < 0)
    return;
  gossip_uv__enter(g);
  swim_on_udp(g->swim, &from, g->rbuf, (size_t)nread);
  gossip_uv__leave(g);
}

static void gossip_uv__on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  struct gossip_uv *g = h->data;
  (void)suggested;
  *buf = uv_buf_init((char *)g->rbuf, sizeof g->rbuf);
}

static void gossip_uv__on_udp_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                                   const struct sockaddr *addr, unsigned flags) {
  struct gossip_uv *g = gossip_uv__container_of(h, struct gossip_uv, udp);
  (void)buf;
  if (nread == 0 && addr == NULL)
    return; /* nothing more to read */
  gossip_uv__udp_input(g, nread, addr, flags);
}

/* ---- streams: table and state */

static struct gossip_uv_stream *gossip_uv__stream_find(struct gossip_uv *g, uint64_t id) {
  struct gossip_uv_stream *st = g->table[id % GOSSIP_UV_BUCKETS];
  while (st != NULL && st->id != id)
    st = st->hnext;
  return st;
}

static void gossip_uv__stream_unhash(struct gossip_uv_stream *st) {
  struct gossip_uv_stream **pp = &st->g->table[st->id % GOSSIP_UV_BUCKETS];
  while (*pp != NULL && *pp != st)
    pp = &(*pp)->hnext;
  if (*pp == st)
    *pp = st->hnext;
  st->hnext = NULL;
}

/* Every state change of a stream goes through here. */
static void gossip_uv__stream_set_state(struct gossip_uv_stream *st,
                                        enum gossip_uv_stream_state to) {
  if (log_enabled(LOG_DEBUG))
    LOG_D("gossip: stream %llu (%s) %s -> %s", (unsigned long long)st->id,
          st->inbound ? "in" : "out", gossip_uv__stream_state_str(st->state),
          gossip_uv__stream_state_str(to));
  st->state = to;
}

/* A new stream with an initialised handle, on the list and the table. */
static int gossip_uv__stream_new(struct gossip_uv *g, int inbound,
                                 struct gossip_uv_stream **out) {
  struct gossip_uv_stream *st = calloc(1, sizeof *st);
  int rc;

  if (st == NULL)
    return UV_ENOMEM;
  rc = uv_tcp_init(g->loop, &st->tcp);
  if (rc < 0) {
    free(st);
    return rc;
  }
  st->tcp.data = g;
  st->g = g;
  st->id = g->next_id++;
  st->inbound = inbound;
  st->state = inbound ? GOSSIP_UV_S_OPEN : GOSSIP_UV_S_CONNECTING;
  st->hnext = g->table[st->id % GOSSIP_UV_BUCKETS];
  g->table[st->id % GOSSIP_UV_BUCKETS] = st;
  st->next = g->streams;
  if (g->streams != NULL)
    g->streams->prev = st;
  g->streams = st;
  g->handles++;
  if (inbound)
    g->n_in++;
  else
    g->n_out++;
  *out = st;
  return 0;
}

/* Closes the handle now; the close callback frees the stream. The core may
 * no longer name it. */
static void gossip_uv__stream_shut(struct gossip_uv_stream *st) {
  struct gossip_uv *g = st->g;
  if (st->state == GOSSIP_UV_S_CLOSED)
    return;
  gossip_uv__stream_unhash(st);
  if (st->inbound)
    g->n_in--;
  else
    g->n_out--;
  gossip_uv__stream_set_state(st, GOSSIP_UV_S_CLOSED);
  uv_close((uv_handle_t *)&st->tcp, gossip_uv__on_stream_closed);
}

static void gossip_uv__handle_closed(struct gossip_uv *g) {
  void (*done)(void *ud);
  void *ud;

  if (--g->handles > 0 || g->phase != GOSSIP_UV_CLOSING)
    return;
  done = g->done;
  ud = g->done_ud;
  if (g->swim != NULL)
    swim_free(g->swim); /* env calls from here are no-ops: phase is CLOSING */
  free(g);
  if (done != NULL)
    done(ud);
}

static void gossip_uv__on_stream_closed(uv_handle_t *h) {
  struct gossip_uv_stream *st = gossip_uv__container_of(h, struct gossip_uv_stream, tcp);
  struct gossip_uv *g = st->g;
  if (st->prev != NULL)
    st->prev->next = st->next;
  else
    g->streams = st->next;
  if (st->next != NULL)
    st->next->prev = st->prev;
  free(st);
  gossip_uv__handle_closed(g);
}

/* The stream failed or ended on the peer's side: tell the core once, keep
 * the entry (the core may still write after an EOF, and will close it). */
static void gossip_uv__stream_peer_closed(struct gossip_uv_stream *st, int err) {
  struct gossip_uv *g = st->g;
  uint64_t id = st->id;

  uv_read_stop((uv_stream_t *)&st->tcp);
  if (err < 0 && st->err == 0)
    st->err = err;
  gossip_uv__stream_set_state(st, GOSSIP_UV_S_PEER_CLOSED);
  st->deadline_ms = uv_now(g->loop) + g->cfg.tcp_timeout_ms;
  gossip_uv__enter(g);
  swim_on_stream_closed(g->swim, id, err);
  gossip_uv__leave(g);
}

static void gossip_uv__stream_read(struct gossip_uv_stream *st, ssize_t nread) {
  struct gossip_uv *g = st->g;

  if (st->state != GOSSIP_UV_S_OPEN || !gossip_uv__live(g))
    return;
  if (nread > 0) {
    gossip_uv__enter(g);
    swim_on_stream_data(g->swim, st->id, g->rbuf, (size_t)nread);
    gossip_uv__leave(g);
    return;
  }
  gossip_uv__stream_peer_closed(st, nread == UV_EOF ? 0 : (int)nread);
}

static void gossip_uv__on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct gossip_uv_stream *st = gossip_uv__container_of(s, struct gossip_uv_stream, tcp);
  (void)buf;
  if (nread == 0)
    return; /* EAGAIN */
  gossip_uv__stream_read(st, nread);
}

/* ---- streams: outbound */

static void gossip_uv__stream_connected(struct gossip_uv_stream *st, int status) {
  struct gossip_uv *g = st->g;
  uint64_t id = st->id;

  if (st->state == GOSSIP_UV_S_CLOSED)
    return; /* cancelled by a close */
  if (st->state == GOSSIP_UV_S_FLUSHING) {
    if (status < 0)
      gossip_uv__stream_shut(st); /* the core already let go */
    return;
  }
  if (status == 0) {
    uv_tcp_nodelay(&st->tcp, 1);
    status =
        uv_read_start((uv_stream_t *)&st->tcp, gossip_uv__on_alloc, gossip_uv__on_read);
  }
  if (status < 0) {
    gossip_uv__stream_shut(st); /* the core hears the failure and forgets the id */
  } else {
    gossip_uv__stream_set_state(st, GOSSIP_UV_S_OPEN);
    st->deadline_ms = uv_now(g->loop) + 3 * g->cfg.tcp_timeout_ms;
  }
  if (!gossip_uv__live(g))
    return;
  gossip_uv__enter(g);
  swim_on_stream_connected(g->swim, id, status);
  gossip_uv__leave(g);
}

static void gossip_uv__on_connect(uv_connect_t *req, int status) {
  struct gossip_uv_stream *st =
      gossip_uv__container_of(req, struct gossip_uv_stream, connect);
  gossip_uv__stream_connected(st, status);
}

static int gossip_uv__stream_open(void *ctx, const struct wire_addr *to, uint64_t *id) {
  struct gossip_uv *g = ctx;
  struct gossip_uv_stream *st;
  struct sockaddr_storage ss;
  int rc;

  if (g->phase == GOSSIP_UV_CLOSING)
    return UV_ECANCELED;
  if (g->n_out >= GOSSIP_UV_MAX_OUTBOUND) {
    g->stats.streams_refused++;
    return UV_EMFILE;
  }
  rc = gossip_uv__to_sockaddr(g, to, &ss);
  if (rc < 0)
    return rc;
  rc = gossip_uv__stream_new(g, 0, &st);
  if (rc < 0)
    return rc;
  rc = uv_tcp_connect(&st->connect, &st->tcp, (const struct sockaddr *)&ss,
                      gossip_uv__on_connect);
  if (rc < 0) {
    gossip_uv__stream_shut(st);
    return rc;
  }
  st->deadline_ms = uv_now(g->loop) + g->cfg.tcp_timeout_ms;
  *id = st->id;
  return 0;
}

/* ---- streams: writes and close */

static void gossip_uv__stream_written(struct gossip_uv_stream *st, int status) {
  if (status < 0 && status != UV_ECANCELED && st->err == 0)
    st->err = status;
  if (st->state == GOSSIP_UV_S_FLUSHING && (st->queued == 0 || status < 0)) {
    gossip_uv__stream_shut(st);
    return;
  }
  if (status < 0 && status != UV_ECANCELED && st->state == GOSSIP_UV_S_OPEN &&
      gossip_uv__live(st->g))
    gossip_uv__stream_peer_closed(st, status);
}

static void gossip_uv__on_write(uv_write_t *req, int status) {
  struct gossip_uv_write *w = gossip_uv__container_of(req, struct gossip_uv_write, req);
  struct gossip_uv_stream *st =
      gossip_uv__container_of(req->handle, struct gossip_uv_stream, tcp);
  st->queued -= w->len;
  free(w);
  gossip_uv__stream_written(st, status);
}

static int gossip_uv__stream_write(void *ctx, uint64_t id, const uint8_t *buf,
                                   size_t len) {
  struct gossip_uv *g = ctx;
  struct gossip_uv_stream *st = gossip_uv__stream_find(g, id);
  struct gossip_uv_write *w;
  size_t off = 0;
  uv_buf_t b;
  int rc;

  if (st == NULL || st->state == GOSSIP_UV_S_FLUSHING)
    return UV_EBADF;
  if (st->err < 0)
    return st->err;
  if (len == 0)
    return 0;
  if (st->queued + len > GOSSIP_UV_MAX_STREAM_OUT) {
    g->stats.stream_write_full++;
    return RM_ETOOBIG;
  }
  if (st->state != GOSSIP_UV_S_CONNECTING && st->queued == 0) {
    b = uv_buf_init((char *)buf, (unsigned)len);
    rc = uv_try_write((uv_stream_t *)&st->tcp, &b, 1);
    if (rc >= 0)
      off = (size_t)rc;
    else if (rc != UV_EAGAIN && rc != UV_ENOSYS)
      return st->err = rc;
  }
  if (off == len)
    return 0;
  w = malloc(sizeof *w + (len - off));
  if (w == NULL)
    return UV_ENOMEM;
  w->len = len - off;
  memcpy(w->data, buf + off, w->len);
  b = uv_buf_init((char *)w->data, (unsigned)w->len);
  rc = uv_write(&w->req, (uv_stream_t *)&st->tcp, &b, 1, gossip_uv__on_write);
  if (rc < 0) {
    free(w);
    return st->err = rc;
  }
  st->queued += w->len;
  return 0;
}

static void gossip_uv__stream_close(void *ctx, uint64_t id) {
  struct gossip_uv *g = ctx;
  struct gossip_uv_stream *st = gossip_uv__stream_find(g, id);

  if (st == NULL || st->state == GOSSIP_UV_S_FLUSHING)
    return;
  uv_read_stop((uv_stream_t *)&st->tcp);
  if (st->queued == 0 || st->err < 0) {
    gossip_uv__stream_shut(st);
    return;
  }
  gossip_uv__stream_set_state(st, GOSSIP_UV_S_FLUSHING);
  st->deadline_ms = uv_now(g->loop) + g->cfg.tcp_timeout_ms;
}

/* ---- streams: inbound */

static void gossip_uv__accept(struct gossip_uv *g, int status) {
  struct gossip_uv_stream *st;
  struct sockaddr_storage ss;
  struct wire_addr from;
  int sslen = sizeof ss;
  int rc;

  if (status < 0) {
    LOG_W("gossip: accept: %s", uv_strerror(status));
    return;
  }
  if (gossip_uv__stream_new(g, 1, &st) < 0)
    return;
  rc = uv_accept((uv_stream_t *)&g->listener, (uv_stream_t *)&st->tcp);
  if (rc == 0 && (!gossip_uv__live(g) || g->n_in > GOSSIP_UV_MAX_INBOUND)) {
    g->stats.streams_refused++;
    rc = UV_EBUSY;
  }
  if (rc == 0)
    rc = uv_tcp_getpeername(&st->tcp, (struct sockaddr *)&ss, &sslen);
  if (rc == 0)
    rc = gossip_uv__from_sockaddr((const struct sockaddr *)&ss, &from);
  if (rc == 0)
    rc = uv_read_start((uv_stream_t *)&st->tcp, gossip_uv__on_alloc, gossip_uv__on_read);
  if (rc < 0) {
    LOG_D("gossip: inbound stream dropped: %s", uv_strerror(rc));
    gossip_uv__stream_shut(st);
    return;
  }
  uv_tcp_nodelay(&st->tcp, 1);
  st->deadline_ms = uv_now(g->loop) + 3 * g->cfg.tcp_timeout_ms;
  gossip_uv__enter(g);
  swim_on_stream_accept(g->swim, st->id, &from);
  gossip_uv__leave(g);
}

static void gossip_uv__on_connection(uv_stream_t *server, int status) {
  struct gossip_uv *g = gossip_uv__container_of(server, struct gossip_uv, listener);
  gossip_uv__accept(g, status);
}

/* ---- housekeeping: nothing stays in any stream state forever */

static void gossip_uv__stream_expire(struct gossip_uv_stream *st, uint64_t now) {
  struct gossip_uv *g = st->g;
  uint64_t id = st->id;

  if (st->state == GOSSIP_UV_S_CLOSED || now < st->deadline_ms)
    return;
  switch (st->state) {
  case GOSSIP_UV_S_CONNECTING:
    g->stats.streams_timed_out++;
    gossip_uv__stream_shut(st);
    gossip_uv__enter(g);
    swim_on_stream_connected(g->swim, id, UV_ETIMEDOUT);
    gossip_uv__leave(g);
    break;
  case GOSSIP_UV_S_OPEN:
    g->stats.streams_timed_out++;
    gossip_uv__stream_peer_closed(st, UV_ETIMEDOUT);
    break;
  default: gossip_uv__stream_shut(st);
  }
}

static void gossip_uv__housekeep(struct gossip_uv *g) {
  uint64_t now = uv_now(g->loop);
  struct gossip_uv_stream *st, *next;

  if (!gossip_uv__live(g))
    return;
  /* Entries leave the list only in close callbacks, and new ones go in at
   * the head, so walking with a saved next is safe here. */
  for (st = g->streams; st != NULL; st = next) {
    next = st->next;
    gossip_uv__stream_expire(st, now);
  }
}

static void gossip_uv__on_housekeep(uv_timer_t *t) {
  struct gossip_uv *g = gossip_uv__container_of(t, struct gossip_uv, housekeep);
  gossip_uv__housekeep(g);
}

/* ---- the timer: the core's deadline, and the stop phases */

static void gossip_uv__rearm(struct gossip_uv *g) {
  uint64_t now, due, delay;

  if (g->in_core || g->phase == GOSSIP_UV_CLOSING || !(g->inited & GOSSIP_UV_H_TIMER))
    return;
  now = uv_now(g->loop);
  switch (g->phase) {
  case GOSSIP_UV_RUNNING:
    due = g->stop_kind != GOSSIP_UV_STOP_NONE ? now : swim_next_deadline(g->swim);
    break;
  case GOSSIP_UV_LEAVING:
    due = swim_leave_done(g->swim) ? now : swim_next_deadline(g->swim);
    if (g->leave_deadline < due)
      due = g->leave_deadline;
    break;
  default: /* FLUSH: poll the send queue */
    due = now + 10 < g->flush_deadline ? now + 10 : g->flush_deadline;
    break;
  }
  if (due > now)
    delay = due - now;
  else
    delay = g->ticked_at == now ? 1 : 0; /* a deadline the tick did not move: no spin */
  if (delay > GOSSIP_UV_MAX_SLEEP_MS)
    delay = GOSSIP_UV_MAX_SLEEP_MS;
  uv_timer_start(&g->timer, gossip_uv__on_timer, delay, 0);
}

static void gossip_uv__start_leave(struct gossip_uv *g, uint64_t now) {
  int rc;

  gossip_uv__enter(g);
  rc = swim_leave(g->swim, g->leave_timeout_ms);
  g->in_core--;
  if (rc < 0) {
    LOG_W("gossip: leave: %s; stopping without it", rm_strerror(rc));
    g->phase = GOSSIP_UV_FLUSH;
    g->flush_deadline = now + GOSSIP_UV_FLUSH_MS;
    return;
  }
  g->phase = GOSSIP_UV_LEAVING;
  g->leave_deadline = now + g->leave_timeout_ms + GOSSIP_UV_LEAVE_GRACE_MS;
}

static void gossip_uv__step(struct gossip_uv *g) {
  uint64_t now = uv_now(g->loop);

  switch (g->phase) {
  case GOSSIP_UV_RUNNING:
    if (g->stop_kind == GOSSIP_UV_STOP_CLOSE) {
      gossip_uv__begin_close(g);
      return;
    }
    if (g->stop_kind == GOSSIP_UV_STOP_LEAVE)
      gossip_uv__start_leave(g, now);
    break;
  case GOSSIP_UV_LEAVING:
    if (swim_leave_done(g->swim) || now >= g->leave_deadline) {
      LOG_D("gossip: leave %s", swim_leave_done(g->swim) ? "done" : "timed out");
      g->phase = GOSSIP_UV_FLUSH;
      g->flush_deadline = now + GOSSIP_UV_FLUSH_MS;
    }
    break;
  case GOSSIP_UV_FLUSH:
    if (g->udp_queued == 0 || now >= g->flush_deadline) {
      gossip_uv__begin_close(g);
      return;
    }
    break;
  case GOSSIP_UV_CLOSING: return;
  }
  if (gossip_uv__live(g) && now >= swim_next_deadline(g->swim)) {
    g->ticked_at = now;
    gossip_uv__enter(g);
    swim_tick(g->swim);
    gossip_uv__leave(g);
    return;
  }
  gossip_uv__rearm(g);
}

static void gossip_uv__on_timer(uv_timer_t *t) {
  struct gossip_uv *g = gossip_uv__container_of(t, struct gossip_uv, timer);
  gossip_uv__step(g);
}

/* ---- start and stop */

static void gossip_uv__on_handle_closed(uv_handle_t *h) {
  struct gossip_uv *g = h->data;
  gossip_uv__handle_closed(g);
}

static void gossip_uv__close_handle(struct gossip_uv *g, unsigned bit, uv_handle_t *h) {
  if (g->inited & bit) {
    g->inited &= ~bit;
    uv_close(h, gossip_uv__on_handle_closed);
  }
}

static void gossip_uv__begin_close(struct gossip_uv *g) {
  struct gossip_uv_stream *st;

  g->phase = GOSSIP_UV_CLOSING;
  gossip_uv__close_handle(g, GOSSIP_UV_H_TIMER, (uv_handle_t *)&g->timer);
  gossip_uv__close_handle(g, GOSSIP_UV_H_HOUSEKEEP, (uv_handle_t *)&g->housekeep);
  gossip_uv__close_handle(g, GOSSIP_UV_H_UDP, (uv_handle_t *)&g->udp);
  gossip_uv__close_handle(g, GOSSIP_UV_H_LISTENER, (uv_handle_t *)&g->listener);
  for (st = g->streams; st != NULL; st = st->next)
    gossip_uv__stream_shut(st);
  if (g->handles == 0) { /* nothing was ever opened */
    g->handles = 1;
    gossip_uv__handle_closed(g);
  }
}

/* Binds UDP then TCP on the same address; with port 0 the TCP listener
 * takes the port the kernel gave the UDP socket. */
static int gossip_uv__bind(struct gossip_uv *g, const char *bind_addr) {
  struct sockaddr_storage ss;
  int sslen = sizeof ss;
  struct wire_addr want;
  int rc, rcvbuf = GOSSIP_UV_UDP_RCVBUF;

  rc = gossip_uv_parse_addr(bind_addr, &want);
  if (rc < 0)
    return rc;
  g->family = want.ip_len == 4 ? AF_INET : AF_INET6;
  gossip_uv__to_sockaddr(g, &want, &ss);

  rc = uv_udp_init_ex(g->loop, &g->udp, (unsigned)g->family);
  if (rc < 0)
    return rc;
  g->udp.data = g;
  g->inited |= GOSSIP_UV_H_UDP;
  g->handles++;
  rc = uv_udp_bind(&g->udp, (const struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_udp_getsockname(&g->udp, (struct sockaddr *)&ss, &sslen);
  if (rc < 0)
    return rc;
  uv_recv_buffer_size((uv_handle_t *)&g->udp, &rcvbuf); /* best effort */

  rc = uv_tcp_init_ex(g->loop, &g->listener, (unsigned)g->family);
  if (rc < 0)
    return rc;
  g->listener.data = g;
  g->inited |= GOSSIP_UV_H_LISTENER;
  g->handles++;
  rc = uv_tcp_bind(&g->listener, (const struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&g->listener, GOSSIP_UV_LISTEN_BACKLOG,
                   gossip_uv__on_connection);
  if (rc < 0)
    return rc;
  return gossip_uv__from_sockaddr((const struct sockaddr *)&ss, &g->bound);
}

static int gossip_uv__init_timers(struct gossip_uv *g) {
  int rc = uv_timer_init(g->loop, &g->timer);
  if (rc < 0)
    return rc;
  g->timer.data = g;
  g->inited |= GOSSIP_UV_H_TIMER;
  g->handles++;
  rc = uv_timer_init(g->loop, &g->housekeep);
  if (rc < 0)
    return rc;
  g->housekeep.data = g;
  g->inited |= GOSSIP_UV_H_HOUSEKEEP;
  g->handles++;
  uv_unref((uv_handle_t *)&g->housekeep);
  return 0;
}

static int gossip_uv__setup(struct gossip_uv *g, const struct swim_config *cfg,
                            const char *bind_addr, const struct swim_callbacks *cb) {
  static const uint8_t any[WIRE_ADDR_MAX];
  char addr[64], adv[64];
  int rc;

  g->cfg = *cfg;
  if (g->cfg.tcp_timeout_ms == 0)
    g->cfg.tcp_timeout_ms = 10000;
  rc = gossip_uv__bind(g, bind_addr);
  if (rc < 0) {
    LOG_E("gossip: bind %s: %s", bind_addr, uv_strerror(rc));
    return rc;
  }
  if (g->cfg.advertise.ip_len == 0) {
    if (memcmp(g->bound.ip, any, g->bound.ip_len) == 0) {
      LOG_E("gossip: bound to %s: set an address to advertise", bind_addr);
      return UV_EINVAL;
    }
    g->cfg.advertise = g->bound;
  }
  rc = gossip_uv__init_timers(g);
  if (rc < 0)
    return rc;
  g->rng = gossip_uv__seed();
  g->next_id = 1;
  g->env.ctx = g;
  g->env.now_ms = gossip_uv__now_ms;
  g->env.random = gossip_uv__random;
  g->env.udp_send = gossip_uv__udp_send;
  g->env.stream_open = gossip_uv__stream_open;
  g->env.stream_write = gossip_uv__stream_write;
  g->env.stream_close = gossip_uv__stream_close;
  gossip_uv__enter(g);
  rc = swim_new(&g->swim, &g->cfg, &g->env, cb);
  g->in_core--;
  if (rc < 0) {
    g->swim = NULL;
    LOG_E("gossip: %s", rm_strerror(rc));
    return rc;
  }
  rc = uv_udp_recv_start(&g->udp, gossip_uv__on_alloc, gossip_uv__on_udp_recv);
  if (rc < 0)
    return rc;
  uv_timer_start(&g->housekeep, gossip_uv__on_housekeep, GOSSIP_UV_HOUSEKEEP_MS,
                 GOSSIP_UV_HOUSEKEEP_MS);
  LOG_I("gossip: %s on %s (advertising %s, seed %016llx)", g->cfg.name,
        gossip_uv_format_addr(&g->bound, addr, sizeof addr),
        gossip_uv_format_addr(&g->cfg.advertise, adv, sizeof adv),
        (unsigned long long)g->rng);
  return 0;
}

int gossip_uv_start(struct gossip_uv **out, uv_loop_t *loop,
                    const struct swim_config *cfg, const char *bind_addr,
                    const struct swim_callbacks *cb) {
  struct gossip_uv *g = calloc(1, sizeof *g);
  int rc;

  if (g == NULL)
    return UV_ENOMEM;
  g->loop = loop;
  rc = gossip_uv__setup(g, cfg, bind_addr, cb);
  if (rc < 0) {
    gossip_uv__begin_close(g); /* frees g once the handles are closed */
    return rc;
  }
  gossip_uv__rearm(g);
  *out = g;
  return 0;
}

struct swim *gossip_uv_swim(struct gossip_uv *g) {
  return g->swim;
}

const struct wire_addr *gossip_uv_addr(const struct gossip_uv *g) {
  return &g->bound;
}

void gossip_uv_poke(struct gossip_uv *g) {
  gossip_uv__rearm(g);
}

int gossip_uv_join(struct gossip_uv *g, const char *const *seeds, size_t n) {
  struct wire_addr *addrs;
  size_t i;
  int rc = 0;

  if (g->in_core)
    return UV_EBUSY;
  if (!gossip_uv__live(g))
    return UV_ECANCELED;
  if (n == 0)
    return 0;
  addrs = calloc(n, sizeof *addrs);
  if (addrs == NULL)
    return UV_ENOMEM;
  for (i = 0; i < n && rc == 0; i++) {
    rc = gossip_uv_parse_addr(seeds[i], &addrs[i]);
    if (rc < 0)
      LOG_E("gossip: join: bad address %s (want ip:port)", seeds[i]);
  }
  if (rc == 0) {
    gossip_uv__enter(g);
    rc = swim_join(g->swim, addrs, n);
    gossip_uv__leave(g);
  }
  free(addrs);
  return rc;
}

int gossip_uv_set_meta(struct gossip_uv *g, const uint8_t *meta, size_t len) {
  int rc;

  if (g->in_core)
    return UV_EBUSY;
  if (!gossip_uv__live(g))
    return UV_ECANCELED;
  gossip_uv__enter(g);
  rc = swim_set_meta(g->swim, meta, len);
  gossip_uv__leave(g);
  return rc;
}

static int gossip_uv__request_stop(struct gossip_uv *g, enum gossip_uv_stop_kind kind,
                                   void (*done)(void *ud), void *ud) {
  if (g->stop_kind != GOSSIP_UV_STOP_NONE)
    return UV_EALREADY;
  g->stop_kind = kind;
  g->done = done;
  g->done_ud = ud;
  /* The step runs from the timer, never from inside the caller's stack. */
  uv_timer_start(&g->timer, gossip_uv__on_timer, 0, 0);
  return 0;
}

int gossip_uv_stop(struct gossip_uv *g, uint64_t timeout_ms, void (*done)(void *ud),
                   void *ud) {
  int rc = gossip_uv__request_stop(g, GOSSIP_UV_STOP_LEAVE, done, ud);
  if (rc == 0)
    g->leave_timeout_ms = timeout_ms ? timeout_ms : GOSSIP_UV_LEAVE_TIMEOUT_MS;
  return rc;
}

int gossip_uv_close(struct gossip_uv *g, void (*done)(void *ud), void *ud) {
  return gossip_uv__request_stop(g, GOSSIP_UV_STOP_CLOSE, done, ud);
}

void gossip_uv_get_stats(const struct gossip_uv *g, struct gossip_uv_stats *st) {
  *st = g->stats;
  st->streams_in = g->n_in;
  st->streams_out = g->n_out;
}
