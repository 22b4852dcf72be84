/*
 * smtp.h - ESMTP server and client.
 *
 * The core is an incremental, transport-agnostic state machine (bytes in,
 * reply bytes out, no blocking). mx_smtp_server binds it to the stream
 * interface of dataplane.h and hands message bytes to the queue.
 *
 * (The smtp module owner extends this header with the session-level API
 * used by the unit tests and the fuzz targets.)
 */
#ifndef MX_SMTP_H
#define MX_SMTP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mx_config;
struct mx_queue;
struct mx_stream;
struct mx_smtp_server;
struct mx_scan_opts;

/**
 * The scan engine's options from cfg's scan.* keys (rule paths, threshold,
 * archive limits), as the server loads them; o->cache_dir is left NULL for
 * the caller (the server uses <spool>/scan-cache). o points into cfg.
 */
void mx_smtp_scan_opts(const struct mx_config *cfg, struct mx_scan_opts *o);

/**
 * Create the server side: TLS context (when smtp.tls.cert/key are set),
 * limits and policy from cfg; accepted messages go to q.
 * @return 0 or -errno (with a log line saying why, e.g. unreadable key).
 */
int mx_smtp_server_new(const struct mx_config *cfg, struct mx_queue *q,
                       struct mx_smtp_server **out);

/**
 * Free a server. Every session started on it must be over
 * (mx_smtp_server_refs() == 0), or the workers stopped. NULL is accepted.
 */
void mx_smtp_server_free(struct mx_smtp_server *srv);

/**
 * mx_accept_fn for the dataplane: starts an SMTP session on the stream.
 * The session holds a reference to srv until it ends, so it keeps the
 * settings it started with across configuration reloads.
 */
void mx_smtp_server_accept(struct mx_stream *s, void *srv);

/**
 * The server new sessions start on, swapped by configuration reload. The
 * main thread stores a new one (memory_order_release); workers load it at
 * accept time and may use it until their next RCU quiescent report
 * (dataplane.h, mx_dataplane_rcu_start()).
 */
struct mx_smtp_current {
    _Atomic(struct mx_smtp_server *) srv;
};

/**
 * mx_accept_fn for the dataplane when the configuration can be reloaded:
 * current is a struct mx_smtp_current *; the session starts on (and holds a
 * reference to) the server published there at this moment.
 */
void mx_smtp_server_accept_current(struct mx_stream *s, void *current);

/**
 * Sessions still holding srv (any worker). Once srv is no longer published
 * and the RCU grace period is over, the count only goes down; at 0 the
 * server may be freed.
 */
unsigned mx_smtp_server_refs(const struct mx_smtp_server *srv);

/** Number of sessions open on the calling worker (graceful shutdown). */
unsigned mx_smtp_server_sessions(void);

/**
 * Empty the recipient verification (callout) cache of every worker
 * (mxctl cache clear). Any thread: it bumps a generation each worker
 * compares at its next lookup, so no worker data is touched from here.
 */
void mx_smtp_checks_cache_clear(void);

/* ---- SMTP client (delivery) ---- */
/*
 * An incremental, transport-neutral SMTP client: bytes from the server go in
 * with mx_smtp_client_input(), bytes for the server come out of
 * mx_smtp_client_output(); no I/O, no clock. The caller (queue/deliver_smtp.c,
 * or a test harness) moves the bytes, arms a timer for
 * mx_smtp_client_timeout_ms() and reports EOF and timeouts back.
 *
 * One session: greeting, EHLO (HELO when EHLO gets 5xx), opportunistic
 * STARTTLS (OpenSSL over memory BIOs, no certificate verification) and a
 * second EHLO, then any number of transactions (each after the first starts
 * with RSET), then QUIT.
 */
struct mx_envelope;
struct mx_smtp_client;

/** Service extensions a server offered in its EHLO reply (bits). */
enum mx_smtp_client_ext {
    MX_SMTP_EXT_SIZE = 1u << 0,
    MX_SMTP_EXT_8BITMIME = 1u << 1,
    MX_SMTP_EXT_PIPELINING = 1u << 2,
    MX_SMTP_EXT_SMTPUTF8 = 1u << 3,
    MX_SMTP_EXT_CHUNKING = 1u << 4,
    MX_SMTP_EXT_DSN = 1u << 5,
    MX_SMTP_EXT_STARTTLS = 1u << 6,
    MX_SMTP_EXT_ENHANCEDSTATUSCODES = 1u << 7,
    MX_SMTP_EXT_BINARYMIME = 1u << 8,
};

/** Where a client session stands, seen from its driver. */
enum mx_smtp_client_state {
    MX_SMTPC_BUSY,     /**< waiting for the server, or output to send */
    MX_SMTPC_READY,    /**< session open, no transaction: send() or quit() */
    MX_SMTPC_TXN_DONE, /**< a transaction ended: read results(), then send() or quit() */
    MX_SMTPC_CLOSED,   /**< session over: send the remaining output, then close */
};

/** Session settings. Strings are copied. */
struct mx_smtp_client_params {
    const char *helo_name; /**< our EHLO/HELO name (required, no spaces) */
    bool starttls;         /**< opportunistic STARTTLS when the server offers it */
    void *tls_ctx;         /**< SSL_CTX * to use; NULL: the client makes its own */
    const char *tls_sni;   /**< server name for SNI, or NULL */
    unsigned ignore_ext;   /**< mx_smtp_client_ext bits to ignore even if offered */
    size_t bdat_chunk;     /**< BDAT chunk size; 0 = 1 MiB */
};

/** One transaction: a message for some recipients of an envelope. */
struct mx_smtp_client_msg {
    const struct mx_envelope *env; /**< sender, DSN and body parameters */
    const size_t *rcpt_idx;        /**< which env->rcpts to deliver to */
    size_t n_rcpt;
    const uint8_t *data; /**< whole message, CRLF line ends, not dot-stuffed */
    size_t len;
};

/** What the server (or the client itself) said for one recipient. */
struct mx_smtp_rcpt_result {
    int code;       /**< 250, 4xx, 5xx as answered; 0 = no answer (temporary) */
    char enh[16];   /**< enhanced status "5.1.1", or "" */
    char text[256]; /**< reply text (lines joined), or the client's reason */
};

/**
 * Create a client session; it expects the server greeting first.
 * @return 0, -EINVAL (missing or malformed helo_name), -ENOMEM, or -EIO when
 *         a TLS context cannot be made.
 */
int mx_smtp_client_new(const struct mx_smtp_client_params *p, struct mx_smtp_client **out);

/** Free a session (any state). NULL is accepted. */
void mx_smtp_client_free(struct mx_smtp_client *c);

/**
 * Feed bytes received from the server (any split). Replies are parsed,
 * acted on, and may produce output.
 * @return 0, or -EPROTO when the session failed on this input (malformed
 *         reply, unexpected reply, TLS failure); the state is then CLOSED.
 */
int mx_smtp_client_input(struct mx_smtp_client *c, const uint8_t *buf, size_t len);

/**
 * Bytes to send to the server now (*len 0: nothing). Message data is produced
 * here in bounded slices as the previous ones are consumed. The pointer is
 * valid until the next call into the client.
 */
const uint8_t *mx_smtp_client_output(struct mx_smtp_client *c, size_t *len);

/** The first n bytes returned by mx_smtp_client_output() were sent. */
void mx_smtp_client_output_done(struct mx_smtp_client *c, size_t n);

/**
 * Start a transaction (state READY or TXN_DONE). m and what it points to
 * must stay valid until the state leaves BUSY. Recipients the client must
 * refuse itself (address syntax, SIZE over the server's limit, SMTPUTF8
 * needed but not offered) get a 5xx result without being sent.
 * @return 0, -EBUSY (wrong state), -EINVAL, -ENOMEM.
 */
int mx_smtp_client_send(struct mx_smtp_client *c, const struct mx_smtp_client_msg *m);

/** Send QUIT (state READY or TXN_DONE); CLOSED follows the 221. 0 or -EBUSY. */
int mx_smtp_client_quit(struct mx_smtp_client *c);

/**
 * The transport closed (res 0) or failed (-errno). Recipients without a final
 * answer get code 0; the error reads "lost connection after RCPT" and so on.
 */
void mx_smtp_client_eof(struct mx_smtp_client *c, int res);

/** The timer armed for mx_smtp_client_timeout_ms() expired ("timeout after DATA"). */
void mx_smtp_client_timeout(struct mx_smtp_client *c);

/** Current state. */
enum mx_smtp_client_state mx_smtp_client_state(const struct mx_smtp_client *c);

/**
 * How long to wait for the server now, per RFC 5321 4.5.3.2 (greeting, MAIL,
 * RCPT 5 min, DATA 2 min, data block 3 min, end of data 10 min); 0 when idle.
 */
uint64_t mx_smtp_client_timeout_ms(const struct mx_smtp_client *c);

/** Results of the last transaction, in request order (*n = its n_rcpt). */
const struct mx_smtp_rcpt_result *mx_smtp_client_results(const struct mx_smtp_client *c,
                                                         size_t *n);

/** Why the session failed ("" when it did not), e.g. "timeout after DATA". */
const char *mx_smtp_client_error(const struct mx_smtp_client *c);

/** True when the session never became READY (greeting/EHLO/TLS failed): try the next host. */
bool mx_smtp_client_setup_failed(const struct mx_smtp_client *c);

/** True when the session failed in the TLS handshake (retry without STARTTLS). */
bool mx_smtp_client_tls_failed(const struct mx_smtp_client *c);

/** Extensions offered by the server in the last EHLO reply (mx_smtp_client_ext bits). */
unsigned mx_smtp_client_extensions(const struct mx_smtp_client *c);

/** The server's SIZE limit (0 = none announced). */
uint64_t mx_smtp_client_size_limit(const struct mx_smtp_client *c);

/** TLS protocol and cipher, "TLSv1.3 TLS_AES_256_GCM_SHA384", or "" in plaintext. */
const char *mx_smtp_client_tls(const struct mx_smtp_client *c);


#endif
