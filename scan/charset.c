/*
 * charset.c - text to UTF-8: streaming charset conversion for body parts
 * (iconv, handles per thread cached because iconv_open is slow), RFC 2047
 * encoded-word decoding for header values, and a windows-1252 fallback for
 * bytes that are neither valid UTF-8 nor in a charset iconv knows.
 */
#include "scan/charset_internal.h"
#include "scan/mime_internal.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <strings.h>

/* windows-1252 0x80..0x9f (0 = undefined, mapped to U+FFFD) */
static const uint16_t cp1252_hi[32] = {
    0x20ac, 0,      0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160,
    0x2039, 0x0152, 0,      0x017d, 0,      0,      0x2018, 0x2019, 0x201c, 0x201d, 0x2022,
    0x2013, 0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0,      0x017e, 0x0178};

static size_t put_cp(uint32_t cp, char *o)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

static size_t cp1252_byte(uint8_t b, char *o)
{
    uint32_t cp = b;
    if (b >= 0x80 && b < 0xa0)
        cp = cp1252_hi[b - 0x80] ? cp1252_hi[b - 0x80] : 0xfffd;
    return put_cp(cp, o);
}

/* Length of the valid UTF-8 sequence at s (n bytes available): >0 valid,
 * 0 incomplete (needs more bytes), -1 invalid first byte. */
static int utf8_seq(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    int len;
    uint32_t min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        min = 0x10000;
    } else {
        return -1;
    }
    uint32_t cp = c & (0x3f >> (len - 1));
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n)
            return 0;
        if ((s[i] & 0xc0) != 0x80)
            return -1;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return -1;
    return len;
}

/* Map MIME charset labels to names glibc iconv knows (or a superset). */
static const char *iconv_name(const char *cs)
{
    static const struct {
        const char *mime, *iconv;
    } alias[] = {
        {"x-sjis", "CP932"},          {"shift_jis", "CP932"},      {"shift-jis", "CP932"},
        {"sjis", "CP932"},            {"ms_kanji", "CP932"},       {"x-euc-jp", "EUC-JP-MS"},
        {"euc-jp", "EUC-JP-MS"},      {"iso-2022-jp", "ISO-2022-JP-3"},
        {"gb2312", "GB18030"},        {"gbk", "GB18030"},          {"x-gbk", "GB18030"},
        {"ks_c_5601-1987", "CP949"},  {"euc-kr", "CP949"},         {"big5", "BIG5-HKSCS"},
        {"unicode-1-1-utf-7", "UTF-7"}, {"x-unknown", "WINDOWS-1252"},
        {"iso-8859-1", "WINDOWS-1252"}, {"latin1", "WINDOWS-1252"}, {"ascii", "WINDOWS-1252"},
        {"us-ascii", "WINDOWS-1252"},
    };
    for (size_t i = 0; i < sizeof alias / sizeof alias[0]; i++)
        if (strcasecmp(cs, alias[i].mime) == 0)
            return alias[i].iconv;
    return cs;
}

/* A few iconv handles per thread: opening one costs far more than a part. */
#define CONV_CACHE 8
static __thread struct {
    char name[48];
    iconv_t cd;
} conv_cache[CONV_CACHE];
static __thread unsigned conv_next;

static iconv_t cached_iconv(const char *charset)
{
    for (unsigned i = 0; i < CONV_CACHE; i++) {
        if (conv_cache[i].name[0] && strcasecmp(conv_cache[i].name, charset) == 0) {
            iconv(conv_cache[i].cd, NULL, NULL, NULL, NULL); /* reset shift state */
            return conv_cache[i].cd;
        }
    }
    iconv_t cd = iconv_open("UTF-8", iconv_name(charset));
    if (cd == (iconv_t)-1)
        return cd;
    unsigned slot = conv_next++ % CONV_CACHE;
    if (conv_cache[slot].name[0])
        iconv_close(conv_cache[slot].cd);
    snprintf(conv_cache[slot].name, sizeof conv_cache[slot].name, "%s", charset);
    conv_cache[slot].cd = cd;
    return cd;
}

void mx_utf8_conv_open(struct mx_utf8_conv *c, const char *charset)
{
    memset(c, 0, sizeof *c);
    c->cd = (iconv_t)-1;
    if (!charset || !charset[0] || strcasecmp(charset, "utf-8") == 0 ||
        strcasecmp(charset, "utf8") == 0 || strcasecmp(charset, "us-ascii") == 0 ||
        strcasecmp(charset, "ascii") == 0 || strlen(charset) >= 48) {
        c->mode = MX_CONV_UTF8;
        return;
    }
    c->cd = cached_iconv(charset);
    c->mode = c->cd == (iconv_t)-1 ? MX_CONV_UTF8 : MX_CONV_ICONV;
}

/* UTF-8 pass-through with invalid bytes read as windows-1252. Valid text
 * (ASCII checked 8 bytes at a time) is handed on in place, in runs as long
 * as the chunk: the former copy through a zeroed 2 KiB buffer in runs of at
 * most 2 KiB was the hottest function of the text pipeline (4.3% of scan
 * CPU on the corpus). */
static void feed_utf8(struct mx_utf8_conv *c, const uint8_t *in, size_t n, bool last,
                      mx_utf8_emit_fn emit, void *ud)
{
    size_t i = 0;
    if (c->ncarry) {
        /* the carry holds the start of a sequence cut by the chunk end */
        size_t need = c->carry[0] >= 0xf0 ? 4 : c->carry[0] >= 0xe0 ? 3 : 2;
        while (c->ncarry < need && i < n && (in[i] & 0xc0) == 0x80)
            c->carry[c->ncarry++] = in[i++];
        if (c->ncarry < need && i == n && !last)
            return;
        if (utf8_seq(c->carry, c->ncarry) > 0) {
            emit(ud, (const char *)c->carry, c->ncarry);
        } else {
            char b[4 * sizeof c->carry];
            size_t o = 0;
            for (size_t k = 0; k < c->ncarry; k++)
                o += cp1252_byte(c->carry[k], b + o);
            emit(ud, b, o);
        }
        c->ncarry = 0;
    }
    size_t run = i; /* start of the valid text not yet handed on */
    while (i < n) {
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, in + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= n)
            break;
        if (in[i] < 0x80) {
            i++;
            continue;
        }
        int len = utf8_seq(in + i, n - i);
        if (len > 0) {
            i += (size_t)len;
            continue;
        }
        if (i > run)
            emit(ud, (const char *)in + run, i - run);
        if (len == 0 && !last) {
            memcpy(c->carry, in + i, n - i);
            c->ncarry = n - i;
            return;
        }
        char b[4];
        emit(ud, b, cp1252_byte(in[i], b));
        run = ++i;
    }
    if (i > run)
        emit(ud, (const char *)in + run, i - run);
}

static void feed_iconv(struct mx_utf8_conv *c, const uint8_t *in, size_t n, bool last,
                       mx_utf8_emit_fn emit, void *ud)
{
    char out[4096];
    uint8_t join[64];
    const uint8_t *src = in;
    size_t left = n;
    /* a multibyte character split across chunks: join the carry with the
     * start of this chunk and convert that first */
    while (c->ncarry) {
        size_t take = left < sizeof join - c->ncarry ? left : sizeof join - c->ncarry;
        memcpy(join, c->carry, c->ncarry);
        if (take) /* at the end of input src may be NULL */
            memcpy(join + c->ncarry, src, take);
        size_t total = c->ncarry + take;
        char *ip = (char *)join, *op = out;
        size_t il = total, ol = sizeof out;
        size_t r = iconv(c->cd, &ip, &il, &op, &ol);
        int err = r == (size_t)-1 ? errno : 0;
        size_t used = (size_t)((uint8_t *)ip - join);
        if (op > out)
            emit(ud, out, (size_t)(op - out));
        if (used < c->ncarry && err == EINVAL && take == left && !last &&
            total - used <= sizeof c->carry) {
            /* still incomplete: wait for more input */
            memmove(c->carry, join + used, total - used);
            c->ncarry = total - used;
            return;
        }
        if (used < c->ncarry && err) {
            /* an invalid or truncated character inside the carry */
            emit(ud, "\xef\xbf\xbd", 3);
            used++;
        }
        if (used >= c->ncarry) {
            /* past the carry: the rest of the chunk goes the normal way
             * (no pointer arithmetic on a NULL src at the end of input) */
            if (used > c->ncarry) {
                src += used - c->ncarry;
                left -= used - c->ncarry;
            }
            c->ncarry = 0;
        } else {
            memmove(c->carry, c->carry + used, c->ncarry - used);
            c->ncarry -= used;
        }
    }
    while (left) {
        char *ip = (char *)src, *op = out;
        size_t ol = sizeof out;
        size_t r = iconv(c->cd, &ip, &left, &op, &ol);
        src = (const uint8_t *)ip;
        if (op > out)
            emit(ud, out, (size_t)(op - out));
        if (r != (size_t)-1)
            break;
        if (errno == E2BIG)
            continue;
        if (errno == EINVAL && !last && left <= sizeof c->carry) {
            memcpy(c->carry, src, left);
            c->ncarry = left;
            return;
        }
        /* EILSEQ or truncated at the very end */
        emit(ud, "\xef\xbf\xbd", 3);
        src++;
        left--;
    }
    if (last) {
        char *op = out;
        size_t ol = sizeof out;
        iconv(c->cd, NULL, NULL, &op, &ol);
        if (op > out)
            emit(ud, out, (size_t)(op - out));
    }
}

void mx_utf8_conv_feed(struct mx_utf8_conv *c, const uint8_t *in, size_t n, mx_utf8_emit_fn emit,
                       void *ud)
{
    if (c->mode == MX_CONV_ICONV)
        feed_iconv(c, in, n, false, emit, ud);
    else
        feed_utf8(c, in, n, false, emit, ud);
}

void mx_utf8_conv_end(struct mx_utf8_conv *c, mx_utf8_emit_fn emit, void *ud)
{
    if (c->mode == MX_CONV_ICONV)
        feed_iconv(c, NULL, 0, true, emit, ud);
    else
        feed_utf8(c, NULL, 0, true, emit, ud);
    c->ncarry = 0;
}

/* ---- one-shot helpers --------------------------------------------------- */

struct buf_sink {
    char *out;
    size_t cap, len;
};

static void sink_emit(void *ud, const char *s, size_t n)
{
    struct buf_sink *b = ud;
    size_t room = b->cap - b->len;
    if (n > room)
        n = room;
    memcpy(b->out + b->len, s, n);
    b->len += n;
}

size_t mx_mime_to_utf8(const char *charset, const char *in, size_t n, char *out, size_t cap)
{
    struct mx_utf8_conv c;
    struct buf_sink b = {out, cap, 0};
    mx_utf8_conv_open(&c, charset);
    mx_utf8_conv_feed(&c, (const uint8_t *)in, n, sink_emit, &b);
    mx_utf8_conv_end(&c, sink_emit, &b);
    /* never end inside a UTF-8 sequence after truncation */
    while (b.len && (out[b.len - 1] & 0xc0) == 0x80 && b.len == cap)
        b.len--;
    if (b.len && b.len == cap && (uint8_t)out[b.len - 1] >= 0xc0)
        b.len--;
    return b.len;
}

static int b64v(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

static int hexv(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decode the text of one encoded word; returns decoded length or -1. */
static long decode_word(char enc, const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    if (enc == 'b' || enc == 'B') {
        unsigned acc = 0, bits = 0;
        for (size_t i = 0; i < n && o < cap; i++) {
            int v = b64v((unsigned char)s[i]);
            if (v < 0)
                continue;
            acc = (acc << 6) | (unsigned)v;
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                out[o++] = (char)((acc >> bits) & 0xff);
            }
        }
        return (long)o;
    }
    for (size_t i = 0; i < n && o < cap; i++) {
        if (s[i] == '_')
            out[o++] = ' ';
        else if (s[i] == '=' && i + 2 < n && hexv((unsigned char)s[i + 1]) >= 0 &&
                 hexv((unsigned char)s[i + 2]) >= 0) {
            out[o++] = (char)(hexv((unsigned char)s[i + 1]) * 16 + hexv((unsigned char)s[i + 2]));
            i += 2;
        } else
            out[o++] = s[i];
    }
    return (long)o;
}

size_t mx_mime_decode_header(const char *in, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    size_t i = 0;
    size_t pending_ws = 0, ws_start = 0; /* whitespace after an encoded word */
    bool last_was_word = false;
    if (cap == 0)
        return 0;
    cap--; /* room for the NUL */
    while (i < n && o < cap) {
        if (in[i] == '=' && i + 1 < n && in[i + 1] == '?') {
            /* =?charset[*lang]?X?text?= */
            size_t q1 = i + 2;
            const char *e1 = memchr(in + q1, '?', n - q1);
            if (e1 && (size_t)(e1 - in) + 3 < n && e1[2] == '?' &&
                strchr("bBqQ", e1[1]) && e1[1]) {
                size_t ts = (size_t)(e1 - in) + 3;
                const char *end = NULL;
                for (size_t k = ts; k + 1 < n; k++) {
                    if (in[k] == '?' && in[k + 1] == '=') {
                        end = in + k;
                        break;
                    }
                }
                size_t cl = (size_t)(e1 - (in + q1));
                if (end && cl > 0 && cl < 48) {
                    char cs[48];
                    memcpy(cs, in + q1, cl);
                    cs[cl] = 0;
                    char *star = strchr(cs, '*');
                    if (star)
                        *star = 0;
                    char raw[1024];
                    long rl = decode_word(e1[1], in + ts, (size_t)(end - in) - ts, raw, sizeof raw);
                    if (rl >= 0) {
                        /* whitespace between two encoded words is dropped */
                        if (!last_was_word && pending_ws) {
                            size_t k = pending_ws < cap - o ? pending_ws : cap - o;
                            memcpy(out + o, in + ws_start, k);
                            o += k;
                        }
                        pending_ws = 0;
                        o += mx_mime_to_utf8(cs, raw, (size_t)rl, out + o, cap - o);
                        i = (size_t)(end - in) + 2;
                        last_was_word = true;
                        continue;
                    }
                }
            }
        }
        if (in[i] == ' ' || in[i] == '\t' || in[i] == '\r' || in[i] == '\n') {
            if (pending_ws == 0)
                ws_start = i;
            pending_ws++;
            i++;
            continue;
        }
        if (pending_ws) {
            size_t k = pending_ws < cap - o ? pending_ws : cap - o;
            memcpy(out + o, in + ws_start, k);
            o += k;
            pending_ws = 0;
        }
        last_was_word = false;
        /* plain text: copy a run; 8-bit bytes checked as UTF-8 */
        size_t j = i;
        while (j < n && in[j] != '=' && in[j] != ' ' && in[j] != '\t' && in[j] != '\r' &&
               in[j] != '\n')
            j++;
        if (j == i)
            j++;
        o += mx_mime_to_utf8("utf-8", in + i, j - i, out + o, cap - o);
        i = j;
    }
    if (pending_ws && o < cap) {
        size_t k = pending_ws < cap - o ? pending_ws : cap - o;
        memcpy(out + o, in + ws_start, k);
        o += k;
    }
    out[o] = 0;
    return o;
}
