/* SPDX-License-Identifier: MIT */
/*
 * image.c - struct rb_image: the range-checked wrappers around the driver
 * operations and the walk of the backing chain for block status.  Knows no
 * driver (lib/image/open.c opens by name).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "rblock/image.h"
#include "rblock/io.h"

struct rb_image *rb_image_new(const struct rb_image_ops *ops, const char *path)
{
    struct rb_image *img = calloc(1, sizeof(*img));

    if (!img)
        return NULL;
    img->ops = ops;
    img->filename = strdup(path);
    if (!img->filename) {
        free(img);
        return NULL;
    }
    return img;
}

void rb_image_close(struct rb_image *img)
{
    while (img) {
        struct rb_image *next = img->backing;
        if (img->ops && img->ops->close)
            img->ops->close(img);
        free(img->filename);
        free(img->backing_name);
        free(img->backing_format);
        free(img->backing_path);
        free(img);
        img = next;
    }
}

unsigned rb_image_chain_length(const struct rb_image *img)
{
    unsigned n = 0;

    for (; img; img = img->backing)
        n++;
    return n;
}

struct rb_image *rb_image_layer(struct rb_image *img, unsigned depth)
{
    while (img && depth--)
        img = img->backing;
    return img;
}

static int check_range(struct rb_image *img, uint64_t off, uint64_t len, int code,
                       struct rb_error *err)
{
    uint64_t end;

    if (!rb_add_ok(off, len, &end) || end > img->size)
        return rb_error_set(err, code,
                            "%s: request at offset %" PRIu64 " length %" PRIu64
                            " is past the end of the image (size %" PRIu64 ")",
                            img->filename, off, len, img->size);
    return 0;
}

static int check_writable(struct rb_image *img, struct rb_error *err)
{
    if (img->read_only)
        return rb_error_set(err, EROFS, "%s: image is read-only", img->filename);
    return 0;
}

int rb_image_read(struct rb_image *img, void *buf, uint64_t off, size_t len,
                  struct rb_error *err)
{
    int ret = check_range(img, off, len, EINVAL, err);

    if (ret < 0 || len == 0)
        return ret;
    return img->ops->read(img, buf, off, len, err);
}

int rb_image_read_zeropad(struct rb_image *img, void *buf, uint64_t off, size_t len,
                          struct rb_error *err)
{
    size_t in = 0;

    if (off < img->size)
        in = img->size - off < len ? (size_t)(img->size - off) : len;
    if (in < len)
        memset((uint8_t *)buf + in, 0, len - in);
    if (in == 0)
        return 0;
    return img->ops->read(img, buf, off, in, err);
}

int rb_image_write(struct rb_image *img, const void *buf, uint64_t off, size_t len,
                   unsigned flags, struct rb_error *err)
{
    int ret = check_writable(img, err);

    if (ret == 0)
        ret = check_range(img, off, len, ENOSPC, err);
    if (ret < 0 || len == 0)
        return ret;
    if (!img->ops->write)
        return rb_error_set(err, ENOTSUP, "%s: format does not support writing",
                            img->filename);
    return img->ops->write(img, buf, off, len, flags, err);
}

int rb_image_write_zeroes(struct rb_image *img, uint64_t off, uint64_t len,
                          unsigned flags, struct rb_error *err)
{
    int ret = check_writable(img, err);

    if (ret == 0)
        ret = check_range(img, off, len, ENOSPC, err);
    if (ret < 0 || len == 0)
        return ret;
    if (!img->ops->write_zeroes)
        return rb_error_set(err, ENOTSUP, "%s: format does not support writing",
                            img->filename);
    return img->ops->write_zeroes(img, off, len, flags, err);
}

int rb_image_trim(struct rb_image *img, uint64_t off, uint64_t len, struct rb_error *err)
{
    int ret = check_writable(img, err);

    if (ret == 0)
        ret = check_range(img, off, len, ENOSPC, err);
    if (ret < 0 || len == 0)
        return ret;
    if (!img->ops->trim)
        return 0; /* discard is advisory */
    return img->ops->trim(img, off, len, err);
}

int rb_image_flush(struct rb_image *img, struct rb_error *err)
{
    if (img->read_only || !img->ops->flush)
        return 0;
    return img->ops->flush(img, err);
}

int rb_image_bitmap_extent(struct rb_image *img, const char *name, uint64_t off,
                           uint64_t len, bool *dirty, uint64_t *bytes,
                           struct rb_error *err)
{
    int ret;

    if (!img->ops->bitmap_extent)
        return rb_error_set(err, ENOTSUP, "%s: a %s image has no dirty bitmaps",
                            img->filename, img->ops->format);
    if (len == 0 || off >= img->size || len > img->size - off)
        return rb_error_set(err, EINVAL, "%s: bitmap range %" PRIu64 "+%" PRIu64
                            " is outside the disk", img->filename, off, len);
    ret = img->ops->bitmap_extent(img, name, off, len, dirty, bytes, err);
    if (ret == 0 && (*bytes == 0 || *bytes > len))
        return rb_error_set(err, EIO, "%s: driver returned a bad bitmap extent",
                            img->filename);
    return ret;
}

int rb_image_block_status_top(struct rb_image *img, uint64_t off, uint64_t len,
                              struct rb_extent *ext, struct rb_error *err)
{
    int ret = check_range(img, off, len, EINVAL, err);

    if (ret < 0)
        return ret;
    if (len == 0)
        return rb_error_set(err, EINVAL, "%s: block status of an empty range",
                            img->filename);
    memset(ext, 0, sizeof(*ext));
    ret = img->ops->block_status(img, off, len, ext, err);
    if (ret == 0 && (ext->length == 0 || ext->length > len))
        return rb_error_set(err, EIO, "%s: driver returned a bad extent", img->filename);
    return ret;
}

int rb_image_block_status(struct rb_image *img, uint64_t off, uint64_t len,
                          struct rb_extent *ext, struct rb_error *err)
{
    struct rb_image *layer = img;
    unsigned depth = 0;
    int ret;

    ret = rb_image_block_status_top(img, off, len, ext, err);
    if (ret < 0)
        return ret;
    /*
     * As qemu's bdrv_co_block_status + qemu-img map: a layer defines the
     * range when it reports data or zeros.  Otherwise, without a backing
     * file (or past the end of a shorter backing) the range reads as zeros
     * and is reported at this layer's depth, not allocated, keeping a host
     * offset the driver gave (an allocated cluster's unallocated
     * subcluster).  Else ask the backing for the same range, which only
     * ever shrinks, so the answer holds for the whole extent.
     */
    for (;;) {
        struct rb_image *next = layer->backing;
        uint64_t n = ext->length;

        if (ext->flags & (RB_BS_DATA | RB_BS_ZERO)) {
            ext->flags |= RB_BS_ALLOCATED;
            break;
        }
        ext->flags &= ~(unsigned)RB_BS_ALLOCATED;
        if (!next || off >= next->size) {
            ext->flags |= RB_BS_ZERO;
            break;
        }
        if (n > next->size - off)
            n = next->size - off;
        layer = next;
        depth++;
        memset(ext, 0, sizeof(*ext));
        ret = layer->ops->block_status(layer, off, n, ext, err);
        if (ret < 0)
            return ret;
        if (ext->length == 0 || ext->length > n)
            return rb_error_set(err, EIO, "%s: driver returned a bad extent",
                                layer->filename);
    }
    ext->depth = depth;
    if (!(ext->flags & RB_BS_OFFSET_VALID))
        ext->host_off = 0;
    return 0;
}
