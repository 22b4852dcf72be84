/*
 * fuzz_rules.c - libFuzzer target for the rule-file parser: parse, expand
 * replace_tags, compile meta expressions; every rule must come out with a
 * consistent definition.
 */
#include "scan/rules_internal.h"

#include <stdlib.h>

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
        }
    }
    mx_rules_free(&rs);
    return 0;
}
