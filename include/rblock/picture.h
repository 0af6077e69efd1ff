/* SPDX-License-Identifier: MIT */
/*
 * picture.h - a picture of an image's layout (lib/ops/picture.c), for
 * `rblock map --output=svg|html` and the JSON-RPC `layout` method.
 *
 * Two bands drawn to scale, each with a scale bar:
 *   guest view: the virtual disk, each run colored by where its data comes
 *     from (this layer, backing layer 1..n, zero, unallocated), compressed
 *     runs marked, and the dirty ranges of a persistent bitmap when asked;
 *   host view: the file of the top layer, each cluster colored by what it
 *     holds (lib/qcow2/layout.c);
 * a legend, and a caption with the figures of `qemu-img check` and
 * `qemu-img info`: virtual size, file size, allocated and fragmented
 * clusters, leaked clusters, image end offset.
 *
 * Each band is folded into at most RB_PICTURE_COLUMNS columns and each
 * column drawn as a stack of its classes; neighbouring columns that draw
 * alike are merged, and one SVG path per class holds them all.  So the
 * picture's size and the memory used depend on the columns, never on the
 * image's size: a 1 TiB image draws like a 1 MiB one.
 */
#ifndef RBLOCK_PICTURE_H
#define RBLOCK_PICTURE_H

#include <stdbool.h>
#include <stddef.h>

#include "rblock/error.h"
#include "rblock/image.h"

#define RB_PICTURE_COLUMNS 1000

struct rb_picture_opts {
    const char *bitmap; /* draw the dirty ranges of this bitmap, or NULL */
    bool html;          /* a whole page: the picture, a legend table and
                           details of the column under the pointer */
    const char *title;  /* the name shown; NULL: the image's file name */
};

/*
 * Draw @img (and its backing chain) as @opts says.  On success *out is a
 * malloc'd NUL-terminated SVG document (or HTML page) of *len bytes, owned
 * by the caller.  Runs the consistency check's walk on a qcow2 top layer
 * (takes the image's lock for it; safe on a served image).  Returns 0 or
 * -errno with @err set (a missing bitmap: -ENOENT).
 */
int rb_picture_render(struct rb_image *img, const struct rb_picture_opts *opts, char **out,
                      size_t *len, struct rb_error *err);

#endif
