/*
 * archive_mem.c - what one archive walk costs in memory (developer tool, not
 * a test; docs/BENCHMARKS.md "2026-12-07, archive decoder memory checks").
 *
 *   archive_mem FILE [-c]
 *
 * Walks FILE once with mx_archive_walk() at the engine's default limits
 * (4 MiB, depth 3, 1000 members, 64 MiB decompressed; -c: also the 2000 ms
 * CPU budget) and a callback that only counts, then prints the flags
 * (A archive, E encrypted, C corrupt, L limit), members, bytes decompressed,
 * the thread's CPU time and how much this process's peak virtual size
 * (VmPeak: what libarchive allocated as declared, touched or not) and peak
 * resident size (VmHWM) grew. One process per file. It needs nothing but
 * scan/archive.c, so the same source builds against an older archive.c:
 *
 *   gcc -O2 -I. tests/scan/archive_mem.c scan/archive.c -larchive -llzma
 */
#include "scan/archive_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':')
            v = atol(line + kl + 1);
    if (f)
        fclose(f);
    return v;
}

static void count(void *ud, const struct mx_archive_member *mb)
{
    (void)mb;
    ++*(unsigned *)ud;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [-c]\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    static uint8_t buf[(4 << 20) + 1];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    const char *base = strrchr(argv[1], '/');
    base = base ? base + 1 : argv[1];
    struct mx_archive_limits lim = {
        .max_bytes = 4 << 20,
        .max_depth = 3,
        .max_members = 1000,
        .max_total = 64u << 20,
        .max_cpu_ns = argc > 2 && strcmp(argv[2], "-c") == 0 ? 2000000000ull : 0,
    };
    long peak0 = status_kb("VmPeak"), hwm0 = status_kb("VmHWM");
    unsigned seen = 0;
    struct mx_archive_usage use;
    uint64_t t0 = mx_cpu_ns();
    unsigned fl = mx_archive_walk(buf, n, base, &lim, count, &seen, &use);
    uint64_t t1 = mx_cpu_ns();
    printf("%-26s flags=%s%s%s%s members=%u out=%llu cpu_us=%llu vmpeak+=%ld KB hwm+=%ld KB\n",
           base, fl & MX_ARCH_ARCHIVE ? "A" : "", fl & MX_ARCH_ENCRYPTED ? "E" : "",
           fl & MX_ARCH_CORRUPT ? "C" : "", fl & MX_ARCH_LIMIT ? "L" : "", seen,
           (unsigned long long)use.total, (unsigned long long)((t1 - t0) / 1000),
           status_kb("VmPeak") - peak0, status_kb("VmHWM") - hwm0);
    return 0;
}
