/*
 * fuzz_archive.c - libFuzzer target for the archive walker (scan/archive.c):
 * the first byte picks the attachment's name (so extension-only candidates
 * and the raw gzip/bzip2/xz member naming are reached too), the rest is the
 * archive. Checks: the walk ends, every member's path starts with the
 * attachment name and is NUL-terminated within MX_ARCHIVE_PATH, heads and
 * depths stay within their bounds, no more members than max_members are
 * reported, what the walk says it used (the engine's per-message budget)
 * stays within the limits, and the result always says "archive".
 */
#include "scan/archive_internal.h"

#include <stdlib.h>
#include <string.h>

static const char *const names[] = {"a.zip", "a.tar.gz", "x.exe.gz", "a.7z", "a.rar", "a.bin"};

static const struct mx_archive_limits lim = {
    .max_bytes = 1 << 20, .max_depth = 3, .max_members = 64, .max_total = 4u << 20};

struct seen {
    const char *top;
    unsigned members;
};

static void on_member(void *ud, const struct mx_archive_member *mb)
{
    struct seen *s = ud;
    size_t tl = strlen(s->top);
    if (strnlen(mb->path, MX_ARCHIVE_PATH) >= MX_ARCHIVE_PATH)
        abort();
    if (strncmp(mb->path, s->top, tl) != 0 || mb->path[tl] != '/')
        abort();
    if (mb->headlen > MX_ARCHIVE_HEAD || (mb->headlen && !mb->head))
        abort();
    if (mb->depth < 1 || mb->depth > lim.max_depth)
        abort();
    /* touch every head byte so ASan sees a bad pointer */
    volatile uint8_t x = 0;
    for (size_t i = 0; i < mb->headlen; i++)
        x ^= mb->head[i];
    (void)x;
    s->members++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct seen s = {.top = names[data[0] % (sizeof names / sizeof names[0])]};
    struct mx_archive_usage use;
    unsigned f = mx_archive_walk(data + 1, size - 1, s.top, &lim, on_member, &s, &use);
    if (!(f & MX_ARCH_ARCHIVE))
        abort();
    if (s.members > lim.max_members)
        abort();
    /* what the engine charges to the message's budget stays within the
     * walk's own limits (one byte over shows the limit was hit) */
    if (use.members > lim.max_members || use.total > lim.max_total + 1 || use.members < s.members)
        abort();
    /* the sniffer on the same bytes: must not read past them */
    (void)mx_archive_sniff(data + 1, size - 1, s.top);
    return 0;
}
