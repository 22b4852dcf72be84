/*
 * mime_internal.h - streaming RFC 5322 / MIME parser used by the scan engine.
 *
 * The parser is fed the raw message in chunks split anywhere and reports,
 * through callbacks, every header field (unfolded), the start of every part
 * (with its parsed Content-Type / Content-Disposition), the part's body
 * decoded from its transfer encoding (base64, quoted-printable) as it arrives,
 * and the end of the part. It never buffers a body: memory is fixed at
 * creation (line buffer, header buffer, a stack of MX_MIME_MAX_DEPTH levels).
 *
 * Tree shape and decoded bytes follow Python's email.feedparser (the reference
 * of the differential test, tests/scan/mime_diff.py); docs/SCAN.md lists the
 * known, deliberate differences.
 */
#ifndef MX_SCAN_MIME_INTERNAL_H
#define MX_SCAN_MIME_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MX_MIME_MAX_DEPTH 24     /* nesting of multipart / message parts */
#define MX_MIME_MAX_PARTS 1024   /* parts per message; the rest is skipped */
#define MX_MIME_LINE_MAX 4096    /* longer lines are handled in pieces */
#define MX_MIME_HDR_MAX 16384    /* one unfolded header field */
#define MX_MIME_BOUNDARY_MAX 200 /* RFC 2046 says 70; be lenient */

/* Defect flags (malformed mail is parsed as well as possible and flagged). */
enum mx_mime_defect {
    MX_MIME_DEF_HDR_NO_SEPARATOR = 1u << 0, /* body began without blank line */
    MX_MIME_DEF_HDR_TRUNCATED = 1u << 1,    /* header field over MX_MIME_HDR_MAX */
    MX_MIME_DEF_HDR_BAD_LINE = 1u << 2,     /* continuation first, ":" first */
    MX_MIME_DEF_NO_BOUNDARY = 1u << 3,      /* multipart without boundary */
    MX_MIME_DEF_NO_START_BOUNDARY = 1u << 4,
    MX_MIME_DEF_NO_END_BOUNDARY = 1u << 5,
    MX_MIME_DEF_TOO_DEEP = 1u << 6,
    MX_MIME_DEF_TOO_MANY_PARTS = 1u << 7,
    MX_MIME_DEF_BAD_BASE64 = 1u << 8,
    MX_MIME_DEF_LONG_LINE = 1u << 9,
    MX_MIME_DEF_BAD_CTE = 1u << 10, /* unknown transfer encoding */
};

enum mx_mime_cte {
    MX_MIME_CTE_IDENTITY = 0, /* 7bit, 8bit, binary, unknown */
    MX_MIME_CTE_BASE64,
    MX_MIME_CTE_QP,
    MX_MIME_CTE_UU, /* x-uuencode: lines between "begin" and "end" */
};

/** What the parser knows about one part once its headers are read. */
struct mx_mime_part {
    unsigned index;            /* pre-order number; 0 is the message itself */
    unsigned depth;            /* 0 for the message */
    unsigned parent;           /* index of the parent (0 for the message) */
    char ctype[96];            /* lower-case "type/subtype" (Python's rules) */
    char charset[48];          /* lower-case, "" if none */
    char filename[256];        /* UTF-8: disposition filename, else type name */
    char disposition[24];      /* lower-case disposition type, "" if none */
    enum mx_mime_cte cte;
    bool multipart;            /* parsed as multipart (has a boundary) */
    bool message;              /* message/xxx: one child, the enclosed message */
    bool text;                 /* text/... type, or multipart/... without a boundary */
    bool attachment;           /* disposition attachment or has a file name */
    bool had_ctype;            /* a Content-Type header was present */
    uint64_t raw_bytes;        /* body bytes seen (before decoding) */
    uint64_t decoded_bytes;    /* bytes given to part_data */
};

/** Callbacks; any may be NULL. `ud` is the pointer given at creation. */
struct mx_mime_callbacks {
    /* One header field of part `p` (p->ctype is not yet known here), unfolded
     * as SpamAssassin does (each line break and the whitespace starting the
     * continuation line are one space), value with leading whitespace
     * removed, not RFC 2047 decoded. */
    void (*header)(void *ud, const struct mx_mime_part *p, const char *name, size_t nlen,
                   const char *value, size_t vlen);
    /* Headers of `p` are complete. */
    void (*part_begin)(void *ud, const struct mx_mime_part *p);
    /* Decoded body bytes of a leaf part (or the preamble of a multipart). */
    void (*part_data)(void *ud, const struct mx_mime_part *p, const uint8_t *d, size_t n);
    /* The part ended (children end before their parent). */
    void (*part_end)(void *ud, const struct mx_mime_part *p);
};

struct mx_mime_parser;

/** Allocate a parser (all memory it will ever use). NULL on ENOMEM. */
struct mx_mime_parser *mx_mime_parser_new(const struct mx_mime_callbacks *cb, void *ud);

/** Make the parser ready for a new message; allocates nothing. */
void mx_mime_parser_reset(struct mx_mime_parser *p);

/** Feed the next `n` raw bytes of the message. */
void mx_mime_parser_feed(struct mx_mime_parser *p, const uint8_t *buf, size_t n);

/** End of message: flushes decoders and closes every open part. */
void mx_mime_parser_end(struct mx_mime_parser *p);

/** Defect flags (enum mx_mime_defect) of the message so far. */
unsigned mx_mime_parser_defects(const struct mx_mime_parser *p);

/** Number of parts seen so far (including the message). */
unsigned mx_mime_parser_nparts(const struct mx_mime_parser *p);

void mx_mime_parser_free(struct mx_mime_parser *p);

/*
 * Decode RFC 2047 encoded words of a header value into UTF-8 (charsets via
 * iconv; undecodable words are kept as they are). Writes at most `cap`-1
 * bytes plus a NUL into `out`; returns the length written.
 */
size_t mx_mime_decode_header(const char *in, size_t n, char *out, size_t cap);

/*
 * Convert `n` bytes in `charset` to UTF-8 into `out` (at most cap bytes).
 * Returns bytes written; invalid sequences become U+FFFD. Unknown charsets
 * are copied with non-ASCII bytes replaced by U+FFFD... when not UTF-8.
 */
size_t mx_mime_to_utf8(const char *charset, const char *in, size_t n, char *out, size_t cap);

#endif
