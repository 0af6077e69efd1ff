/* SPDX-License-Identifier: MIT */
/*
 * header.c - parse and validate a qcow2 header and its extensions (a leaf:
 * it knows nothing of the rest of the driver).
 *
 * Every check cites docs/interop/qcow2.txt ("spec") or, for limits the
 * spec leaves open, QEMU's block/qcow2.c ("qemu") whose caps we share so
 * that what qemu refuses we refuse too.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "util/endian.h"
#include "rblock/io.h"

/* Check that a table of @bytes at @off is cluster-aligned and inside the
 * file (spec: "Must be aligned to a cluster boundary"). */
static int check_table(const char *name, const char *what, uint64_t off, uint64_t bytes,
                       uint32_t cluster_bytes, uint64_t file_size, struct rb_error *err)
{
    uint64_t end;

    if (off & (cluster_bytes - 1))
        return rb_error_set(err, EINVAL,
                            "%s: %s at 0x%" PRIx64 " is not cluster-aligned "
                            "(cluster size %" PRIu32 ")",
                            name, what, off, cluster_bytes);
    if (!rb_add_ok(off, bytes, &end) || end > file_size)
        return rb_error_set(err, EINVAL,
                            "%s: %s at 0x%" PRIx64 " (%" PRIu64 " bytes) is past the "
                            "end of the file (size %" PRIu64 ")",
                            name, what, off, bytes, file_size);
    return 0;
}

static char *dup_string(const uint8_t *p, size_t len)
{
    char *s = malloc(len + 1);

    if (s) {
        memcpy(s, p, len);
        s[len] = '\0';
    }
    return s;
}

static const char *known_incompat_name(unsigned bit)
{
    static const char *const names[] = {"dirty bit", "corrupt bit", "external data file",
                                        "compression type", "extended L2 entries"};
    return bit < 5 ? names[bit] : NULL;
}

/* Name of feature @bit of @type from the image's feature-name table. */
static const char *feature_name(const struct qcow2_header *h, uint8_t type, unsigned bit)
{
    for (size_t i = 0; i < h->nb_feature_names; i++) {
        if (h->feature_names[i].type == type && h->feature_names[i].bit == bit)
            return h->feature_names[i].name;
    }
    return type == 0 ? known_incompat_name(bit) : NULL;
}

static int add_ext(struct qcow2_header *h, uint32_t type, uint32_t len, uint64_t off)
{
    struct qcow2_ext *n = realloc(h->exts, (h->nb_exts + 1) * sizeof(*n));

    if (!n)
        return -ENOMEM;
    h->exts = n;
    n[h->nb_exts++] = (struct qcow2_ext){.type = type, .length = len, .offset = off};
    return 0;
}

static int parse_feature_table(struct qcow2_header *h, const uint8_t *p, uint32_t len)
{
    size_t n = len / 48;

    free(h->feature_names);
    h->feature_names = calloc(n ? n : 1, sizeof(*h->feature_names));
    if (!h->feature_names)
        return -ENOMEM;
    h->nb_feature_names = n;
    for (size_t i = 0; i < n; i++) {
        struct qcow2_feature_name *f = &h->feature_names[i];
        f->type = p[i * 48];
        f->bit = p[i * 48 + 1];
        memcpy(f->name, p + i * 48 + 2, 46);
        f->name[46] = '\0';
    }
    return 0;
}

static int parse_bitmaps_ext(const char *name, struct qcow2_header *h, const uint8_t *p,
                             uint32_t len, uint64_t file_size, struct rb_error *err)
{
    uint32_t cluster_bytes = 1u << h->cluster_bits;

    /* spec: the data is consistent only when the autoclear bit is set;
     * qemu ignores the extension otherwise, and so do we */
    if (!(h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS))
        return 0;
    if (len != 24)
        return rb_error_set(err, EINVAL, "%s: bitmaps extension has length %" PRIu32
                            " (expected 24)", name, len);
    h->nb_bitmaps = rb_load_be32(p);
    h->bitmap_directory_size = rb_load_be64(p + 8);
    h->bitmap_directory_offset = rb_load_be64(p + 16);
    if (rb_load_be32(p + 4) != 0)
        return rb_error_set(err, EINVAL, "%s: bitmaps extension reserved field is not "
                            "zero", name);
    /* spec: "Must be greater than or equal to 1"; qemu: at most 65535 */
    if (h->nb_bitmaps == 0 || h->nb_bitmaps > 65535)
        return rb_error_set(err, EINVAL, "%s: bitmaps extension has %" PRIu32
                            " bitmaps (allowed 1..65535)", name, h->nb_bitmaps);
    if (h->bitmap_directory_size > (64u << 20))
        return rb_error_set(err, EINVAL, "%s: bitmap directory is too large (%" PRIu64
                            " bytes, limit 67108864)", name, h->bitmap_directory_size);
    return check_table(name, "bitmap directory", h->bitmap_directory_offset,
                       h->bitmap_directory_size, cluster_bytes, file_size, err);
}

/* spec "Header extensions": from the end of the header to the backing file
 * name (or the end of the first cluster), type + length + padded data. */
static int parse_extensions(const uint8_t *buf, size_t buf_len, const char *name,
                            uint64_t file_size, struct qcow2_header *h,
                            struct rb_error *err)
{
    uint64_t cluster_bytes = 1ull << h->cluster_bits;
    uint64_t end = cluster_bytes < buf_len ? cluster_bytes : buf_len;
    uint64_t off = h->header_length;
    int ret;

    if (h->backing_file_offset && h->backing_file_offset < end)
        end = h->backing_file_offset;
    while (off < end) {
        uint32_t type, len;
        const uint8_t *data;

        if (end - off < 8)
            return rb_error_set(err, EINVAL, "%s: header extension at 0x%" PRIx64
                                " is truncated", name, off);
        type = rb_load_be32(buf + off);
        len = rb_load_be32(buf + off + 4);
        if (type == QCOW2_EXT_END)
            return 0;
        if (len > end - off - 8)
            return rb_error_set(err, EINVAL, "%s: header extension 0x%08" PRIx32
                                " at 0x%" PRIx64 " is too large (%" PRIu32 " bytes)",
                                name, type, off, len);
        data = buf + off + 8;
        if (add_ext(h, type, len, off + 8) < 0)
            return rb_error_set(err, ENOMEM, "%s: out of memory", name);
        switch (type) {
        case QCOW2_EXT_BACKING_FORMAT:
            /* qemu keeps it in a 16-byte buffer */
            if (len >= 16)
                return rb_error_set(err, EINVAL, "%s: backing format name is too long "
                                    "(%" PRIu32 " bytes)", name, len);
            free(h->backing_format);
            h->backing_format = dup_string(data, len);
            if (!h->backing_format)
                return rb_error_set(err, ENOMEM, "%s: out of memory", name);
            break;
        case QCOW2_EXT_FEATURE_TABLE:
            if (parse_feature_table(h, data, len) < 0)
                return rb_error_set(err, ENOMEM, "%s: out of memory", name);
            break;
        case QCOW2_EXT_BITMAPS:
            ret = parse_bitmaps_ext(name, h, data, len, file_size, err);
            if (ret < 0)
                return ret;
            break;
        case QCOW2_EXT_DATA_FILE:
            if (len == 0 || len > 4096)
                return rb_error_set(err, EINVAL, "%s: external data file name has "
                                    "length %" PRIu32 " (allowed 1..4096)", name, len);
            free(h->data_file);
            h->data_file = dup_string(data, len);
            if (!h->data_file)
                return rb_error_set(err, ENOMEM, "%s: out of memory", name);
            break;
        default:
            break; /* unknown: kept in h->exts, safely ignored (spec) */
        }
        off += 8 + (((uint64_t)len + 7) & ~7ull);
    }
    return 0;
}

static int check_incompatible(const char *name, const struct qcow2_header *h,
                              struct rb_error *err)
{
    uint64_t unknown = h->incompatible_features & ~QCOW2_INCOMPAT_MASK;
    char list[300] = "";
    size_t n = 0;

    if (!unknown)
        return 0;
    /* spec: "An implementation must fail to open an image if an unknown bit
     * is set"; name them from the feature-name table when it has them */
    for (unsigned bit = 0; bit < 64; bit++) {
        const char *fn;

        if (!(unknown & (1ull << bit)))
            continue;
        if (n >= sizeof(list))
            break; /* the list is full: list + n would point past it */
        fn = feature_name(h, 0, bit);
        if (fn && fn[0])
            n += (size_t)snprintf(list + n, n < sizeof(list) ? sizeof(list) - n : 0,
                                  "%s'%s' (bit %u)", n ? ", " : "", fn, bit);
        else
            n += (size_t)snprintf(list + n, n < sizeof(list) ? sizeof(list) - n : 0,
                                  "%sbit %u", n ? ", " : "", bit);
    }
    return rb_error_set(err, ENOTSUP, "%s: unsupported incompatible feature(s): %s",
                        name, list);
}

static int header_parse(const uint8_t *buf, size_t buf_len, const char *name,
                        uint64_t file_size, struct qcow2_header *h, struct rb_error *err)
{
    uint32_t cluster_bytes;
    uint64_t l1_needed;
    int ret;

    memset(h, 0, sizeof(*h));
    if (buf_len < 72)
        return rb_error_set(err, EINVAL, "%s: file is too short to be a qcow2 image "
                            "(%zu bytes)", name, buf_len);
    if (rb_load_be32(buf) != QCOW2_MAGIC)
        return rb_error_set(err, EINVAL, "%s: not a qcow2 image (bad magic)", name);
    h->version = rb_load_be32(buf + 4);
    if (h->version != 2 && h->version != 3)
        return rb_error_set(err, ENOTSUP, "%s: unsupported qcow2 version %" PRIu32,
                            name, h->version);
    h->backing_file_offset = rb_load_be64(buf + 8);
    h->backing_file_size = rb_load_be32(buf + 16);
    h->cluster_bits = rb_load_be32(buf + 20);
    h->size = rb_load_be64(buf + 24);
    h->crypt_method = rb_load_be32(buf + 32);
    h->l1_size = rb_load_be32(buf + 36);
    h->l1_table_offset = rb_load_be64(buf + 40);
    h->refcount_table_offset = rb_load_be64(buf + 48);
    h->refcount_table_clusters = rb_load_be32(buf + 56);
    h->nb_snapshots = rb_load_be32(buf + 60);
    h->snapshots_offset = rb_load_be64(buf + 64);
    h->refcount_order = 4; /* spec: v2 is always 16-bit refcounts */
    h->header_length = 72;

    /* spec: "Must not be less than 9"; qemu: at most 21 (2 MiB) */
    if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS || h->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return rb_error_set(err, EINVAL, "%s: cluster_bits %" PRIu32 " is out of range "
                            "(allowed %d..%d)", name, h->cluster_bits,
                            QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
    cluster_bytes = 1u << h->cluster_bits;

    if (h->version == 3) {
        if (buf_len < 104)
            return rb_error_set(err, EINVAL, "%s: file is too short for a version 3 "
                                "header (%zu bytes)", name, buf_len);
        h->incompatible_features = rb_load_be64(buf + 72);
        h->compatible_features = rb_load_be64(buf + 80);
        h->autoclear_features = rb_load_be64(buf + 88);
        h->refcount_order = rb_load_be32(buf + 96);
        h->header_length = rb_load_be32(buf + 100);
        /* spec: "at least 104 bytes and must be a multiple of 8"; qemu:
         * the header must fit in the first cluster */
        if (h->header_length < 104 || h->header_length % 8)
            return rb_error_set(err, EINVAL, "%s: header_length %" PRIu32 " is invalid "
                                "(must be a multiple of 8, at least 104)", name,
                                h->header_length);
        if (h->header_length > cluster_bytes)
            return rb_error_set(err, EINVAL, "%s: header_length %" PRIu32 " exceeds the "
                                "cluster size %" PRIu32, name, h->header_length,
                                cluster_bytes);
        if (h->header_length > buf_len)
            return rb_error_set(err, EINVAL, "%s: header_length %" PRIu32 " is past the "
                                "end of the file (size %zu)", name, h->header_length,
                                buf_len);
        if (h->header_length > 104)
            h->compression_type = buf[104];
    }

    /* spec: "This value may not exceed 6" */
    if (h->refcount_order > 6)
        return rb_error_set(err, EINVAL, "%s: refcount_order %" PRIu32 " is out of range "
                            "(allowed 0..6)", name, h->refcount_order);

    /* spec, compression_type: non-zero iff the incompatible bit is set */
    if (h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) {
        if (h->compression_type == QCOW2_COMPRESSION_ZLIB)
            return rb_error_set(err, EINVAL, "%s: compression type bit is set but the "
                                "compression type is zlib", name);
    } else if (h->compression_type != QCOW2_COMPRESSION_ZLIB) {
        return rb_error_set(err, EINVAL, "%s: compression_type %u without the "
                            "compression type bit", name, h->compression_type);
    }
    if (h->compression_type > QCOW2_COMPRESSION_ZSTD)
        return rb_error_set(err, ENOTSUP, "%s: unknown compression_type %u", name,
                            h->compression_type);

    /* the backing file name lives in the first cluster (qemu: at most
     * 1023 bytes, ending inside the first cluster) */
    if (h->backing_file_offset) {
        uint64_t end;

        if (h->backing_file_offset > cluster_bytes)
            return rb_error_set(err, EINVAL, "%s: backing_file_offset 0x%" PRIx64 " is "
                                "outside the first cluster", name,
                                h->backing_file_offset);
        if (h->backing_file_size > QCOW2_MAX_BACKING_NAME ||
            h->backing_file_size > cluster_bytes - h->backing_file_offset)
            return rb_error_set(err, EINVAL, "%s: backing_file_size %" PRIu32 " is too "
                                "large (limit %d, inside the first cluster)", name,
                                h->backing_file_size, QCOW2_MAX_BACKING_NAME);
        end = h->backing_file_offset + h->backing_file_size;
        if (end > buf_len)
            return rb_error_set(err, EINVAL, "%s: backing file name is past the end of "
                                "the file", name);
        if (h->backing_file_size) {
            h->backing_file = dup_string(buf + h->backing_file_offset,
                                         h->backing_file_size);
            if (!h->backing_file)
                return rb_error_set(err, ENOMEM, "%s: out of memory", name);
        }
    }

    ret = parse_extensions(buf, buf_len, name, file_size, h, err);
    if (ret < 0)
        return ret;
    ret = check_incompatible(name, h, err);
    if (ret < 0)
        return ret;

    if (h->crypt_method != 0)
        return rb_error_set(err, ENOTSUP, "%s: encrypted images are not supported "
                            "(crypt_method %" PRIu32 ")", name, h->crypt_method);
    if ((h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE) && !h->data_file)
        return rb_error_set(err, EINVAL, "%s: image uses an external data file but "
                            "has no data file name extension", name);
    if ((h->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW) &&
        !(h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE))
        return rb_error_set(err, EINVAL, "%s: raw external data bit is set without an "
                            "external data file", name);
    /* spec: "if the image has Extended L2 Entries then cluster_bits must be
     * at least 14" */
    if ((h->incompatible_features & QCOW2_INCOMPAT_EXTL2) && h->cluster_bits < 14)
        return rb_error_set(err, EINVAL, "%s: extended L2 entries need clusters of at "
                            "least 16384 bytes (cluster size %" PRIu32 ")", name,
                            cluster_bytes);

    /* L1: qemu caps it at 32 MiB and requires it to map the whole disk */
    if (h->l1_size > QCOW2_MAX_L1_BYTES / 8)
        return rb_error_set(err, EFBIG, "%s: active L1 table is too large (%" PRIu32
                            " entries, limit %u)", name, h->l1_size,
                            QCOW2_MAX_L1_BYTES / 8);
    l1_needed = qcow2_l1_entries_for(h->size, h->cluster_bits,
                                     h->incompatible_features & QCOW2_INCOMPAT_EXTL2);
    if (l1_needed > QCOW2_MAX_L1_BYTES / 8)
        return rb_error_set(err, EFBIG, "%s: virtual size %" PRIu64 " is too large for "
                            "cluster size %" PRIu32, name, h->size, cluster_bytes);
    if (h->l1_size < l1_needed)
        return rb_error_set(err, EINVAL, "%s: L1 table is too small (%" PRIu32
                            " entries for a virtual size of %" PRIu64 " needing %" PRIu64
                            ")", name, h->l1_size, h->size, l1_needed);
    if (h->l1_size) {
        ret = check_table(name, "L1 table", h->l1_table_offset, (uint64_t)h->l1_size * 8,
                          cluster_bytes, file_size, err);
        if (ret < 0)
            return ret;
    }

    /* refcount table: qemu requires one and caps it at 8 MiB */
    if (h->refcount_table_clusters == 0)
        return rb_error_set(err, EINVAL, "%s: image has no refcount table", name);
    if (h->refcount_table_clusters > QCOW2_MAX_REFTABLE_BYTES / cluster_bytes)
        return rb_error_set(err, EFBIG, "%s: refcount table is too large (%" PRIu32
                            " clusters, limit %u)", name, h->refcount_table_clusters,
                            QCOW2_MAX_REFTABLE_BYTES / cluster_bytes);
    ret = check_table(name, "refcount table", h->refcount_table_offset,
                      (uint64_t)h->refcount_table_clusters * cluster_bytes, cluster_bytes,
                      file_size, err);
    if (ret < 0)
        return ret;

    /* snapshots: qemu caps the count at 65536 */
    if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
        return rb_error_set(err, EFBIG, "%s: too many snapshots (%" PRIu32 ", limit %d)",
                            name, h->nb_snapshots, QCOW2_MAX_SNAPSHOTS);
    if (h->nb_snapshots) {
        ret = check_table(name, "snapshot table", h->snapshots_offset,
                          (uint64_t)h->nb_snapshots * 40, cluster_bytes, file_size, err);
        if (ret < 0)
            return ret;
    }
    return 0;
}

int qcow2_header_parse(const uint8_t *buf, size_t buf_len, const char *name,
                       uint64_t file_size, struct qcow2_header *h, struct rb_error *err)
{
    int ret = header_parse(buf, buf_len, name, file_size, h, err);

    if (ret < 0)
        qcow2_header_free(h);
    return ret;
}

int qcow2_header_read(int fd, const char *name, uint64_t file_size,
                      struct qcow2_header *h, struct rb_error *err)
{
    uint8_t first[24];
    uint32_t cluster_bits;
    size_t len;
    uint8_t *buf;
    int ret;

    memset(h, 0, sizeof(*h));
    ret = rb_io_pread(fd, first, sizeof(first), 0);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot read header", name);
    cluster_bits = rb_load_be32(first + 20);
    if (file_size < 72 || cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
        cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        len = file_size < 4096 ? (size_t)file_size : 4096; /* parse says why */
    else
        len = file_size < (1ull << cluster_bits) ? (size_t)file_size
                                                 : (size_t)1 << cluster_bits;
    buf = malloc(len ? len : 1);
    if (!buf)
        return rb_error_set(err, ENOMEM, "%s: out of memory", name);
    ret = rb_io_pread(fd, buf, len, 0);
    if (ret < 0)
        ret = rb_error_errno(err, -ret, "%s: cannot read header", name);
    else
        ret = qcow2_header_parse(buf, len, name, file_size, h, err);
    free(buf);
    return ret;
}

void qcow2_header_free(struct qcow2_header *h)
{
    if (!h)
        return;
    free(h->backing_file);
    free(h->backing_format);
    free(h->data_file);
    free(h->feature_names);
    free(h->exts);
    h->backing_file = h->backing_format = h->data_file = NULL;
    h->feature_names = NULL;
    h->exts = NULL;
    h->nb_feature_names = h->nb_exts = 0;
}
