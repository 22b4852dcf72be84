/*
 * fuzz_smtp_data.c - arbitrary bytes as message content: the session is put
 * into DATA (first byte even) or BDAT (odd) and the input follows, in three
 * chunks. Checks that what reaches the queue never exceeds the limit and
 * that dot-unstuffing, end detection and bare CR/LF handling hold up.
 * With bit 4 of the first byte MAIL and RCPT are answered late
 * (MX_SMTPD_PENDING), after the first data chunk arrived: the message
 * bytes are then held behind the answers and replayed, and the end of
 * data is refused by a late check (mx_smtpd_session_data_refuse).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/smtpd_internal.h"

static struct mx_smtpd_session *S;
static int pending;
static int late; /* MAIL/RCPT answered late */
static size_t written;

static void f_output(void *ud, const uint8_t *buf, size_t len)
{
    (void)ud, (void)buf, (void)len;
}
static int f_write(void *ud, const uint8_t *buf, size_t len)
{
    (void)ud, (void)buf;
    written += len;
    return 0;
}
static void f_end(void *ud, const struct mx_envelope *env, uint64_t size)
{
    (void)ud, (void)env;
    if (size != written || size > 65536)
        abort();
    pending = 1;
}
static void f_begin(void *ud, const struct mx_envelope *env, struct mx_smtpd_reply *r)
{
    (void)ud, (void)env, (void)r;
    written = 0;
}

static void f_mail(void *ud, const struct mx_envelope *env, struct mx_smtpd_reply *r)
{
    (void)ud, (void)env;
    if (late)
        r->code = MX_SMTPD_PENDING;
}
static void f_rcpt(void *ud, const struct mx_envelope *env, const struct mx_rcpt *rc, bool tricky,
                   struct mx_smtpd_reply *r)
{
    (void)ud, (void)env, (void)rc, (void)tricky;
    if (late)
        r->code = MX_SMTPD_PENDING;
}

static const struct mx_smtpd_ops ops = {
    .output = f_output, .data_write = f_write, .data_end = f_end, .data_begin = f_begin,
    .mail = f_mail, .rcpt = f_rcpt};

/* Give the late MAIL/RCPT answers (accept) until none is owed. */
static void answer_late(void)
{
    static const struct mx_smtpd_reply ok = {0, NULL, NULL};
    while (mx_smtpd_session_state(S) == SMTPD_WAIT_REPLY) {
        mx_smtpd_session_reply(S, &ok);
        while (pending) {
            pending = 0;
            mx_smtpd_session_data_done(S, 0, "FUZZ");
        }
    }
}

static void feed(const char *s, const uint8_t *p, size_t n)
{
    if (s)
        mx_smtpd_session_input(S, (const uint8_t *)s, strlen(s));
    else
        mx_smtpd_session_input(S, p, n);
    while (pending) {
        pending = 0;
        if (late) { /* an end-of-data check refuses it (logical IP listed) */
            static const struct mx_smtpd_reply no = {554, "5.7.1", "listed"};
            mx_smtpd_session_data_refuse(S, &no);
        } else {
            mx_smtpd_session_data_done(S, 0, "FUZZ");
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct mx_smtpd_params p = {.hostname = "mx.fuzz", .max_message_size = 65536,
                                .max_message_total = 65536 * 4, .max_recipients = 4,
                                .max_line_length = 512, .max_errors = 1000,
                                .max_commands = 100000, .bare_lf_normalize = (data[0] & 2) != 0};
    late = (data[0] & 4) != 0;
    S = mx_smtpd_session_new(&p, &ops, NULL, NULL, 0);
    feed("EHLO f\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n", NULL, 0);
    if (data[0] & 1) {
        char cmd[64];
        snprintf(cmd, sizeof cmd, "BDAT %zu LAST\r\n", size - 1);
        feed(cmd, NULL, 0);
    } else {
        feed("DATA\r\n", NULL, 0);
    }
    size_t a = (size - 1) / 3, b = 2 * (size - 1) / 3;
    feed(NULL, data + 1, a);
    answer_late();
    feed(NULL, data + 1 + a, b - a);
    feed(NULL, data + 1 + b, size - 1 - b);
    mx_smtpd_session_free(S);
    return 0;
}
