/*
 * top.c - `mxctl top`: a live console. mx_console_top_render() draws one
 * screen into a plain buffer (testable, no terminal needed); mx_console_top()
 * puts it on an ncurses screen once a second until q.
 *
 * Rates are differences of two snapshots over their time apart; latency
 * percentiles come from the histogram difference, i.e. they describe the
 * last interval, not the whole uptime.
 */
#include "console/console.h"

#include <errno.h>
#include <inttypes.h>
#include <ncurses.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct screen {
    char *buf;
    size_t size, n;
    unsigned rows, cols, row;
};

/* Append one line, cut to cols and made printable ASCII; drop once rows are full. */
static void line(struct screen *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void line(struct screen *s, const char *fmt, ...)
{
    if (s->row >= s->rows)
        return;
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    size_t len = strlen(tmp);
    if (len > s->cols)
        len = s->cols;
    if (s->n + len + 2 > s->size)
        return;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)tmp[i];
        s->buf[s->n++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    s->buf[s->n++] = '\n';
    s->buf[s->n] = '\0';
    s->row++;
}

static double rate(const struct mx_stats_snapshot *p, const struct mx_stats_snapshot *c,
                   enum mx_stat id, double secs)
{
    if (!p || secs <= 0)
        return 0;
    return (double)(c->total[id] - p->total[id]) / secs;
}

static void hist_delta(const struct mx_stats_snapshot *p, const struct mx_stats_snapshot *c,
                       enum mx_hist id, struct mx_stats_hist *out)
{
    *out = c->hist[id];
    if (!p)
        return;
    for (int b = 0; b < MX_HIST_BUCKETS; b++)
        out->bucket[b] -= p->hist[id].bucket[b];
    out->count -= p->hist[id].count;
    out->sum_us -= p->hist[id].sum_us;
}

/* "12.3k"-style numbers so columns stay narrow. */
static const char *human(double v, char *b, size_t n)
{
    if (v >= 1e9)
        snprintf(b, n, "%.1fG", v / 1e9);
    else if (v >= 1e6)
        snprintf(b, n, "%.1fM", v / 1e6);
    else if (v >= 1e4)
        snprintf(b, n, "%.1fk", v / 1e3);
    else if (v == (double)(uint64_t)v)
        snprintf(b, n, "%.0f", v);
    else
        snprintf(b, n, "%.1f", v);
    return b;
}

static int64_t gauge(const struct mx_stats_snapshot *c, enum mx_stat id)
{
    return (int64_t)c->total[id];
}

size_t mx_console_top_render(const struct mx_stats_snapshot *prev,
                             const struct mx_stats_snapshot *cur, const char *status, char *buf,
                             size_t bufsz, unsigned rows, unsigned cols)
{
    struct screen s = {buf, bufsz, 0, rows, cols, 0};
    if (bufsz == 0)
        return 0;
    buf[0] = '\0';
    double secs = prev && cur->time_ms > prev->time_ms
                      ? (double)(cur->time_ms - prev->time_ms) / 1000.0
                      : 0;
    char a[16], b[16], c[16], d[16], e[16];
    line(&s, "mxgate top - %u worker(s) - %s", cur->nslots, status ? status : "");
    line(&s, "Connections  open %" PRId64 "  total %s  new/s %s  refused/s %s",
         gauge(cur, MX_STAT_CONN_OPEN), human((double)cur->total[MX_STAT_CONN_TOTAL], a, 16),
         human(rate(prev, cur, MX_STAT_CONN_TOTAL, secs), b, 16),
         human(rate(prev, cur, MX_STAT_CONN_REJ_RATE, secs) +
                   rate(prev, cur, MX_STAT_CONN_REJ_CONCURRENCY, secs) +
                   rate(prev, cur, MX_STAT_CONN_REJ_BLOCKLIST, secs) +
                   rate(prev, cur, MX_STAT_CONN_REJ_MAINTENANCE, secs) +
                   rate(prev, cur, MX_STAT_CONN_REJ_OTHER, secs),
               c, 16));
    line(&s, "Messages/s   accepted %s  rejected %s  tempfailed %s  in %.2f MB/s",
         human(rate(prev, cur, MX_STAT_MSG_ACCEPTED, secs), a, 16),
         human(rate(prev, cur, MX_STAT_MSG_REJECTED, secs), b, 16),
         human(rate(prev, cur, MX_STAT_MSG_TEMPFAILED, secs), c, 16),
         rate(prev, cur, MX_STAT_BYTES_IN, secs) / 1e6);
    line(&s, "Replies/s    2xx %s  3xx %s  4xx %s  5xx %s",
         human(rate(prev, cur, MX_STAT_REPLY_2XX, secs), a, 16),
         human(rate(prev, cur, MX_STAT_REPLY_3XX, secs), b, 16),
         human(rate(prev, cur, MX_STAT_REPLY_4XX, secs), c, 16),
         human(rate(prev, cur, MX_STAT_REPLY_5XX, secs), d, 16));
    /* verdict mix over the whole uptime: rare verdicts stay visible */
    uint64_t vt = 0;
    for (int i = MX_STAT_VERDICT_CLEAN; i <= MX_STAT_VERDICT_DLP; i++)
        vt += cur->total[i];
    double pc[5] = {0};
    for (int i = 0; i < 5; i++)
        pc[i] = vt ? 100.0 * (double)cur->total[MX_STAT_VERDICT_CLEAN + i] / (double)vt : 0;
    line(&s, "Verdicts     clean %.1f%%  spam %.1f%%  virus %.1f%%  banned %.1f%%  dlp %.1f%%",
         pc[0], pc[1], pc[2], pc[3], pc[4]);
    /* the most frequent rules since start, as many as fit on one line */
    char tr[256];
    size_t tl = 0;
    for (unsigned i = 0; i < cur->nrules && i < MX_STATS_TOP_RULES && tl + 1 < sizeof tr; i++) {
        int k = snprintf(tr + tl, sizeof tr - tl, "%s%s %s", i ? "  " : "", cur->top_rules[i].name,
                         human((double)cur->top_rules[i].hits, a, 16));
        if (k < 0 || 13 + tl + (size_t)k > cols || tl + (size_t)k >= sizeof tr)
            break;
        tl += (size_t)k;
    }
    tr[tl] = '\0';
    line(&s, "Top rules    %s", tl ? tr : "-");
    line(&s, "Queue        incoming %" PRId64 "  active %" PRId64 "  deferred %" PRId64
             "  hold %" PRId64 "  quar %" PRId64 "  AV %" PRId64,
         gauge(cur, MX_STAT_QUEUE_INCOMING), gauge(cur, MX_STAT_QUEUE_ACTIVE),
         gauge(cur, MX_STAT_QUEUE_DEFERRED), gauge(cur, MX_STAT_QUEUE_HOLD),
         gauge(cur, MX_STAT_QUEUE_QUARANTINE), gauge(cur, MX_STAT_AV_QUEUE));
    line(&s, "Delivery/s   ok %s  deferred %s  bounced %s",
         human(rate(prev, cur, MX_STAT_DELIVERY_OK, secs), a, 16),
         human(rate(prev, cur, MX_STAT_DELIVERY_DEFERRED, secs), b, 16),
         human(rate(prev, cur, MX_STAT_DELIVERY_BOUNCED, secs), c, 16));
    double fl = rate(prev, cur, MX_STAT_SPOOL_FLUSHES, secs);
    double fm = rate(prev, cur, MX_STAT_SPOOL_FLUSHED_MSGS, secs);
    line(&s, "Spool        flushes/s %s  messages/flush %.1f", human(fl, a, 16),
         fl > 0 ? fm / fl : 0);
    line(&s, "TCP/s        retrans %s  drops %s  syncookies %s  nic missed %s",
         human(rate(prev, cur, MX_STAT_TCP_RETRANSMITS, secs), a, 16),
         human(rate(prev, cur, MX_STAT_TCP_DROPS, secs), b, 16),
         human(rate(prev, cur, MX_STAT_TCP_SYNCOOKIES, secs), c, 16),
         human(rate(prev, cur, MX_STAT_NIC_RX_MISSED, secs), e, 16));
    line(&s, "%s", "");
    line(&s, "Latency (ms)       p50      p90      p99    count");
    static const char *const hn[MX_HIST__COUNT] = {"spool fsync", "scan", "smtp txn"};
    for (int h = 0; h < MX_HIST__COUNT; h++) {
        struct mx_stats_hist x;
        hist_delta(prev, cur, h, &x);
        line(&s, "  %-12s %8.2f %8.2f %8.2f %8s", hn[h], mx_stats_hist_quantile(&x, 0.5) / 1e3,
             mx_stats_hist_quantile(&x, 0.9) / 1e3, mx_stats_hist_quantile(&x, 0.99) / 1e3,
             human((double)x.count, a, 16));
    }
    line(&s, "%s", "");
    /* per-core load: busy microseconds per wall microsecond */
    unsigned room = rows > s.row + 2 ? rows - s.row - 2 : 0;
    unsigned show = cur->nslots < room ? cur->nslots : room;
    if (room > 0)
        line(&s, "Core  load                            open   loops/s");
    /* when not every core fits, the last row says how many are left out */
    unsigned lim = show == cur->nslots ? show : (show ? show - 1 : 0);
    for (unsigned w = 0; w < lim; w++) {
        double busy = 0, loops = 0;
        if (prev && secs > 0 && w < prev->nslots) {
            busy = (double)(cur->per_slot[w][MX_STAT_WORKER_BUSY_US] -
                            prev->per_slot[w][MX_STAT_WORKER_BUSY_US]) /
                   (secs * 1e6);
            loops = (double)(cur->per_slot[w][MX_STAT_WORKER_LOOPS] -
                             prev->per_slot[w][MX_STAT_WORKER_LOOPS]) /
                    secs;
        }
        if (busy < 0)
            busy = 0;
        if (busy > 1)
            busy = 1;
        char bar[21];
        unsigned fill = (unsigned)(busy * 20 + 0.5);
        for (unsigned k = 0; k < 20; k++)
            bar[k] = k < fill ? '#' : '.';
        bar[20] = '\0';
        line(&s, "%4u  [%s] %3.0f%%  %7" PRId64 " %9s", w, bar, busy * 100,
             (int64_t)cur->per_slot[w][MX_STAT_CONN_OPEN], human(loops, a, 16));
    }
    if (show < cur->nslots && room > 0)
        line(&s, "  ... %u more core(s)", cur->nslots - lim);
    while (s.row + 1 < rows)
        line(&s, "%s", "");
    line(&s, "q quits");
    return s.n;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int mx_console_top(mx_console_fetch_fn fetch, void *arg)
{
    struct mx_stats_snapshot *prev = calloc(1, sizeof(*prev));
    struct mx_stats_snapshot *cur = calloc(1, sizeof(*cur));
    size_t bsz = 64 * 1024;
    char *buf = malloc(bsz);
    if (!prev || !cur || !buf) {
        free(prev);
        free(cur);
        free(buf);
        return -ENOMEM;
    }
    if (!initscr()) {
        free(prev);
        free(cur);
        free(buf);
        return -ENOTTY;
    }
    cbreak();
    noecho();
    keypad(stdscr, TRUE);
    curs_set(0);
    bool have_prev = false;
    char status[128] = "connecting";
    uint64_t next = 0;
    for (;;) {
        uint64_t now = mono_ms();
        if (now >= next) {
            int rc = fetch(arg, cur);
            if (rc == 0) {
                time_t t = time(NULL);
                struct tm tm;
                localtime_r(&t, &tm);
                strftime(status, sizeof(status), "%H:%M:%S", &tm);
                mx_console_top_render(have_prev ? prev : NULL, cur, status, buf, bsz,
                                      (unsigned)LINES, (unsigned)COLS);
                struct mx_stats_snapshot *t2 = prev;
                prev = cur;
                cur = t2;
                have_prev = true;
            } else {
                snprintf(status, sizeof(status), "no data: %s", strerror(-rc));
                mx_console_top_render(NULL, have_prev ? prev : cur, status, buf, bsz,
                                      (unsigned)LINES, (unsigned)COLS);
            }
            erase();
            unsigned r = 0;
            for (char *p = buf; *p && r < (unsigned)LINES; r++) {
                char *nl = strchr(p, '\n');
                size_t len = nl ? (size_t)(nl - p) : strlen(p);
                mvaddnstr((int)r, 0, p, (int)len);
                p = nl ? nl + 1 : p + len;
            }
            refresh();
            next = now + 1000;
            now = mono_ms();
        }
        timeout((int)(next > now ? next - now : 0));
        int ch = getch();
        if (ch == 'q' || ch == 'Q')
            break;
        if (ch == KEY_RESIZE)
            next = 0;
    }
    endwin();
    free(prev);
    free(cur);
    free(buf);
    return 0;
}
