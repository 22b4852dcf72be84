/*
 * net.c - the layers under TCP: Ethernet demultiplexing, the ARP cache
 * (requests, replies, gratuitous ARP, timeouts, one parked frame per
 * unresolved neighbour), IPv4 validation and output (DF set, TTL 64) and
 * ICMP (echo replies; fragmentation-needed feeds PMTU discovery).
 *
 * IPv4 fragments are counted (ip_frag_drop) and dropped, not reassembled:
 * SMTP peers use PMTU discovery with DF and a TCP MSS, so fragments are
 * either an attack or a misconfiguration.
 */
#include <errno.h>
#include <string.h>

#include <rte_arp.h>
#include <rte_byteorder.h>
#include <rte_ether.h>
#include <rte_icmp.h>
#include <rte_tcp.h>
#include <rte_ip.h>

#include "tcpstack/tcp_internal.h"

#define ETH_HLEN 14
#define IP_HLEN 20
#define ARP_REQ_INTERVAL_MS 1000
#define ARP_MAX_TRIES 3

static const uint8_t bcast_mac[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

/* ---------------------------------------------------------------------- */
/* ARP */

static uint32_t arp_hash(uint32_t ip)
{
    uint32_t h = ip * 0x9e3779b1u;
    return h >> 22; /* 10 bits: ARP_SLOTS */
}

/** Find ip's entry; with create, take a free or the stalest non-permanent slot. */
static struct arp_entry *arp_find(struct mx_tcp_stack *st, uint32_t ip, bool create)
{
    uint32_t h = arp_hash(ip);
    struct arp_entry *victim = NULL;
    for (unsigned i = 0; i < ARP_PROBE; i++) {
        struct arp_entry *e = &st->arp[(h + i) & (ARP_SLOTS - 1)];
        if (e->state != ARP_FREE && e->ip == ip)
            return e;
        if (!create)
            continue;
        if (e->state == ARP_FREE) {
            if (!victim || victim->state != ARP_FREE)
                victim = e;
        } else if (e->state != ARP_PERMANENT && (!victim || (victim->state != ARP_FREE &&
                                                            e->expires < victim->expires))) {
            victim = e;
        }
    }
    if (!victim)
        return NULL;
    if (victim->pending) {
        st->tx.drop(st->tx.arg, victim->pending);
        st->stats.arp_pending_drop++;
    }
    memset(victim, 0, sizeof *victim);
    victim->ip = ip;
    return victim;
}

static void arp_send(struct mx_tcp_stack *st, uint16_t op, const uint8_t *tha, uint32_t tip,
                     const uint8_t *eth_dst)
{
    void *h;
    uint8_t *f = st->tx.alloc(st->tx.arg, ETH_HLEN + sizeof(struct rte_arp_hdr), &h);
    if (!f) {
        st->stats.tx_nobuf++;
        return;
    }
    struct rte_ether_hdr *eh = (struct rte_ether_hdr *)f;
    memcpy(&eh->dst_addr, eth_dst, 6);
    memcpy(&eh->src_addr, st->cfg.mac, 6);
    eh->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_ARP);
    struct rte_arp_hdr *a = (struct rte_arp_hdr *)(f + ETH_HLEN);
    a->arp_hardware = rte_cpu_to_be_16(RTE_ARP_HRD_ETHER);
    a->arp_protocol = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
    a->arp_hlen = 6;
    a->arp_plen = 4;
    a->arp_opcode = rte_cpu_to_be_16(op);
    memcpy(&a->arp_data.arp_sha, st->cfg.mac, 6);
    a->arp_data.arp_sip = st->cfg.addr;
    memcpy(&a->arp_data.arp_tha, tha, 6);
    a->arp_data.arp_tip = tip;
    st->stats.arp_tx++;
    st->tx.send(st->tx.arg, h, ETH_HLEN + sizeof(struct rte_arp_hdr), 0);
}

static void arp_request(struct mx_tcp_stack *st, struct arp_entry *e)
{
    static const uint8_t zero[6];
    e->tries++;
    e->expires = st->now + ARP_REQ_INTERVAL_MS;
    arp_send(st, RTE_ARP_OP_REQUEST, zero, e->ip, bcast_mac);
}

static void arp_resolved(struct mx_tcp_stack *st, struct arp_entry *e, const uint8_t *mac)
{
    memcpy(e->mac, mac, 6);
    if (e->state != ARP_PERMANENT) {
        e->state = ARP_REACHABLE;
        e->expires = st->now + st->cfg.arp_timeout_ms;
    }
    e->tries = 0;
    if (e->pending) {
        void *h = e->pending;
        e->pending = NULL;
        memcpy(e->pending_frame, mac, 6); /* Ethernet destination */
        st->tx.send(st->tx.arg, h, e->pending_len, e->pending_offload);
    }
}

void mx_tcp_announce(struct mx_tcp_stack *st)
{
    static const uint8_t zero[6];
    /* Gratuitous ARP: a request for our own address, so neighbours update. */
    arp_send(st, RTE_ARP_OP_REQUEST, zero, st->cfg.addr, bcast_mac);
}

int mx_tcp_arp_add(struct mx_tcp_stack *st, uint32_t ip, const uint8_t mac[6])
{
    struct arp_entry *e = arp_find(st, ip, true);
    if (!e)
        return -ENOSPC;
    e->state = ARP_PERMANENT;
    arp_resolved(st, e, mac);
    return 0;
}

void net_arp_input(struct mx_tcp_stack *st, const uint8_t *p, size_t len)
{
    if (len < sizeof(struct rte_arp_hdr)) {
        st->stats.rx_bad++;
        return;
    }
    const struct rte_arp_hdr *a = (const struct rte_arp_hdr *)p;
    if (a->arp_hardware != rte_cpu_to_be_16(RTE_ARP_HRD_ETHER) ||
        a->arp_protocol != rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4) || a->arp_hlen != 6 ||
        a->arp_plen != 4) {
        st->stats.rx_bad++;
        return;
    }
    st->stats.arp_rx++;
    uint32_t sip = a->arp_data.arp_sip, tip = a->arp_data.arp_tip;
    const uint8_t *sha = a->arp_data.arp_sha.addr_bytes;
    if (sha[0] & 1) /* multicast sender hardware address: bogus */
        return;
    bool for_us = tip == st->cfg.addr && sip != st->cfg.addr;
    /* RFC 826 merge: refresh an entry we have; create one only if asked. */
    struct arp_entry *e = sip ? arp_find(st, sip, for_us) : NULL;
    if (e && sip != st->cfg.addr)
        arp_resolved(st, e, sha);
    if (for_us && a->arp_opcode == rte_cpu_to_be_16(RTE_ARP_OP_REQUEST))
        arp_send(st, RTE_ARP_OP_REPLY, sha, sip, sha);
}

void net_arp_timers(struct mx_tcp_stack *st)
{
    for (unsigned i = 0; i < ARP_SLOTS; i++) {
        struct arp_entry *e = &st->arp[i];
        if (e->state == ARP_INCOMPLETE && e->expires <= st->now) {
            if (e->tries >= ARP_MAX_TRIES) {
                if (e->pending) {
                    st->tx.drop(st->tx.arg, e->pending);
                    st->stats.arp_pending_drop++;
                }
                memset(e, 0, sizeof *e);
            } else {
                arp_request(st, e);
            }
        } else if (e->state == ARP_REACHABLE && e->expires <= st->now) {
            memset(e, 0, sizeof *e); /* stale: resolve again on next use */
        }
    }
}

/* ---------------------------------------------------------------------- */
/* IPv4 output */

uint8_t *net_ip_alloc(struct mx_tcp_stack *st, size_t l4len, void **handle)
{
    uint8_t *f = st->tx.alloc(st->tx.arg, ETH_HLEN + IP_HLEN + l4len, handle);
    if (!f) {
        st->stats.tx_nobuf++;
        return NULL;
    }
    return f + ETH_HLEN + IP_HLEN;
}

void net_ip_send(struct mx_tcp_stack *st, void *h, uint8_t *l4, size_t l4len, uint32_t daddr,
                 uint8_t proto, bool tcp)
{
    struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(l4 - IP_HLEN);
    struct rte_ether_hdr *eh = (struct rte_ether_hdr *)(l4 - IP_HLEN - ETH_HLEN);
    size_t flen = ETH_HLEN + IP_HLEN + l4len;
    unsigned offload = 0;

    ip->version_ihl = RTE_IPV4_VHL_DEF;
    ip->type_of_service = 0;
    ip->total_length = rte_cpu_to_be_16((uint16_t)(IP_HLEN + l4len));
    ip->packet_id = rte_cpu_to_be_16((uint16_t)st->ip_id++);
    ip->fragment_offset = rte_cpu_to_be_16(RTE_IPV4_HDR_DF_FLAG);
    ip->time_to_live = 64;
    ip->next_proto_id = proto;
    ip->hdr_checksum = 0;
    ip->src_addr = st->cfg.addr;
    ip->dst_addr = daddr;
    if (st->cfg.tx_csum_offload) {
        offload = MX_TCP_TX_OFFLOAD_IP;
        if (tcp) {
            struct rte_tcp_hdr *th = (struct rte_tcp_hdr *)l4;
            th->cksum = rte_ipv4_phdr_cksum(ip, 0);
            offload |= MX_TCP_TX_OFFLOAD_TCP;
        }
    } else {
        ip->hdr_checksum = rte_ipv4_cksum(ip);
        if (tcp) {
            struct rte_tcp_hdr *th = (struct rte_tcp_hdr *)l4;
            th->cksum = 0;
            th->cksum = rte_ipv4_udptcp_cksum(ip, th);
        }
    }
    memcpy(&eh->src_addr, st->cfg.mac, 6);
    eh->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);

    uint32_t nh = daddr;
    if ((daddr ^ st->cfg.addr) & st->netmask) {
        if (!st->cfg.gateway) {
            st->tx.drop(st->tx.arg, h);
            st->stats.arp_pending_drop++;
            return;
        }
        nh = st->cfg.gateway;
    }
    struct arp_entry *e = arp_find(st, nh, true);
    if (!e) {
        st->tx.drop(st->tx.arg, h);
        st->stats.arp_pending_drop++;
        return;
    }
    if (e->state == ARP_PERMANENT || (e->state == ARP_REACHABLE && e->expires > st->now)) {
        memcpy(&eh->dst_addr, e->mac, 6);
        st->tx.send(st->tx.arg, h, flen, offload);
        return;
    }
    /* Unresolved: park this frame (the newest wins) and ask. */
    if (e->pending) {
        st->tx.drop(st->tx.arg, e->pending);
        st->stats.arp_pending_drop++;
    }
    e->pending = h;
    e->pending_frame = (uint8_t *)eh;
    e->pending_len = (uint32_t)flen;
    e->pending_offload = offload;
    if (e->state != ARP_INCOMPLETE) {
        e->state = ARP_INCOMPLETE;
        e->tries = 0;
        arp_request(st, e);
    }
}

/* ---------------------------------------------------------------------- */
/* ICMP and IPv4 input */

static void icmp_input(struct mx_tcp_stack *st, const struct rte_ipv4_hdr *ip, const uint8_t *p,
                       size_t len)
{
    if (len < 8 || rte_raw_cksum(p, len) != 0xffff) {
        st->stats.rx_bad++;
        return;
    }
    uint8_t type = p[0], code = p[1];
    if (type == RTE_IP_ICMP_ECHO_REQUEST && code == 0) {
        void *h;
        uint8_t *out = net_ip_alloc(st, len, &h);
        if (!out)
            return;
        memcpy(out, p, len);
        out[0] = RTE_IP_ICMP_ECHO_REPLY;
        out[2] = out[3] = 0;
        uint16_t ck = (uint16_t)~rte_raw_cksum(out, len);
        memcpy(out + 2, &ck, 2);
        st->stats.icmp_echo++;
        net_ip_send(st, h, out, len, ip->src_addr, IPPROTO_ICMP, false);
        return;
    }
    if (type == 3 /* destination unreachable */ && len >= 8 + IP_HLEN + 8) {
        const uint8_t *inner = p + 8;
        size_t ihl = (size_t)(inner[0] & 0xf) * 4;
        if ((inner[0] >> 4) != 4 || ihl < IP_HLEN || len < 8 + ihl + 8 || inner[9] != IPPROTO_TCP) {
            st->stats.icmp_other++;
            return;
        }
        uint16_t mtu = (uint16_t)(p[6] << 8 | p[7]);
        if (code == 4)
            st->stats.icmp_pmtu++;
        else
            st->stats.icmp_other++;
        tcp_icmp_unreach(st, code, mtu, inner, len - 8);
        return;
    }
    st->stats.icmp_other++;
}

void net_ip_input(struct mx_tcp_stack *st, const uint8_t *p, size_t len, unsigned rx_flags)
{
    if (len < IP_HLEN) {
        st->stats.rx_bad++;
        return;
    }
    const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)p;
    size_t ihl = (size_t)(ip->version_ihl & 0xf) * 4;
    size_t tot = rte_be_to_cpu_16(ip->total_length);
    if ((ip->version_ihl >> 4) != 4 || ihl < IP_HLEN || tot < ihl || tot > len) {
        st->stats.rx_bad++;
        return;
    }
    if (!(rx_flags & MX_TCP_RX_IP_CSUM_GOOD) && rte_raw_cksum(p, ihl) != 0xffff) {
        st->stats.ip_bad_csum++;
        return;
    }
    if (ip->dst_addr != st->cfg.addr) {
        st->stats.rx_not_ours++;
        return;
    }
    if (ip->fragment_offset & rte_cpu_to_be_16(RTE_IPV4_HDR_MF_FLAG | RTE_IPV4_HDR_OFFSET_MASK)) {
        st->stats.ip_frag_drop++;
        return;
    }
    switch (ip->next_proto_id) {
    case IPPROTO_TCP:
        tcp_input(st, p, p + ihl, tot - ihl, rx_flags);
        break;
    case IPPROTO_ICMP:
        icmp_input(st, ip, p + ihl, tot - ihl);
        break;
    default:
        st->stats.rx_other++;
        break;
    }
}

void mx_tcp_input(struct mx_tcp_stack *st, const uint8_t *f, size_t len, uint64_t now_ms,
                  unsigned rx_flags)
{
    if (now_ms > st->now)
        st->now = now_ms;
    st->stats.rx_frames++;
    if (len < ETH_HLEN) {
        st->stats.rx_bad++;
        return;
    }
    const uint8_t *dst = f;
    if (memcmp(dst, st->cfg.mac, 6) != 0 && memcmp(dst, bcast_mac, 6) != 0) {
        st->stats.rx_not_ours++;
        return;
    }
    uint16_t type = (uint16_t)(f[12] << 8 | f[13]);
    if (type == RTE_ETHER_TYPE_IPV4)
        net_ip_input(st, f + ETH_HLEN, len - ETH_HLEN, rx_flags);
    else if (type == RTE_ETHER_TYPE_ARP)
        net_arp_input(st, f + ETH_HLEN, len - ETH_HLEN);
    else
        st->stats.rx_other++;
    tcp_reap(st); /* connections that died in this frame get their slot back */
}
