/*
 * mxctl.c - operate a running mxgate through its control socket.
 *
 *   mxctl [-s SOCKET] stats [--json]
 *   mxctl [-s SOCKET] queue list|show ID|flush|hold ID|release ID|delete ID [--json]
 *   mxctl [-s SOCKET] queue freeze|thaw
 *   mxctl [-s SOCKET] maintenance on|off
 *   mxctl [-s SOCKET] config export
 *   mxctl [-s SOCKET] reload
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app/control.h"
#include "console/console.h"

#define DEFAULT_SOCKET "var/mxgate.sock"

static void usage(FILE *f)
{
    fprintf(f, "usage: mxctl [-s SOCKET] COMMAND [ARGS] [--json]\n"
               "commands:\n"
               "  stats                        counters of the running gateway\n"
               "  top                          live console (q quits)\n"
               "  queue list                   queued messages, next attempt, attempts\n"
               "  queue show|hold|release|delete ID\n"
               "  queue flush                  retry every deferred message now\n"
               "  queue freeze|thaw            stop / resume delivery\n"
               "  maintenance on|off           refuse new mail with 421 / accept again\n"
               "  config export                the effective configuration as UCL\n"
               "  cache clear                  empty the recipient verification cache\n"
               "  reload                       re-read the configuration file; applied only\n"
               "                               if valid (exit 1 and every error otherwise)\n"
               "default socket: " DEFAULT_SOCKET "\n");
}

/* mxctl top: one snapshot per second from the gateway's stats --json. */
static int fetch_stats(void *arg, struct mx_stats_snapshot *out)
{
    char *body;
    int rc = mx_control_fetch(arg, "stats --json", &body);
    if (rc != 0) {
        free(body);
        return -EIO;
    }
    rc = mx_stats_parse_json(body, strlen(body), out);
    free(body);
    return rc;
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
    if (strcmp(argv[optind], "top") == 0)
        return mx_console_top(fetch_stats, (void *)sock) == 0 ? 0 : 1;
    return mx_control_request(sock, argc - optind, argv + optind);
}
