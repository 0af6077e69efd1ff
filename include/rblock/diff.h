/* SPDX-License-Identifier: MIT */
/*
 * diff.h - compare two images, and write the difference as a qcow2 overlay.
 *
 * rb_diff walks the block status of two images side by side and reports,
 * in increasing order, every run of "granules" (sectors for `rblock diff`,
 * clusters for `rblock delta`) in which they differ.  It reads only what it
 * must:
 *   - ranges that both images report as zero (holes, unallocated, zero
 *     clusters, past the end of the shorter image) are skipped unread;
 *   - ranges where both images resolve to the same layer file (a shared
 *     backing file: same dev/ino and driver at some depth of both chains)
 *     are equal without reading;
 *   - a range zero on one side reads only the other side and checks it
 *     for zeros;
 *   - the rest is read from both in large sequential chunks (A and B at
 *     the same time, B by a helper thread) and compared with memcmp on
 *     big blocks first, granule by granule only inside blocks that differ.
 * Memory is a fixed number of chunk buffers whatever the image size.
 * The shorter image reads as zeros past its end (as qemu-img compare).
 */
#ifndef RBLOCK_DIFF_H
#define RBLOCK_DIFF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rblock/error.h"
#include "rblock/image.h"

/* One run of consecutive differing granules, reported to the caller.
 * The pointers are valid only during the callback. */
struct rb_diff_run {
    uint64_t off;     /* byte offset, a multiple of the granule */
    uint64_t len;     /* bytes: a multiple of the granule, except that the last
                         run may end at the end of the longer image */
    const uint8_t *a; /* A's bytes over [off, off+len), or NULL when A is
                         known to read as zeros there (and was not read) */
    const uint8_t *b; /* likewise for B */
};

/* Called for each run, in increasing offset order, from the thread that
 * called rb_diff.  Returns 0 to go on, or a negative errno (with @err set)
 * to stop: rb_diff then returns that value. */
typedef int (*rb_diff_fn)(void *opaque, const struct rb_diff_run *run,
                          struct rb_error *err);

struct rb_diff_opts {
    uint64_t granule_bytes; /* unit of difference, >= 1 and <= RB_DIFF_MAX_GRANULE */
    size_t chunk_bytes;     /* read size; 0 = RB_DIFF_DEFAULT_CHUNK (rounded
                               to a multiple of the granule) */
    bool serial_reads;      /* read A then B in this thread (no helper thread) */
    uint64_t limit_bytes;   /* compare only [0, limit); 0 = up to the end of
                               the longer image */
    rb_diff_fn on_run;      /* may be NULL (only count) */
    void *opaque;
    /* Called now and then (from the calling thread) with the number of
     * bytes of the longer image dealt with so far.  May be NULL. */
    void (*on_progress)(void *opaque, uint64_t done_bytes);
};

#define RB_DIFF_DEFAULT_CHUNK ((size_t)2 << 20)
#define RB_DIFF_MAX_GRANULE ((uint64_t)64 << 20)

/* What the walk did (for tests, benchmarks and curious users). */
struct rb_diff_stats {
    uint64_t size_bytes;   /* bytes walked: max(size of A, size of B) or the limit */
    uint64_t diff_bytes;   /* total length of the reported runs */
    uint64_t read_a_bytes; /* bytes read from A */
    uint64_t read_b_bytes; /* bytes read from B */
    uint64_t zero_bytes;   /* skipped: zero on both sides */
    uint64_t shared_bytes; /* skipped: both resolve to the same layer */
};

/*
 * Compare @a and @b (neither is modified; both may be read-only).
 * Reports every differing run through opts->on_run.  Returns 0 when the
 * walk completed (whether or not anything differed), or a negative errno
 * with @err set (a read or block-status error, out of memory, or the
 * callback's error).  @stats may be NULL.
 */
int rb_diff(struct rb_image *a, struct rb_image *b, const struct rb_diff_opts *opts,
            struct rb_diff_stats *stats, struct rb_error *err);

/* ---- delta ------------------------------------------------------------- */

struct rb_delta_opts {
    const char *base_format;    /* NULL: probe BASE */
    const char *new_format;     /* NULL: probe NEW */
    const char *backing_name;   /* stored as DELTA's backing file name; NULL:
                                   BASE's path relative to DELTA's folder */
    uint32_t cluster_bytes;     /* 0 = 64 KiB */
    const char *create_options; /* further "-o" options for the qcow2 (may be NULL) */
    const char *bitmap;         /* NULL: compare BASE and NEW; else the name of a
                                   persistent dirty bitmap of NEW (qcow2): copy
                                   the clusters it marks dirty, read nothing else */
    bool serial_reads;
    bool force_share;           /* -U: read BASE and NEW (and DELTA's backing)
                                   even while another process writes them */
    void (*on_progress)(void *opaque, uint64_t done_bytes);
    void *opaque;
};

struct rb_delta_stats {
    struct rb_diff_stats diff;
    uint64_t data_clusters; /* clusters written with data */
    uint64_t zero_clusters; /* clusters made zero clusters */
};

/*
 * Write @delta_path, a qcow2 image of NEW's size whose backing file is
 * @base_path (format recorded in the header), holding only the clusters
 * where @new_path differs from it: a data cluster where NEW's bytes are
 * not all zeros, a zero cluster where they are, nothing where NEW equals
 * BASE.  One pass over the data.  With opts->bitmap, the clusters that a
 * dirty granule of NEW's bitmap touches are taken as the differing ones
 * and nothing else of NEW or BASE is read (stats: read_b_bytes, diff_bytes);
 * a missing bitmap (ENOENT), an inconsistent one (EINVAL) or a NEW
 * without bitmaps (ENOTSUP) is refused before DELTA is created.  DELTA is opened as every output is
 * (rblock/output.h): it may not be BASE, NEW or any layer of their chains,
 * an existing file is replaced only once its write lock is held (EAGAIN
 * otherwise, file untouched), a special file is refused.  On failure DELTA
 * is removed only when this call created it (the message says what was
 * left otherwise).  Returns 0 or a negative errno with @err set.
 */
int rb_delta(const char *base_path, const char *new_path, const char *delta_path,
             const struct rb_delta_opts *opts, struct rb_delta_stats *stats,
             struct rb_error *err);

/*
 * The name under which DELTA at @delta_path should record @base_path so
 * that it resolves from DELTA's folder: a path relative to that folder
 * (through "../" where needed), or absolute when no relative path can be
 * computed.  Returns an owned string or NULL with @err set.
 */
char *rb_delta_backing_name(const char *base_path, const char *delta_path,
                            struct rb_error *err);

#endif
