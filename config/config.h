/*
 * config.h - mxgate configuration: one UCL file compiled into an immutable
 * snapshot (struct mx_config). Key names follow docs/CONFIG.md.
 *
 * Ownership: a snapshot is built by mx_config_load() and never modified after;
 * workers read it without locks. Reload builds a new one and swaps it in.
 */
#ifndef MX_CONFIG_H
#define MX_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/** One host:port listen or destination address, resolved numerically. */
struct mx_sockaddr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[80]; /**< as written, e.g. "[::1]:2525" */
};

/** Settings of one recipient domain or address that override the global policy. */
struct mx_policy_scope {
    char *scope;           /**< lower-case "example.test" or "user@example.test" */
    double spam_threshold; /**< < 0: inherit */
    char *spam_action;     /**< NULL: inherit (same for the next two) */
    char *banned_action;
    char *dlp_action;
    int av;                    /**< anti-virus scan: 1 on, 0 off, -1 inherit */
    long quarantine_retention; /**< seconds (0 = keep); < 0: inherit */
    char *redirect_to;         /**< target of the "redirect" action; NULL: inherit */
    char *bcc;                 /**< copy to this address; "" = none; NULL: inherit */
    char *bcc_when;            /**< "always", "spam", "clean"; NULL: inherit */
    char **attachment_allow;   /**< attachment rules that do not count here */
    size_t n_attachment_allow;
    bool has_attachment_allow; /**< false: inherit */
};

/** Effective policy for one recipient (user over domain over global). */
struct mx_policy_effective {
    double spam_threshold;
    const char *spam_action, *banned_action, *dlp_action;
    bool av;                       /**< wants the anti-virus scan (global: true) */
    unsigned quarantine_retention; /**< seconds, 0 = keep forever */
    const char *redirect_to;       /**< "" = none */
    const char *bcc;               /**< "" = none */
    const char *bcc_when;          /**< "always", "spam" or "clean" */
    char *const *attachment_allow; /**< attachment rules exempted for this recipient */
    size_t n_attachment_allow;
};

/** A CIDR entry of an ordered list; negated entries exclude. */
struct mx_cidr {
    int family; /**< AF_INET or AF_INET6 */
    uint8_t addr[16];
    uint8_t prefix;
    bool negate;
};

enum mx_route_scheme {
    MX_ROUTE_SMTP = 1, /**< smtp:host:port[,host:port...] fail-over list */
    MX_ROUTE_MAILDIR,  /**< maildir:DIR, local delivery */
    MX_ROUTE_MX,       /**< mx: MX lookup of the recipient domain */
};

struct mx_route {
    char *domain; /**< lower-case recipient domain, or "*" */
    enum mx_route_scheme scheme;
    struct mx_sockaddr *hosts; /**< MX_ROUTE_SMTP: fail-over order */
    size_t n_hosts;
    char *maildir; /**< MX_ROUTE_MAILDIR */
};

struct mx_config {
    char *path; /**< file it was loaded from, or NULL */

    /* listen */
    struct mx_sockaddr *listen_smtp;
    size_t n_listen_smtp;

    /* dataplane */
    char *dp_backend; /**< "kernel" or "dpdk" */
    unsigned dp_workers;
    char *dp_eal;
    char *dp_address; /**< dpdk: "10.0.0.2/24" */
    char *dp_gateway;
    /** Seeded fault injection on the dpdk port, both directions; off when all 0. */
    struct mx_impair {
        double drop;      /**< percent of frames dropped */
        double reorder;   /**< percent held back behind the next frame */
        double duplicate; /**< percent sent twice */
        unsigned delay_ms; /**< added one-way delay */
        uint64_t seed;
    } dp_impair;

    /* dns: resolver for MX routes and DNS lists (c-ares); empty = /etc/resolv.conf */
    struct mx_sockaddr *dns_servers;
    size_t n_dns_servers;
    unsigned dns_timeout_ms; /**< per try, default 2000 */
    unsigned dns_tries;      /**< default 2 */

    /* spool */
    char *spool_dir;

    /* control */
    char *control_socket;
    char *control_http;

    /* smtp */
    char *smtp_hostname;
    uint64_t smtp_max_message_size;
    uint64_t smtp_max_message_total;
    unsigned smtp_max_recipients;
    unsigned smtp_max_line_length;   /**< command line limit, RFC 5321 4.5.3.1.4: 512 */
    unsigned smtp_max_errors;        /**< errors before 421 and close */
    unsigned smtp_max_received;      /**< Received headers above which a message loops */
    unsigned smtp_max_commands;      /**< commands per session before 421 */
    unsigned smtp_timeout_command;   /**< seconds, RFC 5321 4.5.3.2.7: 300 */
    unsigned smtp_timeout_data;      /**< seconds between data chunks: 180 */
    unsigned smtp_greeting_delay_ms; /**< pregreet window; 0 = off */
    bool smtp_pregreet_reject;       /**< reject clients that talk first */
    char *smtp_bare_lf;              /**< "reject" (default) or "normalize" */
    char *smtp_tls_cert;
    char *smtp_tls_key;

    /* routing and relay */
    struct mx_route *routes;
    size_t n_routes;
    char **relay_domains;
    size_t n_relay_domains;
    struct mx_cidr *trusted_networks;
    size_t n_trusted_networks;

    /* queue */
    unsigned queue_retry_first;  /**< seconds, default 300 */
    unsigned queue_retry_max;    /**< seconds, default 3600 */
    unsigned queue_max_lifetime; /**< seconds, default 5 days */
    unsigned queue_dest_concurrency;
    unsigned queue_dest_fail_ttl;  /**< seconds a failed destination is skipped; 0 = off */
    unsigned queue_delay_warning;  /**< seconds before a delay DSN (NOTIFY=DELAY); 0 = off */
    unsigned queue_compact_after;  /**< deferred this long → moved to the deferred store */

    /* scan */
    char **scan_rules;
    size_t n_scan_rules;
    bool scan_clamav_enabled;
    char *scan_clamav_database;
    char *scan_clamav_on_infected;    /**< "reject" (default, 554 at end of data) or "quarantine" */
    char *scan_clamav_on_unscannable; /**< "deliver" (default, tagged), "reject", "quarantine", "tempfail" */
    double scan_spam_threshold;
    uint64_t scan_archive_max_bytes;   /**< largest archive attachment opened; default 4 MiB */
    unsigned scan_archive_max_depth;   /**< archive levels opened; default 3 */
    unsigned scan_archive_max_members; /**< members listed per attachment; default 1000 */
    uint64_t scan_archive_max_total;   /**< decompressed bytes per attachment; default 64 MiB */
    uint64_t scan_archive_max_message_total;   /**< the same, all archive attachments of a
                                                *   message together; default 256 MiB */
    unsigned scan_archive_max_message_members; /**< members per message; default 4000 */
    unsigned scan_archive_max_message_cpu_ms;  /**< CPU time of a message's archive walks;
                                                *   default 2000 ms */

    /* DNS checks and recipient verification (smtp/checks.c) */
    char **dnsbl_lists;       /**< "ZONE[=A.B.C.D] reject|score=N", in order */
    size_t n_dnsbl_lists;
    double dnsbl_threshold;   /**< summed scores at or above this reject; default 5 */
    char **uribl_lists;       /**< same syntax: MAIL FROM/HELO domains, body URI domains */
    size_t n_uribl_lists;
    unsigned uribl_max_queries; /**< body URIs: DNS queries per message (names x lists); 0 = off */
    unsigned uribl_timeout_ms;  /**< body URIs: time budget per message, default 3000 */
    char *sender_domain_check; /**< "off" (default) or "reject" */
    bool logical_ip;          /**< DNSBL-check the first external Received hop at end of data */
    char **rv_static_domains; /**< recipient_verification.static_domains */
    size_t n_rv_static_domains;
    char **rv_users;          /**< recipient_verification.users: known addresses */
    size_t n_rv_users;
    char **rv_callout_domains; /**< recipient_verification.callout_domains */
    size_t n_rv_callout_domains;
    unsigned rv_positive_expire;  /**< seconds, default 31 days */
    unsigned rv_positive_refresh; /**< seconds, default 7 days */
    unsigned rv_negative_expire;  /**< seconds, default 3 days */
    unsigned rv_negative_refresh; /**< seconds, default 3 hours */
    unsigned rv_cache_size;       /**< entries per worker, default 10000 */
    unsigned rv_timeout;          /**< callout timeout, seconds, default 30 */

    /* policy: sender allow/block lists and the spam action (docs/CONFIG.md) */
    char *policy_subaddress_sep;      /**< "+" (default) or "" (off) */
    bool policy_allow_over_block;     /**< allow wins when one level has both */
    char **policy_allow;              /**< "PATTERN" or "SCOPE: PATTERN" */
    size_t n_policy_allow;
    char **policy_block;
    size_t n_policy_block;
    char *policy_spam_action;         /**< "tag" (default), "reject", "quarantine", "discard",
                                           "redirect" */
    char *policy_spam_subject_tag;    /**< prefix for spam subjects, "" = none */
    char *policy_banned_action;       /**< attachment rule hit: default "reject" */
    char *policy_dlp_action;          /**< dlp rule hit: default "quarantine" */
    char **policy_attachment_allow;   /**< attachment rule names that do not ban */
    size_t n_policy_attachment_allow;
    char *policy_redirect_to;         /**< target of the "redirect" action, "" = none */
    char *policy_bcc;                 /**< copy of each message to this address, "" = none */
    char *policy_bcc_when;            /**< "always" (default), "spam", "clean" */
    unsigned policy_quarantine_retention; /**< seconds, default 30 days */
    struct mx_policy *policy;         /**< the lists compiled at load */
    struct mx_policy_scope *policy_domains; /**< policy.domains { "d" { ... } } */
    size_t n_policy_domains;
    struct mx_policy_scope *policy_users;   /**< policy.users { "u@d" { ... } } */
    size_t n_policy_users;

    /* helo checks */
    bool helo_reject_defaults;        /**< refuse mx_policy_helo_defaults names */
    char **helo_block;                /**< further patterns (* ? #) */
    size_t n_helo_block;

    /* client limits (0 = off); trusted_networks are exempt */
    unsigned limit_conn_per_ip;       /**< connections at once per address */
    unsigned limit_conn_per_net;      /**< ... per /24 (IPv4) or /64 (IPv6) */
    unsigned limit_conn_rate_per_ip;  /**< new connections per minute per address */
    unsigned limit_msgs_per_ip;       /**< messages per hour per address */
    unsigned limit_sender_msgs;       /**< outbound (trusted clients): messages per hour per sender */
    unsigned limit_sender_rcpts;      /**< outbound: recipients per hour per sender */
};

/** One problem found while loading: file:line and a reason. */
struct mx_config_error {
    char file[256];
    unsigned line;
    char msg[256];
};

struct mx_config_errors {
    struct mx_config_error *v;
    size_t n;
};

/**
 * Load and validate a configuration file.
 *
 * @param path       UCL file; NULL gives the built-in defaults.
 * @param overrides  "key.path=value" strings applied after the file (-o).
 * @param n_over     number of overrides.
 * @param out        receives the new snapshot on success.
 * @param errs       receives every error found (may be NULL); free with
 *                   mx_config_errors_free().
 * @return 0, or -EINVAL when any error was found (*out untouched),
 *         -ENOMEM, or -errno when the file cannot be read.
 */
int mx_config_load(const char *path, const char *const *overrides, size_t n_over,
                   struct mx_config **out, struct mx_config_errors *errs);

/** mx_config_load_mem() flag: refuse `.include` (fuzzing, untrusted text). */
#define MX_CONFIG_NO_INCLUDE 0x1u

/**
 * Load and validate a configuration held in memory, as mx_config_load() does
 * for a file.
 *
 * @param name       file name used in error messages and as the base of
 *                   relative `.include` paths.
 * @param text       UCL text (need not be NUL-terminated).
 * @param len        its length in bytes.
 * @param overrides  "key.path=value" strings applied after the text.
 * @param n_over     number of overrides.
 * @param flags      0 or MX_CONFIG_NO_INCLUDE.
 * @param out        receives the new snapshot on success.
 * @param errs       receives every error found (may be NULL).
 * @return 0, -EINVAL when any error was found, or -ENOMEM.
 */
int mx_config_load_mem(const char *name, const char *text, size_t len,
                       const char *const *overrides, size_t n_over, unsigned flags,
                       struct mx_config **out, struct mx_config_errors *errs);

/** Free a snapshot. NULL is accepted. */
void mx_config_free(struct mx_config *cfg);

/** Free the error list filled by mx_config_load(). */
void mx_config_errors_free(struct mx_config_errors *errs);

/**
 * Find the route for a recipient domain (case-insensitive), falling back to
 * "*". Returns NULL when neither exists.
 */
const struct mx_route *mx_config_route(const struct mx_config *cfg, const char *domain);

/** True if domain is a relay domain (inbound accepted from anyone). */
bool mx_config_is_relay_domain(const struct mx_config *cfg, const char *domain);

/**
 * The policy settings for one recipient: its user entry, else its domain's,
 * else the global ones, per setting (sub-addressing resolved first).
 */
void mx_config_policy_for(const struct mx_config *cfg, const char *rcpt,
                          struct mx_policy_effective *out);

/** Trusted-networks lookup: ordered, negations exclude, first match wins. */
bool mx_config_is_trusted(const struct mx_config *cfg, const struct sockaddr *sa);

/**
 * Write the complete effective configuration as UCL text.
 * Returns a malloc'd NUL-terminated string, or NULL on allocation failure.
 */
char *mx_config_export(const struct mx_config *cfg);

/** Parse "host:port" / "[v6]:port" into a mx_sockaddr. Returns 0 or -EINVAL. */
int mx_config_parse_hostport(const char *text, struct mx_sockaddr *out);

/** Parse "a.b.c.d/n", "v6/n" or with a leading "!" into a mx_cidr. 0 or -EINVAL. */
int mx_config_parse_cidr(const char *text, struct mx_cidr *out);

/* ------------------------------------------------------------------------
 * Policy layer (config/policy.c): allow/block lists at global, domain and user
 * level, sub-address resolution, HELO checks and rate/concurrency accounting.
 * A struct mx_policy is built once (off the workers) and then only read.
 * ------------------------------------------------------------------------ */

/** Which list an entry belongs to. */
enum mx_policy_list {
    MX_POLICY_ALLOW = 1,
    MX_POLICY_BLOCK,
};

/** Outcome of a sender check. */
enum mx_policy_verdict {
    MX_POLICY_NONE = 0,  /**< no list matched */
    MX_POLICY_ALLOWED,   /**< an allow entry decided */
    MX_POLICY_BLOCKED,   /**< a block entry decided: never deliver */
};

/** Level a list entry was declared at; the most specific level that matches wins. */
enum mx_policy_level {
    MX_POLICY_GLOBAL = 0,
    MX_POLICY_DOMAIN,
    MX_POLICY_USER,
};

struct mx_policy;

/** Result of mx_policy_check_sender(): what decided, for logs and history. */
struct mx_policy_result {
    enum mx_policy_verdict verdict;
    enum mx_policy_level level; /**< level of the deciding entry */
    const char *scope;          /**< "" (global), the domain, or user@domain */
    const char *pattern;        /**< the entry that decided, as written */
};

/**
 * Create an empty policy.
 * @param subaddress_sep  sub-address separator ('+' for user+tag@domain), or 0
 *                        to disable sub-address resolution.
 * @param allow_over_block when one level has both an allow and a block match,
 *                        allow wins (default false: block wins).
 * @return 0 or -ENOMEM.
 */
int mx_policy_new(char subaddress_sep, bool allow_over_block, struct mx_policy **out);

/** Free a policy. NULL is accepted. */
void mx_policy_free(struct mx_policy *p);

/**
 * Add one list entry.
 * @param scope    "" or NULL for global, "example.test" for a recipient domain,
 *                 "user@example.test" for one recipient (its +tag is stripped).
 * @param list     MX_POLICY_ALLOW or MX_POLICY_BLOCK.
 * @param pattern  sender address "a@b.test", sender domain "b.test" or
 *                 "@b.test", wildcard ("*@*.spam.test", "*.spam.test"; `*`
 *                 and `?`), or client address/CIDR ("192.0.2.0/24", "2001:db8::1").
 * @return 0, -EINVAL for a malformed scope or pattern, -ENOMEM.
 */
int mx_policy_add(struct mx_policy *p, const char *scope, enum mx_policy_list list,
                  const char *pattern);

/**
 * Decide a sender for one recipient: the user's lists first, then the
 * recipient domain's, then the global lists; the first level with a match
 * decides (block over allow within a level unless allow_over_block).
 * Sender and recipient are resolved through sub-addressing first.
 *
 * @param rcpt    recipient address (user@domain).
 * @param sender  envelope sender ("" for the null reverse-path).
 * @param client  connecting client, or NULL.
 * @param res     receives the verdict and what decided it.
 * @return 0, or -EINVAL when rcpt is not an address.
 */
int mx_policy_check_sender(const struct mx_policy *p, const char *rcpt, const char *sender,
                           const struct sockaddr *client, struct mx_policy_result *res);

/**
 * Resolve sub-addressing and case: "User+tag@Example.TEST" -> "user@example.test"
 * with sep '+' (sep 0 only lowercases). The whole address is lowercased: list
 * matching is case-insensitive.
 * @return 0, -EINVAL (no '@' / empty part), -ENOSPC (out too small).
 */
int mx_policy_resolve_address(const char *addr, char sep, char *out, size_t outlen);

/** The default HELO host blocklist, NULL-terminated. */
extern const char *const mx_policy_helo_defaults[];

/**
 * Match a HELO/EHLO argument against host patterns (case-insensitive):
 * `*` any run of characters, `?` one character, `#` a run of one or more
 * digits (so "#.#.#.#" is a bare IPv4 address).
 * @return index of the first matching pattern, or -1.
 */
int mx_policy_helo_match(const char *helo, const char *const *patterns, size_t n);

/* Rate and concurrency accounting, one table per worker (no locks). */
struct mx_ratelimit;

/** Key of a client for limits: its address, or its /24 (IPv4) or /64 (IPv6)
 *  network when `network` is true. IPv4-mapped IPv6 counts as IPv4.
 *  @return key length written to key[17], or -EINVAL. */
int mx_ratelimit_client_key(const struct sockaddr *sa, bool network, uint8_t key[17]);

/**
 * Create a table of at most `capacity` keys counting events over a sliding
 * window of `window_ms` (two fixed half-windows, interpolated).
 * @return 0, -EINVAL, -ENOMEM.
 */
int mx_ratelimit_new(size_t capacity, uint32_t window_ms, struct mx_ratelimit **out);

/** Free a table. NULL is accepted. */
void mx_ratelimit_free(struct mx_ratelimit *rl);

/**
 * Count `n` events for key at time now_ms against `limit` per window.
 * Over the limit, nothing is counted.
 * @param count  receives the (estimated) count in the window, this hit included
 *               when accepted; may be NULL.
 * @return 0 (within the limit), -EAGAIN (over: answer 421/451), -ENOSPC (the
 *         table is full of live keys: caller decides, typically tempfail),
 *         -EINVAL.
 */
int mx_ratelimit_hit(struct mx_ratelimit *rl, const uint8_t *key, size_t keylen, uint64_t now_ms,
                     uint32_t n, uint32_t limit, uint32_t *count);

/**
 * Concurrency: take one slot for key if fewer than `limit` are held.
 * @return 0, -EAGAIN (at the limit), -ENOSPC, -EINVAL.
 */
int mx_ratelimit_acquire(struct mx_ratelimit *rl, const uint8_t *key, size_t keylen,
                         uint32_t limit);

/** Give back a slot taken by mx_ratelimit_acquire(). */
void mx_ratelimit_release(struct mx_ratelimit *rl, const uint8_t *key, size_t keylen);

#endif
