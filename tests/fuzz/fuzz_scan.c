/*
 * fuzz_scan.c - libFuzzer target for the whole scan engine on message bytes:
 * MIME, charset conversion, HTML rendering, URI extraction (bare addresses
 * included), staged Hyperscan streams, header/URI scans, PCRE2
 * confirmations, DLP, metas and verdict headers, with the rule file
 * tests/scan/data/test.rules (every scope, a prefilter rule, a meta).
 * The input is scanned once whole and once in chunks sized by its first
 * byte: both must give the same score and the same rules.
 *
 * MX_FUZZ_RULES may name another rule file or folder (default: the path
 * baked in at build time, MX_FUZZ_RULES_DEFAULT), MX_FUZZ_RULES2 a second
 * one, and MX_FUZZ_CACHE a database cache folder, so that the stock rules
 * (/etc/spamassassin and /usr/share/spamassassin) load in seconds:
 *   MX_FUZZ_RULES=/etc/spamassassin MX_FUZZ_RULES2=/usr/share/spamassassin \
 *   MX_FUZZ_CACHE=build-cache/hs build-fuzz/tests/scan/fuzz_scan CORPUS
 */
#include "scan/scan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MX_FUZZ_RULES_DEFAULT
#define MX_FUZZ_RULES_DEFAULT "tests/scan/data/test.rules"
#endif

static struct mx_scan_engine *engine;
static struct mx_scan_worker *worker;

static void setup(void)
{
    const char *path = getenv("MX_FUZZ_RULES"), *path2 = getenv("MX_FUZZ_RULES2");
    const char *paths[] = {path ? path : MX_FUZZ_RULES_DEFAULT, path2};
    struct mx_scan_opts o = {.rule_paths = paths, .n_rule_paths = path2 ? 2 : 1,
                             .cache_dir = getenv("MX_FUZZ_CACHE")};
    char *err = NULL;
    if (mx_scan_engine_load(&o, &engine, &err) != 0) {
        fprintf(stderr, "fuzz_scan: cannot load %s: %s\n", paths[0], err ? err : "?");
        abort();
    }
    worker = mx_scan_worker_new(engine);
    if (!worker)
        abort();
}

/* Scan data in chunks of `step` bytes (0: whole); the verdict header text
 * (score and rules) goes to out. */
static void scan(const uint8_t *data, size_t size, size_t step, char *out, size_t cap)
{
    struct mx_scan_msg *m = mx_scan_msg_begin(worker);
    if (!m)
        abort();
    if (step == 0)
        step = size ? size : 1;
    for (size_t off = 0; off < size; off += step)
        if (mx_scan_msg_feed(m, data + off, size - off < step ? size - off : step) != 0)
            abort();
    struct mx_scan_result r;
    if (mx_scan_msg_end(m, &r) != 0)
        abort();
    if (mx_scan_render_headers(&r, out, cap) < 0)
        abort();
    mx_scan_msg_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!engine)
        setup();
    static char a[8192], b[8192];
    scan(data, size, 0, a, sizeof a);
    scan(data, size, size ? 1 + data[0] % 64 : 1, b, sizeof b);
    if (strcmp(a, b) != 0) {
        fprintf(stderr, "whole:\n%s\nchunked:\n%s\n", a, b);
        abort();
    }
    return 0;
}
