/* SPDX-License-Identifier: MIT */
/*
 * check.c - consistency check of a qcow2 image, as qemu-img check does it:
 * count every reference to every host cluster (header, L1 tables of the
 * image and its snapshots, L2 tables, data and compressed clusters,
 * refcount table and blocks, snapshot table, bitmap directory and
 * tables), then compare with the stored refcounts:
 *   refcount > references: a leak (wasted space, harmless);
 *   refcount < references: a corruption (two owners of one cluster, or an
 *   overlap of metadata and data).
 * Also reported as corruptions: unaligned or out-of-file table offsets,
 * invalid extended L2 bitmaps, and the COPIED flag not matching
 * "refcount == 1" in the active tables.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "util/endian.h"
#include "rblock/io.h"
#include "rblock/qcow2.h"

struct ctx {
    struct qcow2_state *s;
    struct rb_qcow2_check *res;
    uint32_t *refs;     /* references per host cluster */
    uint64_t nb;        /* clusters in refs */
    uint64_t l2_visits; /* L2 entries walked, capped: a crafted image (many
                           snapshots sharing huge L1 tables) must not hang us */
    bool capped;
    uint8_t *bad_refblock; /* per reftable entry: unusable refcount block */
    int err;            /* first fatal error (ENOMEM) */
    /* windowed passes (qcow2_check_walk): refs counts the clusters
     * [lo, lo + win) only; a later pass repeats the walk quietly (its
     * problems and counters were had in pass 0) to count its window */
    uint64_t lo, win;
    bool quiet;
    uint64_t highest;   /* last cluster referenced or counted, +1 (0: none) */
    const struct qcow2_check_observer *obs;
};

#define MAX_L2_VISITS (1ull << 32)

static void problem(struct ctx *c, enum rb_qcow2_problem_kind kind, uint64_t host_off,
                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void problem(struct ctx *c, enum rb_qcow2_problem_kind kind, uint64_t host_off,
                    const char *fmt, ...)
{
    struct rb_qcow2_check *r = c->res;
    struct rb_qcow2_problem *p;
    va_list ap;

    if (c->quiet)
        return;
    if (kind == RB_QCOW2_LEAK)
        r->leaks++;
    else
        r->corruptions++;
    if (r->nb_problems >= RB_QCOW2_MAX_PROBLEMS) {
        r->problems_dropped++;
        return;
    }
    if (r->nb_problems % 64 == 0) {
        p = realloc(r->problems, (r->nb_problems + 64) * sizeof(*p));
        if (!p) {
            r->problems_dropped++;
            return;
        }
        r->problems = p;
    }
    p = &r->problems[r->nb_problems++];
    p->kind = kind;
    p->host_off = host_off;
    va_start(ap, fmt);
    vsnprintf(p->msg, sizeof(p->msg), fmt, ap);
    va_end(ap);
}

/* Count one reference to every cluster of [off, off + len). */
static void inc_refs(struct ctx *c, uint64_t off, uint64_t len, const char *what,
                     enum rb_qcow2_host_class cls)
{
    uint64_t first, last, end;

    if (len == 0)
        return;
    /* qemu: the last cluster may be semi-allocated, so a reference may end
     * past the end of the file, but by less than one cluster */
    if (!rb_add_ok(off, len - 1, &end) || end + 1 >= c->s->file_size + c->s->cluster_bytes) {
        problem(c, RB_QCOW2_CORRUPTION, off, "%s at 0x%" PRIx64 " (%" PRIu64 " bytes) "
                "exceeds the end of the file (size %" PRIu64 ") by one cluster or more",
                what, off, len, c->s->file_size);
        return;
    }
    first = off / c->s->cluster_bytes;
    last = end / c->s->cluster_bytes;
    if (c->obs && !c->quiet)
        c->obs->ref(c->obs->opaque, off, len, cls);
    if (last >= c->nb) {
        /* within the semi-allocated last cluster: grow by one (the window
         * too when it is the last one) */
        uint64_t n = last + 1;
        if (c->lo + c->win >= c->nb) {
            uint32_t *r = realloc(c->refs, (n - c->lo) * sizeof(*r));
            if (!r) {
                c->err = ENOMEM;
                return;
            }
            memset(r + c->win, 0, (n - c->lo - c->win) * sizeof(*r));
            c->refs = r;
            c->win = n - c->lo;
        }
        c->nb = n;
    }
    if (first < c->lo)
        first = c->lo;
    if (last >= c->lo + c->win)
        last = c->lo + c->win - 1;
    for (uint64_t i = first; i <= last && i >= c->lo; i++) {
        if (c->refs[i - c->lo] < UINT32_MAX)
            c->refs[i - c->lo]++;
    }
}

/* Count one reference to every cluster of [off, off + len). */


/* The stored refcount of @cluster; false when it cannot be read (its
 * refcount block is unusable: reported once by check_reftable). */
static bool refcount_of(struct ctx *c, uint64_t cluster, uint64_t *rc)
{
    uint64_t ri = cluster / c->s->refblock_entries;

    *rc = 0;
    if (ri < c->s->reftable_entries && c->bad_refblock[ri])
        return c->bad_refblock[ri] == 2; /* past the end: reads as zeros */
    return qcow2_refcount_get(c->s, cluster, rc, NULL) == 0;
}

/* Is a table of @bytes at @off aligned and inside the file? */
static bool table_ok(struct ctx *c, const char *what, uint64_t off, uint64_t bytes)
{
    uint64_t end;

    if (off & (c->s->cluster_bytes - 1)) {
        problem(c, RB_QCOW2_CORRUPTION, off, "%s at 0x%" PRIx64 " is not cluster-aligned "
                "(cluster size %" PRIu32 ")", what, off, c->s->cluster_bytes);
        return false;
    }
    if (!rb_add_ok(off, bytes, &end) || end > c->s->file_size) {
        problem(c, RB_QCOW2_CORRUPTION, off, "%s at 0x%" PRIx64 " is past the end of "
                "the file (size %" PRIu64 ")", what, off, c->s->file_size);
        return false;
    }
    return true;
}

/* spec: bits 0..31 of the extended L2 bitmap say "allocated" */
#define ALL_ALLOC 0xffffffffull

/* Walk one L2 table as qemu's check_refcounts_l2 does, counting the
 * references of its clusters.  @active: the image's own L1 (fragmentation
 * statistics are counted there only). */
static void check_l2(struct ctx *c, uint64_t l2_off, bool active)
{
    struct qcow2_state *s = c->s;
    uint64_t next_contiguous = 0;
    void *l2;

    c->l2_visits += s->l2_entries;
    if (c->l2_visits > MAX_L2_VISITS) {
        if (!c->capped)
            c->res->check_errors++;
        c->capped = true;
        return;
    }
    /* an unaligned or out-of-file table was reported by the caller; read
     * what is there (zeros past the end), as qemu does */
    if (qcow2_cache_get(s->l2_cache, l2_off, &l2) < 0) {
        c->res->check_errors++;
        return;
    }
    for (uint32_t i = 0; i < s->l2_entries; i++) {
        uint64_t e = qcow2_l2_entry_get(s, l2, i);
        uint64_t b = qcow2_l2_bitmap_get(s, l2, i);
        uint64_t host = e & QCOW2_L2E_OFFSET_MASK;

        if (!(e & QCOW2_OFLAG_COMPRESSED) && (e & QCOW2_L2E_STD_RESERVED_MASK))
            problem(c, RB_QCOW2_CORRUPTION, host, "entry %" PRIu32 " of L2 table at 0x%"
                    PRIx64 " has reserved bits set (0x%016" PRIx64 ")", i, l2_off, e);
        if (e & QCOW2_OFLAG_COMPRESSED) {
            uint64_t coff, cbytes;
            qcow2_compressed_parse(e, s->h.cluster_bits, &coff, &cbytes);
            if (e & QCOW2_OFLAG_COPIED)
                problem(c, RB_QCOW2_CORRUPTION, coff, "compressed cluster at 0x%" PRIx64
                        " (entry %" PRIu32 " of L2 table at 0x%" PRIx64 ") has the "
                        "COPIED flag set", coff, i, l2_off);
            if (s->has_data_file) {
                problem(c, RB_QCOW2_CORRUPTION, coff, "compressed cluster in an image "
                        "with an external data file (entry %" PRIu32 " of L2 table at "
                        "0x%" PRIx64 ")", i, l2_off);
                continue;
            }
            if (b) {
                problem(c, RB_QCOW2_CORRUPTION, coff, "compressed cluster at 0x%" PRIx64
                        " (entry %" PRIu32 " of L2 table at 0x%" PRIx64 ") has a "
                        "non-zero subcluster bitmap 0x%016" PRIx64, coff, i, l2_off, b);
                continue;
            }
            inc_refs(c, coff, cbytes, "compressed cluster", RB_QCOW2_HOST_COMPRESSED);
            if (active) {
                c->res->allocated_clusters++;
                c->res->compressed_clusters++;
                c->res->fragmented_clusters++; /* fragmented by nature (qemu) */
            }
            continue;
        }
        /* cluster types as qemu's qcow2_get_cluster_type */
        if (!s->extended_l2 && (e & QCOW2_OFLAG_ZERO) && !host)
            continue; /* zero, no host cluster */
        if (!host && !(s->has_data_file && (e & QCOW2_OFLAG_COPIED))) {
            if (s->extended_l2 && (b & ALL_ALLOC))
                problem(c, RB_QCOW2_CORRUPTION, UINT64_MAX, "unallocated entry %" PRIu32
                        " of L2 table at 0x%" PRIx64 " has allocated subclusters "
                        "(bitmap 0x%016" PRIx64 ")", i, l2_off, b);
            continue;
        }
        if (s->extended_l2 && ((b >> 32) & b))
            problem(c, RB_QCOW2_CORRUPTION, host, "cluster at 0x%" PRIx64 " (entry %"
                    PRIu32 " of L2 table at 0x%" PRIx64 ") has subclusters both "
                    "allocated and zero (bitmap 0x%016" PRIx64 ")", host, i, l2_off, b);
        if (host & (s->cluster_bytes - 1))
            problem(c, RB_QCOW2_CORRUPTION, host, "cluster at 0x%" PRIx64 " (entry %" PRIu32
                    " of L2 table at 0x%" PRIx64 ") is not cluster-aligned (cluster size %"
                    PRIu32 ")", host, i, l2_off, s->cluster_bytes);
        if (active) {
            c->res->allocated_clusters++;
            if (next_contiguous && host != next_contiguous)
                c->res->fragmented_clusters++;
            next_contiguous = host + s->cluster_bytes;
        }
        if (!s->has_data_file) /* data file clusters are not refcounted (spec) */
            inc_refs(c, host, s->cluster_bytes, "data cluster", RB_QCOW2_HOST_DATA);
    }
    qcow2_cache_put(s->l2_cache, l2);
}

/* Walk an L1 table (read from the file when @l1 is NULL) as qemu's
 * check_refcounts_l1. */
static void check_l1(struct ctx *c, uint64_t l1_off, uint32_t l1_size, const uint64_t *l1,
                     bool active, const char *name)
{
    struct qcow2_state *s = c->s;
    uint64_t *tab = NULL;

    if (!l1_size)
        return;
    inc_refs(c, l1_off, (uint64_t)l1_size * 8, name,
             active ? RB_QCOW2_HOST_L1 : RB_QCOW2_HOST_SNAPSHOT);
    if (!l1) {
        uint8_t *raw = malloc((size_t)l1_size * 8);
        if (!raw || rb_io_pread(s->fd, raw, (size_t)l1_size * 8, l1_off) < 0) {
            free(raw);
            c->res->check_errors++;
            return;
        }
        tab = (uint64_t *)raw;
        rb_load_be64_array(tab, l1_size);
        l1 = tab;
    }
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2_off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        char what[96];

        if (l1[i] & QCOW2_L1E_RESERVED_MASK)
            problem(c, RB_QCOW2_CORRUPTION, l2_off, "entry %" PRIu32 " of the %s has "
                    "reserved bits set (0x%016" PRIx64 ")", i, name, l1[i]);
        if (!l1[i])
            continue; /* qemu walks any non-zero entry, even at offset 0 */
        snprintf(what, sizeof(what), "L2 table (%s index %" PRIu32 ")", name, i);
        inc_refs(c, l2_off, s->cluster_bytes, what, RB_QCOW2_HOST_L2);
        if (l2_off & (s->cluster_bytes - 1))
            problem(c, RB_QCOW2_CORRUPTION, l2_off, "%s at 0x%" PRIx64 " is not "
                    "cluster-aligned (cluster size %" PRIu32 ")", what, l2_off,
                    s->cluster_bytes);
        check_l2(c, l2_off, active);
    }
    free(tab);
}

/* As qemu's check_refblocks. */
static void check_reftable(struct ctx *c)
{
    struct qcow2_state *s = c->s;

    inc_refs(c, s->h.refcount_table_offset,
             (uint64_t)s->h.refcount_table_clusters * s->cluster_bytes, "refcount table",
             RB_QCOW2_HOST_REFTABLE);
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        uint64_t off = s->reftable[i] & QCOW2_REFT_OFFSET_MASK;

        if (s->reftable[i] & ~QCOW2_REFT_OFFSET_MASK) {
            problem(c, RB_QCOW2_CORRUPTION, off, "refcount table entry %" PRIu64 " has "
                    "reserved bits set (0x%016" PRIx64 ")", i, s->reftable[i]);
            continue;
        }
        if (off & (s->cluster_bytes - 1)) {
            /* unreadable: its clusters' refcounts are check errors */
            problem(c, RB_QCOW2_CORRUPTION, off, "refcount block %" PRIu64 " at 0x%"
                    PRIx64 " is not cluster-aligned (cluster size %" PRIu32 ")", i, off,
                    s->cluster_bytes);
            c->bad_refblock[i] = 1;
            continue;
        }
        if (off / s->cluster_bytes >= c->nb) {
            /* past the end of the file: its refcounts read as zeros */
            problem(c, RB_QCOW2_CORRUPTION, off, "refcount block %" PRIu64 " at 0x%"
                    PRIx64 " is past the end of the file (size %" PRIu64 ")", i, off,
                    s->file_size);
            c->bad_refblock[i] = 2;
            continue;
        }
        if (off) {
            inc_refs(c, off, s->cluster_bytes, "refcount block", RB_QCOW2_HOST_REFBLOCK);
            uint64_t ci = off / s->cluster_bytes;
            /* judged in the pass whose window holds it */
            if (ci >= c->lo && ci - c->lo < c->win && c->refs[ci - c->lo] != 1) {
                bool quiet = c->quiet;
                c->quiet = false;
                problem(c, RB_QCOW2_CORRUPTION, off, "refcount block %" PRIu64 " at 0x%"
                        PRIx64 " is referenced %" PRIu32 " times", i, off,
                        c->refs[ci - c->lo]);
                c->quiet = quiet;
            }
        }
    }
}

static int count_bitmap_data(struct qcow2_state *s, uint64_t off, void *opaque)
{
    struct ctx *c = opaque;

    if (table_ok(c, "bitmap data cluster", off, s->cluster_bytes))
        inc_refs(c, off, s->cluster_bytes, "bitmap data cluster",
                 RB_QCOW2_HOST_BITMAP_DATA);
    return 0;
}

/* spec "Bitmaps": the directory, each bitmap table and its data clusters
 * (parsed by bitmap.c) */
static void check_bitmaps(struct ctx *c)
{
    struct qcow2_state *s = c->s;
    struct qcow2_bitmap_list l;
    struct rb_error e = {0};
    int ret;

    if (!s->h.nb_bitmaps || !table_ok(c, "bitmap directory", s->h.bitmap_directory_offset,
                                      s->h.bitmap_directory_size))
        return;
    inc_refs(c, s->h.bitmap_directory_offset, s->h.bitmap_directory_size,
             "bitmap directory", RB_QCOW2_HOST_BITMAP_TABLES);
    ret = qcow2_bitmap_dir_read(s, &l, &e);
    if (ret == -EINVAL) {
        problem(c, RB_QCOW2_CORRUPTION, s->h.bitmap_directory_offset,
                "bitmap directory at 0x%" PRIx64 " is too short for %" PRIu32
                " bitmaps", s->h.bitmap_directory_offset, s->h.nb_bitmaps);
        return;
    }
    if (ret < 0) {
        c->res->check_errors++;
        return;
    }
    for (uint32_t n = 0; n < l.nb; n++) {
        uint64_t toff = l.b[n].table_off, tsize = l.b[n].table_size;

        if (tsize && table_ok(c, "bitmap table", toff, tsize * 8)) {
            inc_refs(c, toff, tsize * 8, "bitmap table", RB_QCOW2_HOST_BITMAP_TABLES);
            e = (struct rb_error){0};
            ret = qcow2_bitmap_table_walk(s, toff, (uint32_t)tsize, count_bitmap_data, c,
                                          &e);
            if (ret == -EINVAL) {
                /* the other problems do not repeat the file name */
                size_t n = strlen(s->name);
                const char *m = strncmp(e.msg, s->name, n) == 0 && e.msg[n] == ':'
                                    ? e.msg + n + 2 : e.msg;
                problem(c, RB_QCOW2_CORRUPTION, toff, "%s", m);
            }
            else if (ret < 0)
                c->res->check_errors++;
        }
    }
    qcow2_bitmap_list_free(&l);
}

/* qemu's check_oflag_copied: COPIED must mean "refcount == 1" */
static void check_copied(struct ctx *c)
{
    struct qcow2_state *s = c->s;

    for (uint32_t i = 0; i < s->h.l1_size; i++) {
        uint64_t l2_off = s->l1[i] & QCOW2_L1E_OFFSET_MASK;
        uint64_t rc;
        void *l2;

        if (!l2_off)
            continue;
        /* as qemu: a refcount that cannot be read is skipped silently */
        if (refcount_of(c, l2_off / s->cluster_bytes, &rc) &&
            (rc == 1) != !!(s->l1[i] & QCOW2_OFLAG_COPIED))
            problem(c, RB_QCOW2_CORRUPTION, l2_off, "L2 table at 0x%" PRIx64 " (L1 index %"
                    PRIu32 ") has refcount %" PRIu64 " but the COPIED flag %s", l2_off, i,
                    rc, (s->l1[i] & QCOW2_OFLAG_COPIED) ? "set" : "clear");
        if (qcow2_cache_get(s->l2_cache, l2_off, &l2) < 0) {
            c->res->check_errors++;
            continue;
        }
        for (uint32_t j = 0; j < s->l2_entries; j++) {
            uint64_t e = qcow2_l2_entry_get(s, l2, j);
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK;

            if (!qcow2_l2e_copied_applies(s, e))
                continue;
            if (s->has_data_file)
                rc = 1; /* data file clusters are not refcounted */
            else if (!refcount_of(c, host / s->cluster_bytes, &rc))
                continue;
            if ((rc == 1) != !!(e & QCOW2_OFLAG_COPIED))
                problem(c, RB_QCOW2_CORRUPTION, host, "data cluster at 0x%" PRIx64
                        " (entry %" PRIu32 " of L2 table at 0x%" PRIx64 ") has refcount %"
                        PRIu64 " but the COPIED flag %s", host, j, l2_off, rc,
                        (e & QCOW2_OFLAG_COPIED) ? "set" : "clear");
        }
        qcow2_cache_put(s->l2_cache, l2);
    }
}

/* Compare references and refcounts of the clusters of the window. */
static void compare(struct ctx *c)
{
    struct qcow2_state *s = c->s;

    for (uint64_t i = c->lo; i < c->lo + c->win; i++) {
        uint64_t rc, refs = c->refs[i - c->lo];
        uint64_t off = i * s->cluster_bytes;

        if (!refcount_of(c, i, &rc)) {
            c->res->check_errors++; /* qemu: "Can't get refcount for cluster" */
            continue;
        }
        if (rc || refs) /* as qemu: referenced or counted */
            c->highest = i + 1;
        if (c->obs && !refs)
            c->obs->ref(c->obs->opaque, off, s->cluster_bytes,
                        rc ? RB_QCOW2_HOST_LEAKED : RB_QCOW2_HOST_FREE);
        if (rc > refs)
            problem(c, RB_QCOW2_LEAK, off, "leaked cluster %" PRIu64 " at 0x%" PRIx64
                    ": refcount %" PRIu64 ", referenced %" PRIu64 " times", i, off, rc,
                    refs);
        else if (rc < refs)
            problem(c, RB_QCOW2_CORRUPTION, off, "cluster %" PRIu64 " at 0x%" PRIx64
                    " has refcount %" PRIu64 " but is referenced %" PRIu64 " times%s", i,
                    off, rc, refs, rc ? "" : " (it may be overwritten)");
    }
}

/* Every reference of the image, counted into c->refs for the window. */
static void walk(struct ctx *c)
{
    struct qcow2_state *s = c->s;

    inc_refs(c, 0, s->cluster_bytes, "header", RB_QCOW2_HOST_HEADER);
    /* allocated by a write in progress, its L2 entry not set yet: as good
     * as referenced (an idle check sees the entry instead) */
    for (const struct qcow2_inflight *f = s->inflight; f; f = f->next) {
        inc_refs(c, f->host_off, s->cluster_bytes, "cluster of a write in progress",
                 RB_QCOW2_HOST_DATA);
        c->res->in_flight_clusters++;
    }
    check_l1(c, s->h.l1_table_offset, s->h.l1_size, s->l1, true, "active L1 table");
    for (uint32_t i = 0; i < s->h.nb_snapshots; i++) {
        char name[64];
        snprintf(name, sizeof(name), "L1 table of snapshot %" PRIu32, i);
        check_l1(c, s->snapshots[i].l1_table_offset, s->snapshots[i].l1_size, NULL,
                 false, name);
    }
    if (s->h.nb_snapshots)
        inc_refs(c, s->h.snapshots_offset, s->snapshots_bytes, "snapshot table",
                 RB_QCOW2_HOST_SNAPSHOT);
    check_bitmaps(c);
    check_reftable(c);
    if (c->capped && !c->err)
        c->err = EFBIG;
}

int qcow2_check_walk(struct rb_image *img, struct rb_qcow2_check *res,
                     const struct qcow2_check_observer *obs, uint64_t window,
                     struct qcow2_refs *keep, struct rb_error *err)
{
    struct qcow2_state *s;
    struct ctx c = {0};
    struct rb_qcow2_check counted;

    memset(res, 0, sizeof(*res));
    if (!qcow2_is_qcow2(img))
        return rb_error_set(err, EINVAL, "%s: not a qcow2 image", img->filename);
    s = img->priv;
    c.s = s;
    c.res = res;
    c.obs = obs;

    /* One consistent state: a served image is written while we check, so
     * everything the walk sizes (the file, the refcount table) and reads is
     * taken in this one lock hold.  Writers change metadata only under the
     * lock; what they do outside it (data of a cluster not linked yet) is
     * on s->inflight, counted below.  Lock order: the lock alone (no
     * writer lock, no data_rw), so a check never waits for a writer that
     * waits for it. */
    pthread_mutex_lock(&s->lock);
    c.nb = (s->file_size + s->cluster_bytes - 1) / s->cluster_bytes;
    if (!window || window > c.nb)
        window = c.nb;
    if (!window)
        window = 1;
    if (window > RB_QCOW2_CHECK_MAX_CLUSTERS) {
        pthread_mutex_unlock(&s->lock);
        return rb_error_set(err, EFBIG, "%s: file has too many clusters to check (%"
                            PRIu64 ", limit %llu)", img->filename, c.nb,
                            RB_QCOW2_CHECK_MAX_CLUSTERS);
    }
    c.win = window;
    c.refs = calloc(c.win, sizeof(*c.refs));
    c.bad_refblock = calloc(s->reftable_entries ? s->reftable_entries : 1, 1);
    if (!c.refs || !c.bad_refblock) {
        pthread_mutex_unlock(&s->lock);
        free(c.refs);
        free(c.bad_refblock);
        return rb_error_set(err, ENOMEM, "%s: out of memory", img->filename);
    }
    res->total_clusters = (s->h.size + s->cluster_bytes - 1) / s->cluster_bytes;

    /* Pass 0 walks loudly (problems, statistics, the observer); each later
     * pass walks quietly again to count the references of its window.
     * Memory: @window counters, whatever the size of the file. */
    walk(&c);
    counted = *res; /* the walk's statistics: a quiet walk repeats them */
    for (;;) {
        uint64_t check_errors;

        if (c.err)
            break;
        compare(&c);
        if (c.lo + c.win >= c.nb)
            break;
        c.lo += c.win;
        if (c.win > c.nb - c.lo)
            c.win = c.nb - c.lo;
        memset(c.refs, 0, c.win * sizeof(*c.refs));
        c.quiet = true;
        c.l2_visits = 0;
        check_errors = res->check_errors;
        walk(&c);
        res->check_errors = check_errors;
        res->allocated_clusters = counted.allocated_clusters;
        res->fragmented_clusters = counted.fragmented_clusters;
        res->compressed_clusters = counted.compressed_clusters;
        res->in_flight_clusters = counted.in_flight_clusters;
        c.quiet = false;
    }
    if (!c.err) {
        /* as qemu: at least the header's cluster, even when no refcount
         * could be read */
        res->image_end_offset = (c.highest ? c.highest : 1) * s->cluster_bytes;
        check_copied(&c);
    }
    pthread_mutex_unlock(&s->lock);

    free(c.bad_refblock);
    if (keep && !c.err && c.lo == 0) { /* the references, for repair.c */
        keep->refs = c.refs;
        keep->nb = c.nb;
        c.refs = NULL;
    }
    free(c.refs);
    if (c.err) {
        rb_qcow2_check_free(res);
        if (c.capped)
            return rb_error_set(err, c.err, "%s: cannot check: the L1 tables reference "
                                "more than %llu L2 entries", img->filename,
                                MAX_L2_VISITS);
        return rb_error_set(err, c.err, "%s: out of memory while checking",
                            img->filename);
    }
    return 0;
}

int qcow2_check_refs(struct rb_image *img, struct rb_qcow2_check *res,
                     struct qcow2_refs *keep, struct rb_error *err)
{
    return qcow2_check_walk(img, res, NULL, 0, keep, err);
}

int rb_qcow2_check(struct rb_image *img, struct rb_qcow2_check *res, struct rb_error *err)
{
    return qcow2_check_refs(img, res, NULL, err);
}

void rb_qcow2_check_free(struct rb_qcow2_check *res)
{
    if (!res)
        return;
    free(res->problems);
    res->problems = NULL;
    res->nb_problems = 0;
}
