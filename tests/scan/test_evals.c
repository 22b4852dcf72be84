/*
 * test_evals.c - the SpamAssassin eval tests mxgate computes natively
 * (scan/evals.c): the date parser against SpamAssassin's own results, the
 * eval-call parser, and each eval through the engine on crafted messages.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "scan/evals_internal.h"
#include "scan/scan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Expected values: Mail::SpamAssassin::Util::parse_rfc822_date() of
 * spamassassin 4.0.1 on each string (-1 where it returns undef). */
static void test_parse_date(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int64_t t;
    } cases[] = {
        {"Tue, 24 Nov 2026 01:55:51 +0000", 1795485351},
        {"Tue, 24 Nov 2026 01:55:51 -0800", 1795514151},
        {"Mon, 2 Jan 06 09:00:00 +0930", 1136158200},   /* two-digit year */
        {"Wed, 31 Feb 2024 10:00 GMT", 1709287200},     /* day too high: next month */
        {"Thu, 14 Nov 2023 22:13:57 PST", 1700028837},  /* named zone */
        {"Fri Nov 14 22:13:57 2003", 1068768000},       /* ctime form eats the time */
        {"14 Nov 99 23:59:61 EST", 942641999},          /* seconds clamped */
        {"1 Jan 1969 00:00:00 +0100", 0},               /* year clamped, then 0 */
        {"Sat, 01 Jan 2050 12:00:00 +0000", 2114424000}, /* year clamped to 2037 */
        {"Sun, 5 May 2019 7:3 CEST", 1557007200},       /* no hh:mm: midnight */
        {"Sun, 5 May 2019 07:03:00 (CEST)", 1557032580},
        {"Sun,5 May 2019 07:03:00 XYZ", 1557039780},    /* unknown zone: -0000 */
        {"Sun, 0 May 2019 07:03:00 +0000", -1},
        {"garbage", -1},
        {"24 nov 2026 1:2:3 +0100", 1795474800},
        {"Mon, 32 Dec 2025 10:00:00 -0500", 1767279600},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t t = mx_native_parse_date(cases[i].s, strlen(cases[i].s));
        if (t != cases[i].t)
            fail_msg("%s: %lld, SpamAssassin says %lld", cases[i].s, (long long)t,
                     (long long)cases[i].t);
    }
}

static void test_parse_call(void **state)
{
    (void)state;
    struct mx_native n;
    const char *s = "eval:check_for_shifted_date('undef', '-96')";
    assert_true(mx_native_parse(s, s + strlen(s), &n));
    assert_int_equal(n.fn, MX_NAT_SHIFTED_DATE);
    assert_false(n.lo_set);
    assert_true(n.hi_set && n.hi == -96);
    s = "eval:check_header_count_range(\"Subject\",'2', '999')  ";
    assert_true(mx_native_parse(s, s + strlen(s), &n));
    assert_string_equal(n.hdr, "Subject");
    assert_true(n.lo == 2 && n.hi == 999);
    s = "eval:check_for_mime('mime_bad_iso_charset')";
    assert_true(mx_native_parse(s, s + strlen(s), &n));
    assert_int_equal(n.flag, MX_NMF_BAD_ISO_CHARSET);
    /* not native: stays skipped */
    static const char *const no[] = {"eval:check_for_mime('mime_faraway_charset')",
                                     "eval:check_for_mime('mime_qp_count')",
                                     "eval:check_rbl('x', 'y.')", "eval:subject_is_all_caps(1)",
                                     "eval:check_for_shifted_date('1')",
                                     "eval:check_body_length('x')", "eval:check_body_length('1') x",
                                     "eval:check_for_shifted_date('1', '2'", "check_body_length(1)"};
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        assert_false(mx_native_parse(no[i], no[i] + strlen(no[i]), &n));
}

/* ---- through the engine ---------------------------------------------------- */


static const char RULES[] =
    "header DATE_PAST_96 eval:check_for_shifted_date('undef', '-96')\n"
    "header DATE_PAST_3_6 eval:check_for_shifted_date('-6', '-3')\n"
    "header DATE_FUTURE_3_6 eval:check_for_shifted_date('3', '6')\n"
    "header SUBJ_CAPS eval:subject_is_all_caps()\n"
    "header TWO_SUBJECTS eval:check_header_count_range('Subject','2','999')\n"
    "body MIME_HTML_ONLY eval:check_for_mime_html_only()\n"
    "body __MIME_HTML eval:check_for_mime_html()\n"
    "rawbody __MIME_B64 eval:check_for_mime('mime_base64_count')\n"
    "rawbody MIME_B64_TEXT eval:check_for_mime('mime_base64_encoded_text')\n"
    "body MIME_BAD_ISO eval:check_for_mime('mime_bad_iso_charset')\n"
    "body __LEN_LT_128 eval:check_body_length('128')\n"
    "meta SHORT_B64 __MIME_B64 && __LEN_LT_128\n"
    "meta HTML_ANY __MIME_HTML\n"
    "header __MISSING_TO eval:check_for_missing_to_header()\n"
    "meta MISSING_TO_HTML __MISSING_TO && __MIME_HTML\n"
    "body HTML_MSG eval:html_test('html')\n"
    "score DATE_PAST_96 1\nscore DATE_PAST_3_6 1\nscore DATE_FUTURE_3_6 1\nscore SUBJ_CAPS 1\n"
    "score TWO_SUBJECTS 1\nscore MIME_HTML_ONLY 1\nscore MIME_B64_TEXT 1\nscore MIME_BAD_ISO 1\n"
    "score SHORT_B64 1\nscore HTML_ANY 1\n";

#include "tests/scan/rule_harness.h"

static void test_engine_natives(void **state)
{
    (void)state;
    struct mx_scan_stats st;
    mx_scan_engine_stats(eng, &st);
    assert_int_equal(st.native, 13);
    assert_int_equal(st.skipped, 0);

    /* Date four days before the (only) Received date */
    assert_string_equal(scan("Received: from a by b; Tue, 24 Nov 2026 01:00:00 +0000\r\n"
                             "Date: Fri, 20 Nov 2026 00:59:59 +0000\r\nSubject: hi there\r\n\r\n"
                             "text\r\n"),
                        "DATE_PAST_96");
    /* the closest Received date counts: 4 h past the newer hop */
    assert_string_equal(scan("Received: from a by b; Tue, 24 Nov 2026 05:00:00 +0100\r\n"
                             "Received: from c by d; Mon, 16 Nov 2026 04:00:00 +0000\r\n"
                             "Date: Tue, 24 Nov 2026 00:00:00 +0000\r\nSubject: hi there\r\n\r\nx\r\n"),
                        "DATE_PAST_3_6");
    /* in the future; no Received header: no difference at all */
    assert_string_equal(scan("Received: from a by b; Tue, 24 Nov 2026 01:00:00 +0000\r\n"
                             "Date: Tue, 24 Nov 2026 05:30:00 +0000\r\n\r\nx\r\n"),
                        "DATE_FUTURE_3_6");
    assert_string_equal(scan("Date: Fri, 20 Nov 2020 00:00:00 +0000\r\n\r\nx\r\n"), "");
    /* subject in capitals; one word, short ones, Re: prefixes, lower case do not count */
    assert_string_equal(scan("Subject: Re: BUY CHEAP WATCHES NOW\r\n\r\nx\r\n"), "SUBJ_CAPS");
    assert_string_equal(scan("Subject: BUYCHEAPWATCHESNOW\r\n\r\nx\r\n"), "");
    assert_string_equal(scan("Subject: BUY IT\r\n\r\nx\r\n"), "");
    assert_string_equal(scan("Subject: BUY CHEAP WATCHEs\r\n\r\nx\r\n"), "");
    assert_string_equal(scan("Subject: =?koi8-r?Q?BUY_CHEAP_WATCHES?=\r\n\r\nx\r\n"), "");
    assert_string_equal(scan("Subject: a b\r\nSubject: c d\r\n\r\nx\r\n"), "TWO_SUBJECTS");
    assert_string_equal(scan("Subject: a b\r\nSubject: a b\r\n\r\nx\r\n"), ""); /* same value */
    /* MIME */
    assert_string_equal(scan("To: a@b.test\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n"),
                        "HTML_ANY,HTML_MSG,MIME_HTML_ONLY");
    /* an empty HTML part is not rendered; no To (nor Apparently-To) */
    assert_string_equal(scan("Content-Type: text/html\r\n\r\n"),
                        "HTML_ANY,MIME_HTML_ONLY,MISSING_TO_HTML");
    assert_string_equal(scan("Apparently-To: a@b.test\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n"),
                        "HTML_ANY,HTML_MSG,MIME_HTML_ONLY");
    assert_string_equal(scan("Content-Type: multipart/alternative; boundary=b\r\n\r\n"
                             "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
                             "--b\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--b--\r\n"),
                        "HTML_ANY,HTML_MSG,MISSING_TO_HTML");
    assert_string_equal(scan("Content-Type: text/plain; charset=us-ascii\r\n"
                             "Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n"),
                        "MIME_B64_TEXT,SHORT_B64");
    assert_string_equal(scan("Content-Type: text/plain; charset=iso-8859-15\r\n"
                             "Content-Disposition: inline\r\n"
                             "Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n"),
                        "SHORT_B64");
    assert_string_equal(scan("Content-Type: text/plain; charset=iso-foo-bar\r\n\r\nx\r\n"),
                        "MIME_BAD_ISO");
    assert_string_equal(scan("Content-Type: text/plain; charset=iso-2022-jp\r\n\r\nx\r\n"), "");
    /* body length: 130 bytes is over the limit of 128 */
    char big[512];
    snprintf(big, sizeof big,
             "Content-Transfer-Encoding: base64\r\nContent-Type: application/x-y\r\n\r\n%0128d\r\n",
             0);
    assert_string_equal(scan(big), "");
}

int main(void)
{
    const struct CMUnitTest plain[] = {
        cmocka_unit_test(test_parse_date),
        cmocka_unit_test(test_parse_call),
    };
    const struct CMUnitTest engine[] = {
        cmocka_unit_test(test_engine_natives),
    };
    int rc = cmocka_run_group_tests_name("evals", plain, NULL, NULL);
    rc |= cmocka_run_group_tests_name("evals-engine", engine, setup, teardown);
    return rc;
}
