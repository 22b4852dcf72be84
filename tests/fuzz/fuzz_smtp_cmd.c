/*
 * fuzz_smtp_cmd.c - arbitrary client bytes into an SMTP server session in
 * command mode (EHLO, MAIL, RCPT, BDAT ... whatever the input says), fed in
 * two chunks split where the first byte says. The fake queue commits at
 * once, so pipelined transactions keep going. With bit 0x40 of the first
 * byte the connect, MAIL and RCPT answers come late (MX_SMTPD_PENDING): the
 * input then arrives in slices of 1..32 bytes (bits 0x1f) and a pending
 * answer (accept, or a 4xx/5xx in turn) is given after each slice.
 */
#include <stdint.h>
#include <string.h>

#include "smtp/smtpd_internal.h"

static struct mx_smtpd_session *S;
static int pending;
static int late;      /* policy answers come late */
static unsigned nans; /* late answers given, picks accept or refuse */

static void f_output(void *ud, const uint8_t *buf, size_t len)
{
    (void)ud, (void)buf, (void)len;
}
static int f_write(void *ud, const uint8_t *buf, size_t len)
{
    (void)ud, (void)buf, (void)len;
    return 0;
}
static void f_end(void *ud, const struct mx_envelope *env, uint64_t size)
{
    (void)ud, (void)env, (void)size;
    pending = 1;
}
static void f_rcpt(void *ud, const struct mx_envelope *env, const struct mx_rcpt *r, bool tricky,
                   struct mx_smtpd_reply *rep)
{
    (void)ud, (void)env;
    if (tricky || !strchr(r->addr, '@')) {
        rep->code = 554;
        rep->enh = "5.7.1";
        rep->text = "Relay access denied";
    }
}

static void f_late(void *ud, const struct mx_envelope *env, struct mx_smtpd_reply *r)
{
    (void)ud, (void)env;
    if (late)
        r->code = MX_SMTPD_PENDING;
}
static void f_rcpt_late(void *ud, const struct mx_envelope *env, const struct mx_rcpt *r,
                        bool tricky, struct mx_smtpd_reply *rep)
{
    f_rcpt(ud, env, r, tricky, rep);
    if (late && !rep->code)
        rep->code = MX_SMTPD_PENDING;
}

static const struct mx_smtpd_ops ops = {
    .output = f_output, .data_write = f_write, .data_end = f_end, .rcpt = f_rcpt_late,
    .connect = f_late, .mail = f_late};

/* Answer whatever is owed (commits and late policy answers) until nothing is. */
static void settle(void)
{
    for (;;) {
        if (pending) {
            pending = 0;
            mx_smtpd_session_data_done(S, 0, "FUZZ");
        } else if (mx_smtpd_session_state(S) == SMTPD_WAIT_REPLY) {
            static const struct mx_smtpd_reply answers[] = {
                {0, NULL, NULL}, {450, "4.2.0", "try later"}, {0, NULL, NULL},
                {550, "5.1.1", "User unknown"}, {554, "5.7.1", "listed"}};
            mx_smtpd_session_reply(S, &answers[nans++ % 5]);
        } else {
            return;
        }
    }
}

static void feed(const uint8_t *p, size_t n, size_t slice)
{
    while (n) {
        size_t k = n < slice ? n : slice;
        mx_smtpd_session_input(S, p, k);
        p += k;
        n -= k;
        if (!late || mx_smtpd_session_state(S) != SMTPD_WAIT_REPLY || n == 0)
            settle(); /* late answers wait one more slice: input piles up behind them */
        else if (nans % 2)
            settle();
    }
    settle();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct mx_smtpd_params p = {.hostname = "mx.fuzz", .max_message_size = 100000,
                                .max_message_total = 300000, .max_recipients = 50,
                                .max_line_length = 512, .max_errors = 1000,
                                .max_commands = 100000,
                                .bare_lf_normalize = (data[0] & 0x80) != 0};
    late = (data[0] & 0x40) != 0;
    nans = 0;
    size_t slice = late ? (size_t)(data[0] & 0x1f) + 1 : (size_t)-1;
    S = mx_smtpd_session_new(&p, &ops, NULL, NULL, 0);
    mx_smtpd_session_greet(S);
    size_t split = size > 1 ? (data[0] % size) : 0;
    if (split < 1)
        split = 1;
    feed(data + 1, split - 1, slice);
    feed(data + split, size - split, slice);
    mx_smtpd_session_free(S);
    return 0;
}
