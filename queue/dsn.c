/*
 * dsn.c - delivery status notifications (bounces and delay warnings).
 *
 * mx_dsn_build() writes an RFC 3464 report: a multipart/report with
 * report-type=delivery-status holding (1) a short text for people,
 * (2) the machine-readable message/delivery-status part, and (3) the
 * original message (message/rfc822, RET=FULL) or only its header
 * (text/rfc822-headers, RET=HDRS or nothing said). The report goes from
 * MAILER-DAEMON to the envelope sender with "Auto-Submitted: auto-replied"
 * (RFC 3834) so that well-behaved software never answers it, and the caller
 * sends it with the null reverse-path so that it can never bounce back.
 *
 * Every line ends in CRLF and stays within 998 octets (RFC 5322 2.1.1): our
 * own fields are short by construction, and a longer line of the attached
 * original is broken into pieces rather than sent illegally.
 */
#include "queue/deliver.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define DSN_LINE_MAX 998

/** A growing text buffer; the first failure sticks and is reported at the end. */
struct sb {
    char *d;
    size_t len, cap;
    int err;
};

static void sb_reserve(struct sb *b, size_t n)
{
    if (b->err || b->len + n + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1)
        cap *= 2;
    char *d = realloc(b->d, cap);
    if (!d) {
        b->err = -ENOMEM;
        return;
    }
    b->d = d;
    b->cap = cap;
}

static void sb_put(struct sb *b, const void *p, size_t n)
{
    sb_reserve(b, n);
    if (b->err)
        return;
    memcpy(b->d + b->len, p, n);
    b->len += n;
    b->d[b->len] = 0;
}

static void sb_printf(struct sb *b, const char *fmt, ...)
{
    char tmp[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->err = -EINVAL;
        return;
    }
    /* Our own lines are built from bounded fields; cut rather than overflow. */
    sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/** RFC 5322 date-time in UTC. */
static void rfc5322_date(uint64_t ms, char *out, size_t cap)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const mons[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, cap, "%s, %d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday], tm.tm_mday,
             mons[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/**
 * Copy text that came from the network (reply text, addresses) into a header
 * field value: no CR/LF/control characters, bounded length.
 */
static void clean(char *dst, size_t cap, const char *src)
{
    size_t o = 0;
    for (; src && *src && o + 1 < cap; src++) {
        unsigned char ch = (unsigned char)*src;
        dst[o++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
    }
    dst[o] = 0;
}

/** The status to report: the server's enhanced code, else one derived from the reply. */
static void status_of(const struct mx_dsn_rcpt *s, char *out, size_t cap)
{
    const struct mx_deliver_rcpt_result *r = s->res;
    if (r && r->enh[0] && (r->enh[0] == '4' || r->enh[0] == '5') && r->enh[1] == '.') {
        clean(out, cap, r->enh);
        if (!s->delayed || out[0] == '4')
            return;
    }
    if (s->delayed)
        snprintf(out, cap, "4.0.0");
    else if (r && r->code >= 500 && r->code < 600)
        snprintf(out, cap, "5.0.0");
    else if (r && r->code >= 400)
        snprintf(out, cap, "4.0.0");
    else
        snprintf(out, cap, "4.4.1"); /* never got an answer: RFC 3463 "no answer from host" */
}

/** Remote-MTA wants a host name: drop the ":port" of "host:port" / "[v6]:port". */
static void remote_host(const char *remote, char *out, size_t cap)
{
    char tmp[128];
    clean(tmp, sizeof tmp, remote);
    char *colon = strrchr(tmp, ':');
    if (tmp[0] == '[') {
        char *close = strchr(tmp, ']');
        if (close)
            *close = 0;
        snprintf(out, cap, "%s", tmp + 1);
        return;
    }
    if (colon && strchr(tmp, ':') == colon)
        *colon = 0;
    snprintf(out, cap, "%s", tmp);
}

/**
 * Append the original (or its header): CRLF line ends, bare CR or LF made
 * CRLF, lines over 998 octets broken.
 */
static void put_original(struct sb *b, const uint8_t *p, size_t len)
{
    size_t col = 0, start = 0;
    sb_reserve(b, len + len / 64 + 8);
    for (size_t i = 0; i < len && !b->err; i++) {
        uint8_t ch = p[i];
        if (ch == '\r' || ch == '\n') {
            sb_put(b, p + start, i - start);
            sb_put(b, "\r\n", 2);
            if (ch == '\r' && i + 1 < len && p[i + 1] == '\n')
                i++;
            start = i + 1;
            col = 0;
            continue;
        }
        if (++col > DSN_LINE_MAX) {
            sb_put(b, p + start, i - start);
            sb_put(b, "\r\n", 2);
            start = i;
            col = 1;
        }
    }
    if (start < len) {
        sb_put(b, p + start, len - start);
        sb_put(b, "\r\n", 2);
    }
}

/** Length of the header section (up to and including the empty line, if any). */
static size_t header_len(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        if (p[i] != '\n')
            continue;
        if (p[i + 1] == '\n')
            return i + 2;
        if (p[i + 1] == '\r' && i + 2 < len && p[i + 2] == '\n')
            return i + 3;
    }
    if (len >= 2 && p[0] == '\r' && p[1] == '\n')
        return 2;
    return len;
}

static bool has_8bit(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] & 0x80)
            return true;
    return false;
}

static uint64_t random64(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t)sizeof v) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        v = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec;
    }
    return v;
}

int mx_dsn_build(const struct mx_envelope *env, const struct mx_dsn_rcpt *st, size_t n,
                 const uint8_t *orig, size_t orig_len, const char *reporting_mta,
                 const char *queue_id, uint64_t now_ms, char **out, size_t *out_len)
{
    if (!env || !st || !n || !out || !out_len || !reporting_mta || !reporting_mta[0] ||
        (!orig && orig_len) || !env->mail_from[0])
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (st[i].rcpt_idx >= env->n_rcpts || !env->rcpts)
            return -EINVAL;

    char mta[256], qid[64], sender[MX_ADDR_MAX], date[64], arrival[64];
    clean(mta, sizeof mta, reporting_mta);
    clean(qid, sizeof qid, queue_id ? queue_id : "");
    clean(sender, sizeof sender, env->mail_from);
    rfc5322_date(now_ms, date, sizeof date);
    rfc5322_date(env->arrival_ms ? env->arrival_ms : now_ms, arrival, sizeof arrival);

    bool all_delayed = true;
    for (size_t i = 0; i < n; i++)
        all_delayed &= st[i].delayed;
    bool full = env->ret == MX_RET_FULL;
    size_t attach_len = orig ? (full ? orig_len : header_len(orig, orig_len)) : 0;

    /* A boundary that does not occur in what we attach. */
    char boundary[96];
    for (int tries = 0;; tries++) {
        snprintf(boundary, sizeof boundary, "=_mxgate_%s_%llx_%016llx", qid[0] ? qid : "dsn",
                 (unsigned long long)now_ms, (unsigned long long)random64());
        if (!orig || !memmem(orig, attach_len, boundary, strlen(boundary)) || tries > 8)
            break;
    }

    struct sb b = {0};
    sb_printf(&b, "From: MAILER-DAEMON@%s (Mail Delivery System)\r\n", mta);
    sb_printf(&b, "To: <%s>\r\n", sender);
    sb_printf(&b, "Subject: %s\r\n", all_delayed ? "Delayed Mail (still being retried)"
                                                 : "Undelivered Mail Returned to Sender");
    sb_printf(&b, "Date: %s\r\n", date);
    sb_printf(&b, "Message-ID: <%llu.%016llx.%s@%s>\r\n", (unsigned long long)now_ms,
              (unsigned long long)random64(), qid[0] ? qid : "dsn", mta);
    sb_printf(&b, "Auto-Submitted: auto-replied\r\n");
    sb_printf(&b, "MIME-Version: 1.0\r\n");
    sb_printf(&b, "Content-Type: multipart/report; report-type=delivery-status;\r\n"
                  "\tboundary=\"%s\"\r\n",
              boundary);
    sb_printf(&b, "\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    /* 1: for people */
    sb_printf(&b, "--%s\r\n", boundary);
    sb_printf(&b, "Content-Description: Notification\r\n"
                  "Content-Type: text/plain; charset=utf-8\r\n\r\n");
    sb_printf(&b, "This is the mail system at host %s.\r\n\r\n", mta);
    if (all_delayed)
        sb_printf(&b, "Your message could not be delivered yet to the recipients below.\r\n"
                      "It is still in the queue and will be retried; you do not need to\r\n"
                      "send it again.\r\n\r\n");
    else
        sb_printf(&b, "I'm sorry to have to inform you that your message could not be\r\n"
                      "delivered to one or more recipients. The reasons are below.\r\n\r\n");
    for (size_t i = 0; i < n; i++) {
        const struct mx_rcpt *r = &env->rcpts[st[i].rcpt_idx];
        const struct mx_deliver_rcpt_result *res = st[i].res;
        char addr[MX_ADDR_MAX], text[300], host[128] = "";
        clean(addr, sizeof addr, r->addr);
        clean(text, sizeof text, res ? res->text : "");
        if (st[i].remote && st[i].remote[0])
            remote_host(st[i].remote, host, sizeof host);
        if (res && res->code && host[0])
            sb_printf(&b, "<%s>: host %s said: %d %s%s%s\r\n", addr, host, res->code, res->enh,
                      res->enh[0] ? " " : "", text);
        else if (res && res->code)
            sb_printf(&b, "<%s>: %d %s%s%s\r\n", addr, res->code, res->enh,
                      res->enh[0] ? " " : "", text);
        else
            sb_printf(&b, "<%s>: %s\r\n", addr, text[0] ? text : "delivery failed");
    }
    sb_printf(&b, "\r\n");

    /* 2: for machines (RFC 3464 2.2 per-message, 2.3 per-recipient fields) */
    sb_printf(&b, "--%s\r\n", boundary);
    sb_printf(&b, "Content-Description: Delivery report\r\n"
                  "Content-Type: message/delivery-status\r\n\r\n");
    sb_printf(&b, "Reporting-MTA: dns; %s\r\n", mta);
    if (qid[0])
        sb_printf(&b, "X-Mxgate-Queue-ID: %s\r\n", qid);
    if (env->envid[0]) {
        char envid[sizeof env->envid];
        clean(envid, sizeof envid, env->envid);
        sb_printf(&b, "Original-Envelope-Id: %s\r\n", envid);
    }
    sb_printf(&b, "Arrival-Date: %s\r\n", arrival);
    for (size_t i = 0; i < n; i++) {
        const struct mx_rcpt *r = &env->rcpts[st[i].rcpt_idx];
        const struct mx_deliver_rcpt_result *res = st[i].res;
        char addr[MX_ADDR_MAX], status[16], text[300];
        clean(addr, sizeof addr, r->addr);
        status_of(&st[i], status, sizeof status);
        clean(text, sizeof text, res ? res->text : "");
        sb_printf(&b, "\r\n");
        sb_printf(&b, "Final-Recipient: rfc822; %s\r\n", addr);
        const char *semi = strchr(r->orcpt, ';');
        if (r->orcpt[0] && semi) {
            char type[32], oaddr[MX_DSN_ORCPT_MAX];
            clean(type, sizeof type, r->orcpt);
            char *ts = strchr(type, ';');
            if (ts)
                *ts = 0;
            clean(oaddr, sizeof oaddr, semi + 1);
            sb_printf(&b, "Original-Recipient: %s; %s\r\n", type, oaddr);
        }
        sb_printf(&b, "Action: %s\r\n", st[i].delayed ? "delayed" : "failed");
        sb_printf(&b, "Status: %s\r\n", status);
        if (st[i].remote && st[i].remote[0]) {
            char host[128];
            remote_host(st[i].remote, host, sizeof host);
            sb_printf(&b, "Remote-MTA: dns; %s\r\n", host);
        }
        if (res && res->code)
            sb_printf(&b, "Diagnostic-Code: smtp; %d %s%s%s\r\n", res->code, res->enh,
                      res->enh[0] ? " " : "", text);
        else if (text[0])
            sb_printf(&b, "Diagnostic-Code: X-mxgate; %s\r\n", text);
    }
    sb_printf(&b, "\r\n");

    /* 3: what was sent */
    if (orig) {
        bool eight = has_8bit(orig, attach_len);
        sb_printf(&b, "--%s\r\n", boundary);
        sb_printf(&b, "Content-Description: %s\r\n", full ? "Undelivered Message"
                                                          : "Undelivered Message Headers");
        sb_printf(&b, "Content-Type: %s\r\n", full ? "message/rfc822" : "text/rfc822-headers");
        if (eight)
            sb_printf(&b, "Content-Transfer-Encoding: 8bit\r\n");
        sb_printf(&b, "\r\n");
        put_original(&b, orig, attach_len);
        sb_printf(&b, "\r\n");
    }
    sb_printf(&b, "--%s--\r\n", boundary);
    if (b.err) {
        free(b.d);
        return b.err;
    }
    *out = b.d;
    *out_len = b.len;
    return 0;
}
