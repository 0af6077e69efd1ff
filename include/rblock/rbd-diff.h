/* SPDX-License-Identifier: MIT */
/*
 * rbd-diff.h - Ceph's incremental stream ("rbd export-diff" /
 * "rbd import-diff", doc/dev/rbd-diff.rst in Ceph) from and to rblock
 * images (lib/ops/rbddiff.c).  Needs no librbd: the stream is a format.
 *
 * v1: "rbd diff v1\n", then records of a one-byte tag: 'f'/'t' (le32
 * length, from/to snapshot name), 's' (le64 image size), then data records
 * 'w' (le64 offset, le64 length, the bytes) and 'z' (le64 offset, le64
 * length), and 'e' (end).  v2: "rbd diff v2\n", every record but 'e' has
 * an le64 length of what follows its tag (unknown tags are skipped).
 */
#ifndef RBLOCK_RBD_DIFF_H
#define RBLOCK_RBD_DIFF_H

#include <stdbool.h>
#include <stdint.h>

#include "rblock/error.h"
#include "rblock/image.h"

struct rb_rbd_diff_out_opts {
    unsigned version;        /* 1 (default when 0) or 2 */
    const char *from_snap;   /* 'f' record (import-diff then requires the
                                destination to have it); NULL: none */
    const char *to_snap;     /* 't' record (import-diff creates it); NULL: none */
    const char *bitmap;      /* NULL: compare BASE and NEW; else NEW's
                                persistent dirty bitmap: the dirty ranges are
                                written, BASE is not read */
    void (*on_progress)(void *opaque, uint64_t done_bytes);
    void *opaque;
};

struct rb_rbd_diff_stats {
    uint64_t data_bytes;  /* in 'w' records */
    uint64_t zero_bytes;  /* in 'z' records */
    uint64_t records;     /* 'w' and 'z' records */
};

/*
 * Write to @fd the stream that turns @base into @newi: size record (NEW's
 * size), a 'w' record for every 4 KiB granule where NEW differs from BASE
 * and is not all zeros, a 'z' record where NEW reads zeros and BASE does
 * not (runs merged), in ascending order, then 'e'.  Returns 0 or -errno
 * with @err set (EPIPE when the reader went away).
 */
int rb_rbd_diff_write(struct rb_image *base, struct rb_image *newi, int fd,
                      const struct rb_rbd_diff_out_opts *opts, struct rb_rbd_diff_stats *stats,
                      struct rb_error *err);

struct rb_rbd_diff_in_opts {
    const char *base_format;    /* NULL: probe BASE */
    const char *backing_name;   /* stored in OUT; NULL: as delta does */
    const char *create_options; /* qcow2 "-o" options (may be NULL) */
    bool force_share;
};

/*
 * Read the stream on @in_fd (named @stream_name in messages) and write
 * @out_path, a new qcow2 overlay of @base_path holding its records: 'w' as
 * data, 'z' as zero clusters, the size from 's' (BASE's size when absent).
 * A stream whose 'f' snapshot is not BASE's (when BASE is an rbd snapshot)
 * is refused.  Every record is checked (tag, lengths, offset + length
 * within the size, order of metadata before data); a bad header, an
 * unknown v1 tag, a record past the end or a stream that ends before 'e'
 * is refused with the byte offset where it went wrong, and OUT is removed
 * (only when this call created it, as every output: rblock/output.h).
 * Returns 0 or -errno with @err set.
 */
int rb_rbd_diff_to_qcow2(int in_fd, const char *stream_name, const char *base_path,
                         const char *out_path, const struct rb_rbd_diff_in_opts *opts,
                         struct rb_rbd_diff_stats *stats, struct rb_error *err);

#endif
