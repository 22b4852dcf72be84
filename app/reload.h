/*
 * reload.h - configuration generations of a running mxgate (hot reload).
 *
 * A generation is one loaded configuration and the SMTP server built from it
 * (TLS context, compiled scan rules, limits, policy). New sessions start on
 * the current generation and keep it until they end; `mxctl reload` and
 * SIGHUP build the next one on the main thread and publish it with one
 * atomic store. An old generation is freed by the main thread once every
 * worker passed an RCU quiescent state after the swap (rte_rcu_qsbr, see
 * dataplane.h) and no session holds it any more.
 *
 * Everything here runs on the main thread only, except what workers read
 * through mx_reload_current() (struct mx_smtp_current, smtp.h).
 */
#ifndef MX_APP_RELOAD_H
#define MX_APP_RELOAD_H

#include <stddef.h>

struct mx_config;
struct mx_queue;
struct mx_reload;
struct mx_smtp_current;

struct mx_reload_params {
    const char *path;              /**< configuration file, NULL for the defaults */
    const char *const *overrides;  /**< the -o "key.path=value" strings, re-applied each time */
    size_t n_over;
    struct mx_config *boot;        /**< the configuration the gateway started with: the
                                        listeners, the queue and the dataplane keep using
                                        it, so the caller frees it after mx_reload_free() */
    struct mx_queue *queue;        /**< where every generation's sessions queue mail */
};

/**
 * Build generation 1 from p->boot.
 * @return 0, or -errno from mx_smtp_server_new() (logged there).
 */
int mx_reload_new(const struct mx_reload_params *p, struct mx_reload **out);

/** The accept argument for mx_smtp_server_accept_current(). */
struct mx_smtp_current *mx_reload_current(struct mx_reload *r);

/** Configuration of the current generation (what `config export` shows). */
const struct mx_config *mx_reload_config(const struct mx_reload *r);

/** Number of the current generation (1 at start, +1 per applied reload). */
unsigned mx_reload_generation(const struct mx_reload *r);

/** Generations replaced but not freed yet (sessions still on them). */
unsigned mx_reload_retired(const struct mx_reload *r);

/**
 * Load the file again; if it is valid and its server can be built, publish
 * it as the next generation. Every step is logged to stderr.
 * @param report receives a malloc'd text for the operator: on success
 *        "reloaded: generation N" and one "KEY changed: needs a restart" line
 *        per setting that only a restart applies; on failure every error,
 *        with file:line where known. May be NULL on -ENOMEM.
 * @return 0 (applied), -EINVAL (invalid configuration or rules: nothing
 *         changed), -ENOMEM or another -errno (nothing changed).
 */
int mx_reload_apply(struct mx_reload *r, char **report);

/**
 * Free the retired generations that no worker and no session can reach
 * any more. Cheap; call it from the main loop.
 * @return the number still retired.
 */
unsigned mx_reload_reap(struct mx_reload *r);

/**
 * Free every generation, current and retired. Only after the workers were
 * stopped (mx_dataplane_stop()). NULL is accepted.
 */
void mx_reload_free(struct mx_reload *r);

/**
 * Settings a running gateway applies only at start: listen addresses, the
 * dataplane, DNS servers, spool and control endpoints, routes and queue
 * settings (the queue keeps the start-up configuration), and a raised
 * smtp.max_message_size (the spool sizes its buffers at start).
 *
 * @param running the configuration the gateway started with
 * @param next    the newly loaded one
 * @param out     receives one "KEY changed: needs a restart\n" line (or a
 *                more precise "KEY raised: ...", "KEY changed: ..." line) per
 *                setting that differs (NUL-terminated, truncated to len)
 * @param len     size of out (may be 0 when out is NULL)
 * @return the number of such settings (0: the whole file applies).
 */
int mx_reload_restart_diff(const struct mx_config *running, const struct mx_config *next,
                           char *out, size_t len);

#endif
