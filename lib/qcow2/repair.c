/* SPDX-License-Identifier: MIT */
/*
 * repair.c - repair of a qcow2 image's refcounts, COPIED flags and dirty
 * bit, as qemu-img check -r does it (QEMU's qcow2_check_refcounts,
 * compare_refcounts, rebuild_refcount_structure, check_oflag_copied).
 *
 * The references to every host cluster come from check.c's walk
 * (qcow2_check_refs).  Then, under the image lock:
 *   - when the refcount structure itself cannot be trusted (a refcount
 *     block that is unaligned, past the end of the file or not owned by
 *     the refcount table alone; a cluster in use whose refcount is 0, as
 *     after a crash with lazy refcounts), and errors are to be fixed, a
 *     new structure is built from the references in clusters nothing
 *     references (the old structure counts as referenced, so it is never
 *     overwritten), made durable, and the header switched to it with one
 *     12-byte write; the old structure is then a leak, freed in place;
 *   - otherwise each refcount that differs from the references is set to
 *     the number of references in place (leaks with RB_QCOW2_FIX_LEAKS,
 *     refcounts below the references with RB_QCOW2_FIX_ERRORS);
 *   - with RB_QCOW2_FIX_ERRORS, COPIED flags of the active L1 and L2
 *     tables are set to "refcount == 1";
 *   - when the image is then free of corruptions, the dirty bit (and the
 *     corrupt bit, as QEMU) is cleared.
 *
 * Crash safety (DESIGN.md section 4): no reference changes, so setting a
 * refcount to the number of references never makes it too low; a new
 * refcount structure is durable before the header points at it, and the
 * old one is freed only after the header switched.
 *
 * The image must be open read-write (so locked against other processes)
 * and not written concurrently: the caller is the check -r command or the
 * write open of a dirty image, before any guest write.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "qcow2/qcow2w.h"
#include "rblock/io.h"
#include "rblock/qcow2.h"

static int io_err(struct qcow2_state *s, int ret, const char *what, uint64_t off,
                  struct rb_error *err)
{
    return rb_error_errno(err, -ret, "%s: cannot write %s at 0x%" PRIx64, s->name, what,
                          off);
}

static int sync_fd(struct qcow2_state *s, struct rb_error *err)
{
    int ret = rb_io_sync(s->fd);

    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: sync failed", s->name);
    return 0;
}

/* Grow the reference counts to @n clusters (new ones unreferenced). */
static int refs_grow(struct qcow2_refs *r, uint64_t n)
{
    uint32_t *p;

    if (n <= r->nb)
        return 0;
    if (n > RB_QCOW2_CHECK_MAX_CLUSTERS + (1u << 20))
        return -EFBIG;
    p = realloc(r->refs, n * sizeof(*p));
    if (!p)
        return -ENOMEM;
    memset(p + r->nb, 0, (n - r->nb) * sizeof(*p));
    r->refs = p;
    r->nb = n;
    return 0;
}

/* Take the first run of @count clusters that nothing references (cluster
 * 0 is the header), marking them referenced.  Past the end of the file
 * every cluster is free.  *@hint: no free cluster before it (kept so that
 * taking one block after another stays linear). */
static int take_run(struct qcow2_refs *r, uint64_t count, uint64_t *hint, uint64_t *first)
{
    uint64_t run = 0, i;

    if (*hint < 1)
        *hint = 1;
    while (*hint < r->nb && r->refs[*hint])
        (*hint)++;
    for (i = *hint; i < r->nb && run < count; i++)
        run = r->refs[i] ? 0 : run + 1;
    if (run < count) {
        i = r->nb + (count - run);
        int ret = refs_grow(r, i);
        if (ret < 0)
            return ret;
    }
    *first = i - count;
    for (uint64_t k = *first; k < i; k++)
        r->refs[k] = 1;
    return 0;
}

static bool range_used(const struct qcow2_refs *r, uint64_t k, uint64_t E)
{
    for (uint64_t i = k * E; i < r->nb && i < (k + 1) * E; i++) {
        if (r->refs[i])
            return true;
    }
    return false;
}

/*
 * Build a new refcount structure that counts @r (which grows by the
 * clusters it takes), write it, make it durable, and switch the header to
 * it.  Lock held.
 */
static int rebuild_refcounts(struct qcow2_state *s, struct qcow2_refs *r, unsigned order,
                             struct rb_error *err)
{
    uint64_t c = s->cluster_bytes, E = c * 8 >> order;
    uint64_t *blocks = NULL, nblocks = 0, table_at = 0, tclusters = 0, entries, end;
    uint64_t hint = 1;
    uint8_t *buf = NULL, hdr[52];
    struct qcow2_cache *cache;
    int ret = 0;

    /* Fixed point, as QEMU's: a block for every range with a cluster in
     * use, then a table for every range; taking clusters for either may
     * put a cluster in a new range. */
    for (;;) {
        bool changed;
        do {
            changed = false;
            for (uint64_t k = 0; k * E < r->nb; k++) {
                if (k >= nblocks) {
                    uint64_t n = k + 64, *p = realloc(blocks, n * sizeof(*p));
                    if (!p) {
                        ret = -ENOMEM;
                        goto out;
                    }
                    memset(p + nblocks, 0, (n - nblocks) * sizeof(*p));
                    blocks = p;
                    nblocks = n;
                }
                if (blocks[k] || !range_used(r, k, E))
                    continue;
                ret = take_run(r, 1, &hint, &blocks[k]);
                if (ret < 0)
                    goto out;
                changed = true;
            }
        } while (changed);
        entries = (r->nb + E - 1) / E;
        uint64_t need = (entries * 8 + c - 1) / c;
        if (tclusters && need <= tclusters)
            break;
        if (tclusters) { /* too small now: give it back and take a bigger one */
            for (uint64_t k = table_at; k < table_at + tclusters; k++)
                r->refs[k] = 0;
            if (table_at < hint)
                hint = table_at;
        }
        if (need * c > QCOW2_MAX_REFTABLE_BYTES) {
            ret = rb_error_set(err, EFBIG, "%s: cannot rebuild the refcounts: the "
                               "refcount table would exceed %u bytes", s->name,
                               QCOW2_MAX_REFTABLE_BYTES);
            goto out_set;
        }
        ret = take_run(r, need, &hint, &table_at);
        if (ret < 0)
            goto out;
        tclusters = need;
    }
    entries = tclusters * c / 8;

    /* the blocks, then the table: all in clusters nothing references */
    buf = malloc(tclusters * c > c ? tclusters * c : c);
    if (!buf) {
        ret = -ENOMEM;
        goto out;
    }
    for (uint64_t k = 0; k < nblocks && k * E < r->nb; k++) {
        if (!blocks[k])
            continue;
        memset(buf, 0, c);
        for (uint64_t i = k * E; i < r->nb && i < (k + 1) * E; i++) {
            if (r->refs[i] > qcow2w_ref_max(order)) {
                ret = rb_error_set(err, ERANGE, "%s: cluster %" PRIu64 " is referenced %"
                                   PRIu32 " times, more than %u-bit refcounts hold",
                                   s->name, i, r->refs[i], 1u << order);
                goto out_set;
            }
            qcow2_refblock_set(buf, order, i - k * E, r->refs[i]);
        }
        ret = rb_io_pwrite(s->fd, buf, c, blocks[k] * c);
        if (ret < 0) {
            ret = io_err(s, ret, "refcount block", blocks[k] * c, err);
            goto out_set;
        }
    }
    memset(buf, 0, tclusters * c);
    for (uint64_t k = 0; k < nblocks && k < entries; k++)
        rb_store_be64(buf + k * 8, blocks[k] * c);
    ret = rb_io_pwrite(s->fd, buf, tclusters * c, table_at * c);
    if (ret < 0) {
        ret = io_err(s, ret, "refcount table", table_at * c, err);
        goto out_set;
    }
    /* ORDER: the new structure is durable before the header points at it */
    ret = sync_fd(s, err);
    if (ret < 0)
        goto out_set;
    /* one write inside the first sector: the table, and the width when it
     * changes (amend refcount_bits; v3 field at 96) */
    ret = rb_io_pread(s->fd, hdr, sizeof(hdr), 48);
    if (ret < 0) {
        ret = rb_error_errno(err, -ret, "%s: cannot read the header", s->name);
        goto out_set;
    }
    rb_store_be64(hdr, table_at * c);
    rb_store_be32(hdr + 8, (uint32_t)tclusters);
    rb_store_be32(hdr + 48, order);
    ret = rb_io_pwrite(s->fd, hdr, order != s->h.refcount_order ? 52 : 12, 48);
    if (ret < 0) {
        ret = io_err(s, ret, "the header", 48, err);
        goto out_set;
    }
    ret = sync_fd(s, err);
    if (ret < 0)
        goto out_set;

    /* the new structure in memory; nothing of the old one may be written
     * back or read from the cache (its clusters are about to be freed) */
    free(s->reftable);
    s->reftable = calloc(entries, 8);
    if (!s->reftable) {
        ret = rb_error_set(err, ENOMEM, "%s: out of memory (the refcounts were rebuilt "
                           "on disk)", s->name);
        goto out_set;
    }
    for (uint64_t k = 0; k < nblocks && k < entries; k++)
        s->reftable[k] = blocks[k] * c;
    s->reftable_entries = entries;
    s->h.refcount_order = order;
    s->refblock_entries = (uint32_t)E;
    s->h.refcount_table_offset = table_at * c;
    s->h.refcount_table_clusters = (uint32_t)tclusters;
    cache = qcow2_cache_new(s->fd, c, qcow2_cache_entries(s->refblock_cache) * c);
    if (!cache) {
        ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        goto out_set;
    }
    qcow2_cache_set_barriers(cache, s->barriers);
    qcow2_cache_free(s->refblock_cache);
    s->refblock_cache = cache;
    qcow2_cache_set_dependency(s->l2_cache, cache);
    s->free_cluster_hint = 0;
    end = r->nb * c;
    if (end > s->file_size) {
        ret = rb_io_size(s->fd, &s->file_size);
        if (ret < 0) {
            ret = rb_error_errno(err, -ret, "%s: cannot get size", s->name);
            goto out_set;
        }
    }
    ret = 0;
    goto out_set;
out:
    if (ret < 0)
        ret = rb_error_errno(err, -ret, "%s: cannot rebuild the refcounts", s->name);
out_set:
    free(blocks);
    free(buf);
    return ret;
}

/* Must the refcount structure be rebuilt before it can be trusted?  As
 * QEMU's check_refblocks and compare_refcounts: a refcount block that is
 * unusable or shared, or a cluster in use with refcount 0.  Counts the
 * differing refcounts on the way.  Lock held. */
static bool needs_rebuild(struct qcow2_state *s, const struct qcow2_refs *r,
                          uint64_t *leaks, uint64_t *low, uint64_t *unaligned)
{
    uint64_t c = s->cluster_bytes;
    bool rebuild = false;

    *leaks = *low = *unaligned = 0;
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        uint64_t off = s->reftable[i] & QCOW2_REFT_OFFSET_MASK, end;

        if (s->reftable[i] & ~QCOW2_REFT_OFFSET_MASK)
            rebuild = true;
        if (!off)
            continue;
        if ((off & (c - 1)) || !rb_add_ok(off, c, &end) || end > s->file_size ||
            off / c >= r->nb || r->refs[off / c] != 1)
            rebuild = true;
    }
    for (uint64_t i = 0; i < r->nb; i++) {
        uint64_t rc;

        if (qcow2_refcount_get(s, i, &rc, NULL) < 0) {
            uint64_t k = i / s->refblock_entries;
            /* check.c counts these as check errors (qemu: "Can't get
             * refcount"); a block past the end reads as zeros there */
            if (k < s->reftable_entries && (s->reftable[k] & QCOW2_REFT_OFFSET_MASK & (c - 1)))
                (*unaligned)++;
            rebuild = true;
            rc = 0;
        }
        if (rc > r->refs[i])
            (*leaks)++;
        else if (rc < r->refs[i])
            (*low)++;
        if (rc == 0 && r->refs[i])
            rebuild = true;
    }
    return rebuild;
}

/* Set every refcount that differs from the references, as allowed by
 * @fix; then write them back (durable).  Lock held. */
static int fix_in_place(struct qcow2_state *s, const struct qcow2_refs *r, unsigned fix,
                        uint64_t *leaks_fixed, uint64_t *low_fixed, struct rb_error *err)
{
    int ret;

    for (uint64_t i = 0; i < r->nb; i++) {
        uint64_t rc;

        ret = qcow2_refcount_get(s, i, &rc, err);
        if (ret < 0)
            return ret;
        if (rc == r->refs[i])
            continue;
        if (rc > r->refs[i] ? !(fix & RB_QCOW2_FIX_LEAKS) : !(fix & RB_QCOW2_FIX_ERRORS))
            continue;
        ret = qcow2_refcount_set(s, i, r->refs[i], err);
        if (ret < 0)
            return ret;
        if (rc > r->refs[i])
            (*leaks_fixed)++;
        else
            (*low_fixed)++;
    }
    ret = qcow2_cache_flush(s->refblock_cache);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot write refcount blocks", s->name);
    return 0;
}

/* COPIED must mean "refcount == 1" in the active tables (qemu's
 * check_oflag_copied with repair).  Only tables that are aligned, inside
 * the file and referenced are rewritten.  Lock held. */
static int fix_copied(struct qcow2_state *s, const struct qcow2_refs *r, uint64_t *fixed,
                      struct rb_error *err)
{
    uint64_t c = s->cluster_bytes;
    int ret;

    for (uint32_t i = 0; i < s->h.l1_size; i++) {
        uint64_t l2_off = s->l1[i] & QCOW2_L1E_OFFSET_MASK, rc, end;
        bool dirty = false;
        void *l2;

        if (!l2_off || (l2_off & (c - 1)) || !rb_add_ok(l2_off, c, &end) ||
            end > s->file_size || l2_off / c >= r->nb || !r->refs[l2_off / c])
            continue;
        if (qcow2_refcount_get(s, l2_off / c, &rc, NULL) == 0 &&
            (rc == 1) != !!(s->l1[i] & QCOW2_OFLAG_COPIED)) {
            uint8_t be[8];
            uint64_t e = rc == 1 ? s->l1[i] | QCOW2_OFLAG_COPIED
                                 : s->l1[i] & ~QCOW2_OFLAG_COPIED;
            rb_store_be64(be, e);
            ret = rb_io_pwrite(s->fd, be, 8, s->h.l1_table_offset + (uint64_t)i * 8);
            if (ret < 0)
                return io_err(s, ret, "L1 entry", s->h.l1_table_offset + (uint64_t)i * 8,
                              err);
            s->l1[i] = e;
            (*fixed)++;
        }
        ret = qcow2_cache_get(s->l2_cache, l2_off, &l2);
        if (ret < 0)
            return rb_error_errno(err, -ret, "%s: cannot read L2 table at 0x%" PRIx64,
                                  s->name, l2_off);
        for (uint32_t j = 0; j < s->l2_entries; j++) {
            uint64_t e = qcow2_l2_entry_get(s, l2, j);
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK;

            if (!qcow2_l2e_copied_applies(s, e))
                continue;
            if (s->has_data_file)
                rc = 1; /* data file clusters are not refcounted */
            else if (qcow2_refcount_get(s, host / c, &rc, NULL) < 0)
                continue;
            if ((rc == 1) == !!(e & QCOW2_OFLAG_COPIED))
                continue;
            qcow2_l2_entry_set(s, l2, j, rc == 1 ? e | QCOW2_OFLAG_COPIED
                                                 : e & ~QCOW2_OFLAG_COPIED);
            dirty = true;
            (*fixed)++;
        }
        if (dirty)
            qcow2_cache_mark_dirty(s->l2_cache, l2);
        qcow2_cache_put(s->l2_cache, l2);
    }
    /* refcounts first (the cache dependency), then the L2 tables */
    ret = qcow2_cache_flush(s->l2_cache);
    if (ret == 0)
        ret = rb_io_sync(s->fd);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot write L2 tables", s->name);
    return 0;
}

/* As qemu's qcow2_mark_clean and qcow2_mark_consistent: the dirty and
 * corrupt bits go once the image checks clean. */
static int clear_dirty(struct qcow2_state *s, struct rb_error *err)
{
    uint64_t incompat = s->h.incompatible_features &
                        ~(QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT);
    uint8_t be[8];
    int ret;

    /* ORDER: everything repaired is durable (fix_* synced) before the
     * header says the refcounts can be trusted */
    ret = sync_fd(s, err);
    if (ret < 0)
        return ret;
    rb_store_be64(be, incompat);
    ret = rb_io_pwrite(s->fd, be, 8, 72);
    if (ret < 0)
        return io_err(s, ret, "the header", 72, err);
    ret = sync_fd(s, err);
    if (ret < 0)
        return ret;
    s->h.incompatible_features = incompat;
    s->dirty_bit_set = false;
    return 0;
}

static int repair(struct rb_image *img, struct qcow2_state *s, unsigned fix,
                  struct rb_qcow2_repair *res, struct rb_error *err)
{
    struct qcow2_refs r = {0};
    uint64_t leaks, low, unaligned, dummy = 0;
    bool rebuilt = false;
    int ret;

    ret = qcow2_check_refs(img, &res->found, &r, err);
    if (ret < 0)
        return ret;

    pthread_mutex_lock(&s->lock);
    bool rebuild = needs_rebuild(s, &r, &leaks, &low, &unaligned);
    /* the references are complete only when every check error was an
     * unreadable refcount: a table that could not be read would make the
     * repair count its clusters as free */
    if (res->found.check_errors > unaligned) {
        ret = rb_error_set(err, EIO, "%s: cannot repair: %" PRIu64 " errors occurred "
                           "while checking the image", s->name, res->found.check_errors);
        goto unlock;
    }
    if (rebuild) {
        if (!(fix & RB_QCOW2_FIX_ERRORS)) {
            ret = rb_error_set(err, EIO, "%s: cannot repair leaks only: the refcount "
                               "structure must be rebuilt (a cluster in use has refcount "
                               "0, or a refcount block is broken); use -r all", s->name);
            goto unlock;
        }
        ret = rebuild_refcounts(s, &r, s->h.refcount_order, err);
        if (ret < 0)
            goto unlock;
        rebuilt = true;
        res->rebuilt = true;
        /* as qemu: every refcount that differed was fixed by the rebuild */
        res->leaks_fixed = leaks;
        res->corruptions_fixed = low;
    }
    pthread_mutex_unlock(&s->lock);

    if (rebuilt) {
        /* the old structure is now referenced by nothing: a leak, freed
         * silently as qemu does (it was not in the image's problems) */
        struct rb_qcow2_check again;
        free(r.refs);
        r.refs = NULL;
        ret = qcow2_check_refs(img, &again, &r, err);
        rb_qcow2_check_free(&again);
        if (ret < 0)
            return ret;
    }

    pthread_mutex_lock(&s->lock);
    if (rebuilt) {
        bool again = needs_rebuild(s, &r, &leaks, &low, &unaligned);
        ret = again ? rb_error_set(err, EIO, "%s: the rebuilt refcount structure is still "
                                   "broken", s->name)
                    : fix_in_place(s, &r, RB_QCOW2_FIX_LEAKS, &dummy, &dummy, err);
    } else {
        ret = fix_in_place(s, &r, fix, &res->leaks_fixed, &res->corruptions_fixed, err);
    }
    if (ret == 0 && (fix & RB_QCOW2_FIX_ERRORS))
        ret = fix_copied(s, &r, &res->corruptions_fixed, err);
unlock:
    pthread_mutex_unlock(&s->lock);
    free(r.refs);
    if (ret < 0)
        return ret;

    /* the state after, and the dirty bit once the image is consistent */
    ret = rb_qcow2_check(img, &res->after, err);
    if (ret < 0)
        return ret;
    if (!res->after.corruptions && !res->after.check_errors &&
        (s->h.incompatible_features & (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT))) {
        ret = clear_dirty(s, err);
        if (ret < 0)
            return ret;
        res->dirty_cleared = true;
    }
    return 0;
}

int rb_qcow2_repair(struct rb_image *img, unsigned fix, struct rb_qcow2_repair *res,
                    struct rb_error *err)
{
    struct qcow2_state *s;
    int ret;

    memset(res, 0, sizeof(*res));
    if (!qcow2_is_qcow2(img))
        return rb_error_set(err, EINVAL, "%s: not a qcow2 image", img->filename);
    s = img->priv;
    if (!s->writable)
        return rb_error_set(err, EROFS, "%s: cannot repair an image opened read-only",
                            s->name);
    ret = repair(img, s, fix, res, err);
    if (ret < 0)
        rb_qcow2_repair_free(res);
    return ret;
}

void rb_qcow2_repair_free(struct rb_qcow2_repair *res)
{
    if (!res)
        return;
    rb_qcow2_check_free(&res->found);
    rb_qcow2_check_free(&res->after);
}

int qcow2_refcount_change_order(struct rb_image *img, unsigned order, struct rb_error *err)
{
    struct qcow2_state *s = img->priv;
    struct rb_qcow2_check found;
    struct qcow2_refs r = {0};
    uint64_t dummy = 0;
    int ret;

    ret = qcow2_check_refs(img, &found, &r, err);
    if (ret < 0)
        return ret;
    if (found.corruptions || found.check_errors)
        ret = rb_error_set(err, EIO, "%s: cannot change the refcount width: the image has %"
                           PRIu64 " corruptions (see 'rblock check')", s->name,
                           found.corruptions + found.check_errors);
    rb_qcow2_check_free(&found);
    /* refused before anything is written: every count must fit */
    for (uint64_t i = 0; ret == 0 && i < r.nb; i++)
        if (r.refs[i] > qcow2w_ref_max(order))
            ret = rb_error_set(err, ERANGE, "%s: cluster %" PRIu64 " is referenced %" PRIu32
                               " times, more than %u-bit refcounts hold", s->name, i,
                               r.refs[i], 1u << order);
    if (ret == 0) {
        pthread_mutex_lock(&s->lock);
        ret = qcow2_cache_flush(s->refblock_cache);
        if (ret < 0)
            ret = rb_error_errno(err, -ret, "%s: cannot write refcount blocks", s->name);
        else
            ret = rebuild_refcounts(s, &r, order, err);
        pthread_mutex_unlock(&s->lock);
    }
    free(r.refs);
    r.refs = NULL;
    if (ret < 0)
        return ret;
    /* the old structure is referenced by nothing now: free it */
    ret = qcow2_check_refs(img, &found, &r, err);
    rb_qcow2_check_free(&found);
    if (ret == 0) {
        pthread_mutex_lock(&s->lock);
        ret = fix_in_place(s, &r, RB_QCOW2_FIX_LEAKS, &dummy, &dummy, err);
        pthread_mutex_unlock(&s->lock);
    }
    free(r.refs);
    return ret;
}
