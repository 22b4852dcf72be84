/*
 * dataplane.h - workers (pinned DPDK lcores), their event loops and the
 * transport-neutral stream interface that the SMTP engine runs on.
 *
 * A worker owns: an io_uring ring (kernel sockets and spool I/O share it),
 * its streams, its timers and its tick hooks. Nothing here is shared between
 * workers; a stream is only ever touched from the worker that owns it.
 *
 * Transports: the kernel backend (io_uring sockets, the embedded default)
 * lives here; the userspace TCP stack (tcpstack/) implements the same
 * struct mx_stream_ops so smtp/ does not know which one carries a session.
 */
#ifndef MX_DATAPLANE_H
#define MX_DATAPLANE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct io_uring;
struct mx_worker;
struct mx_stream;

/* ---------------------------------------------------------------------- */
/* Streams                                                                  */

/** Callbacks from a transport into the application (e.g. an SMTP session). */
struct mx_stream_cb {
    /** Data arrived. buf is valid only during the call. */
    void (*data)(struct mx_stream *s, void *ctx, const uint8_t *buf, size_t len);
    /**
     * Outgoing connect finished (res 0) or failed (-errno). Active opens only.
     * A failed open is followed by closed(), like every other end of a stream.
     */
    void (*connected)(struct mx_stream *s, void *ctx, int res);
    /** Peer closed (res 0) or error (-errno). The stream is freed after return. */
    void (*closed)(struct mx_stream *s, void *ctx, int res);
    /** The timer set with mx_stream_set_timer() expired. */
    void (*timeout)(struct mx_stream *s, void *ctx);
    /** Everything written so far has been handed to the transport. Optional. */
    void (*drained)(struct mx_stream *s, void *ctx);
    /**
     * The gateway is stopping: finish what is in progress and close soon
     * (an idle SMTP session answers 421 and closes). Optional; streams still
     * open when the grace period ends are closed with closed(-ESHUTDOWN).
     */
    void (*shutdown)(struct mx_stream *s, void *ctx);
};

/** What a transport implements. */
struct mx_stream_ops {
    int (*write)(struct mx_stream *s, const void *buf, size_t len);
    void (*close)(struct mx_stream *s);
    void (*pause)(struct mx_stream *s, bool paused);
    void (*set_timer)(struct mx_stream *s, uint64_t ms);
};

/** Common head of every transport's connection object. */
struct mx_stream {
    const struct mx_stream_ops *ops;
    const struct mx_stream_cb *cb;
    void *ctx; /**< application's session */
    struct mx_worker *worker;
    struct sockaddr_storage peer;
    struct sockaddr_storage local;
    uint64_t id; /**< unique per process, for logs */
};

/**
 * Queue bytes for sending. The data is copied; sends are batched and flushed
 * once per loop iteration, so pipelined replies leave in one write.
 * @return 0, -ENOBUFS when the per-stream output limit is exceeded, -EPIPE
 *         when the stream is closing.
 */
static inline int mx_stream_write(struct mx_stream *s, const void *buf, size_t len)
{
    return s->ops->write(s, buf, len);
}

/** Flush what is queued, then close. No callbacks except closed() follow. */
static inline void mx_stream_close(struct mx_stream *s)
{
    s->ops->close(s);
}

/** Stop (true) or resume (false) delivering data callbacks. */
static inline void mx_stream_pause(struct mx_stream *s, bool paused)
{
    s->ops->pause(s, paused);
}

/** Arm (ms > 0) or cancel (0) the stream's single timer. */
static inline void mx_stream_set_timer(struct mx_stream *s, uint64_t ms)
{
    s->ops->set_timer(s, ms);
}

/** Attach the application's callbacks and context to a stream. */
static inline void mx_stream_bind(struct mx_stream *s, const struct mx_stream_cb *cb, void *ctx)
{
    s->cb = cb;
    s->ctx = ctx;
}

/* ---------------------------------------------------------------------- */
/* Workers                                                                  */

/** Called for every accepted connection; must mx_stream_bind() or close. */
typedef void (*mx_accept_fn)(struct mx_stream *s, void *arg);

/** Called once per loop iteration, after I/O completions were processed. */
typedef void (*mx_tick_fn)(struct mx_worker *w, void *arg);

/** Called on the worker when the loop starts (arg from registration). */
typedef int (*mx_worker_init_fn)(struct mx_worker *w, void *arg);

/**
 * An io_uring operation owned by some module on a worker. Put it in the
 * sqe's user_data (io_uring_sqe_set_data); the loop calls done() with the
 * cqe's res and flags.
 */
struct mx_uring_op {
    void (*done)(struct mx_uring_op *op, int res, uint32_t flags);
};

struct mx_dataplane_params {
    const char *backend; /**< "kernel" (default) or "dpdk" */
    unsigned workers;
    const char *eal_extra; /**< extra EAL arguments, space separated */
    const struct mx_sockaddr *listen;
    size_t n_listen;
    mx_accept_fn on_accept;
    void *accept_arg;
    mx_worker_init_fn on_worker_init; /**< optional, runs on each worker */
    void *init_arg;
    unsigned uring_entries; /**< per worker; 0 = 1024 */
    const char *dpdk_address; /**< backend "dpdk": our IPv4 "10.0.0.2/24" */
    const char *dpdk_gateway; /**< backend "dpdk": next hop, or NULL */
    /**
     * Backend "dpdk": seeded fault injection on the port, both directions
     * (config dataplane.impair). Percentages 0..100; all zero = off.
     */
    struct mx_dataplane_impair {
        double drop;       /**< percent of frames dropped */
        double reorder;    /**< percent held back behind the next frame */
        double duplicate;  /**< percent sent twice */
        unsigned delay_ms; /**< added one-way delay */
        uint64_t seed;     /**< generator seed; 0 counts as 1 */
    } impair;
};

struct mx_sockaddr;

/**
 * Start EAL, bind every listen address (one SO_REUSEPORT socket per worker
 * per address) and prepare the workers. Does not start them yet.
 * @return 0 or -errno (bind failure says which address in the log).
 */
int mx_dataplane_init(const struct mx_dataplane_params *p);

/** Launch the workers on their lcores and return. */
int mx_dataplane_start(void);

/**
 * Stop accepting; let sessions finish for at most grace_ms, then close the
 * rest and join the workers. Safe to call from a signal-driven main loop.
 */
void mx_dataplane_stop(unsigned grace_ms);

/** Release EAL and everything mx_dataplane_init() created. */
void mx_dataplane_cleanup(void);

/** Number of workers. */
unsigned mx_dataplane_workers(void);

/** The calling thread's worker, or NULL on a non-worker thread. */
struct mx_worker *mx_worker_self(void);

/** Worker index 0..n-1. */
unsigned mx_worker_index(const struct mx_worker *w);

/** The worker's io_uring ring, for modules that submit their own I/O. */
struct io_uring *mx_worker_ring(struct mx_worker *w);

/** Register a hook run every loop iteration (max 16 per worker). */
int mx_worker_add_tick(struct mx_worker *w, mx_tick_fn fn, void *arg);

/** Monotonic milliseconds, cached once per loop iteration. */
uint64_t mx_worker_now_ms(const struct mx_worker *w);

/** Ask the loop not to sleep longer than ms in its next wait. */
void mx_worker_wake_within(struct mx_worker *w, uint64_t ms);

/** True once mx_dataplane_stop() began (stop accepting new work). */
bool mx_worker_stopping(const struct mx_worker *w);

/*
 * Read-copy-update between the main thread and the workers (DPDK
 * rte_rcu_qsbr): every worker reports a quiescent state once per loop
 * iteration, never in the middle of a callback. An object that workers may
 * have loaded from a shared pointer can be freed once the pointer was
 * replaced, a token taken with mx_dataplane_rcu_start(), and
 * mx_dataplane_rcu_check() answered true for that token: no worker still
 * holds a reference it picked up before the swap (references it kept on
 * purpose, e.g. a session's refcount, are the owner's business).
 */

/**
 * Begin a grace period. Call after publishing the new pointer (the token
 * update releases that store to the workers).
 * @return the token to pass to mx_dataplane_rcu_check(); 0 when the
 *         dataplane is not initialised (then every check succeeds).
 */
uint64_t mx_dataplane_rcu_start(void);

/**
 * Has every worker passed a quiescent state since the token was taken?
 * Never blocks; workers that are not running (not started yet, or
 * finished) do not hold it up.
 * @return true when the grace period of token is over.
 */
bool mx_dataplane_rcu_check(uint64_t token);

/**
 * Active open from worker w to addr (delivery). cb->connected reports the
 * result. Kernel backend: a non-blocking connect through io_uring.
 * @return 0 (the stream is in *out) or -errno.
 */
int mx_stream_connect(struct mx_worker *w, const struct sockaddr *addr, socklen_t len,
                      const struct mx_stream_cb *cb, void *ctx, struct mx_stream **out);

/* ---------------------------------------------------------------------- */
/* DNS service                                                              */

/*
 * Asynchronous DNS for workers: queries go to one DNS service thread
 * (c-ares) through a ring; answers come back through the asking worker's
 * ring and the callback runs on that worker. Workers never block on DNS.
 */

enum mx_dns_type {
    MX_DNS_A = 1,
    MX_DNS_PTR = 12,
    MX_DNS_MX = 15,
    MX_DNS_TXT = 16,
    MX_DNS_AAAA = 28,
};

#define MX_DNS_NAME_MAX 256
#define MX_DNS_MAX_ANSWERS 32

struct mx_dns_mx {
    uint16_t preference;
    char host[MX_DNS_NAME_MAX];
};

/** One answer set. Lists are sorted: MX by preference, others as received. */
struct mx_dns_result {
    int status; /**< 0; -ENOENT (NXDOMAIN or no data); -ETIMEDOUT; -EIO (SERVFAIL, bad answer) */
    enum mx_dns_type type;
    char name[MX_DNS_NAME_MAX];
    uint32_t ttl; /**< smallest TTL of the answer records */
    size_t n;     /**< answers in the array of the type */
    uint8_t a[MX_DNS_MAX_ANSWERS][4];
    uint8_t aaaa[MX_DNS_MAX_ANSWERS][16];
    struct mx_dns_mx mx[MX_DNS_MAX_ANSWERS];
    char txt[MX_DNS_MAX_ANSWERS][256]; /**< TXT strings of a record joined; PTR names */
};

typedef void (*mx_dns_fn)(void *arg, const struct mx_dns_result *r);

/**
 * Start the DNS service thread.
 * @param servers  "ip[:port],ip[:port]" (IPv6 as [addr]:port), or NULL to use
 *                 /etc/resolv.conf
 * @param timeout_ms per try; @param tries attempts per server
 * @return 0 or -errno (-EINVAL: bad server list)
 */
int mx_dns_start(const char *servers, unsigned timeout_ms, unsigned tries);

/** Stop the service; queries still pending complete with -ECANCELED. */
void mx_dns_stop(void);

/**
 * Look up name/type for worker w; cb runs later on w with the result.
 * @return 0, -EINVAL (bad name), -ENOBUFS (too many queries in flight),
 *         -ENOTCONN (service not started).
 */
int mx_dns_query(struct mx_worker *w, const char *name, enum mx_dns_type type, mx_dns_fn cb,
                 void *arg);

/**
 * Parse a raw DNS answer (as received from the network) into r. Used by the
 * service; exposed for tests and fuzzing. Returns r->status.
 */
int mx_dns_parse(const uint8_t *abuf, size_t alen, enum mx_dns_type type,
                 struct mx_dns_result *r);

#endif
