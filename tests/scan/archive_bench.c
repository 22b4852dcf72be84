/*
 * archive_bench.c - what the archive walk costs per attachment (developer
 * tool, not a test; see docs/SCAN.md "Attachments and DLP").
 *
 *   archive_bench RULES FILE... [-n N] [-m K]
 *
 * For each FILE (a zip, tar.gz, 7z ... or any file), two timings, each the
 * median of N runs (default 20), CPU time of this thread:
 *   walk  mx_archive_walk() with a callback that runs libmagic on every
 *         member's head that is not text, as the engine does (members,
 *         decompressed bytes reported); nomagic the same without libmagic
 *         (libarchive alone);
 *   msg   the whole engine with RULES on a message carrying FILE as a
 *         base64 attachment, and on the same message with the attachment's
 *         bytes changed so that it is no archive (first byte flipped, name
 *         .bin): the difference is what opening the archive adds.
 *   -m K  also the whole engine on one message carrying FILE K times (the
 *         per-message budget, scan.archive_max_message_*, at the defaults):
 *         printed as a second line, "xK", with the result's truncated flag.
 */
#include "scan/archive_internal.h"
#include "scan/scan.h"
#include "tests/scan/attach_msg.h"

#include <magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double cpu_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return v[n / 2];
}

struct count {
    magic_t magic;
    unsigned members;
    uint64_t size;
};

static void on_member(void *ud, const struct mx_archive_member *mb)
{
    struct count *c = ud;
    bool text = mb->headlen > 0;
    for (size_t i = 0; i < mb->headlen && text; i++)
        text = mb->head[i] >= 0x20 || mb->head[i] == '\t' || mb->head[i] == '\n' ||
               mb->head[i] == '\r' || mb->head[i] == '\f';
    /* as the engine does: text heads are text/plain without libmagic */
    if (mb->headlen && c->magic && !text)
        (void)magic_buffer(c->magic, mb->head, mb->headlen);
    c->members++;
    c->size += mb->size;
}

static char *make_msg(const char *name, const uint8_t *d, size_t len, size_t *out)
{
    char *m = attach_msg(name, d, len, out);
    if (!m)
        exit(1);
    return m;
}

static double time_msg(struct mx_scan_worker *w, const char *msg, size_t n, int runs,
                       unsigned *flags)
{
    double *t = calloc((size_t)runs, sizeof *t);
    for (int r = 0; r < runs; r++) {
        double t0 = cpu_us();
        struct mx_scan_msg *m = mx_scan_msg_begin(w);
        for (size_t off = 0; off < n; off += 65536)
            mx_scan_msg_feed(m, (const uint8_t *)msg + off, n - off < 65536 ? n - off : 65536);
        struct mx_scan_result res;
        mx_scan_msg_end(m, &res);
        *flags = res.flags;
        mx_scan_msg_free(m);
        t[r] = cpu_us() - t0;
    }
    double md = median(t, runs);
    free(t);
    return md;
}

int main(int argc, char **argv)
{
    int runs = 20, copies = 0;
    if (argc < 3) {
        fprintf(stderr, "usage: %s RULES FILE... [-n N] [-m K]\n", argv[0]);
        return 2;
    }
    for (int i = 2; i < argc - 1; i++) {
        if (strcmp(argv[i], "-n") == 0)
            runs = atoi(argv[i + 1]);
        if (strcmp(argv[i], "-m") == 0)
            copies = atoi(argv[i + 1]);
    }
    if (runs < 1)
        runs = 1;
    const char *paths[] = {argv[1]};
    struct mx_scan_opts o = {.rule_paths = paths, .n_rule_paths = 1};
    struct mx_scan_engine *e;
    char *err = NULL;
    if (mx_scan_engine_load(&o, &e, &err) != 0) {
        fprintf(stderr, "rules: %s\n", err ? err : "?");
        return 1;
    }
    struct mx_scan_worker *w = mx_scan_worker_new(e);
    magic_t mg = magic_open(MAGIC_MIME_TYPE | MAGIC_ERROR);
    if (!w || !mg || magic_load(mg, NULL) != 0)
        return 1;
    /* the engine's defaults */
    const struct mx_archive_limits lim = {4u << 20, 3, 1000, 64u << 20};
    printf("%-22s %8s %7s %9s %8s %9s %8s %8s %8s\n", "file", "bytes", "members", "unpacked",
           "walk_us", "nomagic_us", "msg_us", "plain_us", "added_us");
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0 || strcmp(argv[i], "-m") == 0) {
            i++;
            continue;
        }
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            perror(argv[i]);
            continue;
        }
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *d = malloc(n > 0 ? (size_t)n : 1);
        if (!d || fread(d, 1, (size_t)n, f) != (size_t)n) {
            fclose(f);
            return 1;
        }
        fclose(f);
        const char *base = strrchr(argv[i], '/');
        base = base ? base + 1 : argv[i];
        double *t = calloc((size_t)runs, sizeof *t);
        struct count c = {.magic = mg};
        unsigned af = 0;
        for (int r = 0; r < runs; r++) {
            c.members = 0;
            c.size = 0;
            double t0 = cpu_us();
            af = mx_archive_walk(d, (size_t)n, base, &lim, on_member, &c, NULL);
            t[r] = cpu_us() - t0;
        }
        double walk = median(t, runs);
        struct count c0 = {.magic = NULL};
        for (int r = 0; r < runs; r++) {
            double t0 = cpu_us();
            (void)mx_archive_walk(d, (size_t)n, base, &lim, on_member, &c0, NULL);
            t[r] = cpu_us() - t0;
        }
        double walk0 = median(t, runs);
        free(t);
        size_t ml;
        char *msg = make_msg(base, d, (size_t)n, &ml);
        unsigned fl, fl_plain;
        double tm = time_msg(w, msg, ml, runs, &fl);
        free(msg);
        d[0] ^= 0xff;
        msg = make_msg("plain.bin", d, (size_t)n, &ml);
        double tp = time_msg(w, msg, ml, runs, &fl_plain);
        free(msg);
        printf("%-22s %8ld %7u %9llu %8.0f %10.0f %8.0f %8.0f %8.0f%s%s%s\n", base, n, c.members,
               (unsigned long long)c.size, walk, walk0, tm, tp, tm - tp,
               af & MX_ARCH_LIMIT ? " limit" : "", af & MX_ARCH_CORRUPT ? " corrupt" : "",
               af & MX_ARCH_ENCRYPTED ? " encrypted" : "");
        d[0] ^= 0xff; /* the archive again */
        if (copies > 0) {
            struct attach_part *parts = calloc((size_t)copies, sizeof *parts);
            char(*names)[32] = calloc((size_t)copies, sizeof *names);
            if (!parts || !names)
                return 1;
            for (int k = 0; k < copies; k++) {
                snprintf(names[k], sizeof names[k], "%d-%.20s", k + 1, base);
                parts[k] = (struct attach_part){names[k], d, (size_t)n};
            }
            char *mm = attach_msgv(parts, (size_t)copies, &ml);
            if (!mm)
                return 1;
            unsigned fk;
            double tk = time_msg(w, mm, ml, runs, &fk);
            printf("%-22s x%-6d %17s %8s %10s %8.0f%s\n", base, copies, "", "", "", tk,
                   fk & MX_SCAN_TRUNCATED ? " truncated" : "");
            free(mm);
            free(parts);
            free(names);
        }
        free(d);
    }
    magic_close(mg);
    mx_scan_worker_free(w);
    mx_scan_engine_free(e);
    return 0;
}
