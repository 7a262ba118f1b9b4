/* buf.h - a growable byte buffer with a hard cap.
 *
 * Used for small documents (manifests, token responses, headers). The cap
 * makes every grow a bounds check: input from the network can never make a
 * buffer larger than its owner allowed.
 */
#ifndef REGMESH_COMMON_BUF_H
#define REGMESH_COMMON_BUF_H

#include <stddef.h>

struct buf {
  char *data; /* owned; NUL-terminated whenever len < cap */
  size_t len;
  size_t cap;   /* allocated bytes */
  size_t limit; /* largest len allowed; 0 = no limit */
};

void buf_init(struct buf *b, size_t limit);
/* buf_append copies n bytes; returns 0 or RM_ETOOBIG / UV_ENOMEM. */
int buf_append(struct buf *b, const void *p, size_t n);
int buf_appendf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void buf_reset(struct buf *b);
void buf_free(struct buf *b);

#endif
