/*
 * queue.h - the durable mail queue: per-worker io_uring spool with group
 * commit, journal, recovery, queue manager, delivery (Maildir, SMTP, MX),
 * retries and DSN bounces.
 *
 * The promise: once mx_queue_msg_commit()'s callback reported success (and
 * only then may the SMTP server answer 250) the message survives kill -9 and
 * power loss, and is delivered or bounced.
 */
#ifndef MX_QUEUE_H
#define MX_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct mx_config;
struct mx_worker;
struct mx_queue;
struct mx_queue_msg;

#define MX_ADDR_MAX 512     /* RFC 5321 path + slack; SMTPUTF8 allowed */
#define MX_DSN_ORCPT_MAX 500
#define MX_QUARANTINE_REASON_MAX 256 /* with the NUL */

enum mx_dsn_notify {
    MX_NOTIFY_DEFAULT = 0, /* not given: failure + delay */
    MX_NOTIFY_NEVER = 1,
    MX_NOTIFY_SUCCESS = 2,
    MX_NOTIFY_FAILURE = 4,
    MX_NOTIFY_DELAY = 8,
};

enum mx_dsn_ret { MX_RET_DEFAULT = 0, MX_RET_FULL, MX_RET_HDRS };
enum mx_body_type { MX_BODY_7BIT = 0, MX_BODY_8BITMIME, MX_BODY_BINARYMIME };

struct mx_rcpt {
    char addr[MX_ADDR_MAX]; /**< without angle brackets */
    uint8_t notify;         /**< mx_dsn_notify bits */
    char orcpt[MX_DSN_ORCPT_MAX]; /**< "rfc822;user@x" as given (xtext decoded), or "" */
};

/** Everything known about a message besides its bytes. */
struct mx_envelope {
    char mail_from[MX_ADDR_MAX]; /**< "" for the null reverse-path */
    uint64_t size_param;         /**< SIZE= value, 0 if absent */
    enum mx_body_type body;
    bool smtputf8;
    enum mx_dsn_ret ret;
    char envid[101];
    struct mx_rcpt *rcpts;
    size_t n_rcpts;
    struct sockaddr_storage client;
    char client_text[64];  /**< printable client address */
    char helo[256];
    char tls[128];         /**< "TLSv1.3 TLS_AES_256_GCM_SHA384" or "" */
    uint64_t arrival_ms;   /**< CLOCK_REALTIME milliseconds */
    char session_id[24];   /**< for log correlation */
    /* set by mx_queue_msg_quarantine(); stored in the record itself, so a
     * quarantined message can never come back as deliverable after a crash */
    bool quarantine;
    uint32_t quarantine_retention_s; /**< 0 = kept until released or deleted */
    char quarantine_reason[MX_QUARANTINE_REASON_MAX];
};

/** Commit result callback: res 0 and the queue id, or -errno (then no 250). */
typedef void (*mx_queue_commit_fn)(void *arg, int res, const char *queue_id);

/**
 * Open the spool (creating directories), replay segments and journals,
 * verify CRCs, move broken records to corrupt/, rebuild the queue.
 * Runs before the workers start.
 */
int mx_queue_open(const struct mx_config *cfg, struct mx_queue **out);

/** Per-worker set-up: runs on the worker (dataplane on_worker_init). */
int mx_queue_worker_init(struct mx_queue *q, struct mx_worker *w);

/** Flush, stop delivery, close files. After all workers stopped. */
void mx_queue_close(struct mx_queue *q);

/**
 * Start a new message on the calling worker. env is copied.
 * Returns NULL with errno set (ENOSPC: spool full -> 452 4.3.1).
 */
struct mx_queue_msg *mx_queue_msg_begin(struct mx_queue *q, struct mx_worker *w,
                                        const struct mx_envelope *env);

/** Append message bytes (already dot-unstuffed). 0 or -errno. */
int mx_queue_msg_write(struct mx_queue_msg *m, const void *buf, size_t len);

/**
 * Make the message durable. cb runs later on the same worker, after the
 * group-commit flush that covers it completed. m is owned by the queue
 * from here on. Returns 0, or -errno (then cb is not called, m is freed).
 */
int mx_queue_msg_commit(struct mx_queue_msg *m, mx_queue_commit_fn cb, void *arg);

/**
 * Before commit: keep the message in quarantine (durable, never delivered
 * until `mxctl queue release ID`; deleted after retention_s, 0 = kept).
 * reason (cut to MX_QUARANTINE_REASON_MAX - 1 bytes) is shown by
 * `mxctl queue list/show` (state "quarantine"). The quarantine is part of
 * the spool record, so it is exactly as durable as the message.
 * 0 or -errno (-EINVAL: m or reason NULL, -ENOMEM).
 */
int mx_queue_msg_quarantine(struct mx_queue_msg *m, const char *reason, unsigned retention_s);

/**
 * Before commit: replace the recipients (redirect); rcpts is copied.
 * 0 or -errno (-EINVAL: n == 0 or NULL arguments, -ENOMEM).
 */
int mx_queue_msg_set_rcpts(struct mx_queue_msg *m, const struct mx_rcpt *rcpts, size_t n);

/**
 * Before commit: add one recipient (BCC copy); rcpt is copied.
 * 0 or -errno (-EINVAL, -ENOMEM).
 */
int mx_queue_msg_add_rcpt(struct mx_queue_msg *m, const struct mx_rcpt *rcpt);

/** Drop an unfinished message (client went away, policy reject). */
void mx_queue_msg_abort(struct mx_queue_msg *m);

/**
 * Control operations for mxctl, run from the control thread.
 * cmd: "list", "show", "flush", "hold", "release", "delete", "freeze",
 * "thaw", "pause-inbound", "resume-inbound"; arg: queue id or NULL.
 * *out receives malloc'd text (JSON when json is true). 0 or -errno.
 */
int mx_queue_control(struct mx_queue *q, const char *cmd, const char *arg, bool json,
                     char **out);

/** True while inbound mail is paused by maintenance mode (answer 421/4xx). */
bool mx_queue_inbound_paused(const struct mx_queue *q);

#endif
