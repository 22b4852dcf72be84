/*
 * test_reload.c - configuration generations (app/reload.c) without workers:
 * sessions on fake streams prove that a session keeps the generation it
 * started on, that a new one starts on the reloaded configuration, that an
 * invalid file changes nothing and says why with file:line, that an old
 * generation is freed only once its last session ended, and which settings
 * are reported as needing a restart (exact text).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cmocka.h>

#include "app/reload.h"
#include "config/config.h"
#include "dataplane/dataplane.h"
#include "queue/queue.h"
#include "smtp/smtp.h"

static char tmpdir[] = "/tmp/mx-reload-test-XXXXXX";
static char conf_path[512];

/* ---- a transport that records what the session writes ------------------ */

struct fake {
    struct mx_stream s;
    char out[8192];
    size_t len;
    int closes;
};

static int f_write(struct mx_stream *s, const void *buf, size_t len)
{
    struct fake *f = (struct fake *)s;
    if (f->len + len >= sizeof f->out)
        return -ENOBUFS;
    memcpy(f->out + f->len, buf, len);
    f->len += len;
    f->out[f->len] = 0;
    return 0;
}

static void f_close(struct mx_stream *s)
{
    ((struct fake *)s)->closes++;
}

static void f_pause(struct mx_stream *s, bool paused)
{
    (void)s;
    (void)paused;
}

static void f_set_timer(struct mx_stream *s, uint64_t ms)
{
    (void)s;
    (void)ms;
}

static const struct mx_stream_ops fake_ops = {f_write, f_close, f_pause, f_set_timer};

static void fake_init(struct fake *f, uint64_t id)
{
    memset(f, 0, sizeof *f);
    f->s.ops = &fake_ops;
    f->s.id = id;
    struct sockaddr_in *sin = (struct sockaddr_in *)&f->s.peer;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(40000);
    inet_pton(AF_INET, "127.0.0.1", &sin->sin_addr);
}

static void fake_send(struct fake *f, const char *text)
{
    f->len = 0;
    f->out[0] = 0;
    f->s.cb->data(&f->s, f->s.ctx, (const uint8_t *)text, strlen(text));
}

/* the transport reports the end of the connection: the session is freed */
static void fake_gone(struct fake *f)
{
    f->s.cb->closed(&f->s, f->s.ctx, 0);
}

/* ---- configuration files ------------------------------------------------ */

static void write_conf(const char *hostname, unsigned max_rcpt, const char *extra)
{
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", conf_path);
    FILE *fp = fopen(tmp, "w");
    assert_non_null(fp);
    fprintf(fp,
            "listen { smtp = [ \"127.0.0.1:2599\" ]; }\n"
            "spool { dir = \"%s/spool\"; }\n"
            "control { socket = \"%s/mx.sock\"; }\n"
            "smtp { hostname = \"%s\"; max_recipients = %u; }\n"
            "routes { \"*\" = \"maildir:%s/maildir\"; }\n"
            "relay_domains = [ \"example.test\" ];\n%s",
            tmpdir, tmpdir, hostname, max_rcpt, tmpdir, extra);
    assert_int_equal(fclose(fp), 0);
    assert_int_equal(rename(tmp, conf_path), 0);
}

struct world {
    struct mx_config *boot;
    struct mx_queue *q;
    struct mx_reload *r;
};

static int setup(void **state)
{
    static struct world w;
    memset(&w, 0, sizeof w);
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(conf_path, sizeof conf_path, "%s/mxgate.conf", tmpdir);
    write_conf("gen-a.test", 2, "");
    char spool[600];
    snprintf(spool, sizeof spool, "%s/spool", tmpdir);
    mkdir(spool, 0700);
    struct mx_config_errors errs = {0};
    if (mx_config_load(conf_path, NULL, 0, &w.boot, &errs) != 0)
        return -1;
    mx_config_errors_free(&errs);
    if (mx_queue_open(w.boot, &w.q) != 0)
        return -1;
    struct mx_reload_params p = {.path = conf_path, .boot = w.boot, .queue = w.q};
    if (mx_reload_new(&p, &w.r) != 0)
        return -1;
    *state = &w;
    return 0;
}

static int teardown(void **state)
{
    struct world *w = *state;
    mx_reload_free(w->r);
    mx_queue_close(w->q);
    mx_config_free(w->boot);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- tests ------------------------------------------------------------- */

static void session_keeps_its_generation(void **state)
{
    struct world *w = *state;
    assert_int_equal(mx_reload_generation(w->r), 1);

    struct fake old;
    fake_init(&old, 1);
    mx_smtp_server_accept_current(&old.s, mx_reload_current(w->r));
    assert_non_null(old.s.ctx);
    assert_non_null(strstr(old.out, "220 gen-a.test "));

    write_conf("gen-b.test", 4, "");
    char *report = NULL;
    assert_int_equal(mx_reload_apply(w->r, &report), 0);
    assert_string_equal(report, "reloaded: generation 2\n"
                                "smtp.hostname changed: new sessions greet with it; delivery "
                                "(HELO, DSNs) needs a restart\n");
    free(report);
    assert_int_equal(mx_reload_generation(w->r), 2);
    assert_string_equal(mx_reload_config(w->r)->smtp_hostname, "gen-b.test");

    struct fake neu;
    fake_init(&neu, 2);
    mx_smtp_server_accept_current(&neu.s, mx_reload_current(w->r));
    assert_non_null(strstr(neu.out, "220 gen-b.test "));

    /* the old session: old hostname and old recipient limit (2) */
    fake_send(&old, "EHLO client.test\r\n");
    assert_true(strncmp(old.out, "250-gen-a.test\r\n", 16) == 0);
    fake_send(&old, "MAIL FROM:<a@remote.test>\r\nRCPT TO:<u1@example.test>\r\n"
                    "RCPT TO:<u2@example.test>\r\nRCPT TO:<u3@example.test>\r\n");
    assert_non_null(strstr(old.out, "452 4.5.3 "));
    /* the new one: limit 4 */
    fake_send(&neu, "EHLO client.test\r\n");
    assert_true(strncmp(neu.out, "250-gen-b.test\r\n", 16) == 0);
    fake_send(&neu, "MAIL FROM:<a@remote.test>\r\nRCPT TO:<u1@example.test>\r\n"
                    "RCPT TO:<u2@example.test>\r\nRCPT TO:<u3@example.test>\r\n");
    assert_null(strstr(neu.out, "452"));

    /* generation 1 waits for its last session */
    assert_int_equal(mx_reload_retired(w->r), 1);
    assert_int_equal(mx_reload_reap(w->r), 1);
    fake_gone(&old);
    assert_int_equal(mx_reload_reap(w->r), 0);
    fake_gone(&neu);
    assert_int_equal(mx_reload_reap(w->r), 0);
}

static void invalid_file_changes_nothing(void **state)
{
    struct world *w = *state;
    unsigned gen = mx_reload_generation(w->r);
    const struct mx_config *before = mx_reload_config(w->r);
    write_conf("gen-c.test", 3, "no_such_key = 1;\nsmtp { max_errors = \"x\"; }\n");
    char *report = NULL;
    assert_int_equal(mx_reload_apply(w->r, &report), -EINVAL);
    char want[4096];
    snprintf(want, sizeof want, "reload refused: %s is not valid; generation %u stays in effect\n",
             conf_path, gen);
    assert_true(strncmp(report, want, strlen(want)) == 0);
    /* every error, each with file:line */
    snprintf(want, sizeof want, "\n%s:7: unknown key 'no_such_key'\n", conf_path);
    assert_non_null(strstr(report, want));
    snprintf(want, sizeof want, "\n%s:8: smtp.max_errors: expected an integer, got string\n",
             conf_path);
    assert_non_null(strstr(report, want));
    free(report);
    assert_int_equal(mx_reload_generation(w->r), gen);
    assert_ptr_equal(mx_reload_config(w->r), before);
    assert_int_equal(mx_reload_retired(w->r), 0);

    /* and a session still starts on the running generation */
    struct fake f;
    fake_init(&f, 3);
    mx_smtp_server_accept_current(&f.s, mx_reload_current(w->r));
    assert_non_null(strstr(f.out, "220 gen-b.test "));
    fake_gone(&f);
}

static void missing_rule_file_is_refused(void **state)
{
    struct world *w = *state;
    unsigned gen = mx_reload_generation(w->r);
    char extra[700];
    snprintf(extra, sizeof extra, "scan { rules = [ \"%s/none.rules\" ]; }\n", tmpdir);
    write_conf("gen-b.test", 4, extra);
    char *report = NULL;
    assert_int_equal(mx_reload_apply(w->r, &report), -EINVAL);
    assert_non_null(report);
    char want[1200];
    snprintf(want, sizeof want,
             "reload refused: %s cannot be applied; generation %u stays in effect\n"
             "scan.rules: %s/none.rules: No such file or directory\n",
             conf_path, gen, tmpdir);
    assert_string_equal(report, want);
    free(report);
    assert_int_equal(mx_reload_generation(w->r), gen);
}

static struct mx_config *load_text(const char *text)
{
    struct mx_config *cfg = NULL;
    assert_int_equal(mx_config_load_mem("t.conf", text, strlen(text), NULL, 0,
                                        MX_CONFIG_NO_INCLUDE, &cfg, NULL),
                     0);
    return cfg;
}

static void restart_diff_text(void **state)
{
    (void)state;
    struct mx_config *a = load_text("listen { smtp = [ \"127.0.0.1:2525\" ]; }\n"
                                    "smtp { max_recipients = 10; max_message_size = 1000000; }\n"
                                    "routes { \"*\" = \"maildir:var/md\"; }\n");
    /* reloadable only: nothing to report */
    struct mx_config *b = load_text("listen { smtp = [ \"127.0.0.1:2525\" ]; }\n"
                                    "smtp { max_recipients = 50; max_message_size = 500000; }\n"
                                    "routes { \"*\" = \"maildir:var/md\"; }\n"
                                    "trusted_networks = [ \"10.0.0.0/8\" ];\n");
    char out[1024];
    assert_int_equal(mx_reload_restart_diff(a, b, out, sizeof out), 0);
    assert_string_equal(out, "");
    mx_config_free(b);

    b = load_text("listen { smtp = [ \"127.0.0.1:2526\" ]; }\n"
                  "dataplane { workers = 3; }\n"
                  "spool { dir = \"var/other\"; }\n"
                  "smtp { max_recipients = 10; max_message_size = 2000000; }\n"
                  "routes { \"*\" = \"maildir:var/md2\"; }\n"
                  "queue { retry_first = 60s; }\n");
    assert_int_equal(mx_reload_restart_diff(a, b, out, sizeof out), 6);
    assert_string_equal(out, "listen.smtp changed: needs a restart\n"
                             "dataplane.workers changed: needs a restart\n"
                             "spool.dir changed: needs a restart\n"
                             "routes changed: needs a restart\n"
                             "queue.retry_first changed: needs a restart\n"
                             "smtp.max_message_size raised: needs a restart (the spool sizes "
                             "its buffers at start; the old limit stays)\n");
    /* a short buffer is cut, the count is still right */
    char small[16];
    assert_int_equal(mx_reload_restart_diff(a, b, small, sizeof small), 6);
    assert_string_equal(small, "listen.smtp cha");
    assert_int_equal(mx_reload_restart_diff(a, b, NULL, 0), 6);
    mx_config_free(b);
    mx_config_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(session_keeps_its_generation),
        cmocka_unit_test(invalid_file_changes_nothing),
        cmocka_unit_test(missing_rule_file_is_refused),
        cmocka_unit_test(restart_diff_text),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
