/*
 * qm_maildir.c - local delivery into a Maildir (the embedded default
 * route): write DIR/tmp/NAME, fsync it, rename to DIR/new/NAME, fsync the
 * directory; only then is the recipient delivered. The message is stored
 * as received (CRLF line ends) behind Return-Path and Delivered-To.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
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
