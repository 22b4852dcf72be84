/*
 * fuzz_policy.c - libFuzzer target for the policy code that sees network
 * bytes: HELO arguments against the default host patterns, and envelope
 * addresses through sub-address resolution and the allow/block lists.
 * Input: HELO \n sender \n recipient (missing parts are empty); its first 4
 * or 16 bytes are also the client address (IPv4, IPv6) checked against CIDR entries.
 */
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct mx_policy *policy;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!policy) {
        if (mx_policy_new('+', false, &policy) != 0)
            abort();
        mx_policy_add(policy, "", MX_POLICY_BLOCK, "*@*.spam.test");
        mx_policy_add(policy, "", MX_POLICY_BLOCK, "192.0.2.0/24");
        mx_policy_add(policy, "example.test", MX_POLICY_ALLOW, "friend@spam.test");
        mx_policy_add(policy, "bob@example.test", MX_POLICY_BLOCK, "*.t?st");
        mx_policy_add(policy, "example.test", MX_POLICY_BLOCK, "2001:db8::/33");
        mx_policy_add(policy, "", MX_POLICY_ALLOW, "192.0.2.128/25");
        mx_policy_add(policy, "", MX_POLICY_ALLOW, "0.0.0.0/0");
    }
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    char *parts[3] = {text, (char *)"", (char *)""};
    for (int i = 1; i < 3; i++) {
        char *nl = strchr(parts[i - 1], '\n');
        if (!nl)
            break;
        *nl = '\0';
        parts[i] = nl + 1;
    }
    size_t n = 0;
    while (mx_policy_helo_defaults[n])
        n++;
    mx_policy_helo_match(parts[0], mx_policy_helo_defaults, n);
    const char *custom[] = {parts[1]}; /* attacker-controlled pattern too */
    mx_policy_helo_match(parts[0], custom, 1);
    char out[64];
    mx_policy_resolve_address(parts[1], '+', out, sizeof(out));
    struct mx_policy_result res;
    mx_policy_check_sender(policy, parts[2], parts[1], NULL, &res);
    /* the client address from the input's first bytes, through the CIDR trie */
    struct sockaddr_in6 s6 = {.sin6_family = AF_INET6};
    struct sockaddr_in s4 = {.sin_family = AF_INET};
    memcpy(&s6.sin6_addr, data, size < 16 ? size : 16);
    memcpy(&s4.sin_addr, data, size < 4 ? size : 4);
    mx_policy_check_sender(policy, parts[2], parts[1], (struct sockaddr *)&s6, &res);
    mx_policy_check_sender(policy, parts[2], parts[1], (struct sockaddr *)&s4, &res);
    free(text);
    return 0;
}
