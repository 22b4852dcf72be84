/*
 * gen.c - `mxbench gen`: a reproducible benchmark corpus from a seed.
 *
 * Benchmarks compare numbers across machines and weeks, so the corpus must
 * be the same bytes every time: everything here comes from one splitmix64
 * stream seeded by --seed (no clock, no locale, no hash randomisation).
 * The mix imitates what a gateway sees: mostly small text/HTML mail, some
 * multipart/alternative, a fifth with binary attachments (which dominate
 * the bytes), and Japanese mail in ISO-2022-JP (RFC 1468) with an RFC 2047
 * encoded subject.
 */
#include <errno.h>
#include <getopt.h>
#include <iconv.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "perf/bench.h"
#include "perf/corpus.h"

#define MIN_SIZE 2048
#define MAX_SIZE (2u * 1024 * 1024)

struct rng {
    uint64_t s;
};

static uint64_t rnd(struct rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static unsigned rnd_below(struct rng *r, unsigned n)
{
    return (unsigned)(rnd(r) % n);
}

/* Log-uniform size in [lo, hi]: many small messages, a long tail of big ones. */
static size_t rnd_size(struct rng *r, size_t lo, size_t hi)
{
    double u = (double)(rnd(r) >> 11) / (double)(1ull << 53);
    double l = (double)lo, h = (double)hi;
    double v = l * exp(u * log(h / l));
    return (size_t)v;
}

struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
};

static void sb_put(struct sbuf *b, const void *d, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 65536;
        while (nc < b->n + n + 1)
            nc *= 2;
        char *j = realloc(b->p, nc);
        if (!j) {
            b->oom = true;
            return;
        }
        b->p = j;
        b->cap = nc;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_puts(struct sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static const char *const words[] = {
    "the", "invoice", "meeting", "schedule", "project", "report", "quarterly", "budget",
    "please", "review", "attached", "document", "customer", "order", "shipment", "delivery",
    "account", "update", "security", "password", "team", "office", "tomorrow", "agenda",
    "minutes", "contract", "proposal", "price", "discount", "offer", "limited", "time",
    "server", "network", "release", "version", "feature", "request", "support", "ticket",
    "and", "of", "to", "in", "for", "with", "on", "at", "by", "from", "is", "are", "was",
    "we", "you", "our", "your", "this", "that", "will", "can", "should", "would", "about",
};
static const char *const first_names[] = {"alice", "bob", "carol", "dave", "erin", "frank",
                                          "grace", "heidi", "ivan", "judy", "mallory", "oscar"};
static const char *const domains[] = {"example.test", "corp.example", "mail.example.org",
                                      "shop.example.net", "bank.example", "news.example.com"};
/* UTF-8 Japanese phrases; all in JIS X 0208 so ISO-2022-JP can carry them. */
static const char *const ja_phrases[] = {
    "お世話になっております。", "会議の資料を送付いたします。", "ご確認をお願いいたします。",
    "来週の打ち合わせについて", "請求書を添付しました。", "よろしくお願いいたします。",
    "本日はありがとうございました。", "新製品のご案内", "見積書の件で連絡しました。",
    "東京都千代田区", "担当者", "株式会社サンプル", "営業部", "予定を調整してください。",
};

static void gen_words(struct rng *r, struct sbuf *b, size_t bytes, bool html)
{
    size_t start = b->n, col = 0;
    if (html)
        sb_puts(b, "<p>");
    while (b->n - start < bytes && !b->oom) {
        const char *w = words[rnd_below(r, sizeof(words) / sizeof(words[0]))];
        size_t wl = strlen(w);
        if (col + wl + 1 > 72) {
            sb_puts(b, "\n");
            col = 0;
            if (rnd_below(r, 8) == 0)
                sb_puts(b, html ? "</p>\n<p>" : "\n");
        } else if (col > 0) {
            sb_puts(b, " ");
            col++;
        }
        if (html && rnd_below(r, 40) == 0) {
            sb_printf(b, "<a href=\"https://www.%s/%s?id=%u\">%s</a>",
                      domains[rnd_below(r, 6)], w, rnd_below(r, 100000), w);
            col += 40;
        } else {
            sb_put(b, w, wl);
            col += wl;
        }
    }
    sb_puts(b, html ? "</p>\n" : "\n");
}

/* Convert one UTF-8 line to ISO-2022-JP (ends back in ASCII, as RFC 1468 asks). */
static int to_jis(iconv_t cd, const char *in, char *out, size_t outsz)
{
    iconv(cd, NULL, NULL, NULL, NULL);
    char *ip = (char *)in, *op = out;
    size_t il = strlen(in), ol = outsz - 1;
    if (iconv(cd, &ip, &il, &op, &ol) == (size_t)-1)
        return -EILSEQ;
    if (iconv(cd, NULL, NULL, &op, &ol) == (size_t)-1)
        return -EILSEQ;
    *op = '\0';
    return (int)(op - out);
}

static void gen_japanese(struct rng *r, struct sbuf *b, iconv_t cd, size_t bytes)
{
    size_t start = b->n;
    while (b->n - start < bytes && !b->oom) {
        char line[512] = "";
        size_t ll = 0;
        /* about 30 characters a line: two or three phrases */
        for (unsigned k = 0, m = 2 + rnd_below(r, 2); k < m; k++) {
            const char *ph = ja_phrases[rnd_below(r, sizeof(ja_phrases) / sizeof(ja_phrases[0]))];
            size_t pl = strlen(ph);
            if (ll + pl + 1 >= sizeof(line))
                break;
            memcpy(line + ll, ph, pl + 1);
            ll += pl;
        }
        char jis[1024];
        int n = to_jis(cd, line, jis, sizeof(jis));
        if (n > 0)
            sb_put(b, jis, (size_t)n);
        sb_puts(b, "\n");
    }
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void put_base64(struct sbuf *b, const unsigned char *d, size_t n)
{
    char line[80];
    size_t ll = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)d[i + 1] << 8;
        if (i + 2 < n)
            v |= d[i + 2];
        line[ll++] = b64[(v >> 18) & 63];
        line[ll++] = b64[(v >> 12) & 63];
        line[ll++] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
        line[ll++] = i + 2 < n ? b64[v & 63] : '=';
        if (ll == 76) {
            line[ll++] = '\n';
            sb_put(b, line, ll);
            ll = 0;
        }
    }
    if (ll) {
        line[ll++] = '\n';
        sb_put(b, line, ll);
    }
}

/* Attachment bytes that start like the real format (for magic-byte checks). */
static unsigned char *gen_blob(struct rng *r, unsigned kind, size_t n)
{
    unsigned char *d = malloc(n);
    if (!d)
        return NULL;
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = rnd(r);
        memcpy(d + i, &v, n - i < 8 ? n - i : 8);
    }
    static const char pdf[] = "%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\n";
    static const unsigned char zip[] = {'P', 'K', 3, 4, 20, 0, 0, 0, 8, 0};
    static const unsigned char png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n',
                                        0, 0, 0, 13, 'I', 'H', 'D', 'R'};
    const void *magic = kind == 0 ? (const void *)pdf : kind == 1 ? (const void *)zip : png;
    size_t ml = kind == 0 ? sizeof(pdf) - 1 : kind == 1 ? sizeof(zip) : sizeof(png);
    memcpy(d, magic, ml < n ? ml : n);
    return d;
}

static void put_headers(struct rng *r, struct sbuf *b, uint64_t seed, unsigned idx,
                        const char *subject)
{
    const char *fn = first_names[rnd_below(r, 12)], *tn = first_names[rnd_below(r, 12)];
    const char *fd = domains[rnd_below(r, 6)], *td = domains[rnd_below(r, 6)];
    /* Dates walk forward from a fixed instant: reproducible, and plausible. */
    time_t t = (time_t)1700000000 + (time_t)idx * 37;
    struct tm tm;
    gmtime_r(&t, &tm);
    char date[64];
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
    sb_printf(b,
              "Received: from relay%u.%s (relay%u.%s [192.0.2.%u])\n"
              "\tby mx.example.test with ESMTPS id G%08X\n\tfor <%s@%s>; %s\n",
              rnd_below(r, 9), fd, rnd_below(r, 9), fd, 1 + rnd_below(r, 254),
              (unsigned)rnd(r), tn, td, date);
    sb_printf(b, "From: \"%c%s\" <%s@%s>\nTo: %s@%s\n", fn[0] - 32, fn + 1, fn, fd, tn, td);
    sb_printf(b, "Subject: %s\nDate: %s\n", subject, date);
    sb_printf(b, "Message-ID: <gen.%llu.%u.%08x@corpus.mxbench.test>\nMIME-Version: 1.0\n",
              (unsigned long long)seed, idx, (unsigned)rnd(r));
}

static void gen_subject(struct rng *r, char *s, size_t n)
{
    snprintf(s, n, "%s %s %s #%u", words[rnd_below(r, 40)], words[rnd_below(r, 40)],
             words[rnd_below(r, 40)], rnd_below(r, 10000));
}

/* RFC 2047 B-encoding of an ISO-2022-JP string. */
static void gen_subject_ja(struct rng *r, iconv_t cd, char *s, size_t n)
{
    char jis[256];
    int jl = to_jis(cd, ja_phrases[rnd_below(r, sizeof(ja_phrases) / sizeof(ja_phrases[0]))],
                    jis, sizeof(jis));
    struct sbuf e = {0};
    if (jl > 0)
        put_base64(&e, (const unsigned char *)jis, (size_t)jl);
    if (e.n && e.p[e.n - 1] == '\n')
        e.p[--e.n] = '\0';
    snprintf(s, n, "=?ISO-2022-JP?B?%s?=", e.p ? e.p : "");
    free(e.p);
}

/* One message into b. */
static int gen_message(struct rng *r, iconv_t cd, uint64_t seed, unsigned idx, struct sbuf *b)
{
    char subject[256], boundary[64], alt[64];
    unsigned kind = rnd_below(r, 100);
    snprintf(boundary, sizeof(boundary), "=_mxb_%08x_%u", (unsigned)rnd(r), idx);
    snprintf(alt, sizeof(alt), "=_mxa_%08x_%u", (unsigned)rnd(r), idx);
    size_t text = rnd_size(r, MIN_SIZE, 48 * 1024);
    if (kind < 30) { /* plain text */
        gen_subject(r, subject, sizeof(subject));
        put_headers(r, b, seed, idx, subject);
        sb_puts(b, "Content-Type: text/plain; charset=us-ascii\n"
                   "Content-Transfer-Encoding: 7bit\n\n");
        gen_words(r, b, text, false);
    } else if (kind < 45) { /* HTML only */
        gen_subject(r, subject, sizeof(subject));
        put_headers(r, b, seed, idx, subject);
        sb_puts(b, "Content-Type: text/html; charset=us-ascii\n\n<html><body>\n");
        gen_words(r, b, text, true);
        sb_puts(b, "</body></html>\n");
    } else if (kind < 65) { /* multipart/alternative */
        gen_subject(r, subject, sizeof(subject));
        put_headers(r, b, seed, idx, subject);
        sb_printf(b, "Content-Type: multipart/alternative; boundary=\"%s\"\n\n"
                     "This is a multi-part message in MIME format.\n\n--%s\n"
                     "Content-Type: text/plain; charset=us-ascii\n\n", alt, alt);
        gen_words(r, b, text / 2, false);
        sb_printf(b, "\n--%s\nContent-Type: text/html; charset=us-ascii\n\n<html><body>\n", alt);
        gen_words(r, b, text / 2, true);
        sb_printf(b, "</body></html>\n\n--%s--\n", alt);
    } else if (kind < 85) { /* attachments */
        gen_subject(r, subject, sizeof(subject));
        put_headers(r, b, seed, idx, subject);
        sb_printf(b, "Content-Type: multipart/mixed; boundary=\"%s\"\n\n"
                     "This is a multi-part message in MIME format.\n\n--%s\n"
                     "Content-Type: text/plain; charset=us-ascii\n\n", boundary, boundary);
        gen_words(r, b, MIN_SIZE, false);
        unsigned natt = 1 + rnd_below(r, 2);
        /* base64 lines carry 57 raw bytes in 77: keep the message under MAX_SIZE */
        size_t budget = (MAX_SIZE - b->n - 4096) * 57 / 77 / natt;
        for (unsigned a = 0; a < natt; a++) {
            static const char *const types[] = {"application/pdf", "application/zip",
                                                "image/png"};
            static const char *const exts[] = {"pdf", "zip", "png"};
            unsigned k = rnd_below(r, 3);
            size_t n = rnd_size(r, 1024, 1400 * 1024);
            if (n > budget)
                n = budget;
            unsigned char *blob = gen_blob(r, k, n);
            if (!blob)
                return -ENOMEM;
            sb_printf(b, "\n--%s\nContent-Type: %s; name=\"%s_%u.%s\"\n"
                         "Content-Transfer-Encoding: base64\n"
                         "Content-Disposition: attachment; filename=\"%s_%u.%s\"\n\n",
                      boundary, types[k], words[rnd_below(r, 40)], idx, exts[k],
                      words[rnd_below(r, 40)], idx, exts[k]);
            put_base64(b, blob, n);
            free(blob);
        }
        sb_printf(b, "\n--%s--\n", boundary);
    } else { /* Japanese, ISO-2022-JP */
        gen_subject_ja(r, cd, subject, sizeof(subject));
        put_headers(r, b, seed, idx, subject);
        sb_puts(b, "Content-Type: text/plain; charset=ISO-2022-JP\n"
                   "Content-Transfer-Encoding: 7bit\n\n");
        gen_japanese(r, b, cd, text);
    }
    return b->oom ? -ENOMEM : 0;
}

int mx_bench_corpus_generate(uint64_t seed, unsigned count, const char *dir)
{
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return -errno;
    iconv_t cd = iconv_open("ISO-2022-JP", "UTF-8");
    if (cd == (iconv_t)-1)
        return -errno;
    struct rng r = {seed};
    struct sbuf b = {0};
    int rc = 0;
    for (unsigned i = 1; i <= count && rc == 0; i++) {
        b.n = 0;
        rc = gen_message(&r, cd, seed, i, &b);
        if (rc < 0)
            break;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%06u.eml", dir, i);
        FILE *f = fopen(path, "wb");
        if (!f) {
            rc = -errno;
            break;
        }
        if (fwrite(b.p, 1, b.n, f) != b.n)
            rc = -EIO;
        if (fclose(f) != 0 && rc == 0)
            rc = -errno;
    }
    free(b.p);
    iconv_close(cd);
    return rc;
}

int mx_bench_gen_main(int argc, char **argv)
{
    uint64_t seed = 1;
    unsigned count = 100;
    const char *out = NULL;
    static const struct option lo[] = {
        {"seed", required_argument, 0, 's'},
        {"count", required_argument, 0, 'n'},
        {"out", required_argument, 0, 'o'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'n': count = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'o': out = optarg; break;
        case 'h':
            printf("usage: mxbench gen --seed N --count N --out DIR\n");
            return 0;
        default:
            fprintf(stderr, "usage: mxbench gen --seed N --count N --out DIR\n");
            return 2;
        }
    }
    if (!out || count == 0) {
        fprintf(stderr, "usage: mxbench gen --seed N --count N --out DIR\n");
        return 2;
    }
    int rc = mx_bench_corpus_generate(seed, count, out);
    if (rc < 0) {
        fprintf(stderr, "mxbench gen: %s\n", strerror(-rc));
        return 1;
    }
    return 0;
}
