/*
 * test_tcp_scripts.c - runs tests/tcpstack/scripts/NAME.pkt against the TCP
 * state machine, in the spirit of packetdrill: each line injects a segment
 * from the peer ("<"), expects one from the stack (">"), or acts as the
 * application ("app ..."). Time is simulated (1 ms steps), so retransmission
 * timers are checked to the millisecond. Every frame the stack sends must be
 * expected by a line, in order; its IP and TCP checksums are verified, and
 * its IP length must fit the configured MTU.
 *
 * Line syntax (see scripts/README for the full list):
 *   [+]SECONDS < FLAGS SEQ:END(LEN) [ack N] [win N] [<OPTIONS>] [data "TEXT"]
 *   [+]SECONDS > FLAGS SEQ:END(LEN) [ack N] [win N] [<OPTIONS>] [data "TEXT"]
 *   [+]SECONDS app write "TEXT" | writen N | close | pause | resume |
 *              read "TEXT" | readn N | closed RES | connect PORT | connected RES |
 *              timer MS | timeout | nodata
 *   [+]SECONDS stat NAME VALUE
 *   config NAME=VALUE    (before the first timed line)
 * Sequence numbers are relative: the peer's ISN is 1000, ours is learned
 * from our first SYN. Inbound payload is 'a'+(offset%26) unless data is given.
 * In expected options, "*" matches any TS value; an inbound "ecr *" echoes
 * the last TS value the stack sent.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tests/tcpstack/pktbuild.h"

#define PEER_ISN 1000u
#define PEER_PORT 40000
#define US_PORT 25
#define EARLY_MS 5
#define LATE_MS 25

struct app {
    struct mx_stream *s;
    uint8_t rx[1 << 20];
    size_t rx_len;
    uint64_t rx_total_read;
    int closed_res;
    bool closed;
    int connected_res;
    bool connected;
    unsigned timeouts;
    unsigned drained;
    uint64_t written;
};

struct runner {
    const char *path;
    int line;
    struct mx_tcp_config cfg;
    struct mx_tcp_stack *st;
    struct pb_cap cap;
    uint64_t now;
    uint64_t last_line_t;
    uint32_t our_isn;
    bool have_isn;
    uint16_t our_port;   /* stack's port: 25, or the ephemeral one */
    uint32_t last_tsval; /* last TS value the stack sent */
    struct app app;
    char err[512];
};

static struct runner *g_r;

static void __attribute__((format(printf, 2, 3))) sfail(struct runner *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char msg[400];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    print_error("%s:%d: %s\n", r->path, r->line, msg);
    fail_msg("%s:%d: %s", r->path, r->line, msg);
}

/* ---------------------------------------------------------------------- */
/* application side */

static void app_data(struct mx_stream *s, void *ctx, const uint8_t *buf, size_t len)
{
    (void)s;
    struct app *a = ctx;
    if (a->rx_len + len > sizeof a->rx)
        len = sizeof a->rx - a->rx_len;
    memcpy(a->rx + a->rx_len, buf, len);
    a->rx_len += len;
}
static void app_connected(struct mx_stream *s, void *ctx, int res)
{
    (void)s;
    struct app *a = ctx;
    a->connected = true;
    a->connected_res = res;
    if (res)
        a->s = NULL;
}
static void app_closed(struct mx_stream *s, void *ctx, int res)
{
    (void)s;
    struct app *a = ctx;
    a->closed = true;
    a->closed_res = res;
    a->s = NULL;
}
static void app_timeout(struct mx_stream *s, void *ctx)
{
    (void)s;
    ((struct app *)ctx)->timeouts++;
}
static void app_drained(struct mx_stream *s, void *ctx)
{
    (void)s;
    ((struct app *)ctx)->drained++;
}
static const struct mx_stream_cb app_cb = {
    .data = app_data,
    .connected = app_connected,
    .closed = app_closed,
    .timeout = app_timeout,
    .drained = app_drained,
};
static void app_accept(struct mx_stream *s, void *arg)
{
    struct runner *r = arg;
    r->app.s = s;
    mx_stream_bind(s, &app_cb, &r->app);
}

/* ---------------------------------------------------------------------- */
/* parsing helpers */

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

static bool take(const char **p, const char *word)
{
    const char *q = skip_ws(*p);
    size_t n = strlen(word);
    if (strncmp(q, word, n) != 0)
        return false;
    *p = q + n;
    return true;
}

static long long num(struct runner *r, const char **p)
{
    const char *q = skip_ws(*p);
    char *end;
    long long v = strtoll(q, &end, 10);
    if (end == q)
        sfail(r, "number expected at '%s'", q);
    *p = end;
    return v;
}

/** "..." with \r \n \t \\ \" escapes into out; returns length. */
static size_t quoted(struct runner *r, const char **p, char *out, size_t cap)
{
    const char *q = skip_ws(*p);
    if (*q != '"')
        sfail(r, "quoted string expected");
    q++;
    size_t n = 0;
    while (*q && *q != '"' && n < cap) {
        char c = *q++;
        if (c == '\\') {
            c = *q++;
            c = c == 'r' ? '\r' : c == 'n' ? '\n' : c == 't' ? '\t' : c;
        }
        out[n++] = c;
    }
    if (*q != '"')
        sfail(r, "unterminated string");
    *p = q + 1;
    return n;
}

static uint8_t pattern(uint64_t off)
{
    return (uint8_t)('a' + off % 26);
}

/* ---------------------------------------------------------------------- */
/* time */

static void advance(struct runner *r, uint64_t to)
{
    while (r->now < to) {
        r->now++;
        mx_tcp_poll(r->st, r->now);
    }
}

/* ---------------------------------------------------------------------- */
/* segments */

struct pkt {
    uint8_t flags;
    uint32_t seq, end, len;
    bool has_ack, has_win, has_opt, has_data;
    uint32_t ack, win;
    uint8_t opt[40];
    bool opt_wild[40]; /* byte may be anything (TS "*") */
    size_t optlen;
    char data[2048];
    size_t datalen;
};

static uint8_t parse_flags(struct runner *r, const char **p)
{
    const char *q = skip_ws(*p);
    uint8_t f = 0;
    while (*q && *q != ' ') {
        switch (*q) {
        case 'S': f |= 0x02; break;
        case 'F': f |= 0x01; break;
        case 'R': f |= 0x04; break;
        case 'P': f |= 0x08; break;
        case '.': f |= 0x10; break;
        default: sfail(r, "bad flag '%c'", *q);
        }
        q++;
    }
    *p = q;
    return f;
}

static void put32(uint8_t *o, uint32_t v)
{
    o[0] = (uint8_t)(v >> 24);
    o[1] = (uint8_t)(v >> 16);
    o[2] = (uint8_t)(v >> 8);
    o[3] = (uint8_t)v;
}

static void parse_options(struct runner *r, const char **p, struct pkt *k, bool inbound)
{
    const char *q = skip_ws(*p);
    q++; /* '<' */
    k->has_opt = true;
    for (;;) {
        q = skip_ws(q);
        if (*q == '>') {
            q++;
            break;
        }
        if (k->optlen > 30)
            sfail(r, "too many options");
        uint8_t *o = k->opt + k->optlen;
        if (take(&q, "mss")) {
            uint32_t v = (uint32_t)num(r, &q);
            o[0] = 2; o[1] = 4; o[2] = (uint8_t)(v >> 8); o[3] = (uint8_t)v;
            k->optlen += 4;
        } else if (take(&q, "sackOK")) {
            o[0] = 4; o[1] = 2;
            k->optlen += 2;
        } else if (take(&q, "nop")) {
            o[0] = 1;
            k->optlen += 1;
        } else if (take(&q, "eol")) {
            o[0] = 0;
            k->optlen += 1;
        } else if (take(&q, "wscale")) {
            o[0] = 3; o[1] = 3; o[2] = (uint8_t)num(r, &q);
            k->optlen += 3;
        } else if (take(&q, "TS val")) {
            o[0] = 8; o[1] = 10;
            q = skip_ws(q);
            if (*q == '*') {
                q++;
                for (int i = 2; i < 6; i++)
                    k->opt_wild[k->optlen + i] = true;
            } else {
                put32(o + 2, (uint32_t)num(r, &q));
            }
            if (!take(&q, "ecr"))
                sfail(r, "ecr expected");
            q = skip_ws(q);
            if (*q == '*') {
                q++;
                if (inbound)
                    put32(o + 6, r->last_tsval);
                else
                    for (int i = 6; i < 10; i++)
                        k->opt_wild[k->optlen + i] = true;
            } else {
                put32(o + 6, (uint32_t)num(r, &q));
            }
            k->optlen += 10;
        } else if (take(&q, "sack")) {
            size_t start = k->optlen;
            o[0] = 5;
            k->optlen += 2;
            while (isdigit((unsigned char)*skip_ws(q))) {
                uint32_t a = (uint32_t)num(r, &q);
                if (*q != ':')
                    sfail(r, "sack L:R expected");
                q++;
                uint32_t b = (uint32_t)num(r, &q);
                /* blocks name sequence numbers of whoever receives the SACK */
                uint32_t base = inbound ? r->our_isn : PEER_ISN;
                put32(k->opt + k->optlen, base + a);
                put32(k->opt + k->optlen + 4, base + b);
                k->optlen += 8;
            }
            k->opt[start + 1] = (uint8_t)(k->optlen - start);
        } else {
            sfail(r, "unknown option at '%s'", q);
        }
        q = skip_ws(q);
        if (*q == ',')
            q++;
    }
    *p = q;
}

static void parse_pkt(struct runner *r, const char *p, struct pkt *k, bool inbound)
{
    memset(k, 0, sizeof *k);
    k->flags = parse_flags(r, &p);
    k->seq = (uint32_t)num(r, &p);
    if (*p++ != ':')
        sfail(r, "SEQ:END expected");
    k->end = (uint32_t)num(r, &p);
    if (*p++ != '(')
        sfail(r, "(LEN) expected");
    k->len = (uint32_t)num(r, &p);
    if (*p++ != ')')
        sfail(r, "(LEN) expected");
    if (k->end - k->seq != k->len)
        sfail(r, "END-SEQ != LEN");
    for (;;) {
        if (take(&p, "ack")) {
            k->has_ack = true;
            k->ack = (uint32_t)num(r, &p);
        } else if (take(&p, "win")) {
            k->has_win = true;
            k->win = (uint32_t)num(r, &p);
        } else if (*skip_ws(p) == '<') {
            parse_options(r, &p, k, inbound);
        } else if (take(&p, "data")) {
            k->has_data = true;
            k->datalen = quoted(r, &p, k->data, sizeof k->data);
            if (k->datalen != k->len)
                sfail(r, "data length %zu != LEN %u", k->datalen, k->len);
        } else {
            break;
        }
    }
    p = skip_ws(p);
    if (*p && *p != '#')
        sfail(r, "trailing text '%s'", p);
}

static void inject(struct runner *r, struct pkt *k)
{
    uint8_t frame[4096], payload[2048];
    if (k->len > sizeof payload)
        sfail(r, "payload too long");
    if (k->has_data)
        memcpy(payload, k->data, k->len);
    else
        for (uint32_t i = 0; i < k->len; i++)
            payload[i] = pattern(k->seq - 1 + i);
    uint32_t seq = PEER_ISN + k->seq;
    uint32_t ack = k->has_ack ? r->our_isn + k->ack : 0;
    uint8_t flags = k->flags;
    size_t optlen = (k->optlen + 3) & ~(size_t)3;
    size_t n = pb_tcp_frame(frame, PEER_PORT, r->our_port, seq, ack, flags,
                            (uint16_t)(k->has_win ? k->win : 65535), k->opt, optlen, payload,
                            k->len);
    mx_tcp_input(r->st, frame, n, r->now, 0);
    mx_tcp_poll(r->st, r->now);
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void expect(struct runner *r, struct pkt *k, uint64_t t)
{
    /* Wait until something leaves, or the deadline passes. */
    while (!r->cap.n && r->now < t + LATE_MS)
        advance(r, r->now + 1);
    struct pb_frame *f = pb_pop(&r->cap);
    if (!f)
        sfail(r, "expected a segment at %.3f, none was sent", t / 1000.0);
    if (f->t + EARLY_MS < t || f->t > t + LATE_MS) {
        sfail(r, "segment sent at %.3f, expected at %.3f", f->t / 1000.0, t / 1000.0);
    }
    const uint8_t *d = f->data;
    if (f->len < 54 || d[12] != 0x08 || d[13] != 0x00 || d[14 + 9] != IPPROTO_TCP)
        sfail(r, "not a TCP/IPv4 frame");
    if (memcmp(d, pb_peer_mac, 6) != 0 || memcmp(d + 6, pb_us_mac, 6) != 0)
        sfail(r, "wrong Ethernet addresses");
    struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(d + 14);
    if (rte_raw_cksum(ip, 20) != 0xffff)
        sfail(r, "bad IP checksum");
    if (!(ip->fragment_offset & rte_cpu_to_be_16(RTE_IPV4_HDR_DF_FLAG)) || ip->time_to_live != 64)
        sfail(r, "DF/TTL not set");
    size_t tot = rte_be_to_cpu_16(ip->total_length);
    if (tot + 14 != f->len)
        sfail(r, "IP length %zu vs frame %zu", tot, f->len);
    if (tot > r->cfg.mtu)
        sfail(r, "IP length %zu is over the MTU %u (a real link drops it)", tot, r->cfg.mtu);
    const uint8_t *th = d + 34;
    uint16_t l4 = (uint16_t)(tot - 20);
    uint32_t sum = rte_ipv4_phdr_cksum(ip, 0) + (uint32_t)rte_raw_cksum(th, l4);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    if (sum != 0xffff)
        sfail(r, "bad TCP checksum");
    uint16_t sport = (uint16_t)(th[0] << 8 | th[1]), dport = (uint16_t)(th[2] << 8 | th[3]);
    uint32_t seq = rd32(th + 4), ack = rd32(th + 8);
    size_t doff = (size_t)(th[12] >> 4) * 4;
    uint8_t flags = th[13] & 0x3f;
    uint16_t win = (uint16_t)(th[14] << 8 | th[15]);
    uint32_t len = (uint32_t)(l4 - doff);
    if (dport != PEER_PORT)
        sfail(r, "sent to port %u", dport);
    if (flags & 0x02) {
        if (!r->have_isn || (flags & 0x10) == 0 || true) {
            r->our_isn = seq - k->seq;
            r->have_isn = true;
        }
        r->our_port = sport;
    } else if (sport != r->our_port) {
        sfail(r, "sent from port %u", sport);
    }
    /* last TS value, for "ecr *" */
    for (size_t i = 20; i + 10 <= doff;) {
        if (th[i] == 1) {
            i++;
            continue;
        }
        if (th[i] == 0 || th[i + 1] < 2)
            break;
        if (th[i] == 8 && th[i + 1] == 10)
            r->last_tsval = rd32(th + i + 2);
        i += th[i + 1];
    }
    char got[200];
    snprintf(got, sizeof got, "flags %02x seq %u:%u(%u) ack %u win %u", flags, seq - r->our_isn,
             seq - r->our_isn + len, len, (flags & 0x10) ? ack - PEER_ISN : 0, win);
    if (flags != k->flags)
        sfail(r, "flags differ: got %s", got);
    if (seq - r->our_isn != k->seq || len != k->len)
        sfail(r, "sequence differs: got %s", got);
    if (k->has_ack && ack - PEER_ISN != k->ack)
        sfail(r, "ack differs: got %s", got);
    if (k->has_win && win != k->win)
        sfail(r, "window differs: got %s", got);
    if (k->has_opt) {
        size_t optlen = (k->optlen + 3) & ~(size_t)3;
        if (doff - 20 != optlen)
            sfail(r, "options length %zu, expected %zu (%s)", doff - 20, optlen, got);
        for (size_t i = 0; i < k->optlen; i++)
            if (!k->opt_wild[i] && th[20 + i] != k->opt[i])
                sfail(r, "option byte %zu is %u, expected %u", i, th[20 + i], k->opt[i]);
    }
    if (k->has_data && memcmp(th + doff, k->data, len) != 0)
        sfail(r, "payload differs: '%.*s'", (int)len, (const char *)th + doff);
    free(f);
}

/* ---------------------------------------------------------------------- */
/* app and stat lines */

static uint64_t stat_value(struct runner *r, const char *name)
{
    const struct mx_tcp_stats *s = mx_tcp_stack_stats(r->st);
#define S(f)                                                                                       \
    if (strcmp(name, #f) == 0)                                                                     \
        return s->f;
    S(tcp_retrans) S(tcp_rto) S(tcp_fast_retrans) S(tcp_dupack) S(tcp_ooo) S(tcp_ooo_drop)
    S(tcp_challenge_ack) S(tcp_syn_cookie_tx) S(tcp_syn_cookie_ok) S(tcp_syn_cookie_bad)
    S(tcp_accepts) S(tcp_connects) S(tcp_timewait_recycled) S(tcp_paws_drop) S(tcp_zwp)
    S(tcp_keepalive) S(tcp_aborts) S(tcp_rst_tx) S(tcp_bad_csum) S(tcp_no_port) S(conns)
    S(syn_rcvd) S(timewait) S(tcp_mem_drop) S(mem_used) S(tcp_sack_retrans)
#undef S
    sfail(r, "unknown stat %s", name);
    return 0;
}

static void app_line(struct runner *r, const char *p)
{
    struct app *a = &r->app;
    char buf[4096];
again:
    if (take(&p, "writen")) {
        long long n = num(r, &p);
        for (long long i = 0; i < n; i++) {
            uint8_t b = pattern(a->written + (uint64_t)i);
            int rc = mx_stream_write(a->s, &b, 1);
            if (rc)
                sfail(r, "write failed: %d", rc);
        }
        a->written += (uint64_t)n;
    } else if (take(&p, "write")) {
        size_t n = quoted(r, &p, buf, sizeof buf);
        if (!a->s)
            sfail(r, "no stream");
        int rc = mx_stream_write(a->s, buf, n);
        if (rc)
            sfail(r, "write failed: %d", rc);
        a->written += n;
    } else if (take(&p, "closed")) {
        int res = (int)num(r, &p);
        if (!a->closed || a->closed_res != res)
            sfail(r, "closed: %s res %d, expected %d", a->closed ? "yes" : "no", a->closed_res, res);
    } else if (take(&p, "close")) {
        if (!a->s)
            sfail(r, "no stream");
        mx_stream_close(a->s);
    } else if (take(&p, "pause")) {
        mx_stream_pause(a->s, true);
    } else if (take(&p, "resume")) {
        mx_stream_pause(a->s, false);
    } else if (take(&p, "readn")) {
        long long n = num(r, &p);
        if ((long long)a->rx_len < n)
            sfail(r, "read %lld bytes, only %zu arrived", n, a->rx_len);
        for (long long i = 0; i < n; i++)
            if (a->rx[i] != pattern(a->rx_total_read + (uint64_t)i))
                sfail(r, "byte %lld of stream is '%c'", i, a->rx[i]);
        memmove(a->rx, a->rx + n, a->rx_len - (size_t)n);
        a->rx_len -= (size_t)n;
        a->rx_total_read += (uint64_t)n;
    } else if (take(&p, "read")) {
        size_t n = quoted(r, &p, buf, sizeof buf);
        if (a->rx_len < n || memcmp(a->rx, buf, n) != 0)
            sfail(r, "read '%.*s', have '%.*s'", (int)n, buf, (int)a->rx_len, a->rx);
        memmove(a->rx, a->rx + n, a->rx_len - n);
        a->rx_len -= n;
        a->rx_total_read += n;
    } else if (take(&p, "nodata")) {
        if (a->rx_len)
            sfail(r, "unexpected data '%.*s'", (int)a->rx_len, a->rx);
    } else if (take(&p, "connected")) {
        int res = (int)num(r, &p);
        if (!a->connected || a->connected_res != res)
            sfail(r, "connected: %s res %d, expected %d", a->connected ? "yes" : "no",
                 a->connected_res, res);
    } else if (take(&p, "connect")) {
        long long port = num(r, &p);
        int rc = mx_tcp_connect(r->st, rte_cpu_to_be_32(PB_PEER_IP), (uint16_t)port, &app_cb, a,
                                &a->s);
        if (rc)
            sfail(r, "connect: %d", rc);
    } else if (take(&p, "timer")) {
        mx_stream_set_timer(a->s, (uint64_t)num(r, &p));
    } else if (take(&p, "timeout")) {
        if (!a->timeouts)
            sfail(r, "timeout did not fire");
        a->timeouts--;
    } else if (take(&p, "drained")) {
        if (!a->drained)
            sfail(r, "drained did not fire");
        a->drained = 0;
    } else {
        sfail(r, "unknown app command '%s'", p);
    }
    /* "cmd1 ; cmd2": several calls in one loop iteration */
    if (take(&p, ";"))
        goto again;
    mx_tcp_poll(r->st, r->now);
}

static void config_line(struct runner *r, const char *p)
{
    char name[64];
    long long v;
    if (sscanf(p, " %63[a-z_0-9]=%lld", name, &v) != 2)
        sfail(r, "config NAME=VALUE");
#define C(f)                                                                                       \
    if (strcmp(name, #f) == 0) {                                                                   \
        r->cfg.f = (typeof(r->cfg.f))v;                                                            \
        return;                                                                                    \
    }
    C(syn_backlog) C(max_conns) C(max_timewait) C(rcvbuf) C(sndbuf) C(mem_limit) C(ooo_ranges)
    C(rto_init_ms) C(rto_min_ms) C(rto_max_ms) C(max_retries) C(syn_retries) C(delack_ms)
    C(timewait_ms) C(fin_wait2_ms) C(keepalive_idle_ms) C(keepalive_intvl_ms) C(keepalive_probes)
    C(syncookies_always) C(mtu) C(challenge_ack_limit)
#undef C
    sfail(r, "unknown config %s", name);
}

static void start_stack(struct runner *r)
{
    if (r->st)
        return;
    struct mx_tcp_tx tx = pb_tx(&r->cap);
    r->cap.now = &r->now;
    int rc = mx_tcp_stack_create(&r->cfg, &tx, &r->st);
    if (rc)
        sfail(r, "stack create: %d", rc);
    uint8_t mac[6];
    memcpy(mac, pb_peer_mac, 6);
    mx_tcp_arp_add(r->st, rte_cpu_to_be_32(PB_PEER_IP), mac);
    rc = mx_tcp_listen(r->st, US_PORT, app_accept, r);
    if (rc)
        sfail(r, "listen: %d", rc);
    mx_tcp_poll(r->st, r->now);
}

static void run_script(void **state)
{
    const char *path = *state;
    struct runner *r = calloc(1, sizeof *r);
    assert_non_null(r);
    g_r = r;
    r->path = path;
    r->now = 1000;
    r->our_port = US_PORT;
    pb_config(&r->cfg);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        r->line++;
        line[strcspn(line, "\n")] = 0;
        const char *p = skip_ws(line);
        if (!*p || *p == '#')
            continue;
        if (take(&p, "config")) {
            config_line(r, p);
            continue;
        }
        start_stack(r);
        /* time */
        bool rel = *p == '+';
        if (rel)
            p++;
        char *end;
        double secs = strtod(p, &end);
        if (end == p)
            sfail(r, "time expected");
        p = end;
        uint64_t t = (uint64_t)(secs * 1000.0 + 0.5) + (rel ? r->last_line_t : 1000);
        r->last_line_t = t;
        p = skip_ws(p);
        if (*p == '<') {
            struct pkt k;
            parse_pkt(r, p + 1, &k, true);
            advance(r, t);
            if (r->cap.n)
                sfail(r, "unexpected segment sent before this line (%u queued)", r->cap.n);
            inject(r, &k);
        } else if (*p == '>') {
            struct pkt k;
            parse_pkt(r, p + 1, &k, false);
            expect(r, &k, t);
        } else if (take(&p, "app")) {
            advance(r, t);
            if (r->cap.n)
                sfail(r, "unexpected segment sent before this line (%u queued)", r->cap.n);
            app_line(r, p);
        } else if (take(&p, "stat")) {
            advance(r, t);
            char name[64];
            unsigned long long v;
            if (sscanf(p, " %63s %llu", name, &v) != 2)
                sfail(r, "stat NAME VALUE");
            uint64_t got = stat_value(r, name);
            if (got != v)
                sfail(r, "stat %s is %llu, expected %llu", name, (unsigned long long)got, v);
        } else {
            sfail(r, "cannot parse '%s'", p);
        }
    }
    fclose(f);
    start_stack(r);
    mx_tcp_poll(r->st, r->now);
    if (r->cap.n) {
        struct pb_frame *fr = r->cap.q[r->cap.head];
        r->line = 0;
        sfail(r, "script ended with %u unexpected segment(s) queued (first sent at %.3f, flags %02x)",
             r->cap.n, fr->t / 1000.0, fr->len > 47 ? fr->data[47] : 0);
    }
    pb_clear(&r->cap);
    mx_tcp_stack_destroy(r->st);
    free(r);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "tests/tcpstack/scripts";
    const char *only = argc > 2 ? argv[2] : NULL;
    DIR *d = opendir(dir);
    if (!d) {
        perror(dir);
        return 1;
    }
    static char *names[256];
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < 256) {
        size_t l = strlen(de->d_name);
        if (l < 5 || strcmp(de->d_name + l - 4, ".pkt") != 0)
            continue;
        if (only && !strstr(de->d_name, only))
            continue;
        char *path = malloc(strlen(dir) + l + 2);
        sprintf(path, "%s/%s", dir, de->d_name);
        names[n++] = path;
    }
    closedir(d);
    qsort(names, n, sizeof names[0], cmp_str);
    static struct CMUnitTest tests[256];
    for (size_t i = 0; i < n; i++) {
        tests[i].name = strrchr(names[i], '/') + 1;
        tests[i].test_func = run_script;
        tests[i].initial_state = names[i];
    }
    if (!n) {
        fprintf(stderr, "no scripts in %s\n", dir);
        return 1;
    }
    return _cmocka_run_group_tests("tcp_scripts", tests, n, NULL, NULL);
}
