/*
 * scan.h - public API of the scan engine: what a message is, decided while
 * its DATA bytes stream in, ready at end of data with no second pass.
 *
 * Objects and threads:
 *   struct mx_scan_engine  immutable once loaded: parsed rules, compiled
 *                          Hyperscan databases (cached on disk by content
 *                          hash), PCRE2 programs. Shared by all workers; a
 *                          reload builds a new engine and swaps the pointer.
 *   struct mx_scan_worker  one per worker thread (lcore): Hyperscan scratch,
 *                          PCRE2 match data, libmagic handle and a pool of
 *                          message states. Never used by two threads.
 *   struct mx_scan_msg     one message being received; from the worker's
 *                          pool, so beginning a message allocates nothing
 *                          once the pool is warm. Several messages of one
 *                          worker may be open at once (one per session).
 *
 * Data path: mx_scan_msg_feed() takes the raw message bytes (after SMTP
 * dot-unstuffing, CRLF line ends) in chunks split anywhere; the MIME parser
 * decodes parts on the fly and feeds Hyperscan streams (body text, raw body,
 * full message) chunk by chunk. Headers and URIs are scanned in block mode
 * once each is complete (a header rule needs the whole unfolded value; a URI
 * rule one whole URI). mx_scan_msg_end() evaluates meta rules and returns the
 * verdict.
 *
 * Anti-virus (libclamav) lives behind its own API below: a service thread
 * pool fed through a lock-free ring; workers submit and poll, never block.
 */
#ifndef MX_SCAN_SCAN_H
#define MX_SCAN_SCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Options for mx_scan_engine_load(). Zero means "default" everywhere. */
struct mx_scan_opts {
    /* rule files or directories (a directory: its *.pre, then *.cf and
     * *.rules files in name order), loaded in this order */
    const char *const *rule_paths;
    size_t n_rule_paths;
    /* directory for compiled-database cache files; NULL: no cache */
    const char *cache_dir;
    double threshold;          /* spam at score >= threshold; default 5.0 */
    size_t body_keep;          /* rendered body text kept per message for
                                * PCRE2 confirmation and DLP; default 256 KiB */
    size_t full_keep;          /* raw message kept for `full` rules that need
                                * PCRE2; default 1 MiB */
    unsigned max_uris;         /* URIs kept per message; default 256 */
    /* archives (zip, rar, 7z, tar, gzip/bzip2/xz) among the attachments are
     * opened and their members run through the attachment rules */
    size_t archive_max_bytes;     /* largest archive kept and opened (top or
                                   * nested); default 4 MiB */
    unsigned archive_max_depth;   /* archive levels opened; default 3 */
    unsigned archive_max_members; /* members listed per attachment; default 1000 */
    uint64_t archive_max_total;   /* bytes decompressed per attachment, all
                                   * levels; default 64 MiB (zip bombs) */
    /* the same two budgets for all archive attachments of one message
     * together (many bombs in one message); default 256 MiB, 4000 */
    uint64_t archive_max_message_total;
    unsigned archive_max_message_members;
    /* CPU time all archive walks of one message may take (thread CPU time,
     * checked between reads); default 2000 ms */
    unsigned archive_max_message_cpu_ms;
};

/** What mx_scan_engine_load() made of the rule files. */
struct mx_scan_stats {
    unsigned rules;          /* live rule names (definitions in live blocks) */
    unsigned regex;          /* header/body/rawbody/uri/full regex rules */
    unsigned hs_exact;       /* ... run exactly by Hyperscan */
    unsigned hs_prefilter;   /* ... Hyperscan prefilter + PCRE2 confirmation */
    unsigned pcre_only;      /* ... PCRE2 alone (Hyperscan refused even prefilter) */
    unsigned pcre_shared;    /* ... whose repeated group PCRE2 runs as a subroutine
                              * (too large for PCRE2 as written) */
    unsigned located;        /* ... whose PCRE2 search starts only where a match can
                              * (a reversed-regex locator, see engine.c) */
    unsigned ascii_variants; /* body databases with a variant for ASCII text */
    unsigned pcre_ascii;     /* PCRE2-only body rules Hyperscan runs on ASCII text
                              * (in an ASCII variant, see engine.c pcre_ascii()) */
    unsigned meta;           /* meta rules */
    unsigned dlp;            /* dlp rules */
    unsigned attachment;     /* attachment rules */
    unsigned native;         /* SpamAssassin eval rules computed natively */
    unsigned skipped;        /* rules that cannot run (eval, network, bad regex) */
    unsigned zero_score;     /* regex/meta rules disabled by a 0 score */
    unsigned databases;      /* Hyperscan databases built or loaded */
    bool from_cache;         /* every database came from the disk cache */
    double compile_seconds;  /* time spent compiling (0 from cache) */
};

struct mx_scan_engine;
struct mx_scan_worker;
struct mx_scan_msg;

/**
 * Load rules and build the engine.
 * @param o    options (rule_paths required)
 * @param out  receives the engine
 * @param err  on failure, receives a malloc'd message (caller frees); may be NULL
 * @return 0, -EINVAL (syntax error in a rule file), -ENOENT (missing file),
 *         -ENOMEM, -EIO (Hyperscan compile failure).
 */
int mx_scan_engine_load(const struct mx_scan_opts *o, struct mx_scan_engine **out, char **err);

/** Free an engine. No worker of it may remain. */
void mx_scan_engine_free(struct mx_scan_engine *e);

/** Load statistics (counts of exact / prefilter / skipped rules). */
void mx_scan_engine_stats(const struct mx_scan_engine *e, struct mx_scan_stats *st);

/**
 * The i-th rule that does not run, for `mxgate --check`.
 * @return 0 and sets *name / *why, or -ENOENT past the end.
 */
int mx_scan_engine_skipped(const struct mx_scan_engine *e, size_t i, const char **name,
                           const char **why);

/** Score threshold in force. */
double mx_scan_engine_threshold(const struct mx_scan_engine *e);

/** Create the per-thread state for `e`. NULL on ENOMEM. */
struct mx_scan_worker *mx_scan_worker_new(struct mx_scan_engine *e);

/** Free a worker; every message begun on it must be freed first. */
void mx_scan_worker_free(struct mx_scan_worker *w);

/** Begin scanning a message on worker `w`. NULL on ENOMEM. */
struct mx_scan_msg *mx_scan_msg_begin(struct mx_scan_worker *w);

/**
 * Optional envelope data for the EnvelopeFrom pseudo header (SpamAssassin).
 * Call before the first feed. `from` may be NULL (null reverse-path).
 */
void mx_scan_msg_set_envelope(struct mx_scan_msg *m, const char *from);

/**
 * Feed the next `len` bytes of the raw message.
 * @return 0, or -EINVAL after mx_scan_msg_end().
 */
int mx_scan_msg_feed(struct mx_scan_msg *m, const uint8_t *buf, size_t len);

/** Verdict flags (struct mx_scan_result.flags). */
enum mx_scan_flag {
    MX_SCAN_SPAM = 1u << 0,        /* score >= threshold */
    MX_SCAN_MALFORMED = 1u << 1,   /* MIME defects were found (see defects) */
    MX_SCAN_TRUNCATED = 1u << 2,   /* a limit (parts, depth, kept text) was hit */
    MX_SCAN_ATTACHMENT = 1u << 3,  /* an attachment rule hit */
    MX_SCAN_DLP = 1u << 4,         /* a dlp rule hit */
    MX_SCAN_ENCRYPTED = 1u << 5,   /* an archive attachment holds encrypted data */
    MX_SCAN_ARCHIVE_CORRUPT = 1u << 6, /* an archive attachment could not be read
                                        * (whole or part); an archive limit hit
                                        * sets MX_SCAN_TRUNCATED */
};

/** Result of one message; strings stay valid until mx_scan_msg_free(). */
struct mx_scan_result {
    double score;
    double threshold;
    unsigned flags;           /* enum mx_scan_flag */
    unsigned nhits;           /* reported rules that hit (no "__" rules) */
    const char *const *hits;  /* their names, sorted */
    const double *hit_scores; /* their scores, same order */
    unsigned defects;         /* MIME defect bits (scan/mime_internal.h) */
    unsigned nparts;          /* MIME parts seen */
    unsigned nuris;           /* URIs extracted */
    unsigned nattachments;    /* parts with a file name or attachment disposition */
    /* the first attachment an attachment rule hit, as a path through the
     * archives it sits in ("invoice.zip/x.exe"; raw bytes of the names, for
     * a reply sanitise them), and that rule; NULL when none hit */
    const char *attachment;
    const char *attachment_rule;
    /* the reported attachment rules that hit (a subset of hits, sorted), for
     * policies that exempt some of them per recipient */
    unsigned natt_hits;
    const char *const *att_hits;
    /* regex matches PCRE2 ended with an error (match/depth limit, JIT stack):
     * counted as no match, and MX_SCAN_TRUNCATED is set */
    unsigned regex_errors;
};

/**
 * End of data: finish parsing, run block scans, confirmations, DLP and meta
 * rules, and fill `res`.
 * @return 0, or -EINVAL when called twice.
 */
int mx_scan_msg_end(struct mx_scan_msg *m, struct mx_scan_result *res);

/**
 * The i-th URI extracted from the message (text and HTML parts, in order of
 * appearance, duplicates removed, at most mx_scan_opts.max_uris), as the uri
 * rules saw it. Read-only; valid after mx_scan_msg_end() until
 * mx_scan_msg_free().
 * @return the URI (NUL-terminated), or NULL when i >= mx_scan_result.nuris
 *         or the message has not ended.
 */
const char *mx_scan_msg_uri(const struct mx_scan_msg *m, unsigned i);

/** Give the message state back to its worker's pool. */
void mx_scan_msg_free(struct mx_scan_msg *m);

/**
 * Render the verdict as header lines, each ended by CRLF:
 *   X-Spam-Status: Yes|No, score=S required=R tests=A,B,... version=mxgate-V
 *   X-Spam-Score: S
 *   X-Spam-Rules: A,B,...
 * Long lines are folded. Returns the length written (without NUL), or
 * -ENOSPC when `cap` is too small (nothing usable written).
 */
int mx_scan_render_headers(const struct mx_scan_result *r, char *buf, size_t cap);

/** Is `name` (len bytes) one of the header names the verdict writes? */
bool mx_scan_is_verdict_header(const char *name, size_t len);

/**
 * Copy a header block (lines up to, not including, the blank line) dropping
 * every X-Spam-Status / X-Spam-Score / X-Spam-Rules / X-Spam-Flag /
 * X-Spam-Level field with its continuation lines: forged verdicts from
 * outside must not reach users. Returns bytes written; output is never
 * longer than input, so cap >= n is enough.
 */
size_t mx_scan_strip_verdict_headers(const char *in, size_t n, char *out, size_t cap);

/* ---- anti-virus --------------------------------------------------------- */

/** What to do with a message AV could not decide on. */
enum mx_av_action {
    MX_AV_ACCEPT = 0,    /* deliver (tagged by the caller) */
    MX_AV_REJECT,        /* 5xx at end of DATA */
    MX_AV_QUARANTINE,
    MX_AV_TEMPFAIL,      /* 4xx: try again later */
};

/** AV options. */
struct mx_av_opts {
    const char *db_dir;          /* signature directory (cl_load) */
    const char *tmp_dir;         /* libclamav temp dir; default /dev/shm */
    unsigned threads;            /* service threads; default 1 */
    unsigned queue_size;         /* ring slots (power of two); default 1024 */
    uint64_t max_scan_size;      /* bytes per message; default 50 MiB */
    unsigned max_scan_ms;        /* time limit per message; default 30000 */
    enum mx_av_action on_infected;    /* default MX_AV_REJECT */
    enum mx_av_action on_unscannable; /* encrypted / over limits; default ACCEPT */
    enum mx_av_action on_error;       /* AV cannot run; default TEMPFAIL */
};

/** Outcome of one AV scan. */
enum mx_av_status {
    MX_AV_PENDING = 0, /* still queued or scanning */
    MX_AV_CLEAN,
    MX_AV_INFECTED,
    MX_AV_UNSCANNABLE, /* encrypted archive, limits exceeded */
    MX_AV_ERROR,       /* engine failure, queue full, no engine */
};

struct mx_av;
struct mx_av_job;

/**
 * Start the AV service: loads and compiles the signatures, starts the
 * threads. Returns 0, -EIO (signatures could not load) or -ENOMEM.
 */
int mx_av_start(const struct mx_av_opts *o, struct mx_av **out, char **err);

/** Stop the threads and free the engine (pending jobs end as MX_AV_ERROR). */
void mx_av_stop(struct mx_av *av);

/**
 * Reload signatures: a background thread builds a new engine and swaps it in
 * when ready; scans keep using the old one meanwhile. Returns 0 when the
 * reload was started, -EBUSY when one is already running.
 */
int mx_av_reload(struct mx_av *av);

/** Number of completed reloads (a test can wait for it to change). */
unsigned mx_av_generation(const struct mx_av *av);

/**
 * Submit a message for scanning. `data` must stay valid until the job is
 * done (the spool or the session keeps it). Never blocks: when the ring is
 * full the job completes at once with MX_AV_ERROR.
 * Returns the job (owned by the caller, free with mx_av_job_free) or NULL on
 * ENOMEM.
 */
struct mx_av_job *mx_av_submit(struct mx_av *av, const uint8_t *data, size_t len);

/**
 * As mx_av_submit(), but the job owns `data` (malloc'd): the bytes are freed
 * with the job's last reference, so the caller may drop the job at any time
 * (the client went away) while a service thread still reads them. The caller
 * may read `data` until it calls mx_av_job_free(). NULL on ENOMEM (data is
 * then still the caller's).
 */
struct mx_av_job *mx_av_submit_owned(struct mx_av *av, uint8_t *data, size_t len);

/** Status of a job; MX_AV_PENDING until a service thread finishes it. */
enum mx_av_status mx_av_job_status(const struct mx_av_job *j);

/** Virus name for MX_AV_INFECTED / reason for UNSCANNABLE and ERROR. */
const char *mx_av_job_detail(const struct mx_av_job *j);

/** The policy action for a finished job (from mx_av_opts). */
enum mx_av_action mx_av_job_action(const struct mx_av *av, const struct mx_av_job *j);

/** Free a job; a pending job is cancelled (freed when its thread is done). */
void mx_av_job_free(struct mx_av_job *j);

#ifdef __cplusplus
}
#endif
#endif
