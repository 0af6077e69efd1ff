/* SPDX-License-Identifier: MIT */
/*
 * raw.c - the raw driver: a file or block device holding the guest's
 * bytes at the same offsets.  Holes found with SEEK_DATA/SEEK_HOLE are
 * reported as zero, as QEMU's file driver does.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rblock/image.h"
#include "rblock/io.h"

struct raw_state {
    int fd;
    bool blockdev;
    bool sequential;  /* opts->sequential: write-behind */
    uint64_t wb_end;  /* writeback started below this offset */
};

static struct raw_state *raw(struct rb_image *img)
{
    return img->priv;
}

static int raw_read(struct rb_image *img, void *buf, uint64_t off, size_t len,
                    struct rb_error *err)
{
    int ret = rb_io_pread(raw(img)->fd, buf, len, off);

    if (ret < 0)
        return rb_error_set(err, -ret, "%s: read error: %s", img->filename,
                            strerror(-ret));
    return 0;
}

static int raw_flush(struct rb_image *img, struct rb_error *err)
{
    int ret = rb_io_sync(raw(img)->fd);

    if (ret < 0)
        return rb_error_set(err, -ret, "%s: flush failed: %s", img->filename,
                            strerror(-ret));
    return 0;
}

static int raw_write(struct rb_image *img, const void *buf, uint64_t off, size_t len,
                     unsigned flags, struct rb_error *err)
{
    struct raw_state *s = raw(img);
    int ret = rb_io_pwrite(s->fd, buf, len, off);

    if (ret < 0)
        return rb_error_set(err, -ret, "%s: write error: %s", img->filename,
                            strerror(-ret));
    /* write-behind: the disk works while the writer fills the page cache,
     * so the final flush has little left (convert's output) */
    if (s->sequential)
        rb_io_writebehind(s->fd, &s->wb_end, off + len);
    if (flags & RB_WRITE_FUA)
        return raw_flush(img, err);
    return 0;
}

static int raw_write_zeroes(struct rb_image *img, uint64_t off, uint64_t len,
                            unsigned flags, struct rb_error *err)
{
    int ret;

    if ((flags & RB_ZERO_FAST) && raw(img)->blockdev)
        return -ENOTSUP;
    ret = rb_io_zero(raw(img)->fd, off, len, flags & RB_ZERO_MAY_UNMAP);
    if (ret < 0)
        return rb_error_set(err, -ret, "%s: write zeroes failed: %s", img->filename,
                            strerror(-ret));
    if (flags & RB_WRITE_FUA)
        return raw_flush(img, err);
    return 0;
}

static int raw_trim(struct rb_image *img, uint64_t off, uint64_t len,
                    struct rb_error *err)
{
    /* A raw file has no backing: discard = punch a hole (reads as zeros). */
    int ret = rb_io_punch(raw(img)->fd, off, len);

    if (ret < 0)
        return rb_error_set(err, -ret, "%s: discard failed: %s", img->filename,
                            strerror(-ret));
    return 0;
}

static int raw_block_status(struct rb_image *img, uint64_t off, uint64_t len,
                            struct rb_extent *ext, struct rb_error *err)
{
    bool is_data;
    uint64_t n;
    int ret = rb_io_extent(raw(img)->fd, off, len, img->size, &is_data, &n);

    if (ret < 0)
        return rb_error_set(err, -ret, "%s: cannot map: %s", img->filename,
                            strerror(-ret));
    ext->length = n;
    ext->flags = RB_BS_ALLOCATED | RB_BS_OFFSET_VALID |
                 (is_data ? RB_BS_DATA : RB_BS_ZERO);
    ext->host_off = off;
    return 0;
}

static void raw_close(struct rb_image *img)
{
    struct raw_state *s = raw(img);

    if (s) {
        close(s->fd);
        free(s);
    }
}

static const struct rb_image_ops raw_ops = {
    .format = "raw",
    .read = raw_read,
    .write = raw_write,
    .write_zeroes = raw_write_zeroes,
    .trim = raw_trim,
    .flush = raw_flush,
    .block_status = raw_block_status,
    .close = raw_close,
};

struct rb_image *rb_raw_open(const char *path, int fd, const struct rb_open_opts *opts,
                             struct rb_error *err)
{
    struct rb_image *img = rb_image_new(&raw_ops, path);
    struct raw_state *s = calloc(1, sizeof(*s));
    int ret;

    if (!img || !s) {
        rb_error_set(err, ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    s->fd = fd;
    s->blockdev = rb_io_is_blockdev(fd);
    s->sequential = opts->sequential;
    img->priv = s;
    img->read_only = !opts->write;
    ret = rb_io_size(fd, &img->size);
    if (ret < 0) {
        rb_error_set(err, -ret, "%s: cannot get size: %s", path, strerror(-ret));
        rb_image_close(img);
        return NULL;
    }
    return img;
fail:
    free(s);
    free(img ? img->filename : NULL);
    free(img);
    close(fd);
    return NULL;
}
