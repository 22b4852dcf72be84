/*
 * fuzz_stats_json.c - mx_stats_parse_json() reads what a (possibly foreign
 * or broken) gateway sent over the control socket. Any input must parse or
 * fail cleanly; whatever parses must survive render -> parse unchanged.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "console/console.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct mx_stats_snapshot a, b;
    if (mx_stats_parse_json((const char *)data, size, &a) != 0)
        return 0;
    char *j = mx_stats_render_json(&a);
    if (!j)
        return 0;
    if (mx_stats_parse_json(j, strlen(j), &b) != 0)
        abort();
    if (memcmp(a.total, b.total, sizeof(a.total)) != 0 || a.nslots != b.nslots ||
        memcmp(a.hist, b.hist, sizeof(a.hist)) != 0)
        abort();
    free(j);
    char *p = mx_stats_render_prometheus(&a);
    free(p);
    char *t = mx_stats_render_text(&a);
    free(t);
    return 0;
}
