/* SPDX-License-Identifier: MIT */
/*
 * convert.c - the copy engine: copy what block status reports as data
 * from one image to another, chunk by chunk, in ascending order.
 *
 * The loop keeps one invariant: `off` is granule-aligned.  A range the
 * source reports as zero (hole, zero cluster, unallocated in the whole
 * chain) is skipped in whole granules without being read; anything else
 * is read a chunk at a time (only its data sub-ranges are read, the rest
 * of the buffer is zero-filled) and written granule run by granule run,
 * leaving out all-zero granules.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "rblock/io.h"
#include "rblock/ops.h"

struct copy {
    struct rb_image *src, *dst;
    const struct rb_copy_opts *o;
    uint64_t size;   /* bytes to copy: the source's virtual size */
    size_t granule;  /* zero-detection and write alignment unit */
    size_t chunk;    /* multiple of granule */
    uint8_t *buf;
    struct rb_error *err;
};

static bool reads_zero(const struct rb_extent *e)
{
    return (e->flags & RB_BS_ZERO) != 0;
}

/* Zero [off, off + len) of the destination unless it already reads as
 * zeros. */
static int put_zeroes(struct copy *c, uint64_t off, uint64_t len)
{
    if (c->o->dst_zeroed || len == 0)
        return 0;
    return rb_image_write_zeroes(c->dst, off, len, RB_ZERO_MAY_UNMAP, c->err);
}

/* Write the non-zero run buf[0, len) at guest offset off. */
static int put_data(struct copy *c, const uint8_t *buf, uint64_t off, size_t len)
{
    if (!c->o->compress)
        return rb_image_write(c->dst, buf, off, len, 0, c->err);
    /* one cluster at a time: the last one may be short (end of image) */
    for (size_t done = 0; done < len; done += c->granule) {
        size_t n = len - done < c->granule ? len - done : c->granule;
        int ret = c->dst->ops->write_compressed(c->dst, buf + done, off + done, n, c->err);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* Fill c->buf with the guest bytes of [off, off + len), reading only the
 * sub-ranges that hold data.  @first is the status already known at off. */
static int fill_chunk(struct copy *c, uint64_t off, size_t len, struct rb_extent first)
{
    size_t pos = 0;
    struct rb_extent e = first;
    int ret;

    while (pos < len) {
        size_t n;
        if (pos > 0) {
            ret = rb_image_block_status(c->src, off + pos, len - pos, &e, c->err);
            if (ret < 0)
                return ret;
        }
        n = e.length < len - pos ? (size_t)e.length : len - pos;
        if (reads_zero(&e)) {
            memset(c->buf + pos, 0, n);
        } else {
            ret = rb_image_read(c->src, c->buf + pos, off + pos, n, c->err);
            if (ret < 0)
                return ret;
        }
        pos += n;
    }
    return 0;
}

/* Write c->buf[0, len) (guest [off, off + len)) skipping zero granules. */
static int flush_chunk(struct copy *c, uint64_t off, size_t len)
{
    size_t pos = 0;

    while (pos < len) {
        size_t start = pos;
        bool zero = rb_is_zero(c->buf + pos, len - pos < c->granule ? len - pos : c->granule);
        int ret;

        /* extend the run while granules have the same kind */
        do {
            pos += len - pos < c->granule ? len - pos : c->granule;
        } while (pos < len &&
                 rb_is_zero(c->buf + pos, len - pos < c->granule ? len - pos : c->granule) ==
                     zero);
        ret = zero ? put_zeroes(c, off + start, pos - start)
                   : put_data(c, c->buf + start, off + start, pos - start);
        if (ret < 0)
            return ret;
    }
    return 0;
}

static int copy_loop(struct copy *c)
{
    uint64_t off = 0;
    int ret;

    while (off < c->size) {
        struct rb_extent e;
        uint64_t end;

        ret = rb_image_block_status(c->src, off, c->size - off, &e, c->err);
        if (ret < 0)
            return ret;
        if (reads_zero(&e)) {
            /* skip whole granules; a partial one is handled as a chunk */
            end = off + e.length;
            if (end < c->size)
                end -= end % c->granule;
            if (end > off) {
                ret = put_zeroes(c, off, end - off);
                if (ret < 0)
                    return ret;
                off = end;
                goto progress;
            }
        }
        /* a chunk ending on a chunk boundary keeps writes aligned */
        end = off - off % c->chunk + c->chunk;
        if (end > c->size)
            end = c->size;
        ret = fill_chunk(c, off, (size_t)(end - off), e);
        if (ret == 0)
            ret = flush_chunk(c, off, (size_t)(end - off));
        if (ret < 0)
            return ret;
        off = end;
progress:
        if (c->o->progress)
            c->o->progress(c->o->opaque, off);
    }
    return 0;
}

int rb_copy_image(struct rb_image *src, struct rb_image *dst,
                  const struct rb_copy_opts *opts, struct rb_error *err)
{
    static const struct rb_copy_opts defaults;
    struct copy c = {.src = src, .dst = dst, .o = opts ? opts : &defaults, .err = err};
    int ret;

    c.size = src->size;
    if (dst->size < c.size)
        return rb_error_set(err, ENOSPC,
                            "%s: destination is smaller (%" PRIu64 " bytes) than the "
                            "source (%" PRIu64 " bytes)",
                            dst->filename, dst->size, c.size);
    if (c.o->compress && !dst->ops->write_compressed)
        return rb_error_set(err, ENOTSUP, "%s: format '%s' cannot store compressed data",
                            dst->filename, dst->ops->format);
    c.granule = dst->cluster_bytes ? dst->cluster_bytes : 4096;
    c.chunk = c.o->chunk_bytes ? c.o->chunk_bytes : RB_COPY_DEFAULT_CHUNK;
    if (c.chunk < c.granule)
        c.chunk = c.granule;
    c.chunk -= c.chunk % c.granule;
    c.buf = aligned_alloc(4096, (c.chunk + 4095) & ~(size_t)4095);
    if (!c.buf)
        return rb_error_set(err, ENOMEM, "out of memory for a %zu-byte copy buffer", c.chunk);
    ret = copy_loop(&c);
    free(c.buf);
    return ret;
}

int rb_copy_count_data(struct rb_image *src, uint64_t granule, uint64_t *bytes,
                       struct rb_error *err)
{
    uint64_t off = 0, total = 0, last_end = 0; /* granule already counted */

    while (off < src->size) {
        struct rb_extent e;
        int ret = rb_image_block_status(src, off, src->size - off, &e, err);
        if (ret < 0)
            return ret;
        if (!reads_zero(&e)) {
            uint64_t first = off - off % granule, end = off + e.length;
            if (first < last_end)
                first = last_end;
            end += (granule - end % granule) % granule;
            if (end > first)
                total += end - first;
            last_end = end;
        }
        off += e.length;
    }
    *bytes = total;
    return 0;
}
