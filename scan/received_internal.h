/*
 * received_internal.h - SpamAssassin's relay metadata from the Received chain.
 *
 * SpamAssassin parses every Received header into a relay record
 * (Mail::SpamAssassin::Message::Metadata::Received) and offers the records
 * to header rules as the pseudo headers X-Spam-Relays-Trusted, -Untrusted,
 * -Internal and -External ("[ ip=... rdns=... helo=... by=... ident=...
 * envfrom=... intl=0|1 id=... auth=... msa=0 ]", joined by one space).
 * scan/received.c ports that parser (its regular expressions run in PCRE2)
 * and the trust inference SpamAssassin applies when trusted_networks is not
 * configured: a relay with a private IP or with authentication stays trusted
 * and internal, the first one that is neither ends both chains.
 */
#ifndef MX_SCAN_RECEIVED_INTERNAL_H
#define MX_SCAN_RECEIVED_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

/* bounds: the header block is attacker-controlled */
#define MX_RCVD_MAX_LINE 2048     /* bytes of one Received value parsed (the rest ignored) */
#define MX_RCVD_MAX_RELAYS 64     /* Received values parsed per message (the rest ignored) */
#define MX_RCVD_FIELD 512         /* bytes kept of one field (ip, rdns, helo, ...) */
#define MX_RCVD_MATCH_LIMIT 50000 /* PCRE2 match limit per regex call */

/** One parsed relay. */
struct mx_relay {
    char ip[MX_RCVD_FIELD], rdns[MX_RCVD_FIELD], helo[MX_RCVD_FIELD], by[MX_RCVD_FIELD];
    char ident[MX_RCVD_FIELD], envfrom[MX_RCVD_FIELD], id[MX_RCVD_FIELD], auth[MX_RCVD_FIELD];
    bool ip_private;
    bool internal; /* set by mx_relays_build */
};

enum mx_rcvd_rc {
    MX_RCVD_SKIP = 0,        /* not a relay (local handover, "by" only, ...): SA returns 0 */
    MX_RCVD_RELAY = 1,       /* *out filled */
    MX_RCVD_UNPARSEABLE = 2, /* SA returns undef */
    MX_RCVD_FETCHER = 3,     /* a POP3/IMAP fetcher handover (SA's found_pop_fetcher_sig) */
};

/**
 * Parse one Received value (folded or not, without the field name) like
 * SpamAssassin's parse_received_line. `qms_envfrom` (MX_RCVD_FIELD bytes,
 * may be NULL) receives the envelope sender of a qmail-scanner line, which
 * SpamAssassin hands to the next relay; it is set to "" otherwise.
 */
enum mx_rcvd_rc mx_received_parse_line(const char *v, size_t n, struct mx_relay *out,
                                       char *qms_envfrom);

/** make_relay_as_string (with the final intl= value); returns the length written. */
size_t mx_relay_as_string(const struct mx_relay *r, char *out, size_t cap);

/** The four pseudo header values of a message. */
struct mx_relays {
    struct mx_relay *r; /* parsed relays, in header order */
    size_t n;
    bool trusted[MX_RCVD_MAX_RELAYS]; /* per relay (internal: r[i].internal) */
    bool dropped[MX_RCVD_MAX_RELAYS]; /* removed from Trusted/Internal/External */
    size_t unparseable;
    /* SA's last_trusted_relay_index / last_internal_relay_index: the index
     * of the last line (Received values, then originating-IP lines; -1: none)
     * in the trusted / internal part, relays or not */
    long last_trusted, last_internal;
};

/** One header field of the message (name without the colon, raw value). */
struct mx_rcvd_hdr {
    const char *name, *v;
    size_t nl, vl;
};

/**
 * Parse the Received values (top first, as in the header block), append the
 * first address of SpamAssassin's stock originating_ip_headers
 * (X-Originating-IP...) as SpamAssassin does, and infer trust. `h`: the
 * message's header fields in order. `rel->r` must hold MX_RCVD_MAX_RELAYS
 * records.
 */
void mx_relays_build(struct mx_relays *rel, const struct mx_rcvd_hdr *h, size_t nh);

enum mx_relays_which {
    MX_RELAYS_TRUSTED,
    MX_RELAYS_UNTRUSTED,
    MX_RELAYS_INTERNAL,
    MX_RELAYS_EXTERNAL,
};

/** The X-Spam-Relays-<which> string (no line end); returns its length (truncated to cap-1). */
size_t mx_relays_string(const struct mx_relays *rel, enum mx_relays_which which, char *out,
                        size_t cap);

/**
 * The pseudo headers ALL-TRUSTED, ALL-INTERNAL, ALL-UNTRUSTED, ALL-EXTERNAL
 * (case-sensitive, as in SA) are the header lines in a range of Received
 * indexes (SA's get_all_hdrs_in_rcvd_index_range): a line belongs when the
 * number of Received headers up to and including it, minus one, is in
 * [*start, *end), or is *end (the Received header at index *end and nothing
 * after it). Returns false for other names.
 */
bool mx_relays_all_range(const struct mx_relays *rel, const char *name, long *start, long *end);

/** "X-Spam-Relays-Trusted" ... -> which; false for other names (case-insensitive, as SA). */
bool mx_relays_name(const char *name, enum mx_relays_which *which);

#endif
