/*
 * corpus.h - the message corpus mxbench sends: loaded once into memory,
 * already in SMTP wire form (CRLF line ends, dot-stuffed, ending in the
 * "." line), so the load loop only copies pointers.
 *
 * A corpus is a folder of files (one message each, e.g. *.eml), a Maildir
 * (cur/ and new/), or a single mbox file.
 */
#ifndef MX_PERF_CORPUS_H
#define MX_PERF_CORPUS_H

#include <stddef.h>
#include <stdint.h>

/** One message in wire form. */
struct mx_bench_msg {
    char *wire;        /**< CRLF, dot-stuffed, ends with ".\r\n"; Message-ID header removed */
    size_t wire_len;   /**< bytes in wire */
    size_t raw_len;    /**< size of the message as stored (for SIZE= and MB/s) */
    char *message_id;  /**< the corpus's own Message-ID value ("<...>"), or NULL */
};

/** A loaded corpus. */
struct mx_bench_corpus {
    struct mx_bench_msg *msgs;
    size_t n;
    size_t bytes; /**< sum of raw_len */
};

/**
 * Convert one message (any of LF, CRLF or CR line ends) to SMTP wire form:
 * every line end becomes CRLF, a line starting with '.' gets one more '.',
 * a final line end is added if missing, then the ".\r\n" terminator. When
 * strip_msgid is set the Message-ID header (with its folded continuation
 * lines) is left out of the output and its value returned in *msgid.
 *
 * @param raw, len     the message as stored
 * @param strip_msgid  remove the Message-ID header from the wire form
 * @param out          filled on success; free with mx_bench_msg_free()
 * @return 0, or -ENOMEM
 */
int mx_bench_msg_from_raw(const char *raw, size_t len, int strip_msgid, struct mx_bench_msg *out);

/** Free what mx_bench_msg_from_raw() allocated. */
void mx_bench_msg_free(struct mx_bench_msg *m);

/**
 * Load a corpus from path: a Maildir (has cur/ or new/), a folder of
 * message files (every regular file not starting with '.', sorted by name),
 * or an mbox file (split at "From " lines; ">From " unescaped once).
 *
 * @param path         folder or mbox file
 * @param strip_msgid  see mx_bench_msg_from_raw()
 * @param limit        load at most this many messages (0 = all)
 * @param c            filled on success; free with mx_bench_corpus_free()
 * @return 0, -ENOENT if no message was found, or another -errno
 */
int mx_bench_corpus_load(const char *path, int strip_msgid, size_t limit,
                         struct mx_bench_corpus *c);

/** Free a corpus. */
void mx_bench_corpus_free(struct mx_bench_corpus *c);

/**
 * Write a reproducible synthetic corpus: count messages named
 * 000001.eml ... into dir (created if missing). Same seed, same bytes.
 * Mix: plain text, HTML, multipart/alternative, attachments (PDF-, ZIP-
 * and PNG-like bytes, base64), Japanese text in ISO-2022-JP; sizes
 * 2 KB to 2 MB; every Message-ID unique.
 *
 * @return 0 or -errno
 */
int mx_bench_corpus_generate(uint64_t seed, unsigned count, const char *dir);

#endif
