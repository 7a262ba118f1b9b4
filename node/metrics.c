/* metrics.c - a fixed-size open-addressing table of Prometheus series.
 *
 * Series are few (routes x statuses x sources), so a linear-probe table with
 * a hard cap keeps this allocation-free after start and trivially bounded:
 * past the cap new series are dropped and counted in one overflow series.
 */
#include "metrics.h"

#include "../common/buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define METRICS_SLOTS 1024
#define METRIC_NAME_MAX 64
#define METRIC_LABELS_MAX 160
#define METRIC_FAMILIES 64

struct series {
  char name[METRIC_NAME_MAX];
  char labels[METRIC_LABELS_MAX];
  int64_t value;
  int used;
};

struct family {
  char name[METRIC_NAME_MAX];
  const char *help;
  enum metric_type type;
};

static struct series g_series[METRICS_SLOTS];
static struct family g_families[METRIC_FAMILIES];
static unsigned g_nfamilies;
static uint64_t g_dropped;

static uint32_t fnv(const char *a, const char *b) {
  uint32_t h = 2166136261u;
  for (; *a; a++)
    h = (h ^ (uint8_t)*a) * 16777619u;
  h = (h ^ '|') * 16777619u;
  for (; *b; b++)
    h = (h ^ (uint8_t)*b) * 16777619u;
  return h;
}

static struct series *lookup(const char *name, const char *labels, int create) {
  if (!labels)
    labels = "";
  if (strlen(name) >= METRIC_NAME_MAX || strlen(labels) >= METRIC_LABELS_MAX) {
    g_dropped++;
    return NULL;
  }
  uint32_t h = fnv(name, labels) % METRICS_SLOTS;
  for (unsigned i = 0; i < METRICS_SLOTS; i++) {
    struct series *s = &g_series[(h + i) % METRICS_SLOTS];
    if (!s->used) {
      if (!create)
        return NULL;
      s->used = 1;
      strcpy(s->name, name);
      strcpy(s->labels, labels);
      s->value = 0;
      return s;
    }
    if (strcmp(s->name, name) == 0 && strcmp(s->labels, labels) == 0)
      return s;
  }
  if (create)
    g_dropped++;
  return NULL;
}

void metrics_describe(const char *name, enum metric_type type, const char *help) {
  for (unsigned i = 0; i < g_nfamilies; i++)
    if (strcmp(g_families[i].name, name) == 0)
      return;
  if (g_nfamilies == METRIC_FAMILIES || strlen(name) >= METRIC_NAME_MAX)
    return;
  struct family *f = &g_families[g_nfamilies++];
  strcpy(f->name, name);
  f->help = help;
  f->type = type;
}

void metrics_add(const char *name, const char *labels, uint64_t v) {
  struct series *s = lookup(name, labels, 1);
  if (s)
    s->value += (int64_t)v;
}

void metrics_set(const char *name, const char *labels, int64_t v) {
  struct series *s = lookup(name, labels, 1);
  if (s)
    s->value = v;
}

int64_t metrics_get(const char *name, const char *labels) {
  struct series *s = lookup(name, labels, 0);
  return s ? s->value : 0;
}

static int cmp_series(const void *a, const void *b) {
  const struct series *x = *(const struct series *const *)a;
  const struct series *y = *(const struct series *const *)b;
  int c = strcmp(x->name, y->name);
  return c ? c : strcmp(x->labels, y->labels);
}

static const struct family *family_of(const char *name) {
  for (unsigned i = 0; i < g_nfamilies; i++)
    if (strcmp(g_families[i].name, name) == 0)
      return &g_families[i];
  return NULL;
}

int metrics_render(struct buf *out) {
  static struct series *order[METRICS_SLOTS];
  size_t n = 0;
  for (unsigned i = 0; i < METRICS_SLOTS; i++)
    if (g_series[i].used)
      order[n++] = &g_series[i];
  qsort(order, n, sizeof order[0], cmp_series);
  int r = 0;
  const char *last = "";
  for (size_t i = 0; i < n && r == 0; i++) {
    struct series *s = order[i];
    if (strcmp(s->name, last) != 0) {
      const struct family *f = family_of(s->name);
      if (f)
        r = buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help,
                        f->name, f->type == METRIC_COUNTER ? "counter" : "gauge");
      last = s->name;
    }
    if (r == 0) {
      if (s->labels[0])
        r = buf_appendf(out, "%s{%s} %lld\n", s->name, s->labels, (long long)s->value);
      else
        r = buf_appendf(out, "%s %lld\n", s->name, (long long)s->value);
    }
  }
  if (r == 0 && g_dropped)
    r = buf_appendf(out, "regmesh_metrics_dropped_series_total %llu\n",
                    (unsigned long long)g_dropped);
  return r;
}

void metrics_reset(void) {
  memset(g_series, 0, sizeof g_series);
  g_nfamilies = 0;
  g_dropped = 0;
}
