/* SPDX-License-Identifier: MIT */
/*
 * delta.c - write a qcow2 overlay of BASE holding only what NEW changed
 * (contract in include/rblock/diff.h).
 *
 * One pass: rb_diff walks BASE and NEW with the overlay's cluster as the
 * granule, and each run of differing clusters it reports is written at
 * once from the buffers it already read: clusters where NEW is all zeros
 * become zero clusters (write_zeroes, no allocation), the others data
 * clusters.  What NEW shares with BASE (equal bytes, or the very same
 * backing layer when NEW is an overlay of BASE) is never written, so the
 * overlay falls through to BASE there.
 *
 * With a bitmap (delta --bitmap) nothing is compared: NEW's persistent
 * dirty bitmap says which clusters changed since the previous backup, and
 * only those are read from NEW and written, the same way; BASE is never
 * read.  A granule and a cluster need not have the same size: every
 * cluster that a dirty granule touches is copied.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rblock/diff.h"
#include "rblock/io.h"
#include "rblock/output.h"
#include "rblock/qcow2-create.h"
#include "rblock/rbd.h"
#include "util/path.h"

struct delta {
    const struct rb_delta_opts *opts;
    struct rb_image *out;
    uint64_t cluster;
    uint64_t size; /* DELTA's size: NEW's, rounded up to a sector */
    struct rb_delta_stats *st;
};

/* Write [off, off+len) of NEW: one call per stretch of data or of zeros. */
static int flush_stretch(struct delta *d, const uint8_t *buf, uint64_t off, uint64_t len,
                         bool zero, struct rb_error *err)
{
    uint64_t clusters = (len + d->cluster - 1) / d->cluster;

    if (len == 0)
        return 0;
    if (zero) {
        d->st->zero_clusters += clusters;
        /* MAY_UNMAP: nothing in DELTA to keep; the range must read as zeros
         * (v3 zero clusters) whatever BASE holds. */
        return rb_image_write_zeroes(d->out, off, len, RB_ZERO_MAY_UNMAP, err);
    }
    d->st->data_clusters += clusters;
    return rb_image_write(d->out, buf, off, (size_t)len, 0, err);
}

static int on_run(void *opaque, const struct rb_diff_run *run, struct rb_error *err)
{
    struct delta *d = opaque;
    uint64_t len = run->len, from = 0;
    bool zero = false;
    int ret;

    if (run->off >= d->size)
        return 0;
    if (len > d->size - run->off)
        len = d->size - run->off;
    for (uint64_t at = 0; at < len; at += d->cluster) {
        uint64_t n = len - at < d->cluster ? len - at : d->cluster;
        bool z = !run->b || rb_is_zero(run->b + at, (size_t)n);

        if (at > from && z != zero) {
            ret = flush_stretch(d, run->b ? run->b + from : NULL, run->off + from,
                                at - from, zero, err);
            if (ret < 0)
                return ret;
            from = at;
        }
        zero = z;
    }
    return flush_stretch(d, run->b ? run->b + from : NULL, run->off + from, len - from,
                         zero, err);
}

/* ---- the clusters dirty in NEW's bitmap --------------------------------- */

#define BITMAP_CHUNK ((uint64_t)4 << 20) /* a multiple of every cluster size */

/* Read [off, end) of NEW (zeros past its end, up to DELTA's sector-rounded
 * size) and write it as data or zero clusters. */
static int copy_range(struct delta *d, struct rb_image *newi, uint8_t *buf, uint64_t off,
                      uint64_t end, struct rb_error *err)
{
    while (off < end) {
        uint64_t n = end - off < BITMAP_CHUNK ? end - off : BITMAP_CHUNK;
        struct rb_diff_run run = {.off = off, .len = n, .b = buf};
        int ret = rb_image_read_zeropad(newi, buf, off, (size_t)n, err);

        if (ret == 0)
            ret = on_run(d, &run, err);
        if (ret < 0)
            return ret;
        d->st->diff.read_b_bytes += n;
        d->st->diff.diff_bytes += n;
        off += n;
    }
    return 0;
}

/* One pass over the bitmap's runs; dirty runs widened to whole clusters
 * and joined when they touch, so each cluster is read and written once. */
static int copy_dirty(struct delta *d, struct rb_image *newi, const char *bitmap,
                      struct rb_error *err)
{
    uint64_t size = newi->size, off = 0, start = 0, end = 0;
    uint8_t *buf = malloc((size_t)BITMAP_CHUNK);
    int ret = 0;

    if (!buf)
        return rb_error_set(err, ENOMEM, "out of memory");
    d->st->diff.size_bytes = size;
    while (off < size) {
        uint64_t n, s, e;
        bool dirty;

        ret = rb_image_bitmap_extent(newi, bitmap, off, size - off, &dirty, &n, err);
        if (ret < 0)
            goto out;
        if (dirty) {
            s = off / d->cluster * d->cluster;
            e = (off + n) / d->cluster * d->cluster;
            if (e < off + n)
                e += d->cluster;
            if (e > d->size)
                e = d->size;
            if (end > start && s > end) {
                ret = copy_range(d, newi, buf, start, end, err);
                if (ret < 0)
                    goto out;
                start = s;
            } else if (end == start) {
                start = s;
            }
            end = e;
        }
        off += n;
        if (d->opts->on_progress)
            d->opts->on_progress(d->opts->opaque, off);
    }
    if (end > start)
        ret = copy_range(d, newi, buf, start, end, err);
out:
    free(buf);
    return ret;
}

static void on_progress(void *opaque, uint64_t done)
{
    struct delta *d = opaque;

    d->opts->on_progress(d->opts->opaque, done);
}

/* ---- the backing name ----------------------------------------------------- */

/* realpath() of the folder of @path, plus the last component of @path
 * when @keep_base (a file that need not exist, or a symlink kept as named). */
static char *resolve_dir(const char *path, bool keep_base, struct rb_error *err)
{
    const char *slash = strrchr(path, '/');
    char *dir, *real, *out;
    const char *base = slash ? slash + 1 : path;

    if (slash == path)
        dir = strdup("/");
    else if (slash)
        dir = strndup(path, (size_t)(slash - path));
    else
        dir = strdup(".");
    if (!dir) {
        rb_error_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    real = realpath(dir, NULL);
    if (!real) {
        rb_error_errno(err, errno, "%s: cannot resolve folder '%s'", path, dir);
        free(dir);
        return NULL;
    }
    free(dir);
    if (!keep_base)
        return real;
    out = malloc(strlen(real) + strlen(base) + 2);
    if (out)
        sprintf(out, "%s%s%s", real, strcmp(real, "/") == 0 ? "" : "/", base);
    else
        rb_error_set(err, ENOMEM, "out of memory");
    free(real);
    return out;
}

char *rb_delta_backing_name(const char *base_path, const char *delta_path,
                            struct rb_error *err)
{
    char *base = resolve_dir(base_path, true, err);
    char *dir = base ? resolve_dir(delta_path, false, err) : NULL;
    char *out = NULL;
    size_t common = 0, ups = 0, dlen;

    if (!base || !dir)
        goto done;
    /* With DELTA's folder as "/x/y/" (a trailing slash), the longest
     * prefix of it ending in '/' that BASE's path shares is their common
     * folder; each further component of DELTA's folder is one "../". */
    dlen = strlen(dir);
    if (dir[dlen - 1] != '/') {
        char *t = realloc(dir, dlen + 2);
        if (!t) {
            rb_error_set(err, ENOMEM, "out of memory");
            goto done;
        }
        dir = t;
        strcpy(dir + dlen, "/");
    }
    for (size_t i = 0; dir[i] && dir[i] == base[i]; i++) {
        if (dir[i] == '/')
            common = i + 1;
    }
    for (const char *p = dir + common; *p; p++)
        ups += *p == '/';
    out = malloc(3 * ups + strlen(base + common) + 1);
    if (!out) {
        rb_error_set(err, ENOMEM, "out of memory");
        goto done;
    }
    out[0] = '\0';
    for (size_t i = 0; i < ups; i++)
        strcat(out, "../");
    strcat(out, base + common);
done:
    free(base);
    free(dir);
    return out;
}

/* ---- rb_delta --------------------------------------------------------------- */

/* The file that the backing name @name stored in DELTA at @delta_path
 * leads to, as rb_image_open resolves it (relative to DELTA's folder). */
static int stat_backing(const char *delta_path, const char *name, struct stat *st)
{
    char *path = rb_path_resolve(delta_path, name);
    int ret;

    if (!path)
        return -ENOMEM;
    ret = stat(path, st) < 0 ? -errno : 0;
    free(path);
    return ret;
}

/* The backing name of a delta over an rbd: BASE: its plain name (no
 * options: an overlay's backing never names a configuration, see
 * lib/image/open.c), or -b NAME when it names the same image and snapshot. */
static int rbd_backing_name(const char *base_path, const char *given, char **name,
                            struct rb_error *err)
{
    struct rb_rbd_name n, g;
    char buf[4 * RB_RBD_NAME_MAX];

    if (rb_rbd_parse_name(base_path, &n, err) < 0)
        return -EINVAL;
    if (given && (rb_rbd_parse_name(given, &g, NULL) < 0 || g.has_options ||
                  !rb_rbd_same_image(given, base_path) || strcmp(g.snap, n.snap) != 0))
        return rb_error_set(err, EINVAL, "backing file name '%s' does not name '%s' as a "
                            "plain rbd:POOL/IMAGE[@SNAP]", given, base_path);
    *name = strdup(rb_rbd_plain_name(&n, buf, sizeof(buf)));
    return *name ? 0 : rb_error_set(err, ENOMEM, "out of memory");
}

static int create_delta(int fd, const char *delta_path, struct rb_image *base,
                        struct rb_image *newi, const char *backing_name,
                        const struct rb_delta_opts *opts, struct rb_error *err)
{
    struct rb_qcow2_create_opts co;
    char *optstr = NULL;
    int ret = 0;

    rb_qcow2_create_opts_init(&co);
    if (opts->create_options) {
        optstr = strdup(opts->create_options);
        if (!optstr)
            return rb_error_set(err, ENOMEM, "out of memory");
        ret = rb_qcow2_parse_options(optstr, &co, err);
    }
    if (opts->cluster_bytes)
        co.cluster_bytes = opts->cluster_bytes;
    /* qcow2 sizes are whole 512-byte sectors (QEMU rounds up too); the
     * padding past NEW's end reads as zeros like NEW's own end. */
    co.size = (newi->size + 511) & ~(uint64_t)511;
    co.size_set = true;
    co.backing_file = backing_name;
    co.backing_format = base->ops->format;
    if (ret == 0)
        ret = rb_qcow2_check_opts(&co, err);
    if (ret == 0)
        ret = rb_qcow2_create(fd, delta_path, &co, err);
    free(optstr);
    return ret;
}

int rb_delta(const char *base_path, const char *new_path, const char *delta_path,
             const struct rb_delta_opts *opts, struct rb_delta_stats *stats,
             struct rb_error *err)
{
    struct rb_open_opts bo = {.format = opts->base_format, .force_share = opts->force_share};
    struct rb_open_opts no = {.format = opts->new_format, .force_share = opts->force_share};
    struct rb_open_opts dopen = {
        .format = "qcow2", .write = true, .unsafe_no_barriers = true, .no_backing = true};
    struct rb_delta_stats st = {0};
    struct rb_image *base = NULL, *newi = NULL, *inputs[2];
    struct rb_output *out = NULL;
    struct delta d = {.st = &st, .opts = opts};
    struct stat bst;
    char *name = NULL;
    int fd, ret = -EINVAL;

    if (!(base = rb_image_open(base_path, &bo, err)) ||
        !(newi = rb_image_open(new_path, &no, err))) {
        ret = -(err && err->code ? err->code : EIO);
        goto fail;
    }
    /* A missing or inconsistent bitmap is refused before DELTA exists. */
    if (opts->bitmap && newi->size) {
        bool dirty;
        uint64_t n;

        ret = rb_image_bitmap_extent(newi, opts->bitmap, 0, newi->size, &dirty, &n, err);
        if (ret < 0)
            goto fail;
    }
    if (rb_rbd_is_name(base_path))
        ret = rbd_backing_name(base_path, opts->backing_name, &name, err);
    else
        name = opts->backing_name ? strdup(opts->backing_name)
                                  : rb_delta_backing_name(base_path, delta_path, err);
    if (rb_rbd_is_name(base_path) && ret < 0)
        goto fail;
    if (!name) {
        ret = rb_error_set(err, ENOMEM, "out of memory"); /* keeps an earlier cause */
        ret = -(err && err->code ? err->code : -ret);
        goto fail;
    }
    /* The stored name must lead from DELTA's folder to BASE, else the
     * delta would read another file (or none) as its backing. */
    ret = rb_rbd_is_name(base_path) ? 0 : stat_backing(delta_path, name, &bst);
    if (ret == -ENOMEM) {
        ret = rb_error_set(err, ENOMEM, "out of memory");
        goto fail;
    }
    if (!rb_rbd_is_name(base_path) &&
        (ret < 0 || bst.st_dev != base->dev || bst.st_ino != base->ino)) {
        ret = rb_error_set(err, EINVAL,
                           "%s: backing file name '%s' does not lead to "
                           "'%s' from the delta's folder",
                           delta_path, name, base_path);
        goto fail;
    }
    /* DELTA is never BASE, NEW or a layer of their chains; an existing
     * file is locked before it is emptied (rblock/output.h). */
    inputs[0] = base;
    inputs[1] = newi;
    out = rb_output_open(delta_path, inputs, 2, 0, err);
    if (!out) {
        ret = -(err && err->code ? err->code : EIO);
        goto fail;
    }
    ret = create_delta(out->fd, delta_path, base, newi, name, opts, err);
    if (ret < 0)
        goto fail;
    if ((ret = fd = rb_output_dup(out, err)) < 0)
        goto fail;
    /* Opened on the locked file; its backing is BASE itself, borrowed
     * (detached again before the close). */
    d.out = rb_image_open_fd(delta_path, fd, &dopen, err);
    if (!d.out) {
        ret = -(err && err->code ? err->code : EIO);
        goto fail;
    }
    d.out->backing = base;
    d.cluster = d.out->cluster_bytes ? d.out->cluster_bytes : 65536;
    d.size = d.out->size;

    struct rb_diff_opts dopts = {
        .granule_bytes = d.cluster,
        .serial_reads = opts->serial_reads,
        .limit_bytes = d.size,
        .on_run = on_run,
        .opaque = &d,
        .on_progress = opts->on_progress ? on_progress : NULL,
    };
    if (d.size && opts->bitmap)
        ret = copy_dirty(&d, newi, opts->bitmap, err);
    else if (d.size)
        ret = rb_diff(base, newi, &dopts, &st.diff, err);
    if (ret == 0)
        ret = rb_image_flush(d.out, err);
    if (ret < 0)
        goto fail;
    d.out->backing = NULL;
    rb_image_close(d.out);
    rb_output_close(out, false);
    rb_image_close(base);
    rb_image_close(newi);
    free(name);
    if (stats)
        *stats = st;
    return 0;
fail:
    if (d.out)
        d.out->backing = NULL;
    rb_image_close(d.out);
    if (out && err && err->msg[0] && rb_output_fate(out)[0]) {
        char msg[sizeof(err->msg)];

        memcpy(msg, err->msg, sizeof(msg));
        rb_error_reset(err, err->code, "%s%s", msg, rb_output_fate(out));
    }
    rb_output_close(out, true);
    rb_image_close(base);
    rb_image_close(newi);
    free(name);
    return ret < 0 ? ret : -EIO;
}
