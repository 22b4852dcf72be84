/*
 * kernel.c - the kernel-socket transport (the embedded default), driven by
 * each worker's io_uring ring.
 *
 * One SO_REUSEPORT listener per worker per address, so the kernel spreads
 * connections over the workers; a multishot accept on each. Every connection
 * has one multishot recv drawing from the worker's provided-buffer ring, so
 * idle connections pin no receive memory. Output is appended to a pending
 * buffer and sent once per loop iteration (mx_kernel_flush), so pipelined
 * replies leave in one send; while a send is in flight new output goes to
 * the other of two buffers, never moving memory the kernel is reading.
 *
 * Life of a connection: it ends exactly once with cb->closed(), whether the
 * peer closed, an error occurred or the application called close(); the
 * memory is freed only when no io_uring operation refers to it any more.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <rte_cycles.h>
#include <rte_lcore.h>
#include <rte_timer.h>

#include "console/console.h"
#include "dataplane/dataplane_internal.h"

#define RECV_BUF_SIZE (16 * 1024)
#define RECV_BUF_COUNT 512 /* power of two */
#define RECV_BGID 1
#define OUT_LIMIT (4u * 1024 * 1024)   /* per direction buffer, per connection */
#define HELD_LIMIT (256u * 1024)       /* input kept while paused before we stop reading */
#define LISTEN_BACKLOG 1024

struct outbuf {
    uint8_t *data;
    size_t len, cap;
};

struct mx_kconn {
    struct mx_stream s; /* first: the stream handed to the application */
    struct mx_worker *w;
    int fd;
    struct mx_kconn *prev, *next; /* worker's live list */
    struct mx_kconn *dirty_next;
    bool in_dirty;

    struct outbuf pending; /* written by the application */
    struct outbuf sending; /* owned by the kernel while send_inflight */
    size_t sent;           /* bytes of sending already sent */
    bool send_inflight;

    struct outbuf held; /* input received while paused */
    bool paused;
    bool recv_armed;
    bool recv_stopped; /* cancelled because held is full */
    bool close_requested; /* the application is done */
    bool shut;            /* shutdown(2) issued */
    bool ended;           /* closed() delivered */
    int end_res;
    unsigned refs; /* io_uring operations in flight */

    struct mx_uring_op recv_op, send_op, conn_op;
    struct rte_timer timer;
};

static uint64_t next_stream_id = 1; /* atomically incremented */

#define CONN_OF(op, member) ((struct mx_kconn *)((char *)(op)-offsetof(struct mx_kconn, member)))

static void conn_recv_done(struct mx_uring_op *op, int res, uint32_t flags);
static void conn_send_done(struct mx_uring_op *op, int res, uint32_t flags);
static void conn_connect_done(struct mx_uring_op *op, int res, uint32_t flags);
static void conn_end(struct mx_kconn *c, int res);

static struct io_uring_sqe *get_sqe(struct mx_worker *w)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
    if (!sqe) {
        /* SQ full: hand what we have to the kernel and retry once. */
        io_uring_submit(&w->ring);
        sqe = io_uring_get_sqe(&w->ring);
    }
    return sqe;
}

/* ---- listeners ------------------------------------------------------- */

static int open_listener(const struct mx_sockaddr *a)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)
        goto fail;
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) != 0)
        goto fail;
    if (listen(fd, LISTEN_BACKLOG) != 0)
        goto fail;
    return fd;
fail:;
    int e = -errno;
    close(fd);
    return e;
}

int mx_kernel_listen_open(struct mx_worker *w)
{
    for (unsigned i = 0; i < MX_MAX_LISTEN; i++)
        w->listen_fd[i] = -1;
    for (size_t i = 0; i < mx_dp.p.n_listen; i++) {
        int fd = open_listener(&mx_dp.listen[i]);
        if (fd < 0) {
            fprintf(stderr, "mxgate[dataplane]: cannot listen on %s: %s\n", mx_dp.listen[i].text,
                    strerror(-fd));
            return fd;
        }
        w->listen_fd[i] = fd;
        w->n_listen = (unsigned)i + 1;
    }
    return 0;
}

static void accept_done(struct mx_uring_op *op, int res, uint32_t flags);

static void arm_accept(struct mx_worker *w, unsigned i)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    if (!sqe)
        return;
    io_uring_prep_multishot_accept(sqe, w->listen_fd[i], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    io_uring_sqe_set_data(sqe, &w->accept_op[i]);
}

/* ---- connections ----------------------------------------------------- */

static const struct mx_stream_ops kernel_ops;

static void timer_fired(struct rte_timer *t, void *arg)
{
    (void)t;
    struct mx_kconn *c = arg;
    if (!c->ended && c->s.cb && c->s.cb->timeout)
        c->s.cb->timeout(&c->s, c->s.ctx);
}

static struct mx_kconn *conn_new(struct mx_worker *w, int fd)
{
    struct mx_kconn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->w = w;
    c->fd = fd;
    c->s.ops = &kernel_ops;
    c->s.worker = w;
    c->s.id = __atomic_fetch_add(&next_stream_id, 1, __ATOMIC_RELAXED);
    c->recv_op.done = conn_recv_done;
    c->send_op.done = conn_send_done;
    c->conn_op.done = conn_connect_done;
    rte_timer_init(&c->timer);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->n_conns++;
    return c;
}

static void conn_free_if_done(struct mx_kconn *c)
{
    if (!c->ended || c->refs)
        return;
    struct mx_worker *w = c->w;
    if (c->in_dirty) {
        /* unlink from the dirty list */
        struct mx_kconn **pp = &w->dirty;
        while (*pp && *pp != c)
            pp = &(*pp)->dirty_next;
        if (*pp)
            *pp = c->dirty_next;
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->n_conns--;
    rte_timer_stop_sync(&c->timer);
    if (c->fd >= 0)
        close(c->fd);
    free(c->pending.data);
    free(c->sending.data);
    free(c->held.data);
    free(c);
}

static int outbuf_append(struct outbuf *b, const void *p, size_t n, size_t limit)
{
    if (b->len + n > limit)
        return -ENOBUFS;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        if (!d)
            return -ENOMEM;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static void arm_recv(struct mx_kconn *c)
{
    if (c->recv_armed || c->shut)
        return;
    struct io_uring_sqe *sqe = get_sqe(c->w);
    if (!sqe)
        return;
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = RECV_BGID;
    io_uring_sqe_set_data(sqe, &c->recv_op);
    c->recv_armed = true;
    c->refs++;
}

static void cancel_recv(struct mx_kconn *c)
{
    if (!c->recv_armed)
        return;
    struct io_uring_sqe *sqe = get_sqe(c->w);
    if (!sqe)
        return;
    io_uring_prep_cancel(sqe, &c->recv_op, 0);
    io_uring_sqe_set_data(sqe, NULL);
}

/* Shut the socket so the multishot recv completes; the fd is closed on free. */
static void conn_shutdown(struct mx_kconn *c)
{
    if (c->shut)
        return;
    c->shut = true;
    if (c->fd >= 0)
        shutdown(c->fd, SHUT_RDWR);
    cancel_recv(c);
}

/* Deliver closed() exactly once, then tear down. */
static void conn_end(struct mx_kconn *c, int res)
{
    if (c->ended)
        return;
    c->ended = true;
    c->end_res = res;
    rte_timer_stop(&c->timer);
    conn_shutdown(c);
    if (c->s.cb && c->s.cb->closed)
        c->s.cb->closed(&c->s, c->s.ctx, res);
    conn_free_if_done(c);
}

static void deliver(struct mx_kconn *c, const uint8_t *p, size_t n)
{
    if (c->close_requested || c->ended || !c->s.cb || !c->s.cb->data)
        return;
    if (c->paused || c->held.len) {
        if (outbuf_append(&c->held, p, n, HELD_LIMIT * 4) < 0) {
            conn_end(c, -ENOBUFS);
            return;
        }
        if (c->held.len >= HELD_LIMIT && !c->recv_stopped) {
            c->recv_stopped = true;
            cancel_recv(c);
        }
        return;
    }
    c->s.cb->data(&c->s, c->s.ctx, p, n);
}

static void recycle_buffer(struct mx_worker *w, unsigned bid)
{
    io_uring_buf_ring_add(w->br, w->bufs + (size_t)bid * w->buf_size, (unsigned)w->buf_size,
                          (unsigned short)bid, io_uring_buf_ring_mask(w->n_bufs), 0);
    io_uring_buf_ring_advance(w->br, 1);
}

static void conn_recv_done(struct mx_uring_op *op, int res, uint32_t flags)
{
    struct mx_kconn *c = CONN_OF(op, recv_op);
    struct mx_worker *w = c->w;
    if (flags & IORING_CQE_F_BUFFER) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
        if (res > 0)
            deliver(c, w->bufs + (size_t)bid * w->buf_size, (size_t)res);
        recycle_buffer(w, bid);
    }
    if (flags & IORING_CQE_F_MORE)
        return;
    /* the multishot recv ended */
    c->recv_armed = false;
    c->refs--;
    if (c->ended) {
        conn_free_if_done(c);
        return;
    }
    if (c->close_requested || c->shut)
        conn_end(c, c->close_requested ? 0 : res);
    else if (res == -ENOBUFS) {
        MX_STATS_INC(RECV_NOBUFS);
        arm_recv(c);
    } else if (res == -ECANCELED && c->recv_stopped)
        ; /* stopped on purpose while paused; k_pause() re-arms */
    else if (res <= 0)
        conn_end(c, res);
    else
        arm_recv(c); /* a recv that returned data without MORE */
}

static void queue_dirty(struct mx_kconn *c)
{
    if (c->in_dirty)
        return;
    c->in_dirty = true;
    c->dirty_next = c->w->dirty;
    c->w->dirty = c;
}

static void start_send(struct mx_kconn *c)
{
    struct io_uring_sqe *sqe = get_sqe(c->w);
    if (!sqe) {
        queue_dirty(c);
        return;
    }
    io_uring_prep_send(sqe, c->fd, c->sending.data + c->sent, c->sending.len - c->sent,
                       MSG_NOSIGNAL);
    io_uring_sqe_set_data(sqe, &c->send_op);
    c->send_inflight = true;
    c->refs++;
}

static void conn_send_done(struct mx_uring_op *op, int res, uint32_t flags)
{
    (void)flags;
    struct mx_kconn *c = CONN_OF(op, send_op);
    c->send_inflight = false;
    c->refs--;
    if (c->ended) {
        conn_free_if_done(c);
        return;
    }
    if (res < 0) {
        conn_end(c, res);
        return;
    }
    c->sent += (size_t)res;
    if (c->sent < c->sending.len) {
        start_send(c);
        return;
    }
    c->sending.len = 0;
    c->sent = 0;
    if (c->pending.len) {
        queue_dirty(c);
        return;
    }
    if (c->close_requested) {
        conn_shutdown(c);
        if (!c->recv_armed)
            conn_end(c, 0);
        return;
    }
    if (c->s.cb && c->s.cb->drained)
        c->s.cb->drained(&c->s, c->s.ctx);
}

void mx_kernel_flush(struct mx_worker *w)
{
    struct mx_kconn *c = w->dirty;
    w->dirty = NULL;
    while (c) {
        struct mx_kconn *next = c->dirty_next;
        c->in_dirty = false;
        c->dirty_next = NULL;
        if (!c->ended && !c->send_inflight) {
            if (c->pending.len) {
                struct outbuf t = c->sending;
                c->sending = c->pending;
                c->pending = t;
                c->pending.len = 0;
                c->sent = 0;
                start_send(c);
            } else if (c->close_requested) {
                conn_shutdown(c);
                if (!c->recv_armed)
                    conn_end(c, 0);
            }
        }
        c = next;
    }
}

/* ---- stream ops ------------------------------------------------------ */

static int k_write(struct mx_stream *s, const void *buf, size_t len)
{
    struct mx_kconn *c = (struct mx_kconn *)s;
    if (c->ended || c->close_requested)
        return -EPIPE;
    int rc = outbuf_append(&c->pending, buf, len, OUT_LIMIT);
    if (rc == 0)
        queue_dirty(c);
    return rc;
}

static void k_close(struct mx_stream *s)
{
    struct mx_kconn *c = (struct mx_kconn *)s;
    if (c->ended || c->close_requested)
        return;
    c->close_requested = true;
    rte_timer_stop(&c->timer);
    queue_dirty(c); /* flush, then shut down */
}

static void k_pause(struct mx_stream *s, bool paused)
{
    struct mx_kconn *c = (struct mx_kconn *)s;
    if (c->ended)
        return;
    c->paused = paused;
    if (paused)
        return;
    /*
     * Replay input held while paused. The data callback consumes everything
     * it is given; it may pause again, which stops the replay.
     */
    while (c->held.len && !c->paused && !c->ended && !c->close_requested) {
        struct outbuf h = c->held;
        c->held = (struct outbuf){0};
        c->s.cb->data(&c->s, c->s.ctx, h.data, h.len);
        free(h.data);
    }
    if (!c->paused && c->recv_stopped && !c->ended) {
        c->recv_stopped = false;
        arm_recv(c);
    }
}

static void k_set_timer(struct mx_stream *s, uint64_t ms)
{
    struct mx_kconn *c = (struct mx_kconn *)s;
    if (c->ended)
        return;
    if (ms == 0) {
        rte_timer_stop(&c->timer);
        return;
    }
    uint64_t ticks = rte_get_timer_hz() / 1000 * ms;
    rte_timer_reset(&c->timer, ticks, SINGLE, rte_lcore_id(), timer_fired, c);
}

static const struct mx_stream_ops kernel_ops = {
    .write = k_write,
    .close = k_close,
    .pause = k_pause,
    .set_timer = k_set_timer,
};

/* ---- accept / connect ------------------------------------------------ */

static void set_addrs(struct mx_kconn *c)
{
    socklen_t l = sizeof c->s.peer;
    getpeername(c->fd, (struct sockaddr *)&c->s.peer, &l);
    l = sizeof c->s.local;
    getsockname(c->fd, (struct sockaddr *)&c->s.local, &l);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void accept_done(struct mx_uring_op *op, int res, uint32_t flags)
{
    struct mx_worker *w = mx_worker_self();
    unsigned i = (unsigned)(op - w->accept_op);
    if (res >= 0) {
        if (w->listeners_closed) {
            close(res);
        } else {
            struct mx_kconn *c = conn_new(w, res);
            if (!c) {
                close(res);
                MX_STATS_INC(ACCEPT_ERRORS);
            } else {
                set_addrs(c);
                arm_recv(c);
                mx_dp.p.on_accept(&c->s, mx_dp.p.accept_arg);
                if (!c->s.cb)
                    conn_end(c, -ECONNABORTED);
            }
        }
    } else if (res != -ECANCELED && !w->listeners_closed) {
        MX_STATS_INC(ACCEPT_ERRORS);
        if (res != -EMFILE && res != -ENFILE && res != -ENOBUFS && res != -ENOMEM)
            fprintf(stderr, "mxgate[dataplane]: worker %u: accept: %s\n", w->index,
                    strerror(-res));
    }
    if (!(flags & IORING_CQE_F_MORE) && !w->listeners_closed)
        arm_accept(w, i);
}

static void conn_connect_done(struct mx_uring_op *op, int res, uint32_t flags)
{
    (void)flags;
    struct mx_kconn *c = CONN_OF(op, conn_op);
    c->refs--;
    if (c->ended) {
        conn_free_if_done(c);
        return;
    }
    if (res == 0) {
        set_addrs(c);
        arm_recv(c);
    }
    if (c->s.cb && c->s.cb->connected)
        c->s.cb->connected(&c->s, c->s.ctx, res);
    if (res < 0)
        conn_end(c, res);
}

int mx_stream_connect(struct mx_worker *w, const struct sockaddr *addr, socklen_t len,
                      const struct mx_stream_cb *cb, void *ctx, struct mx_stream **out)
{
    if (!w || !addr || len > sizeof(struct sockaddr_storage))
        return -EINVAL;
    if (mx_dp.dpdk)
        return mx_dp_dpdk_connect(w, addr, cb, ctx, out);
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct mx_kconn *c = conn_new(w, fd);
    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    memcpy(&c->s.peer, addr, len);
    mx_stream_bind(&c->s, cb, ctx);
    struct io_uring_sqe *sqe = get_sqe(w);
    if (!sqe) {
        c->ended = true;
        conn_free_if_done(c);
        return -EBUSY;
    }
    io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&c->s.peer, len);
    io_uring_sqe_set_data(sqe, &c->conn_op);
    c->refs++;
    *out = &c->s;
    return 0;
}

/* ---- worker life ----------------------------------------------------- */

static int setup_buffer_ring(struct mx_worker *w)
{
    w->n_bufs = RECV_BUF_COUNT;
    w->buf_size = RECV_BUF_SIZE;
    size_t ring_bytes = w->n_bufs * sizeof(struct io_uring_buf);
    void *ring = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (ring == MAP_FAILED)
        return -errno;
    w->br = ring;
    io_uring_buf_ring_init(w->br);
    struct io_uring_buf_reg reg = {
        .ring_addr = (uint64_t)(uintptr_t)ring,
        .ring_entries = w->n_bufs,
        .bgid = RECV_BGID,
    };
    int rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
    if (rc < 0) {
        fprintf(stderr, "mxgate[dataplane]: worker %u: provided buffers: %s\n", w->index,
                strerror(-rc));
        return rc;
    }
    w->bufs = malloc(w->n_bufs * w->buf_size);
    if (!w->bufs)
        return -ENOMEM;
    for (unsigned i = 0; i < w->n_bufs; i++)
        io_uring_buf_ring_add(w->br, w->bufs + (size_t)i * w->buf_size, (unsigned)w->buf_size,
                              (unsigned short)i, io_uring_buf_ring_mask(w->n_bufs), (int)i);
    io_uring_buf_ring_advance(w->br, (int)w->n_bufs);
    return 0;
}

int mx_kernel_worker_start(struct mx_worker *w)
{
    int rc = setup_buffer_ring(w);
    if (rc < 0)
        return rc;
    for (unsigned i = 0; i < w->n_listen; i++) {
        w->accept_op[i].done = accept_done;
        arm_accept(w, i);
    }
    return 0;
}

void mx_kernel_stop_accepting(struct mx_worker *w)
{
    w->listeners_closed = true;
    for (unsigned i = 0; i < w->n_listen; i++) {
        struct io_uring_sqe *sqe = get_sqe(w);
        if (sqe) {
            io_uring_prep_cancel(sqe, &w->accept_op[i], 0);
            io_uring_sqe_set_data(sqe, NULL);
        }
        if (w->listen_fd[i] >= 0) {
            shutdown(w->listen_fd[i], SHUT_RDWR);
        }
    }
    for (struct mx_kconn *c = w->conns, *n; c; c = n) {
        n = c->next;
        if (!c->ended && c->s.cb && c->s.cb->shutdown)
            c->s.cb->shutdown(&c->s, c->s.ctx);
    }
}

void mx_kernel_close_all(struct mx_worker *w)
{
    for (struct mx_kconn *c = w->conns, *n; c; c = n) {
        n = c->next;
        conn_end(c, -ESHUTDOWN);
    }
}

void mx_kernel_worker_fini(struct mx_worker *w)
{
    /* Connections still referenced by in-flight operations: drop them with the ring. */
    while (w->conns) {
        struct mx_kconn *c = w->conns;
        c->ended = true;
        c->refs = 0;
        conn_free_if_done(c);
    }
    if (w->ring_ok) {
        io_uring_unregister_buf_ring(&w->ring, RECV_BGID);
        io_uring_queue_exit(&w->ring);
        w->ring_ok = false;
    }
    if (w->br)
        munmap(w->br, w->n_bufs * sizeof(struct io_uring_buf));
    free(w->bufs);
    w->br = NULL;
    w->bufs = NULL;
}
