/*
 * mxbench.c - the benchmark tool's entry point: dispatches to a subcommand.
 *
 *   mxbench smtp --target HOST:PORT --connections N --messages N --corpus DIR ...
 *   mxbench gen --seed N --count N --out DIR
 *   mxbench scan --rules PATH --corpus DIR [--repeat N] [--json]
 */
#include <stdio.h>
#include <string.h>

#include "perf/bench.h"

/* `mxbench scan` (perf/bench_scan.c); declared here, as perf/bench.h belongs
 * to the SMTP bench's owner */
int mx_bench_scan_main(int argc, char **argv);

static void usage(FILE *f)
{
    fprintf(f, "usage: mxbench COMMAND [options]\n"
               "  smtp   SMTP load generator (mxbench smtp --help)\n"
               "  gen    reproducible benchmark corpus (mxbench gen --help)\n"
               "  scan   scan-engine throughput per core (mxbench scan --help)\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "smtp") == 0)
        return mx_bench_smtp_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "gen") == 0)
        return mx_bench_gen_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "scan") == 0)
        return mx_bench_scan_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "mxbench: unknown command %s\n", argv[1]);
    usage(stderr);
    return 2;
}
