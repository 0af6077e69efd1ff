/* SPDX-License-Identifier: MIT */
/*
 * qcow2w.h - write-side internals shared by create.c, stream.c, alloc.c
 * and write.c (not installed).  Big-endian helpers, refcount entries at
 * every width, and the header image builder.
 */
#ifndef RBLOCK_QCOW2W_H
#define RBLOCK_QCOW2W_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rblock/error.h"
#include "util/endian.h"
#include "rblock/qcow2-create.h"

static inline uint64_t qcow2w_ref_max(unsigned order)
{
    return order >= 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
}

static inline unsigned qcow2w_log2(uint64_t v)
{
    return 63u - (unsigned)__builtin_clzll(v);
}

/* Where create.c puts the tables of an image it starts. */
struct qcow2w_layout {
    unsigned cluster_bits;
    uint64_t l1_entries;
    uint64_t l1_off;
    uint64_t reftable_off;
    uint32_t reftable_clusters;
};

/*
 * Build the header cluster of a new image into @buf (@cluster_bytes long,
 * zeroed here): header fields, backing format and (when it fits, as QEMU
 * does) feature-name extensions, end marker, backing file name.  Extra
 * incompatible bits (e.g. QCOW2_INCOMPAT_DIRTY) are or'ed in.
 * Returns 0 or -EINVAL when the header does not fit in a cluster.
 */
int qcow2w_build_header(const struct rb_qcow2_create_opts *o,
                        const struct qcow2w_layout *l, uint64_t extra_incompat,
                        uint8_t *buf, size_t cluster_bytes, struct rb_error *err);

/* Entries per L2 table and L1 entries for @o (validated options). */
uint64_t qcow2w_l2_entries(const struct rb_qcow2_create_opts *o);
uint64_t qcow2w_l1_entries(const struct rb_qcow2_create_opts *o);

/* ---- allocation and refcount updates (alloc.c) ------------------------- */

struct qcow2_state;

/*
 * Set the refcount of host cluster @idx to @value (checked against the
 * width's maximum).  The refcount block must exist unless @value is 0.
 * Marks the block dirty in s->refblock_cache (written back before any L2
 * table: the cache dependency).  Caller holds the lock.  0 or -errno.
 */
int qcow2_refcount_set(struct qcow2_state *s, uint64_t idx, uint64_t value,
                       struct rb_error *err);
/* Add @delta to the refcount of @idx; going below 0 or above the maximum
 * is -EIO (corruption) / -ERANGE.  A cluster that drops to 0 lowers the
 * free-cluster hint.  Caller holds the lock. */
int qcow2_refcount_add(struct qcow2_state *s, uint64_t idx, int64_t delta,
                       struct rb_error *err);

/*
 * Allocate one host cluster (the first free one from s->free_cluster_hint)
 * with refcount 1 and return its offset.  Creates the refcount block that
 * must count it (self-describing: placed inside the range it covers) and
 * grows the refcount table when the image outgrows it, each step durable
 * before the structure that points at it.  s->file_size grows to cover the
 * cluster.  Caller holds the lock.  0 or -errno with @err set.
 */
int qcow2_alloc_cluster(struct qcow2_state *s, uint64_t *host_off, struct rb_error *err);

/* Write back the refcount blocks and L2 tables, then sync the file.
 * 0, or -errno with the file named in @err. */
int qcow2_flush_metadata(struct qcow2_state *s, struct rb_error *err);

/* Allocate @n contiguous host clusters (refcount 1 each) and return the
 * offset of the first.  Caller holds the lock.  0 or -errno. */
int qcow2_alloc_clusters(struct qcow2_state *s, uint64_t n, uint64_t *host_off,
                         struct rb_error *err);

struct qcow2_inflight;

/*
 * For a write that drops the lock between allocating a cluster and
 * linking it: allocate as qcow2_alloc_cluster (f->host_off) and put @f
 * (caller-owned, e.g. on the stack) on s->inflight in the same lock hold,
 * so that a check never sees the cluster as leaked.  Caller holds the
 * lock.  0 or -errno with @err set (then @f is not registered).
 */
int qcow2_alloc_inflight(struct qcow2_state *s, struct qcow2_inflight *f,
                         struct rb_error *err);
/*
 * Take @f off s->inflight.  @linked: the L2 entry that references the
 * cluster was set in this same lock hold.  Otherwise the write gave up and
 * nothing references the cluster: its refcount returns to 0 (best effort;
 * if that fails the cluster leaks, which is harmless).  Caller holds the
 * lock.
 */
void qcow2_inflight_end(struct qcow2_state *s, struct qcow2_inflight *f, bool linked);

/* Write @len bytes of header at @off (a field update) and, with barriers,
 * fdatasync.  0 or -errno with @err set. */
int qcow2_header_update(struct qcow2_state *s, uint64_t off, const void *buf, size_t len,
                        struct rb_error *err);

/* Write a whole new header (@len bytes of @buf at offset 0: header,
 * extensions, backing file name), fdatasync it whatever the barrier
 * setting (what it points at was made durable before), and take it as
 * the file now has it into s->h (parsed again, checked as on open).
 * 0 or -errno with @err set; on error s->h is unchanged. */
int qcow2_header_replace(struct qcow2_state *s, const void *buf, size_t len,
                         struct rb_error *err);

/* ---- copy-on-write of shared L2 tables (cow.c) ---------------------------- */

/*
 * Before the write path changes the L2 table *@l2 (pinned) of L1 entry
 * @l1_index: when that entry lacks QCOW_OFLAG_COPIED the table may be
 * shared with a snapshot (refcount > 1), so it is copied to a new
 * cluster, the L1 entry is pointed at the copy, and the old table's
 * refcount drops by one; *@l2 is then the copy (pinned).  Nothing to do
 * for an entry with COPIED.  The data clusters the table references keep
 * their refcounts: the active image reaches them through the copy instead.
 * Caller holds the lock.  0 or -errno with @err set; on error *@l2 has
 * been put and is NULL.
 */
int qcow2_l2_cow(struct qcow2_state *s, uint64_t l1_index, void **l2, struct rb_error *err);

#endif
