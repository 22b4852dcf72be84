/*
 * test_smtp_client.c - the SMTP client state machine (smtp/client.c) driven
 * by scripted server replies: exact command bytes sent, per-recipient
 * results, pipelining, BDAT, DSN parameters, dot-stuffing, connection reuse
 * and failure texts.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "queue/queue.h"
#include "smtp/smtp.h"

/* ---- harness ---------------------------------------------------------- */

struct h {
    struct mx_smtp_client *c;
    struct mx_envelope env;
    struct mx_rcpt rcpts[4];
    size_t idx[4];
    struct mx_smtp_client_msg msg;
    char *sent;
    size_t sent_len, sent_cap;
};

/** Take everything the client wants to send. */
static void pump(struct h *h)
{
    for (int guard = 0; guard < 100000; guard++) {
        size_t n;
        const uint8_t *p = mx_smtp_client_output(h->c, &n);
        if (!n)
            return;
        if (h->sent_len + n + 1 > h->sent_cap) {
            h->sent_cap = (h->sent_len + n + 1) * 2;
            h->sent = realloc(h->sent, h->sent_cap);
            assert_non_null(h->sent);
        }
        memcpy(h->sent + h->sent_len, p, n);
        h->sent_len += n;
        h->sent[h->sent_len] = 0;
        mx_smtp_client_output_done(h->c, n);
    }
    fail_msg("client output does not end");
}

/** The server says s (all at once). */
static int srv(struct h *h, const char *s)
{
    int rc = mx_smtp_client_input(h->c, (const uint8_t *)s, strlen(s));
    pump(h);
    return rc;
}

/** Assert the client sent exactly exp since the last check. */
static void sent(struct h *h, const char *exp)
{
    assert_string_equal(h->sent_len ? h->sent : "", exp);
    h->sent_len = 0;
    if (h->sent)
        h->sent[0] = 0;
}

static struct h *h_new(unsigned ignore_ext)
{
    struct h *h = calloc(1, sizeof *h);
    assert_non_null(h);
    struct mx_smtp_client_params p = {.helo_name = "gw.example.org", .ignore_ext = ignore_ext};
    assert_int_equal(mx_smtp_client_new(&p, &h->c), 0);
    snprintf(h->env.mail_from, sizeof h->env.mail_from, "alice@example.com");
    const char *addrs[] = {"bob@dest.test", "carol@dest.test", "dave@dest.test", "eve@dest.test"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(h->rcpts[i].addr, sizeof h->rcpts[i].addr, "%s", addrs[i]);
        h->idx[i] = i;
    }
    h->env.rcpts = h->rcpts;
    h->env.n_rcpts = 4;
    h->msg = (struct mx_smtp_client_msg){.env = &h->env, .rcpt_idx = h->idx, .n_rcpt = 2};
    return h;
}

static void h_free(struct h *h)
{
    mx_smtp_client_free(h->c);
    free(h->sent);
    free(h);
}

static void set_body(struct h *h, const char *body)
{
    h->msg.data = (const uint8_t *)body;
    h->msg.len = strlen(body);
}

/** Greeting and EHLO with the given extension lines ("" for none). */
static void hello(struct h *h, const char *ext_lines)
{
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_BUSY);
    assert_int_equal(mx_smtp_client_timeout_ms(h->c), 300000);
    srv(h, "220 mx.dest.test ESMTP\r\n");
    sent(h, "EHLO gw.example.org\r\n");
    char buf[1024];
    snprintf(buf, sizeof buf, "250%smx.dest.test hello\r\n%s", ext_lines[0] ? "-" : " ",
             ext_lines);
    assert_int_equal(srv(h, buf), 0);
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_READY);
}

static void expect_result(struct h *h, size_t i, int code, const char *enh, const char *text)
{
    size_t n;
    const struct mx_smtp_rcpt_result *r = mx_smtp_client_results(h->c, &n);
    assert_true(i < n);
    assert_int_equal(r[i].code, code);
    assert_string_equal(r[i].enh, enh);
    if (text)
        assert_string_equal(r[i].text, text);
}

/* ---- tests ------------------------------------------------------------ */

/** No PIPELINING: one command per round trip; exact bytes; QUIT. */
static void test_lockstep(void **state)
{
    (void)state;
    struct h *h = h_new(0);
    hello(h, "250-SIZE 1000000\r\n250 ENHANCEDSTATUSCODES\r\n");
    assert_int_equal(mx_smtp_client_extensions(h->c),
                     MX_SMTP_EXT_SIZE | MX_SMTP_EXT_ENHANCEDSTATUSCODES);
    assert_int_equal(mx_smtp_client_size_limit(h->c), 1000000);
    set_body(h, "Subject: hi\r\n\r\nbody\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "MAIL FROM:<alice@example.com> SIZE=21\r\n");
    assert_int_equal(mx_smtp_client_timeout_ms(h->c), 300000);
    srv(h, "250 2.1.0 Ok\r\n");
    sent(h, "RCPT TO:<bob@dest.test>\r\n");
    srv(h, "250 2.1.5 Ok\r\n");
    sent(h, "RCPT TO:<carol@dest.test>\r\n");
    srv(h, "250 2.1.5 Ok\r\n");
    sent(h, "DATA\r\n");
    assert_int_equal(mx_smtp_client_timeout_ms(h->c), 120000);
    srv(h, "354 End data with <CR><LF>.<CR><LF>\r\n");
    sent(h, "Subject: hi\r\n\r\nbody\r\n.\r\n");
    assert_int_equal(mx_smtp_client_timeout_ms(h->c), 600000);
    srv(h, "250 2.0.0 Ok: queued as ABC\r\n");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_TXN_DONE);
    expect_result(h, 0, 250, "2.0.0", "Ok: queued as ABC");
    expect_result(h, 1, 250, "2.0.0", "Ok: queued as ABC");
    assert_int_equal(mx_smtp_client_quit(h->c), 0);
    pump(h);
    sent(h, "QUIT\r\n");
    srv(h, "221 2.0.0 Bye\r\n");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_CLOSED);
    assert_string_equal(mx_smtp_client_error(h->c), "");
    h_free(h);
}

/** PIPELINING: MAIL, every RCPT and DATA in one write; mixed answers. */
static void test_pipelining_mixed(void **state)
{
    (void)state;
    struct h *h = h_new(0);
    hello(h, "250-PIPELINING\r\n250 8BITMIME\r\n");
    h->msg.n_rcpt = 3;
    set_body(h, "x\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "MAIL FROM:<alice@example.com>\r\n"
            "RCPT TO:<bob@dest.test>\r\n"
            "RCPT TO:<carol@dest.test>\r\n"
            "RCPT TO:<dave@dest.test>\r\n"
            "DATA\r\n");
    srv(h, "250 ok\r\n250 ok\r\n451 4.7.1 try later\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n354 go\r\n");
    sent(h, "x\r\n.\r\n");
    srv(h, "250 2.0.0 queued\r\n");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_TXN_DONE);
    expect_result(h, 0, 250, "2.0.0", "queued");
    expect_result(h, 1, 451, "4.7.1", "try later");
    expect_result(h, 2, 550, "5.1.1", "no such user");
    h_free(h);
}

/** Message-level failure applies only to the accepted recipients. */
static void test_message_reply_to_accepted_only(void **state)
{
    (void)state;
    struct h *h = h_new(0);
    hello(h, "250 PIPELINING\r\n");
    set_body(h, "x\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@dest.test>\r\n"
            "RCPT TO:<carol@dest.test>\r\nDATA\r\n");
    srv(h, "250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n354 go\r\n");
    sent(h, "x\r\n.\r\n");
    srv(h, "554 5.7.1 spam\r\n");
    expect_result(h, 0, 550, "5.1.1", "unknown");
    expect_result(h, 1, 554, "5.7.1", "spam");
    h_free(h);
}

/** Pipelined, every RCPT refused but DATA got 354: an empty message ends it. */
static void test_pipelining_all_rcpt_refused(void **state)
{
    (void)state;
    struct h *h = h_new(0);
    hello(h, "250 PIPELINING\r\n");
    set_body(h, "secret\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    h->sent_len = 0;
    srv(h, "250 ok\r\n550 no\r\n550 no\r\n354 go\r\n");
    sent(h, ".\r\n");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_BUSY);
    srv(h, "554 no valid recipients\r\n");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_TXN_DONE);
    expect_result(h, 0, 550, "", "no");
    expect_result(h, 1, 550, "", "no");
    h_free(h);
}

/** BODY=8BITMIME only when the envelope says so and the server offers it. */
static void test_8bitmime(void **state)
{
    (void)state;
    struct h *h = h_new(0);
    hello(h, "250 8BITMIME\r\n");
    h->env.body = MX_BODY_8BITMIME;
    h->msg.n_rcpt = 1;
    set_body(h, "caf\xc3\xa9\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "MAIL FROM:<alice@example.com> BODY=8BITMIME\r\n");
    h_free(h);

    /* Not offered: delivered anyway, without the parameter (documented choice). */
    h = h_new(0);
    hello(h, "250 SIZE\r\n");
    h->env.body = MX_BODY_8BITMIME;
    h->msg.n_rcpt = 1;
    set_body(h, "caf\xc3\xa9\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "MAIL FROM:<alice@example.com> SIZE=7\r\n");
    srv(h, "250 ok\r\n");
    sent(h, "RCPT TO:<bob@dest.test>\r\n");
    srv(h, "250 ok\r\n");
    sent(h, "DATA\r\n");
    srv(h, "354 go\r\n");
    sent(h, "caf\xc3\xa9\r\n.\r\n");
    h_free(h);
}

/** CHUNKING: BDAT chunks, raw (no dot-stuffing), after the RCPT replies. */
static void test_chunking_bdat(void **state)
{
    (void)state;
    struct h *h = calloc(1, sizeof *h);
    struct mx_smtp_client_params p = {.helo_name = "gw", .bdat_chunk = 10};
    assert_int_equal(mx_smtp_client_new(&p, &h->c), 0);
    snprintf(h->env.mail_from, sizeof h->env.mail_from, "a@b");
    snprintf(h->rcpts[0].addr, sizeof h->rcpts[0].addr, "c@d");
    h->env.rcpts = h->rcpts;
    h->env.n_rcpts = 1;
    h->msg = (struct mx_smtp_client_msg){.env = &h->env, .rcpt_idx = h->idx, .n_rcpt = 1};
    set_body(h, ".dot\r\n..x\r\nlast line!"); /* 21 bytes: 10 + 10 + 1 */
    srv(h, "220 hi\r\n");
    sent(h, "EHLO gw\r\n");
    srv(h, "250-hi\r\n250-CHUNKING\r\n250 PIPELINING\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
    srv(h, "250 ok\r\n250 ok\r\n");
    sent(h, "BDAT 10\r\n.dot\r\n..x\rBDAT 10\r\n\nlast lineBDAT 1 LAST\r\n!");
    srv(h, "250 2.0.0 chunk\r\n250 2.0.0 chunk\r\n");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_BUSY);
    srv(h, "250 2.0.0 done\r\n");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_TXN_DONE);
    expect_result(h, 0, 250, "2.0.0", "done");
    h_free(h);

    /* Without PIPELINING each chunk waits for the previous reply. */
    h = h_new(0);
    hello(h, "250 CHUNKING\r\n");
    h->msg.n_rcpt = 1;
    set_body(h, "0123456789abc");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "MAIL FROM:<alice@example.com>\r\n");
    srv(h, "250 ok\r\n");
    sent(h, "RCPT TO:<bob@dest.test>\r\n");
    srv(h, "250 ok\r\n");
    sent(h, "BDAT 13 LAST\r\n0123456789abc");
    srv(h, "250 got it\r\n");
    expect_result(h, 0, 250, "", "got it");
    h_free(h);
}

/** A refused BDAT chunk fails the message; no further chunk is sent. */
static void test_chunking_refused(void **state)
{
    (void)state;
    struct h *h = calloc(1, sizeof *h);
    struct mx_smtp_client_params p = {.helo_name = "gw", .bdat_chunk = 4};
    assert_int_equal(mx_smtp_client_new(&p, &h->c), 0);
    snprintf(h->env.mail_from, sizeof h->env.mail_from, "a@b");
    snprintf(h->rcpts[0].addr, sizeof h->rcpts[0].addr, "c@d");
    h->env.rcpts = h->rcpts;
    h->env.n_rcpts = 1;
    h->msg = (struct mx_smtp_client_msg){.env = &h->env, .rcpt_idx = h->idx, .n_rcpt = 1};
    set_body(h, "aaaabbbbcccc");
    srv(h, "220 hi\r\n");
    srv(h, "250-hi\r\n250 CHUNKING\r\n");
    h->sent_len = 0;
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    srv(h, "250 ok\r\n");
    srv(h, "250 ok\r\n");
    sent(h, "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 4\r\naaaa");
    srv(h, "552 5.3.4 too big\r\n");
    sent(h, "");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_TXN_DONE);
    expect_result(h, 0, 552, "5.3.4", "too big");
    /* The next transaction starts with RSET. */
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "RSET\r\n");
    h_free(h);
}

/** DSN parameters only when the server offers DSN; ORCPT and ENVID as xtext. */
static void test_dsn_params(void **state)
{
    (void)state;
    for (int offered = 0; offered < 2; offered++) {
        struct h *h = h_new(0);
        hello(h, offered ? "250-DSN\r\n250 PIPELINING\r\n" : "250 PIPELINING\r\n");
        h->env.ret = MX_RET_HDRS;
        snprintf(h->env.envid, sizeof h->env.envid, "QID+1=x");
        h->rcpts[0].notify = MX_NOTIFY_FAILURE | MX_NOTIFY_DELAY;
        snprintf(h->rcpts[0].orcpt, sizeof h->rcpts[0].orcpt, "rfc822;Bob+tag@dest.test");
        h->rcpts[1].notify = MX_NOTIFY_NEVER;
        set_body(h, "x\r\n");
        assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
        pump(h);
        if (offered)
            sent(h, "MAIL FROM:<alice@example.com> RET=HDRS ENVID=QID+2B1+3Dx\r\n"
                    "RCPT TO:<bob@dest.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;Bob+2Btag@dest.test\r\n"
                    "RCPT TO:<carol@dest.test> NOTIFY=NEVER\r\n"
                    "DATA\r\n");
        else
            sent(h, "MAIL FROM:<alice@example.com>\r\n"
                    "RCPT TO:<bob@dest.test>\r\n"
                    "RCPT TO:<carol@dest.test>\r\n"
                    "DATA\r\n");
        h_free(h);
    }
}

/** SMTPUTF8 parameter when offered; refused locally (5.6.7) when needed and not offered. */
static void test_smtputf8(void **state)
{
    (void)state;
    struct h *h = h_new(0);
    hello(h, "250-SMTPUTF8\r\n250 8BITMIME\r\n");
    h->env.smtputf8 = true;
    h->env.body = MX_BODY_8BITMIME;
    snprintf(h->rcpts[0].addr, sizeof h->rcpts[0].addr, "j\xc3\xb6rg@dest.test");
    h->msg.n_rcpt = 1;
    set_body(h, "x\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "MAIL FROM:<alice@example.com> BODY=8BITMIME SMTPUTF8\r\n");
    h_free(h);

    h = h_new(0);
    hello(h, "250 8BITMIME\r\n");
    h->env.smtputf8 = true;
    snprintf(h->rcpts[0].addr, sizeof h->rcpts[0].addr, "j\xc3\xb6rg@dest.test");
    set_body(h, "x\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_TXN_DONE);
    expect_result(h, 0, 550, "5.6.7", "SMTPUTF8 is required, but was not offered by host");
    expect_result(h, 1, 550, "5.6.7", NULL);
    /* Nothing was sent, so the next transaction needs no RSET. */
    snprintf(h->rcpts[0].addr, sizeof h->rcpts[0].addr, "plain@dest.test");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "MAIL FROM:<alice@example.com>\r\n");
    h_free(h);
}

/** SIZE over the server's announced limit: refused without sending. */
static void test_size_limit(void **state)
{
    (void)state;
    struct h *h = h_new(0);
    hello(h, "250 SIZE 10\r\n");
    set_body(h, "0123456789ABCDEF\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "");
    expect_result(h, 0, 552, "5.3.4", "message size 18 exceeds size limit 10 of server");
    h_free(h);
}

/** 4xx/5xx greetings end the session before EHLO (next host). */
static void test_bad_greeting(void **state)
{
    (void)state;
    struct h *h = h_new(0);
    srv(h, "421 4.3.2 busy, try later\r\n");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_CLOSED);
    assert_true(mx_smtp_client_setup_failed(h->c));
    assert_string_equal(mx_smtp_client_error(h->c), "421 4.3.2 busy, try later (after CONNECT)");
    sent(h, "");
    h_free(h);

    h = h_new(0);
    srv(h, "554-mx.dest.test\r\n554 no service for you\r\n");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_CLOSED);
    assert_true(mx_smtp_client_setup_failed(h->c));
    assert_string_equal(mx_smtp_client_error(h->c), "greeting: 554 mx.dest.test no service for you");
    sent(h, "QUIT\r\n");
    h_free(h);
}

/** EHLO refused with 5xx: HELO, and no extensions used. */
static void test_helo_fallback(void **state)
{
    (void)state;
    struct h *h = h_new(0);
    srv(h, "220 old server\r\n");
    sent(h, "EHLO gw.example.org\r\n");
    srv(h, "502 5.5.2 command not recognized\r\n");
    sent(h, "HELO gw.example.org\r\n");
    srv(h, "250 hello\r\n");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_READY);
    assert_int_equal(mx_smtp_client_extensions(h->c), 0);
    h->env.body = MX_BODY_8BITMIME;
    set_body(h, "x\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "MAIL FROM:<alice@example.com>\r\n");
    h_free(h);
}

/** MAIL refused: every recipient gets MAIL's answer, no RCPT is sent. */
static void test_mail_refused(void **state)
{
    (void)state;
    struct h *h = h_new(0);
    hello(h, "250 ENHANCEDSTATUSCODES\r\n");
    set_body(h, "x\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "MAIL FROM:<alice@example.com>\r\n");
    srv(h, "553 5.7.1 sender rejected\r\n");
    sent(h, "");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_TXN_DONE);
    expect_result(h, 0, 553, "5.7.1", "sender rejected");
    expect_result(h, 1, 553, "5.7.1", "sender rejected");
    h_free(h);

    /* Pipelined: the 503s that follow do not overwrite MAIL's answer. */
    h = h_new(0);
    hello(h, "250 PIPELINING\r\n");
    set_body(h, "x\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    h->sent_len = 0;
    srv(h, "451 4.3.0 temp\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n503 5.5.1 no\r\n");
    sent(h, "");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_TXN_DONE);
    expect_result(h, 0, 451, "4.3.0", "temp");
    expect_result(h, 1, 451, "4.3.0", "temp");
    h_free(h);
}

/** Lines starting with '.' are doubled; a missing final CRLF is added. */
static void test_dot_stuffing(void **state)
{
    (void)state;
    struct h *h = h_new(0);
    hello(h, "250 PIPELINING\r\n");
    h->msg.n_rcpt = 1;
    set_body(h, ".hello\r\n..x\r\nmid.dle\r\n.\r\n.\r\nend");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    h->sent_len = 0;
    srv(h, "250 ok\r\n250 ok\r\n354 go\r\n");
    sent(h, "..hello\r\n...x\r\nmid.dle\r\n..\r\n..\r\nend\r\n.\r\n");
    h_free(h);

    /* Bigger than one output slice: stuffing state carries across slices. */
    h = h_new(0);
    hello(h, "250 PIPELINING\r\n");
    h->msg.n_rcpt = 1;
    size_t n = 200000;
    char *big = malloc(n + 1);
    for (size_t i = 0; i < n; i += 4)
        memcpy(big + i, ".a\r\n", 4); /* every line starts with a dot */
    big[n] = 0;
    set_body(h, big);
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    h->sent_len = 0;
    srv(h, "250 ok\r\n250 ok\r\n354 go\r\n");
    assert_int_equal(h->sent_len, n / 4 * 5 + 3);
    for (size_t i = 0; i < n / 4; i++)
        assert_memory_equal(h->sent + i * 5, "..a\r\n", 5);
    assert_memory_equal(h->sent + n / 4 * 5, ".\r\n", 3);
    free(big);
    h_free(h);
}

/** Connection reuse: RSET leads the second transaction. */
static void test_rset_second_message(void **state)
{
    (void)state;
    struct h *h = h_new(0);
    hello(h, "250 PIPELINING\r\n");
    h->msg.n_rcpt = 1;
    set_body(h, "one\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    h->sent_len = 0;
    srv(h, "250 ok\r\n250 ok\r\n354 go\r\n");
    sent(h, "one\r\n.\r\n");
    srv(h, "250 first\r\n");
    expect_result(h, 0, 250, "", "first");

    h->msg.rcpt_idx = h->idx + 2; /* dave */
    set_body(h, "two\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "RSET\r\nMAIL FROM:<alice@example.com>\r\nRCPT TO:<dave@dest.test>\r\nDATA\r\n");
    srv(h, "250 flushed\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    sent(h, "two\r\n.\r\n");
    srv(h, "250 second\r\n");
    expect_result(h, 0, 250, "", "second");
    assert_int_equal(mx_smtp_client_quit(h->c), 0);
    pump(h);
    sent(h, "QUIT\r\n");
    mx_smtp_client_eof(h->c, 0); /* server closed without 221: fine after QUIT */
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_CLOSED);
    assert_string_equal(mx_smtp_client_error(h->c), "");
    h_free(h);

    /* Lockstep: RSET alone first. */
    h = h_new(0);
    hello(h, "250 SIZE\r\n");
    h->msg.n_rcpt = 1;
    set_body(h, "x\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    srv(h, "250 ok\r\n");
    srv(h, "250 ok\r\n");
    srv(h, "354 go\r\n");
    srv(h, "250 ok\r\n");
    h->sent_len = 0;
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "RSET\r\n");
    srv(h, "250 ok\r\n");
    sent(h, "MAIL FROM:<alice@example.com> SIZE=3\r\n");
    h_free(h);
}

/** Connection lost or timed out mid-transaction: texts and temporary results. */
static void test_lost_and_timeout(void **state)
{
    (void)state;
    struct h *h = h_new(0);
    hello(h, "");
    set_body(h, "x\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    srv(h, "250 ok\r\n");
    srv(h, "550 5.1.1 unknown user\r\n");
    mx_smtp_client_eof(h->c, 0);
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_CLOSED);
    assert_false(mx_smtp_client_setup_failed(h->c));
    assert_string_equal(mx_smtp_client_error(h->c), "lost connection after RCPT");
    expect_result(h, 0, 550, "5.1.1", "unknown user");
    expect_result(h, 1, 0, "", "lost connection after RCPT");
    h_free(h);

    h = h_new(0);
    hello(h, "");
    set_body(h, "x\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    srv(h, "250 ok\r\n");
    srv(h, "250 ok\r\n");
    srv(h, "250 ok\r\n");
    mx_smtp_client_timeout(h->c);
    assert_string_equal(mx_smtp_client_error(h->c), "timeout after DATA");
    expect_result(h, 0, 0, "", "timeout after DATA");
    expect_result(h, 1, 0, "", "timeout after DATA");
    h_free(h);

    h = h_new(0);
    mx_smtp_client_timeout(h->c);
    assert_string_equal(mx_smtp_client_error(h->c), "timeout after CONNECT");
    assert_true(mx_smtp_client_setup_failed(h->c));
    h_free(h);
}

/** Garbage from the server ends the session; input split byte by byte still parses. */
static void test_garbage_and_split(void **state)
{
    (void)state;
    struct h *h = h_new(0);
    assert_int_equal(srv(h, "HTTP/1.1 400 Bad Request\r\n"), -EPROTO);
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_CLOSED);
    assert_string_equal(mx_smtp_client_error(h->c), "malformed reply after CONNECT");
    h_free(h);

    h = h_new(0);
    hello(h, "");
    assert_int_equal(srv(h, "250 nobody asked\r\n"), -EPROTO);
    assert_string_equal(mx_smtp_client_error(h->c), "unexpected reply after IDLE: 250 nobody asked");
    h_free(h);

    h = h_new(0);
    const char *script = "220-a\r\n220 b\r\n";
    for (const char *p = script; *p; p++)
        assert_int_equal(mx_smtp_client_input(h->c, (const uint8_t *)p, 1), 0);
    pump(h);
    sent(h, "EHLO gw.example.org\r\n");
    const char *ehlo = "250-x\r\n250-pipelining\r\n250-SIZE 52428800\r\n250 CHUNKING\r\n";
    for (const char *p = ehlo; *p; p++)
        assert_int_equal(mx_smtp_client_input(h->c, (const uint8_t *)p, 1), 0);
    assert_int_equal(mx_smtp_client_extensions(h->c),
                     MX_SMTP_EXT_PIPELINING | MX_SMTP_EXT_SIZE | MX_SMTP_EXT_CHUNKING);
    assert_int_equal(mx_smtp_client_size_limit(h->c), 52428800);
    h_free(h);

    /* An overlong reply line is truncated, not fatal. */
    h = h_new(0);
    char *longl = malloc(5000);
    memset(longl, 'x', 5000);
    memcpy(longl, "220 ", 4);
    memcpy(longl + 4996, "\r\n", 3);
    assert_int_equal(srv(h, longl), 0);
    sent(h, "EHLO gw.example.org\r\n");
    free(longl);
    h_free(h);
}

/** ignore_ext: the driver can switch off an offered extension. */
static void test_ignore_ext(void **state)
{
    (void)state;
    struct h *h = h_new(MX_SMTP_EXT_PIPELINING | MX_SMTP_EXT_CHUNKING);
    hello(h, "250-PIPELINING\r\n250 CHUNKING\r\n");
    set_body(h, "x\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    sent(h, "MAIL FROM:<alice@example.com>\r\n");
    h_free(h);
}

/** 421 in the middle: temporary for everyone still open, session over. */
static void test_421_mid_transaction(void **state)
{
    (void)state;
    struct h *h = h_new(0);
    hello(h, "250 PIPELINING\r\n");
    set_body(h, "x\r\n");
    assert_int_equal(mx_smtp_client_send(h->c, &h->msg), 0);
    pump(h);
    srv(h, "250 ok\r\n550 5.1.1 nope\r\n421 4.4.2 shutting down\r\n");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_CLOSED);
    expect_result(h, 0, 550, "5.1.1", "nope");
    expect_result(h, 1, 421, "4.4.2", NULL);
    assert_string_equal(mx_smtp_client_error(h->c), "421 4.4.2 shutting down (after RCPT)");
    h_free(h);
}

/** STARTTLS: refused -> plaintext goes on; plaintext after the 220 -> session fails. */
static void test_starttls_refused_and_injection(void **state)
{
    (void)state;
    struct h *h = calloc(1, sizeof *h);
    struct mx_smtp_client_params p = {.helo_name = "gw", .starttls = true};
    assert_int_equal(mx_smtp_client_new(&p, &h->c), 0);
    srv(h, "220 hi\r\n");
    sent(h, "EHLO gw\r\n");
    srv(h, "250-hi\r\n250 STARTTLS\r\n");
    sent(h, "STARTTLS\r\n");
    srv(h, "454 4.7.0 TLS not available\r\n");
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_READY);
    assert_string_equal(mx_smtp_client_tls(h->c), "");
    h_free(h);

    h = calloc(1, sizeof *h);
    assert_int_equal(mx_smtp_client_new(&p, &h->c), 0);
    srv(h, "220 hi\r\n");
    srv(h, "250-hi\r\n250 STARTTLS\r\n");
    sent(h, "EHLO gw\r\nSTARTTLS\r\n");
    /* A man in the middle appends a reply that would be read as if it came over TLS. */
    assert_int_equal(srv(h, "220 go ahead\r\n250-evil\r\n250 AUTH PLAIN\r\n"), -EPROTO);
    assert_int_equal(mx_smtp_client_state(h->c), MX_SMTPC_CLOSED);
    assert_true(mx_smtp_client_setup_failed(h->c));
    assert_string_equal(mx_smtp_client_error(h->c),
                        "plaintext after STARTTLS reply (response injection?)");
    sent(h, "");
    h_free(h);

    /* Without starttls in the params, an offered STARTTLS is not used. */
    h = h_new(0);
    hello(h, "250 STARTTLS\r\n");
    assert_true(mx_smtp_client_extensions(h->c) & MX_SMTP_EXT_STARTTLS);
    h_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lockstep),
        cmocka_unit_test(test_pipelining_mixed),
        cmocka_unit_test(test_message_reply_to_accepted_only),
        cmocka_unit_test(test_pipelining_all_rcpt_refused),
        cmocka_unit_test(test_8bitmime),
        cmocka_unit_test(test_chunking_bdat),
        cmocka_unit_test(test_chunking_refused),
        cmocka_unit_test(test_dsn_params),
        cmocka_unit_test(test_smtputf8),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_bad_greeting),
        cmocka_unit_test(test_helo_fallback),
        cmocka_unit_test(test_mail_refused),
        cmocka_unit_test(test_dot_stuffing),
        cmocka_unit_test(test_rset_second_message),
        cmocka_unit_test(test_lost_and_timeout),
        cmocka_unit_test(test_garbage_and_split),
        cmocka_unit_test(test_ignore_ext),
        cmocka_unit_test(test_421_mid_transaction),
        cmocka_unit_test(test_starttls_refused_and_injection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
