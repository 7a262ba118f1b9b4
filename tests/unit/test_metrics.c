/* test_metrics.c - Prometheus text rendering of counters and gauges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "../../common/buf.h"
#include "../../node/metrics.h"

static void test_render(void **state) {
  (void)state;
  metrics_reset();
  metrics_describe("rm_requests_total", METRIC_COUNTER, "Requests.");
  metrics_describe("rm_open", METRIC_GAUGE, "Open things.");
  metrics_add("rm_requests_total", "status=\"200\"", 2);
  metrics_add("rm_requests_total", "status=\"200\"", 3);
  metrics_add("rm_requests_total", "status=\"404\"", 1);
  metrics_set("rm_open", "", 7);
  metrics_set("rm_open", "", 4);
  assert_int_equal(metrics_get("rm_requests_total", "status=\"200\""), 5);
  struct buf b;
  buf_init(&b, 0);
  assert_int_equal(metrics_render(&b), 0);
  const char *want =
      "# HELP rm_open Open things.\n"
      "# TYPE rm_open gauge\n"
      "rm_open 4\n"
      "# HELP rm_requests_total Requests.\n"
      "# TYPE rm_requests_total counter\n"
      "rm_requests_total{status=\"200\"} 5\n"
      "rm_requests_total{status=\"404\"} 1\n";
  assert_string_equal(b.data, want);
  buf_free(&b);
}

/* Histogram buckets are cumulative, in seconds, with +Inf, _sum, _count;
 * a value on a bound counts in that bucket; floats render with 6 places. */
static void test_histogram_and_float(void **state) {
  (void)state;
  metrics_reset();
  metrics_describe("rm_seconds", METRIC_HISTOGRAM, "Time.");
  metrics_describe("rm_cpu_seconds_total", METRIC_COUNTER, "CPU.");
  metrics_observe_us("rm_seconds", "route=\"blob\"", 500);
  metrics_observe_us("rm_seconds", "route=\"blob\"", 1000);
  metrics_observe_us("rm_seconds", "route=\"blob\"", 3000);
  metrics_observe_us("rm_seconds", "route=\"blob\"", 120000000);
  metrics_set_float("rm_cpu_seconds_total", "", 1.25);
  assert_int_equal(metrics_hist_count("rm_seconds", "route=\"blob\""), 4);
  struct buf b;
  buf_init(&b, 0);
  assert_int_equal(metrics_render(&b), 0);
  assert_non_null(strstr(b.data, "rm_cpu_seconds_total 1.250000\n"));
  assert_non_null(strstr(b.data, "# TYPE rm_seconds histogram\n"));
  assert_non_null(strstr(b.data, "rm_seconds_bucket{route=\"blob\",le=\"0.001\"} 2\n"
                                 "rm_seconds_bucket{route=\"blob\",le=\"0.0025\"} 2\n"
                                 "rm_seconds_bucket{route=\"blob\",le=\"0.005\"} 3\n"));
  assert_non_null(strstr(b.data, "rm_seconds_bucket{route=\"blob\",le=\"60\"} 3\n"
                                 "rm_seconds_bucket{route=\"blob\",le=\"+Inf\"} 4\n"
                                 "rm_seconds_sum{route=\"blob\"} 120.004500\n"
                                 "rm_seconds_count{route=\"blob\"} 4\n"));
  buf_free(&b);
}

static void test_overflow_is_counted(void **state) {
  (void)state;
  metrics_reset();
  char labels[32];
  for (int i = 0; i < 1100; i++) {
    snprintf(labels, sizeof labels, "i=\"%d\"", i);
    metrics_add("rm_many", labels, 1);
  }
  struct buf b;
  buf_init(&b, 0);
  assert_int_equal(metrics_render(&b), 0);
  assert_non_null(strstr(b.data, "regmesh_metrics_dropped_series_total 76"));
  buf_free(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_render),
      cmocka_unit_test(test_histogram_and_float),
      cmocka_unit_test(test_overflow_is_counted),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
