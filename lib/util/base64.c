/* SPDX-License-Identifier: MIT */
/*
 * base64.c - RFC 4648 base64.  The decoder is strict (canonical encodings
 * only) so that what a client sends is exactly what it means.
 */
#include <stdint.h>

#include "rblock/base64.h"

static const char enc_table[64] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* 0..63 for alphabet characters, 64 for '=', 255 for anything else. */
static uint8_t dec_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return (uint8_t)(c - 'A');
    if (c >= 'a' && c <= 'z')
        return (uint8_t)(c - 'a' + 26);
    if (c >= '0' && c <= '9')
        return (uint8_t)(c - '0' + 52);
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    if (c == '=')
        return 64;
    return 255;
}

size_t rb_base64_encode(char *dst, const void *src, size_t len)
{
    const uint8_t *s = src;
    size_t i = 0, o = 0;

    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        dst[o++] = enc_table[v >> 18];
        dst[o++] = enc_table[(v >> 12) & 63];
        dst[o++] = enc_table[(v >> 6) & 63];
        dst[o++] = enc_table[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        dst[o++] = enc_table[v >> 18];
        dst[o++] = enc_table[(v >> 12) & 63];
        dst[o++] = '=';
        dst[o++] = '=';
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        dst[o++] = enc_table[v >> 18];
        dst[o++] = enc_table[(v >> 12) & 63];
        dst[o++] = enc_table[(v >> 6) & 63];
        dst[o++] = '=';
    }
    return o;
}

long long rb_base64_decode(void *dst, const char *src, size_t len, size_t *bad_pos)
{
    uint8_t *d = dst;
    size_t o = 0;

    if (len % 4 != 0) {
        *bad_pos = len;
        return -1;
    }
    for (size_t i = 0; i < len; i += 4) {
        uint8_t v[4];
        bool last = i + 4 == len;
        int pad = 0;

        for (int k = 0; k < 4; k++) {
            v[k] = dec_value((unsigned char)src[i + k]);
            if (v[k] == 255) {
                *bad_pos = i + (size_t)k;
                return -1;
            }
            if (v[k] == 64) {
                /* '=' only in the last group, in places 2 and 3, and
                 * nothing but '=' after the first one. */
                if (!last || k < 2) {
                    *bad_pos = i + (size_t)k;
                    return -1;
                }
                pad++;
            } else if (pad) {
                *bad_pos = i + (size_t)k;
                return -1;
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 |
                     (uint32_t)(pad >= 2 ? 0 : v[2]) << 6 | (pad >= 1 ? 0 : v[3]);
        /* Non-canonical: bits that the padding drops must be zero. */
        if ((pad == 2 && (v[1] & 15)) || (pad == 1 && (v[2] & 3))) {
            *bad_pos = i + (size_t)(3 - pad);
            return -1;
        }
        d[o++] = (uint8_t)(w >> 16);
        if (pad < 2)
            d[o++] = (uint8_t)(w >> 8);
        if (pad < 1)
            d[o++] = (uint8_t)w;
    }
    return (long long)o;
}
