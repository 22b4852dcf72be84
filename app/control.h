/*
 * control.h - the control socket of a running mxgate (used by mxctl).
 *
 * Protocol: one request line per connection ("queue list --json\n"); the
 * answer is a status line, "OK" or "ERR <reason>", then the body; the
 * gateway closes the connection when the answer is complete.
 */
#ifndef MX_APP_CONTROL_H
#define MX_APP_CONTROL_H

#include <stddef.h>

/** Handles one request; returns 0 and a malloc'd body, or -errno and a reason. */
typedef int (*mx_control_fn)(void *arg, int argc, char **argv, char **out);

/** Open the listening unix socket at path (replacing a stale one). fd or -errno. */
int mx_control_listen(const char *path);

/** Accept and answer one pending request on listen fd lfd. */
void mx_control_serve_one(int lfd, mx_control_fn fn, void *arg);

/**
 * mxctl side: send argv as one request to the socket at path; the body is
 * written to stdout. Returns the process exit code (0 OK, 1 ERR, 2 no gateway).
 */
int mx_control_request(const char *path, int argc, char **argv);

/**
 * Like mx_control_request() but returns the body (malloc'd) in *body.
 * Returns 0 on OK, 1 on ERR (body holds the reason), 2 when unreachable.
 */
int mx_control_fetch(const char *path, const char *request, char **body);

#endif
