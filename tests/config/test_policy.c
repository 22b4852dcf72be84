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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resolve_address),
        cmocka_unit_test(test_lists_most_specific_wins),
        cmocka_unit_test(test_helo_defaults),
        cmocka_unit_test(test_rate_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
