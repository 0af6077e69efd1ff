/* SPDX-License-Identifier: MIT */
/*
 * alloc.c - host cluster allocation and refcount updates (qcow2.txt "Host
 * cluster management"), including new refcount blocks and refcount table
 * growth.
 *
 * Ordering (DESIGN.md section 4; a refcount may be too high, never too
 * low): a new refcount block is durable before the refcount table entry
 * that points at it; that entry is durable before any L2 table that
 * references a cluster it counts (qcow2_cache_depends_on_flush on the L2
 * cache); a new refcount table is durable before the header points at it,
 * and the old table is freed only after that.  Plain refcount updates
 * reach the disk before L2 tables through the cache dependency set up at
 * open (L2 cache depends on the refcount block cache).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "qcow2/qcow2w.h"
#include "rblock/io.h"

static int sync_if_barriers(struct qcow2_state *s, struct rb_error *err)
{
    int ret = s->barriers ? rb_io_sync(s->fd) : 0;

    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: sync failed", s->name);
    return 0;
}

static int pwrite_err(struct qcow2_state *s, const void *buf, size_t len, uint64_t off,
                      const char *what, struct rb_error *err)
{
    int ret = rb_io_pwrite(s->fd, buf, len, off);

    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot write %s at 0x%" PRIx64, s->name,
                              what, off);
    return 0;
}

int qcow2_header_update(struct qcow2_state *s, uint64_t off, const void *buf, size_t len,
                        struct rb_error *err)
{
    int ret = pwrite_err(s, buf, len, off, "the header", err);

    return ret < 0 ? ret : sync_if_barriers(s, err);
}

int qcow2_header_replace(struct qcow2_state *s, const void *buf, size_t len,
                         struct rb_error *err)
{
    struct qcow2_header nh;
    int ret = rb_io_pwrite(s->fd, buf, len, 0);

    if (ret == 0)
        ret = rb_io_sync(s->fd);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot write the header", s->name);
    memset(&nh, 0, sizeof(nh));
    ret = qcow2_header_read(s->fd, s->name, s->file_size, &nh, err);
    if (ret == 0) {
        qcow2_header_free(&s->h);
        s->h = nh;
    }
    return ret;
}

static void cover(struct qcow2_state *s, uint64_t idx)
{
    uint64_t end = (idx + 1) * s->cluster_bytes;

    if (end > s->file_size)
        s->file_size = end;
}

static int get_block(struct qcow2_state *s, uint64_t boff, void **blk, struct rb_error *err)
{
    int ret = qcow2_cache_get(s->refblock_cache, boff, blk);

    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot read refcount block at 0x%" PRIx64,
                              s->name, boff);
    return 0;
}

int qcow2_refcount_set(struct qcow2_state *s, uint64_t idx, uint64_t value,
                       struct rb_error *err)
{
    uint64_t boff;
    void *blk;
    int ret;

    if (value > qcow2w_ref_max(s->h.refcount_order))
        return rb_error_set(err, ERANGE, "%s: refcount of cluster 0x%" PRIx64 " would "
                            "overflow %u bits", s->name, idx * s->cluster_bytes,
                            1u << s->h.refcount_order);
    ret = qcow2_refblock_offset(s, idx / s->refblock_entries, &boff, err);
    if (ret < 0)
        return ret;
    if (!boff) {
        if (value == 0)
            return 0;
        return rb_error_set(err, EIO, "%s: internal error: no refcount block for "
                            "cluster 0x%" PRIx64, s->name, idx * s->cluster_bytes);
    }
    ret = get_block(s, boff, &blk, err);
    if (ret < 0)
        return ret;
    qcow2_refblock_set(blk, s->h.refcount_order, idx % s->refblock_entries, value);
    qcow2_cache_mark_dirty(s->refblock_cache, blk);
    qcow2_cache_put(s->refblock_cache, blk);
    if (value == 0 && idx < s->free_cluster_hint)
        s->free_cluster_hint = idx;
    return 0;
}

int qcow2_refcount_add(struct qcow2_state *s, uint64_t idx, int64_t delta,
                       struct rb_error *err)
{
    uint64_t rc;
    int ret = qcow2_refcount_get(s, idx, &rc, err);

    if (ret < 0)
        return ret;
    if (delta < 0 && rc < (uint64_t)-delta)
        return rb_error_set(err, EIO, "%s: refcount of cluster 0x%" PRIx64 " (%" PRIu64
                            ") would drop below zero: the image is corrupt", s->name,
                            idx * s->cluster_bytes, rc);
    if (delta > 0 && rc > qcow2w_ref_max(s->h.refcount_order) - (uint64_t)delta)
        return rb_error_set(err, ERANGE, "%s: refcount of cluster 0x%" PRIx64 " would "
                            "overflow %u bits", s->name, idx * s->cluster_bytes,
                            1u << s->h.refcount_order);
    return qcow2_refcount_set(s, idx, rc + (uint64_t)delta, err);
}

/* The first cluster at or after the hint whose refcount is 0 (clusters no
 * refcount block covers are free). */
static int find_free(struct qcow2_state *s, uint64_t *out, struct rb_error *err)
{
    uint64_t idx = s->free_cluster_hint, E = s->refblock_entries;

    /* Cluster 0 is the header whatever the refcounts say.  (A crafted
     * refcount table without a block for it made us put a new block at
     * offset 0, which the table reads as "no block": an endless loop.) */
    if (idx == 0)
        idx = 1;
    for (;;) {
        uint64_t boff, i;
        void *blk;
        int ret = qcow2_refblock_offset(s, idx / E, &boff, err);

        if (ret < 0)
            return ret;
        if (!boff)
            break;
        ret = get_block(s, boff, &blk, err);
        if (ret < 0)
            return ret;
        for (i = idx % E; i < E; i++) {
            if (qcow2_refblock_get(blk, s->h.refcount_order, i) == 0)
                break;
        }
        qcow2_cache_put(s->refblock_cache, blk);
        if (i < E) {
            idx = idx - idx % E + i;
            break;
        }
        idx = idx - idx % E + E;
    }
    s->free_cluster_hint = idx;
    *out = idx;
    return 0;
}

/* Put refcount block @k at the free cluster @at, which lies in the range
 * the block covers, so the block counts itself. */
static int new_refblock(struct qcow2_state *s, uint64_t k, uint64_t at,
                        struct rb_error *err)
{
    uint64_t off = at * s->cluster_bytes;
    uint8_t be[8];
    void *blk;
    int ret = qcow2_cache_get_empty(s->refblock_cache, off, &blk);

    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: refcount block cache", s->name);
    qcow2_refblock_set(blk, s->h.refcount_order, at % s->refblock_entries, 1);
    qcow2_cache_mark_dirty(s->refblock_cache, blk);
    qcow2_cache_put(s->refblock_cache, blk);
    cover(s, at);
    /* ORDER: the new block is durable before the table entry points at it
     * (a table entry to garbage would make refcounts read wrong) */
    ret = qcow2_cache_flush(s->refblock_cache);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot write refcount block at 0x%" PRIx64,
                              s->name, off);
    s->reftable[k] = off;
    rb_store_be64(be, off);
    ret = pwrite_err(s, be, 8, s->h.refcount_table_offset + k * 8, "refcount table", err);
    if (ret < 0) {
        /* not on disk: refcounts kept in this block would be lost, so
         * forget it (the next allocation makes it again) */
        s->reftable[k] = 0;
        return ret;
    }
    /* ORDER: the entry is durable before any L2 table that references a
     * cluster this block counts */
    qcow2_cache_depends_on_flush(s->l2_cache, s->fd);
    return ret;
}

/*
 * The image outgrew its refcount table (cluster @at, the first free one,
 * has no entry).  Build at @at: the refcount blocks covering the new area,
 * then the new, larger table; they count themselves.  Then switch the
 * header to the new table and free the old one.
 */
static int grow_reftable(struct qcow2_state *s, uint64_t at, struct rb_error *err)
{
    uint64_t c = s->cluster_bytes, E = s->refblock_entries;
    uint64_t first = at / E, blocks = 1, tclusters, entries;
    uint64_t old_off = s->h.refcount_table_offset, old_clusters = s->h.refcount_table_clusters;
    uint64_t *table = NULL;
    uint8_t *raw = NULL, hdr[12];
    int ret;

    /* fixed point: B blocks at at.., then T table clusters; the blocks
     * must cover [at, at + B + T), the table every range up to there,
     * with room to grow (double the old table) */
    for (;;) {
        uint64_t last, need;
        entries = first + blocks > s->reftable_entries * 2 ? first + blocks
                                                          : s->reftable_entries * 2;
        tclusters = (entries * 8 + c - 1) / c;
        last = (at + blocks + tclusters - 1) / E;
        need = last - first + 1;
        if (need <= blocks)
            break;
        blocks = need;
    }
    entries = tclusters * c / 8;
    if (tclusters * c > QCOW2_MAX_REFTABLE_BYTES)
        return rb_error_set(err, EFBIG, "%s: refcount table would exceed %u bytes",
                            s->name, QCOW2_MAX_REFTABLE_BYTES);
    table = calloc(entries, 8);
    raw = calloc(tclusters, c);
    if (!table || !raw) {
        ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        goto out;
    }
    memcpy(table, s->reftable, s->reftable_entries * 8);
    for (uint64_t j = 0; j < blocks; j++) {
        uint64_t range = first + j, boff = (at + j) * c;
        void *blk;
        ret = qcow2_cache_get_empty(s->refblock_cache, boff, &blk);
        if (ret < 0) {
            ret = rb_error_errno(err, -ret, "%s: refcount block cache", s->name);
            goto out;
        }
        for (uint64_t i = at; i < at + blocks + tclusters; i++) {
            if (i / E == range)
                qcow2_refblock_set(blk, s->h.refcount_order, i % E, 1);
        }
        qcow2_cache_mark_dirty(s->refblock_cache, blk);
        qcow2_cache_put(s->refblock_cache, blk);
        table[range] = boff;
    }
    cover(s, at + blocks + tclusters - 1);
    /* ORDER: blocks durable, then the table that points at them... */
    ret = qcow2_cache_flush(s->refblock_cache);
    if (ret < 0) {
        ret = rb_error_errno(err, -ret, "%s: cannot write refcount blocks", s->name);
        goto out;
    }
    for (uint64_t i = 0; i < entries; i++)
        rb_store_be64(raw + i * 8, table[i]);
    ret = pwrite_err(s, raw, tclusters * c, (at + blocks) * c, "refcount table", err);
    if (ret == 0)
        ret = sync_if_barriers(s, err);
    if (ret < 0)
        goto out;
    /* ...then the header that points at the table (durable before the old
     * table is freed and possibly reused) */
    rb_store_be64(hdr, (at + blocks) * c);
    rb_store_be32(hdr + 8, (uint32_t)tclusters);
    ret = qcow2_header_update(s, 48, hdr, sizeof(hdr), err);
    if (ret < 0)
        goto out;
    free(s->reftable);
    s->reftable = table;
    table = NULL;
    s->reftable_entries = entries;
    s->h.refcount_table_offset = (at + blocks) * c;
    s->h.refcount_table_clusters = (uint32_t)tclusters;
    for (uint64_t i = 0; i < old_clusters && ret == 0; i++)
        ret = qcow2_refcount_set(s, old_off / c + i, 0, err);
out:
    free(table);
    free(raw);
    return ret;
}

int qcow2_alloc_cluster(struct qcow2_state *s, uint64_t *host_off, struct rb_error *err)
{
    for (;;) {
        uint64_t idx, k, boff;
        int ret = find_free(s, &idx, err);

        if (ret < 0)
            return ret;
        k = idx / s->refblock_entries;
        ret = qcow2_refblock_offset(s, k, &boff, err);
        if (ret < 0)
            return ret;
        if (!boff) {
            /* no block counts idx: make one there (or grow the table), then
             * look again: idx is now taken by the new structure */
            ret = k < s->reftable_entries ? new_refblock(s, k, idx, err)
                                          : grow_reftable(s, idx, err);
            if (ret < 0)
                return ret;
            continue;
        }
        ret = qcow2_refcount_set(s, idx, 1, err);
        if (ret < 0)
            return ret;
        s->free_cluster_hint = idx + 1;
        cover(s, idx);
        *host_off = idx * s->cluster_bytes;
        return 0;
    }
}

int qcow2_alloc_inflight(struct qcow2_state *s, struct qcow2_inflight *f,
                         struct rb_error *err)
{
    /* s->file_size is the file's size at open grown by every cluster
     * handed out since (cover()); nothing is written outside those, so a
     * cluster at or past it has never been written: a hole, or past EOF */
    uint64_t end = s->file_size;
    int ret = qcow2_alloc_cluster(s, &f->host_off, err);

    if (ret < 0)
        return ret;
    f->fresh_zero = f->host_off >= end;
    f->next = s->inflight;
    s->inflight = f;
    return 0;
}

void qcow2_inflight_end(struct qcow2_state *s, struct qcow2_inflight *f, bool linked)
{
    struct qcow2_inflight **p = &s->inflight;

    while (*p && *p != f)
        p = &(*p)->next;
    if (*p)
        *p = f->next;
    f->next = NULL;
    /* unreferenced (the entry was never set): freeing it cannot leave a
     * reference to a free cluster, so no ordering point is needed */
    if (!linked)
        (void)qcow2_refcount_set(s, f->host_off / s->cluster_bytes, 0, NULL);
}

/* One cluster at a time from the first free one; when the run breaks (a
 * cluster in use, or a refcount block made in between), give the run
 * back and start again after the break.  The free clusters skipped this
 * way stay free for later allocations. */
/* Refcount blocks and L2 tables written back, then the file synced. */
int qcow2_flush_metadata(struct qcow2_state *s, struct rb_error *err)
{
    int ret = qcow2_cache_flush(s->refblock_cache);

    if (ret == 0)
        ret = qcow2_cache_flush(s->l2_cache);
    if (ret == 0)
        ret = rb_io_sync(s->fd);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot write metadata", s->name);
    return 0;
}

/*
 * Allocate @n contiguous clusters past the end of the file, for a table
 * larger than a refcount block covers (the general allocator puts each new
 * refcount block inside the range it covers, which splits such runs).
 * Layout: the run [t, t+n), then the refcount blocks that are missing for
 * [t, end), then, when the table has too few entries, a new refcount table
 * (every block and the table counted by the blocks).  ORDER: the blocks,
 * the updated existing blocks, then the table entries (or the new table
 * and one header write), each durable before what points at it.
 */
static int alloc_tail_run(struct qcow2_state *s, uint64_t n, uint64_t *off,
                          struct rb_error *err)
{
    uint64_t c = s->cluster_bytes, E = s->refblock_entries, t = (s->file_size + c - 1) / c;
    uint64_t B = 0, T = 0, entries = s->reftable_entries, end, *blk_at = NULL;
    uint8_t *buf = NULL, *table = NULL, hdr[12];
    int ret = 0;

    if (t == 0)
        t = 1;
    /* fixed point: blocks for every range of [t, t+n+B+T) without one,
     * a table covering them all when the old one is too small */
    for (;;) {
        uint64_t nb = 0, need_entries, nt = 0;
        end = t + n + B + T;
        for (uint64_t k = t / E; k <= (end - 1) / E; k++)
            if (k >= s->reftable_entries || !s->reftable[k])
                nb++;
        need_entries = (end - 1) / E + 1;
        if (need_entries > s->reftable_entries) {
            entries = need_entries > s->reftable_entries * 2 ? need_entries
                                                             : s->reftable_entries * 2;
            nt = (entries * 8 + c - 1) / c;
        }
        if (nb == B && nt == T)
            break;
        B = nb;
        T = nt;
    }
    if (T)
        entries = T * c / 8;
    if (T * c > QCOW2_MAX_REFTABLE_BYTES)
        return rb_error_set(err, EFBIG, "%s: refcount table would exceed %u bytes", s->name,
                            QCOW2_MAX_REFTABLE_BYTES);
    blk_at = calloc(((end - 1) / E + 1), 8);
    buf = malloc(c);
    table = T ? calloc(T, c) : NULL;
    if (!blk_at || !buf || (T && !table)) {
        ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        goto out;
    }
    /* new blocks at t+n.., in range order; existing ones via the cache */
    uint64_t next = t + n;
    for (uint64_t k = t / E; k <= (end - 1) / E; k++)
        if (k >= s->reftable_entries || !s->reftable[k])
            blk_at[k] = next++;
    for (uint64_t k = t / E; k <= (end - 1) / E && ret == 0; k++) {
        uint64_t lo = k * E > t ? k * E : t, hi = (k + 1) * E < end ? (k + 1) * E : end;
        if (!blk_at[k]) {
            for (uint64_t i = lo; i < hi && ret == 0; i++)
                ret = qcow2_refcount_set(s, i, 1, err);
            continue;
        }
        memset(buf, 0, c);
        for (uint64_t i = lo; i < hi; i++)
            qcow2_refblock_set(buf, s->h.refcount_order, i - k * E, 1);
        ret = rb_io_pwrite(s->fd, buf, c, blk_at[k] * c);
        if (ret < 0)
            ret = rb_error_errno(err, -ret, "%s: cannot write refcount block at 0x%" PRIx64,
                                 s->name, blk_at[k] * c);
    }
    if (ret == 0)
        ret = qcow2_flush_metadata(s, err);
    if (ret < 0)
        goto out;
    if (!T) {
        for (uint64_t k = t / E; k <= (end - 1) / E && ret == 0; k++) {
            uint8_t be[8];
            if (!blk_at[k])
                continue;
            rb_store_be64(be, blk_at[k] * c);
            ret = rb_io_pwrite(s->fd, be, 8, s->h.refcount_table_offset + k * 8);
            if (ret < 0)
                ret = rb_error_errno(err, -ret, "%s: cannot write the refcount table",
                                     s->name);
            else
                s->reftable[k] = blk_at[k] * c;
        }
        if (ret == 0 && (ret = rb_io_sync(s->fd)) < 0)
            ret = rb_error_errno(err, -ret, "%s: sync failed", s->name);
    } else {
        uint64_t toff = (t + n + B) * c, old_off = s->h.refcount_table_offset;
        uint64_t old_clusters = s->h.refcount_table_clusters, *nt = calloc(entries, 8);
        if (!nt) {
            ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
            goto out;
        }
        memcpy(nt, s->reftable, s->reftable_entries * 8);
        for (uint64_t k = t / E; k <= (end - 1) / E; k++)
            if (blk_at[k])
                nt[k] = blk_at[k] * c;
        for (uint64_t k = 0; k < entries; k++)
            rb_store_be64(table + k * 8, nt[k]);
        ret = rb_io_pwrite(s->fd, table, T * c, toff);
        if (ret == 0)
            ret = rb_io_sync(s->fd);
        if (ret < 0) {
            free(nt);
            ret = rb_error_errno(err, -ret, "%s: cannot write the refcount table", s->name);
            goto out;
        }
        rb_store_be64(hdr, toff);
        rb_store_be32(hdr + 8, (uint32_t)T);
        ret = qcow2_header_update(s, 48, hdr, sizeof(hdr), err);
        if (ret < 0) {
            free(nt);
            goto out;
        }
        free(s->reftable);
        s->reftable = nt;
        s->reftable_entries = entries;
        s->h.refcount_table_offset = toff;
        s->h.refcount_table_clusters = (uint32_t)T;
        /* the old table: nothing points at it any more */
        for (uint64_t i = 0; i < old_clusters; i++)
            (void)qcow2_refcount_set(s, old_off / c + i, 0, NULL);
    }
    s->file_size = end * c;
    *off = t * c;
out:
    free(blk_at);
    free(buf);
    free(table);
    return ret;
}

int qcow2_alloc_clusters(struct qcow2_state *s, uint64_t n, uint64_t *host_off,
                         struct rb_error *err)
{
    uint64_t start = 0, got = 0;

    /* A run that needs a new refcount block of its own would be split by
     * it at every try: lay such runs out past the end of the file. */
    if (n >= s->refblock_entries / 2)
        return alloc_tail_run(s, n, host_off, err);
    while (got < n) {
        uint64_t off;
        int ret = qcow2_alloc_cluster(s, &off, err);

        if (ret < 0) {
            for (uint64_t i = 0; i < got; i++)
                (void)qcow2_refcount_set(s, start / s->cluster_bytes + i, 0, NULL);
            return ret;
        }
        if (got && off != start + got * s->cluster_bytes) {
            /* unreferenced: giving them back needs no ordering point */
            for (uint64_t i = 0; i < got; i++)
                (void)qcow2_refcount_set(s, start / s->cluster_bytes + i, 0, NULL);
            got = 0;
        }
        if (!got)
            start = off;
        got++;
        s->free_cluster_hint = (off / s->cluster_bytes) + 1;
    }
    *host_off = start;
    return 0;
}
