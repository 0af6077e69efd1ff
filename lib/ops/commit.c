/* SPDX-License-Identifier: MIT */
/*
 * commit.c - merge an overlay (and the layers under it) into a backing
 * file further down, as qemu-img commit does (contract in rblock/ops.h).
 *
 * qemu-img commit runs QEMU's active commit job (block/mirror.c): every
 * range allocated above BASE is copied into BASE, data as data and zero
 * ranges as write-zeroes with unmap; then, without -d or -b, TOP's
 * clusters are dropped (qcow2_make_empty) so TOP reads through to BASE.
 *
 * Ordering: BASE is flushed before TOP loses its first cluster.  Until
 * then TOP still defines every range it defined; afterwards each range
 * TOP drops reads the same bytes from BASE.  So TOP's guest content is the
 * same at every instant, whatever crash comes.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "rblock/ops.h"
#include "rblock/output.h"
#include "util/path.h"

#define COPY_CHUNK ((size_t)4 << 20)

struct commit {
    struct rb_image *top;
    struct rb_image *base;  /* the layer written, in top's chain */
    struct rb_output *out;  /* base's fd and write lock */
    unsigned depth;
    uint8_t *buf;
    const struct rb_commit_opts *opts;
    struct rb_commit_stats st;
};

/* The depth of the layer of @top that @name names, or 0.  As QEMU's
 * bdrv_find_backing_image: a relative name is taken from the folder of
 * each overlay in turn and compared (as a file) with its backing file. */
static unsigned find_layer(struct rb_image *top, const char *name, struct rb_error *err)
{
    unsigned d = 1;

    for (struct rb_image *l = top; l->backing; l = l->backing, d++) {
        char *path = rb_path_resolve(l->filename, name);
        struct stat st;
        bool found;

        if (!path) {
            rb_error_set(err, ENOMEM, "out of memory");
            return 0;
        }
        found = stat(path, &st) == 0 && l->backing->dev == st.st_dev &&
                l->backing->ino == st.st_ino;
        free(path);
        if (found)
            return d;
    }
    return 0;
}

/*
 * Swap the read-only layer at c->depth for the same file opened for
 * writing: its read lock dropped, its write lock taken (refused while
 * another process uses it), and checked to be the same file.
 */
static int reopen_base(struct commit *c, struct rb_error *err)
{
    struct rb_image *parent = rb_image_layer(c->top, c->depth - 1);
    struct rb_image *old = parent->backing, *below = old->backing, *base;
    const char *fmt = old->ops->format; /* static: the driver table's */
    struct rb_open_opts oo = {.format = fmt, .write = true};
    dev_t dev = old->dev;
    ino_t ino = old->ino;
    uint64_t size = old->size;
    char *path = strdup(old->filename);
    int fd, ret;

    if (!path)
        return rb_error_set(err, ENOMEM, "out of memory");
    old->backing = NULL;
    parent->backing = NULL;
    rb_image_close(old);
    c->out = rb_output_open(path, NULL, 0, RB_OUTPUT_IN_PLACE, err);
    if (!c->out) {
        rb_image_close(below);
        free(path);
        return -(err->code ? err->code : EIO);
    }
    if (c->out->dev != dev || c->out->ino != ino) {
        rb_image_close(below);
        ret = rb_error_set(err, EAGAIN, "%s: was replaced by another file while being "
                           "opened (left unchanged)", path);
        free(path);
        return ret;
    }
    if (size < c->top->size && strcmp(fmt, "raw") == 0) {
        /* as the commit job grows a smaller base (blk_truncate): new bytes
         * read as zeros, nothing that was there changes */
        ret = rb_output_size(c->out, c->top->size, err);
        if (ret < 0) {
            rb_image_close(below);
            free(path);
            return ret;
        }
    }
    fd = rb_output_dup(c->out, err);
    base = fd < 0 ? NULL : rb_image_open_fd(path, fd, &oo, err);
    free(path);
    if (!base) {
        rb_image_close(below);
        return -(err->code ? err->code : EIO);
    }
    base->dev = dev;
    base->ino = ino;
    base->backing = below;
    parent->backing = base;
    c->base = base;
    return 0;
}

static void progress(struct commit *c, uint64_t done)
{
    if (c->opts->progress)
        c->opts->progress(c->opts->opaque, done, c->top->size);
}

/* Copy [off, off + len) of TOP's guest content into BASE. */
static int copy_data(struct commit *c, uint64_t off, uint64_t len, struct rb_error *err)
{
    while (len > 0) {
        size_t n = len < COPY_CHUNK ? (size_t)len : COPY_CHUNK;
        int ret = rb_image_read(c->top, c->buf, off, n, err);

        if (ret == 0)
            ret = rb_image_write(c->base, c->buf, off, n, 0, err);
        if (ret < 0)
            return ret;
        c->st.data_bytes += n;
        off += n;
        len -= n;
        progress(c, off);
    }
    return 0;
}

/* Every range a layer above BASE defines, into BASE; then BASE durable. */
static int copy_down(struct commit *c, struct rb_error *err)
{
    uint64_t off = 0, size = c->top->size;
    int ret;

    while (off < size) {
        struct rb_extent e;

        ret = rb_image_block_status(c->top, off, size - off, &e, err);
        if (ret < 0)
            return ret;
        if ((e.flags & RB_BS_ALLOCATED) && e.depth < c->depth) {
            if (e.flags & RB_BS_DATA) {
                ret = copy_data(c, off, e.length, err);
            } else {
                ret = rb_image_write_zeroes(c->base, off, e.length, RB_ZERO_MAY_UNMAP,
                                            err);
                c->st.zero_bytes += e.length;
            }
            if (ret < 0)
                return ret;
        }
        off += e.length;
        progress(c, off);
    }
    /* ORDER: BASE holds TOP's data durably before TOP drops any of it */
    return rb_image_flush(c->base, err);
}

/* Clusters of unallocated gap a discard span may cross: one discard of a
 * few spans syncs far less often than one per extent, and walking a short
 * gap costs only lookups. */
#define EMPTY_GAP_CLUSTERS 4096

/* Discard every cluster TOP defines (qcow2_make_empty's fallback: the
 * entries become unallocated and their clusters are freed), in spans of
 * whole clusters (a partly allocated one, with subclusters, goes too). */
static int make_empty(struct commit *c, struct rb_error *err)
{
    uint64_t off = 0, size = c->top->size, g = c->top->cluster_bytes;
    uint64_t from = 0, to = 0; /* pending span; empty when from == to */
    int ret;

    if (!g)
        g = 512;
    while (off <= size) {
        struct rb_extent e = {.length = 0};
        uint64_t a = size, b = size;

        if (off < size) {
            ret = rb_image_block_status_top(c->top, off, size - off, &e, err);
            if (ret < 0)
                return ret;
            if (!(e.flags & (RB_BS_DATA | RB_BS_ZERO))) {
                off += e.length;
                continue;
            }
            a = off - off % g;
            b = off + e.length;
            b = b % g ? b - b % g + g : b;
            if (b > size)
                b = size;
        }
        if (from < to && (off >= size || a > to + EMPTY_GAP_CLUSTERS * g)) {
            ret = rb_image_trim(c->top, from, to - from, err);
            if (ret < 0)
                return ret;
            from = to = 0;
        }
        if (off >= size)
            break;
        if (from == to)
            from = a;
        to = b;
        off = b;
    }
    ret = rb_image_flush(c->top, err);
    if (ret == 0)
        c->st.emptied = true;
    return ret;
}

static int run(struct commit *c, const char *top_path, struct rb_error *err)
{
    const struct rb_commit_opts *o = c->opts;
    bool drop = o->drop || o->base;
    struct rb_open_opts oo = {.format = o->format, .write = !drop};
    struct rb_image *base;
    int ret;

    c->top = rb_image_open(top_path, &oo, err);
    if (!c->top)
        return -(err->code ? err->code : EIO);
    if (!c->top->backing)
        return rb_error_set(err, EINVAL, "%s: image does not have a backing file",
                            top_path);
    c->depth = o->base ? find_layer(c->top, o->base, err) : 1;
    if (!c->depth && err->code)
        return -err->code;
    if (!c->depth)
        return rb_error_set(err, ENOENT, "%s: did not find '%s' in the backing chain",
                            top_path, o->base);
    c->st.base_depth = c->depth;
    base = rb_image_layer(c->top, c->depth);
    if (base->size < c->top->size && strcmp(base->ops->format, "raw") != 0)
        return rb_error_set(err, ENOSPC, "%s: backing file '%s' of %" PRIu64 " bytes is "
                            "smaller than the image (%" PRIu64 " bytes); grow it first "
                            "(rblock resize / qemu-img resize)", top_path,
                            base->filename, base->size, c->top->size);
    c->buf = malloc(COPY_CHUNK);
    if (!c->buf)
        return rb_error_set(err, ENOMEM, "out of memory");
    ret = reopen_base(c, err);
    if (ret == 0)
        ret = copy_down(c, err);
    if (ret == 0 && !drop)
        ret = make_empty(c, err);
    if (ret == 0)
        progress(c, c->top->size);
    return ret;
}

int rb_commit(const char *top_path, const struct rb_commit_opts *opts,
              struct rb_commit_stats *stats, struct rb_error *err)
{
    struct rb_error local = {0};
    struct commit c = {.opts = opts};
    int ret;

    if (!err)
        err = &local;
    ret = run(&c, top_path, err);
    /* the images (BASE among them, flushed and its bitmaps written back
     * by its close) before the output that holds BASE's lock */
    rb_image_close(c.top);
    rb_output_close(c.out, false);
    free(c.buf);
    if (stats)
        *stats = c.st;
    return ret;
}
