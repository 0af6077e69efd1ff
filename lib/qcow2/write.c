/* SPDX-License-Identifier: MIT */
/*
 * write.c - PLACEHOLDER for the qcow2 write path.  The write-path engineer
 * replaces this whole file (see "write path" in qcow2.h for the contract).
 * Until then a read-write open of a qcow2 image fails clearly.
 */
#include <errno.h>

#include "qcow2/qcow2.h"

int qcow2_write_open(struct rb_image *img, struct qcow2_state *s, struct rb_error *err)
{
    (void)s;
    return rb_error_set(err, ENOTSUP, "%s: writing qcow2 not supported yet",
                        img->filename);
}

void qcow2_write_close(struct rb_image *img, struct qcow2_state *s)
{
    (void)img;
    (void)s;
}

int qcow2_write(struct rb_image *img, const void *buf, uint64_t off, size_t len,
                unsigned flags, struct rb_error *err)
{
    return rb_error_set(err, ENOTSUP, "%s: writing qcow2 not supported yet",
                        img->filename);
}

int qcow2_write_zeroes(struct rb_image *img, uint64_t off, uint64_t len, unsigned flags,
                       struct rb_error *err)
{
    return rb_error_set(err, ENOTSUP, "%s: writing qcow2 not supported yet",
                        img->filename);
}

int qcow2_trim(struct rb_image *img, uint64_t off, uint64_t len, struct rb_error *err)
{
    return rb_error_set(err, ENOTSUP, "%s: writing qcow2 not supported yet",
                        img->filename);
}

int qcow2_flush(struct rb_image *img, struct rb_error *err)
{
    return 0;
}

int qcow2_write_compressed(struct rb_image *img, const void *buf, uint64_t off,
                           size_t len, struct rb_error *err)
{
    return rb_error_set(err, ENOTSUP, "%s: writing qcow2 not supported yet",
                        img->filename);
}
