/*
 * stats_demo.c - a helper for the console tests: fills the counters with a
 * known load, then either prints the Prometheus text (`prom`) for the
 * parser test, or runs mx_console_top() on a synthetic, growing snapshot
 * (`top`) for the tmux rendering test.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "console/console.h"

static void load(unsigned round)
{
    for (unsigned w = 0; w < 4; w++) {
        mx_stats_bind_slot(w);
        MX_STATS_ADD(CONN_TOTAL, 10 + round);
        MX_STATS_ADD(MSG_ACCEPTED, 100 * (w + 1));
        MX_STATS_ADD(REPLY_2XX, 500);
        MX_STATS_INC(REPLY_4XX);
        MX_STATS_ADD(VERDICT_CLEAN, 90);
        MX_STATS_ADD(VERDICT_SPAM, 10);
        for (unsigned i = 0; i < 10; i++)
            mx_stats_rule_hit("BAYES_99");
        for (unsigned i = 0; i <= w; i++)
            mx_stats_rule_hit("HTML_MESSAGE");
        MX_STATS_ADD(WORKER_BUSY_US, 250000 * (w + 1));
        MX_STATS_ADD(WORKER_LOOPS, 12345);
        MX_STATS_ADD(SPOOL_FLUSHES, 20);
        MX_STATS_ADD(SPOOL_FLUSHED_MSGS, 100);
        for (unsigned i = 0; i < 50; i++) {
            mx_stats_observe(MX_HIST_FSYNC, 500 + i * 20);
            mx_stats_observe(MX_HIST_SMTP_TXN, 2000 + i * 100);
        }
    }
    MX_STATS_INC(CONN_OPEN);
}

static unsigned rounds;

static int fetch(void *arg, struct mx_stats_snapshot *out)
{
    (void)arg;
    load(rounds++);
    mx_stats_snapshot(out);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || mx_stats_init(4) != 0)
        return 2;
    if (strcmp(argv[1], "prom") == 0) {
        load(0);
        struct mx_stats_snapshot s;
        mx_stats_snapshot(&s);
        char *p = mx_stats_render_prometheus(&s);
        if (!p)
            return 1;
        fputs(p, stdout);
        free(p);
        mx_stats_fini();
        return 0;
    }
    if (strcmp(argv[1], "top") == 0)
        return mx_console_top(fetch, NULL) == 0 ? 0 : 1;
    return 2;
}
