/* SPDX-License-Identifier: MIT */
/*
 * rbd.c - the rbd driver: a Ceph RBD image (or one of its snapshots)
 * through librbd, as a raw image (rblock/rbd.h).
 *
 * Every call to the cluster is bounded: the monitor, OSD and mount
 * time-outs of librados are set (unless the configuration sets them), so
 * a cluster that does not answer gives ETIMEDOUT, never a hang.
 *
 * Allocation (block_status) comes from rbd_diff_iterate2 since the
 * image's creation with whole-object granularity, which librbd answers
 * from the object map when the image has fast-diff, object by object
 * otherwise.  A run is cut as soon as a gap shows, so one call never
 * walks more than it reports.
 *
 * Opened with opts->sequential and write (convert's output), writes are
 * queued with rbd_aio_write2: up to RB_RBD_QUEUE_DEPTH (or
 * opts->queue_depth) requests in flight, since RBD rewards depth; a
 * failed write is reported by the next write or flush, and flush waits
 * for all of them before rbd_flush.
 *
 * librbd is loaded on first use (api.h).  Built only when meson found
 * librbd's headers (HAVE_RBD); otherwise the entry
 * points say so (ENOTSUP).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image/drivers.h"
#include "rblock/image.h"
#include "rblock/rbd.h"

#ifdef HAVE_RBD
#include <rbd/features.h>

#include "rbd/api.h"

#define RB_RBD_QUEUE_DEPTH 16
/* Queued writes go out in pieces of at most this size, as qemu-img's
 * requests do.  On the one-node test cluster a plain librbd client writing
 * 2 MiB requests took a third of the time of one writing 4 MiB requests
 * that cover whole objects (sent as "writefull"). */
#define QUEUE_PIECE ((size_t)2 << 20)
/* the farthest one block_status call looks ahead */
#define BS_WINDOW ((uint64_t)1 << 30)

struct rbd_state {
    rados_t cluster;
    rados_ioctx_t io;
    rbd_image_t image;
    bool fast_diff;
    /* write-behind queue (sequential writers) */
    unsigned depth; /* 0: synchronous writes */
    pthread_mutex_t lock;
    pthread_cond_t done;
    unsigned in_flight;
    int aio_err;         /* first error of a queued write (negative errno) */
    uint64_t aio_err_off;
};

struct rbd_aio {
    struct rbd_state *s;
    void *buf;
    uint64_t off;
};

static struct rbd_state *st(struct rb_image *img)
{
    return img->priv;
}

bool rb_rbd_available(void)
{
    return true;
}

/* Set @key to @val unless the configuration changed it from Ceph's
 * default @dflt (or @force). */
static void set_default(rados_t c, const char *key, const char *dflt, const char *val,
                        bool force)
{
    char cur[64];

    if (force || (rados_conf_get(c, key, cur, sizeof(cur)) == 0 && strcmp(cur, dflt) == 0))
        rados_conf_set(c, key, val);
}

/* Connect to the cluster of @n and open an I/O context on its pool and
 * namespace.  @what names the image in messages. */
static int connect_pool(const struct rb_rbd_name *n, const char *what, bool no_cache,
                        rados_t *cp, rados_ioctx_t *iop, struct rb_error *err)
{
    unsigned t = n->timeout_sec ? n->timeout_sec : RB_RBD_DEFAULT_TIMEOUT;
    char ts[16], mons[256] = "";
    rados_t c;
    int ret;

    if ((ret = rb_rbd_api_load(what, err)) < 0)
        return ret;
    ret = rados_create(&c, n->id[0] ? n->id : NULL);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot set up a ceph client", what);
    ret = rados_conf_read_file(c, n->conf[0] ? n->conf : NULL);
    if (ret < 0 && n->conf[0]) {
        rados_shutdown(c);
        return rb_error_errno(err, -ret, "%s: cannot read ceph configuration '%s'", what,
                              n->conf);
    }
    rados_conf_parse_env(c, NULL); /* CEPH_ARGS, as the ceph tools do */
    snprintf(ts, sizeof(ts), "%u", t);
    set_default(c, "rados_osd_op_timeout", "0", ts, n->timeout_sec);
    set_default(c, "rados_mon_op_timeout", "0", ts, n->timeout_sec);
    set_default(c, "client_mount_timeout", "300", ts, n->timeout_sec);
    /* The queued writer keeps its own requests in flight and flushes at
     * the end: librbd's cache would only copy and hold them (QEMU turns it
     * off likewise for cache=none). */
    if (no_cache)
        rados_conf_set(c, "rbd_cache", "false");
    rados_conf_get(c, "mon_host", mons, sizeof(mons));
    ret = rados_connect(c);
    if (ret < 0) {
        rados_conf_get(c, "client_mount_timeout", ts, sizeof(ts));
        rados_shutdown(c);
        if (ret == -ETIMEDOUT || ret == -EINTR)
            return rb_error_set(err, ETIMEDOUT, "%s: the ceph cluster did not answer within "
                                "%s s (monitors '%s')", what, ts, mons);
        if (ret == -ENOENT && !mons[0])
            return rb_error_set(err, ENOENT, "%s: no ceph cluster configured (set CEPH_CONF "
                                "or add :conf=PATH to the name)", what);
        return rb_error_errno(err, -ret, "%s: cannot connect to the ceph cluster "
                              "(monitors '%s')", what, mons);
    }
    ret = rados_ioctx_create(c, n->pool, iop);
    if (ret < 0) {
        rados_shutdown(c);
        if (ret == -ENOENT)
            return rb_error_set(err, ENOENT, "%s: pool '%s' does not exist", what, n->pool);
        return rb_error_errno(err, -ret, "%s: cannot open pool '%s'", what, n->pool);
    }
    rados_ioctx_set_namespace(*iop, n->ns[0] ? n->ns : NULL);
    *cp = c;
    return 0;
}

static void disconnect(rados_t c, rados_ioctx_t io)
{
    rados_ioctx_destroy(io);
    rados_shutdown(c);
}

/* ---- queued writes ---------------------------------------------------- */

static void aio_done(rbd_completion_t c, void *arg)
{
    struct rbd_aio *a = arg;
    struct rbd_state *s = a->s;
    ssize_t r = rbd_aio_get_return_value(c);

    rbd_aio_release(c);
    pthread_mutex_lock(&s->lock);
    if (r < 0 && !s->aio_err) {
        s->aio_err = (int)r;
        s->aio_err_off = a->off;
    }
    s->in_flight--;
    pthread_cond_broadcast(&s->done);
    pthread_mutex_unlock(&s->lock);
    free(a->buf);
    free(a);
}

/* Wait until at most @max writes are in flight; returns the first queued
 * write's error (then clears it) with @err set. */
static int drain(struct rb_image *img, unsigned max, struct rb_error *err)
{
    struct rbd_state *s = st(img);
    int ret;
    uint64_t off;

    pthread_mutex_lock(&s->lock);
    while (s->in_flight > max)
        pthread_cond_wait(&s->done, &s->lock);
    ret = s->aio_err;
    off = s->aio_err_off;
    s->aio_err = 0;
    pthread_mutex_unlock(&s->lock);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: write error at offset %" PRIu64, img->filename,
                              off);
    return 0;
}

static int queue_write(struct rb_image *img, const void *buf, uint64_t off, size_t len,
                       struct rb_error *err)
{
    struct rbd_state *s = st(img);
    struct rbd_aio *a;
    rbd_completion_t c;
    int ret = drain(img, s->depth - 1, err);

    if (ret < 0)
        return ret;
    a = malloc(sizeof(*a));
    if (!a || !(a->buf = malloc(len))) {
        free(a);
        return rb_error_set(err, ENOMEM, "%s: out of memory", img->filename);
    }
    memcpy(a->buf, buf, len);
    a->s = s;
    a->off = off;
    ret = rbd_aio_create_completion(a, aio_done, &c);
    if (ret < 0) {
        free(a->buf);
        free(a);
        return rb_error_errno(err, -ret, "%s: cannot queue a write", img->filename);
    }
    pthread_mutex_lock(&s->lock);
    s->in_flight++;
    pthread_mutex_unlock(&s->lock);
    ret = rbd_aio_write2(s->image, off, len, a->buf, c, 0);
    if (ret < 0) {
        rbd_aio_release(c);
        pthread_mutex_lock(&s->lock);
        s->in_flight--;
        pthread_mutex_unlock(&s->lock);
        free(a->buf);
        free(a);
        return rb_error_errno(err, -ret, "%s: write error at offset %" PRIu64,
                              img->filename, off);
    }
    return 0;
}

/* ---- operations ------------------------------------------------------- */

static int rbd_read_op(struct rb_image *img, void *buf, uint64_t off, size_t len,
                       struct rb_error *err)
{
    ssize_t r;

    while (len) {
        r = rbd_read2(st(img)->image, off, len, buf, 0);
        if (r < 0)
            return rb_error_errno(err, (int)-r, "%s: read error at offset %" PRIu64,
                                  img->filename, off);
        if (r == 0) { /* past the end (the image shrank): zeros, as QEMU */
            memset(buf, 0, len);
            break;
        }
        buf = (uint8_t *)buf + r;
        off += (uint64_t)r;
        len -= (size_t)r;
    }
    return 0;
}

static int rbd_flush_op(struct rb_image *img, struct rb_error *err)
{
    int ret = st(img)->depth ? drain(img, 0, err) : 0;

    if (ret == 0 && (ret = rbd_flush(st(img)->image)) < 0)
        return rb_error_errno(err, -ret, "%s: flush failed", img->filename);
    return ret;
}

static int rbd_write_op(struct rb_image *img, const void *buf, uint64_t off, size_t len,
                        unsigned flags, struct rb_error *err)
{
    ssize_t r;

    if (st(img)->depth && !(flags & RB_WRITE_FUA)) {
        for (size_t done = 0; done < len;) {
            size_t n = len - done < QUEUE_PIECE ? len - done : QUEUE_PIECE;
            int ret = queue_write(img, (const uint8_t *)buf + done, off + done, n, err);
            if (ret < 0)
                return ret;
            done += n;
        }
        return 0;
    }
    if (st(img)->depth && drain(img, 0, err) < 0)
        return -EIO;
    r = rbd_write2(st(img)->image, off, len, buf, 0);
    if (r >= 0 && (size_t)r != len)
        r = -EIO;
    if (r < 0)
        return rb_error_errno(err, (int)-r, "%s: write error at offset %" PRIu64,
                              img->filename, off);
    return flags & RB_WRITE_FUA ? rbd_flush_op(img, err) : 0;
}

static int rbd_write_zeroes_op(struct rb_image *img, uint64_t off, uint64_t len,
                               unsigned flags, struct rb_error *err)
{
    ssize_t r;

    if (st(img)->depth && drain(img, 0, err) < 0)
        return -EIO;
    /* librbd deallocates whole objects and zeroes the partial ones */
    while (len) {
        size_t n = len > (1u << 30) ? (1u << 30) : (size_t)len;
        r = rbd_write_zeroes(st(img)->image, off, n, 0, 0);
        if (r < 0)
            return rb_error_errno(err, (int)-r, "%s: write zeroes failed at offset %" PRIu64,
                                  img->filename, off);
        off += n;
        len -= n;
    }
    return flags & RB_WRITE_FUA ? rbd_flush_op(img, err) : 0;
}

static int rbd_trim_op(struct rb_image *img, uint64_t off, uint64_t len,
                       struct rb_error *err)
{
    int r;

    if (st(img)->depth && drain(img, 0, err) < 0)
        return -EIO;
    /* an RBD image has no backing in rblock's chain: discarded reads as 0 */
    while (len) {
        uint64_t n = len > (1u << 30) ? (1u << 30) : len;
        r = rbd_discard(st(img)->image, off, n);
        if (r < 0)
            return rb_error_errno(err, -r, "%s: discard failed at offset %" PRIu64,
                                  img->filename, off);
        off += n;
        len -= n;
    }
    return 0;
}

struct bs_walk {
    uint64_t off;     /* start of the asked range */
    uint64_t start, end; /* the run found so far (data) */
    bool found;
};

/* ECANCELED stops the walk once the first run is known. */
static int bs_cb(uint64_t off, size_t len, int exists, void *arg)
{
    struct bs_walk *w = arg;

    if (!exists || len == 0)
        return w->found ? -ECANCELED : 0;
    if (!w->found) {
        w->found = true;
        w->start = off;
        w->end = off + len;
        return w->start > w->off ? -ECANCELED : 0; /* a hole comes first */
    }
    if (off > w->end)
        return -ECANCELED;
    if (off + len > w->end)
        w->end = off + len;
    return 0;
}

static int rbd_block_status_op(struct rb_image *img, uint64_t off, uint64_t len,
                               struct rb_extent *ext, struct rb_error *err)
{
    struct bs_walk w = {.off = off};
    uint64_t win = len < BS_WINDOW ? len : BS_WINDOW;
    int ret = rbd_diff_iterate2(st(img)->image, NULL, off, win, 1, 1, bs_cb, &w);

    if (ret < 0 && ret != -ECANCELED)
        return rb_error_errno(err, -ret, "%s: cannot map allocation at offset %" PRIu64,
                              img->filename, off);
    /* whole objects: a run may start before @off or end past the window */
    if (w.found && w.start <= off) {
        ext->flags = RB_BS_DATA | RB_BS_ALLOCATED | RB_BS_OFFSET_VALID;
        ext->length = (w.end < off + win ? w.end : off + win) - off;
    } else {
        ext->flags = RB_BS_ZERO | RB_BS_ALLOCATED | RB_BS_OFFSET_VALID;
        ext->length = (w.found && w.start < off + win ? w.start : off + win) - off;
    }
    ext->host_off = off;
    return 0;
}

static void rbd_close_op(struct rb_image *img)
{
    struct rbd_state *s = st(img);

    if (!s)
        return;
    if (s->depth)
        drain(img, 0, NULL);
    rbd_close(s->image);
    disconnect(s->cluster, s->io);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->done);
    free(s);
}

static const struct rb_image_ops rbd_ops = {
    .format = "raw",
    .read = rbd_read_op,
    .write = rbd_write_op,
    .write_zeroes = rbd_write_zeroes_op,
    .trim = rbd_trim_op,
    .flush = rbd_flush_op,
    .block_status = rbd_block_status_op,
    .close = rbd_close_op,
};

/* The layer's identity (dev, ino) that rb_diff and the chain checks
 * compare: no file system's, a hash of the cluster's fsid and
 * pool/namespace/image@snapshot, so two names of one image and snapshot
 * in one cluster are one layer, and anything else is not. */
static void identify(struct rb_image *img, rados_t c, const struct rb_rbd_name *n)
{
    char fsid[64] = "", key[2 * RB_RBD_NAME_MAX * 4];
    uint64_t h = 1469598103934665603ull; /* FNV-1a */

    if (rados_cluster_fsid(c, fsid, sizeof(fsid)) < 0)
        fsid[0] = '\0';
    snprintf(key, sizeof(key), "%s\n%s\n%s\n%s\n%s", fsid, n->pool, n->ns, n->image, n->snap);
    for (const char *p = key; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    img->dev = (dev_t)-2; /* no block device has this number */
    img->ino = (ino_t)h;
}

/* Why did rbd_open fail?  A missing image, or (with a snapshot) a
 * missing snapshot of an image that exists. */
static int open_error(struct rbd_state *s, const struct rb_rbd_name *n, const char *what,
                      int ret, struct rb_error *err)
{
    char where[1100];
    rbd_image_t probe;

    snprintf(where, sizeof(where), "'%s' in pool '%s'%s%s%s", n->image, n->pool,
             n->ns[0] ? " namespace '" : "", n->ns, n->ns[0] ? "'" : "");
    if (ret != -ENOENT)
        return rb_error_errno(err, -ret, "%s: cannot open image %s", what, where);
    if (n->snap[0] && rbd_open_read_only(s->io, n->image, &probe, NULL) == 0) {
        rbd_close(probe);
        return rb_error_set(err, ENOENT, "%s: image %s has no snapshot '%s'", what, where,
                            n->snap);
    }
    return rb_error_set(err, ENOENT, "%s: image %s does not exist", what, where);
}

struct rb_image *rb_rbd_open(const char *name, const struct rb_open_opts *opts,
                             struct rb_error *err)
{
    struct rb_rbd_name *n = malloc(sizeof(*n));
    struct rbd_state *s = calloc(1, sizeof(*s));
    struct rb_image *img = rb_image_new(&rbd_ops, name);
    uint64_t features = 0, flags = 0;
    int ret;

    if (!n || !s || !img) {
        rb_error_set(err, ENOMEM, "%s: out of memory", name);
        goto fail;
    }
    if (rb_rbd_parse_name(name, n, err) < 0)
        goto fail;
    if (opts->format && strcmp(opts->format, "raw") != 0) {
        rb_error_set(err, EINVAL, "%s: an rbd image holds raw bytes; format '%s' inside "
                     "rbd is not supported", name, opts->format);
        goto fail;
    }
    if (opts->write && n->snap[0]) {
        rb_error_set(err, EROFS, "%s: snapshot '%s' is read-only", name, n->snap);
        goto fail;
    }
    if (connect_pool(n, name, opts->write && opts->sequential, &s->cluster, &s->io, err) < 0)
        goto fail;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->done, NULL);
    img->priv = s;
    if (opts->write)
        ret = rbd_open(s->io, n->image, &s->image, NULL);
    else
        ret = rbd_open_read_only(s->io, n->image, &s->image, n->snap[0] ? n->snap : NULL);
    if (ret < 0) {
        open_error(s, n, name, ret, err);
        disconnect(s->cluster, s->io);
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->done);
        img->priv = NULL;
        goto fail;
    }
    ret = rbd_get_size(s->image, &img->size);
    if (ret < 0) {
        rb_error_errno(err, -ret, "%s: cannot get size", name);
        rb_image_close(img);
        free(n);
        return NULL;
    }
    if (rbd_get_features(s->image, &features) == 0 && rbd_get_flags(s->image, &flags) == 0)
        s->fast_diff = (features & RBD_FEATURE_FAST_DIFF) &&
                       !(flags & RBD_FLAG_FAST_DIFF_INVALID);
    img->read_only = !opts->write;
    identify(img, s->cluster, n);
    if (opts->write && opts->sequential)
        s->depth = opts->queue_depth ? opts->queue_depth : RB_RBD_QUEUE_DEPTH;
    free(n);
    return img;
fail:
    free(n);
    free(s);
    if (img)
        img->priv = NULL;
    rb_image_close(img);
    return NULL;
}

int rb_rbd_create(const char *name, uint64_t size, struct rb_error *err)
{
    struct rb_rbd_name *n = malloc(sizeof(*n));
    rados_t c;
    rados_ioctx_t io;
    rbd_image_options_t o;
    int ret;

    if (!n)
        return rb_error_set(err, ENOMEM, "out of memory");
    ret = rb_rbd_parse_name(name, n, err);
    if (ret == 0 && n->snap[0])
        ret = rb_error_set(err, EINVAL, "%s: cannot create a snapshot", name);
    if (ret == 0)
        ret = connect_pool(n, name, false, &c, &io, err);
    if (ret < 0) {
        free(n);
        return ret;
    }
    rbd_image_options_create(&o);
    ret = rbd_create4(io, n->image, size, o);
    rbd_image_options_destroy(o);
    if (ret == -EEXIST)
        rb_error_set(err, EEXIST, "%s: image already exists (use -n to write into it)", name);
    else if (ret < 0)
        rb_error_errno(err, -ret, "%s: cannot create image", name);
    disconnect(c, io);
    free(n);
    return ret;
}

int rb_rbd_remove(const char *name, struct rb_error *err)
{
    struct rb_rbd_name *n = malloc(sizeof(*n));
    rados_t c;
    rados_ioctx_t io;
    int ret;

    if (!n)
        return rb_error_set(err, ENOMEM, "out of memory");
    ret = rb_rbd_parse_name(name, n, err);
    if (ret == 0)
        ret = connect_pool(n, name, false, &c, &io, err);
    if (ret == 0) {
        ret = rbd_remove(io, n->image);
        if (ret < 0)
            rb_error_errno(err, -ret, "%s: cannot remove image", name);
        disconnect(c, io);
    }
    free(n);
    return ret;
}

#else /* !HAVE_RBD */

bool rb_rbd_available(void)
{
    return false;
}

static int unbuilt(const char *name, struct rb_error *err)
{
    return rb_error_set(err, ENOTSUP, "%s: rblock was built without librbd "
                        "(install librbd-dev and librados-dev, then rebuild)", name);
}

struct rb_image *rb_rbd_open(const char *name, const struct rb_open_opts *opts,
                             struct rb_error *err)
{
    unbuilt(name, err);
    return NULL;
}

int rb_rbd_create(const char *name, uint64_t size, struct rb_error *err)
{
    return unbuilt(name, err);
}

int rb_rbd_remove(const char *name, struct rb_error *err)
{
    return unbuilt(name, err);
}

#endif
