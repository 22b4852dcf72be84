/*
 * dataplane_internal.h - worker internals shared by the dataplane's own
 * files (dataplane.c, kernel.c, dpdk.c). Not for other modules.
 */
#ifndef MX_DATAPLANE_INTERNAL_H
#define MX_DATAPLANE_INTERNAL_H

#include <liburing.h>
#include <stdatomic.h>

#include "config/config.h"
#include "dataplane/dataplane.h"

#define MX_MAX_WORKERS 128
#define MX_MAX_TICKS 16
#define MX_MAX_LISTEN 16

struct mx_kconn;

struct mx_worker {
    unsigned index;
    unsigned lcore;
    struct io_uring ring;
    bool ring_ok;
    uint64_t now_ms;
    uint64_t wake_within_ms; /* shortest sleep requested for this iteration */

    struct {
        mx_tick_fn fn;
        void *arg;
    } ticks[MX_MAX_TICKS];
    unsigned n_ticks;

    /* kernel backend */
    int listen_fd[MX_MAX_LISTEN];
    struct mx_uring_op accept_op[MX_MAX_LISTEN];
    unsigned n_listen;
    struct io_uring_buf_ring *br;
    uint8_t *bufs;
    unsigned n_bufs;
    size_t buf_size;
    struct mx_kconn *conns;   /* all live connections (doubly linked) */
    struct mx_kconn *dirty;   /* connections with output to flush (singly linked) */
    unsigned n_conns;
    bool listeners_closed;
};

extern struct mx_dataplane_state {
    struct mx_dataplane_params p;
    struct mx_sockaddr listen[MX_MAX_LISTEN];
    unsigned n_workers;
    struct mx_worker *workers[MX_MAX_WORKERS];
    atomic_bool stopping;
    atomic_bool stopped;
    uint64_t stop_deadline_ms;
    bool eal_up;
    bool dpdk; /* backend "dpdk": userspace TCP on a DPDK port */
    bool started;
} mx_dp;

uint64_t mx_dp_monotonic_ms(void);
uint64_t mx_dp_monotonic_us(void);

/* dataplane.c, backend "dpdk" */
int mx_dp_dpdk_connect(struct mx_worker *w, const struct sockaddr *addr,
                       const struct mx_stream_cb *cb, void *ctx, struct mx_stream **out);

/* dns.c */
void mx_dns_worker_poll(struct mx_worker *w);

/* kernel.c */
int mx_kernel_listen_open(struct mx_worker *w);
int mx_kernel_worker_start(struct mx_worker *w);
void mx_kernel_flush(struct mx_worker *w);
void mx_kernel_stop_accepting(struct mx_worker *w);
void mx_kernel_close_all(struct mx_worker *w);
void mx_kernel_worker_fini(struct mx_worker *w);

#endif
