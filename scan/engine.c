/*
 * engine.c - the scan engine: compiles a rule set into Hyperscan databases
 * (one per header target, one each for body text, raw body, URIs and the
 * full message, plus one for DLP dictionary terms), caches them on disk by
 * content hash, and scans messages fed in chunks (see scan.h).
 *
 * Regex handling: a rule Hyperscan accepts as is runs exactly in Hyperscan
 * (HS_FLAG_SINGLEMATCH unless the rule counts hits). One Hyperscan rejects
 * (backreferences, lookaround, ...) is compiled with HS_FLAG_PREFILTER: a
 * prefilter match only makes the rule a candidate, confirmed with PCRE2 on
 * the kept text at end of message. A regex even prefilter mode rejects runs
 * in PCRE2 alone. Eval and network rules do not run and are listed by
 * mx_scan_engine_skipped().
 */
#include "scan/scan.h"

#include "scan/archive_internal.h"
#include "scan/charset_internal.h"
#include "scan/mime_internal.h"
#include "scan/received_internal.h"
#include "scan/rules_internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <hs/hs.h>
#include <magic.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <utime.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

enum scope { SC_NONE, SC_HEADER, SC_BODY, SC_RAWBODY, SC_URI, SC_FULL, SC_DLP, SC_N };
enum how { HOW_NONE, HOW_HS, HOW_PREFILTER, HOW_PCRE };

struct group {
    enum scope scope;
    char *target;          /* header target ("subject", "from:addr", "all" ...) */
    const char *kind;      /* organisation class; NULL: "main" */
    bool nosubject;        /* body rules with tflags nosubject: text without the Subject */
    bool empty_matches;    /* some pattern matches empty input (see empty_input_matches()) */
    hs_database_t *db;     /* NULL when no pattern runs in Hyperscan */
    hs_database_t *adb;    /* body: the ASCII variant of db (see ASCII MODE) */
    bool ascii_empty;      /* body: no pattern of db can match ASCII text */
    uint32_t *rules;       /* rule indexes whose regex is in db */
    size_t nrules;
    uint32_t *pcre;        /* rules that need PCRE2 (prefilter or alone) */
    size_t npcre;
    uint32_t *exists;      /* header exists: rules of this target */
    size_t nexists;
    /* at the end of the build (group_lists()), so that the end of a message
     * walks only these: the rules of `rules` in prefilter mode or chunked
     * (the only ones a match makes candidates), the `!~` rules of `rules`
     * and `pcre`, and whether some rule has an `[if-unset: ...]` value */
    uint32_t *pre, *neg;
    size_t npre, nneg;
    bool has_unset;
};

/* how a PCRE2-only body rule runs on ASCII text (see pcre_ascii()) */
enum ascii_run { ASCII_NO, ASCII_EXACT, ASCII_PREFILTER, ASCII_NEVER };

/* value kinds for the end-of-message evaluation */
enum vkind { VK_ZERO, VK_COUNT, VK_META };

struct erule {
    uint8_t scope;
    uint8_t how;
    uint8_t relaxed;        /* prefilter pattern: the regex with repeats relaxed (1),
                               and its ^ $ anchors dropped (2) */
    bool twin;              /* a second prefilter pattern (see TWIN_MAX) must match too */
    uint8_t ascii;          /* PCRE2-only body rule: how it runs in its group's ASCII
                               variant (enum ascii_run, see pcre_ascii()) */
    uint32_t loc;           /* 1 + index of its locator in e->loc (see struct locator) */
    bool runs;              /* counts in the verdict (score != 0 or sub rule) */
    uint8_t vkind;          /* enum vkind */
    bool multiple;          /* tflags multiple: the value is the count */
    bool chunked;           /* rawbody regex with ^ $ \A \Z \z outside /m: PCRE2
                               runs on SpamAssassin's raw-body chunks (raw_chunks()) */
    bool cand;              /* a Hyperscan match only makes it a candidate for PCRE2:
                               prefilter, chunked, or run as a prefilter in an ASCII
                               variant (set by group_lists()) */
    uint32_t maxhits;
    int group;
    pcre2_code *pc;
    /* meta program (points into the rule set) */
    const struct mx_meta_tok *meta;
    uint32_t nmeta;
    const uint32_t *skip; /* per token: the && / || whose right operand starts here */
};

struct skipped {
    const char *name, *why;
};

/*
 * A locator tells where a match of a rule can start, so that its PCRE2
 * confirmation tries only those places instead of every byte of the text.
 * `__FILL_THIS_FORM_SHORT2` and `_LONG2` (~48 ms of PCRE2 per corpus pass
 * each, 2 and 0 hits) cost ~200 ns per byte at every start position: their
 * units begin with a long optional prefix and an alternation of ~100 words.
 * Hyperscan cannot say where a match starts (SOM compiles fail with
 * "pattern too large"), but it reports every end: so the locator is the
 * rule's twin (repeats relaxed, TWIN_MAX) written backwards
 * (mx_rules_reverse()), run in block mode over the text reversed; each end
 * it reports there is a place where a match can start here. Every real
 * match starts at one of them (the reversed twin matches a superset of the
 * reversed matches). PCRE2 then tries an anchored match at each of them
 * (with the regex compiled anchored: JIT does not run PCRE2_ANCHORED given
 * at match time).
 * Only for rules with a twin that count no more than one hit.
 */
struct locator {
    uint32_t rule;
    char *expr; /* reversed twin */
    unsigned flags;
    hs_database_t *db;
    pcre2_code *anchored; /* the rule's regex, PCRE2_ANCHORED */
};

struct mx_scan_engine {
    struct mx_ruleset rs;
    struct erule *er;
    struct group *g;
    size_t ng;
    int dlp_g;         /* DLP dictionary database (block mode) */
    bool legacy_layout; /* layout 1 (for the parity test): 48 per scope, no classes */
    bool has_full;     /* some `full` rule: keep the raw message for PCRE2 */
    uint32_t *metas, *dlps, *attachs, *mimehdrs, *mimeevals, *natives;
    size_t nmetas, ndlps, nattachs, nmimehdrs, nmimeevals, nnatives;
    bool text_types; /* an attachment rule tells text types apart: libmagic on text too */
    uint16_t *mh_namelen; /* per mimeheader rule: length of the header name */
    bool *mh_raw;         /* per mimeheader rule: ":raw" (no decoding) */
    uint32_t *report; /* rules a verdict can report (not sub, not skipped, running) */
    size_t nreport;
    /* meta rules in dependency order, their programs copied contiguously */
    uint32_t *morder;
    size_t nmorder;
    struct mx_meta_tok *mtok;
    uint32_t *mskip; /* short-circuit table of every meta program (see meta_skips()) */
    bool meta_recursive; /* a cycle or a chain deeper than 64: evaluate recursively */
    /* sparse evaluation (see eval_metas()): by order position, a meta's
     * value when every counted rule is 0; by rule (offsets mdep_off, nrules
     * + 1 of them), the order positions of the metas that read it; the
     * counted rules some meta reads */
    double *mzero;
    uint32_t *mdep_off, *mdep;
    uint32_t *mseed;
    size_t nmseed;
    /* dlp dictionary terms: HS id = term number */
    uint32_t *term_rule;
    double *term_weight;
    size_t nterms;
    struct skipped *skips;
    size_t nskips;
    struct locator *loc;
    size_t nloc;
    bool has_ascii; /* some body group has an ASCII variant (ASCII MODE) */
    struct mx_scan_stats st;
    struct mx_scan_opts o;
};

/* ---- engine building ---------------------------------------------------- */

static char *dupz(const char *s)
{
    return s ? strdup(s) : NULL;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static unsigned hs_flags_for(const struct mx_rule *r, enum scope sc)
{
    unsigned f = HS_FLAG_ALLOWEMPTY;
    if (r->reflags & MX_RE_I)
        f |= HS_FLAG_CASELESS;
    if ((r->reflags & MX_RE_M) || sc == SC_BODY || sc == SC_RAWBODY)
        f |= HS_FLAG_MULTILINE;
    if (r->reflags & MX_RE_S)
        f |= HS_FLAG_DOTALL;
    if (!(r->tflags & MX_TF_MULTIPLE))
        f |= HS_FLAG_SINGLEMATCH;
    return f;
}

static uint32_t pcre_flags_for(const struct mx_rule *r, enum scope sc)
{
    uint32_t f = 0;
    if (r->reflags & MX_RE_I)
        f |= PCRE2_CASELESS;
    /* rawbody: not multi-line (SA matches each chunk of raw_chunks() alone);
     * Hyperscan's multi-line flag stays, a superset, and such rules are
     * confirmed on the chunks (struct erule.chunked) */
    if ((r->reflags & MX_RE_M) || sc == SC_BODY)
        f |= PCRE2_MULTILINE;
    if (r->reflags & MX_RE_S)
        f |= PCRE2_DOTALL;
    if (r->reflags & MX_RE_X)
        f |= PCRE2_EXTENDED;
    return f;
}

/* PCRE2 compile (and JIT) of a rule's regex. A regex whose bounded repeats
 * of a big group overflow PCRE2's compiled-size limit is compiled again
 * with those groups written once and called as subroutines, which matches
 * the same strings (mx_rules_share_repeats()); *shared counts the rewrites. */
static pcre2_code *compile_rule_pcre(const struct mx_rule *r, uint32_t flags, unsigned *shared)
{
    int perr;
    PCRE2_SIZE eoff;
    pcre2_code *pc =
        pcre2_compile((PCRE2_SPTR)r->re, PCRE2_ZERO_TERMINATED, flags, &perr, &eoff, NULL);
    char *re = NULL;
    for (unsigned k = 0; !pc && perr == PCRE2_ERROR_PATTERN_TOO_LARGE && k < 8; k++) {
        char *next = mx_rules_share_repeats(re ? re : r->re, (r->reflags & MX_RE_X) != 0, k);
        free(re);
        re = next;
        if (!re)
            break;
        pc = pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED, flags, &perr, &eoff, NULL);
        if (pc)
            ++*shared;
    }
    free(re);
    if (pc)
        pcre2_jit_compile(pc, PCRE2_JIT_COMPLETE);
    return pc;
}

/* pattern text handed to Hyperscan: /x has no flag there, only (?x) */
static char *hs_pattern(const struct mx_rule *r)
{
    if (!(r->reflags & MX_RE_X))
        return strdup(r->re);
    size_t n = strlen(r->re);
    char *p = malloc(n + 5);
    if (p) {
        memcpy(p, "(?x)", 4);
        memcpy(p + 4, r->re, n + 1);
    }
    return p;
}

/*
 * Does an attachment rule tell text types apart? A type condition (true type,
 * or the declared type, which is the true type for archive members) that is
 * negated, names a text/ type other than text/plain, or is a wildcard that
 * could match one. If no rule does, a text head is typed text/plain without
 * libmagic, whose text tests cost ~0.3-2 ms per attachment (docs/SCAN.md).
 */
static bool rule_reads_text_types(const struct mx_rule *r)
{
    for (size_t c = 0; c < r->nconds; c++) {
        const struct mx_attach_cond *ac = &r->conds[c];
        if (ac->field != 'T' && ac->field != 't')
            continue;
        if (ac->negate)
            return true;
        for (const char *v = ac->values; *v; v += strlen(v) + 1) {
            size_t lit = strcspn(v, "*?[");
            bool wild = v[lit] != '\0';
            if (!wild && strncasecmp(v, "text/", 5) == 0 && strcasecmp(v, "text/plain") != 0)
                return true;
            /* the literal start of a wildcard is compatible with "text/..." */
            if (wild && strncasecmp(v, "text/", lit < 5 ? lit : 5) == 0)
                return true;
        }
    }
    return false;
}

static int add_u32(uint32_t **a, size_t *n, uint32_t v)
{
    if ((*n & (*n - 1)) == 0 || *n == 0) {
        size_t nc = *n ? *n * 2 : 8;
        uint32_t *na = realloc(*a, nc * sizeof *na);
        if (!na)
            return -ENOMEM;
        *a = na;
    }
    (*a)[(*n)++] = v;
    return 0;
}

/*
 * Database organisation (LAYOUT_VERSION goes into the cache key, so a cache
 * written for another organisation is never loaded).
 *
 * Measured with tests/scan/scan_prof on the shared corpus (docs/SCAN.md):
 * every stream database costs a pass over the text however few of its
 * patterns are benign, and the cost of a database is close to the sum of
 * its slowest members. So stream scopes (body, raw body, full) sort their
 * patterns into classes, each in databases of its own size:
 *   "main"      exact patterns counted once: most are literal-led and cheap
 *               together, so few large databases (fewer passes);
 *   "prefilter" prefilter approximations (lookaround, backreferences, big
 *               bounded repeats): literal-poor automata, slow, quarantined;
 *   "count"     exact `multiple` rules: a callback per match (one matched
 *               35,000 times per corpus pass), kept apart so the others'
 *               databases stay callback-free.
 * Header targets and URIs are scanned in block mode over short strings:
 * one class, databases of GROUP_MAX.
 * Compile time grows much faster than linearly with the pattern count (and a
 * "pattern too large" retry recompiles the group), which bounds the sizes.
 */
#define LAYOUT_VERSION 3
/*
 * Match limit of every PCRE2 search (PCRE2's own default: 10,000,000). A
 * catastrophic regex on hostile text runs until the limit: ~13 ms per search
 * at the default with JIT on this machine, for each of the ~300 regexes PCRE2
 * may run on a message; 1.3 ms at this one. No search over the shared corpus
 * comes near it (regex_errors 0 at 100,000 too: docs/SCAN.md).
 */
#define RX_MATCH_LIMIT 1000000
/* bound of mx_rules_relax_repeats() for regexes prefilter mode rejects as
 * they are (classify()) */
#define RELAX_MAX 10
/*
 * A prefilter rule with a bounded repeat above 40 (prefilter mode's answer
 * to "pattern too large" is a near-trivial automaton: the five
 * __FILL_THIS_FORM_* rules passed 448 of 505 corpus messages) gets a twin:
 * the regex with every repeat above TWIN_MAX made unbounded, {3} -> {1,}, in
 * prefilter mode. Both are necessary conditions; the rule is a candidate
 * only when both matched (__FILL_THIS_FORM_SHORT2: 239 messages instead of
 * 448, scan_prof -x -R 1). Hyperscan id of the twin: rule count + rule.
 */
#define TWIN_MAX 1

/* a rule's twin pattern: its Hyperscan text with repeats relaxed (TWIN_MAX) */
static char *twin_pattern(const struct mx_rule *r)
{
    char *hp = hs_pattern(r);
    char *tw = hp ? mx_rules_relax_repeats(hp, TWIN_MAX, false) : NULL;
    free(hp);
    return tw;
}
#define GROUP_MAX 48
#define GROUP_MAX_MAIN 160

static int group_for(struct mx_scan_engine *e, enum scope sc, const char *target,
                     const char *kind, bool nosubject)
{
    bool stream = sc == SC_BODY || sc == SC_RAWBODY || sc == SC_FULL;
    if (!stream || e->legacy_layout)
        kind = NULL;
    size_t max = kind && strcmp(kind, "main") == 0 ? GROUP_MAX_MAIN : GROUP_MAX;
    for (size_t i = 0; i < e->ng; i++)
        if (e->g[i].scope == sc && (sc == SC_DLP || e->g[i].nrules + e->g[i].npcre < max) &&
            (sc != SC_HEADER || strcmp(e->g[i].target, target) == 0) &&
            (e->g[i].kind == kind || (kind && e->g[i].kind && strcmp(e->g[i].kind, kind) == 0)) &&
            e->g[i].nosubject == nosubject)
            return (int)i;
    struct group *ng = realloc(e->g, (e->ng + 1) * sizeof *ng);
    if (!ng)
        return -ENOMEM;
    e->g = ng;
    memset(&e->g[e->ng], 0, sizeof *ng);
    e->g[e->ng].scope = sc;
    e->g[e->ng].target = dupz(target ? target : "");
    e->g[e->ng].kind = kind;
    e->g[e->ng].nosubject = nosubject;
    return (int)e->ng++;
}

static enum scope scope_of(enum mx_rule_type t)
{
    switch (t) {
    case MX_RULE_HEADER:
        return SC_HEADER;
    case MX_RULE_BODY:
        return SC_BODY;
    case MX_RULE_RAWBODY:
        return SC_RAWBODY;
    case MX_RULE_URI:
        return SC_URI;
    case MX_RULE_FULL:
        return SC_FULL;
    default:
        return SC_NONE;
    }
}

static int add_skip(struct mx_scan_engine *e, const char *name, const char *why)
{
    struct skipped *ns = realloc(e->skips, (e->nskips + 1) * sizeof *ns);
    if (!ns)
        return -ENOMEM;
    e->skips = ns;
    ns[e->nskips].name = name;
    ns[e->nskips].why = why;
    e->nskips++;
    return 0;
}

/* Does the regex hold an anchor (^ $ \A \Z \z) outside a character class?
 * (A rawbody rule without /m then depends on where SA's chunks start.) */
static bool has_anchor(const char *re)
{
    bool cls = false;
    for (const char *p = re; *p; p++) {
        if (*p == '\\') {
            if (!cls && p[1] && strchr("AZz", p[1]))
                return true;
            if (p[1] == 'c' && p[2]) /* \cX: X is any character, ']' too */
                p++;
            if (p[1])
                p++;
        } else if (cls) {
            cls = *p != ']';
        } else if (*p == '[') {
            cls = true;
            if (p[1] == '^')
                p++;
            if (p[1] == ']')
                p++;
        } else if (*p == '^' || *p == '$') {
            return true;
        }
    }
    return false;
}

/* Does the regex hold a bounded repeat of more than 40 (x{0,300})? Those
 * blow up Hyperscan's compile time (tens of seconds for a handful) and its
 * automata; prefilter mode relaxes the bound and PCRE2 confirms. */
static unsigned long big_repeat(const char *re)
{
    unsigned long worst = 0;
    for (const char *p = re; *p; p++) {
        if (*p == '\\' && p[1]) {
            p++;
            continue;
        }
        if (*p != '{' || !isdigit((unsigned char)p[1]))
            continue;
        char *end;
        unsigned long lo = strtoul(p + 1, &end, 10), hi = lo;
        if (*end == ',')
            hi = isdigit((unsigned char)end[1]) ? strtoul(end + 1, &end, 10) : 0, end += hi ? 0 : 1;
        /* (the largest bound: this took lo whenever lo beat the worst so
         * far, so x{1,100} counted 1) */
        unsigned long big = lo > hi ? lo : hi;
        if (*end == '}' && big > 40 && big > worst)
            worst = big;
    }
    return worst;
}


static int order_metas(struct mx_scan_engine *e);
static int meta_deps(struct mx_scan_engine *e);

/* Give rule ri a locator (struct locator) if its reversed twin is a regex
 * Hyperscan runs exactly. Returns 0 (with or without) or -ENOMEM. */
static int add_locator(struct mx_scan_engine *e, uint32_t ri, enum scope sc)
{
    struct mx_rule *r = &e->rs.rules[ri];
    struct erule *er = &e->er[ri];
    char *tw = twin_pattern(r);
    if (!tw)
        return -ENOMEM;
    char *rev = mx_rules_reverse(tw, (r->reflags & MX_RE_X) != 0);
    free(tw);
    if (!rev)
        return 0;
    unsigned fl = hs_flags_for(r, sc) & ~(unsigned)HS_FLAG_SINGLEMATCH;
    hs_expr_info_t *info = NULL;
    hs_compile_error_t *cerr = NULL;
    bool ok = hs_expression_info(rev, fl, &info, &cerr) == HS_SUCCESS;
    if (getenv("MX_SCAN_PROFILE"))
        fprintf(stderr, "locator %s: %s\n", r->name, ok ? "yes" : cerr ? cerr->message : "?");
    hs_free_compile_error(cerr);
    free(info);
    unsigned shared = 0;
    pcre2_code *anch =
        ok && er->pc ? compile_rule_pcre(r, pcre_flags_for(r, sc) | PCRE2_ANCHORED, &shared) : NULL;
    if (!anch) {
        free(rev);
        return 0;
    }
    struct locator *nl = realloc(e->loc, (e->nloc + 1) * sizeof *nl);
    if (!nl) {
        pcre2_code_free(anch);
        free(rev);
        return -ENOMEM;
    }
    e->loc = nl;
    e->loc[e->nloc] = (struct locator){.rule = ri, .expr = rev, .flags = fl, .anchored = anch};
    er->loc = (uint32_t)++e->nloc;
    return 0;
}

/* Decide how each regex rule runs. */
static int classify(struct mx_scan_engine *e)
{
    struct mx_ruleset *rs = &e->rs;
    for (size_t i = 0; i < rs->nrules; i++) {
        struct mx_rule *r = &rs->rules[i];
        struct erule *er = &e->er[i];
        er->group = -1;
        bool sub = mx_rule_is_sub(r);
        er->runs = sub || r->score != 0;
        if (r->type == MX_RULE_SKIPPED) {
            if (add_skip(e, r->name, r->skip))
                return -ENOMEM;
            e->st.skipped++;
            continue;
        }
        if (r->type == MX_RULE_NONE)
            continue;
        e->st.rules++;
        if (r->type == MX_RULE_META) {
            e->st.meta++;
            if (!er->runs)
                e->st.zero_score++;
            else if (add_u32(&e->metas, &e->nmetas, (uint32_t)i))
                return -ENOMEM;
            continue;
        }
        if (r->type == MX_RULE_DLP) {
            e->st.dlp++;
            if (add_u32(&e->dlps, &e->ndlps, (uint32_t)i))
                return -ENOMEM;
            continue;
        }
        if (r->type == MX_RULE_ATTACH) {
            e->st.attachment++;
            if (add_u32(&e->attachs, &e->nattachs, (uint32_t)i))
                return -ENOMEM;
            e->text_types |= rule_reads_text_types(r);
            continue;
        }
        if (r->type == MX_RULE_MIMEEVAL) {
            if (er->runs && add_u32(&e->mimeevals, &e->nmimeevals, (uint32_t)i))
                return -ENOMEM;
            continue;
        }
        if (r->type == MX_RULE_NATIVE) {
            e->st.native++;
            if (er->runs && add_u32(&e->natives, &e->nnatives, (uint32_t)i))
                return -ENOMEM;
            continue;
        }
        if (r->type == MX_RULE_MIMEHEADER) {
            /* few rules (about 60 in SA), run with PCRE2 on each part's header */
            e->st.regex++;
            er->pc = compile_rule_pcre(r, pcre_flags_for(r, SC_HEADER), &e->st.pcre_shared);
            if (!er->runs) {
                e->st.zero_score++;
            } else if (!er->pc) {
                r->skip = "regex PCRE2 rejects";
                if (add_skip(e, r->name, r->skip))
                    return -ENOMEM;
                e->st.skipped++;
            } else {
                er->how = HOW_PCRE;
                e->st.pcre_only++;
                if (add_u32(&e->mimehdrs, &e->nmimehdrs, (uint32_t)i))
                    return -ENOMEM;
            }
            continue;
        }
        enum scope sc = scope_of(r->type);
        er->scope = (uint8_t)sc;
        e->st.regex++;
        if (!er->runs) {
            e->st.zero_score++;
            continue;
        }
        int g;
        if (r->exists) {
            if ((g = group_for(e, sc, r->target, "main", false)) < 0)
                return g;
            er->group = g;
            er->how = HOW_NONE;
            if (add_u32(&e->g[g].exists, &e->g[g].nexists, (uint32_t)i))
                return -ENOMEM;
            e->st.hs_exact++;
            continue;
        }
        /* PCRE2 first: a regex Perl would reject is skipped */
        er->pc = compile_rule_pcre(r, pcre_flags_for(r, sc), &e->st.pcre_shared);
        er->chunked = sc == SC_RAWBODY && !(r->reflags & MX_RE_M) && has_anchor(r->re);
        char *pat = hs_pattern(r);
        if (!pat)
            return -ENOMEM;
        hs_expr_info_t *info = NULL;
        hs_compile_error_t *cerr = NULL;
        unsigned fl = hs_flags_for(r, sc);
        unsigned long rep = big_repeat(r->re);
        if (rep > 1000) {
            er->how = HOW_PCRE; /* even prefilter compiles take tens of seconds */
        } else if (!rep && hs_expression_info(pat, fl, &info, &cerr) == HS_SUCCESS) {
            er->how = HOW_HS;
            /* A `multiple` rule counts Perl's matches: `while (/re/g)`,
             * each search resuming where the last match ended. Hyperscan
             * reports every match end instead: /aa/ on "aaaa" 3 times, not
             * 2; `__HAS_HREF` (/^[^>].*?<a href=/m) once per link, where
             * Perl counts one per line; `__4BYTE_UTF8_WORD` ({3,10}) once
             * per extra character. Only where every match is one byte long
             * are the two the same; every other `multiple` rule is a
             * candidate that PCRE2 counts (pcre_count()). */
            if ((r->tflags & MX_TF_MULTIPLE) && er->pc &&
                !(info->min_width == 1 && info->max_width == 1))
                er->how = HOW_PREFILTER;
        } else {
            hs_free_compile_error(cerr);
            cerr = NULL;
            if (hs_expression_info(pat, fl | HS_FLAG_PREFILTER, &info, &cerr) == HS_SUCCESS) {
                er->how = HOW_PREFILTER;
            } else {
                hs_free_compile_error(cerr);
                cerr = NULL;
                er->how = HOW_PCRE;
            }
        }
        free(info);
        info = NULL;
        if (er->how == HOW_PCRE && er->pc) {
            /* PCRE2 alone runs at every message. With its bounded repeats
             * made unbounded (a necessary condition: anything the regex
             * matches, the relaxed one matches), prefilter mode may accept
             * it, and PCRE2 then runs only on candidates. */
            char *rx = mx_rules_relax_repeats(pat, RELAX_MAX, false);
            if (!rx) {
                free(pat);
                return -ENOMEM;
            }
            for (int a = 0; a < 2 && !er->relaxed; a++) {
                if (a)
                    mx_rules_drop_anchors(rx);
                hs_free_compile_error(cerr);
                cerr = NULL;
                if (hs_expression_info(rx, fl | HS_FLAG_PREFILTER, &info, &cerr) == HS_SUCCESS) {
                    er->how = HOW_PREFILTER;
                    er->relaxed = a + 1;
                }
            }
            if (getenv("MX_SCAN_PROFILE"))
                fprintf(stderr, "pcre-only %s: relaxed prefilter %s\n", r->name,
                        er->relaxed ? "accepted" : cerr ? cerr->message : "?");
            hs_free_compile_error(cerr);
            cerr = NULL;
            free(info);
            free(rx);
        }
        free(pat);
        if (!er->pc && er->how != HOW_HS) {
            /* neither engine can run it */
            er->how = HOW_NONE;
            r->skip = "regex neither Hyperscan nor PCRE2 accepts";
            if (add_skip(e, r->name, r->skip))
                return -ENOMEM;
            e->st.skipped++;
            continue;
        }
        if (er->how == HOW_PREFILTER && !er->relaxed && rep > 40 &&
            (sc == SC_BODY || sc == SC_RAWBODY || sc == SC_FULL)) {
            char *tw = twin_pattern(r);
            if (!tw)
                return -ENOMEM;
            if (hs_expression_info(tw, fl | HS_FLAG_PREFILTER, &info, &cerr) == HS_SUCCESS)
                er->twin = true;
            if (getenv("MX_SCAN_PROFILE"))
                fprintf(stderr, "twin %s: %s\n", r->name,
                        er->twin ? "yes" : cerr ? cerr->message : "?");
            hs_free_compile_error(cerr);
            cerr = NULL;
            free(info);
            info = NULL;
            free(tw);
            if (er->twin && !(r->tflags & MX_TF_MULTIPLE) && !e->legacy_layout) {
                int lrc = add_locator(e, (uint32_t)i, sc);
                if (lrc)
                    return lrc;
            }
        }
        const char *kind = er->how == HOW_PREFILTER                          ? "prefilter"
                           : er->how == HOW_HS && (r->tflags & MX_TF_MULTIPLE) ? "count"
                                                                               : "main";
        if ((g = group_for(e, sc, r->target, kind,
                           sc == SC_BODY && (r->tflags & MX_TF_NOSUBJECT))) < 0)
            return g;
        er->group = g;
        if (er->how == HOW_HS || er->how == HOW_PREFILTER) {
            if (add_u32(&e->g[g].rules, &e->g[g].nrules, (uint32_t)i))
                return -ENOMEM;
        } else {
            if (add_u32(&e->g[g].pcre, &e->g[g].npcre, (uint32_t)i))
                return -ENOMEM;
        }
    }
    e->mh_namelen = calloc(e->nmimehdrs + 1, sizeof *e->mh_namelen);
    e->mh_raw = calloc(e->nmimehdrs + 1, sizeof *e->mh_raw);
    if (!e->mh_namelen || !e->mh_raw)
        return -ENOMEM;
    for (size_t k = 0; k < e->nmimehdrs; k++) {
        const char *t = rs->rules[e->mimehdrs[k]].target;
        const char *colon = strchr(t, ':');
        size_t tl = colon ? (size_t)(colon - t) : strlen(t);
        e->mh_namelen[k] = (uint16_t)(tl < UINT16_MAX ? tl : UINT16_MAX);
        e->mh_raw[k] = colon && strcmp(colon, ":raw") == 0;
    }
    /* compact evaluation data (see rule_value()) */
    for (size_t i = 0; i < rs->nrules; i++) {
        struct mx_rule *r = &rs->rules[i];
        struct erule *er = &e->er[i];
        er->multiple = (r->tflags & MX_TF_MULTIPLE) != 0;
        er->maxhits = r->maxhits;
        if (!er->runs || r->type == MX_RULE_NONE || r->type == MX_RULE_SKIPPED)
            er->vkind = VK_ZERO;
        else if (r->type == MX_RULE_META)
            er->vkind = r->meta ? VK_META : VK_ZERO;
        else
            er->vkind = VK_COUNT;
        er->meta = r->meta;
        er->nmeta = (uint32_t)r->nmeta;
        if (r->type != MX_RULE_NONE && r->type != MX_RULE_SKIPPED && !mx_rule_is_sub(r) &&
            er->runs && add_u32(&e->report, &e->nreport, (uint32_t)i))
            return -ENOMEM;
    }
    return order_metas(e);
}

/* Depth-first post-order of the meta graph; returns the height of ri's
 * chain, or -1 for a cycle or a chain deeper than 64 (rule_value()'s
 * limit), where evaluation stays recursive to keep its semantics. */
static int meta_visit(struct mx_scan_engine *e, uint32_t ri, uint8_t *mark)
{
    if (mark[ri] == 2)
        return 1;
    if (mark[ri] == 1)
        return -1;
    mark[ri] = 1;
    int h = 0;
    const struct erule *er = &e->er[ri];
    for (size_t k = 0; k < er->nmeta; k++) {
        const struct mx_meta_tok *t = &er->meta[k];
        if (t->op != MX_MOP_RULE || e->er[t->rule].vkind != VK_META)
            continue;
        int c = meta_visit(e, t->rule, mark);
        if (c < 0)
            return -1;
        if (c > h)
            h = c;
    }
    if (h + 1 > 64)
        return -1;
    mark[ri] = 2;
    if (add_u32(&e->morder, &e->nmorder, ri))
        return -2;
    return h + 1;
}

/*
 * Short-circuit table of a meta's RPN program: skip[k] is the index of the
 * `&&` / `||` whose right operand's first token is k (at most one: a right
 * operand begins after its left operand). The evaluator, reaching k with the
 * left value on the stack, jumps past that operator when the left value
 * decides it (0 for `&&`, non-zero for `||`); both give 0/1, so values stay
 * the same and the right operand's rules (PCRE2 confirmations, see
 * count_of()) are not read.
 */
#define NO_SKIP UINT32_MAX
static void meta_skips(const struct mx_meta_tok *t, size_t n, uint32_t *skip)
{
    uint32_t st[128];
    size_t sp = 0;
    for (size_t k = 0; k < n; k++)
        skip[k] = NO_SKIP;
    for (size_t k = 0; k < n; k++) {
        switch (t[k].op) {
        case MX_MOP_RULE:
        case MX_MOP_CONST:
            if (sp == 128)
                return;
            st[sp++] = (uint32_t)k;
            break;
        case MX_MOP_NOT:
        case MX_MOP_NEG:
            break;
        default:
            if (sp < 2)
                return;
            if (t[k].op == MX_MOP_AND || t[k].op == MX_MOP_OR)
                skip[st[sp - 1]] = (uint32_t)k;
            sp--;
            break;
        }
    }
}

static int order_metas(struct mx_scan_engine *e)
{
    size_t nt = 0;
    for (size_t i = 0; i < e->rs.nrules; i++)
        if (e->er[i].vkind == VK_META)
            nt += e->er[i].nmeta;
    e->mtok = malloc((nt + 1) * sizeof *e->mtok);
    uint8_t *mark = calloc(e->rs.nrules + 1, 1);
    if (!e->mtok || !mark) {
        free(mark);
        return -ENOMEM;
    }
    /* programs side by side in evaluation order below */
    for (size_t i = 0; i < e->rs.nrules && !e->meta_recursive; i++) {
        if (e->er[i].vkind != VK_META)
            continue;
        int h = meta_visit(e, (uint32_t)i, mark);
        if (h == -2) {
            free(mark);
            return -ENOMEM;
        }
        if (h < 0)
            e->meta_recursive = true;
    }
    free(mark);
    e->mskip = malloc((nt + 1) * sizeof *e->mskip);
    if (!e->mskip)
        return -ENOMEM;
    size_t o = 0;
    if (e->meta_recursive) {
        for (size_t i = 0; i < e->rs.nrules; i++) {
            struct erule *er = &e->er[i];
            if (er->vkind != VK_META)
                continue;
            meta_skips(er->meta, er->nmeta, e->mskip + o);
            er->skip = e->mskip + o;
            o += er->nmeta;
        }
        return 0;
    }
    for (size_t k = 0; k < e->nmorder; k++) {
        struct erule *er = &e->er[e->morder[k]];
        memcpy(e->mtok + o, er->meta, er->nmeta * sizeof *e->mtok);
        er->meta = e->mtok + o;
        meta_skips(er->meta, er->nmeta, e->mskip + o);
        er->skip = e->mskip + o;
        o += er->nmeta;
    }
    return meta_deps(e);
}

/* ---- compile with cache ------------------------------------------------- */

struct pats {
    char **expr;
    unsigned *flags, *ids;
    size_t n;
};

static void pats_free(struct pats *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->expr[i]);
    free(p->expr);
    free(p->flags);
    free(p->ids);
    memset(p, 0, sizeof *p);
}

/* Patterns of a group: its rules' (g->rules order), then the twins of
 * those that have one (see TWIN_MAX). */
static int group_pats(struct mx_scan_engine *e, struct group *g, struct pats *p)
{
    size_t n = g->scope == SC_DLP ? e->nterms : g->nrules;
    size_t ntw = 0;
    for (size_t k = 0; g->scope != SC_DLP && k < g->nrules; k++)
        ntw += e->er[g->rules[k]].twin;
    p->expr = calloc(n + ntw + 1, sizeof *p->expr);
    p->flags = calloc(n + ntw + 1, sizeof *p->flags);
    p->ids = calloc(n + ntw + 1, sizeof *p->ids);
    if (!p->expr || !p->flags || !p->ids)
        return -ENOMEM;
    for (size_t k = 0; k < n; k++) {
        if (g->scope == SC_DLP) {
            /* literal term, case-insensitive, whole words */
            const char *t = NULL;
            size_t ti = k, seen = 0;
            for (size_t d = 0; d < e->ndlps && !t; d++) {
                struct mx_rule *r = &e->rs.rules[e->dlps[d]];
                if (ti < seen + r->nterms)
                    t = r->terms[ti - seen].term;
                seen += r->nterms;
            }
            size_t tl = strlen(t);
            char *x = malloc(tl * 4 + 8);
            if (!x)
                return -ENOMEM;
            size_t o = 0;
            o += (size_t)sprintf(x + o, "\\b");
            for (size_t c = 0; c < tl; c++)
                o += (size_t)sprintf(x + o, "\\x%02x", (unsigned char)t[c]);
            sprintf(x + o, "\\b");
            p->expr[k] = x;
            p->flags[k] = HS_FLAG_CASELESS;
            p->ids[k] = (unsigned)k;
        } else {
            struct mx_rule *r = &e->rs.rules[g->rules[k]];
            p->expr[k] = hs_pattern(r);
            if (p->expr[k] && e->er[g->rules[k]].relaxed) {
                char *rx = mx_rules_relax_repeats(p->expr[k], RELAX_MAX, false);
                free(p->expr[k]);
                p->expr[k] = rx;
                if (rx && e->er[g->rules[k]].relaxed == 2)
                    mx_rules_drop_anchors(rx);
            }
            if (!p->expr[k])
                return -ENOMEM;
            p->flags[k] = hs_flags_for(r, g->scope);
            /* a prefilter match only makes the rule a candidate (PCRE2
             * counts), so the first match is all that is needed even for
             * `multiple` rules: one such rule matched at nearly every byte
             * of body text, half a million callbacks per corpus pass */
            if (e->er[g->rules[k]].how == HOW_PREFILTER)
                p->flags[k] |= HS_FLAG_PREFILTER | HS_FLAG_SINGLEMATCH;
            p->ids[k] = g->rules[k];
        }
        p->n = k + 1;
    }
    for (size_t k = 0; g->scope != SC_DLP && k < g->nrules; k++) {
        uint32_t ri = g->rules[k];
        if (!e->er[ri].twin)
            continue;
        p->expr[p->n] = twin_pattern(&e->rs.rules[ri]);
        if (!p->expr[p->n])
            return -ENOMEM;
        p->flags[p->n] = hs_flags_for(&e->rs.rules[ri], g->scope) | HS_FLAG_PREFILTER |
                         HS_FLAG_SINGLEMATCH;
        p->ids[p->n] = (unsigned)(e->rs.nrules + ri);
        p->n++;
    }
    return 0;
}

static unsigned group_mode(const struct group *g)
{
    return g->scope == SC_BODY || g->scope == SC_RAWBODY || g->scope == SC_FULL ? HS_MODE_STREAM
                                                                               : HS_MODE_BLOCK;
}

/* Compile one group; a pattern the full compile rejects moves to PCRE2. */
static int compile_group(struct mx_scan_engine *e, struct group *g)
{
    for (int attempt = 0; attempt < 64; attempt++) {
        struct pats p = {0};
        int rc = group_pats(e, g, &p);
        if (rc) {
            pats_free(&p);
            return rc;
        }
        if (p.n == 0) {
            pats_free(&p);
            return 0;
        }
        hs_compile_error_t *cerr = NULL;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        hs_error_t hr = hs_compile_multi((const char *const *)p.expr, p.flags, p.ids,
                                         (unsigned)p.n, group_mode(g), NULL, &g->db, &cerr);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (getenv("MX_SCAN_PROFILE"))
            fprintf(stderr, "compile scope=%d target=%s patterns=%zu %.2fs\n", g->scope,
                    g->target, p.n,
                    (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
        if (getenv("MX_SCAN_PROFILE") && (double)(t1.tv_sec - t0.tv_sec) > 5)
            for (size_t k = 0; k < p.n; k++)
                fprintf(stderr, "  slow group pattern %u: %.160s\n", p.ids[k], p.expr[k]);
        pats_free(&p);
        if (hr == HS_SUCCESS)
            return 0;
        int bad = cerr ? cerr->expression : -1;
        if (getenv("MX_SCAN_PROFILE"))
            fprintf(stderr, "compile error %d: %s\n", bad, cerr ? cerr->message : "?");
        hs_free_compile_error(cerr);
        if (bad < 0 || g->scope == SC_DLP)
            return -EIO;
        if ((size_t)bad >= g->nrules) {
            if (getenv("MX_SCAN_PROFILE"))
                fprintf(stderr, "twin %d dropped\n", bad);
            /* a twin: the rule runs on its own prefilter */
            for (size_t k = 0, t = g->nrules; k < g->nrules; k++)
                if (e->er[g->rules[k]].twin && t++ == (size_t)bad)
                    e->er[g->rules[k]].twin = false;
            continue;
        }
        uint32_t ri = g->rules[bad];
        struct erule *er = &e->er[ri];
        if (er->how == HOW_HS && er->pc) {
            /* "pattern too large" (big bounded repeats): prefilter mode
             * relaxes them, PCRE2 confirms */
            er->how = HOW_PREFILTER;
            continue;
        }
        memmove(g->rules + bad, g->rules + bad + 1, (g->nrules - (size_t)bad - 1) * sizeof *g->rules);
        g->nrules--;
        if (er->pc) {
            er->how = HOW_PCRE;
            if (add_u32(&g->pcre, &g->npcre, ri))
                return -ENOMEM;
        } else {
            er->how = HOW_NONE;
            e->st.skipped++;
            if (add_skip(e, e->rs.rules[ri].name, "regex Hyperscan cannot compile, PCRE2 rejects"))
                return -ENOMEM;
        }
    }
    return -EIO;
}

/*
 * A PCRE2-only body rule in ASCII MODE. `__YOUR_PASSWORD` is 37 KB after
 * ReplaceTags, past Hyperscan's pattern length limit even in prefilter mode,
 * so PCRE2 searched every message's body text with it (7-12 ms per corpus
 * pass, the costliest PCRE2 rule); restricted to ASCII input it is 2.9 KB
 * and Hyperscan runs it exactly. So such a rule also goes into its group's
 * ASCII variant: exactly (single match; a `multiple` rule as a prefilter,
 * so that PCRE2 keeps counting Perl's matches), as a prefilter, or not at
 * all when the restriction cannot match ASCII text. A message that stays
 * in ASCII MODE takes the variant's result; one that leaves it runs PCRE2
 * as before. Returns the enum ascii_run (and sets er->ascii), the pattern
 * in *x (malloc'd; NULL for ASCII_NO and ASCII_NEVER), or -ENOMEM.
 */
static int pcre_ascii(struct mx_scan_engine *e, uint32_t ri, char **x, unsigned *flags)
{
    struct erule *er = &e->er[ri];
    const struct mx_rule *r = &e->rs.rules[ri];
    *x = NULL;
    er->ascii = ASCII_NO;
    if (er->how != HOW_PCRE || er->scope != SC_BODY)
        return ASCII_NO;
    char *hp = hs_pattern(r);
    if (!hp)
        return -ENOMEM;
    int ar = mx_rules_ascii_only(hp, false, x);
    if (ar < 0) {
        free(hp);
        return ar;
    }
    if (ar == 2) {
        free(hp);
        return er->ascii = ASCII_NEVER;
    }
    if (ar == 0) { /* unchanged: Hyperscan refused it as it is */
        free(hp);
        return ASCII_NO;
    }
    free(hp);
    unsigned base = hs_flags_for(r, SC_BODY) | HS_FLAG_SINGLEMATCH;
    hs_expr_info_t *info = NULL;
    hs_compile_error_t *cerr = NULL;
    for (int pf = er->multiple ? 1 : 0; pf < 2; pf++) {
        unsigned fl = base | (pf ? HS_FLAG_PREFILTER : 0);
        if (hs_expression_info(*x, fl, &info, &cerr) == HS_SUCCESS) {
            free(info);
            *flags = fl;
            return er->ascii = pf ? ASCII_PREFILTER : ASCII_EXACT;
        }
        hs_free_compile_error(cerr);
        cerr = NULL;
    }
    free(*x);
    *x = NULL;
    return ASCII_NO;
}

/*
 * ASCII MODE. Most body text is plain ASCII (478 of the 505 corpus
 * messages), and the costliest body databases spend most of their size and
 * time on multi-byte alternatives that ASCII can never match: the
 * ReplaceTags look-alike letters of the FUZZY_* rules are mostly UTF-8
 * sequences. So a body group whose patterns change when restricted to ASCII
 * input (mx_rules_ascii_only()) gets a second database of those restricted
 * patterns; on ASCII text it matches exactly where the first one does. A
 * message's body text goes to the ASCII variants until a byte of 0x80 or
 * above comes (or the text outgrows the kept copy): then the variants'
 * streams are dropped, their rules' counts cleared, and the text written so
 * far, which the kept body still holds, is replayed into the full databases,
 * which take the rest. The look-alike database: 13.2 MB -> 3.0 MB, 25.7 ->
 * 5.2 ms over the corpus's ASCII bodies (same hits).
 */
static int group_pats_ascii(struct mx_scan_engine *e, struct group *g, struct pats *p,
                            bool *changed)
{
    *changed = false;
    int rc = group_pats(e, g, p);
    if (rc)
        return rc;
    size_t o = 0;
    for (size_t k = 0; k < p->n; k++) {
        char *x = NULL;
        int ar = mx_rules_ascii_only(p->expr[k], false, &x);
        if (ar < 0)
            return ar;
        if (ar == 2) {
            free(p->expr[k]);
            *changed = true;
            continue;
        }
        if (ar == 1) {
            free(p->expr[k]);
            p->expr[k] = x;
            *changed = true;
        }
        p->expr[o] = p->expr[k], p->flags[o] = p->flags[k], p->ids[o] = p->ids[k];
        o++;
    }
    p->n = o;
    /* the rules PCRE2 runs alone whose ASCII restriction Hyperscan takes */
    char **ne = realloc(p->expr, (p->n + g->npcre + 1) * sizeof *ne);
    if (ne)
        p->expr = ne;
    unsigned *nf = ne ? realloc(p->flags, (p->n + g->npcre + 1) * sizeof *nf) : NULL;
    if (nf)
        p->flags = nf;
    unsigned *ni = nf ? realloc(p->ids, (p->n + g->npcre + 1) * sizeof *ni) : NULL;
    if (!ni)
        return -ENOMEM;
    p->ids = ni;
    for (size_t k = 0; k < g->npcre; k++) {
        char *x = NULL;
        unsigned fl = 0;
        int kind = pcre_ascii(e, g->pcre[k], &x, &fl);
        if (kind < 0)
            return kind;
        if (kind == ASCII_NO)
            continue;
        *changed = true;
        if (!x)
            continue; /* ASCII_NEVER */
        p->expr[p->n] = x, p->flags[p->n] = fl, p->ids[p->n] = g->pcre[k];
        p->n++;
    }
    return 0;
}

/* the ASCII variant of a compiled body group; none when nothing changes or
 * the variant does not compile (the full database then runs on all text) */
static int compile_ascii(struct mx_scan_engine *e, struct group *g)
{
    if (g->scope != SC_BODY || !g->db || e->legacy_layout)
        return 0;
    struct pats p = {0};
    bool changed;
    int rc = group_pats_ascii(e, g, &p, &changed);
    if (rc == 0 && changed) {
        if (p.n == 0) {
            g->ascii_empty = true;
        } else {
            hs_compile_error_t *cerr = NULL;
            if (hs_compile_multi((const char *const *)p.expr, p.flags, p.ids, (unsigned)p.n,
                                 HS_MODE_STREAM, NULL, &g->adb, &cerr) != HS_SUCCESS)
                g->adb = NULL;
            hs_free_compile_error(cerr);
        }
    }
    pats_free(&p);
    return rc;
}

/* The per-group lists of struct group (pre, neg, has_unset) and each
 * rule's erule.cand, once every rule's `how` and `ascii` are final. */
static int group_lists(struct mx_scan_engine *e)
{
    for (size_t i = 0; i < e->ng; i++) {
        struct group *g = &e->g[i];
        for (size_t k = 0; k < g->nrules + g->npcre; k++) {
            uint32_t ri = k < g->nrules ? g->rules[k] : g->pcre[k - g->nrules];
            const struct mx_rule *r = &e->rs.rules[ri];
            struct erule *er = &e->er[ri];
            er->cand = er->how == HOW_PREFILTER || er->chunked ||
                       (er->how == HOW_PCRE && er->ascii == ASCII_PREFILTER);
            g->has_unset |= r->ifunset != NULL;
            if ((r->negate && add_u32(&g->neg, &g->nneg, ri)) ||
                (k < g->nrules && er->cand && add_u32(&g->pre, &g->npre, ri)))
                return -ENOMEM;
        }
    }
    return 0;
}

/* SHA-256 over everything that decides the databases' contents. */
static void cache_key(struct mx_scan_engine *e, char hex[65])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned char md[32];
    unsigned mdl = 0;
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    const char *v = hs_version();
    /* the organisation's version: a cache of another layout never loads */
    char lv[32];
    /* ascii-v6: the version of mx_rules_ascii_only()'s output and of what
     * the variants hold (v6: PCRE2-only rules, pcre_ascii()) */
    int lvn = snprintf(lv, sizeof lv, "mxscan-db-v1 layout %d ascii-v6",
                       e->legacy_layout ? 1 : LAYOUT_VERSION);
    EVP_DigestUpdate(c, lv, (size_t)lvn);
    EVP_DigestUpdate(c, v, strlen(v));
    for (size_t i = 0; i < e->ng; i++) {
        struct pats p = {0};
        group_pats(e, &e->g[i], &p);
        unsigned hdr[3] = {(unsigned)e->g[i].scope, group_mode(&e->g[i]), e->g[i].nosubject};
        EVP_DigestUpdate(c, hdr, sizeof hdr);
        EVP_DigestUpdate(c, e->g[i].target, strlen(e->g[i].target) + 1);
        const char *kind = e->g[i].kind ? e->g[i].kind : "";
        EVP_DigestUpdate(c, kind, strlen(kind) + 1);
        for (size_t k = 0; k < p.n; k++) {
            EVP_DigestUpdate(c, &p.flags[k], sizeof p.flags[k]);
            EVP_DigestUpdate(c, &p.ids[k], sizeof p.ids[k]);
            EVP_DigestUpdate(c, p.expr[k], strlen(p.expr[k]) + 1);
        }
        pats_free(&p);
    }
    for (size_t i = 0; i < e->nloc; i++) {
        EVP_DigestUpdate(c, &e->loc[i].rule, sizeof e->loc[i].rule);
        EVP_DigestUpdate(c, &e->loc[i].flags, sizeof e->loc[i].flags);
        EVP_DigestUpdate(c, e->loc[i].expr, strlen(e->loc[i].expr) + 1);
    }
    EVP_DigestFinal_ex(c, md, &mdl);
    EVP_MD_CTX_free(c);
    for (int i = 0; i < 32; i++)
        sprintf(hex + 2 * i, "%02x", md[i]);
}

/* u64 length and a serialized database (length 0: none) */
static bool read_db(FILE *f, hs_database_t **db)
{
    uint64_t len;
    if (fread(&len, 8, 1, f) != 1 || len > (1ull << 32))
        return false;
    if (!len)
        return true;
    char *buf = malloc(len);
    bool ok =
        buf && fread(buf, 1, len, f) == len && hs_deserialize_database(buf, len, db) == HS_SUCCESS;
    free(buf);
    return ok;
}

static bool write_db(FILE *f, const hs_database_t *db)
{
    char *buf = NULL;
    size_t len = 0;
    if (db && hs_serialize_database(db, &buf, &len) != HS_SUCCESS)
        return false;
    uint64_t l64 = len;
    bool ok = fwrite(&l64, 8, 1, f) == 1 && (len == 0 || fwrite(buf, 1, len, f) == len);
    free(buf);
    return ok;
}

/*
 * Cache file: "MXHSDB2\n", u32 group count, then per group u32 rule count,
 * the rule indexes that stayed in Hyperscan (compile may move some to
 * PCRE2; bit 31: moved to prefilter mode, bit 30: has a twin that
 * compiled) and the database (read_db()); then u32 locator count and per
 * locator its u32 rule index and database (none: its compile failed); then
 * per group a byte (1: no pattern matches ASCII) and its ASCII variant.
 */
static int cache_load(struct mx_scan_engine *e, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -ENOENT;
    char magic[8];
    uint32_t ng = 0;
    int rc = -EIO;
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "MXHSDB3\n", 8) != 0 ||
        fread(&ng, 4, 1, f) != 1 || ng != e->ng)
        goto out;
    for (size_t i = 0; i < e->ng; i++) {
        struct group *g = &e->g[i];
        uint32_t nr;
        if (fread(&nr, 4, 1, f) != 1 || (g->scope != SC_DLP && nr > g->nrules))
            goto out;
        if (g->scope != SC_DLP) {
            uint32_t *keep = malloc((nr + 1) * sizeof *keep);
            if (!keep || fread(keep, 4, nr, f) != nr) {
                free(keep);
                goto out;
            }
            /* rules missing from the cached list run in PCRE2; bit 31 marks
             * a rule compile moved to prefilter mode */
            for (size_t j = 0; j < nr; j++) {
                uint32_t ri = keep[j] & 0x3fffffffu;
                if (ri >= e->rs.nrules)
                    goto out;
                if (keep[j] & 0x80000000u)
                    e->er[ri].how = HOW_PREFILTER;
                e->er[ri].twin = (keep[j] & 0x40000000u) != 0;
                keep[j] = ri;
            }
            for (size_t k = 0; k < g->nrules; k++) {
                bool found = false;
                for (size_t j = 0; j < nr && !found; j++)
                    found = keep[j] == g->rules[k];
                if (!found) {
                    struct erule *er = &e->er[g->rules[k]];
                    if (er->how == HOW_HS)
                        e->st.hs_exact--;
                    er->how = er->pc ? HOW_PCRE : HOW_NONE;
                    if (er->pc)
                        add_u32(&g->pcre, &g->npcre, g->rules[k]);
                }
            }
            if (nr)
                memcpy(g->rules, keep, nr * sizeof *keep);
            g->nrules = nr;
            free(keep);
        }
        if (!read_db(f, &g->db))
            goto out;
    }
    uint32_t nl;
    if (fread(&nl, 4, 1, f) != 1 || nl != e->nloc)
        goto out;
    for (size_t i = 0; i < e->nloc; i++) {
        uint32_t ri;
        if (fread(&ri, 4, 1, f) != 1 || ri != e->loc[i].rule || !read_db(f, &e->loc[i].db))
            goto out;
    }
    for (size_t i = 0; i < e->ng; i++) {
        uint8_t empty;
        if (fread(&empty, 1, 1, f) != 1 || !read_db(f, &e->g[i].adb))
            goto out;
        e->g[i].ascii_empty = empty != 0;
    }
    rc = 0;
out:
    fclose(f);
    return rc;
}

/*
 * The cache keeps the CACHE_KEEP most recently written or loaded database
 * files (40-50 MB each for the stock rules): every rule update (sa-update,
 * an edited local.cf) makes a new one, and without pruning a daily update
 * fills the disk with ~18 GB a year. 8 files: the current rule set and a
 * few others sharing the directory (`--check` of a new configuration) do
 * not evict each other. A loaded file is touched (utime), so the files of
 * rule sets in use stay; a file another process is loading just then is
 * among the newest. Temporary files of a writer that died are
 * removed after CACHE_TMP_AGE seconds. Other files are left alone.
 */
#define CACHE_KEEP 8
#define CACHE_TMP_AGE 3600

struct cache_file {
    char name[80];
    time_t mtime;
};

static int by_mtime_desc(const void *a, const void *b)
{
    time_t x = ((const struct cache_file *)a)->mtime, y = ((const struct cache_file *)b)->mtime;
    return x < y ? 1 : x > y ? -1 : strcmp(((const struct cache_file *)a)->name,
                                           ((const struct cache_file *)b)->name);
}

/* a database file's name: 64 hex digits and ".hsdb"; a writer's temporary
 * file: that, ".", a pid and ".tmp" (cache_store()) */
static int cache_name_kind(const char *n)
{
    size_t i = 0;
    while (i < 64 && isxdigit((unsigned char)n[i]))
        i++;
    if (i != 64 || strncmp(n + 64, ".hsdb", 5) != 0)
        return 0;
    if (n[69] == 0)
        return 1;
    size_t l = strlen(n);
    return n[69] == '.' && l > 74 && strcmp(n + l - 4, ".tmp") == 0 ? 2 : 0;
}

static void cache_prune(const char *dir, const char *keep)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct cache_file *f = NULL;
    size_t n = 0, cap = 0;
    time_t now = time(NULL);
    struct dirent *de;
    char p[4200];
    while ((de = readdir(d)) != NULL) {
        int kind = cache_name_kind(de->d_name);
        size_t nl = strlen(de->d_name);
        struct stat st;
        if (!kind || nl >= sizeof f->name)
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (lstat(p, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (kind == 2) {
            if (now - st.st_mtime > CACHE_TMP_AGE)
                unlink(p);
            continue;
        }
        if (n == cap) {
            struct cache_file *nf = realloc(f, (cap = cap ? 2 * cap : 16) * sizeof *nf);
            if (!nf)
                break;
            f = nf;
        }
        memcpy(f[n].name, de->d_name, nl + 1);
        f[n++].mtime = st.st_mtime;
    }
    closedir(d);
    qsort(f, n, sizeof *f, by_mtime_desc);
    for (size_t i = CACHE_KEEP; i < n; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, f[i].name);
        if (strcmp(p, keep) != 0)
            unlink(p);
    }
    free(f);
}

static void cache_store(struct mx_scan_engine *e, const char *path)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return;
    uint32_t ng = (uint32_t)e->ng;
    bool ok = fwrite("MXHSDB3\n", 1, 8, f) == 8 && fwrite(&ng, 4, 1, f) == 1;
    for (size_t i = 0; ok && i < e->ng; i++) {
        struct group *g = &e->g[i];
        uint32_t nr = g->scope == SC_DLP ? (uint32_t)e->nterms : (uint32_t)g->nrules;
        ok = fwrite(&nr, 4, 1, f) == 1;
        for (size_t k = 0; ok && g->scope != SC_DLP && k < nr; k++) {
            uint32_t v = g->rules[k] | (e->er[g->rules[k]].how == HOW_PREFILTER ? 0x80000000u : 0) |
                         (e->er[g->rules[k]].twin ? 0x40000000u : 0);
            ok = fwrite(&v, 4, 1, f) == 1;
        }
        ok = ok && write_db(f, g->db);
    }
    uint32_t nl = (uint32_t)e->nloc;
    ok = ok && fwrite(&nl, 4, 1, f) == 1;
    for (size_t i = 0; ok && i < e->nloc; i++)
        ok = fwrite(&e->loc[i].rule, 4, 1, f) == 1 && write_db(f, e->loc[i].db);
    for (size_t i = 0; ok && i < e->ng; i++) {
        uint8_t empty = e->g[i].ascii_empty;
        ok = fwrite(&empty, 1, 1, f) == 1 && write_db(f, e->g[i].adb);
    }
    if (fclose(f) != 0)
        ok = false;
    if (ok)
        rename(tmp, path);
    else
        unlink(tmp);
}

/* mkdir -p: a cache dir such as <repo>/build-cache/hs may lack its parent */
static void mkdir_parents(const char *dir)
{
    char p[4096];
    size_t n = strlen(dir);
    if (n >= sizeof p)
        return;
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] == '/' || p[i] == 0) {
            char c = p[i];
            p[i] = 0;
            mkdir(p, 0755);
            p[i] = c;
        }
    }
}

static int on_any(unsigned id, unsigned long long from, unsigned long long to, unsigned fl,
                  void *ctx)
{
    (void)id;
    (void)from;
    (void)to;
    (void)fl;
    *(bool *)ctx = true;
    return 1; /* one is enough */
}

/* Does scanning empty input report a match (ALLOWEMPTY patterns, ^$ ...)?
 * Most header databases are for headers a message does not have, and a
 * Hyperscan call costs a fixed ~1 us however short its input: a database
 * that cannot match empty input is not called for an empty value (nor a
 * stream that was never written ended), with the same hits. */
static int empty_input_matches(const hs_database_t *db, unsigned mode, bool *out)
{
    hs_scratch_t *s = NULL;
    *out = false;
    if (hs_alloc_scratch(db, &s) != HS_SUCCESS)
        return -ENOMEM;
    hs_error_t hr;
    if (mode == HS_MODE_STREAM) {
        hs_stream_t *st = NULL;
        hr = hs_open_stream(db, 0, &st);
        if (hr == HS_SUCCESS)
            hr = hs_close_stream(st, s, on_any, out);
    } else {
        hr = hs_scan(db, "", 0, 0, s, on_any, out);
    }
    hs_free_scratch(s);
    /* a failure to tell: call it always */
    if (hr != HS_SUCCESS && hr != HS_SCAN_TERMINATED)
        *out = true;
    return 0;
}

static int build_dbs(struct mx_scan_engine *e)
{
    /* DLP dictionary terms share one block database */
    for (size_t d = 0; d < e->ndlps; d++)
        e->nterms += e->rs.rules[e->dlps[d]].nterms;
    if (e->nterms) {
        e->term_rule = calloc(e->nterms, sizeof *e->term_rule);
        e->term_weight = calloc(e->nterms, sizeof *e->term_weight);
        if (!e->term_rule || !e->term_weight)
            return -ENOMEM;
        size_t k = 0;
        for (size_t d = 0; d < e->ndlps; d++) {
            struct mx_rule *r = &e->rs.rules[e->dlps[d]];
            for (size_t t = 0; t < r->nterms; t++, k++) {
                e->term_rule[k] = e->dlps[d];
                e->term_weight[k] = r->terms[t].weight;
            }
        }
        int g = group_for(e, SC_DLP, NULL, NULL, false);
        if (g < 0)
            return g;
    }
    char key[65], path[4096];
    bool cached = false;
    if (e->o.cache_dir) {
        cache_key(e, key);
        snprintf(path, sizeof path, "%s/%s.hsdb", e->o.cache_dir, key);
        cached = cache_load(e, path) == 0;
        if (cached)
            utime(path, NULL); /* in use: the newest for cache_prune() */
        if (!cached) {
            for (size_t i = 0; i < e->ng; i++) {
                hs_free_database(e->g[i].db);
                hs_free_database(e->g[i].adb);
                e->g[i].db = e->g[i].adb = NULL;
                e->g[i].ascii_empty = false;
            }
            for (size_t i = 0; i < e->nloc; i++) {
                hs_free_database(e->loc[i].db);
                e->loc[i].db = NULL;
            }
        }
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (!cached) {
        for (size_t i = 0; i < e->ng; i++) {
            int rc = compile_group(e, &e->g[i]);
            if (!rc)
                rc = compile_ascii(e, &e->g[i]);
            if (rc)
                return rc;
        }
        for (size_t i = 0; i < e->nloc; i++) {
            /* a locator that does not compile only means no locator */
            hs_compile_error_t *cerr = NULL;
            if (hs_compile(e->loc[i].expr, e->loc[i].flags, HS_MODE_BLOCK, NULL, &e->loc[i].db,
                           &cerr) != HS_SUCCESS)
                e->loc[i].db = NULL;
            hs_free_compile_error(cerr);
        }
        if (e->o.cache_dir) {
            mkdir_parents(e->o.cache_dir);
            cache_store(e, path);
            cache_prune(e->o.cache_dir, path);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    e->st.from_cache = cached;
    e->st.compile_seconds =
        cached ? 0 : (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    for (size_t i = 0; i < e->ng; i++) {
        e->st.databases += e->g[i].db != NULL;
        int erc;
        if (e->g[i].db && (erc = empty_input_matches(e->g[i].db, group_mode(&e->g[i]),
                                                     &e->g[i].empty_matches)) != 0)
            return erc;
        if (e->g[i].scope == SC_DLP)
            e->dlp_g = (int)i;
        /* ALL:raw reads the header block from the kept message */
        if (e->g[i].scope == SC_FULL ||
            (e->g[i].scope == SC_HEADER && strcmp(e->g[i].target, "ALL:raw") == 0))
            e->has_full = true;
        if (e->g[i].adb || e->g[i].ascii_empty) {
            e->has_ascii = true;
            e->st.ascii_variants++;
        }
        /* what compile_ascii() put in the variant: set there when compiled,
         * computed the same way when loaded from the cache; none without a
         * variant */
        bool variant = e->g[i].adb || e->g[i].ascii_empty;
        for (size_t k = 0; k < e->g[i].npcre; k++) {
            struct erule *er = &e->er[e->g[i].pcre[k]];
            if (!variant) {
                er->ascii = ASCII_NO;
            } else if (cached) {
                char *x = NULL;
                unsigned fl;
                int kind = pcre_ascii(e, e->g[i].pcre[k], &x, &fl);
                free(x);
                if (kind < 0)
                    return kind;
            }
            e->st.pcre_ascii += er->ascii == ASCII_EXACT || er->ascii == ASCII_PREFILTER;
        }
    }
    int lrc = group_lists(e);
    if (lrc)
        return lrc;
    for (size_t i = 0; i < e->nloc; i++) {
        if (!e->loc[i].db)
            e->er[e->loc[i].rule].loc = 0;
        e->st.located += e->loc[i].db != NULL;
    }
    /* final counts */
    e->st.hs_exact = e->st.hs_prefilter = 0;
    e->st.pcre_only = (unsigned)e->nmimehdrs;
    for (size_t i = 0; i < e->rs.nrules; i++) {
        struct erule *er = &e->er[i];
        if (er->group < 0)
            continue;
        if (e->rs.rules[i].exists || er->how == HOW_HS)
            e->st.hs_exact++;
        else if (er->how == HOW_PREFILTER)
            e->st.hs_prefilter++;
        else if (er->how == HOW_PCRE)
            e->st.pcre_only++;
    }
    return 0;
}

static int fail(char **err, int rc, const char *fmt, const char *a)
{
    if (err) {
        char buf[512];
        snprintf(buf, sizeof buf, fmt, a);
        *err = strdup(buf);
    }
    return rc;
}

int mx_scan_engine_load(const struct mx_scan_opts *o, struct mx_scan_engine **out, char **err)
{
    return mx_scan_engine_load_layout(o, LAYOUT_VERSION, out, err);
}

int mx_scan_engine_load_layout(const struct mx_scan_opts *o, int layout,
                               struct mx_scan_engine **out, char **err)
{
    if (err)
        *err = NULL;
    if (layout != 1 && layout != LAYOUT_VERSION)
        return fail(err, -EINVAL, "%s", "unknown database layout");
    struct mx_scan_engine *e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    e->legacy_layout = layout == 1;
    e->o = *o;
    if (e->o.threshold == 0)
        e->o.threshold = 5.0;
    if (!e->o.body_keep)
        e->o.body_keep = 256 * 1024;
    if (!e->o.full_keep)
        e->o.full_keep = 1024 * 1024;
    if (!e->o.max_uris)
        e->o.max_uris = 256;
    if (!e->o.archive_max_bytes)
        e->o.archive_max_bytes = 4 * 1024 * 1024;
    if (!e->o.archive_max_depth)
        e->o.archive_max_depth = 3;
    if (!e->o.archive_max_members)
        e->o.archive_max_members = 1000;
    if (!e->o.archive_max_total)
        e->o.archive_max_total = 64 * 1024 * 1024;
    if (!e->o.archive_max_message_total)
        e->o.archive_max_message_total = 256 * 1024 * 1024;
    if (!e->o.archive_max_message_members)
        e->o.archive_max_message_members = 4000;
    if (!e->o.archive_max_message_cpu_ms)
        e->o.archive_max_message_cpu_ms = 2000;
    e->o.cache_dir = NULL;
    e->dlp_g = -1;
    mx_rules_init(&e->rs);
    int rc = 0;
    for (size_t i = 0; i < o->n_rule_paths && rc == 0; i++)
        rc = mx_rules_load_path(&e->rs, o->rule_paths[i]);
    if (rc) {
        rc = fail(err, rc, "%s", e->rs.err[0] ? e->rs.err : "cannot load rules");
        mx_scan_engine_free(e);
        return rc;
    }
    if ((rc = mx_rules_finish(&e->rs)) != 0) {
        mx_scan_engine_free(e);
        return fail(err, rc, "%s", "out of memory");
    }
    if (e->rs.ntlds)
        qsort(e->rs.tlds, e->rs.ntlds, sizeof *e->rs.tlds, cmp_str);
    e->er = calloc(e->rs.nrules + 1, sizeof *e->er);
    if (!e->er || (rc = classify(e)) != 0) {
        mx_scan_engine_free(e);
        return fail(err, -ENOMEM, "%s", "out of memory");
    }
    e->o.cache_dir = o->cache_dir ? strdup(o->cache_dir) : NULL;
    if ((rc = build_dbs(e)) != 0) {
        mx_scan_engine_free(e);
        return fail(err, rc, "%s", rc == -EIO ? "Hyperscan compile failed" : "out of memory");
    }
    *out = e;
    return 0;
}

void mx_scan_engine_free(struct mx_scan_engine *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->ng; i++) {
        hs_free_database(e->g[i].db);
        hs_free_database(e->g[i].adb);
        free(e->g[i].target);
        free(e->g[i].rules);
        free(e->g[i].pcre);
        free(e->g[i].exists);
        free(e->g[i].pre);
        free(e->g[i].neg);
    }
    free(e->g);
    for (size_t i = 0; i < e->nloc; i++) {
        hs_free_database(e->loc[i].db);
        free(e->loc[i].expr);
        pcre2_code_free(e->loc[i].anchored);
    }
    free(e->loc);
    if (e->er)
        for (size_t i = 0; i < e->rs.nrules; i++)
            pcre2_code_free(e->er[i].pc);
    free(e->er);
    free(e->metas);
    free(e->dlps);
    free(e->attachs);
    free(e->mimehdrs);
    free(e->mimeevals);
    free(e->natives);
    free(e->report);
    free(e->morder);
    free(e->mtok);
    free(e->mskip);
    free(e->mzero);
    free(e->mdep_off);
    free(e->mdep);
    free(e->mseed);
    free(e->mh_namelen);
    free(e->mh_raw);
    free(e->term_rule);
    free(e->term_weight);
    free(e->skips);
    free((char *)e->o.cache_dir);
    mx_rules_free(&e->rs);
    free(e);
}

void mx_scan_engine_stats(const struct mx_scan_engine *e, struct mx_scan_stats *st)
{
    *st = e->st;
}

int mx_scan_engine_skipped(const struct mx_scan_engine *e, size_t i, const char **name,
                           const char **why)
{
    if (i >= e->nskips)
        return -ENOENT;
    *name = e->skips[i].name;
    *why = e->skips[i].why;
    return 0;
}

double mx_scan_engine_threshold(const struct mx_scan_engine *e)
{
    return e->o.threshold;
}

static const char *const scope_names[SC_N] = {"none", "header", "body", "rawbody",
                                              "uri",  "full",   "dlp"};

size_t mx_scan_engine_ndbs(const struct mx_scan_engine *e)
{
    return e->ng;
}

int mx_scan_engine_dbview(const struct mx_scan_engine *e, size_t i, struct mx_scan_dbview *v)
{
    if (i >= e->ng)
        return -ENOENT;
    const struct group *g = &e->g[i];
    memset(v, 0, sizeof *v);
    v->scope = scope_names[g->scope];
    v->target = g->target;
    v->kind = g->kind ? g->kind : "main";
    v->db = g->db;
    v->stream = group_mode(g) == HS_MODE_STREAM;
    v->npatterns = g->scope == SC_DLP ? e->nterms : g->nrules;
    v->ids = g->scope == SC_DLP ? NULL : g->rules;
    v->npcre = g->npcre;
    return 0;
}

int mx_scan_engine_dbpattern(const struct mx_scan_engine *e, size_t i, size_t k, char **expr,
                             unsigned *flags)
{
    if (i >= e->ng)
        return -ENOENT;
    struct pats p = {0};
    int rc = group_pats((struct mx_scan_engine *)e, &e->g[i], &p);
    if (rc == 0 && k >= p.n)
        rc = -ENOENT;
    if (rc == 0) {
        *expr = p.expr[k];
        *flags = p.flags[k];
        p.expr[k] = NULL;
    }
    pats_free(&p);
    return rc;
}

const void *mx_scan_engine_rule_pcre(const struct mx_scan_engine *e, size_t ri)
{
    return ri < e->rs.nrules ? e->er[ri].pc : NULL;
}

int mx_scan_engine_rule_how(const struct mx_scan_engine *e, size_t ri)
{
    static const char how[] = {0, 'h', 'f', 'p'};
    if (ri < e->rs.nrules && e->er[ri].chunked && e->er[ri].how != HOW_NONE)
        return 'c';
    return ri < e->rs.nrules ? how[e->er[ri].how] : 0;
}

const struct mx_ruleset *mx_scan_engine_rules(const struct mx_scan_engine *e)
{
    return &e->rs;
}


/* ---- workers and messages ----------------------------------------------- */

struct hdr {
    uint32_t no, nl, vo, vl;
};

struct mx_scan_worker {
    struct mx_scan_engine *e;
    struct mx_scan_prof *prof; /* NULL unless a profiling tool attached one */
    hs_scratch_t *scratch;
    pcre2_match_data *md;
    pcre2_match_context *mctx; /* RX_MATCH_LIMIT */
    magic_t magic;
    struct mx_scan_msg *free_list;
    unsigned live;
};

/* staged stream input (see scan_streams()): body text, raw body, full */
#define STAGE_SIZE 16384
static const enum scope stage_scope[3] = {SC_BODY, SC_RAWBODY, SC_FULL};

/* text parts whose start in the kept raw body is remembered (later ones
 * are read as part of the last), and SA's MAX_BODY_LINE_LENGTH */
#define MX_RAW_PARTS 64
#define RAW_LINE_MAX 2048

struct mx_scan_msg {
    struct mx_scan_worker *w;
    char *stage[3];
    size_t stage_len[3];
    bool in_subject;  /* rendering the Subject into the body text */
    bool wrote[SC_N]; /* some stream of that scope was written this message */
    size_t subj_len;  /* bytes of kept body text that are the Subject line */
    struct mx_scan_msg *next_free;
    struct mx_mime_parser *mp;
    hs_stream_t **streams; /* per group; NULL for block-mode groups */
    hs_stream_t **astreams; /* per group: its ASCII variant's stream, or NULL */
    bool ascii;             /* body text still all ASCII: variants in use */
    size_t bwritten;        /* body text bytes written to the streams */
    bool ended, dirty;
    unsigned flags;
    /* per rule state */
    uint16_t *count;
    uint8_t *cand;
    float *val;
    double *dval; /* meta values in eval_metas() */
    uint64_t *mdirty; /* eval_metas(): by order position, metas to evaluate */
    struct mx_relay *relr; /* relays_of()'s records, or NULL until needed */
    uint8_t *vstate;
    /* top-level headers */
    char *ha;
    size_t hlen, hcap;
    struct hdr *hdrs;
    size_t nhdrs, hdrcap;
    /* kept text */
    char *body, *raw, *full;
    size_t blen, rlen, flen;
    /* where each part's text starts in raw (SA splits the raw body per part) */
    uint32_t rpart[MX_RAW_PARTS];
    unsigned nrpart;
    int rpart_last; /* index of the part the last raw bytes came from */
    /* URIs: NUL-terminated strings in ua */
    char *ua;
    size_t ulen, ucap;
    uint32_t *uoff;
    unsigned nuri;
    /* body rendering */
    int ws_nl;     /* newlines in the pending whitespace run, -1: none pending */
    bool ws_pre;   /* ... blanks in it before its first newline */
    bool ws_post;  /* ... blanks in it after its last newline */
    bool at_start; /* nothing written since the last paragraph break */
    bool sa_ws;    /* plain text: blanks at a paragraph's edges count (see render()) */
    bool body_start; /* nothing of the body written yet (after the Subject) */
    char tok[512]; /* current word, for URL detection */
    size_t toklen;
    bool tok_over;
    /* current text part */
    int text_part; /* part index being rendered, -1 none */
    bool render;   /* its text goes to the body (else to the raw body only) */
    bool html;
    struct mx_utf8_conv conv;
    int hstate;    /* html: 0 text, 1 tag, 2 comment, 3 entity, 4 skip (script/style) */
    char htag[1024];
    size_t htaglen;
    char hent[12];
    size_t hentlen;
    char hskip[8]; /* closing tag name while skipping script/style */
    /* current attachment */
    int att_part;
    const struct mx_mime_part *att;
    uint8_t head[4096];
    size_t headlen;
    unsigned nattach;
    /* the attachment's decoded bytes while it may be an archive (see
     * arch_decide()); the buffer stays with the message for the next one.
     * ARCH_OVER: too large to keep, or the message's archive budget spent */
    enum { ARCH_UNDECIDED, ARCH_KEEP, ARCH_NO, ARCH_OVER } arch_state;
    uint8_t *arch;
    size_t arch_len, arch_cap;
    /* what the message's walks used so far (archive_max_message_*) */
    uint64_t arch_msg_total;
    unsigned arch_msg_members;
    uint64_t arch_msg_cpu_ns;
    /* the first attachment an attachment rule hit, and the rule */
    char att_hit[MX_ARCHIVE_PATH];
    const char *att_hit_rule;
    /* result storage */
    const char **hits;
    double *hit_scores;
    const char **att_hits; /* the attachment rules among hits */
    unsigned natt_hits;
    unsigned regex_errors; /* PCRE2 matches that ended in an error, not a result */
    /* located confirmation (struct locator): the kept text reversed, and
     * where matches can start */
    char *rev;
    size_t revcap, rev_n;
    const char *rev_of;
    uint32_t *starts;
    size_t nstarts, startcap;
    bool starts_over;
    unsigned nhits;
    char envfrom[256];
    /* for the native evals (evals.c) */
    struct mx_native_mime nmime;
    uint64_t fed;       /* bytes of the message so far */
    uint64_t body_at;   /* offset of the body (after the empty line); 0 until seen */
    uint8_t line_len;   /* bytes into the current header line, saturating at 2 */
    bool line_cr;       /* the current header line began with CR */
};

/* m->cand[]: CAND_YES prefilter match, CAND_TWIN its twin's match; at end
 * of message a candidate becomes CAND_PENDING, confirmed when first read
 * (count_of()), then CAND_DONE. */
enum { CAND_NO = 0, CAND_YES = 1, CAND_TWIN = 2, CAND_PENDING = 4, CAND_DONE = 8 };

static int on_match(unsigned id, unsigned long long from, unsigned long long to, unsigned fl,
                    void *ctx)
{
    (void)from;
    (void)to;
    (void)fl;
    struct mx_scan_msg *m = ctx;
    const struct mx_scan_engine *e = m->w->e;
    if (id >= e->rs.nrules) {
        /* a twin (TWIN_MAX): the second necessary condition */
        m->cand[id - e->rs.nrules] |= CAND_TWIN;
        return 0;
    }
    if (m->w->prof)
        m->w->prof->r_matches[id]++;
    if (e->er[id].cand)
        m->cand[id] |= CAND_YES;
    else if (m->count[id] < UINT16_MAX)
        m->count[id]++;
    return 0;
}

static int on_term(unsigned id, unsigned long long from, unsigned long long to, unsigned fl,
                   void *ctx)
{
    (void)from;
    (void)to;
    (void)fl;
    struct mx_scan_msg *m = ctx;
    struct mx_scan_engine *e = m->w->e;
    uint32_t r = e->term_rule[id];
    m->val[r] += (float)e->term_weight[id];
    return 0;
}

struct mx_scan_worker *mx_scan_worker_new(struct mx_scan_engine *e)
{
    struct mx_scan_worker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->e = e;
    for (size_t i = 0; i < e->ng; i++) {
        if (e->g[i].db && hs_alloc_scratch(e->g[i].db, &w->scratch) != HS_SUCCESS) {
            mx_scan_worker_free(w);
            return NULL;
        }
    }
    for (size_t i = 0; i < e->ng; i++) {
        if (e->g[i].adb && hs_alloc_scratch(e->g[i].adb, &w->scratch) != HS_SUCCESS) {
            mx_scan_worker_free(w);
            return NULL;
        }
    }
    for (size_t i = 0; i < e->nloc; i++) {
        if (e->loc[i].db && hs_alloc_scratch(e->loc[i].db, &w->scratch) != HS_SUCCESS) {
            mx_scan_worker_free(w);
            return NULL;
        }
    }
    w->md = pcre2_match_data_create(4, NULL);
    w->mctx = pcre2_match_context_create(NULL);
    if (w->mctx)
        pcre2_set_match_limit(w->mctx, RX_MATCH_LIMIT);
    w->magic = magic_open(MAGIC_MIME_TYPE | MAGIC_ERROR);
    if (!w->md || !w->mctx || !w->magic || magic_load(w->magic, NULL) != 0) {
        mx_scan_worker_free(w);
        return NULL;
    }
    return w;
}

static void msg_destroy(struct mx_scan_msg *m)
{
    mx_mime_parser_free(m->mp);
    for (size_t i = 0; m->streams && i < m->w->e->ng; i++)
        if (m->streams[i])
            hs_close_stream(m->streams[i], NULL, NULL, NULL);
    free(m->streams);
    for (size_t i = 0; m->astreams && i < m->w->e->ng; i++)
        if (m->astreams[i])
            hs_close_stream(m->astreams[i], NULL, NULL, NULL);
    free(m->astreams);
    for (int k = 0; k < 3; k++)
        free(m->stage[k]);
    free(m->count);
    free(m->cand);
    free(m->val);
    free(m->dval);
    free(m->mdirty);
    free(m->relr);
    free(m->vstate);
    free(m->ha);
    free(m->hdrs);
    free(m->body);
    free(m->raw);
    free(m->full);
    free(m->ua);
    free(m->uoff);
    free(m->hits);
    free(m->hit_scores);
    free(m->att_hits);
    free(m->arch);
    free(m->rev);
    free(m->starts);
    free(m);
}

void mx_scan_worker_free(struct mx_scan_worker *w)
{
    if (!w)
        return;
    while (w->free_list) {
        struct mx_scan_msg *m = w->free_list;
        w->free_list = m->next_free;
        msg_destroy(m);
    }
    hs_free_scratch(w->scratch);
    pcre2_match_data_free(w->md);
    pcre2_match_context_free(w->mctx);
    if (w->magic)
        magic_close(w->magic);
    free(w);
}

/* ---- profiling ------------------------------------------------------------ */

void mx_scan_worker_set_prof(struct mx_scan_worker *w, struct mx_scan_prof *p)
{
    w->prof = p;
}

static void cap_add(struct mx_scan_capture *c, const char *s, size_t n)
{
    if (c->len + n > c->cap) {
        size_t nc = (c->len + n) * 2;
        char *nb = realloc(c->buf, nc);
        if (!nb)
            return;
        c->buf = nb;
        c->cap = nc;
    }
    memcpy(c->buf + c->len, s, n);
    c->len += n;
}

static void cap_end(struct mx_scan_capture *c)
{
    if (c->nends == c->ecap) {
        size_t nc = c->ecap ? c->ecap * 2 : 64;
        size_t *ne = realloc(c->ends, nc * sizeof *ne);
        if (!ne)
            return;
        c->ends = ne;
        c->ecap = nc;
    }
    c->ends[c->nends++] = c->len;
}

/* (thread CPU time: the profile must not count time other processes held
 * the core) */

/* One Hyperscan call on database gi: a stream write (stream != NULL), a
 * stream end (s == NULL) or a block scan; timed and captured when a profile
 * is attached, so the tool sees exactly the calls the engine makes. */
static void hs_call(struct mx_scan_msg *m, size_t gi, hs_stream_t *stream, const char *s,
                    size_t n, match_event_handler cb)
{
    struct mx_scan_worker *w = m->w;
    const hs_database_t *db = w->e->g[gi].db;
    struct mx_scan_prof *p = w->prof;
    uint64_t t0 = p ? mx_cpu_ns() : 0;
    if (stream && s)
        hs_scan_stream(stream, s, (unsigned)n, 0, w->scratch, cb, m);
    else if (stream)
        hs_reset_stream(stream, 0, w->scratch, cb, m);
    else
        hs_scan(db, s, (unsigned)n, 0, w->scratch, cb, m);
    if (!p)
        return;
    p->db_ns[gi] += mx_cpu_ns() - t0;
    p->db_calls[gi]++;
    p->db_bytes[gi] += s ? n : 0;
    if (p->capture && s)
        cap_add(&p->cap[gi], s, n);
    if (p->capture && (!stream || !s))
        cap_end(&p->cap[gi]);
}

/* ---- text pipeline: UTF-8 text -> rendered body (paragraph per line) ---- */

static void keep(char *buf, size_t *len, size_t cap, const char *s, size_t n, unsigned *flags)
{
    if (*len + n > cap) {
        *flags |= MX_SCAN_TRUNCATED;
        n = cap - *len;
    }
    memcpy(buf + *len, s, n);
    *len += n;
}

static void add_uri(struct mx_scan_msg *m, const char *s, size_t n)
{
    struct mx_scan_engine *e = m->w->e;
    while (n && (s[n - 1] == '.' || s[n - 1] == ',' || s[n - 1] == ';' || s[n - 1] == ':' ||
                 s[n - 1] == ')' || s[n - 1] == '>' || s[n - 1] == '"' || s[n - 1] == '\'' ||
                 s[n - 1] == '!' || s[n - 1] == '?' || s[n - 1] == ']'))
        n--;
    while (n && isspace((unsigned char)*s))
        s++, n--;
    if (n == 0 || n > 2048)
        return;
    if (m->nuri >= e->o.max_uris || m->ulen + n + 1 > m->ucap) {
        m->flags |= MX_SCAN_TRUNCATED;
        return;
    }
    /* duplicates add nothing for rules */
    for (unsigned i = 0; i < m->nuri; i++)
        if (strlen(m->ua + m->uoff[i]) == n && memcmp(m->ua + m->uoff[i], s, n) == 0)
            return;
    m->uoff[m->nuri++] = (uint32_t)m->ulen;
    memcpy(m->ua + m->ulen, s, n);
    m->ua[m->ulen + n] = 0;
    m->ulen += n + 1;
    /* http://foobar is also http://www.foobar.com for SA's uri rules, as
     * Firefox reads it (Util::uri_list_canonicalize, bug 6596): no user
     * part, port 80, a host without a dot, not localhost nor a number */
    if (n > 7 && memcmp(s, "http://", 7) == 0) {
        size_t h = 7, e = 7;
        while (e < n && s[e] != '/' && s[e] != '?' && s[e] != '#' && s[e] != ':' && s[e] != '@')
            e++;
        bool digits = true;
        for (size_t k = h; k < e; k++)
            digits &= isdigit((unsigned char)s[k]) != 0;
        bool port80 = e == n || s[e] != ':' || (n - e >= 3 && memcmp(s + e, ":80", 3) == 0 &&
                                                 (n - e == 3 || !isdigit((unsigned char)s[e + 3])));
        if (e > h && (e == n || s[e] != '@') && port80 && !memchr(s + h, '.', e - h) && !digits &&
            !(e - h == 9 && strncasecmp(s + h, "localhost", 9) == 0) &&
            !(e - h > 2 && s[h] == '0' && (s[h + 1] == 'x' || s[h + 1] == 'X'))) {
            char u[2100];
            size_t k = 0;
            k += (size_t)snprintf(u, sizeof u, "http://www.");
            for (size_t i = h; i < e && k < 1000; i++)
                u[k++] = (char)tolower((unsigned char)s[i]);
            int un = snprintf(u + k, sizeof u - k, ".com%.*s", (int)(n - e), s + e);
            if (un > 0 && k + (size_t)un < sizeof u)
                add_uri(m, u, k + (size_t)un);
        }
    }
}

static bool addr_local_char(unsigned char c)
{
    return isalnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}

/* A bare e-mail address in the text is a mailto: URI for uri rules, as
 * SpamAssassin's URI parser makes it ("send mail to list-unsubscribe@host"
 * is what __UNSUB_LINK and __URI_MAILTO look at). Returns true if one was
 * found in the word. */
static bool bare_address(struct mx_scan_msg *m, const char *t, size_t n)
{
    const char *at = memchr(t, '@', n);
    if (!at)
        return false;
    size_t a = (size_t)(at - t), l = a, r = a + 1;
    while (l > 0 && addr_local_char((unsigned char)t[l - 1]))
        l--;
    while (r < n && (isalnum((unsigned char)t[r]) || t[r] == '.' || t[r] == '-'))
        r++;
    while (r > a + 1 && (t[r - 1] == '.' || t[r - 1] == '-'))
        r--;
    const char *dot = memchr(at + 1, '.', r - a - 1);
    if (l == a || !dot || dot == at + 1 || r - l > 512)
        return false;
    char u[600];
    int un = snprintf(u, sizeof u, "mailto:%.*s", (int)(r - l), t + l);
    add_uri(m, u, (size_t)un);
    return true;
}

/* SpamAssassin's delimiters around a URI in text (PerMsgStatus::_tbirdurire) */
static bool uri_start_delim(unsigned char c)
{
    return (c && strchr("!\"#$&'()*+,/:;<=>?@[\\]^`{|}~", c)) || isspace(c) || c == 0x1b ||
           c == 0xa0;
}

/* A schemeless URI candidate's length once trimmed as SpamAssassin's
 * _tbirdurire: cut before the last ')' that comes before the first '(',
 * then drop trailing punctuation. */
static size_t uri_trim(const char *s, size_t len)
{
    size_t open = 0;
    while (open < len && s[open] != '(')
        open++;
    for (size_t k = open; k > 0; k--)
        if (s[k - 1] == ')') {
            len = k - 1;
            break;
        }
    while (len && strchr("-~!@#^&*()_+=:;'?,.", s[len - 1]))
        len--;
    return len;
}

static bool uri_end_delim(unsigned char c)
{
    return (c && strchr("><\"`}]{[|", c)) || isspace(c) || c == 0x1b || c == 0xa0;
}

static bool is_tld(const struct mx_scan_engine *e, const char *s, size_t n)
{
    char k[64];
    if (!n || n >= sizeof k)
        return false;
    for (size_t i = 0; i < n; i++)
        k[i] = (char)tolower((unsigned char)s[i]);
    k[n] = 0;
    const char *kp = k;
    return bsearch(&kp, e->rs.tlds, e->rs.ntlds, sizeof *e->rs.tlds, cmp_str) != NULL;
}

/* Util::is_fqdn_valid($host, 1): two labels or more of 1-63 of [a-z0-9_-],
 * '-' not first nor last, '_' not in the last two; 253 at most */
static bool fqdn_valid(const char *h, size_t n)
{
    while (n && h[n - 1] == '.')
        n--;
    if (!n || n > 253)
        return false;
    size_t labels = 1;
    for (size_t i = 0; i < n; i++)
        labels += h[i] == '.';
    if (labels < 2)
        return false;
    for (size_t i = 0, l = 0; i <= n; l++) {
        size_t j = i;
        while (j < n && h[j] != '.')
            j++;
        if (j == i || j - i > 63 || h[i] == '-' || h[j - 1] == '-')
            return false;
        for (size_t k = i; k < j; k++)
            if (!isalnum((unsigned char)h[k]) && h[k] != '-' && (h[k] != '_' || l + 2 >= labels))
                return false;
        i = j + 1;
    }
    return true;
}

/*
 * A host name with a known top-level domain (util_rb_tld) standing alone in
 * the text is a URI for SpamAssassin: "see example.com" gives
 * http://example.com (the schemeless branch of _tbirdurire and
 * _process_text_uri_list). In word t: from the start or after a start
 * delimiter, [a-z0-9][a-z0-9._-]{0,251}\.TLD with the TLD a whole label,
 * then an optional '.', :port and /path, then an end delimiter or the word's
 * end; SA then cuts at a ')' with no '(' before it and drops trailing
 * punctuation, and the host must be a valid FQDN.
 */
static void schemeless_uris(struct mx_scan_msg *m, const char *t, size_t n)
{
    const struct mx_scan_engine *e = m->w->e;
    if (!e->rs.ntlds)
        return;
    for (size_t i = 0; i < n;) {
        if ((i && !uri_start_delim((unsigned char)t[i - 1])) || !isalnum((unsigned char)t[i])) {
            i++;
            continue;
        }
        size_t h = i + 1;
        while (h < n && h - i < 252 &&
               (isalnum((unsigned char)t[h]) || t[h] == '.' || t[h] == '_' || t[h] == '-'))
            h++;
        size_t end = 0, host = 0;
        for (size_t k = h; k > i + 2 && !end; k--) {
            /* the TLD ends at k: no [a-z0-9-] nor ".[a-z0-9]" after it */
            if (k < n && (isalnum((unsigned char)t[k]) || t[k] == '-' ||
                          (t[k] == '.' && k + 1 < n && isalnum((unsigned char)t[k + 1]))))
                continue;
            size_t d = k - 1;
            while (d > i && t[d] != '.')
                d--;
            if (d == i || !is_tld(e, t + d + 1, k - d - 1))
                continue;
            size_t p = k;
            if (p < n && t[p] == '.')
                p++;
            if (p < n && t[p] == ':') {
                size_t q = p + 1;
                while (q < n && q - p <= 5 && isdigit((unsigned char)t[q]))
                    q++;
                if (q > p + 1)
                    p = q;
            }
            if (p < n && t[p] == '/') {
                size_t q = p + 1;
                while (q < n && q - p <= 2048 && !uri_end_delim((unsigned char)t[q]))
                    q++;
                if (q > p + 1)
                    p = q;
            }
            if (p == n || uri_end_delim((unsigned char)t[p]))
                end = p, host = k;
        }
        if (!end) {
            i++;
            continue;
        }
        size_t len = uri_trim(t + i, end - i);
        if (len && fqdn_valid(t + i, host - i)) {
            char u[2100];
            bool ftp = len > 4 && strncasecmp(t + i, "ftp.", 4) == 0;
            int un = snprintf(u, sizeof u, "%s%.*s", ftp ? "ftp://" : "http://", (int)len, t + i);
            if (un > 0 && (size_t)un < sizeof u)
                add_uri(m, u, (size_t)un);
        }
        i = end;
    }
}

/* Not in the local part of SA's address match (_tbirdurire's $urimailscheme) */
static bool mail_delim(unsigned char c)
{
    return uri_end_delim(c) || c == ',' || c == '(' || c == '\'' || c >= 0x80;
}

/*
 * SpamAssassin's address match takes any run of non-delimiters before '@'
 * (and after it); when a '/' comes before the '@' "it cannot be a valid
 * email address" and the match is http://... (_process_text_uri_list):
 * "Cao/Beaverton/IBM@IBMUS" gives http://Cao/Beaverton/IBM@IBMUS. Returns
 * true if the word held such a match.
 */
static bool slash_address(struct mx_scan_msg *m, const char *t, size_t n)
{
    const char *at = memchr(t, '@', n);
    if (!at)
        return false;
    size_t a = (size_t)(at - t), l = a, r = a + 1;
    while (l > 0 && !mail_delim((unsigned char)t[l - 1]) && t[l - 1] != '@')
        l--;
    if (l == a || !memchr(t + l, '/', a - l) || t[l] == '/')
        return false;
    while (r < n && !mail_delim((unsigned char)t[r]))
        r++;
    if (r == a + 1 || (r < n && !uri_end_delim((unsigned char)t[r])))
        return false;
    /* /\/.+\@/: a '/' with something between it and the '@' */
    const char *sl = memchr(t + l, '/', a - l);
    if ((size_t)(sl - t) + 1 >= a)
        return false;
    size_t len = uri_trim(t + l, r - l);
    if (len <= a - l + 1 || len > 2048)
        return false;
    char u[2100];
    int un = snprintf(u, sizeof u, "http://%.*s", (int)len, t + l);
    if (un > 0 && (size_t)un < sizeof u)
        add_uri(m, u, (size_t)un);
    return true;
}

/* A word of rendered text ended: is it a URL? (http, https, ftp, www.,
 * mailto:, a bare e-mail address, or a host name with a known TLD) */
static void end_token(struct mx_scan_msg *m)
{
    if (m->toklen && !m->tok_over) {
        static const char *const pfx[] = {"http://", "https://", "ftp://", "www.", "mailto:"};
        bool found = false;
        /* every prefix holds ':' or '.': most words have neither, and
         * trying each prefix at each offset was 1.6% of scan CPU */
        if (!memchr(m->tok, ':', m->toklen) && !memchr(m->tok, '.', m->toklen))
            goto bare;
        for (size_t k = 0; k < sizeof pfx / sizeof pfx[0]; k++) {
            size_t pl = strlen(pfx[k]);
            for (size_t i = 0; i + pl <= m->toklen; i++) {
                if (strncasecmp(m->tok + i, pfx[k], pl) == 0 && (i == 0 || !isalnum((unsigned char)m->tok[i - 1]))) {
                    if (k == 3 && m->toklen - i <= pl + 1)
                        break;
                    add_uri(m, m->tok + i, m->toklen - i);
                    found = true;
                    k = 99;
                    break;
                }
            }
        }
    bare:
        if (!found && !slash_address(m, m->tok, m->toklen) &&
            !bare_address(m, m->tok, m->toklen) && memchr(m->tok, '.', m->toklen))
            schemeless_uris(m, m->tok, m->toklen);
    }
    m->toklen = 0;
    m->tok_over = false;
}

static bool all_ascii(const char *s, size_t n)
{
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, s + i, 8);
        acc |= v;
    }
    for (; i < n; i++)
        acc |= (unsigned char)s[i];
    return (acc & 0x8080808080808080ull) == 0;
}

/* Leave ASCII MODE (see compile_ascii()): the variants' streams and their
 * rules' results are dropped and the body text written so far is replayed
 * into the full databases. */
static void ascii_leave(struct mx_scan_msg *m)
{
    struct mx_scan_engine *e = m->w->e;
    m->ascii = false;
    for (size_t i = 0; i < e->ng; i++) {
        const struct group *g = &e->g[i];
        if (g->scope != SC_BODY || (!g->adb && !g->ascii_empty) || !m->streams[i])
            continue;
        if (m->astreams[i])
            hs_reset_stream(m->astreams[i], 0, NULL, NULL, NULL);
        for (size_t k = 0; k < g->nrules; k++)
            m->count[g->rules[k]] = 0, m->cand[g->rules[k]] = 0;
        for (size_t k = 0; k < g->npcre; k++)
            m->count[g->pcre[k]] = 0, m->cand[g->pcre[k]] = 0;
        /* what this group's streams were given: nosubject ones skip the
         * Subject, and nothing yet while it is being written */
        size_t from = !g->nosubject ? 0 : m->in_subject ? m->bwritten : m->subj_len;
        if (m->bwritten > from)
            hs_call(m, i, m->streams[i], m->body + from, m->bwritten - from, on_match);
    }
}

static void scan_streams_now(struct mx_scan_msg *m, enum scope sc, const char *s, size_t n)
{
    struct mx_scan_engine *e = m->w->e;
    m->wrote[sc] = true;
    /* a byte of 0x80 or more, or text the kept body could not replay */
    if (sc == SC_BODY && m->ascii &&
        (!all_ascii(s, n) || m->bwritten + n > e->o.body_keep || m->blen < m->bwritten))
        ascii_leave(m);
    bool ascii = sc == SC_BODY && m->ascii;
    for (size_t i = 0; i < e->ng; i++) {
        const struct group *g = &e->g[i];
        if (g->scope != sc || !m->streams[i] || (m->in_subject && g->nosubject))
            continue;
        if (ascii && g->ascii_empty)
            continue;
        hs_call(m, i, ascii && m->astreams[i] ? m->astreams[i] : m->streams[i], s, n, on_match);
    }
    if (sc == SC_BODY)
        m->bwritten += n;
}

static void stage_flush(struct mx_scan_msg *m, int k)
{
    if (m->stage_len[k])
        scan_streams_now(m, stage_scope[k], m->stage[k], m->stage_len[k]);
    m->stage_len[k] = 0;
}

/* Stream input is staged: rendered body text arrives a line or a word at a
 * time and decoded parts in small pieces, and each Hyperscan stream write
 * costs a fixed ~100 ns per database however short it is. Streaming matches
 * do not depend on where writes are cut, so hits stay the same. */
static void scan_streams(struct mx_scan_msg *m, enum scope sc, const char *s, size_t n)
{
    int k = sc == SC_BODY ? 0 : sc == SC_RAWBODY ? 1 : 2;
    if (m->stage_len[k] + n > STAGE_SIZE) {
        stage_flush(m, k);
        if (n >= STAGE_SIZE) {
            scan_streams_now(m, sc, s, n);
            return;
        }
    }
    memcpy(m->stage[k] + m->stage_len[k], s, n);
    m->stage_len[k] += n;
}

static void body_out(struct mx_scan_msg *m, const char *s, size_t n)
{
    struct mx_scan_engine *e = m->w->e;
    if (n == 0)
        return;
    scan_streams(m, SC_BODY, s, n);
    keep(m->body, &m->blen, e->o.body_keep, s, n, &m->flags);
}

/* SpamAssassin renders a paragraph per line: runs of whitespace become one
 * space, whitespace holding two or more newlines a paragraph break. */
static void render(struct mx_scan_msg *m, const char *s, size_t n)
{
    char out[2048];
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
            if (m->ws_nl < 0) {
                m->ws_nl = 0;
                m->ws_pre = m->ws_post = false;
            }
            if (c == '\n') {
                m->ws_nl++;
                m->ws_post = false;
            } else if (c != '\r') {
                if (m->ws_nl)
                    m->ws_post = true;
                else
                    m->ws_pre = true;
            }
            if (m->toklen)
                end_token(m);
            continue;
        }
        if (o + 8 > sizeof out) {
            body_out(m, out, o);
            o = 0;
        }
        /* SpamAssassin (get_body_text_array_common): a run of whitespace
         * with two newlines or more is a paragraph break, but blanks before
         * its first and after its last newline stay, as one space each;
         * any other run is a space, at the start of the body too. The HTML
         * renderer's paragraphs keep mxgate's own breaks. */
        if (m->ws_nl >= 0 && (!m->at_start || (m->sa_ws && m->body_start))) {
            if (m->ws_nl >= 2) {
                if (m->sa_ws && m->ws_pre)
                    out[o++] = ' ';
                out[o++] = '\n';
                if (m->sa_ws && m->ws_post)
                    out[o++] = ' ';
            } else {
                out[o++] = ' ';
            }
        }
        m->ws_nl = -1;
        m->at_start = false;
        m->body_start = false;
        out[o++] = (char)c;
        if (m->toklen < sizeof m->tok)
            m->tok[m->toklen++] = (char)c;
        else
            m->tok_over = true;
    }
    body_out(m, out, o);
}

static void paragraph_break(struct mx_scan_msg *m)
{
    if (m->toklen)
        end_token(m);
    if (!m->at_start)
        body_out(m, "\n", 1);
    m->at_start = true;
    m->ws_nl = -1;
}

/* HTML attribute values that are links */
static void html_attrs(struct mx_scan_msg *m, const char *t, size_t n)
{
    static const char *const names[] = {"href", "src", "action", "background"};
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
            size_t nl = strlen(names[k]);
            /* an attribute follows whitespace (at 0 is the tag name) */
            if (i > 0 && i + nl < n && strncasecmp(t + i, names[k], nl) == 0 &&
                isspace((unsigned char)t[i - 1])) {
                size_t j = i + nl;
                while (j < n && isspace((unsigned char)t[j]))
                    j++;
                if (j >= n || t[j] != '=')
                    continue;
                j++;
                while (j < n && isspace((unsigned char)t[j]))
                    j++;
                char q = j < n && (t[j] == '"' || t[j] == '\'') ? t[j++] : 0;
                size_t st = j;
                while (j < n && (q ? t[j] != q : !isspace((unsigned char)t[j]) && t[j] != '>'))
                    j++;
                if (j > st && strncasecmp(t + st, "cid:", 4) != 0 && t[st] != '#')
                    add_uri(m, t + st, j - st);
                i = j;
                break;
            }
        }
    }
}

static bool tag_is(const char *t, size_t n, const char *name)
{
    size_t l = strlen(name);
    return n >= l && strncasecmp(t, name, l) == 0 &&
           (n == l || isspace((unsigned char)t[l]) || t[l] == '/');
}

static void html_tag(struct mx_scan_msg *m)
{
    const char *t = m->htag;
    size_t n = m->htaglen;
    bool close = n && t[0] == '/';
    if (close)
        t++, n--;
    if (!close && (tag_is(t, n, "script") || tag_is(t, n, "style"))) {
        snprintf(m->hskip, sizeof m->hskip, "%s", tag_is(t, n, "script") ? "script" : "style");
        m->hstate = 4;
        m->htaglen = 0;
        return;
    }
    static const char *const blocks[] = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4",
                                         "h5", "h6", "table", "blockquote", "hr", "title", "ul",
                                         "ol", "td", "th"};
    for (size_t k = 0; k < sizeof blocks / sizeof blocks[0]; k++) {
        if (tag_is(t, n, blocks[k])) {
            if (k == 2 || k >= 17) /* br, td, th: a space-like break */
                render(m, "\n", 1);
            else
                render(m, "\n\n", 2);
            break;
        }
    }
    if (!close)
        html_attrs(m, m->htag, m->htaglen);
}

static void html_entity(struct mx_scan_msg *m)
{
    static const struct {
        const char *n;
        uint32_t cp;
    } ents[] = {{"amp", '&'},      {"lt", '<'},      {"gt", '>'},      {"quot", '"'},
                {"apos", '\''},    {"nbsp", ' '},    {"copy", 0xa9},   {"reg", 0xae},
                {"euro", 0x20ac},  {"hellip", 0x2026}, {"mdash", 0x2014}, {"ndash", 0x2013}};
    char tmp[8];
    size_t tl = 0;
    uint32_t cp = 0;
    const char *s = m->hent;
    size_t n = m->hentlen;
    if (n > 1 && s[0] == '#') {
        if (s[1] == 'x' || s[1] == 'X')
            cp = (uint32_t)strtoul(s + 2, NULL, 16);
        else
            cp = (uint32_t)strtoul(s + 1, NULL, 10);
    } else {
        for (size_t k = 0; k < sizeof ents / sizeof ents[0]; k++)
            if (strlen(ents[k].n) == n && memcmp(ents[k].n, s, n) == 0)
                cp = ents[k].cp;
    }
    if (cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        render(m, "&", 1);
        render(m, s, n);
        return;
    }
    if (cp < 0x80)
        tmp[tl++] = (char)cp;
    else if (cp < 0x800)
        tmp[tl++] = (char)(0xc0 | (cp >> 6)), tmp[tl++] = (char)(0x80 | (cp & 0x3f));
    else if (cp < 0x10000)
        tmp[tl++] = (char)(0xe0 | (cp >> 12)), tmp[tl++] = (char)(0x80 | ((cp >> 6) & 0x3f)),
        tmp[tl++] = (char)(0x80 | (cp & 0x3f));
    else
        tmp[tl++] = (char)(0xf0 | (cp >> 18)), tmp[tl++] = (char)(0x80 | ((cp >> 12) & 0x3f)),
        tmp[tl++] = (char)(0x80 | ((cp >> 6) & 0x3f)), tmp[tl++] = (char)(0x80 | (cp & 0x3f));
    render(m, tmp, tl);
}

/* Streaming HTML to text: tags dropped (block tags break paragraphs),
 * script/style skipped, entities decoded, link attributes collected. */
static void html_feed(struct mx_scan_msg *m, const char *s, size_t n)
{
    size_t run = 0; /* start of a pending text run */
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        switch (m->hstate) {
        case 0:
            if (c == '<' || c == '&') {
                render(m, s + run, i - run);
                m->hstate = c == '<' ? 1 : 3;
                m->htaglen = 0;
                m->hentlen = 0;
            }
            continue;
        case 1:
            if (c == '>') {
                html_tag(m);
                if (m->hstate == 1)
                    m->hstate = 0;
                run = i + 1;
            } else if (m->htaglen < sizeof m->htag) {
                m->htag[m->htaglen++] = c;
                if (m->htaglen == 3 && memcmp(m->htag, "!--", 3) == 0)
                    m->hstate = 2;
            }
            continue;
        case 2:
            /* comment: ends at "-->" (htag keeps the last two chars) */
            if (c == '>' && m->htaglen >= 2 && m->htag[0] == '-' && m->htag[1] == '-') {
                m->hstate = 0;
                run = i + 1;
            } else {
                m->htag[0] = m->htag[1];
                m->htag[1] = c;
                m->htaglen = 2;
            }
            continue;
        case 3:
            if (c == ';' || m->hentlen >= sizeof m->hent - 1 ||
                !(isalnum((unsigned char)c) || c == '#')) {
                html_entity(m);
                m->hstate = 0;
                run = c == ';' ? i + 1 : i;
                if (c == '<') {
                    m->hstate = 1;
                    m->htaglen = 0;
                    run = i + 1;
                }
            } else {
                m->hent[m->hentlen++] = c;
            }
            continue;
        default: {
            /* skipping script/style until "</name" */
            size_t want = 2 + strlen(m->hskip);
            if (m->htaglen < want) {
                char exp = m->htaglen == 0 ? '<' : m->htaglen == 1 ? '/' : m->hskip[m->htaglen - 2];
                if (tolower((unsigned char)c) == exp)
                    m->htaglen++;
                else
                    m->htaglen = c == '<' ? 1 : 0;
            }
            if (m->htaglen == want) {
                m->hstate = 1; /* read the rest of the closing tag */
                memcpy(m->htag, "/x", 2);
                m->htaglen = 2;
            }
            continue;
        }
        }
    }
    if (m->hstate == 0)
        render(m, s + run, n - run);
}

static void text_emit(void *ud, const char *s, size_t n)
{
    struct mx_scan_msg *m = ud;
    if (m->html)
        html_feed(m, s, n);
    else
        render(m, s, n);
}

/* ---- MIME callbacks ------------------------------------------------------ */

/* Case-insensitive: does v hold "attachment"? (SpamAssassin lower-cases the
 * whole Content-Disposition value and looks for the word anywhere.) */
static bool has_attachment_word(const char *v, size_t vl)
{
    for (size_t i = 0; i + 10 <= vl; i++)
        if (strncasecmp(v + i, "attachment", 10) == 0)
            return true;
    return false;
}

/*
 * pcre2_match() on the worker's match data. An error (match or depth limit,
 * JIT stack, bad UTF) is no match, but it is counted: the verdict says a limit
 * was hit instead of passing the rule over silently.
 */
static int rx_match(struct mx_scan_msg *m, const pcre2_code *pc, const char *s, size_t n,
                    size_t off)
{
    int rc = pcre2_match(pc, (PCRE2_SPTR)s, n, off, 0, m->w->md, m->w->mctx);
    if (rc < PCRE2_ERROR_NOMATCH && m->regex_errors < UINT_MAX) {
        m->regex_errors++;
        if (getenv("MX_SCAN_PROFILE"))
            fprintf(stderr, "regex error %d on %zu bytes\n", rc, n);
    }
    return rc;
}

static void on_header(void *ud, const struct mx_mime_part *p, const char *name, size_t nl,
                      const char *v, size_t vl)
{
    struct mx_scan_msg *m = ud;
    struct mx_scan_engine *e = m->w->e;
    /* check_for_mime('mime_attachment'): any part, the message included */
    if (e->nmimeevals && nl == 19 && strncasecmp(name, "content-disposition", 19) == 0 &&
        has_attachment_word(v, vl))
        for (size_t k = 0; k < e->nmimeevals; k++)
            m->count[e->mimeevals[k]] = 1;
    for (size_t k = 0; k < e->nmimehdrs; k++) {
        uint32_t ri = e->mimehdrs[k];
        const struct mx_rule *r = &e->rs.rules[ri];
        /* every header of every part meets every mimeheader rule: compare
         * the precomputed name length first */
        if (e->mh_namelen[k] != nl || m->count[ri] || strncasecmp(r->target, name, nl) != 0)
            continue;
        if (e->mh_raw[k]) {
            m->count[ri] = rx_match(m, e->er[ri].pc, v, vl, 0) >= 0;
        } else {
            char tmp[4096];
            size_t n = mx_mime_decode_header(v, vl, tmp, sizeof tmp);
            m->count[ri] = rx_match(m, e->er[ri].pc, tmp, n, 0) >= 0;
        }
    }
    if (p->index != 0)
        return;
    if (m->hlen + nl + vl + 2 > m->hcap || m->nhdrs >= m->hdrcap) {
        m->flags |= MX_SCAN_TRUNCATED;
        return;
    }
    struct hdr *h = &m->hdrs[m->nhdrs++];
    h->no = (uint32_t)m->hlen;
    h->nl = (uint32_t)nl;
    memcpy(m->ha + m->hlen, name, nl);
    m->ha[m->hlen + nl] = 0;
    m->hlen += nl + 1;
    h->vo = (uint32_t)m->hlen;
    h->vl = (uint32_t)vl;
    memcpy(m->ha + m->hlen, v, vl);
    m->ha[m->hlen + vl] = 0;
    m->hlen += vl + 1;
}

static const struct hdr *find_hdr(const struct mx_scan_msg *m, const char *name, size_t from)
{
    size_t nl = strlen(name);
    for (size_t i = from; i < m->nhdrs; i++)
        if (m->hdrs[i].nl == nl && strncasecmp(m->ha + m->hdrs[i].no, name, nl) == 0)
            return &m->hdrs[i];
    return NULL;
}

static void on_begin(void *ud, const struct mx_mime_part *p)
{
    struct mx_scan_msg *m = ud;
    if (m->w->e->nnatives)
        mx_native_mime_part(&m->nmime, p->ctype, p->charset, p->disposition,
                            p->cte == MX_MIME_CTE_BASE64);
    if (p->index == 0) {
        /* SpamAssassin's body text starts with the Subject */
        const struct hdr *h = find_hdr(m, "subject", 0);
        if (h) {
            char tmp[2048];
            size_t n = mx_mime_decode_header(m->ha + h->vo, h->vl, tmp, sizeof tmp);
            /* `nosubject` rules (tflags) see the text after this line: the
             * Subject goes to the streams on its own, without theirs */
            stage_flush(m, 0);
            m->in_subject = true;
            m->sa_ws = false;
            render(m, tmp, n);
            paragraph_break(m);
            stage_flush(m, 0);
            m->in_subject = false;
            m->subj_len = m->blen;
        }
        m->body_start = true;
    }
    if (p->message)
        return;
    if (p->multipart) {
        /* The preamble is rendered as text: when no boundary ever matches
         * (a broken or hostile message), SpamAssassin and Python read the
         * whole body as the text, so it must not go unscanned. */
        m->text_part = (int)p->index;
        m->render = true;
        m->html = false;
        m->sa_ws = false;
        mx_utf8_conv_open(&m->conv, p->charset);
        paragraph_break(m);
        return;
    }
    bool body_text = p->text && !(p->attachment && p->filename[0]);
    /* SpamAssassin reads every text/... type as text/plain but text/html,
     * text/x-vcard and text/calendar (Util::parse_content_type, bug 5399),
     * renders text/plain and text/html only (Node::rendered()), and leaves
     * text/calendar out of the raw body too (bug 4843) */
    if (p->text && strcmp(p->ctype, "text/calendar") != 0) {
        m->text_part = (int)p->index;
        m->render = strcmp(p->ctype, "text/x-vcard") != 0;
        m->html = strcmp(p->ctype, "text/html") == 0;
        m->sa_ws = !m->html;
        m->hstate = 0;
        mx_utf8_conv_open(&m->conv, p->charset);
        paragraph_break(m);
    }
    if (!body_text) {
        m->att_part = (int)p->index;
        m->att = p;
        m->headlen = 0;
        m->arch_state = ARCH_UNDECIDED;
        m->arch_len = 0;
        m->nattach++;
    }
}

/* Keep n more bytes of an archive attachment; past archive_max_bytes the
 * archive is not opened (the limit flag says so) and nothing more is kept. */
static void arch_keep(struct mx_scan_msg *m, const uint8_t *d, size_t n)
{
    size_t max = m->w->e->o.archive_max_bytes;
    if (n > max - m->arch_len) {
        m->arch_state = ARCH_OVER;
        return;
    }
    if (m->arch_len + n > m->arch_cap) {
        size_t cap = m->arch_cap ? m->arch_cap : 64 * 1024;
        while (cap < m->arch_len + n)
            cap *= 2;
        if (cap > max)
            cap = max;
        uint8_t *a = realloc(m->arch, cap);
        if (!a) {
            m->arch_state = ARCH_OVER;
            return;
        }
        m->arch = a;
        m->arch_cap = cap;
    }
    memcpy(m->arch + m->arch_len, d, n);
    m->arch_len += n;
}

/* Has the message spent its archive budget (archive_max_message_*)? */
static bool arch_spent(const struct mx_scan_msg *m)
{
    const struct mx_scan_engine *e = m->w->e;
    return m->arch_msg_total >= e->o.archive_max_message_total ||
           m->arch_msg_members >= e->o.archive_max_message_members ||
           m->arch_msg_cpu_ns >= (uint64_t)e->o.archive_max_message_cpu_ms * 1000000u;
}

/* Once the first 4 KiB of an attachment (or all of a shorter one) are in:
 * an archive by content signature or extension is kept from here on; once
 * the message's budget is spent it is not kept (it will not be opened). */
static void arch_decide(struct mx_scan_msg *m, const struct mx_mime_part *p)
{
    if (!m->w->e->nattachs || !mx_archive_sniff(m->head, m->headlen, p->filename)) {
        m->arch_state = ARCH_NO;
        return;
    }
    if (arch_spent(m)) {
        m->arch_state = ARCH_OVER;
        return;
    }
    m->arch_state = ARCH_KEEP;
    m->arch_len = 0;
    /* a part shorter than the head is walked from the head itself */
    if (m->headlen == sizeof m->head)
        arch_keep(m, m->head, m->headlen);
}

static void on_data(void *ud, const struct mx_mime_part *p, const uint8_t *d, size_t n)
{
    struct mx_scan_msg *m = ud;
    struct mx_scan_engine *e = m->w->e;
    if ((int)p->index == m->text_part) {
        if ((int)p->index != m->rpart_last && m->nrpart < MX_RAW_PARTS && m->rlen < e->o.body_keep)
            m->rpart[m->nrpart++] = (uint32_t)m->rlen;
        m->rpart_last = (int)p->index;
        scan_streams(m, SC_RAWBODY, (const char *)d, n);
        keep(m->raw, &m->rlen, e->o.body_keep, (const char *)d, n, &m->flags);
        if (m->render)
            mx_utf8_conv_feed(&m->conv, d, n, text_emit, m);
    }
    if ((int)p->index == m->att_part) {
        size_t k = 0;
        if (m->headlen < sizeof m->head) {
            k = sizeof m->head - m->headlen < n ? sizeof m->head - m->headlen : n;
            memcpy(m->head + m->headlen, d, k);
            m->headlen += k;
        }
        if (m->arch_state == ARCH_UNDECIDED && m->headlen == sizeof m->head)
            arch_decide(m, p);
        if (m->arch_state == ARCH_KEEP && n > k)
            arch_keep(m, d + k, n - k);
    }
}

static bool glob_list(const char *list, const char *s, bool ext)
{
    for (const char *v = list; *v; v += strlen(v) + 1) {
        if (ext ? strcasecmp(v, s) == 0 : fnmatch(v, s, FNM_CASEFOLD) == 0)
            return true;
    }
    return false;
}

/* Does a `flag=` list name one of the flags set? */
static bool flag_list(const char *list, unsigned flags)
{
    static const char *const names[] = {"archive", "encrypted", "corrupt", "limit"};
    for (unsigned b = 0; b < 4; b++)
        if ((flags & (1u << b)) && glob_list(list, names[b], true))
            return true;
    return false;
}

/*
 * Run the attachment rules on one attachment: a MIME part (member false) or
 * an archive member. `name` is what name= and ext= see (a member's path in
 * its archive; name= also tries its last component), `path` what the result
 * names, `flags` its enum mx_archive_flag.
 */
static void attach_rules(struct mx_scan_msg *m, const char *path, const char *name,
                         const char *ctype, const char *truetype, bool member, unsigned flags)
{
    struct mx_scan_engine *e = m->w->e;
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    const char *dot = strrchr(base, '.');
    const char *ext = dot ? dot + 1 : "";
    for (size_t k = 0; k < e->nattachs; k++) {
        struct mx_rule *r = &e->rs.rules[e->attachs[k]];
        bool all = r->nconds > 0;
        for (size_t c = 0; c < r->nconds && all; c++) {
            const struct mx_attach_cond *ac = &r->conds[c];
            bool hit = false;
            switch (ac->field) {
            case 'n':
                hit = glob_list(ac->values, name, false) ||
                      (base != name && glob_list(ac->values, base, false));
                break;
            case 'e':
                hit = glob_list(ac->values, ext, true);
                break;
            case 't':
                hit = glob_list(ac->values, ctype, false);
                break;
            case 'l':
                hit = glob_list(ac->values, member ? "member" : "top", true);
                break;
            case 'f':
                hit = flag_list(ac->values, flags);
                break;
            default:
                hit = glob_list(ac->values, truetype, false);
                break;
            }
            all = ac->negate ? !hit : hit;
        }
        if (!all)
            continue;
        if (m->count[e->attachs[k]] < UINT16_MAX)
            m->count[e->attachs[k]]++;
        if (!m->att_hit_rule && strncmp(r->name, "__", 2) != 0) {
            snprintf(m->att_hit, sizeof m->att_hit, "%s", path);
            m->att_hit_rule = r->name;
        }
    }
}

/* Text: no control bytes but whitespace (bytes >= 0x80 allowed: UTF-8,
 * legacy charsets). */
static bool looks_text(const uint8_t *d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (d[i] < 0x20 && d[i] != '\t' && d[i] != '\n' && d[i] != '\r' && d[i] != '\f')
            return false;
    return n > 0;
}

/* An attachment's or member's true type from its first bytes: libmagic, but a
 * text head is "text/plain" when no rule tells text types apart. */
static void true_type(struct mx_scan_msg *m, const uint8_t *d, size_t n, char *out, size_t cap)
{
    if (!m->w->e->text_types && looks_text(d, n)) {
        snprintf(out, cap, "text/plain");
        return;
    }
    const char *tt = n ? magic_buffer(m->w->magic, d, n) : NULL;
    snprintf(out, cap, "%s", tt ? tt : "application/x-empty");
}

/*
 * An archive member: its true type stands for the declared type it lacks.
 * Text members are typed like text attachments (true_type()): a zip of 1000
 * small text files costs milliseconds, not seconds, unless rules need the
 * finer text types.
 */
static void on_member(void *ud, const struct mx_archive_member *mb)
{
    struct mx_scan_msg *m = ud;
    char truetype[128];
    true_type(m, mb->head, mb->headlen, truetype, sizeof truetype);
    attach_rules(m, mb->path, mb->name, truetype, truetype, true, mb->flags);
}

/* Evaluate attachment rules on a finished attachment part, and on every
 * member when it is an archive (members first: the result names the first
 * hit, and "invoice.zip/x.exe" says more than "invoice.zip"). */
static void check_attachment(struct mx_scan_msg *m, const struct mx_mime_part *p)
{
    struct mx_scan_engine *e = m->w->e;
    if (!e->nattachs)
        return;
    char truetype[128];
    true_type(m, m->head, m->headlen, truetype, sizeof truetype);
    const char *path = p->filename[0] ? p->filename : "(no name)";
    if (m->arch_state == ARCH_UNDECIDED)
        arch_decide(m, p);
    unsigned af = 0;
    if (m->arch_state == ARCH_OVER) {
        af = MX_ARCH_ARCHIVE | MX_ARCH_LIMIT;
    } else if (m->arch_state == ARCH_KEEP) {
        /* the per-attachment limits, or what is left of the message's
         * budget when that is less: hitting either is `limit` */
        uint64_t tleft = e->o.archive_max_message_total - m->arch_msg_total;
        unsigned mleft = e->o.archive_max_message_members - m->arch_msg_members;
        uint64_t cleft = (uint64_t)e->o.archive_max_message_cpu_ms * 1000000u - m->arch_msg_cpu_ns;
        struct mx_archive_limits lim = {
            e->o.archive_max_bytes,
            e->o.archive_max_depth,
            mleft < e->o.archive_max_members ? mleft : e->o.archive_max_members,
            tleft < e->o.archive_max_total ? tleft : e->o.archive_max_total,
            cleft,
            e->o.archive_max_total};
        struct mx_archive_usage use;
        bool whole = m->headlen < sizeof m->head;
        af = mx_archive_walk(whole ? m->head : m->arch, whole ? m->headlen : m->arch_len, path,
                             &lim, on_member, m, &use);
        /* a walk stops one byte past its limit: the sum stays bounded */
        m->arch_msg_total += use.total < tleft ? use.total : tleft;
        m->arch_msg_members += use.members < mleft ? use.members : mleft;
        m->arch_msg_cpu_ns += use.cpu_ns < cleft ? use.cpu_ns : cleft;
    }
    if (af & MX_ARCH_ENCRYPTED)
        m->flags |= MX_SCAN_ENCRYPTED;
    if (af & MX_ARCH_CORRUPT)
        m->flags |= MX_SCAN_ARCHIVE_CORRUPT;
    if (af & MX_ARCH_LIMIT)
        m->flags |= MX_SCAN_TRUNCATED;
    attach_rules(m, path, p->filename, p->ctype, truetype, false, af);
    /* a pooled message keeps a small buffer for the next archive, not a
     * large one: messages of many open sessions must not each hold MiBs */
    if (m->arch_cap > 256 * 1024) {
        free(m->arch);
        m->arch = NULL;
        m->arch_cap = 0;
    }
    m->arch_len = 0;
}

static void on_end(void *ud, const struct mx_mime_part *p)
{
    struct mx_scan_msg *m = ud;
    if (!p->multipart && !p->message && p->decoded_bytes && strcmp(p->ctype, "text/html") == 0)
        m->nmime.html_rendered = true;
    if ((int)p->index == m->text_part) {
        if (m->render) {
            mx_utf8_conv_end(&m->conv, text_emit, m);
            if (m->html && m->hstate == 3)
                html_entity(m);
            paragraph_break(m);
        }
        m->text_part = -1;
    }
    if ((int)p->index == m->att_part) {
        check_attachment(m, p);
        m->att_part = -1;
    }
}

static struct mx_scan_msg *msg_new(struct mx_scan_worker *w)
{
    struct mx_scan_engine *e = w->e;
    struct mx_scan_msg *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->w = w;
    struct mx_mime_callbacks cb = {on_header, on_begin, on_data, on_end};
    m->mp = mx_mime_parser_new(&cb, m);
    size_t nr = e->rs.nrules + 1;
    m->count = calloc(nr, sizeof *m->count);
    m->cand = calloc(nr, 1);
    m->val = calloc(nr, sizeof *m->val);
    m->dval = calloc(nr, sizeof *m->dval);
    m->mdirty = calloc(e->nmorder / 64 + 1, sizeof *m->mdirty);
    m->vstate = calloc(nr, 1);
    m->hcap = 64 * 1024;
    m->ha = malloc(m->hcap);
    m->hdrcap = 512;
    m->hdrs = calloc(m->hdrcap, sizeof *m->hdrs);
    m->body = malloc(e->o.body_keep);
    m->raw = malloc(e->o.body_keep);
    m->full = e->has_full ? malloc(e->o.full_keep) : NULL;
    m->streams = calloc(e->ng + 1, sizeof *m->streams);
    m->astreams = calloc(e->ng + 1, sizeof *m->astreams);
    for (int k = 0; k < 3; k++)
        m->stage[k] = malloc(STAGE_SIZE);
    m->ucap = 64 * 1024;
    m->ua = malloc(m->ucap);
    m->uoff = calloc(e->o.max_uris, sizeof *m->uoff);
    m->hits = calloc(nr, sizeof *m->hits);
    m->hit_scores = calloc(nr, sizeof *m->hit_scores);
    m->att_hits = calloc(nr, sizeof *m->att_hits);
    bool ok = m->mp && m->count && m->cand && m->val && m->dval && m->mdirty && m->vstate &&
              m->ha && m->hdrs &&
              m->body && m->raw && m->ua && m->uoff && m->hits && m->hit_scores && m->att_hits &&
              m->streams && m->astreams && (m->full || !e->has_full) && m->stage[0] &&
              m->stage[1] && m->stage[2];
    for (size_t i = 0; ok && i < e->ng; i++)
        if (e->g[i].db && group_mode(&e->g[i]) == HS_MODE_STREAM)
            ok = hs_open_stream(e->g[i].db, 0, &m->streams[i]) == HS_SUCCESS &&
                 (!e->g[i].adb || hs_open_stream(e->g[i].adb, 0, &m->astreams[i]) == HS_SUCCESS);
    if (!ok) {
        msg_destroy(m);
        return NULL;
    }
    return m;
}

struct mx_scan_msg *mx_scan_msg_begin(struct mx_scan_worker *w)
{
    struct mx_scan_msg *m = w->free_list;
    if (m)
        w->free_list = m->next_free;
    else if (!(m = msg_new(w)))
        return NULL;
    size_t nr = w->e->rs.nrules + 1;
    if (m->dirty) {
        memset(m->count, 0, nr * sizeof *m->count);
        memset(m->cand, 0, nr);
        memset(m->val, 0, nr * sizeof *m->val);
        memset(m->vstate, 0, nr);
    }
    m->dirty = true;
    m->next_free = NULL;
    m->ended = false;
    m->flags = 0;
    m->hlen = m->nhdrs = 0;
    m->blen = m->rlen = m->flen = 0;
    m->nrpart = 0;
    m->rpart_last = -1;
    m->stage_len[0] = m->stage_len[1] = m->stage_len[2] = 0;
    m->in_subject = false;
    m->subj_len = 0;
    memset(m->wrote, 0, sizeof m->wrote);
    m->ulen = 0;
    m->nuri = 0;
    m->ws_nl = -1;
    m->at_start = true;
    m->sa_ws = m->body_start = false;
    m->toklen = 0;
    m->tok_over = false;
    m->text_part = m->att_part = -1;
    m->nattach = 0;
    m->arch_msg_total = 0;
    m->arch_msg_members = 0;
    m->arch_msg_cpu_ns = 0;
    m->att_hit[0] = 0;
    m->att_hit_rule = NULL;
    m->nhits = m->natt_hits = 0;
    m->regex_errors = 0;
    m->rev_of = NULL;
    m->ascii = w->e->has_ascii;
    m->bwritten = 0;
    m->envfrom[0] = 0;
    memset(&m->nmime, 0, sizeof m->nmime);
    m->fed = m->body_at = 0;
    m->line_len = 0;
    m->line_cr = false;
    mx_mime_parser_reset(m->mp);
    w->live++;
    return m;
}

void mx_scan_msg_set_envelope(struct mx_scan_msg *m, const char *from)
{
    snprintf(m->envfrom, sizeof m->envfrom, "%s", from ? from : "");
}

int mx_scan_msg_feed(struct mx_scan_msg *m, const uint8_t *buf, size_t len)
{
    struct mx_scan_engine *e = m->w->e;
    if (m->ended)
        return -EINVAL;
    scan_streams(m, SC_FULL, (const char *)buf, len);
    if (m->full)
        keep(m->full, &m->flen, e->o.full_keep, (const char *)buf, len, &m->flags);
    mx_mime_parser_feed(m->mp, buf, len);
    /* where the body starts, for check_body_length (SpamAssassin's pristine body) */
    for (size_t i = 0; i < len && !m->body_at; i++) {
        if (buf[i] == '\n') {
            if (m->line_len == 0 || (m->line_len == 1 && m->line_cr))
                m->body_at = m->fed + i + 1;
            m->line_len = 0;
        } else if (m->line_len < 2) {
            if (m->line_len == 0)
                m->line_cr = buf[i] == '\r';
            m->line_len++;
        }
    }
    m->fed += len;
    return 0;
}

/* ---- end of message: header scans, confirmations, DLP, metas ------------- */

static unsigned pcre_count(struct mx_scan_msg *m, uint32_t ri, const char *s, size_t n);

/* a profiler's account of one PCRE2 confirmation of rule ri begun at t0 */
static void prof_pcre(struct mx_scan_prof *p, uint32_t ri, uint64_t t0)
{
    if (!p)
        return;
    p->r_pcre_ns[ri] += mx_cpu_ns() - t0;
    p->r_pcre_calls[ri]++;
}

static bool pcre_hit(struct mx_scan_msg *m, uint32_t ri, const char *s, size_t n)
{
    pcre2_code *pc = m->w->e->er[ri].pc;
    if (!pc)
        return false;
    struct mx_scan_prof *p = m->w->prof;
    uint64_t t0 = p ? mx_cpu_ns() : 0;
    int rc = rx_match(m, pc, s, n, 0);
    prof_pcre(p, ri, t0);
    return rc >= 0;
}

struct vbuf {
    char *s;
    size_t n, cap;
};

static void vb_add(struct vbuf *b, const char *s, size_t n)
{
    size_t room = b->n + 1 < b->cap ? b->cap - b->n - 1 : 0;
    if (n > room)
        n = room;
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

/* End of the address that starts at `at` in an address list: the next ','
 * outside quotes, <...> and comments (or n). */
static size_t addr_piece(const char *v, size_t n, size_t at)
{
    int angle = 0, paren = 0;
    bool quote = false;
    for (size_t i = at; i < n; i++) {
        char c = v[i];
        if (quote) {
            if (c == '\\' && i + 1 < n)
                i++;
            else if (c == '"')
                quote = false;
        } else if (c == '"') {
            quote = true;
        } else if (c == '(') {
            paren++;
        } else if (c == ')' && paren) {
            paren--;
        } else if (c == '<' && !paren) {
            angle = 1;
        } else if (c == '>' && !paren) {
            angle = 0;
        } else if (c == ',' && !angle && !paren) {
            return i;
        }
    }
    return n;
}

/* first address of an address header (for :addr); none of "<@a,@b:x@y>"
 * (a source route: SA's parse_header_addresses finds no address there) */
static size_t addr_of(const char *v, size_t n, char *out, size_t cap)
{
    const char *lt = memchr(v, '<', n);
    const char *s = v, *e = v + n;
    if (lt) {
        const char *gt = memchr(lt, '>', (size_t)(e - lt));
        s = lt + 1;
        e = gt ? gt : e;
    } else {
        const char *at = memchr(v, '@', n);
        if (at) {
            s = at;
            while (s > v && !isspace((unsigned char)s[-1]) && s[-1] != ',' && s[-1] != '(')
                s--;
            e = at;
            while (e < v + n && !isspace((unsigned char)*e) && *e != ',' && *e != ')')
                e++;
        }
    }
    if (lt && s < e && *s == '@') {
        out[0] = 0;
        return 0;
    }
    while (s < e && isspace((unsigned char)*s))
        s++;
    while (e > s && isspace((unsigned char)e[-1]))
        e--;
    size_t k = (size_t)(e - s) < cap - 1 ? (size_t)(e - s) : cap - 1;
    memcpy(out, s, k);
    out[k] = 0;
    return k;
}

static size_t name_of(const char *v, size_t n, char *out, size_t cap)
{
    const char *lt = memchr(v, '<', n);
    const char *s = v, *e = lt ? lt : v;
    if (!lt) {
        const char *po = memchr(v, '(', n);
        const char *pc = po ? memchr(po, ')', n - (size_t)(po - v)) : NULL;
        if (po && pc)
            s = po + 1, e = pc;
    }
    while (s < e && (isspace((unsigned char)*s) || *s == '"'))
        s++;
    while (e > s && (isspace((unsigned char)e[-1]) || e[-1] == '"'))
        e--;
    size_t k = (size_t)(e - s) < cap - 1 ? (size_t)(e - s) : cap - 1;
    memcpy(out, s, k);
    out[k] = 0;
    return k;
}

/* SpamAssassin's relay records of the message's Received chain
 * (scan/received.c), for the X-Spam-Relays-* pseudo headers */
static struct mx_relays *relays_of(struct mx_scan_msg *m)
{
    /* the records (256 KiB: each parsed line clears its own) stay with the
     * message object for the next one: allocated and zeroed per message
     * they were 5% of the scan time of a small message */
    if (!m->relr && !(m->relr = malloc(MX_RCVD_MAX_RELAYS * sizeof *m->relr)))
        return NULL;
    struct mx_relays *rel = calloc(1, sizeof *rel);
    struct mx_rcvd_hdr *h = rel ? calloc(m->nhdrs ? m->nhdrs : 1, sizeof *h) : NULL;
    if (!h) {
        free(rel);
        return NULL;
    }
    rel->r = m->relr;
    for (size_t i = 0; i < m->nhdrs; i++)
        h[i] = (struct mx_rcvd_hdr){m->ha + m->hdrs[i].no, m->ha + m->hdrs[i].vo,
                                    m->hdrs[i].nl, m->hdrs[i].vl};
    mx_relays_build(rel, h, m->nhdrs);
    free(h);
    return rel;
}

/* Does SpamAssassin decode RFC 2047 words in this field? Not in Received,
 * (Resent-)Message-ID, (Resent-)Date, MIME-Version, References, In-Reply-To
 * and List-* (Message::Node::_decode_header, bugs 6945 and 7249). */
static bool sa_decodes(const char *name, size_t nl)
{
    static const char *const keep[] = {"received",   "message-id",  "resent-message-id",
                                       "date",       "resent-date", "mime-version",
                                       "references", "in-reply-to", NULL};
    for (size_t k = 0; keep[k]; k++)
        if (nl == strlen(keep[k]) && strncasecmp(name, keep[k], nl) == 0)
            return false;
    return !(nl >= 5 && strncasecmp(name, "list-", 5) == 0);
}

/* One header's value as SpamAssassin's header rules see it
 * (Message::Node::header(): unfolded by the MIME parser, trailing
 * whitespace removed, RFC 2047 words decoded where SA decodes them). */
static size_t sa_header_text(const char *name, size_t nl, const char *v, size_t vl, char *out,
                             size_t cap)
{
    while (vl && isspace((unsigned char)v[vl - 1]))
        vl--;
    if (sa_decodes(name, nl))
        return mx_mime_decode_header(v, vl, out, cap);
    size_t k = vl < cap - 1 ? vl : cap - 1;
    memcpy(out, v, k);
    out[k] = 0;
    return k;
}

/* Is `want` one of the ':'-separated modifiers in mod ("name:raw")? */
static bool has_mod(const char *mod, const char *want)
{
    size_t wl = strlen(want);
    for (const char *p = mod; *p;) {
        const char *e = strchr(p, ':');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == wl && memcmp(p, want, wl) == 0)
            return true;
        p += l + (e != NULL);
    }
    return false;
}

/* The text a header rule of `target` is matched against. Returns false
 * when the header is absent (the value is then empty). `*rel` caches the
 * relay records (built on first use, freed by the caller). */
static bool header_value(struct mx_scan_msg *m, const char *target, struct vbuf *b,
                         struct mx_relays **rel)
{
    char name[128];
    const char *colon = strchr(target, ':');
    size_t nl = colon ? (size_t)(colon - target) : strlen(target);
    const char *mod = colon ? colon + 1 : "";
    if (nl >= sizeof name)
        nl = sizeof name - 1;
    memcpy(name, target, nl);
    name[nl] = 0;
    b->n = 0;
    b->s[0] = 0;
    bool found = false;
    if (strcmp(name, "ALL") == 0 && has_mod(mod, "raw") && m->full) {
        /* ALL:raw: the header block as it came (folds and line ends kept),
         * without an mbox From line, continuation lines before the first
         * field, and the empty line (SA: get_pristine_header() fields) */
        const char *h = m->full;
        size_t end = m->body_at && m->body_at <= m->flen ? (size_t)m->body_at : m->flen, i = 0;
        if (end >= 5 && memcmp(h, "From ", 5) == 0)
            while (i < end && h[i++] != '\n')
                ;
        while (i < end && (h[i] == ' ' || h[i] == '\t'))
            while (i < end && h[i++] != '\n')
                ;
        if (m->body_at && m->body_at <= m->flen && end > i) {
            end--;
            if (end > i && h[end - 1] == '\r')
                end--;
        }
        vb_add(b, h + i, end - i);
        return end > i;
    }
    if (strcmp(name, "ALL") == 0) {
        /* get_all_headers(0): "Name: value" with the values of header() */
        for (size_t i = 0; i < m->nhdrs; i++) {
            const struct hdr *h = &m->hdrs[i];
            char tmp[4096];
            vb_add(b, m->ha + h->no, h->nl);
            vb_add(b, ": ", 2);
            vb_add(b, tmp, sa_header_text(m->ha + h->no, h->nl, m->ha + h->vo, h->vl, tmp,
                                          sizeof tmp));
            vb_add(b, "\n", 1);
        }
        return m->nhdrs > 0;
    }
    if (strcmp(name, "EnvelopeFrom") == 0) {
        if (m->envfrom[0]) {
            vb_add(b, m->envfrom, strlen(m->envfrom));
            vb_add(b, "\n", 1);
            return true;
        }
        const struct hdr *h = find_hdr(m, "return-path", 0);
        if (!h)
            return false;
        vb_add(b, m->ha + h->vo, h->vl);
        vb_add(b, "\n", 1);
        return true;
    }
    long rstart, rend;
    if (strncmp(name, "ALL-", 4) == 0 && mx_relays_all_range(&(struct mx_relays){0}, name,
                                                              &rstart, &rend)) {
        /* ALL-TRUSTED...: the ALL lines of a range of Received headers */
        if (!*rel)
            *rel = relays_of(m);
        if (!*rel)
            return false;
        mx_relays_all_range(*rel, name, &rstart, &rend);
        long cur = -1;
        for (size_t i = 0; i < m->nhdrs; i++) {
            const struct hdr *h = &m->hdrs[i];
            cur += h->nl == 8 && strncasecmp(m->ha + h->no, "received", 8) == 0;
            if (!(rstart <= cur && cur <= rend))
                continue;
            vb_add(b, m->ha + h->no, h->nl);
            vb_add(b, ": ", 2);
            vb_add(b, m->ha + h->vo, h->vl);
            vb_add(b, "\n", 1);
            found = true;
            if (cur == rend)
                break;
        }
        return found;
    }
    enum mx_relays_which which;
    if (mx_relays_name(name, &which)) {
        /* always present, as in SA (an empty string without relays) */
        if (!*rel)
            *rel = relays_of(m);
        if (*rel)
            b->n = mx_relays_string(*rel, which, b->s, b->cap);
        return true;
    }
    static const char *const tocc[] = {"to", "cc", NULL};
    static const char *const msgid[] = {"message-id", "resent-message-id", "x-message-id", NULL};
    const char *single[2] = {name, NULL};
    const char *const *names = strcmp(name, "ToCc") == 0        ? tocc
                               : strcmp(name, "MESSAGEID") == 0 ? msgid
                                                                : single;
    /* modifiers in any order and combination (SA's _get): "name:raw" is the
     * display name as written, not decoded */
    bool raw = has_mod(mod, "raw"), addr = has_mod(mod, "addr"), nm = has_mod(mod, "name");
    for (size_t k = 0; names[k]; k++) {
        for (size_t i = 0; i < m->nhdrs; i++) {
            const struct hdr *h = &m->hdrs[i];
            if (h->nl != strlen(names[k]) || strncasecmp(m->ha + h->no, names[k], h->nl) != 0)
                continue;
            const char *v = m->ha + h->vo;
            size_t vl = h->vl;
            char tmp[4096];
            size_t tl;
            if (raw) {
                tl = vl < sizeof tmp - 1 ? vl : sizeof tmp - 1;
                memcpy(tmp, v, tl);
                tmp[tl] = 0;
            } else {
                tl = sa_header_text(m->ha + h->no, h->nl, v, vl, tmp, sizeof tmp);
            }
            found = true;
            if (!addr && !nm) {
                vb_add(b, tmp, tl);
                vb_add(b, "\n", 1);
                continue;
            }
            /* every address of every such header, one a line, no line
             * end after the last (SA 4 returns them all, bug 8121 joins) */
            for (size_t at = 0; at < tl;) {
                size_t pe = addr_piece(tmp, tl, at);
                char a[1024];
                size_t al = addr ? addr_of(tmp + at, pe - at, a, sizeof a)
                                 : name_of(tmp + at, pe - at, a, sizeof a);
                if (al) {
                    if (b->n)
                        vb_add(b, "\n", 1);
                    vb_add(b, a, al);
                }
                at = pe + 1;
            }
        }
    }
    return found;
}

static void scan_headers(struct mx_scan_msg *m)
{
    struct mx_scan_engine *e = m->w->e;
    char store[65536];
    struct vbuf b = {store, 0, sizeof store};
    struct mx_relays *rel = NULL;
    for (size_t gi = 0; gi < e->ng; gi++) {
        struct group *g = &e->g[gi];
        if (g->scope != SC_HEADER)
            continue;
        bool present = header_value(m, g->target, &b, &rel);
        for (size_t k = 0; k < g->nexists; k++)
            m->count[g->exists[k]] = present;
        if (!g->db && !g->npcre)
            continue;
        bool any_unset = !present && g->has_unset;
        if (g->db && !any_unset && (b.n || g->empty_matches))
            hs_call(m, gi, NULL, b.s, b.n, on_match);
        /* candidates and rules needing PCRE2 */
        for (size_t k = 0; !any_unset && k < g->npre; k++)
            if (m->cand[g->pre[k]])
                m->count[g->pre[k]] = (uint16_t)pcre_count(m, g->pre[k], b.s, b.n);
        /* or with an unset header, every rule: its unset value, or the
         * empty value */
        for (size_t k = 0; any_unset && k < g->nrules; k++) {
            uint32_t ri = g->rules[k];
            const char *u = e->rs.rules[ri].ifunset;
            if (u)
                m->count[ri] = pcre_hit(m, ri, u, strlen(u)) ||
                               (e->er[ri].how == HOW_HS && !e->er[ri].pc);
            else
                m->count[ri] = pcre_hit(m, ri, b.s, b.n);
        }
        for (size_t k = 0; k < g->npcre; k++) {
            uint32_t ri = g->pcre[k];
            const struct mx_rule *r = &e->rs.rules[ri];
            const char *s = !present && r->ifunset ? r->ifunset : b.s;
            m->count[ri] = (uint16_t)pcre_count(m, ri, s, strlen(s) < b.n && s == b.s ? b.n : strlen(s));
        }
        /* !~ rules hit when the regex does not match */
        for (size_t k = 0; k < g->nneg; k++)
            m->count[g->neg[k]] = !m->count[g->neg[k]];
    }
    free(rel);
}

/* PCRE2's count of a confirmed rule: 1 for a hit, or for `tflags multiple`
 * the number of matches as Perl's `while (/re/g)` finds them (each search
 * resumes at the end of the previous match, one further after an empty
 * one), up to maxhits. A `multiple` rule confirmed by PCRE2 used to count 1,
 * so `__FILL_THIS_FORM_PARTIAL > 4` could never be true. */
static unsigned pcre_count(struct mx_scan_msg *m, uint32_t ri, const char *s, size_t n)
{
    const struct erule *er = &m->w->e->er[ri];
    if (!er->multiple)
        return pcre_hit(m, ri, s, n);
    unsigned max = er->maxhits ? er->maxhits : UINT16_MAX;
    unsigned c = 0;
    size_t off = 0;
    struct mx_scan_prof *p = m->w->prof;
    uint64_t t0 = p ? mx_cpu_ns() : 0;
    while (c < max && off <= n) {
        if (rx_match(m, er->pc, s, n, off) < 0)
            break;
        c++;
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(m->w->md);
        off = ov[1] > ov[0] ? ov[1] : ov[1] + 1;
    }
    prof_pcre(p, ri, t0);
    return c;
}

/* Rules found by prefilter or needing PCRE2 alone, on kept text (URIs). */
static void confirm(struct mx_scan_msg *m, int gi, const char *s, size_t n)
{
    struct mx_scan_engine *e = m->w->e;
    if (gi < 0)
        return;
    struct group *g = &e->g[gi];
    for (size_t k = 0; k < g->npre + g->npcre; k++) {
        uint32_t ri = k < g->npre ? g->pre[k] : g->pcre[k - g->npre];
        if (k >= g->npre || m->cand[ri]) {
            /* added up over the URIs, as Hyperscan's matches are (a rule
             * used to keep the last candidate URI's result) */
            unsigned c = m->count[ri] + pcre_count(m, ri, s, n);
            m->count[ri] = (uint16_t)(c < UINT16_MAX ? c : UINT16_MAX);
        }
    }
}

/*
 * Body, raw-body and full rules that need PCRE2 (prefilter candidates, and
 * rules PCRE2 runs alone) are confirmed lazily: marked CAND_PENDING at end
 * of message and run when a value is first read (count_of()), so a rule
 * only a short-circuited meta operand needs never runs. PCRE2 confirmation
 * was ~120 ms per corpus pass, one `__FILL_THIS_FORM_FRAUD_PHISH1` 19 ms of
 * it, whose only reader is `(__FILL_THIS_FORM || __FILL_THIS_FORM_SHORT) &&
 * (__FILL_THIS_FORM_FRAUD_PHISH1 || ...)`. Values are the same: confirmation
 * reads only the kept text, which stays until the message is freed.
 */

static void mark_pending(struct mx_scan_msg *m, int gi)
{
    const struct mx_scan_engine *e = m->w->e;
    const struct group *g = &e->g[gi];
    for (size_t k = 0; k < g->npre; k++) {
        uint32_t ri = g->pre[k];
        uint8_t want = e->er[ri].twin ? CAND_YES | CAND_TWIN : CAND_YES;
        m->cand[ri] = (m->cand[ri] & want) == want ? CAND_PENDING : CAND_NO;
        /* a chunk can start where no line does (after '>', ' ') */
        if (e->er[ri].chunked)
            m->cand[ri] = CAND_PENDING;
    }
    /* rules PCRE2 runs alone, unless the message stayed in ASCII MODE and
     * the ASCII variant ran the rule (see pcre_ascii()) */
    bool ascii = m->ascii && m->wrote[SC_BODY] && (g->adb || g->ascii_empty);
    for (size_t k = 0; k < g->npcre; k++) {
        uint32_t ri = g->pcre[k];
        uint8_t a = ascii ? e->er[ri].ascii : ASCII_NO;
        m->cand[ri] = a == ASCII_NO || (a == ASCII_PREFILTER && (m->cand[ri] & CAND_YES))
                          ? CAND_PENDING
                          : CAND_NO;
    }
}

/* Located confirmation (struct locator). More possible starts than this
 * (hostile text) mean a plain search instead. */
#define LOC_MAX_STARTS 65536

static int on_start(unsigned id, unsigned long long from, unsigned long long to, unsigned fl,
                    void *ctx)
{
    (void)id;
    (void)from;
    (void)fl;
    struct mx_scan_msg *m = ctx;
    if (m->nstarts == m->startcap) {
        size_t nc = m->startcap ? 2 * m->startcap : 256;
        uint32_t *ns = nc <= LOC_MAX_STARTS ? realloc(m->starts, nc * sizeof *ns) : NULL;
        if (!ns) {
            m->starts_over = true;
            return 1; /* stop: search everywhere */
        }
        m->starts = ns;
        m->startcap = nc;
    }
    m->starts[m->nstarts++] = (uint32_t)(m->rev_n - to);
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static bool located_hit(struct mx_scan_msg *m, uint32_t ri, const char *s, size_t n)
{
    struct mx_scan_worker *w = m->w;
    const struct erule *er = &w->e->er[ri];
    const struct locator *lc = &w->e->loc[er->loc - 1];
    if (n == 0 || n > UINT32_MAX)
        return pcre_hit(m, ri, s, n);
    uint64_t t0 = w->prof ? mx_cpu_ns() : 0;
    if (m->rev_of != s || m->rev_n != n) {
        if (n > m->revcap) {
            char *nr = realloc(m->rev, n);
            if (!nr)
                return pcre_hit(m, ri, s, n);
            m->rev = nr;
            m->revcap = n;
        }
        for (size_t i = 0; i < n; i++)
            m->rev[i] = s[n - 1 - i];
        m->rev_of = s;
        m->rev_n = n;
    }
    m->nstarts = 0;
    m->starts_over = false;
    hs_error_t hr = hs_scan(lc->db, m->rev, (unsigned)n, 0, w->scratch, on_start, m);
    if ((hr != HS_SUCCESS && hr != HS_SCAN_TERMINATED) || m->starts_over)
        return pcre_hit(m, ri, s, n);
    /* leftmost first, as a plain search would find it */
    qsort(m->starts, m->nstarts, sizeof *m->starts, cmp_u32);
    bool hit = false;
    for (size_t i = 0; i < m->nstarts && !hit; i++)
        hit = rx_match(m, lc->anchored, s, n, m->starts[i]) >= 0;
    prof_pcre(w->prof, ri, t0);
    return hit;
}

/*
 * SpamAssassin's rawbody rules run on an array: each text part's decoded
 * text, cut when over MAX_BODY_LINE_LENGTH (2048) into pieces of 2048 to
 * 4096 bytes, ending at the first "\n" (else '>', else ' ') from 2048 on, or
 * at 2048 (Message::split_into_array_of_short_paragraphs). Each piece is
 * matched alone: ^ is the piece's start, not every line's. The count of rule
 * ri over the pieces of the kept raw text (a `multiple` rule up to maxhits).
 */
static unsigned raw_chunks_count(struct mx_scan_msg *m, uint32_t ri)
{
    const struct erule *er = &m->w->e->er[ri];
    unsigned max = !er->multiple ? 1 : er->maxhits ? er->maxhits : UINT16_MAX;
    unsigned c = 0;
    for (unsigned k = 0; k < m->nrpart && c < max; k++) {
        const char *s = m->raw + m->rpart[k];
        size_t n = (k + 1 < m->nrpart ? m->rpart[k + 1] : m->rlen) - m->rpart[k];
        size_t ofs = 0;
        while (ofs < n && c < max) {
            size_t j = n - 1; /* last byte of this piece */
            if (n > RAW_LINE_MAX && n - ofs > 2 * RAW_LINE_MAX) {
                static const char ends[] = "\n> ";
                const char *hit = NULL;
                for (int t = 0; t < 3 && !hit; t++)
                    hit = memchr(s + ofs + RAW_LINE_MAX, ends[t], RAW_LINE_MAX);
                j = hit ? (size_t)(hit - s) : ofs + RAW_LINE_MAX;
            }
            unsigned got = pcre_count(m, ri, s + ofs, j + 1 - ofs);
            c += got < max - c ? got : max - c;
            ofs = j + 1;
        }
    }
    return c;
}

static void confirm_now(struct mx_scan_msg *m, uint32_t ri)
{
    const struct mx_scan_engine *e = m->w->e;
    const struct group *g = &e->g[e->er[ri].group];
    m->cand[ri] = CAND_DONE;
    const char *s;
    size_t n;
    if (g->scope == SC_BODY && g->nosubject)
        s = m->body + m->subj_len, n = m->blen - m->subj_len;
    else if (g->scope == SC_BODY)
        s = m->body, n = m->blen;
    else if (g->scope == SC_RAWBODY)
        s = m->raw, n = m->rlen;
    else if (g->scope == SC_FULL && m->full)
        s = m->full, n = m->flen;
    else
        return;
    const struct erule *er = &e->er[ri];
    if (er->chunked && g->scope == SC_RAWBODY)
        m->count[ri] = (uint16_t)raw_chunks_count(m, ri);
    else if (er->loc && !er->multiple)
        m->count[ri] = located_hit(m, ri, s, n);
    else
        m->count[ri] = (uint16_t)pcre_count(m, ri, s, n);
}

/* The count of a regex, DLP, attachment or native rule. */
static inline unsigned count_of(struct mx_scan_msg *m, uint32_t ri)
{
    if (m->cand[ri] == CAND_PENDING)
        confirm_now(m, ri);
    return m->count[ri];
}

static void scan_uris(struct mx_scan_msg *m)
{
    struct mx_scan_engine *e = m->w->e;
    for (size_t gi = 0; gi < e->ng; gi++) {
        struct group *g = &e->g[gi];
        if (g->scope != SC_URI)
            continue;
        for (unsigned i = 0; i < m->nuri; i++) {
            const char *u = m->ua + m->uoff[i];
            size_t n = strlen(u);
            if (g->db)
                hs_call(m, gi, NULL, u, n, on_match);
            confirm(m, (int)gi, u, n);
            /* prefilter candidates are per URI */
            for (size_t k = 0; k < g->npre; k++)
                m->cand[g->pre[k]] = 0;
        }
    }
}

static bool luhn(const char *d, size_t n)
{
    int sum = 0;
    for (size_t i = 0; i < n; i++) {
        int v = d[n - 1 - i] - '0';
        if (i & 1) {
            v *= 2;
            if (v > 9)
                v -= 9;
        }
        sum += v;
    }
    return sum % 10 == 0;
}

static bool iban_ok(const char *s, size_t n)
{
    if (n < 15 || n > 34)
        return false;
    unsigned rem = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[(i + 4) % n];
        unsigned v = isdigit((unsigned char)c) ? (unsigned)(c - '0') : (unsigned)(c - 'A' + 10);
        rem = v >= 10 ? (rem * 100 + v) % 97 : (rem * 10 + v) % 97;
    }
    return rem == 1;
}

static bool mynumber_ok(const char *d)
{
    int sum = 0;
    for (int n = 1; n <= 11; n++) {
        int p = d[11 - n] - '0';
        int q = n <= 6 ? n + 1 : n - 5;
        sum += p * q;
    }
    int r = sum % 11;
    int check = r <= 1 ? 0 : 11 - r;
    return check == d[11] - '0';
}

/* Count pattern-template matches in the rendered body text. */
static unsigned dlp_count(enum mx_dlp_kind k, const char *s, size_t n)
{
    unsigned count = 0;
    size_t i = 0;
    while (i < n) {
        if (k == MX_DLP_CREDITCARD || k == MX_DLP_MYNUMBER) {
            if (!isdigit((unsigned char)s[i]) || (i && isalnum((unsigned char)s[i - 1]))) {
                i++;
                continue;
            }
            char d[24];
            size_t nd = 0, j = i;
            while (j < n && nd < sizeof d) {
                if (isdigit((unsigned char)s[j]))
                    d[nd++] = s[j++];
                else if ((s[j] == ' ' || s[j] == '-') && j + 1 < n && isdigit((unsigned char)s[j + 1]))
                    j++;
                else
                    break;
            }
            if (!(j < n && isalnum((unsigned char)s[j]))) {
                if (k == MX_DLP_CREDITCARD && nd >= 13 && nd <= 19 && luhn(d, nd))
                    count++;
                if (k == MX_DLP_MYNUMBER && nd == 12 && mynumber_ok(d))
                    count++;
            }
            i = j > i ? j : i + 1;
        } else if (k == MX_DLP_IBAN) {
            if (!(i + 4 <= n && isupper((unsigned char)s[i]) && isupper((unsigned char)s[i + 1]) &&
                  isdigit((unsigned char)s[i + 2]) && isdigit((unsigned char)s[i + 3])) ||
                (i && isalnum((unsigned char)s[i - 1]))) {
                i++;
                continue;
            }
            char d[40];
            size_t nd = 0, j = i;
            while (j < n && nd < 34) {
                if (isupper((unsigned char)s[j]) || isdigit((unsigned char)s[j]))
                    d[nd++] = s[j++];
                else if (s[j] == ' ' && j + 1 < n && isalnum((unsigned char)s[j + 1]))
                    j++;
                else
                    break;
            }
            bool found = false;
            for (size_t l = nd; l >= 15 && !found; l--)
                found = iban_ok(d, l);
            count += found;
            i = j > i ? j : i + 1;
        } else { /* email addresses */
            if (s[i] != '@' || i == 0 || !isalnum((unsigned char)s[i - 1])) {
                i++;
                continue;
            }
            size_t j = i + 1;
            bool dot = false;
            while (j < n && (isalnum((unsigned char)s[j]) || s[j] == '.' || s[j] == '-'))
                dot |= s[j++] == '.';
            count += dot;
            i = j;
        }
    }
    return count;
}

static void run_dlp(struct mx_scan_msg *m)
{
    struct mx_scan_engine *e = m->w->e;
    if (!e->ndlps)
        return;
    if (e->dlp_g >= 0 && e->g[e->dlp_g].db)
        hs_call(m, (size_t)e->dlp_g, NULL, m->body, m->blen, on_term);
    for (size_t d = 0; d < e->ndlps; d++) {
        uint32_t ri = e->dlps[d];
        const struct mx_rule *r = &e->rs.rules[ri];
        double v = r->dlp_kind == MX_DLP_DICT ? m->val[ri] : dlp_count(r->dlp_kind, m->body, m->blen);
        m->val[ri] = 0;
        if (v >= r->dlp_threshold)
            m->count[ri] = 1;
    }
}

/* i-th value of a top-level header, for the native evals */
static const char *native_header(void *ud, const char *name, size_t i, size_t *len)
{
    const struct mx_scan_msg *m = ud;
    size_t nl = strlen(name);
    for (size_t k = 0; k < m->nhdrs; k++) {
        const struct hdr *h = &m->hdrs[k];
        if (h->nl != nl || strncasecmp(m->ha + h->no, name, nl) != 0 || i-- > 0)
            continue;
        *len = h->vl;
        return m->ha + h->vo;
    }
    return NULL;
}

static void run_natives(struct mx_scan_msg *m)
{
    const struct mx_scan_engine *e = m->w->e;
    if (!e->nnatives)
        return;
    struct mx_native_msg nm = {
        .header = native_header,
        .ud = m,
        .mime = m->nmime,
        .body_len = m->body_at ? m->fed - m->body_at : 0};
    struct mx_native_state st = {0};
    for (size_t k = 0; k < e->nnatives; k++) {
        uint32_t ri = e->natives[k];
        m->count[ri] = (uint16_t)mx_native_eval(&e->rs.rules[ri].native, &st, &nm);
    }
}

static double rule_value(struct mx_scan_msg *m, uint32_t ri, int depth);

/* Value of a counted rule (regex, DLP, attachment): hit or count. */
static inline double count_value(const struct erule *er, unsigned c)
{
    if (er->multiple)
        return er->maxhits && c > er->maxhits ? er->maxhits : c;
    return c > 0;
}

/* A meta rule's RPN program. Operands come from rule_value() (recursive,
 * memoised) or, when `ordered`, straight from the values of rules evaluated
 * before (see eval_metas()). */
static double rpn(struct mx_scan_msg *m, const struct erule *er, int depth, bool ordered)
{
    const struct erule *ers = m->w->e->er;
    double st[128];
    int sp = 0;
    for (size_t k = 0; k < er->nmeta && sp < 128; k++) {
        const struct mx_meta_tok *t = &er->meta[k];
        double a, b;
        if (er->skip[k] != NO_SKIP && sp > 0) {
            /* right operand of && / ||: needed only if the left one does
             * not decide (see meta_skips()) */
            uint8_t op = er->meta[er->skip[k]].op;
            if (op == MX_MOP_AND ? st[sp - 1] == 0 : st[sp - 1] != 0) {
                st[sp - 1] = op == MX_MOP_OR;
                k = er->skip[k];
                continue;
            }
        }
        switch (t->op) {
        case MX_MOP_RULE:
            if (!ordered)
                st[sp++] = rule_value(m, t->rule, depth + 1);
            else if (ers[t->rule].vkind == VK_META)
                st[sp++] = m->dval[t->rule];
            else if (ers[t->rule].vkind == VK_COUNT)
                st[sp++] = count_value(&ers[t->rule], count_of(m, t->rule));
            else
                st[sp++] = 0;
            continue;
        case MX_MOP_CONST:
            st[sp++] = t->k;
            continue;
        case MX_MOP_NOT:
            st[sp - 1] = st[sp - 1] == 0;
            continue;
        case MX_MOP_NEG:
            st[sp - 1] = -st[sp - 1];
            continue;
        }
        b = st[--sp];
        a = st[sp - 1];
        switch (t->op) {
        case MX_MOP_AND:
            a = (a != 0 && b != 0);
            break;
        case MX_MOP_OR:
            a = (a != 0 || b != 0);
            break;
        case MX_MOP_ADD:
            a += b;
            break;
        case MX_MOP_SUB:
            a -= b;
            break;
        case MX_MOP_MUL:
            a *= b;
            break;
        case MX_MOP_DIV:
            a = b != 0 ? a / b : 0;
            break;
        case MX_MOP_GT:
            a = a > b;
            break;
        case MX_MOP_LT:
            a = a < b;
            break;
        case MX_MOP_GE:
            a = a >= b;
            break;
        case MX_MOP_LE:
            a = a <= b;
            break;
        case MX_MOP_EQ:
            a = a == b;
            break;
        default:
            a = a != b;
            break;
        }
        st[sp - 1] = a;
    }
    return sp ? st[sp - 1] : 0;
}

/* Recursive, memoised evaluation; a cycle or a chain deeper than 64 counts
 * as 0. Used for rule sets whose meta graph is not a shallow DAG, and to
 * read single values after eval_metas(). */
static double rule_value(struct mx_scan_msg *m, uint32_t ri, int depth)
{
    const struct erule *er = &m->w->e->er[ri];
    if (m->vstate[ri] == 2)
        return m->val[ri];
    if (m->vstate[ri] == 1 || depth > 64)
        return 0; /* cycle */
    double v = 0;
    if (er->vkind == VK_META) {
        m->vstate[ri] = 1;
        v = rpn(m, er, depth, false);
    } else if (er->vkind == VK_COUNT) {
        v = count_value(er, count_of(m, ri));
    }
    m->val[ri] = (float)v;
    m->vstate[ri] = 2;
    return v;
}

/* the metas that read rule ri are to be evaluated */
static inline void meta_mark(const struct mx_scan_engine *e, uint64_t *dirty, uint32_t ri)
{
    for (uint32_t k = e->mdep_off[ri]; k < e->mdep_off[ri + 1]; k++)
        dirty[e->mdep[k] >> 6] |= 1ull << (e->mdep[k] & 63);
}

/*
 * Every meta rule in dependency order (computed at load, see
 * order_metas()): one pass over the engine's contiguous meta programs with
 * no recursion and no memo checks. The recursive evaluation was the hottest
 * function outside Hyperscan (13% of scan time), its operands scattered
 * over the heap.
 *
 * Sparse: a message sets few rules (~3 reported hits and a few dozen
 * sub-rules per corpus message, of 2,576), and a meta whose operands all
 * have the values they have when every counted rule is 0 has its value of
 * that case, computed once at load (mzero). So only the metas that read a
 * counted rule that is set (or still to be confirmed), or a meta whose
 * value differs from its zero value, are evaluated; the 921 stock metas
 * were a third of the scan time of a small message. Same values: each meta
 * evaluated sees its operands' final values, and every other one's
 * operands are those of the all-zero case. Layout 1 evaluates every meta,
 * so the scan-layout test compares the two on every rule of the corpus.
 */
static void eval_metas(struct mx_scan_msg *m)
{
    const struct mx_scan_engine *e = m->w->e;
    if (e->meta_recursive)
        return;
    uint64_t *dirty = m->mdirty;
    bool all = e->legacy_layout;
    memset(dirty, all ? 0xff : 0, (e->nmorder / 64 + 1) * sizeof *dirty);
    for (size_t k = 0; !all && k < e->nmseed; k++) {
        uint32_t ri = e->mseed[k];
        if (m->count[ri] || m->cand[ri] == CAND_PENDING)
            meta_mark(e, dirty, ri);
    }
    for (size_t k = 0; k < e->nmorder; k++) {
        uint32_t ri = e->morder[k];
        double v = all ? 0 : e->mzero[k];
        if (dirty[k >> 6] & (1ull << (k & 63))) {
            double z = v;
            v = rpn(m, &e->er[ri], 0, true);
            if (!all && v != z)
                meta_mark(e, dirty, ri);
        }
        m->dval[ri] = v;
        m->val[ri] = (float)v;
        m->vstate[ri] = 2;
    }
}

/*
 * Load time, for eval_metas(): who reads each rule, which counted rules
 * seed the evaluation, and every meta's value when all counted rules are 0
 * (the metas evaluated in order over a message with nothing set).
 */
static int meta_deps(struct mx_scan_engine *e)
{
    size_t nr = e->rs.nrules;
    e->mdep_off = calloc(nr + 2, sizeof *e->mdep_off);
    e->mzero = calloc(e->nmorder + 1, sizeof *e->mzero);
    struct mx_scan_worker zw = {.e = e};
    struct mx_scan_msg zm = {.w = &zw};
    zm.count = calloc(nr + 1, sizeof *zm.count);
    zm.cand = calloc(nr + 1, 1);
    zm.dval = calloc(nr + 1, sizeof *zm.dval);
    int rc = -ENOMEM;
    if (!e->mdep_off || !e->mzero || !zm.count || !zm.cand || !zm.dval)
        goto out;
    /* counts, then offsets (mdep_off[ri + 1] ends ri's list), then fill */
    for (size_t k = 0; k < e->nmorder; k++) {
        const struct erule *er = &e->er[e->morder[k]];
        for (size_t t = 0; t < er->nmeta; t++)
            if (er->meta[t].op == MX_MOP_RULE)
                e->mdep_off[er->meta[t].rule + 1]++;
    }
    for (size_t i = 0; i < nr; i++) {
        if (e->er[i].vkind == VK_COUNT && e->mdep_off[i + 1] &&
            add_u32(&e->mseed, &e->nmseed, (uint32_t)i))
            goto out;
        e->mdep_off[i + 1] += e->mdep_off[i];
    }
    e->mdep = malloc((e->mdep_off[nr] + 1) * sizeof *e->mdep);
    if (!e->mdep)
        goto out;
    for (size_t k = 0; k < e->nmorder; k++) {
        const struct erule *er = &e->er[e->morder[k]];
        for (size_t t = 0; t < er->nmeta; t++)
            if (er->meta[t].op == MX_MOP_RULE)
                e->mdep[e->mdep_off[er->meta[t].rule]++] = (uint32_t)k;
    }
    /* the fill moved each offset to the next list's start: shift back */
    memmove(e->mdep_off + 1, e->mdep_off, nr * sizeof *e->mdep_off);
    e->mdep_off[0] = 0;
    for (size_t k = 0; k < e->nmorder; k++) {
        uint32_t ri = e->morder[k];
        e->mzero[k] = rpn(&zm, &e->er[ri], 0, true);
        zm.dval[ri] = e->mzero[k];
    }
    rc = 0;
out:
    free(zm.count);
    free(zm.cand);
    free(zm.dval);
    return rc; /* an error fails the load */
}


double mx_scan_msg_rule_value(struct mx_scan_msg *m, size_t ri)
{
    if (!m->ended || ri >= m->w->e->rs.nrules)
        return 0;
    return rule_value(m, (uint32_t)ri, 0);
}

int mx_scan_msg_kept(const struct mx_scan_msg *m, const char *scope, const char **s, size_t *n)
{
    if (strcmp(scope, "body") == 0)
        *s = m->body, *n = m->blen;
    else if (strcmp(scope, "body:nosubject") == 0)
        *s = m->body + m->subj_len, *n = m->blen - m->subj_len;
    else if (strcmp(scope, "rawbody") == 0)
        *s = m->raw, *n = m->rlen;
    else if (strcmp(scope, "full") == 0 && m->full)
        *s = m->full, *n = m->flen;
    else
        return -ENOENT;
    return 0;
}

static int cmp_hit(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int mx_scan_msg_end(struct mx_scan_msg *m, struct mx_scan_result *res)
{
    struct mx_scan_engine *e = m->w->e;
    if (m->ended)
        return -EINVAL;
    mx_mime_parser_end(m->mp);
    m->ended = true;
    if (m->toklen)
        end_token(m);
    for (int k = 0; k < 3; k++)
        stage_flush(m, k);
    /* end of stream: reports $-anchored matches, leaves streams reusable */
    for (size_t i = 0; i < e->ng; i++) {
        const struct group *g = &e->g[i];
        if (!m->streams[i] || !(m->wrote[g->scope] || g->empty_matches))
            continue;
        if (m->ascii && g->scope == SC_BODY && (g->adb || g->ascii_empty)) {
            /* ASCII MODE to the end: the variant reports, the full stream
             * (never written) stays as it is */
            if (m->astreams[i])
                hs_call(m, i, m->astreams[i], NULL, 0, on_match);
            continue;
        }
        hs_call(m, i, m->streams[i], NULL, 0, on_match);
    }
    scan_headers(m);
    for (size_t k = 0; k < e->nmimehdrs; k++)
        if (e->rs.rules[e->mimehdrs[k]].negate)
            m->count[e->mimehdrs[k]] = !m->count[e->mimehdrs[k]];
    for (size_t i = 0; i < e->ng; i++)
        if (e->g[i].scope == SC_BODY || e->g[i].scope == SC_RAWBODY ||
            (e->g[i].scope == SC_FULL && m->full))
            mark_pending(m, (int)i);
    scan_uris(m);
    run_dlp(m);
    run_natives(m);
    eval_metas(m);
    /* values of every rule; the verdict sums reported rules */
    double score = 0;
    unsigned flags = m->flags;
    m->nhits = m->natt_hits = 0;
    for (size_t k = 0; k < e->nreport; k++) {
        uint32_t i = e->report[k];
        const struct mx_rule *r = &e->rs.rules[i];
        if (rule_value(m, i, 0) == 0)
            continue;
        m->hits[m->nhits++] = r->name;
        score += r->score;
        if (r->type == MX_RULE_DLP)
            flags |= MX_SCAN_DLP;
        if (r->type == MX_RULE_ATTACH) {
            flags |= MX_SCAN_ATTACHMENT;
            m->att_hits[m->natt_hits++] = r->name;
        }
    }
    qsort(m->hits, m->nhits, sizeof *m->hits, cmp_hit);
    qsort(m->att_hits, m->natt_hits, sizeof *m->att_hits, cmp_hit);
    for (unsigned i = 0; i < m->nhits; i++)
        m->hit_scores[i] = e->rs.rules[mx_rules_find(&e->rs, m->hits[i])].score;
    unsigned defects = mx_mime_parser_defects(m->mp);
    if (defects)
        flags |= MX_SCAN_MALFORMED;
    if (defects & (MX_MIME_DEF_TOO_DEEP | MX_MIME_DEF_TOO_MANY_PARTS | MX_MIME_DEF_HDR_TRUNCATED))
        flags |= MX_SCAN_TRUNCATED;
    if (m->regex_errors)
        flags |= MX_SCAN_TRUNCATED;
    /* round like SpamAssassin does before comparing */
    score = (double)(long long)(score * 1000 + (score < 0 ? -0.5 : 0.5)) / 1000;
    if (score >= e->o.threshold)
        flags |= MX_SCAN_SPAM;
    memset(res, 0, sizeof *res);
    res->score = score;
    res->threshold = e->o.threshold;
    res->flags = flags;
    res->nhits = m->nhits;
    res->hits = m->hits;
    res->hit_scores = m->hit_scores;
    res->defects = defects;
    res->nparts = mx_mime_parser_nparts(m->mp);
    res->nuris = m->nuri;
    res->nattachments = m->nattach;
    if (m->att_hit_rule) {
        res->attachment = m->att_hit;
        res->attachment_rule = m->att_hit_rule;
    }
    res->natt_hits = m->natt_hits;
    res->att_hits = m->att_hits;
    res->regex_errors = m->regex_errors;
    return 0;
}

const char *mx_scan_msg_uri(const struct mx_scan_msg *m, unsigned i)
{
    if (!m->ended || i >= m->nuri)
        return NULL;
    return m->ua + m->uoff[i];
}

void mx_scan_msg_free(struct mx_scan_msg *m)
{
    if (!m)
        return;
    struct mx_scan_worker *w = m->w;
    if (!m->ended) {
        /* abandoned mid-message: drop stream state without reporting */
        for (size_t i = 0; i < w->e->ng; i++) {
            if (m->streams[i])
                hs_reset_stream(m->streams[i], 0, NULL, NULL, NULL);
            if (m->astreams[i])
                hs_reset_stream(m->astreams[i], 0, NULL, NULL, NULL);
        }
    }
    m->next_free = w->free_list;
    w->free_list = m;
    w->live--;
}

/* ---- verdict headers ------------------------------------------------------ */

int mx_scan_render_headers(const struct mx_scan_result *r, char *buf, size_t cap)
{
    size_t o = 0;
    int n = snprintf(buf, cap, "X-Spam-Status: %s, score=%.1f required=%.1f tests=",
                     (r->flags & MX_SCAN_SPAM) ? "Yes" : "No", r->score, r->threshold);
    if (n < 0 || (size_t)n >= cap)
        return -ENOSPC;
    o = (size_t)n;
    size_t col = o;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            /* SpamAssassin writes "tests=none" when nothing hit */
            n = snprintf(buf + o, cap - o,
                         "%sversion=mxgate-0.1\r\nX-Spam-Score: %.1f\r\nX-Spam-Rules: %s",
                         r->nhits ? " " : "none ", r->score, r->nhits ? "" : "none");
            if (n < 0 || (size_t)n >= cap - o)
                return -ENOSPC;
            o += (size_t)n;
            col = 14;
        }
        for (unsigned i = 0; i < r->nhits; i++) {
            size_t l = strlen(r->hits[i]);
            if (o + l + 5 >= cap)
                return -ENOSPC;
            if (col + l + 1 > 78 && i > 0) {
                memcpy(buf + o, "\r\n\t", 3);
                o += 3;
                col = 8;
            }
            memcpy(buf + o, r->hits[i], l);
            o += l;
            col += l;
            if (i + 1 < r->nhits) {
                buf[o++] = ',';
                col++;
            }
        }
    }
    if (o + 3 > cap)
        return -ENOSPC;
    memcpy(buf + o, "\r\n", 3);
    return (int)(o + 2);
}

bool mx_scan_is_verdict_header(const char *name, size_t len)
{
    static const char *const names[] = {"X-Spam-Status", "X-Spam-Score", "X-Spam-Rules",
                                        "X-Spam-Flag",   "X-Spam-Level", "X-Virus-Status"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == len && strncasecmp(names[i], name, len) == 0)
            return true;
    return false;
}

size_t mx_scan_strip_verdict_headers(const char *in, size_t n, char *out, size_t cap)
{
    size_t o = 0, i = 0;
    bool dropping = false;
    while (i < n) {
        const char *nl = memchr(in + i, '\n', n - i);
        size_t end = nl ? (size_t)(nl - in) + 1 : n;
        const char *line = in + i;
        size_t ll = end - i;
        if (ll && (line[0] == ' ' || line[0] == '\t')) {
            /* continuation: follows its field */
        } else {
            const char *colon = memchr(line, ':', ll);
            size_t nl2 = colon ? (size_t)(colon - line) : 0;
            while (nl2 && (line[nl2 - 1] == ' ' || line[nl2 - 1] == '\t'))
                nl2--;
            dropping = colon && mx_scan_is_verdict_header(line, nl2);
        }
        if (!dropping) {
            size_t k = ll < cap - o ? ll : cap - o;
            memcpy(out + o, line, k);
            o += k;
        }
        i = end;
    }
    return o;
}
