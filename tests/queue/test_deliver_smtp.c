/*
 * test_deliver_smtp.c - the SMTP delivery agent (queue/deliver_smtp.c) on a
 * real kernel-transport worker over loopback: fail-over past a refused port
 * and a 421 greeting, per-recipient results, exact error texts, done()
 * exactly once, STARTTLS, a large message through flow control, and the
 * message arriving byte-exact at Python aiosmtpd (tests/queue/smtp_peer.py).
 *
 * argv[1]: path of smtp_peer.py. Tests whose peer is missing skip.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
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
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"
#include "dataplane/dataplane.h"
#include "queue/deliver.h"

static const char *peer_script;

/* ---- jobs handed to the worker ---------------------------------------- */

struct job {
    struct mx_deliver_req req;
    int start_rc;
    int done_calls;
    int finished;
    struct mx_deliver_rcpt_result res[4];
    size_t n;
    char remote[80];
    char error[256];
    struct job *chain; /* started from inside this job's done() */
    struct mx_worker *w;
    bool clear_fail_cache; /* like `mxctl queue flush`, on the worker, before the start */
    char start_error[256];
};

#define MAX_PENDING 4
static struct job *pending_jobs[MAX_PENDING];

static void job_done(void *arg, const struct mx_deliver_result *r)
{
    struct job *j = arg;
    if (j->chain) { /* like a queue manager starting the next message right away */
        j->chain->w = j->w;
        j->chain->start_rc = mx_deliver_smtp_start(j->w, &j->chain->req, job_done, j->chain);
        if (j->chain->start_rc)
            __atomic_store_n(&j->chain->finished, 1, __ATOMIC_SEQ_CST);
    }
    j->n = r->n;
    for (size_t i = 0; i < r->n && i < 4; i++)
        j->res[i] = r->rcpt[i];
    snprintf(j->remote, sizeof j->remote, "%s", r->remote);
    snprintf(j->error, sizeof j->error, "%s", r->error);
    __atomic_add_fetch(&j->done_calls, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&j->finished, 1, __ATOMIC_SEQ_CST);
}

static void tick(struct mx_worker *w, void *arg)
{
    (void)arg;
    for (size_t i = 0; i < MAX_PENDING; i++) { /* all jobs handed over in one tick */
        struct job *j = __atomic_exchange_n(&pending_jobs[i], NULL, __ATOMIC_SEQ_CST);
        if (!j)
            continue;
        j->w = w;
        if (j->clear_fail_cache)
            mx_deliver_smtp_clear_fail_cache();
        j->start_rc = mx_deliver_smtp_start(w, &j->req, job_done, j);
        if (j->start_rc) {
            snprintf(j->start_error, sizeof j->start_error, "%s", mx_deliver_smtp_start_error());
            __atomic_store_n(&j->finished, 1, __ATOMIC_SEQ_CST);
        }
    }
}

static int worker_init(struct mx_worker *w, void *arg)
{
    (void)arg;
    return mx_worker_add_tick(w, tick, NULL);
}

/** Run deliveries on the worker, started in the same loop turn; wait (bounded) until done. */
static void run_jobs(struct job **jobs, size_t n)
{
    assert_true(n <= MAX_PENDING);
    /* Fill the slots back to front: the tick scans front to back, so it sees all or none. */
    for (size_t i = n; i-- > 0;)
        __atomic_store_n(&pending_jobs[i], jobs[i], __ATOMIC_SEQ_CST);
    for (size_t k = 0; k < n; k++) {
        struct job *j = jobs[k];
        for (int i = 0; i < 3000 && !__atomic_load_n(&j->finished, __ATOMIC_SEQ_CST); i++)
            usleep(10000);
        assert_int_equal(__atomic_load_n(&j->finished, __ATOMIC_SEQ_CST), 1);
    }
    usleep(100000); /* a second done() would show up here */
    for (size_t k = 0; k < n; k++)
        assert_int_equal(jobs[k]->start_rc ? 0 : 1,
                         __atomic_load_n(&jobs[k]->done_calls, __ATOMIC_SEQ_CST));
}

static void run_job(struct job *j)
{
    run_jobs(&j, 1);
}

/* ---- envelopes and routes --------------------------------------------- */

struct fixture {
    struct mx_envelope env;
    struct mx_rcpt rcpts[3];
    size_t idx[3];
    struct mx_sockaddr hosts[3];
    struct mx_route route;
};

static void fixture_init(struct fixture *f, const unsigned *ports, size_t n_ports)
{
    memset(f, 0, sizeof *f);
    snprintf(f->env.mail_from, sizeof f->env.mail_from, "alice@example.com");
    const char *r[3] = {"bob@dest.test", "nobody@dest.test", "carol@dest.test"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(f->rcpts[i].addr, sizeof f->rcpts[i].addr, "%s", r[i]);
        f->idx[i] = i;
    }
    f->env.rcpts = f->rcpts;
    f->env.n_rcpts = 3;
    for (size_t i = 0; i < n_ports; i++) {
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)ports[i]),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        memcpy(&f->hosts[i].ss, &sin, sizeof sin);
        f->hosts[i].len = sizeof sin;
        snprintf(f->hosts[i].text, sizeof f->hosts[i].text, "127.0.0.1:%u", ports[i]);
    }
    f->route = (struct mx_route){.domain = "dest.test", .scheme = MX_ROUTE_SMTP,
                                 .hosts = f->hosts, .n_hosts = n_ports};
}

static void job_init(struct job *j, struct fixture *f, size_t n_rcpt, const char *msg, size_t len)
{
    memset(j, 0, sizeof *j);
    j->req = (struct mx_deliver_req){.route = &f->route, .env = &f->env, .rcpt_idx = f->idx,
                                     .n_rcpt = n_rcpt, .msg = (const uint8_t *)msg, .len = len,
                                     .helo_name = "gw.example.org", .queue_id = "TESTQ1"};
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

/* ---- a scripted server (one connection, blocking, own thread) --------- */

struct script {
    int lfd;
    unsigned port;
    const char *greeting;   /* sent first */
    const char *close_after; /* close the connection on this command */
    int conns;               /* connections to serve (0 = 1) */
    bool offer_tls;          /* offer STARTTLS, then answer the handshake with junk */
    int close_conn;          /* which connection close_after applies to */
    int served;
    pthread_t th;
};

static void script_conn(struct script *s, int fd, int idx);

static void *script_main(void *arg)
{
    struct script *s = arg;
    int n = s->conns ? s->conns : 1;
    for (int i = 0; i < n; i++) {
        struct pollfd pfd = {.fd = s->lfd, .events = POLLIN};
        if (poll(&pfd, 1, 20000) != 1)
            break;
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            break;
        script_conn(s, fd, i);
        s->served++;
    }
    return NULL;
}

static void script_conn(struct script *s, int fd, int idx)
{
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    send(fd, s->greeting, strlen(s->greeting), MSG_NOSIGNAL);
    char line[1024];
    size_t n = 0;
    bool in_data = false;
    for (int guard = 0; guard < 100000; guard++) {
        char ch;
        if (recv(fd, &ch, 1, 0) != 1)
            break;
        if (n < sizeof line - 1)
            line[n++] = ch;
        if (ch != '\n')
            continue;
        line[n] = 0;
        n = 0;
        const char *reply = "250 2.0.0 ok\r\n";
        if (in_data) {
            if (strcmp(line, ".\r\n") != 0)
                continue;
            in_data = false;
        } else if (s->close_after && idx == s->close_conn &&
                   strncmp(line, s->close_after, strlen(s->close_after)) == 0) {
            break;
        } else if (strncmp(line, "EHLO", 4) == 0) {
            reply = s->offer_tls ? "250-script\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n"
                                 : "250-script\r\n250 ENHANCEDSTATUSCODES\r\n";
        } else if (strncmp(line, "STARTTLS", 8) == 0) {
            const char *junk = "220 go ahead\r\n";
            send(fd, junk, strlen(junk), MSG_NOSIGNAL);
            char hello[512];
            (void)!recv(fd, hello, sizeof hello, 0); /* the ClientHello */
            const char *bad = "HTTP/1.1 400 Bad Request\r\n\r\n";
            send(fd, bad, strlen(bad), MSG_NOSIGNAL);
            break;
        } else if (strncmp(line, "DATA", 4) == 0) {
            reply = "354 go\r\n";
            in_data = true;
        } else if (strncmp(line, "QUIT", 4) == 0) {
            send(fd, "221 bye\r\n", 9, MSG_NOSIGNAL);
            break;
        }
        send(fd, reply, strlen(reply), MSG_NOSIGNAL);
    }
    close(fd);
}

static void script_start(struct script *s)
{
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof sin;
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(s->lfd, 4), 0);
    getsockname(s->lfd, (struct sockaddr *)&sin, &l);
    s->port = ntohs(sin.sin_port);
    assert_int_equal(pthread_create(&s->th, NULL, script_main, s), 0);
}

static void script_stop(struct script *s)
{
    pthread_join(s->th, NULL);
    close(s->lfd);
}

/* ---- the aiosmtpd peer ------------------------------------------------- */

struct peer {
    pid_t pid;
    int stdin_fd;
    unsigned port;
    char dir[64];
};

static int peer_start(struct peer *p, const char *const *extra)
{
    if (!peer_script || access("/usr/bin/python3", X_OK) != 0)
        return -1;
    snprintf(p->dir, sizeof p->dir, "/tmp/mx-dlv-XXXXXX");
    assert_non_null(mkdtemp(p->dir));
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
        const char *argv[12] = {"/usr/bin/python3", peer_script, p->dir};
        size_t n = 3;
        for (; extra && *extra && n < 11; extra++)
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
    while (got < sizeof buf - 1 && !memchr(buf, '\n', got) && poll(&pfd, 1, 20000) == 1) {
        ssize_t r = read(out[0], buf + got, sizeof buf - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
        buf[got] = 0;
    }
    close(out[0]);
    return sscanf(buf, "PORT %u", &p->port) == 1 ? 0 : -1;
}

static void peer_stop(struct peer *p)
{
    close(p->stdin_fd);
    for (int i = 0; i < 100 && waitpid(p->pid, NULL, WNOHANG) != p->pid; i++) {
        if (i == 99) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, NULL, 0);
        }
        usleep(50000);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", p->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", p->dir);
}

static char *read_file(const char *path, size_t *len)
{
    for (int i = 0; i < 100; i++) {
        FILE *f = fopen(path, "rb");
        if (f) {
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
        usleep(50000);
    }
    fail_msg("no %s", path);
    return NULL;
}

static char *make_message(size_t size)
{
    char *m = malloc(size + 1);
    size_t o = (size_t)snprintf(m, size + 1, "From: alice@example.com\r\nSubject: agent\r\n\r\n");
    for (unsigned line = 0; o < size; line++) {
        char l[64];
        int n = snprintf(l, sizeof l, "%sbody line %u\r\n", line % 5 ? "" : ".", line);
        if (o + (size_t)n > size) {
            memset(m + o, 'z', size - o);
            o = size;
            if (size >= 2)
                memcpy(m + size - 2, "\r\n", 2);
            break;
        }
        memcpy(m + o, l, (size_t)n);
        o += (size_t)n;
    }
    m[size] = 0;
    return m;
}

/* ---- tests ------------------------------------------------------------ */

/** Refused first host, then aiosmtpd: delivered, mixed results, byte-exact. */
static void test_failover_refused_then_delivered(void **state)
{
    (void)state;
    struct peer p = {0};
    const char *args[] = {"--reject", "nobody@dest.test", NULL};
    if (peer_start(&p, args) != 0)
        skip();
    unsigned dead = free_port();
    unsigned ports[2] = {dead, p.port};
    struct fixture f;
    fixture_init(&f, ports, 2);
    char *msg = make_message(5000);
    struct job j;
    job_init(&j, &f, 3, msg, strlen(msg));
    run_job(&j);
    assert_int_equal(j.start_rc, 0);
    assert_int_equal(j.n, 3);
    assert_int_equal(j.res[0].code, 250);
    assert_int_equal(j.res[1].code, 550);
    assert_string_equal(j.res[1].enh, "5.1.1");
    assert_string_equal(j.res[1].text, "<nobody@dest.test>: Recipient address rejected");
    assert_int_equal(j.res[2].code, 250);
    char exp[256];
    snprintf(exp, sizeof exp, "127.0.0.1:%u", p.port);
    assert_string_equal(j.remote, exp);
    snprintf(exp, sizeof exp, "connect to 127.0.0.1:%u: Connection refused", dead);
    assert_string_equal(j.error, exp);

    char path[128];
    size_t len;
    snprintf(path, sizeof path, "%s/1.eml", p.dir);
    char *got = read_file(path, &len);
    assert_int_equal(len, strlen(msg));
    assert_memory_equal(got, msg, len);
    free(got);
    free(msg);
    peer_stop(&p);
}

/** Every host refused: one done(), all recipients temporary with the reason. */
static void test_all_hosts_refused(void **state)
{
    (void)state;
    unsigned ports[2] = {free_port(), free_port()};
    struct fixture f;
    fixture_init(&f, ports, 2);
    struct job j;
    job_init(&j, &f, 2, "x\r\n", 3);
    run_job(&j);
    assert_int_equal(j.start_rc, 0);
    char exp[256];
    snprintf(exp, sizeof exp,
             "connect to 127.0.0.1:%u: Connection refused; connect to 127.0.0.1:%u: "
             "Connection refused",
             ports[0], ports[1]);
    assert_string_equal(j.error, exp);
    assert_string_equal(j.remote, "");
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(j.res[i].code, 0);
        assert_string_equal(j.res[i].text, exp);
    }
}

/** A 421 greeting sends the attempt to the next host. */
static void test_failover_421_greeting(void **state)
{
    (void)state;
    struct script busy = {.greeting = "421 4.3.2 busy, come back later\r\n"};
    struct script ok = {.greeting = "220 script ESMTP\r\n"};
    script_start(&busy);
    script_start(&ok);
    unsigned ports[2] = {busy.port, ok.port};
    struct fixture f;
    fixture_init(&f, ports, 2);
    struct job j;
    job_init(&j, &f, 2, ".x\r\n", 4);
    run_job(&j);
    assert_int_equal(j.res[0].code, 250);
    assert_string_equal(j.res[0].enh, "2.0.0");
    assert_int_equal(j.res[1].code, 250);
    char exp[256];
    snprintf(exp, sizeof exp, "127.0.0.1:%u: 421 4.3.2 busy, come back later (after CONNECT)",
             busy.port);
    assert_string_equal(j.error, exp);
    snprintf(exp, sizeof exp, "127.0.0.1:%u", ok.port);
    assert_string_equal(j.remote, exp);
    script_stop(&busy);
    script_stop(&ok);
}

/** The server drops the connection at RCPT: temporary results, exact text. */
static void test_lost_connection_after_rcpt(void **state)
{
    (void)state;
    struct script s = {.greeting = "220 script\r\n", .close_after = "RCPT"};
    script_start(&s);
    unsigned ports[1] = {s.port};
    struct fixture f;
    fixture_init(&f, ports, 1);
    struct job j;
    job_init(&j, &f, 2, "x\r\n", 3);
    run_job(&j);
    assert_string_equal(j.error, "lost connection after RCPT");
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(j.res[i].code, 0);
        assert_string_equal(j.res[i].text, "lost connection after RCPT");
    }
    script_stop(&s);
}

/** STARTTLS through the agent, and a 3 MB message through flow control. */
static void test_starttls_large(void **state)
{
    (void)state;
    struct peer p = {0};
    char tlsdir[] = "/tmp/mx-dtls-XXXXXX";
    assert_non_null(mkdtemp(tlsdir));
    const char *args[] = {"--tls", tlsdir, NULL};
    if (access("/usr/bin/openssl", X_OK) != 0 || peer_start(&p, args) != 0) {
        rmdir(tlsdir);
        skip();
    }
    unsigned ports[1] = {p.port};
    struct fixture f;
    fixture_init(&f, ports, 1);
    char *msg = make_message(3 * 1024 * 1024);
    struct job j;
    job_init(&j, &f, 1, msg, strlen(msg));
    run_job(&j);
    assert_int_equal(j.res[0].code, 250);
    assert_string_equal(j.error, "");
    char path[128];
    size_t len;
    snprintf(path, sizeof path, "%s/1.eml", p.dir);
    char *got = read_file(path, &len);
    assert_int_equal(len, strlen(msg));
    assert_memory_equal(got, msg, len);
    free(got);
    snprintf(path, sizeof path, "%s/1.env", p.dir);
    got = read_file(path, &len);
    assert_non_null(strstr(got, "TLS yes\n"));
    free(got);
    free(msg);
    peer_stop(&p);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tlsdir);
    assert_int_equal(system(cmd), 0);
}

/** The peer's record of the client port a message came from ("PEER n"). */
static unsigned peer_port_of(const struct peer *p, int seq)
{
    char path[128];
    size_t len;
    snprintf(path, sizeof path, "%s/%d.env", p->dir, seq);
    char *got = read_file(path, &len);
    const char *at = strstr(got, "PEER ");
    unsigned port = at ? (unsigned)strtoul(at + 5, NULL, 10) : 0;
    free(got);
    return port;
}

/** A second message to the same host within the idle time reuses the connection. */
static void test_connection_reuse(void **state)
{
    (void)state;
    struct peer p = {0};
    if (peer_start(&p, NULL) != 0)
        skip();
    unsigned ports[1] = {p.port};
    struct fixture f;
    fixture_init(&f, ports, 1);
    for (int i = 0; i < 3; i++) {
        char msg[64];
        snprintf(msg, sizeof msg, "Subject: reuse %d\r\n\r\nbody\r\n", i);
        struct job j;
        job_init(&j, &f, 1, msg, strlen(msg));
        run_job(&j);
        assert_int_equal(j.res[0].code, 250);
        char exp[64];
        snprintf(exp, sizeof exp, "Ok: queued as %d", i + 1);
        assert_string_equal(j.res[0].text, exp);
    }
    unsigned first = peer_port_of(&p, 1);
    assert_true(first != 0);
    assert_int_equal(peer_port_of(&p, 2), first);
    assert_int_equal(peer_port_of(&p, 3), first);
    peer_stop(&p);
}

/** A failed TLS handshake: the same host again, in plaintext. */
static void test_tls_failure_retries_plaintext(void **state)
{
    (void)state;
    struct script sc = {.greeting = "220 script\r\n", .conns = 2, .offer_tls = true};
    script_start(&sc);
    unsigned ports[1] = {sc.port};
    struct fixture f;
    fixture_init(&f, ports, 1);
    struct job j;
    job_init(&j, &f, 1, "Subject: t\r\n\r\nx\r\n", 17);
    run_job(&j);
    assert_int_equal(j.res[0].code, 250);
    char exp[128];
    snprintf(exp, sizeof exp, "127.0.0.1:%u: TLS handshake failed: ", sc.port);
    if (strncmp(j.error, exp, strlen(exp)) != 0)
        fail_msg("error: %s", j.error);
    script_stop(&sc);
    assert_int_equal(sc.served, 2);
}

/** A delivery started from inside done() finds the connection just finished. */
static void test_chained_start_reuses(void **state)
{
    (void)state;
    struct peer p = {0};
    if (peer_start(&p, NULL) != 0)
        skip();
    unsigned ports[1] = {p.port};
    struct fixture f;
    fixture_init(&f, ports, 1);
    struct job a, b;
    job_init(&a, &f, 1, "Subject: a\r\n\r\nx\r\n", 17);
    job_init(&b, &f, 1, "Subject: b\r\n\r\nx\r\n", 17);
    a.chain = &b;
    run_job(&a);
    for (int i = 0; i < 2000 && !__atomic_load_n(&b.finished, __ATOMIC_SEQ_CST); i++)
        usleep(10000);
    assert_int_equal(b.start_rc, 0);
    assert_int_equal(__atomic_load_n(&b.done_calls, __ATOMIC_SEQ_CST), 1);
    assert_int_equal(a.res[0].code, 250);
    assert_int_equal(b.res[0].code, 250);
    assert_int_equal(peer_port_of(&p, 1), peer_port_of(&p, 2));
    peer_stop(&p);
}

/** A cached connection that turns out dead at RSET: a fresh one is used, no error. */
static void test_reuse_dead_connection(void **state)
{
    (void)state;
    struct script sc = {.greeting = "220 script\r\n", .conns = 2, .close_after = "RSET"};
    script_start(&sc);
    unsigned ports[1] = {sc.port};
    struct fixture f;
    fixture_init(&f, ports, 1);
    struct job j;
    job_init(&j, &f, 1, "Subject: a\r\n\r\nx\r\n", 17);
    run_job(&j);
    assert_int_equal(j.res[0].code, 250);
    job_init(&j, &f, 1, "Subject: b\r\n\r\nx\r\n", 17);
    run_job(&j);
    assert_int_equal(j.res[0].code, 250);
    assert_string_equal(j.error, "");
    script_stop(&sc);
    assert_int_equal(sc.served, 2);
}

/** Three messages at once: three connections without a limit, one with limit 1. */
static void test_dest_concurrency_limit(void **state)
{
    (void)state;
    for (unsigned limit = 0; limit < 2; limit++) {
        struct peer p = {0};
        if (peer_start(&p, NULL) != 0)
            skip();
        mx_deliver_smtp_set_dest_limit(limit);
        unsigned ports[1] = {p.port};
        struct fixture f;
        fixture_init(&f, ports, 1);
        struct job jobs[3], *jp[3];
        char msgs[3][64];
        for (int i = 0; i < 3; i++) {
            snprintf(msgs[i], sizeof msgs[i], "Subject: parallel %d\r\n\r\nbody\r\n", i);
            job_init(&jobs[i], &f, 1, msgs[i], strlen(msgs[i]));
            jp[i] = &jobs[i];
        }
        run_jobs(jp, 3);
        for (int i = 0; i < 3; i++)
            assert_int_equal(jobs[i].res[0].code, 250);
        unsigned a = peer_port_of(&p, 1), b = peer_port_of(&p, 2), c = peer_port_of(&p, 3);
        if (limit == 1) {
            assert_int_equal(a, b);
            assert_int_equal(b, c);
        } else {
            assert_true(a != b && b != c && a != c);
        }
        peer_stop(&p);
    }
    mx_deliver_smtp_set_dest_limit(0);
}

/** Requests the agent cannot run are refused up front (done never runs). */
/* "host 127.0.0.1:P unreachable (cached, Ns left)" with 0 < N <= max_s */
static void assert_cached(const char *text, unsigned port, unsigned max_s)
{
    char pre[96];
    snprintf(pre, sizeof pre, "host 127.0.0.1:%u unreachable (cached, ", port);
    assert_memory_equal(text, pre, strlen(pre));
    unsigned s = 0;
    char tail[16] = "";
    assert_int_equal(sscanf(text + strlen(pre), "%u%15s", &s, tail), 2);
    assert_string_equal(tail, "s");
    assert_string_equal(text + strlen(text) - 7, "s left)");
    assert_true(s >= 1 && s <= max_s);
}

/*
 * Connection-failure cache: a refused host is skipped (no connect attempt,
 * so no "Connection refused" in the error) while its entry lives; fail-over
 * goes straight to the next host; a route of only cached hosts fails at
 * start with the reason; clearing (flush) and expiry bring connects back.
 */
static void test_fail_cache(void **state)
{
    (void)state;
    struct script ok = {.greeting = "220 script ESMTP\r\n"};
    script_start(&ok);
    unsigned dead = free_port();
    unsigned ports[2] = {dead, ok.port};
    struct fixture f, only_dead;
    fixture_init(&f, ports, 2);
    fixture_init(&only_dead, ports, 1);
    char exp[256];
    snprintf(exp, sizeof exp, "connect to 127.0.0.1:%u: Connection refused", dead);

    struct job j;
    job_init(&j, &f, 1, "x\r\n", 3);
    j.req.fail_ttl_ms = 60000;
    run_job(&j);
    assert_int_equal(j.res[0].code, 250);
    assert_string_equal(j.error, exp); /* it was tried once */

    job_init(&j, &f, 1, "x\r\n", 3);
    j.req.fail_ttl_ms = 60000;
    run_job(&j);
    assert_int_equal(j.res[0].code, 250); /* fail-over without trying the dead one */
    assert_cached(j.error, dead, 60);
    assert_true(j.remote[0] != 0);

    job_init(&j, &only_dead, 1, "x\r\n", 3);
    j.req.fail_ttl_ms = 60000;
    run_job(&j);
    assert_int_equal(j.start_rc, -EHOSTUNREACH);
    assert_cached(j.start_error, dead, 60);

    /* flush: tried again */
    job_init(&j, &only_dead, 1, "x\r\n", 3);
    j.req.fail_ttl_ms = 60000;
    j.clear_fail_cache = true;
    run_job(&j);
    assert_int_equal(j.start_rc, 0);
    assert_string_equal(j.error, exp);
    assert_int_equal(j.res[0].code, 0);

    /* expiry: a short TTL runs out */
    job_init(&j, &only_dead, 1, "x\r\n", 3);
    j.req.fail_ttl_ms = 300;
    j.clear_fail_cache = true;
    run_job(&j); /* noted for 300 ms (run_job waits 100 ms after) */
    job_init(&j, &only_dead, 1, "x\r\n", 3);
    j.req.fail_ttl_ms = 300;
    run_job(&j);
    assert_int_equal(j.start_rc, -EHOSTUNREACH);
    assert_cached(j.start_error, dead, 1);
    usleep(400 * 1000);
    job_init(&j, &only_dead, 1, "x\r\n", 3);
    j.req.fail_ttl_ms = 300;
    run_job(&j);
    assert_int_equal(j.start_rc, 0);
    assert_string_equal(j.error, exp);

    /* without a TTL nothing is cached */
    job_init(&j, &f, 1, "x\r\n", 3);
    run_job(&j);
    assert_int_equal(j.res[0].code, 250);
    assert_string_equal(j.error, exp);
    script_stop(&ok);
    assert_int_equal(ok.served, 1); /* one connection, reused by every delivery */
}

static void test_bad_requests(void **state)
{
    (void)state;
    unsigned ports[1] = {free_port()};
    struct fixture f;
    fixture_init(&f, ports, 1);
    struct job j;
    job_init(&j, &f, 1, "x\r\n", 3);
    f.route.scheme = MX_ROUTE_MAILDIR;
    run_job(&j);
    assert_int_equal(j.start_rc, -ENOTSUP);
    job_init(&j, &f, 1, "x\r\n", 3);
    f.route.scheme = MX_ROUTE_SMTP;
    f.idx[0] = 9;
    run_job(&j);
    assert_int_equal(j.start_rc, -EINVAL);
}

static int setup(void **state)
{
    (void)state;
    struct mx_dataplane_params p = {
        .backend = "kernel",
        .workers = 1,
        .on_worker_init = worker_init,
    };
    if (mx_dataplane_init(&p) != 0)
        return -1;
    return mx_dataplane_start();
}

static int teardown(void **state)
{
    (void)state;
    mx_dataplane_stop(500);
    mx_dataplane_cleanup();
    return 0;
}

int main(int argc, char **argv)
{
    peer_script = argc > 1 ? argv[1] : NULL;
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failover_refused_then_delivered),
        cmocka_unit_test(test_all_hosts_refused),
        cmocka_unit_test(test_failover_421_greeting),
        cmocka_unit_test(test_lost_connection_after_rcpt),
        cmocka_unit_test(test_starttls_large),
        cmocka_unit_test(test_connection_reuse),
        cmocka_unit_test(test_reuse_dead_connection),
        cmocka_unit_test(test_chained_start_reuses),
        cmocka_unit_test(test_tls_failure_retries_plaintext),
        cmocka_unit_test(test_dest_concurrency_limit),
        cmocka_unit_test(test_fail_cache),
        cmocka_unit_test(test_bad_requests),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
