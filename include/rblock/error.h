/* SPDX-License-Identifier: MIT */
/*
 * error.h - rblock's error convention.
 *
 * Library calls return 0 (or a count) on success and a negative errno on
 * failure; functions returning pointers return NULL.  Where the caller
 * wants the detail, the last argument is a caller-owned struct rb_error:
 * no heap, so it works when memory is short, and NULL when not wanted.
 *
 * Messages read like Git's: lower case, no full stop, the subject first,
 * the proving numbers in, e.g.
 *   "disk.qcow2: L2 table at 0x50200 is not cluster-aligned (cluster size 65536)"
 * Set the error where it is detected; report it once, where it is consumed.
 */
#ifndef RBLOCK_ERROR_H
#define RBLOCK_ERROR_H

#include <stddef.h>

#define RB_ERROR_MSG_MAX 512

struct rb_error {
    int code;                   /* positive errno value, 0 when unset */
    char msg[RB_ERROR_MSG_MAX]; /* one line, NUL-terminated */
};

/*
 * Record an error.  @code is a positive errno.  Returns -code so that a
 * caller can write `return rb_error_set(err, EINVAL, "...")`.
 * @err may be NULL.  Only the first error set is kept: a later call on an
 * error that already holds a message keeps the first (the root cause).
 */
int rb_error_set(struct rb_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Like rb_error_set, with ": " and strerror(@code) appended (Git's
 * error_errno): `return rb_error_errno(err, -ret, "%s: cannot read", name)`. */
int rb_error_errno(struct rb_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Like rb_error_set but always overwrites an earlier message. */
int rb_error_reset(struct rb_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Prefix an existing message with "prefix: " (used to add a file name
 * where a lower layer did not know it).  No-op when err is NULL or empty.
 */
void rb_error_prefix(struct rb_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Clear to the "no error" state. */
void rb_error_clear(struct rb_error *err);

/*
 * Message to show: err->msg when set, otherwise strerror(-ret).
 * Never NULL.
 */
const char *rb_error_msg(const struct rb_error *err, int ret);

#endif
