/*
 * test_tcp_misc.c - the layers under TCP and the helpers: SipHash-2-4 against
 * its published test vector, symmetric RSS queue selection, ARP replies and
 * learning, ICMP echo replies, IPv4 fragments dropped and counted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include <cmocka.h>
#include <rte_arp.h>

#include "tcpstack/tcp_internal.h"
#include "tests/tcpstack/pktbuild.h"

static void test_siphash_vector(void **state)
{
    (void)state;
    uint8_t key[16], msg[15];
    for (int i = 0; i < 16; i++)
        key[i] = (uint8_t)i;
    for (int i = 0; i < 15; i++)
        msg[i] = (uint8_t)i;
    /* SipHash paper, appendix A: 15-byte message */
    assert_int_equal(mx_siphash24(key, msg, 15), 0xa129ca6149be45e5ULL);
}

static void test_rss_symmetric(void **state)
{
    (void)state;
    uint32_t a = rte_cpu_to_be_32(PB_US_IP), b = rte_cpu_to_be_32(PB_PEER_IP);
    unsigned hits[4] = {0};
    for (uint16_t p = 30000; p < 30400; p++) {
        uint16_t sp = rte_cpu_to_be_16(p), dp = rte_cpu_to_be_16(25);
        unsigned q1 = mx_tcp_rss_queue(a, sp, b, dp, 4), q2 = mx_tcp_rss_queue(b, dp, a, sp, 4);
        assert_int_equal(q1, q2);
        hits[q1]++;
    }
    for (int i = 0; i < 4; i++)
        assert_true(hits[i] > 40); /* spreads over every queue */
}

static struct mx_tcp_stack *mk(struct pb_cap *cap, uint64_t *now)
{
    struct mx_tcp_config c;
    pb_config(&c);
    struct mx_tcp_tx tx = pb_tx(cap);
    cap->now = now;
    struct mx_tcp_stack *st;
    assert_int_equal(mx_tcp_stack_create(&c, &tx, &st), 0);
    return st;
}

static void test_arp(void **state)
{
    (void)state;
    struct pb_cap cap = {0};
    uint64_t now = 1000;
    struct mx_tcp_stack *st = mk(&cap, &now);
    mx_tcp_announce(st);
    struct pb_frame *f = pb_pop(&cap);
    assert_non_null(f);
    const struct rte_arp_hdr *a = (const void *)(f->data + 14);
    assert_int_equal(rte_be_to_cpu_16(a->arp_opcode), RTE_ARP_OP_REQUEST);
    assert_int_equal(a->arp_data.arp_tip, rte_cpu_to_be_32(PB_US_IP)); /* gratuitous */
    free(f);
    /* request for us from the peer */
    uint8_t fr[60] = {0};
    memset(fr, 0xff, 6);
    memcpy(fr + 6, pb_peer_mac, 6);
    fr[12] = 0x08;
    fr[13] = 0x06;
    struct rte_arp_hdr *r = (struct rte_arp_hdr *)(fr + 14);
    r->arp_hardware = rte_cpu_to_be_16(RTE_ARP_HRD_ETHER);
    r->arp_protocol = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
    r->arp_hlen = 6;
    r->arp_plen = 4;
    r->arp_opcode = rte_cpu_to_be_16(RTE_ARP_OP_REQUEST);
    memcpy(&r->arp_data.arp_sha, pb_peer_mac, 6);
    r->arp_data.arp_sip = rte_cpu_to_be_32(PB_PEER_IP);
    r->arp_data.arp_tip = rte_cpu_to_be_32(PB_US_IP);
    mx_tcp_input(st, fr, sizeof fr, now, 0);
    f = pb_pop(&cap);
    assert_non_null(f);
    a = (const void *)(f->data + 14);
    assert_int_equal(rte_be_to_cpu_16(a->arp_opcode), RTE_ARP_OP_REPLY);
    assert_memory_equal(f->data, pb_peer_mac, 6);
    assert_memory_equal(a->arp_data.arp_sha.addr_bytes, pb_us_mac, 6);
    assert_int_equal(a->arp_data.arp_sip, rte_cpu_to_be_32(PB_US_IP));
    free(f);
    /* the peer was learnt: a TCP RST to it leaves without an ARP request */
    uint8_t tf[128];
    size_t n = pb_tcp_frame(tf, 40000, 99, 1, 0, 0x02, 1000, NULL, 0, NULL, 0);
    mx_tcp_input(st, tf, n, now, 0);
    f = pb_pop(&cap);
    assert_non_null(f);
    assert_int_equal(f->data[12], 0x08);
    assert_int_equal(f->data[13], 0x00);
    assert_int_equal(f->data[47] & 0x04, 0x04); /* RST */
    free(f);
    mx_tcp_stack_destroy(st);
    pb_clear(&cap);
}

static void test_icmp_echo_and_frag(void **state)
{
    (void)state;
    struct pb_cap cap = {0};
    uint64_t now = 1000;
    struct mx_tcp_stack *st = mk(&cap, &now);
    mx_tcp_arp_add(st, rte_cpu_to_be_32(PB_PEER_IP), pb_peer_mac);
    uint8_t fr[14 + 20 + 8 + 16];
    uint8_t tmp[128];
    pb_tcp_frame(tmp, 1, 2, 0, 0, 0, 0, NULL, 0, NULL, 0); /* for the Ethernet+IP header */
    memcpy(fr, tmp, 34);
    struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(fr + 14);
    ip->next_proto_id = IPPROTO_ICMP;
    ip->total_length = rte_cpu_to_be_16(20 + 8 + 16);
    ip->hdr_checksum = 0;
    ip->hdr_checksum = rte_ipv4_cksum(ip);
    uint8_t *ic = fr + 34;
    memset(ic, 0, 24);
    ic[0] = 8;
    ic[5] = 7;
    memcpy(ic + 8, "0123456789abcdef", 16);
    uint16_t ck = (uint16_t)~rte_raw_cksum(ic, 24);
    memcpy(ic + 2, &ck, 2);
    mx_tcp_input(st, fr, sizeof fr, now, 0);
    struct pb_frame *f = pb_pop(&cap);
    assert_non_null(f);
    assert_int_equal(f->len, sizeof fr);
    assert_int_equal(f->data[34], 0); /* echo reply */
    assert_memory_equal(f->data + 42, "0123456789abcdef", 16);
    assert_int_equal(rte_raw_cksum(f->data + 34, 24), 0xffff);
    free(f);
    assert_int_equal(mx_tcp_stack_stats(st)->icmp_echo, 1);
    /* the same packet as a first fragment (MF) is counted and dropped */
    ip->fragment_offset = rte_cpu_to_be_16(RTE_IPV4_HDR_MF_FLAG);
    ip->hdr_checksum = 0;
    ip->hdr_checksum = rte_ipv4_cksum(ip);
    mx_tcp_input(st, fr, sizeof fr, now, 0);
    assert_null(pb_pop(&cap));
    assert_int_equal(mx_tcp_stack_stats(st)->ip_frag_drop, 1);
    /* a bad IP checksum is counted and dropped */
    ip->fragment_offset = 0;
    ip->hdr_checksum ^= 0x1234;
    mx_tcp_input(st, fr, sizeof fr, now, 0);
    assert_null(pb_pop(&cap));
    assert_int_equal(mx_tcp_stack_stats(st)->ip_bad_csum, 1);
    mx_tcp_stack_destroy(st);
}

static void test_arp_resolve_parks_frame(void **state)
{
    (void)state;
    struct pb_cap cap = {0};
    uint64_t now = 1000;
    struct mx_tcp_stack *st = mk(&cap, &now);
    /* SYN from an unknown peer: the SYN-ACK waits for ARP */
    uint8_t tf[128];
    size_t n = pb_tcp_frame(tf, 40000, 99, 1, 0, 0x02, 1000, NULL, 0, NULL, 0);
    memset(tf + 6, 0x0a, 6); /* no learning from the Ethernet source */
    mx_tcp_input(st, tf, n, now, 0);
    struct pb_frame *f = pb_pop(&cap);
    assert_non_null(f);
    assert_int_equal(f->data[13], 0x06); /* ARP request */
    free(f);
    assert_null(pb_pop(&cap));
    uint8_t fr[60] = {0};
    memcpy(fr, pb_us_mac, 6);
    fr[12] = 0x08;
    fr[13] = 0x06;
    struct rte_arp_hdr *r = (struct rte_arp_hdr *)(fr + 14);
    r->arp_hardware = rte_cpu_to_be_16(RTE_ARP_HRD_ETHER);
    r->arp_protocol = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
    r->arp_hlen = 6;
    r->arp_plen = 4;
    r->arp_opcode = rte_cpu_to_be_16(RTE_ARP_OP_REPLY);
    memcpy(&r->arp_data.arp_sha, pb_peer_mac, 6);
    r->arp_data.arp_sip = rte_cpu_to_be_32(PB_PEER_IP);
    r->arp_data.arp_tip = rte_cpu_to_be_32(PB_US_IP);
    mx_tcp_input(st, fr, sizeof fr, now, 0);
    f = pb_pop(&cap);
    assert_non_null(f); /* the parked RST leaves with the learnt MAC */
    assert_memory_equal(f->data, pb_peer_mac, 6);
    assert_int_equal(f->data[47] & 0x04, 0x04);
    free(f);
    mx_tcp_stack_destroy(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_siphash_vector),
        cmocka_unit_test(test_rss_symmetric),
        cmocka_unit_test(test_arp),
        cmocka_unit_test(test_icmp_echo_and_frag),
        cmocka_unit_test(test_arp_resolve_parks_frame),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
