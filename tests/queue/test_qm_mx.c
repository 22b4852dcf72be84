/*
 * test_qm_mx.c - `mx` routes end to end: the queue on a real worker looks
 * up MX records through the DNS service against a real dnsmasq on loopback
 * (local records only, started and stopped by PID here) and delivers to
 * real aiosmtpd servers (tests/integration/sink.py) on 127.0.0.2 and
 * 127.0.0.3, all on the port of "mx:PORT":
 *   - the best preference wins; a refused exchanger fails over to the next;
 *   - no MX: the domain's own address (RFC 5321 5.1);
 *   - null MX "0 ." (RFC 7505): one DSN with 556 5.1.10;
 *   - a domain that does not exist: one DSN with 550 5.1.2;
 *   - a DNS failure (REFUSED from dnsmasq): deferred, with the reason;
 *   - equal preferences: both exchangers get mail (random order).
 *
 * argv[1]: tests/integration/sink.py (needs /usr/bin/python3 with aiosmtpd).
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "config/config.h"
#include "dataplane/dataplane.h"
#include "queue/queue.h"

extern char **environ;

static const char *sink_script;
static char tmpdir[256], maildir[300], sinkdir[2][300];
static unsigned smtp_port, dns_port;
static pid_t dnsmasq_pid = -1, sink_pid[2] = {-1, -1};
static int sink_stdin[2] = {-1, -1}, sink_stdout[2] = {-1, -1};
static struct mx_config *cfg;
static struct mx_queue *q;

/* ---- messages injected on the worker (as in test_qm_manager.c) ---------- */

struct inject {
    const char *rcpt;
    char body[256];
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
    struct mx_rcpt r;
    memset(&r, 0, sizeof r);
    snprintf(r.addr, sizeof r.addr, "%s", in->rcpt);
    struct mx_envelope env;
    memset(&env, 0, sizeof env);
    snprintf(env.mail_from, sizeof env.mail_from, "alice@local.test");
    env.rcpts = &r;
    env.n_rcpts = 1;
    struct mx_queue_msg *m = mx_queue_msg_begin(q, w, &env);
    if (!m) {
        in->res = -errno;
        atomic_store(&in->state, 2);
        return;
    }
    mx_queue_msg_write(m, in->body, strlen(in->body));
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

static void submit(struct inject *in, const char *rcpt, const char *tag)
{
    memset(in, 0, sizeof *in);
    in->rcpt = rcpt;
    snprintf(in->body, sizeof in->body, "Subject: %s\r\nMessage-ID: <%s@t>\r\n\r\nbody\r\n", tag,
             tag);
    atomic_store(&in->state, 1);
    atomic_store(&want, in);
    for (int i = 0; i < 1000 && atomic_load(&in->state) != 2; i++)
        usleep(5000);
    assert_int_equal(atomic_load(&in->state), 2);
    assert_int_equal(in->res, 0);
}

/* ---- helpers ----------------------------------------------------------------- */

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

/* Wait (bounded) until dir holds n files; the content of the one whose name is
 * newest in readdir order that contains needle goes to out. */
static bool wait_file_with(const char *dir, const char *needle, char *out, size_t size)
{
    for (int i = 0; i < 1000; i++) {
        DIR *d = opendir(dir);
        struct dirent *de;
        while (d && (de = readdir(d))) {
            if (de->d_name[0] == '.')
                continue;
            char p[800];
            snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
            int fd = open(p, O_RDONLY);
            if (fd < 0)
                continue;
            ssize_t l = read(fd, out, size - 1);
            close(fd);
            out[l > 0 ? l : 0] = 0;
            if (strstr(out, needle)) {
                closedir(d);
                return true;
            }
        }
        if (d)
            closedir(d);
        usleep(10000);
    }
    return false;
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

static bool wait_queue_empty(void)
{
    for (int i = 0; i < 500; i++) {
        json_t *a = queue_list();
        size_t n = json_array_size(a);
        json_decref(a);
        if (n == 0)
            return true;
        usleep(10000);
    }
    return false;
}

static unsigned free_port(int type)
{
    int s = socket(AF_INET, type, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(s, (struct sockaddr *)&a, sizeof a);
    socklen_t l = sizeof a;
    getsockname(s, (struct sockaddr *)&a, &l);
    close(s);
    return ntohs(a.sin_port);
}

static int sink_start(int i, const char *host)
{
    int p[2], in[2];
    /* close-on-exec: the other sink must not hold this one's stdin open */
    if (pipe2(p, O_CLOEXEC) != 0 || pipe2(in, O_CLOEXEC) != 0)
        return -1;
    sink_pid[i] = fork();
    if (sink_pid[i] < 0)
        return -1;
    if (sink_pid[i] == 0) {
        dup2(p[1], 1);
        dup2(in[0], 0);
        close(p[0]);
        close(in[1]);
        char port[16];
        snprintf(port, sizeof port, "%u", smtp_port);
        execl("/usr/bin/python3", "python3", sink_script, port, sinkdir[i], host, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    close(in[0]);
    sink_stdin[i] = in[1];
    /* kept open until the sink stops: whatever it prints must not kill it */
    sink_stdout[i] = p[0];
    char buf[256];
    size_t got = 0;
    while (got < sizeof buf - 1) {
        ssize_t n = read(p[0], buf + got, sizeof buf - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        got += (size_t)n;
        buf[got] = 0;
        if (strstr(buf, "sink ready"))
            return 0;
    }
    return -1;
}

static void sink_stop(int i)
{
    if (sink_pid[i] <= 0)
        return;
    close(sink_stdin[i]);
    kill(sink_pid[i], SIGTERM);
    waitpid(sink_pid[i], NULL, 0);
    close(sink_stdout[i]);
    sink_pid[i] = -1;
}

static int dnsmasq_start(void)
{
    dns_port = free_port(SOCK_DGRAM);
    char port_arg[32];
    snprintf(port_arg, sizeof port_arg, "--port=%u", dns_port);
    char *argv[] = {"dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                    port_arg, "--listen-address=127.0.0.1", "--bind-interfaces",
                    "--user=root", "--pid-file=", "--local=/test/",
                    /* best preference first, whatever the order written */
                    "--mx-host=multi.test,mx-b.multi.test,20",
                    "--mx-host=multi.test,mx-a.multi.test,10",
                    "--host-record=mx-a.multi.test,127.0.0.2",
                    "--host-record=mx-b.multi.test,127.0.0.3",
                    /* the best one refuses */
                    "--mx-host=fo.test,dead.fo.test,10", "--mx-host=fo.test,mx-b.multi.test,20",
                    "--host-record=dead.fo.test,127.0.0.4",
                    /* no MX at all */
                    "--host-record=implicit.test,127.0.0.3",
                    /* RFC 7505 */
                    "--mx-host=nullmx.test,.,0",
                    /* equal preference */
                    "--mx-host=eq.test,mx-a.multi.test,10", "--mx-host=eq.test,mx-b.multi.test,10",
                    "--log-facility=/dev/null", NULL};
    if (access("/usr/sbin/dnsmasq", X_OK) != 0)
        return -1;
    if (posix_spawn(&dnsmasq_pid, "/usr/sbin/dnsmasq", NULL, NULL, argv, environ) != 0)
        return -1;
    usleep(300000);
    return 0;
}

/* ---- tests -------------------------------------------------------------------- */

static char buf[16384];

static void test_best_preference(void **state)
{
    (void)state;
    struct inject in;
    submit(&in, "bob@multi.test", "pref-1");
    assert_true(wait_file_with(sinkdir[0], "Message-ID: <pref-1@t>", buf, sizeof buf));
    assert_non_null(strstr(buf, "X-Envelope-To: bob@multi.test\r\n"));
    assert_true(wait_queue_empty());
    assert_int_equal(count_files(sinkdir[1]), 0);
}

static void test_failover_to_next_mx(void **state)
{
    (void)state;
    struct inject in;
    submit(&in, "carol@fo.test", "fo-1");
    assert_true(wait_file_with(sinkdir[1], "Message-ID: <fo-1@t>", buf, sizeof buf));
    assert_non_null(strstr(buf, "X-Envelope-To: carol@fo.test\r\n"));
    assert_true(wait_queue_empty());
}

static void test_implicit_mx(void **state)
{
    (void)state;
    struct inject in;
    submit(&in, "dave@implicit.test", "impl-1");
    assert_true(wait_file_with(sinkdir[1], "Message-ID: <impl-1@t>", buf, sizeof buf));
    assert_non_null(strstr(buf, "X-Envelope-To: dave@implicit.test\r\n"));
    assert_true(wait_queue_empty());
}

static void test_null_mx_bounces(void **state)
{
    (void)state;
    struct inject in;
    submit(&in, "erin@nullmx.test", "null-1");
    char nd[320];
    snprintf(nd, sizeof nd, "%s/new", maildir);
    assert_true(wait_file_with(nd, "Final-Recipient: rfc822; erin@nullmx.test", buf, sizeof buf));
    assert_non_null(strstr(buf, "Return-Path: <>\r\nDelivered-To: alice@local.test\r\n"));
    assert_non_null(strstr(buf, "Status: 5.1.10"));
    assert_non_null(strstr(buf, "556"));
    assert_true(wait_queue_empty());
}

static void test_no_such_domain_bounces(void **state)
{
    (void)state;
    struct inject in;
    submit(&in, "frank@nosuch.test", "nx-1");
    char nd[320];
    snprintf(nd, sizeof nd, "%s/new", maildir);
    assert_true(wait_file_with(nd, "Final-Recipient: rfc822; frank@nosuch.test", buf, sizeof buf));
    assert_non_null(strstr(buf, "Status: 5.1.2"));
    assert_non_null(strstr(buf, "Host or domain name not found"));
    assert_true(wait_queue_empty());
}

static void test_dns_failure_defers(void **state)
{
    (void)state;
    struct inject in;
    /* outside dnsmasq's local zone and no upstream: REFUSED */
    submit(&in, "gina@elsewhere.invalid", "fail-1");
    const char *err = NULL;
    json_t *a = NULL;
    for (int i = 0; i < 500; i++) {
        a = queue_list();
        json_t *o = json_array_get(a, 0);
        if (o && strcmp(json_string_value(json_object_get(o, "state")), "deferred") == 0) {
            err = json_string_value(json_object_get(o, "last_error"));
            break;
        }
        json_decref(a);
        a = NULL;
        usleep(10000);
    }
    assert_non_null(err);
    assert_non_null(strstr(err, "451 4.4.3 DNS lookup of elsewhere.invalid/MX failed: "));
    json_decref(a);
    char *out = NULL;
    assert_int_equal(mx_queue_control(q, "delete", in.qid, false, &out), 0);
    free(out);
    assert_true(wait_queue_empty());
}

static void test_equal_preference_spreads(void **state)
{
    (void)state;
    int before[2] = {count_files(sinkdir[0]), count_files(sinkdir[1])};
    for (int i = 0; i < 16; i++) {
        struct inject in;
        char tag[32];
        snprintf(tag, sizeof tag, "eq-%d", i);
        submit(&in, "henry@eq.test", tag);
        assert_true(wait_queue_empty());
    }
    int got[2] = {count_files(sinkdir[0]) - before[0], count_files(sinkdir[1]) - before[1]};
    assert_int_equal(got[0] + got[1], 16);
    /* all 16 on one side by chance: 2 in 65536 */
    assert_true(got[0] > 0);
    assert_true(got[1] > 0);
}

/* ---- set-up ------------------------------------------------------------------------ */

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_qm_mx_XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(maildir, sizeof maildir, "%s/maildir", tmpdir);
    for (int i = 0; i < 2; i++)
        snprintf(sinkdir[i], sizeof sinkdir[i], "%s/sink%d", tmpdir, i);
    smtp_port = free_port(SOCK_STREAM);
    if (dnsmasq_start() != 0) {
        fprintf(stderr, "dnsmasq is not installed\n");
        return -1;
    }
    if (sink_start(0, "127.0.0.2") != 0 || sink_start(1, "127.0.0.3") != 0)
        return -1;
    char conf[2048];
    int n = snprintf(conf, sizeof conf,
                     "spool { dir = \"%s/spool\"; }\n"
                     "smtp { hostname = \"mx.test.invalid\"; }\n"
                     "dataplane { backend = \"kernel\"; workers = 1; }\n"
                     "dns { servers = [ \"127.0.0.1:%u\" ]; }\n"
                     "routes {\n  \"local.test\" = \"maildir:%s\";\n"
                     "  \"*\" = \"mx:%u\";\n}\n",
                     tmpdir, dns_port, maildir, smtp_port);
    struct mx_config_errors errs;
    memset(&errs, 0, sizeof errs);
    if (mx_config_load_mem("test", conf, (size_t)n, NULL, 0, 0, &cfg, &errs) != 0) {
        fprintf(stderr, "config: %s\n", errs.n ? errs.v[0].msg : "?");
        return -1;
    }
    const struct mx_route *rt = mx_config_route(cfg, "any.test");
    if (!rt || rt->scheme != MX_ROUTE_MX || rt->n_hosts != 1)
        return -1;
    if (mx_queue_open(cfg, &q) != 0)
        return -1;
    struct mx_dataplane_params p = {
        .backend = "kernel",
        .workers = 1,
        .on_worker_init = worker_init,
    };
    if (mx_dataplane_init(&p) != 0)
        return -1;
    char servers[64];
    snprintf(servers, sizeof servers, "127.0.0.1:%u", dns_port);
    if (mx_dns_start(servers, 500, 2) != 0)
        return -1;
    return mx_dataplane_start();
}

static int teardown(void **state)
{
    (void)state;
    mx_dataplane_stop(500);
    mx_dns_stop();
    mx_dataplane_cleanup();
    mx_queue_close(q);
    mx_config_free(cfg);
    sink_stop(0);
    sink_stop(1);
    if (dnsmasq_pid > 0) {
        kill(dnsmasq_pid, SIGTERM);
        waitpid(dnsmasq_pid, NULL, 0);
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* The route text of "mx:PORT" survives an export/parse round trip; bad ports are errors. */
static void test_route_syntax(void **state)
{
    (void)state;
    const struct mx_route *rt = mx_config_route(cfg, "x.test");
    assert_int_equal(rt->scheme, MX_ROUTE_MX);
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&rt->hosts[0].ss;
    assert_int_equal(ntohs(sin->sin_port), smtp_port);
    /* `mxctl config export` writes it back as written, and that loads again */
    char *text = mx_config_export(cfg);
    assert_non_null(text);
    char want[64];
    snprintf(want, sizeof want, "\"mx:%u\"", smtp_port);
    assert_non_null(strstr(text, want));
    struct mx_config *again = NULL;
    struct mx_config_errors e2;
    memset(&e2, 0, sizeof e2);
    assert_int_equal(mx_config_load_mem("export", text, strlen(text), NULL, 0, 0, &again, &e2), 0);
    const struct mx_route *r2 = mx_config_route(again, "x.test");
    assert_int_equal(r2->scheme, MX_ROUTE_MX);
    assert_int_equal(r2->n_hosts, 1);
    assert_string_equal(r2->hosts[0].text, rt->hosts[0].text);
    mx_config_free(again);
    free(text);
    const char *bad[] = {"mx:0", "mx:65536", "mx:25x", "mx:-1"};
    for (size_t i = 0; i < 4; i++) {
        char conf[256];
        int n = snprintf(conf, sizeof conf, "routes { \"*\" = \"%s\"; }\n", bad[i]);
        struct mx_config *c = NULL;
        struct mx_config_errors errs;
        memset(&errs, 0, sizeof errs);
        assert_int_not_equal(mx_config_load_mem("t", conf, (size_t)n, NULL, 0, 0, &c, &errs), 0);
        assert_true(errs.n > 0);
        assert_non_null(strstr(errs.v[0].msg, "bad port in"));
        mx_config_errors_free(&errs);
    }
}

int main(int argc, char **argv)
{
    sink_script = argc > 1 ? argv[1] : "tests/integration/sink.py";
    signal(SIGPIPE, SIG_IGN);
    if (access("/usr/bin/python3", X_OK) != 0 ||
        system("/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null") != 0 ||
        access("/usr/sbin/dnsmasq", X_OK) != 0) {
        printf("# aiosmtpd or dnsmasq missing: skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route_syntax),
        cmocka_unit_test(test_best_preference),
        cmocka_unit_test(test_failover_to_next_mx),
        cmocka_unit_test(test_implicit_mx),
        cmocka_unit_test(test_null_mx_bounces),
        cmocka_unit_test(test_no_such_domain_bounces),
        cmocka_unit_test(test_dns_failure_defers),
        cmocka_unit_test(test_equal_preference_spreads),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
