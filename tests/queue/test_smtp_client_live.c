/*
 * test_smtp_client_live.c - the SMTP client (smtp/client.c) over real TCP on
 * loopback against real servers: Debian's Python aiosmtpd (through
 * tests/queue/smtp_peer.py, which writes what it received to a folder) and
 * Postfix's smtp-sink (PIPELINING, dump files). A tiny blocking-socket
 * harness moves the bytes, since the client does no I/O itself.
 *
 * argv[1]: path of smtp_peer.py. Tests whose peer program is missing skip.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "queue/queue.h"
#include "smtp/smtp.h"

static const char *peer_script;
static const char *postfix_script;

/* ---- peers ------------------------------------------------------------ */

struct peer {
    pid_t pid;
    int stdin_fd; /* closing it stops smtp_peer.py */
    unsigned port;
    char dir[128];
};

static void make_dir(struct peer *p)
{
    snprintf(p->dir, sizeof p->dir, "/tmp/mx-live-XXXXXX");
    assert_non_null(mkdtemp(p->dir));
    chmod(p->dir, 0777); /* smtp-sink drops to nobody */
}

/** Start a Python peer script with extra args; wait (bounded) for its "PORT n" line. */
static int peer_start_script(struct peer *p, const char *script, const char *const *extra)
{
    if (access("/usr/bin/python3", X_OK) != 0 || !script)
        return -1;
    make_dir(p);
    int in[2], out[2];
    assert_int_equal(pipe(in), 0);
    assert_int_equal(pipe(out), 0);
    p->pid = fork();
    assert_true(p->pid >= 0);
    if (p->pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[1]);
        close(out[0]);
        const char *argv[16] = {"/usr/bin/python3", script, p->dir};
        size_t n = 3;
        for (; extra && *extra && n < 15; extra++)
            argv[n++] = *extra;
        argv[n] = NULL;
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    p->stdin_fd = in[1];
    char buf[64] = "";
    size_t got = 0;
    struct pollfd pfd = {.fd = out[0], .events = POLLIN};
    while (got < sizeof buf - 1 && !memchr(buf, '\n', got) && poll(&pfd, 1, 60000) == 1) {
        ssize_t r = read(out[0], buf + got, sizeof buf - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
        buf[got] = 0;
    }
    close(out[0]);
    if (sscanf(buf, "PORT %u", &p->port) != 1)
        return -1;
    return 0;
}

static int peer_start_py(struct peer *p, const char *const *extra)
{
    return peer_start_script(p, peer_script, extra);
}

static unsigned free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof sin;
    bind(s, (struct sockaddr *)&sin, sizeof sin);
    getsockname(s, (struct sockaddr *)&sin, &l);
    close(s);
    return ntohs(sin.sin_port);
}

/** Start smtp-sink dumping each message into p->dir. */
static int peer_start_sink(struct peer *p)
{
    const char *sink = "/usr/sbin/smtp-sink";
    if (access(sink, X_OK) != 0)
        return -1;
    make_dir(p);
    p->port = free_port();
    p->stdin_fd = -1;
    char listen[64], tmpl[200];
    snprintf(listen, sizeof listen, "127.0.0.1:%u", p->port);
    snprintf(tmpl, sizeof tmpl, "%s/m.", p->dir);
    p->pid = fork();
    assert_true(p->pid >= 0);
    if (p->pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 1);
        dup2(devnull, 2);
        if (geteuid() == 0)
            execl(sink, sink, "-u", "nobody", "-d", tmpl, listen, "100", (char *)NULL);
        else
            execl(sink, sink, "-d", tmpl, listen, "100", (char *)NULL);
        _exit(127);
    }
    return 0;
}

static void peer_stop(struct peer *p)
{
    if (p->stdin_fd >= 0)
        close(p->stdin_fd);
    /* Up to 30 s to leave on its own (postfix_peer.py stops a Postfix instance). */
    for (int i = 0; i < 600; i++) {
        if (waitpid(p->pid, NULL, WNOHANG) == p->pid)
            goto clean;
        if (i == 10 && p->stdin_fd < 0)
            kill(p->pid, SIGTERM);
        usleep(50000);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
clean:;
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", p->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", p->dir);
}

static int tcp_connect(unsigned port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < 100; i++) { /* smtp-sink may still be starting */
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sin, sizeof sin) == 0)
            return fd;
        close(fd);
        usleep(50000);
    }
    fail_msg("cannot connect to 127.0.0.1:%u", port);
    return -1;
}

/* ---- the blocking harness -------------------------------------------- */

/** Move bytes until the client leaves BUSY (bounded by 30 s of silence). */
static enum mx_smtp_client_state drive(int fd, struct mx_smtp_client *c)
{
    for (int guard = 0; guard < 1000000; guard++) {
        size_t n;
        const uint8_t *p = mx_smtp_client_output(c, &n);
        while (n) {
            ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
            if (w <= 0) {
                mx_smtp_client_eof(c, -errno);
                return mx_smtp_client_state(c);
            }
            mx_smtp_client_output_done(c, (size_t)w);
            p = mx_smtp_client_output(c, &n);
        }
        enum mx_smtp_client_state st = mx_smtp_client_state(c);
        if (st != MX_SMTPC_BUSY)
            return st;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 30000) != 1) {
            mx_smtp_client_timeout(c);
            continue;
        }
        uint8_t buf[8192];
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r <= 0)
            mx_smtp_client_eof(c, r < 0 ? -errno : 0);
        else
            mx_smtp_client_input(c, buf, (size_t)r);
    }
    fail_msg("session does not end");
    return MX_SMTPC_CLOSED;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *d = malloc((size_t)n + 1);
    assert_int_equal(fread(d, 1, (size_t)n, f), (size_t)n);
    d[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return d;
}

/** Wait (bounded) for a file the peer writes. */
static char *wait_file(const char *path, size_t *len)
{
    for (int i = 0; i < 100; i++) {
        char *d = read_file(path, len);
        if (d)
            return d;
        usleep(50000);
    }
    fail_msg("no %s", path);
    return NULL;
}

/* ---- messages --------------------------------------------------------- */

struct env3 {
    struct mx_envelope env;
    struct mx_rcpt rcpts[3];
    size_t idx[3];
};

static void env3_init(struct env3 *e, const char *from, const char *r0, const char *r1,
                      const char *r2)
{
    memset(e, 0, sizeof *e);
    snprintf(e->env.mail_from, sizeof e->env.mail_from, "%s", from);
    const char *r[3] = {r0, r1, r2};
    for (size_t i = 0; i < 3; i++) {
        snprintf(e->rcpts[i].addr, sizeof e->rcpts[i].addr, "%s", r[i] ? r[i] : "");
        e->idx[i] = i;
    }
    e->env.rcpts = e->rcpts;
    e->env.n_rcpts = 3;
}

/** A message whose lines start with dots, 8-bit text, and size bytes in all. */
static char *make_message(size_t size, const char *subject)
{
    char *m = malloc(size + 1);
    int h = snprintf(m, size + 1,
                     "From: alice@example.com\r\nTo: bob@dest.test\r\nSubject: %s\r\n"
                     "Message-ID: <%s@example.com>\r\n\r\n.leading dot\r\n..two dots\r\n"
                     "caf\xc3\xa9\r\n.\r\n",
                     subject, subject);
    size_t o = (size_t)h;
    unsigned line = 0;
    while (o < size) {
        char l[80];
        int n = snprintf(l, sizeof l, "%sline %u of the body, padding padding padding\r\n",
                         line % 7 == 0 ? "." : "", line);
        line++;
        if (o + (size_t)n > size) {
            /* end exactly at size with a CRLF-terminated short line */
            size_t left = size - o;
            memset(m + o, 'z', left);
            if (left >= 2)
                memcpy(m + size - 2, "\r\n", 2);
            o = size;
            break;
        }
        memcpy(m + o, l, (size_t)n);
        o += (size_t)n;
    }
    m[size] = 0;
    return m;
}

/* ---- tests ------------------------------------------------------------ */

/** aiosmtpd: two messages on one connection (RSET between), byte-exact arrival. */
static void test_aiosmtpd_reuse_exact(void **state)
{
    (void)state;
    struct peer p = {0};
    const char *args[] = {"--reject", "nobody@dest.test", NULL};
    if (peer_start_py(&p, args) != 0) {
        if (p.pid > 0)
            peer_stop(&p);
        skip();
    }
    int fd = tcp_connect(p.port);
    struct mx_smtp_client *c;
    struct mx_smtp_client_params prm = {.helo_name = "gw.example.org"};
    assert_int_equal(mx_smtp_client_new(&prm, &c), 0);
    assert_int_equal(drive(fd, c), MX_SMTPC_READY);
    assert_true(mx_smtp_client_extensions(c) & MX_SMTP_EXT_8BITMIME);

    struct env3 e;
    env3_init(&e, "alice@example.com", "bob@dest.test", "nobody@dest.test", "carol@dest.test");
    e.env.body = MX_BODY_8BITMIME;
    char *m1 = make_message(2000, "first");
    struct mx_smtp_client_msg msg = {.env = &e.env, .rcpt_idx = e.idx, .n_rcpt = 3,
                                     .data = (const uint8_t *)m1, .len = strlen(m1)};
    assert_int_equal(mx_smtp_client_send(c, &msg), 0);
    assert_int_equal(drive(fd, c), MX_SMTPC_TXN_DONE);
    size_t n;
    const struct mx_smtp_rcpt_result *r = mx_smtp_client_results(c, &n);
    assert_int_equal(n, 3);
    assert_int_equal(r[0].code, 250);
    assert_string_equal(r[0].text, "Ok: queued as 1");
    assert_int_equal(r[1].code, 550);
    assert_string_equal(r[1].enh, "5.1.1");
    assert_string_equal(r[1].text, "<nobody@dest.test>: Recipient address rejected");
    assert_int_equal(r[2].code, 250);

    char *m2 = make_message(300000, "second");
    msg.data = (const uint8_t *)m2;
    msg.len = strlen(m2);
    msg.n_rcpt = 1;
    assert_int_equal(mx_smtp_client_send(c, &msg), 0);
    assert_int_equal(drive(fd, c), MX_SMTPC_TXN_DONE);
    r = mx_smtp_client_results(c, &n);
    assert_int_equal(r[0].code, 250);
    assert_string_equal(r[0].text, "Ok: queued as 2");
    assert_int_equal(mx_smtp_client_quit(c), 0);
    assert_int_equal(drive(fd, c), MX_SMTPC_CLOSED);
    assert_string_equal(mx_smtp_client_error(c), "");
    close(fd);
    mx_smtp_client_free(c);

    char path[256];
    size_t len;
    snprintf(path, sizeof path, "%s/1.eml", p.dir);
    char *got = wait_file(path, &len);
    assert_int_equal(len, strlen(m1));
    assert_memory_equal(got, m1, len);
    free(got);
    snprintf(path, sizeof path, "%s/1.env", p.dir);
    got = wait_file(path, &len);
    const char *env_exp = "MAIL alice@example.com SIZE=2000 BODY=8BITMIME\n"
                          "RCPT bob@dest.test \nRCPT carol@dest.test \nTLS no\nPEER ";
    if (strncmp(got, env_exp, strlen(env_exp)) != 0)
        fail_msg("envelope seen by the peer: %s", got);
    free(got);
    snprintf(path, sizeof path, "%s/2.eml", p.dir);
    got = wait_file(path, &len);
    assert_int_equal(len, strlen(m2));
    assert_memory_equal(got, m2, len);
    free(got);
    free(m1);
    free(m2);
    peer_stop(&p);
}

/** aiosmtpd with STARTTLS: opportunistic TLS, EHLO again, byte-exact arrival. */
static void test_aiosmtpd_starttls(void **state)
{
    (void)state;
    struct peer p = {0};
    char tlsdir[] = "/tmp/mx-tls-XXXXXX";
    assert_non_null(mkdtemp(tlsdir));
    const char *args[] = {"--tls", tlsdir, NULL};
    if (access("/usr/bin/openssl", X_OK) != 0 || peer_start_py(&p, args) != 0) {
        if (p.pid > 0)
            peer_stop(&p);
        rmdir(tlsdir);
        skip();
    }
    int fd = tcp_connect(p.port);
    struct mx_smtp_client *c;
    struct mx_smtp_client_params prm = {.helo_name = "gw.example.org", .starttls = true};
    assert_int_equal(mx_smtp_client_new(&prm, &c), 0);
    assert_int_equal(drive(fd, c), MX_SMTPC_READY);
    assert_true(strncmp(mx_smtp_client_tls(c), "TLSv1.", 6) == 0);
    /* After TLS the second EHLO no longer offers STARTTLS. */
    assert_false(mx_smtp_client_extensions(c) & MX_SMTP_EXT_STARTTLS);

    struct env3 e;
    env3_init(&e, "alice@example.com", "bob@dest.test", NULL, NULL);
    char *m1 = make_message(100000, "tls");
    struct mx_smtp_client_msg msg = {.env = &e.env, .rcpt_idx = e.idx, .n_rcpt = 1,
                                     .data = (const uint8_t *)m1, .len = strlen(m1)};
    assert_int_equal(mx_smtp_client_send(c, &msg), 0);
    assert_int_equal(drive(fd, c), MX_SMTPC_TXN_DONE);
    size_t n;
    const struct mx_smtp_rcpt_result *r = mx_smtp_client_results(c, &n);
    assert_int_equal(r[0].code, 250);
    assert_int_equal(mx_smtp_client_quit(c), 0);
    assert_int_equal(drive(fd, c), MX_SMTPC_CLOSED);
    close(fd);
    mx_smtp_client_free(c);

    char path[256];
    size_t len;
    snprintf(path, sizeof path, "%s/1.eml", p.dir);
    char *got = wait_file(path, &len);
    assert_int_equal(len, strlen(m1));
    assert_memory_equal(got, m1, len);
    free(got);
    snprintf(path, sizeof path, "%s/1.env", p.dir);
    got = wait_file(path, &len);
    assert_non_null(strstr(got, "TLS yes\n"));
    free(got);
    free(m1);
    peer_stop(&p);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tlsdir);
    assert_int_equal(system(cmd), 0);
}

/** smtp-sink: PIPELINING and DSN offered; three messages on one connection. */
static void test_smtp_sink_pipelining(void **state)
{
    (void)state;
    struct peer p = {0};
    if (peer_start_sink(&p) != 0)
        skip();
    int fd = tcp_connect(p.port);
    struct mx_smtp_client *c;
    struct mx_smtp_client_params prm = {.helo_name = "gw.example.org"};
    assert_int_equal(mx_smtp_client_new(&prm, &c), 0);
    assert_int_equal(drive(fd, c), MX_SMTPC_READY);
    unsigned ext = mx_smtp_client_extensions(c);
    assert_true(ext & MX_SMTP_EXT_PIPELINING);
    assert_true(ext & MX_SMTP_EXT_DSN);

    struct env3 e;
    env3_init(&e, "alice@example.com", "bob@dest.test", "carol@dest.test", "dave@dest.test");
    e.env.ret = MX_RET_HDRS;
    e.rcpts[0].notify = MX_NOTIFY_FAILURE;
    char *m[3];
    for (int i = 0; i < 3; i++) {
        char subj[16];
        snprintf(subj, sizeof subj, "sink%d", i);
        m[i] = make_message(i == 2 ? 200000 : 1500, subj);
        struct mx_smtp_client_msg msg = {.env = &e.env, .rcpt_idx = e.idx, .n_rcpt = 3,
                                         .data = (const uint8_t *)m[i], .len = strlen(m[i])};
        assert_int_equal(mx_smtp_client_send(c, &msg), 0);
        assert_int_equal(drive(fd, c), MX_SMTPC_TXN_DONE);
        size_t n;
        const struct mx_smtp_rcpt_result *r = mx_smtp_client_results(c, &n);
        for (size_t k = 0; k < 3; k++) {
            assert_int_equal(r[k].code, 250);
            assert_string_equal(r[k].enh, "2.0.0");
        }
    }
    assert_int_equal(mx_smtp_client_quit(c), 0);
    assert_int_equal(drive(fd, c), MX_SMTPC_CLOSED);
    assert_string_equal(mx_smtp_client_error(c), "");
    close(fd);
    mx_smtp_client_free(c);

    /* Each dump: smtp-sink's X- headers and Received:, then our message with
     * LF line ends, then an empty line. Find each message by its Subject. */
    int found = 0;
    for (int tries = 0; tries < 100 && found < 3; tries++) {
        found = 0;
        DIR *d = opendir(p.dir);
        struct dirent *de;
        while (d && (de = readdir(d))) {
            if (de->d_name[0] == '.')
                continue;
            char path[512];
            snprintf(path, sizeof path, "%s/%s", p.dir, de->d_name);
            size_t len;
            char *got = read_file(path, &len);
            if (!got)
                continue;
            for (int i = 0; i < 3; i++) {
                /* expected: m[i] with CRLF -> LF, then "\n" */
                size_t ml = strlen(m[i]);
                char *lf = malloc(ml + 2);
                size_t o = 0;
                for (size_t k = 0; k < ml; k++)
                    if (!(m[i][k] == '\r' && k + 1 < ml && m[i][k + 1] == '\n'))
                        lf[o++] = m[i][k];
                lf[o++] = '\n';
                char *at = strstr(got, "\nFrom: alice@example.com\n");
                if (at && (size_t)(got + len - (at + 1)) == o &&
                    memcmp(at + 1, lf, o) == 0) {
                    found++;
                    assert_non_null(strstr(got, "X-Mail-Args: <alice@example.com> RET=HDRS"));
                    assert_non_null(strstr(got, "X-Rcpt-Args: <bob@dest.test> NOTIFY=FAILURE"));
                }
                free(lf);
            }
            free(got);
        }
        if (d)
            closedir(d);
        if (found < 3)
            usleep(50000);
    }
    assert_int_equal(found, 3);
    for (int i = 0; i < 3; i++)
        free(m[i]);
    peer_stop(&p);
}

/** The LF form of a CRLF message, as smtp-sink dumps it. */
static char *to_lf(const char *m, size_t *olen)
{
    size_t ml = strlen(m), o = 0;
    char *lf = malloc(ml + 1);
    for (size_t k = 0; k < ml; k++)
        if (!(m[k] == '\r' && k + 1 < ml && m[k + 1] == '\n'))
            lf[o++] = m[k];
    lf[o] = 0;
    *olen = o;
    return lf;
}

/**
 * Postfix's own smtpd (a private instance, see postfix_peer.py) offers
 * CHUNKING: two messages go as BDAT chunks on one connection, Postfix relays
 * them to smtp-sink, and each arrives there intact (raw, never dot-stuffed).
 */
static void test_postfix_bdat(void **state)
{
    (void)state;
    struct peer sink = {0}, pf = {0};
    if (!postfix_script || peer_start_sink(&sink) != 0)
        skip();
    char sinkport[16];
    snprintf(sinkport, sizeof sinkport, "%u", sink.port);
    const char *args[] = {sinkport, NULL};
    if (peer_start_script(&pf, postfix_script, args) != 0) {
        /* "SKIP ..." (not root, no postfix) or it did not start */
        close(pf.stdin_fd);
        waitpid(pf.pid, NULL, 0);
        peer_stop(&sink);
        char cmd[200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", pf.dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", pf.dir);
        skip();
    }
    int fd = tcp_connect(pf.port);
    struct mx_smtp_client *c;
    struct mx_smtp_client_params prm = {.helo_name = "gw.example.org", .bdat_chunk = 4096};
    assert_int_equal(mx_smtp_client_new(&prm, &c), 0);
    assert_int_equal(drive(fd, c), MX_SMTPC_READY);
    unsigned ext = mx_smtp_client_extensions(c);
    assert_true(ext & MX_SMTP_EXT_CHUNKING);
    assert_true(ext & MX_SMTP_EXT_PIPELINING);

    struct env3 e;
    env3_init(&e, "alice@example.com", "bob@dest.test", NULL, NULL);
    e.env.body = MX_BODY_8BITMIME;
    char *m[2];
    for (int i = 0; i < 2; i++) {
        char subj[16];
        snprintf(subj, sizeof subj, "bdat%d", i);
        char *body = make_message(i ? 50000 : 9000, subj);
        /* Postfix would add a Date: header to a message without one. */
        size_t bl = strlen(body);
        m[i] = malloc(bl + 64);
        int h = snprintf(m[i], 64, "Date: Mon, 23 Nov 2026 20:00:00 +0000\r\n");
        memcpy(m[i] + h, body, bl + 1);
        free(body);
        struct mx_smtp_client_msg msg = {.env = &e.env, .rcpt_idx = e.idx, .n_rcpt = 1,
                                         .data = (const uint8_t *)m[i], .len = strlen(m[i])};
        assert_int_equal(mx_smtp_client_send(c, &msg), 0);
        assert_int_equal(drive(fd, c), MX_SMTPC_TXN_DONE);
        size_t n;
        const struct mx_smtp_rcpt_result *r = mx_smtp_client_results(c, &n);
        assert_int_equal(r[0].code, 250);
        assert_string_equal(r[0].enh, "2.0.0");
    }
    assert_int_equal(mx_smtp_client_quit(c), 0);
    assert_int_equal(drive(fd, c), MX_SMTPC_CLOSED);
    close(fd);
    mx_smtp_client_free(c);

    /* Postfix counted BDAT commands for this session. */
    char path[512];
    int bdat_seen = 0;
    for (int tries = 0; tries < 100 && !bdat_seen; tries++) {
        size_t len;
        snprintf(path, sizeof path, "%s/maillog", pf.dir);
        char *log = read_file(path, &len);
        bdat_seen = log && strstr(log, " bdat=") != NULL;
        free(log);
        if (!bdat_seen)
            usleep(50000);
    }
    assert_true(bdat_seen);

    /* Both messages reach smtp-sink: each dump ends with the message + "\n". */
    int found = 0;
    for (int tries = 0; tries < 200 && found < 2; tries++) {
        found = 0;
        DIR *d = opendir(sink.dir);
        struct dirent *de;
        while (d && (de = readdir(d))) {
            if (de->d_name[0] == '.')
                continue;
            snprintf(path, sizeof path, "%s/%s", sink.dir, de->d_name);
            size_t len;
            char *got = read_file(path, &len);
            for (int i = 0; got && i < 2; i++) {
                size_t ol;
                char *lf = to_lf(m[i], &ol);
                if (len == 0 || len < ol + 1 || got[len - 1] != '\n')
                    ; /* not (yet) complete */
                else if (memcmp(got + len - 1 - ol, lf, ol) == 0)
                    found++;
                free(lf);
            }
            free(got);
        }
        if (d)
            closedir(d);
        if (found < 2)
            usleep(50000);
    }
    assert_int_equal(found, 2);
    for (int i = 0; i < 2; i++)
        free(m[i]);
    peer_stop(&pf); /* stops the Postfix instance */
    peer_stop(&sink);
}

int main(int argc, char **argv)
{
    peer_script = argc > 1 ? argv[1] : NULL;
    postfix_script = argc > 2 ? argv[2] : NULL;
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aiosmtpd_reuse_exact),
        cmocka_unit_test(test_aiosmtpd_starttls),
        cmocka_unit_test(test_smtp_sink_pipelining),
        cmocka_unit_test(test_postfix_bdat),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
