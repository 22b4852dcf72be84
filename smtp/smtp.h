/*
 * smtp.h - ESMTP server and client.
 *
 * The core is an incremental, transport-agnostic state machine (bytes in,
 * reply bytes out, no blocking). mx_smtp_server binds it to the stream
 * interface of dataplane.h and hands message bytes to the queue.
 *
 * (The smtp module owner extends this header with the session-level API
 * used by the unit tests and the fuzz targets.)
 */
#ifndef MX_SMTP_H
#define MX_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mx_config;
struct mx_queue;
struct mx_stream;
struct mx_smtp_server;

/**
 * Create the server side: TLS context (when smtp.tls.cert/key are set),
 * limits and policy from cfg; accepted messages go to q.
 * @return 0 or -errno (with a log line saying why, e.g. unreadable key).
 */
int mx_smtp_server_new(const struct mx_config *cfg, struct mx_queue *q,
                       struct mx_smtp_server **out);

void mx_smtp_server_free(struct mx_smtp_server *srv);

/** mx_accept_fn for the dataplane: starts an SMTP session on the stream. */
void mx_smtp_server_accept(struct mx_stream *s, void *srv);

/** Number of sessions open on the calling worker (graceful shutdown). */
unsigned mx_smtp_server_sessions(void);

#endif
