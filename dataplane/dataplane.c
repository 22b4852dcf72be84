/*
 * dataplane.c - EAL start-up, worker lcores and their event loop.
 *
 * Workers are DPDK lcores in both backends, pinned to CPUs. In kernel mode
 * EAL runs without hugepages or PCI (--no-huge -m 512 --no-pci --no-shconf);
 * each worker owns one io_uring ring used for its sockets and for whatever
 * other module submits (the spool). One loop iteration:
 *
 *   wait for completions (bounded by the next timer) -> dispatch them ->
 *   run expired timers -> run tick hooks (group commit etc.) -> flush sends
 *
 * so every reply produced while handling one batch of input leaves in one
 * send per connection.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_cycles.h>
#include <rte_lcore.h>
#include <rte_log.h>
#include <rte_malloc.h>
#include <rte_per_lcore.h>
#include <rte_rcu_qsbr.h>
#include <rte_timer.h>

#include "console/console.h"
#include "dataplane/dataplane_internal.h"
#include "tcpstack/tcpstack.h"

struct mx_dataplane_state mx_dp;

static RTE_DEFINE_PER_LCORE(struct mx_worker *, cur_worker);

/*
 * Quiescent-state variable of the workers (thread id = worker index): lets
 * the main thread free a configuration generation once no worker can still
 * be looking at it (app/reload.c). NULL before mx_dataplane_init().
 */
static struct rte_rcu_qsbr *rcu;

/* The extra EAL arguments' text: EAL may keep pointers into it until rte_eal_cleanup(). */
static char *eal_arg_text;

/* Longest sleep in one wait: bounds timer lateness (rte_timer runs from the loop). */
#define LOOP_MAX_WAIT_MS 5

uint64_t mx_dp_monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t mx_dp_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Split extra EAL arguments on blanks (no quoting: EAL arguments have none). */
static int split_args(const char *text, char **argv, int max, char **store)
{
    int n = 0;
    if (!text || !*text)
        return 0;
    *store = strdup(text);
    if (!*store)
        return -ENOMEM;
    for (char *save = NULL, *tok = strtok_r(*store, " \t", &save); tok;
         tok = strtok_r(NULL, " \t", &save)) {
        if (n == max)
            return -E2BIG;
        argv[n++] = tok;
    }
    return n;
}

/*
 * Map lcore 0 (main/control) and lcores 1..n (workers) onto the CPUs this
 * process may use, round-robin, so a 2-CPU machine can still run 4 workers.
 */
static int build_lcore_map(unsigned workers, char *out, size_t len)
{
    cpu_set_t set;
    int cpus[CPU_SETSIZE], n_cpus = 0;
    if (sched_getaffinity(0, sizeof set, &set) != 0)
        return -errno;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &set))
            cpus[n_cpus++] = c;
    if (n_cpus == 0)
        return -ENODEV;
    size_t off = (size_t)snprintf(out, len, "0@%d", cpus[0]);
    for (unsigned i = 0; i < workers; i++) {
        off += (size_t)snprintf(out + off, len - off, ",%u@%d", i + 1, cpus[i % (unsigned)n_cpus]);
        if (off >= len)
            return -E2BIG;
    }
    return 0;
}

/* "10.0.0.2/24" -> address (network order) and prefix length. */
static int parse_ipv4_prefix(const char *text, uint32_t *addr, uint8_t *prefix)
{
    char buf[64];
    if (!text || strlen(text) >= sizeof buf)
        return -EINVAL;
    strcpy(buf, text);
    char *slash = strchr(buf, '/');
    unsigned plen = 32;
    if (slash) {
        *slash = 0;
        char *end;
        unsigned long v = strtoul(slash + 1, &end, 10);
        if (*end || v > 32)
            return -EINVAL;
        plen = (unsigned)v;
    }
    struct in_addr a;
    if (inet_pton(AF_INET, buf, &a) != 1)
        return -EINVAL;
    *addr = a.s_addr;
    *prefix = (uint8_t)plen;
    return 0;
}

/*
 * Backend "dpdk": the stack and port counters already given to the console,
 * per worker, so that each loop turn adds only what is new (the console's
 * counters are per-core sums; the stack's are running totals). Each entry is
 * written by its own worker only, one cache line apart.
 */
struct dpdk_fed {
    uint64_t retrans, drops, cookies, rx, tx, missed;
    uint64_t next_port_ms; /* worker 0: next read of the port-wide counters */
} __attribute__((aligned(64)));
static struct dpdk_fed dpdk_fed[64];

static uint64_t tcp_drops_of(const struct mx_tcp_stats *t)
{
    /* segments the stack threw away, whatever the reason (docs/TCPSTACK.md) */
    return t->tcp_bad_csum + t->tcp_bad_hdr + t->tcp_no_port + t->tcp_ooo_drop +
           t->tcp_paws_drop + t->tcp_syn_drop + t->tcp_mem_drop;
}

/* Add to the console what this worker's stack and queue counted since last time. */
static void dpdk_feed_stats(struct mx_worker *w)
{
    if (w->index >= sizeof dpdk_fed / sizeof dpdk_fed[0])
        return;
    struct dpdk_fed *f = &dpdk_fed[w->index];
    struct mx_tcp_stack *st = mx_dpdk_stack(w->index);
    if (!st)
        return;
    const struct mx_tcp_stats *t = mx_tcp_stack_stats(st);
    struct mx_dpdk_queue_stats q;
    mx_dpdk_queue_stats(w->index, &q);
    uint64_t drops = tcp_drops_of(t);
    MX_STATS_ADD(TCP_RETRANSMITS, t->tcp_retrans - f->retrans);
    MX_STATS_ADD(TCP_DROPS, drops - f->drops);
    MX_STATS_ADD(TCP_SYNCOOKIES, t->tcp_syn_cookie_tx - f->cookies);
    MX_STATS_ADD(NIC_RX_PACKETS, q.rx - f->rx);
    MX_STATS_ADD(NIC_TX_PACKETS, q.tx - f->tx);
    f->retrans = t->tcp_retrans;
    f->drops = drops;
    f->cookies = t->tcp_syn_cookie_tx;
    f->rx = q.rx;
    f->tx = q.tx;
    /* The port's missed count is port-wide and a driver call: worker 0, once a second. */
    if (w->index == 0 && w->now_ms >= f->next_port_ms) {
        f->next_port_ms = w->now_ms + 1000;
        uint64_t missed;
        if (mx_dpdk_port_rx_missed(&missed) == 0 && missed >= f->missed) {
            MX_STATS_ADD(NIC_RX_MISSED, missed - f->missed);
            f->missed = missed;
        }
    }
}

/* Backend "dpdk": the port (from EAL arguments) and one TCP stack per worker. */
static int mx_dpdk_backend_init(const struct mx_dataplane_params *p)
{
    struct mx_dpdk_params dp = {.port_id = 0, .nb_queues = p->workers};
    if (parse_ipv4_prefix(p->dpdk_address, &dp.addr, &dp.prefix_len) < 0) {
        fprintf(stderr, "mxgate[dataplane]: dataplane.address must be an IPv4 address/prefix "
                        "for backend dpdk (got \"%s\")\n",
                p->dpdk_address ? p->dpdk_address : "");
        return -EINVAL;
    }
    uint8_t gw_prefix;
    if (p->dpdk_gateway && *p->dpdk_gateway &&
        parse_ipv4_prefix(p->dpdk_gateway, &dp.gateway, &gw_prefix) < 0) {
        fprintf(stderr, "mxgate[dataplane]: bad dataplane.gateway \"%s\"\n", p->dpdk_gateway);
        return -EINVAL;
    }
    for (size_t i = 0; i < p->n_listen; i++)
        if (mx_dp.listen[i].ss.ss_family != AF_INET) {
            fprintf(stderr, "mxgate[dataplane]: backend dpdk listens on IPv4 only (%s)\n",
                    mx_dp.listen[i].text);
            return -EAFNOSUPPORT;
        }
    mx_tcp_config_default(&dp.tcp);
    const struct mx_dataplane_impair *im = &p->impair;
    if (im->drop < 0 || im->drop > 100 || im->reorder < 0 || im->reorder > 100 ||
        im->duplicate < 0 || im->duplicate > 100) {
        fprintf(stderr, "mxgate[dataplane]: dataplane.impair percentages must be 0..100\n");
        return -EINVAL;
    }
    dp.impair = (struct mx_dpdk_impair){.drop = im->drop / 100.0,
                                        .reorder = im->reorder / 100.0,
                                        .duplicate = im->duplicate / 100.0,
                                        .delay_ms = im->delay_ms,
                                        .seed = im->seed};
    if (im->drop > 0 || im->reorder > 0 || im->duplicate > 0 || im->delay_ms)
        /* loud on purpose: an impaired port must never pass for a healthy one */
        fprintf(stderr,
                "mxgate[dataplane]: IMPAIRMENT ON (tests only): drop %.2f%% reorder %.2f%% "
                "duplicate %.2f%% delay %u ms seed %llu, both directions\n",
                im->drop, im->reorder, im->duplicate, im->delay_ms,
                (unsigned long long)im->seed);
    memset(dpdk_fed, 0, sizeof dpdk_fed);
    int rc = mx_dpdk_init(&dp);
    if (rc < 0)
        fprintf(stderr, "mxgate[dataplane]: DPDK port set-up failed: %s\n", strerror(-rc));
    return rc;
}

static int dpdk_worker_start(struct mx_worker *w)
{
    mx_dpdk_set_worker(w->index, w);
    struct mx_tcp_stack *st = mx_dpdk_stack(w->index);
    for (size_t i = 0; i < mx_dp.p.n_listen; i++) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&mx_dp.listen[i].ss;
        int rc = mx_tcp_listen(st, ntohs(sin->sin_port), mx_dp.p.on_accept, mx_dp.p.accept_arg);
        if (rc < 0 && rc != -EADDRINUSE)
            return rc;
    }
    mx_tcp_announce(st);
    return 0;
}

int mx_dp_dpdk_connect(struct mx_worker *w, const struct sockaddr *addr,
                       const struct mx_stream_cb *cb, void *ctx, struct mx_stream **out)
{
    if (addr->sa_family != AF_INET)
        return -EAFNOSUPPORT;
    const struct sockaddr_in *sin = (const struct sockaddr_in *)addr;
    return mx_tcp_connect(mx_dpdk_stack(w->index), sin->sin_addr.s_addr, ntohs(sin->sin_port),
                          cb, ctx, out);
}

/*
 * Every worker is registered here, on the main thread, before any of them
 * runs; each goes online when its loop starts and offline when it ends, so
 * a check never waits for a worker that is not looping.
 */
static int rcu_init(unsigned workers)
{
    size_t sz = rte_rcu_qsbr_get_memsize(workers);
    rcu = rte_zmalloc("mx_rcu", sz, RTE_CACHE_LINE_SIZE);
    if (!rcu)
        return -ENOMEM;
    if (rte_rcu_qsbr_init(rcu, workers) != 0)
        return -rte_errno;
    for (unsigned i = 0; i < workers; i++)
        if (rte_rcu_qsbr_thread_register(rcu, i) != 0)
            return -rte_errno;
    return 0;
}

uint64_t mx_dataplane_rcu_start(void)
{
    return rcu ? rte_rcu_qsbr_start(rcu) : 0;
}

bool mx_dataplane_rcu_check(uint64_t token)
{
    return !rcu || rte_rcu_qsbr_check(rcu, token, false) == 1;
}

int mx_dataplane_init(const struct mx_dataplane_params *p)
{
    if (!p || p->workers == 0 || p->workers >= MX_MAX_WORKERS || p->n_listen > MX_MAX_LISTEN)
        return -EINVAL;
    const char *backend = p->backend ? p->backend : "kernel";
    bool dpdk = strcmp(backend, "dpdk") == 0;
    if (!dpdk && strcmp(backend, "kernel") != 0) {
        fprintf(stderr, "mxgate[dataplane]: unknown backend \"%s\"\n", backend);
        return -ENOTSUP;
    }
    memset(&mx_dp, 0, sizeof mx_dp);
    mx_dp.dpdk = dpdk;
    mx_dp.p = *p;
    for (size_t i = 0; i < p->n_listen; i++)
        mx_dp.listen[i] = p->listen[i];
    mx_dp.p.listen = mx_dp.listen;
    mx_dp.n_workers = p->workers;

    char lcores[1024];
    int rc = build_lcore_map(p->workers, lcores, sizeof lcores);
    if (rc < 0)
        return rc;
    char *argv[64];
    int argc = 0;
    argv[argc++] = "mxgate";
    if (!dpdk) {
        /* Kernel sockets need no hugepages and no devices. */
        argv[argc++] = "--no-huge";
        argv[argc++] = "-m";
        argv[argc++] = "512";
        argv[argc++] = "--no-pci";
        argv[argc++] = "--no-shconf";
        argv[argc++] = "--no-telemetry";
    }
    argv[argc++] = "--lcores";
    argv[argc++] = lcores;
    argv[argc++] = "--log-level";
    argv[argc++] = "lib.eal:error";
    char *store = NULL;
    int extra = split_args(p->eal_extra, argv + argc, 60 - argc, &store);
    if (extra < 0) {
        free(store);
        return extra;
    }
    argc += extra;
    argv[argc] = NULL;
    /* rte_eal_init() consumes and may reorder argv; it is our local copy. */
    rc = rte_eal_init(argc, argv);
    if (rc < 0) {
        fprintf(stderr, "mxgate[dataplane]: EAL init failed: %s\n", rte_strerror(rte_errno));
        free(store);
        return -rte_errno;
    }
    mx_dp.eal_up = true;
    eal_arg_text = store;
    rte_timer_subsystem_init();
    rc = rcu_init(p->workers);
    if (rc < 0)
        return rc;

    for (unsigned i = 0; i < p->workers; i++) {
        struct mx_worker *w = calloc(1, sizeof *w);
        if (!w)
            return -ENOMEM;
        w->index = i;
        w->lcore = i + 1;
        mx_dp.workers[i] = w;
        rc = dpdk ? 0 : mx_kernel_listen_open(w);
        if (rc < 0)
            return rc;
    }
    return dpdk ? mx_dpdk_backend_init(p) : 0;
}

unsigned mx_dataplane_workers(void)
{
    return mx_dp.n_workers;
}

struct mx_worker *mx_worker_self(void)
{
    return RTE_PER_LCORE(cur_worker);
}

unsigned mx_worker_index(const struct mx_worker *w)
{
    return w->index;
}

struct io_uring *mx_worker_ring(struct mx_worker *w)
{
    return &w->ring;
}

int mx_worker_add_tick(struct mx_worker *w, mx_tick_fn fn, void *arg)
{
    if (w->n_ticks == MX_MAX_TICKS)
        return -ENOSPC;
    w->ticks[w->n_ticks].fn = fn;
    w->ticks[w->n_ticks].arg = arg;
    w->n_ticks++;
    return 0;
}

uint64_t mx_worker_now_ms(const struct mx_worker *w)
{
    return w->now_ms;
}

void mx_worker_wake_within(struct mx_worker *w, uint64_t ms)
{
    if (ms < w->wake_within_ms)
        w->wake_within_ms = ms;
}

bool mx_worker_stopping(const struct mx_worker *w)
{
    (void)w;
    return atomic_load_explicit(&mx_dp.stopping, memory_order_relaxed);
}

static void dispatch_completions(struct mx_worker *w)
{
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&w->ring, head, cqe)
    {
        struct mx_uring_op *op = io_uring_cqe_get_data(cqe);
        seen++;
        if (op)
            op->done(op, cqe->res, cqe->flags);
    }
    io_uring_cq_advance(&w->ring, seen);
}

static void wait_for_work(struct mx_worker *w)
{
    uint64_t ms = w->wake_within_ms;
    if (ms > LOOP_MAX_WAIT_MS)
        ms = LOOP_MAX_WAIT_MS;
    struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = (long long)ms * 1000000};
    struct io_uring_cqe *cqe;
    int rc = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, &ts, NULL);
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY)
        fprintf(stderr, "mxgate[dataplane]: worker %u: io_uring wait: %s\n", w->index,
                strerror(-rc));
}

static int worker_main(void *arg)
{
    struct mx_worker *w = arg;
    RTE_PER_LCORE(cur_worker) = w;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals belong to the main thread */

    struct io_uring_params up = {.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN};
    unsigned entries = mx_dp.p.uring_entries ? mx_dp.p.uring_entries : 1024;
    int rc = io_uring_queue_init_params(entries, &w->ring, &up);
    if (rc == -EINVAL) {
        memset(&up, 0, sizeof up);
        rc = io_uring_queue_init_params(entries, &w->ring, &up);
    }
    if (rc < 0) {
        fprintf(stderr, "mxgate[dataplane]: worker %u: io_uring_queue_init: %s\n", w->index,
                strerror(-rc));
        return rc;
    }
    w->ring_ok = true;
    w->now_ms = mx_dp_monotonic_ms();
    if (mx_dp.p.on_worker_init) {
        rc = mx_dp.p.on_worker_init(w, mx_dp.p.init_arg);
        if (rc < 0) {
            fprintf(stderr, "mxgate[dataplane]: worker %u: init failed: %s\n", w->index,
                    strerror(-rc));
            return rc;
        }
    }
    rc = mx_kernel_worker_start(w);
    if (rc == 0 && mx_dp.dpdk)
        rc = dpdk_worker_start(w);
    if (rc < 0)
        return rc;

    bool told_stop = false;
    rte_rcu_qsbr_thread_online(rcu, w->index);
    for (;;) {
        /* between iterations this worker holds no pointer loaded from shared state */
        rte_rcu_qsbr_quiescent(rcu, w->index);
        w->wake_within_ms = LOOP_MAX_WAIT_MS;
        if (mx_dp.dpdk) {
            /* Poll the port; only an idle port lets the loop sleep (1 ms). */
            unsigned got = mx_dpdk_poll(w->index, w->now_ms);
            w->wake_within_ms = got ? 0 : 1;
            dpdk_feed_stats(w);
        }
        wait_for_work(w);
        uint64_t busy_from = mx_dp_monotonic_us();
        w->now_ms = busy_from / 1000;
        dispatch_completions(w);
        mx_dns_worker_poll(w);
        rte_timer_manage();
        for (unsigned i = 0; i < w->n_ticks; i++)
            w->ticks[i].fn(w, w->ticks[i].arg);
        mx_kernel_flush(w);
        MX_STATS_INC(WORKER_LOOPS);
        MX_STATS_ADD(WORKER_BUSY_US, mx_dp_monotonic_us() - busy_from);

        if (atomic_load_explicit(&mx_dp.stopping, memory_order_acquire)) {
            if (!told_stop) {
                mx_kernel_stop_accepting(w);
                told_stop = true;
            }
            if (w->n_conns == 0 || w->now_ms >= mx_dp.stop_deadline_ms) {
                mx_kernel_close_all(w);
                /* a few more turns so pending flushes and closes complete */
                for (int round = 0; round < 50; round++) {
                    w->wake_within_ms = 2;
                    wait_for_work(w);
                    w->now_ms = mx_dp_monotonic_ms();
                    dispatch_completions(w);
                    for (unsigned i = 0; i < w->n_ticks; i++)
                        w->ticks[i].fn(w, w->ticks[i].arg);
                    if (w->n_conns == 0 && round >= 5)
                        break;
                }
                break;
            }
        }
    }
    rte_rcu_qsbr_thread_offline(rcu, w->index);
    mx_kernel_worker_fini(w);
    return 0;
}

int mx_dataplane_start(void)
{
    for (unsigned i = 0; i < mx_dp.n_workers; i++) {
        struct mx_worker *w = mx_dp.workers[i];
        int rc = rte_eal_remote_launch(worker_main, w, w->lcore);
        if (rc < 0)
            return rc;
    }
    mx_dp.started = true;
    return 0;
}

void mx_dataplane_stop(unsigned grace_ms)
{
    if (!mx_dp.started)
        return;
    mx_dp.stop_deadline_ms = mx_dp_monotonic_ms() + grace_ms;
    atomic_store_explicit(&mx_dp.stopping, true, memory_order_release);
    rte_eal_mp_wait_lcore();
    mx_dp.started = false;
    atomic_store(&mx_dp.stopped, true);
}

void mx_dataplane_cleanup(void)
{
    for (unsigned i = 0; i < mx_dp.n_workers; i++) {
        struct mx_worker *w = mx_dp.workers[i];
        if (!w)
            continue;
        for (unsigned l = 0; l < w->n_listen; l++)
            if (w->listen_fd[l] >= 0)
                close(w->listen_fd[l]);
        free(w);
        mx_dp.workers[i] = NULL;
    }
    if (mx_dp.dpdk && mx_dp.eal_up)
        mx_dpdk_fini();
    rte_free(rcu);
    rcu = NULL;
    if (mx_dp.eal_up) {
        rte_timer_subsystem_finalize();
        rte_eal_cleanup();
        mx_dp.eal_up = false;
    }
    free(eal_arg_text);
    eal_arg_text = NULL;
}
