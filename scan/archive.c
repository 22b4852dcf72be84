/*
 * archive.c - list the members of an archive attachment (libarchive) so that
 * attachment rules see inside zip, rar, 7z, tar and compressed files.
 *
 * The archive is read from memory with every filter libarchive has and its
 * formats less mtree, xar and iso9660 (see walk_level()), plus the raw
 * format so that a lone gzip/bzip2/xz file (x.exe.gz) shows its one
 * member. Each regular member gets its first MX_ARCHIVE_HEAD bytes read (for
 * libmagic in the engine's callback); a member that looks like an archive
 * itself is read whole (up to max_bytes) and walked one level deeper.
 * Everything libarchive decompresses, skipped data included, is counted
 * against max_total: skipping a member of a tar.gz or a solid 7z means
 * decompressing it, so a 10 GB member of zeros stops at the limit instead of
 * burning the worker. A zip's members are read the same way (the streaming
 * zip reader inflates on skip too).
 *
 * A 7z archive declares its coders' memory in its header: an LZMA/LZMA2
 * dictionary of up to 4 GiB, a PPMd model of up to 4 GiB, which libarchive
 * allocates as declared. The LZMA dictionary is only touched as far as data
 * is decompressed (bounded by max_total), but a PPMd model fills with the
 * contexts it learns: 43 MiB out of a 2 MiB 7z with a 1 GiB model took
 * 1 GB of memory and 8 s. So the 7z header is read here first (the encoded
 * header decompressed with liblzma, up to max_bytes) and an archive whose
 * coders declare more than max_mem is not opened (LIMIT; the engine passes
 * archive_max_total). libarchive reads
 * a 7z only where the signature is at the start of a level's bytes, i.e. where
 * that check ran (not behind a compression filter, not self-extracting).
 *
 * Other data declares decoder memory too, and the same cap applies (see the
 * "Decoder memory" comment below and docs/SCAN.md): a zip entry packed with
 * PPMd (a model of up to 256 MiB), LZMA or xz, and a RAR 2.9 entry starting
 * with a PPMd block (256 MiB) are checked per entry, after libarchive read
 * the header and before the data is read (entry_check(): LIMIT on the
 * member, its data skipped, the walk goes on); an xz, lzma or lzip stream
 * where it starts a level (lz_check(): LIMIT on the level), and those three
 * filters are enabled only then, one alone, so that none runs behind another
 * filter or itself. Not checked: what is declared later in the data and
 * reached only by decoding what comes first (a later xz block, a RAR PPMd
 * block in the middle of a file): bounded by max_total and max_cpu_ns.
 */
#include "scan/archive_internal.h"

#include <archive.h>
#include <archive_entry.h>
#include <lzma.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

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
    uint64_t cpu0;    /* thread CPU time at the start, ns */
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

/* Has the walk used its CPU time (max_cpu_ns)? Some decoders (PPMd: ~2 MB/s)
 * are slow enough that the byte limits leave seconds of work. */
static bool over_time(const struct walk *w)
{
    return w->lim->max_cpu_ns && mx_cpu_ns() - w->cpu0 > w->lim->max_cpu_ns;
}

/*
 * Read up to cap bytes of the current member into buf (buf NULL: read and
 * drop everything), counting them against the walk's total. Returns 0 at the
 * member's end or when cap is reached, 1 when max_total or max_cpu_ns was
 * hit, or the negative libarchive status of a read error.
 */
static int read_data(struct walk *w, struct archive *a, uint8_t *buf, size_t cap, size_t *got)
{
    for (unsigned n = 0;; n++) {
        /* the clock every 4th read (64 KiB inflate in ~0.2 ms) */
        if (n % 4 == 3 && over_time(w))
            return 1;
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

/*
 * The 7z header check (see the top of the file). It flags only what it has
 * read for certain: a header it cannot parse is left to libarchive, which
 * then fails on it as well (CORRUPT).
 */
#define SZ_SIG "7z\xbc\xaf\x27\x1c"
/* files, folders, packed or unpacked streams of one 7z: libarchive
 * allocates ~100 bytes per file before it reads them and touches every
 * entry; 7z can describe a file in one bit of its header */
#define SZ_MAX_COUNT (1u << 18)

struct sz_rd {
    const uint8_t *p, *end;
};

struct sz_streams {
    uint64_t pack_pos, pack_size; /* the first packed stream */
    uint64_t unpack_size;         /* the first folder's (last) output */
    unsigned folders, coders;     /* coders of the first folder */
    uint8_t id[4];                /* the first folder's first coder */
    unsigned idlen;
    const uint8_t *props;
    uint64_t nprops;
    bool over;      /* a coder declares more memory than the cap, or a
                     * count is above SZ_MAX_COUNT */
    bool bad;       /* a count larger than the header's bytes could describe */
    bool encrypted; /* an AES coder */
};

static bool sz_byte(struct sz_rd *r, uint8_t *b)
{
    if (r->p >= r->end)
        return false;
    *b = *r->p++;
    return true;
}

/* 7z's variable-length number: the high bits of the first byte say how many
 * bytes follow */
static bool sz_num(struct sz_rd *r, uint64_t *v)
{
    uint8_t first, b;
    if (!sz_byte(r, &first))
        return false;
    uint64_t val = 0;
    uint8_t mask = 0x80;
    for (int i = 0; i < 8; i++) {
        if (!(first & mask)) {
            *v = val | (uint64_t)(first & (mask - 1)) << (8 * i);
            return true;
        }
        if (!sz_byte(r, &b))
            return false;
        val |= (uint64_t)b << (8 * i);
        mask >>= 1;
    }
    *v = val;
    return true;
}

static bool sz_skip(struct sz_rd *r, uint64_t n)
{
    if (n > (uint64_t)(r->end - r->p))
        return false;
    r->p += n;
    return true;
}

/* digests of n items: "all defined" (one byte) or a bit vector, then a CRC
 * for each defined one; defs (may be NULL) receives which are */
static bool sz_digests(struct sz_rd *r, uint64_t n, uint8_t *defs)
{
    uint8_t all;
    if (!sz_byte(r, &all))
        return false;
    uint64_t defined = all && !defs ? n : 0;
    uint8_t b = 0;
    for (uint64_t i = 0; i < n && (!all || defs); i++) {
        if (!all && i % 8 == 0 && !sz_byte(r, &b))
            return false;
        bool d = all || ((b >> (7 - i % 8)) & 1);
        defined += d;
        if (defs)
            defs[i] = d;
    }
    return defined <= UINT64_MAX / 4 && sz_skip(r, defined * 4);
}

/* A count libarchive allocates for: false (and over/bad set) when the walk
 * must not let libarchive read on. */
static bool sz_count(struct sz_streams *s, uint64_t n, const struct sz_rd *r)
{
    if (n > (uint64_t)(r->end - r->p))
        s->bad = true;
    else if (n > SZ_MAX_COUNT)
        s->over = true;
    return !s->bad && !s->over;
}

static uint32_t sz_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* one coder's declared memory against the cap */
static void sz_coder(struct sz_streams *s, const uint8_t *id, unsigned idlen, const uint8_t *props,
                     uint64_t np, uint64_t cap)
{
    uint64_t mem = 0;
    if (idlen == 1 && id[0] == 0x21 && np >= 1) { /* LZMA2 */
        unsigned b = props[0];
        if (b <= 40)
            mem = b == 40 ? UINT32_MAX : (uint64_t)(2 | (b & 1)) << (b / 2 + 11);
    } else if (idlen == 3 && id[0] == 3 && id[1] == 1 && id[2] == 1 && np >= 5) { /* LZMA */
        mem = sz_le32(props + 1);
    } else if (idlen == 3 && id[0] == 3 && id[1] == 4 && id[2] == 1 && np >= 5) { /* PPMd */
        mem = sz_le32(props + 1);
    } else if (idlen == 4 && id[0] == 6 && id[1] == 0xf1 && id[2] == 7 && id[3] == 1) {
        s->encrypted = true;
    }
    if (mem > cap)
        s->over = true;
}

/* StreamsInfo: PackInfo, the folders of UnpackInfo with their coders and
 * output sizes, SubStreamsInfo; r is left after its end. Counts that
 * libarchive allocates for (streams, folders) are checked as they come. */
static bool sz_streams(struct sz_rd *r, struct sz_streams *s, uint64_t cap)
{
    uint64_t t, n, nfolders = 0;
    uint8_t *crc = NULL;   /* per folder: its CRC is given */
    uint64_t *nsub = NULL; /* per folder: its unpack streams */
    bool ok = false;
    if (!sz_num(r, &t))
        return false;
    if (t == 0x06) { /* PackInfo */
        uint64_t npack;
        if (!sz_num(r, &s->pack_pos) || !sz_num(r, &npack))
            return false;
        for (;;) {
            if (!sz_num(r, &t))
                return false;
            if (t == 0x00)
                break;
            if (t == 0x09) {
                if (!sz_count(s, npack, r))
                    return true;
                for (uint64_t i = 0; i < npack; i++) {
                    if (!sz_num(r, &n))
                        return false;
                    if (i == 0)
                        s->pack_size = n;
                }
            } else if (t == 0x0a) {
                if (!sz_digests(r, npack, NULL))
                    return false;
            } else {
                return false;
            }
        }
        if (!sz_num(r, &t))
            return false;
    }
    if (t == 0x07) { /* UnpackInfo */
        uint8_t external;
        if (!sz_num(r, &t) || t != 0x0b || !sz_num(r, &nfolders) || !sz_byte(r, &external) ||
            external != 0)
            return false;
        if (!sz_count(s, nfolders, r))
            return true;
        s->folders = (unsigned)nfolders;
        crc = calloc(nfolders ? nfolders : 1, 1);
        nsub = malloc((nfolders ? nfolders : 1) * sizeof *nsub);
        if (!crc || !nsub)
            goto out;
        uint64_t outs_total = 0, first_outs = 0;
        for (uint64_t f = 0; f < nfolders; f++) {
            uint64_t ncoders, ins = 0, outs = 0;
            nsub[f] = 1;
            if (!sz_num(r, &ncoders) || ncoders == 0 || ncoders > 64)
                goto out;
            if (f == 0)
                s->coders = (unsigned)ncoders;
            for (uint64_t c = 0; c < ncoders; c++) {
                uint8_t flag;
                if (!sz_byte(r, &flag) || (flag & 0x80))
                    goto out;
                unsigned idlen = flag & 0x0f;
                const uint8_t *id = r->p;
                if (!sz_skip(r, idlen))
                    goto out;
                uint64_t ni = 1, no = 1;
                if ((flag & 0x10) && (!sz_num(r, &ni) || !sz_num(r, &no)))
                    goto out;
                /* libarchive takes up to 10^8 in and out streams per coder
                 * and allocates 8 bytes per packed stream of the folder
                 * (the in streams less the bind pairs) before it reads
                 * their indexes: 128 MiB for 16M declared in a 263-byte 7z
                 * (fuzz_archive). 7-Zip writes at most 64, libarchive
                 * decodes at most 4: more is corrupt. */
                if (ni > 64 || no > 64) {
                    s->bad = true;
                    ok = true;
                    goto out;
                }
                ins += ni;
                outs += no;
                const uint8_t *props = NULL;
                uint64_t np = 0;
                if (flag & 0x20) {
                    if (!sz_num(r, &np))
                        goto out;
                    props = r->p;
                    if (!sz_skip(r, np))
                        goto out;
                }
                sz_coder(s, id, idlen, props, np, cap);
                if (f == 0 && c == 0 && idlen <= sizeof s->id) {
                    memcpy(s->id, id, idlen);
                    s->idlen = idlen;
                    s->props = props;
                    s->nprops = np;
                }
            }
            if (outs == 0 || ins < outs - 1)
                goto out;
            for (uint64_t b = 0; b < outs - 1; b++) /* bind pairs */
                if (!sz_num(r, &n) || !sz_num(r, &n))
                    goto out;
            uint64_t packed = ins - (outs - 1);
            if (packed > 1)
                for (uint64_t k = 0; k < packed; k++)
                    if (!sz_num(r, &n))
                        goto out;
            outs_total += outs;
            if (f == 0)
                first_outs = outs;
        }
        if (!sz_num(r, &t) || t != 0x0c)
            goto out;
        for (uint64_t i = 0; i < outs_total; i++) {
            if (!sz_num(r, &n))
                goto out;
            /* a folder's output is its last (unbound) coder's: for the
             * one-coder folders checked below, its only one */
            if (i + 1 == first_outs)
                s->unpack_size = n;
        }
        if (!sz_num(r, &t))
            goto out;
        if (t == 0x0a) {
            if (!sz_digests(r, nfolders, crc) || !sz_num(r, &t))
                goto out;
        }
        if (t != 0x00 || !sz_num(r, &t))
            goto out;
    }
    if (t == 0x08) { /* SubStreamsInfo */
        if (!sz_num(r, &t))
            goto out;
        if (t == 0x0d) {
            uint64_t streams = 0;
            for (uint64_t f = 0; f < nfolders; f++) {
                if (!sz_num(r, &nsub[f]))
                    goto out;
                /* libarchive allocates for all streams before it reads
                 * the bytes that describe them */
                if (nsub[f] > SZ_MAX_COUNT || (streams += nsub[f]) > SZ_MAX_COUNT) {
                    s->over = true;
                    ok = true;
                    goto out;
                }
            }
            if (!sz_num(r, &t))
                goto out;
        }
        if (t == 0x09) {
            for (uint64_t f = 0; f < nfolders; f++)
                for (uint64_t k = 1; k < nsub[f]; k++)
                    if (!sz_num(r, &n))
                        goto out;
            if (!sz_num(r, &t))
                goto out;
        }
        if (t == 0x0a) {
            uint64_t nd = 0;
            for (uint64_t f = 0; f < nfolders; f++)
                if (nsub[f] != 1 || !crc[f])
                    nd += nsub[f];
            if (!sz_digests(r, nd, NULL) || !sz_num(r, &t))
                goto out;
        }
        if (t != 0x00 || !sz_num(r, &t))
            goto out;
    }
    ok = t == 0x00;
out:
    free(crc);
    free(nsub);
    return ok;
}

/* The header (kHeader): the coders of its streams, the number of files. */
static bool sz_header(struct sz_rd *r, struct sz_streams *s, uint64_t cap)
{
    uint64_t t, n;
    if (!sz_num(r, &t) || t != 0x01 || !sz_num(r, &t))
        return false;
    if (t == 0x02) { /* ArchiveProperties */
        for (;;) {
            if (!sz_num(r, &t))
                return false;
            if (t == 0)
                break;
            if (!sz_num(r, &n) || !sz_skip(r, n))
                return false;
        }
        if (!sz_num(r, &t))
            return false;
    }
    if (t == 0x03) { /* AdditionalStreamsInfo */
        struct sz_streams add = {0};
        bool ok = sz_streams(r, &add, cap);
        s->over |= add.over;
        s->bad |= add.bad;
        if (!ok || add.over || add.bad || !sz_num(r, &t))
            return ok;
    }
    if (t == 0x04) { /* MainStreamsInfo */
        if (!sz_streams(r, s, cap) || s->over || s->bad || !sz_num(r, &t))
            return true;
    }
    if (t == 0x05) { /* FilesInfo: libarchive allocates an entry per file */
        if (sz_num(r, &n) && n > SZ_MAX_COUNT)
            s->over = true;
    }
    return true;
}

/* what a parse found for certain: a count the header cannot describe is
 * CORRUPT (libarchive would fail on it, after allocating for it), one over
 * SZ_MAX_COUNT or a coder over the memory cap LIMIT */
static unsigned sz_flags(const struct sz_streams *s)
{
    return s->bad ? MX_ARCH_CORRUPT : s->over ? MX_ARCH_LIMIT : 0;
}

/* The encoded header's one LZMA/LZMA2 stream, decompressed (malloc'd). */
static uint8_t *sz_decode(const struct sz_streams *s, const uint8_t *in, size_t inlen)
{
    lzma_filter f[2] = {{.id = s->idlen == 1 ? LZMA_FILTER_LZMA2 : LZMA_FILTER_LZMA1},
                        {.id = LZMA_VLI_UNKNOWN}};
    if (s->nprops > 5 ||
        lzma_properties_decode(&f[0], NULL, s->props, (size_t)s->nprops) != LZMA_OK)
        return NULL;
    lzma_stream z = LZMA_STREAM_INIT;
    lzma_ret rc = lzma_raw_decoder(&z, f);
    free(f[0].options);
    if (rc != LZMA_OK)
        return NULL;
    uint8_t *out = malloc(s->unpack_size ? (size_t)s->unpack_size : 1);
    if (out) {
        z.next_in = in;
        z.avail_in = inlen;
        z.next_out = out;
        z.avail_out = (size_t)s->unpack_size;
        do
            rc = lzma_code(&z, LZMA_FINISH);
        while (rc == LZMA_OK && z.avail_out > 0);
        if (z.avail_out > 0) {
            free(out);
            out = NULL;
        }
    }
    lzma_end(&z);
    return out;
}

/*
 * A 7z at the start of data: MX_ARCH_LIMIT when a coder of its header, of
 * its encoded header or of its data declares more memory than
 * lim->max_mem (or max_total), when it has more than SZ_MAX_COUNT files, folders or
 * streams, or the encoded header is larger than lim->max_bytes or packed in
 * a way this check cannot read (7-Zip and libarchive use LZMA or LZMA2
 * alone); MX_ARCH_CORRUPT for a count its header is too short to describe;
 * 0 otherwise (also for what libarchive is left to refuse).
 */
static unsigned sz_check(const uint8_t *d, size_t len, const struct mx_archive_limits *lim)
{
    uint64_t cap = lim->max_mem ? lim->max_mem : lim->max_total;
    if (len < 32 || memcmp(d, SZ_SIG, 6) != 0)
        return 0;
    uint64_t off = (uint64_t)sz_le32(d + 12) | (uint64_t)sz_le32(d + 16) << 32;
    uint64_t size = (uint64_t)sz_le32(d + 20) | (uint64_t)sz_le32(d + 24) << 32;
    if (size == 0 || off >= len - 32)
        return 0;
    /* a header said to run past the data is parsed by libarchive as far as
     * the data goes (it checks the CRC at the end): so is it here */
    if (size > len - 32 - off)
        size = len - 32 - off;
    struct sz_rd r = {d + 32 + off, d + 32 + off + size};
    struct sz_streams s = {0};
    if (*r.p != 0x17) {
        (void)sz_header(&r, &s, cap);
        return sz_flags(&s);
    }
    r.p++;
    bool ok = sz_streams(&r, &s, cap);
    if (s.bad || s.over)
        return sz_flags(&s);
    if (!ok || s.folders == 0)
        return 0;
    if (s.encrypted) /* libarchive says so */
        return 0;
    bool lzma = (s.idlen == 1 && s.id[0] == 0x21) ||
                (s.idlen == 3 && s.id[0] == 3 && s.id[1] == 1 && s.id[2] == 1);
    if (s.folders != 1 || s.coders != 1 || !lzma || s.unpack_size > lim->max_bytes)
        return MX_ARCH_LIMIT;
    if (s.pack_pos > off || s.pack_size > off - s.pack_pos)
        return 0;
    uint8_t *h = sz_decode(&s, d + 32 + s.pack_pos, (size_t)s.pack_size);
    if (!h)
        return 0;
    struct sz_rd hr = {h, h + s.unpack_size};
    struct sz_streams hs = {0};
    (void)sz_header(&hr, &hs, cap);
    unsigned f = sz_flags(&hs);
    free(h);
    return f;
}

/*
 * Decoder memory that other formats declare at the start of their data and
 * libarchive 3.6.2 allocates as declared: the dictionary of an xz, lzma or
 * lzip stream (filter), the PPMd8 model of a zip entry packed with PPMd
 * (method 98, up to 256 MiB, filled as the model learns: 263 MB and 5-8 s
 * for a 3.8 MB zip), the dictionary of a zip entry packed with LZMA (14) or
 * xz (95), and the PPMd model of a RAR 2.9 entry whose data starts with a
 * PPMd block (up to 256 MiB). The same cap as the 7z check (max_mem).
 */
static uint64_t mem_cap(const struct mx_archive_limits *lim)
{
    return lim->max_mem ? lim->max_mem : lim->max_total;
}

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

/* The largest LZMA dictionary in the filters of an xz stream's first block
 * (liblzma parses the headers, CRCs included); 0 when there is no block or
 * liblzma would refuse the headers before it allocates anything. */
static uint64_t xz_dict(const uint8_t *d, size_t len)
{
    lzma_stream_flags sf;
    if (len <= LZMA_STREAM_HEADER_SIZE || lzma_stream_header_decode(&sf, d) != LZMA_OK)
        return 0;
    const uint8_t *b = d + LZMA_STREAM_HEADER_SIZE;
    if (b[0] == 0) /* the index: no block */
        return 0;
    lzma_filter f[LZMA_FILTERS_MAX + 1];
    lzma_block blk = {.version = 1, .check = sf.check, .filters = f};
    blk.header_size = lzma_block_header_size_decode(b[0]);
    if (blk.header_size > len - LZMA_STREAM_HEADER_SIZE ||
        lzma_block_header_decode(&blk, NULL, b) != LZMA_OK)
        return 0;
    uint64_t dict = 0;
    for (size_t i = 0; f[i].id != LZMA_VLI_UNKNOWN; i++) {
        bool lz = f[i].id == LZMA_FILTER_LZMA2 || f[i].id == LZMA_FILTER_LZMA1;
#ifdef LZMA_FILTER_LZMA1EXT
        lz = lz || f[i].id == LZMA_FILTER_LZMA1EXT;
#endif
        if (lz && f[i].options) {
            const lzma_options_lzma *o = f[i].options;
            if (o->dict_size > dict)
                dict = o->dict_size;
        }
        free(f[i].options);
    }
    return dict;
}

/* An .lzma header as libarchive 3.6.2's lzma filter bids on it: the
 * properties byte, then a dictionary of 2^12..2^27 bytes, or a whole
 * number of MiB from 3 to 63 when the first byte is 0x5d/0x5e and the size
 * is unknown (all ones). Its dictionary in *dict. */
static bool lzma_alone(const uint8_t *d, size_t len, uint32_t *dict)
{
    if (len < 14 || d[0] > (4 * 5 + 4) * 9 + 8)
        return false;
    uint32_t ds = sz_le32(d + 1);
    bool unknown = true;
    for (int i = 5; i < 13; i++)
        unknown &= d[i] == 0xff;
    bool pow2 = ds >= 1u << 12 && ds <= 1u << 27 && (ds & (ds - 1)) == 0;
    bool mib = ds >= 3u << 20 && ds <= 0x03f00000u && (ds & 0xfffff) == 0 &&
               (d[0] == 0x5d || d[0] == 0x5e) && unknown;
    *dict = ds;
    return pow2 || mib;
}

/* An lzip member header as libarchive bids on it ("LZIP", version 0 or 1,
 * 2^12..2^29), its dictionary as libarchive computes it in *dict. */
static bool lzip_head(const uint8_t *d, size_t len, uint32_t *dict)
{
    if (len < 6 || memcmp(d, "LZIP", 4) != 0 || d[4] > 1)
        return false;
    unsigned lg = d[5] & 0x1f;
    if (lg < 12 || lg > 29)
        return false;
    uint32_t ds = 1u << lg;
    if (lg > 12)
        ds -= (ds / 16) * (d[5] >> 5);
    *dict = ds;
    return true;
}

enum { LZ_NONE, LZ_XZ, LZ_LZMA, LZ_LZIP };

static const uint8_t xz_magic[6] = {0xfd, '7', 'z', 'X', 'Z', 0};

/* The first bytes the stream at d (of kind k, its dictionary checked)
 * decompresses to, into out; how many. liblzma as libarchive sets it up,
 * but with a memory limit (a later xz block may declare more; the 1 MiB is
 * liblzma's own overhead above the dictionary). */
static size_t lz_head(const uint8_t *d, size_t len, int k, uint64_t mem, uint8_t *out, size_t cap)
{
    lzma_stream z = LZMA_STREAM_INIT;
    lzma_ret rc;
    if (k == LZ_XZ) {
        rc = lzma_stream_decoder(&z, mem + (1u << 20), 0);
    } else if (k == LZ_LZMA) {
        rc = lzma_alone_decoder(&z, mem + (1u << 20));
    } else {
        uint8_t props[5] = {0x5d};
        uint32_t dict = 0;
        (void)lzip_head(d, len, &dict);
        props[1] = (uint8_t)dict;
        props[2] = (uint8_t)(dict >> 8);
        props[3] = (uint8_t)(dict >> 16);
        props[4] = (uint8_t)(dict >> 24);
        lzma_filter f[2] = {{.id = LZMA_FILTER_LZMA1}, {.id = LZMA_VLI_UNKNOWN}};
        if (lzma_properties_decode(&f[0], NULL, props, sizeof props) != LZMA_OK)
            return 0;
        rc = lzma_raw_decoder(&z, f);
        free(f[0].options);
        d += 6;
        len -= 6;
    }
    if (rc != LZMA_OK)
        return 0;
    z.next_in = d;
    z.avail_in = len;
    z.next_out = out;
    z.avail_out = cap;
    do
        rc = lzma_code(&z, LZMA_FINISH);
    while (rc == LZMA_OK && z.avail_out > 0);
    size_t got = cap - z.avail_out;
    lzma_end(&z);
    return got;
}

/*
 * A level whose bytes start with an xz, lzma or lzip stream (libarchive
 * would bid on): its kind in *lz, and MX_ARCH_LIMIT when the stream's first
 * dictionary is larger than cap, or when it decompresses to another such
 * stream. The walk then enables that one filter alone, so that none of the
 * three ever runs where this check did not see its header: behind another
 * filter (x.xz.gz) the stream is that filter's raw member, checked one
 * level deeper; what the stream holds is read the same way (a gzip in an
 * xz is its raw member); and the same filter again, which libarchive would
 * chain (an xz in an xz), is what the head decoded here rules out.
 */
static unsigned lz_check(const uint8_t *d, size_t len, uint64_t cap, int *lz)
{
    uint32_t dict = 0;
    uint64_t mem;
    if (len >= 6 && memcmp(d, xz_magic, 6) == 0) {
        *lz = LZ_XZ;
        mem = xz_dict(d, len);
    } else if (lzip_head(d, len, &dict)) {
        *lz = LZ_LZIP;
        mem = dict;
    } else if (lzma_alone(d, len, &dict)) {
        *lz = LZ_LZMA;
        mem = dict;
    } else {
        *lz = LZ_NONE;
        return 0;
    }
    if (mem > cap)
        return MX_ARCH_LIMIT;
    uint8_t head[16];
    size_t hl = lz_head(d, len, *lz, cap, head, sizeof head);
    if ((hl >= 6 && memcmp(head, xz_magic, 6) == 0) || lzip_head(head, hl, &dict) ||
        lzma_alone(head, hl, &dict))
        return MX_ARCH_LIMIT;
    return 0;
}

static bool lz_filter(int code)
{
    return code == ARCHIVE_FILTER_XZ || code == ARCHIVE_FILTER_LZMA || code == ARCHIVE_FILTER_LZIP;
}

/* Are all zip local headers that end at pos (the data libarchive is about
 * to read) encrypted? Then libarchive asks for a passphrase before it
 * decodes anything. There can be more than one (a header inside another's
 * extra field): libarchive read one of them, so all must be. */
static bool zip_all_encrypted(const uint8_t *d, size_t pos)
{
    unsigned found = 0;
    size_t lo = pos > 30 + 2 * 65535 ? pos - 30 - 2 * 65535 : 0;
    for (size_t lh = pos >= 30 ? pos - 30 + 1 : 0; lh-- > lo;) {
        const uint8_t *h = d + lh;
        if (h[0] != 'P' || h[1] != 'K' || h[2] != 3 || h[3] != 4 ||
            lh + 30 + le16(h + 26) + le16(h + 28) != pos)
            continue;
        if (!(le16(h + 6) & 1))
            return false;
        found++;
    }
    return found > 0;
}

/* The same for RAR 2.9 file headers (type 0x74, header CRC right): are all
 * of those ending at pos stored (method 0x30)? libarchive 3.6.2 decodes an
 * encrypted entry's data as it is (it flags the entry, reads on). */
static bool rar_all_plain(const uint8_t *d, size_t pos)
{
    unsigned found = 0;
    size_t lo = pos > 65535 ? pos - 65535 : 0;
    for (size_t s = pos >= 32 ? pos - 32 + 1 : 0; s-- > lo;) {
        const uint8_t *h = d + s;
        if (h[2] != 0x74 || s + le16(h + 5) != pos ||
            (lzma_crc32(h + 2, le16(h + 5) - 2, 0) & 0xffff) != le16(h))
            continue;
        if (h[25] != 0x30)
            return false;
        found++;
    }
    return found > 0;
}

/*
 * A zip or RAR 2.9 entry, after libarchive read its header and before it
 * reads its data: MX_ARCH_LIMIT when the data starts by declaring more
 * decoder memory than cap, or when the entry is packed with a method that
 * declares it and its data is not in d (a zip or rar behind a compression
 * filter). libarchive's position in its input after a zip or rar header is
 * where the entry's data starts (the streaming and the seeking zip reader,
 * self-extracting or not); libarchive names a zip entry's method in the
 * format name ("ZIP 6.3 (ppmd-1)"), from the low byte of the local
 * header's method field as it decodes it. RAR 2.9 data starts with a block
 * header: bit 7 PPMd, bit 5 a new model whose size in MiB - 1 is the next
 * byte (libarchive 3.6.2 reads no solid RAR, so every entry starts so).
 */
static unsigned entry_check(struct archive *a, struct archive_entry *e, const uint8_t *d,
                            size_t len, uint64_t cap)
{
    int fmt = archive_format(a) & ARCHIVE_FORMAT_BASE_MASK;
    if (fmt != ARCHIVE_FORMAT_ZIP && archive_format(a) != ARCHIVE_FORMAT_RAR)
        return 0;
    int m = 0;
    if (fmt == ARCHIVE_FORMAT_ZIP) {
        const char *fn = archive_format_name(a);
        const char *paren = fn ? strrchr(fn, '(') : NULL;
        if (!paren)
            return 0;
        if (strcmp(paren, "(ppmd-1)") == 0)
            m = 98;
        else if (strcmp(paren, "(lzma)") == 0)
            m = 14;
        else if (strcmp(paren, "(xz)") == 0)
            m = 95;
        else
            return 0;
    }
    if (archive_filter_count(a) > 1)
        return MX_ARCH_LIMIT;
    la_int64_t at = archive_filter_bytes(a, 0);
    if (at < 0 || (uint64_t)at > len)
        return MX_ARCH_LIMIT;
    size_t pos = (size_t)at, n = len - pos;
    const uint8_t *p = d + pos;
    uint64_t mem = 0;
    if (m == 98 && n >= 2) {
        /* order - 1 in bits 0-3, MiB - 1 in 4-11, restore method in
         * 12-15; libarchive refuses order 1 and restore > 2 first */
        unsigned v = le16(p);
        if ((v & 15) != 0 && v >> 12 <= 2)
            mem = (uint64_t)(((v >> 4) & 0xff) + 1) << 20;
    } else if (m == 14 && n >= 9 && p[2] == 5 && p[3] == 0) {
        mem = sz_le32(p + 5); /* version, properties size 5, properties */
    } else if (m == 95) {
        mem = xz_dict(p, n);
    } else if (m == 0 && n >= 2 && (p[0] & 0xa0) == 0xa0 && (p[0] & 0x1f) != 0) {
        mem = (uint64_t)(p[1] + 1) << 20;
    }
    if (mem <= cap)
        return 0;
    if (m == 0)
        return rar_all_plain(d, pos) ? 0 : MX_ARCH_LIMIT;
    return archive_entry_is_encrypted(e) && zip_all_encrypted(d, pos) ? 0 : MX_ARCH_LIMIT;
}

/*
 * Decompression filters that would run another program. libarchive reads
 * lrzip, lzop (Debian's build has no liblzo) and grzip only by starting
 * `lrzip -d`, `lzop -d` or `grzip -d`, and gzip, bzip2, lz4 and zstd the
 * same way where it was built without their library: a hostile attachment
 * would make the SMTP worker fork a decompressor whose memory and CPU no
 * limit of the walk covers, wherever such a program is installed. So the
 * first three are never enabled, and the others only where registering
 * them on a probe answers ARCHIVE_OK (ARCHIVE_WARN: "using external
 * program"). Data in those formats is then no archive (not walked).
 */
enum { INPROC_GZIP = 1, INPROC_BZIP2 = 2, INPROC_LZ4 = 4, INPROC_ZSTD = 8 };
static pthread_once_t inproc_once = PTHREAD_ONCE_INIT;
static unsigned inproc_mask;

static void inproc_probe(void)
{
    static const struct {
        int (*reg)(struct archive *);
        unsigned bit;
    } f[] = {{archive_read_support_filter_gzip, INPROC_GZIP},
             {archive_read_support_filter_bzip2, INPROC_BZIP2},
             {archive_read_support_filter_lz4, INPROC_LZ4},
             {archive_read_support_filter_zstd, INPROC_ZSTD}};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
        struct archive *a = archive_read_new();
        if (a && f[i].reg(a) == ARCHIVE_OK)
            inproc_mask |= f[i].bit;
        archive_read_free(a);
    }
}

static unsigned inproc_filters(void)
{
    pthread_once(&inproc_once, inproc_probe);
    return inproc_mask;
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
 * pre: MX_ARCH_LIMIT when its data must not be read at all (entry_check()):
 * it is reported without a head, and libarchive skips its data without
 * decoding it (zip and rar entries are skipped by their packed size, or
 * for a streamed zip by looking for the next signature).
 */
static unsigned one_member(struct walk *w, struct archive *a, struct archive_entry *e,
                           const char *path, const char *name, unsigned level, bool *fatal,
                           unsigned pre)
{
    const struct mx_archive_limits *lim = w->lim;
    unsigned mf = (archive_entry_is_encrypted(e) ? MX_ARCH_ENCRYPTED : 0) | pre;
    uint8_t head[MX_ARCHIVE_HEAD];
    size_t hl = 0;
    uint8_t *whole = NULL;
    size_t wl = 0;
    char child[MX_ARCHIVE_PATH];
    join_path(child, path, name);

    /* rc 2: not read */
    int rc = pre ? 2 : read_data(w, a, head, sizeof head, &hl);
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
    /* a 7z is read only where its header was checked: at the start */
    bool is7z = len >= 6 && memcmp(data, SZ_SIG, 6) == 0;
    unsigned zf = is7z ? sz_check(data, len, lim) : 0;
    if (zf)
        return flags | zf;
    /* and an xz, lzma or lzip stream likewise */
    int lz;
    zf = lz_check(data, len, mem_cap(lim), &lz);
    if (zf)
        return flags | zf;
    struct archive *a = archive_read_new();
    if (!a)
        return flags | MX_ARCH_LIMIT;
    /*
     * archive_read_support_filter_all() less xz, lzma and lzip, or, where
     * lz_check() saw one of those at the start, that one alone (see
     * lz_check()).
     */
    if (lz == LZ_XZ) {
        archive_read_support_filter_xz(a);
    } else if (lz == LZ_LZMA) {
        archive_read_support_filter_lzma(a);
    } else if (lz == LZ_LZIP) {
        archive_read_support_filter_lzip(a);
    } else {
        archive_read_support_filter_compress(a);
        archive_read_support_filter_uu(a);
        archive_read_support_filter_rpm(a);
        /* the library-backed ones only where the library is linked in (see
         * inproc_filters()); lrzip, lzop and grzip never */
        unsigned in = inproc_filters();
        if (in & INPROC_GZIP)
            archive_read_support_filter_gzip(a);
        if (in & INPROC_BZIP2)
            archive_read_support_filter_bzip2(a);
        if (in & INPROC_LZ4)
            archive_read_support_filter_lz4(a);
        if (in & INPROC_ZSTD)
            archive_read_support_filter_zstd(a);
    }
    /*
     * archive_read_support_format_all() less three, and 7z only when
     * checked above. mtree, xar and iso9660 read their whole directory in
     * the first archive_read_next_header(), before any limit here applies,
     * and are reached only through a wrong name or behind a compression
     * filter (no signature of theirs makes an attachment an archive): main's
     * walk took 3.4 GB and 11 s on a 466 KB gzip of mtree lines, 0.9 GB and
     * 3.8 s on a 297 KB xar; mtree also opens the files its lines name, on
     * this machine. Such data is the raw member of its filter now.
     */
    archive_read_support_format_ar(a);
    archive_read_support_format_cpio(a);
    archive_read_support_format_empty(a);
    archive_read_support_format_lha(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_warc(a);
    if (is7z)
        archive_read_support_format_7zip(a);
    archive_read_support_format_cab(a);
    archive_read_support_format_rar(a);
    archive_read_support_format_rar5(a);
    archive_read_support_format_zip(a);
    archive_read_support_format_raw(a);
    if (archive_read_open_memory(a, data, len) != ARCHIVE_OK) {
        archive_read_free(a);
        return flags | MX_ARCH_CORRUPT;
    }
    if (lz) {
        /* a second one in the chain after all: its header was not
         * checked (libarchive has allocated its dictionary while it
         * identified the format): not read */
        int nlz = 0;
        for (int i = 0; i < archive_filter_count(a); i++)
            nlz += lz_filter(archive_filter_code(a, i));
        if (nlz > 1) {
            archive_read_free(a);
            return flags | MX_ARCH_LIMIT;
        }
    }
    unsigned errors = 0;
    bool first = true, fatal = false;
    while (!w->stop && !fatal) {
        if (w->members >= lim->max_members || over_time(w)) {
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
        flags |= one_member(w, a, e, path, name, level, &fatal,
                            entry_check(a, e, data, len, mem_cap(lim)));
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
    struct walk w = {.lim = lim, .cb = cb, .ud = ud, .cpu0 = mx_cpu_ns()};
    unsigned flags;
    if (lim->max_depth == 0 || len > lim->max_bytes)
        flags = MX_ARCH_ARCHIVE | MX_ARCH_LIMIT;
    else
        flags = walk_level(&w, data, len, name && *name ? name : "attachment", 1);
    if (use) {
        use->total = w.total;
        use->members = w.members;
        use->cpu_ns = mx_cpu_ns() - w.cpu0;
    }
    return flags;
}
