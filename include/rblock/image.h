/* SPDX-License-Identifier: MIT */
/*
 * image.h - the one interface every command is written over.
 *
 * A struct rb_image is a disk: raw file, block device, or qcow2 image
 * (with its backing chain).  Drivers implement struct rb_image_ops;
 * callers use the rb_image_* wrappers, which validate ranges and walk the
 * backing chain for block status.
 *
 * Concurrency: every operation may be called from several threads at
 * once on the same image; drivers do their own locking.  Open and close
 * are not concurrent with anything else.
 */
#ifndef RBLOCK_IMAGE_H
#define RBLOCK_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "rblock/error.h"

struct rb_image;

/* Flags of write and write_zeroes. */
#define RB_WRITE_FUA 0x1       /* durable before return */
#define RB_ZERO_MAY_UNMAP 0x2  /* write_zeroes may deallocate (punch) */
#define RB_ZERO_FAST 0x4       /* fail with -ENOTSUP unless zeroing is cheap */

/* Flags of struct rb_extent. */
#define RB_BS_DATA 0x01         /* backed by stored data (may still read as 0) */
#define RB_BS_ZERO 0x02         /* reads return zeros */
#define RB_BS_ALLOCATED 0x04    /* defined by the layer at `depth` ("present") */
#define RB_BS_OFFSET_VALID 0x08 /* host_off is the offset in that layer's file */
#define RB_BS_COMPRESSED 0x10   /* stored compressed */

/* One extent of block status: [off, off + length) where `off` is what the
 * caller asked about. */
struct rb_extent {
    uint64_t length;   /* > 0 on success */
    unsigned flags;    /* RB_BS_* */
    unsigned depth;    /* 0 = this image, 1 = its backing...; when not
                          ALLOCATED anywhere: the last layer asked */
    uint64_t host_off; /* with RB_BS_OFFSET_VALID */
};

struct rb_image_ops {
    const char *format; /* "raw", "qcow2" */

    /* Read len bytes at off; the driver reads unallocated ranges from its
     * backing image (zeros past the backing's end).  Range already checked. */
    int (*read)(struct rb_image *img, void *buf, uint64_t off, size_t len,
                struct rb_error *err);
    /* NULL when the driver is read-only. */
    int (*write)(struct rb_image *img, const void *buf, uint64_t off,
                 size_t len, unsigned flags, struct rb_error *err);
    int (*write_zeroes)(struct rb_image *img, uint64_t off, uint64_t len,
                        unsigned flags, struct rb_error *err);
    /* Discard: after it, the range reads as the backing (or zeros). */
    int (*trim)(struct rb_image *img, uint64_t off, uint64_t len,
                struct rb_error *err);
    int (*flush)(struct rb_image *img, struct rb_error *err);
    /*
     * Status of this layer only, for one extent starting at off and at most
     * len long.  A range this layer does not define is returned without
     * RB_BS_DATA/RB_BS_ZERO/RB_BS_ALLOCATED and with depth 0;
     * rb_image_block_status then asks the backing image.
     */
    int (*block_status)(struct rb_image *img, uint64_t off, uint64_t len,
                        struct rb_extent *ext, struct rb_error *err);
    /* Write compressed data of exactly one cluster at a cluster-aligned
     * offset into an unallocated cluster (convert -c).  May be NULL. */
    int (*write_compressed)(struct rb_image *img, const void *buf,
                            uint64_t off, size_t len, struct rb_error *err);
    /* The run at off (at most len long) that is all dirty or all clean in
     * the persistent dirty bitmap @name of this layer; refuses a missing
     * or inconsistent (in_use) bitmap.  NULL when the format has none. */
    int (*bitmap_extent)(struct rb_image *img, const char *name, uint64_t off,
                         uint64_t len, bool *dirty, uint64_t *bytes,
                         struct rb_error *err);
    /* Release everything except img itself and img->backing. */
    void (*close)(struct rb_image *img);
};

struct rb_image {
    const struct rb_image_ops *ops;
    char *filename;          /* as given by the user or the backing name */
    uint64_t size;           /* virtual size in bytes */
    bool read_only;
    unsigned cluster_bytes;  /* allocation unit; 0 for raw (use 4096 as preferred) */
    dev_t dev;               /* identity of the file, for comparing layers */
    ino_t ino;
    struct rb_image *backing; /* owned; NULL when none */
    char *backing_name;      /* as stored in the header (driver sets it) */
    char *backing_format;    /* as recorded ("raw", "qcow2"), NULL if absent */
    char *backing_path;      /* backing_name resolved from the overlay's folder */
    bool format_guessed;     /* the format was probed, not given (-f): a raw
                                image then refuses writes that would make its
                                first sector probe as another format */
    void *priv;              /* driver state */
};

/* Options of rb_image_open.  A zeroed struct means: probe the format,
 * read-only, follow the backing chain, default limits. */
struct rb_open_opts {
    const char *format;      /* "raw", "qcow2" or NULL to probe */
    bool write;              /* open the top layer read-write */
    bool no_backing;         /* do not open the backing chain */
    bool repair;             /* with write: open a qcow2 image for
                                rb_qcow2_repair only (check -r): a dirty image
                                is not repaired at open, a corrupt one is
                                opened, guest writes are refused */
    bool unsafe_no_barriers; /* no fdatasync between metadata steps (convert
                                output that is deleted on failure) */
    bool lock;               /* no effect, kept for callers: every layer is
                                always locked (fcntl OFD locks on QEMU's lock
                                bytes, rb_image_lock): the top layer opened
                                with write is refused while another process
                                reads or writes it; every layer opened for
                                reading (the backing chain too) while one
                                writes it.  Fails with EAGAIN, "image is
                                locked by another process ..." */
    bool force_share;        /* qemu-img's -U: the layers opened for reading
                                refuse nothing to others and ignore writers
                                (with write the top layer still locks as a
                                writer; commands refuse -U for an image they
                                write, as qemu-img does) */
    bool sequential;         /* the caller writes in ascending order (convert):
                                the raw driver starts writeback behind it */
    unsigned max_depth;      /* cap on the backing chain; 0 = RB_MAX_CHAIN */
    unsigned queue_depth;    /* rbd, with write and sequential: writes in
                                flight (convert -m); 0 = the driver's default */
    size_t cache_bytes;      /* metadata cache cap; 0 = default */
    const char *snapshot;    /* qcow2 internal snapshot (id or name) the
                                top layer reads as, read-only (qemu-nbd -l);
                                NULL: the active image.  Other formats and
                                write are refused (EINVAL / ENOTSUP) */
};

#define RB_MAX_CHAIN 64
#define RB_DEFAULT_CACHE_BYTES (8u << 20)

/*
 * Open @path.  Probes the format unless opts->format is set: a file with
 * the signature of a format rblock does not read (vmdk, vdi, ...; see
 * rb_image_probe_buf) is refused with EMEDIUMTYPE naming it; a file that
 * is none of them is raw, with img->format_guessed set.  Locks every layer
 * (see rb_open_opts.lock) before reading it.  Opens the backing chain
 * read-only: names relative to the overlay's folder, the backing format
 * from the header (a backing file is never probed; one without a recorded
 * format is raw, refused when it probes as anything else), loops, "json:"
 * names and chains deeper than the cap are refused.  Returns an owned
 * image or NULL with @err set (message starts with the file name).
 */
struct rb_image *rb_image_open(const char *path, const struct rb_open_opts *opts,
                               struct rb_error *err);

/* Close an image and its backing chain; accepts NULL.  Does not flush:
 * call rb_image_flush first when durability matters. */
void rb_image_close(struct rb_image *img);

/*
 * Format probing.  Each known format is one row of a table (image.c): a
 * name and a match function over the first RB_PROBE_BYTES of the file
 * (@head) and the last RB_PROBE_BYTES (@tail, NULL when the file is
 * shorter; for trailers: fixed VHD, dmg).  Returns the first match:
 * "qcow2", "vmdk", "vdi", "vhdx", "vpc", "qed", "luks", "parallels",
 * "bochs", "cloop", "dmg", or "raw" when none matches.  Pure functions of
 * their arguments; lengths may be anything (short buffers match nothing
 * that needs more).
 */
#define RB_PROBE_BYTES 512
const char *rb_image_probe_buf(const uint8_t *head, size_t head_len, const uint8_t *tail,
                               size_t tail_len);
/* The same for an open fd (reads head and tail; "raw" on read errors). */
const char *rb_image_probe(int fd);
/* Would a first sector holding these bytes probe as a format other than
 * raw?  Returns its name or NULL.  Used to refuse guest writes into a raw
 * image whose format was guessed (QEMU's raw "probed" restriction). */
const char *rb_image_probe_first_sector(const uint8_t *head, size_t head_len);

/* Range-checked wrappers.  Reads and writes past the end fail with
 * -EINVAL (reads) or -ENOSPC (writes), with a message. */
int rb_image_read(struct rb_image *img, void *buf, uint64_t off, size_t len,
                  struct rb_error *err);
/* Like rb_image_read but bytes past img->size read as zeros (used to read
 * a backing file that is shorter than its overlay). */
int rb_image_read_zeropad(struct rb_image *img, void *buf, uint64_t off,
                          size_t len, struct rb_error *err);
int rb_image_write(struct rb_image *img, const void *buf, uint64_t off,
                   size_t len, unsigned flags, struct rb_error *err);
int rb_image_write_zeroes(struct rb_image *img, uint64_t off, uint64_t len,
                          unsigned flags, struct rb_error *err);
int rb_image_trim(struct rb_image *img, uint64_t off, uint64_t len,
                  struct rb_error *err);
int rb_image_flush(struct rb_image *img, struct rb_error *err);

/*
 * Block status through the whole chain, as qemu-img map reports it: one
 * extent starting at @off, at most @len long, resolved to the first layer
 * that defines it (reports DATA or ZERO; ALLOCATED is then set, depth is
 * that layer's).  When no layer defines it: flags RB_BS_ZERO without
 * ALLOCATED and depth = the last layer asked (the bottom one, or the one
 * whose backing file is shorter than @off); RB_BS_OFFSET_VALID may stay
 * set (qemu reports the host offset of an unallocated subcluster).
 */
int rb_image_block_status(struct rb_image *img, uint64_t off, uint64_t len,
                          struct rb_extent *ext, struct rb_error *err);

/*
 * Dirty bitmap @name of the top layer of @img (not its backing chain) over
 * [@off, @off + @len): *dirty and *bytes (> 0, at most @len) for the run
 * at @off that is all dirty or all clean, granules widened to bytes.
 * Fails with ENOENT for a missing bitmap, EINVAL for an inconsistent
 * (in_use) one, ENOTSUP for a format without bitmaps (raw).  Takes the
 * driver's lock.  Returns 0 or -errno with @err set.
 */
int rb_image_bitmap_extent(struct rb_image *img, const char *name, uint64_t off,
                           uint64_t len, bool *dirty, uint64_t *bytes,
                           struct rb_error *err);

/* Status of the top layer only (no chain walk). */
int rb_image_block_status_top(struct rb_image *img, uint64_t off, uint64_t len,
                              struct rb_extent *ext, struct rb_error *err);

/* Number of layers in the chain (1 for an image without backing). */
unsigned rb_image_chain_length(const struct rb_image *img);

/* The image at @depth in the chain or NULL. */
struct rb_image *rb_image_layer(struct rb_image *img, unsigned depth);

/*
 * Lock the image file @fd (named @path in messages) as QEMU does
 * (block/file-posix.c lock bytes 100+n / 200+n): a writer uses read,
 * write and resize; every opener refuses to share write and resize.
 * Returns 0 (also where the file system has no OFD locks), or -EAGAIN with
 * "image is locked by another process" when a conflicting user holds it.
 * The locks belong to the open file description and go with its close.
 */
int rb_image_lock(int fd, const char *path, bool write, struct rb_error *err);

/* The same with a mode: RB_LOCK_SHARE_ALL (qemu-img -U) only marks the
 * file as read (byte 100), refuses nothing to others and never fails on
 * a conflict.  The message names the lock, as QEMU's does: 'failed to get
 * shared "write" lock' when another process writes. */
enum rb_lock_mode { RB_LOCK_READ, RB_LOCK_WRITE, RB_LOCK_SHARE_ALL };
int rb_image_lock_mode(int fd, const char *path, enum rb_lock_mode mode,
                       struct rb_error *err);

/*
 * Open one layer on an fd the caller opened and locked (an output made by
 * rb_output_open): the driver of opts->format (required; never probed),
 * no backing chain (the caller sets img->backing if it has one).  Takes
 * ownership of @fd, closing it on failure too.
 */
struct rb_image *rb_image_open_fd(const char *path, int fd, const struct rb_open_opts *opts,
                                  struct rb_error *err);

/* What the first and last sectors of an open layer say it is (as
 * rb_image_probe for a file), reading through the driver, no hole read. */
const char *rb_image_probe_layer(struct rb_image *img);

/* Internal helper for drivers: allocate a struct rb_image with @ops and a
 * copy of @path.  Returns NULL on ENOMEM. */
struct rb_image *rb_image_new(const struct rb_image_ops *ops, const char *path);

#endif
