/*
 * test_policy.c - unit tests of the policy layer (config/policy.c):
 * sub-address resolution, allow/block lists at global/domain/user level with
 * most-specific-wins, HELO host patterns (the default blocklist), and the
 * rate/concurrency accounting tables.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config/config.h"

static void test_resolve_address(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(mx_policy_resolve_address("User+Tag@Example.TEST", '+', out, sizeof(out)),
                     0);
    assert_string_equal(out, "user@example.test");
    assert_int_equal(mx_policy_resolve_address("a+b+c@x.test", '+', out, sizeof(out)), 0);
    assert_string_equal(out, "a@x.test");
    assert_int_equal(mx_policy_resolve_address("User+Tag@x.test", 0, out, sizeof(out)), 0);
    assert_string_equal(out, "user+tag@x.test");
    assert_int_equal(mx_policy_resolve_address("user-tag@x.test", '-', out, sizeof(out)), 0);
    assert_string_equal(out, "user@x.test");
    /* "+tag" alone is the user name, not a tag */
    assert_int_equal(mx_policy_resolve_address("+only@x.test", '+', out, sizeof(out)), 0);
    assert_string_equal(out, "+only@x.test");
    /* quoted local parts are left whole */
    assert_int_equal(mx_policy_resolve_address("\"a+b\"@x.test", '+', out, sizeof(out)), 0);
    assert_string_equal(out, "\"a+b\"@x.test");
    assert_int_equal(mx_policy_resolve_address("nodomain", '+', out, sizeof(out)), -EINVAL);
    assert_int_equal(mx_policy_resolve_address("@x.test", '+', out, sizeof(out)), -EINVAL);
    assert_int_equal(mx_policy_resolve_address("a@", '+', out, sizeof(out)), -EINVAL);
    assert_int_equal(mx_policy_resolve_address("abcdef@x.test", '+', out, 8), -ENOSPC);
}

static struct sockaddr_storage ip(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(text, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, text, &s6->sin6_addr), 1);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, text, &s4->sin_addr), 1);
    }
    return ss;
}

static enum mx_policy_verdict check(const struct mx_policy *p, const char *rcpt,
                                    const char *sender, const char *client,
                                    struct mx_policy_result *res)
{
    struct sockaddr_storage ss;
    if (client)
        ss = ip(client);
    assert_int_equal(
        mx_policy_check_sender(p, rcpt, sender, client ? (struct sockaddr *)&ss : NULL, res), 0);
    return res->verdict;
}

static void test_lists_most_specific_wins(void **state)
{
    (void)state;
    struct mx_policy *p = NULL;
    assert_int_equal(mx_policy_new('+', false, &p), 0);
    /* global */
    assert_int_equal(mx_policy_add(p, "", MX_POLICY_BLOCK, "spam.test"), 0);
    assert_int_equal(mx_policy_add(p, NULL, MX_POLICY_BLOCK, "*@*.bulk.test"), 0);
    assert_int_equal(mx_policy_add(p, "", MX_POLICY_BLOCK, "198.51.100.0/24"), 0);
    assert_int_equal(mx_policy_add(p, "", MX_POLICY_ALLOW, "partner.test"), 0);
    /* domain: example.test wants news from spam.test's newsletter address */
    assert_int_equal(mx_policy_add(p, "Example.TEST", MX_POLICY_ALLOW, "news@spam.test"), 0);
    assert_int_equal(mx_policy_add(p, "example.test", MX_POLICY_BLOCK, "@partner.test"), 0);
    /* user: bob accepts everything from spam.test, blocks one friend */
    assert_int_equal(mx_policy_add(p, "bob+x@example.test", MX_POLICY_ALLOW, "*.test"), 0);
    assert_int_equal(mx_policy_add(p, "bob@example.test", MX_POLICY_BLOCK, "Eve@Friends.test"),
                     0);

    struct mx_policy_result r;
    /* global block */
    assert_int_equal(check(p, "alice@other.test", "x@spam.test", NULL, &r), MX_POLICY_BLOCKED);
    assert_int_equal(r.level, MX_POLICY_GLOBAL);
    assert_string_equal(r.pattern, "spam.test");
    assert_string_equal(r.scope, "");
    assert_int_equal(check(p, "alice@other.test", "a@mx1.bulk.test", NULL, &r),
                     MX_POLICY_BLOCKED);
    assert_string_equal(r.pattern, "*@*.bulk.test");
    assert_int_equal(check(p, "alice@other.test", "a@ok.test", "198.51.100.7", &r),
                     MX_POLICY_BLOCKED);
    assert_string_equal(r.pattern, "198.51.100.0/24");
    /* IPv4-mapped client meets the IPv4 CIDR */
    assert_int_equal(check(p, "alice@other.test", "a@ok.test", "::ffff:198.51.100.7", &r),
                     MX_POLICY_BLOCKED);
    assert_int_equal(check(p, "alice@other.test", "a@ok.test", "198.51.101.7", &r),
                     MX_POLICY_NONE);
    assert_int_equal(check(p, "alice@other.test", "a@partner.test", NULL, &r),
                     MX_POLICY_ALLOWED);
    /* the domain level overrides the global one, both ways */
    assert_int_equal(check(p, "alice@example.test", "news@spam.test", NULL, &r),
                     MX_POLICY_ALLOWED);
    assert_int_equal(r.level, MX_POLICY_DOMAIN);
    assert_string_equal(r.scope, "example.test");
    assert_int_equal(check(p, "alice@example.test", "other@spam.test", NULL, &r),
                     MX_POLICY_BLOCKED);
    assert_int_equal(r.level, MX_POLICY_GLOBAL);
    assert_int_equal(check(p, "alice@example.test", "a@partner.test", NULL, &r),
                     MX_POLICY_BLOCKED);
    assert_int_equal(r.level, MX_POLICY_DOMAIN);
    /* the user level overrides both; user+tag resolves to the user */
    assert_int_equal(check(p, "Bob+Lists@Example.test", "x@spam.test", NULL, &r),
                     MX_POLICY_ALLOWED);
    assert_int_equal(r.level, MX_POLICY_USER);
    assert_string_equal(r.scope, "bob@example.test");
    assert_string_equal(r.pattern, "*.test");
    /* within one level, block beats allow (eve@friends.test matches both) */
    assert_int_equal(check(p, "bob@example.test", "eve+x@friends.test", NULL, &r),
                     MX_POLICY_BLOCKED);
    assert_string_equal(r.pattern, "Eve@Friends.test");
    /* the null sender meets only client entries */
    assert_int_equal(check(p, "alice@other.test", "", NULL, &r), MX_POLICY_NONE);
    assert_int_equal(check(p, "alice@other.test", "", "198.51.100.1", &r), MX_POLICY_BLOCKED);
    assert_int_equal(mx_policy_check_sender(p, "not-an-address", "a@b.test", NULL, &r),
                     -EINVAL);
    mx_policy_free(p);

    /* allow-over-block flips a tie within one level */
    assert_int_equal(mx_policy_new('+', true, &p), 0);
    assert_int_equal(mx_policy_add(p, "", MX_POLICY_BLOCK, "*.test"), 0);
    assert_int_equal(mx_policy_add(p, "", MX_POLICY_ALLOW, "good.test"), 0);
    assert_int_equal(check(p, "a@x.test", "u@good.test", NULL, &r), MX_POLICY_ALLOWED);
    assert_int_equal(check(p, "a@x.test", "u@bad.test", NULL, &r), MX_POLICY_BLOCKED);
    mx_policy_free(p);

    /* malformed entries are refused */
    assert_int_equal(mx_policy_new('+', false, &p), 0);
    assert_int_equal(mx_policy_add(p, "", MX_POLICY_BLOCK, ""), -EINVAL);
    assert_int_equal(mx_policy_add(p, "", MX_POLICY_BLOCK, "a b"), -EINVAL);
    assert_int_equal(mx_policy_add(p, "", MX_POLICY_BLOCK, "@"), -EINVAL);
    assert_int_equal(mx_policy_add(p, "", MX_POLICY_BLOCK, "user@"), -EINVAL);
    assert_int_equal(mx_policy_add(p, "bad scope", MX_POLICY_BLOCK, "x.test"), -EINVAL);
    assert_int_equal(mx_policy_add(p, "", (enum mx_policy_list)7, "x.test"), -EINVAL);
    mx_policy_free(p);
}

static void test_helo_defaults(void **state)
{
    (void)state;
    const char *const *d = mx_policy_helo_defaults;
    size_t n = 0;
    while (d[n])
        n++;
    assert_int_equal(n, 10);
    struct {
        const char *helo;
        const char *pattern; /* NULL: accepted */
    } cases[] = {
        {"localhost", "localhost"},
        {"LOCALHOST", "localhost"},
        {"friend", "friend"},
        {"user", "user"},
        {"ylmf-pc", "ylmf-pc"},
        {"-start", "-*"},
        {"my_host.example", "*_*"},
        {"192.0.2.1", "#.#.#.#"},
        {"10.0.0.254", "#.#.#.#"},
        {"host.invalid", "*.invalid"},
        {"a/b", "*/*"},
        {"a|b", "*|*"},
        {"mail.example.test", NULL},
        {"[192.0.2.1]", NULL},
        {"192.0.2", NULL},
        {"1.2.3.4.example.test", NULL},
        {"localhost.example.test", NULL},
        {"users", NULL},
        {"ylmf-pc2", NULL},
        {"mx-1.example.test", NULL},
        {"invalid", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int m = mx_policy_helo_match(cases[i].helo, d, n);
        const char *got = m >= 0 ? d[m] : NULL;
        if ((got == NULL) != (cases[i].pattern == NULL) ||
            (got && strcmp(got, cases[i].pattern) != 0))
            fail_msg("HELO %s: matched %s, want %s", cases[i].helo, got ? got : "nothing",
                     cases[i].pattern ? cases[i].pattern : "nothing");
    }
    /* custom patterns; a long hostile HELO stays linear */
    const char *custom[] = {"*.dyn.#-#.example", "mail?.test"};
    assert_int_equal(mx_policy_helo_match("c1.dyn.10-20.example", custom, 2), 0);
    assert_int_equal(mx_policy_helo_match("mail7.test", custom, 2), 1);
    assert_int_equal(mx_policy_helo_match("mail77.test", custom, 2), -1);
    char longhelo[501];
    memset(longhelo, 'a', 500);
    longhelo[500] = '\0';
    const char *evil[] = {"*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b"};
    assert_int_equal(mx_policy_helo_match(longhelo, evil, 1), -1);
    assert_int_equal(mx_policy_helo_match(NULL, d, n), -1);
}

static void test_rate_limits(void **state)
{
    (void)state;
    struct mx_ratelimit *rl = NULL;
    assert_int_equal(mx_ratelimit_new(0, 1000, &rl), -EINVAL);
    assert_int_equal(mx_ratelimit_new(64, 60000, &rl), 0);
    uint8_t a[17], b[17], net[17];
    struct sockaddr_storage s1 = ip("192.0.2.10"), s2 = ip("192.0.2.99"),
                            s3 = ip("::ffff:192.0.2.10");
    int la = mx_ratelimit_client_key((struct sockaddr *)&s1, false, a);
    assert_int_equal(la, 5);
    assert_int_equal(mx_ratelimit_client_key((struct sockaddr *)&s3, false, b), 5);
    assert_memory_equal(a, b, 5); /* the mapped form is the same client */
    int lb = mx_ratelimit_client_key((struct sockaddr *)&s2, false, b);
    assert_int_equal(mx_ratelimit_client_key((struct sockaddr *)&s1, true, net), 5);
    uint8_t net2[17];
    mx_ratelimit_client_key((struct sockaddr *)&s2, true, net2);
    assert_memory_equal(net, net2, 5); /* same /24 */
    struct sockaddr_storage v6a = ip("2001:db8:1:2::1"), v6b = ip("2001:db8:1:2:ffff::9");
    uint8_t k6a[17], k6b[17];
    assert_int_equal(mx_ratelimit_client_key((struct sockaddr *)&v6a, true, k6a), 17);
    mx_ratelimit_client_key((struct sockaddr *)&v6b, true, k6b);
    assert_memory_equal(k6a, k6b, 17); /* same /64 */

    /* 5 messages per minute for client a; b has its own budget */
    uint32_t count = 0;
    uint64_t t0 = 600000; /* start of a window */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(mx_ratelimit_hit(rl, a, (size_t)la, t0 + (uint64_t)i, 1, 5, &count), 0);
        assert_int_equal(count, (uint32_t)i + 1);
    }
    assert_int_equal(mx_ratelimit_hit(rl, a, (size_t)la, t0 + 10, 1, 5, &count), -EAGAIN);
    assert_int_equal(count, 5);
    assert_int_equal(mx_ratelimit_hit(rl, b, (size_t)lb, t0 + 10, 1, 5, &count), 0);
    assert_int_equal(count, 1);
    /* half-way into the next window, half of the previous window still counts */
    assert_int_equal(mx_ratelimit_hit(rl, a, (size_t)la, t0 + 90000, 1, 5, &count), 0);
    assert_int_equal(count, 3); /* 5 * 0.5 rounded down + 1 */
    assert_int_equal(mx_ratelimit_hit(rl, a, (size_t)la, t0 + 90000, 2, 5, &count), 0);
    assert_int_equal(mx_ratelimit_hit(rl, a, (size_t)la, t0 + 90000, 1, 5, &count), -EAGAIN);
    /* two windows later everything has expired */
    assert_int_equal(mx_ratelimit_hit(rl, a, (size_t)la, t0 + 200000, 5, 5, &count), 0);
    assert_int_equal(count, 5);

    /* concurrency: 2 sessions per client */
    assert_int_equal(mx_ratelimit_acquire(rl, b, (size_t)lb, 2), 0);
    assert_int_equal(mx_ratelimit_acquire(rl, b, (size_t)lb, 2), 0);
    assert_int_equal(mx_ratelimit_acquire(rl, b, (size_t)lb, 2), -EAGAIN);
    mx_ratelimit_release(rl, b, (size_t)lb);
    assert_int_equal(mx_ratelimit_acquire(rl, b, (size_t)lb, 2), 0);
    mx_ratelimit_free(rl);

    /* a small table fills up with live keys, then frees expired ones */
    assert_int_equal(mx_ratelimit_new(4, 1000, &rl), 0);
    int full = 0;
    for (uint32_t i = 0; i < 64; i++) {
        uint8_t k[5] = {4, 10, 0, (uint8_t)(i >> 8), (uint8_t)i};
        int rc = mx_ratelimit_hit(rl, k, 5, 5000, 1, 10, NULL);
        assert_true(rc == 0 || rc == -ENOSPC);
        full += rc == -ENOSPC;
    }
    assert_true(full > 0);
    uint8_t k[5] = {4, 10, 1, 0, 1};
    assert_int_equal(mx_ratelimit_hit(rl, k, 5, 5000 + 3000, 1, 10, NULL), 0);
    mx_ratelimit_free(rl);
}

/* ---- indexed lists against a plain scan ------------------------------------ */

/* One entry as the reference keeps it. */
struct ref_entry {
    int level; /* 0 global, 1 domain, 2 user */
    const char *scope;
    enum mx_policy_list list;
    const char *pattern;
};

static const char *const ref_domains[] = {"a.test", "b.test", "sub.a.test", "c.example"};
static const char *const ref_users[] = {"u1@a.test", "u2@a.test", "v@b.test"};
static const char *const ref_patterns[] = {
    "x@a.test",      "y@b.test",      "x@sub.a.test", "@a.test",     "b.test",
    "sub.a.test",    "*.a.test",      "*@b.test",     "x*@*",        "?@a.test",
    "10.0.0.0/8",    "10.1.0.0/16",   "10.1.2.3/32",  "10.1.2.0/24", "0.0.0.0/0",
    "2001:db8::/32", "2001:db8::1/128", "192.0.2.0/25", "c.example", "z@c.example"};
static const char *const ref_senders[] = {"x@a.test", "X+tag@A.test", "y@b.test", "x@sub.a.test",
                                          "q@a.test", "zz@b.test", "z@c.example", "",
                                          "x@other.test"};
static const char *const ref_clients[] = {NULL,         "10.1.2.3",     "10.1.2.4", "10.9.9.9",
                                          "192.0.2.1",  "192.0.2.200",  "2001:db8::1",
                                          "2001:db9::1", "::ffff:10.1.2.3", "8.8.8.8"};
static const char *const ref_rcpts[] = {"u1@a.test", "u2+x@a.test", "v@b.test", "w@c.example",
                                        "n@none.test"};

/* Does one entry match, the plain way (the rules of docs/CONFIG.md "policy")? */
static bool ref_matches(const char *pattern, const char *sender, const char *client)
{
    char from[320] = "";
    if (*sender)
        assert_int_equal(mx_policy_resolve_address(sender, '+', from, sizeof(from)), 0);
    const char *sdom = *from ? strchr(from, '@') + 1 : "";
    struct mx_cidr c;
    if (mx_config_parse_cidr(pattern, &c) == 0) {
        if (!client)
            return false;
        struct sockaddr_storage ss = ip(client);
        uint8_t a[17];
        int n = mx_ratelimit_client_key((struct sockaddr *)&ss, false, a);
        if ((n == 5 ? AF_INET : AF_INET6) != c.family)
            return false;
        for (unsigned b = 0; b < c.prefix; b++)
            if (((a[1 + b / 8] ^ c.addr[b / 8]) >> (7 - b % 8)) & 1)
                return false;
        return true;
    }
    if (strpbrk(pattern, "*?")) {
        const char *subject = strchr(pattern, '@') ? from : sdom;
        /* the HELO matcher shares the glob rules (no '#' digits in these patterns) */
        return *subject && mx_policy_helo_match(subject, &pattern, 1) == 0;
    }
    if (pattern[0] == '@')
        return *sdom && strcmp(pattern + 1, sdom) == 0;
    if (strchr(pattern, '@'))
        return *from && strcmp(pattern, from) == 0;
    return *sdom && strcmp(pattern, sdom) == 0;
}

static void ref_check(const struct ref_entry *v, size_t n, const char *rcpt, const char *sender,
                      const char *client, bool allow_over_block, struct mx_policy_result *out)
{
    char user[320];
    assert_int_equal(mx_policy_resolve_address(rcpt, '+', user, sizeof(user)), 0);
    const char *scopes[3] = {"", strchr(user, '@') + 1, user};
    memset(out, 0, sizeof(*out));
    for (int level = 2; level >= 0; level--) {
        const struct ref_entry *allow = NULL, *block = NULL;
        for (size_t i = 0; i < n; i++) {
            if (v[i].level != level || strcmp(v[i].scope, scopes[level]) != 0)
                continue;
            const struct ref_entry **slot = v[i].list == MX_POLICY_ALLOW ? &allow : &block;
            if (!*slot && ref_matches(v[i].pattern, sender, client))
                *slot = &v[i];
        }
        if (!allow && !block)
            continue;
        const struct ref_entry *d = block && !(allow && allow_over_block) ? block : allow;
        out->verdict = d == block ? MX_POLICY_BLOCKED : MX_POLICY_ALLOWED;
        out->level = (enum mx_policy_level)level;
        out->scope = d->scope;
        out->pattern = d->pattern;
        return;
    }
}

/* Random lists (duplicates, every kind, every level): the indexed lookup gives the
 * same verdict, level and deciding entry as a plain first-match scan. */
static void test_index_matches_plain_scan(void **state)
{
    (void)state;
    uint64_t seed = 0x5eed;
    for (int round = 0; round < 60; round++) {
        bool aob = round % 2;
        struct mx_policy *p = NULL;
        assert_int_equal(mx_policy_new('+', aob, &p), 0);
        struct ref_entry v[48];
        size_t n = 4 + (size_t)(round % 40);
        for (size_t i = 0; i < n; i++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            uint32_t r = (uint32_t)(seed >> 33);
            v[i].level = (int)(r % 3);
            v[i].scope = v[i].level == 0   ? ""
                         : v[i].level == 1 ? ref_domains[(r >> 2) % 4]
                                           : ref_users[(r >> 4) % 3];
            v[i].list = (r >> 6) & 1 ? MX_POLICY_BLOCK : MX_POLICY_ALLOW;
            v[i].pattern = ref_patterns[(r >> 7) % (sizeof ref_patterns / sizeof *ref_patterns)];
            assert_int_equal(mx_policy_add(p, v[i].scope, v[i].list, v[i].pattern), 0);
        }
        for (size_t a = 0; a < sizeof ref_rcpts / sizeof *ref_rcpts; a++)
            for (size_t b = 0; b < sizeof ref_senders / sizeof *ref_senders; b++)
                for (size_t c = 0; c < sizeof ref_clients / sizeof *ref_clients; c++) {
                    struct mx_policy_result got, want;
                    check(p, ref_rcpts[a], ref_senders[b], ref_clients[c], &got);
                    ref_check(v, n, ref_rcpts[a], ref_senders[b], ref_clients[c], aob, &want);
                    if (got.verdict != want.verdict)
                        fprintf(stderr, "round %d rcpt %s sender %s client %s: %d vs %d (%s)\n",
                                round, ref_rcpts[a], ref_senders[b],
                                ref_clients[c] ? ref_clients[c] : "-", got.verdict,
                                want.verdict, got.verdict ? got.pattern : want.pattern);
                    assert_int_equal(got.verdict, want.verdict);
                    if (want.verdict == MX_POLICY_NONE)
                        continue;
                    assert_int_equal(got.level, want.level);
                    assert_string_equal(got.scope, want.scope);
                    assert_string_equal(got.pattern, want.pattern);
                }
        mx_policy_free(p);
    }
}

/* 200,000 entries (addresses, domains, /32s and /24s across many scopes): lookups
 * find the one that matches, and the first written of equal entries decides. */
static void test_index_large(void **state)
{
    (void)state;
    struct mx_policy *p = NULL;
    assert_int_equal(mx_policy_new('+', false, &p), 0);
    char pat[64], scope[64];
    for (unsigned i = 0; i < 50000; i++) {
        snprintf(scope, sizeof scope, "d%u.test", i % 997);
        snprintf(pat, sizeof pat, "s%u@bulk%u.test", i, i % 50);
        assert_int_equal(mx_policy_add(p, "", MX_POLICY_BLOCK, pat), 0);
        snprintf(pat, sizeof pat, "bulk%u.example", i);
        assert_int_equal(mx_policy_add(p, scope, MX_POLICY_ALLOW, pat), 0);
        snprintf(pat, sizeof pat, "10.%u.%u.%u/32", i >> 16, (i >> 8) & 255, i & 255);
        assert_int_equal(mx_policy_add(p, "", MX_POLICY_BLOCK, pat), 0);
        snprintf(pat, sizeof pat, "172.%u.%u.0/24", 16 + (i >> 16), (i >> 8) & 255);
        assert_int_equal(mx_policy_add(p, scope, MX_POLICY_ALLOW, pat), 0);
    }
    struct mx_policy_result r;
    assert_int_equal(check(p, "a@x.test", "s31337@bulk37.test", NULL, &r), MX_POLICY_BLOCKED);
    assert_string_equal(r.pattern, "s31337@bulk37.test");
    assert_int_equal(check(p, "a@x.test", "s31337@bulk38.test", NULL, &r), MX_POLICY_NONE);
    assert_int_equal(check(p, "a@x.test", "", "10.0.122.105", &r), MX_POLICY_BLOCKED);
    assert_string_equal(r.pattern, "10.0.122.105/32"); /* entry 31337 */
    assert_int_equal(check(p, "a@x.test", "", "10.0.195.79", &r), MX_POLICY_BLOCKED);
    assert_int_equal(check(p, "a@x.test", "", "10.1.134.160", &r), MX_POLICY_NONE);
    /* domain scope d3.test holds entries i = 3, 1000, ...: bulk1000.example */
    assert_int_equal(check(p, "a@d3.test", "z@bulk1000.example", NULL, &r), MX_POLICY_ALLOWED);
    assert_int_equal(r.level, MX_POLICY_DOMAIN);
    assert_int_equal(check(p, "a@d4.test", "z@bulk1000.example", NULL, &r), MX_POLICY_NONE);
    /* 172.16.3.0/24 was written by i = 768..1023 in several scopes: the first one
     * of d3.test's entries is i = 997 */
    assert_int_equal(check(p, "a@d3.test", "", "172.16.3.9", &r), MX_POLICY_ALLOWED);
    assert_string_equal(r.pattern, "172.16.3.0/24");
    assert_string_equal(r.scope, "d3.test");
    mx_policy_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resolve_address),
        cmocka_unit_test(test_lists_most_specific_wins),
        cmocka_unit_test(test_index_matches_plain_scan),
        cmocka_unit_test(test_index_large),
        cmocka_unit_test(test_helo_defaults),
        cmocka_unit_test(test_rate_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
