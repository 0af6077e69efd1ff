/* SPDX-License-Identifier: MIT */
/*
 * bitmap.c - persistent dirty bitmaps (qcow2.txt "Bitmaps extension",
 * "Bitmap directory", "Bitmap table"), read and written as QEMU's
 * block/qcow2-bitmap.c does.
 *
 * In memory a bitmap is one bit per granule, LSB first, exactly the
 * layout of its data clusters on disk (QEMU serializes its HBitmap as
 * little-endian words), so loading and storing copy bytes.
 *
 * Write ordering (DESIGN.md section 4), as QEMU's
 * qcow2_store_persistent_dirty_bitmaps: new data clusters and tables,
 * then the new directory, are written and synced (with their refcounts
 * durable before them: the refcount block cache is flushed) before the
 * header extension points at the directory; the old directory, tables and
 * data clusters are freed only after the header switch is durable.  A
 * crash at any point leaves either the old or the new bitmaps, and at
 * worst leaked clusters.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "qcow2/qcow2w.h"
#include "rblock/io.h"
#include "util/endian.h"

#define BME_TABLE_OFFSET_MASK 0x00fffffffffffe00ull

void qcow2_bitmap_list_free(struct qcow2_bitmap_list *l)
{
    if (!l)
        return;
    for (uint32_t i = 0; i < l->nb; i++) {
        free(l->b[i].name);
        free(l->b[i].extra);
        free(l->b[i].bits);
    }
    free(l->b);
    l->b = NULL;
    l->nb = 0;
}

static uint64_t entry_bytes(uint64_t name_len, uint64_t extra)
{
    return (24 + extra + name_len + 7) & ~7ull;
}

/* Bytes of bitmap data for @nb_bits, as qemu serializes it (whole 64-bit
 * words). */
static uint64_t data_bytes(uint64_t nb_bits)
{
    return (nb_bits + 63) / 64 * 8;
}

static uint64_t bits_for(const struct qcow2_state *s, unsigned gbits)
{
    return (s->h.size >> gbits) + ((s->h.size & ((1ull << gbits) - 1)) != 0);
}

static int parse_dir(const uint8_t *dir, uint64_t size, uint32_t nb,
                     struct qcow2_bitmap_list *l)
{
    uint64_t pos = 0;

    l->b = calloc(nb ? nb : 1, sizeof(*l->b));
    if (!l->b)
        return -ENOMEM;
    for (uint32_t i = 0; i < nb; i++) {
        struct qcow2_bitmap *b = &l->b[i];
        uint64_t name_len, extra;

        /* the padding of the entry before may end past the directory */
        if (pos > size || size - pos < 24)
            return -EINVAL;
        name_len = rb_load_be16(dir + pos + 18);
        extra = rb_load_be32(dir + pos + 20);
        if (24 + extra + name_len > size - pos)
            return -EINVAL;
        l->nb = i + 1;
        b->table_off = rb_load_be64(dir + pos);
        b->table_size = rb_load_be32(dir + pos + 8);
        b->flags = rb_load_be32(dir + pos + 12);
        b->type = dir[pos + 16];
        b->gbits = dir[pos + 17];
        b->inconsistent = b->flags & QCOW2_BME_FLAG_IN_USE;
        b->flags &= ~QCOW2_BME_FLAG_IN_USE;
        b->extra_bytes = (uint32_t)extra;
        b->name = malloc(name_len + 1);
        if (extra)
            b->extra = malloc(extra);
        if (!b->name || (extra && !b->extra))
            return -ENOMEM;
        if (extra)
            memcpy(b->extra, dir + pos + 24, extra);
        memcpy(b->name, dir + pos + 24 + extra, name_len);
        b->name[name_len] = '\0';
        pos += entry_bytes(name_len, extra);
    }
    return 0;
}

int qcow2_bitmap_dir_read(struct qcow2_state *s, struct qcow2_bitmap_list *l,
                          struct rb_error *err)
{
    uint64_t size = s->h.bitmap_directory_size;
    uint8_t *dir;
    int ret;

    l->b = NULL;
    l->nb = 0;
    if (!s->h.nb_bitmaps)
        return 0;
    /* header.c checked: inside the file, at most 64 MiB */
    dir = malloc(size ? size : 1);
    if (!dir)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    ret = rb_io_pread(s->fd, dir, size, s->h.bitmap_directory_offset);
    if (ret < 0) {
        free(dir);
        return rb_error_errno(err, -ret, "%s: cannot read the bitmap directory", s->name);
    }
    ret = parse_dir(dir, size, s->h.nb_bitmaps, l);
    free(dir);
    if (ret < 0) {
        qcow2_bitmap_list_free(l);
        if (ret == -ENOMEM)
            return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        return rb_error_set(err, EINVAL, "%s: bitmap directory at 0x%" PRIx64 " is "
                            "corrupt (%" PRIu64 " bytes for %" PRIu32 " bitmaps)", s->name,
                            s->h.bitmap_directory_offset, size, s->h.nb_bitmaps);
    }
    return 0;
}

int qcow2_bitmap_entry_check(struct qcow2_state *s, const struct qcow2_bitmap *b,
                             struct rb_error *err)
{
    uint64_t phys = (uint64_t)b->table_size * s->cluster_bytes;
    const char *why = NULL;

    /* qemu's check_dir_entry */
    if (b->table_size == 0 || b->table_off == 0)
        why = "has no bitmap table";
    else if (b->table_off % s->cluster_bytes)
        why = "has a bitmap table that is not cluster-aligned";
    else if (b->table_size > QCOW2_BME_MAX_TABLE_SIZE || phys > QCOW2_BME_MAX_PHYS_SIZE)
        why = "has a bitmap table that is too large";
    else if (b->table_off > s->file_size || (uint64_t)b->table_size * 8 >
                                                 s->file_size - b->table_off)
        why = "has a bitmap table past the end of the file";
    else if (b->gbits < QCOW2_BME_MIN_GRANULARITY_BITS ||
             b->gbits > QCOW2_BME_MAX_GRANULARITY_BITS)
        why = "has a granularity outside 512 B..2 GiB";
    else if (b->flags & QCOW2_BME_RESERVED_FLAGS)
        why = "has reserved flags set";
    else if (strlen(b->name) > QCOW2_BME_MAX_NAME || !b->name[0])
        why = "has an invalid name length";
    else if (b->type != QCOW2_BME_TYPE_DIRTY)
        why = "is not a dirty tracking bitmap";
    else if (!b->inconsistent && data_bytes(bits_for(s, b->gbits)) > phys)
        why = "has a bitmap table too small for the virtual size";
    if (why)
        return rb_error_set(err, EINVAL, "%s: bitmap '%s' %s", s->name, b->name, why);
    return 0;
}

/* Read and validate bitmap table @toff (qcow2.txt "Bitmap table"):
 * reserved bits zero, all-ones only without an offset, data clusters
 * aligned and inside the file.  Returns the entries in host order. */
static int read_table(struct qcow2_state *s, uint64_t toff, uint32_t tsize,
                      uint64_t **out, struct rb_error *err)
{
    uint64_t *t = malloc((size_t)tsize * 8 + 8);
    int ret;

    if (!t)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    if (toff > s->file_size || (uint64_t)tsize * 8 > s->file_size - toff) {
        free(t);
        return rb_error_set(err, EINVAL, "%s: bitmap table at 0x%" PRIx64 " is past the "
                            "end of the file", s->name, toff);
    }
    ret = rb_io_pread(s->fd, t, (size_t)tsize * 8, toff);
    if (ret < 0) {
        free(t);
        return rb_error_errno(err, -ret, "%s: cannot read bitmap table at 0x%" PRIx64,
                              s->name, toff);
    }
    rb_load_be64_array(t, tsize);
    for (uint32_t i = 0; i < tsize; i++) {
        uint64_t off = t[i] & BME_TABLE_OFFSET_MASK;
        if ((t[i] & QCOW2_BME_TABLE_RESERVED) || (off && (t[i] & QCOW2_BME_TABLE_ALL_ONES)) ||
            off % s->cluster_bytes || off > s->file_size ||
            s->file_size - off < s->cluster_bytes) {
            uint64_t bad = t[i];
            free(t);
            return rb_error_set(err, EINVAL, "%s: bitmap table at 0x%" PRIx64 " has an "
                                "invalid entry %" PRIu32 ": 0x%016" PRIx64, s->name, toff,
                                i, bad);
        }
    }
    *out = t;
    return 0;
}

int qcow2_bitmap_table_walk(struct qcow2_state *s, uint64_t toff, uint32_t tsize,
                            int (*fn)(struct qcow2_state *s, uint64_t data_off, void *opaque),
                            void *opaque, struct rb_error *err)
{
    uint64_t *t;
    int ret = read_table(s, toff, tsize, &t, err);

    if (ret < 0)
        return ret;
    for (uint32_t i = 0; ret == 0 && i < tsize; i++) {
        if (t[i] & BME_TABLE_OFFSET_MASK)
            ret = fn(s, t[i] & BME_TABLE_OFFSET_MASK, opaque);
    }
    free(t);
    return ret;
}

/* The bits of consistent bitmap @b from its table and data clusters. */
static int load_bits(struct qcow2_state *s, struct qcow2_bitmap *b, struct rb_error *err)
{
    uint64_t nb_bits = bits_for(s, b->gbits), bytes = data_bytes(nb_bits), *t;
    uint64_t c = s->cluster_bytes;
    int ret = read_table(s, b->table_off, b->table_size, &t, err);

    if (ret < 0)
        return ret;
    b->bits = calloc(bytes ? bytes : 8, 1);
    if (!b->bits) {
        free(t);
        return rb_error_set(err, ENOMEM, "%s: out of memory for bitmap '%s'", s->name,
                            b->name);
    }
    b->nb_bits = nb_bits;
    for (uint64_t j = 0; j * c < bytes && ret == 0; j++) {
        uint64_t n = bytes - j * c < c ? bytes - j * c : c;
        uint64_t off = t[j] & BME_TABLE_OFFSET_MASK;
        if (off) {
            ret = rb_io_pread(s->fd, b->bits + j * c, (size_t)n, off);
            if (ret < 0)
                ret = rb_error_errno(err, -ret, "%s: cannot read bitmap '%s' at 0x%"
                                     PRIx64, s->name, b->name, off);
        } else if (t[j] & QCOW2_BME_TABLE_ALL_ONES) {
            memset(b->bits + j * c, 0xff, (size_t)n);
        }
    }
    free(t);
    if (ret < 0) {
        free(b->bits);
        b->bits = NULL;
        return ret;
    }
    /* bits past the end of the disk mean nothing: keep them clear */
    for (uint64_t i = nb_bits; i < bytes * 8; i++)
        b->bits[i / 8] &= (uint8_t)~(1u << (i % 8));
    return 0;
}

int qcow2_bitmaps_load(struct qcow2_state *s, struct rb_error *err)
{
    struct qcow2_bitmap_list l;
    int ret;

    if (s->bitmaps_loaded)
        return 0;
    ret = qcow2_bitmap_dir_read(s, &l, err);
    for (uint32_t i = 0; ret == 0 && i < l.nb; i++) {
        ret = qcow2_bitmap_entry_check(s, &l.b[i], err);
        for (uint32_t k = 0; ret == 0 && k < i; k++)
            if (strcmp(l.b[k].name, l.b[i].name) == 0)
                ret = rb_error_set(err, EINVAL, "%s: bitmap '%s' is in the directory "
                                   "twice", s->name, l.b[i].name);
        if (ret == 0 && !l.b[i].inconsistent)
            ret = load_bits(s, &l.b[i], err);
    }
    if (ret < 0) {
        qcow2_bitmap_list_free(&l);
        return ret;
    }
    s->bitmaps = l;
    s->bitmaps_loaded = true;
    return 0;
}

/* The directory for @l, with in_use set on inconsistent bitmaps and, when
 * @in_use, on all of them; table offsets from @toff (NULL: the entries'). */
static uint8_t *build_dir(const struct qcow2_bitmap_list *l, const uint64_t *toff,
                          const uint32_t *tsize, bool in_use, uint64_t *size)
{
    uint64_t total = 0, pos = 0;
    uint8_t *dir;

    for (uint32_t i = 0; i < l->nb; i++)
        total += entry_bytes(strlen(l->b[i].name), l->b[i].extra_bytes);
    dir = calloc(total ? total : 1, 1);
    if (!dir)
        return NULL;
    for (uint32_t i = 0; i < l->nb; i++) {
        const struct qcow2_bitmap *b = &l->b[i];
        size_t name_len = strlen(b->name);
        uint32_t flags = b->flags | (in_use || b->inconsistent ? QCOW2_BME_FLAG_IN_USE : 0);

        rb_store_be64(dir + pos, toff ? toff[i] : b->table_off);
        rb_store_be32(dir + pos + 8, tsize ? tsize[i] : b->table_size);
        rb_store_be32(dir + pos + 12, flags);
        dir[pos + 16] = b->type;
        dir[pos + 17] = b->gbits;
        rb_store_be16(dir + pos + 18, (uint16_t)name_len);
        rb_store_be32(dir + pos + 20, b->extra_bytes);
        if (b->extra_bytes)
            memcpy(dir + pos + 24, b->extra, b->extra_bytes);
        memcpy(dir + pos + 24 + b->extra_bytes, b->name, name_len);
        pos += entry_bytes(name_len, b->extra_bytes);
    }
    *size = total;
    return dir;
}

int qcow2_bitmaps_begin_writes(struct qcow2_state *s, struct rb_error *err)
{
    uint64_t size;
    uint8_t *dir;
    int ret;

    if (!s->h.nb_bitmaps)
        return 1;
    ret = qcow2_bitmaps_load(s, err);
    if (ret == -EINVAL)
        return 0;
    if (ret < 0)
        return ret;
    /* in place: the same entries, the same size (qemu's
     * update_ext_header_and_dir_in_place) */
    dir = build_dir(&s->bitmaps, NULL, NULL, true, &size);
    if (!dir)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    if (size != s->h.bitmap_directory_size) {
        free(dir);
        return 0;
    }
    /* ORDER: in_use durable before any guest data changes */
    ret = rb_io_pwrite(s->fd, dir, size, s->h.bitmap_directory_offset);
    if (ret == 0 && s->barriers)
        ret = rb_io_sync(s->fd);
    free(dir);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot write the bitmap directory at 0x%"
                              PRIx64, s->name, s->h.bitmap_directory_offset);
    s->bitmaps_flagged = true;
    return 1;
}

static void set_bits(uint8_t *bits, uint64_t nb_bits, uint64_t first, uint64_t last)
{
    if (last >= nb_bits)
        last = nb_bits - 1;
    while (first <= last && first % 8) {
        bits[first / 8] |= (uint8_t)(1u << (first % 8));
        first++;
    }
    if (first + 8 <= last + 1) {
        uint64_t whole = (last + 1 - first) / 8;
        memset(bits + first / 8, 0xff, (size_t)whole);
        first += whole * 8;
    }
    for (; first <= last; first++)
        bits[first / 8] |= (uint8_t)(1u << (first % 8));
}

static void mark_one(struct qcow2_bitmap *b, uint64_t off, uint64_t len)
{
    if (!len || !b->bits || !b->nb_bits)
        return;
    set_bits(b->bits, b->nb_bits, off >> b->gbits, (off + len - 1) >> b->gbits);
}

void qcow2_bitmaps_mark(struct qcow2_state *s, uint64_t off, uint64_t len)
{
    for (uint32_t i = 0; i < s->bitmaps.nb; i++) {
        struct qcow2_bitmap *b = &s->bitmaps.b[i];
        if ((b->flags & QCOW2_BME_FLAG_AUTO) && !b->inconsistent)
            mark_one(b, off, len);
    }
}

static bool bit_at(const uint8_t *bits, uint64_t i)
{
    return bits[i / 8] >> (i % 8) & 1;
}

/* ---- storing --------------------------------------------------------------- */

static bool all_zero(const uint8_t *p, size_t n)
{
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* Write the data clusters and table of @b; the new table at *toff. */
static int write_bitmap(struct qcow2_state *s, const struct qcow2_bitmap *b,
                        uint64_t *toff, uint32_t *tsize, struct rb_error *err)
{
    uint64_t c = s->cluster_bytes, bytes = data_bytes(b->nb_bits);
    uint64_t n_entries = (bytes + c - 1) / c, tclusters;
    uint8_t *table, *buf;
    int ret = 0;

    if (n_entries == 0)
        n_entries = 1; /* qemu: a table of at least one entry */
    tclusters = (n_entries * 8 + c - 1) / c;
    table = calloc(tclusters, c);
    buf = malloc(c);
    if (!table || !buf) {
        free(table);
        free(buf);
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    }
    for (uint64_t j = 0; j * c < bytes && ret == 0; j++) {
        uint64_t n = bytes - j * c < c ? bytes - j * c : c, off;
        /* a cluster of zeros needs no data cluster (entry 0) */
        if (all_zero(b->bits + j * c, (size_t)n))
            continue;
        ret = qcow2_alloc_cluster(s, &off, err);
        if (ret < 0)
            break;
        memcpy(buf, b->bits + j * c, (size_t)n);
        memset(buf + n, 0, (size_t)(c - n));
        ret = rb_io_pwrite(s->fd, buf, (size_t)c, off);
        if (ret < 0)
            ret = rb_error_errno(err, -ret, "%s: cannot write bitmap '%s' at 0x%" PRIx64,
                                 s->name, b->name, off);
        rb_store_be64(table + j * 8, off);
    }
    if (ret == 0)
        ret = qcow2_alloc_clusters(s, tclusters, toff, err);
    if (ret == 0) {
        ret = rb_io_pwrite(s->fd, table, (size_t)(tclusters * c), *toff);
        if (ret < 0)
            ret = rb_error_errno(err, -ret, "%s: cannot write bitmap table at 0x%" PRIx64,
                                 s->name, *toff);
    }
    *tsize = (uint32_t)n_entries;
    free(table);
    free(buf);
    return ret;
}

/*
 * Point the header at a new bitmap directory (@nb entries, or none): the
 * header cluster is rebuilt with every other extension kept, the bitmaps
 * extension replaced, added or dropped, the backing file name moved after
 * the extensions, and autoclear bit 0 set or cleared; written in one
 * write and synced; then parsed again into s->h.
 */
static int write_header_ext(struct qcow2_state *s, uint32_t nb, uint64_t dsize, uint64_t doff,
                            struct rb_error *err)
{
    uint64_t c = s->cluster_bytes, hl = s->h.header_length, end = c, pos, out;
    uint64_t bf_off = s->h.backing_file_offset, bf_len = s->h.backing_file_size;
    bool move_name = bf_off && bf_off < c && bf_len <= c - bf_off;
    uint8_t *old = malloc(c), *buf = calloc(1, c);
    int ret;

    if (!old || !buf) {
        ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        goto out;
    }
    ret = rb_io_pread(s->fd, old, (size_t)c, 0);
    if (ret < 0) {
        ret = rb_error_errno(err, -ret, "%s: cannot read the header", s->name);
        goto out;
    }
    if (move_name)
        end = bf_off;
    memcpy(buf, old, hl);
    for (pos = out = hl; pos + 8 <= end;) {
        uint32_t type = rb_load_be32(old + pos), len = rb_load_be32(old + pos + 4);
        uint64_t step = 8 + (((uint64_t)len + 7) & ~7ull);

        if (type == QCOW2_EXT_END)
            break;
        if (step > c - pos) {
            ret = rb_error_set(err, EINVAL, "%s: header extension at 0x%" PRIx64 " is "
                               "too large", s->name, pos);
            goto out;
        }
        if (type != QCOW2_EXT_BITMAPS) {
            memcpy(buf + out, old + pos, (size_t)step);
            out += step;
        }
        pos += step;
    }
    if (out + (nb ? 32 : 0) + 8 + (move_name ? bf_len : 0) > c) {
        ret = rb_error_set(err, ENOSPC, "%s: no room in the header cluster for the "
                           "bitmaps extension", s->name);
        goto out;
    }
    if (nb) {
        rb_store_be32(buf + out, QCOW2_EXT_BITMAPS);
        rb_store_be32(buf + out + 4, 24);
        rb_store_be32(buf + out + 8, nb);
        rb_store_be64(buf + out + 16, dsize);
        rb_store_be64(buf + out + 24, doff);
        out += 32;
    }
    out += 8; /* end of extensions: zeros */
    if (move_name) {
        memcpy(buf + out, old + bf_off, (size_t)bf_len);
        rb_store_be64(buf + 8, out);
    }
    /* (autoclear bits of extensions we do not know are cleared, as the
     * spec asks of a writer that does not keep them up to date) */
    rb_store_be64(buf + 88, nb ? (s->h.autoclear_features & QCOW2_AUTOCLEAR_MASK) |
                                     QCOW2_AUTOCLEAR_BITMAPS
                               : s->h.autoclear_features & QCOW2_AUTOCLEAR_MASK &
                                     ~QCOW2_AUTOCLEAR_BITMAPS);
    ret = qcow2_header_replace(s, buf, (size_t)c, err);
out:
    free(old);
    free(buf);
    return ret;
}

static int free_cluster(struct qcow2_state *s, uint64_t off, void *opaque)
{
    return qcow2_refcount_add(s, off / s->cluster_bytes, -1, opaque);
}

static int free_range(struct qcow2_state *s, uint64_t off, uint64_t bytes,
                      struct rb_error *err)
{
    int ret = 0;

    for (uint64_t i = 0; ret == 0 && i * s->cluster_bytes < bytes; i++)
        ret = qcow2_refcount_add(s, off / s->cluster_bytes + i, -1, err);
    return ret;
}

/*
 * Make @nl the image's bitmaps: its consistent bitmaps get new tables,
 * inconsistent ones keep theirs; the directory gets in_use on all of them
 * when @in_use.  On success @nl's contents move into s->bitmaps (when @nl
 * is not s->bitmaps itself).  Lock held.
 */
static int store(struct qcow2_state *s, struct qcow2_bitmap_list *nl, bool in_use,
                 struct rb_error *err)
{
    uint64_t *toff = calloc(nl->nb + 1, 8), *old_off = NULL, dsize = 0, doff = 0;
    uint32_t *tsize = calloc(nl->nb + 1, 4), *old_size = NULL, old_nb = s->bitmaps.nb;
    uint64_t old_doff = s->h.bitmap_directory_offset, old_dsize = s->h.bitmap_directory_size;
    bool had_dir = s->h.nb_bitmaps != 0;
    uint8_t *dir = NULL;
    int ret = 0;

    old_off = calloc(old_nb + 1, 8);
    old_size = calloc(old_nb + 1, 4);
    if (!toff || !tsize || !old_off || !old_size) {
        ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        goto out;
    }
    for (uint32_t i = 0; i < old_nb; i++) {
        old_off[i] = s->bitmaps.b[i].table_off;
        old_size[i] = s->bitmaps.b[i].table_size;
    }
    if (nl->nb && s->h.version < 3) {
        ret = rb_error_set(err, ENOTSUP, "%s: cannot store bitmaps in a qcow2 v2 "
                           "(compat 0.10) image", s->name);
        goto out;
    }
    for (uint32_t i = 0; i < nl->nb && ret == 0; i++) {
        if (nl->b[i].bits) {
            ret = write_bitmap(s, &nl->b[i], &toff[i], &tsize[i], err);
        } else {
            toff[i] = nl->b[i].table_off;
            tsize[i] = nl->b[i].table_size;
        }
    }
    if (ret < 0)
        goto out;
    if (nl->nb) {
        uint64_t c = s->cluster_bytes;
        dir = build_dir(nl, toff, tsize, in_use, &dsize);
        if (!dir) {
            ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
            goto out;
        }
        if (dsize > QCOW2_BME_MAX_DIR_SIZE) {
            ret = rb_error_set(err, EFBIG, "%s: bitmap directory would exceed %u bytes",
                               s->name, QCOW2_BME_MAX_DIR_SIZE);
            goto out;
        }
        ret = qcow2_alloc_clusters(s, (dsize + c - 1) / c, &doff, err);
        if (ret == 0 && (ret = rb_io_pwrite(s->fd, dir, dsize, doff)) < 0)
            ret = rb_error_errno(err, -ret, "%s: cannot write the bitmap directory at "
                                 "0x%" PRIx64, s->name, doff);
        if (ret < 0)
            goto out;
    }
    /* ORDER: refcounts of every new cluster, then the new data, tables and
     * directory, durable before the header points at them */
    ret = qcow2_cache_flush(s->refblock_cache);
    if (ret == 0)
        ret = rb_io_sync(s->fd);
    if (ret < 0) {
        ret = rb_error_errno(err, -ret, "%s: cannot write the bitmaps", s->name);
        goto out;
    }
    ret = write_header_ext(s, nl->nb, dsize, doff, err);
    if (ret < 0)
        goto out;
    for (uint32_t i = 0; i < nl->nb; i++) {
        nl->b[i].table_off = toff[i];
        nl->b[i].table_size = tsize[i];
    }
    if (nl != &s->bitmaps) {
        qcow2_bitmap_list_free(&s->bitmaps);
        s->bitmaps = *nl;
        nl->b = NULL;
        nl->nb = 0;
    }
    s->bitmaps_loaded = true;
    s->bitmaps_flagged = in_use && s->bitmaps.nb;
    /* ORDER: free in reverse, after the header no longer points at the
     * old structures (a failure here only leaks) */
    if (had_dir)
        (void)free_range(s, old_doff, old_dsize, NULL);
    for (uint32_t i = 0; i < old_nb; i++) {
        bool kept = false;
        for (uint32_t k = 0; k < s->bitmaps.nb; k++)
            kept |= s->bitmaps.b[k].table_off == old_off[i];
        if (kept || !old_off[i] || !old_size[i])
            continue;
        if (qcow2_bitmap_table_walk(s, old_off[i], old_size[i], free_cluster, NULL,
                                    NULL) == 0)
            (void)free_range(s, old_off[i], (uint64_t)old_size[i] * 8, NULL);
    }
    (void)qcow2_cache_flush(s->refblock_cache);
out:
    free(dir);
    free(toff);
    free(tsize);
    free(old_off);
    free(old_size);
    return ret;
}

int qcow2_bitmaps_close(struct qcow2_state *s, struct rb_error *err)
{
    if (!s->bitmaps_loaded || !s->bitmaps_flagged)
        return 0;
    return store(s, &s->bitmaps, false, err);
}

/* ---- qemu-img bitmap --------------------------------------------------------- */

static struct qcow2_bitmap *find(struct qcow2_bitmap_list *l, const char *name)
{
    for (uint32_t i = 0; i < l->nb; i++)
        if (strcmp(l->b[i].name, name) == 0)
            return &l->b[i];
    return NULL;
}

static int dup_list(const struct qcow2_bitmap_list *from, struct qcow2_bitmap_list *to)
{
    to->nb = 0;
    to->b = calloc(from->nb + 1, sizeof(*to->b));
    if (!to->b)
        return -ENOMEM;
    for (uint32_t i = 0; i < from->nb; i++) {
        const struct qcow2_bitmap *f = &from->b[i];
        struct qcow2_bitmap *t = &to->b[i];
        *t = *f;
        t->name = strdup(f->name);
        t->extra = f->extra_bytes ? malloc(f->extra_bytes) : NULL;
        t->bits = f->bits ? malloc(data_bytes(f->nb_bits) ? data_bytes(f->nb_bits) : 8)
                          : NULL;
        to->nb = i + 1;
        if (!t->name || (f->extra_bytes && !t->extra) || (f->bits && !t->bits))
            return -ENOMEM;
        if (f->extra_bytes)
            memcpy(t->extra, f->extra, f->extra_bytes);
        if (f->bits)
            memcpy(t->bits, f->bits, data_bytes(f->nb_bits) ? data_bytes(f->nb_bits) : 8);
    }
    return 0;
}

static int inconsistent(struct qcow2_state *s, const char *name, struct rb_error *err)
{
    return rb_error_set(err, EINVAL, "%s: bitmap '%s' is inconsistent (in use: not "
                        "saved cleanly) and cannot be used; it can only be removed",
                        s->name, name);
}

static int add(struct qcow2_state *s, struct qcow2_bitmap_list *l, const char *name,
               const struct rb_qcow2_bitmap_op *op, struct rb_error *err)
{
    uint64_t g = op->granularity, bytes;
    struct qcow2_bitmap *b;
    unsigned gbits;

    if (!g) {
        /* qemu's bdrv_get_default_bitmap_granularity */
        g = s->cluster_bytes < 4096 ? 4096 : s->cluster_bytes > 65536 ? 65536
                                                                     : s->cluster_bytes;
    }
    if (g < 512 || (g & (g - 1)) || g > (1ull << QCOW2_BME_MAX_GRANULARITY_BITS))
        return rb_error_set(err, EINVAL, "%s: granularity %" PRIu64 " is not a power of "
                            "two between 512 and 2147483648", s->name, g);
    if (!name[0] || strlen(name) > QCOW2_BME_MAX_NAME)
        return rb_error_set(err, EINVAL, "%s: bitmap name must be 1 to %d bytes long",
                            s->name, QCOW2_BME_MAX_NAME);
    if (find(l, name))
        return rb_error_set(err, EEXIST, "%s: bitmap '%s' already exists", s->name, name);
    if (l->nb >= QCOW2_BME_MAX_BITMAPS)
        return rb_error_set(err, ENOSPC, "%s: the image already has %d bitmaps",
                            s->name, QCOW2_BME_MAX_BITMAPS);
    if (s->h.version < 3)
        return rb_error_set(err, ENOTSUP, "%s: cannot store bitmaps in a qcow2 v2 "
                            "(compat 0.10) image", s->name);
    gbits = qcow2w_log2(g);
    bytes = data_bytes(bits_for(s, gbits));
    if (bytes > QCOW2_BME_MAX_PHYS_SIZE)
        return rb_error_set(err, EFBIG, "%s: bitmap '%s' would need %" PRIu64 " bytes "
                            "(limit %u): use a larger granularity", s->name, name, bytes,
                            QCOW2_BME_MAX_PHYS_SIZE);
    b = realloc(l->b, (l->nb + 1) * sizeof(*b));
    if (!b)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    l->b = b;
    b = &l->b[l->nb];
    memset(b, 0, sizeof(*b));
    b->name = strdup(name);
    b->bits = calloc(bytes ? bytes : 8, 1);
    if (!b->name || !b->bits) {
        free(b->name);
        free(b->bits);
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    }
    b->type = QCOW2_BME_TYPE_DIRTY;
    b->gbits = (uint8_t)gbits;
    b->flags = op->disabled ? 0 : QCOW2_BME_FLAG_AUTO;
    b->nb_bits = bits_for(s, gbits);
    l->nb++;
    return 0;
}

/* Every granule of @dst that overlaps a dirty granule of @src. */
static void merge(struct qcow2_bitmap *dst, const struct qcow2_bitmap *src, uint64_t size)
{
    for (uint64_t i = 0; i < src->nb_bits; i++) {
        uint64_t start = i << src->gbits, len = 1ull << src->gbits;
        if (!bit_at(src->bits, i))
            continue;
        if (len > size - start)
            len = size - start;
        mark_one(dst, start, len);
    }
}

static int merge_op(struct qcow2_state *s, struct qcow2_bitmap_list *l,
                    struct qcow2_bitmap *dst, const struct rb_qcow2_bitmap_op *op,
                    struct rb_error *err)
{
    struct qcow2_state *ss;
    struct qcow2_bitmap *src;
    int ret = 0;

    if (!op->source_img || op->source_img->priv == s) {
        src = find(l, op->source);
        if (!src)
            return rb_error_set(err, ENOENT, "%s: no bitmap '%s'", s->name, op->source);
        if (src->inconsistent)
            return inconsistent(s, op->source, err);
        merge(dst, src, s->h.size);
        return 0;
    }
    if (!qcow2_is_qcow2(op->source_img))
        return rb_error_set(err, EINVAL, "%s: not a qcow2 image", op->source_img->filename);
    ss = op->source_img->priv;
    pthread_mutex_lock(&ss->lock);
    ret = qcow2_bitmaps_load(ss, err);
    if (ret == 0) {
        src = find(&ss->bitmaps, op->source);
        if (!src)
            ret = rb_error_set(err, ENOENT, "%s: no bitmap '%s'", ss->name, op->source);
        else if (src->inconsistent)
            ret = inconsistent(ss, op->source, err);
        else if (ss->h.size != s->h.size)
            ret = rb_error_set(err, EINVAL, "%s: bitmap '%s' is for a disk of %" PRIu64
                               " bytes, '%s' has %" PRIu64, ss->name, op->source,
                               ss->h.size, s->name, s->h.size);
        else
            merge(dst, src, s->h.size);
    }
    pthread_mutex_unlock(&ss->lock);
    return ret;
}

static int apply_one(struct qcow2_state *s, struct qcow2_bitmap_list *l, const char *name,
                     const struct rb_qcow2_bitmap_op *op, struct rb_error *err)
{
    struct qcow2_bitmap *b;

    if (op->kind == RB_QCOW2_BITMAP_ADD)
        return add(s, l, name, op, err);
    b = find(l, name);
    if (!b)
        return rb_error_set(err, ENOENT, "%s: no bitmap '%s'", s->name, name);
    if (op->kind == RB_QCOW2_BITMAP_REMOVE) {
        uint32_t i = (uint32_t)(b - l->b);
        free(b->name);
        free(b->extra);
        free(b->bits);
        memmove(b, b + 1, (l->nb - i - 1) * sizeof(*b));
        l->nb--;
        return 0;
    }
    if (b->inconsistent || !b->bits)
        return inconsistent(s, name, err);
    switch (op->kind) {
    case RB_QCOW2_BITMAP_CLEAR:
        memset(b->bits, 0, (size_t)data_bytes(b->nb_bits));
        return 0;
    case RB_QCOW2_BITMAP_ENABLE:
        b->flags |= QCOW2_BME_FLAG_AUTO;
        return 0;
    case RB_QCOW2_BITMAP_DISABLE:
        b->flags &= ~QCOW2_BME_FLAG_AUTO;
        return 0;
    case RB_QCOW2_BITMAP_MERGE:
        return merge_op(s, l, b, op, err);
    default:
        return rb_error_set(err, EINVAL, "%s: unknown bitmap operation", s->name);
    }
}

int rb_qcow2_bitmap_apply(struct rb_image *img, const char *name,
                          const struct rb_qcow2_bitmap_op *ops, size_t nb_ops,
                          struct rb_error *err)
{
    struct qcow2_bitmap_list l = {0};
    struct qcow2_state *s;
    int ret;

    if (!qcow2_is_qcow2(img))
        return rb_error_set(err, EINVAL, "%s: not a qcow2 image", img->filename);
    s = img->priv;
    if (!s->w)
        return rb_error_set(err, EROFS, "%s: image is not open for writing", s->name);
    pthread_mutex_lock(&s->lock);
    ret = qcow2_bitmaps_load(s, err);
    if (ret == 0 && dup_list(&s->bitmaps, &l) < 0)
        ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    for (size_t i = 0; ret == 0 && i < nb_ops; i++)
        ret = apply_one(s, &l, name, &ops[i], err);
    if (ret == 0)
        ret = store(s, &l, s->bitmaps_flagged, err);
    pthread_mutex_unlock(&s->lock);
    qcow2_bitmap_list_free(&l);
    return ret;
}

int qcow2_bitmap_dirty_bytes(struct qcow2_state *s, const char *name, uint64_t *bytes)
{
    struct qcow2_bitmap *b = s->bitmaps_loaded ? find(&s->bitmaps, name) : NULL;
    uint64_t total = 0, g;

    if (!b || b->inconsistent || !b->bits)
        return -ENOENT;
    g = 1ull << b->gbits;
    for (uint64_t i = 0; i < b->nb_bits; i += 8) {
        uint8_t byte = b->bits[i / 8];
        if (!byte)
            continue;
        for (unsigned k = 0; k < 8 && i + k < b->nb_bits; k++) {
            uint64_t start = (i + k) << b->gbits;
            if (byte & (1u << k))
                total += g < s->h.size - start ? g : s->h.size - start;
        }
    }
    *bytes = total;
    return 0;
}

/* ---- convert --bitmaps -------------------------------------------------------- */

/* Lock held on @ss.  The first inconsistent bitmap of @ss, unless skipped. */
static int refuse_broken(struct qcow2_state *ss, bool skip_broken, struct rb_error *err)
{
    for (uint32_t i = 0; i < ss->bitmaps.nb && !skip_broken; i++)
        if (ss->bitmaps.b[i].inconsistent || !ss->bitmaps.b[i].bits)
            return rb_error_set(err, EINVAL, "%s: cannot copy inconsistent bitmap '%s' "
                                "(in use: not saved cleanly); skip it with "
                                "--skip-broken-bitmaps or remove it with 'rblock bitmap "
                                "--remove'", ss->name, ss->bitmaps.b[i].name);
    return 0;
}

int rb_qcow2_bitmaps_copy_check(struct rb_image *src, bool skip_broken,
                                struct rb_error *err)
{
    struct qcow2_state *ss;
    int ret;

    if (!qcow2_is_qcow2(src))
        return rb_error_set(err, ENOTSUP, "%s: format '%s' has no persistent bitmaps",
                            src->filename, src->ops->format);
    ss = src->priv;
    pthread_mutex_lock(&ss->lock);
    ret = qcow2_bitmaps_load(ss, err);
    if (ret == 0)
        ret = refuse_broken(ss, skip_broken, err);
    pthread_mutex_unlock(&ss->lock);
    return ret;
}

int rb_qcow2_bitmaps_copy(struct rb_image *dst, struct rb_image *src, bool skip_broken,
                          void (*skipped)(void *opaque, const char *name), void *opaque,
                          struct rb_error *err)
{
    struct qcow2_bitmap_list l = {0};
    struct qcow2_state *s, *ss;
    int ret;

    if (!qcow2_is_qcow2(dst))
        return rb_error_set(err, ENOTSUP, "%s: format '%s' cannot store bitmaps",
                            dst->filename, dst->ops->format);
    ret = rb_qcow2_bitmaps_copy_check(src, skip_broken, err);
    if (ret < 0)
        return ret;
    s = dst->priv;
    ss = src->priv;
    if (!s->w)
        return rb_error_set(err, EROFS, "%s: image is not open for writing", s->name);
    if (s == ss)
        return rb_error_set(err, EINVAL, "%s: cannot copy bitmaps onto themselves", s->name);
    if (ss->h.size != s->h.size)
        return rb_error_set(err, EINVAL, "%s: bitmaps are for a disk of %" PRIu64 " bytes, "
                            "'%s' has %" PRIu64, ss->name, ss->h.size, s->name, s->h.size);
    /* lock order: source, then destination (two different images) */
    pthread_mutex_lock(&ss->lock);
    pthread_mutex_lock(&s->lock);
    ret = qcow2_bitmaps_load(s, err);
    if (ret == 0 && dup_list(&s->bitmaps, &l) < 0)
        ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    for (uint32_t i = 0; ret == 0 && i < ss->bitmaps.nb; i++) {
        const struct qcow2_bitmap *from = &ss->bitmaps.b[i];
        struct rb_qcow2_bitmap_op op = {
            .kind = RB_QCOW2_BITMAP_ADD,
            .granularity = 1ull << from->gbits,
            .disabled = !(from->flags & QCOW2_BME_FLAG_AUTO),
        };
        if (from->inconsistent || !from->bits) {
            if (skipped)
                skipped(opaque, from->name);
            continue;
        }
        /* as qemu-img: a new bitmap of the same granularity and state, then
         * the source merged into it */
        ret = add(s, &l, from->name, &op, err);
        if (ret == 0)
            merge(&l.b[l.nb - 1], from, s->h.size);
    }
    if (ret == 0)
        ret = store(s, &l, s->bitmaps_flagged, err);
    pthread_mutex_unlock(&s->lock);
    pthread_mutex_unlock(&ss->lock);
    qcow2_bitmap_list_free(&l);
    return ret;
}

/* ---- serving ---------------------------------------------------------------- */

static int usable(struct qcow2_state *s, const char *name, struct qcow2_bitmap **out,
                  struct rb_error *err)
{
    struct qcow2_bitmap *b;
    int ret = qcow2_bitmaps_load(s, err);

    if (ret < 0)
        return ret;
    b = find(&s->bitmaps, name);
    if (!b)
        return rb_error_set(err, ENOENT, "%s: no bitmap '%s'", s->name, name);
    if (b->inconsistent || !b->bits)
        return inconsistent(s, name, err);
    *out = b;
    return 0;
}

int rb_qcow2_bitmap_use(struct rb_image *img, const char *name, struct rb_error *err)
{
    struct qcow2_state *s;
    struct qcow2_bitmap *b;
    int ret;

    if (!qcow2_is_qcow2(img))
        return rb_error_set(err, EINVAL, "%s: not a qcow2 image", img->filename);
    s = img->priv;
    pthread_mutex_lock(&s->lock);
    ret = usable(s, name, &b, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int rb_qcow2_bitmap_extent(struct rb_image *img, const char *name, uint64_t off,
                           uint64_t len, bool *dirty, uint64_t *bytes,
                           struct rb_error *err)
{
    struct qcow2_state *s;
    struct qcow2_bitmap *b = NULL;
    int ret;

    if (!qcow2_is_qcow2(img))
        return rb_error_set(err, EINVAL, "%s: not a qcow2 image", img->filename);
    s = img->priv;
    pthread_mutex_lock(&s->lock);
    ret = usable(s, name, &b, err);
    if (ret == 0) {
        uint64_t i = off >> b->gbits, last, end;
        bool d;

        if (!len || i >= b->nb_bits) {
            pthread_mutex_unlock(&s->lock);
            return rb_error_set(err, EINVAL, "%s: bitmap range %" PRIu64 "+%" PRIu64
                                " is outside the disk", s->name, off, len);
        }
        last = (off + len - 1) >> b->gbits;
        if (last >= b->nb_bits)
            last = b->nb_bits - 1;
        d = bit_at(b->bits, i);
        for (i++; i <= last;) {
            uint8_t whole = d ? 0xff : 0x00;
            if (i % 8 == 0 && i + 8 <= last + 1 && b->bits[i / 8] == whole) {
                i += 8;
                continue;
            }
            if (bit_at(b->bits, i) != d)
                break;
            i++;
        }
        end = i << b->gbits;
        *dirty = d;
        *bytes = end - off < len ? end - off : len;
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_bitmaps_resize(struct qcow2_state *s, struct rb_error *err)
{
    for (uint32_t i = 0; i < s->bitmaps.nb; i++) {
        struct qcow2_bitmap *b = &s->bitmaps.b[i];
        uint64_t nb = bits_for(s, b->gbits), old_bytes = data_bytes(b->nb_bits);
        uint64_t bytes = data_bytes(nb);
        uint8_t *p;

        if (!b->bits)
            continue;
        p = realloc(b->bits, bytes ? bytes : 8);
        if (!p)
            return rb_error_set(err, ENOMEM, "%s: out of memory for bitmap '%s'", s->name,
                                b->name);
        if (bytes > old_bytes)
            memset(p + old_bytes, 0, (size_t)(bytes - old_bytes));
        for (uint64_t k = nb; k < bytes * 8 && k < b->nb_bits; k++)
            p[k / 8] &= (uint8_t)~(1u << (k % 8));
        b->bits = p;
        b->nb_bits = nb;
    }
    return 0;
}
