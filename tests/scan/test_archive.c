/*
 * test_archive.c - archives among the attachments (scan/archive.c and the
 * attachment path of scan/engine.c): every member of a zip, tar.gz, 7z or
 * lone gzip file goes through the attachment rules; nested archives up to
 * the depth limit; the member, byte and decompression limits; encrypted and
 * corrupt archives; level= and flag= conditions; the result naming the
 * member that hit; decoder memory declared in zip, RAR, xz, lzma and lzip
 * data. Every archive is written here (libarchive's writer, liblzma, or
 * byte by byte for RAR 2.9, which no free tool writes), except
 * tests/scan/data/ppmd.zip (346 bytes, 7-Zip: libarchive cannot write a
 * PPMd zip; the command is at test_decoder_memory()).
 */
#include "scan/scan.h"
#include "tests/scan/attach_msg.h"

#include <archive.h>
#include <archive_entry.h>
#include <lzma.h>
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

static const char test_rules[] =
    "attachment BAD_EXE ext=exe\n"
    "attachment EXE_TYPE truetype=application/x-dosexec,application/vnd.microsoft.portable-executable\n"
    "attachment MEMBER_SECRET level=member name=secret*.txt\n"
    "attachment TOP_ARCHIVE level=top flag=archive\n"
    "attachment ENCRYPTED flag=encrypted\n"
    "attachment CORRUPT flag=corrupt\n"
    "attachment LIMIT flag=limit\n"
    "attachment MEMBER_TEXT level=member truetype=text/plain name=notes.md\n"
    "attachment BAD_LEVEL level=inside\n"
    "attachment BAD_FLAG flag=archive,zipped\n";

static char rules_path[64];

struct ent {
    const char *name;
    const uint8_t *data;
    size_t len;
    size_t repeat; /* write data this many times (0: once) */
};

/* An archive in memory, written by libarchive: format and filter by name
 * ("zip", "7zip", "ustar", "raw"; "gzip", NULL), writer options, passphrase. */
static uint8_t *make_archive(const char *format, const char *filter, const char *options,
                             const char *pass, const struct ent *e, size_t n, size_t *outlen)
{
    struct archive *a = archive_write_new();
    assert_non_null(a);
    assert_int_equal(archive_write_set_format_by_name(a, format), ARCHIVE_OK);
    if (filter)
        assert_int_equal(archive_write_add_filter_by_name(a, filter), ARCHIVE_OK);
    if (options)
        assert_int_equal(archive_write_set_options(a, options), ARCHIVE_OK);
    if (pass)
        assert_int_equal(archive_write_set_passphrase(a, pass), ARCHIVE_OK);
    size_t cap = 24u << 20;
    uint8_t *buf = malloc(cap);
    assert_non_null(buf);
    assert_int_equal(archive_write_open_memory(a, buf, cap, outlen), ARCHIVE_OK);
    for (size_t i = 0; i < n; i++) {
        size_t reps = e[i].repeat ? e[i].repeat : 1;
        struct archive_entry *en = archive_entry_new();
        archive_entry_set_pathname(en, e[i].name);
        archive_entry_set_size(en, (la_int64_t)(e[i].len * reps));
        archive_entry_set_filetype(en, AE_IFREG);
        archive_entry_set_perm(en, 0644);
        assert_int_equal(archive_write_header(a, en), ARCHIVE_OK);
        for (size_t r = 0; r < reps; r++)
            assert_int_equal(archive_write_data(a, e[i].data, e[i].len), (la_ssize_t)e[i].len);
        archive_entry_free(en);
    }
    assert_int_equal(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
    return buf;
}

/* A message with one text part and `data` as a base64 attachment `name`. */
static char *make_msg(const char *name, const uint8_t *data, size_t len)
{
    char *m = attach_msg(name, data, len, NULL);
    assert_non_null(m);
    return m;
}

static struct mx_scan_engine *load(struct mx_scan_opts o)
{
    const char *paths[] = {rules_path};
    o.rule_paths = paths;
    o.n_rule_paths = 1;
    struct mx_scan_engine *e = NULL;
    char *err = NULL;
    int rc = mx_scan_engine_load(&o, &e, &err);
    if (rc)
        fprintf(stderr, "load: %s\n", err ? err : "?");
    free(err);
    assert_int_equal(rc, 0);
    return e;
}

struct out {
    char hits[1024];
    char attachment[600];
    char rule[64];
    unsigned flags;
};

/* Scan the message in odd-sized chunks on a fresh worker of `e`. */
static void scan_msg(struct mx_scan_engine *e, const char *msg, struct out *out)
{
    struct mx_scan_worker *w = mx_scan_worker_new(e);
    assert_non_null(w);
    struct mx_scan_msg *m = mx_scan_msg_begin(w);
    assert_non_null(m);
    size_t n = strlen(msg);
    for (size_t off = 0; off < n; off += 4093)
        assert_int_equal(mx_scan_msg_feed(m, (const uint8_t *)msg + off,
                                          n - off < 4093 ? n - off : 4093), 0);
    struct mx_scan_result r;
    assert_int_equal(mx_scan_msg_end(m, &r), 0);
    out->hits[0] = 0;
    for (unsigned i = 0; i < r.nhits; i++) {
        strcat(out->hits, i ? "," : "");
        strcat(out->hits, r.hits[i]);
    }
    snprintf(out->attachment, sizeof out->attachment, "%s", r.attachment ? r.attachment : "");
    snprintf(out->rule, sizeof out->rule, "%s", r.attachment_rule ? r.attachment_rule : "");
    out->flags = r.flags;
    mx_scan_msg_free(m);
    mx_scan_worker_free(w);
}

/* Archive `e` as `name`, scan it with engine `eng`. */
static void scan_archive(struct mx_scan_engine *eng, const char *name, const char *format,
                         const char *filter, const char *options, const char *pass,
                         const struct ent *e, size_t n, struct out *out)
{
    size_t len;
    uint8_t *a = make_archive(format, filter, options, pass, e, n, &len);
    char *msg = make_msg(name, a, len);
    scan_msg(eng, msg, out);
    free(msg);
    free(a);
}

/* The start of a PE executable (what libmagic needs to call it one). */
static void make_pe(uint8_t *b, size_t n)
{
    memset(b, 0, n);
    b[0] = 'M';
    b[1] = 'Z';
    for (size_t i = 2; i < 0x3c; i += 2)
        b[i] = 0x90;
    b[0x3c] = 0x40;
    memcpy(b + 0x40, "PE\0\0\x4c\x01\x01\x00", 8);
    b[0x54] = 0xe0;
    b[0x56] = 0x02;
    b[0x57] = 0x01;
    b[0x58] = 0x0b;
    b[0x59] = 0x01;
}

static const uint8_t text[] = "quarterly numbers attached\n";

static struct mx_scan_engine *eng;

static int setup(void **state)
{
    (void)state;
    snprintf(rules_path, sizeof rules_path, "/tmp/test_archive.XXXXXX");
    int fd = mkstemp(rules_path);
    if (fd < 0 || write(fd, test_rules, sizeof test_rules - 1) != (ssize_t)(sizeof test_rules - 1))
        return -1;
    close(fd);
    struct mx_scan_opts o = {0};
    const char *paths[] = {rules_path};
    o.rule_paths = paths;
    o.n_rule_paths = 1;
    char *err = NULL;
    if (mx_scan_engine_load(&o, &eng, &err) != 0) {
        fprintf(stderr, "load: %s\n", err ? err : "?");
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    mx_scan_engine_free(eng);
    unlink(rules_path);
    return 0;
}

static void test_rule_parse(void **state)
{
    (void)state;
    struct mx_scan_stats st;
    mx_scan_engine_stats(eng, &st);
    assert_int_equal(st.attachment, 8);
    assert_int_equal(st.skipped, 2); /* level=inside, flag=zipped */
    const char *name, *why;
    assert_int_equal(mx_scan_engine_skipped(eng, 0, &name, &why), 0);
    assert_string_equal(name, "BAD_LEVEL");
    assert_string_equal(why, "attachment level is not top or member");
    assert_int_equal(mx_scan_engine_skipped(eng, 1, &name, &why), 0);
    assert_string_equal(name, "BAD_FLAG");
    assert_string_equal(why, "unknown attachment flag");
}

static void test_zip_member(void **state)
{
    (void)state;
    struct out o;
    const struct ent e[] = {{"readme.txt", text, sizeof text - 1, 0},
                            {"x.exe", text, sizeof text - 1, 0},
                            {"docs/secret_plan.txt", text, sizeof text - 1, 0}};
    scan_archive(eng, "invoice.zip", "zip", NULL, NULL, NULL, e, 3, &o);
    assert_string_equal(o.hits, "BAD_EXE,MEMBER_SECRET,TOP_ARCHIVE");
    assert_string_equal(o.attachment, "invoice.zip/x.exe");
    assert_string_equal(o.rule, "BAD_EXE");
    assert_true(o.flags & MX_SCAN_ATTACHMENT);
    assert_false(o.flags & (MX_SCAN_ENCRYPTED | MX_SCAN_ARCHIVE_CORRUPT | MX_SCAN_TRUNCATED));
    /* level=member: the same name as a plain attachment does not hit */
    char *msg = make_msg("secret_plan.txt", text, sizeof text - 1);
    scan_msg(eng, msg, &o);
    free(msg);
    assert_string_equal(o.hits, "");
    assert_string_equal(o.attachment, "");
    /* a text member is text/plain (without libmagic), a PE is not */
    uint8_t pe[1024];
    make_pe(pe, sizeof pe);
    const struct ent et[] = {{"notes.md", text, sizeof text - 1, 0}};
    scan_archive(eng, "notes.zip", "zip", NULL, NULL, NULL, et, 1, &o);
    assert_string_equal(o.hits, "MEMBER_TEXT,TOP_ARCHIVE");
    const struct ent ep[] = {{"notes.md", pe, sizeof pe, 0}};
    scan_archive(eng, "notes.zip", "zip", NULL, NULL, NULL, ep, 1, &o);
    assert_string_equal(o.hits, "EXE_TYPE,TOP_ARCHIVE");
    /* a clean zip: only the archive rule (level=top flag=archive) */
    scan_archive(eng, "clean.zip", "zip", NULL, NULL, NULL, e, 1, &o);
    assert_string_equal(o.hits, "TOP_ARCHIVE");
    assert_string_equal(o.attachment, "clean.zip");
}

static void test_formats(void **state)
{
    (void)state;
    struct out o;
    uint8_t pe[1024];
    make_pe(pe, sizeof pe);
    /* a PE named .pdf in a 7z: its true type inside the archive */
    const struct ent e7[] = {{"report.pdf", pe, sizeof pe, 0}};
    scan_archive(eng, "report.7z", "7zip", NULL, NULL, NULL, e7, 1, &o);
    assert_string_equal(o.hits, "EXE_TYPE,TOP_ARCHIVE");
    assert_string_equal(o.attachment, "report.7z/report.pdf");
    /* tar.gz and tar.xz */
    const struct ent et[] = {{"a/readme.txt", text, sizeof text - 1, 0},
                             {"a/payload.exe", text, sizeof text - 1, 0}};
    scan_archive(eng, "bundle.tar.gz", "ustar", "gzip", NULL, NULL, et, 2, &o);
    assert_string_equal(o.hits, "BAD_EXE,TOP_ARCHIVE");
    assert_string_equal(o.attachment, "bundle.tar.gz/a/payload.exe");
    scan_archive(eng, "bundle.txz", "ustar", "xz", NULL, NULL, et, 2, &o);
    assert_string_equal(o.hits, "BAD_EXE,TOP_ARCHIVE");
    /* a lone gzip file: its one member is named after it */
    const struct ent eg[] = {{"x.exe", pe, sizeof pe, 0}};
    scan_archive(eng, "x.exe.gz", "raw", "gzip", NULL, NULL, eg, 1, &o);
    assert_string_equal(o.hits, "BAD_EXE,EXE_TYPE,TOP_ARCHIVE");
    assert_string_equal(o.attachment, "x.exe.gz/x.exe");
    /* the archive is recognised by content whatever its name */
    scan_archive(eng, "photo.jpg", "zip", NULL, NULL, NULL, et, 2, &o);
    assert_string_equal(o.hits, "BAD_EXE,TOP_ARCHIVE");
    assert_string_equal(o.attachment, "photo.jpg/a/payload.exe");
}

/* l1.zip { l2.zip { l3.zip { deep.exe } } } */
static uint8_t *nested3(size_t *len)
{
    const struct ent e3[] = {{"deep.exe", text, sizeof text - 1, 0}};
    size_t l3, l2;
    uint8_t *a3 = make_archive("zip", NULL, NULL, NULL, e3, 1, &l3);
    const struct ent e2[] = {{"l3.zip", a3, l3, 0}};
    uint8_t *a2 = make_archive("zip", NULL, NULL, NULL, e2, 1, &l2);
    const struct ent e1[] = {{"notes.txt", text, sizeof text - 1, 0}, {"l2.zip", a2, l2, 0}};
    uint8_t *a1 = make_archive("zip", NULL, NULL, NULL, e1, 2, len);
    free(a3);
    free(a2);
    return a1;
}

static void test_nested_depth(void **state)
{
    (void)state;
    struct out o;
    size_t len;
    uint8_t *a = nested3(&len);
    char *msg = make_msg("l1.zip", a, len);
    /* default depth 3: l1, l2 and l3 are opened */
    scan_msg(eng, msg, &o);
    assert_string_equal(o.hits, "BAD_EXE,TOP_ARCHIVE");
    assert_string_equal(o.attachment, "l1.zip/l2.zip/l3.zip/deep.exe");
    assert_false(o.flags & MX_SCAN_TRUNCATED);
    /* depth 2: l3.zip is not opened, the limit says so */
    struct mx_scan_engine *e2 = load((struct mx_scan_opts){.archive_max_depth = 2});
    scan_msg(e2, msg, &o);
    assert_string_equal(o.hits, "LIMIT,TOP_ARCHIVE");
    assert_string_equal(o.attachment, "l1.zip/l2.zip/l3.zip");
    assert_true(o.flags & MX_SCAN_TRUNCATED);
    mx_scan_engine_free(e2);
    /* depth 1: only the attachment itself */
    struct mx_scan_engine *e1 = load((struct mx_scan_opts){.archive_max_depth = 1});
    scan_msg(e1, msg, &o);
    assert_string_equal(o.hits, "LIMIT,TOP_ARCHIVE");
    assert_string_equal(o.attachment, "l1.zip/l2.zip");
    mx_scan_engine_free(e1);
    free(msg);
    free(a);
}

static void test_member_limit(void **state)
{
    (void)state;
    struct out o;
    struct ent e[31];
    char names[30][16];
    for (int i = 0; i < 30; i++) {
        snprintf(names[i], sizeof names[i], "f%02d.txt", i);
        e[i] = (struct ent){names[i], text, sizeof text - 1, 0};
    }
    e[30] = (struct ent){"last.exe", text, sizeof text - 1, 0};
    size_t len;
    uint8_t *a = make_archive("zip", NULL, NULL, NULL, e, 31, &len);
    char *msg = make_msg("many.zip", a, len);
    scan_msg(eng, msg, &o);
    assert_string_equal(o.hits, "BAD_EXE,TOP_ARCHIVE");
    struct mx_scan_engine *e10 = load((struct mx_scan_opts){.archive_max_members = 10});
    scan_msg(e10, msg, &o);
    assert_string_equal(o.hits, "LIMIT,TOP_ARCHIVE");
    assert_string_equal(o.attachment, "many.zip");
    assert_true(o.flags & MX_SCAN_TRUNCATED);
    mx_scan_engine_free(e10);
    free(msg);
    free(a);
}

static void test_bomb_and_size(void **state)
{
    (void)state;
    struct out o;
    /* 32 MiB of zeros deflate to ~32 KiB: a zip bomb in miniature */
    static uint8_t zeros[1 << 20];
    const struct ent e[] = {{"zeros.bin", zeros, sizeof zeros, 32},
                            {"after.exe", text, sizeof text - 1, 0}};
    size_t len;
    uint8_t *a = make_archive("zip", NULL, NULL, NULL, e, 2, &len);
    assert_true(len < 256 * 1024);
    char *msg = make_msg("bomb.zip", a, len);
    /* default total 64 MiB: read through, the member after it is seen */
    scan_msg(eng, msg, &o);
    assert_string_equal(o.hits, "BAD_EXE,TOP_ARCHIVE");
    /* total 8 MiB: the walk stops inside zeros.bin (after its head was
     * reported), the archive carries the limit */
    struct mx_scan_engine *e8 = load((struct mx_scan_opts){.archive_max_total = 8u << 20});
    scan_msg(e8, msg, &o);
    assert_string_equal(o.hits, "LIMIT,TOP_ARCHIVE");
    assert_string_equal(o.attachment, "bomb.zip");
    assert_true(o.flags & MX_SCAN_TRUNCATED);
    mx_scan_engine_free(e8);
    free(msg);
    free(a);
    /* the same in a tar.gz, where skipping a member means decompressing it */
    a = make_archive("ustar", "gzip", NULL, NULL, e, 2, &len);
    msg = make_msg("bomb.tgz", a, len);
    e8 = load((struct mx_scan_opts){.archive_max_total = 8u << 20});
    scan_msg(e8, msg, &o);
    assert_string_equal(o.hits, "LIMIT,TOP_ARCHIVE");
    mx_scan_engine_free(e8);
    free(msg);
    free(a);
    /* an attachment larger than archive_max_bytes is not kept nor opened */
    static uint8_t noise[200 * 1024];
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < sizeof noise; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise[i] = (uint8_t)x;
    }
    const struct ent en[] = {{"noise.bin", noise, sizeof noise, 0},
                             {"x.exe", text, sizeof text - 1, 0}};
    a = make_archive("zip", NULL, NULL, NULL, en, 2, &len);
    msg = make_msg("big.zip", a, len);
    struct mx_scan_engine *e64 = load((struct mx_scan_opts){.archive_max_bytes = 64 * 1024});
    scan_msg(e64, msg, &o);
    assert_string_equal(o.hits, "LIMIT,TOP_ARCHIVE");
    assert_string_equal(o.attachment, "big.zip");
    mx_scan_engine_free(e64);
    scan_msg(eng, msg, &o);
    assert_string_equal(o.hits, "BAD_EXE,TOP_ARCHIVE");
    free(msg);
    free(a);
}

static void test_corrupt(void **state)
{
    (void)state;
    struct out o;
    uint8_t pe[1024];
    make_pe(pe, sizeof pe);
    static uint8_t noise[64 * 1024];
    uint32_t x = 88172645u;
    for (size_t i = 0; i < sizeof noise; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise[i] = (uint8_t)x;
    }
    const struct ent e[] = {{"noise.bin", noise, sizeof noise, 0}, {"x.exe", pe, sizeof pe, 0}};
    size_t len;
    uint8_t *a = make_archive("zip", NULL, NULL, NULL, e, 2, &len);
    /* cut inside noise.bin: no central directory, data ends early */
    char *msg = make_msg("cut.zip", a, len / 2);
    scan_msg(eng, msg, &o);
    assert_true(o.flags & MX_SCAN_ARCHIVE_CORRUPT);
    assert_non_null(strstr(o.hits, "CORRUPT"));
    assert_null(strstr(o.hits, "BAD_EXE"));
    free(msg);
    /* text named .zip is no archive: corrupt, not a crash */
    msg = make_msg("letter.zip", text, sizeof text - 1);
    scan_msg(eng, msg, &o);
    assert_string_equal(o.hits, "CORRUPT,TOP_ARCHIVE");
    assert_true(o.flags & MX_SCAN_ARCHIVE_CORRUPT);
    free(msg);
    /* a zip signature followed by garbage (general purpose flags clear:
     * bit 0 would claim encryption) */
    memcpy(noise, "PK\3\4", 4);
    noise[6] = noise[7] = 0;
    msg = make_msg("junk.bin", noise, 4096);
    scan_msg(eng, msg, &o);
    assert_string_equal(o.hits, "CORRUPT,TOP_ARCHIVE");
    free(msg);
    free(a);
}

static void test_encrypted(void **state)
{
    (void)state;
    struct out o;
    const struct ent e[] = {{"readme.txt", text, sizeof text - 1, 0},
                            {"x.exe", text, sizeof text - 1, 0}};
    /* ZipCrypto: names stay readable, data does not */
    scan_archive(eng, "locked.zip", "zip", NULL, "zip:encryption=zipcrypt", "secret", e, 2, &o);
    assert_string_equal(o.hits, "BAD_EXE,ENCRYPTED,TOP_ARCHIVE");
    assert_string_equal(o.attachment, "locked.zip/readme.txt");
    assert_string_equal(o.rule, "ENCRYPTED");
    assert_true(o.flags & MX_SCAN_ENCRYPTED);
    assert_false(o.flags & MX_SCAN_ARCHIVE_CORRUPT);
    /* AES-256 as well */
    const struct ent e1[] = {{"readme.txt", text, sizeof text - 1, 0}};
    scan_archive(eng, "aes.zip", "zip", NULL, "zip:encryption=aes256", "secret", e1, 1, &o);
    assert_string_equal(o.hits, "ENCRYPTED,TOP_ARCHIVE");
    assert_true(o.flags & MX_SCAN_ENCRYPTED);
}

static void test_default_rules(void **state)
{
    (void)state;
    const char *dir = getenv("SCAN_RULES_DIR");
    assert_non_null(dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/default.rules", dir);
    const char *paths[] = {path};
    struct mx_scan_opts opts = {.rule_paths = paths, .n_rule_paths = 1};
    struct mx_scan_engine *e = NULL;
    char *err = NULL;
    assert_int_equal(mx_scan_engine_load(&opts, &e, &err), 0);
    struct out o;
    const struct ent ex[] = {{"invoice.pdf", text, sizeof text - 1, 0},
                             {"invoice.pdf.exe", text, sizeof text - 1, 0}};
    scan_archive(e, "invoice.zip", "zip", NULL, NULL, NULL, ex, 2, &o);
    assert_string_equal(o.hits, "MX_ATT_DOUBLE_EXT,MX_ATT_EXEC_EXT");
    assert_string_equal(o.attachment, "invoice.zip/invoice.pdf.exe");
    /* macro code in an Office Open XML file, whatever its name says */
    const struct ent ox[] = {{"[Content_Types].xml", text, sizeof text - 1, 0},
                             {"word/document.xml", text, sizeof text - 1, 0},
                             {"word/vbaProject.bin", text, sizeof text - 1, 0}};
    scan_archive(e, "report.docx", "zip", NULL, NULL, NULL, ox, 3, &o);
    assert_string_equal(o.hits, "MX_ATT_VBA_PROJECT");
    assert_string_equal(o.attachment, "report.docx/word/vbaProject.bin");
    scan_archive(e, "report.docx", "zip", NULL, NULL, NULL, ox, 2, &o);
    assert_string_equal(o.hits, "");
    mx_scan_engine_free(e);
}

/* Text heads: "text/plain" without libmagic while no rule tells text types
 * apart; a rule that names one (here text/x-shellscript) gets libmagic's
 * answer for text attachments and members alike. */
static void test_text_types(void **state)
{
    (void)state;
    static const uint8_t script[] = "#!/bin/sh\necho cleaning up\nrm -f /tmp/x\n";
    struct out o;
    /* eng's rules have `truetype=text/plain` only: the script is text/plain */
    const struct ent md[] = {{"notes.md", script, sizeof script - 1, 0}};
    scan_archive(eng, "notes.zip", "zip", NULL, NULL, NULL, md, 1, &o);
    assert_string_equal(o.hits, "MEMBER_TEXT,TOP_ARCHIVE");
    char path[] = "/tmp/test_archive_text.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    static const char rules[] = "attachment SCRIPT truetype=text/x-shellscript\n"
                                "attachment PLAIN truetype=text/plain\n";
    assert_int_equal(write(fd, rules, sizeof rules - 1), (ssize_t)(sizeof rules - 1));
    close(fd);
    const char *paths[] = {path};
    struct mx_scan_opts opts = {.rule_paths = paths, .n_rule_paths = 1};
    struct mx_scan_engine *e = NULL;
    char *err = NULL;
    assert_int_equal(mx_scan_engine_load(&opts, &e, &err), 0);
    const struct ent sh[] = {{"cleanup.txt", script, sizeof script - 1, 0},
                             {"readme.txt", text, sizeof text - 1, 0}};
    scan_archive(e, "tools.zip", "zip", NULL, NULL, NULL, sh, 2, &o);
    assert_string_equal(o.hits, "PLAIN,SCRIPT");
    assert_string_equal(o.attachment, "tools.zip/cleanup.txt");
    assert_string_equal(o.rule, "SCRIPT");
    char *msg = make_msg("cleanup.txt", script, sizeof script - 1);
    scan_msg(e, msg, &o);
    free(msg);
    assert_string_equal(o.hits, "SCRIPT");
    mx_scan_engine_free(e);
    unlink(path);
}

/* 7z's variable-length number (see sz_num() in scan/archive.c) */
static size_t put_7znum(uint8_t *o, uint64_t v)
{
    unsigned n = 0;
    while (n < 8 && v >= (1ull << (8 * n + 7 - n)))
        n++;
    o[0] = (uint8_t)((0xff00u >> n) & 0xff);
    if (n < 8)
        o[0] |= (uint8_t)(v >> (8 * n));
    for (unsigned i = 0; i < n; i++)
        o[1 + i] = (uint8_t)(v >> (8 * i));
    return 1 + n;
}

/*
 * A one-member 7z written by libarchive with `options` (its header is
 * plain: one entry), the declared memory of its coder set to `mem` when not
 * 0 (LZMA2: the dictionary byte; PPMd: the model size), and when `encode`,
 * its header packed with LZMA2 the way 7-Zip packs headers, the packed
 * header declaring `hdr_unpack` bytes when not 0.
 */
static uint8_t *make_7z(const char *options, uint32_t mem, bool encode, uint64_t hdr_unpack,
                        const struct ent *e, size_t *outlen)
{
    size_t len;
    uint8_t *a = make_archive("7zip", NULL, options, NULL, e, 1, &len);
    uint64_t off = 0, size = 0;
    for (int i = 7; i >= 0; i--) {
        off = off << 8 | a[12 + i];
        size = size << 8 | a[20 + i];
    }
    uint8_t *h = a + 32 + off;
    assert_int_equal(h[0], 0x01); /* kHeader */
    if (mem) {
        bool ppmd = strstr(options, "ppmd") != NULL;
        static const uint8_t lzma2[] = {0x21, 0x21, 0x01}, pp[] = {0x23, 0x03, 0x04, 0x01, 0x05};
        const uint8_t *pat = ppmd ? pp : lzma2;
        size_t pl = ppmd ? sizeof pp : sizeof lzma2, i = 0;
        while (i + pl + 5 <= size && memcmp(h + i, pat, pl) != 0)
            i++;
        assert_true(i + pl + 5 <= size);
        if (ppmd)
            for (int k = 0; k < 4; k++)
                h[i + pl + 1 + k] = (uint8_t)(mem >> (8 * k));
        else
            h[i + pl] = (uint8_t)mem;
    }
    uint8_t *out = malloc(len + 4096);
    assert_non_null(out);
    memcpy(out, a, 32 + off);
    size_t o = 32 + off;
    if (encode) {
        lzma_options_lzma opt;
        assert_false(lzma_lzma_preset(&opt, 1));
        lzma_filter f[] = {{LZMA_FILTER_LZMA2, &opt}, {LZMA_VLI_UNKNOWN, NULL}};
        size_t pk = 0;
        assert_int_equal(lzma_raw_buffer_encode(f, NULL, h, size, out + o, &pk, len + 2048),
                         LZMA_OK);
        uint32_t propsz;
        uint8_t prop;
        assert_int_equal(lzma_properties_size(&propsz, f), LZMA_OK);
        assert_int_equal(propsz, 1);
        assert_int_equal(lzma_properties_encode(f, &prop), LZMA_OK);
        size_t eh = o + pk, p = eh;
        out[p++] = 0x17; /* kEncodedHeader */
        out[p++] = 0x06; /* PackInfo: at off, one stream of pk bytes */
        p += put_7znum(out + p, off);
        out[p++] = 1;
        out[p++] = 0x09;
        p += put_7znum(out + p, pk);
        out[p++] = 0x00;
        out[p++] = 0x07; /* UnpackInfo: one folder, one LZMA2 coder */
        out[p++] = 0x0b;
        out[p++] = 1;
        out[p++] = 0;
        out[p++] = 1;
        out[p++] = 0x21;
        out[p++] = 0x21;
        out[p++] = 1;
        out[p++] = prop;
        out[p++] = 0x0c;
        p += put_7znum(out + p, hdr_unpack ? hdr_unpack : size);
        out[p++] = 0x00;
        out[p++] = 0x00;
        off += pk;
        size = p - eh;
        h = out + eh;
        o = p;
    } else {
        memcpy(out + o, h, size);
        o += size;
    }
    for (int i = 0; i < 8; i++) {
        out[12 + i] = (uint8_t)(off >> (8 * i));
        out[20 + i] = (uint8_t)(size >> (8 * i));
    }
    uint32_t crc = lzma_crc32(h, size, 0);
    for (int i = 0; i < 4; i++)
        out[28 + i] = (uint8_t)(crc >> (8 * i));
    crc = lzma_crc32(out + 12, 20, 0);
    for (int i = 0; i < 4; i++)
        out[8 + i] = (uint8_t)(crc >> (8 * i));
    free(a);
    *outlen = o;
    return out;
}

/* 7z coders declaring more memory than archive_max_total (an LZMA2
 * dictionary of 1.5 GiB, a PPMd model of 1 GiB; libarchive would allocate
 * them) are `limit` and the archive is not opened, whether the header is
 * plain or packed; a packed header larger than archive_max_bytes too. The
 * same archives with their own sizes are read. */
static void test_7z_memory(void **state)
{
    (void)state;
    struct out o;
    uint8_t pe[512];
    make_pe(pe, sizeof pe);
    const struct ent e[] = {{"x.exe", pe, sizeof pe, 0}};
    static const struct {
        const char *options;
        uint32_t mem;
        bool encode;
        uint64_t hdr_unpack;
        const char *hits;
    } cases[] = {
        {"compression=lzma2", 0, false, 0, "BAD_EXE,EXE_TYPE,TOP_ARCHIVE"},
        {"compression=lzma2", 0, true, 0, "BAD_EXE,EXE_TYPE,TOP_ARCHIVE"},
        {"compression=lzma2", 28, false, 0, "BAD_EXE,EXE_TYPE,TOP_ARCHIVE"}, /* 64 MiB */
        {"compression=lzma2", 29, false, 0, "LIMIT,TOP_ARCHIVE"},            /* 96 MiB */
        {"compression=lzma2", 37, false, 0, "LIMIT,TOP_ARCHIVE"},            /* 1.5 GiB */
        {"compression=lzma2", 40, true, 0, "LIMIT,TOP_ARCHIVE"},             /* 4 GiB */
        {"compression=ppmd", 0, false, 0, "BAD_EXE,EXE_TYPE,TOP_ARCHIVE"},
        {"compression=ppmd", 1u << 30, false, 0, "LIMIT,TOP_ARCHIVE"},
        {"compression=ppmd", 1u << 30, true, 0, "LIMIT,TOP_ARCHIVE"},
        {"compression=lzma2", 0, true, 5u << 20, "LIMIT,TOP_ARCHIVE"}, /* > 4 MiB header */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len;
        uint8_t *a =
            make_7z(cases[i].options, cases[i].mem, cases[i].encode, cases[i].hdr_unpack, e, &len);
        char *msg = make_msg("a.7z", a, len);
        scan_msg(eng, msg, &o);
        if (strcmp(o.hits, cases[i].hits) != 0)
            fprintf(stderr, "case %zu: %s\n", i, o.hits);
        assert_string_equal(o.hits, cases[i].hits);
        assert_int_equal(!!(o.flags & MX_SCAN_TRUNCATED), strncmp(cases[i].hits, "LIMIT", 5) == 0);
        free(msg);
        /* the same 7z in a gzip: libarchive does not read it as a 7z
         * behind the filter, its raw member a.7z is checked one level
         * deeper */
        struct ent g[] = {{"a.7z", a, len, 0}};
        size_t gl;
        uint8_t *ga = make_archive("raw", "gzip", NULL, NULL, g, 1, &gl);
        msg = make_msg("a.7z.gz", ga, gl);
        scan_msg(eng, msg, &o);
        assert_string_equal(o.hits, cases[i].hits);
        free(msg);
        free(ga);
        free(a);
    }
    /* the cap is archive_max_total, not what the message's budget has left:
     * after 3 MiB of a 3.5 MiB budget, a 7z declaring 32 MiB is read */
    static uint8_t zeros[1 << 20];
    const struct ent z[] = {{"z.bin", zeros, sizeof zeros, 3}};
    size_t zl, sl;
    uint8_t *za = make_archive("zip", NULL, NULL, NULL, z, 1, &zl);
    uint8_t *sa = make_7z("compression=lzma2", 26, false, 0, e, &sl);
    const struct attach_part parts[] = {{"z.zip", za, zl}, {"a.7z", sa, sl}};
    struct mx_scan_engine *e1 = load((struct mx_scan_opts){.archive_max_message_total = 7u << 19});
    char *msg = attach_msgv(parts, 2, NULL);
    assert_non_null(msg);
    scan_msg(e1, msg, &o);
    assert_string_equal(o.hits, "BAD_EXE,EXE_TYPE,TOP_ARCHIVE");
    free(msg);
    mx_scan_engine_free(e1);
    free(za);
    free(sa);
}

/* A 7z with one folder (Copy) of 16 bytes, its header written here with
 * `nfolders` folders declared (only one described), `nsub` unpack streams
 * in it and `nfiles` files (or with `empty_files` more files, all marked
 * empty by one bit each); `ins`: the coder declared complex, with that many
 * in streams (and one out). */
static uint8_t *make_7z_counts(uint64_t nfolders, uint64_t nsub, uint64_t nfiles,
                               uint64_t empty_files, uint64_t ins, size_t *outlen)
{
    uint8_t *b = calloc(1, 32 + 16 + 128 + empty_files / 8);
    assert_non_null(b);
    memcpy(b, "7z\xbc\xaf\x27\x1c\x00\x04", 8);
    memcpy(b + 32, "MZ", 2);
    uint8_t *h = b + 48, *p = h;
    static const uint8_t pack[] = {0x01, 0x04, 0x06, 0x00, 0x01, 0x09, 0x10, 0x00, 0x07, 0x0b};
    memcpy(p, pack, sizeof pack);
    p += sizeof pack;
    p += put_7znum(p, nfolders);
    static const uint8_t folder[] = {0x00, 0x01, 0x01, 0x00, 0x0c, 0x10, 0x00, 0x08, 0x0d};
    if (ins) {
        *p++ = 0x00; /* not external */
        *p++ = 0x01; /* one coder: complex, id 1 byte, Copy */
        *p++ = 0x11;
        *p++ = 0x00;
        p += put_7znum(p, ins);
        *p++ = 0x01;
        memcpy(p, folder + 4, sizeof folder - 4);
        p += sizeof folder - 4;
    } else {
        memcpy(p, folder, sizeof folder);
        p += sizeof folder;
    }
    p += put_7znum(p, nsub);
    *p++ = 0x00;
    *p++ = 0x00;
    *p++ = 0x05;
    p += put_7znum(p, nfiles + empty_files);
    if (empty_files) {
        *p++ = 0x0e;
        p += put_7znum(p, (nfiles + empty_files + 7) / 8);
        memset(p + nfiles / 8, 0xff, (nfiles + empty_files + 7) / 8 - nfiles / 8);
        p += (nfiles + empty_files + 7) / 8;
    }
    *p++ = 0x00;
    *p++ = 0x00;
    uint64_t size = (uint64_t)(p - h);
    for (int i = 0; i < 8; i++) {
        b[12 + i] = (uint8_t)((uint64_t)16 >> (8 * i));
        b[20 + i] = (uint8_t)(size >> (8 * i));
    }
    uint32_t crc = lzma_crc32(h, size, 0);
    for (int i = 0; i < 4; i++)
        b[28 + i] = (uint8_t)(crc >> (8 * i));
    crc = lzma_crc32(b + 12, 20, 0);
    for (int i = 0; i < 4; i++)
        b[8 + i] = (uint8_t)(crc >> (8 * i));
    *outlen = (size_t)(p - b);
    return b;
}

/* Counts libarchive allocates for while it reads a 7z header, before it
 * reads what they count (main's walk: 512 MB for 100M unpack streams
 * declared in 78 bytes; 2.6 GB and 8.7 s for 3.75 MB declaring 30M empty
 * files): over 2^18 files or streams is `limit`, more folders than the
 * header has bytes `corrupt`, and the archive is not opened. */
static void test_7z_counts(void **state)
{
    (void)state;
    struct out o;
    static const struct {
        uint64_t nfolders, nsub, nfiles, empty;
        const char *hits;
    } cases[] = {
        {1, 1, 1, 0, "TOP_ARCHIVE"},
        {1, 100000000, 1, 0, "LIMIT,TOP_ARCHIVE"},
        {1, 1, 1u << 20, 0, "LIMIT,TOP_ARCHIVE"},
        {1, 1, 1, 500, "TOP_ARCHIVE"},
        {1, 1, 1, 300000, "LIMIT,TOP_ARCHIVE"},
        {100000000, 1, 1, 0, "CORRUPT,TOP_ARCHIVE"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len;
        uint8_t *a = make_7z_counts(cases[i].nfolders, cases[i].nsub, cases[i].nfiles,
                                    cases[i].empty, 0, &len);
        char *msg = make_msg("c.7z", a, len);
        scan_msg(eng, msg, &o);
        if (strcmp(o.hits, cases[i].hits) != 0)
            fprintf(stderr, "case %zu: %s\n", i, o.hits);
        assert_string_equal(o.hits, cases[i].hits);
        free(msg);
        free(a);
    }
}

/* The message's CPU budget for its walks (archive_max_message_cpu): a PPMd
 * 7z decodes at a few MB/s, so 512 KiB of random text take tens of ms: with
 * 1 ms the walk stops inside it (`limit`, the exe after it not seen), with
 * the default it is read through. */
static void test_message_cpu(void **state)
{
    (void)state;
    struct out o;
    static uint8_t txt[512 * 1024];
    uint32_t x = 88172645u;
    for (size_t i = 0; i < sizeof txt; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        txt[i] = (uint8_t)('a' + x % 26);
    }
    const struct ent e[] = {{"big.txt", txt, sizeof txt, 0}, {"x.exe", text, sizeof text - 1, 0}};
    size_t len;
    uint8_t *a = make_archive("7zip", NULL, "compression=ppmd", NULL, e, 2, &len);
    char *msg = make_msg("slow.7z", a, len);
    scan_msg(eng, msg, &o);
    assert_string_equal(o.hits, "BAD_EXE,TOP_ARCHIVE");
    struct mx_scan_engine *e1 = load((struct mx_scan_opts){.archive_max_message_cpu_ms = 1});
    scan_msg(e1, msg, &o);
    assert_string_equal(o.hits, "LIMIT,TOP_ARCHIVE");
    assert_true(o.flags & MX_SCAN_TRUNCATED);
    mx_scan_engine_free(e1);
    free(msg);
    free(a);
}

/* Formats that read their whole directory before the first member (mtree,
 * xar, iso9660) are not read: mtree lines in a gzip (main's walk: 3.4 GB
 * for 20M lines in 466 KB; here 200k lines, which mtree listed as members
 * up to the member limit, even without "#mtree") are the gzip's one raw
 * member. */
static void test_mtree_in_gzip(void **state)
{
    (void)state;
    struct out o;
    static const char line[] = "a type=file\n";
    size_t n = 200000, len = 7 + n * (sizeof line - 1);
    uint8_t *txt = malloc(len);
    assert_non_null(txt);
    memcpy(txt, "#mtree\n", 7);
    for (size_t i = 0; i < n; i++)
        memcpy(txt + 7 + i * (sizeof line - 1), line, sizeof line - 1);
    const struct ent e[] = {{"lines", txt, len, 0}};
    size_t gl;
    uint8_t *g = make_archive("raw", "gzip", NULL, NULL, e, 1, &gl);
    char *msg = make_msg("lines.gz", g, gl);
    scan_msg(eng, msg, &o);
    assert_string_equal(o.hits, "TOP_ARCHIVE");
    assert_false(o.flags & MX_SCAN_TRUNCATED);
    free(msg);
    free(g);
    free(txt);
}

/* No decompressor program is started: libarchive reads lrzip, lzop and
 * grzip data by running `lrzip -d`, `lzop -d`, `grzip -d` (found on PATH).
 * Here fake ones that leave a mark stand first on PATH, and data with each
 * format's magic arrives as "x.gz" (an archive name, so it is walked). */
static void test_no_external_programs(void **state)
{
    (void)state;
    char dir[] = "/tmp/mxgate-test-progs-XXXXXX";
    assert_non_null(mkdtemp(dir));
    static const char *const progs[] = {"lrzip", "lzop", "grzip", "gzip", "bzip2", "lz4", "zstd"};
    char p[256], mark[256];
    snprintf(mark, sizeof mark, "%s/ran", dir);
    for (size_t i = 0; i < sizeof progs / sizeof *progs; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, progs[i]);
        FILE *f = fopen(p, "w");
        assert_non_null(f);
        fprintf(f, "#!/bin/sh\necho %s >> %s\ncat > /dev/null\n", progs[i], mark);
        fclose(f);
        assert_int_equal(chmod(p, 0755), 0);
    }
    const char *old = getenv("PATH");
    char *saved = strdup(old ? old : "/usr/bin:/bin");
    char path[4096];
    snprintf(path, sizeof path, "%s:%s", dir, saved);
    setenv("PATH", path, 1);
    static const struct {
        const char *magic;
        size_t n;
    } m[] = {{"\x89LZO\0\r\n\x1a\n\x10\x30\x20\xa0\x09\x40\x01\x05", 17},
             {"LRZI\0\x06\0\0\0\0\0\0\x10\0\0\0", 16},
             {"GRZipII\0\x02\x04:)\0\0\0\0", 16}};
    for (size_t i = 0; i < sizeof m / sizeof *m; i++) {
        uint8_t data[4096];
        memset(data, 'a', sizeof data);
        memcpy(data, m[i].magic, m[i].n);
        char *msg = make_msg("x.gz", data, sizeof data);
        struct out o;
        scan_msg(eng, msg, &o);
        free(msg);
    }
    setenv("PATH", saved, 1);
    free(saved);
    FILE *f = fopen(mark, "r");
    char ran[256] = "";
    if (f) {
        if (!fgets(ran, sizeof ran, f))
            ran[0] = 0;
        fclose(f);
    }
    assert_string_equal(ran, ""); /* no program ran */
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- decoder memory declared in zip, RAR 2.9, xz, lzma and lzip data ---- */

/* This process's peak virtual size (what a declared-and-allocated model or
 * dictionary raises even where little of it is touched), KiB. */
static long vm_peak_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmPeak:", 7) == 0)
            v = atol(line + 7);
    if (f)
        fclose(f);
    return v;
}

/* tests/scan/data/FILE, malloc'd */
static uint8_t *data_file(const char *file, size_t *len)
{
    char path[512];
    const char *dir = getenv("SCAN_TEST_DATA");
    snprintf(path, sizeof path, "%s/%s", dir ? dir : "tests/scan/data", file);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    uint8_t *b = malloc(1 << 16);
    assert_non_null(b);
    *len = fread(b, 1, 1 << 16, f);
    fclose(f);
    return b;
}

static void put16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Scan `a` as attachment `name`: hits as expected, and where that is
 * `limit` or `corrupt` the process's peak virtual size grew by less than
 * 32 MiB (the declared 128 MiB - 4 GiB were allocated before the checks).
 * A peak is a peak: the cases that allocate most come first. */
static void scan_small(const char *name, const uint8_t *a, size_t len, const char *hits)
{
    struct out o;
    char *msg = make_msg(name, a, len);
    long p0 = vm_peak_kb();
    scan_msg(eng, msg, &o);
    long grew = vm_peak_kb() - p0;
    bool limit = strstr(hits, "LIMIT") != NULL, small = limit || strstr(hits, "CORRUPT");
    if (strcmp(o.hits, hits) != 0 || (small && grew >= 32 << 10))
        fprintf(stderr, "%s: %s, VmPeak +%ld KiB\n", name, o.hits, grew);
    assert_string_equal(o.hits, hits);
    assert_int_equal(!!(o.flags & MX_SCAN_TRUNCATED), limit);
    assert_true(!small || grew < 32 << 10);
    free(msg);
}

struct rar_ent {
    const char *name;
    uint8_t method; /* 0x30 stored, 0x33 normal */
    unsigned flags; /* file header flags besides 0x8000 (0x04: encrypted) */
    const uint8_t *data;
    size_t len;
};

/* A RAR 2.9 archive written here (no free tool writes one): marker, main
 * header, one file header per entry (header CRCs right), its data as
 * given, end of archive. */
static uint8_t *make_rar3(const struct rar_ent *e, size_t n, size_t *outlen)
{
    size_t cap = 64;
    for (size_t i = 0; i < n; i++)
        cap += 48 + strlen(e[i].name) + e[i].len;
    uint8_t *b = calloc(1, cap), *p = b;
    assert_non_null(b);
    memcpy(p, "Rar!\x1a\x07\x00", 7);
    p += 7;
    static const uint8_t mainh[] = {0, 0, 0x73, 0, 0, 13, 0, 0, 0, 0, 0, 0, 0};
    memcpy(p, mainh, sizeof mainh);
    put16(p, lzma_crc32(p + 2, 11, 0) & 0xffff);
    p += 13;
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(e[i].name), hs = 32 + nl + (e[i].flags & 0x400 ? 8 : 0);
        p[2] = 0x74;
        put16(p + 3, 0x8000 | e[i].flags);
        put16(p + 5, (unsigned)hs);
        /* packed and unpacked size, Windows, CRC, 2026-12-07 */
        put32(p + 7, (uint32_t)e[i].len);
        put32(p + 11, e[i].method == 0x30 ? (uint32_t)e[i].len : 1u << 20);
        p[15] = 2;
        put32(p + 16, lzma_crc32(e[i].data, e[i].len, 0));
        put32(p + 20, 0x5d870000);
        p[24] = 29;
        p[25] = e[i].method;
        put16(p + 26, (unsigned)nl);
        put32(p + 28, 0x20);
        memcpy(p + 32, e[i].name, nl);
        if (e[i].flags & 0x400)
            memcpy(p + 32 + nl, "saltsalt", 8);
        put16(p, lzma_crc32(p + 2, hs - 2, 0) & 0xffff);
        p += hs;
        memcpy(p, e[i].data, e[i].len);
        p += e[i].len;
    }
    static const uint8_t endh[] = {0, 0, 0x7b, 0, 0x40, 7, 0};
    memcpy(p, endh, sizeof endh);
    put16(p, lzma_crc32(p + 2, 5, 0) & 0xffff);
    p += 7;
    *outlen = (size_t)(p - b);
    return b;
}

/* LZMA options of preset 1 with a 1 MiB dictionary, and an output buffer
 * for `len` bytes of input (its size in *cap) */
static uint8_t *lzma_setup(lzma_options_lzma *lo, size_t len, size_t *cap)
{
    assert_false(lzma_lzma_preset(lo, 1));
    lo->dict_size = 1u << 20;
    *cap = len + len / 2 + 4096;
    uint8_t *b = malloc(*cap);
    assert_non_null(b);
    return b;
}

/* `data` as an xz stream (LZMA2, 1 MiB dictionary) whose first block then
 * declares LZMA2 dictionary property `prop` (block header CRC fixed). */
static uint8_t *make_xz(const uint8_t *data, size_t len, unsigned prop, size_t *outlen)
{
    lzma_options_lzma lo;
    size_t cap;
    uint8_t *b = lzma_setup(&lo, len, &cap);
    lzma_filter f[] = {{LZMA_FILTER_LZMA2, &lo}, {LZMA_VLI_UNKNOWN, NULL}};
    *outlen = 0;
    assert_int_equal(
        lzma_stream_buffer_encode(f, LZMA_CHECK_CRC32, NULL, data, len, b, outlen, cap), LZMA_OK);
    size_t hs = (b[12] + 1u) * 4, at = 14;
    for (unsigned bit = 0x40; bit <= 0x80; bit <<= 1) /* sizes, VLIs */
        if (b[13] & bit)
            while (b[at++] & 0x80)
                ;
    assert_int_equal(b[at], 0x21); /* the one filter, its property */
    assert_int_equal(b[at + 1], 1);
    b[at + 2] = (uint8_t)prop;
    put32(b + 12 + hs - 4, lzma_crc32(b + 12, hs - 4, 0));
    return b;
}

/* `data` as an .lzma file (1 MiB dictionary) then declaring `dict` */
static uint8_t *make_lzma(const uint8_t *data, size_t len, uint32_t dict, size_t *outlen)
{
    lzma_options_lzma lo;
    size_t cap;
    uint8_t *b = lzma_setup(&lo, len, &cap);
    lzma_stream z = LZMA_STREAM_INIT;
    assert_int_equal(lzma_alone_encoder(&z, &lo), LZMA_OK);
    z.next_in = data;
    z.avail_in = len;
    z.next_out = b;
    z.avail_out = cap;
    assert_int_equal(lzma_code(&z, LZMA_FINISH), LZMA_STREAM_END);
    *outlen = cap - z.avail_out;
    lzma_end(&z);
    put32(b + 1, dict);
    return b;
}

/* `data` as an lzip member (raw LZMA with its end marker, 1 MiB
 * dictionary) whose header then declares dictionary byte `db` */
static uint8_t *make_lzip(const uint8_t *data, size_t len, uint8_t db, size_t *outlen)
{
    lzma_options_lzma lo;
    size_t cap;
    uint8_t *b = lzma_setup(&lo, len, &cap);
    lzma_filter f[] = {{LZMA_FILTER_LZMA1, &lo}, {LZMA_VLI_UNKNOWN, NULL}};
    size_t o = 6;
    assert_int_equal(lzma_raw_buffer_encode(f, NULL, data, len, b, &o, cap - 20), LZMA_OK);
    memcpy(b, "LZIP\x01", 5);
    b[5] = db;
    put32(b + o, lzma_crc32(data, len, 0));
    for (int i = 0; i < 8; i++) {
        b[o + 4 + i] = (uint8_t)((uint64_t)len >> (8 * i));
        b[o + 12 + i] = (uint8_t)((uint64_t)(o + 20) >> (8 * i));
    }
    *outlen = o + 20;
    return b;
}

/*
 * Decoder memory declared at the start of the data, which libarchive 3.6.2
 * allocates as declared (main's walk: +256 MiB of virtual memory for a zip
 * PPMd entry or a RAR PPMd block, +1.5 GiB for an xz): a zip entry packed
 * with PPMd, LZMA or xz, a RAR 2.9 entry starting with a PPMd block, or an
 * xz/lzma/lzip stream declaring more than archive_max_total is `limit`, its
 * data is not read; the members around it are. The same files with small
 * declarations are read.
 */
static void test_decoder_memory(void **state)
{
    (void)state;
    uint8_t pe[512];
    make_pe(pe, sizeof pe);
    size_t len;

    /* a 7z coder declaring 16M in streams: libarchive allocated 8 bytes
     * for each before reading them (fuzz_archive with -malloc_limit_mb);
     * more than 7-Zip's 64 is corrupt. 64 is read on to libarchive, which
     * then refuses the folder itself. */
    uint8_t *x = make_7z_counts(1, 1, 1, 0, 16785149, &len);
    scan_small("c.7z", x, len, "CORRUPT,TOP_ARCHIVE");
    free(x);
    x = make_7z_counts(1, 1, 1, 0, 64, &len);
    scan_small("c.7z", x, len, "CORRUPT,TOP_ARCHIVE");
    free(x);

    /* zip PPMd (7-Zip 26.02, p7zip-full: 7z a -tzip -mm=PPMd -mmem=1m -mo=6
     * ppmd.zip notes.txt x.exe, notes.txt 40 lines of "quarterly numbers
     * attached", x.exe make_pe()'s 512 bytes); then both entries declaring
     * 256 MiB (0x0ff5: order 6), then only the first */
    uint8_t *z = data_file("ppmd.zip", &len);
    scan_small("ppmd.zip", z, len, "BAD_EXE,EXE_TYPE,TOP_ARCHIVE");
    static const size_t ppmd_at[] = {39, 114}; /* each entry's data */
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(z[ppmd_at[i]], 0x05);
        put16(z + ppmd_at[i], 0x0ff5);
    }
    scan_small("ppmd.zip", z, len, "BAD_EXE,LIMIT,TOP_ARCHIVE"); /* x.exe by name */
    put16(z + ppmd_at[1], 0x0005);
    scan_small("ppmd.zip", z, len, "BAD_EXE,EXE_TYPE,LIMIT,TOP_ARCHIVE");
    /* behind gzip libarchive reads the zip itself: its entries' data is
     * not in the attachment's bytes, a PPMd entry is `limit` */
    put16(z + ppmd_at[0], 0x0005);
    const struct ent g[] = {{"ppmd.zip", z, len, 0}};
    size_t gl;
    uint8_t *gz = make_archive("raw", "gzip", NULL, NULL, g, 1, &gl);
    scan_small("ppmd.zip.gz", gz, gl, "BAD_EXE,LIMIT,TOP_ARCHIVE");
    free(gz);
    /* zip LZMA (method 14) and xz (95) entries declaring 1 GiB, 1.5 GiB:
     * the first entry's method and data replaced (the walk never gets to
     * check its CRC) */
    static const uint8_t lzma14[] = {9, 20, 5, 0, 0x5d, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0};
    memcpy(z + ppmd_at[0], lzma14, sizeof lzma14);
    put16(z + 8, 14);
    scan_small("lzma.zip", z, len, "BAD_EXE,EXE_TYPE,LIMIT,TOP_ARCHIVE");
    free(z);

    /* RAR 2.9: a PPMd block declaring 256 MiB, then a stored x.exe; the
     * same with 1 MiB (then garbage: corrupt); a stored file whose data
     * looks like such a block (FF D8: a JPEG); an encrypted entry, whose
     * data libarchive 3.6.2 decodes as it is */
    uint8_t blk[4096];
    for (size_t i = 0; i < sizeof blk; i++)
        blk[i] = (uint8_t)(i * 131 + 7);
    blk[0] = 0x80 | 0x20 | 0x05; /* PPMd, new model, order 6 */
    blk[1] = 0xff;               /* 256 MiB */
    struct rar_ent r[] = {{"a.txt", 0x33, 0, blk, sizeof blk}, {"x.exe", 0x30, 0, pe, sizeof pe}};
    uint8_t *ra = make_rar3(r, 2, &len);
    scan_small("a.rar", ra, len, "BAD_EXE,EXE_TYPE,LIMIT,TOP_ARCHIVE");
    free(ra);
    r[0].flags = 0x04 | 0x400; /* encrypted, with a salt */
    ra = make_rar3(r, 2, &len);
    scan_small("a.rar", ra, len, "BAD_EXE,ENCRYPTED,EXE_TYPE,LIMIT,TOP_ARCHIVE");
    free(ra);
    r[0].flags = 0;
    r[0].method = 0x30;
    r[0].name = "a.jpg";
    blk[0] = 0xff;
    blk[1] = 0xd8;
    ra = make_rar3(r, 2, &len);
    scan_small("a.rar", ra, len, "BAD_EXE,EXE_TYPE,TOP_ARCHIVE");
    /* the same behind gzip: libarchive reads the RAR itself, its data is
     * not in the attachment's bytes: every entry is `limit`, by name */
    const struct ent gr[] = {{"a.rar", ra, len, 0}};
    gz = make_archive("raw", "gzip", NULL, NULL, gr, 1, &gl);
    scan_small("a.rar.gz", gz, gl, "BAD_EXE,LIMIT,TOP_ARCHIVE");
    free(gz);
    free(ra);
    r[0].method = 0x33;
    r[0].name = "a.txt";
    blk[0] = 0x80 | 0x20 | 0x05;
    blk[1] = 0x00;
    ra = make_rar3(r, 2, &len);
    scan_small("a.rar", ra, len, "CORRUPT,TOP_ARCHIVE");
    free(ra);

    /* xz: LZMA2 dictionary 1 MiB (property 16), 64 MiB (28), 1.5 GiB (37),
     * 4 GiB (40); an xz in an xz; the 1.5 GiB one behind gzip (its raw
     * member, checked one level deeper) */
    static const struct {
        unsigned prop;
        const char *hits;
    } xzc[] = {{16, "BAD_EXE,EXE_TYPE,TOP_ARCHIVE"},
               {28, "BAD_EXE,EXE_TYPE,TOP_ARCHIVE"},
               {37, "LIMIT,TOP_ARCHIVE"},
               {40, "LIMIT,TOP_ARCHIVE"}};
    for (size_t i = 0; i < sizeof xzc / sizeof xzc[0]; i++) {
        x = make_xz(pe, sizeof pe, xzc[i].prop, &len);
        scan_small("x.exe.xz", x, len, xzc[i].hits);
        free(x);
    }
    x = make_xz(pe, sizeof pe, 37, &len);
    size_t xl;
    uint8_t *xx = make_xz(x, len, 16, &xl);
    scan_small("x.exe.xz.xz", xx, xl, "LIMIT,TOP_ARCHIVE");
    free(xx);
    const struct ent gx[] = {{"x.exe.xz", x, len, 0}};
    gz = make_archive("raw", "gzip", NULL, NULL, gx, 1, &gl);
    scan_small("x.exe.xz.gz", gz, gl, "LIMIT,TOP_ARCHIVE");
    free(gz);
    /* a gzip in an xz is the xz's raw member, read one level deeper */
    const struct ent gp[] = {{"x.exe", pe, sizeof pe, 0}};
    gz = make_archive("raw", "gzip", NULL, NULL, gp, 1, &gl);
    xx = make_xz(gz, gl, 16, &xl);
    scan_small("x.exe.gz.xz", xx, xl, "BAD_EXE,EXE_TYPE,TOP_ARCHIVE");
    free(xx);
    free(gz);
    /* an xz entry (method 95) declaring 1.5 GiB: notes.txt's local header
     * with the xz as its data, no central directory (the streaming reader;
     * corrupt: it ends without one) */
    z = data_file("ppmd.zip", &xl);
    uint8_t *zx = malloc(39 + len);
    assert_non_null(zx);
    memcpy(zx, z, 39);
    put16(zx + 6, 0);
    put16(zx + 8, 95);
    put32(zx + 18, (uint32_t)len);
    memcpy(zx + 39, x, len);
    scan_small("xz.zip", zx, 39 + len, "CORRUPT,LIMIT,TOP_ARCHIVE");
    free(zx);
    free(z);
    free(x);

    /* .lzma and lzip (no signature or extension the engine opens: named
     * .gz here) with 1 MiB, then 128 MiB (the largest dictionary
     * libarchive takes an .lzma with) or 512 MiB; an .lzma declaring
     * 4 GiB is no lzma to libarchive (corrupt, nothing allocated) */
    x = make_lzma(pe, sizeof pe, 1u << 20, &len);
    scan_small("x.exe.gz", x, len, "BAD_EXE,EXE_TYPE,TOP_ARCHIVE");
    put32(x + 1, 1u << 27);
    scan_small("x.exe.gz", x, len, "LIMIT,TOP_ARCHIVE");
    put32(x + 1, UINT32_MAX);
    scan_small("x.exe.gz", x, len, "CORRUPT,TOP_ARCHIVE");
    free(x);
    x = make_lzip(pe, sizeof pe, 20, &len);
    scan_small("x.exe.gz", x, len, "BAD_EXE,EXE_TYPE,TOP_ARCHIVE");
    x[5] = 29;
    scan_small("x.exe.gz", x, len, "LIMIT,TOP_ARCHIVE");
    free(x);
}

/* Scan `n` attachments in one message with engine `eng`. */
static void scan_parts(struct mx_scan_engine *e, const struct attach_part *parts, size_t n,
                       struct out *out)
{
    char *msg = attach_msgv(parts, n, NULL);
    assert_non_null(msg);
    scan_msg(e, msg, out);
    free(msg);
}

/* The message's budget (archive_max_message_total / _members): the walks of
 * all its archive attachments share it; the attachment that reaches it stops
 * there (`limit`, its first member still seen: MEMBER_TEXT), those after it
 * are not opened (`limit` on the attachment, none of its members seen). The
 * result names a1.zip in every case (TOP_ARCHIVE hits it first), so the hit
 * lists tell the cases apart. */
static void test_message_budget(void **state)
{
    (void)state;
    struct out o;
    static uint8_t zeros[1 << 20];
    const struct ent z[] = {{"z.bin", zeros, sizeof zeros, 0}};
    const struct ent last[] = {{"notes.md", text, sizeof text - 1, 0},
                               {"z.bin", zeros, sizeof zeros, 0},
                               {"x.exe", text, sizeof text - 1, 0}};
    size_t zl, ll;
    uint8_t *za = make_archive("zip", NULL, NULL, NULL, z, 1, &zl);
    uint8_t *la = make_archive("zip", NULL, NULL, NULL, last, 3, &ll);
    const struct attach_part parts[] = {
        {"a1.zip", za, zl}, {"a2.zip", za, zl}, {"a3.zip", za, zl}, {"a4.zip", la, ll}};
    /* the defaults: 4 MiB inflated is far within the budget */
    scan_parts(eng, parts, 4, &o);
    assert_string_equal(o.hits, "BAD_EXE,MEMBER_TEXT,TOP_ARCHIVE");
    assert_false(o.flags & MX_SCAN_TRUNCATED);
    /* 3.5 MiB: a4.zip is opened with 0.5 MiB left, stops inside z.bin */
    struct mx_scan_engine *e1 = load((struct mx_scan_opts){.archive_max_message_total = 7u << 19});
    scan_parts(e1, parts, 4, &o);
    assert_string_equal(o.hits, "LIMIT,MEMBER_TEXT,TOP_ARCHIVE");
    assert_true(o.flags & MX_SCAN_TRUNCATED);
    mx_scan_engine_free(e1);
    /* 3 MiB: spent by a1-a3, a4.zip is not opened at all */
    e1 = load((struct mx_scan_opts){.archive_max_message_total = 3u << 20});
    scan_parts(e1, parts, 4, &o);
    assert_string_equal(o.hits, "LIMIT,TOP_ARCHIVE");
    assert_true(o.flags & MX_SCAN_TRUNCATED);
    /* a budget is the message's: the next message on the same engine has
     * its own (and a worker's pooled message starts from zero) */
    const struct attach_part one[] = {{"a4.zip", la, ll}};
    scan_parts(e1, one, 1, &o);
    assert_string_equal(o.hits, "BAD_EXE,MEMBER_TEXT,TOP_ARCHIVE");
    mx_scan_engine_free(e1);
    free(za);
    free(la);

    /* members: two per archive, the third archive's second member is the
     * 6th of the message (as with archive_max_members, a walk that has used
     * its last member is `limit` without trying for one more: 7 to pass) */
    const struct ent m1[] = {{"a.txt", text, sizeof text - 1, 0},
                             {"b.txt", text, sizeof text - 1, 0}};
    const struct ent m3[] = {{"notes.md", text, sizeof text - 1, 0},
                             {"f.exe", text, sizeof text - 1, 0}};
    size_t l1, l3;
    uint8_t *a1 = make_archive("zip", NULL, NULL, NULL, m1, 2, &l1);
    uint8_t *a3 = make_archive("7zip", NULL, NULL, NULL, m3, 2, &l3);
    const struct attach_part mp[] = {{"m1.zip", a1, l1}, {"m2.zip", a1, l1}, {"m3.7z", a3, l3}};
    e1 = load((struct mx_scan_opts){.archive_max_message_members = 7});
    scan_parts(e1, mp, 3, &o);
    assert_string_equal(o.hits, "BAD_EXE,MEMBER_TEXT,TOP_ARCHIVE");
    assert_false(o.flags & MX_SCAN_TRUNCATED);
    mx_scan_engine_free(e1);
    e1 = load((struct mx_scan_opts){.archive_max_message_members = 5});
    scan_parts(e1, mp, 3, &o);
    assert_string_equal(o.hits, "LIMIT,MEMBER_TEXT,TOP_ARCHIVE");
    assert_true(o.flags & MX_SCAN_TRUNCATED);
    mx_scan_engine_free(e1);
    e1 = load((struct mx_scan_opts){.archive_max_message_members = 4});
    scan_parts(e1, mp, 3, &o);
    assert_string_equal(o.hits, "LIMIT,TOP_ARCHIVE");
    mx_scan_engine_free(e1);
    free(a1);
    free(a3);
}

/* Eight 48 MiB zip bombs in one message under the defaults (64 MiB each,
 * 256 MiB for the message): five are read through, the sixth stops at the
 * budget, the last two are not opened: the exe in the eighth is not seen,
 * the message is truncated, and the walk inflated 256 MiB, not 384. */
static void test_message_bombs(void **state)
{
    (void)state;
    struct out o;
    static uint8_t zeros[1 << 20];
    const struct ent b[] = {{"zeros.bin", zeros, sizeof zeros, 48}};
    const struct ent bx[] = {{"x.exe", text, sizeof text - 1, 0},
                             {"zeros.bin", zeros, sizeof zeros, 48}};
    size_t bl, bxl;
    uint8_t *ba = make_archive("zip", NULL, NULL, NULL, b, 1, &bl);
    uint8_t *bxa = make_archive("zip", NULL, NULL, NULL, bx, 2, &bxl);
    struct attach_part parts[8];
    char names[8][16];
    for (int i = 0; i < 8; i++) {
        snprintf(names[i], sizeof names[i], "bomb%d.zip", i + 1);
        parts[i] = (struct attach_part){names[i], i == 7 ? bxa : ba, i == 7 ? bxl : bl};
    }
    scan_parts(eng, parts, 8, &o);
    assert_string_equal(o.hits, "LIMIT,TOP_ARCHIVE");
    assert_true(o.flags & MX_SCAN_TRUNCATED);
    /* alone, the eighth is read within its own limits */
    scan_parts(eng, parts + 7, 1, &o);
    assert_string_equal(o.hits, "BAD_EXE,TOP_ARCHIVE");
    assert_false(o.flags & MX_SCAN_TRUNCATED);
    free(ba);
    free(bxa);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decoder_memory), /* first: it watches VmPeak */
        cmocka_unit_test(test_rule_parse),     cmocka_unit_test(test_zip_member),
        cmocka_unit_test(test_formats),        cmocka_unit_test(test_nested_depth),
        cmocka_unit_test(test_member_limit),   cmocka_unit_test(test_bomb_and_size),
        cmocka_unit_test(test_corrupt),        cmocka_unit_test(test_encrypted),
        cmocka_unit_test(test_default_rules),  cmocka_unit_test(test_text_types),
        cmocka_unit_test(test_message_budget), cmocka_unit_test(test_message_bombs),
        cmocka_unit_test(test_7z_memory),      cmocka_unit_test(test_7z_counts),
        cmocka_unit_test(test_message_cpu),    cmocka_unit_test(test_mtree_in_gzip),
        cmocka_unit_test(test_no_external_programs),
    };
    return cmocka_run_group_tests_name("archive", tests, setup, teardown);
}
