/*
 * fuzz_qm_record.c - the spool's record and journal decoders (queue/
 * qm_spool.c) on arbitrary bytes, walked the way recovery walks a segment
 * file: decode, and on a bad record resync at the next offset. Every record
 * that decodes must re-encode to exactly the same envelope bytes, and no
 * input may crash, leak or read out of bounds.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "queue/qm_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;
    unsigned steps = 0;
    while (off < size && steps++ < 4096) {
        struct qm_record rec;
        long n = qm_record_decode(data + off, size - off, &rec);
        if (n > 0) {
            size_t env_len = (size_t)(rec.body - (data + off)) - QM_REC_HDR;
            size_t want = qm_env_size(&rec.env);
            if (want != env_len)
                abort();
            uint8_t *re = malloc(want);
            if (re) {
                qm_env_encode(&rec.env, re);
                if (memcmp(re, data + off + QM_REC_HDR, want) != 0)
                    abort();
                free(re);
            }
            if (rec.body + rec.body_len > data + size)
                abort();
            qm_env_free(&rec.env);
            off += (size_t)n;
            continue;
        }
        if (n == -EAGAIN)
            break;
        off++;
    }
    /*
     * Random bytes almost never carry a valid CRC, which would leave the
     * envelope decoder unexercised: fix the CRC of the leading record up
     * and decode it again.
     */
    if (size >= QM_REC_HDR && size <= (1u << 20)) {
        uint8_t *copy = malloc(size);
        if (copy) {
            memcpy(copy, data, size);
            uint64_t env_len = (uint64_t)copy[8] | (uint64_t)copy[9] << 8 |
                               (uint64_t)copy[10] << 16 | (uint64_t)copy[11] << 24;
            if (env_len <= size - QM_REC_HDR) {
                uint64_t body_len = size - QM_REC_HDR - env_len;
                for (int i = 0; i < 8; i++)
                    copy[16 + i] = (uint8_t)(body_len >> (8 * i));
                memset(copy + 12, 0, 4);
                uint32_t c = qm_crc32c(0, copy, size);
                for (int i = 0; i < 4; i++)
                    copy[12 + i] = (uint8_t)(c >> (8 * i));
                struct qm_record rec;
                long n = qm_record_decode(copy, size, &rec);
                if (n > 0) {
                    size_t want = qm_env_size(&rec.env);
                    uint8_t *re = malloc(want ? want : 1);
                    if (want != env_len)
                        abort();
                    if (re) {
                        qm_env_encode(&rec.env, re);
                        if (memcmp(re, copy + QM_REC_HDR, want) != 0)
                            abort();
                        free(re);
                    }
                    qm_env_free(&rec.env);
                }
            }
            free(copy);
        }
    }
    /* the same bytes as a journal */
    off = 0;
    steps = 0;
    while (off < size && steps++ < 4096) {
        struct qm_jentry e;
        long n = qm_jentry_decode(data + off, size - off, &e);
        if (n > 0) {
            uint8_t buf[QM_J_HDR + QM_J_ERR_MAX];
            size_t l = qm_jentry_encode(&e, buf);
            if (l != (size_t)n || memcmp(buf, data + off, l) != 0)
                abort();
            off += (size_t)n;
            continue;
        }
        if (n == -EAGAIN)
            break;
        off++;
    }
    return 0;
}
