/* SPDX-License-Identifier: MIT */
/*
 * view.h - the JSON views of an image, built once for both the command
 * line (`rblock info|check --output=json`) and the JSON-RPC `info` and
 * `check` methods, so the two can never drift apart: qemu-img's keys
 * (in qemu-img's order) where the same fact exists, plus rblock's own.
 *
 * The builders only build (no printing); the caller owns the returned
 * reference and dumps it as it likes.
 */
#ifndef RBLOCK_VIEW_H
#define RBLOCK_VIEW_H

#include <jansson.h>
#include <stdbool.h>

#include "rblock/error.h"
#include "rblock/image.h"
#include "rblock/qcow2.h"

/*
 * `info` of @img as `qemu-img info --output=json` prints it, with the
 * qcow2 header, features, extensions and layout under "rblock": one
 * object for @img's top layer, or with @backing_chain an array of one
 * object per layer, top first (@img must then have its chain open).
 * Takes each qcow2 layer's lock itself (rb_qcow2_get_info).  Returns a
 * new reference, or NULL with @err set (the info of a layer failed, or
 * ENOMEM).
 */
json_t *rb_view_info(struct rb_image *img, bool backing_chain, struct rb_error *err);

/*
 * The result @r of rb_qcow2_check on the image named @filename, as
 * `qemu-img check --output=json` prints it, plus "rblock-problems" (each
 * leak and corruption found).  Returns a new reference, or NULL when
 * memory ran out.
 */
json_t *rb_view_check(const char *filename, const struct rb_qcow2_check *r);

#endif
