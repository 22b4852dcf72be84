/*
 * fuzz_received.c - arbitrary bytes as a message header block into the
 * Received-header parser of the "logical IP" check
 * (mx_smtp_checks_received_ip), with a trusted list that covers some
 * addresses so both the skip and the found paths run.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "config/config.h"
#include "smtp/checks_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct mx_cidr trusted[3];
    static int ready;
    if (!ready) {
        mx_config_parse_cidr("10.0.0.0/8", &trusted[0]);
        mx_config_parse_cidr("!192.0.2.1/32", &trusted[1]);
        mx_config_parse_cidr("2001:db8::/32", &trusted[2]);
        ready = 1;
    }
    /* a private copy of exactly size bytes, so reading past it is caught */
    uint8_t *p = malloc(size ? size : 1);
    if (!p)
        return 0;
    memcpy(p, data, size);
    struct sockaddr_storage ss;
    int rc = mx_smtp_checks_received_ip(p, size, trusted, 3, &ss);
    if (rc == 0 && ss.ss_family != AF_INET && ss.ss_family != AF_INET6)
        abort();
    if (rc != 0 && rc != -ENOENT)
        abort();
    free(p);
    return 0;
}
