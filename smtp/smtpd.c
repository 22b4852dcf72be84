/*
 * smtpd.c - the SMTP server bound to the transport and the queue: one
 * session per accepted stream, message bytes streamed into the spool as
 * they arrive, and "250 queued as" only once the spool says the message is
 * durable. Also the relay decision at RCPT and the session log lines.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "config/config.h"
#include "console/console.h"
#include "dataplane/dataplane.h"
#include "queue/queue.h"
#include "scan/scan.h"
#include "smtp/checks_internal.h"
#include "smtp/smtp.h"
#include "smtp/smtpd_internal.h"

#define SCAN_WORKERS_MAX 128 /* as dataplane's MX_MAX_WORKERS */

struct mx_smtp_server {
    const struct mx_config *cfg;
    struct mx_queue *queue;
    struct mx_scan_engine *scan; /* NULL: no rules configured */
    SSL_CTX *tls;
    struct mx_smtpd_params params;
    /*
     * Sessions started on this server (a configuration generation): taken at
     * accept, dropped when the session is freed. The reload code frees an old
     * server only once this is 0 and no worker can still find it.
     */
    atomic_uint refs;
    /* Hyperscan scratch of each worker for this server's engine (made lazily,
     * on the worker; freed with the server, since it belongs to the engine). */
    struct mx_scan_worker *scan_workers[SCAN_WORKERS_MAX];
    struct mx_checks *checks; /* DNS checks, recipient verification; NULL: none */
    struct mx_av *av;         /* anti-virus service (scan.clamav); NULL: off */
};

struct smtpd_conn {
    struct mx_smtp_server *srv;
    struct mx_stream *st;
    struct mx_smtpd_session *sess;
    struct mx_queue_msg *msg;
    bool commit_pending; /* the queue still owes us an answer */
    bool stream_gone;    /* the connection closed meanwhile */
    bool greeting_pending;
    uint64_t msg_size;
    /*
     * With scanning on, the message is held here until the verdict is known
     * at end of data: the verdict headers go first and forged ones are
     * removed before the bytes reach the spool.
     */
    struct mx_scan_msg *scan_msg;
    struct mx_scan_result scan_res; /* its verdict, taken at end of data (scan_rc 0) */
    int scan_rc;
    bool uribl_wait;         /* end of data waits for URIBL answers on the body URIs */
    uint64_t uribl_deadline; /* ... until then (realtime ms): uribl.timeout */
    uint8_t *hold;
    size_t hold_len, hold_cap;
    char sid[20];
    char peer[80];
    struct mx_checks_conn *chk; /* DNS checks and recipient verification (checks.c) */
    uint64_t start_ms;
    /* client limits: the concurrency slots this session holds (released at the end) */
    bool trusted;
    bool held_ip, held_net;
    uint8_t key_ip[18], key_net[18];
    uint8_t klen_ip, klen_net;
    char reply_text[320]; /* text of a policy reply (must outlive the callback) */
    /* anti-virus: the held message is scanned at end of data before the commit */
    struct mx_av_job *av_job; /* owns c->hold while set */
    uint64_t av_start_ms;
    bool av_on;               /* this message is AV-scanned (some recipient has av on) */
    bool av_done;
    unsigned retention;       /* quarantine retention of this message, seconds (0 = keep) */
    /* the scan verdict, for bcc_when, and the redirect targets (policy actions) */
    bool verdict, allowed;
    double verdict_score;
    struct mx_rcpt *redir;
    size_t n_redir;
    char av_header[200];      /* "X-Virus-Status: ..." line for the message, or "" */
    char av_quarantine[160];  /* quarantine reason when AV asked for it, or "" */
    /* Received headers counted in the message's header block (loop detection) */
    unsigned hops;
    uint16_t hop_lpos; /* bytes into the current line, saturating */
    bool hop_match;    /* the current line still reads "Received:" so far */
    bool hop_first_cr; /* the current line began with CR */
    bool hop_done;     /* past the header block */
};

#define AV_POLL_MS 2

static __thread unsigned sessions_on_worker;

/* This worker's scan state for srv's engine; only ever touched from worker w. */
static struct mx_scan_worker *server_scan_worker(struct mx_smtp_server *srv,
                                                 struct mx_worker *w)
{
    unsigned i = w ? mx_worker_index(w) : 0;
    if (i >= SCAN_WORKERS_MAX)
        return NULL;
    if (!srv->scan_workers[i])
        srv->scan_workers[i] = mx_scan_worker_new(srv->scan);
    return srv->scan_workers[i];
}

static void av_drop(struct smtpd_conn *c);

static void drop_scan(struct smtpd_conn *c)
{
    av_drop(c); /* a pending AV job owns the held bytes: it frees them, not us */
    if (c->scan_msg) {
        mx_scan_msg_free(c->scan_msg);
        c->scan_msg = NULL;
    }
    free(c->hold);
    c->hold = NULL;
    c->hold_len = c->hold_cap = 0;
}

static uint64_t realtime_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void conn_log(struct smtpd_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_log(struct smtpd_conn *c, const char *fmt, ...)
{
    char line[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "mxgate[smtp]: %s: %s\n", c->sid, line);
}

/* ---- policy: client limits, HELO, sender lists, spam action ------------ */

/*
 * Limit tables are per worker (shared-nothing, like everything on a worker)
 * and outlive configuration generations. A client whose connections the
 * kernel spreads over several workers is counted on each separately.
 */
#define LIMIT_KEYS 65536
static __thread struct mx_ratelimit *lim_conc;  /* connections at once (ip and net keys) */
static __thread struct mx_ratelimit *lim_rate;  /* new connections per minute */
static __thread struct mx_ratelimit *lim_msgs;  /* messages per hour */
static __thread struct mx_ratelimit *lim_smsg;  /* outbound messages per hour per sender */
static __thread struct mx_ratelimit *lim_srcpt; /* outbound recipients per hour per sender */

static struct mx_ratelimit *limit_table(struct mx_ratelimit **t, uint32_t window_ms);

/* A sender's key: tag byte + 128 bits of two FNV-1a hashes of the lower-cased address. */
static uint8_t sender_key(const char *addr, uint8_t key[17])
{
    uint64_t h1 = 0xcbf29ce484222325ull, h2 = 0x84222325cbf29ce4ull;
    for (const char *p = addr; *p; p++) {
        unsigned char ch = (unsigned char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
        h1 = (h1 ^ ch) * 0x100000001b3ull;
        h2 = (h2 ^ ch) * 0x100000001b3ull + 1;
    }
    key[0] = 's';
    memcpy(key + 1, &h1, 8);
    memcpy(key + 9, &h2, 8);
    return 17;
}

/* Outbound limit for the sender of a trusted client; true when over it. */
static bool sender_over(struct mx_ratelimit **t, const char *sender, unsigned limit)
{
    uint8_t key[17];
    if (!limit || !*sender || !limit_table(t, 3600000))
        return false;
    return mx_ratelimit_hit(*t, key, sender_key(sender, key), realtime_ms(), 1, limit, NULL) < 0;
}

static struct mx_ratelimit *limit_table(struct mx_ratelimit **t, uint32_t window_ms)
{
    if (!*t && mx_ratelimit_new(LIMIT_KEYS, window_ms, t) < 0)
        *t = NULL;
    return *t;
}

/* key = one tag byte (so address and network keys never meet) + the address */
static uint8_t limit_key(const struct sockaddr *sa, bool net, uint8_t key[18])
{
    key[0] = net ? 'n' : 'i';
    int n = mx_ratelimit_client_key(sa, net, key + 1);
    return n < 0 ? 0 : (uint8_t)(n + 1);
}

static void limits_release(struct smtpd_conn *c)
{
    if (c->held_ip && lim_conc)
        mx_ratelimit_release(lim_conc, c->key_ip, c->klen_ip);
    if (c->held_net && lim_conc)
        mx_ratelimit_release(lim_conc, c->key_net, c->klen_net);
    c->held_ip = c->held_net = false;
}

/* Connection limits at accept. Returns the reason to refuse, or NULL. */
static const char *limits_connect(struct smtpd_conn *c, const struct sockaddr *peer)
{
    const struct mx_config *cfg = c->srv->cfg;
    if (c->trusted)
        return NULL;
    c->klen_ip = limit_key(peer, false, c->key_ip);
    c->klen_net = limit_key(peer, true, c->key_net);
    if (!c->klen_ip || !c->klen_net)
        return NULL;
    if (cfg->limit_conn_rate_per_ip && limit_table(&lim_rate, 60000) &&
        mx_ratelimit_hit(lim_rate, c->key_ip, c->klen_ip, realtime_ms(), 1,
                         cfg->limit_conn_rate_per_ip, NULL) < 0) {
        MX_STATS_INC(CONN_REJ_RATE);
        return "rate";
    }
    if (cfg->limit_conn_per_ip && limit_table(&lim_conc, 60000)) {
        if (mx_ratelimit_acquire(lim_conc, c->key_ip, c->klen_ip, cfg->limit_conn_per_ip) < 0) {
            MX_STATS_INC(CONN_REJ_CONCURRENCY);
            return "concurrency";
        }
        c->held_ip = true;
    }
    if (cfg->limit_conn_per_net && limit_table(&lim_conc, 60000)) {
        if (mx_ratelimit_acquire(lim_conc, c->key_net, c->klen_net, cfg->limit_conn_per_net) < 0) {
            MX_STATS_INC(CONN_REJ_CONCURRENCY);
            return "network concurrency";
        }
        c->held_net = true;
    }
    return NULL;
}

static void policy_reply(struct smtpd_conn *c, struct mx_smtpd_reply *r, int code,
                         const char *enh, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void policy_reply(struct smtpd_conn *c, struct mx_smtpd_reply *r, int code,
                         const char *enh, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->reply_text, sizeof c->reply_text, fmt, ap);
    va_end(ap);
    r->code = code;
    r->enh = enh;
    r->text = c->reply_text;
}

/* HELO blocklist and per-client message rate, checked at MAIL. True if r was set. */
static bool policy_mail(struct smtpd_conn *c, const struct mx_envelope *env,
                        struct mx_smtpd_reply *r)
{
    const struct mx_config *cfg = c->srv->cfg;
    if (c->trusted) {
        if (!sender_over(&lim_smsg, env->mail_from, cfg->limit_sender_msgs))
            return false;
        conn_log(c, "policy: outbound message limit (%u per hour) reached for <%s>",
                 cfg->limit_sender_msgs, env->mail_from);
        policy_reply(c, r, 451, "4.7.1", "<%.200s>: Sender rate limit exceeded, try again later",
                     env->mail_from);
        return true;
    }
    int hit = -1;
    if (cfg->helo_reject_defaults) {
        size_t n = 0;
        while (mx_policy_helo_defaults[n])
            n++;
        hit = mx_policy_helo_match(env->helo, mx_policy_helo_defaults, n);
    }
    if (hit < 0 && cfg->n_helo_block)
        hit = mx_policy_helo_match(env->helo, (const char *const *)cfg->helo_block,
                                   cfg->n_helo_block);
    if (hit >= 0) {
        conn_log(c, "policy: HELO name '%s' is on the blocklist", env->helo);
        policy_reply(c, r, 550, "5.7.1", "<%.200s>: Helo command rejected: host name not accepted",
                     env->helo);
        return true;
    }
    if (cfg->limit_msgs_per_ip && c->klen_ip && limit_table(&lim_msgs, 3600000) &&
        mx_ratelimit_hit(lim_msgs, c->key_ip, c->klen_ip, realtime_ms(), 1,
                         cfg->limit_msgs_per_ip, NULL) < 0) {
        conn_log(c, "policy: message rate limit (%u per hour) reached", cfg->limit_msgs_per_ip);
        policy_reply(c, r, 451, "4.7.1", "Too many messages from your address, try again later");
        return true;
    }
    return false;
}

/* Sender lists for one recipient. True if r was set (blocked). */
static bool policy_rcpt(struct smtpd_conn *c, const struct mx_envelope *env,
                        const struct mx_rcpt *rcpt, struct mx_smtpd_reply *r)
{
    const struct mx_config *cfg = c->srv->cfg;
    struct mx_policy_result pr;
    if (!cfg->policy ||
        mx_policy_check_sender(cfg->policy, rcpt->addr, env->mail_from,
                               (const struct sockaddr *)&env->client, &pr) < 0 ||
        pr.verdict != MX_POLICY_BLOCKED)
        return false;
    MX_STATS_INC(CONN_REJ_BLOCKLIST);
    conn_log(c, "policy: sender <%s> blocked for <%s> by '%s'%s%s", env->mail_from, rcpt->addr,
             pr.pattern, pr.scope[0] ? " of " : "", pr.scope);
    policy_reply(c, r, 550, "5.7.1", "<%.200s>: Sender address rejected: blocked by policy",
                 env->mail_from);
    return true;
}

/* Every recipient has the sender on an allow list: no spam action. */
static bool policy_allowlisted(struct smtpd_conn *c, const struct mx_envelope *env)
{
    const struct mx_policy *p = c->srv->cfg->policy;
    if (!p || !env->n_rcpts)
        return false;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        struct mx_policy_result pr;
        if (mx_policy_check_sender(p, env->rcpts[i].addr, env->mail_from,
                                   (const struct sockaddr *)&env->client, &pr) < 0 ||
            pr.verdict != MX_POLICY_ALLOWED)
            return false;
    }
    return true;
}

/* Drop a pending AV job; the job owns the held bytes and frees them when its
 * thread is done with them. */
static void av_drop(struct smtpd_conn *c)
{
    if (!c->av_job)
        return;
    mx_av_job_free(c->av_job);
    c->av_job = NULL;
    c->hold = NULL;
    c->hold_len = c->hold_cap = 0;
    MX_STATS_ADD(AV_QUEUE, (uint64_t)-1);
}

static void free_conn(struct smtpd_conn *c)
{
    MX_STATS_ADD(CONN_OPEN, (uint64_t)-1);
    limits_release(c);
    av_drop(c);
    mx_smtp_checks_conn_free(c->chk); /* answers still in flight are dropped */
    drop_scan(c);
    if (c->msg)
        mx_queue_msg_abort(c->msg);
    mx_smtpd_session_free(c->sess);
    free(c->redir);
    struct mx_smtp_server *srv = c->srv;
    free(c);
    sessions_on_worker--;
    /* last touch of srv: release orders everything above before the reaper's free */
    atomic_fetch_sub_explicit(&srv->refs, 1, memory_order_release);
}

/* ---- session callbacks ------------------------------------------------- */

static void s_output(void *ud, const uint8_t *buf, size_t len)
{
    struct smtpd_conn *c = ud;
    MX_STATS_ADD(BYTES_OUT, len);
    if (!c->stream_gone && mx_stream_write(c->st, buf, len) < 0)
        mx_stream_close(c->st);
}

static void s_close(void *ud)
{
    struct smtpd_conn *c = ud;
    if (!c->stream_gone)
        mx_stream_close(c->st);
}

static void s_replied(void *ud, int code)
{
    (void)ud;
    switch (code / 100) {
    case 2:
        MX_STATS_INC(REPLY_2XX);
        break;
    case 3:
        MX_STATS_INC(REPLY_3XX);
        break;
    case 4:
        MX_STATS_INC(REPLY_4XX);
        break;
    default:
        MX_STATS_INC(REPLY_5XX);
        break;
    }
}

static void s_refused(void *ud, int code)
{
    (void)ud;
    if (code >= 500)
        MX_STATS_INC(MSG_REJECTED);
    else
        MX_STATS_INC(MSG_TEMPFAILED);
}

static void s_log(void *ud, const char *line)
{
    conn_log(ud, "%s", line);
}

static void s_mail(void *ud, const struct mx_envelope *env, struct mx_smtpd_reply *r)
{
    struct smtpd_conn *c = ud;
    (void)r;
    conn_log(c, "helo=%s from=<%s> size=%lu%s", env->helo, env->mail_from, (unsigned long)env->size_param,
             env->smtputf8 ? " smtputf8" : "");
    if (policy_mail(c, env, r)) /* HELO blocklist, message rate */
        return;
    mx_smtp_checks_mail(c->chk, env, r); /* DNSBL, URIBL, sender domain; maybe answered later */
}

static bool is_ip_literal(const char *domain)
{
    return domain[0] == '[';
}

/*
 * Relay control: trusted clients may send anywhere; everybody else only to
 * relay domains, and never through the old relay tricks (source routes,
 * '%' or '!' in the local part, quoted '@'), which downstream MTAs might
 * still honour.
 */
static void s_rcpt(void *ud, const struct mx_envelope *env, const struct mx_rcpt *rcpt, bool tricky,
                   struct mx_smtpd_reply *r)
{
    struct smtpd_conn *c = ud;
    const struct mx_config *cfg = c->srv->cfg;
    bool trusted = mx_config_is_trusted(cfg, (const struct sockaddr *)&env->client);
    const char *at = strrchr(rcpt->addr, '@');
    const char *domain = at ? at + 1 : "";
    if (!trusted && (tricky || is_ip_literal(domain) || !mx_config_is_relay_domain(cfg, domain))) {
        r->code = 554;
        r->enh = "5.7.1";
        r->text = "Relay access denied";
        return;
    }
    if (policy_rcpt(c, env, rcpt, r)) /* sender block lists of this recipient */
        return;
    if (trusted && sender_over(&lim_srcpt, env->mail_from, cfg->limit_sender_rcpts)) {
        conn_log(c, "policy: outbound recipient limit (%u per hour) reached for <%s>",
                 cfg->limit_sender_rcpts, env->mail_from);
        policy_reply(c, r, 451, "4.7.1", "<%.200s>: Too many recipients from this sender, "
                     "try again later", env->mail_from);
        return;
    }
    conn_log(c, "rcpt=<%s>%s", rcpt->addr, trusted ? " (trusted client)" : "");
    mx_smtp_checks_rcpt(c->chk, rcpt, r); /* recipient verification; maybe answered later */
}

/*
 * The trace header RFC 5321 4.4 asks of every server that accepts a message:
 * Postfix's layout (no reverse DNS here, so "unknown"), the session id as id
 * (it names the session's log lines), "for" only with a single recipient
 * (more would disclose the others), the protocol per RFC 3848.
 */
static size_t received_header(const struct smtpd_conn *c, const struct mx_envelope *env,
                              char *out, size_t cap)
{
    char helo[104];
    size_t hl = 0;
    for (const char *p = env->helo; *p && hl < 100; p++) {
        unsigned char ch = (unsigned char)*p;
        /* a comment delimiter or a non-printable byte must not reshape the header */
        bool odd = ch <= ' ' || ch >= 0x7f || ch == '(' || ch == ')' || ch == '\\' || ch == ';';
        helo[hl++] = odd ? '_' : (char)ch;
    }
    helo[hl] = 0;
    bool tls = env->tls[0] != 0;
    const char *proto = mx_smtpd_session_esmtp(c->sess) ? (tls ? "ESMTPS" : "ESMTP")
                                                         : (tls ? "SMTPS" : "SMTP");
    const char *v6 = env->client.ss_family == AF_INET6 ? "IPv6:" : "";
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S %z", &tm);
    int n = snprintf(out, cap, "Received: from %s (unknown [%s%s])\r\n\tby %s (mxgate) with %s id %s",
                     hl ? helo : "unknown", v6, env->client_text, c->srv->cfg->smtp_hostname,
                     proto, c->sid);
    if (tls && n > 0 && (size_t)n < cap) {
        const char *sp = strchr(env->tls, ' ');
        int vl = sp ? (int)(sp - env->tls) : (int)strlen(env->tls);
        n += snprintf(out + n, cap - (size_t)n, "\r\n\t(using %.*s with cipher %s)", vl, env->tls,
                      sp ? sp + 1 : "unknown");
    }
    if (env->n_rcpts == 1 && n > 0 && (size_t)n < cap)
        n += snprintf(out + n, cap - (size_t)n, "\r\n\tfor <%s>", env->rcpts[0].addr);
    if (n > 0 && (size_t)n < cap)
        n += snprintf(out + n, cap - (size_t)n, "; %s\r\n", date);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* Count "Received:" header lines while the header block streams past. */
static void count_hops(struct smtpd_conn *c, const uint8_t *buf, size_t len)
{
    static const char name[] = "received:";
    for (size_t i = 0; i < len && !c->hop_done; i++) {
        uint8_t ch = buf[i];
        if (ch == '\n') {
            if (c->hop_lpos == 0 || (c->hop_lpos == 1 && c->hop_first_cr))
                c->hop_done = true; /* the empty line: the body starts */
            c->hop_lpos = 0;
            continue;
        }
        if (c->hop_lpos == 0) {
            c->hop_first_cr = ch == '\r';
            c->hop_match = true;
        }
        if (c->hop_lpos < 9) {
            c->hop_match = c->hop_match && (ch | 0x20) == (uint8_t)name[c->hop_lpos];
            if (c->hop_lpos == 8 && c->hop_match)
                c->hops++;
        }
        if (c->hop_lpos < UINT16_MAX)
            c->hop_lpos++;
    }
}

/*
 * The per-recipient settings that apply to the message as a whole (one copy
 * is queued for every recipient): it is AV-scanned when any recipient has
 * av on (mixed recipients: scanned, the safe side), and a quarantined copy
 * is kept as long as the recipient that wants it longest (0 = forever wins).
 */
static void message_policy(struct smtpd_conn *c, const struct mx_envelope *env)
{
    const struct mx_config *cfg = c->srv->cfg;
    c->av_on = false;
    c->retention = 0;
    c->verdict = false;
    free(c->redir);
    c->redir = NULL;
    c->n_redir = 0;
    bool forever = false;
    unsigned av_off = 0;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        struct mx_policy_effective eff;
        mx_config_policy_for(cfg, env->rcpts[i].addr, &eff);
        if (eff.av)
            c->av_on = true;
        else
            av_off++;
        if (eff.quarantine_retention == 0)
            forever = true;
        else if (eff.quarantine_retention > c->retention)
            c->retention = eff.quarantine_retention;
    }
    if (forever || !env->n_rcpts)
        c->retention = env->n_rcpts ? 0 : cfg->policy_quarantine_retention;
    if (!c->srv->av) {
        c->av_on = false;
    } else if (!c->av_on) {
        conn_log(c, "policy: AV off for every recipient (%zu), message not virus-scanned",
                 env->n_rcpts);
    } else if (av_off) {
        conn_log(c, "policy: AV off for %u of %zu recipients, scanned for the others", av_off,
                 env->n_rcpts);
    }
}

static void s_data_begin(void *ud, const struct mx_envelope *env, struct mx_smtpd_reply *r)
{
    struct smtpd_conn *c = ud;
    /* each message of the session is scanned on its own */
    c->av_done = false;
    message_policy(c, env);
    c->av_header[0] = 0;
    c->av_quarantine[0] = 0;
    c->hold_len = 0;
    c->hops = 0;
    c->hop_lpos = 0;
    c->hop_done = false;
    struct mx_envelope e = *env;
    snprintf(e.session_id, sizeof e.session_id, "%s", c->sid);
    e.arrival_ms = realtime_ms();
    c->msg = mx_queue_msg_begin(c->srv->queue, c->st->worker, &e);
    if (!c->msg) {
        int err = errno;
        conn_log(c, "cannot queue a message: %s", strerror(err));
        r->code = err == ENOSPC ? 452 : 451;
        r->enh = err == ENOSPC ? "4.3.1" : "4.3.0";
        r->text = err == ENOSPC ? "Insufficient system storage" : "Error: queue not available";
        return;
    }
    if (c->srv->scan) {
        struct mx_scan_worker *sw = server_scan_worker(c->srv, c->st->worker);
        c->scan_msg = sw ? mx_scan_msg_begin(sw) : NULL;
        if (!c->scan_msg) {
            /* never let mail through unscanned: tempfail instead */
            mx_queue_msg_abort(c->msg);
            c->msg = NULL;
            r->code = 451;
            r->enh = "4.3.0";
            r->text = "Error: scanner not available";
            return;
        }
        mx_scan_msg_set_envelope(c->scan_msg, env->mail_from[0] ? env->mail_from : NULL);
    }
    /* our trace header on top; the scanner reads it too, as it would behind any MTA */
    char rcvd[1024];
    size_t rl = received_header(c, env, rcvd, sizeof rcvd);
    if (rl && mx_queue_msg_write(c->msg, rcvd, rl) < 0) {
        drop_scan(c);
        mx_queue_msg_abort(c->msg);
        c->msg = NULL;
        r->code = 451;
        r->enh = "4.3.0";
        r->text = "Error: queue not available";
        return;
    }
    if (rl && c->scan_msg)
        mx_scan_msg_feed(c->scan_msg, (const uint8_t *)rcvd, rl);
}

static int s_data_write(void *ud, const uint8_t *buf, size_t len)
{
    struct smtpd_conn *c = ud;
    if (!c->msg)
        return -EIO;
    mx_smtp_checks_data(c->chk, buf, len); /* header block for the logical IP check */
    count_hops(c, buf, len);
    if (!c->scan_msg && !c->av_on)
        return mx_queue_msg_write(c->msg, buf, len);
    if (c->scan_msg)
        mx_scan_msg_feed(c->scan_msg, buf, len);
    if (c->hold_len + len > c->hold_cap) {
        size_t cap = c->hold_cap ? c->hold_cap : 65536;
        while (cap < c->hold_len + len)
            cap *= 2;
        uint8_t *h = realloc(c->hold, cap);
        if (!h)
            return -ENOMEM;
        c->hold = h;
        c->hold_cap = cap;
    }
    memcpy(c->hold + c->hold_len, buf, len);
    c->hold_len += len;
    return 0;
}

/* Severity of a policy action, to pick one when several verdicts apply. */
static int action_rank(const char *a)
{
    static const char *const order[] = {"deliver",    "tag",     "redirect",
                                        "quarantine", "discard", "reject"};
    for (int i = 5; i > 0; i--)
        if (strcmp(a, order[i]) == 0)
            return i;
    return 0;
}

/* What one recipient's own settings ask for the verdict: its most severe action. */
/* Does the recipient's policy (attachment_allow) exempt this attachment rule? */
static bool att_exempt(const struct mx_policy_effective *eff, const char *rule)
{
    for (size_t i = 0; i < eff->n_attachment_allow; i++)
        if (strcmp(eff->attachment_allow[i], rule) == 0)
            return true;
    return false;
}

/* An attachment rule hit that the recipient does not exempt. */
static bool rcpt_banned(const struct mx_scan_result *res, const struct mx_policy_effective *eff)
{
    for (unsigned i = 0; i < res->natt_hits; i++)
        if (!att_exempt(eff, res->att_hits[i]))
            return true;
    return false;
}

/* The score as the recipient's policy reads it: exempted attachment rules add nothing. */
static double rcpt_score(const struct mx_scan_result *res, const struct mx_policy_effective *eff)
{
    double score = res->score;
    for (unsigned i = 0; eff->n_attachment_allow && i < res->nhits; i++)
        if (att_exempt(eff, res->hits[i])) {
            for (unsigned k = 0; k < res->natt_hits; k++)
                if (strcmp(res->att_hits[k], res->hits[i]) == 0) {
                    score -= res->hit_scores[i];
                    break;
                }
        }
    return score;
}

/* spam/banned (may be NULL): whether the message is spam / banned for this recipient. */
static const char *rcpt_action(const struct mx_scan_result *res, bool allowed,
                               const struct mx_policy_effective *eff, const char **why,
                               bool *spam, bool *banned)
{
    const char *a = "deliver";
    *why = "";
    bool is_spam = rcpt_score(res, eff) >= eff->spam_threshold && !allowed;
    bool is_banned = rcpt_banned(res, eff);
    if (spam)
        *spam = is_spam;
    if (banned)
        *banned = is_banned;
    if (is_spam && action_rank(eff->spam_action) > 0)
        a = eff->spam_action, *why = "spam";
    if (is_banned && action_rank(eff->banned_action) > action_rank(a))
        a = eff->banned_action, *why = "banned attachment";
    if ((res->flags & MX_SCAN_DLP) && action_rank(eff->dlp_action) > action_rank(a))
        a = eff->dlp_action, *why = "DLP rule";
    return a;
}

/*
 * The message goes to the redirect_to address of each recipient whose own
 * action is "redirect" instead of to its recipients (the strictest recipient
 * decides for one queued copy, as for the other actions).
 */
static int redirect_message(struct smtpd_conn *c, const struct mx_scan_result *res, bool allowed,
                            const char *why)
{
    const struct mx_config *cfg = c->srv->cfg;
    const struct mx_envelope *env = mx_smtpd_session_envelope(c->sess);
    struct mx_rcpt *v = calloc(env->n_rcpts ? env->n_rcpts : 1, sizeof *v);
    if (!v)
        return -ENOMEM;
    size_t n = 0;
    char list[600] = "";
    size_t ll = 0;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        struct mx_policy_effective eff;
        const char *w;
        mx_config_policy_for(cfg, env->rcpts[i].addr, &eff);
        if (strcmp(rcpt_action(res, allowed, &eff, &w, NULL, NULL), "redirect") != 0 ||
            !*eff.redirect_to)
            continue;
        bool dup = false;
        for (size_t k = 0; k < n && !dup; k++)
            dup = strcasecmp(v[k].addr, eff.redirect_to) == 0;
        if (dup)
            continue;
        snprintf(v[n].addr, sizeof v[n].addr, "%s", eff.redirect_to);
        if (ll < sizeof list)
            ll += (size_t)snprintf(list + ll, sizeof list - ll, "%s<%s>", n ? "," : "",
                                   eff.redirect_to);
        n++;
    }
    int rc = 0;
    if (n == 0) {
        /* the configuration check makes this unreachable; never deliver then */
        conn_log(c, "policy: %s, action redirect without redirect_to: quarantined instead", why);
        rc = mx_queue_msg_quarantine(c->msg, "redirect without redirect_to", c->retention);
    } else {
        rc = mx_queue_msg_set_rcpts(c->msg, v, n);
        if (rc == 0) {
            conn_log(c, "policy: %s, redirected to %s instead of %zu recipient(s)", why, list,
                     env->n_rcpts);
            free(c->redir);
            c->redir = v;
            c->n_redir = n;
            v = NULL;
        }
    }
    free(v);
    return rc;
}

/*
 * BCC: a copy to each bcc address of the recipients whose bcc_when matches
 * the verdict ("always"; "spam"/"clean" need a scan verdict). The copy is a
 * further recipient of the queued message with NOTIFY=NEVER: the sender
 * gets no DSN about an archive address it never named. Addresses already
 * among the recipients are not added twice.
 */
static int apply_bcc(struct smtpd_conn *c)
{
    const struct mx_config *cfg = c->srv->cfg;
    const struct mx_envelope *env = mx_smtpd_session_envelope(c->sess);
    const char *added[64];
    size_t n_added = 0;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        struct mx_policy_effective eff;
        mx_config_policy_for(cfg, env->rcpts[i].addr, &eff);
        if (!*eff.bcc)
            continue;
        bool spam = c->verdict && c->verdict_score >= eff.spam_threshold && !c->allowed;
        if (strcmp(eff.bcc_when, "always") != 0 &&
            (!c->verdict || spam != (strcmp(eff.bcc_when, "spam") == 0)))
            continue;
        bool dup = false;
        for (size_t k = 0; k < n_added && !dup; k++)
            dup = strcasecmp(added[k], eff.bcc) == 0;
        if (c->redir) {
            for (size_t k = 0; k < c->n_redir && !dup; k++)
                dup = strcasecmp(c->redir[k].addr, eff.bcc) == 0;
        } else {
            for (size_t k = 0; k < env->n_rcpts && !dup; k++)
                dup = strcasecmp(env->rcpts[k].addr, eff.bcc) == 0;
        }
        if (dup || n_added == sizeof added / sizeof added[0])
            continue;
        struct mx_rcpt r;
        memset(&r, 0, sizeof r);
        snprintf(r.addr, sizeof r.addr, "%s", eff.bcc);
        r.notify = MX_NOTIFY_NEVER;
        int rc = mx_queue_msg_add_rcpt(c->msg, &r);
        if (rc < 0)
            return rc;
        added[n_added++] = eff.bcc;
        conn_log(c, "policy: BCC copy to <%s> (bcc_when %s, for <%s>)", eff.bcc, eff.bcc_when,
                 env->rcpts[i].addr);
    }
    return 0;
}

/* What the spam action asks of end of data, beyond writing the message. */
enum spam_outcome { SPAM_COMMIT = 0, SPAM_REJECT, SPAM_DISCARD };

/* Position just after "Subject:" of a header block, or -1. */
static ssize_t find_subject(const char *h, size_t len)
{
    for (size_t i = 0; i + 8 <= len;) {
        if (strncasecmp(h + i, "Subject:", 8) == 0)
            return (ssize_t)(i + 8);
        const char *nl = memchr(h + i, '\n', len - i);
        if (!nl)
            break;
        i = (size_t)(nl - h) + 1;
    }
    return -1;
}

/*
 * An attachment's name (member path through its archives) for a reply or a
 * log line: the sender chose those bytes, so anything but printable ASCII
 * becomes '?' and a long name is cut (with "...").
 */
static void printable_name(const char *in, char *out, size_t cap)
{
    size_t o = 0, i = 0;
    for (; in[i] && o + 4 < cap; i++)
        out[o++] = in[i] >= 0x20 && in[i] < 0x7f ? in[i] : '?';
    if (in[i])
        o += (size_t)snprintf(out + o, cap - o, "...");
    out[o] = 0;
}

/*
 * The score URIBLs that listed a body URI domain (checks.c) count as rules
 * of the verdict: their score is added and their URIBL_ZONE names join the
 * sorted hit list (X-Spam-Status tests=, X-Spam-Rules). *names / *scores
 * are malloc'd when there are hits (the caller frees them after rendering).
 */
static int add_uribl_hits(struct smtpd_conn *c, struct mx_scan_result *res, const char ***names,
                          double **scores)
{
    const struct mx_checks_uri_hit *uh;
    size_t nuh = mx_smtp_checks_uri_hits(c->chk, &uh);
    if (!nuh)
        return 0;
    size_t n = res->nhits + nuh;
    const char **nv = malloc(n * sizeof *nv);
    double *sv = malloc(n * sizeof *sv);
    if (!nv || !sv) {
        free(nv);
        free(sv);
        return -ENOMEM;
    }
    for (size_t i = 0; i < res->nhits; i++) {
        nv[i] = res->hits[i];
        sv[i] = res->hit_scores[i];
    }
    for (size_t k = 0; k < nuh; k++) {
        conn_log(c, "URIBL: %s listed at %s, %s %+.1f", uh[k].domain, uh[k].zone, uh[k].rule,
                 uh[k].score);
        /* insertion into the sorted list */
        size_t i = res->nhits + k;
        while (i > 0 && strcmp(nv[i - 1], uh[k].rule) > 0) {
            nv[i] = nv[i - 1];
            sv[i] = sv[i - 1];
            i--;
        }
        nv[i] = uh[k].rule;
        sv[i] = uh[k].score;
        res->score += uh[k].score;
    }
    res->nhits = (unsigned)n;
    res->hits = nv;
    res->hit_scores = sv;
    if (res->score >= res->threshold)
        res->flags |= MX_SCAN_SPAM;
    *names = nv;
    *scores = sv;
    return 0;
}

/* Length of the header block of a held message: up to and with the line
 * ending before the first empty line (the whole message when there is none). */
static size_t header_end(const uint8_t *h, size_t n)
{
    if (n >= 2 && h[0] == '\r' && h[1] == '\n')
        return 0;
    const uint8_t *e = memmem(h, n, "\r\n\r\n", 4);
    return e ? (size_t)(e - h) + 2 : n;
}

/*
 * End of data with scanning: verdict headers first, forged ones removed, and
 * the spam action of the policy (tag / quarantine here; reject and discard
 * are reported in *out and nothing is written).
 */
static int write_verdict(struct smtpd_conn *c, struct mx_scan_result res, enum spam_outcome *out);

static int write_scanned(struct smtpd_conn *c, enum spam_outcome *out)
{
    *out = SPAM_COMMIT;
    struct mx_scan_result res = c->scan_res;
    int rc = c->scan_rc;
    if (rc < 0)
        return rc;
    /* the hit list with the URIBL hits lives until the verdict is acted on */
    const char **names = NULL;
    double *scores = NULL;
    rc = add_uribl_hits(c, &res, &names, &scores);
    if (rc == 0)
        rc = write_verdict(c, res, out);
    free(names);
    free(scores);
    return rc;
}

static int write_verdict(struct smtpd_conn *c, struct mx_scan_result res, enum spam_outcome *out)
{
    int rc;
    if (res.flags & MX_SCAN_SPAM)
        MX_STATS_INC(VERDICT_SPAM);
    else
        MX_STATS_INC(VERDICT_CLEAN);
    if (res.flags & MX_SCAN_DLP)
        MX_STATS_INC(VERDICT_DLP);
    if (res.flags & MX_SCAN_ATTACHMENT)
        MX_STATS_INC(VERDICT_BANNED);
    if (res.flags & MX_SCAN_ENCRYPTED)
        MX_STATS_INC(SCAN_ENCRYPTED);
    if (res.flags & MX_SCAN_ARCHIVE_CORRUPT)
        MX_STATS_INC(SCAN_ARCHIVE_CORRUPT);
    if (res.flags & MX_SCAN_TRUNCATED)
        MX_STATS_INC(SCAN_TRUNCATED);
    for (unsigned i = 0; i < res.nhits; i++)
        mx_stats_rule_hit(res.hits[i]);
    char hdr[4096];
    int hl = mx_scan_render_headers(&res, hdr, sizeof hdr);
    char tests[512] = "";
    size_t tl = 0;
    for (unsigned i = 0; i < res.nhits && tl + 2 < sizeof tests; i++)
        tl += (size_t)snprintf(tests + tl, sizeof tests - tl, "%s%s", i ? "," : "", res.hits[i]);
    if (hl < 0)
        return hl;
    /* the AV status line goes with the verdict headers (it was only written
     * for messages held for AV alone) */
    size_t avl = strlen(c->av_header);
    if (avl && (size_t)hl + avl < sizeof hdr) {
        memcpy(hdr + hl, c->av_header, avl);
        hl += (int)avl;
    }
    conn_log(c, "verdict: %s score=%.1f required=%.1f tests=%s", res.flags & MX_SCAN_SPAM ? "spam"
             : "clean", res.score, res.threshold, tests);
    if (res.regex_errors)
        conn_log(c, "scan: %u regex match(es) ended at a PCRE2 limit, counted as no match",
                 res.regex_errors);
    const struct mx_config *cfg = c->srv->cfg;
    /*
     * One action for the message: the most severe of what its verdicts ask
     * (reject > discard > quarantine > tag). The allow list lifts the spam
     * action only; a banned attachment or a DLP hit acts whoever sent it.
     */
    const char *action = "deliver", *why = "";
    const struct mx_envelope *env = mx_smtpd_session_envelope(c->sess);
    bool allowed = policy_allowlisted(c, env);
    bool spam_any = false, banned_any = false;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        /* each recipient's own settings (user over domain over global); the
         * message gets the most severe action any of its recipients asks for */
        struct mx_policy_effective eff;
        mx_config_policy_for(cfg, env->rcpts[i].addr, &eff);
        bool spam, banned;
        const char *w, *a = rcpt_action(&res, allowed, &eff, &w, &spam, &banned);
        spam_any |= spam;
        banned_any |= banned;
        if (action_rank(a) > action_rank(action))
            action = a, why = w;
    }
    /* for bcc_when: the verdict as each recipient's threshold reads it */
    c->verdict = true;
    c->verdict_score = res.score;
    c->allowed = allowed;
    if ((res.flags & MX_SCAN_SPAM) && allowed)
        conn_log(c, "policy: sender allow-listed by every recipient, no spam action");
    /* which attachment (archive member) a rule hit: "invoice.zip/x.exe" */
    char att[200] = "";
    if (res.attachment) {
        printable_name(res.attachment, att, sizeof att);
        conn_log(c, "%s: %s (rule %s)",
                 banned_any ? "banned attachment"
                            : "attachment rule hit, exempted by attachment_allow for every "
                              "recipient",
                 att, res.attachment_rule);
    }
    if (*why)
        conn_log(c, "policy: %s, action %s", why, action);
    if (strcmp(action, "reject") == 0 || strcmp(action, "discard") == 0) {
        *out = action[0] == 'r' ? SPAM_REJECT : SPAM_DISCARD;
        if (strcmp(why, "banned attachment") == 0 && att[0])
            snprintf(c->reply_text, sizeof c->reply_text,
                     "Message rejected: attachment type not allowed: %s", att);
        else
            snprintf(c->reply_text, sizeof c->reply_text, "%s",
                     strcmp(why, "spam") == 0                ? "Message rejected as spam"
                     : strcmp(why, "banned attachment") == 0 ? "Message rejected: attachment type not allowed"
                                                             : "Message rejected: content not allowed by policy");
        return 0;
    }
    const char *tag = spam_any && strcmp(action, "tag") == 0
                          ? cfg->policy_spam_subject_tag
                          : "";
    size_t hend = header_end(c->hold, c->hold_len);
    char *stripped = malloc(hend + 1);
    if (!stripped)
        return -ENOMEM;
    size_t sl = mx_scan_strip_verdict_headers((const char *)c->hold, hend, stripped, hend + 1);
    ssize_t subj = *tag ? find_subject(stripped, sl) : -1;
    if (*tag && subj < 0 && (size_t)hl + strlen(tag) + 12 < sizeof hdr)
        hl += snprintf(hdr + hl, sizeof hdr - (size_t)hl, "Subject: %s\r\n", tag);
    rc = mx_queue_msg_write(c->msg, hdr, (size_t)hl);
    if (subj >= 0) {
        /* "Subject:" + " TAG" + the original value (its leading space included) */
        if (rc == 0)
            rc = mx_queue_msg_write(c->msg, stripped, (size_t)subj);
        if (rc == 0)
            rc = mx_queue_msg_write(c->msg, " ", 1);
        if (rc == 0)
            rc = mx_queue_msg_write(c->msg, tag, strlen(tag));
        if (rc == 0)
            rc = mx_queue_msg_write(c->msg, stripped + subj, sl - (size_t)subj);
    } else if (rc == 0) {
        rc = mx_queue_msg_write(c->msg, stripped, sl);
    }
    if (rc == 0 && c->hold_len > hend)
        rc = mx_queue_msg_write(c->msg, c->hold + hend, c->hold_len - hend);
    free(stripped);
    if (rc == 0 && strcmp(action, "redirect") == 0)
        rc = redirect_message(c, &res, allowed, why);
    if (rc == 0 && strcmp(action, "quarantine") == 0) {
        char reason[96];
        snprintf(reason, sizeof reason, "%s score=%.1f required=%.1f", why, res.score,
                 res.threshold);
        rc = mx_queue_msg_quarantine(c->msg, reason, c->retention);
    }
    return rc;
}

static void arm_timer(struct smtpd_conn *c);
static void s_data_abort(void *ud);
static void av_poll(struct smtpd_conn *c);

static void commit_done(void *arg, int res, const char *queue_id)
{
    struct smtpd_conn *c = arg;
    c->commit_pending = false;
    const struct mx_envelope *env = mx_smtpd_session_envelope(c->sess);
    if (res == 0) {
        MX_STATS_INC(MSG_ACCEPTED);
        conn_log(c, "queued as %s from=<%s> size=%lu rcpts=%zu", queue_id, env->mail_from,
                 (unsigned long)c->msg_size, env->n_rcpts);
    } else {
        MX_STATS_INC(MSG_TEMPFAILED);
        conn_log(c, "queue commit failed: %s", strerror(-res));
    }
    if (c->stream_gone) {
        free_conn(c);
        return;
    }
    mx_smtpd_session_data_done(c->sess, res, queue_id);
    if (mx_smtpd_session_state(c->sess) == SMTPD_CLOSED)
        return;
    arm_timer(c);
    mx_stream_pause(c->st, false); /* replays what arrived meanwhile */
}

/* End of data, checks passed: verdict headers, then make it durable. */
/* End of data: hand the held message to the AV service; st_timeout polls it. */
static bool av_begin(struct smtpd_conn *c)
{
    if (!c->hold && !(c->hold = malloc(1)))
        return false;
    c->av_job = mx_av_submit_owned(c->srv->av, c->hold, c->hold_len);
    if (!c->av_job)
        return false;
    MX_STATS_ADD(AV_QUEUE, 1);
    c->av_start_ms = realtime_ms();
    mx_stream_set_timer(c->st, AV_POLL_MS);
    return true;
}

static void finish_data_end(struct smtpd_conn *c, uint64_t size)
{
    c->msg_size = size;
    if (c->av_on && !c->av_done) {
        if (!av_begin(c)) {
            conn_log(c, "AV: cannot submit the message: %s", strerror(ENOMEM));
            s_data_abort(c);
            struct mx_smtpd_reply r = {451, "4.3.0", "Error: virus scanner not available"};
            mx_smtpd_session_data_refuse(c->sess, &r);
        }
        return; /* av_poll() goes on */
    }
    if (c->scan_msg) {
        enum spam_outcome spam;
        int rc = write_scanned(c, &spam);
        drop_scan(c);
        if (rc < 0) {
            conn_log(c, "scan failed: %s", strerror(-rc));
            mx_queue_msg_abort(c->msg);
            c->msg = NULL;
            mx_smtpd_session_data_done(c->sess, -EIO, NULL);
            return;
        }
        if (spam != SPAM_COMMIT) {
            av_drop(c);
            mx_queue_msg_abort(c->msg);
            c->msg = NULL;
            struct mx_smtpd_reply r = {550, "5.7.1", c->reply_text};
            if (spam == SPAM_DISCARD)
                r = (struct mx_smtpd_reply){250, "2.7.0", "Ok: message discarded by policy"};
            mx_smtpd_session_data_refuse(c->sess, &r);
            return;
        }
    } else if (c->av_on) {
        /* held for AV only: its status line, then the message as received
         * less any X-Virus-Status (or X-Spam-*) header from outside */
        size_t hend = header_end(c->hold, c->hold_len);
        char *stripped = malloc(hend + 1);
        int rc = stripped ? mx_queue_msg_write(c->msg, c->av_header, strlen(c->av_header))
                          : -ENOMEM;
        if (rc == 0) {
            size_t sl = mx_scan_strip_verdict_headers((const char *)c->hold, hend, stripped,
                                                      hend + 1);
            rc = mx_queue_msg_write(c->msg, stripped, sl);
        }
        free(stripped);
        if (rc == 0 && c->hold_len > hend)
            rc = mx_queue_msg_write(c->msg, c->hold + hend, c->hold_len - hend);
        if (rc < 0) {
            av_drop(c);
            mx_queue_msg_abort(c->msg);
            c->msg = NULL;
            mx_smtpd_session_data_done(c->sess, rc, NULL);
            return;
        }
    }
    av_drop(c); /* the queue has its copy */
    if (c->av_quarantine[0]) {
        int rc = mx_queue_msg_quarantine(c->msg, c->av_quarantine, c->retention);
        if (rc < 0) {
            mx_queue_msg_abort(c->msg);
            c->msg = NULL;
            mx_smtpd_session_data_done(c->sess, rc, NULL);
            return;
        }
    }
    int brc = apply_bcc(c);
    free(c->redir);
    c->redir = NULL;
    c->n_redir = 0;
    if (brc < 0) {
        conn_log(c, "policy: BCC failed: %s", strerror(-brc));
        mx_queue_msg_abort(c->msg);
        c->msg = NULL;
        mx_smtpd_session_data_done(c->sess, brc, NULL);
        return;
    }
    struct mx_queue_msg *m = c->msg;
    c->msg = NULL;
    c->commit_pending = true;
    int rc = mx_queue_msg_commit(m, commit_done, c);
    if (rc < 0) {
        c->commit_pending = false;
        mx_smtpd_session_data_done(c->sess, rc, NULL);
    }
}

static const char *scan_uri_at(void *ctx, unsigned i)
{
    return mx_scan_msg_uri(ctx, i);
}

static void s_data_end(void *ud, const struct mx_envelope *env, uint64_t size)
{
    struct smtpd_conn *c = ud;
    (void)env;
    struct mx_smtpd_reply r = {0};
    if (c->hops > c->srv->cfg->smtp_max_received) {
        /* RFC 5321 6.3: a message that went round too often is a loop */
        conn_log(c, "refused: %u Received headers (limit %u): mail loop", c->hops,
                 c->srv->cfg->smtp_max_received);
        s_data_abort(c);
        r = (struct mx_smtpd_reply){554, "5.4.6", "Too many hops: mail loop detected"};
        mx_smtpd_session_data_refuse(c->sess, &r);
        return;
    }
    if (c->scan_msg) {
        /* the verdict now: its URI list feeds the URIBL check below */
        c->scan_rc = mx_scan_msg_end(c->scan_msg, &c->scan_res);
    }
    /* logical IP against the DNSBLs, body URI domains against the URIBLs */
    mx_smtp_checks_data_end(c->chk, c->scan_msg && c->scan_rc == 0 ? scan_uri_at : NULL,
                            c->scan_msg, &r);
    if (r.code == MX_SMTPD_PENDING) {
        c->msg_size = size; /* checks_answer() goes on */
        if (mx_smtp_checks_uribl_pending(c->chk)) {
            c->uribl_wait = true;
            c->uribl_deadline = realtime_ms() + c->srv->cfg->uribl_timeout_ms;
            mx_stream_set_timer(c->st, c->srv->cfg->uribl_timeout_ms);
        }
        return;
    }
    if (r.code) {
        s_data_abort(c);
        mx_smtpd_session_data_refuse(c->sess, &r);
        return;
    }
    finish_data_end(c, size);
}

static void s_data_abort(void *ud)
{
    struct smtpd_conn *c = ud;
    drop_scan(c);
    if (c->msg) {
        mx_queue_msg_abort(c->msg);
        c->msg = NULL;
    }
}

static void s_tls_done(void *ud, bool ok, const char *info)
{
    struct smtpd_conn *c = ud;
    if (ok)
        conn_log(c, "TLS established: %s", info);
}

static const struct mx_smtpd_ops session_ops = {
    .output = s_output,
    .close = s_close,
    .mail = s_mail,
    .rcpt = s_rcpt,
    .data_begin = s_data_begin,
    .data_write = s_data_write,
    .data_end = s_data_end,
    .data_abort = s_data_abort,
    .log = s_log,
    .tls_done = s_tls_done,
    .replied = s_replied,
    .refused = s_refused,
};

/* ---- stream callbacks ------------------------------------------------- */

static void arm_timer(struct smtpd_conn *c)
{
    if (c->av_job && !c->av_done) {
        /* AV jobs are polled; the service enforces its own time limit per message */
        mx_stream_set_timer(c->st, AV_POLL_MS);
        return;
    }
    if (c->uribl_wait) {
        /* the URIBL budget of this message, whatever input arrives meanwhile */
        uint64_t now = realtime_ms();
        mx_stream_set_timer(c->st, c->uribl_deadline > now ? c->uribl_deadline - now : 1);
        return;
    }
    const struct mx_config *cfg = c->srv->cfg;
    unsigned secs = mx_smtpd_session_in_data(c->sess) ? cfg->smtp_timeout_data
                                                      : cfg->smtp_timeout_command;
    mx_stream_set_timer(c->st, (uint64_t)(secs ? secs : 300) * 1000);
}

static void st_data(struct mx_stream *s, void *ctx, const uint8_t *buf, size_t len)
{
    (void)s;
    struct smtpd_conn *c = ctx;
    if (c->greeting_pending) {
        c->greeting_pending = false;
        if (c->srv->cfg->smtp_pregreet_reject) {
            mx_smtpd_session_pregreet(c->sess);
            return;
        }
        conn_log(c, "pregreet: client talked before the greeting");
        mx_smtpd_session_greet(c->sess);
    }
    MX_STATS_ADD(BYTES_IN, len);
    mx_smtpd_session_input(c->sess, buf, len);
    enum mx_smtpd_state st = mx_smtpd_session_state(c->sess);
    if (st == SMTPD_WAIT_COMMIT || st == SMTPD_WAIT_REPLY)
        mx_stream_pause(c->st, true); /* pipelined input waits in the transport */
    if (st != SMTPD_CLOSED)
        arm_timer(c);
}

static void st_closed(struct mx_stream *s, void *ctx, int res)
{
    (void)s;
    struct smtpd_conn *c = ctx;
    const struct mx_smtpd_counts *k = mx_smtpd_session_counts(c->sess);
    conn_log(c,
             "disconnect from %s%s%s ehlo=%u helo=%u mail=%u rcpt=%u data=%u bdat=%u "
             "starttls=%u quit=%u unknown=%u commands=%u",
             c->peer, res < 0 ? " error=" : "", res < 0 ? strerror(-res) : "", k->ehlo, k->helo,
             k->mail, k->rcpt, k->data, k->bdat, k->starttls, k->quit, k->unknown, k->commands);
    c->stream_gone = true;
    if (c->commit_pending)
        return; /* commit_done() frees us */
    free_conn(c);
}

static void st_timeout(struct mx_stream *s, void *ctx)
{
    (void)s;
    struct smtpd_conn *c = ctx;
    if (c->greeting_pending) {
        c->greeting_pending = false;
        mx_smtpd_session_greet(c->sess);
        arm_timer(c);
        return;
    }
    if (c->av_job && !c->av_done) {
        av_poll(c);
        return;
    }
    if (c->uribl_wait) {
        /* budget spent: what answered counts, the rest is "not listed" */
        c->uribl_wait = false;
        mx_smtp_checks_data_timeout(c->chk); /* answers through checks_answer() */
        if (mx_smtpd_session_state(c->sess) == SMTPD_WAIT_COMMIT && !c->commit_pending &&
            !c->av_job)
            arm_timer(c); /* the logical IP still pending: bounded by the resolver */
        return;
    }
    if (c->commit_pending) {
        arm_timer(c); /* the queue answers; the client is not the slow one */
        return;
    }
    mx_smtpd_session_timeout(c->sess);
}

static void st_shutdown(struct mx_stream *s, void *ctx)
{
    (void)s;
    struct smtpd_conn *c = ctx;
    mx_smtpd_session_shutdown(c->sess);
}

static const struct mx_stream_cb stream_cb = {
    .data = st_data,
    .closed = st_closed,
    .timeout = st_timeout,
    .shutdown = st_shutdown,
};

static void format_peer(const struct sockaddr_storage *ss, char *out, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        port = ntohs(a->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        port = ntohs(a->sin6_port);
    }
    snprintf(out, len, "[%s]:%u", ip, port);
}

/* A late answer of the checks (DNS, callout): the session goes on with held input. */
/* After a late answer (check, AV): unless still waiting, take input again. */
static void resume_input(struct smtpd_conn *c)
{
    enum mx_smtpd_state st = mx_smtpd_session_state(c->sess);
    if (st == SMTPD_CLOSED || st == SMTPD_WAIT_COMMIT || st == SMTPD_WAIT_REPLY)
        return;
    arm_timer(c);
    mx_stream_pause(c->st, false); /* replays what arrived meanwhile */
}

/* The AV job is done (or still running: poll again). Act on its verdict. */
static void av_poll(struct smtpd_conn *c)
{
    enum mx_av_status st = mx_av_job_status(c->av_job);
    if (st == MX_AV_PENDING) {
        mx_stream_set_timer(c->st, AV_POLL_MS);
        return;
    }
    c->av_done = true;
    const char *detail = mx_av_job_detail(c->av_job);
    enum mx_av_action act = st == MX_AV_CLEAN ? MX_AV_ACCEPT : mx_av_job_action(c->srv->av, c->av_job);
    static const char *const names[] = {"", "clean", "infected", "unscannable", "error"};
    static const char *const acts[] = {"deliver", "reject", "quarantine", "tempfail"};
    conn_log(c, "AV: %s%s%s in %lu ms, action %s", names[st], detail[0] ? " " : "", detail,
             (unsigned long)(realtime_ms() - c->av_start_ms), acts[act]);
    if (st == MX_AV_INFECTED)
        MX_STATS_INC(VERDICT_VIRUS);
    if (act == MX_AV_REJECT || act == MX_AV_TEMPFAIL) {
        struct mx_smtpd_reply r = {451, "4.3.0", "Error: virus scan failed, try again later"};
        if (act == MX_AV_REJECT) {
            snprintf(c->reply_text, sizeof c->reply_text, "Message rejected: %s %.150s",
                     st == MX_AV_INFECTED ? "virus found:" : "cannot be scanned:", detail);
            r = (struct mx_smtpd_reply){554, "5.7.1", c->reply_text};
        }
        s_data_abort(c);
        av_drop(c);
        mx_smtpd_session_data_refuse(c->sess, &r);
        resume_input(c);
        return;
    }
    if (act == MX_AV_QUARANTINE)
        snprintf(c->av_quarantine, sizeof c->av_quarantine, "AV %s: %.120s", names[st], detail);
    bool why = st != MX_AV_CLEAN && detail[0];
    snprintf(c->av_header, sizeof c->av_header, "X-Virus-Status: %s%s%.120s%s\r\n",
             st == MX_AV_CLEAN ? "Clean" : st == MX_AV_INFECTED ? "Infected" : "Unscannable",
             why ? " (" : "", why ? detail : "", why ? ")" : "");
    finish_data_end(c, c->msg_size);
    resume_input(c);
}

static void checks_answer(void *ud, const struct mx_smtpd_reply *r)
{
    struct smtpd_conn *c = ud;
    if (mx_smtpd_session_state(c->sess) == SMTPD_WAIT_COMMIT) {
        /* the end-of-data checks (logical IP, URIBL): commit, or refuse the message */
        c->uribl_wait = false;
        if (!r->code) {
            finish_data_end(c, c->msg_size);
        } else {
            s_data_abort(c);
            mx_smtpd_session_data_refuse(c->sess, r);
        }
    } else {
        mx_smtpd_session_reply(c->sess, r);
    }
    resume_input(c);
}

void mx_smtp_server_accept(struct mx_stream *s, void *arg)
{
    struct mx_smtp_server *srv = arg;
    struct smtpd_conn *c = calloc(1, sizeof *c);
    if (!c)
        return; /* not bound: the transport closes it */
    c->srv = srv;
    c->st = s;
    socklen_t plen = s->peer.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                   : sizeof(struct sockaddr_in);
    c->sess = mx_smtpd_session_new(&srv->params, &session_ops, c, (struct sockaddr *)&s->peer, plen);
    if (!c->sess) {
        free(c);
        return;
    }
    /*
     * The session keeps its server (config generation) until free_conn(),
     * whatever reloads happen meanwhile. Relaxed is enough: the reaper looks
     * only after this worker's next quiescent report, which releases it.
     */
    atomic_fetch_add_explicit(&srv->refs, 1, memory_order_relaxed);
    sessions_on_worker++;
    MX_STATS_INC(CONN_OPEN);
    MX_STATS_INC(CONN_TOTAL);
    snprintf(c->sid, sizeof c->sid, "%010lX", (unsigned long)s->id);
    format_peer(&s->peer, c->peer, sizeof c->peer);
    mx_stream_bind(s, &stream_cb, c);
    conn_log(c, "connect from %s", c->peer);
    /* DNS lists on the client start now, so their answers are in by MAIL */
    c->chk = mx_smtp_checks_conn_new(srv->checks, s->worker, (struct sockaddr *)&s->peer, c->sid,
                                     checks_answer, c);
    c->trusted = mx_config_is_trusted(srv->cfg, (struct sockaddr *)&s->peer);
    const char *lim = limits_connect(c, (struct sockaddr *)&s->peer);
    if (lim) {
        char line[300];
        snprintf(line, sizeof line, "421 4.7.0 %s Too many connections from your address, "
                 "try again later\r\n", srv->params.hostname);
        conn_log(c, "reject: client %s limit", lim);
        mx_smtpd_session_reject_and_close(c->sess, line);
        return;
    }
    if (mx_queue_inbound_paused(srv->queue)) {
        char line[300];
        snprintf(line, sizeof line, "421 4.3.2 %s Service not available, maintenance\r\n",
                 srv->params.hostname);
        conn_log(c, "reject: maintenance mode");
        MX_STATS_INC(CONN_REJ_MAINTENANCE);
        mx_smtpd_session_reject_and_close(c->sess, line);
        return;
    }
    if (srv->cfg->smtp_greeting_delay_ms) {
        /* Hold the greeting: a client that talks first is a bot (pregreet). */
        c->greeting_pending = true;
        mx_stream_set_timer(s, srv->cfg->smtp_greeting_delay_ms);
        return;
    }
    mx_smtpd_session_greet(c->sess);
    arm_timer(c);
}

void mx_smtp_server_accept_current(struct mx_stream *s, void *current)
{
    struct mx_smtp_current *cur = current;
    /* RCU read side: the generation stays valid until this worker's next quiescent report */
    mx_smtp_server_accept(s, atomic_load_explicit(&cur->srv, memory_order_acquire));
}

unsigned mx_smtp_server_refs(const struct mx_smtp_server *srv)
{
    return atomic_load_explicit(&srv->refs, memory_order_acquire);
}

unsigned mx_smtp_server_sessions(void)
{
    return sessions_on_worker;
}

/* ---- server ----------------------------------------------------------- */

static SSL_CTX *make_tls(const struct mx_config *cfg)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->smtp_tls_cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, cfg->smtp_tls_key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        char e[256];
        ERR_error_string_n(ERR_get_error(), e, sizeof e);
        fprintf(stderr, "mxgate[smtp]: TLS certificate %s / key %s: %s\n", cfg->smtp_tls_cert,
                cfg->smtp_tls_key, e);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static enum mx_av_action av_action(const char *name)
{
    return strcmp(name, "reject") == 0       ? MX_AV_REJECT
           : strcmp(name, "quarantine") == 0 ? MX_AV_QUARANTINE
           : strcmp(name, "tempfail") == 0   ? MX_AV_TEMPFAIL
                                             : MX_AV_ACCEPT;
}

/*
 * The AV engine of this generation: signatures loaded once, scans on the
 * service threads. If it cannot run, mail is tempfailed, never passed
 * unscanned (on_error is always tempfail).
 */
static int start_av(const struct mx_config *cfg, struct mx_av **out)
{
    struct mx_av_opts o = {
        .db_dir = cfg->scan_clamav_database,
        .on_infected = av_action(cfg->scan_clamav_on_infected),
        .on_unscannable = av_action(cfg->scan_clamav_on_unscannable),
        .on_error = MX_AV_TEMPFAIL,
    };
    char *err = NULL;
    int rc = mx_av_start(&o, out, &err);
    if (rc < 0)
        fprintf(stderr, "mxgate[av]: cannot start: %s\n", err ? err : strerror(-rc));
    else
        fprintf(stderr, "mxgate[av]: signatures loaded from %s\n", cfg->scan_clamav_database);
    free(err);
    return rc;
}

void mx_smtp_scan_opts(const struct mx_config *cfg, struct mx_scan_opts *o)
{
    *o = (struct mx_scan_opts){
        .rule_paths = (const char *const *)cfg->scan_rules,
        .n_rule_paths = cfg->n_scan_rules,
        .threshold = cfg->scan_spam_threshold,
        .archive_max_bytes = (size_t)cfg->scan_archive_max_bytes,
        .archive_max_depth = cfg->scan_archive_max_depth,
        .archive_max_members = cfg->scan_archive_max_members,
        .archive_max_total = cfg->scan_archive_max_total,
        .archive_max_message_total = cfg->scan_archive_max_message_total,
        .archive_max_message_members = cfg->scan_archive_max_message_members,
        .archive_max_message_cpu_ms = cfg->scan_archive_max_message_cpu_ms,
    };
}

int mx_smtp_server_new(const struct mx_config *cfg, struct mx_queue *q, struct mx_smtp_server **out)
{
    struct mx_smtp_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return -ENOMEM;
    srv->cfg = cfg;
    srv->queue = q;
    if (cfg->smtp_tls_cert && *cfg->smtp_tls_cert && cfg->smtp_tls_key && *cfg->smtp_tls_key) {
        srv->tls = make_tls(cfg);
        if (!srv->tls) {
            free(srv);
            return -EINVAL;
        }
    }
    if (cfg->n_scan_rules) {
        char cache[4096];
        snprintf(cache, sizeof cache, "%s/scan-cache", cfg->spool_dir);
        struct mx_scan_opts o;
        mx_smtp_scan_opts(cfg, &o);
        o.cache_dir = cache;
        char *err = NULL;
        int rc = mx_scan_engine_load(&o, &srv->scan, &err);
        if (rc < 0) {
            fprintf(stderr, "mxgate[scan]: cannot load rules: %s\n", err ? err : strerror(-rc));
            free(err);
            SSL_CTX_free(srv->tls);
            free(srv);
            return rc;
        }
        struct mx_scan_stats st;
        mx_scan_engine_stats(srv->scan, &st);
        fprintf(stderr,
                "mxgate[scan]: %u rules: %u regex (%u Hyperscan exact, %u prefilter+PCRE2, "
                "%u PCRE2 only), %u meta, %u eval, %u skipped; %s in %.2f s\n",
                st.rules, st.regex, st.hs_exact, st.hs_prefilter, st.pcre_only, st.meta,
                st.native, st.skipped, st.from_cache ? "loaded from cache" : "compiled",
                st.compile_seconds);
    }
    int crc = mx_smtp_checks_new(cfg, &srv->checks);
    if (crc == 0 && cfg->scan_clamav_enabled)
        crc = start_av(cfg, &srv->av);
    if (crc < 0) {
        mx_smtp_checks_free(srv->checks);
        if (srv->scan)
            mx_scan_engine_free(srv->scan);
        SSL_CTX_free(srv->tls);
        free(srv);
        return crc;
    }
    srv->params = (struct mx_smtpd_params){
        .hostname = cfg->smtp_hostname ? cfg->smtp_hostname : "localhost",
        .max_message_size = cfg->smtp_max_message_size,
        .max_message_total = cfg->smtp_max_message_total,
        .max_recipients = cfg->smtp_max_recipients,
        .max_line_length = cfg->smtp_max_line_length,
        .max_errors = cfg->smtp_max_errors,
        .max_commands = cfg->smtp_max_commands,
        .bare_lf_normalize = cfg->smtp_bare_lf && strcmp(cfg->smtp_bare_lf, "normalize") == 0,
        .tls_ctx = srv->tls,
    };
    *out = srv;
    return 0;
}

void mx_smtp_server_free(struct mx_smtp_server *srv)
{
    if (!srv)
        return;
    SSL_CTX_free(srv->tls);
    mx_smtp_checks_free(srv->checks);
    if (srv->av)
        mx_av_stop(srv->av);
    for (unsigned i = 0; i < SCAN_WORKERS_MAX; i++)
        mx_scan_worker_free(srv->scan_workers[i]);
    if (srv->scan)
        mx_scan_engine_free(srv->scan);
    free(srv);
}
