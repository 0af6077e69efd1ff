/* SPDX-License-Identifier: MIT */
/*
 * meta.h - NBD metadata contexts (proto.md, "Metadata querying") as rows
 * of one table: a name, and how an extent of the image becomes the status
 * of a block status descriptor.  A connection selects a subset with
 * NBD_OPT_SET_META_CONTEXT; the context id sent to the client is the row's
 * index + 1.  Adding a context is adding a row.
 */
#ifndef RBLOCK_NBD_META_H
#define RBLOCK_NBD_META_H

#include <stdbool.h>
#include <stdint.h>

#include "rblock/image.h"

struct nbd_meta_context {
    const char *name; /* "namespace:leaf", as the client asks for it */
    /* The descriptor status of an extent of rb_image_block_status. */
    uint32_t (*status_of)(const struct rb_extent *ext);
};

/* Every context the server offers, and how many. */
extern const struct nbd_meta_context nbd_meta_contexts[];
extern const unsigned nbd_meta_count;

/* A selection: bit i set when row i is selected (row i has id i + 1). */
typedef uint32_t nbd_meta_set;

/* The rows a query selects.  SET (@list false) matches exact names only;
 * LIST also takes a bare namespace ("base:") for every row in it.  A query
 * naming nothing we offer selects nothing (not an error: proto.md). */
nbd_meta_set nbd_meta_query(const uint8_t *q, uint32_t qlen, bool list);

/* Every row (LIST without queries). */
nbd_meta_set nbd_meta_all(void);

/* The context id of row @i. */
static inline uint32_t nbd_meta_id(unsigned i)
{
    return i + 1;
}

#endif
