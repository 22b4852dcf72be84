/*
 * test_dns.c - the DNS service against a real DNS server on loopback
 * (dnsmasq, started by this test with local records only, stopped by PID):
 * A, AAAA, MX (sorted by preference), TXT, NXDOMAIN, timeout, and a flood
 * of concurrent queries answered on the asking thread.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "dataplane/dataplane_internal.h"

extern char **environ;
static pid_t dnsmasq_pid = -1;
static unsigned dns_port;

struct answer {
    bool done;
    struct mx_dns_result r;
};

static void on_answer(void *arg, const struct mx_dns_result *r)
{
    struct answer *a = arg;
    a->r = *r;
    a->done = true;
}

/* Poll the non-worker answer ring until every answer is in (bounded). */
static bool wait_answers(struct answer *a, size_t n, int ms)
{
    for (int t = 0; t < ms; t++) {
        mx_dns_worker_poll(NULL);
        size_t done = 0;
        for (size_t i = 0; i < n; i++)
            done += a[i].done;
        if (done == n)
            return true;
        usleep(1000);
    }
    return false;
}

static struct answer *ask(const char *name, enum mx_dns_type t)
{
    static struct answer a;
    memset(&a, 0, sizeof a);
    assert_int_equal(mx_dns_query(NULL, name, t, on_answer, &a), 0);
    assert_true(wait_answers(&a, 1, 5000));
    return &a;
}

static void test_a(void **state)
{
    (void)state;
    struct answer *a = ask("a.test", MX_DNS_A);
    assert_int_equal(a->r.status, 0);
    assert_int_equal(a->r.n, 1);
    const uint8_t want[4] = {192, 0, 2, 10};
    assert_memory_equal(a->r.a[0], want, 4);
}

static void test_aaaa(void **state)
{
    (void)state;
    struct answer *a = ask("v6.test", MX_DNS_AAAA);
    assert_int_equal(a->r.status, 0);
    assert_int_equal(a->r.n, 1);
    uint8_t want[16];
    inet_pton(AF_INET6, "2001:db8::1", want);
    assert_memory_equal(a->r.aaaa[0], want, 16);
}

static void test_mx_sorted(void **state)
{
    (void)state;
    struct answer *a = ask("mx.test", MX_DNS_MX);
    assert_int_equal(a->r.status, 0);
    assert_int_equal(a->r.n, 2);
    assert_int_equal(a->r.mx[0].preference, 5);
    assert_string_equal(a->r.mx[0].host, "mail2.mx.test");
    assert_int_equal(a->r.mx[1].preference, 10);
    assert_string_equal(a->r.mx[1].host, "mail1.mx.test");
}

static void test_txt(void **state)
{
    (void)state;
    struct answer *a = ask("txt.test", MX_DNS_TXT);
    assert_int_equal(a->r.status, 0);
    assert_int_equal(a->r.n, 1);
    assert_string_equal(a->r.txt[0], "v=spf1 -all");
}

static void test_dnsbl_style(void **state)
{
    (void)state;
    /* 127.0.0.2 reversed under a DNSBL zone: listed */
    struct answer *a = ask("2.0.0.127.zen.test", MX_DNS_A);
    assert_int_equal(a->r.status, 0);
    const uint8_t want[4] = {127, 0, 0, 2};
    assert_memory_equal(a->r.a[0], want, 4);
    a = ask("3.0.0.127.zen.test", MX_DNS_A); /* not listed */
    assert_int_equal(a->r.status, -ENOENT);
}

static void test_nxdomain(void **state)
{
    (void)state;
    struct answer *a = ask("nope.test", MX_DNS_A);
    assert_int_equal(a->r.status, -ENOENT);
    a = ask("a.test", MX_DNS_MX); /* name exists, no MX data */
    assert_int_equal(a->r.status, -ENOENT);
}

static void test_bad_names(void **state)
{
    (void)state;
    struct answer a;
    assert_int_equal(mx_dns_query(NULL, "", MX_DNS_A, on_answer, &a), -EINVAL);
    assert_int_equal(mx_dns_query(NULL, "a b.test", MX_DNS_A, on_answer, &a), -EINVAL);
    char longname[400];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    assert_int_equal(mx_dns_query(NULL, longname, MX_DNS_A, on_answer, &a), -EINVAL);
}

static void test_many_concurrent(void **state)
{
    (void)state;
    enum { N = 500 };
    static struct answer a[N];
    memset(a, 0, sizeof a);
    for (int i = 0; i < N; i++)
        assert_int_equal(mx_dns_query(NULL, i % 2 ? "a.test" : "mx.test",
                                      i % 2 ? MX_DNS_A : MX_DNS_MX, on_answer, &a[i]),
                         0);
    assert_true(wait_answers(a, N, 10000));
    for (int i = 0; i < N; i++) {
        assert_int_equal(a[i].r.status, 0);
        assert_int_equal(a[i].r.n, i % 2 ? 1u : 2u);
    }
}

static void test_parse_garbage(void **state)
{
    (void)state;
    struct mx_dns_result r;
    const uint8_t junk[] = {0x12, 0x34, 0x81, 0x80, 0, 1, 0, 5, 0, 0, 0, 0, 3, 'a', 'b'};
    assert_int_equal(mx_dns_parse(junk, sizeof junk, MX_DNS_A, &r), -EIO);
    assert_int_equal(mx_dns_parse(junk, 0, MX_DNS_MX, &r), -EIO);
}

static int setup(void **state)
{
    (void)state;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof sin;
    bind(s, (struct sockaddr *)&sin, sizeof sin);
    getsockname(s, (struct sockaddr *)&sin, &l);
    close(s);
    dns_port = ntohs(sin.sin_port);
    char port_arg[32];
    snprintf(port_arg, sizeof port_arg, "--port=%u", dns_port);
    char *argv[] = {"dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                    port_arg, "--listen-address=127.0.0.1", "--bind-interfaces",
                    "--user=root", "--pid-file=", "--local=/test/",
                    "--address=/a.test/192.0.2.10",
                    "--address=/2.0.0.127.zen.test/127.0.0.2",
                    "--mx-host=mx.test,mail1.mx.test,10", "--mx-host=mx.test,mail2.mx.test,5",
                    "--txt-record=txt.test,v=spf1 -all", "--host-record=v6.test,2001:db8::1",
                    "--log-facility=/dev/null", NULL};
    const char *bin = access("/usr/sbin/dnsmasq", X_OK) == 0 ? "/usr/sbin/dnsmasq" : NULL;
    if (!bin) {
        fprintf(stderr, "dnsmasq is not installed\n");
        return -1;
    }
    if (posix_spawn(&dnsmasq_pid, bin, NULL, NULL, argv, environ) != 0)
        return -1;
    usleep(300000);

    struct mx_dataplane_params p = {.backend = "kernel", .workers = 1};
    if (mx_dataplane_init(&p) != 0)
        return -1;
    char servers[64];
    snprintf(servers, sizeof servers, "127.0.0.1:%u", dns_port);
    return mx_dns_start(servers, 500, 2);
}

static int teardown(void **state)
{
    (void)state;
    mx_dns_stop();
    mx_dataplane_cleanup();
    if (dnsmasq_pid > 0) {
        kill(dnsmasq_pid, SIGTERM);
        waitpid(dnsmasq_pid, NULL, 0);
    }
    return 0;
}

/* A server that never answers: the query times out instead of hanging. */
static void test_timeout(void **state)
{
    (void)state;
    mx_dns_stop();
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof sin;
    bind(s, (struct sockaddr *)&sin, sizeof sin);
    getsockname(s, (struct sockaddr *)&sin, &l);
    char servers[64];
    snprintf(servers, sizeof servers, "127.0.0.1:%u", ntohs(sin.sin_port));
    assert_int_equal(mx_dns_start(servers, 200, 1), 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct answer *a = ask("a.test", MX_DNS_A);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_int_equal(a->r.status, -ETIMEDOUT);
    assert_true(t1.tv_sec - t0.tv_sec < 4);
    close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a),          cmocka_unit_test(test_aaaa),
        cmocka_unit_test(test_mx_sorted),  cmocka_unit_test(test_txt),
        cmocka_unit_test(test_dnsbl_style), cmocka_unit_test(test_nxdomain),
        cmocka_unit_test(test_bad_names),  cmocka_unit_test(test_many_concurrent),
        cmocka_unit_test(test_parse_garbage), cmocka_unit_test(test_timeout),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
