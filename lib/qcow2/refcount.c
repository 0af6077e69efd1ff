/* SPDX-License-Identifier: MIT */
/*
 * refcount.c - the refcount table and refcount blocks, read at every width
 * (spec "Host cluster management": refcount_bits = 1 << refcount_order,
 * 1..64 bits; sub-byte widths are packed from the least significant bit,
 * wider ones are big-endian).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "util/endian.h"
#include "rblock/io.h"

uint64_t qcow2_refblock_get(const void *block, uint32_t order, uint64_t i)
{
    const uint8_t *p = block;

    switch (order) {
    case 0: case 1: case 2: {
        unsigned bits = 1u << order;
        unsigned shift = (unsigned)(i & ((8u >> order) - 1)) << order;
        return (p[i >> (3 - order)] >> shift) & ((1u << bits) - 1);
    }
    case 3:
        return p[i];
    case 4:
        return rb_load_be16(p + 2 * i);
    case 5:
        return rb_load_be32(p + 4 * i);
    default:
        return rb_load_be64(p + 8 * i);
    }
}

void qcow2_refblock_set(void *block, uint32_t order, uint64_t i, uint64_t value)
{
    uint8_t *p = block;

    switch (order) {
    case 0: case 1: case 2: {
        unsigned bits = 1u << order;
        unsigned shift = (unsigned)(i & ((8u >> order) - 1)) << order;
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);
        uint8_t *b = &p[i >> (3 - order)];
        *b = (uint8_t)((*b & ~mask) | ((value << shift) & mask));
        return;
    }
    case 3:
        p[i] = (uint8_t)value;
        return;
    case 4:
        rb_store_be16(p + 2 * i, (uint16_t)value);
        return;
    case 5:
        rb_store_be32(p + 4 * i, (uint32_t)value);
        return;
    default:
        rb_store_be64(p + 8 * i, value);
        return;
    }
}

int qcow2_reftable_load(struct qcow2_state *s, struct rb_error *err)
{
    uint64_t bytes = (uint64_t)s->h.refcount_table_clusters * s->cluster_bytes;
    uint8_t *raw;
    int ret;

    /* header.c capped it at QCOW2_MAX_REFTABLE_BYTES and checked it lies
     * inside the file */
    s->reftable_entries = bytes / 8;
    s->reftable = malloc(bytes);
    if (!s->reftable)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    raw = (uint8_t *)s->reftable;
    ret = rb_io_pread(s->fd, raw, bytes, s->h.refcount_table_offset);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot read the refcount table", s->name);
    rb_load_be64_array(s->reftable, s->reftable_entries);
    return 0;
}

int qcow2_refblock_offset(struct qcow2_state *s, uint64_t reftable_index,
                          uint64_t *block_off, struct rb_error *err)
{
    uint64_t off, end;

    *block_off = 0;
    if (reftable_index >= s->reftable_entries)
        return 0;
    off = s->reftable[reftable_index] & QCOW2_REFT_OFFSET_MASK;
    if (!off)
        return 0;
    if (off & (s->cluster_bytes - 1))
        return rb_error_set(err, EIO, "%s: refcount block at 0x%" PRIx64 " is not "
                            "cluster-aligned (cluster size %" PRIu32 ", refcount table "
                            "index %" PRIu64 ")", s->name, off, s->cluster_bytes,
                            reftable_index);
    if (!rb_add_ok(off, s->cluster_bytes, &end) || end > s->file_size)
        return rb_error_set(err, EIO, "%s: refcount block at 0x%" PRIx64 " is past the "
                            "end of the file (size %" PRIu64 ", refcount table index %"
                            PRIu64 ")", s->name, off, s->file_size, reftable_index);
    *block_off = off;
    return 0;
}

int qcow2_refcount_get(struct qcow2_state *s, uint64_t cluster_index, uint64_t *refcount,
                       struct rb_error *err)
{
    uint64_t block_off;
    void *block;
    int ret;

    *refcount = 0;
    ret = qcow2_refblock_offset(s, cluster_index / s->refblock_entries, &block_off, err);
    if (ret < 0 || !block_off)
        return ret;
    ret = qcow2_cache_get(s->refblock_cache, block_off, &block);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot read refcount block at 0x%" PRIx64,
                              s->name, block_off);
    *refcount = qcow2_refblock_get(block, s->h.refcount_order,
                                   cluster_index % s->refblock_entries);
    qcow2_cache_put(s->refblock_cache, block);
    return 0;
}
