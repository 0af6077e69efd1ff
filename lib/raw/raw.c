/* SPDX-License-Identifier: MIT */
/*
 * raw.c - the raw driver: a file or block device holding the guest's
 * bytes at the same offsets.  Holes found with SEEK_DATA/SEEK_HOLE are
 * reported as zero, as QEMU's file driver does.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "image/drivers.h"
#include "rblock/image.h"
#include "rblock/io.h"

struct raw_state {
    int fd;
    bool blockdev;
    bool sequential;  /* opts->sequential: write-behind */
    uint64_t wb_end;  /* writeback started below this offset */
    /* Writes into the first sector of an image whose format was guessed
     * are checked and made one at a time under this lock, so that two
     * writes each harmless alone cannot together build a header. */
    pthread_mutex_t sector0_lock;
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

/*
 * The probed-raw restriction (as QEMU's raw driver applies when the format
 * was probed): a raw image whose format was guessed must never come to
 * probe as another format, or the next open that guesses would read it as
 * that format, e.g. as a qcow2 image whose backing file is any host file.
 * So a change of the first sector is refused with EPERM when the sector
 * that would result (what is there, with the change) matches a signature.
 * @buf NULL means zeros (write_zeroes, trim).  Called with sector0_lock
 * held, so the sector read here is the one the write changes.
 */
static int guard_sector0(struct rb_image *img, const void *buf, uint64_t off, uint64_t len,
                         struct rb_error *err)
{
    uint8_t sector[RB_PROBE_BYTES];
    size_t n = img->size < RB_PROBE_BYTES ? (size_t)img->size : RB_PROBE_BYTES;
    size_t end = len < n - off ? (size_t)(off + len) : n;
    const char *fmt;
    int ret = rb_io_pread(raw(img)->fd, sector, n, 0);

    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: read error", img->filename);
    if (buf)
        memcpy(sector + off, buf, end - (size_t)off);
    else
        memset(sector + off, 0, end - (size_t)off);
    fmt = rb_image_probe_first_sector(sector, n);
    if (fmt)
        return rb_error_set(err, EPERM, "%s: write to the first sector refused: the image "
                            "would then probe as %s, and its format (raw) was only guessed; "
                            "give -f raw to allow it", img->filename, fmt);
    return 0;
}

static bool guarded(struct rb_image *img, uint64_t off)
{
    return img->format_guessed && off < RB_PROBE_BYTES && off < img->size;
}

static int raw_write_unguarded(struct rb_image *img, const void *buf, uint64_t off,
                               size_t len, unsigned flags, struct rb_error *err);

static int raw_write(struct rb_image *img, const void *buf, uint64_t off, size_t len,
                     unsigned flags, struct rb_error *err)
{
    struct raw_state *s = raw(img);
    int ret;

    if (!guarded(img, off))
        return raw_write_unguarded(img, buf, off, len, flags, err);
    pthread_mutex_lock(&s->sector0_lock);
    ret = guard_sector0(img, buf, off, len, err);
    if (ret == 0)
        ret = raw_write_unguarded(img, buf, off, len, flags, err);
    pthread_mutex_unlock(&s->sector0_lock);
    return ret;
}

static int raw_write_unguarded(struct rb_image *img, const void *buf, uint64_t off,
                               size_t len, unsigned flags, struct rb_error *err)
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

static int raw_write_zeroes_unguarded(struct rb_image *img, uint64_t off, uint64_t len,
                                      unsigned flags, struct rb_error *err);
static int raw_trim_unguarded(struct rb_image *img, uint64_t off, uint64_t len,
                              struct rb_error *err);

/* write_zeroes (trim when @trim) under the probed-raw restriction: a trim
 * may leave zeros, so both are checked as zeros. */
static int raw_zero_guarded(struct rb_image *img, uint64_t off, uint64_t len, unsigned flags,
                            bool trim, struct rb_error *err)
{
    struct raw_state *s = raw(img);
    int ret;

    pthread_mutex_lock(&s->sector0_lock);
    ret = guard_sector0(img, NULL, off, len, err);
    if (ret == 0)
        ret = trim ? raw_trim_unguarded(img, off, len, err)
                   : raw_write_zeroes_unguarded(img, off, len, flags, err);
    pthread_mutex_unlock(&s->sector0_lock);
    return ret;
}

static int raw_write_zeroes(struct rb_image *img, uint64_t off, uint64_t len,
                            unsigned flags, struct rb_error *err)
{
    if (guarded(img, off))
        return raw_zero_guarded(img, off, len, flags, false, err);
    return raw_write_zeroes_unguarded(img, off, len, flags, err);
}

static int raw_write_zeroes_unguarded(struct rb_image *img, uint64_t off, uint64_t len,
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

static int raw_trim(struct rb_image *img, uint64_t off, uint64_t len, struct rb_error *err)
{
    if (guarded(img, off))
        return raw_zero_guarded(img, off, len, 0, true, err);
    return raw_trim_unguarded(img, off, len, err);
}

static int raw_trim_unguarded(struct rb_image *img, uint64_t off, uint64_t len,
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
        pthread_mutex_destroy(&s->sector0_lock);
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
    pthread_mutex_init(&s->sector0_lock, NULL);
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
