/* queue/deliver.h - delivery agents and DSN generation, internal to queue/ */
#ifndef MX_QUEUE_DELIVER_H
#define MX_QUEUE_DELIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue/queue.h"
#include "config/config.h"

struct mx_worker;

/** What one recipient of one transaction came to. */
struct mx_deliver_rcpt_result {
    int code;        /* 250, 4xx, 5xx as answered; 0 = not attempted (treat as temporary) */
    char enh[16];    /* "2.0.0", "" if none */
    char text[256];  /* the server's text, or our own reason */
};

/** Outcome of one delivery transaction, passed to mx_deliver_done_fn. */
struct mx_deliver_result {
    size_t n;                                /* == req->n_rcpt */
    struct mx_deliver_rcpt_result *rcpt;     /* in request order; valid during the callback */
    char remote[80];                         /* host:port that answered, or "" */
    char error[256];                         /* connection-level problem for logs, or "" */
};

/** One delivery transaction: one message to some recipients over one route. */
struct mx_deliver_req {
    const struct mx_route *route;            /* MX_ROUTE_SMTP (MX_ROUTE_MX later) */
    const struct mx_envelope *env;
    const size_t *rcpt_idx; size_t n_rcpt;   /* which env->rcpts this transaction carries */
    const uint8_t *msg; size_t len;          /* whole message, CRLF line ends */
    const char *helo_name;                   /* our EHLO name */
    const char *queue_id;                    /* for log lines */
    unsigned fail_ttl_ms;                    /* skip a host:port whose connect failed for
                                              * this long (0: no connection-failure cache) */
};

typedef void (*mx_deliver_done_fn)(void *arg, const struct mx_deliver_result *res);

/* Start an SMTP delivery on worker w (async over mx_stream_connect); done runs on w exactly once.
 * req and the memory it points to must stay valid until done runs. 0 or -errno (done not called). */
int mx_deliver_smtp_start(struct mx_worker *w, const struct mx_deliver_req *req,
                          mx_deliver_done_fn done, void *arg);

/* Why the calling worker's last mx_deliver_smtp_start() returned an error without
 * calling done ("host X unreachable (cached, 42s left)", "connect to X: ..."), or "". */
const char *mx_deliver_smtp_start_error(void);

/* Set the text mx_deliver_smtp_start_error() returns (for the other agents). */
void mx_deliver_set_start_error(const char *text);

/* Deliver over an MX route (qm_mx.c): look up domain's MX (sorted by preference, random
 * among equal ones; the domain's own A/AAAA without MX; null MX bounced 556 5.1.10;
 * SERVFAIL/timeout deferred), then run the SMTP agent over the hosts found, with
 * req->route's port (hosts[0] of "mx:PORT", else 25). done runs on w exactly once, never
 * inside this call. 0 or -errno (done not called; mx_deliver_smtp_start_error() says why). */
int mx_deliver_mx_start(struct mx_worker *w, const struct mx_deliver_req *req,
                        const char *domain, mx_deliver_done_fn done, void *arg);

/* At most per_worker SMTP connections to one destination host on each worker (busy and
 * idle together; e.g. queue_dest_concurrency divided by the workers, rounded up); more
 * attempts wait for a connection to finish. 0 (the default) = no limit. Call before the
 * workers start. */
void mx_deliver_smtp_set_dest_limit(unsigned per_worker);

/* Forget every cached connection failure of the calling worker (`mxctl queue flush`). */
void mx_deliver_smtp_clear_fail_cache(void);

/* Build an RFC 3464 multipart/report DSN for the failed (or delayed) recipients.
 * status[i] describes env->rcpts[rcpt_idx[i]]. ret FULL → whole message, HDRS/default → headers only.
 * Returns 0 and a malloc'd message in *out and *out_len (CRLF line ends), or -errno.
 * Never call it for a null sender (the caller checks; the function returns -EINVAL for mail_from ""). */
struct mx_dsn_rcpt { size_t rcpt_idx; const struct mx_deliver_rcpt_result *res; bool delayed; const char *remote; };
int mx_dsn_build(const struct mx_envelope *env, const struct mx_dsn_rcpt *st, size_t n,
                 const uint8_t *orig, size_t orig_len, const char *reporting_mta,
                 const char *queue_id, uint64_t now_ms, char **out, size_t *out_len);

#endif
