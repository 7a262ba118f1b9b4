/* strmap.h - a string-keyed hash map of pointers.
 *
 * Chained, growing by doubling; the map owns copies of its keys, never the
 * values. Used for the in-flight download table and the tag cache.
 */
#ifndef REGMESH_COMMON_STRMAP_H
#define REGMESH_COMMON_STRMAP_H

#include <stddef.h>

struct strmap_entry {
  struct strmap_entry *next;
  void *value;
  unsigned hash;
  char key[]; /* NUL-terminated copy */
};

struct strmap {
  struct strmap_entry **slots;
  size_t nslots;
  size_t count;
};

void strmap_init(struct strmap *m);
/* strmap_get returns the value for key, or NULL. */
void *strmap_get(const struct strmap *m, const char *key);
/* strmap_put inserts or replaces; returns 0 or UV_ENOMEM. */
int strmap_put(struct strmap *m, const char *key, void *value);
/* strmap_del removes key; returns its value or NULL. */
void *strmap_del(struct strmap *m, const char *key);
/* strmap_each calls fn for every entry; fn must not change the map. */
void strmap_each(const struct strmap *m, void (*fn)(const char *key, void *value, void *ud), void *ud);
void strmap_free(struct strmap *m);

#endif
