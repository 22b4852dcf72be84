/*
 * mxgate.c - the gateway: load the configuration, recover the queue, start
 * the workers and serve the control socket until SIGTERM/SIGINT; SIGHUP and
 * `mxctl reload` re-read the configuration (app/reload.c).
 *
 *   mxgate -c FILE [-o key.path=value ...] [--check]
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app/control.h"
#include "app/reload.h"
#include "config/config.h"
#include "console/console.h"
#include "dataplane/dataplane.h"
#include "queue/queue.h"
#include "scan/scan.h"
#include "smtp/smtp.h"

#define MAX_OVERRIDES 64
#define STOP_GRACE_MS 10000

struct gateway {
    struct mx_config *cfg; /* as loaded at start: queue, listeners, dataplane */
    const char *conf;      /* -c FILE, re-read on reload with the same -o overrides */
    const char *const *overrides;
    size_t n_over;
    struct mx_queue *queue;
    struct mx_reload *reload; /* the SMTP server generations */
    struct mx_console_http *http;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: mxgate -c FILE [-o key.path=value ...] [--check]\n"
               "  -c FILE      configuration file (UCL)\n"
               "  -o KEY=VAL   override a key by its dotted path (repeatable)\n"
               "  --check      validate the configuration, print every error, exit 0/1\n");
}

static int print_errors(const struct mx_config_errors *errs)
{
    for (size_t i = 0; i < errs->n; i++) {
        const struct mx_config_error *e = &errs->v[i];
        if (e->line)
            fprintf(stderr, "%s:%u: %s\n", e->file, e->line, e->msg);
        else
            fprintf(stderr, "%s: %s\n", e->file[0] ? e->file : "mxgate", e->msg);
    }
    return errs->n ? 1 : 0;
}

static int worker_init(struct mx_worker *w, void *arg)
{
    struct gateway *g = arg;
    int rc = mx_stats_bind_slot(mx_worker_index(w));
    if (rc < 0)
        return rc;
    return mx_queue_worker_init(g->queue, w);
}

static char *dup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *dup_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

/* One control request (see app/control.h). */
static int control(void *arg, int argc, char **argv, char **out)
{
    struct gateway *g = arg;
    bool json = false;
    int n = 0;
    char *args[16];
    for (int i = 0; i < argc && n < 16; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else
            args[n++] = argv[i];
    }
    if (n == 0)
        return -EINVAL;
    if (strcmp(args[0], "ping") == 0) {
        *out = strdup("pong\n");
        return 0;
    }
    if (strcmp(args[0], "queue") == 0 && n >= 2) {
        return mx_queue_control(g->queue, args[1], n >= 3 ? args[2] : NULL, json, out);
    }
    if (strcmp(args[0], "maintenance") == 0 && n >= 2) {
        const char *cmd = strcmp(args[1], "on") == 0    ? "pause-inbound"
                          : strcmp(args[1], "off") == 0 ? "resume-inbound"
                                                        : NULL;
        if (!cmd) {
            *out = strdup("usage: maintenance on|off");
            return -EINVAL;
        }
        return mx_queue_control(g->queue, cmd, NULL, json, out);
    }
    if (strcmp(args[0], "config") == 0 && n >= 2 && strcmp(args[1], "export") == 0) {
        *out = mx_config_export(mx_reload_config(g->reload));
        return *out ? 0 : -ENOMEM;
    }
    if (strcmp(args[0], "reload") == 0 && n == 1)
        return mx_reload_apply(g->reload, out);
    if (strcmp(args[0], "cache") == 0 && n == 2 && strcmp(args[1], "clear") == 0) {
        mx_smtp_checks_cache_clear(); /* each worker empties its own at its next lookup */
        *out = strdup("recipient verification cache cleared\n");
        return *out ? 0 : -ENOMEM;
    }
    if (strcmp(args[0], "stats") == 0) {
        struct mx_stats_snapshot *snap = malloc(sizeof *snap);
        if (!snap)
            return -ENOMEM;
        mx_stats_snapshot(snap);
        *out = json ? mx_stats_render_json(snap) : mx_stats_render_text(snap);
        free(snap);
        return *out ? 0 : -ENOMEM;
    }
    *out = dup_printf("unknown request: %s", args[0]);
    return -EINVAL;
}

/* mkdir -p: a fresh checkout has no var/ yet. */
static int make_dirs(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return -ENAMETOOLONG;
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0750) != 0 && errno != EEXIST)
                return -errno;
            if (c == 0)
                break;
            *p = c;
        }
    }
    return 0;
}

/*
 * The DNS service thread (MX routes, DNS lists) talks to dns.servers, or to
 * the resolvers of /etc/resolv.conf when none are configured. Nothing is
 * queried until a route or a check needs it.
 */
static int start_dns(const struct mx_config *cfg)
{
    char list[1024] = "";
    size_t off = 0;
    for (size_t i = 0; i < cfg->n_dns_servers; i++) {
        int n = snprintf(list + off, sizeof list - off, "%s%s", i ? "," : "",
                         cfg->dns_servers[i].text);
        if (n < 0 || (size_t)n >= sizeof list - off)
            return -E2BIG;
        off += (size_t)n;
    }
    return mx_dns_start(cfg->n_dns_servers ? list : NULL, cfg->dns_timeout_ms, cfg->dns_tries);
}

static int run(struct gateway *g)
{
    const struct mx_config *cfg = g->cfg;
    int rc = make_dirs(cfg->spool_dir);
    if (rc == 0)
        rc = mx_queue_open(cfg, &g->queue);
    if (rc < 0) {
        fprintf(stderr, "mxgate: cannot open the spool at %s: %s\n", cfg->spool_dir,
                strerror(-rc));
        return 1;
    }
    struct mx_reload_params rp = {
        .path = g->conf,
        .overrides = g->overrides,
        .n_over = g->n_over,
        .boot = g->cfg,
        .queue = g->queue,
    };
    rc = mx_reload_new(&rp, &g->reload);
    if (rc < 0) {
        fprintf(stderr, "mxgate: SMTP server set-up failed: %s\n", strerror(-rc));
        return 1;
    }
    /* Signals go to a signalfd of the main thread; workers block them all. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &sigs, SFD_CLOEXEC);

    struct mx_dataplane_params p = {
        .backend = cfg->dp_backend,
        .workers = cfg->dp_workers,
        .eal_extra = cfg->dp_eal,
        .listen = cfg->listen_smtp,
        .n_listen = cfg->n_listen_smtp,
        .on_accept = mx_smtp_server_accept_current,
        .accept_arg = mx_reload_current(g->reload),
        .on_worker_init = worker_init,
        .init_arg = g,
        .dpdk_address = cfg->dp_address,
        .dpdk_gateway = cfg->dp_gateway,
        .impair = {.drop = cfg->dp_impair.drop,
                   .reorder = cfg->dp_impair.reorder,
                   .duplicate = cfg->dp_impair.duplicate,
                   .delay_ms = cfg->dp_impair.delay_ms,
                   .seed = cfg->dp_impair.seed},
    };
    rc = mx_stats_init(cfg->dp_workers);
    if (rc < 0) {
        fprintf(stderr, "mxgate: counters: %s\n", strerror(-rc));
        return 1;
    }
    rc = mx_dataplane_init(&p);
    if (rc < 0) {
        fprintf(stderr, "mxgate: dataplane start failed: %s\n", strerror(-rc));
        mx_dataplane_cleanup();
        return 1;
    }
    rc = start_dns(cfg);
    if (rc < 0) {
        fprintf(stderr, "mxgate: DNS service: %s\n", strerror(-rc));
        mx_dataplane_cleanup();
        return 1;
    }
    int cfd = -1;
    if (cfg->control_socket && *cfg->control_socket) {
        cfd = mx_control_listen(cfg->control_socket);
        if (cfd < 0) {
            fprintf(stderr, "mxgate: control socket %s: %s\n", cfg->control_socket,
                    strerror(-cfd));
            mx_dataplane_cleanup();
            return 1;
        }
    }
    rc = mx_dataplane_start();
    if (rc < 0) {
        fprintf(stderr, "mxgate: cannot start workers: %s\n", strerror(-rc));
        mx_dataplane_cleanup();
        return 1;
    }
    if (cfg->control_http && *cfg->control_http) {
        rc = mx_console_http_start(cfg->control_http, NULL, NULL, &g->http);
        if (rc < 0)
            fprintf(stderr, "mxgate: metrics endpoint %s: %s (continuing without it)\n",
                    cfg->control_http, strerror(-rc));
        else
            fprintf(stderr, "mxgate: metrics on http://%s/metrics\n", cfg->control_http);
    }
    for (size_t i = 0; i < cfg->n_listen_smtp; i++)
        fprintf(stderr, "mxgate: listening on %s (%s backend, %u workers)\n",
                cfg->listen_smtp[i].text, cfg->dp_backend, cfg->dp_workers);

    for (;;) {
        struct pollfd pf[2] = {{.fd = sfd, .events = POLLIN}, {.fd = cfd, .events = POLLIN}};
        /* old generations are freed from here: look often while some wait */
        int r = poll(pf, cfd >= 0 ? 2 : 1, mx_reload_retired(g->reload) ? 50 : 1000);
        if (r < 0 && errno != EINTR)
            break;
        if (pf[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) == sizeof si) {
                if (si.ssi_signo == SIGHUP) {
                    fprintf(stderr, "mxgate: SIGHUP: reloading %s\n",
                            g->conf ? g->conf : "(defaults)");
                    char *report = NULL;
                    mx_reload_apply(g->reload, &report); /* it logs every outcome */
                    free(report);
                    continue;
                }
                fprintf(stderr, "mxgate: %s: stopping (finishing sessions, at most %u s)\n",
                        strsignal((int)si.ssi_signo), STOP_GRACE_MS / 1000);
                break;
            }
        }
        if (cfd >= 0 && (pf[1].revents & POLLIN))
            mx_control_serve_one(cfd, control, g);
        mx_reload_reap(g->reload);
    }
    if (cfd >= 0) {
        close(cfd);
        unlink(cfg->control_socket);
    }
    mx_dataplane_stop(STOP_GRACE_MS);
    mx_dns_stop();
    if (g->http)
        mx_console_http_stop(g->http);
    mx_queue_close(g->queue);
    mx_reload_free(g->reload);
    mx_dataplane_cleanup();
    mx_stats_fini();
    fprintf(stderr, "mxgate: stopped\n");
    return 0;
}

/*
 * --check also compiles the scan rules (a rule that does not compile is a
 * configuration error) and lists every rule that cannot run, with why.
 */
static int check_rules(const struct mx_config *cfg)
{
    if (!cfg->n_scan_rules)
        return 0;
    struct mx_scan_opts o;
    mx_smtp_scan_opts(cfg, &o);
    struct mx_scan_engine *e;
    char *err = NULL;
    int rc = mx_scan_engine_load(&o, &e, &err);
    if (rc < 0) {
        fprintf(stderr, "scan.rules: %s\n", err ? err : strerror(-rc));
        free(err);
        return 1;
    }
    struct mx_scan_stats st;
    mx_scan_engine_stats(e, &st);
    printf("scan rules: %u live: %u regex (%u Hyperscan exact, %u prefilter+PCRE2, %u PCRE2 "
           "only, %u of them in Hyperscan on ASCII text), %u meta, %u dlp, %u attachment, %u "
           "eval computed natively, %u disabled by score 0, %u skipped\n",
           st.rules, st.regex, st.hs_exact, st.hs_prefilter, st.pcre_only, st.pcre_ascii, st.meta,
           st.dlp, st.attachment, st.native, st.zero_score, st.skipped);
    const char *name, *why;
    for (size_t i = 0; mx_scan_engine_skipped(e, i, &name, &why) == 0; i++)
        printf("skipped: %s (%s)\n", name, why);
    mx_scan_engine_free(e);
    return 0;
}

int main(int argc, char **argv)
{
    const char *conf = NULL;
    const char *overrides[MAX_OVERRIDES];
    size_t n_over = 0;
    bool check = false;
    static const struct option longopts[] = {
        {"check", no_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "c:o:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            conf = optarg;
            break;
        case 'o':
            if (n_over == MAX_OVERRIDES) {
                fprintf(stderr, "mxgate: too many -o overrides (max %d)\n", MAX_OVERRIDES);
                return 1;
            }
            overrides[n_over++] = optarg;
            break;
        case 'C':
            check = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 1;
    }
    struct gateway g = {.conf = conf, .overrides = overrides, .n_over = n_over};
    struct mx_config_errors errs = {0};
    int rc = mx_config_load(conf, overrides, n_over, &g.cfg, &errs);
    if (rc < 0) {
        if (errs.n == 0)
            fprintf(stderr, "mxgate: %s: %s\n", conf ? conf : "(defaults)", strerror(-rc));
        print_errors(&errs);
        mx_config_errors_free(&errs);
        return 1;
    }
    mx_config_errors_free(&errs);
    if (check) {
        rc = check_rules(g.cfg);
        if (rc == 0)
            printf("%s: configuration ok\n", conf ? conf : "(defaults)");
        mx_config_free(g.cfg);
        return rc;
    }
    rc = run(&g);
    mx_config_free(g.cfg);
    return rc;
}
