/*
 * fuzz_dns.c - DNS answers from the network into mx_dns_parse(), for every
 * record type the gateway asks for. The first byte picks the type.
 */
#include <stddef.h>
#include <stdint.h>

#include "dataplane/dataplane.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const enum mx_dns_type types[] = {MX_DNS_A, MX_DNS_AAAA, MX_DNS_MX, MX_DNS_TXT,
                                             MX_DNS_PTR};
    static struct mx_dns_result r;
    if (size < 1)
        return 0;
    mx_dns_parse(data + 1, size - 1, types[data[0] % 5], &r);
    return 0;
}
