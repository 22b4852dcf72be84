/*
 * bench.h - subcommands of the mxbench program (one file each).
 */
#ifndef MX_PERF_BENCH_H
#define MX_PERF_BENCH_H

/** `mxbench smtp ...`: SMTP load generator. Returns the process exit code. */
int mx_bench_smtp_main(int argc, char **argv);

/** `mxbench gen ...`: reproducible corpus generator. Returns the exit code. */
int mx_bench_gen_main(int argc, char **argv);

#endif
