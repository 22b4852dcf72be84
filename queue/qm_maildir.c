/*
 * qm_maildir.c - local delivery into a Maildir (the embedded default
 * route): write DIR/tmp/NAME, fsync it, rename to DIR/new/NAME, fsync the
 * directory; only then is the recipient delivered. The message is stored
 * as received (CRLF line ends) behind Return-Path and Delivered-To.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <liburing.h>
#include <unistd.h>

#include "queue/qm_internal.h"

static int mkdir_p(const char *dir)
{
    char tmp[1024];
    if (snprintf(tmp, sizeof tmp, "%s", dir) >= (int)sizeof tmp)
        return -ENAMETOOLONG;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(tmp, 0750) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(tmp, 0750) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

int qm_maildir_deliver(const char *dir, const char *qid, const char *sender, const char *rcpt,
                       const uint8_t *msg, size_t len, char *name_out, size_t name_size)
{
    static const char *const subs[] = {"tmp", "new", "cur"};
    char path[1024], tmp[1100], fin[1100], name[256];
    for (int i = 0; i < 3; i++) {
        if (snprintf(path, sizeof path, "%s/%s", dir, subs[i]) >= (int)sizeof path)
            return -ENAMETOOLONG;
        int rc = mkdir_p(path);
        if (rc < 0)
            return rc;
    }
    /* unique per process, queue id and recipient: time.qid_counter.host */
    static _Atomic unsigned long counter;
    char host[128] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    for (char *h = host; *h; h++)
        if (*h == '/' || *h == ':')
            *h = '_';
    snprintf(name, sizeof name, "%llu.%s_%lu.%s", (unsigned long long)(qm_unix_ms() / 1000),
             qid, atomic_fetch_add(&counter, 1), host);
    snprintf(tmp, sizeof tmp, "%s/tmp/%s", dir, name);
    snprintf(fin, sizeof fin, "%s/new/%s", dir, name);

    char head[2 * MX_ADDR_MAX + 64];
    int hl = snprintf(head, sizeof head, "Return-Path: <%s>\r\nDelivered-To: %s\r\n", sender,
                      rcpt);
    if (hl < 0 || (size_t)hl >= sizeof head)
        return -EINVAL;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd < 0)
        return -errno;
    struct iovec iov[2] = {{head, (size_t)hl}, {(void *)msg, len}};
    size_t total = (size_t)hl + len, done = 0;
    int rc = 0;
    while (done < total) {
        ssize_t w = writev(fd, iov, 2);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rc = w < 0 ? -errno : -EIO;
            break;
        }
        done += (size_t)w;
        /* advance the iovecs past what was written */
        size_t adv = (size_t)w;
        for (int i = 0; i < 2; i++) {
            size_t t = adv < iov[i].iov_len ? adv : iov[i].iov_len;
            iov[i].iov_base = (char *)iov[i].iov_base + t;
            iov[i].iov_len -= t;
            adv -= t;
        }
    }
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, fin) < 0)
        rc = -errno;
    if (rc < 0) {
        unlink(tmp);
        return rc;
    }
    snprintf(path, sizeof path, "%s/new", dir);
    rc = fsync_dir(path);
    if (rc < 0)
        return rc;
    if (name_out)
        snprintf(name_out, name_size, "%s", name);
    return 0;
}

/* ---- asynchronous delivery through the worker's ring ---------------------- */

/*
 * The synchronous path above costs two blocking fsyncs per recipient, which
 * stalls every session on the worker. Here the expensive parts run on the
 * ring: write + fsync of the tmp file as one linked pair, then (after the
 * cheap rename) ONE fsync of new/ covers every file renamed into it during
 * the same loop turn. Only open, close and rename stay synchronous: they
 * touch metadata in memory, they do not wait for the disk.
 */
struct qm_md_job {
    TAILQ_ENTRY(qm_md_job) link;
    struct mx_uring_op op_write, op_sync;
    struct qm_md *md;
    int fd;
    unsigned pending;
    int err;
    size_t total;
    struct iovec iov[2];
    char head[2 * MX_ADDR_MAX + 64];
    char dir[1024];
    char tmp[1100], fin[1100];
    qm_md_done_fn done;
    void *arg;
};

struct qm_md_dirsync {
    struct mx_uring_op op;
    struct qm_md *md;
    int fd;
    struct qm_md_jobq jobs;
};

void qm_md_init(struct qm_md *md, struct io_uring *ring)
{
    memset(md, 0, sizeof *md);
    md->ring = ring;
    TAILQ_INIT(&md->renamed);
}

static struct io_uring_sqe *md_sqe(struct qm_md *md)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(md->ring);
    if (!sqe) {
        io_uring_submit(md->ring);
        sqe = io_uring_get_sqe(md->ring);
    }
    return sqe;
}

static void md_job_free(struct qm_md_job *j)
{
    free(j);
}

static void md_file_done(struct qm_md_job *j)
{
    struct qm_md *md = j->md;
    md->inflight--;
    close(j->fd);
    j->fd = -1;
    if (j->err == 0 && rename(j->tmp, j->fin) < 0)
        j->err = -errno;
    if (j->err < 0) {
        unlink(j->tmp);
        j->done(j->arg, j->err);
        md_job_free(j);
        return;
    }
    /* durable once new/ is synced: joins the next directory fsync */
    TAILQ_INSERT_TAIL(&md->renamed, j, link);
}

static void md_write_done(struct mx_uring_op *op, int res, uint32_t flags)
{
    (void)flags;
    struct qm_md_job *j = (struct qm_md_job *)((char *)op - offsetof(struct qm_md_job, op_write));
    if (j->err == 0 && (res < 0 || (size_t)res != j->total))
        j->err = res < 0 ? res : -EIO;
    if (--j->pending == 0)
        md_file_done(j);
}

static void md_sync_done(struct mx_uring_op *op, int res, uint32_t flags)
{
    (void)flags;
    struct qm_md_job *j = (struct qm_md_job *)((char *)op - offsetof(struct qm_md_job, op_sync));
    if (j->err == 0 && res < 0)
        j->err = res;
    if (--j->pending == 0)
        md_file_done(j);
}

int qm_maildir_start(struct qm_md *md, const char *dir, const char *qid, const char *sender,
                     const char *rcpt, const uint8_t *msg, size_t len, qm_md_done_fn done,
                     void *arg)
{
    struct qm_md_job *j = calloc(1, sizeof *j);
    if (!j)
        return -ENOMEM;
    j->md = md;
    j->done = done;
    j->arg = arg;
    j->fd = -1;
    if (snprintf(j->dir, sizeof j->dir, "%s", dir) >= (int)sizeof j->dir) {
        free(j);
        return -ENAMETOOLONG;
    }
    static const char *const subs[] = {"tmp", "new", "cur"};
    char path[1100];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, subs[i]);
        struct stat st;
        if (stat(path, &st) == 0)
            continue; /* the common case: one stat, no mkdir */
        int rc = mkdir_p(path);
        if (rc < 0) {
            free(j);
            return rc;
        }
    }
    static _Atomic unsigned long counter;
    char host[128] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    for (char *h = host; *h; h++)
        if (*h == '/' || *h == ':')
            *h = '_';
    char name[256];
    snprintf(name, sizeof name, "%llu.%s_%lu.%s", (unsigned long long)(qm_unix_ms() / 1000), qid,
             atomic_fetch_add(&counter, 1), host);
    snprintf(j->tmp, sizeof j->tmp, "%s/tmp/%s", dir, name);
    snprintf(j->fin, sizeof j->fin, "%s/new/%s", dir, name);
    int hl = snprintf(j->head, sizeof j->head, "Return-Path: <%s>\r\nDelivered-To: %s\r\n", sender,
                      rcpt);
    if (hl < 0 || (size_t)hl >= sizeof j->head) {
        free(j);
        return -EINVAL;
    }
    j->fd = open(j->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (j->fd < 0) {
        int e = -errno;
        free(j);
        return e;
    }
    j->iov[0] = (struct iovec){j->head, (size_t)hl};
    j->iov[1] = (struct iovec){(void *)msg, len};
    j->total = (size_t)hl + len;
    if (io_uring_sq_space_left(md->ring) < 2)
        io_uring_submit(md->ring);
    struct io_uring_sqe *w = md_sqe(md);
    if (!w) {
        close(j->fd);
        unlink(j->tmp);
        free(j);
        return -EBUSY;
    }
    io_uring_prep_writev(w, j->fd, j->iov, 2, 0);
    j->op_write.done = md_write_done;
    io_uring_sqe_set_data(w, &j->op_write);
    w->flags |= IOSQE_IO_LINK;
    struct io_uring_sqe *s = md_sqe(md);
    io_uring_prep_fsync(s, j->fd, 0);
    j->op_sync.done = md_sync_done;
    io_uring_sqe_set_data(s, &j->op_sync);
    j->pending = 2;
    md->inflight++;
    return 0;
}

static void md_dirsync_done(struct mx_uring_op *op, int res, uint32_t flags)
{
    (void)flags;
    struct qm_md_dirsync *d = (struct qm_md_dirsync *)op;
    d->md->inflight--;
    if (res == 0)
        d->md->n_dir_fsync++;
    close(d->fd);
    struct qm_md_job *j;
    while ((j = TAILQ_FIRST(&d->jobs))) {
        TAILQ_REMOVE(&d->jobs, j, link);
        j->done(j->arg, res);
        md_job_free(j);
    }
    free(d);
}

void qm_maildir_flush(struct qm_md *md)
{
    struct qm_md_job *j;
    while ((j = TAILQ_FIRST(&md->renamed))) {
        /* one fsync of DIR/new for every job renamed into it */
        struct qm_md_dirsync *d = calloc(1, sizeof *d);
        char path[1100];
        snprintf(path, sizeof path, "%s/new", j->dir);
        int fd = d ? open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
        struct io_uring_sqe *sqe = fd >= 0 ? md_sqe(md) : NULL;
        if (!sqe) {
            int err = !d ? -ENOMEM : fd < 0 ? -errno : -EBUSY;
            if (fd >= 0)
                close(fd);
            free(d);
            /* fail every job of this directory: the rename may not be durable */
            struct qm_md_job *k, *next;
            for (k = TAILQ_FIRST(&md->renamed); k; k = next) {
                next = TAILQ_NEXT(k, link);
                if (strcmp(k->dir, j->dir) == 0) {
                    TAILQ_REMOVE(&md->renamed, k, link);
                    k->done(k->arg, err);
                    md_job_free(k);
                }
            }
            continue;
        }
        d->md = md;
        d->fd = fd;
        d->op.done = md_dirsync_done;
        TAILQ_INIT(&d->jobs);
        struct qm_md_job *k, *next;
        for (k = TAILQ_FIRST(&md->renamed); k; k = next) {
            next = TAILQ_NEXT(k, link);
            if (strcmp(k->dir, j->dir) == 0) {
                TAILQ_REMOVE(&md->renamed, k, link);
                TAILQ_INSERT_TAIL(&d->jobs, k, link);
            }
        }
        io_uring_prep_fsync(sqe, fd, 0);
        io_uring_sqe_set_data(sqe, &d->op);
        md->inflight++;
    }
}
