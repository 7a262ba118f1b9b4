/* fuzz_gossip_decode.c - one input through everything a gossip node does
 * with bytes from the network, for libFuzzer (LLVMFuzzerTestOneInput) and
 * for fuzz_gossip_replay, which runs the same function under any compiler.
 *
 * The input is taken as a UDP datagram (opened with a fixed key when it is
 * sealed, else as plaintext, as with GossipVerifyIncoming off), then CRC,
 * compress and compound layers, then every message decoder on every part
 * whatever its type byte; and as a TCP stream (optionally [10][len] sealed,
 * optionally compressed), push/pull header then node entries. Besides "no
 * crash", each decoded message must survive encode -> decode -> encode
 * with identical bytes, which catches decoder/encoder disagreements that a
 * sanitizer cannot see.
 */
#include "errors.h"
#include "keyring.h"
#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_KEY "AAECAwQFBgcICQoLDA0ODw==" /* memberlist-wire.md 13.4 */
/* Wrappers still allowed around a message. Senders build
 * [crc][compress][compound][message] and nothing deeper; a receiver that
 * let compress and compound nest freely could be made to expand one
 * datagram into gigabytes of work, so it unwraps each layer once. */
#define ALLOW_COMPRESS 1
#define ALLOW_COMPOUND 2
#define MAX_STREAM_NODES 4096

static void fail(const char *what) {
  fprintf(stderr, "fuzz_gossip_decode: %s\n", what);
  abort();
}

/* enc(struct) -> a; dec(a) -> struct; enc -> b; a == b. */
#define CHECK_CANONICAL(type, enc, dec, msg, skip)                                       \
  do {                                                                                   \
    static uint8_t a_[4096], b_[4096];                                                   \
    type again_;                                                                         \
    int na_ = enc(a_, sizeof a_, (msg));                                                 \
    if (na_ < (skip))                                                                    \
      fail("re-encoding a decoded " #type " failed");                                    \
    if (dec(a_ + (skip), (size_t)na_ - (skip), &again_) != na_ - (skip))                 \
      fail("decoding our own " #type " failed");                                         \
    int nb_ = enc(b_, sizeof b_, &again_);                                               \
    if (nb_ != na_ || memcmp(a_, b_, (size_t)na_) != 0)                                  \
      fail(#type " does not round-trip");                                                \
  } while (0)

/* Every message decoder on one body (p is after the type byte). */
static void decode_all(const uint8_t *p, size_t len) {
  struct wire_ping ping;
  struct wire_indirect_ping ind;
  struct wire_ack ack;
  struct wire_nack nack;
  struct wire_suspect sus;
  struct wire_alive alive;
  struct wire_push_node node;
  struct wire_push_pull_header hdr;
  char text[64];

  if (wire_decode_ping(p, len, &ping) >= 0)
    CHECK_CANONICAL(struct wire_ping, wire_encode_ping, wire_decode_ping, &ping, 1);
  if (wire_decode_indirect_ping(p, len, &ind) >= 0)
    CHECK_CANONICAL(struct wire_indirect_ping, wire_encode_indirect_ping,
                    wire_decode_indirect_ping, &ind, 1);
  if (wire_decode_ack(p, len, &ack) >= 0)
    CHECK_CANONICAL(struct wire_ack, wire_encode_ack, wire_decode_ack, &ack, 1);
  if (wire_decode_nack(p, len, &nack) >= 0)
    CHECK_CANONICAL(struct wire_nack, wire_encode_nack, wire_decode_nack, &nack, 1);
  if (wire_decode_suspect(p, len, &sus) >= 0) {
    CHECK_CANONICAL(struct wire_suspect, wire_encode_suspect, wire_decode_suspect, &sus,
                    1);
    CHECK_CANONICAL(struct wire_suspect, wire_encode_dead, wire_decode_dead, &sus, 1);
  }
  if (wire_decode_alive(p, len, &alive) >= 0) {
    CHECK_CANONICAL(struct wire_alive, wire_encode_alive, wire_decode_alive, &alive, 1);
    wire_tags_get(alive.meta, alive.meta_len, "url", text, sizeof text);
  }
  if (wire_decode_push_node(p, len, &node) >= 0)
    CHECK_CANONICAL(struct wire_push_node, wire_encode_push_node, wire_decode_push_node,
                    &node, 0);
  if (wire_decode_push_pull_header(p, len, &hdr) >= 0)
    CHECK_CANONICAL(struct wire_push_pull_header, wire_encode_push_pull_header,
                    wire_decode_push_pull_header, &hdr, 1);
  wire_decode_err(p, len, text, sizeof text);
  wire_tags_get(p, len, "zone", text, sizeof text);
}

/* One message as memberlist's handleCommand sees it. */
static void handle(const uint8_t *p, size_t len, int allow) {
  if (len == 0)
    return;
  if (p[0] == WIRE_COMPRESS && (allow & ALLOW_COMPRESS)) {
    size_t cap = WIRE_UDP_MAX;
    uint8_t *out = malloc(cap);
    int n = out ? wire_decompress(p + 1, len - 1, out, cap) : -1;
    if (n > (int)cap)
      fail("decompress overran its cap");
    if (n > 0)
      handle(out, (size_t)n, allow & ~ALLOW_COMPRESS);
    free(out);
  } else if (p[0] == WIRE_COMPOUND && (allow & ALLOW_COMPOUND)) {
    const uint8_t *parts[255];
    size_t lens[255], trunc;
    int n = wire_compound_decode(p + 1, len - 1, parts, lens, 255, &trunc);
    for (int i = 0; i < n; i++) {
      if (lens[i] == 0 || parts[i] < p || parts[i] + lens[i] > p + len)
        fail("compound part out of its message");
      handle(parts[i], lens[i], 0);
    }
  } else {
    decode_all(p + 1, len - 1);
  }
}

static void udp_packet(const uint8_t *p, size_t len) {
  const uint8_t *inner;
  size_t inner_len;
  if (wire_crc_unwrap(p, len, &inner, &inner_len) == 0)
    handle(inner, inner_len, ALLOW_COMPRESS | ALLOW_COMPOUND);
}

/* A TCP stream message: [6][header][nodes...][user state], or compressed. */
static void stream_plain(const uint8_t *p, size_t len, int depth) {
  struct wire_push_pull_header h;
  struct wire_push_node node;
  if (len == 0)
    return;
  if (p[0] == WIRE_COMPRESS && depth < 1) {
    size_t cap = 1u << 20;
    uint8_t *out = malloc(cap);
    int n = out ? wire_decompress(p + 1, len - 1, out, cap) : -1;
    if (n > 0)
      stream_plain(out, (size_t)n, depth + 1);
    free(out);
    return;
  }
  if (p[0] != WIRE_PUSH_PULL) {
    handle(p, len, 0); /* ping, err, user: decoders only */
    return;
  }
  int used = wire_decode_push_pull_header(p + 1, len - 1, &h);
  if (used < 0)
    return;
  size_t off = 1 + (size_t)used;
  for (uint32_t i = 0; i < h.nodes && i < MAX_STREAM_NODES; i++) {
    used = wire_decode_push_node(p + off, len - off, &node);
    if (used < 0)
      return;
    if ((size_t)used > len - off)
      fail("push node consumed past the stream");
    off += (size_t)used;
  }
}

static const struct keyring *fuzz_keyring(void) {
  static struct keyring kr;
  static int ready;
  if (!ready) {
    keyring_init(&kr);
    if (keyring_add_base64(&kr, FUZZ_KEY) != 0)
      fail("fixed key refused");
    ready = 1;
  }
  return &kr;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const struct keyring *kr = fuzz_keyring();
  uint8_t *plain;
  int n;

  if (size > WIRE_UDP_MAX * 4)
    return 0;
  plain = malloc(size ? size : 1);
  if (!plain)
    return 0;

  /* UDP: sealed (no AD), then as plaintext too */
  n = keyring_decrypt(kr, data, size, NULL, 0, plain, size);
  if (n > (int)size)
    fail("decrypt overran its cap");
  if (n >= 0)
    udp_packet(plain, (size_t)n);
  udp_packet(data, size);

  /* TCP: [10][len:u32] header as AD, or plaintext */
  if (size >= 5 && data[0] == WIRE_ENCRYPT) {
    uint32_t l = (uint32_t)data[1] << 24 | (uint32_t)data[2] << 16 |
                 (uint32_t)data[3] << 8 | data[4];
    if (l <= size - 5 && l <= WIRE_STREAM_MAX) {
      n = keyring_decrypt(kr, data + 5, l, data, 5, plain, size);
      if (n >= 0)
        stream_plain(plain, (size_t)n, 0);
    }
  }
  stream_plain(data, size, 0);

  /* the raw layers on their own */
  if (size < 8192) {
    uint8_t out[16384];
    wire_lzw_decode(data, size, out, sizeof out);
  }
  free(plain);
  return 0;
}
