/* wire.h - memberlist's wire format (what serf 0.9.4 speaks), as C structs
 * with encoders and decoders. See ../shared/docs/memberlist-wire.md.
 *
 * Layers, inner to outer, on UDP:
 *
 *   [type][msgpack body]                      one message
 *   [7][N][len1:u16]..[lenN:u16][m1]..[mN]    compound (N <= 127 when sent)
 *   [9][msgpack {Algo: 0, Buf: <LZW>}]        compressed (decode only)
 *   [12][crc32:u32 BE][inner]                 CRC wrapper
 *   [vsn][nonce:12][ciphertext][tag:16]       AES-GCM (keyring.h), no type byte
 *
 * and on TCP: [type][msgpack][raw tail], optionally compressed, and when
 * encrypted [10][len:u32 BE][vsn][nonce][ciphertext][tag] with the 5 header
 * bytes as additional data.
 *
 * Decoders take (pointer, length), never read past it, accept map keys in
 * any order, skip unknown keys, take str/bin/nil for byte fields, and return
 * RM_EPARSE on anything malformed (including names over WIRE_NAME_MAX or
 * holding a NUL byte, IPs other than 4 or 16 bytes, Vsn other than 0 or 6).
 * Decoded strings and byte fields point into a caller-provided scratch area
 * or are copied into the fixed-size fields below, so a decoded message owns
 * no heap memory.
 */
#ifndef REGMESH_GOSSIP_WIRE_H
#define REGMESH_GOSSIP_WIRE_H

#include <stddef.h>
#include <stdint.h>

enum wire_type {
  WIRE_PING = 0,
  WIRE_INDIRECT_PING = 1,
  WIRE_ACK = 2,
  WIRE_SUSPECT = 3,
  WIRE_ALIVE = 4,
  WIRE_DEAD = 5,
  WIRE_PUSH_PULL = 6,
  WIRE_COMPOUND = 7,
  WIRE_USER = 8,
  WIRE_COMPRESS = 9,
  WIRE_ENCRYPT = 10,
  WIRE_NACK = 11,
  WIRE_HAS_CRC = 12,
  WIRE_ERR = 13,
};
const char *wire_type_str(int type);

#define WIRE_NAME_MAX 128   /* node names we accept */
#define WIRE_META_MAX 512   /* memberlist's MetaMaxSize */
#define WIRE_ADDR_MAX 16    /* IPv4 (4) or IPv6 / mapped (16) */
#define WIRE_VSN_LEN 6
#define WIRE_PAYLOAD_MAX 1024 /* ack payload we keep (serf's coordinate ~140 B) */
#define WIRE_UDP_MAX 65536
#define WIRE_COMPOUND_MAX_SEND 127
#define WIRE_STREAM_MAX (20u << 20) /* memberlist's cap on encrypted streams */

struct wire_addr {
  uint8_t ip[WIRE_ADDR_MAX];
  uint8_t ip_len; /* 4 or 16 */
  uint16_t port;
};

struct wire_ping {
  uint32_t seq_no;
  char node[WIRE_NAME_MAX + 1];        /* intended target */
  int has_source;                      /* Source* fields present */
  struct wire_addr source;             /* SourceAddr + SourcePort */
  char source_node[WIRE_NAME_MAX + 1];
  /* Encoded: with has_source, each non-empty Source* field (Go's
   * omitempty). Decoded: has_source when any Source* field is non-empty;
   * memberlist answers to source only when ip_len and port are both set. */
};

struct wire_indirect_ping {
  uint32_t seq_no;
  struct wire_addr target;             /* Target + Port */
  char node[WIRE_NAME_MAX + 1];
  int nack;
  int has_source;
  struct wire_addr source;
  char source_node[WIRE_NAME_MAX + 1];
};

struct wire_ack {
  uint32_t seq_no;
  uint8_t payload[WIRE_PAYLOAD_MAX];
  size_t payload_len; /* longer payloads are truncated on decode (opaque to us) */
};

struct wire_nack {
  uint32_t seq_no;
};

/* suspect and dead share a shape */
struct wire_suspect {
  uint32_t incarnation;
  char node[WIRE_NAME_MAX + 1];
  char from[WIRE_NAME_MAX + 1];
};

struct wire_alive {
  uint32_t incarnation;
  char node[WIRE_NAME_MAX + 1];
  struct wire_addr addr;               /* Addr + Port */
  uint8_t meta[WIRE_META_MAX];
  size_t meta_len;
  uint8_t vsn[WIRE_VSN_LEN];
  int vsn_len;                         /* as received: 0 or 6 accepted */
};

/* pushNodeState: the key is "Name" here, "Node" in alive. A State above 3
 * (up to 255) is passed through as is: callers ignore states they do not
 * know, as memberlist does. */
enum wire_state { WIRE_STATE_ALIVE = 0, WIRE_STATE_SUSPECT = 1, WIRE_STATE_DEAD = 2,
                  WIRE_STATE_LEFT = 3 };

struct wire_push_node {
  char name[WIRE_NAME_MAX + 1];
  struct wire_addr addr;
  uint32_t incarnation;
  int state;
  uint8_t meta[WIRE_META_MAX];
  size_t meta_len;
  uint8_t vsn[WIRE_VSN_LEN];
  int vsn_len;
};

struct wire_push_pull_header {
  int join;
  uint32_t nodes;          /* entries that follow */
  uint32_t user_state_len; /* raw bytes after the entries */
};

/* ---- encoders: append to out (cap bytes), return bytes written or a
 * negative error (RM_ETOOBIG when it does not fit). Byte fields are written
 * in Go's raw-string form, keys in Go's (sorted) order, so our bytes match a
 * Go peer's for the same message. */
int wire_encode_ping(uint8_t *out, size_t cap, const struct wire_ping *m);
int wire_encode_indirect_ping(uint8_t *out, size_t cap, const struct wire_indirect_ping *m);
int wire_encode_ack(uint8_t *out, size_t cap, const struct wire_ack *m);
int wire_encode_nack(uint8_t *out, size_t cap, const struct wire_nack *m);
int wire_encode_suspect(uint8_t *out, size_t cap, const struct wire_suspect *m);
int wire_encode_dead(uint8_t *out, size_t cap, const struct wire_suspect *m);
int wire_encode_alive(uint8_t *out, size_t cap, const struct wire_alive *m);
/* user message on UDP: [8][payload] */
int wire_encode_user(uint8_t *out, size_t cap, const uint8_t *payload, size_t len);
/* TCP: [6][header] then wire_encode_push_node per entry, then user state. */
int wire_encode_push_pull_header(uint8_t *out, size_t cap, const struct wire_push_pull_header *h);
int wire_encode_push_node(uint8_t *out, size_t cap, const struct wire_push_node *n);
int wire_encode_err(uint8_t *out, size_t cap, const char *msg);

/* ---- decoders: `p` points just after the type byte. On success return
 * the number of bytes consumed (so stream readers can continue after a
 * msgpack body), or a negative error. */
int wire_decode_ping(const uint8_t *p, size_t len, struct wire_ping *m);
int wire_decode_indirect_ping(const uint8_t *p, size_t len, struct wire_indirect_ping *m);
int wire_decode_ack(const uint8_t *p, size_t len, struct wire_ack *m);
int wire_decode_nack(const uint8_t *p, size_t len, struct wire_nack *m);
int wire_decode_suspect(const uint8_t *p, size_t len, struct wire_suspect *m);
int wire_decode_dead(const uint8_t *p, size_t len, struct wire_suspect *m);
int wire_decode_alive(const uint8_t *p, size_t len, struct wire_alive *m);
int wire_decode_push_pull_header(const uint8_t *p, size_t len, struct wire_push_pull_header *h);
int wire_decode_push_node(const uint8_t *p, size_t len, struct wire_push_node *n);
int wire_decode_err(const uint8_t *p, size_t len, char *msg, size_t msglen);

/* ---- framing */

/* Compound: builds [7][N][lens][parts] from n parts (n <= 127, none empty). */
int wire_compound_encode(uint8_t *out, size_t cap, const uint8_t *const *parts,
                         const size_t *lens, size_t n);
/* Splits a compound (p after the type byte) into at most max parts; a
 * truncated tail is dropped and counted in *truncated. Returns the number
 * of parts or a negative error. Parts point into p. Zero-length parts
 * carry no message and are skipped, so every part returned has a type
 * byte. */
int wire_compound_decode(const uint8_t *p, size_t len, const uint8_t **parts,
                         size_t *lens, size_t max, size_t *truncated);

/* CRC-32/IEEE (zlib's crc32) of len bytes. */
uint32_t wire_crc32(const uint8_t *p, size_t len);
/* CRC wrapper: [12][crc32 BE][inner]. */
int wire_crc_wrap(uint8_t *out, size_t cap, const uint8_t *inner, size_t len);
/* If buf is a CRC wrapper, verifies it and returns the inner message via
 * *inner and *inner_len (0), or RM_EPARSE on mismatch; otherwise passes buf
 * through unchanged (0). */
int wire_crc_unwrap(const uint8_t *buf, size_t len, const uint8_t **inner,
                    size_t *inner_len);

/* Compress wrapper [9][msgpack {Algo, Buf}]: decodes the LZW payload into
 * out (at most cap bytes; RM_ETOOBIG past it). p after the type byte.
 * Returns the decompressed length or a negative error; an empty result is
 * RM_EPARSE (no message, and a memberlist 0.2.2 peer would panic on it). */
int wire_decompress(const uint8_t *p, size_t len, uint8_t *out, size_t cap);
/* LZW as Go's compress/lzw (LSB first, 8-bit literals), both directions;
 * lzw_decode accepts streams with or without a leading clear code, stops at
 * the end code and returns the output length (RM_EPARSE without an end
 * code or on an undefined code, RM_ETOOBIG past cap); lzw_encode writes
 * Go's bytes exactly (leading clear code included). */
int wire_lzw_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap);
int wire_lzw_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap);
/* Builds a compress message around an LZW encoding of inner. */
int wire_compress(uint8_t *out, size_t cap, const uint8_t *inner, size_t len);

/* Serf's node metadata: 0xff then a msgpack map of string -> string.
 * wire_tags_encode returns bytes written (<= WIRE_META_MAX) or an error;
 * wire_tags_get finds one tag's value (copied, NUL-terminated): 1 found,
 * 0 absent, negative on malformed meta (RM_ETOOBIG when the value does not
 * fit vlen). Meta not starting with 0xff is, as for serf, the value of the
 * tag "role". */
int wire_tags_encode(uint8_t *out, size_t cap, const char *const *keys,
                     const char *const *values, size_t n);
int wire_tags_get(const uint8_t *meta, size_t len, const char *key, char *value,
                  size_t vlen);

#endif
