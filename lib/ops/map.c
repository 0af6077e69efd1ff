/* SPDX-License-Identifier: MIT */
/*
 * map.c - the one model of `qemu-img map`: the chain's extents merged as
 * qemu-img's entry_mergeable merges them.  `rblock map` prints it and the
 * JSON-RPC map method returns it.
 */
#include "rblock/ops.h"

void rb_map_init(struct rb_map_walk *w, rb_block_status_fn fn, void *opaque, uint64_t off,
                 uint64_t end)
{
    *w = (struct rb_map_walk){.block_status = fn, .opaque = opaque, .off = off, .end = end};
}

int rb_map_image_status(void *opaque, uint64_t off, uint64_t len, struct rb_extent *ext,
                        struct rb_error *err)
{
    return rb_image_block_status(opaque, off, len, ext, err);
}

/* qemu-img's entry_mergeable: @b continues @a. */
static bool mergeable(const struct rb_map_entry *a, const struct rb_map_entry *b)
{
    if (a->depth != b->depth || a->present != b->present || a->zero != b->zero ||
        a->data != b->data || a->compressed != b->compressed ||
        a->has_offset != b->has_offset)
        return false;
    return !a->has_offset || a->offset + a->length == b->offset;
}

/* The extent at w->off, as an entry; advances w->off. */
static int fetch(struct rb_map_walk *w, struct rb_map_entry *e, struct rb_error *err)
{
    uint64_t left = w->end - w->off;
    struct rb_extent ext = {0};
    int ret = w->block_status(w->opaque, w->off, left, &ext, err);

    if (ret < 0)
        return ret;
    if (ext.length == 0 || ext.length > left)
        ext.length = left;
    *e = (struct rb_map_entry){
        .start = w->off,
        .length = ext.length,
        .depth = ext.depth, /* as qemu-img: the last layer asked when absent */
        .present = ext.flags & RB_BS_ALLOCATED,
        .zero = ext.flags & RB_BS_ZERO,
        .data = ext.flags & RB_BS_DATA,
        .compressed = ext.flags & RB_BS_COMPRESSED,
        .has_offset = ext.flags & RB_BS_OFFSET_VALID,
        .offset = ext.host_off,
    };
    w->off += ext.length;
    return 0;
}

int rb_map_next(struct rb_map_walk *w, struct rb_map_entry *e, struct rb_error *err)
{
    int ret;

    if (!w->have_pending) {
        if (w->off >= w->end)
            return 0;
        if ((ret = fetch(w, &w->pending, err)) < 0)
            return ret;
        w->have_pending = true;
    }
    while (w->off < w->end) {
        struct rb_map_entry next;

        if ((ret = fetch(w, &next, err)) < 0)
            return ret;
        if (!mergeable(&w->pending, &next)) {
            *e = w->pending;
            w->pending = next;
            return 1;
        }
        w->pending.length += next.length;
    }
    *e = w->pending;
    w->have_pending = false;
    return 1;
}
