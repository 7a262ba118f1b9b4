/* httpval.h - the request header values the registry API interprets. */
#ifndef REGMESH_NODE_HTTPVAL_H
#define REGMESH_NODE_HTTPVAL_H

#include <stddef.h>
#include <stdint.h>

/* httpval_etag_match: whether an If-None-Match value ("*" or a list of
 * entity tags, RFC 9110 13.1.2, compared weakly) names "sha256:<hex>".
 * A malformed list matches nothing. */
int httpval_etag_match(const char *value, size_t len, const char *hex);

/* httpval_range reads a Range value (NUL-terminated) for a body of `size` bytes: a single
 * "bytes=a-b", "bytes=a-" or "bytes=-n" with digits only. Returns 1 with
 * [*start, *end) set, 0 when there is no usable range (serve it all: a
 * multi-range, another unit, signs, junk), -1 when it cannot be satisfied
 * (416). */
int httpval_range(const char *v, uint64_t size, uint64_t *start, uint64_t *end);

#endif
