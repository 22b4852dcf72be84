/*
 * scan_prof.c - developer tool: where does the scan engine spend its time?
 *
 * Loads rules (from the cache), scans every message file under the corpus
 * folders (fed in 16 KiB chunks) with a profile attached, and prints per
 * Hyperscan database: scope, organisation class, pattern count, stream state
 * size, calls, bytes, time, MB/s and match callbacks. The engine's input to
 * each database is captured, so the tool then replays it:
 *   - through each database alone (no MIME, no rendering: pure Hyperscan);
 *   - with -s, through every pattern compiled alone with the same flags and
 *     mode, printing the slowest patterns and those with the most callbacks.
 *
 * usage: scan_prof [-c CACHE] [-L LAYOUT] [-s] [-C] [-n TOP] [-x RULE [-R N]] -r RULES [-r RULES...] CORPUS...
 *   -C: replay with the caches evicted before each message (cold tables)
 *   -L 1: the original database organisation (see engine.c LAYOUT_VERSION)
 *   -x RULE: that rule's pattern alone as is, exact, relaxed, relaxed prefilter
 *   -R N: the bound of the relaxation for -x (repeats above N become {min(m,N),}; 10)
 *   -G SCOPE:KIND: organisation experiment: the patterns of every SCOPE
 *       database of class KIND (same input) regrouped by their cost alone
 *       (costliest together, the rest apart, all in one), each grouping
 *       compiled and replayed
 */
#include "scan/rules_internal.h"
#include "scan/scan.h"
#include "tests/scan/corpus_files.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <pcre2.h>
#include <hs/hs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* CPU time of this thread: the machine is shared, and wall time counts the
 * time other processes held the core */
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int count_cb(unsigned id, unsigned long long from, unsigned long long to, unsigned fl,
                    void *ctx)
{
    (void)id;
    (void)from;
    (void)to;
    (void)fl;
    ++*(uint64_t *)ctx;
    return 0;
}

/* -C: caches are evicted between messages (a write over this many bytes,
 * not timed), as the engine's other work and other databases do between
 * two calls of one database */
#define EVICT_BYTES (64u << 20)
static unsigned char *evict;

/* Replay a capture through db the way the engine called it; returns seconds
 * (of the Hyperscan calls only) and the number of match callbacks in
 * *matches. */
static double replay1(const hs_database_t *db, bool stream, const struct mx_scan_capture *c,
                      hs_scratch_t *scratch, uint64_t *matches)
{
    *matches = 0;
    double t = 0;
    size_t start = 0;
    for (size_t u = 0; u < c->nends; u++) {
        if (evict)
            for (size_t k = 0; k < EVICT_BYTES; k += 64)
                evict[k]++;
        double t0 = now();
        size_t end = c->ends[u];
        if (stream) {
            hs_stream_t *st;
            if (hs_open_stream(db, 0, &st) != HS_SUCCESS)
                return -1;
            /* the engine writes in chunks; one write per unit is close
             * enough for comparing databases with each other */
            if (end > start)
                hs_scan_stream(st, c->buf + start, (unsigned)(end - start), 0, scratch,
                               count_cb, matches);
            hs_close_stream(st, scratch, count_cb, matches);
        } else {
            hs_scan(db, c->buf + start, (unsigned)(end - start), 0, scratch, count_cb, matches);
        }
        t += now() - t0;
        start = end;
    }
    return t;
}

/* PCRE2 over the same units (a match or not per unit, as the engine
 * confirms); returns seconds, units matched in *hits */
static double replay_pcre(const pcre2_code *pc, const struct mx_scan_capture *c,
                          pcre2_match_data *md, uint64_t *hits)
{
    *hits = 0;
    double t0 = now();
    size_t start = 0;
    for (size_t u = 0; u < c->nends; u++) {
        size_t end = c->ends[u];
        *hits += pcre2_match(pc, (PCRE2_SPTR)c->buf + start, end - start, 0, 0, md, NULL) >= 0;
        start = end;
    }
    return now() - t0;
}

/* best of three replays: the least disturbed one */
static double replay(const hs_database_t *db, bool stream, const struct mx_scan_capture *c,
                     hs_scratch_t *scratch, uint64_t *matches)
{
    double best = -1;
    for (int i = 0; i < 3; i++) {
        double t = replay1(db, stream, c, scratch, matches);
        if (best < 0 || t < best)
            best = t;
    }
    return best;
}

struct single {
    const char *name;
    size_t db;
    int how;
    double pcre_s;
    uint64_t pcre_hits;
    double s;
    uint64_t matches;
    size_t state;
};

/* -G: a pattern of the class being regrouped, and its replay time alone */
struct gpat {
    char *expr;
    unsigned flags;
    double s; /* alone */
};

static int gpat_by_cost(const void *a, const void *b)
{
    double x = ((const struct gpat *)a)->s, y = ((const struct gpat *)b)->s;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* -G: one grouping (g[0..cut[0]), g[cut[0]..cut[1]), ...) compiled and
 * replayed over capture c; returns total seconds (or -1), compile seconds
 * in *ct, each database's seconds in parts (may be NULL) */
static double grouping(const struct gpat *g, const size_t *cut, size_t ncut, bool stream,
                       const struct mx_scan_capture *c, hs_scratch_t **scratch, double *ct,
                       double *parts)
{
    double total = 0;
    *ct = 0;
    size_t from = 0;
    for (size_t k = 0; k < ncut; k++) {
        size_t n = cut[k] - from;
        const char **ex = calloc(n, sizeof *ex);
        unsigned *fl = calloc(n, sizeof *fl), *ids = calloc(n, sizeof *ids);
        if (!ex || !fl || !ids)
            return -1;
        for (size_t i = 0; i < n; i++) {
            ex[i] = g[from + i].expr;
            fl[i] = g[from + i].flags;
            ids[i] = (unsigned)i;
        }
        hs_database_t *db = NULL;
        hs_compile_error_t *cerr = NULL;
        double c0 = now();
        hs_error_t hr = hs_compile_multi(ex, fl, ids, (unsigned)n,
                                         stream ? HS_MODE_STREAM : HS_MODE_BLOCK, NULL, &db, &cerr);
        *ct += now() - c0;
        free(ex);
        free(fl);
        free(ids);
        if (hr != HS_SUCCESS) {
            printf("  compile fails: %s\n", cerr ? cerr->message : "?");
            hs_free_compile_error(cerr);
            return -1;
        }
        hs_alloc_scratch(db, scratch);
        uint64_t m;
        double t = replay(db, stream, c, *scratch, &m);
        if (parts)
            parts[k] = t;
        total += t;
        hs_free_database(db);
        from = cut[k];
    }
    return total;
}

static void group_experiment(const struct mx_scan_engine *e, const struct mx_scan_prof *p,
                             const char *what, hs_scratch_t **scratch)
{
    char scope[32], kind[32], opt[16] = "";
    if (sscanf(what, "%31[^:]:%31[^:]:%15s", scope, kind, opt) < 2)
        return;
    bool ascii = strcmp(opt, "ascii") == 0; /* patterns restricted to ASCII input */
    size_t ndb = mx_scan_engine_ndbs(e), first = ndb, ng = 0;
    struct gpat *g = NULL;
    double now_s = 0;
    bool stream = false;
    for (size_t i = 0; i < ndb; i++) {
        struct mx_scan_dbview v;
        mx_scan_engine_dbview(e, i, &v);
        if (!v.db || strcmp(v.scope, scope) != 0 || strcmp(v.kind, kind) != 0)
            continue;
        if (first == ndb)
            first = i;
        else if (p->cap[i].len != p->cap[first].len || p->cap[i].nends != p->cap[first].nends)
            continue; /* another input (nosubject) */
        stream = v.stream;
        uint64_t m;
        now_s += replay(v.db, v.stream, &p->cap[first], *scratch, &m);
        for (size_t k = 0; k < v.npatterns; k++) {
            struct gpat *ng2 = realloc(g, (ng + 1) * sizeof *g);
            if (!ng2)
                return;
            g = ng2;
            if (mx_scan_engine_dbpattern(e, i, k, &g[ng].expr, &g[ng].flags) != 0)
                continue;
            char *ax = NULL;
            int ar = ascii ? mx_rules_ascii_only(g[ng].expr, false, &ax) : 0;
            if (ar == 2) { /* cannot match ASCII text */
                free(g[ng].expr);
                continue;
            }
            if (ar == 1) {
                free(g[ng].expr);
                g[ng].expr = ax;
            }
            size_t one = 1;
            double ct;
            g[ng].s = grouping(&g[ng], &one, 1, v.stream, &p->cap[first], scratch, &ct, NULL);
            ng++;
        }
    }
    if (!ng)
        return;
    qsort(g, ng, sizeof *g, gpat_by_cost);
    double sum = 0;
    for (size_t i = 0; i < ng; i++)
        sum += g[i].s;
    printf("\ngrouping %s: %zu patterns, input %.3f MB; as organised now %.2f ms; alone: sum %.2f ms\n",
           what, ng, (double)p->cap[first].len / 1e6, now_s * 1e3, sum * 1e3);
    static const size_t tops[] = {4, 8, 16, 32, 64};
    for (size_t t = 0; t < sizeof tops / sizeof *tops && tops[t] < ng; t++) {
        double top_s = 0;
        for (size_t i = 0; i < tops[t]; i++)
            top_s += g[i].s;
        size_t cut[3] = {tops[t], ng};
        double ct, parts[2];
        double s = grouping(g, cut, 2, stream, &p->cap[first], scratch, &ct, parts);
        printf("  costliest %3zu together (alone %.2f ms) %.2f ms + rest %.2f ms = %.2f ms (compile %.1f s)\n",
               tops[t], top_s * 1e3, parts[0] * 1e3, parts[1] * 1e3, s * 1e3, ct);
        if (stream) {
            double bct, bparts[2];
            grouping(g, cut, 2, false, &p->cap[first], scratch, &bct, bparts);
            printf("      in block mode: costliest %.2f ms + rest %.2f ms\n", bparts[0] * 1e3,
                   bparts[1] * 1e3);
        }
    }
    size_t all = ng;
    double ct;
    double s = grouping(g, &all, 1, stream, &p->cap[first], scratch, &ct, NULL);
    printf("  all in one: %.2f ms (compile %.1f s)\n", s * 1e3, ct);
    for (size_t i = 0; i < ng; i++)
        free(g[i].expr);
    free(g);
}

static int by_time(const void *a, const void *b)
{
    double x = ((const struct single *)a)->s, y = ((const struct single *)b)->s;
    return x < y ? 1 : x > y ? -1 : 0;
}

static int by_matches(const void *a, const void *b)
{
    uint64_t x = ((const struct single *)a)->matches, y = ((const struct single *)b)->matches;
    return x < y ? 1 : x > y ? -1 : 0;
}

int main(int argc, char **argv)
{
    const char *rules[16];
    size_t nr = 0;
    const char *cache = NULL;
    int singles = 0, top = 25, c;
    const char *exact = NULL, *regroup = NULL;
    int layout = 0; /* 0: the current one */
    unsigned relax = 10;
    while ((c = getopt(argc, argv, "r:c:sn:x:L:R:CG:")) != -1) {
        if (c == 'C') {
            evict = calloc(1, EVICT_BYTES);
            continue;
        }
        if (c == 'r' && nr < 16)
            rules[nr++] = optarg;
        else if (c == 'c')
            cache = optarg;
        else if (c == 's')
            singles = 1;
        else if (c == 'n')
            top = atoi(optarg);
        else if (c == 'x')
            exact = optarg;
        else if (c == 'L')
            layout = atoi(optarg);
        else if (c == 'G')
            regroup = optarg;
        else if (c == 'R')
            relax = (unsigned)atoi(optarg);
        else
            return 2;
    }
    for (int i = optind; i < argc; i++)
        corpus_files_load(argv[i]);
    struct mx_scan_opts o = {.rule_paths = rules, .n_rule_paths = nr, .cache_dir = cache};
    struct mx_scan_engine *e;
    char *err = NULL;
    if ((layout ? mx_scan_engine_load_layout(&o, layout, &e, &err)
                : mx_scan_engine_load(&o, &e, &err)) != 0) {
        fprintf(stderr, "load: %s\n", err ? err : "?");
        return 1;
    }
    const struct mx_ruleset *rs = mx_scan_engine_rules(e);
    size_t ndb = mx_scan_engine_ndbs(e);
    struct mx_scan_prof p = {0};
    p.db_ns = calloc(ndb, sizeof *p.db_ns);
    p.db_calls = calloc(ndb, sizeof *p.db_calls);
    p.db_bytes = calloc(ndb, sizeof *p.db_bytes);
    p.r_matches = calloc(rs->nrules + 1, sizeof *p.r_matches);
    p.r_pcre_ns = calloc(rs->nrules + 1, sizeof *p.r_pcre_ns);
    p.r_pcre_calls = calloc(rs->nrules + 1, sizeof *p.r_pcre_calls);
    p.cap = calloc(ndb, sizeof *p.cap);
    p.capture = true;
    struct mx_scan_worker *w = mx_scan_worker_new(e);
    if (!w || !p.db_ns || !p.db_calls || !p.db_bytes || !p.r_matches || !p.cap || !p.r_pcre_ns ||
        !p.r_pcre_calls)
        return 1;
    mx_scan_worker_set_prof(w, &p);
    size_t bytes = 0;
    double t0 = now();
    for (size_t i = 0; i < corpus_nfiles; i++) {
        struct mx_scan_msg *m = mx_scan_msg_begin(w);
        for (size_t off = 0; off < corpus_files[i].n; off += 16384) {
            size_t k = corpus_files[i].n - off < 16384 ? corpus_files[i].n - off : 16384;
            mx_scan_msg_feed(m, (const uint8_t *)corpus_files[i].b + off, k);
        }
        struct mx_scan_result r;
        mx_scan_msg_end(m, &r);
        mx_scan_msg_free(m);
        bytes += corpus_files[i].n;
    }
    double total = now() - t0;
    double hs_total = 0;
    for (size_t i = 0; i < ndb; i++)
        hs_total += (double)p.db_ns[i] / 1e9;
    printf("%zu messages, %.2f MB, %.3f s (%.2f MB/s); CPU; in Hyperscan calls %.3f s, elsewhere %.3f s\n",
           corpus_nfiles, (double)bytes / 1e6, total, (double)bytes / 1e6 / total, hs_total,
           total - hs_total);

    /* PCRE2 confirmations, costliest first */
    uint64_t pcre_total = 0;
    for (size_t i = 0; i < rs->nrules; i++)
        pcre_total += p.r_pcre_ns[i];
    printf("PCRE2 confirmations: %.2f ms in all; costliest rules:\n", (double)pcre_total / 1e6);
    for (int t = 0; t < top; t++) {
        size_t best = 0;
        for (size_t i = 1; i < rs->nrules; i++)
            if (p.r_pcre_ns[i] > p.r_pcre_ns[best])
                best = i;
        if (!p.r_pcre_ns[best])
            break;
        printf("  %-30s %c %8.2f ms %8llu calls\n", rs->rules[best].name,
               mx_scan_engine_rule_how(e, best), (double)p.r_pcre_ns[best] / 1e6,
               (unsigned long long)p.r_pcre_calls[best]);
        p.r_pcre_ns[best] = 0;
    }

    hs_scratch_t *scratch = NULL;
    for (size_t i = 0; i < ndb; i++) {
        struct mx_scan_dbview v;
        mx_scan_engine_dbview(e, i, &v);
        if (v.db)
            hs_alloc_scratch(v.db, &scratch);
    }
    printf("%-3s %-7s %-18s %-8s %4s %4s %6s %8s %8s %9s %8s %9s %9s %10s\n", "db", "scope",
           "target", "kind", "pats", "pcre", "state", "db-KB", "calls", "MB", "ms", "replay-ms",
           "MB/s", "callbacks");
    for (size_t i = 0; i < ndb; i++) {
        struct mx_scan_dbview v;
        mx_scan_engine_dbview(e, i, &v);
        size_t state = 0, dbsize = 0;
        if (v.db && v.stream)
            hs_stream_size(v.db, &state);
        if (v.db)
            hs_database_size(v.db, &dbsize);
        uint64_t cbs = 0, rm = 0;
        for (size_t k = 0; v.ids && k < v.npatterns; k++)
            cbs += p.r_matches[v.ids[k]];
        double rs_s = v.db ? replay(v.db, v.stream, &p.cap[i], scratch, &rm) : 0;
        printf(
            "%-3zu %-7s %-18.18s %-8s %4zu %4zu %6zu %8zu %8llu %9.3f %8.2f %9.2f %9.1f %10llu\n",
            i, v.scope, v.target, v.kind, v.npatterns, v.npcre, state, dbsize / 1024,
            (unsigned long long)p.db_calls[i], (double)p.db_bytes[i] / 1e6,
            (double)p.db_ns[i] / 1e6, rs_s * 1e3,
            rs_s > 0 ? (double)p.cap[i].len / 1e6 / rs_s : 0.0, (unsigned long long)cbs);
    }
    if (exact) {
        /* try one rule's pattern in exact mode (without the prefilter flag),
         * alone: compile time, state size, scan time on the same input */
        for (size_t i = 0; i < ndb; i++) {
            struct mx_scan_dbview v;
            mx_scan_engine_dbview(e, i, &v);
            for (size_t k = 0; v.ids && k < v.npatterns; k++) {
                if (strcmp(rs->rules[v.ids[k]].name, exact) != 0)
                    continue;
                char *expr;
                unsigned fl, id = 0;
                mx_scan_engine_dbpattern(e, i, k, &expr, &fl);
                char *relaxed = mx_rules_relax_repeats(expr, relax, false);
                printf("relaxed: %s\n", relaxed);
                for (int mode = 0; mode < 4; mode++) {
                    unsigned f = mode ? fl & ~(unsigned)HS_FLAG_PREFILTER : fl;
                    if (mode == 3)
                        f |= HS_FLAG_PREFILTER;
                    if (mode >= 2) {
                        free(expr);
                        expr = strdup(relaxed);
                    }
                    hs_database_t *db = NULL;
                    hs_compile_error_t *cerr = NULL;
                    double c0 = now();
                    hs_error_t hr = hs_compile_multi((const char *const *)&expr, &f, &id, 1,
                                                     v.stream ? HS_MODE_STREAM : HS_MODE_BLOCK,
                                                     NULL, &db, &cerr);
                    double c1 = now();
                    if (hr != HS_SUCCESS) {
                        printf("%s mode %d: compile fails after %.2f s: %s\n", exact,
                               mode, c1 - c0, cerr ? cerr->message : "?");
                        hs_free_compile_error(cerr);
                        continue;
                    }
                    size_t st = 0;
                    if (v.stream)
                        hs_stream_size(db, &st);
                    hs_alloc_scratch(db, &scratch);
                    uint64_t mt;
                    double t = replay(db, v.stream, &p.cap[i], scratch, &mt);
                    printf("%s mode %d: compile %.2f s, state %zu, scan %.2f ms, %llu matches\n", exact,
                           mode, c1 - c0, st, t * 1e3,
                           (unsigned long long)mt);
                    hs_free_database(db);
                }
                free(expr);
                free(relaxed);
            }
        }
    }
    if (regroup)
        group_experiment(e, &p, regroup, &scratch);
    if (!singles)
        return 0;

    /* every pattern alone, same flags and mode, same input */
    pcre2_match_data *md = pcre2_match_data_create(4, NULL);
    struct single *sg = NULL;
    size_t nsg = 0;
    for (size_t i = 0; i < ndb; i++) {
        struct mx_scan_dbview v;
        mx_scan_engine_dbview(e, i, &v);
        if (!v.db || !v.ids)
            continue;
        for (size_t k = 0; k < v.npatterns; k++) {
            char *expr;
            unsigned fl, id = 0;
            if (mx_scan_engine_dbpattern(e, i, k, &expr, &fl) != 0)
                continue;
            hs_database_t *db = NULL;
            hs_compile_error_t *cerr = NULL;
            if (hs_compile_multi((const char *const *)&expr, &fl, &id, 1,
                                 v.stream ? HS_MODE_STREAM : HS_MODE_BLOCK, NULL, &db,
                                 &cerr) != HS_SUCCESS) {
                hs_free_compile_error(cerr);
                free(expr);
                continue;
            }
            free(expr);
            hs_alloc_scratch(db, &scratch);
            struct single *ns = realloc(sg, (nsg + 1) * sizeof *ns);
            if (!ns)
                return 1;
            sg = ns;
            sg[nsg].name = rs->rules[v.ids[k]].name;
            sg[nsg].db = i;
            sg[nsg].state = 0;
            if (v.stream)
                hs_stream_size(db, &sg[nsg].state);
            sg[nsg].s = replay(db, v.stream, &p.cap[i], scratch, &sg[nsg].matches);
            sg[nsg].how = mx_scan_engine_rule_how(e, v.ids[k]);
            const pcre2_code *pc = mx_scan_engine_rule_pcre(e, v.ids[k]);
            sg[nsg].pcre_s = pc ? replay_pcre(pc, &p.cap[i], md, &sg[nsg].pcre_hits) : -1;
            nsg++;
            hs_free_database(db);
        }
    }
    double sum = 0;
    for (size_t i = 0; i < nsg; i++)
        sum += sg[i].s;
    printf("\n%zu patterns alone: sum %.1f ms\n", nsg, sum * 1e3);
    qsort(sg, nsg, sizeof *sg, by_time);
    printf("slowest alone (how: h exact, f prefilter; PCRE2 time and units matched):\n");
    for (size_t i = 0; i < nsg && (int)i < top; i++)
        printf("  %-30s db %-3zu %c %8.2f ms %10llu callbacks state %-4zu pcre2 %8.2f ms %llu\n",
               sg[i].name, sg[i].db, sg[i].how ? sg[i].how : '-', sg[i].s * 1e3,
               (unsigned long long)sg[i].matches, sg[i].state, sg[i].pcre_s * 1e3,
               (unsigned long long)sg[i].pcre_hits);
    qsort(sg, nsg, sizeof *sg, by_matches);
    printf("most callbacks alone:\n");
    for (size_t i = 0; i < nsg && (int)i < top; i++)
        printf("  %-30s db %-3zu %8.2f ms %10llu callbacks state %zu\n", sg[i].name, sg[i].db,
               sg[i].s * 1e3, (unsigned long long)sg[i].matches, sg[i].state);
    free(sg);
    pcre2_match_data_free(md);
    hs_free_scratch(scratch);
    mx_scan_worker_free(w);
    mx_scan_engine_free(e);
    corpus_files_free();
    return 0;
}
