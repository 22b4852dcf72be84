/*
 * pktbuild.h - builds Ethernet/IPv4/TCP frames for the tcpstack tests and the
 * tcp_segment fuzz target, and a capture "NIC" (struct mx_tcp_tx) that keeps
 * what the stack sends in a bounded queue with the time it left.
 */
#ifndef MX_TEST_PKTBUILD_H
#define MX_TEST_PKTBUILD_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <rte_byteorder.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_tcp.h>

#include "tcpstack/tcpstack.h"

#define PB_US_IP (((uint32_t)192 << 24) | (2u << 8) | 2u) /* 192.0.2.2 */
#define PB_PEER_IP (((uint32_t)192 << 24) | (2u << 8) | 1u) /* 192.0.2.1 */
#define PB_MAXQ 256
#define PB_FRAME 2048

static const uint8_t pb_us_mac[6] = {0x02, 0, 0, 0, 0, 0x02};
static const uint8_t pb_peer_mac[6] = {0x02, 0, 0, 0, 0, 0x01};

struct pb_frame {
    uint8_t data[PB_FRAME];
    size_t len;
    uint64_t t;
    unsigned offload;
};

/** Capture of the stack's output. */
struct pb_cap {
    struct pb_frame *q[PB_MAXQ];
    unsigned head, n;
    uint64_t *now;
    uint64_t dropped;
};

static inline uint8_t *pb_alloc(void *arg, size_t len, void **h)
{
    (void)arg;
    if (len > PB_FRAME)
        return NULL;
    struct pb_frame *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    *h = f;
    return f->data;
}

static inline void pb_send(void *arg, void *h, size_t len, unsigned offload)
{
    struct pb_cap *cap = arg;
    struct pb_frame *f = h;
    f->len = len;
    f->offload = offload;
    f->t = cap->now ? *cap->now : 0;
    if (cap->n == PB_MAXQ) {
        cap->dropped++;
        free(f);
        return;
    }
    cap->q[(cap->head + cap->n++) % PB_MAXQ] = f;
}

static inline void pb_drop(void *arg, void *h)
{
    (void)arg;
    free(h);
}

/** Oldest captured frame, or NULL; the caller frees it. */
static inline struct pb_frame *pb_pop(struct pb_cap *cap)
{
    if (!cap->n)
        return NULL;
    struct pb_frame *f = cap->q[cap->head];
    cap->head = (cap->head + 1) % PB_MAXQ;
    cap->n--;
    return f;
}

static inline void pb_clear(struct pb_cap *cap)
{
    struct pb_frame *f;
    while ((f = pb_pop(cap)))
        free(f);
}

static inline struct mx_tcp_tx pb_tx(struct pb_cap *cap)
{
    struct mx_tcp_tx tx = {.alloc = pb_alloc, .send = pb_send, .drop = pb_drop, .arg = cap};
    return tx;
}

/**
 * Build peer -> us Ethernet/IPv4/TCP frame into out (>= 14+20+60+len bytes).
 * @return frame length
 */
static inline size_t pb_tcp_frame(uint8_t *out, uint16_t sport, uint16_t dport, uint32_t seq,
                                  uint32_t ack, uint8_t flags, uint16_t win, const uint8_t *opt,
                                  size_t optlen, const uint8_t *data, size_t len)
{
    struct rte_ether_hdr *eh = (struct rte_ether_hdr *)out;
    memcpy(&eh->dst_addr, pb_us_mac, 6);
    memcpy(&eh->src_addr, pb_peer_mac, 6);
    eh->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
    struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(out + 14);
    size_t tl = 20 + optlen;
    memset(ip, 0, 20);
    ip->version_ihl = RTE_IPV4_VHL_DEF;
    ip->total_length = rte_cpu_to_be_16((uint16_t)(20 + tl + len));
    ip->time_to_live = 64;
    ip->next_proto_id = IPPROTO_TCP;
    ip->src_addr = rte_cpu_to_be_32(PB_PEER_IP);
    ip->dst_addr = rte_cpu_to_be_32(PB_US_IP);
    ip->hdr_checksum = rte_ipv4_cksum(ip);
    struct rte_tcp_hdr *th = (struct rte_tcp_hdr *)(out + 34);
    th->src_port = rte_cpu_to_be_16(sport);
    th->dst_port = rte_cpu_to_be_16(dport);
    th->sent_seq = rte_cpu_to_be_32(seq);
    th->recv_ack = rte_cpu_to_be_32(ack);
    th->data_off = (uint8_t)((tl / 4) << 4);
    th->tcp_flags = flags;
    th->rx_win = rte_cpu_to_be_16(win);
    th->cksum = 0;
    th->tcp_urp = 0;
    if (optlen)
        memcpy(out + 54, opt, optlen);
    if (len)
        memcpy(out + 34 + tl, data, len);
    th->cksum = rte_ipv4_udptcp_cksum(ip, th);
    return 34 + tl + len;
}

/** Stack configuration of the tests: 192.0.2.2/24, peer 192.0.2.1 in ARP. */
static inline void pb_config(struct mx_tcp_config *c)
{
    mx_tcp_config_default(c);
    c->addr = rte_cpu_to_be_32(PB_US_IP);
    c->prefix_len = 24;
    memcpy(c->mac, pb_us_mac, 6);
    memset(c->secret, 0x42, sizeof c->secret);
    c->rcvbuf = 65536 * 2;
    c->sndbuf = 65536;
    c->max_conns = 64;
    c->syn_backlog = 16;
    c->max_timewait = 8;
}

#endif
