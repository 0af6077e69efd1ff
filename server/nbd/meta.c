/* SPDX-License-Identifier: MIT */
/*
 * meta.c - the metadata contexts rblock serves (see meta.h).
 */
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

const struct nbd_meta_context nbd_meta_contexts[] = {
    {"base:allocation", base_allocation},
    {"qemu:allocation-depth", allocation_depth},
};
const unsigned nbd_meta_count = sizeof(nbd_meta_contexts) / sizeof(nbd_meta_contexts[0]);

_Static_assert(sizeof(nbd_meta_contexts) / sizeof(nbd_meta_contexts[0]) <=
                   8 * sizeof(nbd_meta_set),
               "a selection holds one bit per context");

nbd_meta_set nbd_meta_all(void)
{
    return nbd_meta_count >= 32 ? ~(nbd_meta_set)0 : ((nbd_meta_set)1 << nbd_meta_count) - 1;
}

nbd_meta_set nbd_meta_query(const uint8_t *q, uint32_t qlen, bool list)
{
    nbd_meta_set sel = 0;

    for (unsigned i = 0; i < nbd_meta_count; i++) {
        const char *name = nbd_meta_contexts[i].name;
        size_t ns = (size_t)(strchr(name, ':') - name) + 1;

        if (qlen == strlen(name) && memcmp(q, name, qlen) == 0)
            sel |= (nbd_meta_set)1 << i;
        else if (list && qlen == ns && memcmp(q, name, ns) == 0)
            sel |= (nbd_meta_set)1 << i;
    }
    return sel;
}
