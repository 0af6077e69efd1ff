/* SPDX-License-Identifier: MIT */
/*
 * jsonrpc_memdisk.h - a JSON-RPC backend over memory for the unit tests
 * (header-only: each unit test is one program).
 */
#ifndef TEST_JSONRPC_MEMDISK_H
#define TEST_JSONRPC_MEMDISK_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "jsonrpc/rpc.h"

/* ---- a memory disk: 8 MiB, extents of 64 KiB, data where written ----- */

#define DISK_BYTES (8u << 20)
#define CHUNK (64u << 10)

struct memdisk {
    uint8_t *bytes;
    bool written[DISK_BYTES / CHUNK];
    bool read_only;
    int fail_errno; /* next I/O fails with this */
    unsigned flushes;
};

static uint64_t md_size(void *o)
{
    return DISK_BYTES;
}

static bool md_ro(void *o)
{
    return ((struct memdisk *)o)->read_only;
}

static int md_fail(struct memdisk *d, struct rb_error *err)
{
    int e = d->fail_errno;
    d->fail_errno = 0;
    return rb_error_set(err, e, "memdisk: injected failure");
}

static int md_read(void *o, void *buf, uint64_t off, size_t len, struct rb_error *err)
{
    struct memdisk *d = o;
    if (d->fail_errno)
        return md_fail(d, err);
    memcpy(buf, d->bytes + off, len);
    return 0;
}

static void mark(struct memdisk *d, uint64_t off, uint64_t len, bool v)
{
    for (uint64_t c = off / CHUNK; c * CHUNK < off + len; c++)
        d->written[c] = v;
}

static int md_write(void *o, const void *buf, uint64_t off, size_t len, unsigned flags,
                    struct rb_error *err)
{
    struct memdisk *d = o;
    if (d->fail_errno)
        return md_fail(d, err);
    memcpy(d->bytes + off, buf, len);
    mark(d, off, len, true);
    return 0;
}

static int md_zero(void *o, uint64_t off, uint64_t len, unsigned flags, struct rb_error *err)
{
    struct memdisk *d = o;
    if (d->fail_errno)
        return md_fail(d, err);
    memset(d->bytes + off, 0, len);
    return 0;
}

static int md_trim(void *o, uint64_t off, uint64_t len, struct rb_error *err)
{
    struct memdisk *d = o;
    memset(d->bytes + off, 0, len);
    mark(d, off, len, false);
    return 0;
}

static int md_flush(void *o, struct rb_error *err)
{
    struct memdisk *d = o;
    if (d->fail_errno)
        return md_fail(d, err);
    d->flushes++;
    return 0;
}

static int md_bs(void *o, uint64_t off, uint64_t len, struct rb_extent *ext,
                 struct rb_error *err)
{
    struct memdisk *d = o;
    uint64_t c = off / CHUNK;
    bool w = d->written[c];
    uint64_t end = (c + 1) * CHUNK;

    while (end < DISK_BYTES && d->written[end / CHUNK] == w)
        end += CHUNK;
    ext->length = end - off < len ? end - off : len;
    ext->flags = w ? RB_BS_DATA | RB_BS_ALLOCATED | RB_BS_OFFSET_VALID : RB_BS_ZERO;
    ext->depth = 0;
    ext->host_off = off + 0x50000;
    return 0;
}

static json_t *md_info(void *o, bool chain, struct rb_error *err)
{
    if (chain)
        return json_pack("[{s:s}]", "format", "mem");
    return json_pack("{s:s, s:I}", "format", "mem", "virtual-size", (json_int_t)DISK_BYTES);
}

static json_t *md_check(void *o, struct rb_error *err)
{
    return json_pack("{s:i}", "corruptions", 0);
}

static json_t *md_stats(void *o, struct rb_error *err)
{
    rb_error_set(err, EIO, "stats are broken today");
    return NULL;
}

static const struct rb_rpc_backend_ops md_ops = {
    .size = md_size,
    .read_only = md_ro,
    .read = md_read,
    .write = md_write,
    .write_zeroes = md_zero,
    .trim = md_trim,
    .flush = md_flush,
    .block_status = md_bs,
    .info = md_info,
    .check = md_check,
    .stats = md_stats,
};

static struct memdisk disk;
static struct rb_rpc_backend be = {&md_ops, &disk};

static int setup(void **state)
{
    memset(&disk, 0, sizeof(disk));
    disk.bytes = malloc(DISK_BYTES);
    for (size_t i = 0; i < DISK_BYTES; i++)
        disk.bytes[i] = (uint8_t)(i * 7 + (i >> 9));
    return 0;
}

static int teardown(void **state)
{
    free(disk.bytes);
    return 0;
}


#endif
