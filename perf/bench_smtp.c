/*
 * bench_smtp.c - `mxbench smtp`: an SMTP load generator.
 *
 * One thread, one epoll set, N non-blocking connections. Each connection
 * loops over transactions (MAIL, RCPT..., DATA, body) taking the next
 * message number from a shared counter until --messages are started or
 * --duration has passed, then says QUIT. With --pipelining (and PIPELINING
 * offered) MAIL, RCPT and DATA go out in one write.
 *
 * Latency of a message = time from sending the first byte of its MAIL
 * command to receiving the complete final reply after the body.
 *
 * --record FILE gets one line per message whose final reply was 2xx:
 * "<message-id> <reply line>". A message is written there only after the
 * whole 2xx reply line was read, so the file lists exactly the messages the
 * server acknowledged (what a crash test needs).
 *
 * Each sent copy carries a fresh Message-ID (the corpus's own is removed),
 * so a corpus sent many times still gives one unique id per transmission;
 * --keep-message-id sends the corpus bytes unchanged instead.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "perf/bench.h"
#include "perf/corpus.h"

#define MAX_RCPTS 16
#define RBUF_SIZE 8192
#define CMD_SIZE 8192

enum conn_state {
    C_IDLE_WAIT,    /* waiting to (re)connect */
    C_CONNECTING,
    C_GREETING,
    C_EHLO,
    C_STARTTLS,
    C_HANDSHAKE,
    C_EHLO_TLS,
    C_TXN,          /* a transaction is in flight */
    C_RSET,
    C_QUIT,
    C_DONE,
};

/* What the next reply answers, within a transaction. */
enum step { S_MAIL, S_RCPT, S_DATA, S_DOT };

struct opts {
    char host[256];
    char port[16];
    unsigned connections;
    uint64_t messages;
    double duration;
    double timeout;
    bool pipelining, starttls, json, keep_msgid, reconnect;
    const char *corpus;
    const char *record;
    const char *from;
    const char *rcpt[MAX_RCPTS];
    unsigned nrcpt;
    const char *helo;
    size_t corpus_limit;
};

struct conn {
    int fd;
    unsigned id;
    enum conn_state st;
    SSL *ssl;
    bool tls_want_write;
    uint32_t ev_mask;
    uint64_t deadline_ns; /* reply timeout, or reconnect time in C_IDLE_WAIT */
    /* server capabilities from EHLO */
    bool cap_pipelining, cap_starttls, cap_size;
    /* output: up to three segments (commands, Message-ID header, body) */
    struct iovec out[3];
    int out_n, out_i;
    size_t out_off;
    char cmd[CMD_SIZE];
    char hdr[256];
    /* input */
    char rbuf[RBUF_SIZE];
    size_t rlen;
    char last_line[512];
    /* the transaction in flight */
    uint64_t msg_no;
    const struct mx_bench_msg *msg;
    char msgid[200];
    uint64_t t_start;
    unsigned steps_sent;   /* commands sent so far: MAIL=1, RCPTs, DATA */
    unsigned steps_done;   /* replies received */
    unsigned ok_rcpts;
    bool txn_failed;
    int fail_code;
};

struct bench {
    struct opts o;
    struct mx_bench_corpus corpus;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    SSL_CTX *ssl_ctx;
    int ep;
    struct conn *conns;
    FILE *record;
    char runid[32];
    uint64_t t0, t_end_limit;
    uint64_t started, accepted, tempfailed, rejected, lost;
    uint64_t bytes_sent;
    uint64_t codes[600];
    uint64_t err_connect, err_closed, err_timeout, err_protocol, err_tls;
    uint64_t *lat_ns;
    size_t lat_n, lat_cap;
    unsigned active;
};

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    g_interrupted = 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mxbench smtp --target HOST:PORT --corpus PATH [options]\n"
            "  --target HOST:PORT      server (numeric address; [v6]:port)\n"
            "  --connections N         concurrent connections (default 1)\n"
            "  --messages N            messages to send in all (default 100)\n"
            "  --duration S            stop starting messages after S seconds\n"
            "  --corpus PATH           folder of .eml files, Maildir, or mbox file\n"
            "  --corpus-limit N        load at most N messages of the corpus\n"
            "  --pipelining            MAIL/RCPT/DATA in one write when offered\n"
            "  --starttls              STARTTLS before the first transaction\n"
            "  --from ADDR             reverse-path (default bench@mxbench.test)\n"
            "  --rcpt ADDR             recipient, repeatable (default user@example.test)\n"
            "  --helo NAME             EHLO name (default mxbench.test)\n"
            "  --timeout S             per-reply timeout (default 60)\n"
            "  --reconnect             reconnect after a dropped connection\n"
            "  --record FILE           one line per 2xx-acknowledged message:\n"
            "                          \"<message-id> <final reply line>\"\n"
            "  --keep-message-id       send the corpus Message-IDs unchanged\n"
            "  --json                  print the result as JSON\n");
}

static int parse_target(struct bench *b, const char *t)
{
    const char *colon;
    size_t hl;
    if (t[0] == '[') {
        const char *rb = strchr(t, ']');
        if (!rb || rb[1] != ':')
            return -EINVAL;
        hl = (size_t)(rb - t - 1);
        if (hl >= sizeof(b->o.host))
            return -EINVAL;
        memcpy(b->o.host, t + 1, hl);
        colon = rb + 1;
    } else {
        colon = strrchr(t, ':');
        if (!colon)
            return -EINVAL;
        hl = (size_t)(colon - t);
        if (hl >= sizeof(b->o.host))
            return -EINVAL;
        memcpy(b->o.host, t, hl);
    }
    b->o.host[hl] = '\0';
    snprintf(b->o.port, sizeof(b->o.port), "%s", colon + 1);
    /* Never ask the resolver: numeric addresses only ("localhost" mapped). */
    if (strcmp(b->o.host, "localhost") == 0)
        strcpy(b->o.host, "127.0.0.1");
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *ai;
    if (getaddrinfo(b->o.host, b->o.port, &hints, &ai) != 0)
        return -EINVAL;
    memcpy(&b->addr, ai->ai_addr, ai->ai_addrlen);
    b->addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

/* ---- output ---------------------------------------------------------- */

static void set_events(struct bench *b, struct conn *c)
{
    if (c->fd < 0)
        return;
    uint32_t m = EPOLLIN;
    if (c->st == C_CONNECTING || c->out_i < c->out_n || c->tls_want_write)
        m |= EPOLLOUT;
    if (m == c->ev_mask)
        return;
    struct epoll_event ev = {.events = m, .data.ptr = c};
    epoll_ctl(b->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->ev_mask = m;
}

static void out_add(struct conn *c, const void *p, size_t n)
{
    if (n == 0)
        return;
    c->out[c->out_n].iov_base = (void *)p;
    c->out[c->out_n].iov_len = n;
    c->out_n++;
}

/* Flush what we can. 0 = done or would block; -1 = connection broken. */
static int out_flush(struct bench *b, struct conn *c)
{
    c->tls_want_write = false;
    while (c->out_i < c->out_n) {
        struct iovec *v = &c->out[c->out_i];
        char *p = (char *)v->iov_base + c->out_off;
        size_t left = v->iov_len - c->out_off;
        ssize_t w;
        if (c->ssl) {
            int r = SSL_write(c->ssl, p, left > INT32_MAX ? INT32_MAX : (int)left);
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_WRITE) {
                    c->tls_want_write = true;
                    return 0;
                }
                if (e == SSL_ERROR_WANT_READ)
                    return 0;
                b->err_tls++;
                return -1;
            }
            w = r;
        } else {
            struct iovec iov[3];
            int k = 0;
            iov[k].iov_base = p;
            iov[k++].iov_len = left;
            for (int i = c->out_i + 1; i < c->out_n; i++)
                iov[k++] = c->out[i];
            w = writev(c->fd, iov, k);
            if (w < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    return 0;
                return -1;
            }
        }
        size_t ww = (size_t)w;
        while (ww > 0 && c->out_i < c->out_n) {
            size_t l = c->out[c->out_i].iov_len - c->out_off;
            if (ww >= l) {
                ww -= l;
                c->out_i++;
                c->out_off = 0;
            } else {
                c->out_off += ww;
                ww = 0;
            }
        }
    }
    c->out_n = c->out_i = 0;
    c->out_off = 0;
    return 0;
}

static void send_cmd(struct bench *b, struct conn *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Append one command line to the command segment and queue it. */
static void send_cmd(struct bench *b, struct conn *c, const char *fmt, ...)
{
    (void)b;
    size_t used = 0;
    if (c->out_n > 0 && c->out[c->out_n - 1].iov_base == c->cmd) {
        used = c->out[c->out_n - 1].iov_len;
        c->out_n--;
    } else if (c->out_n > 0) {
        /* the command buffer is only reused once earlier output has gone */
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->cmd + used, sizeof(c->cmd) - used, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(c->cmd) - used)
        n = 0;
    out_add(c, c->cmd, used + (size_t)n);
}

/* ---- connection life --------------------------------------------------- */

static void conn_close(struct bench *b, struct conn *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        epoll_ctl(b->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    c->out_n = c->out_i = 0;
    c->out_off = 0;
    c->rlen = 0;
    c->ev_mask = 0;
    c->tls_want_write = false;
}

static bool may_start_message(struct bench *b)
{
    if (g_interrupted)
        return false;
    if (b->started >= b->o.messages)
        return false;
    if (b->t_end_limit && now_ns() >= b->t_end_limit)
        return false;
    return true;
}

static void conn_finish(struct bench *b, struct conn *c)
{
    conn_close(b, c);
    if (c->st != C_DONE) {
        c->st = C_DONE;
        b->active--;
    }
}

/* The connection broke (closed, timeout, error): count and maybe retry. */
static void conn_broken(struct bench *b, struct conn *c, uint64_t *counter)
{
    if (c->st == C_QUIT) {
        /* the server closed after (or instead of) 221: the run was done */
        conn_finish(b, c);
        return;
    }
    if (counter)
        (*counter)++;
    if (c->st == C_TXN && c->msg) {
        b->lost++; /* started, never acknowledged */
        c->msg = NULL;
    }
    conn_close(b, c);
    if (b->o.reconnect && may_start_message(b)) {
        c->st = C_IDLE_WAIT;
        c->deadline_ns = now_ns() + 100000000ull;
    } else {
        c->st = C_DONE;
        b->active--;
    }
}

static int conn_start(struct bench *b, struct conn *c)
{
    c->fd = socket(b->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -errno;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->st = C_CONNECTING;
    c->cap_pipelining = c->cap_starttls = c->cap_size = false;
    c->deadline_ns = now_ns() + (uint64_t)(b->o.timeout * 1e9);
    int rc = connect(c->fd, (struct sockaddr *)&b->addr, b->addrlen);
    if (rc < 0 && errno != EINPROGRESS) {
        rc = -errno;
        close(c->fd);
        c->fd = -1;
        return rc;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(b->ep, EPOLL_CTL_ADD, c->fd, &ev);
    c->ev_mask = ev.events;
    return 0;
}

/* ---- transactions ------------------------------------------------------- */

static void begin_quit(struct bench *b, struct conn *c)
{
    c->st = C_QUIT;
    send_cmd(b, c, "QUIT\r\n");
}

/* Queue the next command(s) of the transaction. */
static void txn_send_next(struct bench *b, struct conn *c)
{
    unsigned total = 2 + b->o.nrcpt; /* MAIL, RCPTs, DATA */
    bool pipe = b->o.pipelining && c->cap_pipelining;
    do {
        unsigned s = c->steps_sent;
        if (s >= total)
            return;
        if (s == 0) {
            if (c->cap_size)
                send_cmd(b, c, "MAIL FROM:<%s> SIZE=%zu\r\n", b->o.from, c->msg->raw_len);
            else
                send_cmd(b, c, "MAIL FROM:<%s>\r\n", b->o.from);
        } else if (s <= b->o.nrcpt) {
            send_cmd(b, c, "RCPT TO:<%s>\r\n", b->o.rcpt[s - 1]);
        } else {
            send_cmd(b, c, "DATA\r\n");
        }
        c->steps_sent++;
    } while (pipe);
}

static void next_txn(struct bench *b, struct conn *c)
{
    if (!may_start_message(b)) {
        begin_quit(b, c);
        return;
    }
    c->msg_no = b->started++;
    c->msg = &b->corpus.msgs[c->msg_no % b->corpus.n];
    if (b->o.keep_msgid) {
        snprintf(c->msgid, sizeof(c->msgid), "%s",
                 c->msg->message_id ? c->msg->message_id : "-");
        c->hdr[0] = '\0';
    } else {
        snprintf(c->msgid, sizeof(c->msgid), "<mxb.%s.%llu@mxbench.test>", b->runid,
                 (unsigned long long)c->msg_no);
        snprintf(c->hdr, sizeof(c->hdr), "Message-ID: %s\r\n", c->msgid);
    }
    c->steps_sent = c->steps_done = 0;
    c->ok_rcpts = 0;
    c->txn_failed = false;
    c->fail_code = 0;
    c->st = C_TXN;
    c->t_start = now_ns();
    txn_send_next(b, c);
}

static void lat_add(struct bench *b, uint64_t ns)
{
    if (b->lat_n == b->lat_cap) {
        size_t nc = b->lat_cap ? b->lat_cap * 2 : 4096;
        uint64_t *j = realloc(b->lat_ns, nc * sizeof(*j));
        if (!j)
            return;
        b->lat_ns = j;
        b->lat_cap = nc;
    }
    b->lat_ns[b->lat_n++] = ns;
}

/* The message's fate is decided by reply code `code`. */
static void txn_done(struct bench *b, struct conn *c, int code, bool final_reply)
{
    b->codes[code]++;
    if (final_reply)
        lat_add(b, now_ns() - c->t_start);
    if (code >= 200 && code < 300) {
        b->accepted++;
        b->bytes_sent += c->msg->wire_len;
        if (b->record) {
            fprintf(b->record, "%s %s\n", c->msgid, c->last_line);
            fflush(b->record);
        }
    } else if (code >= 400 && code < 500) {
        b->tempfailed++;
    } else {
        b->rejected++;
    }
    c->msg = NULL;
}

/* One complete reply (code, last line in c->last_line) in state C_TXN. */
static void txn_reply(struct bench *b, struct conn *c, int code)
{
    unsigned step_no = c->steps_done++;
    unsigned total = 2 + b->o.nrcpt;
    enum step s = step_no == 0 ? S_MAIL : step_no <= b->o.nrcpt ? S_RCPT : step_no == total - 1 ? S_DATA : S_DOT;
    bool ok = code >= 200 && code < 300;
    switch (s) {
    case S_MAIL:
        if (!ok) {
            c->txn_failed = true;
            c->fail_code = code;
        }
        break;
    case S_RCPT:
        if (ok)
            c->ok_rcpts++;
        else if (!c->fail_code)
            c->fail_code = code;
        break;
    case S_DATA:
        if (code == 354 && !c->txn_failed && c->ok_rcpts > 0) {
            out_add(c, c->hdr, strlen(c->hdr));
            out_add(c, c->msg->wire, c->msg->wire_len);
            return;
        }
        if (code == 354) {
            /* accepted DATA with no valid recipient: end it with an empty body */
            send_cmd(b, c, ".\r\n");
            c->txn_failed = true;
            return;
        }
        txn_done(b, c, c->fail_code ? c->fail_code : code, false);
        c->st = C_RSET;
        send_cmd(b, c, "RSET\r\n");
        return;
    case S_DOT:
        if (c->txn_failed) {
            txn_done(b, c, c->fail_code ? c->fail_code : 554, false);
            c->st = C_RSET;
            send_cmd(b, c, "RSET\r\n");
            return;
        }
        txn_done(b, c, code, true);
        next_txn(b, c);
        return;
    }
    /* Without pipelining, stop early when the transaction cannot succeed. */
    bool pipe = b->o.pipelining && c->cap_pipelining;
    if (!pipe) {
        bool rcpts_over = c->steps_done == 1 + b->o.nrcpt;
        if (c->txn_failed || (rcpts_over && c->ok_rcpts == 0)) {
            txn_done(b, c, c->fail_code ? c->fail_code : code, false);
            c->st = C_RSET;
            send_cmd(b, c, "RSET\r\n");
            return;
        }
        txn_send_next(b, c);
    }
}

static void after_ehlo(struct bench *b, struct conn *c)
{
    if (b->o.starttls && !c->ssl) {
        if (!c->cap_starttls) {
            fprintf(stderr, "mxbench: server does not offer STARTTLS\n");
            b->err_tls++;
            begin_quit(b, c);
            return;
        }
        c->st = C_STARTTLS;
        send_cmd(b, c, "STARTTLS\r\n");
        return;
    }
    next_txn(b, c);
}

static void ehlo_line(struct conn *c, const char *kw)
{
    if (strncasecmp(kw, "PIPELINING", 10) == 0)
        c->cap_pipelining = true;
    else if (strncasecmp(kw, "STARTTLS", 8) == 0)
        c->cap_starttls = true;
    else if (strncasecmp(kw, "SIZE", 4) == 0)
        c->cap_size = true;
}

static int tls_handshake(struct bench *b, struct conn *c)
{
    int r = SSL_connect(c->ssl);
    if (r == 1) {
        c->st = C_EHLO_TLS;
        c->cap_pipelining = c->cap_starttls = c->cap_size = false;
        send_cmd(b, c, "EHLO %s\r\n", b->o.helo);
        return 0;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        return 0;
    if (e == SSL_ERROR_WANT_WRITE) {
        c->tls_want_write = true;
        return 0;
    }
    b->err_tls++;
    return -1;
}

/* A complete reply has arrived. Returns -1 to drop the connection. */
static int on_reply(struct bench *b, struct conn *c, int code)
{
    c->deadline_ns = now_ns() + (uint64_t)(b->o.timeout * 1e9);
    switch (c->st) {
    case C_GREETING:
        if (code != 220) {
            b->codes[code]++;
            begin_quit(b, c);
            return 0;
        }
        c->st = C_EHLO;
        send_cmd(b, c, "EHLO %s\r\n", b->o.helo);
        return 0;
    case C_EHLO:
    case C_EHLO_TLS:
        if (code != 250) {
            b->err_protocol++;
            begin_quit(b, c);
            return 0;
        }
        after_ehlo(b, c);
        return 0;
    case C_STARTTLS:
        if (code != 220) {
            b->err_tls++;
            begin_quit(b, c);
            return 0;
        }
        c->ssl = SSL_new(b->ssl_ctx);
        if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
            b->err_tls++;
            return -2;
        }
        SSL_set_tlsext_host_name(c->ssl, b->o.host);
        c->st = C_HANDSHAKE;
        return tls_handshake(b, c) < 0 ? -2 : 0;
    case C_TXN:
        txn_reply(b, c, code);
        return 0;
    case C_RSET:
        next_txn(b, c);
        return 0;
    case C_QUIT:
        conn_finish(b, c);
        return 1;
    default:
        b->err_protocol++;
        return -1;
    }
}

/*
 * Parse complete reply lines out of rbuf. Multi-line replies ("250-...")
 * end with the line whose fourth byte is a space (or that has only the
 * code). Returns -2 on a protocol error (counted), -1 if the connection
 * must be dropped, 1 if it was finished.
 */
static int parse_replies(struct bench *b, struct conn *c)
{
    size_t pos = 0;
    int rc = 0;
    while (rc == 0) {
        char *nl = memchr(c->rbuf + pos, '\n', c->rlen - pos);
        if (!nl)
            break;
        char *line = c->rbuf + pos;
        size_t n = (size_t)(nl - line);
        pos += n + 1;
        if (n > 0 && line[n - 1] == '\r')
            n--;
        if (n < 3 || line[0] < '1' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
            line[2] < '0' || line[2] > '9') {
            b->err_protocol++;
            return -2;
        }
        int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
        bool more = n > 3 && line[3] == '-';
        if ((c->st == C_EHLO || c->st == C_EHLO_TLS) && n > 4) {
            char kw[64];
            size_t kl = n - 4 < sizeof(kw) - 1 ? n - 4 : sizeof(kw) - 1;
            memcpy(kw, line + 4, kl);
            kw[kl] = '\0';
            ehlo_line(c, kw);
        }
        if (more)
            continue;
        size_t ll = n < sizeof(c->last_line) - 1 ? n : sizeof(c->last_line) - 1;
        memcpy(c->last_line, line, ll);
        c->last_line[ll] = '\0';
        rc = on_reply(b, c, code);
        if (c->st == C_HANDSHAKE || c->fd < 0)
            break; /* bytes after STARTTLS's 220 belong to TLS; none expected */
    }
    if (c->fd >= 0 && pos > 0) {
        memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
        c->rlen -= pos;
    }
    if (rc == 0 && c->rlen == sizeof(c->rbuf)) {
        b->err_protocol++; /* a line longer than the buffer */
        return -2;
    }
    return rc;
}

/* Read what is there. 0 ok, -1 closed/broken. */
static int conn_read(struct bench *b, struct conn *c)
{
    for (;;) {
        size_t room = sizeof(c->rbuf) - c->rlen;
        if (room == 0)
            return 0;
        ssize_t r;
        if (c->ssl) {
            int k = SSL_read(c->ssl, c->rbuf + c->rlen, (int)room);
            if (k <= 0) {
                int e = SSL_get_error(c->ssl, k);
                if (e == SSL_ERROR_WANT_READ)
                    return 0;
                if (e == SSL_ERROR_WANT_WRITE) {
                    c->tls_want_write = true;
                    return 0;
                }
                return -1;
            }
            r = k;
        } else {
            r = read(c->fd, c->rbuf + c->rlen, room);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                return 0;
            if (r <= 0)
                return -1;
        }
        c->rlen += (size_t)r;
        int pr = parse_replies(b, c);
        if (pr != 0)
            return pr;
        if (c->st == C_HANDSHAKE)
            return 0;
    }
}

static void conn_event(struct bench *b, struct conn *c, uint32_t ev)
{
    if (c->st == C_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err != 0) {
            conn_broken(b, c, &b->err_connect);
            return;
        }
        if (!(ev & (EPOLLOUT | EPOLLIN)))
            return;
        c->st = C_GREETING;
    }
    if (c->st == C_HANDSHAKE) {
        c->tls_want_write = false;
        if (tls_handshake(b, c) < 0) {
            conn_broken(b, c, NULL); /* counted in tls_handshake() */
            return;
        }
        if (c->st == C_HANDSHAKE) {
            set_events(b, c);
            return;
        }
    }
    if (out_flush(b, c) < 0) {
        conn_broken(b, c, &b->err_closed);
        return;
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        int r = conn_read(b, c);
        if (r == 1 || c->st == C_DONE)
            return;
        if (r < 0) {
            /* -2: a protocol error, already counted */
            conn_broken(b, c, r == -2 ? NULL : &b->err_closed);
            return;
        }
    }
    if (c->fd >= 0 && out_flush(b, c) < 0) {
        conn_broken(b, c, &b->err_closed);
        return;
    }
    set_events(b, c);
}

/* ---- results -------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(const struct bench *b, double q)
{
    if (b->lat_n == 0)
        return 0;
    size_t i = (size_t)(q * (double)(b->lat_n - 1) + 0.5);
    return (double)b->lat_ns[i] / 1e6;
}

static void report(struct bench *b, double elapsed)
{
    qsort(b->lat_ns, b->lat_n, sizeof(*b->lat_ns), cmp_u64);
    double rate = elapsed > 0 ? (double)b->accepted / elapsed : 0;
    double mbs = elapsed > 0 ? (double)b->bytes_sent / elapsed / 1e6 : 0;
    double mx = b->lat_n ? (double)b->lat_ns[b->lat_n - 1] / 1e6 : 0;
    uint64_t errors = b->err_connect + b->err_closed + b->err_timeout + b->err_protocol +
                      b->err_tls;
    if (b->o.json) {
        printf("{\"target\":\"%s:%s\",\"connections\":%u,\"pipelining\":%s,\"starttls\":%s,"
               "\"corpus_messages\":%zu,\"started\":%llu,\"accepted\":%llu,"
               "\"tempfailed\":%llu,\"rejected\":%llu,\"lost\":%llu,\"bytes\":%llu,"
               "\"elapsed_s\":%.6f,\"messages_per_s\":%.3f,\"mb_per_s\":%.3f,"
               "\"latency_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
               "\"reply_codes\":{",
               b->o.host, b->o.port, b->o.connections, b->o.pipelining ? "true" : "false",
               b->o.starttls ? "true" : "false", b->corpus.n, (unsigned long long)b->started,
               (unsigned long long)b->accepted, (unsigned long long)b->tempfailed,
               (unsigned long long)b->rejected, (unsigned long long)b->lost,
               (unsigned long long)b->bytes_sent, elapsed, rate, mbs, pct_ms(b, 0.5),
               pct_ms(b, 0.9), pct_ms(b, 0.99), mx);
        const char *sep = "";
        for (int i = 100; i < 600; i++)
            if (b->codes[i]) {
                printf("%s\"%d\":%llu", sep, i, (unsigned long long)b->codes[i]);
                sep = ",";
            }
        printf("},\"errors\":{\"total\":%llu,\"connect\":%llu,\"closed\":%llu,"
               "\"timeout\":%llu,\"protocol\":%llu,\"tls\":%llu}}\n",
               (unsigned long long)errors, (unsigned long long)b->err_connect,
               (unsigned long long)b->err_closed, (unsigned long long)b->err_timeout,
               (unsigned long long)b->err_protocol, (unsigned long long)b->err_tls);
        return;
    }
    printf("mxbench smtp: %s:%s, %u connection(s), pipelining %s, starttls %s, corpus %zu "
           "message(s)\n",
           b->o.host, b->o.port, b->o.connections, b->o.pipelining ? "on" : "off",
           b->o.starttls ? "on" : "off", b->corpus.n);
    printf("messages  started %llu  accepted %llu  tempfailed %llu  rejected %llu  lost %llu\n",
           (unsigned long long)b->started, (unsigned long long)b->accepted,
           (unsigned long long)b->tempfailed, (unsigned long long)b->rejected,
           (unsigned long long)b->lost);
    printf("elapsed   %.3f s   %.1f msg/s   %.2f MB/s\n", elapsed, rate, mbs);
    printf("latency   p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms\n", pct_ms(b, 0.5),
           pct_ms(b, 0.9), pct_ms(b, 0.99), mx);
    printf("replies  ");
    for (int i = 100; i < 600; i++)
        if (b->codes[i])
            printf(" %d=%llu", i, (unsigned long long)b->codes[i]);
    printf("\nerrors    %llu (connect %llu, closed %llu, timeout %llu, protocol %llu, tls %llu)\n",
           (unsigned long long)errors, (unsigned long long)b->err_connect,
           (unsigned long long)b->err_closed, (unsigned long long)b->err_timeout,
           (unsigned long long)b->err_protocol, (unsigned long long)b->err_tls);
}

/* ---- main ---------------------------------------------------------------- */

static int run(struct bench *b)
{
    b->ep = epoll_create1(EPOLL_CLOEXEC);
    if (b->ep < 0)
        return -errno;
    b->conns = calloc(b->o.connections, sizeof(*b->conns));
    if (!b->conns)
        return -ENOMEM;
    b->t0 = now_ns();
    if (b->o.duration > 0)
        b->t_end_limit = b->t0 + (uint64_t)(b->o.duration * 1e9);
    b->active = b->o.connections;
    for (unsigned i = 0; i < b->o.connections; i++) {
        struct conn *c = &b->conns[i];
        c->id = i;
        c->fd = -1;
        if (conn_start(b, c) < 0)
            conn_broken(b, c, &b->err_connect);
    }
    struct epoll_event evs[256];
    uint64_t last_scan = 0;
    while (b->active > 0) {
        int n = epoll_wait(b->ep, evs, 256, 50);
        if (n < 0 && errno != EINTR)
            return -errno;
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->fd >= 0)
                conn_event(b, c, evs[i].events);
        }
        uint64_t t = now_ns();
        if (t - last_scan < 10000000ull && !g_interrupted)
            continue; /* timers need no finer grain than 10 ms */
        last_scan = t;
        /* A hard stop: --duration plus one reply timeout. */
        bool hard = b->t_end_limit && t > b->t_end_limit + (uint64_t)(b->o.timeout * 1e9);
        for (unsigned i = 0; i < b->o.connections; i++) {
            struct conn *c = &b->conns[i];
            if (c->st == C_DONE)
                continue;
            if (c->st == C_IDLE_WAIT) {
                if (!may_start_message(b)) {
                    c->st = C_DONE;
                    b->active--;
                } else if (t >= c->deadline_ns && conn_start(b, c) < 0) {
                    conn_broken(b, c, &b->err_connect);
                }
                continue;
            }
            if (t > c->deadline_ns || hard || (g_interrupted && c->st != C_QUIT)) {
                if (c->st == C_QUIT)
                    conn_finish(b, c);
                else
                    conn_broken(b, c, &b->err_timeout);
                if (c->st == C_IDLE_WAIT && (hard || g_interrupted)) {
                    c->st = C_DONE;
                    b->active--;
                }
            }
        }
    }
    return 0;
}

int mx_bench_smtp_main(int argc, char **argv)
{
    static struct bench bench;
    struct bench *b = &bench;
    memset(b, 0, sizeof(*b));
    b->o.connections = 1;
    b->o.messages = 100;
    b->o.timeout = 60;
    b->o.from = "bench@mxbench.test";
    b->o.helo = "mxbench.test";
    const char *target = NULL;
    enum { O_TARGET = 256, O_CONN, O_MSGS, O_DUR, O_CORPUS, O_PIPE, O_TLS, O_JSON, O_RECORD,
           O_FROM, O_RCPT, O_HELO, O_TIMEOUT, O_RECONNECT, O_KEEP, O_LIMIT, O_HELP };
    static const struct option lo[] = {
        {"target", required_argument, 0, O_TARGET},
        {"connections", required_argument, 0, O_CONN},
        {"messages", required_argument, 0, O_MSGS},
        {"duration", required_argument, 0, O_DUR},
        {"corpus", required_argument, 0, O_CORPUS},
        {"corpus-limit", required_argument, 0, O_LIMIT},
        {"pipelining", no_argument, 0, O_PIPE},
        {"starttls", no_argument, 0, O_TLS},
        {"json", no_argument, 0, O_JSON},
        {"record", required_argument, 0, O_RECORD},
        {"from", required_argument, 0, O_FROM},
        {"rcpt", required_argument, 0, O_RCPT},
        {"helo", required_argument, 0, O_HELO},
        {"timeout", required_argument, 0, O_TIMEOUT},
        {"reconnect", no_argument, 0, O_RECONNECT},
        {"keep-message-id", no_argument, 0, O_KEEP},
        {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0},
    };
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case O_TARGET: target = optarg; break;
        case O_CONN: b->o.connections = (unsigned)strtoul(optarg, NULL, 10); break;
        case O_MSGS: b->o.messages = strtoull(optarg, NULL, 10); break;
        case O_DUR: b->o.duration = strtod(optarg, NULL); break;
        case O_CORPUS: b->o.corpus = optarg; break;
        case O_LIMIT: b->o.corpus_limit = strtoul(optarg, NULL, 10); break;
        case O_PIPE: b->o.pipelining = true; break;
        case O_TLS: b->o.starttls = true; break;
        case O_JSON: b->o.json = true; break;
        case O_RECORD: b->o.record = optarg; break;
        case O_FROM: b->o.from = optarg; break;
        case O_RCPT:
            if (b->o.nrcpt == MAX_RCPTS) {
                fprintf(stderr, "mxbench: at most %d --rcpt\n", MAX_RCPTS);
                return 2;
            }
            b->o.rcpt[b->o.nrcpt++] = optarg;
            break;
        case O_HELO: b->o.helo = optarg; break;
        case O_TIMEOUT: b->o.timeout = strtod(optarg, NULL); break;
        case O_RECONNECT: b->o.reconnect = true; break;
        case O_KEEP: b->o.keep_msgid = true; break;
        case O_HELP: usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!target || !b->o.corpus || b->o.connections == 0 || b->o.connections > 100000 ||
        b->o.timeout <= 0) {
        usage(stderr);
        return 2;
    }
    if (b->o.nrcpt == 0)
        b->o.rcpt[b->o.nrcpt++] = "user@example.test";
    if (parse_target(b, target) < 0) {
        fprintf(stderr, "mxbench: bad --target %s (numeric HOST:PORT)\n", target);
        return 2;
    }
    int rc = mx_bench_corpus_load(b->o.corpus, !b->o.keep_msgid, b->o.corpus_limit, &b->corpus);
    if (rc < 0) {
        fprintf(stderr, "mxbench: corpus %s: %s\n", b->o.corpus, strerror(-rc));
        return 1;
    }
    if (b->o.record) {
        b->record = fopen(b->o.record, "w");
        if (!b->record) {
            fprintf(stderr, "mxbench: %s: %s\n", b->o.record, strerror(errno));
            return 1;
        }
    }
    if (b->o.starttls) {
        b->ssl_ctx = SSL_CTX_new(TLS_client_method());
        if (!b->ssl_ctx)
            return 1;
        /* A load generator talks to test servers with self-signed keys. */
        SSL_CTX_set_verify(b->ssl_ctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_mode(b->ssl_ctx,
                         SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
    snprintf(b->runid, sizeof(b->runid), "%llx%x",
             (unsigned long long)time(NULL), (unsigned)getpid());
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_sigint);
    signal(SIGTERM, on_sigint);
    rc = run(b);
    double elapsed = (double)(now_ns() - b->t0) / 1e9;
    if (rc < 0) {
        fprintf(stderr, "mxbench: %s\n", strerror(-rc));
        return 1;
    }
    report(b, elapsed);
    if (b->record)
        fclose(b->record);
    for (unsigned i = 0; i < b->o.connections; i++)
        conn_close(b, &b->conns[i]);
    free(b->conns);
    free(b->lat_ns);
    close(b->ep);
    if (b->ssl_ctx)
        SSL_CTX_free(b->ssl_ctx);
    mx_bench_corpus_free(&b->corpus);
    return 0;
}
