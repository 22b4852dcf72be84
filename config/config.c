/*
 * config.c - turns a UCL file (plus -o overrides) into a validated, immutable
 * struct mx_config, and back into UCL text (export).
 *
 * Validation is table-driven: every key the product knows is one row of
 * `keys[]` (dotted path, kind, destination field, range). The loader walks
 * the parsed tree once, converting each value it recognises and recording an
 * error with file:line for everything else, so `mxgate --check` can print
 * every problem of a file in one run instead of one per edit.
 *
 * Lookups used on the SMTP path (routes, relay domains, trusted networks) are
 * plain scans of small arrays: they are read-only after load, so workers share
 * them without locks.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <unistd.h>

#include "config/config.h"
#include "config/ucl_internal.h"

/* Stop collecting after this many errors: a binary file is not worth more. */
#define MAX_ERRORS 200

enum kind {
    K_SECTION,
    K_STRING,    /* any string */
    K_PATH,      /* non-empty string */
    K_SOCKPATH,  /* unix socket path, "" disables */
    K_ENUM,      /* one of choices */
    K_HOSTNAME,  /* DNS name */
    K_UINT,      /* unsigned in [min, max] */
    K_U64,       /* uint64_t in [min, max] */
    K_SECONDS,   /* whole seconds; time suffixes accepted */
    K_MSEC,      /* seconds with ms resolution, stored as ms */
    K_BOOL,
    K_DOUBLE,
    K_LISTEN,    /* host:port list */
    K_HOSTPORT,  /* one host:port string, "" disables */
    K_IFADDR,    /* "a.b.c.d/n" or "" */
    K_IPADDR,    /* "a.b.c.d" / IPv6 or "" */
    K_STR_LIST,
    K_RULE_NAMES, /* list of rule names (letters, digits, _) */
    K_DOMAIN_LIST,
    K_CIDR_LIST,
    K_ROUTES,
    K_SCOPES, /* policy.domains / policy.users: object of per-scope settings */
};

struct key {
    const char *path;
    enum kind kind;
    size_t off;   /* field in struct mx_config */
    size_t off_n; /* count field of lists */
    uint64_t min, max;
    const char *choices; /* K_ENUM: "a|b" */
};

#define F(field) offsetof(struct mx_config, field)
#define NONE 0, 0, 0, 0, NULL

static const struct key keys[] = {
    {"listen", K_SECTION, NONE},
    {"listen.smtp", K_LISTEN, F(listen_smtp), F(n_listen_smtp), 1, 0, NULL},
    {"dataplane", K_SECTION, NONE},
    {"dataplane.backend", K_ENUM, F(dp_backend), 0, 0, 0, "kernel|dpdk"},
    {"dataplane.workers", K_UINT, F(dp_workers), 0, 1, 128, NULL},
    {"dataplane.eal", K_STRING, F(dp_eal), 0, 0, 0, NULL},
    {"dataplane.address", K_IFADDR, F(dp_address), 0, 0, 0, NULL},
    {"dataplane.gateway", K_IPADDR, F(dp_gateway), 0, 0, 0, NULL},
    {"dataplane.impair", K_SECTION, NONE},
    {"dataplane.impair.drop", K_DOUBLE, F(dp_impair.drop), 0, 0, 100, NULL},
    {"dataplane.impair.reorder", K_DOUBLE, F(dp_impair.reorder), 0, 0, 100, NULL},
    {"dataplane.impair.duplicate", K_DOUBLE, F(dp_impair.duplicate), 0, 0, 100, NULL},
    {"dataplane.impair.delay_ms", K_UINT, F(dp_impair.delay_ms), 0, 0, 10000, NULL},
    {"dataplane.impair.seed", K_U64, F(dp_impair.seed), 0, 0, UINT64_MAX, NULL},
    {"dns", K_SECTION, NONE},
    {"dns.servers", K_LISTEN, F(dns_servers), F(n_dns_servers), 0, 0, NULL},
    {"dns.timeout", K_MSEC, F(dns_timeout_ms), 0, 100, 60000, NULL},
    {"dns.tries", K_UINT, F(dns_tries), 0, 1, 10, NULL},
    {"spool", K_SECTION, NONE},
    {"spool.dir", K_PATH, F(spool_dir), 0, 0, 0, NULL},
    {"control", K_SECTION, NONE},
    {"control.socket", K_SOCKPATH, F(control_socket), 0, 0, 0, NULL},
    {"control.http", K_HOSTPORT, F(control_http), 0, 0, 0, NULL},
    {"smtp", K_SECTION, NONE},
    {"smtp.hostname", K_HOSTNAME, F(smtp_hostname), 0, 0, 0, NULL},
    {"smtp.max_message_size", K_U64, F(smtp_max_message_size), 0, 1, 1ull << 40, NULL},
    {"smtp.max_message_total", K_U64, F(smtp_max_message_total), 0, 1, 1ull << 50, NULL},
    {"smtp.max_recipients", K_UINT, F(smtp_max_recipients), 0, 1, 100000, NULL},
    {"smtp.max_line_length", K_UINT, F(smtp_max_line_length), 0, 512, 65536, NULL},
    {"smtp.max_errors", K_UINT, F(smtp_max_errors), 0, 1, 1000, NULL},
    {"smtp.max_received", K_UINT, F(smtp_max_received), 0, 1, 1000, NULL},
    {"smtp.max_commands", K_UINT, F(smtp_max_commands), 0, 1, 1000000, NULL},
    {"smtp.timeout", K_SECTION, NONE},
    {"smtp.timeout.command", K_SECONDS, F(smtp_timeout_command), 0, 1, 86400, NULL},
    {"smtp.timeout.data", K_SECONDS, F(smtp_timeout_data), 0, 1, 86400, NULL},
    {"smtp.greeting_delay", K_MSEC, F(smtp_greeting_delay_ms), 0, 0, 60000, NULL},
    {"smtp.pregreet_reject", K_BOOL, F(smtp_pregreet_reject), 0, 0, 0, NULL},
    {"smtp.bare_lf", K_ENUM, F(smtp_bare_lf), 0, 0, 0, "reject|normalize"},
    {"smtp.tls", K_SECTION, NONE},
    {"smtp.tls.cert", K_STRING, F(smtp_tls_cert), 0, 0, 0, NULL},
    {"smtp.tls.key", K_STRING, F(smtp_tls_key), 0, 0, 0, NULL},
    {"routes", K_ROUTES, F(routes), F(n_routes), 0, 0, NULL},
    {"relay_domains", K_DOMAIN_LIST, F(relay_domains), F(n_relay_domains), 0, 0, NULL},
    {"trusted_networks", K_CIDR_LIST, F(trusted_networks), F(n_trusted_networks), 0, 0, NULL},
    {"queue", K_SECTION, NONE},
    {"queue.retry_first", K_SECONDS, F(queue_retry_first), 0, 1, 7 * 86400, NULL},
    {"queue.retry_max", K_SECONDS, F(queue_retry_max), 0, 1, 7 * 86400, NULL},
    {"queue.max_lifetime", K_SECONDS, F(queue_max_lifetime), 0, 60, 60 * 86400, NULL},
    {"queue.dest_concurrency", K_UINT, F(queue_dest_concurrency), 0, 1, 10000, NULL},
    {"queue.dest_fail_ttl", K_SECONDS, F(queue_dest_fail_ttl), 0, 0, 86400, NULL},
    {"queue.delay_warning", K_SECONDS, F(queue_delay_warning), 0, 0, 60 * 86400, NULL},
    {"queue.compact_after", K_SECONDS, F(queue_compact_after), 0, 60, 60 * 86400, NULL},
    {"scan", K_SECTION, NONE},
    {"scan.rules", K_STR_LIST, F(scan_rules), F(n_scan_rules), 0, 0, NULL},
    {"scan.clamav", K_SECTION, NONE},
    {"scan.clamav.enabled", K_BOOL, F(scan_clamav_enabled), 0, 0, 0, NULL},
    {"scan.clamav.database", K_PATH, F(scan_clamav_database), 0, 0, 0, NULL},
    {"scan.clamav.on_infected", K_ENUM, F(scan_clamav_on_infected), 0, 0, 0, "reject|quarantine"},
    {"scan.clamav.on_unscannable", K_ENUM, F(scan_clamav_on_unscannable), 0, 0, 0,
     "deliver|reject|quarantine|tempfail"},
    {"scan.spam_threshold", K_DOUBLE, F(scan_spam_threshold), 0, 0, 0, NULL},
    {"scan.archive_max_bytes", K_U64, F(scan_archive_max_bytes), 0, 4096, 1ull << 30, NULL},
    {"scan.archive_max_depth", K_UINT, F(scan_archive_max_depth), 0, 1, 16, NULL},
    {"scan.archive_max_members", K_UINT, F(scan_archive_max_members), 0, 1, 1000000, NULL},
    {"scan.archive_max_total", K_U64, F(scan_archive_max_total), 0, 65536, 1ull << 36, NULL},
    {"scan.archive_max_message_total", K_U64, F(scan_archive_max_message_total), 0, 65536,
     1ull << 38, NULL},
    {"scan.archive_max_message_members", K_UINT, F(scan_archive_max_message_members), 0, 1,
     10000000, NULL},
    {"scan.archive_max_message_cpu", K_MSEC, F(scan_archive_max_message_cpu_ms), 0, 1, 600000,
     NULL},
    /* DNS checks and recipient verification (smtp/checks.c) */
    {"dnsbl", K_SECTION, NONE},
    {"dnsbl.lists", K_STR_LIST, F(dnsbl_lists), F(n_dnsbl_lists), 0, 0, NULL},
    {"dnsbl.threshold", K_DOUBLE, F(dnsbl_threshold), 0, 0, 0, NULL},
    {"uribl", K_SECTION, NONE},
    {"uribl.lists", K_STR_LIST, F(uribl_lists), F(n_uribl_lists), 0, 0, NULL},
    {"uribl.max_queries", K_UINT, F(uribl_max_queries), 0, 0, 1000, NULL},
    {"uribl.timeout", K_MSEC, F(uribl_timeout_ms), 0, 100, 60000, NULL},
    {"sender_domain_check", K_ENUM, F(sender_domain_check), 0, 0, 0, "off|reject"},
    {"logical_ip", K_BOOL, F(logical_ip), 0, 0, 0, NULL},
    {"recipient_verification", K_SECTION, NONE},
    {"recipient_verification.static_domains", K_DOMAIN_LIST, F(rv_static_domains),
     F(n_rv_static_domains), 0, 0, NULL},
    {"recipient_verification.users", K_STR_LIST, F(rv_users), F(n_rv_users), 0, 0, NULL},
    {"recipient_verification.callout_domains", K_DOMAIN_LIST, F(rv_callout_domains),
     F(n_rv_callout_domains), 0, 0, NULL},
    {"recipient_verification.positive_expire", K_SECONDS, F(rv_positive_expire), 0, 1,
     400 * 86400, NULL},
    {"recipient_verification.positive_refresh", K_SECONDS, F(rv_positive_refresh), 0, 1,
     400 * 86400, NULL},
    {"recipient_verification.negative_expire", K_SECONDS, F(rv_negative_expire), 0, 1,
     400 * 86400, NULL},
    {"recipient_verification.negative_refresh", K_SECONDS, F(rv_negative_refresh), 0, 1,
     400 * 86400, NULL},
    {"recipient_verification.cache_size", K_UINT, F(rv_cache_size), 0, 16, 10000000, NULL},
    {"recipient_verification.timeout", K_SECONDS, F(rv_timeout), 0, 1, 600, NULL},
    {"policy", K_SECTION, NONE},
    {"policy.subaddress_separator", K_STRING, F(policy_subaddress_sep), 0, 0, 0, NULL},
    {"policy.allow_over_block", K_BOOL, F(policy_allow_over_block), 0, 0, 0, NULL},
    {"policy.allow", K_STR_LIST, F(policy_allow), F(n_policy_allow), 0, 0, NULL},
    {"policy.block", K_STR_LIST, F(policy_block), F(n_policy_block), 0, 0, NULL},
    {"policy.spam_action", K_ENUM, F(policy_spam_action), 0, 0, 0,
     "tag|reject|quarantine|discard|redirect"},
    {"policy.spam_subject_tag", K_STRING, F(policy_spam_subject_tag), 0, 0, 0, NULL},
    {"policy.domains", K_SCOPES, F(policy_domains), F(n_policy_domains), 0, 0, NULL},
    {"policy.users", K_SCOPES, F(policy_users), F(n_policy_users), 1, 0, NULL},
    {"policy.banned_action", K_ENUM, F(policy_banned_action), 0, 0, 0,
     "tag|reject|quarantine|discard|redirect"},
    {"policy.dlp_action", K_ENUM, F(policy_dlp_action), 0, 0, 0,
     "tag|reject|quarantine|discard|redirect"},
    {"policy.attachment_allow", K_RULE_NAMES, F(policy_attachment_allow),
     F(n_policy_attachment_allow), 0, 0, NULL},
    {"policy.redirect_to", K_STRING, F(policy_redirect_to), 0, 0, 0, NULL},
    {"policy.bcc", K_STRING, F(policy_bcc), 0, 0, 0, NULL},
    {"policy.bcc_when", K_ENUM, F(policy_bcc_when), 0, 0, 0, "always|spam|clean"},
    {"policy.quarantine_retention", K_SECONDS, F(policy_quarantine_retention), 0, 0,
     365 * 86400, NULL},
    {"helo", K_SECTION, NONE},
    {"helo.reject_defaults", K_BOOL, F(helo_reject_defaults), 0, 0, 0, NULL},
    {"helo.block", K_STR_LIST, F(helo_block), F(n_helo_block), 0, 0, NULL},
    {"limits", K_SECTION, NONE},
    {"limits.conn_per_ip", K_UINT, F(limit_conn_per_ip), 0, 0, 1000000, NULL},
    {"limits.conn_per_net", K_UINT, F(limit_conn_per_net), 0, 0, 1000000, NULL},
    {"limits.conn_rate_per_ip", K_UINT, F(limit_conn_rate_per_ip), 0, 0, 1000000, NULL},
    {"limits.msgs_per_ip", K_UINT, F(limit_msgs_per_ip), 0, 0, 100000000, NULL},
    {"limits.sender_msgs_per_hour", K_UINT, F(limit_sender_msgs), 0, 0, 100000000, NULL},
    {"limits.sender_rcpts_per_hour", K_UINT, F(limit_sender_rcpts), 0, 0, 100000000, NULL},
};
#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

struct loader {
    struct mx_ucl_doc doc;
    struct mx_config *cfg;
    struct mx_config_errors *errs;
    size_t n_err;
    bool oom;
    const struct mx_ucl *set[N_KEYS]; /* the value each key was given, if any */
};

/* ---- errors ---- */

__attribute__((format(printf, 4, 5))) static void cerr(struct loader *L, const char *file,
                                                       unsigned line, const char *fmt, ...)
{
    L->n_err++;
    if (!L->errs || L->errs->n > MAX_ERRORS)
        return;
    struct mx_config_error *nv = realloc(L->errs->v, (L->errs->n + 1) * sizeof(*nv));
    if (!nv) {
        L->oom = true;
        return;
    }
    L->errs->v = nv;
    struct mx_config_error *e = &nv[L->errs->n++];
    snprintf(e->file, sizeof(e->file), "%s", file ? file : "");
    e->line = line;
    if (L->errs->n > MAX_ERRORS) {
        snprintf(e->msg, sizeof(e->msg), "too many errors, stopping here");
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
}

#define VERR(L, v, ...) cerr((L), (v)->file, (v)->line, __VA_ARGS__)

void mx_config_errors_free(struct mx_config_errors *errs)
{
    if (!errs)
        return;
    free(errs->v);
    errs->v = NULL;
    errs->n = 0;
}

/* ---- small parsers (public ones first) ---- */

static int parse_port(const char *s, uint16_t *port)
{
    if (!*s || strlen(s) > 5)
        return -EINVAL;
    unsigned v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -EINVAL;
        v = v * 10 + (unsigned)(*p - '0');
    }
    if (v == 0 || v > 65535)
        return -EINVAL;
    *port = (uint16_t)v;
    return 0;
}

/* host:port with a reason for the error message. */
static int hostport_parse(const char *text, struct mx_sockaddr *out, const char **why)
{
    memset(out, 0, sizeof(*out));
    size_t len = strlen(text);
    if (len == 0 || len >= sizeof(out->text)) {
        *why = len ? "too long" : "empty";
        return -EINVAL;
    }
    char host[80];
    const char *port_s;
    if (text[0] == '[') {
        const char *rb = strchr(text, ']');
        if (!rb || rb[1] != ':') {
            *why = "expected [IPv6]:port";
            return -EINVAL;
        }
        size_t hl = (size_t)(rb - text - 1);
        memcpy(host, text + 1, hl);
        host[hl] = '\0';
        port_s = rb + 2;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&out->ss;
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1) {
            *why = "not an IPv6 address";
            return -EINVAL;
        }
        s6->sin6_family = AF_INET6;
        if (parse_port(port_s, &s6->sin6_port) != 0) {
            *why = "port must be 1..65535";
            return -EINVAL;
        }
        s6->sin6_port = htons(s6->sin6_port);
        out->len = sizeof(*s6);
    } else {
        const char *colon = strrchr(text, ':');
        if (!colon) {
            *why = "expected host:port";
            return -EINVAL;
        }
        if (strchr(text, ':') != colon) {
            *why = "IPv6 addresses need brackets, as in [::1]:2525";
            return -EINVAL;
        }
        size_t hl = (size_t)(colon - text);
        memcpy(host, text, hl);
        host[hl] = '\0';
        port_s = colon + 1;
        struct sockaddr_in *s4 = (struct sockaddr_in *)&out->ss;
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1) {
            *why = "host must be a numeric IPv4 address or [IPv6] (no DNS lookups)";
            return -EINVAL;
        }
        s4->sin_family = AF_INET;
        if (parse_port(port_s, &s4->sin_port) != 0) {
            *why = "port must be 1..65535";
            return -EINVAL;
        }
        s4->sin_port = htons(s4->sin_port);
        out->len = sizeof(*s4);
    }
    memcpy(out->text, text, len + 1);
    return 0;
}

int mx_config_parse_hostport(const char *text, struct mx_sockaddr *out)
{
    const char *why;
    return text ? hostport_parse(text, out, &why) : -EINVAL;
}

static int cidr_parse(const char *text, struct mx_cidr *out, const char **why)
{
    memset(out, 0, sizeof(*out));
    if (*text == '!') {
        out->negate = true;
        text++;
    }
    char addr[64];
    const char *slash = strchr(text, '/');
    size_t al = slash ? (size_t)(slash - text) : strlen(text);
    if (al == 0 || al >= sizeof(addr)) {
        *why = "expected address/prefix";
        return -EINVAL;
    }
    memcpy(addr, text, al);
    addr[al] = '\0';
    unsigned maxp;
    if (inet_pton(AF_INET, addr, out->addr) == 1) {
        out->family = AF_INET;
        maxp = 32;
    } else if (inet_pton(AF_INET6, addr, out->addr) == 1) {
        out->family = AF_INET6;
        maxp = 128;
    } else {
        *why = "not an IPv4 or IPv6 address";
        return -EINVAL;
    }
    unsigned prefix = maxp;
    if (slash) {
        const char *p = slash + 1;
        if (!*p || strlen(p) > 3) {
            *why = "bad prefix length";
            return -EINVAL;
        }
        prefix = 0;
        for (; *p; p++) {
            if (*p < '0' || *p > '9') {
                *why = "bad prefix length";
                return -EINVAL;
            }
            prefix = prefix * 10 + (unsigned)(*p - '0');
        }
        if (prefix > maxp) {
            *why = maxp == 32 ? "IPv4 prefix must be 0..32" : "IPv6 prefix must be 0..128";
            return -EINVAL;
        }
    }
    out->prefix = (uint8_t)prefix;
    return 0;
}

int mx_config_parse_cidr(const char *text, struct mx_cidr *out)
{
    const char *why;
    return text ? cidr_parse(text, out, &why) : -EINVAL;
}

/* A DNS name (letters, digits, '-', '_', dot-separated labels of 1..63). */
static bool valid_domain(const char *d)
{
    size_t n = strlen(d);
    if (n == 0 || n > 253 || d[0] == '.' || d[n - 1] == '.')
        return false;
    size_t label = 0;
    for (const char *p = d; *p; p++) {
        if (*p == '.') {
            if (label == 0)
                return false;
            label = 0;
            continue;
        }
        if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '_'))
            return false;
        if (++label > 63)
            return false;
    }
    return true;
}

static char *lower_dup(const char *s)
{
    char *d = strdup(s);
    if (d)
        for (char *p = d; *p; p++)
            *p = (char)tolower((unsigned char)*p);
    return d;
}

/* ---- defaults ---- */

static char *default_hostname(void)
{
    char h[256];
    if (gethostname(h, sizeof(h)) == 0) {
        h[sizeof(h) - 1] = '\0';
        if (valid_domain(h))
            return strdup(h);
    }
    return strdup("mx.example.test");
}

static int set_defaults(struct mx_config *c)
{
    c->listen_smtp = calloc(1, sizeof(*c->listen_smtp));
    if (!c->listen_smtp || mx_config_parse_hostport("127.0.0.1:2525", c->listen_smtp) != 0)
        return -ENOMEM;
    c->n_listen_smtp = 1;
    c->dp_backend = strdup("kernel");
    c->dp_workers = 2;
    c->dp_eal = strdup("");
    c->dp_address = strdup("");
    c->dp_gateway = strdup("");
    c->spool_dir = strdup("var/spool");
    c->control_socket = strdup("var/mxgate.sock");
    c->control_http = strdup("127.0.0.1:9025");
    c->smtp_hostname = default_hostname();
    c->smtp_max_message_size = 52428800;
    c->smtp_max_message_total = 314572800;
    c->smtp_max_recipients = 100;
    c->smtp_max_line_length = 512;
    c->smtp_max_errors = 10;
    c->smtp_max_received = 50;
    c->smtp_max_commands = 1000;
    c->smtp_timeout_command = 300;
    c->smtp_timeout_data = 180;
    c->smtp_greeting_delay_ms = 0;
    c->smtp_pregreet_reject = false;
    c->smtp_bare_lf = strdup("reject");
    c->smtp_tls_cert = strdup("");
    c->smtp_tls_key = strdup("");
    c->trusted_networks = calloc(2, sizeof(*c->trusted_networks));
    if (!c->trusted_networks || mx_config_parse_cidr("127.0.0.0/8", &c->trusted_networks[0]) ||
        mx_config_parse_cidr("::1/128", &c->trusted_networks[1]))
        return -ENOMEM;
    c->n_trusted_networks = 2;
    c->queue_retry_first = 300;
    c->queue_retry_max = 3600;
    c->queue_max_lifetime = 432000;
    c->queue_dest_concurrency = 20;
    c->queue_dest_fail_ttl = 60;
    c->queue_delay_warning = 4 * 3600;
    c->queue_compact_after = 3600;
    c->dns_timeout_ms = 2000;
    c->dns_tries = 2;
    c->dp_impair.seed = 1;
    c->scan_clamav_enabled = false;
    c->scan_clamav_database = strdup("/var/lib/clamav");
    c->scan_clamav_on_infected = strdup("reject");
    c->scan_clamav_on_unscannable = strdup("deliver");
    if (!c->scan_clamav_on_infected || !c->scan_clamav_on_unscannable)
        return -ENOMEM;
    c->scan_spam_threshold = 5.0;
    c->scan_archive_max_bytes = 4u << 20;
    c->scan_archive_max_depth = 3;
    c->scan_archive_max_members = 1000;
    c->scan_archive_max_total = 64u << 20;
    c->scan_archive_max_message_total = 256u << 20;
    c->scan_archive_max_message_members = 4000;
    c->scan_archive_max_message_cpu_ms = 2000;
    /* DNS checks and recipient verification */
    c->dnsbl_threshold = 5.0;
    c->uribl_max_queries = 20;
    c->uribl_timeout_ms = 3000;
    c->rv_positive_expire = 31 * 86400;
    c->rv_positive_refresh = 7 * 86400;
    c->rv_negative_expire = 3 * 86400;
    c->rv_negative_refresh = 3 * 3600;
    c->rv_cache_size = 10000;
    c->rv_timeout = 30;
    c->policy_subaddress_sep = strdup("+");
    c->policy_spam_action = strdup("tag");
    c->policy_spam_subject_tag = strdup("");
    c->policy_banned_action = strdup("reject");
    c->policy_dlp_action = strdup("quarantine");
    c->policy_redirect_to = strdup("");
    c->policy_bcc = strdup("");
    c->policy_bcc_when = strdup("always");
    if (!c->policy_banned_action || !c->policy_dlp_action || !c->policy_redirect_to ||
        !c->policy_bcc || !c->policy_bcc_when)
        return -ENOMEM;
    c->policy_quarantine_retention = 30 * 86400;
    if (!c->policy_subaddress_sep || !c->policy_spam_action || !c->policy_spam_subject_tag)
        return -ENOMEM;
    c->sender_domain_check = strdup("off");
    if (!c->sender_domain_check)
        return -ENOMEM;
    if (!c->dp_backend || !c->dp_eal || !c->dp_address || !c->dp_gateway || !c->spool_dir ||
        !c->control_socket || !c->control_http || !c->smtp_hostname || !c->smtp_bare_lf ||
        !c->smtp_tls_cert || !c->smtp_tls_key || !c->scan_clamav_database)
        return -ENOMEM;
    return 0;
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void free_routes(struct mx_route *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(r[i].domain);
        free(r[i].hosts);
        free(r[i].maildir);
    }
    free(r);
}

static void free_scopes(struct mx_policy_scope *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++) {
        free(v[i].scope);
        free(v[i].spam_action);
        free(v[i].banned_action);
        free(v[i].dlp_action);
        free(v[i].redirect_to);
        free(v[i].bcc);
        free(v[i].bcc_when);
        free_strv(v[i].attachment_allow, v[i].n_attachment_allow);
    }
    free(v);
}

void mx_config_free(struct mx_config *c)
{
    if (!c)
        return;
    free(c->path);
    free(c->listen_smtp);
    free(c->dns_servers);
    free(c->dp_backend);
    free(c->dp_eal);
    free(c->dp_address);
    free(c->dp_gateway);
    free(c->spool_dir);
    free(c->control_socket);
    free(c->control_http);
    free(c->smtp_hostname);
    free(c->smtp_bare_lf);
    free(c->smtp_tls_cert);
    free(c->smtp_tls_key);
    free_routes(c->routes, c->n_routes);
    free_strv(c->relay_domains, c->n_relay_domains);
    free(c->trusted_networks);
    free_strv(c->scan_rules, c->n_scan_rules);
    free(c->scan_clamav_database);
    free(c->scan_clamav_on_infected);
    free(c->scan_clamav_on_unscannable);
    /* DNS checks and recipient verification */
    free_strv(c->dnsbl_lists, c->n_dnsbl_lists);
    free(c->policy_subaddress_sep);
    free_strv(c->policy_allow, c->n_policy_allow);
    free_strv(c->policy_attachment_allow, c->n_policy_attachment_allow);
    free_strv(c->policy_block, c->n_policy_block);
    free(c->policy_spam_action);
    free(c->policy_spam_subject_tag);
    free_scopes(c->policy_domains, c->n_policy_domains);
    free_scopes(c->policy_users, c->n_policy_users);
    free(c->policy_banned_action);
    free(c->policy_dlp_action);
    free(c->policy_redirect_to);
    free(c->policy_bcc);
    free(c->policy_bcc_when);
    mx_policy_free(c->policy);
    free_strv(c->helo_block, c->n_helo_block);
    free_strv(c->uribl_lists, c->n_uribl_lists);
    free(c->sender_domain_check);
    free_strv(c->rv_static_domains, c->n_rv_static_domains);
    free_strv(c->rv_users, c->n_rv_users);
    free_strv(c->rv_callout_domains, c->n_rv_callout_domains);
    free(c);
}

/* ---- "did you mean" ---- */

static unsigned edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return 100;
    unsigned row[64];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (unsigned)j;
    for (size_t i = 1; i <= la; i++) {
        unsigned diag = row[0];
        row[0] = (unsigned)i;
        for (size_t j = 1; j <= lb; j++) {
            unsigned up = row[j];
            unsigned cost = tolower((unsigned char)a[i - 1]) == tolower((unsigned char)b[j - 1])
                                ? 0
                                : 1;
            unsigned best = diag + cost;
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static const char *last_component(const char *path)
{
    const char *dot = strrchr(path, '.');
    return dot ? dot + 1 : path;
}

/* True if path is a direct child of section ("" = top level). */
static bool child_of(const char *path, const char *section)
{
    size_t sl = strlen(section);
    if (sl == 0)
        return strchr(path, '.') == NULL;
    return strncmp(path, section, sl) == 0 && path[sl] == '.' && !strchr(path + sl + 1, '.');
}

/* Build the suggestion text for an unknown key in a section. */
static void suggest(const char *section, const char *key, char *out, size_t outlen)
{
    out[0] = '\0';
    const char *best = NULL;
    unsigned best_d = 100;
    for (size_t i = 0; i < N_KEYS; i++) {
        if (!child_of(keys[i].path, section))
            continue;
        unsigned d = edit_distance(key, last_component(keys[i].path));
        if (d < best_d) {
            best_d = d;
            best = keys[i].path;
        }
    }
    size_t kl = strlen(key);
    unsigned limit = kl <= 3 ? 1 : kl <= 6 ? 2 : 3;
    if (best && best_d <= limit) {
        snprintf(out, outlen, " (did you mean '%s'?)", best);
        return;
    }
    /* right name, wrong section */
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(last_component(keys[i].path), key) == 0) {
            snprintf(out, outlen, " (did you mean '%s'?)", keys[i].path);
            return;
        }
}

/* ---- value conversion ---- */

static const char *article_type(enum mx_ucl_type t)
{
    switch (t) {
    case MX_UCL_INT:
        return "an integer";
    case MX_UCL_ARRAY:
        return "an array";
    case MX_UCL_OBJECT:
        return "an object";
    default:
        return mx_ucl_type_name(t);
    }
}

/* A scalar key must not be an implicit array (the key written twice). */
static bool single(struct loader *L, const char *path, const struct mx_ucl *v)
{
    if (v->type == MX_UCL_ARRAY && v->implicit) {
        const struct mx_ucl *b = v->u.arr.v[1];
        cerr(L, b->file, b->line, "%s is set more than once (first at %s:%u)", path,
             v->u.arr.v[0]->file, v->u.arr.v[0]->line);
        return false;
    }
    return true;
}

static bool want_string(struct loader *L, const char *path, const struct mx_ucl *v)
{
    if (v->type != MX_UCL_STRING) {
        VERR(L, v, "%s: expected a string, got %s", path, article_type(v->type));
        return false;
    }
    return true;
}

static void set_str(struct loader *L, char **dst, const char *s)
{
    char *d = strdup(s);
    if (!d) {
        L->oom = true;
        return;
    }
    free(*dst);
    *dst = d;
}

/* A number that must be a whole value in [min, max]. */
static bool want_uint(struct loader *L, const struct key *k, const struct mx_ucl *v,
                      double scale, bool time_ok, uint64_t *out)
{
    double d;
    if (v->type == MX_UCL_INT) {
        if (v->u.i < 0) {
            VERR(L, v, "%s must be between %llu and %llu (got %lld)", k->path,
                 (unsigned long long)k->min, (unsigned long long)k->max, (long long)v->u.i);
            return false;
        }
        d = (double)v->u.i * scale;
        if (scale == 1.0) {
            uint64_t u = (uint64_t)v->u.i;
            if (u < k->min || u > k->max) {
                VERR(L, v, "%s must be between %llu and %llu (got %llu)", k->path,
                     (unsigned long long)k->min, (unsigned long long)k->max,
                     (unsigned long long)u);
                return false;
            }
            *out = u;
            return true;
        }
    } else if (v->type == MX_UCL_FLOAT || (time_ok && v->type == MX_UCL_TIME)) {
        d = v->u.f * scale;
    } else {
        VERR(L, v, "%s: expected %s, got %s", k->path, time_ok ? "a duration" : "an integer",
             article_type(v->type));
        return false;
    }
    double r = nearbyint(d);
    if (fabs(d - r) > 1e-6 * (fabs(d) > 1 ? fabs(d) : 1)) {
        VERR(L, v, "%s must be a whole number of %s", k->path,
             scale == 1000.0 ? "milliseconds" : time_ok ? "seconds" : "units");
        return false;
    }
    if (!(r >= (double)k->min && r <= (double)k->max)) {
        VERR(L, v, "%s must be between %llu and %llu (got %g)", k->path,
             (unsigned long long)k->min, (unsigned long long)k->max, d);
        return false;
    }
    *out = (uint64_t)r;
    return true;
}

/* Iterate the elements of a list value: a scalar, an array, or an implicit
 * array of either (a list key written several times). */
struct list_iter {
    const struct mx_ucl *v;
    size_t i, j;
};

static const struct mx_ucl *list_next(struct list_iter *it)
{
    const struct mx_ucl *v = it->v;
    if (v->type != MX_UCL_ARRAY)
        return it->i++ == 0 ? v : NULL;
    while (it->i < v->u.arr.n) {
        const struct mx_ucl *e = v->u.arr.v[it->i];
        if (v->implicit && e->type == MX_UCL_ARRAY && !e->implicit) {
            if (it->j < e->u.arr.n)
                return e->u.arr.v[it->j++];
            it->i++;
            it->j = 0;
            continue;
        }
        it->i++;
        return e;
    }
    return NULL;
}

static size_t list_count(const struct mx_ucl *v)
{
    struct list_iter it = {v, 0, 0};
    size_t n = 0;
    while (list_next(&it))
        n++;
    return n;
}

static void apply_listen(struct loader *L, const struct key *k, const struct mx_ucl *v)
{
    size_t n = list_count(v);
    if (n < k->min) {
        VERR(L, v, "%s needs at least one address", k->path);
        return;
    }
    struct mx_sockaddr *a = calloc(n ? n : 1, sizeof(*a));
    if (!a) {
        L->oom = true;
        return;
    }
    struct list_iter it = {v, 0, 0};
    size_t i = 0;
    bool ok = true;
    for (const struct mx_ucl *e; (e = list_next(&it)); i++) {
        const char *why;
        if (!want_string(L, k->path, e))
            ok = false;
        else if (hostport_parse(e->u.str.s, &a[i], &why) != 0) {
            VERR(L, e, "%s: bad address '%s': %s", k->path, e->u.str.s, why);
            ok = false;
        }
    }
    if (!ok) {
        free(a);
        return;
    }
    struct mx_sockaddr **dst = (struct mx_sockaddr **)((char *)L->cfg + k->off);
    free(*dst);
    *dst = a;
    *(size_t *)((char *)L->cfg + k->off_n) = n;
}

/* A rule name as the rule files write it: letters, digits, '_'. */
static bool valid_rule_name(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_')
            return false;
    return true;
}

/*
 * A list of strings (a single string is a list of one): domains (K_DOMAIN_LIST:
 * lower-cased, checked, no duplicates), rule names (K_RULE_NAMES) or other
 * non-empty strings. out and nout are set only when every element is good.
 */
static bool build_str_list(struct loader *L, const char *path, int kind, const struct mx_ucl *v,
                           char ***out, size_t *nout)
{
    size_t n = list_count(v);
    char **a = calloc(n ? n : 1, sizeof(*a));
    if (!a) {
        L->oom = true;
        return false;
    }
    struct list_iter it = {v, 0, 0};
    size_t i = 0;
    bool ok = true;
    for (const struct mx_ucl *e; (e = list_next(&it)); i++) {
        if (!want_string(L, path, e)) {
            ok = false;
            continue;
        }
        if (kind == K_DOMAIN_LIST) {
            a[i] = lower_dup(e->u.str.s);
            if (a[i] && !valid_domain(a[i])) {
                VERR(L, e, "%s: '%s' is not a domain name", path, e->u.str.s);
                ok = false;
            }
            for (size_t j = 0; a[i] && ok && j < i; j++)
                if (a[j] && strcmp(a[j], a[i]) == 0) {
                    VERR(L, e, "%s: '%s' is listed twice", path, e->u.str.s);
                    ok = false;
                }
        } else {
            a[i] = strdup(e->u.str.s);
            if (a[i] && kind == K_RULE_NAMES && !valid_rule_name(a[i])) {
                VERR(L, e, "%s: '%s' is not a rule name (letters, digits, _)", path, a[i]);
                ok = false;
            } else if (a[i] && !a[i][0]) {
                VERR(L, e, "%s: empty string", path);
                ok = false;
            }
        }
        if (!a[i])
            L->oom = true;
    }
    if (!ok || L->oom) {
        free_strv(a, n);
        return false;
    }
    *out = a;
    *nout = n;
    return true;
}

static void apply_str_list(struct loader *L, const struct key *k, const struct mx_ucl *v)
{
    char **a;
    size_t n;
    if (!build_str_list(L, k->path, (int)k->kind, v, &a, &n))
        return;
    char ***dst = (char ***)((char *)L->cfg + k->off);
    size_t *dn = (size_t *)((char *)L->cfg + k->off_n);
    free_strv(*dst, *dn);
    *dst = a;
    *dn = n;
}

static void apply_cidr_list(struct loader *L, const struct key *k, const struct mx_ucl *v)
{
    size_t n = list_count(v);
    struct mx_cidr *a = calloc(n ? n : 1, sizeof(*a));
    if (!a) {
        L->oom = true;
        return;
    }
    struct list_iter it = {v, 0, 0};
    size_t i = 0;
    bool ok = true;
    for (const struct mx_ucl *e; (e = list_next(&it)); i++) {
        const char *why;
        if (!want_string(L, k->path, e))
            ok = false;
        else if (cidr_parse(e->u.str.s, &a[i], &why) != 0) {
            VERR(L, e, "%s: bad CIDR '%s': %s", k->path, e->u.str.s, why);
            ok = false;
        }
    }
    if (!ok) {
        free(a);
        return;
    }
    free(L->cfg->trusted_networks);
    L->cfg->trusted_networks = a;
    L->cfg->n_trusted_networks = n;
}

/* "smtp:h:p[,h:p]", "maildir:DIR" or "mx" into r; 0 or an error message. */
static const char *route_parse(const char *text, struct mx_route *r, char *why, size_t wl)
{
    if (strncmp(text, "smtp:", 5) == 0) {
        const char *p = text + 5;
        size_t n = 1;
        for (const char *q = p; *q; q++)
            n += *q == ',';
        r->scheme = MX_ROUTE_SMTP;
        r->hosts = calloc(n, sizeof(*r->hosts));
        if (!r->hosts)
            return "out of memory";
        while (r->n_hosts < n) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            char one[96];
            const char *reason;
            if (len == 0 || len >= sizeof(one) - 4) {
                snprintf(why, wl, "empty or too long host in '%s'", text);
                return why;
            }
            memcpy(one, p, len);
            one[len] = '\0';
            /* a host without a port means the SMTP port */
            if (hostport_parse(one, &r->hosts[r->n_hosts], &reason) != 0) {
                bool bare = (one[0] == '[' && one[len - 1] == ']') ||
                            (one[0] != '[' && !strchr(one, ':'));
                if (bare)
                    strcat(one, ":25");
                if (!bare || hostport_parse(one, &r->hosts[r->n_hosts], &reason) != 0) {
                    snprintf(why, wl, "bad destination '%.*s': %s", (int)len, p, reason);
                    return why;
                }
            }
            r->n_hosts++;
            p += len + (comma ? 1 : 0);
        }
        return NULL;
    }
    if (strncmp(text, "maildir:", 8) == 0) {
        if (!text[8])
            return "maildir: needs a directory";
        r->scheme = MX_ROUTE_MAILDIR;
        r->maildir = strdup(text + 8);
        return r->maildir ? NULL : "out of memory";
    }
    if (strcmp(text, "mx") == 0 || strcmp(text, "mx:") == 0) {
        r->scheme = MX_ROUTE_MX;
        return NULL;
    }
    if (strncmp(text, "mx:", 3) == 0) {
        /* "mx:PORT": MX lookup, delivery to another port than 25 (tests,
         * submission set-ups). The port rides in hosts[0] (0.0.0.0:PORT),
         * which is all of hosts an MX route uses. */
        char *end;
        unsigned long port = strtoul(text + 3, &end, 10);
        if (*end || port == 0 || port > 65535 || text[3] < '0' || text[3] > '9') {
            snprintf(why, wl, "bad port in '%s' (expected mx or mx:PORT)", text);
            return why;
        }
        r->scheme = MX_ROUTE_MX;
        r->hosts = calloc(1, sizeof(*r->hosts));
        if (!r->hosts)
            return "out of memory";
        struct sockaddr_in *sin = (struct sockaddr_in *)&r->hosts[0].ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        r->hosts[0].len = sizeof(*sin);
        snprintf(r->hosts[0].text, sizeof(r->hosts[0].text), "%lu", port);
        r->n_hosts = 1;
        return NULL;
    }
    const char *colon = strchr(text, ':');
    snprintf(why, wl, "unknown route scheme '%.*s' (expected smtp:, maildir: or mx)",
             colon ? (int)(colon - text) : (int)strlen(text), text);
    return why;
}

static void apply_routes(struct loader *L, const struct key *k, const struct mx_ucl *v)
{
    if (v->type != MX_UCL_OBJECT) {
        VERR(L, v, "%s: expected an object of domain = destination, got %s", k->path,
             article_type(v->type));
        return;
    }
    size_t n = v->u.obj.n;
    struct mx_route *r = calloc(n ? n : 1, sizeof(*r));
    if (!r) {
        L->oom = true;
        return;
    }
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        const struct mx_ucl_pair *p = &v->u.obj.v[i];
        r[i].domain = lower_dup(p->key);
        if (!r[i].domain) {
            L->oom = true;
            break;
        }
        if (strcmp(r[i].domain, "*") != 0 && !valid_domain(r[i].domain)) {
            cerr(L, p->file, p->line, "routes: '%s' is not a domain name or \"*\"", p->key);
            ok = false;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(r[j].domain, r[i].domain) == 0) {
                cerr(L, p->file, p->line, "routes: '%s' has two routes", p->key);
                ok = false;
            }
        char path[300];
        snprintf(path, sizeof(path), "routes.%s", p->key);
        if (!single(L, path, p->val) || !want_string(L, path, p->val)) {
            ok = false;
            continue;
        }
        char why[200];
        const char *bad = route_parse(p->val->u.str.s, &r[i], why, sizeof(why));
        if (bad) {
            VERR(L, p->val, "routes.%s: %s", p->key, bad);
            ok = false;
        }
    }
    if (!ok || L->oom) {
        free_routes(r, n);
        return;
    }
    free_routes(L->cfg->routes, L->cfg->n_routes);
    L->cfg->routes = r;
    L->cfg->n_routes = n;
}


static bool is_action(const char *a)
{
    return strcmp(a, "tag") == 0 || strcmp(a, "reject") == 0 || strcmp(a, "quarantine") == 0 ||
           strcmp(a, "discard") == 0 || strcmp(a, "redirect") == 0;
}

/* A redirect or BCC target: local@domain, printable, no spaces or brackets. */
static bool valid_address(const char *a)
{
    const char *at = strrchr(a, '@');
    if (!at || at == a || !valid_domain(at + 1) || strlen(a) >= 256)
        return false;
    for (const char *p = a; p < at; p++)
        if (*p <= ' ' || *p >= 127 || *p == '<' || *p == '>' || *p == '"' || *p == '\\')
            return false;
    return true;
}

/* One scope's object: spam_threshold, spam_action, banned_action, dlp_action,
 * av, quarantine_retention. */
static bool apply_scope(struct loader *L, const char *path, const struct mx_ucl *v,
                        struct mx_policy_scope *sc)
{
    sc->spam_threshold = -1;
    sc->av = -1;
    sc->quarantine_retention = -1;
    if (v->type != MX_UCL_OBJECT) {
        VERR(L, v, "%s: expected an object of settings, got %s", path, article_type(v->type));
        return false;
    }
    bool ok = true;
    for (size_t i = 0; i < v->u.obj.n; i++) {
        const struct mx_ucl_pair *p = &v->u.obj.v[i];
        char kp[800];
        snprintf(kp, sizeof kp, "%s.%s", path, p->key);
        if (!single(L, kp, p->val)) {
            ok = false;
            continue;
        }
        if (strcmp(p->key, "spam_threshold") == 0) {
            double d = -1;
            if (p->val->type == MX_UCL_INT)
                d = (double)p->val->u.i;
            else if (p->val->type == MX_UCL_FLOAT)
                d = p->val->u.f;
            else {
                VERR(L, p->val, "%s: expected a number, got %s", kp, article_type(p->val->type));
                ok = false;
                continue;
            }
            if (!(d >= 0)) {
                VERR(L, p->val, "%s must not be negative", kp);
                ok = false;
                continue;
            }
            sc->spam_threshold = d;
            continue;
        }
        if (strcmp(p->key, "av") == 0) {
            if (p->val->type != MX_UCL_BOOL) {
                VERR(L, p->val, "%s: expected true or false, got %s", kp,
                     article_type(p->val->type));
                ok = false;
            } else {
                sc->av = p->val->u.b;
            }
            continue;
        }
        if (strcmp(p->key, "quarantine_retention") == 0) {
            /* the range of policy.quarantine_retention */
            const struct key k = {kp, K_SECONDS, 0, 0, 0, 365 * 86400, NULL};
            uint64_t u;
            if (want_uint(L, &k, p->val, 1.0, true, &u))
                sc->quarantine_retention = (long)u;
            else
                ok = false;
            continue;
        }
        if (strcmp(p->key, "attachment_allow") == 0) {
            char **a;
            size_t n;
            if (!build_str_list(L, kp, K_RULE_NAMES, p->val, &a, &n)) {
                ok = false;
                continue;
            }
            free_strv(sc->attachment_allow, sc->n_attachment_allow);
            sc->attachment_allow = a;
            sc->n_attachment_allow = n;
            sc->has_attachment_allow = true;
            continue;
        }
        char **dst = strcmp(p->key, "spam_action") == 0     ? &sc->spam_action
                     : strcmp(p->key, "banned_action") == 0 ? &sc->banned_action
                     : strcmp(p->key, "dlp_action") == 0    ? &sc->dlp_action
                     : strcmp(p->key, "redirect_to") == 0   ? &sc->redirect_to
                     : strcmp(p->key, "bcc") == 0           ? &sc->bcc
                     : strcmp(p->key, "bcc_when") == 0      ? &sc->bcc_when
                                                            : NULL;
        if (!dst) {
            cerr(L, p->file, p->line, "%s: unknown setting (expected spam_threshold, spam_action, "
                 "banned_action, dlp_action, attachment_allow, av, quarantine_retention, "
                 "redirect_to, bcc or bcc_when)", kp);
            ok = false;
            continue;
        }
        if (!want_string(L, kp, p->val)) {
            ok = false;
            continue;
        }
        const char *sv = p->val->u.str.s;
        if (dst == &sc->redirect_to || dst == &sc->bcc) {
            /* "" turns an inherited bcc off */
            if ((*sv || dst == &sc->redirect_to) && !valid_address(sv)) {
                VERR(L, p->val, "%s: '%s' is not an address (user@domain)", kp, sv);
                ok = false;
                continue;
            }
        } else if (dst == &sc->bcc_when) {
            if (strcmp(sv, "always") != 0 && strcmp(sv, "spam") != 0 && strcmp(sv, "clean") != 0) {
                VERR(L, p->val, "%s: '%s' is not one of always/spam/clean", kp, sv);
                ok = false;
                continue;
            }
        } else if (!is_action(sv)) {
            VERR(L, p->val, "%s: '%s' is not one of tag/reject/quarantine/discard/redirect", kp,
                 sv);
            ok = false;
            continue;
        }
        free(*dst);
        if (!(*dst = strdup(p->val->u.str.s)))
            L->oom = true;
    }
    return ok;
}

static void apply_scopes(struct loader *L, const struct key *k, const struct mx_ucl *v)
{
    bool users = k->min == 1;
    if (v->type != MX_UCL_OBJECT) {
        VERR(L, v, "%s: expected an object of %s = { settings }, got %s", k->path,
             users ? "address" : "domain", article_type(v->type));
        return;
    }
    size_t n = v->u.obj.n;
    struct mx_policy_scope *a = calloc(n ? n : 1, sizeof(*a));
    if (!a) {
        L->oom = true;
        return;
    }
    bool ok = true;
    for (size_t i = 0; i < n && !L->oom; i++) {
        const struct mx_ucl_pair *p = &v->u.obj.v[i];
        char low[600];
        char path[700];
        snprintf(path, sizeof path, "%s.%s", k->path, p->key);
        int rc = 0;
        if (users)
            rc = mx_policy_resolve_address(p->key, 0, low, sizeof low);
        else
            snprintf(low, sizeof low, "%s", p->key);
        for (char *q = low; *q; q++)
            *q = (char)(*q >= 'A' && *q <= 'Z' ? *q + 32 : *q);
        if (rc < 0 || (!users && !valid_domain(low))) {
            cerr(L, p->file, p->line, "%s: '%s' is not %s", k->path, p->key,
                 users ? "an address (user@domain)" : "a domain name");
            ok = false;
            continue;
        }
        if (!(a[i].scope = strdup(low))) {
            L->oom = true;
            break;
        }
        if (!apply_scope(L, path, p->val, &a[i]))
            ok = false;
    }
    if (!ok || L->oom) {
        free_scopes(a, n);
        return;
    }
    struct mx_policy_scope **dst = (struct mx_policy_scope **)((char *)L->cfg + k->off);
    size_t *dn = (size_t *)((char *)L->cfg + k->off_n);
    free_scopes(*dst, *dn);
    *dst = a;
    *dn = n;
}

static void apply(struct loader *L, size_t ki, const struct mx_ucl *v)
{
    const struct key *k = &keys[ki];
    void *dst = (char *)L->cfg + k->off;
    L->set[ki] = v;
    if (k->kind == K_LISTEN) {
        apply_listen(L, k, v);
        return;
    }
    if (k->kind == K_STR_LIST || k->kind == K_DOMAIN_LIST || k->kind == K_RULE_NAMES) {
        apply_str_list(L, k, v);
        return;
    }
    if (k->kind == K_CIDR_LIST) {
        apply_cidr_list(L, k, v);
        return;
    }
    if (k->kind == K_ROUTES) {
        apply_routes(L, k, v);
        return;
    }
    if (k->kind == K_SCOPES) {
        apply_scopes(L, k, v);
        return;
    }
    if (!single(L, k->path, v))
        return;
    uint64_t u;
    switch (k->kind) {
    case K_STRING:
    case K_PATH:
    case K_SOCKPATH:
    case K_ENUM:
    case K_HOSTNAME:
    case K_HOSTPORT:
    case K_IFADDR:
    case K_IPADDR: {
        if (!want_string(L, k->path, v))
            return;
        const char *s = v->u.str.s;
        if (k->kind == K_PATH && !*s) {
            VERR(L, v, "%s must not be empty", k->path);
            return;
        }
        if (k->kind == K_SOCKPATH && strlen(s) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
            VERR(L, v, "%s: a unix socket path must be shorter than %zu bytes", k->path,
                 sizeof(((struct sockaddr_un *)0)->sun_path));
            return;
        }
        if (k->kind == K_ENUM) {
            size_t sl = strlen(s);
            bool found = false;
            for (const char *c = k->choices; *c;) {
                const char *bar = strchr(c, '|');
                size_t cl = bar ? (size_t)(bar - c) : strlen(c);
                if (cl == sl && strncmp(c, s, sl) == 0)
                    found = true;
                c += cl + (bar ? 1 : 0);
            }
            if (!found) {
                char alts[64];
                snprintf(alts, sizeof(alts), "%s", k->choices);
                for (char *p = alts; *p; p++)
                    if (*p == '|')
                        *p = '/';
                VERR(L, v, "%s: '%s' is not one of %s", k->path, s, alts);
                return;
            }
        }
        if (k->kind == K_HOSTNAME && !valid_domain(s)) {
            VERR(L, v, "%s: '%s' is not a valid host name", k->path, s);
            return;
        }
        const char *why = NULL;
        struct mx_sockaddr sa;
        struct mx_cidr c;
        if (k->kind == K_HOSTPORT && *s && hostport_parse(s, &sa, &why) != 0) {
            VERR(L, v, "%s: bad address '%s': %s", k->path, s, why);
            return;
        }
        if (k->kind == K_IFADDR && *s &&
            (cidr_parse(s, &c, &why) != 0 || c.negate || !strchr(s, '/') || (why = NULL))) {
            VERR(L, v, "%s: '%s' is not address/prefix%s%s", k->path, s, why ? ": " : "",
                 why ? why : "");
            return;
        }
        if (k->kind == K_IPADDR && *s &&
            (cidr_parse(s, &c, &why) != 0 || c.negate || strchr(s, '/'))) {
            VERR(L, v, "%s: '%s' is not an IP address", k->path, s);
            return;
        }
        set_str(L, (char **)dst, s);
        return;
    }
    case K_UINT:
        if (want_uint(L, k, v, 1.0, false, &u))
            *(unsigned *)dst = (unsigned)u;
        return;
    case K_U64:
        if (want_uint(L, k, v, 1.0, false, &u))
            *(uint64_t *)dst = u;
        return;
    case K_SECONDS:
        if (want_uint(L, k, v, 1.0, true, &u))
            *(unsigned *)dst = (unsigned)u;
        return;
    case K_MSEC:
        if (want_uint(L, k, v, 1000.0, true, &u))
            *(unsigned *)dst = (unsigned)u;
        return;
    case K_BOOL:
        if (v->type != MX_UCL_BOOL)
            VERR(L, v, "%s: expected true or false, got %s", k->path, article_type(v->type));
        else
            *(bool *)dst = v->u.b;
        return;
    case K_DOUBLE:
        if (v->type == MX_UCL_INT)
            *(double *)dst = (double)v->u.i;
        else if (v->type == MX_UCL_FLOAT)
            *(double *)dst = v->u.f;
        else {
            VERR(L, v, "%s: expected a number, got %s", k->path, article_type(v->type));
            return;
        }
        if (k->max && !(*(double *)dst >= (double)k->min && *(double *)dst <= (double)k->max))
            VERR(L, v, "%s: %g is out of range [%llu, %llu]", k->path, *(double *)dst,
                 (unsigned long long)k->min, (unsigned long long)k->max);
        return;
    default:
        return;
    }
}

static ssize_t find_key(const char *path)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(keys[i].path, path) == 0)
            return (ssize_t)i;
    return -1;
}

static void walk(struct loader *L, const struct mx_ucl *obj, const char *section)
{
    for (size_t i = 0; i < obj->u.obj.n && !L->oom; i++) {
        const struct mx_ucl_pair *p = &obj->u.obj.v[i];
        char path[512];
        if (*section)
            snprintf(path, sizeof(path), "%s.%s", section, p->key);
        else
            snprintf(path, sizeof(path), "%s", p->key);
        ssize_t ki = find_key(path);
        if (ki < 0) {
            char hint[300];
            suggest(section, p->key, hint, sizeof(hint));
            cerr(L, p->file, p->line, "unknown key '%s'%s", path, hint);
            continue;
        }
        if (keys[ki].kind == K_SECTION) {
            if (p->val->type != MX_UCL_OBJECT) {
                VERR(L, p->val, "%s: expected a section { ... }, got %s", path,
                     article_type(p->val->type));
                continue;
            }
            walk(L, p->val, path);
            continue;
        }
        apply(L, (size_t)ki, p->val);
    }
}

/* ---- overrides: key.path=value ---- */

/* Give every node of an override value line 0: its "file" is the -o text. */
static void zero_lines(struct mx_ucl *v)
{
    v->line = 0;
    if (v->type == MX_UCL_ARRAY)
        for (size_t i = 0; i < v->u.arr.n; i++)
            zero_lines(v->u.arr.v[i]);
    if (v->type == MX_UCL_OBJECT)
        for (size_t i = 0; i < v->u.obj.n; i++) {
            v->u.obj.v[i].line = 0;
            zero_lines(v->u.obj.v[i].val);
        }
}

static void apply_override(struct loader *L, struct mx_ucl *root, const char *text)
{
    char name[200];
    snprintf(name, sizeof(name), "-o %s", text);
    const char *file = mx_ucl_intern(&L->doc, name);
    if (!file) {
        L->oom = true;
        return;
    }
    /* split the dotted path; "quoted" components may hold dots (domains) */
    char comps[16][256];
    size_t nc = 0, cl = 0;
    const char *p = text;
    bool quoted = false, ok = true;
    for (; *p && (quoted || *p != '='); p++) {
        if (*p == '"') {
            quoted = !quoted;
            continue;
        }
        if (*p == '.' && !quoted) {
            if (cl == 0 || nc + 1 >= 16)
                ok = false;
            if (nc < 16)
                comps[nc][cl < 256 ? cl : 255] = '\0';
            nc++;
            cl = 0;
            continue;
        }
        if (nc < 16 && cl < 255)
            comps[nc][cl] = *p;
        cl++;
    }
    if (*p != '=' || cl == 0 || cl > 255 || nc >= 16 || quoted)
        ok = false;
    else
        comps[nc++][cl] = '\0';
    if (!ok) {
        cerr(L, file, 0, "expected -o key.path=value");
        return;
    }
    struct mx_ucl_err perr = {0};
    struct mx_ucl *val = NULL;
    int rc = mx_ucl_parse_value(&L->doc, file, p + 1, &val, &perr);
    if (rc == -ENOMEM) {
        L->oom = true;
        return;
    }
    if (rc != 0) {
        cerr(L, file, 0, "%s", perr.msg);
        return;
    }
    zero_lines(val);
    struct mx_ucl *obj = root;
    for (size_t i = 0; i + 1 < nc; i++) {
        struct mx_ucl *next = mx_ucl_lookup(obj, comps[i]);
        if (next && next->type != MX_UCL_OBJECT) {
            cerr(L, file, 0, "'%s' is not a section", comps[i]);
            mx_ucl_free(val);
            return;
        }
        if (!next) {
            next = mx_ucl_new(MX_UCL_OBJECT, file, 0);
            if (!next || mx_ucl_insert(obj, comps[i], file, 0, next, false) != 0) {
                L->oom = true;
                mx_ucl_free(val);
                return;
            }
        }
        obj = next;
    }
    if (mx_ucl_insert(obj, comps[nc - 1], file, 0, val, true) != 0)
        L->oom = true;
}

/* ---- checks across keys ---- */

static const char *key_file(struct loader *L, const char *path, unsigned *line)
{
    ssize_t ki = find_key(path);
    const struct mx_ucl *v = ki >= 0 ? L->set[ki] : NULL;
    *line = v ? v->line : 0;
    return v ? v->file : (L->cfg->path ? L->cfg->path : "mxgate");
}

static void cross_checks(struct loader *L)
{
    struct mx_config *c = L->cfg;
    unsigned line;
    const char *file;
    if (!*c->smtp_tls_cert != !*c->smtp_tls_key) {
        const char *which = *c->smtp_tls_cert ? "smtp.tls.cert" : "smtp.tls.key";
        file = key_file(L, which, &line);
        cerr(L, file, line, "smtp.tls: cert and key must be set together (only %s is set)",
             which);
    }
    if (c->smtp_max_message_total < c->smtp_max_message_size) {
        file = key_file(L, "smtp.max_message_total", &line);
        cerr(L, file, line, "smtp.max_message_total (%llu) is below smtp.max_message_size (%llu)",
             (unsigned long long)c->smtp_max_message_total,
             (unsigned long long)c->smtp_max_message_size);
    }
    if (c->queue_retry_first > c->queue_retry_max) {
        file = key_file(L, "queue.retry_first", &line);
        cerr(L, file, line, "queue.retry_first (%u) is above queue.retry_max (%u)",
             c->queue_retry_first, c->queue_retry_max);
    }
    if (c->queue_retry_max > c->queue_max_lifetime) {
        file = key_file(L, "queue.retry_max", &line);
        cerr(L, file, line, "queue.retry_max (%u) is above queue.max_lifetime (%u)",
             c->queue_retry_max, c->queue_max_lifetime);
    }
    if (strcmp(c->dp_backend, "dpdk") != 0 && (*c->dp_address || *c->dp_gateway)) {
        file = key_file(L, *c->dp_address ? "dataplane.address" : "dataplane.gateway", &line);
        cerr(L, file, line, "dataplane.address and dataplane.gateway apply to backend \"dpdk\" only");
    }
}

/* Routes and relay domains get their defaults once the file is read. */
static void derived_defaults(struct loader *L)
{
    struct mx_config *c = L->cfg;
    if (!L->set[find_key("routes")] || c->n_routes == 0) {
        if (c->n_routes == 0) {
            free_routes(c->routes, 0); /* an empty routes { } */
            c->routes = calloc(1, sizeof(*c->routes));
            if (!c->routes || !(c->routes[0].domain = strdup("*")) ||
                !(c->routes[0].maildir = strdup("var/maildir"))) {
                L->oom = true;
                return;
            }
            c->routes[0].scheme = MX_ROUTE_MAILDIR;
            c->n_routes = 1;
        }
    }
    if (!L->set[find_key("relay_domains")]) {
        free_strv(c->relay_domains, c->n_relay_domains);
        c->relay_domains = calloc(c->n_routes ? c->n_routes : 1, sizeof(char *));
        c->n_relay_domains = 0;
        if (!c->relay_domains) {
            L->oom = true;
            return;
        }
        for (size_t i = 0; i < c->n_routes; i++) {
            if (strcmp(c->routes[i].domain, "*") == 0)
                continue;
            if (!(c->relay_domains[c->n_relay_domains++] = strdup(c->routes[i].domain))) {
                L->oom = true;
                return;
            }
        }
    }
}

/*
 * One allow/block entry: "PATTERN" (global) or "SCOPE: PATTERN" where SCOPE
 * is a recipient domain or address. The whole list is compiled into the
 * snapshot's struct mx_policy; a bad entry is reported with its file:line.
 */
static void add_policy_entries(struct loader *L, const char *key, enum mx_policy_list list,
                               char *const *v, size_t n)
{
    const struct mx_ucl *node = L->set[find_key(key)];
    struct list_iter it = {node, 0, 0};
    for (size_t i = 0; i < n && !L->oom; i++) {
        const struct mx_ucl *e = node ? list_next(&it) : NULL;
        const char *file = e ? e->file : "(defaults)";
        unsigned line = e ? e->line : 0;
        char scope[600] = "";
        const char *pat = v[i];
        const char *colon = strstr(v[i], ": ");
        if (colon) {
            size_t sl = (size_t)(colon - v[i]);
            if (sl >= sizeof scope) {
                cerr(L, file, line, "%s: scope of '%s' is too long", key, v[i]);
                continue;
            }
            memcpy(scope, v[i], sl);
            scope[sl] = 0;
            pat = colon + 2;
        }
        int rc = mx_policy_add(L->cfg->policy, scope, list, pat);
        if (rc == -ENOMEM)
            L->oom = true;
        else if (rc < 0)
            cerr(L, file, line, "%s: '%s' is not a sender address, domain, wildcard or CIDR%s",
                 key, v[i], colon ? " (after a recipient domain or address scope)" : "");
    }
}

static const struct mx_policy_scope *find_scope(const struct mx_policy_scope *v, size_t n,
                                                const char *scope);

static bool scope_redirects(const struct mx_policy_scope *sc)
{
    const char *a[] = {sc->spam_action, sc->banned_action, sc->dlp_action};
    for (int i = 0; i < 3; i++)
        if (a[i] && strcmp(a[i], "redirect") == 0)
            return true;
    return false;
}

/*
 * An action "redirect" needs somewhere to send the message: its scope's
 * redirect_to, or (for a user) the domain's, or the global one. Global
 * and per-scope policy.bcc are checked as they are parsed.
 */
static void check_redirects(struct loader *L)
{
    struct mx_config *c = L->cfg;
    unsigned line;
    const char *glob[] = {c->policy_spam_action, c->policy_banned_action, c->policy_dlp_action};
    const char *gkeys[] = {"policy.spam_action", "policy.banned_action", "policy.dlp_action"};
    for (int i = 0; i < 3; i++)
        if (strcmp(glob[i], "redirect") == 0 && !*c->policy_redirect_to) {
            const char *file = key_file(L, gkeys[i], &line);
            cerr(L, file, line, "%s = \"redirect\" needs policy.redirect_to", gkeys[i]);
        }
    if (*c->policy_redirect_to && !valid_address(c->policy_redirect_to)) {
        const char *file = key_file(L, "policy.redirect_to", &line);
        cerr(L, file, line, "policy.redirect_to: '%s' is not an address (user@domain)",
             c->policy_redirect_to);
    }
    if (*c->policy_bcc && !valid_address(c->policy_bcc)) {
        const char *file = key_file(L, "policy.bcc", &line);
        cerr(L, file, line, "policy.bcc: '%s' is not an address (user@domain)", c->policy_bcc);
    }
    if (*c->policy_redirect_to)
        return;
    for (int users = 0; users < 2; users++) {
        const struct mx_policy_scope *v = users ? c->policy_users : c->policy_domains;
        size_t n = users ? c->n_policy_users : c->n_policy_domains;
        for (size_t i = 0; i < n; i++) {
            if (!scope_redirects(&v[i]) || v[i].redirect_to)
                continue;
            const char *at = users ? strrchr(v[i].scope, '@') : NULL;
            const struct mx_policy_scope *d =
                at ? find_scope(c->policy_domains, c->n_policy_domains, at + 1) : NULL;
            if (d && d->redirect_to)
                continue;
            const char *file = key_file(L, users ? "policy.users" : "policy.domains", &line);
            cerr(L, file, line, "policy.%s.%s: action \"redirect\" needs redirect_to (here, %s"
                 "or policy.redirect_to)", users ? "users" : "domains", v[i].scope,
                 users ? "in its domain " : "");
        }
    }
}

static void build_policy(struct loader *L)
{
    struct mx_config *c = L->cfg;
    unsigned line;
    if (strlen(c->policy_subaddress_sep) > 1) {
        const char *file = key_file(L, "policy.subaddress_separator", &line);
        cerr(L, file, line, "policy.subaddress_separator must be one character or \"\"");
        return;
    }
    if (mx_policy_new(c->policy_subaddress_sep[0], c->policy_allow_over_block, &c->policy) < 0) {
        L->oom = true;
        return;
    }
    add_policy_entries(L, "policy.allow", MX_POLICY_ALLOW, c->policy_allow, c->n_policy_allow);
    add_policy_entries(L, "policy.block", MX_POLICY_BLOCK, c->policy_block, c->n_policy_block);
    check_redirects(L);
}

static int load_common(struct loader *L, struct mx_ucl *root, const char *const *overrides,
                       size_t n_over, struct mx_config **out)
{
    for (size_t i = 0; i < n_over && !L->oom; i++)
        apply_override(L, root, overrides[i]);
    if (!L->oom) {
        if (root->type != MX_UCL_OBJECT)
            VERR(L, root, "the configuration must hold keys, not %s", article_type(root->type));
        else
            walk(L, root, "");
    }
    if (!L->oom)
        derived_defaults(L);
    if (!L->oom && L->n_err == 0)
        cross_checks(L);
    if (!L->oom && L->n_err == 0)
        build_policy(L);
    if (L->oom)
        return -ENOMEM;
    if (L->n_err)
        return -EINVAL;
    *out = L->cfg;
    L->cfg = NULL;
    return 0;
}

static int load(const char *path, const char *name, const char *text, size_t len,
                const char *const *overrides, size_t n_over, unsigned flags,
                struct mx_config **out, struct mx_config_errors *errs)
{
    struct loader L = {.errs = errs};
    L.doc.no_include = (flags & MX_CONFIG_NO_INCLUDE) != 0;
    if (errs) {
        errs->v = NULL;
        errs->n = 0;
    }
    L.cfg = calloc(1, sizeof(*L.cfg));
    if (!L.cfg)
        return -ENOMEM;
    int rc = set_defaults(L.cfg);
    if (rc == 0 && (path || name) && !(L.cfg->path = strdup(path ? path : name)))
        rc = -ENOMEM;
    struct mx_ucl *root = NULL;
    if (rc == 0) {
        struct mx_ucl_err perr = {0};
        if (path)
            rc = mx_ucl_parse_file(&L.doc, path, &root, &perr);
        else if (name)
            rc = mx_ucl_parse_mem(&L.doc, name, text, len, &root, &perr);
        else if (!(root = mx_ucl_new(MX_UCL_OBJECT, NULL, 0)))
            rc = -ENOMEM;
        /* a failed read keeps its -errno; its message is in errs too */
        if (rc != 0 && rc != -ENOMEM)
            cerr(&L, perr.file, perr.line, "%s", perr.msg);
    }
    if (rc == 0)
        rc = load_common(&L, root, overrides, n_over, out);
    mx_ucl_free(root);
    mx_ucl_doc_free(&L.doc);
    mx_config_free(L.cfg);
    if (rc == 0 && L.oom)
        rc = -ENOMEM;
    return rc;
}

int mx_config_load(const char *path, const char *const *overrides, size_t n_over,
                   struct mx_config **out, struct mx_config_errors *errs)
{
    return load(path, NULL, NULL, 0, overrides, n_over, 0, out, errs);
}

int mx_config_load_mem(const char *name, const char *text, size_t len,
                       const char *const *overrides, size_t n_over, unsigned flags,
                       struct mx_config **out, struct mx_config_errors *errs)
{
    return load(NULL, name ? name : "(memory)", text, len, overrides, n_over, flags, out, errs);
}

/* ---- lookups ---- */

const struct mx_route *mx_config_route(const struct mx_config *cfg, const char *domain)
{
    const struct mx_route *star = NULL;
    for (size_t i = 0; i < cfg->n_routes; i++) {
        if (domain && strcasecmp(cfg->routes[i].domain, domain) == 0)
            return &cfg->routes[i];
        if (strcmp(cfg->routes[i].domain, "*") == 0)
            star = &cfg->routes[i];
    }
    return star;
}

bool mx_config_is_relay_domain(const struct mx_config *cfg, const char *domain)
{
    if (!domain)
        return false;
    size_t n = strlen(domain);
    /* an absolute name "example.test." is the same domain */
    if (n && domain[n - 1] == '.')
        n--;
    for (size_t i = 0; i < cfg->n_relay_domains; i++)
        if (strlen(cfg->relay_domains[i]) == n &&
            strncasecmp(cfg->relay_domains[i], domain, n) == 0)
            return true;
    return false;
}

static bool prefix_match(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned bytes = bits / 8, rest = bits % 8;
    if (memcmp(a, b, bytes) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

bool mx_config_is_trusted(const struct mx_config *cfg, const struct sockaddr *sa)
{
    if (!sa)
        return false;
    uint8_t addr[16];
    int family;
    if (sa->sa_family == AF_INET) {
        memcpy(addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        family = AF_INET;
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            /* ::ffff:a.b.c.d is the IPv4 client a.b.c.d on a dual-stack socket */
            memcpy(addr, &a6->s6_addr[12], 4);
            family = AF_INET;
        } else {
            memcpy(addr, a6->s6_addr, 16);
            family = AF_INET6;
        }
    } else {
        return false;
    }
    for (size_t i = 0; i < cfg->n_trusted_networks; i++) {
        const struct mx_cidr *c = &cfg->trusted_networks[i];
        if (c->family == family && prefix_match(c->addr, addr, c->prefix))
            return !c->negate;
    }
    return false;
}

/* ---- export ---- */

static void put_quoted(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"':
            fputs("\\\"", f);
            break;
        case '\\':
            fputs("\\\\", f);
            break;
        case '\n':
            fputs("\\n", f);
            break;
        case '\t':
            fputs("\\t", f);
            break;
        case '\r':
            fputs("\\r", f);
            break;
        default:
            if (*p < 0x20 || *p == 0x7f)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
        }
    }
    fputc('"', f);
}

static void put_kv_str(FILE *f, int indent, const char *k, const char *v)
{
    fprintf(f, "%*s%s = ", indent, "", k);
    put_quoted(f, v);
    fputs(";\n", f);
}

/* "    name = [ "a", "b" ];" (the DNS-check and recipient-verification lists) */
/* name = [ "a", "b" ]; with no line end */
static void put_strs(FILE *f, const char *name, char *const *v, size_t n)
{
    fprintf(f, "%s = [", name);
    for (size_t i = 0; i < n; i++) {
        fputs(i ? ", " : " ", f);
        put_quoted(f, v[i]);
    }
    fputs(n ? " ];" : "];", f);
}

static void put_list(FILE *f, const char *name, char *const *v, size_t n)
{
    put_strs(f, name, v, n);
    fputc('\n', f);
}

static void put_double(FILE *f, double d)
{
    char buf[64];
    if (d == nearbyint(d) && fabs(d) < 1e15) {
        snprintf(buf, sizeof(buf), "%.1f", d);
    } else {
        snprintf(buf, sizeof(buf), "%.15g", d);
        if (strtod(buf, NULL) != d)
            snprintf(buf, sizeof(buf), "%.17g", d);
        if (!strpbrk(buf, ".e"))
            strcat(buf, ".0");
    }
    fputs(buf, f);
}

static void put_scopes(FILE *f, const char *name, const struct mx_policy_scope *v, size_t n)
{
    fprintf(f, "    %s {\n", name);
    for (size_t i = 0; i < n; i++) {
        fputs("        ", f);
        put_quoted(f, v[i].scope);
        fputs(" {", f);
        if (v[i].spam_threshold >= 0) {
            fputs(" spam_threshold = ", f);
            put_double(f, v[i].spam_threshold);
            fputs(";", f);
        }
        const char *const names[] = {"spam_action", "banned_action", "dlp_action"};
        const char *const vals[] = {v[i].spam_action, v[i].banned_action, v[i].dlp_action};
        for (int k = 0; k < 3; k++)
            if (vals[k]) {
                fprintf(f, " %s = ", names[k]);
                put_quoted(f, vals[k]);
                fputs(";", f);
            }
        const char *const names2[] = {"redirect_to", "bcc", "bcc_when"};
        const char *const vals2[] = {v[i].redirect_to, v[i].bcc, v[i].bcc_when};
        for (int k = 0; k < 3; k++)
            if (vals2[k]) {
                fprintf(f, " %s = ", names2[k]);
                put_quoted(f, vals2[k]);
                fputs(";", f);
            }
        if (v[i].has_attachment_allow) {
            fputs(" ", f);
            put_strs(f, "attachment_allow", v[i].attachment_allow, v[i].n_attachment_allow);
        }
        if (v[i].av >= 0)
            fprintf(f, " av = %s;", v[i].av ? "true" : "false");
        if (v[i].quarantine_retention >= 0)
            fprintf(f, " quarantine_retention = %lds;", v[i].quarantine_retention);
        fputs(" }\n", f);
    }
    fputs("    }\n", f);
}

static const struct mx_policy_scope *find_scope(const struct mx_policy_scope *v, size_t n,
                                                const char *scope)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].scope, scope) == 0)
            return &v[i];
    return NULL;
}

void mx_config_policy_for(const struct mx_config *cfg, const char *rcpt,
                          struct mx_policy_effective *out)
{
    *out = (struct mx_policy_effective){cfg->scan_spam_threshold,   cfg->policy_spam_action,
                                        cfg->policy_banned_action,  cfg->policy_dlp_action,
                                        true, cfg->policy_quarantine_retention,
                                        cfg->policy_redirect_to,    cfg->policy_bcc,
                                        cfg->policy_bcc_when,       cfg->policy_attachment_allow,
                                        cfg->n_policy_attachment_allow};
    char addr[600];
    if (mx_policy_resolve_address(rcpt, cfg->policy_subaddress_sep[0], addr, sizeof addr) < 0)
        return;
    const char *at = strrchr(addr, '@');
    const struct mx_policy_scope *lv[2] = {
        at ? find_scope(cfg->policy_domains, cfg->n_policy_domains, at + 1) : NULL,
        find_scope(cfg->policy_users, cfg->n_policy_users, addr)};
    for (int i = 0; i < 2; i++) { /* domain, then user: the more specific one wins */
        const struct mx_policy_scope *sc = lv[i];
        if (!sc)
            continue;
        if (sc->spam_threshold >= 0)
            out->spam_threshold = sc->spam_threshold;
        if (sc->spam_action)
            out->spam_action = sc->spam_action;
        if (sc->banned_action)
            out->banned_action = sc->banned_action;
        if (sc->dlp_action)
            out->dlp_action = sc->dlp_action;
        if (sc->av >= 0)
            out->av = sc->av;
        if (sc->redirect_to)
            out->redirect_to = sc->redirect_to;
        if (sc->bcc)
            out->bcc = sc->bcc;
        if (sc->bcc_when)
            out->bcc_when = sc->bcc_when;
        if (sc->has_attachment_allow) {
            out->attachment_allow = sc->attachment_allow;
            out->n_attachment_allow = sc->n_attachment_allow;
        }
        if (sc->quarantine_retention >= 0)
            out->quarantine_retention = (unsigned)sc->quarantine_retention;
    }
}

/* A route back in its "scheme:..." form; malloc'd. */
static char *route_text(const struct mx_route *r)
{
    char *v = NULL;
    size_t vl = 0;
    FILE *m = open_memstream(&v, &vl);
    if (!m)
        return NULL;
    if (r->scheme == MX_ROUTE_SMTP) {
        fputs("smtp:", m);
        for (size_t j = 0; j < r->n_hosts; j++)
            fprintf(m, "%s%s", j ? "," : "", r->hosts[j].text);
    } else if (r->scheme == MX_ROUTE_MAILDIR) {
        fprintf(m, "maildir:%s", r->maildir);
    } else if (r->n_hosts == 1) {
        fprintf(m, "mx:%s", r->hosts[0].text);
    } else {
        fputs("mx", m);
    }
    if (fclose(m) != 0) {
        free(v);
        return NULL;
    }
    return v;
}

static void put_cidr(FILE *f, const struct mx_cidr *c)
{
    char a[INET6_ADDRSTRLEN];
    inet_ntop(c->family, c->addr, a, sizeof(a));
    fprintf(f, "\"%s%s/%u\"", c->negate ? "!" : "", a, c->prefix);
}

char *mx_config_export(const struct mx_config *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    fputs("# mxgate effective configuration (every key, defaults included)\n", f);
    fputs("listen {\n    smtp = [", f);
    for (size_t i = 0; i < c->n_listen_smtp; i++) {
        fputs(i ? ", " : " ", f);
        put_quoted(f, c->listen_smtp[i].text);
    }
    fputs(" ];\n}\n", f);

    fputs("dataplane {\n", f);
    put_kv_str(f, 4, "backend", c->dp_backend);
    fprintf(f, "    workers = %u;\n", c->dp_workers);
    put_kv_str(f, 4, "eal", c->dp_eal);
    put_kv_str(f, 4, "address", c->dp_address);
    put_kv_str(f, 4, "gateway", c->dp_gateway);
    fputs("    impair {\n        drop = ", f);
    put_double(f, c->dp_impair.drop);
    fputs(";\n        reorder = ", f);
    put_double(f, c->dp_impair.reorder);
    fputs(";\n        duplicate = ", f);
    put_double(f, c->dp_impair.duplicate);
    fprintf(f, ";\n        delay_ms = %u;\n        seed = %llu;\n    }\n}\n",
            c->dp_impair.delay_ms, (unsigned long long)c->dp_impair.seed);

    fputs("dns {\n    servers = [", f);
    for (size_t i = 0; i < c->n_dns_servers; i++) {
        fputs(i ? ", " : " ", f);
        put_quoted(f, c->dns_servers[i].text);
    }
    fputs(c->n_dns_servers ? " ];\n" : "];\n", f);
    fprintf(f, "    timeout = %ums;\n    tries = %u;\n}\n", c->dns_timeout_ms, c->dns_tries);

    fputs("spool {\n", f);
    put_kv_str(f, 4, "dir", c->spool_dir);
    fputs("}\ncontrol {\n", f);
    put_kv_str(f, 4, "socket", c->control_socket);
    put_kv_str(f, 4, "http", c->control_http);
    fputs("}\n", f);

    fputs("smtp {\n", f);
    put_kv_str(f, 4, "hostname", c->smtp_hostname);
    fprintf(f, "    max_message_size = %llu;\n", (unsigned long long)c->smtp_max_message_size);
    fprintf(f, "    max_message_total = %llu;\n", (unsigned long long)c->smtp_max_message_total);
    fprintf(f, "    max_recipients = %u;\n", c->smtp_max_recipients);
    fprintf(f, "    max_line_length = %u;\n", c->smtp_max_line_length);
    fprintf(f, "    max_errors = %u;\n", c->smtp_max_errors);
    fprintf(f, "    max_received = %u;\n", c->smtp_max_received);
    fprintf(f, "    max_commands = %u;\n", c->smtp_max_commands);
    fprintf(f, "    timeout {\n        command = %us;\n        data = %us;\n    }\n",
            c->smtp_timeout_command, c->smtp_timeout_data);
    fprintf(f, "    greeting_delay = %ums;\n", c->smtp_greeting_delay_ms);
    fprintf(f, "    pregreet_reject = %s;\n", c->smtp_pregreet_reject ? "true" : "false");
    put_kv_str(f, 4, "bare_lf", c->smtp_bare_lf);
    fputs("    tls {\n", f);
    put_kv_str(f, 8, "cert", c->smtp_tls_cert);
    put_kv_str(f, 8, "key", c->smtp_tls_key);
    fputs("    }\n}\n", f);

    fputs("routes {\n", f);
    for (size_t i = 0; i < c->n_routes; i++) {
        const struct mx_route *r = &c->routes[i];
        char *v = route_text(r);
        if (!v) {
            fclose(f);
            free(buf);
            return NULL;
        }
        fputs("    ", f);
        put_quoted(f, r->domain);
        fputs(" = ", f);
        put_quoted(f, v);
        fputs(";\n", f);
        free(v);
    }
    fputs("}\n", f);

    fputs("relay_domains = [", f);
    for (size_t i = 0; i < c->n_relay_domains; i++) {
        fputs(i ? ", " : " ", f);
        put_quoted(f, c->relay_domains[i]);
    }
    fputs(c->n_relay_domains ? " ];\n" : "];\n", f);
    fputs("trusted_networks = [", f);
    for (size_t i = 0; i < c->n_trusted_networks; i++) {
        fputs(i ? ", " : " ", f);
        put_cidr(f, &c->trusted_networks[i]);
    }
    fputs(c->n_trusted_networks ? " ];\n" : "];\n", f);

    fputs("queue {\n", f);
    fprintf(f, "    retry_first = %us;\n", c->queue_retry_first);
    fprintf(f, "    retry_max = %us;\n", c->queue_retry_max);
    fprintf(f, "    max_lifetime = %us;\n", c->queue_max_lifetime);
    fprintf(f, "    dest_concurrency = %u;\n", c->queue_dest_concurrency);
    fprintf(f, "    dest_fail_ttl = %us;\n", c->queue_dest_fail_ttl);
    fprintf(f, "    delay_warning = %us;\n", c->queue_delay_warning);
    fprintf(f, "    compact_after = %us;\n", c->queue_compact_after);
    fputs("}\n", f);

    fputs("scan {\n    rules = [", f);
    for (size_t i = 0; i < c->n_scan_rules; i++) {
        fputs(i ? ", " : " ", f);
        put_quoted(f, c->scan_rules[i]);
    }
    fputs(c->n_scan_rules ? " ];\n" : "];\n", f);
    fprintf(f, "    clamav {\n        enabled = %s;\n", c->scan_clamav_enabled ? "true" : "false");
    put_kv_str(f, 8, "database", c->scan_clamav_database);
    put_kv_str(f, 8, "on_infected", c->scan_clamav_on_infected);
    put_kv_str(f, 8, "on_unscannable", c->scan_clamav_on_unscannable);
    fputs("    }\n    spam_threshold = ", f);
    put_double(f, c->scan_spam_threshold);
    fprintf(f, ";\n    archive_max_bytes = %llu;\n", (unsigned long long)c->scan_archive_max_bytes);
    fprintf(f, "    archive_max_depth = %u;\n", c->scan_archive_max_depth);
    fprintf(f, "    archive_max_members = %u;\n", c->scan_archive_max_members);
    fprintf(f, "    archive_max_total = %llu;\n", (unsigned long long)c->scan_archive_max_total);
    fprintf(f, "    archive_max_message_total = %llu;\n",
            (unsigned long long)c->scan_archive_max_message_total);
    fprintf(f, "    archive_max_message_members = %u;\n", c->scan_archive_max_message_members);
    fprintf(f, "    archive_max_message_cpu = %ums;\n}\n", c->scan_archive_max_message_cpu_ms);

    /* DNS checks and recipient verification */
    fputs("dnsbl {\n", f);
    put_list(f, "    lists", c->dnsbl_lists, c->n_dnsbl_lists);
    fputs("    threshold = ", f);
    put_double(f, c->dnsbl_threshold);
    fputs(";\n}\nuribl {\n", f);
    put_list(f, "    lists", c->uribl_lists, c->n_uribl_lists);
    fprintf(f, "    max_queries = %u;\n    timeout = %ums;\n}\n", c->uribl_max_queries,
            c->uribl_timeout_ms);
    put_kv_str(f, 0, "sender_domain_check", c->sender_domain_check);
    fprintf(f, "logical_ip = %s;\n", c->logical_ip ? "true" : "false");
    fputs("recipient_verification {\n", f);
    put_list(f, "    static_domains", c->rv_static_domains, c->n_rv_static_domains);
    put_list(f, "    users", c->rv_users, c->n_rv_users);
    put_list(f, "    callout_domains", c->rv_callout_domains, c->n_rv_callout_domains);
    fprintf(f, "    positive_expire = %us;\n    positive_refresh = %us;\n", c->rv_positive_expire,
            c->rv_positive_refresh);
    fprintf(f, "    negative_expire = %us;\n    negative_refresh = %us;\n", c->rv_negative_expire,
            c->rv_negative_refresh);
    fprintf(f, "    cache_size = %u;\n    timeout = %us;\n}\n", c->rv_cache_size, c->rv_timeout);

    fputs("policy {\n", f);
    put_kv_str(f, 4, "subaddress_separator", c->policy_subaddress_sep);
    fprintf(f, "    allow_over_block = %s;\n", c->policy_allow_over_block ? "true" : "false");
    put_list(f, "    allow", c->policy_allow, c->n_policy_allow);
    put_list(f, "    block", c->policy_block, c->n_policy_block);
    put_kv_str(f, 4, "spam_action", c->policy_spam_action);
    put_kv_str(f, 4, "spam_subject_tag", c->policy_spam_subject_tag);
    put_kv_str(f, 4, "banned_action", c->policy_banned_action);
    put_kv_str(f, 4, "dlp_action", c->policy_dlp_action);
    put_list(f, "    attachment_allow", c->policy_attachment_allow,
             c->n_policy_attachment_allow);
    put_kv_str(f, 4, "redirect_to", c->policy_redirect_to);
    put_kv_str(f, 4, "bcc", c->policy_bcc);
    put_kv_str(f, 4, "bcc_when", c->policy_bcc_when);
    put_scopes(f, "domains", c->policy_domains, c->n_policy_domains);
    put_scopes(f, "users", c->policy_users, c->n_policy_users);
    fprintf(f, "    quarantine_retention = %us;\n}\n", c->policy_quarantine_retention);
    fprintf(f, "helo {\n    reject_defaults = %s;\n", c->helo_reject_defaults ? "true" : "false");
    put_list(f, "    block", c->helo_block, c->n_helo_block);
    fprintf(f, "}\nlimits {\n    conn_per_ip = %u;\n    conn_per_net = %u;\n"
               "    conn_rate_per_ip = %u;\n    msgs_per_ip = %u;\n"
               "    sender_msgs_per_hour = %u;\n    sender_rcpts_per_hour = %u;\n}\n",
            c->limit_conn_per_ip, c->limit_conn_per_net, c->limit_conn_rate_per_ip,
            c->limit_msgs_per_ip, c->limit_sender_msgs, c->limit_sender_rcpts);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}
