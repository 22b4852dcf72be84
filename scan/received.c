/*
 * received.c - SpamAssassin's Received-header parser (see received_internal.h).
 *
 * A port of Mail::SpamAssassin::Message::Metadata::Received 4.0
 * (parse_received_headers, parse_received_line, make_relay_as_string):
 * the same tests in the same order, with the same regular expressions run
 * in PCRE2 (compiled once, on first use; a match limit bounds each call).
 * The comments name the MTA formats as the Perl code does.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "scan/received_internal.h"

#include <ctype.h>
#include <limits.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- regular expressions ---------------------------------------------- */

/* Constants.pm IP_ADDRESS (its own /i) */
#define V4OCT "(?:1\\d\\d|2[0-4]\\d|25[0-5]|[1-9]\\d|\\d)"
#define V4 V4OCT "\\." V4OCT "\\." V4OCT "\\." V4OCT
#define H4 "[a-f0-9]{1,4}"
#define IPA                                                                                        \
    "(?i:(?:\\b(?<!:)" V4 "\\b|(?:IPv6:|(?<![a-f0-9:]))(?:(?:(?:" H4 ":){6}|::(?:" H4              \
    ":){0,5}|(?:" H4 ":){1,5}:|" H4 "::(?:" H4 ":){1,4}|(?:" H4 ":){2}:(?:" H4 ":){1,3}|(?:" H4    \
    ":){3}:(?:" H4 ":){1,2}|(?:" H4 ":){4}:" H4 ":)" V4 "|(?:" H4 ":){7}" H4 "|:(?::" H4           \
    "){1,7}|(?:" H4 ":){1,7}:|" H4 ":(?::" H4 "){1,6}|(?:" H4 ":){2}(?::" H4 "){1,5}|(?:" H4       \
    ":){3}(?::" H4 "){1,4}|(?:" H4 ":){4}(?::" H4 "){1,3}|(?:" H4 ":){5}(?::" H4 "){1,2}|(?:" H4   \
    ":){6}:" H4 "|::)(?![a-f0-9:])))"

/* Constants.pm LOCALHOST (its own /i) */
#define Z4 "0{1,4}"
#define LOCALHOST                                                                                  \
    "(?i:(?:localhost(?:\\.localdomain)?|\\b(?<!:)127\\.0\\.0\\.1\\b|(?:IPv6:|(?<![a-f0-9:]))"     \
    "(?:(?:(?:" Z4 ":){5}ffff:|::(?:" Z4 ":){0,4}ffff:|(?:" Z4 ":){1,4}:ffff:|" Z4 "::(?:" Z4      \
    ":){1,3}ffff:|(?:" Z4 ":){2}:0{1,2}:ffff:|(?:" Z4 ":){3}:0:ffff:|(?:" Z4                       \
    ":){4}:ffff:)127\\.0\\.0\\.1|(?:" Z4 ":){7}0{0,3}1|:(?::" Z4 "){0,6}:0{0,3}1|" Z4 ":(?::" Z4   \
    "){0,5}:0{0,3}1|(?:" Z4 ":){2}(?::" Z4 "){0,4}:0{0,3}1|(?:" Z4 ":){3}(?::" Z4                  \
    "){0,3}:0{0,3}1|(?:" Z4 ":){4}(?::" Z4 "){0,2}:0{0,3}1|(?:" Z4 ":){5}(?::" Z4                  \
    "){0,1}:0{0,3}1|(?:" Z4 ":){6}:0{0,3}1)(?![a-f0-9:])))"

/* Constants.pm IP_PRIVATE (anchored, /i) */
#define PRIV4                                                                                      \
    "(?:10|127|169\\.254|172\\.(?:1[6-9]|2[0-9]|3[01])|192\\.168|100\\.(?:6[4-9]|[7-9][0-9]|1[01]" \
    "[0-9]|12[0-7]))"
#define IP_PRIVATE                                                                                 \
    "^(?i:(?:" PRIV4 "\\..*|(?:(?:IPv6:|(?<![a-f0-9:]))(?:(?:(?:" Z4 ":){5}ffff:|::(?:" Z4         \
    ":){0,4}ffff:|(?:" Z4 ":){1,4}:ffff:|" Z4 "::(?:" Z4 ":){1,3}ffff:|(?:" Z4                     \
    ":){2}:0{1,2}:ffff:|(?:" Z4 ":){3}:0:ffff:|(?:" Z4 ":){4}:ffff:)" PRIV4                        \
    "\\..*|fe[89ab][0-9a-f]:.*|(?:" Z4 ":){7}0{0,3}1|:(?::" Z4 "){0,6}:0{0,3}1|" Z4 ":(?::" Z4     \
    "){0,5}:0{0,3}1|(?:" Z4 ":){2}(?::" Z4 "){0,4}:0{0,3}1|(?:" Z4 ":){3}(?::" Z4                  \
    "){0,3}:0{0,3}1|(?:" Z4 ":){4}(?::" Z4 "){0,2}:0{0,3}1|(?:" Z4 ":){5}(?::" Z4                  \
    "){0,1}:0{0,3}1|(?:" Z4 ":){6}:0{0,3}1)(?![a-f0-9:]))))"

struct rx {
    const char *pat;
    uint32_t opts;
    pcre2_code *code; /* compiled on first use, then shared (read-only) */
};

static pcre2_code *rx_code(struct rx *r)
{
    pcre2_code *c = __atomic_load_n(&r->code, __ATOMIC_ACQUIRE);
    if (c)
        return c;
    int err;
    PCRE2_SIZE off;
    c = pcre2_compile((PCRE2_SPTR)r->pat, PCRE2_ZERO_TERMINATED, r->opts, &err, &off, NULL);
    if (!c)
        return NULL;
    pcre2_jit_compile(c, PCRE2_JIT_COMPLETE); /* where JIT is missing, the interpreter runs */
    pcre2_code *expect = NULL;
    if (!__atomic_compare_exchange_n(&r->code, &expect, c, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        pcre2_code_free(c); /* another thread won */
        return expect;
    }
    return c;
}

/* per-call state: the line being parsed and the last match */
struct ctx {
    pcre2_match_data *md;
    pcre2_match_context *mc;
    const char *subj; /* subject of the last successful match */
    PCRE2_SIZE *ov;
    int rc;
};

static bool rx_match(struct ctx *c, struct rx *r, const char *s)
{
    pcre2_code *code = rx_code(r);
    if (!code)
        return false;
    int rc = pcre2_match(code, (PCRE2_SPTR)s, strlen(s), 0, 0, c->md, c->mc);
    if (rc < 0)
        return false; /* no match, or the match limit: both "no" */
    c->subj = s;
    c->rc = rc;
    c->ov = pcre2_get_ovector_pointer(c->md);
    return true;
}

/* capture i of the last match into out (cap MX_RCVD_FIELD); false when unset */
static bool cap(struct ctx *c, int i, char *out)
{
    out[0] = 0;
    if (i >= c->rc || c->ov[2 * i] == PCRE2_UNSET)
        return false;
    size_t n = c->ov[2 * i + 1] - c->ov[2 * i];
    if (n >= MX_RCVD_FIELD)
        n = MX_RCVD_FIELD - 1;
    memcpy(out, c->subj + c->ov[2 * i], n);
    out[n] = 0;
    return true;
}

/* remove the span of the last match from s (s///, once) */
static void cut(struct ctx *c, char *s)
{
    size_t a = c->ov[0], b = c->ov[1];
    memmove(s + a, s + b, strlen(s + b) + 1);
}

#define RXO(p, o)                                                                                  \
    ({                                                                                             \
        static struct rx r_ = {p, o, NULL};                                                        \
        &r_;                                                                                       \
    })
/* m/p/ on the line, m/p/i */
#define M(p) rx_match(c, RXO(p, 0), s)
#define MI(p) rx_match(c, RXO(p, PCRE2_CASELESS), s)
/* m/p/ on another string */
#define MS(str, p) rx_match(c, RXO(p, 0), str)
#define MSI(str, p) rx_match(c, RXO(p, PCRE2_CASELESS), str)
#define C(i, f) cap(c, i, r->f)

static void strip_chars(char *s)
{
    /* [\s\000\#\[\]\(\)\<\>\|] -> ! (\000 ends the C string anyway) */
    for (; *s; s++)
        if (isspace((unsigned char)*s) || strchr("#[]()<>|", *s))
            *s = '!';
}

/* Perl truthiness of a string: neither "" nor "0" */
static bool truthy(const char *s)
{
    return s[0] && !(s[0] == '0' && !s[1]);
}

/* the envfrom clean-up of both the qmail-scanner hack and "enough" */
static void clean_envfrom(char *e)
{
    /* strip leading space and "<"s, trailing ">"s and space */
    size_t a = 0, n = strlen(e);
    while (a < n && isspace((unsigned char)e[a]))
        a++;
    while (a < n && e[a] == '<')
        a++;
    memmove(e, e + a, n - a + 1);
    n -= a;
    size_t b = n;
    while (b > 0 && isspace((unsigned char)e[b - 1]))
        b--;
    /* Perl's $ also matches before a final newline: whitespace covers it */
    while (b > 0 && e[b - 1] == '>')
        b--;
    /* />*\s*$/ needs the '>'s directly before the trailing space run */
    size_t t = b;
    while (t < n && e[t] == '>')
        t++;
    while (t < n && isspace((unsigned char)e[t]))
        t++;
    if (t == n)
        e[b] = 0;
    strip_chars(e);
}

/* Exim's "(helo=... ident=...)" comment: s/helo=(\S+)// and s/ident=(\S*)// */
static void helo_ident(struct ctx *c, char *sub, struct mx_relay *r)
{
    if (MS(sub, "helo=(\\S+)")) {
        C(1, helo);
        cut(c, sub);
    }
    if (MS(sub, "ident=(\\S*)")) {
        C(1, ident);
        cut(c, sub);
    }
}

static enum mx_rcvd_rc parse(struct ctx *c, char *s, struct mx_relay *r, char *qms)
{
    bool mta_looked_up_dns = false, have_envfrom = false;
    char tmp[MX_RCVD_FIELD];
    (void)mta_looked_up_dns; /* SA keeps it for no_reverse_dns, not for the string */

    if (!MI("^\\(?from "))
        return MX_RCVD_SKIP;
    if (M("\\bwith local for\\b"))
        return MX_RCVD_SKIP;
    if (MI("^from (\\S+) by [^\\s;]+ ?;")) {
        cap(c, 1, tmp);
        if (!MS(tmp, "^\\[[\\d.]+\\]$"))
            return MX_RCVD_SKIP;
    }
    /* the date at the end */
    if (M("[\\s;]+(?:(?:Mon|T(?:ue|hu)|Wed|Fri|S(?:at|un)), )?\\d+ "
          "(?:J(?:an|u[nl])|Feb|Ma[ry]|A(?:pr|ug)|Sep|Oct|Nov|Dec) \\d+ \\d+:\\d+(?::\\d+)? \\S+$"))
        cut(c, s);
    /* s/\)by /) by / */
    {
        char *p = strstr(s, ")by ");
        if (p) { /* s has room: MX_RCVD_MAX_LINE + 16 bytes */
            memmove(p + 2, p + 1, strlen(p + 1) + 1);
            p[1] = ' ';
        }
    }
    if (M(" id <?([^\\s<>;]{3,})"))
        C(1, id);
    if (M("\\bhelo=([-A-Za-z0-9\\.\\^+_&:=?!@%*\\$\\\\\\/"
          "]+)(?:[^-A-Za-z0-9\\.\\^+_&:=?!@%*\\$\\\\\\/]|$)"))
        C(1, helo);
    else if (M("\\b(?:HELO|EHLO) "
               "([-A-Za-z0-9\\.\\^+_&:=?!@%*\\$\\\\\\/]+)(?:[^-A-Za-z0-9\\.\\^+_&:=?!@%*\\$\\\\\\/"
               "]|$)"))
        C(1, helo);
    if (M(" by (\\S+)(?:[^-A-Za-z0-9\\;\\.]|$)"))
        C(1, by);

    /* authentication */
    if (M(" by ") && MI(" with ((?:ES|L|UTF8S|UTF8L)MTPS?A|ASMTP|HTTP[SU]?)(?: |;|$)")) {
        C(1, auth);
    } else if (M(" by mx\\.google\\.com with ESMTPS id "
                 "[a-z0-9]{1,4}sm[0-9]{2,9}[a-z]{3}\\.[0-9]{1,3}\\.[0-9]{4}\\.(?:[0-6][0-9]\\.){4}["
                 "0-6][0-9]") &&
               M("\\(version=([^ ]+) cipher=([^\\)]+)\\)")) {
        char a[MX_RCVD_FIELD], b[MX_RCVD_FIELD];
        cap(c, 1, a);
        cap(c, 2, b);
        snprintf(r->auth, sizeof r->auth, "GMail - transport=%.200s cipher=%.200s", a, b);
    } else if (M("^from .*?(?:\\]\\)|\\)\\]) \\(AUTH: (LOGIN|PLAIN|DIGEST-MD5|CRAM-MD5) \\S+(?:, "
                 ".*?)?\\) by ")) {
        C(1, auth);
    } else if (M("authenticated") && M("^from .*?(?:\\](?: \\([^)]*\\))?\\)|\\)\\]) "
                                       ".*?\\(.*?authenticated.*?\\).*? by")) {
        strcpy(r->auth, "Sendmail");
    } else if (M("from \\S* \\((?:HELO|EHLO) (\\S*)\\) \\[(" IPA
                 ")\\] by (mail\\.gmx\\.(?:net|com)) \\([^\\)]+\\) with ((?:ESMTP|SMTP))")) {
        char a[MX_RCVD_FIELD], b[MX_RCVD_FIELD];
        cap(c, 4, a);
        cap(c, 3, b);
        snprintf(r->auth, sizeof r->auth, "GMX (%.200s / %.200s)", a, b);
    } else if (M(" \\(authenticated as ") &&
               M("\\) by .+ \\(\\d{1,2}\\.\\d\\.\\d{3}(?:\\.\\d{1,3})?\\) \\(authenticated as "
                 ".+\\) id ")) {
        strcpy(r->auth, "CriticalPath");
    } else if (M("\\) \\(Authenticated sender: \\S+\\) by \\S+ \\(([^\\)]+)\\) with ")) {
        cap(c, 1, tmp);
        if (strcmp(tmp, "Postfix") == 0)
            strcpy(r->auth, "Postfix");
        else
            snprintf(r->auth, sizeof r->auth, "Postfix (%.480s)", tmp);
    } else if (M("CommuniGate Pro (HTTP|SMTP|XIMSS|IMAP)") && M(" \\(account ")) {
        strcpy(r->auth, "Communigate");
    } else if (M(" with Microsoft Exchange Server HTTP-DAV\\b")) {
        strcpy(r->auth, "HTTP-DAV");
    } else if (M(" by ") && MI(" \\(via (HTTP.?)\\)(?: |;|$)")) {
        C(1, auth);
    }

    if (strncmp(s, "from ", 5) == 0) {
        memmove(s, s + 5, strlen(s + 5) + 1);
        if (MI("(?:return-path:? |envelope-(?:sender|from)[ =])(\\S+)\\b")) {
            C(1, envfrom);
            have_envfrom = true;
        }
        if (M(" \\((?:SquirrelMail|NaSMail) authenticated user ")) {
            if (M("(" IPA ")\\b(?![.-]).{10,80}by (\\S+) with HTTP")) {
                C(1, ip), C(2, by);
                goto enough;
            }
        }
        if (M("aol\\.com") && M("with HTTP \\(WebMailUI\\)")) {
            if (M("(" IPA ") by (\\S+) \\(" IPA "\\) with HTTP \\(WebMailUI\\)")) {
                C(1, ip), C(2, by);
                goto enough;
            }
        }
        if (M(" SMTPSVC")) {
            if (M("^(\\S*) \\(\\[(" IPA ")\\][^\\)]{0,40}\\) by (\\S+) with Microsoft SMTPSVC")) {
                C(1, helo), C(2, ip), C(3, by);
                goto enough;
            }
            if (M("^mail pickup service by (\\S+) with Microsoft SMTPSVC$"))
                return MX_RCVD_SKIP;
        } else if (M(" with (?:Microsoft SMTP Server|mapi id) (?:\\([^\\)]+\\) "
                     ")?\\d+\\.\\d+\\.\\d+\\.\\d+(?:$| )")) {
            if (M("^(\\S+) \\(\\[?(" IPA ")(?:%[A-Z0-9._~-]*)?\\]?\\) by (\\S+) ")) {
                C(1, helo), C(2, ip), C(3, by);
                r->id[0] = 0;
                goto enough;
            }
        } else if (M("\\[XMail ")) {
            if (M("^(\\S+) \\((\\[?" IPA
                  "\\]?)(?::\\d+)\\) by (\\S+)(?: \\(\\S+\\))? with \\[XMail")) {
                C(1, helo), C(2, ip), C(3, by);
                if (M(" id <(\\S+)>"))
                    C(1, id);
                if (M(" from <(\\S+)>")) {
                    C(1, envfrom);
                    have_envfrom = true;
                }
                goto enough;
            }
        } else if (M("\\(ecelerity\\b")) {
            if (M("^\\(\\[(" IPA "):\\d+\\] helo=(\\S+)\\) by (\\S+) ")) {
                C(1, ip), C(2, helo), C(3, by);
                goto enough;
            }
            if (M("^\\S+ \\(\\[(" IPA "):\\d+\\]\\) by (\\S+) ")) {
                C(1, ip), C(2, by);
                goto enough;
            }
        } else if (M("Exim")) {
            if (M("\\bwith local(?:-\\S+)? "))
                return MX_RCVD_SKIP;
            if (M("^\\[(" IPA ")\\] \\((.*?)\\) by (\\S+) ")) {
                C(1, ip), C(3, by);
                cap(c, 2, tmp);
                helo_ident(c, tmp, r);
                goto enough;
            }
            if (M("^(\\S+) \\(\\[(" IPA ")\\](.*?)\\) by (\\S+) ")) {
                C(1, rdns), C(2, ip), C(4, by);
                cap(c, 3, tmp);
                strcpy(r->helo, r->rdns); /* default, apparently: bug 5112 */
                helo_ident(c, tmp, r);
                goto enough;
            }
            if (M("^(\\S+) \\[(" IPA ")\\](:\\d+)? by (\\S+) ")) {
                C(1, rdns), C(2, ip), C(1, helo), C(4, by);
                goto enough;
            }
            if (M("^(\\S+) "))
                C(1, rdns);
            if (M(" \\((\\S+)\\) "))
                C(1, helo);
            if (M(" \\[(" IPA ")(?:\\.\\d+)?\\] "))
                C(1, ip);
            if (M("by (\\S+) ")) {
                C(1, by);
                if (truthy(r->ip))
                    goto enough;
            }
        } else if (M(" \\(Postfix\\) with")) {
            if (M("^(\\S+) \\((\\S+) \\[(" IPA ")\\]\\) by (\\S+) ")) {
                mta_looked_up_dns = true;
                C(1, helo), C(2, rdns), C(3, ip), C(4, by);
                if (strcmp(r->rdns, "unknown") == 0)
                    r->rdns[0] = 0;
                goto enough;
            }
            if (M("^(\\S+) \\((\\S+)\\[(" IPA ")\\]\\) by (\\S+) ")) {
                mta_looked_up_dns = true;
                C(1, helo), C(2, rdns), C(3, ip), C(4, by);
                if (strcmp(r->rdns, "unknown") == 0)
                    r->rdns[0] = 0;
                goto enough;
            }
        } else if (M("\\(Scalix SMTP Relay")) {
            if (M("^(\\S+) \\( ?(" IPA ")\\) by (\\S+)")) {
                C(1, helo), C(2, ip), C(3, by);
                goto enough;
            }
        } else if (M(" \\(Lotus Domino ")) {
            if (M("^(\\S+) \\(\\[(" IPA ")\\]\\) by (\\S+) \\(Lotus")) {
                C(1, helo), C(2, ip), C(3, by);
                goto enough;
            }
        }

        if (M("\\bwith HTTP\\b") && M("^(" IPA ") \\(\\[" IPA "\\]\\) by (\\S+)")) {
            C(1, ip), C(2, by);
            goto enough;
        }
        if (!M(" by \\S+ \\(qmail-\\S+\\) with ")) {
            /* sendmail */
            if (M("^(\\S+) \\((\\S+) \\[(" IPA ")\\].*\\) by (\\S+) \\(")) {
                mta_looked_up_dns = true;
                C(1, helo), C(2, rdns), C(3, ip), C(4, by);
                if (MS(r->rdns, "^IDENT:([^\\@]*)\\@")) {
                    C(1, ident);
                    cut(c, r->rdns);
                }
                if (MS(r->rdns, "^([^\\@]*)\\@")) {
                    C(1, ident);
                    cut(c, r->rdns);
                }
                goto enough;
            }
        }
        /* formats get a bit non-standard from here */
        if (M("^(\\S+) \\((\\S+) \\[(" IPA ")\\]\\) by (\\S+) with \\S+ \\(")) {
            C(2, rdns), C(3, ip), C(1, helo), C(4, by);
            goto enough;
        }
        if (M("^(\\S+) \\(\\[(" IPA ")\\] helo=(\\S+)\\) by (\\S+) with ")) {
            C(1, rdns), C(2, ip), C(3, helo), C(4, by);
            goto enough;
        }
        if (M("^(\\S+) \\(<unknown\\S*>\\[(" IPA ")\\]\\) by (\\S+) ")) {
            C(1, helo), C(2, ip), C(3, by);
            goto enough;
        }
        if (M("^(\\S+) \\((\\S+\\.\\S+)\\[(" IPA ")\\]\\) by (\\S+) ")) {
            C(1, helo), C(2, rdns), C(3, ip), C(4, by);
            goto enough;
        }
        if (M("^(\\S+) \\((\\S*)\\@\\[(" IPA ")\\].*\\) by (\\S+) \\(")) {
            C(1, helo), C(3, ip), C(4, by), C(2, ident);
            goto enough;
        }
        if (M("by (\\S+\\.hotmail\\.msn\\.com) ")) {
            C(1, by);
            if (M("^(" IPA ") "))
                C(1, ip);
            goto enough;
        }
        if (M("^(\\S+) \\((?:HELO|EHLO) (\\S*)\\) \\((" IPA
              ")\\) by (\\S+) \\(qpsmtpd/\\S+\\) with (?:ESMTP|SMTP)")) {
            C(1, rdns), C(2, helo), C(3, ip), C(4, by);
            goto enough;
        }
        if (M("^(\\S+) \\(LHLO (\\S*)\\) \\((" IPA ")\\) by (\\S+) with LMTP")) {
            C(1, rdns), C(2, helo), C(3, ip), C(4, by);
            goto enough;
        }
        if (M("^(\\S+) \\((?:HELO|EHLO) (\\S*)\\) \\[(" IPA
              ")\\] by (\\S+) \\([^\\)]+\\) with (?:ESMTP|SMTP)")) {
            C(1, rdns), C(2, helo), C(3, ip), C(4, by);
            goto enough;
        }
        if (M("^(\\S+) \\(\\[(" IPA ")\\]\\) by (\\S+) via smtpd \\(for \\S+\\) with SMTP\\(")) {
            C(1, helo), C(2, ip), C(3, by);
            goto enough;
        }
        /* qmail */
        if (M("^\\S+( \\((?:HELO|EHLO) \\S*\\))? \\((\\S+\\@)?\\[?" IPA
              "\\]?\\)( \\(envelope-sender <\\S+>\\))? by \\S+( \\(.+\\))* with (.* "
              ")?(SMTP|QMQP)(?! id )")) {
            if (M("^(\\S+) \\((?:HELO|EHLO) ([^ \\(\\)]*)\\) \\((\\S*)\\@\\[?(" IPA
                  ")\\]?\\)( \\(envelope-sender <\\S+>\\))? by (\\S+)")) {
                C(1, rdns), C(2, helo), C(3, ident), C(4, ip), C(6, by);
            } else if (M("^(\\S+) \\((?:HELO|EHLO) ([^ \\(\\)]*)\\) \\(\\[?(" IPA
                         ")\\]?\\)( \\(envelope-sender <\\S+>\\))? by (\\S+)")) {
                C(1, rdns), C(2, helo), C(3, ip), C(5, by);
            } else if (M("^(\\S+) \\((\\S*)\\@\\[?(" IPA
                         ")\\]?\\)( \\(envelope-sender <\\S+>\\))? by (\\S+)")) {
                C(1, helo), C(1, rdns), C(2, ident), C(3, ip), C(5, by);
            } else if (M("^(\\S+) \\(\\[?(" IPA
                         ")\\]?\\)( \\(envelope-sender <\\S+>\\))? by (\\S+)")) {
                C(1, helo), C(1, rdns), C(2, ip), C(4, by);
            }
            if (strcmp(r->rdns, "unknown") != 0)
                mta_looked_up_dns = true;
            else
                r->rdns[0] = 0;
            goto enough;
        }
        if (M(" via HTTP$") && M("^\\[(" IPA ")\\] by (\\S+) via HTTP$")) {
            C(1, ip), C(2, by);
            goto enough;
        }
        if (M("^(\\S+) \\( \\[(" IPA ")\\]\\).*? by (\\S+) ")) {
            C(2, ip), C(3, by);
            goto enough;
        }
        if (M("^\\((\\S+) \\[(" IPA ")\\]\\) by (\\S+) ")) {
            C(1, helo), C(2, ip), C(3, by);
            goto enough;
        }
        if (M("^\\[(" IPA ")\\] by (\\S+) ")) {
            C(1, ip), C(2, by);
            goto enough;
        }
        if (M("^\\(\\[?(" IPA ")\\]?\\) by (\\S+) ")) {
            C(1, ip), C(2, by);
            goto enough;
        }
        if (M("^(\\S+) \\[(" IPA ")\\] by (\\S+) \\[" IPA "\\] with ")) {
            C(1, helo), C(2, ip), C(3, by);
            goto enough;
        }
        if (M("^(\\S+) \\[\\((" IPA ")\\)\\] by (\\S+) \\(" IPA "\\) ")) {
            C(1, helo), C(2, ip), C(3, by);
            goto enough;
        }
        if (M("^(\\S+) \\(\\[(" IPA ")\\]\\) by (\\S+) \\(")) { /* sendmail */
            C(1, helo), C(2, ip), C(3, by);
            goto enough;
        }
        if (M("^(\\S+) \\((\\S+) \\[(" IPA ")\\]\\).*? by (\\S+)\\b")) { /* sendmail */
            cap(c, 2, tmp);
            if (strcmp(tmp, "softdnserr") != 0)
                C(2, rdns);
            C(1, helo), C(3, ip), C(4, by);
            goto enough;
        }
        if (M("^(\\S+) \\(\\[(" IPA ")(?:[.:]\\d+)?\\]\\).*? by (\\S+) ")) {
            C(1, helo), C(2, ip), C(3, by);
            goto enough;
        }
        if (M("^(\\S+) \\((\\S+) \\[(" IPA
              ")\\]\\)(?: \\(authenticated bits=\\d+\\))? by (\\S+) \\(")) {
            C(1, helo), C(2, rdns), C(3, ip), C(4, by);
            goto enough;
        }
        if (M("with (?:POP3|IMAP)"))
            return MX_RCVD_FETCHER;
        if (M("^(\\S+) \\((?:HELO|EHLO) ([^\\)]*)\\) \\((\\S*@)?\\[?(" IPA
              ")\\]?\\).* by (\\S+) ")) {
            C(1, rdns), C(2, helo), C(3, ident), C(4, ip), C(5, by);
            size_t k = strlen(r->ident);
            if (k && r->ident[k - 1] == '@')
                r->ident[k - 1] = 0;
            goto enough;
        }
        if (M("^(\\S+) \\((\\S*@)?\\[?(" IPA ")\\]?\\).* by (\\S+) ")) {
            C(1, rdns), C(1, helo), C(2, ident), C(3, ip), C(4, by);
            size_t k = strlen(r->ident);
            if (k && r->ident[k - 1] == '@')
                r->ident[k - 1] = 0;
            goto enough;
        }
        if (M(" with http for ") && M("^\\[(" IPA ")\\] by (\\S+) with http for ")) {
            C(1, ip), C(2, by);
            goto enough;
        }
        if (M(" via smap ") && M("^(\\S+)\\((" IPA ")\\) by (\\S+) via smap ")) {
            C(1, rdns), C(2, ip), C(3, by);
            goto enough;
        }
        if (M("^(\\S+)\\((" IPA "), (?:HELO|EHLO) (\\S*)\\) by (\\S+) via smap ")) {
            C(1, rdns), C(2, ip), C(3, helo), C(4, by);
            goto enough;
        }
        if (M(" \\(Post") && M("^\\[(" IPA ")\\] by (\\S+) \\(Post")) {
            C(1, ip), C(2, by);
            goto enough;
        }
        if (M(" \\(ArGoSoft") && M("^\\[(" IPA ")\\] by (\\S+) \\(ArGoSoft")) {
            C(1, ip), C(2, by);
            goto enough;
        }
        if (M("^(" IPA ") by (\\S+) \\((?:SMTPL|InterScan)\\b")) {
            C(1, ip), C(2, by);
            goto enough;
        }
        if (M(" with BSMTP") && M("^\\S+ by \\S+ with BSMTP"))
            return MX_RCVD_SKIP;
        if (M("^(\\S+) \\((\\S+) \\[(" IPA ")\\]\\) by (\\S+) with ")) {
            C(1, helo), C(2, rdns), C(3, ip), C(4, by);
            goto enough;
        }
        if (M("^(\\S+) \\((?:HELO|EHLO) (\\S*)\\) \\((?:(\\S+)\\@)?(" IPA
              ").*?\\) by (\\S+) with ")) {
            C(1, rdns), C(2, helo), C(4, ip), C(5, by);
            if (c->rc > 3 && c->ov[6] != PCRE2_UNSET)
                C(3, ident);
            goto enough;
        }
        if (M("^\\[(" IPA ")\\] \\((?:account \\S+ )?(?:HELO|EHLO) (\\S*)\\) by (\\S+) \\(")) {
            C(1, ip), C(2, helo), C(3, by);
            goto enough;
        }
        if (M(" \\(CommuniGate Pro") && M("^(\\S+) \\(\\[(" IPA ")\\] verified\\) by (\\S+) \\(")) {
            C(1, rdns), C(1, helo), C(2, ip), C(3, by);
            goto enough;
        }
        if (M("^\\(\\[(" IPA ")\\]\\) by (\\S+) with ")) {
            C(1, ip), C(2, by);
            goto enough;
        }
        if (M("^([^\\d]\\S+) \\((" IPA ")\\) by (\\S+) ")) {
            C(1, helo), C(2, ip), C(3, by);
            goto enough;
        }
        if (M("^\\S+ \\(\\S+\\) by \\S+ \\(Content Technologies "))
            return MX_RCVD_SKIP;
        if (M("^(\\S+) \\(\\[(" IPA ")\\] \\[(\\S+)\\]\\) by (\\S+) with ")) {
            C(1, helo), C(2, ip), C(4, by);
            goto enough;
        }
        if (M("^(" IPA ") by (\\S+) with ")) {
            C(1, ip), C(2, by);
            goto enough;
        }
        if (M("^(\\S+) \\((\\S+)\\[(" IPA ")\\]\\) by (\\S+) ")) {
            C(1, helo), C(2, rdns), C(3, ip), C(4, by);
            goto enough;
        }
        if (M("^\\[(" IPA ")\\]\\S+ \\((?:HELO|EHLO) (\\S*)\\) by (\\S+) ")) {
            C(1, ip), C(2, helo), C(3, by);
            goto enough;
        }
        if (M("^(" IPA ") \\((?:HELO|EHLO) (\\S*)\\) by (\\S+) ")) {
            C(1, ip), C(2, helo), C(3, by);
            goto enough;
        }
        if (M("^(\\S+) \\[(" IPA ")\\] by (\\S+) ")) {
            C(1, helo), C(2, ip), C(3, by);
            goto enough;
        }
        if (M("^(\\S+)\\((" IPA ")\\) by (\\S+) ")) {
            C(1, rdns), C(2, ip), C(3, by);
            goto enough;
        }
        if (M("^\\[(" IPA ")\\] by (\\S+) \\(MailGate ")) {
            C(1, ip), C(2, by);
            goto enough;
        }
        if (M("^(\\S+) \\(unverified \\[(" IPA ")\\]\\) by (\\S+) ")) {
            C(1, helo), C(2, ip), C(3, by);
            goto enough;
        }
        if (M("^(" IPA ") \\([A-Za-z][^\\)]+\\) by (\\S+) with ")) {
            C(1, ip), C(2, by);
            goto enough;
        }
        if (M("^\\[(" IPA ")\\] \\(([^\\)]+)\\) by (\\S+) ")) {
            C(1, ip), C(3, by);
            cap(c, 2, tmp);
            helo_ident(c, tmp, r);
            goto enough;
        }
        if (M("^(\\S+) \\((?:\\S+\\@)?(" IPA ")\\) by (\\S+) with ")) {
            C(1, rdns), C(2, ip), C(3, by);
            goto enough;
        }
        if (M("^(\\S+)\\((" IPA ")\\)(?:, claiming to be \"(\\S+)\")? via \\S+ by (\\S+),")) {
            C(1, rdns), C(2, ip), C(3, helo), C(4, by);
            goto enough;
        }
        if (M("^(\\S+) \\((\\S+)@(" IPA ") with login\\) by (\\S+\\.yahoo\\.com) with SMTP")) {
            C(1, helo), C(3, ip), C(4, by);
            goto enough;
        }
        if (M("^X-Originating-IP: (" IPA ")$")) {
            C(1, ip);
            r->by[0] = 0;
            goto enough;
        }
        /* local handovers, "by"-only lines and other non-relays */
        if (M("^\\S+ \\([^\\s\\@]+\\@" LOCALHOST "\\) by \\S+ \\(") ||
            M("^\\S+ \\S+ by \\S+ with local-e?smtp ") ||
            M("^127\\.0\\.0\\.1 \\(AVG SMTP \\S+ \\[\\S+\\]\\)") ||
            M("^\\S+\\@\\S+ by \\S+ by uid \\S+ ") || M("^\\S+\\@\\S+ by \\S+ ") ||
            M("^Unknown/Local \\(") || M("^" LOCALHOST " \\((?:\\S+\\@)?" LOCALHOST "[\\)\\[]") ||
            M("^\\S+ \\((?:\\S+\\@)?" LOCALHOST "\\) ") ||
            M("^\\S+ \\(\\S+\\@\\S+ \\[" LOCALHOST "\\]\\) ") ||
            M("^\\(AUTH: \\S+\\) by \\S+ with ") ||
            M("^localhost \\(localhost \\[\\[UNIX: localhost\\]\\]\\) by ") ||
            M("^\\S+\\.amazon\\.com by \\S+\\.amazon\\.com with ESMTP \\(peer crosscheck: ") ||
            M("^[^\\.]+ by \\S+ with Novell_GroupWise") ||
            M("^no\\.name\\.available by \\S+ via smtpd \\(for "))
            return MX_RCVD_SKIP;
        if (M("^\\S+ by \\S+ \\(.{0,100}\\) with qmail-scanner")) {
            if (qms) {
                if (have_envfrom) {
                    clean_envfrom(r->envfrom);
                    strcpy(qms, r->envfrom);
                }
            }
            return MX_RCVD_SKIP;
        }
        if (M("^\\S+ by \\S+ with local") ||
            M("^\\S+ \\(\\[unix socket\\]\\) by \\S+ \\(Cyrus v[0-9]*?\\.[0-9]*?\\.[0-9]*?\\) with "
              "LMTPA") ||
            M("^\\S+ by \\S+ (?:with|via|for|\\()") ||
            M("^\\S+ (?:(?:with|via|for) \\S+|\\(unverified\\)) by\\b") ||
            M("^\\S+ \\(unknown\\) by \\S+ \\(SG\\) with \\b") ||
            M("^\\S+ \\(\\S+ \\[local\\]\\) by \\S+ \\(OpenSMTPD\\) with \\b") ||
            M("\\(LSMTP for") || M("^\\(\\[" LOCALHOST "\\]\\) with MailEnable ") ||
            M("^facebook\\.com \\([^\\)]+\\) by facebook\\.com with Thrift id \\S+$") ||
            M("^\\S+ named \\S+ by gmailapi\\.google\\.com with HTTPREST$") ||
            M("^\\S+ id \\S+$") || M("^\\[<.*? \\(Jetsend"))
            return MX_RCVD_SKIP;
        if (!truthy(r->helo) && M("^(\\S+)[^-A-Za-z0-9\\.]"))
            C(1, helo);
    } else if (strncmp(s, "FROM ", 5) == 0) {
        memmove(s, s + 5, strlen(s + 5) + 1);
        if (M("^(\\S+) \\((\\S+) \\[(" IPA
              ")\\]\\) BY (\\S+) (?:\\([^\\)]+\\) WITH SMTP )?ID <?(\\S+?)>?(?: FOR <[^>]+>)?$")) {
            C(1, helo), C(2, rdns), C(3, ip), C(4, by), C(5, id);
            if (strcmp(r->rdns, "unverified") == 0)
                r->rdns[0] = 0;
            goto enough;
        }
    } else if (strncmp(s, "(from ", 6) == 0) {
        memmove(s, s + 6, strlen(s + 6) + 1);
        if (M("^(\\S*) \\[(" IPA ")\\]\\) by (\\S+) \\(NAVGW .*?\\) with ")) {
            C(1, helo), C(2, ip), C(3, by);
            goto enough;
        }
        if (M("^\\S+\\@localhost\\) by \\S+ ") ||
            M("^[^\\s\\@]+\\@[^)]+\\) by \\S+\\(jqueuemail\\) id [^\\s;]+"))
            return MX_RCVD_SKIP;
    }
    if (!truthy(r->ip) && M("\\[(" IPA ")\\]"))
        C(1, ip);
    if (truthy(r->ip) && truthy(r->by))
        goto enough;
    return MX_RCVD_UNPARSEABLE;

enough:
    /* $rdns =~ s/\.+\z//; unknown or [...] -> '' */
    {
        size_t k = strlen(r->rdns);
        while (k && r->rdns[k - 1] == '.')
            r->rdns[--k] = 0;
        if (strcasecmp(r->rdns, "unknown") == 0 || r->rdns[0] == '[')
            r->rdns[0] = 0;
    }
    if (strncasecmp(r->ip, "ipv6:", 5) == 0)
        memmove(r->ip, r->ip + 5, strlen(r->ip + 5) + 1);
    if (r->ip[0] == '[')
        memmove(r->ip, r->ip + 1, strlen(r->ip + 1) + 1);
    {
        size_t k = strlen(r->ip);
        if (k && r->ip[k - 1] == ']')
            r->ip[--k] = 0;
    }
    if (MSI(r->ip, "%[A-Z0-9._~-]*\\z"))
        cut(c, r->ip);
    if (MSI(r->ip, "^0*:0*:(?:0*:)*ffff:(\\d+\\.\\d+\\.\\d+\\.\\d+)$")) {
        cap(c, 1, tmp);
        strcpy(r->ip, tmp);
    }
    {
        size_t k = strlen(r->by);
        if (k && r->by[k - 1] == ';')
            r->by[--k] = 0;
    }
    strip_chars(r->ip);
    strip_chars(r->rdns);
    strip_chars(r->helo);
    strip_chars(r->by);
    strip_chars(r->ident);
    if (have_envfrom)
        clean_envfrom(r->envfrom);
    r->ip_private = MS(r->ip, IP_PRIVATE);
    return MX_RCVD_RELAY;
}

enum mx_rcvd_rc mx_received_parse_line(const char *v, size_t n, struct mx_relay *out,
                                       char *qms_envfrom)
{
    memset(out, 0, sizeof *out);
    if (qms_envfrom)
        qms_envfrom[0] = 0;
    if (n > MX_RCVD_MAX_LINE)
        n = MX_RCVD_MAX_LINE;
    /* s/\s+/ /g; s/^ //; s/ $//; 1 while s/\s?;$//; (NUL bytes end the line) */
    char s[MX_RCVD_MAX_LINE + 16];
    size_t k = 0;
    for (size_t i = 0; i < n && v[i]; i++) {
        if (isspace((unsigned char)v[i])) {
            if (k == 0 || s[k - 1] != ' ')
                s[k++] = ' ';
        } else {
            s[k++] = v[i];
        }
    }
    if (k && s[0] == ' ')
        memmove(s, s + 1, --k);
    if (k && s[k - 1] == ' ')
        k--;
    while (k && s[k - 1] == ';') {
        k--;
        if (k && s[k - 1] == ' ')
            k--;
    }
    s[k] = 0;

    pcre2_match_data *md = pcre2_match_data_create(32, NULL);
    pcre2_match_context *mc = pcre2_match_context_create(NULL);
    if (!md || !mc) {
        pcre2_match_data_free(md);
        pcre2_match_context_free(mc);
        return MX_RCVD_UNPARSEABLE;
    }
    pcre2_set_match_limit(mc, MX_RCVD_MATCH_LIMIT);
    pcre2_set_depth_limit(mc, MX_RCVD_MATCH_LIMIT / 10);
    struct ctx c = {.md = md, .mc = mc};
    enum mx_rcvd_rc rc = parse(&c, s, out, qms_envfrom);
    pcre2_match_data_free(md);
    pcre2_match_context_free(mc);
    return rc;
}

size_t mx_relay_as_string(const struct mx_relay *r, char *out, size_t cap)
{
    int n = snprintf(
        out, cap, "[ ip=%s rdns=%s helo=%s by=%s ident=%s envfrom=%s intl=%d id=%s auth=%s msa=0 ]",
        r->ip, r->rdns, r->helo, r->by, r->ident, r->envfrom, r->internal ? 1 : 0, r->id, r->auth);
    if (n < 0)
        return 0;
    return (size_t)n < cap ? (size_t)n : cap - 1;
}

/* SpamAssassin's stock originating_ip_headers (10_default_prefs.cf): the
 * first address in the last instance of each is appended to the chain */
static const char *const originating[] = {
    "X-Yahoo-Post-IP",   "X-Originating-IP",
    "X-Apparently-From", "X-SenderIP",
    "X-AOL-IP",          "X-MS-Exchange-CrossTenant-OriginalAttributedTenantConnectingIp",
};
#define NORIG (sizeof originating / sizeof originating[0])

void mx_relays_build(struct mx_relays *rel, const struct mx_rcvd_hdr *h, size_t nh)
{
    bool in_trusted = true, in_internal = true, allow_fetch_markers = true;
    char qms[MX_RCVD_FIELD] = "", next_qms[MX_RCVD_FIELD];
    rel->n = 0;
    rel->unparseable = 0;
    rel->last_trusted = rel->last_internal = -1;

    /* the lines: every Received value, then the originating-IP pseudo lines */
    const char *vals[MX_RCVD_MAX_RELAYS];
    size_t lens[MX_RCVD_MAX_RELAYS], n = 0;
    for (size_t i = 0; i < nh && n < MX_RCVD_MAX_RELAYS; i++)
        if (h[i].nl == 8 && strncasecmp(h[i].name, "received", 8) == 0) {
            vals[n] = h[i].v;
            lens[n++] = h[i].vl;
        }
    char orig[NORIG][MX_RCVD_FIELD + 32];
    pcre2_match_data *md = pcre2_match_data_create(4, NULL);
    pcre2_match_context *mc = pcre2_match_context_create(NULL);
    if (md && mc) {
        pcre2_set_match_limit(mc, MX_RCVD_MATCH_LIMIT);
        struct ctx cx = {.md = md, .mc = mc}, *c = &cx;
        for (size_t o = 0; o < NORIG && n < MX_RCVD_MAX_RELAYS; o++) {
            const struct mx_rcvd_hdr *last = NULL;
            size_t ol = strlen(originating[o]);
            for (size_t i = 0; i < nh; i++)
                if (h[i].nl == ol && strncasecmp(h[i].name, originating[o], ol) == 0)
                    last = &h[i];
            if (!last)
                continue;
            char v[MX_RCVD_MAX_LINE + 1], ip[MX_RCVD_FIELD];
            size_t vl = last->vl < MX_RCVD_MAX_LINE ? last->vl : MX_RCVD_MAX_LINE;
            memcpy(v, last->v, vl);
            v[vl] = 0;
            if (!MS(v, "(" IPA ")"))
                continue;
            cap(c, 1, ip);
            vals[n] = orig[o];
            lens[n++] = (size_t)snprintf(orig[o], sizeof orig[o], "from X-Originating-IP: %s", ip);
        }
    }
    pcre2_match_data_free(md);
    pcre2_match_context_free(mc);

    for (size_t i = 0; i < n; i++) {
        struct mx_relay *r = &rel->r[rel->n];
        enum mx_rcvd_rc rc = mx_received_parse_line(vals[i], lens[i], r, next_qms);
        bool had_qms = truthy(qms);
        char cur_qms[MX_RCVD_FIELD];
        strcpy(cur_qms, qms);
        strcpy(qms, next_qms);
        if (rc == MX_RCVD_FETCHER) {
            if (allow_fetch_markers)
                for (size_t k = 0; k < rel->n; k++)
                    rel->dropped[k] = true;
            rel->last_trusted += in_trusted;
            rel->last_internal += in_internal;
            continue;
        }
        if (rc == MX_RCVD_UNPARSEABLE)
            rel->unparseable++;
        if (rc != MX_RCVD_RELAY) {
            rel->last_trusted += in_trusted;
            rel->last_internal += in_internal;
            continue;
        }
        if (had_qms)
            strcpy(r->envfrom, cur_qms);
        if (in_trusted && !r->ip_private && !truthy(r->auth))
            in_trusted = in_internal = false;
        r->internal = in_internal;
        rel->trusted[rel->n] = in_trusted;
        rel->dropped[rel->n] = false;
        allow_fetch_markers = in_trusted;
        rel->last_trusted += in_trusted;
        rel->last_internal += in_internal;
        rel->n++;
    }
}

size_t mx_relays_string(const struct mx_relays *rel, enum mx_relays_which which, char *out,
                        size_t cap)
{
    size_t k = 0;
    out[0] = 0;
    for (size_t i = 0; i < rel->n; i++) {
        bool in;
        switch (which) {
        case MX_RELAYS_TRUSTED:
            in = rel->trusted[i] && !rel->dropped[i];
            break;
        case MX_RELAYS_UNTRUSTED:
            in = !rel->trusted[i];
            break;
        case MX_RELAYS_INTERNAL:
            in = rel->r[i].internal && !rel->dropped[i];
            break;
        default:
            in = !rel->r[i].internal && !rel->dropped[i];
            break;
        }
        if (!in)
            continue;
        if (k && k + 1 < cap)
            out[k++] = ' ';
        if (k + 1 < cap)
            k += mx_relay_as_string(&rel->r[i], out + k, cap - k);
    }
    out[k < cap ? k : cap - 1] = 0;
    return k < cap ? k : cap - 1;
}

bool mx_relays_all_range(const struct mx_relays *rel, const char *name, long *start, long *end)
{
    /* the '+1' of PerMsgStatus::_get: the Received header of the first
     * relay outside the part was added inside it */
    *start = LONG_MIN;
    *end = LONG_MAX;
    if (strcmp(name, "ALL-TRUSTED") == 0)
        *end = rel->last_trusted + 1;
    else if (strcmp(name, "ALL-INTERNAL") == 0)
        *end = rel->last_internal + 1;
    else if (strcmp(name, "ALL-UNTRUSTED") == 0)
        *start = rel->last_trusted + 1;
    else if (strcmp(name, "ALL-EXTERNAL") == 0)
        *start = rel->last_internal + 1;
    else
        return false;
    return true;
}

bool mx_relays_name(const char *name, enum mx_relays_which *which)
{
    static const char *const names[] = {"X-Spam-Relays-Trusted", "X-Spam-Relays-Untrusted",
                                        "X-Spam-Relays-Internal", "X-Spam-Relays-External"};
    for (int i = 0; i < 4; i++)
        if (strcasecmp(name, names[i]) == 0) {
            *which = (enum mx_relays_which)i;
            return true;
        }
    return false;
}
