/* SPDX-License-Identifier: MIT */
/*
 * resize.c - change a qcow2 image's virtual size, as qemu-img resize does
 * (block/qcow2.c qcow2_co_truncate, qcow2_grow_l1_table,
 * qcow2_shrink_l1_table, qcow2_cluster_discard).
 *
 * Write ordering (DESIGN.md section 4):
 *  grow:   the new L1 table and the refcounts that own it are durable
 *          before the header points at it (one 12-byte write of l1_size
 *          and l1_table_offset); the old table is freed after; the size
 *          field is written last, so a crash leaves the old size with a
 *          larger L1 table (valid);
 *  shrink: each L2 table's entries past the new end are cleared and
 *          durable before the refcounts of what they pointed at drop; L1
 *          entries past the new L1 size are zeroed and durable before their
 *          L2 tables are freed; then the size; the file is cut only past
 *          its last cluster in use.  A crash leaves the old size with the
 *          tail unmapped (what the user asked to delete) and at worst leaks.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2/qcow2.h"
#include "qcow2/qcow2w.h"
#include "rblock/io.h"
#include "rblock/lifecycle.h"

/* Drop the references of old L2 entry @e (the entry is already gone on
 * disk). */
static int release(struct qcow2_state *s, uint64_t e, struct rb_error *err)
{
    uint64_t host, bytes, c = s->cluster_bytes;

    if (e & QCOW2_OFLAG_COMPRESSED) {
        qcow2_compressed_parse(e, s->h.cluster_bits, &host, &bytes);
    } else {
        host = e & QCOW2_L2E_OFFSET_MASK;
        bytes = 1;
    }
    if (!host)
        return 0;
    for (uint64_t k = host / c; k <= (host + bytes - 1) / c; k++) {
        int ret = qcow2_refcount_add(s, k, -1, err);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* Unmap every cluster from guest offset @from on (a cluster boundary).
 * The cleared entries are collected (at most CAP at a time) so that one
 * flush covers many L2 tables. */
#define CAP ((size_t)1 << 16)
static int release_all(struct qcow2_state *s, const uint64_t *old, size_t n,
                       struct rb_error *err)
{
    /* ORDER: the cleared entries are durable before the refcounts of the
     * clusters they pointed at drop */
    int ret = qcow2_flush_metadata(s, err);

    for (size_t k = 0; k < n && ret == 0; k++)
        ret = release(s, old[k], err);
    return ret == 0 ? qcow2_flush_metadata(s, err) : ret;
}

static int discard_tail(struct qcow2_state *s, uint64_t from, struct rb_error *err)
{
    size_t cap = CAP > s->l2_entries ? CAP : s->l2_entries, n = 0;
    uint64_t *old = malloc(cap * 8);
    int ret = 0;

    if (!old)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    for (uint64_t i = qcow2_l1_index(s, from); i < s->h.l1_size && ret == 0; i++) {
        uint64_t l2_off, first = i == qcow2_l1_index(s, from) ? qcow2_l2_index(s, from) : 0;
        bool dirty = false;
        void *l2;

        ret = qcow2_l2_offset(s, i, &l2_off, err);
        if (ret < 0 || !l2_off)
            continue;
        if (n + s->l2_entries > cap) {
            ret = release_all(s, old, n, err);
            n = 0;
            if (ret < 0)
                break;
        }
        ret = qcow2_cache_get(s->l2_cache, l2_off, &l2);
        if (ret < 0) {
            ret = rb_error_errno(err, -ret, "%s: cannot read L2 table at 0x%" PRIx64,
                                 s->name, l2_off);
            break;
        }
        for (uint32_t j = (uint32_t)first; j < s->l2_entries; j++) {
            uint64_t e = qcow2_l2_entry_get(s, l2, j);
            if (!e && !qcow2_l2_bitmap_get(s, l2, j))
                continue;
            old[n++] = e;
            qcow2_l2_entry_set(s, l2, j, 0);
            qcow2_l2_bitmap_set(s, l2, j, 0);
            dirty = true;
        }
        if (dirty)
            qcow2_cache_mark_dirty(s->l2_cache, l2);
        qcow2_cache_put(s->l2_cache, l2);
    }
    if (ret == 0 && n)
        ret = release_all(s, old, n, err);
    free(old);
    return ret;
}

/* Free the L2 tables of L1 entries from @new_l1 on (their entries were
 * all cleared by discard_tail). */
static int shrink_l1(struct qcow2_state *s, uint64_t new_l1, struct rb_error *err)
{
    uint64_t n = s->h.l1_size > new_l1 ? s->h.l1_size - new_l1 : 0;
    uint8_t *zeros;
    int ret;

    if (!n)
        return 0;
    zeros = calloc(n, 8);
    if (!zeros)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    ret = rb_io_pwrite(s->fd, zeros, n * 8, s->h.l1_table_offset + new_l1 * 8);
    free(zeros);
    /* ORDER: the L1 entries are gone on disk before the tables are freed */
    if (ret == 0)
        ret = rb_io_sync(s->fd);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot write the L1 table at 0x%" PRIx64,
                              s->name, s->h.l1_table_offset);
    for (uint64_t i = new_l1; i < s->h.l1_size; i++) {
        uint64_t l2_off = s->l1[i] & QCOW2_L1E_OFFSET_MASK;
        s->l1[i] = 0;
        if (!l2_off)
            continue;
        qcow2_cache_discard(s->l2_cache, l2_off);
        ret = qcow2_refcount_add(s, l2_off / s->cluster_bytes, -1, err);
        if (ret < 0)
            return ret;
    }
    return qcow2_flush_metadata(s, err);
}

/* A new L1 table of @new_l1 entries in new clusters; the header switches
 * to it; the old one is freed. */
static int grow_l1(struct qcow2_state *s, uint64_t new_l1, struct rb_error *err)
{
    uint64_t c = s->cluster_bytes, clusters = (new_l1 * 8 + c - 1) / c, off;
    uint64_t old_off = s->h.l1_table_offset, old_clusters = ((uint64_t)s->h.l1_size * 8 + c - 1) / c;
    uint64_t *l1;
    uint8_t *buf, hdr[12];
    int ret;

    l1 = calloc(new_l1, 8);
    buf = calloc(clusters, c);
    if (!l1 || !buf) {
        free(l1);
        free(buf);
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    }
    memcpy(l1, s->l1, (size_t)s->h.l1_size * 8);
    for (uint64_t i = 0; i < s->h.l1_size; i++)
        rb_store_be64(buf + i * 8, l1[i]);
    ret = qcow2_alloc_clusters(s, clusters, &off, err);
    if (ret == 0 && (ret = rb_io_pwrite(s->fd, buf, clusters * c, off)) < 0)
        ret = rb_error_errno(err, -ret, "%s: cannot write the L1 table at 0x%" PRIx64,
                             s->name, off);
    free(buf);
    /* ORDER: the new table and its refcounts are durable before the header
     * points at it */
    if (ret == 0)
        ret = qcow2_flush_metadata(s, err);
    if (ret == 0) {
        rb_store_be32(hdr, (uint32_t)new_l1);
        rb_store_be64(hdr + 4, off);
        ret = qcow2_header_update(s, 36, hdr, sizeof(hdr), err);
    }
    if (ret < 0) {
        free(l1);
        return ret;
    }
    free(s->l1);
    s->l1 = l1;
    s->h.l1_size = (uint32_t)new_l1;
    s->h.l1_table_offset = off;
    /* ORDER: freed only once nothing points at it (a failure leaks) */
    for (uint64_t k = 0; k < old_clusters && old_off; k++)
        (void)qcow2_refcount_add(s, old_off / c + k, -1, NULL);
    return qcow2_flush_metadata(s, err);
}

/* Cut the file after its last cluster with a non-zero refcount. */
static int cut_tail(struct qcow2_state *s, struct rb_error *err)
{
    uint64_t c = s->cluster_bytes, n = (s->file_size + c - 1) / c, last = 0;

    for (uint64_t i = n; i-- > 0;) {
        uint64_t rc;
        int ret = qcow2_refcount_get(s, i, &rc, err);
        if (ret < 0)
            return ret;
        if (rc) {
            last = i;
            break;
        }
    }
    if ((last + 1) * c < s->file_size) {
        if (ftruncate(s->fd, (off_t)((last + 1) * c)) < 0)
            return 0; /* as qemu: only a warning there; the space stays */
        s->file_size = (last + 1) * c;
    }
    return 0;
}

static int resize_locked(struct rb_image *img, struct qcow2_state *s, uint64_t new_size,
                         bool shrink, struct rb_error *err)
{
    uint64_t old = s->h.size, new_l1, c = s->cluster_bytes;
    uint8_t be[8];
    int ret;

    if (new_size % 512)
        return rb_error_set(err, EINVAL, "%s: the new size must be a multiple of 512 "
                            "(%" PRIu64 ")", s->name, new_size);
    if (s->h.nb_snapshots)
        return rb_error_set(err, ENOTSUP, "%s: cannot resize an image which has "
                            "snapshots (%" PRIu32 ")", s->name, s->h.nb_snapshots);
    if (new_size < old && !shrink)
        return rb_error_set(err, EINVAL, "%s: use the --shrink option to perform a shrink "
                            "operation", s->name);
    if (new_size > QCOW2_MAX_VIRTUAL_SIZE)
        return rb_error_set(err, EFBIG, "%s: size %" PRIu64 " is too large for qcow2",
                            s->name, new_size);
    new_l1 = qcow2_l1_entries_for(new_size, s->h.cluster_bits, s->extended_l2);
    if (new_l1 * 8 > QCOW2_MAX_L1_BYTES)
        return rb_error_set(err, EFBIG, "%s: failed to grow the L1 table: %" PRIu64
                            " entries exceed %u bytes (use larger clusters)", s->name,
                            new_l1, QCOW2_MAX_L1_BYTES);
    /* persistent bitmaps follow the size (qemu resizes them in memory and
     * stores them at close); an inconsistent one cannot be resized */
    if (s->h.nb_bitmaps && (s->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        ret = qcow2_bitmaps_load(s, err);
        if (ret < 0)
            return ret;
        for (uint32_t i = 0; i < s->bitmaps.nb; i++)
            if (s->bitmaps.b[i].inconsistent)
                return rb_error_set(err, EINVAL, "%s: cannot resize: bitmap '%s' is "
                                    "inconsistent (remove it with 'rblock bitmap "
                                    "--remove')", s->name, s->bitmaps.b[i].name);
        ret = qcow2_bitmaps_begin_writes(s, err);
        if (ret < 0)
            return ret;
    }
    if (new_size == old)
        ret = 0;
    else if (new_size < old) {
        ret = discard_tail(s, (new_size + c - 1) / c * c, err);
        if (ret == 0)
            ret = shrink_l1(s, new_l1, err);
    } else {
        ret = new_l1 > s->h.l1_size ? grow_l1(s, new_l1, err) : 0;
    }
    if (ret < 0)
        return ret;
    /* ORDER: the size last, once the tables are in place */
    rb_store_be64(be, new_size);
    ret = qcow2_header_update(s, 24, be, 8, err);
    if (ret == 0 && !s->barriers && (ret = rb_io_sync(s->fd)) < 0)
        ret = rb_error_errno(err, -ret, "%s: sync failed", s->name);
    if (ret < 0)
        return ret;
    s->h.size = new_size;
    img->size = new_size;
    if (s->bitmaps_flagged) {
        ret = qcow2_bitmaps_resize(s, err);
        if (ret == 0)
            ret = qcow2_bitmaps_close(s, err);
        if (ret < 0)
            return ret;
    }
    if (new_size < old)
        ret = cut_tail(s, err);
    return ret;
}

int rb_qcow2_resize(struct rb_image *img, uint64_t new_size, bool shrink, struct rb_error *err)
{
    struct qcow2_state *s;
    int ret;

    if (!qcow2_is_qcow2(img))
        return rb_error_set(err, EINVAL, "%s: not a qcow2 image", img->filename);
    s = qcow2_state_of(img);
    if (!s->writable || !s->w)
        return rb_error_set(err, EROFS, "%s: cannot resize an image opened read-only",
                            s->name);
    pthread_mutex_lock(&s->lock);
    ret = resize_locked(img, s, new_size, shrink, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}
