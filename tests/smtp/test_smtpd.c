/*
 * test_smtpd.c - the ESMTP server session, driven byte by byte with exact
 * expected replies: greeting, EHLO lines, every error code, pipelining in
 * one write, DATA transparency and smuggling inputs, BDAT, DSN parameters,
 * limits, relay tricks, STARTTLS with a real OpenSSL client over memory
 * BIOs (and the command-injection defence).
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "smtp/smtpd_internal.h"

/* ---- a fake embedder: records output, writes and commits -------------- */

struct fake {
    char out[65536];
    size_t out_len;
    unsigned writes; /* output() calls */
    bool closed;
    char msg[1 << 20];
    size_t msg_len;
    bool committed, aborted, pending;
    int begin_code;
    struct mx_envelope env;
    bool tricky_seen;
    SSL *cli; /* TLS client under test, when set */
    BIO *cli_in, *cli_out;
};

static void f_output(void *ud, const uint8_t *buf, size_t len)
{
    struct fake *f = ud;
    f->writes++;
    if (f->cli) { /* encrypted: hand to the TLS client */
        BIO_write(f->cli_in, buf, (int)len);
        return;
    }
    assert_true(f->out_len + len < sizeof f->out);
    memcpy(f->out + f->out_len, buf, len);
    f->out_len += len;
    f->out[f->out_len] = 0;
}

static void f_close(void *ud)
{
    ((struct fake *)ud)->closed = true;
}

static void f_rcpt(void *ud, const struct mx_envelope *env, const struct mx_rcpt *r, bool tricky,
                   struct mx_smtpd_reply *rep)
{
    (void)env;
    struct fake *f = ud;
    f->tricky_seen |= tricky;
    const char *at = strrchr(r->addr, '@');
    if (tricky || !at || strcmp(at + 1, "example.test") != 0) {
        rep->code = 554;
        rep->enh = "5.7.1";
        rep->text = "Relay access denied";
    }
}

static void f_data_begin(void *ud, const struct mx_envelope *env, struct mx_smtpd_reply *r)
{
    struct fake *f = ud;
    f->env = *env;
    f->msg_len = 0;
    if (f->begin_code) {
        r->code = f->begin_code;
        r->enh = "4.3.1";
        r->text = "Insufficient system storage";
    }
}

static int f_data_write(void *ud, const uint8_t *buf, size_t len)
{
    struct fake *f = ud;
    assert_true(f->msg_len + len < sizeof f->msg);
    memcpy(f->msg + f->msg_len, buf, len);
    f->msg_len += len;
    return 0;
}

static void f_data_end(void *ud, const struct mx_envelope *env, uint64_t size)
{
    struct fake *f = ud;
    f->env = *env;
    assert_int_equal(size, f->msg_len);
    f->pending = true;
}

static void f_data_abort(void *ud)
{
    ((struct fake *)ud)->aborted = true;
}

static const struct mx_smtpd_ops ops = {
    .output = f_output,
    .close = f_close,
    .rcpt = f_rcpt,
    .data_begin = f_data_begin,
    .data_write = f_data_write,
    .data_end = f_data_end,
    .data_abort = f_data_abort,
};

static struct fake F;
static struct mx_smtpd_session *S;

static struct mx_smtpd_params params(void)
{
    return (struct mx_smtpd_params){
        .hostname = "mx.test",
        .max_message_size = 10000,
        .max_message_total = 25000,
        .max_recipients = 3,
        .max_line_length = 512,
        .max_errors = 5,
        .max_commands = 100,
    };
}

static void start(struct mx_smtpd_params p)
{
    memset(&F, 0, sizeof F);
    S = mx_smtpd_session_new(&p, &ops, &F, NULL, 0);
    assert_non_null(S);
    mx_smtpd_session_greet(S);
    assert_string_equal(F.out, "220 mx.test ESMTP mxgate\r\n");
    F.out_len = 0;
    F.writes = 0;
}

static int setup(void **st)
{
    (void)st;
    start(params());
    return 0;
}

static int teardown(void **st)
{
    (void)st;
    mx_smtpd_session_free(S);
    S = NULL;
    return 0;
}

/* Feed text; return what the server wrote, and reset the capture. */
static const char *feed(const char *in)
{
    static char got[65536];
    F.out_len = 0;
    F.out[0] = 0;
    F.writes = 0;
    mx_smtpd_session_input(S, (const uint8_t *)in, strlen(in));
    memcpy(got, F.out, F.out_len + 1);
    return got;
}

static void commit_ok(void)
{
    assert_true(F.pending);
    F.pending = false;
    F.committed = true;
    F.out_len = 0;
    F.out[0] = 0;
    mx_smtpd_session_data_done(S, 0, "ABC123");
}

/* ---- tests ----------------------------------------------------------- */

static void test_ehlo_lines(void **st)
{
    (void)st;
    assert_string_equal(feed("EHLO client.test\r\n"), "250-mx.test\r\n"
                                                       "250-SIZE 10000\r\n"
                                                       "250-8BITMIME\r\n"
                                                       "250-PIPELINING\r\n"
                                                       "250-ENHANCEDSTATUSCODES\r\n"
                                                       "250-CHUNKING\r\n"
                                                       "250-SMTPUTF8\r\n"
                                                       "250 DSN\r\n");
    assert_string_equal(feed("HELO client.test\r\n"), "250 2.0.0 mx.test\r\n");
}

static void test_error_codes(void **st)
{
    (void)st;
    assert_string_equal(feed("EHLO\r\n"), "501 5.5.4 Syntax: EHLO hostname\r\n");
    assert_string_equal(feed("MAIL FROM:<a@b.test>\r\n"),
                        "503 5.5.1 Error: send HELO/EHLO first\r\n");
    feed("EHLO c.test\r\n");
    assert_string_equal(feed("FOO bar\r\n"), "500 5.5.2 Error: command not recognized\r\n");
    assert_string_equal(feed("RCPT TO:<x@example.test>\r\n"),
                        "503 5.5.1 Error: need MAIL command\r\n");
    assert_string_equal(feed("DATA\r\n"), "503 5.5.1 Error: need MAIL command\r\n");
    /* error limit 5: the sixth error is answered, then 421 and close */
    assert_false(F.closed);
    const char *r = feed("MAIL FROM:<a b@c>\r\n");
    assert_string_equal(r, "501 5.1.7 Bad sender address syntax\r\n"
                           "421 4.7.0 mx.test Error: too many errors\r\n");
    assert_true(F.closed);
}

static void test_sequence_and_rcpt_codes(void **st)
{
    (void)st;
    feed("EHLO c.test\r\n");
    assert_string_equal(feed("MAIL FROM:<>\r\n"), "250 2.1.0 Ok\r\n");
    assert_string_equal(feed("MAIL FROM:<a@b.test>\r\n"),
                        "503 5.5.1 Error: nested MAIL command\r\n");
    assert_string_equal(feed("DATA\r\n"), "554 5.5.1 Error: no valid recipients\r\n");
    assert_string_equal(feed("RCPT TO:<bad address>\r\n"),
                        "501 5.1.3 Bad recipient address syntax\r\n");
    assert_string_equal(feed("RCPT TO:<x@example.test> FOO=1\r\n"),
                        "555 5.5.4 Unsupported option: FOO=1\r\n");
    assert_string_equal(feed("VRFY x\r\n"),
                        "252 2.5.2 Cannot VRFY user, but will accept message and attempt "
                        "delivery\r\n");
    assert_string_equal(feed("NOOP\r\n"), "250 2.0.0 Ok\r\n");
    assert_string_equal(feed("RSET\r\n"), "250 2.0.0 Ok\r\n");
    assert_non_null(strstr(feed("HELP\r\n"), "214 2.0.0 "));
    assert_string_equal(feed("QUIT\r\n"), "221 2.0.0 Bye\r\n");
    assert_true(F.closed);
}

static void test_pipelining_one_write(void **st)
{
    (void)st;
    const char *r = feed("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n"
                         "RCPT TO:<y@example.test>\r\nDATA\r\n");
    assert_int_equal(F.writes, 1);
    assert_non_null(strstr(r, "250 DSN\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
                              "354 End data with <CR><LF>.<CR><LF>\r\n"));
    /* the body, the end and a pipelined next transaction in one chunk */
    r = feed("Subject: x\r\n\r\nbody\r\n.\r\nMAIL FROM:<c@d.test>\r\n");
    assert_string_equal(r, ""); /* nothing until the queue answers */
    assert_memory_equal(F.msg, "Subject: x\r\n\r\nbody\r\n", F.msg_len);
    commit_ok();
    assert_string_equal(F.out, "250 2.0.0 Ok: queued as ABC123\r\n250 2.1.0 Ok\r\n");
    assert_int_equal(F.env.n_rcpts, 2);
}

static void test_dot_transparency(void **st)
{
    (void)st;
    feed("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n");
    /* split at awkward places: inside CRLF, after the dot */
    const char *parts[] = {"..leading\r", "\n..\r\n.", "x\r\n", ".\r", "\n"};
    for (size_t i = 0; i < 5; i++)
        mx_smtpd_session_input(S, (const uint8_t *)parts[i], strlen(parts[i]));
    assert_true(F.pending);
    const char want[] = ".leading\r\n.\r\nx\r\n";
    assert_int_equal(F.msg_len, sizeof want - 1);
    assert_memory_equal(F.msg, want, sizeof want - 1);
    commit_ok();
}

/* Each smuggling form must not end the data; the message is refused at the real end. */
static void smuggle(const char *attack)
{
    feed("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n");
    char in[256];
    snprintf(in, sizeof in, "Subject: s\r\n\r\nhi%sMAIL FROM:<evil@x.test>\r\n", attack);
    assert_string_equal(feed(in), "");
    assert_false(F.pending);
    assert_string_equal(feed("\r\n.\r\n"),
                        "554 5.6.11 Error: bare CR or LF in message text (RFC 5321 2.3.8)\r\n");
    assert_false(F.pending);
    assert_true(F.aborted);
    F.aborted = false;
}

static void test_smuggling_rejected(void **st)
{
    (void)st;
    smuggle("\n.\n");
    smuggle("\r.\r");
    smuggle("\n.\r\n");
    smuggle("\r\n.\n");
    smuggle("\r\n.\r");
}

static void test_smuggling_normalized(void **st)
{
    (void)st;
    struct mx_smtpd_params p = params();
    p.bare_lf_normalize = true;
    mx_smtpd_session_free(S);
    start(p);
    feed("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n");
    assert_string_equal(feed("a\n.\nb\r\n.\r\n"), "");
    assert_true(F.pending);
    /* bare LFs became CRLF, and the dot after one is data, not an end marker */
    const char want[] = "a\r\n.\r\nb\r\n";
    assert_int_equal(F.msg_len, sizeof want - 1);
    assert_memory_equal(F.msg, want, sizeof want - 1);
    commit_ok();
}

static void test_bare_lf_command(void **st)
{
    (void)st;
    /* a bare LF is not a line end: the whole thing up to CRLF is one refused line */
    assert_string_equal(feed("EHLO c\n"), "");
    assert_string_equal(feed("NOOP\r\n"), "500 5.5.2 Error: bare LF in command line\r\n");
    assert_string_equal(feed("NOOP\rQUIT\r\n"),
                        "500 5.5.2 Error: bare CR or NUL in command line\r\n");
    assert_false(F.closed);
}

/* max_commands (100 here) limits commands that move no mail, not transactions */
static void test_command_limit(void **st)
{
    (void)st;
    feed("EHLO c\r\n");
    for (int i = 0; i < 60; i++) {
        feed("MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\nx\r\n.\r\n");
        commit_ok();
    }
    assert_false(F.closed);
    for (int i = 0; i < 100; i++)
        assert_string_equal(feed("NOOP\r\n"), "250 2.0.0 Ok\r\n");
    assert_string_equal(feed("NOOP\r\n"), "421 4.7.0 mx.test Error: too many commands\r\n");
    assert_true(F.closed);
}

static void test_line_too_long(void **st)
{
    (void)st;
    char big[700];
    memset(big, 'A', sizeof big);
    memcpy(big, "NOOP ", 5);
    memcpy(big + sizeof big - 3, "\r\n", 3);
    assert_string_equal(feed(big), "500 5.5.6 Error: line too long\r\n");
    assert_string_equal(feed("NOOP\r\n"), "250 2.0.0 Ok\r\n");
}

static void test_bdat(void **st)
{
    (void)st;
    feed("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n");
    assert_string_equal(feed("BDAT 5\r\nhelloBDAT 8 LAST\r\n wor"), "250 2.0.0 5 octets received\r\n");
    assert_string_equal(feed("ld\r\nNOOP\r\n"), "");
    assert_true(F.pending);
    assert_memory_equal(F.msg, "hello world\r\n", 13);
    commit_ok();
    assert_string_equal(F.out, "250 2.0.0 Ok: queued as ABC123\r\n250 2.0.0 Ok\r\n");
    /* BDAT without a transaction: refused, and its chunk is swallowed, not executed */
    assert_string_equal(feed("BDAT 6\r\nQUIT\r\nNOOP\r\n"),
                        "503 5.5.1 Error: need MAIL command\r\n250 2.0.0 Ok\r\n");
    assert_false(F.closed);
    /* DATA after BDAT in one transaction */
    feed("MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nBDAT 1\r\nx");
    assert_string_equal(feed("DATA\r\n"), "503 5.5.1 Error: DATA after BDAT\r\n");
}

static void test_dsn_params(void **st)
{
    (void)st;
    feed("EHLO c\r\n");
    assert_string_equal(feed("MAIL FROM:<a@b.test> RET=HDRS ENVID=QQ+2Bid BODY=8BITMIME "
                             "SIZE=100\r\n"),
                        "250 2.1.0 Ok\r\n");
    assert_string_equal(feed("RCPT TO:<x@example.test> NOTIFY=SUCCESS,FAILURE "
                             "ORCPT=rfc822;x+2Bt@example.test\r\n"),
                        "250 2.1.5 Ok\r\n");
    assert_string_equal(feed("RCPT TO:<y@example.test> NOTIFY=NEVER,DELAY\r\n"),
                        "501 5.5.4 Bad NOTIFY parameter\r\n");
    assert_string_equal(feed("RCPT TO:<y@example.test> ORCPT=rfc822;bad+Zq\r\n"),
                        "501 5.5.4 Bad ORCPT parameter\r\n");
    feed("DATA\r\n");
    feed("x\r\n.\r\n");
    assert_int_equal(F.env.ret, MX_RET_HDRS);
    assert_string_equal(F.env.envid, "QQ+id");
    assert_int_equal(F.env.body, MX_BODY_8BITMIME);
    assert_int_equal(F.env.size_param, 100);
    assert_int_equal(F.env.n_rcpts, 1);
    assert_int_equal(F.env.rcpts[0].notify, MX_NOTIFY_SUCCESS | MX_NOTIFY_FAILURE);
    assert_string_equal(F.env.rcpts[0].orcpt, "rfc822;x+t@example.test");
    commit_ok();
}

static void test_limits(void **st)
{
    (void)st;
    feed("EHLO c\r\n");
    assert_string_equal(feed("MAIL FROM:<a@b.test> SIZE=20000\r\n"),
                        "552 5.3.4 Message size exceeds fixed limit\r\n");
    /* 3 x 9000 > total 25000 */
    feed("MAIL FROM:<a@b.test> SIZE=9000\r\n");
    assert_string_equal(feed("RCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n"
                             "RCPT TO:<c@example.test>\r\n"),
                        "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Error: message size times "
                        "recipients exceeds the total limit\r\n");
    feed("RSET\r\nMAIL FROM:<a@b.test>\r\n");
    feed("RCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\n");
    assert_string_equal(feed("RCPT TO:<d@example.test>\r\n"),
                        "452 4.5.3 Error: too many recipients\r\n");
    /* actual size over the limit: refused after the data, never committed */
    feed("RSET\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<a@example.test>\r\nDATA\r\n");
    char line[1002];
    memset(line, 'x', 998);
    memcpy(line + 998, "\r\n", 3);
    for (int i = 0; i < 11; i++)
        feed(line);
    assert_string_equal(feed(".\r\n"), "552 5.3.4 Error: message too large (11000 bytes)\r\n");
    assert_false(F.pending);
    assert_true(F.aborted);
}

static void test_relay_tricks(void **st)
{
    (void)st;
    feed("EHLO c\r\nMAIL FROM:<a@b.test>\r\n");
    const char *tricks[] = {
        "RCPT TO:<v%other.test@example.test>\r\n",
        "RCPT TO:<other.test!v@example.test>\r\n",
        "RCPT TO:<@example.test:v@other.test>\r\n",
        "RCPT TO:<\"v@other.test\"@example.test>\r\n",
    };
    for (size_t i = 0; i < 4; i++)
        assert_string_equal(feed(tricks[i]), "554 5.7.1 Relay access denied\r\n");
    assert_true(F.tricky_seen);
    assert_string_equal(feed("RCPT TO:<postmaster>\r\n"), "554 5.7.1 Relay access denied\r\n");
}

static void test_queue_full(void **st)
{
    (void)st;
    F.begin_code = 452;
    feed("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n");
    assert_string_equal(feed("DATA\r\n"), "452 4.3.1 Insufficient system storage\r\n");
    F.begin_code = 0;
    assert_string_equal(feed("DATA\r\n"), "354 End data with <CR><LF>.<CR><LF>\r\n");
    feed("x\r\n.\r\n");
    F.pending = false;
    F.out_len = 0;
    mx_smtpd_session_data_done(S, -ENOSPC, NULL);
    assert_string_equal(F.out, "452 4.3.1 Insufficient system storage\r\n");
}

/* The queue refuses at once (inside data_end): no re-entry, pipelined input still served. */
static void f_data_end_sync(void *ud, const struct mx_envelope *env, uint64_t size)
{
    (void)ud, (void)env, (void)size;
    mx_smtpd_session_data_done(S, -ENOSPC, NULL);
}

static void test_commit_fails_at_once(void **st)
{
    (void)st;
    struct mx_smtpd_ops o = ops;
    o.data_end = f_data_end_sync;
    struct mx_smtpd_params p = params();
    mx_smtpd_session_free(S);
    memset(&F, 0, sizeof F);
    S = mx_smtpd_session_new(&p, &o, &F, NULL, 0);
    const char *r = feed("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n"
                         "x\r\n.\r\nNOOP\r\n");
    assert_non_null(strstr(r, "354 End data with <CR><LF>.<CR><LF>\r\n"
                              "452 4.3.1 Insufficient system storage\r\n250 2.0.0 Ok\r\n"));
    /* exactly one EHLO answer: the input was not processed twice */
    assert_int_equal(mx_smtpd_session_counts(S)->ehlo, 1);
}

static void test_hostile_parameters(void **st)
{
    (void)st;
    feed("EHLO c\r\n");
    /* xtext decoding to CR/LF would reach DSN headers */
    assert_string_equal(feed("MAIL FROM:<a@b.test> ENVID=x+0D+0AInjected:1\r\n"),
                        "501 5.5.4 Bad ENVID parameter\r\n");
    assert_string_equal(feed("MAIL FROM:<a@b.test> RET=FULL RET=HDRS\r\n"),
                        "501 5.5.4 Duplicate MAIL parameter\r\n");
    feed("MAIL FROM:<a@b.test>\r\n");
    assert_string_equal(feed("RCPT TO:<x@example.test> NOTIFY=FAILURE NOTIFY=NEVER\r\n"),
                        "501 5.5.4 Duplicate RCPT parameter\r\n");
    /* an escaped @ in a quoted local part is a relay trick too */
    assert_string_equal(feed("RCPT TO:<\"a\\@evil.test\"@example.test>\r\n"),
                        "554 5.7.1 Relay access denied\r\n");
    /* a BDAT whose size cannot be read: the stream cannot be resynchronised */
    assert_string_equal(feed("BDAT 19x\r\nRCPT TO:<v@example.test>\r\n"),
                        "501 5.5.4 Syntax: BDAT size [LAST]\r\n");
    assert_true(F.closed);
}

/* ---- STARTTLS with a real TLS client ---------------------------------- */

static SSL_CTX *server_ctx(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"mx.test", -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509_sign(x, key, EVP_sha256());
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_use_certificate(ctx, x);
    SSL_CTX_use_PrivateKey(ctx, key);
    X509_free(x);
    EVP_PKEY_free(key);
    return ctx;
}

/* Move bytes between the client and the session until neither has more. */
static void tls_pump(void)
{
    for (int i = 0; i < 50; i++) {
        int r = SSL_do_handshake(F.cli);
        (void)r;
        uint8_t buf[16384];
        int n = BIO_read(F.cli_out, buf, sizeof buf);
        if (n <= 0 && SSL_is_init_finished(F.cli))
            break;
        if (n > 0)
            mx_smtpd_session_input(S, buf, (size_t)n);
    }
}

static const char *tls_cmd(const char *cmd)
{
    static char got[4096];
    SSL_write(F.cli, cmd, (int)strlen(cmd));
    uint8_t buf[16384];
    int n = BIO_read(F.cli_out, buf, sizeof buf);
    if (n > 0)
        mx_smtpd_session_input(S, buf, (size_t)n);
    int r = SSL_read(F.cli, got, sizeof got - 1);
    got[r > 0 ? r : 0] = 0;
    return got;
}

static void test_starttls_and_injection(void **st)
{
    (void)st;
    SSL_CTX *sctx = server_ctx();
    struct mx_smtpd_params p = params();
    p.tls_ctx = (struct ssl_ctx_st *)sctx;
    mx_smtpd_session_free(S);
    start(p);
    assert_non_null(strstr(feed("EHLO c\r\n"), "250-DSN\r\n250 STARTTLS\r\n"));
    /* a MAIL pipelined in the same packet as STARTTLS must be discarded */
    assert_string_equal(feed("STARTTLS\r\nMAIL FROM:<inject@x.test>\r\n"),
                        "220 2.0.0 Ready to start TLS\r\n");
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    F.cli = SSL_new(cctx);
    F.cli_in = BIO_new(BIO_s_mem());
    F.cli_out = BIO_new(BIO_s_mem());
    SSL_set_bio(F.cli, F.cli_in, F.cli_out);
    SSL_set_connect_state(F.cli);
    tls_pump();
    assert_true(SSL_is_init_finished(F.cli));
    assert_int_equal(mx_smtpd_session_state(S), SMTPD_CMD);
    /* the injected MAIL was not executed: RCPT has no transaction, EHLO is required again */
    assert_string_equal(tls_cmd("MAIL FROM:<a@b.test>\r\n"),
                        "503 5.5.1 Error: send HELO/EHLO first\r\n");
    const char *ehlo = tls_cmd("EHLO c\r\n");
    assert_non_null(strstr(ehlo, "250 DSN\r\n"));
    assert_null(strstr(ehlo, "STARTTLS"));
    assert_string_equal(tls_cmd("STARTTLS\r\n"), "554 5.5.1 Error: TLS already active\r\n");
    assert_non_null(strstr(mx_smtpd_session_envelope(S)->tls, "TLS"));
    SSL_free(F.cli);
    F.cli = NULL;
    SSL_CTX_free(cctx);
    mx_smtpd_session_free(S);
    S = NULL;
    SSL_CTX_free(sctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ehlo_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_codes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sequence_and_rcpt_codes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelining_one_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dot_transparency, setup, teardown),
        cmocka_unit_test_setup_teardown(test_smuggling_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_smuggling_normalized, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bare_lf_command, setup, teardown),
        cmocka_unit_test_setup_teardown(test_line_too_long, setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bdat, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dsn_params, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relay_tricks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_fails_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_parameters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_starttls_and_injection, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
