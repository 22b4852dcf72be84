/*
 * policy_bench.c - cost of one sender check (mx_policy_check_sender) against
 * allow/block lists of a given size, the way an admin's lists look: mostly
 * sender addresses, domains and client CIDRs across global, domain and user
 * scopes, plus a few dozen wildcards.
 *
 *   policy_bench ENTRIES LOOKUPS [SEED]
 *
 * Prints one line: entries, lookups, ns per lookup (CPU time of the thread),
 * and how many lookups ended blocked/allowed (the same for the same seed, so
 * two builds can be compared on identical work). perf/policy/policy_bench.sh
 * runs this build beside one of an earlier revision.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/config.h"

static uint64_t rng;

static uint32_t next(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng >> 33);
}

static double cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: policy_bench ENTRIES LOOKUPS [SEED]\n");
        return 2;
    }
    unsigned entries = (unsigned)strtoul(argv[1], NULL, 10);
    unsigned lookups = (unsigned)strtoul(argv[2], NULL, 10);
    rng = argc > 3 ? strtoull(argv[3], NULL, 10) : 1;
    struct mx_policy *p;
    if (mx_policy_new('+', false, &p) != 0)
        return 1;
    char pat[96], scope[64];
    for (unsigned i = 0; i < entries; i++) {
        uint32_t r = next();
        unsigned s = r % 10;
        if (s < 7)
            scope[0] = '\0';
        else if (s < 9)
            snprintf(scope, sizeof scope, "corp%u.example", r % 100);
        else
            snprintf(scope, sizeof scope, "user%u@corp%u.example", r % 500, r % 100);
        unsigned k = (r >> 8) % 100;
        if (i < 50)
            snprintf(pat, sizeof pat, "*@*.bulk%u.test", i); /* a few dozen wildcards */
        else if (k < 40)
            snprintf(pat, sizeof pat, "s%u@spam%u.test", next() % 1000000, next() % 1000);
        else if (k < 70)
            snprintf(pat, sizeof pat, "spam%u.test", next() % 1000000);
        else if (k < 90)
            snprintf(pat, sizeof pat, "10.%u.%u.%u/32", next() % 256, next() % 256, next() % 256);
        else
            snprintf(pat, sizeof pat, "172.%u.%u.0/24", 16 + next() % 16, next() % 256);
        if (mx_policy_add(p, scope, (r >> 20) & 1 ? MX_POLICY_BLOCK : MX_POLICY_ALLOW, pat) != 0) {
            fprintf(stderr, "policy_bench: cannot add %s\n", pat);
            return 1;
        }
    }
    char rcpt[64], sender[96];
    unsigned blocked = 0, allowed = 0;
    struct sockaddr_in sa = {.sin_family = AF_INET};
    double t0 = cpu_ns();
    for (unsigned i = 0; i < lookups; i++) {
        uint32_t r = next();
        snprintf(rcpt, sizeof rcpt, "user%u@corp%u.example", r % 500, (r >> 9) % 100);
        snprintf(sender, sizeof sender, "s%u@spam%u.test", next() % 1000000, next() % 1000);
        sa.sin_addr.s_addr = htonl(0x0a000000u | (next() & 0xffffff));
        struct mx_policy_result res;
        mx_policy_check_sender(p, rcpt, sender, (struct sockaddr *)&sa, &res);
        blocked += res.verdict == MX_POLICY_BLOCKED;
        allowed += res.verdict == MX_POLICY_ALLOWED;
    }
    double ns = (cpu_ns() - t0) / (lookups ? lookups : 1);
    printf("entries=%u lookups=%u ns_per_lookup=%.0f blocked=%u allowed=%u\n", entries, lookups,
           ns, blocked, allowed);
    mx_policy_free(p);
    return 0;
}
