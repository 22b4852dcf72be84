/*
 * bench_scan.c - `mxbench scan`: the scan engine alone over a corpus, on one
 * core, beside the physical limit measured over the same bytes in the same
 * run (memchr and memcpy bandwidth).
 *
 *   mxbench scan --rules PATH [--rules PATH ...] --corpus DIR|MBOX
 *                [--repeat N] [--chunk BYTES] [--cache DIR] [--json]
 *
 * The corpus (a Maildir, an mbox, or a folder tree of message files) is loaded into memory first and turned back from SMTP wire form
 * into what the SMTP server hands the scanner (dot-unstuffed, CRLF line ends,
 * no "." terminator), so the timed loop is only the engine: begin, feed in
 * --chunk pieces (default 16 KiB, a typical receive size), end, free. The
 * engine comes from the compiled-database cache (--cache, default
 * /tmp/mxbench-hs-cache), so a second run does not recompile.
 *
 * MB/s counts the message bytes fed (10^6 bytes per second) per second of
 * this thread's CPU time (the machine may be shared: wall time would count
 * time the core ran someone else); the wall-clock figure is printed beside.
 */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "perf/bench.h"
#include "perf/corpus.h"
#include "scan/scan.h"

#define MAX_RULE_PATHS 32

/** `mxbench scan ...` (dispatched from mxbench.c). Returns the exit code. */
int mx_bench_scan_main(int argc, char **argv);

struct flat_msg {
    char *b;
    size_t n;
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* CPU time of this thread: "per core" means per second the core worked on
 * it, so time other processes of a shared machine held the core is left out */
static double cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Wire form -> what the scanner sees: drop the ".\r\n" terminator and undo
 * dot-stuffing (a line starting ".." loses one dot). */
static int unwire(const struct mx_bench_msg *w, struct flat_msg *out)
{
    size_t n = w->wire_len;
    if (n >= 3 && memcmp(w->wire + n - 3, ".\r\n", 3) == 0)
        n -= 3;
    out->b = malloc(n + 1);
    if (!out->b)
        return -ENOMEM;
    size_t o = 0;
    bool bol = true;
    for (size_t i = 0; i < n; i++) {
        char c = w->wire[i];
        if (bol && c == '.' && i + 1 < n && w->wire[i + 1] == '.') {
            bol = false;
            continue;
        }
        out->b[o++] = c;
        bol = c == '\n';
    }
    out->n = o;
    return 0;
}

/* ---- corpus: every regular file under a folder tree is one message ------ */

struct walk {
    char **paths;
    size_t n, cap;
};

static struct walk *walk_acc; /* nftw() has no user pointer */

static int walk_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    if (type != FTW_F || path[ftw->base] == '.')
        return 0;
    if (walk_acc->n == walk_acc->cap) {
        size_t nc = walk_acc->cap ? walk_acc->cap * 2 : 256;
        char **np = realloc(walk_acc->paths, nc * sizeof *np);
        if (!np)
            return -1;
        walk_acc->paths = np;
        walk_acc->cap = nc;
    }
    if (!(walk_acc->paths[walk_acc->n] = strdup(path)))
        return -1;
    walk_acc->n++;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int add_msg(struct flat_msg **fm, size_t *n, const struct mx_bench_msg *w)
{
    struct flat_msg *nf = realloc(*fm, (*n + 1) * sizeof *nf);
    if (!nf)
        return -ENOMEM;
    *fm = nf;
    int rc = unwire(w, &nf[*n]);
    if (rc == 0)
        (*n)++;
    return rc;
}

/* A Maildir or mbox goes through perf/corpus.c; any other folder is walked
 * recursively (the shared corpus is a tree of sources), one file a message.
 * Messages end up as the SMTP server hands them to the scanner. */
static int load_corpus(const char *path, struct flat_msg **fm, size_t *n)
{
    struct stat sb;
    char sub[4096];
    if (stat(path, &sb) != 0)
        return -errno;
    snprintf(sub, sizeof sub, "%s/cur", path);
    bool maildir = S_ISDIR(sb.st_mode) && access(sub, F_OK) == 0;
    snprintf(sub, sizeof sub, "%s/new", path);
    maildir = maildir || (S_ISDIR(sb.st_mode) && access(sub, F_OK) == 0);
    if (!S_ISDIR(sb.st_mode) || maildir) {
        struct mx_bench_corpus c;
        int rc = mx_bench_corpus_load(path, 0, 0, &c);
        if (rc)
            return rc;
        for (size_t i = 0; rc == 0 && i < c.n; i++)
            rc = add_msg(fm, n, &c.msgs[i]);
        mx_bench_corpus_free(&c);
        return rc;
    }
    struct walk acc = {0};
    walk_acc = &acc;
    int rc = nftw(path, walk_one, 32, FTW_PHYS) == 0 ? 0 : -ENOMEM;
    qsort(acc.paths, acc.n, sizeof *acc.paths, cmp_str);
    for (size_t i = 0; rc == 0 && i < acc.n; i++) {
        FILE *f = fopen(acc.paths[i], "rb");
        if (!f)
            continue;
        char *raw = NULL;
        size_t len = 0, cap = 0, k;
        char buf[65536];
        while (rc == 0 && (k = fread(buf, 1, sizeof buf, f)) > 0) {
            if (len + k > cap) {
                cap = (len + k) * 2;
                char *nr = realloc(raw, cap);
                if (!nr)
                    rc = -ENOMEM;
                else
                    raw = nr;
            }
            if (rc == 0) {
                memcpy(raw + len, buf, k);
                len += k;
            }
        }
        fclose(f);
        struct mx_bench_msg w;
        if (rc == 0 && len && (rc = mx_bench_msg_from_raw(raw, len, 0, &w)) == 0) {
            rc = add_msg(fm, n, &w);
            mx_bench_msg_free(&w);
        }
        free(raw);
    }
    for (size_t i = 0; i < acc.n; i++)
        free(acc.paths[i]);
    free(acc.paths);
    return rc ? rc : *n ? 0 : -ENOENT;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: mxbench scan --rules PATH [--rules PATH ...] --corpus DIR|MBOX\n"
               "                    [--repeat N] [--chunk BYTES] [--cache DIR] [--json]\n"
               "  scans every message of the corpus N times (default 3) on this core and\n"
               "  reports messages/s and MB/s beside memchr and memcpy over the same bytes\n");
}

/* Keeps the compiler from dropping the reference loops. */
static volatile uintptr_t sink;

int mx_bench_scan_main(int argc, char **argv)
{
    const char *rules[MAX_RULE_PATHS];
    size_t nrules = 0;
    const char *corpus = NULL, *cache = "/tmp/mxbench-hs-cache";
    unsigned long repeat = 3, chunk = 16384;
    bool json = false;
    static const struct option lo[] = {
        {"rules", required_argument, NULL, 'r'}, {"corpus", required_argument, NULL, 'c'},
        {"repeat", required_argument, NULL, 'n'}, {"chunk", required_argument, NULL, 'k'},
        {"cache", required_argument, NULL, 'C'},  {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'r':
            if (nrules == MAX_RULE_PATHS) {
                fprintf(stderr, "mxbench scan: at most %d --rules\n", MAX_RULE_PATHS);
                return 2;
            }
            rules[nrules++] = optarg;
            break;
        case 'c':
            corpus = optarg;
            break;
        case 'n':
            repeat = strtoul(optarg, NULL, 10);
            break;
        case 'k':
            chunk = strtoul(optarg, NULL, 10);
            break;
        case 'C':
            cache = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!nrules || !corpus || repeat == 0 || chunk == 0) {
        usage(stderr);
        return 2;
    }

    struct flat_msg *fm = NULL;
    size_t nmsg = 0;
    int rc = load_corpus(corpus, &fm, &nmsg);
    if (rc) {
        fprintf(stderr, "mxbench scan: cannot load corpus %s: %s\n", corpus, strerror(-rc));
        return 1;
    }
    size_t bytes = 0, maxlen = 0;
    for (size_t i = 0; i < nmsg; i++) {
        bytes += fm[i].n;
        if (fm[i].n > maxlen)
            maxlen = fm[i].n;
    }

    double t0 = now_s();
    struct mx_scan_opts o = {.rule_paths = rules, .n_rule_paths = nrules, .cache_dir = cache};
    struct mx_scan_engine *e;
    char *err = NULL;
    rc = mx_scan_engine_load(&o, &e, &err);
    if (rc) {
        fprintf(stderr, "mxbench scan: cannot load rules: %s\n", err ? err : strerror(-rc));
        free(err);
        return 1;
    }
    double load_s = now_s() - t0;
    struct mx_scan_stats st;
    mx_scan_engine_stats(e, &st);
    struct mx_scan_worker *w = mx_scan_worker_new(e);
    if (!w) {
        fprintf(stderr, "mxbench scan: cannot create a worker\n");
        return 1;
    }

    /* one untimed pass warms the message pool, caches and the JIT */
    unsigned long hits = 0, spam = 0;
    double scan_s = 0, scan_wall = 0;
    for (unsigned long pass = 0; pass <= repeat; pass++) {
        double p0 = cpu_s(), w0 = now_s();
        for (size_t i = 0; i < nmsg; i++) {
            struct mx_scan_msg *m = mx_scan_msg_begin(w);
            if (!m) {
                fprintf(stderr, "mxbench scan: out of memory\n");
                return 1;
            }
            for (size_t off = 0; off < fm[i].n; off += chunk) {
                size_t k = fm[i].n - off < chunk ? fm[i].n - off : chunk;
                mx_scan_msg_feed(m, (const uint8_t *)fm[i].b + off, k);
            }
            struct mx_scan_result r;
            mx_scan_msg_end(m, &r);
            if (pass == 0) {
                hits += r.nhits;
                spam += !!(r.flags & MX_SCAN_SPAM);
            }
            mx_scan_msg_free(m);
        }
        if (pass) {
            scan_s += cpu_s() - p0;
            scan_wall += now_s() - w0;
        }
    }

    /* the physical limit over the same bytes: memchr for a byte that is
     * rare in mail, memcpy into one buffer */
    char *dst = malloc(maxlen + 1);
    double memchr_s = 0, memcpy_s = 0;
    for (unsigned long pass = 0; dst && pass <= repeat; pass++) {
        double p0 = cpu_s();
        for (size_t i = 0; i < nmsg; i++)
            sink += (uintptr_t)memchr(fm[i].b, 0x01, fm[i].n);
        double p1 = cpu_s();
        for (size_t i = 0; i < nmsg; i++) {
            memcpy(dst, fm[i].b, fm[i].n);
            sink += (unsigned char)dst[fm[i].n / 2];
        }
        double p2 = cpu_s();
        if (pass) {
            memchr_s += p1 - p0;
            memcpy_s += p2 - p1;
        }
    }
    free(dst);

    double total = (double)bytes * (double)repeat;
    double msgs = (double)nmsg * (double)repeat;
    double mbps = total / scan_s / 1e6, mps = msgs / scan_s;
    double wall_mbps = total / scan_wall / 1e6;
    double chr_mbps = total / memchr_s / 1e6, cpy_mbps = total / memcpy_s / 1e6;
    if (json) {
        printf("{\"messages\":%zu,\"bytes\":%zu,\"repeat\":%lu,\"chunk\":%lu,"
               "\"rules_hs_exact\":%u,\"rules_hs_prefilter\":%u,\"rules_pcre_only\":%u,"
               "\"databases\":%u,\"load_seconds\":%.3f,\"from_cache\":%s,"
               "\"scan_cpu_seconds\":%.4f,\"scan_wall_seconds\":%.4f,"
               "\"messages_per_s\":%.1f,\"mb_per_s\":%.2f,\"wall_mb_per_s\":%.2f,"
               "\"memchr_mb_per_s\":%.1f,\"memcpy_mb_per_s\":%.1f,"
               "\"ratio_memchr\":%.5f,\"ratio_memcpy\":%.5f,\"hits\":%lu,\"spam\":%lu}\n",
               nmsg, bytes, repeat, chunk, st.hs_exact, st.hs_prefilter, st.pcre_only,
               st.databases, load_s, st.from_cache ? "true" : "false", scan_s, scan_wall, mps,
               mbps, wall_mbps,
               chr_mbps, cpy_mbps, mbps / chr_mbps, mbps / cpy_mbps, hits, spam);
    } else {
        printf("corpus    %zu messages, %.2f MB, %lu passes, %lu-byte chunks\n", nmsg,
               (double)bytes / 1e6, repeat, chunk);
        printf("rules     %u Hyperscan exact, %u prefilter+PCRE2, %u PCRE2 only, %u databases"
               " (%s, %.2f s)\n",
               st.hs_exact, st.hs_prefilter, st.pcre_only, st.databases,
               st.from_cache ? "from cache" : "compiled", load_s);
        printf("scan      %.1f messages/s  %.2f MB/s per core (CPU time; wall clock %.2f MB/s)"
               "  %lu rule hits, %lu spam per pass\n",
               mps, mbps, wall_mbps, hits, spam);
        printf("memchr    %.1f MB/s  (scan = %.4f of memchr)\n", chr_mbps, mbps / chr_mbps);
        printf("memcpy    %.1f MB/s  (scan = %.4f of memcpy)\n", cpy_mbps, mbps / cpy_mbps);
    }
    mx_scan_worker_free(w);
    mx_scan_engine_free(e);
    for (size_t i = 0; i < nmsg; i++)
        free(fm[i].b);
    free(fm);
    return 0;
}
