/*
 * test_qm_manager.c - the queue through its public API on a real worker
 * (kernel backend, one worker): messages committed on the worker are
 * delivered to a Maildir byte-exactly; to an aiosmtpd downstream with one
 * recipient rejected -> the other delivered and one DSN to the sender; a
 * null sender gets no DSN; downstream down -> deferred with attempts and
 * next_attempt in `list --json`; downstream up + flush -> delivered; hold,
 * release, delete; and the spool is empty again afterwards.
 *
 * argv[1]: tests/integration/sink.py (needs /usr/bin/python3 with aiosmtpd).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <jansson.h>

#include "config/config.h"
#include "dataplane/dataplane.h"
#include "queue/queue.h"

static const char *sink_script;
static char tmpdir[256], maildir[300], sinkdir[300];
static unsigned sink_port;
static pid_t sink_pid;
static int sink_stdin = -1, sink_stdout = -1;
static struct mx_config *cfg;
static struct mx_queue *q;
static bool spool_on_tmpfs;

/* ---- messages injected on the worker ------------------------------------ */

struct inject {
    const char *from;
    const char *rcpts[3];
    const char *body;
    _Atomic int state; /* 0 idle, 1 wanted, 2 done */
    int res;
    char qid[32];
};
static struct inject *_Atomic want;

static void commit_done(void *arg, int res, const char *qid)
{
    struct inject *in = arg;
    in->res = res;
    if (qid)
        snprintf(in->qid, sizeof in->qid, "%s", qid);
    atomic_store(&in->state, 2);
}

static void tick(struct mx_worker *w, void *arg)
{
    (void)arg;
    struct inject *in = atomic_exchange(&want, NULL);
    if (!in)
        return;
    struct mx_rcpt r[3];
    memset(r, 0, sizeof r);
    struct mx_envelope env;
    memset(&env, 0, sizeof env);
    snprintf(env.mail_from, sizeof env.mail_from, "%s", in->from);
    size_t n = 0;
    for (; n < 3 && in->rcpts[n]; n++)
        snprintf(r[n].addr, sizeof r[n].addr, "%s", in->rcpts[n]);
    env.rcpts = r;
    env.n_rcpts = n;
    env.arrival_ms = 0;
    snprintf(env.helo, sizeof env.helo, "client.test");
    struct mx_queue_msg *m = mx_queue_msg_begin(q, w, &env);
    if (!m) {
        in->res = -errno;
        atomic_store(&in->state, 2);
        return;
    }
    /* in two pieces, as DATA arrives */
    size_t half = strlen(in->body) / 2;
    mx_queue_msg_write(m, in->body, half);
    mx_queue_msg_write(m, in->body + half, strlen(in->body) - half);
    int rc = mx_queue_msg_commit(m, commit_done, in);
    if (rc < 0) {
        in->res = rc;
        atomic_store(&in->state, 2);
    }
}

static int worker_init(struct mx_worker *w, void *arg)
{
    (void)arg;
    int rc = mx_queue_worker_init(q, w);
    if (rc < 0)
        return rc;
    return mx_worker_add_tick(w, tick, NULL);
}

static void submit(struct inject *in)
{
    atomic_store(&in->state, 1);
    atomic_store(&want, in);
    for (int i = 0; i < 1000 && atomic_load(&in->state) != 2; i++)
        usleep(5000);
    assert_int_equal(atomic_load(&in->state), 2);
    assert_int_equal(in->res, 0);
    assert_int_equal(strlen(in->qid), 20);
}

/* ---- helpers ---------------------------------------------------------------- */

static int read_dir(const char *dir, char files[][8192], int max)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < max) {
        if (de->d_name[0] == '.')
            continue;
        char p[700];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        int fd = open(p, O_RDONLY);
        if (fd < 0)
            continue;
        ssize_t l = read(fd, files[n], 8191);
        close(fd);
        files[n][l > 0 ? l : 0] = 0;
        n++;
    }
    closedir(d);
    return n;
}

static char files[16][8192];

static int wait_files(const char *dir, int count)
{
    int n = 0;
    for (int i = 0; i < 1000; i++) {
        n = read_dir(dir, files, 16);
        if (n >= count)
            return n;
        usleep(10000);
    }
    return n;
}

static json_t *queue_list(void)
{
    char *out = NULL;
    assert_int_equal(mx_queue_control(q, "list", NULL, true, &out), 0);
    json_error_t err;
    json_t *a = json_loads(out, 0, &err);
    free(out);
    assert_non_null(a);
    return a;
}

static size_t queue_len(void)
{
    json_t *a = queue_list();
    size_t n = json_array_size(a);
    json_decref(a);
    return n;
}

static unsigned free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(s, (struct sockaddr *)&a, sizeof a);
    socklen_t l = sizeof a;
    getsockname(s, (struct sockaddr *)&a, &l);
    close(s);
    return ntohs(a.sin_port);
}

static void sink_start(void)
{
    int p[2], in[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(pipe(in), 0); /* the sink runs until its stdin closes */
    sink_pid = fork();
    assert_true(sink_pid >= 0);
    if (sink_pid == 0) {
        dup2(p[1], 1);
        dup2(in[0], 0);
        close(p[0]);
        close(in[1]);
        char port[16];
        snprintf(port, sizeof port, "%u", sink_port);
        execl("/usr/bin/python3", "python3", sink_script, port, sinkdir, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    close(in[0]);
    sink_stdin = in[1];
    char buf[64];
    ssize_t n = read(p[0], buf, sizeof buf); /* "sink ready" */
    sink_stdout = p[0]; /* kept open: the sink may print more */
    assert_true(n > 0);
}

static void sink_stop(void)
{
    if (sink_pid > 0) {
        close(sink_stdin);
        close(sink_stdout);
        kill(sink_pid, SIGTERM);
        waitpid(sink_pid, NULL, 0);
        sink_pid = 0;
    }
}

/* ---- the scenario ----------------------------------------------------------- */

static void test_maildir_delivery(void **state)
{
    (void)state;
    struct inject in = {.from = "alice@remote.test",
                        .rcpts = {"bob@local.test", "carol@local.test"},
                        .body = "Subject: md\r\nMessage-ID: <md-1@t>\r\n\r\nline\r\n.dot\r\n"};
    submit(&in);
    char nd[320];
    snprintf(nd, sizeof nd, "%s/new", maildir);
    assert_int_equal(wait_files(nd, 2), 2);
    for (int i = 0; i < 2; i++) {
        const char *who = strstr(files[i], "Delivered-To: bob@") ? "bob" : "carol";
        char want[512];
        snprintf(want, sizeof want,
                 "Return-Path: <alice@remote.test>\r\nDelivered-To: %s@local.test\r\n%s", who,
                 in.body);
        assert_string_equal(files[i], want);
    }
    for (int i = 0; i < 200 && queue_len() != 0; i++)
        usleep(10000);
    assert_int_equal(queue_len(), 0);
}

static void clear_maildir(void)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -f %s/new/*", maildir);
    assert_int_equal(system(cmd), 0);
}

static void test_smtp_reject_dsn(void **state)
{
    (void)state;
    clear_maildir();
    sink_start();
    struct inject in = {.from = "alice@local.test",
                        .rcpts = {"reject-me@example.test", "dave@example.test"},
                        .body = "Subject: b\r\nMessage-ID: <bounce-1@t>\r\n\r\nbody\r\n"};
    submit(&in);
    /* dave got it downstream */
    assert_int_equal(wait_files(sinkdir, 1), 1);
    assert_non_null(strstr(files[0], "X-Envelope-To: dave@example.test\r\n"));
    assert_non_null(strstr(files[0], "Message-ID: <bounce-1@t>"));
    /* the sender got one DSN naming the rejected recipient only */
    char nd[320];
    snprintf(nd, sizeof nd, "%s/new", maildir);
    assert_int_equal(wait_files(nd, 1), 1);
    assert_non_null(strstr(files[0], "Return-Path: <>\r\nDelivered-To: alice@local.test\r\n"));
    assert_non_null(strstr(files[0], "multipart/report"));
    assert_non_null(strstr(files[0], "Final-Recipient: rfc822; reject-me@example.test"));
    assert_null(strstr(files[0], "Final-Recipient: rfc822; dave@example.test"));
    assert_non_null(strstr(files[0], "5.1.1"));

    /* a null sender: the reject produces no DSN */
    clear_maildir();
    struct inject nul = {.from = "",
                         .rcpts = {"reject-again@example.test"},
                         .body = "Subject: n\r\n\r\nx\r\n"};
    submit(&nul);
    for (int i = 0; i < 200 && queue_len() != 0; i++)
        usleep(10000);
    assert_int_equal(queue_len(), 0);
    usleep(300000);
    assert_int_equal(read_dir(nd, files, 16), 0);
    sink_stop();
}

static void test_deferred_then_flush(void **state)
{
    (void)state;
    sink_stop(); /* in case the test before failed half-way */
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", sinkdir);
    assert_int_equal(system(cmd), 0);
    /* the downstream is down */
    struct inject in = {.from = "alice@local.test",
                        .rcpts = {"erin@example.test"},
                        .body = "Subject: d\r\nMessage-ID: <deferred-1@t>\r\n\r\nx\r\n"};
    uint64_t t0 = (uint64_t)time(NULL);
    submit(&in);
    json_t *e = NULL;
    for (int i = 0; i < 500 && !e; i++) {
        json_t *a = queue_list();
        json_t *o = json_array_get(a, 0);
        if (o && json_integer_value(json_object_get(o, "attempts")) >= 1)
            e = json_incref(o);
        json_decref(a);
        if (!e)
            usleep(10000);
    }
    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(e, "id")), in.qid);
    assert_string_equal(json_string_value(json_object_get(e, "state")), "deferred");
    assert_int_equal(json_integer_value(json_object_get(e, "attempts")), 1);
    json_int_t next = json_integer_value(json_object_get(e, "next_attempt"));
    /* first retry after queue.retry_first = 300 s */
    assert_true(next >= (json_int_t)t0 + 299 && next <= (json_int_t)time(NULL) + 301);
    assert_true(strlen(json_string_value(json_object_get(e, "last_error"))) > 0);
    json_decref(e);

    /* hold: flush leaves it alone; release makes it due */
    char *out = NULL;
    assert_int_equal(mx_queue_control(q, "hold", in.qid, false, &out), 0);
    free(out);
    json_t *a = queue_list();
    assert_string_equal(json_string_value(json_object_get(json_array_get(a, 0), "state")), "hold");
    json_decref(a);

    sink_start();
    assert_int_equal(mx_queue_control(q, "flush", NULL, false, &out), 0);
    free(out);
    usleep(300000);
    assert_int_equal(read_dir(sinkdir, files, 16), 0); /* held: not delivered */
    assert_int_equal(mx_queue_control(q, "release", in.qid, false, &out), 0);
    free(out);
    assert_int_equal(wait_files(sinkdir, 1), 1);
    assert_non_null(strstr(files[0], "<deferred-1@t>"));
    for (int i = 0; i < 200 && queue_len() != 0; i++)
        usleep(10000);
    assert_int_equal(queue_len(), 0);
    sink_stop();

    /* delete: gone from the queue for good */
    struct inject d = {.from = "alice@local.test",
                       .rcpts = {"frank@example.test"},
                       .body = "Subject: del\r\n\r\nx\r\n"};
    submit(&d);
    for (int i = 0; i < 500 && queue_len() == 1; i++) {
        json_t *l = queue_list();
        json_int_t att = json_integer_value(json_object_get(json_array_get(l, 0), "attempts"));
        json_decref(l);
        if (att >= 1)
            break;
        usleep(10000);
    }
    assert_int_equal(mx_queue_control(q, "delete", d.qid, false, &out), 0);
    free(out);
    assert_int_equal(queue_len(), 0);
    assert_int_equal(mx_queue_control(q, "delete", d.qid, false, &out), -ENOENT);
    free(out);
}

/* Spool filesystem nearly full -> begin fails with ENOSPC (452); space back -> accepted. */
static void test_spool_full(void **state)
{
    (void)state;
    if (!spool_on_tmpfs)
        skip();
    char filler[400], spool[300];
    snprintf(spool, sizeof spool, "%s/spool", tmpdir);
    snprintf(filler, sizeof filler, "%s/filler", spool);
    struct statvfs sv;
    assert_int_equal(statvfs(spool, &sv), 0);
    uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
    uint64_t total = (uint64_t)sv.f_blocks * sv.f_frsize;
    /* leave less than the reserve (a tenth of a small filesystem) free */
    uint64_t fill = avail - total / 20;
    int fd = open(filler, O_WRONLY | O_CREAT, 0640);
    static char blob[65536];
    memset(blob, 'f', sizeof blob);
    for (uint64_t done = 0; done < fill;) {
        size_t n = fill - done < sizeof blob ? (size_t)(fill - done) : sizeof blob;
        ssize_t w = write(fd, blob, n);
        assert_true(w > 0);
        done += (uint64_t)w;
    }
    close(fd);
    usleep(1200000); /* free space is looked at once a second */
    struct inject in = {.from = "alice@remote.test", .rcpts = {"full@local.test"},
                        .body = "Subject: full\r\n\r\nx\r\n"};
    atomic_store(&in.state, 1);
    atomic_store(&want, &in);
    for (int i = 0; i < 1000 && atomic_load(&in.state) != 2; i++)
        usleep(5000);
    assert_int_equal(atomic_load(&in.state), 2);
    assert_int_equal(in.res, -ENOSPC);
    assert_int_equal(unlink(filler), 0);
    usleep(1200000);
    struct inject ok = {.from = "alice@remote.test", .rcpts = {"full@local.test"},
                        .body = "Subject: space again\r\n\r\nx\r\n"};
    clear_maildir();
    submit(&ok);
    char nd[320];
    snprintf(nd, sizeof nd, "%s/new", maildir);
    assert_int_equal(wait_files(nd, 1), 1);
    assert_non_null(strstr(files[0], "Subject: space again"));
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_qm_mgr_XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(maildir, sizeof maildir, "%s/maildir", tmpdir);
    snprintf(sinkdir, sizeof sinkdir, "%s/sink", tmpdir);
    sink_port = free_port();
    char conf[2048];
    int n = snprintf(conf, sizeof conf,
                     "spool { dir = \"%s/spool\"; }\n"
                     "smtp { hostname = \"mx.test.invalid\"; }\n"
                     "dataplane { backend = \"kernel\"; workers = 1; }\n"
                     "routes {\n  \"example.test\" = \"smtp:127.0.0.1:%u\";\n"
                     "  \"*\" = \"maildir:%s\";\n}\n",
                     tmpdir, sink_port, maildir);
    struct mx_config_errors errs;
    memset(&errs, 0, sizeof errs);
    if (mx_config_load_mem("test", conf, (size_t)n, NULL, 0, 0, &cfg, &errs) != 0) {
        fprintf(stderr, "config: %s\n", errs.n ? errs.v[0].msg : "?");
        return -1;
    }
    /* the spool on a private 4 MiB tmpfs, for the disk-full test (where allowed) */
    char spool[300];
    snprintf(spool, sizeof spool, "%s/spool", tmpdir);
    mkdir(spool, 0750);
    spool_on_tmpfs = unshare(CLONE_NEWNS) == 0 &&
                     mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0 &&
                     mount("tmpfs", spool, "tmpfs", 0, "size=4m") == 0;
    if (mx_queue_open(cfg, &q) != 0)
        return -1;
    struct mx_dataplane_params p = {
        .backend = "kernel",
        .workers = 1,
        .on_worker_init = worker_init,
    };
    if (mx_dataplane_init(&p) != 0)
        return -1;
    return mx_dataplane_start();
}

static int teardown(void **state)
{
    (void)state;
    sink_stop();
    mx_dataplane_stop(500);
    mx_dataplane_cleanup();
    mx_queue_close(q);
    /* everything finished: no message is left in the spool after a restart */
    struct mx_queue *q2;
    int rc = mx_queue_open(cfg, &q2);
    if (rc == 0) {
        char *out = NULL;
        mx_queue_control(q2, "list", NULL, true, &out);
        if (!out || strcmp(out, "[]") != 0) {
            fprintf(stderr, "left in the queue after restart: %s\n", out ? out : "?");
            rc = -1;
        }
        free(out);
        mx_queue_close(q2);
    }
    mx_config_free(cfg);
    if (spool_on_tmpfs) {
        char spool[300];
        snprintf(spool, sizeof spool, "%s/spool", tmpdir);
        umount2(spool, MNT_DETACH);
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        rc = -1;
    return rc;
}

int main(int argc, char **argv)
{
    sink_script = argc > 1 ? argv[1] : "tests/integration/sink.py";
    signal(SIGPIPE, SIG_IGN);
    if (access("/usr/bin/python3", X_OK) != 0 ||
        system("/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null") != 0) {
        printf("# aiosmtpd missing: skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_maildir_delivery),
        cmocka_unit_test(test_smtp_reject_dsn),
        cmocka_unit_test(test_deferred_then_flush),
        cmocka_unit_test(test_spool_full),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
