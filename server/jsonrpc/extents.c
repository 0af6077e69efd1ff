/* SPDX-License-Identifier: MIT */
/*
 * extents.c - block_status (the chain's extents with their flags and
 * depth) and map (merged as `qemu-img map --output=json` and `rblock map`
 * merge them); with a "bitmap" parameter, both give the dirty and clean
 * runs of a bitmap served with `serve -B NAME` instead.  Replies are bounded in extents; a reply that ends early
 * is continued by asking again from where it ends.
 */
#include <errno.h>

#include "jsonrpc/methods.h"
#include "rblock/ops.h"

/* Bytes one extent costs in a reply, charged to the batch's budget. */
#define EXTENT_COST 128

/* How many extents this call may still return (at least one). */
static size_t extent_allowance(struct rpc_call *c)
{
    uint64_t n = c->budget->data_bytes / EXTENT_COST;

    if (n > RB_RPC_MAX_EXTENTS)
        n = RB_RPC_MAX_EXTENTS;
    return n ? (size_t)n : 1;
}

static void charge_extents(struct rpc_call *c, size_t n)
{
    uint64_t cost = (uint64_t)n * EXTENT_COST;

    c->budget->data_bytes =
        cost > c->budget->data_bytes ? 0 : c->budget->data_bytes - cost;
}

/* The bitmap parameter of block_status and map: the runs of [off, end)
 * that are all dirty or all clean in a served bitmap, as {@key, "length",
 * "dirty"}.  At most the call's allowance of runs, as for extents. */
static int bitmap_runs(struct rpc_call *c, const char *name, uint64_t off, uint64_t end,
                       const char *key, json_t **result)
{
    size_t max = extent_allowance(c), n = 0;
    json_t *arr;

    if (!c->be->ops->bitmap_extent)
        return rpc_io_fault(c, -ENOTSUP, NULL);
    if (!(arr = json_array()))
        return rpc_io_fault(c, -ENOMEM, NULL);
    while (off < end && n < max) {
        struct rb_error err = {0};
        uint64_t bytes = 0;
        bool dirty = false;
        int ret = c->be->ops->bitmap_extent(c->be->opaque, name, off, end - off, &dirty,
                                            &bytes, &err);
        if (ret < 0) {
            json_decref(arr);
            if (ret == -ENOENT)
                return rpc_param_fault(c, "%s", err.msg);
            return rpc_io_fault(c, ret, &err);
        }
        if (bytes == 0 || bytes > end - off)
            bytes = end - off; /* a driver bug must not loop forever */
        json_t *e = json_pack("{s:I, s:I, s:b}", key, (json_int_t)off, "length",
                              (json_int_t)bytes, "dirty", dirty);
        if (!e || json_array_append_new(arr, e) != 0) {
            json_decref(arr);
            return rpc_io_fault(c, -ENOMEM, NULL);
        }
        off += bytes;
        n++;
    }
    charge_extents(c, n);
    *result = arr;
    return 0;
}

int rpc_m_block_status(struct rpc_call *c, json_t **result)
{
    uint64_t off = c->a.u[0], len = c->a.u[1], end = off + len;
    size_t max = extent_allowance(c), n = 0;
    json_t *arr;

    /* One rule for length 0 in read, map and block_status: valid (inside
     * the image), and an empty result. */
    if (rpc_check_range(c, off, len) < 0)
        return -1;
    if (c->a.present[2])
        return bitmap_runs(c, c->a.s[2], off, end, "offset", result);
    arr = json_array();
    while (arr && off < end && n < max) {
        struct rb_extent ext = {0};
        struct rb_error err = {0};
        int ret = c->be->ops->block_status(c->be->opaque, off, end - off, &ext, &err);
        if (ret < 0) {
            json_decref(arr);
            return rpc_io_fault(c, ret, &err);
        }
        if (ext.length == 0 || ext.length > end - off)
            ext.length = end - off; /* a driver bug must not loop forever */
        json_t *e = json_pack(
            "{s:I, s:I, s:b, s:b, s:b, s:b, s:i}", "offset", (json_int_t)off, "length",
            (json_int_t)ext.length, "data", !!(ext.flags & RB_BS_DATA), "zero",
            !!(ext.flags & RB_BS_ZERO), "allocated", !!(ext.flags & RB_BS_ALLOCATED),
            "compressed", !!(ext.flags & RB_BS_COMPRESSED), "depth", (int)ext.depth);
        if (!e || json_array_append_new(arr, e) != 0) {
            json_decref(arr);
            return rpc_io_fault(c, -ENOMEM, NULL);
        }
        off += ext.length;
        n++;
    }
    charge_extents(c, n);
    *result = arr;
    return 0;
}

static json_t *map_json(const struct rb_map_entry *e)
{
    /* The fields of qemu-img 7.2 and `rblock map`: "compressed" only
     * splits extents, as there (block_status reports it). */
    json_t *o = json_pack("{s:I, s:I, s:i, s:b, s:b, s:b}", "start", (json_int_t)e->start,
                          "length", (json_int_t)e->length, "depth", (int)e->depth,
                          "present", e->present, "zero", e->zero, "data", e->data);

    if (o && e->has_offset &&
        json_object_set_new(o, "offset", json_integer((json_int_t)e->offset)) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int rpc_m_map(struct rpc_call *c, json_t **result)
{
    uint64_t size = c->be->ops->size(c->be->opaque);
    uint64_t off = c->a.present[0] ? c->a.u[0] : 0;
    uint64_t len = c->a.present[1] ? c->a.u[1] : (off <= size ? size - off : 0);
    size_t max = extent_allowance(c), n = 0;
    struct rb_map_walk w;
    struct rb_map_entry e;
    struct rb_error err = {0};
    json_t *arr;
    int ret = 0;

    if (rpc_check_range(c, off, len) < 0)
        return -1;
    if (c->a.present[2])
        return bitmap_runs(c, c->a.s[2], off, off + len, "start", result);
    if (!(arr = json_array()))
        return rpc_io_fault(c, -ENOMEM, NULL);
    /* At most @max entries: a reply that ends before the range does is
     * continued by the client from where its last entry ends. */
    rb_map_init(&w, c->be->ops->block_status, c->be->opaque, off, off + len);
    while (n < max && (ret = rb_map_next(&w, &e, &err)) > 0) {
        json_t *j = map_json(&e);
        if (!j || json_array_append_new(arr, j) != 0) {
            ret = -ENOMEM;
            break;
        }
        n++;
    }
    if (ret < 0) {
        json_decref(arr);
        return rpc_io_fault(c, ret, &err);
    }
    charge_extents(c, n);
    *result = arr;
    return 0;
}
