/*
 * fuzz_evals.c - arbitrary bytes into the native SpamAssassin evals
 * (scan/evals.c): the RFC 822 date parser on the whole input, and every eval
 * on a header block cut from the input (one header per line, "Name: value"),
 * with the MIME facts taken from its first bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "scan/evals_internal.h"

struct hdrs {
    const char *name[32], *value[32];
    size_t nl[32], vl[32], n;
};

static const char *get(void *ud, const char *name, size_t i, size_t *len)
{
    const struct hdrs *h = ud;
    size_t want = strlen(name);
    for (size_t k = 0; k < h->n; k++) {
        if (h->nl[k] != want || strncasecmp(h->name[k], name, want) != 0 || i-- > 0)
            continue;
        *len = h->vl[k];
        return h->value[k];
    }
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a private copy of exactly size bytes, so reading past it is caught */
    char *p = malloc(size ? size : 1);
    if (!p)
        return 0;
    memcpy(p, data, size);
    mx_native_parse_date(p, size);

    struct hdrs h = {.n = 0};
    for (size_t i = 0; i < size && h.n < 32;) {
        char *nl = memchr(p + i, '\n', size - i);
        size_t e = nl ? (size_t)(nl - p) : size;
        char *colon = memchr(p + i, ':', e - i);
        if (colon) {
            h.name[h.n] = p + i;
            h.nl[h.n] = (size_t)(colon - (p + i));
            h.value[h.n] = colon + 1;
            h.vl[h.n] = e - (size_t)(colon + 1 - p);
            h.n++;
        }
        i = e + 1;
    }
    static const char *const calls[] = {
        "eval:check_for_shifted_date('undef', '-96')", "eval:check_for_shifted_date('3', '6')",
        "eval:subject_is_all_caps()", "eval:check_header_count_range('Subject','2','999')",
        "eval:check_for_mime_html()", "eval:check_for_mime_html_only()",
        "eval:check_for_mime('mime_base64_encoded_text')", "eval:check_for_missing_to_header()",
        "eval:html_test('html')", "eval:check_body_length('128')"};
    struct mx_native_msg m = {.header = get, .ud = &h, .body_len = size};
    char ctype[32] = "", charset[32] = "", disp[16] = "";
    if (size >= 3) {
        size_t k = size < 31 ? size : 31;
        memcpy(ctype, p, k);
        ctype[k] = 0;
        memcpy(charset, p + size / 3, size - size / 3 < 31 ? size - size / 3 : 31);
        charset[31] = 0;
        memcpy(disp, p + size / 2, size - size / 2 < 15 ? size - size / 2 : 15);
        disp[15] = 0;
        mx_native_mime_part(&m.mime, ctype, charset, disp, p[0] & 1);
    }
    struct mx_native_state st = {0};
    for (size_t k = 0; k < sizeof calls / sizeof calls[0]; k++) {
        struct mx_native n;
        if (mx_native_parse(calls[k], calls[k] + strlen(calls[k]), &n))
            mx_native_eval(&n, &st, &m);
    }
    /* and the input as an eval call */
    struct mx_native n;
    if (mx_native_parse(p, p + size, &n))
        mx_native_eval(&n, &st, &m);
    free(p);
    return 0;
}
