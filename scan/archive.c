/*
 * archive.c - list the members of an archive attachment (libarchive) so that
 * attachment rules see inside zip, rar, 7z, tar and compressed files.
 *
 * The archive is read from memory with every format and filter libarchive
 * has, plus the raw format so that a lone gzip/bzip2/xz file (x.exe.gz)
 * shows its one member. Each regular member gets its first MX_ARCHIVE_HEAD
 * bytes read (for libmagic in the engine's callback); a member that looks
 * like an archive itself is read whole (up to max_bytes) and walked one
 * level deeper. Everything libarchive decompresses, skipped data included,
 * is counted against max_total: skipping a member of a tar.gz or a solid 7z
 * means decompressing it, so a 10 GB member of zeros stops at the limit
 * instead of burning the worker. A zip's members are read the same way
 * (the streaming zip reader inflates on skip too).
 */
#include "scan/archive_internal.h"

#include <archive.h>
#include <archive_entry.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* consecutive header errors after which a level gives up (each one is
 * counted as a member as well, so the loop is bounded either way) */
#define MAX_HEADER_ERRORS 8
/* read size while draining a member nobody needs more of */
#define DRAIN_CHUNK 16384

struct walk {
    const struct mx_archive_limits *lim;
    mx_archive_cb cb;
    void *ud;
    unsigned members; /* reported or skipped headers, all levels */
    uint64_t total;   /* decompressed bytes, all levels */
    bool stop;        /* a walk-wide limit was hit: unwind */
    /* where drained bytes go; one for the walk (reads are sequential), so
     * that each level's stack frame stays small */
    uint8_t drain[DRAIN_CHUNK];
};

static bool has_ext(const char *name, const char *const *list)
{
    if (!name)
        return false;
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    const char *dot = strrchr(base, '.');
    if (!dot)
        return false;
    for (size_t i = 0; list[i]; i++)
        if (strcasecmp(dot + 1, list[i]) == 0)
            return true;
    return false;
}

bool mx_archive_sniff(const uint8_t *h, size_t n, const char *name)
{
    static const char *const exts[] = {"zip", "rar", "7z",   "tar", "gz",  "tgz", "bz2",
                                       "tbz", "tbz2", "xz", "txz", "cab", NULL};
    if (n >= 4 && h[0] == 'P' && h[1] == 'K' &&
        ((h[2] == 3 && h[3] == 4) || (h[2] == 5 && h[3] == 6) || (h[2] == 7 && h[3] == 8)))
        return true;
    if (n >= 6 && memcmp(h, "Rar!\x1a\x07", 6) == 0)
        return true;
    if (n >= 6 && memcmp(h, "7z\xbc\xaf\x27\x1c", 6) == 0)
        return true;
    if (n >= 3 && h[0] == 0x1f && h[1] == 0x8b && h[2] == 8)
        return true;
    if (n >= 4 && memcmp(h, "BZh", 3) == 0 && h[3] >= '1' && h[3] <= '9')
        return true;
    if (n >= 6 && memcmp(h, "\xfd" "7zXZ\0", 6) == 0)
        return true;
    if (n >= 262 && memcmp(h + 257, "ustar", 5) == 0)
        return true;
    if (n >= 4 && memcmp(h, "MSCF", 4) == 0)
        return true;
    return has_ext(name, exts);
}

/*
 * Read up to cap bytes of the current member into buf (buf NULL: read and
 * drop everything), counting them against the walk's total. Returns 0 at the
 * member's end or when cap is reached, 1 when max_total was hit, or the
 * negative libarchive status of a read error.
 */
static int read_data(struct walk *w, struct archive *a, uint8_t *buf, size_t cap, size_t *got)
{
    for (;;) {
        uint8_t *dst = buf ? buf + *got : w->drain;
        size_t room = buf ? cap - *got : sizeof w->drain;
        if (buf && room == 0)
            return 0;
        /* never ask for more than the total budget allows, plus one byte to
         * see that it is exceeded */
        uint64_t left = w->lim->max_total - w->total;
        if (room > left + 1)
            room = (size_t)left + 1;
        la_ssize_t r = archive_read_data(a, dst, room);
        if (r < 0)
            return (int)r;
        if (r == 0)
            return 0;
        w->total += (uint64_t)r;
        if (buf)
            *got += (size_t)r;
        if (w->total > w->lim->max_total)
            return 1;
    }
}

/* The one member of a compressed non-archive (x.exe.gz): the name without
 * its compression extension. */
static void raw_member_name(const char *archive, char *out, size_t cap)
{
    static const char *const comp[] = {"gz", "bz2", "xz", "lzma", "lz", "z", "zst", "lz4", NULL};
    const char *base = strrchr(archive, '/');
    base = base ? base + 1 : archive;
    const char *dot = strrchr(base, '.');
    if (dot && dot != base && has_ext(base, comp))
        snprintf(out, cap, "%.*s", (int)(dot - base), base);
    else
        snprintf(out, cap, "%s", *base ? base : "data");
}

static unsigned walk_level(struct walk *w, const uint8_t *data, size_t len, const char *path,
                           unsigned level);

/* "path/name", cut to MX_ARCHIVE_PATH - 1 bytes (a deep path is still
 * named by its start) */
static void join_path(char out[MX_ARCHIVE_PATH], const char *path, const char *name)
{
    size_t o = 0;
    for (const char *s = path; *s && o < MX_ARCHIVE_PATH - 1; s++)
        out[o++] = *s;
    if (o < MX_ARCHIVE_PATH - 1)
        out[o++] = '/';
    for (const char *s = name; *s && o < MX_ARCHIVE_PATH - 1; s++)
        out[o++] = *s;
    out[o] = 0;
}

/*
 * One member: read its head, recurse if it is an archive within the limits,
 * report it, drain the rest. Returns the flags it adds to its archive
 * (ENCRYPTED, CORRUPT, LIMIT) and sets *fatal when the level must stop.
 */
static unsigned one_member(struct walk *w, struct archive *a, struct archive_entry *e,
                           const char *path, const char *name, unsigned level, bool *fatal)
{
    const struct mx_archive_limits *lim = w->lim;
    unsigned mf = archive_entry_is_encrypted(e) ? MX_ARCH_ENCRYPTED : 0;
    uint8_t head[MX_ARCHIVE_HEAD];
    size_t hl = 0;
    uint8_t *whole = NULL;
    size_t wl = 0;
    char child[MX_ARCHIVE_PATH];
    join_path(child, path, name);

    int rc = read_data(w, a, head, sizeof head, &hl);
    bool nested = rc == 0 && mx_archive_sniff(head, hl, name);
    if (nested && level >= lim->max_depth) {
        mf |= MX_ARCH_ARCHIVE | MX_ARCH_LIMIT;
        nested = false;
    }
    if (nested) {
        /* the whole member, up to max_bytes + 1 to see that it is larger */
        size_t cap = 65536;
        whole = malloc(cap);
        if (!whole) {
            mf |= MX_ARCH_LIMIT;
            nested = false;
        } else {
            memcpy(whole, head, hl);
            wl = hl;
        }
        while (nested) {
            rc = read_data(w, a, whole, cap, &wl);
            if (rc != 0 || wl < cap)
                break;
            if (cap > lim->max_bytes) {
                mf |= MX_ARCH_ARCHIVE | MX_ARCH_LIMIT;
                nested = false;
                break;
            }
            size_t ncap = cap * 2 > lim->max_bytes + 1 ? lim->max_bytes + 1 : cap * 2;
            uint8_t *nw = realloc(whole, ncap);
            if (!nw) {
                mf |= MX_ARCH_LIMIT;
                nested = false;
                break;
            }
            whole = nw;
            cap = ncap;
        }
        if (nested && wl > lim->max_bytes) {
            mf |= MX_ARCH_ARCHIVE | MX_ARCH_LIMIT;
            nested = false;
        }
    }
    if (rc == 1) {
        mf |= MX_ARCH_LIMIT;
        w->stop = true;
        nested = false;
    } else if (rc < 0) {
        /* encrypted data without a passphrase fails to read: that is
         * what encrypted means here, not a broken archive */
        mf |= archive_entry_is_encrypted(e) ? MX_ARCH_ENCRYPTED : MX_ARCH_CORRUPT;
        if (rc == ARCHIVE_FATAL)
            *fatal = true;
        nested = false;
    }
    if (nested)
        mf |= walk_level(w, whole, wl, child, level + 1);
    free(whole);

    struct mx_archive_member mb = {
        .path = child,
        .name = name,
        .head = head,
        .headlen = hl,
        .size = archive_entry_size_is_set(e) ? (uint64_t)archive_entry_size(e) : 0,
        .depth = level,
        .flags = mf,
    };
    w->cb(w->ud, &mb);

    /* drain what is left, so that the next header can be read; counted */
    if (rc == 0 && !w->stop && !*fatal) {
        size_t none = 0;
        rc = read_data(w, a, NULL, 0, &none);
        if (rc == 1) {
            mf |= MX_ARCH_LIMIT;
            w->stop = true;
        } else if (rc < 0) {
            mf |= archive_entry_is_encrypted(e) ? MX_ARCH_ENCRYPTED : MX_ARCH_CORRUPT;
            if (rc == ARCHIVE_FATAL)
                *fatal = true;
        }
    }
    return mf & (MX_ARCH_ENCRYPTED | MX_ARCH_CORRUPT | MX_ARCH_LIMIT);
}

static unsigned walk_level(struct walk *w, const uint8_t *data, size_t len, const char *path,
                           unsigned level)
{
    const struct mx_archive_limits *lim = w->lim;
    unsigned flags = MX_ARCH_ARCHIVE;
    struct archive *a = archive_read_new();
    if (!a)
        return flags | MX_ARCH_LIMIT;
    archive_read_support_filter_all(a);
    archive_read_support_format_all(a);
    archive_read_support_format_raw(a);
    if (archive_read_open_memory(a, data, len) != ARCHIVE_OK) {
        archive_read_free(a);
        return flags | MX_ARCH_CORRUPT;
    }
    unsigned errors = 0;
    bool first = true, fatal = false;
    while (!w->stop && !fatal) {
        if (w->members >= lim->max_members) {
            flags |= MX_ARCH_LIMIT;
            w->stop = true;
            break;
        }
        struct archive_entry *e;
        int rc = archive_read_next_header(a, &e);
        if (rc == ARCHIVE_EOF)
            break;
        w->members++;
        if (rc == ARCHIVE_FATAL) {
            /* encrypted headers (7z -mhe, rar5 -hp) end here too */
            flags |= archive_read_has_encrypted_entries(a) > 0 ? MX_ARCH_ENCRYPTED
                                                               : MX_ARCH_CORRUPT;
            break;
        }
        if (rc < ARCHIVE_WARN) {
            flags |= MX_ARCH_CORRUPT;
            if (++errors >= MAX_HEADER_ERRORS)
                break;
            continue;
        }
        errors = 0;
        char name[MX_ARCHIVE_PATH];
        if (first && (archive_format(a) & ARCHIVE_FORMAT_BASE_MASK) == ARCHIVE_FORMAT_RAW) {
            /* the raw format takes anything: without a decompression
             * filter in front of it the data is no archive at all */
            if (archive_filter_count(a) <= 1) {
                flags |= MX_ARCH_CORRUPT;
                break;
            }
            const char *slash = strrchr(path, '/');
            raw_member_name(slash ? slash + 1 : path, name, sizeof name);
        } else {
            const char *pn = archive_entry_pathname_utf8(e);
            if (!pn)
                pn = archive_entry_pathname(e);
            snprintf(name, sizeof name, "%s", pn ? pn : "");
        }
        first = false;
        if (archive_entry_filetype(e) != AE_IFREG) {
            if (archive_entry_is_encrypted(e))
                flags |= MX_ARCH_ENCRYPTED;
            continue;
        }
        flags |= one_member(w, a, e, path, name, level, &fatal);
    }
    if (archive_read_has_encrypted_entries(a) > 0)
        flags |= MX_ARCH_ENCRYPTED;
    archive_read_free(a);
    return flags;
}

unsigned mx_archive_walk(const uint8_t *data, size_t len, const char *name,
                         const struct mx_archive_limits *lim, mx_archive_cb cb, void *ud,
                         struct mx_archive_usage *use)
{
    struct walk w = {.lim = lim, .cb = cb, .ud = ud};
    unsigned flags;
    if (lim->max_depth == 0 || len > lim->max_bytes)
        flags = MX_ARCH_ARCHIVE | MX_ARCH_LIMIT;
    else
        flags = walk_level(&w, data, len, name && *name ? name : "attachment", 1);
    if (use) {
        use->total = w.total;
        use->members = w.members;
    }
    return flags;
}
