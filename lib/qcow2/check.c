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
    int err;            /* first fatal error (ENOMEM) */
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
static void inc_refs(struct ctx *c, uint64_t off, uint64_t len, const char *what)
{
    uint64_t first, last, end;

    if (len == 0)
        return;
    if (!rb_add_ok(off, len - 1, &end) || end / c->s->cluster_bytes >=
                                              RB_QCOW2_CHECK_MAX_CLUSTERS) {
        problem(c, RB_QCOW2_CORRUPTION, off, "%s at 0x%" PRIx64 " is beyond any "
                "possible end of the file", what, off);
        return;
    }
    first = off / c->s->cluster_bytes;
    last = end / c->s->cluster_bytes;
    if (last >= c->nb) {
        /* a reference past the end of the file: grow (as qemu does) */
        uint64_t n = last + 1;
        uint32_t *r = realloc(c->refs, n * sizeof(*r));
        if (!r) {
            c->err = ENOMEM;
            return;
        }
        memset(r + c->nb, 0, (n - c->nb) * sizeof(*r));
        c->refs = r;
        c->nb = n;
    }
    for (uint64_t i = first; i <= last; i++) {
        if (c->refs[i] < UINT32_MAX)
            c->refs[i]++;
    }
}

static uint64_t refcount_of(struct ctx *c, uint64_t cluster)
{
    uint64_t rc = 0;

    if (qcow2_refcount_get(c->s, cluster, &rc, NULL) < 0)
        return 0; /* bad refcount blocks are reported by check_reftable */
    return rc;
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

static void check_l2(struct ctx *c, uint64_t l2_off, bool active, const char *l1_name)
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
    if (qcow2_cache_get(s->l2_cache, l2_off, &l2) < 0) {
        c->res->check_errors++;
        return;
    }
    for (uint32_t i = 0; i < s->l2_entries; i++) {
        uint64_t e = qcow2_l2_entry_get(s, l2, i);
        uint64_t b = qcow2_l2_bitmap_get(s, l2, i);
        uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
        enum qcow2_sc_type t = qcow2_sc_type_of(e, b, 0, s->extended_l2, s->has_data_file);

        if (t == QCOW2_SC_COMPRESSED) {
            uint64_t coff, cbytes;
            qcow2_compressed_parse(e, s->h.cluster_bits, &coff, &cbytes);
            if (e & QCOW2_OFLAG_COPIED)
                problem(c, RB_QCOW2_CORRUPTION, coff, "compressed cluster at 0x%" PRIx64
                        " (entry %" PRIu32 " of L2 table at 0x%" PRIx64 ") has the "
                        "COPIED flag set", coff, i, l2_off);
            if (s->extended_l2 && b)
                problem(c, RB_QCOW2_CORRUPTION, coff, "compressed cluster at 0x%" PRIx64
                        " (entry %" PRIu32 " of L2 table at 0x%" PRIx64 ") has a "
                        "non-zero subcluster bitmap 0x%016" PRIx64, coff, i, l2_off, b);
            if (s->has_data_file)
                problem(c, RB_QCOW2_CORRUPTION, coff, "compressed cluster in an image "
                        "with an external data file (entry %" PRIu32 " of L2 table at "
                        "0x%" PRIx64 ")", i, l2_off);
            inc_refs(c, coff, cbytes, "compressed cluster");
            if (active) {
                c->res->allocated_clusters++;
                c->res->compressed_clusters++;
                c->res->fragmented_clusters++;
            }
            continue;
        }
        if (t == QCOW2_SC_INVALID) {
            problem(c, RB_QCOW2_CORRUPTION, host, "entry %" PRIu32 " of L2 table at 0x%"
                    PRIx64 " has an invalid subcluster bitmap 0x%016" PRIx64, i, l2_off, b);
            continue;
        }
        if (t == QCOW2_SC_UNALLOCATED_PLAIN || t == QCOW2_SC_ZERO_PLAIN)
            continue;
        /* a host cluster: NORMAL, ZERO_ALLOC or (subclusters) UNALLOCATED_ALLOC */
        if (host & (s->cluster_bytes - 1)) {
            problem(c, RB_QCOW2_CORRUPTION, host, "cluster at 0x%" PRIx64 " (entry %" PRIu32
                    " of L2 table at 0x%" PRIx64 ") is not cluster-aligned (cluster size %"
                    PRIu32 ")", host, i, l2_off, s->cluster_bytes);
            continue;
        }
        if (active) {
            c->res->allocated_clusters++;
            if (next_contiguous && host != next_contiguous)
                c->res->fragmented_clusters++;
            next_contiguous = host + s->cluster_bytes;
        }
        if (s->has_data_file)
            continue; /* data file clusters are not refcounted (spec) */
        inc_refs(c, host, s->cluster_bytes, "data cluster");
    }
    qcow2_cache_put(s->l2_cache, l2);
}

/* Read an L1 table (@l1 NULL) or use the active one, and walk it. */
static void check_l1(struct ctx *c, uint64_t l1_off, uint32_t l1_size, const uint64_t *l1,
                     bool active, const char *name)
{
    struct qcow2_state *s = c->s;
    uint64_t *tab = NULL;

    if (!l1_size)
        return;
    if (!table_ok(c, name, l1_off, (uint64_t)l1_size * 8))
        return;
    inc_refs(c, l1_off, (uint64_t)l1_size * 8, name);
    if (!l1) {
        uint8_t *raw = malloc((size_t)l1_size * 8);
        if (!raw || rb_io_pread(s->fd, raw, (size_t)l1_size * 8, l1_off) < 0) {
            free(raw);
            c->res->check_errors++;
            return;
        }
        tab = (uint64_t *)raw;
        for (uint32_t i = 0; i < l1_size; i++) {
            uint64_t v = 0;
            for (int k = 0; k < 8; k++)
                v = (v << 8) | raw[i * 8 + k];
            tab[i] = v;
        }
        l1 = tab;
    }
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2_off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        char what[96];

        if (!l2_off)
            continue;
        snprintf(what, sizeof(what), "L2 table (%s index %" PRIu32 ")", name, i);
        if (!table_ok(c, what, l2_off, s->cluster_bytes))
            continue;
        inc_refs(c, l2_off, s->cluster_bytes, what);
        check_l2(c, l2_off, active, name);
    }
    free(tab);
}

static void check_reftable(struct ctx *c)
{
    struct qcow2_state *s = c->s;

    inc_refs(c, s->h.refcount_table_offset,
             (uint64_t)s->h.refcount_table_clusters * s->cluster_bytes, "refcount table");
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        uint64_t off = s->reftable[i] & QCOW2_REFT_OFFSET_MASK;
        char what[64];

        if (!off)
            continue;
        snprintf(what, sizeof(what), "refcount block %" PRIu64, i);
        if (!table_ok(c, what, off, s->cluster_bytes)) {
            /* unusable: refcount_of reads 0 for its clusters */
            s->reftable[i] = 0;
            continue;
        }
        inc_refs(c, off, s->cluster_bytes, what);
    }
}

static uint64_t rd(const uint8_t *p, int n)
{
    uint64_t v = 0;

    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* spec "Bitmaps": the directory, each bitmap table and its data clusters */
static void check_bitmaps(struct ctx *c)
{
    struct qcow2_state *s = c->s;
    uint64_t size = s->h.bitmap_directory_size, pos = 0;
    uint8_t *dir;

    if (!s->h.nb_bitmaps || !table_ok(c, "bitmap directory", s->h.bitmap_directory_offset,
                                      size))
        return;
    inc_refs(c, s->h.bitmap_directory_offset, size, "bitmap directory");
    dir = malloc(size ? size : 1);
    if (!dir || rb_io_pread(s->fd, dir, size, s->h.bitmap_directory_offset) < 0) {
        free(dir);
        c->res->check_errors++;
        return;
    }
    for (uint32_t n = 0; n < s->h.nb_bitmaps; n++) {
        uint64_t toff, tsize, name_len, extra;

        if (size - pos < 24) {
            problem(c, RB_QCOW2_CORRUPTION, s->h.bitmap_directory_offset,
                    "bitmap directory at 0x%" PRIx64 " is too short for %" PRIu32
                    " bitmaps", s->h.bitmap_directory_offset, s->h.nb_bitmaps);
            break;
        }
        toff = rd(dir + pos, 8);
        tsize = rd(dir + pos + 8, 4);
        name_len = rd(dir + pos + 18, 2);
        extra = rd(dir + pos + 20, 4);
        pos += (24 + extra + name_len + 7) & ~7ull;
        if (tsize && table_ok(c, "bitmap table", toff, tsize * 8)) {
            uint8_t *t = malloc(tsize * 8);
            inc_refs(c, toff, tsize * 8, "bitmap table");
            if (!t || rb_io_pread(s->fd, t, tsize * 8, toff) < 0) {
                c->res->check_errors++;
            } else {
                for (uint64_t i = 0; i < tsize; i++) {
                    uint64_t d = rd(t + i * 8, 8) & QCOW2_L2E_OFFSET_MASK;
                    if (d && table_ok(c, "bitmap data cluster", d, s->cluster_bytes))
                        inc_refs(c, d, s->cluster_bytes, "bitmap data cluster");
                }
            }
            free(t);
        }
        if (pos > size)
            break;
    }
    free(dir);
}

/* qemu's check_oflag_copied: COPIED must mean "refcount == 1" */
static void check_copied(struct ctx *c)
{
    struct qcow2_state *s = c->s;

    for (uint32_t i = 0; i < s->h.l1_size; i++) {
        uint64_t l2_off = s->l1[i] & QCOW2_L1E_OFFSET_MASK;
        uint64_t rc;
        void *l2;

        if (!l2_off || (l2_off & (s->cluster_bytes - 1)) ||
            l2_off + s->cluster_bytes > s->file_size)
            continue;
        rc = refcount_of(c, l2_off / s->cluster_bytes);
        if ((rc == 1) != !!(s->l1[i] & QCOW2_OFLAG_COPIED))
            problem(c, RB_QCOW2_CORRUPTION, l2_off, "L2 table at 0x%" PRIx64 " (L1 index %"
                    PRIu32 ") has refcount %" PRIu64 " but the COPIED flag %s", l2_off, i,
                    rc, (s->l1[i] & QCOW2_OFLAG_COPIED) ? "set" : "clear");
        if (s->has_data_file || qcow2_cache_get(s->l2_cache, l2_off, &l2) < 0)
            continue;
        for (uint32_t j = 0; j < s->l2_entries; j++) {
            uint64_t e = qcow2_l2_entry_get(s, l2, j);
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK;

            if ((e & QCOW2_OFLAG_COMPRESSED) || !host || (host & (s->cluster_bytes - 1)))
                continue;
            rc = refcount_of(c, host / s->cluster_bytes);
            if ((rc == 1) != !!(e & QCOW2_OFLAG_COPIED))
                problem(c, RB_QCOW2_CORRUPTION, host, "data cluster at 0x%" PRIx64
                        " (entry %" PRIu32 " of L2 table at 0x%" PRIx64 ") has refcount %"
                        PRIu64 " but the COPIED flag %s", host, j, l2_off, rc,
                        (e & QCOW2_OFLAG_COPIED) ? "set" : "clear");
        }
        qcow2_cache_put(s->l2_cache, l2);
    }
}

static void compare(struct ctx *c)
{
    struct qcow2_state *s = c->s;
    uint64_t highest = 0;
    bool any = false;

    for (uint64_t i = 0; i < c->nb; i++) {
        uint64_t rc = refcount_of(c, i), refs = c->refs[i];
        uint64_t off = i * s->cluster_bytes;

        if (rc || refs) { /* as qemu: referenced or counted */
            highest = i;
            any = true;
        }
        if (rc > refs)
            problem(c, RB_QCOW2_LEAK, off, "leaked cluster %" PRIu64 " at 0x%" PRIx64
                    ": refcount %" PRIu64 ", referenced %" PRIu64 " times", i, off, rc,
                    refs);
        else if (rc < refs)
            problem(c, RB_QCOW2_CORRUPTION, off, "cluster %" PRIu64 " at 0x%" PRIx64
                    " has refcount %" PRIu64 " but is referenced %" PRIu64 " times%s", i,
                    off, rc, refs, rc ? "" : " (it may be overwritten)");
    }
    c->res->image_end_offset = any ? (highest + 1) * s->cluster_bytes : 0;
}

int rb_qcow2_check(struct rb_image *img, struct rb_qcow2_check *res, struct rb_error *err)
{
    struct qcow2_state *s;
    struct ctx c = {0};
    uint64_t *saved_reftable = NULL;

    memset(res, 0, sizeof(*res));
    if (!qcow2_is_qcow2(img))
        return rb_error_set(err, EINVAL, "%s: not a qcow2 image", img->filename);
    s = img->priv;
    c.s = s;
    c.res = res;
    c.nb = (s->file_size + s->cluster_bytes - 1) / s->cluster_bytes;
    if (c.nb > RB_QCOW2_CHECK_MAX_CLUSTERS)
        return rb_error_set(err, EFBIG, "%s: file has too many clusters to check (%"
                            PRIu64 ", limit %llu)", img->filename, c.nb,
                            RB_QCOW2_CHECK_MAX_CLUSTERS);
    c.refs = calloc(c.nb ? c.nb : 1, sizeof(*c.refs));
    saved_reftable = malloc(s->reftable_entries * 8);
    if (!c.refs || !saved_reftable) {
        free(c.refs);
        free(saved_reftable);
        return rb_error_set(err, ENOMEM, "%s: out of memory", img->filename);
    }
    res->total_clusters = (s->h.size + s->cluster_bytes - 1) / s->cluster_bytes;

    pthread_mutex_lock(&s->lock);
    memcpy(saved_reftable, s->reftable, s->reftable_entries * 8);
    inc_refs(&c, 0, s->cluster_bytes, "header");
    check_l1(&c, s->h.l1_table_offset, s->h.l1_size, s->l1, true, "active L1 table");
    for (uint32_t i = 0; i < s->h.nb_snapshots; i++) {
        char name[64];
        snprintf(name, sizeof(name), "L1 table of snapshot %" PRIu32, i);
        check_l1(&c, s->snapshots[i].l1_table_offset, s->snapshots[i].l1_size, NULL,
                 false, name);
    }
    if (s->h.nb_snapshots)
        inc_refs(&c, s->h.snapshots_offset, s->snapshots_bytes, "snapshot table");
    check_bitmaps(&c);
    check_reftable(&c);
    if (c.capped && !c.err)
        c.err = EFBIG;
    if (!c.err) {
        compare(&c);
        check_copied(&c);
    }
    /* check_reftable may have blanked bad entries: put them back */
    memcpy(s->reftable, saved_reftable, s->reftable_entries * 8);
    pthread_mutex_unlock(&s->lock);

    free(saved_reftable);
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

void rb_qcow2_check_free(struct rb_qcow2_check *res)
{
    if (!res)
        return;
    free(res->problems);
    res->problems = NULL;
    res->nb_problems = 0;
}
