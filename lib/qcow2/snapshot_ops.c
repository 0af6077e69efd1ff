/* SPDX-License-Identifier: MIT */
/*
 * snapshot_ops.c - create, apply and delete internal snapshots (qcow2.txt
 * "Snapshots"; qemu-img snapshot -c/-a/-d).
 *
 * The result is what QEMU writes: a snapshot table entry (id, name, the
 * L1 table, vm state size 0, date, guest clock 0, 24 bytes of extra data
 * with the virtual size), the refcount of every L2 table and data cluster
 * counted once per L1 table that reaches it, and QCOW_OFLAG_COPIED set in
 * the active tables exactly where the refcount is 1.
 *
 * How it is written differs from QEMU, for crash safety.  QEMU updates
 * refcounts and the COPIED flags of the active tables in place, one
 * after the other: a crash in between leaves flags that disagree with the
 * refcounts, which qemu-img check counts as corruption.  Here nothing the
 * image uses is modified in place.  The new state is computed in memory
 * (every refcount, the new active L1 table, copies of the active L2
 * tables whose COPIED flags change, the new snapshot table) and written,
 * with a new refcount table and new refcount blocks, into clusters that
 * were free before (refcount 0: nothing on disk uses them), or past the
 * end of the file; after one sync, a single write of header bytes 36..71
 * (l1_size, l1_table_offset, refcount_table_offset,
 * refcount_table_clusters, nb_snapshots, snapshots_offset: one sector)
 * switches to it, and a second sync makes it durable.  A crash before the
 * switch leaves the old image untouched (the new clusters are free in it
 * and referenced by nothing); after it, the new one, in which the old
 * tables are free clusters.
 *
 * Cost: reading every refcount and the L2 tables of the L1 tables
 * involved; writing the changed L2 tables and all refcount blocks (one per
 * cluster_size * 8 / refcount_bits clusters of file).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qcow2/qcow2.h"
#include "qcow2/qcow2w.h"
#include "rblock/io.h"
#include "rblock/qcow2.h"
#include "util/endian.h"

#define EXTRA_BYTES 24 /* vm_state_size_large, disk_size, icount */

struct l2_copy {
    uint64_t l1_index;
    uint8_t *table;    /* the new contents */
    uint64_t new_off;  /* where it goes */
};

struct plan {
    struct qcow2_state *s;
    uint64_t *rc;      /* refcount of every cluster in the new state */
    uint64_t nb;       /* entries of rc */
    uint64_t max;      /* largest refcount the width holds */
    uint64_t *l1;      /* the new active L1 table, host byte order */
    uint32_t l1_size;
    struct l2_copy *copies;
    size_t nb_copies;
    struct qcow2_snapshot *sns; /* the new snapshot list (strings borrowed) */
    uint32_t nb_sns;
    uint8_t *sn_table;
    size_t sn_bytes;
    uint8_t *free_before; /* refcount 0 before the operation (old_nb) */
    uint64_t old_nb;
    uint64_t *taken;      /* clusters the layout took */
    size_t nb_taken, cap_taken;
    uint64_t hint;        /* no available cluster below it */
};

static int rc_add(struct plan *p, uint64_t idx, int64_t delta, struct rb_error *err)
{
    struct qcow2_state *s = p->s;

    if (idx >= p->nb)
        return rb_error_set(err, EINVAL, "%s: cluster 0x%" PRIx64 " is past the end of "
                            "the file (size %" PRIu64 "): the image is corrupt", s->name,
                            idx * s->cluster_bytes, s->file_size);
    if (delta < 0 && p->rc[idx] < (uint64_t)-delta)
        return rb_error_set(err, EINVAL, "%s: refcount of cluster 0x%" PRIx64 " (%" PRIu64
                            ") would drop below zero: the image is corrupt (see 'rblock "
                            "check')", s->name, idx * s->cluster_bytes, p->rc[idx]);
    if (delta > 0 && p->rc[idx] > p->max - (uint64_t)delta)
        return rb_error_set(err, ERANGE, "%s: refcount of cluster 0x%" PRIx64 " would "
                            "exceed %" PRIu64 " (refcount_bits=%u)", s->name,
                            idx * s->cluster_bytes, p->max, 1u << s->h.refcount_order);
    p->rc[idx] += (uint64_t)delta;
    return 0;
}

/* @delta for each cluster of [@off, @off + @bytes). */
static int rc_add_range(struct plan *p, uint64_t off, uint64_t bytes, int64_t delta,
                        struct rb_error *err)
{
    uint64_t c = p->s->cluster_bytes;

    for (uint64_t i = off / c; bytes && i <= (off + bytes - 1) / c; i++) {
        int ret = rc_add(p, i, delta, err);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* The host clusters an L2 entry references (none: *bytes = 0). */
static void entry_host(const struct qcow2_state *s, uint64_t e, uint64_t *off, uint64_t *bytes)
{
    if (e & QCOW2_OFLAG_COMPRESSED) {
        qcow2_compressed_parse(e, s->h.cluster_bits, off, bytes);
        return;
    }
    *off = e & QCOW2_L2E_OFFSET_MASK;
    *bytes = *off ? s->cluster_bytes : 0;
}

/* A pinned L2 table of L1 entry @l1e (index @i of @what). */
static int get_l2(struct qcow2_state *s, uint64_t l1e, uint64_t i, const char *what,
                  void **l2, struct rb_error *err)
{
    uint64_t off = l1e & QCOW2_L1E_OFFSET_MASK, end;
    int ret;

    if ((off & (s->cluster_bytes - 1)) || !rb_add_ok(off, s->cluster_bytes, &end) ||
        end > s->file_size)
        return rb_error_set(err, EINVAL, "%s: L2 table at 0x%" PRIx64 " (entry %" PRIu64
                            " of %s) is not a cluster inside the file", s->name, off, i,
                            what);
    ret = qcow2_cache_get(s->l2_cache, off, l2);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot read L2 table at 0x%" PRIx64, s->name,
                              off);
    return 0;
}

/* Count (@delta = +1) or uncount (-1) one more path from an L1 table to
 * every L2 table and host cluster it reaches, as qemu-img check counts. */
static int walk_l1(struct plan *p, const uint64_t *l1, uint32_t l1_size, int64_t delta,
                   const char *what, struct rb_error *err)
{
    struct qcow2_state *s = p->s;

    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2_off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        void *l2;
        int ret;

        if (!l2_off)
            continue;
        ret = get_l2(s, l1[i], i, what, &l2, err);
        if (ret == 0)
            ret = rc_add(p, l2_off / s->cluster_bytes, delta, err);
        for (uint32_t j = 0; ret == 0 && j < s->l2_entries; j++) {
            uint64_t off, bytes;
            entry_host(s, qcow2_l2_entry_get(s, l2, j), &off, &bytes);
            ret = rc_add_range(p, off, bytes, delta, err);
        }
        if (l2)
            qcow2_cache_put(s->l2_cache, l2);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* Give the new active L1 table the COPIED flags of the new refcounts:
 * an L2 table reachable from it whose entries' flags would change is
 * copied (the old one is still in use until the switch), the copy's
 * entries corrected; then each L1 entry is flagged when its table's
 * refcount is 1. */
static int settle_active(struct plan *p, struct rb_error *err)
{
    struct qcow2_state *s = p->s;
    uint64_t c = s->cluster_bytes;

    for (uint32_t i = 0; i < p->l1_size; i++) {
        uint64_t l2_off = p->l1[i] & QCOW2_L1E_OFFSET_MASK;
        uint8_t *copy = NULL;
        void *l2;
        int ret;

        if (!l2_off)
            continue;
        ret = get_l2(s, p->l1[i], i, "the active L1 table", &l2, err);
        if (ret < 0)
            return ret;
        for (uint32_t j = 0; j < s->l2_entries; j++) {
            uint64_t e = qcow2_l2_entry_get(s, l2, j), want = e & ~QCOW2_OFLAG_COPIED;
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK;

            if (!qcow2_l2e_copied_applies(s, e))
                continue;
            if (host / c < p->nb && p->rc[host / c] == 1)
                want |= QCOW2_OFLAG_COPIED;
            if (want == e)
                continue;
            if (!copy) {
                copy = malloc(c);
                if (!copy) {
                    qcow2_cache_put(s->l2_cache, l2);
                    return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
                }
                memcpy(copy, l2, c);
            }
            qcow2_l2_entry_set(s, copy, j, want);
        }
        qcow2_cache_put(s->l2_cache, l2);
        if (copy) {
            struct l2_copy *n = realloc(p->copies, (p->nb_copies + 1) * sizeof(*n));
            if (!n) {
                free(copy);
                return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
            }
            p->copies = n;
            n[p->nb_copies++] = (struct l2_copy){.l1_index = i, .table = copy};
            /* the active path leaves the old table for the copy */
            ret = rc_add(p, l2_off / c, -1, err);
            if (ret < 0)
                return ret;
            p->l1[i] = 0; /* set once the copy has its place */
        } else {
            p->l1[i] = l2_off | (p->rc[l2_off / c] == 1 ? QCOW2_OFLAG_COPIED : 0);
        }
    }
    return 0;
}

/* The snapshot table of p->sns as qcow2_write_snapshots lays it out. */
static int build_sn_table(struct plan *p, struct rb_error *err)
{
    struct qcow2_state *s = p->s;
    size_t bytes = 0, off = 0;

    for (uint32_t i = 0; i < p->nb_sns; i++) {
        const struct qcow2_snapshot *sn = &p->sns[i];
        uint32_t extra = sn->extra_data_size >= EXTRA_BYTES ? sn->extra_data_size
                                                             : EXTRA_BYTES;
        bytes += (40 + extra + strlen(sn->id) + strlen(sn->name) + 7) & ~(size_t)7;
    }
    if (bytes > QCOW2_MAX_SNAPSHOTS_BYTES)
        return rb_error_set(err, EFBIG, "%s: snapshot table would be too large (%zu "
                            "bytes, limit %u)", s->name, bytes, QCOW2_MAX_SNAPSHOTS_BYTES);
    p->sn_bytes = bytes;
    if (!bytes)
        return 0;
    p->sn_table = calloc(1, bytes);
    if (!p->sn_table)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    for (uint32_t i = 0; i < p->nb_sns; i++) {
        const struct qcow2_snapshot *sn = &p->sns[i];
        uint8_t *h = p->sn_table + off;
        size_t id_len = strlen(sn->id), name_len = strlen(sn->name);
        uint32_t extra = sn->extra_data_size;

        rb_store_be64(h, sn->l1_table_offset);
        rb_store_be32(h + 8, sn->l1_size);
        rb_store_be16(h + 12, (uint16_t)id_len);
        rb_store_be16(h + 14, (uint16_t)name_len);
        rb_store_be32(h + 16, sn->date_sec);
        rb_store_be32(h + 20, sn->date_nsec);
        rb_store_be64(h + 24, sn->vm_clock_nsec);
        rb_store_be32(h + 32, (uint32_t)sn->vm_state_size);
        if (extra >= EXTRA_BYTES) {
            /* kept as it was, unknown fields too */
            memcpy(h + 40, sn->extra, extra);
        } else {
            /* as qemu upgrades an old entry: the three fields it knows */
            extra = EXTRA_BYTES;
            rb_store_be64(h + 40, sn->vm_state_size);
            rb_store_be64(h + 48, sn->disk_size);
            rb_store_be64(h + 56, sn->icount);
        }
        rb_store_be32(h + 36, extra);
        memcpy(h + 40 + extra, sn->id, id_len);
        memcpy(h + 40 + extra + id_len, sn->name, name_len);
        off += (40 + extra + id_len + name_len + 7) & ~(size_t)7;
    }
    return 0;
}

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

/* Does refcount block range @r (entries [r*E, (r+1)*E)) hold a refcount
 * that is not 0? */
static bool range_used(const struct plan *p, uint64_t r, uint64_t E)
{
    for (uint64_t i = r * E; i < (r + 1) * E && i < p->nb; i++)
        if (p->rc[i])
            return true;
    return false;
}

/* Place the new clusters past the end of the file, count them, write
 * everything, sync, switch the header, sync. */
static int grow(struct plan *p, uint64_t n, struct rb_error *err)
{
    uint64_t *g;

    if (n <= p->nb)
        return 0;
    g = realloc(p->rc, n * sizeof(*p->rc));
    if (!g)
        return rb_error_set(err, ENOMEM, "%s: out of memory", p->s->name);
    memset(g + p->nb, 0, (n - p->nb) * sizeof(*g));
    p->rc = g;
    p->nb = n;
    return 0;
}

/* May a new structure go at cluster @i?  Only where nothing on disk is
 * before the switch (refcount 0 before this operation: clusters it frees
 * are still in use until then) and nothing of this plan is yet. */
static bool avail(const struct plan *p, uint64_t i)
{
    if (i >= p->nb)
        return true;
    return p->rc[i] == 0 && (i >= p->old_nb || p->free_before[i]);
}

/* Take the first run of @n available clusters (refcount 1 in the new
 * state), remembered so that a new layout attempt can give it back. */
static int take(struct plan *p, uint64_t n, uint64_t *at, struct rb_error *err)
{
    uint64_t i, run = 0;
    int ret;

    while (!avail(p, p->hint))
        p->hint++;
    for (i = p->hint; run < n; i++)
        run = avail(p, i) ? run + 1 : 0;
    *at = i - n;
    ret = grow(p, i, err);
    if (ret == 0 && p->nb_taken + n > p->cap_taken) {
        size_t cap = (p->nb_taken + n) * 2;
        uint64_t *g = realloc(p->taken, cap * sizeof(*g));
        if (!g)
            return rb_error_set(err, ENOMEM, "%s: out of memory", p->s->name);
        p->taken = g;
        p->cap_taken = cap;
    }
    for (uint64_t k = *at; ret == 0 && k < i; k++) {
        p->rc[k] = 1;
        p->taken[p->nb_taken++] = k;
    }
    return ret;
}

/* Place the new structures in clusters free before the operation (then
 * past the end of the file), count them, write everything, sync, switch
 * the header, sync. */
static int commit(struct plan *p, struct rb_error *err)
{
    struct qcow2_state *s = p->s;
    uint64_t c = s->cluster_bytes, E = s->refblock_entries;
    uint64_t l1_clusters = div_up((uint64_t)p->l1_size * 8, c);
    uint64_t sn_clusters = div_up(p->sn_bytes, c), blocks = 0, tclusters = 1;
    uint64_t l1_off = 0, sn_off = 0, table_at = 0, ranges, used = 0, *blk = NULL;
    uint64_t *table = NULL;
    uint8_t *buf = NULL, hdr[36];
    int ret;

    /* fixed point: enough blocks for every range with a refcount, once
     * the blocks and the table themselves are counted */
    for (;;) {
        uint64_t need_b = 0, need_t, at, *g;

        for (size_t k = 0; k < p->nb_taken; k++)
            p->rc[p->taken[k]] = 0;
        p->nb_taken = 0;
        p->hint = 1;
        ret = 0;
        for (size_t k = 0; ret == 0 && k < p->nb_copies; k++) {
            ret = take(p, 1, &at, err);
            p->copies[k].new_off = at * c;
        }
        /* an empty L1 table (a disk of 0 bytes) is at offset 0, as qemu has it */
        at = 0;
        if (ret == 0 && l1_clusters)
            ret = take(p, l1_clusters, &at, err);
        l1_off = at * c;
        if (ret == 0 && sn_clusters) {
            ret = take(p, sn_clusters, &at, err);
            sn_off = at * c;
        }
        g = ret == 0 ? realloc(blk, (blocks ? blocks : 1) * sizeof(*blk)) : NULL;
        if (ret == 0 && !g)
            ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        if (g)
            blk = g;
        for (uint64_t k = 0; ret == 0 && k < blocks; k++)
            ret = take(p, 1, &blk[k], err);
        if (ret == 0)
            ret = take(p, tclusters, &table_at, err);
        if (ret < 0)
            goto out;
        ranges = div_up(p->nb, E);
        for (uint64_t r = 0; r < ranges; r++)
            need_b += range_used(p, r, E);
        need_t = div_up(ranges * 8, c);
        if (need_b <= blocks && need_t <= tclusters)
            break;
        blocks = need_b > blocks ? need_b : blocks;
        tclusters = need_t > tclusters ? need_t : tclusters;
        if (tclusters * c > QCOW2_MAX_REFTABLE_BYTES) {
            ret = rb_error_set(err, EFBIG, "%s: refcount table would exceed %u bytes",
                               s->name, QCOW2_MAX_REFTABLE_BYTES);
            goto out;
        }
    }
    for (size_t k = 0; k < p->nb_copies; k++)
        p->l1[p->copies[k].l1_index] = p->copies[k].new_off | QCOW2_OFLAG_COPIED;
    table = calloc(tclusters * c / 8, 8);
    buf = malloc(c);
    if (!table || !buf) {
        ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        goto out;
    }
    /* a block for each range with a refcount; blocks left over are not
     * used and go back to free (that only empties ranges: a block given
     * to a range that became empty holds zeros, which is valid) */
    for (uint64_t r = 0; r < ranges; r++)
        if (range_used(p, r, E))
            table[r] = blk[used++] * c;
    for (uint64_t k = used; k < blocks; k++)
        p->rc[blk[k]] = 0;

    /* write the new structures; nothing points at them yet */
    for (size_t k = 0; k < p->nb_copies; k++) {
        ret = rb_io_pwrite(s->fd, p->copies[k].table, c, p->copies[k].new_off);
        if (ret < 0)
            goto io;
    }
    for (uint64_t k = 0; k < l1_clusters; k++) {
        memset(buf, 0, c);
        for (uint64_t i = 0; i < c / 8 && k * (c / 8) + i < p->l1_size; i++)
            rb_store_be64(buf + i * 8, p->l1[k * (c / 8) + i]);
        ret = rb_io_pwrite(s->fd, buf, c, l1_off + k * c);
        if (ret < 0)
            goto io;
    }
    if (sn_clusters) {
        ret = rb_io_pwrite(s->fd, p->sn_table, p->sn_bytes, sn_off);
        if (ret == 0 && p->sn_bytes % c) {
            /* the rest of the last cluster: zeros, as a whole cluster */
            size_t tail = c - p->sn_bytes % c;
            memset(buf, 0, tail);
            ret = rb_io_pwrite(s->fd, buf, tail, sn_off + p->sn_bytes);
        }
        if (ret < 0)
            goto io;
    }
    for (uint64_t r = 0; r < ranges; r++) {
        if (!table[r])
            continue;
        memset(buf, 0, c);
        for (uint64_t i = 0; i < E && r * E + i < p->nb; i++)
            qcow2_refblock_set(buf, s->h.refcount_order, i, p->rc[r * E + i]);
        ret = rb_io_pwrite(s->fd, buf, c, table[r]);
        if (ret < 0)
            goto io;
    }
    for (uint64_t r = 0; r < ranges; r++)
        rb_store_be64((uint8_t *)&table[r], table[r]);
    ret = rb_io_pwrite(s->fd, table, tclusters * c, table_at * c);
    if (ret < 0)
        goto io;
    /* ORDER: everything the new header points at is durable first */
    ret = rb_io_sync(s->fd);
    if (ret < 0)
        goto io;
    rb_store_be32(hdr, p->l1_size);
    rb_store_be64(hdr + 4, l1_off);
    rb_store_be64(hdr + 12, table_at * c);
    rb_store_be32(hdr + 20, (uint32_t)tclusters);
    rb_store_be32(hdr + 24, p->nb_sns);
    rb_store_be64(hdr + 28, sn_off);
    /* the switch: one write inside the first sector */
    ret = rb_io_pwrite(s->fd, hdr, sizeof(hdr), 36);
    if (ret == 0)
        ret = rb_io_sync(s->fd);
    if (ret < 0)
        goto io;
    if (p->nb * c > s->file_size)
        s->file_size = p->nb * c;
    ret = 0;
    goto out;
io:
    ret = rb_error_errno(err, -ret, "%s: cannot write the snapshot update", s->name);
out:
    free(table);
    free(buf);
    free(blk);
    return ret;
}

/* The id qemu gives a new snapshot: one more than the largest numeric id. */
static void new_id(const struct qcow2_state *s, char *id, size_t len)
{
    unsigned long max = 0;

    for (uint32_t i = 0; i < s->h.nb_snapshots; i++) {
        unsigned long v = strtoul(s->snapshots[i].id, NULL, 10);
        if (v > max)
            max = v;
    }
    snprintf(id, len, "%lu", max + 1);
}

static int load_refcounts(struct plan *p, struct rb_error *err)
{
    struct qcow2_state *s = p->s;

    p->nb = p->old_nb = div_up(s->file_size, s->cluster_bytes);
    p->rc = calloc(p->nb ? p->nb : 1, sizeof(*p->rc));
    p->free_before = malloc(p->nb ? p->nb : 1);
    if (!p->rc || !p->free_before)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    for (uint64_t i = 0; i < p->nb; i++) {
        uint64_t boff;
        int ret = qcow2_refblock_offset(s, i / s->refblock_entries, &boff, err);
        if (ret < 0)
            return ret;
        if (!boff) {
            i = (i / s->refblock_entries + 1) * (uint64_t)s->refblock_entries - 1;
            continue;
        }
        ret = qcow2_refcount_get(s, i, &p->rc[i], err);
        if (ret < 0)
            return ret;
    }
    for (uint64_t i = 0; i < p->nb; i++)
        p->free_before[i] = p->rc[i] == 0;
    /* the old refcount structures are free once the new ones are in */
    for (uint64_t k = 0; k < s->reftable_entries; k++) {
        uint64_t boff;
        int ret = qcow2_refblock_offset(s, k, &boff, err);
        if (ret == 0 && boff)
            ret = rc_add(p, boff / s->cluster_bytes, -1, err);
        if (ret < 0)
            return ret;
    }
    return rc_add_range(p, s->h.refcount_table_offset,
                        (uint64_t)s->h.refcount_table_clusters * s->cluster_bytes, -1, err);
}

static int run(struct plan *p, enum rb_qcow2_snapshot_op op, const char *name,
               struct rb_error *err)
{
    struct qcow2_state *s = p->s;
    uint64_t l1_bytes = (uint64_t)s->h.l1_size * 8;
    struct qcow2_snapshot fresh = {0};
    uint64_t *sn_l1 = NULL;
    long idx = -1;
    char id[24];
    int ret;

    if (op == RB_QCOW2_SNAPSHOT_CREATE) {
        for (uint32_t i = 0; i < s->h.nb_snapshots; i++)
            if (strcmp(s->snapshots[i].name, name) == 0)
                return rb_error_set(err, EEXIST, "%s: snapshot '%s' already exists (id %s)",
                                    s->name, name, s->snapshots[i].id);
        if (s->h.nb_snapshots >= QCOW2_MAX_SNAPSHOTS)
            return rb_error_set(err, EFBIG, "%s: too many snapshots (limit %d)", s->name,
                                QCOW2_MAX_SNAPSHOTS);
        if (strlen(name) > UINT16_MAX)
            return rb_error_set(err, EINVAL, "%s: snapshot name is longer than %d bytes",
                                s->name, UINT16_MAX);
    } else {
        idx = qcow2_snapshot_find(s, name);
        if (idx < 0)
            return rb_error_set(err, ENOENT, "%s: no snapshot '%s' (id or name)", s->name,
                                name);
    }
    if (op == RB_QCOW2_SNAPSHOT_APPLY && s->snapshots[idx].disk_size != s->h.size)
        return rb_error_set(err, ENOTSUP, "%s: snapshot '%s' is of a disk of %" PRIu64
                            " bytes, the image has %" PRIu64 " (resize it first)", s->name,
                            name, s->snapshots[idx].disk_size, s->h.size);
    ret = load_refcounts(p, err);
    if (ret < 0)
        return ret;
    if (s->h.nb_snapshots) {
        ret = rc_add_range(p, s->h.snapshots_offset, s->snapshots_bytes, -1, err);
        if (ret < 0)
            return ret;
    }
    p->sns = calloc(s->h.nb_snapshots + 1, sizeof(*p->sns));
    if (!p->sns)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    for (uint32_t i = 0; i < s->h.nb_snapshots; i++)
        if ((long)i != idx || op != RB_QCOW2_SNAPSHOT_DELETE)
            p->sns[p->nb_sns++] = s->snapshots[i];
    if (idx >= 0) {
        ret = qcow2_snapshot_l1_read(s, &s->snapshots[idx], &sn_l1, err);
        if (ret < 0)
            return ret;
    }

    p->l1_size = s->h.l1_size;
    if (op == RB_QCOW2_SNAPSHOT_APPLY && s->snapshots[idx].l1_size > p->l1_size)
        p->l1_size = s->snapshots[idx].l1_size;
    p->l1 = calloc(p->l1_size ? p->l1_size : 1, 8);
    if (!p->l1) {
        ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        goto out;
    }
    switch (op) {
    case RB_QCOW2_SNAPSHOT_CREATE: {
        struct timespec now;
        /* the snapshot takes the current L1 table as it is on disk; the
         * active image gets a new one */
        memcpy(p->l1, s->l1, l1_bytes);
        ret = walk_l1(p, s->l1, s->h.l1_size, +1, "the active L1 table", err);
        if (ret < 0)
            goto out;
        clock_gettime(CLOCK_REALTIME, &now);
        new_id(s, id, sizeof(id));
        fresh.id = id;
        fresh.name = (char *)name;
        fresh.l1_table_offset = s->h.l1_table_offset;
        fresh.l1_size = s->h.l1_size;
        fresh.date_sec = (uint32_t)now.tv_sec;
        /* qemu-img takes microseconds */
        fresh.date_nsec = (uint32_t)(now.tv_nsec / 1000 * 1000);
        fresh.disk_size = s->h.size;
        fresh.icount = 0; /* as qemu-img snapshot -c writes it */
        p->sns[p->nb_sns++] = fresh;
        break;
    }
    case RB_QCOW2_SNAPSHOT_APPLY:
        memcpy(p->l1, sn_l1, (size_t)s->snapshots[idx].l1_size * 8);
        ret = walk_l1(p, sn_l1, s->snapshots[idx].l1_size, +1, "the snapshot's L1 table",
                      err);
        if (ret == 0)
            ret = walk_l1(p, s->l1, s->h.l1_size, -1, "the active L1 table", err);
        if (ret == 0)
            ret = rc_add_range(p, s->h.l1_table_offset, l1_bytes, -1, err);
        break;
    case RB_QCOW2_SNAPSHOT_DELETE:
        memcpy(p->l1, s->l1, l1_bytes);
        ret = walk_l1(p, sn_l1, s->snapshots[idx].l1_size, -1, "the snapshot's L1 table",
                      err);
        if (ret == 0)
            ret = rc_add_range(p, s->snapshots[idx].l1_table_offset,
                               (uint64_t)s->snapshots[idx].l1_size * 8, -1, err);
        if (ret == 0)
            ret = rc_add_range(p, s->h.l1_table_offset, l1_bytes, -1, err);
        break;
    }
    if (ret == 0)
        ret = settle_active(p, err);
    if (ret == 0)
        ret = build_sn_table(p, err);
    if (ret == 0)
        ret = commit(p, err);
out:
    free(sn_l1);
    return ret;
}

int rb_qcow2_snapshot(struct rb_image *img, enum rb_qcow2_snapshot_op op, const char *name,
                      struct rb_error *err)
{
    struct qcow2_state *s;
    struct plan p = {0};
    int ret;

    if (!qcow2_is_qcow2(img))
        return rb_error_set(err, ENOTSUP, "%s: format '%s' has no internal snapshots",
                            img->filename, img->ops->format);
    s = qcow2_state_of(img);
    if (!s->w || img->read_only)
        return rb_error_set(err, EROFS, "%s: not opened for writing", s->name);
    if (s->has_data_file)
        return rb_error_set(err, ENOTSUP, "%s: internal snapshots are not supported with an "
                            "external data file", s->name);
    if (!name || !*name)
        return rb_error_set(err, EINVAL, "%s: a snapshot needs a name", s->name);
    p.s = s;
    p.max = qcow2w_ref_max(s->h.refcount_order);
    pthread_mutex_lock(&s->lock);
    /* anything the write path left in the caches reaches the disk first:
     * the refcounts are read from there, the tables copied from there */
    ret = qcow2_cache_write(s->refblock_cache);
    if (ret == 0)
        ret = qcow2_cache_write(s->l2_cache);
    if (ret == 0)
        ret = rb_io_sync(s->fd);
    if (ret < 0)
        ret = rb_error_errno(err, -ret, "%s: cannot write metadata", s->name);
    else
        ret = run(&p, op, name, err);
    if (ret == 0) {
        /* the tables in memory describe the old image: no more I/O */
        img->read_only = true;
    }
    pthread_mutex_unlock(&s->lock);
    for (size_t k = 0; k < p.nb_copies; k++)
        free(p.copies[k].table);
    free(p.copies);
    free(p.rc);
    free(p.free_before);
    free(p.taken);
    free(p.l1);
    free(p.sns);
    free(p.sn_table);
    return ret;
}
