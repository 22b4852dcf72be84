/*
 * test_console.c - counters, histogram math, renderers, JSON round trip,
 * the top screen and the HTTP endpoint of console/.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "console/console.h"

static void test_buckets(void **state)
{
    (void)state;
    assert_int_equal(mx_stats_bucket(0), 0);
    assert_int_equal(mx_stats_bucket(1), 0);
    assert_int_equal(mx_stats_bucket(2), 1);
    assert_int_equal(mx_stats_bucket(3), 2);
    assert_int_equal(mx_stats_bucket(4), 2);
    assert_int_equal(mx_stats_bucket(5), 3);
    assert_int_equal(mx_stats_bucket(1024), 10);
    assert_int_equal(mx_stats_bucket(1025), 11);
    assert_int_equal(mx_stats_bucket(1ull << 30), 30);
    assert_int_equal(mx_stats_bucket((1ull << 30) + 1), 31);
    assert_int_equal(mx_stats_bucket(UINT64_MAX), 31);
}

static void test_quantile(void **state)
{
    (void)state;
    struct mx_stats_hist h = {0};
    assert_true(mx_stats_hist_quantile(&h, 0.5) == 0);
    h.bucket[7] = 100; /* 64 < v <= 128 */
    h.count = 100;
    assert_true(mx_stats_hist_quantile(&h, 0.5) == 96.0);
    assert_true(mx_stats_hist_quantile(&h, 1.0) == 128.0);
    h.bucket[1] = 100; /* 1 < v <= 2 */
    h.count = 200;
    assert_true(mx_stats_hist_quantile(&h, 0.25) == 1.5);
    assert_true(mx_stats_hist_quantile(&h, 0.75) == 96.0);
}

#define PER_THREAD 200000

static void *worker(void *arg)
{
    unsigned slot = (unsigned)(uintptr_t)arg;
    if (slot < 2 && mx_stats_bind_slot(slot) != 0)
        return (void *)1;
    for (int i = 0; i < PER_THREAD; i++) {
        MX_STATS_INC(MSG_ACCEPTED);
        MX_STATS_ADD(BYTES_IN, 3);
    }
    mx_stats_observe(MX_HIST_FSYNC, 100);
    return NULL;
}

/* A fresh registry of 2 slots; fn runs on slot 0, slot 1 and an unbound thread
 * (its argument: 0, 1, 2), all at once. */
static void run_threads(void *(*fn)(void *))
{
    assert_int_equal(mx_stats_init(2), 0);
    pthread_t t[3];
    for (uintptr_t i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&t[i], NULL, fn, (void *)i), 0);
    for (int i = 0; i < 3; i++) {
        void *r;
        pthread_join(t[i], &r);
        assert_null(r);
    }
}

static void test_counting_threads(void **state)
{
    (void)state;
    run_threads(worker);
    struct mx_stats_snapshot *s = malloc(sizeof(*s));
    mx_stats_snapshot(s);
    assert_int_equal(s->nslots, 2);
    assert_int_equal(s->total[MX_STAT_MSG_ACCEPTED], 3 * PER_THREAD);
    assert_int_equal(s->total[MX_STAT_BYTES_IN], 9 * PER_THREAD);
    assert_int_equal(s->per_slot[0][MX_STAT_MSG_ACCEPTED], PER_THREAD);
    assert_int_equal(s->per_slot[1][MX_STAT_MSG_ACCEPTED], PER_THREAD);
    assert_int_equal(s->hist[MX_HIST_FSYNC].count, 3);
    assert_int_equal(s->hist[MX_HIST_FSYNC].bucket[7], 3);
    assert_int_equal(s->hist[MX_HIST_FSYNC].sum_us, 300);
    assert_int_equal(mx_stats_bind_slot(2), -EINVAL);
    assert_int_equal(mx_stats_init(0), -EINVAL);
    free(s);
    mx_stats_fini();
}

/* Rule hits by name: summed over slots and the shared table, most frequent
 * first, kept through JSON, Prometheus label values escaped, a full table
 * counts the rest as untracked. */
static void *rule_worker(void *arg)
{
    unsigned slot = (unsigned)(uintptr_t)arg;
    if (slot < 2 && mx_stats_bind_slot(slot) != 0)
        return (void *)1;
    for (unsigned i = 0; i < 1000; i++) {
        mx_stats_rule_hit("COMMON_RULE");
        if (i % 10 == slot)
            mx_stats_rule_hit("TENTH_RULE");
    }
    if (slot == 1) {
        char name[32];
        for (unsigned i = 0; i < MX_STATS_RULES_PER_SLOT + 50; i++) {
            snprintf(name, sizeof name, "R%u", i);
            mx_stats_rule_hit(name);
        }
    }
    mx_stats_rule_hit("Q\"UOTE\\D");
    return NULL;
}

static void test_rule_hits(void **state)
{
    (void)state;
    run_threads(rule_worker);
    struct mx_stats_snapshot *s = malloc(sizeof(*s));
    mx_stats_snapshot(s);
    assert_int_equal(s->nrules, MX_STATS_TOP_RULES);
    assert_string_equal(s->top_rules[0].name, "COMMON_RULE");
    assert_int_equal(s->top_rules[0].hits, 3000);
    assert_string_equal(s->top_rules[1].name, "TENTH_RULE");
    assert_int_equal(s->top_rules[1].hits, 300);
    assert_string_equal(s->top_rules[2].name, "Q\"UOTE\\D");
    /* slot 1's table held COMMON_RULE, TENTH_RULE and 2046 R names: the other 52
     * R names and its quoted name went untracked */
    assert_int_equal(s->top_rules[2].hits, 2);
    assert_int_equal(s->rules_untracked, 53);
    for (unsigned i = 1; i < s->nrules; i++)
        assert_true(s->top_rules[i].hits <= s->top_rules[i - 1].hits);

    char *j = mx_stats_render_json(s);
    assert_non_null(j);
    struct mx_stats_snapshot *back = malloc(sizeof(*back));
    assert_int_equal(mx_stats_parse_json(j, strlen(j), back), 0);
    assert_int_equal(back->nrules, s->nrules);
    for (unsigned i = 0; i < s->nrules; i++) {
        assert_string_equal(back->top_rules[i].name, s->top_rules[i].name);
        assert_int_equal(back->top_rules[i].hits, s->top_rules[i].hits);
    }
    assert_int_equal(back->rules_untracked, s->rules_untracked);
    char *p = mx_stats_render_prometheus(s);
    assert_non_null(strstr(p, "\nmxgate_rule_hits_total{rule=\"COMMON_RULE\"} 3000\n"));
    assert_non_null(strstr(p, "\nmxgate_rule_hits_total{rule=\"Q\\\"UOTE\\\\D\"} 2\n"));
    assert_non_null(strstr(p, "\nmxgate_rule_hits_untracked_total 53\n"));
    char *txt = mx_stats_render_text(s);
    assert_non_null(strstr(txt, "\nrule COMMON_RULE hits 3000\nrule TENTH_RULE hits 300\n"));
    free(txt);
    free(p);
    free(j);
    free(back);
    free(s);
    mx_stats_fini();
}

/* A known state: slot 0 and 1 count, a gauge goes negative on one slot. */
static struct mx_stats_snapshot *known(void)
{
    assert_int_equal(mx_stats_init(2), 0);
    assert_int_equal(mx_stats_bind_slot(0), 0);
    for (int i = 0; i < 5; i++)
        MX_STATS_INC(REPLY_2XX);
    MX_STATS_INC(CONN_OPEN);
    MX_STATS_INC(CONN_OPEN);
    MX_STATS_ADD(WORKER_BUSY_US, 1500000);
    mx_stats_observe(MX_HIST_SMTP_TXN, 3000);
    assert_int_equal(mx_stats_bind_slot(1), 0);
    MX_STATS_DEC(CONN_OPEN); /* closed on another core than opened: -1 here */
    MX_STATS_INC(REPLY_5XX);
    MX_STATS_INC(CONN_REJ_RATE);
    struct mx_stats_snapshot *s = malloc(sizeof(*s));
    mx_stats_snapshot(s);
    return s;
}

static void test_render_text(void **state)
{
    (void)state;
    struct mx_stats_snapshot *s = known();
    char *t = mx_stats_render_text(s);
    assert_non_null(t);
    assert_int_equal(strncmp(t, "conn_open 1\n", 12), 0); /* first line */
    assert_non_null(strstr(t, "\nreply_2xx 5\n"));
    assert_non_null(strstr(t, "\nreply_5xx 1\n"));
    assert_non_null(strstr(t, "\nconn_rej_rate 1\n"));
    /* 3000 us lies in (2048, 4096]: quantiles interpolate linearly in it */
    assert_non_null(strstr(t, "smtp_txn_us count 1 sum 3000 p50 3072 p90 3891 p99 4076\n"));
    assert_non_null(strstr(t, "worker 1 busy_us 0 loops 0 connections_open -1\n"));
    free(t);
    free(s);
    mx_stats_fini();
}

static void test_render_prometheus(void **state)
{
    (void)state;
    struct mx_stats_snapshot *s = known();
    char *p = mx_stats_render_prometheus(s);
    assert_non_null(p);
    assert_non_null(strstr(p, "# HELP mxgate_smtp_replies_total SMTP replies sent, by class\n"
                              "# TYPE mxgate_smtp_replies_total counter\n"
                              "mxgate_smtp_replies_total{class=\"2xx\"} 5\n"
                              "mxgate_smtp_replies_total{class=\"3xx\"} 0\n"
                              "mxgate_smtp_replies_total{class=\"4xx\"} 0\n"
                              "mxgate_smtp_replies_total{class=\"5xx\"} 1\n"));
    assert_non_null(strstr(p, "# TYPE mxgate_connections_open gauge\nmxgate_connections_open 1\n"));
    assert_non_null(strstr(p, "mxgate_worker_busy_seconds_total{worker=\"0\"} 1.500000\n"
                              "mxgate_worker_busy_seconds_total{worker=\"1\"} 0.000000\n"));
    assert_non_null(strstr(p, "mxgate_smtp_transaction_seconds_bucket{le=\"0.002048\"} 0\n"
                              "mxgate_smtp_transaction_seconds_bucket{le=\"0.004096\"} 1\n"));
    assert_non_null(strstr(p, "mxgate_smtp_transaction_seconds_bucket{le=\"+Inf\"} 1\n"
                              "mxgate_smtp_transaction_seconds_sum 0.003000\n"
                              "mxgate_smtp_transaction_seconds_count 1\n"));
    /* each HELP appears once per metric name */
    const char *q = strstr(p, "# HELP mxgate_smtp_replies_total");
    assert_null(strstr(q + 1, "# HELP mxgate_smtp_replies_total"));
    free(p);
    free(s);
    mx_stats_fini();
}

static void test_json_roundtrip(void **state)
{
    (void)state;
    struct mx_stats_snapshot *s = known();
    char *j = mx_stats_render_json(s);
    assert_non_null(j);
    assert_non_null(strstr(j, "\"reply_2xx\":5"));
    assert_non_null(strstr(j, "\"conn_open\":-1"));
    struct mx_stats_snapshot *r = malloc(sizeof(*r));
    assert_int_equal(mx_stats_parse_json(j, strlen(j), r), 0);
    assert_int_equal(r->time_ms, s->time_ms);
    assert_int_equal(r->nslots, 2);
    assert_memory_equal(r->total, s->total, sizeof(s->total));
    assert_memory_equal(r->per_slot[0], s->per_slot[0], sizeof(s->per_slot[0]));
    assert_memory_equal(r->per_slot[1], s->per_slot[1], sizeof(s->per_slot[1]));
    assert_memory_equal(r->hist, s->hist, sizeof(s->hist));
    assert_int_equal(mx_stats_parse_json("[1]", 3, r), -EINVAL);
    assert_int_equal(mx_stats_parse_json("{\"counters\":", 12, r), -EINVAL);
    free(j);
    free(r);
    free(s);
    mx_stats_fini();
}

static void test_top_render(void **state)
{
    (void)state;
    struct mx_stats_snapshot *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
    a->nslots = b->nslots = 40; /* more cores than fit on 24 rows */
    a->time_ms = 1000;
    b->time_ms = 3000;
    b->total[MX_STAT_MSG_ACCEPTED] = 20;
    b->total[MX_STAT_VERDICT_CLEAN] = 3;
    b->total[MX_STAT_VERDICT_SPAM] = 1;
    b->per_slot[0][MX_STAT_WORKER_BUSY_US] = 1000000; /* half of 2 s */
    b->nrules = MX_STATS_TOP_RULES; /* more than fit on one line */
    for (unsigned i = 0; i < b->nrules; i++) {
        snprintf(b->top_rules[i].name, sizeof b->top_rules[i].name, "RULE_NUMBER_%02u", i);
        b->top_rules[i].hits = 2000 - i;
    }
    char buf[8192];
    size_t n = mx_console_top_render(a, b, "12:00:00", buf, sizeof(buf), 24, 80);
    assert_int_equal(n, strlen(buf));
    unsigned lines = 0;
    for (char *p = buf; *p;) {
        char *nl = strchr(p, '\n');
        assert_non_null(nl);
        assert_true(nl - p <= 80);
        for (char *c = p; c < nl; c++)
            assert_true(*c >= 0x20 && *c < 0x7f);
        lines++;
        p = nl + 1;
    }
    assert_int_equal(lines, 24);
    assert_non_null(strstr(buf, "Messages/s   accepted 10  rejected 0"));
    assert_non_null(strstr(buf, "clean 75.0%  spam 25.0%"));
    assert_non_null(strstr(buf, "\nTop rules    RULE_NUMBER_00 2000  RULE_NUMBER_01 1999  RULE_NUMBER_02 1998\n"));
    assert_non_null(strstr(buf, "   0  [##########..........]  50%"));
    assert_non_null(strstr(buf, "more core(s)"));
    assert_non_null(strstr(buf, "\nq quits\n"));
    free(a);
    free(b);
}

static char *http_get(unsigned port, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return NULL;
    }
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return NULL;
    }
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    ssize_t r;
    while (len + 1 < cap && (r = read(fd, buf + len, cap - 1 - len)) > 0)
        len += (size_t)r;
    buf[len] = '\0';
    close(fd);
    return buf;
}

static int api(void *arg, const char *method, const char *path, char **body, const char **type)
{
    (void)arg;
    *type = "text/plain";
    if (asprintf(body, "%s %s\n", method, path) < 0)
        *body = NULL;
    return 200;
}

static void test_http(void **state)
{
    (void)state;
    struct mx_stats_snapshot *s = known();
    free(s);
    struct mx_console_http *h;
    assert_int_equal(mx_console_http_start("nonsense", NULL, NULL, &h), -EINVAL);
    assert_int_equal(mx_console_http_start("127.0.0.1:0", api, NULL, &h), 0);
    unsigned port = mx_console_http_port(h);
    assert_true(port > 0);
    char *r = http_get(port, "/metrics");
    assert_non_null(r);
    assert_non_null(strstr(r, " 200 OK\r\n"));
    assert_non_null(strstr(r, "text/plain; version=0.0.4"));
    assert_non_null(strstr(r, "\r\n\r\n# HELP mxgate_connections_open"));
    assert_non_null(strstr(r, "mxgate_smtp_replies_total{class=\"2xx\"} 5\n"));
    free(r);
    r = http_get(port, "/api/stats");
    assert_non_null(strstr(r, "application/json"));
    assert_non_null(strstr(r, "\"reply_2xx\":5"));
    free(r);
    r = http_get(port, "/api/stats?format=text");
    assert_non_null(strstr(r, "\nreply_2xx 5\n"));
    free(r);
    r = http_get(port, "/api/queue/list");
    assert_non_null(strstr(r, "\r\n\r\nGET /api/queue/list\n"));
    free(r);
    r = http_get(port, "/nothing");
    assert_non_null(strstr(r, " 404 Not Found\r\n"));
    free(r);
    mx_console_http_stop(h);
    mx_stats_fini();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets),          cmocka_unit_test(test_quantile),
        cmocka_unit_test(test_counting_threads), cmocka_unit_test(test_rule_hits),
        cmocka_unit_test(test_render_text),
        cmocka_unit_test(test_render_prometheus), cmocka_unit_test(test_json_roundtrip),
        cmocka_unit_test(test_top_render),       cmocka_unit_test(test_http),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
