/*
 * fuzz_rules.c - libFuzzer target for the rule-file parser: parse, expand
 * replace_tags, compile meta expressions, rewrite paragraph anchors; every
 * rule must come out with a consistent definition, and relaxing its regex's
 * repeats (mx_rules_relax_repeats) must stay within its bound, and dropping
 * its anchors (mx_rules_drop_anchors) must not lengthen it.
 */
#include "scan/rules_internal.h"

#include <stdlib.h>
#include <string.h>

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
            }
        }
    }
    mx_rules_free(&rs);
    return 0;
}
