/*
 * test_layout.c - proves that the current Hyperscan database organisation
 * (engine.c LAYOUT_VERSION) gives exactly the same hits as the original one
 * (layout 1: 48 patterns per database and scope, no classes) on the stock
 * SpamAssassin rules over every message of the shared corpus: the value of
 * every rule, sub-rules and metas included, per message; fed whole and in
 * small odd-sized chunks (stream writes cut anywhere must not change hits).
 *
 * And, as a reference independent of Hyperscan: every body and raw-body
 * rule counted once (no `multiple`) that Hyperscan ran exactly, or whose
 * prefilter match PCRE2 confirms (with a twin, a locator: engine.c), hits
 * exactly when PCRE2 alone matches the same kept text.
 *
 * Beside the corpus, 48 generated messages that fill in forms, so that the
 * __FILL_THIS_FORM_* rules (too large for PCRE2 as written, located
 * confirmation) hit and nearly hit; and 6 whose body text leaves ASCII
 * late, in the Subject, or outgrows the kept copy, with look-alike words
 * before and after, for the body databases' ASCII variants (engine.c,
 * ASCII MODE); and 5 that hit or nearly hit __YOUR_PASSWORD, which PCRE2
 * runs alone but an ASCII variant runs in Hyperscan (engine.c pcre_ascii()).
 *
 * Environment: SHARED_CORPUS (folder tree of messages), SCAN_CACHE_DIR.
 * Skips when Debian's spamassassin package (the stock rules) is missing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scan/rules_internal.h"
#include "scan/scan.h"
#include "tests/scan/corpus_files.h"

#define files corpus_files
#define nfiles corpus_nfiles

/* Scan file i with chunks of `chunk` bytes (0: whole) and store every
 * rule's value in v. */
static void values(struct mx_scan_worker *w, size_t nrules, size_t i, size_t chunk, double *v)
{
    struct mx_scan_msg *m = mx_scan_msg_begin(w);
    assert_non_null(m);
    const struct corpus_file *f = &files[i];
    size_t step = chunk ? chunk : f->n ? f->n : 1;
    for (size_t off = 0; off < f->n; off += step)
        assert_int_equal(
            mx_scan_msg_feed(m, (const uint8_t *)f->b + off, f->n - off < step ? f->n - off : step),
            0);
    struct mx_scan_result r;
    assert_int_equal(mx_scan_msg_end(m, &r), 0);
    for (size_t ri = 0; ri < nrules; ri++)
        v[ri] = mx_scan_msg_rule_value(m, ri);
    mx_scan_msg_free(m);
}

static void add_file(char *b, size_t n)
{
    struct corpus_file *nf = realloc(files, (nfiles + 1) * sizeof *nf);
    assert_non_null(nf);
    files = nf;
    files[nfiles].b = b;
    files[nfiles].n = n;
    nfiles++;
}

/* Append generated form-filling messages to the corpus (see the top). */
static void add_forms(void)
{
    static const char *const fields[] = {"full name",      "home address",
                                         "phone number",   "age",
                                         "occupation",     "country",
                                         "city",           "date of birth",
                                         "marital status", "sex",
                                         "email",          "bank name",
                                         "account number", "passport number",
                                         "zip code",       "monthly income",
                                         "next of kin",    "nationality"};
    static const char *const seps[] = {
        ": ____________\n",        ":\n", " ..........\n", ": \n\n", " / ", " and ",
        ": Please write it here\n"};
    uint32_t seed = 12345;
    for (int k = 0; k < 48; k++) {
        size_t cap = 8192, n = 0;
        char *b = malloc(cap);
        assert_non_null(b);
        n += (size_t)snprintf(b + n, cap - n,
                              "From: \"Barrister\" <a@example.net>\nTo: b@example.com\n"
                              "Subject: claim %d\nMessage-ID: <form%d@example.net>\n"
                              "Date: Mon, 07 Dec 2026 10:00:00 +0000\n\n"
                              "Dear friend,\nto claim the funds reply with the following:\n\n",
                              k, k);
        int nf = 1 + k % 7;
        for (int f = 0; f < nf; f++) {
            seed = seed * 1103515245u + 12345u;
            const char *fld = fields[(seed >> 8) % (sizeof fields / sizeof *fields)];
            const char *sep = seps[(seed >> 16) % (sizeof seps / sizeof *seps)];
            if ((k / 7) % 2)
                n += (size_t)snprintf(b + n, cap - n, "%d. ", f + 1);
            n += (size_t)snprintf(b + n, cap - n, "%s%s%s", (seed >> 24) & 1 ? "Your " : "", fld,
                                  sep);
        }
        n += (size_t)snprintf(b + n, cap - n, "\nRegards,\nJames\n");
        add_file(b, n);
    }
}

/* Messages for the ASCII variants (see the top). */
static void add_ascii_switches(void)
{
    static const char *const words[] = {"ph@rmacy", "cheap",  "v1agra", "pharmacy",
                                        "meds",     "online", "order",  "Ph-armacy",
                                        "the",      "and",    "now"};
    static const struct {
        const char *subject; /* raw header value */
        size_t filler;       /* ASCII bytes before the tail */
        const char *tail;    /* then this */
    } cases[] = {
        {"plain", 20000, "buy \xd1\x80h\xd0\xb0rmacy and ph\xc3\xa0rmacy here\n"},
        {"plain", 40000, "price \xe2\x82\xac 5 ph@rmacy\n"},
        {"=?UTF-8?B?cGjQsHJtYWN5?=", 20000, "ph@rmacy\n"},
        {"plain", 300000, "ph\xc3\xa0rmacy\n"},
        {"plain", 30000, "pharrmacy v1@gra\n"},
        {"ph\xc3\xa0rmacy", 500, "\n"},
        /* __YOUR_PASSWORD (PCRE2 alone; in ASCII MODE Hyperscan runs its
         * ASCII restriction, engine.c pcre_ascii()): ASCII to the end, a
         * look-alike, leaving ASCII after it, non-ASCII look-alikes, and
         * near misses */
        {"plain", 1000, "please reset the password today\n"},
        {"plain", 2000, "update the e-mail passw0rd here\nand y0ur pswd \n"},
        {"plain", 20000, "your pass_word\nprice \xe2\x82\xac 5\n"},
        {"plain", 500, "y\xc3\xb6ur p\xc3\xa0ssword\n"},
        {"plain", 3000, "yours password, the passport, reset password\n"},
    };
    uint32_t seed = 777;
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        size_t cap = cases[c].filler + 4096, n = 0;
        char *b = malloc(cap);
        assert_non_null(b);
        n += (size_t)snprintf(b + n, cap - n,
                              "From: a@example.net\nTo: b@example.com\nSubject: %s\n"
                              "Message-ID: <ascii%zu@example.net>\n"
                              "Date: Mon, 07 Dec 2026 10:00:00 +0000\n"
                              "Content-Type: text/plain; charset=utf-8\n"
                              "Content-Transfer-Encoding: 8bit\n\n",
                              cases[c].subject, c);
        while (n < cases[c].filler) {
            seed = seed * 1103515245u + 12345u;
            const char *w = words[(seed >> 8) % (sizeof words / sizeof *words)];
            n += (size_t)snprintf(b + n, cap - n, "%s%s", w, (seed >> 20) % 9 ? " " : ".\n");
        }
        n += (size_t)snprintf(b + n, cap - n, "\n%s", cases[c].tail);
        add_file(b, n);
    }
}

static void test_layouts_same_hits(void **state)
{
    (void)state;
    FILE *probe = fopen("/usr/share/spamassassin/72_active.cf", "r");
    if (!probe)
        skip(); /* the spamassassin package is not installed */
    fclose(probe);
    const char *corpus = getenv("SHARED_CORPUS");
    assert_non_null(corpus);
    corpus_files_load(corpus);
    assert_true(nfiles > 100);
    add_forms();
    add_ascii_switches();

    const char *paths[] = {"/etc/spamassassin", "/usr/share/spamassassin"};
    struct mx_scan_opts o = {.rule_paths = paths, .n_rule_paths = 2,
                             .cache_dir = getenv("SCAN_CACHE_DIR")};
    struct mx_scan_engine *old, *cur;
    char *err = NULL;
    assert_int_equal(mx_scan_engine_load_layout(&o, 1, &old, &err), 0);
    assert_int_equal(mx_scan_engine_load(&o, &cur, &err), 0);
    const struct mx_ruleset *rs = mx_scan_engine_rules(cur);
    size_t nr = rs->nrules;
    assert_int_equal(mx_scan_engine_rules(old)->nrules, nr);
    /* the organisations really differ (else the test proves nothing) */
    assert_int_not_equal(mx_scan_engine_ndbs(old), mx_scan_engine_ndbs(cur));

    struct mx_scan_worker *wo = mx_scan_worker_new(old), *wc = mx_scan_worker_new(cur);
    assert_non_null(wo);
    assert_non_null(wc);
    double *vo = calloc(nr, sizeof *vo), *vc = calloc(nr, sizeof *vc),
           *vk = calloc(nr, sizeof *vk);
    assert_non_null(vo);
    assert_non_null(vc);
    assert_non_null(vk);
    size_t hits = 0, diffs = 0;
    for (size_t i = 0; i < nfiles; i++) {
        values(wo, nr, i, 0, vo);
        values(wc, nr, i, 0, vc);
        values(wc, nr, i, 7 + i % 90, vk);
        for (size_t ri = 0; ri < nr; ri++) {
            hits += vc[ri] != 0;
            if (vo[ri] != vc[ri] || vc[ri] != vk[ri]) {
                if (diffs++ < 20)
                    printf("# message %zu rule %s: layout 1 %g, current layout %g, chunked %g\n", i,
                           rs->rules[ri].name, vo[ri], vc[ri], vk[ri]);
            }
        }
    }
    printf("# %zu messages, %zu rule values compared per layout, %zu non-zero, %zu differ\n",
           nfiles, nfiles * nr, hits, diffs);
    assert_int_equal(diffs, 0);
    assert_true(hits > 1000); /* rules do hit: the comparison is not vacuous */
    free(vo);
    free(vc);
    free(vk);
    mx_scan_worker_free(wo);
    mx_scan_worker_free(wc);
    mx_scan_engine_free(old);

    /* PCRE2 alone as the reference for Hyperscan-exact body/raw-body rules */
    struct mx_scan_worker *w = mx_scan_worker_new(cur);
    assert_non_null(w);
    pcre2_match_data *md = pcre2_match_data_create(4, NULL);
    size_t checked = 0, agree_hits = 0, mismatch = 0, confirmed = 0, located_hits = 0,
           pcre_only_hits = 0;
    for (size_t i = 0; i < nfiles; i++) {
        struct mx_scan_msg *m = mx_scan_msg_begin(w);
        mx_scan_msg_feed(m, (const uint8_t *)files[i].b, files[i].n);
        struct mx_scan_result r;
        mx_scan_msg_end(m, &r);
        if (r.flags & MX_SCAN_TRUNCATED) {
            mx_scan_msg_free(m); /* kept text is a prefix: not comparable */
            continue;
        }
        for (size_t ri = 0; ri < nr; ri++) {
            const struct mx_rule *rule = &rs->rules[ri];
            int how = mx_scan_engine_rule_how(cur, ri);
            if ((rule->type != MX_RULE_BODY && rule->type != MX_RULE_RAWBODY) ||
                (rule->tflags & MX_TF_MULTIPLE) || (how != 'h' && how != 'f' && how != 'p'))
                continue;
            const pcre2_code *pc = mx_scan_engine_rule_pcre(cur, ri);
            if (!pc)
                continue;
            const char *s;
            size_t n;
            assert_int_equal(
                mx_scan_msg_kept(m,
                                 rule->type == MX_RULE_RAWBODY         ? "rawbody"
                                 : rule->tflags & MX_TF_NOSUBJECT ? "body:nosubject"
                                                                  : "body",
                                 &s, &n),
                0);
            bool ref = pcre2_match(pc, (PCRE2_SPTR)s, n, 0, 0, md, NULL) >= 0;
            bool got = mx_scan_msg_rule_value(m, ri) != 0;
            checked++;
            agree_hits += ref && got;
            confirmed += how == 'f';
            located_hits += ref && got && strncmp(rule->name, "__FILL_THIS_FORM_", 17) == 0;
            pcre_only_hits += ref && got && how == 'p';
            if (ref != got && mismatch++ < 20)
                printf("# message %zu rule %s: Hyperscan %d, PCRE2 %d\n", i, rule->name, got, ref);
        }
        mx_scan_msg_free(m);
    }
    printf("# PCRE2 reference: %zu (message, rule) pairs (%zu confirmed by PCRE2), %zu hits agree "
           "(%zu __FILL_THIS_FORM_*, %zu of rules PCRE2 runs alone), %zu differ\n",
           checked, confirmed, agree_hits, located_hits, pcre_only_hits, mismatch);
    assert_int_equal(mismatch, 0);
    assert_true(agree_hits > 50);
    assert_true(located_hits > 20); /* the generated forms do hit */
    assert_true(pcre_only_hits >= 4); /* __YOUR_PASSWORD in 4 generated messages */
    pcre2_match_data_free(md);
    mx_scan_worker_free(w);
    mx_scan_engine_free(cur);
    corpus_files_free();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layouts_same_hits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
