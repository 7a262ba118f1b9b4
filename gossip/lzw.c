/* lzw.c - Go's compress/lzw (LSB first, 8-bit literals), the only algorithm
 * memberlist's compress wrapper knows.
 *
 * Codes 0..255 are literals, 256 clears the table, 257 ends the stream, and
 * new strings get codes from 258 on. Codes start 9 bits wide and widen when
 * the next code to assign reaches 2^width, up to 12 bits; bits are packed
 * least significant first. The decoder mirrors Go's reader state for state
 * (including what it does when a writer that never clears fills the table),
 * so it accepts whatever a Go peer sends: with or without the leading clear
 * code that Go 1.17+ writers emit. It keeps only a fixed 12 KiB table on the
 * stack and writes into the caller's buffer, so a small stream that expands
 * hugely fails with RM_ETOOBIG at `cap` instead of allocating.
 *
 * The encoder reproduces Go's writer bit for bit (same hash table, same
 * clear at code 4095), so its output can be checked byte by byte against
 * Go's and Python ports of it.
 */
#include "wire.h"
#include "errors.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define LZW_CLEAR 256u
#define LZW_EOF 257u
#define LZW_MAX_WIDTH 12u
#define LZW_MAX_CODE 4095u
#define LZW_INVALID 0xffffu

int wire_lzw_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap) {
  uint16_t prefix[1u << LZW_MAX_WIDTH];
  uint8_t suffix[1u << LZW_MAX_WIDTH];
  uint8_t stack[1u << LZW_MAX_WIDTH];
  unsigned width = 9, hi = LZW_EOF, overflow = 1u << 9, last = LZW_INVALID;
  uint32_t bits = 0;
  unsigned nbits = 0;
  size_t pos = 0, o = 0;

  if (cap > INT32_MAX)
    cap = INT32_MAX;
  for (;;) {
    unsigned code, first;
    size_t i = sizeof stack;

    while (nbits < width) {
      if (pos >= len) /* no end code: Go reports unexpected EOF */
        return RM_EPARSE;
      bits |= (uint32_t)in[pos++] << nbits;
      nbits += 8;
    }
    code = bits & ((1u << width) - 1);
    bits >>= width;
    nbits -= width;

    if (code == LZW_CLEAR) {
      width = 9;
      hi = LZW_EOF;
      overflow = 1u << 9;
      last = LZW_INVALID;
      continue;
    }
    if (code == LZW_EOF)
      return (int)o;

    /* Expand into the tail of `stack`. Every table entry's prefix is a
     * smaller code (it was assigned from `last` < hi), so the walk ends at
     * a literal within 4096 steps. */
    if (code < LZW_CLEAR) {
      stack[--i] = (uint8_t)code;
    } else if (code <= hi) {
      /* code == hi with a previous code is the string being defined right
       * now: the previous expansion plus its own first byte ("KwKwK").
       * Without one it can only be slot 4095 of a frozen table (after a
       * clear hi is 257, the end code), defined by the code that froze
       * it: a plain lookup, as in Go. */
      int kwk = code == hi && last != LZW_INVALID;
      unsigned c = kwk ? last : code;
      if (kwk)
        i--; /* room for the trailing byte, filled once `first` is known */
      while (c >= LZW_CLEAR && i > 0) {
        stack[--i] = suffix[c];
        c = prefix[c];
      }
      if (c >= LZW_CLEAR || i == 0)
        return RM_EPARSE; /* unreachable for the reasons above */
      stack[--i] = (uint8_t)c;
      if (kwk)
        stack[sizeof stack - 1] = (uint8_t)c;
    } else {
      return RM_EPARSE; /* a code not yet defined */
    }
    first = stack[i];

    size_t n = sizeof stack - i;
    if (n > cap - o)
      return RM_ETOOBIG;
    memcpy(out + o, stack + i, n);
    o += n;

    if (last != LZW_INVALID) {
      suffix[hi] = (uint8_t)first;
      prefix[hi] = (uint16_t)last;
    }
    last = code;
    hi++;
    if (hi >= overflow) {
      if (width == LZW_MAX_WIDTH) {
        /* table full and the writer did not clear: keep decoding with the
         * table frozen, as Go's reader does */
        last = LZW_INVALID;
        hi--;
      } else {
        width++;
        overflow <<= 1;
      }
    }
  }
}

/* ---- encoder: Go's writer. The table maps key = (code << 8 | byte) to the
 * code of that string, stored as key << 12 | code with open addressing over
 * 4 * 4096 slots; 0 marks an empty slot, which no used slot can be since
 * its low 12 bits hold a code >= 258. */

#define LZW_TABLE_SIZE (4u << LZW_MAX_WIDTH)
#define LZW_TABLE_MASK (LZW_TABLE_SIZE - 1)

struct lzw_writer {
  uint8_t *out;
  size_t cap;
  size_t len;
  uint32_t bits;
  unsigned nbits;
  unsigned width;
  unsigned hi;
  unsigned overflow;
  int err;
  uint32_t table[LZW_TABLE_SIZE];
};

static void lzw_put(struct lzw_writer *w, unsigned code) {
  w->bits |= (uint32_t)code << w->nbits;
  w->nbits += w->width;
  while (w->nbits >= 8) {
    if (w->len >= w->cap) {
      w->err = RM_ETOOBIG;
    } else {
      w->out[w->len++] = (uint8_t)w->bits;
    }
    w->bits >>= 8;
    w->nbits -= 8;
  }
}

static void lzw_reset(struct lzw_writer *w) {
  w->width = 9;
  w->hi = LZW_EOF;
  w->overflow = 1u << 9;
  memset(w->table, 0, sizeof w->table);
}

/* Go's incHi: one more code is implied; returns 1 when the table ran out
 * and a clear code was sent (the caller then adds no entry). */
static int lzw_inc_hi(struct lzw_writer *w) {
  w->hi++;
  if (w->hi == w->overflow) {
    w->width++;
    w->overflow <<= 1;
  }
  if (w->hi == LZW_MAX_CODE) {
    lzw_put(w, LZW_CLEAR);
    lzw_reset(w);
    return 1;
  }
  return 0;
}

int wire_lzw_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap) {
  struct lzw_writer *w;
  int rc;

  if (!out)
    cap = 0;
  w = malloc(sizeof *w); /* 64 KiB: fixed, but too big for a libuv stack */
  if (!w)
    return UV_ENOMEM;
  w->out = out;
  w->cap = cap < INT32_MAX ? cap : INT32_MAX;
  w->len = 0;
  w->bits = 0;
  w->nbits = 0;
  w->err = 0;
  lzw_reset(w);

  /* Go's writer starts every stream with a clear code (GIF's advice) */
  lzw_put(w, LZW_CLEAR);
  if (len > 0) {
    unsigned code = in[0];
    for (size_t i = 1; i < len && !w->err; i++) {
      uint32_t key = (uint32_t)code << 8 | in[i];
      uint32_t hash = ((key >> 12) ^ key) & LZW_TABLE_MASK;
      uint32_t h = hash, t;
      int hit = 0;
      for (t = w->table[h]; t != 0; t = w->table[h]) {
        if (key == t >> 12) {
          code = t & LZW_MAX_CODE;
          hit = 1;
          break;
        }
        h = (h + 1) & LZW_TABLE_MASK;
      }
      if (hit)
        continue;
      lzw_put(w, code);
      code = in[i];
      if (lzw_inc_hi(w))
        continue;
      while (w->table[hash] != 0)
        hash = (hash + 1) & LZW_TABLE_MASK;
      w->table[hash] = key << 12 | w->hi;
    }
    lzw_put(w, code);
    lzw_inc_hi(w);
  }
  lzw_put(w, LZW_EOF);
  if (w->nbits > 0) {
    if (w->len >= w->cap)
      w->err = RM_ETOOBIG;
    else
      w->out[w->len++] = (uint8_t)w->bits;
  }
  rc = w->err ? w->err : (int)w->len;
  free(w);
  return rc;
}
