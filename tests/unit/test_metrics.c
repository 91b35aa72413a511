/*  test_metrics.c - series are created once, rendered in the Prometheus
    text format, and histogram quantiles land in the right bucket.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "sh_metrics.h"

static void test_metrics_render_counters_gauges_histograms(void **state)
{
    (void)state;
    sh_metrics_t *m = sh_metrics_new("edge", "edge-1");
    assert_non_null(m);
    uint64_t *c = sh_metrics_counter(m, "t_requests_total", "Requests", "op=\"ping\"");
    assert_ptr_equal(c, sh_metrics_counter(m, "t_requests_total", "Requests", "op=\"ping\""));
    (*c) += 3;
    *sh_metrics_gauge(m, "t_in_flight", "In flight", NULL) = -2;
    sh_histogram_t *h = sh_metrics_histogram(m, "t_seconds", "Latency", NULL);
    sh_histogram_observe(h, 0.0004);
    sh_histogram_observe(h, 0.003);
    sh_histogram_observe(h, 100);
    sh_buf_t out = {0};
    assert_int_equal(sh_metrics_render(m, &out), 0);
    assert_non_null(strstr(out.data, "# TYPE t_requests_total counter\n"));
    assert_non_null(
        strstr(out.data, "t_requests_total{service=\"edge\",instance=\"edge-1\",op=\"ping\"} 3\n"));
    assert_non_null(strstr(out.data, "t_in_flight{service=\"edge\",instance=\"edge-1\"} -2\n"));
    assert_non_null(strstr(
        out.data, "t_seconds_bucket{service=\"edge\",instance=\"edge-1\",le=\"0.0005\"} 1\n"));
    assert_non_null(strstr(
        out.data, "t_seconds_bucket{service=\"edge\",instance=\"edge-1\",le=\"0.005\"} 2\n"));
    assert_non_null(
        strstr(out.data, "t_seconds_bucket{service=\"edge\",instance=\"edge-1\",le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(out.data, "t_seconds_count{service=\"edge\",instance=\"edge-1\"} 3\n"));
    /*  one HELP/TYPE per family  */
    const char *first = strstr(out.data, "# TYPE t_seconds");
    assert_null(strstr(first + 1, "# TYPE t_seconds"));
    sh_buf_free(&out);
    sh_metrics_destroy(&m);
    assert_null(m);
}

static void test_metrics_quantiles_follow_buckets(void **state)
{
    (void)state;
    sh_histogram_t h;
    memset(&h, 0, sizeof h);
    assert_true(sh_histogram_quantile(&h, 0.5) == 0);
    for (int i = 0; i < 99; i++)
        sh_histogram_observe(&h, 0.0007); /* bucket (0.0005, 0.001] */
    sh_histogram_observe(&h, 0.2);        /* bucket (0.1, 0.25] */
    double p50 = sh_histogram_quantile(&h, 0.5);
    double p999 = sh_histogram_quantile(&h, 0.999);
    assert_true(p50 > 0.0005 && p50 <= 0.001);
    assert_true(p999 > 0.1 && p999 <= 0.25);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_render_counters_gauges_histograms),
        cmocka_unit_test(test_metrics_quantiles_follow_buckets),
    };
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
