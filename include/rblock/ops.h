/* SPDX-License-Identifier: MIT */
/*
 * ops.h - operations written once over struct rb_image (convert, diff,
 * delta).  Each section is the contract of one lib/ops/ file.
 */
#ifndef RBLOCK_OPS_H
#define RBLOCK_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rblock/error.h"
#include "rblock/image.h"

/* ---- convert: the copy engine (lib/ops/convert.c) ----------------------- */

/* Called after each step with the number of guest bytes handled so far
 * (copied or skipped); never more often than once per chunk. */
typedef void (*rb_copy_progress_fn)(void *opaque, uint64_t done_bytes);

struct rb_copy_opts {
    /* I/O unit of reads and writes; 0 = RB_COPY_DEFAULT_CHUNK.  Rounded
     * to a multiple of the destination's granule. */
    size_t chunk_bytes;
    /* The destination already reads as zeros everywhere (a new file or a
     * new qcow2 without backing): zero ranges are skipped instead of being
     * written with write_zeroes. */
    bool dst_zeroed;
    /* Write each non-zero cluster with dst->ops->write_compressed. */
    bool compress;
    rb_copy_progress_fn progress;
    void *opaque;
};

#define RB_COPY_DEFAULT_CHUNK (4u << 20)

/*
 * Copy the guest contents of @src (its whole backing chain) into @dst,
 * which must be at least as large.  Only ranges that rb_image_block_status
 * reports as holding data are read (holes, zero clusters and unallocated
 * ranges never are); what is read is checked granule by granule (the
 * destination's cluster, 4 KiB for raw) and all-zero granules are not
 * written (or written as write_zeroes when !dst_zeroed).  Writes go to
 * @dst in ascending guest order, granule-aligned except at the end of the
 * image, which the sequential qcow2 writer relies on.
 *
 * Memory: one chunk buffer (plus one cluster for compression).  Does not
 * flush @dst.  Returns 0 or -errno with @err set.
 */
int rb_copy_image(struct rb_image *src, struct rb_image *dst,
                  const struct rb_copy_opts *opts, struct rb_error *err);

/*
 * Bytes of @src, counted in whole @granule-sized units, that block status
 * reports as possibly non-zero (what a copy may have to write): an upper
 * bound for sizing the destination's metadata.  Reads no data.
 * Returns 0 or -errno with @err set.
 */
int rb_copy_count_data(struct rb_image *src, uint64_t granule, uint64_t *bytes,
                       struct rb_error *err);

/* ---- map: qemu-img map's model of an image (lib/ops/map.c) -------------- */

/* One entry of `qemu-img map --output=json`: a run of extents that agree
 * on every field (qemu-img's entry_mergeable), offsets contiguous. */
struct rb_map_entry {
    uint64_t start, length;
    uint64_t offset;   /* host offset in the layer at depth, with has_offset */
    unsigned depth;
    bool present, zero, data, compressed, has_offset;
};

/* Block status of a whole chain, as rb_image_block_status answers it. */
typedef int (*rb_block_status_fn)(void *opaque, uint64_t off, uint64_t len,
                                  struct rb_extent *ext, struct rb_error *err);

/* A walk over [off, end): entries come out merged, in order.  Memory is one
 * pending entry, whatever the size of the image. */
struct rb_map_walk {
    rb_block_status_fn block_status;
    void *opaque;
    uint64_t off, end;
    struct rb_map_entry pending;
    bool have_pending;
};

/* Start a walk of [@off, @end) over @fn (see rb_map_image_status for an
 * image). */
void rb_map_init(struct rb_map_walk *w, rb_block_status_fn fn, void *opaque, uint64_t off,
                 uint64_t end);

/* The next merged entry: 1 with *@e set, 0 when the walk is over, or a
 * negative errno with @err set.  An extent longer than asked is cut, and an
 * empty one taken as the rest of the range, so a driver bug cannot loop. */
int rb_map_next(struct rb_map_walk *w, struct rb_map_entry *e, struct rb_error *err);

/* rb_block_status_fn over an image (opaque is the struct rb_image). */
int rb_map_image_status(void *opaque, uint64_t off, uint64_t len, struct rb_extent *ext,
                        struct rb_error *err);

#endif
