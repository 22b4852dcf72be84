/*
 * rules.c - rule-file parser (see rules_internal.h).
 *
 * SpamAssassin semantics kept here because they decide which definition of a
 * rule is live: conditional blocks (`ifplugin`, `if (expr)`, `else`, `endif`)
 * are evaluated against the plugins named by `loadplugin` lines and against
 * SpamAssassin 4.0.1's version and features; a later definition of a name
 * replaces an earlier one only when its block is live. ReplaceTags expansion
 * follows Mail::SpamAssassin::Plugin::ReplaceTags (pre/inter/post tags).
 */
#include "scan/rules_internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define SA_VERSION 4.001000
#define MAX_IF_DEPTH 64
#define MAX_RULES 200000
#define MAX_EXPANDED (64 * 1024) /* bytes of one regex after replace_tags */

/* ---- small helpers ------------------------------------------------------- */

static char *xstrndup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

static const char *skip_ws(const char *s, const char *e)
{
    while (s < e && isspace((unsigned char)*s))
        s++;
    return s;
}

static const char *word_end(const char *s, const char *e)
{
    while (s < e && !isspace((unsigned char)*s))
        s++;
    return s;
}

static uint64_t hash_name(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    while (*s)
        h = (h ^ (uint8_t)*s++) * 0x100000001b3ull;
    return h;
}

void mx_rules_init(struct mx_ruleset *rs)
{
    memset(rs, 0, sizeof *rs);
}

static void free_rule(struct mx_rule *r)
{
    free(r->name);
    free(r->target);
    free(r->re);
    free(r->ifunset);
    free(r->meta_src);
    free(r->meta);
    free(r->describe);
    for (size_t i = 0; i < r->nterms; i++)
        free(r->terms[i].term);
    free(r->terms);
    for (size_t i = 0; i < r->nconds; i++)
        free(r->conds[i].values);
    free(r->conds);
}

void mx_rules_free(struct mx_ruleset *rs)
{
    for (size_t i = 0; i < rs->nrules; i++)
        free_rule(&rs->rules[i]);
    free(rs->rules);
    free(rs->hash);
    for (size_t i = 0; i < rs->ntags; i++) {
        free(rs->tags[i].k);
        free(rs->tags[i].v);
    }
    free(rs->tags);
    for (size_t i = 0; i < rs->nreplace; i++)
        free(rs->replace_rules[i]);
    free(rs->replace_rules);
    for (size_t i = 0; i < rs->nplugins; i++)
        free(rs->plugins[i]);
    free(rs->plugins);
    for (size_t i = 0; i < rs->ntlds; i++)
        free(rs->tlds[i]);
    free(rs->tlds);
    memset(rs, 0, sizeof *rs);
}

long mx_rules_find(const struct mx_ruleset *rs, const char *name)
{
    if (!rs->hcap)
        return -1;
    size_t m = rs->hcap - 1;
    for (size_t i = hash_name(name) & m;; i = (i + 1) & m) {
        uint32_t v = rs->hash[i];
        if (v == 0)
            return -1;
        if (strcmp(rs->rules[v - 1].name, name) == 0)
            return (long)(v - 1);
    }
}

static int rehash(struct mx_ruleset *rs, size_t ncap)
{
    uint32_t *h = calloc(ncap, sizeof *h);
    if (!h)
        return -ENOMEM;
    for (size_t r = 0; r < rs->nrules; r++) {
        size_t i = hash_name(rs->rules[r].name) & (ncap - 1);
        while (h[i])
            i = (i + 1) & (ncap - 1);
        h[i] = (uint32_t)(r + 1);
    }
    free(rs->hash);
    rs->hash = h;
    rs->hcap = ncap;
    return 0;
}

/* The rule called `name` (created empty, type NONE, if new). */
static struct mx_rule *get_rule(struct mx_ruleset *rs, const char *name, size_t n)
{
    char tmp[256];
    if (n == 0 || n >= sizeof tmp)
        return NULL;
    memcpy(tmp, name, n);
    tmp[n] = 0;
    long i = mx_rules_find(rs, tmp);
    if (i >= 0)
        return &rs->rules[i];
    if (rs->nrules >= MAX_RULES)
        return NULL;
    if (rs->nrules == rs->cap) {
        size_t nc = rs->cap ? rs->cap * 2 : 1024;
        struct mx_rule *nr = realloc(rs->rules, nc * sizeof *nr);
        if (!nr)
            return NULL;
        rs->rules = nr;
        rs->cap = nc;
    }
    if ((rs->nrules + 1) * 2 > rs->hcap && rehash(rs, rs->hcap ? rs->hcap * 2 : 4096) != 0)
        return NULL;
    struct mx_rule *r = &rs->rules[rs->nrules];
    memset(r, 0, sizeof *r);
    r->name = xstrndup(name, n);
    if (!r->name)
        return NULL;
    size_t m = rs->hcap - 1;
    size_t h = hash_name(r->name) & m;
    while (rs->hash[h])
        h = (h + 1) & m;
    rs->hash[h] = (uint32_t)(rs->nrules + 1);
    rs->nrules++;
    return r;
}

/* Forget a previous definition (keeps score/describe/tflags, like SA). */
static void reset_def(struct mx_rule *r)
{
    free(r->target);
    free(r->re);
    free(r->ifunset);
    free(r->meta_src);
    free(r->meta);
    r->target = r->re = r->ifunset = r->meta_src = NULL;
    r->meta = NULL;
    r->nmeta = 0;
    r->negate = r->exists = false;
    r->reflags = 0;
    r->skip = NULL;
    for (size_t i = 0; i < r->nterms; i++)
        free(r->terms[i].term);
    free(r->terms);
    r->terms = NULL;
    r->nterms = 0;
    for (size_t i = 0; i < r->nconds; i++)
        free(r->conds[i].values);
    free(r->conds);
    r->conds = NULL;
    r->nconds = 0;
}

static int add_str(char ***arr, size_t *n, size_t *cap, const char *s, size_t len)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        char **na = realloc(*arr, nc * sizeof *na);
        if (!na)
            return -ENOMEM;
        *arr = na;
        *cap = nc;
    }
    (*arr)[*n] = xstrndup(s, len);
    if (!(*arr)[*n])
        return -ENOMEM;
    (*n)++;
    return 0;
}

static bool plugin_loaded(const struct mx_ruleset *rs, const char *s, size_t n)
{
    for (size_t i = 0; i < rs->nplugins; i++)
        if (strlen(rs->plugins[i]) == n && memcmp(rs->plugins[i], s, n) == 0)
            return true;
    return false;
}

/* ---- `if` expressions -------------------------------------------------- */

struct cond {
    const struct mx_ruleset *rs;
    const char *s, *e;
    bool bad;
};

static double cond_or(struct cond *c);

static void cond_ws(struct cond *c)
{
    c->s = skip_ws(c->s, c->e);
}

static bool cond_eat(struct cond *c, const char *tok)
{
    cond_ws(c);
    size_t n = strlen(tok);
    if ((size_t)(c->e - c->s) >= n && memcmp(c->s, tok, n) == 0) {
        c->s += n;
        return true;
    }
    return false;
}

/* can(Mail::SpamAssassin::Conf::x) is true for SA 4.0.1's features;
 * can(Mail::SpamAssassin::Plugin::P::has_x) iff plugin P is loaded. */
static bool cond_can(struct cond *c, const char *a, size_t n)
{
    static const char conf[] = "Mail::SpamAssassin::Conf::";
    static const char plug[] = "Mail::SpamAssassin::Plugin::";
    if (n > sizeof conf - 1 && memcmp(a, conf, sizeof conf - 1) == 0)
        return true;
    if (n > sizeof plug - 1 && memcmp(a, plug, sizeof plug - 1) == 0) {
        const char *last = NULL;
        for (size_t i = 0; i + 1 < n; i++)
            if (a[i] == ':' && a[i + 1] == ':')
                last = a + i;
        if (last && last > a + sizeof plug - 1)
            return plugin_loaded(c->rs, a, (size_t)(last - a));
    }
    return false;
}

static double cond_primary(struct cond *c)
{
    cond_ws(c);
    if (cond_eat(c, "!"))
        return cond_primary(c) == 0;
    if (cond_eat(c, "(")) {
        double v = cond_or(c);
        if (!cond_eat(c, ")"))
            c->bad = true;
        return v;
    }
    if (c->s < c->e && (isdigit((unsigned char)*c->s) || *c->s == '.')) {
        char *end;
        char tmp[64];
        size_t n = (size_t)(c->e - c->s) < sizeof tmp - 1 ? (size_t)(c->e - c->s) : sizeof tmp - 1;
        memcpy(tmp, c->s, n);
        tmp[n] = 0;
        double v = strtod(tmp, &end);
        c->s += end - tmp;
        return v;
    }
    const char *w = c->s;
    while (c->s < c->e && (isalnum((unsigned char)*c->s) || *c->s == '_'))
        c->s++;
    size_t wl = (size_t)(c->s - w);
    if (wl == 7 && memcmp(w, "version", 7) == 0)
        return SA_VERSION;
    if (wl == 12 && memcmp(w, "perl_version", 12) == 0)
        return 5.036;
    if ((wl == 6 && memcmp(w, "plugin", 6) == 0) || (wl == 3 && memcmp(w, "can", 3) == 0) ||
        (wl == 3 && memcmp(w, "has", 3) == 0)) {
        if (!cond_eat(c, "(")) {
            c->bad = true;
            return 0;
        }
        cond_ws(c);
        const char *a = c->s;
        while (c->s < c->e && *c->s != ')')
            c->s++;
        const char *ae = c->s;
        while (ae > a && isspace((unsigned char)ae[-1]))
            ae--;
        if (!cond_eat(c, ")"))
            c->bad = true;
        if (wl == 6)
            return plugin_loaded(c->rs, a, (size_t)(ae - a));
        return cond_can(c, a, (size_t)(ae - a));
    }
    c->bad = true;
    return 0;
}

static double cond_cmp(struct cond *c)
{
    double a = cond_primary(c);
    if (cond_eat(c, ">="))
        return a >= cond_primary(c);
    if (cond_eat(c, "<="))
        return a <= cond_primary(c);
    if (cond_eat(c, "=="))
        return a == cond_primary(c);
    if (cond_eat(c, "!="))
        return a != cond_primary(c);
    if (cond_eat(c, ">"))
        return a > cond_primary(c);
    if (cond_eat(c, "<"))
        return a < cond_primary(c);
    return a;
}

static double cond_and(struct cond *c)
{
    double a = cond_cmp(c);
    while (cond_eat(c, "&&")) {
        double b = cond_cmp(c);
        a = (a != 0) && (b != 0);
    }
    return a;
}

static double cond_or(struct cond *c)
{
    double a = cond_and(c);
    while (cond_eat(c, "||")) {
        double b = cond_and(c);
        a = (a != 0) || (b != 0);
    }
    return a;
}

/* Unparseable conditions are false, as SpamAssassin skips such blocks. */
static bool eval_if(const struct mx_ruleset *rs, const char *s, const char *e)
{
    struct cond c = {rs, s, e, false};
    double v = cond_or(&c);
    cond_ws(&c);
    if (c.bad || c.s != c.e)
        return false;
    return v != 0;
}

/* ---- regex literals ----------------------------------------------------- */

/* Parse /re/flags or m{re}flags at s. Sets *re (malloc) and *flags; returns
 * the position after the flags, or NULL when malformed. */
static const char *parse_regex(const char *s, const char *e, char **re, unsigned *flags)
{
    if (s < e && *s == 'm' && s + 1 < e && !isalnum((unsigned char)s[1]) && !isspace((unsigned char)s[1]))
        s++;
    if (s >= e)
        return NULL;
    char open = *s, close = open;
    if (open == '{')
        close = '}';
    else if (open == '(')
        close = ')';
    else if (open == '[')
        close = ']';
    else if (open == '<')
        close = '>';
    else if (isalnum((unsigned char)open) || isspace((unsigned char)open))
        return NULL;
    const char *p = s + 1;
    int depth = 1;
    while (p < e) {
        if (*p == '\\' && p + 1 < e) {
            p += 2;
            continue;
        }
        if (open != close && *p == open)
            depth++;
        else if (*p == close && --depth == 0)
            break;
        p++;
    }
    if (p >= e)
        return NULL;
    *re = xstrndup(s + 1, (size_t)(p - s - 1));
    if (!*re)
        return NULL;
    p++;
    *flags = 0;
    while (p < e && isalpha((unsigned char)*p)) {
        switch (*p) {
        case 'i':
            *flags |= MX_RE_I;
            break;
        case 'm':
            *flags |= MX_RE_M;
            break;
        case 's':
            *flags |= MX_RE_S;
            break;
        case 'x':
            *flags |= MX_RE_X;
            break;
        default: /* g, o, a... do not change what matches */
            break;
        }
        p++;
    }
    return p;
}

/* ---- directives --------------------------------------------------------- */

/* The one MIME eval mxgate computes natively (EMPTY_MESSAGE and other metas
 * need it); other evals do not run. */
static bool mime_attachment_eval(const char *s, const char *e)
{
    static const char *const forms[] = {"eval:check_for_mime('mime_attachment')",
                                        "eval:check_for_mime(\"mime_attachment\")"};
    const char *we = s;
    while (we < e && !isspace((unsigned char)*we))
        we++;
    for (size_t k = 0; k < 2; k++)
        if ((size_t)(we - s) == strlen(forms[k]) && memcmp(s, forms[k], (size_t)(we - s)) == 0)
            return true;
    return false;
}

static int def_regex(struct mx_rule *r, enum mx_rule_type t, const char *s, const char *e)
{
    s = skip_ws(s, e);
    reset_def(r);
    if (t == MX_RULE_BODY && mime_attachment_eval(s, e)) {
        r->type = MX_RULE_MIMEEVAL;
        return 0;
    }
    if (mx_native_parse(s, e, &r->native)) {
        r->type = MX_RULE_NATIVE;
        return 0;
    }
    if ((size_t)(e - s) >= 5 && memcmp(s, "eval:", 5) == 0) {
        r->type = MX_RULE_SKIPPED;
        r->skip = "eval";
        return 0;
    }
    char *re = NULL;
    unsigned fl = 0;
    const char *p = parse_regex(s, e, &re, &fl);
    if (!p) {
        r->type = MX_RULE_SKIPPED;
        r->skip = "bad regex syntax";
        return 0;
    }
    r->type = t;
    r->re = re;
    r->reflags = fl;
    return 0;
}

static int def_header(struct mx_rule *r, const char *s, const char *e)
{
    s = skip_ws(s, e);
    reset_def(r);
    if (mx_native_parse(s, e, &r->native)) {
        r->type = MX_RULE_NATIVE;
        return 0;
    }
    if ((size_t)(e - s) >= 5 && memcmp(s, "eval:", 5) == 0) {
        r->type = MX_RULE_SKIPPED;
        r->skip = "eval";
        return 0;
    }
    if ((size_t)(e - s) >= 7 && memcmp(s, "exists:", 7) == 0) {
        const char *h = s + 7, *he = word_end(h, e);
        r->type = MX_RULE_HEADER;
        r->exists = true;
        r->target = xstrndup(h, (size_t)(he - h));
        return r->target ? 0 : -ENOMEM;
    }
    const char *h = s, *he = h;
    while (he < e && !isspace((unsigned char)*he) && *he != '=' && *he != '!')
        he++;
    const char *op = skip_ws(he, e);
    if (e - op < 2 || !((op[0] == '=' || op[0] == '!') && op[1] == '~')) {
        r->type = MX_RULE_SKIPPED;
        r->skip = "bad header rule";
        return 0;
    }
    r->negate = op[0] == '!';
    char *re = NULL;
    unsigned fl = 0;
    const char *p = parse_regex(skip_ws(op + 2, e), e, &re, &fl);
    if (!p) {
        r->type = MX_RULE_SKIPPED;
        r->skip = "bad regex syntax";
        return 0;
    }
    r->type = MX_RULE_HEADER;
    r->re = re;
    r->reflags = fl;
    /* case kept: SpamAssassin's pseudo headers (ALL, ToCc, MESSAGEID,
     * EnvelopeFrom) are recognised case-sensitively */
    r->target = xstrndup(h, (size_t)(he - h));
    if (!r->target)
        return -ENOMEM;
    p = skip_ws(p, e);
    if ((size_t)(e - p) > 11 && memcmp(p, "[if-unset:", 10) == 0) {
        const char *v = skip_ws(p + 10, e);
        const char *ve = memchr(v, ']', (size_t)(e - v));
        if (ve) {
            while (ve > v && isspace((unsigned char)ve[-1]))
                ve--;
            r->ifunset = xstrndup(v, (size_t)(ve - v));
        }
    }
    return 0;
}

static int def_tflags(struct mx_rule *r, const char *s, const char *e)
{
    r->tflags = 0;
    r->maxhits = 0;
    for (s = skip_ws(s, e); s < e; s = skip_ws(s, e)) {
        const char *w = s;
        s = word_end(s, e);
        size_t n = (size_t)(s - w);
        if (n == 8 && memcmp(w, "multiple", 8) == 0)
            r->tflags |= MX_TF_MULTIPLE;
        else if (n == 4 && memcmp(w, "nice", 4) == 0)
            r->tflags |= MX_TF_NICE;
        else if (n == 3 && memcmp(w, "net", 3) == 0)
            r->tflags |= MX_TF_NET;
        else if (n == 5 && memcmp(w, "learn", 5) == 0)
            r->tflags |= MX_TF_LEARN;
        else if (n == 11 && memcmp(w, "noautolearn", 11) == 0)
            r->tflags |= MX_TF_NOAUTOLEARN;
        else if (n == 9 && memcmp(w, "nosubject", 9) == 0)
            r->tflags |= MX_TF_NOSUBJECT;
        else if (n > 8 && memcmp(w, "maxhits=", 8) == 0)
            r->maxhits = (unsigned)strtoul(w + 8, NULL, 10), r->tflags |= MX_TF_MULTIPLE;
    }
    return 0;
}

/* dlp NAME creditcard|iban|mynumber|email [min=N]
 * dlp NAME dict threshold=T term=weight ...   (terms may be "quoted words")
 * dlp_term NAME weight term words...           (one more dictionary term) */
static int add_term(struct mx_rule *r, const char *t, size_t tl, double w)
{
    struct mx_dlp_term *nt = realloc(r->terms, (r->nterms + 1) * sizeof *nt);
    if (!nt)
        return -ENOMEM;
    r->terms = nt;
    nt[r->nterms].term = xstrndup(t, tl);
    if (!nt[r->nterms].term)
        return -ENOMEM;
    nt[r->nterms].weight = w;
    r->nterms++;
    return 0;
}

static int def_dlp(struct mx_rule *r, const char *s, const char *e)
{
    reset_def(r);
    s = skip_ws(s, e);
    const char *k = s;
    s = word_end(s, e);
    size_t kl = (size_t)(s - k);
    r->type = MX_RULE_DLP;
    r->dlp_threshold = 1;
    if (kl == 10 && memcmp(k, "creditcard", 10) == 0)
        r->dlp_kind = MX_DLP_CREDITCARD;
    else if (kl == 4 && memcmp(k, "iban", 4) == 0)
        r->dlp_kind = MX_DLP_IBAN;
    else if (kl == 8 && memcmp(k, "mynumber", 8) == 0)
        r->dlp_kind = MX_DLP_MYNUMBER;
    else if (kl == 5 && memcmp(k, "email", 5) == 0)
        r->dlp_kind = MX_DLP_EMAIL;
    else if (kl == 4 && memcmp(k, "dict", 4) == 0)
        r->dlp_kind = MX_DLP_DICT;
    else {
        r->type = MX_RULE_SKIPPED;
        r->skip = "unknown dlp kind";
        return 0;
    }
    for (s = skip_ws(s, e); s < e; s = skip_ws(s, e)) {
        const char *w = s, *we;
        if (*s == '"') {
            we = memchr(s + 1, '"', (size_t)(e - s - 1));
            if (!we)
                we = e;
            s = we < e ? we + 1 : e;
            w++;
        } else {
            while (s < e && !isspace((unsigned char)*s) && *s != '=')
                s++;
            we = s;
        }
        double val = 1;
        if (s < e && *s == '=') {
            char *end;
            val = strtod(s + 1, &end);
            s = word_end(s, e);
        }
        size_t wl = (size_t)(we - w);
        if ((wl == 3 && memcmp(w, "min", 3) == 0) || (wl == 9 && memcmp(w, "threshold", 9) == 0))
            r->dlp_threshold = val;
        else if (r->dlp_kind == MX_DLP_DICT && wl && add_term(r, w, wl, val) != 0)
            return -ENOMEM;
    }
    return 0;
}

/* Is every value of a level= / flag= list (NUL-separated, lower case) one
 * the engine knows? A typo must not make a rule silently never hit. */
static bool known_words(const char *list, uint8_t field)
{
    static const char *const levels[] = {"top", "member", NULL};
    static const char *const flags[] = {"archive", "encrypted", "corrupt", "limit", NULL};
    const char *const *ok = field == 'l' ? levels : flags;
    if (!*list)
        return false;
    for (const char *v = list; *v; v += strlen(v) + 1) {
        size_t i = 0;
        while (ok[i] && strcmp(ok[i], v) != 0)
            i++;
        if (!ok[i])
            return false;
    }
    return true;
}

/* attachment NAME [!]field=v1,v2 ... ; fields: name (glob), ext, type
 * (declared, glob), truetype (libmagic, glob), level (top|member: a MIME
 * part or a member of an archive), flag (archive, encrypted, corrupt,
 * limit). All conditions must hold. */
static int def_attach(struct mx_rule *r, const char *s, const char *e)
{
    reset_def(r);
    r->type = MX_RULE_ATTACH;
    for (s = skip_ws(s, e); s < e; s = skip_ws(s, e)) {
        const char *w = s;
        s = word_end(s, e);
        bool neg = *w == '!';
        if (neg)
            w++;
        const char *eq = memchr(w, '=', (size_t)(s - w));
        if (!eq) {
            r->type = MX_RULE_SKIPPED;
            r->skip = "bad attachment condition";
            return 0;
        }
        size_t fl = (size_t)(eq - w);
        uint8_t field = 0;
        if (fl == 4 && memcmp(w, "name", 4) == 0)
            field = 'n';
        else if (fl == 3 && memcmp(w, "ext", 3) == 0)
            field = 'e';
        else if (fl == 4 && memcmp(w, "type", 4) == 0)
            field = 't';
        else if (fl == 8 && memcmp(w, "truetype", 8) == 0)
            field = 'T';
        else if (fl == 5 && memcmp(w, "level", 5) == 0)
            field = 'l';
        else if (fl == 4 && memcmp(w, "flag", 4) == 0)
            field = 'f';
        else {
            r->type = MX_RULE_SKIPPED;
            r->skip = "unknown attachment field";
            return 0;
        }
        struct mx_attach_cond *nc = realloc(r->conds, (r->nconds + 1) * sizeof *nc);
        if (!nc)
            return -ENOMEM;
        r->conds = nc;
        size_t vl = (size_t)(s - eq - 1);
        char *v = malloc(vl + 2);
        if (!v)
            return -ENOMEM;
        for (size_t i = 0; i < vl; i++) {
            char c = eq[1 + i];
            v[i] = c == ',' ? 0 : (char)tolower((unsigned char)c);
        }
        v[vl] = 0;
        v[vl + 1] = 0;
        if ((field == 'l' || field == 'f') && !known_words(v, field)) {
            free(v);
            r->type = MX_RULE_SKIPPED;
            r->skip = field == 'l' ? "attachment level is not top or member"
                                   : "unknown attachment flag";
            return 0;
        }
        nc[r->nconds].field = field;
        nc[r->nconds].negate = neg;
        nc[r->nconds].values = v;
        r->nconds++;
    }
    return 0;
}

static int add_tag(struct mx_ruleset *rs, int kind, const char *k, size_t kl, const char *v,
                   size_t vl)
{
    for (size_t i = 0; i < rs->ntags; i++) {
        if (rs->tags[i].kind == kind && strlen(rs->tags[i].k) == kl &&
            memcmp(rs->tags[i].k, k, kl) == 0) {
            char *nv = xstrndup(v, vl);
            if (!nv)
                return -ENOMEM;
            free(rs->tags[i].v);
            rs->tags[i].v = nv;
            return 0;
        }
    }
    if (rs->ntags == rs->tagcap) {
        size_t nc = rs->tagcap ? rs->tagcap * 2 : 64;
        struct mx_kv *nt = realloc(rs->tags, nc * sizeof *nt);
        if (!nt)
            return -ENOMEM;
        rs->tags = nt;
        rs->tagcap = nc;
    }
    rs->tags[rs->ntags].k = xstrndup(k, kl);
    rs->tags[rs->ntags].v = xstrndup(v, vl);
    rs->tags[rs->ntags].kind = kind;
    if (!rs->tags[rs->ntags].k || !rs->tags[rs->ntags].v)
        return -ENOMEM;
    rs->ntags++;
    return 0;
}

static int directive(struct mx_ruleset *rs, const char *s, const char *e)
{
    const char *d = s;
    s = word_end(s, e);
    size_t dl = (size_t)(s - d);
    s = skip_ws(s, e);
#define IS(lit) (dl == sizeof(lit) - 1 && memcmp(d, lit, dl) == 0)
    if (IS("loadplugin")) {
        const char *w = s, *we = word_end(s, e);
        if (we > w && !plugin_loaded(rs, w, (size_t)(we - w)))
            return add_str(&rs->plugins, &rs->nplugins, &rs->plugcap, w, (size_t)(we - w));
        return 0;
    }
    if (IS("replace_tag") || IS("replace_pre") || IS("replace_inter") || IS("replace_post")) {
        const char *k = s, *ke = word_end(s, e);
        const char *v = skip_ws(ke, e);
        int kind = IS("replace_tag") ? 't' : IS("replace_pre") ? 'p' : IS("replace_inter") ? 'i' : 'o';
        return add_tag(rs, kind, k, (size_t)(ke - k), v, (size_t)(e - v));
    }
    if (IS("util_rb_tld")) {
        for (; s < e; s = skip_ws(s, e)) {
            const char *w = s;
            s = word_end(s, e);
            int rc = add_str(&rs->tlds, &rs->ntlds, &rs->tldcap, w, (size_t)(s - w));
            if (rc)
                return rc;
            for (char *c = rs->tlds[rs->ntlds - 1]; *c; c++)
                *c = (char)tolower((unsigned char)*c);
        }
        return 0;
    }
    if (IS("replace_rules")) {
        for (; s < e; s = skip_ws(s, e)) {
            const char *w = s;
            s = word_end(s, e);
            int rc = add_str(&rs->replace_rules, &rs->nreplace, &rs->replcap, w, (size_t)(s - w));
            if (rc)
                return rc;
        }
        return 0;
    }
    bool ruledef = IS("header") || IS("body") || IS("rawbody") || IS("uri") || IS("full") ||
                   IS("meta") || IS("score") || IS("describe") || IS("tflags") || IS("dlp") ||
                   IS("dlp_term") || IS("attachment") || IS("mimeheader") || IS("uri_detail") ||
                   IS("askdns") || IS("urirhssub") || IS("uridnssub") || IS("uridnsbl") ||
                   IS("urirhsbl") || IS("header_eval");
    if (!ruledef) {
        rs->ignored_directives++;
        return 0;
    }
    const char *n = s, *ne = word_end(s, e);
    if (ne == n)
        return 0;
    struct mx_rule *r = get_rule(rs, n, (size_t)(ne - n));
    if (!r)
        return -ENOMEM;
    s = skip_ws(ne, e);
    if (IS("header"))
        return def_header(r, s, e);
    if (IS("body"))
        return def_regex(r, MX_RULE_BODY, s, e);
    if (IS("rawbody"))
        return def_regex(r, MX_RULE_RAWBODY, s, e);
    if (IS("uri"))
        return def_regex(r, MX_RULE_URI, s, e);
    if (IS("full"))
        return def_regex(r, MX_RULE_FULL, s, e);
    if (IS("meta")) {
        reset_def(r);
        r->type = MX_RULE_META;
        r->meta_src = xstrndup(s, (size_t)(e - s));
        return r->meta_src ? 0 : -ENOMEM;
    }
    if (IS("score")) {
        char tmp[64];
        const char *w = s, *we = word_end(s, e);
        size_t wl = (size_t)(we - w) < sizeof tmp - 1 ? (size_t)(we - w) : sizeof tmp - 1;
        memcpy(tmp, w, wl);
        tmp[wl] = 0;
        char *end;
        double v = strtod(tmp, &end);
        if (end != tmp) {
            r->score = v;
            r->has_score = true;
        }
        return 0;
    }
    if (IS("describe")) {
        free(r->describe);
        r->describe = xstrndup(s, (size_t)(e - s));
        return r->describe ? 0 : -ENOMEM;
    }
    if (IS("tflags"))
        return def_tflags(r, s, e);
    if (IS("dlp"))
        return def_dlp(r, s, e);
    if (IS("dlp_term")) {
        if (r->type != MX_RULE_DLP || r->dlp_kind != MX_DLP_DICT)
            return 0;
        char *end;
        double w = strtod(s, &end);
        const char *t = skip_ws(word_end(s, e), e);
        return t < e ? add_term(r, t, (size_t)(e - t), w) : 0;
    }
    if (IS("attachment"))
        return def_attach(r, s, e);
    if (IS("mimeheader")) {
        int rc = def_header(r, s, e);
        if (rc == 0 && r->type == MX_RULE_HEADER && !r->exists)
            r->type = MX_RULE_MIMEHEADER;
        else if (rc == 0 && r->type == MX_RULE_HEADER) {
            r->type = MX_RULE_SKIPPED;
            r->skip = "mimeheader exists: (not implemented)";
        }
        return rc;
    }
    /* rule types that need SpamAssassin plugins or DNS */
    reset_def(r);
    r->type = MX_RULE_SKIPPED;
    r->skip = "network rule";
    return 0;
#undef IS
}

int mx_rules_parse(struct mx_ruleset *rs, const char *text, size_t len, const char *fname)
{
    /* if-stack: live = enclosing block live and this branch's condition */
    bool live[MAX_IF_DEPTH + 1], cond[MAX_IF_DEPTH + 1];
    int depth = 0;
    live[0] = true;
    cond[0] = true;
    const char *p = text, *end = text + len;
    unsigned lineno = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *s = p;
        p = nl ? nl + 1 : end;
        lineno++;
        rs->lines++;
        /* strip comment: '#' not preceded by a backslash */
        const char *e = s;
        while (e < le && !(*e == '#' && (e == s || e[-1] != '\\')))
            e++;
        s = skip_ws(s, e);
        while (e > s && isspace((unsigned char)e[-1]))
            e--;
        if (s == e)
            continue;
        const char *w = s, *we = word_end(s, e);
        size_t wl = (size_t)(we - w);
        if ((wl == 8 && memcmp(w, "ifplugin", 8) == 0) || (wl == 2 && memcmp(w, "if", 2) == 0)) {
            if (depth >= MAX_IF_DEPTH) {
                snprintf(rs->err, sizeof rs->err, "%s:%u: if nested too deep", fname, lineno);
                return -EINVAL;
            }
            const char *a = skip_ws(we, e);
            bool c = wl == 8 ? plugin_loaded(rs, a, (size_t)(word_end(a, e) - a))
                             : eval_if(rs, a, e);
            depth++;
            cond[depth] = c;
            live[depth] = live[depth - 1] && c;
            continue;
        }
        if (wl == 4 && memcmp(w, "else", 4) == 0) {
            if (depth == 0) {
                snprintf(rs->err, sizeof rs->err, "%s:%u: else without if", fname, lineno);
                return -EINVAL;
            }
            cond[depth] = !cond[depth];
            live[depth] = live[depth - 1] && cond[depth];
            continue;
        }
        if (wl == 5 && memcmp(w, "endif", 5) == 0) {
            if (depth == 0) {
                snprintf(rs->err, sizeof rs->err, "%s:%u: endif without if", fname, lineno);
                return -EINVAL;
            }
            depth--;
            continue;
        }
        if (!live[depth])
            continue;
        int rc = directive(rs, s, e);
        if (rc)
            return rc;
    }
    if (depth != 0) {
        snprintf(rs->err, sizeof rs->err, "%s: %d unterminated if block(s)", fname, depth);
        return -EINVAL;
    }
    return 0;
}

static int load_file(struct mx_ruleset *rs, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(rs->err, sizeof rs->err, "%s: %s", path, strerror(errno));
        return -errno;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size > (64 << 20)) {
        fclose(f);
        snprintf(rs->err, sizeof rs->err, "%s: unreadable or too large", path);
        return -EFBIG;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        fclose(f);
        return -ENOMEM;
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    int rc = mx_rules_parse(rs, buf, n, path);
    free(buf);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int mx_rules_load_path(struct mx_ruleset *rs, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(rs->err, sizeof rs->err, "%s: %s", path, strerror(errno));
        return -errno;
    }
    if (!S_ISDIR(st.st_mode))
        return load_file(rs, path);
    DIR *d = opendir(path);
    if (!d)
        return -errno;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if ((l > 3 && strcmp(de->d_name + l - 3, ".cf") == 0) ||
            (l > 4 && strcmp(de->d_name + l - 4, ".pre") == 0) ||
            (l > 6 && strcmp(de->d_name + l - 6, ".rules") == 0))
            if ((rc = add_str(&names, &n, &cap, de->d_name, l)) != 0)
                break;
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    /* *.pre first (they load plugins), then the rest in name order */
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
        for (size_t i = 0; i < n && rc == 0; i++) {
            size_t l = strlen(names[i]);
            bool pre = l > 4 && strcmp(names[i] + l - 4, ".pre") == 0;
            if (pre != (pass == 0))
                continue;
            char full[4096];
            snprintf(full, sizeof full, "%s/%s", path, names[i]);
            rc = load_file(rs, full);
        }
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

/* ---- finish: replace_tags, metas, scores --------------------------------- */

static const char *tag_value(const struct mx_ruleset *rs, int kind, const char *k, size_t kl)
{
    for (size_t i = 0; i < rs->ntags; i++)
        if (rs->tags[i].kind == kind && strlen(rs->tags[i].k) == kl &&
            memcmp(rs->tags[i].k, k, kl) == 0)
            return rs->tags[i].v;
    return NULL;
}

/* growable string */
struct sb {
    char *s;
    size_t n, cap;
    bool oom;
};

static void sb_add(struct sb *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = (b->n + n + 1) * 2;
        char *ns = realloc(b->s, nc);
        if (!ns) {
            b->oom = true;
            return;
        }
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

/* Remove the first "<kind NAME>" from re; return NAME's value (or NULL). */
static const char *take_mod(const struct mx_ruleset *rs, char *re, const char *word, int kind)
{
    size_t wl = strlen(word);
    for (char *p = strchr(re, '<'); p; p = strchr(p + 1, '<')) {
        if (strncmp(p + 1, word, wl) != 0 || p[1 + wl] != ' ')
            continue;
        char *name = p + 2 + wl;
        char *gt = strchr(name, '>');
        if (!gt || gt == name)
            continue;
        const char *v = tag_value(rs, kind, name, (size_t)(gt - name));
        memmove(p, gt + 1, strlen(gt + 1) + 1);
        return v;
    }
    return NULL;
}

/* Mail::SpamAssassin::Plugin::ReplaceTags::finish_parsing_end, pass by pass. */
static int expand_tags(const struct mx_ruleset *rs, struct mx_rule *r)
{
    for (int pass = 0; pass <= 5; pass++) {
        const char *pre = take_mod(rs, r->re, "pre", 'p');
        const char *post = take_mod(rs, r->re, "post", 'o');
        const char *inter = take_mod(rs, r->re, "inter", 'i');
        struct sb out = {0};
        bool again = false;
        /* split(/(<[^<>]+>)/): text, tag, text, tag ... with empty texts */
        const char *p = r->re;
        bool first = true;
        for (;;) {
            const char *lt = p;
            const char *tag = NULL, *tag_end = NULL;
            for (; *lt; lt++) {
                if (*lt != '<')
                    continue;
                const char *q = lt + 1;
                while (*q && *q != '<' && *q != '>')
                    q++;
                if (*q == '>' && q > lt + 1) {
                    tag = lt;
                    tag_end = q + 1;
                    break;
                }
            }
            size_t textlen = tag ? (size_t)(tag - p) : strlen(p);
            /* Perl's split drops trailing empty fields */
            if (textlen == 0 && tag && inter && (first || true))
                sb_add(&out, inter, strlen(inter));
            else
                sb_add(&out, p, textlen);
            first = false;
            if (!tag)
                break;
            if (out.n > MAX_EXPANDED)
                break;
            if (pre)
                sb_add(&out, pre, strlen(pre));
            const char *v = tag_value(rs, 't', tag + 1, (size_t)(tag_end - tag - 2));
            if (v) {
                sb_add(&out, v, strlen(v));
                if (strchr(v, '<') && strchr(v, '>'))
                    again = true;
            } else {
                sb_add(&out, tag, (size_t)(tag_end - tag));
            }
            if (post)
                sb_add(&out, post, strlen(post));
            p = tag_end;
        }
        if (out.oom)
            return -ENOMEM;
        if (out.n > MAX_EXPANDED) {
            /* tags whose values hold tags can grow exponentially */
            free(out.s);
            free(r->re);
            r->re = NULL;
            r->type = MX_RULE_SKIPPED;
            r->skip = "replace_tags expansion too large";
            return 0;
        }
        free(r->re);
        r->re = out.s ? out.s : xstrndup("", 0);
        if (!r->re)
            return -ENOMEM;
        if (!again)
            break;
    }
    return 0;
}

/* Shunting-yard to RPN. Precedence follows Perl. */
static int prec(int op)
{
    switch (op) {
    case MX_MOP_NOT:
    case MX_MOP_NEG:
        return 7;
    case MX_MOP_MUL:
    case MX_MOP_DIV:
        return 6;
    case MX_MOP_ADD:
    case MX_MOP_SUB:
        return 5;
    case MX_MOP_GT:
    case MX_MOP_LT:
    case MX_MOP_GE:
    case MX_MOP_LE:
        return 4;
    case MX_MOP_EQ:
    case MX_MOP_NE:
        return 3;
    case MX_MOP_AND:
        return 2;
    case MX_MOP_OR:
        return 1;
    }
    return 0;
}

#define PAREN 100

static int compile_meta(struct mx_ruleset *rs, size_t ri)
{
    const char *s = rs->rules[ri].meta_src;
    size_t cap = strlen(s) + 2;
    struct mx_meta_tok *out = calloc(cap, sizeof *out);
    int *ops = calloc(cap, sizeof *ops);
    size_t no = 0, nops = 0;
    bool expect_operand = true;
    int rc = 0;
    if (!out || !ops) {
        free(out);
        free(ops);
        return -ENOMEM;
    }
    while (*s) {
        if (isspace((unsigned char)*s)) {
            s++;
            continue;
        }
        if (isalnum((unsigned char)*s) || *s == '_' || (*s == '.' && isdigit((unsigned char)s[1]))) {
            const char *w = s;
            while (isalnum((unsigned char)*s) || *s == '_' || *s == '.')
                s++;
            if (isdigit((unsigned char)*w) || *w == '.') {
                out[no].op = MX_MOP_CONST;
                out[no].k = strtod(w, NULL);
            } else {
                struct mx_rule *dep = get_rule(rs, w, (size_t)(s - w));
                if (!dep) {
                    rc = -ENOMEM;
                    break;
                }
                out[no].op = MX_MOP_RULE;
                out[no].rule = (uint32_t)(dep - rs->rules);
            }
            no++;
            expect_operand = false;
            continue;
        }
        int op = -1;
        if (*s == '(') {
            ops[nops++] = PAREN;
            s++;
            expect_operand = true;
            continue;
        }
        if (*s == ')') {
            while (nops && ops[nops - 1] != PAREN)
                out[no++].op = (uint8_t)ops[--nops];
            if (nops)
                nops--;
            s++;
            expect_operand = false;
            continue;
        }
        if (s[0] == '&' && s[1] == '&')
            op = MX_MOP_AND, s += 2;
        else if (s[0] == '|' && s[1] == '|')
            op = MX_MOP_OR, s += 2;
        else if (s[0] == '>' && s[1] == '=')
            op = MX_MOP_GE, s += 2;
        else if (s[0] == '<' && s[1] == '=')
            op = MX_MOP_LE, s += 2;
        else if (s[0] == '=' && s[1] == '=')
            op = MX_MOP_EQ, s += 2;
        else if (s[0] == '!' && s[1] == '=')
            op = MX_MOP_NE, s += 2;
        else if (*s == '!')
            op = MX_MOP_NOT, s++;
        else if (*s == '>')
            op = MX_MOP_GT, s++;
        else if (*s == '<')
            op = MX_MOP_LT, s++;
        else if (*s == '+')
            op = expect_operand ? -2 : MX_MOP_ADD, s++;
        else if (*s == '-')
            op = expect_operand ? MX_MOP_NEG : MX_MOP_SUB, s++;
        else if (*s == '*')
            op = MX_MOP_MUL, s++;
        else if (*s == '/')
            op = MX_MOP_DIV, s++;
        else {
            rc = 1; /* unknown character: the meta cannot be evaluated */
            break;
        }
        if (op == -2)
            continue; /* unary plus */
        bool unary = op == MX_MOP_NOT || op == MX_MOP_NEG;
        if (!unary) {
            while (nops && ops[nops - 1] != PAREN && prec(ops[nops - 1]) >= prec(op))
                out[no++].op = (uint8_t)ops[--nops];
        }
        ops[nops++] = op;
        expect_operand = true;
    }
    while (rc == 0 && nops) {
        if (ops[nops - 1] == PAREN) {
            nops--;
            continue;
        }
        out[no++].op = (uint8_t)ops[--nops];
    }
    free(ops);
    /* validate stack depth */
    long depth = 0;
    for (size_t i = 0; rc == 0 && i < no; i++) {
        uint8_t o = out[i].op;
        if (o == MX_MOP_RULE || o == MX_MOP_CONST)
            depth++;
        else if (o == MX_MOP_NOT || o == MX_MOP_NEG)
            depth -= depth < 1 ? 1000 : 0;
        else
            depth -= 1;
        if (depth < 1)
            rc = 1;
    }
    if (rc == 0 && depth != 1)
        rc = 1;
    struct mx_rule *r = &rs->rules[ri]; /* get_rule may have moved the array */
    if (rc < 0) {
        free(out);
        return rc;
    }
    if (rc > 0 || no == 0) {
        free(out);
        r->type = MX_RULE_SKIPPED;
        r->skip = "bad meta expression";
        return 0;
    }
    r->meta = out;
    r->nmeta = no;
    return 0;
}

static size_t escape_len(const char *re, size_t i, size_t n);

/* Index just past the character class that opens at re[i] ('['): "[]" and
 * "[^]" start with a literal ']', an escape is read whole (escape_len():
 * "\c]" is one character, not "\c" and the end), and a POSIX
 * class such as "[:alpha:]" inside does not end it (PCRE2's rule: "[:"
 * followed by a run without ']' that ends in ":]"). */
static size_t class_end(const char *re, size_t i, size_t n)
{
    size_t j = i + 1;
    if (j < n && re[j] == '^')
        j++;
    if (j < n && re[j] == ']')
        j++;
    while (j < n) {
        if (re[j] == '\\' && j + 1 < n) {
            size_t el = escape_len(re, j, n);
            j += el ? el : 2;
            continue;
        }
        if (re[j] == '[' && j + 1 < n && re[j + 1] == ':') {
            size_t k = j + 2;
            while (k < n && re[k] != ']')
                k++;
            if (k < n && k > j + 2 && re[k - 1] == ':') {
                j = k + 1;
                continue;
            }
        }
        if (re[j] == ']')
            return j + 1;
        j++;
    }
    return n;
}

/* Length of a verbatim run at re[i] that no rewrite looks inside: an escape
 * (escape_len()), \Q...\E, a character class, a (?#...) comment, and with
 * `extended` a # comment to the end of the line. 0 for anything else. */
static size_t opaque_len(const char *re, size_t i, size_t n, bool extended)
{
    if (re[i] == '\\' && i + 1 < n) {
        if (re[i + 1] == 'Q') {
            const char *e = strstr(re + i + 2, "\\E");
            return (e ? (size_t)(e - re) + 2 : n) - i;
        }
        size_t el = escape_len(re, i, n);
        return el ? el : 2;
    }
    if (re[i] == '[')
        return class_end(re, i, n) - i;
    if (re[i] == '(' && i + 2 < n && re[i + 1] == '?' && re[i + 2] == '#') {
        const char *e = strchr(re + i, ')');
        return (e ? (size_t)(e - re) + 1 : n) - i;
    }
    if (extended && re[i] == '#') {
        const char *e = strchr(re + i, '\n');
        return (e ? (size_t)(e - re) : n) - i;
    }
    return 0;
}

/* SpamAssassin matches body rules paragraph by paragraph (line by line), so
 * \z and \Z there mean "end of the paragraph"; mxgate scans the text as one
 * multi-line string, where that is `$`. Rewritten in place (shorter),
 * outside character classes. */
void mx_rules_paragraph_anchors(char *re)
{
    size_t n = strlen(re), o = 0;
    for (size_t i = 0; i < n;) {
        if (re[i] == '\\' && i + 1 < n && (re[i + 1] == 'z' || re[i + 1] == 'Z')) {
            re[o++] = '$';
            i += 2;
            continue;
        }
        size_t k = opaque_len(re, i, n, false);
        if (!k)
            k = 1;
        memmove(re + o, re + i, k);
        o += k;
        i += k;
    }
    re[o] = 0;
}

char *mx_rules_relax_repeats(const char *re, unsigned max, bool extended)
{
    size_t n = strlen(re);
    /* "{m,n}" -> "{k,}" never grows, "{11}" -> "{10,}" grows by one: a
     * quantifier is at least 3 bytes, so twice the input is plenty */
    char *out = malloc(2 * n + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = re[i];
        size_t k = opaque_len(re, i, n, extended);
        if (k) {
            memcpy(out + o, re + i, k);
            o += k;
            i += k - 1;
            continue;
        }
        if (c == '{' && i + 1 < n && isdigit((unsigned char)re[i + 1])) {
            char *end;
            unsigned long lo = strtoul(re + i + 1, &end, 10), hi = lo;
            bool open = false;
            if (*end == ',') {
                if (isdigit((unsigned char)end[1]))
                    hi = strtoul(end + 1, &end, 10);
                else
                    open = true, end++;
            }
            if (*end == '}' && (open ? false : hi > max)) {
                unsigned long m = lo < max ? lo : max;
                o += (size_t)sprintf(out + o, "{%lu,}", m);
                i = (size_t)(end - re);
                continue;
            }
        }
        out[o++] = c;
    }
    out[o] = 0;
    return out;
}

void mx_rules_drop_anchors(char *re)
{
    size_t n = strlen(re), o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = opaque_len(re, i, n, false);
        if (k) {
            memmove(re + o, re + i, k);
            o += k;
            i += k;
            continue;
        }
        /* "(?^" is an option reset, not an anchor */
        char c = re[i++];
        if ((c == '^' && !(o >= 2 && re[o - 1] == '?' && re[o - 2] == '(')) || c == '$')
            continue;
        re[o++] = c;
    }
    re[o] = 0;
}

/* Does an inline option turn on extended mode, "(?x)" or "(?x:" (whitespace
 * and # comments ignored)? The rewriters below read the regex as written, so
 * such a regex is left alone, as with /x. */
static bool inline_extended(const char *re)
{
    for (const char *p = strstr(re, "(?"); p; p = strstr(p + 2, "(?")) {
        const char *q = p + 2;
        bool x = false;
        while (isalpha((unsigned char)*q) || *q == '-' || *q == '^') {
            if (*q == '-')
                break; /* (?-x) turns it off */
            x = x || *q == 'x';
            q++;
        }
        if (x && (*q == ')' || *q == ':'))
            return true;
    }
    return false;
}

/* Does the regex refer to a group by number, or change how groups are
 * numbered (backreferences, recursion, conditions, branch reset)? Then a
 * group added by mx_rules_share_repeats() could change its meaning. */
static bool refers_to_groups(const char *re, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (re[i] == '\\' && i + 1 < n) {
            char c = re[i + 1];
            if ((c >= '1' && c <= '9') || c == 'g' || c == 'k')
                return true;
        }
        size_t k = opaque_len(re, i, n, false);
        if (k > 1) {
            i += k - 1;
            continue;
        }
        if (re[i] == '(' && i + 2 < n && re[i + 1] == '?') {
            char c = re[i + 2];
            if (c == 'R' || c == '&' || c == '(' || c == '|' || c == '+' || c == '-' ||
                isdigit((unsigned char)c) ||
                (c == 'P' && i + 3 < n && (re[i + 3] == '=' || re[i + 3] == '>')))
                return true;
        }
    }
    return false;
}

/* a {m}, {m,} or {m,n} quantifier at re[i]: its bounds (hi = -1 unbounded)
 * and length, lazy '?' included; 0 if there is none, or it is possessive */
static size_t quantifier_at(const char *re, size_t i, size_t n, long *lo, long *hi, bool *lazy)
{
    if (i >= n || re[i] != '{' || i + 1 >= n || !isdigit((unsigned char)re[i + 1]))
        return 0;
    char *end;
    *lo = strtol(re + i + 1, &end, 10);
    *hi = *lo;
    if (*end == ',') {
        if (isdigit((unsigned char)end[1]))
            *hi = strtol(end + 1, &end, 10);
        else
            *hi = -1, end++;
    }
    if (*end != '}' || (*hi >= 0 && *hi < *lo) || *lo > 65535 || *hi > 65535)
        return 0;
    size_t len = (size_t)(end - (re + i)) + 1;
    *lazy = i + len < n && re[i + len] == '?';
    if (i + len < n && re[i + len] == '+')
        return 0;
    return len + (*lazy ? 1 : 0);
}

char *mx_rules_share_repeats(const char *re, bool extended, unsigned serial)
{
    size_t n = strlen(re);
    if (extended || inline_extended(re) || refers_to_groups(re, n))
        return NULL;
    char name[24];
    snprintf(name, sizeof name, "mxrep%u", serial);
    if (strstr(re, name))
        return NULL;
    /* find the (?:...){..} whose copies weigh most */
    size_t stack[64], depth = 0, best_s = 0, best_e = 0, best_q = 0;
    unsigned long long best_w = 0;
    long best_lo = 0, best_hi = 0;
    bool best_lazy = false;
    for (size_t i = 0; i < n; i++) {
        size_t k = opaque_len(re, i, n, false);
        if (k) {
            i += k - 1;
            continue;
        }
        if (re[i] == '(') {
            if (depth == 64)
                return NULL;
            stack[depth++] = i;
        } else if (re[i] == ')' && depth) {
            size_t s = stack[--depth];
            long lo, hi;
            bool lazy;
            size_t q = quantifier_at(re, i + 1, n, &lo, &hi, &lazy);
            if (!q || re[s + 1] != '?' || re[s + 2] != ':')
                continue;
            unsigned long long copies =
                hi < 0 ? (unsigned long long)lo + 1 : (unsigned long long)hi;
            if (copies < 2)
                continue;
            unsigned long long w = copies * (i - s);
            if (w > best_w) {
                best_w = w, best_s = s, best_e = i, best_q = q;
                best_lo = lo, best_hi = hi, best_lazy = lazy;
            }
        }
    }
    if (!best_w)
        return NULL;
    /* (?:B){m,n} -> (?<x>B)(?&x){m-1,n-1}; with m = 0 the whole is optional */
    size_t blen = best_e - (best_s + 3);
    char *out = malloc(n + 2 * sizeof name + 64);
    if (!out)
        return NULL;
    size_t o = 0;
    memcpy(out, re, best_s);
    o = best_s;
    if (best_lo == 0)
        o += (size_t)sprintf(out + o, "(?:");
    o += (size_t)sprintf(out + o, "(?<%s>", name);
    memcpy(out + o, re + best_s + 3, blen);
    o += blen;
    long lo = best_lo ? best_lo - 1 : 0;
    if (best_hi < 0)
        o += (size_t)sprintf(out + o, ")(?&%s){%ld,}", name, lo);
    else if (best_hi - 1 == lo)
        o += (size_t)sprintf(out + o, ")(?&%s){%ld}", name, lo);
    else
        o += (size_t)sprintf(out + o, ")(?&%s){%ld,%ld}", name, lo, best_hi - 1);
    if (best_lazy)
        out[o++] = '?';
    if (best_lo == 0) {
        out[o++] = ')';
        out[o++] = '?';
        if (best_lazy)
            out[o++] = '?';
    }
    size_t tail = best_e + 1 + best_q;
    memcpy(out + o, re + tail, n - tail + 1);
    return out;
}

/* Length of the escape at re[i] as PCRE2 reads it: "\x{..}"-style braces
 * (\x \o \p \P \N \g \k), \xHH, \0oo, \cX, \pL, else two bytes; 0 for
 * a brace that is never closed. */
static size_t escape_len(const char *re, size_t i, size_t n)
{
    char e = i + 1 < n ? re[i + 1] : 0;
    size_t k = 2;
    if (e && strchr("xopPNgk", e) && i + 2 < n && re[i + 2] == '{') {
        const char *cl = memchr(re + i, '}', n - i);
        return cl ? (size_t)(cl - (re + i)) + 1 : 0;
    }
    if (e == 'x')
        while (k < 4 && i + k < n && isxdigit((unsigned char)re[i + k]))
            k++;
    else if (e == '0')
        while (k < 4 && i + k < n && re[i + k] >= '0' && re[i + k] <= '7')
            k++;
    else if (e == 'c' || e == 'p' || e == 'P')
        k = 3;
    return i + k <= n ? k : 0;
}

/* ---- reversal (mx_rules_reverse()) ------------------------------------- */

struct rv {
    const char *re;
    size_t i, n;
    bool bad;
};

/* the items of one sequence, each a reversed atom with its quantifier */
struct rv_items {
    struct sb *v;
    size_t n, cap;
};

static struct sb *rv_push(struct rv *r, struct rv_items *l)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? 2 * l->cap : 16;
        struct sb *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) {
            r->bad = true;
            return NULL;
        }
        l->v = nv;
        l->cap = nc;
    }
    memset(&l->v[l->n], 0, sizeof l->v[l->n]);
    return &l->v[l->n++];
}

static void rv_alt(struct rv *r, struct sb *out);

/* A quantifier at r->i, appended greedy to item (a lazy or possessive
 * suffix is dropped: the same strings, or more of them). */
static void rv_quant(struct rv *r, struct sb *item)
{
    const char *re = r->re;
    size_t i = r->i, n = r->n, k = 0;
    if (i >= n)
        return;
    if (re[i] == '*' || re[i] == '+' || re[i] == '?') {
        k = 1;
    } else if (re[i] == '{' && i + 1 < n && isdigit((unsigned char)re[i + 1])) {
        /* {m} {m,} {m,n}; anything else is a literal '{' */
        size_t j = i + 1;
        while (j < n && isdigit((unsigned char)re[j]))
            j++;
        if (j < n && re[j] == ',')
            for (j++; j < n && isdigit((unsigned char)re[j]);)
                j++;
        if (j >= n || re[j] != '}')
            return;
        k = j + 1 - i;
    } else {
        return;
    }
    if (item)
        sb_add(item, re + i, k);
    r->i = i + k;
    if (r->i < n && (re[r->i] == '?' || re[r->i] == '+'))
        r->i++;
}

/* One group "(...)" at r->i into item; false: dropped (an assertion). */
static bool rv_group(struct rv *r, struct sb *item)
{
    const char *re = r->re;
    size_t n = r->n, j = r->i + 1;
    bool keep = true;
    struct sb head = {0};
    if (j < n && re[j] == '*') {
        r->bad = true; /* (*VERB) */
        return false;
    }
    if (j < n && re[j] == '?') {
        char k = j + 1 < n ? re[j + 1] : 0;
        j += 2;
        if (k == ':' || k == '>') {
            /* non-capturing, atomic (its strings are a subset) */
        } else if (k == '=' || k == '!') {
            keep = false;
        } else if (k == '<' && j < n && (re[j] == '=' || re[j] == '!')) {
            keep = false, j++;
        } else if (k == '<' || k == '\'' || (k == 'P' && j < n && re[j] == '<')) {
            char close = k == '\'' ? '\'' : '>';
            while (j < n && re[j] != close)
                j++;
            j++;
        } else {
            /* "(?i:...)" keeps its options; option changes without a group,
             * references, conditions and recursion are refused */
            size_t o = j - 1;
            while (o < n && (isalpha((unsigned char)re[o]) || re[o] == '-' || re[o] == '^'))
                o++;
            if (o == j - 1 || o >= n || re[o] != ':' || k == 'P' || k == 'R') {
                r->bad = true;
                return false;
            }
            sb_add(&head, re + r->i, o + 1 - r->i);
            j = o + 1;
        }
    }
    r->i = j;
    struct sb inner = {0};
    rv_alt(r, &inner);
    if (!r->bad && (r->i >= n || re[r->i] != ')'))
        r->bad = true;
    r->i++;
    if (keep && !r->bad) {
        if (head.n)
            sb_add(item, head.s, head.n);
        else
            sb_add(item, "(?:", 3);
        sb_add(item, inner.s ? inner.s : "", inner.n);
        sb_add(item, ")", 1);
    }
    free(inner.s);
    free(head.s);
    return keep;
}

/* One escape at r->i into item; false: dropped (an anchor). */
static bool rv_escape(struct rv *r, struct sb *item)
{
    const char *re = r->re;
    size_t i = r->i, n = r->n;
    if (i + 1 >= n) {
        r->bad = true;
        return false;
    }
    char e = re[i + 1];
    /* references, \K \G, and the multi-character \R \X */
    if ((e >= '1' && e <= '9') || strchr("gkKGRXC", e)) {
        r->bad = true;
        return false;
    }
    if (e == 'A' || e == 'z' || e == 'Z') {
        r->i += 2;
        return false;
    }
    size_t k = escape_len(re, i, n);
    if (!k) {
        r->bad = true;
        return false;
    }
    sb_add(item, re + i, k);
    r->i = i + k;
    return true;
}

/* One sequence (up to '|' or ')'), its items in reverse order, into out. */
static void rv_seq(struct rv *r, struct sb *out)
{
    const char *re = r->re;
    struct rv_items l = {0};
    while (!r->bad && r->i < r->n && re[r->i] != '|' && re[r->i] != ')') {
        size_t i = r->i, n = r->n;
        char c = re[i];
        if (c == '(' && i + 2 < n && re[i + 1] == '?' && re[i + 2] == '#') {
            r->i += opaque_len(re, i, n, false);
            continue;
        }
        if (c == '\\' && i + 1 < n && re[i + 1] == 'Q') {
            /* quoted literals: one item each, so that they turn too */
            size_t q = opaque_len(re, i, n, false);
            size_t end =
                q >= 4 && re[i + q - 2] == '\\' && re[i + q - 1] == 'E' ? i + q - 2 : i + q;
            for (size_t k = i + 2; k < end && !r->bad; k++) {
                struct sb *it = rv_push(r, &l);
                char lit[8];
                if (it)
                    sb_add(it, lit,
                           (size_t)snprintf(lit, sizeof lit, "\\x%02x", (unsigned char)re[k]));
            }
            r->i = i + q;
            /* a quantifier after \Q..\E repeats its last character; after an
             * empty one it would stick to the item before (a+\Q\E+) */
            size_t at = r->i;
            if (end > i + 2 && l.n)
                rv_quant(r, &l.v[l.n - 1]);
            else
                rv_quant(r, NULL);
            if (end == i + 2 && r->i != at)
                r->bad = true;
            continue;
        }
        if (c == '\\' && i + 1 < n && re[i + 1] == 'E') {
            /* a stray \E is ignored; a quantifier after it would stick to
             * the item before, like after an empty \Q\E: refused */
            r->i += 2;
            size_t at = r->i;
            rv_quant(r, NULL);
            if (r->i != at)
                r->bad = true;
            continue;
        }
        struct sb *it = rv_push(r, &l);
        if (!it)
            break;
        bool kept = true;
        if (c == '(') {
            kept = rv_group(r, it);
        } else if (c == '[') {
            size_t k = class_end(re, i, n);
            if (re[k - 1] != ']' || k == i + 1) {
                r->bad = true;
                break;
            }
            sb_add(it, re + i, k - i);
            r->i = k;
        } else if (c == '\\') {
            kept = rv_escape(r, it);
        } else if (c == '^' || c == '$') {
            kept = false; /* anchors only narrow what matches */
            r->i++;
        } else {
            /* a literal brace, escaped: reversed, "}3{" would read "{3}" */
            if (c == '{' || c == '}')
                sb_add(it, "\\", 1);
            sb_add(it, re + i, 1);
            r->i++;
        }
        if (r->bad)
            break;
        rv_quant(r, kept ? it : NULL);
        if (!kept) {
            free(it->s);
            l.n--;
        } else if (it->oom) {
            r->bad = true;
        }
    }
    for (size_t k = l.n; k-- > 0;) {
        if (!r->bad)
            sb_add(out, l.v[k].s, l.v[k].n);
        free(l.v[k].s);
    }
    free(l.v);
}

static void rv_alt(struct rv *r, struct sb *out)
{
    for (;;) {
        rv_seq(r, out);
        if (r->bad || r->i >= r->n || r->re[r->i] != '|')
            return;
        sb_add(out, "|", 1);
        r->i++;
    }
}

char *mx_rules_reverse(const char *re, bool extended)
{
    if (extended || inline_extended(re))
        return NULL;
    struct rv r = {.re = re, .n = strlen(re)};
    struct sb out = {0};
    /* leading option settings, "(?i)", apply to the whole regex: kept first */
    while (r.i + 2 < r.n && re[r.i] == '(' && re[r.i + 1] == '?') {
        size_t o = r.i + 2;
        while (o < r.n && (isalpha((unsigned char)re[o]) || re[o] == '-' || re[o] == '^'))
            o++;
        if (o == r.i + 2 || o >= r.n || re[o] != ')')
            break;
        sb_add(&out, re + r.i, o + 1 - r.i);
        r.i = o + 1;
    }
    rv_alt(&r, &out);
    if (r.i != r.n)
        r.bad = true; /* an unbalanced ')' */
    sb_add(&out, "", 0);
    if (r.bad || out.oom) {
        free(out.s);
        return NULL;
    }
    return out.s;
}

/* ---- ASCII restriction (mx_rules_ascii_only()) ------------------------- */

struct ao {
    const char *re;
    size_t i, n;
    bool unsure; /* a construct it does not know: the regex is used as it is */
    bool changed;
};

static bool ao_alt(struct ao *a, struct sb *out); /* false: cannot match ASCII */

/* Value of the single-byte escape at re[i] (\xHH, \x{H..}, \0oo), -1 for
 * any other escape; *len its length. */
static long ao_escape_value(const char *re, size_t i, size_t n, size_t *len)
{
    char e = i + 1 < n ? re[i + 1] : 0;
    *len = escape_len(re, i, n);
    if (!*len || (e != 'x' && e != '0'))
        return -1;
    char d[16] = {0};
    size_t dl = *len - 2 < sizeof d - 1 ? *len - 2 : sizeof d - 1;
    memcpy(d, re + i + 2, dl);
    if (e == '0')
        return strtol(d, NULL, 8);
    return strtol(d[0] == '{' ? d + 1 : d, NULL, 16);
}

/* A character class without its members of 0x80 and above; false when none
 * is left. A negated class, or one with a member it cannot read, stays. */
static bool ao_class(struct ao *a, size_t end, struct sb *out)
{
    const char *re = a->re;
    size_t i = a->i + 1;
    if (i < end && re[i] == '^') {
        sb_add(out, re + a->i, end - a->i);
        a->i = end;
        return true;
    }
    struct sb c = {0};
    bool keep_all = false, any = false;
    size_t last = end - 1; /* the closing ']' */
    bool first = true;
    while (i < last && !keep_all) {
        long lo;
        size_t len;
        if (re[i] == '[' && i + 1 < last && re[i + 1] == ':') {
            /* a POSIX class: ASCII letters, digits... in PCRE2's C tables */
            const char *pe = strstr(re + i, ":]");
            if (!pe || (size_t)(pe - re) >= last) {
                keep_all = true;
                break;
            }
            len = (size_t)(pe - (re + i)) + 2;
            sb_add(&c, re + i, len);
            i += len, any = true, first = false;
            continue;
        }
        if (re[i] == '\\') {
            lo = ao_escape_value(re, i, last, &len);
            if (lo < 0) {
                char e = i + 1 < last ? re[i + 1] : 0;
                /* \d \w \s \h \v and their negations, \n \t..., escaped
                 * punctuation: ASCII or classes PCRE2 and Hyperscan read the
                 * same for ASCII input; \p, \Q and the rest: keep the class */
                if (strchr("dDwWsShHvVntrfae", e) || (e && !isalnum((unsigned char)e))) {
                    sb_add(&c, re + i, 2);
                    i += 2, any = true, first = false;
                    continue;
                }
                keep_all = true;
                break;
            }
        } else {
            lo = (unsigned char)re[i];
            len = 1;
            if (first && re[i] == ']') {
                lo = ']';
            }
        }
        first = false;
        size_t at = i;
        i += len;
        long hi = lo;
        size_t rlen = len;
        if (i + 1 < last && re[i] == '-' && re[i + 1] != ']') {
            size_t l2 = 1;
            if (re[i + 1] == '\\') {
                hi = ao_escape_value(re, i + 1, last, &l2);
                if (hi < 0) {
                    keep_all = true;
                    break;
                }
            } else {
                hi = (unsigned char)re[i + 1];
            }
            rlen += 1 + l2;
            i += 1 + l2;
        }
        if (lo >= 0x80) {
            a->changed = true;
            continue; /* wholly out */
        }
        if (hi >= 0x80) {
            char r[16];
            snprintf(r, sizeof r, "\\x%02lx-\\x7f", (unsigned long)lo);
            sb_add(&c, r, strlen(r));
            a->changed = true;
        } else if (rlen == 1 && (re[at] == '[' || re[at] == '-')) {
            /* escaped: with a member taken out between, "[" could start a
             * POSIX class ("[?[\xdb:alpha:]" -> "[:alpha:]") and "-" a range */
            sb_add(&c, "\\", 1);
            sb_add(&c, re + at, 1);
        } else {
            sb_add(&c, re + at, rlen);
        }
        any = true;
    }
    if (keep_all || c.oom) {
        sb_add(out, re + a->i, end - a->i);
        free(c.s);
        a->i = end;
        return true;
    }
    a->i = end;
    if (!any) {
        free(c.s);
        a->changed = true;
        return false;
    }
    sb_add(out, "[", 1);
    /* a member taken out may leave one first that reads otherwise there:
     * "[\xe9^a]" -> "[\^a]", not "[^a]"; "[\xe9:alpha:]" -> "[\:alpha:]" */
    if (c.s[0] == '^' || c.s[0] == ':' || c.s[0] == '.' || c.s[0] == '=')
        sb_add(out, "\\", 1);
    sb_add(out, c.s, c.n);
    sb_add(out, "]", 1);
    free(c.s);
    return true;
}

/* index just past the group that opens at re[i] */
static size_t group_end(const char *re, size_t i, size_t n)
{
    int depth = 0;
    for (size_t k = i; k < n;) {
        size_t o = opaque_len(re, k, n, false);
        if (o) {
            k += o;
            continue;
        }
        if (re[k] == '(')
            depth++;
        else if (re[k] == ')' && --depth == 0)
            return k + 1;
        k++;
    }
    return n;
}

/* One atom at a->i into item; false when it cannot match ASCII input. */
static bool ao_atom(struct ao *a, struct sb *item)
{
    const char *re = a->re;
    size_t i = a->i, n = a->n;
    char c = re[i];
    if (c == '(') {
        if (i + 1 < n && re[i + 1] == '*') {
            a->unsure = true;
            return true;
        }
        size_t j = i + 1;
        if (j < n && re[j] == '?') {
            char k = j + 1 < n ? re[j + 1] : 0;
            if (k == '=' || k == '!' ||
                (k == '<' && j + 2 < n && (re[j + 2] == '=' || re[j + 2] == '!'))) {
                /* an assertion stays as it is: on ASCII input it means the
                 * same */
                size_t e = group_end(re, i, n);
                sb_add(item, re + i, e - i);
                a->i = e;
                return true;
            }
            if (k == ':' || k == '>') {
                j += 2;
            } else if (k == '<' || k == '\'' || (k == 'P' && j + 2 < n && re[j + 2] == '<')) {
                char close = k == '\'' ? '\'' : '>';
                while (j < n && re[j] != close)
                    j++;
                j++;
            } else {
                size_t o = j + 1;
                while (o < n && (isalpha((unsigned char)re[o]) || re[o] == '-' || re[o] == '^'))
                    o++;
                if (o == j + 1 || o >= n || (re[o] != ':' && re[o] != ')') || k == 'P' ||
                    k == 'R') {
                    a->unsure = true;
                    return true;
                }
                if (re[o] == ')') {
                    /* an option setting: zero-width, kept */
                    sb_add(item, re + i, o + 1 - i);
                    a->i = o + 1;
                    return true;
                }
                j = o + 1;
            }
        } else {
            j = i + 1;
        }
        sb_add(item, re + i, j - i);
        a->i = j;
        struct sb inner = {0};
        bool live = ao_alt(a, &inner);
        if (a->i >= n || re[a->i] != ')')
            a->unsure = true;
        a->i++;
        sb_add(item, inner.s ? inner.s : "", inner.n);
        sb_add(item, ")", 1);
        free(inner.s);
        return live;
    }
    if (c == '[')
        return ao_class(a, class_end(re, i, n), item);
    if (c == '\\') {
        if (i + 1 < n && re[i + 1] == 'Q') {
            size_t q = opaque_len(re, i, n, false);
            bool live = true;
            for (size_t k = i + 2; k < i + q; k++)
                live = live && (unsigned char)re[k] < 0x80;
            sb_add(item, re + i, q);
            a->i = i + q;
            if (!live)
                a->changed = true;
            return live;
        }
        size_t len;
        long v = ao_escape_value(re, i, n, &len);
        if (!len) {
            a->unsure = true; /* a brace never closed */
            return true;
        }
        sb_add(item, re + i, len);
        a->i = i + len;
        if (v >= 0x80) {
            a->changed = true;
            return false;
        }
        return true;
    }
    sb_add(item, re + i, 1);
    a->i++;
    if ((unsigned char)c >= 0x80) {
        a->changed = true;
        return false;
    }
    return true;
}

static bool ao_seq(struct ao *a, struct sb *out)
{
    const char *re = a->re;
    bool live = true;
    while (!a->unsure && a->i < a->n && re[a->i] != '|' && re[a->i] != ')') {
        struct sb item = {0};
        bool al = ao_atom(a, &item);
        /* the quantifier, as written */
        size_t q0 = a->i;
        long lo = 1;
        if (a->i < a->n && (re[a->i] == '*' || re[a->i] == '?')) {
            lo = 0, a->i++;
        } else if (a->i < a->n && re[a->i] == '+') {
            a->i++;
        } else if (a->i < a->n && re[a->i] == '{') {
            long qlo, qhi;
            bool lazy;
            size_t ql = quantifier_at(re, a->i, a->n, &qlo, &qhi, &lazy);
            if (ql) {
                lo = qlo;
                a->i += ql - (lazy ? 1 : 0);
            }
        }
        if (a->i > q0 && a->i < a->n && (re[a->i] == '?' || re[a->i] == '+'))
            a->i++;
        else if (!al && a->i == q0 && a->i < a->n && re[a->i] == '{')
            a->unsure = true; /* a quantifier it did not read (possessive) */
        if (al) {
            sb_add(&item, re + q0, a->i - q0);
            sb_add(out, item.s ? item.s : "", item.n);
        } else if (lo > 0) {
            live = false; /* a required atom that ASCII cannot match */
        } else {
            a->changed = true; /* an optional one: dropped */
        }
        free(item.s);
    }
    return live;
}

static bool ao_alt(struct ao *a, struct sb *out)
{
    bool any = false, first = true;
    for (;;) {
        struct sb alt = {0};
        bool live = ao_seq(a, &alt);
        if (live) {
            if (!first)
                sb_add(out, "|", 1);
            sb_add(out, alt.s ? alt.s : "", alt.n);
            first = false;
            any = true;
        } else {
            a->changed = true;
        }
        free(alt.s);
        if (a->unsure || a->i >= a->n || a->re[a->i] != '|')
            return any;
        a->i++;
    }
}

int mx_rules_ascii_only(const char *re, bool extended, char **out)
{
    *out = NULL;
    size_t n = strlen(re);
    /* taking out an alternative that holds a group renumbers the groups
     * after it: a regex that refers to groups by number stays as it is */
    if (extended || inline_extended(re) || refers_to_groups(re, n))
        return 0;
    struct ao a = {.re = re, .n = n};
    struct sb o = {0};
    bool live = ao_alt(&a, &o);
    if (a.i != a.n)
        a.unsure = true; /* an unbalanced ')' */
    if (a.unsure || o.oom || !a.changed) {
        free(o.s);
        return o.oom ? -ENOMEM : 0;
    }
    if (!live) {
        free(o.s);
        return 2;
    }
    sb_add(&o, "", 0);
    if (o.oom) {
        free(o.s);
        return -ENOMEM;
    }
    *out = o.s;
    return 1;
}

int mx_rules_finish(struct mx_ruleset *rs)
{
    for (size_t i = 0; i < rs->nreplace; i++) {
        long ri = mx_rules_find(rs, rs->replace_rules[i]);
        if (ri < 0 || !rs->rules[ri].re || rs->rules[ri].type == MX_RULE_SKIPPED)
            continue;
        int rc = expand_tags(rs, &rs->rules[ri]);
        if (rc)
            return rc;
    }
    /* (rawbody rules with anchors run on SA's raw-body chunks as written:
     * struct erule.chunked in engine.c) */
    for (size_t i = 0; i < rs->nrules; i++)
        if (rs->rules[i].type == MX_RULE_BODY && rs->rules[i].re)
            mx_rules_paragraph_anchors(rs->rules[i].re);
    size_t n = rs->nrules; /* metas may add placeholder rules */
    for (size_t i = 0; i < n; i++) {
        if (rs->rules[i].type == MX_RULE_META && !rs->rules[i].meta) {
            int rc = compile_meta(rs, i);
            if (rc)
                return rc;
        }
    }
    for (size_t i = 0; i < rs->nrules; i++) {
        struct mx_rule *r = &rs->rules[i];
        if (r->has_score)
            continue;
        if (mx_rule_is_sub(r))
            r->score = 0;
        else if (strncmp(r->name, "T_", 2) == 0)
            r->score = 0.01;
        else
            r->score = 1.0;
    }
    return 0;
}
