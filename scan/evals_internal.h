/*
 * evals_internal.h - the SpamAssassin eval tests mxgate computes natively.
 *
 * SpamAssassin's `eval:` rules call Perl functions of its plugins. The ones
 * here are computed from what the streaming scan already knows (headers,
 * MIME structure, body size) with SpamAssassin's own semantics; every other
 * eval stays skipped and listed by `mxgate --check`.
 */
#ifndef MX_SCAN_EVALS_INTERNAL_H
#define MX_SCAN_EVALS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum mx_native_fn {
    MX_NAT_NONE = 0,
    MX_NAT_SHIFTED_DATE,  /* check_for_shifted_date(min, max): Date vs Received, hours */
    MX_NAT_SUBJ_ALL_CAPS, /* subject_is_all_caps() */
    MX_NAT_HDR_COUNT,     /* check_header_count_range(name, min, max) */
    MX_NAT_MIME_HTML,     /* check_for_mime_html() */
    MX_NAT_MIME_HTML_ONLY, /* check_for_mime_html_only() */
    MX_NAT_MIME_FLAG,     /* check_for_mime('mime_...'): flag below (not mime_qp_count:
                           * SpamAssassin overwrites it with a count of needless
                           * =XX escapes in the raw QP lines, which are not kept) */
    MX_NAT_BODY_LENGTH,   /* check_body_length(max) */
    MX_NAT_MISSING_TO,    /* check_for_missing_to_header() */
    MX_NAT_HTML_MESSAGE,  /* html_test('html'): some text/html part had content */
};

enum mx_native_mime_flag {
    MX_NMF_BASE64_COUNT,
    MX_NMF_BASE64_TEXT,
    MX_NMF_BAD_ISO_CHARSET,
};

struct mx_native {
    uint8_t fn;   /* enum mx_native_fn */
    uint8_t flag; /* enum mx_native_mime_flag */
    bool lo_set, hi_set;
    double lo, hi;
    char hdr[64]; /* check_header_count_range: header name */
};

/**
 * Parse an eval call ("eval:name(args)", up to `e`). Returns true and fills
 * *out when mxgate computes that call natively.
 */
bool mx_native_parse(const char *s, const char *e, struct mx_native *out);

/** MIME facts over every part, containers included (SpamAssassin's MIMEEval). */
struct mx_native_mime {
    unsigned html, text, base64;
    bool base64_text, bad_iso_charset;
    bool html_rendered; /* a text/html leaf with content (SpamAssassin renders it) */
};

/** Account one part: lower-case type, charset, disposition type; cte 1 base64, else 0. */
void mx_native_mime_part(struct mx_native_mime *f, const char *ctype, const char *charset,
                         const char *disposition, int cte);

/** The message as the evals read it. Header values are unfolded, undecoded. */
struct mx_native_msg {
    /* the i-th value of header `name` (case-insensitive) or NULL past the last */
    const char *(*header)(void *ud, const char *name, size_t i, size_t *len);
    void *ud;
    struct mx_native_mime mime;
    uint64_t body_len; /* bytes after the header block, as received */
};

/** Per-message cache (the Date/Received difference is computed once). */
struct mx_native_state {
    bool have_diff;
    double date_diff; /* seconds: Date minus the closest Received date */
};

/** Value of one native eval for a message: 1 hit, 0 not. */
int mx_native_eval(const struct mx_native *n, struct mx_native_state *st,
                   const struct mx_native_msg *m);

/** SpamAssassin's parse_rfc822_date(): seconds since the epoch, or -1. */
int64_t mx_native_parse_date(const char *s, size_t n);

#endif
