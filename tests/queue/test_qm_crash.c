/*
 * test_qm_crash.c - kill -9 loop against the real spool writer: a child
 * commits messages through qm_spool + a real io_uring as fast as it can and
 * reports each acknowledged queue id on a pipe; the parent SIGKILLs it at a
 * seeded random moment, recovers the spool and checks that every
 * acknowledged message is there with intact bytes. 20 rounds on one spool,
 * so later rounds also recover the earlier rounds' segments.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "queue/qm_internal.h"

#define ROUNDS 20
#define MAX_ACKED 400000

static char tmpdir[256];

/* The body of message number n: its length and bytes follow from n alone. */
static size_t body_for(uint32_t n, char *buf, size_t cap)
{
    size_t len = 40 + (n * 2654435761u) % 6000;
    if (len > cap)
        len = cap;
    int h = snprintf(buf, cap, "Subject: crash %u\r\n\r\n", n);
    for (size_t i = (size_t)h; i < len; i++)
        buf[i] = (char)('a' + (n + i) % 26);
    if (len >= 2) {
        buf[len - 2] = '\r';
        buf[len - 1] = '\n';
    }
    return len;
}

struct ack {
    int fd;
    uint32_t n;
};

static void child_ack(void *arg, int res, const char *qid)
{
    struct ack *a = arg;
    if (res == 0) {
        char line[64];
        int l = snprintf(line, sizeof line, "%s %u\n", qid, a->n);
        if (write(a->fd, line, (size_t)l) != l)
            _exit(3);
    }
    free(a);
}

static void child(int fd, const char *dir, uint32_t first)
{
    struct io_uring ring;
    if (io_uring_queue_init(256, &ring, 0) < 0)
        _exit(2);
    _Atomic uint64_t seq = (uint64_t)first * 16 + 1; /* distinct names per round */
    struct qm_spool sp;
    if (qm_spool_open(&sp, dir, &seq, &ring) < 0)
        _exit(2);
    sp.seg_max = 256 * 1024; /* roll often: recovery sees many segments */
    static char body[8192];
    struct mx_rcpt rcpt = {.addr = "u@example.test"};
    struct mx_envelope env = {.mail_from = "c@remote.invalid", .rcpts = &rcpt, .n_rcpts = 1};
    uint32_t n = first;
    for (;;) {
        /* a few messages per tick, like concurrent sessions ending together */
        unsigned batch = 1 + n % 7;
        for (unsigned i = 0; i < batch; i++, n++) {
            char qid[QM_QID_SIZE];
            qm_make_qid(qid, qm_unix_ms(), 0, n);
            struct mx_queue_msg *m = qm_msgbuf_new(&env, qid, sizeof body);
            size_t len = body_for(n, body, sizeof body);
            qm_msgbuf_append(m, body, len);
            qm_msgbuf_seal(m);
            struct ack *a = malloc(sizeof *a);
            a->fd = fd;
            a->n = n;
            m->cb = child_ack;
            m->cb_arg = a;
            qm_spool_add(&sp, m);
        }
        qm_spool_flush(&sp);
        qm_ring_dispatch(&ring, true);
        qm_ring_dispatch(&ring, false);
        qm_spool_gc(&sp); /* closes rolled segments once nothing writes to them */
    }
}

struct acked {
    char qid[QM_QID_SIZE];
    uint32_t n;
};

static int cmp_qid(const void *a, const void *b)
{
    return strcmp(((const struct acked *)a)->qid, ((const struct acked *)b)->qid);
}

static void test_crash_loop(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_qm_crash_XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    char spool[300], dir[320];
    snprintf(spool, sizeof spool, "%s/spool", tmpdir);
    snprintf(dir, sizeof dir, "%s/w0", spool);
    mkdir(spool, 0750);
    struct acked *acked = calloc(MAX_ACKED, sizeof *acked);
    assert_non_null(acked);
    size_t n_acked = 0;
    unsigned seed = 20261123;
    const char *env_seed = getenv("MX_TEST_SEED");
    if (env_seed)
        seed = (unsigned)strtoul(env_seed, NULL, 10);
    srand(seed);
    printf("# crash loop seed %u\n", seed);
    size_t total_torn = 0;
    for (int round = 0; round < ROUNDS; round++) {
        int p[2];
        assert_int_equal(pipe(p), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(p[0]);
            child(p[1], dir, (uint32_t)round * 1000000u);
        }
        close(p[1]);
        /* kill after 5..80 ms: before, during or between flushes */
        struct timespec ts = {0, (long)(5 + rand() % 76) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
        /* everything acknowledged before the kill is in the pipe */
        FILE *f = fdopen(p[0], "r");
        char line[128];
        size_t round_acks = 0;
        while (fgets(line, sizeof line, f)) {
            if (!strchr(line, '\n'))
                break; /* a line cut by the kill: its callback never returned */
            assert_true(n_acked < MAX_ACKED);
            assert_int_equal(sscanf(line, "%23s %u", acked[n_acked].qid, &acked[n_acked].n), 2);
            n_acked++;
            round_acks++;
        }
        fclose(f);

        struct qm_recovered r;
        assert_int_equal(qm_recover(spool, 1, &r), 0);
        assert_int_equal(r.n_corrupt, 0); /* a crash leaves at most a torn tail */
        total_torn += r.n_torn;
        /* every acknowledged id is present with exactly its bytes */
        qsort(acked, n_acked, sizeof *acked, cmp_qid);
        size_t j = 0;
        static char want[8192];
        for (size_t i = 0; i < n_acked; i++) {
            while (j < r.n && strcmp(r.msgs[j]->qid, acked[i].qid) < 0)
                j++;
            if (j >= r.n || strcmp(r.msgs[j]->qid, acked[i].qid) != 0)
                fail_msg("round %d: acknowledged %s (n=%u) lost", round, acked[i].qid,
                         acked[i].n);
            size_t len = body_for(acked[i].n, want, sizeof want);
            assert_int_equal(r.msgs[j]->body_len, len);
            assert_memory_equal(qm_msg_body(r.msgs[j]), want, len);
        }
        printf("# round %d: %zu acknowledged this round, %zu in total, %zu recovered, "
               "%zu torn\n",
               round, round_acks, n_acked, r.n, r.n_torn);
        assert_true(r.n >= n_acked);
        qm_recovered_free(&r);
    }
    assert_true(n_acked > 0);
    printf("# %zu acknowledged messages survived %d kills (%zu torn tails discarded)\n", n_acked,
           ROUNDS, total_torn);
    free(acked);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_crash_loop)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
