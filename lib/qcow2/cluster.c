/* SPDX-License-Identifier: MIT */
/*
 * cluster.c - guest to host mapping through the L1 and L2 tables (spec
 * "Cluster mapping", "Extended L2 Entries"), reads, and block status.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qcow2/qcow2.h"
#include "util/endian.h"
#include "rblock/io.h"

#define L2_BITMAP_ALL_ALLOC 0xffffffffull

enum qcow2_sc_type qcow2_sc_type_of(uint64_t l2e, uint64_t bitmap, unsigned sc,
                                    bool extended_l2, bool has_data_file)
{
    uint64_t off = l2e & QCOW2_L2E_OFFSET_MASK;
    bool normal;

    if (l2e & QCOW2_OFLAG_COMPRESSED)
        return QCOW2_SC_COMPRESSED;
    /* the zero flag (bit 0) is reserved with extended L2 entries */
    if (!extended_l2 && (l2e & QCOW2_OFLAG_ZERO))
        return off ? QCOW2_SC_ZERO_ALLOC : QCOW2_SC_ZERO_PLAIN;
    /* offset 0 is a valid cluster of an external data file; such clusters
     * always have refcount 1, so COPIED tells them from unallocated ones */
    normal = off || (has_data_file && (l2e & QCOW2_OFLAG_COPIED));
    if (!extended_l2)
        return normal ? QCOW2_SC_NORMAL : QCOW2_SC_UNALLOCATED_PLAIN;
    if (normal) {
        /* spec: a subcluster cannot be both allocated and zero */
        if ((bitmap >> 32) & bitmap)
            return QCOW2_SC_INVALID;
        if (bitmap & (1ull << (32 + sc)))
            return QCOW2_SC_ZERO_ALLOC;
        if (bitmap & (1ull << sc))
            return QCOW2_SC_NORMAL;
        return QCOW2_SC_UNALLOCATED_ALLOC;
    }
    /* spec: no allocation bits without a host cluster */
    if (bitmap & L2_BITMAP_ALL_ALLOC)
        return QCOW2_SC_INVALID;
    if (bitmap & (1ull << (32 + sc)))
        return QCOW2_SC_ZERO_PLAIN;
    return QCOW2_SC_UNALLOCATED_PLAIN;
}

uint64_t qcow2_l2_entry_get(const struct qcow2_state *s, const void *l2, uint32_t i)
{
    return rb_load_be64((const uint8_t *)l2 + (size_t)i * s->l2_entry_bytes);
}

uint64_t qcow2_l2_bitmap_get(const struct qcow2_state *s, const void *l2, uint32_t i)
{
    if (!s->extended_l2)
        return 0;
    return rb_load_be64((const uint8_t *)l2 + (size_t)i * s->l2_entry_bytes + 8);
}

void qcow2_l2_entry_set(const struct qcow2_state *s, void *l2, uint32_t i, uint64_t e)
{
    rb_store_be64((uint8_t *)l2 + (size_t)i * s->l2_entry_bytes, e);
}

void qcow2_l2_bitmap_set(const struct qcow2_state *s, void *l2, uint32_t i, uint64_t b)
{
    if (s->extended_l2)
        rb_store_be64((uint8_t *)l2 + (size_t)i * s->l2_entry_bytes + 8, b);
}

int qcow2_l2_offset(struct qcow2_state *s, uint64_t l1_index, uint64_t *l2_off,
                    struct rb_error *err)
{
    uint64_t off, end;

    *l2_off = 0;
    if (l1_index >= s->h.l1_size)
        return 0;
    off = s->l1[l1_index] & QCOW2_L1E_OFFSET_MASK;
    if (!off)
        return 0;
    /* spec: "L2 table offset ... Must be aligned to a cluster boundary" */
    if (off & (s->cluster_bytes - 1))
        return rb_error_set(err, EIO, "%s: L2 table at 0x%" PRIx64 " is not "
                            "cluster-aligned (cluster size %" PRIu32 ", L1 index %" PRIu64
                            ")", s->name, off, s->cluster_bytes, l1_index);
    if (!rb_add_ok(off, s->cluster_bytes, &end) || end > s->file_size)
        return rb_error_set(err, EIO, "%s: L2 table at 0x%" PRIx64 " is past the end of "
                            "the file (size %" PRIu64 ", L1 index %" PRIu64 ")", s->name,
                            off, s->file_size, l1_index);
    *l2_off = off;
    return 0;
}

int qcow2_l2_get(struct qcow2_state *s, uint64_t guest_off, void **l2, uint32_t *l2_index,
                 struct rb_error *err)
{
    uint64_t l2_off;
    int ret;

    *l2 = NULL;
    *l2_index = qcow2_l2_index(s, guest_off);
    ret = qcow2_l2_offset(s, qcow2_l1_index(s, guest_off), &l2_off, err);
    if (ret < 0 || !l2_off)
        return ret;
    ret = qcow2_cache_get(s->l2_cache, l2_off, l2);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot read L2 table at 0x%" PRIx64,
                              s->name, l2_off);
    return 0;
}

static bool has_host(enum qcow2_sc_type t)
{
    return t == QCOW2_SC_NORMAL || t == QCOW2_SC_ZERO_ALLOC ||
           t == QCOW2_SC_UNALLOCATED_ALLOC;
}

/* Validate entry @i of the L2 table at @l2_off for its type. */
static int check_entry(struct qcow2_state *s, enum qcow2_sc_type t, uint64_t l2e,
                       uint64_t bitmap, uint64_t l2_off, uint32_t i, struct rb_error *err)
{
    uint64_t host = l2e & QCOW2_L2E_OFFSET_MASK;

    if (t == QCOW2_SC_INVALID)
        return rb_error_set(err, EIO, "%s: L2 entry %" PRIu32 " of the L2 table at 0x%"
                            PRIx64 " has an invalid subcluster bitmap 0x%016" PRIx64,
                            s->name, i, l2_off, bitmap);
    if (t == QCOW2_SC_COMPRESSED && s->has_data_file)
        return rb_error_set(err, EIO, "%s: L2 entry %" PRIu32 " of the L2 table at 0x%"
                            PRIx64 " is compressed in an image with an external data "
                            "file", s->name, i, l2_off);
    if (has_host(t) && (host & (s->cluster_bytes - 1)))
        return rb_error_set(err, EIO, "%s: cluster at 0x%" PRIx64 " (L2 entry %" PRIu32
                            " of the L2 table at 0x%" PRIx64 ") is not cluster-aligned "
                            "(cluster size %" PRIu32 ")", s->name, host, i, l2_off,
                            s->cluster_bytes);
    return 0;
}

int qcow2_get_mapping(struct qcow2_state *s, uint64_t guest_off, uint64_t max_bytes,
                      struct qcow2_mapping *m, struct rb_error *err)
{
    uint64_t l1i = qcow2_l1_index(s, guest_off);
    uint64_t span = (uint64_t)s->cluster_bytes << s->l2_bits; /* bytes per L2 table */
    uint64_t limit = span - (guest_off & (span - 1));
    uint64_t unit = s->extended_l2 ? s->subcluster_bytes : s->cluster_bytes;
    uint64_t l2_off, pos, total = 0, first_host = 0;
    uint32_t idx = UINT32_MAX;
    uint64_t l2e = 0, bitmap = 0;
    void *l2;
    int ret;

    memset(m, 0, sizeof(*m));
    ret = qcow2_l2_offset(s, l1i, &l2_off, err);
    if (ret < 0)
        return ret;
    if (!l2_off) {
        /* skip a run of unallocated L1 entries in one step: cost follows
         * the data, not the virtual size */
        while (limit < max_bytes && l1i + 1 < s->h.l1_size &&
               !(s->l1[l1i + 1] & QCOW2_L1E_OFFSET_MASK)) {
            l1i++;
            limit += span;
        }
        m->type = QCOW2_SC_UNALLOCATED_PLAIN;
        m->bytes = limit < max_bytes ? limit : max_bytes;
        return 0;
    }
    if (limit > max_bytes)
        limit = max_bytes;
    ret = qcow2_cache_get(s->l2_cache, l2_off, &l2);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot read L2 table at 0x%" PRIx64,
                              s->name, l2_off);
    for (pos = guest_off; total < limit;) {
        uint32_t i = qcow2_l2_index(s, pos);
        unsigned sc = s->extended_l2 ? qcow2_sc_index(s, pos) : 0;
        enum qcow2_sc_type t;
        uint64_t host, n;

        if (i != idx) {
            idx = i;
            l2e = qcow2_l2_entry_get(s, l2, i);
            bitmap = qcow2_l2_bitmap_get(s, l2, i);
        }
        t = qcow2_sc_type_of(l2e, bitmap, sc, s->extended_l2, s->has_data_file);
        if (total == 0) {
            ret = check_entry(s, t, l2e, bitmap, l2_off, i, err);
            if (ret < 0)
                break;
        }
        host = (l2e & QCOW2_L2E_OFFSET_MASK) + (pos & (s->cluster_bytes - 1));
        if (total == 0) {
            m->type = t;
            m->l2_entry = l2e;
            first_host = host;
            m->host_off = has_host(t) ? host : 0;
        } else if (t != m->type || (has_host(t) && host != first_host + total)) {
            break;
        } else if (check_entry(s, t, l2e, bitmap, l2_off, i, err) < 0) {
            break; /* stop before a bad entry: the caller meets it next */
        }
        n = unit - (pos & (unit - 1));
        if (n > limit - total)
            n = limit - total;
        total += n;
        pos += n;
    }
    qcow2_cache_put(s->l2_cache, l2);
    if (ret < 0)
        return ret;
    m->bytes = total;
    return 0;
}

int qcow2_read_compressed(struct qcow2_state *s, uint64_t l2e, void *dst,
                          struct rb_error *err)
{
    uint64_t host, bytes, end;
    uint8_t *src;
    int ret;

    qcow2_compressed_parse(l2e, s->h.cluster_bits, &host, &bytes);
    if (!rb_add_ok(host, bytes, &end) || host >= s->file_size)
        return rb_error_set(err, EIO, "%s: compressed cluster at 0x%" PRIx64 " is past "
                            "the end of the file (size %" PRIu64 ")", s->name, host,
                            s->file_size);
    src = malloc(bytes);
    if (!src)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    ret = rb_io_pread(s->fd, src, bytes, host); /* the last one may end past EOF */
    if (ret < 0) {
        ret = rb_error_errno(err, -ret, "%s: read error at 0x%" PRIx64, s->name, host);
    } else {
        ret = qcow2_decompress(s->h.compression_type, src, bytes, dst, s->cluster_bytes);
        if (ret < 0)
            ret = rb_error_set(err, EIO, "%s: compressed cluster at 0x%" PRIx64 " (%"
                               PRIu64 " bytes, %s) cannot be decompressed", s->name,
                               host, bytes,
                               s->h.compression_type ? "zstd" : "zlib");
    }
    free(src);
    return ret;
}

int qcow2_read_shared(struct rb_image *img, void *buf, uint64_t off, size_t len,
                      struct rb_error *err)
{
    struct qcow2_state *s = qcow2_state_of(img);
    int ret;

    pthread_rwlock_rdlock(&s->data_rw);
    ret = qcow2_read(img, buf, off, len, err);
    pthread_rwlock_unlock(&s->data_rw);
    return ret;
}

int qcow2_read(struct rb_image *img, void *buf, uint64_t off, size_t len,
               struct rb_error *err)
{
    struct qcow2_state *s = qcow2_state_of(img);
    uint8_t *p = buf;
    uint8_t *cbuf = NULL;
    int ret = 0;

    while (len > 0) {
        struct qcow2_mapping m;
        size_t n;

        pthread_mutex_lock(&s->lock);
        ret = qcow2_get_mapping(s, off, len, &m, err);
        pthread_mutex_unlock(&s->lock);
        if (ret < 0)
            break;
        n = (size_t)m.bytes;
        switch (m.type) {
        case QCOW2_SC_UNALLOCATED_PLAIN:
        case QCOW2_SC_UNALLOCATED_ALLOC:
            if (img->backing)
                ret = rb_image_read_zeropad(img->backing, p, off, n, err);
            else
                memset(p, 0, n);
            break;
        case QCOW2_SC_ZERO_PLAIN:
        case QCOW2_SC_ZERO_ALLOC:
            memset(p, 0, n);
            break;
        case QCOW2_SC_NORMAL:
            ret = rb_io_pread(s->data_fd, p, n, m.host_off);
            if (ret < 0)
                ret = rb_error_errno(err, -ret, "%s: read error at 0x%" PRIx64, s->name,
                                     m.host_off);
            break;
        case QCOW2_SC_COMPRESSED: {
            uint64_t in = off & (s->cluster_bytes - 1);
            if (n > s->cluster_bytes - in)
                n = (size_t)(s->cluster_bytes - in);
            if (!cbuf && !(cbuf = malloc(s->cluster_bytes))) {
                ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
                break;
            }
            /* small sequential reads (NBD) hit the last decompressed
             * cluster instead of inflating it again */
            pthread_mutex_lock(&s->lock);
            if (s->zcache && s->zcache_entry == m.l2_entry) {
                memcpy(p, s->zcache + in, n);
                pthread_mutex_unlock(&s->lock);
                break;
            }
            pthread_mutex_unlock(&s->lock);
            ret = qcow2_read_compressed(s, m.l2_entry, cbuf, err);
            if (ret < 0)
                break;
            memcpy(p, cbuf + in, n);
            pthread_mutex_lock(&s->lock);
            /* only read-only images keep it: a writer could free the
             * cluster and store another with the same descriptor */
            if (!s->zcache && !s->writable)
                s->zcache = malloc(s->cluster_bytes);
            if (s->zcache) {
                memcpy(s->zcache, cbuf, s->cluster_bytes);
                s->zcache_entry = m.l2_entry;
            }
            pthread_mutex_unlock(&s->lock);
            break;
        }
        default:
            ret = rb_error_set(err, EIO, "%s: bad mapping at %" PRIu64, s->name, off);
            break;
        }
        if (ret < 0)
            break;
        p += n;
        off += n;
        len -= n;
    }
    free(cbuf);
    return ret;
}

/*
 * qemu's qcow2_detect_metadata_preallocation: when clearly more clusters
 * have a refcount than the file has blocks allocated, the image was
 * preallocated with metadata only, and qemu asks the file system which
 * data clusters are holes (they then read as zeros).  Caller holds the lock.
 */
static void detect_metadata_prealloc(struct qcow2_state *s)
{
    struct stat st;
    uint64_t real_clusters, threshold, end_cluster, count = 0;

    s->metadata_prealloc_checked = true;
    if (fstat(s->fd, &st) < 0)
        return;
    real_clusters = (uint64_t)st.st_blocks * 512 / s->cluster_bytes;
    threshold = real_clusters * 10 / 9;
    if (threshold < real_clusters + 2)
        threshold = real_clusters + 2;
    end_cluster = (s->file_size + s->cluster_bytes - 1) / s->cluster_bytes;
    for (uint64_t i = 0; i < end_cluster && count < threshold; i++) {
        uint64_t rc, ri = i / s->refblock_entries;

        if (ri >= s->reftable_entries)
            break;
        if (!(s->reftable[ri] & QCOW2_REFT_OFFSET_MASK)) {
            /* no refcount block: skip its clusters in one step */
            i = (ri + 1) * (uint64_t)s->refblock_entries - 1;
            continue;
        }
        if (qcow2_refcount_get(s, i, &rc, NULL) < 0)
            return;
        count += rc != 0;
    }
    s->metadata_prealloc = count >= threshold;
}

int qcow2_block_status(struct rb_image *img, uint64_t off, uint64_t len,
                       struct rb_extent *ext, struct rb_error *err)
{
    struct qcow2_state *s = qcow2_state_of(img);
    struct qcow2_mapping m;
    int ret;

    pthread_mutex_lock(&s->lock);
    if (!s->metadata_prealloc_checked)
        detect_metadata_prealloc(s);
    ret = qcow2_get_mapping(s, off, len, &m, err);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0)
        return ret;
    ext->length = m.bytes;
    ext->host_off = 0;
    switch (m.type) {
    case QCOW2_SC_NORMAL:
        ext->flags = RB_BS_DATA | RB_BS_ALLOCATED | RB_BS_OFFSET_VALID;
        ext->host_off = m.host_off;
        break;
    case QCOW2_SC_ZERO_ALLOC:
        ext->flags = RB_BS_ZERO | RB_BS_ALLOCATED | RB_BS_OFFSET_VALID;
        ext->host_off = m.host_off;
        break;
    case QCOW2_SC_ZERO_PLAIN:
        ext->flags = RB_BS_ZERO | RB_BS_ALLOCATED;
        break;
    case QCOW2_SC_COMPRESSED:
        ext->flags = RB_BS_DATA | RB_BS_ALLOCATED | RB_BS_COMPRESSED;
        break;
    case QCOW2_SC_UNALLOCATED_ALLOC:
        /* not defined here, but qemu still reports the host offset */
        ext->flags = RB_BS_OFFSET_VALID;
        ext->host_off = m.host_off;
        break;
    default:
        ext->flags = 0;
        break;
    }
    if (s->metadata_prealloc && m.type == QCOW2_SC_NORMAL) {
        /* as qemu's BDRV_BLOCK_RECURSE: a hole in the file reads as zeros;
         * a hole reaching the end of the file (or past it) covers the whole
         * extent, otherwise the extent is cut where the file changes */
        uint64_t dsize = s->has_data_file ? s->data_file_size : s->file_size;
        bool is_data;
        uint64_t n;

        if (m.host_off >= dsize) {
            ext->flags |= RB_BS_ZERO;
        } else if (rb_io_extent(s->data_fd, m.host_off, ext->length, dsize, &is_data,
                                &n) == 0) {
            if (!is_data && m.host_off + n == dsize) {
                ext->flags |= RB_BS_ZERO;
            } else {
                ext->length = n;
                if (!is_data)
                    ext->flags |= RB_BS_ZERO;
            }
        }
    }
    return 0;
}
