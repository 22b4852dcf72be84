/*
 * checks.c - asynchronous DNS-based checks and recipient verification for
 * the SMTP server (see checks_internal.h): DNSBL on the client and on the
 * logical IP, URIBL on the MAIL FROM/HELO domains and, at end of data, on
 * the registered domains of the message's body URIs.
 *
 * Nothing here blocks a worker: every lookup goes through the DNS service
 * (mx_dns_query, answered later on the same worker) and every callout is a
 * stream of its own. The DNS service bounds each query (dns.timeout x
 * dns.tries), so a dead server ends as "no answer" (logged, not listed)
 * rather than a stuck session; a callout has recipient_verification.timeout.
 *
 * A connection's state may outlive its session: answers still in flight
 * hold a reference and are dropped once the session is gone.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "config/config.h"
#include "console/console.h"
#include "dataplane/dataplane.h"
#include "smtp/checks_internal.h"
#include "smtp/smtp.h"

#define LISTS_MAX 16
#define HDR_HOLD_MAX 16384 /* header bytes kept for the logical IP (Received headers) */

struct mx_checks {
    const struct mx_config *cfg;
    struct mx_checks_list dnsbl[LISTS_MAX];
    size_t n_dnsbl;
    struct mx_checks_list uribl[LISTS_MAX];
    size_t n_uribl;
    bool sender_domain;
    bool logical_ip;
};

/* What the answer at MAIL is waiting for. */
struct mail_wait {
    bool active;         /* the session waits for our answer */
    unsigned pending;    /* queries of this MAIL still out */
    int sender;          /* 0 ok / unknown yet, 1 tempfail, 2 no such domain */
    int sender_step;     /* 0 MX, 1 A, 2 AAAA */
    char domain[256];    /* sender domain */
    char addr[MX_ADDR_MAX];
    char helo[256];      /* as the client gave it (for the reply text) */
    int uribl_hit;       /* list index, -1 none */
    char uribl_domain[256];
};

/* The URIBL answers on the domains of one message's body URIs. */
struct uri_wait {
    unsigned pending;    /* queries not answered yet */
    unsigned names;      /* distinct names asked */
    unsigned asked;      /* queries sent (names x lists) */
    unsigned unanswered; /* failed or over the time budget */
    unsigned uris;       /* URIs looked at */
    int reject;          /* first reject list that listed a name, -1 none */
    char reject_domain[256];
    struct mx_checks_uri_hit hits[LISTS_MAX]; /* score lists that listed a name */
    size_t n_hits;
    struct timespec t0;
};

/* The DNSBL answers for one address (the client, or the logical IP) added up. */
struct bl_tally {
    unsigned pending; /* lists not answered yet */
    int hit;          /* first reject list that listed it, -1 none */
    double score;     /* sum of the score lists that listed it */
};

struct mx_checks_conn {
    struct mx_checks *ck;
    struct mx_worker *w;
    mx_checks_answer_fn answer;
    void *ud;
    unsigned refs; /* owner + queries and callouts in flight */
    bool gone;
    bool trusted; /* client in trusted_networks: no DNS list checks */
    char sid[24];
    char client_text[INET6_ADDRSTRLEN];
    /* DNSBL on the client address, started at connect */
    struct bl_tally dnsbl;
    struct mail_wait mw;
    char text[1200]; /* reply text given to the session (it copies it) */
    char rcpt_text[1200];
    unsigned uribl_gen; /* ignore answers of an earlier MAIL */
    /* logical IP: the header block of the current message, then its DNSBL verdict */
    uint8_t *hdr;
    size_t hdr_len;
    bool hdr_done; /* the empty line ending the headers was seen (or the buffer is full) */
    bool data_active; /* the end of data waits for our answer */
    struct bl_tally lg;
    char lg_text[INET6_ADDRSTRLEN];
    /* URIBL on the domains of the message's body URIs */
    struct uri_wait ur;
    unsigned ur_gen; /* ignore answers of an earlier message or past the time budget */
};

/* One DNS query in flight. */
struct dnsq {
    struct dnsq *prev, *next; /* the worker's in-flight list */
    unsigned widx;
    struct mx_checks_conn *cc;
    enum { Q_DNSBL, Q_URIBL, Q_SENDER, Q_LOGICAL, Q_BODYURI } kind;
    unsigned list;
    unsigned gen;
    char domain[256];
};

static void logf_cc(const struct mx_checks_conn *cc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void logf_cc(const struct mx_checks_conn *cc, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "mxgate[checks]: %s: %s\n", cc->sid, line);
}

/* ---- configuration ---------------------------------------------------- */

int mx_smtp_checks_parse_list(const char *spec, struct mx_checks_list *out, char *err,
                              size_t errlen)
{
    memset(out, 0, sizeof *out);
    char buf[400];
    if (strlen(spec) >= sizeof buf) {
        snprintf(err, errlen, "entry too long");
        return -EINVAL;
    }
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL;
    char *zone = strtok_r(buf, " \t", &save);
    if (!zone) {
        snprintf(err, errlen, "empty entry");
        return -EINVAL;
    }
    char *eq = strchr(zone, '=');
    if (eq) {
        *eq = 0;
        struct in_addr a;
        if (inet_pton(AF_INET, eq + 1, &a) != 1) {
            snprintf(err, errlen, "'%s' is not an IPv4 address", eq + 1);
            return -EINVAL;
        }
        memcpy(out->match, &a, 4);
        out->has_match = true;
    }
    size_t zl = strlen(zone);
    if (zl == 0 || zl >= sizeof out->zone || zone[0] == '.' || zone[zl - 1] == '.') {
        snprintf(err, errlen, "bad zone '%s'", zone);
        return -EINVAL;
    }
    for (size_t i = 0; i < zl; i++)
        if (!isalnum((unsigned char)zone[i]) && zone[i] != '-' && zone[i] != '.' && zone[i] != '_') {
            snprintf(err, errlen, "bad zone '%s'", zone);
            return -EINVAL;
        }
    for (size_t i = 0; i < zl; i++)
        out->zone[i] = (char)tolower((unsigned char)zone[i]);
    char *act = strtok_r(NULL, " \t", &save);
    if (!act) {
        snprintf(err, errlen, "'%s': say 'reject' or 'score=N'", zone);
        return -EINVAL;
    }
    if (strcmp(act, "reject") == 0) {
        out->reject = true;
    } else if (strncmp(act, "score=", 6) == 0) {
        char *end;
        out->score = strtod(act + 6, &end);
        if (end == act + 6 || *end) {
            snprintf(err, errlen, "'%s': bad score '%s'", zone, act + 6);
            return -EINVAL;
        }
    } else {
        snprintf(err, errlen, "'%s': unknown action '%s'", zone, act);
        return -EINVAL;
    }
    if (strtok_r(NULL, " \t", &save)) {
        snprintf(err, errlen, "'%s': text after the action", zone);
        return -EINVAL;
    }
    return 0;
}

static int load_lists(char *const *v, size_t n, const char *key, struct mx_checks_list *out,
                      size_t *n_out)
{
    if (n > LISTS_MAX) {
        fprintf(stderr, "mxgate[checks]: %s: at most %d lists\n", key, LISTS_MAX);
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        char err[256];
        if (mx_smtp_checks_parse_list(v[i], &out[i], err, sizeof err) < 0) {
            fprintf(stderr, "mxgate[checks]: %s[%zu]: %s\n", key, i, err);
            return -EINVAL;
        }
    }
    *n_out = n;
    return 0;
}

int mx_smtp_checks_new(const struct mx_config *cfg, struct mx_checks **out)
{
    *out = NULL;
    bool sender = cfg->sender_domain_check && strcmp(cfg->sender_domain_check, "reject") == 0;
    if (!cfg->n_dnsbl_lists && !cfg->n_uribl_lists && !sender && !cfg->n_rv_static_domains &&
        !cfg->n_rv_callout_domains)
        return 0;
    struct mx_checks *ck = calloc(1, sizeof *ck);
    if (!ck)
        return -ENOMEM;
    ck->cfg = cfg;
    ck->sender_domain = sender;
    ck->logical_ip = cfg->logical_ip && cfg->n_dnsbl_lists;
    if (load_lists(cfg->dnsbl_lists, cfg->n_dnsbl_lists, "dnsbl.lists", ck->dnsbl, &ck->n_dnsbl) <
            0 ||
        load_lists(cfg->uribl_lists, cfg->n_uribl_lists, "uribl.lists", ck->uribl, &ck->n_uribl) <
            0) {
        free(ck);
        return -EINVAL;
    }
    if (ck->n_uribl && !cfg->n_scan_rules)
        fprintf(stderr, "mxgate[checks]: uribl.lists: no scan.rules, so no URI list: only the "
                        "MAIL FROM and HELO domains are looked up\n");
    *out = ck;
    return 0;
}

void mx_smtp_checks_free(struct mx_checks *ck)
{
    free(ck);
}

/* ---- names and addresses ---------------------------------------------- */

/* An address as DNS lists name it, without the zone: "2.0.0.127", or 32
 * nibbles for IPv6; out has room for 64 characters and the NUL. */
static void reversed_addr(int family, const uint8_t *a, char out[65])
{
    if (family == AF_INET) {
        snprintf(out, 65, "%u.%u.%u.%u", a[3], a[2], a[1], a[0]);
        return;
    }
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[4 * i] = hex[a[15 - i] & 15];
        out[4 * i + 1] = '.';
        out[4 * i + 2] = hex[a[15 - i] >> 4];
        out[4 * i + 3] = '.';
    }
    out[63] = 0; /* no dot after the last nibble */
}

int mx_smtp_checks_query_name(const struct sockaddr *sa, const char *zone, char *out,
                              size_t outlen)
{
    char rev[65];
    if (sa->sa_family == AF_INET) {
        reversed_addr(AF_INET, (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr, rev);
    } else if (sa->sa_family == AF_INET6 &&
               IN6_IS_ADDR_V4MAPPED(&((const struct sockaddr_in6 *)sa)->sin6_addr)) {
        /* an IPv4 client on an IPv6 socket is listed under its IPv4 name */
        reversed_addr(AF_INET, ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr + 12, rev);
    } else if (sa->sa_family == AF_INET6) {
        reversed_addr(AF_INET6, ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr, rev);
    } else {
        return -EAFNOSUPPORT;
    }
    int n = snprintf(out, outlen, "%s.%s", rev, zone);
    return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

/* ---- body URIs: the name a URIBL knows a link by ----------------------- */

/*
 * Second-level labels under which registries sell names, so that the
 * registered domain has three labels ("shop.example.co.uk" -> "example.co.uk").
 * A short fixed list of the common ones, not the Public Suffix List
 * (docs/CONFIG.md says which).
 */
static const char *const two_level_suffixes[] = {
    "ac.uk",  "co.uk",   "gov.uk", "ltd.uk", "me.uk",  "net.uk", "org.uk",  "plc.uk", "sch.uk",
    "asn.au", "com.au",  "edu.au", "gov.au", "id.au",  "net.au", "org.au",  "ac.jp",  "co.jp",
    "go.jp",  "gr.jp",   "ne.jp",  "or.jp",  "ac.nz",  "co.nz",  "govt.nz", "net.nz", "org.nz",
    "co.za",  "gov.za",  "net.za", "org.za", "com.br", "gov.br", "net.br",  "org.br", "com.cn",
    "edu.cn", "gov.cn",  "net.cn", "org.cn", "com.hk", "com.tw", "com.sg",  "com.my", "co.id",
    "co.in",  "firm.in", "gen.in", "ind.in", "net.in", "org.in", "co.kr",   "or.kr",  "co.il",
    "org.il", "co.th",   "in.th",  "com.mx", "com.ar", "com.co", "com.pe",  "com.tr", "com.ua",
    "com.pl", "com.vn",  "com.ph", "com.pk", "com.ng", "com.eg", "com.sa",  "co.ke",  "co.ve",
};

static bool two_level_suffix(const char *s)
{
    for (size_t i = 0; i < sizeof two_level_suffixes / sizeof two_level_suffixes[0]; i++)
        if (strcmp(s, two_level_suffixes[i]) == 0)
            return true;
    return false;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

int mx_smtp_checks_uri_name(const char *uri, char *out, size_t outlen)
{
    const char *p = uri, *end;
    if (strncasecmp(p, "mailto:", 7) == 0) {
        /* mailto:user@host?subject=...: the domain of the (first) address */
        p += 7;
        end = p + strcspn(p, "?,;>& \t");
        const char *at = NULL;
        for (const char *q = p; q < end; q++)
            if (*q == '@')
                at = q;
        if (!at)
            return -ENOENT;
        p = at + 1;
    } else {
        if (strncasecmp(p, "http://", 7) == 0)
            p += 7;
        else if (strncasecmp(p, "https://", 8) == 0)
            p += 8;
        else if (strncasecmp(p, "ftp://", 6) == 0)
            p += 6;
        else if (strncmp(p, "//", 2) == 0)
            p += 2;
        else if (strncasecmp(p, "www.", 4) != 0)
            return -ENOENT; /* relative links, cid:, data:, other schemes */
        while (*p == '/' || *p == '\\')
            p++; /* browsers forgive "http:///host" and backslashes */
        end = p + strcspn(p, "/?#\\");
        /* user:password@host: the host is after the last '@' */
        for (const char *q = end; q > p; q--)
            if (q[-1] == '@') {
                p = q;
                break;
            }
        if (*p == '[') {
            /* IPv6 literal */
            const char *rb = memchr(p, ']', (size_t)(end - p));
            char lit[64];
            size_t l = rb ? (size_t)(rb - p - 1) : 0;
            struct in6_addr a6;
            if (!rb || l == 0 || l >= sizeof lit)
                return -ENOENT;
            memcpy(lit, p + 1, l);
            lit[l] = 0;
            if (inet_pton(AF_INET6, lit, &a6) != 1 || outlen < 65)
                return -ENOENT;
            if (IN6_IS_ADDR_V4MAPPED(&a6))
                reversed_addr(AF_INET, a6.s6_addr + 12, out);
            else
                reversed_addr(AF_INET6, a6.s6_addr, out);
            return MX_URI_IP;
        }
        const char *colon = memchr(p, ':', (size_t)(end - p));
        if (colon)
            end = colon; /* the port */
    }
    /* the host: percent-decoded, lower-cased, one trailing dot dropped */
    char host[256];
    size_t hl = 0;
    for (const char *q = p; q < end; q++) {
        char c = *q;
        if (c == '%' && end - q >= 3 && hexval(q[1]) >= 0 && hexval(q[2]) >= 0) {
            c = (char)(hexval(q[1]) * 16 + hexval(q[2]));
            q += 2;
        }
        if (hl >= sizeof host - 1)
            return -ENOENT;
        host[hl++] = (char)tolower((unsigned char)c);
    }
    if (hl && host[hl - 1] == '.')
        hl--;
    host[hl] = 0;
    if (hl == 0 || hl > 253)
        return -ENOENT;
    /* letters, digits, '-', '_' in labels of 1..63; anything else (IDN
     * bytes, spaces, quotes) is not a name a list can hold */
    size_t nlabels = 1, ll = 0;
    for (size_t i = 0; i < hl; i++) {
        char c = host[i];
        if (c == '.') {
            if (ll == 0)
                return -ENOENT;
            nlabels++;
            ll = 0;
            continue;
        }
        if (!isalnum((unsigned char)c) && c != '-' && c != '_')
            return -ENOENT;
        if (++ll > 63)
            return -ENOENT;
    }
    if (ll == 0)
        return -ENOENT;
    /* an all-numeric last label makes it an IPv4 address, as browsers read
     * it (so "http://3232235777/" and "0x7f.1" are addresses too) */
    const char *last = strrchr(host, '.');
    last = last ? last + 1 : host;
    bool numeric =
        strspn(last, "0123456789") == strlen(last) ||
        (strncmp(last, "0x", 2) == 0 && strspn(last + 2, "0123456789abcdef") == strlen(last + 2));
    if (numeric) {
        struct in_addr a4;
        if (inet_aton(host, &a4) == 0 || outlen < 16)
            return -ENOENT;
        reversed_addr(AF_INET, (const uint8_t *)&a4, out);
        return MX_URI_IP;
    }
    if (nlabels < 2)
        return -ENOENT; /* "localhost", "intranet" */
    /* the registered domain: the last two labels, or three under a two-level suffix */
    const char *dom = host + hl;
    unsigned want = 2;
    for (unsigned seen = 0; dom > host; dom--) {
        if (dom[-1] != '.')
            continue;
        if (++seen == want) {
            if (want == 2 && two_level_suffix(dom)) {
                want = 3;
                continue;
            }
            break;
        }
    }
    if (nlabels == 2 && two_level_suffix(host))
        return -ENOENT; /* the suffix itself ("co.uk") */
    size_t dl = strlen(dom);
    if (dl + 1 > outlen)
        return -ENOENT;
    memcpy(out, dom, dl + 1);
    return MX_URI_DOMAIN;
}

static bool cidr_match(const struct mx_cidr *c, int family, const uint8_t *addr)
{
    if (c->family != family)
        return false;
    unsigned bits = c->prefix, i = 0;
    for (; bits >= 8; bits -= 8, i++)
        if (c->addr[i] != addr[i])
            return false;
    if (bits) {
        uint8_t mask = (uint8_t)(0xff << (8 - bits));
        if ((c->addr[i] & mask) != (addr[i] & mask))
            return false;
    }
    return true;
}

/* Ordered list, '!' excludes, first match wins (as trusted_networks). */
static bool in_cidrs(const struct mx_cidr *v, size_t n, const struct sockaddr_storage *ss)
{
    const uint8_t *a = ss->ss_family == AF_INET
                           ? (const uint8_t *)&((const struct sockaddr_in *)ss)->sin_addr
                           : ((const struct sockaddr_in6 *)ss)->sin6_addr.s6_addr;
    for (size_t i = 0; i < n; i++)
        if (cidr_match(&v[i], ss->ss_family, a))
            return !v[i].negate;
    return false;
}

/*
 * Take the address of the "from" part of one unfolded Received header:
 * the first bracketed literal before " by " ("from h (h [192.0.2.1])" or
 * "[IPv6:2001:db8::1]").
 */
static bool received_from_ip(const char *h, struct sockaddr_storage *out)
{
    while (*h == ' ' || *h == '\t')
        h++;
    if (strncasecmp(h, "from", 4) != 0 || (h[4] != ' ' && h[4] != '\t'))
        return false;
    const char *end = strcasestr(h, " by ");
    if (!end)
        end = h + strlen(h);
    for (const char *p = h; p < end; p++) {
        if (*p != '[')
            continue;
        const char *q = memchr(p, ']', (size_t)(end - p));
        if (!q)
            return false;
        char lit[64];
        size_t l = (size_t)(q - p - 1);
        if (l >= sizeof lit)
            continue;
        memcpy(lit, p + 1, l);
        lit[l] = 0;
        const char *ip = strncasecmp(lit, "IPv6:", 5) == 0 ? lit + 5 : lit;
        memset(out, 0, sizeof *out);
        struct sockaddr_in *s4 = (struct sockaddr_in *)out;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)out;
        if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
            s4->sin_family = AF_INET;
            return true;
        }
        if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1) {
            s6->sin6_family = AF_INET6;
            return true;
        }
        p = q;
    }
    return false;
}

int mx_smtp_checks_received_ip(const uint8_t *hdr, size_t len, const struct mx_cidr *trusted,
                               size_t n_trusted, struct sockaddr_storage *out)
{
    /* one header at a time, unfolded into a bounded buffer (longer ones are cut) */
    char h[4096];
    size_t hl = 0;
    bool in_received = false;
    size_t i = 0;
    while (i <= len) {
        size_t e = i;
        while (e < len && hdr[e] != '\n')
            e++;
        size_t ll = e - i;
        if (ll && hdr[i + ll - 1] == '\r')
            ll--;
        bool eof = i >= len;
        bool cont = !eof && ll && (hdr[i] == ' ' || hdr[i] == '\t');
        if (!cont && in_received) {
            h[hl] = 0;
            struct sockaddr_storage ss;
            if (received_from_ip(h, &ss) && !in_cidrs(trusted, n_trusted, &ss)) {
                *out = ss;
                return 0;
            }
            in_received = false;
        }
        if (eof || ll == 0)
            break; /* end of the header block */
        if (!cont) {
            if (ll >= 9 && strncasecmp((const char *)hdr + i, "Received:", 9) == 0) {
                in_received = true;
                hl = 0;
                size_t k = ll - 9 < sizeof h - 1 ? ll - 9 : sizeof h - 1;
                memcpy(h, hdr + i + 9, k);
                hl = k;
            }
        } else if (in_received) {
            for (size_t k = 0; k < ll && hl < sizeof h - 1; k++) {
                char c = (char)hdr[i + k];
                h[hl++] = c == '\t' ? ' ' : c;
            }
        }
        for (size_t k = 0; k < hl; k++)
            if (h[k] == 0)
                h[k] = ' '; /* a NUL must not end the header early */
        i = e + 1;
    }
    return -ENOENT;
}

/* ---- connection state ------------------------------------------------- */

static void cc_unref(struct mx_checks_conn *cc)
{
    if (--cc->refs == 0) {
        free(cc->hdr);
        free(cc);
    }
}

static bool dnsbl_listed(const struct mx_checks_list *l, const struct mx_dns_result *r)
{
    if (r->status != 0)
        return false;
    for (size_t i = 0; i < r->n; i++) {
        /* only 127.0.0.0/8 answers mean "listed"; others are errors of the list */
        if (r->a[i][0] != 127)
            continue;
        if (!l->has_match || memcmp(r->a[i], l->match, 4) == 0)
            return true;
    }
    return false;
}

static void mail_finish(struct mx_checks_conn *cc, struct mx_smtpd_reply *r);

static void mail_maybe_answer(struct mx_checks_conn *cc)
{
    if (!cc->mw.active || cc->mw.pending || cc->dnsbl.pending || cc->gone)
        return;
    struct mx_smtpd_reply r = {0};
    mail_finish(cc, &r);
    cc->mw.active = false;
    cc->answer(cc->ud, &r);
}

static void start_query(struct mx_checks_conn *cc, int kind, unsigned list, const char *name,
                        enum mx_dns_type type, const char *domain);

/* One DNSBL answer for the address tallied in t (who/ip name it in the log). */
/* Console counters of one DNS list answer. */
static void count_answer(const struct mx_dns_result *r, bool listed, bool uribl)
{
    if (listed)
        mx_stats_add(uribl ? MX_STAT_URIBL_LISTED : MX_STAT_DNSBL_LISTED, 1);
    else if (r->status != 0 && r->status != -ENOENT)
        MX_STATS_INC(DNS_LIST_FAILED);
}

static void tally_answer(struct mx_checks_conn *cc, struct bl_tally *t, unsigned list,
                         const struct mx_dns_result *r, const char *who, const char *ip)
{
    const struct mx_checks_list *l = &cc->ck->dnsbl[list];
    t->pending--;
    count_answer(r, dnsbl_listed(l, r), false);
    if (!dnsbl_listed(l, r))
        return;
    logf_cc(cc, "%s %s listed at %s", who, ip, l->zone);
    if (!l->reject)
        t->score += l->score;
    else if (t->hit < 0 || (int)list < t->hit)
        t->hit = (int)list; /* lists are ordered: the first listing one is named */
}

/* The zone to name when the tally refuses the address, or NULL when it does not. */
static const char *tally_verdict(const struct mx_checks_conn *cc, const struct bl_tally *t)
{
    if (t->hit >= 0)
        return cc->ck->dnsbl[t->hit].zone;
    if (t->score > 0 && t->score >= cc->ck->cfg->dnsbl_threshold)
        return "DNS lists (score)";
    return NULL;
}

/* The DNSBL verdict on the logical IP, once every answer is in. */
static void logical_verdict(struct mx_checks_conn *cc, struct mx_smtpd_reply *r)
{
    const char *zone = tally_verdict(cc, &cc->lg);
    if (!zone)
        return;
    snprintf(cc->text, sizeof cc->text, "Message rejected; originating client [%s] listed at %s",
             cc->lg_text, zone);
    *r = (struct mx_smtpd_reply){554, "5.7.1", cc->text};
}

/*
 * Queries in flight, per worker (each slot touched only by its worker).
 * The DNS service owns them until it answers; when the gateway stops, the
 * workers stop first and the answers of the last queries are never
 * delivered, so they are kept reachable here rather than lost.
 */
#define INFLIGHT_WORKERS 128 /* as dataplane's MX_MAX_WORKERS */
static struct dnsq *inflight[INFLIGHT_WORKERS];

static void inflight_add(struct dnsq *q)
{
    q->next = inflight[q->widx];
    if (q->next)
        q->next->prev = q;
    inflight[q->widx] = q;
}

static void inflight_del(struct dnsq *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        inflight[q->widx] = q->next;
    if (q->next)
        q->next->prev = q->prev;
}

static uint64_t ms_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)(now.tv_sec - t0->tv_sec) * 1000u +
           (uint64_t)((now.tv_nsec - t0->tv_nsec) / 1000000);
}

/* One URIBL answer on a body URI's name: a list counts once per message. */
static void uri_answer(struct mx_checks_conn *cc, const struct dnsq *q,
                       const struct mx_dns_result *r)
{
    struct uri_wait *u = &cc->ur;
    const struct mx_checks_list *l = &cc->ck->uribl[q->list];
    u->pending--;
    if (r->status != 0 && r->status != -ENOENT)
        u->unanswered++;
    count_answer(r, dnsbl_listed(l, r), true);
    if (!dnsbl_listed(l, r))
        return;
    logf_cc(cc, "URI domain %s listed at %s", q->domain, l->zone);
    if (l->reject) {
        if (u->reject < 0 || (int)q->list < u->reject) {
            u->reject = (int)q->list;
            snprintf(u->reject_domain, sizeof u->reject_domain, "%s", q->domain);
        }
        return;
    }
    for (size_t i = 0; i < u->n_hits; i++)
        if (u->hits[i].zone == l->zone)
            return;
    struct mx_checks_uri_hit *h = &u->hits[u->n_hits++];
    h->zone = l->zone;
    h->score = l->score;
    snprintf(h->domain, sizeof h->domain, "%s", q->domain);
    /* a rule-like name for X-Spam-Rules: URIBL_ and the zone, A-Z 0-9 _ */
    size_t k = (size_t)snprintf(h->rule, sizeof h->rule, "URIBL_");
    for (const char *z = l->zone; *z && k < sizeof h->rule - 1; z++)
        h->rule[k++] = isalnum((unsigned char)*z) ? (char)toupper((unsigned char)*z) : '_';
    h->rule[k] = 0;
}

/* The verdict of the body URIs: 550 naming the domain and the first reject list. */
static void uri_verdict(struct mx_checks_conn *cc, struct mx_smtpd_reply *r)
{
    struct uri_wait *u = &cc->ur;
    if (u->names)
        logf_cc(cc,
                "URIBL: %u URIs, %u names, %u queries, %u unanswered, %zu score lists, %s "
                "in %lu ms",
                u->uris, u->names, u->asked, u->unanswered, u->n_hits,
                u->reject >= 0 ? "rejected" : "not rejected", (unsigned long)ms_since(&u->t0));
    if (u->reject < 0)
        return;
    snprintf(cc->text, sizeof cc->text, "Message rejected; URI domain %s listed at %s",
             u->reject_domain, cc->ck->uribl[u->reject].zone);
    *r = (struct mx_smtpd_reply){550, "5.7.1", cc->text};
    logf_cc(cc, "reject: %s", cc->text);
}

/* Every end-of-data answer is in (or the URIBL budget is spent): answer the session. */
static void data_maybe_answer(struct mx_checks_conn *cc)
{
    if (!cc->data_active || cc->lg.pending || cc->ur.pending || cc->gone)
        return;
    struct mx_smtpd_reply ans = {0};
    logical_verdict(cc, &ans);
    if (!ans.code)
        uri_verdict(cc, &ans);
    cc->data_active = false;
    cc->answer(cc->ud, &ans);
}

static void on_dns(void *arg, const struct mx_dns_result *r)
{
    struct dnsq *q = arg;
    inflight_del(q);
    struct mx_checks_conn *cc = q->cc;
    if (cc->gone)
        goto out;
    if (r->status != 0 && r->status != -ENOENT)
        logf_cc(cc, "DNS %s: no answer (%s), treated as not listed / unknown", r->name,
                strerror(-r->status));
    if (q->kind == Q_DNSBL) {
        tally_answer(cc, &cc->dnsbl, q->list, r, "client", cc->client_text);
        mail_maybe_answer(cc);
        goto out;
    }
    if (q->kind == Q_LOGICAL) {
        tally_answer(cc, &cc->lg, q->list, r, "logical client", cc->lg_text);
        data_maybe_answer(cc);
        goto out;
    }
    if (q->kind == Q_BODYURI) {
        if (q->gen == cc->ur_gen) {
            uri_answer(cc, q, r);
            data_maybe_answer(cc);
        }
        goto out;
    }
    if (q->gen != cc->uribl_gen)
        goto out; /* an earlier MAIL's answer */
    cc->mw.pending--;
    if (q->kind == Q_URIBL) {
        const struct mx_checks_list *l = &cc->ck->uribl[q->list];
        count_answer(r, dnsbl_listed(l, r), true);
        if (dnsbl_listed(l, r) && l->reject &&
            (cc->mw.uribl_hit < 0 || (int)q->list < cc->mw.uribl_hit)) {
            cc->mw.uribl_hit = (int)q->list;
            snprintf(cc->mw.uribl_domain, sizeof cc->mw.uribl_domain, "%s", q->domain);
            logf_cc(cc, "domain %s listed at %s", q->domain, l->zone);
        }
    } else { /* sender domain: MX, then A, then AAAA */
        if (r->status == 0 && r->n > 0) {
            cc->mw.sender = 0;
        } else if (r->status == -ENOENT) {
            static const enum mx_dns_type next[] = {MX_DNS_A, MX_DNS_AAAA};
            if (cc->mw.sender_step < 2) {
                unsigned before = cc->mw.pending;
                start_query(cc, Q_SENDER, 0, cc->mw.domain, next[cc->mw.sender_step++],
                            cc->mw.domain);
                if (cc->mw.pending > before)
                    goto out; /* the next step answers */
            }
            if (cc->mw.sender != 1)
                cc->mw.sender = 2;
        } else {
            cc->mw.sender = 1; /* SERVFAIL, timeout: try again later */
        }
    }
    mail_maybe_answer(cc);
out:
    cc_unref(cc);
    free(q);
}

static void start_query(struct mx_checks_conn *cc, int kind, unsigned list, const char *name,
                        enum mx_dns_type type, const char *domain)
{
    struct dnsq *q = calloc(1, sizeof *q);
    if (!q) {
        logf_cc(cc, "DNS %s: out of memory, check skipped", name);
        return;
    }
    q->cc = cc;
    q->kind = kind;
    q->list = list;
    q->gen = kind == Q_BODYURI ? cc->ur_gen : cc->uribl_gen;
    q->widx = mx_worker_index(cc->w) % INFLIGHT_WORKERS;
    snprintf(q->domain, sizeof q->domain, "%s", domain ? domain : "");
    int rc = mx_dns_query(cc->w, name, type, on_dns, q);
    if (rc == 0)
        inflight_add(q);
    if (rc < 0) {
        logf_cc(cc, "DNS %s: cannot ask (%s), check skipped", name, strerror(-rc));
        free(q);
        if (kind == Q_SENDER && cc->mw.sender != 2)
            cc->mw.sender = 1;
        return;
    }
    cc->refs++;
    if (kind == Q_DNSBL)
        cc->dnsbl.pending++;
    else if (kind == Q_LOGICAL)
        cc->lg.pending++;
    else if (kind == Q_BODYURI)
        cc->ur.pending++;
    else
        cc->mw.pending++;
}

struct mx_checks_conn *mx_smtp_checks_conn_new(struct mx_checks *ck, struct mx_worker *w,
                                               const struct sockaddr *client, const char *sid,
                                               mx_checks_answer_fn answer, void *ud)
{
    if (!ck)
        return NULL;
    struct mx_checks_conn *cc = calloc(1, sizeof *cc);
    if (!cc)
        return NULL;
    cc->ck = ck;
    cc->w = w;
    cc->answer = answer;
    cc->ud = ud;
    cc->refs = 1;
    cc->dnsbl.hit = -1;
    cc->lg.hit = -1;
    snprintf(cc->sid, sizeof cc->sid, "%s", sid ? sid : "-");
    if (client->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)client)->sin_addr, cc->client_text,
                  sizeof cc->client_text);
    else if (client->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)client)->sin6_addr, cc->client_text,
                  sizeof cc->client_text);
    cc->trusted = mx_config_is_trusted(ck->cfg, client);
    if (ck->n_dnsbl && w && !cc->trusted) {
        for (size_t i = 0; i < ck->n_dnsbl; i++) {
            char name[MX_DNS_NAME_MAX];
            if (mx_smtp_checks_query_name(client, ck->dnsbl[i].zone, name, sizeof name) == 0)
                start_query(cc, Q_DNSBL, (unsigned)i, name, MX_DNS_A, NULL);
        }
    }
    return cc;
}

void mx_smtp_checks_conn_free(struct mx_checks_conn *cc)
{
    if (!cc)
        return;
    cc->gone = true;
    cc_unref(cc);
}

/* ---- MAIL ------------------------------------------------------------- */

/* The verdict once every answer is in: DNSBL, then URIBL, then the sender domain. */
static void mail_finish(struct mx_checks_conn *cc, struct mx_smtpd_reply *r)
{
    const char *zone = tally_verdict(cc, &cc->dnsbl);
    if (zone) {
        snprintf(cc->text, sizeof cc->text, "Service unavailable; client [%s] listed at %s",
                 cc->client_text, zone);
        *r = (struct mx_smtpd_reply){554, "5.7.1", cc->text};
        logf_cc(cc, "reject: MAIL from <%s>: client [%s] listed at %s", cc->mw.addr,
                cc->client_text, zone);
        return;
    }
    if (cc->mw.uribl_hit >= 0) {
        /* the listed name is the sender's domain, or else the HELO name */
        bool helo = strcmp(cc->mw.uribl_domain, cc->mw.domain) != 0;
        snprintf(cc->text, sizeof cc->text, "<%s>: %s rejected: %s listed at %s",
                 helo ? cc->mw.helo : cc->mw.addr, helo ? "Helo command" : "Sender address",
                 cc->mw.uribl_domain, cc->ck->uribl[cc->mw.uribl_hit].zone);
        *r = (struct mx_smtpd_reply){554, "5.7.1", cc->text};
        logf_cc(cc, "reject: %s", cc->text);
        return;
    }
    if (cc->mw.sender == 2) {
        snprintf(cc->text, sizeof cc->text, "<%s>: Sender address rejected: Domain not found",
                 cc->mw.addr);
        *r = (struct mx_smtpd_reply){550, "5.1.8", cc->text};
        logf_cc(cc, "reject: %s", cc->text);
    } else if (cc->mw.sender == 1) {
        snprintf(cc->text, sizeof cc->text,
                 "<%s>: Sender address rejected: Domain lookup failed, try again later",
                 cc->mw.addr);
        *r = (struct mx_smtpd_reply){450, "4.1.8", cc->text};
        logf_cc(cc, "tempfail: %s", cc->text);
    }
}

/* A domain worth looking up: a dotted name, not an address literal. */
static bool lookup_domain(const char *d)
{
    return d[0] && d[0] != '[' && strchr(d, '.') && strlen(d) < 200;
}

void mx_smtp_checks_mail(struct mx_checks_conn *cc, const struct mx_envelope *env,
                         struct mx_smtpd_reply *r)
{
    if (!cc)
        return;
    struct mail_wait *mw = &cc->mw;
    memset(mw, 0, sizeof *mw);
    cc->hdr_len = 0; /* a new transaction: a new header block */
    cc->hdr_done = false;
    mw->uribl_hit = -1;
    cc->uribl_gen++;
    snprintf(mw->addr, sizeof mw->addr, "%s", env->mail_from);
    snprintf(mw->helo, sizeof mw->helo, "%.255s", env->helo);
    const char *at = strrchr(env->mail_from, '@');
    if (at) {
        size_t i = 0;
        for (const char *p = at + 1; *p && i < sizeof mw->domain - 1; p++)
            mw->domain[i++] = (char)tolower((unsigned char)*p);
        mw->domain[i] = 0;
    }
    bool trusted = mx_config_is_trusted(cc->ck->cfg, (const struct sockaddr *)&env->client);
    if (!trusted && cc->w) {
        if (cc->ck->sender_domain && lookup_domain(mw->domain))
            start_query(cc, Q_SENDER, 0, mw->domain, MX_DNS_MX, mw->domain);
        /* URIBL: no URI list from the scanner at MAIL time; the sender and HELO domains */
        const char *doms[2] = {mw->domain, env->helo};
        for (size_t d = 0; d < 2; d++) {
            if (!lookup_domain(doms[d]) || (d == 1 && strcasecmp(doms[1], doms[0]) == 0))
                continue;
            for (size_t i = 0; i < cc->ck->n_uribl; i++) {
                char name[MX_DNS_NAME_MAX];
                int n = snprintf(name, sizeof name, "%s.%s", doms[d], cc->ck->uribl[i].zone);
                if (n > 0 && (size_t)n < sizeof name)
                    start_query(cc, Q_URIBL, (unsigned)i, name, MX_DNS_A, doms[d]);
            }
        }
    }
    if (mw->pending || cc->dnsbl.pending) {
        mw->active = true;
        r->code = MX_SMTPD_PENDING;
        return;
    }
    mail_finish(cc, r);
}

/* ---- recipient verification: per-worker cache ------------------------- */

#define RV_WAYS 4     /* entries per set; the oldest of a full set is replaced */
#define RV_KEY_MAX 256 /* longer addresses are verified every time */

struct rv_entry {
    char key[RV_KEY_MAX]; /* lower-case address; "" = free */
    bool ok;              /* 250 (else 550) */
    bool refreshing;      /* a background callout is under way */
    uint64_t at;          /* when it was verified, monotonic seconds */
};

struct rv_cache {
    unsigned gen; /* rv_clear_gen this cache was emptied for */
    size_t nsets;
    struct rv_entry *e;
};

/* One cache per worker: only its worker touches it. */
static __thread struct rv_cache *tl_rv;
/* Bumped by mx_smtp_checks_cache_clear(); each worker empties its cache when it sees it move. */
static atomic_uint rv_clear_gen;

void mx_smtp_checks_cache_clear(void)
{
    atomic_fetch_add_explicit(&rv_clear_gen, 1, memory_order_release);
}

static uint64_t mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec;
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static struct rv_cache *rv_cache(size_t size)
{
    unsigned gen = atomic_load_explicit(&rv_clear_gen, memory_order_acquire);
    if (!tl_rv) {
        tl_rv = calloc(1, sizeof *tl_rv);
        if (!tl_rv)
            return NULL;
        size_t n = size ? size : 10000;
        tl_rv->nsets = (n + RV_WAYS - 1) / RV_WAYS;
        tl_rv->e = calloc(tl_rv->nsets * RV_WAYS, sizeof *tl_rv->e);
        if (!tl_rv->e) {
            free(tl_rv);
            tl_rv = NULL;
            return NULL;
        }
        tl_rv->gen = gen;
    }
    if (tl_rv->gen != gen) {
        memset(tl_rv->e, 0, tl_rv->nsets * RV_WAYS * sizeof *tl_rv->e);
        tl_rv->gen = gen;
        fprintf(stderr, "mxgate[checks]: recipient verification cache cleared\n");
    }
    return tl_rv;
}

static struct rv_entry *rv_find(struct rv_cache *c, const char *key)
{
    struct rv_entry *set = &c->e[(fnv1a(key) % c->nsets) * RV_WAYS];
    for (unsigned i = 0; i < RV_WAYS; i++)
        if (set[i].key[0] && strcmp(set[i].key, key) == 0)
            return &set[i];
    return NULL;
}

static void rv_store(struct rv_cache *c, const char *key, bool ok)
{
    if (strlen(key) >= RV_KEY_MAX)
        return;
    struct rv_entry *e = rv_find(c, key);
    if (!e) {
        struct rv_entry *set = &c->e[(fnv1a(key) % c->nsets) * RV_WAYS];
        e = &set[0];
        for (unsigned i = 0; i < RV_WAYS; i++) {
            if (!set[i].key[0]) {
                e = &set[i];
                break;
            }
            if (set[i].at < e->at)
                e = &set[i];
        }
    }
    snprintf(e->key, sizeof e->key, "%s", key);
    e->ok = ok;
    e->refreshing = false;
    e->at = mono_s();
}

/* ---- recipient verification: callout ---------------------------------- */

enum { CO_OK = 0, CO_REJECT, CO_TEMP };

struct callout {
    struct mx_stream *st;
    struct mx_checks_conn *cc; /* waiting session, or NULL for a background refresh */
    size_t cache_size;
    bool closing; /* mx_stream_close() was called: only closed() follows */
    char addr[RV_KEY_MAX];
    char helo[256];
    int step; /* 0 greeting, 1 EHLO, 2 MAIL, 3 RCPT, 4 QUIT */
    char line[1024];
    size_t ll;
    bool reported;
    unsigned timeout_ms;
    char sid[24];
};

static void rcpt_reply(struct mx_checks_conn *cc, const char *addr, int res, const char *why,
                       struct mx_smtpd_reply *r)
{
    if (res == CO_OK) {
        *r = (struct mx_smtpd_reply){0};
    } else if (res == CO_REJECT) {
        snprintf(cc->rcpt_text, sizeof cc->rcpt_text,
                 "<%s>: Recipient address rejected: User unknown", addr);
        *r = (struct mx_smtpd_reply){550, "5.1.1", cc->rcpt_text};
    } else {
        snprintf(cc->rcpt_text, sizeof cc->rcpt_text,
                 "<%s>: Recipient address rejected: unverified address: %s", addr, why);
        *r = (struct mx_smtpd_reply){450, "4.2.0", cc->rcpt_text};
    }
}

/* The verdict is known: cache it (definite answers only) and answer the waiting session. */
static void callout_report(struct callout *co, int res, const char *why)
{
    if (co->reported)
        return;
    co->reported = true;
    fprintf(stderr, "mxgate[checks]: %s: callout <%s>: %s (%s)\n", co->sid, co->addr,
            res == CO_OK ? "accepted" : res == CO_REJECT ? "rejected" : "tempfail", why);
    struct rv_cache *c = rv_cache(co->cache_size);
    if (c) {
        if (res != CO_TEMP) {
            rv_store(c, co->addr, res == CO_OK);
        } else {
            struct rv_entry *e = rv_find(c, co->addr);
            if (e)
                e->refreshing = false; /* keep serving the old answer; retry later */
        }
    }
    struct mx_checks_conn *cc = co->cc;
    co->cc = NULL;
    if (cc) {
        if (!cc->gone) {
            struct mx_smtpd_reply r;
            rcpt_reply(cc, co->addr, res, why, &r);
            cc->answer(cc->ud, &r);
        }
        cc_unref(cc);
    }
}

static void co_close(struct callout *co)
{
    if (!co->closing) {
        co->closing = true;
        mx_stream_close(co->st);
    }
}

static void co_send(struct callout *co, const char *fmt, const char *arg)
{
    char buf[600];
    int n = snprintf(buf, sizeof buf, fmt, arg);
    if (n < 0 || (size_t)n >= sizeof buf || mx_stream_write(co->st, buf, (size_t)n) < 0) {
        callout_report(co, CO_TEMP, "write failed");
        co_close(co);
    }
}

/* One complete reply from the downstream server. */
static void co_reply(struct callout *co, int code, const char *text)
{
    char why[300];
    snprintf(why, sizeof why, "%d %.250s", code, text);
    switch (co->step) {
    case 0:
    case 1:
    case 2:
        if (code / 100 != 2) {
            callout_report(co, CO_TEMP, why);
            co->step = 4;
            co_send(co, "%sQUIT\r\n", "");
            return;
        }
        co->step++;
        if (co->step == 1)
            co_send(co, "EHLO %s\r\n", co->helo);
        else if (co->step == 2)
            co_send(co, "MAIL FROM:<>%s\r\n", "");
        else
            co_send(co, "RCPT TO:<%s>\r\n", co->addr);
        return;
    case 3:
        callout_report(co, code / 100 == 2 ? CO_OK : code / 100 == 5 ? CO_REJECT : CO_TEMP, why);
        co->step = 4;
        co_send(co, "%sQUIT\r\n", "");
        return;
    default:
        co_close(co);
    }
}

static void co_data(struct mx_stream *s, void *ctx, const uint8_t *buf, size_t len)
{
    (void)s;
    struct callout *co = ctx;
    for (size_t i = 0; i < len && !co->closing; i++) {
        if (buf[i] != '\n') {
            if (co->ll < sizeof co->line - 1)
                co->line[co->ll++] = (char)buf[i];
            continue;
        }
        size_t l = co->ll;
        co->ll = 0;
        if (l && co->line[l - 1] == '\r')
            l--;
        co->line[l] = 0;
        if (l < 3 || !isdigit((unsigned char)co->line[0]) || !isdigit((unsigned char)co->line[1]) ||
            !isdigit((unsigned char)co->line[2])) {
            callout_report(co, CO_TEMP, "malformed reply");
            co_close(co);
            return;
        }
        if (l > 3 && co->line[3] == '-')
            continue; /* more lines of this reply follow */
        co_reply(co, atoi(co->line), l > 4 ? co->line + 4 : "");
    }
    if (!co->closing)
        mx_stream_set_timer(co->st, co->timeout_ms);
}

static void co_connected(struct mx_stream *s, void *ctx, int res)
{
    struct callout *co = ctx;
    if (res < 0) {
        char why[128];
        snprintf(why, sizeof why, "connect: %s", strerror(-res));
        callout_report(co, CO_TEMP, why);
        return; /* closed() follows */
    }
    mx_stream_set_timer(s, co->timeout_ms);
}

static void co_closed(struct mx_stream *s, void *ctx, int res)
{
    (void)s;
    struct callout *co = ctx;
    callout_report(co, CO_TEMP, res < 0 ? strerror(-res) : "connection closed");
    free(co);
}

static void co_timeout(struct mx_stream *s, void *ctx)
{
    struct callout *co = ctx;
    (void)s;
    callout_report(co, CO_TEMP, "timeout");
    co_close(co);
}

static const struct mx_stream_cb callout_cb = {
    .data = co_data,
    .connected = co_connected,
    .closed = co_closed,
    .timeout = co_timeout,
};

/*
 * Ask the domain's downstream server (its smtp: route, first host) about
 * addr. cc (may be NULL) gets the answer. Returns 0, or -errno when no
 * callout could be started.
 */
static int callout_start(struct mx_checks_conn *cc, const struct mx_config *cfg,
                         struct mx_worker *w, const char *sid, const char *addr, const char *domain)
{
    const struct mx_route *rt = mx_config_route(cfg, domain);
    if (!rt || rt->scheme != MX_ROUTE_SMTP || !rt->n_hosts || !w)
        return -EHOSTUNREACH;
    struct callout *co = calloc(1, sizeof *co);
    if (!co)
        return -ENOMEM;
    co->cache_size = cfg->rv_cache_size;
    snprintf(co->addr, sizeof co->addr, "%s", addr);
    snprintf(co->helo, sizeof co->helo, "%s", cfg->smtp_hostname ? cfg->smtp_hostname : "localhost");
    snprintf(co->sid, sizeof co->sid, "%s", sid);
    co->timeout_ms = (cfg->rv_timeout ? cfg->rv_timeout : 30) * 1000u;
    int rc = mx_stream_connect(w, (const struct sockaddr *)&rt->hosts[0].ss, rt->hosts[0].len,
                               &callout_cb, co, &co->st);
    if (rc < 0) {
        free(co);
        return rc;
    }
    if (cc) {
        co->cc = cc;
        cc->refs++;
    }
    return 0;
}

static bool domain_listed(char *const *v, size_t n, const char *d)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], d) == 0)
            return true;
    return false;
}

void mx_smtp_checks_rcpt(struct mx_checks_conn *cc, const struct mx_rcpt *rcpt,
                         struct mx_smtpd_reply *r)
{
    if (!cc)
        return;
    const struct mx_config *cfg = cc->ck->cfg;
    char addr[RV_KEY_MAX];
    size_t i = 0;
    for (const char *p = rcpt->addr; *p && i < sizeof addr - 1; p++)
        addr[i++] = (char)tolower((unsigned char)*p);
    addr[i] = 0;
    const char *at = strrchr(addr, '@');
    if (!at || strlen(rcpt->addr) >= sizeof addr)
        return;
    const char *domain = at + 1;
    if (domain_listed(cfg->rv_static_domains, cfg->n_rv_static_domains, domain)) {
        for (size_t k = 0; k < cfg->n_rv_users; k++)
            if (strcasecmp(cfg->rv_users[k], addr) == 0)
                return;
        rcpt_reply(cc, rcpt->addr, CO_REJECT, "", r);
        logf_cc(cc, "reject: RCPT <%s>: not in recipient_verification.users", rcpt->addr);
        return;
    }
    if (!domain_listed(cfg->rv_callout_domains, cfg->n_rv_callout_domains, domain))
        return;
    struct rv_cache *c = rv_cache(cfg->rv_cache_size);
    struct rv_entry *e = c ? rv_find(c, addr) : NULL;
    uint64_t now = mono_s();
    if (e && now - e->at >= (e->ok ? cfg->rv_positive_expire : cfg->rv_negative_expire)) {
        e->key[0] = 0; /* expired */
        e = NULL;
    }
    if (e) {
        logf_cc(cc, "RCPT <%s>: %s (cached)", rcpt->addr, e->ok ? "verified" : "unknown");
        rcpt_reply(cc, rcpt->addr, e->ok ? CO_OK : CO_REJECT, "", r);
        if (!e->refreshing &&
            now - e->at >= (e->ok ? cfg->rv_positive_refresh : cfg->rv_negative_refresh) &&
            callout_start(NULL, cfg, cc->w, cc->sid, addr, domain) == 0)
            e->refreshing = true; /* served from the cache, verified again in the background */
        return;
    }
    int rc = callout_start(cc, cfg, cc->w, cc->sid, addr, domain);
    if (rc < 0) {
        logf_cc(cc, "RCPT <%s>: no callout possible (%s)", rcpt->addr, strerror(-rc));
        rcpt_reply(cc, rcpt->addr, CO_TEMP, "no route to verify it", r);
        return;
    }
    r->code = MX_SMTPD_PENDING;
}

/* ---- logical IP: the first external hop of the message ----------------- */

void mx_smtp_checks_data(struct mx_checks_conn *cc, const uint8_t *buf, size_t len)
{
    if (!cc || !cc->ck->logical_ip || cc->hdr_done || !len)
        return;
    if (!cc->hdr) {
        cc->hdr = malloc(HDR_HOLD_MAX);
        if (!cc->hdr) {
            cc->hdr_done = true;
            return;
        }
    }
    size_t k = HDR_HOLD_MAX - cc->hdr_len < len ? HDR_HOLD_MAX - cc->hdr_len : len;
    size_t from = cc->hdr_len >= 3 ? cc->hdr_len - 3 : 0;
    memcpy(cc->hdr + cc->hdr_len, buf, k);
    cc->hdr_len += k;
    /* stop keeping bytes once the header block is complete (or the room is used up) */
    if (cc->hdr_len == HDR_HOLD_MAX || memmem(cc->hdr + from, cc->hdr_len - from, "\r\n\r\n", 4) ||
        (cc->hdr_len >= 2 && cc->hdr[0] == '\r' && cc->hdr[1] == '\n'))
        cc->hdr_done = true;
}

/* The logical IP: the first external hop of the held header block, asked of the DNSBLs. */
static void logical_start(struct mx_checks_conn *cc)
{
    struct sockaddr_storage ss;
    const struct mx_config *cfg = cc->ck->cfg;
    if (mx_smtp_checks_received_ip(cc->hdr, cc->hdr_len, cfg->trusted_networks,
                                   cfg->n_trusted_networks, &ss) < 0)
        return;
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, cc->lg_text, sizeof cc->lg_text);
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, cc->lg_text,
                  sizeof cc->lg_text);
    if (strcmp(cc->lg_text, cc->client_text) == 0)
        return; /* the connecting client itself: checked at MAIL already */
    for (size_t i = 0; i < cc->ck->n_dnsbl; i++) {
        char name[MX_DNS_NAME_MAX];
        if (mx_smtp_checks_query_name((struct sockaddr *)&ss, cc->ck->dnsbl[i].zone, name,
                                      sizeof name) == 0)
            start_query(cc, Q_LOGICAL, (unsigned)i, name, MX_DNS_A, NULL);
    }
    if (cc->lg.pending)
        logf_cc(cc, "logical client %s: asking the DNS lists", cc->lg_text);
}

#define URI_NAMES_MAX 1000 /* uribl.max_queries is at most this */

/* "4.3.2.1" -> "1.2.3.4": the labels of a dotted name in reverse order. */
static void unreverse(const char *in, char *out, size_t outlen)
{
    size_t n = strlen(in), o = 0;
    if (n >= outlen)
        n = outlen - 1;
    for (size_t end = n; end > 0;) {
        size_t st = end;
        while (st > 0 && in[st - 1] != '.')
            st--;
        if (o)
            out[o++] = '.';
        memcpy(out + o, in + st, end - st);
        o += end - st;
        end = st ? st - 1 : 0;
    }
    out[o] = 0;
}

/*
 * The body URIs: each one's registered domain (or reversed address), once
 * per message, asked of every URIBL until uribl.max_queries queries are out.
 * A list that cannot take the next name whole is not asked for it: a name
 * is asked of all lists or of none.
 */
static void uris_start(struct mx_checks_conn *cc, mx_checks_uri_fn uri_at, void *ctx)
{
    const struct mx_config *cfg = cc->ck->cfg;
    struct uri_wait *u = &cc->ur;
    if (!cc->ck->n_uribl || !uri_at || cc->trusted || !cfg->uribl_max_queries)
        return;
    clock_gettime(CLOCK_MONOTONIC, &u->t0);
    uint64_t seen[URI_NAMES_MAX];
    bool capped = false;
    const char *uri;
    for (unsigned i = 0; (uri = uri_at(ctx, i)) != NULL; i++) {
        u->uris++;
        char name[MX_DNS_NAME_MAX];
        int kind = mx_smtp_checks_uri_name(uri, name, sizeof name);
        if (kind < 0)
            continue;
        uint64_t h = 1469598103934665603ull; /* FNV-1a */
        for (const char *p = name; *p; p++)
            h = (h ^ (uint8_t)*p) * 1099511628211ull;
        bool dup = false;
        for (unsigned k = 0; k < u->names && !dup; k++)
            dup = seen[k] == h;
        if (dup)
            continue;
        if (u->asked + cc->ck->n_uribl > cfg->uribl_max_queries || u->names >= URI_NAMES_MAX) {
            capped = true;
            break;
        }
        seen[u->names++] = h;
        /* logs and replies name an address in its usual order */
        char shown[MX_DNS_NAME_MAX];
        if (kind == MX_URI_IP)
            unreverse(name, shown, sizeof shown);
        else
            snprintf(shown, sizeof shown, "%s", name);
        for (size_t l = 0; l < cc->ck->n_uribl; l++) {
            char qname[MX_DNS_NAME_MAX];
            int n = snprintf(qname, sizeof qname, "%s.%s", name, cc->ck->uribl[l].zone);
            u->asked++;
            if (n > 0 && (size_t)n < sizeof qname)
                start_query(cc, Q_BODYURI, (unsigned)l, qname, MX_DNS_A, shown);
            else
                u->unanswered++;
        }
    }
    if (capped)
        logf_cc(cc,
                "URIBL: uribl.max_queries (%u) reached after %u names; the rest of the "
                "URIs are not looked up",
                cfg->uribl_max_queries, u->names);
}

void mx_smtp_checks_data_end(struct mx_checks_conn *cc, mx_checks_uri_fn uri_at, void *uri_ctx,
                             struct mx_smtpd_reply *r)
{
    if (!cc)
        return;
    cc->lg = (struct bl_tally){.hit = -1};
    cc->ur = (struct uri_wait){.reject = -1};
    cc->ur_gen++; /* answers still out for an earlier message count for nothing */
    if (cc->w) {
        if (cc->ck->logical_ip && cc->hdr_len)
            logical_start(cc);
        uris_start(cc, uri_at, uri_ctx);
    }
    cc->hdr_len = 0;
    cc->hdr_done = false;
    if (cc->lg.pending || cc->ur.pending) {
        cc->data_active = true;
        r->code = MX_SMTPD_PENDING;
        return;
    }
    uri_verdict(cc, r); /* every query failed at once: only the log line */
}

bool mx_smtp_checks_uribl_pending(const struct mx_checks_conn *cc)
{
    return cc && cc->data_active && cc->ur.pending;
}

void mx_smtp_checks_data_timeout(struct mx_checks_conn *cc)
{
    if (!mx_smtp_checks_uribl_pending(cc))
        return;
    struct uri_wait *u = &cc->ur;
    logf_cc(cc,
            "URIBL: %u of %u queries unanswered after %lu ms (uribl.timeout): not counted, "
            "treated as not listed",
            u->pending, u->asked, (unsigned long)ms_since(&u->t0));
    u->unanswered += u->pending;
    u->pending = 0;
    cc->ur_gen++; /* their answers, when they come, are dropped */
    data_maybe_answer(cc);
}

size_t mx_smtp_checks_uri_hits(const struct mx_checks_conn *cc,
                               const struct mx_checks_uri_hit **hits)
{
    if (!cc) {
        *hits = NULL;
        return 0;
    }
    *hits = cc->ur.hits;
    return cc->ur.n_hits;
}
