/* holders.c - the table of peers holding or downloading each blob a node
 * streams to the fleet (holders.h).
 *
 * One struct holding per digest in a strmap, with a small fixed array of
 * entries: the candidates per blob are few (those that asked this node),
 * and a scan of 32 entries is cheaper than any index. Registration order
 * (a sequence number) makes the tree acyclic: an asker is only ever sent
 * to holders that asked before it, whose downloads therefore never wait
 * on its own.
 */
#include "holders.h"

#include "../common/strmap.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

struct holder {
  char name[HOLDERS_NAME_MAX];
  uint64_t seq;        /* registration order */
  uint64_t expires_ms; /* loop time */
  unsigned children;   /* askers sent to it */
  int held;            /* it said it has the whole blob */
};

struct holding {
  struct holder e[HOLDERS_PER_DIGEST];
  size_t n;
  unsigned uploads;
  char repo[256];
  char ns[128];
};

struct holders {
  struct strmap map; /* hex -> struct holding */
  uint64_t seq;
};

int holders_new(struct holders **out) {
  struct holders *h = calloc(1, sizeof *h);
  if (!h)
    return UV_ENOMEM;
  strmap_init(&h->map);
  *out = h;
  return 0;
}

static void free_one(const char *key, void *value, void *ud) {
  (void)key;
  (void)ud;
  free(value);
}

void holders_free(struct holders *h) {
  if (!h)
    return;
  strmap_each(&h->map, free_one, NULL);
  strmap_free(&h->map);
  free(h);
}

static void drop_expired(struct holding *g, uint64_t now) {
  size_t k = 0;
  for (size_t i = 0; i < g->n; i++)
    if (g->e[i].expires_ms > now)
      g->e[k++] = g->e[i];
  g->n = k;
}

/* Digests with no live entry and no running upload, for a full table. */
struct sweep {
  uint64_t now;
  char (*dead)[72];
  size_t n, cap;
};

static void find_dead(const char *key, void *value, void *ud) {
  struct sweep *s = ud;
  struct holding *g = value;
  drop_expired(g, s->now);
  if (g->n == 0 && g->uploads == 0 && s->n < s->cap && strlen(key) < sizeof s->dead[0])
    strcpy(s->dead[s->n++], key);
}

static void sweep(struct holders *h, uint64_t now) {
  struct sweep s = {.now = now, .cap = 256};
  s.dead = calloc(s.cap, sizeof *s.dead);
  if (!s.dead)
    return;
  strmap_each(&h->map, find_dead, &s);
  for (size_t i = 0; i < s.n; i++)
    free(strmap_del(&h->map, s.dead[i]));
  free(s.dead);
}

static struct holding *get_or_add(struct holders *h, const char *hex, uint64_t now,
                                  int *err) {
  struct holding *g = strmap_get(&h->map, hex);
  if (g)
    return g;
  if (h->map.count >= HOLDERS_DIGESTS_MAX)
    sweep(h, now);
  if (h->map.count >= HOLDERS_DIGESTS_MAX) {
    *err = UV_ENOSPC;
    return NULL;
  }
  g = calloc(1, sizeof *g);
  if (!g || strmap_put(&h->map, hex, g) != 0) {
    free(g);
    *err = UV_ENOMEM;
    return NULL;
  }
  return g;
}

static struct holder *find(struct holding *g, const char *name) {
  for (size_t i = 0; i < g->n; i++)
    if (strcmp(g->e[i].name, name) == 0)
      return &g->e[i];
  return NULL;
}

int holders_note(struct holders *h, const char *hex, const char *name, int held,
                 const char *repo, const char *ns, uint64_t now) {
  if (!name[0] || strlen(name) >= HOLDERS_NAME_MAX)
    return UV_EINVAL;
  int err = 0;
  struct holding *g = get_or_add(h, hex, now, &err);
  if (!g)
    return err;
  drop_expired(g, now);
  if (repo && strlen(repo) < sizeof g->repo)
    strcpy(g->repo, repo);
  if (ns && strlen(ns) < sizeof g->ns)
    strcpy(g->ns, ns);
  struct holder *e = find(g, name);
  if (!e) {
    if (g->n == HOLDERS_PER_DIGEST) {
      /* the oldest goes: the newest are the likeliest to be streaming */
      size_t old = 0;
      for (size_t i = 1; i < g->n; i++)
        if (g->e[i].seq < g->e[old].seq)
          old = i;
      g->e[old] = g->e[--g->n];
    }
    e = &g->e[g->n++];
    memset(e, 0, sizeof *e);
    strcpy(e->name, name);
    e->seq = ++h->seq;
  } else if (!held) {
    e->seq = ++h->seq; /* asking again: it may have lost its copy */
    e->held = 0;
  }
  if (held)
    e->held = 1;
  e->expires_ms = now + (e->held ? HOLDERS_TTL_HELD_MS : HOLDERS_TTL_FETCHING_MS);
  return 0;
}

void holders_forget(struct holders *h, const char *hex, const char *name) {
  struct holding *g = strmap_get(&h->map, hex);
  if (!g)
    return;
  struct holder *e = find(g, name);
  if (e)
    *e = g->e[--g->n];
  if (g->n == 0 && g->uploads == 0)
    free(strmap_del(&h->map, hex));
}

size_t holders_pick(struct holders *h, const char *hex, const char *asker, unsigned fanout,
                    uint64_t now, holders_rank_fn rank, void *ud, const char **out,
                    size_t max) {
  struct holding *g = strmap_get(&h->map, hex);
  if (!g || max == 0 || fanout == 0)
    return 0;
  drop_expired(g, now);
  const struct holder *self = find(g, asker);
  uint64_t before = self ? self->seq : UINT64_MAX;
  struct cand {
    struct holder *e;
    int rank;
  } c[HOLDERS_PER_DIGEST];
  size_t n = 0;
  for (size_t i = 0; i < g->n; i++) {
    struct holder *e = &g->e[i];
    if (e->seq >= before || e->children >= fanout || strcmp(e->name, asker) == 0)
      continue;
    int rk = rank ? rank(ud, asker, e->name) : 0;
    if (rk < 0)
      continue;
    /* insertion sort: rank, then fewest askers, then oldest */
    size_t j = n++;
    while (j > 0 && (c[j - 1].rank > rk ||
                     (c[j - 1].rank == rk && (c[j - 1].e->children > e->children ||
                                              (c[j - 1].e->children == e->children &&
                                               c[j - 1].e->seq > e->seq))))) {
      c[j] = c[j - 1];
      j--;
    }
    c[j].e = e;
    c[j].rank = rk;
  }
  if (n > max)
    n = max;
  for (size_t i = 0; i < n; i++)
    out[i] = c[i].e->name;
  if (n)
    c[0].e->children++;
  return n;
}

size_t holders_known(struct holders *h, const char *hex, uint64_t now, const char **out,
                     size_t max) {
  struct holding *g = strmap_get(&h->map, hex);
  if (!g)
    return 0;
  drop_expired(g, now);
  size_t n = 0;
  for (size_t i = g->n; i-- > 0 && n < max;)
    if (g->e[i].held)
      out[n++] = g->e[i].name;
  return n;
}

void holders_upload_begin(struct holders *h, const char *hex) {
  int err = 0;
  struct holding *g = get_or_add(h, hex, 0, &err);
  if (g)
    g->uploads++;
}

void holders_upload_end(struct holders *h, const char *hex) {
  struct holding *g = strmap_get(&h->map, hex);
  if (!g || g->uploads == 0)
    return;
  if (--g->uploads == 0 && g->n == 0)
    free(strmap_del(&h->map, hex));
}

unsigned holders_uploads(const struct holders *h, const char *hex) {
  const struct holding *g = strmap_get(&h->map, hex);
  return g ? g->uploads : 0;
}

struct each_ctx {
  uint64_t now;
  holders_each_fn fn;
  void *ud;
};

static void each_one(const char *key, void *value, void *ud) {
  struct each_ctx *x = ud;
  struct holding *g = value;
  const char *names[HOLDERS_PER_DIGEST];
  size_t n = 0;
  for (int pass = 1; pass >= 0; pass--)
    for (size_t i = 0; i < g->n; i++)
      if (g->e[i].expires_ms > x->now && g->e[i].held == pass)
        names[n++] = g->e[i].name;
  if (n)
    x->fn(x->ud, key, names, n, g->repo, g->ns);
}

void holders_each(struct holders *h, uint64_t now, holders_each_fn fn, void *ud) {
  struct each_ctx x = {.now = now, .fn = fn, .ud = ud};
  strmap_each(&h->map, each_one, &x);
}

size_t holders_digests(const struct holders *h) { return h->map.count; }

size_t holders_parse_list(const char *v, char (*out)[HOLDERS_NAME_MAX], size_t max) {
  size_t n = 0;
  while (*v && n < max) {
    while (*v == ',' || *v == ' ' || *v == '\t')
      v++;
    size_t len = strcspn(v, ", \t");
    if (len > 0 && len < HOLDERS_NAME_MAX) {
      memcpy(out[n], v, len);
      out[n++][len] = '\0';
    }
    v += len;
  }
  return n;
}
