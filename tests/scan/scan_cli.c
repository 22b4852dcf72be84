/*
 * scan_cli.c - developer tool: loads rule paths, prints the load statistics
 * and the skipped rules (-v), then scans each message file (fed in 4 KiB
 * chunks) and prints score, verdict and rules hit.
 * usage: scan_cli [-c CACHE_DIR] [-v] [-l] [-a] -r RULES [-r RULES...] FILE...
 *   -a: also print "FILE: all=R1,R2..." with every rule that hit, sub-rules
 *       (`__`) included
 *   -l: also list every rule as "rule NAME KIND", KIND one of header body
 *       rawbody uri full mimeheader mimeeval meta dlp attachment skipped (does not
 *       run: eval, network, ...) or zero (score 0, does not run)
 */
#include "scan/rules_internal.h"
#include "scan/scan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    const char *rules[16];
    size_t nr = 0;
    const char *cache = NULL;
    int verbose = 0, list = 0, all = 0, c;
    while ((c = getopt(argc, argv, "r:c:vla")) != -1) {
        if (c == 'r' && nr < 16)
            rules[nr++] = optarg;
        else if (c == 'c')
            cache = optarg;
        else if (c == 'v')
            verbose++;
        else if (c == 'l')
            list = 1;
        else if (c == 'a')
            all = 1;
        else
            return 2;
    }
    struct mx_scan_opts o = {.rule_paths = rules, .n_rule_paths = nr, .cache_dir = cache};
    struct mx_scan_engine *e;
    char *err = NULL;
    int rc = mx_scan_engine_load(&o, &e, &err);
    if (rc) {
        fprintf(stderr, "load: %d %s\n", rc, err ? err : "");
        free(err);
        return 1;
    }
    struct mx_scan_stats st;
    mx_scan_engine_stats(e, &st);
    printf("rules=%u regex=%u hs_exact=%u hs_prefilter=%u pcre_only=%u meta=%u skipped=%u "
           "zero_score=%u databases=%u cache=%d compile=%.2fs pcre_shared=%u located=%u "
           "ascii_variants=%u pcre_ascii=%u\n",
           st.rules, st.regex, st.hs_exact, st.hs_prefilter, st.pcre_only, st.meta, st.skipped,
           st.zero_score, st.databases, st.from_cache, st.compile_seconds, st.pcre_shared,
           st.located, st.ascii_variants, st.pcre_ascii);
    if (verbose) {
        const char *n, *why;
        for (size_t i = 0; mx_scan_engine_skipped(e, i, &n, &why) == 0; i++)
            printf("skipped %s: %s\n", n, why);
    }
    if (list) {
        static const char *const kinds[] = {"none", "header", "body", "rawbody", "uri", "full",
                                            "meta", "dlp", "attachment", "mimeheader", "skipped",
                                            "mimeeval", "native"};
        const struct mx_ruleset *rs = mx_scan_engine_rules(e);
        for (size_t i = 0; i < rs->nrules; i++) {
            const struct mx_rule *r = &rs->rules[i];
            bool regex = r->type == MX_RULE_HEADER || r->type == MX_RULE_BODY ||
                         r->type == MX_RULE_RAWBODY || r->type == MX_RULE_URI ||
                         r->type == MX_RULE_FULL || r->type == MX_RULE_MIMEHEADER;
            const char *k = r->type <= MX_RULE_NATIVE ? kinds[r->type] : "?";
            if (r->skip)
                k = "skipped";
            else if (r->score == 0 && !mx_rule_is_sub(r))
                k = "zero";
            else if (regex && !mx_scan_engine_rule_how(e, i) && !r->exists)
                k = "skipped";
            printf("rule %s %s\n", r->name, k);
        }
    }
    struct mx_scan_worker *w = mx_scan_worker_new(e);
    if (!w)
        return 1;
    for (int i = optind; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            perror(argv[i]);
            continue;
        }
        struct mx_scan_msg *m = mx_scan_msg_begin(w);
        uint8_t buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
            mx_scan_msg_feed(m, buf, n);
        fclose(f);
        struct mx_scan_result r;
        mx_scan_msg_end(m, &r);
        printf("%s: score=%.1f spam=%d tests=", argv[i], r.score, !!(r.flags & MX_SCAN_SPAM));
        for (unsigned k = 0; k < r.nhits; k++)
            printf("%s%s", k ? "," : "", r.hits[k]);
        printf("\n");
        if (all) {
            const struct mx_ruleset *rs = mx_scan_engine_rules(e);
            printf("%s: all=", argv[i]);
            for (size_t k = 0, n = 0; k < rs->nrules; k++)
                if (mx_scan_msg_rule_value(m, k) != 0)
                    printf("%s%s", n++ ? "," : "", rs->rules[k].name);
            printf("\n");
        }
        mx_scan_msg_free(m);
    }
    mx_scan_worker_free(w);
    mx_scan_engine_free(e);
    return 0;
}
