/* buf.c - growable byte buffer with a hard limit.
 *
 * Doubling growth; the data is kept NUL-terminated so small text bodies can
 * be handed to parsers that want C strings.
 */
#include "buf.h"
#include "errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

void buf_init(struct buf *b, size_t limit) {
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
  b->limit = limit;
}

static int buf_reserve(struct buf *b, size_t need) {
  if (b->limit && need > b->limit)
    return RM_ETOOBIG;
  if (need + 1 <= b->cap)
    return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need + 1)
    cap *= 2;
  char *p = realloc(b->data, cap);
  if (!p)
    return UV_ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

int buf_append(struct buf *b, const void *p, size_t n) {
  int r = buf_reserve(b, b->len + n);
  if (r)
    return r;
  if (n)
    memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

int buf_appendf(struct buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0)
    return RM_EPARSE;
  int r = buf_reserve(b, b->len + (size_t)n);
  if (r)
    return r;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}

void buf_reset(struct buf *b) {
  b->len = 0;
  if (b->data)
    b->data[0] = '\0';
}

void buf_free(struct buf *b) {
  free(b->data);
  buf_init(b, b->limit);
}
