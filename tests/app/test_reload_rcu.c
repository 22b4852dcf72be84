/*
 * test_reload_rcu.c - the grace period that configuration reload relies on
 * (mx_dataplane_rcu_start/check, rte_rcu_qsbr in dataplane.c), with real
 * workers on the kernel backend: idle workers end a grace period within a
 * few loop turns; a worker still inside a callback that began before the
 * token holds it until the callback returns; a worker that stopped no
 * longer holds anything.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"
#include "dataplane/dataplane.h"

static struct mx_sockaddr listen_addr;
static atomic_int in_callback; /* a worker is inside on_accept */
static atomic_int release;     /* lets it return */
static atomic_int workers_up;  /* workers past their init */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Wait until the grace period of token is over; how long it took, or -1 past limit_ms. */
static long wait_grace(uint64_t token, uint64_t limit_ms)
{
    uint64_t t0 = now_ms();
    while (!mx_dataplane_rcu_check(token)) {
        if (now_ms() - t0 > limit_ms)
            return -1;
        usleep(200);
    }
    return (long)(now_ms() - t0);
}

/* Holds its worker inside one callback (bounded: 5 s) until the test releases it. */
static void on_accept(struct mx_stream *s, void *arg)
{
    (void)arg;
    atomic_store(&in_callback, 1);
    uint64_t t0 = now_ms();
    while (!atomic_load(&release) && now_ms() - t0 < 5000)
        usleep(100);
    atomic_store(&in_callback, 0);
    (void)s; /* not bound: the transport ends the connection */
}

static int worker_init(struct mx_worker *w, void *arg)
{
    (void)w;
    (void)arg;
    atomic_fetch_add(&workers_up, 1);
    return 0;
}

static void idle_workers_pass_quickly(void **state)
{
    (void)state;
    for (int i = 0; i < 20; i++) {
        uint64_t token = mx_dataplane_rcu_start();
        assert_true(token != 0);
        long ms = wait_grace(token, 1000);
        /* loop turns are at most 5 ms apart when idle */
        assert_true(ms >= 0 && ms < 200);
    }
}

static void busy_worker_holds_the_grace_period(void **state)
{
    (void)state;
    atomic_store(&release, 0);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&listen_addr.ss, listen_addr.len), 0);
    uint64_t t0 = now_ms();
    while (!atomic_load(&in_callback) && now_ms() - t0 < 5000)
        usleep(100);
    assert_int_equal(atomic_load(&in_callback), 1);

    /* the worker loaded whatever it uses before this token: not quiescent yet */
    uint64_t token = mx_dataplane_rcu_start();
    usleep(100 * 1000);
    assert_false(mx_dataplane_rcu_check(token));
    assert_int_equal(atomic_load(&in_callback), 1);

    atomic_store(&release, 1);
    assert_true(wait_grace(token, 1000) >= 0);
    close(fd);
}

static void stopped_workers_hold_nothing(void **state)
{
    (void)state;
    mx_dataplane_stop(200);
    uint64_t token = mx_dataplane_rcu_start();
    assert_true(mx_dataplane_rcu_check(token));
}

static int setup(void **state)
{
    (void)state;
    int probe = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof sin;
    if (bind(probe, (struct sockaddr *)&sin, sizeof sin) != 0 ||
        getsockname(probe, (struct sockaddr *)&sin, &l) != 0)
        return -1;
    close(probe);
    memcpy(&listen_addr.ss, &sin, sizeof sin);
    listen_addr.len = sizeof sin;
    snprintf(listen_addr.text, sizeof listen_addr.text, "127.0.0.1:%u", ntohs(sin.sin_port));
    struct mx_dataplane_params p = {
        .backend = "kernel",
        .workers = 2,
        .listen = &listen_addr,
        .n_listen = 1,
        .on_accept = on_accept,
        .on_worker_init = worker_init,
    };
    if (mx_dataplane_init(&p) != 0 || mx_dataplane_start() != 0)
        return -1;
    /* both loops running (online) before any test: an offline worker holds nothing */
    uint64_t t0 = now_ms();
    while (atomic_load(&workers_up) < 2 && now_ms() - t0 < 5000)
        usleep(1000);
    usleep(100 * 1000);
    return atomic_load(&workers_up) == 2 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    mx_dataplane_stop(200); /* no-op when a test stopped it already */
    mx_dataplane_cleanup();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(idle_workers_pass_quickly),
        cmocka_unit_test(busy_worker_holds_the_grace_period),
        cmocka_unit_test(stopped_workers_hold_nothing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
