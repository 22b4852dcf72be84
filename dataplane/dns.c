/*
 * dns.c - the DNS service thread: c-ares behind two kinds of ring.
 *
 * Workers put queries on one multi-producer ring and poke an eventfd; the
 * service thread runs c-ares's event loop (poll on its sockets + the
 * eventfd), and puts each finished query on the asking worker's own
 * single-consumer ring, which the worker drains once per loop iteration
 * (mx_dns_worker_poll) and runs the callback there. No worker ever blocks on
 * DNS and no lock is taken on the hot path.
 */
#include <arpa/inet.h>
#include <ares.h>
#include <netdb.h>
#include <sched.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <rte_ring.h>

#include "dataplane/dataplane_internal.h"

#define DNS_RING_SIZE 4096 /* queries in flight, all workers */
#define DNS_DEFAULT_TTL 300

struct dns_query {
    struct mx_worker *w;
    mx_dns_fn cb;
    void *arg;
    struct mx_dns_result r;
};

static struct {
    pthread_t thread;
    bool running;
    atomic_bool stop;
    int efd;
    ares_channel ch;
    struct rte_ring *in;
    struct rte_ring *out[MX_MAX_WORKERS + 1]; /* per worker; last = non-worker callers */
} dns;

static int status_from_ares(int st)
{
    switch (st) {
    case ARES_SUCCESS:
        return 0;
    case ARES_ENODATA:
    case ARES_ENOTFOUND:
        return -ENOENT;
    case ARES_ETIMEOUT:
        return -ETIMEDOUT;
    case ARES_ECANCELLED:
    case ARES_EDESTRUCTION:
        return -ECANCELED;
    case ARES_ENOMEM:
        return -ENOMEM;
    default:
        return -EIO;
    }
}

static void copy_name(char *dst, const char *src)
{
    size_t n = strnlen(src, MX_DNS_NAME_MAX - 1);
    memcpy(dst, src, n);
    dst[n] = 0;
}

static int cmp_mx(const void *a, const void *b)
{
    const struct mx_dns_mx *x = a, *y = b;
    return (int)x->preference - (int)y->preference;
}

int mx_dns_parse(const uint8_t *abuf, size_t alen, enum mx_dns_type type, struct mx_dns_result *r)
{
    r->type = type;
    r->n = 0;
    r->ttl = DNS_DEFAULT_TTL;
    if (alen > 65535) {
        r->status = -EIO;
        return r->status;
    }
    int st = ARES_EBADRESP;
    switch (type) {
    case MX_DNS_A: {
        struct ares_addrttl at[MX_DNS_MAX_ANSWERS];
        int n = MX_DNS_MAX_ANSWERS;
        st = ares_parse_a_reply(abuf, (int)alen, NULL, at, &n);
        if (st == ARES_SUCCESS) {
            for (int i = 0; i < n; i++) {
                memcpy(r->a[i], &at[i].ipaddr, 4);
                if (i == 0 || (uint32_t)at[i].ttl < r->ttl)
                    r->ttl = at[i].ttl > 0 ? (uint32_t)at[i].ttl : 0;
            }
            r->n = (size_t)n;
        }
        break;
    }
    case MX_DNS_AAAA: {
        struct ares_addr6ttl at[MX_DNS_MAX_ANSWERS];
        int n = MX_DNS_MAX_ANSWERS;
        st = ares_parse_aaaa_reply(abuf, (int)alen, NULL, at, &n);
        if (st == ARES_SUCCESS) {
            for (int i = 0; i < n; i++) {
                memcpy(r->aaaa[i], &at[i].ip6addr, 16);
                if (i == 0 || (uint32_t)at[i].ttl < r->ttl)
                    r->ttl = at[i].ttl > 0 ? (uint32_t)at[i].ttl : 0;
            }
            r->n = (size_t)n;
        }
        break;
    }
    case MX_DNS_MX: {
        struct ares_mx_reply *mx = NULL;
        st = ares_parse_mx_reply(abuf, (int)alen, &mx);
        if (st == ARES_SUCCESS) {
            for (struct ares_mx_reply *p = mx; p && r->n < MX_DNS_MAX_ANSWERS; p = p->next) {
                r->mx[r->n].preference = p->priority;
                copy_name(r->mx[r->n].host, p->host ? p->host : "");
                r->n++;
            }
            qsort(r->mx, r->n, sizeof r->mx[0], cmp_mx);
        }
        ares_free_data(mx);
        break;
    }
    case MX_DNS_TXT: {
        struct ares_txt_ext *txt = NULL;
        st = ares_parse_txt_reply_ext(abuf, (int)alen, &txt);
        if (st == ARES_SUCCESS) {
            /* A record may hold several strings: join them, as RFC 7208 does. */
            size_t len = 0;
            for (struct ares_txt_ext *p = txt; p; p = p->next) {
                if (p->record_start) {
                    if (r->n == MX_DNS_MAX_ANSWERS)
                        break;
                    r->n++;
                    len = 0;
                }
                if (r->n == 0)
                    continue;
                char *dst = r->txt[r->n - 1];
                size_t room = sizeof r->txt[0] - 1 - len;
                size_t take = p->length < room ? p->length : room;
                memcpy(dst + len, p->txt, take);
                len += take;
                dst[len] = 0;
            }
        }
        ares_free_data(txt);
        break;
    }
    case MX_DNS_PTR: {
        struct hostent *h = NULL;
        st = ares_parse_ptr_reply(abuf, (int)alen, NULL, 0, AF_INET, &h);
        if (st == ARES_SUCCESS && h) {
            copy_name(r->txt[0], h->h_name ? h->h_name : "");
            r->n = 1;
            for (char **al = h->h_aliases; al && *al && r->n < MX_DNS_MAX_ANSWERS; al++)
                copy_name(r->txt[r->n++], *al);
        }
        if (h)
            ares_free_hostent(h);
        break;
    }
    default:
        st = ARES_ENOTIMP;
        break;
    }
    r->status = status_from_ares(st);
    if (r->status == 0 && r->n == 0)
        r->status = -ENOENT;
    return r->status;
}

/* ---- service thread -------------------------------------------------- */

static struct rte_ring *out_ring_for(struct mx_worker *w)
{
    return dns.out[w ? w->index : MX_MAX_WORKERS];
}

static void query_done(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    (void)timeouts;
    struct dns_query *q = arg;
    if (status == ARES_SUCCESS && abuf)
        mx_dns_parse(abuf, (size_t)alen, q->r.type, &q->r);
    else
        q->r.status = status_from_ares(status);
    /* The out ring has room for every query that can be in flight. */
    while (rte_ring_sp_enqueue(out_ring_for(q->w), q) != 0)
        sched_yield();
}

static void start_queries(void)
{
    void *batch[64];
    unsigned n;
    while ((n = rte_ring_sc_dequeue_burst(dns.in, batch, 64, NULL)) > 0) {
        for (unsigned i = 0; i < n; i++) {
            struct dns_query *q = batch[i];
            ares_query(dns.ch, q->r.name, 1 /* ns_c_in */, (int)q->r.type, query_done, q);
        }
    }
}

static void *dns_thread(void *arg)
{
    (void)arg;
    while (!atomic_load(&dns.stop)) {
        struct pollfd pf[ARES_GETSOCK_MAXNUM + 1];
        ares_socket_t socks[ARES_GETSOCK_MAXNUM];
        int bits = ares_getsock(dns.ch, socks, ARES_GETSOCK_MAXNUM);
        int n = 0;
        pf[n++] = (struct pollfd){.fd = dns.efd, .events = POLLIN};
        for (int i = 0; i < ARES_GETSOCK_MAXNUM; i++) {
            short ev = 0;
            /* (c-ares's own macros shift a signed 1 into the sign bit) */
            if ((unsigned)bits >> i & 1u)
                ev |= POLLIN;
            if ((unsigned)bits >> (i + ARES_GETSOCK_MAXNUM) & 1u)
                ev |= POLLOUT;
            if (ev)
                pf[n++] = (struct pollfd){.fd = socks[i], .events = ev};
        }
        struct timeval tv, max = {.tv_sec = 1};
        struct timeval *t = ares_timeout(dns.ch, &max, &tv);
        int ms = (int)(t->tv_sec * 1000 + t->tv_usec / 1000);
        poll(pf, (nfds_t)n, ms);
        if (pf[0].revents & POLLIN) {
            uint64_t v;
            if (read(dns.efd, &v, sizeof v) < 0 && errno != EAGAIN)
                perror("mxgate[dns]: eventfd");
        }
        for (int i = 1; i < n; i++) {
            ares_socket_t rfd = (pf[i].revents & (POLLIN | POLLERR | POLLHUP)) ? pf[i].fd
                                                                               : ARES_SOCKET_BAD;
            ares_socket_t wfd = (pf[i].revents & POLLOUT) ? pf[i].fd : ARES_SOCKET_BAD;
            if (rfd != ARES_SOCKET_BAD || wfd != ARES_SOCKET_BAD)
                ares_process_fd(dns.ch, rfd, wfd);
        }
        ares_process_fd(dns.ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD); /* timeouts */
        start_queries();
    }
    ares_cancel(dns.ch); /* pending queries complete with ARES_ECANCELLED */
    return NULL;
}

int mx_dns_start(const char *servers, unsigned timeout_ms, unsigned tries)
{
    if (dns.running)
        return -EALREADY;
    int rc = ares_library_init(ARES_LIB_INIT_ALL);
    if (rc != ARES_SUCCESS)
        return -ENOMEM;
    struct ares_options o = {
        .flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES,
        .timeout = timeout_ms ? (int)timeout_ms : 2000,
        .tries = tries ? (int)tries : 2,
    };
    rc = ares_init_options(&dns.ch, &o, ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
    if (rc != ARES_SUCCESS)
        return -ENOMEM;
    if (servers && *servers && ares_set_servers_ports_csv(dns.ch, servers) != ARES_SUCCESS) {
        ares_destroy(dns.ch);
        return -EINVAL;
    }
    char name[32];
    snprintf(name, sizeof name, "mx_dns_in_%d", getpid());
    dns.in = rte_ring_create(name, DNS_RING_SIZE, SOCKET_ID_ANY, RING_F_SC_DEQ);
    for (unsigned i = 0; i <= MX_MAX_WORKERS && dns.in; i++) {
        if (i < MX_MAX_WORKERS && i >= mx_dp.n_workers)
            continue;
        snprintf(name, sizeof name, "mx_dns_out_%u", i);
        dns.out[i] = rte_ring_create(name, DNS_RING_SIZE, SOCKET_ID_ANY,
                                     RING_F_SP_ENQ | (i == MX_MAX_WORKERS ? 0 : RING_F_SC_DEQ));
        if (!dns.out[i]) {
            mx_dns_stop();
            return -ENOMEM;
        }
    }
    if (!dns.in) {
        ares_destroy(dns.ch);
        return -ENOMEM;
    }
    dns.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    atomic_store(&dns.stop, false);
    if (pthread_create(&dns.thread, NULL, dns_thread, NULL) != 0) {
        mx_dns_stop();
        return -EAGAIN;
    }
    pthread_setname_np(dns.thread, "mx-dns");
    dns.running = true;
    return 0;
}

/* Run the callbacks of every finished query of this worker. */
void mx_dns_worker_poll(struct mx_worker *w)
{
    struct rte_ring *r = dns.out[w ? w->index : MX_MAX_WORKERS];
    if (!r)
        return;
    void *batch[32];
    unsigned n;
    while ((n = rte_ring_dequeue_burst(r, batch, 32, NULL)) > 0) {
        for (unsigned i = 0; i < n; i++) {
            struct dns_query *q = batch[i];
            q->cb(q->arg, &q->r);
            free(q);
        }
    }
}

void mx_dns_stop(void)
{
    if (dns.running) {
        atomic_store(&dns.stop, true);
        uint64_t one = 1;
        if (write(dns.efd, &one, sizeof one) < 0)
            perror("mxgate[dns]: eventfd");
        pthread_join(dns.thread, NULL);
        dns.running = false;
    }
    if (dns.ch) {
        ares_destroy(dns.ch);
        dns.ch = NULL;
    }
    /* Callbacks of cancelled queries: their workers are gone, just free them. */
    for (unsigned i = 0; i <= MX_MAX_WORKERS; i++) {
        if (!dns.out[i])
            continue;
        void *q;
        while (rte_ring_dequeue(dns.out[i], &q) == 0)
            free(q);
        rte_ring_free(dns.out[i]);
        dns.out[i] = NULL;
    }
    if (dns.in) {
        void *q;
        while (rte_ring_dequeue(dns.in, &q) == 0)
            free(q);
        rte_ring_free(dns.in);
        dns.in = NULL;
    }
    if (dns.efd > 0)
        close(dns.efd);
    dns.efd = -1;
    ares_library_cleanup();
}

static bool valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= MX_DNS_NAME_MAX - 1)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c <= ' ' || c == 0x7f)
            return false;
    }
    return true;
}

int mx_dns_query(struct mx_worker *w, const char *name, enum mx_dns_type type, mx_dns_fn cb,
                 void *arg)
{
    if (!dns.running)
        return -ENOTCONN;
    if (!name || !valid_name(name) || !cb)
        return -EINVAL;
    struct dns_query *q = malloc(sizeof *q);
    if (!q)
        return -ENOMEM;
    q->w = w;
    q->cb = cb;
    q->arg = arg;
    memset(&q->r, 0, offsetof(struct mx_dns_result, a));
    q->r.type = type;
    copy_name(q->r.name, name);
    if (rte_ring_mp_enqueue(dns.in, q) != 0) {
        free(q);
        return -ENOBUFS;
    }
    uint64_t one = 1;
    if (write(dns.efd, &one, sizeof one) < 0 && errno != EAGAIN) {
        /* the service will still see it on its next timeout */
    }
    return 0;
}
