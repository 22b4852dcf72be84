/*
 * control.c - unix-socket request/answer channel between mxctl and mxgate.
 * Requests are tiny and rare, so the gateway's main thread serves them one
 * at a time with short timeouts; a stuck client cannot hold it for long.
 */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "app/control.h"

#define REQ_MAX 4096
#define ARGS_MAX 32

static int fill_addr(const char *path, struct sockaddr_un *sun)
{
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sun->sun_path)
        return -ENAMETOOLONG;
    strcpy(sun->sun_path, path);
    return 0;
}

int mx_control_listen(const char *path)
{
    struct sockaddr_un sun;
    int rc = fill_addr(path, &sun);
    if (rc < 0)
        return rc;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    /* A socket file left by a killed gateway: remove it if nobody answers. */
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0) {
        if (connect(probe, (struct sockaddr *)&sun, sizeof sun) == 0) {
            close(probe);
            close(fd);
            return -EADDRINUSE;
        }
        close(probe);
    }
    unlink(path);
    if (bind(fd, (struct sockaddr *)&sun, sizeof sun) != 0 || listen(fd, 16) != 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    chmod(path, 0600);
    return fd;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

void mx_control_serve_one(int lfd, mx_control_fn fn, void *arg)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    struct timeval tv = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char req[REQ_MAX];
    size_t len = 0;
    while (len < sizeof req - 1) {
        ssize_t r = recv(fd, req + len, sizeof req - 1 - len, 0);
        if (r <= 0)
            break;
        len += (size_t)r;
        if (memchr(req, '\n', len))
            break;
    }
    req[len] = 0;
    char *nl = strchr(req, '\n');
    if (!nl) {
        write_all(fd, "ERR request line missing or too long\n", 37);
        close(fd);
        return;
    }
    *nl = 0;
    char *argv[ARGS_MAX];
    int argc = 0;
    for (char *save = NULL, *t = strtok_r(req, " \t", &save); t && argc < ARGS_MAX;
         t = strtok_r(NULL, " \t", &save))
        argv[argc++] = t;
    char *out = NULL;
    int rc = argc ? fn(arg, argc, argv, &out) : -EINVAL;
    if (rc == 0) {
        write_all(fd, "OK\n", 3);
        if (out)
            write_all(fd, out, strlen(out));
    } else {
        /* the reason may span lines (a refused reload lists every error) */
        const char *why = out ? out : strerror(-rc);
        size_t wl = strlen(why);
        write_all(fd, "ERR ", 4);
        write_all(fd, why, wl);
        if (wl == 0 || why[wl - 1] != '\n')
            write_all(fd, "\n", 1);
    }
    free(out);
    close(fd);
}

int mx_control_request(const char *path, int argc, char **argv)
{
    char req[REQ_MAX];
    size_t len = 0;
    for (int i = 0; i < argc; i++) {
        int n = snprintf(req + len, sizeof req - len, "%s%s", i ? " " : "", argv[i]);
        if (n < 0 || (size_t)n >= sizeof req - len - 1) {
            fprintf(stderr, "mxctl: request too long\n");
            return 2;
        }
        len += (size_t)n;
    }
    char *body;
    int code = mx_control_fetch(path, req, &body);
    if (code == 2)
        fprintf(stderr, "mxctl: cannot reach mxgate at %s\n", path);
    else if (code == 1)
        fprintf(stderr, "mxctl: %s", body);
    else
        fputs(body, stdout);
    free(body);
    return code;
}

int mx_control_fetch(const char *path, const char *request, char **body)
{
    *body = NULL;
    struct sockaddr_un sun;
    if (fill_addr(path, &sun) < 0)
        return 2;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 2;
    /* a reload may compile a large rule set first (minutes without the cache) */
    bool slow = strncmp(request, "reload", 6) == 0;
    struct timeval tv = {.tv_sec = slow ? 600 : 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sun, sizeof sun) != 0) {
        close(fd);
        return 2;
    }
    write_all(fd, request, strlen(request));
    write_all(fd, "\n", 1);
    size_t len = 0, cap = 65536;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (!buf) {
            close(fd);
            return 2;
        }
        ssize_t r = recv(fd, buf + len, cap - len, 0);
        if (r <= 0)
            break;
        len += (size_t)r;
        if (len == cap) {
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb)
                free(buf);
            buf = nb;
        }
    }
    close(fd);
    buf[len] = 0;
    char *nl = strchr(buf, '\n');
    int code = strncmp(buf, "OK", 2) == 0 ? 0 : 1;
    if (!nl) {
        free(buf);
        return 2;
    }
    /* OK: the body follows the status line; ERR: the reason is on it */
    char *from = code == 0 ? nl + 1 : buf + (strncmp(buf, "ERR ", 4) == 0 ? 4 : 0);
    memmove(buf, from, len - (size_t)(from - buf) + 1);
    *body = buf;
    return code;
}
