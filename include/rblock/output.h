/* SPDX-License-Identifier: MIT */
/*
 * output.h - the one way a command opens a file it is going to write
 * (convert, create, delta; later commit, rebase, resize).
 *
 * What it promises, whatever happens after:
 * - an output is never one of the inputs: when the path (symlinks
 *   resolved) is the same file (device and inode) as any layer of any
 *   input's backing chain, it is refused before anything is opened;
 * - only a regular file or (when the caller allows it) a block device is
 *   ever written: a FIFO, character device, socket or directory is refused
 *   and left alone;
 * - an existing regular file is opened without O_TRUNC and locked for
 *   writing as QEMU locks images (rb_image_lock) before anything changes;
 *   when another process holds it the open fails with EAGAIN and the file
 *   is untouched; only then is it truncated;
 * - a block device is written in place: never truncated, never removed;
 * - a missing path is created with O_EXCL, so `created` is true only for a
 *   file this run made, and only such a file is removed by
 *   rb_output_close(out, true).
 */
#ifndef RBLOCK_OUTPUT_H
#define RBLOCK_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "rblock/error.h"
#include "rblock/image.h"

struct rb_output {
    char *path;         /* as the caller named it (messages, removal) */
    int fd;             /* O_RDWR, write-locked; owned by the output */
    bool created;       /* this run created the file */
    bool truncated;     /* an existing regular file was emptied */
    bool blockdev;      /* a block device: written in place */
    uint64_t dev_bytes; /* the block device's size (0 for a file) */
    bool handed_out;    /* rb_output_dup gave a writer its fd */
    dev_t dev;          /* identity of the file written */
    ino_t ino;
};

/* rb_output_open flags */
/* a block device may be the output (raw) */
#define RB_OUTPUT_BLOCKDEV 0x1
/* modify an existing image (commit, rebase, resize): it must exist, it is
 * locked but never truncated, created or removed */
#define RB_OUTPUT_IN_PLACE 0x2

/*
 * Refuse @path when it names (after resolving symlinks) the same file as
 * any layer of the backing chain of any of the @n_inputs images in
 * @inputs (NULL entries are skipped).  A path that does not exist is
 * fine.  Returns 0 or -EINVAL with "PATH: is 'LAYER', an input ...; refusing
 * to overwrite it" in @err.
 */
int rb_output_check_inputs(const char *path, struct rb_image *const *inputs,
                           size_t n_inputs, struct rb_error *err);

/*
 * Open @path for writing an image, as described at the top of this file:
 * refuse inputs (rb_output_check_inputs), refuse special files (EINVAL)
 * and block devices unless @flags has RB_OUTPUT_BLOCKDEV, create a missing
 * file with O_EXCL (mode 0644 less umask), lock an existing one for
 * writing (EAGAIN, "failed to get \"write\" lock" when another process
 * holds it) and only then truncate it to 0 bytes (with RB_OUTPUT_IN_PLACE:
 * a missing file is ENOENT and an existing one keeps its bytes).  A dangling symlink is
 * refused.  On failure nothing was changed and nothing is left open.
 * Returns an owned output or NULL with @err set.
 */
struct rb_output *rb_output_open(const char *path, struct rb_image *const *inputs,
                                 size_t n_inputs, unsigned flags, struct rb_error *err);

/*
 * Make the output hold @bytes: a regular file is resized to @bytes (sparse),
 * a block device must be at least that large (ENOSPC otherwise) and is
 * left as it is.  Returns 0 or -errno with @err set.
 */
int rb_output_size(struct rb_output *out, uint64_t bytes, struct rb_error *err);

/*
 * A new descriptor of the output's open file (it shares the lock), for a
 * driver that takes ownership of its fd.  Returns the fd or -errno with
 * @err set.
 */
int rb_output_dup(struct rb_output *out, struct rb_error *err);

/*
 * What a failure leaves behind, for the end of the error line: " (partial
 * output removed)" when this run created the file, " (the existing output
 * file was emptied and holds an incomplete image)" for an existing file
 * that was truncated, " (the block device may hold an incomplete image)"
 * once a writer had a block device (rb_output_dup), "" when nothing was
 * changed.  Accepts
 * NULL (returns "").
 */
const char *rb_output_fate(const struct rb_output *out);

/*
 * Release the output: with @failed, remove the file when this run created
 * it (and it is still the same file), else keep it.  Closes the fd, which
 * drops the lock, last.  Close any image opened on an rb_output_dup fd
 * first.  Accepts NULL.
 */
void rb_output_close(struct rb_output *out, bool failed);

#endif
