/* SPDX-License-Identifier: MIT */
/*
 * qcow2_file.h - for unit tests: a new qcow2 file at a path, made (or
 * emptied) through rblock's output code, as `rblock create` makes one.
 */
#ifndef RBLOCK_TEST_QCOW2_FILE_H
#define RBLOCK_TEST_QCOW2_FILE_H

#include <errno.h>

#include "rblock/output.h"
#include "rblock/qcow2-create.h"

static inline int create_qcow2(const char *path, const struct rb_qcow2_create_opts *o,
                               struct rb_error *err)
{
    struct rb_output *out = rb_output_open(path, NULL, 0, 0, err);
    int ret = out ? rb_qcow2_create(out->fd, path, o, err) : -EIO;

    rb_output_close(out, ret < 0);
    return ret;
}

#endif
