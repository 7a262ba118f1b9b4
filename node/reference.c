/* reference.c - validation of repository names and tags.
 *
 * Hand-written matchers for the distribution spec's regular expressions:
 * they run on every request, take (pointer, length) input without NUL
 * assumptions, and never allocate.
 */
#include "reference.h"

#include <string.h>

static int is_alnum_lower(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* One component: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* */
static int component_valid(const char *s, size_t len) {
  size_t i = 0;
  if (len == 0 || !is_alnum_lower(s[0]))
    return 0;
  while (i < len) {
    while (i < len && is_alnum_lower(s[i]))
      i++;
    if (i == len)
      return 1;
    /* separator */
    if (s[i] == '.') {
      i++;
    } else if (s[i] == '_') {
      i++;
      if (i < len && s[i] == '_')
        i++;
    } else if (s[i] == '-') {
      while (i < len && s[i] == '-')
        i++;
    } else {
      return 0;
    }
    if (i == len || !is_alnum_lower(s[i]))
      return 0;
  }
  return 1;
}

int ref_name_valid(const char *s, size_t len) {
  if (len == 0 || len > REF_NAME_MAX)
    return 0;
  size_t start = 0;
  for (size_t i = 0; i <= len; i++) {
    if (i == len || s[i] == '/') {
      if (!component_valid(s + start, i - start))
        return 0;
      start = i + 1;
    }
  }
  return 1;
}

int ref_tag_valid(const char *s, size_t len) {
  if (len == 0 || len > REF_TAG_MAX)
    return 0;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
             (c >= '0' && c <= '9') || c == '_' ||
             (i > 0 && (c == '.' || c == '-'));
    if (!ok)
      return 0;
  }
  return 1;
}

int ref_component_is_host(const char *s, size_t len) {
  if (len == 9 && memcmp(s, "localhost", 9) == 0)
    return 1;
  return memchr(s, '.', len) != NULL || memchr(s, ':', len) != NULL;
}
