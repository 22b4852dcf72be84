/*
 * fuzz_callout.c - arbitrary bytes as a downstream server's replies to a
 * recipient-verification callout (smtp/checks.c): greeting, EHLO, MAIL,
 * RCPT and QUIT replies in any split. The stream is a fake transport, so
 * the callout's own parser and state machine are what run. Checks that the
 * waiting session gets exactly one answer, with a code the SMTP server may
 * send, whatever the server says or when it hangs up.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "dataplane/dataplane.h"
#include "smtp/checks_internal.h"
#include "smtp/smtp.h"

/* ---- fake transport and DNS (the target links no dataplane) ---------- */

static struct mx_stream fake_st;
static const struct mx_stream_cb *fake_cb;
static void *fake_ctx;
static int closing, connected;

static int f_write(struct mx_stream *s, const void *buf, size_t len)
{
    (void)s, (void)buf, (void)len;
    return closing ? -EPIPE : 0;
}
static void f_close(struct mx_stream *s)
{
    (void)s;
    closing = 1;
}
static void f_pause(struct mx_stream *s, bool p)
{
    (void)s, (void)p;
}
static void f_timer(struct mx_stream *s, uint64_t ms)
{
    (void)s, (void)ms;
}
static const struct mx_stream_ops fake_ops = {f_write, f_close, f_pause, f_timer};

int mx_stream_connect(struct mx_worker *w, const struct sockaddr *addr, socklen_t len,
                      const struct mx_stream_cb *cb, void *ctx, struct mx_stream **out)
{
    (void)w, (void)addr, (void)len;
    memset(&fake_st, 0, sizeof fake_st);
    fake_st.ops = &fake_ops;
    fake_cb = cb;
    fake_ctx = ctx;
    connected = 1;
    *out = &fake_st;
    return 0;
}

unsigned mx_worker_index(const struct mx_worker *w)
{
    (void)w;
    return 0;
}

int mx_dns_query(struct mx_worker *w, const char *name, enum mx_dns_type type, mx_dns_fn cb,
                 void *arg)
{
    (void)w, (void)name, (void)type, (void)cb, (void)arg;
    return -ENOTCONN;
}

/* ---- the waiting session ---------------------------------------------- */

static unsigned answers;
static void on_answer(void *ud, const struct mx_smtpd_reply *r)
{
    (void)ud;
    answers++;
    if (r->code != 0 && r->code != 550 && r->code != 450)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct mx_config *cfg;
    static struct mx_checks *ck;
    if (!cfg) {
        static const char conf[] = "routes { \"other.test\" = \"smtp:127.0.0.1:2626\"; }\n"
                                   "recipient_verification { callout_domains = [ \"other.test\" ];"
                                   " cache_size = 16; }\n";
        if (mx_config_load_mem("f.conf", conf, strlen(conf), NULL, 0, 0, &cfg, NULL) < 0 ||
            mx_smtp_checks_new(cfg, &ck) < 0 || !ck)
            abort();
    }
    if (size < 1)
        return 0;
    mx_smtp_checks_cache_clear(); /* every input starts with a callout */
    closing = connected = 0;
    answers = 0;
    static int dummy_worker;
    struct sockaddr_in a4 = {.sin_family = AF_INET};
    struct mx_checks_conn *cc = mx_smtp_checks_conn_new(
        ck, (struct mx_worker *)(void *)&dummy_worker, (struct sockaddr *)&a4, "F", on_answer, NULL);
    if (!cc)
        return 0;
    struct mx_rcpt rc;
    memset(&rc, 0, sizeof rc);
    memcpy(rc.addr, "bob@other.test", 15);
    struct mx_smtpd_reply r = {0};
    mx_smtp_checks_rcpt(cc, &rc, &r);
    if (r.code != MX_SMTPD_PENDING || !connected)
        abort();
    uint8_t mode = data[0];
    if (mode & 1) {
        fake_cb->connected(&fake_st, fake_ctx, -ECONNREFUSED);
    } else {
        fake_cb->connected(&fake_st, fake_ctx, 0);
        size_t slice = (size_t)((mode >> 1) & 31) + 1;
        for (size_t off = 1; off < size && !closing; off += slice) {
            size_t k = size - off < slice ? size - off : slice;
            fake_cb->data(&fake_st, fake_ctx, data + off, k);
        }
        if (!closing && (mode & 0x80))
            fake_cb->timeout(&fake_st, fake_ctx);
    }
    if ((mode & 0x40) && answers == 0)
        mx_smtp_checks_conn_free(cc), cc = NULL; /* the client left first */
    fake_cb->closed(&fake_st, fake_ctx, closing ? 0 : -ECONNRESET); /* frees the callout */
    if (cc) {
        if (answers != 1)
            abort();
        mx_smtp_checks_conn_free(cc);
    } else if (answers != 0) {
        abort();
    }
    return 0;
}
