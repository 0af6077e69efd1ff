/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"

void complain(const char *fmt, ...)
{
    va_list ap;

    fputs("rblock: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

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
int parse_size(const char *s, uint64_t *out)
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

int parse_output(const char *s, bool *json)
{
    if (strcmp(s, "human") == 0) {
        *json = false;
        return 0;
    }
    if (strcmp(s, "json") == 0) {
        *json = true;
        return 0;
    }
    complain("--output must be 'human' or 'json', not '%s'", s);
    return -EINVAL;
}

struct rb_image *open_image(const char *path, const char *fmt, bool write)
{
    struct rb_open_opts opts = {.format = fmt, .write = write, .lock = write};
    struct rb_error err = {0};
    struct rb_image *img = rb_image_open(path, &opts, &err);

    if (!img)
        complain("%s", rb_error_msg(&err, -EIO));
    return img;
}

struct progress {
    bool enabled;
    uint64_t total;
    struct timespec start;
    struct timespec last;
};

static double elapsed(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

struct progress *progress_new(bool enabled, uint64_t total_bytes)
{
    struct progress *p = calloc(1, sizeof(*p));

    if (!p)
        return NULL;
    p->enabled = enabled && isatty(STDERR_FILENO);
    p->total = total_bytes;
    clock_gettime(CLOCK_MONOTONIC, &p->start);
    p->last = p->start;
    return p;
}

void progress_update(struct progress *p, uint64_t done)
{
    struct timespec now;
    double t, rate, left;

    if (!p || !p->enabled)
        return;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (elapsed(&p->last, &now) < 0.2 && done < p->total)
        return;
    p->last = now;
    t = elapsed(&p->start, &now);
    rate = t > 0 ? (double)done / t : 0;
    left = rate > 0 ? (double)(p->total - done) / rate : 0;
    fprintf(stderr, "\r    (%6.2f/100%%)  %8.1f MiB/s  %4.0fs left ",
            p->total ? 100.0 * (double)done / (double)p->total : 100.0,
            rate / 1048576.0, left);
}

void progress_done(struct progress *p)
{
    if (!p)
        return;
    if (p->enabled) {
        progress_update(p, p->total);
        fputc('\n', stderr);
    }
    free(p);
}
