/*
 * ucl.c - a UCL parser (the language of Rspamd's libucl, which Debian 12 does
 * not package): nginx-like and JSON syntax into a tree of struct mx_ucl, every
 * node tagged with file:line.
 *
 * Accepted:
 *   key = value;  key value;  key: value   (separators ; and , optional
 *                                            before a newline or a closing brace)
 *   key { ... }   key "name" { ... }  (= key { name { ... } })   key [ a, b ]
 *   "double" and 'single' quoted strings, <<EOD heredocs
 *   numbers: 10 -3 1.5 1e3 0x1f; k/m/g (x1000) kb/mb/gb (x1024);
 *            ms/s/min/h/d/w/y time suffixes (seconds, as a TIME value)
 *   true/false/yes/no/on/off, null
 *   # and // line comments, nested slash-star comments
 *   .include "path"  and  .include(try=true) "path"
 *
 * The parser is a plain recursive descent over an in-memory buffer; nesting,
 * include depth and file size are bounded so hostile input cannot exhaust the
 * stack or memory. It stops at the first syntax error (later errors would only
 * be consequences of it); semantic validation happens in config.c and reports
 * every problem.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/ucl_internal.h"

/* The chain of files being parsed, innermost first, for cycle detection. */
struct inc_frame {
    const char *real; /* realpath() of the file */
    const struct inc_frame *up;
};

struct parser {
    struct mx_ucl_doc *doc;
    const char *buf, *p, *end;
    const char *file; /* interned */
    unsigned line;
    int depth;     /* objects/arrays open, counted across includes */
    int inc_depth; /* 0 for the top file */
    const struct inc_frame *frames;
    struct mx_ucl_err *err;
    int rc;
};

/* A growable byte buffer for string values: doubles, never per byte. */
struct sbuf {
    char *s;
    size_t n, cap;
};

static int parse_value(struct parser *ps, struct mx_ucl **out);
static int parse_object_body(struct parser *ps, struct mx_ucl *obj, char closing,
                             unsigned open_line);
static int parse_tree(struct mx_ucl_doc *doc, const char *file, const char *buf, size_t len,
                      int depth, int inc_depth, const struct inc_frame *frames,
                      struct mx_ucl **out, struct mx_ucl_err *err);

static void set_err(struct mx_ucl_err *err, const char *file, unsigned line, const char *fmt,
                    va_list ap)
{
    if (!err)
        return;
    snprintf(err->file, sizeof(err->file), "%s", file ? file : "");
    err->line = line;
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
}

__attribute__((format(printf, 2, 3))) static int fail(struct parser *ps, const char *fmt, ...)
{
    if (ps->rc == 0) {
        va_list ap;
        va_start(ap, fmt);
        set_err(ps->err, ps->file, ps->line, fmt, ap);
        va_end(ap);
        ps->rc = -EINVAL;
    }
    return ps->rc;
}

static int nomem(struct parser *ps)
{
    if (ps->rc == 0) {
        if (ps->err) {
            snprintf(ps->err->file, sizeof(ps->err->file), "%s", ps->file);
            ps->err->line = ps->line;
            snprintf(ps->err->msg, sizeof(ps->err->msg), "out of memory");
        }
        ps->rc = -ENOMEM;
    }
    return ps->rc;
}

static int sbuf_put(struct sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *ns = realloc(b->s, cap);
        if (!ns)
            return -ENOMEM;
        b->s = ns;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
    return 0;
}

/* ---- document and node helpers ---- */

const char *mx_ucl_type_name(enum mx_ucl_type t)
{
    switch (t) {
    case MX_UCL_NULL:
        return "null";
    case MX_UCL_BOOL:
        return "boolean";
    case MX_UCL_INT:
        return "integer";
    case MX_UCL_FLOAT:
        return "number";
    case MX_UCL_TIME:
        return "time";
    case MX_UCL_STRING:
        return "string";
    case MX_UCL_ARRAY:
        return "array";
    case MX_UCL_OBJECT:
        return "object";
    }
    return "?";
}

const char *mx_ucl_intern(struct mx_ucl_doc *doc, const char *name)
{
    for (size_t i = 0; i < doc->n_files; i++)
        if (strcmp(doc->files[i], name) == 0)
            return doc->files[i];
    char **nf = realloc(doc->files, (doc->n_files + 1) * sizeof(*nf));
    if (!nf)
        return NULL;
    doc->files = nf;
    char *copy = strdup(name);
    if (!copy)
        return NULL;
    doc->files[doc->n_files++] = copy;
    return copy;
}

void mx_ucl_doc_free(struct mx_ucl_doc *doc)
{
    if (!doc)
        return;
    for (size_t i = 0; i < doc->n_files; i++)
        free(doc->files[i]);
    free(doc->files);
    doc->files = NULL;
    doc->n_files = 0;
}

struct mx_ucl *mx_ucl_new(enum mx_ucl_type type, const char *file, unsigned line)
{
    struct mx_ucl *o = calloc(1, sizeof(*o));
    if (!o)
        return NULL;
    o->type = type;
    o->file = file;
    o->line = line;
    return o;
}

void mx_ucl_free(struct mx_ucl *o)
{
    if (!o)
        return;
    switch (o->type) {
    case MX_UCL_STRING:
        free(o->u.str.s);
        break;
    case MX_UCL_ARRAY:
        for (size_t i = 0; i < o->u.arr.n; i++)
            mx_ucl_free(o->u.arr.v[i]);
        free(o->u.arr.v);
        break;
    case MX_UCL_OBJECT:
        for (size_t i = 0; i < o->u.obj.n; i++) {
            free(o->u.obj.v[i].key);
            mx_ucl_free(o->u.obj.v[i].val);
        }
        free(o->u.obj.v);
        break;
    default:
        break;
    }
    free(o);
}

struct mx_ucl *mx_ucl_lookup(const struct mx_ucl *obj, const char *key)
{
    if (!obj || obj->type != MX_UCL_OBJECT)
        return NULL;
    for (size_t i = 0; i < obj->u.obj.n; i++)
        if (strcmp(obj->u.obj.v[i].key, key) == 0)
            return obj->u.obj.v[i].val;
    return NULL;
}

static int array_push(struct mx_ucl *arr, struct mx_ucl *v)
{
    if (arr->u.arr.n == arr->u.arr.cap) {
        size_t cap = arr->u.arr.cap ? arr->u.arr.cap * 2 : 4;
        struct mx_ucl **nv = realloc(arr->u.arr.v, cap * sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        arr->u.arr.v = nv;
        arr->u.arr.cap = cap;
    }
    arr->u.arr.v[arr->u.arr.n++] = v;
    return 0;
}

int mx_ucl_insert(struct mx_ucl *obj, const char *key, const char *file, unsigned line,
                  struct mx_ucl *val, bool replace)
{
    struct mx_ucl_pair *old = NULL;
    for (size_t i = 0; i < obj->u.obj.n; i++)
        if (strcmp(obj->u.obj.v[i].key, key) == 0) {
            old = &obj->u.obj.v[i];
            break;
        }
    if (old && replace) {
        mx_ucl_free(old->val);
        old->val = val;
        old->file = file;
        old->line = line;
        return 0;
    }
    if (old && old->val->type == MX_UCL_OBJECT && val->type == MX_UCL_OBJECT) {
        /* Two blocks of the same section: merge them key by key. */
        int rc = 0;
        for (size_t i = 0; i < val->u.obj.n; i++) {
            struct mx_ucl_pair *p = &val->u.obj.v[i];
            if (rc == 0)
                rc = mx_ucl_insert(old->val, p->key, p->file, p->line, p->val, false);
            else
                mx_ucl_free(p->val);
            free(p->key);
        }
        free(val->u.obj.v);
        free(val);
        return rc;
    }
    if (old) {
        /* A repeated key: the values become an implicit array, in file order. */
        if (!(old->val->type == MX_UCL_ARRAY && old->val->implicit)) {
            struct mx_ucl *arr = mx_ucl_new(MX_UCL_ARRAY, old->val->file, old->val->line);
            if (!arr || array_push(arr, old->val) != 0) {
                free(arr);
                mx_ucl_free(val);
                return -ENOMEM;
            }
            arr->implicit = true;
            old->val = arr;
        }
        if (val->type == MX_UCL_ARRAY && val->implicit) {
            /* merging two sections that each repeated the key: keep one level */
            for (size_t i = 0; i < val->u.arr.n; i++) {
                if (array_push(old->val, val->u.arr.v[i]) != 0) {
                    for (size_t j = i; j < val->u.arr.n; j++)
                        mx_ucl_free(val->u.arr.v[j]);
                    free(val->u.arr.v);
                    free(val);
                    return -ENOMEM;
                }
            }
            free(val->u.arr.v);
            free(val);
            return 0;
        }
        if (array_push(old->val, val) != 0) {
            mx_ucl_free(val);
            return -ENOMEM;
        }
        return 0;
    }
    if (obj->u.obj.n == obj->u.obj.cap) {
        size_t cap = obj->u.obj.cap ? obj->u.obj.cap * 2 : 8;
        struct mx_ucl_pair *nv = realloc(obj->u.obj.v, cap * sizeof(*nv));
        if (!nv) {
            mx_ucl_free(val);
            return -ENOMEM;
        }
        obj->u.obj.v = nv;
        obj->u.obj.cap = cap;
    }
    char *k = strdup(key);
    if (!k) {
        mx_ucl_free(val);
        return -ENOMEM;
    }
    obj->u.obj.v[obj->u.obj.n++] = (struct mx_ucl_pair){k, file, line, val};
    return 0;
}

/* ---- lexing ---- */

static bool at(const struct parser *ps, size_t off, char c)
{
    return (size_t)(ps->end - ps->p) > off && ps->p[off] == c;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

/*
 * Skip white space and comments. With newlines false, stops at a newline
 * (used after a value, where a newline ends the statement). Returns 0 or
 * -EINVAL for an unterminated comment.
 */
static int skip_ws(struct parser *ps, bool newlines)
{
    while (ps->p < ps->end) {
        char c = *ps->p;
        if (c == '\n') {
            if (!newlines)
                return 0;
            ps->line++;
            ps->p++;
        } else if (is_space(c)) {
            ps->p++;
        } else if (c == '#' || (c == '/' && at(ps, 1, '/'))) {
            while (ps->p < ps->end && *ps->p != '\n')
                ps->p++;
        } else if (c == '/' && at(ps, 1, '*')) {
            unsigned start = ps->line;
            int level = 0;
            while (ps->p < ps->end) {
                if (*ps->p == '/' && at(ps, 1, '*')) {
                    level++;
                    ps->p += 2;
                } else if (*ps->p == '*' && at(ps, 1, '/')) {
                    level--;
                    ps->p += 2;
                    if (level == 0)
                        break;
                } else {
                    if (*ps->p == '\n')
                        ps->line++;
                    ps->p++;
                }
            }
            if (level != 0) {
                ps->line = start;
                return fail(ps, "unterminated comment");
            }
        } else {
            return 0;
        }
    }
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int read_u4(struct parser *ps, unsigned *out)
{
    if (ps->end - ps->p < 4)
        return fail(ps, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(ps->p[i]);
        if (h < 0)
            return fail(ps, "invalid \\u escape");
        v = v * 16 + (unsigned)h;
    }
    ps->p += 4;
    *out = v;
    return 0;
}

static int put_utf8(struct sbuf *b, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (char)(0xf0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    return sbuf_put(b, u, n);
}

/* A "double-quoted" string with JSON escapes; ps->p is on the opening quote. */
static int lex_dquoted(struct parser *ps, struct sbuf *b)
{
    unsigned start = ps->line;
    ps->p++;
    for (;;) {
        const char *run = ps->p;
        while (ps->p < ps->end && *ps->p != '"' && *ps->p != '\\' && *ps->p != '\0') {
            if (*ps->p == '\n')
                ps->line++;
            ps->p++;
        }
        if (ps->p > run && sbuf_put(b, run, (size_t)(ps->p - run)) != 0)
            return nomem(ps);
        if (ps->p >= ps->end) {
            ps->line = start;
            return fail(ps, "unterminated string");
        }
        if (*ps->p == '\0')
            return fail(ps, "NUL byte in string");
        if (*ps->p == '"') {
            ps->p++;
            return 0;
        }
        ps->p++; /* backslash */
        if (ps->p >= ps->end) {
            ps->line = start;
            return fail(ps, "unterminated string");
        }
        char c = *ps->p++;
        char lit;
        switch (c) {
        case '"':
        case '\\':
        case '/':
        case '\'':
            lit = c;
            break;
        case 'b':
            lit = '\b';
            break;
        case 'f':
            lit = '\f';
            break;
        case 'n':
            lit = '\n';
            break;
        case 'r':
            lit = '\r';
            break;
        case 't':
            lit = '\t';
            break;
        case 'u': {
            unsigned cp;
            if (read_u4(ps, &cp) != 0)
                return ps->rc;
            if (cp >= 0xd800 && cp < 0xdc00) {
                unsigned lo;
                if (!(at(ps, 0, '\\') && at(ps, 1, 'u')))
                    return fail(ps, "unpaired surrogate in \\u escape");
                ps->p += 2;
                if (read_u4(ps, &lo) != 0)
                    return ps->rc;
                if (lo < 0xdc00 || lo > 0xdfff)
                    return fail(ps, "unpaired surrogate in \\u escape");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                return fail(ps, "unpaired surrogate in \\u escape");
            }
            if (cp == 0)
                return fail(ps, "\\u0000 is not allowed in a string");
            if (put_utf8(b, cp) != 0)
                return nomem(ps);
            continue;
        }
        case '\n':
            /* a backslash-newline continues the string on the next line */
            ps->line++;
            continue;
        default:
            return fail(ps, "invalid escape '\\%c' in string", c >= 0x20 && c < 0x7f ? c : '?');
        }
        if (sbuf_put(b, &lit, 1) != 0)
            return nomem(ps);
    }
}

/* A 'single-quoted' string: only \' is an escape; everything else is literal. */
static int lex_squoted(struct parser *ps, struct sbuf *b)
{
    unsigned start = ps->line;
    ps->p++;
    for (;;) {
        const char *run = ps->p;
        while (ps->p < ps->end && *ps->p != '\'' && *ps->p != '\\' && *ps->p != '\0') {
            if (*ps->p == '\n')
                ps->line++;
            ps->p++;
        }
        if (ps->p > run && sbuf_put(b, run, (size_t)(ps->p - run)) != 0)
            return nomem(ps);
        if (ps->p >= ps->end) {
            ps->line = start;
            return fail(ps, "unterminated string");
        }
        if (*ps->p == '\0')
            return fail(ps, "NUL byte in string");
        if (*ps->p == '\'') {
            ps->p++;
            return 0;
        }
        /* backslash */
        if (at(ps, 1, '\'')) {
            if (sbuf_put(b, "'", 1) != 0)
                return nomem(ps);
            ps->p += 2;
        } else {
            if (sbuf_put(b, "\\", 1) != 0)
                return nomem(ps);
            ps->p++;
        }
    }
}

/* Characters that may appear in an unquoted key. */
static bool is_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-' || c == '.' || c == '/' || c == '*' || c == '@' || c == '+' ||
           c == '$' || c == '%' || (unsigned char)c >= 0x80;
}

/* Characters that end an unquoted value. */
static bool is_atom_end(char c)
{
    return is_space(c) || c == ';' || c == ',' || c == ']' || c == '}' || c == '{' || c == '[' ||
           c == '#' || c == '\0';
}

/* A key: quoted string or a run of key characters. */
static int lex_key(struct parser *ps, struct sbuf *b)
{
    if (ps->p >= ps->end)
        return fail(ps, "expected a key, found the end of the file");
    if (*ps->p == '"' || *ps->p == '\'') {
        int rc = *ps->p == '"' ? lex_dquoted(ps, b) : lex_squoted(ps, b);
        if (rc == 0 && !b->s && sbuf_put(b, "", 0) != 0) /* "" is a valid key */
            return nomem(ps);
        return rc;
    }
    const char *s = ps->p;
    while (ps->p < ps->end && is_key_char(*ps->p))
        ps->p++;
    if (ps->p == s) {
        char c = *ps->p;
        return fail(ps, "expected a key, found '%c'", c > 0x20 && c < 0x7f ? c : '?');
    }
    if (sbuf_put(b, s, (size_t)(ps->p - s)) != 0)
        return nomem(ps);
    return 0;
}

/* ---- scalars ---- */

static int suffix_mult(const char *s, size_t n, double *mult, bool *time)
{
    static const struct {
        const char *sfx;
        double mult;
        bool time;
    } tab[] = {
        {"k", 1e3, false},         {"m", 1e6, false},       {"g", 1e9, false},
        {"kb", 1024.0, false},     {"mb", 1048576.0, false}, {"gb", 1073741824.0, false},
        {"ms", 0.001, true},       {"s", 1, true},           {"min", 60, true},
        {"h", 3600, true},         {"d", 86400, true},       {"w", 604800, true},
        {"y", 31536000, true},
    };
    if (n == 0) {
        *mult = 1;
        *time = false;
        return 0;
    }
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
        if (strlen(tab[i].sfx) == n && strncasecmp(s, tab[i].sfx, n) == 0) {
            *mult = tab[i].mult;
            *time = tab[i].time;
            return 0;
        }
    return -1;
}

/*
 * Try to read an atom as a number. Returns 1 and fills o when it is one, 0 when
 * it is not a number (it stays a string), -EINVAL when it is a number out of
 * range.
 */
static int atom_number(struct parser *ps, const char *s, size_t n, struct mx_ucl *o)
{
    size_t i = 0;
    bool neg = false;
    if (i < n && (s[i] == '+' || s[i] == '-'))
        neg = s[i++] == '-';
    if (i + 2 < n + 1 && i + 1 < n && s[i] == '0' && (s[i + 1] == 'x' || s[i + 1] == 'X')) {
        size_t j = i + 2;
        uint64_t v = 0;
        if (j == n)
            return 0;
        for (; j < n; j++) {
            int h = hexval(s[j]);
            if (h < 0)
                return 0;
            if (v > (UINT64_MAX >> 4))
                return fail(ps, "number out of range: %.*s", (int)(n > 64 ? 64 : n), s);
            v = v * 16 + (unsigned)h;
        }
        if (v > (uint64_t)INT64_MAX + (neg ? 1u : 0u))
            return fail(ps, "number out of range: %.*s", (int)(n > 64 ? 64 : n), s);
        o->type = MX_UCL_INT;
        o->u.i = neg ? (int64_t)(0 - v) : (int64_t)v;
        return 1;
    }
    size_t ds = i;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++;
    size_t int_digits = i - ds;
    bool is_float = false;
    size_t frac_digits = 0;
    if (i < n && s[i] == '.') {
        size_t fs = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        frac_digits = i - fs;
        is_float = true;
    }
    if (int_digits + frac_digits == 0)
        return 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        size_t j = i + 1;
        if (j < n && (s[j] == '+' || s[j] == '-'))
            j++;
        if (j < n && s[j] >= '0' && s[j] <= '9') {
            while (j < n && s[j] >= '0' && s[j] <= '9')
                j++;
            i = j;
            is_float = true;
        }
    }
    double mult;
    bool time;
    if (suffix_mult(s + i, n - i, &mult, &time) != 0)
        return 0;
    if (!is_float && !time) {
        uint64_t v = 0;
        for (size_t j = ds; j < ds + int_digits; j++) {
            unsigned d = (unsigned)(s[j] - '0');
            if (v > (UINT64_MAX - d) / 10)
                return fail(ps, "number out of range: %.*s", (int)(n > 64 ? 64 : n), s);
            v = v * 10 + d;
        }
        uint64_t m = (uint64_t)mult;
        if (m > 1 && v > UINT64_MAX / m)
            return fail(ps, "number out of range: %.*s", (int)(n > 64 ? 64 : n), s);
        v *= m;
        if (v > (uint64_t)INT64_MAX + (neg ? 1u : 0u))
            return fail(ps, "number out of range: %.*s", (int)(n > 64 ? 64 : n), s);
        o->type = MX_UCL_INT;
        o->u.i = neg ? (int64_t)(0 - v) : (int64_t)v;
        return 1;
    }
    char tmp[128];
    if (i >= sizeof(tmp))
        return fail(ps, "number too long");
    memcpy(tmp, s, i);
    tmp[i] = '\0';
    double d = strtod(tmp, NULL) * mult;
    if (d != d || d > 1.7e308 || d < -1.7e308)
        return fail(ps, "number out of range: %.*s", (int)(n > 64 ? 64 : n), s);
    o->type = time ? MX_UCL_TIME : MX_UCL_FLOAT;
    o->u.f = d;
    return 1;
}

static bool word_is(const char *s, size_t n, const char *w)
{
    return strlen(w) == n && strncasecmp(s, w, n) == 0;
}

/* Turn an unquoted word into a boolean, null, number or string. */
static int atom_value(struct parser *ps, const char *s, size_t n, struct mx_ucl *o)
{
    if (word_is(s, n, "true") || word_is(s, n, "yes") || word_is(s, n, "on")) {
        o->type = MX_UCL_BOOL;
        o->u.b = true;
        return 0;
    }
    if (word_is(s, n, "false") || word_is(s, n, "no") || word_is(s, n, "off")) {
        o->type = MX_UCL_BOOL;
        o->u.b = false;
        return 0;
    }
    if (word_is(s, n, "null")) {
        o->type = MX_UCL_NULL;
        return 0;
    }
    int r = atom_number(ps, s, n, o);
    if (r < 0)
        return r;
    if (r == 1)
        return 0;
    o->type = MX_UCL_STRING;
    o->u.str.s = strndup(s, n);
    if (!o->u.str.s)
        return nomem(ps);
    o->u.str.len = n;
    return 0;
}

/* <<TAG newline ... newline TAG: ps->p is on the first '<'. */
static int lex_heredoc(struct parser *ps, struct sbuf *b)
{
    unsigned start = ps->line;
    ps->p += 2;
    const char *tag = ps->p;
    while (ps->p < ps->end && *ps->p >= 'A' && *ps->p <= 'Z')
        ps->p++;
    size_t tlen = (size_t)(ps->p - tag);
    if (tlen == 0)
        return fail(ps, "heredoc needs an upper-case terminator after <<");
    if (at(ps, 0, '\r'))
        ps->p++;
    if (!at(ps, 0, '\n'))
        return fail(ps, "heredoc terminator must end the line");
    ps->p++;
    ps->line++;
    bool first = true;
    while (ps->p < ps->end) {
        const char *ls = ps->p;
        const char *le = memchr(ls, '\n', (size_t)(ps->end - ls));
        const char *next = le ? le + 1 : ps->end;
        if (!le)
            le = ps->end;
        const char *content_end = (le > ls && le[-1] == '\r') ? le - 1 : le;
        if ((size_t)(content_end - ls) == tlen && memcmp(ls, tag, tlen) == 0) {
            ps->p = content_end; /* the newline ends the statement */
            return 0;
        }
        if (memchr(ls, '\0', (size_t)(le - ls)))
            return fail(ps, "NUL byte in heredoc");
        if (!first && sbuf_put(b, "\n", 1) != 0)
            return nomem(ps);
        if (sbuf_put(b, ls, (size_t)(le - ls)) != 0)
            return nomem(ps);
        first = false;
        ps->p = next;
        if (next > le)
            ps->line++;
    }
    ps->line = start;
    return fail(ps, "unterminated heredoc <<%.*s", (int)(tlen > 32 ? 32 : tlen), tag);
}

static int string_node(struct parser *ps, struct sbuf *b, unsigned line, struct mx_ucl **out)
{
    struct mx_ucl *o = mx_ucl_new(MX_UCL_STRING, ps->file, line);
    if (!o) {
        free(b->s);
        return nomem(ps);
    }
    if (!b->s) {
        b->s = strdup("");
        if (!b->s) {
            free(o);
            return nomem(ps);
        }
    }
    o->u.str.s = b->s;
    o->u.str.len = b->n;
    *out = o;
    return 0;
}

static int parse_array(struct parser *ps, struct mx_ucl **out)
{
    unsigned open_line = ps->line;
    struct mx_ucl *arr = mx_ucl_new(MX_UCL_ARRAY, ps->file, ps->line);
    if (!arr)
        return nomem(ps);
    ps->p++; /* [ */
    for (;;) {
        if (skip_ws(ps, true) != 0)
            goto fail;
        if (ps->p >= ps->end) {
            ps->line = open_line;
            fail(ps, "unterminated array (missing ']')");
            goto fail;
        }
        if (*ps->p == ']') {
            ps->p++;
            break;
        }
        struct mx_ucl *v = NULL;
        if (parse_value(ps, &v) != 0)
            goto fail;
        if (array_push(arr, v) != 0) {
            mx_ucl_free(v);
            nomem(ps);
            goto fail;
        }
        unsigned before = ps->line;
        if (skip_ws(ps, true) != 0)
            goto fail;
        if (ps->p < ps->end && (*ps->p == ',' || *ps->p == ';')) {
            ps->p++;
        } else if (ps->p < ps->end && *ps->p != ']' && ps->line == before) {
            char c = *ps->p;
            fail(ps, "expected ',' or ']' in array, found '%c'", c > 0x20 && c < 0x7f ? c : '?');
            goto fail;
        }
    }
    *out = arr;
    return 0;
fail:
    mx_ucl_free(arr);
    return ps->rc;
}

static int parse_value(struct parser *ps, struct mx_ucl **out)
{
    *out = NULL;
    if (ps->p >= ps->end)
        return fail(ps, "expected a value, found the end of the file");
    char c = *ps->p;
    unsigned line = ps->line;
    if (c == '{' || c == '[') {
        if (ps->depth >= MX_UCL_MAX_DEPTH)
            return fail(ps, "nesting deeper than %d levels", MX_UCL_MAX_DEPTH);
        ps->depth++;
        int rc;
        if (c == '[') {
            rc = parse_array(ps, out);
        } else {
            struct mx_ucl *obj = mx_ucl_new(MX_UCL_OBJECT, ps->file, line);
            if (!obj)
                return nomem(ps);
            ps->p++;
            rc = parse_object_body(ps, obj, '}', line);
            if (rc != 0)
                mx_ucl_free(obj);
            else
                *out = obj;
        }
        ps->depth--;
        return rc;
    }
    if (c == '"' || c == '\'' || (c == '<' && at(ps, 1, '<'))) {
        struct sbuf b = {0};
        int rc = c == '"' ? lex_dquoted(ps, &b) : c == '\'' ? lex_squoted(ps, &b)
                                                           : lex_heredoc(ps, &b);
        if (rc != 0) {
            free(b.s);
            return rc;
        }
        return string_node(ps, &b, line, out);
    }
    const char *s = ps->p;
    while (ps->p < ps->end && !is_atom_end(*ps->p))
        ps->p++;
    if (ps->p == s)
        return fail(ps, "expected a value, found '%c'", c > 0x20 && c < 0x7f ? c : '?');
    struct mx_ucl *o = mx_ucl_new(MX_UCL_NULL, ps->file, line);
    if (!o)
        return nomem(ps);
    if (atom_value(ps, s, (size_t)(ps->p - s), o) != 0) {
        free(o);
        return ps->rc;
    }
    *out = o;
    return 0;
}

/* ---- .include ---- */

static char *join_path(const char *base, const char *rel)
{
    if (rel[0] == '/')
        return strdup(rel);
    const char *slash = strrchr(base, '/');
    size_t dl = slash ? (size_t)(slash - base) + 1 : 0;
    size_t rl = strlen(rel);
    char *p = malloc(dl + rl + 1);
    if (!p)
        return NULL;
    memcpy(p, base, dl);
    memcpy(p + dl, rel, rl + 1);
    return p;
}

static int read_file(const char *path, char **buf, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return -EISDIR;
    }
    if ((uint64_t)st.st_size > MX_UCL_MAX_FILE_SIZE) {
        close(fd);
        return -EFBIG;
    }
    size_t cap = (size_t)st.st_size;
    char *b = malloc(cap + 1);
    if (!b) {
        close(fd);
        return -ENOMEM;
    }
    size_t n = 0;
    while (n < cap) {
        ssize_t r = read(fd, b + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = -errno;
            free(b);
            close(fd);
            return e;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    *buf = b;
    *len = n;
    return 0;
}

/*
 * Parse one file at an include depth and merge nothing: the caller gets the
 * tree. Errors of open/read land in err with the includer's position.
 */
static int parse_file_at(struct mx_ucl_doc *doc, const char *path, int depth, int inc_depth,
                         const struct inc_frame *frames, struct mx_ucl **out,
                         struct mx_ucl_err *err)
{
    char *real = realpath(path, NULL);
    if (!real)
        return -errno;
    for (const struct inc_frame *f = frames; f; f = f->up)
        if (strcmp(f->real, real) == 0) {
            free(real);
            return -ELOOP;
        }
    char *buf = NULL;
    size_t len = 0;
    int rc = read_file(path, &buf, &len);
    if (rc != 0) {
        free(real);
        return rc;
    }
    struct inc_frame me = {real, frames};
    const char *name = mx_ucl_intern(doc, path);
    rc = name ? parse_tree(doc, name, buf, len, depth, inc_depth, &me, out, err) : -ENOMEM;
    free(buf);
    free(real);
    return rc;
}

/* .include [(try=true)] "path" at the position of a key; merges into obj. */
static int parse_include(struct parser *ps, struct mx_ucl *obj)
{
    unsigned line = ps->line;
    ps->p += strlen(".include");
    bool try_only = false;
    if (at(ps, 0, '(')) {
        ps->p++;
        for (;;) {
            if (skip_ws(ps, true) != 0)
                return ps->rc;
            if (at(ps, 0, ')')) {
                ps->p++;
                break;
            }
            struct sbuf k = {0};
            if (lex_key(ps, &k) != 0) {
                free(k.s);
                return ps->rc;
            }
            if (skip_ws(ps, true) != 0 || !(at(ps, 0, '=') || at(ps, 0, ':'))) {
                free(k.s);
                return fail(ps, "expected '=' in .include parameters");
            }
            ps->p++;
            if (skip_ws(ps, true) != 0) {
                free(k.s);
                return ps->rc;
            }
            const char *vs = ps->p;
            while (ps->p < ps->end && !is_atom_end(*ps->p) && *ps->p != ')')
                ps->p++;
            size_t vn = (size_t)(ps->p - vs);
            if (strcmp(k.s, "try") == 0 && (word_is(vs, vn, "true") || word_is(vs, vn, "false"))) {
                try_only = word_is(vs, vn, "true");
            } else {
                fail(ps, "unknown .include parameter '%s'", k.s);
                free(k.s);
                return ps->rc;
            }
            free(k.s);
            if (skip_ws(ps, true) != 0)
                return ps->rc;
            if (at(ps, 0, ','))
                ps->p++;
        }
    }
    if (skip_ws(ps, false) != 0)
        return ps->rc;
    struct sbuf path = {0};
    if (at(ps, 0, '"') || at(ps, 0, '\'')) {
        if ((at(ps, 0, '"') ? lex_dquoted(ps, &path) : lex_squoted(ps, &path)) != 0) {
            free(path.s);
            return ps->rc;
        }
    } else {
        const char *s = ps->p;
        while (ps->p < ps->end && !is_atom_end(*ps->p))
            ps->p++;
        if (ps->p == s || sbuf_put(&path, s, (size_t)(ps->p - s)) != 0) {
            free(path.s);
            return ps->p == s ? fail(ps, ".include needs a file name") : nomem(ps);
        }
    }
    if (!path.s || !path.s[0]) {
        free(path.s);
        return fail(ps, ".include needs a file name");
    }
    if (ps->doc->no_include) {
        free(path.s);
        return fail(ps, ".include is not allowed here");
    }
    if (ps->inc_depth + 1 > MX_UCL_MAX_INCLUDE_DEPTH) {
        free(path.s);
        return fail(ps, ".include nested deeper than %d files", MX_UCL_MAX_INCLUDE_DEPTH);
    }
    char *full = join_path(ps->file, path.s);
    if (!full) {
        free(path.s);
        return nomem(ps);
    }
    struct mx_ucl *tree = NULL;
    struct mx_ucl_err sub = {0};
    int rc = parse_file_at(ps->doc, full, ps->depth, ps->inc_depth + 1, ps->frames, &tree, &sub);
    ps->line = line;
    if (rc == -ENOENT && try_only) {
        rc = 0;
    } else if (rc == -ELOOP) {
        fail(ps, ".include cycle: %s includes itself", full);
    } else if (rc == -EINVAL || (rc == -ENOMEM && sub.msg[0])) {
        if (ps->rc == 0) {
            if (ps->err)
                *ps->err = sub;
            ps->rc = rc;
        }
    } else if (rc == -ENOMEM) {
        nomem(ps);
    } else if (rc < 0) {
        fail(ps, "cannot include %s: %s", full, strerror(-rc));
    }
    free(full);
    free(path.s);
    if (rc != 0 || !tree)
        return ps->rc;
    if (tree->type != MX_UCL_OBJECT) {
        mx_ucl_free(tree);
        return fail(ps, "included file must hold keys, not a %s", mx_ucl_type_name(tree->type));
    }
    for (size_t i = 0; i < tree->u.obj.n; i++) {
        struct mx_ucl_pair *p = &tree->u.obj.v[i];
        if (ps->rc == 0 && mx_ucl_insert(obj, p->key, p->file, p->line, p->val, false) != 0)
            nomem(ps);
        else if (ps->rc != 0)
            mx_ucl_free(p->val);
        free(p->key);
        p->val = NULL;
    }
    free(tree->u.obj.v);
    free(tree);
    return ps->rc;
}

/* ---- objects ---- */

/*
 * True when the text at ps->p is a word or quoted string followed by '{':
 * the nginx form `key name { }`, meaning key { name { } }.
 */
static bool next_is_nested_key(const struct parser *ps)
{
    struct parser look = *ps;
    look.err = NULL;
    look.rc = 0;
    struct sbuf b = {0};
    if (look.p >= look.end)
        return false;
    char c = *look.p;
    if (c != '"' && c != '\'' && !is_key_char(c))
        return false;
    int rc = lex_key(&look, &b);
    free(b.s);
    if (rc != 0)
        return false;
    if (skip_ws(&look, true) != 0)
        return false;
    return look.p < look.end && *look.p == '{';
}

static int parse_object_body(struct parser *ps, struct mx_ucl *obj, char closing,
                             unsigned open_line)
{
    for (;;) {
        if (skip_ws(ps, true) != 0)
            return ps->rc;
        if (ps->p >= ps->end) {
            if (closing) {
                ps->line = open_line;
                return fail(ps, "unterminated object (missing '}')");
            }
            return 0;
        }
        char c = *ps->p;
        if (closing && c == closing) {
            ps->p++;
            return 0;
        }
        if (c == ';' || c == ',') {
            ps->p++;
            continue;
        }
        if (c == '\0')
            return fail(ps, "NUL byte in file");
        if (c == '.' && (size_t)(ps->end - ps->p) >= 8 && memcmp(ps->p, ".include", 8) == 0 &&
            (ps->end - ps->p == 8 || !is_key_char(ps->p[8]))) {
            if (parse_include(ps, obj) != 0)
                return ps->rc;
        } else {
            /* key [name ...] [=|:] value */
            unsigned key_line = ps->line;
            struct sbuf keys[8] = {{0}};
            unsigned key_lines[8];
            int nk = 0;
            struct mx_ucl *val = NULL;
            int rc = lex_key(ps, &keys[nk]);
            key_lines[nk++] = key_line;
            while (rc == 0) {
                rc = skip_ws(ps, true);
                if (rc != 0)
                    break;
                if (at(ps, 0, '=') || at(ps, 0, ':')) {
                    ps->p++;
                    rc = skip_ws(ps, true);
                    if (rc == 0 && (ps->p >= ps->end || *ps->p == ';' || *ps->p == '}'))
                        rc = fail(ps, "missing value for key '%s'", keys[nk - 1].s);
                    break;
                }
                if (nk < 8 && next_is_nested_key(ps)) {
                    key_lines[nk] = ps->line;
                    rc = lex_key(ps, &keys[nk++]);
                    continue;
                }
                if (ps->p >= ps->end || *ps->p == ';' || *ps->p == '}' || *ps->p == ',')
                    rc = fail(ps, "missing value for key '%s'", keys[nk - 1].s);
                break;
            }
            if (rc == 0 && ps->depth + nk - 1 >= MX_UCL_MAX_DEPTH)
                rc = fail(ps, "nesting deeper than %d levels", MX_UCL_MAX_DEPTH);
            if (rc == 0) {
                ps->depth += nk - 1;
                rc = parse_value(ps, &val);
                ps->depth -= nk - 1;
            }
            /* wrap the value in one object per extra key, innermost first */
            for (int i = nk - 1; rc == 0 && i > 0; i--) {
                struct mx_ucl *wrap = mx_ucl_new(MX_UCL_OBJECT, ps->file, key_lines[i]);
                if (!wrap || mx_ucl_insert(wrap, keys[i].s, ps->file, key_lines[i], val, false)) {
                    if (!wrap)
                        mx_ucl_free(val);
                    free(wrap);
                    val = NULL;
                    rc = nomem(ps);
                } else {
                    val = wrap;
                }
            }
            if (rc == 0 && mx_ucl_insert(obj, keys[0].s, ps->file, key_lines[0], val, false) != 0)
                rc = nomem(ps);
            for (int i = 0; i < nk; i++)
                free(keys[i].s);
            if (rc != 0)
                return ps->rc;
        }
        /* a value ends at ; , a newline, the closing brace or (after } or ]) anything */
        bool after_block = ps->p > ps->buf && (ps->p[-1] == '}' || ps->p[-1] == ']');
        if (skip_ws(ps, false) != 0)
            return ps->rc;
        if (ps->p >= ps->end)
            continue;
        c = *ps->p;
        if (c == ';' || c == ',')
            ps->p++;
        else if (c != '\n' && !(closing && c == closing) && !after_block)
            return fail(ps, "expected ';' or a newline after a value, found '%c'",
                        c > 0x20 && c < 0x7f ? c : '?');
    }
}

/* Parse a whole buffer: a JSON object/array, or an implicit top-level object. */
static int parse_tree(struct mx_ucl_doc *doc, const char *file, const char *buf, size_t len,
                      int depth, int inc_depth, const struct inc_frame *frames,
                      struct mx_ucl **out, struct mx_ucl_err *err)
{
    struct parser ps = {
        .doc = doc,
        .buf = buf,
        .p = buf,
        .end = buf + len,
        .file = file,
        .line = 1,
        .depth = depth,
        .inc_depth = inc_depth,
        .frames = frames,
        .err = err,
    };
    *out = NULL;
    if (len >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0)
        ps.p += 3;
    if (skip_ws(&ps, true) != 0)
        return ps.rc;
    struct mx_ucl *root = NULL;
    if (ps.p < ps.end && (*ps.p == '{' || *ps.p == '[')) {
        if (parse_value(&ps, &root) != 0)
            return ps.rc;
        if (skip_ws(&ps, true) != 0 || ps.p < ps.end) {
            mx_ucl_free(root);
            return ps.rc ? ps.rc : fail(&ps, "text after the top-level value");
        }
    } else {
        root = mx_ucl_new(MX_UCL_OBJECT, file, 1);
        if (!root)
            return nomem(&ps);
        if (parse_object_body(&ps, root, 0, 1) != 0) {
            mx_ucl_free(root);
            return ps.rc;
        }
    }
    *out = root;
    return 0;
}

int mx_ucl_parse_file(struct mx_ucl_doc *doc, const char *path, struct mx_ucl **out,
                      struct mx_ucl_err *err)
{
    *out = NULL;
    int rc = parse_file_at(doc, path, 0, 0, NULL, out, err);
    if (rc < 0 && rc != -EINVAL && err && !(rc == -ENOMEM && err->msg[0])) {
        snprintf(err->file, sizeof(err->file), "%s", path);
        err->line = 0;
        snprintf(err->msg, sizeof(err->msg), "cannot read: %s", strerror(-rc));
    }
    return rc;
}

int mx_ucl_parse_mem(struct mx_ucl_doc *doc, const char *name, const char *buf, size_t len,
                     struct mx_ucl **out, struct mx_ucl_err *err)
{
    *out = NULL;
    const char *file = mx_ucl_intern(doc, name);
    if (!file)
        return -ENOMEM;
    return parse_tree(doc, file, buf, len, 0, 0, NULL, out, err);
}

int mx_ucl_parse_value(struct mx_ucl_doc *doc, const char *name, const char *text,
                       struct mx_ucl **out, struct mx_ucl_err *err)
{
    *out = NULL;
    const char *file = mx_ucl_intern(doc, name);
    if (!file)
        return -ENOMEM;
    struct parser ps = {
        .doc = doc,
        .buf = text,
        .p = text,
        .end = text + strlen(text),
        .file = file,
        .line = 1,
        .err = err,
    };
    bool saved = doc->no_include;
    doc->no_include = true;
    struct mx_ucl *v = NULL;
    if (skip_ws(&ps, true) != 0)
        goto out;
    if (ps.p >= ps.end) {
        v = mx_ucl_new(MX_UCL_STRING, file, 1);
        if (!v || !(v->u.str.s = strdup(""))) {
            free(v);
            v = NULL;
            nomem(&ps);
        }
        goto out;
    }
    if (parse_value(&ps, &v) != 0)
        goto out;
    if (skip_ws(&ps, true) == 0 && ps.p < ps.end)
        fail(&ps, "text after the value");
out:
    doc->no_include = saved;
    if (ps.rc != 0) {
        mx_ucl_free(v);
        return ps.rc;
    }
    *out = v;
    return 0;
}
