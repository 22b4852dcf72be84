/*
 * qm_internal.h - internals of the durable queue shared by qm*.c and the
 * unit tests: record and journal encoding, the per-worker spool writer
 * (segments + journal, group commit through io_uring), recovery, Maildir
 * delivery and the per-worker queue manager.
 *
 * Nothing here is included outside queue/ (tests excepted).
 */
#ifndef MX_QM_INTERNAL_H
#define MX_QM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "queue/queue.h"
#include "dataplane/dataplane.h"

struct io_uring;
struct mx_config;
struct mx_route;

#define QM_QID_LEN 20 /* 12 hex time ms + 2 hex worker + 6 hex counter */
#define QM_QID_SIZE 24

/* ---- CRC32C (Castagnoli) --------------------------------------------- */

/** CRC32C of buf continuing crc (start with 0). "123456789" -> 0xE3069283. */
uint32_t qm_crc32c(uint32_t crc, const void *buf, size_t len);

/* ---- spool records ---------------------------------------------------- */

/*
 * Record layout (little-endian):
 *   0  u32 magic "MXQ1"     4 u16 version    6 u16 header length (48)
 *   8  u32 envelope length 12 u32 CRC32C over the whole record with this
 *                                 field taken as zero
 *  16  u64 body length     24 char qid[24] (NUL padded)
 *  48  envelope (qm_env_encode), then the message bytes.
 */
#define QM_REC_MAGIC 0x3151584Du /* "MXQ1" */
#define QM_REC_VERSION 1
#define QM_REC_HDR 48
#define QM_REC_MAX_ENV (64u << 20)
#define QM_REC_MAX_BODY (1ull << 32)

/*
 * Envelope flags (the u16 after the session id, written as 0 before
 * quarantine existed, so old records still read). QUARANTINE: a string
 * (reason) and a u32 (retention in seconds) follow the recipients.
 */
#define QM_ENV_F_QUARANTINE 1u

/** Serialized size of an envelope. */
size_t qm_env_size(const struct mx_envelope *env);
/** Serialize env into out (qm_env_size bytes). Returns bytes written. */
size_t qm_env_encode(const struct mx_envelope *env, uint8_t *out);
/**
 * Parse an envelope; env->rcpts is malloc'd (free with qm_env_free).
 * 0 or -EBADMSG (malformed), -ENOMEM.
 */
int qm_env_decode(const uint8_t *buf, size_t len, struct mx_envelope *env);
/** Deep copy (rcpts duplicated). 0 or -ENOMEM. */
int qm_env_copy(struct mx_envelope *dst, const struct mx_envelope *src);
void qm_env_free(struct mx_envelope *env);

/** Fill the record header at rec[0..48) for a record of total length len. */
void qm_record_seal(uint8_t *rec, size_t total, size_t env_len, const char *qid);

/**
 * Check the record at buf[0..len): 0 and *total when complete and its CRC
 * holds; -EAGAIN when the header is plausible but the record runs past len
 * (a torn tail when at the end of a file); -EBADMSG otherwise.
 */
int qm_record_check(const uint8_t *buf, size_t len, size_t *total);

/** A decoded record; body points into the checked buffer. */
struct qm_record {
    char qid[QM_QID_SIZE];
    struct mx_envelope env;
    const uint8_t *body;
    size_t body_len;
};

/**
 * Check and decode the record at buf: >0 the record's total length (rec
 * filled; free rec->env with qm_env_free), -EAGAIN, -EBADMSG, -ENOMEM.
 */
long qm_record_decode(const uint8_t *buf, size_t len, struct qm_record *rec);

/* ---- journal ---------------------------------------------------------- */

enum qm_jtype {
    QM_J_DELIVERED = 1, /* rcpt done, delivered */
    QM_J_FAILED = 2,    /* rcpt done, bounced (DSN queued first) */
    QM_J_DEFERRED = 3,  /* attempts, next attempt (unix ms), last error */
    QM_J_HELD = 4,
    QM_J_RELEASED = 5,
    QM_J_DELETED = 6,
    QM_J_WARNED = 7,    /* the delay DSN went out (once per message) */
};

/*
 * Journal entry: 0 u32 magic "MXJ1", 4 u8 type, 5 u8 0, 6 u16 error length,
 * 8 u32 rcpt, 12 u32 attempts, 16 u64 when (unix ms), 24 qid[24],
 * 48 u32 CRC32C of bytes 0..48 and the error text, 52 error text.
 */
#define QM_J_MAGIC 0x314A584Du /* "MXJ1" */
#define QM_J_HDR 52
#define QM_J_ERR_MAX 255

struct qm_jentry {
    enum qm_jtype type;
    uint32_t rcpt;
    uint32_t attempts;
    uint64_t when_ms;
    char qid[QM_QID_SIZE];
    char err[QM_J_ERR_MAX + 1];
};

/** Encode e into out (QM_J_HDR + QM_J_ERR_MAX bytes room). Returns length. */
size_t qm_jentry_encode(const struct qm_jentry *e, uint8_t *out);
/** Decode: >0 length, -EAGAIN incomplete, -EBADMSG. */
long qm_jentry_decode(const uint8_t *buf, size_t len, struct qm_jentry *e);

/* ---- message under construction -------------------------------------- */

/*
 * The record is built in one buffer: header, envelope, then message bytes
 * as they arrive, so commit writes it with a single write.
 */
struct mx_queue_msg {
    TAILQ_ENTRY(mx_queue_msg) link;
    struct qm_worker *qw; /* NULL in spool-only use (tests) */
    struct mx_envelope env;
    char qid[QM_QID_SIZE];
    uint8_t *buf;
    size_t len, cap, env_len, max_len;
    mx_queue_commit_fn cb;
    void *cb_arg;
    int error; /* sticky write error */
    uint64_t seg_off;
    struct qm_seg *seg;
    bool internal; /* generated by the queue (a DSN): a failed write is retried */
    bool to_store; /* written to the deferred store instead of the segment */
    struct qm_msg *move_of; /* a compaction copy of this queued message */
};
TAILQ_HEAD(qm_msgq, mx_queue_msg);

/** New message buffer for env with id qid; body capped at max_body bytes. */
struct mx_queue_msg *qm_msgbuf_new(const struct mx_envelope *env, const char *qid,
                                   size_t max_body);
/** Append message bytes: 0, -EFBIG over the cap, -ENOMEM. */
int qm_msgbuf_append(struct mx_queue_msg *m, const void *buf, size_t len);
void qm_msgbuf_free(struct mx_queue_msg *m);
/**
 * Replace m's envelope by *env (before sealing): the record is re-encoded
 * and the body bytes received so far move behind it. On success m owns
 * env->rcpts (the old array is freed unless it is the same); on failure
 * nothing changed. 0, the sticky write error, or -ENOMEM.
 */
int qm_msgbuf_set_env(struct mx_queue_msg *m, struct mx_envelope *env);

/* ---- spool writer ----------------------------------------------------- */

/** One segment file; live counts messages not yet finished. */
struct qm_seg {
    TAILQ_ENTRY(qm_seg) link;
    char path[1024];
    uint64_t seq;
    unsigned live;
    int fd;       /* writer's descriptor, -1 when closed or recovered */
    bool current; /* still appended to */
    bool store;   /* a deferred-store file (dstore-*), not a segment */
    /* finished messages still in this file: a journal snapshot must say so */
    char (*done)[QM_QID_SIZE];
    size_t n_done, cap_done;
    /* messages copied from here to the deferred store: once they finish, a
     * snapshot must say so too, or this file's old copy would come back */
    char (*moved)[QM_QID_SIZE];
    size_t n_moved, cap_moved;
};
TAILQ_HEAD(qm_segq, qm_seg);

/*
 * A finished message's claim on its segment, given up only once the batch
 * carrying its finishing journal entries (and so, by the batch order, any
 * DSN generated for it) is durable.
 */
struct qm_release {
    struct qm_seg *seg;
    char qid[QM_QID_SIZE];
    bool moved; /* a copy lives on elsewhere: not "finished" in a snapshot */
};

struct qm_spool;
/** Called for each record once its batch completed: res 0 durable, or -errno. */
typedef void (*qm_committed_fn)(struct qm_spool *sp, struct mx_queue_msg *m, int res);
/** Called for each batch whose journal part completed (res 0 or -errno). */
typedef void (*qm_jdone_fn)(struct qm_spool *sp, int res);

struct qm_spool {
    struct io_uring *ring;
    char dir[400];
    int dirfd;
    int seg_fd;
    uint64_t seg_off;
    uint64_t seg_max; /* roll to a new segment after this many bytes */
    struct qm_seg *seg;
    struct qm_segq segs;
    /* the deferred store: long-deferred messages are copied here so that
     * the segments they pinned can go (same record format, own files) */
    struct qm_seg *store;
    int store_fd;
    uint64_t store_off;
    int j_fd;
    uint64_t j_off;
    _Atomic uint64_t *seq; /* shared file sequence counter */
    struct qm_msgq pending; /* commit requested, not yet written */
    size_t n_pending;
    uint8_t *jbuf; /* journal entries not yet written */
    size_t jlen, jcap;
    unsigned inflight; /* batches submitted, not completed */
    uint64_t j_max;    /* rotate the journal (with a snapshot) beyond this size */
    char j_path[1024];
    char j_old[4][1024]; /* journals to remove once the snapshot is durable */
    unsigned n_j_old;
    bool j_snapshot_pending;
    /* segment releases waiting for the journal entries gathered with them */
    struct qm_release *rel;
    size_t n_rel, cap_rel;
    /* internal records (DSNs) whose write failed: written again after
     * retry_at (monotonic ms); journal entries wait for them */
    struct qm_msgq retry;
    uint64_t retry_at;
    qm_committed_fn on_committed;
    qm_jdone_fn on_jdone;
    void *owner;
    /* counters */
    uint64_t n_fsync, n_batches, n_records, n_write_errors;
};

/**
 * Open dir (created), a fresh segment and journal with sequence numbers
 * from *seq, fsync the directory. Blocking; runs at worker start.
 */
int qm_spool_open(struct qm_spool *sp, const char *dir, _Atomic uint64_t *seq,
                  struct io_uring *ring);
/** Close files and drop what was never flushed, without callbacks (the callers are gone). */
void qm_spool_close(struct qm_spool *sp);
/** Queue a sealed message for the next flush. */
void qm_spool_add(struct qm_spool *sp, struct mx_queue_msg *m);
/** Queue a journal entry for the next flush. 0 or -ENOMEM. */
int qm_spool_journal(struct qm_spool *sp, const struct qm_jentry *e);
/**
 * Group commit: write every pending record and journal entry, chained to
 * one fdatasync per file, and submit. Callbacks run from the CQEs.
 * 0, or -errno (then the pending records' callbacks ran with the error).
 */
int qm_spool_flush(struct qm_spool *sp);
/** Remember that message qid in seg is finished. 0 or -ENOMEM. */
int qm_seg_add_done(struct qm_seg *seg, const char *qid);
/** Remember that message qid was copied out of seg (deferred store). 0 or -ENOMEM. */
int qm_seg_add_moved(struct qm_seg *seg, const char *qid);
/** Free a segment object (not the file). */
void qm_seg_free(struct qm_seg *seg);
/**
 * Message qid in seg is finished: its segment reference is dropped once
 * the journal entries queued so far are durable (see struct qm_release).
 */
void qm_spool_release(struct qm_spool *sp, struct qm_seg *seg, const char *qid);
/** The record of qid in seg was copied to the deferred store: drop seg's claim (no "done"). */
void qm_spool_release_moved(struct qm_spool *sp, struct qm_seg *seg, const char *qid);
/** An internal record's write failed: keep it and write it again in a second. */
void qm_spool_retry(struct qm_spool *sp, struct mx_queue_msg *m);
/**
 * Start a new journal file; the caller then queues a snapshot of every
 * live state with qm_spool_journal(). The old journal files of this
 * directory are removed once the batch carrying the snapshot is durable.
 */
int qm_spool_journal_rotate(struct qm_spool *sp);
/** Unlink finished segments (live 0, not current) when no batch is in flight. */
void qm_spool_gc(struct qm_spool *sp);
/**
 * Process CQEs of ring like the worker loop (tests, shutdown): wait for at
 * least one when wait is true. Returns the number dispatched or -errno.
 */
int qm_ring_dispatch(struct io_uring *ring, bool wait);

/** Seal m (assign header and CRC) before qm_spool_add. */
void qm_msgbuf_seal(struct mx_queue_msg *m);

/* ---- recovery --------------------------------------------------------- */

/** A message known to the queue manager. */
enum qm_rstate { QM_R_PENDING = 0, QM_R_DELIVERED, QM_R_FAILED };
enum qm_mstate { QM_M_READY = 0, QM_M_ACTIVE, QM_M_DEFERRED };

struct qm_msg {
    TAILQ_ENTRY(qm_msg) link; /* ready or waiting list */
    char qid[QM_QID_SIZE];
    struct mx_envelope env;
    uint8_t *rstate; /* per recipient */
    uint8_t *buf;    /* whole record (or body only when body_off is 0); NULL while
                      * deferred: read back from the segment when due */
    size_t body_off, body_len;
    struct qm_seg *seg;
    uint64_t rec_off; /* where the record lies in seg */
    size_t rec_len;
    enum qm_mstate state;
    bool held, deleted, on_list;
    bool quarantined; /* from env.quarantine, until released */
    bool delay_warned; /* its delay DSN was sent (QM_J_WARNED) */
    bool moving;       /* being copied to the deferred store (on the busy list) */
    enum qm_mstate pre_move; /* its state before the copy started */
    uint64_t compact_after_ms; /* unix ms: not before (after a failed copy) */
    uint8_t gauge;    /* the MX_STAT_QUEUE_* gauge it is counted in (0: none) */
    uint32_t attempts;
    uint64_t next_attempt_ms; /* unix ms */
    char last_error[QM_J_ERR_MAX + 1];
    unsigned dir_index; /* recovery: worker dir the segment lives in */
};
TAILQ_HEAD(qm_mq, qm_msg);

static inline const uint8_t *qm_msg_body(const struct qm_msg *m)
{
    return m->buf + m->body_off;
}

void qm_msg_free(struct qm_msg *m);

/** Result of recovery: live messages and their segments, per worker dir. */
struct qm_recovered {
    struct qm_msg **msgs;
    size_t n;
    struct qm_seg **segs; /* segments still holding live messages */
    unsigned *seg_dir;
    size_t n_segs;
    uint64_t max_seq;
    /* counters for logs and tests */
    size_t n_records, n_torn, n_corrupt, n_jentries, n_finished, n_segs_deleted;
};

/**
 * Scan spool_dir: every w<N>/seg-* and journal-*, verify CRCs, move broken
 * bytes to spool_dir/corrupt, replay journals, delete segments whose
 * messages are all finished and old journals (after writing a compacted
 * journal per worker dir index mod n_workers).
 */
int qm_recover(const char *spool_dir, unsigned n_workers, struct qm_recovered *out);
void qm_recovered_free(struct qm_recovered *r);

/** Apply one journal entry to m. */
void qm_msg_apply(struct qm_msg *m, const struct qm_jentry *e);
/** Read m's record back from its segment (CRC checked) into m->buf. 0 or -errno. */
int qm_msg_load(struct qm_msg *m);
/** True when every recipient is done or the message was deleted. */
bool qm_msg_finished(const struct qm_msg *m);

/* ---- Maildir ---------------------------------------------------------- */

/**
 * Deliver msg to the Maildir dir for rcpt: tmp/ then rename to new/, fsync
 * file and directory, prefixed by Return-Path and Delivered-To.
 * 0 or -errno; name (if not NULL) receives the file name.
 */
int qm_maildir_deliver(const char *dir, const char *qid, const char *sender, const char *rcpt,
                       const uint8_t *msg, size_t len, char *name, size_t name_size);

/** Asynchronous Maildir delivery on a worker's ring (qm_maildir.c). */
struct qm_md_job;
TAILQ_HEAD(qm_md_jobq, qm_md_job);
struct qm_md {
    struct io_uring *ring;
    struct qm_md_jobq renamed; /* waiting for their directory's fsync */
    unsigned inflight;         /* file chains and directory fsyncs on the ring */
    uint64_t n_dir_fsync;
};
/** done: 0 once the file is durable in DIR/new, or -errno. Runs from a CQE. */
typedef void (*qm_md_done_fn)(void *arg, int res);
void qm_md_init(struct qm_md *md, struct io_uring *ring);
/**
 * Start delivering msg (valid until done runs) to the Maildir dir: same
 * bytes and name scheme as qm_maildir_deliver(). 0 (done will run) or
 * -errno (it will not).
 */
int qm_maildir_start(struct qm_md *md, const char *dir, const char *qid, const char *sender,
                     const char *rcpt, const uint8_t *msg, size_t len, qm_md_done_fn done,
                     void *arg);
/** Once per loop turn: one fsync per directory for the files renamed since. */
void qm_maildir_flush(struct qm_md *md);

/* ---- queue manager ---------------------------------------------------- */

struct qm_ctl_req;

struct qm_worker {
    struct mx_queue *q;
    struct mx_worker *w;
    unsigned index;
    bool started;
    struct qm_spool sp;
    struct qm_md md;
    struct qm_mq ready;   /* due now */
    struct qm_mq waiting; /* deferred or held */
    struct qm_mq busy;    /* delivery in progress */
    size_t n_msgs;
    unsigned active; /* deliveries in flight */
    uint32_t counter;
    uint64_t next_scan_ms; /* monotonic */
    uint64_t next_statvfs_ms;
    bool spool_full;
    _Atomic bool flush_req;
    /* control hand-off, under q->ctl_lock */
    _Atomic bool ctl_flag;
    struct qm_ctl_req *ctl_req;
    /* recovered messages waiting for the worker to start */
    struct qm_msg **boot;
    size_t n_boot;
    struct qm_seg **boot_segs;
    size_t n_boot_segs;
};

struct mx_queue {
    const struct mx_config *cfg;
    char spool_dir[400];
    unsigned n_workers;
    struct qm_worker *workers;
    _Atomic uint64_t seq;
    _Atomic bool frozen;
    _Atomic bool inbound_paused;
    pthread_mutex_t ctl_lock;
    pthread_cond_t ctl_cond;
    uint64_t reserve_bytes; /* free space kept back from new mail */
};

/** Build a queue id from unix ms, worker index and a counter. */
void qm_make_qid(char out[QM_QID_SIZE], uint64_t unix_ms, unsigned worker, uint32_t counter);

/** Unix time in ms (CLOCK_REALTIME). */
uint64_t qm_unix_ms(void);

/**
 * Attach worker idx of q to ring (w may be NULL in tests: then drive it
 * with qm_tick(NULL, qw) and qm_ring_dispatch()). Opens its spool.
 */
int qm_worker_attach(struct mx_queue *q, unsigned idx, struct io_uring *ring,
                     struct mx_worker *w);
/** Write a snapshot of the worker's state into a fresh journal (see qm_spool_journal_rotate). */
int qm_journal_snapshot(struct qm_worker *qw);
/** Queue manager tick (registered per worker). */
void qm_tick(struct mx_worker *w, void *arg);
/** Run a control request on the worker (under ctl_lock). */
void qm_ctl_run(struct qm_worker *qw, struct qm_ctl_req *req);
/** Add a message to a worker's manager (ready or waiting by its state). */
void qm_worker_add(struct qm_worker *qw, struct qm_msg *m);
/** Journal a state change of m through the worker's spool. */
void qm_journal(struct qm_worker *qw, const struct qm_msg *m, enum qm_jtype type, uint32_t rcpt);
/** Put m on the list its state says (busy, waiting or ready). */
void qm_list_insert(struct qm_worker *qw, struct qm_msg *m);
/** Take m off its list (no-op when on none). */
void qm_list_remove(struct qm_worker *qw, struct qm_msg *m);
/** A message is finished: drop it, release its segment. */
void qm_worker_finish(struct qm_worker *qw, struct qm_msg *m);

#endif
