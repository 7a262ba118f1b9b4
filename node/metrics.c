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
#define METRIC_FAMILIES 128

/* what both tables (plain series, histograms) key their slots by */
struct skey {
  char name[METRIC_NAME_MAX];
  char labels[METRIC_LABELS_MAX];
  int used;
};

struct series {
  struct skey k; /* first: probe() sees slots as keys */
  int64_t value;
  double fvalue;
  int is_float;
};

struct family {
  char name[METRIC_NAME_MAX];
  const char *help;
  enum metric_type type;
};

/* Buckets (upper bounds, microseconds): from a cached HEAD to a cold pull
 * of a big layer. Fixed, so every series of a family lines up. */
static const uint64_t g_bounds_us[] = {1000,    2500,    5000,    10000,   25000,
                                       50000,   100000,  250000,  500000,  1000000,
                                       2500000, 5000000, 10000000, 30000000, 60000000};
#define HIST_BUCKETS (sizeof g_bounds_us / sizeof g_bounds_us[0])
#define HIST_SLOTS 256

struct hseries {
  struct skey k;
  uint64_t bucket[HIST_BUCKETS]; /* not cumulative; +Inf is count */
  uint64_t count, sum_us;
};

static struct series g_series[METRICS_SLOTS];
static struct hseries g_hist[HIST_SLOTS];
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

/* probe finds (name, labels) in a table of `slots` elements of `size`
 * bytes, each starting with a struct skey; with create, a new slot is
 * zeroed and keyed. NULL when absent, or when full (counted). */
static void *probe(void *table, size_t size, unsigned slots, const char *name,
                   const char *labels, int create) {
  if (!labels)
    labels = "";
  if (strlen(name) >= METRIC_NAME_MAX || strlen(labels) >= METRIC_LABELS_MAX) {
    g_dropped++;
    return NULL;
  }
  uint32_t h = fnv(name, labels) % slots;
  for (unsigned i = 0; i < slots; i++) {
    struct skey *k = (struct skey *)((char *)table + (size_t)((h + i) % slots) * size);
    if (!k->used) {
      if (!create)
        return NULL;
      memset(k, 0, size);
      k->used = 1;
      strcpy(k->name, name);
      strcpy(k->labels, labels);
      return k;
    }
    if (strcmp(k->name, name) == 0 && strcmp(k->labels, labels) == 0)
      return k;
  }
  if (create)
    g_dropped++;
  return NULL;
}

static struct series *lookup(const char *name, const char *labels, int create) {
  return probe(g_series, sizeof g_series[0], METRICS_SLOTS, name, labels, create);
}

static struct hseries *hlookup(const char *name, const char *labels, int create) {
  return probe(g_hist, sizeof g_hist[0], HIST_SLOTS, name, labels, create);
}

void metrics_observe_us(const char *name, const char *labels, uint64_t us) {
  struct hseries *s = hlookup(name, labels, 1);
  if (!s)
    return;
  size_t i = 0;
  while (i < HIST_BUCKETS && us > g_bounds_us[i])
    i++;
  if (i < HIST_BUCKETS)
    s->bucket[i]++;
  s->count++;
  s->sum_us += us;
}

uint64_t metrics_hist_count(const char *name, const char *labels) {
  struct hseries *s = hlookup(name, labels, 0);
  return s ? s->count : 0;
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

void metrics_set_float(const char *name, const char *labels, double v) {
  struct series *s = lookup(name, labels, 1);
  if (s) {
    s->is_float = 1;
    s->fvalue = v;
  }
}

int64_t metrics_get(const char *name, const char *labels) {
  struct series *s = lookup(name, labels, 0);
  return s ? s->value : 0;
}

static int cmp_series(const void *a, const void *b) {
  const struct series *x = *(const struct series *const *)a;
  const struct series *y = *(const struct series *const *)b;
  int c = strcmp(x->k.name, y->k.name);
  return c ? c : strcmp(x->k.labels, y->k.labels);
}

static const struct family *family_of(const char *name) {
  for (unsigned i = 0; i < g_nfamilies; i++)
    if (strcmp(g_families[i].name, name) == 0)
      return &g_families[i];
  return NULL;
}

static int cmp_hseries(const void *a, const void *b) {
  const struct hseries *x = *(const struct hseries *const *)a;
  const struct hseries *y = *(const struct hseries *const *)b;
  int c = strcmp(x->k.name, y->k.name);
  return c ? c : strcmp(x->k.labels, y->k.labels);
}

static int render_hist(struct buf *out, const struct hseries *s) {
  const char *sep = s->k.labels[0] ? "," : "";
  uint64_t cum = 0;
  int r = 0;
  for (size_t i = 0; i < HIST_BUCKETS && r == 0; i++) {
    cum += s->bucket[i];
    r = buf_appendf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", s->k.name, s->k.labels, sep,
                    (double)g_bounds_us[i] / 1e6, (unsigned long long)cum);
  }
  if (r == 0)
    r = buf_appendf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", s->k.name, s->k.labels, sep,
                    (unsigned long long)s->count);
  const char *lo = s->k.labels[0] ? "{" : "", *lc = s->k.labels[0] ? "}" : "";
  if (r == 0)
    r = buf_appendf(out, "%s_sum%s%s%s %.6f\n%s_count%s%s%s %llu\n", s->k.name, lo, s->k.labels,
                    lc, (double)s->sum_us / 1e6, s->k.name, lo, s->k.labels, lc,
                    (unsigned long long)s->count);
  return r;
}

static int render_hists(struct buf *out) {
  static struct hseries *order[HIST_SLOTS];
  size_t n = 0;
  for (unsigned i = 0; i < HIST_SLOTS; i++)
    if (g_hist[i].k.used)
      order[n++] = &g_hist[i];
  qsort(order, n, sizeof order[0], cmp_hseries);
  int r = 0;
  const char *last = "";
  for (size_t i = 0; i < n && r == 0; i++) {
    if (strcmp(order[i]->k.name, last) != 0) {
      const struct family *f = family_of(order[i]->k.name);
      if (f)
        r = buf_appendf(out, "# HELP %s %s\n# TYPE %s histogram\n", f->name, f->help,
                        f->name);
      last = order[i]->k.name;
    }
    if (r == 0)
      r = render_hist(out, order[i]);
  }
  return r;
}

int metrics_render(struct buf *out) {
  static struct series *order[METRICS_SLOTS];
  size_t n = 0;
  for (unsigned i = 0; i < METRICS_SLOTS; i++)
    if (g_series[i].k.used)
      order[n++] = &g_series[i];
  qsort(order, n, sizeof order[0], cmp_series);
  int r = 0;
  const char *last = "";
  for (size_t i = 0; i < n && r == 0; i++) {
    struct series *s = order[i];
    if (strcmp(s->k.name, last) != 0) {
      const struct family *f = family_of(s->k.name);
      if (f)
        r = buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help,
                        f->name, f->type == METRIC_COUNTER ? "counter" : "gauge");
      last = s->k.name;
    }
    if (r == 0) {
      char v[48];
      if (s->is_float)
        snprintf(v, sizeof v, "%.6f", s->fvalue);
      else
        snprintf(v, sizeof v, "%lld", (long long)s->value);
      if (s->k.labels[0])
        r = buf_appendf(out, "%s{%s} %s\n", s->k.name, s->k.labels, v);
      else
        r = buf_appendf(out, "%s %s\n", s->k.name, v);
    }
  }
  if (r == 0)
    r = render_hists(out);
  if (r == 0 && g_dropped)
    r = buf_appendf(out, "# HELP regmesh_metrics_dropped_series_total Series not recorded: "
                         "the table was full or a name too long.\n"
                         "# TYPE regmesh_metrics_dropped_series_total counter\n"
                         "regmesh_metrics_dropped_series_total %llu\n",
                    (unsigned long long)g_dropped);
  return r;
}

void metrics_reset(void) {
  memset(g_series, 0, sizeof g_series);
  memset(g_hist, 0, sizeof g_hist);
  g_nfamilies = 0;
  g_dropped = 0;
}
