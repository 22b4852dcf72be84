/*
 * rule_harness.h - a scan engine on rules given as text, for the unit tests
 * that check rule values end to end (test_evals.c, test_received.c).
 *
 * Include after defining `static const char RULES[]` (the rule file text).
 * Gives cmocka group fixtures setup()/teardown(), the engine `eng` and its
 * worker `wk`, and scan(msg): the comma-joined reported hits of msg fed in
 * 7-byte chunks (a static buffer).
 */
#ifndef MX_TESTS_SCAN_RULE_HARNESS_H
#define MX_TESTS_SCAN_RULE_HARNESS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scan/scan.h"

static char rules_path[] = "/tmp/mxgate-test-rules-XXXXXX";
static struct mx_scan_engine *eng;
static struct mx_scan_worker *wk;

static int setup(void **state)
{
    (void)state;
    int fd = mkstemp(rules_path);
    if (fd < 0)
        return -1;
    ssize_t w = write(fd, RULES, sizeof RULES - 1);
    close(fd);
    if (w != (ssize_t)(sizeof RULES - 1))
        return -1;
    const char *paths[] = {rules_path};
    struct mx_scan_opts o = {.rule_paths = paths, .n_rule_paths = 1};
    char *err = NULL;
    if (mx_scan_engine_load(&o, &eng, &err)) {
        fprintf(stderr, "load: %s\n", err ? err : "?");
        free(err);
        return -1;
    }
    wk = mx_scan_worker_new(eng);
    return wk ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    mx_scan_worker_free(wk);
    mx_scan_engine_free(eng);
    unlink(rules_path);
    return 0;
}

static const char *scan(const char *msg)
{
    static char hits[1024];
    struct mx_scan_msg *m = mx_scan_msg_begin(wk);
    assert_non_null(m);
    size_t n = strlen(msg);
    for (size_t off = 0; off < n; off += 7)
        assert_int_equal(mx_scan_msg_feed(m, (const uint8_t *)msg + off, n - off < 7 ? n - off : 7),
                         0);
    struct mx_scan_result r;
    assert_int_equal(mx_scan_msg_end(m, &r), 0);
    hits[0] = 0;
    for (unsigned i = 0; i < r.nhits; i++) {
        strcat(hits, i ? "," : "");
        strcat(hits, r.hits[i]);
    }
    mx_scan_msg_free(m);
    return hits;
}

#endif
