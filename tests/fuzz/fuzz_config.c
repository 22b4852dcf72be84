/*
 * fuzz_config.c - libFuzzer target for the whole configuration loader:
 * bytes -> UCL parse -> validation -> (when valid) export -> reload, which
 * must succeed and export identically. .include is refused.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mx_config *cfg = NULL;
    struct mx_config_errors errs = {0};
    int rc = mx_config_load_mem("fuzz.conf", (const char *)data, size, NULL, 0,
                                MX_CONFIG_NO_INCLUDE, &cfg, &errs);
    mx_config_errors_free(&errs);
    if (rc != 0)
        return 0;
    /* a valid snapshot must survive export -> load -> export unchanged */
    char *e1 = mx_config_export(cfg);
    if (e1) {
        struct mx_config *c2 = NULL;
        rc = mx_config_load_mem("export.conf", e1, strlen(e1), NULL, 0, MX_CONFIG_NO_INCLUDE,
                                &c2, &errs);
        if (rc != 0) {
            for (size_t i = 0; i < errs.n; i++)
                fprintf(stderr, "%s:%u: %s\n", errs.v[i].file, errs.v[i].line, errs.v[i].msg);
            fprintf(stderr, "export does not reload:\n%s\n", e1);
            abort();
        }
        char *e2 = mx_config_export(c2);
        if (e2 && strcmp(e1, e2) != 0) {
            fprintf(stderr, "export round trip differs:\n%s\n---\n%s\n", e1, e2);
            abort();
        }
        free(e2);
        mx_config_free(c2);
        mx_config_errors_free(&errs);
        free(e1);
    }
    mx_config_free(cfg);
    return 0;
}
