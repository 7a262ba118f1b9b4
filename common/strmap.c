/* strmap.c - chained hash map with FNV-1a hashing and doubling growth.
 *
 * Small and predictable: keys are copied into the entry allocation so an
 * entry is one malloc, and lookups never allocate.
 */
#include "strmap.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

static unsigned hash_str(const char *s) {
  unsigned h = 2166136261u;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

void strmap_init(struct strmap *m) {
  m->slots = NULL;
  m->nslots = 0;
  m->count = 0;
}

static struct strmap_entry **find(const struct strmap *m, const char *key, unsigned h) {
  if (!m->nslots)
    return NULL;
  struct strmap_entry **pp = &m->slots[h & (m->nslots - 1)];
  for (; *pp; pp = &(*pp)->next)
    if ((*pp)->hash == h && strcmp((*pp)->key, key) == 0)
      return pp;
  return pp;
}

void *strmap_get(const struct strmap *m, const char *key) {
  struct strmap_entry **pp = find(m, key, hash_str(key));
  return pp && *pp ? (*pp)->value : NULL;
}

static int grow(struct strmap *m) {
  size_t n = m->nslots ? m->nslots * 2 : 16;
  struct strmap_entry **slots = calloc(n, sizeof *slots);
  if (!slots)
    return UV_ENOMEM;
  for (size_t i = 0; i < m->nslots; i++) {
    struct strmap_entry *e = m->slots[i];
    while (e) {
      struct strmap_entry *next = e->next;
      e->next = slots[e->hash & (n - 1)];
      slots[e->hash & (n - 1)] = e;
      e = next;
    }
  }
  free(m->slots);
  m->slots = slots;
  m->nslots = n;
  return 0;
}

int strmap_put(struct strmap *m, const char *key, void *value) {
  unsigned h = hash_str(key);
  struct strmap_entry **pp = find(m, key, h);
  if (pp && *pp) {
    (*pp)->value = value;
    return 0;
  }
  if (m->count + 1 > m->nslots) {
    int r = grow(m);
    if (r)
      return r;
    pp = find(m, key, h);
  }
  size_t kl = strlen(key);
  struct strmap_entry *e = malloc(sizeof *e + kl + 1);
  if (!e)
    return UV_ENOMEM;
  memcpy(e->key, key, kl + 1);
  e->hash = h;
  e->value = value;
  e->next = NULL;
  *pp = e;
  m->count++;
  return 0;
}

void *strmap_del(struct strmap *m, const char *key) {
  struct strmap_entry **pp = find(m, key, hash_str(key));
  if (!pp || !*pp)
    return NULL;
  struct strmap_entry *e = *pp;
  void *v = e->value;
  *pp = e->next;
  free(e);
  m->count--;
  return v;
}

void strmap_each(const struct strmap *m, void (*fn)(const char *, void *, void *), void *ud) {
  for (size_t i = 0; i < m->nslots; i++)
    for (struct strmap_entry *e = m->slots[i]; e; e = e->next)
      fn(e->key, e->value, ud);
}

void strmap_free(struct strmap *m) {
  for (size_t i = 0; i < m->nslots; i++) {
    struct strmap_entry *e = m->slots[i];
    while (e) {
      struct strmap_entry *next = e->next;
      free(e);
      e = next;
    }
  }
  free(m->slots);
  strmap_init(m);
}
