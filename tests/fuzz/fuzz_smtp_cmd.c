/*
 * fuzz_smtp_cmd.c - arbitrary client bytes into an SMTP server session in
 * command mode (EHLO, MAIL, RCPT, BDAT ... whatever the input says), fed in
 * two chunks split where the first byte says. The fake queue commits at
 * once, so pipelined transactions keep going.
 */
#include <stdint.h>
#include <string.h>

#include "smtp/smtpd_internal.h"

static struct mx_smtpd_session *S;
static int pending;

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

static const struct mx_smtpd_ops ops = {
    .output = f_output, .data_write = f_write, .data_end = f_end, .rcpt = f_rcpt};

static void feed(const uint8_t *p, size_t n)
{
    mx_smtpd_session_input(S, p, n);
    while (pending) {
        pending = 0;
        mx_smtpd_session_data_done(S, 0, "FUZZ");
    }
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
    S = mx_smtpd_session_new(&p, &ops, NULL, NULL, 0);
    mx_smtpd_session_greet(S);
    size_t split = size > 1 ? (data[0] % size) : 0;
    if (split < 1)
        split = 1;
    feed(data + 1, split - 1);
    feed(data + split, size - split);
    mx_smtpd_session_free(S);
    return 0;
}
