/*
 * ucl_internal.h - the UCL document model and parser used by config/.
 *
 * Debian 12 does not package Rspamd's libucl, so config/ carries its own parser
 * for the UCL language: nginx-like `key value;` / `key = value;` / `key { }`
 * syntax, JSON, comments (#, //, nested slash-star), heredocs, suffixed numbers,
 * `.include`. Every value remembers the file and line it came from so the
 * validator can report errors precisely.
 *
 * Repeated keys: a repeated key turns into an implicit array of its values
 * (as libucl does), except when both the old and the new value are objects:
 * those merge, so a section may be split over several blocks or files.
 */
#ifndef MX_UCL_INTERNAL_H
#define MX_UCL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Deepest nesting of objects/arrays the parser accepts. */
#define MX_UCL_MAX_DEPTH 64
/** Deepest chain of nested .include files. */
#define MX_UCL_MAX_INCLUDE_DEPTH 16
/** Largest file the parser reads (bytes). */
#define MX_UCL_MAX_FILE_SIZE (16u << 20)

enum mx_ucl_type {
    MX_UCL_NULL = 0,
    MX_UCL_BOOL,
    MX_UCL_INT,
    MX_UCL_FLOAT,
    MX_UCL_TIME, /**< a number with a time suffix, in seconds (as f) */
    MX_UCL_STRING,
    MX_UCL_ARRAY,
    MX_UCL_OBJECT,
};

struct mx_ucl;

/** One key of an object, with the line the key was written on. */
struct mx_ucl_pair {
    char *key;
    const char *file; /**< interned in the owning document */
    unsigned line;
    struct mx_ucl *val;
};

struct mx_ucl {
    enum mx_ucl_type type;
    bool implicit;    /**< ARRAY made from a repeated key, not written as [ ] */
    const char *file; /**< interned in the owning document */
    unsigned line;
    union {
        bool b;
        int64_t i;
        double f; /**< FLOAT and TIME */
        struct {
            char *s; /**< NUL-terminated, never holds a NUL byte */
            size_t len;
        } str;
        struct {
            struct mx_ucl **v;
            size_t n, cap;
        } arr;
        struct {
            struct mx_ucl_pair *v;
            size_t n, cap;
        } obj;
    } u;
};

/**
 * A parse session: owns the interned file names every node points to. Free
 * the trees first (mx_ucl_free), then the document (mx_ucl_doc_free).
 */
struct mx_ucl_doc {
    char **files;
    size_t n_files;
    bool no_include; /**< refuse .include (used by the fuzz target) */
};

/** The first syntax error of a parse. */
struct mx_ucl_err {
    char file[256];
    unsigned line;
    char msg[256];
};

/**
 * Parse a file into an object (the top level is an implicit object unless the
 * file is a JSON array or object). .include paths are relative to the file.
 * @return 0, -EINVAL (syntax: *err filled), -ENOMEM, or -errno of open/read
 *         (*err filled too).
 */
int mx_ucl_parse_file(struct mx_ucl_doc *doc, const char *path, struct mx_ucl **out,
                      struct mx_ucl_err *err);

/**
 * Parse a buffer as a file named `name` (used for error messages and as the
 * base of relative .include paths). The buffer need not be NUL-terminated.
 */
int mx_ucl_parse_mem(struct mx_ucl_doc *doc, const char *name, const char *buf, size_t len,
                     struct mx_ucl **out, struct mx_ucl_err *err);

/**
 * Parse one UCL value (a scalar, `[ ... ]` or `{ ... }`), as given to -o.
 * The whole text must be that one value. Empty text is the empty string.
 */
int mx_ucl_parse_value(struct mx_ucl_doc *doc, const char *name, const char *text,
                       struct mx_ucl **out, struct mx_ucl_err *err);

/** Free a tree. NULL is accepted. */
void mx_ucl_free(struct mx_ucl *o);

/** Free the document's interned names. */
void mx_ucl_doc_free(struct mx_ucl_doc *doc);

/** Intern a file name in the document; returns NULL on allocation failure. */
const char *mx_ucl_intern(struct mx_ucl_doc *doc, const char *name);

/** Value of key in an object (exact match), or NULL. */
struct mx_ucl *mx_ucl_lookup(const struct mx_ucl *obj, const char *key);

/**
 * Insert key=val into obj with the repeated-key rules above. On success the
 * object owns val. `replace` drops any existing value first (-o overrides).
 * @return 0 or -ENOMEM (val is then freed).
 */
int mx_ucl_insert(struct mx_ucl *obj, const char *key, const char *file, unsigned line,
                  struct mx_ucl *val, bool replace);

/** A new empty node of the given type; NULL on allocation failure. */
struct mx_ucl *mx_ucl_new(enum mx_ucl_type type, const char *file, unsigned line);

/** Human name of a type, for error messages ("string", "object", ...). */
const char *mx_ucl_type_name(enum mx_ucl_type t);

#endif
