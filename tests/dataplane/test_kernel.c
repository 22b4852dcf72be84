/*
 * test_kernel.c - the kernel-socket transport with real sockets on loopback:
 * accept + echo through two workers, many clients at once, output flushed
 * in one write per loop, pause/resume, active connect from a worker, timers
 * and graceful stop.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"
#include "dataplane/dataplane.h"

static struct mx_sockaddr listen_addr;
static struct mx_sockaddr listen_addrs[2]; /* IPv4 and IPv6 on the same port */
static volatile int closed_count, timeouts, connected_ok, worker_inits;

/* Echo sessions: every byte comes back; "PAUSE" pauses for one timer tick. */
static void echo_data(struct mx_stream *s, void *ctx, const uint8_t *buf, size_t len)
{
    (void)ctx;
    if (len >= 5 && memcmp(buf, "PAUSE", 5) == 0) {
        mx_stream_pause(s, true);
        mx_stream_set_timer(s, 20);
    }
    if (len >= 4 && memcmp(buf, "QUIT", 4) == 0) {
        mx_stream_write(s, "BYE\n", 4);
        mx_stream_close(s);
        return;
    }
    mx_stream_write(s, buf, len);
}

static void echo_timeout(struct mx_stream *s, void *ctx)
{
    (void)ctx;
    __atomic_fetch_add(&timeouts, 1, __ATOMIC_RELAXED);
    mx_stream_write(s, "TICK\n", 5);
    mx_stream_pause(s, false);
}

static void echo_closed(struct mx_stream *s, void *ctx, int res)
{
    (void)s, (void)ctx, (void)res;
    __atomic_fetch_add(&closed_count, 1, __ATOMIC_RELAXED);
}

static const struct mx_stream_cb echo_cb = {
    .data = echo_data,
    .closed = echo_closed,
    .timeout = echo_timeout,
};

/* Outgoing probe: on connect, writes "HELLO\n" then closes after the echo. */
static void probe_data(struct mx_stream *s, void *ctx, const uint8_t *buf, size_t len)
{
    (void)ctx;
    if (len >= 6 && memcmp(buf, "HELLO\n", 6) == 0) {
        __atomic_fetch_add(&connected_ok, 1, __ATOMIC_RELAXED);
        mx_stream_close(s);
    }
}

static void probe_connected(struct mx_stream *s, void *ctx, int res)
{
    (void)ctx;
    if (res == 0)
        mx_stream_write(s, "HELLO\n", 6);
}

static const struct mx_stream_cb probe_cb = {
    .data = probe_data,
    .connected = probe_connected,
    .closed = echo_closed,
};

static void on_accept(struct mx_stream *s, void *arg)
{
    (void)arg;
    mx_stream_bind(s, &echo_cb, NULL);
}

static void probe_tick(struct mx_worker *w, void *arg)
{
    (void)arg;
    static int started;
    if (mx_worker_index(w) == 1 && !__atomic_exchange_n(&started, 1, __ATOMIC_RELAXED)) {
        struct mx_stream *s;
        int rc = mx_stream_connect(w, (const struct sockaddr *)&listen_addr.ss, listen_addr.len,
                                   &probe_cb, NULL, &s);
        if (rc != 0)
            fprintf(stderr, "connect: %d\n", rc);
    }
}

static int worker_init(struct mx_worker *w, void *arg)
{
    (void)arg;
    __atomic_fetch_add(&worker_inits, 1, __ATOMIC_RELAXED);
    return mx_worker_add_tick(w, probe_tick, NULL);
}

static int client_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&listen_addr.ss, listen_addr.len) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static size_t read_n(int fd, char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, buf + got, n - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return got;
}

static void *client_thread(void *arg)
{
    long id = (long)arg;
    int fd = client_connect();
    if (fd < 0)
        return (void *)1;
    char msg[4096], back[4096];
    long bad = 0;
    for (int round = 0; round < 20; round++) {
        int n = snprintf(msg, sizeof msg, "client %ld round %d ", id, round);
        memset(msg + n, 'a' + (int)(id % 26), sizeof msg - (size_t)n);
        if (send(fd, msg, sizeof msg, 0) != (ssize_t)sizeof msg ||
            read_n(fd, back, sizeof back) != sizeof back || memcmp(msg, back, sizeof msg) != 0)
            bad++;
    }
    send(fd, "QUIT", 4, 0);
    char bye[4];
    if (read_n(fd, bye, 4) != 4 || memcmp(bye, "BYE\n", 4) != 0)
        bad++;
    if (recv(fd, bye, 1, 0) != 0) /* the server closed */
        bad++;
    close(fd);
    return (void *)bad;
}

static void test_echo_many_clients(void **state)
{
    (void)state;
    enum { N = 40 };
    pthread_t t[N];
    for (long i = 0; i < N; i++)
        pthread_create(&t[i], NULL, client_thread, (void *)i);
    long bad = 0;
    for (int i = 0; i < N; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad += (long)r;
    }
    assert_int_equal(bad, 0);
}

static void test_pause_resume_and_timer(void **state)
{
    (void)state;
    int fd = client_connect();
    assert_true(fd >= 0);
    /* The session pauses on PAUSE; what follows is held, then echoed after TICK. */
    const char *in = "PAUSE";
    assert_int_equal(send(fd, in, 5, 0), 5);
    char buf[64];
    assert_int_equal(read_n(fd, buf, 5), 5);
    assert_memory_equal(buf, "PAUSE", 5);
    assert_int_equal(send(fd, "later", 5, 0), 5);
    assert_int_equal(read_n(fd, buf, 10), 10);
    assert_memory_equal(buf, "TICK\nlater", 10);
    close(fd);
}

static void test_ipv6_listener(void **state)
{
    (void)state;
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(connect(fd, (struct sockaddr *)&listen_addrs[1].ss, listen_addrs[1].len), 0);
    assert_int_equal(send(fd, "v6 ok", 5, 0), 5);
    char buf[8];
    assert_int_equal(read_n(fd, buf, 5), 5);
    assert_memory_equal(buf, "v6 ok", 5);
    close(fd);
}

static void test_active_connect(void **state)
{
    (void)state;
    for (int i = 0; i < 200 && !__atomic_load_n(&connected_ok, __ATOMIC_RELAXED); i++)
        usleep(10000);
    assert_int_equal(connected_ok, 1);
    assert_int_equal(worker_inits, 2);
}

static int setup(void **state)
{
    (void)state;
    /* port 0 cannot be shared by SO_REUSEPORT sockets: pick a free one first */
    int probe = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof sin;
    bind(probe, (struct sockaddr *)&sin, sizeof sin);
    getsockname(probe, (struct sockaddr *)&sin, &l);
    close(probe);
    memcpy(&listen_addr.ss, &sin, sizeof sin);
    listen_addr.len = sizeof sin;
    snprintf(listen_addr.text, sizeof listen_addr.text, "127.0.0.1:%u", ntohs(sin.sin_port));

    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT,
                                .sin6_port = sin.sin_port};
    listen_addrs[0] = listen_addr;
    memcpy(&listen_addrs[1].ss, &sin6, sizeof sin6);
    listen_addrs[1].len = sizeof sin6;
    snprintf(listen_addrs[1].text, sizeof listen_addrs[1].text, "[::1]:%u", ntohs(sin.sin_port));
    struct mx_dataplane_params p = {
        .backend = "kernel",
        .workers = 2,
        .listen = listen_addrs,
        .n_listen = 2,
        .on_accept = on_accept,
        .on_worker_init = worker_init,
    };
    if (mx_dataplane_init(&p) != 0)
        return -1;
    return mx_dataplane_start();
}

static int teardown(void **state)
{
    (void)state;
    int fd = client_connect(); /* an idle session open at stop time */
    mx_dataplane_stop(200);
    if (fd >= 0) {
        char c;
        ssize_t r = recv(fd, &c, 1, 0);
        close(fd);
        if (r != 0 && !(r < 0 && errno == ECONNRESET))
            return -1;
    }
    mx_dataplane_cleanup();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_many_clients),
        cmocka_unit_test(test_pause_resume_and_timer),
        cmocka_unit_test(test_ipv6_listener),
        cmocka_unit_test(test_active_connect),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
