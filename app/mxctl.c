/*
 * mxctl.c - operate a running mxgate through its control socket.
 *
 *   mxctl [-s SOCKET] stats [--json]
 *   mxctl [-s SOCKET] queue list|show ID|flush|hold ID|release ID|delete ID [--json]
 *   mxctl [-s SOCKET] queue freeze|thaw
 *   mxctl [-s SOCKET] maintenance on|off
 *   mxctl [-s SOCKET] config export
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app/control.h"

#define DEFAULT_SOCKET "var/mxgate.sock"

static void usage(FILE *f)
{
    fprintf(f, "usage: mxctl [-s SOCKET] COMMAND [ARGS] [--json]\n"
               "commands:\n"
               "  stats                        counters of the running gateway\n"
               "  queue list                   queued messages, next attempt, attempts\n"
               "  queue show|hold|release|delete ID\n"
               "  queue flush                  retry every deferred message now\n"
               "  queue freeze|thaw            stop / resume delivery\n"
               "  maintenance on|off           refuse new mail with 421 / accept again\n"
               "  config export                the effective configuration as UCL\n"
               "default socket: " DEFAULT_SOCKET "\n");
}

int main(int argc, char **argv)
{
    const char *sock = DEFAULT_SOCKET;
    int opt;
    while ((opt = getopt(argc, argv, "+s:h")) != -1) {
        switch (opt) {
        case 's':
            sock = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    return mx_control_request(sock, argc - optind, argv + optind);
}
