/*
 * checks_internal.h - asynchronous DNS-based checks (DNSBL on the client
 * address, URIBL on the sender's domains and on the domains of the
 * message's body URIs, unknown sender domain) and
 * recipient verification (static list or SMTP callout with a per-worker
 * cache), internal to smtp/. smtpd.c calls them from its session callbacks;
 * an answer that needs the network comes back later through the answer
 * function given at mx_smtp_checks_conn_new() (MX_SMTPD_PENDING in between).
 */
#ifndef MX_SMTP_CHECKS_INTERNAL_H
#define MX_SMTP_CHECKS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "smtp/smtpd_internal.h"

struct mx_config;
struct mx_worker;
struct mx_cidr;
struct mx_checks;
struct mx_checks_conn;

/** One DNS list as configured: "ZONE[=A.B.C.D] reject|score=N". */
struct mx_checks_list {
    char zone[200];
    bool has_match;   /**< only this returned address counts as listed */
    uint8_t match[4];
    bool reject;      /**< listed → 554 5.7.1 */
    double score;     /**< else added up against dnsbl.threshold */
};

/**
 * Parse one list entry.
 * @return 0, or -EINVAL with a reason in err.
 */
int mx_smtp_checks_parse_list(const char *spec, struct mx_checks_list *out, char *err,
                              size_t errlen);

/**
 * The DNSBL query name for an address: "2.0.0.127.ZONE" for IPv4,
 * 32 nibbles reversed for IPv6 (IPv4-mapped IPv6 as IPv4).
 * @return 0, -EAFNOSUPPORT, or -ENAMETOOLONG.
 */
int mx_smtp_checks_query_name(const struct sockaddr *sa, const char *zone, char *out,
                              size_t outlen);

/** What mx_smtp_checks_uri_name() found. */
enum mx_checks_uri_kind {
    MX_URI_DOMAIN = 1, /**< out holds the registered domain */
    MX_URI_IP,         /**< out holds the address reversed ("4.3.2.1", IPv6 nibbles) */
};

/**
 * The name a URIBL lists a body URI under. The host of http://, https://,
 * ftp://, scheme-relative //host and www.host links (user info and port
 * dropped, %XX decoded, lower-cased) and the domain of mailto: addresses,
 * reduced to its registered domain: the last two labels, or the last three
 * when the last two are a common two-level public suffix (co.uk, com.au,
 * co.jp, ...: a fixed list in checks.c). A host whose last label is numeric
 * is an IPv4 address as browsers read it (inet_aton: 3232235777, 0x7f.1), a
 * bracketed one IPv6; both come back reversed as DNSBLs name addresses.
 *
 * @param uri     NUL-terminated URI as the scanner extracted it.
 * @param out     receives the name, without the list zone.
 * @param outlen  its size (MX_DNS_NAME_MAX is enough).
 * @return MX_URI_DOMAIN or MX_URI_IP, or -ENOENT when the URI has no host a
 *         list can hold (relative link, other scheme, single label, a bare
 *         public suffix, characters outside [a-z0-9_-.] such as raw IDN).
 */
int mx_smtp_checks_uri_name(const char *uri, char *out, size_t outlen);

/** A URIBL score list that listed a domain of the message's body URIs. */
struct mx_checks_uri_hit {
    char rule[80];    /**< "URIBL_" + the zone upper-cased, other characters '_' */
    char domain[256]; /**< the first name it listed */
    const char *zone;
    double score;     /**< the list's score=N, added once per message */
};

/**
 * The "logical IP": the first external hop in the Received headers of a
 * message header block (newest first), skipping hops in trusted networks.
 * Reads at most len bytes; only the header block (up to the first empty
 * line) is looked at.
 * @param trusted  ordered CIDR list (mx_config trusted_networks), may be empty
 * @param out      receives the address (sa_family AF_INET or AF_INET6)
 * @return 0 when found, -ENOENT when no Received header names an external hop.
 */
int mx_smtp_checks_received_ip(const uint8_t *hdr, size_t len, const struct mx_cidr *trusted,
                               size_t n_trusted, struct sockaddr_storage *out);

/**
 * Compile the checks of a configuration (list syntax checked here).
 * @return 0 (*out may be NULL when nothing is configured), -EINVAL with a
 *         log line saying which entry, -ENOMEM.
 */
int mx_smtp_checks_new(const struct mx_config *cfg, struct mx_checks **out);

/** Free what mx_smtp_checks_new() made. NULL is accepted. */
void mx_smtp_checks_free(struct mx_checks *ck);

/** How a late answer reaches the session owner (smtpd.c). */
typedef void (*mx_checks_answer_fn)(void *ud, const struct mx_smtpd_reply *r);

/**
 * Start the checks of one connection on worker w: the DNSBL queries on the
 * client address start now (trusted clients are not looked up).
 * @return the connection's state, or NULL when ck is NULL (no checks) or
 *         out of memory (then no checks run for it).
 */
struct mx_checks_conn *mx_smtp_checks_conn_new(struct mx_checks *ck, struct mx_worker *w,
                                               const struct sockaddr *client, const char *sid,
                                               mx_checks_answer_fn answer, void *ud);

/**
 * The connection is gone. Safe while queries are in flight: their answers
 * are dropped and the state freed with the last of them. NULL is accepted.
 */
void mx_smtp_checks_conn_free(struct mx_checks_conn *cc);

/**
 * Checks at MAIL FROM: DNSBL verdict on the client, URIBL on the sender's
 * and HELO domains, unknown sender domain. Fills r now, or sets
 * MX_SMTPD_PENDING and answers later through the answer function.
 */
void mx_smtp_checks_mail(struct mx_checks_conn *cc, const struct mx_envelope *env,
                         struct mx_smtpd_reply *r);

/**
 * Recipient verification at RCPT TO (static list or callout, cached per
 * worker). Fills r now, or sets MX_SMTPD_PENDING and answers later.
 */
void mx_smtp_checks_rcpt(struct mx_checks_conn *cc, const struct mx_rcpt *rcpt,
                         struct mx_smtpd_reply *r);

/**
 * Message bytes as they arrive (dot-unstuffed): the header block is kept
 * (bounded) for the logical IP check when logical_ip is on.
 */
void mx_smtp_checks_data(struct mx_checks_conn *cc, const uint8_t *buf, size_t len);

/** The i-th URI of the message, or NULL past the last (mx_scan_msg_uri()). */
typedef const char *(*mx_checks_uri_fn)(void *ctx, unsigned i);

/**
 * End of data: the "logical IP" (first external hop in the Received
 * headers, trusted networks skipped) against the DNSBLs, and the body URIs'
 * names (mx_smtp_checks_uri_name()) against the URIBLs, deduplicated, at
 * most uribl.max_queries queries (untrusted clients only). Leaves r alone
 * (nothing to check), or sets MX_SMTPD_PENDING and answers later through
 * the answer function: code 0, 554 5.7.1 (logical IP listed) or 550 5.7.1
 * "Message rejected; URI domain D listed at ZONE" (a reject URIBL). The
 * caller bounds the URIBL wait with mx_smtp_checks_data_timeout().
 *
 * @param uri_at   the message's URIs (NULL: none, e.g. no scan engine).
 * @param uri_ctx  passed to uri_at.
 */
void mx_smtp_checks_data_end(struct mx_checks_conn *cc, mx_checks_uri_fn uri_at, void *uri_ctx,
                             struct mx_smtpd_reply *r);

/** True while the end of data waits for URIBL answers (arm uribl.timeout). */
bool mx_smtp_checks_uribl_pending(const struct mx_checks_conn *cc);

/**
 * The URIBL time budget of the message is spent: the answers still out
 * count as "not listed" (logged) and are dropped when they come. Answers
 * the session now through the answer function unless the logical IP is
 * still pending. No effect when nothing is pending.
 */
void mx_smtp_checks_data_timeout(struct mx_checks_conn *cc);

/**
 * The score URIBLs that listed a body URI domain of the last message
 * (valid after its end-of-data answer until the next end of data).
 * @return the number of hits; *hits points at them (NULL with cc NULL).
 */
size_t mx_smtp_checks_uri_hits(const struct mx_checks_conn *cc,
                               const struct mx_checks_uri_hit **hits);

/* mx_smtp_checks_cache_clear() is public: smtp/smtp.h */

#endif
