/* SPDX-License-Identifier: MIT */
/*
 * qcow2-create.h - making new qcow2 images: empty ones (rblock create) and
 * the sequential writer that convert fills.
 */
#ifndef RBLOCK_QCOW2_CREATE_H
#define RBLOCK_QCOW2_CREATE_H

#include <stdbool.h>
#include <stdint.h>

#include "rblock/error.h"
#include "rblock/image.h"

enum rb_qcow2_prealloc {
    RB_QCOW2_PREALLOC_OFF = 0,
    RB_QCOW2_PREALLOC_METADATA, /* L2 tables and data clusters allocated */
};

struct rb_qcow2_create_opts {
    uint64_t size;              /* virtual size in bytes */
    bool size_set;              /* size was given (else: taken from backing) */
    unsigned version;           /* 2 (compat=0.10) or 3 (compat=1.1) */
    uint32_t cluster_bytes;     /* power of two, 512 .. 2 MiB */
    unsigned refcount_bits;     /* power of two, 1 .. 64 (16 for v2) */
    bool lazy_refcounts;        /* v3 only */
    bool extended_l2;           /* v3 only; cluster_bytes >= 16 KiB */
    uint8_t compression_type;   /* 0 zlib, 1 zstd (v3 only) */
    enum rb_qcow2_prealloc preallocation;
    const char *backing_file;   /* NULL: none (not owned) */
    const char *backing_format; /* written whenever backing_file is set */
    /* rb_qcow2_stream_create only: at most this many guest bytes (in whole
     * clusters) will be written; sizes the refcount table tightly.  0 = the
     * virtual size.  A wrong hint makes writes fail with EFBIG. */
    uint64_t data_bytes_hint;
};

/* Defaults as qemu-img's: v3, 64 KiB clusters, 16-bit refcounts, zlib. */
void rb_qcow2_create_opts_init(struct rb_qcow2_create_opts *o);

/*
 * Parse a qemu-img style option string "key=val,key=val" into @o (which
 * keeps its earlier values for keys not given).  Keys: size, compat
 * (0.10, v2, 1.1, v3), cluster_size, refcount_bits, lazy_refcounts,
 * extended_l2 (on/off), compression_type (zlib, zstd), preallocation
 * (off, metadata), backing_file, backing_fmt.  String values point into
 * @str, which must outlive @o.  Returns 0 or -EINVAL with @err set.
 */
int rb_qcow2_parse_options(char *str, struct rb_qcow2_create_opts *o, struct rb_error *err);

/* Check the options against each other and the spec's limits.  Returns 0
 * or -EINVAL with @err set. */
int rb_qcow2_check_opts(const struct rb_qcow2_create_opts *o, struct rb_error *err);

/* @size rounded up to a whole 512-byte sector, as QEMU sizes qcow2 images
 * (sizes within 511 of 2^64 stay as they are and fail the option check). */
uint64_t rb_qcow2_round_size(uint64_t size);

/*
 * Write an empty qcow2 image into @fd, an empty regular file open for
 * reading and writing (the caller opens, locks and, on failure, removes
 * it: see rblock/output.h; @path only names it in messages): header with
 * the backing file, backing format and feature-name extensions, refcount
 * table and blocks, L1 table, and with preallocation=metadata every L2
 * table and data cluster.  The size must be set (take it from the backing
 * first); it is rounded up to a multiple of 512 as QEMU does.  A file
 * that is not empty, or a block device, is refused with EINVAL.  The file
 * is fdatasync'ed; @fd stays open and owned by the caller.
 * Returns 0 or -errno with @err set.
 */
int rb_qcow2_create(int fd, const char *path, const struct rb_qcow2_create_opts *o,
                    struct rb_error *err);

/*
 * Start an empty qcow2 (preallocation off) in @fd, an empty regular file
 * open for reading and writing (opened and locked by the caller, see
 * rblock/output.h; @path names it in messages), and return it open as a
 * write-only, append-style image for convert: write, write_zeroes
 * and write_compressed must come in ascending guest order at cluster-
 * aligned offsets (a short last cluster at the end of the image is fine),
 * and a range may be written only once.  Clusters are laid out as they
 * arrive (L2 table before its first data cluster, refcount blocks where the
 * allocation reaches past the covered range), so the file is compact with
 * no leaks.  Reads are not supported.  Metadata is kept in memory (the L1
 * table, one L2 table, one refcount block) and written by flush, which
 * makes the file a complete image; close without flush leaves it invalid.
 * The size is rounded up to a multiple of 512 as QEMU does.
 * The image owns @fd from the call on (closed on failure too); it does
 * not remove the file.  Returns an owned image or NULL with @err set.
 */
struct rb_image *rb_qcow2_stream_create(int fd, const char *path,
                                        const struct rb_qcow2_create_opts *o,
                                        struct rb_error *err);

#endif
