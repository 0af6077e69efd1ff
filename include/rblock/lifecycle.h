/* SPDX-License-Identifier: MIT */
/*
 * lifecycle.h - measure, resize and amend: the image lifecycle commands
 * that size an output in advance or change an image's size or header
 * options in place (qemu-img measure, resize, amend).
 */
#ifndef RBLOCK_LIFECYCLE_H
#define RBLOCK_LIFECYCLE_H

#include <stdbool.h>
#include <stdint.h>

#include "rblock/error.h"
#include "rblock/image.h"
#include "rblock/qcow2-create.h"

/* ---- measure (lib/ops/measure.c) ----------------------------------------- */

struct rb_measure_opts {
    const char *out_format;         /* "raw" or "qcow2" */
    struct rb_qcow2_create_opts q;  /* qcow2 output options (size: --size) */
    bool prealloc_full;             /* preallocation=full or falloc */
};

struct rb_measure {
    uint64_t required;        /* bytes a new image needs for @src's data */
    uint64_t fully_allocated; /* bytes with every cluster allocated */
    uint64_t bitmaps;         /* bytes the persistent bitmaps of @src need */
    bool has_bitmaps;         /* qcow2 v3 output from a qcow2 v3 source */
};

/*
 * What qemu-img measure answers for an output of opts->out_format made from
 * @src (its whole chain; NULL: an empty image of opts->q.size bytes): the
 * same formulas (qcow2_calc_prealloc_size: header, L2 and L1 tables, the
 * refcount fixed point; each cluster that block status reports as data
 * counted whole).  Reads no data, only block status and the bitmap
 * directory.  Returns 0 or -errno with @err set (EINVAL: an image too
 * large for the cluster size, an unknown format).
 */
int rb_measure(struct rb_image *src, const struct rb_measure_opts *opts,
               struct rb_measure *out, struct rb_error *err);

/* QEMU's qcow2_calc_prealloc_size: bytes of a fully allocated qcow2 image
 * of @size bytes (pure; exposed for tests). */
uint64_t rb_measure_qcow2_full(uint64_t size, uint64_t cluster_bytes, unsigned refcount_order,
                               bool extended_l2);

/* ---- resize (lib/qcow2/resize.c) ------------------------------------------ */

/*
 * Change the virtual size of the qcow2 image @img (top layer, opened
 * read-write, no other user) to @new_size (a multiple of 512), as
 * qemu-img resize does:
 *  - grow: a larger L1 table is written into new clusters (refcounts
 *    durable first), the header switches to it in one write, the old table
 *    is freed, then the size field is written;
 *  - shrink (only with @shrink, else EINVAL): clusters past the new end
 *    are unmapped (L2 entries durable before their refcounts drop), L2
 *    tables past the new L1 size freed, refcount blocks that only count
 *    themselves dropped, the size written, and the file cut after its last
 *    cluster in use;
 *  - persistent bitmaps follow the new size (new bits clean); an
 *    inconsistent one is refused, as are images with internal snapshots.
 * Returns 0 or -errno with @err set; on a refusal nothing was changed.
 */
int rb_qcow2_resize(struct rb_image *img, uint64_t new_size, bool shrink,
                    struct rb_error *err);

/* ---- amend (lib/qcow2/amend.c) --------------------------------------------- */

struct rb_qcow2_amend {
    unsigned version;       /* 0: keep, 2 or 3 */
    int lazy_refcounts;     /* -1: keep, 0 off, 1 on */
    unsigned refcount_bits; /* 0: keep */
    const char *backing_file, *backing_format; /* NULL: not given */
    uint64_t size;          /* 0: keep */
};

/*
 * Apply @a to the qcow2 image @img (opened read-write) in qemu-img amend's
 * order: upgrade, refcount width, backing file, lazy refcounts, size,
 * downgrade.  The refcount width is changed by building a complete new
 * refcount structure in free clusters, durable before one header write
 * switches to it; the old one is then freed.  Header changes rewrite the
 * header cluster in one write.  A downgrade to compat=0.10 refuses v3-only
 * features in use (extended L2, zstd compression, refcount width other
 * than 16, external data file, persistent bitmaps) and turns zero clusters
 * into data clusters as QEMU does.  A different backing file is refused
 * (qemu-img: use rebase).  Returns 0 or -errno with @err set.
 */
int rb_qcow2_amend(struct rb_image *img, const struct rb_qcow2_amend *a, struct rb_error *err);

#endif
