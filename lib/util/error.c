/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "rblock/error.h"

static int error_vset(struct rb_error *err, int code, const char *fmt, va_list ap)
{
    if (code <= 0)
        code = EIO;
    if (err) {
        err->code = code;
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    }
    return -code;
}

int rb_error_set(struct rb_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    int ret;

    if (err && err->msg[0]) /* keep the root cause */
        return -(code > 0 ? code : EIO);
    va_start(ap, fmt);
    ret = error_vset(err, code, fmt, ap);
    va_end(ap);
    return ret;
}

int rb_error_reset(struct rb_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    int ret;

    va_start(ap, fmt);
    ret = error_vset(err, code, fmt, ap);
    va_end(ap);
    return ret;
}

int rb_error_errno(struct rb_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    size_t n;
    int ret;

    if (err && err->msg[0])
        return -(code > 0 ? code : EIO);
    va_start(ap, fmt);
    ret = error_vset(err, code, fmt, ap);
    va_end(ap);
    if (err) {
        n = strlen(err->msg);
        snprintf(err->msg + n, sizeof(err->msg) - n, ": %s", strerror(-ret));
    }
    return ret;
}

void rb_error_prefix(struct rb_error *err, const char *fmt, ...)
{
    char out[RB_ERROR_MSG_MAX];
    size_t n;
    va_list ap;

    if (!err || !err->msg[0])
        return;
    va_start(ap, fmt);
    vsnprintf(out, sizeof(out), fmt, ap);
    va_end(ap);
    n = strlen(out);
    if (n + 2 < sizeof(out)) {
        /* append ": " and as much of the old message as fits */
        out[n++] = ':';
        out[n++] = ' ';
        size_t room = sizeof(out) - n - 1, old_len = strlen(err->msg);
        if (old_len > room)
            old_len = room;
        memcpy(out + n, err->msg, old_len);
        out[n + old_len] = '\0';
    }
    memcpy(err->msg, out, sizeof(out));
}

void rb_error_clear(struct rb_error *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}

const char *rb_error_msg(const struct rb_error *err, int ret)
{
    if (err && err->msg[0])
        return err->msg;
    return strerror(ret < 0 ? -ret : (ret ? ret : EIO));
}
