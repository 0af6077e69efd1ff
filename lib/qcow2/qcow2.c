/* SPDX-License-Identifier: MIT */
/*
 * qcow2.c - open and close a qcow2 image, and its rb_image_ops table.
 *
 * Open reads and validates the header (header.c), loads the L1 table and
 * the refcount table whole (both capped by header.c: 32 MiB and 8 MiB, as
 * qemu), the snapshot table, opens an external data file, and sets up the
 * two bounded metadata caches.  The backing chain is opened by
 * rb_image_open from img->backing_name / img->backing_format.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image/drivers.h"
#include "qcow2/qcow2.h"
#include "util/path.h"
#include "util/endian.h"
#include "rblock/io.h"

static void qcow2_close(struct rb_image *img);

static const struct rb_image_ops qcow2_ops = {
    .format = "qcow2",
    .read = qcow2_read_shared,
    .write = qcow2_write,
    .write_zeroes = qcow2_write_zeroes,
    .trim = qcow2_trim,
    .flush = qcow2_flush,
    .block_status = qcow2_block_status,
    .write_compressed = qcow2_write_compressed,
    .bitmap_extent = rb_qcow2_bitmap_extent,
    .close = qcow2_close,
};

bool qcow2_is_qcow2(const struct rb_image *img)
{
    return img && img->ops == &qcow2_ops;
}

static int load_l1(struct qcow2_state *s, struct rb_error *err)
{
    size_t bytes = (size_t)s->h.l1_size * 8;
    uint8_t *raw;
    int ret;

    s->l1 = malloc(bytes ? bytes : 8);
    if (!s->l1)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    raw = (uint8_t *)s->l1;
    ret = rb_io_pread(s->fd, raw, bytes, s->h.l1_table_offset);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot read the L1 table", s->name);
    rb_load_be64_array(s->l1, s->h.l1_size);
    return 0;
}

static int open_data_file(struct qcow2_state *s, const struct rb_open_opts *opts,
                          struct rb_error *err)
{
    bool write = opts->write;
    int ret;

    if (strncmp(s->h.data_file, "json:", 5) == 0)
        return rb_error_set(err, EINVAL, "%s: data file name '%s' is a json: "
                            "pseudo-filename, which is not supported", s->name,
                            s->h.data_file);
    s->data_file_path = rb_path_resolve(s->name, s->h.data_file);
    if (!s->data_file_path)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    /* the name comes from the header: it may name a FIFO or a device */
    struct stat st;
    ret = rb_open_untrusted(s->data_file_path, write ? O_RDWR : O_RDONLY, &st, err);
    if (ret < 0) {
        rb_error_prefix(err, "%s: cannot open external data file", s->name);
        return ret;
    }
    s->data_fd = ret;
    /* locked as the image file is, as QEMU locks a data-file child */
    ret = rb_image_lock_mode(s->data_fd, s->data_file_path,
                             write ? RB_LOCK_WRITE
                                   : opts->force_share ? RB_LOCK_SHARE_ALL : RB_LOCK_READ,
                             err);
    if (ret < 0) {
        rb_error_prefix(err, "%s: external data file", s->name);
        return ret;
    }
    ret = rb_io_size(s->data_fd, &s->data_file_size);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot get the size of data file '%s'",
                              s->name, s->data_file_path);
    return 0;
}

static int setup(struct rb_image *img, struct qcow2_state *s,
                 const struct rb_open_opts *opts, struct rb_error *err)
{
    size_t cache_bytes = opts->cache_bytes ? opts->cache_bytes : RB_DEFAULT_CACHE_BYTES;
    int ret;

    ret = rb_io_size(s->fd, &s->file_size);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot get size", s->name);
    ret = qcow2_header_read(s->fd, s->name, s->file_size, &s->h, err);
    if (ret < 0)
        return ret;
    s->cluster_bytes = 1u << s->h.cluster_bits;
    s->extended_l2 = s->h.incompatible_features & QCOW2_INCOMPAT_EXTL2;
    s->l2_entry_bytes = s->extended_l2 ? 16 : 8;
    s->l2_entries = qcow2_l2_entries_for(s->h.cluster_bits, s->extended_l2);
    s->l2_bits = s->h.cluster_bits - (s->extended_l2 ? 4 : 3);
    s->subcluster_bytes = s->extended_l2 ? s->cluster_bytes / QCOW2_SUBCLUSTERS
                                         : s->cluster_bytes;
    s->refblock_entries = (uint32_t)(((uint64_t)s->cluster_bytes * 8) >>
                                     s->h.refcount_order);
    s->has_data_file = s->h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
    s->data_file_raw = s->h.autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    s->barriers = !opts->unsafe_no_barriers;

    /* spec: a corrupt image "must not be written to"; reading is allowed,
     * and so is repairing it (check -r, as qemu-img check -r) */
    if (opts->write && !opts->repair &&
        (s->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT))
        return rb_error_set(err, EROFS, "%s: image is marked corrupt; it can only be "
                            "opened read-only", s->name);
    ret = load_l1(s, err);
    if (ret == 0)
        ret = qcow2_reftable_load(s, err);
    if (ret == 0)
        ret = qcow2_snapshots_load(s, err);
    if (ret == 0 && s->has_data_file)
        ret = open_data_file(s, opts, err);
    if (ret < 0)
        return ret;
    if (opts->snapshot) {
        /* a snapshot is read-only (qemu-nbd -l exports it so) */
        if (opts->write)
            return rb_error_set(err, EINVAL, "%s: snapshot '%s' can only be opened "
                                "read-only", s->name, opts->snapshot);
        ret = qcow2_snapshot_select(img, s, opts->snapshot, err);
        if (ret < 0)
            return ret;
    }

    /* three quarters of the budget for L2 tables, the rest for refcounts */
    s->l2_cache = qcow2_cache_new(s->fd, s->cluster_bytes, cache_bytes / 4 * 3);
    s->refblock_cache = qcow2_cache_new(s->fd, s->cluster_bytes, cache_bytes / 4);
    if (!s->l2_cache || !s->refblock_cache)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    /* DESIGN.md 4: refcount blocks reach the disk before the L2 tables */
    qcow2_cache_set_dependency(s->l2_cache, s->refblock_cache);
    qcow2_cache_set_barriers(s->l2_cache, s->barriers);
    qcow2_cache_set_barriers(s->refblock_cache, s->barriers);

    img->size = s->h.size; /* the snapshot's when one was selected */
    img->cluster_bytes = s->cluster_bytes;
    img->read_only = !opts->write;
    if (s->h.backing_file) {
        img->backing_name = strdup(s->h.backing_file);
        if (!img->backing_name)
            return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        if (s->h.backing_format) {
            img->backing_format = strdup(s->h.backing_format);
            if (!img->backing_format)
                return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        }
    }
    if (opts->write) {
        s->writable = true;
        s->open_for_repair = opts->repair;
        if (opts->repair)
            img->read_only = true; /* metadata only: guest writes refused */
        ret = qcow2_write_open(img, s, err);
        if (ret < 0) {
            s->writable = false;
            return ret;
        }
    }
    return 0;
}

struct rb_image *rb_qcow2_open(const char *path, int fd, const struct rb_open_opts *opts,
                               struct rb_error *err)
{
    struct rb_image *img = rb_image_new(&qcow2_ops, path);
    struct qcow2_state *s = calloc(1, sizeof(*s));

    if (!img || !s) {
        rb_error_set(err, ENOMEM, "%s: out of memory", path);
        free(s);
        if (img)
            free(img->filename);
        free(img);
        close(fd);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    {
        pthread_rwlockattr_t attr;
        /* prefer writers: a stream of NBD reads must not starve a write */
        pthread_rwlockattr_init(&attr);
        pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        pthread_rwlock_init(&s->data_rw, &attr);
        pthread_rwlockattr_destroy(&attr);
    }
    s->fd = s->data_fd = fd;
    s->name = img->filename;
    img->priv = s;
    if (setup(img, s, opts, err) < 0) {
        rb_image_close(img);
        return NULL;
    }
    return img;
}

static void qcow2_close(struct rb_image *img)
{
    struct qcow2_state *s = qcow2_state_of(img);

    if (!s)
        return;
    if (s->writable)
        qcow2_write_close(img, s);
    qcow2_cache_free(s->l2_cache);
    qcow2_cache_free(s->refblock_cache);
    qcow2_snapshots_free(s);
    qcow2_bitmap_list_free(&s->bitmaps);
    qcow2_header_free(&s->h);
    free(s->l1);
    free(s->reftable);
    free(s->data_file_path);
    free(s->zcache);
    if (s->data_fd != s->fd)
        close(s->data_fd);
    close(s->fd);
    pthread_mutex_destroy(&s->lock);
    pthread_rwlock_destroy(&s->data_rw);
    free(s);
    img->priv = NULL;
}
