/*
 * console.h - the gateway's counters and the ways to look at them:
 * per-core counters without atomics, log2 latency histograms, snapshots,
 * renderers (text, JSON, Prometheus), the HTTP endpoint (/metrics,
 * /api/stats) and the `mxctl top` terminal console.
 *
 * Hot path: a worker thread binds itself to its slot once
 * (mx_stats_bind_slot()) and then counts with MX_STATS_ADD()/mx_stats_observe():
 * a plain load and store into a cache-line-aligned block only that thread
 * writes. Readers (the control thread, the HTTP thread) sum the slots. No
 * locked instruction and no shared cache line on the hot path; a reader may
 * see a value one increment old, never a torn one (64-bit relaxed loads and
 * stores).
 *
 * Threads that did not bind a slot (service threads, tests) count into a
 * shared slot with atomic adds: correct, just slower.
 */
#ifndef MX_CONSOLE_CONSOLE_H
#define MX_CONSOLE_CONSOLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Every counter: X(id, group, kind, prometheus name, labels, help).
 * kind: C = counter (only grows), G = gauge (workers add and subtract;
 * the sum over slots is the value, read as signed).
 * Metric names and help text are documented in docs/METRICS.md.
 */
#define MX_STATS_COUNTERS(X)                                                                       \
    X(CONN_OPEN, CONN, G, "mxgate_connections_open", "", "SMTP connections open now")              \
    X(CONN_TOTAL, CONN, C, "mxgate_connections_total", "", "SMTP connections accepted")            \
    X(CONN_REJ_RATE, CONN, C, "mxgate_connections_rejected_total", "reason=\"rate\"",             \
      "SMTP connections refused, by reason")                                                       \
    X(CONN_REJ_CONCURRENCY, CONN, C, "mxgate_connections_rejected_total",                          \
      "reason=\"concurrency\"", "SMTP connections refused, by reason")                             \
    X(CONN_REJ_BLOCKLIST, CONN, C, "mxgate_connections_rejected_total", "reason=\"blocklist\"",   \
      "SMTP connections refused, by reason")                                                       \
    X(CONN_REJ_MAINTENANCE, CONN, C, "mxgate_connections_rejected_total",                          \
      "reason=\"maintenance\"", "SMTP connections refused, by reason")                             \
    X(CONN_REJ_OTHER, CONN, C, "mxgate_connections_rejected_total", "reason=\"other\"",           \
      "SMTP connections refused, by reason")                                                       \
    X(ACCEPT_ERRORS, CONN, C, "mxgate_accept_errors_total", "",                                   \
      "accept(2) failures on the listeners (EMFILE, ENOBUFS, ...)")                                \
    X(RECV_NOBUFS, CONN, C, "mxgate_recv_nobufs_total", "",                                        \
      "Receives re-armed because the provided-buffer ring ran dry")                                \
    X(REPLY_2XX, SMTP, C, "mxgate_smtp_replies_total", "class=\"2xx\"",                            \
      "SMTP replies sent, by class")                                                               \
    X(REPLY_3XX, SMTP, C, "mxgate_smtp_replies_total", "class=\"3xx\"",                            \
      "SMTP replies sent, by class")                                                               \
    X(REPLY_4XX, SMTP, C, "mxgate_smtp_replies_total", "class=\"4xx\"",                            \
      "SMTP replies sent, by class")                                                               \
    X(REPLY_5XX, SMTP, C, "mxgate_smtp_replies_total", "class=\"5xx\"",                            \
      "SMTP replies sent, by class")                                                               \
    X(MSG_ACCEPTED, MSG, C, "mxgate_messages_total", "result=\"accepted\"",                        \
      "Messages at end of data, by result")                                                        \
    X(MSG_REJECTED, MSG, C, "mxgate_messages_total", "result=\"rejected\"",                        \
      "Messages at end of data, by result")                                                        \
    X(MSG_TEMPFAILED, MSG, C, "mxgate_messages_total", "result=\"tempfailed\"",                    \
      "Messages at end of data, by result")                                                        \
    X(BYTES_IN, MSG, C, "mxgate_bytes_received_total", "", "Bytes received from SMTP clients")     \
    X(BYTES_OUT, MSG, C, "mxgate_bytes_sent_total", "", "Bytes sent to SMTP clients")              \
    X(VERDICT_CLEAN, VERDICT, C, "mxgate_verdicts_total", "verdict=\"clean\"",                     \
      "Scan verdicts, by verdict")                                                                 \
    X(VERDICT_SPAM, VERDICT, C, "mxgate_verdicts_total", "verdict=\"spam\"",                       \
      "Scan verdicts, by verdict")                                                                 \
    X(VERDICT_VIRUS, VERDICT, C, "mxgate_verdicts_total", "verdict=\"virus\"",                     \
      "Scan verdicts, by verdict")                                                                 \
    X(VERDICT_BANNED, VERDICT, C, "mxgate_verdicts_total", "verdict=\"banned\"",                   \
      "Scan verdicts, by verdict")                                                                 \
    X(VERDICT_DLP, VERDICT, C, "mxgate_verdicts_total", "verdict=\"dlp\"",                         \
      "Scan verdicts, by verdict")                                                                 \
    X(AV_QUEUE, VERDICT, G, "mxgate_av_queue_depth", "", "Messages waiting for the AV pool")       \
    X(SCAN_ENCRYPTED, VERDICT, C, "mxgate_scan_flags_total", "flag=\"encrypted\"",                    \
      "Scanned messages with a condition, by flag")                                               \
    X(SCAN_ARCHIVE_CORRUPT, VERDICT, C, "mxgate_scan_flags_total", "flag=\"archive_corrupt\"",        \
      "Scanned messages with a condition, by flag")                                               \
    X(SCAN_TRUNCATED, VERDICT, C, "mxgate_scan_flags_total", "flag=\"truncated\"",                    \
      "Scanned messages with a condition, by flag")                                               \
    X(DNSBL_LISTED, VERDICT, C, "mxgate_dns_list_hits_total", "kind=\"dnsbl\"",                      \
      "DNS list answers that list the name asked, by kind of list")                               \
    X(URIBL_LISTED, VERDICT, C, "mxgate_dns_list_hits_total", "kind=\"uribl\"",                      \
      "DNS list answers that list the name asked, by kind of list")                               \
    X(DNS_LIST_FAILED, VERDICT, C, "mxgate_dns_list_failures_total", "",                          \
      "DNS list queries that failed (SERVFAIL, refused, timeout): counted as not listed")         \
    X(QUEUE_INCOMING, QUEUE, G, "mxgate_queue_messages", "state=\"incoming\"",                     \
      "Messages in the queue, by state")                                                           \
    X(QUEUE_ACTIVE, QUEUE, G, "mxgate_queue_messages", "state=\"active\"",                         \
      "Messages in the queue, by state")                                                           \
    X(QUEUE_DEFERRED, QUEUE, G, "mxgate_queue_messages", "state=\"deferred\"",                     \
      "Messages in the queue, by state")                                                           \
    X(QUEUE_HOLD, QUEUE, G, "mxgate_queue_messages", "state=\"hold\"",                             \
      "Messages in the queue, by state")                                                           \
    X(QUEUE_QUARANTINE, QUEUE, G, "mxgate_queue_messages", "state=\"quarantine\"",                 \
      "Messages in the queue, by state")                                                           \
    X(DELIVERY_OK, QUEUE, C, "mxgate_deliveries_total", "result=\"ok\"",                           \
      "Delivery attempts per recipient, by result")                                                \
    X(DELIVERY_DEFERRED, QUEUE, C, "mxgate_deliveries_total", "result=\"deferred\"",               \
      "Delivery attempts per recipient, by result")                                                \
    X(DELIVERY_BOUNCED, QUEUE, C, "mxgate_deliveries_total", "result=\"bounced\"",                 \
      "Delivery attempts per recipient, by result")                                                \
    X(SPOOL_FLUSHES, QUEUE, C, "mxgate_spool_flushes_total", "",                                   \
      "Spool group commits (one fdatasync each)")                                                  \
    X(SPOOL_FLUSHED_MSGS, QUEUE, C, "mxgate_spool_flushed_messages_total", "",                     \
      "Messages made durable by spool group commits")                                              \
    X(TCP_RETRANSMITS, TCP, C, "mxgate_tcp_retransmits_total", "", "TCP segments retransmitted")   \
    X(TCP_DROPS, TCP, C, "mxgate_tcp_drops_total", "", "TCP segments dropped")                     \
    X(TCP_SYNCOOKIES, TCP, C, "mxgate_tcp_syncookies_sent_total", "", "TCP SYN cookies sent")      \
    X(NIC_RX_PACKETS, TCP, C, "mxgate_nic_rx_packets_total", "", "Packets received by the NIC")    \
    X(NIC_TX_PACKETS, TCP, C, "mxgate_nic_tx_packets_total", "", "Packets sent by the NIC")        \
    X(NIC_RX_MISSED, TCP, C, "mxgate_nic_rx_missed_total", "",                                     \
      "Packets the NIC dropped for lack of RX descriptors")                                        \
    X(WORKER_BUSY_US, LOAD, C, "mxgate_worker_busy_seconds_total", "",                             \
      "Time workers spent working (not waiting), per worker")                                      \
    X(WORKER_LOOPS, LOAD, C, "mxgate_worker_loops_total", "", "Event-loop iterations, per worker")

/* Histograms: X(id, prometheus name, help); values observed in microseconds. */
#define MX_STATS_HISTOGRAMS(X)                                                                     \
    X(FSYNC, "mxgate_spool_fsync_seconds", "Spool flush (fdatasync) latency")                      \
    X(SCAN, "mxgate_scan_seconds", "Scan time per message")                                        \
    X(SMTP_TXN, "mxgate_smtp_transaction_seconds",                                                 \
      "Time from MAIL FROM to the final reply after data")

enum mx_stat {
#define MX_STAT_ENUM(id, g, k, n, l, h) MX_STAT_##id,
    MX_STATS_COUNTERS(MX_STAT_ENUM)
#undef MX_STAT_ENUM
        MX_STAT__COUNT
};

enum mx_hist {
#define MX_HIST_ENUM(id, n, h) MX_HIST_##id,
    MX_STATS_HISTOGRAMS(MX_HIST_ENUM)
#undef MX_HIST_ENUM
        MX_HIST__COUNT
};

/*
 * log2 buckets: bucket 0 holds value 0..1, bucket b (b >= 1) holds
 * 2^(b-1) < v <= 2^b (microseconds); the last bucket holds everything above.
 */
#define MX_HIST_BUCKETS 32

/** Most slots (worker cores plus service slots) a registry can have. */
#define MX_STATS_MAX_SLOTS 128

/** One histogram's data (also the snapshot form). */
struct mx_stats_hist {
    uint64_t bucket[MX_HIST_BUCKETS];
    uint64_t count;
    uint64_t sum_us;
};

/** One slot's block: written by exactly one thread. Cache-line aligned. */
struct mx_stats_slot {
    _Alignas(64) uint64_t v[MX_STAT__COUNT];
    _Alignas(64) struct mx_stats_hist h[MX_HIST__COUNT];
};

/** Longest rule name the rule-hit tables keep (longer names are cut). */
#define MX_STATS_RULE_NAME 64

/** Rules a snapshot keeps: the most frequent ones. */
#define MX_STATS_TOP_RULES 20

/** Distinct rules each slot counts; hits of further rules go to rules_untracked. */
#define MX_STATS_RULES_PER_SLOT 2048

/** One scan rule and how often it hit (since start). */
struct mx_stats_rule {
    char name[MX_STATS_RULE_NAME];
    uint64_t hits;
};

/** A consistent-enough copy of every counter (sums and per slot). */
struct mx_stats_snapshot {
    uint64_t time_ms;      /**< CLOCK_MONOTONIC ms when taken */
    unsigned nslots;       /**< worker slots included in per_slot */
    uint64_t total[MX_STAT__COUNT];
    struct mx_stats_hist hist[MX_HIST__COUNT];
    uint64_t per_slot[MX_STATS_MAX_SLOTS][MX_STAT__COUNT];
    unsigned nrules;       /**< entries in top_rules, most hits first */
    struct mx_stats_rule top_rules[MX_STATS_TOP_RULES];
    uint64_t rules_untracked; /**< hits not counted by name (a slot's table was full) */
};

/** The thread's bound slot (NULL when unbound); used by the inline helpers. */
extern _Thread_local struct mx_stats_slot *mx_stats_tls;

/** Slot shared by unbound threads (atomic adds). */
extern struct mx_stats_slot mx_stats_shared;

/**
 * Create the process-wide registry with nslots per-thread slots (one per
 * worker). Calling it again replaces the registry (tests); not while
 * threads count.
 * @return 0, -EINVAL (0 or more than MX_STATS_MAX_SLOTS), -ENOMEM
 */
int mx_stats_init(unsigned nslots);

/** Free the registry; unbound counting keeps working (shared slot). */
void mx_stats_fini(void);

/** Number of slots of the registry (0 before mx_stats_init()). */
unsigned mx_stats_slots(void);

/**
 * Bind the calling thread to slot i: from now on its counting is plain
 * stores into that slot. Call once on each worker at start.
 * @return 0, or -EINVAL if i is out of range / no registry
 */
int mx_stats_bind_slot(unsigned i);

/** Add n (wraps: pass (uint64_t)-1 to decrement a gauge). */
static inline void mx_stats_add(enum mx_stat id, uint64_t n)
{
    struct mx_stats_slot *s = mx_stats_tls;
    if (__builtin_expect(s != NULL, 1)) {
        /* single writer: load+store, no lock prefix; relaxed so readers never tear */
        __atomic_store_n(&s->v[id], __atomic_load_n(&s->v[id], __ATOMIC_RELAXED) + n,
                         __ATOMIC_RELAXED);
    } else {
        __atomic_fetch_add(&mx_stats_shared.v[id], n, __ATOMIC_RELAXED);
    }
}

/** Bucket index of a value in microseconds. */
static inline unsigned mx_stats_bucket(uint64_t us)
{
    if (us <= 1)
        return 0;
    unsigned b = 64u - (unsigned)__builtin_clzll(us - 1);
    return b < MX_HIST_BUCKETS ? b : MX_HIST_BUCKETS - 1;
}

/** Record one observation of us microseconds in histogram id. */
void mx_stats_observe(enum mx_hist id, uint64_t us);

/**
 * Count one hit of a scan rule (by name) in the calling thread's slot; from an
 * unbound thread, in the shared table under a lock. Names are copied.
 */
void mx_stats_rule_hit(const char *name);

#define MX_STATS_INC(id) mx_stats_add(MX_STAT_##id, 1)
#define MX_STATS_DEC(id) mx_stats_add(MX_STAT_##id, (uint64_t)-1)
#define MX_STATS_ADD(id, n) mx_stats_add(MX_STAT_##id, (uint64_t)(n))

/** Sum every slot (and the shared one) into snap. */
void mx_stats_snapshot(struct mx_stats_snapshot *snap);

/** Prometheus name, label string ("" if none), help and kind ('C'/'G') of a counter. */
const char *mx_stats_name(enum mx_stat id);
const char *mx_stats_labels(enum mx_stat id);
const char *mx_stats_help(enum mx_stat id);
char mx_stats_kind(enum mx_stat id);

/** A short key for JSON and text output, e.g. "conn_open". */
const char *mx_stats_key(enum mx_stat id);

/**
 * Estimated q-quantile (0..1) of a histogram in microseconds, by linear
 * interpolation inside the bucket; 0 when empty.
 */
double mx_stats_hist_quantile(const struct mx_stats_hist *h, double q);

/* ---- rendering: each returns a malloc'd NUL-terminated string or NULL ---- */

/** "key value" lines, gauges signed, histograms as count/sum/p50/p90/p99. */
char *mx_stats_render_text(const struct mx_stats_snapshot *s);

/**
 * JSON object: {"time_ms":..,"slots":N,"counters":{key:value..},
 * "per_slot":[{key:value..}..],"histograms":{name:{"count","sum_us","buckets":[..]}}}.
 * Round-trips through mx_stats_parse_json().
 */
char *mx_stats_render_json(const struct mx_stats_snapshot *s);

/** Prometheus text exposition format 0.0.4 with HELP and TYPE lines. */
char *mx_stats_render_prometheus(const struct mx_stats_snapshot *s);

/**
 * Parse what mx_stats_render_json() wrote (e.g. `mxctl stats --json` from
 * the control socket) back into a snapshot. Unknown keys are ignored.
 * @return 0, or -EINVAL on malformed input
 */
int mx_stats_parse_json(const char *json, size_t len, struct mx_stats_snapshot *out);

/* ---- HTTP: /metrics and the admin API ---- */

struct mx_console_http;

/**
 * Handler for /api/<anything else> (e.g. queue operations), called on the
 * HTTP thread. Sets *body (malloc'd) and *content_type (static string).
 * @return HTTP status code
 */
typedef int (*mx_console_api_fn)(void *arg, const char *method, const char *path, char **body,
                                 const char **content_type);

/**
 * Serve GET /metrics (Prometheus) and GET /api/stats (JSON; ?format=text
 * for text) on addr ("127.0.0.1:9025", "[::1]:9025"; numeric only) from a
 * libmicrohttpd thread. api may be NULL.
 * @return 0, -EINVAL (address), -EADDRINUSE/-errno (could not listen)
 */
int mx_console_http_start(const char *addr, mx_console_api_fn api, void *api_arg,
                          struct mx_console_http **out);

/** The port actually bound (useful with port 0). */
unsigned mx_console_http_port(const struct mx_console_http *h);

/** Stop the server and free it. NULL is fine. */
void mx_console_http_stop(struct mx_console_http *h);

/* ---- top ---- */

/** Fills a snapshot (e.g. by asking the gateway). 0 or -errno. */
typedef int (*mx_console_fetch_fn)(void *arg, struct mx_stats_snapshot *out);

/**
 * Render one screen of `top` into buf as rows lines of at most cols
 * characters each ('\n'-separated, plain ASCII). prev may be NULL (no
 * rates yet). Used by mx_console_top() and by tests.
 * @return bytes written (excluding NUL)
 */
size_t mx_console_top_render(const struct mx_stats_snapshot *prev,
                             const struct mx_stats_snapshot *cur, const char *status, char *buf,
                             size_t bufsz, unsigned rows, unsigned cols);

/**
 * The live console: ncurses full screen, polls fetch every second, shows
 * rates, per-core load, queue sizes, verdict mix and latency percentiles;
 * q quits. Fits 80x24.
 * @return 0 on q, -errno if the terminal cannot be set up
 */
int mx_console_top(mx_console_fetch_fn fetch, void *arg);

#endif
