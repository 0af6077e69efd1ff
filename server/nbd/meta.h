/* SPDX-License-Identifier: MIT */
/*
 * meta.h - NBD metadata contexts (proto.md, "Metadata querying") as rows
 * of a table: a name, and where the status of a block status descriptor
 * comes from.  The table of an export is the fixed rows every export
 * offers (base:allocation, qemu:allocation-depth: an extent of
 * rb_image_block_status becomes a status), followed by one row
 * "qemu:dirty-bitmap:NAME" for each bitmap the export was opened with
 * (rb_export_config.bitmaps, chosen at start-up; status 1 = dirty, as
 * qemu-nbd -B).  A connection selects a subset with
 * NBD_OPT_SET_META_CONTEXT; the context id sent to the client is the
 * row's index + 1.  Adding a context is adding a row.
 */
#ifndef RBLOCK_NBD_META_H
#define RBLOCK_NBD_META_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/export.h"
#include "rblock/image.h"

#define NBD_META_BITMAP_PREFIX "qemu:dirty-bitmap:"
/* "qemu:dirty-bitmap:" and a qcow2 bitmap name (at most 1023 bytes) */
#define NBD_META_NAME_MAX (sizeof(NBD_META_BITMAP_PREFIX) + 1024)

struct nbd_meta_context {
    char name[NBD_META_NAME_MAX]; /* "namespace:leaf", as the client asks */
    /* Extent rows: the descriptor status of an extent of block_status. */
    uint32_t (*status_of)(const struct rb_extent *ext);
    /* Bitmap rows (status_of NULL): the export's bitmap number. */
    size_t bitmap;
};

/* A selection: bit i set when row i is selected (row i has id i + 1). */
typedef uint32_t nbd_meta_set;

/* Rows of @e's table (at most 8 * sizeof(nbd_meta_set)). */
unsigned nbd_meta_count(const struct rb_export *e);
/* Row @i (< nbd_meta_count) of @e's table. */
void nbd_meta_row(const struct rb_export *e, unsigned i, struct nbd_meta_context *row);

/* The rows a query selects.  SET (@list false) matches exact names only;
 * LIST also takes a namespace prefix ending in ':' ("base:", "qemu:",
 * "qemu:dirty-bitmap:") for every row under it.  A query naming nothing
 * we offer selects nothing (not an error: proto.md). */
nbd_meta_set nbd_meta_query(const struct rb_export *e, const uint8_t *q, uint32_t qlen,
                            bool list);

/* Every row (LIST without queries). */
nbd_meta_set nbd_meta_all(const struct rb_export *e);

/* The context id of row @i. */
static inline uint32_t nbd_meta_id(unsigned i)
{
    return i + 1;
}

#endif
