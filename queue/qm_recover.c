/*
 * qm_recover.c - start-up recovery of the spool: read every segment and
 * journal of every worker directory, verify CRCs, keep broken bytes in
 * corrupt/ (never drop them silently), replay the journals, delete what is
 * finished and write one compacted journal per worker so the old journals
 * can go. Runs before the workers start, so plain blocking I/O is fine.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue/qm_internal.h"

void qm_msg_free(struct qm_msg *m)
{
    if (!m)
        return;
    qm_env_free(&m->env);
    free(m->rstate);
    free(m->buf);
    free(m);
}

void qm_msg_apply(struct qm_msg *m, const struct qm_jentry *e)
{
    switch (e->type) {
    case QM_J_DELIVERED:
    case QM_J_FAILED:
        if (e->rcpt < m->env.n_rcpts)
            m->rstate[e->rcpt] = e->type == QM_J_DELIVERED ? QM_R_DELIVERED : QM_R_FAILED;
        break;
    case QM_J_DEFERRED:
        m->attempts = e->attempts;
        m->next_attempt_ms = e->when_ms;
        snprintf(m->last_error, sizeof m->last_error, "%s", e->err);
        m->state = QM_M_DEFERRED;
        break;
    case QM_J_HELD:
        m->held = true;
        break;
    case QM_J_RELEASED:
        m->held = false;
        m->quarantined = false; /* `release` lets a quarantined message go too */
        break;
    case QM_J_DELETED:
        m->deleted = true;
        break;
    case QM_J_WARNED:
        m->delay_warned = true;
        break;
    }
}

int qm_msg_load(struct qm_msg *m)
{
    if (m->buf)
        return 0;
    int fd = open(m->seg->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    uint8_t *buf = malloc(m->rec_len ? m->rec_len : 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    int rc = 0;
    while (got < m->rec_len) {
        ssize_t r = pread(fd, buf + got, m->rec_len - got, (off_t)(m->rec_off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = r < 0 ? -errno : -EIO;
            break;
        }
        got += (size_t)r;
    }
    close(fd);
    size_t total = 0;
    if (rc == 0 && (qm_record_check(buf, m->rec_len, &total) != 0 || total != m->rec_len ||
                    strncmp((const char *)buf + 24, m->qid, QM_QID_SIZE) != 0))
        rc = -EBADMSG; /* the spool changed under us: never deliver other bytes */
    if (rc < 0) {
        free(buf);
        return rc;
    }
    uint32_t env_len = (uint32_t)buf[8] | (uint32_t)buf[9] << 8 | (uint32_t)buf[10] << 16 |
                       (uint32_t)buf[11] << 24;
    m->buf = buf;
    m->body_off = QM_REC_HDR + env_len;
    m->body_len = total - m->body_off;
    return 0;
}

bool qm_msg_finished(const struct qm_msg *m)
{
    if (m->deleted)
        return true;
    for (size_t i = 0; i < m->env.n_rcpts; i++)
        if (m->rstate[i] == QM_R_PENDING)
            return false;
    return true;
}

static int read_file(const char *path, uint8_t **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    *out = buf;
    *len = got;
    return 0;
}

/* Keep bytes that did not verify, for a human to look at. */
static void keep_corrupt(const char *spool, const char *dname, const char *fname, size_t off,
                         const uint8_t *p, size_t n, const char *why)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/corrupt/%s-%s-%zu", spool, dname, fname, off);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    bool ok = false;
    if (fd >= 0) {
        size_t done = 0;
        while (done < n) {
            ssize_t w = write(fd, p + done, n - done);
            if (w <= 0)
                break;
            done += (size_t)w;
        }
        ok = done == n && fsync(fd) == 0;
        close(fd);
    }
    fprintf(stderr, "mxgate[queue]: recovery: %s/%s offset %zu: %s, %zu bytes %s %s\n", dname,
            fname, off, why, n, ok ? "kept in" : "COULD NOT BE SAVED to", path);
}

struct scan {
    const char *spool;
    struct qm_recovered *r;
    size_t cap_msgs, cap_segs;
};

static int add_msg(struct scan *sc, struct qm_msg *m)
{
    struct qm_recovered *r = sc->r;
    if (r->n == sc->cap_msgs) {
        size_t cap = sc->cap_msgs ? sc->cap_msgs * 2 : 64;
        struct qm_msg **nm = realloc(r->msgs, cap * sizeof *nm);
        if (!nm)
            return -ENOMEM;
        r->msgs = nm;
        sc->cap_msgs = cap;
    }
    r->msgs[r->n++] = m;
    return 0;
}

/* Parse one segment: every record that verifies becomes a message. */
static int scan_segment(struct scan *sc, const char *dname, unsigned dir_index,
                        const char *fname, struct qm_seg *seg)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/%s", sc->spool, dname, fname);
    uint8_t *buf;
    size_t len;
    int rc = read_file(path, &buf, &len);
    if (rc < 0) {
        fprintf(stderr, "mxgate[queue]: recovery: cannot read %s: %s\n", path, strerror(-rc));
        return rc;
    }
    size_t off = 0;
    while (off < len) {
        struct qm_record rec;
        long n = qm_record_decode(buf + off, len - off, &rec);
        if (n > 0) {
            struct qm_msg *m = calloc(1, sizeof *m);
            uint8_t *body = malloc(rec.body_len ? rec.body_len : 1);
            uint8_t *rs = calloc(rec.env.n_rcpts ? rec.env.n_rcpts : 1, 1);
            if (!m || !body || !rs || add_msg(sc, m) < 0) {
                free(m);
                free(body);
                free(rs);
                qm_env_free(&rec.env);
                free(buf);
                return -ENOMEM;
            }
            memcpy(body, rec.body, rec.body_len);
            memcpy(m->qid, rec.qid, sizeof m->qid);
            m->env = rec.env;
            m->buf = body;
            m->body_off = 0;
            m->body_len = rec.body_len;
            m->rstate = rs;
            m->quarantined = m->env.quarantine;
            m->seg = seg;
            m->rec_off = off;
            m->rec_len = (size_t)n;
            m->dir_index = dir_index;
            seg->live++;
            sc->r->n_records++;
            off += (size_t)n;
            continue;
        }
        if (n == -ENOMEM) {
            free(buf);
            return -ENOMEM;
        }
        if (n == -EAGAIN) {
            /* the last record was cut short: its commit never completed */
            sc->r->n_torn++;
            keep_corrupt(sc->spool, dname, fname, off, buf + off, len - off,
                         "torn tail record (never acknowledged) discarded");
            break;
        }
        /* Bad record: find the next offset where a record verifies. */
        size_t next = off + 1;
        for (; next < len; next++) {
            if (buf[next] != 'M')
                continue;
            size_t t;
            if (qm_record_check(buf + next, len - next, &t) == 0)
                break;
        }
        sc->r->n_corrupt++;
        keep_corrupt(sc->spool, dname, fname, off, buf + off, next - off,
                     "record failed its CRC/format check");
        off = next;
    }
    free(buf);
    return 0;
}

struct jfile {
    char path[1024];
    uint64_t seq;
};

static int cmp_jfile(const void *a, const void *b)
{
    const struct jfile *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int cmp_msg(const void *a, const void *b)
{
    const struct qm_msg *const *x = a, *const *y = b;
    return strcmp((*x)->qid, (*y)->qid);
}

static struct qm_msg *find_msg(struct qm_recovered *r, const char *qid)
{
    size_t lo = 0, hi = r->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(r->msgs[mid]->qid, qid);
        if (c == 0)
            return r->msgs[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static void replay_journal(struct scan *sc, const struct jfile *jf)
{
    uint8_t *buf;
    size_t len;
    if (read_file(jf->path, &buf, &len) < 0)
        return;
    size_t off = 0;
    while (off < len) {
        struct qm_jentry e;
        long n = qm_jentry_decode(buf + off, len - off, &e);
        if (n <= 0) {
            const char *slash = strrchr(jf->path, '/');
            char dname[64] = "w";
            const char *d0 = slash;
            while (d0 > jf->path && d0[-1] != '/')
                d0--;
            snprintf(dname, sizeof dname, "%.*s", (int)(slash - d0), d0);
            keep_corrupt(sc->spool, dname, slash + 1, off, buf + off, len - off,
                         n == -EAGAIN ? "torn journal tail" : "journal entry failed its CRC");
            if (n != -EAGAIN)
                sc->r->n_corrupt++;
            break;
        }
        struct qm_msg *m = find_msg(sc->r, e.qid);
        if (m)
            qm_msg_apply(m, &e);
        sc->r->n_jentries++;
        off += (size_t)n;
    }
    free(buf);
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The state of every live message, one compacted journal per worker. */
static int write_compacted(struct scan *sc, unsigned n_workers, uint64_t seq,
                           struct qm_msg **fin, size_t n_fin)
{
    for (unsigned wi = 0; wi < n_workers; wi++) {
        size_t cap = 4096, len = 0;
        uint8_t *buf = malloc(cap);
        if (!buf)
            return -ENOMEM;
        for (size_t i = 0; i < sc->r->n; i++) {
            struct qm_msg *m = sc->r->msgs[i];
            if (m->dir_index % n_workers != wi)
                continue;
            struct qm_jentry e = {0};
            memcpy(e.qid, m->qid, sizeof e.qid);
            size_t need = (m->env.n_rcpts + 4) * (QM_J_HDR + QM_J_ERR_MAX);
            if (len + need > cap) {
                while (len + need > cap)
                    cap *= 2;
                uint8_t *nb = realloc(buf, cap);
                if (!nb) {
                    free(buf);
                    return -ENOMEM;
                }
                buf = nb;
            }
            for (size_t k = 0; k < m->env.n_rcpts; k++) {
                if (m->rstate[k] == QM_R_PENDING)
                    continue;
                e.type = m->rstate[k] == QM_R_DELIVERED ? QM_J_DELIVERED : QM_J_FAILED;
                e.rcpt = (uint32_t)k;
                len += qm_jentry_encode(&e, buf + len);
            }
            if (m->attempts || m->state == QM_M_DEFERRED) {
                e.type = QM_J_DEFERRED;
                e.rcpt = 0;
                e.attempts = m->attempts;
                e.when_ms = m->next_attempt_ms;
                snprintf(e.err, sizeof e.err, "%s", m->last_error);
                len += qm_jentry_encode(&e, buf + len);
                e.err[0] = 0;
                e.attempts = 0;
                e.when_ms = 0;
            }
            if (m->env.quarantine && !m->quarantined) {
                e.type = QM_J_RELEASED; /* the record alone would quarantine it again */
                len += qm_jentry_encode(&e, buf + len);
            }
            if (m->held) {
                e.type = QM_J_HELD;
                len += qm_jentry_encode(&e, buf + len);
            }
            if (m->delay_warned) {
                e.type = QM_J_WARNED;
                len += qm_jentry_encode(&e, buf + len);
            }
        }
        /* finished messages in segments that stay: say so, or they come back */
        for (size_t i = 0; i < n_fin; i++) {
            struct qm_msg *m = fin[i];
            /* also when its own file goes: a copy elsewhere (deferred store
             * or its old segment) must not come back */
            if (m->dir_index % n_workers != wi)
                continue;
            if (len + QM_J_HDR + QM_J_ERR_MAX > cap) {
                cap *= 2;
                uint8_t *nb = realloc(buf, cap);
                if (!nb) {
                    free(buf);
                    return -ENOMEM;
                }
                buf = nb;
            }
            struct qm_jentry e = {.type = QM_J_DELETED};
            memcpy(e.qid, m->qid, sizeof e.qid);
            len += qm_jentry_encode(&e, buf + len);
        }
        char path[1024];
        snprintf(path, sizeof path, "%s/w%u", sc->spool, wi);
        mkdir(path, 0750);
        snprintf(path, sizeof path, "%s/w%u/journal-%016llx", sc->spool, wi,
                 (unsigned long long)(seq + wi));
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
        if (fd < 0) {
            free(buf);
            return -errno;
        }
        int rc = write_all(fd, buf, len);
        if (rc == 0 && fdatasync(fd) < 0)
            rc = -errno;
        close(fd);
        free(buf);
        if (rc < 0)
            return rc;
        snprintf(path, sizeof path, "%s/w%u", sc->spool, wi);
        int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    return 0;
}

static bool parse_seq(const char *name, const char *prefix, uint64_t *seq)
{
    size_t pl = strlen(prefix);
    if (strncmp(name, prefix, pl) != 0 || strlen(name) != pl + 16)
        return false;
    char *end;
    *seq = strtoull(name + pl, &end, 16);
    return *end == 0;
}

int qm_recover(const char *spool, unsigned n_workers, struct qm_recovered *out)
{
    memset(out, 0, sizeof *out);
    if (n_workers == 0)
        n_workers = 1;
    struct scan sc = {.spool = spool, .r = out};
    char path[1024];
    if (mkdir(spool, 0750) < 0 && errno != EEXIST)
        return -errno;
    snprintf(path, sizeof path, "%s/corrupt", spool);
    if (mkdir(path, 0750) < 0 && errno != EEXIST)
        return -errno;
    DIR *d = opendir(spool);
    if (!d)
        return -errno;
    struct jfile *jfs = NULL;
    size_t n_jf = 0, cap_jf = 0;
    int rc = 0;
    struct dirent *de;
    /* seg pointers of every segment found, with their dir index */
    struct qm_seg **segs = NULL;
    unsigned *seg_dir = NULL;
    size_t n_segs = 0, cap_segs = 0;
    while (rc == 0 && (de = readdir(d))) {
        char *end;
        if (de->d_name[0] != 'w' || !de->d_name[1])
            continue;
        unsigned long idx = strtoul(de->d_name + 1, &end, 10);
        if (*end || idx > 100000)
            continue;
        snprintf(path, sizeof path, "%s/%s", spool, de->d_name);
        DIR *wd = opendir(path);
        if (!wd)
            continue;
        struct dirent *fe;
        /* segments in sequence order keep queue order stable */
        struct jfile *segf = NULL;
        size_t n_segf = 0, cap_segf = 0;
        while ((fe = readdir(wd))) {
            uint64_t seq;
            /* deferred-store files hold records exactly like segments */
            bool is_seg = parse_seq(fe->d_name, "seg-", &seq) ||
                          parse_seq(fe->d_name, "dstore-", &seq);
            bool is_j = !is_seg && parse_seq(fe->d_name, "journal-", &seq);
            if (!is_seg && !is_j)
                continue;
            if (seq > out->max_seq)
                out->max_seq = seq;
            struct jfile **arr = is_seg ? &segf : &jfs;
            size_t *n = is_seg ? &n_segf : &n_jf, *cap = is_seg ? &cap_segf : &cap_jf;
            if (*n == *cap) {
                size_t nc = *cap ? *cap * 2 : 16;
                struct jfile *na = realloc(*arr, nc * sizeof *na);
                if (!na) {
                    rc = -ENOMEM;
                    break;
                }
                *arr = na;
                *cap = nc;
            }
            snprintf((*arr)[*n].path, sizeof(*arr)[*n].path, "%s/%s/%s", spool, de->d_name,
                     fe->d_name);
            (*arr)[*n].seq = seq;
            (*n)++;
        }
        closedir(wd);
        if (rc == 0 && n_segf)
            qsort(segf, n_segf, sizeof *segf, cmp_jfile);
        for (size_t i = 0; rc == 0 && i < n_segf; i++) {
            struct qm_seg *s = calloc(1, sizeof *s);
            if (!s || n_segs == cap_segs) {
                size_t nc = cap_segs ? cap_segs * 2 : 16;
                struct qm_seg **ns = s ? realloc(segs, nc * sizeof *ns) : NULL;
                unsigned *nd = ns ? realloc(seg_dir, nc * sizeof *nd) : NULL;
                if (ns)
                    segs = ns;
                if (!nd) {
                    free(s);
                    rc = -ENOMEM;
                    break;
                }
                seg_dir = nd;
                cap_segs = nc;
            }
            s->fd = -1;
            snprintf(s->path, sizeof s->path, "%s", segf[i].path);
            s->store = strncmp(strrchr(segf[i].path, '/') + 1, "dstore-", 7) == 0;
            s->seq = segf[i].seq;
            segs[n_segs] = s;
            seg_dir[n_segs++] = (unsigned)idx;
            const char *fname = strrchr(segf[i].path, '/') + 1;
            rc = scan_segment(&sc, de->d_name, (unsigned)idx, fname, s);
            if (rc == -ENOMEM)
                break;
            rc = 0;
        }
        free(segf);
    }
    closedir(d);
    if (rc == 0) {
        if (out->n)
            qsort(out->msgs, out->n, sizeof *out->msgs, cmp_msg);
        /* The same qid twice: a record rewritten after a resync, or a message
         * copied to the deferred store whose old segment was not removed yet
         * (the same bytes). Keep one, the store's copy if there is one, so
         * that the old segment can go now. */
        size_t w = 0;
        for (size_t i = 0; i < out->n; i++) {
            if (w && strcmp(out->msgs[w - 1]->qid, out->msgs[i]->qid) == 0) {
                struct qm_msg *drop = out->msgs[i];
                if (drop->seg->store && !out->msgs[w - 1]->seg->store) {
                    drop = out->msgs[w - 1];
                    out->msgs[w - 1] = out->msgs[i];
                }
                drop->seg->live--;
                /* a snapshot must still end the old copy once the message finishes */
                if (drop->seg->live && qm_seg_add_moved(drop->seg, drop->qid) < 0)
                    rc = -ENOMEM;
                qm_msg_free(drop);
                continue;
            }
            out->msgs[w++] = out->msgs[i];
        }
        out->n = w;
        if (n_jf)
            qsort(jfs, n_jf, sizeof *jfs, cmp_jfile);
        for (size_t i = 0; i < n_jf; i++)
            replay_journal(&sc, &jfs[i]);
        /* finished messages leave the queue; their segment may stay for others */
        w = 0;
        struct qm_msg **fin = malloc((out->n + 1) * sizeof *fin);
        size_t n_fin = 0;
        if (!fin)
            rc = -ENOMEM;
        for (size_t i = 0; fin && i < out->n; i++) {
            struct qm_msg *m = out->msgs[i];
            if (qm_msg_finished(m)) {
                m->seg->live--;
                out->n_finished++;
                fin[n_fin++] = m;
                continue;
            }
            out->msgs[w++] = m;
        }
        if (fin) {
            out->n = w;
            rc = write_compacted(&sc, n_workers, out->max_seq + 1, fin, n_fin);
            out->max_seq += n_workers + 1;
            for (size_t i = 0; i < n_fin; i++) {
                /* the segment stays for others: later journal snapshots must
                 * still say this one is finished */
                if (fin[i]->seg->live > 0 && qm_seg_add_done(fin[i]->seg, fin[i]->qid) < 0)
                    rc = -ENOMEM;
                qm_msg_free(fin[i]);
            }
            free(fin);
        }
    }
    if (rc == 0) {
        /* the compacted journals are durable: the old ones can go */
        for (size_t i = 0; i < n_jf; i++)
            unlink(jfs[i].path);
        size_t w = 0;
        for (size_t i = 0; i < n_segs; i++) {
            if (segs[i]->live == 0) {
                unlink(segs[i]->path);
                out->n_segs_deleted++;
                qm_seg_free(segs[i]);
                continue;
            }
            seg_dir[w] = seg_dir[i];
            segs[w++] = segs[i];
        }
        n_segs = w;
    }
    free(jfs);
    out->segs = segs;
    out->seg_dir = seg_dir;
    out->n_segs = n_segs;
    if (rc < 0)
        qm_recovered_free(out);
    return rc;
}

void qm_recovered_free(struct qm_recovered *r)
{
    for (size_t i = 0; i < r->n; i++)
        qm_msg_free(r->msgs[i]);
    for (size_t i = 0; i < r->n_segs; i++)
        qm_seg_free(r->segs[i]);
    free(r->msgs);
    free(r->segs);
    free(r->seg_dir);
    memset(r, 0, sizeof *r);
}
