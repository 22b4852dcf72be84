/*
 * test_parity.c - regression tests for differences with SpamAssassin found
 * by tests/scan/sa_parity.py over the shared corpus: each case is a small
 * crafted message and the hits SpamAssassin 4.0.1 (`spamassassin -L -t
 * -D rules`) gives on it with the same rules.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

static const char RULES[] =
    /* the pseudo header ALL: "Name: value" lines, the values unfolded and
     * decoded as header rules see them (stock __DATE_LOWER, __TO___LOWER) */
    "header ALL_DATE ALL =~ /date: \\S{5}/\n"
    "header ALL_DECODED ALL =~ /^Subject: caf\\xc3\\xa9 au lait$/m\n"
    "header ALL_RCVD_KEPT ALL =~ /^Received: from x \\(=\\?utf-8\\?q\\?a\\?=\\)/m\n"
    /* one space for a line break and the whitespace after it */
    "header SUBJ_UNFOLDED Subject =~ /^hello big world$/\n"
    /* trailing whitespace is gone before the line end */
    "header SUBJ_TRAILING Subject =~ /world\\s\\n/\n"
    /* Received, Message-ID, Date, References, List-* stay encoded */
    "header RCVD_ENCODED Received =~ /=\\?utf-8\\?q\\?a\\?=/\n"
    "header LIST_ENCODED List-Id =~ /=\\?utf-8\\?q\\?b\\?=/\n"
    "header MSGID_ENCODED Message-ID =~ /=\\?utf-8\\?q\\?c\\?=/\n"
    /* SA's raw body is chunks: ^ is a part's or a chunk's start, not a line's */
    "rawbody RAW_QUOTE /^> /\n"
    "rawbody RAW_QUOTE_M /^> /m\n"
    "rawbody RAW_END_FOO /foo\\z/\n"
    "rawbody RAW_END_BAR_NL /bar\\z/\n"
    "rawbody RAW_END_BAR /bar\\n\\z/\n"
    "score RAW_QUOTE 1\nscore RAW_QUOTE_M 1\nscore RAW_END_FOO 1\nscore RAW_END_BAR 1\n"
    "score RAW_END_BAR_NL 1\n"
    /* host names with a known TLD in the text are URIs (util_rb_tld) */
    "util_rb_tld com net org info biz de\n"
    "uri URI_EXNET /^http:\\/\\/example\\.net$/\n"
    "uri URI_EXCOM /example\\.com/\n"
    "uri URI_EXORG /example\\.org/\n"
    "uri URI_PATH /^http:\\/\\/foo\\.example\\.info\\/path\\?x=1$/\n"
    "uri URI_USCORE /under_score/\n"
    "uri URI_BADHOST /^http:\\/\\/bad_host\\.example\\.biz$/\n"
    "uri URI_C /message-file/\n"
    "uri URI_FTP /^ftp:\\/\\/ftp\\.example\\.de$/\n"
    "score URI_EXNET 1\nscore URI_EXCOM 1\nscore URI_EXORG 1\nscore URI_PATH 1\n"
    "score URI_USCORE 1\nscore URI_BADHOST 1\nscore URI_C 1\nscore URI_FTP 1\n"
    /* lines that are no header field in the message's headers */
    "header HAS_XAFTER exists:X-After\n"
    "body BODY_BOGUS /bogus/\n"
    "body BODY_CONT /continued/\n"
    "score HAS_XAFTER 1\nscore BODY_BOGUS 1\nscore BODY_CONT 1\n"
    /* modifiers combine: From:name:raw is the display name as written */
    "header NAME_RAW_8BIT From:name:raw =~ /[\\x80-\\xff]/\n"
    "header NAME_RAW_ENC From:name:raw =~ /^=\\?UTF-8\\?B\\?0JrQ/\n"
    "header NAME_DEC From:name =~ /^\\xd0\\x9a\\xd0\\xb8/\n"
    "header ADDR_RAW From:addr:raw =~ /^user\\@example\\.org$/\n"
    "score NAME_RAW_8BIT 1\nscore NAME_RAW_ENC 1\nscore NAME_DEC 1\nscore ADDR_RAW 1\n"
    /* every address of every such header, one a line */
    "header ADDRS_TWO From:addr =~ /^any\\@attack\\.com\\nany2\\@attack\\.com$/\n"
    "header ADDRS_ANY From:addr =~ /test/\n"
    "header NAMES_TWO To:name =~ /^Ann\\nBob$/\n"
    "header SUBJ_OBS Subject =~ /^obsolete$/\n"
    "header FROM_OBS From:addr =~ /^any\\@attack\\.com\\nadmin\\@legitimate\\.com$/\n"
    "score ADDRS_TWO 1\nscore ADDRS_ANY 1\nscore NAMES_TWO 1\nscore SUBJ_OBS 1\nscore FROM_OBS 1\n"
    /* a multipart without a boundary is read as text/plain */
    "body BODY_NOBOUND /hello text/\n"
    "score BODY_NOBOUND 1\n"
    /* text/calendar is neither body nor raw body, text/x-vcard raw body only */
    "body BODY_XDIFF /hello xdiff/\n"
    "rawbody RAW_XDIFF /hello xdiff/\n"
    "score BODY_XDIFF 1\nscore RAW_XDIFF 1\n"
    /* ALL:raw is the header block as it came */
    "header HDRS_MISSP ALL:raw =~ /^(?:Subject|From|To|Reply-To):\\S/ism\n"
    "header ALLRAW_ENC ALL:raw =~ /=\\?utf-8\\?q\\?/\n"
    "header ALL_ENC ALL =~ /=\\?utf-8\\?q\\?/\n"
    "header ALLRAW_FOLD ALL:raw =~ /^X-Fold: a\\n\\tb$/m\n"
    "score HDRS_MISSP 1\nscore ALLRAW_ENC 1\nscore ALL_ENC 1\nscore ALLRAW_FOLD 1\n"
    /* blanks at the edges of paragraphs of plain text */
    "body WS_HI /^Hi,$/\n"
    "body WS_SPHI /^ Hi,$/\n"
    "body WS_TRAIL /^foo $/\n"
    "body WS_LEAD /^ bar end/\n"
    "body WS_PLAIN /^baz qux$/\n"
    "score WS_HI 1\nscore WS_SPHI 1\nscore WS_TRAIL 1\nscore WS_LEAD 1\nscore WS_PLAIN 1\n"
    /* a '/' before the '@': http://...; http://foobar is also http://www.foobar.com */
    "uri URI_SLASH /^http:\\/\\/Cao\\/Beaverton\\/IBM\\@IBMUS$/\n"
    "uri URI_WWW /^http:\\/\\/www\\.cao\\.com\\/Beaverton\\/IBM\\@IBMUS$/\n"
    "uri URI_WWW2 /^http:\\/\\/www\\.intranet\\.com\\/x$/\n"
    "uri URI_WWW3 /www\\.localhost\\.com/\n"
    "score URI_SLASH 1\nscore URI_WWW 1\nscore URI_WWW2 1\nscore URI_WWW3 1\n"
    "score ALL_DATE 1\nscore ALL_DECODED 1\nscore ALL_RCVD_KEPT 1\nscore SUBJ_UNFOLDED 1\n"
    "score SUBJ_TRAILING 1\nscore RCVD_ENCODED 1\nscore LIST_ENCODED 1\nscore MSGID_ENCODED 1\n";

#include "tests/scan/rule_harness.h"

static void test_header_values(void **state)
{
    (void)state;
    /* a DKIM h= list folded after "date:" reads "date: message-id" in SA */
    assert_string_equal(scan("DKIM-Signature: v=1; h=from:subject:date:\r\n"
                             "\t message-id; b=x\r\n"
                             "Subject: hello\r\n  big\r\n\tworld   \r\n\r\nx\r\n"),
                        "ALL_DATE,SUBJ_UNFOLDED");
    /* folded with LF line ends: the same */
    assert_string_equal(scan("DKIM-Signature: v=1; h=from:subject:date:\n"
                             "\t message-id; b=x\n"
                             "Subject: hello\n  big\n\tworld   \n\nx\n"),
                        "ALL_DATE,SUBJ_UNFOLDED");
    /* without the fold there is no space after the colon */
    assert_string_equal(scan("DKIM-Signature: v=1; h=from:date:message-id; b=x\r\n\r\nx\r\n"),
                        "");
    /* ALL holds the decoded values, but not in the fields SA leaves encoded */
    assert_string_equal(scan("Received: from x (=?utf-8?q?a?=) by y; Tue, 24 Nov 2026 01:00:00 "
                             "+0000\r\n"
                             "Subject: =?utf-8?q?caf=C3=A9?= au lait\r\n"
                             "List-Id: =?utf-8?q?b?= <l.example>\r\n"
                             "Message-ID: <=?utf-8?q?c?=@example>\r\n\r\nx\r\n"),
                        "ALLRAW_ENC,ALL_DECODED,ALL_ENC,ALL_RCVD_KEPT,LIST_ENCODED,MSGID_ENCODED,"
                        "RCVD_ENCODED");
}

/* 70 lines of 60 bytes, line `quoted` (from 0) starting with "> " */
static const char *long_body(int quoted)
{
    static char msg[8192];
    size_t o = (size_t)snprintf(msg, sizeof msg, "Subject: q\n\n");
    for (int i = 0; i < 70; i++)
        o += (size_t)snprintf(msg + o, sizeof msg - o, "%s%s\n", i == quoted ? "> " : "",
                              i == quoted ? "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                                          : "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    return msg;
}

static void test_rawbody_chunks(void **state)
{
    (void)state;
    assert_string_equal(scan("Subject: q\n\n> first\nsecond\n"), "RAW_QUOTE,RAW_QUOTE_M");
    assert_string_equal(scan("Subject: q\n\nhello\n> not first\n"), "RAW_QUOTE_M");
    /* \z is the end of the chunk, not of a line, nor before its last \n */
    assert_string_equal(scan("Subject: q\n\nfoo\nbar\n"), "RAW_END_BAR");
    /* each text part is matched on its own */
    assert_string_equal(scan("Subject: q\nContent-Type: multipart/mixed; boundary=\"b\"\n\n"
                             "--b\nContent-Type: text/plain\n\nhello\n> not first\n"
                             "--b\nContent-Type: text/plain\n\n> second part\n--b--\n"),
                        "RAW_QUOTE,RAW_QUOTE_M");
    /* 4200 bytes: cut at the first line end from 2048 on (2099), so line 35
     * starts the second chunk; line 9 starts nothing */
    assert_string_equal(scan(long_body(9)), "RAW_QUOTE_M");
    assert_string_equal(scan(long_body(35)), "RAW_QUOTE,RAW_QUOTE_M");
    assert_string_equal(scan(long_body(34)), "RAW_QUOTE_M");
}

static const char *in_body(const char *text)
{
    static char msg[512];
    snprintf(msg, sizeof msg, "Subject: q\n\n%s\n", text);
    return scan(msg);
}

static void test_schemeless_uris(void **state)
{
    (void)state;
    assert_string_equal(in_body("Signed-off-by: A <a at example.net>"), "URI_EXNET");
    assert_string_equal(in_body("see lib/message-file.c here"), ""); /* .c is no TLD */
    /* ',' ')' ':' are no end delimiters: no URI at all */
    assert_string_equal(in_body("visit example.com, today"), "");
    assert_string_equal(in_body("(see example.org)"), "");
    assert_string_equal(in_body("at example.org: now"), "");
    /* a final '.' is taken, then dropped with the trailing punctuation */
    assert_string_equal(in_body("visit example.com. today"), "URI_EXCOM");
    assert_string_equal(in_body("go to foo.example.info/path?x=1."), "URI_PATH");
    /* '_' only below the second level */
    assert_string_equal(in_body("under_score.com and bad_host.example.biz"), "URI_BADHOST");
    assert_string_equal(in_body("get it from ftp.example.de"), "URI_FTP");
    assert_string_equal(in_body("http://x.test/ a example.com"), "URI_EXCOM");
    assert_string_equal(in_body("Cc: Cao/Beaverton/IBM@IBMUS"), "URI_SLASH,URI_WWW");
    assert_string_equal(in_body("see http://intranet/x and http://localhost/y"), "URI_WWW2");
}

static void test_bad_header_lines(void **state)
{
    (void)state;
    /* one passed over, with its continuation line */
    assert_string_equal(scan("From: a@b.example\nbogus line\n continued: x\nX-After: hi\n\nbody\n"),
                        "HAS_XAFTER");
    assert_string_equal(scan("From: a@b.example\nbogus 1\nbogus 2\nbogus 3\nX-After: hi\n\nbody\n"),
                        "HAS_XAFTER");
    /* the 4th, or a "--" line, starts the body */
    assert_string_equal(
        scan("From: a@b.example\nbogus 1\nbogus 2\nbogus 3\nbogus 4\nX-After: hi\n\nbody\n"),
        "BODY_BOGUS");
    assert_string_equal(scan("From: a@b.example\n--bogus\nX-After: hi\n\nbody\n"), "BODY_BOGUS");
    /* in a MIME part the first one does */
    assert_string_equal(scan("X-After: hi\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
                             "Content-Type: text/plain\nbogus line\nTo: x@y.example\n\nbody\n"
                             "--b--\n"),
                        "BODY_BOGUS,HAS_XAFTER");
}

static void test_multipart_without_boundary(void **state)
{
    (void)state;
    assert_string_equal(scan("Subject: q\nContent-Type: multipart/mixed\n\nhello text\n"),
                        "BODY_NOBOUND");
}

static const char *second_part(const char *type)
{
    static char msg[512];
    snprintf(msg, sizeof msg,
             "Subject: q\nContent-Type: multipart/mixed; boundary=\"b\"\n\n--b\n"
             "Content-Type: text/plain\n\nplain\n--b\nContent-Type: %s\n\nhello xdiff\n--b--\n",
             type);
    return scan(msg);
}

static void test_text_types(void **state)
{
    (void)state;
    assert_string_equal(second_part("text/x-diff"), "BODY_XDIFF,RAW_XDIFF");
    assert_string_equal(second_part("text/enriched"), "BODY_XDIFF,RAW_XDIFF");
    assert_string_equal(second_part("text/x-vcard"), "RAW_XDIFF");
    assert_string_equal(second_part("text/calendar"), "");
}

static void test_all_raw(void **state)
{
    (void)state;
    assert_string_equal(scan("From a@b  Mon Dec  7 00:00:00 2026\nSubject:foo\n"
                             "X-Enc: =?utf-8?q?caf=C3=A9?=\nX-Fold: a\n\tb\n\nbody\n"),
                        "ALLRAW_ENC,ALLRAW_FOLD,HDRS_MISSP");
}

static void test_body_whitespace(void **state)
{
    (void)state;
    /* a body starting with one newline starts with a space; blanks before
     * and after a paragraph break stay as one space */
    assert_string_equal(
        scan("Subject: q\n\n\nHi,\n\nfoo  \n\n  bar end\n\nbaz qux\n\nlast\n"),
        "WS_LEAD,WS_PLAIN,WS_SPHI,WS_TRAIL");
    assert_string_equal(scan("Subject: q\n\nHi,\n\nfoo\n\nbar end\n\nbaz\r\n  qux\n\nlast\n"),
                        "WS_HI,WS_PLAIN");
}

static void test_header_modifiers(void **state)
{
    (void)state;
    assert_string_equal(
        scan("From: =?UTF-8?B?0JrQuNGA0LjQu9C70LjRhtCw?= <user@example.org>\nSubject: x\n\nbody\n"),
        "ADDR_RAW,NAME_DEC,NAME_RAW_ENC");
    assert_string_equal(scan("From: <any@attack.com>, <any2@attack.com>\n"
                             "To: Ann <a@x.example>, \"Bob\" <b@x.example>, c@x.example\n"
                             "Subject: x\n\nbody\n"),
                        "ADDRS_TWO,NAMES_TWO");
    /* a source route is no address */
    assert_string_equal(scan("From: <@test.com, @test.ru:test@attack.com>\nSubject: x\n\nbody\n"), "");
    /* "Name :" is a field, in the message's own headers without the blanks */
    assert_string_equal(scan("From: <any@attack.com>\nFrom : <admin@legitimate.com>\n"
                             "Subject  : obsolete\n\nbody\n"),
                        "FROM_OBS,SUBJ_OBS");
}

int main(void)
{
    const struct CMUnitTest engine[] = {
        cmocka_unit_test(test_header_values),
        cmocka_unit_test(test_rawbody_chunks),
        cmocka_unit_test(test_schemeless_uris),
        cmocka_unit_test(test_bad_header_lines),
        cmocka_unit_test(test_header_modifiers),
        cmocka_unit_test(test_text_types),
        cmocka_unit_test(test_all_raw),
        cmocka_unit_test(test_body_whitespace),
        cmocka_unit_test(test_multipart_without_boundary),
    };
    return cmocka_run_group_tests_name("sa-parity", engine, setup, teardown);
}
