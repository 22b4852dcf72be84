/*
 * charset_internal.h - streaming conversion of part text to UTF-8 (iconv for
 * declared charsets, UTF-8 with a windows-1252 fallback otherwise).
 */
#ifndef MX_SCAN_CHARSET_INTERNAL_H
#define MX_SCAN_CHARSET_INTERNAL_H

#include <iconv.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum { MX_CONV_UTF8 = 0, MX_CONV_ICONV = 1 };

/** Receives converted UTF-8 text in blocks. */
typedef void (*mx_utf8_emit_fn)(void *ud, const char *s, size_t n);

/** State of one conversion; lives inside the caller (no allocation). */
struct mx_utf8_conv {
    iconv_t cd; /* borrowed from the per-thread cache */
    int mode;
    uint8_t carry[16]; /* a character cut by the end of a chunk */
    size_t ncarry;
};

/** Start converting from `charset` (NULL/"" = UTF-8 with fallback). */
void mx_utf8_conv_open(struct mx_utf8_conv *c, const char *charset);

/** Convert the next chunk; characters may be split across chunks. */
void mx_utf8_conv_feed(struct mx_utf8_conv *c, const uint8_t *in, size_t n, mx_utf8_emit_fn emit,
                       void *ud);

/** End of text: flush what is held (incomplete characters become U+FFFD). */
void mx_utf8_conv_end(struct mx_utf8_conv *c, mx_utf8_emit_fn emit, void *ud);

#endif
