/*
 * memif_smtp.c - SMTP load generator and downstream sink on mxgate's own
 * userspace TCP stack, for measuring the stack without the kernel: it runs
 * the DPDK port backend (dataplane/dpdk.c) on a net_memif port whose other
 * end is mxgate, opens CONNECTIONS SMTP sessions to mxgate and sends
 * MESSAGES messages of SIZE bytes in all (MAIL+RCPT+DATA pipelined, then the
 * body), and at the same time accepts mxgate's deliveries on port 2626 (a
 * minimal sink: 250 to everything, counts end-of-data). Both ends busy-poll.
 *
 * usage: memif_smtp EAL-ARGS -- ADDR/PREFIX SERVER-ADDR CONNECTIONS MESSAGES SIZE SECONDS
 * Prints one JSON line: sent, delivered (to the sink), elapsed, rates and
 * this process's CPU seconds.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <arpa/inet.h>
#include <rte_eal.h>

#include "tcpstack/tcpstack.h"

#define SMTP_PORT 2525
#define SINK_PORT 2626
#define MAX_LINE 512

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

/* ---------------------------------------------------------------------- */
/* Shared: split received bytes into lines (bounded; longer lines are cut) */

struct lines {
    char buf[MAX_LINE];
    size_t n;
};

/* Feed bytes; calls fn for each complete line (without CRLF). */
static void lines_feed(struct lines *l, const uint8_t *p, size_t len,
                       void (*fn)(void *arg, const char *line, size_t n), void *arg)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '\n') {
            size_t n = l->n;
            if (n && l->buf[n - 1] == '\r')
                n--;
            l->buf[n] = '\0';
            l->n = 0;
            fn(arg, l->buf, n);
        } else if (l->n < sizeof l->buf - 1) {
            l->buf[l->n++] = (char)p[i];
        }
    }
}

/* ---------------------------------------------------------------------- */
/* Client sessions */

enum cstate { C_GREETING, C_EHLO, C_ENVELOPE, C_BODY, C_QUIT, C_DONE };

struct client {
    struct mx_stream *s;
    enum cstate st;
    unsigned pending; /* replies still expected in this state */
    struct lines in;
    bool failed;
};

static struct {
    unsigned conns, to_send, started, accepted, delivered, open_clients, failed;
    char *msg;
    size_t msg_len;
    uint64_t first_ms, last_accept_ms, last_deliver_ms;
} B;

static const char ENVELOPE[] = "MAIL FROM:<bench@memif.test>\r\nRCPT TO:<user@example.test>\r\n"
                               "DATA\r\n";

static void client_write(struct client *c, const void *p, size_t n)
{
    if (mx_stream_write(c->s, p, n) != 0) {
        c->failed = true;
        mx_stream_close(c->s);
    }
}

static void client_next(struct client *c)
{
    if (B.started < B.to_send) {
        B.started++;
        c->st = C_ENVELOPE;
        c->pending = 3;
        client_write(c, ENVELOPE, sizeof ENVELOPE - 1);
    } else {
        c->st = C_QUIT;
        c->pending = 1;
        client_write(c, "QUIT\r\n", 6);
    }
}

static void client_line(void *arg, const char *line, size_t n)
{
    struct client *c = arg;
    if (c->failed || c->st == C_DONE)
        return;
    if (n < 4 || line[3] == '-')
        return; /* continuation of a multi-line reply */
    int code = atoi(line);
    switch (c->st) {
    case C_GREETING:
        if (code != 220)
            goto fail;
        c->st = C_EHLO;
        client_write(c, "EHLO memif.test\r\n", 17);
        return;
    case C_EHLO:
        if (code != 250)
            goto fail;
        client_next(c);
        return;
    case C_ENVELOPE:
        if (--c->pending > 0) {
            if (code != 250)
                goto fail;
            return;
        }
        if (code != 354)
            goto fail;
        c->st = C_BODY;
        client_write(c, B.msg, B.msg_len);
        return;
    case C_BODY:
        if (code != 250)
            goto fail;
        B.accepted++;
        B.last_accept_ms = now_ms();
        client_next(c);
        return;
    case C_QUIT:
        c->st = C_DONE;
        mx_stream_close(c->s);
        return;
    case C_DONE:
        return;
    }
fail:
    fprintf(stderr, "memif_smtp: unexpected reply in state %d: %s\n", (int)c->st, line);
    c->failed = true;
    mx_stream_close(c->s);
}

static void client_data(struct mx_stream *s, void *ctx, const uint8_t *buf, size_t len)
{
    (void)s;
    struct client *c = ctx;
    lines_feed(&c->in, buf, len, client_line, c);
}

static void client_connected(struct mx_stream *s, void *ctx, int res)
{
    (void)s;
    struct client *c = ctx;
    if (res != 0) {
        fprintf(stderr, "memif_smtp: connect: %s\n", strerror(-res));
        c->failed = true;
        B.failed++;
        B.open_clients--;
    }
}

static void client_closed(struct mx_stream *s, void *ctx, int res)
{
    (void)s;
    struct client *c = ctx;
    if (c->st != C_DONE || res != 0)
        c->failed = true;
    if (c->failed)
        B.failed++;
    B.open_clients--;
}

static const struct mx_stream_cb client_cb = {
    .data = client_data, .connected = client_connected, .closed = client_closed};

/* ---------------------------------------------------------------------- */
/* Sink sessions (mxgate's deliveries) */

struct sink {
    struct mx_stream *s;
    struct lines in;
    bool in_data;
    unsigned eod; /* how much of "\r\n.\r\n" the data stream has matched */
};

static void sink_reply(struct sink *k, const char *r)
{
    if (mx_stream_write(k->s, r, strlen(r)) != 0)
        mx_stream_close(k->s);
}

static void sink_line(void *arg, const char *line, size_t n)
{
    struct sink *k = arg;
    (void)n;
    if (!strncasecmp(line, "EHLO", 4))
        sink_reply(k, "250-memif-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
    else if (!strncasecmp(line, "DATA", 4)) {
        k->in_data = true;
        k->eod = 2; /* the CRLF that ended DATA starts the first line */
        sink_reply(k, "354 go ahead\r\n");
    } else if (!strncasecmp(line, "QUIT", 4)) {
        sink_reply(k, "221 bye\r\n");
        mx_stream_close(k->s);
    } else
        sink_reply(k, "250 ok\r\n");
}

static void sink_data(struct mx_stream *s, void *ctx, const uint8_t *buf, size_t len)
{
    (void)s;
    static const char eod[] = "\r\n.\r\n";
    struct sink *k = ctx;
    size_t i = 0;
    while (i < len) {
        if (!k->in_data) {
            /* command lines up to the end of DATA; the rest is message text */
            size_t j = i;
            while (j < len && !k->in_data) {
                lines_feed(&k->in, buf + j, 1, sink_line, k);
                j++;
            }
            i = j;
            continue;
        }
        uint8_t ch = buf[i++];
        if (ch == (uint8_t)eod[k->eod])
            k->eod++;
        else
            k->eod = ch == '\r' ? 1 : 0;
        if (k->eod == 5) {
            k->in_data = false;
            k->eod = 0;
            B.delivered++;
            B.last_deliver_ms = now_ms();
            sink_reply(k, "250 2.0.0 accepted\r\n");
        }
    }
}

static void sink_closed(struct mx_stream *s, void *ctx, int res)
{
    (void)s;
    (void)res;
    free(ctx);
}

static const struct mx_stream_cb sink_cb = {.data = sink_data, .closed = sink_closed};

static void sink_accept(struct mx_stream *s, void *arg)
{
    (void)arg;
    struct sink *k = calloc(1, sizeof *k);
    if (!k) {
        mx_stream_close(s);
        return;
    }
    k->s = s;
    mx_stream_bind(s, &sink_cb, k);
    sink_reply(k, "220 memif-sink ESMTP\r\n");
}

/* ---------------------------------------------------------------------- */

static char *make_message(size_t size, size_t *len)
{
    char *m = malloc(size + 256);
    if (!m)
        return NULL;
    size_t n = (size_t)sprintf(m, "From: bench@memif.test\r\nTo: user@example.test\r\n"
                                  "Subject: memif bench\r\n\r\n");
    while (n + 80 < size) {
        for (size_t i = 0; i < 76; i++, n++)
            m[n] = (char)('a' + (n * 7 + i) % 26);
        m[n++] = '\r';
        m[n++] = '\n';
    }
    memcpy(m + n, ".\r\n", 3);
    *len = n + 3;
    return m;
}

int main(int argc, char **argv)
{
    int n = rte_eal_init(argc, argv);
    if (n < 0) {
        fprintf(stderr, "EAL init failed\n");
        return 2;
    }
    argc -= n;
    argv += n;
    if (argc < 7) {
        fprintf(stderr, "usage: memif_smtp EAL -- ADDR/PREFIX SERVER CONNECTIONS MESSAGES SIZE "
                        "SECONDS\n");
        return 2;
    }
    char addr[64];
    snprintf(addr, sizeof addr, "%s", argv[1]);
    char *slash = strchr(addr, '/');
    unsigned prefix = 24;
    if (slash) {
        *slash = 0;
        prefix = (unsigned)atoi(slash + 1);
    }
    struct mx_dpdk_params p;
    memset(&p, 0, sizeof p);
    p.nb_queues = 1;
    uint32_t server;
    if (inet_pton(AF_INET, addr, &p.addr) != 1 || inet_pton(AF_INET, argv[2], &server) != 1)
        return 2;
    p.prefix_len = (uint8_t)prefix;
    mx_tcp_config_default(&p.tcp);
    B.conns = (unsigned)atoi(argv[3]);
    B.to_send = (unsigned)atoi(argv[4]);
    B.msg = make_message((size_t)atol(argv[5]), &B.msg_len);
    uint64_t limit_ms = (uint64_t)atoi(argv[6]) * 1000;
    if (!B.msg || !B.conns || B.conns > 1000)
        return 2;
    int rc = mx_dpdk_init(&p);
    if (rc) {
        fprintf(stderr, "mx_dpdk_init: %d\n", rc);
        return 1;
    }
    struct mx_tcp_stack *st = mx_dpdk_stack(0);
    if (mx_tcp_listen(st, SINK_PORT, sink_accept, NULL) != 0)
        return 1;
    /* let the link come up and ARP settle before the clock starts */
    uint64_t t = now_ms();
    while (now_ms() < t + 1000)
        mx_dpdk_poll(0, now_ms());
    struct client *cl = calloc(B.conns, sizeof *cl);
    if (!cl)
        return 1;
    double cpu0 = cpu_s();
    B.first_ms = now_ms();
    for (unsigned i = 0; i < B.conns; i++) {
        rc = mx_tcp_connect(st, server, SMTP_PORT, &client_cb, &cl[i], &cl[i].s);
        if (rc) {
            fprintf(stderr, "memif_smtp: connect: %s\n", strerror(-rc));
            return 1;
        }
        B.open_clients++;
    }
    uint64_t end = B.first_ms + limit_ms;
    while (now_ms() < end && (B.open_clients > 0 || B.delivered < B.accepted))
        mx_dpdk_poll(0, now_ms());
    double cpu = cpu_s() - cpu0;
    double acc_s = (double)(B.last_accept_ms - B.first_ms) / 1000.0;
    double del_s = (double)(B.last_deliver_ms - B.first_ms) / 1000.0;
    printf("{\"connections\":%u,\"size\":%zu,\"accepted\":%u,\"delivered\":%u,\"failed\":%u,"
           "\"accept_s\":%.3f,\"accepted_per_s\":%.1f,\"relay_s\":%.3f,\"relayed_per_s\":%.1f,"
           "\"client_cpu_s\":%.3f}\n",
           B.conns, B.msg_len, B.accepted, B.delivered, B.failed, acc_s,
           acc_s > 0 ? B.accepted / acc_s : 0.0, del_s, del_s > 0 ? B.delivered / del_s : 0.0,
           cpu);
    fflush(stdout);
    mx_dpdk_fini();
    rte_eal_cleanup();
    free(cl);
    free(B.msg);
    return B.accepted == B.to_send && B.delivered == B.accepted && !B.failed ? 0 : 1;
}
