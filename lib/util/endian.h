/* SPDX-License-Identifier: MIT */
/*
 * endian.h - big-endian loads and stores at any alignment: the byte order
 * of every qcow2 structure (qcow2.txt: "all numbers in qcow2 are stored in
 * Big Endian byte order") and of NBD messages.  The one codec for both.
 */
#ifndef RBLOCK_UTIL_ENDIAN_H
#define RBLOCK_UTIL_ENDIAN_H

#include <endian.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint16_t rb_load_be16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof(v));
    return be16toh(v);
}

static inline uint32_t rb_load_be32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return be32toh(v);
}

static inline uint64_t rb_load_be64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return be64toh(v);
}

static inline void rb_store_be16(void *p, uint16_t v)
{
    v = htobe16(v);
    memcpy(p, &v, sizeof(v));
}

static inline void rb_store_be32(void *p, uint32_t v)
{
    v = htobe32(v);
    memcpy(p, &v, sizeof(v));
}

static inline void rb_store_be64(void *p, uint64_t v)
{
    v = htobe64(v);
    memcpy(p, &v, sizeof(v));
}

/* A table of @n big-endian 64-bit entries read into @v, converted in place
 * (L1 and refcount tables). */
static inline void rb_load_be64_array(uint64_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        v[i] = be64toh(v[i]);
}

#endif
