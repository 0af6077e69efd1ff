/* SPDX-License-Identifier: MIT */
/*
 * size.c - sizes written as qemu-img writes them (contract in
 * include/rblock/size.h).
 */
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "rblock/size.h"

/* Multiplier of a size suffix as QEMU's suffix_mul (util/cutils.c): b/B
 * bytes, k/K KiB, m/M MiB ... e/E EiB; 0 when @c is no suffix. */
static uint64_t suffix_mul(char c)
{
    static const char sfx[] = "kmgtpe";
    const char *p;

    if (c == 'b' || c == 'B')
        return 1;
    p = c ? strchr(sfx, c | 0x20) : NULL;
    return p ? (uint64_t)1 << (10 * (p - sfx + 1)) : 0;
}

/*
 * As QEMU's qemu_strtosz (util/cutils.c do_strtosz) with nothing allowed
 * after the size: decimal digits, an optional fraction (".5", "1.", which
 * then needs a suffix other than B), one optional suffix, or "0x" and hex
 * digits alone.  The fraction is exact to 64 bits and rounded half up.
 */
int rb_parse_size(const char *s, uint64_t *out)
{
    __extension__ typedef unsigned __int128 u128;
    const char *p = s;
    uint64_t val = 0, valf = 0, mul;
    bool digits = false;
    u128 r;

    if (!s)
        return -EINVAL;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        char *end;

        if (!isxdigit((unsigned char)s[2]))
            return -EINVAL;
        errno = 0;
        val = strtoull(s + 2, &end, 16);
        if (errno || *end)
            return -EINVAL;
        *out = val;
        return 0;
    }
    for (; isdigit((unsigned char)*p); p++, digits = true) {
        if (val > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
            return -EINVAL;
        val = val * 10 + (uint64_t)(*p - '0');
    }
    if (*p == '.') {
        char frac[48] = "0.";
        size_t n = 2;
        double f;

        for (p++; isdigit((unsigned char)*p); p++, digits = true) {
            if (n < sizeof(frac) - 1)
                frac[n++] = *p;
        }
        frac[n] = '\0';
        f = strtod(frac, NULL);
        if (f >= 1.0) {
            if (val == UINT64_MAX)
                return -EINVAL;
            val++;
        } else {
            valf = (uint64_t)(f * 0x1p64);
        }
    }
    if (!digits)
        return -EINVAL;
    mul = suffix_mul(*p);
    if (mul)
        p++;
    else
        mul = 1;
    if (*p || (mul == 1 && valf))
        return -EINVAL; /* a fraction needs a scale */
    r = (u128)val * mul;
    r += ((u128)valf * mul) >> 64;
    r += (uint64_t)((u128)valf * mul) >> 63;
    if (r > UINT64_MAX)
        return -EINVAL;
    *out = (uint64_t)r;
    return 0;
}
