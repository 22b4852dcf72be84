/*
 * corpus.c - loads a benchmark corpus (Maildir, folder of files, mbox) and
 * turns each message into SMTP wire form once, up front, so that the load
 * generator measures the server and not its own string handling.
 */
#include "perf/corpus.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* Length of the line starting at p (without its line end) and of its end. */
static size_t line_len(const char *p, const char *end, size_t *eol)
{
    const char *q = p;
    while (q < end && *q != '\r' && *q != '\n')
        q++;
    *eol = 0;
    if (q < end) {
        if (*q == '\r' && q + 1 < end && q[1] == '\n')
            *eol = 2;
        else
            *eol = 1;
    }
    return (size_t)(q - p);
}

/* Copy the value of a Message-ID header (first line plus folded lines). */
static char *extract_msgid(const char *v, size_t n)
{
    char *id = malloc(n + 1);
    if (!id)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = v[i];
        if (ch == '\r' || ch == '\n' || ch == ' ' || ch == '\t')
            continue;
        id[k++] = ch;
    }
    id[k] = '\0';
    return id;
}

int mx_bench_msg_from_raw(const char *raw, size_t len, int strip_msgid, struct mx_bench_msg *out)
{
    memset(out, 0, sizeof(*out));
    /* Worst case every byte is a bare line end (doubled) or a leading dot. */
    size_t cap = len * 2 + 8;
    char *w = malloc(cap);
    if (!w)
        return -ENOMEM;
    size_t o = 0;
    const char *p = raw, *end = raw + len;
    int in_header = 1, skipping = 0;
    while (p < end) {
        size_t eol;
        size_t n = line_len(p, end, &eol);
        if (in_header) {
            if (n == 0) {
                in_header = 0;
                skipping = 0;
            } else if (skipping && (p[0] == ' ' || p[0] == '\t')) {
                /* folded continuation of the stripped Message-ID */
                char *more = out->message_id;
                size_t ml = more ? strlen(more) : 0;
                char *add = more ? extract_msgid(p, n) : NULL;
                if (add) {
                    char *j = realloc(more, ml + strlen(add) + 1);
                    if (j) {
                        strcpy(j + ml, add);
                        out->message_id = j;
                    }
                    free(add);
                }
                p += n + eol;
                continue;
            } else {
                skipping = 0;
                if (strip_msgid && !out->message_id && n >= 11 &&
                    strncasecmp(p, "Message-ID:", 11) == 0) {
                    out->message_id = extract_msgid(p + 11, n - 11);
                    skipping = 1;
                    p += n + eol;
                    continue;
                }
            }
        }
        if (n > 0 && p[0] == '.')
            w[o++] = '.';
        memcpy(w + o, p, n);
        o += n;
        w[o++] = '\r';
        w[o++] = '\n';
        p += n + eol;
    }
    memcpy(w + o, ".\r\n", 3);
    o += 3;
    out->wire = w;
    out->wire_len = o;
    out->raw_len = len;
    return 0;
}

void mx_bench_msg_free(struct mx_bench_msg *m)
{
    free(m->wire);
    free(m->message_id);
    memset(m, 0, sizeof(*m));
}

static int read_file(const char *path, char **buf, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -EINVAL;
    }
    char *b = malloc((size_t)st.st_size + 1);
    if (!b) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, b + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    b[got] = '\0';
    *buf = b;
    *len = got;
    return 0;
}

static int corpus_add(struct mx_bench_corpus *c, size_t *cap, const char *raw, size_t len,
                      int strip)
{
    if (c->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        struct mx_bench_msg *m = realloc(c->msgs, nc * sizeof(*m));
        if (!m)
            return -ENOMEM;
        c->msgs = m;
        *cap = nc;
    }
    int rc = mx_bench_msg_from_raw(raw, len, strip, &c->msgs[c->n]);
    if (rc < 0)
        return rc;
    c->bytes += len;
    c->n++;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file of dir (sorted by name) becomes one message. */
static int load_dir(const char *dir, int strip, size_t limit, struct mx_bench_corpus *c,
                    size_t *cap)
{
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    char **names = NULL;
    size_t nn = 0, ncap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        if (nn == ncap) {
            ncap = ncap ? ncap * 2 : 256;
            char **j = realloc(names, ncap * sizeof(*names));
            if (!j) {
                rc = -ENOMEM;
                break;
            }
            names = j;
        }
        if (!(names[nn] = strdup(de->d_name))) {
            rc = -ENOMEM;
            break;
        }
        nn++;
    }
    closedir(d);
    if (rc == 0)
        qsort(names, nn, sizeof(*names), cmp_str);
    for (size_t i = 0; rc == 0 && i < nn && (!limit || c->n < limit); i++) {
        char path[4096];
        if (snprintf(path, sizeof(path), "%s/%s", dir, names[i]) >= (int)sizeof(path))
            continue;
        char *buf;
        size_t len;
        if (read_file(path, &buf, &len) < 0)
            continue; /* subfolders and unreadable files are not messages */
        rc = corpus_add(c, cap, buf, len, strip);
        free(buf);
    }
    for (size_t i = 0; i < nn; i++)
        free(names[i]);
    free(names);
    return rc;
}

/*
 * mbox: a message starts at a line "From " at the start of the file or
 * after a line end. The "From " separator line itself is not part of the
 * message; lines of the form ">+From " lose one '>' (mboxrd unescaping).
 */
static int load_mbox(const char *path, int strip, size_t limit, struct mx_bench_corpus *c,
                     size_t *cap)
{
    char *buf;
    size_t len;
    int rc = read_file(path, &buf, &len);
    if (rc < 0)
        return rc;
    char *tmp = malloc(len + 1);
    if (!tmp) {
        free(buf);
        return -ENOMEM;
    }
    const char *p = buf, *end = buf + len;
    size_t t = 0;
    int have = 0;
    while (p < end && rc == 0) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *next = nl ? nl + 1 : end;
        size_t n = (size_t)(next - p);
        if (n >= 5 && memcmp(p, "From ", 5) == 0) {
            if (have && t > 0 && (!limit || c->n < limit))
                rc = corpus_add(c, cap, tmp, t, strip);
            have = 1;
            t = 0;
        } else if (have) {
            const char *q = p;
            while (q < next && *q == '>')
                q++;
            if (q > p && (size_t)(next - q) >= 5 && memcmp(q, "From ", 5) == 0) {
                p++;
                n--;
            }
            memcpy(tmp + t, p, n);
            t += n;
        }
        p = next;
    }
    if (rc == 0 && have && t > 0 && (!limit || c->n < limit))
        rc = corpus_add(c, cap, tmp, t, strip);
    free(tmp);
    free(buf);
    return rc;
}

int mx_bench_corpus_load(const char *path, int strip_msgid, size_t limit,
                         struct mx_bench_corpus *c)
{
    memset(c, 0, sizeof(*c));
    size_t cap = 0;
    struct stat st;
    if (stat(path, &st) < 0)
        return -errno;
    int rc;
    if (S_ISREG(st.st_mode)) {
        rc = load_mbox(path, strip_msgid, limit, c, &cap);
    } else if (S_ISDIR(st.st_mode)) {
        char sub[4096];
        struct stat s2;
        snprintf(sub, sizeof(sub), "%s/cur", path);
        int maildir = stat(sub, &s2) == 0 && S_ISDIR(s2.st_mode);
        snprintf(sub, sizeof(sub), "%s/new", path);
        maildir |= stat(sub, &s2) == 0 && S_ISDIR(s2.st_mode);
        if (maildir) {
            snprintf(sub, sizeof(sub), "%s/cur", path);
            rc = load_dir(sub, strip_msgid, limit, c, &cap);
            if (rc == -ENOENT)
                rc = 0;
            snprintf(sub, sizeof(sub), "%s/new", path);
            int r2 = load_dir(sub, strip_msgid, limit, c, &cap);
            if (rc == 0 && r2 != -ENOENT)
                rc = r2;
        } else {
            rc = load_dir(path, strip_msgid, limit, c, &cap);
        }
    } else {
        rc = -EINVAL;
    }
    if (rc == 0 && c->n == 0)
        rc = -ENOENT;
    if (rc < 0)
        mx_bench_corpus_free(c);
    return rc;
}

void mx_bench_corpus_free(struct mx_bench_corpus *c)
{
    for (size_t i = 0; i < c->n; i++)
        mx_bench_msg_free(&c->msgs[i]);
    free(c->msgs);
    memset(c, 0, sizeof(*c));
}
