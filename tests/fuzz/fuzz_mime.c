/*
 * fuzz_mime.c - libFuzzer target for the streaming MIME parser: the input is
 * parsed once whole and once in chunks whose sizes come from the first byte;
 * both must give the same part count and decoded byte count. Header values
 * also go through the RFC 2047 decoder.
 */
#include "scan/mime_internal.h"

#include <stdlib.h>
#include <string.h>

struct acc {
    uint64_t bytes;
    uint64_t hash;
};

static void on_header(void *ud, const struct mx_mime_part *p, const char *name, size_t nlen,
                      const char *value, size_t vlen)
{
    (void)ud;
    (void)p;
    (void)name;
    (void)nlen;
    char out[512];
    size_t n = mx_mime_decode_header(value, vlen, out, sizeof out);
    if (n >= sizeof out || out[n] != 0)
        abort();
}

static void on_data(void *ud, const struct mx_mime_part *p, const uint8_t *d, size_t n)
{
    struct acc *a = ud;
    (void)p;
    a->bytes += n;
    for (size_t i = 0; i < n; i++)
        a->hash = (a->hash ^ d[i]) * 0x100000001b3ull;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct mx_mime_parser *whole, *chunked;
    static struct acc a1, a2;
    struct mx_mime_callbacks cb = {.header = on_header, .part_data = on_data};
    if (!whole) {
        whole = mx_mime_parser_new(&cb, &a1);
        chunked = mx_mime_parser_new(&cb, &a2);
        if (!whole || !chunked)
            abort();
    }
    if (size == 0)
        return 0;
    unsigned step = 1 + data[0] % 16;
    memset(&a1, 0, sizeof a1);
    memset(&a2, 0, sizeof a2);
    mx_mime_parser_reset(whole);
    mx_mime_parser_reset(chunked);
    mx_mime_parser_feed(whole, data + 1, size - 1);
    mx_mime_parser_end(whole);
    for (size_t off = 1; off < size; off += step) {
        size_t k = size - off < step ? size - off : step;
        mx_mime_parser_feed(chunked, data + off, k);
    }
    mx_mime_parser_end(chunked);
    if (mx_mime_parser_nparts(whole) != mx_mime_parser_nparts(chunked) || a1.bytes != a2.bytes ||
        a1.hash != a2.hash)
        abort();
    return 0;
}
