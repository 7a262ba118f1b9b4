/* swim_stream.c - TCP streams: one request (and maybe one reply) each.
 *
 * memberlist uses a connection per exchange (memberlist-wire.md section 6):
 * a push/pull of full state, a fallback ping, or a user message, then
 * close. The host hands us bytes as they arrive; we buffer them until one
 * complete message is there. Plain messages carry no overall length, so
 * swim__frame walks the msgpack objects incrementally (a push/pull is a
 * header, N node entries and a raw user-state tail) and remembers how far
 * it got. An encrypted stream is [10][len] and waits for len bytes. Every
 * stream is capped at WIRE_STREAM_MAX buffered bytes and tcp_timeout of
 * life; anything malformed or unauthenticated is counted, answered with
 * an err message when inbound, and closed.
 *
 * Contract with the host: the core calls stream_close exactly once for
 * every stream it opened successfully or was handed by
 * swim_on_stream_accept, also after swim_on_stream_closed or a failed
 * connect; the host releases the id then.
 */
#include "swim_internal.h"

#include "../common/errors.h"
#include "../common/log.h"

#include <errno.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

enum { FR_TYPE = 0, FR_BODY, FR_PP_HEADER, FR_PP_NODES, FR_USER_HEADER, FR_RAW, FR_DONE };

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int swim__mp_skip(const uint8_t *p, size_t len, size_t *used) {
  size_t pos = 0;
  uint64_t pending = 1;
  /* iterative: a hostile nesting depth cannot grow our stack */
  while (pending > 0) {
    if (pos >= len)
      return 0;
    uint8_t b = p[pos++];
    uint64_t skip = 0, add = 0;
    size_t need = 0;
    if (b <= 0x7f || b >= 0xe0) {
      /* fixint */
    } else if (b <= 0x8f) {
      add = 2u * (b & 0x0f);
    } else if (b <= 0x9f) {
      add = b & 0x0f;
    } else if (b <= 0xbf) {
      skip = b & 0x1f;
    } else {
      switch (b) {
      case 0xc0:
      case 0xc2:
      case 0xc3: break;
      case 0xc4:
      case 0xd9:
      case 0xc7: need = 1; break;
      case 0xc5:
      case 0xda:
      case 0xc8:
      case 0xdc:
      case 0xde: need = 2; break;
      case 0xc6:
      case 0xdb:
      case 0xc9:
      case 0xdd:
      case 0xdf: need = 4; break;
      case 0xca: skip = 4; break;
      case 0xcb: skip = 8; break;
      case 0xcc:
      case 0xd0: skip = 1; break;
      case 0xcd:
      case 0xd1: skip = 2; break;
      case 0xce:
      case 0xd2: skip = 4; break;
      case 0xcf:
      case 0xd3: skip = 8; break;
      case 0xd4: skip = 2; break;
      case 0xd5: skip = 3; break;
      case 0xd6: skip = 5; break;
      case 0xd7: skip = 9; break;
      case 0xd8: skip = 17; break;
      default: return RM_EPARSE; /* 0xc1 never used */
      }
      if (need) {
        if (len - pos < need)
          return 0;
        uint64_t v = need == 1   ? p[pos]
                     : need == 2 ? (uint64_t)(p[pos] << 8 | p[pos + 1])
                                 : be32(p + pos);
        pos += need;
        switch (b) {
        case 0xdc:
        case 0xdd: add = v; break;
        case 0xde:
        case 0xdf: add = 2 * v; break;
        case 0xc7:
        case 0xc8:
        case 0xc9: skip = v + 1; break; /* ext: type byte too */
        default: skip = v; break;
        }
      }
    }
    if (len - pos < skip)
      return 0;
    pos += (size_t)skip;
    pending = pending - 1 + add;
  }
  *used = pos;
  return 1;
}

/* UserMsgLen from a TCP user message header. */
static int user_msg_len(const uint8_t *p, size_t len, uint64_t *out) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  int rc = RM_EPARSE;
  if (msgpack_unpack_next(&u, (const char *)p, len, &off) == MSGPACK_UNPACK_SUCCESS &&
      u.data.type == MSGPACK_OBJECT_MAP) {
    *out = 0;
    rc = 0;
    for (uint32_t i = 0; i < u.data.via.map.size; i++) {
      const msgpack_object *k = &u.data.via.map.ptr[i].key;
      const msgpack_object *v = &u.data.via.map.ptr[i].val;
      if ((k->type == MSGPACK_OBJECT_STR && k->via.str.size == 10 &&
           memcmp(k->via.str.ptr, "UserMsgLen", 10) == 0) ||
          (k->type == MSGPACK_OBJECT_BIN && k->via.bin.size == 10 &&
           memcmp(k->via.bin.ptr, "UserMsgLen", 10) == 0)) {
        if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
          *out = v->via.u64;
        else
          rc = RM_EPARSE;
      }
    }
  }
  msgpack_unpacked_destroy(&u);
  return rc;
}

int swim__frame(struct swim__frame *fr, const uint8_t *buf, size_t len, size_t *msg_len) {
  for (;;) {
    size_t used;
    int r;
    switch (fr->stage) {
    case FR_TYPE:
      if (len < 1)
        return 0;
      fr->off = 1;
      switch (buf[0]) {
      case WIRE_PING:
      case WIRE_ACK:
      case WIRE_ERR:
      case WIRE_COMPRESS:
      case WIRE_NACK: fr->stage = FR_BODY; break;
      case WIRE_PUSH_PULL: fr->stage = FR_PP_HEADER; break;
      case WIRE_USER: fr->stage = FR_USER_HEADER; break;
      default: return RM_EPARSE;
      }
      break;
    case FR_BODY:
      if ((r = swim__mp_skip(buf + fr->off, len - fr->off, &used)) <= 0)
        return r;
      fr->off += used;
      fr->stage = FR_DONE;
      break;
    case FR_PP_HEADER: {
      if ((r = swim__mp_skip(buf + fr->off, len - fr->off, &used)) <= 0)
        return r;
      struct wire_push_pull_header h;
      if (wire_decode_push_pull_header(buf + fr->off, used, &h) < 0)
        return RM_EPARSE;
      if (h.user_state_len > WIRE_STREAM_MAX)
        return RM_ETOOBIG;
      fr->off += used;
      fr->nodes_left = h.nodes;
      fr->raw_left = h.user_state_len;
      fr->stage = FR_PP_NODES;
      break;
    }
    case FR_PP_NODES:
      while (fr->nodes_left > 0) {
        if ((r = swim__mp_skip(buf + fr->off, len - fr->off, &used)) <= 0)
          return r;
        fr->off += used;
        fr->nodes_left--;
      }
      fr->stage = FR_RAW;
      break;
    case FR_USER_HEADER: {
      if ((r = swim__mp_skip(buf + fr->off, len - fr->off, &used)) <= 0)
        return r;
      uint64_t ulen;
      if (user_msg_len(buf + fr->off, used, &ulen) < 0)
        return RM_EPARSE;
      if (ulen > WIRE_STREAM_MAX)
        return RM_ETOOBIG;
      fr->off += used;
      fr->raw_left = ulen;
      fr->stage = FR_RAW;
      break;
    }
    case FR_RAW:
      if (len - fr->off < fr->raw_left)
        return 0;
      fr->off += (size_t)fr->raw_left;
      fr->raw_left = 0;
      fr->stage = FR_DONE;
      break;
    default: *msg_len = fr->off; return 1;
    }
  }
}

/* ---- table ---- */

static struct swim__stream *find(struct swim *s, uint64_t id) {
  for (struct swim__stream *st = s->streams; st; st = st->next)
    if (st->id == id)
      return st;
  return NULL;
}

static void stream_timeout(struct swim *s, struct swim__timer *t);

static struct swim__stream *stream_new(enum swim__stream_kind kind) {
  struct swim__stream *st = calloc(1, sizeof *st);
  if (st == NULL)
    return NULL;
  st->kind = kind;
  swim__timer_init(&st->timer, stream_timeout);
  return st;
}

static void stream_link(struct swim *s, struct swim__stream *st) {
  st->next = s->streams;
  s->streams = st;
  if (st->kind == SWIM__ST_INBOUND)
    s->n_streams_in++;
}

/* Unlinks and frees st, handing its id back to the host. */
static void stream_free(struct swim *s, struct swim__stream *st) {
  for (struct swim__stream **pp = &s->streams; *pp; pp = &(*pp)->next) {
    if (*pp == st) {
      *pp = st->next;
      break;
    }
  }
  if (st->kind == SWIM__ST_INBOUND)
    s->n_streams_in--;
  if (s->probe.tcp_open && s->probe.tcp_stream == st->id)
    s->probe.tcp_open = 0; /* the host may reuse the id */
  swim__timer_cancel(s, &st->timer);
  s->env.stream_close(s->env.ctx, st->id);
  free(st->buf);
  free(st);
}

void swim__stream_close(struct swim *s, uint64_t id) {
  struct swim__stream *st = find(s, id);
  if (st)
    stream_free(s, st);
}

void swim__streams_free(struct swim *s) {
  while (s->streams)
    stream_free(s, s->streams);
}

/* An outbound exchange that ended without its answer. */
static void outbound_failed(struct swim *s, struct swim__stream *st) {
  if (st->kind == SWIM__ST_PUSH_PULL && !st->done) {
    st->done = 1;
    swim__join_result(s, st->purpose, 0);
  }
}

static void stream_timeout(struct swim *s, struct swim__timer *t) {
  struct swim__stream *st = swim__container_of(t, struct swim__stream, timer);
  if (st->kind == SWIM__ST_INBOUND && st->len > 0 && !st->done)
    s->stats.dropped_malformed++;
  uint64_t id = st->id;
  outbound_failed(s, st);
  swim__stream_close(s, id);
}

int swim__stream_open(struct swim *s, enum swim__stream_kind kind,
                      enum swim__pp_purpose p, const struct wire_addr *to,
                      uint32_t ping_seq, const char *node, uint64_t deadline,
                      uint64_t *id) {
  struct swim__stream *st = stream_new(kind);
  if (st == NULL)
    return -ENOMEM;
  st->purpose = p;
  st->peer = *to;
  st->ping_seq = ping_seq;
  if (node)
    swim__name_copy(st->node, node);
  int r = s->env.stream_open(s->env.ctx, to, &st->id);
  if (r < 0) {
    free(st);
    return r;
  }
  stream_link(s, st);
  s->stats.streams_out++;
  swim__timer_arm(s, &st->timer, deadline);
  if (id)
    *id = st->id;
  return 0;
}

int swim__stream_send(struct swim *s, struct swim__stream *st, const uint8_t *msg,
                      size_t len) {
  if (s->cfg.keyring == NULL)
    return s->env.stream_write(s->env.ctx, st->id, msg, len);
  size_t cap = 5 + len + KEYRING_OVERHEAD;
  uint8_t *out = malloc(cap);
  if (out == NULL)
    return -ENOMEM;
  uint32_t body = (uint32_t)(len + KEYRING_OVERHEAD);
  out[0] = WIRE_ENCRYPT;
  out[1] = (uint8_t)(body >> 24);
  out[2] = (uint8_t)(body >> 16);
  out[3] = (uint8_t)(body >> 8);
  out[4] = (uint8_t)body;
  int r = keyring_encrypt(s->cfg.keyring, msg, len, out, 5, out + 5, cap - 5);
  if (r >= 0)
    r = s->env.stream_write(s->env.ctx, st->id, out, 5 + (size_t)r);
  free(out);
  return r;
}

static void send_err(struct swim *s, struct swim__stream *st, const char *why) {
  uint8_t buf[256];
  int n = wire_encode_err(buf, sizeof buf, why);
  if (n > 0)
    swim__stream_send(s, st, buf, (size_t)n);
}

static int send_state(struct swim *s, struct swim__stream *st, int join) {
  uint8_t *msg;
  size_t len;
  int r = swim__push_pull_build(s, join, &msg, &len);
  if (r < 0)
    return r;
  r = swim__stream_send(s, st, msg, len);
  free(msg);
  return r;
}

void swim_on_stream_accept(struct swim *s, uint64_t id, const struct wire_addr *from) {
  if (s->n_streams_in >= SWIM__MAX_INBOUND_STREAMS) {
    s->env.stream_close(s->env.ctx, id);
    return;
  }
  struct swim__stream *st = stream_new(SWIM__ST_INBOUND);
  if (st == NULL) {
    s->env.stream_close(s->env.ctx, id);
    return;
  }
  st->id = id;
  st->peer = *from;
  st->connected = 1;
  stream_link(s, st);
  s->stats.streams_in++;
  swim__timer_arm(s, &st->timer, swim__now(s) + s->cfg.tcp_timeout_ms);
}

void swim_on_stream_connected(struct swim *s, uint64_t id, int status) {
  struct swim__stream *st = find(s, id);
  if (st == NULL)
    return;
  if (status < 0) {
    outbound_failed(s, st);
    swim__stream_close(s, id);
    return;
  }
  st->connected = 1;
  int r = 0;
  if (st->kind == SWIM__ST_PUSH_PULL) {
    r = send_state(s, st, st->purpose != SWIM__PP_PERIODIC);
  } else if (st->kind == SWIM__ST_PING) {
    uint8_t buf[WIRE_NAME_MAX * 2 + 96];
    int n = swim__encode_ping(s, st->ping_seq, st->node, buf, sizeof buf);
    r = n > 0 ? swim__stream_send(s, st, buf, (size_t)n) : n;
  }
  if (r < 0) {
    outbound_failed(s, st);
    swim__stream_close(s, id);
  }
}

void swim_on_stream_closed(struct swim *s, uint64_t id, int err) {
  (void)err;
  struct swim__stream *st = find(s, id);
  if (st == NULL)
    return;
  if (st->kind == SWIM__ST_INBOUND && st->len > 0 && !st->done)
    s->stats.dropped_malformed++;
  outbound_failed(s, st);
  swim__stream_close(s, id);
}

/* Decompresses a stream's compress message; the result is a malloc'd
 * complete plain message. */
static int inflate_msg(const uint8_t *msg, size_t len, uint8_t **out, size_t *out_len) {
  size_t cap = 16 * len + 4096;
  for (;;) {
    if (cap > 2 * (size_t)WIRE_STREAM_MAX)
      return RM_ETOOBIG;
    uint8_t *buf = malloc(cap);
    if (buf == NULL)
      return -ENOMEM;
    int n = wire_decompress(msg + 1, len - 1, buf, cap);
    if (n == RM_ETOOBIG) {
      free(buf);
      cap *= 4;
      continue;
    }
    if (n < 0) {
      free(buf);
      return n;
    }
    struct swim__frame fr = {0};
    size_t mlen;
    if (n == 0 || buf[0] == WIRE_COMPRESS ||
        swim__frame(&fr, buf, (size_t)n, &mlen) != 1) {
      free(buf);
      return RM_EPARSE;
    }
    *out = buf;
    *out_len = mlen;
    return 0;
  }
}

/* One complete plain message arrived on st (which is done after this).
 * Returns 0 or an error: the caller counts it, answers err when inbound,
 * and closes. st may be gone on return (a TCP ping's ack closes it). */
static int handle_message(struct swim *s, struct swim__stream *st, const uint8_t *msg,
                          size_t len) {
  int type = msg[0];
  st->done = 1;
  switch (st->kind) {
  case SWIM__ST_PING: {
    struct wire_ack ack;
    if (type != WIRE_ACK || wire_decode_ack(msg + 1, len - 1, &ack) < 0)
      return RM_EPARSE;
    if (ack.seq_no == st->ping_seq)
      swim__on_ack(s, ack.seq_no); /* last: it closes st */
    return 0;
  }
  case SWIM__ST_PUSH_PULL: {
    int r = RM_EPARSE;
    if (type == WIRE_PUSH_PULL) {
      r = swim__push_pull_merge(s, msg, len, NULL);
    } else if (type == WIRE_ERR) {
      char why[256];
      if (wire_decode_err(msg + 1, len - 1, why, sizeof why) >= 0) {
        char a[64];
        LOG_D("swim %s: push/pull to %s answered with error: %s", s->cfg.name,
              swim__addr_str(&st->peer, a, sizeof a), why);
        r = -ECONNABORTED;
      }
    }
    swim__join_result(s, st->purpose, r == 0);
    return r == -ECONNABORTED ? 0 : r;
  }
  default: break;
  }
  switch (type) {
  case WIRE_PING: {
    struct wire_ping p;
    if (wire_decode_ping(msg + 1, len - 1, &p) < 0)
      return RM_EPARSE;
    if (p.node[0] != '\0' && strcmp(p.node, s->cfg.name) != 0)
      return 0; /* not for us: no answer, like memberlist */
    struct wire_ack ack;
    memset(&ack, 0, sizeof ack);
    ack.seq_no = p.seq_no;
    uint8_t buf[64];
    int n = wire_encode_ack(buf, sizeof buf, &ack);
    if (n > 0)
      swim__stream_send(s, st, buf, (size_t)n);
    return 0;
  }
  case WIRE_PUSH_PULL: return swim__push_pull_merge(s, msg, len, st);
  case WIRE_USER: {
    size_t used;
    uint64_t ulen;
    if (swim__mp_skip(msg + 1, len - 1, &used) != 1 ||
        user_msg_len(msg + 1, used, &ulen) < 0 || ulen > len - 1 - used)
      return RM_EPARSE;
    swim__serf_user_msg(s, msg + 1 + used, (size_t)ulen);
    return 0;
  }
  default: return RM_EPARSE;
  }
}

/* Tries to complete the message buffered on st and handle it. */
static void process(struct swim *s, struct swim__stream *st) {
  uint64_t id = st->id;
  int inbound = st->kind == SWIM__ST_INBOUND;
  struct wire_addr peer = st->peer;
  const uint8_t *msg;
  size_t mlen;
  uint8_t *plain = NULL, *inflated = NULL;
  int r;
  if (s->cfg.keyring) {
    if (st->buf[0] != WIRE_ENCRYPT) {
      r = RM_EAUTH; /* an encrypted cluster refuses plaintext */
      goto fail;
    }
    if (st->len < 5)
      return;
    uint32_t body = be32(st->buf + 1);
    if (body > WIRE_STREAM_MAX) {
      r = RM_ETOOBIG;
      goto fail;
    }
    if (st->len < 5 + (size_t)body)
      return;
    plain = malloc(body ? body : 1);
    if (plain == NULL) {
      r = -ENOMEM;
      goto fail;
    }
    int n = keyring_decrypt(s->cfg.keyring, st->buf + 5, body, st->buf, 5, plain, body);
    if (n < 0) {
      r = n == RM_EPARSE ? RM_EPARSE : RM_EAUTH;
      goto fail;
    }
    struct swim__frame fr = {0};
    if (swim__frame(&fr, plain, (size_t)n, &mlen) != 1) {
      r = RM_EPARSE;
      goto fail;
    }
    msg = plain;
  } else {
    if (st->buf[0] == WIRE_ENCRYPT) {
      r = RM_EAUTH; /* we hold no key to read it */
      goto fail;
    }
    r = swim__frame(&st->fr, st->buf, st->len, &mlen);
    if (r == 0)
      return;
    if (r < 0)
      goto fail;
    msg = st->buf;
  }
  if (msg[0] == WIRE_COMPRESS) {
    size_t ilen;
    if ((r = inflate_msg(msg, mlen, &inflated, &ilen)) < 0)
      goto fail;
    msg = inflated;
    mlen = ilen;
  }
  r = handle_message(s, st, msg, mlen);
  if (r < 0)
    goto fail;
  free(plain);
  free(inflated);
  swim__stream_close(s, id);
  return;
fail:
  free(plain);
  free(inflated);
  if (r == RM_EAUTH)
    s->stats.dropped_auth++;
  else if (r == RM_ETOOBIG)
    s->stats.dropped_oversize++;
  else if (r == -EPROTO)
    s->stats.push_pull_rejected++;
  else
    s->stats.dropped_malformed++;
  if (log_enabled(LOG_DEBUG)) {
    char a[64];
    LOG_D("swim %s: stream %s %s dropped: %s", s->cfg.name, inbound ? "from" : "to",
          swim__addr_str(&peer, a, sizeof a), rm_strerror(r));
  }
  st = find(s, id);
  if (st == NULL)
    return;
  if (inbound && r != -EPROTO)
    send_err(s, st, r == RM_EAUTH ? "message authentication failed" : rm_strerror(r));
  outbound_failed(s, st);
  swim__stream_close(s, id);
}

void swim_on_stream_data(struct swim *s, uint64_t id, const uint8_t *buf, size_t len) {
  struct swim__stream *st = find(s, id);
  if (st == NULL || st->done || len == 0)
    return;
  if (st->len + len > (size_t)WIRE_STREAM_MAX + 5) {
    s->stats.dropped_oversize++;
    if (st->kind == SWIM__ST_INBOUND)
      send_err(s, st, "message too large");
    outbound_failed(s, st);
    swim__stream_close(s, id);
    return;
  }
  if (st->len + len > st->cap) {
    size_t cap = st->cap ? st->cap : 4096;
    while (cap < st->len + len)
      cap *= 2;
    uint8_t *b = realloc(st->buf, cap);
    if (b == NULL) {
      outbound_failed(s, st);
      swim__stream_close(s, id);
      return;
    }
    st->buf = b;
    st->cap = cap;
  }
  memcpy(st->buf + st->len, buf, len);
  st->len += len;
  process(s, st);
}

int swim__stream_send_state(struct swim *s, struct swim__stream *st, int join) {
  return send_state(s, st, join);
}
