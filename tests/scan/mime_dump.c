/*
 * mime_dump.c - prints the part tree and decoded bytes of a message as the
 * streaming MIME parser sees them, in the canonical form that
 * mime_diff.py prints for Python's email package (the differential test).
 * The file is fed in chunks of varying size (argv[2] = seed, 0 = one chunk)
 * so that chunk boundaries land everywhere.
 *
 * Line per part, pre-order: depth kind ctype len fnv64 filename
 *   kind: M multipart, R message/..., L leaf, S skipped (delivery-status)
 */
#include "scan/mime_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rec {
    unsigned depth, nchildren;
    char kind;
    char ctype[96];
    char filename[256];
    uint64_t len, hash;
};

static struct rec recs[MX_MIME_MAX_PARTS];

static void on_begin(void *ud, const struct mx_mime_part *p)
{
    (void)ud;
    struct rec *r = &recs[p->index];
    r->depth = p->depth;
    r->kind = p->multipart ? 'M' : p->message ? 'R' : 'L';
    if (strcmp(p->ctype, "message/delivery-status") == 0)
        r->kind = 'S';
    snprintf(r->ctype, sizeof r->ctype, "%s", p->ctype);
    snprintf(r->filename, sizeof r->filename, "%s", p->filename);
    r->hash = 0xcbf29ce484222325ull;
    if (p->index)
        recs[p->parent].nchildren++;
}

static void on_data(void *ud, const struct mx_mime_part *p, const uint8_t *d, size_t n)
{
    (void)ud;
    struct rec *r = &recs[p->index];
    for (size_t i = 0; i < n; i++) {
        r->hash ^= d[i];
        r->hash *= 0x100000001b3ull;
    }
    r->len += n;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [SEED]\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    static uint8_t buf[1 << 24];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    unsigned seed = argc > 2 ? (unsigned)atoi(argv[2]) : 0;
    struct mx_mime_callbacks cb = {.part_begin = on_begin, .part_data = on_data};
    struct mx_mime_parser *p = mx_mime_parser_new(&cb, NULL);
    if (!p)
        return 1;
    size_t off = 0;
    while (off < n) {
        size_t k = n - off;
        if (seed) {
            seed = seed * 1103515245u + 12345u;
            k = 1 + (seed >> 16) % 97;
            if (k > n - off)
                k = n - off;
        }
        mx_mime_parser_feed(p, buf + off, k);
        off += k;
    }
    mx_mime_parser_end(p);
    unsigned np = mx_mime_parser_nparts(p);
    for (unsigned i = 0; i < np && i < MX_MIME_MAX_PARTS; i++) {
        struct rec *r = &recs[i];
        char kind = r->kind;
        if (kind == 'M' && r->nchildren == 0)
            kind = 'L'; /* no separator found: Python keeps the preamble */
        if (kind == 'L')
            printf("%u L %s %llu %016llx %s\n", r->depth, r->ctype, (unsigned long long)r->len,
                   (unsigned long long)r->hash, r->filename);
        else
            printf("%u %c %s %s\n", r->depth, kind, r->ctype, r->filename);
    }
    printf("defects %#x\n", mx_mime_parser_defects(p));
    mx_mime_parser_free(p);
    return 0;
}
