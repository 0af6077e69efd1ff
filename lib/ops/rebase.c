/* SPDX-License-Identifier: MIT */
/*
 * rebase.c - give an overlay another backing file, keeping its guest
 * content, as qemu-img rebase does (contract in rblock/ops.h).
 *
 * qemu-img rebase reads, for every range the overlay does not define, the
 * old and the new backing chain and writes the old bytes where they
 * differ.  Here the same comparison is one rb_diff walk between two views
 * of the chains, each "masked" by the overlay: a range the overlay defines
 * reads as zeros in both views, so the walk skips it unread; so are ranges
 * that read as zeros in both chains, and ranges where both chains reach
 * the same layer file (a common base further down), which is where most
 * of the time goes when the two backing files share most of their data.
 *
 * Ordering: the copied clusters are durable before the header names the
 * new backing file; until then the overlay reads them as its old backing
 * did, afterwards as its own.  Its guest content never changes.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "rblock/ops.h"
#include "rblock/qcow2.h"
#include "util/path.h"

/* ---- the masked view of a chain ------------------------------------------- */

/* A view of @backing (NULL: zeros) the size of the overlay @priv, in which
 * every range the overlay defines reads as zeros. */
static int mask_read(struct rb_image *m, void *buf, uint64_t off, size_t len,
                     struct rb_error *err)
{
    if (!m->backing) {
        memset(buf, 0, len);
        return 0;
    }
    return rb_image_read_zeropad(m->backing, buf, off, len, err);
}

static int mask_block_status(struct rb_image *m, uint64_t off, uint64_t len,
                             struct rb_extent *ext, struct rb_error *err)
{
    int ret = rb_image_block_status_top(m->priv, off, len, ext, err);

    if (ret < 0)
        return ret;
    /* defined by the overlay: zeros here; else ask the chain below */
    ext->flags = ext->flags & (RB_BS_DATA | RB_BS_ZERO) ? RB_BS_ZERO : 0;
    ext->depth = 0;
    ext->host_off = 0;
    return 0;
}

static const struct rb_image_ops mask_ops = {
    .format = "mask",
    .read = mask_read,
    .block_status = mask_block_status,
};

static struct rb_image *mask_new(struct rb_image *overlay, struct rb_image *backing,
                                 struct rb_error *err)
{
    struct rb_image *m = rb_image_new(&mask_ops, overlay->filename);

    if (!m) {
        rb_error_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    m->size = overlay->size;
    m->read_only = true;
    m->priv = overlay;
    m->backing = backing;
    return m;
}

/* Free the view only (the chain it shows belongs to someone else). */
static void mask_free(struct rb_image *m)
{
    if (m) {
        m->backing = NULL;
        rb_image_close(m);
    }
}

/* ---- writing what differs ------------------------------------------------- */

struct rebase {
    struct rb_image *img;
    const struct rb_rebase_opts *opts;
    struct rb_rebase_stats st;
};

/* Write the old chain's bytes @a (NULL: zeros) of [off, off + len) into
 * the overlay, where it defines nothing. */
static int put(struct rebase *r, const uint8_t *a, uint64_t off, uint64_t len,
               struct rb_error *err)
{
    struct rb_image *img = r->img;
    uint64_t c = img->cluster_bytes;

    if (!a) {
        r->st.zero_bytes += len;
        return rb_image_write_zeroes(img, off, len, 0, err);
    }
    r->st.data_bytes += len;
    if (r->opts->compress && img->ops->write_compressed) {
        /* whole clusters compressed (write_compressed falls back to a plain
         * write where the data does not shrink), any edge as it is */
        while (len > 0) {
            uint64_t n = c - off % c;
            int ret;

            if (n > len)
                n = len;
            if (off % c == 0 && (n == c || off + n == img->size))
                ret = img->ops->write_compressed(img, a, off, (size_t)n, err);
            else
                ret = rb_image_write(img, a, off, (size_t)n, 0, err);
            if (ret < 0)
                return ret;
            a += n;
            off += n;
            len -= n;
        }
        return 0;
    }
    return rb_image_write(img, a, off, (size_t)len, 0, err);
}

static int on_run(void *opaque, const struct rb_diff_run *run, struct rb_error *err)
{
    struct rebase *r = opaque;
    uint64_t off = run->off, end = run->off + run->len;

    /* the run may cover parts the overlay defines (an extent boundary
     * inside a granule): only the rest is written */
    while (off < end) {
        struct rb_extent e;
        int ret = rb_image_block_status_top(r->img, off, end - off, &e, err);

        if (ret < 0)
            return ret;
        if (!(e.flags & (RB_BS_DATA | RB_BS_ZERO))) {
            ret = put(r, run->a ? run->a + (off - run->off) : NULL, off, e.length, err);
            if (ret < 0)
                return ret;
        }
        off += e.length;
    }
    return 0;
}

static void on_progress(void *opaque, uint64_t done)
{
    struct rebase *r = opaque;

    if (r->opts->progress)
        r->opts->progress(r->opts->opaque, done, r->img->size);
}

/* ---- the command ------------------------------------------------------------ */

/* Copy into the overlay what differs between its old chain and @nb. */
static int copy_differences(struct rebase *r, struct rb_image *nb, struct rb_error *err)
{
    struct rb_image *old_view = mask_new(r->img, r->img->backing, err);
    struct rb_image *new_view = old_view ? mask_new(r->img, nb, err) : NULL;
    struct rb_diff_opts d = {
        .granule_bytes = r->img->cluster_bytes ? r->img->cluster_bytes : 512,
        .on_run = on_run,
        .opaque = r,
        .on_progress = on_progress,
    };
    int ret = -ENOMEM;

    if (new_view)
        ret = rb_diff(old_view, new_view, &d, &r->st.diff, err);
    mask_free(old_view);
    mask_free(new_view);
    return ret;
}

static int run(struct rebase *r, const char *path, struct rb_image **nbp,
               struct rb_error *err)
{
    const struct rb_rebase_opts *o = r->opts;
    const char *name = o->backing && o->backing[0] ? o->backing : NULL;
    struct rb_open_opts io = {.format = o->format, .write = true, .no_backing = o->unsafe};
    int ret;

    if (name && !o->backing_format)
        return rb_error_set(err, EINVAL, "%s: could not change the backing file to '%s': "
                            "backing format must be specified (-F)", path, name);
    r->img = rb_image_open(path, &io, err);
    if (!r->img)
        return -(err->code ? err->code : EIO);
    if (!rb_qcow2_is(r->img))
        return rb_error_set(err, ENOTSUP, "%s: could not change the backing file: a %s "
                            "image has no backing file", path, r->img->ops->format);
    if (!o->unsafe) {
        struct rb_image *nb = NULL;

        if (name) {
            struct rb_open_opts no = {.format = o->backing_format};
            char *npath = rb_path_resolve(path, name);

            if (!npath)
                return rb_error_set(err, ENOMEM, "out of memory");
            nb = *nbp = rb_image_open(npath, &no, err);
            if (!nb && err->code == EAGAIN) {
                /* locked: by this very run when IMAGE is in the new chain */
                struct rb_open_opts peek = {.format = o->backing_format,
                                            .force_share = true};
                struct rb_image *p = rb_image_open(npath, &peek, NULL);
                for (struct rb_image *l = p; l; l = l->backing)
                    if (l->dev == r->img->dev && l->ino == r->img->ino) {
                        rb_error_reset(err, ELOOP, "%s: new backing file '%s' has the "
                                       "image itself in its chain (%s)", path, name,
                                       l->filename);
                        break;
                    }
                rb_image_close(p);
            }
            if (!nb) {
                if (err->code != ELOOP)
                    rb_error_prefix(err, "%s: could not open new backing file '%s'", path,
                                    name);
                free(npath);
                return -(err->code ? err->code : EIO);
            }
            free(npath);
            for (struct rb_image *l = nb; l; l = l->backing)
                if (l->dev == r->img->dev && l->ino == r->img->ino)
                    return rb_error_set(err, ELOOP, "%s: new backing file '%s' has the "
                                        "image itself in its chain (%s)", path, name,
                                        l->filename);
        }
        ret = copy_differences(r, nb, err);
        /* ORDER: the copied clusters are durable before the header
         * stops naming the old backing file */
        if (ret == 0)
            ret = rb_image_flush(r->img, err);
        if (ret < 0)
            return ret;
    }
    return rb_qcow2_set_backing(r->img, name, name ? o->backing_format : NULL, err);
}

int rb_rebase(const char *path, const struct rb_rebase_opts *opts,
              struct rb_rebase_stats *stats, struct rb_error *err)
{
    struct rb_error local = {0};
    struct rebase r = {.opts = opts};
    struct rb_image *nb = NULL;
    int ret;

    if (!err)
        err = &local;
    ret = run(&r, path, &nb, err);
    rb_image_close(nb);
    rb_image_close(r.img);
    if (stats)
        *stats = r.st;
    return ret;
}
