/*
 * archive_internal.h - archive member listing for attachment rules
 * (scan/archive.c, libarchive).
 *
 * An attachment that looks like an archive (content signature or file
 * extension) is kept in memory while it streams in; at the end of its part
 * mx_archive_walk() opens it from memory with libarchive (every filter, the
 * formats less mtree, xar and iso9660) and reports each member (path, first
 * bytes, flags) to a callback, recursing into members that are archives
 * themselves. The walker knows nothing about rules or libmagic: the
 * engine's callback runs the attachment rules on what it is given.
 *
 * Every input is hostile: the kept bytes, each nested archive, the
 * decompressed bytes of all levels together, the members and the CPU time
 * are bounded, and a 7z's header, a zip or RAR entry's first data bytes and
 * an xz/lzma/lzip header are checked before libarchive allocates what they
 * declare; a limit hit, an encrypted member or a broken archive sets a
 * flag and the walk goes on or stops, it never loops and never reads past
 * its buffers.
 */
#ifndef MX_SCAN_ARCHIVE_INTERNAL_H
#define MX_SCAN_ARCHIVE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/** This thread's CPU time in ns: the walk's CPU budget (max_cpu_ns), and the
 * scan engine's profiler. */
static inline uint64_t mx_cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/** Flags of an attachment or member (rule condition `flag=`). */
enum mx_archive_flag {
    MX_ARCH_ARCHIVE = 1u << 0,   /* it is an archive (it was opened) */
    MX_ARCH_ENCRYPTED = 1u << 1, /* it is encrypted / holds an encrypted member */
    MX_ARCH_CORRUPT = 1u << 2,   /* libarchive could not read it (all or part) */
    MX_ARCH_LIMIT = 1u << 3,     /* a limit stopped the walk (bytes, depth, members) */
};

/** Limits of one walk (one top-level attachment, every level together). */
struct mx_archive_limits {
    size_t max_bytes;     /* largest archive opened (top or nested), bytes */
    unsigned max_depth;   /* archive levels opened: 1 = the attachment only */
    unsigned max_members; /* members reported, all levels together */
    uint64_t max_total;   /* decompressed bytes libarchive may produce */
    uint64_t max_cpu_ns;  /* CPU time of the calling thread the walk may use
                           * (checked between reads); 0: no limit */
    uint64_t max_mem;     /* memory a 7z coder, a zip/RAR entry or an
                           * xz/lzma/lzip stream may declare (dictionary,
                           * PPMd model); 0: max_total */
};

/* bytes of each member given to the callback (libmagic reads this much) */
#define MX_ARCHIVE_HEAD 4096
/* longest path given to the callback, NUL included ("a.zip/b.zip/c.exe") */
#define MX_ARCHIVE_PATH 512

/** One member, valid during the callback only. */
struct mx_archive_member {
    const char *path;    /* "outer.zip/inner.zip/x.exe" (the top name first) */
    const char *name;    /* the member's own name inside its archive */
    const uint8_t *head; /* its first bytes (up to MX_ARCHIVE_HEAD) */
    size_t headlen;
    uint64_t size;       /* declared uncompressed size; 0 if unknown */
    unsigned depth;      /* 1: directly inside the attachment */
    unsigned flags;      /* enum mx_archive_flag of the member itself; for a
                          * nested archive those of its walk as well */
};

typedef void (*mx_archive_cb)(void *ud, const struct mx_archive_member *mb);

/** What one walk used, for the engine's per-message budget: a message's
 * walks share scan.archive_max_message_total / _members, so the engine
 * gives each walk the smaller of the per-attachment limit and what is left. */
struct mx_archive_usage {
    uint64_t total;   /* bytes decompressed, all levels, drained ones included */
    unsigned members; /* member headers read, all levels */
    uint64_t cpu_ns;  /* CPU time of the calling thread */
};

/**
 * Does content starting with `head` (n bytes), named `name` (may be NULL or
 * ""), look like an archive worth opening? Signatures: zip, rar (4 and 5),
 * 7z, gzip, bzip2, xz, tar (ustar), cab; extensions: zip, rar, 7z, tar, gz,
 * tgz, bz2, tbz, tbz2, xz, txz, cab. Office Open XML and ODF documents are
 * zips and are opened too (see docs/SCAN.md).
 */
bool mx_archive_sniff(const uint8_t *head, size_t n, const char *name);

/**
 * Walk the archive in `data` (len bytes) named `name`, reporting every
 * regular-file member to `cb` (members of a nested archive before the
 * nested archive itself). Data that libarchive reads as no archive at all
 * (the raw format without a compression filter) reports nothing.
 * @param use  receives what the walk used (may be NULL)
 * @return the flags of the archive: MX_ARCH_ARCHIVE when it was read as
 *         one, plus ENCRYPTED / CORRUPT / LIMIT seen anywhere inside it.
 */
unsigned mx_archive_walk(const uint8_t *data, size_t len, const char *name,
                         const struct mx_archive_limits *lim, mx_archive_cb cb, void *ud,
                         struct mx_archive_usage *use);

#endif
