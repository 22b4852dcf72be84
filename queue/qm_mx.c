/*
 * qm_mx.c - delivery over an `mx` route: find where a recipient domain's
 * mail goes (RFC 5321 5.1) through the worker's asynchronous DNS service,
 * then hand the attempt to the SMTP agent (deliver_smtp.c) with the hosts
 * found, in order, so its fail-over, connection reuse and failure cache
 * apply unchanged.
 *
 *   MX records     sorted by preference, random order among equal ones
 *                  (load spreading, as RFC 5321 5.1 asks), then each host's
 *                  A and AAAA addresses;
 *   no MX          the domain's own A/AAAA (the implicit MX);
 *   null MX        "0 ." (RFC 7505): bounced at once, 556 5.1.10;
 *   no domain      neither MX nor address records: bounced, 550 5.1.2;
 *   SERVFAIL or    deferred (the answer may come next time).
 *   timeout
 *
 * Every step runs on the worker that asked (DNS callbacks come back on it),
 * so the state needs no lock. done() runs exactly once, always from a later
 * loop turn, never inside mx_deliver_mx_start().
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "dataplane/dataplane.h"
#include "queue/deliver.h"

#define MXR_MAX_HOSTS 10 /* MX hosts looked up, best first */
#define MXR_MAX_ADDRS 16 /* addresses handed to the SMTP agent */

struct mxr_host {
    char name[MX_DNS_NAME_MAX];
    uint16_t pref;
};

struct mxr {
    struct mx_worker *w;
    const struct mx_deliver_req *orig;
    struct mx_deliver_req req; /* the same, over the resolved route */
    mx_deliver_done_fn done;
    void *arg;
    char domain[MX_DNS_NAME_MAX];
    uint16_t port;
    struct mxr_host mx[MXR_MAX_HOSTS];
    size_t n_mx, next; /* next MX host to look up */
    bool aaaa;         /* the A query of mx[next] is done, AAAA under way */
    bool implicit;     /* no MX: the domain itself */
    unsigned n_enoent, n_lookups;
    char dns_err[160]; /* the last temporary DNS failure */
    struct mx_sockaddr hosts[MXR_MAX_ADDRS];
    size_t n_hosts;
    struct mx_route route;
};

/* ---- results without a connection ---------------------------------------- */

static void mxr_free(struct mxr *x)
{
    free(x);
}

/** Every recipient gets the same answer; then done() and free. */
static void mxr_fail(struct mxr *x, int code, const char *enh, const char *text)
{
    size_t n = x->orig->n_rcpt;
    struct mx_deliver_rcpt_result *res = calloc(n, sizeof *res);
    struct mx_deliver_result r = {.n = n, .rcpt = res};
    snprintf(r.error, sizeof r.error, "%s", text);
    for (size_t i = 0; res && i < n; i++) {
        res[i].code = code;
        snprintf(res[i].enh, sizeof res[i].enh, "%s", enh);
        snprintf(res[i].text, sizeof res[i].text, "%s", text);
    }
    if (!res)
        r.n = 0; /* the caller treats missing results as temporary */
    x->done(x->arg, &r);
    free(res);
    mxr_free(x);
}

static const char *dns_status_text(int status)
{
    switch (status) {
    case -ETIMEDOUT:
        return "timed out";
    case -EIO:
        return "server failure";
    case -ENOENT:
        return "no such record";
    case -ECANCELED:
        return "DNS service stopped";
    default:
        return strerror(-status);
    }
}

/* ---- the SMTP part ----------------------------------------------------------- */

static void mxr_smtp_done(void *arg, const struct mx_deliver_result *res)
{
    struct mxr *x = arg;
    x->done(x->arg, res);
    mxr_free(x);
}

/** Every lookup answered: deliver to what was found, or say why not. */
static void mxr_go(struct mxr *x)
{
    char t[256];
    if (x->n_hosts == 0) {
        if (x->implicit && x->n_enoent == x->n_lookups) {
            snprintf(t, sizeof t, "Host or domain name not found (no MX, A or AAAA record for %.150s)",
                     x->domain);
            mxr_fail(x, 550, "5.1.2", t);
        } else if (x->dns_err[0]) {
            mxr_fail(x, 451, "4.4.3", x->dns_err);
        } else {
            snprintf(t, sizeof t, "no address for the mail exchangers of %.150s", x->domain);
            mxr_fail(x, 451, "4.4.4", t);
        }
        return;
    }
    x->route = (struct mx_route){.domain = x->domain, .scheme = MX_ROUTE_SMTP,
                                 .hosts = x->hosts, .n_hosts = x->n_hosts};
    x->req = *x->orig;
    x->req.route = &x->route;
    int rc = mx_deliver_smtp_start(x->w, &x->req, mxr_smtp_done, x);
    if (rc < 0) {
        const char *why = mx_deliver_smtp_start_error();
        snprintf(t, sizeof t, "%s", why[0] ? why : strerror(-rc));
        mxr_fail(x, 451, "4.4.1", t); /* e.g. every exchanger in the failure cache */
    }
}

/* ---- the DNS part ------------------------------------------------------------ */

static void mxr_lookup_next(struct mxr *x);

static void add_host(struct mxr *x, int family, const uint8_t *addr, const char *name)
{
    if (x->n_hosts == MXR_MAX_ADDRS)
        return;
    struct mx_sockaddr *h = &x->hosts[x->n_hosts];
    memset(h, 0, sizeof *h);
    char ip[INET6_ADDRSTRLEN];
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&h->ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(x->port);
        memcpy(&sin->sin_addr, addr, 4);
        h->len = sizeof *sin;
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&h->ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(x->port);
        memcpy(&sin6->sin6_addr, addr, 16);
        h->len = sizeof *sin6;
    }
    inet_ntop(family, addr, ip, sizeof ip);
    /* Postfix style, for the relay= of the log: name[address]:port */
    snprintf(h->text, sizeof h->text, "%.24s[%s]:%u", name, ip, (unsigned)x->port);
    x->n_hosts++;
}

static void on_addr(void *arg, const struct mx_dns_result *r)
{
    struct mxr *x = arg;
    const struct mxr_host *mh = &x->mx[x->next];
    x->n_lookups++;
    if (r->status == 0) {
        for (size_t i = 0; i < r->n; i++)
            add_host(x, r->type == MX_DNS_A ? AF_INET : AF_INET6,
                     r->type == MX_DNS_A ? r->a[i] : r->aaaa[i], mh->name);
    } else if (r->status == -ENOENT) {
        x->n_enoent++;
    } else {
        snprintf(x->dns_err, sizeof x->dns_err, "DNS lookup of %.100s/%s failed: %s", mh->name,
                 r->type == MX_DNS_A ? "A" : "AAAA", dns_status_text(r->status));
    }
    if (!x->aaaa) {
        x->aaaa = true;
    } else {
        x->aaaa = false;
        x->next++;
    }
    mxr_lookup_next(x);
}

/** Query the next address of the next exchanger, or go when all are in. */
static void mxr_lookup_next(struct mxr *x)
{
    while (x->next < x->n_mx && x->n_hosts < MXR_MAX_ADDRS) {
        const char *name = x->mx[x->next].name;
        int rc = mx_dns_query(x->w, name, x->aaaa ? MX_DNS_AAAA : MX_DNS_A, on_addr, x);
        if (rc == 0)
            return; /* on_addr continues */
        snprintf(x->dns_err, sizeof x->dns_err, "DNS lookup of %.100s failed: %s", name,
                 strerror(-rc));
        x->aaaa = false;
        x->next++;
    }
    mxr_go(x);
}

/* Equal preferences in random order (RFC 5321 5.1), else by preference. */
static void shuffle_equal(struct mxr_host *h, size_t n)
{
    static _Thread_local uint64_t s;
    if (!s) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        s = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ (uintptr_t)&s;
        s |= 1;
    }
    for (size_t a = 0; a < n;) {
        size_t b = a + 1;
        while (b < n && h[b].pref == h[a].pref)
            b++;
        for (size_t i = b - 1; i > a; i--) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            size_t j = a + (size_t)(s % (i - a + 1));
            struct mxr_host t = h[i];
            h[i] = h[j];
            h[j] = t;
        }
        a = b;
    }
}

static void on_mx(void *arg, const struct mx_dns_result *r)
{
    struct mxr *x = arg;
    char t[256];
    if (r->status == 0 && r->n) {
        /* RFC 7505: a lone "0 ." says the domain takes no mail at all */
        bool null_only = true;
        for (size_t i = 0; i < r->n; i++) {
            const char *h = r->mx[i].host;
            if (h[0] == 0 || strcmp(h, ".") == 0)
                continue; /* a null MX beside real ones is ignored */
            null_only = false;
            if (x->n_mx < MXR_MAX_HOSTS) {
                snprintf(x->mx[x->n_mx].name, sizeof x->mx[0].name, "%s", h);
                x->mx[x->n_mx++].pref = r->mx[i].preference;
            }
        }
        if (null_only) {
            snprintf(t, sizeof t, "Domain %.150s does not accept mail (null MX)", x->domain);
            mxr_fail(x, 556, "5.1.10", t);
            return;
        }
        shuffle_equal(x->mx, x->n_mx); /* r->mx comes sorted by preference */
    } else if (r->status == -ENOENT || (r->status == 0 && !r->n)) {
        /* no MX: the domain is its own exchanger (RFC 5321 5.1) */
        x->implicit = true;
        snprintf(x->mx[0].name, sizeof x->mx[0].name, "%s", x->domain);
        x->n_mx = 1;
    } else {
        snprintf(t, sizeof t, "DNS lookup of %.150s/MX failed: %s", x->domain,
                 dns_status_text(r->status));
        mxr_fail(x, 451, "4.4.3", t);
        return;
    }
    mxr_lookup_next(x);
}

/* ---- start --------------------------------------------------------------------- */

/* "[192.0.2.1]" or "[IPv6:2001:db8::1]": an address literal needs no DNS. */
static bool address_literal(struct mxr *x)
{
    size_t n = strlen(x->domain);
    if (n < 3 || x->domain[0] != '[' || x->domain[n - 1] != ']')
        return false;
    char lit[MX_DNS_NAME_MAX];
    snprintf(lit, sizeof lit, "%.*s", (int)(n - 2), x->domain + 1);
    uint8_t a[16];
    if (strncasecmp(lit, "IPv6:", 5) == 0 && inet_pton(AF_INET6, lit + 5, a) == 1)
        add_host(x, AF_INET6, a, "literal");
    else if (inet_pton(AF_INET, lit, a) == 1)
        add_host(x, AF_INET, a, "literal");
    return true;
}

int mx_deliver_mx_start(struct mx_worker *w, const struct mx_deliver_req *req,
                        const char *domain, mx_deliver_done_fn done, void *arg)
{
    if (!w || !req || !req->route || req->route->scheme != MX_ROUTE_MX || !domain || !done ||
        !req->n_rcpt)
        return -EINVAL;
    mx_deliver_set_start_error("");
    struct mxr *x = calloc(1, sizeof *x);
    if (!x)
        return -ENOMEM;
    x->w = w;
    x->orig = req;
    x->done = done;
    x->arg = arg;
    x->port = 25;
    if (req->route->n_hosts == 1) { /* "mx:PORT" */
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&req->route->hosts[0].ss;
        x->port = ntohs(sin->sin_port);
    }
    size_t n = strlen(domain);
    while (n && domain[n - 1] == '.')
        n--; /* "example.org." is example.org */
    if (n == 0 || n >= sizeof x->domain) {
        free(x);
        mx_deliver_set_start_error("bad recipient domain");
        return -EINVAL;
    }
    memcpy(x->domain, domain, n);
    x->domain[n] = 0;
    if (address_literal(x)) {
        if (!x->n_hosts) {
            free(x);
            mx_deliver_set_start_error("bad address literal");
            return -EINVAL;
        }
        x->route = (struct mx_route){.domain = x->domain, .scheme = MX_ROUTE_SMTP,
                                     .hosts = x->hosts, .n_hosts = x->n_hosts};
        x->req = *req;
        x->req.route = &x->route;
        int rc = mx_deliver_smtp_start(w, &x->req, mxr_smtp_done, x);
        if (rc < 0)
            free(x);
        return rc;
    }
    int rc = mx_dns_query(w, x->domain, MX_DNS_MX, on_mx, x);
    if (rc < 0) {
        char t[200];
        snprintf(t, sizeof t, "DNS lookup of %.150s/MX failed: %s", x->domain,
                 rc == -ENOTCONN ? "DNS service not running" : strerror(-rc));
        mx_deliver_set_start_error(t);
        free(x);
        return rc;
    }
    return 0;
}
