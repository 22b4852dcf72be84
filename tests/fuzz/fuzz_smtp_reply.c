/*
 * fuzz_smtp_reply.c - server reply streams into the SMTP client
 * (smtp/client.c).
 *
 * Input: byte 0 picks the session settings (STARTTLS on/off, extensions to
 * ignore, BDAT chunk size), byte 1 how the rest is split into reads; the
 * rest is what the "server" says. Between reads the harness takes all
 * output and, whenever the client is idle, starts the next of two messages
 * (then QUIT), so every reply lands in some state of the machine. At the end
 * it reports EOF or a timeout. The client must never crash, leak, read out
 * of bounds or loop, whatever the server sends.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <openssl/ssl.h>

#include "queue/queue.h"
#include "smtp/smtp.h"

static SSL_CTX *fuzz_ctx;

static void drain(struct mx_smtp_client *c)
{
    for (int i = 0; i < 4096; i++) {
        size_t n;
        mx_smtp_client_output(c, &n);
        if (!n)
            return;
        mx_smtp_client_output_done(c, n);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    if (!fuzz_ctx) {
        fuzz_ctx = SSL_CTX_new(TLS_client_method());
        if (fuzz_ctx)
            SSL_CTX_set_verify(fuzz_ctx, SSL_VERIFY_NONE, NULL);
    }
    uint8_t mode = data[0], split = data[1];
    data += 2;
    size -= 2;

    static struct mx_rcpt rcpts[3];
    static size_t idx[3] = {0, 1, 2};
    struct mx_envelope env;
    memset(&env, 0, sizeof env);
    memcpy(env.mail_from, "a@example.com", 14);
    memcpy(rcpts[0].addr, "b@dest.test", 12);
    memcpy(rcpts[1].addr, "j\xc3\xb6rg@dest.test", 16);
    memcpy(rcpts[2].addr, "c@dest.test", 12);
    rcpts[0].notify = MX_NOTIFY_FAILURE | MX_NOTIFY_DELAY;
    memcpy(rcpts[0].orcpt, "rfc822;B+x@dest.test", 21);
    env.rcpts = rcpts;
    env.n_rcpts = 3;
    env.body = (mode & 0x40) ? MX_BODY_8BITMIME : MX_BODY_7BIT;
    env.smtputf8 = mode & 0x80;
    env.ret = MX_RET_HDRS;
    memcpy(env.envid, "ID1", 4);
    static const char body[] = "Subject: t\r\n\r\n.dot\r\nline\r\n..\r\nend";
    struct mx_smtp_client_msg msg = {.env = &env, .rcpt_idx = idx, .n_rcpt = (mode & 0x20) ? 3 : 2,
                                     .data = (const uint8_t *)body, .len = sizeof body - 1};

    struct mx_smtp_client_params p = {
        .helo_name = "fuzz.example",
        .starttls = mode & 1,
        .tls_ctx = fuzz_ctx,
        .ignore_ext = (mode & 2) ? MX_SMTP_EXT_PIPELINING : 0,
        .bdat_chunk = (mode & 4) ? 7 : 0,
    };
    struct mx_smtp_client *c;
    if (mx_smtp_client_new(&p, &c) != 0)
        return 0;
    int sent = 0;
    size_t step = (size_t)(split & 0x3f) + 1;
    size_t off = 0;
    while (off < size && mx_smtp_client_state(c) != MX_SMTPC_CLOSED) {
        size_t n = size - off < step ? size - off : step;
        mx_smtp_client_input(c, data + off, n);
        off += n;
        (void)mx_smtp_client_timeout_ms(c);
        drain(c);
        enum mx_smtp_client_state st = mx_smtp_client_state(c);
        if (st == MX_SMTPC_TXN_DONE) {
            size_t nr;
            const struct mx_smtp_rcpt_result *r = mx_smtp_client_results(c, &nr);
            for (size_t i = 0; i < nr; i++) /* results must be terminated strings */
                if (strlen(r[i].text) >= sizeof r[i].text || strlen(r[i].enh) >= sizeof r[i].enh)
                    __builtin_trap();
        }
        if (st == MX_SMTPC_READY || st == MX_SMTPC_TXN_DONE) {
            if (sent < 2) {
                mx_smtp_client_send(c, &msg);
                sent++;
            } else {
                mx_smtp_client_quit(c);
            }
            drain(c);
        }
    }
    if (split & 0x40)
        mx_smtp_client_timeout(c);
    else
        mx_smtp_client_eof(c, (split & 0x80) ? -104 : 0);
    drain(c);
    (void)mx_smtp_client_error(c);
    mx_smtp_client_free(c);
    return 0;
}
