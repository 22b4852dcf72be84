/*
 * dpdk_echo.c - integration test server: the DPDK port backend and the
 * userspace stack on one end of a veth pair (net_af_packet), serving a
 * server-speaks-first echo protocol on one TCP port: it sends
 * "220 mxtest ready\r\n" and then echoes every byte. On exit (SIGTERM/SIGINT
 * or --seconds elapsed) it prints the stack and queue counters as
 * "name value" lines for the test script to check.
 *
 * With MX_ECHO_DEBUG set in the environment it also prints, once a second
 * and on SIGUSR1, the send/receive state of every live session to stderr
 * (what a stall in the fault test waits for).
 *
 * usage: dpdk_echo EAL-ARGS -- ADDR/PREFIX PORT SECONDS [drop reorder dup delay_ms seed]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <rte_eal.h>
#include <rte_ethdev.h>

#include "tcpstack/tcp_internal.h"

static volatile sig_atomic_t stop, dump_req;
static unsigned sessions, closed_ok;

static void on_sig(int sig)
{
    (void)sig;
    stop = 1;
}

static void on_usr1(int sig)
{
    (void)sig;
    dump_req = 1;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Echo with back-pressure: what the send buffer refuses waits here, and the
 * stream is paused until drained() says there is room again. */
struct sess {
    struct mx_stream *s;
    unsigned slot;
    uint8_t pend[1 << 20]; /* a resumed stream may hand over a whole receive buffer */
    size_t npend;
};

/* Live sessions, for the debug dump. */
#define MAX_LIVE 64
static struct sess *live[MAX_LIVE];

/** One line per live session: the connection's send and receive state. */
static void dump_sessions(uint64_t now)
{
    for (unsigned i = 0; i < MAX_LIVE; i++) {
        struct sess *e = live[i];
        if (!e)
            continue;
        const struct tcp_conn *c = (const struct tcp_conn *)e->s;
        fprintf(stderr,
                "dump t=%llu sess=%u st=%u una=%u nxt=%u max=%u end=%u fin_q=%d swnd=%u "
                "cwnd=%u ssth=%u rec=%d recover=%u dupacks=%u backoff=%u rto=%u rexmt_in=%lld "
                "persist=%d | rnxt=%u ruser=%u radv=%u rwnd=%u ooo=%u paused=%d npend=%zu\n",
                (unsigned long long)now, i, c->state, c->snd_una - c->iss, c->snd_nxt - c->iss,
                c->snd_max - c->iss, c->snd_end - c->iss, c->fin_queued, c->snd_wnd, c->cwnd,
                c->ssthresh, c->in_recovery, c->recover - c->iss, c->dupacks, c->backoff, c->rto,
                c->t_rexmt ? (long long)(c->t_rexmt - now) : -1LL, c->persist, c->rcv_nxt - c->irs,
                c->rcv_user - c->irs, c->rcv_adv - c->irs, c->rbuf_sz - (c->rcv_nxt - c->rcv_user),
                c->n_ooo, c->paused, e->npend);
    }
    fflush(stderr);
}

static void try_flush(struct mx_stream *s, struct sess *e)
{
    while (e->npend) {
        size_t n = e->npend > 8192 ? 8192 : e->npend;
        if (mx_stream_write(s, e->pend, n) != 0)
            return;
        memmove(e->pend, e->pend + n, e->npend - n);
        e->npend -= n;
    }
    mx_stream_pause(s, false);
}

static void on_data(struct mx_stream *s, void *ctx, const uint8_t *buf, size_t len)
{
    struct sess *e = ctx;
    if (!e->npend && mx_stream_write(s, buf, len) == 0)
        return;
    if (e->npend + len > sizeof e->pend) {
        fprintf(stderr, "echo: pending overflow\n");
        mx_stream_close(s);
        return;
    }
    memcpy(e->pend + e->npend, buf, len);
    e->npend += len;
    mx_stream_pause(s, true);
    try_flush(s, e);
}

static void on_drained(struct mx_stream *s, void *ctx)
{
    try_flush(s, ctx);
}

static void on_closed(struct mx_stream *s, void *ctx, int res)
{
    (void)s;
    if (res == 0) {
        closed_ok++;
        printf("closed %u\n", closed_ok); /* the test script waits for these */
        fflush(stdout);
    } else
        fprintf(stderr, "echo: session closed with %d\n", res);
    struct sess *e = ctx;
    live[e->slot] = NULL;
    free(ctx);
}

static const struct mx_stream_cb echo_cb = {
    .data = on_data, .closed = on_closed, .drained = on_drained};

static void on_accept(struct mx_stream *s, void *arg)
{
    (void)arg;
    struct sess *e = calloc(1, sizeof *e);
    if (!e) {
        mx_stream_close(s);
        return;
    }
    sessions++;
    e->s = s;
    e->slot = MAX_LIVE;
    for (unsigned i = 0; i < MAX_LIVE; i++) {
        if (!live[i]) {
            live[i] = e;
            e->slot = i;
            break;
        }
    }
    if (e->slot == MAX_LIVE) {
        free(e);
        mx_stream_close(s);
        return;
    }
    mx_stream_bind(s, &echo_cb, e);
    mx_stream_write(s, "220 mxtest ready\r\n", 18);
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
    if (argc < 4) {
        fprintf(stderr,
                "usage: dpdk_echo EAL -- ADDR/PREFIX PORT SECONDS [drop reorder dup delay seed]\n");
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
    if (inet_pton(AF_INET, addr, &p.addr) != 1)
        return 2;
    p.prefix_len = (uint8_t)prefix;
    mx_tcp_config_default(&p.tcp);
    if (argc >= 9) {
        p.impair.drop = atof(argv[4]);
        p.impair.reorder = atof(argv[5]);
        p.impair.duplicate = atof(argv[6]);
        p.impair.delay_ms = (uint32_t)atoi(argv[7]);
        p.impair.seed = strtoull(argv[8], NULL, 10);
    }
    int rc = mx_dpdk_init(&p);
    if (rc) {
        fprintf(stderr, "mx_dpdk_init: %d\n", rc);
        return 1;
    }
    rc = mx_tcp_listen(mx_dpdk_stack(0), (uint16_t)atoi(argv[2]), on_accept, NULL);
    if (rc)
        return 1;
    signal(SIGTERM, on_sig);
    signal(SIGINT, on_sig);
    signal(SIGUSR1, on_usr1);
    bool debug = getenv("MX_ECHO_DEBUG") != NULL;
    uint64_t next_dump = now_ms() + 1000;
    uint64_t end = now_ms() + (uint64_t)atoi(argv[3]) * 1000;
    printf("ready\n");
    fflush(stdout);
    while (!stop && now_ms() < end) {
        uint64_t t = now_ms();
        if (dump_req || (debug && t >= next_dump)) {
            dump_req = 0;
            next_dump = t + 1000;
            dump_sessions(t);
        }
        if (!mx_dpdk_poll(0, t)) {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    }
    const struct mx_tcp_stats *st = mx_tcp_stack_stats(mx_dpdk_stack(0));
    struct mx_dpdk_queue_stats qs;
    mx_dpdk_queue_stats(0, &qs);
    printf("sessions %u\nclosed_ok %u\n", sessions, closed_ok);
    printf("tcp_retrans %lu\ntcp_rto %lu\ntcp_fast_retrans %lu\ntcp_sack_retrans %lu\n"
           "tcp_ooo %lu\ntcp_zwp %lu\n",
           (unsigned long)st->tcp_retrans, (unsigned long)st->tcp_rto,
           (unsigned long)st->tcp_fast_retrans, (unsigned long)st->tcp_sack_retrans,
           (unsigned long)st->tcp_ooo, (unsigned long)st->tcp_zwp);
    printf("tcp_bad_csum %lu\nip_bad_csum %lu\narp_rx %lu\nicmp_echo %lu\n",
           (unsigned long)st->tcp_bad_csum, (unsigned long)st->ip_bad_csum,
           (unsigned long)st->arp_rx, (unsigned long)st->icmp_echo);
    printf("rx %lu\ntx %lu\nimpair_drop %lu\nimpair_dup %lu\nimpair_reorder %lu\n",
           (unsigned long)qs.rx, (unsigned long)qs.tx, (unsigned long)qs.impair_drop,
           (unsigned long)qs.impair_dup, (unsigned long)qs.impair_reorder);
    fflush(stdout);
    mx_dpdk_fini();
    rte_eal_cleanup();
    return 0;
}
