/*
 * fuzz_tcp_segment.c - raw IPv4+TCP bytes into a tcpstack that has a
 * listener and one established connection (plus its greeting in flight).
 *
 * Input: records of [flags:1][len:2 big endian][len bytes of IPv4 packet].
 * flags bit 0: fix the IP addresses and both checksums, so the bytes reach
 *              the TCP parser; bit 1: also aim the segment at the open
 *              connection (ports; seq/ack taken relative to its ISNs);
 *              bit 2: advance time 300 ms first; bit 3: the app writes 3000
 *              bytes; bit 4: the app closes; bit 5: toggles pause.
 * The app echoes what it reads, so callbacks re-enter the stack.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/tcpstack/pktbuild.h"

struct fz {
    struct mx_stream *s;
    bool paused;
};

static void fz_data(struct mx_stream *s, void *ctx, const uint8_t *buf, size_t len)
{
    (void)ctx;
    mx_stream_write(s, buf, len > 512 ? 512 : len);
    if (len && buf[0] == 'Q')
        mx_stream_close(s);
}
static void fz_closed(struct mx_stream *s, void *ctx, int res)
{
    (void)s;
    (void)res;
    struct fz *f = ctx;
    f->s = NULL;
}
static const struct mx_stream_cb fz_cb = {.data = fz_data, .closed = fz_closed};
static void fz_accept(struct mx_stream *s, void *arg)
{
    struct fz *f = arg;
    if (f->s) {
        mx_stream_bind(s, &fz_cb, NULL);
        mx_stream_close(s);
        return;
    }
    f->s = s;
    mx_stream_bind(s, &fz_cb, f);
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct pb_cap cap;
    uint64_t now = 1000;
    struct mx_tcp_config cfg;
    pb_config(&cfg);
    cfg.max_conns = 8;
    cfg.syn_backlog = 2;
    cfg.max_timewait = 2;
    cfg.rcvbuf = 8192;
    cfg.sndbuf = 8192;
    struct mx_tcp_tx tx = pb_tx(&cap);
    cap.now = &now;
    struct mx_tcp_stack *st;
    if (mx_tcp_stack_create(&cfg, &tx, &st) != 0)
        return 0;
    struct fz f = {0};
    mx_tcp_arp_add(st, rte_cpu_to_be_32(PB_PEER_IP), pb_peer_mac);
    mx_tcp_listen(st, 25, fz_accept, &f);

    /* Handshake for the connection the records can aim at. */
    uint8_t frame[70000];
    static const uint8_t synopt[] = {2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7};
    size_t n = pb_tcp_frame(frame, 40000, 25, 1000, 0, 0x02, 65535, synopt, sizeof synopt, NULL, 0);
    mx_tcp_input(st, frame, n, now, 0);
    mx_tcp_poll(st, now);
    uint32_t iss = 0;
    struct pb_frame *out = pb_pop(&cap);
    if (out && out->len >= 54)
        iss = rd32(out->data + 38);
    free(out);
    static const uint8_t tsopt[] = {1, 1, 8, 10, 0, 0, 0, 2, 0, 0, 0, 0};
    n = pb_tcp_frame(frame, 40000, 25, 1001, iss + 1, 0x10, 512, tsopt, sizeof tsopt, NULL, 0);
    now += 10;
    mx_tcp_input(st, frame, n, now, 0);
    if (f.s)
        mx_stream_write(f.s, "220 fuzz\r\n", 10);
    mx_tcp_poll(st, now);
    pb_clear(&cap);

    size_t off = 0;
    while (off + 3 <= size) {
        uint8_t fl = data[off];
        size_t len = (size_t)data[off + 1] << 8 | data[off + 2];
        off += 3;
        if (len > size - off)
            len = size - off;
        if (len > sizeof frame - 14)
            len = sizeof frame - 14;
        memcpy(frame, pb_us_mac, 6);
        memcpy(frame + 6, pb_peer_mac, 6);
        frame[12] = 0x08;
        frame[13] = 0x00;
        memcpy(frame + 14, data + off, len);
        off += len;
        if (fl & 4)
            now += 300;
        if ((fl & 8) && f.s) {
            static uint8_t big[3000];
            mx_stream_write(f.s, big, sizeof big);
        }
        if ((fl & 32) && f.s) {
            f.paused = !f.paused;
            mx_stream_pause(f.s, f.paused);
        }
        if ((fl & 16) && f.s)
            mx_stream_close(f.s);
        if ((fl & 1) && len >= 40) {
            struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(frame + 14);
            size_t ihl = (size_t)(ip->version_ihl & 0xf) * 4;
            ip->version_ihl = (uint8_t)(0x40 | (ip->version_ihl & 0xf));
            if (ihl < 20) {
                ip->version_ihl = 0x45;
                ihl = 20;
            }
            ip->total_length = rte_cpu_to_be_16((uint16_t)len);
            ip->src_addr = rte_cpu_to_be_32(PB_PEER_IP);
            ip->dst_addr = rte_cpu_to_be_32(PB_US_IP);
            ip->fragment_offset = 0;
            if (len >= ihl + 20) {
                ip->next_proto_id = IPPROTO_TCP;
                struct rte_tcp_hdr *th = (struct rte_tcp_hdr *)(frame + 14 + ihl);
                if (fl & 2) {
                    th->src_port = rte_cpu_to_be_16(40000);
                    th->dst_port = rte_cpu_to_be_16(25);
                    th->sent_seq = rte_cpu_to_be_32(1001 + rte_be_to_cpu_32(th->sent_seq) % 70000);
                    th->recv_ack = rte_cpu_to_be_32(iss + rte_be_to_cpu_32(th->recv_ack) % 70000);
                }
                ip->hdr_checksum = 0;
                ip->hdr_checksum = rte_ipv4_cksum(ip);
                th->cksum = 0;
                th->cksum = rte_ipv4_udptcp_cksum(ip, th);
            } else {
                ip->hdr_checksum = 0;
                ip->hdr_checksum = rte_ipv4_cksum(ip);
            }
        }
        mx_tcp_input(st, frame, len + 14, now, 0);
        mx_tcp_poll(st, now);
        pb_clear(&cap);
    }
    /* Let every timer run out: retransmissions, TIME_WAIT, keepalive. */
    for (int i = 0; i < 40; i++) {
        now += 5000;
        mx_tcp_poll(st, now);
        pb_clear(&cap);
    }
    mx_tcp_stack_destroy(st);
    pb_clear(&cap);
    return 0;
}
