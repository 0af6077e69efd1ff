/* SPDX-License-Identifier: MIT */
/*
 * drivers.h - the table of image drivers (lib/image/drivers.c), read by
 * open.c only: adding a format is one driver plus one row.
 */
#ifndef RBLOCK_IMAGE_DRIVERS_H
#define RBLOCK_IMAGE_DRIVERS_H

#include "rblock/image.h"

struct rb_driver {
    const char *name; /* as -f names it, and as rb_image_probe returns it */
    /* Open the layer at @path on @fd (the driver owns @fd, closing it on
     * failure too); sets backing_name/backing_format, not the chain. */
    struct rb_image *(*open)(const char *path, int fd, const struct rb_open_opts *opts,
                             struct rb_error *err);
};

/* The drivers' open functions (one per row). */
struct rb_image *rb_raw_open(const char *path, int fd, const struct rb_open_opts *opts,
                             struct rb_error *err);
struct rb_image *rb_qcow2_open(const char *path, int fd, const struct rb_open_opts *opts,
                               struct rb_error *err);

/* Images named, not opened as files: "rbd:..." (lib/rbd/rbd.c; without
 * librbd it fails with ENOTSUP saying so). */
struct rb_image *rb_rbd_open(const char *name, const struct rb_open_opts *opts,
                             struct rb_error *err);

/* The driver called @name, or NULL. */
const struct rb_driver *rb_driver_find(const char *name);

/* "raw, qcow2": the names of the table, for messages, into @buf. */
const char *rb_driver_names(char *buf, size_t len);

#endif
