/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "rblock/size.h"

void complain(const char *fmt, ...)
{
    va_list ap;

    fputs("rblock: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int parse_size(const char *s, uint64_t *out)
{
    return rb_parse_size(s, out);
}

int bad_usage(const char *cmd, const char *what)
{
    fprintf(stderr, "rblock %s: %s (try 'rblock %s --help')\n", cmd, what, cmd);
    return 1;
}

int bad_option(const char *cmd, char **argv, int c)
{
    const char *arg = optind > 0 ? argv[optind - 1] : "";
    char what[160];

    if (c == ':' && strncmp(arg, "--", 2) == 0)
        snprintf(what, sizeof(what), "option '%.100s' needs an argument", arg);
    else if (c == ':')
        snprintf(what, sizeof(what), "option -%c needs an argument", optopt);
    else if (optopt && isprint(optopt))
        snprintf(what, sizeof(what), "invalid option -%c", optopt);
    else
        snprintf(what, sizeof(what), "invalid option '%.100s'", arg);
    return bad_usage(cmd, what);
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
