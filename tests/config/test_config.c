/*
 * test_config.c - unit tests of the configuration loader (config/config.c):
 * defaults, the example files, every validation error with its file:line,
 * -o overrides, routes and relay domains, trusted networks with negation, and
 * the export -> load -> export round trip on examples/full.conf.
 *
 * MX_EXAMPLES (set by meson) is the examples/ directory of the source tree.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"

static char *example(const char *name)
{
    const char *dir = getenv("MX_EXAMPLES");
    char *p = NULL;
    assert_true(asprintf(&p, "%s/%s", dir ? dir : "examples", name) > 0);
    return p;
}

static struct mx_config *load_text(const char *text)
{
    struct mx_config *cfg = NULL;
    struct mx_config_errors errs = {0};
    int rc = mx_config_load_mem("t.conf", text, strlen(text), NULL, 0, 0, &cfg, &errs);
    if (rc != 0) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s:%u: %s\n", errs.v[i].file, errs.v[i].line, errs.v[i].msg);
        fail_msg("load failed: %d", rc);
    }
    mx_config_errors_free(&errs);
    return cfg;
}

/* An export loads back to a configuration that exports the same text. */
static void assert_reload_same(const char *e1)
{
    struct mx_config *c2 = load_text(e1);
    char *e2 = mx_config_export(c2);
    assert_string_equal(e1, e2);
    free(e2);
    mx_config_free(c2);
}

/* Load text that must fail with exactly one error: at `line`, containing msg. */
static void expect_one_error(const char *text, unsigned line, const char *msg)
{
    struct mx_config *cfg = NULL;
    struct mx_config_errors errs = {0};
    int rc = mx_config_load_mem("t.conf", text, strlen(text), NULL, 0, 0, &cfg, &errs);
    assert_int_equal(rc, -EINVAL);
    assert_null(cfg);
    if (errs.n != 1 || errs.v[0].line != line || !strstr(errs.v[0].msg, msg) ||
        strcmp(errs.v[0].file, "t.conf") != 0) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "  got %s:%u: %s\n", errs.v[i].file, errs.v[i].line, errs.v[i].msg);
        fail_msg("for:\n%s\nwant one error at line %u containing \"%s\"", text, line, msg);
    }
    mx_config_errors_free(&errs);
}

static void test_defaults(void **state)
{
    (void)state;
    struct mx_config *c = NULL;
    struct mx_config_errors errs = {0};
    assert_int_equal(mx_config_load(NULL, NULL, 0, &c, &errs), 0);
    assert_int_equal(errs.n, 0);
    assert_null(c->path);
    assert_int_equal(c->n_listen_smtp, 1);
    assert_string_equal(c->listen_smtp[0].text, "127.0.0.1:2525");
    assert_int_equal(c->listen_smtp[0].ss.ss_family, AF_INET);
    assert_int_equal(ntohs(((struct sockaddr_in *)&c->listen_smtp[0].ss)->sin_port), 2525);
    assert_string_equal(c->dp_backend, "kernel");
    assert_int_equal(c->dp_workers, 2);
    assert_string_equal(c->dp_eal, "");
    assert_string_equal(c->spool_dir, "var/spool");
    assert_string_equal(c->control_socket, "var/mxgate.sock");
    assert_string_equal(c->control_http, "127.0.0.1:9025");
    char host[256];
    if (gethostname(host, sizeof(host)) == 0 && strchr(host, ' ') == NULL && host[0])
        assert_string_equal(c->smtp_hostname, host);
    assert_true(c->smtp_max_message_size == 52428800);
    assert_true(c->smtp_max_message_total == 314572800);
    assert_int_equal(c->smtp_max_recipients, 100);
    assert_int_equal(c->smtp_max_line_length, 512);
    assert_int_equal(c->smtp_max_errors, 10);
    assert_int_equal(c->smtp_max_received, 50);
    assert_int_equal(c->smtp_max_commands, 1000);
    assert_int_equal(c->smtp_timeout_command, 300);
    assert_int_equal(c->smtp_timeout_data, 180);
    assert_int_equal(c->smtp_greeting_delay_ms, 0);
    assert_false(c->smtp_pregreet_reject);
    assert_string_equal(c->smtp_bare_lf, "reject");
    assert_string_equal(c->smtp_tls_cert, "");
    assert_string_equal(c->smtp_tls_key, "");
    assert_int_equal(c->n_routes, 1);
    assert_string_equal(c->routes[0].domain, "*");
    assert_int_equal(c->routes[0].scheme, MX_ROUTE_MAILDIR);
    assert_string_equal(c->routes[0].maildir, "var/maildir");
    assert_int_equal(c->n_relay_domains, 0);
    assert_int_equal(c->n_trusted_networks, 2);
    assert_int_equal(c->trusted_networks[0].family, AF_INET);
    assert_int_equal(c->trusted_networks[0].prefix, 8);
    assert_int_equal(c->trusted_networks[1].family, AF_INET6);
    assert_int_equal(c->trusted_networks[1].prefix, 128);
    assert_int_equal(c->queue_retry_first, 300);
    assert_int_equal(c->queue_retry_max, 3600);
    assert_int_equal(c->queue_max_lifetime, 432000);
    assert_int_equal(c->queue_dest_concurrency, 20);
    assert_int_equal(c->n_scan_rules, 0);
    assert_false(c->scan_clamav_enabled);
    assert_string_equal(c->scan_clamav_database, "/var/lib/clamav");
    assert_true(c->scan_spam_threshold == 5.0);
    assert_int_equal(c->scan_archive_max_bytes, 4u << 20);
    assert_int_equal(c->scan_archive_max_depth, 3);
    assert_int_equal(c->scan_archive_max_members, 1000);
    assert_int_equal(c->scan_archive_max_total, 64u << 20);
    assert_int_equal(c->scan_archive_max_message_total, 256u << 20);
    assert_int_equal(c->scan_archive_max_message_members, 4000);
    assert_int_equal(c->scan_archive_max_message_cpu_ms, 2000);
    mx_config_free(c);
}

static void test_quickstart(void **state)
{
    (void)state;
    char *path = example("quickstart.conf");
    struct mx_config *c = NULL;
    struct mx_config_errors errs = {0};
    assert_int_equal(mx_config_load(path, NULL, 0, &c, &errs), 0);
    assert_string_equal(c->path, path);
    assert_string_equal(c->listen_smtp[0].text, "127.0.0.1:2525");
    assert_string_equal(c->spool_dir, "var/spool");
    assert_string_equal(c->control_socket, "var/mxgate.sock");
    assert_int_equal(c->n_relay_domains, 1);
    assert_string_equal(c->relay_domains[0], "example.test");
    const struct mx_route *r = mx_config_route(c, "example.test");
    assert_non_null(r);
    assert_int_equal(r->scheme, MX_ROUTE_MAILDIR);
    assert_string_equal(r->maildir, "var/maildir");
    mx_config_free(c);
    free(path);
}

static void test_full_and_round_trip(void **state)
{
    (void)state;
    char *path = example("full.conf");
    struct mx_config *c = NULL;
    struct mx_config_errors errs = {0};
    int rc = mx_config_load(path, NULL, 0, &c, &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "%s:%u: %s\n", errs.v[i].file, errs.v[i].line, errs.v[i].msg);
    assert_int_equal(rc, 0);
    /* a sample of values that differ from the defaults */
    assert_int_equal(c->n_listen_smtp, 2);
    assert_int_equal(c->listen_smtp[1].ss.ss_family, AF_INET6);
    assert_int_equal(c->dp_workers, 4);
    assert_true(c->smtp_max_message_size == 25 * 1048576);
    assert_int_equal(c->smtp_timeout_command, 300);
    assert_int_equal(c->smtp_timeout_data, 120);
    assert_int_equal(c->smtp_greeting_delay_ms, 1500);
    assert_int_equal(c->smtp_max_received, 30);
    assert_true(c->smtp_pregreet_reject);
    assert_string_equal(c->smtp_bare_lf, "normalize");
    assert_int_equal(c->queue_retry_first, 600);
    assert_int_equal(c->queue_max_lifetime, 4 * 86400);
    assert_true(c->scan_clamav_enabled);
    assert_true(c->scan_spam_threshold == 6.5);
    assert_int_equal(c->scan_archive_max_bytes, 8u << 20);
    assert_int_equal(c->scan_archive_max_depth, 2);
    assert_int_equal(c->scan_archive_max_members, 500);
    assert_int_equal(c->scan_archive_max_total, 32u << 20);
    assert_int_equal(c->scan_archive_max_message_total, 128u << 20);
    assert_int_equal(c->scan_archive_max_message_members, 2000);
    assert_int_equal(c->scan_archive_max_message_cpu_ms, 1500);
    assert_int_equal(c->n_uribl_lists, 2);
    assert_int_equal(c->uribl_max_queries, 30);
    assert_int_equal(c->uribl_timeout_ms, 2000);
    const struct mx_route *r = mx_config_route(c, "EXAMPLE.TEST");
    assert_int_equal(r->scheme, MX_ROUTE_SMTP);
    assert_int_equal(r->n_hosts, 2);
    assert_string_equal(r->hosts[1].text, "[::1]:2626");
    assert_int_equal(mx_config_route(c, "example.net")->scheme, MX_ROUTE_MX);
    assert_string_equal(mx_config_route(c, "elsewhere.test")->domain, "*");

    char *e1 = mx_config_export(c);
    assert_non_null(e1);
    assert_reload_same(e1);
    /* the export is complete: every section and table is present */
    const char *must[] = {"listen {", "smtp = [ \"127.0.0.1:2525\", \"[::1]:2525\" ]",
                          "workers = 4;", "eal = \"--log-level=lib.eal:notice\";",
                          "http = \"127.0.0.1:9025\";", "max_commands = 500;",
                          "command = 300s;", "greeting_delay = 1500ms;",
                          "pregreet_reject = true;", "cert = \"/etc/mxgate/tls/cert.pem\";",
                          "\"example.test\" = \"smtp:127.0.0.1:2626,[::1]:2626\";",
                          "\"example.org\" = \"maildir:var/maildir-org\";",
                          "\"example.net\" = \"mx\";", "\"*\" = \"smtp:192.0.2.25:25\";",
                          "relay_domains = [ \"example.test\", \"example.org\", \"example.net\" ];",
                          "\"!192.168.0.254/32\", \"192.168.0.0/24\", \"2001:db8::/32\"",
                          "retry_first = 600s;", "dest_concurrency = 10;",
                          "rules = [ \"rules/default.rules\", \"rules/local.cf\" ];",
                          "enabled = true;", "spam_threshold = 6.5;",
                          "archive_max_bytes = 8388608;", "archive_max_depth = 2;",
                          "archive_max_members = 500;", "archive_max_total = 33554432;",
                          "archive_max_message_total = 134217728;",
                          "archive_max_message_members = 2000;",
                          "archive_max_message_cpu = 1500ms;",
                          "lists = [ \"multi.uribl.example.test reject\", "
                          "\"dbl.example.test score=2.5\" ];",
                          "max_queries = 30;\n    timeout = 2000ms;",
                          "\"example.org\" { banned_action = \"quarantine\"; bcc = \"\"; attachment_allow = [ "
                          "\"MX_ATT_MACRO_DOC\", \"MX_ATT_VBA_PROJECT\" ]; av = false; }",
                          "    attachment_allow = [];\n",
                          "redirect_to = \"spamtrap@example.test\";",
                          "bcc = \"archive@example.test\";",
                          "bcc = \"ceo-archive@example.test\"; bcc_when = \"spam\";",
                          "dlp_action = \"tag\"; bcc = \"ceo-archive@example.test\"; bcc_when = "
                          "\"spam\"; av = true; quarantine_retention = 7776000s; }"};
    for (size_t i = 0; i < sizeof(must) / sizeof(must[0]); i++)
        if (!strstr(e1, must[i]))
            fail_msg("export lacks '%s':\n%s", must[i], e1);
    free(e1);
    mx_config_free(c);

    /* the defaults survive the round trip too */
    assert_int_equal(mx_config_load(NULL, NULL, 0, &c, NULL), 0);
    e1 = mx_config_export(c);
    assert_reload_same(e1);
    free(e1);
    mx_config_free(c);
    free(path);
}

/* Per-domain and per-user settings: user over domain over global, per setting. */
static void test_policy_scopes(void **state)
{
    (void)state;
    struct mx_config *c = load_text(
        "policy {\n"
        "  spam_action = \"tag\"; quarantine_retention = 10d;\n"
        "  domains {\n"
        "    \"a.test\" { av = false; quarantine_retention = 2d; banned_action = \"quarantine\"; }\n"
        "    \"b.test\" { quarantine_retention = 0; }\n"
        "  }\n"
        "  users {\n"
        "    \"boss@a.test\" { av = true; spam_action = \"reject\"; }\n"
        "    \"keep@a.test\" { quarantine_retention = 90d; }\n"
        "  }\n"
        "}\n");
    struct mx_policy_effective e;
    mx_config_policy_for(c, "x@elsewhere.test", &e);
    assert_true(e.av);
    assert_int_equal(e.quarantine_retention, 10 * 86400);
    assert_string_equal(e.spam_action, "tag");
    assert_string_equal(e.banned_action, "reject");
    mx_config_policy_for(c, "x@A.test", &e);
    assert_false(e.av);
    assert_int_equal(e.quarantine_retention, 2 * 86400);
    assert_string_equal(e.banned_action, "quarantine");
    /* the user's own setting wins, the rest comes from its domain */
    mx_config_policy_for(c, "Boss+tag@a.test", &e);
    assert_true(e.av);
    assert_string_equal(e.spam_action, "reject");
    assert_int_equal(e.quarantine_retention, 2 * 86400);
    assert_string_equal(e.banned_action, "quarantine");
    mx_config_policy_for(c, "keep@a.test", &e);
    assert_false(e.av);
    assert_int_equal(e.quarantine_retention, 90 * 86400);
    mx_config_policy_for(c, "x@b.test", &e);
    assert_int_equal(e.quarantine_retention, 0); /* kept forever */
    /* the scope settings survive export -> load -> export */
    char *e1 = mx_config_export(c);
    assert_non_null(strstr(e1, "\"a.test\" { banned_action = \"quarantine\"; av = false; "
                               "quarantine_retention = 172800s; }"));
    assert_non_null(strstr(e1, "\"boss@a.test\" { spam_action = \"reject\"; av = true; }"));
    assert_reload_same(e1);
    free(e1);
    mx_config_free(c);

    expect_one_error("policy { domains { \"a.test\" { av = \"no\"; } } }\n", 1,
                     "policy.domains.a.test.av: expected true or false, got string");
    expect_one_error("policy { users {\n \"u@a.test\" { quarantine_retention = 400d; } } }\n", 2,
                     "policy.users.u@a.test.quarantine_retention must be between 0 and 31536000");
    expect_one_error("policy { users {\n \"u@a.test\" { quarantine_retention = \"x\"; } } }\n",
                     2, "expected a duration, got string");
    expect_one_error("policy { domains { \"a.test\" { avv = true; } } }\n", 1,
                     "policy.domains.a.test.avv: unknown setting");

    /* attachment_allow: global, replaced (not merged) per scope, "[]" clears it */
    c = load_text("policy {\n"
                  "  attachment_allow = \"MX_ATT_MACRO_DOC\";\n"
                  "  domains { \"a.test\" { attachment_allow = [ \"MX_ATT_EXEC_EXT\", \"LOCAL_1\" ]; } }\n"
                  "  users { \"u@a.test\" { attachment_allow = []; } }\n"
                  "}\n");
    mx_config_policy_for(c, "x@elsewhere.test", &e);
    assert_int_equal(e.n_attachment_allow, 1);
    assert_string_equal(e.attachment_allow[0], "MX_ATT_MACRO_DOC");
    mx_config_policy_for(c, "x@a.test", &e);
    assert_int_equal(e.n_attachment_allow, 2);
    assert_string_equal(e.attachment_allow[1], "LOCAL_1");
    mx_config_policy_for(c, "u+x@a.test", &e);
    assert_int_equal(e.n_attachment_allow, 0);
    e1 = mx_config_export(c);
    assert_non_null(strstr(e1, "\"u@a.test\" { attachment_allow = []; }"));
    assert_reload_same(e1);
    free(e1);
    mx_config_free(c);
    expect_one_error("policy {\n domains { \"a.test\" { attachment_allow = [ \"X Y\" ]; } } }\n", 2,
                     "policy.domains.a.test.attachment_allow: 'X Y' is not a rule name");
    expect_one_error("policy { attachment_allow = [ 5 ]; }\n", 1,
                     "policy.attachment_allow: expected a string");
}

/* Redirect and BCC settings: inheritance, and "redirect" needs a target. */
static void test_policy_redirect_bcc(void **state)
{
    (void)state;
    struct mx_config *c = load_text(
        "policy {\n"
        "  spam_action = \"redirect\"; redirect_to = \"trap@corp.test\";\n"
        "  bcc = \"archive@corp.test\";\n"
        "  domains { \"a.test\" { bcc = \"\"; banned_action = \"redirect\";\n"
        "                         redirect_to = \"att@corp.test\"; } }\n"
        "  users { \"u@a.test\" { bcc = \"u-copy@corp.test\"; bcc_when = \"spam\"; } }\n"
        "}\n");
    struct mx_policy_effective e;
    mx_config_policy_for(c, "x@b.test", &e);
    assert_string_equal(e.spam_action, "redirect");
    assert_string_equal(e.redirect_to, "trap@corp.test");
    assert_string_equal(e.bcc, "archive@corp.test");
    assert_string_equal(e.bcc_when, "always");
    mx_config_policy_for(c, "x@a.test", &e);
    assert_string_equal(e.bcc, ""); /* turned off for the domain */
    assert_string_equal(e.redirect_to, "att@corp.test");
    assert_string_equal(e.banned_action, "redirect");
    mx_config_policy_for(c, "u+tag@a.test", &e);
    assert_string_equal(e.bcc, "u-copy@corp.test");
    assert_string_equal(e.bcc_when, "spam");
    assert_string_equal(e.redirect_to, "att@corp.test");
    char *e1 = mx_config_export(c);
    assert_non_null(strstr(e1, "    redirect_to = \"trap@corp.test\";\n    bcc = "
                               "\"archive@corp.test\";\n    bcc_when = \"always\";\n"));
    assert_reload_same(e1);
    free(e1);
    mx_config_free(c);

    expect_one_error("policy {\n spam_action = \"redirect\"; }\n", 2,
                     "policy.spam_action = \"redirect\" needs policy.redirect_to");
    expect_one_error("policy { users {\n \"u@a.test\" { dlp_action = \"redirect\"; } } }\n", 1,
                     "policy.users.u@a.test: action \"redirect\" needs redirect_to");
    expect_one_error("policy { redirect_to = \"nobody\"; }\n", 1,
                     "policy.redirect_to: 'nobody' is not an address");
    expect_one_error("policy { bcc = \"a b@x.test\"; }\n", 1, "policy.bcc: 'a b@x.test' is not");
    expect_one_error("policy { domains {\n \"a.test\" { bcc_when = \"sometimes\"; } } }\n", 2,
                     "is not one of always/spam/clean");
    expect_one_error("policy { bcc_when = \"sometimes\"; }\n", 1, "policy.bcc_when");
    /* a user's redirect may use its domain's target */
    c = load_text("policy { domains { \"a.test\" { redirect_to = \"t@corp.test\"; } }\n"
                  "  users { \"u@a.test\" { spam_action = \"redirect\"; } } }\n");
    mx_config_free(c);
}

static void test_validation_errors(void **state)
{
    (void)state;
    expect_one_error("dataplane {\n  workerz = 4;\n}\n", 2,
                     "unknown key 'dataplane.workerz' (did you mean 'dataplane.workers'?)");
    expect_one_error("workers = 4\n", 1, "unknown key 'workers' (did you mean 'dataplane.workers'?)");
    expect_one_error("smtp { hostnme = \"a.b\" }\n", 1, "did you mean 'smtp.hostname'?");
    expect_one_error("\nfrobnicate = 1\n", 2, "unknown key 'frobnicate'");
    expect_one_error("dataplane { workers = 0 }\n", 1,
                     "dataplane.workers must be between 1 and 128 (got 0)");
    expect_one_error("dataplane {\n workers = 129 }\n", 2,
                     "dataplane.workers must be between 1 and 128 (got 129)");
    /* the per-message archive budget (scan/engine.c) */
    expect_one_error("scan {\n archive_max_message_total = 1000; }\n", 2,
                     "scan.archive_max_message_total must be between 65536 and 274877906944 "
                     "(got 1000)");
    expect_one_error("scan { archive_max_message_members = 0; }\n", 1,
                     "scan.archive_max_message_members must be between 1 and 10000000 (got 0)");
    expect_one_error("scan { archive_max_message_cpu = 0; }\n", 1,
                     "scan.archive_max_message_cpu");
    expect_one_error("dataplane { workers = \"four\" }\n", 1,
                     "dataplane.workers: expected an integer, got string");
    expect_one_error("dataplane { workers = 2.5 }\n", 1, "must be a whole number");
    expect_one_error("dataplane { backend = \"netmap\" }\n", 1,
                     "dataplane.backend: 'netmap' is not one of kernel/dpdk");
    expect_one_error("listen { smtp = [ \"127.0.0.1:2525\",\n \"localhost:25\" ] }\n", 2,
                     "listen.smtp: bad address 'localhost:25': host must be a numeric");
    expect_one_error("listen { smtp = \"127.0.0.1:99999\" }\n", 1, "port must be 1..65535");
    expect_one_error("listen { smtp = \"::1:25\" }\n", 1, "IPv6 addresses need brackets");
    expect_one_error("listen { smtp = [] }\n", 1, "listen.smtp needs at least one address");
    expect_one_error("listen = \"127.0.0.1:25\"\n", 1,
                     "listen: expected a section { ... }, got string");
    expect_one_error("control { http = \"nowhere\" }\n", 1, "control.http: bad address 'nowhere'");
    expect_one_error("trusted_networks = [ \"10.0.0.0/8\",\n\"10.0.0.0/33\" ]\n", 2,
                     "trusted_networks: bad CIDR '10.0.0.0/33': IPv4 prefix must be 0..32");
    expect_one_error("trusted_networks = [ \"mynet\" ]\n", 1,
                     "bad CIDR 'mynet': not an IPv4 or IPv6 address");
    expect_one_error("trusted_networks = [ \"::/129\" ]\n", 1, "IPv6 prefix must be 0..128");
    expect_one_error("routes {\n \"a.test\" = \"lmtp:127.0.0.1:24\"\n}\n", 2,
                     "routes.a.test: unknown route scheme 'lmtp' (expected smtp:, maildir: or mx)");
    expect_one_error("routes { \"a.test\" = \"smtp:mail.a.test:25\" }\n", 1,
                     "routes.a.test: bad destination 'mail.a.test:25'");
    expect_one_error("routes { \"a.test\" = \"maildir:\" }\n", 1, "maildir: needs a directory");
    expect_one_error("routes { \"a b\" = \"mx\" }\n", 1, "routes: 'a b' is not a domain name");
    expect_one_error("routes { \"A.test\" = \"mx\"\n \"a.TEST\" = \"mx\" }\n", 2,
                     "routes: 'a.TEST' has two routes");
    expect_one_error("routes = [ \"mx\" ]\n", 1, "routes: expected an object");
    expect_one_error("relay_domains = [ \"ok.test\", \"bad_domain..test\" ]\n", 1,
                     "relay_domains: 'bad_domain..test' is not a domain name");
    expect_one_error("relay_domains = [ 42 ]\n", 1, "relay_domains: expected a string, got an integer");
    expect_one_error("smtp { hostname = \"mx.a.test\"\n hostname = \"mx.b.test\" }\n", 2,
                     "smtp.hostname is set more than once (first at t.conf:1)");
    expect_one_error("smtp { hostname = \"not a name\" }\n", 1, "is not a valid host name");
    expect_one_error("smtp { pregreet_reject = 1 }\n", 1,
                     "smtp.pregreet_reject: expected true or false, got an integer");
    expect_one_error("smtp { bare_lf = \"accept\" }\n", 1, "not one of reject/normalize");
    expect_one_error("smtp { max_line_length = 100 }\n", 1, "between 512 and 65536");
    expect_one_error("smtp { timeout { command = \"soon\" } }\n", 1,
                     "smtp.timeout.command: expected a duration, got string");
    expect_one_error("smtp { timeout { data = 1500ms } }\n", 1, "whole number of seconds");
    expect_one_error("smtp { greeting_delay = 2min }\n", 1, "between 0 and 60000");
    expect_one_error("smtp {\n tls { cert = \"/c.pem\" } }\n", 2,
                     "cert and key must be set together (only smtp.tls.cert is set)");
    expect_one_error("smtp { max_message_size = 100mb\n max_message_total = 10mb }\n", 2,
                     "smtp.max_message_total (10485760) is below smtp.max_message_size");
    expect_one_error("queue { retry_first = 2h; retry_max = 1h }\n", 1,
                     "queue.retry_first (7200) is above queue.retry_max (3600)");
    expect_one_error("spool { dir = \"\" }\n", 1, "spool.dir must not be empty");
    expect_one_error("scan { spam_threshold = high }\n", 1,
                     "scan.spam_threshold: expected a number, got string");
    expect_one_error("scan { archive_max_depth = 0 }\n", 1, "between 1 and 16");
    expect_one_error("scan { archive_max_bytes = 1kb }\n", 1, "scan.archive_max_bytes");
    expect_one_error("scan { clamav { enabled = \"yes\" } }\n", 1, "expected true or false");
    expect_one_error("dataplane { address = \"10.0.0.2\" }\n", 1, "is not address/prefix");
    expect_one_error("dataplane { gateway = \"10.0.0.1/24\" }\n", 1, "is not an IP address");
    expect_one_error("dataplane { address = \"10.0.0.2/24\" }\n", 1, "apply to backend \"dpdk\" only");
    expect_one_error("control { socket = \"/tmp/"
                     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock\" }\n",
                     1, "unix socket path must be shorter");
    /* syntax errors come through with their line */
    expect_one_error("a {\n\n b = \"x\n", 3, "unterminated string");
}

static void test_every_error_collected(void **state)
{
    (void)state;
    const char *text = "dataplane {\n"
                       "  workers = 0;\n"
                       "  backend = \"bsd\";\n"
                       "}\n"
                       "listen { smtp = \"nohost\"; }\n"
                       "trusted_networks = [ \"1.2.3.4/40\" ];\n"
                       "colour = \"blue\";\n";
    struct mx_config *cfg = NULL;
    struct mx_config_errors errs = {0};
    assert_int_equal(mx_config_load_mem("t.conf", text, strlen(text), NULL, 0, 0, &cfg, &errs),
                     -EINVAL);
    assert_null(cfg);
    assert_int_equal(errs.n, 5);
    unsigned lines[] = {2, 3, 5, 6, 7};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(errs.v[i].line, lines[i]);
    assert_non_null(strstr(errs.v[4].msg, "unknown key 'colour'"));
    mx_config_errors_free(&errs);
}

static void test_errors_in_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/mx-cfg-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char main_path[64], inc_path[64];
    snprintf(main_path, sizeof(main_path), "%s/main.conf", dir);
    snprintf(inc_path, sizeof(inc_path), "%s/limits.conf", dir);
    FILE *f = fopen(main_path, "w");
    fputs("smtp { hostname = \"mx.a.test\"; }\n.include \"limits.conf\"\n", f);
    fclose(f);
    f = fopen(inc_path, "w");
    fputs("# limits\nsmtp {\n  max_recipients = 0;\n}\n", f);
    fclose(f);
    struct mx_config *cfg = NULL;
    struct mx_config_errors errs = {0};
    assert_int_equal(mx_config_load(main_path, NULL, 0, &cfg, &errs), -EINVAL);
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.v[0].file, inc_path);
    assert_int_equal(errs.v[0].line, 3);
    assert_non_null(strstr(errs.v[0].msg, "smtp.max_recipients must be between 1 and 100000"));
    mx_config_errors_free(&errs);
    /* a file that does not exist: -ENOENT and a message naming it */
    char missing[80];
    snprintf(missing, sizeof(missing), "%s/none.conf", dir);
    assert_int_equal(mx_config_load(missing, NULL, 0, &cfg, &errs), -ENOENT);
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.v[0].file, missing);
    assert_non_null(strstr(errs.v[0].msg, "No such file"));
    mx_config_errors_free(&errs);
    unlink(main_path);
    unlink(inc_path);
    rmdir(dir);
}

static void test_overrides(void **state)
{
    (void)state;
    const char *text = "dataplane { workers = 2 }\n"
                       "routes { \"a.test\" = \"mx\" }\n";
    const char *ov[] = {
        "dataplane.workers=8",
        "listen.smtp=[\"[::1]:2526\", \"127.0.0.1:2527\"]",
        "routes.\"b.test\"=smtp:10.0.0.5",
        "smtp.timeout.command=2min",
        "scan.clamav.enabled=true",
        "relay_domains=[\"a.test\"]",
    };
    struct mx_config *c = NULL;
    struct mx_config_errors errs = {0};
    assert_int_equal(mx_config_load_mem("t.conf", text, strlen(text), ov, 6, 0, &c, &errs), 0);
    assert_int_equal(c->dp_workers, 8);
    assert_int_equal(c->n_listen_smtp, 2);
    assert_string_equal(c->listen_smtp[0].text, "[::1]:2526");
    assert_int_equal(c->listen_smtp[0].ss.ss_family, AF_INET6);
    const struct mx_route *r = mx_config_route(c, "b.test");
    assert_non_null(r);
    assert_string_equal(r->domain, "b.test");
    assert_int_equal(r->scheme, MX_ROUTE_SMTP);
    assert_string_equal(r->hosts[0].text, "10.0.0.5:25");
    assert_int_equal(mx_config_route(c, "a.test")->scheme, MX_ROUTE_MX);
    assert_int_equal(c->smtp_timeout_command, 120);
    assert_true(c->scan_clamav_enabled);
    assert_int_equal(c->n_relay_domains, 1);
    mx_config_free(c);

    /* errors in overrides name the override */
    const char *bad[] = {"dataplane.workers=0", "nonsense", "dataplane.workers.x=1",
                         "smtp.hostnam=x.test"};
    assert_int_equal(mx_config_load_mem("t.conf", text, strlen(text), bad, 4, 0, &c, &errs),
                     -EINVAL);
    assert_int_equal(errs.n, 4);
    assert_string_equal(errs.v[0].file, "-o nonsense");
    assert_string_equal(errs.v[0].msg, "expected -o key.path=value");
    assert_string_equal(errs.v[1].file, "-o dataplane.workers.x=1");
    assert_string_equal(errs.v[1].msg, "'workers' is not a section");
    assert_string_equal(errs.v[2].file, "-o dataplane.workers=0");
    assert_int_equal(errs.v[2].line, 0);
    assert_string_equal(errs.v[2].msg, "dataplane.workers must be between 1 and 128 (got 0)");
    assert_string_equal(errs.v[3].file, "-o smtp.hostnam=x.test");
    assert_string_equal(errs.v[3].msg,
                        "unknown key 'smtp.hostnam' (did you mean 'smtp.hostname'?)");
    mx_config_errors_free(&errs);
}

static void test_relay_domains(void **state)
{
    (void)state;
    /* default: every route key except "*" */
    struct mx_config *c = load_text("routes {\n \"A.test\" = \"mx\"\n \"b.test\" = "
                                    "\"maildir:m\"\n \"*\" = \"mx\"\n}\n");
    assert_int_equal(c->n_relay_domains, 2);
    assert_string_equal(c->relay_domains[0], "a.test");
    assert_true(mx_config_is_relay_domain(c, "a.test"));
    assert_true(mx_config_is_relay_domain(c, "B.TEST"));
    assert_true(mx_config_is_relay_domain(c, "b.test."));
    assert_false(mx_config_is_relay_domain(c, "sub.b.test"));
    assert_false(mx_config_is_relay_domain(c, "test"));
    assert_false(mx_config_is_relay_domain(c, "c.test"));
    assert_false(mx_config_is_relay_domain(c, ""));
    assert_false(mx_config_is_relay_domain(c, NULL));
    assert_string_equal(mx_config_route(c, "B.Test")->domain, "b.test");
    assert_string_equal(mx_config_route(c, "other.test")->domain, "*");
    mx_config_free(c);
    /* explicit empty list: no relay domain at all */
    c = load_text("routes { \"a.test\" = \"mx\" }\nrelay_domains = []\n");
    assert_int_equal(c->n_relay_domains, 0);
    assert_false(mx_config_is_relay_domain(c, "a.test"));
    assert_null(mx_config_route(c, "b.test")); /* no "*" route */
    mx_config_free(c);
    /* a list key written twice adds up (UCL implicit array) */
    c = load_text("relay_domains = \"a.test\"\nrelay_domains = [ \"b.test\", \"c.test\" ]\n");
    assert_int_equal(c->n_relay_domains, 3);
    assert_string_equal(c->relay_domains[2], "c.test");
    mx_config_free(c);
}

static struct sockaddr_storage ip(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(text, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, text, &s6->sin6_addr), 1);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, text, &s4->sin_addr), 1);
    }
    return ss;
}

static bool trusted(const struct mx_config *c, const char *text)
{
    struct sockaddr_storage ss = ip(text);
    return mx_config_is_trusted(c, (struct sockaddr *)&ss);
}

static void test_trusted_networks(void **state)
{
    (void)state;
    struct mx_config *c = load_text("trusted_networks = [ \"127.0.0.0/8\", \"!192.168.0.254/32\","
                                    " \"192.168.0.0/24\", \"2001:db8::/32\", \"!10.1.0.0/16\","
                                    " \"10.0.0.0/8\", \"172.16.0.1\" ]\n");
    assert_true(trusted(c, "127.0.0.1"));
    assert_true(trusted(c, "192.168.0.1"));
    assert_true(trusted(c, "192.168.0.253"));
    assert_false(trusted(c, "192.168.0.254")); /* negation listed first wins */
    assert_true(trusted(c, "192.168.0.255"));
    assert_false(trusted(c, "192.168.1.1"));
    assert_true(trusted(c, "10.2.3.4"));
    assert_false(trusted(c, "10.1.3.4"));
    assert_true(trusted(c, "172.16.0.1")); /* a bare address is a /32 */
    assert_false(trusted(c, "172.16.0.2"));
    assert_true(trusted(c, "2001:db8:1::25"));
    assert_false(trusted(c, "2001:db9::1"));
    assert_false(trusted(c, "::1")); /* not listed here */
    /* IPv4-mapped IPv6 clients are judged as IPv4 */
    assert_true(trusted(c, "::ffff:192.168.0.7"));
    assert_false(trusted(c, "::ffff:192.168.0.254"));
    assert_false(trusted(c, "::ffff:8.8.8.8"));
    mx_config_free(c);

    /* order matters: the same entries the other way round trust .254 */
    c = load_text("trusted_networks = [ \"192.168.0.0/24\", \"!192.168.0.254/32\" ]\n");
    assert_true(trusted(c, "192.168.0.254"));
    mx_config_free(c);

    /* defaults: loopback only */
    assert_int_equal(mx_config_load(NULL, NULL, 0, &c, NULL), 0);
    assert_true(trusted(c, "127.0.0.1"));
    assert_true(trusted(c, "::1"));
    assert_true(trusted(c, "::ffff:127.0.0.1"));
    assert_false(trusted(c, "192.0.2.1"));
    assert_false(mx_config_is_trusted(c, NULL));
    mx_config_free(c);
}

static void test_parsers(void **state)
{
    (void)state;
    struct mx_sockaddr sa;
    assert_int_equal(mx_config_parse_hostport("192.0.2.1:25", &sa), 0);
    assert_int_equal(sa.len, sizeof(struct sockaddr_in));
    assert_string_equal(sa.text, "192.0.2.1:25");
    assert_int_equal(mx_config_parse_hostport("[2001:db8::1]:587", &sa), 0);
    assert_int_equal(sa.len, sizeof(struct sockaddr_in6));
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&sa.ss)->sin6_port), 587);
    const char *bad[] = {"", "192.0.2.1", "192.0.2.1:", "192.0.2.1:0", "192.0.2.1:65536",
                         "192.0.2.1:2x", "[::1]", "[::1]25", "::1:25", "host:25",
                         "300.0.0.1:25", "[zz]:25", NULL};
    for (size_t i = 0; bad[i]; i++)
        if (mx_config_parse_hostport(bad[i], &sa) != -EINVAL)
            fail_msg("accepted '%s'", bad[i]);
    assert_int_equal(mx_config_parse_hostport(NULL, &sa), -EINVAL);

    struct mx_cidr c;
    assert_int_equal(mx_config_parse_cidr("!192.168.0.254/32", &c), 0);
    assert_true(c.negate);
    assert_int_equal(c.family, AF_INET);
    assert_int_equal(c.prefix, 32);
    assert_int_equal(c.addr[3], 254);
    assert_int_equal(mx_config_parse_cidr("fe80::/10", &c), 0);
    assert_false(c.negate);
    assert_int_equal(c.family, AF_INET6);
    assert_int_equal(c.prefix, 10);
    assert_int_equal(c.addr[0], 0xfe);
    const char *badc[] = {"", "!", "/8", "1.2.3.4/", "1.2.3.4/33", "1.2.3.4/-1", "1.2.3/8",
                          "::/129", "1.2.3.4/8x", "!!1.2.3.4/8", NULL};
    for (size_t i = 0; badc[i]; i++)
        if (mx_config_parse_cidr(badc[i], &c) != -EINVAL)
            fail_msg("accepted '%s'", badc[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_quickstart),
        cmocka_unit_test(test_full_and_round_trip),
        cmocka_unit_test(test_policy_scopes),
        cmocka_unit_test(test_policy_redirect_bcc),
        cmocka_unit_test(test_validation_errors),
        cmocka_unit_test(test_every_error_collected),
        cmocka_unit_test(test_errors_in_files),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_relay_domains),
        cmocka_unit_test(test_trusted_networks),
        cmocka_unit_test(test_parsers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
