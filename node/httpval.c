/* httpval.c - values of request headers the registry API reads: Range and
 * If-None-Match (httpval.h). Pure functions of their input, so the fuzzer
 * feeds them directly.
 */
#include "httpval.h"

#include "../common/digest.h"

#include <stdlib.h>
#include <string.h>

int httpval_etag_match(const char *value, size_t len, const char *hex) {
  const char *p = value, *end = value + len;
  while (p < end && (*p == ' ' || *p == '\t'))
    p++;
  if (end - p == 1 && *p == '*')
    return 1;
  while (p < end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
      p++;
    if (p == end)
      break;
    if (end - p >= 2 && p[0] == 'W' && p[1] == '/')
      p += 2;
    if (p == end || *p != '"')
      return 0;
    const char *q = memchr(p + 1, '"', (size_t)(end - p - 1));
    if (!q)
      return 0;
    size_t n = (size_t)(q - p - 1);
    if (n == 7 + DIGEST_HEX_LEN && memcmp(p + 1, "sha256:", 7) == 0 &&
        memcmp(p + 8, hex, DIGEST_HEX_LEN) == 0)
      return 1;
    p = q + 1;
  }
  return 0;
}

int httpval_range(const char *v, uint64_t size, uint64_t *start, uint64_t *end) {
  if (strncmp(v, "bytes=", 6) != 0 || strchr(v, ','))
    return 0;
  v += 6;
  char *e;
  /* strtoull would take a sign (and wrap a '-'): digits only, else the
   * Range is ignored and the whole body served, as RFC 9110 14.2 allows */
  if (*v == '-') {
    if (v[1] < '0' || v[1] > '9')
      return 0;
    unsigned long long n = strtoull(v + 1, &e, 10);
    if (e == v + 1 || *e)
      return 0;
    if (n == 0 || size == 0)
      return -1;
    *start = n >= size ? 0 : size - n;
    *end = size;
    return 1;
  }
  if (*v < '0' || *v > '9')
    return 0;
  unsigned long long a = strtoull(v, &e, 10);
  if (*e != '-')
    return 0;
  const char *bstr = e + 1;
  unsigned long long b = size ? size - 1 : 0;
  if (*bstr) {
    if (*bstr < '0' || *bstr > '9')
      return 0;
    b = strtoull(bstr, &e, 10);
    if (*e || b < a)
      return 0;
    if (b >= size)
      b = size - 1;
  }
  if (a >= size)
    return -1;
  *start = a;
  *end = b + 1;
  return 1;
}
