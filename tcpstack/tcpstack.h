/*
 * tcpstack.h - mxgate's userspace TCP/IPv4 stack (Ethernet, ARP, IPv4, ICMP,
 * TCP per RFC 9293) and the DPDK port backend that feeds it.
 *
 * One struct mx_tcp_stack per worker core, shared with nobody: frames go in
 * with mx_tcp_input(), frames come out through the struct mx_tcp_tx callbacks,
 * timers run from mx_tcp_poll(). The stack knows nothing about NICs, so the
 * unit tests drive it with crafted frames; dataplane/dpdk.c drives it with
 * mbufs. Connections are struct mx_stream objects (dataplane/dataplane.h), so
 * the SMTP engine does not know which transport carries a session.
 *
 * Addresses and ports in this API are in network byte order unless a name
 * says otherwise.
 */
#ifndef MX_TCPSTACK_H
#define MX_TCPSTACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataplane/dataplane.h"

struct mx_tcp_stack;

/* ---------------------------------------------------------------------- */
/* Configuration                                                            */

/** Ask the TX side to fill these checksums in hardware (send() flags). */
#define MX_TCP_TX_OFFLOAD_IP 0x1u
#define MX_TCP_TX_OFFLOAD_TCP 0x2u

/** Receive flags for mx_tcp_input(): the NIC has verified these checksums. */
#define MX_TCP_RX_IP_CSUM_GOOD 0x1u
#define MX_TCP_RX_L4_CSUM_GOOD 0x2u

/** Frame output, provided by the port backend (or a test). */
struct mx_tcp_tx {
    /**
     * Get a buffer for one frame of len bytes.
     * @return pointer to write the frame to (and *handle set), or NULL when
     *         no buffer is available (the stack counts it and carries on).
     */
    uint8_t *(*alloc)(void *arg, size_t len, void **handle);
    /** Send the frame built in handle; len is its final length. Takes it. */
    void (*send)(void *arg, void *handle, size_t len, unsigned offload);
    /** Give back a buffer that will not be sent. */
    void (*drop)(void *arg, void *handle);
    void *arg;
};

/**
 * Decides whether a locally chosen 4-tuple would be steered back to this
 * stack's core by the NIC (RSS), for active opens. NULL accepts any port.
 */
typedef bool (*mx_tcp_port_ok_fn)(void *arg, uint32_t laddr, uint16_t lport, uint32_t raddr,
                                  uint16_t rport);

struct mx_tcp_config {
    uint32_t addr;        /**< our IPv4 address */
    uint8_t prefix_len;   /**< on-link prefix, e.g. 24 */
    uint32_t gateway;     /**< next hop for off-link peers; 0 = none */
    uint8_t mac[6];       /**< our Ethernet address */
    uint16_t mtu;         /**< IP MTU, default 1500 */
    unsigned stack_id;    /**< goes into stream ids (worker index) */
    struct mx_worker *worker; /**< put in every stream's ->worker; may be NULL */

    uint32_t max_conns;    /**< connection slots, TIME_WAIT included */
    uint32_t syn_backlog;  /**< half-open connections before SYN cookies */
    uint32_t max_timewait; /**< TIME_WAIT entries kept; the oldest is recycled */
    uint32_t rcvbuf;       /**< per-connection receive buffer, power of two */
    uint32_t sndbuf;       /**< per-connection send buffer, power of two */
    uint64_t mem_limit;    /**< all connection buffers of this stack, bytes */
    uint32_t ooo_ranges;   /**< out-of-order ranges kept per connection (<= 16) */

    uint32_t rto_init_ms, rto_min_ms, rto_max_ms;
    unsigned max_retries;  /**< data retransmissions before the connection aborts */
    unsigned syn_retries;  /**< SYN / SYN-ACK retransmissions */
    uint32_t delack_ms;    /**< delayed ACK timeout */
    uint32_t timewait_ms;  /**< 2*MSL */
    uint32_t fin_wait2_ms; /**< orphaned FIN_WAIT_2 lifetime */
    uint32_t keepalive_idle_ms; /**< 0 = keepalive off */
    uint32_t keepalive_intvl_ms;
    unsigned keepalive_probes;
    uint32_t challenge_ack_limit; /**< RFC 5961 challenge ACKs per second */
    uint32_t arp_timeout_ms;
    bool syncookies_always; /**< answer every SYN with a cookie (tests) */
    bool tx_csum_offload;   /**< port fills IP and TCP checksums */
    uint8_t secret[16];     /**< ISN / SYN cookie key; all-zero = random */

    mx_tcp_port_ok_fn port_ok;
    void *port_ok_arg;
};

/** Fill c with the defaults (documented in docs/TCPSTACK.md). */
void mx_tcp_config_default(struct mx_tcp_config *c);

/* ---------------------------------------------------------------------- */
/* Stack                                                                    */

/**
 * Create one stack instance (one per worker core).
 * @param c   configuration; copied
 * @param tx  frame output; copied
 * @param out the new stack
 * @return 0, -EINVAL for a bad configuration, -ENOMEM
 */
int mx_tcp_stack_create(const struct mx_tcp_config *c, const struct mx_tcp_tx *tx,
                        struct mx_tcp_stack **out);

/** Free the stack and every connection in it, without callbacks or packets. */
void mx_tcp_stack_destroy(struct mx_tcp_stack *st);

/**
 * Accept connections on a local TCP port.
 * @param port  host byte order
 * @param fn    called for each established connection; must bind or close
 * @return 0, -EADDRINUSE, -ENOSPC (16 listeners at most)
 */
int mx_tcp_listen(struct mx_tcp_stack *st, uint16_t port, mx_accept_fn fn, void *arg);

/**
 * Active open to raddr:rport (rport host byte order). The source port is one
 * that port_ok() accepts. cb->connected() reports the result later; on
 * failure (-ECONNREFUSED, -ETIMEDOUT, -EHOSTUNREACH) the stream is freed
 * after connected() returns and no closed() follows.
 * @return 0 with the stream in *out, -EADDRNOTAVAIL, -ENOMEM, -ENOBUFS
 */
int mx_tcp_connect(struct mx_tcp_stack *st, uint32_t raddr, uint16_t rport,
                   const struct mx_stream_cb *cb, void *ctx, struct mx_stream **out);

/**
 * Process one received Ethernet frame. Payload bytes are handed to data()
 * callbacks in place (zero copy) when they arrive in order; the frame may be
 * freed once this returns.
 * @param rx_flags MX_TCP_RX_* checksum flags from the NIC
 */
void mx_tcp_input(struct mx_tcp_stack *st, const uint8_t *frame, size_t len, uint64_t now_ms,
                  unsigned rx_flags);

/**
 * Run expired timers and send what writes and ACKs have queued. Call once per
 * loop iteration, after the RX burst.
 */
void mx_tcp_poll(struct mx_tcp_stack *st, uint64_t now_ms);

/** Milliseconds until the next timer, capped at 1000 (for sleeping loops). */
uint64_t mx_tcp_next_timeout(struct mx_tcp_stack *st, uint64_t now_ms);

/** Set the worker pointer that new streams carry in ->worker. */
void mx_tcp_stack_set_worker(struct mx_tcp_stack *st, struct mx_worker *w);

/** Send a gratuitous ARP for our address (at start and after a change). */
void mx_tcp_announce(struct mx_tcp_stack *st);

/** Add a permanent ARP entry (tests, static neighbours). */
int mx_tcp_arp_add(struct mx_tcp_stack *st, uint32_t ip, const uint8_t mac[6]);

/** Per-stack counters; plain integers, read only by the owning core or tests. */
struct mx_tcp_stats {
    uint64_t rx_frames, rx_bad, rx_other, rx_not_ours;
    uint64_t arp_rx, arp_tx, arp_pending_drop;
    uint64_t ip_bad_csum, ip_frag_drop, ip_ttl_drop, icmp_echo, icmp_pmtu, icmp_other;
    uint64_t tcp_rx, tcp_tx, tcp_bad_csum, tcp_bad_hdr, tcp_no_port, tcp_rst_tx;
    uint64_t tcp_retrans, tcp_rto, tcp_fast_retrans, tcp_dupack, tcp_ooo, tcp_ooo_drop;
    uint64_t tcp_sack_retrans; /**< holes resent on duplicate ACKs, found from SACK blocks */
    uint64_t tcp_challenge_ack, tcp_syn_cookie_tx, tcp_syn_cookie_ok, tcp_syn_cookie_bad;
    uint64_t tcp_syn_drop, tcp_accepts, tcp_connects, tcp_timewait_recycled;
    uint64_t tcp_paws_drop, tcp_zwp, tcp_keepalive, tcp_aborts, tcp_mem_drop;
    uint64_t tx_nobuf;
    uint32_t conns, syn_rcvd, timewait;
    uint64_t mem_used;
};

/** The stack's counters. */
const struct mx_tcp_stats *mx_tcp_stack_stats(const struct mx_tcp_stack *st);

/**
 * RSS queue that the symmetric Toeplitz hash of this IPv4/TCP 4-tuple selects,
 * with DPDK's default redirection table (entry i -> queue i % nb_queues).
 * Same result for both directions of a flow (the key is symmetric).
 */
unsigned mx_tcp_rss_queue(uint32_t saddr, uint16_t sport, uint32_t daddr, uint16_t dport,
                          unsigned nb_queues);

/** The 40-byte symmetric RSS key used by the port and by mx_tcp_rss_queue(). */
extern const uint8_t mx_tcp_rss_key[40];

/* ---------------------------------------------------------------------- */
/* DPDK port backend (dataplane/dpdk.c)                                     */

/** Seeded fault injection on the port, both directions. Off when all 0. */
struct mx_dpdk_impair {
    double drop;      /**< probability 0..1 */
    double reorder;   /**< probability a frame is held back behind the next */
    double duplicate; /**< probability a frame is sent twice */
    uint32_t delay_ms;
    uint64_t seed;
};

struct mx_dpdk_params {
    uint16_t port_id;      /**< ethdev port, usually 0 */
    unsigned nb_queues;    /**< one RX/TX queue pair per worker */
    uint32_t addr, gateway; /**< network byte order */
    uint8_t prefix_len;
    struct mx_dpdk_impair impair;
    struct mx_tcp_config tcp; /**< base stack config; addr/mac/mtu filled in */
};

/** Per-queue counters of the port backend. */
struct mx_dpdk_queue_stats {
    uint64_t rx, tx, rx_drop, tx_drop, nombuf;
    uint64_t impair_drop, impair_dup, impair_reorder, impair_delay;
    uint64_t steered; /**< frames handed to another queue's core (software RSS) */
};

/**
 * Configure and start the port after rte_eal_init(): one mbuf pool per NUMA
 * socket, nb_queues RX/TX queue pairs, symmetric RSS when the port has it,
 * checksum offloads when offered, and one mx_tcp_stack per queue.
 * @return 0 or -errno
 */
int mx_dpdk_init(const struct mx_dpdk_params *p);

/** The stack of queue q (for mx_tcp_listen / mx_tcp_connect). */
struct mx_tcp_stack *mx_dpdk_stack(unsigned q);

/** Set the worker pointer that streams of queue q carry. */
void mx_dpdk_set_worker(unsigned q, struct mx_worker *w);

/**
 * One iteration for queue q, on its own core: RX burst into the stack,
 * timers, TX burst. @return frames received (0 = idle, the caller may pause).
 */
unsigned mx_dpdk_poll(unsigned q, uint64_t now_ms);

/** Counters of queue q. */
void mx_dpdk_queue_stats(unsigned q, struct mx_dpdk_queue_stats *out);

/**
 * Frames the port itself dropped on receive (rte_eth_stats imissed: no free
 * RX descriptor), port-wide since start.
 * @return 0 with *out set, or -errno from the driver (-ENODEV when not up)
 */
int mx_dpdk_port_rx_missed(uint64_t *out);

/** Stop the port, free the stacks and pools. */
void mx_dpdk_fini(void);

#endif
