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
      cmocka_unit_test(test_overflow_is_counted),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
