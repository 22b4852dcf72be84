/*
 * smtpd_session.c - the ESMTP server session: an incremental state machine,
 * bytes in, reply bytes out, no I/O and no blocking.
 *
 * Paranoia at the edge (after Postfix's smtpd): a command is a line ending
 * in CRLF and nothing else; a bare CR or LF never ends a command or the
 * data, which is what SMTP smuggling relies on. Every buffer is bounded.
 *
 * Pipelining (RFC 2920): all complete commands of one input chunk are
 * answered into one output buffer, written once at the end of the chunk.
 * The end of a message is asynchronous (the queue has to make it durable),
 * so input that arrives meanwhile is held and processed after the answer.
 * The embedder may answer the connection, MAIL and RCPT late too (DNS
 * checks, recipient callouts): the same holding keeps replies in order.
 *
 * STARTTLS (RFC 3207) runs OpenSSL over memory BIOs: the session encrypts
 * and decrypts, the transport only moves bytes, so it works on any stream.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "smtp/smtpd_internal.h"

#define OUT_MAX (64 * 1024)     /* replies of one input chunk; pipelining is bounded */
#define IN_HOLD_MAX (1024 * 1024) /* input held (the embedder pauses the stream meanwhile) */
#define DATA_CHUNK 16384        /* unstuffed bytes handed on per write */

enum data_state { D_LS = 0, D_IN, D_CR, D_DOT, D_DOTCR };

/* Which callback's answer the session waits for in SMTPD_WAIT_REPLY. */
enum pending_kind { PEND_NONE = 0, PEND_GREET, PEND_MAIL, PEND_RCPT };

struct mx_smtpd_session {
    struct mx_smtpd_params p;
    const struct mx_smtpd_ops *ops;
    void *ud;
    enum mx_smtpd_state state;

    /* protocol state */
    bool have_helo;
    bool esmtp;           /* the last greeting was EHLO */
    bool in_txn;          /* MAIL accepted */
    bool bdat_used;       /* this transaction used BDAT */
    bool quit_after_out;  /* close once the current output is flushed */
    bool skip_to_crlf;    /* discarding the rest of an overlong line */
    struct mx_envelope env;
    size_t rcpt_cap;

    /* input held for command parsing (and pipelined input during commits) */
    uint8_t *in;
    size_t in_len, in_cap;

    /* output collected during one input chunk */
    uint8_t out[OUT_MAX];
    size_t out_len;
    unsigned out_depth; /* nesting of input processing: flush at depth 0 */

    /* DATA / BDAT */
    enum data_state ds;
    uint64_t msg_size;  /* unstuffed bytes of the current message */
    uint64_t bdat_left; /* bytes left of the current BDAT chunk */
    bool bdat_last;
    bool bdat_discard; /* chunk of a refused BDAT: read and drop */
    bool data_failed;  /* a write failed: refuse at the end */
    bool data_bad_eol;
    bool data_too_big;
    bool data_open; /* data_begin succeeded, data_abort/data_end pending */
    uint8_t chunk[DATA_CHUNK];
    size_t chunk_len;

    /* TLS */
    SSL *ssl;
    BIO *rbio, *wbio;
    bool tls_active;

    struct mx_smtpd_counts counts;
    unsigned junk_commands; /* commands that moved no mail, against max_commands */
    bool in_process; /* process() is on the stack: data_done must not re-enter it */

    /* a late policy answer (MX_SMTPD_PENDING) */
    enum pending_kind pend;
    struct mx_rcpt pend_rcpt; /* the recipient asked about */
};

/* ---- output ----------------------------------------------------------- */

static void flush_out(struct mx_smtpd_session *s);

static void out_raw(struct mx_smtpd_session *s, const char *p, size_t n)
{
    if (s->out_len + n > sizeof s->out)
        flush_out(s);
    if (n > sizeof s->out)
        n = sizeof s->out;
    memcpy(s->out + s->out_len, p, n);
    s->out_len += n;
}

static void transport_write(struct mx_smtpd_session *s, const uint8_t *p, size_t n)
{
    if (!s->tls_active) {
        s->ops->output(s->ud, p, n);
        return;
    }
    while (n) {
        int w = SSL_write(s->ssl, p, (int)n);
        if (w <= 0)
            break;
        p += w;
        n -= (size_t)w;
    }
    uint8_t buf[16384];
    int r;
    while ((r = BIO_read(s->wbio, buf, sizeof buf)) > 0)
        s->ops->output(s->ud, buf, (size_t)r);
}

static void flush_out(struct mx_smtpd_session *s)
{
    if (s->out_len) {
        transport_write(s, s->out, s->out_len);
        s->out_len = 0;
    }
}

static void reply(struct mx_smtpd_session *s, int code, const char *enh, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void reply(struct mx_smtpd_session *s, int code, const char *enh, const char *fmt, ...)
{
    char line[520];
    int n = enh && *enh ? snprintf(line, 512, "%d %s ", code, enh) : snprintf(line, 512, "%d ", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, 512 - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    line[len++] = '\r';
    line[len++] = '\n';
    out_raw(s, line, len);
    if (code >= 400)
        s->counts.errors++;
    if (s->ops->replied)
        s->ops->replied(s->ud, code);
}

static void logf_(struct mx_smtpd_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void logf_(struct mx_smtpd_session *s, const char *fmt, ...)
{
    if (!s->ops->log)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    s->ops->log(s->ud, line);
}

static void close_session(struct mx_smtpd_session *s)
{
    if (s->state == SMTPD_CLOSED)
        return;
    if (s->data_open && s->ops->data_abort)
        s->ops->data_abort(s->ud);
    s->data_open = false;
    s->state = SMTPD_CLOSED;
    flush_out(s);
    if (s->ops->close)
        s->ops->close(s->ud);
}

/* ---- transaction ------------------------------------------------------ */

static void reset_txn(struct mx_smtpd_session *s)
{
    if (s->data_open && s->ops->data_abort)
        s->ops->data_abort(s->ud);
    s->data_open = false;
    s->in_txn = false;
    s->bdat_used = false;
    s->env.mail_from[0] = 0;
    s->env.size_param = 0;
    s->env.body = MX_BODY_7BIT;
    s->env.smtputf8 = false;
    s->env.ret = MX_RET_DEFAULT;
    s->env.envid[0] = 0;
    s->env.n_rcpts = 0;
    s->msg_size = 0;
    s->data_failed = s->data_bad_eol = s->data_too_big = false;
    s->chunk_len = 0;
}

/* ---- address parsing -------------------------------------------------- */

static bool is_atext(unsigned char c, bool utf8)
{
    if (c >= 0x80)
        return utf8;
    return isalnum(c) || strchr("!#$%&'*+-/=?^_`{|}~.", c) != NULL;
}

/*
 * Parse "<path>" from p; on success copy the mailbox (route removed) to out
 * and return a pointer past '>'. *tricky is set for forms a relay must not
 * honour: source routes, '%' or '!' in the local part, quoted local parts
 * containing '@'. Returns NULL on a syntax error.
 */
static const char *parse_path(const char *p, char *out, size_t outsz, bool allow_empty, bool utf8,
                              bool *tricky)
{
    *tricky = false;
    while (*p == ' ')
        p++;
    if (*p != '<')
        return NULL;
    p++;
    if (*p == '>') {
        if (!allow_empty)
            return NULL;
        out[0] = 0;
        return p + 1;
    }
    /* source route "@a,@b:" (RFC 5321 4.1.2: may be ignored) */
    if (*p == '@') {
        const char *colon = strchr(p, ':');
        const char *gt = strchr(p, '>');
        if (!colon || !gt || colon > gt)
            return NULL;
        for (const char *q = p; q < colon; q++)
            if (!(isalnum((unsigned char)*q) || strchr("@,.-[]", *q)))
                return NULL;
        *tricky = true;
        p = colon + 1;
    }
    size_t n = 0;
    bool quoted_at = false;
    /* local part */
    if (*p == '"') {
        out[n++] = *p++;
        for (;;) {
            unsigned char c = (unsigned char)*p;
            if (c == 0 || n + 2 >= outsz)
                return NULL;
            if (c == '\\') {
                if (!p[1] || (unsigned char)p[1] < 0x20)
                    return NULL;
                if (p[1] == '@' || p[1] == '%' || p[1] == '!')
                    quoted_at = true;
                out[n++] = *p++;
                out[n++] = *p++;
                continue;
            }
            if (c == '"') {
                out[n++] = *p++;
                break;
            }
            if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8))
                return NULL;
            if (c == '@' || c == '%' || c == '!')
                quoted_at = true;
            out[n++] = *p++;
        }
    } else {
        size_t start = n;
        while (*p && *p != '@' && *p != '>') {
            unsigned char c = (unsigned char)*p;
            if (!is_atext(c, utf8) || n + 1 >= outsz)
                return NULL;
            if (c == '%' || c == '!')
                *tricky = true;
            out[n++] = *p++;
        }
        if (n == start || out[start] == '.' || out[n - 1] == '.')
            return NULL;
    }
    if (quoted_at)
        *tricky = true;
    if (*p != '@')
        return NULL; /* no domain: RFC 5321 requires one (except postmaster, below) */
    out[n++] = *p++;
    size_t dstart = n;
    if (*p == '[') {
        while (*p && *p != ']') {
            unsigned char c = (unsigned char)*p;
            if (c <= ' ' || c == 0x7f || n + 2 >= outsz)
                return NULL;
            out[n++] = *p++;
        }
        if (*p != ']')
            return NULL;
        out[n++] = *p++;
    } else {
        while (*p && *p != '>') {
            unsigned char c = (unsigned char)*p;
            if (!(isalnum(c) || c == '-' || c == '.' || (c >= 0x80 && utf8)) || n + 1 >= outsz)
                return NULL;
            out[n++] = *p++;
        }
        if (n == dstart || out[dstart] == '.' || out[dstart] == '-' || out[n - 1] == '-')
            return NULL;
    }
    if (*p != '>')
        return NULL;
    out[n] = 0;
    return p + 1;
}

/* RFC 3461 xtext: "+XX" hex escapes. Returns false on malformed input. */
static bool xtext_decode(const char *in, size_t len, char *out, size_t outsz)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (n + 1 >= outsz)
            return false;
        if (c == '+') {
            if (i + 2 >= len || !isxdigit((unsigned char)in[i + 1]) ||
                !isxdigit((unsigned char)in[i + 2]))
                return false;
            char hex[3] = {in[i + 1], in[i + 2], 0};
            unsigned long v = strtoul(hex, NULL, 16);
            if (v < 0x20 || v > 0x7e)
                return false; /* CR/LF/NUL would reach DSN headers */
            out[n++] = (char)v;
            i += 2;
        } else if (c < 0x21 || c > 0x7e || c == '=') {
            return false;
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = 0;
    return true;
}

/* Case-insensitive "KEY=" prefix match; returns the value or NULL. */
static const char *param_value(const char *param, const char *key)
{
    size_t k = strlen(key);
    if (strncasecmp(param, key, k) == 0 && param[k] == '=')
        return param + k + 1;
    return NULL;
}

/* ---- commands --------------------------------------------------------- */

static void cmd_ehlo(struct mx_smtpd_session *s, const char *arg, bool ehlo)
{
    while (*arg == ' ')
        arg++;
    if (!*arg) {
        reply(s, 501, "5.5.4", "Syntax: %s hostname", ehlo ? "EHLO" : "HELO");
        return;
    }
    for (const char *q = arg; *q; q++)
        if ((unsigned char)*q < 0x20 || *q == 0x7f) {
            reply(s, 501, "5.5.4", "Invalid characters in hostname");
            return;
        }
    reset_txn(s);
    snprintf(s->env.helo, sizeof s->env.helo, "%s", arg);
    s->have_helo = true;
    s->esmtp = ehlo;
    if (!ehlo) {
        reply(s, 250, "2.0.0", "%s", s->p.hostname);
        return;
    }
    /* RFC 5321 4.2.1: "250-" on every line but the last, "250 " on the last. */
    char lines[12][128];
    int n = 0;
    snprintf(lines[n++], sizeof lines[0], "%.100s", s->p.hostname);
    snprintf(lines[n++], sizeof lines[0], "SIZE %lu", (unsigned long)s->p.max_message_size);
    snprintf(lines[n++], sizeof lines[0], "8BITMIME");
    snprintf(lines[n++], sizeof lines[0], "PIPELINING");
    snprintf(lines[n++], sizeof lines[0], "ENHANCEDSTATUSCODES");
    snprintf(lines[n++], sizeof lines[0], "CHUNKING");
    snprintf(lines[n++], sizeof lines[0], "SMTPUTF8");
    snprintf(lines[n++], sizeof lines[0], "DSN");
    if (s->p.tls_ctx && !s->tls_active)
        snprintf(lines[n++], sizeof lines[0], "STARTTLS");
    for (int i = 0; i < n; i++) {
        char l[160];
        int len = snprintf(l, sizeof l, "250%c%s\r\n", i == n - 1 ? ' ' : '-', lines[i]);
        out_raw(s, l, (size_t)len);
    }
    if (s->ops->replied)
        s->ops->replied(s->ud, 250);
}

/* The policy answer to MAIL (now or late). */
static void mail_answer(struct mx_smtpd_session *s, const struct mx_smtpd_reply *r)
{
    if (r->code) {
        reply(s, r->code, r->enh, "%s", r->text ? r->text : "");
        return;
    }
    s->in_txn = true;
    s->counts.mail++;
    reply(s, 250, "2.1.0", "Ok");
}

/* The policy answer to RCPT (now or late): add the recipient or refuse it. */
static void rcpt_answer(struct mx_smtpd_session *s, const struct mx_rcpt *rc,
                        const struct mx_smtpd_reply *r)
{
    if (r->code) {
        const char *text = r->text ? r->text : "";
        reply(s, r->code, r->enh, "%s", text);
        logf_(s, "reject: RCPT <%s>: %d %s %s", rc->addr, r->code, r->enh ? r->enh : "", text);
        return;
    }
    if (s->env.n_rcpts == s->rcpt_cap) {
        size_t cap = s->rcpt_cap ? s->rcpt_cap * 2 : 4;
        if (cap > s->p.max_recipients)
            cap = s->p.max_recipients;
        struct mx_rcpt *v = realloc(s->env.rcpts, cap * sizeof *v);
        if (!v) {
            reply(s, 452, "4.3.0", "Error: insufficient resources");
            return;
        }
        s->env.rcpts = v;
        s->rcpt_cap = cap;
    }
    s->env.rcpts[s->env.n_rcpts++] = *rc;
    s->counts.rcpt++;
    reply(s, 250, "2.1.5", "Ok");
}

static void cmd_mail(struct mx_smtpd_session *s, const char *arg)
{
    if (!s->have_helo) {
        reply(s, 503, "5.5.1", "Error: send HELO/EHLO first");
        return;
    }
    if (s->in_txn) {
        reply(s, 503, "5.5.1", "Error: nested MAIL command");
        return;
    }
    if (strncasecmp(arg, "FROM:", 5) != 0) {
        reply(s, 501, "5.5.4", "Syntax: MAIL FROM:<address>");
        return;
    }
    /* SMTPUTF8 must be known before the address is checked. */
    bool utf8 = false;
    const char *gt = strchr(arg + 5, '>');
    if (gt)
        for (const char *q = gt + 1; *q;) {
            while (*q == ' ')
                q++;
            size_t l = strcspn(q, " ");
            if (l == 8 && strncasecmp(q, "SMTPUTF8", 8) == 0)
                utf8 = true;
            q += l;
        }
    bool tricky;
    char addr[MX_ADDR_MAX];
    const char *rest = parse_path(arg + 5, addr, sizeof addr, true, utf8, &tricky);
    if (!rest) {
        reply(s, 501, "5.1.7", "Bad sender address syntax");
        return;
    }
    reset_txn(s);
    snprintf(s->env.mail_from, sizeof s->env.mail_from, "%s", addr);
    /* parameters */
    char params[1024];
    if (strlen(rest) >= sizeof params) {
        reply(s, 501, "5.5.4", "Parameters too long");
        return;
    }
    snprintf(params, sizeof params, "%s", rest);
    char *save = NULL;
    unsigned seen = 0; /* RFC 5321 4.1.2: each parameter at most once */
    for (char *t = strtok_r(params, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        const char *v;
        static const char *const names[] = {"SIZE=", "BODY=", "SMTPUTF8", "RET=", "ENVID="};
        for (unsigned k = 0; k < 5; k++)
            if (strncasecmp(t, names[k], strlen(names[k])) == 0) {
                if (seen & (1u << k)) {
                    reply(s, 501, "5.5.4", "Duplicate MAIL parameter");
                    return;
                }
                seen |= 1u << k;
            }
        if ((v = param_value(t, "SIZE"))) {
            char *end;
            errno = 0;
            unsigned long long sz = strtoull(v, &end, 10);
            if (!*v || *end || errno || !isdigit((unsigned char)*v)) {
                reply(s, 501, "5.5.4", "Bad SIZE parameter");
                return;
            }
            if (sz > s->p.max_message_size) {
                reply(s, 552, "5.3.4", "Message size exceeds fixed limit");
                return;
            }
            s->env.size_param = sz;
        } else if ((v = param_value(t, "BODY"))) {
            if (strcasecmp(v, "7BIT") == 0)
                s->env.body = MX_BODY_7BIT;
            else if (strcasecmp(v, "8BITMIME") == 0)
                s->env.body = MX_BODY_8BITMIME;
            else {
                reply(s, 555, "5.5.4", "Unsupported BODY parameter");
                return;
            }
        } else if (strcasecmp(t, "SMTPUTF8") == 0) {
            s->env.smtputf8 = true;
        } else if ((v = param_value(t, "RET"))) {
            if (strcasecmp(v, "FULL") == 0)
                s->env.ret = MX_RET_FULL;
            else if (strcasecmp(v, "HDRS") == 0)
                s->env.ret = MX_RET_HDRS;
            else {
                reply(s, 501, "5.5.4", "Bad RET parameter");
                return;
            }
        } else if ((v = param_value(t, "ENVID"))) {
            if (!xtext_decode(v, strlen(v), s->env.envid, sizeof s->env.envid)) {
                reply(s, 501, "5.5.4", "Bad ENVID parameter");
                return;
            }
        } else {
            reply(s, 555, "5.5.4", "Unsupported option: %.64s", t);
            return;
        }
    }
    struct mx_smtpd_reply r = {0};
    if (s->ops->mail)
        s->ops->mail(s->ud, &s->env, &r);
    if (r.code == MX_SMTPD_PENDING) {
        s->pend = PEND_MAIL;
        s->state = SMTPD_WAIT_REPLY;
        return;
    }
    mail_answer(s, &r);
}

static void cmd_rcpt(struct mx_smtpd_session *s, const char *arg)
{
    if (!s->in_txn) {
        reply(s, 503, "5.5.1", "Error: need MAIL command");
        return;
    }
    if (strncasecmp(arg, "TO:", 3) != 0) {
        reply(s, 501, "5.5.4", "Syntax: RCPT TO:<address>");
        return;
    }
    struct mx_rcpt rc;
    memset(&rc, 0, sizeof rc);
    bool tricky;
    const char *rest = parse_path(arg + 3, rc.addr, sizeof rc.addr, false, s->env.smtputf8, &tricky);
    if (!rest) {
        /* RFC 5321 4.5.1: <postmaster> without a domain must be accepted */
        const char *p = arg + 3;
        while (*p == ' ')
            p++;
        if (strncasecmp(p, "<postmaster>", 12) == 0) {
            snprintf(rc.addr, sizeof rc.addr, "postmaster@%s", s->p.hostname);
            rest = p + 12;
            tricky = false;
        } else {
            reply(s, 501, "5.1.3", "Bad recipient address syntax");
            return;
        }
    }
    char params[1024];
    if (strlen(rest) >= sizeof params) {
        reply(s, 501, "5.5.4", "Parameters too long");
        return;
    }
    snprintf(params, sizeof params, "%s", rest);
    char *save = NULL;
    bool have_notify = false, have_orcpt = false;
    for (char *t = strtok_r(params, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        const char *v;
        if ((param_value(t, "NOTIFY") && have_notify) || (param_value(t, "ORCPT") && have_orcpt)) {
            reply(s, 501, "5.5.4", "Duplicate RCPT parameter");
            return;
        }
        have_notify |= param_value(t, "NOTIFY") != NULL;
        have_orcpt |= param_value(t, "ORCPT") != NULL;
        if ((v = param_value(t, "NOTIFY"))) {
            char list[64];
            snprintf(list, sizeof list, "%s", v);
            uint8_t bits = 0;
            char *s2 = NULL;
            for (char *k = strtok_r(list, ",", &s2); k; k = strtok_r(NULL, ",", &s2)) {
                if (strcasecmp(k, "NEVER") == 0)
                    bits |= MX_NOTIFY_NEVER;
                else if (strcasecmp(k, "SUCCESS") == 0)
                    bits |= MX_NOTIFY_SUCCESS;
                else if (strcasecmp(k, "FAILURE") == 0)
                    bits |= MX_NOTIFY_FAILURE;
                else if (strcasecmp(k, "DELAY") == 0)
                    bits |= MX_NOTIFY_DELAY;
                else
                    bits = 0xff;
            }
            if (bits == 0 || bits == 0xff || ((bits & MX_NOTIFY_NEVER) && bits != MX_NOTIFY_NEVER)) {
                reply(s, 501, "5.5.4", "Bad NOTIFY parameter");
                return;
            }
            rc.notify = bits;
        } else if ((v = param_value(t, "ORCPT"))) {
            const char *semi = strchr(v, ';');
            if (!semi || semi == v) {
                reply(s, 501, "5.5.4", "Bad ORCPT parameter");
                return;
            }
            size_t tl = (size_t)(semi - v);
            char dec[MX_DSN_ORCPT_MAX - 40];
            if (tl >= 32 || !xtext_decode(semi + 1, strlen(semi + 1), dec, sizeof dec)) {
                reply(s, 501, "5.5.4", "Bad ORCPT parameter");
                return;
            }
            memcpy(rc.orcpt, v, tl); /* addr-type, e.g. "rfc822" */
            rc.orcpt[tl] = ';';
            memcpy(rc.orcpt + tl + 1, dec, strlen(dec) + 1);
        } else {
            reply(s, 555, "5.5.4", "Unsupported option: %.64s", t);
            return;
        }
    }
    if (s->env.n_rcpts >= s->p.max_recipients) {
        reply(s, 452, "4.5.3", "Error: too many recipients");
        return;
    }
    if (s->env.size_param &&
        s->env.size_param * (uint64_t)(s->env.n_rcpts + 1) > s->p.max_message_total) {
        reply(s, 452, "4.5.3", "Error: message size times recipients exceeds the total limit");
        return;
    }
    struct mx_smtpd_reply r = {0};
    if (s->ops->rcpt)
        s->ops->rcpt(s->ud, &s->env, &rc, tricky, &r);
    if (r.code == MX_SMTPD_PENDING) {
        s->pend_rcpt = rc;
        s->pend = PEND_RCPT;
        s->state = SMTPD_WAIT_REPLY;
        return;
    }
    rcpt_answer(s, &rc, &r);
}

/* Common checks before DATA/BDAT; opens the message. Returns false after replying. */
static bool begin_message(struct mx_smtpd_session *s)
{
    if (!s->in_txn) {
        reply(s, 503, "5.5.1", "Error: need MAIL command");
        return false;
    }
    if (s->env.n_rcpts == 0) {
        reply(s, 554, "5.5.1", "Error: no valid recipients");
        return false;
    }
    struct mx_smtpd_reply r = {0};
    if (s->ops->data_begin)
        s->ops->data_begin(s->ud, &s->env, &r);
    if (r.code) {
        reply(s, r.code, r.enh, "%s", r.text);
        return false;
    }
    s->data_open = true;
    s->msg_size = 0;
    s->chunk_len = 0;
    s->data_failed = s->data_bad_eol = s->data_too_big = false;
    return true;
}

static void emit_flush(struct mx_smtpd_session *s)
{
    if (s->chunk_len && s->data_open && !s->data_failed && !s->data_too_big &&
        !s->data_bad_eol) {
        if (s->ops->data_write && s->ops->data_write(s->ud, s->chunk, s->chunk_len) < 0)
            s->data_failed = true;
    }
    s->chunk_len = 0;
}

static inline void emit(struct mx_smtpd_session *s, uint8_t c)
{
    if (++s->msg_size > s->p.max_message_size)
        s->data_too_big = true;
    if (s->data_too_big || s->data_bad_eol)
        return;
    s->chunk[s->chunk_len++] = c;
    if (s->chunk_len == sizeof s->chunk)
        emit_flush(s);
}

/* The message is complete: refuse it or hand it to the queue. */
static void end_message(struct mx_smtpd_session *s)
{
    emit_flush(s);
    s->counts.messages++;
    if (s->data_bad_eol) {
        reply(s, 554, "5.6.11", "Error: bare CR or LF in message text (RFC 5321 2.3.8)");
        logf_(s, "reject: bare CR or LF in message text from <%s>", s->env.mail_from);
    } else if (s->data_too_big ||
               s->msg_size * (uint64_t)(s->env.n_rcpts ? s->env.n_rcpts : 1) >
                   s->p.max_message_total) {
        reply(s, 552, "5.3.4", "Error: message too large (%lu bytes)", (unsigned long)s->msg_size);
        logf_(s, "reject: message too large (%lu bytes) from <%s>", (unsigned long)s->msg_size,
              s->env.mail_from);
    } else if (s->data_failed) {
        reply(s, 451, "4.3.0", "Error: queue file write error");
    } else {
        s->data_open = false;
        s->state = SMTPD_WAIT_COMMIT;
        s->ops->data_end(s->ud, &s->env, s->msg_size);
        return;
    }
    if (s->ops->refused)
        s->ops->refused(s->ud, s->data_failed && !s->data_bad_eol && !s->data_too_big ? 451 : 554);
    reset_txn(s);
    s->state = SMTPD_CMD;
}

/*
 * DATA body: dot-unstuffing and end detection in one pass. Only CRLF "."
 * CRLF ends the message; a bare LF or bare CR anywhere is either a refusal
 * (default) or turned into CRLF (normalize) but never a line end, so a "."
 * after it is plain text.
 */
/*
 * A bare CR or LF in the text (after `dot` when a line-start dot came
 * before it): refused, or with "normalize" written as CRLF. Either way the
 * state continues inside a line, so a following "." is text, never an end.
 */
static void bare_eol(struct mx_smtpd_session *s, bool dot)
{
    if (!s->p.bare_lf_normalize) {
        s->data_bad_eol = true;
    } else {
        if (dot)
            emit(s, '.');
        emit(s, '\r');
        emit(s, '\n');
    }
    s->ds = D_IN;
}

static size_t data_input(struct mx_smtpd_session *s, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        switch (s->ds) {
        case D_LS:
            if (c == '.') {
                s->ds = D_DOT;
                break;
            }
            /* fall through */
        case D_IN:
            if (c == '\r') {
                s->ds = D_CR;
            } else if (c == '\n') {
                bare_eol(s, false);
            } else {
                emit(s, c);
                s->ds = D_IN;
            }
            break;
        case D_CR:
            if (c == '\n') {
                emit(s, '\r');
                emit(s, '\n');
                s->ds = D_LS;
            } else {
                bare_eol(s, false);
                i--; /* the byte after the bare CR is ordinary text */
            }
            break;
        case D_DOT:
            if (c == '\r') {
                s->ds = D_DOTCR;
            } else if (c == '\n') { /* "\r\n.\n": not an end marker */
                bare_eol(s, true);
            } else {
                /* transparency: a leading dot is removed (RFC 5321 4.5.2) */
                emit(s, c);
                s->ds = D_IN;
            }
            break;
        case D_DOTCR:
            if (c == '\n') {
                s->ds = D_LS;
                end_message(s);
                return i + 1;
            }
            /* ".\r" then something else: a bare CR after a dot */
            bare_eol(s, true);
            i--;
            break;
        }
    }
    emit_flush(s);
    return n;
}

static size_t bdat_input(struct mx_smtpd_session *s, const uint8_t *p, size_t n)
{
    size_t take = n < s->bdat_left ? n : (size_t)s->bdat_left;
    if (!s->bdat_discard) {
        for (size_t off = 0; off < take;) {
            size_t room = sizeof s->chunk - s->chunk_len;
            size_t k = take - off < room ? take - off : room;
            if (s->msg_size + k > s->p.max_message_size)
                s->data_too_big = true;
            s->msg_size += k;
            if (!s->data_too_big) {
                memcpy(s->chunk + s->chunk_len, p + off, k);
                s->chunk_len += k;
            }
            if (s->chunk_len == sizeof s->chunk)
                emit_flush(s);
            off += k;
        }
        emit_flush(s);
    }
    s->bdat_left -= take;
    if (s->bdat_left == 0) {
        s->state = SMTPD_CMD;
        if (s->bdat_discard) {
            s->bdat_discard = false;
        } else if (s->bdat_last) {
            s->state = SMTPD_CMD;
            end_message(s);
        } else if (s->data_too_big) {
            reply(s, 552, "5.3.4", "Error: message too large");
            reset_txn(s);
        } else {
            reply(s, 250, "2.0.0", "%lu octets received", (unsigned long)s->msg_size);
        }
    }
    return take;
}

static void cmd_bdat(struct mx_smtpd_session *s, const char *arg)
{
    char *end;
    while (*arg == ' ')
        arg++;
    errno = 0;
    unsigned long long size = strtoull(arg, &end, 10);
    if (!isdigit((unsigned char)*arg) || errno) {
        /* the chunk size is unknown, so the byte stream cannot be resynchronised */
        reply(s, 501, "5.5.4", "Syntax: BDAT size [LAST]");
        close_session(s);
        return;
    }
    bool last = false;
    while (*end == ' ')
        end++;
    if (*end) {
        if (strcasecmp(end, "LAST") != 0) {
            reply(s, 501, "5.5.4", "Syntax: BDAT size [LAST]");
            close_session(s);
            return;
        }
        last = true;
    }
    s->counts.bdat++;
    s->bdat_left = size;
    s->bdat_last = last;
    /* The chunk follows whatever we answer; a refused chunk is read and dropped. */
    if (!s->bdat_used) {
        if (!begin_message(s)) {
            s->bdat_discard = true;
            s->state = size ? SMTPD_BDAT : SMTPD_CMD;
            if (!size)
                s->bdat_discard = false;
            return;
        }
        s->bdat_used = true;
    }
    s->bdat_discard = false;
    s->state = SMTPD_BDAT;
    if (size == 0)
        bdat_input(s, NULL, 0);
}

static void start_tls(struct mx_smtpd_session *s)
{
    s->ssl = SSL_new(s->p.tls_ctx);
    s->rbio = BIO_new(BIO_s_mem());
    s->wbio = BIO_new(BIO_s_mem());
    if (!s->ssl || !s->rbio || !s->wbio) {
        SSL_free(s->ssl);
        BIO_free(s->rbio);
        BIO_free(s->wbio);
        s->ssl = NULL;
        reply(s, 454, "4.7.0", "TLS not available due to local problem");
        return;
    }
    SSL_set_bio(s->ssl, s->rbio, s->wbio);
    SSL_set_accept_state(s->ssl);
    reply(s, 220, "2.0.0", "Ready to start TLS");
    flush_out(s);
    s->state = SMTPD_TLS_HANDSHAKE;
}

static void cmd_starttls(struct mx_smtpd_session *s, const char *arg)
{
    if (*arg) {
        reply(s, 501, "5.5.4", "Syntax: STARTTLS");
        return;
    }
    if (!s->p.tls_ctx) {
        reply(s, 454, "4.7.0", "TLS not available");
        return;
    }
    if (s->tls_active) {
        reply(s, 554, "5.5.1", "Error: TLS already active");
        return;
    }
    s->counts.starttls++;
    start_tls(s);
}

/* One complete command line (without CRLF). */
static void command(struct mx_smtpd_session *s, char *line)
{
    s->counts.commands++;
    size_t vl = strcspn(line, " ");
    char *arg = line + vl;
    if (*arg)
        *arg++ = 0;
    /*
     * The command limit is for commands that move no mail (NOOP, RSET, VRFY,
     * HELP, unknown ...), like Postfix's junk command limit: a client that
     * sends thousands of messages over one connection is doing nothing wrong.
     */
    static const char *const mail_verbs[] = {"EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT",
                                             "QUIT", "STARTTLS"};
    bool moves_mail = false;
    for (size_t i = 0; i < sizeof mail_verbs / sizeof mail_verbs[0]; i++)
        moves_mail |= strcasecmp(line, mail_verbs[i]) == 0;
    if (!moves_mail && ++s->junk_commands > s->p.max_commands) {
        reply(s, 421, "4.7.0", "%s Error: too many commands", s->p.hostname);
        close_session(s);
        return;
    }
    unsigned errors_before = s->counts.errors;
    if (strcasecmp(line, "EHLO") == 0) {
        s->counts.ehlo++;
        cmd_ehlo(s, arg, true);
    } else if (strcasecmp(line, "HELO") == 0) {
        s->counts.helo++;
        cmd_ehlo(s, arg, false);
    } else if (strcasecmp(line, "MAIL") == 0) {
        cmd_mail(s, arg);
    } else if (strcasecmp(line, "RCPT") == 0) {
        cmd_rcpt(s, arg);
    } else if (strcasecmp(line, "DATA") == 0) {
        s->counts.data++;
        if (*arg)
            reply(s, 501, "5.5.4", "Syntax: DATA");
        else if (s->bdat_used)
            reply(s, 503, "5.5.1", "Error: DATA after BDAT");
        else if (begin_message(s)) {
            reply(s, 354, NULL, "End data with <CR><LF>.<CR><LF>");
            s->state = SMTPD_DATA;
            s->ds = D_LS;
        }
    } else if (strcasecmp(line, "BDAT") == 0) {
        cmd_bdat(s, arg);
    } else if (strcasecmp(line, "RSET") == 0) {
        s->counts.rset++;
        reset_txn(s);
        reply(s, 250, "2.0.0", "Ok");
    } else if (strcasecmp(line, "NOOP") == 0) {
        reply(s, 250, "2.0.0", "Ok");
    } else if (strcasecmp(line, "QUIT") == 0) {
        s->counts.quit++;
        reply(s, 221, "2.0.0", "Bye");
        close_session(s);
        return;
    } else if (strcasecmp(line, "VRFY") == 0) {
        reply(s, 252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery");
    } else if (strcasecmp(line, "EXPN") == 0) {
        reply(s, 502, "5.5.1", "EXPN not supported");
    } else if (strcasecmp(line, "HELP") == 0) {
        reply(s, 214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY "
                               "HELP STARTTLS");
    } else if (strcasecmp(line, "STARTTLS") == 0) {
        cmd_starttls(s, arg);
    } else {
        s->counts.unknown++;
        reply(s, 500, "5.5.2", "Error: command not recognized");
    }
    if (s->counts.errors > errors_before && s->counts.errors > s->p.max_errors &&
        s->state != SMTPD_CLOSED) {
        reply(s, 421, "4.7.0", "%s Error: too many errors", s->p.hostname);
        logf_(s, "too many errors (%u), closing", s->counts.errors);
        close_session(s);
    }
}

/* ---- input ------------------------------------------------------------ */

static int in_append(struct mx_smtpd_session *s, const uint8_t *p, size_t n)
{
    if (!n)
        return 0;
    if (s->in_len + n > IN_HOLD_MAX)
        return -ENOBUFS;
    if (s->in_len + n > s->in_cap) {
        size_t cap = s->in_cap ? s->in_cap : 1024;
        while (cap < s->in_len + n)
            cap *= 2;
        uint8_t *v = realloc(s->in, cap);
        if (!v)
            return -ENOMEM;
        s->in = v;
        s->in_cap = cap;
    }
    memcpy(s->in + s->in_len, p, n);
    s->in_len += n;
    return 0;
}

/*
 * RFC 5321 4.5.3.1.4 allows 512 octets per command line, but service
 * extensions add parameters (RFC 3461 ORCPT alone may be 500 octets), so
 * MAIL and RCPT get room for them on top of the configured limit.
 */
static size_t line_limit(const struct mx_smtpd_session *s, const uint8_t *p, size_t n)
{
    if (n >= 4 && (strncasecmp((const char *)p, "MAIL", 4) == 0 ||
                   strncasecmp((const char *)p, "RCPT", 4) == 0))
        return s->p.max_line_length + 512;
    return s->p.max_line_length;
}

/*
 * Consume held plaintext input as far as the state allows. Returns when all
 * input is used, a commit is pending, or the session closed.
 */
static void process(struct mx_smtpd_session *s)
{
    if (s->in_process)
        return; /* the outer call continues with the new state */
    s->in_process = true;
    size_t off = 0;
    while (s->in && off < s->in_len) {
        if (s->state == SMTPD_CLOSED || s->state == SMTPD_WAIT_COMMIT ||
            s->state == SMTPD_WAIT_REPLY || s->state == SMTPD_TLS_HANDSHAKE)
            break;
        const uint8_t *p = s->in + off;
        size_t n = s->in_len - off;
        if (s->state == SMTPD_DATA) {
            off += data_input(s, p, n);
            continue;
        }
        if (s->state == SMTPD_BDAT) {
            off += bdat_input(s, p, n);
            continue;
        }
        /*
         * Command mode: only CRLF ends a line. A bare LF or CR is part of the
         * line (which is then refused whole), never a line end of its own.
         */
        const uint8_t *crlf = memmem(p, n, "\r\n", 2);
        size_t limit = line_limit(s, p, n);
        if (!crlf) {
            if (n >= limit) {
                /* overlong line: answer once, drop what we have, skip to its end */
                if (!s->skip_to_crlf)
                    reply(s, 500, "5.5.6", "Error: line too long");
                s->skip_to_crlf = true;
                off += p[n - 1] == '\r' ? n - 1 : n; /* keep a CR that may start CRLF */
            }
            break;
        }
        size_t linelen = (size_t)(crlf - p) + 2;
        off += linelen;
        if (s->skip_to_crlf) {
            s->skip_to_crlf = false;
            continue;
        }
        if (linelen > limit) {
            reply(s, 500, "5.5.6", "Error: line too long");
            continue;
        }
        char line[2048];
        size_t l = linelen - 2;
        if (l >= sizeof line)
            l = sizeof line - 1;
        memcpy(line, p, l);
        line[l] = 0;
        if (memchr(line, '\n', l)) {
            reply(s, 500, "5.5.2", "Error: bare LF in command line");
            continue;
        }
        if (memchr(line, '\r', l) || memchr(line, 0, l)) {
            reply(s, 500, "5.5.2", "Error: bare CR or NUL in command line");
            continue;
        }
        command(s, line);
        if (s->state == SMTPD_TLS_HANDSHAKE) {
            /*
             * RFC 3207 5: anything pipelined after STARTTLS arrived in
             * plaintext and must not be executed inside the TLS session.
             */
            if (off < s->in_len)
                logf_(s, "discarded %zu bytes pipelined after STARTTLS", s->in_len - off);
            off = s->in_len;
        }
    }
    if (off) {
        memmove(s->in, s->in + off, s->in_len - off);
        s->in_len -= off;
    }
    s->in_process = false;
}

static void handshake(struct mx_smtpd_session *s)
{
    int r = SSL_do_handshake(s->ssl);
    /* send whatever the handshake produced */
    uint8_t buf[16384];
    int k;
    while ((k = BIO_read(s->wbio, buf, sizeof buf)) > 0)
        s->ops->output(s->ud, buf, (size_t)k);
    if (r == 1) {
        s->tls_active = true;
        s->state = SMTPD_CMD;
        /* RFC 3207 4.2: forget everything learned before TLS */
        reset_txn(s);
        s->have_helo = false;
        s->env.helo[0] = 0;
        snprintf(s->env.tls, sizeof s->env.tls, "%s %s", SSL_get_version(s->ssl),
                 SSL_get_cipher_name(s->ssl));
        if (s->ops->tls_done)
            s->ops->tls_done(s->ud, true, s->env.tls);
        return;
    }
    int err = SSL_get_error(s->ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        return;
    char e[256];
    ERR_error_string_n(ERR_get_error(), e, sizeof e);
    if (s->ops->tls_done)
        s->ops->tls_done(s->ud, false, e);
    logf_(s, "TLS handshake failed: %s", e);
    s->state = SMTPD_CLOSED;
    if (s->ops->close)
        s->ops->close(s->ud);
}

/* Decrypt what TLS has for us into the plaintext input buffer. */
static int tls_read_into_input(struct mx_smtpd_session *s)
{
    uint8_t buf[16384];
    for (;;) {
        int r = SSL_read(s->ssl, buf, sizeof buf);
        if (r > 0) {
            if (in_append(s, buf, (size_t)r) < 0)
                return -ENOBUFS;
            continue;
        }
        int err = SSL_get_error(s->ssl, r);
        if (err == SSL_ERROR_WANT_READ)
            return 0;
        if (err == SSL_ERROR_ZERO_RETURN)
            return -EPIPE;
        return -EIO;
    }
}

static void begin_chunk(struct mx_smtpd_session *s)
{
    s->out_depth++;
}

static void end_chunk(struct mx_smtpd_session *s)
{
    if (--s->out_depth == 0 && s->state != SMTPD_CLOSED)
        flush_out(s);
}

void mx_smtpd_session_input(struct mx_smtpd_session *s, const uint8_t *buf, size_t len)
{
    if (s->state == SMTPD_CLOSED)
        return;
    begin_chunk(s);
    if (s->ssl) {
        if (BIO_write(s->rbio, buf, (int)len) != (int)len) {
            close_session(s);
            goto out;
        }
        if (s->state == SMTPD_TLS_HANDSHAKE) {
            handshake(s);
            if (s->state != SMTPD_CMD)
                goto out;
        }
        int rc = tls_read_into_input(s);
        if (rc < 0 && rc != -EPIPE) {
            logf_(s, "TLS read error, closing");
            close_session(s);
            goto out;
        }
    } else if (s->state == SMTPD_TLS_HANDSHAKE) {
        goto out;
    } else if (in_append(s, buf, len) < 0) {
        reply(s, 421, "4.7.0", "%s Error: too much pipelined input", s->p.hostname);
        close_session(s);
        goto out;
    }
    process(s);
out:
    end_chunk(s);
}

void mx_smtpd_session_data_done(struct mx_smtpd_session *s, int res, const char *queue_id)
{
    if (s->state != SMTPD_WAIT_COMMIT)
        return;
    begin_chunk(s);
    if (res == 0)
        reply(s, 250, "2.0.0", "Ok: queued as %s", queue_id ? queue_id : "?");
    else if (res == -ENOSPC)
        reply(s, 452, "4.3.1", "Insufficient system storage");
    else
        reply(s, 451, "4.3.0", "Error: queue file write error");
    s->data_open = false;
    reset_txn(s);
    s->state = SMTPD_CMD;
    process(s);
    end_chunk(s);
}

static void send_greeting(struct mx_smtpd_session *s)
{
    char line[300];
    int n = snprintf(line, sizeof line, "220 %s ESMTP mxgate\r\n", s->p.hostname);
    out_raw(s, line, (size_t)n);
    if (s->ops->replied)
        s->ops->replied(s->ud, 220);
}

/* The connect policy's answer: greet, or refuse and close. */
static void greet_answer(struct mx_smtpd_session *s, const struct mx_smtpd_reply *r)
{
    if (!r->code) {
        send_greeting(s);
        return;
    }
    const char *text = r->text ? r->text : "";
    reply(s, r->code, r->enh, "%s", text);
    logf_(s, "reject: connect from %s: %d %s %s", s->env.client_text, r->code,
          r->enh ? r->enh : "", text);
    close_session(s);
}

void mx_smtpd_session_reply(struct mx_smtpd_session *s, const struct mx_smtpd_reply *r)
{
    if (s->state != SMTPD_WAIT_REPLY)
        return;
    begin_chunk(s);
    enum pending_kind k = s->pend;
    s->pend = PEND_NONE;
    s->state = SMTPD_CMD;
    struct mx_smtpd_reply ans = *r;
    if (ans.code == MX_SMTPD_PENDING) /* not an answer: refuse temporarily rather than hang */
        ans = (struct mx_smtpd_reply){451, "4.3.0", "Error: policy answer missing"};
    if (k == PEND_GREET)
        greet_answer(s, &ans);
    else if (k == PEND_MAIL)
        mail_answer(s, &ans);
    else if (k == PEND_RCPT)
        rcpt_answer(s, &s->pend_rcpt, &ans);
    if (s->state == SMTPD_CMD) {
        /* what the answered command still owes: the error limit, then held input */
        if (s->counts.errors > s->p.max_errors && ans.code >= 400) {
            reply(s, 421, "4.7.0", "%s Error: too many errors", s->p.hostname);
            logf_(s, "too many errors (%u), closing", s->counts.errors);
            close_session(s);
        } else {
            process(s);
        }
    }
    end_chunk(s);
}

void mx_smtpd_session_data_refuse(struct mx_smtpd_session *s, const struct mx_smtpd_reply *r)
{
    if (s->state != SMTPD_WAIT_COMMIT)
        return;
    begin_chunk(s);
    /* 250: the message is dropped on purpose (policy "discard"): the client is told it was taken */
    int code = (r->code >= 400 && r->code < 600) || r->code == 250 ? r->code : 451;
    const char *text = r->text ? r->text : "Error: message refused";
    reply(s, code, r->enh, "%s", text);
    logf_(s, "%s: end of data from <%s>: %d %s %s", code == 250 ? "discard" : "reject",
          s->env.mail_from, code, r->enh ? r->enh : "", text);
    if (s->ops->refused && code != 250)
        s->ops->refused(s->ud, code);
    s->data_open = false;
    reset_txn(s);
    s->state = SMTPD_CMD;
    process(s);
    end_chunk(s);
}

void mx_smtpd_session_reject_and_close(struct mx_smtpd_session *s, const char *line)
{
    out_raw(s, line, strlen(line));
    close_session(s);
}

void mx_smtpd_session_timeout(struct mx_smtpd_session *s)
{
    if (s->state == SMTPD_CLOSED)
        return;
    logf_(s, "timeout after %s", s->state == SMTPD_DATA || s->state == SMTPD_BDAT ? "DATA"
                                                                                   : "command");
    reply(s, 421, "4.4.2", "%s Error: timeout exceeded", s->p.hostname);
    close_session(s);
}

void mx_smtpd_session_shutdown(struct mx_smtpd_session *s)
{
    if (s->state != SMTPD_CMD || s->in_txn)
        return; /* let a transaction in progress finish */
    reply(s, 421, "4.3.2", "%s Service shutting down", s->p.hostname);
    close_session(s);
}

void mx_smtpd_session_pregreet(struct mx_smtpd_session *s)
{
    logf_(s, "reject: client talked before the greeting");
    reply(s, 554, "5.5.0", "Protocol error: talking before the greeting");
    close_session(s);
}

void mx_smtpd_session_greet(struct mx_smtpd_session *s)
{
    if (s->state != SMTPD_CMD)
        return;
    struct mx_smtpd_reply r = {0};
    if (s->ops->connect)
        s->ops->connect(s->ud, &s->env, &r);
    if (r.code == MX_SMTPD_PENDING) {
        /* input that arrives meanwhile is held and answered after the greeting */
        s->pend = PEND_GREET;
        s->state = SMTPD_WAIT_REPLY;
        return;
    }
    greet_answer(s, &r);
    flush_out(s);
}

struct mx_smtpd_session *mx_smtpd_session_new(const struct mx_smtpd_params *p,
                                              const struct mx_smtpd_ops *ops, void *ud,
                                              const struct sockaddr *peer, socklen_t peer_len)
{
    struct mx_smtpd_session *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->p = *p;
    if (!s->p.max_line_length || s->p.max_line_length > 1000)
        s->p.max_line_length = 512;
    if (!s->p.max_errors)
        s->p.max_errors = 10;
    if (!s->p.max_commands)
        s->p.max_commands = 10000;
    if (!s->p.max_recipients)
        s->p.max_recipients = 100;
    s->ops = ops;
    s->ud = ud;
    if (peer && peer_len <= sizeof s->env.client) {
        memcpy(&s->env.client, peer, peer_len);
        char ip[INET6_ADDRSTRLEN] = "?";
        if (peer->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)peer)->sin_addr, ip, sizeof ip);
        else if (peer->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)peer)->sin6_addr, ip, sizeof ip);
        snprintf(s->env.client_text, sizeof s->env.client_text, "%s", ip);
    }
    return s;
}

void mx_smtpd_session_free(struct mx_smtpd_session *s)
{
    if (!s)
        return;
    if (s->ssl)
        SSL_free(s->ssl); /* frees the BIOs too */
    free(s->env.rcpts);
    free(s->in);
    free(s);
}

enum mx_smtpd_state mx_smtpd_session_state(const struct mx_smtpd_session *s)
{
    return s->state;
}

bool mx_smtpd_session_in_data(const struct mx_smtpd_session *s)
{
    return s->state == SMTPD_DATA || s->state == SMTPD_BDAT;
}

const struct mx_smtpd_counts *mx_smtpd_session_counts(const struct mx_smtpd_session *s)
{
    return &s->counts;
}

const struct mx_envelope *mx_smtpd_session_envelope(const struct mx_smtpd_session *s)
{
    return &s->env;
}

bool mx_smtpd_session_esmtp(const struct mx_smtpd_session *s)
{
    return s->esmtp;
}
