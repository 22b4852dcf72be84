/*
 * smtpd_internal.h - the ESMTP server session state machine, internal to
 * smtp/ (smtpd_session.c is the state machine, smtpd.c binds it to streams
 * and the queue). Tests and fuzz targets include it directly.
 */
#ifndef MX_SMTPD_INTERNAL_H
#define MX_SMTPD_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "queue/queue.h"

struct ssl_ctx_st;
struct mx_smtpd;

/** Limits and switches of a session (from struct mx_config). */
struct mx_smtpd_params {
    const char *hostname;
    uint64_t max_message_size;
    uint64_t max_message_total;
    unsigned max_recipients;
    unsigned max_line_length; /* command line incl. CRLF */
    unsigned max_errors;
    unsigned max_commands;     /* commands that move no mail (NOOP, RSET, VRFY, ...) */
    bool bare_lf_normalize;        /* else reject (554 5.6.11) */
    struct ssl_ctx_st *tls_ctx;    /* STARTTLS offered when set */
};

/**
 * A callback's answer "not yet": set r->code to this in connect, mail or rcpt
 * and answer later with mx_smtpd_session_reply(). Meanwhile the session holds
 * pipelined input (as during a commit) and answers it in order afterwards.
 */
#define MX_SMTPD_PENDING 1

/** A reply decided by the embedding code (policy, queue). */
struct mx_smtpd_reply {
    int code;         /* 0 = accept (the session uses its default 250 text);
                         MX_SMTPD_PENDING = answered later */
    const char *enh;  /* "5.7.1" */
    const char *text; /* "Relay access denied" */
};

/** What the session needs from its embedder. All callbacks are optional but output. */
struct mx_smtpd_ops {
    /** Bytes for the client (already encrypted when TLS is on). */
    void (*output)(void *ud, const uint8_t *buf, size_t len);
    /** The session is over: flush output, then close the connection. */
    void (*close)(void *ud);
    /** Policy for MAIL FROM (envelope filled so far). */
    void (*mail)(void *ud, const struct mx_envelope *env, struct mx_smtpd_reply *r);
    /** Policy for one recipient, before it is added. */
    void (*rcpt)(void *ud, const struct mx_envelope *env, const struct mx_rcpt *rcpt,
                 bool route_tricks, struct mx_smtpd_reply *r);
    /** DATA/BDAT starts: open the message. Return 0 or a reply in r. */
    void (*data_begin)(void *ud, const struct mx_envelope *env, struct mx_smtpd_reply *r);
    /** Message bytes, dot-unstuffed, in order. Return 0 or -errno (then the message fails). */
    int (*data_write)(void *ud, const uint8_t *buf, size_t len);
    /**
     * End of data, everything valid: make it durable. Answer later with
     * mx_smtpd_session_data_done(). The session processes no more input until then.
     */
    void (*data_end)(void *ud, const struct mx_envelope *env, uint64_t size);
    /** The message will not be committed (client gone, limit, bad line endings). */
    void (*data_abort)(void *ud);
    /** One log line about the session (no newline). */
    void (*log)(void *ud, const char *line);
    /** A complete message was refused at its end (limit, bare CR/LF, write error). */
    void (*refused)(void *ud, int code);
    /** A reply with this code was sent (for counters). */
    void (*replied)(void *ud, int code);
    /** STARTTLS finished (true) or failed (false). */
    void (*tls_done)(void *ud, bool ok, const char *info);
    /**
     * Policy for the connection, before the greeting (client address in
     * env). A code >= 400 is sent instead of the 220 and the session closes.
     */
    void (*connect)(void *ud, const struct mx_envelope *env, struct mx_smtpd_reply *r);
};

enum mx_smtpd_state {
    SMTPD_CMD = 0,
    SMTPD_DATA,
    SMTPD_BDAT,
    SMTPD_WAIT_COMMIT,
    SMTPD_TLS_HANDSHAKE,
    SMTPD_CLOSED,
    SMTPD_WAIT_REPLY, /* a connect/mail/rcpt answer is pending (mx_smtpd_session_reply) */
};

struct mx_smtpd_session;

/** Create a session. peer/helo strings are copied into its envelope. */
struct mx_smtpd_session *mx_smtpd_session_new(const struct mx_smtpd_params *p,
                                              const struct mx_smtpd_ops *ops, void *ud,
                                              const struct sockaddr *peer, socklen_t peer_len);

void mx_smtpd_session_free(struct mx_smtpd_session *s);

/** Send the 220 greeting. */
void mx_smtpd_session_greet(struct mx_smtpd_session *s);

/** Bytes from the client. All of them are consumed (buffered when needed). */
void mx_smtpd_session_input(struct mx_smtpd_session *s, const uint8_t *buf, size_t len);

/**
 * The answer to data_end(): res 0 and the queue id, or -errno (-ENOSPC →
 * 452 4.3.1, other → 451 4.3.0). Resumes processing of held input.
 */
void mx_smtpd_session_data_done(struct mx_smtpd_session *s, int res, const char *queue_id);

/**
 * The late answer to a connect, mail or rcpt callback that returned
 * MX_SMTPD_PENDING: code 0 accepts (220 greeting, 250 for MAIL/RCPT), any
 * other code is sent with r->enh and r->text (copied at once). Then held
 * input is processed. Ignored unless an answer is pending (e.g. the session
 * closed on a timeout meanwhile). Must not be called from inside the
 * callback that returned MX_SMTPD_PENDING.
 */
void mx_smtpd_session_reply(struct mx_smtpd_session *s, const struct mx_smtpd_reply *r);

/**
 * Refuse the message whose data_end() is pending with the reply r (code
 * >= 400, e.g. 554 5.7.1 from a check made at end of data) instead of
 * committing it, or drop it with a 250 (policy "discard"); then held input
 * is processed. Ignored unless a data_end() answer is pending.
 */
void mx_smtpd_session_data_refuse(struct mx_smtpd_session *s, const struct mx_smtpd_reply *r);

/** Timer expired: 421 4.4.2 and close. */
void mx_smtpd_session_timeout(struct mx_smtpd_session *s);

/** The gateway is stopping: idle sessions get 421 4.3.2 and close. */
void mx_smtpd_session_shutdown(struct mx_smtpd_session *s);

/** Client talked before the greeting: 554 5.5.0 and close. */
void mx_smtpd_session_pregreet(struct mx_smtpd_session *s);

/** Send one reply line and close (421 maintenance etc.). */
void mx_smtpd_session_reject_and_close(struct mx_smtpd_session *s, const char *line);

enum mx_smtpd_state mx_smtpd_session_state(const struct mx_smtpd_session *s);

/** True while inside DATA/BDAT (the embedder arms the data timeout). */
bool mx_smtpd_session_in_data(const struct mx_smtpd_session *s);

/** Counters for the disconnect log line. */
struct mx_smtpd_counts {
    unsigned ehlo, helo, mail, rcpt, data, bdat, rset, quit, starttls, unknown, commands,
        errors, messages;
};
const struct mx_smtpd_counts *mx_smtpd_session_counts(const struct mx_smtpd_session *s);

/** The envelope being built (for the embedder's logs). */
const struct mx_envelope *mx_smtpd_session_envelope(const struct mx_smtpd_session *s);

/** True when the client greeted with EHLO (the Received header's "with ESMTP"). */
bool mx_smtpd_session_esmtp(const struct mx_smtpd_session *s);

#endif
