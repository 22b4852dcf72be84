/*
 * fuzz_received_relays.c - arbitrary bytes as a header block into the
 * SpamAssassin Received parser (scan/received.c): every line "Name: value"
 * (continuation lines folded in) is a header field; Received values are
 * parsed into relays, X-Originating-IP & co. appended, trust inferred and
 * the four X-Spam-Relays-* strings rendered. Also the whole input as one
 * Received value.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scan/received_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a private copy of exactly size bytes, so reading past it is caught */
    char *p = malloc(size ? size : 1);
    if (!p)
        return 0;
    memcpy(p, data, size);
    static struct mx_relay r[MX_RCVD_MAX_RELAYS];
    static char out[1 << 16];
    char qms[MX_RCVD_FIELD];
    enum mx_rcvd_rc rc = mx_received_parse_line(p, size, &r[0], qms);
    if (rc == MX_RCVD_RELAY && mx_relay_as_string(&r[0], out, sizeof out) >= sizeof out)
        abort();

    struct mx_rcvd_hdr h[128];
    size_t nh = 0, i = 0;
    while (i < size && nh < 128) {
        size_t e = i;
        while (e < size && p[e] != '\n')
            e++;
        while (e + 1 < size && (p[e + 1] == ' ' || p[e + 1] == '\t')) {
            e++;
            while (e < size && p[e] != '\n')
                e++;
        }
        const char *colon = memchr(p + i, ':', e - i);
        if (colon)
            h[nh++] = (struct mx_rcvd_hdr){p + i, colon + 1, (size_t)(colon - (p + i)),
                                           e - (size_t)(colon + 1 - p)};
        i = e + 1;
    }
    struct mx_relays rel = {.r = r};
    mx_relays_build(&rel, h, nh);
    if (rel.n > MX_RCVD_MAX_RELAYS)
        abort();
    for (int w = 0; w < 4; w++) {
        size_t n = mx_relays_string(&rel, (enum mx_relays_which)w, out, sizeof out);
        if (n >= sizeof out || strlen(out) != n)
            abort();
    }
    free(p);
    return 0;
}
