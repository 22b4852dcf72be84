/*
 * relays_dump.c - prints the X-Spam-Relays-* pseudo headers mxgate builds
 * from a message's Received chain (scan/received.c), in the form of
 * SpamAssassin's "spamassassin -D metadata" lines, for relays_parity.py:
 *
 *   == FILE
 *   X-Spam-Relays-Trusted: ...
 *   X-Spam-Relays-Untrusted: ...
 *   X-Spam-Relays-Internal: ...
 *   X-Spam-Relays-External: ...
 *
 * The header block ends at the first empty line; a field continues on lines
 * starting with a space or tab (up to 1024 fields).
 */
#include "scan/received_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, k = 0;
    char *b = malloc(cap);
    size_t got;
    while (b && (got = fread(b + k, 1, cap - k, f)) > 0) {
        k += got;
        if (k == cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) {
                free(b);
                b = NULL;
            }
            b = nb;
        }
    }
    fclose(f);
    *n = k;
    return b;
}

static int dump(const char *path)
{
    size_t n;
    char *b = read_file(path, &n);
    if (!b) {
        perror(path);
        return 1;
    }
    struct mx_rcvd_hdr h[1024];
    size_t nh = 0;
    size_t i = 0;
    while (i < n && nh < sizeof h / sizeof h[0]) {
        size_t e = i;
        while (e < n && b[e] != '\n')
            e++;
        size_t le = e > i && b[e - 1] == '\r' ? e - 1 : e;
        if (le == i)
            break; /* end of the header block */
        /* the value runs over the continuation lines */
        size_t ve = e;
        while (ve + 1 < n && (b[ve + 1] == ' ' || b[ve + 1] == '\t')) {
            ve++;
            while (ve < n && b[ve] != '\n')
                ve++;
        }
        const char *colon = memchr(b + i, ':', le - i);
        if (colon) {
            h[nh++] = (struct mx_rcvd_hdr){b + i, colon + 1, (size_t)(colon - (b + i)),
                                           ve - (size_t)(colon + 1 - b)};
        }
        i = ve + 1;
    }
    struct mx_relays rel = {.r = calloc(MX_RCVD_MAX_RELAYS, sizeof(struct mx_relay))};
    if (!rel.r) {
        free(b);
        return 1;
    }
    mx_relays_build(&rel, h, nh);
    static const char *const names[] = {"Trusted", "Untrusted", "Internal", "External"};
    static char out[1 << 18];
    printf("== %s\n", path);
    for (int w = 0; w < 4; w++) {
        mx_relays_string(&rel, (enum mx_relays_which)w, out, sizeof out);
        printf("X-Spam-Relays-%s: %s\n", names[w], out);
    }
    free(rel.r);
    free(b);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: relays_dump FILE...\n");
        return 2;
    }
    int rc = 0;
    for (int i = 1; i < argc; i++)
        rc |= dump(argv[i]);
    return rc;
}
