/*
 * test_qm_policy.c - the queue's policy actions before commit:
 * mx_queue_msg_quarantine() (record format, never delivered, survives
 * restarts, `list --json` state and reason, release delivers, retention
 * deletes, the QUEUE_QUARANTINE gauge), mx_queue_msg_set_rcpts() (redirect)
 * and mx_queue_msg_add_rcpt() (BCC), each checked byte-exactly in Maildirs.
 *
 * The manager runs without EAL: worker 0 attached to a plain io_uring and
 * driven by a thread of this test, so mx_queue_control() from the main
 * thread goes through the real worker hand-off.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "config/config.h"
#include "console/console.h"
#include "queue/qm_internal.h"

static char tmpdir[256], spool[300], md_a[300], md_b[300], md_bad[300];
static struct mx_route routes[3];
static struct mx_config cfg;
static struct mx_queue *q;
static struct io_uring ring;
static struct qm_worker *qw;
static pthread_t driver;
static _Atomic bool driver_stop;

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_qmp_XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    snprintf(spool, sizeof spool, "%s/spool", tmpdir);
    snprintf(md_a, sizeof md_a, "%s/md-a", tmpdir);
    snprintf(md_b, sizeof md_b, "%s/md-b", tmpdir);
    snprintf(md_bad, sizeof md_bad, "/proc/no/such/dir");
    routes[0] = (struct mx_route){.domain = "a.test", .scheme = MX_ROUTE_MAILDIR, .maildir = md_a};
    routes[1] = (struct mx_route){.domain = "b.test", .scheme = MX_ROUTE_MAILDIR, .maildir = md_b};
    routes[2] = (struct mx_route){.domain = "bad.test", .scheme = MX_ROUTE_MAILDIR,
                                  .maildir = md_bad};
    memset(&cfg, 0, sizeof cfg);
    cfg.spool_dir = spool;
    cfg.dp_workers = 1;
    cfg.smtp_max_message_size = 1 << 20;
    cfg.smtp_hostname = "mx.test.invalid";
    cfg.routes = routes;
    cfg.n_routes = 3;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- a queue with worker 0 driven by a thread --------------------------- */

static void *drive(void *arg)
{
    (void)arg;
    while (!atomic_load(&driver_stop)) {
        qm_tick(NULL, qw);
        qm_ring_dispatch(&ring, false);
        usleep(1000);
    }
    return NULL;
}

static void start(void)
{
    assert_int_equal(mx_queue_open(&cfg, &q), 0);
    assert_int_equal(io_uring_queue_init(64, &ring, 0), 0);
    assert_int_equal(qm_worker_attach(q, 0, &ring, NULL), 0);
    qw = &q->workers[0];
    atomic_store(&driver_stop, false);
    assert_int_equal(pthread_create(&driver, NULL, drive, NULL), 0);
}

static void stop(void)
{
    atomic_store(&driver_stop, true);
    pthread_join(driver, NULL);
    /* let what is in flight finish, as a clean shutdown does */
    for (int i = 0; i < 200 && (qw->sp.inflight || qw->sp.jlen || qw->md.inflight); i++) {
        qm_spool_flush(&qw->sp);
        qm_ring_dispatch(&ring, false);
        usleep(1000);
    }
    mx_queue_close(q);
    io_uring_queue_exit(&ring);
    q = NULL;
}

/* Messages are injected through the public API on the driver thread. */
struct inject {
    const char *rcpt;
    const char *body;
    const char *quarantine; /* reason or NULL */
    unsigned retention;
    const char *redirect[2]; /* set_rcpts */
    const char *bcc;         /* add_rcpt */
    const char *from;        /* NULL: sender@a.test */
    uint8_t notify;
    _Atomic int state;
    int res;
    char qid[QM_QID_SIZE];
};

static void committed(void *arg, int res, const char *qid)
{
    struct inject *in = arg;
    in->res = res;
    if (qid)
        snprintf(in->qid, sizeof in->qid, "%s", qid);
    atomic_store(&in->state, 2);
}

static void do_inject(struct inject *in)
{
    struct mx_rcpt r;
    memset(&r, 0, sizeof r);
    snprintf(r.addr, sizeof r.addr, "%s", in->rcpt);
    r.notify = in->notify;
    struct mx_envelope env;
    memset(&env, 0, sizeof env);
    snprintf(env.mail_from, sizeof env.mail_from, "%s", in->from ? in->from : "sender@a.test");
    env.rcpts = &r;
    env.n_rcpts = 1;
    /* a caller's stray quarantine fields must not quarantine anything */
    env.quarantine = true;
    snprintf(env.quarantine_reason, sizeof env.quarantine_reason, "stray");
    struct mx_queue_msg *m = mx_queue_msg_begin(q, NULL, &env);
    assert_non_null(m);
    size_t half = strlen(in->body) / 2;
    assert_int_equal(mx_queue_msg_write(m, in->body, half), 0);
    /* policy actions arrive while DATA is under way: the bytes so far move */
    if (in->quarantine)
        assert_int_equal(mx_queue_msg_quarantine(m, in->quarantine, in->retention), 0);
    if (in->redirect[0]) {
        struct mx_rcpt nr[2];
        memset(nr, 0, sizeof nr);
        size_t n = 0;
        for (; n < 2 && in->redirect[n]; n++)
            snprintf(nr[n].addr, sizeof nr[n].addr, "%s", in->redirect[n]);
        assert_int_equal(mx_queue_msg_set_rcpts(m, nr, 0), -EINVAL);
        assert_int_equal(mx_queue_msg_set_rcpts(m, nr, n), 0);
    }
    if (in->bcc) {
        struct mx_rcpt b;
        memset(&b, 0, sizeof b);
        snprintf(b.addr, sizeof b.addr, "%s", in->bcc);
        assert_int_equal(mx_queue_msg_add_rcpt(m, &b), 0);
    }
    assert_int_equal(mx_queue_msg_write(m, in->body + half, strlen(in->body) - half), 0);
    int rc = mx_queue_msg_commit(m, committed, in);
    if (rc < 0) {
        in->res = rc;
        atomic_store(&in->state, 2);
    }
}

/*
 * Whoever drives the worker owns it: stop the driver thread, inject on this
 * thread (joining it orders its writes before ours), start it again.
 */
static void submit(struct inject *in)
{
    atomic_store(&in->state, 1);
    atomic_store(&driver_stop, true);
    pthread_join(driver, NULL);
    do_inject(in);
    atomic_store(&driver_stop, false);
    assert_int_equal(pthread_create(&driver, NULL, drive, NULL), 0);
    for (int i = 0; i < 2000 && atomic_load(&in->state) != 2; i++)
        usleep(1000);
    assert_int_equal(atomic_load(&in->state), 2);
    assert_int_equal(in->res, 0);
    assert_int_equal(strlen(in->qid), QM_QID_LEN);
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

/* The only file in DIR/new, read whole into out. */
static void read_only_file(const char *md, char *out, size_t size)
{
    char nd[400];
    snprintf(nd, sizeof nd, "%s/new", md);
    assert_int_equal(count_files(nd), 1);
    DIR *d = opendir(nd);
    struct dirent *de;
    while ((de = readdir(d)) && de->d_name[0] == '.')
        ;
    assert_non_null(de);
    char p[800];
    snprintf(p, sizeof p, "%s/%s", nd, de->d_name);
    closedir(d);
    int fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    ssize_t l = read(fd, out, size - 1);
    close(fd);
    assert_true(l > 0);
    out[l] = 0;
}

static bool wait_for(bool (*cond)(void))
{
    for (int i = 0; i < 3000; i++) {
        if (cond())
            return true;
        usleep(1000);
    }
    return cond();
}

static char md_a_new[400], md_b_new[400];
static bool one_in_a(void)
{
    return count_files(md_a_new) == 1;
}

static int64_t gauge(enum mx_stat id)
{
    struct mx_stats_snapshot *s = malloc(sizeof *s);
    assert_non_null(s);
    mx_stats_snapshot(s);
    int64_t v = (int64_t)s->total[id];
    free(s);
    return v;
}

/* `list --json` must hold exactly one message: return it (caller decrefs arr). */
static json_t *list_one(json_t **arr)
{
    char *out = NULL;
    assert_int_equal(mx_queue_control(q, "list", NULL, true, &out), 0);
    json_error_t err;
    *arr = json_loads(out, 0, &err);
    free(out);
    assert_non_null(*arr);
    assert_int_equal(json_array_size(*arr), 1);
    return json_array_get(*arr, 0);
}

static size_t list_count(void)
{
    char *out = NULL;
    assert_int_equal(mx_queue_control(q, "list", NULL, true, &out), 0);
    json_error_t err;
    json_t *arr = json_loads(out, 0, &err);
    free(out);
    assert_non_null(arr);
    size_t n = json_array_size(arr);
    json_decref(arr);
    return n;
}

/* ---- record format -------------------------------------------------------- */

static void test_quarantine_record(void **state)
{
    (void)state;
    struct mx_rcpt r;
    memset(&r, 0, sizeof r);
    snprintf(r.addr, sizeof r.addr, "u@a.test");
    struct mx_envelope env, back;
    memset(&env, 0, sizeof env);
    env.rcpts = &r;
    env.n_rcpts = 1;
    size_t plain = qm_env_size(&env);
    env.quarantine = true;
    env.quarantine_retention_s = 1814400;
    snprintf(env.quarantine_reason, sizeof env.quarantine_reason, "virus: Eicar-Test-Signature");
    size_t n = qm_env_size(&env);
    assert_int_equal(n, plain + 2 + strlen(env.quarantine_reason) + 4);
    uint8_t buf[4096];
    assert_int_equal(qm_env_encode(&env, buf), n);
    assert_int_equal(qm_env_decode(buf, n, &back), 0);
    assert_true(back.quarantine);
    assert_int_equal(back.quarantine_retention_s, 1814400);
    assert_string_equal(back.quarantine_reason, "virus: Eicar-Test-Signature");
    assert_string_equal(back.rcpts[0].addr, "u@a.test");
    qm_env_free(&back);
    /* the flags word is the u16 right before the u32 recipient count */
    size_t rc_at = plain - (2 + strlen("u@a.test") + 1 + 2) - 4;
    assert_int_equal(buf[rc_at - 2], QM_ENV_F_QUARANTINE);
    buf[rc_at - 2] = 2; /* a flag never written */
    assert_int_equal(qm_env_decode(buf, n, &back), -EBADMSG);
    buf[rc_at - 2] = 0; /* flag cleared: the trailing quarantine bytes are junk now */
    assert_int_equal(qm_env_decode(buf, n, &back), -EBADMSG);
    /* a record written before quarantine existed (flags 0) still reads */
    env.quarantine = false;
    assert_int_equal(qm_env_encode(&env, buf), plain);
    assert_int_equal(qm_env_decode(buf, plain, &back), 0);
    assert_false(back.quarantine);
    qm_env_free(&back);
}

/* ---- quarantine through the manager -------------------------------------- */

static void test_quarantine_release(void **state)
{
    (void)state;
    snprintf(md_a_new, sizeof md_a_new, "%s/new", md_a);
    int64_t g0 = gauge(MX_STAT_QUEUE_QUARANTINE);
    start();
    struct inject in = {.rcpt = "user@a.test",
                        .body = "Subject: bad\r\n\r\nX5O!P%@AP[4\\PZX54(P^)7CC)7}\r\n",
                        .quarantine = "virus: Eicar-Test-Signature"};
    submit(&in);
    usleep(300 * 1000); /* many ticks: it must still not be delivered */
    assert_int_equal(count_files(md_a_new), 0);
    json_t *arr;
    json_t *o = list_one(&arr);
    assert_string_equal(json_string_value(json_object_get(o, "id")), in.qid);
    assert_string_equal(json_string_value(json_object_get(o, "state")), "quarantine");
    assert_string_equal(json_string_value(json_object_get(o, "reason")),
                        "virus: Eicar-Test-Signature");
    json_decref(arr);
    assert_int_equal(gauge(MX_STAT_QUEUE_QUARANTINE), g0 + 1);
    /* flush does not let it out */
    char *out = NULL;
    assert_int_equal(mx_queue_control(q, "flush", NULL, false, &out), 0);
    assert_string_equal(out, "0 deferred messages scheduled now\n");
    free(out);
    assert_int_equal(mx_queue_control(q, "list", NULL, false, &out), 0);
    char want[200];
    snprintf(want, sizeof want,
             "%s %8zu quarantine attempts=0 next_attempt=0 <sender@a.test> user@a.test "
             "reason=virus: Eicar-Test-Signature\n",
             in.qid, strlen(in.body));
    assert_string_equal(out, want);
    free(out);
    assert_int_equal(mx_queue_control(q, "show", in.qid, false, &out), 0);
    assert_non_null(strstr(out, "state: quarantine\n"));
    assert_non_null(strstr(out, "reason: virus: Eicar-Test-Signature\nretention: 0\n"));
    free(out);
    stop();
    assert_int_equal(gauge(MX_STAT_QUEUE_QUARANTINE), g0);

    /* a restart keeps it in quarantine (the state is in the record) */
    start();
    assert_int_equal(gauge(MX_STAT_QUEUE_QUARANTINE), g0 + 1);
    o = list_one(&arr);
    assert_string_equal(json_string_value(json_object_get(o, "state")), "quarantine");
    json_decref(arr);
    usleep(200 * 1000);
    assert_int_equal(count_files(md_a_new), 0);
    /* release: delivered byte-exactly */
    assert_int_equal(mx_queue_control(q, "release", in.qid, false, &out), 0);
    free(out);
    assert_true(wait_for(one_in_a));
    char f[4096];
    read_only_file(md_a, f, sizeof f);
    char exp[1024];
    snprintf(exp, sizeof exp, "Return-Path: <sender@a.test>\r\nDelivered-To: user@a.test\r\n%s",
             in.body);
    assert_string_equal(f, exp);
    for (int i = 0; i < 1000 && list_count() != 0; i++)
        usleep(1000);
    assert_int_equal(list_count(), 0);
    assert_int_equal(gauge(MX_STAT_QUEUE_QUARANTINE), g0);
    stop();
    /* and it never comes back */
    start();
    assert_int_equal(list_count(), 0);
    stop();
}

/* Released, then deferred: restarts (two compactions) keep it released. */
static void test_quarantine_release_survives(void **state)
{
    (void)state;
    start();
    struct inject in = {.rcpt = "user@bad.test", .body = "Subject: q\r\n\r\nq\r\n",
                        .quarantine = "spam score 12.0"};
    submit(&in);
    char *out = NULL;
    assert_int_equal(mx_queue_control(q, "release", in.qid, false, &out), 0);
    free(out);
    json_t *arr = NULL;
    for (int i = 0; i < 2000; i++) {
        json_t *o = list_one(&arr);
        bool deferred = strcmp(json_string_value(json_object_get(o, "state")), "deferred") == 0;
        json_decref(arr);
        if (deferred)
            break;
        usleep(1000);
    }
    stop();
    for (int k = 0; k < 2; k++) {
        start();
        json_t *o = list_one(&arr);
        assert_string_equal(json_string_value(json_object_get(o, "state")), "deferred");
        assert_null(json_object_get(o, "reason"));
        assert_int_equal(json_integer_value(json_object_get(o, "attempts")), 1);
        json_decref(arr);
        stop();
    }
    /* delete it so the spool ends empty */
    start();
    assert_int_equal(mx_queue_control(q, "delete", in.qid, false, &out), 0);
    free(out);
    assert_int_equal(list_count(), 0);
    stop();
}

static void test_quarantine_retention(void **state)
{
    (void)state;
    snprintf(md_a_new, sizeof md_a_new, "%s/new", md_a);
    int64_t g0 = gauge(MX_STAT_QUEUE_QUARANTINE);
    start();
    struct inject in = {.rcpt = "user@a.test", .body = "Subject: r\r\n\r\nr\r\n",
                        .quarantine = "banned attachment", .retention = 1};
    submit(&in);
    assert_int_equal(list_count(), 1);
    for (int i = 0; i < 4000 && list_count() != 0; i++)
        usleep(1000);
    assert_int_equal(list_count(), 0);
    assert_int_equal(gauge(MX_STAT_QUEUE_QUARANTINE), g0);
    stop();
    start();
    assert_int_equal(list_count(), 0);
    stop();
    assert_int_equal(count_files(md_a_new), 0);
}

/* ---- delay DSNs ------------------------------------------------------------------ */

/* Every queued message deferred with at least k attempts. */
static bool all_deferred(size_t n, unsigned k)
{
    char *out = NULL;
    assert_int_equal(mx_queue_control(q, "list", NULL, true, &out), 0);
    json_error_t err;
    json_t *arr = json_loads(out, 0, &err);
    free(out);
    bool ok = json_array_size(arr) == n;
    for (size_t i = 0; ok && i < n; i++) {
        json_t *o = json_array_get(arr, i);
        ok = strcmp(json_string_value(json_object_get(o, "state")), "deferred") == 0 &&
             json_integer_value(json_object_get(o, "attempts")) >= k;
    }
    json_decref(arr);
    return ok;
}

/*
 * Flush, then wait until the n messages were tried k times and the delay
 * DSNs expected by then (files in md_a/new) were delivered: a DSN still in
 * the spool's pending batch is in no list yet, so the count alone could
 * settle a moment too early.
 */
static void flush_until_attempts(size_t n, unsigned k, int files)
{
    char *out = NULL;
    assert_int_equal(mx_queue_control(q, "flush", NULL, false, &out), 0);
    free(out);
    for (int i = 0; i < 3000 && !(count_files(md_a_new) == files && all_deferred(n, k)); i++)
        usleep(1000);
    assert_int_equal(count_files(md_a_new), files);
    assert_true(all_deferred(n, k));
}

static void test_delay_warning(void **state)
{
    (void)state;
    snprintf(md_a_new, sizeof md_a_new, "%s/new", md_a);
    cfg.queue_delay_warning = 1;
    start();
    struct inject in[5] = {
        {.rcpt = "dflt@bad.test", .body = "Subject: d1\r\n\r\nx\r\n"},
        {.rcpt = "never@bad.test", .body = "Subject: d2\r\n\r\nx\r\n",
         .notify = MX_NOTIFY_NEVER},
        {.rcpt = "failonly@bad.test", .body = "Subject: d3\r\n\r\nx\r\n",
         .notify = MX_NOTIFY_FAILURE},
        {.rcpt = "nullsender@bad.test", .body = "Subject: d4\r\n\r\nx\r\n", .from = ""},
        {.rcpt = "delay@bad.test", .body = "Subject: d5\r\n\r\nx\r\n",
         .notify = MX_NOTIFY_DELAY | MX_NOTIFY_FAILURE},
    };
    for (int i = 0; i < 5; i++)
        submit(&in[i]);
    for (int i = 0; i < 3000 && !all_deferred(5, 1); i++)
        usleep(1000);
    assert_true(all_deferred(5, 1));
    assert_int_equal(count_files(md_a_new), 0); /* younger than delay_warning */
    usleep(1100 * 1000);
    flush_until_attempts(5, 2, 2);
    DIR *d = opendir(md_a_new);
    struct dirent *de;
    int seen = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char p[800], f[8192];
        snprintf(p, sizeof p, "%s/%s", md_a_new, de->d_name);
        int fd = open(p, O_RDONLY);
        ssize_t l = read(fd, f, sizeof f - 1);
        close(fd);
        f[l > 0 ? l : 0] = 0;
        const char *head = "Return-Path: <>\r\nDelivered-To: sender@a.test\r\n";
        assert_memory_equal(f, head, strlen(head));
        assert_non_null(strstr(f, "Subject: Delayed Mail (still being retried)\r\n"));
        assert_non_null(strstr(f, "Action: delayed\r\n"));
        assert_non_null(strstr(f, "Status: 4.3.0\r\n"));
        assert_null(strstr(f, "Action: failed"));
        if (strstr(f, "Final-Recipient: rfc822; dflt@bad.test\r\n"))
            seen |= 1;
        if (strstr(f, "Final-Recipient: rfc822; delay@bad.test\r\n"))
            seen |= 2;
    }
    closedir(d);
    assert_int_equal(seen, 3);
    /* once per message: not again on the next attempt, nor after a restart */
    flush_until_attempts(5, 3, 2);
    usleep(100 * 1000);
    assert_int_equal(count_files(md_a_new), 2);
    stop();
    start();
    flush_until_attempts(5, 4, 2);
    usleep(100 * 1000);
    assert_int_equal(count_files(md_a_new), 2);
    for (int i = 0; i < 5; i++) {
        char *out = NULL;
        assert_int_equal(mx_queue_control(q, "delete", in[i].qid, false, &out), 0);
        free(out);
    }
    assert_int_equal(list_count(), 0);
    stop();
}

/* ---- queue-size gauges ----------------------------------------------------------- */

struct gauges {
    int64_t in, act, def, hold, quar;
};

static struct gauges gauges_now(void)
{
    return (struct gauges){gauge(MX_STAT_QUEUE_INCOMING), gauge(MX_STAT_QUEUE_ACTIVE),
                           gauge(MX_STAT_QUEUE_DEFERRED), gauge(MX_STAT_QUEUE_HOLD),
                           gauge(MX_STAT_QUEUE_QUARANTINE)};
}

static void assert_gauges(struct gauges base, int64_t in, int64_t act, int64_t def, int64_t hold,
                          int64_t quar)
{
    struct gauges g = gauges_now();
    assert_int_equal(g.in - base.in, in);
    assert_int_equal(g.act - base.act, act);
    assert_int_equal(g.def - base.def, def);
    assert_int_equal(g.hold - base.hold, hold);
    assert_int_equal(g.quar - base.quar, quar);
}

static void pause_driver(void)
{
    atomic_store(&driver_stop, true);
    pthread_join(driver, NULL);
}

static void resume_driver(void)
{
    atomic_store(&driver_stop, false);
    assert_int_equal(pthread_create(&driver, NULL, drive, NULL), 0);
}

/*
 * The gauges follow a known load: 5 messages committed while delivery is
 * frozen (incoming 4, quarantine 1), one of them then held; one turn of
 * the manager starts the two deliverable ones (active 2, their Maildir
 * writes in flight) and defers the one whose Maildir cannot be made
 * (deferred 1); the two are delivered; a restart counts the rest again
 * from recovery; deleting them brings every gauge back to where it was.
 */
static void test_queue_gauges(void **state)
{
    (void)state;
    struct gauges base = gauges_now();
    start();
    atomic_store(&q->frozen, true);
    struct inject in[5] = {
        {.rcpt = "g1@a.test", .body = "Subject: g1\r\n\r\nx\r\n"},
        {.rcpt = "g2@a.test", .body = "Subject: g2\r\n\r\nx\r\n"},
        {.rcpt = "g3@bad.test", .body = "Subject: g3\r\n\r\nx\r\n"},
        {.rcpt = "g4@bad.test", .body = "Subject: g4\r\n\r\nx\r\n", .quarantine = "spam"},
        {.rcpt = "g5@bad.test", .body = "Subject: g5\r\n\r\nx\r\n"},
    };
    for (int i = 0; i < 5; i++)
        submit(&in[i]);
    assert_gauges(base, 4, 0, 0, 0, 1);
    char *out = NULL;
    assert_int_equal(mx_queue_control(q, "hold", in[2].qid, false, &out), 0);
    free(out);
    assert_gauges(base, 3, 0, 0, 1, 1);
    /* one manager turn by hand, completions not yet collected */
    pause_driver();
    atomic_store(&q->frozen, false);
    qm_tick(NULL, qw);
    assert_gauges(base, 0, 2, 1, 1, 1);
    resume_driver();
    for (int i = 0; i < 3000 && gauges_now().act != base.act; i++)
        usleep(1000);
    assert_gauges(base, 0, 0, 1, 1, 1);
    stop();
    assert_gauges(base, 0, 0, 0, 0, 0);
    start();
    assert_gauges(base, 0, 0, 1, 1, 1); /* recovered */
    for (int i = 2; i < 5; i++) {
        assert_int_equal(mx_queue_control(q, "delete", in[i].qid, false, &out), 0);
        free(out);
    }
    assert_gauges(base, 0, 0, 0, 0, 0);
    stop();
}

/* ---- deferred store ------------------------------------------------------------ */

static int count_prefix(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        n += strncmp(de->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

/*
 * The child: three messages deferred, each in its own segment; after
 * queue.compact_after they move to the deferred store and their segments
 * go. It reports "committed" once the messages are durable and "compacted"
 * once their segment files are gone, then runs on until it is killed.
 */
static void compact_child(int fd)
{
    start();
    atomic_store(&driver_stop, true);
    pthread_join(driver, NULL);
    qw->sp.seg_max = 1; /* one segment per batch: every message pins its own */
    atomic_store(&driver_stop, false);
    if (pthread_create(&driver, NULL, drive, NULL) != 0)
        _exit(2);
    struct inject in[3] = {
        {.rcpt = "a@bad.test", .body = "Subject: c1\r\n\r\none\r\n"},
        {.rcpt = "b@bad.test", .body = "Subject: c2\r\n\r\ntwo\r\n"},
        {.rcpt = "c@bad.test", .body = "Subject: c3\r\n\r\nthree\r\n"},
    };
    char line[128];
    for (int i = 0; i < 3; i++) {
        submit(&in[i]);
        int l = snprintf(line, sizeof line, "%s\n", in[i].qid);
        if (write(fd, line, (size_t)l) != l)
            _exit(3);
    }
    if (write(fd, "committed\n", 10) != 10)
        _exit(3);
    char w0[400];
    snprintf(w0, sizeof w0, "%s/w0", spool);
    /* deferred at once, moved after ~1 s; only the current segment may stay */
    for (int i = 0; i < 5000; i++) {
        if (count_prefix(w0, "dstore-") >= 1 && count_prefix(w0, "seg-") <= 1)
            break;
        usleep(1000);
    }
    if (count_prefix(w0, "seg-") <= 1 && write(fd, "compacted\n", 10) != 10)
        _exit(3);
    for (;;)
        pause(); /* kill -9 ends it */
}

static void test_compaction_kill9(void **state)
{
    (void)state;
    cfg.queue_compact_after = 1;
    unsigned seed = (unsigned)time(NULL);
    printf("# seed %u\n", seed);
    for (int round = 0; round < 4; round++) {
        snprintf(spool, sizeof spool, "%s/spool%d", tmpdir, round);
        int p[2];
        assert_int_equal(pipe(p), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(p[0]);
            compact_child(p[1]);
            _exit(1);
        }
        close(p[1]);
        FILE *f = fdopen(p[0], "r");
        char qids[3][QM_QID_SIZE], line[128];
        int n = 0;
        bool committed = false, compacted = false;
        while (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = 0;
            if (strcmp(line, "committed") == 0) {
                committed = true;
                /* rounds 0-1 die at a random moment around the compaction */
                if (round < 2)
                    break;
            } else if (strcmp(line, "compacted") == 0) {
                compacted = true;
                break;
            } else if (n < 3) {
                snprintf(qids[n++], sizeof qids[0], "%.23s", line);
            }
        }
        assert_true(committed);
        assert_int_equal(n, 3);
        if (round >= 2)
            assert_true(compacted);
        usleep(round < 2 ? (useconds_t)(rand_r(&seed) % 2500000) : 20000);
        kill(pid, SIGKILL);
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
        fclose(f);

        /* restart: all three are queued, deferred, bytes intact */
        char w0[400];
        snprintf(w0, sizeof w0, "%s/w0", spool);
        start();
        if (compacted) {
            /* the three segments are gone; what is left is this run's fresh one */
            assert_int_equal(count_prefix(w0, "seg-"), 1);
            assert_true(count_prefix(w0, "dstore-") >= 1);
        }
        char *out = NULL;
        assert_int_equal(mx_queue_control(q, "list", NULL, true, &out), 0);
        json_error_t err;
        json_t *arr = json_loads(out, 0, &err);
        free(out);
        assert_int_equal(json_array_size(arr), 3);
        for (int i = 0; i < 3; i++) {
            json_t *o = json_array_get(arr, (size_t)i);
            assert_string_equal(json_string_value(json_object_get(o, "id")), qids[i]);
            assert_string_equal(json_string_value(json_object_get(o, "state")), "deferred");
            assert_int_equal(json_integer_value(json_object_get(o, "attempts")), 1);
        }
        json_decref(arr);
        /* the bytes: read back through the manager's own loader */
        atomic_store(&driver_stop, true);
        pthread_join(driver, NULL);
        const char *bodies[3] = {"Subject: c1\r\n\r\none\r\n", "Subject: c2\r\n\r\ntwo\r\n",
                                 "Subject: c3\r\n\r\nthree\r\n"};
        struct qm_msg *m;
        int seen = 0;
        struct qm_mq *lists[2] = {&qw->waiting, &qw->busy}; /* busy: being moved again */
        for (int k = 0; k < 2; k++)
            TAILQ_FOREACH(m, lists[k], link)
            {
                uint8_t *keep = m->buf;
                m->buf = NULL;
                assert_int_equal(qm_msg_load(m), 0);
                for (int i = 0; i < 3; i++)
                    if (strcmp(m->qid, qids[i]) == 0) {
                        assert_int_equal(m->body_len, strlen(bodies[i]));
                        assert_memory_equal(qm_msg_body(m), bodies[i], m->body_len);
                        seen |= 1 << i;
                    }
                free(m->buf);
                m->buf = keep;
            }
        assert_int_equal(seen, 7);
        atomic_store(&driver_stop, false);
        assert_int_equal(pthread_create(&driver, NULL, drive, NULL), 0);
        /* and once they are gone, nothing comes back: delete, restart, empty */
        for (int i = 0; i < 3; i++) {
            assert_int_equal(mx_queue_control(q, "delete", qids[i], false, &out), 0);
            free(out);
        }
        stop();
        start();
        assert_int_equal(list_count(), 0);
        stop();
    }
}

/* ---- redirect and BCC ------------------------------------------------------ */

static bool one_in_each(void)
{
    return count_files(md_a_new) == 1 && count_files(md_b_new) == 1;
}

static void test_redirect_and_bcc(void **state)
{
    (void)state;
    snprintf(md_a_new, sizeof md_a_new, "%s/new", md_a);
    snprintf(md_b_new, sizeof md_b_new, "%s/new", md_b);
    start();
    /* redirect away from bad.test to a.test; BCC copy to b.test */
    struct inject in = {.rcpt = "orig@bad.test",
                        .body = "Subject: redirect\r\n\r\nline one\r\nline two\r\n",
                        .redirect = {"boss@a.test"},
                        .bcc = "archive@b.test"};
    submit(&in);
    assert_true(wait_for(one_in_each));
    char f[4096], exp[1024];
    read_only_file(md_a, f, sizeof f);
    snprintf(exp, sizeof exp, "Return-Path: <sender@a.test>\r\nDelivered-To: boss@a.test\r\n%s",
             in.body);
    assert_string_equal(f, exp);
    read_only_file(md_b, f, sizeof f);
    snprintf(exp, sizeof exp,
             "Return-Path: <sender@a.test>\r\nDelivered-To: archive@b.test\r\n%s", in.body);
    assert_string_equal(f, exp);
    for (int i = 0; i < 1000 && list_count() != 0; i++)
        usleep(1000);
    assert_int_equal(list_count(), 0); /* nothing left for orig@bad.test */
    stop();
    start();
    assert_int_equal(list_count(), 0);
    stop();
}

/* Two redirect targets replace the one recipient; sizes past the buffer grow it. */
static void test_set_rcpts_msgbuf(void **state)
{
    (void)state;
    struct mx_rcpt r;
    memset(&r, 0, sizeof r);
    snprintf(r.addr, sizeof r.addr, "x@a.test");
    struct mx_envelope env;
    memset(&env, 0, sizeof env);
    env.rcpts = &r;
    env.n_rcpts = 1;
    struct mx_queue_msg *m = qm_msgbuf_new(&env, "00000000000000000001", 100000);
    assert_non_null(m);
    static char body[100000];
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (char)('a' + i % 26);
    assert_int_equal(qm_msgbuf_append(m, body, 40000), 0);
    struct mx_rcpt many[40];
    memset(many, 0, sizeof many);
    for (int i = 0; i < 40; i++)
        snprintf(many[i].addr, sizeof many[i].addr, "target%02d@b.test", i);
    assert_int_equal(mx_queue_msg_set_rcpts(m, many, 40), 0);
    assert_int_equal(mx_queue_msg_quarantine(m, "dlp: card numbers", 60), 0);
    assert_int_equal(mx_queue_msg_add_rcpt(m, &r), 0);
    assert_int_equal(m->env.n_rcpts, 41);
    /* the body limit is unchanged by the envelope's growth */
    assert_int_equal(qm_msgbuf_append(m, body + 40000, 60000), 0);
    assert_int_equal(qm_msgbuf_append(m, "z", 1), -EFBIG);
    m->error = 0;
    qm_msgbuf_seal(m);
    struct qm_record rec;
    long n = qm_record_decode(m->buf, m->len, &rec);
    assert_int_equal(n, (long)m->len);
    assert_int_equal(rec.env.n_rcpts, 41);
    assert_string_equal(rec.env.rcpts[0].addr, "target00@b.test");
    assert_string_equal(rec.env.rcpts[39].addr, "target39@b.test");
    assert_string_equal(rec.env.rcpts[40].addr, "x@a.test");
    assert_true(rec.env.quarantine);
    assert_string_equal(rec.env.quarantine_reason, "dlp: card numbers");
    assert_int_equal(rec.body_len, 100000);
    assert_memory_equal(rec.body, body, 100000);
    qm_env_free(&rec.env);
    assert_int_equal(mx_queue_msg_set_rcpts(NULL, many, 1), -EINVAL);
    assert_int_equal(mx_queue_msg_add_rcpt(m, NULL), -EINVAL);
    assert_int_equal(mx_queue_msg_quarantine(m, NULL, 0), -EINVAL);
    mx_queue_msg_abort(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quarantine_record),
        cmocka_unit_test(test_set_rcpts_msgbuf),
        cmocka_unit_test_setup_teardown(test_quarantine_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quarantine_release_survives, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quarantine_retention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redirect_and_bcc, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delay_warning, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compaction_kill9, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_gauges, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
