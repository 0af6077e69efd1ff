/* SPDX-License-Identifier: MIT */
/*
 * info.c - the public description of an open qcow2 image
 * (include/rblock/qcow2.h): header fields, features by name, extensions,
 * snapshots, and a walk over the active L2 tables.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "util/endian.h"
#include "rblock/io.h"
#include "rblock/qcow2.h"

bool rb_qcow2_is(const struct rb_image *img)
{
    return qcow2_is_qcow2(img);
}

const char *rb_qcow2_data_file_name(const struct rb_image *img)
{
    if (qcow2_is_qcow2(img)) {
        const struct qcow2_state *s = img->priv;
        if (s->data_file_path)
            return s->data_file_path;
    }
    return img->filename;
}

static const char *ext_name(uint32_t type)
{
    switch (type) {
    case QCOW2_EXT_BACKING_FORMAT: return "backing format";
    case QCOW2_EXT_FEATURE_TABLE: return "feature name table";
    case QCOW2_EXT_BITMAPS: return "bitmaps";
    case QCOW2_EXT_CRYPTO: return "full disk encryption header";
    case QCOW2_EXT_DATA_FILE: return "external data file";
    default: return "unknown";
    }
}

static const char *builtin_feature(unsigned type, unsigned bit)
{
    static const char *const incompat[] = {"dirty bit", "corrupt bit", "external data file",
                                           "compression type", "extended L2 entries"};
    if (type == 0 && bit < 5)
        return incompat[bit];
    if (type == 1 && bit == 0)
        return "lazy refcounts";
    if (type == 2 && bit == 0)
        return "bitmaps";
    if (type == 2 && bit == 1)
        return "raw external data";
    return NULL;
}

static int add_feature(struct rb_qcow2_info *info, unsigned type, unsigned bit,
                       const char *name)
{
    /* the bits as copied under the lock (a served image may change them) */
    uint64_t bits = type == 0   ? info->incompatible_features
                    : type == 1 ? info->compatible_features
                                : info->autoclear_features;
    struct rb_qcow2_feature *f;

    for (size_t i = 0; i < info->nb_features; i++) {
        if (info->features[i].type == type && info->features[i].bit == bit)
            return 0;
    }
    f = realloc(info->features, (info->nb_features + 1) * sizeof(*f));
    if (!f)
        return -ENOMEM;
    info->features = f;
    f[info->nb_features++] = (struct rb_qcow2_feature){
        .type = type, .bit = bit, .name = name, .set = (bits >> bit) & 1};
    return 0;
}

static int list_features(struct rb_qcow2_info *info, const struct qcow2_header *h)
{
    /* the image's own table first (its names win), then the known bits and
     * any other set bit */
    for (size_t i = 0; i < h->nb_feature_names; i++) {
        const struct qcow2_feature_name *fn = &h->feature_names[i];
        if (fn->type <= 2 && fn->bit < 64 && add_feature(info, fn->type, fn->bit,
                                                         fn->name) < 0)
            return -ENOMEM;
    }
    for (unsigned type = 0; type <= 2; type++) {
        uint64_t bits = type == 0   ? info->incompatible_features
                        : type == 1 ? info->compatible_features
                                    : info->autoclear_features;
        for (unsigned bit = 0; bit < 64; bit++) {
            const char *name = builtin_feature(type, bit);
            if ((name || ((bits >> bit) & 1)) &&
                add_feature(info, type, bit, name ? name : "unknown") < 0)
                return -ENOMEM;
        }
    }
    return 0;
}

/* The bitmaps as the directory on disk describes them (bitmap.c). */
static int read_bitmaps(struct qcow2_state *s, struct rb_qcow2_info *info,
                        struct rb_error *err)
{
    struct qcow2_bitmap_list l;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = qcow2_bitmap_dir_read(s, &l, err);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0 || !l.nb)
        return ret;
    info->bitmaps = calloc(l.nb, sizeof(*info->bitmaps));
    if (!info->bitmaps) {
        qcow2_bitmap_list_free(&l);
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    }
    info->nb_bitmaps = l.nb;
    for (uint32_t i = 0; i < l.nb; i++) {
        const struct qcow2_bitmap *q = &l.b[i];
        uint32_t flags = q->flags | (q->inconsistent ? QCOW2_BME_FLAG_IN_USE : 0);
        info->bitmaps[i] = (struct rb_qcow2_bitmap){
            .name = q->name, .flags = flags, .in_use = q->inconsistent,
            .autom = q->flags & QCOW2_BME_FLAG_AUTO, .type = q->type,
            .granularity = q->gbits < 64 ? 1ull << q->gbits : 0,
            .table_offset = q->table_off, .table_entries = q->table_size};
        l.b[i].name = NULL; /* owned by the info now */
    }
    qcow2_bitmap_list_free(&l);
    /* dirty bytes: from the bits as they are now (loaded once, kept; a
     * damaged table only leaves the count out: info still reports) */
    pthread_mutex_lock(&s->lock);
    if (qcow2_bitmaps_load(s, NULL) == 0)
        for (uint32_t i = 0; i < info->nb_bitmaps; i++)
            info->bitmaps[i].has_dirty =
                qcow2_bitmap_dirty_bytes(s, info->bitmaps[i].name,
                                         &info->bitmaps[i].dirty_bytes) == 0;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static int count_l2(void *opaque, const struct rb_qcow2_l2_summary *l2)
{
    struct rb_qcow2_info *info = opaque;

    info->l2_tables++;
    info->data_clusters += l2->data;
    info->zero_clusters += l2->zero;
    info->compressed_clusters += l2->compressed;
    return 0;
}

int rb_qcow2_get_info(struct rb_image *img, struct rb_qcow2_info *info,
                      struct rb_error *err)
{
    struct qcow2_state *s;
    const struct qcow2_header *h;
    int ret;

    memset(info, 0, sizeof(*info));
    if (!qcow2_is_qcow2(img))
        return rb_error_set(err, EINVAL, "%s: not a qcow2 image", img->filename);
    s = img->priv;
    h = &s->h;
    info->version = h->version;
    info->backing_file_offset = h->backing_file_offset;
    info->backing_file_size = h->backing_file_size;
    info->cluster_bits = h->cluster_bits;
    info->size = h->size;
    info->crypt_method = h->crypt_method;
    info->l1_size = h->l1_size;
    info->l1_table_offset = h->l1_table_offset;
    info->nb_snapshots = h->nb_snapshots;
    info->snapshots_offset = h->snapshots_offset;
    info->compatible_features = h->compatible_features;
    info->refcount_order = h->refcount_order;
    info->header_length = h->header_length;
    info->compression_type = h->compression_type;
    info->cluster_bytes = s->cluster_bytes;
    info->refcount_bits = 1u << h->refcount_order;
    info->compat = h->version == 2 ? "0.10" : "1.1";
    info->compression_name = h->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd"
                                                                           : "zlib";
    info->lazy_refcounts = h->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS;
    info->extended_l2 = s->extended_l2;
    info->data_file_raw = s->data_file_raw;
    info->backing_file = h->backing_file;
    info->backing_format = h->backing_format;
    info->data_file = s->has_data_file ? h->data_file : NULL;
    info->nb_bitmaps = h->nb_bitmaps;
    info->bitmap_directory_offset = h->bitmap_directory_offset;
    info->bitmap_directory_size = h->bitmap_directory_size;
    info->l2_entries = s->l2_entries;
    info->refblock_entries = s->refblock_entries;
    /* what a write to a served image changes (refcount table growth, the
     * dirty bit, autoclear bits, the file size): read in one lock hold */
    pthread_mutex_lock(&s->lock);
    info->refcount_table_offset = h->refcount_table_offset;
    info->refcount_table_clusters = h->refcount_table_clusters;
    info->incompatible_features = h->incompatible_features;
    info->autoclear_features = h->autoclear_features;
    info->dirty = h->incompatible_features & QCOW2_INCOMPAT_DIRTY;
    info->corrupt = h->incompatible_features & QCOW2_INCOMPAT_CORRUPT;
    info->bitmaps_consistent = h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS;
    info->file_size = s->file_size;
    info->reftable_entries = s->reftable_entries;
    for (uint64_t i = 0; i < s->reftable_entries; i++)
        info->refcount_blocks += (s->reftable[i] & QCOW2_REFT_OFFSET_MASK) != 0;
    pthread_mutex_unlock(&s->lock);

    if (list_features(info, h) < 0)
        goto nomem;
    if (h->nb_exts) {
        info->extensions = calloc(h->nb_exts, sizeof(*info->extensions));
        if (!info->extensions)
            goto nomem;
        info->nb_extensions = h->nb_exts;
        for (size_t i = 0; i < h->nb_exts; i++)
            info->extensions[i] = (struct rb_qcow2_extension){
                .type = h->exts[i].type, .length = h->exts[i].length,
                .offset = h->exts[i].offset, .name = ext_name(h->exts[i].type)};
    }
    if (h->nb_snapshots) {
        info->snapshots = calloc(h->nb_snapshots, sizeof(*info->snapshots));
        if (!info->snapshots)
            goto nomem;
        for (uint32_t i = 0; i < h->nb_snapshots; i++) {
            const struct qcow2_snapshot *sn = &s->snapshots[i];
            info->snapshots[i] = (struct rb_qcow2_snapshot){
                .id = sn->id, .name = sn->name, .vm_state_size = sn->vm_state_size,
                .date_sec = sn->date_sec, .date_nsec = sn->date_nsec,
                .vm_clock_nsec = sn->vm_clock_nsec, .disk_size = sn->disk_size,
                .icount = sn->icount, .l1_table_offset = sn->l1_table_offset,
                .l1_size = sn->l1_size};
        }
    }
    ret = read_bitmaps(s, info, err);
    if (ret == 0)
        ret = rb_qcow2_walk_l2(img, count_l2, info, err);
    if (ret < 0) {
        rb_qcow2_info_free(info);
        return ret;
    }
    return 0;
nomem:
    rb_qcow2_info_free(info);
    return rb_error_set(err, ENOMEM, "%s: out of memory", img->filename);
}

void rb_qcow2_info_free(struct rb_qcow2_info *info)
{
    if (!info)
        return;
    free(info->features);
    free(info->extensions);
    free(info->snapshots);
    if (info->bitmaps) {
        for (uint32_t i = 0; i < info->nb_bitmaps; i++)
            free(info->bitmaps[i].name);
        free(info->bitmaps);
    }
    info->bitmaps = NULL;
    info->features = NULL;
    info->extensions = NULL;
    info->snapshots = NULL;
}

/* Count the clusters of one L2 table by type, as qemu-img check counts
 * them: a host cluster (data, or zeros kept allocated), compressed, zero
 * without a host cluster, unallocated.  With extended L2 entries a cluster
 * whose subclusters differ is also counted as partial.  Caller holds the
 * lock. */
static void summarize(struct qcow2_state *s, const void *l2, uint32_t n,
                      struct rb_qcow2_l2_summary *sum)
{
    for (uint32_t i = 0; i < n; i++) {
        uint64_t e = qcow2_l2_entry_get(s, l2, i);
        uint64_t b = qcow2_l2_bitmap_get(s, l2, i);
        bool host = (e & QCOW2_L2E_OFFSET_MASK) ||
                    (s->has_data_file && (e & QCOW2_OFLAG_COPIED));
        uint32_t alloc = (uint32_t)b, zero = (uint32_t)(b >> 32);

        if (e & QCOW2_OFLAG_COMPRESSED) {
            sum->compressed++;
            continue;
        }
        if (!s->extended_l2) {
            if (e & QCOW2_OFLAG_ZERO && !(e & QCOW2_L2E_OFFSET_MASK))
                sum->zero++;
            else if (host)
                sum->data++;
            else
                sum->unallocated++;
            continue;
        }
        if (host)
            sum->data++;
        else if (zero)
            sum->zero++;
        else
            sum->unallocated++;
        if ((host && alloc != 0xffffffffu) || (!host && zero && zero != 0xffffffffu))
            sum->partial++;
    }
}

int rb_qcow2_walk_l2(struct rb_image *img,
                     int (*fn)(void *opaque, const struct rb_qcow2_l2_summary *l2),
                     void *opaque, struct rb_error *err)
{
    struct qcow2_state *s;
    uint64_t span;

    if (!qcow2_is_qcow2(img))
        return rb_error_set(err, EINVAL, "%s: not a qcow2 image", img->filename);
    s = img->priv;
    span = (uint64_t)s->cluster_bytes << s->l2_bits;
    for (uint64_t i = 0; i < s->h.l1_size; i++) {
        struct rb_qcow2_l2_summary sum = {.l1_index = i};
        uint64_t l2_off;
        void *l2;
        int ret;

        pthread_mutex_lock(&s->lock);
        sum.l1_entry = s->l1[i];
        pthread_mutex_unlock(&s->lock);
        if (!(sum.l1_entry & QCOW2_L1E_OFFSET_MASK))
            continue;
        sum.guest_start = i * span;
        if (sum.guest_start >= s->h.size)
            sum.guest_bytes = 0;
        else
            sum.guest_bytes = s->h.size - sum.guest_start < span
                                  ? s->h.size - sum.guest_start : span;
        pthread_mutex_lock(&s->lock);
        ret = qcow2_l2_offset(s, i, &l2_off, err);
        if (ret == 0) {
            sum.l2_offset = l2_off;
            ret = qcow2_cache_get(s->l2_cache, l2_off, &l2);
            if (ret < 0) {
                rb_error_errno(err, -ret, "%s: cannot read L2 table at 0x%" PRIx64,
                               s->name, l2_off);
            } else {
                uint64_t n = (sum.guest_bytes + s->cluster_bytes - 1) / s->cluster_bytes;
                summarize(s, l2, (uint32_t)n, &sum);
                qcow2_cache_put(s->l2_cache, l2);
            }
        }
        pthread_mutex_unlock(&s->lock);
        if (ret < 0)
            return ret;
        ret = fn(opaque, &sum);
        if (ret)
            return ret;
    }
    return 0;
}
