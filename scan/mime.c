/*
 * mime.c - the streaming MIME parser (see mime_internal.h).
 *
 * Input is cut into lines (LF, CRLF or a bare CR end a line, like Python's
 * email package); a line longer than MX_MIME_LINE_MAX is passed on in pieces.
 * Every whole line is first compared with the boundaries of all open
 * multiparts (outermost first), then handed to the innermost open part:
 * header lines are unfolded into one header buffer, body lines are decoded on
 * the fly. The line ending of a body line is held back until the next line
 * arrives, because the ending before a boundary belongs to the boundary.
 */
#include "scan/mime_internal.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum lstate {
    L_HDR,      /* reading this part's headers */
    L_LEAF,     /* body of a leaf part */
    L_PREAMBLE, /* multipart before its first boundary */
    L_PARTS,    /* multipart with a child open */
    L_EPILOGUE, /* multipart after its close boundary */
    L_MESSAGE,  /* message/...: the child is open */
};

struct level {
    struct mx_mime_part part;
    enum lstate st;
    bool has_boundary;
    bool dup_boundary;   /* a boundary line was just seen: skip repeats */
    bool in_multipart;   /* some ancestor is a multipart */
    bool digest;         /* multipart/digest: children default message/rfc822 */
    bool default_rfc822; /* this part's default type is message/rfc822 */
    bool got_ct, got_cte, got_cd;
    unsigned nchildren;
    uint16_t blen;
    /* held-back line ending of the last body line */
    uint8_t eol[2];
    uint8_t eol_len;
    /* base64 state (binascii.a2b_base64 semantics, non-strict) */
    uint8_t b64_pos;
    uint8_t b64_left;
    unsigned b64_pads;
    bool b64_done;
    /* quoted-printable state (binascii.a2b_qp semantics) */
    uint8_t qp_state; /* 0 normal, 1 after '=', 2 skipping to LF, 3 one hex held */
    uint8_t qp_hex;
    /* uuencode state */
    uint8_t uu_state; /* 0 before "begin", 1 in data, 2 after "end" */
    /* not cleared when a level is reused (set before use) */
    char boundary[MX_MIME_BOUNDARY_MAX + 3]; /* "--" + boundary */
    char ct_name[256];                         /* Content-Type name= */
};

struct mx_mime_parser {
    struct mx_mime_callbacks cb;
    void *ud;
    unsigned defects;
    unsigned nparts;
    int top; /* index of the innermost open level, -1 when none */
    /* line assembly */
    size_t lb_len;
    bool lb_cont;   /* lb holds the rest of an overlong line */
    bool saw_cr;    /* previous chunk ended with CR */
    bool ended;
    /* header assembly for the innermost L_HDR level */
    size_t hb_len;  /* bytes in hb; 0 when no field is open */
    size_t hb_name; /* length of the field name */
    unsigned hdr_lines;
    unsigned bad_fields; /* lines passed over in the message's own headers */
    bool skip_cont;      /* ... and the continuation lines of the last one */
    struct level lv[MX_MIME_MAX_DEPTH + 1];
    uint8_t lb[MX_MIME_LINE_MAX];
    char hb[MX_MIME_HDR_MAX];
};

static void dispatch_line(struct mx_mime_parser *p, const uint8_t *s, size_t n, const uint8_t *eol,
                          size_t eol_len, bool cont);

/* ---- small string helpers ---------------------------------------------- */

static void copy_lower(char *dst, size_t cap, const char *s, size_t n)
{
    size_t k = n < cap - 1 ? n : cap - 1;
    for (size_t i = 0; i < k; i++)
        dst[i] = (char)tolower((unsigned char)s[i]);
    dst[k] = 0;
}

static void trim(const char **s, size_t *n)
{
    while (*n && isspace((unsigned char)**s)) {
        (*s)++;
        (*n)--;
    }
    while (*n && isspace((unsigned char)(*s)[*n - 1]))
        (*n)--;
}

/* ---- parameters (Python email.message._parseparam + utils.decode_params) - */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Python's utils.unquote: strip "..." (with \\ and \" unescaped) or <...>. */
static size_t unquote(const char *v, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        for (size_t i = 1; i + 1 < n && o + 1 < cap; i++) {
            if (v[i] == '\\' && i + 2 < n && (v[i + 1] == '\\' || v[i + 1] == '"'))
                i++;
            out[o++] = v[i];
        }
    } else if (n >= 2 && v[0] == '<' && v[n - 1] == '>') {
        for (size_t i = 1; i + 1 < n && o + 1 < cap; i++)
            out[o++] = v[i];
    } else {
        for (size_t i = 0; i < n && o + 1 < cap; i++)
            out[o++] = v[i];
    }
    out[o] = 0;
    return o;
}

/*
 * Find parameter `want` in a Content-Type / Content-Disposition value.
 * A plain `want=` wins over RFC 2231 forms (`want*=`, `want*0*=`...), as in
 * Python where the 2231 values are appended after the plain ones. RFC 2231
 * sections are joined in number order; charset'lang' prefixes are converted
 * to UTF-8. Returns 1 when found (value in out), 0 otherwise.
 */
static int get_param(const char *s, size_t n, const char *want, char *out, size_t cap)
{
    size_t wl = strlen(want);
    /* RFC 2231 sections collected here: up to 32 continuations */
    struct {
        const char *v;
        size_t n;
        int num;
        bool enc;
    } sec[32];
    unsigned nsec = 0;
    size_t i = 0;
    /* skip the first element (the type) */
    bool first = true;
    while (i <= n) {
        size_t start = i, end = i;
        bool inq = false;
        while (end < n) {
            if (s[end] == '\\' && inq && end + 1 < n) {
                end += 2;
                continue;
            }
            if (s[end] == '"')
                inq = !inq;
            else if (s[end] == ';' && !inq)
                break;
            end++;
        }
        if (end > n)
            end = n;
        if (!first) {
            const char *f = s + start;
            size_t fl = end - start;
            const char *eq = memchr(f, '=', fl);
            if (eq) {
                const char *k = f;
                size_t kl = (size_t)(eq - f);
                const char *v = eq + 1;
                size_t vl = fl - kl - 1;
                trim(&k, &kl);
                trim(&v, &vl);
                if (kl == wl && strncasecmp(k, want, wl) == 0) {
                    unquote(v, vl, out, cap);
                    return 1;
                }
                if (kl > wl && strncasecmp(k, want, wl) == 0 && k[wl] == '*' && nsec < 32) {
                    /* want* | want*N | want*N* */
                    const char *r = k + wl + 1;
                    size_t rl = kl - wl - 1;
                    int num = -1;
                    bool enc = false;
                    if (rl == 0) {
                        enc = true;
                    } else {
                        size_t d = 0;
                        num = 0;
                        while (d < rl && isdigit((unsigned char)r[d]) && num < 10000)
                            num = num * 10 + (r[d++] - '0');
                        if (d == 0 || (d < rl && !(d + 1 == rl && r[d] == '*')))
                            goto next;
                        enc = d < rl;
                    }
                    sec[nsec].v = v;
                    sec[nsec].n = vl;
                    sec[nsec].num = num;
                    sec[nsec].enc = enc;
                    nsec++;
                }
            }
        }
    next:
        first = false;
        i = end + 1;
    }
    if (nsec == 0)
        return 0;
    /* join the sections in number order, percent-decoding encoded ones */
    char raw[1024];
    size_t rl = 0;
    bool extended = false;
    for (int want_num = -1; want_num < 10000 && rl + 1 < sizeof raw; want_num++) {
        bool any = false;
        for (unsigned k = 0; k < nsec; k++) {
            if (sec[k].num != want_num)
                continue;
            any = true;
            char tmp[1024];
            size_t tl = unquote(sec[k].v, sec[k].n, tmp, sizeof tmp);
            for (size_t j = 0; j < tl && rl + 1 < sizeof raw; j++) {
                if (sec[k].enc && tmp[j] == '%' && j + 2 < tl && hexval(tmp[j + 1]) >= 0 &&
                    hexval(tmp[j + 2]) >= 0) {
                    raw[rl++] = (char)(hexval(tmp[j + 1]) * 16 + hexval(tmp[j + 2]));
                    j += 2;
                } else {
                    raw[rl++] = tmp[j];
                }
            }
            if (sec[k].enc)
                extended = true;
        }
        if (!any && want_num >= 0)
            break;
    }
    raw[rl] = 0;
    if (!extended) {
        size_t k = rl < cap - 1 ? rl : cap - 1;
        memcpy(out, raw, k);
        out[k] = 0;
        return 1;
    }
    /* charset'language'value */
    char *q1 = memchr(raw, '\'', rl);
    char *q2 = q1 ? memchr(q1 + 1, '\'', rl - (size_t)(q1 + 1 - raw)) : NULL;
    if (!q1 || !q2) {
        size_t k = rl < cap - 1 ? rl : cap - 1;
        memcpy(out, raw, k);
        out[k] = 0;
        return 1;
    }
    char cs[48];
    copy_lower(cs, sizeof cs, raw, (size_t)(q1 - raw));
    const char *val = q2 + 1;
    size_t vl = rl - (size_t)(val - raw);
    size_t o = mx_mime_to_utf8(cs[0] ? cs : "us-ascii", val, vl, out, cap - 1);
    out[o] = 0;
    return 1;
}

/* ---- parts -------------------------------------------------------------- */

static struct level *cur(struct mx_mime_parser *p)
{
    return p->top >= 0 ? &p->lv[p->top] : NULL;
}

static void content_type(struct level *l, const char *v, size_t n)
{
    /* Python: the text before the first ';', stripped, lower-cased, valid
     * only with exactly one '/'. */
    const char *semi = memchr(v, ';', n);
    const char *t = v;
    size_t tl = semi ? (size_t)(semi - v) : n;
    trim(&t, &tl);
    unsigned slashes = 0;
    for (size_t i = 0; i < tl; i++)
        slashes += t[i] == '/';
    if (slashes == 1 && tl < sizeof l->part.ctype)
        copy_lower(l->part.ctype, sizeof l->part.ctype, t, tl);
    else
        strcpy(l->part.ctype, "text/plain");
    l->part.had_ctype = true;
    char tmp[MX_MIME_BOUNDARY_MAX + 1];
    if (get_param(v, n, "boundary", tmp, sizeof tmp)) {
        size_t bl = strlen(tmp);
        while (bl && isspace((unsigned char)tmp[bl - 1]))
            bl--;
        l->boundary[0] = '-';
        l->boundary[1] = '-';
        memcpy(l->boundary + 2, tmp, bl);
        l->blen = (uint16_t)(bl + 2);
        l->has_boundary = true;
    }
    char cs[64];
    if (get_param(v, n, "charset", cs, sizeof cs)) {
        const char *c = cs;
        size_t cl = strlen(cs);
        trim(&c, &cl);
        copy_lower(l->part.charset, sizeof l->part.charset, c, cl);
    }
    get_param(v, n, "name", l->ct_name, sizeof l->ct_name);
}

static void content_disposition(struct level *l, const char *v, size_t n)
{
    const char *semi = memchr(v, ';', n);
    const char *t = v;
    size_t tl = semi ? (size_t)(semi - v) : n;
    trim(&t, &tl);
    copy_lower(l->part.disposition, sizeof l->part.disposition, t, tl);
    char tmp[256];
    if (get_param(v, n, "filename", tmp, sizeof tmp))
        mx_mime_decode_header(tmp, strlen(tmp), l->part.filename, sizeof l->part.filename);
}

static void transfer_encoding(struct mx_mime_parser *p, struct level *l, const char *v, size_t n)
{
    trim(&v, &n);
    if (n == 6 && strncasecmp(v, "base64", 6) == 0)
        l->part.cte = MX_MIME_CTE_BASE64;
    else if (n == 16 && strncasecmp(v, "quoted-printable", 16) == 0)
        l->part.cte = MX_MIME_CTE_QP;
    else if ((n == 10 && strncasecmp(v, "x-uuencode", 10) == 0) ||
             (n == 8 && strncasecmp(v, "uuencode", 8) == 0) ||
             (n == 3 && strncasecmp(v, "uue", 3) == 0) || (n == 5 && strncasecmp(v, "x-uue", 5) == 0))
        l->part.cte = MX_MIME_CTE_UU;
    else if (!((n == 4 && strncasecmp(v, "7bit", 4) == 0) ||
               (n == 4 && strncasecmp(v, "8bit", 4) == 0) ||
               (n == 6 && strncasecmp(v, "binary", 6) == 0) || n == 0))
        p->defects |= MX_MIME_DEF_BAD_CTE;
}

/* A header field is complete: report it and pick out the MIME fields. */
static void flush_header(struct mx_mime_parser *p)
{
    if (p->hb_len == 0)
        return;
    struct level *l = cur(p);
    const char *name = p->hb;
    size_t nl = p->hb_name;
    const char *v = p->hb + nl + 1;
    size_t vl = p->hb_len - nl - 1;
    while (p->top == 0 && nl > 1 && (name[nl - 1] == ' ' || name[nl - 1] == '\t'))
        nl--;
    while (vl && (*v == ' ' || *v == '\t')) {
        v++;
        vl--;
    }
    if (p->cb.header)
        p->cb.header(p->ud, &l->part, name, nl, v, vl);
    if (nl == 12 && strncasecmp(name, "content-type", 12) == 0 && !l->got_ct) {
        l->got_ct = true;
        content_type(l, v, vl);
    } else if (nl == 25 && strncasecmp(name, "content-transfer-encoding", 25) == 0 &&
               !l->got_cte) {
        l->got_cte = true;
        transfer_encoding(p, l, v, vl);
    } else if (nl == 19 && strncasecmp(name, "content-disposition", 19) == 0 && !l->got_cd) {
        l->got_cd = true;
        content_disposition(l, v, vl);
    }
    p->hb_len = 0;
}

static void push_level(struct mx_mime_parser *p, bool default_rfc822)
{
    struct level *parent = cur(p);
    p->top++;
    struct level *l = &p->lv[p->top];
    memset(l, 0, offsetof(struct level, boundary));
    l->boundary[0] = 0;
    l->ct_name[0] = 0;
    l->st = L_HDR;
    l->part.index = p->nparts++;
    l->part.depth = (unsigned)p->top;
    l->part.parent = parent ? parent->part.index : 0;
    l->default_rfc822 = default_rfc822;
    l->in_multipart = parent && (parent->in_multipart || parent->part.multipart);
    if (parent)
        parent->nchildren++;
    p->hb_len = 0;
    p->hdr_lines = 0;
    p->bad_fields = 0;
    p->skip_cont = false;
}

/* Headers of the innermost part are complete: decide what its body is. */
static void end_headers(struct mx_mime_parser *p)
{
    flush_header(p);
    struct level *l = cur(p);
    if (!l->part.had_ctype)
        strcpy(l->part.ctype, l->default_rfc822 ? "message/rfc822" : "text/plain");
    const char *ct = l->part.ctype;
    if (l->part.filename[0] == 0 && l->ct_name[0])
        mx_mime_decode_header(l->ct_name, strlen(l->ct_name), l->part.filename,
                              sizeof l->part.filename);
    l->part.text = strncmp(ct, "text/", 5) == 0;
    l->part.attachment = strcmp(l->part.disposition, "attachment") == 0 || l->part.filename[0];
    bool room = p->top < MX_MIME_MAX_DEPTH;
    if (strncmp(ct, "multipart/", 10) == 0) {
        if (!l->has_boundary) {
            p->defects |= MX_MIME_DEF_NO_BOUNDARY;
            l->st = L_LEAF;
            /* read as text/plain, as SpamAssassin does (_parse_normal) */
            l->part.text = true;
        } else if (!room) {
            p->defects |= MX_MIME_DEF_TOO_DEEP;
            l->st = L_LEAF;
        } else {
            l->part.multipart = true;
            l->digest = strcmp(ct, "multipart/digest") == 0;
            l->st = L_PREAMBLE;
        }
    } else if (strncmp(ct, "message/", 8) == 0 && strcmp(ct, "message/delivery-status") != 0) {
        if (!room) {
            p->defects |= MX_MIME_DEF_TOO_DEEP;
            l->st = L_LEAF;
        } else if (p->nparts >= MX_MIME_MAX_PARTS) {
            p->defects |= MX_MIME_DEF_TOO_MANY_PARTS;
            l->st = L_LEAF;
        } else {
            l->part.message = true;
            l->st = L_MESSAGE;
        }
    } else {
        l->st = L_LEAF;
    }
    if (p->cb.part_begin)
        p->cb.part_begin(p->ud, &l->part);
    if (l->st == L_MESSAGE)
        push_level(p, false);
}

/* ---- body decoding ------------------------------------------------------ */

/* base64 alphabet value of each byte, -1 for anything else */
static const int8_t b64tab[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1, -1, 63,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
    -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, -1,
    -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};

static int b64val(int c)
{
    return b64tab[(uint8_t)c];
}

static void out_data(struct mx_mime_parser *p, struct level *l, const uint8_t *d, size_t n)
{
    if (n == 0)
        return;
    l->part.decoded_bytes += n;
    if (p->cb.part_data)
        p->cb.part_data(p->ud, &l->part, d, n);
}

/* Decode `n` body bytes of level `l` from its transfer encoding. */
static void body_bytes(struct mx_mime_parser *p, struct level *l, const uint8_t *s, size_t n)
{
    uint8_t out[1024];
    size_t o = 0;
    l->part.raw_bytes += n;
    switch (l->part.cte) {
    case MX_MIME_CTE_IDENTITY:
        out_data(p, l, s, n);
        return;
    case MX_MIME_CTE_UU: /* line based: see uu_line(); line ends carry nothing */
        return;
    case MX_MIME_CTE_BASE64:
        /* binascii.a2b_base64 (non-strict): other characters are skipped, a
         * complete padding ends the data. */
        for (size_t i = 0; i < n && !l->b64_done; i++) {
            if (l->b64_pos == 0 && i + 4 <= n) {
                /* four alphabet bytes at a group start: three out (the
                 * byte loop below does the same, one state step at a time) */
                int a = b64tab[s[i]], b = b64tab[s[i + 1]], c = b64tab[s[i + 2]],
                    d = b64tab[s[i + 3]];
                if ((a | b | c | d) >= 0) {
                    out[o++] = (uint8_t)((a << 2) | (b >> 4));
                    out[o++] = (uint8_t)((b << 4) | (c >> 2));
                    out[o++] = (uint8_t)((c << 6) | d);
                    i += 3;
                    if (o >= sizeof out - 4) {
                        out_data(p, l, out, o);
                        o = 0;
                    }
                    continue;
                }
            }
            int c = s[i];
            if (c == '=') {
                if (l->b64_pos >= 2 && l->b64_pos + ++l->b64_pads >= 4)
                    l->b64_done = true;
                continue;
            }
            int v = b64val(c);
            if (v < 0)
                continue;
            switch (l->b64_pos) {
            case 0:
                l->b64_left = (uint8_t)v;
                l->b64_pos = 1;
                break;
            case 1:
                out[o++] = (uint8_t)((l->b64_left << 2) | (v >> 4));
                l->b64_left = (uint8_t)(v & 0xf);
                l->b64_pos = 2;
                break;
            case 2:
                out[o++] = (uint8_t)((l->b64_left << 4) | (v >> 2));
                l->b64_left = (uint8_t)(v & 0x3);
                l->b64_pos = 3;
                break;
            default:
                out[o++] = (uint8_t)((l->b64_left << 6) | v);
                l->b64_pos = 0;
                break;
            }
            if (o >= sizeof out - 4) {
                out_data(p, l, out, o);
                o = 0;
            }
        }
        break;
    case MX_MIME_CTE_QP:
        /* binascii.a2b_qp: "=XX" (either case), "=" + line end is a soft
         * break, "==" is "=", any other "=" is kept. */
        for (size_t i = 0; i < n; i++) {
            int c = s[i];
            switch (l->qp_state) {
            case 0:
                if (c == '=')
                    l->qp_state = 1;
                else
                    out[o++] = (uint8_t)c;
                break;
            case 1:
                if (c == '\n') {
                    l->qp_state = 0;
                } else if (c == '\r') {
                    l->qp_state = 2;
                } else if (c == '=') {
                    out[o++] = '=';
                    l->qp_state = 0;
                } else if (hexval(c) >= 0) {
                    l->qp_hex = (uint8_t)c;
                    l->qp_state = 3;
                } else {
                    out[o++] = '=';
                    l->qp_state = 0;
                    i--; /* reprocess c as a normal byte */
                }
                break;
            case 2:
                if (c == '\n')
                    l->qp_state = 0;
                break;
            default:
                if (hexval(c) >= 0) {
                    out[o++] = (uint8_t)(hexval(l->qp_hex) * 16 + hexval(c));
                    l->qp_state = 0;
                } else {
                    out[o++] = '=';
                    out[o++] = l->qp_hex;
                    l->qp_state = 0;
                    i--;
                }
                break;
            }
            if (o >= sizeof out - 4) {
                out_data(p, l, out, o);
                o = 0;
            }
        }
        break;
    }
    out_data(p, l, out, o);
}

/* End of a leaf's data: flush what the decoders hold. */
static void body_flush(struct mx_mime_parser *p, struct level *l)
{
    if (l->part.cte == MX_MIME_CTE_QP && l->qp_state == 3) {
        uint8_t t[2] = {'=', l->qp_hex};
        out_data(p, l, t, 2);
    }
    if (l->part.cte == MX_MIME_CTE_BASE64 && l->b64_pos == 1)
        p->defects |= MX_MIME_DEF_BAD_BASE64;
    l->qp_state = 0;
}

/* One line of a uuencoded body (binascii.a2b_uu between "begin" and "end"). */
static void uu_line(struct mx_mime_parser *p, struct level *l, const uint8_t *s, size_t n)
{
    l->part.raw_bytes += n;
    if (l->uu_state == 0) {
        if (n > 6 && memcmp(s, "begin ", 6) == 0 && s[6] >= '0' && s[6] <= '7')
            l->uu_state = 1;
        return;
    }
    if (l->uu_state != 1 || n == 0)
        return;
    const uint8_t *t = s;
    size_t tl = n;
    while (tl && (*t == ' ' || *t == '\t' || *t == '\f')) {
        t++;
        tl--;
    }
    while (tl && (t[tl - 1] == ' ' || t[tl - 1] == '\t' || t[tl - 1] == '\f'))
        tl--;
    if (tl == 3 && memcmp(t, "end", 3) == 0) {
        l->uu_state = 2;
        return;
    }
    uint8_t out[64];
    size_t want = (size_t)((s[0] - 0x20) & 0x3f), o = 0;
    unsigned acc = 0, bits = 0;
    for (size_t i = 1; i < n && o < want; i++) {
        acc = (acc << 6) | ((unsigned)(s[i] - 0x20) & 0x3f);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    while (o < want)
        out[o++] = 0;
    out_data(p, l, out, o);
}

static void body_line(struct mx_mime_parser *p, struct level *l, const uint8_t *s, size_t n,
                      const uint8_t *eol, size_t eol_len)
{
    if (l->part.cte == MX_MIME_CTE_UU && l->st == L_LEAF) {
        uu_line(p, l, s, n);
        return;
    }
    if (l->eol_len) {
        body_bytes(p, l, l->eol, l->eol_len);
        l->eol_len = 0;
    }
    body_bytes(p, l, s, n);
    if (eol_len) {
        memcpy(l->eol, eol, eol_len);
        l->eol_len = (uint8_t)eol_len;
    }
}

/* Close the innermost level. Python drops the line ending held back when the
 * part sits inside a multipart (it belongs to the delimiter) and keeps it at
 * the end of a message that is not inside one, and for multipart-typed parts
 * (whose "payload" is then the preamble). */
static void pop_level(struct mx_mime_parser *p)
{
    struct level *l = cur(p);
    if (l->st == L_HDR) {
        int before = p->top;
        end_headers(p);
        if (p->top != before) /* a message/... part opened its child */
            return;
    }
    if (l->eol_len && (!l->in_multipart || strncmp(l->part.ctype, "multipart/", 10) == 0))
        body_bytes(p, l, l->eol, l->eol_len);
    l->eol_len = 0;
    if (l->st == L_LEAF || l->st == L_PREAMBLE)
        body_flush(p, l);
    if (l->part.multipart && l->st == L_PREAMBLE)
        p->defects |= MX_MIME_DEF_NO_START_BOUNDARY;
    else if (l->part.multipart && l->st == L_PARTS)
        p->defects |= MX_MIME_DEF_NO_END_BOUNDARY;
    if (p->cb.part_end)
        p->cb.part_end(p->ud, &l->part);
    p->top--;
}

/* ---- lines -------------------------------------------------------------- */

/* Is `s` "--boundary" [ "--" ] [ SP / HTAB ]* ? Returns 0 no, 1 separator,
 * 2 close delimiter. */
static int boundary_match(const struct level *l, const uint8_t *s, size_t n)
{
    if (n < l->blen || memcmp(s, l->boundary, l->blen) != 0)
        return 0;
    size_t i = l->blen;
    int kind = 1;
    if (n - i >= 2 && s[i] == '-' && s[i + 1] == '-') {
        kind = 2;
        i += 2;
    }
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    return i == n ? kind : 0;
}

static bool check_boundaries(struct mx_mime_parser *p, const uint8_t *s, size_t n)
{
    if (n < 3 || s[0] != '-' || s[1] != '-')
        return false;
    /* Outermost first: in Python an enclosing boundary ends the inner parts
     * even when an inner multipart uses the same boundary. */
    for (int k = 0; k <= p->top; k++) {
        struct level *m = &p->lv[k];
        if (!m->part.multipart || m->st == L_EPILOGUE || m->st == L_HDR || m->st == L_LEAF)
            continue;
        int kind = boundary_match(m, s, n);
        if (!kind)
            continue;
        /* Python consumes boundary lines that directly follow one. */
        if (m->dup_boundary && m->st == L_PARTS && p->top == k + 1)
            return true;
        while (p->top > k)
            pop_level(p);
        m = &p->lv[k];
        if (kind == 2 && m->st == L_PREAMBLE) {
            /* close before any separator: Python keeps the multipart as a
             * leaf whose payload is the preamble, line ending included */
            if (m->eol_len)
                body_bytes(p, m, m->eol, m->eol_len);
            m->eol_len = 0;
            body_flush(p, m);
            m->st = L_EPILOGUE;
            return true;
        }
        if (m->st == L_PREAMBLE) {
            m->eol_len = 0;
            body_flush(p, m);
        }
        if (kind == 2) {
            m->st = L_EPILOGUE;
            return true;
        }
        m->st = L_PARTS;
        if (p->nparts >= MX_MIME_MAX_PARTS || p->top >= MX_MIME_MAX_DEPTH) {
            p->defects |= MX_MIME_DEF_TOO_MANY_PARTS;
            m->dup_boundary = false;
            /* no child: lines until the next boundary are dropped */
            return true;
        }
        m->dup_boundary = true;
        push_level(p, m->digest);
        return true;
    }
    return false;
}

static bool is_header_line(const uint8_t *s, size_t n)
{
    if (n >= 5 && memcmp(s, "From ", 5) == 0)
        return true;
    if (n && (s[0] == ' ' || s[0] == '\t'))
        return true;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ':')
            return true;
        if (i && (s[i] == ' ' || s[i] == '\t')) {
            /* "Name :" (obsolete syntax): a field for SpamAssassin, which
             * takes the name without the blanks (in the message's own
             * headers; in MIME parts with them). Python starts the body. */
            while (i < n && (s[i] == ' ' || s[i] == '\t'))
                i++;
            return i < n && s[i] == ':';
        }
        if (s[i] < 0x21 || s[i] > 0x7e)
            return false;
    }
    return false;
}

static void hb_append(struct mx_mime_parser *p, const uint8_t *s, size_t n)
{
    size_t room = sizeof p->hb - p->hb_len;
    if (n > room) {
        p->defects |= MX_MIME_DEF_HDR_TRUNCATED;
        n = room;
    }
    memcpy(p->hb + p->hb_len, s, n);
    p->hb_len += n;
}

static void header_line(struct mx_mime_parser *p, const uint8_t *s, size_t n, const uint8_t *eol,
                        size_t eol_len, bool cont)
{
    if (cont) {
        if (p->hb_len)
            hb_append(p, s, n);
        return;
    }
    unsigned lineno = p->hdr_lines++;
    if (n == 0) {
        end_headers(p);
        return;
    }
    if (!is_header_line(s, n)) {
        /* SpamAssassin (Message::new) passes over up to 3 such lines in the
         * message's own headers, each with its continuation lines; a "--"
         * line or the 4th starts the body. (Python's email package, and SA
         * in MIME parts, start the body at the first.) */
        if (p->top == 0 && p->bad_fields < 3 && !(n >= 2 && s[0] == '-' && s[1] == '-')) {
            p->bad_fields++;
            flush_header(p);
            p->skip_cont = true;
            p->defects |= MX_MIME_DEF_HDR_BAD_LINE;
            return;
        }
        p->defects |= MX_MIME_DEF_HDR_NO_SEPARATOR;
        end_headers(p);
        dispatch_line(p, s, n, eol, eol_len, false);
        return;
    }
    if (s[0] == ' ' || s[0] == '\t') {
        if (p->skip_cont)
            return;
        /* unfold as SpamAssassin does (s/\n[ \t]+/ /): the line break and
         * the whitespace that starts the continuation become one space */
        size_t ws = 0;
        while (ws < n && (s[ws] == ' ' || s[ws] == '\t'))
            ws++;
        if (p->hb_len) {
            hb_append(p, (const uint8_t *)" ", 1);
            hb_append(p, s + ws, n - ws);
        } else
            p->defects |= MX_MIME_DEF_HDR_BAD_LINE;
        return;
    }
    flush_header(p);
    p->skip_cont = false;
    size_t fb = 4;
    while (fb < n && (s[fb] == ' ' || s[fb] == '\t'))
        fb++;
    /* an mbox "From " line, but after the first line "From :" is a From
     * field for SpamAssassin */
    if (n >= 5 && memcmp(s, "From ", 5) == 0 && !(lineno != 0 && fb < n && s[fb] == ':')) {
        if (lineno != 0)
            p->defects |= MX_MIME_DEF_HDR_BAD_LINE;
        return;
    }
    const uint8_t *colon = memchr(s, ':', n);
    if (colon == s) {
        p->defects |= MX_MIME_DEF_HDR_BAD_LINE;
        return;
    }
    p->hb_name = (size_t)(colon - s);
    hb_append(p, s, n);
    if (p->hb_len <= p->hb_name) /* truncated inside the name: drop it */
        p->hb_len = 0;
}

static void dispatch_line(struct mx_mime_parser *p, const uint8_t *s, size_t n, const uint8_t *eol,
                          size_t eol_len, bool cont)
{
    if (p->top < 0)
        return;
    if (!cont && check_boundaries(p, s, n))
        return;
    if (p->top >= 1)
        p->lv[p->top - 1].dup_boundary = false;
    struct level *l = cur(p);
    switch (l->st) {
    case L_HDR:
        header_line(p, s, n, eol, eol_len, cont);
        break;
    case L_LEAF:
    case L_PREAMBLE:
        body_line(p, l, s, n, eol, eol_len);
        break;
    case L_PARTS:    /* part limit reached: no child to give it to */
    case L_EPILOGUE: /* ignored, like every parser does */
    case L_MESSAGE:
        break;
    }
}

void mx_mime_parser_feed(struct mx_mime_parser *p, const uint8_t *buf, size_t n)
{
    static const uint8_t CR[1] = {'\r'}, LF[1] = {'\n'}, CRLF[2] = {'\r', '\n'};
    size_t i = 0;
    if (p->ended)
        return;
    if (p->saw_cr && n) {
        p->saw_cr = false;
        if (buf[0] == '\n') {
            dispatch_line(p, p->lb, p->lb_len, CRLF, 2, p->lb_cont);
            i = 1;
        } else {
            dispatch_line(p, p->lb, p->lb_len, CR, 1, p->lb_cont);
        }
        p->lb_len = 0;
        p->lb_cont = false;
    }
    while (i < n) {
        /* find the next line end in this chunk */
        const uint8_t *s = buf + i;
        size_t rest = n - i;
        size_t k = 0;
        while (k < rest && s[k] != '\n' && s[k] != '\r')
            k++;
        /* whole line inside the chunk and nothing buffered: no copy */
        size_t take = k;
        if (p->lb_len + take > sizeof p->lb) {
            size_t fit = sizeof p->lb - p->lb_len;
            memcpy(p->lb + p->lb_len, s, fit);
            dispatch_line(p, p->lb, sizeof p->lb, NULL, 0, p->lb_cont);
            p->defects |= MX_MIME_DEF_LONG_LINE;
            p->lb_len = 0;
            p->lb_cont = true;
            i += fit;
            continue;
        }
        if (k == rest) {
            memcpy(p->lb + p->lb_len, s, k);
            p->lb_len += k;
            return;
        }
        const uint8_t *line;
        size_t ll;
        if (p->lb_len == 0) {
            line = s;
            ll = k;
        } else {
            memcpy(p->lb + p->lb_len, s, k);
            line = p->lb;
            ll = p->lb_len + k;
        }
        if (s[k] == '\n') {
            dispatch_line(p, line, ll, LF, 1, p->lb_cont);
            i += k + 1;
        } else if (k + 1 < rest) {
            if (s[k + 1] == '\n') {
                dispatch_line(p, line, ll, CRLF, 2, p->lb_cont);
                i += k + 2;
            } else {
                dispatch_line(p, line, ll, CR, 1, p->lb_cont);
                i += k + 1;
            }
        } else {
            /* CR at the end of the chunk: decide with the next byte */
            if (line != p->lb)
                memcpy(p->lb, line, ll);
            p->lb_len = ll;
            p->saw_cr = true;
            return;
        }
        p->lb_len = 0;
        p->lb_cont = false;
    }
}

void mx_mime_parser_end(struct mx_mime_parser *p)
{
    if (p->ended)
        return;
    if (p->saw_cr) {
        static const uint8_t CR[1] = {'\r'};
        dispatch_line(p, p->lb, p->lb_len, CR, 1, p->lb_cont);
    } else if (p->lb_len) {
        dispatch_line(p, p->lb, p->lb_len, NULL, 0, p->lb_cont);
    }
    p->lb_len = 0;
    p->saw_cr = false;
    while (p->top >= 0)
        pop_level(p);
    p->ended = true;
}

void mx_mime_parser_reset(struct mx_mime_parser *p)
{
    p->defects = 0;
    p->nparts = 0;
    p->top = -1;
    p->lb_len = 0;
    p->lb_cont = false;
    p->saw_cr = false;
    p->ended = false;
    p->hb_len = 0;
    push_level(p, false);
}

struct mx_mime_parser *mx_mime_parser_new(const struct mx_mime_callbacks *cb, void *ud)
{
    struct mx_mime_parser *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    if (cb)
        p->cb = *cb;
    p->ud = ud;
    mx_mime_parser_reset(p);
    return p;
}

unsigned mx_mime_parser_defects(const struct mx_mime_parser *p)
{
    return p->defects;
}

unsigned mx_mime_parser_nparts(const struct mx_mime_parser *p)
{
    return p->nparts;
}

void mx_mime_parser_free(struct mx_mime_parser *p)
{
    free(p);
}
