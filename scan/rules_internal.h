/*
 * rules_internal.h - the rule set: a parser for a superset of SpamAssassin's
 * rule-file format (header/body/rawbody/uri/full/meta/score/describe/tflags,
 * ifplugin/if/else/endif, loadplugin, replace_tags) plus mxgate's `dlp`,
 * `dlp_term` and `attachment` rules; meta expressions compiled to RPN.
 */
#ifndef MX_SCAN_RULES_INTERNAL_H
#define MX_SCAN_RULES_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "scan/evals_internal.h"

enum mx_rule_type {
    MX_RULE_NONE = 0, /* referenced (score, meta) but never defined */
    MX_RULE_HEADER,
    MX_RULE_BODY,
    MX_RULE_RAWBODY,
    MX_RULE_URI,
    MX_RULE_FULL,
    MX_RULE_META,
    MX_RULE_DLP,
    MX_RULE_ATTACH,
    MX_RULE_MIMEHEADER, /* header rule on every MIME part's headers */
    MX_RULE_SKIPPED, /* eval:, askdns, ... (reason in skip) */
    MX_RULE_MIMEEVAL, /* eval:check_for_mime('mime_attachment'): any part's
                       * Content-Disposition contains "attachment" */
    MX_RULE_NATIVE,   /* another eval computed natively at end of message (evals.c) */
};

enum mx_rule_tflag {
    MX_TF_MULTIPLE = 1u << 0,
    MX_TF_NICE = 1u << 1,
    MX_TF_NET = 1u << 2,
    MX_TF_LEARN = 1u << 3,
    MX_TF_NOAUTOLEARN = 1u << 4,
    MX_TF_NOSUBJECT = 1u << 5, /* body rule: the text without the Subject line */
};

/* regex flags as given after the closing delimiter */
enum mx_re_flag {
    MX_RE_I = 1u << 0,
    MX_RE_M = 1u << 1,
    MX_RE_S = 1u << 2,
    MX_RE_X = 1u << 3,
};

/* meta RPN ops; operands are rule indexes or constants */
enum mx_meta_op {
    MX_MOP_RULE,
    MX_MOP_CONST,
    MX_MOP_NOT,
    MX_MOP_NEG,
    MX_MOP_AND,
    MX_MOP_OR,
    MX_MOP_ADD,
    MX_MOP_SUB,
    MX_MOP_MUL,
    MX_MOP_DIV,
    MX_MOP_GT,
    MX_MOP_LT,
    MX_MOP_GE,
    MX_MOP_LE,
    MX_MOP_EQ,
    MX_MOP_NE,
};

struct mx_meta_tok {
    uint8_t op;
    uint32_t rule;
    double k;
};

enum mx_dlp_kind { MX_DLP_DICT, MX_DLP_CREDITCARD, MX_DLP_IBAN, MX_DLP_MYNUMBER, MX_DLP_EMAIL };

struct mx_dlp_term {
    char *term; /* matched case-insensitively as a literal on decoded text */
    double weight;
};

struct mx_attach_cond {
    uint8_t field; /* 'n' name glob, 'e' extension, 't' declared type, 'T' true type,
                    * 'l' level (top|member), 'f' flag (archive,encrypted,corrupt,limit) */
    bool negate;
    char *values;  /* NUL-separated list of globs, ended by an empty string */
};

struct mx_rule {
    char *name;
    enum mx_rule_type type;
    char *target;   /* header: lower-case "name[:mod]" or pseudo header */
    char *re;       /* regex (replace_tags expanded) */
    unsigned reflags;
    bool negate;    /* header Foo !~ /re/ */
    bool exists;    /* header NAME exists:Foo */
    char *ifunset;  /* [if-unset: value] */
    char *meta_src; /* meta expression text */
    struct mx_meta_tok *meta;
    size_t nmeta;
    double score;
    bool has_score;
    unsigned tflags;
    unsigned maxhits;
    char *describe;
    const char *skip; /* why the rule does not run (static string) */
    /* dlp */
    enum mx_dlp_kind dlp_kind;
    double dlp_threshold;
    struct mx_dlp_term *terms;
    size_t nterms;
    /* attachment */
    struct mx_attach_cond *conds;
    size_t nconds;
    /* native eval (MX_RULE_NATIVE) */
    struct mx_native native;
};

struct mx_ruleset {
    struct mx_rule *rules;
    size_t nrules, cap;
    /* name -> index, open addressing */
    uint32_t *hash;
    size_t hcap;
    /* replace_tags */
    struct mx_kv {
        char *k, *v;
        int kind; /* 't' tag, 'p' pre, 'i' inter, 'o' post */
    } *tags;
    size_t ntags, tagcap;
    char **replace_rules;
    size_t nreplace, replcap;
    char **plugins;
    size_t nplugins, plugcap;
    /* util_rb_tld: the top-level domains SA's schemeless URIs may end in
     * (lower case; the engine sorts them) */
    char **tlds;
    size_t ntlds, tldcap;
    unsigned lines;
    unsigned ignored_directives;
    char err[256]; /* first hard error */
};

/** Initialise an empty rule set. */
void mx_rules_init(struct mx_ruleset *rs);

/** Release everything a rule set owns. */
void mx_rules_free(struct mx_ruleset *rs);

/**
 * Parse rule text (one file's contents) into `rs`. Unknown directives are
 * ignored and counted (SpamAssassin files carry many settings that are not
 * rules). Returns 0, or -EINVAL with rs->err set for a structural error
 * (unbalanced if/endif) or -ENOMEM.
 */
int mx_rules_parse(struct mx_ruleset *rs, const char *text, size_t len, const char *fname);

/** Load a file, or every *.pre then *.cf file of a directory (sorted). */
int mx_rules_load_path(struct mx_ruleset *rs, const char *path);

/**
 * After all files: expand replace_tags, compile meta expressions, apply
 * default scores. Returns 0 or -ENOMEM.
 */
int mx_rules_finish(struct mx_ruleset *rs);

/**
 * A necessary condition for regex `re`, for Hyperscan: every bounded repeat
 * whose upper bound is above `max` becomes unbounded ({m,n} -> {min(m,max),}),
 * and {m} with m above max becomes {max,}. Anything `re` matches, the result
 * matches too. Escapes, character classes and (/x) comments are left alone.
 * The result is at most twice as long. Returns a malloc'd string, or NULL on
 * allocation failure.
 */
char *mx_rules_relax_repeats(const char *re, unsigned max, bool extended);

/**
 * The same regex with its heaviest repeated non-capturing group written once:
 * "(?:B){m,n}" becomes "(?<mxrepS>B)(?&mxrepS){m-1,n-1}" (S = `serial`; with
 * m = 0 the whole is made optional). PCRE2 compiles a bounded repeat as that
 * many copies of the group, so a big group repeated a few times overflows its
 * compiled-size limit ("regular expression is too large": SpamAssassin's
 * __FILL_THIS_FORM_LONG1/2); a subroutine call is one small opcode. PCRE2
 * (10.30 and later) backtracks into subroutine calls as into groups, so the
 * regex matches the same strings; the added group only shifts the numbers of
 * the groups after it, so a regex that refers to groups by number (\1, \g,
 * (?1), conditions, branch reset) is left alone, as is one in /x mode.
 * Returns a malloc'd string, or NULL when there is nothing to rewrite (or on
 * allocation failure).
 */
char *mx_rules_share_repeats(const char *re, bool extended, unsigned serial);

/**
 * A regex for the reversed strings of `re`: whatever `re` matches, read
 * backwards, the result matches (a superset: lookarounds and ^ $ \A \z \Z
 * are dropped, atomic groups and possessive or lazy quantifiers become plain
 * ones). Sequences are reversed item by item, alternatives and character
 * classes stay as they are, \b \B are symmetric. Leading option settings
 * ("(?i)") stay in front. Returns NULL (nothing to use) for what has no
 * simple reverse: back-references, recursion, conditions, option changes
 * in the middle, \K \G \R \X, /x mode; or on allocation failure. Used to
 * find where a match can start: the ends of the result's matches in the
 * reversed text (scan/engine.c, "located" confirmation).
 */
char *mx_rules_reverse(const char *re, bool extended);

/**
 * `re` restricted to ASCII input: every alternative, class member and
 * optional atom that needs a byte of 0x80 or above is taken out, so that on
 * a text of bytes below 0x80 the result matches exactly where `re` does
 * (the same starts and ends) while its automaton can be much smaller (the
 * ReplaceTags look-alike letter classes are mostly multi-byte UTF-8).
 * Assertions, negated classes, '.', \W and the like stay as written: on
 * ASCII input they mean the same. Returns 0 (nothing to take out, or a
 * construct it does not read: use `re` as it is), 1 (*out: a malloc'd
 * regex), 2 (no ASCII text can match: leave the pattern out) or -ENOMEM.
 */
int mx_rules_ascii_only(const char *re, bool extended, char **out);

/**
 * Drop the ^ and $ anchors of regex `re` outside character classes (and
 * \Q...\E), in place: an assertion only narrows what matches, so the result
 * matches whatever `re` does (a necessary condition for a prefilter; Hyperscan
 * rejects embedded anchors such as (?:^|\s) even in prefilter mode). "(?^"
 * option resets stay. The result is never longer.
 */
void mx_rules_drop_anchors(char *re);

/**
 * SpamAssassin matches body and raw-body rules paragraph by paragraph, so
 * \z and \Z there mean "end of the paragraph"; mxgate scans the text as one
 * multi-line string, where that is `$`. Rewrites re in place (it only
 * shrinks), outside character classes. mx_rules_finish() applies it to
 * every body and rawbody rule.
 */
void mx_rules_paragraph_anchors(char *re);

/** Index of rule `name`, or -1. */
long mx_rules_find(const struct mx_ruleset *rs, const char *name);

/** Is the rule's name a sub-rule (`__` prefix, never reported)? */
static inline bool mx_rule_is_sub(const struct mx_rule *r)
{
    return r->name[0] == '_' && r->name[1] == '_';
}

/* ---- engine introspection, for the profiling tool (tests/scan/scan_prof.c)
 * and the layout-parity test; not part of the public API ------------------ */

struct mx_scan_engine;
struct mx_scan_worker;
struct mx_scan_opts;
struct mx_scan_msg;

/** One compiled database as the engine organised it. */
struct mx_scan_dbview {
    const char *scope;    /* "header", "body", "rawbody", "uri", "full", "dlp" */
    const char *target;   /* header target, "" otherwise */
    const char *kind;     /* organisation class (see engine.c: "main", "hot", ...) */
    const void *db;       /* hs_database_t *, NULL when nothing runs in Hyperscan */
    bool stream;          /* streaming mode (else block mode) */
    size_t npatterns;     /* patterns in db */
    const uint32_t *ids;  /* rule index of each pattern (pattern id) */
    size_t npcre;         /* rules of this database run by PCRE2 alone */
};


/**
 * mx_scan_engine_load() with a chosen database organisation: 1 is the
 * original one (databases of 48 patterns per scope, no classes), kept so a
 * test can prove the current one (2) gives exactly the same hits.
 * Returns what mx_scan_engine_load() does, or -EINVAL for another layout.
 */
int mx_scan_engine_load_layout(const struct mx_scan_opts *o, int layout,
                               struct mx_scan_engine **out, char **err);

/** Number of databases (groups) of the engine. */
size_t mx_scan_engine_ndbs(const struct mx_scan_engine *e);

/** Describe database i. Returns 0 or -ENOENT. */
int mx_scan_engine_dbview(const struct mx_scan_engine *e, size_t i, struct mx_scan_dbview *v);

/**
 * Pattern k of database i exactly as compiled: *expr (malloc'd, caller
 * frees) and Hyperscan flags. Returns 0, -ENOENT or -ENOMEM.
 */
int mx_scan_engine_dbpattern(const struct mx_scan_engine *e, size_t i, size_t k, char **expr,
                             unsigned *flags);

/** The PCRE2 program (pcre2_code *) of rule ri, or NULL. */
const void *mx_scan_engine_rule_pcre(const struct mx_scan_engine *e, size_t ri);

/** How rule ri runs: 'h' Hyperscan exact, 'f' prefilter + PCRE2, 'p' PCRE2 only, 'c' PCRE2
 * on SpamAssassin's raw-body chunks (a rawbody regex anchored without /m), 0 not a regex. */
int mx_scan_engine_rule_how(const struct mx_scan_engine *e, size_t ri);

/** The engine's rule set (names, types, tflags). */
const struct mx_ruleset *mx_scan_engine_rules(const struct mx_scan_engine *e);

/**
 * Per-worker profile: time and bytes per database scan call, match
 * callbacks per rule, and (if capture) a copy of each database's input so
 * a tool can replay it rule by rule. Arrays are sized by the caller:
 * ndbs entries for the per-database ones, nrules for r_matches.
 */
struct mx_scan_prof {
    uint64_t *db_ns, *db_calls, *db_bytes;
    uint64_t *r_matches;
    uint64_t *r_pcre_ns, *r_pcre_calls; /* PCRE2 confirmations per rule */
    bool capture;
    /* per database: input bytes and the end offset of each scan unit (one
     * message's stream, or one block) */
    struct mx_scan_capture {
        char *buf;
        size_t len, cap;
        size_t *ends;
        size_t nends, ecap;
    } *cap;
};

/**
 * After mx_scan_msg_end(): the value of rule ri for this message (a hit
 * count, or a meta's value; 0 for rules that did not hit or do not run),
 * sub-rules (`__`) included.
 */
double mx_scan_msg_rule_value(struct mx_scan_msg *m, size_t ri);

/**
 * After mx_scan_msg_end(): the text kept for PCRE2 of a stream scope,
 * "body" (rendered text), "body:nosubject" (the same without the leading
 * Subject line), "rawbody" or "full". Returns 0, or -ENOENT.
 */
int mx_scan_msg_kept(const struct mx_scan_msg *m, const char *scope, const char **s, size_t *n);

/** Attach (or detach with NULL) a profile to a worker. */
void mx_scan_worker_set_prof(struct mx_scan_worker *w, struct mx_scan_prof *p);

#endif
