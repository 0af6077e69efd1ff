/* SPDX-License-Identifier: MIT */
/*
 * measure.c - the sizes qemu-img measure reports, computed the way QEMU
 * computes them (block/qcow2.c qcow2_measure, qcow2_calc_prealloc_size,
 * qcow2_refcount_metadata_size; block/qcow2-bitmap.c
 * qcow2_get_persistent_dirty_bitmap_size; block/raw-format.c raw_measure),
 * so that the numbers are equal, quirks included.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "rblock/lifecycle.h"
#include "rblock/qcow2.h"

static uint64_t round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

static uint64_t div_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a;
}

/* Refcount blocks and table clusters that count @clusters and themselves:
 * the fixed point, as QEMU finds it. */
static uint64_t refcount_meta_bytes(uint64_t clusters, uint64_t c, unsigned order)
{
    uint64_t per_table = c / 8, per_block = c * 8 / (1ull << order);
    uint64_t table = 0, blocks = 0, n = 0, last;

    do {
        last = n;
        blocks = div_up(clusters + table + blocks, per_block);
        table = div_up(blocks, per_table);
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * c;
}

uint64_t rb_measure_qcow2_full(uint64_t size, uint64_t c, unsigned refcount_order,
                               bool extended_l2)
{
    uint64_t l2e = extended_l2 ? 16 : 8, aligned = round_up(size, c), meta = c, nl2e, nl1e;

    nl2e = round_up(aligned / c, c / l2e);
    meta += nl2e * l2e;
    nl1e = round_up(nl2e * l2e / c, c / 8);
    meta += nl1e * 8;
    meta += refcount_meta_bytes((meta + aligned) / c, c, refcount_order);
    return meta + aligned;
}

/* Bytes of clusters that hold data somewhere in @src's chain, each
 * cluster touched counted whole (qcow2_measure's loop, literally). */
static int data_bytes(struct rb_image *src, uint64_t ssize, uint64_t c, uint64_t *required,
                      struct rb_error *err)
{
    uint64_t off = 0, pnum;

    *required = 0;
    for (; off < ssize; off += pnum) {
        struct rb_extent e;
        uint64_t len = ssize - off;
        int ret;

        if (off >= src->size) { /* the sector rounding past a raw file's end */
            pnum = len;
            continue;
        }
        if (len > src->size - off)
            len = src->size - off;
        ret = rb_image_block_status(src, off, len, &e, err);
        if (ret < 0)
            return ret;
        pnum = e.length;
        if (e.flags & RB_BS_ZERO)
            continue;
        if ((e.flags & (RB_BS_DATA | RB_BS_ALLOCATED)) == (RB_BS_DATA | RB_BS_ALLOCATED)) {
            pnum = round_up(off + pnum, c) - off;
            *required += off % c + pnum;
        }
    }
    return 0;
}

/* Persistent bitmaps of @src's top layer, as qemu sizes them: every
 * bitmap fully allocated, its table, and its directory entry. */
static int bitmaps_bytes(struct rb_image *src, uint64_t c, uint64_t *bytes,
                         struct rb_error *err)
{
    struct rb_qcow2_info info;
    uint64_t dir = 0;
    int ret;

    *bytes = 0;
    ret = rb_qcow2_get_info(src, &info, err);
    if (ret < 0)
        return ret;
    for (uint32_t i = 0; i < info.nb_bitmaps && info.bitmaps; i++) {
        uint64_t g = info.bitmaps[i].granularity ? info.bitmaps[i].granularity : 1;
        uint64_t bm = div_up(div_up(src->size, g), 8), clusters = div_up(bm, c);

        *bytes += clusters * c + round_up(clusters * 8, c);
        dir += round_up(24 + strlen(info.bitmaps[i].name), 8);
    }
    *bytes += round_up(dir, c);
    rb_qcow2_info_free(&info);
    return 0;
}

int rb_measure(struct rb_image *src, const struct rb_measure_opts *o, struct rb_measure *out,
               struct rb_error *err)
{
    const struct rb_qcow2_create_opts *q = &o->q;
    uint64_t c = q->cluster_bytes, virt, required = 0, l2_tables, ssize = 0;
    unsigned order;
    int ret;

    memset(out, 0, sizeof(*out));
    if (src)
        ssize = round_up(src->size, 512); /* bdrv_getlength: whole sectors */
    if (strcmp(o->out_format, "raw") == 0) {
        out->required = src ? ssize : round_up(q->size, 512);
        out->fully_allocated = out->required;
        return 0;
    }
    if (strcmp(o->out_format, "qcow2") != 0)
        return rb_error_set(err, EINVAL, "format '%s' cannot be measured (raw or qcow2)",
                            o->out_format);
    ret = rb_qcow2_check_opts(q, err);
    if (ret < 0)
        return ret;
    order = (unsigned)__builtin_ctz(q->refcount_bits);
    virt = round_up(q->size, c);
    l2_tables = div_up(virt / c, c / (q->extended_l2 ? 16 : 8));
    if (l2_tables * 8 > (32ull << 20) /* QEMU: QCOW_MAX_L1_SIZE */)
        return rb_error_set(err, EINVAL, "the image size is too large (try using a larger "
                            "cluster size)");
    if (src) {
        virt = round_up(ssize, c);
        if (q->backing_file) {
            /* the new backing may share nothing: every cluster counts */
            required = virt;
        } else {
            ret = data_bytes(src, ssize, c, &required, err);
            if (ret < 0)
                return ret;
        }
    }
    if (o->prealloc_full)
        required = virt;
    out->fully_allocated = rb_measure_qcow2_full(virt, c, order, q->extended_l2);
    out->required = out->fully_allocated - virt + required;
    out->has_bitmaps = q->version >= 3 && src && rb_qcow2_is(src);
    if (out->has_bitmaps) {
        struct rb_qcow2_info info;
        ret = rb_qcow2_get_info(src, &info, err);
        if (ret < 0)
            return ret;
        out->has_bitmaps = info.version >= 3;
        rb_qcow2_info_free(&info);
    }
    if (out->has_bitmaps) {
        ret = bitmaps_bytes(src, c, &out->bitmaps, err);
        if (ret < 0)
            return ret;
    }
    return 0;
}
