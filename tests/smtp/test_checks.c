/*
 * test_checks.c - the parts of smtp/checks.c that need no network: DNS
 * list entries, DNSBL query names (IPv4 reversed, IPv6 nibble-reversed),
 * the "logical IP" taken from Received headers, and recipient verification
 * answered from the static list (exact reply texts). The DNS and callout
 * paths run against real servers in tests/integration/test_dnsbl.py and
 * test_callout.py.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config/config.h"
#include "smtp/checks_internal.h"

#define MX_DNS_NAME_MAX_TEST 256

static void test_parse_list(void **st)
{
    (void)st;
    struct mx_checks_list l;
    char err[256];
    assert_int_equal(mx_smtp_checks_parse_list("Zen.Example.Test=127.0.0.2 reject", &l, err,
                                               sizeof err),
                     0);
    assert_string_equal(l.zone, "zen.example.test");
    assert_true(l.has_match && l.reject);
    assert_memory_equal(l.match, "\x7f\x00\x00\x02", 4);
    assert_int_equal(mx_smtp_checks_parse_list("bl.example.test score=2.5", &l, err, sizeof err), 0);
    assert_false(l.has_match || l.reject);
    assert_true(l.score == 2.5);
    assert_int_equal(mx_smtp_checks_parse_list("bl.example.test", &l, err, sizeof err), -EINVAL);
    assert_string_equal(err, "'bl.example.test': say 'reject' or 'score=N'");
    assert_int_equal(mx_smtp_checks_parse_list("bl.example.test=1.2.3 reject", &l, err, sizeof err),
                     -EINVAL);
    assert_string_equal(err, "'1.2.3' is not an IPv4 address");
    assert_int_equal(mx_smtp_checks_parse_list("bl.example.test drop", &l, err, sizeof err),
                     -EINVAL);
    assert_string_equal(err, "'bl.example.test': unknown action 'drop'");
    assert_int_equal(mx_smtp_checks_parse_list("bl..x/y reject", &l, err, sizeof err), -EINVAL);
    assert_int_equal(mx_smtp_checks_parse_list("bl.x score=1 extra", &l, err, sizeof err), -EINVAL);
    assert_int_equal(mx_smtp_checks_parse_list("", &l, err, sizeof err), -EINVAL);
}

static void test_query_name(void **st)
{
    (void)st;
    char name[300];
    struct sockaddr_in a4 = {.sin_family = AF_INET};
    inet_pton(AF_INET, "192.0.2.10", &a4.sin_addr);
    assert_int_equal(mx_smtp_checks_query_name((struct sockaddr *)&a4, "zen.example.test", name,
                                               sizeof name),
                     0);
    assert_string_equal(name, "10.2.0.192.zen.example.test");
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "2001:db8::567:89ab", &a6.sin6_addr);
    assert_int_equal(
        mx_smtp_checks_query_name((struct sockaddr *)&a6, "bl.test", name, sizeof name), 0);
    /* RFC 5782 2.4 example form: nibbles of the full address, reversed */
    assert_string_equal(name, "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test");
    assert_int_equal(mx_smtp_checks_query_name((struct sockaddr *)&a6, "bl.test", name, 20),
                     -ENAMETOOLONG);
    inet_pton(AF_INET6, "::ffff:192.0.2.10", &a6.sin6_addr); /* IPv4 client on an IPv6 socket */
    assert_int_equal(
        mx_smtp_checks_query_name((struct sockaddr *)&a6, "bl.test", name, sizeof name), 0);
    assert_string_equal(name, "10.2.0.192.bl.test");
    struct sockaddr un = {.sa_family = AF_UNIX};
    assert_int_equal(mx_smtp_checks_query_name(&un, "bl.test", name, sizeof name), -EAFNOSUPPORT);
}

/* What a URIBL is asked for each kind of body URI (mx_smtp_checks_uri_name). */
static void test_uri_name(void **st)
{
    (void)st;
    static const struct {
        const char *uri;
        int kind; /* MX_URI_DOMAIN, MX_URI_IP or -ENOENT */
        const char *name;
    } cases[] = {
        {"http://www.Spam.Test/path?q=1", MX_URI_DOMAIN, "spam.test"},
        {"https://a.b.c.spam.test:8443/x", MX_URI_DOMAIN, "spam.test"},
        {"HTTPS://user:pw@Host.Spam.Test/", MX_URI_DOMAIN, "spam.test"},
        {"http://evil.test@good.test/", MX_URI_DOMAIN, "good.test"}, /* the host is after '@' */
        {"http://good.test/@evil.test", MX_URI_DOMAIN, "good.test"}, /* '@' in the path */
        {"www.spam.test/offer", MX_URI_DOMAIN, "spam.test"},
        {"//cdn.spam.test/x.js", MX_URI_DOMAIN, "spam.test"},
        {"ftp://files.spam.test", MX_URI_DOMAIN, "spam.test"},
        {"http://spam.test.", MX_URI_DOMAIN, "spam.test"},
        {"http://%73pam.test/", MX_URI_DOMAIN, "spam.test"}, /* %XX decoded */
        {"http:\\\\shop.spam.test\\x", -ENOENT, ""},         /* no "//": not a link here */
        {"http://\\shop.spam.test\\x", MX_URI_DOMAIN, "spam.test"},
        {"http://shop.example.co.uk/", MX_URI_DOMAIN, "example.co.uk"},
        {"http://example.co.uk/", MX_URI_DOMAIN, "example.co.uk"},
        {"http://a.b.example.com.au", MX_URI_DOMAIN, "example.com.au"},
        {"http://co.uk/", -ENOENT, ""},
        {"http://www.example.uk/", MX_URI_DOMAIN, "example.uk"},
        {"mailto:Sales@Mail.Spam.Test?subject=hi", MX_URI_DOMAIN, "spam.test"},
        {"mailto:nobody", -ENOENT, ""},
        {"http://192.0.2.10/x", MX_URI_IP, "10.2.0.192"},
        {"http://192.0.2.10:8080", MX_URI_IP, "10.2.0.192"},
        {"http://3221225994/", MX_URI_IP, "10.2.0.192"},    /* one decimal number */
        {"http://0xc0.0.2.10/", MX_URI_IP, "10.2.0.192"},   /* hex label */
        {"http://999.0.2.10/", -ENOENT, ""},
        {"http://[2001:db8::1]/", MX_URI_IP,
         "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"},
        {"http://[::ffff:192.0.2.10]/", MX_URI_IP, "10.2.0.192"},
        {"http://[zz]/", -ENOENT, ""},
        {"http://localhost/", -ENOENT, ""},
        {"http:///", -ENOENT, ""},
        {"http://bad..test/", -ENOENT, ""},
        {"http://b\xc3\xa4" "d.test/", -ENOENT, ""}, /* raw IDN bytes */
        {"http://sp am.test/", -ENOENT, ""},
        {"/relative/link.html", -ENOENT, ""},
        {"cid:part1@x.test", -ENOENT, ""},
        {"javascript:alert(1)", -ENOENT, ""},
        {"", -ENOENT, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[MX_DNS_NAME_MAX_TEST] = "";
        int rc = mx_smtp_checks_uri_name(cases[i].uri, out, sizeof out);
        if (rc != cases[i].kind || (rc > 0 && strcmp(out, cases[i].name) != 0))
            fail_msg("'%s': got %d '%s', want %d '%s'", cases[i].uri, rc, rc > 0 ? out : "",
                     cases[i].kind, cases[i].name);
    }
    /* a label over 63 characters is no DNS name */
    char longl[120] = "http://";
    memset(longl + 7, 'a', 64);
    strcpy(longl + 71, ".test/");
    char out[300];
    assert_int_equal(mx_smtp_checks_uri_name(longl, out, sizeof out), -ENOENT);
    /* too small an output buffer is "no name", never an overflow */
    assert_int_equal(mx_smtp_checks_uri_name("http://spam.test/", out, 5), -ENOENT);
    assert_int_equal(mx_smtp_checks_uri_name("http://192.0.2.10/", out, 8), -ENOENT);
}

static const char HDRS[] =
    "Received: from relay.internal (relay.internal [10.0.0.5])\r\n"
    "\tby mx.example.test with ESMTP id 1; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    "Received: from evil.example (evil.example\r\n"
    " [198.51.100.7]) by relay.internal with SMTP; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    "Received: from first (first [IPv6:2001:db8::1]) by evil.example (x [192.0.2.200])\r\n"
    "Subject: test\r\n"
    "\r\n"
    "Received: from body (body [192.0.2.99]) by nowhere\r\n";

static void cidrs(struct mx_cidr *v, size_t *n, const char *const *texts)
{
    *n = 0;
    for (; *texts; texts++)
        assert_int_equal(mx_config_parse_cidr(*texts, &v[(*n)++]), 0);
}

static void test_received_ip(void **st)
{
    (void)st;
    struct mx_cidr tr[4];
    size_t n;
    struct sockaddr_storage ss;
    char ip[INET6_ADDRSTRLEN];

    cidrs(tr, &n, (const char *const[]){"10.0.0.0/8", NULL});
    assert_int_equal(mx_smtp_checks_received_ip((const uint8_t *)HDRS, strlen(HDRS), tr, n, &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof ip);
    assert_string_equal(ip, "198.51.100.7"); /* from the folded header */

    cidrs(tr, &n, (const char *const[]){"10.0.0.0/8", "198.51.100.0/24", NULL});
    assert_int_equal(mx_smtp_checks_received_ip((const uint8_t *)HDRS, strlen(HDRS), tr, n, &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET6); /* the "by" part's address is not the hop */
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, ip, sizeof ip);
    assert_string_equal(ip, "2001:db8::1");

    /* everyone trusted: the Received line in the body does not count */
    cidrs(tr, &n, (const char *const[]){"10.0.0.0/8", "198.51.100.0/24", "2001:db8::/32", NULL});
    assert_int_equal(mx_smtp_checks_received_ip((const uint8_t *)HDRS, strlen(HDRS), tr, n, &ss),
                     -ENOENT);
    /* a negated entry excludes (first match wins) */
    cidrs(tr, &n, (const char *const[]){"!10.0.0.5/32", "10.0.0.0/8", NULL});
    assert_int_equal(mx_smtp_checks_received_ip((const uint8_t *)HDRS, strlen(HDRS), tr, n, &ss), 0);
    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof ip);
    assert_string_equal(ip, "10.0.0.5");
    /* cut in the middle of a header, bare LF line ends, no Received at all */
    assert_int_equal(mx_smtp_checks_received_ip((const uint8_t *)HDRS, 30, NULL, 0, &ss), -ENOENT);
    const char *lf = "Received: from a (a [203.0.113.9]) by b\nSubject: x\n\n";
    assert_int_equal(mx_smtp_checks_received_ip((const uint8_t *)lf, strlen(lf), NULL, 0, &ss), 0);
    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof ip);
    assert_string_equal(ip, "203.0.113.9");
    const char *none = "Subject: x\r\nFrom: a@b\r\n\r\n";
    assert_int_equal(mx_smtp_checks_received_ip((const uint8_t *)none, strlen(none), NULL, 0, &ss),
                     -ENOENT);
}

static struct mx_smtpd_reply late;
static unsigned late_n;
static void on_answer(void *ud, const struct mx_smtpd_reply *r)
{
    (void)ud;
    late = *r;
    late_n++;
}

static void test_static_verification(void **st)
{
    (void)st;
    static const char conf[] =
        "recipient_verification {\n"
        "  static_domains = [ \"example.test\" ];\n"
        "  users = [ \"alice@example.test\", \"Carol@Example.Test\" ];\n"
        "  callout_domains = [ \"other.test\" ];\n"
        "}\n"
        "dnsbl { lists = [ \"zen.example.test=127.0.0.2 reject\" ]; }\n";
    struct mx_config *cfg = NULL;
    assert_int_equal(mx_config_load_mem("t.conf", conf, strlen(conf), NULL, 0, 0, &cfg, NULL), 0);
    struct mx_checks *ck = NULL;
    assert_int_equal(mx_smtp_checks_new(cfg, &ck), 0);
    assert_non_null(ck);
    struct sockaddr_in a4 = {.sin_family = AF_INET};
    inet_pton(AF_INET, "192.0.2.1", &a4.sin_addr);
    /* no worker: no DNS service, so nothing is asked and nothing is pending */
    struct mx_checks_conn *cc =
        mx_smtp_checks_conn_new(ck, NULL, (struct sockaddr *)&a4, "T1", on_answer, NULL);
    assert_non_null(cc);
    struct mx_envelope env;
    memset(&env, 0, sizeof env);
    memcpy(&env.client, &a4, sizeof a4);
    snprintf(env.mail_from, sizeof env.mail_from, "a@sender.test");
    struct mx_smtpd_reply r = {0};
    mx_smtp_checks_mail(cc, &env, &r);
    assert_int_equal(r.code, 0);

    struct mx_rcpt rc;
    memset(&rc, 0, sizeof rc);
    snprintf(rc.addr, sizeof rc.addr, "Alice@EXAMPLE.test");
    mx_smtp_checks_rcpt(cc, &rc, &r);
    assert_int_equal(r.code, 0);
    snprintf(rc.addr, sizeof rc.addr, "carol@example.test");
    mx_smtp_checks_rcpt(cc, &rc, &r);
    assert_int_equal(r.code, 0);
    snprintf(rc.addr, sizeof rc.addr, "bob@example.test");
    mx_smtp_checks_rcpt(cc, &rc, &r);
    assert_int_equal(r.code, 550);
    assert_string_equal(r.enh, "5.1.1");
    assert_string_equal(r.text, "<bob@example.test>: Recipient address rejected: User unknown");
    /* a domain without verification */
    r = (struct mx_smtpd_reply){0};
    snprintf(rc.addr, sizeof rc.addr, "bob@elsewhere.test");
    mx_smtp_checks_rcpt(cc, &rc, &r);
    assert_int_equal(r.code, 0);
    /* callout domain without an smtp: route: temporary refusal, never a silent accept */
    snprintf(rc.addr, sizeof rc.addr, "dave@other.test");
    mx_smtp_checks_rcpt(cc, &rc, &r);
    assert_int_equal(r.code, 450);
    assert_string_equal(r.enh, "4.2.0");
    assert_string_equal(r.text, "<dave@other.test>: Recipient address rejected: unverified "
                                "address: no route to verify it");
    assert_int_equal(late_n, 0);
    mx_smtp_checks_conn_free(cc);
    mx_smtp_checks_free(ck);
    mx_config_free(cfg);
}

static void test_bad_list_refused(void **st)
{
    (void)st;
    static const char conf[] = "dnsbl { lists = [ \"zen.example.test nope\" ]; }\n";
    struct mx_config *cfg = NULL;
    assert_int_equal(mx_config_load_mem("t.conf", conf, strlen(conf), NULL, 0, 0, &cfg, NULL), 0);
    struct mx_checks *ck = (struct mx_checks *)1;
    assert_int_equal(mx_smtp_checks_new(cfg, &ck), -EINVAL);
    assert_null(ck);
    mx_config_free(cfg);
    /* nothing configured: no checks object at all */
    assert_int_equal(mx_config_load_mem("t.conf", "", 0, NULL, 0, 0, &cfg, NULL), 0);
    assert_int_equal(mx_smtp_checks_new(cfg, &ck), 0);
    assert_null(ck);
    assert_null(mx_smtp_checks_conn_new(ck, NULL, NULL, "T", on_answer, NULL));
    mx_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_list),
        cmocka_unit_test(test_query_name),
        cmocka_unit_test(test_uri_name),
        cmocka_unit_test(test_received_ip),
        cmocka_unit_test(test_static_verification),
        cmocka_unit_test(test_bad_list_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
