/* SPDX-License-Identifier: MIT */
/*
 * cow.c - copy-on-write of L2 tables shared with internal snapshots
 * (qcow2.txt "Snapshots": clusters with a refcount above 1 are shared and
 * must be copied before they are changed; QCOW_OFLAG_COPIED in an L1 entry
 * says its table's refcount is exactly 1).
 *
 * Data clusters need nothing here: the write path already writes a
 * cluster in place only when its L2 entry carries COPIED, and otherwise
 * allocates a new one and drops its reference to the old (release() in
 * write.c), which leaves a shared cluster to the snapshot.
 *
 * Ordering (DESIGN.md section 4): the copy and its refcount are durable
 * before the L1 entry points at it; the L1 entry is durable before the
 * old table's refcount drops (a crash in between leaks the old table's
 * reference, never frees a table still in use).
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "qcow2/qcow2w.h"
#include "rblock/io.h"
#include "util/endian.h"

int qcow2_l2_cow(struct qcow2_state *s, uint64_t l1_index, void **l2, struct rb_error *err)
{
    uint64_t old = s->l1[l1_index] & QCOW2_L1E_OFFSET_MASK, off, at;
    uint8_t be[8];
    void *copy;
    int ret;

    if (s->l1[l1_index] & QCOW2_OFLAG_COPIED)
        return 0;
    ret = qcow2_alloc_cluster(s, &off, err);
    if (ret < 0)
        goto fail;
    ret = qcow2_cache_get_empty(s->l2_cache, off, &copy);
    if (ret < 0) {
        (void)qcow2_refcount_set(s, off / s->cluster_bytes, 0, NULL);
        ret = rb_error_errno(err, -ret, "%s: L2 cache", s->name);
        goto fail;
    }
    memcpy(copy, *l2, s->cluster_bytes);
    qcow2_cache_put(s->l2_cache, *l2);
    *l2 = copy;
    qcow2_cache_mark_dirty(s->l2_cache, copy);
    /* ORDER: the copy (and, through the cache dependency, its refcount)
     * is on disk before the L1 entry points at it */
    ret = qcow2_cache_flush(s->l2_cache);
    if (ret < 0) {
        ret = rb_error_errno(err, -ret, "%s: cannot write L2 table at 0x%" PRIx64, s->name,
                             off);
        goto fail; /* the copy leaks: refcount 1, referenced by nothing */
    }
    at = s->h.l1_table_offset + l1_index * 8;
    rb_store_be64(be, off | QCOW2_OFLAG_COPIED);
    ret = rb_io_pwrite(s->fd, be, 8, at);
    /* ORDER: the L1 entry is durable before the old table's refcount drops */
    if (ret == 0 && s->barriers)
        ret = rb_io_sync(s->fd);
    if (ret < 0) {
        /* the entry may or may not be on disk: the old table stays counted
         * (a leak at worst) and in memory the L1 keeps the old entry */
        ret = rb_error_errno(err, -ret, "%s: cannot write L1 entry at 0x%" PRIx64, s->name,
                             at);
        goto fail;
    }
    s->l1[l1_index] = off | QCOW2_OFLAG_COPIED;
    ret = qcow2_refcount_add(s, old / s->cluster_bytes, -1, err);
    if (ret == 0)
        return 0;
fail:
    qcow2_cache_put(s->l2_cache, *l2);
    *l2 = NULL;
    return ret;
}
