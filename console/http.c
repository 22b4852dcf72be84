/*
 * http.c - the control.http endpoint: GET /metrics (Prometheus text format)
 * and GET /api/stats (JSON, or ?format=text) from a libmicrohttpd thread;
 * other /api/ paths go to a handler the application registers.
 */
#include "console/console.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mx_console_http {
    struct MHD_Daemon *d;
    mx_console_api_fn api;
    void *api_arg;
    unsigned port;
};

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, char *body,
                             const char *type)
{
    if (!body)
        return MHD_NO;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
    struct mx_console_http *h = cls;
    (void)version;
    (void)upload;
    /* MHD calls once for the headers first; answer on the second call. */
    if (*con_cls == NULL) {
        *con_cls = h;
        return MHD_YES;
    }
    if (*upload_size != 0) {
        *upload_size = 0; /* the admin API takes no bodies: discard */
        return MHD_YES;
    }
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    if (strcmp(url, "/metrics") == 0 || strcmp(url, "/api/stats") == 0) {
        if (!get)
            return reply(c, 405, strdup("method not allowed\n"), "text/plain");
        struct mx_stats_snapshot *s = malloc(sizeof(*s));
        if (!s)
            return MHD_NO;
        mx_stats_snapshot(s);
        char *body;
        const char *type;
        if (url[1] == 'm') {
            body = mx_stats_render_prometheus(s);
            type = "text/plain; version=0.0.4; charset=utf-8";
        } else {
            const char *fmt = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "format");
            bool text = fmt && strcmp(fmt, "text") == 0;
            body = text ? mx_stats_render_text(s) : mx_stats_render_json(s);
            type = text ? "text/plain; charset=utf-8" : "application/json";
        }
        free(s);
        return reply(c, 200, body, type);
    }
    if (strncmp(url, "/api/", 5) == 0 && h->api) {
        char *body = NULL;
        const char *type = "application/json";
        int status = h->api(h->api_arg, method, url, &body, &type);
        return reply(c, (unsigned)status, body ? body : strdup(""), type);
    }
    return reply(c, 404, strdup("not found\n"), "text/plain");
}

int mx_console_http_start(const char *addr, mx_console_api_fn api, void *api_arg,
                          struct mx_console_http **out)
{
    char host[64];
    const char *port_s;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (!addr)
        return -EINVAL;
    if (addr[0] == '[') {
        const char *rb = strchr(addr, ']');
        if (!rb || rb[1] != ':' || (size_t)(rb - addr - 1) >= sizeof(host))
            return -EINVAL;
        memcpy(host, addr + 1, (size_t)(rb - addr - 1));
        host[rb - addr - 1] = '\0';
        port_s = rb + 2;
    } else {
        const char *colon = strrchr(addr, ':');
        if (!colon || (size_t)(colon - addr) >= sizeof(host))
            return -EINVAL;
        memcpy(host, addr, (size_t)(colon - addr));
        host[colon - addr] = '\0';
        port_s = colon + 1;
    }
    char *end;
    unsigned long port = strtoul(port_s, &end, 10);
    if (*port_s == '\0' || *end != '\0' || port > 65535)
        return -EINVAL;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        flags |= MHD_USE_IPv6;
    } else {
        return -EINVAL;
    }
    struct mx_console_http *h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    h->api = api;
    h->api_arg = api_arg;
    h->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, handle, h, MHD_OPTION_SOCK_ADDR,
                            (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT, 64,
                            MHD_OPTION_CONNECTION_TIMEOUT, 30, MHD_OPTION_END);
    if (!h->d) {
        free(h);
        return -EADDRINUSE;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : (unsigned)port;
    *out = h;
    return 0;
}

unsigned mx_console_http_port(const struct mx_console_http *h)
{
    return h ? h->port : 0;
}

void mx_console_http_stop(struct mx_console_http *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->d);
    free(h);
}
