/*
 * fuzz_uri_name.c - arbitrary bytes as a body URI (the scanner's URI list is
 * text from the message) into mx_smtp_checks_uri_name(), the reduction to
 * the name a URIBL is asked for. Every name it returns must be one a DNS
 * query can carry: [a-z0-9_-] labels of 1..63 joined by single dots, no
 * dot at either end, within the output buffer. A short output buffer runs
 * too, so the size checks are exercised.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/checks_internal.h"

static void check_name(const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);
    if (n == 0 || n >= cap || s[0] == '.' || s[n - 1] == '.')
        abort();
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '.') {
            if (label == 0)
                abort();
            label = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
            abort();
        if (++label > 63)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a private NUL-terminated copy of exactly size bytes */
    char *uri = malloc(size + 1);
    if (!uri)
        return 0;
    memcpy(uri, data, size);
    uri[size] = 0;
    char out[256], small[12];
    int rc = mx_smtp_checks_uri_name(uri, out, sizeof out);
    if (rc == MX_URI_DOMAIN || rc == MX_URI_IP)
        check_name(out, sizeof out);
    else if (rc != -ENOENT)
        abort();
    rc = mx_smtp_checks_uri_name(uri, small, sizeof small);
    if (rc == MX_URI_DOMAIN || rc == MX_URI_IP)
        check_name(small, sizeof small);
    else if (rc != -ENOENT)
        abort();
    free(uri);
    return 0;
}
