/*
 * test_qm_spool.c - unit tests of the spool: CRC32C, record and journal
 * encoding, group commit over a real io_uring (callbacks only after one
 * fdatasync), recovery (torn tail, corrupt middle record, journal replay),
 * Maildir delivery and the control listing of a recovered queue.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "config/config.h"
#include "queue/qm_internal.h"

static char tmpdir[256];

static int setup_dir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_qm_XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    return 0;
}

static int teardown_dir(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static struct mx_rcpt rcpts[3];

static struct mx_envelope make_env(size_t n_rcpts)
{
    struct mx_envelope env;
    memset(&env, 0, sizeof env);
    snprintf(env.mail_from, sizeof env.mail_from, "alice@example.org");
    env.size_param = 1234;
    env.body = MX_BODY_8BITMIME;
    env.smtputf8 = true;
    env.ret = MX_RET_HDRS;
    snprintf(env.envid, sizeof env.envid, "ENV-42");
    snprintf(env.client_text, sizeof env.client_text, "192.0.2.7");
    snprintf(env.helo, sizeof env.helo, "client.example.org");
    snprintf(env.tls, sizeof env.tls, "TLSv1.3 TLS_AES_256_GCM_SHA384");
    env.arrival_ms = 1700000000123ull;
    snprintf(env.session_id, sizeof env.session_id, "S1");
    for (size_t i = 0; i < 3; i++) {
        memset(&rcpts[i], 0, sizeof rcpts[i]);
        snprintf(rcpts[i].addr, sizeof rcpts[i].addr, "user%zu@example.net", i);
        rcpts[i].notify = (uint8_t)(MX_NOTIFY_FAILURE | MX_NOTIFY_DELAY);
        snprintf(rcpts[i].orcpt, sizeof rcpts[i].orcpt, "rfc822;orig%zu@example.net", i);
    }
    env.rcpts = rcpts;
    env.n_rcpts = n_rcpts;
    return env;
}

static void test_crc32c_vector(void **state)
{
    (void)state;
    assert_int_equal(qm_crc32c(0, "123456789", 9), 0xE3069283u);
    /* incremental == one shot */
    uint32_t c = qm_crc32c(0, "1234", 4);
    assert_int_equal(qm_crc32c(c, "56789", 5), 0xE3069283u);
    assert_int_equal(qm_crc32c(0, "", 0), 0);
    /* 32 zero bytes: RFC 3720 B.4 */
    uint8_t z[32] = {0};
    assert_int_equal(qm_crc32c(0, z, sizeof z), 0x8A9136AAu);
}

static struct mx_queue_msg *make_msg(const char *qid, const char *body, size_t n_rcpts)
{
    struct mx_envelope env = make_env(n_rcpts);
    struct mx_queue_msg *m = qm_msgbuf_new(&env, qid, 1 << 20);
    assert_non_null(m);
    assert_int_equal(qm_msgbuf_append(m, body, strlen(body)), 0);
    qm_msgbuf_seal(m);
    return m;
}

static void test_record_roundtrip(void **state)
{
    (void)state;
    const char *body = "Subject: hi\r\n\r\nbody line\r\n";
    struct mx_queue_msg *m = make_msg("0123456789AB00000001", body, 3);
    struct qm_record rec;
    long n = qm_record_decode(m->buf, m->len, &rec);
    assert_int_equal(n, (long)m->len);
    assert_string_equal(rec.qid, "0123456789AB00000001");
    assert_int_equal(rec.body_len, strlen(body));
    assert_memory_equal(rec.body, body, strlen(body));
    struct mx_envelope want = make_env(3);
    assert_string_equal(rec.env.mail_from, want.mail_from);
    assert_int_equal(rec.env.size_param, 1234);
    assert_int_equal(rec.env.body, MX_BODY_8BITMIME);
    assert_true(rec.env.smtputf8);
    assert_int_equal(rec.env.ret, MX_RET_HDRS);
    assert_string_equal(rec.env.envid, "ENV-42");
    assert_string_equal(rec.env.client_text, "192.0.2.7");
    assert_string_equal(rec.env.helo, "client.example.org");
    assert_string_equal(rec.env.tls, "TLSv1.3 TLS_AES_256_GCM_SHA384");
    assert_int_equal(rec.env.arrival_ms, 1700000000123ull);
    assert_string_equal(rec.env.session_id, "S1");
    assert_int_equal(rec.env.n_rcpts, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(rec.env.rcpts[i].addr, want.rcpts[i].addr);
        assert_int_equal(rec.env.rcpts[i].notify, MX_NOTIFY_FAILURE | MX_NOTIFY_DELAY);
        assert_string_equal(rec.env.rcpts[i].orcpt, want.rcpts[i].orcpt);
    }
    qm_env_free(&rec.env);
    /* every truncation is "incomplete", never a crash or a false record */
    for (size_t cut = 0; cut < m->len; cut++)
        assert_int_equal(qm_record_decode(m->buf, cut, &rec), -EAGAIN);
    /* any single flipped bit is detected */
    for (size_t i = 0; i < m->len; i += 7) {
        m->buf[i] ^= 0x10;
        assert_true(qm_record_decode(m->buf, m->len, &rec) < 0);
        m->buf[i] ^= 0x10;
    }
    qm_msgbuf_free(m);
}

static void test_journal_roundtrip(void **state)
{
    (void)state;
    struct qm_jentry e = {.type = QM_J_DEFERRED, .rcpt = 2, .attempts = 5, .when_ms = 99999};
    snprintf(e.qid, sizeof e.qid, "0123456789AB00000002");
    snprintf(e.err, sizeof e.err, "451 4.4.1 connection refused");
    uint8_t buf[QM_J_HDR + QM_J_ERR_MAX];
    size_t n = qm_jentry_encode(&e, buf);
    assert_int_equal(n, QM_J_HDR + strlen(e.err));
    struct qm_jentry d;
    assert_int_equal(qm_jentry_decode(buf, n, &d), (long)n);
    assert_int_equal(d.type, QM_J_DEFERRED);
    assert_int_equal(d.rcpt, 2);
    assert_int_equal(d.attempts, 5);
    assert_int_equal(d.when_ms, 99999);
    assert_string_equal(d.qid, e.qid);
    assert_string_equal(d.err, e.err);
    assert_int_equal(qm_jentry_decode(buf, n - 1, &d), -EAGAIN);
    buf[30] ^= 1;
    assert_int_equal(qm_jentry_decode(buf, n, &d), -EBADMSG);
}

static void test_msgbuf_limit(void **state)
{
    (void)state;
    struct mx_envelope env = make_env(1);
    struct mx_queue_msg *m = qm_msgbuf_new(&env, "0123456789AB00000003", 100);
    char x[60];
    memset(x, 'x', sizeof x);
    assert_int_equal(qm_msgbuf_append(m, x, sizeof x), 0);
    assert_int_equal(qm_msgbuf_append(m, x, 40), 0);
    assert_int_equal(qm_msgbuf_append(m, x, 1), -EFBIG);
    /* sticky: the message stays refused */
    assert_int_equal(qm_msgbuf_append(m, x, 0), -EFBIG);
    qm_msgbuf_free(m);
}

/* ---- group commit over a real ring ---------------------------------------- */

struct cbstate {
    struct qm_spool *sp;
    int calls, fails;
    uint64_t fsync_at_call[64];
    char qids[64][QM_QID_SIZE];
};

static void commit_cb(void *arg, int res, const char *qid)
{
    struct cbstate *s = arg;
    if (res < 0) {
        s->fails++;
        return;
    }
    s->fsync_at_call[s->calls] = s->sp->n_fsync;
    snprintf(s->qids[s->calls], QM_QID_SIZE, "%s", qid);
    s->calls++;
}

static void spool_dir(char *out, size_t n, unsigned w)
{
    snprintf(out, n, "%s/spool/w%u", tmpdir, w);
    char top[300];
    snprintf(top, sizeof top, "%s/spool", tmpdir);
    mkdir(top, 0750);
}

static void write_msgs(struct qm_spool *sp, struct io_uring *ring, struct cbstate *cs, int n,
                       const char *const *bodies, size_t n_rcpts)
{
    for (int i = 0; i < n; i++) {
        char qid[QM_QID_SIZE];
        qm_make_qid(qid, 1700000000000ull + (uint64_t)i, 0, (uint32_t)i);
        struct mx_queue_msg *m = make_msg(qid, bodies[i], n_rcpts);
        m->cb = commit_cb;
        m->cb_arg = cs;
        qm_spool_add(sp, m);
    }
    assert_int_equal(qm_spool_flush(sp), 0);
    while (cs->calls + cs->fails < n)
        assert_true(qm_ring_dispatch(ring, true) >= 0);
}

static void test_group_commit(void **state)
{
    (void)state;
    struct io_uring ring;
    assert_int_equal(io_uring_queue_init(64, &ring, 0), 0);
    char dir[300];
    spool_dir(dir, sizeof dir, 0);
    _Atomic uint64_t seq = 1;
    struct qm_spool sp;
    assert_int_equal(qm_spool_open(&sp, dir, &seq, &ring), 0);
    struct cbstate cs = {.sp = &sp};
    enum { N = 20 };
    for (int i = 0; i < N; i++) {
        char qid[QM_QID_SIZE];
        qm_make_qid(qid, 1700000000000ull, 0, (uint32_t)i);
        struct mx_queue_msg *m = make_msg(qid, "Subject: x\r\n\r\nhello\r\n", 1);
        m->cb = commit_cb;
        m->cb_arg = &cs;
        qm_spool_add(&sp, m);
    }
    assert_int_equal(cs.calls, 0);
    assert_int_equal(qm_spool_flush(&sp), 0);
    assert_int_equal(cs.calls, 0); /* nothing is acknowledged at submit time */
    for (int guard = 0; cs.calls + cs.fails < N && guard < 100; guard++)
        assert_true(qm_ring_dispatch(&ring, true) >= 0);
    assert_int_equal(cs.fails, 0);
    assert_int_equal(cs.calls, N);
    assert_int_equal(sp.n_batches, 1);
    assert_int_equal(sp.n_fsync, 1); /* ONE fdatasync for all 20 */
    for (int i = 0; i < N; i++)
        assert_int_equal(cs.fsync_at_call[i], 1); /* every callback after it */
    /* an empty flush does nothing */
    assert_int_equal(qm_spool_flush(&sp), 0);
    assert_int_equal(sp.n_batches, 1);
    /* a journal entry alone costs one fdatasync on the journal */
    struct qm_jentry e = {.type = QM_J_HELD};
    snprintf(e.qid, sizeof e.qid, "%s", cs.qids[0]);
    assert_int_equal(qm_spool_journal(&sp, &e), 0);
    assert_int_equal(qm_spool_flush(&sp), 0);
    while (sp.inflight)
        assert_true(qm_ring_dispatch(&ring, true) >= 0);
    assert_int_equal(sp.n_fsync, 2);
    qm_spool_close(&sp);
    io_uring_queue_exit(&ring);

    /* every committed record is on disk */
    char spool[300];
    snprintf(spool, sizeof spool, "%s/spool", tmpdir);
    struct qm_recovered r;
    assert_int_equal(qm_recover(spool, 1, &r), 0);
    assert_int_equal(r.n, N);
    assert_int_equal(r.n_torn, 0);
    assert_int_equal(r.n_corrupt, 0);
    for (size_t i = 0; i < r.n; i++) {
        assert_string_equal(r.msgs[i]->qid, cs.qids[i]);
        assert_true(r.msgs[i]->held == (i == 0));
        assert_memory_equal(qm_msg_body(r.msgs[i]), "Subject: x\r\n\r\nhello\r\n", 21);
    }
    /* a deferred message's bytes are dropped from memory and read back when due */
    struct qm_msg *m = r.msgs[7];
    free(m->buf);
    m->buf = NULL;
    assert_int_equal(qm_msg_load(m), 0);
    assert_int_equal(m->body_len, 21);
    assert_memory_equal(qm_msg_body(m), "Subject: x\r\n\r\nhello\r\n", 21);
    /* ...and never as other bytes than it was written */
    free(m->buf);
    m->buf = NULL;
    int fd = open(m->seg->path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "X", 1, (off_t)(m->rec_off + m->rec_len - 3)), 1);
    close(fd);
    assert_int_equal(qm_msg_load(m), -EBADMSG);
    assert_null(m->buf);
    qm_recovered_free(&r);
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static char seg_path[1024];

/* Three records through the real writer; remember the segment's path. */
static void three_records(struct cbstate *cs)
{
    struct io_uring ring;
    assert_int_equal(io_uring_queue_init(64, &ring, 0), 0);
    char dir[300];
    spool_dir(dir, sizeof dir, 0);
    _Atomic uint64_t seq = 1;
    struct qm_spool sp;
    assert_int_equal(qm_spool_open(&sp, dir, &seq, &ring), 0);
    cs->sp = &sp;
    static const char *const bodies[] = {"Subject: one\r\n\r\n1\r\n", "Subject: two\r\n\r\n22\r\n",
                                         "Subject: three\r\n\r\n333\r\n"};
    write_msgs(&sp, &ring, cs, 3, bodies, 1);
    snprintf(seg_path, sizeof seg_path, "%s", sp.seg->path);
    qm_spool_close(&sp);
    io_uring_queue_exit(&ring);
    cs->sp = NULL;
}

static size_t file_size(const char *p)
{
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    return (size_t)st.st_size;
}

static void test_recover_torn_tail(void **state)
{
    (void)state;
    struct cbstate cs = {0};
    three_records(&cs);
    size_t full = file_size(seg_path);
    /* a fourth record cut in the middle, as a crash during its write leaves it */
    struct mx_queue_msg *m = make_msg("0123456789AB000000FF", "Subject: torn\r\n\r\nxxxx\r\n", 1);
    int fd = open(seg_path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    size_t half = m->len / 2;
    assert_int_equal(write(fd, m->buf, half), (ssize_t)half);
    close(fd);
    qm_msgbuf_free(m);
    char spool[300], corrupt[320];
    snprintf(spool, sizeof spool, "%s/spool", tmpdir);
    snprintf(corrupt, sizeof corrupt, "%s/corrupt", spool);
    struct qm_recovered r;
    assert_int_equal(qm_recover(spool, 1, &r), 0);
    assert_int_equal(r.n, 3);
    assert_int_equal(r.n_torn, 1);
    assert_int_equal(r.n_corrupt, 0);
    assert_string_equal(r.msgs[2]->qid, cs.qids[2]);
    assert_memory_equal(qm_msg_body(r.msgs[2]), "Subject: three\r\n\r\n333\r\n", 23);
    qm_recovered_free(&r);
    /* the cut bytes were kept aside, named by file and offset */
    char kept[2200];
    const char *fname = strrchr(seg_path, '/') + 1;
    snprintf(kept, sizeof kept, "%s/w0-%s-%zu", corrupt, fname, full);
    assert_int_equal(file_size(kept), half);
}

static void test_recover_corrupt_middle(void **state)
{
    (void)state;
    struct cbstate cs = {0};
    three_records(&cs);
    /* find the second record and damage one byte of its body */
    uint8_t buf[4096];
    int fd = open(seg_path, O_RDWR);
    assert_true(fd >= 0);
    ssize_t n = read(fd, buf, sizeof buf);
    assert_true(n > 0);
    size_t t1;
    assert_int_equal(qm_record_check(buf, (size_t)n, &t1), 0);
    size_t t2;
    assert_int_equal(qm_record_check(buf + t1, (size_t)n - t1, &t2), 0);
    buf[t1 + t2 - 3] ^= 0x01;
    assert_int_equal(pwrite(fd, buf, (size_t)n, 0), n);
    close(fd);
    char spool[300];
    snprintf(spool, sizeof spool, "%s/spool", tmpdir);
    struct qm_recovered r;
    assert_int_equal(qm_recover(spool, 1, &r), 0);
    assert_int_equal(r.n, 2);
    assert_int_equal(r.n_corrupt, 1);
    assert_int_equal(r.n_torn, 0);
    assert_string_equal(r.msgs[0]->qid, cs.qids[0]);
    assert_string_equal(r.msgs[1]->qid, cs.qids[2]);
    qm_recovered_free(&r);
    /* exactly the damaged record's bytes are in corrupt/ */
    char kept[2200];
    snprintf(kept, sizeof kept, "%s/corrupt/w0-%s-%zu", spool, strrchr(seg_path, '/') + 1, t1);
    assert_int_equal(file_size(kept), t2);
    uint8_t k[4096];
    fd = open(kept, O_RDONLY);
    assert_int_equal(read(fd, k, sizeof k), (ssize_t)t2);
    close(fd);
    assert_memory_equal(k, buf + t1, t2);
    /* the segment stays: two messages in it are still queued */
    assert_int_equal(access(seg_path, F_OK), 0);
}

static void append_journal(const struct qm_jentry *es, size_t n)
{
    struct io_uring ring;
    assert_int_equal(io_uring_queue_init(64, &ring, 0), 0);
    char dir[300];
    spool_dir(dir, sizeof dir, 0);
    _Atomic uint64_t seq = 1000;
    struct qm_spool sp;
    assert_int_equal(qm_spool_open(&sp, dir, &seq, &ring), 0);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(qm_spool_journal(&sp, &es[i]), 0);
    assert_int_equal(qm_spool_flush(&sp), 0);
    while (sp.inflight)
        assert_true(qm_ring_dispatch(&ring, true) >= 0);
    qm_spool_close(&sp);
    io_uring_queue_exit(&ring);
}

static void test_recover_journal_replay(void **state)
{
    (void)state;
    struct cbstate cs = {0};
    three_records(&cs);
    struct qm_jentry es[4] = {
        {.type = QM_J_DELIVERED, .rcpt = 0},
        {.type = QM_J_DEFERRED, .attempts = 3, .when_ms = 1800000000000ull},
        {.type = QM_J_HELD},
        {.type = QM_J_DELETED},
    };
    snprintf(es[0].qid, sizeof es[0].qid, "%s", cs.qids[0]);
    snprintf(es[1].qid, sizeof es[1].qid, "%s", cs.qids[1]);
    snprintf(es[1].err, sizeof es[1].err, "451 4.4.1 connection refused");
    snprintf(es[2].qid, sizeof es[2].qid, "%s", cs.qids[1]);
    snprintf(es[3].qid, sizeof es[3].qid, "%s", cs.qids[2]);
    append_journal(es, 4);
    char spool[300];
    snprintf(spool, sizeof spool, "%s/spool", tmpdir);
    for (int round = 0; round < 2; round++) {
        /* the second round replays the compacted journal of the first */
        struct qm_recovered r;
        assert_int_equal(qm_recover(spool, 1, &r), 0);
        assert_int_equal(r.n, 1); /* 1 delivered, 3 deleted: not redelivered */
        assert_string_equal(r.msgs[0]->qid, cs.qids[1]);
        assert_int_equal(r.msgs[0]->attempts, 3);
        assert_int_equal(r.msgs[0]->next_attempt_ms, 1800000000000ull);
        assert_int_equal(r.msgs[0]->state, QM_M_DEFERRED);
        assert_true(r.msgs[0]->held);
        assert_string_equal(r.msgs[0]->last_error, "451 4.4.1 connection refused");
        qm_recovered_free(&r);
        /* one compacted journal and the segment are left in w0 */
        char w0[320];
        snprintf(w0, sizeof w0, "%s/w0", spool);
        assert_int_equal(count_files(w0), 2);
    }
    /* once every message is done the segment goes */
    struct qm_jentry fin = {.type = QM_J_DELIVERED, .rcpt = 0};
    snprintf(fin.qid, sizeof fin.qid, "%s", cs.qids[1]);
    append_journal(&fin, 1);
    struct qm_recovered r;
    assert_int_equal(qm_recover(spool, 1, &r), 0);
    assert_int_equal(r.n, 0);
    assert_int_equal(r.n_segs_deleted >= 1, 1);
    qm_recovered_free(&r);
    assert_int_equal(access(seg_path, F_OK), -1);
}

/*
 * Disk full: on a 1 MiB tmpfs (private mount namespace, gone with the
 * process) commits fail with -ENOSPC and are not acknowledged; once space
 * returns the writer continues in a new segment by itself, and recovery
 * finds every acknowledged message intact.
 */
static void test_disk_full(void **state)
{
    (void)state;
    char mnt[300];
    snprintf(mnt, sizeof mnt, "%s/small", tmpdir);
    assert_int_equal(mkdir(mnt, 0750), 0);
    if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("tmpfs", mnt, "tmpfs", 0, "size=1m") != 0) {
        printf("# no private tmpfs mount here (%s): skipped\n", strerror(errno));
        skip();
    }
    char filler[400], spool[320], dir[340];
    snprintf(filler, sizeof filler, "%s/filler", mnt);
    snprintf(spool, sizeof spool, "%s/spool", mnt);
    snprintf(dir, sizeof dir, "%s/w0", spool);
    mkdir(spool, 0750);
    int fd = open(filler, O_WRONLY | O_CREAT, 0640);
    static char blob[256 * 1024];
    memset(blob, 'f', sizeof blob);
    assert_int_equal(write(fd, blob, sizeof blob), (ssize_t)sizeof blob);
    close(fd);

    struct io_uring ring;
    assert_int_equal(io_uring_queue_init(64, &ring, 0), 0);
    _Atomic uint64_t seq = 1;
    struct qm_spool sp;
    assert_int_equal(qm_spool_open(&sp, dir, &seq, &ring), 0);
    struct cbstate cs = {.sp = &sp};
    static char body[20000];
    memset(body, 'b', sizeof body - 1);
    int round = 0;
    /* 20 KB a message: 1 MiB is full after about 40 */
    for (; round < 200 && cs.fails == 0; round++) {
        if (cs.calls >= 64)
            break;
        char qid[QM_QID_SIZE];
        qm_make_qid(qid, 1700000000000ull, 0, (uint32_t)round);
        struct mx_queue_msg *m = make_msg(qid, body, 1);
        m->cb = commit_cb;
        m->cb_arg = &cs;
        qm_spool_add(&sp, m);
        /* a journal entry rides in every batch, also in the one that fails */
        if (cs.calls > 0) {
            struct qm_jentry e = {.type = QM_J_HELD};
            snprintf(e.qid, sizeof e.qid, "%s", cs.qids[0]);
            assert_int_equal(qm_spool_journal(&sp, &e), 0);
        }
        assert_int_equal(qm_spool_flush(&sp), 0);
        while (sp.inflight)
            assert_true(qm_ring_dispatch(&ring, true) >= 0);
    }
    assert_int_equal(cs.fails, 1); /* the first refused commit: nothing acknowledged */
    assert_true(cs.calls > 5 && cs.calls < 64);
    assert_int_equal(sp.n_write_errors, 1);
    int acked = cs.calls;

    /* space comes back: the next commit goes to a fresh segment and succeeds */
    assert_int_equal(unlink(filler), 0);
    char qid[QM_QID_SIZE];
    qm_make_qid(qid, 1700000000000ull, 0, 999);
    struct mx_queue_msg *m = make_msg(qid, "Subject: after\r\n\r\nok\r\n", 1);
    m->cb = commit_cb;
    m->cb_arg = &cs;
    qm_spool_add(&sp, m);
    /*
     * The failed batch's journal write was cancelled: its range must be
     * rewritten, not left as a hole that recovery would stop at (and so
     * forget this later entry).
     */
    struct qm_jentry held1 = {.type = QM_J_HELD};
    snprintf(held1.qid, sizeof held1.qid, "%s", cs.qids[1]);
    assert_int_equal(qm_spool_journal(&sp, &held1), 0);
    assert_int_equal(qm_spool_flush(&sp), 0);
    while (sp.inflight)
        assert_true(qm_ring_dispatch(&ring, true) >= 0);
    assert_int_equal(cs.calls, acked + 1);
    assert_int_equal(cs.fails, 1);
    qm_spool_close(&sp);
    io_uring_queue_exit(&ring);

    struct qm_recovered r;
    assert_int_equal(qm_recover(spool, 1, &r), 0);
    assert_int_equal(r.n_corrupt, 0);
    assert_int_equal(r.n, (size_t)acked + 1);
    for (size_t i = 0; i < (size_t)acked; i++) {
        assert_string_equal(r.msgs[i]->qid, cs.qids[i]);
        assert_int_equal(r.msgs[i]->body_len, sizeof body - 1);
        assert_memory_equal(qm_msg_body(r.msgs[i]), body, sizeof body - 1);
        assert_int_equal(r.msgs[i]->held, i <= 1); /* both journal entries survived */
    }
    qm_recovered_free(&r);
    umount2(mnt, MNT_DETACH);
}

static void test_maildir(void **state)
{
    (void)state;
    char md[300];
    snprintf(md, sizeof md, "%s/mail/box", tmpdir);
    const char *msg = "Subject: t\r\nMessage-ID: <1@t>\r\n\r\nline1\r\nline2\r\n";
    char name[256];
    assert_int_equal(qm_maildir_deliver(md, "0123456789AB00000009", "alice@example.org",
                                        "bob@example.net", (const uint8_t *)msg, strlen(msg),
                                        name, sizeof name),
                     0);
    char p[700];
    snprintf(p, sizeof p, "%s/tmp", md);
    assert_int_equal(count_files(p), 0);
    snprintf(p, sizeof p, "%s/cur", md);
    assert_int_equal(count_files(p), 0);
    snprintf(p, sizeof p, "%s/new", md);
    assert_int_equal(count_files(p), 1);
    snprintf(p, sizeof p, "%s/new/%s", md, name);
    char got[512];
    int fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    ssize_t n = read(fd, got, sizeof got - 1);
    close(fd);
    assert_true(n > 0);
    got[n] = 0;
    char want[512];
    snprintf(want, sizeof want, "Return-Path: <alice@example.org>\r\nDelivered-To: bob@example.net\r\n%s",
             msg);
    assert_string_equal(got, want);
    assert_non_null(strstr(name, "0123456789AB00000009"));
    /* a null sender gives Return-Path: <> */
    assert_int_equal(qm_maildir_deliver(md, "0123456789AB0000000A", "", "bob@example.net",
                                        (const uint8_t *)msg, strlen(msg), name, sizeof name),
                     0);
    snprintf(p, sizeof p, "%s/new/%s", md, name);
    fd = open(p, O_RDONLY);
    n = read(fd, got, sizeof got - 1);
    close(fd);
    got[n] = 0;
    assert_memory_equal(got, "Return-Path: <>\r\n", 17);
}

static void md_done(void *arg, int res)
{
    int *st = arg;
    *st = res == 0 ? 1 : res;
}

/* Asynchronous Maildir delivery: same bytes; one directory fsync for the batch. */
static void test_maildir_async(void **state)
{
    (void)state;
    struct io_uring ring;
    assert_int_equal(io_uring_queue_init(64, &ring, 0), 0);
    struct qm_md md;
    qm_md_init(&md, &ring);
    char dir[300];
    snprintf(dir, sizeof dir, "%s/amd", tmpdir);
    const char *msg = "Subject: a\r\n\r\nasync\r\n";
    enum { N = 5 };
    int st[N] = {0};
    for (int i = 0; i < N; i++) {
        char rcpt[64];
        snprintf(rcpt, sizeof rcpt, "u%d@example.net", i);
        assert_int_equal(qm_maildir_start(&md, dir, "0123456789AB0000000B", "s@example.org",
                                          rcpt, (const uint8_t *)msg, strlen(msg), md_done,
                                          &st[i]),
                         0);
    }
    /* files written and renamed, but nobody is told before new/ is synced */
    for (int g = 0; g < 100 && md.inflight; g++)
        assert_true(qm_ring_dispatch(&ring, true) >= 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(st[i], 0);
    qm_maildir_flush(&md);
    for (int g = 0; g < 100 && md.inflight; g++)
        assert_true(qm_ring_dispatch(&ring, true) >= 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(st[i], 1);
    assert_int_equal(md.n_dir_fsync, 1);
    char p[400];
    snprintf(p, sizeof p, "%s/new", dir);
    char got[N][8192];
    assert_int_equal(count_files(p), N);
    DIR *d = opendir(p);
    struct dirent *de;
    int n = 0, seen = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char f[800];
        snprintf(f, sizeof f, "%s/%s", p, de->d_name);
        int fd = open(f, O_RDONLY);
        ssize_t l = read(fd, got[n], sizeof got[n] - 1);
        close(fd);
        got[n][l] = 0;
        int who = got[n][strlen("Return-Path: <s@example.org>\r\nDelivered-To: u")] - '0';
        char want[256];
        snprintf(want, sizeof want,
                 "Return-Path: <s@example.org>\r\nDelivered-To: u%d@example.net\r\n%s", who,
                 msg);
        assert_string_equal(got[n], want);
        seen |= 1 << who;
        n++;
    }
    closedir(d);
    assert_int_equal(seen, (1 << N) - 1);
    snprintf(p, sizeof p, "%s/tmp", dir);
    assert_int_equal(count_files(p), 0);
    io_uring_queue_exit(&ring);
}

static void test_qid(void **state)
{
    (void)state;
    char a[QM_QID_SIZE], b[QM_QID_SIZE], c[QM_QID_SIZE];
    qm_make_qid(a, 1700000000000ull, 1, 5);
    qm_make_qid(b, 1700000000000ull, 1, 6);
    qm_make_qid(c, 1700000000001ull, 0, 0);
    assert_int_equal(strlen(a), QM_QID_LEN);
    assert_string_equal(a, "018BCFE5680001000005");
    assert_true(strcmp(a, b) < 0);
    assert_true(strcmp(b, c) < 0); /* later time sorts later */
}

/* A recovered queue answers list/show through mx_queue_control before workers run. */
static void test_control_list(void **state)
{
    (void)state;
    struct cbstate cs = {0};
    three_records(&cs);
    struct qm_jentry es[2] = {
        {.type = QM_J_DEFERRED, .attempts = 2, .when_ms = 1800000000000ull},
        {.type = QM_J_DELIVERED, .rcpt = 0},
    };
    snprintf(es[0].qid, sizeof es[0].qid, "%s", cs.qids[0]);
    snprintf(es[0].err, sizeof es[0].err, "421 4.4.2 timeout");
    snprintf(es[1].qid, sizeof es[1].qid, "%s", cs.qids[2]);
    append_journal(es, 2);
    char spool[300];
    snprintf(spool, sizeof spool, "%s/spool", tmpdir);
    struct mx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.spool_dir = spool;
    cfg.dp_workers = 1;
    cfg.smtp_max_message_size = 1 << 20;
    struct mx_queue *q;
    assert_int_equal(mx_queue_open(&cfg, &q), 0);
    char *out = NULL;
    assert_int_equal(mx_queue_control(q, "list", NULL, true, &out), 0);
    json_error_t err;
    json_t *arr = json_loads(out, 0, &err);
    assert_non_null(arr);
    assert_int_equal(json_array_size(arr), 2);
    json_t *d = NULL;
    for (size_t i = 0; i < 2; i++) {
        json_t *o = json_array_get(arr, i);
        assert_int_equal(json_object_size(o), 8);
        const char *keys[] = {"id", "from", "rcpts", "size", "state", "attempts",
                              "next_attempt", "last_error"};
        for (size_t k = 0; k < 8; k++)
            assert_non_null(json_object_get(o, keys[k]));
        if (strcmp(json_string_value(json_object_get(o, "id")), cs.qids[0]) == 0)
            d = o;
    }
    assert_non_null(d);
    assert_string_equal(json_string_value(json_object_get(d, "state")), "deferred");
    assert_int_equal(json_integer_value(json_object_get(d, "attempts")), 2);
    assert_int_equal(json_integer_value(json_object_get(d, "next_attempt")), 1800000000);
    assert_string_equal(json_string_value(json_object_get(d, "last_error")), "421 4.4.2 timeout");
    assert_string_equal(json_string_value(json_object_get(d, "from")), "alice@example.org");
    assert_string_equal(json_string_value(json_array_get(json_object_get(d, "rcpts"), 0)),
                        "user0@example.net");
    assert_int_equal(json_integer_value(json_object_get(d, "size")), 19);
    /* in queue order: ids sort by arrival */
    assert_true(strcmp(json_string_value(json_object_get(json_array_get(arr, 0), "id")),
                       json_string_value(json_object_get(json_array_get(arr, 1), "id"))) < 0);
    json_decref(arr);
    free(out);
    assert_int_equal(mx_queue_control(q, "list", NULL, false, &out), 0);
    char want0[64], want1[64];
    snprintf(want0, sizeof want0, "%s ", cs.qids[0]);
    snprintf(want1, sizeof want1, "\n%s ", cs.qids[1]);
    assert_memory_equal(out, want0, strlen(want0));
    assert_non_null(strstr(out, want1));
    assert_non_null(strstr(out, "deferred attempts=2 next_attempt=1800000000 <alice@example.org> "
                                "user0@example.net last_error=421 4.4.2 timeout\n"));
    free(out);

    assert_int_equal(mx_queue_control(q, "show", cs.qids[1], false, &out), 0);
    assert_non_null(strstr(out, "from: <alice@example.org>"));
    assert_non_null(strstr(out, "rcpt: <user0@example.net> pending"));
    free(out);
    assert_int_equal(mx_queue_control(q, "show", "NOSUCHID", false, &out), -ENOENT);
    free(out);
    assert_int_equal(mx_queue_control(q, "bogus", NULL, false, &out), -EINVAL);
    free(out);
    assert_false(mx_queue_inbound_paused(q));
    assert_int_equal(mx_queue_control(q, "pause-inbound", NULL, false, &out), 0);
    free(out);
    assert_true(mx_queue_inbound_paused(q));
    assert_int_equal(mx_queue_control(q, "resume-inbound", NULL, true, &out), 0);
    assert_string_equal(out, "{\"ok\":true,\"result\":\"inbound mail resumed\"}\n");
    free(out);
    assert_false(mx_queue_inbound_paused(q));
    mx_queue_close(q);
}

/*
 * The manager without EAL: worker 0 attached to a plain ring and driven by
 * hand. Two messages delivered to a Maildir, one deferred (its Maildir
 * cannot be created); then the journal is rotated: the snapshot must keep
 * the delivered ones finished (their segment lives on for the deferred one)
 * and the deferred one's attempts, and the old journals are gone.
 */
static void run_until(struct qm_worker *qw, struct io_uring *ring, bool (*cond)(struct qm_worker *))
{
    for (int i = 0; i < 500 && !cond(qw); i++) {
        qm_tick(NULL, qw);
        qm_ring_dispatch(ring, false);
        usleep(2000);
    }
    assert_true(cond(qw));
}

static bool settled(struct qm_worker *qw)
{
    return qw->n_msgs == 1 && TAILQ_EMPTY(&qw->busy) && TAILQ_EMPTY(&qw->ready) &&
           !qw->sp.inflight && !qw->sp.jlen && !qw->md.inflight;
}

static char journal_before[1024];

static bool rotated(struct qm_worker *qw)
{
    return strcmp(qw->sp.j_path, journal_before) != 0 && !qw->sp.inflight && !qw->sp.jlen &&
           !qw->sp.j_snapshot_pending && qw->sp.n_j_old == 0 && qw->sp.j_off > 0;
}

static void test_journal_rotation(void **state)
{
    (void)state;
    char spool[300], md[300];
    snprintf(spool, sizeof spool, "%s/spool", tmpdir);
    snprintf(md, sizeof md, "%s/md", tmpdir);
    struct mx_route routes[2] = {
        {.domain = "bad.test", .scheme = MX_ROUTE_MAILDIR, .maildir = "/proc/no/such/dir"},
        {.domain = "*", .scheme = MX_ROUTE_MAILDIR, .maildir = md},
    };
    struct mx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.spool_dir = spool;
    cfg.dp_workers = 1;
    cfg.smtp_max_message_size = 1 << 20;
    cfg.routes = routes;
    cfg.n_routes = 2;
    struct mx_queue *q;
    assert_int_equal(mx_queue_open(&cfg, &q), 0);
    struct io_uring ring;
    assert_int_equal(io_uring_queue_init(64, &ring, 0), 0);
    assert_int_equal(qm_worker_attach(q, 0, &ring, NULL), 0);
    struct qm_worker *qw = &q->workers[0];
    const char *to[3] = {"a@ok.test", "b@bad.test", "c@ok.test"};
    char qids[3][QM_QID_SIZE];
    for (int i = 0; i < 3; i++) {
        struct mx_envelope env = make_env(1);
        snprintf(rcpts[0].addr, sizeof rcpts[0].addr, "%s", to[i]);
        env.arrival_ms = qm_unix_ms();
        qm_make_qid(qids[i], qm_unix_ms(), 0, (uint32_t)i);
        struct mx_queue_msg *m = qm_msgbuf_new(&env, qids[i], 1 << 20);
        assert_int_equal(qm_msgbuf_append(m, "Subject: r\r\n\r\nx\r\n", 18), 0);
        qm_msgbuf_seal(m);
        m->qw = qw;
        qm_spool_add(&qw->sp, m);
    }
    run_until(qw, &ring, settled);
    struct qm_msg *b = TAILQ_FIRST(&qw->waiting);
    assert_non_null(b);
    assert_string_equal(b->qid, qids[1]);
    assert_int_equal(b->attempts, 1);
    char w0[320];
    snprintf(w0, sizeof w0, "%s/w0", spool);
    int journals_before = 0;
    DIR *d = opendir(w0);
    struct dirent *de;
    while ((de = readdir(d)))
        journals_before += strncmp(de->d_name, "journal-", 8) == 0;
    closedir(d);
    assert_int_equal(journals_before, 2); /* start-up compaction + this run's */
    snprintf(journal_before, sizeof journal_before, "%s", qw->sp.j_path);
    qw->sp.j_max = 1;
    run_until(qw, &ring, rotated);
    int journals_after = 0;
    d = opendir(w0);
    while ((de = readdir(d)))
        journals_after += strncmp(de->d_name, "journal-", 8) == 0;
    closedir(d);
    assert_int_equal(journals_after, 1);
    mx_queue_close(q);
    io_uring_queue_exit(&ring);

    /* a restart sees exactly the deferred message, attempts kept */
    assert_int_equal(mx_queue_open(&cfg, &q), 0);
    char *out = NULL;
    assert_int_equal(mx_queue_control(q, "list", NULL, true, &out), 0);
    json_error_t err;
    json_t *arr = json_loads(out, 0, &err);
    free(out);
    assert_int_equal(json_array_size(arr), 1);
    json_t *o = json_array_get(arr, 0);
    assert_string_equal(json_string_value(json_object_get(o, "id")), qids[1]);
    assert_int_equal(json_integer_value(json_object_get(o, "attempts")), 1);
    json_decref(arr);
    mx_queue_close(q);
    char nd[320];
    snprintf(nd, sizeof nd, "%s/new", md);
    assert_int_equal(count_files(nd), 2);
}

static bool all_done(struct qm_worker *qw)
{
    return qw->n_msgs == 0 && !qw->sp.inflight && !qw->sp.jlen && !qw->md.inflight &&
           qw->sp.n_pending == 0;
}

/*
 * Failed recipients (no route: 550 5.1.2) get one DSN to the sender, only
 * where NOTIFY asks for failures; the DSN itself comes from <> and is
 * delivered to the sender's Maildir.
 */
static void test_dsn_notify(void **state)
{
    (void)state;
    char spool[300], md[300];
    snprintf(spool, sizeof spool, "%s/spool", tmpdir);
    snprintf(md, sizeof md, "%s/md", tmpdir);
    struct mx_route routes[1] = {
        {.domain = "example.org", .scheme = MX_ROUTE_MAILDIR, .maildir = md},
    };
    struct mx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.spool_dir = spool;
    cfg.dp_workers = 1;
    cfg.smtp_max_message_size = 1 << 20;
    cfg.smtp_hostname = "mx.test.invalid";
    cfg.routes = routes;
    cfg.n_routes = 1;
    struct mx_queue *q;
    assert_int_equal(mx_queue_open(&cfg, &q), 0);
    struct io_uring ring;
    assert_int_equal(io_uring_queue_init(64, &ring, 0), 0);
    assert_int_equal(qm_worker_attach(q, 0, &ring, NULL), 0);
    struct qm_worker *qw = &q->workers[0];
    const uint8_t notify[3] = {MX_NOTIFY_DEFAULT, MX_NOTIFY_NEVER, MX_NOTIFY_SUCCESS};
    for (int i = 0; i < 3; i++) {
        struct mx_envelope env = make_env(1);
        snprintf(rcpts[0].addr, sizeof rcpts[0].addr, "user%d@nowhere.test", i);
        rcpts[0].notify = notify[i];
        env.arrival_ms = qm_unix_ms();
        char qid[QM_QID_SIZE];
        qm_make_qid(qid, qm_unix_ms(), 0, (uint32_t)i);
        struct mx_queue_msg *m = qm_msgbuf_new(&env, qid, 1 << 20);
        assert_int_equal(qm_msgbuf_append(m, "Subject: n\r\n\r\nx\r\n", 18), 0);
        qm_msgbuf_seal(m);
        m->qw = qw;
        qm_spool_add(&qw->sp, m);
    }
    run_until(qw, &ring, all_done);
    mx_queue_close(q);
    io_uring_queue_exit(&ring);
    char nd[320];
    snprintf(nd, sizeof nd, "%s/new", md);
    assert_int_equal(count_files(nd), 1);
    char f[8][8192];
    DIR *d = opendir(nd);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d)) && n < 1) {
        if (de->d_name[0] == '.')
            continue;
        char p[800];
        snprintf(p, sizeof p, "%s/%s", nd, de->d_name);
        int fd = open(p, O_RDONLY);
        ssize_t l = read(fd, f[n], sizeof f[n] - 1);
        close(fd);
        f[n][l > 0 ? l : 0] = 0;
        n++;
    }
    closedir(d);
    assert_memory_equal(f[0], "Return-Path: <>\r\nDelivered-To: alice@example.org\r\n", 50);
    assert_non_null(strstr(f[0], "Final-Recipient: rfc822; user0@nowhere.test"));
    assert_null(strstr(f[0], "user1@nowhere.test"));
    assert_null(strstr(f[0], "user2@nowhere.test"));
    assert_non_null(strstr(f[0], "5.1.2"));
}

static bool dsn_attempt_over(struct qm_worker *qw)
{
    return qw->n_msgs == 0 && qw->sp.n_write_errors > 0;
}

static bool dsn_delivered(struct qm_worker *qw)
{
    char nd[400];
    snprintf(nd, sizeof nd, "%s/md/new", tmpdir);
    return count_files(nd) == 1 && all_done(qw) && TAILQ_EMPTY(&qw->sp.retry);
}

/*
 * A bounce whose DSN cannot be written (disk full) must not lose the
 * original: its segment stays until the DSN and the failure's journal
 * entries are durable, a crash meanwhile brings the original back
 * unfinished, and once space returns the DSN is written and delivered.
 */
static void test_dsn_disk_full(void **state)
{
    (void)state;
    char mnt[300];
    snprintf(mnt, sizeof mnt, "%s/small", tmpdir);
    assert_int_equal(mkdir(mnt, 0750), 0);
    if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("tmpfs", mnt, "tmpfs", 0, "size=1m") != 0) {
        printf("# no private tmpfs mount here (%s): skipped\n", strerror(errno));
        skip();
    }
    char spool[320], md[300], filler[400];
    snprintf(spool, sizeof spool, "%s/spool", mnt);
    snprintf(md, sizeof md, "%s/md", tmpdir);
    snprintf(filler, sizeof filler, "%s/filler", mnt);
    struct mx_route routes[1] = {
        {.domain = "example.org", .scheme = MX_ROUTE_MAILDIR, .maildir = md},
    };
    struct mx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.spool_dir = spool;
    cfg.dp_workers = 1;
    cfg.smtp_max_message_size = 64 << 10;
    cfg.smtp_hostname = "mx.test.invalid";
    cfg.routes = routes;
    cfg.n_routes = 1;
    struct mx_queue *q;
    assert_int_equal(mx_queue_open(&cfg, &q), 0);
    struct io_uring ring;
    assert_int_equal(io_uring_queue_init(64, &ring, 0), 0);
    assert_int_equal(qm_worker_attach(q, 0, &ring, NULL), 0);
    struct qm_worker *qw = &q->workers[0];
    qw->sp.seg_max = 1; /* every batch in a new segment: the original's can be freed */
    atomic_store(&q->frozen, true);
    struct mx_envelope env = make_env(1);
    snprintf(rcpts[0].addr, sizeof rcpts[0].addr, "user0@nowhere.test"); /* no route: 550 */
    rcpts[0].notify = MX_NOTIFY_DEFAULT;
    env.arrival_ms = qm_unix_ms();
    char qid[QM_QID_SIZE], seg[1024];
    qm_make_qid(qid, qm_unix_ms(), 0, 1);
    struct mx_queue_msg *m = qm_msgbuf_new(&env, qid, 1 << 20);
    assert_int_equal(qm_msgbuf_append(m, "Subject: lost?\r\n\r\nx\r\n", 21), 0);
    qm_msgbuf_seal(m);
    m->qw = qw;
    qm_spool_add(&qw->sp, m);
    for (int i = 0; i < 500 && (qw->n_msgs != 1 || qw->sp.inflight); i++) {
        qm_tick(NULL, qw);
        qm_ring_dispatch(&ring, false);
        usleep(1000);
    }
    assert_int_equal(qw->n_msgs, 1);
    snprintf(seg, sizeof seg, "%s", TAILQ_FIRST(&qw->ready)->seg->path);

    /* fill the disk to the last byte */
    int fd = open(filler, O_WRONLY | O_CREAT, 0640);
    static char blob[64 * 1024];
    memset(blob, 'f', sizeof blob);
    while (write(fd, blob, sizeof blob) > 0)
        ;
    while (write(fd, blob, 1) > 0)
        ;
    close(fd);

    /* the delivery fails (550), the DSN's write fails (ENOSPC) */
    atomic_store(&q->frozen, false);
    run_until(qw, &ring, dsn_attempt_over);
    for (int i = 0; i < 100; i++) { /* more turns: journal flushes and gc get their chance */
        qm_tick(NULL, qw);
        qm_ring_dispatch(&ring, false);
        usleep(1000);
    }
    for (int i = 0; i < 100 && qw->sp.inflight; i++) /* a retry may be under way */
        qm_ring_dispatch(&ring, true);
    assert_int_equal(qw->sp.inflight, 0);
    assert_int_equal(access(seg, F_OK), 0); /* the original is still on disk */

    /* a crash now: the original comes back, not finished */
    char copy[320], cmd[800];
    snprintf(copy, sizeof copy, "%s/crashcopy", tmpdir);
    snprintf(cmd, sizeof cmd, "cp -a %s %s", spool, copy);
    assert_int_equal(system(cmd), 0);
    struct qm_recovered r;
    assert_int_equal(qm_recover(copy, 1, &r), 0);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.msgs[0]->qid, qid);
    assert_int_equal(r.msgs[0]->rstate[0], QM_R_PENDING);
    qm_recovered_free(&r);

    /* space returns: the DSN is written and delivered, then the original's segment goes */
    assert_int_equal(unlink(filler), 0);
    run_until(qw, &ring, dsn_delivered);
    for (int i = 0; i < 50; i++) {
        qm_tick(NULL, qw);
        qm_ring_dispatch(&ring, false);
        usleep(1000);
    }
    assert_int_equal(access(seg, F_OK), -1);
    mx_queue_close(q);
    io_uring_queue_exit(&ring);
    char f[8192], nd[400];
    snprintf(nd, sizeof nd, "%s/new", md);
    DIR *d = opendir(nd);
    struct dirent *de;
    while ((de = readdir(d)) && de->d_name[0] == '.')
        ;
    assert_non_null(de);
    char p[900];
    snprintf(p, sizeof p, "%s/%s", nd, de->d_name);
    closedir(d);
    fd = open(p, O_RDONLY);
    ssize_t l = read(fd, f, sizeof f - 1);
    close(fd);
    assert_true(l > 0);
    f[l] = 0;
    assert_memory_equal(f, "Return-Path: <>\r\nDelivered-To: alice@example.org\r\n", 50);
    assert_non_null(strstr(f, "Final-Recipient: rfc822; user0@nowhere.test"));
    /* and a restart finds nothing left */
    assert_int_equal(qm_recover(spool, 1, &r), 0);
    assert_int_equal(r.n, 0);
    qm_recovered_free(&r);
    umount2(mnt, MNT_DETACH);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_vector),
        cmocka_unit_test(test_record_roundtrip),
        cmocka_unit_test(test_journal_roundtrip),
        cmocka_unit_test(test_msgbuf_limit),
        cmocka_unit_test(test_qid),
        cmocka_unit_test_setup_teardown(test_group_commit, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_recover_torn_tail, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_recover_corrupt_middle, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_recover_journal_replay, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_maildir, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_maildir_async, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_control_list, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_journal_rotation, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_dsn_notify, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_disk_full, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_dsn_disk_full, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
