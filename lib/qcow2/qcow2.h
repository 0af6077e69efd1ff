/* SPDX-License-Identifier: MIT */
/*
 * qcow2.h - internal contract of the qcow2 driver (not installed).
 *
 * On-disk names follow QEMU's docs/interop/qcow2.txt so that grepping the
 * spec finds the code.  Module map (dependencies point downwards):
 *
 *   qcow2.c     open/close, the rb_image_ops table, locking
 *   write.c     guest writes, zeroes, discard, COW, flush        (write path)
 *   cluster.c   guest->host mapping: L1/L2 lookup, subclusters, reads
 *   alloc.c     cluster allocation, refcount updates, table growth (write path)
 *   refcount.c  reading refcounts at every width (1..64 bits)
 *   cache.c     bounded metadata cache (L2 tables, refcount blocks) with
 *               write-back and the write-ordering dependencies
 *   compress.c  zlib (raw deflate) and zstd clusters
 *   header.c    parse and validate the header and its extensions (a leaf)
 *   check.c     consistency check (reads both mappings and refcounts)
 *   repair.c    check -r: refcount repair and rebuild, COPIED flags, dirty bit
 *   create.c    write a new empty image
 *   bitmap.c    persistent dirty bitmaps: directory, tables, recording
 *
 * Locking: struct qcow2_state.lock (a mutex) guards all metadata and the
 * caches.  Data I/O to clusters already mapped may run outside it.
 */
#ifndef RBLOCK_QCOW2_INT_H
#define RBLOCK_QCOW2_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "rblock/error.h"
#include "rblock/image.h"
#include "rblock/qcow2.h"

/* ---- on-disk constants (qcow2.txt) ------------------------------------ */

#define QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */

#define QCOW2_INCOMPAT_DIRTY (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ull << 4)
#define QCOW2_INCOMPAT_MASK 0x1full

#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)

#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)
#define QCOW2_AUTOCLEAR_MASK 0x3ull

#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* Header extension types. */
#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

/* L1 / L2 / refcount-table entries. */
#define QCOW2_OFLAG_COPIED (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO (1ull << 0)
#define QCOW2_L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_L2E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_REFT_OFFSET_MASK 0xfffffffffffffe00ull
#define QCOW2_L1E_RESERVED_MASK 0x7f000000000001ffull
#define QCOW2_L2E_STD_RESERVED_MASK 0x3f000000000001feull

/* Extended L2: the second 64-bit word holds allocation (bits 0..31) and
 * zero (bits 32..63) bitmaps of 32 subclusters. */
#define QCOW2_SUBCLUSTERS 32

/* Limits, as QEMU's (block/qcow2.h). */
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MAX_L1_BYTES (32u << 20)
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)
#define QCOW2_MAX_SNAPSHOTS 65536
#define QCOW2_MAX_SNAPSHOTS_BYTES (64u << 20)
#define QCOW2_MAX_BACKING_NAME 1023
#define QCOW2_MAX_VIRTUAL_SIZE (1ull << 55) /* 32 MiB L1 * 8 KiB... capped */

/* ---- parsed header ------------------------------------------------------ */

struct qcow2_feature_name {
    uint8_t type; /* 0 incompatible, 1 compatible, 2 autoclear */
    uint8_t bit;
    char name[47]; /* NUL-terminated (46 bytes on disk) */
};

struct qcow2_ext {
    uint32_t type;
    uint32_t length;
    uint64_t offset; /* of the data in the file */
};

struct qcow2_header {
    uint32_t version; /* 2 or 3 */
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
    /* v3 (v2 values: as the spec implies) */
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order; /* 4 for v2 */
    uint32_t header_length;  /* 72 for v2 */
    uint8_t compression_type;

    /* extensions */
    char *backing_file;   /* NULL when none */
    char *backing_format; /* NULL when absent */
    char *data_file;      /* external data file name, NULL when none */
    struct qcow2_feature_name *feature_names;
    size_t nb_feature_names;
    struct qcow2_ext *exts; /* every extension seen, known or not */
    size_t nb_exts;
    uint32_t nb_bitmaps;              /* from the bitmaps extension */
    uint64_t bitmap_directory_size;
    uint64_t bitmap_directory_offset;
};

/*
 * Parse and validate the header at the start of @fd (file size @file_size).
 * Every field is checked as the spec and QEMU's limits say; unknown
 * incompatible bits are refused naming them from the feature-name table.
 * On success fills @h (free with qcow2_header_free).  Returns 0 or -errno
 * with @err set, the message prefixed with @name.
 */
int qcow2_header_read(int fd, const char *name, uint64_t file_size,
                      struct qcow2_header *h, struct rb_error *err);
int qcow2_header_parse(const uint8_t *buf, size_t buf_len, const char *name,
                       uint64_t file_size, struct qcow2_header *h,
                       struct rb_error *err);
void qcow2_header_free(struct qcow2_header *h);

/* ---- metadata cache ----------------------------------------------------- */

/*
 * A bounded cache of cluster-sized metadata tables (L2 tables, refcount
 * blocks).  Entries are looked up by host offset, pinned while used, and
 * evicted LRU.  Dirty entries are written back on eviction or flush.
 * Write ordering (DESIGN.md section 4) lives here: a cache may depend on
 * another (L2 cache depends on the refcount cache): before any dirty
 * entry of the dependent cache is written, the cache it depends on is
 * flushed and, with barriers on, fdatasync'ed.
 */
struct qcow2_cache;

/* A cache of tables of @entry_bytes read from / written to @fd, using at
 * most max(@max_bytes, 2 * entry_bytes) bytes.  Barriers are on.  NULL on
 * ENOMEM.  get/get_empty return -ENOMEM when every slot is pinned. */
struct qcow2_cache *qcow2_cache_new(int fd, size_t entry_bytes, size_t max_bytes);
void qcow2_cache_free(struct qcow2_cache *c);
/* Get a pinned pointer to the table at @host_off, reading it if needed.
 * Returns 0 or -errno. */
int qcow2_cache_get(struct qcow2_cache *c, uint64_t host_off, void **table);
/* Like get, but for a newly allocated table: no read, zero-filled. */
int qcow2_cache_get_empty(struct qcow2_cache *c, uint64_t host_off, void **table);
void qcow2_cache_put(struct qcow2_cache *c, void *table);
void qcow2_cache_mark_dirty(struct qcow2_cache *c, void *table);
/* Make @c flush @dep (and sync, with barriers) before writing any of its
 * own dirty entries. */
void qcow2_cache_set_dependency(struct qcow2_cache *c, struct qcow2_cache *dep);
void qcow2_cache_set_barriers(struct qcow2_cache *c, bool barriers);
/* Write back every dirty entry (after flushing a dependency), then
 * fdatasync the cache's file when barriers are on. */
int qcow2_cache_flush(struct qcow2_cache *c);
/* Drop an entry without writing it (the cluster was freed). */
void qcow2_cache_discard(struct qcow2_cache *c, uint64_t host_off);
/* Before the next write-back of any dirty entry of @c, fdatasync @fd
 * (with barriers): data written to @fd reaches the disk before the
 * metadata that points at it.  At most two distinct fds are remembered. */
void qcow2_cache_depends_on_flush(struct qcow2_cache *c, int fd);
/* Write back every dirty entry (after the dependency), without a sync.
 * Returns 0 or -errno (the first error; it keeps writing the others). */
int qcow2_cache_write(struct qcow2_cache *c);
bool qcow2_cache_has_dirty(const struct qcow2_cache *c);
/* Number of slots (max_bytes / entry_bytes, at least 2). */
size_t qcow2_cache_entries(const struct qcow2_cache *c);

/* ---- driver state -------------------------------------------------------- */

/*
 * A host cluster that a write in progress has allocated (refcount 1) but
 * not yet linked from an L2 entry: the write puts its data there outside
 * the lock, and only then sets the entry (data before the metadata that
 * points at it).  The record lives on the writer's stack and is on
 * qcow2_state.inflight from the lock hold that allocates the cluster to
 * the lock hold that links it (or gives it up), so whoever holds the lock
 * sees each such cluster either in flight or referenced, never neither:
 * check counts it as referenced (see qcow2_alloc_inflight).
 */
struct qcow2_inflight {
    uint64_t host_off;
    /* The cluster lay past every byte ever written to the file when it
     * was allocated (at or past the file's size): it reads as zeros, so a
     * write that needs zeros around its data writes the data alone. */
    bool fresh_zero;
    struct qcow2_inflight *next;
};

/* ---- persistent dirty bitmaps (bitmap.c; qcow2.txt "Bitmaps") ----------- */

#define QCOW2_BME_FLAG_IN_USE (1u << 0)
#define QCOW2_BME_FLAG_AUTO (1u << 1)
#define QCOW2_BME_RESERVED_FLAGS 0xfffffffcu
#define QCOW2_BME_TYPE_DIRTY 1
#define QCOW2_BME_MIN_GRANULARITY_BITS 9
#define QCOW2_BME_MAX_GRANULARITY_BITS 31
#define QCOW2_BME_MAX_NAME 1023
#define QCOW2_BME_MAX_TABLE_SIZE 0x8000000u  /* entries, as qemu */
#define QCOW2_BME_MAX_PHYS_SIZE 0x20000000u  /* bytes of bitmap data, as qemu */
#define QCOW2_BME_MAX_BITMAPS 65535
#define QCOW2_BME_MAX_DIR_SIZE (64u << 20)
#define QCOW2_BME_TABLE_ALL_ONES 1ull
#define QCOW2_BME_TABLE_RESERVED 0xff000000000001feull

struct qcow2_bitmap {
    char *name;            /* NUL-terminated, 1..1023 bytes on disk */
    uint32_t flags;        /* QCOW2_BME_FLAG_*, as wanted (not in_use) */
    uint8_t type;
    uint8_t gbits;         /* log2 of the granularity */
    uint64_t table_off;    /* bitmap table as on disk */
    uint32_t table_size;   /* entries */
    uint32_t extra_bytes;  /* extra data, kept as it was */
    uint8_t *extra;
    bool inconsistent;     /* in_use on disk when read: kept, never used */
    uint8_t *bits;         /* one bit per granule (LSB first), NULL when
                              not loaded or inconsistent */
    uint64_t nb_bits;
};

struct qcow2_bitmap_list {
    struct qcow2_bitmap *b;
    uint32_t nb;
};

void qcow2_bitmap_list_free(struct qcow2_bitmap_list *l);

struct qcow2_state {
    pthread_mutex_t lock;
    /* Readers hold it shared from mapping to the end of their data reads;
     * writers (which may free a cluster that a later allocation reuses)
     * hold it exclusive.  Lock order: writer lock, data_rw, lock.  Without
     * it a read could map a cluster, lose the CPU while a discard frees it
     * and a write reuses it, then return another offset's data. */
    pthread_rwlock_t data_rw;
    int fd;            /* the image file */
    int data_fd;       /* external data file, or == fd */
    uint64_t file_size;
    bool writable;
    bool barriers;     /* fdatasync between ordered steps */

    struct qcow2_header h;
    uint32_t cluster_bytes;
    uint32_t l2_entries;      /* entries per L2 table */
    uint32_t l2_entry_bytes;  /* 8, or 16 with extended L2 */
    uint32_t subcluster_bytes;
    uint32_t l2_bits;         /* log2(l2_entries) */
    bool extended_l2;
    bool has_data_file;       /* QCOW2_INCOMPAT_DATA_FILE */
    bool data_file_raw;       /* QCOW2_AUTOCLEAR_DATA_FILE_RAW */
    const char *name;         /* img->filename, for messages */
    char *data_file_path;     /* resolved external data file name */
    uint64_t data_file_size;

    uint64_t *l1;             /* host byte order, l1_size entries */
    uint64_t *reftable;       /* host byte order */
    uint64_t reftable_entries;
    uint32_t refblock_entries; /* refcounts per refcount block */

    struct qcow2_cache *l2_cache;
    struct qcow2_cache *refblock_cache;

    struct qcow2_snapshot *snapshots; /* h.nb_snapshots entries */
    uint64_t snapshots_bytes;         /* size of the snapshot table */

    /* qemu reports holes in the file under metadata-preallocated clusters
     * as zero: decided once at open (see qcow2_block_status) */
    bool metadata_prealloc;
    bool metadata_prealloc_checked;

    /* the last compressed cluster read, decompressed, keyed by its L2
     * descriptor; read-only images only (NULL otherwise) */
    uint8_t *zcache;
    uint64_t zcache_entry;

    /* write path */
    uint64_t free_cluster_hint; /* first host cluster index that may be free */
    struct qcow2_inflight *inflight; /* allocated, not yet linked; under lock */
    bool dirty_bit_set;         /* we set QCOW2_INCOMPAT_DIRTY on disk */
    bool open_for_repair;       /* rb_open_opts.repair: metadata only, no
                                   repair at open (check -r repairs) */
    struct qcow2_wstate *w;     /* write.c's private state (NULL read-only) */

    /* persistent bitmaps, loaded on first need (under lock) */
    struct qcow2_bitmap_list bitmaps;
    bool bitmaps_loaded;
    bool bitmaps_flagged;       /* in_use written on disk by us */
};

/* Offset of the refcount block of reftable entry @reftable_index, checked
 * (aligned, inside the file); 0 when unallocated or past the table. */
int qcow2_refblock_offset(struct qcow2_state *s, uint64_t reftable_index,
                          uint64_t *block_off, struct rb_error *err);
/* Refcount of host cluster @cluster_index (0 for past the table).
 * Caller holds the lock.  Returns 0 or -errno. */
int qcow2_refcount_get(struct qcow2_state *s, uint64_t cluster_index,
                       uint64_t *refcount, struct rb_error *err);
/* Read refcount entry @i of a refcount block at width 2^order bits. */
uint64_t qcow2_refblock_get(const void *block, uint32_t order, uint64_t i);
void qcow2_refblock_set(void *block, uint32_t order, uint64_t i, uint64_t value);

/* Decompress one compressed cluster. Returns 0 or -errno (-EIO on bad data). */
int qcow2_decompress(uint8_t type, const void *src, size_t src_len, void *dst,
                     size_t dst_len);
/* Compress; returns the compressed length, or 0 when it does not fit in
 * dst_len (store uncompressed), or -errno. */
long qcow2_compress(uint8_t type, const void *src, size_t src_len, void *dst,
                    size_t dst_len);


/* ---- index math (pure; unit-tested for every cluster size) ------------- */

/* Entries per L2 table: cluster_bytes / 8, or / 16 with extended L2. */
static inline uint32_t qcow2_l2_entries_for(uint32_t cluster_bits, bool extended_l2)
{
    return (uint32_t)1 << (cluster_bits - (extended_l2 ? 4 : 3));
}

/* L1 entries needed to map @size bytes (may exceed 32 bits: check!). */
static inline uint64_t qcow2_l1_entries_for(uint64_t size, uint32_t cluster_bits,
                                            bool extended_l2)
{
    unsigned shift = cluster_bits + (cluster_bits - (extended_l2 ? 4 : 3));

    if (shift >= 64)
        return size ? 1 : 0;
    return (size >> shift) + ((size & ((1ull << shift) - 1)) != 0);
}

/* Compressed cluster descriptor (qcow2.txt "Compressed Clusters Descriptor"):
 * x = 62 - (cluster_bits - 8); bits 0..x-1 host offset, x..61 the number
 * of additional 512-byte sectors. */
static inline void qcow2_compressed_parse(uint64_t l2e, uint32_t cluster_bits,
                                          uint64_t *host_off, uint64_t *bytes)
{
    unsigned shift = 62 - (cluster_bits - 8);
    uint64_t nb_sectors = ((l2e >> shift) & ((1ull << (cluster_bits - 8)) - 1)) + 1;

    *host_off = l2e & ((1ull << shift) - 1);
    *bytes = nb_sectors * 512 - (*host_off & 511);
}

/* ---- mapping (cluster.c) -------------------------------------------------- */

/* The state of one (sub)cluster, as QEMU's QCow2SubclusterType. */
enum qcow2_sc_type {
    QCOW2_SC_UNALLOCATED_PLAIN, /* not allocated: read the backing */
    QCOW2_SC_UNALLOCATED_ALLOC, /* host cluster allocated, subcluster not */
    QCOW2_SC_ZERO_PLAIN,        /* reads zeros, no host cluster */
    QCOW2_SC_ZERO_ALLOC,        /* reads zeros, host cluster kept */
    QCOW2_SC_NORMAL,            /* data at host_off */
    QCOW2_SC_COMPRESSED,        /* compressed cluster */
    QCOW2_SC_INVALID,           /* corrupt bitmap combination */
};

/* Classify entry (@l2e, @bitmap) for subcluster @sc (0 when not extended).
 * @has_data_file: offset 0 with COPIED is a valid data file cluster. */
enum qcow2_sc_type qcow2_sc_type_of(uint64_t l2e, uint64_t bitmap, unsigned sc,
                                    bool extended_l2, bool has_data_file);

struct qcow2_mapping {
    enum qcow2_sc_type type;
    uint64_t bytes;    /* length of the run from guest_off, same type, and
                          host-contiguous for NORMAL/ZERO_ALLOC/UNALLOC_ALLOC */
    uint64_t host_off; /* NORMAL, ZERO_ALLOC, UNALLOCATED_ALLOC: host offset
                          of guest_off (in the data file) */
    uint64_t l2_entry; /* COMPRESSED: the raw descriptor */
};

/* L2 entry @i of a cached (big-endian) table, in host byte order; and the
 * subcluster bitmap (0 without extended L2). */
uint64_t qcow2_l2_entry_get(const struct qcow2_state *s, const void *l2, uint32_t i);
uint64_t qcow2_l2_bitmap_get(const struct qcow2_state *s, const void *l2, uint32_t i);
void qcow2_l2_entry_set(const struct qcow2_state *s, void *l2, uint32_t i, uint64_t e);
void qcow2_l2_bitmap_set(const struct qcow2_state *s, void *l2, uint32_t i, uint64_t b);

/*
 * Validate an L1 entry's L2 offset (aligned, inside the file) and return it
 * (0 when the L1 entry is unallocated).  Caller holds the lock.
 */
int qcow2_l2_offset(struct qcow2_state *s, uint64_t l1_index, uint64_t *l2_off,
                    struct rb_error *err);

/*
 * Get the L2 table covering @guest_off, pinned in s->l2_cache (release it
 * with qcow2_cache_put).  *l2 is NULL when the L1 entry is unallocated (an
 * allocating writer then makes one).  *l2_index is the slot of guest_off.
 * Caller holds the lock.  Returns 0 or -errno with @err set.
 */
int qcow2_l2_get(struct qcow2_state *s, uint64_t guest_off, void **l2,
                 uint32_t *l2_index, struct rb_error *err);

/*
 * Map the run starting at @guest_off, at most @max_bytes long and never
 * crossing an L2 table.  Validates what it reads (alignment, offsets
 * inside the file, reserved bitmap combinations): a corrupt entry is
 * -EIO with a message naming the table and offset.  Caller holds the lock.
 */
int qcow2_get_mapping(struct qcow2_state *s, uint64_t guest_off, uint64_t max_bytes,
                      struct qcow2_mapping *m, struct rb_error *err);

/* The rb_image_ops read of qcow2: qcow2_read under data_rw held shared. */
int qcow2_read_shared(struct rb_image *img, void *buf, uint64_t off, size_t len,
                      struct rb_error *err);
/* Read without taking data_rw: for the write path, which holds it
 * exclusive (copy-on-write reads its own image).  Takes the lock. */
int qcow2_read(struct rb_image *img, void *buf, uint64_t off, size_t len,
               struct rb_error *err);
/* block_status of qcow2 (takes the lock). */
int qcow2_block_status(struct rb_image *img, uint64_t off, uint64_t len,
                       struct rb_extent *ext, struct rb_error *err);

/* Read the compressed cluster @l2e into @dst (cluster_bytes).  Takes no
 * lock.  Returns 0 or -errno with @err set. */
int qcow2_read_compressed(struct qcow2_state *s, uint64_t l2e, void *dst,
                          struct rb_error *err);

/* ---- refcount table (refcount.c) ----------------------------------------- */

/* Load and validate the refcount table (s->reftable).  At open. */
int qcow2_reftable_load(struct qcow2_state *s, struct rb_error *err);

/* ---- snapshots (snapshot.c) ------------------------------------------------ */

struct qcow2_snapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    char *id;
    char *name;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size; /* the large field when present */
    uint64_t disk_size;     /* virtual size at snapshot time (extra data) */
    bool has_disk_size;
    uint64_t icount;        /* -1 when absent */
    uint32_t extra_data_size;
    uint8_t *extra;         /* the extra data as on disk (extra_data_size
                               bytes; NULL when 0), kept when rewritten */
};

/* Read and validate the snapshot table (s->snapshots).  At open. */
int qcow2_snapshots_load(struct qcow2_state *s, struct rb_error *err);
void qcow2_snapshots_free(struct qcow2_state *s);
/* Index of the snapshot whose id is @key, else the first whose name is
 * @key (qemu's find_snapshot_by_id_or_name); -1 when none. */
long qcow2_snapshot_find(const struct qcow2_state *s, const char *key);
/* Read the L1 table of snapshot @sn (host byte order, sn->l1_size entries
 * into a malloc'ed array, at least one entry), checking it lies inside the
 * file.  Lock held or state private.  0 or -errno with @err set. */
int qcow2_snapshot_l1_read(struct qcow2_state *s, const struct qcow2_snapshot *sn,
                           uint64_t **l1, struct rb_error *err);
/* Make the read-only image @img read as snapshot @key (id or name): its L1
 * table and virtual size replace the active ones.  At open. */
int qcow2_snapshot_select(struct rb_image *img, struct qcow2_state *s, const char *key,
                          struct rb_error *err);

/* ---- write path (write.c, alloc.c) ----------------------------------------- */

/*
 * qcow2.c puts these in its rb_image_ops table.
 *
 * qcow2_write_open is called at the end of a read-write open (state fully
 * loaded, lock not held); qcow2_write_close at close before the caches are
 * freed (it flushes and clears the dirty bit).  The rest have the contract
 * of struct rb_image_ops.
 */
int qcow2_write_open(struct rb_image *img, struct qcow2_state *s, struct rb_error *err);
void qcow2_write_close(struct rb_image *img, struct qcow2_state *s);
int qcow2_write(struct rb_image *img, const void *buf, uint64_t off, size_t len,
                unsigned flags, struct rb_error *err);
int qcow2_write_zeroes(struct rb_image *img, uint64_t off, uint64_t len,
                       unsigned flags, struct rb_error *err);
int qcow2_trim(struct rb_image *img, uint64_t off, uint64_t len, struct rb_error *err);
int qcow2_flush(struct rb_image *img, struct rb_error *err);
int qcow2_write_compressed(struct rb_image *img, const void *buf, uint64_t off,
                           size_t len, struct rb_error *err);

/* ---- bitmaps (bitmap.c) ---------------------------------------------------- */

/*
 * Read the bitmap directory of @s as the header locates it and parse its
 * entries (structure only: every entry inside the directory).  @l is
 * empty when the image has no bitmaps.  Bits are not loaded.  Lock held
 * or state private.  0 or -errno (-EINVAL: corrupt) with @err set.
 */
int qcow2_bitmap_dir_read(struct qcow2_state *s, struct qcow2_bitmap_list *l,
                          struct rb_error *err);
/* Check one entry as qemu's check_dir_entry does; 0 or -EINVAL with @err
 * naming the bitmap and what is wrong. */
int qcow2_bitmap_entry_check(struct qcow2_state *s, const struct qcow2_bitmap *b,
                             struct rb_error *err);
/* Read the data clusters of bitmap table @toff (@tsize entries) and call
 * @fn for each data cluster offset (not for all-zeros/all-ones entries).
 * For check and for freeing.  Entries are validated: -EINVAL on a bad
 * one.  Lock held. */
int qcow2_bitmap_table_walk(struct qcow2_state *s, uint64_t toff, uint32_t tsize,
                            int (*fn)(struct qcow2_state *s, uint64_t data_off, void *opaque),
                            void *opaque, struct rb_error *err);
/* Load s->bitmaps (directory, every entry checked, the bits of every
 * consistent bitmap) unless loaded.  Lock held.  0 or -errno. */
int qcow2_bitmaps_load(struct qcow2_state *s, struct rb_error *err);
/* Before the first guest write: load the bitmaps and write the directory
 * back in place with every bitmap flagged in_use (synced).  1 when done
 * (or no bitmaps), 0 when the directory is corrupt (the caller clears the
 * autoclear bit), -errno on error.  Lock held. */
int qcow2_bitmaps_begin_writes(struct qcow2_state *s, struct rb_error *err);
/* Record a guest change of [@off, @off + @len) in every enabled, loaded,
 * consistent bitmap.  Lock held. */
void qcow2_bitmaps_mark(struct qcow2_state *s, uint64_t off, uint64_t len);
/* At a clean close, after a full flush: write every loaded bitmap back
 * (new tables, then the directory without in_use, then the header), free
 * the old clusters.  Lock held (or state private).  0 or -errno. */
int qcow2_bitmaps_close(struct qcow2_state *s, struct rb_error *err);
/* After the virtual size (s->h.size) changed: every loaded, consistent
 * bitmap takes the new number of bits (new ones clean, those past the
 * new end dropped).  Stored by qcow2_bitmaps_close.  Lock held. */
int qcow2_bitmaps_resize(struct qcow2_state *s, struct rb_error *err);
/* Bytes of the disk covered by dirty granules of loaded, consistent
 * bitmap @name (as recorded now, in memory).  Lock held.  0 or -ENOENT
 * (not loaded, missing or inconsistent). */
int qcow2_bitmap_dirty_bytes(struct qcow2_state *s, const char *name, uint64_t *bytes);

/* ---- references and repair (check.c, repair.c) ------------------------------ */

/* References to each host cluster of the file, counted by check.c's walk
 * (saturating at UINT32_MAX). */
struct qcow2_refs {
    uint32_t *refs;
    uint64_t nb; /* clusters counted: the file, rounded up */
};

/*
 * rb_qcow2_check, also handing the references it counted to @keep (owned
 * by the caller, free keep->refs) when @keep is not NULL and the check ran.
 */
int qcow2_check_refs(struct rb_image *img, struct rb_qcow2_check *res,
                     struct qcow2_refs *keep, struct rb_error *err);

/* amend refcount_bits: build a new refcount structure of width 2^@order
 * counting every reference (in clusters nothing references), make it
 * durable, switch the header to it (table and width in one write), then
 * free the old one.  Refused (nothing changed) when the image is corrupt
 * or a count does not fit.  Image open read-write, no other user. */
int qcow2_refcount_change_order(struct rb_image *img, unsigned order, struct rb_error *err);

/* Told of each reference check.c's walk counts (its host bytes and what
 * they hold; a cluster shared by several owners is told once per owner),
 * then of each cluster of the file nothing references, as FREE (refcount
 * 0) or LEAKED. */
struct qcow2_check_observer {
    void (*ref)(void *opaque, uint64_t host_off, uint64_t bytes,
                enum rb_qcow2_host_class cls);
    void *opaque;
};

/*
 * The check, telling @obs (may be NULL) what each host cluster holds, and
 * counting references in windows of at most @window clusters (0: the
 * whole file in one): a file of N clusters is walked ceil(N / window)
 * times in 4 * window bytes.  @keep (NULL, or the whole file in one
 * window) as qcow2_check_refs.  Takes the lock.
 */
int qcow2_check_walk(struct rb_image *img, struct rb_qcow2_check *res,
                     const struct qcow2_check_observer *obs, uint64_t window,
                     struct qcow2_refs *keep, struct rb_error *err);

/* ---- inline index helpers -------------------------------------------------- */

/* Does L2 entry @e point at a cluster whose COPIED flag says whether its
 * refcount is 1 (NORMAL and ZERO_ALLOC clusters, as QEMU's
 * qcow2_get_cluster_type)?  check.c judges the flag, repair.c mends it. */
static inline bool qcow2_l2e_copied_applies(const struct qcow2_state *s, uint64_t e)
{
    if (e & QCOW2_OFLAG_COMPRESSED)
        return false;
    return (e & QCOW2_L2E_OFFSET_MASK) ||
           (s->has_data_file && (e & QCOW2_OFLAG_COPIED) &&
            (s->extended_l2 || !(e & QCOW2_OFLAG_ZERO)));
}

static inline uint64_t qcow2_l1_index(const struct qcow2_state *s, uint64_t guest_off)
{
    return guest_off >> (s->h.cluster_bits + s->l2_bits);
}

static inline uint32_t qcow2_l2_index(const struct qcow2_state *s, uint64_t guest_off)
{
    return (uint32_t)(guest_off >> s->h.cluster_bits) & (s->l2_entries - 1);
}

static inline unsigned qcow2_sc_index(const struct qcow2_state *s, uint64_t guest_off)
{
    return (unsigned)((guest_off & (s->cluster_bytes - 1)) / s->subcluster_bytes);
}

/* True when @img was opened by this driver (its priv is a qcow2_state). */
bool qcow2_is_qcow2(const struct rb_image *img);

static inline struct qcow2_state *qcow2_state_of(struct rb_image *img)
{
    return img->priv;
}

#endif
