/*
 * qm_spool.c - the spool's bytes on disk: CRC32C, record and journal
 * encoding, message buffers, and the per-worker writer that appends records
 * to segment files and entries to the journal through the worker's
 * io_uring ring with group commit (one fdatasync per file per loop tick,
 * callbacks only after it completed).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "queue/qm_internal.h"

/* ---- CRC32C ------------------------------------------------------------ */

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t n)
{
    uint64_t c64 = c;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c64 = __builtin_ia32_crc32di(c64, v);
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c64;
    while (n--)
        c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}
#endif

/* Slicing-by-8 in software; the SSE4.2 instruction where the CPU has it. */
uint32_t qm_crc32c(uint32_t crc, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    uint32_t c = ~crc;
#if defined(__x86_64__)
    static int hw = -1;
    if (hw < 0)
        hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    if (hw)
        return ~crc_hw(c, p, len);
#endif
    pthread_once(&crc_once, crc_init);
    while (len >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
            crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^ crc_table[3][p[4]] ^
            crc_table[2][p[5]] ^ crc_table[1][p[6]] ^ crc_table[0][p[7]];
        p += 8;
        len -= 8;
    }
    while (len--)
        c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
    return ~c;
}

/* ---- little-endian helpers ------------------------------------------- */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}
static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* ---- envelope encoding ----------------------------------------------- */

/*
 * Strings are u16 length + bytes (no NUL); a field never exceeds the size
 * of its struct member minus one, which the decoder enforces.
 */
static size_t str_size(const char *s, size_t max)
{
    return 2 + strnlen(s, max - 1);
}

static uint8_t *put_str(uint8_t *p, const char *s, size_t max)
{
    size_t n = strnlen(s, max - 1);
    put16(p, (uint16_t)n);
    memcpy(p + 2, s, n);
    return p + 2 + n;
}

#define ENV_FIXED (8 + 3 + 8 + 2 + 4)

size_t qm_env_size(const struct mx_envelope *env)
{
    size_t n = ENV_FIXED + str_size(env->mail_from, sizeof env->mail_from) +
               str_size(env->envid, sizeof env->envid) + 2 + sizeof env->client +
               str_size(env->client_text, sizeof env->client_text) +
               str_size(env->helo, sizeof env->helo) + str_size(env->tls, sizeof env->tls) +
               str_size(env->session_id, sizeof env->session_id);
    for (size_t i = 0; i < env->n_rcpts; i++)
        n += str_size(env->rcpts[i].addr, MX_ADDR_MAX) + 1 +
             str_size(env->rcpts[i].orcpt, MX_DSN_ORCPT_MAX);
    if (env->quarantine)
        n += str_size(env->quarantine_reason, sizeof env->quarantine_reason) + 4;
    return n;
}

size_t qm_env_encode(const struct mx_envelope *env, uint8_t *out)
{
    uint8_t *p = out;
    p = put_str(p, env->mail_from, sizeof env->mail_from);
    put64(p, env->size_param);
    p += 8;
    *p++ = (uint8_t)env->body;
    *p++ = env->smtputf8 ? 1 : 0;
    *p++ = (uint8_t)env->ret;
    p = put_str(p, env->envid, sizeof env->envid);
    put16(p, sizeof env->client);
    memcpy(p + 2, &env->client, sizeof env->client);
    p += 2 + sizeof env->client;
    p = put_str(p, env->client_text, sizeof env->client_text);
    p = put_str(p, env->helo, sizeof env->helo);
    p = put_str(p, env->tls, sizeof env->tls);
    put64(p, env->arrival_ms);
    p += 8;
    p = put_str(p, env->session_id, sizeof env->session_id);
    put16(p, env->quarantine ? QM_ENV_F_QUARANTINE : 0); /* flags: what follows the rcpts */
    p += 2;
    put32(p, (uint32_t)env->n_rcpts);
    p += 4;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        p = put_str(p, env->rcpts[i].addr, MX_ADDR_MAX);
        *p++ = env->rcpts[i].notify;
        p = put_str(p, env->rcpts[i].orcpt, MX_DSN_ORCPT_MAX);
    }
    if (env->quarantine) {
        p = put_str(p, env->quarantine_reason, sizeof env->quarantine_reason);
        put32(p, env->quarantine_retention_s);
        p += 4;
    }
    return (size_t)(p - out);
}

struct rd {
    const uint8_t *p, *end;
    bool bad;
};

static const uint8_t *take(struct rd *r, size_t n)
{
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *q = r->p;
    r->p += n;
    return q;
}

static void get_str(struct rd *r, char *dst, size_t max)
{
    const uint8_t *l = take(r, 2);
    dst[0] = 0;
    if (!l)
        return;
    size_t n = get16(l);
    if (n >= max) {
        r->bad = true;
        return;
    }
    const uint8_t *s = take(r, n);
    if (!s)
        return;
    memcpy(dst, s, n);
    dst[n] = 0;
    if (memchr(dst, 0, n))
        r->bad = true; /* embedded NUL: not something we wrote */
}

static uint64_t get_u(struct rd *r, size_t n)
{
    const uint8_t *p = take(r, n);
    if (!p)
        return 0;
    return n == 1 ? p[0] : n == 2 ? get16(p) : n == 4 ? get32(p) : get64(p);
}

int qm_env_decode(const uint8_t *buf, size_t len, struct mx_envelope *env)
{
    struct rd r = {buf, buf + len, false};
    memset(env, 0, sizeof *env);
    get_str(&r, env->mail_from, sizeof env->mail_from);
    env->size_param = get_u(&r, 8);
    unsigned body = (unsigned)get_u(&r, 1), utf8 = (unsigned)get_u(&r, 1),
             ret = (unsigned)get_u(&r, 1);
    if (body > MX_BODY_BINARYMIME || utf8 > 1 || ret > MX_RET_HDRS)
        return -EBADMSG;
    env->body = (enum mx_body_type)body;
    env->smtputf8 = utf8;
    env->ret = (enum mx_dsn_ret)ret;
    get_str(&r, env->envid, sizeof env->envid);
    size_t cl = (size_t)get_u(&r, 2);
    if (!r.bad && cl != sizeof env->client)
        return -EBADMSG; /* we always write the whole sockaddr_storage */
    const uint8_t *c = take(&r, cl);
    if (c)
        memcpy(&env->client, c, cl);
    get_str(&r, env->client_text, sizeof env->client_text);
    get_str(&r, env->helo, sizeof env->helo);
    get_str(&r, env->tls, sizeof env->tls);
    env->arrival_ms = get_u(&r, 8);
    get_str(&r, env->session_id, sizeof env->session_id);
    unsigned flags = (unsigned)get_u(&r, 2);
    if (flags & ~(unsigned)QM_ENV_F_QUARANTINE)
        return -EBADMSG; /* a flag we never write */
    uint32_t n = (uint32_t)get_u(&r, 4);
    if (r.bad)
        return -EBADMSG;
    /* every recipient takes at least 5 bytes: bounds n before allocating */
    if (n > (size_t)(r.end - r.p) / 5)
        return -EBADMSG;
    if (n) {
        env->rcpts = calloc(n, sizeof *env->rcpts);
        if (!env->rcpts)
            return -ENOMEM;
    }
    env->n_rcpts = n;
    for (uint32_t i = 0; i < n && !r.bad; i++) {
        get_str(&r, env->rcpts[i].addr, MX_ADDR_MAX);
        env->rcpts[i].notify = (uint8_t)get_u(&r, 1);
        get_str(&r, env->rcpts[i].orcpt, MX_DSN_ORCPT_MAX);
    }
    if (flags & QM_ENV_F_QUARANTINE) {
        env->quarantine = true;
        get_str(&r, env->quarantine_reason, sizeof env->quarantine_reason);
        env->quarantine_retention_s = (uint32_t)get_u(&r, 4);
    }
    if (r.bad || r.p != r.end) {
        qm_env_free(env);
        return -EBADMSG;
    }
    return 0;
}

int qm_env_copy(struct mx_envelope *dst, const struct mx_envelope *src)
{
    *dst = *src;
    dst->rcpts = NULL;
    if (src->n_rcpts) {
        dst->rcpts = malloc(src->n_rcpts * sizeof *src->rcpts);
        if (!dst->rcpts)
            return -ENOMEM;
        memcpy(dst->rcpts, src->rcpts, src->n_rcpts * sizeof *src->rcpts);
    }
    return 0;
}

void qm_env_free(struct mx_envelope *env)
{
    free(env->rcpts);
    env->rcpts = NULL;
    env->n_rcpts = 0;
}

/* ---- records ------------------------------------------------------------ */

void qm_record_seal(uint8_t *rec, size_t total, size_t env_len, const char *qid)
{
    memset(rec, 0, QM_REC_HDR);
    put32(rec, QM_REC_MAGIC);
    put16(rec + 4, QM_REC_VERSION);
    put16(rec + 6, QM_REC_HDR);
    put32(rec + 8, (uint32_t)env_len);
    put64(rec + 16, total - QM_REC_HDR - env_len);
    memcpy(rec + 24, qid, strnlen(qid, QM_QID_SIZE - 1));
    put32(rec + 12, qm_crc32c(0, rec, total));
}

int qm_record_check(const uint8_t *buf, size_t len, size_t *total)
{
    if (len < 4)
        return len == 0 || memcmp(buf, "MXQ1", len) == 0 ? -EAGAIN : -EBADMSG;
    if (get32(buf) != QM_REC_MAGIC)
        return -EBADMSG;
    if (len < QM_REC_HDR)
        return -EAGAIN;
    uint32_t env_len = get32(buf + 8);
    uint64_t body_len = get64(buf + 16);
    if (get16(buf + 4) != QM_REC_VERSION || get16(buf + 6) != QM_REC_HDR ||
        env_len > QM_REC_MAX_ENV || env_len < ENV_FIXED || body_len > QM_REC_MAX_BODY)
        return -EBADMSG;
    uint64_t t = QM_REC_HDR + (uint64_t)env_len + body_len;
    if (t > len)
        return -EAGAIN;
    uint32_t want = get32(buf + 12);
    static const uint8_t zero[4];
    uint32_t c = qm_crc32c(0, buf, 12);
    c = qm_crc32c(c, zero, 4);
    c = qm_crc32c(c, buf + 16, (size_t)t - 16);
    if (c != want)
        return -EBADMSG;
    /* the qid must be printable and NUL terminated */
    const char *q = (const char *)buf + 24;
    size_t ql = strnlen(q, QM_QID_SIZE);
    if (ql == 0 || ql == QM_QID_SIZE)
        return -EBADMSG;
    for (size_t i = 0; i < ql; i++)
        if (!((q[i] >= '0' && q[i] <= '9') || (q[i] >= 'A' && q[i] <= 'Z') ||
              (q[i] >= 'a' && q[i] <= 'z')))
            return -EBADMSG;
    *total = (size_t)t;
    return 0;
}

long qm_record_decode(const uint8_t *buf, size_t len, struct qm_record *rec)
{
    size_t total;
    int rc = qm_record_check(buf, len, &total);
    if (rc < 0)
        return rc;
    memset(rec, 0, sizeof *rec);
    memcpy(rec->qid, buf + 24, QM_QID_SIZE);
    uint32_t env_len = get32(buf + 8);
    rc = qm_env_decode(buf + QM_REC_HDR, env_len, &rec->env);
    if (rc < 0)
        return rc;
    rec->body = buf + QM_REC_HDR + env_len;
    rec->body_len = total - QM_REC_HDR - env_len;
    return (long)total;
}

/* ---- journal entries ------------------------------------------------------ */

size_t qm_jentry_encode(const struct qm_jentry *e, uint8_t *out)
{
    size_t el = strnlen(e->err, QM_J_ERR_MAX);
    memset(out, 0, QM_J_HDR);
    put32(out, QM_J_MAGIC);
    out[4] = (uint8_t)e->type;
    put16(out + 6, (uint16_t)el);
    put32(out + 8, e->rcpt);
    put32(out + 12, e->attempts);
    put64(out + 16, e->when_ms);
    memcpy(out + 24, e->qid, strnlen(e->qid, QM_QID_SIZE - 1));
    memcpy(out + QM_J_HDR, e->err, el);
    uint32_t c = qm_crc32c(0, out, 48);
    c = qm_crc32c(c, out + QM_J_HDR, el);
    put32(out + 48, c);
    return QM_J_HDR + el;
}

long qm_jentry_decode(const uint8_t *buf, size_t len, struct qm_jentry *e)
{
    if (len < 4)
        return len == 0 || memcmp(buf, "MXJ1", len) == 0 ? -EAGAIN : -EBADMSG;
    if (get32(buf) != QM_J_MAGIC)
        return -EBADMSG;
    if (len < QM_J_HDR)
        return -EAGAIN;
    size_t el = get16(buf + 6);
    if (el > QM_J_ERR_MAX || buf[4] < QM_J_DELIVERED || buf[4] > QM_J_WARNED || buf[5])
        return -EBADMSG;
    if (len < QM_J_HDR + el)
        return -EAGAIN;
    uint32_t c = qm_crc32c(0, buf, 48);
    c = qm_crc32c(c, buf + QM_J_HDR, el);
    if (c != get32(buf + 48))
        return -EBADMSG;
    memset(e, 0, sizeof *e);
    e->type = (enum qm_jtype)buf[4];
    e->rcpt = get32(buf + 8);
    e->attempts = get32(buf + 12);
    e->when_ms = get64(buf + 16);
    memcpy(e->qid, buf + 24, QM_QID_SIZE);
    e->qid[QM_QID_SIZE - 1] = 0;
    memcpy(e->err, buf + QM_J_HDR, el);
    e->err[el] = 0;
    return (long)(QM_J_HDR + el);
}

/* ---- message buffers ------------------------------------------------------- */

struct mx_queue_msg *qm_msgbuf_new(const struct mx_envelope *env, const char *qid,
                                   size_t max_body)
{
    struct mx_queue_msg *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    if (qm_env_copy(&m->env, env) < 0) {
        free(m);
        return NULL;
    }
    snprintf(m->qid, sizeof m->qid, "%s", qid);
    m->env_len = qm_env_size(env);
    m->len = QM_REC_HDR + m->env_len;
    m->max_len = m->len + max_body;
    m->cap = m->len + 16384;
    m->buf = malloc(m->cap);
    if (!m->buf) {
        qm_env_free(&m->env);
        free(m);
        return NULL;
    }
    qm_env_encode(env, m->buf + QM_REC_HDR);
    return m;
}

int qm_msgbuf_append(struct mx_queue_msg *m, const void *buf, size_t len)
{
    if (m->error)
        return m->error;
    if (len > m->max_len - m->len)
        return m->error = -EFBIG;
    if (m->len + len > m->cap) {
        size_t cap = m->cap;
        while (cap < m->len + len)
            cap *= 2;
        if (cap > m->max_len)
            cap = m->max_len;
        uint8_t *nb = realloc(m->buf, cap);
        if (!nb)
            return m->error = -ENOMEM;
        m->buf = nb;
        m->cap = cap;
    }
    memcpy(m->buf + m->len, buf, len);
    m->len += len;
    return 0;
}

int qm_msgbuf_set_env(struct mx_queue_msg *m, struct mx_envelope *env)
{
    if (m->error)
        return m->error;
    size_t old_env = m->env_len, new_env = qm_env_size(env);
    size_t body = m->len - QM_REC_HDR - old_env;
    size_t len = QM_REC_HDR + new_env + body;
    if (len > m->cap) {
        uint8_t *nb = realloc(m->buf, len);
        if (!nb)
            return -ENOMEM;
        m->buf = nb;
        m->cap = len;
    }
    /* the bytes received so far move with the envelope's end */
    memmove(m->buf + QM_REC_HDR + new_env, m->buf + QM_REC_HDR + old_env, body);
    qm_env_encode(env, m->buf + QM_REC_HDR);
    m->max_len = m->max_len - old_env + new_env;
    m->len = len;
    m->env_len = new_env;
    if (m->env.rcpts != env->rcpts)
        free(m->env.rcpts);
    m->env = *env;
    return 0;
}

void qm_msgbuf_seal(struct mx_queue_msg *m)
{
    qm_record_seal(m->buf, m->len, m->env_len, m->qid);
}

void qm_msgbuf_free(struct mx_queue_msg *m)
{
    if (!m)
        return;
    qm_env_free(&m->env);
    free(m->buf);
    free(m);
}

/* ---- the writer ------------------------------------------------------------- */

/*
 * One batch = everything that was committed during one loop iteration. Its
 * SQEs form one link chain: record writes, fdatasync(segment), journal
 * write, fdatasync(journal). A failed or short write breaks the chain, so
 * the fdatasync after it completes with -ECANCELED and nobody is told
 * "durable" for bytes that may not be.
 */
struct qm_wop {
    struct mx_uring_op op;
    struct qm_batch *b;
    uint32_t expect;
    uint8_t part; /* 0 segment, 1 journal */
    bool sync;
};

struct qm_batch {
    struct qm_spool *sp;
    struct qm_msgq recs;
    uint8_t *jbuf;
    size_t jlen;       /* bytes of jbuf written at j_at */
    uint64_t j_at;     /* journal offset of that write */
    unsigned outstanding[2];
    int err[2];
    bool had[2];
    struct qm_wop *ops;
    unsigned n_ops;
    bool snapshot; /* its journal part is a snapshot after a rotation */
    struct qm_release *rel; /* segment releases that wait for its journal part */
    size_t n_rel;
};

static int dir_fsync(int dirfd)
{
    return fsync(dirfd) < 0 ? -errno : 0;
}

static int open_new_file(struct qm_spool *sp, const char *prefix, uint64_t seq, char *path,
                         size_t path_size)
{
    snprintf(path, path_size, "%s/%s-%016llx", sp->dir, prefix, (unsigned long long)seq);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd < 0)
        return -errno;
    return fd;
}

/*
 * A new segment file (or deferred-store file); the directory is fsync'd so
 * the name survives too.
 */
static int seg_roll_kind(struct qm_spool *sp, bool store)
{
    struct qm_seg *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->seq = atomic_fetch_add(sp->seq, 1);
    s->store = store;
    int fd = open_new_file(sp, store ? "dstore" : "seg", s->seq, s->path, sizeof s->path);
    if (fd < 0) {
        free(s);
        return fd;
    }
    int rc = dir_fsync(sp->dirfd);
    if (rc < 0) {
        close(fd);
        unlink(s->path);
        free(s);
        return rc;
    }
    /* the old descriptor stays open until no batch can still write to it (gc) */
    s->current = true;
    s->fd = fd;
    TAILQ_INSERT_TAIL(&sp->segs, s, link);
    if (store) {
        if (sp->store)
            sp->store->current = false;
        sp->store = s;
        sp->store_fd = fd;
        sp->store_off = 0;
    } else {
        if (sp->seg)
            sp->seg->current = false;
        sp->seg = s;
        sp->seg_fd = fd;
        sp->seg_off = 0;
    }
    return 0;
}

static int seg_roll(struct qm_spool *sp)
{
    return seg_roll_kind(sp, false);
}

int qm_spool_open(struct qm_spool *sp, const char *dir, _Atomic uint64_t *seq,
                  struct io_uring *ring)
{
    memset(sp, 0, sizeof *sp);
    sp->ring = ring;
    sp->seq = seq;
    sp->seg_fd = sp->j_fd = sp->dirfd = sp->store_fd = -1;
    sp->seg_max = 64u << 20;
    TAILQ_INIT(&sp->segs);
    TAILQ_INIT(&sp->pending);
    TAILQ_INIT(&sp->retry);
    snprintf(sp->dir, sizeof sp->dir, "%s", dir);
    if (mkdir(dir, 0750) < 0 && errno != EEXIST)
        return -errno;
    sp->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sp->dirfd < 0)
        return -errno;
    sp->j_max = 16u << 20;
    int fd = open_new_file(sp, "journal", atomic_fetch_add(seq, 1), sp->j_path, sizeof sp->j_path);
    if (fd < 0) {
        qm_spool_close(sp);
        return fd;
    }
    sp->j_fd = fd;
    int rc = seg_roll(sp);
    if (rc < 0) {
        qm_spool_close(sp);
        return rc;
    }
    return 0;
}

void qm_spool_close(struct qm_spool *sp)
{
    /* Never written, never acknowledged. No callback: after the workers
     * stopped, whoever asked for the commit (an SMTP session) is gone. */
    struct mx_queue_msg *m;
    while ((m = TAILQ_FIRST(&sp->pending))) {
        TAILQ_REMOVE(&sp->pending, m, link);
        qm_msgbuf_free(m);
    }
    /* a DSN never written: its original is still on disk and unfinished
     * there (its journal entries waited too), so a restart makes it again */
    while ((m = TAILQ_FIRST(&sp->retry))) {
        TAILQ_REMOVE(&sp->retry, m, link);
        qm_msgbuf_free(m);
    }
    free(sp->rel);
    sp->rel = NULL;
    sp->n_rel = sp->cap_rel = 0;
    if (sp->j_fd >= 0)
        close(sp->j_fd);
    if (sp->dirfd >= 0)
        close(sp->dirfd);
    sp->seg_fd = sp->j_fd = sp->dirfd = sp->store_fd = -1;
    sp->store = NULL;
    struct qm_seg *s;
    while ((s = TAILQ_FIRST(&sp->segs))) {
        TAILQ_REMOVE(&sp->segs, s, link);
        if (s->fd >= 0)
            close(s->fd);
        qm_seg_free(s);
    }
    sp->seg = NULL;
    free(sp->jbuf);
    sp->jbuf = NULL;
    sp->jlen = sp->jcap = 0;
}

void qm_spool_add(struct qm_spool *sp, struct mx_queue_msg *m)
{
    TAILQ_INSERT_TAIL(&sp->pending, m, link);
    sp->n_pending++;
}

int qm_spool_journal(struct qm_spool *sp, const struct qm_jentry *e)
{
    if (sp->jlen + QM_J_HDR + QM_J_ERR_MAX > sp->jcap) {
        size_t cap = sp->jcap ? sp->jcap * 2 : 8192;
        uint8_t *nb = realloc(sp->jbuf, cap);
        if (!nb)
            return -ENOMEM;
        sp->jbuf = nb;
        sp->jcap = cap;
    }
    sp->jlen += qm_jentry_encode(e, sp->jbuf + sp->jlen);
    return 0;
}

/*
 * A journal write failed (or was cancelled because the segment write before
 * it in the chain failed). Its entries must not be lost, and the range must
 * not stay a hole in front of later entries, or recovery would stop there
 * and forget them. Only one batch is in flight per spool, so nothing was
 * written after it: rewind to where it started and put its entries back in
 * front of the ones gathered since; the next flush writes them again over
 * the same range (replaying an entry twice is harmless).
 */
static void journal_retry(struct qm_spool *sp, struct qm_batch *b)
{
    size_t total = b->jlen + sp->jlen;
    uint8_t *nb = malloc(total + QM_J_HDR + QM_J_ERR_MAX);
    if (!nb) {
        fprintf(stderr, "mxgate[queue]: spool %s: %zu journal bytes lost (no memory)\n",
                sp->dir, b->jlen);
        return;
    }
    memcpy(nb, b->jbuf, b->jlen);
    if (sp->jlen)
        memcpy(nb + b->jlen, sp->jbuf, sp->jlen);
    free(sp->jbuf);
    sp->jbuf = nb;
    sp->jlen = total;
    sp->jcap = total + QM_J_HDR + QM_J_ERR_MAX;
    if (sp->j_off == b->j_at + b->jlen)
        sp->j_off = b->j_at;
}

static void seg_release(struct qm_seg *seg, const char *qid, bool moved)
{
    if (!seg || !seg->live)
        return;
    seg->live--;
    if (moved) {
        /* the message lives on in the store: not finished, but remembered */
        if (seg->live && qm_seg_add_moved(seg, qid) < 0)
            fprintf(stderr, "mxgate[queue]: %s: out of memory noting it moved\n", qid);
        return;
    }
    /* for journal snapshots while the segment lives on (if this fails, a
     * snapshot could bring the message back: delivered twice, never lost) */
    if (seg->live && qm_seg_add_done(seg, qid) < 0)
        fprintf(stderr, "mxgate[queue]: %s: out of memory noting it finished\n", qid);
}

/*
 * The journal part of b completed. Durable: the finished messages give up
 * their segments. Failed: the releases go back in front of the ones
 * gathered since, to ride with the journal entries journal_retry() put back.
 */
static void releases_done(struct qm_spool *sp, struct qm_batch *b, bool durable)
{
    if (durable) {
        for (size_t i = 0; i < b->n_rel; i++)
            seg_release(b->rel[i].seg, b->rel[i].qid, b->rel[i].moved);
        return;
    }
    size_t n = b->n_rel + sp->n_rel;
    struct qm_release *nr = malloc(n * sizeof *nr);
    if (!nr) {
        /* the segments stay on disk: a restart finds them finished in the journal */
        fprintf(stderr, "mxgate[queue]: spool %s: %zu segment releases dropped (no memory)\n",
                sp->dir, b->n_rel);
        return;
    }
    memcpy(nr, b->rel, b->n_rel * sizeof *nr);
    if (sp->n_rel)
        memcpy(nr + b->n_rel, sp->rel, sp->n_rel * sizeof *nr);
    free(sp->rel);
    sp->rel = nr;
    sp->n_rel = sp->cap_rel = n;
}

static void batch_part_done(struct qm_batch *b, int part)
{
    struct qm_spool *sp = b->sp;
    if (part == 0) {
        int res = b->err[0];
        if (res < 0) {
            /* the rest of this segment may hold a hole: continue in a new one */
            sp->seg_off = sp->seg_max;
            sp->store_off = sp->seg_max;
            sp->n_write_errors++;
            fprintf(stderr, "mxgate[queue]: spool %s: segment write failed: %s\n", sp->dir,
                    strerror(-res));
        }
        struct mx_queue_msg *m;
        while ((m = TAILQ_FIRST(&b->recs))) {
            TAILQ_REMOVE(&b->recs, m, link);
            if (res < 0)
                m->seg->live--;
            if (sp->on_committed) {
                sp->on_committed(sp, m, res);
            } else {
                if (m->cb)
                    m->cb(m->cb_arg, res, res == 0 ? m->qid : NULL);
                qm_msgbuf_free(m);
            }
        }
    } else {
        if (b->err[1] < 0)
            fprintf(stderr, "mxgate[queue]: spool %s: journal write failed: %s\n", sp->dir,
                    strerror(-b->err[1]));
        if (b->err[1] < 0 && !b->snapshot && b->jlen)
            journal_retry(sp, b);
        if (b->n_rel)
            releases_done(sp, b, b->err[1] == 0);
        if (b->snapshot) {
            /* the snapshot is durable: the journals it replaces can go */
            if (b->err[1] == 0)
                for (unsigned i = 0; i < sp->n_j_old; i++)
                    unlink(sp->j_old[i]);
            sp->n_j_old = 0;
        }
        if (sp->on_jdone)
            sp->on_jdone(sp, b->err[1]);
    }
}

static void batch_maybe_free(struct qm_batch *b)
{
    if (b->outstanding[0] || b->outstanding[1])
        return;
    b->sp->inflight--;
    free(b->rel);
    free(b->jbuf);
    free(b->ops);
    free(b);
}

static void wop_done(struct mx_uring_op *op, int res, uint32_t flags)
{
    (void)flags;
    struct qm_wop *w = (struct qm_wop *)op;
    struct qm_batch *b = w->b;
    int part = w->part;
    if (w->sync && res == 0)
        b->sp->n_fsync++;
    if (b->err[part] == 0) {
        if (res < 0)
            b->err[part] = res;
        else if (!w->sync && (uint32_t)res != w->expect)
            b->err[part] = -EIO; /* short write: treat as failed */
    }
    if (--b->outstanding[part] == 0)
        batch_part_done(b, part);
    batch_maybe_free(b);
}

/* Fail everything pending without touching the disk. */
static void fail_pending(struct qm_spool *sp, int err)
{
    struct mx_queue_msg *m;
    while ((m = TAILQ_FIRST(&sp->pending))) {
        TAILQ_REMOVE(&sp->pending, m, link);
        sp->n_pending--;
        if (sp->on_committed) {
            sp->on_committed(sp, m, err);
        } else {
            if (m->cb)
                m->cb(m->cb_arg, err, NULL);
            qm_msgbuf_free(m);
        }
    }
}

static uint64_t mono_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#define QM_RETRY_MS 1000 /* how soon a failed DSN write is tried again */

void qm_spool_retry(struct qm_spool *sp, struct mx_queue_msg *m)
{
    if (TAILQ_EMPTY(&sp->retry))
        sp->retry_at = mono_now_ms() + QM_RETRY_MS;
    m->seg = NULL;
    TAILQ_INSERT_TAIL(&sp->retry, m, link);
}

static void release_add(struct qm_spool *sp, struct qm_seg *seg, const char *qid, bool moved);

void qm_spool_release(struct qm_spool *sp, struct qm_seg *seg, const char *qid)
{
    release_add(sp, seg, qid, false);
}

void qm_spool_release_moved(struct qm_spool *sp, struct qm_seg *seg, const char *qid)
{
    release_add(sp, seg, qid, true);
}

static void release_add(struct qm_spool *sp, struct qm_seg *seg, const char *qid, bool moved)
{
    if (sp->n_rel == sp->cap_rel) {
        size_t cap = sp->cap_rel ? sp->cap_rel * 2 : 32;
        struct qm_release *nr = realloc(sp->rel, cap * sizeof *nr);
        if (!nr) {
            /* keeping the segment is always safe; recovery sees it finished */
            fprintf(stderr, "mxgate[queue]: %s: segment kept (no memory)\n", qid);
            return;
        }
        sp->rel = nr;
        sp->cap_rel = cap;
    }
    sp->rel[sp->n_rel].seg = seg;
    sp->rel[sp->n_rel].moved = moved;
    snprintf(sp->rel[sp->n_rel].qid, QM_QID_SIZE, "%s", qid);
    sp->n_rel++;
}

int qm_spool_flush(struct qm_spool *sp)
{
    if (!TAILQ_EMPTY(&sp->retry) && !sp->inflight && mono_now_ms() >= sp->retry_at) {
        /* failed DSN writes go first, ahead of what came since */
        struct mx_queue_msg *m;
        while ((m = TAILQ_LAST(&sp->retry, qm_msgq))) {
            TAILQ_REMOVE(&sp->retry, m, link);
            TAILQ_INSERT_HEAD(&sp->pending, m, link);
            sp->n_pending++;
        }
    }
    if (!sp->n_pending && !sp->jlen) {
        /* releases without journal entries of their own wait for nothing */
        if (sp->n_rel && !sp->inflight && TAILQ_EMPTY(&sp->retry)) {
            for (size_t i = 0; i < sp->n_rel; i++)
                seg_release(sp->rel[i].seg, sp->rel[i].qid, sp->rel[i].moved);
            sp->n_rel = 0;
        }
        return 0;
    }
    /*
     * One batch at a time: what arrives meanwhile waits for the next one,
     * which is group commit at its best (the kernel serializes fsyncs of a
     * file anyway), and it keeps the segment a clean prefix of whole
     * records followed by at most one unfinished batch: a crash can only
     * leave a torn tail, never a hole before acknowledged records.
     */
    if (sp->inflight)
        return 0;
    /* keep one chain within one submission: it must fit the free SQ slots */
    unsigned space = io_uring_sq_space_left(sp->ring);
    if (space < 8) {
        io_uring_submit(sp->ring);
        space = io_uring_sq_space_left(sp->ring);
    }
    if (space < 5)
        return -EBUSY; /* try again next tick */
    size_t nrec = sp->n_pending;
    if (nrec > space - 4)
        nrec = space - 4;
    /* journal entries may refer to records still pending (a failure and its
     * DSN): they wait until every pending record rides in the same chain,
     * and while a DSN whose write failed waits for its retry */
    bool with_journal = nrec == sp->n_pending && TAILQ_EMPTY(&sp->retry);
    if (nrec == 0 && !with_journal)
        return 0; /* only journal entries, and they must wait */
    if (sp->seg_fd < 0 || sp->seg_off >= sp->seg_max) {
        int rc = seg_roll(sp);
        if (rc < 0) {
            fail_pending(sp, rc);
            return rc;
        }
    }
    bool any_store = false;
    {
        size_t i = 0;
        struct mx_queue_msg *m;
        TAILQ_FOREACH(m, &sp->pending, link)
        {
            if (i++ == nrec)
                break;
            any_store |= m->to_store;
        }
    }
    if (any_store && (sp->store_fd < 0 || sp->store_off >= sp->seg_max)) {
        int rc = seg_roll_kind(sp, true);
        if (rc < 0) {
            fail_pending(sp, rc);
            return rc;
        }
    }
    struct qm_batch *b = calloc(1, sizeof *b);
    struct qm_wop *ops = calloc(nrec + 4, sizeof *ops);
    if (!b || !ops) {
        free(b);
        free(ops);
        fail_pending(sp, -ENOMEM);
        return -ENOMEM;
    }
    b->sp = sp;
    b->ops = ops;
    TAILQ_INIT(&b->recs);
    unsigned k = 0;
    struct io_uring_sqe *sqe = NULL;
    bool any_seg = false;
    for (size_t i = 0; i < nrec; i++) {
        struct mx_queue_msg *m = TAILQ_FIRST(&sp->pending);
        TAILQ_REMOVE(&sp->pending, m, link);
        sp->n_pending--;
        TAILQ_INSERT_TAIL(&b->recs, m, link);
        int fd = m->to_store ? sp->store_fd : sp->seg_fd;
        uint64_t *off = m->to_store ? &sp->store_off : &sp->seg_off;
        any_seg |= !m->to_store;
        m->seg = m->to_store ? sp->store : sp->seg;
        m->seg->live++; /* until the manager finishes it (or the write fails) */
        m->seg_off = *off;
        sqe = io_uring_get_sqe(sp->ring);
        io_uring_prep_write(sqe, fd, m->buf, (unsigned)m->len, *off);
        *off += m->len;
        ops[k] = (struct qm_wop){{wop_done}, b, (uint32_t)m->len, 0, false};
        io_uring_sqe_set_data(sqe, &ops[k].op);
        sqe->flags |= IOSQE_IO_LINK;
        k++;
        b->outstanding[0]++;
        sp->n_records++;
    }
    for (int f = 0; f < 2; f++) {
        if (!(f == 0 ? any_seg : any_store))
            continue;
        sqe = io_uring_get_sqe(sp->ring);
        io_uring_prep_fsync(sqe, f == 0 ? sp->seg_fd : sp->store_fd, IORING_FSYNC_DATASYNC);
        ops[k] = (struct qm_wop){{wop_done}, b, 0, 0, true};
        io_uring_sqe_set_data(sqe, &ops[k].op);
        sqe->flags |= IOSQE_IO_LINK;
        k++;
        b->outstanding[0]++;
        b->had[0] = true;
    }
    if (sp->jlen && with_journal) {
        b->snapshot = sp->j_snapshot_pending;
        sp->j_snapshot_pending = false;
        b->jbuf = sp->jbuf;
        size_t jl = sp->jlen;
        b->jlen = jl;
        b->j_at = sp->j_off;
        sp->jbuf = NULL;
        sp->jlen = sp->jcap = 0;
        /* the finished messages whose entries these are give up their
         * segments only once this part is durable */
        b->rel = sp->rel;
        b->n_rel = sp->n_rel;
        sp->rel = NULL;
        sp->n_rel = sp->cap_rel = 0;
        sqe = io_uring_get_sqe(sp->ring);
        io_uring_prep_write(sqe, sp->j_fd, b->jbuf, (unsigned)jl, sp->j_off);
        sp->j_off += jl;
        ops[k] = (struct qm_wop){{wop_done}, b, (uint32_t)jl, 1, false};
        io_uring_sqe_set_data(sqe, &ops[k].op);
        sqe->flags |= IOSQE_IO_LINK;
        k++;
        sqe = io_uring_get_sqe(sp->ring);
        io_uring_prep_fsync(sqe, sp->j_fd, IORING_FSYNC_DATASYNC);
        ops[k] = (struct qm_wop){{wop_done}, b, 0, 1, true};
        io_uring_sqe_set_data(sqe, &ops[k].op);
        k++;
        b->outstanding[1] += 2;
        b->had[1] = true;
    }
    if (sqe)
        sqe->flags &= (uint8_t)~IOSQE_IO_LINK; /* the chain ends here */
    b->n_ops = k;
    sp->inflight++;
    sp->n_batches++;
    int rc = io_uring_submit(sp->ring);
    if (rc < 0)
        fprintf(stderr, "mxgate[queue]: spool %s: io_uring_submit: %s\n", sp->dir,
                strerror(-rc));
    return 0;
}

void qm_spool_gc(struct qm_spool *sp)
{
    if (sp->inflight)
        return;
    struct qm_seg *s, *next;
    for (s = TAILQ_FIRST(&sp->segs); s; s = next) {
        next = TAILQ_NEXT(s, link);
        if (s->current)
            continue;
        if (s->fd >= 0) {
            close(s->fd);
            s->fd = -1;
        }
        if (s->live == 0) {
            if (unlink(s->path) < 0 && errno != ENOENT)
                fprintf(stderr, "mxgate[queue]: cannot remove %s: %s\n", s->path,
                        strerror(errno));
            TAILQ_REMOVE(&sp->segs, s, link);
            qm_seg_free(s);
        }
    }
}

/* Append qid to a growing array of queue ids (a segment's done or moved list). */
static int qid_list_add(char (**list)[QM_QID_SIZE], size_t *n, size_t *cap, const char *qid)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 32;
        char(*nl)[QM_QID_SIZE] = realloc(*list, nc * sizeof *nl);
        if (!nl)
            return -ENOMEM;
        *list = nl;
        *cap = nc;
    }
    snprintf((*list)[(*n)++], QM_QID_SIZE, "%s", qid);
    return 0;
}

int qm_seg_add_moved(struct qm_seg *seg, const char *qid)
{
    return qid_list_add(&seg->moved, &seg->n_moved, &seg->cap_moved, qid);
}

int qm_seg_add_done(struct qm_seg *seg, const char *qid)
{
    return qid_list_add(&seg->done, &seg->n_done, &seg->cap_done, qid);
}

void qm_seg_free(struct qm_seg *seg)
{
    if (!seg)
        return;
    free(seg->done);
    free(seg->moved);
    free(seg);
}

int qm_spool_journal_rotate(struct qm_spool *sp)
{
    if (sp->inflight || sp->jlen || sp->j_snapshot_pending)
        return -EBUSY; /* the old journal must be complete on disk first */
    char path[1024];
    int fd = open_new_file(sp, "journal", atomic_fetch_add(sp->seq, 1), path, sizeof path);
    if (fd < 0)
        return fd;
    int rc = dir_fsync(sp->dirfd);
    if (rc < 0) {
        close(fd);
        unlink(path);
        return rc;
    }
    /* every other journal of this directory is superseded by the snapshot */
    sp->n_j_old = 0;
    DIR *d = opendir(sp->dir);
    struct dirent *de;
    while (d && (de = readdir(d)) && sp->n_j_old < 4) {
        if (strncmp(de->d_name, "journal-", 8) != 0)
            continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", sp->dir, de->d_name);
        if (strcmp(p, path) != 0)
            snprintf(sp->j_old[sp->n_j_old++], sizeof sp->j_old[0], "%s", p);
    }
    if (d)
        closedir(d);
    close(sp->j_fd);
    sp->j_fd = fd;
    sp->j_off = 0;
    snprintf(sp->j_path, sizeof sp->j_path, "%s", path);
    sp->j_snapshot_pending = true;
    return 0;
}

int qm_ring_dispatch(struct io_uring *ring, bool wait)
{
    struct io_uring_cqe *cqe;
    /* like the worker loop: whatever was prepared is submitted first */
    int rc = wait ? io_uring_submit_and_wait(ring, 1) : io_uring_submit(ring);
    if (rc < 0 && rc != -EINTR && rc != -EBUSY)
        return rc;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(ring, head, cqe)
    {
        struct mx_uring_op *op = io_uring_cqe_get_data(cqe);
        seen++;
        if (op)
            op->done(op, cqe->res, cqe->flags);
    }
    io_uring_cq_advance(ring, seen);
    return (int)seen;
}
