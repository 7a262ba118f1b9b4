/* wire.c - memberlist's messages, compound, CRC and compress wrappers, and
 * serf's tag metadata, in the exact bytes serf 0.9.4 (go-msgpack 0.5.5)
 * writes and the looser forms it accepts.
 *
 * Encoding goes through msgpack-c's packer with a write callback that fills
 * the caller's fixed buffer, so a message never touches the heap; maps use
 * Go's sorted key order and the old raw family (msgpack_pack_v4raw) for both
 * strings and byte slices, which makes our bytes identical to a Go peer's.
 *
 * Decoding is a hand-written cursor over (pos, end) rather than
 * msgpack_unpack_next: nothing from the network is allocated, every length
 * is checked against what is left before it is used (a map16 of 65535
 * entries or a str32 of 4 GiB in a 60-byte datagram fails at the header),
 * and values we do not know are skipped iteratively with a pending-item
 * counter, so nesting depth cannot exhaust the stack. Field rules follow the
 * Go decoder: keys in any order, unknown keys skipped, str/bin/nil for byte
 * fields, any integer encoding for a non-negative value within the field's
 * range.
 */
#include "wire.h"
#include "errors.h"

#include <msgpack.h>
#include <string.h>
#include <uv.h>

const char *wire_type_str(int type) {
  switch (type) {
  case WIRE_PING: return "ping";
  case WIRE_INDIRECT_PING: return "indirect-ping";
  case WIRE_ACK: return "ack";
  case WIRE_SUSPECT: return "suspect";
  case WIRE_ALIVE: return "alive";
  case WIRE_DEAD: return "dead";
  case WIRE_PUSH_PULL: return "push-pull";
  case WIRE_COMPOUND: return "compound";
  case WIRE_USER: return "user";
  case WIRE_COMPRESS: return "compress";
  case WIRE_ENCRYPT: return "encrypt";
  case WIRE_NACK: return "nack";
  case WIRE_HAS_CRC: return "has-crc";
  case WIRE_ERR: return "err";
  default: return "unknown";
  }
}

/* ---- CRC-32/IEEE (zlib's crc32: reflected, poly 0xedb88320, init and final
 * xor 0xffffffff). A const table rather than one built on first use: no
 * initialisation race between threads, and it costs 1 KiB of rodata. */
static const uint32_t crc_table[256] = {
    0x00000000u, 0x77073096u, 0xee0e612cu, 0x990951bau, 0x076dc419u, 0x706af48fu,
    0xe963a535u, 0x9e6495a3u, 0x0edb8832u, 0x79dcb8a4u, 0xe0d5e91eu, 0x97d2d988u,
    0x09b64c2bu, 0x7eb17cbdu, 0xe7b82d07u, 0x90bf1d91u, 0x1db71064u, 0x6ab020f2u,
    0xf3b97148u, 0x84be41deu, 0x1adad47du, 0x6ddde4ebu, 0xf4d4b551u, 0x83d385c7u,
    0x136c9856u, 0x646ba8c0u, 0xfd62f97au, 0x8a65c9ecu, 0x14015c4fu, 0x63066cd9u,
    0xfa0f3d63u, 0x8d080df5u, 0x3b6e20c8u, 0x4c69105eu, 0xd56041e4u, 0xa2677172u,
    0x3c03e4d1u, 0x4b04d447u, 0xd20d85fdu, 0xa50ab56bu, 0x35b5a8fau, 0x42b2986cu,
    0xdbbbc9d6u, 0xacbcf940u, 0x32d86ce3u, 0x45df5c75u, 0xdcd60dcfu, 0xabd13d59u,
    0x26d930acu, 0x51de003au, 0xc8d75180u, 0xbfd06116u, 0x21b4f4b5u, 0x56b3c423u,
    0xcfba9599u, 0xb8bda50fu, 0x2802b89eu, 0x5f058808u, 0xc60cd9b2u, 0xb10be924u,
    0x2f6f7c87u, 0x58684c11u, 0xc1611dabu, 0xb6662d3du, 0x76dc4190u, 0x01db7106u,
    0x98d220bcu, 0xefd5102au, 0x71b18589u, 0x06b6b51fu, 0x9fbfe4a5u, 0xe8b8d433u,
    0x7807c9a2u, 0x0f00f934u, 0x9609a88eu, 0xe10e9818u, 0x7f6a0dbbu, 0x086d3d2du,
    0x91646c97u, 0xe6635c01u, 0x6b6b51f4u, 0x1c6c6162u, 0x856530d8u, 0xf262004eu,
    0x6c0695edu, 0x1b01a57bu, 0x8208f4c1u, 0xf50fc457u, 0x65b0d9c6u, 0x12b7e950u,
    0x8bbeb8eau, 0xfcb9887cu, 0x62dd1ddfu, 0x15da2d49u, 0x8cd37cf3u, 0xfbd44c65u,
    0x4db26158u, 0x3ab551ceu, 0xa3bc0074u, 0xd4bb30e2u, 0x4adfa541u, 0x3dd895d7u,
    0xa4d1c46du, 0xd3d6f4fbu, 0x4369e96au, 0x346ed9fcu, 0xad678846u, 0xda60b8d0u,
    0x44042d73u, 0x33031de5u, 0xaa0a4c5fu, 0xdd0d7cc9u, 0x5005713cu, 0x270241aau,
    0xbe0b1010u, 0xc90c2086u, 0x5768b525u, 0x206f85b3u, 0xb966d409u, 0xce61e49fu,
    0x5edef90eu, 0x29d9c998u, 0xb0d09822u, 0xc7d7a8b4u, 0x59b33d17u, 0x2eb40d81u,
    0xb7bd5c3bu, 0xc0ba6cadu, 0xedb88320u, 0x9abfb3b6u, 0x03b6e20cu, 0x74b1d29au,
    0xead54739u, 0x9dd277afu, 0x04db2615u, 0x73dc1683u, 0xe3630b12u, 0x94643b84u,
    0x0d6d6a3eu, 0x7a6a5aa8u, 0xe40ecf0bu, 0x9309ff9du, 0x0a00ae27u, 0x7d079eb1u,
    0xf00f9344u, 0x8708a3d2u, 0x1e01f268u, 0x6906c2feu, 0xf762575du, 0x806567cbu,
    0x196c3671u, 0x6e6b06e7u, 0xfed41b76u, 0x89d32be0u, 0x10da7a5au, 0x67dd4accu,
    0xf9b9df6fu, 0x8ebeeff9u, 0x17b7be43u, 0x60b08ed5u, 0xd6d6a3e8u, 0xa1d1937eu,
    0x38d8c2c4u, 0x4fdff252u, 0xd1bb67f1u, 0xa6bc5767u, 0x3fb506ddu, 0x48b2364bu,
    0xd80d2bdau, 0xaf0a1b4cu, 0x36034af6u, 0x41047a60u, 0xdf60efc3u, 0xa867df55u,
    0x316e8eefu, 0x4669be79u, 0xcb61b38cu, 0xbc66831au, 0x256fd2a0u, 0x5268e236u,
    0xcc0c7795u, 0xbb0b4703u, 0x220216b9u, 0x5505262fu, 0xc5ba3bbeu, 0xb2bd0b28u,
    0x2bb45a92u, 0x5cb36a04u, 0xc2d7ffa7u, 0xb5d0cf31u, 0x2cd99e8bu, 0x5bdeae1du,
    0x9b64c2b0u, 0xec63f226u, 0x756aa39cu, 0x026d930au, 0x9c0906a9u, 0xeb0e363fu,
    0x72076785u, 0x05005713u, 0x95bf4a82u, 0xe2b87a14u, 0x7bb12baeu, 0x0cb61b38u,
    0x92d28e9bu, 0xe5d5be0du, 0x7cdcefb7u, 0x0bdbdf21u, 0x86d3d2d4u, 0xf1d4e242u,
    0x68ddb3f8u, 0x1fda836eu, 0x81be16cdu, 0xf6b9265bu, 0x6fb077e1u, 0x18b74777u,
    0x88085ae6u, 0xff0f6a70u, 0x66063bcau, 0x11010b5cu, 0x8f659effu, 0xf862ae69u,
    0x616bffd3u, 0x166ccf45u, 0xa00ae278u, 0xd70dd2eeu, 0x4e048354u, 0x3903b3c2u,
    0xa7672661u, 0xd06016f7u, 0x4969474du, 0x3e6e77dbu, 0xaed16a4au, 0xd9d65adcu,
    0x40df0b66u, 0x37d83bf0u, 0xa9bcae53u, 0xdebb9ec5u, 0x47b2cf7fu, 0x30b5ffe9u,
    0xbdbdf21cu, 0xcabac28au, 0x53b39330u, 0x24b4a3a6u, 0xbad03605u, 0xcdd70693u,
    0x54de5729u, 0x23d967bfu, 0xb3667a2eu, 0xc4614ab8u, 0x5d681b02u, 0x2a6f2b94u,
    0xb40bbe37u, 0xc30c8ea1u, 0x5a05df1bu, 0x2d02ef8du,
};

uint32_t wire_crc32(const uint8_t *p, size_t len) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < len; i++)
    c = crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

/* ---- output: a msgpack-c packer writing into the caller's buffer. An
 * overflow is remembered and reported once at the end, so encoders can
 * write straight through without checking every call. */

struct wbuf {
  uint8_t *p;
  size_t cap;
  size_t len;
  int overflow;
};

static int wbuf_write(void *data, const char *buf, size_t len) {
  struct wbuf *w = data;
  if (w->overflow || len > w->cap - w->len) {
    w->overflow = 1;
    return -1;
  }
  if (len) /* msgpack-c passes a NULL body with length 0 for empty raws */
    memcpy(w->p + w->len, buf, len);
  w->len += len;
  return 0;
}

static void wbuf_init(struct wbuf *w, msgpack_packer *pk, uint8_t *out, size_t cap) {
  w->p = out;
  w->cap = out ? cap : 0;
  w->len = 0;
  w->overflow = 0;
  msgpack_packer_init(pk, w, wbuf_write);
}

static void put_byte(struct wbuf *w, uint8_t b) {
  wbuf_write(w, (const char *)&b, 1);
}

static int wbuf_done(const struct wbuf *w) {
  if (w->overflow || w->len > INT32_MAX)
    return RM_ETOOBIG;
  return (int)w->len;
}

/* A Go string or []byte: the raw family (fixraw / raw16 / raw32). */
static void put_raw(msgpack_packer *pk, const void *p, size_t len) {
  msgpack_pack_v4raw(pk, len);
  msgpack_pack_v4raw_body(pk, p, len);
}

static void put_str(msgpack_packer *pk, const char *s) {
  put_raw(pk, s, strlen(s));
}

/* A []byte that is nil when empty: Go writes a nil slice as 0xc0, and every
 * byte field we leave empty (ack payload, no meta) is nil on the Go side. */
static void put_bytes(msgpack_packer *pk, const uint8_t *p, size_t len) {
  if (len == 0)
    msgpack_pack_nil(pk);
  else
    put_raw(pk, p, len);
}

static void put_uint(msgpack_packer *pk, uint64_t v) {
  msgpack_pack_uint64(pk, v); /* smallest form, as go-msgpack */
}

static int name_ok(const char *s) {
  return strnlen(s, WIRE_NAME_MAX + 1) <= WIRE_NAME_MAX;
}

static int addr_ok(const struct wire_addr *a) {
  return a->ip_len == 4 || a->ip_len == 16;
}

/* ---- input: a bounded msgpack cursor */

struct mp {
  const uint8_t *p;
  const uint8_t *start;
  const uint8_t *end;
};

enum mp_kind {
  MP_NIL,
  MP_BOOL,
  MP_UINT,
  MP_NEG,
  MP_FLOAT,
  MP_STR,
  MP_BIN,
  MP_ARRAY,
  MP_MAP,
  MP_EXT
};

struct mp_obj {
  int kind;
  uint64_t u;          /* UINT value, BOOL 0/1, ARRAY/MAP entry count */
  const uint8_t *data; /* STR/BIN/EXT payload, already consumed */
  size_t len;
};

static void mp_init(struct mp *c, const uint8_t *p, size_t len) {
  c->p = c->start = p;
  c->end = p ? p + len : p;
}

static size_t mp_left(const struct mp *c) {
  return (size_t)(c->end - c->p);
}

static uint64_t be(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++)
    v = v << 8 | p[i];
  return v;
}

/* Reads a big-endian integer of n bytes. */
static int mp_be(struct mp *c, int n, uint64_t *v) {
  if (mp_left(c) < (size_t)n)
    return RM_EPARSE;
  *v = be(c->p, n);
  c->p += n;
  return 0;
}

/* Consumes len payload bytes, refusing any length past the input's end: this
 * is the check that makes a 4 GiB str32 fail before anything is done. */
static int mp_take(struct mp *c, uint64_t len, struct mp_obj *o) {
  if (len > mp_left(c))
    return RM_EPARSE;
  o->data = c->p;
  o->len = (size_t)len;
  c->p += len;
  return 0;
}

/* One object header; scalars, strings and ext payloads are consumed,
 * arrays and maps report their count and leave their entries unread. */
static int mp_next(struct mp *c, struct mp_obj *o) {
  uint64_t v;
  int rc;
  if (c->p >= c->end)
    return RM_EPARSE;
  uint8_t b = *c->p++;
  o->u = 0;
  o->data = NULL;
  o->len = 0;
  if (b <= 0x7f) {
    o->kind = MP_UINT;
    o->u = b;
    return 0;
  }
  if (b >= 0xe0) {
    o->kind = MP_NEG;
    return 0;
  }
  if ((b & 0xf0) == 0x80 || (b & 0xf0) == 0x90) {
    o->kind = (b & 0xf0) == 0x80 ? MP_MAP : MP_ARRAY;
    o->u = b & 0x0f;
    return 0;
  }
  if ((b & 0xe0) == 0xa0) {
    o->kind = MP_STR;
    return mp_take(c, b & 0x1f, o);
  }
  switch (b) {
  case 0xc0: o->kind = MP_NIL; return 0;
  case 0xc2:
  case 0xc3:
    o->kind = MP_BOOL;
    o->u = b == 0xc3;
    return 0;
  case 0xc4:
  case 0xc5:
  case 0xc6:
    o->kind = MP_BIN;
    if ((rc = mp_be(c, 1 << (b - 0xc4), &v)) < 0)
      return rc;
    return mp_take(c, v, o);
  case 0xc7:
  case 0xc8:
  case 0xc9: /* ext: length, type byte, payload */
    o->kind = MP_EXT;
    if ((rc = mp_be(c, 1 << (b - 0xc7), &v)) < 0)
      return rc;
    if (v == UINT64_MAX || (rc = mp_take(c, v + 1, o)) < 0)
      return RM_EPARSE;
    return 0;
  case 0xca: o->kind = MP_FLOAT; return mp_take(c, 4, o);
  case 0xcb: o->kind = MP_FLOAT; return mp_take(c, 8, o);
  case 0xcc:
  case 0xcd:
  case 0xce:
  case 0xcf: o->kind = MP_UINT; return mp_be(c, 1 << (b - 0xcc), &o->u);
  case 0xd0:
  case 0xd1:
  case 0xd2:
  case 0xd3: {
    int n = 1 << (b - 0xd0);
    if ((rc = mp_be(c, n, &v)) < 0)
      return rc;
    if (v >> (8 * n - 1) & 1) { /* sign bit set: negative */
      o->kind = MP_NEG;
    } else {
      o->kind = MP_UINT;
      o->u = v;
    }
    return 0;
  }
  case 0xd4:
  case 0xd5:
  case 0xd6:
  case 0xd7:
  case 0xd8: /* fixext: type byte + 1..16 bytes */
    o->kind = MP_EXT;
    return mp_take(c, 1 + (1u << (b - 0xd4)), o);
  case 0xd9:
  case 0xda:
  case 0xdb:
    o->kind = MP_STR;
    if ((rc = mp_be(c, 1 << (b - 0xd9), &v)) < 0)
      return rc;
    return mp_take(c, v, o);
  case 0xdc:
  case 0xdd: o->kind = MP_ARRAY; return mp_be(c, b == 0xdc ? 2 : 4, &o->u);
  case 0xde:
  case 0xdf: o->kind = MP_MAP; return mp_be(c, b == 0xde ? 2 : 4, &o->u);
  default: return RM_EPARSE; /* 0xc1, never used */
  }
}

/* Skips one complete value. Iterative: `pending` counts the objects still
 * to read, and since every object takes at least one byte, more pending
 * objects than bytes left is malformed - which bounds the loop by the input
 * length and rejects huge announced counts at once. */
static int mp_skip(struct mp *c) {
  uint64_t pending = 1;
  while (pending) {
    struct mp_obj o;
    int rc = mp_next(c, &o);
    if (rc < 0)
      return rc;
    pending--;
    if (o.kind == MP_ARRAY)
      pending += o.u;
    else if (o.kind == MP_MAP)
      pending += 2 * o.u;
    if (pending > mp_left(c))
      return RM_EPARSE;
  }
  return 0;
}

/* A map header whose entries could fit in what is left (two bytes each at
 * least), so a map16 of 65535 entries in a short message fails here. */
static int mp_map(struct mp *c, uint32_t *n) {
  struct mp_obj o;
  int rc = mp_next(c, &o);
  if (rc < 0)
    return rc;
  if (o.kind != MP_MAP || o.u > mp_left(c) / 2)
    return RM_EPARSE;
  *n = (uint32_t)o.u;
  return 0;
}

/* A map key: Go struct field names are strings. */
static int mp_key(struct mp *c, struct mp_obj *k) {
  int rc = mp_next(c, k);
  if (rc < 0)
    return rc;
  return k->kind == MP_STR ? 0 : RM_EPARSE;
}

static int key_is(const struct mp_obj *k, const char *name) {
  size_t n = strlen(name);
  return k->len == n && memcmp(k->data, name, n) == 0;
}

static int mp_used(const struct mp *c) {
  size_t n = (size_t)(c->p - c->start);
  return n > INT32_MAX ? RM_ETOOBIG : (int)n;
}

/* Unsigned field: any integer encoding of a value in [0, max]; nil is the
 * zero value, as in Go. */
static int rd_uint(struct mp *c, uint64_t max, uint64_t *v) {
  struct mp_obj o;
  int rc = mp_next(c, &o);
  if (rc < 0)
    return rc;
  if (o.kind == MP_NIL) {
    *v = 0;
    return 0;
  }
  if (o.kind != MP_UINT || o.u > max)
    return RM_EPARSE;
  *v = o.u;
  return 0;
}

static int rd_u32(struct mp *c, uint32_t *v) {
  uint64_t x;
  int rc = rd_uint(c, UINT32_MAX, &x);
  if (rc == 0)
    *v = (uint32_t)x;
  return rc;
}

static int rd_u16(struct mp *c, uint16_t *v) {
  uint64_t x;
  int rc = rd_uint(c, UINT16_MAX, &x);
  if (rc == 0)
    *v = (uint16_t)x;
  return rc;
}

static int rd_bool(struct mp *c, int *v) {
  struct mp_obj o;
  int rc = mp_next(c, &o);
  if (rc < 0)
    return rc;
  if (o.kind != MP_BOOL && o.kind != MP_NIL)
    return RM_EPARSE;
  *v = (int)o.u;
  return 0;
}

/* []byte field: str, bin or nil. Past cap it is an error unless `truncate`
 * (the ack payload, which is opaque to us and only kept in part). */
static int rd_bytes(struct mp *c, uint8_t *dst, size_t cap, size_t *len, int truncate) {
  struct mp_obj o;
  int rc = mp_next(c, &o);
  if (rc < 0)
    return rc;
  if (o.kind != MP_STR && o.kind != MP_BIN && o.kind != MP_NIL)
    return RM_EPARSE;
  if (o.len > cap) {
    if (!truncate)
      return RM_EPARSE;
    o.len = cap;
  }
  if (o.len)
    memcpy(dst, o.data, o.len);
  *len = o.len;
  return 0;
}

/* string field holding a node name: str or nil (Go refuses bin for a
 * string), at most WIRE_NAME_MAX bytes, and no NUL, which would make two
 * different names compare equal once copied into a C string. */
static int rd_name(struct mp *c, char dst[WIRE_NAME_MAX + 1]) {
  struct mp_obj o;
  int rc = mp_next(c, &o);
  if (rc < 0)
    return rc;
  if (o.kind != MP_STR && o.kind != MP_NIL)
    return RM_EPARSE;
  if (o.len > WIRE_NAME_MAX || (o.len && memchr(o.data, 0, o.len)))
    return RM_EPARSE;
  if (o.len)
    memcpy(dst, o.data, o.len);
  dst[o.len] = '\0';
  return 0;
}

/* IP bytes: 4 or 16, or empty (absent). */
static int rd_ip(struct mp *c, struct wire_addr *a) {
  size_t n;
  int rc = rd_bytes(c, a->ip, sizeof a->ip, &n, 0);
  if (rc < 0)
    return rc;
  if (n != 0 && n != 4 && n != 16)
    return RM_EPARSE;
  a->ip_len = (uint8_t)n;
  return 0;
}

static int rd_vsn(struct mp *c, uint8_t vsn[WIRE_VSN_LEN], int *vsn_len) {
  uint8_t tmp[WIRE_VSN_LEN];
  size_t n;
  int rc = rd_bytes(c, tmp, sizeof tmp, &n, 0);
  if (rc < 0)
    return rc;
  if (n != 0 && n != WIRE_VSN_LEN)
    return RM_EPARSE;
  memcpy(vsn, tmp, n);
  *vsn_len = (int)n;
  return 0;
}

/* ---- ping (0) */

int wire_encode_ping(uint8_t *out, size_t cap, const struct wire_ping *m) {
  struct wbuf w;
  msgpack_packer pk;
  int src_addr = 0, src_node = 0, src_port = 0;
  if (!name_ok(m->node) || (m->has_source && !name_ok(m->source_node)))
    return UV_EINVAL;
  if (m->has_source) {
    if (m->source.ip_len != 0 && !addr_ok(&m->source))
      return UV_EINVAL;
    src_addr = m->source.ip_len != 0;
    src_node = m->source_node[0] != '\0';
    src_port = m->source.port != 0;
  }
  wbuf_init(&w, &pk, out, cap);
  put_byte(&w, WIRE_PING);
  msgpack_pack_map(&pk, 2 + src_addr + src_node + src_port);
  put_str(&pk, "Node");
  put_str(&pk, m->node);
  put_str(&pk, "SeqNo");
  put_uint(&pk, m->seq_no);
  if (src_addr) {
    put_str(&pk, "SourceAddr");
    put_raw(&pk, m->source.ip, m->source.ip_len);
  }
  if (src_node) {
    put_str(&pk, "SourceNode");
    put_str(&pk, m->source_node);
  }
  if (src_port) {
    put_str(&pk, "SourcePort");
    put_uint(&pk, m->source.port);
  }
  return wbuf_done(&w);
}

int wire_decode_ping(const uint8_t *p, size_t len, struct wire_ping *m) {
  struct mp c;
  struct mp_obj k;
  uint32_t n;
  int rc;
  memset(m, 0, sizeof *m);
  mp_init(&c, p, len);
  if ((rc = mp_map(&c, &n)) < 0)
    return rc;
  while (n--) {
    if ((rc = mp_key(&c, &k)) < 0)
      return rc;
    if (key_is(&k, "Node"))
      rc = rd_name(&c, m->node);
    else if (key_is(&k, "SeqNo"))
      rc = rd_u32(&c, &m->seq_no);
    else if (key_is(&k, "SourceAddr"))
      rc = rd_ip(&c, &m->source);
    else if (key_is(&k, "SourceNode"))
      rc = rd_name(&c, m->source_node);
    else if (key_is(&k, "SourcePort"))
      rc = rd_u16(&c, &m->source.port);
    else
      rc = mp_skip(&c);
    if (rc < 0)
      return rc;
  }
  m->has_source = m->source.ip_len != 0 || m->source.port != 0 || m->source_node[0];
  return mp_used(&c);
}

/* ---- indirect ping (1) */

int wire_encode_indirect_ping(uint8_t *out, size_t cap,
                              const struct wire_indirect_ping *m) {
  struct wbuf w;
  msgpack_packer pk;
  int src_addr = 0, src_node = 0, src_port = 0;
  if (!name_ok(m->node) || !addr_ok(&m->target) ||
      (m->has_source && !name_ok(m->source_node)))
    return UV_EINVAL;
  if (m->has_source) {
    if (m->source.ip_len != 0 && !addr_ok(&m->source))
      return UV_EINVAL;
    src_addr = m->source.ip_len != 0;
    src_node = m->source_node[0] != '\0';
    src_port = m->source.port != 0;
  }
  wbuf_init(&w, &pk, out, cap);
  put_byte(&w, WIRE_INDIRECT_PING);
  msgpack_pack_map(&pk, 5 + src_addr + src_node + src_port);
  put_str(&pk, "Nack");
  if (m->nack)
    msgpack_pack_true(&pk);
  else
    msgpack_pack_false(&pk);
  put_str(&pk, "Node");
  put_str(&pk, m->node);
  put_str(&pk, "Port");
  put_uint(&pk, m->target.port);
  put_str(&pk, "SeqNo");
  put_uint(&pk, m->seq_no);
  if (src_addr) {
    put_str(&pk, "SourceAddr");
    put_raw(&pk, m->source.ip, m->source.ip_len);
  }
  if (src_node) {
    put_str(&pk, "SourceNode");
    put_str(&pk, m->source_node);
  }
  if (src_port) {
    put_str(&pk, "SourcePort");
    put_uint(&pk, m->source.port);
  }
  put_str(&pk, "Target");
  put_raw(&pk, m->target.ip, m->target.ip_len);
  return wbuf_done(&w);
}

int wire_decode_indirect_ping(const uint8_t *p, size_t len,
                              struct wire_indirect_ping *m) {
  struct mp c;
  struct mp_obj k;
  uint32_t n;
  int rc;
  memset(m, 0, sizeof *m);
  mp_init(&c, p, len);
  if ((rc = mp_map(&c, &n)) < 0)
    return rc;
  while (n--) {
    if ((rc = mp_key(&c, &k)) < 0)
      return rc;
    if (key_is(&k, "Nack"))
      rc = rd_bool(&c, &m->nack);
    else if (key_is(&k, "Node"))
      rc = rd_name(&c, m->node);
    else if (key_is(&k, "Port"))
      rc = rd_u16(&c, &m->target.port);
    else if (key_is(&k, "SeqNo"))
      rc = rd_u32(&c, &m->seq_no);
    else if (key_is(&k, "SourceAddr"))
      rc = rd_ip(&c, &m->source);
    else if (key_is(&k, "SourceNode"))
      rc = rd_name(&c, m->source_node);
    else if (key_is(&k, "SourcePort"))
      rc = rd_u16(&c, &m->source.port);
    else if (key_is(&k, "Target"))
      rc = rd_ip(&c, &m->target);
    else
      rc = mp_skip(&c);
    if (rc < 0)
      return rc;
  }
  /* without a target address there is nothing to probe */
  if (!addr_ok(&m->target))
    return RM_EPARSE;
  m->has_source = m->source.ip_len != 0 || m->source.port != 0 || m->source_node[0];
  return mp_used(&c);
}

/* ---- ack (2), nack (11) */

int wire_encode_ack(uint8_t *out, size_t cap, const struct wire_ack *m) {
  struct wbuf w;
  msgpack_packer pk;
  if (m->payload_len > WIRE_PAYLOAD_MAX)
    return UV_EINVAL;
  wbuf_init(&w, &pk, out, cap);
  put_byte(&w, WIRE_ACK);
  msgpack_pack_map(&pk, 2);
  put_str(&pk, "Payload");
  put_bytes(&pk, m->payload, m->payload_len);
  put_str(&pk, "SeqNo");
  put_uint(&pk, m->seq_no);
  return wbuf_done(&w);
}

int wire_decode_ack(const uint8_t *p, size_t len, struct wire_ack *m) {
  struct mp c;
  struct mp_obj k;
  uint32_t n;
  int rc;
  m->seq_no = 0;
  m->payload_len = 0;
  mp_init(&c, p, len);
  if ((rc = mp_map(&c, &n)) < 0)
    return rc;
  while (n--) {
    if ((rc = mp_key(&c, &k)) < 0)
      return rc;
    if (key_is(&k, "Payload"))
      rc = rd_bytes(&c, m->payload, sizeof m->payload, &m->payload_len, 1);
    else if (key_is(&k, "SeqNo"))
      rc = rd_u32(&c, &m->seq_no);
    else
      rc = mp_skip(&c);
    if (rc < 0)
      return rc;
  }
  return mp_used(&c);
}

int wire_encode_nack(uint8_t *out, size_t cap, const struct wire_nack *m) {
  struct wbuf w;
  msgpack_packer pk;
  wbuf_init(&w, &pk, out, cap);
  put_byte(&w, WIRE_NACK);
  msgpack_pack_map(&pk, 1);
  put_str(&pk, "SeqNo");
  put_uint(&pk, m->seq_no);
  return wbuf_done(&w);
}

int wire_decode_nack(const uint8_t *p, size_t len, struct wire_nack *m) {
  struct mp c;
  struct mp_obj k;
  uint32_t n;
  int rc;
  m->seq_no = 0;
  mp_init(&c, p, len);
  if ((rc = mp_map(&c, &n)) < 0)
    return rc;
  while (n--) {
    if ((rc = mp_key(&c, &k)) < 0)
      return rc;
    if (key_is(&k, "SeqNo"))
      rc = rd_u32(&c, &m->seq_no);
    else
      rc = mp_skip(&c);
    if (rc < 0)
      return rc;
  }
  return mp_used(&c);
}

/* ---- suspect (3), dead (5): {From, Incarnation, Node} */

static int encode_accusation(uint8_t *out, size_t cap, int type,
                             const struct wire_suspect *m) {
  struct wbuf w;
  msgpack_packer pk;
  if (!name_ok(m->node) || !name_ok(m->from))
    return UV_EINVAL;
  wbuf_init(&w, &pk, out, cap);
  put_byte(&w, (uint8_t)type);
  msgpack_pack_map(&pk, 3);
  put_str(&pk, "From");
  put_str(&pk, m->from);
  put_str(&pk, "Incarnation");
  put_uint(&pk, m->incarnation);
  put_str(&pk, "Node");
  put_str(&pk, m->node);
  return wbuf_done(&w);
}

static int decode_accusation(const uint8_t *p, size_t len, struct wire_suspect *m) {
  struct mp c;
  struct mp_obj k;
  uint32_t n;
  int rc;
  memset(m, 0, sizeof *m);
  mp_init(&c, p, len);
  if ((rc = mp_map(&c, &n)) < 0)
    return rc;
  while (n--) {
    if ((rc = mp_key(&c, &k)) < 0)
      return rc;
    if (key_is(&k, "From"))
      rc = rd_name(&c, m->from);
    else if (key_is(&k, "Incarnation"))
      rc = rd_u32(&c, &m->incarnation);
    else if (key_is(&k, "Node"))
      rc = rd_name(&c, m->node);
    else
      rc = mp_skip(&c);
    if (rc < 0)
      return rc;
  }
  return mp_used(&c);
}

int wire_encode_suspect(uint8_t *out, size_t cap, const struct wire_suspect *m) {
  return encode_accusation(out, cap, WIRE_SUSPECT, m);
}

int wire_encode_dead(uint8_t *out, size_t cap, const struct wire_suspect *m) {
  return encode_accusation(out, cap, WIRE_DEAD, m);
}

int wire_decode_suspect(const uint8_t *p, size_t len, struct wire_suspect *m) {
  return decode_accusation(p, len, m);
}

int wire_decode_dead(const uint8_t *p, size_t len, struct wire_suspect *m) {
  return decode_accusation(p, len, m);
}

/* ---- alive (4) and pushNodeState: the same fields, except that the name's
 * key is "Node" in alive and "Name" in a push/pull entry, and the entry
 * carries State. Both are encoded and decoded by one pair of functions. */

struct node_fields {
  char *name;
  struct wire_addr *addr;
  uint32_t *incarnation;
  int *state; /* NULL for alive */
  uint8_t *meta;
  size_t *meta_len;
  uint8_t *vsn;
  int *vsn_len;
};

/* state < 0: an alive (key "Node", no State); else a push/pull entry. */
static int encode_node(struct wbuf *w, msgpack_packer *pk, const char *name,
                       const struct wire_addr *addr, uint32_t incarnation, int state,
                       const uint8_t *meta, size_t meta_len, const uint8_t *vsn,
                       int vsn_len) {
  if (!name_ok(name) || !addr_ok(addr) || meta_len > WIRE_META_MAX ||
      (vsn_len != 0 && vsn_len != WIRE_VSN_LEN))
    return UV_EINVAL;
  msgpack_pack_map(pk, state >= 0 ? 7 : 6);
  put_str(pk, "Addr");
  put_raw(pk, addr->ip, addr->ip_len);
  put_str(pk, "Incarnation");
  put_uint(pk, incarnation);
  put_str(pk, "Meta");
  put_bytes(pk, meta, meta_len);
  put_str(pk, state >= 0 ? "Name" : "Node");
  put_str(pk, name);
  put_str(pk, "Port");
  put_uint(pk, addr->port);
  if (state >= 0) {
    put_str(pk, "State");
    put_uint(pk, (uint64_t)state);
  }
  put_str(pk, "Vsn");
  put_bytes(pk, vsn, (size_t)vsn_len);
  return wbuf_done(w);
}

static int decode_node(const uint8_t *p, size_t len, const struct node_fields *f) {
  struct mp c;
  struct mp_obj k;
  uint32_t n;
  uint64_t state;
  int rc;
  mp_init(&c, p, len);
  if ((rc = mp_map(&c, &n)) < 0)
    return rc;
  while (n--) {
    if ((rc = mp_key(&c, &k)) < 0)
      return rc;
    if (key_is(&k, "Addr"))
      rc = rd_ip(&c, f->addr);
    else if (key_is(&k, "Incarnation"))
      rc = rd_u32(&c, f->incarnation);
    else if (key_is(&k, "Meta"))
      rc = rd_bytes(&c, f->meta, WIRE_META_MAX, f->meta_len, 0);
    else if (key_is(&k, f->state ? "Name" : "Node"))
      rc = rd_name(&c, f->name);
    else if (key_is(&k, "Port"))
      rc = rd_u16(&c, &f->addr->port);
    else if (f->state && key_is(&k, "State")) {
      /* a Go int; kept as is up to 255 so a state added later reaches the
       * caller, which ignores what it does not know (as memberlist does) */
      if ((rc = rd_uint(&c, 255, &state)) == 0)
        *f->state = (int)state;
    } else if (key_is(&k, "Vsn"))
      rc = rd_vsn(&c, f->vsn, f->vsn_len);
    else
      rc = mp_skip(&c);
    if (rc < 0)
      return rc;
  }
  if (!addr_ok(f->addr))
    return RM_EPARSE;
  return mp_used(&c);
}

int wire_encode_alive(uint8_t *out, size_t cap, const struct wire_alive *m) {
  struct wbuf w;
  msgpack_packer pk;
  wbuf_init(&w, &pk, out, cap);
  put_byte(&w, WIRE_ALIVE);
  return encode_node(&w, &pk, m->node, &m->addr, m->incarnation, -1, m->meta, m->meta_len,
                     m->vsn, m->vsn_len);
}

int wire_decode_alive(const uint8_t *p, size_t len, struct wire_alive *m) {
  struct node_fields f = {m->node, &m->addr,     &m->incarnation, NULL,
                          m->meta, &m->meta_len, m->vsn,          &m->vsn_len};
  memset(m, 0, sizeof *m);
  return decode_node(p, len, &f);
}

int wire_encode_push_node(uint8_t *out, size_t cap, const struct wire_push_node *n) {
  struct wbuf w;
  msgpack_packer pk;
  if (n->state < 0)
    return UV_EINVAL;
  wbuf_init(&w, &pk, out, cap);
  return encode_node(&w, &pk, n->name, &n->addr, n->incarnation, n->state, n->meta,
                     n->meta_len, n->vsn, n->vsn_len);
}

int wire_decode_push_node(const uint8_t *p, size_t len, struct wire_push_node *n) {
  struct node_fields f = {n->name, &n->addr,     &n->incarnation, &n->state,
                          n->meta, &n->meta_len, n->vsn,          &n->vsn_len};
  memset(n, 0, sizeof *n);
  return decode_node(p, len, &f);
}

/* ---- push/pull header (6), user (8), err (13) */

int wire_encode_push_pull_header(uint8_t *out, size_t cap,
                                 const struct wire_push_pull_header *h) {
  struct wbuf w;
  msgpack_packer pk;
  wbuf_init(&w, &pk, out, cap);
  put_byte(&w, WIRE_PUSH_PULL);
  msgpack_pack_map(&pk, 3);
  put_str(&pk, "Join");
  if (h->join)
    msgpack_pack_true(&pk);
  else
    msgpack_pack_false(&pk);
  put_str(&pk, "Nodes");
  put_uint(&pk, h->nodes);
  put_str(&pk, "UserStateLen");
  put_uint(&pk, h->user_state_len);
  return wbuf_done(&w);
}

int wire_decode_push_pull_header(const uint8_t *p, size_t len,
                                 struct wire_push_pull_header *h) {
  struct mp c;
  struct mp_obj k;
  uint32_t n;
  int rc;
  memset(h, 0, sizeof *h);
  mp_init(&c, p, len);
  if ((rc = mp_map(&c, &n)) < 0)
    return rc;
  while (n--) {
    if ((rc = mp_key(&c, &k)) < 0)
      return rc;
    if (key_is(&k, "Join"))
      rc = rd_bool(&c, &h->join);
    else if (key_is(&k, "Nodes"))
      rc = rd_u32(&c, &h->nodes);
    else if (key_is(&k, "UserStateLen"))
      rc = rd_u32(&c, &h->user_state_len);
    else
      rc = mp_skip(&c);
    if (rc < 0)
      return rc;
  }
  return mp_used(&c);
}

int wire_encode_user(uint8_t *out, size_t cap, const uint8_t *payload, size_t len) {
  if (!out || len >= cap || len >= INT32_MAX)
    return RM_ETOOBIG;
  out[0] = WIRE_USER;
  if (len)
    memcpy(out + 1, payload, len);
  return (int)len + 1;
}

int wire_encode_err(uint8_t *out, size_t cap, const char *msg) {
  struct wbuf w;
  msgpack_packer pk;
  wbuf_init(&w, &pk, out, cap);
  put_byte(&w, WIRE_ERR);
  msgpack_pack_map(&pk, 1);
  put_str(&pk, "Error");
  put_str(&pk, msg ? msg : "");
  return wbuf_done(&w);
}

int wire_decode_err(const uint8_t *p, size_t len, char *msg, size_t msglen) {
  struct mp c;
  struct mp_obj k, v;
  uint32_t n;
  int rc;
  if (msg && msglen)
    msg[0] = '\0';
  mp_init(&c, p, len);
  if ((rc = mp_map(&c, &n)) < 0)
    return rc;
  while (n--) {
    if ((rc = mp_key(&c, &k)) < 0)
      return rc;
    if (key_is(&k, "Error")) {
      if ((rc = mp_next(&c, &v)) < 0)
        return rc;
      if (v.kind != MP_STR && v.kind != MP_NIL)
        return RM_EPARSE;
      if (msg && msglen) { /* free text for a log line: truncated to fit */
        size_t m = v.len < msglen - 1 ? v.len : msglen - 1;
        if (m)
          memcpy(msg, v.data, m);
        msg[m] = '\0';
      }
    } else if ((rc = mp_skip(&c)) < 0) {
      return rc;
    }
  }
  return mp_used(&c);
}

/* ---- compound (7) */

int wire_compound_encode(uint8_t *out, size_t cap, const uint8_t *const *parts,
                         const size_t *lens, size_t n) {
  /* memberlist 0.2.2 computes n*2 in 8 bits and reads a part's type byte
   * unchecked, so 0, 128+ parts or an empty part would break a Go peer */
  size_t total = 2 + 2 * n;
  if (n == 0 || n > WIRE_COMPOUND_MAX_SEND)
    return UV_EINVAL;
  for (size_t i = 0; i < n; i++) {
    if (lens[i] == 0 || lens[i] > UINT16_MAX)
      return UV_EINVAL;
    total += lens[i];
  }
  if (!out || total > cap || total > INT32_MAX)
    return RM_ETOOBIG;
  uint8_t *o = out;
  *o++ = WIRE_COMPOUND;
  *o++ = (uint8_t)n;
  for (size_t i = 0; i < n; i++) {
    *o++ = (uint8_t)(lens[i] >> 8);
    *o++ = (uint8_t)lens[i];
  }
  for (size_t i = 0; i < n; i++) {
    memcpy(o, parts[i], lens[i]);
    o += lens[i];
  }
  return (int)total;
}

int wire_compound_decode(const uint8_t *p, size_t len, const uint8_t **parts,
                         size_t *lens, size_t max, size_t *truncated) {
  size_t n, off, got = 0;
  if (truncated)
    *truncated = 0;
  if (len < 1)
    return RM_EPARSE;
  n = p[0];
  if (len < 1 + 2 * n) /* the length table itself is cut: memberlist drops it */
    return RM_EPARSE;
  off = 1 + 2 * n;
  for (size_t i = 0; i < n; i++) {
    size_t l = (size_t)p[1 + 2 * i] << 8 | p[2 + 2 * i];
    if (l > len - off || got == max) {
      if (truncated)
        *truncated = n - i;
      break;
    }
    if (l > 0) { /* an empty part carries no message: not handed on */
      parts[got] = p + off;
      lens[got] = l;
      got++;
    }
    off += l;
  }
  return (int)got;
}

/* ---- CRC wrapper (12) */

int wire_crc_wrap(uint8_t *out, size_t cap, const uint8_t *inner, size_t len) {
  if (!out || cap < 5 || len > cap - 5 || len > INT32_MAX - 5)
    return RM_ETOOBIG;
  uint32_t crc = wire_crc32(inner, len);
  if (len)
    memmove(out + 5, inner, len); /* inner may already sit at out + 5 */
  out[0] = WIRE_HAS_CRC;
  out[1] = (uint8_t)(crc >> 24);
  out[2] = (uint8_t)(crc >> 16);
  out[3] = (uint8_t)(crc >> 8);
  out[4] = (uint8_t)crc;
  return (int)len + 5;
}

int wire_crc_unwrap(const uint8_t *buf, size_t len, const uint8_t **inner,
                    size_t *inner_len) {
  /* memberlist only treats it as a wrapper from 5 bytes on; a shorter
   * message starting with 12 goes on as is (and is dropped as unknown) */
  if (len >= 5 && buf[0] == WIRE_HAS_CRC) {
    if ((uint32_t)be(buf + 1, 4) != wire_crc32(buf + 5, len - 5))
      return RM_EPARSE;
    *inner = buf + 5;
    *inner_len = len - 5;
    return 0;
  }
  *inner = buf;
  *inner_len = len;
  return 0;
}

/* ---- compress (9): [9][{Algo: 0, Buf: <LZW>}] */

/* Bytes before Buf's raw header: 9, fixmap 2, "Algo", 0, "Buf". */
#define COMPRESS_PREFIX 12
#define COMPRESS_HEAD_MAX (COMPRESS_PREFIX + 5)

int wire_compress(uint8_t *out, size_t cap, const uint8_t *inner, size_t len) {
  uint8_t head[COMPRESS_HEAD_MAX];
  struct wbuf w;
  msgpack_packer pk;
  int n, h;
  if (len == 0) /* an empty payload would make a 0.2.2 receiver panic */
    return UV_EINVAL;
  if (!out || cap <= COMPRESS_HEAD_MAX)
    return RM_ETOOBIG;
  /* compress behind the largest header, then close the gap once the
   * length (and so the raw header's size class) is known */
  n = wire_lzw_encode(inner, len, out + COMPRESS_HEAD_MAX, cap - COMPRESS_HEAD_MAX);
  if (n < 0)
    return n;
  wbuf_init(&w, &pk, head, sizeof head);
  put_byte(&w, WIRE_COMPRESS);
  msgpack_pack_map(&pk, 2);
  put_str(&pk, "Algo");
  put_uint(&pk, 0);
  put_str(&pk, "Buf");
  msgpack_pack_v4raw(&pk, (size_t)n);
  if ((h = wbuf_done(&w)) < 0)
    return h;
  memmove(out + h, out + COMPRESS_HEAD_MAX, (size_t)n);
  memcpy(out, head, (size_t)h);
  return h + n;
}

int wire_decompress(const uint8_t *p, size_t len, uint8_t *out, size_t cap) {
  struct mp c;
  struct mp_obj k;
  const uint8_t *buf = NULL;
  size_t buf_len = 0;
  uint64_t algo = 0;
  uint32_t n;
  int rc;
  mp_init(&c, p, len);
  if ((rc = mp_map(&c, &n)) < 0)
    return rc;
  while (n--) {
    if ((rc = mp_key(&c, &k)) < 0)
      return rc;
    if (key_is(&k, "Algo")) {
      rc = rd_uint(&c, UINT8_MAX, &algo);
    } else if (key_is(&k, "Buf")) {
      struct mp_obj v;
      if ((rc = mp_next(&c, &v)) == 0) {
        if (v.kind != MP_STR && v.kind != MP_BIN && v.kind != MP_NIL)
          return RM_EPARSE;
        buf = v.data;
        buf_len = v.len;
      }
    } else {
      rc = mp_skip(&c);
    }
    if (rc < 0)
      return rc;
  }
  if (algo != 0 || !buf)
    return RM_EPARSE;
  rc = wire_lzw_decode(buf, buf_len, out, cap);
  /* an empty result is no message; 0.2.2 would panic reading its type */
  return rc == 0 ? RM_EPARSE : rc;
}

/* ---- serf tags: 0xff then a msgpack map string -> string */

int wire_tags_encode(uint8_t *out, size_t cap, const char *const *keys,
                     const char *const *values, size_t n) {
  struct wbuf w;
  msgpack_packer pk;
  if (n > UINT16_MAX || (n && (!keys || !values)))
    return UV_EINVAL;
  for (size_t i = 0; i < n; i++)
    if (!keys[i] || !values[i])
      return UV_EINVAL;
  /* memberlist refuses meta over 512 bytes, whatever room the caller has */
  wbuf_init(&w, &pk, out, cap < WIRE_META_MAX ? cap : WIRE_META_MAX);
  put_byte(&w, 0xff);
  msgpack_pack_map(&pk, n);
  for (size_t i = 0; i < n; i++) {
    put_str(&pk, keys[i]);
    put_str(&pk, values[i]);
  }
  return wbuf_done(&w);
}

static int copy_tag(const uint8_t *p, size_t len, char *value, size_t vlen) {
  if (len && memchr(p, 0, len))
    return RM_EPARSE;
  if (!value || len >= vlen)
    return RM_ETOOBIG;
  if (len)
    memcpy(value, p, len);
  value[len] = '\0';
  return 1;
}

int wire_tags_get(const uint8_t *meta, size_t len, const char *key, char *value,
                  size_t vlen) {
  struct mp c;
  struct mp_obj k, v;
  uint32_t n;
  int rc;
  if (!key)
    return UV_EINVAL;
  if (!meta || len == 0)
    return 0;
  if (meta[0] != 0xff) /* serf's pre-tags form: the whole meta is the role */
    return strcmp(key, "role") == 0 ? copy_tag(meta, len, value, vlen) : 0;
  mp_init(&c, meta + 1, len - 1);
  if ((rc = mp_map(&c, &n)) < 0)
    return rc;
  while (n--) {
    if ((rc = mp_key(&c, &k)) < 0 || (rc = mp_next(&c, &v)) < 0)
      return rc;
    if (v.kind != MP_STR && v.kind != MP_NIL) /* serf wants map[string]string */
      return RM_EPARSE;
    if (key_is(&k, key))
      return copy_tag(v.data, v.len, value, vlen);
  }
  return 0;
}
