/* SPDX-License-Identifier: MIT */
/*
 * amend.c - change a qcow2 image's options in place, as qemu-img amend
 * does (block/qcow2.c qcow2_amend_options, qcow2_upgrade, qcow2_downgrade,
 * qcow2_expand_zero_clusters; qcow2-refcount.c qcow2_change_refcount_order).
 *
 * Every check runs before the first write, so a refusal changes nothing.
 * The header cluster is rebuilt (fields, extensions kept, feature table
 * for v3, backing file name after the extensions) and written in one
 * write, then synced.  Write ordering for the downgrade's zero-cluster
 * expansion: the zeros and the refcounts of new clusters are durable
 * before the L2 entries point at them.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "qcow2/qcow2w.h"
#include "rblock/io.h"
#include "rblock/lifecycle.h"

static int sync_err(struct qcow2_state *s, int ret, const char *what, struct rb_error *err)
{
    return rb_error_errno(err, -ret, "%s: cannot write %s", s->name, what);
}

/* The feature-name table create.c writes into a v3 header (taken from a
 * header built for a small empty image).  Returns its length or 0. */
static size_t feature_table(uint32_t c, uint8_t *out, size_t cap)
{
    struct rb_qcow2_create_opts o;
    struct qcow2w_layout l = {.cluster_bits = qcow2w_log2(c)};
    uint8_t *buf = calloc(1, c);
    size_t n = 0;

    rb_qcow2_create_opts_init(&o);
    o.cluster_bytes = c;
    if (buf && qcow2w_build_header(&o, &l, 0, buf, c, NULL) == 0) {
        for (uint64_t pos = 112; pos + 8 <= c;) {
            uint32_t type = rb_load_be32(buf + pos), len = rb_load_be32(buf + pos + 4);
            uint64_t step = 8 + (((uint64_t)len + 7) & ~7ull);
            if (type == QCOW2_EXT_END || step > c - pos)
                break;
            if (type == QCOW2_EXT_FEATURE_TABLE && step <= cap) {
                memcpy(out, buf + pos, (size_t)step);
                n = (size_t)step;
                break;
            }
            pos += step;
        }
    }
    free(buf);
    return n;
}

/*
 * Rewrite the header cluster for @version with @compat and @autoclear:
 * backing format extension first, the feature table (v3 only), every
 * other extension as it was, the end marker, the backing file name.
 */
static int rewrite_header(struct qcow2_state *s, unsigned version, uint64_t compat,
                          uint64_t autoclear, struct rb_error *err)
{
    uint64_t c = s->cluster_bytes, hl = s->h.header_length, end = c, pos, out;
    uint64_t bf_off = s->h.backing_file_offset, bf_len = s->h.backing_file_size;
    uint64_t new_hl = version >= 3 ? (s->h.version >= 3 && hl > 112 ? hl : 112) : 72;
    uint8_t *old = malloc(c), *buf = calloc(1, c), *ft = malloc(c);
    size_t ft_len = 0;
    int ret;

    if (!old || !buf || !ft) {
        ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        goto out;
    }
    ret = rb_io_pread(s->fd, old, (size_t)c, 0);
    if (ret < 0) {
        ret = rb_error_errno(err, -ret, "%s: cannot read the header", s->name);
        goto out;
    }
    if (bf_off && bf_off < c)
        end = bf_off;
    memcpy(buf, old, 72);
    rb_store_be32(buf + 4, version);
    if (version >= 3) {
        if (s->h.version >= 3)
            memcpy(buf + 72, old + 72, (size_t)(new_hl - 72));
        rb_store_be64(buf + 72, s->h.incompatible_features);
        rb_store_be64(buf + 80, compat);
        rb_store_be64(buf + 88, autoclear);
        rb_store_be32(buf + 96, s->h.refcount_order);
        rb_store_be32(buf + 100, (uint32_t)new_hl);
        ft_len = feature_table((uint32_t)c, ft, c);
    }
    out = new_hl;
    /* two passes over the old extensions: backing format, then the rest */
    for (int pass = 0; pass < 2; pass++) {
        for (pos = hl; pos + 8 <= end;) {
            uint32_t type = rb_load_be32(old + pos), len = rb_load_be32(old + pos + 4);
            uint64_t step = 8 + (((uint64_t)len + 7) & ~7ull);
            bool take = pass == 0 ? type == QCOW2_EXT_BACKING_FORMAT
                                  : type != QCOW2_EXT_BACKING_FORMAT &&
                                        type != QCOW2_EXT_FEATURE_TABLE;

            if (type == QCOW2_EXT_END)
                break;
            if (step > c - pos || out + step > c) {
                ret = rb_error_set(err, ENOSPC, "%s: the header extensions do not fit in "
                                   "a %" PRIu64 "-byte cluster", s->name, c);
                goto out;
            }
            if (take) {
                memcpy(buf + out, old + pos, (size_t)step);
                out += step;
            }
            pos += step;
        }
        /* optional, as QEMU: left out when the cluster has no room */
        if (pass == 0 && ft_len && out + ft_len + 8 + bf_len + 64 <= c) {
            memcpy(buf + out, ft, ft_len);
            out += ft_len;
        }
    }
    out += 8; /* end of extensions */
    if (bf_off) {
        if (out + bf_len > c) {
            ret = rb_error_set(err, ENOSPC, "%s: the backing file name does not fit in the "
                               "header cluster", s->name);
            goto out;
        }
        memcpy(buf + out, old + bf_off, (size_t)bf_len);
        rb_store_be64(buf + 8, out);
    }
    ret = qcow2_header_replace(s, buf, (size_t)c, err);
out:
    free(old);
    free(buf);
    free(ft);
    return ret;
}

/* v2 has no zero flag: zero clusters become data clusters of zeros (or,
 * without a backing file, unallocated ones), as qcow2_expand_zero_clusters.
 * Lock held. */
static int expand_zero_clusters(struct qcow2_state *s, struct rb_error *err)
{
    uint64_t c = s->cluster_bytes;
    uint8_t *zeros = calloc(1, c);
    int ret = 0;

    if (!zeros)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    for (uint64_t i = 0; i < s->h.l1_size && ret == 0; i++) {
        uint64_t l2_off;
        bool changed = false;
        void *l2;

        ret = qcow2_l2_offset(s, i, &l2_off, err);
        if (ret < 0 || !l2_off)
            continue;
        ret = qcow2_cache_get(s->l2_cache, l2_off, &l2);
        if (ret < 0) {
            ret = rb_error_errno(err, -ret, "%s: cannot read L2 table at 0x%" PRIx64, s->name,
                                 l2_off);
            break;
        }
        for (uint32_t j = 0; j < s->l2_entries && ret == 0; j++) {
            uint64_t e = qcow2_l2_entry_get(s, l2, j), host;
            if ((e & QCOW2_OFLAG_COMPRESSED) || !(e & QCOW2_OFLAG_ZERO))
                continue;
            host = e & QCOW2_L2E_OFFSET_MASK;
            if (!host && !s->h.backing_file) {
                qcow2_l2_entry_set(s, l2, j, 0); /* reads zeros anyway */
                changed = true;
                continue;
            }
            if (!host && (ret = qcow2_alloc_cluster(s, &host, err)) < 0)
                break;
            ret = rb_io_pwrite(s->fd, zeros, (size_t)c, host);
            if (ret < 0) {
                ret = sync_err(s, ret, "zeros", err);
                break;
            }
            qcow2_l2_entry_set(s, l2, j, host | QCOW2_OFLAG_COPIED);
            changed = true;
        }
        if (changed)
            qcow2_cache_mark_dirty(s->l2_cache, l2);
        qcow2_cache_put(s->l2_cache, l2);
        /* ORDER: zeros and refcounts durable before the entries (the L2
         * cache flushes the refcount cache first) */
        if (ret == 0 && changed) {
            ret = rb_io_sync(s->fd);
            if (ret == 0)
                ret = qcow2_cache_flush(s->l2_cache);
            if (ret < 0)
                ret = sync_err(s, ret, "L2 tables", err);
        }
    }
    free(zeros);
    return ret;
}

static bool same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Every refusal, before anything is written. */
static int check(struct qcow2_state *s, const struct rb_qcow2_amend *a, unsigned version,
                 unsigned rbits, uint64_t compressed, struct rb_error *err)
{
    if (a->backing_file || a->backing_format) {
        if (!same(a->backing_file, s->h.backing_file) ||
            !same(a->backing_format, s->h.backing_format))
            return rb_error_set(err, EINVAL, "%s: cannot amend the backing file (use "
                                "'rblock rebase' instead)", s->name);
    }
    if (a->lazy_refcounts == 1 && version < 3)
        return rb_error_set(err, EINVAL, "%s: lazy refcounts only supported with "
                            "compatibility level 1.1 and above (use compat=1.1)", s->name);
    if (version < 3 && rbits != 16)
        return rb_error_set(err, EINVAL, a->refcount_bits && a->refcount_bits != 16
                                ? "%s: refcount widths other than 16 bits require "
                                  "compatibility level 1.1 or above (use compat=1.1)"
                                : "%s: compat=0.10 requires refcount_bits=16", s->name);
    if (version < s->h.version) {
        uint64_t incompat = s->h.incompatible_features & ~QCOW2_INCOMPAT_DIRTY;
        /* as qemu: zstd goes (v2 is zlib) unless clusters are compressed with it */
        if ((incompat & QCOW2_INCOMPAT_COMPRESSION) && compressed)
            return rb_error_set(err, ENOTSUP, "%s: cannot downgrade an image with zstd "
                                "compression type and existing compressed clusters (%"
                                PRIu64 ")", s->name, compressed);
        incompat &= ~QCOW2_INCOMPAT_COMPRESSION;
        if (s->has_data_file)
            return rb_error_set(err, ENOTSUP, "%s: cannot downgrade an image with a data "
                                "file", s->name);
        if (incompat)
            return rb_error_set(err, ENOTSUP, "%s: cannot downgrade an image with "
                                "incompatible features 0x%" PRIx64 " set (%s)", s->name,
                                incompat, incompat & QCOW2_INCOMPAT_EXTL2 ? "extended L2"
                                : incompat & QCOW2_INCOMPAT_COMPRESSION ? "zstd compression"
                                : "v3 feature");
        if (s->h.nb_bitmaps)
            return rb_error_set(err, ENOTSUP, "%s: cannot downgrade an image with %" PRIu32
                                " persistent bitmaps (compat=0.10 cannot hold them; "
                                "remove them first with 'rblock bitmap --remove')", s->name,
                                s->h.nb_bitmaps);
    }
    return 0;
}

int rb_qcow2_amend(struct rb_image *img, const struct rb_qcow2_amend *a, struct rb_error *err)
{
    struct qcow2_state *s;
    unsigned version, rbits;
    uint64_t compressed = 0;
    int ret;

    if (!qcow2_is_qcow2(img))
        return rb_error_set(err, EINVAL, "%s: not a qcow2 image", img->filename);
    s = qcow2_state_of(img);
    if (!s->writable || !s->w)
        return rb_error_set(err, EROFS, "%s: cannot amend an image opened read-only",
                            s->name);
    version = a->version ? a->version : s->h.version;
    rbits = a->refcount_bits ? a->refcount_bits : 1u << s->h.refcount_order;
    if (version < s->h.version && (s->h.incompatible_features & QCOW2_INCOMPAT_COMPRESSION)) {
        struct rb_qcow2_info info;
        ret = rb_qcow2_get_info(img, &info, err);
        if (ret < 0)
            return ret;
        compressed = info.compressed_clusters;
        rb_qcow2_info_free(&info);
    }
    pthread_mutex_lock(&s->lock);
    ret = check(s, a, version, rbits, compressed, err);
    if (ret == 0 && a->size && a->size % 512)
        ret = rb_error_set(err, EINVAL, "%s: the new size must be a multiple of 512",
                           s->name);
    /* upgrade first: later steps may need v3 */
    if (ret == 0 && version > s->h.version)
        ret = rewrite_header(s, version, s->h.compatible_features,
                             s->h.autoclear_features & QCOW2_AUTOCLEAR_MASK, err);
    pthread_mutex_unlock(&s->lock);
    if (ret == 0 && rbits != 1u << s->h.refcount_order)
        ret = qcow2_refcount_change_order(img, qcow2w_log2(rbits), err);
    pthread_mutex_lock(&s->lock);
    if (ret == 0 && a->lazy_refcounts >= 0 &&
        !!(s->h.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) != !!a->lazy_refcounts) {
        uint64_t compat = a->lazy_refcounts
                              ? s->h.compatible_features | QCOW2_COMPAT_LAZY_REFCOUNTS
                              : s->h.compatible_features & ~QCOW2_COMPAT_LAZY_REFCOUNTS;
        uint8_t be[8];
        rb_store_be64(be, compat);
        ret = qcow2_header_update(s, 80, be, 8, err);
        if (ret == 0 && !s->barriers && (ret = rb_io_sync(s->fd)) < 0)
            ret = sync_err(s, ret, "the header", err);
        if (ret == 0)
            s->h.compatible_features = compat;
    }
    pthread_mutex_unlock(&s->lock);
    if (ret == 0 && a->size && a->size != img->size)
        ret = rb_qcow2_resize(img, a->size, true, err);
    pthread_mutex_lock(&s->lock);
    /* downgrade last, once v3-only options are gone */
    if (ret == 0 && version < s->h.version) {
        ret = expand_zero_clusters(s, err);
        if (ret == 0) {
            s->h.incompatible_features &= ~QCOW2_INCOMPAT_COMPRESSION;
            ret = rewrite_header(s, version, 0, 0, err);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}
