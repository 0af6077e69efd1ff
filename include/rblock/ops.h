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
#include "rblock/diff.h"
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
    /* Zero detection unit when the destination has no clusters (raw):
     * only all-zero runs of this many aligned bytes stay sparse; 0 = 4096.
     * A multiple of 512 (convert -S). */
    size_t min_sparse;
    /* convert -S 0: no sparse detection; every byte of the destination is
     * written as data, zeros too (a fully allocated output). */
    bool no_sparse;
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

/* ---- commit: merge an overlay into its backing file (lib/ops/commit.c) -- */

/* Called now and then with the guest bytes of TOP dealt with so far. */
typedef void (*rb_lifecycle_progress_fn)(void *opaque, uint64_t done_bytes,
                                         uint64_t total_bytes);

struct rb_commit_opts {
    const char *format; /* TOP's format (-f); NULL: probe */
    const char *base;   /* -b: a layer further down TOP's chain, named by any
                           path to the same file; NULL: TOP's backing file */
    bool drop;          /* -d: leave TOP as it is (implied by base, as
                           qemu-img commit -b does) */
    rb_lifecycle_progress_fn progress;
    void *opaque;
};

struct rb_commit_stats {
    unsigned base_depth;  /* depth of BASE in TOP's chain (1: its backing) */
    uint64_t data_bytes;  /* guest bytes copied into BASE */
    uint64_t zero_bytes;  /* guest bytes made zero in BASE */
    bool emptied;         /* TOP's clusters were discarded */
};

/*
 * qemu-img commit: copy every range that TOP or a layer between TOP and
 * BASE defines (data as data, zero clusters as zeroes) into BASE, so that
 * BASE reads as TOP did; then, unless opts->drop (or opts->base), discard
 * every cluster of TOP, which then reads through to BASE.  BASE is the one
 * chain member written: it is reopened for writing with its write lock
 * (rb_output_open, RB_OUTPUT_IN_PLACE; EAGAIN when another process uses
 * it); its persistent bitmaps record the writes.  A raw BASE smaller than
 * TOP is grown first; a smaller qcow2 BASE is refused.
 * Crash safety: everything written to BASE is durable before the first
 * cluster of TOP is discarded, so TOP reads the same at every instant; a
 * crash during the copy leaves BASE partly committed (run commit again).
 * Refused with nothing changed: TOP without a backing file (EINVAL), a
 * BASE that is not in TOP's chain (ENOENT), a locked BASE.
 * Returns 0 or -errno with @err set.
 */
int rb_commit(const char *top_path, const struct rb_commit_opts *opts,
              struct rb_commit_stats *stats, struct rb_error *err);

/* ---- rebase: change an overlay's backing file (lib/ops/rebase.c) -------- */

struct rb_rebase_opts {
    const char *format;         /* IMAGE's format (-f); NULL: probe */
    const char *backing;        /* new backing file name, stored as given and
                                   resolved from IMAGE's folder; NULL or "":
                                   none (flatten) */
    const char *backing_format; /* -F: required with a backing name */
    bool unsafe;                /* -u: only rewrite the header */
    bool compress;              /* -c: write copied clusters compressed */
    rb_lifecycle_progress_fn progress;
    void *opaque;
};

struct rb_rebase_stats {
    struct rb_diff_stats diff;  /* the walk of old against new backing */
    uint64_t data_bytes;        /* guest bytes copied into IMAGE */
    uint64_t zero_bytes;        /* guest bytes made zero in IMAGE */
};

/*
 * qemu-img rebase.  Safe mode: IMAGE (qcow2) keeps its guest content: where
 * IMAGE defines nothing and its old backing chain differs from the new one,
 * the old chain's bytes are written into IMAGE (rb_diff over both chains
 * seen through IMAGE's allocation: what IMAGE defines, what both read as
 * zeros and layers both chains share are never read); the writes are
 * durable before the header names the new backing file.  Unsafe mode (-u)
 * rewrites the header only, opening neither backing file.
 * Refused with nothing changed: a backing name without a format (EINVAL,
 * as qemu-img 7.2 refuses it), a new backing file that cannot be opened, a
 * new chain that contains IMAGE (ELOOP), an image that is not qcow2.
 * @stats may be NULL.  Returns 0 or -errno with @err set.
 */
int rb_rebase(const char *path, const struct rb_rebase_opts *opts,
              struct rb_rebase_stats *stats, struct rb_error *err);

#endif
