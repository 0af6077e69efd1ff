/* SPDX-License-Identifier: MIT */
/*
 * create.c - new qcow2 images: options, the header, and the initial
 * layout (qcow2.txt, "Header" and "Header extensions").
 *
 * Layout of a new image, as QEMU's: cluster 0 the header, then the refcount
 * table, the refcount blocks, the L1 table; with preallocation=metadata the
 * L2 tables and the data clusters follow.  Every cluster up to the end has
 * refcount 1, nothing else is referenced, so `qemu-img check` finds no leak.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2/qcow2.h"
#include "qcow2/qcow2w.h"
#include "rblock/io.h"
#include "rblock/size.h"

void rb_qcow2_create_opts_init(struct rb_qcow2_create_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->version = 3;
    o->cluster_bytes = 65536;
    o->refcount_bits = 16;
    o->compression_type = QCOW2_COMPRESSION_ZLIB;
}

static int parse_bool(const char *key, const char *v, bool *out, struct rb_error *err)
{
    if (!strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes"))
        *out = true;
    else if (!strcmp(v, "off") || !strcmp(v, "false") || !strcmp(v, "no"))
        *out = false;
    else
        return rb_error_set(err, EINVAL, "option %s: '%s' is not on or off", key, v);
    return 0;
}

/* A size as qemu-img reads one (rblock/size.h): 64k, 1.5G, 1000. */
static int parse_bytes(const char *key, const char *v, uint64_t *out, struct rb_error *err)
{
    if (rb_parse_size(v, out) < 0)
        return rb_error_set(err, EINVAL, "option %s: '%s' is not a size", key, v);
    return 0;
}

static int parse_one(const char *key, char *v, struct rb_qcow2_create_opts *o,
                     struct rb_error *err)
{
    uint64_t n;
    int ret;

    if (!strcmp(key, "size")) {
        o->size_set = true;
        return parse_bytes(key, v, &o->size, err);
    }
    if (!strcmp(key, "compat")) {
        if (!strcmp(v, "0.10") || !strcmp(v, "v2"))
            o->version = 2;
        else if (!strcmp(v, "1.1") || !strcmp(v, "v3"))
            o->version = 3;
        else
            return rb_error_set(err, EINVAL, "option compat: '%s' is not 0.10 or 1.1", v);
        return 0;
    }
    if (!strcmp(key, "cluster_size")) {
        ret = parse_bytes(key, v, &n, err);
        if (ret == 0 && n > UINT32_MAX)
            return rb_error_set(err, EINVAL, "option cluster_size: %s is too large", v);
        o->cluster_bytes = (uint32_t)n;
        return ret;
    }
    if (!strcmp(key, "refcount_bits")) {
        ret = parse_bytes(key, v, &n, err);
        if (ret == 0 && n > 64)
            return rb_error_set(err, EINVAL, "option refcount_bits: %s is more than 64", v);
        o->refcount_bits = (unsigned)n;
        return ret;
    }
    if (!strcmp(key, "lazy_refcounts"))
        return parse_bool(key, v, &o->lazy_refcounts, err);
    if (!strcmp(key, "extended_l2"))
        return parse_bool(key, v, &o->extended_l2, err);
    if (!strcmp(key, "compression_type")) {
        if (!strcmp(v, "zlib"))
            o->compression_type = QCOW2_COMPRESSION_ZLIB;
        else if (!strcmp(v, "zstd"))
            o->compression_type = QCOW2_COMPRESSION_ZSTD;
        else
            return rb_error_set(err, EINVAL,
                                "option compression_type: '%s' is not zlib or zstd", v);
        return 0;
    }
    if (!strcmp(key, "preallocation")) {
        if (!strcmp(v, "off"))
            o->preallocation = RB_QCOW2_PREALLOC_OFF;
        else if (!strcmp(v, "metadata"))
            o->preallocation = RB_QCOW2_PREALLOC_METADATA;
        else
            return rb_error_set(err, EINVAL,
                                "option preallocation: '%s' is not supported "
                                "(off, metadata)", v);
        return 0;
    }
    if (!strcmp(key, "backing_file")) {
        o->backing_file = v;
        return 0;
    }
    if (!strcmp(key, "backing_fmt")) {
        o->backing_format = v;
        return 0;
    }
    return rb_error_set(err, EINVAL,
                        "unknown option '%s' (known: size, compat, cluster_size, "
                        "refcount_bits, lazy_refcounts, extended_l2, compression_type, "
                        "preallocation, backing_file, backing_fmt)", key);
}

int rb_qcow2_parse_options(char *str, struct rb_qcow2_create_opts *o, struct rb_error *err)
{
    char *save = NULL;

    for (char *item = strtok_r(str, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        int ret;

        if (!eq)
            return rb_error_set(err, EINVAL, "option '%s' has no value (key=value)", item);
        *eq = '\0';
        ret = parse_one(item, eq + 1, o, err);
        if (ret < 0)
            return ret;
    }
    return 0;
}

int rb_qcow2_check_opts(const struct rb_qcow2_create_opts *o, struct rb_error *err)
{
    uint32_t c = o->cluster_bytes;

    if (o->version != 2 && o->version != 3)
        return rb_error_set(err, EINVAL, "unsupported qcow2 version %u", o->version);
    if (c < 512 || c > (2u << 20) || (c & (c - 1)))
        return rb_error_set(err, EINVAL,
                            "cluster size %" PRIu32 " is not a power of two between "
                            "512 and 2M", c);
    if (!o->refcount_bits || o->refcount_bits > 64 ||
        (o->refcount_bits & (o->refcount_bits - 1)))
        return rb_error_set(err, EINVAL,
                            "refcount_bits %u is not a power of two between 1 and 64",
                            o->refcount_bits);
    if (o->version == 2) {
        if (o->refcount_bits != 16)
            return rb_error_set(err, EINVAL,
                                "compat=0.10 only supports refcount_bits=16");
        if (o->lazy_refcounts)
            return rb_error_set(err, EINVAL,
                                "lazy refcounts only supported with compat=1.1");
        if (o->extended_l2)
            return rb_error_set(err, EINVAL,
                                "extended L2 entries are only supported with compat=1.1");
        if (o->compression_type != QCOW2_COMPRESSION_ZLIB)
            return rb_error_set(err, EINVAL,
                                "compression_type=zstd is only supported with compat=1.1");
    }
    if (o->extended_l2 && c < 16384)
        return rb_error_set(err, EINVAL,
                            "extended L2 entries need a cluster size of at least 16k");
    if (o->backing_file && o->preallocation != RB_QCOW2_PREALLOC_OFF)
        return rb_error_set(err, EINVAL,
                            "preallocation and a backing file cannot be combined");
    if (o->backing_file && strlen(o->backing_file) > QCOW2_MAX_BACKING_NAME)
        return rb_error_set(err, EINVAL, "backing file name is longer than %u bytes",
                            QCOW2_MAX_BACKING_NAME);
    if (o->backing_format && strlen(o->backing_format) > 255)
        return rb_error_set(err, EINVAL, "backing format name is too long");
    if (o->size > QCOW2_MAX_VIRTUAL_SIZE)
        return rb_error_set(err, EINVAL, "size %" PRIu64 " is too large for qcow2",
                            o->size);
    if (qcow2w_l1_entries(o) * 8 > QCOW2_MAX_L1_BYTES)
        return rb_error_set(err, EINVAL,
                            "size %" PRIu64 " needs an L1 table larger than %u bytes "
                            "with %" PRIu32 "-byte clusters (use larger clusters)",
                            o->size, QCOW2_MAX_L1_BYTES, c);
    return 0;
}

uint64_t qcow2w_l2_entries(const struct rb_qcow2_create_opts *o)
{
    return o->cluster_bytes / (o->extended_l2 ? 16u : 8u);
}

uint64_t qcow2w_l1_entries(const struct rb_qcow2_create_opts *o)
{
    uint64_t per_l2 = qcow2w_l2_entries(o) * o->cluster_bytes;

    return o->size / per_l2 + (o->size % per_l2 != 0);
}

/* Append one header extension at *pos; false when it does not fit. */
static bool add_ext(uint8_t *buf, size_t cap, size_t *pos, uint32_t type,
                    const void *data, uint32_t len)
{
    size_t padded = (len + 7u) & ~(size_t)7;

    if (*pos + 8 + padded > cap)
        return false;
    rb_store_be32(buf + *pos, type);
    rb_store_be32(buf + *pos + 4, len);
    memcpy(buf + *pos + 8, data, len);
    *pos += 8 + padded;
    return true;
}

/* The feature-name table QEMU writes (qcow2.txt "Feature name table"). */
static const struct {
    uint8_t type, bit;
    const char *name;
} features[] = {
    {0, 0, "dirty bit"},
    {0, 1, "corrupt bit"},
    {0, 2, "external data file"},
    {0, 3, "compression type"},
    {0, 4, "extended L2 entries"},
    {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},
    {2, 1, "raw external data"},
};

#define NB_FEATURES (sizeof(features) / sizeof(features[0]))

int qcow2w_build_header(const struct rb_qcow2_create_opts *o,
                        const struct qcow2w_layout *l, uint64_t extra_incompat,
                        uint8_t *buf, size_t cluster_bytes, struct rb_error *err)
{
    uint32_t header_len = o->version >= 3 ? 112 : 72;
    uint64_t incompat = extra_incompat, compat = 0;
    size_t pos = header_len, name_len = o->backing_file ? strlen(o->backing_file) : 0;
    uint8_t table[NB_FEATURES * 48];

    memset(buf, 0, cluster_bytes);
    if (o->compression_type != QCOW2_COMPRESSION_ZLIB)
        incompat |= QCOW2_INCOMPAT_COMPRESSION;
    if (o->extended_l2)
        incompat |= QCOW2_INCOMPAT_EXTL2;
    if (o->lazy_refcounts)
        compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;

    rb_store_be32(buf + 0, QCOW2_MAGIC);
    rb_store_be32(buf + 4, o->version);
    rb_store_be32(buf + 20, l->cluster_bits);
    rb_store_be64(buf + 24, o->size);
    rb_store_be32(buf + 32, 0); /* crypt_method: none */
    rb_store_be32(buf + 36, (uint32_t)l->l1_entries);
    rb_store_be64(buf + 40, l->l1_off);
    rb_store_be64(buf + 48, l->reftable_off);
    rb_store_be32(buf + 56, l->reftable_clusters);
    if (o->version >= 3) {
        rb_store_be64(buf + 72, incompat);
        rb_store_be64(buf + 80, compat);
        rb_store_be64(buf + 88, 0); /* autoclear */
        rb_store_be32(buf + 96, qcow2w_log2(o->refcount_bits));
        rb_store_be32(buf + 100, header_len);
        buf[104] = o->compression_type;
    }

    /* The name goes after the end marker; reserve room for both. */
    if (o->backing_file && o->backing_format &&
        !add_ext(buf, cluster_bytes - name_len - 8, &pos, QCOW2_EXT_BACKING_FORMAT,
                 o->backing_format, (uint32_t)strlen(o->backing_format)))
        goto too_big;
    if (o->version >= 3) {
        memset(table, 0, sizeof(table));
        for (size_t i = 0; i < NB_FEATURES; i++) {
            table[i * 48] = features[i].type;
            table[i * 48 + 1] = features[i].bit;
            memcpy(table + i * 48 + 2, features[i].name, strlen(features[i].name));
        }
        /* optional: QEMU leaves it out when the cluster is too small */
        add_ext(buf, cluster_bytes - name_len - 8, &pos, QCOW2_EXT_FEATURE_TABLE, table,
                sizeof(table));
    }
    pos += 8; /* end of extensions: type 0, length 0 */
    if (o->backing_file) {
        if (pos + name_len > cluster_bytes)
            goto too_big;
        memcpy(buf + pos, o->backing_file, name_len);
        rb_store_be64(buf + 8, pos);
        rb_store_be32(buf + 16, (uint32_t)name_len);
    }
    return 0;
too_big:
    return rb_error_set(err, EINVAL,
                        "header with backing file name '%s' does not fit in a "
                        "%zu-byte cluster", o->backing_file, cluster_bytes);
}

/* ---- rb_qcow2_create ------------------------------------------------------ */

struct plan {
    uint64_t c;          /* cluster bytes */
    uint64_t ref_entries; /* refcounts per refcount block */
    uint64_t reftable, refblocks, l1, l2s, data; /* counts of clusters */
    uint64_t total;       /* clusters with refcount 1: [0, total) */
    struct qcow2w_layout lay;
};

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

static void plan_layout(const struct rb_qcow2_create_opts *o, struct plan *p)
{
    p->c = o->cluster_bytes;
    p->ref_entries = p->c * 8 / o->refcount_bits;
    p->lay.cluster_bits = qcow2w_log2(p->c);
    p->lay.l1_entries = qcow2w_l1_entries(o);
    p->l1 = div_up(p->lay.l1_entries * 8, p->c);
    if (p->l1 == 0)
        p->l1 = 1; /* as QEMU: an L1 cluster even for a zero-sized disk */
    p->l2s = p->data = 0;
    if (o->preallocation == RB_QCOW2_PREALLOC_METADATA) {
        p->l2s = p->lay.l1_entries;
        p->data = div_up(o->size, p->c);
    }
    /* The refcount structures describe themselves: iterate to a fixed point
     * (it only grows, and converges in a few rounds). */
    p->reftable = p->refblocks = 1;
    for (;;) {
        uint64_t total = 1 + p->reftable + p->refblocks + p->l1 + p->l2s + p->data;
        uint64_t blocks = div_up(total, p->ref_entries);
        uint64_t table = div_up(blocks * 8, p->c);
        p->total = total;
        if (blocks <= p->refblocks && table <= p->reftable)
            break;
        if (blocks > p->refblocks)
            p->refblocks = blocks;
        if (table > p->reftable)
            p->reftable = table;
    }
    p->lay.reftable_off = p->c;
    p->lay.reftable_clusters = (uint32_t)p->reftable;
    p->lay.l1_off = (1 + p->reftable + p->refblocks) * p->c;
}

static int put(int fd, const void *buf, size_t len, uint64_t off, const char *path,
               struct rb_error *err)
{
    int ret = rb_io_pwrite(fd, buf, len, off);

    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: write error", path);
    return 0;
}

static int write_image(int fd, const char *path, const struct rb_qcow2_create_opts *o,
                       const struct plan *p, uint8_t *buf, struct rb_error *err)
{
    uint64_t c = p->c, refblock0 = 1 + p->reftable, l2_0 = refblock0 + p->refblocks + p->l1;
    uint64_t data0 = l2_0 + p->l2s, l2e = qcow2w_l2_entries(o);
    unsigned order = qcow2w_log2(o->refcount_bits);
    int ret;

    ret = qcow2w_build_header(o, &p->lay, 0, buf, c, err);
    if (ret == 0)
        ret = put(fd, buf, c, 0, path, err);
    /* refcount table: refcount block i at cluster refblock0 + i */
    for (uint64_t t = 0; ret == 0 && t < p->reftable; t++) {
        memset(buf, 0, c);
        for (uint64_t i = 0; i < c / 8; i++) {
            uint64_t b = t * (c / 8) + i;
            if (b < p->refblocks)
                rb_store_be64(buf + i * 8, (refblock0 + b) * c);
        }
        ret = put(fd, buf, c, (1 + t) * c, path, err);
    }
    /* refcount blocks: 1 for every cluster below total */
    for (uint64_t b = 0; ret == 0 && b < p->refblocks; b++) {
        memset(buf, 0, c);
        for (uint64_t i = 0; i < p->ref_entries && b * p->ref_entries + i < p->total; i++)
            qcow2_refblock_set(buf, order, i, 1);
        ret = put(fd, buf, c, (refblock0 + b) * c, path, err);
    }
    /* L1 (and L2 tables with preallocation): entries carry COPIED since
     * every refcount is 1 (qcow2.txt, "L1 table entry" bit 63) */
    for (uint64_t t = 0; ret == 0 && t < p->l1; t++) {
        uint64_t first = t * (c / 8), n = 0;
        memset(buf, 0, c);
        for (uint64_t i = 0; i < c / 8 && first + i < p->lay.l1_entries; i++, n++) {
            if (p->l2s)
                rb_store_be64(buf + i * 8, (l2_0 + first + i) * c | QCOW2_OFLAG_COPIED);
        }
        /* the last L1 cluster is written only as far as its entries, so a
         * new image has QEMU's exact size */
        if (n > 0 || p->l2s)
            ret = put(fd, buf, n * 8, p->lay.l1_off + t * c, path, err);
    }
    for (uint64_t t = 0; ret == 0 && t < p->l2s; t++) {
        size_t esz = o->extended_l2 ? 16 : 8;
        memset(buf, 0, c);
        for (uint64_t i = 0; i < l2e; i++) {
            uint64_t d = t * l2e + i, e;
            if (d >= p->data)
                break;
            e = (data0 + d) * c | QCOW2_OFLAG_COPIED;
            /* v3: "preallocated zero cluster" reads zeros whatever the
             * file holds; extended L2: allocated, no subcluster bits set,
             * as QEMU writes it; v2 relies on the sparse file's zeros */
            if (o->version >= 3 && !o->extended_l2)
                e |= QCOW2_OFLAG_ZERO;
            rb_store_be64(buf + i * esz, e);
        }
        ret = put(fd, buf, c, (l2_0 + t) * c, path, err);
    }
    if (ret == 0) {
        uint64_t end = p->lay.l1_off + p->lay.l1_entries * 8;
        if (p->l2s || p->lay.l1_entries == 0)
            end = p->total * c;
        if ((ret = rb_io_truncate(fd, end)) < 0)
            rb_error_errno(err, -ret, "%s: cannot resize", path);
    }
    if (ret == 0 && (ret = rb_io_sync(fd)) < 0)
        rb_error_errno(err, -ret, "%s: sync failed", path);
    return ret;
}

int rb_qcow2_create(int fd, const char *path, const struct rb_qcow2_create_opts *opts,
                    struct rb_error *err)
{
    struct rb_qcow2_create_opts o = *opts;
    struct plan p;
    uint64_t bytes;
    uint8_t *buf;
    int ret;

    /* qcow2 sizes are whole sectors: QEMU rounds up (qcow2_co_create_opts) */
    o.size = rb_qcow2_round_size(o.size);
    ret = rb_qcow2_check_opts(&o, err);
    if (ret < 0)
        return ret;
    /* never lay an image over something: the caller empties its output */
    if ((ret = rb_io_size(fd, &bytes)) < 0)
        return rb_error_errno(err, -ret, "%s: cannot get size", path);
    if (rb_io_is_blockdev(fd) || bytes != 0)
        return rb_error_set(err, EINVAL, "%s: a new qcow2 image needs an empty file", path);
    plan_layout(&o, &p);
    buf = malloc(p.c);
    if (!buf)
        return rb_error_set(err, ENOMEM, "out of memory");
    ret = write_image(fd, path, &o, &p, buf, err);
    free(buf);
    return ret;
}

uint64_t rb_qcow2_round_size(uint64_t size)
{
    return size > UINT64_MAX - 511 ? size : (size + 511) & ~(uint64_t)511;
}
