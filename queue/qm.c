/*
 * qm.c - the queue's public API (queue/queue.h) and the per-worker queue
 * manager: messages enter through begin/write/commit, become durable in
 * the worker's spool (qm_spool.c), and are then delivered by route
 * (Maildir here, SMTP through deliver_smtp.c), retried with back-off, and
 * bounced with a DSN (dsn.c) to a non-null sender. Every outcome goes to
 * the worker's journal. Everything here runs on the owning worker, so the
 * manager's lists need no locks; control requests arrive as messages
 * (qm_control.c).
 */
#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "console/console.h"
#include "queue/deliver.h"
#include "queue/qm_internal.h"

#define QM_MAX_ACTIVE 64          /* deliveries in flight per worker */
#define QM_SCAN_MS 1000           /* how often deferred messages are checked */
#define QM_STATVFS_MS 1000        /* how often free space is checked */
#define QM_SLACK (64 * 1024)      /* headers we may add beyond the size limit */

uint64_t qm_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void qm_make_qid(char out[QM_QID_SIZE], uint64_t unix_ms, unsigned worker, uint32_t counter)
{
    /* time first so that ids sort by arrival; worker + counter make it unique */
    snprintf(out, QM_QID_SIZE, "%012llX%02X%06X",
             (unsigned long long)(unix_ms & 0xFFFFFFFFFFFFull), worker & 0xff,
             counter & 0xFFFFFF);
}

/* ---- open / close ---------------------------------------------------------- */

/*
 * Which list a message is on follows from its state alone: busy while a
 * delivery runs, waiting while deferred, held or quarantined, ready
 * otherwise. Change the state only between qm_list_remove() and
 * qm_list_insert().
 */
static struct qm_mq *list_of(struct qm_worker *qw, const struct qm_msg *m)
{
    if (m->state == QM_M_ACTIVE)
        return &qw->busy;
    if (m->held || m->quarantined || m->state == QM_M_DEFERRED)
        return &qw->waiting;
    return &qw->ready;
}

/*
 * The queue-size gauges follow the lists: a message is counted in exactly
 * one of them while it is on a list, so every state change (which happens
 * between qm_list_remove() and qm_list_insert()) moves it from one gauge to
 * the next on the worker that made the change.
 */
static const enum mx_stat gauge_ids[] = {
    MX_STAT_QUEUE_INCOMING, MX_STAT_QUEUE_ACTIVE, MX_STAT_QUEUE_DEFERRED,
    MX_STAT_QUEUE_HOLD,     MX_STAT_QUEUE_QUARANTINE,
};

static uint8_t gauge_of(const struct qm_msg *m)
{
    if (m->state == QM_M_ACTIVE)
        return 2;
    if (m->quarantined)
        return 5;
    if (m->held)
        return 4;
    if (m->state == QM_M_DEFERRED)
        return 3;
    return 1; /* ready: committed, waiting for a delivery slot */
}

void qm_list_insert(struct qm_worker *qw, struct qm_msg *m)
{
    TAILQ_INSERT_TAIL(list_of(qw, m), m, link);
    m->on_list = true;
    m->gauge = gauge_of(m);
    mx_stats_add(gauge_ids[m->gauge - 1], 1);
}

void qm_list_remove(struct qm_worker *qw, struct qm_msg *m)
{
    if (!m->on_list)
        return;
    TAILQ_REMOVE(list_of(qw, m), m, link);
    m->on_list = false;
    if (m->gauge)
        mx_stats_add(gauge_ids[m->gauge - 1], (uint64_t)-1);
    m->gauge = 0;
}

void qm_worker_add(struct qm_worker *qw, struct qm_msg *m)
{
    qw->n_msgs++;
    qm_list_insert(qw, m);
}

int mx_queue_open(const struct mx_config *cfg, struct mx_queue **out)
{
    struct mx_queue *q = calloc(1, sizeof *q);
    if (!q)
        return -ENOMEM;
    q->cfg = cfg;
    q->n_workers = cfg->dp_workers ? cfg->dp_workers : 1;
    snprintf(q->spool_dir, sizeof q->spool_dir, "%s", cfg->spool_dir ? cfg->spool_dir : "var/spool");
    pthread_mutex_init(&q->ctl_lock, NULL);
    pthread_cond_init(&q->ctl_cond, NULL);
    q->workers = calloc(q->n_workers, sizeof *q->workers);
    if (!q->workers) {
        free(q);
        return -ENOMEM;
    }
    for (unsigned i = 0; i < q->n_workers; i++) {
        struct qm_worker *qw = &q->workers[i];
        qw->q = q;
        qw->index = i;
        TAILQ_INIT(&qw->ready);
        TAILQ_INIT(&qw->waiting);
        TAILQ_INIT(&qw->busy);
    }
    q->reserve_bytes = cfg->smtp_max_message_size + (1u << 20);

    struct qm_recovered r;
    int rc = qm_recover(q->spool_dir, q->n_workers, &r);
    if (rc < 0) {
        free(q->workers);
        free(q);
        return rc;
    }
    fprintf(stderr,
            "mxgate[queue]: recovery of %s: %zu records, %zu finished, %zu in the queue, "
            "%zu journal entries, %zu torn, %zu corrupt, %zu segments removed\n",
            q->spool_dir, r.n_records, r.n_finished, r.n, r.n_jentries, r.n_torn, r.n_corrupt,
            r.n_segs_deleted);
    atomic_store(&q->seq, r.max_seq + 1);
    /* segments belong to worker (dir index mod workers), and so do their messages */
    for (size_t i = 0; i < r.n_segs; i++) {
        struct qm_worker *qw = &q->workers[r.seg_dir[i] % q->n_workers];
        qw->boot_segs = realloc(qw->boot_segs, (qw->n_boot_segs + 1) * sizeof *qw->boot_segs);
        if (!qw->boot_segs)
            abort(); /* start-up, tiny: no sensible way on */
        qw->boot_segs[qw->n_boot_segs++] = r.segs[i];
        r.segs[i] = NULL;
    }
    r.n_segs = 0;
    for (size_t i = 0; i < r.n; i++) {
        struct qm_msg *m = r.msgs[i];
        struct qm_worker *qw = &q->workers[m->dir_index % q->n_workers];
        if (m->state != QM_M_DEFERRED)
            m->state = QM_M_READY;
        if (m->state == QM_M_DEFERRED || m->held || m->quarantined) {
            free(m->buf); /* read back when due: deferred mail costs no memory */
            m->buf = NULL;
        }
        qm_worker_add(qw, m);
        r.msgs[i] = NULL;
    }
    r.n = 0;
    qm_recovered_free(&r);
    *out = q;
    return 0;
}

static void on_committed(struct qm_spool *sp, struct mx_queue_msg *m, int res);

int qm_worker_attach(struct mx_queue *q, unsigned idx, struct io_uring *ring,
                     struct mx_worker *w)
{
    if (idx >= q->n_workers)
        return -EINVAL;
    struct qm_worker *qw = &q->workers[idx];
    char dir[512];
    snprintf(dir, sizeof dir, "%s/w%u", q->spool_dir, idx);
    int rc = qm_spool_open(&qw->sp, dir, &q->seq, ring);
    if (rc < 0) {
        fprintf(stderr, "mxgate[queue]: worker %u: cannot open spool %s: %s\n", idx, dir,
                strerror(-rc));
        return rc;
    }
    qw->sp.on_committed = on_committed;
    qw->sp.owner = qw;
    qm_md_init(&qw->md, ring);
    for (size_t i = 0; i < qw->n_boot_segs; i++)
        TAILQ_INSERT_HEAD(&qw->sp.segs, qw->boot_segs[i], link);
    free(qw->boot_segs);
    qw->boot_segs = NULL;
    qw->n_boot_segs = 0;
    qw->w = w;
    pthread_mutex_lock(&q->ctl_lock);
    qw->started = true;
    pthread_mutex_unlock(&q->ctl_lock);
    return 0;
}

int mx_queue_worker_init(struct mx_queue *q, struct mx_worker *w)
{
    unsigned idx = mx_worker_index(w);
    int rc = qm_worker_attach(q, idx, mx_worker_ring(w), w);
    if (rc < 0)
        return rc;
    return mx_worker_add_tick(w, qm_tick, &q->workers[idx]);
}

void mx_queue_close(struct mx_queue *q)
{
    if (!q)
        return;
    for (unsigned i = 0; i < q->n_workers; i++) {
        struct qm_worker *qw = &q->workers[i];
        struct qm_msg *m;
        /* the workers are gone: no delivery in flight can come back any more */
        struct qm_mq *lists[3] = {&qw->ready, &qw->waiting, &qw->busy};
        for (int k = 0; k < 3; k++) {
            while ((m = TAILQ_FIRST(lists[k]))) {
                qm_list_remove(qw, m); /* the gauges drop with the queue */
                qm_msg_free(m);
            }
        }
        if (qw->started) {
            qm_spool_close(&qw->sp);
        } else {
            for (size_t k = 0; k < qw->n_boot_segs; k++)
                qm_seg_free(qw->boot_segs[k]);
            free(qw->boot_segs);
        }
    }
    pthread_mutex_destroy(&q->ctl_lock);
    pthread_cond_destroy(&q->ctl_cond);
    free(q->workers);
    free(q);
}

/* ---- receiving ----------------------------------------------------------------- */

static struct qm_worker *worker_of(struct mx_queue *q, struct mx_worker *w)
{
    unsigned idx = w ? mx_worker_index(w) : 0;
    if (idx >= q->n_workers || !q->workers[idx].started)
        return NULL;
    return &q->workers[idx];
}

/* Free space check, at most once a second: new mail gets 452 when low. */
static void check_space(struct qm_worker *qw, uint64_t now)
{
    if (now < qw->next_statvfs_ms)
        return;
    qw->next_statvfs_ms = now + QM_STATVFS_MS;
    struct statvfs sv;
    if (fstatvfs(qw->sp.dirfd, &sv) < 0)
        return;
    uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
    uint64_t total = (uint64_t)sv.f_blocks * sv.f_frsize;
    uint64_t reserve = qw->q->reserve_bytes;
    if (reserve > total / 10)
        reserve = total / 10; /* small test filesystems */
    bool full = avail < reserve || (sv.f_files && sv.f_favail < 16);
    if (full != qw->spool_full)
        fprintf(stderr, "mxgate[queue]: worker %u: spool %s (%llu bytes free)\n", qw->index,
                full ? "FULL, new mail is refused with 452" : "has space again",
                (unsigned long long)avail);
    qw->spool_full = full;
}

struct mx_queue_msg *mx_queue_msg_begin(struct mx_queue *q, struct mx_worker *w,
                                        const struct mx_envelope *env)
{
    struct qm_worker *qw = worker_of(q, w);
    if (!qw || !env) {
        errno = EINVAL;
        return NULL;
    }
    check_space(qw, mono_ms());
    if (qw->spool_full) {
        errno = ENOSPC; /* the server answers 452 4.3.1 */
        return NULL;
    }
    char qid[QM_QID_SIZE];
    qm_make_qid(qid, qm_unix_ms(), qw->index, qw->counter++);
    uint64_t max = q->cfg->smtp_max_message_size ? q->cfg->smtp_max_message_size : (64u << 20);
    /* quarantine is set through mx_queue_msg_quarantine() only, never by
     * whatever a caller's envelope struct happened to hold */
    struct mx_envelope e = *env;
    e.quarantine = false;
    e.quarantine_retention_s = 0;
    e.quarantine_reason[0] = 0;
    struct mx_queue_msg *m = qm_msgbuf_new(&e, qid, (size_t)max + QM_SLACK);
    if (!m) {
        errno = ENOMEM;
        return NULL;
    }
    m->qw = qw;
    if (m->env.arrival_ms == 0) {
        /* the lifetime and delay= count from here when the caller did not say */
        m->env.arrival_ms = qm_unix_ms();
        qm_env_encode(&m->env, m->buf + QM_REC_HDR);
    }
    return m;
}

int mx_queue_msg_write(struct mx_queue_msg *m, const void *buf, size_t len)
{
    return qm_msgbuf_append(m, buf, len);
}

int mx_queue_msg_commit(struct mx_queue_msg *m, mx_queue_commit_fn cb, void *arg)
{
    int err = m->error;
    if (!err && m->env.n_rcpts == 0)
        err = -EINVAL;
    if (!err && m->qw->spool_full)
        err = -ENOSPC;
    if (err) {
        qm_msgbuf_free(m);
        return err;
    }
    m->cb = cb;
    m->cb_arg = arg;
    qm_msgbuf_seal(m);
    qm_spool_add(&m->qw->sp, m);
    return 0;
}

int mx_queue_msg_quarantine(struct mx_queue_msg *m, const char *reason, unsigned retention_s)
{
    if (!m || !reason)
        return -EINVAL;
    struct mx_envelope env = m->env;
    env.quarantine = true;
    env.quarantine_retention_s = retention_s;
    snprintf(env.quarantine_reason, sizeof env.quarantine_reason, "%s", reason);
    return qm_msgbuf_set_env(m, &env);
}

int mx_queue_msg_set_rcpts(struct mx_queue_msg *m, const struct mx_rcpt *rcpts, size_t n)
{
    if (!m || !rcpts || n == 0 || n > UINT32_MAX / sizeof *rcpts)
        return -EINVAL;
    struct mx_envelope env = m->env;
    env.rcpts = malloc(n * sizeof *rcpts);
    if (!env.rcpts)
        return -ENOMEM;
    memcpy(env.rcpts, rcpts, n * sizeof *rcpts);
    env.n_rcpts = n;
    int rc = qm_msgbuf_set_env(m, &env);
    if (rc < 0)
        free(env.rcpts);
    return rc;
}

int mx_queue_msg_add_rcpt(struct mx_queue_msg *m, const struct mx_rcpt *rcpt)
{
    if (!m || !rcpt || m->env.n_rcpts >= UINT32_MAX / sizeof *rcpt)
        return -EINVAL;
    struct mx_envelope env = m->env;
    env.rcpts = malloc((env.n_rcpts + 1) * sizeof *rcpt);
    if (!env.rcpts)
        return -ENOMEM;
    if (env.n_rcpts)
        memcpy(env.rcpts, m->env.rcpts, env.n_rcpts * sizeof *rcpt);
    env.rcpts[env.n_rcpts++] = *rcpt;
    int rc = qm_msgbuf_set_env(m, &env);
    if (rc < 0)
        free(env.rcpts);
    return rc;
}

void mx_queue_msg_abort(struct mx_queue_msg *m)
{
    qm_msgbuf_free(m);
}

bool mx_queue_inbound_paused(const struct mx_queue *q)
{
    return atomic_load_explicit(&q->inbound_paused, memory_order_relaxed);
}

/*
 * The copy of a long-deferred message reached the deferred store (or did
 * not): from now on the message lives there, and its old segment's claim
 * is given up (as a move, so a journal snapshot does not call it finished
 * there while it is still queued).
 */
static void move_done(struct qm_worker *qw, struct mx_queue_msg *c, int res)
{
    struct qm_msg *m = c->move_of;
    if (res == 0) {
        struct qm_seg *old = m->seg;
        m->seg = c->seg;
        m->rec_off = c->seg_off;
        m->rec_len = c->len;
        if (m->deleted)
            qm_spool_release(&qw->sp, old, m->qid);
        else
            qm_spool_release_moved(&qw->sp, old, m->qid);
        fprintf(stderr, "mxgate[queue]: %s: moved to the deferred store %s\n", m->qid,
                m->seg->path);
    } else {
        m->compact_after_ms = qm_unix_ms() + 60 * 1000; /* the next try */
        fprintf(stderr, "mxgate[queue]: %s: copy to the deferred store failed: %s\n", m->qid,
                strerror(-res));
    }
    qm_list_remove(qw, m);
    m->moving = false;
    m->state = m->pre_move;
    if (m->deleted)
        qm_worker_finish(qw, m);
    else
        qm_list_insert(qw, m);
    qm_msgbuf_free(c);
}

/*
 * Waiting messages older than queue.compact_after that still pin a segment
 * are copied to the deferred store, a few per scan (each is one blocking
 * read of its record). While the copy is under way the message sits on the
 * busy list, so nothing else starts on it and a `delete` waits for the end.
 */
#define QM_COMPACT_PER_SCAN 16
#define QM_COMPACT_BYTES (32u << 20) /* record bytes held in memory per scan */

static void compact_scan(struct qm_worker *qw, uint64_t now)
{
    uint64_t after = (uint64_t)qw->q->cfg->queue_compact_after * 1000;
    if (!after || !qw->started)
        return;
    unsigned done = 0;
    uint64_t bytes = 0;
    struct qm_msg *m, *next;
    for (m = TAILQ_FIRST(&qw->waiting); m && done < QM_COMPACT_PER_SCAN && bytes < QM_COMPACT_BYTES;
         m = next) {
        next = TAILQ_NEXT(m, link);
        if (!m->seg || m->seg->store || m->moving || now < m->env.arrival_ms + after ||
            now < m->compact_after_ms)
            continue;
        free(m->buf); /* the whole record, header included, exactly as on disk */
        m->buf = NULL;
        int rc = qm_msg_load(m);
        struct mx_queue_msg *c = rc == 0 ? calloc(1, sizeof *c) : NULL;
        if (!c) {
            free(m->buf);
            m->buf = NULL;
            m->compact_after_ms = now + 60 * 1000;
            continue;
        }
        c->qw = qw;
        memcpy(c->qid, m->qid, sizeof c->qid);
        c->buf = m->buf;
        c->len = c->cap = c->max_len = m->rec_len;
        c->to_store = true;
        c->move_of = m;
        m->buf = NULL;
        qm_list_remove(qw, m);
        m->pre_move = m->state;
        m->state = QM_M_ACTIVE;
        m->moving = true;
        qm_list_insert(qw, m);
        qm_spool_add(&qw->sp, c);
        done++;
        bytes += c->len;
    }
}

/* A record became durable (or failed): hand it to the manager, then tell the sender. */
static void on_committed(struct qm_spool *sp, struct mx_queue_msg *m, int res)
{
    struct qm_worker *qw = sp->owner;
    if (m->move_of) {
        move_done(qw, m, res);
        return;
    }
    if (res == 0) {
        struct qm_msg *qm = calloc(1, sizeof *qm);
        uint8_t *rs = calloc(m->env.n_rcpts ? m->env.n_rcpts : 1, 1);
        if (qm && rs) {
            memcpy(qm->qid, m->qid, sizeof qm->qid);
            qm->env = m->env;
            m->env.rcpts = NULL;
            m->env.n_rcpts = 0;
            qm->buf = m->buf;
            m->buf = NULL;
            qm->body_off = QM_REC_HDR + m->env_len;
            qm->body_len = m->len - qm->body_off;
            qm->rstate = rs;
            qm->seg = m->seg; /* the spool counted it live in that segment */
            qm->rec_off = m->seg_off;
            qm->rec_len = m->len;
            qm->state = QM_M_READY;
            qm->quarantined = qm->env.quarantine;
            if (qm->quarantined) {
                fprintf(stderr,
                        "mxgate[queue]: %s: from=<%s>, size=%zu, nrcpt=%zu (quarantine: %s)\n",
                        qm->qid, qm->env.mail_from, qm->body_len, qm->env.n_rcpts,
                        qm->env.quarantine_reason);
                free(qm->buf); /* read back if it is ever released */
                qm->buf = NULL;
            } else {
                fprintf(stderr,
                        "mxgate[queue]: %s: from=<%s>, size=%zu, nrcpt=%zu (queue active)\n",
                        qm->qid, qm->env.mail_from, qm->body_len, qm->env.n_rcpts);
            }
            qm_worker_add(qw, qm);
        } else {
            /* durable on disk all the same: delivered after the next start */
            free(qm);
            free(rs);
            fprintf(stderr, "mxgate[queue]: %s: out of memory, delivery waits for a restart\n",
                    m->qid);
        }
    } else if (m->internal) {
        /* a DSN nobody else holds: write it again; the journal entries of
         * the failure it reports wait for it (qm_spool_flush) */
        fprintf(stderr, "mxgate[queue]: %s: not queued: %s (retrying)\n", m->qid,
                strerror(-res));
        qm_spool_retry(sp, m);
        return;
    } else {
        fprintf(stderr, "mxgate[queue]: %s: not queued: %s\n", m->qid, strerror(-res));
    }
    if (m->cb)
        m->cb(m->cb_arg, res, res == 0 ? m->qid : NULL);
    qm_msgbuf_free(m);
}

/* ---- journal and finishing ------------------------------------------------------ */

void qm_journal(struct qm_worker *qw, const struct qm_msg *m, enum qm_jtype type, uint32_t rcpt)
{
    struct qm_jentry e = {.type = type, .rcpt = rcpt};
    memcpy(e.qid, m->qid, sizeof e.qid);
    if (type == QM_J_DEFERRED) {
        e.attempts = m->attempts;
        e.when_ms = m->next_attempt_ms;
        snprintf(e.err, sizeof e.err, "%s", m->last_error);
    }
    if (qm_spool_journal(&qw->sp, &e) < 0)
        fprintf(stderr, "mxgate[queue]: %s: journal entry lost (out of memory)\n", m->qid);
}

void qm_worker_finish(struct qm_worker *qw, struct qm_msg *m)
{
    qm_list_remove(qw, m);
    /* not before its finishing journal entries (and its DSN) are durable:
     * if they fail, the record is still there for a restart to redo it */
    if (m->seg)
        qm_spool_release(&qw->sp, m->seg, m->qid);
    qw->n_msgs--;
    fprintf(stderr, "mxgate[queue]: %s: removed\n", m->qid);
    qm_msg_free(m);
}

/* Queue a message we generate ourselves (a DSN) through the same spool. */
static int enqueue_local(struct qm_worker *qw, const struct mx_envelope *env, const char *bytes,
                         size_t len, char *qid_out)
{
    char qid[QM_QID_SIZE];
    qm_make_qid(qid, qm_unix_ms(), qw->index, qw->counter++);
    struct mx_queue_msg *m = qm_msgbuf_new(env, qid, len);
    if (!m)
        return -ENOMEM;
    m->qw = qw;
    m->internal = true;
    int rc = qm_msgbuf_append(m, bytes, len);
    if (rc < 0) {
        qm_msgbuf_free(m);
        return rc;
    }
    qm_msgbuf_seal(m);
    qm_spool_add(&qw->sp, m);
    snprintf(qid_out, QM_QID_SIZE, "%s", qid);
    return 0;
}

/* ---- delivery --------------------------------------------------------------------- */

struct qm_attempt {
    struct qm_worker *qw;
    struct qm_msg *m;
    unsigned pending;
    bool *tried;
    struct mx_deliver_rcpt_result *res;
    char (*remote)[80];
};

struct qm_group {
    struct qm_attempt *a;
    struct mx_deliver_req req;
    size_t *idx;
    size_t n;
};

static const char *domain_of(const char *addr)
{
    const char *at = strrchr(addr, '@');
    return at ? at + 1 : "";
}

static const struct mx_route *route_for(const struct mx_config *cfg, const char *addr)
{
    return mx_config_route(cfg, domain_of(addr));
}

static void set_res(struct mx_deliver_rcpt_result *r, int code, const char *enh, const char *text)
{
    r->code = code;
    snprintf(r->enh, sizeof r->enh, "%s", enh);
    snprintf(r->text, sizeof r->text, "%s", text);
}

static unsigned backoff_s(const struct mx_config *cfg, uint32_t attempts)
{
    uint64_t first = cfg->queue_retry_first ? cfg->queue_retry_first : 300;
    uint64_t max = cfg->queue_retry_max ? cfg->queue_retry_max : 3600;
    uint64_t d = first;
    for (uint32_t i = 1; i < attempts && d < max; i++)
        d *= 2;
    return (unsigned)(d < max ? d : max);
}

/* dst = a + b, cut to size (error texts are bounded; a cut one is fine) */
static void join2(char *dst, size_t size, const char *a, const char *b)
{
    size_t la = strnlen(a, size - 1);
    memmove(dst, a, la);
    size_t lb = strnlen(b, size - 1 - la);
    memmove(dst + la, b, lb);
    dst[la + lb] = 0;
}

static void log_rcpt(const struct qm_msg *m, const char *rcpt, const char *relay, uint64_t now,
                     const char *status, const struct mx_deliver_rcpt_result *r)
{
    double delay = now > m->env.arrival_ms ? (double)(now - m->env.arrival_ms) / 1000.0 : 0.0;
    fprintf(stderr, "mxgate[queue]: %s: to=<%s>, relay=%s, delay=%.1f, status=%s (%d%s%s %s)\n",
            m->qid, rcpt, relay[0] ? relay : "none", delay, status, r->code, r->enh[0] ? " " : "",
            r->enh, r->text);
}

static void send_dsn(struct qm_worker *qw, struct qm_msg *m, const struct mx_dsn_rcpt *st,
                     size_t n, uint64_t now, bool delayed)
{
    const struct mx_config *cfg = qw->q->cfg;
    const char *host = cfg->smtp_hostname ? cfg->smtp_hostname : "localhost";
    char *dsn = NULL;
    size_t dsn_len = 0;
    int rc = mx_dsn_build(&m->env, st, n, qm_msg_body(m), m->body_len, host, m->qid, now, &dsn,
                          &dsn_len);
    if (rc < 0) {
        fprintf(stderr, "mxgate[queue]: %s: cannot build the DSN: %s\n", m->qid, strerror(-rc));
        return;
    }
    struct mx_rcpt rcpt;
    memset(&rcpt, 0, sizeof rcpt);
    snprintf(rcpt.addr, sizeof rcpt.addr, "%s", m->env.mail_from);
    rcpt.notify = MX_NOTIFY_NEVER;
    struct mx_envelope env;
    memset(&env, 0, sizeof env);
    env.rcpts = &rcpt;
    env.n_rcpts = 1;
    env.arrival_ms = now;
    snprintf(env.helo, sizeof env.helo, "%s", host);
    snprintf(env.client_text, sizeof env.client_text, "localhost");
    snprintf(env.session_id, sizeof env.session_id, "dsn");
    char qid[QM_QID_SIZE];
    rc = enqueue_local(qw, &env, dsn, dsn_len, qid);
    free(dsn);
    if (rc < 0)
        fprintf(stderr, "mxgate[queue]: %s: cannot queue the DSN: %s\n", m->qid, strerror(-rc));
    else
        fprintf(stderr, "mxgate[queue]: %s: sender %s notification: %s\n", m->qid,
                delayed ? "delay" : "non-delivery", qid);
}

/*
 * Still not delivered after queue.delay_warning: one "delayed" DSN (RFC
 * 3464 Action: delayed) for the recipients whose NOTIFY asks for delays
 * (DELAY, or no NOTIFY at all, like Postfix's delay_warning_time), once per
 * message (journaled), never to the null sender.
 */
static void maybe_warn_delay(struct qm_attempt *a, uint64_t now)
{
    struct qm_worker *qw = a->qw;
    struct qm_msg *m = a->m;
    uint64_t after = (uint64_t)qw->q->cfg->queue_delay_warning * 1000;
    if (!after || m->delay_warned || !m->env.mail_from[0] || m->deleted ||
        now < m->env.arrival_ms + after)
        return;
    size_t n = m->env.n_rcpts, k = 0;
    struct mx_dsn_rcpt *st = calloc(n ? n : 1, sizeof *st);
    if (!st)
        return; /* next attempt */
    for (size_t i = 0; i < n; i++) {
        uint8_t nf = m->env.rcpts[i].notify;
        bool wants = nf == MX_NOTIFY_DEFAULT || (!(nf & MX_NOTIFY_NEVER) && (nf & MX_NOTIFY_DELAY));
        if (m->rstate[i] == QM_R_PENDING && wants)
            st[k++] = (struct mx_dsn_rcpt){i, &a->res[i], true, a->remote[i]};
    }
    if (k)
        send_dsn(qw, m, st, k, now, true);
    free(st);
    /* also when nobody asked: the question is settled for this message */
    m->delay_warned = true;
    qm_journal(qw, m, QM_J_WARNED, 0);
}

static void attempt_finish(struct qm_attempt *a)
{
    struct qm_worker *qw = a->qw;
    struct qm_msg *m = a->m;
    const struct mx_config *cfg = qw->q->cfg;
    uint64_t now = qm_unix_ms();
    size_t n = m->env.n_rcpts, n_fail = 0, n_defer = 0;
    struct mx_dsn_rcpt *st = calloc(n ? n : 1, sizeof *st);
    uint64_t lifetime_ms = (uint64_t)(cfg->queue_max_lifetime ? cfg->queue_max_lifetime
                                                                : 5 * 86400) * 1000;
    bool expired = now > m->env.arrival_ms && now - m->env.arrival_ms > lifetime_ms;
    for (size_t i = 0; i < n; i++) {
        if (!a->tried[i] || m->rstate[i] != QM_R_PENDING)
            continue;
        struct mx_deliver_rcpt_result *r = &a->res[i];
        const char *rcpt = m->env.rcpts[i].addr;
        if (r->code >= 200 && r->code < 300) {
            m->rstate[i] = QM_R_DELIVERED;
            qm_journal(qw, m, QM_J_DELIVERED, (uint32_t)i);
            log_rcpt(m, rcpt, a->remote[i], now, "sent", r);
            mx_stats_add(MX_STAT_DELIVERY_OK, 1);
        } else if (r->code >= 500 || expired) {
            if (r->code < 500) {
                char t[sizeof r->text], pre[64];
                snprintf(t, sizeof t, "%s", r->text);
                snprintf(pre, sizeof pre, "giving up after %u attempts: ", m->attempts + 1);
                join2(r->text, sizeof r->text, pre, t);
            }
            m->rstate[i] = QM_R_FAILED;
            log_rcpt(m, rcpt, a->remote[i], now, "bounced", r);
            mx_stats_add(MX_STAT_DELIVERY_BOUNCED, 1);
            qm_journal(qw, m, QM_J_FAILED, (uint32_t)i);
            /* RFC 3461 4.1: a failure DSN unless NOTIFY said NEVER or left FAILURE out */
            uint8_t nf = m->env.rcpts[i].notify;
            bool wants = nf == MX_NOTIFY_DEFAULT ||
                         (!(nf & MX_NOTIFY_NEVER) && (nf & MX_NOTIFY_FAILURE));
            if (st && wants)
                st[n_fail++] = (struct mx_dsn_rcpt){i, r, false, a->remote[i]};
        } else {
            n_defer++;
            char pre[40];
            snprintf(pre, sizeof pre, "%d %s%s", r->code, r->enh, r->enh[0] ? " " : "");
            join2(m->last_error, sizeof m->last_error, pre, r->text);
            log_rcpt(m, rcpt, a->remote[i], now, "deferred", r);
            mx_stats_add(MX_STAT_DELIVERY_DEFERRED, 1);
        }
    }
    /* The DSN record and the failures' journal entries go out in the same
     * batch, whose chain syncs the segment before it writes the journal: a
     * failure is never on record without its DSN. */
    if (n_fail && m->env.mail_from[0])
        send_dsn(qw, m, st, n_fail, now, false);
    free(st);
    qw->active--;
    if (m->deleted || qm_msg_finished(m)) {
        qm_worker_finish(qw, m);
    } else {
        maybe_warn_delay(a, now);
        qm_list_remove(qw, m);
        m->attempts++;
        m->next_attempt_ms = now + (uint64_t)backoff_s(cfg, m->attempts) * 1000;
        m->state = QM_M_DEFERRED;
        qm_journal(qw, m, QM_J_DEFERRED, 0);
        qm_list_insert(qw, m);
        /* the bytes are in the spool; a queue of deferred mail need not fit in memory */
        free(m->buf);
        m->buf = NULL;
    }
    free(a->tried);
    free(a->res);
    free(a->remote);
    free(a);
}

static void group_done(void *arg, const struct mx_deliver_result *res)
{
    struct qm_group *g = arg;
    struct qm_attempt *a = g->a;
    for (size_t k = 0; k < g->n; k++) {
        size_t i = g->idx[k];
        if (res && k < res->n && res->rcpt[k].code != 0) {
            a->res[i] = res->rcpt[k];
        } else {
            set_res(&a->res[i], 451, "4.4.1",
                    res && res->error[0] ? res->error : "delivery not attempted");
        }
        snprintf(a->remote[i], sizeof a->remote[i], "%s",
                 res && res->remote[0] ? res->remote : "none");
    }
    free(g->idx);
    free(g);
    if (--a->pending == 0)
        attempt_finish(a);
}

struct qm_md_arg {
    struct qm_attempt *a;
    size_t i;
    const char *dir;
};

static void maildir_result(struct qm_attempt *a, size_t i, const char *dir, int rc)
{
    snprintf(a->remote[i], sizeof a->remote[i], "maildir");
    if (rc == 0) {
        set_res(&a->res[i], 250, "2.0.0", "delivered to maildir");
    } else {
        char t[200];
        snprintf(t, sizeof t, "maildir %s: %s", dir, strerror(-rc));
        set_res(&a->res[i], 451, "4.3.0", t);
    }
}

static void maildir_done(void *arg, int res)
{
    struct qm_md_arg *ma = arg;
    struct qm_attempt *a = ma->a;
    maildir_result(a, ma->i, ma->dir, res);
    free(ma);
    if (--a->pending == 0)
        attempt_finish(a);
}

/* Asynchronous on the worker's ring; the result arrives in maildir_done. */
static void deliver_maildir(struct qm_attempt *a, const struct mx_route *rt, size_t i)
{
    struct qm_msg *m = a->m;
    struct qm_md_arg *ma = malloc(sizeof *ma);
    int rc = -ENOMEM;
    if (ma) {
        *ma = (struct qm_md_arg){a, i, rt->maildir};
        a->pending++;
        rc = qm_maildir_start(&a->qw->md, rt->maildir, m->qid, m->env.mail_from,
                              m->env.rcpts[i].addr, qm_msg_body(m), m->body_len, maildir_done,
                              ma);
        if (rc < 0) {
            a->pending--;
            free(ma);
        }
    }
    if (rc < 0)
        maildir_result(a, i, rt->maildir, rc);
}

static void start_delivery(struct qm_worker *qw, struct qm_msg *m)
{
    const struct mx_config *cfg = qw->q->cfg;
    size_t n = m->env.n_rcpts;
    int lrc = qm_msg_load(m);
    if (lrc < 0) {
        fprintf(stderr, "mxgate[queue]: %s: cannot read the message back from %s: %s\n", m->qid,
                m->seg->path, strerror(-lrc));
        snprintf(m->last_error, sizeof m->last_error, "spool read: %s", strerror(-lrc));
        m->next_attempt_ms = qm_unix_ms() + (uint64_t)backoff_s(cfg, m->attempts + 1) * 1000;
        m->state = QM_M_DEFERRED;
        qm_list_insert(qw, m);
        return;
    }
    struct qm_attempt *a = calloc(1, sizeof *a);
    bool *tried = calloc(n ? n : 1, sizeof *tried);
    struct mx_deliver_rcpt_result *res = calloc(n ? n : 1, sizeof *res);
    char(*remote)[80] = calloc(n ? n : 1, sizeof *remote);
    if (!a || !tried || !res || !remote) {
        free(a);
        free(tried);
        free(res);
        free(remote);
        m->next_attempt_ms = qm_unix_ms() + 1000; /* try again a little later */
        m->state = QM_M_DEFERRED;
        qm_list_insert(qw, m);
        return;
    }
    *a = (struct qm_attempt){qw, m, 1, tried, res, remote};
    m->state = QM_M_ACTIVE;
    qm_list_insert(qw, m);
    qw->active++;
    for (size_t i = 0; i < n; i++) {
        if (tried[i] || m->rstate[i] != QM_R_PENDING)
            continue;
        const struct mx_route *rt = route_for(cfg, m->env.rcpts[i].addr);
        if (!rt) {
            tried[i] = true;
            set_res(&res[i], 550, "5.1.2", "no route for the recipient's domain");
            continue;
        }
        if (rt->scheme == MX_ROUTE_MAILDIR) {
            tried[i] = true;
            deliver_maildir(a, rt, i);
            continue;
        }
        /* one SMTP transaction for every pending recipient of this route */
        struct qm_group *g = calloc(1, sizeof *g);
        size_t *idx = calloc(n, sizeof *idx);
        if (!g || !idx) {
            free(g);
            free(idx);
            tried[i] = true;
            set_res(&res[i], 451, "4.3.0", "out of memory");
            continue;
        }
        for (size_t j = i; j < n; j++) {
            if (tried[j] || m->rstate[j] != QM_R_PENDING)
                continue;
            if (j != i && route_for(cfg, m->env.rcpts[j].addr) != rt)
                continue;
            /* over MX, one transaction per recipient domain (its own exchangers) */
            if (j != i && rt->scheme == MX_ROUTE_MX &&
                strcasecmp(domain_of(m->env.rcpts[j].addr), domain_of(m->env.rcpts[i].addr)))
                continue;
            tried[j] = true;
            idx[g->n++] = j;
        }
        g->a = a;
        g->idx = idx;
        g->req = (struct mx_deliver_req){
            .route = rt,
            .env = &m->env,
            .rcpt_idx = idx,
            .n_rcpt = g->n,
            .msg = qm_msg_body(m),
            .len = m->body_len,
            .helo_name = cfg->smtp_hostname ? cfg->smtp_hostname : "localhost",
            .queue_id = m->qid,
            .fail_ttl_ms = cfg->queue_dest_fail_ttl * 1000u,
        };
        a->pending++;
        int rc = rt->scheme == MX_ROUTE_MX
                     ? mx_deliver_mx_start(qw->w, &g->req, domain_of(m->env.rcpts[i].addr),
                                           group_done, g)
                     : mx_deliver_smtp_start(qw->w, &g->req, group_done, g);
        if (rc < 0) {
            a->pending--;
            char t[256];
            const char *why = mx_deliver_smtp_start_error();
            if (why[0])
                snprintf(t, sizeof t, "%s", why); /* e.g. every host in the failure cache */
            else
                snprintf(t, sizeof t, "cannot start delivery: %s", strerror(-rc));
            for (size_t k = 0; k < g->n; k++) {
                set_res(&res[idx[k]], 451, why[0] ? "4.4.1" : "4.4.0", t);
                snprintf(remote[idx[k]], sizeof remote[idx[k]], "none");
            }
            free(idx);
            free(g);
        }
    }
    if (--a->pending == 0)
        attempt_finish(a);
}

/* ---- journal snapshot -------------------------------------------------------------- */

static int snap_msg(struct qm_worker *qw, const struct qm_msg *m)
{
    struct qm_jentry e = {0};
    memcpy(e.qid, m->qid, sizeof e.qid);
    int rc = 0;
    if (m->deleted) {
        e.type = QM_J_DELETED;
        return qm_spool_journal(&qw->sp, &e);
    }
    for (size_t k = 0; k < m->env.n_rcpts && rc == 0; k++) {
        if (m->rstate[k] == QM_R_PENDING)
            continue;
        e.type = m->rstate[k] == QM_R_DELIVERED ? QM_J_DELIVERED : QM_J_FAILED;
        e.rcpt = (uint32_t)k;
        rc = qm_spool_journal(&qw->sp, &e);
    }
    if (rc == 0 && m->attempts) {
        e.type = QM_J_DEFERRED;
        e.rcpt = 0;
        e.attempts = m->attempts;
        e.when_ms = m->next_attempt_ms;
        snprintf(e.err, sizeof e.err, "%s", m->last_error);
        rc = qm_spool_journal(&qw->sp, &e);
    }
    if (rc == 0 && m->env.quarantine && !m->quarantined) {
        /* the record says quarantine: the snapshot must keep the release */
        struct qm_jentry r = {.type = QM_J_RELEASED};
        memcpy(r.qid, m->qid, sizeof r.qid);
        rc = qm_spool_journal(&qw->sp, &r);
    }
    if (rc == 0 && m->held) {
        struct qm_jentry h = {.type = QM_J_HELD};
        memcpy(h.qid, m->qid, sizeof h.qid);
        rc = qm_spool_journal(&qw->sp, &h);
    }
    if (rc == 0 && m->delay_warned) {
        struct qm_jentry h = {.type = QM_J_WARNED};
        memcpy(h.qid, m->qid, sizeof h.qid);
        rc = qm_spool_journal(&qw->sp, &h);
    }
    return rc;
}

static int cmp_qid(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * Old copies of messages moved to the deferred store: "finished" once the
 * message is no longer queued, so a recovery never brings the old copy back.
 */
static int snap_moved(struct qm_worker *qw)
{
    size_t n_moved = 0;
    struct qm_seg *s;
    TAILQ_FOREACH(s, &qw->sp.segs, link)
    n_moved += s->n_moved;
    if (!n_moved)
        return 0;
    const char **live = malloc((qw->n_msgs + 1) * sizeof *live);
    if (!live)
        return -ENOMEM;
    size_t n = 0;
    struct qm_mq *lists[3] = {&qw->ready, &qw->waiting, &qw->busy};
    for (int k = 0; k < 3; k++) {
        struct qm_msg *m;
        TAILQ_FOREACH(m, lists[k], link)
        if (n <= qw->n_msgs)
            live[n++] = m->qid;
    }
    qsort(live, n, sizeof *live, cmp_qid);
    int rc = 0;
    TAILQ_FOREACH(s, &qw->sp.segs, link)
    for (size_t i = 0; i < s->n_moved && rc == 0; i++) {
        const char *key = s->moved[i];
        if (n && bsearch(&key, live, n, sizeof *live, cmp_qid))
            continue; /* still queued: its state entries say enough */
        struct qm_jentry e = {.type = QM_J_DELETED};
        memcpy(e.qid, s->moved[i], sizeof e.qid);
        rc = qm_spool_journal(&qw->sp, &e);
    }
    free(live);
    return rc;
}

/*
 * The journal only grows while the gateway runs; past sp.j_max it starts a
 * new file holding a snapshot of everything still true: the state of every
 * queued message and "finished" for every message whose segment is still
 * on disk. Once that batch is durable the old journals are removed.
 */
int qm_journal_snapshot(struct qm_worker *qw)
{
    int rc = qm_spool_journal_rotate(&qw->sp);
    if (rc < 0)
        return rc;
    struct qm_mq *lists[3] = {&qw->ready, &qw->waiting, &qw->busy};
    for (int k = 0; k < 3 && rc == 0; k++) {
        struct qm_msg *m;
        TAILQ_FOREACH(m, lists[k], link)
        if (rc == 0)
            rc = snap_msg(qw, m);
    }
    struct qm_seg *s;
    TAILQ_FOREACH(s, &qw->sp.segs, link)
    for (size_t i = 0; i < s->n_done && rc == 0; i++) {
        struct qm_jentry e = {.type = QM_J_DELETED};
        memcpy(e.qid, s->done[i], sizeof e.qid);
        rc = qm_spool_journal(&qw->sp, &e);
    }
    if (rc == 0)
        rc = snap_moved(qw);
    if (rc < 0) {
        /* keep the old journals: replaying them and a partial snapshot is harmless */
        qw->sp.n_j_old = 0;
        qw->sp.j_snapshot_pending = false;
        return rc;
    }
    if (qw->sp.jlen == 0) {
        /* nothing is live and nothing finished lingers: the old ones say nothing needed */
        for (unsigned i = 0; i < qw->sp.n_j_old; i++)
            unlink(qw->sp.j_old[i]);
        qw->sp.n_j_old = 0;
        qw->sp.j_snapshot_pending = false;
    }
    fprintf(stderr, "mxgate[queue]: worker %u: journal rotated to %s (%zu bytes of snapshot)\n",
            qw->index, qw->sp.j_path, qw->sp.jlen);
    return 0;
}

/* ---- the tick ------------------------------------------------------------------------ */

/* A quarantined message past its retention is deleted (journaled). */
static bool quarantine_expired(struct qm_worker *qw, struct qm_msg *m, uint64_t now)
{
    uint64_t keep = (uint64_t)m->env.quarantine_retention_s * 1000;
    if (!keep || now < m->env.arrival_ms + keep)
        return false;
    fprintf(stderr, "mxgate[queue]: %s: quarantine retention (%us) over, deleting\n", m->qid,
            (unsigned)m->env.quarantine_retention_s);
    m->deleted = true;
    qm_journal(qw, m, QM_J_DELETED, 0);
    qm_worker_finish(qw, m);
    return true;
}

static void make_due(struct qm_worker *qw, bool all)
{
    uint64_t now = qm_unix_ms();
    struct qm_msg *m, *next;
    for (m = TAILQ_FIRST(&qw->waiting); m; m = next) {
        next = TAILQ_NEXT(m, link);
        if (m->quarantined && quarantine_expired(qw, m, now))
            continue;
        if (m->held || m->quarantined)
            continue;
        if (all || m->next_attempt_ms <= now) {
            qm_list_remove(qw, m);
            if (all)
                m->next_attempt_ms = now;
            m->state = QM_M_READY;
            qm_list_insert(qw, m);
        }
    }
}

void qm_tick(struct mx_worker *w, void *arg)
{
    struct qm_worker *qw = arg;
    struct mx_queue *q = qw->q;
    uint64_t now = w ? mx_worker_now_ms(w) : mono_ms();
    if (atomic_load_explicit(&qw->ctl_flag, memory_order_acquire)) {
        pthread_mutex_lock(&q->ctl_lock);
        if (qw->ctl_req) {
            qm_ctl_run(qw, qw->ctl_req);
            qw->ctl_req = NULL;
            pthread_cond_broadcast(&q->ctl_cond);
        }
        atomic_store(&qw->ctl_flag, false);
        pthread_mutex_unlock(&q->ctl_lock);
    }
    if (atomic_exchange(&qw->flush_req, false))
        make_due(qw, true);
    if (now >= qw->next_scan_ms) {
        qw->next_scan_ms = now + QM_SCAN_MS;
        make_due(qw, false);
        compact_scan(qw, qm_unix_ms());
    }
    if (!atomic_load_explicit(&q->frozen, memory_order_relaxed) &&
        !(w && mx_worker_stopping(w))) {
        struct qm_msg *m;
        while (qw->active < QM_MAX_ACTIVE && (m = TAILQ_FIRST(&qw->ready))) {
            qm_list_remove(qw, m);
            start_delivery(qw, m);
        }
    }
    qm_maildir_flush(&qw->md);
    check_space(qw, now);
    if (qw->sp.j_off > qw->sp.j_max && !qw->sp.inflight && !qw->sp.jlen)
        qm_journal_snapshot(qw);
    qm_spool_flush(&qw->sp);
    qm_spool_gc(&qw->sp);
}
