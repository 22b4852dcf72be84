/*
 * av.c - anti-virus service: one libclamav engine shared by a small pool of
 * service threads, fed through a bounded lock-free ring (Vyukov's MPMC queue)
 * so that workers submitting messages never block; a semaphore wakes the
 * service threads. Reload compiles a new engine on a background thread and
 * swaps it in under a mutex only service threads take, so scanning never
 * stops and never runs without signatures.
 */
#include "scan/scan.h"

#include <clamav.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mx_av_job {
    _Atomic int status; /* enum mx_av_status */
    _Atomic int refs;   /* caller + the service side while queued */
    const uint8_t *data;
    size_t len;
    bool owned; /* data is freed with the job (mx_av_submit_owned) */
    char detail[128];
};

struct av_engine {
    struct cl_engine *eng;
    unsigned refs; /* under mx_av.emu */
};

struct cell {
    _Atomic size_t seq;
    struct mx_av_job *job;
};

struct mx_av {
    struct mx_av_opts o;
    char *db_dir, *tmp_dir;
    struct cell *cells;
    size_t mask;
    _Atomic size_t enq, deq;
    sem_t sem;
    pthread_t *threads;
    unsigned nthreads;
    atomic_bool stop;
    pthread_mutex_t emu;
    struct av_engine *cur;
    pthread_t reloader;
    atomic_bool reloading, reloader_joinable;
    _Atomic unsigned gen;
};

static pthread_once_t cl_once = PTHREAD_ONCE_INIT;
static int cl_init_rc;

static void cl_init_once(void)
{
    cl_init_rc = cl_init(CL_INIT_DEFAULT);
}

static void job_put(struct mx_av_job *j)
{
    if (atomic_fetch_sub(&j->refs, 1) == 1) {
        if (j->owned)
            free((void *)j->data);
        free(j);
    }
}

/*
 * Service threads take no signals: the process handles them on one thread
 * (mxgate reads a signalfd), and a SIGTERM delivered to a thread that has not
 * blocked it would kill the process instead of stopping it gracefully.
 */
static int spawn(pthread_t *t, void *(*fn)(void *), void *arg)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(t, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

/* ---- ring ------------------------------------------------------------------- */

static bool ring_push(struct mx_av *av, struct mx_av_job *j)
{
    size_t pos = atomic_load_explicit(&av->enq, memory_order_relaxed);
    for (;;) {
        struct cell *c = &av->cells[pos & av->mask];
        size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        intptr_t dif = (intptr_t)seq - (intptr_t)pos;
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&av->enq, &pos, pos + 1,
                                                      memory_order_relaxed, memory_order_relaxed)) {
                c->job = j;
                atomic_store_explicit(&c->seq, pos + 1, memory_order_release);
                return true;
            }
        } else if (dif < 0) {
            return false; /* full */
        } else {
            pos = atomic_load_explicit(&av->enq, memory_order_relaxed);
        }
    }
}

static struct mx_av_job *ring_pop(struct mx_av *av)
{
    size_t pos = atomic_load_explicit(&av->deq, memory_order_relaxed);
    for (;;) {
        struct cell *c = &av->cells[pos & av->mask];
        size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        intptr_t dif = (intptr_t)seq - (intptr_t)(pos + 1);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&av->deq, &pos, pos + 1,
                                                      memory_order_relaxed, memory_order_relaxed)) {
                struct mx_av_job *j = c->job;
                atomic_store_explicit(&c->seq, pos + av->mask + 1, memory_order_release);
                return j;
            }
        } else if (dif < 0) {
            return NULL; /* empty */
        } else {
            pos = atomic_load_explicit(&av->deq, memory_order_relaxed);
        }
    }
}

/* ---- engines ------------------------------------------------------------------ */

static struct av_engine *engine_build(const struct mx_av *av, char *err, size_t errcap)
{
    struct cl_engine *eng = cl_engine_new();
    if (!eng) {
        snprintf(err, errcap, "cl_engine_new failed");
        return NULL;
    }
    cl_engine_set_str(eng, CL_ENGINE_TMPDIR, av->tmp_dir);
    cl_engine_set_num(eng, CL_ENGINE_MAX_SCANSIZE, (long long)av->o.max_scan_size);
    cl_engine_set_num(eng, CL_ENGINE_MAX_FILESIZE, (long long)av->o.max_scan_size);
    cl_engine_set_num(eng, CL_ENGINE_MAX_SCANTIME, (long long)av->o.max_scan_ms);
    unsigned sigs = 0;
    cl_error_t rc = cl_load(av->db_dir, eng, &sigs, CL_DB_STDOPT);
    if (rc == CL_SUCCESS && sigs == 0)
        rc = CL_EOPEN;
    if (rc == CL_SUCCESS)
        rc = cl_engine_compile(eng);
    if (rc != CL_SUCCESS) {
        snprintf(err, errcap, "%s: %s", av->db_dir, sigs == 0 && rc == CL_EOPEN ? "no signatures" : cl_strerror(rc));
        cl_engine_free(eng);
        return NULL;
    }
    struct av_engine *e = calloc(1, sizeof *e);
    if (!e) {
        cl_engine_free(eng);
        return NULL;
    }
    e->eng = eng;
    e->refs = 1; /* the "current" reference */
    return e;
}

static void engine_put(struct mx_av *av, struct av_engine *e)
{
    pthread_mutex_lock(&av->emu);
    bool last = --e->refs == 0;
    pthread_mutex_unlock(&av->emu);
    if (last) {
        cl_engine_free(e->eng);
        free(e);
    }
}

static struct av_engine *engine_get(struct mx_av *av)
{
    pthread_mutex_lock(&av->emu);
    struct av_engine *e = av->cur;
    if (e)
        e->refs++;
    pthread_mutex_unlock(&av->emu);
    return e;
}

/* ---- service threads ------------------------------------------------------------ */

static void scan_job(struct mx_av *av, struct mx_av_job *j)
{
    struct av_engine *e = engine_get(av);
    int st = MX_AV_ERROR;
    if (!e) {
        snprintf(j->detail, sizeof j->detail, "no AV engine");
    } else {
        struct cl_scan_options opts;
        memset(&opts, 0, sizeof opts);
        opts.general = CL_SCAN_GENERAL_HEURISTICS;
        opts.parse = ~0u; /* archives, mail, OLE2, PDF, ... */
        opts.heuristic = CL_SCAN_HEURISTIC_ENCRYPTED_ARCHIVE | CL_SCAN_HEURISTIC_ENCRYPTED_DOC;
        cl_fmap_t *map = cl_fmap_open_memory(j->data, j->len);
        const char *vname = NULL;
        unsigned long scanned = 0;
        cl_error_t rc = map ? cl_scanmap_callback(map, NULL, &vname, &scanned, e->eng, &opts, NULL)
                            : CL_EMEM;
        if (map)
            cl_fmap_close(map);
        if (rc == CL_VIRUS) {
            bool enc = vname && strncmp(vname, "Heuristics.Encrypted", 20) == 0;
            st = enc ? MX_AV_UNSCANNABLE : MX_AV_INFECTED;
            snprintf(j->detail, sizeof j->detail, "%s", vname ? vname : "unknown");
        } else if (rc == CL_CLEAN) {
            st = MX_AV_CLEAN;
        } else if (rc == CL_EMAXSIZE || rc == CL_EMAXFILES || rc == CL_EMAXREC ||
                   rc == CL_ETIMEOUT) {
            st = MX_AV_UNSCANNABLE;
            snprintf(j->detail, sizeof j->detail, "%s", cl_strerror(rc));
        } else {
            snprintf(j->detail, sizeof j->detail, "%s", cl_strerror(rc));
        }
        engine_put(av, e);
    }
    atomic_store_explicit(&j->status, st, memory_order_release);
}

static void *service(void *arg)
{
    struct mx_av *av = arg;
    for (;;) {
        sem_wait(&av->sem);
        struct mx_av_job *j = ring_pop(av);
        if (!j) {
            if (atomic_load(&av->stop))
                break;
            continue;
        }
        if (atomic_load(&av->stop)) {
            snprintf(j->detail, sizeof j->detail, "AV stopped");
            atomic_store(&j->status, MX_AV_ERROR);
        } else if (atomic_load(&j->refs) == 1) {
            /* the caller gave up on it: nothing to scan for */
            atomic_store(&j->status, MX_AV_ERROR);
        } else {
            scan_job(av, j);
        }
        job_put(j);
    }
    return NULL;
}

/* ---- API ---------------------------------------------------------------------- */

int mx_av_start(const struct mx_av_opts *o, struct mx_av **out, char **err)
{
    if (err)
        *err = NULL;
    pthread_once(&cl_once, cl_init_once);
    if (cl_init_rc != CL_SUCCESS) {
        if (err)
            *err = strdup("cl_init failed");
        return -EIO;
    }
    struct mx_av *av = calloc(1, sizeof *av);
    if (!av)
        return -ENOMEM;
    av->o = *o;
    if (!av->o.threads)
        av->o.threads = 1;
    if (!av->o.queue_size)
        av->o.queue_size = 1024;
    if (!av->o.max_scan_size)
        av->o.max_scan_size = 50ull << 20;
    if (!av->o.max_scan_ms)
        av->o.max_scan_ms = 30000;
    if (!o->on_infected)
        av->o.on_infected = MX_AV_REJECT;
    if (!o->on_error)
        av->o.on_error = MX_AV_TEMPFAIL;
    size_t qs = 2;
    while (qs < av->o.queue_size)
        qs <<= 1;
    av->db_dir = strdup(o->db_dir ? o->db_dir : "/var/lib/clamav");
    av->tmp_dir = strdup(o->tmp_dir ? o->tmp_dir : "/dev/shm");
    av->cells = calloc(qs, sizeof *av->cells);
    av->threads = calloc(av->o.threads, sizeof *av->threads);
    if (!av->db_dir || !av->tmp_dir || !av->cells || !av->threads) {
        mx_av_stop(av);
        return -ENOMEM;
    }
    av->mask = qs - 1;
    for (size_t i = 0; i < qs; i++)
        atomic_init(&av->cells[i].seq, i);
    pthread_mutex_init(&av->emu, NULL);
    sem_init(&av->sem, 0, 0);
    char msg[256];
    av->cur = engine_build(av, msg, sizeof msg);
    if (!av->cur) {
        if (err)
            *err = strdup(msg);
        mx_av_stop(av);
        return -EIO;
    }
    int rc = 0;
    for (unsigned i = 0; i < av->o.threads && rc == 0; i++) {
        if (spawn(&av->threads[i], service, av) != 0)
            rc = -ENOMEM;
        else
            av->nthreads++;
    }
    if (rc < 0) {
        mx_av_stop(av);
        return rc;
    }
    *out = av;
    return 0;
}

void mx_av_stop(struct mx_av *av)
{
    if (!av)
        return;
    atomic_store(&av->stop, true);
    for (unsigned i = 0; i < av->nthreads; i++)
        sem_post(&av->sem);
    for (unsigned i = 0; i < av->nthreads; i++)
        pthread_join(av->threads[i], NULL);
    if (atomic_load(&av->reloader_joinable))
        pthread_join(av->reloader, NULL);
    /* jobs still queued end as errors */
    struct mx_av_job *j;
    while (av->cells && (j = ring_pop(av)) != NULL) {
        snprintf(j->detail, sizeof j->detail, "AV stopped");
        atomic_store(&j->status, MX_AV_ERROR);
        job_put(j);
    }
    if (av->cur)
        engine_put(av, av->cur);
    if (av->cells) {
        pthread_mutex_destroy(&av->emu);
        sem_destroy(&av->sem);
    }
    free(av->cells);
    free(av->threads);
    free(av->db_dir);
    free(av->tmp_dir);
    free(av);
}

static void *reload_thread(void *arg)
{
    struct mx_av *av = arg;
    char msg[256];
    struct av_engine *e = engine_build(av, msg, sizeof msg);
    if (e) {
        pthread_mutex_lock(&av->emu);
        struct av_engine *old = av->cur;
        av->cur = e;
        pthread_mutex_unlock(&av->emu);
        if (old)
            engine_put(av, old);
        atomic_fetch_add(&av->gen, 1);
    } else {
        /* keep scanning with the old signatures */
        fprintf(stderr, "mxgate: AV reload failed, keeping the loaded signatures: %s\n", msg);
    }
    atomic_store(&av->reloading, false);
    return NULL;
}

int mx_av_reload(struct mx_av *av)
{
    bool expect = false;
    if (!atomic_compare_exchange_strong(&av->reloading, &expect, true))
        return -EBUSY;
    if (atomic_load(&av->reloader_joinable))
        pthread_join(av->reloader, NULL);
    if (spawn(&av->reloader, reload_thread, av) != 0) {
        atomic_store(&av->reloader_joinable, false);
        atomic_store(&av->reloading, false);
        return -EAGAIN;
    }
    atomic_store(&av->reloader_joinable, true);
    return 0;
}

unsigned mx_av_generation(const struct mx_av *av)
{
    return atomic_load(&((struct mx_av *)av)->gen);
}

struct mx_av_job *mx_av_submit(struct mx_av *av, const uint8_t *data, size_t len)
{
    struct mx_av_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->data = data;
    j->len = len;
    atomic_init(&j->status, MX_AV_PENDING);
    atomic_init(&j->refs, 2);
    if (atomic_load(&av->stop) || !ring_push(av, j)) {
        snprintf(j->detail, sizeof j->detail, "AV queue full");
        atomic_store(&j->status, MX_AV_ERROR);
        atomic_store(&j->refs, 1);
        return j;
    }
    sem_post(&av->sem);
    return j;
}

struct mx_av_job *mx_av_submit_owned(struct mx_av *av, uint8_t *data, size_t len)
{
    struct mx_av_job *j = mx_av_submit(av, data, len);
    if (j)
        j->owned = true; /* a service thread never frees: the last job_put() does */
    return j;
}

enum mx_av_status mx_av_job_status(const struct mx_av_job *j)
{
    return (enum mx_av_status)atomic_load_explicit(&((struct mx_av_job *)j)->status,
                                                   memory_order_acquire);
}

const char *mx_av_job_detail(const struct mx_av_job *j)
{
    return j->detail;
}

enum mx_av_action mx_av_job_action(const struct mx_av *av, const struct mx_av_job *j)
{
    switch (mx_av_job_status(j)) {
    case MX_AV_CLEAN:
        return MX_AV_ACCEPT;
    case MX_AV_INFECTED:
        return av->o.on_infected;
    case MX_AV_UNSCANNABLE:
        return av->o.on_unscannable;
    default:
        return av->o.on_error; /* fail safe: pending or failed is not clean */
    }
}

void mx_av_job_free(struct mx_av_job *j)
{
    if (j)
        job_put(j);
}
