/*
 * evals.c - SpamAssassin eval tests computed natively (see evals_internal.h).
 *
 * Each function follows the Perl code of SpamAssassin 4.0 (HeaderEval,
 * MIMEEval, BodyEval, Util::parse_rfc822_date) step by step, including its
 * quirks, so that a rule hits here exactly when it hits there. The regular
 * expressions that define their behaviour run in PCRE2, compiled once.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "scan/evals_internal.h"

#include <ctype.h>
#include <math.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "scan/mime_internal.h"

/* ---- parsing the eval call ---------------------------------------------- */

#define NARGS 4

/* "name('a', "b", 3)" -> name and up to NARGS unquoted arguments. */
static bool split_call(const char *s, const char *e, char *name, size_t ncap,
                       char args[NARGS][64], int *nargs)
{
    const char *p = s;
    while (p < e && (isalnum((unsigned char)*p) || *p == '_'))
        p++;
    if (p == s || p >= e || *p != '(' || (size_t)(p - s) >= ncap)
        return false;
    memcpy(name, s, (size_t)(p - s));
    name[p - s] = 0;
    p++;
    *nargs = 0;
    for (;;) {
        while (p < e && isspace((unsigned char)*p))
            p++;
        if (p < e && *p == ')')
            break;
        if (*nargs == NARGS)
            return false;
        char *a = args[(*nargs)++];
        size_t al = 0;
        if (p < e && (*p == '\'' || *p == '"')) {
            char q = *p++;
            while (p < e && *p != q && al < 63)
                a[al++] = *p++;
            if (p >= e || *p != q)
                return false;
            p++;
        } else {
            while (p < e && *p != ',' && *p != ')' && !isspace((unsigned char)*p) && al < 63)
                a[al++] = *p++;
        }
        a[al] = 0;
        while (p < e && isspace((unsigned char)*p))
            p++;
        if (p < e && *p == ',') {
            p++;
            continue;
        }
        if (p < e && *p == ')')
            break;
        return false;
    }
    for (p++; p < e; p++)
        if (!isspace((unsigned char)*p))
            return false; /* anything after the call: not a form we know */
    return true;
}

static bool num_arg(const char *a, bool *set, double *v)
{
    if (strcmp(a, "undef") == 0) {
        *set = false;
        return true;
    }
    char *end;
    *v = strtod(a, &end);
    *set = true;
    return end != a && *end == 0;
}

bool mx_native_parse(const char *s, const char *e, struct mx_native *out)
{
    if ((size_t)(e - s) < 5 || memcmp(s, "eval:", 5) != 0)
        return false;
    s += 5;
    char name[64], args[NARGS][64];
    int na;
    if (!split_call(s, e, name, sizeof name, args, &na))
        return false;
    memset(out, 0, sizeof *out);
    if (strcmp(name, "check_for_shifted_date") == 0 && na == 2) {
        out->fn = MX_NAT_SHIFTED_DATE;
        return num_arg(args[0], &out->lo_set, &out->lo) && num_arg(args[1], &out->hi_set, &out->hi);
    }
    if (strcmp(name, "subject_is_all_caps") == 0 && na == 0) {
        out->fn = MX_NAT_SUBJ_ALL_CAPS;
        return true;
    }
    if (strcmp(name, "check_header_count_range") == 0 && na == 3 && *args[0]) {
        out->fn = MX_NAT_HDR_COUNT;
        snprintf(out->hdr, sizeof out->hdr, "%s", args[0]);
        return num_arg(args[1], &out->lo_set, &out->lo) && out->lo_set &&
               num_arg(args[2], &out->hi_set, &out->hi) && out->hi_set;
    }
    if (strcmp(name, "check_for_mime_html") == 0 && na == 0) {
        out->fn = MX_NAT_MIME_HTML;
        return true;
    }
    if (strcmp(name, "check_for_mime_html_only") == 0 && na == 0) {
        out->fn = MX_NAT_MIME_HTML_ONLY;
        return true;
    }
    if (strcmp(name, "check_for_missing_to_header") == 0 && na == 0) {
        out->fn = MX_NAT_MISSING_TO;
        return true;
    }
    if (strcmp(name, "html_test") == 0 && na == 1 && strcmp(args[0], "html") == 0) {
        out->fn = MX_NAT_HTML_MESSAGE;
        return true;
    }
    if (strcmp(name, "check_body_length") == 0 && na == 1) {
        out->fn = MX_NAT_BODY_LENGTH;
        return num_arg(args[0], &out->hi_set, &out->hi) && out->hi_set;
    }
    if (strcmp(name, "check_for_mime") == 0 && na == 1) {
        static const struct {
            const char *n;
            enum mx_native_mime_flag f;
        } flags[] = {{"mime_base64_count", MX_NMF_BASE64_COUNT},
                     {"mime_base64_encoded_text", MX_NMF_BASE64_TEXT},
                     {"mime_bad_iso_charset", MX_NMF_BAD_ISO_CHARSET}};
        for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
            if (strcmp(args[0], flags[i].n) == 0) {
                out->fn = MX_NAT_MIME_FLAG;
                out->flag = (uint8_t)flags[i].f;
                return true;
            }
    }
    return false;
}

/* ---- regular expressions, compiled once ---------------------------------- */

enum {
    RE_DATE1,     /* " (\d+) (Mon) (\d{4}) " */
    RE_DATE2,     /* " (Mon) +(\d+) \d+:\d+:\d+ (\d{4}) " */
    RE_DATE3,     /* " (\d+) (Mon) (\d{2,3}) " */
    RE_HMS,       /* " (\d?\d):(\d\d)(:(\d\d))? " */
    RE_TZNUM,     /* " ([-+]\d{4}) " */
    RE_TZNAME,    /* "\b([A-Z]{2,4}(?:-DST)?)\b" */
    RE_RCVD_DATE, /* the date of a Received header */
    RE_LOCAL,     /* fetchmail: the first hop is local */
    RE_FETCHMAIL, /* fetchmail: its own hop */
    RE_ISO_ANY,   /* charset iso-x-y */
    RE_ISO_OK,    /* the iso charsets that are fine */
    RE_CAPS_FP,   /* charsets likely to look all caps */
    RE_SUBJ_PFX,  /* Re:/Fwd:/... prefixes */
    RE_N
};

#define MONTHS "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
static const char *const re_src[RE_N] = {
    [RE_DATE1] = " (\\d+) " MONTHS " (\\d{4}) ",
    [RE_DATE2] = " " MONTHS " +(\\d+) \\d+:\\d+:\\d+ (\\d{4}) ",
    [RE_DATE3] = " (\\d+) " MONTHS " (\\d{2,3}) ",
    [RE_HMS] = " (\\d?\\d):(\\d\\d)(:(\\d\\d))? ",
    [RE_TZNUM] = " ([-+]\\d{4}) ",
    [RE_TZNAME] = "\\b([A-Z]{2,4}(?:-DST)?)\\b",
    [RE_RCVD_DATE] = "(\\s.?\\d+ \\S\\S\\S \\d+ \\d+:\\d+:\\d+ \\S+)",
    [RE_LOCAL] = "\\bfrom (?:localhost\\s|(?:\\S+ ){1,2}\\S*\\b127\\.0\\.0\\.1\\b)|"
                 "qmail \\d+ invoked by uid \\d+",
    [RE_FETCHMAIL] = "\\bby localhost with \\w+ \\(fetchmail-[\\d.]+",
    [RE_ISO_ANY] = "iso-\\S+-\\S+\\b",
    [RE_ISO_OK] = "iso-(?:8859-\\d{1,2}|2022-(?:jp|kr))\\b",
    [RE_CAPS_FP] = "=\\?[-_a-z0-9]*(?:koi|jp|jis|euc|gb|big5|isoir|cp1251|windows-1251|"
                   "georgianps|pt154|tis)[-_a-z0-9]*\\?",
    [RE_SUBJ_PFX] = "^(?:(?:Re|Fwd|Fw|Aw|Antwort|WG|SV|VB|VS|VL):\\s*)+",
};
/* case-insensitive ones (Perl's /i) */
static const unsigned re_caseless = 1u << RE_DATE1 | 1u << RE_DATE2 | 1u << RE_DATE3 |
                                    1u << RE_ISO_ANY | 1u << RE_CAPS_FP | 1u << RE_SUBJ_PFX;

static pcre2_code *re[RE_N];
static pthread_once_t re_once = PTHREAD_ONCE_INIT;

static void re_compile(void)
{
    for (int i = 0; i < RE_N; i++) {
        int err;
        PCRE2_SIZE off;
        uint32_t fl = (re_caseless >> i & 1) ? PCRE2_CASELESS : 0;
        re[i] = pcre2_compile((PCRE2_SPTR)re_src[i], PCRE2_ZERO_TERMINATED, fl, &err, &off, NULL);
        if (re[i])
            pcre2_jit_compile(re[i], PCRE2_JIT_COMPLETE);
    }
}

/* First match of re[k] in s[0..n): groups in g[2*i], g[2*i+1]; false if none
 * (or the expression failed to compile, which then never matches). */
static bool find(int k, const char *s, size_t n, size_t from, PCRE2_SIZE g[12])
{
    pthread_once(&re_once, re_compile);
    if (!re[k])
        return false;
    pcre2_match_data *md = pcre2_match_data_create(6, NULL);
    if (!md)
        return false;
    int rc = pcre2_match(re[k], (PCRE2_SPTR)s, n, from, 0, md, NULL);
    if (rc > 0) {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        for (int i = 0; i < 12; i++)
            g[i] = i < 2 * rc ? ov[i] : PCRE2_UNSET;
    }
    pcre2_match_data_free(md);
    return rc > 0;
}

/* s/RE/ / once on a NUL-terminated buffer */
static void cut(char *s, size_t *n, PCRE2_SIZE from, PCRE2_SIZE to)
{
    s[from] = ' ';
    memmove(s + from + 1, s + to, *n - to + 1);
    *n -= to - from - 1;
}

static long grp_num(const char *s, const PCRE2_SIZE g[12], int i)
{
    if (g[2 * i] == PCRE2_UNSET)
        return 0;
    return strtol(s + g[2 * i], NULL, 10);
}

/* ---- dates ------------------------------------------------------------- */

static int month_of(const char *m)
{
    static const char *const names[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                        "jul", "aug", "sep", "oct", "nov", "dec"};
    for (int i = 0; i < 12; i++)
        if (strncasecmp(m, names[i], 3) == 0)
            return i + 1;
    return 0;
}

static int tz_named(const char *z, size_t n)
{
    static const struct {
        const char *n;
        int off; /* +hhmm as a number */
    } tz[] = {{"UT", 0},       {"UTC", 0},      {"NDT", -230},   {"AST", -400},   {"ADT", -300},
              {"NST", -330},   {"EST", -500},   {"EDT", -400},   {"CST", -600},   {"CDT", -500},
              {"MST", -700},   {"MDT", -600},   {"PST", -800},   {"PDT", -700},   {"HST", -1000},
              {"AKST", -900},  {"AKDT", -800},  {"HADT", -900},  {"HAST", -1000}, {"GMT", 0},
              {"BST", 100},    {"IST", 100},    {"WET", 0},      {"WEST", 100},   {"CET", 100},
              {"CEST", 200},   {"EET", 200},    {"EEST", 300},   {"MSK", 300},    {"MSD", 400},
              {"MET", 100},    {"MEZ", 100},    {"MEST", 200},   {"MESZ", 200},   {"BRST", -200},
              {"BRT", -300},   {"AEST", 1000},  {"AEDT", 1100},  {"ACST", 930},   {"ACDT", 1030},
              {"AWST", 800},   {"NZST", 1200},  {"NZDT", 1300},  {"JST", 900},    {"KST", 900},
              {"HKT", 800},    {"SGT", 800},    {"PHT", 800},    {"IDT", 300}};
    for (size_t i = 0; i < sizeof tz / sizeof tz[0]; i++)
        if (strlen(tz[i].n) == n && memcmp(tz[i].n, z, n) == 0)
            return tz[i].off;
    return INT32_MIN;
}

int64_t mx_native_parse_date(const char *in, size_t inl)
{
    /* " $date ", commas and the spaces after them made one space, runs of
     * white space one space */
    char s[512];
    size_t n = 0;
    s[n++] = ' ';
    for (size_t i = 0; i < inl && n < sizeof s - 2; i++) {
        char c = in[i];
        if (c == ',') {
            while (i + 1 < inl && in[i + 1] == ' ')
                i++;
            c = ' ';
        }
        if (isspace((unsigned char)c) || c == 0) {
            if (s[n - 1] == ' ')
                continue;
            c = ' ';
        }
        s[n++] = c;
    }
    if (s[n - 1] != ' ')
        s[n++] = ' ';
    s[n] = 0;

    PCRE2_SIZE g[12];
    long dd, yyyy;
    int mon;
    size_t ylen;
    if (find(RE_DATE1, s, n, 0, g)) {
        dd = grp_num(s, g, 1);
        mon = month_of(s + g[4]);
    } else if (find(RE_DATE2, s, n, 0, g)) {
        dd = grp_num(s, g, 2);
        mon = month_of(s + g[2]);
    } else if (find(RE_DATE3, s, n, 0, g)) {
        dd = grp_num(s, g, 1);
        mon = month_of(s + g[4]);
    } else {
        return -1;
    }
    yyyy = grp_num(s, g, 3); /* the year is group 3 in all three forms */
    ylen = g[7] - g[6];
    cut(s, &n, g[0], g[1]);
    if (ylen == 2 && yyyy < 50)
        yyyy += 2000;
    else if (ylen != 4)
        yyyy += 1900;

    long hh = 0, mm = 0, ss = 0;
    if (find(RE_HMS, s, n, 0, g)) {
        hh = grp_num(s, g, 1);
        mm = grp_num(s, g, 2);
        ss = grp_num(s, g, 4);
        cut(s, &n, g[0], g[1]);
    }
    int tzoff = 0; /* "all other timezones are considered equivalent to -0000" */
    if (find(RE_TZNUM, s, n, 0, g)) {
        tzoff = atoi(s + g[2]); /* "+0930" -> 930 */
    } else if (find(RE_TZNAME, s, n, 0, g)) {
        int z = tz_named(s + g[2], g[3] - g[2]);
        if (z != INT32_MIN)
            tzoff = z;
    }

    if (ss > 59)
        ss = 59;
    if (mm > 59)
        mm = 59;
    if (hh > 23)
        hh = 23;
    int max_dd = 31;
    if (mon == 4 || mon == 6 || mon == 9 || mon == 11)
        max_dd = 30;
    else if (mon == 2)
        max_dd = (!(yyyy % 4) && ((yyyy % 100) || !(yyyy % 400))) ? 29 : 28;
    if (dd > max_dd) {
        dd = 1;
        if (++mon > 12)
            mon = 1, yyyy++;
    }
    if (yyyy > 2037)
        yyyy = 2037;
    else if (yyyy < 1970)
        yyyy = 1970;
    if (dd < 1)
        return -1; /* Time::Local refuses day 0: SpamAssassin gives up on the date */

    struct tm tm = {.tm_sec = (int)ss,
                    .tm_min = (int)mm,
                    .tm_hour = (int)hh,
                    .tm_mday = (int)dd,
                    .tm_mon = mon - 1,
                    .tm_year = (int)yyyy - 1900};
    int64_t t = (int64_t)timegm(&tm);
    int sign = tzoff < 0 ? -1 : 1;
    int a = tzoff * sign;
    int64_t off = ((int64_t)(a / 100) * 60 + a % 100) * 60;
    if (sign < 0)
        t += off;
    else if (t < off)
        t = 0;
    else
        t -= off;
    return t;
}

/* Date (Resent-Date first) minus the closest Received date; 0 when either is missing. */
static double date_diff(const struct mx_native_msg *m)
{
    int64_t date = -1;
    static const char *const which[] = {"resent-date", "date"};
    for (int k = 0; k < 2 && date < 0; k++) {
        const char *v;
        size_t vl;
        for (size_t i = 0; date < 0 && (v = m->header(m->ud, which[k], i, &vl)); i++)
            if (vl)
                date = mx_native_parse_date(v, vl);
    }
    if (date < 0)
        return 0;

    /* the Received headers, top (newest) first, non-blank */
    enum { RMAX = 64 };
    const char *rv[RMAX];
    size_t rl[RMAX], nr = 0;
    const char *v;
    size_t vl;
    for (size_t i = 0; nr < RMAX && (v = m->header(m->ud, "received", i, &vl)); i++) {
        bool blank = true;
        for (size_t k = 0; k < vl && blank; k++)
            blank = isspace((unsigned char)v[k]);
        if (!blank)
            rv[nr] = v, rl[nr++] = vl;
    }
    /* fetchmail: a local first hop followed by fetchmail's own is not a relay */
    PCRE2_SIZE g[12];
    size_t first = 0;
    if (nr >= 2 && find(RE_LOCAL, rv[0], rl[0], 0, g) && find(RE_FETCHMAIL, rv[1], rl[1], 0, g))
        first = 2;

    int64_t times[RMAX];
    size_t nt = 0;
    for (size_t i = first; i < nr; i++) {
        if (!find(RE_RCVD_DATE, rv[i], rl[i], 0, g))
            continue;
        int64_t t = mx_native_parse_date(rv[i] + g[2], g[3] - g[2]);
        if (t >= 0)
            times[nt++] = t;
    }
    if (!nt)
        return 0;
    /* the last one (the oldest hop) is left out when it shows no difference */
    if (nt > 1 && date - times[nt - 1] == 0)
        nt--;
    double best = (double)(date - times[0]);
    for (size_t i = 1; i < nt; i++) {
        double d = (double)(date - times[i]);
        if (fabs(d) < fabs(best))
            best = d;
    }
    return best;
}

/* ---- the rest ------------------------------------------------------------ */

void mx_native_mime_part(struct mx_native_mime *f, const char *ctype, const char *charset,
                         const char *disposition, int cte)
{
    if (strcmp(ctype, "text/html") == 0)
        f->html++;
    else if (strncmp(ctype, "text", 4) == 0)
        f->text++;
    if (cte == 1)
        f->base64++;
    static const char *const ascii[] = {"us-ascii",   "ansi_x3.4-1968",   "iso-ir-6",
                                        "ansi_x3.4-1986", "iso_646.irv:1991", "ascii",
                                        "iso646-us",  "us",               "ibm367",
                                        "cp367",      "csascii"};
    bool ascii_cs = !*charset;
    for (size_t i = 0; !ascii_cs && i < sizeof ascii / sizeof ascii[0]; i++)
        ascii_cs = strstr(charset, ascii[i]) != NULL; /* Perl's unanchored match */
    bool cd_ai = strncmp(disposition, "attachment", 10) == 0 ||
                 strncmp(disposition, "inline", 6) == 0;
    if (strncmp(ctype, "text", 4) == 0 && cte == 1 && ascii_cs && !cd_ai)
        f->base64_text = true;
    PCRE2_SIZE g[12];
    size_t cl = strlen(charset);
    if (cl && find(RE_ISO_ANY, charset, cl, 0, g) && !find(RE_ISO_OK, charset, cl, 0, g))
        f->bad_iso_charset = true;
}

static bool subject_all_caps(const struct mx_native_msg *m)
{
    char raw[2048], dec[2048];
    size_t rl = 0, dl = 0;
    const char *v;
    size_t vl;
    /* every Subject, as SpamAssassin's get() joins them */
    for (size_t i = 0; (v = m->header(m->ud, "subject", i, &vl)); i++) {
        if (rl + vl + 1 >= sizeof raw)
            break;
        memcpy(raw + rl, v, vl);
        rl += vl;
        raw[rl++] = '\n';
        dl += mx_mime_decode_header(v, vl, dec + dl, sizeof dec - dl - 1);
        if (dl < sizeof dec - 1)
            dec[dl++] = '\n';
    }
    if (!rl)
        return false;
    /* s/^\s+//; s/\s+$//; strip reply/forward prefixes */
    char *s = dec;
    size_t n = dl;
    while (n && isspace((unsigned char)*s))
        s++, n--;
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    PCRE2_SIZE g[12];
    if (find(RE_SUBJ_PFX, s, n, 0, g))
        s += g[1], n -= g[1];
    bool space = false;
    for (size_t i = 0; i < n && !space; i++)
        space = isspace((unsigned char)s[i]);
    if (!space)
        return false; /* one word */
    size_t chars = 0;
    for (size_t i = 0; i < n; i++)
        chars += ((unsigned char)s[i] & 0xc0) != 0x80;
    if (chars < 10)
        return false;
    if (find(RE_CAPS_FP, raw, rl, 0, g))
        return false;
    size_t letters = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= 'a' && s[i] <= 'z')
            return false;
        letters += s[i] >= 'A' && s[i] <= 'Z';
    }
    return letters > 0;
}

/* some instance of the header with a non-blank value */
static bool has_value(const struct mx_native_msg *m, const char *name)
{
    const char *v;
    size_t vl;
    for (size_t i = 0; (v = m->header(m->ud, name, i, &vl)); i++)
        for (size_t k = 0; k < vl; k++)
            if (!isspace((unsigned char)v[k]))
                return true;
    return false;
}

static bool is_html_top(const struct mx_native_msg *m)
{
    size_t vl;
    const char *v = m->header(m->ud, "content-type", 0, &vl);
    /* SpamAssassin's get() of a repeated header gives the values joined: the first leads */
    return v && vl >= 9 && strncasecmp(v, "text/html", 9) == 0;
}

int mx_native_eval(const struct mx_native *n, struct mx_native_state *st,
                   const struct mx_native_msg *m)
{
    switch (n->fn) {
    case MX_NAT_SHIFTED_DATE:
        if (!st->have_diff) {
            st->date_diff = date_diff(m);
            st->have_diff = true;
        }
        return (!n->lo_set || st->date_diff >= 3600 * n->lo) &&
               (!n->hi_set || st->date_diff < 3600 * n->hi);
    case MX_NAT_SUBJ_ALL_CAPS:
        return subject_all_caps(m);
    case MX_NAT_HDR_COUNT: {
        /* distinct values, as SpamAssassin's grep(!$uniq{$_}++) */
        enum { UMAX = 64 };
        const char *seen[UMAX];
        size_t seenl[UMAX], ns = 0, count = 0;
        const char *v;
        size_t vl;
        for (size_t i = 0; (v = m->header(m->ud, n->hdr, i, &vl)); i++) {
            bool dup = false;
            for (size_t k = 0; k < ns && !dup; k++)
                dup = seenl[k] == vl && memcmp(seen[k], v, vl) == 0;
            if (dup)
                continue;
            count++;
            if (ns < UMAX)
                seen[ns] = v, seenl[ns++] = vl;
        }
        return (double)count >= n->lo && (double)count <= n->hi;
    }
    case MX_NAT_MIME_HTML:
        return is_html_top(m) || m->mime.html > 0;
    case MX_NAT_MIME_HTML_ONLY:
        return is_html_top(m) || (m->mime.html > 0 && m->mime.text == 0);
    case MX_NAT_MIME_FLAG:
        switch (n->flag) {
        case MX_NMF_BASE64_COUNT:
            return m->mime.base64 > 0;
        case MX_NMF_BASE64_TEXT:
            return m->mime.base64_text;
        case MX_NMF_BAD_ISO_CHARSET:
            return m->mime.bad_iso_charset;
        }
        return 0;
    case MX_NAT_BODY_LENGTH:
        return (double)m->body_len <= n->hi;
    case MX_NAT_MISSING_TO:
        return !has_value(m, "to") && !has_value(m, "apparently-to");
    case MX_NAT_HTML_MESSAGE:
        return m->mime.html_rendered;
    }
    return 0;
}
