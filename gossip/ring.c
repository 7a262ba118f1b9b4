/* ring.c - consistent hashing over the live members, weighted.
 *
 * Each member gets weight * vnodes_per_weight points on a 64-bit circle: the
 * first 8 bytes (big-endian) of SHA-256("name#i"). The points are kept in
 * one array sorted by (point, name), so every node that sees the same
 * member set builds the same ring byte for byte, whatever order the members
 * came in. A key hashes (XXH64, seed 0: fast, and well mixed even for keys
 * that differ in one character, like "library/img:1" and "library/img:2")
 * to a spot on the circle; its owners are the distinct members met walking
 * clockwise from the first point at or after that spot, found by a binary
 * search narrowed by a bucket index over the points' top bits. Removing a member only
 * deletes its points, so a key it did not own keeps its owner, and a key it did own falls
 * to its old second owner: preference lists shift, which failover relies on. Adding a
 * member only inserts points, so keys move only to it.
 *
 * Both hashes are part of the fleet's contract: nodes running different
 * hashes would disagree on every owner. Change them only fleet-wide.
 */
#include "ring.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* One member set, as built by ring_set. One allocation holds everything
 * (see table_alloc); the ring owns it and frees it on the next
 * successful ring_set or in ring_free. */
struct ring_table {
  size_t n_members;
  size_t n_points;
  const char **names; /* [n_members], copies, into the same block */
  unsigned *weights;  /* [n_members], after clamping */
  uint64_t *points;   /* [n_points], ascending */
  uint32_t *owner;    /* [n_points], member index of points[i] */
  /* A first-level index over the top bucket_bits of the points: bucket b
   * holds points[start[b] .. start[b + 1]), 2-4 of them on average, so a
   * lookup's binary search starts two cache misses from its answer
   * instead of a dozen. */
  uint32_t *start; /* [(1 << bucket_bits) + 1] */
  int bucket_bits; /* 1..31 */
};

/* Owned by the caller of ring_new, released by ring_free. */
struct ring {
  unsigned vnodes_per_weight;
  struct ring_table *t; /* NULL until the first non-empty ring_set */
};

/* A virtual node while the ring is built. */
struct ring_vnode {
  uint64_t point;
  uint32_t member;
};

/* A name and its index in the caller's arrays, to sort by name. */
struct ring_name {
  const char *name;
  uint32_t index;
};

/* --- key hash: XXH64 ------------------------------------------------------ */

#define XXH_P1 0x9E3779B185EBCA87ULL
#define XXH_P2 0xC2B2AE3D27D4EB4FULL
#define XXH_P3 0x165667B19E3779F9ULL
#define XXH_P4 0x85EBCA77C2B2AE63ULL
#define XXH_P5 0x27D4EB2F165667C5ULL

static inline uint64_t rotl64(uint64_t x, int r) {
  return (x << r) | (x >> (64 - r));
}

/* Little-endian loads, whatever the host: the hash must be the same on
 * every node. */
static inline uint64_t load_le64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}

static inline uint32_t load_le32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap32(v);
#endif
  return v;
}

static inline uint64_t xxh_round(uint64_t acc, uint64_t in) {
  acc += in * XXH_P2;
  acc = rotl64(acc, 31);
  return acc * XXH_P1;
}

static inline uint64_t xxh_merge(uint64_t acc, uint64_t v) {
  acc ^= xxh_round(0, v);
  return acc * XXH_P1 + XXH_P4;
}

uint64_t ring_key_hash(const void *key, size_t len) {
  const uint8_t *p = key;
  const uint8_t *end = p + len;
  uint64_t h;

  if (len >= 32) {
    uint64_t v1 = XXH_P1 + XXH_P2, v2 = XXH_P2, v3 = 0, v4 = -XXH_P1;
    do {
      v1 = xxh_round(v1, load_le64(p));
      v2 = xxh_round(v2, load_le64(p + 8));
      v3 = xxh_round(v3, load_le64(p + 16));
      v4 = xxh_round(v4, load_le64(p + 24));
      p += 32;
    } while (end - p >= 32);
    h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
    h = xxh_merge(h, v1);
    h = xxh_merge(h, v2);
    h = xxh_merge(h, v3);
    h = xxh_merge(h, v4);
  } else {
    h = XXH_P5;
  }
  h += (uint64_t)len;
  for (; end - p >= 8; p += 8) {
    h ^= xxh_round(0, load_le64(p));
    h = rotl64(h, 27) * XXH_P1 + XXH_P4;
  }
  if (end - p >= 4) {
    h ^= (uint64_t)load_le32(p) * XXH_P1;
    h = rotl64(h, 23) * XXH_P2 + XXH_P3;
    p += 4;
  }
  for (; p < end; p++) {
    h ^= (uint64_t)*p * XXH_P5;
    h = rotl64(h, 11) * XXH_P1;
  }
  h ^= h >> 33;
  h *= XXH_P2;
  h ^= h >> 29;
  h *= XXH_P3;
  h ^= h >> 32;
  return h;
}

/* --- building ------------------------------------------------------------- */

int ring_new(struct ring **out, unsigned vnodes_per_weight) {
  struct ring *r;

  if (vnodes_per_weight == 0)
    vnodes_per_weight = RING_VNODES_DEFAULT;
  if (vnodes_per_weight > RING_VNODES_MAX)
    return UV_EINVAL;
  r = calloc(1, sizeof(*r));
  if (r == NULL)
    return UV_ENOMEM;
  r->vnodes_per_weight = vnodes_per_weight;
  *out = r;
  return 0;
}

void ring_free(struct ring *r) {
  if (r == NULL)
    return;
  free(r->t);
  free(r);
}

static int name_cmp(const void *a, const void *b) {
  return strcmp(((const struct ring_name *)a)->name, ((const struct ring_name *)b)->name);
}

/* sort_members: every name present, non-empty and unique, every weight
 * >= 1; on success by_name[] holds the members in name order. Returns 0 or
 * UV_EINVAL. */
static int sort_members(const char *const *names, const unsigned *weights, size_t n,
                        struct ring_name *by_name) {
  for (size_t i = 0; i < n; i++) {
    if (names[i] == NULL || names[i][0] == '\0')
      return UV_EINVAL;
    if (weights != NULL && weights[i] == 0)
      return UV_EINVAL;
    by_name[i].name = names[i];
    by_name[i].index = (uint32_t)i;
  }
  qsort(by_name, n, sizeof(*by_name), name_cmp);
  for (size_t i = 1; i < n; i++)
    if (strcmp(by_name[i - 1].name, by_name[i].name) == 0)
      return UV_EINVAL;
  return 0;
}

/* radix_sort sorts v[0..n) by point through tmp[n], 11 bits a pass from
 * the least significant (6 passes, 16 KiB of counts). It is stable, so
 * vnodes generated in name order come out ordered by (point, name): the
 * tie break that makes the ring independent of the caller's order. It
 * replaced qsort, which took most of ring_set's time. */
#define RADIX_BITS 11
#define RADIX_BUCKETS (1 << RADIX_BITS)
_Static_assert((64 + RADIX_BITS - 1) / RADIX_BITS % 2 == 0,
               "radix_sort needs an even number of passes");

static void radix_sort(struct ring_vnode *v, struct ring_vnode *tmp, size_t n) {
  struct ring_vnode *src = v, *dst = tmp, *swap;
  size_t count[RADIX_BUCKETS];

  for (int shift = 0; shift < 64; shift += RADIX_BITS) {
    size_t sum = 0;

    memset(count, 0, sizeof(count));
    for (size_t i = 0; i < n; i++)
      count[(src[i].point >> shift) & (RADIX_BUCKETS - 1)]++;
    for (int d = 0; d < RADIX_BUCKETS; d++) {
      size_t c = count[d];
      count[d] = sum;
      sum += c;
    }
    for (size_t i = 0; i < n; i++)
      dst[count[(src[i].point >> shift) & (RADIX_BUCKETS - 1)]++] = src[i];
    swap = src;
    src = dst;
    dst = swap;
  }
  /* Six passes, an even number: the result is back in v. */
}

static size_t align8(size_t n) {
  return (n + 7) & ~(size_t)7;
}

/* table_alloc lays one block out as: the struct, names[], points[],
 * weights[], owner[], start[], then the name bytes, and copies the names.
 * The caller has bounded n_points (< UINT32_MAX). Returns NULL when out of
 * memory. */
static struct ring_table *table_alloc(const char *const *names, size_t n,
                                      size_t n_points) {
  size_t off_names, off_points, off_weights, off_owner, off_start, off_bytes, total;
  size_t name_bytes = 0;
  struct ring_table *t;
  char *base, *bytes;
  int bits = 1;

  /* The most buckets that still average two points or more. */
  while (bits < 31 && ((size_t)2 << bits) <= n_points / 2)
    bits++;
  for (size_t i = 0; i < n; i++)
    name_bytes += strlen(names[i]) + 1;
  off_names = align8(sizeof(*t));
  off_points = align8(off_names + n * sizeof(char *));
  off_weights = off_points + n_points * sizeof(uint64_t);
  off_owner = align8(off_weights + n * sizeof(unsigned));
  off_start = off_owner + n_points * sizeof(uint32_t);
  off_bytes = off_start + (((size_t)1 << bits) + 1) * sizeof(uint32_t);
  total = off_bytes + name_bytes;
  base = malloc(total);
  if (base == NULL)
    return NULL;
  t = (struct ring_table *)base;
  t->n_members = n;
  t->n_points = n_points;
  t->names = (const char **)(base + off_names);
  t->points = (uint64_t *)(base + off_points);
  t->weights = (unsigned *)(base + off_weights);
  t->owner = (uint32_t *)(base + off_owner);
  t->start = (uint32_t *)(base + off_start);
  t->bucket_bits = bits;
  bytes = base + off_bytes;
  for (size_t i = 0; i < n; i++) {
    size_t len = strlen(names[i]) + 1;
    memcpy(bytes, names[i], len);
    t->names[i] = bytes;
    bytes += len;
  }
  return t;
}

/* member_points writes count points for one member: SHA-256 of "name#i",
 * first 8 bytes big-endian. buf has room for the name and "#4294967295". */
static int member_points(EVP_MD_CTX *c, const EVP_MD *md, char *buf, const char *name,
                         unsigned count, uint64_t *out) {
  size_t name_len = strlen(name);
  unsigned char digest[EVP_MAX_MD_SIZE];

  memcpy(buf, name, name_len);
  buf[name_len] = '#';
  for (unsigned i = 0; i < count; i++) {
    char digits[10];
    size_t nd = 0, len = name_len + 1;
    unsigned v32 = i;
    uint64_t v = 0;

    do {
      digits[nd++] = (char)('0' + v32 % 10);
      v32 /= 10;
    } while (v32 != 0);
    while (nd > 0)
      buf[len++] = digits[--nd];
    /* These fail only when OpenSSL cannot allocate. */
    if (!EVP_DigestInit_ex(c, md, NULL) || !EVP_DigestUpdate(c, buf, len) ||
        !EVP_DigestFinal_ex(c, digest, NULL))
      return UV_ENOMEM;
    for (int b = 0; b < 8; b++)
      v = (v << 8) | digest[b];
    out[i] = v;
  }
  return 0;
}

/* index_build fills start[]: start[b] is the first point whose top bits
 * are >= b, start[1 << bits] is n_points. */
static void index_build(struct ring_table *t) {
  size_t n_buckets = (size_t)1 << t->bucket_bits, i = 0;
  int shift = 64 - t->bucket_bits;

  for (size_t b = 0; b < n_buckets; b++) {
    while (i < t->n_points && (t->points[i] >> shift) < b)
      i++;
    t->start[b] = (uint32_t)i;
  }
  t->start[n_buckets] = (uint32_t)t->n_points;
}

int ring_set(struct ring *r, const char *const *names, const unsigned *weights,
             size_t n) {
  EVP_MD_CTX *c = NULL;
  struct ring_name *by_name = NULL;
  struct ring_vnode *vn = NULL, *tmp = NULL;
  struct ring_table *t = NULL;
  uint64_t *pts = NULL;
  size_t n_points = 0, k = 0, max_name = 0;
  unsigned max_w = 1;
  EVP_MD *md = NULL;
  char *buf = NULL;
  int err;

  if (n == 0) {
    free(r->t);
    r->t = NULL;
    return 0;
  }
#if SIZE_MAX > UINT32_MAX
  if (n > UINT32_MAX)
    return UV_EINVAL;
#endif
  by_name = malloc(n * sizeof(*by_name));
  if (by_name == NULL)
    return UV_ENOMEM;
  err = sort_members(names, weights, n, by_name);
  if (err != 0)
    goto out;
  for (size_t i = 0; i < n; i++) {
    unsigned w = weights != NULL ? weights[i] : 1;
    if (w > RING_WEIGHT_MAX)
      w = RING_WEIGHT_MAX;
    if (w > max_w)
      max_w = w;
    if (strlen(names[i]) > max_name)
      max_name = strlen(names[i]);
    /* Both factors are capped; the sum is kept within the uint32_t
     * indexes of start[], which also bounds the scratch arrays. */
    if (n_points >= UINT32_MAX - (size_t)w * r->vnodes_per_weight) {
      err = UV_EINVAL;
      goto out;
    }
    n_points += (size_t)w * r->vnodes_per_weight;
  }

  err = UV_ENOMEM;
  t = table_alloc(names, n, n_points);
  vn = malloc(n_points * sizeof(*vn));
  tmp = malloc(n_points * sizeof(*tmp));
  pts = malloc((size_t)max_w * r->vnodes_per_weight * sizeof(*pts));
  buf = malloc(max_name + 12);
  c = EVP_MD_CTX_new();
  /* An explicit fetch: EVP_sha256() would look the provider up, under a
   * lock, on every digest init. */
  md = EVP_MD_fetch(NULL, "SHA256", NULL);
  if (t == NULL || vn == NULL || tmp == NULL || pts == NULL || buf == NULL || c == NULL ||
      md == NULL)
    goto out;
  for (size_t i = 0; i < n; i++) {
    unsigned w = weights != NULL ? weights[i] : 1;
    t->weights[i] = w > RING_WEIGHT_MAX ? RING_WEIGHT_MAX : w;
  }
  for (size_t s = 0; s < n; s++) {
    uint32_t m = by_name[s].index;
    unsigned count = t->weights[m] * r->vnodes_per_weight;

    err = member_points(c, md, buf, t->names[m], count, pts);
    if (err != 0)
      goto out;
    for (unsigned j = 0; j < count; j++) {
      vn[k].point = pts[j];
      vn[k].member = m;
      k++;
    }
  }
  radix_sort(vn, tmp, n_points);
  for (size_t i = 0; i < n_points; i++) {
    t->points[i] = vn[i].point;
    t->owner[i] = vn[i].member;
  }
  index_build(t);
  free(r->t);
  r->t = t;
  t = NULL;
  err = 0;
out:
  EVP_MD_free(md);
  EVP_MD_CTX_free(c);
  free(buf);
  free(pts);
  free(tmp);
  free(vn);
  free(t);
  free(by_name);
  return err;
}

/* --- lookups -------------------------------------------------------------- */

/* first_at_or_after: the index of the first point >= h, or 0 when h is past
 * the last point (the circle wraps). Points past h's bucket are all > h, so
 * when none in the bucket is >= h the answer is the bucket's end. */
static size_t first_at_or_after(const struct ring_table *t, uint64_t h) {
  size_t b = (size_t)(h >> (64 - t->bucket_bits));
  size_t lo = t->start[b], len = t->start[b + 1] - lo;

  while (len > 0) {
    size_t half = len / 2;
    if (t->points[lo + half] < h) {
      lo += half + 1;
      len -= half + 1;
    } else {
      len = half;
    }
  }
  return lo == t->n_points ? 0 : lo;
}

size_t ring_lookup_hash(const struct ring *r, uint64_t h, size_t *owners, size_t n) {
  const struct ring_table *t = r->t;
  size_t i, found = 0;

  if (t == NULL || n == 0)
    return 0;
  if (n > t->n_members)
    n = t->n_members;
  i = first_at_or_after(t, h);
  /* Every member has at least one point, so one lap finds all n. */
  for (size_t step = 0; step < t->n_points && found < n; step++) {
    size_t m = t->owner[i], j;

    for (j = 0; j < found && owners[j] != m; j++)
      ;
    if (j == found)
      owners[found++] = m;
    if (++i == t->n_points)
      i = 0;
  }
  return found;
}

size_t ring_lookup(const struct ring *r, const void *key, size_t key_len, size_t *owners,
                   size_t n) {
  return ring_lookup_hash(r, ring_key_hash(key, key_len), owners, n);
}

size_t ring_members(const struct ring *r) {
  return r->t != NULL ? r->t->n_members : 0;
}

const char *ring_member_name(const struct ring *r, size_t i) {
  return r->t != NULL && i < r->t->n_members ? r->t->names[i] : NULL;
}

unsigned ring_member_weight(const struct ring *r, size_t i) {
  return r->t != NULL && i < r->t->n_members ? r->t->weights[i] : 0;
}

double ring_share(const struct ring *r, size_t member) {
  const struct ring_table *t = r->t;
  double sum = 0;

  if (t == NULL || member >= t->n_members)
    return 0;
  if (t->n_points == 1)
    return 1;
  /* Point i owns the arc (points[i-1], points[i]]; point 0 owns the
   * wrap-around arc, whose unsigned difference is right modulo 2^64. */
  for (size_t i = 0; i < t->n_points; i++) {
    if (t->owner[i] != member)
      continue;
    uint64_t prev = t->points[i == 0 ? t->n_points - 1 : i - 1];
    sum += (double)(uint64_t)(t->points[i] - prev);
  }
  return sum / 18446744073709551616.0; /* 2^64 */
}
