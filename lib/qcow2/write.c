/* SPDX-License-Identifier: MIT */
/*
 * write.c - the qcow2 write path: guest writes, zeroes, discard,
 * compressed clusters, flush; the dirty bit and autoclear bits.
 *
 * Concurrency: guest writes (qcow2_write) run side by side.  Each holds
 * s->data_rw shared, as readers do, and takes s->lock only to look up
 * and to change metadata: data written in place into a cluster that is
 * ours goes out without any lock, and so do the data and copy-on-write
 * of a cluster being allocated, which no L2 entry points at yet (no
 * reader can reach it).  A write that must change a cluster's mapping
 * (allocate it, fill its unallocated subclusters, rewrite a zero
 * cluster) first claims that guest cluster (struct claim, under s->lock):
 * a later write touching the same cluster waits for that claim alone,
 * then looks again (it then finds the cluster allocated and writes in
 * place), so two writes never allocate one guest cluster twice and a
 * write in place never races the copy-on-write of its own bytes.
 * Everything that frees a cluster (discard, zeroing with unmap, a
 * rewrite of a compressed or shared cluster, compressed writes) is
 * exclusive instead: w->wlock and data_rw held exclusive, as before, so
 * that no reader or writer holds a mapping to a cluster that is freed and
 * reused under it.  A guest write that meets such a cluster gives up its
 * shared hold and finishes on the exclusive path.
 * A cluster allocated for a write is on s->inflight from the lock hold
 * that allocates it to the one that links it (qcow2_alloc_inflight), so a
 * check under s->lock in the gap sees it in flight, not leaked.
 *
 * Write ordering (DESIGN.md section 4), every point marked ORDER below:
 *  1. refcount of a new cluster before the L2 entry that references it:
 *     the L2 cache depends on the refcount block cache (set at open);
 *  2. guest data before the L2 entry that points at it:
 *     qcow2_cache_depends_on_flush(l2_cache, data_fd) before the entry;
 *  3. a new L2 table on disk before the L1 entry that points at it;
 *  4. new refcount blocks / tables before what points at them (alloc.c);
 *  5. free in reverse: the L2 change is durable before the refcount drops;
 *  6. the header last: the dirty bit is set before the first change and
 *     cleared only after a full flush at close.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "util/endian.h"
#include "qcow2/qcow2w.h"
#include "rblock/io.h"

#define ALL_ALLOC 0xffffffffull
#define ALL_ZERO 0xffffffff00000000ull

/* A guest cluster whose mapping a write is changing (on the writer's
 * stack; on w->claims under s->lock). */
struct claim {
    uint64_t guest_off; /* start of the cluster */
    struct claim *next;
};

struct qcow2_wstate {
    pthread_mutex_t wlock; /* exclusive writers (those that free clusters) */
    uint8_t *cbuf;         /* a cluster: compression (under wlock) */
    uint8_t *zbuf;         /* a cluster of zeros (read-only) */
    bool header_done;      /* dirty bit / autoclear handled */
    struct claim *claims;  /* under s->lock */
    pthread_cond_t claim_done; /* a claim ended (with s->lock) */
};

static int io_fail(struct qcow2_state *s, int ret, const char *what, uint64_t off,
                   struct rb_error *err)
{
    return rb_error_errno(err, -ret, "%s: %s at 0x%" PRIx64, s->name, what, off);
}

int qcow2_write_open(struct rb_image *img, struct qcow2_state *s, struct rb_error *err)
{
    struct qcow2_wstate *w;
    int ret;

    if (s->open_for_repair)
        return 0; /* rb_qcow2_repair only: no write path state */
    if (s->has_data_file)
        return rb_error_set(err, ENOTSUP, "%s: writing images with an external data "
                            "file is not supported", s->name);
    if (s->h.crypt_method)
        return rb_error_set(err, ENOTSUP, "%s: writing encrypted images is not "
                            "supported", s->name);
    if (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        /* not closed cleanly (lazy refcounts): its refcounts may be too
         * low, so allocating would hand out clusters in use.  As QEMU at
         * a read-write open: repair first (rebuild the refcounts, clear
         * the dirty bit), before anything else is written. */
        struct rb_qcow2_repair r;
        ret = rb_qcow2_repair(img, RB_QCOW2_FIX_ALL, &r, err);
        if (ret < 0)
            return ret;
        if (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY)
            ret = rb_error_set(err, EIO, "%s: could not repair the image left dirty "
                               "(%" PRIu64 " corruptions remain): see 'rblock check'",
                               s->name, r.after.corruptions + r.after.check_errors);
        rb_qcow2_repair_free(&r);
        if (ret < 0)
            return ret;
    }
    w = calloc(1, sizeof(*w));
    if (w) {
        w->cbuf = malloc(s->cluster_bytes);
        w->zbuf = calloc(1, s->cluster_bytes);
    }
    if (!w || !w->cbuf || !w->zbuf) {
        if (w) {
            free(w->cbuf);
            free(w->zbuf);
        }
        free(w);
        return rb_error_set(err, ENOMEM, "%s: out of memory", img->filename);
    }
    pthread_mutex_init(&w->wlock, NULL);
    pthread_cond_init(&w->claim_done, NULL);
    s->w = w;
    s->free_cluster_hint = 0;
    return 0;
}

/* Before the first change (lock held): with lazy refcounts set the dirty
 * bit; flag persistent bitmaps in_use (autoclear bit 0 stays: the
 * directory is kept valid, and a clean close writes them back) and clear the autoclear bits of extensions
 * rblock does not know (qcow2.txt "autoclear_features"). */
static int first_write(struct qcow2_state *s, struct rb_error *err)
{
    uint64_t incompat = s->h.incompatible_features;
    uint64_t autoclear = s->h.autoclear_features & QCOW2_AUTOCLEAR_MASK;
    uint8_t be[8];
    int ret;

    if (s->w->header_done)
        return 0;
    if (s->h.version >= 3) {
        if (s->h.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS)
            incompat |= QCOW2_INCOMPAT_DIRTY;
        /* (spec: the bit without the extension is an error: cleared) */
        /* bitmaps: loaded (they record every change from here on) and
         * flagged in_use on disk until a clean close writes them back; a
         * directory that cannot be parsed makes the caller drop it */
        ret = (autoclear & QCOW2_AUTOCLEAR_BITMAPS) && s->h.nb_bitmaps
                  ? qcow2_bitmaps_begin_writes(s, err) : 0;
        if (ret < 0)
            return ret;
        if (ret == 0)
            autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
        if (autoclear != s->h.autoclear_features) {
            rb_store_be64(be, autoclear);
            ret = qcow2_header_update(s, 88, be, 8, err);
            if (ret < 0)
                return ret;
            s->h.autoclear_features = autoclear;
        }
        if (incompat != s->h.incompatible_features) {
            /* ORDER: the dirty bit is durable before any change */
            rb_store_be64(be, incompat);
            ret = qcow2_header_update(s, 72, be, 8, err);
            if (ret < 0)
                return ret;
            s->h.incompatible_features = incompat;
            s->dirty_bit_set = true;
        }
    }
    s->w->header_done = true;
    return 0;
}

/* The L2 entry and bitmap of the cluster at @guest_off (0 when there is
 * no L2 table).  Lock held. */
static int entry_of(struct qcow2_state *s, uint64_t guest_off, uint64_t *l2e,
                    uint64_t *bitmap, struct rb_error *err)
{
    uint32_t i;
    void *l2;
    int ret = qcow2_l2_get(s, guest_off, &l2, &i, err);

    *l2e = *bitmap = 0;
    if (ret < 0 || !l2)
        return ret;
    *l2e = qcow2_l2_entry_get(s, l2, i);
    *bitmap = qcow2_l2_bitmap_get(s, l2, i);
    qcow2_cache_put(s->l2_cache, l2);
    return 0;
}

/* Allocate an empty L2 table for L1 index @l1i; returns it pinned. */
static int new_l2_table(struct qcow2_state *s, uint64_t l1i, void **l2,
                        struct rb_error *err)
{
    uint64_t off;
    uint8_t be[8];
    int ret = qcow2_alloc_cluster(s, &off, err);

    if (ret < 0)
        return ret;
    ret = qcow2_cache_get_empty(s->l2_cache, off, l2);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: L2 cache", s->name);
    qcow2_cache_mark_dirty(s->l2_cache, *l2);
    /* ORDER: the new table (and the refcount that owns it, through the
     * cache dependency) is on disk before the L1 entry points at it */
    ret = qcow2_cache_flush(s->l2_cache);
    if (ret < 0) {
        qcow2_cache_put(s->l2_cache, *l2);
        return io_fail(s, ret, "cannot write L2 table", off, err);
    }
    s->l1[l1i] = off | QCOW2_OFLAG_COPIED;
    rb_store_be64(be, s->l1[l1i]);
    ret = rb_io_pwrite(s->fd, be, 8, s->h.l1_table_offset + l1i * 8);
    if (ret < 0) {
        /* the entry is not on disk: keep the in-memory L1 as the file has
         * it, or later writes would go to a table nothing on disk points
         * at and be lost even after a successful flush (the new table's
         * cluster leaks instead) */
        s->l1[l1i] = 0;
        qcow2_cache_put(s->l2_cache, *l2);
        return io_fail(s, ret, "cannot write L1 entry", s->h.l1_table_offset + l1i * 8,
                       err);
    }
    return 0;
}

/* Set the L2 entry of the cluster at @guest_off, making its table when
 * needed.  Lock held. */
static int set_entry(struct qcow2_state *s, uint64_t guest_off, uint64_t l2e,
                     uint64_t bitmap, struct rb_error *err)
{
    uint32_t i;
    void *l2;
    int ret = qcow2_l2_get(s, guest_off, &l2, &i, err);

    if (ret == 0 && !l2)
        ret = new_l2_table(s, qcow2_l1_index(s, guest_off), &l2, err);
    else if (ret == 0) /* a table shared with a snapshot is copied first */
        ret = qcow2_l2_cow(s, qcow2_l1_index(s, guest_off), &l2, err);
    if (ret < 0)
        return ret;
    qcow2_l2_entry_set(s, l2, i, l2e);
    qcow2_l2_bitmap_set(s, l2, i, bitmap);
    qcow2_cache_mark_dirty(s->l2_cache, l2);
    qcow2_cache_put(s->l2_cache, l2);
    return 0;
}

/* Lower the refcounts of the clusters an old L2 entry held, whose
 * reference is already gone from disk.  Lock held. */
static int drop_refs(struct qcow2_state *s, uint64_t old, struct rb_error *err)
{
    uint64_t host, bytes;
    int ret;

    if (old & QCOW2_OFLAG_COMPRESSED) {
        qcow2_compressed_parse(old, s->h.cluster_bits, &host, &bytes);
    } else {
        host = old & QCOW2_L2E_OFFSET_MASK;
        bytes = 1;
    }
    if (!host)
        return 0;
    for (uint64_t c = host / s->cluster_bytes; c <= (host + bytes - 1) / s->cluster_bytes;
         c++) {
        ret = qcow2_refcount_add(s, c, -1, err);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* Drop the references an old L2 entry held.  ORDER: free in reverse: the
 * L2 change is made durable first, then the refcounts drop (a crash in
 * between leaks, never double-owns).  Lock held. */
static int release(struct qcow2_state *s, uint64_t old, struct rb_error *err)
{
    int ret;

    if (!(old & (QCOW2_L2E_OFFSET_MASK | QCOW2_OFLAG_COMPRESSED)))
        return 0;
    ret = qcow2_cache_flush(s->l2_cache);
    if (ret < 0)
        return io_fail(s, ret, "cannot write L2 tables", 0, err);
    return drop_refs(s, old, err);
}

/* Subclusters [@a, @b] as a mask of allocation bits. */
static uint64_t sc_mask(unsigned a, unsigned b)
{
    return (b - a == 31 ? ALL_ALLOC : ((1ull << (b - a + 1)) - 1)) << a;
}

/* True when the bytes [@off, @off + @n) of the cluster of @l2e may be
 * written straight into it: ours alone (COPIED), normal, and (extended
 * L2) every subcluster they touch allocated. */
static bool in_place(const struct qcow2_state *s, uint64_t l2e, uint64_t bitmap,
                     uint64_t off, size_t n)
{
    if (!(l2e & QCOW2_L2E_OFFSET_MASK) || !(l2e & QCOW2_OFLAG_COPIED) ||
        (l2e & QCOW2_OFLAG_COMPRESSED))
        return false;
    if (s->extended_l2) {
        uint64_t m = sc_mask(qcow2_sc_index(s, off), qcow2_sc_index(s, off + n - 1));
        return (bitmap & m) == m && !((bitmap >> 32) & m);
    }
    return !(l2e & QCOW2_OFLAG_ZERO);
}

/* Claim the guest cluster at @start, waiting while another write holds
 * it.  Lock held (dropped while waiting).  True when the caller waited:
 * the mapping may have changed, look again. */
static bool claim(struct qcow2_state *s, struct claim *me, uint64_t start)
{
    bool waited = false;

    for (;;) {
        struct claim *c = s->w->claims;

        while (c && c->guest_off != start)
            c = c->next;
        if (!c)
            break;
        pthread_cond_wait(&s->w->claim_done, &s->lock);
        waited = true;
    }
    if (waited)
        return true;
    me->guest_off = start;
    me->next = s->w->claims;
    s->w->claims = me;
    return false;
}

static void unclaim(struct qcow2_state *s, struct claim *me)
{
    struct claim **p = &s->w->claims;

    while (*p && *p != me)
        p = &(*p)->next;
    if (*p)
        *p = me->next;
    pthread_cond_broadcast(&s->w->claim_done);
}

/* Does the guest see zeros in all of [@start, @start + @len) of a cluster
 * with entry @l2e that is not a normal data cluster?  (A backing file is
 * asked; when in doubt, no.) */
static bool reads_zero(struct rb_image *img, const struct qcow2_state *s, uint64_t l2e,
                       uint64_t start, uint64_t len)
{
    struct rb_extent ext;

    if (!s->extended_l2 && (l2e & QCOW2_OFLAG_ZERO))
        return true;
    if (l2e & QCOW2_L2E_OFFSET_MASK)
        return false; /* compressed or shared data */
    if (!img->backing || start >= img->backing->size)
        return true;
    if (rb_image_block_status(img->backing, start, len, &ext, NULL) < 0)
        return false;
    return (ext.flags & RB_BS_ZERO) && ext.length >= len;
}

/*
 * Write @n bytes at @off, inside one cluster.  s->lock not held; either
 * data_rw shared (@excl false) or the exclusive path (wlock, data_rw
 * exclusive).  An owned normal cluster (its touched subclusters
 * allocated) is written in place.  Anything else claims the guest cluster
 * and writes it whole: its current guest contents (copy-on-write from
 * the backing, or zeros) merged with the new bytes, into the same cluster
 * when it is ours, or a new one.  Zeros around the new bytes are not
 * written when the cluster reads as zeros already (a new cluster past the
 * end of the file) or can be zeroed by the file system.  With extended
 * L2 entries only the touched subclusters are written and allocated.
 * Returns 0, -errno with @err set, or -EAGAIN (shared path only) when
 * the cluster holds one that must be freed: redo it on the exclusive path.
 */
static int write_cluster(struct rb_image *img, struct qcow2_state *s, const uint8_t *data,
                         uint64_t off, size_t n, bool excl, struct rb_error *err)
{
    uint64_t c = s->cluster_bytes, start = off - off % c, l2e, bitmap, host;
    uint64_t lo = off, hi = off + n, entry_bitmap = 0;
    uint64_t in = img->size - start < c ? img->size - start : c;
    struct qcow2_inflight fresh = {0};
    struct claim me;
    uint8_t *buf = NULL;
    const uint8_t *content = data;
    bool reuse, zero_around = false;
    int ret;

    pthread_mutex_lock(&s->lock);
    do {
        ret = entry_of(s, start, &l2e, &bitmap, err);
        if (ret < 0) {
            pthread_mutex_unlock(&s->lock);
            return ret;
        }
        if (in_place(s, l2e, bitmap, off, n)) {
            pthread_mutex_unlock(&s->lock);
            host = (l2e & QCOW2_L2E_OFFSET_MASK) + off % c;
            ret = rb_io_pwrite(s->data_fd, data, n, host);
            return ret < 0 ? io_fail(s, ret, "write error", host, err) : 0;
        }
        reuse = (l2e & QCOW2_L2E_OFFSET_MASK) && (l2e & QCOW2_OFLAG_COPIED) &&
                !(l2e & QCOW2_OFLAG_COMPRESSED);
        if (!excl && (l2e & QCOW2_L2E_OFFSET_MASK) && !reuse) {
            pthread_mutex_unlock(&s->lock);
            return -EAGAIN; /* frees the old cluster: exclusive path */
        }
    } while (claim(s, &me, start));
    if (!reuse) {
        /* in flight from here to the L2 update: a check in between counts
         * the new cluster as referenced, not leaked */
        ret = qcow2_alloc_inflight(s, &fresh, err);
        if (ret < 0) {
            unclaim(s, &me);
            pthread_mutex_unlock(&s->lock);
            return ret;
        }
        host = fresh.host_off;
    } else {
        host = l2e & QCOW2_L2E_OFFSET_MASK;
    }
    pthread_mutex_unlock(&s->lock);

    /* What to write: [lo, hi) of the guest cluster, new bytes and what
     * the guest sees around them (nothing else may change: with extended
     * L2 an allocated subcluster may be written in place meanwhile). */
    if (s->extended_l2 && (l2e & QCOW2_L2E_OFFSET_MASK) && !reuse) {
        /* replaces a compressed or shared cluster: all of it */
        lo = start;
        hi = start + c;
        entry_bitmap = ALL_ALLOC;
    } else if (s->extended_l2) {
        uint64_t sb = s->subcluster_bytes;
        unsigned a = qcow2_sc_index(s, off), b = qcow2_sc_index(s, off + n - 1);
        uint64_t alloc = reuse ? bitmap & ALL_ALLOC : 0;

        if (!(alloc & (1ull << a)))
            lo = start + a * sb;
        if (!(alloc & (1ull << b)))
            hi = start + (b + 1) * sb;
        if (hi > start + in)
            hi = start + in;
        entry_bitmap = ((reuse ? bitmap : bitmap & ~ALL_ALLOC) | sc_mask(a, b)) &
                       ~(sc_mask(a, b) << 32);
        /* unallocated subclusters of a new cluster read through as before */
    } else if (n < c) {
        lo = start;
        hi = start + c;
        zero_around = reads_zero(img, s, l2e, start, in);
    }
    if (zero_around && !fresh.fresh_zero) {
        /* the cluster may hold old bytes (reused): zeroed first, by the
         * file system when it can (an unwritten extent) */
        ret = rb_io_zero(s->data_fd, host, c, false);
        if (ret < 0) {
            ret = io_fail(s, ret, "cannot zero cluster", host, err);
            goto out;
        }
    }
    if (zero_around) {
        lo = off;
        hi = off + n;
    } else if (lo != off || hi != off + n) {
        buf = malloc(c);
        if (!buf) {
            ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
            goto out;
        }
        /* the guest's view around the new bytes (copy-on-write source);
         * nobody else changes these bytes: the cluster is claimed */
        if (lo < off)
            ret = qcow2_read(img, buf, lo, (size_t)(off - lo), err);
        if (ret == 0 && hi > off + n) {
            uint64_t have = start + in > off + n ? start + in - (off + n) : 0;
            uint64_t want = hi - (off + n);
            if (have > want)
                have = want;
            if (have)
                ret = qcow2_read(img, buf + (off + n - lo), off + n, (size_t)have, err);
            memset(buf + (off + n - lo) + have, 0, (size_t)(want - have));
        }
        if (ret < 0)
            goto out;
        memcpy(buf + (off - lo), data, n);
        content = buf;
    }
    /* nothing points at a new cluster yet, and a claimed one is written
     * by us alone: written without s->lock */
    ret = rb_io_pwrite(s->data_fd, content, (size_t)(hi - lo), host + (lo - start));
    if (ret < 0)
        ret = io_fail(s, ret, "write error", host + (lo - start), err);
out:
    pthread_mutex_lock(&s->lock);
    if (ret == 0) {
        /* ORDER: the data is durable before the L2 entry that points at it */
        qcow2_cache_depends_on_flush(s->l2_cache, s->data_fd);
        ret = set_entry(s, start, host | QCOW2_OFLAG_COPIED, entry_bitmap, err);
    }
    if (!reuse) {
        /* linked in this lock hold, or (a failure) never */
        qcow2_inflight_end(s, &fresh, ret == 0);
        if (ret == 0)
            ret = release(s, l2e, err);
    }
    unclaim(s, &me);
    pthread_mutex_unlock(&s->lock);
    free(buf);
    return ret;
}

static int do_flush(struct qcow2_state *s, struct rb_error *err)
{
    int ret;

    pthread_mutex_lock(&s->lock);
    /* refcount blocks first, then L2 tables (the cache does both in that
     * order), then everything on the file: L1, tables, data */
    ret = qcow2_cache_write(s->refblock_cache);
    if (ret == 0)
        ret = qcow2_cache_write(s->l2_cache);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0)
        return io_fail(s, ret, "cannot write metadata", 0, err);
    if (s->data_fd != s->fd && (ret = rb_io_sync(s->data_fd)) < 0)
        return io_fail(s, ret, "sync failed", 0, err);
    if ((ret = rb_io_sync(s->fd)) < 0)
        return io_fail(s, ret, "sync failed", 0, err);
    return 0;
}

/* Take the writer lock after the first-write header update, and record
 * the guest range [@off, @off + @len) about to change in every enabled
 * bitmap (qemu marks a request's range whatever its outcome). */
static int begin(struct qcow2_state *s, uint64_t off, uint64_t len, struct rb_error *err)
{
    int ret;

    pthread_mutex_lock(&s->w->wlock);
    /* exclusive against readers: a write may free a cluster (discard,
     * rewrite of a compressed or shared one) and reuse it at once, and a
     * reader must not have mapped it before and read it after */
    pthread_rwlock_wrlock(&s->data_rw);
    pthread_mutex_lock(&s->lock);
    ret = first_write(s, err);
    if (ret == 0)
        qcow2_bitmaps_mark(s, off, len);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0) {
        pthread_rwlock_unlock(&s->data_rw);
        pthread_mutex_unlock(&s->w->wlock);
    }
    return ret;
}

static int end(struct qcow2_state *s, int ret, unsigned flags, struct rb_error *err)
{
    /* the mapping is settled: readers may go on while FUA syncs */
    pthread_rwlock_unlock(&s->data_rw);
    if (ret == 0 && (flags & RB_WRITE_FUA))
        ret = do_flush(s, err);
    pthread_mutex_unlock(&s->w->wlock);
    return ret;
}

/* The shared path's start: data_rw shared (as readers), then the
 * first-write header update and the bitmap marks under s->lock. */
static int begin_shared(struct qcow2_state *s, uint64_t off, uint64_t len,
                        struct rb_error *err)
{
    int ret;

    pthread_rwlock_rdlock(&s->data_rw);
    pthread_mutex_lock(&s->lock);
    ret = first_write(s, err);
    if (ret == 0)
        qcow2_bitmaps_mark(s, off, len);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0)
        pthread_rwlock_unlock(&s->data_rw);
    return ret;
}

int qcow2_write(struct rb_image *img, const void *buf, uint64_t off, size_t len,
                unsigned flags, struct rb_error *err)
{
    struct qcow2_state *s = qcow2_state_of(img);
    const uint8_t *p = buf;
    int ret = begin_shared(s, off, len, err);

    if (ret < 0)
        return ret;
    while (ret == 0 && len > 0) {
        size_t n = s->cluster_bytes - off % s->cluster_bytes;
        if (n > len)
            n = len;
        ret = write_cluster(img, s, p, off, n, false, err);
        if (ret == -EAGAIN)
            break;
        p += n;
        off += n;
        len -= n;
    }
    pthread_rwlock_unlock(&s->data_rw);
    if (ret == -EAGAIN) {
        /* a cluster to free: the rest of the request exclusive */
        ret = begin(s, off, len, err);
        if (ret < 0)
            return ret;
        while (ret == 0 && len > 0) {
            size_t n = s->cluster_bytes - off % s->cluster_bytes;
            if (n > len)
                n = len;
            ret = write_cluster(img, s, p, off, n, true, err);
            p += n;
            off += n;
            len -= n;
        }
        return end(s, ret, flags, err);
    }
    if (ret == 0 && (flags & RB_WRITE_FUA))
        ret = do_flush(s, err);
    return ret;
}

/* Make the whole cluster at @start read as zeros without writing data:
 * the v3 zero flag (or, with extended L2, all subcluster zero bits),
 * keeping an owned allocation unless @unmap.  Wlock held. */
static int zero_cluster(struct rb_image *img, struct qcow2_state *s, uint64_t start,
                        bool unmap, struct rb_error *err)
{
    uint64_t l2e, bitmap, entry;
    bool keep;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = entry_of(s, start, &l2e, &bitmap, err);
    if (ret < 0 || (l2e == 0 && bitmap == 0 && !img->backing))
        goto out; /* unallocated without a backing file: reads zeros */
    keep = !unmap && (l2e & QCOW2_L2E_OFFSET_MASK) && (l2e & QCOW2_OFLAG_COPIED) &&
           !(l2e & QCOW2_OFLAG_COMPRESSED);
    entry = keep ? (l2e & QCOW2_L2E_OFFSET_MASK) | QCOW2_OFLAG_COPIED : 0;
    if (!s->extended_l2)
        entry |= QCOW2_OFLAG_ZERO;
    ret = set_entry(s, start, entry, s->extended_l2 ? ALL_ZERO : 0, err);
    if (ret == 0 && !keep)
        ret = release(s, l2e, err);
out:
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_write_zeroes(struct rb_image *img, uint64_t off, uint64_t len, unsigned flags,
                       struct rb_error *err)
{
    struct qcow2_state *s = qcow2_state_of(img);
    uint64_t c = s->cluster_bytes;
    bool v3 = s->h.version >= 3;
    int ret;

    if (!v3 && (flags & RB_ZERO_FAST))
        return -ENOTSUP; /* v2 has no zero flag: zeroing writes data */
    ret = begin(s, off, len, err);
    if (ret < 0)
        return ret;
    while (ret == 0 && len > 0) {
        uint64_t n = c - off % c;
        if (n > len)
            n = len;
        /* a whole cluster (or the image's last, partial one) */
        bool whole = off % c == 0 && (n == c || off + n == img->size);
        if (v3 && whole) {
            ret = zero_cluster(img, s, off, flags & RB_ZERO_MAY_UNMAP, err);
        } else {
            uint64_t l2e = 0, bitmap = 0;
            if (whole && !img->backing) { /* v2: nothing to do if unallocated */
                pthread_mutex_lock(&s->lock);
                ret = entry_of(s, off, &l2e, &bitmap, err);
                pthread_mutex_unlock(&s->lock);
            }
            if (ret == 0 && (!whole || img->backing || l2e || bitmap))
                ret = write_cluster(img, s, s->w->zbuf, off, (size_t)n, true, err);
        }
        off += n;
        len -= n;
    }
    return end(s, ret, flags, err);
}

/* Give the space of the clusters a discard freed (refcount now 0; none
 * is referenced any more, durably) back to the file system, in runs, as
 * QEMU's discard of a qcow2 cluster is passed down.  Best effort: a
 * cluster left as it was is only space.  Lock held. */
static void punch_freed(struct qcow2_state *s, const uint64_t *old, size_t n)
{
    uint64_t run_off = 0, run_len = 0;

    for (size_t i = 0; i <= n; i++) {
        uint64_t host = 0, rc = 1;

        if (i < n && !(old[i] & QCOW2_OFLAG_COMPRESSED)) {
            host = old[i] & QCOW2_L2E_OFFSET_MASK;
            if (host && qcow2_refcount_get(s, host / s->cluster_bytes, &rc, NULL) < 0)
                rc = 1;
        }
        if (host && rc == 0 && run_len && host == run_off + run_len) {
            run_len += s->cluster_bytes;
            continue;
        }
        if (run_len)
            (void)rb_io_punch(s->fd, run_off, run_len);
        run_len = 0;
        if (host && rc == 0) {
            run_off = host;
            run_len = s->cluster_bytes;
        }
    }
}

/* Clusters a discard unlinks before it syncs once and frees them (the
 * old entries are kept meanwhile: 128 KiB). */
#define TRIM_BATCH 16384

int qcow2_trim(struct rb_image *img, uint64_t off, uint64_t len, struct rb_error *err)
{
    struct qcow2_state *s = qcow2_state_of(img);
    uint64_t c = s->cluster_bytes, pos = (off + c - 1) / c * c;
    uint64_t *old = malloc(TRIM_BATCH * sizeof(*old));
    int ret;

    if (!old)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    ret = begin(s, off, len, err);
    if (ret < 0) {
        free(old);
        return ret;
    }
    /* whole clusters only (discard is advisory); afterwards the range
     * reads as the backing file, or zeros.  In batches, in one lock hold
     * each (a check never sees an unlinked cluster still counted): the
     * entries are cleared, made durable with one sync, and only then are
     * the refcounts lowered (ORDER: free in reverse, as release) */
    while (ret == 0 && pos < off + len) {
        size_t n = 0;

        pthread_mutex_lock(&s->lock);
        for (; ret == 0 && n < TRIM_BATCH && pos < off + len; pos += c) {
            uint64_t l2e, bitmap;
            if (pos + c > off + len && off + len != img->size) {
                pos = off + len;
                break;
            }
            ret = entry_of(s, pos, &l2e, &bitmap, err);
            if (ret == 0 && (l2e || bitmap)) {
                ret = set_entry(s, pos, 0, 0, err);
                if (ret == 0 && (l2e & (QCOW2_L2E_OFFSET_MASK | QCOW2_OFLAG_COMPRESSED)))
                    old[n++] = l2e;
            }
        }
        if (n) {
            int r2 = qcow2_cache_flush(s->l2_cache);
            if (r2 < 0) {
                if (ret == 0)
                    ret = io_fail(s, r2, "cannot write L2 tables", 0, err);
            } else {
                /* entries set before a failure are durable: free theirs */
                for (size_t i = 0; i < n; i++) {
                    r2 = drop_refs(s, old[i], ret == 0 ? err : NULL);
                    if (r2 < 0 && ret == 0)
                        ret = r2;
                }
                if (ret == 0)
                    punch_freed(s, old, n);
            }
        }
        pthread_mutex_unlock(&s->lock);
    }
    free(old);
    return end(s, ret, 0, err);
}

int qcow2_flush(struct rb_image *img, struct rb_error *err)
{
    struct qcow2_state *s = qcow2_state_of(img);
    int ret;

    pthread_mutex_lock(&s->w->wlock);
    ret = do_flush(s, err);
    pthread_mutex_unlock(&s->w->wlock);
    return ret;
}

int qcow2_write_compressed(struct rb_image *img, const void *buf, uint64_t off,
                           size_t len, struct rb_error *err)
{
    struct qcow2_state *s = qcow2_state_of(img);
    uint64_t c = s->cluster_bytes, l2e, bitmap, host, nb, entry;
    struct qcow2_inflight fresh;
    const uint8_t *src = buf;
    long clen;
    int ret;

    if (off % c || len > c || (len < c && off + len != img->size))
        return rb_error_set(err, EINVAL, "%s: compressed write at %" PRIu64 " of %zu "
                            "bytes is not one cluster", s->name, off, len);
    ret = begin(s, off, len, err);
    if (ret < 0)
        return ret;
    pthread_mutex_lock(&s->lock);
    ret = entry_of(s, off, &l2e, &bitmap, err);
    pthread_mutex_unlock(&s->lock);
    if (ret == 0 && len < c) {
        memcpy(s->w->cbuf, buf, len);
        memset(s->w->cbuf + len, 0, c - len);
        src = s->w->cbuf;
    }
    clen = 0;
    if (ret == 0 && l2e == 0 && bitmap == 0) {
        uint8_t *out = malloc(c);
        if (!out) {
            ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        } else {
            clen = qcow2_compress(s->h.compression_type, src, c, out, c - 1);
            if (clen > 0) {
                bool registered;

                /* in flight until the L2 update, as in write_cluster */
                pthread_mutex_lock(&s->lock);
                ret = qcow2_alloc_inflight(s, &fresh, err);
                pthread_mutex_unlock(&s->lock);
                registered = ret == 0;
                if (ret == 0) {
                    host = fresh.host_off;
                    ret = rb_io_pwrite(s->fd, out, (size_t)clen, host);
                    if (ret < 0)
                        ret = io_fail(s, ret, "write error", host, err);
                }
                if (registered) {
                    pthread_mutex_lock(&s->lock);
                    if (ret == 0) {
                        /* qcow2.txt "Compressed Clusters Descriptor" */
                        nb = (host + (uint64_t)clen - 1) / 512 - host / 512;
                        entry = QCOW2_OFLAG_COMPRESSED |
                                nb << (62 - (s->h.cluster_bits - 8)) | host;
                        /* ORDER: data before the L2 entry */
                        qcow2_cache_depends_on_flush(s->l2_cache, s->fd);
                        ret = set_entry(s, off, entry, 0, err);
                    }
                    /* linked in this lock hold, or given back */
                    qcow2_inflight_end(s, &fresh, ret == 0);
                    pthread_mutex_unlock(&s->lock);
                }
            } else if (clen < 0) {
                ret = rb_error_set(err, (int)-clen, "%s: compression failed", s->name);
            }
            free(out);
        }
    }
    /* allocated already, or does not shrink: a plain write */
    if (ret == 0 && clen == 0)
        ret = write_cluster(img, s, buf, off, len, true, err);
    return end(s, ret, 0, err);
}

void qcow2_write_close(struct rb_image *img, struct qcow2_state *s)
{
    struct qcow2_wstate *w = s->w;
    uint8_t be[8];

    if (!w)
        return;
    /* a clean close writes the bitmaps back (in_use cleared) once the
     * data they describe is durable; ORDER: the dirty bit is cleared only
     * once everything is durable */
    bool durable = s->w->header_done && do_flush(s, NULL) == 0;
    if (durable && s->bitmaps_flagged) {
        pthread_mutex_lock(&s->lock);
        (void)qcow2_bitmaps_close(s, NULL);
        pthread_mutex_unlock(&s->lock);
        /* the write-back's frees (refcounts) durable too; without it
         * nothing changed since the flush above: no second sync */
        durable = do_flush(s, NULL) == 0;
    }
    if (durable && s->dirty_bit_set) {
        rb_store_be64(be, s->h.incompatible_features & ~QCOW2_INCOMPAT_DIRTY);
        if (qcow2_header_update(s, 72, be, 8, NULL) == 0 && rb_io_sync(s->fd) == 0) {
            s->h.incompatible_features &= ~QCOW2_INCOMPAT_DIRTY;
            s->dirty_bit_set = false;
        }
    }
    pthread_mutex_destroy(&w->wlock);
    pthread_cond_destroy(&w->claim_done);
    free(w->cbuf);
    free(w->zbuf);
    free(w);
    s->w = NULL;
}
