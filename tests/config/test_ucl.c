/*
 * test_ucl.c - unit tests of the UCL parser (config/ucl.c): every syntax
 * feature, value types and suffixes, repeated keys, .include with cycles and
 * depth limits, and syntax errors with the line they are reported on.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/ucl_internal.h"

struct parsed {
    struct mx_ucl_doc doc;
    struct mx_ucl *root;
    struct mx_ucl_err err;
    int rc;
};

static void parse(struct parsed *p, const char *text)
{
    memset(p, 0, sizeof(*p));
    p->rc = mx_ucl_parse_mem(&p->doc, "t.conf", text, strlen(text), &p->root, &p->err);
}

static void done(struct parsed *p)
{
    mx_ucl_free(p->root);
    mx_ucl_doc_free(&p->doc);
}

/* Walk a dotted path of object keys. */
static const struct mx_ucl *get(const struct mx_ucl *o, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    char *save = NULL;
    for (char *k = strtok_r(buf, ".", &save); k && o; k = strtok_r(NULL, ".", &save))
        o = mx_ucl_lookup(o, k);
    return o;
}

static void expect_error(const char *text, unsigned line, const char *msg_part)
{
    struct parsed p;
    parse(&p, text);
    assert_int_equal(p.rc, -EINVAL);
    assert_null(p.root);
    assert_string_equal(p.err.file, "t.conf");
    if (p.err.line != line || !strstr(p.err.msg, msg_part))
        fail_msg("input %s: got line %u '%s', want line %u '%s'", text, p.err.line, p.err.msg,
                 line, msg_part);
    done(&p);
}

static void test_nginx_and_json_forms(void **state)
{
    (void)state;
    struct parsed p;
    parse(&p, "a = 1;\n"
              "b 2;\n"
              "c: 3\n"
              "d { e = \"x\"; }\n"
              "f [ 1, 2, 3 ]\n"
              "\"quoted key\" = 'v'\n"
              "sec \"inner\" { k = v }\n");
    assert_int_equal(p.rc, 0);
    assert_int_equal(get(p.root, "a")->u.i, 1);
    assert_int_equal(get(p.root, "b")->u.i, 2);
    assert_int_equal(get(p.root, "c")->u.i, 3);
    assert_string_equal(get(p.root, "d.e")->u.str.s, "x");
    const struct mx_ucl *f = get(p.root, "f");
    assert_int_equal(f->type, MX_UCL_ARRAY);
    assert_false(f->implicit);
    assert_int_equal(f->u.arr.n, 3);
    assert_int_equal(f->u.arr.v[2]->u.i, 3);
    assert_string_equal(mx_ucl_lookup(p.root, "quoted key")->u.str.s, "v");
    assert_string_equal(get(p.root, "sec.inner.k")->u.str.s, "v");
    /* lines are tracked per value */
    assert_int_equal(get(p.root, "d.e")->line, 4);
    assert_int_equal(get(p.root, "sec.inner.k")->line, 7);
    done(&p);

    parse(&p, "{\"a\": {\"b\": [1, 2.5, \"x\"], \"c\": null, \"d\": false}}");
    assert_int_equal(p.rc, 0);
    assert_int_equal(get(p.root, "a.b")->u.arr.n, 3);
    assert_true(get(p.root, "a.b")->u.arr.v[1]->u.f == 2.5);
    assert_int_equal(get(p.root, "a.c")->type, MX_UCL_NULL);
    assert_int_equal(get(p.root, "a.d")->type, MX_UCL_BOOL);
    assert_false(get(p.root, "a.d")->u.b);
    done(&p);

    /* separators are optional before newlines and closing braces */
    parse(&p, "s { a = 1, b = 2; c = 3 }\nt {x=1}u{y=2}\n");
    assert_int_equal(p.rc, 0);
    assert_int_equal(get(p.root, "s.b")->u.i, 2);
    assert_int_equal(get(p.root, "s.c")->u.i, 3);
    assert_int_equal(get(p.root, "u.y")->u.i, 2);
    done(&p);
}

static void test_scalars(void **state)
{
    (void)state;
    struct parsed p;
    parse(&p, "i = -42; h = 0x1F; f = 1.5; e = 1e3\n"
              "k = 10k; m = 2m; g = 1g; kb = 10kb; mb = 50mb; gb = 1GB\n"
              "ms = 500ms; s = 30s; min = 5min; hr = 2h; d = 5d; fk = 1.5k\n"
              "t1 = true; t2 = yes; t3 = on; f1 = false; f2 = no; f3 = OFF; n = null\n"
              "addr = 127.0.0.1:2525; path = var/spool\n");
    assert_int_equal(p.rc, 0);
    assert_int_equal(get(p.root, "i")->u.i, -42);
    assert_int_equal(get(p.root, "h")->u.i, 31);
    assert_int_equal(get(p.root, "f")->type, MX_UCL_FLOAT);
    assert_true(get(p.root, "f")->u.f == 1.5);
    assert_true(get(p.root, "e")->u.f == 1000.0);
    assert_int_equal(get(p.root, "k")->u.i, 10000);
    assert_int_equal(get(p.root, "m")->u.i, 2000000);
    assert_int_equal(get(p.root, "g")->u.i, 1000000000);
    assert_int_equal(get(p.root, "kb")->u.i, 10240);
    assert_int_equal(get(p.root, "mb")->u.i, 52428800);
    assert_int_equal(get(p.root, "gb")->u.i, 1073741824);
    assert_int_equal(get(p.root, "ms")->type, MX_UCL_TIME);
    assert_true(get(p.root, "ms")->u.f == 0.5);
    assert_true(get(p.root, "s")->u.f == 30.0);
    assert_true(get(p.root, "min")->u.f == 300.0);
    assert_true(get(p.root, "hr")->u.f == 7200.0);
    assert_true(get(p.root, "d")->u.f == 432000.0);
    assert_true(get(p.root, "fk")->u.f == 1500.0);
    const char *t[] = {"t1", "t2", "t3"}, *f[] = {"f1", "f2", "f3"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(get(p.root, t[i])->type, MX_UCL_BOOL);
        assert_true(get(p.root, t[i])->u.b);
        assert_false(get(p.root, f[i])->u.b);
    }
    assert_int_equal(get(p.root, "n")->type, MX_UCL_NULL);
    assert_string_equal(get(p.root, "addr")->u.str.s, "127.0.0.1:2525");
    assert_string_equal(get(p.root, "path")->u.str.s, "var/spool");
    done(&p);
    /* an unquoted [::1]:25 starts an array; quoted it is a string */
    parse(&p, "v6 = \"[::1]:25\"\n");
    assert_int_equal(p.rc, 0);
    assert_string_equal(get(p.root, "v6")->u.str.s, "[::1]:25");
    done(&p);
}

static void test_strings(void **state)
{
    (void)state;
    struct parsed p;
    parse(&p, "a = \"tab\\there\\n\\\"q\\\" \\\\ \\/ \\u00e9 \\ud83d\\ude00\"\n"
              "b = 'it\\'s \\n raw'\n"
              "c = <<EOD\nline 1\n  line \"2\"\nEOD\n"
              "d = <<EOD\nEOD\n"
              "e = \"\"\n");
    assert_int_equal(p.rc, 0);
    assert_string_equal(get(p.root, "a")->u.str.s,
                        "tab\there\n\"q\" \\ / \xc3\xa9 \xf0\x9f\x98\x80");
    assert_string_equal(get(p.root, "b")->u.str.s, "it's \\n raw");
    assert_string_equal(get(p.root, "c")->u.str.s, "line 1\n  line \"2\"");
    assert_int_equal(get(p.root, "c")->line, 3);
    assert_string_equal(get(p.root, "d")->u.str.s, "");
    assert_string_equal(get(p.root, "e")->u.str.s, "");
    done(&p);
}

static void test_comments(void **state)
{
    (void)state;
    struct parsed p;
    parse(&p, "# hash\n"
              "a = 1 # after\n"
              "// slashes\n"
              "/* block /* nested */ still comment\n b = 9 */\n"
              "c = 2; // end\n"
              "url = \"http://x\"\n");
    assert_int_equal(p.rc, 0);
    assert_int_equal(get(p.root, "a")->u.i, 1);
    assert_null(get(p.root, "b"));
    assert_int_equal(get(p.root, "c")->u.i, 2);
    assert_int_equal(get(p.root, "c")->line, 6);
    assert_string_equal(get(p.root, "url")->u.str.s, "http://x");
    done(&p);
}

static void test_repeated_keys(void **state)
{
    (void)state;
    struct parsed p;
    parse(&p, "a = 1\na = 2\na = 3\n"
              "s { x = 1 }\ns { y = 2; x = 5 }\n");
    assert_int_equal(p.rc, 0);
    const struct mx_ucl *a = get(p.root, "a");
    assert_int_equal(a->type, MX_UCL_ARRAY);
    assert_true(a->implicit);
    assert_int_equal(a->u.arr.n, 3);
    assert_int_equal(a->u.arr.v[0]->line, 1);
    assert_int_equal(a->u.arr.v[2]->u.i, 3);
    /* objects merge; a key repeated across the blocks becomes an array */
    assert_int_equal(get(p.root, "s.y")->u.i, 2);
    const struct mx_ucl *x = get(p.root, "s.x");
    assert_int_equal(x->type, MX_UCL_ARRAY);
    assert_int_equal(x->u.arr.n, 2);
    assert_int_equal(x->u.arr.v[1]->u.i, 5);
    assert_int_equal(x->u.arr.v[1]->line, 5);
    done(&p);
}

static void test_errors(void **state)
{
    (void)state;
    expect_error("a = 1\nb = \"open\n\n", 2, "unterminated string");
    expect_error("a {\n b = 1\n", 1, "unterminated object");
    expect_error("a = [1,\n2\n", 1, "unterminated array");
    expect_error("a = 1\n/* x\n", 2, "unterminated comment");
    expect_error("a = 1\nb = 2 3\n", 2, "expected ';' or a newline");
    expect_error("a = 1\n\nb =\n;\n", 4, "missing value for key 'b'");
    expect_error("a = 1\nb;\n", 2, "missing value for key 'b'");
    expect_error("x = \"\\q\"\n", 1, "invalid escape");
    expect_error("x = \"\\u0000\"\n", 1, "\\u0000");
    expect_error("x = \"\\ud800\"\n", 1, "surrogate");
    expect_error("\n\nx = 99999999999999999999\n", 3, "out of range");
    expect_error("x = <<eod\nfoo\neod\n", 1, "upper-case terminator");
    expect_error("x = <<EOD\nfoo\n", 1, "unterminated heredoc");
    expect_error("a = [1 2]\n", 1, "expected ',' or ']'");
    expect_error("a = 1\n}\n", 2, "expected a key");
    expect_error("{\"a\": 1} x\n", 1, "text after");
    expect_error("a = 1\n.include \"x.conf\"\n", 2, "cannot include x.conf");
    /* nesting is bounded */
    char deep[400];
    size_t n = 0;
    n += (size_t)snprintf(deep, sizeof(deep), "a = ");
    for (int i = 0; i < MX_UCL_MAX_DEPTH + 1; i++)
        deep[n++] = '[';
    deep[n] = '\0';
    expect_error(deep, 1, "nesting deeper");
    /* NUL bytes are refused, not truncated */
    struct parsed p;
    memset(&p, 0, sizeof(p));
    p.rc = mx_ucl_parse_mem(&p.doc, "t.conf", "a = \"x\0y\"", 9, &p.root, &p.err);
    assert_int_equal(p.rc, -EINVAL);
    assert_non_null(strstr(p.err.msg, "NUL"));
    done(&p);
}

static void test_parse_value(void **state)
{
    (void)state;
    struct mx_ucl_doc doc = {0};
    struct mx_ucl_err err = {0};
    struct mx_ucl *v = NULL;
    assert_int_equal(mx_ucl_parse_value(&doc, "-o", "[\"[::1]:2526\", \"127.0.0.1:1\"]", &v, &err),
                     0);
    assert_int_equal(v->type, MX_UCL_ARRAY);
    assert_string_equal(v->u.arr.v[0]->u.str.s, "[::1]:2526");
    mx_ucl_free(v);
    assert_int_equal(mx_ucl_parse_value(&doc, "-o", "4", &v, &err), 0);
    assert_int_equal(v->u.i, 4);
    mx_ucl_free(v);
    assert_int_equal(mx_ucl_parse_value(&doc, "-o", "", &v, &err), 0);
    assert_string_equal(v->u.str.s, "");
    mx_ucl_free(v);
    assert_int_equal(mx_ucl_parse_value(&doc, "-o", "{ a = 1; b = [x] }", &v, &err), 0);
    assert_int_equal(mx_ucl_lookup(v, "a")->u.i, 1);
    mx_ucl_free(v);
    assert_int_equal(mx_ucl_parse_value(&doc, "-o", "a b", &v, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "text after"));
    mx_ucl_doc_free(&doc);
}

/* ---- .include, with files in a scratch directory ---- */

static char tmpdir[64];

static void write_file(const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup_dir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/mx-ucl-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static int parse_path(const char *name, struct parsed *p)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    memset(p, 0, sizeof(*p));
    p->rc = mx_ucl_parse_file(&p->doc, path, &p->root, &p->err);
    return p->rc;
}

static void test_include(void **state)
{
    (void)state;
    char sub[256];
    snprintf(sub, sizeof(sub), "%s/sub", tmpdir);
    mkdir(sub, 0700);
    write_file("main.conf", "a = 1\n"
                            "s { x = 1 }\n"
                            ".include \"sub/part.conf\"\n"
                            ".include(try=true) \"missing.conf\"\n"
                            "z = 9\n");
    write_file("sub/part.conf", "# included\n\ns { y = 2 }\n.include \"leaf.conf\"\n");
    write_file("sub/leaf.conf", "leaf = \"yes\"\n");
    struct parsed p;
    assert_int_equal(parse_path("main.conf", &p), 0);
    assert_int_equal(get(p.root, "s.x")->u.i, 1);
    assert_int_equal(get(p.root, "s.y")->u.i, 2);
    const struct mx_ucl *y = get(p.root, "s.y");
    assert_int_equal(y->line, 3);
    assert_non_null(strstr(y->file, "sub/part.conf"));
    assert_string_equal(get(p.root, "leaf")->u.str.s, "yes");
    assert_non_null(strstr(get(p.root, "leaf")->file, "sub/leaf.conf"));
    assert_int_equal(get(p.root, "z")->u.i, 9);
    done(&p);

    /* a syntax error inside an included file names that file and line */
    write_file("bad.conf", "a = 1\n.include \"sub/broken.conf\"\n");
    write_file("sub/broken.conf", "ok = 1\n\nbroken = \"\n");
    assert_int_equal(parse_path("bad.conf", &p), -EINVAL);
    assert_non_null(strstr(p.err.file, "sub/broken.conf"));
    assert_int_equal(p.err.line, 3);
    done(&p);

    /* a missing include without try is an error at the .include line */
    write_file("miss.conf", "a = 1\n\n.include \"nope.conf\"\n");
    assert_int_equal(parse_path("miss.conf", &p), -EINVAL);
    assert_int_equal(p.err.line, 3);
    assert_non_null(strstr(p.err.msg, "cannot include"));
    done(&p);

    /* cycles are detected */
    write_file("c1.conf", "a = 1\n.include \"c2.conf\"\n");
    write_file("c2.conf", ".include \"c1.conf\"\n");
    assert_int_equal(parse_path("c1.conf", &p), -EINVAL);
    assert_non_null(strstr(p.err.msg, "cycle"));
    done(&p);

    /* depth is bounded even without a cycle */
    for (int i = 0; i <= MX_UCL_MAX_INCLUDE_DEPTH + 1; i++) {
        char name[32], text[64];
        snprintf(name, sizeof(name), "d%d.conf", i);
        snprintf(text, sizeof(text), "k%d = %d\n.include \"d%d.conf\"\n", i, i, i + 1);
        write_file(name, text);
    }
    assert_int_equal(parse_path("d0.conf", &p), -EINVAL);
    assert_non_null(strstr(p.err.msg, "nested deeper"));
    done(&p);

    /* a file that cannot be read */
    assert_int_equal(parse_path("absent.conf", &p), -ENOENT);
    assert_non_null(strstr(p.err.msg, "cannot read"));
    done(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nginx_and_json_forms),
        cmocka_unit_test(test_scalars),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_comments),
        cmocka_unit_test(test_repeated_keys),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_parse_value),
        cmocka_unit_test_setup_teardown(test_include, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
