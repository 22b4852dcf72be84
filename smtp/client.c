/*
 * client.c - the SMTP client state machine used for delivery.
 *
 * Transport-neutral: server bytes in (mx_smtp_client_input), bytes for the
 * server out (mx_smtp_client_output), no I/O and no clock of its own. The
 * driver (queue/deliver_smtp.c over a dataplane stream, or a blocking test
 * harness) moves the bytes, arms the timer the client asks for, and reports
 * EOF and timeouts.
 *
 * Every command whose reply is still due sits in a FIFO of pending replies;
 * replies pop it in order. Without PIPELINING the FIFO never holds more than
 * one command; with it, [RSET] MAIL RCPT... DATA leave in one write (RFC 2920)
 * and BDAT chunks are pipelined. The per-recipient outcome is kept per
 * transaction: a RCPT 4xx/5xx is final, a RCPT 2xx waits for the message
 * reply (end of DATA or BDAT LAST), which then applies to every accepted
 * recipient.
 *
 * Choices worth knowing:
 *  - 8-bit bodies go to servers without 8BITMIME anyway (no BODY= parameter):
 *    RFC 6152 asks for a 7-bit conversion or a bounce, but common practice
 *    (Postfix's default) is to deliver as is, and nearly every server accepts
 *    it. A message that needs SMTPUTF8 (non-ASCII address) is refused with
 *    5.6.7 when the server does not offer SMTPUTF8 (RFC 6531 3.4).
 *  - Every transaction after the first on a connection starts with RSET: it
 *    clears any half-finished state and proves a reused connection alive; with
 *    PIPELINING it costs no round trip.
 *  - STARTTLS is opportunistic: no certificate verification; a 4xx/5xx answer
 *    to STARTTLS continues in plaintext; any byte the server sent after its
 *    220 in the clear is a response-injection attempt and fails the session.
 *  - Reply lines longer than MX_LINE_MAX are truncated, not rejected; a reply
 *    line that does not start with a 2xx-5xx code, or a reply that nobody
 *    asked for, ends the session (the conversation can no longer be trusted).
 */
#include "smtp/smtp.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "queue/queue.h"

#define MX_LINE_MAX 1024          /* reply line kept; RFC 5321 says 512 */
#define MX_REPLY_LINES_MAX 256    /* lines of one multi-line reply */
#define MX_DATA_SLICE (64 * 1024) /* message bytes produced per output slice */
#define MX_BDAT_DEFAULT (1024 * 1024)
#define MX_BDAT_INFLIGHT 4 /* pipelined BDAT chunks awaiting replies */
#define MX_CMD_MAX 4096    /* one command line incl. DSN parameters */

/* RFC 5321 4.5.3.2 timeouts, milliseconds. */
#define T_GREETING (300u * 1000)
#define T_COMMAND (300u * 1000)
#define T_DATA_INIT (120u * 1000)
#define T_DATA_BLOCK (180u * 1000)
#define T_DATA_END (600u * 1000)
#define T_QUIT (30u * 1000)

/** Commands whose reply is pending, in the order they were sent. */
enum pend_kind {
    K_GREETING,
    K_EHLO,
    K_HELO,
    K_STARTTLS,
    K_RSET,
    K_MAIL,
    K_RCPT,
    K_DATA,
    K_DOT,        /* end of data of a message with accepted recipients */
    K_DOT_IGNORE, /* lone "." after a 354 that nobody needed (RFC 2920 3.1) */
    K_BDAT,
    K_BDAT_LAST,
    K_QUIT,
};

/** The session's phase; the driver sees it folded into mx_smtp_client_state. */
enum phase {
    P_GREETING, /* waiting for 220 */
    P_SETUP,    /* EHLO/HELO/STARTTLS exchange */
    P_TLS,      /* TLS handshake running */
    P_READY,
    P_TXN,
    P_TXN_DONE,
    P_QUIT,
    P_CLOSED,
};

enum body_state { B_NONE, B_SENDING, B_DONE };

struct pend {
    uint8_t kind;
    uint32_t idx; /* K_RCPT: index into the transaction's recipients */
};

struct cbuf {
    uint8_t *d;
    size_t off, len, cap; /* live bytes are d[off..len) */
};

struct reply {
    int code;
    unsigned lines;
    char enh[16];
    char text[256];
    size_t text_len;
};

/** Per-recipient bookkeeping of the current transaction. */
struct rcpt_state {
    bool final;    /* result will not change any more */
    bool accepted; /* RCPT got 2xx: waits for the message reply */
    bool skip;     /* refused locally, never sent */
};

struct mx_smtp_client {
    /* settings */
    char helo[256];
    char sni[256];
    bool starttls;
    unsigned ignore_ext;
    size_t bdat_chunk;
    SSL_CTX *ssl_ctx;
    bool own_ctx;

    /* session */
    enum phase phase;
    bool ever_ready;
    bool tls_failed;
    bool esmtp;        /* EHLO (not HELO) accepted */
    bool after_tls;    /* EHLO after STARTTLS: do not STARTTLS again */
    unsigned ext;      /* accepted extensions */
    unsigned ext_tmp;  /* being collected from the current EHLO reply */
    uint64_t size_limit, size_tmp;
    char error[256];
    char tls_desc[128];

    /* TLS over memory BIOs */
    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl */

    /* input */
    char line[MX_LINE_MAX + 1];
    size_t line_len;
    bool line_overflow;
    struct reply rep;

    /* output (wire bytes) and plaintext scratch used under TLS */
    struct cbuf out;
    struct cbuf scratch;

    /* pending replies, FIFO */
    struct pend *pend;
    size_t pend_head, pend_n, pend_cap;

    /* current transaction */
    struct mx_smtp_client_msg m;
    struct mx_smtp_rcpt_result *res;
    struct rcpt_state *rs;
    size_t res_cap;
    size_t n_res;
    bool need_rset, rset_sent, mail_sent, mail_failed, data_cmd_sent, chunking;
    bool bdat_failed, bol;
    size_t rcpt_sent, accepted;
    enum body_state body;
    size_t body_off;   /* message bytes produced so far */
    size_t bdat_left;  /* bytes of the current BDAT chunk still to produce */
    bool bdat_last;    /* the current chunk is the LAST one */
    unsigned bdat_inflight;
};

/* ---- small buffers ---------------------------------------------------- */

static int cbuf_reserve(struct cbuf *b, size_t n)
{
    if (b->off && b->off == b->len)
        b->off = b->len = 0;
    if (b->len + n <= b->cap)
        return 0;
    if (b->off) { /* compact before growing */
        memmove(b->d, b->d + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + n <= b->cap)
            return 0;
    }
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n)
        cap *= 2;
    uint8_t *d = realloc(b->d, cap);
    if (!d)
        return -ENOMEM;
    b->d = d;
    b->cap = cap;
    return 0;
}

static int cbuf_put(struct cbuf *b, const void *p, size_t n)
{
    int rc = cbuf_reserve(b, n);
    if (rc)
        return rc;
    memcpy(b->d + b->len, p, n);
    b->len += n;
    return 0;
}

static size_t cbuf_avail(const struct cbuf *b)
{
    return b->len - b->off;
}

/* ---- failure handling ------------------------------------------------- */

static const char *kind_stage(enum pend_kind k)
{
    switch (k) {
    case K_GREETING: return "CONNECT";
    case K_EHLO: return "EHLO";
    case K_HELO: return "HELO";
    case K_STARTTLS: return "STARTTLS";
    case K_RSET: return "RSET";
    case K_MAIL: return "MAIL";
    case K_RCPT: return "RCPT";
    case K_DATA: return "DATA";
    case K_BDAT: return "BDAT";
    case K_DOT:
    case K_DOT_IGNORE:
    case K_BDAT_LAST: return "END-OF-MESSAGE";
    case K_QUIT: return "QUIT";
    }
    return "?";
}

/** The SMTP stage the session is in, for "timeout after X" texts. */
static const char *stage(const struct mx_smtp_client *c)
{
    if (c->phase == P_TLS)
        return "STARTTLS";
    if (c->phase == P_TXN && c->body == B_SENDING)
        return c->chunking ? "BDAT" : "DATA";
    if (c->pend_n)
        return kind_stage((enum pend_kind)c->pend[c->pend_head].kind);
    if (c->phase == P_GREETING)
        return "CONNECT";
    if (c->phase == P_READY || c->phase == P_TXN_DONE)
        return "IDLE";
    return "END-OF-MESSAGE";
}

static void set_result(struct mx_smtp_rcpt_result *r, int code, const char *enh,
                       const char *text)
{
    r->code = code;
    snprintf(r->enh, sizeof r->enh, "%s", enh ? enh : "");
    snprintf(r->text, sizeof r->text, "%s", text ? text : "");
}

/** Give every recipient of the transaction without a final answer this one. */
static void fail_open_rcpts(struct mx_smtp_client *c, int code, const char *enh,
                            const char *text)
{
    if (c->phase != P_TXN)
        return;
    for (size_t i = 0; i < c->n_res; i++) {
        if (c->rs[i].final)
            continue;
        set_result(&c->res[i], code, enh, text);
        c->rs[i].final = true;
    }
}

/** End the session. The error text is kept; output already queued still leaves. */
static void session_fail(struct mx_smtp_client *c, int code, const char *enh, const char *fmt,
                         ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof c->error, fmt, ap);
    va_end(ap);
    if (!c->error[0])
        snprintf(c->error, sizeof c->error, "session failed");
    fail_open_rcpts(c, code, enh, c->error);
    c->pend_n = 0;
    c->pend_head = 0;
    c->body = c->body == B_SENDING ? B_DONE : c->body;
    c->phase = P_CLOSED;
}

/* ---- output ----------------------------------------------------------- */

/** Move what OpenSSL produced into the wire buffer. */
static int tls_drain(struct mx_smtp_client *c)
{
    for (;;) {
        size_t pending = BIO_ctrl_pending(c->wbio);
        if (!pending)
            return 0;
        int rc = cbuf_reserve(&c->out, pending);
        if (rc)
            return rc;
        int n = BIO_read(c->wbio, c->out.d + c->out.len, (int)pending);
        if (n <= 0)
            return 0;
        c->out.len += (size_t)n;
    }
}

/** Send plaintext protocol bytes: straight out, or through TLS. */
static int emit(struct mx_smtp_client *c, const void *p, size_t n)
{
    if (!n)
        return 0;
    if (!c->ssl)
        return cbuf_put(&c->out, p, n);
    const uint8_t *b = p;
    while (n) {
        int chunk = n > (1u << 30) ? (1 << 30) : (int)n;
        int w = SSL_write(c->ssl, b, chunk);
        if (w <= 0)
            return -EIO;
        b += w;
        n -= (size_t)w;
    }
    return tls_drain(c);
}

static int push_pend(struct mx_smtp_client *c, enum pend_kind k, uint32_t idx)
{
    if (c->pend_head && c->pend_head + c->pend_n == c->pend_cap) {
        memmove(c->pend, c->pend + c->pend_head, c->pend_n * sizeof *c->pend);
        c->pend_head = 0;
    }
    if (c->pend_head + c->pend_n == c->pend_cap) {
        size_t cap = c->pend_cap ? c->pend_cap * 2 : 16;
        struct pend *p = realloc(c->pend, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        c->pend = p;
        c->pend_cap = cap;
    }
    c->pend[c->pend_head + c->pend_n] = (struct pend){.kind = (uint8_t)k, .idx = idx};
    c->pend_n++;
    return 0;
}

static struct pend pop_pend(struct mx_smtp_client *c)
{
    struct pend p = c->pend[c->pend_head];
    c->pend_head++;
    c->pend_n--;
    if (!c->pend_n)
        c->pend_head = 0;
    return p;
}

/** Format one command line, send it, and expect its reply. */
static int command(struct mx_smtp_client *c, enum pend_kind k, uint32_t idx, const char *fmt,
                   ...)
{
    char buf[MX_CMD_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 2, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf - 2)
        return -E2BIG;
    buf[n++] = '\r';
    buf[n++] = '\n';
    int rc = emit(c, buf, (size_t)n);
    if (!rc)
        rc = push_pend(c, k, idx);
    return rc;
}

/* ---- address and parameter helpers ----------------------------------- */

/** An address we are willing to put between angle brackets. */
static bool addr_ok(const char *a)
{
    size_t n = strnlen(a, MX_ADDR_MAX);
    if (n >= MX_ADDR_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)a[i];
        if (ch < 0x21 || ch == 0x7f || ch == '<' || ch == '>')
            return false;
    }
    return true;
}

static bool has_8bit(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return true;
    return false;
}

/** RFC 3461 4: xtext-encode src into dst (bounded). */
static void xtext(char *dst, size_t cap, const char *src)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (; *src && o + 4 < cap; src++) {
        unsigned char ch = (unsigned char)*src;
        if (ch < 33 || ch > 126 || ch == '+' || ch == '=') {
            dst[o++] = '+';
            dst[o++] = hex[ch >> 4];
            dst[o++] = hex[ch & 15];
        } else {
            dst[o++] = (char)ch;
        }
    }
    dst[o] = 0;
}

/* ---- transaction ------------------------------------------------------ */

static bool use_ext(const struct mx_smtp_client *c, unsigned bit)
{
    return (c->ext & bit) && !(c->ignore_ext & bit);
}

static const struct mx_rcpt *txn_rcpt(const struct mx_smtp_client *c, size_t i)
{
    return &c->m.env->rcpts[c->m.rcpt_idx[i]];
}

static void txn_done(struct mx_smtp_client *c)
{
    /* Anything still open had no answer at all (cannot normally happen). */
    fail_open_rcpts(c, 0, "", "no reply from server");
    c->phase = P_TXN_DONE;
    c->need_rset = true;
}

static int send_mail(struct mx_smtp_client *c)
{
    const struct mx_envelope *e = c->m.env;
    char params[1024];
    size_t o = 0;
    params[0] = 0;
#define ADDP(...) o += (size_t)snprintf(params + o, o < sizeof params ? sizeof params - o : 0, __VA_ARGS__)
    if (use_ext(c, MX_SMTP_EXT_SIZE))
        ADDP(" SIZE=%zu", c->m.len);
    if (e->body == MX_BODY_BINARYMIME && c->chunking && use_ext(c, MX_SMTP_EXT_BINARYMIME))
        ADDP(" BODY=BINARYMIME");
    else if (e->body != MX_BODY_7BIT && use_ext(c, MX_SMTP_EXT_8BITMIME))
        ADDP(" BODY=8BITMIME");
    if (e->smtputf8 && use_ext(c, MX_SMTP_EXT_SMTPUTF8))
        ADDP(" SMTPUTF8");
    if (use_ext(c, MX_SMTP_EXT_DSN)) {
        if (e->ret == MX_RET_FULL)
            ADDP(" RET=FULL");
        else if (e->ret == MX_RET_HDRS)
            ADDP(" RET=HDRS");
        if (e->envid[0]) {
            char x[sizeof e->envid * 3 + 1];
            xtext(x, sizeof x, e->envid);
            ADDP(" ENVID=%s", x);
        }
    }
#undef ADDP
    if (o >= sizeof params)
        return -E2BIG;
    c->mail_sent = true;
    return command(c, K_MAIL, 0, "MAIL FROM:<%s>%s", e->mail_from, params);
}

static int send_rcpt(struct mx_smtp_client *c, size_t i)
{
    const struct mx_rcpt *r = txn_rcpt(c, i);
    char params[MX_DSN_ORCPT_MAX * 3 + 64];
    size_t o = 0;
    params[0] = 0;
    if (use_ext(c, MX_SMTP_EXT_DSN)) {
        if (r->notify & MX_NOTIFY_NEVER) {
            o += (size_t)snprintf(params + o, sizeof params - o, " NOTIFY=NEVER");
        } else if (r->notify) {
            static const struct {
                uint8_t bit;
                const char *name;
            } nm[] = {{MX_NOTIFY_SUCCESS, "SUCCESS"},
                      {MX_NOTIFY_FAILURE, "FAILURE"},
                      {MX_NOTIFY_DELAY, "DELAY"}};
            const char *sep = " NOTIFY=";
            for (size_t k = 0; k < 3; k++) {
                if (r->notify & nm[k].bit) {
                    o += (size_t)snprintf(params + o, sizeof params - o, "%s%s", sep, nm[k].name);
                    sep = ",";
                }
            }
        }
        /* ORCPT is kept as "type;addr" decoded; the address part goes out as xtext. */
        const char *semi = strchr(r->orcpt, ';');
        if (r->orcpt[0] && semi && semi != r->orcpt) {
            char x[MX_DSN_ORCPT_MAX * 3 + 1];
            xtext(x, sizeof x, semi + 1);
            o += (size_t)snprintf(params + o, o < sizeof params ? sizeof params - o : 0,
                                  " ORCPT=%.*s;%s", (int)(semi - r->orcpt), r->orcpt, x);
        }
    }
    if (o >= sizeof params)
        return -E2BIG;
    return command(c, K_RCPT, (uint32_t)i, "RCPT TO:<%s>%s", r->addr, params);
}

/**
 * Issue whatever the transaction needs next once no reply is outstanding.
 * In pipelined mode most of it already left in send(); the same steps then
 * just find nothing left to do.
 */
static int txn_advance(struct mx_smtp_client *c)
{
    if (c->phase != P_TXN || c->pend_n)
        return 0;
    if (c->need_rset && !c->rset_sent) {
        c->rset_sent = true;
        return command(c, K_RSET, 0, "RSET");
    }
    if (!c->mail_sent)
        return send_mail(c);
    if (c->mail_failed) {
        txn_done(c);
        return 0;
    }
    while (c->rcpt_sent < c->n_res && c->rs[c->rcpt_sent].skip)
        c->rcpt_sent++;
    if (c->rcpt_sent < c->n_res)
        return send_rcpt(c, c->rcpt_sent++);
    if (c->body == B_NONE && !c->data_cmd_sent) {
        if (!c->accepted) {
            txn_done(c);
            return 0;
        }
        if (c->chunking) {
            c->body = B_SENDING; /* mx_smtp_client_output() produces the chunks */
            return 0;
        }
        c->data_cmd_sent = true;
        return command(c, K_DATA, 0, "DATA");
    }
    if (c->body == B_SENDING)
        return 0;
    txn_done(c);
    return 0;
}

/** The message reply (end of data, BDAT failure) for every accepted recipient. */
static void apply_to_accepted(struct mx_smtp_client *c, const struct reply *r)
{
    for (size_t i = 0; i < c->n_res; i++) {
        if (c->rs[i].final || !c->rs[i].accepted)
            continue;
        set_result(&c->res[i], r->code, r->enh, r->text);
        c->rs[i].final = true;
    }
}

/** Produce the next slice of DATA: dot-stuffed, then CRLF "." CRLF. */
static int gen_data_slice(struct mx_smtp_client *c, struct cbuf *dst)
{
    size_t left = c->m.len - c->body_off;
    size_t n = left < MX_DATA_SLICE ? left : MX_DATA_SLICE;
    /* Worst case every line is "." LF: 2 bytes become 3; plus the trailer. */
    int rc = cbuf_reserve(dst, n + n / 2 + 8);
    if (rc)
        return rc;
    const uint8_t *p = c->m.data + c->body_off, *end = p + n;
    uint8_t *o = dst->d + dst->len;
    while (p < end) {
        if (c->bol && *p == '.')
            *o++ = '.'; /* RFC 5321 4.5.2 transparency */
        const uint8_t *lf = memchr(p, '\n', (size_t)(end - p));
        size_t seg = lf ? (size_t)(lf - p) + 1 : (size_t)(end - p);
        memcpy(o, p, seg);
        o += seg;
        p += seg;
        c->bol = lf != NULL;
    }
    c->body_off += n;
    if (c->body_off == c->m.len) {
        if (!c->bol) {
            *o++ = '\r';
            *o++ = '\n';
        }
        memcpy(o, ".\r\n", 3);
        o += 3;
        c->body = B_DONE;
        rc = push_pend(c, K_DOT, 0);
    }
    dst->len = (size_t)(o - dst->d);
    return rc;
}

/** Produce the next slice of BDAT: a chunk header when one is due, then raw bytes. */
static int gen_bdat_slice(struct mx_smtp_client *c, struct cbuf *dst)
{
    int rc;
    if (!c->bdat_left) {
        size_t left = c->m.len - c->body_off;
        size_t n = left < c->bdat_chunk ? left : c->bdat_chunk;
        c->bdat_last = n == left;
        char hdr[64];
        int hn = snprintf(hdr, sizeof hdr, "BDAT %zu%s\r\n", n, c->bdat_last ? " LAST" : "");
        if ((rc = cbuf_put(dst, hdr, (size_t)hn)))
            return rc;
        if ((rc = push_pend(c, c->bdat_last ? K_BDAT_LAST : K_BDAT, 0)))
            return rc;
        c->bdat_inflight++;
        c->bdat_left = n;
    }
    size_t n = c->bdat_left < MX_DATA_SLICE ? c->bdat_left : MX_DATA_SLICE;
    if ((rc = cbuf_put(dst, c->m.data + c->body_off, n)))
        return rc;
    c->body_off += n;
    c->bdat_left -= n;
    if (!c->bdat_left && c->bdat_last)
        c->body = B_DONE;
    return 0;
}

/** Produce message bytes when the wire buffer ran dry. */
static int refill(struct mx_smtp_client *c)
{
    if (c->phase != P_TXN || c->body != B_SENDING || cbuf_avail(&c->out))
        return 0;
    if (c->chunking && !c->bdat_left && c->bdat_failed) {
        /* A chunk was refused: the transaction is over once its replies are in. */
        c->body = B_DONE;
        int rc = txn_advance(c);
        if (rc)
            session_fail(c, 0, "", "cannot send: %s", strerror(-rc));
        return 0;
    }
    if (c->chunking && !c->bdat_left) {
        /* A new chunk: without PIPELINING wait for the previous reply. */
        bool pipe = use_ext(c, MX_SMTP_EXT_PIPELINING);
        if (pipe ? c->bdat_inflight >= MX_BDAT_INFLIGHT : c->pend_n > 0)
            return 0;
    }
    struct cbuf *dst = c->ssl ? &c->scratch : &c->out;
    c->scratch.off = c->scratch.len = 0;
    int rc = c->chunking ? gen_bdat_slice(c, dst) : gen_data_slice(c, dst);
    if (!rc && c->ssl)
        rc = emit(c, c->scratch.d, c->scratch.len);
    return rc;
}

int mx_smtp_client_send(struct mx_smtp_client *c, const struct mx_smtp_client_msg *m)
{
    if (!c || !m || !m->env || (m->n_rcpt && (!m->rcpt_idx || !m->env->rcpts)) ||
        (m->len && !m->data))
        return -EINVAL;
    if (c->phase != P_READY && c->phase != P_TXN_DONE)
        return -EBUSY;
    for (size_t i = 0; i < m->n_rcpt; i++)
        if (m->rcpt_idx[i] >= m->env->n_rcpts)
            return -EINVAL;
    if (m->n_rcpt > c->res_cap) {
        struct mx_smtp_rcpt_result *r = realloc(c->res, m->n_rcpt * sizeof *r);
        if (!r)
            return -ENOMEM;
        c->res = r;
        struct rcpt_state *s = realloc(c->rs, m->n_rcpt * sizeof *s);
        if (!s)
            return -ENOMEM;
        c->rs = s;
        c->res_cap = m->n_rcpt;
    }
    c->m = *m;
    c->n_res = m->n_rcpt;
    memset(c->res, 0, c->n_res * sizeof *c->res);
    memset(c->rs, 0, c->n_res * sizeof *c->rs);
    c->rset_sent = c->mail_sent = c->mail_failed = c->data_cmd_sent = false;
    c->bdat_failed = false;
    c->bol = true;
    c->rcpt_sent = c->accepted = 0;
    c->body = B_NONE;
    c->body_off = c->bdat_left = 0;
    c->bdat_last = false;
    c->bdat_inflight = 0;
    c->chunking = use_ext(c, MX_SMTP_EXT_CHUNKING);
    c->phase = P_TXN;

    /* Refusals that need no server round trip. */
    const struct mx_envelope *e = m->env;
    bool need_utf8 = has_8bit(e->mail_from);
    size_t sendable = 0;
    for (size_t i = 0; i < c->n_res; i++)
        need_utf8 |= has_8bit(txn_rcpt(c, i)->addr);
    const char *why = NULL, *enh = NULL;
    int code = 0;
    char buf[160];
    if (!addr_ok(e->mail_from)) {
        code = 501, enh = "5.1.7", why = "bad sender address syntax";
    } else if (need_utf8 && !use_ext(c, MX_SMTP_EXT_SMTPUTF8)) {
        code = 550, enh = "5.6.7", why = "SMTPUTF8 is required, but was not offered by host";
    } else if (c->size_limit && use_ext(c, MX_SMTP_EXT_SIZE) && m->len > c->size_limit) {
        snprintf(buf, sizeof buf, "message size %zu exceeds size limit %llu of server", m->len,
                 (unsigned long long)c->size_limit);
        code = 552, enh = "5.3.4", why = buf;
    }
    for (size_t i = 0; i < c->n_res; i++) {
        if (why) {
            set_result(&c->res[i], code, enh, why);
        } else if (!addr_ok(txn_rcpt(c, i)->addr) || !txn_rcpt(c, i)->addr[0]) {
            set_result(&c->res[i], 501, "5.1.3", "bad recipient address syntax");
        } else {
            sendable++;
            continue;
        }
        c->rs[i].final = c->rs[i].skip = true;
    }
    if (!sendable) {
        c->phase = P_TXN_DONE; /* nothing went out: no RSET needed for this one */
        return 0;
    }

    int rc = 0;
    if (use_ext(c, MX_SMTP_EXT_PIPELINING)) {
        /* RFC 2920: [RSET] MAIL RCPT... DATA in one write. With CHUNKING the
         * BDATs wait for the RCPT replies, so a refused envelope costs no data. */
        if (c->need_rset) {
            c->rset_sent = true;
            rc = command(c, K_RSET, 0, "RSET");
        }
        if (!rc)
            rc = send_mail(c);
        for (; !rc && c->rcpt_sent < c->n_res; c->rcpt_sent++)
            if (!c->rs[c->rcpt_sent].skip)
                rc = send_rcpt(c, c->rcpt_sent);
        if (!rc && !c->chunking) {
            c->data_cmd_sent = true;
            rc = command(c, K_DATA, 0, "DATA");
        }
    } else {
        rc = txn_advance(c);
    }
    if (rc) {
        session_fail(c, 0, "", "cannot send command: %s", strerror(-rc));
        return rc;
    }
    return 0;
}

/* ---- replies ---------------------------------------------------------- */

/** Recognise an RFC 3463 enhanced status code at the start of s. */
static size_t parse_enh(const char *s, int code, char *enh, size_t cap)
{
    const char *p = s;
    if (*p < '2' || *p > '5' || *p - '0' != code / 100 || p[1] != '.')
        return 0;
    p += 2;
    for (int part = 0; part < 2; part++) {
        size_t d = 0;
        while (isdigit((unsigned char)p[d]) && d < 4)
            d++;
        if (d < 1 || d > 3)
            return 0;
        p += d;
        if (part == 0) {
            if (*p != '.')
                return 0;
            p++;
        }
    }
    if (*p && *p != ' ')
        return 0;
    size_t n = (size_t)(p - s);
    if (n >= cap)
        return 0;
    memcpy(enh, s, n);
    enh[n] = 0;
    return *p == ' ' ? n + 1 : n;
}

static void ehlo_keyword(struct mx_smtp_client *c, const char *kw)
{
    static const struct {
        const char *name;
        unsigned bit;
    } known[] = {
        {"SIZE", MX_SMTP_EXT_SIZE},
        {"8BITMIME", MX_SMTP_EXT_8BITMIME},
        {"PIPELINING", MX_SMTP_EXT_PIPELINING},
        {"SMTPUTF8", MX_SMTP_EXT_SMTPUTF8},
        {"CHUNKING", MX_SMTP_EXT_CHUNKING},
        {"DSN", MX_SMTP_EXT_DSN},
        {"STARTTLS", MX_SMTP_EXT_STARTTLS},
        {"ENHANCEDSTATUSCODES", MX_SMTP_EXT_ENHANCEDSTATUSCODES},
        {"BINARYMIME", MX_SMTP_EXT_BINARYMIME},
    };
    size_t n = strcspn(kw, " =");
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strlen(known[i].name) != n || strncasecmp(kw, known[i].name, n) != 0)
            continue;
        c->ext_tmp |= known[i].bit;
        if (known[i].bit == MX_SMTP_EXT_SIZE && kw[n] == ' ') {
            uint64_t v = 0;
            const char *p = kw + n + 1;
            while (isdigit((unsigned char)*p) && v < UINT64_MAX / 10)
                v = v * 10 + (uint64_t)(*p++ - '0');
            c->size_tmp = v;
        }
        return;
    }
}

static int start_tls(struct mx_smtp_client *c);
static int tls_step(struct mx_smtp_client *c);

static int send_ehlo(struct mx_smtp_client *c)
{
    c->ext_tmp = 0;
    c->size_tmp = 0;
    return command(c, K_EHLO, 0, "EHLO %s", c->helo);
}

static void session_ready(struct mx_smtp_client *c)
{
    c->phase = P_READY;
    c->ever_ready = true;
}

static bool is2xx(int code)
{
    return code >= 200 && code < 300;
}

/** Act on one complete reply. 0, or -EPROTO when the session ended badly. */
static int handle_reply(struct mx_smtp_client *c)
{
    struct reply *r = &c->rep;
    if (!c->pend_n) {
        /* Nothing asked. A server may announce 421 before it closes an idle
         * connection, or answer early while we are still sending the body;
         * either way the conversation is over. */
        if (c->phase == P_TXN && c->body == B_SENDING)
            apply_to_accepted(c, r);
        session_fail(c, 0, "", "unexpected reply after %s: %d %s", stage(c), r->code, r->text);
        return -EPROTO;
    }
    struct pend p = pop_pend(c);
    if (r->code == 421 && p.kind != K_QUIT) {
        /* Service closing: temporary for everyone still open. */
        session_fail(c, 421, r->enh, "%d %s%s%s (after %s)", r->code, r->enh,
                     r->enh[0] ? " " : "", r->text, kind_stage((enum pend_kind)p.kind));
        return 0;
    }
    int rc = 0;
    switch ((enum pend_kind)p.kind) {
    case K_GREETING:
        if (!is2xx(r->code)) {
            command(c, K_QUIT, 0, "QUIT");
            session_fail(c, 0, "", "greeting: %d %s", r->code, r->text);
            return 0;
        }
        c->phase = P_SETUP;
        return send_ehlo(c);
    case K_EHLO:
        if (is2xx(r->code)) {
            c->ext = c->ext_tmp;
            c->size_limit = c->size_tmp;
            c->esmtp = true;
            if (c->starttls && !c->after_tls && use_ext(c, MX_SMTP_EXT_STARTTLS))
                return command(c, K_STARTTLS, 0, "STARTTLS");
            session_ready(c);
            return 0;
        }
        if (r->code >= 500 && !c->after_tls) {
            c->ext = 0;
            return command(c, K_HELO, 0, "HELO %s", c->helo);
        }
        command(c, K_QUIT, 0, "QUIT");
        session_fail(c, 0, "", "EHLO: %d %s", r->code, r->text);
        return 0;
    case K_HELO:
        if (is2xx(r->code)) {
            c->ext = 0;
            session_ready(c);
            return 0;
        }
        command(c, K_QUIT, 0, "QUIT");
        session_fail(c, 0, "", "HELO: %d %s", r->code, r->text);
        return 0;
    case K_STARTTLS:
        if (!is2xx(r->code)) { /* opportunistic: carry on in the clear */
            session_ready(c);
            return 0;
        }
        return start_tls(c);
    case K_RSET:
        if (!is2xx(r->code)) {
            command(c, K_QUIT, 0, "QUIT");
            session_fail(c, 0, "", "RSET: %d %s", r->code, r->text);
            return 0;
        }
        break;
    case K_MAIL:
        if (!is2xx(r->code)) {
            c->mail_failed = true;
            for (size_t i = 0; i < c->n_res; i++) {
                if (c->rs[i].final)
                    continue;
                set_result(&c->res[i], r->code, r->enh, r->text);
                c->rs[i].final = true;
            }
        }
        break;
    case K_RCPT:
        if (c->mail_failed || p.idx >= c->n_res || c->rs[p.idx].final)
            break;
        set_result(&c->res[p.idx], r->code, r->enh, r->text);
        if (is2xx(r->code)) {
            c->rs[p.idx].accepted = true;
            c->accepted++;
        } else {
            c->rs[p.idx].final = true;
        }
        break;
    case K_DATA:
        if (r->code == 354) {
            if (c->mail_failed || !c->accepted) {
                /* RFC 2920 3.1: a 354 nobody needs gets an empty message. */
                rc = emit(c, ".\r\n", 3);
                if (!rc)
                    rc = push_pend(c, K_DOT_IGNORE, 0);
                c->body = B_DONE;
            } else {
                c->body = B_SENDING;
                c->bol = true;
            }
        } else {
            c->body = B_DONE;
            if (!c->mail_failed)
                apply_to_accepted(c, r);
        }
        break;
    case K_DOT:
        apply_to_accepted(c, r);
        break;
    case K_DOT_IGNORE:
        break;
    case K_BDAT:
    case K_BDAT_LAST:
        if (c->bdat_inflight)
            c->bdat_inflight--;
        if (!is2xx(r->code) && !c->bdat_failed) {
            c->bdat_failed = true;
            apply_to_accepted(c, r);
            if (c->body == B_SENDING && !c->bdat_left)
                c->body = B_DONE; /* send no further chunk */
        } else if (p.kind == K_BDAT_LAST && !c->bdat_failed) {
            apply_to_accepted(c, r);
        }
        break;
    case K_QUIT:
        c->phase = P_CLOSED;
        return 0;
    }
    if (rc) {
        session_fail(c, 0, "", "cannot send: %s", strerror(-rc));
        return -EPROTO;
    }
    rc = txn_advance(c);
    if (rc) {
        session_fail(c, 0, "", "cannot send: %s", strerror(-rc));
        return -EPROTO;
    }
    return 0;
}

/** One reply line (CR LF stripped). */
static int reply_line(struct mx_smtp_client *c, char *line, size_t n)
{
    struct reply *r = &c->rep;
    if (n < 3 || line[0] < '2' || line[0] > '5' || !isdigit((unsigned char)line[1]) ||
        !isdigit((unsigned char)line[2]) || (n > 3 && line[3] != ' ' && line[3] != '-')) {
        session_fail(c, 0, "", "malformed reply after %s", stage(c));
        return -EPROTO;
    }
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    bool more = n > 3 && line[3] == '-';
    const char *text = n > 4 ? line + 4 : "";
    if (r->lines == 0) {
        r->enh[0] = 0;
        r->text[0] = 0;
        r->text_len = 0;
    }
    if (++r->lines > MX_REPLY_LINES_MAX) {
        session_fail(c, 0, "", "reply too long after %s", stage(c));
        return -EPROTO;
    }
    /* Multi-line replies should repeat the code; like Postfix, the last line wins. */
    r->code = code;
    char enh[16];
    size_t skip = parse_enh(text, code, enh, sizeof enh);
    if (skip && !r->enh[0])
        memcpy(r->enh, enh, sizeof enh);
    text += skip;
    /* EHLO: the first line greets, each further line names one extension. */
    if (r->lines > 1 && c->pend_n && c->pend[c->pend_head].kind == K_EHLO)
        ehlo_keyword(c, text);
    /* Keep the text: lines joined by one space, truncated. */
    size_t tl = strlen(text);
    if (r->text_len && r->text_len + 1 < sizeof r->text)
        r->text[r->text_len++] = ' ';
    size_t room = sizeof r->text - 1 - r->text_len;
    if (tl > room)
        tl = room;
    for (size_t i = 0; i < tl; i++) { /* the text ends up in logs and DSNs */
        unsigned char ch = (unsigned char)text[i];
        r->text[r->text_len + i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    r->text_len += tl;
    r->text[r->text_len] = 0;
    if (more)
        return 0;
    r->lines = 0;
    return handle_reply(c);
}

/** Plaintext protocol bytes from the server. */
static int feed_plain(struct mx_smtp_client *c, const uint8_t *buf, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (c->phase == P_CLOSED)
            return 0; /* ignore whatever follows the end */
        const uint8_t *lf = memchr(buf + i, '\n', len - i);
        size_t seg = lf ? (size_t)(lf - (buf + i)) : len - i;
        size_t room = MX_LINE_MAX - c->line_len;
        size_t take = seg < room ? seg : room;
        memcpy(c->line + c->line_len, buf + i, take);
        c->line_len += take;
        if (take < seg)
            c->line_overflow = true;
        i += seg;
        if (!lf)
            return 0;
        i++; /* the LF */
        size_t n = c->line_len;
        if (!c->line_overflow && n && c->line[n - 1] == '\r')
            n--;
        c->line[n] = 0;
        c->line_len = 0;
        c->line_overflow = false;
        int rc = reply_line(c, c->line, n);
        if (rc)
            return rc;
        if (c->phase == P_TLS && i < len) {
            /* Send nothing more, not even the ClientHello already made. */
            c->out.off = c->out.len = 0;
            session_fail(c, 0, "", "plaintext after STARTTLS reply (response injection?)");
            return -EPROTO;
        }
    }
    return 0;
}

/* ---- TLS -------------------------------------------------------------- */

static int start_tls(struct mx_smtp_client *c)
{
    if (c->line_len) {
        session_fail(c, 0, "", "plaintext after STARTTLS reply (response injection?)");
        return -EPROTO;
    }
    c->ssl = SSL_new(c->ssl_ctx);
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    if (!c->ssl || !c->rbio || !c->wbio) {
        BIO_free(c->rbio);
        BIO_free(c->wbio);
        c->rbio = c->wbio = NULL;
        c->tls_failed = true;
        session_fail(c, 0, "", "TLS: out of memory");
        return -EPROTO;
    }
    SSL_set_bio(c->ssl, c->rbio, c->wbio);
    SSL_set_connect_state(c->ssl);
    if (c->sni[0])
        SSL_set_tlsext_host_name(c->ssl, c->sni);
    c->phase = P_TLS;
    return tls_step(c);
}

/** Drive the handshake; after it, EHLO again (RFC 3207 4.2: forget what we knew). */
static int tls_step(struct mx_smtp_client *c)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    int rc = tls_drain(c);
    if (r == 1) {
        snprintf(c->tls_desc, sizeof c->tls_desc, "%s %s", SSL_get_version(c->ssl),
                 SSL_get_cipher_name(c->ssl));
        c->phase = P_SETUP;
        c->after_tls = true;
        c->ext = 0;
        c->size_limit = 0;
        return rc ? rc : send_ehlo(c);
    }
    int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        return rc;
    char why[160] = "";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, why, sizeof why);
    c->tls_failed = true;
    session_fail(c, 0, "", "TLS handshake failed: %s", why[0] ? why : "protocol error");
    return -EPROTO;
}

static int feed_tls(struct mx_smtp_client *c, const uint8_t *buf, size_t len)
{
    while (len) {
        int chunk = len > (1u << 30) ? (1 << 30) : (int)len;
        int w = BIO_write(c->rbio, buf, chunk);
        if (w <= 0) {
            session_fail(c, 0, "", "TLS: out of memory");
            return -EPROTO;
        }
        buf += w;
        len -= (size_t)w;
    }
    if (c->phase == P_TLS) {
        int rc = tls_step(c);
        if (rc || c->phase == P_TLS)
            return rc ? -EPROTO : 0;
    }
    uint8_t tmp[16384];
    for (;;) {
        if (c->phase == P_CLOSED)
            return 0;
        ERR_clear_error();
        int n = SSL_read(c->ssl, tmp, sizeof tmp);
        if (n > 0) {
            int rc = feed_plain(c, tmp, (size_t)n);
            if (rc)
                return rc;
            continue;
        }
        int err = SSL_get_error(c->ssl, n);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
            return tls_drain(c) ? -EPROTO : 0;
        if (err == SSL_ERROR_ZERO_RETURN) {
            mx_smtp_client_eof(c, 0);
            return 0;
        }
        session_fail(c, 0, "", "TLS error after %s", stage(c));
        return -EPROTO;
    }
}

/* ---- public API ------------------------------------------------------- */

int mx_smtp_client_new(const struct mx_smtp_client_params *p, struct mx_smtp_client **out)
{
    if (!p || !out || !p->helo_name || !p->helo_name[0] || strlen(p->helo_name) >= 256)
        return -EINVAL;
    for (const char *s = p->helo_name; *s; s++)
        if ((unsigned char)*s <= 0x20 || *s == 0x7f)
            return -EINVAL;
    struct mx_smtp_client *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    snprintf(c->helo, sizeof c->helo, "%s", p->helo_name);
    if (p->tls_sni)
        snprintf(c->sni, sizeof c->sni, "%s", p->tls_sni);
    c->starttls = p->starttls;
    c->ignore_ext = p->ignore_ext;
    c->bdat_chunk = p->bdat_chunk ? p->bdat_chunk : MX_BDAT_DEFAULT;
    if (c->starttls) {
        if (p->tls_ctx) {
            c->ssl_ctx = p->tls_ctx;
        } else {
            c->ssl_ctx = SSL_CTX_new(TLS_client_method());
            if (!c->ssl_ctx) {
                free(c);
                return -EIO;
            }
            /* Opportunistic TLS (RFC 7435): encrypt, do not authenticate. */
            SSL_CTX_set_verify(c->ssl_ctx, SSL_VERIFY_NONE, NULL);
            c->own_ctx = true;
        }
    }
    c->phase = P_GREETING;
    if (push_pend(c, K_GREETING, 0)) {
        mx_smtp_client_free(c);
        return -ENOMEM;
    }
    *out = c;
    return 0;
}

void mx_smtp_client_free(struct mx_smtp_client *c)
{
    if (!c)
        return;
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->own_ctx)
        SSL_CTX_free(c->ssl_ctx);
    free(c->out.d);
    free(c->scratch.d);
    free(c->pend);
    free(c->res);
    free(c->rs);
    free(c);
}

int mx_smtp_client_input(struct mx_smtp_client *c, const uint8_t *buf, size_t len)
{
    if (!c || (!buf && len))
        return -EINVAL;
    if (c->phase == P_CLOSED || !len)
        return 0;
    if (c->ssl)
        return feed_tls(c, buf, len);
    return feed_plain(c, buf, len);
}

const uint8_t *mx_smtp_client_output(struct mx_smtp_client *c, size_t *len)
{
    int rc = refill(c);
    if (rc)
        session_fail(c, 0, "", "cannot produce output: %s", strerror(-rc));
    *len = cbuf_avail(&c->out);
    return c->out.d ? c->out.d + c->out.off : (const uint8_t *)"";
}

void mx_smtp_client_output_done(struct mx_smtp_client *c, size_t n)
{
    size_t avail = cbuf_avail(&c->out);
    c->out.off += n < avail ? n : avail;
    if (c->out.off == c->out.len)
        c->out.off = c->out.len = 0;
}

int mx_smtp_client_quit(struct mx_smtp_client *c)
{
    if (c->phase != P_READY && c->phase != P_TXN_DONE)
        return -EBUSY;
    c->phase = P_QUIT;
    int rc = command(c, K_QUIT, 0, "QUIT");
    if (rc)
        session_fail(c, 0, "", "cannot send QUIT");
    return rc;
}

void mx_smtp_client_eof(struct mx_smtp_client *c, int res)
{
    if (c->phase == P_CLOSED)
        return;
    if (c->phase == P_QUIT) { /* no 221, but we were leaving anyway */
        c->phase = P_CLOSED;
        return;
    }
    if (res)
        session_fail(c, 0, "", "lost connection after %s: %s", stage(c), strerror(-res));
    else
        session_fail(c, 0, "", "lost connection after %s", stage(c));
}

void mx_smtp_client_timeout(struct mx_smtp_client *c)
{
    if (c->phase == P_CLOSED)
        return;
    if (c->phase == P_QUIT) {
        c->phase = P_CLOSED;
        return;
    }
    session_fail(c, 0, "", "timeout after %s", stage(c));
}

enum mx_smtp_client_state mx_smtp_client_state(const struct mx_smtp_client *c)
{
    switch (c->phase) {
    case P_READY: return MX_SMTPC_READY;
    case P_TXN_DONE: return MX_SMTPC_TXN_DONE;
    case P_CLOSED: return MX_SMTPC_CLOSED;
    default: return MX_SMTPC_BUSY;
    }
}

uint64_t mx_smtp_client_timeout_ms(const struct mx_smtp_client *c)
{
    if (c->phase == P_CLOSED || c->phase == P_READY || c->phase == P_TXN_DONE)
        return 0;
    if (c->phase == P_TLS)
        return T_COMMAND;
    if (c->phase == P_TXN && c->body == B_SENDING && (c->chunking ? c->pend_n == 0 : true))
        return T_DATA_BLOCK;
    if (!c->pend_n)
        return T_COMMAND;
    switch ((enum pend_kind)c->pend[c->pend_head].kind) {
    case K_GREETING: return T_GREETING;
    case K_DATA: return T_DATA_INIT;
    case K_DOT:
    case K_DOT_IGNORE:
    case K_BDAT:
    case K_BDAT_LAST: return T_DATA_END;
    case K_QUIT: return T_QUIT;
    default: return T_COMMAND;
    }
}

const struct mx_smtp_rcpt_result *mx_smtp_client_results(const struct mx_smtp_client *c,
                                                         size_t *n)
{
    *n = c->n_res;
    return c->res;
}

const char *mx_smtp_client_error(const struct mx_smtp_client *c)
{
    return c->error;
}

bool mx_smtp_client_setup_failed(const struct mx_smtp_client *c)
{
    return c->phase == P_CLOSED && !c->ever_ready;
}

bool mx_smtp_client_tls_failed(const struct mx_smtp_client *c)
{
    return c->tls_failed;
}

unsigned mx_smtp_client_extensions(const struct mx_smtp_client *c)
{
    return c->ext;
}

uint64_t mx_smtp_client_size_limit(const struct mx_smtp_client *c)
{
    return c->size_limit;
}

const char *mx_smtp_client_tls(const struct mx_smtp_client *c)
{
    return c->tls_desc;
}
