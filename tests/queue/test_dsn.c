/*
 * test_dsn.c - DSN generation (queue/dsn.c).
 *
 * Without arguments: cmocka unit tests (argument checks, line form, fields,
 * RET handling, boundary safety). With "--write DIR": writes sample DSNs
 * (full.eml, hdrs.eml, delayed.eml) for check_dsn.py, which parses them
 * back with Python's email package.
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

#include "queue/deliver.h"

static const char orig_msg[] = "From: Alice <alice@example.com>\r\n"
                               "To: bob@dest.test, carol@dest.test\r\n"
                               "Subject: quarterly report\r\n"
                               "Message-ID: <orig-123@example.com>\r\n"
                               "\r\n"
                               "Hello Bob,\r\n"
                               "the body line that only RET=FULL returns.\r\n";

struct sample {
    struct mx_envelope env;
    struct mx_rcpt rcpts[3];
    struct mx_deliver_rcpt_result res[3];
    struct mx_dsn_rcpt st[3];
};

static void sample_init(struct sample *s, enum mx_dsn_ret ret, bool delayed)
{
    memset(s, 0, sizeof *s);
    snprintf(s->env.mail_from, sizeof s->env.mail_from, "alice@example.com");
    s->env.ret = ret;
    snprintf(s->env.envid, sizeof s->env.envid, "ENV-42");
    s->env.arrival_ms = 1700000000000ull; /* Tue, 14 Nov 2023 22:13:20 +0000 */
    snprintf(s->rcpts[0].addr, sizeof s->rcpts[0].addr, "bob@dest.test");
    snprintf(s->rcpts[0].orcpt, sizeof s->rcpts[0].orcpt, "rfc822;Bob@Dest.Test");
    snprintf(s->rcpts[1].addr, sizeof s->rcpts[1].addr, "ok@dest.test");
    snprintf(s->rcpts[2].addr, sizeof s->rcpts[2].addr, "carol@dest.test");
    s->env.rcpts = s->rcpts;
    s->env.n_rcpts = 3;
    s->res[0] = (struct mx_deliver_rcpt_result){.code = delayed ? 451 : 550};
    snprintf(s->res[0].enh, sizeof s->res[0].enh, delayed ? "4.2.0" : "5.1.1");
    snprintf(s->res[0].text, sizeof s->res[0].text, "<bob@dest.test>: Recipient address rejected");
    s->res[2] = (struct mx_deliver_rcpt_result){.code = 0};
    snprintf(s->res[2].text, sizeof s->res[2].text,
             "connect to 127.0.0.1:2626: Connection refused");
    s->st[0] = (struct mx_dsn_rcpt){.rcpt_idx = 0, .res = &s->res[0], .delayed = delayed,
                                    .remote = "127.0.0.1:2626"};
    s->st[1] = (struct mx_dsn_rcpt){.rcpt_idx = 2, .res = &s->res[2], .delayed = delayed,
                                    .remote = ""};
}

static char *build(struct sample *s, size_t *len, const char *orig, size_t orig_len)
{
    char *out = NULL;
    assert_int_equal(mx_dsn_build(&s->env, s->st, 2, (const uint8_t *)orig, orig_len,
                                  "gw.example.org", "Q1A2B3", 1700000100000ull, &out, len),
                     0);
    assert_non_null(out);
    return out;
}

/** Every line ends in CRLF and is at most 998 octets. */
static void check_lines(const char *p, size_t len)
{
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '\n') {
            assert_true(i > 0 && p[i - 1] == '\r');
            assert_true(i - 1 - start <= 998);
            start = i + 1;
        } else if (p[i] == '\r') {
            assert_true(i + 1 < len && p[i + 1] == '\n');
        }
    }
    assert_int_equal(start, len); /* ends with CRLF */
}

static void test_rejects_bad_args(void **state)
{
    (void)state;
    struct sample s;
    sample_init(&s, MX_RET_DEFAULT, false);
    char *out = NULL;
    size_t len = 0;
    s.env.mail_from[0] = 0; /* never bounce to the null sender */
    assert_int_equal(mx_dsn_build(&s.env, s.st, 2, NULL, 0, "gw", "Q", 1, &out, &len), -EINVAL);
    sample_init(&s, MX_RET_DEFAULT, false);
    s.st[1].rcpt_idx = 7;
    assert_int_equal(mx_dsn_build(&s.env, s.st, 2, NULL, 0, "gw", "Q", 1, &out, &len), -EINVAL);
    sample_init(&s, MX_RET_DEFAULT, false);
    assert_int_equal(mx_dsn_build(&s.env, s.st, 0, NULL, 0, "gw", "Q", 1, &out, &len), -EINVAL);
    assert_int_equal(mx_dsn_build(&s.env, s.st, 2, NULL, 0, NULL, "Q", 1, &out, &len), -EINVAL);
    assert_null(out);
}

static void test_fields_and_headers_only(void **state)
{
    (void)state;
    struct sample s;
    sample_init(&s, MX_RET_DEFAULT, false);
    size_t len;
    char *d = build(&s, &len, orig_msg, sizeof orig_msg - 1);
    check_lines(d, len);
    assert_int_equal(strlen(d), len);
    assert_non_null(strstr(d, "\r\nFrom: MAILER-DAEMON@gw.example.org (Mail Delivery System)\r\n") ||
                    strncmp(d, "From: MAILER-DAEMON@gw.example.org", 34) == 0);
    assert_non_null(strstr(d, "\r\nTo: <alice@example.com>\r\n"));
    assert_non_null(strstr(d, "\r\nAuto-Submitted: auto-replied\r\n"));
    assert_non_null(strstr(d, "\r\nDate: Tue, 14 Nov 2023 22:15:00 +0000\r\n"));
    assert_non_null(strstr(d, "\r\nContent-Type: multipart/report; report-type=delivery-status;"));
    assert_non_null(strstr(d, "\r\nReporting-MTA: dns; gw.example.org\r\n"));
    assert_non_null(strstr(d, "\r\nArrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"));
    assert_non_null(strstr(d, "\r\nOriginal-Envelope-Id: ENV-42\r\n"));
    assert_non_null(strstr(d, "\r\nFinal-Recipient: rfc822; bob@dest.test\r\n"
                              "Original-Recipient: rfc822; Bob@Dest.Test\r\n"
                              "Action: failed\r\n"
                              "Status: 5.1.1\r\n"
                              "Remote-MTA: dns; 127.0.0.1\r\n"
                              "Diagnostic-Code: smtp; 550 5.1.1 <bob@dest.test>: Recipient "
                              "address rejected\r\n"));
    assert_non_null(strstr(d, "\r\nFinal-Recipient: rfc822; carol@dest.test\r\n"
                              "Action: failed\r\n"
                              "Status: 4.4.1\r\n"
                              "Diagnostic-Code: X-mxgate; connect to 127.0.0.1:2626: Connection "
                              "refused\r\n"));
    /* The recipient that was delivered is not mentioned. */
    assert_null(strstr(d, "ok@dest.test"));
    /* Headers only by default. */
    assert_non_null(strstr(d, "\r\nContent-Type: text/rfc822-headers\r\n"));
    assert_non_null(strstr(d, "Subject: quarterly report\r\n"));
    assert_null(strstr(d, "only RET=FULL returns"));
    free(d);
}

static void test_full_and_long_lines(void **state)
{
    (void)state;
    struct sample s;
    sample_init(&s, MX_RET_FULL, false);
    /* A 3000-octet body line and a bare LF: both come out legal. */
    size_t n = sizeof orig_msg - 1 + 3000 + 8;
    char *o = malloc(n + 1);
    memcpy(o, orig_msg, sizeof orig_msg - 1);
    memset(o + sizeof orig_msg - 1, 'x', 3000);
    memcpy(o + sizeof orig_msg - 1 + 3000, "\nend\r\n\r\n", 8);
    o[n] = 0;
    size_t len;
    char *d = build(&s, &len, o, n);
    check_lines(d, len);
    assert_non_null(strstr(d, "\r\nContent-Type: message/rfc822\r\n"));
    assert_non_null(strstr(d, "only RET=FULL returns.\r\n"));
    assert_non_null(strstr(d, "x\r\nend\r\n"));
    free(d);
    free(o);
}

static void test_delayed_subject_and_action(void **state)
{
    (void)state;
    struct sample s;
    sample_init(&s, MX_RET_HDRS, true);
    size_t len;
    char *d = build(&s, &len, orig_msg, sizeof orig_msg - 1);
    check_lines(d, len);
    assert_non_null(strstr(d, "\r\nSubject: Delayed Mail (still being retried)\r\n"));
    assert_non_null(strstr(d, "\r\nAction: delayed\r\nStatus: 4.2.0\r\n"));
    assert_null(strstr(d, "Action: failed"));
    free(d);
}

/** Reply text from the network cannot inject header lines. */
static void test_no_injection(void **state)
{
    (void)state;
    struct sample s;
    sample_init(&s, MX_RET_DEFAULT, false);
    snprintf(s.res[0].text, sizeof s.res[0].text, "bad\r\nX-Injected: yes");
    size_t len;
    char *d = build(&s, &len, NULL, 0);
    check_lines(d, len);
    assert_null(strstr(d, "\r\nX-Injected"));
    free(d);
}

static int write_samples(const char *dir)
{
    struct {
        const char *name;
        enum mx_dsn_ret ret;
        bool delayed;
    } v[] = {{"full.eml", MX_RET_FULL, false},
             {"hdrs.eml", MX_RET_HDRS, false},
             {"default.eml", MX_RET_DEFAULT, false},
             {"delayed.eml", MX_RET_DEFAULT, true}};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        struct sample s;
        sample_init(&s, v[i].ret, v[i].delayed);
        char *out;
        size_t len;
        int rc = mx_dsn_build(&s.env, s.st, 2, (const uint8_t *)orig_msg, sizeof orig_msg - 1,
                              "gw.example.org", "Q1A2B3", 1700000100000ull, &out, &len);
        if (rc) {
            fprintf(stderr, "mx_dsn_build: %d\n", rc);
            return 1;
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, v[i].name);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(out, 1, len, f) != len || fclose(f) != 0) {
            perror(path);
            free(out);
            return 1;
        }
        free(out);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write") == 0)
        return write_samples(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rejects_bad_args),
        cmocka_unit_test(test_fields_and_headers_only),
        cmocka_unit_test(test_full_and_long_lines),
        cmocka_unit_test(test_delayed_subject_and_action),
        cmocka_unit_test(test_no_injection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
