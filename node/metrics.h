/* metrics.h - process-wide Prometheus counters and gauges.
 *
 * A small table of (name, labels) -> value, rendered as Prometheus text on
 * /metrics. Labels are passed preformatted ("route=\"blob\",status=\"200\"")
 * and must be of low cardinality. Loop thread only. Histograms live in a
 * table of their own, with the same bounds and the same overflow count.
 */
#ifndef REGMESH_NODE_METRICS_H
#define REGMESH_NODE_METRICS_H

#include <stdint.h>

struct buf;

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

/* metrics_describe registers a metric's help text and type (once). */
void metrics_describe(const char *name, enum metric_type type, const char *help);
void metrics_add(const char *name, const char *labels, uint64_t v);
void metrics_set(const char *name, const char *labels, int64_t v);
/* metrics_set_float: a gauge or counter that is not a whole number
 * (process_cpu_seconds_total), rendered with 6 decimals. */
void metrics_set_float(const char *name, const char *labels, double v);
int64_t metrics_get(const char *name, const char *labels);
/* metrics_observe_us counts one observation of a METRIC_HISTOGRAM family,
 * in microseconds; rendered in seconds with fixed buckets from 1 ms to
 * 60 s. */
void metrics_observe_us(const char *name, const char *labels, uint64_t us);
/* metrics_hist_count: the observations so far (tests). */
uint64_t metrics_hist_count(const char *name, const char *labels);
/* metrics_render appends every metric in Prometheus text format. */
int metrics_render(struct buf *out);
void metrics_reset(void);

#endif
