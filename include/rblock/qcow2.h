/* SPDX-License-Identifier: MIT */
/*
 * qcow2.h - what the qcow2 driver tells about an open image beyond the
 * rb_image interface: header, features, extensions, snapshots, the L1/L2
 * structure, and the consistency check.  Used by `rblock info|map|check`
 * and the JSON-RPC server.  Plain structs, no JSON library.
 *
 * Every function takes an image opened by rb_image_open; for one that is
 * not qcow2 they fail with -EINVAL (rb_qcow2_is says beforehand).  They
 * take the image's lock themselves, so they may run while other threads
 * read the image.
 */
#ifndef RBLOCK_QCOW2_H
#define RBLOCK_QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rblock/error.h"
#include "rblock/image.h"

/* True when @img (one layer) is a qcow2 image. */
bool rb_qcow2_is(const struct rb_image *img);

/* The file holding @img's guest data: the external data file of a qcow2
 * image when it has one, else img->filename.  Never NULL. */
const char *rb_qcow2_data_file_name(const struct rb_image *img);

struct rb_qcow2_feature {
    unsigned type;    /* 0 incompatible, 1 compatible, 2 autoclear */
    unsigned bit;
    const char *name; /* from the image's table or our own; never NULL */
    bool set;         /* the bit is set in the header */
};

struct rb_qcow2_extension {
    uint32_t type;
    uint32_t length;
    uint64_t offset;  /* of the data in the file */
    const char *name; /* "backing format", ..., "unknown" */
};

struct rb_qcow2_snapshot {
    const char *id;
    const char *name;
    uint64_t vm_state_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t disk_size;
    uint64_t icount;  /* UINT64_MAX when absent */
    uint64_t l1_table_offset;
    uint32_t l1_size;
};

struct rb_qcow2_bitmap {
    char *name;           /* owned by the info */
    uint64_t granularity; /* bytes per bit */
    uint32_t flags;       /* raw: bit 0 in use, bit 1 auto */
    bool in_use, autom;   /* flags decoded ("in-use", "auto" in qemu-img) */
    uint8_t type;         /* 1: dirty tracking bitmap */
    uint64_t table_offset;
    uint32_t table_entries;
    bool has_dirty;       /* dirty_bytes known: a consistent bitmap whose
                             table could be read (as now, live) */
    uint64_t dirty_bytes; /* bytes of the disk its dirty granules cover
                             (qemu's query-block "count") */
};

struct rb_qcow2_info {
    /* header, as on disk (v2 images: the values the spec implies) */
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible_features, compatible_features, autoclear_features;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;

    /* derived */
    uint32_t cluster_bytes;
    uint32_t refcount_bits;
    const char *compat;           /* "0.10" (v2) or "1.1" (v3) */
    const char *compression_name; /* "zlib", "zstd" */
    bool dirty, corrupt, lazy_refcounts, extended_l2, data_file_raw;
    bool bitmaps_consistent;      /* autoclear bit 0 */
    const char *backing_file;     /* NULL when none */
    const char *backing_format;
    const char *data_file;        /* as stored, NULL when none */
    uint64_t file_size;

    struct rb_qcow2_feature *features; /* every set bit plus named ones */
    size_t nb_features;
    struct rb_qcow2_extension *extensions;
    size_t nb_extensions;
    uint32_t nb_bitmaps;
    uint64_t bitmap_directory_offset, bitmap_directory_size;
    struct rb_qcow2_bitmap *bitmaps;   /* nb_bitmaps entries (directory read) */
    struct rb_qcow2_snapshot *snapshots;

    /* layout of the active L1/L2 tables and refcounts */
    uint64_t l2_tables;           /* allocated L1 entries */
    uint32_t l2_entries;          /* entries per L2 table */
    uint64_t data_clusters;       /* with a host cluster (data or zeros kept
                                     allocated); + compressed = qemu-img
                                     check's allocated-clusters */
    uint64_t zero_clusters;       /* reading zeros, no host cluster */
    uint64_t compressed_clusters;
    uint64_t reftable_entries;
    uint64_t refcount_blocks;     /* allocated refcount table entries */
    uint32_t refblock_entries;    /* refcounts per block */
};

/*
 * Fill @info for the qcow2 image @img (one layer).  Walks the active L2
 * tables to count clusters (cost grows with the metadata, not the virtual
 * size).  Strings point into @img: valid until it is closed.  Free with
 * rb_qcow2_info_free.  Returns 0 or -errno with @err set.
 */
int rb_qcow2_get_info(struct rb_image *img, struct rb_qcow2_info *info,
                      struct rb_error *err);
void rb_qcow2_info_free(struct rb_qcow2_info *info);

/* One allocated L2 table of the active L1 table. */
struct rb_qcow2_l2_summary {
    uint64_t l1_index;
    uint64_t l1_entry;     /* raw, flags included */
    uint64_t l2_offset;
    uint64_t guest_start;  /* first guest byte it maps */
    uint64_t guest_bytes;  /* bytes it maps (the last may be shorter) */
    uint32_t data;         /* with a host cluster (data or allocated zeros) */
    uint32_t zero;         /* zeros without a host cluster */
    uint32_t compressed, unallocated;
    uint32_t partial;      /* extended L2: of those, clusters whose
                              subclusters are not all alike */
};

/*
 * Call @fn for each allocated L2 table in L1 order; stops when it returns
 * non-zero (returned as is).  Returns 0 or -errno with @err set.
 */
int rb_qcow2_walk_l2(struct rb_image *img,
                     int (*fn)(void *opaque, const struct rb_qcow2_l2_summary *l2),
                     void *opaque, struct rb_error *err);

/* ---- persistent dirty bitmaps (bitmap.c) --------------------------------- */

enum rb_qcow2_bitmap_op_kind {
    RB_QCOW2_BITMAP_ADD,
    RB_QCOW2_BITMAP_REMOVE,
    RB_QCOW2_BITMAP_CLEAR,
    RB_QCOW2_BITMAP_ENABLE,
    RB_QCOW2_BITMAP_DISABLE,
    RB_QCOW2_BITMAP_MERGE,
};

/* One operation of qemu-img bitmap. */
struct rb_qcow2_bitmap_op {
    enum rb_qcow2_bitmap_op_kind kind;
    uint64_t granularity;        /* ADD: bytes per bit, 0 for the default
                                    (the cluster size within 4 KiB..64 KiB) */
    bool disabled;               /* ADD: created disabled (not "auto") */
    const char *source;          /* MERGE: the bitmap merged in */
    struct rb_image *source_img; /* MERGE: its image (a qcow2 of the same
                                    virtual size), NULL for @img itself */
};

/*
 * Apply @ops in order to bitmap @name of @img (opened read-write), as
 * qemu-img bitmap does, and write the result atomically: new bitmap
 * tables and directory are written and synced, then the header switches
 * to them in one write, then the old clusters are freed.  On any error
 * nothing on disk changes (at worst a few clusters leak).  An
 * inconsistent (in_use) bitmap may only be removed.  Takes the lock.
 * Returns 0 or -errno with @err set.
 */
int rb_qcow2_bitmap_apply(struct rb_image *img, const char *name,
                          const struct rb_qcow2_bitmap_op *ops, size_t nb_ops,
                          struct rb_error *err);

/*
 * Make bitmap @name of @img ready for rb_qcow2_bitmap_extent: it must
 * exist and be consistent (not in_use on disk).  Loads it (one bit per
 * granule).  Takes the lock.  Returns 0 or -errno with @err set.
 */
int rb_qcow2_bitmap_use(struct rb_image *img, const char *name, struct rb_error *err);

/*
 * The run of [@off, @off + @len) that is all dirty or all clean in bitmap
 * @name (prepared by rb_qcow2_bitmap_use), as it is now (writes to @img
 * mark it): *dirty and *bytes (> 0, at most @len).  Takes the lock.
 * Returns 0 or -errno with @err set.
 */
int rb_qcow2_bitmap_extent(struct rb_image *img, const char *name, uint64_t off,
                           uint64_t len, bool *dirty, uint64_t *bytes,
                           struct rb_error *err);

/*
 * For convert --bitmaps, before the output is made: @src must be a qcow2
 * image (ENOTSUP otherwise) whose top-layer bitmaps are all consistent,
 * unless @skip_broken (EINVAL naming the first one left in_use).  Loads
 * the source's bitmaps.  Takes the lock.  Returns 0 or -errno with @err set.
 */
int rb_qcow2_bitmaps_copy_check(struct rb_image *src, bool skip_broken,
                                struct rb_error *err);

/*
 * Copy every persistent bitmap of @src's top layer into @dst (qcow2 open
 * for writing, the same virtual size, typically a fresh convert output),
 * as qemu-img convert --bitmaps does: the same name, granularity and
 * enabled state, and the same dirty bits; all written in one atomic
 * switch (as rb_qcow2_bitmap_apply).  An inconsistent (in_use) bitmap of
 * @src is refused (EINVAL) unless @skip_broken: then @skipped (may be
 * NULL) is called with its name and it is left out.  A name @dst already
 * has fails with EEXIST.  Takes both locks.  Returns 0 or -errno with
 * @err set.
 */
int rb_qcow2_bitmaps_copy(struct rb_image *dst, struct rb_image *src, bool skip_broken,
                          void (*skipped)(void *opaque, const char *name), void *opaque,
                          struct rb_error *err);

/* ---- consistency check (check.c) --------------------------------------- */

enum rb_qcow2_problem_kind {
    RB_QCOW2_LEAK,       /* refcount higher than references: wasted space */
    RB_QCOW2_CORRUPTION, /* refcount too low, bad offsets, overlaps...     */
};

struct rb_qcow2_problem {
    enum rb_qcow2_problem_kind kind;
    uint64_t host_off;   /* cluster concerned, UINT64_MAX when none */
    char msg[200];       /* one line, names the cluster and what is wrong */
};

struct rb_qcow2_check {
    uint64_t corruptions;
    uint64_t leaks;
    uint64_t check_errors;        /* things that could not be checked */
    uint64_t image_end_offset;
    uint64_t total_clusters;      /* guest clusters (virtual size) */
    uint64_t allocated_clusters;  /* guest clusters allocated */
    uint64_t fragmented_clusters;
    uint64_t compressed_clusters;
    uint64_t in_flight_clusters;  /* allocated by a write in progress, not yet
                                     linked: counted as referenced */
    struct rb_qcow2_problem *problems; /* at most RB_QCOW2_MAX_PROBLEMS kept */
    size_t nb_problems;
    uint64_t problems_dropped;
};

#define RB_QCOW2_MAX_PROBLEMS 1000

/*
 * Check the qcow2 image @img (one layer): walks the active and snapshot
 * L1/L2 tables, the refcount table and blocks, the header, L1, snapshot
 * table and bitmap directory clusters, and compares the references with
 * the stored refcounts.  Returns 0 when the check ran (the result may
 * still report problems), -errno with @err set when it could not run.
 * Free with rb_qcow2_check_free.  Memory: 4 bytes per cluster of the file
 * (refused above RB_QCOW2_CHECK_MAX_CLUSTERS).
 * Safe on an image that is being written (a served image): the whole
 * check runs in one hold of the image's lock, so it sees one consistent
 * state, and a cluster a write in progress has allocated but not linked
 * yet counts as referenced (in_flight_clusters), never as a leak.
 */
int rb_qcow2_check(struct rb_image *img, struct rb_qcow2_check *res,
                   struct rb_error *err);
void rb_qcow2_check_free(struct rb_qcow2_check *res);

#define RB_QCOW2_CHECK_MAX_CLUSTERS (1ull << 26) /* 256 MiB of counters */

/* ---- host layout (layout.c): what each host cluster holds ------------- */

enum rb_qcow2_host_class {
    RB_QCOW2_HOST_HEADER,        /* the header cluster (and its extensions) */
    RB_QCOW2_HOST_REFTABLE,      /* refcount table */
    RB_QCOW2_HOST_REFBLOCK,      /* refcount blocks */
    RB_QCOW2_HOST_L1,            /* the active L1 table */
    RB_QCOW2_HOST_L2,            /* L2 tables (active and snapshots') */
    RB_QCOW2_HOST_DATA,          /* guest data clusters */
    RB_QCOW2_HOST_COMPRESSED,    /* compressed guest data (bytes, not clusters) */
    RB_QCOW2_HOST_SNAPSHOT,      /* snapshot table and snapshot L1 tables */
    RB_QCOW2_HOST_BITMAP_TABLES, /* bitmap directory and bitmap tables */
    RB_QCOW2_HOST_BITMAP_DATA,   /* bitmap data clusters */
    RB_QCOW2_HOST_FREE,          /* refcount 0, unreferenced */
    RB_QCOW2_HOST_LEAKED,        /* refcount > 0, unreferenced */
    RB_QCOW2_HOST_CLASSES
};

/* Short lower-case name of a class ("header", "refcount table", ...). */
const char *rb_qcow2_host_class_name(enum rb_qcow2_host_class cls);

/*
 * The host file of a qcow2 image folded into @columns columns: column k
 * covers host bytes [k * column_bytes, (k + 1) * column_bytes) and
 * bytes[k * RB_QCOW2_HOST_CLASSES + class] says how many of them hold
 * each class (a cluster shared by two owners counts twice).  Memory:
 * the columns plus a bounded window of per-cluster counters, whatever
 * the size of the file.
 */
struct rb_qcow2_layout {
    uint64_t file_bytes;    /* the image file's size */
    uint64_t span_bytes;    /* drawn: the file rounded up to clusters */
    uint32_t cluster_bytes;
    uint32_t columns;       /* columns used (<= asked) */
    uint64_t column_bytes;  /* host bytes per column (a multiple of 512) */
    uint64_t *bytes;        /* columns * RB_QCOW2_HOST_CLASSES */
    uint64_t total[RB_QCOW2_HOST_CLASSES]; /* bytes of each class */
    struct rb_qcow2_check check; /* the check's figures (problems kept) */
};

/*
 * Fill @out for @img (one qcow2 layer) by one run of the consistency
 * check (rb_qcow2_check's walk and figures; takes the lock).  @columns
 * 1..65536.  Free with rb_qcow2_layout_free.  Returns 0 or -errno with
 * @err set.
 */
int rb_qcow2_layout(struct rb_image *img, uint32_t columns, struct rb_qcow2_layout *out,
                    struct rb_error *err);
void rb_qcow2_layout_free(struct rb_qcow2_layout *l);

/* ---- repair (repair.c) ----------------------------------------------------- */

#define RB_QCOW2_FIX_LEAKS 0x1  /* lower refcounts above the references */
#define RB_QCOW2_FIX_ERRORS 0x2 /* refcounts below the references, COPIED flags */
#define RB_QCOW2_FIX_ALL (RB_QCOW2_FIX_LEAKS | RB_QCOW2_FIX_ERRORS)

struct rb_qcow2_repair {
    struct rb_qcow2_check found; /* the check before any change */
    struct rb_qcow2_check after; /* the check after the repair */
    uint64_t leaks_fixed;        /* as qemu-img check -r's "leaks-fixed" */
    uint64_t corruptions_fixed;  /* ... and "corruptions-fixed" */
    bool rebuilt;                /* the refcount structure was rebuilt */
    bool dirty_cleared;          /* the dirty bit was cleared */
};

/*
 * Repair the qcow2 image @img as qemu-img check -r does: with
 * RB_QCOW2_FIX_LEAKS lower every refcount above the number of references
 * (freeing unreferenced clusters); with RB_QCOW2_FIX_ERRORS also raise
 * refcounts below it, rebuild the refcount structure when it cannot be
 * trusted (a cluster in use with refcount 0, as lazy refcounts leave it
 * after a crash; a broken refcount block), and correct COPIED flags.  When
 * the image is then free of corruptions its dirty and corrupt bits are
 * cleared.
 * Crash-safe at every step: a refcount may be left too high, never too
 * low; a rebuilt structure is durable before the header points at it.
 *
 * @img must be opened read-write (which locks it against other processes)
 * and must not be used by other threads meanwhile.  Leaks only, when the
 * structure must be rebuilt, fails with -EIO and changes nothing.
 * Returns 0 (@res filled: free with rb_qcow2_repair_free) or -errno with
 * @err set; on failure @res holds nothing to free.
 */
int rb_qcow2_repair(struct rb_image *img, unsigned fix, struct rb_qcow2_repair *res,
                    struct rb_error *err);
void rb_qcow2_repair_free(struct rb_qcow2_repair *res);

/* ---- backing file name (backing.c) --------------------------------------- */

/*
 * Record @name (NULL or "": none) and @format (NULL: no backing format
 * extension) as the backing file of the qcow2 image @img, opened
 * read-write, as qemu-img rebase does: the header cluster is rebuilt with
 * every other extension kept, written in one write and synced.  Opens
 * nothing: the caller has checked what @name leads to.  Refuses a name
 * longer than 1023 bytes, a format without a name, and a header that no
 * longer fits in its cluster (nothing written then).  Takes the lock; no
 * other thread may write @img meanwhile.  Returns 0 or -errno with @err set.
 */
int rb_qcow2_set_backing(struct rb_image *img, const char *name, const char *format,
                         struct rb_error *err);

/* ---- internal snapshots (qemu-img snapshot -c/-a/-d) ---------------------- */

enum rb_qcow2_snapshot_op {
    RB_QCOW2_SNAPSHOT_CREATE, /* a new snapshot NAME of the active image */
    RB_QCOW2_SNAPSHOT_APPLY,  /* the active image becomes snapshot NAME */
    RB_QCOW2_SNAPSHOT_DELETE, /* snapshot NAME is removed */
};

/*
 * Create, apply or delete the internal snapshot @name of the qcow2 image
 * @img, opened for writing.  Apply and delete look @name up as an id
 * first, then as a name (qemu's rule); create refuses a name that exists
 * (EEXIST).  Crash-safe: the whole change is switched in by one header
 * write (see lib/qcow2/snapshot_ops.c); on failure the image is as it
 * was.  On success @img is left read-only (its tables in memory describe
 * the old state): close it.  Returns 0 or -errno with @err set (ENOENT: no
 * such snapshot; ERANGE: refcounts too narrow; ENOTSUP: another format,
 * an external data file, or apply of a snapshot of another disk size).
 */
int rb_qcow2_snapshot(struct rb_image *img, enum rb_qcow2_snapshot_op op, const char *name,
                      struct rb_error *err);

#endif
