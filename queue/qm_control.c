/*
 * qm_control.c - mxctl queue operations. The control thread never touches
 * a worker's messages itself: it posts one request to every worker and
 * waits; each worker runs it in its tick (qm_tick) and appends its part of
 * the answer. A worker that has not started yet is served by the control
 * thread directly (nothing else can touch it then). The mutex is taken by
 * the control thread and by a worker only while a request is pending, so
 * the workers' hot path stays lock-free.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "queue/deliver.h"
#include "queue/qm_internal.h"

struct qm_ctl_req {
    const char *cmd;
    const char *arg;
    bool json;
    json_t *arr; /* list/show with json */
    char *text;
    size_t tlen, tcap;
    unsigned found;
    bool oom;
};

static void out_printf(struct qm_ctl_req *r, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(r->text ? r->text + r->tlen : NULL, r->text ? r->tcap - r->tlen : 0,
                          fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (r->text && r->tlen + (size_t)n < r->tcap) {
            r->tlen += (size_t)n;
            return;
        }
        size_t cap = r->tcap ? r->tcap : 4096;
        while (cap <= r->tlen + (size_t)n)
            cap *= 2;
        char *nt = realloc(r->text, cap);
        if (!nt) {
            r->oom = true;
            return;
        }
        r->text = nt;
        r->tcap = cap;
    }
}

static const char *state_name(const struct qm_msg *m)
{
    if (m->deleted)
        return "deleted";
    if (m->quarantined)
        return "quarantine";
    if (m->held)
        return "hold";
    /* a copy to the deferred store is bookkeeping, not a delivery */
    switch (m->moving ? m->pre_move : m->state) {
    case QM_M_ACTIVE:
        return "active";
    case QM_M_DEFERRED:
        return "deferred";
    default:
        return "queued";
    }
}

static const char *rstate_name(uint8_t s)
{
    return s == QM_R_DELIVERED ? "delivered" : s == QM_R_FAILED ? "bounced" : "pending";
}

static json_t *msg_json(const struct qm_msg *m, bool detail)
{
    json_t *o = json_object();
    json_t *rc = json_array();
    for (size_t i = 0; i < m->env.n_rcpts; i++) {
        if (detail)
            json_array_append_new(rc, json_pack("{s:s,s:s}", "addr", m->env.rcpts[i].addr,
                                                "status", rstate_name(m->rstate[i])));
        else if (m->rstate[i] == QM_R_PENDING)
            json_array_append_new(rc, json_string(m->env.rcpts[i].addr));
    }
    json_object_set_new(o, "id", json_string(m->qid));
    json_object_set_new(o, "from", json_string(m->env.mail_from));
    json_object_set_new(o, "rcpts", rc);
    json_object_set_new(o, "size", json_integer((json_int_t)m->body_len));
    json_object_set_new(o, "state", json_string(state_name(m)));
    json_object_set_new(o, "attempts", json_integer(m->attempts));
    json_object_set_new(o, "next_attempt", json_integer((json_int_t)(m->next_attempt_ms / 1000)));
    json_object_set_new(o, "last_error", json_string(m->last_error));
    if (m->quarantined)
        json_object_set_new(o, "reason", json_string(m->env.quarantine_reason));
    if (detail) {
        json_object_set_new(o, "arrival", json_integer((json_int_t)(m->env.arrival_ms / 1000)));
        json_object_set_new(o, "client", json_string(m->env.client_text));
        json_object_set_new(o, "helo", json_string(m->env.helo));
        json_object_set_new(o, "tls", json_string(m->env.tls));
        json_object_set_new(o, "envid", json_string(m->env.envid));
    }
    return o;
}

static void msg_text(struct qm_ctl_req *r, const struct qm_msg *m, bool detail)
{
    if (!detail) {
        out_printf(r, "%s %8zu %-8s attempts=%u next_attempt=%" PRIu64 " <%s>", m->qid,
                   m->body_len, state_name(m), m->attempts, m->next_attempt_ms / 1000,
                   m->env.mail_from);
        for (size_t i = 0; i < m->env.n_rcpts; i++)
            if (m->rstate[i] == QM_R_PENDING)
                out_printf(r, " %s", m->env.rcpts[i].addr);
        out_printf(r, "%s%s", m->last_error[0] ? " last_error=" : "", m->last_error);
        out_printf(r, "%s%s\n", m->quarantined ? " reason=" : "",
                   m->quarantined ? m->env.quarantine_reason : "");
        return;
    }
    out_printf(r,
               "id: %s\nstate: %s\nsize: %zu\nfrom: <%s>\narrival: %" PRIu64
               "\nclient: %s\nhelo: %s\ntls: %s\nattempts: %u\nnext_attempt: %" PRIu64
               "\nlast_error: %s\n",
               m->qid, state_name(m), m->body_len, m->env.mail_from, m->env.arrival_ms / 1000,
               m->env.client_text, m->env.helo, m->env.tls, m->attempts,
               m->next_attempt_ms / 1000, m->last_error);
    if (m->quarantined)
        out_printf(r, "reason: %s\nretention: %u\n", m->env.quarantine_reason,
                   (unsigned)m->env.quarantine_retention_s);
    for (size_t i = 0; i < m->env.n_rcpts; i++)
        out_printf(r, "rcpt: <%s> %s\n", m->env.rcpts[i].addr, rstate_name(m->rstate[i]));
}

static struct qm_msg *find(struct qm_worker *qw, const char *id)
{
    struct qm_mq *lists[3] = {&qw->ready, &qw->waiting, &qw->busy};
    for (int k = 0; k < 3; k++) {
        struct qm_msg *m;
        TAILQ_FOREACH(m, lists[k], link)
        if (strcmp(m->qid, id) == 0)
            return m;
    }
    return NULL;
}

/*
 * Hold or release (release also lets a quarantined message go); a message
 * being delivered keeps its list until the attempt ends.
 */
static void set_held(struct qm_worker *qw, struct qm_msg *m, bool held)
{
    qm_list_remove(qw, m);
    m->held = held;
    if (!held)
        m->quarantined = false;
    if (!held && m->state == QM_M_DEFERRED)
        m->state = QM_M_READY; /* released: try now */
    qm_list_insert(qw, m);
}

void qm_ctl_run(struct qm_worker *qw, struct qm_ctl_req *r)
{
    const char *cmd = r->cmd;
    if (strcmp(cmd, "list") == 0) {
        struct qm_mq *lists[3] = {&qw->busy, &qw->ready, &qw->waiting};
        for (int k = 0; k < 3; k++) {
            struct qm_msg *m;
            TAILQ_FOREACH(m, lists[k], link)
            {
                if (r->json)
                    json_array_append_new(r->arr, msg_json(m, false));
                else
                    msg_text(r, m, false);
            }
        }
        return;
    }
    if (strcmp(cmd, "flush") == 0) {
        /* "retry now" means every host too, also the ones that just failed */
        mx_deliver_smtp_clear_fail_cache();
        uint64_t now = qm_unix_ms();
        struct qm_msg *m, *next;
        for (m = TAILQ_FIRST(&qw->waiting); m; m = next) {
            next = TAILQ_NEXT(m, link);
            if (m->held || m->quarantined)
                continue;
            qm_list_remove(qw, m);
            m->state = QM_M_READY;
            m->next_attempt_ms = now;
            qm_list_insert(qw, m);
            r->found++;
        }
        return;
    }
    struct qm_msg *m = find(qw, r->arg);
    if (!m)
        return;
    r->found++;
    if (strcmp(cmd, "show") == 0) {
        if (r->json)
            json_array_append_new(r->arr, msg_json(m, true));
        else
            msg_text(r, m, true);
    } else if (strcmp(cmd, "hold") == 0) {
        if (!m->held) {
            set_held(qw, m, true);
            qm_journal(qw, m, QM_J_HELD, 0);
        }
    } else if (strcmp(cmd, "release") == 0) {
        if (m->held || m->quarantined) {
            set_held(qw, m, false);
            qm_journal(qw, m, QM_J_RELEASED, 0);
        }
    } else if (strcmp(cmd, "delete") == 0) {
        if (!m->deleted) {
            m->deleted = true;
            qm_journal(qw, m, QM_J_DELETED, 0);
            /* a delivery in flight still points at it: it ends the message */
            if (m->state != QM_M_ACTIVE)
                qm_worker_finish(qw, m);
        }
    }
}

static int cmp_json_id(const void *a, const void *b)
{
    const char *x = json_string_value(json_object_get(*(json_t *const *)a, "id"));
    const char *y = json_string_value(json_object_get(*(json_t *const *)b, "id"));
    return strcmp(x ? x : "", y ? y : "");
}

static int cmp_line(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Workers answer in turn; ids sort by arrival, so sorting gives queue order. */
static void sort_listing(struct qm_ctl_req *r)
{
    if (r->arr) {
        size_t n = json_array_size(r->arr);
        json_t **v = n ? malloc(n * sizeof *v) : NULL;
        if (!v)
            return;
        for (size_t i = 0; i < n; i++)
            v[i] = json_incref(json_array_get(r->arr, i));
        qsort(v, n, sizeof *v, cmp_json_id);
        json_array_clear(r->arr);
        for (size_t i = 0; i < n; i++)
            json_array_append_new(r->arr, v[i]);
        free(v);
        return;
    }
    if (!r->text || !r->tlen)
        return;
    size_t n = 0;
    for (size_t i = 0; i < r->tlen; i++)
        n += r->text[i] == '\n';
    char **lines = malloc((n + 1) * sizeof *lines);
    char *sorted = malloc(r->tlen + 1);
    if (!lines || !sorted) {
        free(lines);
        free(sorted);
        return;
    }
    size_t k = 0;
    for (char *p = r->text, *nl; k < n && (nl = strchr(p, '\n')); p = nl + 1) {
        *nl = 0;
        lines[k++] = p;
    }
    qsort(lines, k, sizeof *lines, cmp_line);
    size_t off = 0;
    for (size_t i = 0; i < k; i++)
        off += (size_t)sprintf(sorted + off, "%s\n", lines[i]);
    free(lines);
    free(r->text);
    r->text = sorted;
    r->tlen = off;
    r->tcap = r->tlen + 1;
}

static int dispatch(struct mx_queue *q, struct qm_ctl_req *r)
{
    pthread_mutex_lock(&q->ctl_lock);
    unsigned posted = 0;
    for (unsigned i = 0; i < q->n_workers; i++) {
        struct qm_worker *qw = &q->workers[i];
        if (!qw->started) {
            /* no worker thread yet: the manager's lists are ours to read */
            if (strcmp(r->cmd, "list") == 0 || strcmp(r->cmd, "show") == 0)
                qm_ctl_run(qw, r);
            else if (strcmp(r->cmd, "flush") == 0)
                atomic_store(&qw->flush_req, true);
            continue;
        }
        qw->ctl_req = r;
        atomic_store_explicit(&qw->ctl_flag, true, memory_order_release);
        posted++;
    }
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 5;
    int rc = 0;
    for (;;) {
        bool busy = false;
        for (unsigned i = 0; i < q->n_workers; i++)
            if (q->workers[i].ctl_req == r)
                busy = true;
        if (!busy || !posted)
            break;
        if (pthread_cond_timedwait(&q->ctl_cond, &q->ctl_lock, &dl) == ETIMEDOUT) {
            for (unsigned i = 0; i < q->n_workers; i++)
                if (q->workers[i].ctl_req == r)
                    q->workers[i].ctl_req = NULL;
            rc = -ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&q->ctl_lock);
    return rc;
}

static char *ok_text(bool json, const char *text)
{
    char *s = NULL;
    if (json) {
        json_t *o = json_pack("{s:b,s:s}", "ok", 1, "result", text);
        s = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (s) {
            size_t n = strlen(s);
            char *t = realloc(s, n + 2);
            if (t) {
                t[n] = '\n';
                t[n + 1] = 0;
                s = t;
            }
        }
    } else if (asprintf(&s, "%s\n", text) < 0) {
        s = NULL;
    }
    return s;
}

int mx_queue_control(struct mx_queue *q, const char *cmd, const char *arg, bool json,
                     char **out)
{
    *out = NULL;
    if (!cmd)
        return -EINVAL;
    struct {
        const char *name;
        _Atomic bool *flag;
        bool value;
        const char *text;
    } toggles[] = {
        {"freeze", &q->frozen, true, "delivery frozen"},
        {"thaw", &q->frozen, false, "delivery resumed"},
        {"pause-inbound", &q->inbound_paused, true, "inbound mail paused"},
        {"resume-inbound", &q->inbound_paused, false, "inbound mail resumed"},
    };
    for (size_t i = 0; i < sizeof toggles / sizeof toggles[0]; i++) {
        if (strcmp(cmd, toggles[i].name) == 0) {
            atomic_store(toggles[i].flag, toggles[i].value);
            fprintf(stderr, "mxgate[queue]: %s\n", toggles[i].text);
            *out = ok_text(json, toggles[i].text);
            return *out ? 0 : -ENOMEM;
        }
    }
    bool needs_id = strcmp(cmd, "show") == 0 || strcmp(cmd, "hold") == 0 ||
                    strcmp(cmd, "release") == 0 || strcmp(cmd, "delete") == 0;
    if (!needs_id && strcmp(cmd, "list") != 0 && strcmp(cmd, "flush") != 0) {
        if (asprintf(out, "unknown queue command: %s\n", cmd) < 0)
            *out = NULL;
        return -EINVAL;
    }
    if (needs_id && (!arg || !arg[0] || strlen(arg) >= QM_QID_SIZE)) {
        if (asprintf(out, "usage: queue %s ID\n", cmd) < 0)
            *out = NULL;
        return -EINVAL;
    }
    struct qm_ctl_req r = {.cmd = cmd, .arg = arg, .json = json};
    if (json)
        r.arr = json_array();
    int rc = dispatch(q, &r);
    if (rc == 0 && needs_id && r.found == 0) {
        if (asprintf(out, "no such message: %s\n", arg) < 0)
            *out = NULL;
        rc = -ENOENT;
    } else if (rc == 0 && strcmp(cmd, "list") == 0) {
        sort_listing(&r);
        if (json) {
            *out = json_dumps(r.arr, JSON_COMPACT);
        } else {
            out_printf(&r, "%s", "");
            *out = r.text;
            r.text = NULL;
        }
    } else if (rc == 0 && strcmp(cmd, "show") == 0) {
        if (json) {
            *out = json_dumps(json_array_get(r.arr, 0), JSON_COMPACT | JSON_ENCODE_ANY);
        } else {
            *out = r.text;
            r.text = NULL;
        }
    } else if (rc == 0) {
        char t[128];
        if (strcmp(cmd, "flush") == 0)
            snprintf(t, sizeof t, "%u deferred messages scheduled now", r.found);
        else
            snprintf(t, sizeof t, "%s %s", cmd, arg);
        fprintf(stderr, "mxgate[queue]: control: %s\n", t);
        *out = ok_text(json, t);
    } else if (rc == -ETIMEDOUT) {
        if (asprintf(out, "queue workers did not answer\n") < 0)
            *out = NULL;
    }
    if (r.arr)
        json_decref(r.arr);
    free(r.text);
    if (rc == 0 && (!*out || r.oom)) {
        free(*out);
        *out = NULL;
        return -ENOMEM;
    }
    return rc;
}
