/* SPDX-License-Identifier: MIT */
/*
 * meta.c - the metadata contexts rblock serves (see meta.h).
 */
#include <stdio.h>
#include <string.h>

#include "nbd/meta.h"
#include "nbd/proto.h"

/* base:allocation (proto.md): HOLE where no data is stored, ZERO where the
 * range reads as zeros. */
static uint32_t base_allocation(const struct rb_extent *ext)
{
    return (ext->flags & RB_BS_DATA ? 0 : NBD_STATE_HOLE) |
           (ext->flags & RB_BS_ZERO ? NBD_STATE_ZERO : 0);
}

/* qemu:allocation-depth (QEMU's docs/interop/nbd.txt): 0 when no layer of
 * the chain holds the range, else the depth of the layer that does, the
 * top image being 1. */
static uint32_t allocation_depth(const struct rb_extent *ext)
{
    return ext->flags & RB_BS_ALLOCATED ? ext->depth + 1 : 0;
}

/* The rows of every export; its bitmaps follow. */
static const struct {
    const char *name;
    uint32_t (*status_of)(const struct rb_extent *ext);
} fixed[] = {
    {"base:allocation", base_allocation},
    {"qemu:allocation-depth", allocation_depth},
};
#define NB_FIXED (sizeof(fixed) / sizeof(fixed[0]))

_Static_assert(NB_FIXED + RB_EXPORT_MAX_BITMAPS <= 8 * sizeof(nbd_meta_set),
               "a selection holds one bit per context");

unsigned nbd_meta_count(const struct rb_export *e)
{
    return (unsigned)(NB_FIXED + rb_export_nb_bitmaps(e));
}

void nbd_meta_row(const struct rb_export *e, unsigned i, struct nbd_meta_context *row)
{
    if (i < NB_FIXED) {
        snprintf(row->name, sizeof(row->name), "%s", fixed[i].name);
        row->status_of = fixed[i].status_of;
        row->bitmap = 0;
        return;
    }
    row->bitmap = i - NB_FIXED;
    row->status_of = NULL;
    snprintf(row->name, sizeof(row->name), NBD_META_BITMAP_PREFIX "%s",
             rb_export_bitmap(e, row->bitmap));
}

nbd_meta_set nbd_meta_all(const struct rb_export *e)
{
    unsigned n = nbd_meta_count(e);

    return n >= 32 ? ~(nbd_meta_set)0 : ((nbd_meta_set)1 << n) - 1;
}

nbd_meta_set nbd_meta_query(const struct rb_export *e, const uint8_t *q, uint32_t qlen,
                            bool list)
{
    nbd_meta_set sel = 0;
    struct nbd_meta_context row;

    for (unsigned i = 0; i < nbd_meta_count(e); i++) {
        size_t len;

        nbd_meta_row(e, i, &row);
        len = strlen(row.name);
        if (qlen == len && memcmp(q, row.name, qlen) == 0)
            sel |= (nbd_meta_set)1 << i;
        else if (list && qlen > 0 && qlen < len && q[qlen - 1] == ':' &&
                 memcmp(q, row.name, qlen) == 0)
            sel |= (nbd_meta_set)1 << i;
    }
    return sel;
}
