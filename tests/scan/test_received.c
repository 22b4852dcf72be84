/*
 * test_received.c - the X-Spam-Relays-* pseudo headers (scan/received.c):
 * single Received lines, a whole chain with trust inference, and header
 * rules on the pseudo headers (and on ALL-TRUSTED/-UNTRUSTED/-EXTERNAL)
 * through the engine. Every expected string and hit is what spamassassin
 * 4.0.1 printed or hit for the same input (`spamassassin -D metadata,rules
 * -L -t < data/relays-chain.eml`, the rules added with --cf).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "scan/received_internal.h"
#include "scan/scan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* one relay each; the strings are SpamAssassin's (all untrusted: intl=0) */
static void test_lines(void **state)
{
    (void)state;
    static const struct {
        const char *line, *want;
    } cases[] = {
        /* Postfix */
        {"from mail.example.org (mail.example.org [198.51.100.7])\n\t(using TLSv1.3 with cipher "
         "TLS_AES_256_GCM_SHA384 (256/256 bits))\n\tby mx.example.net (Postfix) with ESMTPS id "
         "4F1A2B3C4D\n\tfor <u@example.net>; Mon,  7 Dec 2026 00:00:06 +0000 (UTC)",
         "[ ip=198.51.100.7 rdns=mail.example.org helo=mail.example.org by=mx.example.net ident= "
         "envfrom= intl=0 id=4F1A2B3C4D auth= msa=0 ]"},
        {"from helo.example (unknown [203.0.113.9])\n\tby relay.example.org (Postfix) with ESMTP "
         "id BBB222;\n\tMon,  7 Dec 2026 00:00:05 +0000 (UTC)",
         "[ ip=203.0.113.9 rdns= helo=helo.example by=relay.example.org ident= envfrom= intl=0 "
         "id=BBB222 auth= msa=0 ]"},
        /* mxgate's own trace header (smtp/smtpd.c), IPv4 with TLS and IPv6 */
        {"from client.example (unknown [198.51.100.99])\r\n\tby mx.gw.example (mxgate) with "
         "ESMTPS id 7f3a9c01\r\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n\tfor "
         "<u@example.net>; Mon, 07 Dec 2026 00:10:00 +0000",
         "[ ip=198.51.100.99 rdns= helo=client.example by=mx.gw.example ident= envfrom= intl=0 "
         "id=7f3a9c01 auth= msa=0 ]"},
        {"from v6.example (unknown [IPv6:2001:db8::5])\r\n\tby relay.example.org (mxgate) with "
         "SMTP id 00ab; Mon, 07 Dec 2026 00:09:00 +0000",
         "[ ip=2001:db8::5 rdns= helo=v6.example by=relay.example.org ident= envfrom= intl=0 "
         "id=00ab auth= msa=0 ]"},
        /* Exim, both forms */
        {"from [203.0.113.5] (helo=foo.example)\n\tby relay2.example.org with esmtp (Exim 4.96)\n"
         "\t(envelope-from <bounce@example.com>)\n\tid 1abcDE-000123-Xy; Mon, 07 Dec 2026 "
         "00:00:04 +0000",
         "[ ip=203.0.113.5 rdns= helo=foo.example by=relay2.example.org ident= "
         "envfrom=bounce@example.com intl=0 id=1abcDE-000123-Xy auth= msa=0 ]"},
        {"from mail.example.com ([198.51.100.20] helo=smtp.example.com)\n\tby relay3.example.org "
         "with esmtps (TLS1.3) (Exim 4.96)\n\tid 1xyzAB-000456-Cd; Mon, 07 Dec 2026 00:00:03 +0000",
         "[ ip=198.51.100.20 rdns=mail.example.com helo=smtp.example.com by=relay3.example.org "
         "ident= envfrom= intl=0 id=1xyzAB-000456-Cd auth= msa=0 ]"},
        /* Microsoft SMTPSVC */
        {"from tthompson ([217.35.105.172] unverified) by\n mail.neosinteractive.com with "
         "Microsoft SMTPSVC(5.0.2195.5329);\n Mon, 7 Dec 2026 00:00:02 +0000",
         "[ ip=217.35.105.172 rdns= helo=tthompson by=mail.neosinteractive.com ident= envfrom= "
         "intl=0 id= auth= msa=0 ]"},
        /* qmail */
        {"from unknown (HELO terpsichore.farfalle.com) (jdavid@216.254.40.70)\n  by "
         "mail13.speakeasy.net with SMTP; 7 Dec 2026 00:00:01 -0000",
         "[ ip=216.254.40.70 rdns= helo=terpsichore.farfalle.com by=mail13.speakeasy.net "
         "ident=jdavid envfrom= intl=0 id= auth= msa=0 ]"},
        /* sendmail, "(authenticated)" */
        {"from rev.net (natpool62.rev.net [63.148.93.62] (may be forged))\n\t(authenticated) by "
         "mail.rev.net (8.11.4/8.11.4) with ESMTP id h0KKa7d32306\n\tfor <x@example.org>; Mon, 7 "
         "Dec 2026 00:00:00 GMT",
         "[ ip=63.148.93.62 rdns=natpool62.rev.net helo=rev.net by=mail.rev.net ident= envfrom= "
         "intl=0 id=h0KKa7d32306 auth=Sendmail msa=0 ]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct mx_relay r;
        char s[4096];
        assert_int_equal(mx_received_parse_line(cases[i].line, strlen(cases[i].line), &r, NULL),
                         MX_RCVD_RELAY);
        mx_relay_as_string(&r, s, sizeof s);
        assert_string_equal(s, cases[i].want);
    }
    /* not relays: no "from", a local Exim handover */
    struct mx_relay r;
    static const char *const skip[] = {
        "by sender.example.org (Postfix, from userid 1000)\n\tid 99999; Sun,  6 Dec 2026 "
        "23:59:59 +0000 (UTC)",
        "from andrew by trinity.supernews.net with local (Exim 4.12) id 18xeL6-000Dn1-00; Tue, "
        "25 Mar 2003 02:39:00 +0000",
    };
    for (size_t i = 0; i < sizeof skip / sizeof skip[0]; i++)
        assert_int_equal(mx_received_parse_line(skip[i], strlen(skip[i]), &r, NULL), MX_RCVD_SKIP);
    /* a POP/IMAP fetcher handover */
    const char *pop =
        "from pop.example.org [198.51.100.1] by localhost with POP3 (fetchmail-6.4.37) "
        "for <u@localhost> (single-drop); Mon, 07 Dec 2026 00:00:00 +0000 (UTC)";
    assert_int_equal(mx_received_parse_line(pop, strlen(pop), &r, NULL), MX_RCVD_FETCHER);
    /* no "by": unparseable */
    const char *bad = "from somewhere (no address here)";
    assert_int_equal(mx_received_parse_line(bad, strlen(bad), &r, NULL), MX_RCVD_UNPARSEABLE);
    /* private addresses (Constants.pm IP_PRIVATE) */
    const char *priv = "from a (b [100.64.1.2]) by c (Postfix) with ESMTP id x";
    assert_int_equal(mx_received_parse_line(priv, strlen(priv), &r, NULL), MX_RCVD_RELAY);
    assert_true(r.ip_private);
    const char *pub = "from a (b [100.128.1.2]) by c (Postfix) with ESMTP id x";
    assert_int_equal(mx_received_parse_line(pub, strlen(pub), &r, NULL), MX_RCVD_RELAY);
    assert_false(r.ip_private);
}

/* SpamAssassin's four strings for data/relays-chain.eml */
#define T1                                                                                         \
    "[ ip=127.0.0.1 rdns=localhost helo=localhost by=mx.example.net ident= envfrom= intl=1 "       \
    "id=AAA111 auth= msa=0 ]"
#define T2                                                                                         \
    "[ ip=10.1.2.3 rdns=EXC01.corp.example helo=EXC01.corp.example by=EXC02.corp.example ident= "  \
    "envfrom= intl=1 id=15.1.2507.27 auth= msa=0 ]"
#define T3                                                                                         \
    "[ ip=198.51.100.33 rdns= helo=!192.168.1.5! by=smtp.example.org ident= envfrom= intl=1 "      \
    "id=1234ABCD auth=ESMTPSA msa=0 ]"
#define U1                                                                                         \
    "[ ip=198.51.100.7 rdns=mail.example.org helo=mail.example.org by=mx.example.net ident= "      \
    "envfrom= intl=0 id=4F1A2B3C4D auth= msa=0 ]"
#define U2                                                                                         \
    "[ ip=203.0.113.9 rdns= helo=helo.example by=relay.example.org ident= envfrom= intl=0 "        \
    "id=BBB222 auth= msa=0 ]"
#define U3                                                                                         \
    "[ ip=203.0.113.5 rdns= helo=foo.example by=relay2.example.org ident= "                        \
    "envfrom=bounce@example.com intl=0 id=1abcDE-000123-Xy auth= msa=0 ]"
#define U4                                                                                         \
    "[ ip=198.51.100.20 rdns=mail.example.com helo=smtp.example.com by=relay3.example.org ident= " \
    "envfrom= intl=0 id=1xyzAB-000456-Cd auth= msa=0 ]"
#define U5                                                                                         \
    "[ ip=217.35.105.172 rdns= helo=tthompson by=mail.neosinteractive.com ident= envfrom= intl=0 " \
    "id= auth= msa=0 ]"
#define U6                                                                                         \
    "[ ip=216.254.40.70 rdns= helo=terpsichore.farfalle.com by=mail13.speakeasy.net ident=jdavid " \
    "envfrom= intl=0 id= auth= msa=0 ]"
#define U7                                                                                         \
    "[ ip=63.148.93.62 rdns=natpool62.rev.net helo=rev.net by=mail.rev.net ident= envfrom= "       \
    "intl=0 id=h0KKa7d32306 auth=Sendmail msa=0 ]"
#define U8 "[ ip=203.0.113.77 rdns= helo= by= ident= envfrom= intl=0 id= auth= msa=0 ]"
#define TRUSTED T1 " " T2 " " T3
#define UNTRUSTED U1 " " U2 " " U3 " " U4 " " U5 " " U6 " " U7 " " U8

static char *data_msg(const char *name, size_t *n)
{
    const char *dir = getenv("SCAN_TEST_DATA");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir ? dir : "tests/scan/data", name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char buf[16384];
    *n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[*n] = 0;
    return buf;
}

static void test_chain(void **state)
{
    (void)state;
    size_t n;
    char *b = data_msg("relays-chain.eml", &n);
    struct mx_rcvd_hdr h[64];
    size_t nh = 0;
    /* header fields: name up to ':', value over the continuation lines */
    for (char *p = b; *p && *p != '\n' && nh < 64;) {
        char *colon = strchr(p, ':'), *e = p;
        while (*e && !(*e == '\n' && e[1] != ' ' && e[1] != '\t'))
            e++;
        assert_non_null(colon);
        h[nh++] = (struct mx_rcvd_hdr){p, colon + 1, (size_t)(colon - p), (size_t)(e - colon - 1)};
        p = *e ? e + 1 : e;
    }
    assert_int_equal(nh, 17);
    struct mx_relays rel = {.r = calloc(MX_RCVD_MAX_RELAYS, sizeof(struct mx_relay))};
    assert_non_null(rel.r);
    mx_relays_build(&rel, h, nh);
    assert_int_equal(rel.n, 11);
    static char s[16384];
    mx_relays_string(&rel, MX_RELAYS_TRUSTED, s, sizeof s);
    assert_string_equal(s, TRUSTED);
    mx_relays_string(&rel, MX_RELAYS_INTERNAL, s, sizeof s);
    assert_string_equal(s, TRUSTED);
    mx_relays_string(&rel, MX_RELAYS_UNTRUSTED, s, sizeof s);
    assert_string_equal(s, UNTRUSTED);
    mx_relays_string(&rel, MX_RELAYS_EXTERNAL, s, sizeof s);
    assert_string_equal(s, UNTRUSTED);
    /* the output is cut at the buffer's end, NUL-terminated */
    assert_int_equal(mx_relays_string(&rel, MX_RELAYS_TRUSTED, s, 10), 9);
    assert_int_equal(strlen(s), 9);
    /* a POP3 fetcher line below trusted relays drops them from Trusted/Internal */
    const char *pop = "from pop.example.org [198.51.100.1] by localhost with POP3; Mon, 07 Dec "
                      "2026 00:00:00 +0000";
    struct mx_rcvd_hdr h2[] = {{"Received", h[0].v, 8, h[0].vl},
                               {"Received", pop, 8, strlen(pop)},
                               {"Received", h[3].v, 8, h[3].vl}};
    mx_relays_build(&rel, h2, 3);
    mx_relays_string(&rel, MX_RELAYS_TRUSTED, s, sizeof s);
    assert_string_equal(s, "");
    mx_relays_string(&rel, MX_RELAYS_EXTERNAL, s, sizeof s);
    assert_string_equal(s, U1);
    free(rel.r);
}

/* every example line of Received.pm's comments (data/received-examples.txt):
 * the four strings spamassassin printed for a message with that one line */
static void test_sa_examples(void **state)
{
    (void)state;
    const char *dir = getenv("SCAN_TEST_DATA");
    char path[4096];
    snprintf(path, sizeof path, "%s/received-examples.txt", dir ? dir : "tests/scan/data");
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char line[16384], got[16384];
    static const char *const names[] = {"X-Spam-Relays-Trusted: ", "X-Spam-Relays-Untrusted: ",
                                        "X-Spam-Relays-Internal: ", "X-Spam-Relays-External: "};
    struct mx_relays rel = {.r = calloc(MX_RCVD_MAX_RELAYS, sizeof(struct mx_relay))};
    assert_non_null(rel.r);
    static char rcvd[16384];
    int nex = 0, k = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (strncmp(line, "Received: ", 10) == 0) {
            memmove(rcvd, line + 10, strlen(line + 10) + 1);
            struct mx_rcvd_hdr h = {"Received", rcvd, 8, strlen(rcvd)};
            mx_relays_build(&rel, &h, 1);
            nex++;
            k = 0;
        } else if (strncmp(line, "X-Spam-Relays-", 14) == 0) {
            assert_true(k < 4);
            assert_int_equal(strncmp(line, names[k], strlen(names[k])), 0);
            mx_relays_string(&rel, (enum mx_relays_which)k, got, sizeof got);
            if (strcmp(got, line + strlen(names[k])) != 0)
                fail_msg("Received: %s\n%s: mxgate %s", rcvd, line, got);
            k++;
        }
    }
    fclose(f);
    free(rel.r);
    assert_int_equal(nex, 144);
}

/* header rules on the pseudo headers (stock rules' patterns) through the engine */

static const char RULES[] =
    "header __LAST_UNTRUSTED_RELAY_NO_AUTH X-Spam-Relays-Untrusted =~ /^[^\\]]+ auth= /\n"
    "header __LAST_EXTERNAL_RELAY_NO_AUTH X-Spam-Relays-External =~ /^[^\\]]+ auth= /\n"
    "header __RDNS_NONE X-Spam-Relays-Untrusted =~ /^[^\\]]+ rdns= /\n"
    "header TRUSTED_AUTH X-Spam-Relays-Trusted =~ / auth=ESMTPSA /\n"
    "header INTERNAL_LOCAL X-Spam-Relays-Internal =~ /^\\[ ip=127\\.0\\.0\\.1 /\n"
    "header NO_UNTRUSTED X-Spam-Relays-Untrusted !~ /\\S/\n"
    "header DOS_RELAYED_EXT ALL-EXTERNAL =~ "
    "/(?:^|\\n)[Rr][eE][cC][eE][iI][vV][eE][dD]:\\s.+\\n[Rr][eE][cC][eE][iI][vV][eE][dD]:\\s/s\n"
    "header TRUSTED_FROM ALL-TRUSTED =~ /^From:/m\n"
    "header UNTRUSTED_FROM ALL-UNTRUSTED =~ /^From:/m\n"
    "meta LAST_NOAUTH __LAST_UNTRUSTED_RELAY_NO_AUTH && __LAST_EXTERNAL_RELAY_NO_AUTH\n"
    "meta NONE_RDNS __RDNS_NONE\n"
    "score TRUSTED_AUTH 1\nscore INTERNAL_LOCAL 1\nscore NO_UNTRUSTED 1\nscore LAST_NOAUTH 1\n"
    "score NONE_RDNS 1\nscore DOS_RELAYED_EXT 1\nscore TRUSTED_FROM 1\nscore UNTRUSTED_FROM 1\n";

#include "tests/scan/rule_harness.h"

static void test_engine_relays(void **state)
{
    (void)state;
    size_t n;
    /* the chain: trusted local + authenticated hops, first untrusted has rDNS, no auth;
     * eight external Received headers (SpamAssassin: __DOS_RELAYED_EXT hits); the
     * header fields below the last Received belong to ALL-UNTRUSTED */
    assert_string_equal(scan(data_msg("relays-chain.eml", &n)),
                        "DOS_RELAYED_EXT,INTERNAL_LOCAL,LAST_NOAUTH,TRUSTED_AUTH,UNTRUSTED_FROM");
    /* two external hops (mxgate's own and the one before): __DOS_RELAYED_EXT hits in SA */
    assert_string_equal(scan(data_msg("relays-mxgate.eml", &n)),
                        "DOS_RELAYED_EXT,LAST_NOAUTH,NONE_RDNS");
    /* local hop, fetcher marker, one external hop: __DOS_RELAYED_EXT does not hit in SA */
    assert_string_equal(scan(data_msg("relays-fetch.eml", &n)), "LAST_NOAUTH");
    /* first untrusted relay without rDNS */
    assert_string_equal(scan("Received: from helo.example (unknown [203.0.113.9])\r\n"
                             "\tby relay.example.org (Postfix) with ESMTP id BBB222;\r\n"
                             "\tMon,  7 Dec 2026 00:00:05 +0000 (UTC)\r\nSubject: x\r\n\r\nx\r\n"),
                        "LAST_NOAUTH,NONE_RDNS");
    /* no Received header: the pseudo headers exist but are empty; every header is
     * in ALL-TRUSTED, none in ALL-UNTRUSTED (SA's index ranges) */
    assert_string_equal(scan("From: a@example.org\r\nSubject: x\r\n\r\nx\r\n"),
                        "NO_UNTRUSTED,TRUSTED_FROM");
    /* only a private hop: trusted, nothing untrusted */
    assert_string_equal(scan("Received: from localhost (localhost [127.0.0.1])\r\n"
                             "\tby mx.example.net (Postfix) with ESMTP id AAA111;\r\n"
                             "\tMon,  7 Dec 2026 00:00:09 +0000 (UTC)\r\nFrom: a@example.org\r\n"
                             "\r\nx\r\n"),
                        "INTERNAL_LOCAL,NO_UNTRUSTED,TRUSTED_FROM");
}

int main(void)
{
    const struct CMUnitTest plain[] = {
        cmocka_unit_test(test_lines),
        cmocka_unit_test(test_chain),
        cmocka_unit_test(test_sa_examples),
    };
    const struct CMUnitTest engine[] = {
        cmocka_unit_test(test_engine_relays),
    };
    int rc = cmocka_run_group_tests_name("received", plain, NULL, NULL);
    rc |= cmocka_run_group_tests_name("received-engine", engine, setup, teardown);
    return rc;
}
