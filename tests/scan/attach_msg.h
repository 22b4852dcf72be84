/*
 * attach_msg.h - a test message with one text part and base64 attachments,
 * shared by test_archive.c and archive_bench.c.
 */
#ifndef MX_TESTS_SCAN_ATTACH_MSG_H
#define MX_TESTS_SCAN_ATTACH_MSG_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One attachment of attach_msgv(). */
struct attach_part {
    const char *name;
    const uint8_t *data;
    size_t len;
};

/* The message (malloc'd, NUL-terminated; NULL when out of memory) with the n
 * parts as attachments, in order; *out_len is its length when out_len is not
 * NULL. */
static inline char *attach_msgv(const struct attach_part *parts, size_t n, size_t *out_len)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t cap = 256;
    for (size_t k = 0; k < n; k++)
        cap += parts[k].len / 3 * 4 + parts[k].len / 57 * 2 + 512 + 2 * strlen(parts[k].name);
    char *m = malloc(cap);
    if (!m)
        return NULL;
    size_t p = (size_t)snprintf(m, cap,
                                "From: a@example.com\r\nSubject: files\r\n"
                                "Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n"
                                "Content-Type: text/plain\r\n\r\nsee attached\r\n");
    for (size_t k = 0; k < n; k++) {
        const char *name = parts[k].name;
        const uint8_t *data = parts[k].data;
        size_t len = parts[k].len;
        p += (size_t)snprintf(m + p, cap - p,
                              "--zz\r\n"
                              "Content-Type: application/octet-stream; name=\"%s\"\r\n"
                              "Content-Disposition: attachment; filename=\"%s\"\r\n"
                              "Content-Transfer-Encoding: base64\r\n\r\n",
                              name, name);
        for (size_t i = 0; i < len; i += 3) {
            uint32_t v = (uint32_t)data[i] << 16;
            if (i + 1 < len)
                v |= (uint32_t)data[i + 1] << 8;
            if (i + 2 < len)
                v |= data[i + 2];
            m[p++] = b64[v >> 18];
            m[p++] = b64[(v >> 12) & 63];
            m[p++] = i + 1 < len ? b64[(v >> 6) & 63] : '=';
            m[p++] = i + 2 < len ? b64[v & 63] : '=';
            if ((i / 3) % 19 == 18 || i + 3 >= len) {
                m[p++] = '\r';
                m[p++] = '\n';
            }
        }
    }
    p += (size_t)snprintf(m + p, cap - p, "--zz--\r\n");
    if (out_len)
        *out_len = p;
    return m;
}

/* The message with `data` as its one attachment `name` (see attach_msgv()). */
static inline char *attach_msg(const char *name, const uint8_t *data, size_t len, size_t *out_len)
{
    const struct attach_part part = {name, data, len};
    return attach_msgv(&part, 1, out_len);
}

#endif
