/*
 * tcp_internal.h - data model of the userspace stack, shared by the files of
 * tcpstack/ only: the per-core stack, the connection (TCB), the timer wheel
 * and the ARP cache.
 */
#ifndef MX_TCP_INTERNAL_H
#define MX_TCP_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "tcpstack/tcpstack.h"

/* ---------------------------------------------------------------------- */
/* Timer wheel: 1 ms slots; entries beyond one turn wait in their slot and
 * are skipped until due, so any deadline fits and insertion is O(1). */

#define WHEEL_SLOTS 4096u

struct wheel_node {
    struct wheel_node *next, **pprev;
    uint64_t expire;
};

struct wheel {
    struct wheel_node *slot[WHEEL_SLOTS];
    uint64_t last; /**< every slot up to this time has been run */
    uint32_t count;
};

void wheel_init(struct wheel *w, uint64_t now);
void wheel_add(struct wheel *w, struct wheel_node *n, uint64_t expire);
void wheel_del(struct wheel *w, struct wheel_node *n);
static inline bool wheel_pending(const struct wheel_node *n)
{
    return n->pprev != NULL;
}
/** Unlink and fire() every node due at or before now, one at a time. */
void wheel_run(struct wheel *w, uint64_t now, void (*fire)(struct wheel_node *n, void *arg),
               void *arg);

/* ---------------------------------------------------------------------- */
/* ARP cache */

#define ARP_SLOTS 1024u
#define ARP_PROBE 16u

enum arp_state { ARP_FREE = 0, ARP_INCOMPLETE, ARP_REACHABLE, ARP_PERMANENT };

struct arp_entry {
    uint32_t ip;
    uint8_t mac[6];
    uint8_t state;
    uint8_t tries;
    uint64_t expires;  /**< REACHABLE: until; INCOMPLETE: next request */
    void *pending;     /**< one frame waiting for resolution */
    uint8_t *pending_frame;
    uint32_t pending_len;
    unsigned pending_offload;
};

/* ---------------------------------------------------------------------- */
/* TCP */

enum tcp_state {
    TCP_CLOSED = 0,
    TCP_LISTEN,
    TCP_SYN_SENT,
    TCP_SYN_RCVD,
    TCP_ESTABLISHED,
    TCP_FIN_WAIT_1,
    TCP_FIN_WAIT_2,
    TCP_CLOSING,
    TCP_TIME_WAIT,
    TCP_CLOSE_WAIT,
    TCP_LAST_ACK,
};

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_PSH 0x08
#define TH_ACK 0x10
#define TH_URG 0x20

#define MAX_OOO 16
#define MAX_SACK_IN 4
#define MAX_SACKED 8 /**< ranges of the peer's SACK scoreboard */

/** A parsed incoming segment. */
struct tcp_seg {
    uint32_t seq, ack;
    uint32_t wnd; /**< raw 16-bit window */
    uint8_t flags;
    const uint8_t *data;
    uint32_t len;
    /* options */
    bool has_mss, has_ws, has_ts, sack_ok;
    uint16_t mss;
    uint8_t ws;
    uint32_t tsval, tsecr;
    uint8_t n_sack;
    uint32_t sack[MAX_SACK_IN][2];
    /* addressing, network order */
    uint32_t saddr, daddr;
    uint16_t sport, dport;
};

struct ooo_range {
    uint32_t l, r;  /**< [l, r) */
    uint32_t stamp; /**< receive queue: when a segment last landed in it */
};

struct tcp_conn {
    struct mx_stream s; /**< must stay first: streams are cast to conns */
    struct mx_tcp_stack *st;
    struct tcp_conn *hnext;      /**< 4-tuple hash chain */
    struct tcp_conn *lnext, *lprev; /**< free list / TIME_WAIT list / flush list */
    struct tcp_conn *fnext;      /**< pending-output list */
    struct wheel_node tn;

    uint32_t laddr, raddr;
    uint16_t lport, rport;
    uint8_t state;
    bool active;       /**< we opened it */
    bool app_seen;     /**< accept()/connect handed it to the app */
    bool app_closed;   /**< app called close(): no callbacks but closed() */
    bool closed_cb;    /**< closed()/connected(err) delivered; stream gone */
    bool paused;
    bool fin_rcvd;     /**< peer FIN consumed into rcv_nxt */
    bool eof_pending;  /**< deliver closed(0) once buffered data is delivered */
    bool in_flush;     /**< on the stack's flush list */
    bool ack_now, ack_delayed;
    bool ts_ok, sack_ok, ws_ok;
    bool in_recovery;
    bool dead;         /**< freed at the end of the current event */
    bool want_drain;   /**< a write filled the buffer: call drained() later */
    bool wrote;        /**< data written since the last drained() */
    bool persist;      /**< rexmt timer is the persist (zero window) timer */

    /* send side */
    uint32_t iss, snd_una, snd_nxt, snd_max, snd_wnd, snd_wl1, snd_wl2, max_snd_wnd;
    uint32_t snd_end;   /**< sequence number after the last byte written */
    uint8_t snd_ws, rcv_ws;
    uint16_t peer_mss, mss; /**< mss: payload bytes per segment, options excluded */
    uint16_t pmtu;
    uint32_t cwnd, ssthresh, recover;
    uint32_t rxt_next; /**< in recovery: holes below this were resent already */
    uint8_t n_sacked;
    struct ooo_range sacked[MAX_SACKED]; /**< what the peer SACKed above snd_una, sorted */
    uint8_t dupacks;
    uint8_t backoff;
    uint8_t ka_probes;
    bool fin_queued;    /**< app closed: FIN at snd_end */
    bool rtt_timing;
    uint32_t rtt_seq;
    uint64_t rtt_start;
    uint32_t srtt, rttvar, rto; /**< ms; srtt 0 = no sample yet */
    uint8_t *sbuf;
    uint32_t sbuf_sz;

    /* receive side */
    uint32_t irs, rcv_nxt, rcv_user, rcv_adv;
    uint8_t *rbuf;
    uint32_t rbuf_sz;
    uint8_t n_ooo;
    uint32_t ooo_clock; /**< stamps of the out-of-order ranges */
    struct ooo_range ooo[MAX_OOO];
    uint8_t segs_unacked;
    uint32_t ts_recent;
    uint64_t ts_recent_at;
    uint32_t ts_base;   /**< our TS clock = now_ms + ts_base */

    /* timers, absolute ms; 0 = off */
    uint64_t t_rexmt, t_delack, t_keep, t_app, t_2msl;
    uint64_t last_rx;
};

#define LISTEN_MAX 16

struct tcp_listener {
    uint16_t port; /**< network order; 0 = free */
    mx_accept_fn fn;
    void *arg;
};

/** Compact record of a cookie SYN-ACK, to resend it once if the ACK is lost. */
struct cookie_rtx {
    uint32_t laddr, raddr, iss, irs, tsval, tsecr;
    uint16_t lport, rport, mss;
    uint8_t ws, flags, tries;
    uint64_t due;
};
#define COOKIE_RTX_SLOTS 1024u

struct mx_tcp_stack {
    struct mx_tcp_config cfg;
    struct mx_tcp_tx tx;
    struct mx_tcp_stats stats;
    uint64_t now;
    uint32_t netmask;
    uint8_t secret[16];

    struct wheel wheel;

    struct tcp_conn *conns; /**< cfg.max_conns slots */
    struct tcp_conn *free_list;
    struct tcp_conn **htab;
    uint32_t hmask;
    struct tcp_conn tw_head;    /**< TIME_WAIT list, oldest first */
    struct tcp_conn *flush_head; /**< conns with output or events pending */
    struct tcp_conn *dead_head;
    uint32_t ephemeral_next;
    uint64_t next_stream_id;

    struct tcp_listener listeners[LISTEN_MAX];

    uint64_t challenge_sec;
    uint32_t challenge_count;

    struct cookie_rtx *cookie_rtx;
    uint32_t cookie_head, cookie_tail; /**< ring: [head, tail) live */

    struct arp_entry arp[ARP_SLOTS];
    uint64_t ip_id;
    uint64_t arp_next; /**< next ARP cache sweep */
};

/* net.c: Ethernet, ARP, IPv4, ICMP */
void net_ip_input(struct mx_tcp_stack *st, const uint8_t *ip, size_t len, unsigned rx_flags);
void net_arp_input(struct mx_tcp_stack *st, const uint8_t *arp, size_t len);
/**
 * Allocate a frame with room for an IPv4 header and l4len bytes behind it;
 * returns a pointer to the L4 header. Finish with net_ip_send().
 */
uint8_t *net_ip_alloc(struct mx_tcp_stack *st, size_t l4len, void **handle);
/** Fill Ethernet + IPv4 headers, checksums, and send (or park for ARP). */
void net_ip_send(struct mx_tcp_stack *st, void *handle, uint8_t *l4, size_t l4len,
                 uint32_t daddr, uint8_t proto, bool tcp);
void net_arp_timers(struct mx_tcp_stack *st);

/* tcp.c */
void tcp_input(struct mx_tcp_stack *st, const uint8_t *iph, const uint8_t *th, size_t len,
               unsigned rx_flags);
/** Return dead connections' slots to the free list (top level only). */
void tcp_reap(struct mx_tcp_stack *st);
void tcp_icmp_unreach(struct mx_tcp_stack *st, uint8_t code, uint16_t mtu, const uint8_t *inner,
                      size_t len);

/* isn.c */
uint64_t mx_siphash24(const uint8_t key[16], const void *data, size_t len);

#endif
