/*
 * reload.c - configuration generations: load, validate, publish, retire.
 *
 * The main thread is the only writer. Workers see one thing: the server
 * pointer in struct mx_smtp_current, loaded once per accepted connection.
 * A session then holds a reference to that server until it ends, so
 * sessions in progress finish on the settings they started with, and no
 * connection is dropped by a reload.
 *
 * Freeing an old generation needs both:
 *  (a) an RCU grace period after the swap: a worker that loaded the old
 *      pointer just before the store has taken its session reference by
 *      the time it reports its next quiescent state (once per loop turn);
 *  (b) a reference count of 0: every session started on it has ended.
 * Without (a), a worker between its load and its refcount increment could
 * see the count at 0 and the server freed under it.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/reload.h"
#include "config/config.h"
#include "dataplane/dataplane.h"
#include "scan/scan.h"
#include "smtp/smtp.h"

struct generation {
    unsigned id;
    struct mx_config *cfg; /* owned unless it is the start-up configuration */
    struct mx_smtp_server *srv;
    uint64_t rcu_token; /* grace period begun when it was replaced */
    struct generation *next_retired;
};

struct mx_reload {
    struct mx_reload_params p;
    struct mx_smtp_current current; /* what workers read */
    struct generation *gen;         /* the published one */
    struct generation *retired;     /* replaced, waiting for (a) and (b) */
    unsigned n_retired;
    unsigned next_id;
};

static void gen_free(struct mx_reload *r, struct generation *g)
{
    mx_smtp_server_free(g->srv);
    if (g->cfg != r->p.boot)
        mx_config_free(g->cfg);
    free(g);
}

int mx_reload_new(const struct mx_reload_params *p, struct mx_reload **out)
{
    struct mx_reload *r = calloc(1, sizeof *r);
    struct generation *g = calloc(1, sizeof *g);
    if (!r || !g) {
        free(r);
        free(g);
        return -ENOMEM;
    }
    r->p = *p;
    g->id = 1;
    g->cfg = p->boot;
    int rc = mx_smtp_server_new(g->cfg, p->queue, &g->srv);
    if (rc < 0) {
        free(r);
        free(g);
        return rc;
    }
    r->gen = g;
    r->next_id = 2;
    atomic_store_explicit(&r->current.srv, g->srv, memory_order_release);
    *out = r;
    return 0;
}

struct mx_smtp_current *mx_reload_current(struct mx_reload *r)
{
    return &r->current;
}

const struct mx_config *mx_reload_config(const struct mx_reload *r)
{
    return r->gen->cfg;
}

unsigned mx_reload_generation(const struct mx_reload *r)
{
    return r->gen->id;
}

unsigned mx_reload_retired(const struct mx_reload *r)
{
    return r->n_retired;
}

/* ---- what only a restart applies ---------------------------------------- */

static bool str_differs(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") != 0;
}

static bool addrs_differ(const struct mx_sockaddr *a, size_t na, const struct mx_sockaddr *b,
                         size_t nb)
{
    if (na != nb)
        return true;
    for (size_t i = 0; i < na; i++)
        if (a[i].len != b[i].len || memcmp(&a[i].ss, &b[i].ss, a[i].len) != 0)
            return true;
    return false;
}

static bool routes_differ(const struct mx_config *a, const struct mx_config *b)
{
    if (a->n_routes != b->n_routes)
        return true;
    for (size_t i = 0; i < a->n_routes; i++) {
        const struct mx_route *x = &a->routes[i], *y = &b->routes[i];
        if (str_differs(x->domain, y->domain) || x->scheme != y->scheme ||
            str_differs(x->maildir, y->maildir) ||
            addrs_differ(x->hosts, x->n_hosts, y->hosts, y->n_hosts))
            return true;
    }
    return false;
}

/* 0 means "no limit" for the message size */
static bool size_raised(uint64_t running, uint64_t next)
{
    return running != 0 && (next == 0 || next > running);
}

int mx_reload_restart_diff(const struct mx_config *a, const struct mx_config *b, char *out,
                           size_t len)
{
    const struct mx_impair *ia = &a->dp_impair, *ib = &b->dp_impair;
    /* what: NULL = "needs a restart" */
    const struct {
        const char *key;
        bool differs;
        const char *what;
    } keys[] = {
        {"listen.smtp", addrs_differ(a->listen_smtp, a->n_listen_smtp, b->listen_smtp,
                                     b->n_listen_smtp)},
        {"dataplane.backend", str_differs(a->dp_backend, b->dp_backend)},
        {"dataplane.workers", a->dp_workers != b->dp_workers},
        {"dataplane.eal", str_differs(a->dp_eal, b->dp_eal)},
        {"dataplane.address", str_differs(a->dp_address, b->dp_address)},
        {"dataplane.gateway", str_differs(a->dp_gateway, b->dp_gateway)},
        {"dataplane.impair", ia->drop != ib->drop || ia->reorder != ib->reorder ||
                                 ia->duplicate != ib->duplicate ||
                                 ia->delay_ms != ib->delay_ms || ia->seed != ib->seed},
        {"dns.servers", addrs_differ(a->dns_servers, a->n_dns_servers, b->dns_servers,
                                     b->n_dns_servers)},
        {"dns.timeout", a->dns_timeout_ms != b->dns_timeout_ms},
        {"dns.tries", a->dns_tries != b->dns_tries},
        {"spool.dir", str_differs(a->spool_dir, b->spool_dir)},
        {"control.socket", str_differs(a->control_socket, b->control_socket)},
        {"control.http", str_differs(a->control_http, b->control_http)},
        /* the queue (routing, retries, delivery HELO) keeps the start-up snapshot */
        {"routes", routes_differ(a, b)},
        {"queue.retry_first", a->queue_retry_first != b->queue_retry_first},
        {"queue.retry_max", a->queue_retry_max != b->queue_retry_max},
        {"queue.max_lifetime", a->queue_max_lifetime != b->queue_max_lifetime},
        {"queue.dest_concurrency", a->queue_dest_concurrency != b->queue_dest_concurrency},
        {"queue.dest_fail_ttl", a->queue_dest_fail_ttl != b->queue_dest_fail_ttl},
        {"queue.delay_warning", a->queue_delay_warning != b->queue_delay_warning},
        {"queue.compact_after", a->queue_compact_after != b->queue_compact_after},
        {"smtp.hostname", str_differs(a->smtp_hostname, b->smtp_hostname),
         "changed: new sessions greet with it; delivery (HELO, DSNs) needs a restart"},
        {"smtp.max_message_size", size_raised(a->smtp_max_message_size, b->smtp_max_message_size),
         "raised: needs a restart (the spool sizes its buffers at start; the old limit stays)"},
    };
    int n = 0;
    size_t off = 0;
    if (out && len)
        out[0] = 0;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (!keys[i].differs)
            continue;
        n++;
        if (out && off < len) {
            int w = snprintf(out + off, len - off, "%s %s\n", keys[i].key,
                             keys[i].what ? keys[i].what : "changed: needs a restart");
            off = w < 0 ? len : off + (size_t)w;
        }
    }
    return n;
}

/* ---- reload ------------------------------------------------------------- */

/*
 * mx_smtp_server_new() logs why it failed; for the operator's answer find
 * the reason again: the rules (compiled without the cache, so a broken
 * file is not masked), else the TLS files.
 */
static void explain_server_failure(const struct mx_config *cfg, int rc, FILE *t)
{
    if (cfg->n_scan_rules) {
        struct mx_scan_opts o;
        mx_smtp_scan_opts(cfg, &o);
        struct mx_scan_engine *e = NULL;
        char *err = NULL;
        int src = mx_scan_engine_load(&o, &e, &err);
        if (src < 0) {
            fprintf(t, "scan.rules: %s\n", err ? err : strerror(-src));
            free(err);
            return;
        }
        mx_scan_engine_free(e);
    }
    if (cfg->smtp_tls_cert && *cfg->smtp_tls_cert)
        fprintf(t, "smtp.tls: certificate %s / key %s not usable (%s; details in the log)\n",
                 cfg->smtp_tls_cert, cfg->smtp_tls_key ? cfg->smtp_tls_key : "",
                 strerror(-rc));
    else
        fprintf(t, "smtp: server set-up failed: %s\n", strerror(-rc));
}

/* The operator's report, into the log: the first line says what happened. */
static void log_report(const char *text)
{
    for (bool first = true; text && *text; first = false) {
        const char *nl = strchr(text, '\n');
        int n = nl ? (int)(nl - text) : (int)strlen(text);
        fprintf(stderr, "mxgate: %s%.*s\n", first ? "" : "reload: ", n, text);
        text += n + (nl ? 1 : 0);
    }
}

/*
 * Close the report stream, log it; the text, or NULL when memory ran out.
 * *buf is only valid once the stream is closed (open_memstream).
 */
static char *finish_report(FILE *t, char **buf)
{
    if (fclose(t) != 0) {
        free(*buf);
        return NULL;
    }
    log_report(*buf);
    return *buf;
}

/* The next generation from cfg (consumed), or the reasons why not on t. */
static int build(struct mx_reload *r, struct mx_config *cfg, FILE *t, struct generation **out)
{
    const char *name = r->p.path ? r->p.path : "(defaults)";
    /* The spool cannot take bigger messages than at start: keep SMTP's SIZE honest. */
    if (size_raised(r->p.boot->smtp_max_message_size, cfg->smtp_max_message_size))
        cfg->smtp_max_message_size = r->p.boot->smtp_max_message_size;
    struct generation *g = calloc(1, sizeof *g);
    if (!g) {
        mx_config_free(cfg);
        return -ENOMEM;
    }
    g->cfg = cfg;
    int rc = mx_smtp_server_new(cfg, r->p.queue, &g->srv);
    if (rc < 0) {
        fprintf(t, "reload refused: %s cannot be applied; generation %u stays in effect\n", name,
                r->gen->id);
        explain_server_failure(cfg, rc, t);
        mx_config_free(cfg);
        free(g);
        return rc == -ENOMEM ? rc : -EINVAL;
    }
    g->id = r->next_id++;
    *out = g;
    return 0;
}

int mx_reload_apply(struct mx_reload *r, char **report)
{
    *report = NULL;
    char *buf = NULL;
    size_t blen = 0;
    FILE *t = open_memstream(&buf, &blen);
    if (!t)
        return -ENOMEM;
    const char *name = r->p.path ? r->p.path : "(defaults)";
    struct mx_config *cfg = NULL;
    struct mx_config_errors errs = {0};
    int rc = mx_config_load(r->p.path, r->p.overrides, r->p.n_over, &cfg, &errs);
    if (rc < 0) {
        fprintf(t, "reload refused: %s is not valid; generation %u stays in effect\n", name,
                r->gen->id);
        for (size_t i = 0; i < errs.n; i++) {
            const struct mx_config_error *e = &errs.v[i];
            if (e->line)
                fprintf(t, "%s:%u: %s\n", e->file, e->line, e->msg);
            else
                fprintf(t, "%s: %s\n", e->file[0] ? e->file : name, e->msg);
        }
        if (errs.n == 0)
            fprintf(t, "%s: %s\n", name, strerror(-rc));
        mx_config_errors_free(&errs);
        *report = finish_report(t, &buf);
        return rc == -ENOMEM ? rc : -EINVAL;
    }
    mx_config_errors_free(&errs);

    char restart[2048];
    int n_restart = mx_reload_restart_diff(r->p.boot, cfg, restart, sizeof restart);
    struct generation *g = NULL;
    rc = build(r, cfg, t, &g);
    if (rc < 0) {
        *report = finish_report(t, &buf);
        return rc;
    }

    /* Publish, then start the grace period: the token update releases the store. */
    struct generation *old = r->gen;
    r->gen = g;
    atomic_store_explicit(&r->current.srv, g->srv, memory_order_release);
    old->rcu_token = mx_dataplane_rcu_start();
    old->next_retired = r->retired;
    r->retired = old;
    r->n_retired++;

    fprintf(t, "reloaded: generation %u\n", g->id);
    if (n_restart)
        fprintf(t, "%s", restart);
    *report = finish_report(t, &buf);
    mx_reload_reap(r);
    return 0;
}

unsigned mx_reload_reap(struct mx_reload *r)
{
    struct generation **pp = &r->retired;
    while (*pp) {
        struct generation *g = *pp;
        if (mx_dataplane_rcu_check(g->rcu_token) && mx_smtp_server_refs(g->srv) == 0) {
            *pp = g->next_retired;
            r->n_retired--;
            fprintf(stderr, "mxgate: reload: generation %u released\n", g->id);
            gen_free(r, g);
            continue;
        }
        pp = &g->next_retired;
    }
    return r->n_retired;
}

void mx_reload_free(struct mx_reload *r)
{
    if (!r)
        return;
    while (r->retired) {
        struct generation *g = r->retired;
        r->retired = g->next_retired;
        gen_free(r, g);
    }
    gen_free(r, r->gen);
    free(r);
}
