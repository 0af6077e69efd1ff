/* SPDX-License-Identifier: MIT */
/* Placeholder until the qcow2 driver lands. */
#include <errno.h>
#include <unistd.h>

#include "qcow2/qcow2.h"

struct rb_image *rb_qcow2_open(const char *path, int fd, const struct rb_open_opts *opts,
                               struct rb_error *err)
{
    (void)opts;
    close(fd);
    rb_error_set(err, ENOTSUP, "%s: qcow2 is not supported yet", path);
    return NULL;
}
