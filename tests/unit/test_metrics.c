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

static void test_metrics_merge_keeps_one_header_per_family(void **state)
{
    (void)state;
    sh_metrics_t *a = sh_metrics_new("session", "s-1");
    sh_metrics_t *b = sh_metrics_new("session", "s-2");
    (*sh_metrics_counter(a, "t_total", "Total", NULL)) = 1;
    (*sh_metrics_gauge(a, "t_gauge", "Gauge", NULL)) = 5;
    (*sh_metrics_counter(b, "t_total", "Total", NULL)) = 2;
    (*sh_metrics_counter(b, "t_only_b", "Only b", NULL)) = 3;
    sh_buf_t ta = {0}, tb = {0}, out = {0};
    assert_int_equal(sh_metrics_render(a, &ta), 0);
    assert_int_equal(sh_metrics_render(b, &tb), 0);
    const char *texts[] = {ta.data, tb.data};
    assert_int_equal(sh_metrics_merge(texts, 2, &out), 0);
    const char *expected = "# HELP t_total Total\n"
                           "# TYPE t_total counter\n"
                           "t_total{service=\"session\",instance=\"s-1\"} 1\n"
                           "t_total{service=\"session\",instance=\"s-2\"} 2\n"
                           "# HELP t_gauge Gauge\n"
                           "# TYPE t_gauge gauge\n"
                           "t_gauge{service=\"session\",instance=\"s-1\"} 5\n"
                           "# HELP t_only_b Only b\n"
                           "# TYPE t_only_b counter\n"
                           "t_only_b{service=\"session\",instance=\"s-2\"} 3\n";
    assert_string_equal(out.data, expected);
    sh_buf_free(&ta);
    sh_buf_free(&tb);
    sh_buf_free(&out);
    sh_metrics_destroy(&a);
    sh_metrics_destroy(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_merge_keeps_one_header_per_family),

        cmocka_unit_test(test_metrics_render_counters_gauges_histograms),
        cmocka_unit_test(test_metrics_quantiles_follow_buckets),
    };
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
