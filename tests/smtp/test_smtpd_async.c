/*
 * test_smtpd_async.c - late policy answers in the ESMTP session: the
 * connect, MAIL and RCPT callbacks answer MX_SMTPD_PENDING and the test
 * answers later with mx_smtpd_session_reply(), as the DNS checks and the
 * recipient callouts do. Pipelined input that arrives meanwhile must be
 * held and answered in order; a client that leaves while an answer is
 * pending must leave nothing behind (run under ASan).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtp/smtpd_internal.h"

struct fake {
    char out[16384];
    size_t out_len;
    bool closed;
    bool pend_connect, pend_mail, pend_rcpt; /* answer these callbacks late */
    unsigned asked_mail, asked_rcpt, asked_connect;
    char last_rcpt[MX_ADDR_MAX];
    bool committed;
    char msg[4096];
    size_t msg_len;
};

static struct fake F;
static struct mx_smtpd_session *S;

static void f_output(void *ud, const uint8_t *buf, size_t len)
{
    struct fake *f = ud;
    assert_true(f->out_len + len < sizeof f->out);
    memcpy(f->out + f->out_len, buf, len);
    f->out_len += len;
    f->out[f->out_len] = 0;
}

static void f_close(void *ud)
{
    ((struct fake *)ud)->closed = true;
}

static void f_connect(void *ud, const struct mx_envelope *env, struct mx_smtpd_reply *r)
{
    (void)env;
    struct fake *f = ud;
    f->asked_connect++;
    if (f->pend_connect)
        r->code = MX_SMTPD_PENDING;
}

static void f_mail(void *ud, const struct mx_envelope *env, struct mx_smtpd_reply *r)
{
    (void)env;
    struct fake *f = ud;
    f->asked_mail++;
    if (f->pend_mail)
        r->code = MX_SMTPD_PENDING;
}

static void f_rcpt(void *ud, const struct mx_envelope *env, const struct mx_rcpt *rc, bool tricky,
                   struct mx_smtpd_reply *r)
{
    (void)env, (void)tricky;
    struct fake *f = ud;
    f->asked_rcpt++;
    snprintf(f->last_rcpt, sizeof f->last_rcpt, "%s", rc->addr);
    if (f->pend_rcpt)
        r->code = MX_SMTPD_PENDING;
}

static int f_write(void *ud, const uint8_t *buf, size_t len)
{
    struct fake *f = ud;
    assert_true(f->msg_len + len < sizeof f->msg);
    memcpy(f->msg + f->msg_len, buf, len);
    f->msg_len += len;
    return 0;
}

static void f_end(void *ud, const struct mx_envelope *env, uint64_t size)
{
    (void)env, (void)size;
    ((struct fake *)ud)->committed = true;
}

static const struct mx_smtpd_ops ops = {
    .output = f_output,
    .close = f_close,
    .connect = f_connect,
    .mail = f_mail,
    .rcpt = f_rcpt,
    .data_write = f_write,
    .data_end = f_end,
};

static void start(void)
{
    struct mx_smtpd_params p = {.hostname = "mx.example.test",
                                .max_message_size = 100000,
                                .max_message_total = 1000000,
                                .max_recipients = 10};
    S = mx_smtpd_session_new(&p, &ops, &F, NULL, 0);
    assert_non_null(S);
}

static int setup(void **st)
{
    (void)st;
    memset(&F, 0, sizeof F);
    S = NULL;
    return 0;
}

static int teardown(void **st)
{
    (void)st;
    mx_smtpd_session_free(S);
    S = NULL;
    return 0;
}

/* Output since the last call. */
static const char *take(void)
{
    static char buf[16384];
    memcpy(buf, F.out, F.out_len + 1);
    F.out_len = 0;
    F.out[0] = 0;
    return buf;
}

static void feed(const char *s)
{
    mx_smtpd_session_input(S, (const uint8_t *)s, strlen(s));
}

static void answer(int code, const char *enh, const char *text)
{
    struct mx_smtpd_reply r = {code, enh, text};
    mx_smtpd_session_reply(S, &r);
}

static void test_pipelined_late_answers_in_order(void **st)
{
    (void)st;
    F.pend_mail = F.pend_rcpt = true;
    start();
    mx_smtpd_session_greet(S);
    assert_string_equal(take(), "220 mx.example.test ESMTP mxgate\r\n");
    feed("EHLO c.test\r\n");
    take();
    /* RFC 2920: the whole transaction in one write */
    feed("MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nRCPT TO:<y@example.test>\r\n"
         "DATA\r\nSubject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n");
    /* nothing is answered before MAIL's answer, and RCPT was not even asked */
    assert_string_equal(take(), "");
    assert_int_equal(mx_smtpd_session_state(S), SMTPD_WAIT_REPLY);
    assert_int_equal(F.asked_mail, 1);
    assert_int_equal(F.asked_rcpt, 0);
    answer(0, NULL, NULL);
    assert_string_equal(take(), "250 2.1.0 Ok\r\n");
    assert_int_equal(F.asked_rcpt, 1);
    assert_string_equal(F.last_rcpt, "x@example.test");
    answer(550, "5.1.1", "<x@example.test>: Recipient address rejected: User unknown");
    assert_string_equal(take(),
                        "550 5.1.1 <x@example.test>: Recipient address rejected: User unknown\r\n");
    assert_int_equal(F.asked_rcpt, 2);
    assert_string_equal(F.last_rcpt, "y@example.test");
    assert_false(F.committed);
    answer(0, NULL, NULL);
    /* the rest of the pipeline runs up to the end of data (the commit is pending) */
    assert_string_equal(take(), "250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
    assert_true(F.committed);
    assert_int_equal(F.msg_len, strlen("Subject: t\r\n\r\nhello\r\n"));
    assert_memory_equal(F.msg, "Subject: t\r\n\r\nhello\r\n", F.msg_len);
    const struct mx_envelope *env = mx_smtpd_session_envelope(S);
    assert_int_equal(env->n_rcpts, 1);
    assert_string_equal(env->rcpts[0].addr, "y@example.test");
    mx_smtpd_session_data_done(S, 0, "Q1");
    assert_string_equal(take(), "250 2.0.0 Ok: queued as Q1\r\n221 2.0.0 Bye\r\n");
    assert_true(F.closed);
    /* a late answer after the session closed is ignored */
    answer(0, NULL, NULL);
    assert_string_equal(take(), "");
}

static void test_answers_one_write_per_chunk(void **st)
{
    (void)st;
    F.pend_rcpt = true;
    start();
    mx_smtpd_session_greet(S);
    feed("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n");
    assert_non_null(strstr(take(), "250 2.1.0 Ok\r\n"));
    /* more input while pending: held, not answered, not parsed */
    feed("RCPT TO:<z@example.test>\r\nNOOP\r\n");
    assert_string_equal(take(), "");
    assert_int_equal(F.asked_rcpt, 1);
    F.pend_rcpt = false; /* the held RCPT is answered at once */
    answer(0, NULL, NULL);
    assert_string_equal(take(), "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n");
    assert_int_equal(mx_smtpd_session_envelope(S)->n_rcpts, 2);
}

static void test_late_greeting(void **st)
{
    (void)st;
    F.pend_connect = true;
    start();
    mx_smtpd_session_greet(S);
    assert_string_equal(take(), "");
    assert_int_equal(F.asked_connect, 1);
    /* a client talking early is held behind the greeting */
    feed("EHLO c.test\r\n");
    assert_string_equal(take(), "");
    answer(0, NULL, NULL);
    const char *o = take();
    const char *want = "220 mx.example.test ESMTP mxgate\r\n250-mx.example.test\r\n";
    assert_true(strncmp(o, want, strlen(want)) == 0);
}

static void test_connect_refused(void **st)
{
    (void)st;
    F.pend_connect = true;
    start();
    mx_smtpd_session_greet(S);
    feed("EHLO c.test\r\n");
    answer(554, "5.7.1", "Service unavailable; client [192.0.2.1] listed at zen.example.test");
    assert_string_equal(
        take(), "554 5.7.1 Service unavailable; client [192.0.2.1] listed at zen.example.test\r\n");
    assert_true(F.closed);
    assert_int_equal(mx_smtpd_session_state(S), SMTPD_CLOSED);
}

static void test_mail_refused_late(void **st)
{
    (void)st;
    F.pend_mail = true;
    start();
    mx_smtpd_session_greet(S);
    take();
    feed("HELO c.test\r\nMAIL FROM:<a@nx.test>\r\nRCPT TO:<x@example.test>\r\n");
    assert_string_equal(take(), "250 2.0.0 mx.example.test\r\n");
    answer(550, "5.1.8", "<a@nx.test>: Sender address rejected: Domain not found");
    /* no transaction: the pipelined RCPT gets 503 */
    assert_string_equal(take(), "550 5.1.8 <a@nx.test>: Sender address rejected: Domain not "
                                "found\r\n503 5.5.1 Error: need MAIL command\r\n");
    assert_int_equal(F.asked_rcpt, 0);
}

/* The client leaves while an answer is pending: freeing must not leak or touch freed memory. */
static void test_disconnect_while_pending(void **st)
{
    (void)st;
    F.pend_rcpt = true;
    start();
    mx_smtpd_session_greet(S);
    feed("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n"
         "RCPT TO:<y@example.test>\r\nDATA\r\n");
    assert_int_equal(mx_smtpd_session_state(S), SMTPD_WAIT_REPLY);
    mx_smtpd_session_free(S);
    S = NULL;
    /* and a timeout while pending answers 421 and closes; the late answer is ignored */
    memset(&F, 0, sizeof F);
    F.pend_mail = true;
    start();
    mx_smtpd_session_greet(S);
    feed("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n");
    take();
    mx_smtpd_session_timeout(S);
    assert_string_equal(take(), "421 4.4.2 mx.example.test Error: timeout exceeded\r\n");
    answer(0, NULL, NULL);
    assert_string_equal(take(), "");
    assert_true(F.closed);
}

/* A pending answer that is itself "pending" is not an answer: tempfail instead of hanging. */
static void test_pending_is_not_an_answer(void **st)
{
    (void)st;
    F.pend_mail = true;
    start();
    mx_smtpd_session_greet(S);
    feed("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n");
    take();
    answer(MX_SMTPD_PENDING, NULL, NULL);
    assert_string_equal(take(), "451 4.3.0 Error: policy answer missing\r\n");
    assert_int_equal(mx_smtpd_session_state(S), SMTPD_CMD);
}

/* A check at end of data refuses the message; pipelined commands after it still run. */
static void test_data_refused_at_end(void **st)
{
    (void)st;
    start();
    mx_smtpd_session_greet(S);
    take();
    feed("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n"
         "Received: from x (x [192.0.2.7]) by front\r\n\r\nhi\r\n.\r\nMAIL FROM:<c@b.test>\r\n");
    assert_true(F.committed);
    assert_int_equal(mx_smtpd_session_state(S), SMTPD_WAIT_COMMIT);
    take();
    struct mx_smtpd_reply r = {554, "5.7.1", "Message rejected; originating client [192.0.2.7] "
                                             "listed at zen.example.test"};
    mx_smtpd_session_data_refuse(S, &r);
    assert_string_equal(take(), "554 5.7.1 Message rejected; originating client [192.0.2.7] "
                                "listed at zen.example.test\r\n250 2.1.0 Ok\r\n");
    assert_int_equal(mx_smtpd_session_envelope(S)->n_rcpts, 0);
    /* not pending any more: a second answer is ignored */
    mx_smtpd_session_data_refuse(S, &r);
    mx_smtpd_session_data_done(S, 0, "Q");
    assert_string_equal(take(), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pipelined_late_answers_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_answers_one_write_per_chunk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_late_greeting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mail_refused_late, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect_while_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_is_not_an_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_data_refused_at_end, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
