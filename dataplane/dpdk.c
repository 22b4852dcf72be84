/*
 * dpdk.c - the DPDK port backend: sets up one ethdev port with one RX/TX
 * queue pair per worker, feeds each queue's frames to that worker's
 * mx_tcp_stack and sends what the stack emits, in bursts.
 *
 * - RSS with a symmetric Toeplitz key when the port has RSS, so both
 *   directions of a flow reach one core. Ports without RSS (net_af_packet
 *   spreads by the kernel's hash) get software steering: a frame whose
 *   tuple hashes to another queue goes to that queue's core over an
 *   rte_ring; ARP frames go to every core (each keeps its own ARP cache).
 * - Checksum offloads when the port offers them; software otherwise.
 * - A seeded impairment layer (drop, duplicate, reorder, delay) on both
 *   directions for tests without netem; off unless configured.
 * Nothing here is shared between queues on the hot path except the
 * steering rings (single consumer each).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_lcore.h>
#include <rte_malloc.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>
#include <rte_tcp.h>

#include "tcpstack/tcpstack.h"

#define MAX_QUEUES 64
#define BURST 32
#define RX_DESC 1024
#define TX_DESC 1024
#define POOL_PER_QUEUE 8192
#define STEER_RING 4096
#define DELAY_SLOTS 8192
#define REORDER_HOLD_MS 5

enum { DIR_RX = 0, DIR_TX = 1 };

struct delayed {
    struct rte_mbuf *m;
    uint64_t due;
};

struct impair_dir {
    struct rte_mbuf *held; /* reordered: leaves after the next frame */
    uint64_t held_at;
    struct delayed *q;     /* FIFO: the delay is constant, so due times are ordered */
    unsigned head, n;
};

struct dq {
    unsigned q;
    struct mx_tcp_stack *st;
    struct rte_mempool *pool;
    struct rte_ring *steer; /* frames other queues received for our flows */
    struct rte_mbuf *txb[BURST];
    unsigned ntx;
    uint64_t now;
    uint64_t rng;
    struct impair_dir imp[2];
    struct mx_dpdk_queue_stats stats;
};

static struct {
    bool up;
    uint16_t port;
    unsigned nq;
    bool hw_rss, tx_csum, rx_csum, impair_on;
    struct mx_dpdk_impair imp;
    struct rte_mempool *pools[RTE_MAX_NUMA_NODES];
    struct dq *q[MAX_QUEUES];
} g;

/* ---------------------------------------------------------------------- */
/* TX side, as the stack's struct mx_tcp_tx */

static void tx_flush(struct dq *d)
{
    if (!d->ntx)
        return;
    uint16_t sent = rte_eth_tx_burst(g.port, (uint16_t)d->q, d->txb, (uint16_t)d->ntx);
    d->stats.tx += sent;
    for (unsigned i = sent; i < d->ntx; i++) {
        rte_pktmbuf_free(d->txb[i]);
        d->stats.tx_drop++;
    }
    d->ntx = 0;
}

static void tx_queue(struct dq *d, struct rte_mbuf *m)
{
    d->txb[d->ntx++] = m;
    if (d->ntx == BURST)
        tx_flush(d);
}

static void stack_rx(struct dq *d, struct rte_mbuf *m);
static void impair_in(struct dq *d, int dir, struct rte_mbuf *m);

static void deliver(struct dq *d, int dir, struct rte_mbuf *m)
{
    if (dir == DIR_TX)
        tx_queue(d, m);
    else
        stack_rx(d, m);
}

static uint8_t *tx_alloc(void *arg, size_t len, void **handle)
{
    struct dq *d = arg;
    struct rte_mbuf *m = rte_pktmbuf_alloc(d->pool);
    if (!m) {
        d->stats.nombuf++;
        return NULL;
    }
    char *p = rte_pktmbuf_append(m, (uint16_t)len);
    if (!p) {
        rte_pktmbuf_free(m);
        return NULL;
    }
    *handle = m;
    return (uint8_t *)p;
}

static void tx_send(void *arg, void *handle, size_t len, unsigned offload)
{
    struct dq *d = arg;
    struct rte_mbuf *m = handle;
    if (len < m->pkt_len)
        rte_pktmbuf_trim(m, (uint16_t)(m->pkt_len - len));
    if (offload) {
        m->l2_len = sizeof(struct rte_ether_hdr);
        m->l3_len = sizeof(struct rte_ipv4_hdr);
        m->ol_flags |= RTE_MBUF_F_TX_IPV4;
        if (offload & MX_TCP_TX_OFFLOAD_IP)
            m->ol_flags |= RTE_MBUF_F_TX_IP_CKSUM;
        if (offload & MX_TCP_TX_OFFLOAD_TCP)
            m->ol_flags |= RTE_MBUF_F_TX_TCP_CKSUM;
    }
    impair_in(d, DIR_TX, m);
}

static void tx_drop(void *arg, void *handle)
{
    (void)arg;
    rte_pktmbuf_free(handle);
}

/* ---------------------------------------------------------------------- */
/* Impairment: seeded, per queue, per direction */

static double rnd(struct dq *d)
{
    /* xorshift64*: reproducible from the seed, no shared state */
    uint64_t x = d->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    d->rng = x;
    return (double)((x * 0x2545f4914f6cdd1dULL) >> 11) / (double)(1ULL << 53);
}

static void impair_delay(struct dq *d, int dir, struct rte_mbuf *m)
{
    struct impair_dir *s = &d->imp[dir];
    if (!g.imp.delay_ms || !s->q) {
        deliver(d, dir, m);
        return;
    }
    if (s->n == DELAY_SLOTS) {
        rte_pktmbuf_free(m);
        d->stats.impair_drop++;
        return;
    }
    s->q[(s->head + s->n++) % DELAY_SLOTS] = (struct delayed){m, d->now + g.imp.delay_ms};
    d->stats.impair_delay++;
}

static void impair_stage(struct dq *d, int dir, struct rte_mbuf *m)
{
    struct impair_dir *s = &d->imp[dir];
    if (g.imp.reorder > 0 && !s->held && rnd(d) < g.imp.reorder) {
        s->held = m;
        s->held_at = d->now;
        d->stats.impair_reorder++;
        return;
    }
    impair_delay(d, dir, m);
    if (s->held) {
        struct rte_mbuf *h = s->held;
        s->held = NULL;
        impair_delay(d, dir, h);
    }
}

static void impair_in(struct dq *d, int dir, struct rte_mbuf *m)
{
    if (!g.impair_on) {
        deliver(d, dir, m);
        return;
    }
    if (g.imp.drop > 0 && rnd(d) < g.imp.drop) {
        rte_pktmbuf_free(m);
        d->stats.impair_drop++;
        return;
    }
    if (g.imp.duplicate > 0 && rnd(d) < g.imp.duplicate) {
        struct rte_mbuf *c = rte_pktmbuf_copy(m, d->pool, 0, UINT32_MAX);
        if (c) {
            d->stats.impair_dup++;
            impair_stage(d, dir, c);
        }
    }
    impair_stage(d, dir, m);
}

static void impair_timers(struct dq *d)
{
    for (int dir = 0; dir < 2; dir++) {
        struct impair_dir *s = &d->imp[dir];
        if (s->held && d->now - s->held_at >= REORDER_HOLD_MS) {
            struct rte_mbuf *h = s->held;
            s->held = NULL;
            impair_delay(d, dir, h);
        }
        while (s->n && s->q[s->head].due <= d->now) {
            struct rte_mbuf *m = s->q[s->head].m;
            s->head = (s->head + 1) % DELAY_SLOTS;
            s->n--;
            deliver(d, dir, m);
        }
    }
}

/* ---------------------------------------------------------------------- */
/* RX side */

static void stack_rx(struct dq *d, struct rte_mbuf *m)
{
    if (m->nb_segs > 1 && rte_pktmbuf_linearize(m) != 0) {
        d->stats.rx_drop++;
        rte_pktmbuf_free(m);
        return;
    }
    unsigned flags = 0;
    if (g.rx_csum) {
        if ((m->ol_flags & RTE_MBUF_F_RX_IP_CKSUM_MASK) == RTE_MBUF_F_RX_IP_CKSUM_GOOD)
            flags |= MX_TCP_RX_IP_CSUM_GOOD;
        if ((m->ol_flags & RTE_MBUF_F_RX_L4_CKSUM_MASK) == RTE_MBUF_F_RX_L4_CKSUM_GOOD)
            flags |= MX_TCP_RX_L4_CSUM_GOOD;
    }
    mx_tcp_input(d->st, rte_pktmbuf_mtod(m, const uint8_t *), m->data_len, d->now, flags);
    rte_pktmbuf_free(m);
}

/** Queue that owns this frame under software steering; -1 = every queue. */
static int steer_target(const struct rte_mbuf *m, unsigned self)
{
    const uint8_t *p = rte_pktmbuf_mtod(m, const uint8_t *);
    if (m->data_len < 14)
        return (int)self;
    uint16_t type = (uint16_t)(p[12] << 8 | p[13]);
    if (type == RTE_ETHER_TYPE_ARP)
        return -1;
    if (type != RTE_ETHER_TYPE_IPV4 || m->data_len < 14 + 20 + 4)
        return (int)self;
    const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)(p + 14);
    size_t ihl = (size_t)(ip->version_ihl & 0xf) * 4;
    if (ip->next_proto_id != IPPROTO_TCP || m->data_len < 14 + ihl + 4)
        return (int)self;
    uint16_t sport, dport;
    memcpy(&sport, p + 14 + ihl, 2);
    memcpy(&dport, p + 14 + ihl + 2, 2);
    return (int)mx_tcp_rss_queue(ip->src_addr, sport, ip->dst_addr, dport, g.nq);
}

static void rx_frame(struct dq *d, struct rte_mbuf *m)
{
    if (!g.hw_rss && g.nq > 1) {
        int t = steer_target(m, d->q);
        if (t == -1) {
            /* ARP: every stack learns; the mbuf is shared read-only. */
            rte_mbuf_refcnt_update(m, (int16_t)(g.nq - 1));
            for (unsigned i = 0; i < g.nq; i++) {
                if (i == d->q)
                    continue;
                if (rte_ring_mp_enqueue(g.q[i]->steer, m) != 0)
                    rte_pktmbuf_free(m);
            }
        } else if ((unsigned)t != d->q) {
            d->stats.steered++;
            if (rte_ring_mp_enqueue(g.q[t]->steer, m) != 0) {
                d->stats.rx_drop++;
                rte_pktmbuf_free(m);
            }
            return;
        }
    }
    impair_in(d, DIR_RX, m);
}

unsigned mx_dpdk_poll(unsigned q, uint64_t now_ms)
{
    struct dq *d = g.q[q];
    if (!d)
        return 0;
    d->now = now_ms;
    struct rte_mbuf *pkts[BURST];
    uint16_t n = rte_eth_rx_burst(g.port, (uint16_t)q, pkts, BURST);
    d->stats.rx += n;
    for (uint16_t i = 0; i < n; i++)
        rx_frame(d, pkts[i]);
    if (d->steer) {
        unsigned k = rte_ring_sc_dequeue_burst(d->steer, (void **)pkts, BURST, NULL);
        for (unsigned i = 0; i < k; i++)
            impair_in(d, DIR_RX, pkts[i]);
        n = (uint16_t)(n + k);
    }
    if (g.impair_on)
        impair_timers(d);
    mx_tcp_poll(d->st, now_ms);
    tx_flush(d);
    return n;
}

/* ---------------------------------------------------------------------- */
/* Setup */

static bool port_ok(void *arg, uint32_t laddr, uint16_t lport, uint32_t raddr, uint16_t rport)
{
    unsigned q = (unsigned)(uintptr_t)arg;
    return mx_tcp_rss_queue(raddr, rport, laddr, lport, g.nq) == q;
}

int mx_dpdk_init(const struct mx_dpdk_params *p)
{
    if (g.up)
        return -EALREADY;
    if (!p->nb_queues || p->nb_queues > MAX_QUEUES)
        return -EINVAL;
    if (!rte_eth_dev_is_valid_port(p->port_id)) {
        fprintf(stderr, "dpdk: port %u does not exist (no --vdev / PCI device?)\n", p->port_id);
        return -ENODEV;
    }
    memset(&g, 0, sizeof g);
    g.port = p->port_id;
    g.nq = p->nb_queues;
    g.imp = p->impair;
    g.impair_on = g.imp.drop > 0 || g.imp.reorder > 0 || g.imp.duplicate > 0 || g.imp.delay_ms;

    struct rte_eth_dev_info info;
    int rc = rte_eth_dev_info_get(g.port, &info);
    if (rc)
        return rc;
    if (info.max_rx_queues < g.nq || info.max_tx_queues < g.nq) {
        fprintf(stderr, "dpdk: port %u has %u/%u queues, %u needed\n", g.port,
                info.max_rx_queues, info.max_tx_queues, g.nq);
        return -EINVAL;
    }
    struct rte_eth_conf conf;
    memset(&conf, 0, sizeof conf);
    static uint8_t key[256];
    if (g.nq > 1 && (info.flow_type_rss_offloads & RTE_ETH_RSS_NONFRAG_IPV4_TCP)) {
        uint8_t klen = info.hash_key_size ? info.hash_key_size : 40;
        for (unsigned i = 0; i < klen; i++)
            key[i] = mx_tcp_rss_key[i % 2];
        conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_key = key;
        conf.rx_adv_conf.rss_conf.rss_key_len = klen;
        conf.rx_adv_conf.rss_conf.rss_hf = RTE_ETH_RSS_NONFRAG_IPV4_TCP;
        g.hw_rss = true;
    }
    const uint64_t txc = RTE_ETH_TX_OFFLOAD_IPV4_CKSUM | RTE_ETH_TX_OFFLOAD_TCP_CKSUM;
    const uint64_t rxc = RTE_ETH_RX_OFFLOAD_IPV4_CKSUM | RTE_ETH_RX_OFFLOAD_TCP_CKSUM;
    if ((info.tx_offload_capa & txc) == txc) {
        conf.txmode.offloads |= txc;
        g.tx_csum = true;
    }
    if ((info.rx_offload_capa & rxc) == rxc) {
        conf.rxmode.offloads |= rxc;
        g.rx_csum = true;
    }
    rc = rte_eth_dev_configure(g.port, (uint16_t)g.nq, (uint16_t)g.nq, &conf);
    if (rc) {
        fprintf(stderr, "dpdk: configure port %u: %s\n", g.port, rte_strerror(-rc));
        return rc;
    }
    uint16_t nrx = RX_DESC, ntx = TX_DESC;
    rte_eth_dev_adjust_nb_rx_tx_desc(g.port, &nrx, &ntx);
    int sock = rte_eth_dev_socket_id(g.port);
    if (sock < 0)
        sock = 0;
    struct rte_ether_addr mac;
    rte_eth_macaddr_get(g.port, &mac);
    uint16_t mtu = 1500;
    rte_eth_dev_get_mtu(g.port, &mtu);

    for (unsigned q = 0; q < g.nq; q++) {
        /* Pools per NUMA socket of the queue's port (one port for now). */
        if (!g.pools[sock]) {
            char name[32];
            snprintf(name, sizeof name, "mx_mbuf_s%d", sock);
            g.pools[sock] = rte_pktmbuf_pool_create(name, POOL_PER_QUEUE * g.nq + 2 * DELAY_SLOTS,
                                                    256, 0, RTE_MBUF_DEFAULT_BUF_SIZE, sock);
            if (!g.pools[sock]) {
                fprintf(stderr, "dpdk: mbuf pool: %s\n", rte_strerror(rte_errno));
                mx_dpdk_fini();
                return -ENOMEM;
            }
        }
        struct dq *d = rte_zmalloc_socket("mx_dq", sizeof *d, RTE_CACHE_LINE_SIZE, sock);
        if (!d) {
            mx_dpdk_fini();
            return -ENOMEM;
        }
        g.q[q] = d;
        d->q = q;
        d->pool = g.pools[sock];
        d->rng = (g.imp.seed ? g.imp.seed : 1) * 0x9e3779b97f4a7c15ULL + q + 1;
        if (g.imp.delay_ms) {
            for (int dir = 0; dir < 2; dir++) {
                d->imp[dir].q = rte_zmalloc_socket("mx_delay", sizeof(struct delayed) * DELAY_SLOTS,
                                                   0, sock);
                if (!d->imp[dir].q) {
                    mx_dpdk_fini();
                    return -ENOMEM;
                }
            }
        }
        if (!g.hw_rss && g.nq > 1) {
            char name[32];
            snprintf(name, sizeof name, "mx_steer%u", q);
            d->steer = rte_ring_create(name, STEER_RING, sock, RING_F_SC_DEQ);
            if (!d->steer) {
                mx_dpdk_fini();
                return -ENOMEM;
            }
        }
        rc = rte_eth_rx_queue_setup(g.port, (uint16_t)q, nrx, (unsigned)sock, NULL, d->pool);
        if (!rc)
            rc = rte_eth_tx_queue_setup(g.port, (uint16_t)q, ntx, (unsigned)sock, NULL);
        if (rc) {
            fprintf(stderr, "dpdk: queue %u setup: %s\n", q, rte_strerror(-rc));
            mx_dpdk_fini();
            return rc;
        }
        struct mx_tcp_config cfg = p->tcp;
        cfg.addr = p->addr;
        cfg.gateway = p->gateway;
        cfg.prefix_len = p->prefix_len;
        memcpy(cfg.mac, mac.addr_bytes, 6);
        cfg.mtu = mtu;
        cfg.stack_id = q;
        cfg.tx_csum_offload = g.tx_csum;
        cfg.port_ok = port_ok;
        cfg.port_ok_arg = (void *)(uintptr_t)q;
        struct mx_tcp_tx tx = {.alloc = tx_alloc, .send = tx_send, .drop = tx_drop, .arg = d};
        rc = mx_tcp_stack_create(&cfg, &tx, &d->st);
        if (rc) {
            mx_dpdk_fini();
            return rc;
        }
    }
    rc = rte_eth_dev_start(g.port);
    if (rc) {
        fprintf(stderr, "dpdk: start port %u: %s\n", g.port, rte_strerror(-rc));
        mx_dpdk_fini();
        return rc;
    }
    g.up = true;
    /* Tell the neighbours where we are (gratuitous ARP). */
    mx_tcp_announce(g.q[0]->st);
    tx_flush(g.q[0]);
    return 0;
}

struct mx_tcp_stack *mx_dpdk_stack(unsigned q)
{
    return q < g.nq && g.q[q] ? g.q[q]->st : NULL;
}

void mx_dpdk_set_worker(unsigned q, struct mx_worker *w)
{
    /* The stack copied its config at creation; streams read it from there. */
    if (q < g.nq && g.q[q])
        mx_tcp_stack_set_worker(g.q[q]->st, w);
}

void mx_dpdk_queue_stats(unsigned q, struct mx_dpdk_queue_stats *out)
{
    if (q < g.nq && g.q[q])
        *out = g.q[q]->stats;
    else
        memset(out, 0, sizeof *out);
}

int mx_dpdk_port_rx_missed(uint64_t *out)
{
    if (!g.up)
        return -ENODEV;
    struct rte_eth_stats es;
    int rc = rte_eth_stats_get(g.port, &es);
    if (rc)
        return rc;
    *out = es.imissed;
    return 0;
}

void mx_dpdk_fini(void)
{
    if (g.up) {
        rte_eth_dev_stop(g.port);
        g.up = false;
    }
    for (unsigned q = 0; q < MAX_QUEUES; q++) {
        struct dq *d = g.q[q];
        if (!d)
            continue;
        for (unsigned i = 0; i < d->ntx; i++)
            rte_pktmbuf_free(d->txb[i]);
        for (int dir = 0; dir < 2; dir++) {
            struct impair_dir *s = &d->imp[dir];
            if (s->held)
                rte_pktmbuf_free(s->held);
            for (; s->n; s->n--, s->head = (s->head + 1) % DELAY_SLOTS)
                rte_pktmbuf_free(s->q[s->head].m);
            rte_free(s->q);
        }
        if (d->steer) {
            void *m;
            while (rte_ring_dequeue(d->steer, &m) == 0)
                rte_pktmbuf_free(m);
            rte_ring_free(d->steer);
        }
        if (d->st) {
            /* the totals at exit, for the log: what the console showed, in detail */
            const struct mx_tcp_stats *t = mx_tcp_stack_stats(d->st);
            fprintf(stderr,
                    "mxgate[dataplane]: queue %u: rx=%llu tx=%llu rx_drop=%llu tx_drop=%llu "
                    "nombuf=%llu impair_drop=%llu impair_dup=%llu impair_reorder=%llu "
                    "tcp_retrans=%llu tcp_rto=%llu tcp_fast_retrans=%llu tcp_dupack=%llu "
                    "tcp_ooo=%llu syn_cookies=%llu accepts=%llu connects=%llu aborts=%llu\n",
                    q, (unsigned long long)d->stats.rx, (unsigned long long)d->stats.tx,
                    (unsigned long long)d->stats.rx_drop, (unsigned long long)d->stats.tx_drop,
                    (unsigned long long)d->stats.nombuf, (unsigned long long)d->stats.impair_drop,
                    (unsigned long long)d->stats.impair_dup,
                    (unsigned long long)d->stats.impair_reorder,
                    (unsigned long long)t->tcp_retrans, (unsigned long long)t->tcp_rto,
                    (unsigned long long)t->tcp_fast_retrans, (unsigned long long)t->tcp_dupack,
                    (unsigned long long)t->tcp_ooo, (unsigned long long)t->tcp_syn_cookie_tx,
                    (unsigned long long)t->tcp_accepts, (unsigned long long)t->tcp_connects,
                    (unsigned long long)t->tcp_aborts);
        }
        mx_tcp_stack_destroy(d->st);
        rte_free(d);
        g.q[q] = NULL;
    }
    if (g.nq)
        rte_eth_dev_close(g.port);
    for (unsigned i = 0; i < RTE_MAX_NUMA_NODES; i++) {
        rte_mempool_free(g.pools[i]);
        g.pools[i] = NULL;
    }
    g.nq = 0;
}
