/* metrics.h - process-wide Prometheus counters and gauges.
 *
 * A small table of (name, labels) -> value, rendered as Prometheus text on
 * /metrics. Labels are passed preformatted ("route=\"blob\",status=\"200\"")
 * and must be of low cardinality. Loop thread only.
 */
#ifndef REGMESH_NODE_METRICS_H
#define REGMESH_NODE_METRICS_H

#include <stdint.h>

struct buf;

enum metric_type { METRIC_COUNTER, METRIC_GAUGE };

/* metrics_describe registers a metric's help text and type (once). */
void metrics_describe(const char *name, enum metric_type type, const char *help);
void metrics_add(const char *name, const char *labels, uint64_t v);
void metrics_set(const char *name, const char *labels, int64_t v);
int64_t metrics_get(const char *name, const char *labels);
/* metrics_render appends every metric in Prometheus text format. */
int metrics_render(struct buf *out);
void metrics_reset(void);

#endif
