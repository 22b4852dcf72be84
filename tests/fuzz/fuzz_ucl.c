/*
 * fuzz_ucl.c - libFuzzer target for the UCL parser (config/ucl.c): any bytes
 * as a whole file, and the same bytes as one -o override value. .include is
 * disabled so the fuzzer cannot wander the file system.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/ucl_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mx_ucl_doc doc = {.no_include = true};
    struct mx_ucl *root = NULL;
    struct mx_ucl_err err = {0};
    if (mx_ucl_parse_mem(&doc, "fuzz.conf", (const char *)data, size, &root, &err) == 0)
        mx_ucl_free(root);

    /* -o values are NUL-terminated strings: stop at the first NUL */
    char *text = malloc(size + 1);
    if (text) {
        memcpy(text, data, size);
        text[size] = '\0';
        struct mx_ucl *v = NULL;
        if (mx_ucl_parse_value(&doc, "-o", text, &v, &err) == 0)
            mx_ucl_free(v);
        free(text);
    }
    mx_ucl_doc_free(&doc);
    return 0;
}
