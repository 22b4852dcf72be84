/*
 * deliver_smtp.c - the SMTP delivery agent: one message, some recipients,
 * one route, on one worker.
 *
 * It connects with mx_stream_connect() to the route's hosts in fail-over
 * order, runs the transport-neutral client of smtp/client.c over the stream
 * and reports one result per recipient through the done callback, exactly
 * once. The next host is tried when a connection cannot be made or the
 * session never gets ready (4xx/5xx greeting, EHLO and HELO refused, TLS
 * handshake failure — that one first retries the same host in plaintext);
 * once MAIL went out, the answers of that host are final for this attempt.
 *
 * A connection lives in struct dconn, the attempt in struct dlv. They part
 * as soon as the results are known: done() runs at once (the caller may free
 * the request), while the connection says QUIT and closes on its own.
 */
#include "queue/deliver.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ssl.h>

#include "dataplane/dataplane.h"
#include "smtp/smtp.h"

#define CONNECT_TIMEOUT_MS (30u * 1000) /* like Postfix smtp_connect_timeout */
#define WRITE_BUDGET (512u * 1024)      /* bytes handed to the stream per turn */
#define IDLE_MS 5000u                   /* keep a finished connection this long for reuse */
#define IDLE_MAX 32u                    /* idle connections kept per worker */

struct dlv;

/** One connection to one host; outlives its attempt while it says QUIT. */
struct dconn {
    struct dlv *d; /* NULL once the attempt moved on */
    struct mx_stream *s;
    struct mx_smtp_client *c;
    bool connected;
    bool blocked; /* waiting for drained() */
    bool closing; /* mx_stream_close() called */
    bool ended;   /* closed() is running */
    bool idle;    /* parked in the worker's idle list */
    bool reused;  /* taken from the idle list for the current attempt */
    bool kick;    /* the next timer expiry just means "pump now" */
    struct dconn *idle_next, *idle_prev;
    struct sockaddr_storage peer; /* the host it talks to, for reuse */
    socklen_t peer_len;
    bool counted; /* holds one of its destination's connection slots */
};

/*
 * Idle connections of this worker (workers are threads; a stream is only
 * touched by its own worker, so the list needs no lock). A connection whose
 * transaction finished waits here for IDLE_MS; an attempt to the same host
 * takes it and starts with RSET instead of a new TCP and TLS handshake.
 */
static _Thread_local struct dconn *idle_head;
static _Thread_local unsigned idle_count;

/** One delivery attempt, from start to done(). */
struct dlv {
    struct mx_worker *w;
    const struct mx_deliver_req *req;
    mx_deliver_done_fn done;
    void *arg;
    size_t host;
    bool tls_off; /* retrying the current host without STARTTLS */
    bool sent;    /* the transaction was started on the current connection */
    bool starting; /* inside mx_deliver_smtp_start(): done() must not run yet */
    bool retried_fresh; /* a reused connection failed once: no second reuse */
    struct dlv *wait_next; /* in the worker's wait list (destination at its limit) */
    bool failed_early; /* every host failed synchronously during start */
    int early_rc;
    struct dconn *conn;
    struct mx_smtp_client_msg msg;
    struct mx_deliver_rcpt_result *res;
    char remote[80];
    char error[256];
};

static void conn_pump(struct dconn *k);
static void dlv_try(struct dlv *d);
static const struct mx_sockaddr *cur_host(const struct dlv *d);

/* ---- per-destination connection limit --------------------------------- */

/*
 * At most dest_limit connections per destination host on each worker (busy
 * and idle ones together); an attempt beyond it waits in a FIFO until one of
 * them parks (it takes that connection) or closes. 0 means no limit.
 */
static unsigned dest_limit;

#define DEST_SLOTS 64

struct dest_slot {
    struct sockaddr_storage a;
    socklen_t len; /* 0: free slot */
    unsigned conns;
};

static _Thread_local struct dest_slot dest_tab[DEST_SLOTS];
static _Thread_local struct dlv *wait_head, *wait_tail;

void mx_deliver_smtp_set_dest_limit(unsigned per_worker)
{
    dest_limit = per_worker;
}

/** The slot of a destination; NULL when the table is full (then no limit applies). */
static struct dest_slot *dest_find(const struct sockaddr_storage *a, socklen_t len, bool create)
{
    struct dest_slot *free_slot = NULL;
    for (size_t i = 0; i < DEST_SLOTS; i++) {
        struct dest_slot *t = &dest_tab[i];
        if (t->len == len && memcmp(&t->a, a, len) == 0)
            return t;
        if (!t->len && !free_slot)
            free_slot = t;
    }
    if (!create || !free_slot)
        return NULL;
    memcpy(&free_slot->a, a, len);
    free_slot->len = len;
    free_slot->conns = 0;
    return free_slot;
}

/* ---- connection-failure cache ------------------------------------------ */

/*
 * A host:port whose connect was refused or timed out is not tried again by
 * this worker for req->fail_ttl_ms: the attempts meanwhile skip it (the
 * next host of the route, or a deferral that says so), so a dead host is
 * not hammered by every queued message and fail-over does not wait for its
 * timeout each time. Per worker, like the rest of this file: no locks.
 */
#define FAIL_SLOTS 128

struct fail_slot {
    struct sockaddr_storage a;
    socklen_t len; /* 0: free */
    uint64_t until_ms;
};

static _Thread_local struct fail_slot fail_tab[FAIL_SLOTS];

void mx_deliver_smtp_clear_fail_cache(void)
{
    memset(fail_tab, 0, sizeof fail_tab);
}

static void fail_note(const struct dlv *d, const struct mx_sockaddr *a);
static uint64_t fail_left_ms(const struct dlv *d, const struct mx_sockaddr *a);

/* ---- TLS context ------------------------------------------------------ */

static SSL_CTX *client_ctx;
static pthread_once_t client_ctx_once = PTHREAD_ONCE_INIT;

/** One SSL_CTX for every worker: SSL_new() on a shared context is thread-safe. */
static void client_ctx_init(void)
{
    client_ctx = SSL_CTX_new(TLS_client_method());
    if (client_ctx)
        SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, NULL); /* opportunistic */
}

/* ---- the attempt ------------------------------------------------------ */

/** Add one problem to the attempt's error text ("a; b"), bounded. */
static void add_error(struct dlv *d, const char *fmt, const char *a, const char *b)
{
    char one[256];
    snprintf(one, sizeof one, fmt, a, b);
    size_t len = strlen(d->error), n = strlen(one);
    if (len) {
        if (len + 2 >= sizeof d->error)
            return;
        memcpy(d->error + len, "; ", 2);
        len += 2;
    }
    if (n > sizeof d->error - 1 - len)
        n = sizeof d->error - 1 - len; /* keep the first problems, cut the rest */
    memcpy(d->error + len, one, n);
    d->error[len + n] = 0;
}

static const char *host_text(const struct dlv *d, size_t i)
{
    return d->req->route->hosts[i].text;
}

static const struct mx_sockaddr *cur_host(const struct dlv *d)
{
    return &d->req->route->hosts[d->host];
}

static void fail_note(const struct dlv *d, const struct mx_sockaddr *a)
{
    if (!d->req->fail_ttl_ms || !a->len)
        return;
    uint64_t now = mx_worker_now_ms(d->w);
    struct fail_slot *use = NULL;
    for (size_t i = 0; i < FAIL_SLOTS; i++) {
        struct fail_slot *t = &fail_tab[i];
        if (t->len == a->len && memcmp(&t->a, &a->ss, a->len) == 0) {
            use = t;
            break;
        }
        /* a free or expired slot, else the one closest to expiry */
        if (!use || (use->len && use->until_ms > now && (!t->len || t->until_ms < use->until_ms)))
            use = t;
    }
    memcpy(&use->a, &a->ss, a->len);
    use->len = a->len;
    use->until_ms = now + d->req->fail_ttl_ms;
}

/** Milliseconds until host a may be tried again (0: now). */
static uint64_t fail_left_ms(const struct dlv *d, const struct mx_sockaddr *a)
{
    if (!d->req->fail_ttl_ms)
        return 0;
    uint64_t now = mx_worker_now_ms(d->w);
    for (size_t i = 0; i < FAIL_SLOTS; i++) {
        struct fail_slot *t = &fail_tab[i];
        if (t->len == a->len && memcmp(&t->a, &a->ss, a->len) == 0)
            return t->until_ms > now ? t->until_ms - now : 0;
    }
    return 0;
}

/** Report and free the attempt. Results not set by anyone are temporary. */
static void dlv_finish(struct dlv *d)
{
    for (size_t i = 0; i < d->req->n_rcpt; i++) {
        if (d->res[i].code || d->res[i].text[0])
            continue;
        snprintf(d->res[i].text, sizeof d->res[i].text, "%s",
                 d->error[0] ? d->error : "delivery not attempted");
    }
    struct mx_deliver_result r = {.n = d->req->n_rcpt, .rcpt = d->res};
    snprintf(r.remote, sizeof r.remote, "%s", d->remote);
    snprintf(r.error, sizeof r.error, "%s", d->error);
    if (d->conn)
        d->conn->d = NULL;
    d->done(d->arg, &r);
    free(d->res);
    free(d);
}

/** Copy the client's per-recipient answers into the attempt. */
static void take_results(struct dlv *d, const struct mx_smtp_client *c)
{
    size_t n;
    const struct mx_smtp_rcpt_result *r = mx_smtp_client_results(c, &n);
    for (size_t i = 0; i < n && i < d->req->n_rcpt; i++) {
        d->res[i].code = r[i].code;
        snprintf(d->res[i].enh, sizeof d->res[i].enh, "%s", r[i].enh);
        snprintf(d->res[i].text, sizeof d->res[i].text, "%s", r[i].text);
    }
}

/** Let the connection go its own way (closing) and forget it. */
static void dlv_detach(struct dlv *d)
{
    struct dconn *k = d->conn;
    if (!k)
        return;
    k->d = NULL;
    d->conn = NULL;
    if (!k->ended && !k->closing) {
        k->closing = true;
        mx_stream_close(k->s);
    }
}

/** Give up on the current host (or, after a TLS failure, on TLS with it). */
static void dlv_next_host(struct dlv *d, bool tls_failed)
{
    dlv_detach(d);
    if (tls_failed && !d->tls_off) {
        d->tls_off = true;
    } else {
        d->host++;
        d->tls_off = false;
    }
    dlv_try(d);
}

/* ---- idle connection cache ------------------------------------------- */

static void idle_unlink(struct dconn *k)
{
    if (!k->idle)
        return;
    if (k->idle_prev)
        k->idle_prev->idle_next = k->idle_next;
    else
        idle_head = k->idle_next;
    if (k->idle_next)
        k->idle_next->idle_prev = k->idle_prev;
    k->idle_next = k->idle_prev = NULL;
    k->idle = false;
    idle_count--;
}

/** Park a connection that finished its transaction; false when it should QUIT. */
static bool idle_park(struct dconn *k, struct mx_worker *w)
{
    if (idle_count >= IDLE_MAX || k->ended || k->closing || mx_worker_stopping(w))
        return false;
    k->idle = true;
    k->idle_prev = NULL;
    k->idle_next = idle_head;
    if (idle_head)
        idle_head->idle_prev = k;
    idle_head = k;
    idle_count++;
    mx_stream_set_timer(k->s, IDLE_MS);
    return true;
}

static bool same_addr(const struct sockaddr_storage *a, socklen_t alen, const struct mx_sockaddr *b)
{
    return alen == b->len && memcmp(a, &b->ss, alen) == 0;
}

/** Take an idle connection to host a, if any. */
static struct dconn *idle_take(const struct mx_sockaddr *a)
{
    for (struct dconn *k = idle_head; k; k = k->idle_next) {
        if (same_addr(&k->peer, k->peer_len, a) &&
            mx_smtp_client_state(k->c) != MX_SMTPC_CLOSED) {
            idle_unlink(k);
            return k;
        }
    }
    return NULL;
}

/** Let the first attempt waiting for this destination go on. */
static void dest_wake(const struct sockaddr_storage *a, socklen_t len)
{
    struct dlv *prev = NULL;
    for (struct dlv *d = wait_head; d; prev = d, d = d->wait_next) {
        const struct mx_sockaddr *h = &d->req->route->hosts[d->host];
        if (h->len != len || memcmp(&h->ss, a, len) != 0)
            continue;
        if (prev)
            prev->wait_next = d->wait_next;
        else
            wait_head = d->wait_next;
        if (wait_tail == d)
            wait_tail = prev;
        d->wait_next = NULL;
        dlv_try(d);
        return;
    }
}

/** A connection gave back its destination slot. */
static void dest_release(struct dconn *k)
{
    if (!k->counted)
        return;
    k->counted = false;
    struct dest_slot *t = dest_find(&k->peer, k->peer_len, false);
    if (t && t->conns && --t->conns == 0 && !wait_head)
        t->len = 0;
    dest_wake(&k->peer, k->peer_len);
}

/* ---- stream callbacks ------------------------------------------------- */

static void on_data(struct mx_stream *s, void *ctx, const uint8_t *buf, size_t len)
{
    (void)s;
    struct dconn *k = ctx;
    mx_smtp_client_input(k->c, buf, len); /* failures show as the CLOSED state */
    conn_pump(k);
}

static void on_connected(struct mx_stream *s, void *ctx, int res)
{
    (void)s;
    struct dconn *k = ctx;
    struct dlv *d = k->d;
    if (!d)
        return;
    if (res < 0) {
        /* The transport ends the stream itself and calls closed(). */
        k->ended = true;
        k->d = NULL;
        d->conn = NULL;
        fail_note(d, cur_host(d));
        add_error(d, "connect to %s: %s", host_text(d, d->host), strerror(-res));
        d->host++;
        d->tls_off = false;
        dlv_try(d);
        return;
    }
    k->connected = true;
    snprintf(d->remote, sizeof d->remote, "%s", host_text(d, d->host));
    conn_pump(k);
}

static void on_timeout(struct mx_stream *s, void *ctx)
{
    (void)s;
    struct dconn *k = ctx;
    struct dlv *d = k->d;
    if (k->kick) { /* a reused connection starts its transaction from the loop */
        k->kick = false;
        conn_pump(k);
        return;
    }
    if (k->idle) { /* nobody wanted it: say goodbye */
        idle_unlink(k);
        mx_smtp_client_quit(k->c);
        conn_pump(k);
        return;
    }
    if (!k->connected) {
        if (d) {
            fail_note(d, cur_host(d));
            add_error(d, "connect to %s: %s", host_text(d, d->host), "Connection timed out");
            dlv_next_host(d, false);
        }
        return;
    }
    mx_smtp_client_timeout(k->c);
    conn_pump(k);
}

static void on_drained(struct mx_stream *s, void *ctx)
{
    (void)s;
    struct dconn *k = ctx;
    k->blocked = false;
    conn_pump(k);
}

static void on_closed(struct mx_stream *s, void *ctx, int res)
{
    (void)s;
    struct dconn *k = ctx;
    k->ended = true;
    idle_unlink(k);
    if (k->c && k->connected) {
        mx_smtp_client_eof(k->c, res);
        if (k->d)
            conn_pump(k);
    } else if (k->d) { /* closed before connected() said anything */
        struct dlv *d = k->d;
        k->d = NULL;
        d->conn = NULL;
        fail_note(d, cur_host(d));
        add_error(d, "connect to %s: %s", host_text(d, d->host),
                  res ? strerror(-res) : "connection closed");
        d->host++;
        dlv_try(d);
    }
    if (k->d)
        k->d->conn = NULL;
    mx_smtp_client_free(k->c);
    struct dconn copy = *k;
    free(k);
    dest_release(&copy); /* may start a waiting attempt */
}

static const struct mx_stream_cb dconn_cb = {
    .data = on_data,
    .connected = on_connected,
    .closed = on_closed,
    .timeout = on_timeout,
    .drained = on_drained,
};

/* ---- driving the client ---------------------------------------------- */

/** Hand the client's output to the stream, a bounded amount per turn. */
static void conn_flush(struct dconn *k)
{
    size_t budget = WRITE_BUDGET;
    while (!k->blocked && !k->ended && !k->closing) {
        size_t n;
        const uint8_t *p = mx_smtp_client_output(k->c, &n);
        if (!n)
            return;
        int rc = mx_stream_write(k->s, p, n);
        if (rc == -ENOBUFS) {
            k->blocked = true; /* resume in drained() */
            return;
        }
        if (rc < 0)
            return; /* stream closing: closed() follows */
        mx_smtp_client_output_done(k->c, n);
        if (n >= budget) {
            k->blocked = true; /* let the loop breathe; drained() resumes */
            return;
        }
        budget -= n;
    }
}

/** True when no recipient got any answer in the last transaction. */
static bool no_answer(const struct mx_smtp_client *c)
{
    size_t n;
    const struct mx_smtp_rcpt_result *r = mx_smtp_client_results(c, &n);
    for (size_t i = 0; i < n; i++)
        if (r[i].code)
            return false;
    return true;
}

/** Move bytes, then act on the client's state. */
static void conn_pump(struct dconn *k)
{
    k->kick = false; /* whatever woke us, this pump is the one the kick asked for */
    for (int turn = 0; turn < 4; turn++) {
        conn_flush(k);
        struct dlv *d = k->d;
        switch (mx_smtp_client_state(k->c)) {
        case MX_SMTPC_BUSY:
            break;
        case MX_SMTPC_READY:
        case MX_SMTPC_TXN_DONE:
            if (k->idle)
                return; /* parked: its timer runs */
            if (d && !d->sent) {
                d->sent = true;
                if (mx_smtp_client_send(k->c, &d->msg) == 0)
                    continue;
                add_error(d, "%s: %s", host_text(d, d->host), "cannot start transaction");
                dlv_finish(d);
                d = NULL;
            } else if (d) {
                take_results(d, k->c);
                /* Park before reporting: done() may start the next delivery to
                 * this host at once, and it should find this connection. */
                k->d = NULL;
                d->conn = NULL;
                bool parked = idle_park(k, d->w);
                dlv_finish(d); /* results are final: report now */
                d = NULL;
                if (parked) {
                    if (k->idle && dest_limit)
                        dest_wake(&k->peer, k->peer_len); /* a waiter takes it over */
                    return;
                }
            }
            if (mx_smtp_client_quit(k->c) == 0)
                continue;
            break;
        case MX_SMTPC_CLOSED:
            if (d) {
                const char *err = mx_smtp_client_error(k->c);
                if (k->reused && !d->retried_fresh && (!d->sent || no_answer(k->c))) {
                    /* The cached connection had died (the server timed it out):
                     * not this message's fault, so try a fresh connection. */
                    d->retried_fresh = true;
                    dlv_detach(d);
                    dlv_try(d);
                } else if (!d->sent || mx_smtp_client_setup_failed(k->c)) {
                    add_error(d, "%s: %s", host_text(d, d->host), err[0] ? err : "session failed");
                    d->remote[0] = 0;
                    dlv_next_host(d, mx_smtp_client_tls_failed(k->c));
                } else {
                    take_results(d, k->c);
                    if (err[0])
                        snprintf(d->error, sizeof d->error, "%s", err);
                    dlv_finish(d);
                }
            }
            if (!k->ended && !k->closing) {
                conn_flush(k); /* e.g. the QUIT after a 5xx greeting */
                k->closing = true;
                mx_stream_close(k->s);
            }
            return;
        }
        break;
    }
    if (!k->ended && !k->closing)
        mx_stream_set_timer(k->s, mx_smtp_client_timeout_ms(k->c));
}

/** Connect to the current host, or report when no host is left. */
static void dlv_try(struct dlv *d)
{
    const struct mx_route *rt = d->req->route;
    for (; d->host < rt->n_hosts; d->host++, d->tls_off = false) {
        const struct mx_sockaddr *a = &rt->hosts[d->host];
        struct dconn *k = d->retried_fresh ? NULL : idle_take(a);
        if (k) {
            k->d = d;
            k->reused = true;
            d->conn = k;
            d->sent = false;
            snprintf(d->remote, sizeof d->remote, "%s", a->text);
            k->kick = true; /* start from the loop, never inside our caller */
            mx_stream_set_timer(k->s, 1);
            return;
        }
        uint64_t left = fail_left_ms(d, a);
        if (left) {
            /* failed a moment ago: no connect attempt until its entry expires */
            char secs[32];
            snprintf(secs, sizeof secs, "%llus", (unsigned long long)((left + 999) / 1000));
            add_error(d, "host %s unreachable (cached, %s left)", a->text, secs);
            continue;
        }
        struct dest_slot *slot = dest_limit ? dest_find(&a->ss, a->len, true) : NULL;
        if (slot && slot->conns >= dest_limit) {
            /* Busy, not broken: wait for one of its connections. */
            if (wait_tail)
                wait_tail->wait_next = d;
            else
                wait_head = d;
            wait_tail = d;
            return;
        }
        k = calloc(1, sizeof *k);
        if (!k) {
            add_error(d, "%s%s", "out of memory", "");
            d->early_rc = -ENOMEM;
            break;
        }
        pthread_once(&client_ctx_once, client_ctx_init);
        struct mx_smtp_client_params p = {
            .helo_name = d->req->helo_name,
            .starttls = !d->tls_off && client_ctx != NULL,
            .tls_ctx = client_ctx,
        };
        int rc = mx_smtp_client_new(&p, &k->c);
        if (rc) {
            free(k);
            add_error(d, "%s: %s", "SMTP client", strerror(-rc));
            d->early_rc = rc;
            break;
        }
        k->d = d;
        memcpy(&k->peer, &a->ss, a->len);
        k->peer_len = a->len;
        d->conn = k;
        d->sent = false;
        rc = mx_stream_connect(d->w, (const struct sockaddr *)&a->ss, a->len, &dconn_cb, k, &k->s);
        if (rc) {
            d->conn = NULL;
            mx_smtp_client_free(k->c);
            free(k);
            fail_note(d, a);
            add_error(d, "connect to %s: %s", a->text, strerror(-rc));
            d->early_rc = rc;
            continue;
        }
        if (slot) {
            slot->conns++;
            k->counted = true;
        }
        mx_stream_set_timer(k->s, CONNECT_TIMEOUT_MS);
        return;
    }
    if (d->starting) { /* the caller gets -errno instead of a callback */
        d->failed_early = true;
        return;
    }
    dlv_finish(d);
}

/* Why the last mx_deliver_smtp_start() of this worker failed early. */
static _Thread_local char early_error[256];

const char *mx_deliver_smtp_start_error(void)
{
    return early_error;
}

void mx_deliver_set_start_error(const char *text)
{
    snprintf(early_error, sizeof early_error, "%s", text);
}

int mx_deliver_smtp_start(struct mx_worker *w, const struct mx_deliver_req *req,
                          mx_deliver_done_fn done, void *arg)
{
    early_error[0] = 0;
    if (!w || !req || !done || !req->route || !req->env || !req->n_rcpt || !req->rcpt_idx ||
        !req->helo_name || (req->len && !req->msg))
        return -EINVAL;
    if (req->route->scheme != MX_ROUTE_SMTP)
        return -ENOTSUP;
    if (!req->route->n_hosts || !req->route->hosts)
        return -EINVAL;
    for (size_t i = 0; i < req->n_rcpt; i++)
        if (req->rcpt_idx[i] >= req->env->n_rcpts)
            return -EINVAL;
    struct dlv *d = calloc(1, sizeof *d);
    if (!d)
        return -ENOMEM;
    d->res = calloc(req->n_rcpt, sizeof *d->res);
    if (!d->res) {
        free(d);
        return -ENOMEM;
    }
    d->w = w;
    d->req = req;
    d->done = done;
    d->arg = arg;
    d->msg = (struct mx_smtp_client_msg){
        .env = req->env,
        .rcpt_idx = req->rcpt_idx,
        .n_rcpt = req->n_rcpt,
        .data = req->msg,
        .len = req->len,
    };
    d->starting = true;
    d->early_rc = -EHOSTUNREACH;
    dlv_try(d);
    if (d->failed_early) {
        int rc = d->early_rc;
        snprintf(early_error, sizeof early_error, "%s", d->error);
        free(d->res);
        free(d);
        return rc;
    }
    d->starting = false;
    return 0;
}
