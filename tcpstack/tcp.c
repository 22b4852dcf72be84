/*
 * tcp.c - the TCP state machine (RFC 9293) of one core's stack.
 *
 * Segments come in through tcp_input() (from net.c) and go out through
 * tcp_emit(), which builds them straight into a TX frame. Each connection
 * keeps two byte rings indexed by sequence number (seq & (size-1)): the send
 * ring holds what the application wrote until it is acknowledged (so
 * retransmissions are rebuilt from it) and the receive ring holds only what
 * cannot be handed to the application in place - out-of-order data and data
 * that arrives while the application has paused the stream. In-order data is
 * passed to the data() callback straight from the frame (zero copy).
 *
 * What the code follows: RFC 9293 (state machine), RFC 6298 (RTO), RFC 5681
 * and 6582 (slow start, congestion avoidance, fast retransmit, NewReno),
 * RFC 7323 (window scale, timestamps, PAWS), RFC 2018 (SACK blocks in our
 * ACKs, and a scoreboard of the peer's: RFC 6675 duplicate ACKs, holes
 * resent in recovery, SACKed data skipped after an RTO),
 * RFC 5961 (RST/SYN/ACK injection defences, challenge ACKs), RFC 6528 (ISNs),
 * RFC 4987 (SYN cookies, only when the SYN backlog is full), RFC 1122
 * (delayed ACK, keepalive, zero-window probes).
 */
/* rte_ipv4_udptcp_cksum_verify() is still marked experimental in 22.11. */
#define ALLOW_EXPERIMENTAL_API 1
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <rte_byteorder.h>
#include <rte_ip.h>
#include <rte_tcp.h>
#include <rte_thash.h>

#include "tcpstack/tcp_internal.h"

#define SEQ_LT(a, b) ((int32_t)((a) - (b)) < 0)
#define SEQ_LEQ(a, b) ((int32_t)((a) - (b)) <= 0)
#define SEQ_GT(a, b) ((int32_t)((a) - (b)) > 0)
#define SEQ_GEQ(a, b) ((int32_t)((a) - (b)) >= 0)

#define TCP_HLEN 20
#define DEFAULT_MSS 536
#define MIN_PMTU 552
#define TS_24_DAYS_MS (24ULL * 86400 * 1000)
#define PERSIST_MAX_MS 60000

static const struct mx_stream_ops tcp_stream_ops;
static void tcp_output(struct tcp_conn *c);
static void conn_timer_update(struct tcp_conn *c);
static void deliver_buffered(struct tcp_conn *c);

static inline uint32_t umin32(uint32_t a, uint32_t b)
{
    return a < b ? a : b;
}
static inline uint32_t umax32(uint32_t a, uint32_t b)
{
    return a > b ? a : b;
}

/* ---------------------------------------------------------------------- */
/* Hash table of connections, keyed with a per-stack secret so peers cannot
 * aim their 4-tuples at one chain. */

static uint32_t tuple_hash(const struct mx_tcp_stack *st, uint32_t laddr, uint16_t lport,
                           uint32_t raddr, uint16_t rport)
{
    uint64_t k0, k1;
    memcpy(&k0, st->secret, 8);
    memcpy(&k1, st->secret + 8, 8);
    uint64_t x = ((uint64_t)raddr << 32 | laddr) ^ k0;
    uint64_t y = ((uint64_t)rport << 16 | lport) ^ k1;
    x *= 0x9e3779b97f4a7c15ULL;
    x ^= x >> 29;
    x += y * 0xc2b2ae3d27d4eb4fULL;
    x ^= x >> 32;
    return (uint32_t)x & st->hmask;
}

static struct tcp_conn *conn_lookup(struct mx_tcp_stack *st, uint32_t laddr, uint16_t lport,
                                    uint32_t raddr, uint16_t rport)
{
    struct tcp_conn *c = st->htab[tuple_hash(st, laddr, lport, raddr, rport)];
    for (; c; c = c->hnext)
        if (c->raddr == raddr && c->rport == rport && c->lport == lport && c->laddr == laddr)
            return c;
    return NULL;
}

static void hash_insert(struct tcp_conn *c)
{
    struct mx_tcp_stack *st = c->st;
    uint32_t h = tuple_hash(st, c->laddr, c->lport, c->raddr, c->rport);
    c->hnext = st->htab[h];
    st->htab[h] = c;
}

static void hash_remove(struct tcp_conn *c)
{
    struct mx_tcp_stack *st = c->st;
    struct tcp_conn **pp = &st->htab[tuple_hash(st, c->laddr, c->lport, c->raddr, c->rport)];
    for (; *pp; pp = &(*pp)->hnext) {
        if (*pp == c) {
            *pp = c->hnext;
            c->hnext = NULL;
            return;
        }
    }
}

/* ---------------------------------------------------------------------- */
/* TIME_WAIT list (oldest first) */

static void tw_unlink(struct tcp_conn *c)
{
    if (!c->lprev)
        return;
    c->lprev->lnext = c->lnext;
    c->lnext->lprev = c->lprev;
    c->lnext = c->lprev = NULL;
    c->st->stats.timewait--;
}

static void tw_append(struct tcp_conn *c)
{
    struct tcp_conn *h = &c->st->tw_head;
    c->lnext = h;
    c->lprev = h->lprev;
    h->lprev->lnext = c;
    h->lprev = c;
    c->st->stats.timewait++;
}

/* ---------------------------------------------------------------------- */
/* Connection life cycle */

static void buffers_free(struct tcp_conn *c)
{
    struct mx_tcp_stack *st = c->st;
    if (c->rbuf || c->sbuf)
        st->stats.mem_used -= (uint64_t)c->rbuf_sz + c->sbuf_sz;
    free(c->rbuf);
    free(c->sbuf);
    c->rbuf = c->sbuf = NULL;
}

static int buffers_alloc(struct tcp_conn *c)
{
    struct mx_tcp_stack *st = c->st;
    uint64_t need = (uint64_t)st->cfg.rcvbuf + st->cfg.sndbuf;
    if (st->stats.mem_used + need > st->cfg.mem_limit) {
        st->stats.tcp_mem_drop++;
        return -ENOBUFS;
    }
    c->rbuf = malloc(st->cfg.rcvbuf);
    c->sbuf = malloc(st->cfg.sndbuf);
    if (!c->rbuf || !c->sbuf) {
        free(c->rbuf);
        free(c->sbuf);
        c->rbuf = c->sbuf = NULL;
        st->stats.tcp_mem_drop++;
        return -ENOMEM;
    }
    c->rbuf_sz = st->cfg.rcvbuf;
    c->sbuf_sz = st->cfg.sndbuf;
    st->stats.mem_used += need;
    return 0;
}

/** Take the connection out of the tables now; its slot is reused at reap. */
static void conn_kill(struct tcp_conn *c)
{
    if (c->dead)
        return;
    struct mx_tcp_stack *st = c->st;
    c->dead = true;
    if (c->state == TCP_SYN_RCVD)
        st->stats.syn_rcvd--;
    if (c->state == TCP_TIME_WAIT)
        tw_unlink(c);
    c->state = TCP_CLOSED;
    hash_remove(c);
    wheel_del(&st->wheel, &c->tn);
    buffers_free(c);
    c->lnext = st->dead_head;
    st->dead_head = c;
}

static void reap(struct mx_tcp_stack *st)
{
    while (st->dead_head) {
        struct tcp_conn *c = st->dead_head;
        st->dead_head = c->lnext;
        if (c->in_flush) {
            /* Still on the flush list; freed after the flush skips it. */
            c->lnext = NULL;
            continue;
        }
        memset(c, 0, sizeof *c);
        c->lnext = st->free_list;
        st->free_list = c;
        st->stats.conns--;
    }
}

static struct tcp_conn *conn_alloc(struct mx_tcp_stack *st)
{
    if (!st->free_list && st->tw_head.lnext != &st->tw_head && !st->tw_head.lnext->in_flush) {
        /* Out of slots: the oldest TIME_WAIT gives its slot up at once (it
         * has no callbacks and sits on no list but the TIME_WAIT one). */
        struct tcp_conn *o = st->tw_head.lnext;
        tw_unlink(o);
        hash_remove(o);
        wheel_del(&st->wheel, &o->tn);
        buffers_free(o);
        st->stats.tcp_timewait_recycled++;
        st->stats.conns--;
        o->lnext = st->free_list;
        st->free_list = o;
    }
    struct tcp_conn *c = st->free_list;
    if (!c)
        return NULL;
    st->free_list = c->lnext;
    memset(c, 0, sizeof *c);
    c->st = st;
    c->pmtu = st->cfg.mtu;
    st->stats.conns++;
    return c;
}

static void conn_flush_later(struct tcp_conn *c)
{
    if (c->in_flush || c->dead)
        return;
    c->in_flush = true;
    c->fnext = c->st->flush_head;
    c->st->flush_head = c;
}

static uint32_t ts_now(const struct tcp_conn *c)
{
    return (uint32_t)c->st->now + c->ts_base;
}

/** RFC 6528: ISN = M + F(4-tuple, secret), M a 4 microsecond clock. */
static uint32_t isn_for(struct mx_tcp_stack *st, uint32_t laddr, uint16_t lport, uint32_t raddr,
                        uint16_t rport)
{
    uint32_t t[3] = {laddr, raddr, (uint32_t)lport << 16 | rport};
    return (uint32_t)mx_siphash24(st->secret, t, sizeof t) + (uint32_t)(st->now * 250);
}

static void set_mss(struct tcp_conn *c)
{
    uint32_t m = umin32(c->peer_mss, (uint32_t)c->pmtu - 40);
    if (c->ts_ok)
        m -= 12;
    if (m < 64)
        m = 64;
    c->mss = (uint16_t)m;
}

static uint8_t our_wscale(const struct mx_tcp_stack *st)
{
    uint8_t ws = 0;
    while (ws < 14 && (st->cfg.rcvbuf >> ws) > 65535)
        ws++;
    return ws;
}

static void stream_init(struct tcp_conn *c)
{
    struct mx_tcp_stack *st = c->st;
    c->s.ops = &tcp_stream_ops;
    c->s.worker = st->cfg.worker;
    c->s.id = ((uint64_t)(st->cfg.stack_id + 1) << 48) | ++st->next_stream_id;
    struct sockaddr_in *p = (struct sockaddr_in *)&c->s.peer, *l = (struct sockaddr_in *)&c->s.local;
    memset(&c->s.peer, 0, sizeof c->s.peer);
    memset(&c->s.local, 0, sizeof c->s.local);
    p->sin_family = AF_INET;
    p->sin_addr.s_addr = c->raddr;
    p->sin_port = c->rport;
    l->sin_family = AF_INET;
    l->sin_addr.s_addr = c->laddr;
    l->sin_port = c->lport;
}

static void notify_closed(struct tcp_conn *c, int res)
{
    if (c->closed_cb)
        return;
    c->closed_cb = true;
    if (!c->app_seen || !c->s.cb)
        return;
    if (c->state == TCP_SYN_SENT && !c->app_closed) {
        /* the stream contract: a failed open reports connected(-errno), then closed() */
        res = res ? res : -ECONNABORTED;
        if (c->s.cb->connected)
            c->s.cb->connected(&c->s, c->s.ctx, res);
    }
    if (c->s.cb->closed)
        c->s.cb->closed(&c->s, c->s.ctx, res);
}

static uint32_t rcv_window(const struct tcp_conn *c)
{
    if (!c->rbuf)
        return c->st->cfg.rcvbuf;
    return c->rbuf_sz - (c->rcv_nxt - c->rcv_user);
}

/** SACK blocks (RFC 2018) that fit in our ACKs beside the timestamp option. */
static unsigned sack_blocks(const struct tcp_conn *c)
{
    if (!c->sack_ok || !c->n_ooo)
        return 0;
    return umin32(c->n_ooo, c->ts_ok ? 3 : 4);
}

/**
 * Payload bytes one segment may carry now: the MSS (timestamps already
 * taken off) less the SACK option our ACK carries while we hold out-of-order
 * data. RFC 6691: the sender reduces the data by the options it sends, so
 * the frame stays within the path MTU; a full-sized segment plus SACK blocks
 * is 12-28 bytes over and an MTU-sized link drops it.
 */
static uint32_t seg_room(const struct tcp_conn *c)
{
    unsigned n = sack_blocks(c);
    return c->mss - (n ? 4 + 8 * n : 0);
}

/**
 * Bytes at snd_una that have been sent (FIN excluded): all a fast or NewReno
 * retransmission may resend. More would extend past snd_max, and the
 * peer's ACK of it would then look like an ACK of data never sent and be
 * dropped, again at every retransmission.
 */
static uint32_t sent_unacked(const struct tcp_conn *c)
{
    uint32_t end = SEQ_LT(c->snd_max, c->snd_end) ? c->snd_max : c->snd_end;
    return SEQ_GT(end, c->snd_una) ? end - c->snd_una : 0;
}

/* ---------------------------------------------------------------------- */
/* The peer's SACK blocks (RFC 2018, used as RFC 6675 does): a scoreboard of
 * what the peer holds above snd_una, so that loss recovery resends the holes
 * and not what already arrived. */

/** Forget what the cumulative ACK now covers. */
static void sb_prune(struct tcp_conn *c)
{
    unsigned k = 0;
    for (unsigned i = 0; i < c->n_sacked; i++) {
        struct ooo_range r = c->sacked[i];
        if (SEQ_LEQ(r.r, c->snd_una))
            continue;
        if (SEQ_LT(r.l, c->snd_una))
            r.l = c->snd_una;
        c->sacked[k++] = r;
    }
    c->n_sacked = (uint8_t)k;
}

/**
 * Merge the segment's SACK blocks, clipped to [lo, snd_max), into the
 * scoreboard. @return true when they cover bytes it did not: an RFC 6675
 * duplicate ACK, whatever data or window the segment carries.
 */
static bool sb_update(struct tcp_conn *c, const struct tcp_seg *s, uint32_t lo)
{
    bool grew = false;
    for (unsigned b = 0; b < s->n_sack; b++) {
        uint32_t l = s->sack[b][0], r = s->sack[b][1];
        if (SEQ_GT(r, c->snd_max) || SEQ_GT(l, r))
            continue; /* not data we sent: ignore the block */
        if (SEQ_LT(l, lo))
            l = lo; /* D-SACK (RFC 2883) or already acknowledged */
        if (!SEQ_LT(l, r))
            continue;
        unsigned n = c->n_sacked, i = 0;
        while (i < n && SEQ_LT(c->sacked[i].r, l))
            i++;
        if (i < n && SEQ_LEQ(c->sacked[i].l, l) && SEQ_GEQ(c->sacked[i].r, r))
            continue; /* nothing new */
        unsigned j = i;
        while (j < n && SEQ_LEQ(c->sacked[j].l, r)) {
            if (SEQ_LT(c->sacked[j].l, l))
                l = c->sacked[j].l;
            if (SEQ_GT(c->sacked[j].r, r))
                r = c->sacked[j].r;
            j++;
        }
        if (j == i) {
            if (n >= MAX_SACKED)
                continue; /* full: this block is not remembered */
            memmove(&c->sacked[i + 1], &c->sacked[i], (n - i) * sizeof c->sacked[0]);
            c->n_sacked++;
        } else if (j > i + 1) {
            memmove(&c->sacked[i + 1], &c->sacked[j], (n - j) * sizeof c->sacked[0]);
            c->n_sacked = (uint8_t)(n - (j - i - 1));
        }
        c->sacked[i].l = l;
        c->sacked[i].r = r;
        grew = true;
    }
    return grew;
}

/**
 * The first hole at or above from: bytes the peer has not SACKed, below
 * bytes it has (so taken for lost), before the FIN. At most one segment.
 */
static bool sb_next_hole(const struct tcp_conn *c, uint32_t from, uint32_t *seq, uint32_t *len)
{
    uint32_t x = SEQ_LT(from, c->snd_una) ? c->snd_una : from;
    for (unsigned i = 0; i < c->n_sacked; i++) {
        if (SEQ_LT(x, c->sacked[i].l)) {
            uint32_t end = SEQ_LT(c->sacked[i].l, c->snd_end) ? c->sacked[i].l : c->snd_end;
            if (!SEQ_LT(x, end))
                return false;
            *seq = x;
            *len = umin32(end - x, seg_room(c));
            return true;
        }
        if (SEQ_LT(x, c->sacked[i].r))
            x = c->sacked[i].r;
    }
    return false;
}

/**
 * RFC 6675 IsLost(SND.UNA): more than (DupThresh - 1) * SMSS bytes SACKed
 * above it. Linux compresses its SACKs, so a burst of out-of-order arrivals
 * may come back as one or two ACKs: counting them would wait for an RTO.
 */
static bool sb_una_lost(const struct tcp_conn *c)
{
    uint32_t n = 0;
    for (unsigned i = 0; i < c->n_sacked; i++)
        n += c->sacked[i].r - c->sacked[i].l;
    return n > 2u * c->mss;
}

/**
 * Resending from snd_nxt below snd_max (after an RTO or a PMTU drop): step
 * over what the peer SACKed. @return where this stretch of unSACKed data
 * ends (the next SACKed byte, or stop).
 */
static uint32_t sb_skip(struct tcp_conn *c, uint32_t stop)
{
    for (unsigned i = 0; i < c->n_sacked; i++) {
        if (SEQ_LEQ(c->sacked[i].l, c->snd_nxt) && SEQ_LT(c->snd_nxt, c->sacked[i].r))
            c->snd_nxt = c->sacked[i].r;
        else if (SEQ_GT(c->sacked[i].l, c->snd_nxt))
            return SEQ_LT(c->sacked[i].l, stop) ? c->sacked[i].l : stop;
    }
    return stop;
}

/* ---------------------------------------------------------------------- */
/* Output */

/** Option bytes for a SYN or SYN-ACK (flags tell which the peer offered). */
static size_t syn_options(uint8_t *o, uint16_t mss, bool sack, bool ts, uint32_t tsval,
                          uint32_t tsecr, bool ws, uint8_t wscale)
{
    size_t n = 0;
    o[n++] = 2;
    o[n++] = 4;
    o[n++] = (uint8_t)(mss >> 8);
    o[n++] = (uint8_t)mss;
    if (sack && ts) {
        o[n++] = 4;
        o[n++] = 2;
    } else if (sack) {
        o[n++] = 1;
        o[n++] = 1;
        o[n++] = 4;
        o[n++] = 2;
    } else if (ts) {
        o[n++] = 1;
        o[n++] = 1;
    }
    if (ts) {
        uint32_t v = rte_cpu_to_be_32(tsval), e = rte_cpu_to_be_32(tsecr);
        o[n++] = 8;
        o[n++] = 10;
        memcpy(o + n, &v, 4);
        memcpy(o + n + 4, &e, 4);
        n += 8;
    }
    if (ws) {
        o[n++] = 1;
        o[n++] = 3;
        o[n++] = 3;
        o[n++] = wscale;
    }
    while (n & 3)
        o[n++] = 0;
    return n;
}

/** Write a TCP header at th (options already behind it) and send. */
static void emit_raw(struct mx_tcp_stack *st, void *h, uint8_t *th, size_t optlen, size_t dlen,
                     uint32_t laddr, uint16_t lport, uint32_t raddr, uint16_t rport, uint32_t seq,
                     uint32_t ack, uint8_t flags, uint16_t wnd)
{
    (void)laddr;
    struct rte_tcp_hdr *t = (struct rte_tcp_hdr *)th;
    t->src_port = lport;
    t->dst_port = rport;
    t->sent_seq = rte_cpu_to_be_32(seq);
    t->recv_ack = rte_cpu_to_be_32(flags & TH_ACK ? ack : 0);
    t->data_off = (uint8_t)(((TCP_HLEN + optlen) / 4) << 4);
    t->tcp_flags = flags;
    t->rx_win = rte_cpu_to_be_16(wnd);
    t->cksum = 0;
    t->tcp_urp = 0;
    st->stats.tcp_tx++;
    if (flags & TH_RST)
        st->stats.tcp_rst_tx++;
    net_ip_send(st, h, th, TCP_HLEN + optlen + dlen, raddr, IPPROTO_TCP, true);
}

/**
 * Build and send one segment of connection c: seq, flags, and len payload
 * bytes taken from the send ring at seq. SYN segments carry the handshake
 * options; others carry timestamps and, when we hold out-of-order data,
 * SACK blocks.
 */
static void tcp_emit(struct tcp_conn *c, uint32_t seq, uint8_t flags, uint32_t len)
{
    struct mx_tcp_stack *st = c->st;
    uint8_t opt[40];
    size_t optlen;
    if (flags & TH_SYN) {
        bool synack = flags & TH_ACK;
        optlen = syn_options(opt, (uint16_t)(c->pmtu - 40), synack ? c->sack_ok : true,
                             synack ? c->ts_ok : true, ts_now(c), synack ? c->ts_recent : 0,
                             synack ? c->ws_ok : true, c->rcv_ws);
    } else {
        optlen = 0;
        if (c->ts_ok) {
            uint32_t v = rte_cpu_to_be_32(ts_now(c)), e = rte_cpu_to_be_32(c->ts_recent);
            opt[0] = 1;
            opt[1] = 1;
            opt[2] = 8;
            opt[3] = 10;
            memcpy(opt + 4, &v, 4);
            memcpy(opt + 8, &e, 4);
            optlen = 12;
        }
        unsigned n = (flags & TH_ACK) && !(flags & TH_RST) ? sack_blocks(c) : 0;
        /* Never past the MTU: with more data than seg_room() allows, fewer blocks. */
        while (n && 20 + TCP_HLEN + optlen + 4 + 8 * n + len > c->pmtu)
            n--;
        if (n) {
            opt[optlen++] = 1;
            opt[optlen++] = 1;
            opt[optlen++] = 5;
            opt[optlen++] = (uint8_t)(2 + 8 * n);
            /* RFC 2018 4: the block holding the latest segment first, then
             * the most recently reported ones: here, newest first. Listing
             * the lowest ranges after the first (as before) left a range
             * whose one report was lost unreported for seconds, and Linux
             * took its age, once reported, as an RTT sample (13.8 s seen,
             * its RTO then 17 s). */
            uint32_t below = UINT32_MAX;
            for (unsigned k = 0; k < n; k++) {
                unsigned idx = c->n_ooo;
                for (unsigned i = 0; i < c->n_ooo; i++)
                    if (c->ooo[i].stamp < below &&
                        (idx == c->n_ooo || c->ooo[i].stamp > c->ooo[idx].stamp))
                        idx = i;
                if (idx == c->n_ooo)
                    idx = 0; /* equal stamps (the clock wrapped): any block will do */
                below = c->ooo[idx].stamp;
                uint32_t l = rte_cpu_to_be_32(c->ooo[idx].l), r = rte_cpu_to_be_32(c->ooo[idx].r);
                memcpy(opt + optlen, &l, 4);
                memcpy(opt + optlen + 4, &r, 4);
                optlen += 8;
            }
        }
    }
    void *h;
    uint8_t *th = net_ip_alloc(st, TCP_HLEN + optlen + len, &h);
    if (!th)
        return;
    memcpy(th + TCP_HLEN, opt, optlen);
    if (len) {
        uint8_t *d = th + TCP_HLEN + optlen;
        uint32_t pos = seq & (c->sbuf_sz - 1);
        uint32_t first = umin32(len, c->sbuf_sz - pos);
        memcpy(d, c->sbuf + pos, first);
        if (first < len)
            memcpy(d + first, c->sbuf, len - first);
    }
    uint32_t wnd = rcv_window(c);
    uint16_t wfield;
    if (flags & TH_SYN) {
        wfield = (uint16_t)umin32(wnd, 65535);
    } else {
        /* Never move the right edge back (RFC 9293 3.8.6.2.2). */
        if (SEQ_LT(c->rcv_nxt + wnd, c->rcv_adv))
            wnd = c->rcv_adv - c->rcv_nxt;
        uint32_t scaled = wnd >> c->rcv_ws;
        if (scaled > 65535)
            scaled = 65535;
        wfield = (uint16_t)scaled;
        if (SEQ_GT(c->rcv_nxt + (scaled << c->rcv_ws), c->rcv_adv))
            c->rcv_adv = c->rcv_nxt + (scaled << c->rcv_ws);
    }
    if (flags & TH_ACK) {
        c->ack_now = false;
        c->ack_delayed = false;
        c->t_delack = 0;
        c->segs_unacked = 0;
    }
    emit_raw(st, h, th, optlen, len, c->laddr, c->lport, c->raddr, c->rport, seq, c->rcv_nxt, flags,
             wfield);
}

static void send_ack(struct tcp_conn *c)
{
    if (c->state == TCP_SYN_RCVD) {
        tcp_emit(c, c->iss, TH_SYN | TH_ACK, 0);
        return;
    }
    tcp_emit(c, c->snd_nxt, TH_ACK, 0);
}

/** Stateless RST in reply to segment s (RFC 9293 3.10.7.1). */
static void send_rst_reply(struct mx_tcp_stack *st, const struct tcp_seg *s)
{
    if (s->flags & TH_RST)
        return;
    void *h;
    uint8_t *th = net_ip_alloc(st, TCP_HLEN, &h);
    if (!th)
        return;
    if (s->flags & TH_ACK) {
        emit_raw(st, h, th, 0, 0, s->daddr, s->dport, s->saddr, s->sport, s->ack, 0, TH_RST, 0);
    } else {
        uint32_t ack = s->seq + s->len + !!(s->flags & TH_SYN) + !!(s->flags & TH_FIN);
        emit_raw(st, h, th, 0, 0, s->daddr, s->dport, s->saddr, s->sport, 0, ack, TH_RST | TH_ACK,
                 0);
    }
}

/** RFC 5961 challenge ACK, rate limited per stack. */
static void challenge_ack(struct tcp_conn *c)
{
    struct mx_tcp_stack *st = c->st;
    uint64_t sec = st->now / 1000;
    if (sec != st->challenge_sec) {
        st->challenge_sec = sec;
        st->challenge_count = 0;
    }
    if (st->challenge_count >= st->cfg.challenge_ack_limit)
        return;
    st->challenge_count++;
    st->stats.tcp_challenge_ack++;
    send_ack(c);
}

static uint32_t cur_rto(const struct tcp_conn *c)
{
    uint64_t r = (uint64_t)c->rto << c->backoff;
    return (uint32_t)(r > c->st->cfg.rto_max_ms ? c->st->cfg.rto_max_ms : r);
}

static void arm_rexmt(struct tcp_conn *c)
{
    c->t_rexmt = c->st->now + cur_rto(c);
    c->persist = false;
}

/** Bytes written but not yet acknowledged (FIN excluded). */
static uint32_t snd_buffered(const struct tcp_conn *c)
{
    uint32_t start = SEQ_GT(c->snd_una, c->iss + 1) ? c->snd_una : c->iss + 1;
    return c->snd_end - start;
}

/** Send what the windows allow; then a pure ACK if one is owed. */
static void tcp_output(struct tcp_conn *c)
{
    if (c->dead)
        return;
    switch (c->state) {
    case TCP_ESTABLISHED:
    case TCP_CLOSE_WAIT:
    case TCP_FIN_WAIT_1:
    case TCP_CLOSING:
    case TCP_LAST_ACK:
        break;
    case TCP_FIN_WAIT_2:
    case TCP_TIME_WAIT:
        if (c->ack_now)
            send_ack(c);
        return;
    default:
        return;
    }
    bool sent = false;
    /* RFC 3042 limited transmit: the first two duplicate ACKs each let one
     * new segment out, so a small window still gathers the three dupacks
     * that fast retransmit needs instead of waiting for the RTO. */
    uint32_t lt = !c->in_recovery && c->dupacks < 3 ? c->dupacks * c->mss : 0;
    uint32_t win = umin32(c->snd_wnd, c->cwnd + lt);
    for (;;) {
        uint32_t stop = c->snd_end;
        if (c->n_sacked && SEQ_LT(c->snd_nxt, c->snd_max))
            stop = sb_skip(c, stop);
        uint32_t avail = SEQ_LT(c->snd_nxt, stop) ? stop - c->snd_nxt : 0;
        int32_t usable = (int32_t)(c->snd_una + win - c->snd_nxt);
        uint32_t room = seg_room(c);
        uint32_t n = umin32(avail, room);
        if (usable <= 0)
            n = 0;
        else
            n = umin32(n, (uint32_t)usable);
        /* Sender SWS avoidance (RFC 9293 3.8.6.2.1): a window remnant
         * smaller than a segment, with more data queued, waits while data
         * is in flight (its ACK opens the window) instead of leaving as a
         * runt. With nothing in flight it goes, or nothing would. */
        if (n < avail && n < room && c->snd_nxt != c->snd_una)
            n = 0;
        bool fin = c->fin_queued && SEQ_LEQ(c->snd_nxt, c->snd_end) && c->snd_nxt + n == c->snd_end &&
                   (n > 0 || avail == 0);
        if (n == 0 && !fin)
            break;
        uint8_t flags = TH_ACK;
        if (n && c->snd_nxt + n == c->snd_end)
            flags |= TH_PSH;
        if (fin)
            flags |= TH_FIN;
        if (SEQ_LT(c->snd_nxt, c->snd_max))
            c->st->stats.tcp_retrans++;
        else if (!c->rtt_timing && !c->ts_ok && n) {
            c->rtt_timing = true;
            c->rtt_seq = c->snd_nxt;
            c->rtt_start = c->st->now;
        }
        tcp_emit(c, c->snd_nxt, flags, n);
        sent = true;
        c->snd_nxt += n + fin;
        if (SEQ_GT(c->snd_nxt, c->snd_max))
            c->snd_max = c->snd_nxt;
        if (fin) {
            if (c->state == TCP_ESTABLISHED)
                c->state = TCP_FIN_WAIT_1;
            else if (c->state == TCP_CLOSE_WAIT)
                c->state = TCP_LAST_ACK;
        }
        if (!c->t_rexmt || c->persist)
            arm_rexmt(c);
        if (fin)
            break;
    }
    if (!sent && (c->ack_now))
        send_ack(c);
    /* Zero window with data waiting and nothing in flight: probe. */
    if (c->snd_wnd == 0 && SEQ_LT(c->snd_nxt, c->snd_end) && c->snd_una == c->snd_max &&
        !c->t_rexmt) {
        c->persist = true;
        c->t_rexmt = c->st->now + cur_rto(c);
    }
    conn_timer_update(c);
}

/* ---------------------------------------------------------------------- */
/* Timers */

static void conn_timer_update(struct tcp_conn *c)
{
    if (c->dead)
        return;
    uint64_t m = 0;
    uint64_t t[5] = {c->t_rexmt, c->t_delack, c->t_keep, c->t_app, c->t_2msl};
    for (int i = 0; i < 5; i++)
        if (t[i] && (!m || t[i] < m))
            m = t[i];
    if (!m)
        wheel_del(&c->st->wheel, &c->tn);
    else if (!wheel_pending(&c->tn) || c->tn.expire != m)
        wheel_add(&c->st->wheel, &c->tn, m);
}

static void conn_abort(struct tcp_conn *c, int err, bool rst)
{
    if (rst && c->state != TCP_SYN_SENT)
        tcp_emit(c, c->snd_nxt, TH_RST | TH_ACK, 0);
    c->st->stats.tcp_aborts++;
    notify_closed(c, err);
    conn_kill(c);
}

static void enter_timewait(struct tcp_conn *c)
{
    struct mx_tcp_stack *st = c->st;
    notify_closed(c, 0);
    if (c->dead)
        return;
    c->state = TCP_TIME_WAIT;
    buffers_free(c);
    c->t_rexmt = c->t_delack = c->t_keep = c->t_app = 0;
    c->t_2msl = st->now + st->cfg.timewait_ms;
    tw_append(c);
    if (st->stats.timewait > st->cfg.max_timewait) {
        conn_kill(st->tw_head.lnext);
        st->stats.tcp_timewait_recycled++;
    }
    conn_timer_update(c);
}

static void rexmt_timeout(struct tcp_conn *c)
{
    struct mx_tcp_stack *st = c->st;
    c->t_rexmt = 0;
    if (c->persist) {
        /* Zero-window probe: one byte past the window (RFC 9293 3.8.6.1). */
        if (SEQ_LT(c->snd_una, c->snd_end) && c->snd_wnd == 0) {
            tcp_emit(c, c->snd_una, TH_ACK, 1);
            if (SEQ_GT(c->snd_una + 1, c->snd_max))
                c->snd_max = c->snd_una + 1;
            st->stats.tcp_zwp++;
            if (c->backoff < 16)
                c->backoff++;
            uint64_t r = (uint64_t)c->rto << c->backoff;
            c->t_rexmt = st->now + (r > PERSIST_MAX_MS ? PERSIST_MAX_MS : r);
        } else {
            c->persist = false;
            tcp_output(c);
        }
        return;
    }
    if (c->state == TCP_SYN_SENT || c->state == TCP_SYN_RCVD) {
        if (c->backoff >= st->cfg.syn_retries) {
            if (c->state == TCP_SYN_SENT)
                conn_abort(c, -ETIMEDOUT, false);
            else
                conn_kill(c);
            return;
        }
        c->backoff++;
        st->stats.tcp_retrans++;
        tcp_emit(c, c->iss, c->state == TCP_SYN_SENT ? TH_SYN : TH_SYN | TH_ACK, 0);
        arm_rexmt(c);
        return;
    }
    if (c->snd_una == c->snd_max)
        return;
    if (c->backoff >= st->cfg.max_retries) {
        conn_abort(c, -ETIMEDOUT, true);
        return;
    }
    uint32_t flight = c->snd_max - c->snd_una;
    c->ssthresh = umax32(flight / 2, 2u * c->mss);
    c->cwnd = c->mss;
    /* The go-back-N resend below steps over SACKed data (RFC 6675 5.1);
     * a second RTO in a row may mean the peer dropped what it SACKed
     * (RFC 2018 reneging), so then everything goes again. */
    if (c->backoff >= 1)
        c->n_sacked = 0;
    c->in_recovery = false;
    c->recover = c->snd_max;
    c->dupacks = 0;
    c->backoff++;
    c->rtt_timing = false;
    c->snd_nxt = c->snd_una;
    st->stats.tcp_rto++;
    tcp_output(c);
    if (!c->t_rexmt)
        arm_rexmt(c);
}

static void conn_timer_fire(struct tcp_conn *c)
{
    struct mx_tcp_stack *st = c->st;
    uint64_t now = st->now;
    if (c->t_2msl && c->t_2msl <= now) {
        c->t_2msl = 0;
        if (c->state == TCP_FIN_WAIT_2) /* orphan that never got the peer's FIN */
            conn_abort(c, 0, true);
        else
            conn_kill(c);
        return;
    }
    if (c->t_delack && c->t_delack <= now) {
        c->t_delack = 0;
        if (c->ack_delayed)
            send_ack(c);
    }
    if (c->t_rexmt && c->t_rexmt <= now) {
        rexmt_timeout(c);
        if (c->dead)
            return;
    }
    if (c->t_keep && c->t_keep <= now) {
        c->t_keep = 0;
        if (c->ka_probes >= st->cfg.keepalive_probes) {
            conn_abort(c, -ETIMEDOUT, true);
            return;
        }
        c->ka_probes++;
        st->stats.tcp_keepalive++;
        tcp_emit(c, c->snd_una - 1, TH_ACK, 0);
        c->t_keep = now + st->cfg.keepalive_intvl_ms;
    }
    if (c->t_app && c->t_app <= now) {
        c->t_app = 0;
        if (c->app_seen && !c->app_closed && !c->closed_cb && c->s.cb && c->s.cb->timeout)
            c->s.cb->timeout(&c->s, c->s.ctx);
    }
    conn_timer_update(c);
}

/* ---------------------------------------------------------------------- */
/* SYN cookies (RFC 4987): ISS = hash(4-tuple, peer ISN, time) | time | MSS;
 * window scale and SACK ride in the low bits of our timestamp. */

static const uint16_t cookie_mss[8] = {216, 536, 1024, 1220, 1360, 1440, 1452, 1460};

static uint32_t cookie_hash(struct mx_tcp_stack *st, const struct tcp_seg *s, uint32_t irs,
                            uint64_t t)
{
    uint32_t d[6] = {s->daddr, s->saddr, (uint32_t)s->dport << 16 | s->sport, irs, (uint32_t)t,
                     0x636f6f6b};
    uint8_t key[16];
    memcpy(key, st->secret, 16);
    key[0] ^= 0x5a; /* a key of its own, apart from the ISN key */
    return (uint32_t)mx_siphash24(key, d, sizeof d);
}

static void cookie_synack(struct mx_tcp_stack *st, const struct cookie_rtx *e)
{
    uint8_t opt[40];
    bool ts = e->flags & 2, sack = e->flags & 1, ws = e->ws != 0xf;
    size_t optlen = syn_options(opt, (uint16_t)(st->cfg.mtu - 40), sack, ts, e->tsval, e->tsecr, ws,
                                our_wscale(st));
    void *h;
    uint8_t *th = net_ip_alloc(st, TCP_HLEN + optlen, &h);
    if (!th)
        return;
    memcpy(th + TCP_HLEN, opt, optlen);
    st->stats.tcp_syn_cookie_tx++;
    emit_raw(st, h, th, optlen, 0, e->laddr, e->lport, e->raddr, e->rport, e->iss, e->irs + 1,
             TH_SYN | TH_ACK, (uint16_t)umin32(st->cfg.rcvbuf, 65535));
}

static void cookie_send(struct mx_tcp_stack *st, const struct tcp_seg *s)
{
    uint64_t t = st->now / 64000;
    unsigned mi = 0;
    uint16_t pm = s->has_mss ? s->mss : DEFAULT_MSS;
    for (unsigned i = 0; i < 8; i++)
        if (cookie_mss[i] <= pm)
            mi = i;
    struct cookie_rtx e = {0};
    e.laddr = s->daddr;
    e.raddr = s->saddr;
    e.lport = s->dport;
    e.rport = s->sport;
    e.irs = s->seq;
    e.iss = (cookie_hash(st, s, s->seq, t) & 0xffffff00u) | (uint32_t)((t & 0x1f) << 3) | mi;
    e.ws = 0xf;
    if (s->has_ts) {
        /* Without timestamps there is nowhere to keep wscale and SACK. */
        e.flags = 2 | (s->sack_ok ? 1 : 0);
        if (s->has_ws)
            e.ws = s->ws > 14 ? 14 : s->ws;
        uint32_t now = (uint32_t)st->now;
        uint32_t v = (now & ~0x3fu) | (uint32_t)(e.flags & 1) << 4 | e.ws;
        if (v > now)
            v -= 64; /* stay at or below the clock our later segments use */
        e.tsval = v;
        e.tsecr = s->tsval;
    }
    e.tries = 0;
    e.due = st->now + st->cfg.rto_init_ms;
    cookie_synack(st, &e);
    /* Remember it briefly: SMTP clients wait for our greeting, so a lost
     * final ACK would otherwise hang them. Oldest entries are overwritten. */
    if (st->cookie_tail - st->cookie_head >= COOKIE_RTX_SLOTS)
        st->cookie_head++;
    st->cookie_rtx[st->cookie_tail++ & (COOKIE_RTX_SLOTS - 1)] = e;
}

static void cookie_timers(struct mx_tcp_stack *st)
{
    while (st->cookie_head != st->cookie_tail) {
        struct cookie_rtx *e = &st->cookie_rtx[st->cookie_head & (COOKIE_RTX_SLOTS - 1)];
        if (e->due > st->now)
            break;
        struct cookie_rtx copy = *e;
        st->cookie_head++;
        if (conn_lookup(st, copy.laddr, copy.lport, copy.raddr, copy.rport))
            continue;
        cookie_synack(st, &copy);
        if (++copy.tries < 2) {
            copy.due = st->now + ((uint64_t)st->cfg.rto_init_ms << copy.tries);
            if (st->cookie_tail - st->cookie_head >= COOKIE_RTX_SLOTS)
                st->cookie_head++;
            st->cookie_rtx[st->cookie_tail++ & (COOKIE_RTX_SLOTS - 1)] = copy;
        }
    }
}

/* ---------------------------------------------------------------------- */
/* Input helpers */

static int parse_segment(struct tcp_seg *s, const uint8_t *iph, const uint8_t *th, size_t len)
{
    if (len < TCP_HLEN)
        return -1;
    const struct rte_tcp_hdr *t = (const struct rte_tcp_hdr *)th;
    size_t doff = (size_t)(t->data_off >> 4) * 4;
    if (doff < TCP_HLEN || doff > len)
        return -1;
    memset(s, 0, sizeof *s);
    const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)iph;
    s->saddr = ip->src_addr;
    s->daddr = ip->dst_addr;
    s->sport = t->src_port;
    s->dport = t->dst_port;
    s->seq = rte_be_to_cpu_32(t->sent_seq);
    s->ack = rte_be_to_cpu_32(t->recv_ack);
    s->flags = t->tcp_flags & 0x3f;
    s->wnd = rte_be_to_cpu_16(t->rx_win);
    s->data = th + doff;
    s->len = (uint32_t)(len - doff);
    const uint8_t *o = th + TCP_HLEN, *end = th + doff;
    while (o < end) {
        uint8_t kind = o[0];
        if (kind == 0)
            break;
        if (kind == 1) {
            o++;
            continue;
        }
        if (end - o < 2 || o[1] < 2 || o[1] > end - o)
            return -1;
        uint8_t ol = o[1];
        switch (kind) {
        case 2:
            if (ol == 4 && (s->flags & TH_SYN)) {
                s->has_mss = true;
                s->mss = (uint16_t)(o[2] << 8 | o[3]);
            }
            break;
        case 3:
            if (ol == 3 && (s->flags & TH_SYN)) {
                s->has_ws = true;
                s->ws = o[2];
            }
            break;
        case 4:
            if (ol == 2 && (s->flags & TH_SYN))
                s->sack_ok = true;
            break;
        case 5:
            if (ol >= 10 && (ol - 2) % 8 == 0) {
                unsigned n = (ol - 2) / 8;
                for (unsigned i = 0; i < n && s->n_sack < MAX_SACK_IN; i++) {
                    uint32_t l, r;
                    memcpy(&l, o + 2 + 8 * i, 4);
                    memcpy(&r, o + 6 + 8 * i, 4);
                    s->sack[s->n_sack][0] = rte_be_to_cpu_32(l);
                    s->sack[s->n_sack][1] = rte_be_to_cpu_32(r);
                    s->n_sack++;
                }
            }
            break;
        case 8:
            if (ol == 10) {
                uint32_t v, e;
                memcpy(&v, o + 2, 4);
                memcpy(&e, o + 6, 4);
                s->has_ts = true;
                s->tsval = rte_be_to_cpu_32(v);
                s->tsecr = rte_be_to_cpu_32(e);
            }
            break;
        default:
            break;
        }
        o += ol;
    }
    return 0;
}

static struct tcp_listener *listener_find(struct mx_tcp_stack *st, uint16_t port)
{
    for (unsigned i = 0; i < LISTEN_MAX; i++)
        if (st->listeners[i].port == port && st->listeners[i].fn)
            return &st->listeners[i];
    return NULL;
}

/** Options from the peer's SYN (or decoded from a cookie). */
static void apply_syn_options(struct tcp_conn *c, const struct tcp_seg *s)
{
    c->peer_mss = s->has_mss && s->mss >= 64 ? s->mss : DEFAULT_MSS;
    c->ws_ok = s->has_ws;
    c->snd_ws = s->has_ws ? (s->ws > 14 ? 14 : s->ws) : 0;
    c->rcv_ws = s->has_ws ? our_wscale(c->st) : 0;
    c->ts_ok = s->has_ts;
    if (s->has_ts) {
        c->ts_recent = s->tsval;
        c->ts_recent_at = c->st->now;
    }
    c->sack_ok = s->sack_ok;
    set_mss(c);
}

/** SYN_RCVD (or a valid cookie) -> ESTABLISHED; hands the stream to the app. */
static int passive_establish(struct tcp_conn *c, struct tcp_listener *l)
{
    struct mx_tcp_stack *st = c->st;
    if (buffers_alloc(c) != 0)
        return -ENOBUFS;
    if (c->state == TCP_SYN_RCVD)
        st->stats.syn_rcvd--;
    c->state = TCP_ESTABLISHED;
    c->snd_una = c->iss + 1;
    c->rcv_user = c->rcv_nxt;
    c->rcv_adv = c->rcv_nxt + umin32(st->cfg.rcvbuf, 65535); /* as the SYN-ACK said */
    c->cwnd = 10u * c->mss;
    c->ssthresh = 0x7fffffff;
    c->recover = c->iss;
    c->backoff = 0;
    c->t_rexmt = 0;
    c->rto = c->st->cfg.rto_init_ms;
    if (st->cfg.keepalive_idle_ms)
        c->t_keep = st->now + st->cfg.keepalive_idle_ms;
    stream_init(c);
    c->app_seen = true;
    st->stats.tcp_accepts++;
    l->fn(&c->s, l->arg);
    return 0;
}

static void rtt_sample(struct tcp_conn *c, uint32_t r)
{
    const struct mx_tcp_config *cfg = &c->st->cfg;
    uint32_t r16 = (r ? r : 1) * 16;
    if (!c->srtt) {
        c->srtt = r16;
        c->rttvar = r16 / 2;
    } else {
        uint32_t d = c->srtt > r16 ? c->srtt - r16 : r16 - c->srtt;
        c->rttvar = (3 * c->rttvar + d) / 4;
        c->srtt = (7 * c->srtt + r16) / 8;
    }
    uint32_t rto = (c->srtt + umax32(16, 4 * c->rttvar)) / 16;
    if (rto < cfg->rto_min_ms)
        rto = cfg->rto_min_ms;
    if (rto > cfg->rto_max_ms)
        rto = cfg->rto_max_ms;
    c->rto = rto;
}

static void maybe_drained(struct tcp_conn *c)
{
    bool all = c->snd_una == c->snd_end || (c->fin_queued && SEQ_GEQ(c->snd_una, c->snd_end));
    bool room = c->sbuf_sz && snd_buffered(c) <= c->sbuf_sz / 2;
    if (!((c->want_drain && room) || (c->wrote && all)))
        return;
    c->want_drain = false;
    c->wrote = false;
    if (c->app_seen && !c->app_closed && !c->closed_cb && c->s.cb && c->s.cb->drained)
        c->s.cb->drained(&c->s, c->s.ctx);
}

/** Process the ACK field of an acceptable segment. @return false to drop. */
static bool process_ack(struct tcp_conn *c, const struct tcp_seg *s)
{
    struct mx_tcp_stack *st = c->st;
    if (SEQ_GT(s->ack, c->snd_max)) {
        send_ack(c); /* acks something we never sent */
        return false;
    }
    if (SEQ_LT(s->ack, c->snd_una - c->max_snd_wnd)) {
        challenge_ack(c); /* RFC 5961 5.2: too old to be real */
        return false;
    }
    uint32_t wnd = s->wnd << c->snd_ws;
    bool sack_new = c->sack_ok && s->n_sack &&
                    sb_update(c, s, SEQ_GT(s->ack, c->snd_una) ? s->ack : c->snd_una);
    if (SEQ_GT(s->ack, c->snd_una)) {
        uint32_t acked = s->ack - c->snd_una;
        c->snd_una = s->ack;
        if (SEQ_LT(c->snd_nxt, c->snd_una))
            c->snd_nxt = c->snd_una;
        sb_prune(c);
        /* RTT: timestamps echo when the acked segment left; else Karn. */
        if (c->ts_ok && s->has_ts && s->tsecr) {
            uint32_t r = ts_now(c) - s->tsecr;
            if (r < 600000)
                rtt_sample(c, r);
        } else if (c->rtt_timing && SEQ_GT(s->ack, c->rtt_seq)) {
            c->rtt_timing = false;
            rtt_sample(c, (uint32_t)(st->now - c->rtt_start));
        }
        c->backoff = 0;
        if (c->in_recovery) {
            if (SEQ_GEQ(s->ack, c->recover)) {
                uint32_t flight = c->snd_max - c->snd_una;
                c->cwnd = umin32(c->ssthresh, flight + c->mss);
                c->in_recovery = false;
                c->dupacks = 0;
            } else {
                /* NewReno partial ACK: resend the next hole, deflate. With
                 * SACK, the hole at snd_una only if this recovery has not
                 * resent it yet, else the next one the scoreboard shows. */
                uint32_t seq = c->snd_una, len = umin32(seg_room(c), sent_unacked(c));
                if (c->n_sacked && !sb_next_hole(c, c->rxt_next, &seq, &len))
                    len = 0;
                if (SEQ_LT(seq, c->snd_end) && len) {
                    tcp_emit(c, seq, TH_ACK, len);
                    st->stats.tcp_retrans++;
                    if (SEQ_GT(seq + len, c->rxt_next))
                        c->rxt_next = seq + len;
                }
                c->cwnd = (c->cwnd > acked ? c->cwnd - acked : 0) + c->mss;
                arm_rexmt(c);
            }
        } else {
            c->dupacks = 0;
            if (c->cwnd < c->ssthresh)
                c->cwnd += umin32(acked, c->mss);
            else
                /* byte counting (RFC 3465, L = 1): a delayed ACK covering two
                 * segments grows the window as much as two ACKs would */
                c->cwnd += umax32(1, (uint32_t)((uint64_t)c->mss * umin32(acked, 2u * c->mss) /
                                                c->cwnd));
        }
        if (c->snd_una == c->snd_max) {
            c->t_rexmt = 0;
            c->persist = false;
        } else {
            arm_rexmt(c);
        }
    } else if (s->ack == c->snd_una && !(s->flags & (TH_FIN | TH_SYN)) &&
               c->snd_max != c->snd_una && !c->persist &&
               (sack_new || (s->len == 0 && wnd == c->snd_wnd && !(c->sack_ok && s->n_sack)))) {
        /* Duplicate ACK: RFC 5681 (no data, same window) without SACK
         * blocks; with them, RFC 6675: any ACK that SACKs new data, even
         * one carrying data or a new window (both are the rule when the
         * peer sends too), while a copy of an old ACK counts no more. */
        st->stats.tcp_dupack++;
        c->dupacks++;
        uint32_t seq, len;
        if (c->in_recovery && c->n_sacked && sb_next_hole(c, c->rxt_next, &seq, &len)) {
            /* A segment left the network: its slot goes to the next hole. */
            tcp_emit(c, seq, TH_ACK, len);
            st->stats.tcp_retrans++;
            st->stats.tcp_sack_retrans++;
            c->rxt_next = seq + len;
        } else if (c->in_recovery) {
            c->cwnd += c->mss;
        } else if ((c->dupacks == 3 || (c->dupacks < 3 && sb_una_lost(c))) &&
                   SEQ_GT(s->ack, c->recover)) {
            uint32_t flight = c->snd_max - c->snd_una;
            c->ssthresh = umax32(flight / 2, 2u * c->mss);
            c->recover = c->snd_max;
            len = umin32(seg_room(c), sent_unacked(c));
            if (c->n_sacked)
                sb_next_hole(c, c->snd_una, &seq, &len); /* stops at SACKed data */
            c->rxt_next = c->snd_una + len;
            if (SEQ_LT(c->snd_una, c->snd_end) && len) {
                tcp_emit(c, c->snd_una, TH_ACK, len);
            } else {
                tcp_emit(c, c->snd_una, TH_ACK | TH_FIN, 0);
            }
            st->stats.tcp_retrans++;
            st->stats.tcp_fast_retrans++;
            c->cwnd = c->ssthresh + 3u * c->mss;
            c->in_recovery = true;
            c->rtt_timing = false;
            arm_rexmt(c);
        }
    }
    /* Window update (RFC 9293 3.10.7.4, SND.WL1/WL2 rule). */
    if (SEQ_LT(c->snd_wl1, s->seq) || (c->snd_wl1 == s->seq && SEQ_LEQ(c->snd_wl2, s->ack))) {
        bool opened = c->snd_wnd == 0 && wnd > 0;
        c->snd_wnd = wnd;
        c->snd_wl1 = s->seq;
        c->snd_wl2 = s->ack;
        if (wnd > c->max_snd_wnd)
            c->max_snd_wnd = wnd;
        if (opened && c->persist) {
            c->persist = false;
            c->t_rexmt = 0;
            c->backoff = 0;
        }
    }
    bool fin_acked = c->fin_queued && SEQ_GT(c->snd_max, c->snd_end) && c->snd_una == c->snd_end + 1;
    if (fin_acked) {
        switch (c->state) {
        case TCP_FIN_WAIT_1:
            c->state = TCP_FIN_WAIT_2;
            c->t_rexmt = 0;
            notify_closed(c, 0);
            c->t_2msl = st->now + st->cfg.fin_wait2_ms;
            break;
        case TCP_CLOSING:
            enter_timewait(c);
            return false;
        case TCP_LAST_ACK:
            notify_closed(c, 0);
            conn_kill(c);
            return false;
        default:
            break;
        }
    }
    maybe_drained(c);
    return !c->dead;
}

/** Insert [l, r) into the out-of-order list (sorted, merged, bounded). */
static bool ooo_insert(struct tcp_conn *c, uint32_t l, uint32_t r)
{
    unsigned n = c->n_ooo, i = 0;
    while (i < n && SEQ_LT(c->ooo[i].r, l))
        i++;
    /* Ranges i.. that touch [l, r) merge into one. */
    unsigned j = i;
    while (j < n && SEQ_LEQ(c->ooo[j].l, r)) {
        if (SEQ_LT(c->ooo[j].l, l))
            l = c->ooo[j].l;
        if (SEQ_GT(c->ooo[j].r, r))
            r = c->ooo[j].r;
        j++;
    }
    if (j == i) {
        if (n >= c->st->cfg.ooo_ranges)
            return false;
        memmove(&c->ooo[i + 1], &c->ooo[i], (n - i) * sizeof c->ooo[0]);
        c->n_ooo++;
    } else if (j > i + 1) {
        memmove(&c->ooo[i + 1], &c->ooo[j], (n - j) * sizeof c->ooo[0]);
        c->n_ooo = (uint8_t)(n - (j - i - 1));
    }
    c->ooo[i].l = l;
    c->ooo[i].r = r;
    c->ooo[i].stamp = ++c->ooo_clock;
    return true;
}

static void ring_put(struct tcp_conn *c, uint32_t seq, const uint8_t *d, uint32_t len)
{
    uint32_t pos = seq & (c->rbuf_sz - 1);
    uint32_t first = umin32(len, c->rbuf_sz - pos);
    memcpy(c->rbuf + pos, d, first);
    if (first < len)
        memcpy(c->rbuf, d + first, len - first);
}

static bool app_can_receive(const struct tcp_conn *c)
{
    return c->app_seen && !c->app_closed && !c->closed_cb && !c->dead;
}

/** End of the received data: RCV.NXT, less the peer's FIN once that is in. */
static uint32_t rcv_data_end(const struct tcp_conn *c)
{
    return c->fin_rcvd ? c->rcv_nxt - 1 : c->rcv_nxt;
}

/** Hand the ring's in-order bytes to the app, then the EOF if it is due. */
static void deliver_buffered(struct tcp_conn *c)
{
    while (c->rcv_user != rcv_data_end(c) && !c->dead) {
        if (!app_can_receive(c)) {
            c->rcv_user = rcv_data_end(c); /* nobody will read it */
            break;
        }
        if (c->paused)
            return;
        uint32_t pos = c->rcv_user & (c->rbuf_sz - 1);
        uint32_t n = umin32(rcv_data_end(c) - c->rcv_user, c->rbuf_sz - pos);
        c->rcv_user += n;
        if (c->s.cb && c->s.cb->data)
            c->s.cb->data(&c->s, c->s.ctx, c->rbuf + pos, n);
    }
    if (c->dead)
        return;
    if (c->eof_pending && c->rcv_user == rcv_data_end(c)) {
        c->eof_pending = false;
        notify_closed(c, 0);
        /* The stream is gone; finish our side: FIN after what is queued. */
        c->app_closed = true;
        c->fin_queued = true;
        conn_flush_later(c);
    }
    /* Window update once the app freed a meaningful amount (RFC 1122 SWS). */
    uint32_t edge = c->rcv_nxt + rcv_window(c);
    if (c->rbuf && SEQ_GEQ(edge - c->rcv_adv, umin32(c->rbuf_sz / 2, 2u * c->mss))) {
        c->ack_now = true;
        conn_flush_later(c);
    }
}

static void receive_data(struct tcp_conn *c, const struct tcp_seg *s)
{
    struct mx_tcp_stack *st = c->st;
    uint32_t seq = s->seq, len = s->len;
    const uint8_t *d = s->data;
    if (SEQ_LT(seq, c->rcv_nxt)) {
        uint32_t off = c->rcv_nxt - seq;
        if (off >= len) {
            c->ack_now = true; /* a pure duplicate: tell the peer where we are */
            return;
        }
        d += off;
        len -= off;
        seq = c->rcv_nxt;
    }
    uint32_t right = c->rcv_user + c->rbuf_sz;
    if (SEQ_GT(seq + len, right))
        len = SEQ_GT(right, seq) ? right - seq : 0;
    if (!len) {
        c->ack_now = true;
        return;
    }
    if (seq != c->rcv_nxt) {
        st->stats.tcp_ooo++;
        if (ooo_insert(c, seq, seq + len))
            ring_put(c, seq, d, len);
        else
            st->stats.tcp_ooo_drop++;
        c->ack_now = true; /* duplicate ACK with SACK, at once (RFC 5681 4.2) */
        return;
    }
    if (c->rcv_user == c->rcv_nxt && !c->paused && app_can_receive(c)) {
        /* Zero copy: the app reads the frame in place. */
        c->rcv_nxt += len;
        c->rcv_user += len;
        if (c->s.cb && c->s.cb->data)
            c->s.cb->data(&c->s, c->s.ctx, d, len);
        if (c->dead)
            return;
    } else {
        if (app_can_receive(c))
            ring_put(c, seq, d, len);
        c->rcv_nxt += len;
    }
    bool filled = false;
    while (c->n_ooo && SEQ_LEQ(c->ooo[0].l, c->rcv_nxt)) {
        if (SEQ_GT(c->ooo[0].r, c->rcv_nxt))
            c->rcv_nxt = c->ooo[0].r;
        memmove(&c->ooo[0], &c->ooo[1], (c->n_ooo - 1) * sizeof c->ooo[0]);
        c->n_ooo--;
        filled = true;
    }
    deliver_buffered(c);
    if (c->dead)
        return;
    if (filled || ++c->segs_unacked >= 2 || c->n_ooo) {
        c->ack_now = true;
    } else if (!c->ack_delayed) {
        c->ack_delayed = true;
        c->t_delack = st->now + st->cfg.delack_ms;
    }
}

static void receive_fin(struct tcp_conn *c)
{
    /* The FIN takes a sequence number but is no data: fin_rcvd keeps
     * deliver_buffered() from handing that slot of the ring to the app
     * as one more byte (it did: the echo test sent it back with its FIN,
     * and the kernel, closed by then, answered with a RST). */
    c->rcv_nxt++;
    c->fin_rcvd = true;
    c->ack_now = true;
    switch (c->state) {
    case TCP_SYN_RCVD:
    case TCP_ESTABLISHED:
        c->state = TCP_CLOSE_WAIT;
        c->eof_pending = true;
        deliver_buffered(c);
        break;
    case TCP_FIN_WAIT_1:
        if (c->snd_una == c->snd_end + 1) {
            send_ack(c);
            enter_timewait(c);
        } else {
            c->state = TCP_CLOSING;
        }
        break;
    case TCP_FIN_WAIT_2:
        send_ack(c);
        enter_timewait(c);
        break;
    default:
        break;
    }
}

/** Segment for a synchronized connection (SYN_RCVD and later). */
static void input_synchronized(struct tcp_conn *c, struct tcp_seg *s, struct tcp_listener *l)
{
    struct mx_tcp_stack *st = c->st;
    /* A retransmitted SYN while we wait for the handshake's ACK. The answer
     * echoes this SYN's timestamp, as Linux does: echoing the first one
     * hands the peer an RTT sample that includes its SYN timeout (1 s or
     * more), and its RTO stays seconds long for the whole connection. */
    if (c->state == TCP_SYN_RCVD && (s->flags & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN &&
        s->seq == c->irs) {
        if (c->ts_ok && s->has_ts && SEQ_GEQ(s->tsval, c->ts_recent)) {
            c->ts_recent = s->tsval;
            c->ts_recent_at = st->now;
        }
        tcp_emit(c, c->iss, TH_SYN | TH_ACK, 0);
        return;
    }
    /* PAWS (RFC 7323 5.3). */
    if (c->ts_ok && s->has_ts && !(s->flags & TH_RST) && SEQ_LT(s->tsval, c->ts_recent) &&
        st->now - c->ts_recent_at < TS_24_DAYS_MS) {
        st->stats.tcp_paws_drop++;
        send_ack(c);
        return;
    }
    /* Sequence acceptability (RFC 9293 3.10.7.4 first check). */
    uint32_t wnd = rcv_window(c);
    uint32_t slen = s->len + !!(s->flags & TH_FIN);
    bool ok;
    if (slen == 0)
        ok = wnd == 0 ? s->seq == c->rcv_nxt
                      : SEQ_GEQ(s->seq, c->rcv_nxt) && SEQ_LT(s->seq, c->rcv_nxt + wnd);
    else
        ok = wnd != 0 && ((SEQ_GEQ(s->seq, c->rcv_nxt) && SEQ_LT(s->seq, c->rcv_nxt + wnd)) ||
                          (SEQ_GEQ(s->seq + slen - 1, c->rcv_nxt) &&
                           SEQ_LT(s->seq + slen - 1, c->rcv_nxt + wnd)));
    if (!ok && wnd == 0 && s->seq == c->rcv_nxt)
        ok = true; /* zero-window probe: process its ACK, trim its data */
    /* A segment wholly left of the window (a duplicate; the peer's
     * zero-window probes and keepalives use RCV.NXT - 1) is not
     * acceptable, but its ACK is (RFC 9293 3.10.7.4: "special allowance
     * should be made to accept valid ACKs"; BSD goes on "processing for
     * RST or ACK"). With our window closed the peer's probes are the only
     * segments it sends, so they alone carry the acknowledgment of our
     * retransmissions. It gets an ACK back; its data and FIN are old and
     * ignored below. */
    if (!ok && c->state != TCP_SYN_RCVD && (s->flags & TH_ACK) && !(s->flags & (TH_RST | TH_SYN)) &&
        SEQ_LT(s->seq, c->rcv_nxt) && SEQ_LEQ(s->seq + slen, c->rcv_nxt) &&
        c->rcv_nxt - s->seq <= st->cfg.rcvbuf) {
        ok = true;
        c->ack_now = true;
    }
    if (!ok) {
        if (!(s->flags & TH_RST))
            send_ack(c);
        return;
    }
    /* RST (RFC 5961 3.2): exact match resets, in window earns a challenge. */
    if (s->flags & TH_RST) {
        if (s->seq != c->rcv_nxt) {
            challenge_ack(c);
            return;
        }
        if (c->state == TCP_SYN_RCVD && !c->active) {
            conn_kill(c);
            return;
        }
        st->stats.tcp_aborts++;
        notify_closed(c, c->state == TCP_CLOSE_WAIT ? -EPIPE : -ECONNRESET);
        conn_kill(c);
        return;
    }
    /* SYN in a synchronized state (RFC 5961 4.2): challenge ACK. */
    if (s->flags & TH_SYN) {
        challenge_ack(c);
        return;
    }
    if (!(s->flags & TH_ACK))
        return;
    if (c->state == TCP_SYN_RCVD) {
        if (!SEQ_GT(s->ack, c->iss) || SEQ_GT(s->ack, c->snd_max)) {
            send_rst_reply(st, s);
            return;
        }
        /* Karn: the handshake gives an RTT sample only if the SYN-ACK
         * was not resent (and cookies kept no send time). */
        bool clean = c->backoff == 0 && c->rtt_start;
        uint64_t synack_at = c->rtt_start;
        if (!l || passive_establish(c, l) != 0) {
            send_rst_reply(st, s);
            conn_kill(c);
            return;
        }
        if (c->dead)
            return;
        c->snd_wnd = s->wnd << c->snd_ws;
        c->max_snd_wnd = c->snd_wnd;
        c->snd_wl1 = s->seq;
        c->snd_wl2 = s->ack;
        /* The handshake's own ACK may carry an RTT sample, unless the
         * SYN-ACK was resent (Karn, timestamps included): a peer whose
         * ACK was lost may echo the first SYN-ACK's timestamp, and a
         * sample spanning our SYN-ACK timeouts (1 s, 3 s) made the RTO
         * 3-10 s for the whole connection. */
        if (clean && c->ts_ok && s->has_ts && s->tsecr && ts_now(c) - s->tsecr < 600000)
            rtt_sample(c, ts_now(c) - s->tsecr);
        else if (clean)
            rtt_sample(c, (uint32_t)(st->now - synack_at));
    }
    if (c->ts_ok && s->has_ts && SEQ_LEQ(s->seq, c->rcv_nxt)) {
        c->ts_recent = s->tsval;
        c->ts_recent_at = st->now;
    }
    c->last_rx = st->now;
    c->ka_probes = 0;
    if (st->cfg.keepalive_idle_ms && c->state == TCP_ESTABLISHED)
        c->t_keep = st->now + st->cfg.keepalive_idle_ms;
    if (!process_ack(c, s))
        return;
    if (s->len) {
        switch (c->state) {
        case TCP_ESTABLISHED:
        case TCP_FIN_WAIT_1:
        case TCP_FIN_WAIT_2:
            receive_data(c, s);
            if (c->dead)
                return;
            break;
        default:
            break;
        }
    }
    if ((s->flags & TH_FIN) && s->seq + s->len == c->rcv_nxt)
        receive_fin(c);
    else if ((s->flags & TH_FIN) && SEQ_LT(s->seq + s->len, c->rcv_nxt) &&
             (c->state == TCP_CLOSE_WAIT || c->state == TCP_CLOSING || c->state == TCP_LAST_ACK))
        c->ack_now = true; /* retransmitted FIN */
    if (!c->dead)
        conn_flush_later(c);
}

static void input_syn_sent(struct tcp_conn *c, struct tcp_seg *s)
{
    struct mx_tcp_stack *st = c->st;
    bool ack_ok = false;
    if (s->flags & TH_ACK) {
        if (SEQ_LEQ(s->ack, c->iss) || SEQ_GT(s->ack, c->snd_max)) {
            send_rst_reply(st, s);
            return;
        }
        ack_ok = true;
    }
    if (s->flags & TH_RST) {
        if (ack_ok) {
            notify_closed(c, -ECONNREFUSED);
            conn_kill(c);
        }
        return;
    }
    if (!(s->flags & TH_SYN) || !ack_ok)
        return; /* simultaneous open is not supported: the SYN is ignored */
    bool clean = c->backoff == 0; /* Karn: no RTT sample from a resent SYN */
    c->irs = s->seq;
    c->rcv_nxt = s->seq + 1;
    c->rcv_user = c->rcv_nxt;
    c->rcv_adv = c->rcv_nxt;
    bool ws = s->has_ws;
    apply_syn_options(c, s);
    if (!ws)
        c->rcv_ws = 0;
    c->snd_una = s->ack;
    c->snd_wnd = s->wnd; /* never scaled in a SYN (RFC 7323 2.2) */
    c->max_snd_wnd = c->snd_wnd;
    c->snd_wl1 = s->seq;
    c->snd_wl2 = s->ack;
    c->cwnd = 10u * c->mss;
    c->ssthresh = 0x7fffffff;
    c->recover = c->iss;
    c->backoff = 0;
    c->t_rexmt = 0;
    if (clean && c->ts_ok && s->has_ts && s->tsecr) /* Karn, as for the SYN-ACK */
        rtt_sample(c, ts_now(c) - s->tsecr);
    else if (clean)
        rtt_sample(c, (uint32_t)(st->now - c->rtt_start));
    c->state = TCP_ESTABLISHED;
    if (st->cfg.keepalive_idle_ms)
        c->t_keep = st->now + st->cfg.keepalive_idle_ms;
    c->ack_now = true;
    if (!c->app_closed && c->s.cb && c->s.cb->connected)
        c->s.cb->connected(&c->s, c->s.ctx, 0);
    if (!c->dead)
        conn_flush_later(c);
}

static void input_timewait(struct tcp_conn *c, struct tcp_seg *s, bool *reopen)
{
    struct mx_tcp_stack *st = c->st;
    if (s->flags & TH_RST)
        return; /* RFC 1337: no TIME_WAIT assassination */
    if ((s->flags & (TH_SYN | TH_ACK)) == TH_SYN) {
        /* RFC 6191: a new SYN with newer sequence or timestamp reopens. */
        bool newer = SEQ_GT(s->seq, c->rcv_nxt) ||
                     (c->ts_ok && s->has_ts && SEQ_GT(s->tsval, c->ts_recent));
        if (newer && !c->active) {
            conn_kill(c);
            *reopen = true;
        }
        return;
    }
    if (s->flags & TH_FIN) {
        c->t_2msl = st->now + st->cfg.timewait_ms;
        send_ack(c);
        conn_timer_update(c);
    }
}

static void passive_syn(struct mx_tcp_stack *st, struct tcp_seg *s)
{
    if (st->cfg.syncookies_always || st->stats.syn_rcvd >= st->cfg.syn_backlog) {
        cookie_send(st, s);
        return;
    }
    struct tcp_conn *c = conn_alloc(st);
    if (!c) {
        cookie_send(st, s);
        return;
    }
    c->laddr = s->daddr;
    c->lport = s->dport;
    c->raddr = s->saddr;
    c->rport = s->sport;
    c->irs = s->seq;
    c->rcv_nxt = s->seq + 1;
    c->iss = isn_for(st, c->laddr, c->lport, c->raddr, c->rport);
    c->snd_una = c->iss;
    c->snd_nxt = c->snd_max = c->snd_end = c->iss + 1;
    c->rto = st->cfg.rto_init_ms;
    apply_syn_options(c, s);
    c->snd_wnd = s->wnd;
    c->state = TCP_SYN_RCVD;
    st->stats.syn_rcvd++;
    hash_insert(c);
    c->rtt_start = st->now;
    tcp_emit(c, c->iss, TH_SYN | TH_ACK, 0);
    arm_rexmt(c);
    conn_timer_update(c);
}

/** A bare ACK for a listening port: maybe the answer to one of our cookies. */
static struct tcp_conn *cookie_check(struct mx_tcp_stack *st, struct tcp_seg *s)
{
    uint32_t cookie = s->ack - 1, irs = s->seq - 1;
    uint64_t t = st->now / 64000;
    bool good = false;
    for (uint64_t d = 0; d < 2 && d <= t; d++) {
        uint64_t tt = t - d;
        if (((cookie >> 3) & 0x1f) == (tt & 0x1f) &&
            (cookie_hash(st, s, irs, tt) & 0xffffff00u) == (cookie & 0xffffff00u)) {
            good = true;
            break;
        }
    }
    if (!good) {
        st->stats.tcp_syn_cookie_bad++;
        return NULL;
    }
    struct tcp_conn *c = conn_alloc(st);
    if (!c)
        return NULL;
    st->stats.tcp_syn_cookie_ok++;
    c->laddr = s->daddr;
    c->lport = s->dport;
    c->raddr = s->saddr;
    c->rport = s->sport;
    c->irs = irs;
    c->rcv_nxt = s->seq;
    c->iss = cookie;
    c->snd_una = cookie;
    c->snd_nxt = c->snd_max = c->snd_end = cookie + 1;
    struct tcp_seg opt = {0};
    opt.has_mss = true;
    opt.mss = cookie_mss[cookie & 7];
    if (s->has_ts) {
        uint8_t ws = s->tsecr & 0xf;
        opt.has_ts = true;
        opt.tsval = s->tsval;
        opt.sack_ok = (s->tsecr >> 4) & 1;
        if (ws != 0xf) {
            opt.has_ws = true;
            opt.ws = ws;
        }
    }
    apply_syn_options(c, &opt);
    c->state = TCP_SYN_RCVD;
    st->stats.syn_rcvd++;
    hash_insert(c);
    return c;
}

void tcp_input(struct mx_tcp_stack *st, const uint8_t *iph, const uint8_t *th, size_t len,
               unsigned rx_flags)
{
    struct tcp_seg s;
    st->stats.tcp_rx++;
    if (parse_segment(&s, iph, th, len) != 0) {
        st->stats.tcp_bad_hdr++;
        return;
    }
    if (!(rx_flags & MX_TCP_RX_L4_CSUM_GOOD) &&
        rte_ipv4_udptcp_cksum_verify((const struct rte_ipv4_hdr *)iph, th) != 0) {
        st->stats.tcp_bad_csum++;
        return;
    }
    struct tcp_listener *l = listener_find(st, s.dport);
    struct tcp_conn *c = conn_lookup(st, s.daddr, s.dport, s.saddr, s.sport);
    if (c && c->state == TCP_TIME_WAIT) {
        bool reopen = false;
        input_timewait(c, &s, &reopen);
        if (!reopen)
            goto out;
        c = NULL;
    }
    if (!c) {
        if (!l) {
            st->stats.tcp_no_port++;
            send_rst_reply(st, &s);
            goto out;
        }
        if (s.flags & TH_RST)
            goto out;
        if ((s.flags & (TH_SYN | TH_ACK | TH_FIN)) == TH_SYN) {
            passive_syn(st, &s);
            goto out;
        }
        if ((s.flags & (TH_SYN | TH_ACK)) == TH_ACK) {
            c = cookie_check(st, &s);
            if (!c) {
                send_rst_reply(st, &s);
                goto out;
            }
        } else {
            st->stats.tcp_syn_drop++;
            goto out;
        }
    }
    if (c->state == TCP_SYN_SENT)
        input_syn_sent(c, &s);
    else
        input_synchronized(c, &s, l);
out:
    return;
}

void tcp_reap(struct mx_tcp_stack *st)
{
    reap(st);
}

void tcp_icmp_unreach(struct mx_tcp_stack *st, uint8_t code, uint16_t mtu, const uint8_t *inner,
                      size_t len)
{
    size_t ihl = (size_t)(inner[0] & 0xf) * 4;
    if (len < ihl + 8)
        return;
    const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)inner;
    const uint8_t *th = inner + ihl;
    uint16_t sport, dport;
    uint32_t seq;
    memcpy(&sport, th, 2);
    memcpy(&dport, th + 2, 2);
    memcpy(&seq, th + 4, 4);
    seq = rte_be_to_cpu_32(seq);
    if (ip->src_addr != st->cfg.addr)
        return;
    struct tcp_conn *c = conn_lookup(st, ip->src_addr, sport, ip->dst_addr, dport);
    if (!c || c->state == TCP_TIME_WAIT)
        return;
    /* RFC 5927: only believe ICMP quoting data we have in flight. */
    if (SEQ_LT(seq, c->snd_una) || SEQ_GEQ(seq, c->snd_max))
        return;
    if (code == 4) {
        if (mtu == 0 || mtu >= c->pmtu)
            return;
        if (mtu < MIN_PMTU)
            mtu = MIN_PMTU;
        c->pmtu = mtu;
        uint16_t old = c->mss;
        set_mss(c);
        if (c->mss < old && c->state >= TCP_ESTABLISHED) {
            c->snd_nxt = c->snd_una; /* resend in smaller pieces */
            tcp_output(c);
        }
    } else if (c->state == TCP_SYN_SENT && (code == 2 || code == 3)) {
        notify_closed(c, -ECONNREFUSED);
        conn_kill(c);
    }
}

/* ---------------------------------------------------------------------- */
/* Stream interface */

static int stream_write(struct mx_stream *s, const void *buf, size_t len)
{
    struct tcp_conn *c = (struct tcp_conn *)s;
    if (c->app_closed || c->closed_cb || c->dead || c->fin_queued || !c->sbuf)
        return -EPIPE;
    uint32_t used = snd_buffered(c);
    if (len > c->sbuf_sz - used) {
        c->want_drain = true;
        return -ENOBUFS;
    }
    uint32_t pos = c->snd_end & (c->sbuf_sz - 1);
    uint32_t first = umin32((uint32_t)len, c->sbuf_sz - pos);
    memcpy(c->sbuf + pos, buf, first);
    if (first < len)
        memcpy(c->sbuf, (const uint8_t *)buf + first, len - first);
    c->snd_end += (uint32_t)len;
    c->wrote = true;
    if (used + len > c->sbuf_sz / 2)
        c->want_drain = true;
    conn_flush_later(c);
    return 0;
}

static void stream_close(struct mx_stream *s)
{
    struct tcp_conn *c = (struct tcp_conn *)s;
    if (c->app_closed || c->closed_cb || c->dead)
        return;
    c->app_closed = true;
    c->rcv_user = c->rcv_nxt; /* unread data is dropped */
    if (c->state != TCP_SYN_SENT)
        c->fin_queued = true;
    conn_flush_later(c);
}

static void stream_pause(struct mx_stream *s, bool paused)
{
    struct tcp_conn *c = (struct tcp_conn *)s;
    c->paused = paused;
    if (!paused)
        conn_flush_later(c);
}

static void stream_set_timer(struct mx_stream *s, uint64_t ms)
{
    struct tcp_conn *c = (struct tcp_conn *)s;
    if (c->dead)
        return;
    c->t_app = ms ? c->st->now + ms : 0;
    conn_timer_update(c);
}

static const struct mx_stream_ops tcp_stream_ops = {
    .write = stream_write,
    .close = stream_close,
    .pause = stream_pause,
    .set_timer = stream_set_timer,
};

/* ---------------------------------------------------------------------- */
/* Public API */

void mx_tcp_config_default(struct mx_tcp_config *c)
{
    memset(c, 0, sizeof *c);
    c->prefix_len = 24;
    c->mtu = 1500;
    c->max_conns = 16384;
    c->syn_backlog = 1024;
    c->max_timewait = 4096;
    c->rcvbuf = 256 * 1024;
    c->sndbuf = 256 * 1024;
    c->mem_limit = 1ULL << 30;
    c->ooo_ranges = 8;
    c->rto_init_ms = 1000;
    c->rto_min_ms = 200;
    c->rto_max_ms = 60000;
    c->max_retries = 12;
    c->syn_retries = 5;
    c->delack_ms = 40;
    c->timewait_ms = 60000;
    c->fin_wait2_ms = 60000;
    c->keepalive_idle_ms = 0;
    c->keepalive_intvl_ms = 75000;
    c->keepalive_probes = 9;
    c->challenge_ack_limit = 1000;
    c->arp_timeout_ms = 300000;
}

static bool pow2(uint32_t v)
{
    return v && !(v & (v - 1));
}

int mx_tcp_stack_create(const struct mx_tcp_config *cfg, const struct mx_tcp_tx *tx,
                        struct mx_tcp_stack **out)
{
    if (!cfg || !tx || !tx->alloc || !tx->send || !tx->drop || !pow2(cfg->rcvbuf) ||
        !pow2(cfg->sndbuf) || cfg->rcvbuf < 4096 || cfg->sndbuf < 4096 || cfg->max_conns == 0 ||
        cfg->mtu < 576 || cfg->prefix_len > 32 || cfg->ooo_ranges > MAX_OOO ||
        cfg->rto_min_ms == 0 || cfg->rto_max_ms < cfg->rto_min_ms || cfg->max_conns > (1u << 24))
        return -EINVAL;
    struct mx_tcp_stack *st = calloc(1, sizeof *st);
    if (!st)
        return -ENOMEM;
    st->cfg = *cfg;
    st->tx = *tx;
    st->netmask = cfg->prefix_len ? rte_cpu_to_be_32(~0u << (32 - cfg->prefix_len)) : 0;
    static const uint8_t zero[16];
    if (memcmp(cfg->secret, zero, 16) != 0)
        memcpy(st->secret, cfg->secret, 16);
    else if (getrandom(st->secret, 16, 0) != 16) {
        free(st);
        return -EIO;
    }
    uint32_t hs = 1;
    while (hs < cfg->max_conns * 2)
        hs <<= 1;
    st->hmask = hs - 1;
    st->htab = calloc(hs, sizeof *st->htab);
    st->conns = calloc(cfg->max_conns, sizeof *st->conns);
    st->cookie_rtx = calloc(COOKIE_RTX_SLOTS, sizeof *st->cookie_rtx);
    if (!st->htab || !st->conns || !st->cookie_rtx) {
        free(st->htab);
        free(st->conns);
        free(st->cookie_rtx);
        free(st);
        return -ENOMEM;
    }
    for (uint32_t i = cfg->max_conns; i-- > 0;) {
        st->conns[i].lnext = st->free_list;
        st->free_list = &st->conns[i];
    }
    st->tw_head.lnext = st->tw_head.lprev = &st->tw_head;
    st->ephemeral_next = 32768 + (st->secret[3] << 8 | st->secret[4]) % 28232;
    wheel_init(&st->wheel, 0);
    *out = st;
    return 0;
}

void mx_tcp_stack_destroy(struct mx_tcp_stack *st)
{
    if (!st)
        return;
    for (uint32_t i = 0; i < st->cfg.max_conns; i++) {
        free(st->conns[i].rbuf);
        free(st->conns[i].sbuf);
    }
    for (unsigned i = 0; i < ARP_SLOTS; i++)
        if (st->arp[i].pending)
            st->tx.drop(st->tx.arg, st->arp[i].pending);
    free(st->htab);
    free(st->conns);
    free(st->cookie_rtx);
    free(st);
}

int mx_tcp_listen(struct mx_tcp_stack *st, uint16_t port, mx_accept_fn fn, void *arg)
{
    uint16_t p = rte_cpu_to_be_16(port);
    if (!fn || !port)
        return -EINVAL;
    if (listener_find(st, p))
        return -EADDRINUSE;
    for (unsigned i = 0; i < LISTEN_MAX; i++) {
        if (!st->listeners[i].fn) {
            st->listeners[i] = (struct tcp_listener){.port = p, .fn = fn, .arg = arg};
            return 0;
        }
    }
    return -ENOSPC;
}

int mx_tcp_connect(struct mx_tcp_stack *st, uint32_t raddr, uint16_t rport,
                   const struct mx_stream_cb *cb, void *ctx, struct mx_stream **out)
{
    uint16_t rp = rte_cpu_to_be_16(rport);
    uint16_t lp = 0;
    for (unsigned i = 0; i < 28232; i++) {
        uint16_t cand = (uint16_t)(32768 + (st->ephemeral_next++ % 28232));
        uint16_t be = rte_cpu_to_be_16(cand);
        if (listener_find(st, be) || conn_lookup(st, st->cfg.addr, be, raddr, rp))
            continue;
        if (st->cfg.port_ok && !st->cfg.port_ok(st->cfg.port_ok_arg, st->cfg.addr, be, raddr, rp))
            continue;
        lp = be;
        break;
    }
    if (!lp)
        return -EADDRNOTAVAIL;
    struct tcp_conn *c = conn_alloc(st);
    if (!c)
        return -ENOMEM;
    if (buffers_alloc(c) != 0) {
        memset(c, 0, sizeof *c);
        c->lnext = st->free_list;
        st->free_list = c;
        st->stats.conns--;
        return -ENOBUFS;
    }
    c->active = true;
    c->laddr = st->cfg.addr;
    c->lport = lp;
    c->raddr = raddr;
    c->rport = rp;
    c->iss = isn_for(st, c->laddr, c->lport, c->raddr, c->rport);
    c->snd_una = c->iss;
    c->snd_nxt = c->snd_max = c->snd_end = c->iss + 1;
    c->rcv_ws = our_wscale(st);
    c->rto = st->cfg.rto_init_ms;
    c->peer_mss = DEFAULT_MSS;
    set_mss(c);
    c->state = TCP_SYN_SENT;
    c->rtt_start = st->now;
    stream_init(c);
    c->app_seen = true;
    c->s.cb = cb;
    c->s.ctx = ctx;
    hash_insert(c);
    st->stats.tcp_connects++;
    tcp_emit(c, c->iss, TH_SYN, 0);
    arm_rexmt(c);
    conn_timer_update(c);
    *out = &c->s;
    return 0;
}

static void timer_fire(struct wheel_node *n, void *arg)
{
    (void)arg;
    struct tcp_conn *c = (struct tcp_conn *)((uint8_t *)n - offsetof(struct tcp_conn, tn));
    if (!c->dead)
        conn_timer_fire(c);
}

void mx_tcp_poll(struct mx_tcp_stack *st, uint64_t now_ms)
{
    if (now_ms > st->now)
        st->now = now_ms;
    wheel_run(&st->wheel, st->now, timer_fire, NULL);
    cookie_timers(st);
    if (st->now >= st->arp_next) {
        st->arp_next = st->now + 100;
        net_arp_timers(st);
    }
    /* Flush: deliver resumed data, send writes, FINs and owed ACKs. The
     * list may grow while we walk it (callbacks write), so pop one by one. */
    while (st->flush_head) {
        struct tcp_conn *c = st->flush_head;
        st->flush_head = c->fnext;
        c->fnext = NULL;
        c->in_flush = false;
        if (c->dead) {
            c->lnext = st->dead_head;
            st->dead_head = c;
            continue;
        }
        if (c->app_closed && c->state == TCP_SYN_SENT) {
            notify_closed(c, 0); /* close() before the handshake finished */
            conn_kill(c);
            continue;
        }
        if (!c->paused && c->rbuf && (c->rcv_user != rcv_data_end(c) || c->eof_pending))
            deliver_buffered(c);
        if (!c->dead)
            tcp_output(c);
    }
    reap(st);
}

uint64_t mx_tcp_next_timeout(struct mx_tcp_stack *st, uint64_t now_ms)
{
    if (st->flush_head)
        return 0;
    if (!st->wheel.count && st->cookie_head == st->cookie_tail)
        return 1000;
    /* Scan ahead at most 1000 slots for the earliest deadline. */
    for (uint64_t t = now_ms + 1; t <= now_ms + 1000; t++) {
        for (struct wheel_node *n = st->wheel.slot[t & (WHEEL_SLOTS - 1)]; n; n = n->next)
            if (n->expire <= t)
                return t - now_ms;
    }
    return 1000;
}

void mx_tcp_stack_set_worker(struct mx_tcp_stack *st, struct mx_worker *w)
{
    st->cfg.worker = w;
}

const struct mx_tcp_stats *mx_tcp_stack_stats(const struct mx_tcp_stack *st)
{
    return &st->stats;
}

/* Symmetric Toeplitz key: the 16-bit pattern 0x6d5a repeated makes
 * hash(src, dst) == hash(dst, src), so both directions meet on one core. */
const uint8_t mx_tcp_rss_key[40] = {
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
};

unsigned mx_tcp_rss_queue(uint32_t saddr, uint16_t sport, uint32_t daddr, uint16_t dport,
                          unsigned nb_queues)
{
    if (nb_queues <= 1)
        return 0;
    uint32_t tuple[3];
    tuple[0] = rte_be_to_cpu_32(saddr);
    tuple[1] = rte_be_to_cpu_32(daddr);
    tuple[2] = (uint32_t)rte_be_to_cpu_16(sport) << 16 | rte_be_to_cpu_16(dport);
    uint32_t h = rte_softrss(tuple, 3, mx_tcp_rss_key);
    /* ethdev's default RETA has 128 entries filled round robin. */
    return (h & 127) % nb_queues;
}
