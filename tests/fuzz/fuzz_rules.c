/*
 * fuzz_rules.c - libFuzzer target for the rule-file parser: parse, expand
 * replace_tags, compile meta expressions, rewrite paragraph anchors; every
 * rule must come out with a consistent definition, and relaxing its regex's
 * repeats (mx_rules_relax_repeats) must stay within its bound, and dropping
 * its anchors (mx_rules_drop_anchors) must not lengthen it. Where PCRE2
 * compiles the regex, its reversal (mx_rules_reverse) must compile too, and
 * with its repeated group shared (mx_rules_share_repeats) it must match the
 * same subjects at the same offsets, and restricted to ASCII
 * (mx_rules_ascii_only) it must match ASCII subjects where it did.
 */
#include "scan/rules_internal.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

static pcre2_code *compile(const char *re, uint32_t fl)
{
    int err;
    PCRE2_SIZE off;
    return pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED, fl, &err, &off, NULL);
}

/* `b` (NULL: a regex that never matches) must match each subject where `a`
 * does, at the same offsets; abort() otherwise */
static void same_matches(const pcre2_code *a, const pcre2_code *b, const char *const *subj,
                         size_t nsubj)
{
    pcre2_match_data *m1 = pcre2_match_data_create_from_pattern(a, NULL);
    pcre2_match_data *m2 = b ? pcre2_match_data_create_from_pattern(b, NULL) : NULL;
    pcre2_match_context *mc = pcre2_match_context_create(NULL);
    if (mc)
        pcre2_set_match_limit(mc, 100000);
    for (size_t i = 0; m1 && (m2 || !b) && mc && i < nsubj; i++) {
        size_t n = strlen(subj[i]);
        int ra = pcre2_match(a, (PCRE2_SPTR)subj[i], n, 0, 0, m1, mc);
        int rb = b ? pcre2_match(b, (PCRE2_SPTR)subj[i], n, 0, 0, m2, mc) : PCRE2_ERROR_NOMATCH;
        if (ra == PCRE2_ERROR_MATCHLIMIT || rb == PCRE2_ERROR_MATCHLIMIT)
            continue;
        if ((ra >= 0) != (rb >= 0))
            abort();
        if (ra >= 0 && (pcre2_get_ovector_pointer(m1)[0] != pcre2_get_ovector_pointer(m2)[0] ||
                        pcre2_get_ovector_pointer(m1)[1] != pcre2_get_ovector_pointer(m2)[1]))
            abort();
    }
    pcre2_match_context_free(mc);
    pcre2_match_data_free(m1);
    pcre2_match_data_free(m2);
}

/* the rewrites of scan/engine.c, checked against PCRE2 itself */
static void check_rewrites(const struct mx_rule *r)
{
    bool x = (r->reflags & MX_RE_X) != 0;
    if (strlen(r->re) > 1024)
        return;
    uint32_t fl = PCRE2_CASELESS | PCRE2_MULTILINE | (x ? PCRE2_EXTENDED : 0);
    pcre2_code *pc = compile(r->re, fl);
    if (!pc)
        return;
    char *rev = mx_rules_reverse(r->re, x);
    if (rev) {
        pcre2_code *rc = compile(rev, fl);
        if (!rc)
            abort(); /* the reversal of a valid regex is one */
        pcre2_code_free(rc);
        free(rev);
    }
    /* restricted to ASCII: the same matches on ASCII subjects (2: none) */
    static const char *const ascii[] = {"",
                                        "a",
                                        "abc abc",
                                        "Ph@rmacy pharmacy",
                                        "x\ny\n",
                                        "1. Your name: ____",
                                        "<b>free</b> &#169; 100%"};
    char *as = NULL;
    int ar = mx_rules_ascii_only(r->re, x, &as);
    pcre2_code *ac = ar == 1 ? compile(as, fl) : NULL;
    if (ar == 1 && !ac)
        abort();
    if (ar >= 1)
        same_matches(pc, ac, ascii, sizeof ascii / sizeof *ascii);
    pcre2_code_free(ac);
    free(as);
    /* the repeated group shared: the same matches */
    static const char *const subjects[] = {"",
                                           "a",
                                           "aaaa",
                                           "abcabcabc",
                                           "ab ab ab\nab",
                                           "Your name: ____\nYour address: ____\n",
                                           "xyz 123 ,.;: xyz",
                                           "\n\n",
                                           "ababab ba"};
    char *sh = mx_rules_share_repeats(r->re, x, 0);
    pcre2_code *sc = sh ? compile(sh, fl) : NULL;
    if (sh && !sc)
        abort();
    if (sc)
        same_matches(pc, sc, subjects, sizeof subjects / sizeof *subjects);
    pcre2_code_free(sc);
    free(sh);
    pcre2_code_free(pc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mx_ruleset rs;
    mx_rules_init(&rs);
    if (mx_rules_parse(&rs, (const char *)data, size, "fuzz") == 0 && mx_rules_finish(&rs) == 0) {
        for (size_t i = 0; i < rs.nrules; i++) {
            const struct mx_rule *r = &rs.rules[i];
            if (r->type == MX_RULE_META && !r->meta)
                abort();
            if ((r->type == MX_RULE_BODY || r->type == MX_RULE_URI) && !r->re)
                abort();
            if (mx_rules_find(&rs, r->name) != (long)i)
                abort();
            if (r->re) {
                /* the relaxation stays within its bound (fuzz: "{11}" ->
                 * "{10,}" grew past a same-size buffer) */
                char *x = mx_rules_relax_repeats(r->re, 10, (r->reflags & MX_RE_X) != 0);
                if (!x || strlen(x) > 2 * strlen(r->re))
                    abort();
                /* dropping anchors never lengthens it */
                size_t xl = strlen(x);
                mx_rules_drop_anchors(x);
                if (strlen(x) > xl)
                    abort();
                free(x);
                check_rewrites(r);
            }
        }
    }
    mx_rules_free(&rs);
    return 0;
}
