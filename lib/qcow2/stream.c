/* SPDX-License-Identifier: MIT */
/*
 * stream.c - the sequential qcow2 writer that convert fills.
 *
 * Clusters are handed out from one allocation pointer, in the order the
 * guest data arrives, so the file is laid out as QEMU lays out a converted
 * image: header, refcount table, refcount block, L1 table, then each L2
 * table just before its first data cluster, and a new refcount block at
 * the allocation pointer whenever the pointer passes the range the last
 * block covers (the block then counts itself).  Every allocated cluster
 * gets its refcount as it is allocated; compressed clusters are packed
 * byte by byte and count one reference per compressed cluster that touches
 * a host cluster, as QEMU does.
 *
 * Ordering: this writer makes a file that is only valid after flush (the
 * output is deleted on failure), so nothing is ordered in between.  Flush
 * writes the current L2 table, refcount block, refcount table, L1 and the
 * header last, then fdatasync's.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "qcow2/qcow2.h"
#include "qcow2/qcow2w.h"
#include "rblock/io.h"

struct stream {
    int fd;
    struct rb_qcow2_create_opts o;
    uint64_t c;           /* cluster bytes */
    unsigned order;       /* refcount_order */
    uint64_t ref_entries; /* refcounts per block */
    uint64_t ref_max;
    uint64_t l2_entries;
    size_t l2_esz;        /* 8 or 16 */

    struct qcow2w_layout lay;
    uint64_t *l1;         /* host order */
    uint64_t *reftable;   /* host order, lay.reftable_clusters * c / 8 */
    uint64_t reftable_cap;
    uint64_t nb_refblocks;

    uint8_t *refblock;    /* block nb_refblocks - 1, in memory */
    uint8_t *l2;          /* the L2 table being filled */
    uint64_t l2_index;    /* its L1 index; UINT64_MAX for none */

    uint64_t next_cluster; /* allocation pointer */
    uint64_t next_guest;   /* writes must start at or after this */
    uint64_t file_end;     /* highest byte written */
    uint64_t wb_end;       /* writeback started up to here */
    uint64_t cdata_end;    /* highest byte of compressed data written */

    uint64_t cbyte;        /* next free byte for compressed data, 0: none */
    uint8_t *cbuf;         /* compressed output, one cluster */
    uint8_t *pad;          /* zero-padded last cluster */
    ZSTD_CCtx *zctx;
};

static struct stream *S(struct rb_image *img)
{
    return img->priv;
}

static int io_err(struct rb_image *img, int ret, const char *what, struct rb_error *err)
{
    return rb_error_errno(err, -ret, "%s: %s", img->filename, what);
}

static int put(struct rb_image *img, const void *buf, size_t len, uint64_t off,
               struct rb_error *err)
{
    struct stream *s = S(img);
    int ret = rb_io_pwrite(s->fd, buf, len, off);

    if (ret < 0)
        return io_err(img, ret, "write error", err);
    if (off + len > s->file_end)
        s->file_end = off + len;
    /* write-behind: the disk works while we fill the page cache */
    rb_io_writebehind(s->fd, &s->wb_end, s->file_end);
    return 0;
}

/* Set the refcount of host cluster @idx: in memory for the newest block,
 * read-modify-write on disk for an older one (rare: a compressed cluster
 * that straddles a refcount block boundary). */
static int ref_set(struct rb_image *img, uint64_t idx, uint64_t value, struct rb_error *err)
{
    struct stream *s = S(img);
    uint64_t blk = idx / s->ref_entries, i = idx % s->ref_entries;
    unsigned bits = 1u << s->order;
    uint8_t tmp[8];
    size_t n = bits < 8 ? 1 : bits / 8;
    uint64_t at;
    int ret;

    if (blk >= s->nb_refblocks)
        return rb_error_set(err, EIO, "%s: internal error: cluster %" PRIu64
                            " has no refcount block", img->filename, idx);
    if (blk == s->nb_refblocks - 1) {
        qcow2_refblock_set(s->refblock, s->order, i, value);
        return 0;
    }
    at = s->reftable[blk] + i * bits / 8;
    ret = rb_io_pread(s->fd, tmp, n, at);
    if (ret < 0)
        return io_err(img, ret, "read error", err);
    qcow2_refblock_set(tmp, s->order, bits < 8 ? i % (8 / bits) : 0, value);
    return put(img, tmp, n, at, err);
}

static uint64_t ref_get_mem(struct stream *s, uint64_t idx, bool *in_mem)
{
    *in_mem = idx / s->ref_entries == s->nb_refblocks - 1;
    return *in_mem ? qcow2_refblock_get(s->refblock, s->order, idx % s->ref_entries) : 0;
}

/* Start refcount block number nb_refblocks at the allocation pointer. */
static int new_refblock(struct rb_image *img, struct rb_error *err)
{
    struct stream *s = S(img);
    int ret;

    if (s->nb_refblocks >= s->reftable_cap)
        return rb_error_set(err, EFBIG, "%s: image outgrew its refcount table "
                            "(%" PRIu64 " refcount blocks)", img->filename,
                            s->reftable_cap);
    if (s->nb_refblocks > 0) {
        ret = put(img, s->refblock, s->c, s->reftable[s->nb_refblocks - 1], err);
        if (ret < 0)
            return ret;
    }
    memset(s->refblock, 0, s->c);
    s->reftable[s->nb_refblocks++] = s->next_cluster * s->c;
    /* reserve the cluster on disk now, so an older block read back by
     * ref_set is never past the end of the file */
    ret = put(img, s->refblock, s->c, s->next_cluster * s->c, err);
    s->next_cluster++;
    return ret;
}

/* Allocate one cluster at the allocation pointer with refcount 1. */
static int alloc_cluster(struct rb_image *img, uint64_t *host, struct rb_error *err)
{
    struct stream *s = S(img);
    uint64_t first_new = s->nb_refblocks;
    int ret;

    /* Blocks placed here describe themselves: each new block lands inside
     * the range it covers unless the table area before it was larger than
     * one block's range (tiny clusters), which the loop also handles. */
    while (s->next_cluster >= s->nb_refblocks * s->ref_entries) {
        ret = new_refblock(img, err);
        if (ret < 0)
            return ret;
    }
    for (uint64_t b = first_new; b < s->nb_refblocks; b++) {
        ret = ref_set(img, s->reftable[b] / s->c, 1, err);
        if (ret < 0)
            return ret;
    }
    *host = s->next_cluster++;
    return ref_set(img, *host, 1, err);
}

static int write_l2(struct rb_image *img, struct rb_error *err)
{
    struct stream *s = S(img);

    if (s->l2_index == UINT64_MAX)
        return 0;
    return put(img, s->l2, s->c, s->l1[s->l2_index] & QCOW2_L1E_OFFSET_MASK, err);
}

/* Make the L2 table covering guest cluster @gc current; allocate it when
 * its range is first written. */
static int ensure_l2(struct rb_image *img, uint64_t gc, struct rb_error *err)
{
    struct stream *s = S(img);
    uint64_t idx = gc / s->l2_entries, host;
    int ret;

    if (idx == s->l2_index)
        return 0;
    ret = write_l2(img, err);
    if (ret == 0)
        ret = alloc_cluster(img, &host, err);
    if (ret < 0)
        return ret;
    memset(s->l2, 0, s->c);
    /* refcount 1: COPIED is set (qcow2.txt, L1 entry bit 63) */
    s->l1[idx] = host * s->c | QCOW2_OFLAG_COPIED;
    s->l2_index = idx;
    return 0;
}

static void set_l2(struct stream *s, uint64_t gc, uint64_t entry, uint64_t bitmap)
{
    uint8_t *e = s->l2 + (gc % s->l2_entries) * s->l2_esz;

    rb_store_be64(e, entry);
    if (s->l2_esz == 16)
        rb_store_be64(e + 8, bitmap);
}

static int check_order(struct rb_image *img, uint64_t off, uint64_t len, bool whole,
                       struct rb_error *err)
{
    struct stream *s = S(img);

    if (off < s->next_guest || off % s->c ||
        (whole && len % s->c && off + len + s->c <= img->size))
        return rb_error_set(err, ENOTSUP,
                            "%s: sequential writer: write at %" PRIu64 " length %" PRIu64
                            " is not cluster-aligned and ascending (next %" PRIu64 ")",
                            img->filename, off, len, s->next_guest);
    return 0;
}

/* Extended L2: the allocation bitmap of the subclusters of @p (@n bytes,
 * the rest of the cluster past the image end counts as zero) that hold
 * non-zero bytes; zero subclusters stay unallocated (no backing: they read
 * as zeros), so only data reaches the file, as QEMU does. */
static uint32_t data_bitmap(struct stream *s, const uint8_t *p, size_t n)
{
    size_t sc = s->c / QCOW2_SUBCLUSTERS;
    uint32_t bits = 0;

    for (unsigned i = 0; i < QCOW2_SUBCLUSTERS && i * sc < n; i++) {
        size_t len = n - i * sc < sc ? n - i * sc : sc;
        if (!rb_is_zero(p + i * sc, len))
            bits |= 1u << i;
    }
    return bits;
}

struct run {
    uint64_t host, len;
    const uint8_t *buf;
};

/* Queue @len bytes of @p for host offset @host, writing the queued run
 * first when this does not continue it. */
static int run_add(struct rb_image *img, struct run *r, const uint8_t *p, uint64_t host,
                   uint64_t len, struct rb_error *err)
{
    int ret;

    if (r->len && (host != r->host + r->len || p != r->buf + r->len)) {
        ret = put(img, r->buf, r->len, r->host, err);
        r->len = 0;
        if (ret < 0)
            return ret;
    }
    if (!r->len) {
        r->host = host;
        r->buf = p;
    }
    r->len += len;
    return 0;
}

static int stream_write(struct rb_image *img, const void *buf, uint64_t off, size_t len,
                        unsigned flags, struct rb_error *err)
{
    struct stream *s = S(img);
    const uint8_t *p = buf;
    struct run r = {0};
    int ret = check_order(img, off, len, true, err);

    if (ret < 0)
        return ret;
    for (uint64_t done = 0; done < len; done += s->c) {
        uint64_t gc = (off + done) / s->c, host;
        size_t n = len - done < s->c ? (size_t)(len - done) : (size_t)s->c;
        uint32_t bits = s->l2_esz == 16 ? data_bitmap(s, p + done, n) : 0xffffffffu;

        if (!bits)
            continue;
        ret = ensure_l2(img, gc, err);
        if (ret == 0)
            ret = alloc_cluster(img, &host, err);
        if (ret < 0)
            return ret;
        set_l2(s, gc, host * s->c | QCOW2_OFLAG_COPIED, bits);
        if (bits == 0xffffffffu) {
            ret = run_add(img, &r, p + done, host * s->c, n, err);
        } else {
            size_t sc = s->c / QCOW2_SUBCLUSTERS;
            for (unsigned i = 0; ret == 0 && i < QCOW2_SUBCLUSTERS; i++) {
                if ((bits >> i & 1) && i * sc < n)
                    ret = run_add(img, &r, p + done + i * sc, host * s->c + i * sc,
                                  n - i * sc < sc ? n - i * sc : sc, err);
            }
        }
        if (ret < 0)
            return ret;
    }
    s->next_guest = off + len;
    if (r.len)
        ret = put(img, r.buf, r.len, r.host, err);
    (void)flags;
    return ret;
}

/* A new image reads as zeros where nothing is allocated. */
static int stream_write_zeroes(struct rb_image *img, uint64_t off, uint64_t len,
                               unsigned flags, struct rb_error *err)
{
    int ret = check_order(img, off, len, false, err);

    if (ret == 0 && off + len > S(img)->next_guest)
        S(img)->next_guest = off + len;
    return ret;
}

/* Compress @src (one cluster) into s->cbuf; returns the length, or 0 when
 * it does not shrink below a cluster (QEMU's rule: store uncompressed). */
static long squeeze(struct stream *s, const void *src, struct rb_error *err)
{
    size_t cap = s->c - 1;

    if (s->o.compression_type == QCOW2_COMPRESSION_ZSTD) {
        size_t n = ZSTD_compress2(s->zctx, s->cbuf, cap, src, s->c);
        if (ZSTD_isError(n))
            return 0; /* does not fit (or cannot): store it uncompressed */
        return (long)n;
    }
    /* zlib raw deflate, window 2^12, as QEMU (qcow2-threads.c) */
    z_stream z;
    long out;
    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) !=
        Z_OK)
        return rb_error_set(err, ENOMEM, "cannot start zlib");
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)s->c;
    z.next_out = s->cbuf;
    z.avail_out = (uInt)cap;
    out = deflate(&z, Z_FINISH) == Z_STREAM_END ? (long)(cap - z.avail_out) : 0;
    deflateEnd(&z);
    return out;
}

/* Reserve @len bytes for compressed data, packed after the previous
 * compressed cluster when it fits (contiguous host clusters only, and no
 * refcount overflow), and count one reference in each host cluster. */
static int alloc_bytes(struct rb_image *img, size_t len, uint64_t *at, struct rb_error *err)
{
    struct stream *s = S(img);
    uint64_t cur = s->cbyte / s->c, host;
    bool in_mem = false;
    uint64_t ref = s->cbyte ? ref_get_mem(s, cur, &in_mem) : 0;
    int ret;

    /* Pack after the previous compressed cluster when its host cluster has
     * room and its refcount can grow; the data may spill into the next
     * host cluster only if that is the very next one to be allocated (not
     * an L2 table or a refcount block in between). */
    if (s->cbyte % s->c && in_mem && ref < s->ref_max) {
        bool spills = (s->cbyte + len - 1) / s->c != cur;
        if (!spills || (s->next_cluster == cur + 1 &&
                        s->next_cluster < s->nb_refblocks * s->ref_entries)) {
            if (spills) {
                ret = alloc_cluster(img, &host, err); /* host == cur + 1, ref 1 */
                if (ret < 0)
                    return ret;
            }
            *at = s->cbyte;
            s->cbyte += len;
            return ref_set(img, cur, ref + 1, err);
        }
    }
    ret = alloc_cluster(img, &host, err);
    if (ret < 0)
        return ret;
    /* len < cluster: fits in the fresh cluster, whose refcount is 1 */
    *at = host * s->c;
    s->cbyte = *at + len;
    return 0;
}

static int stream_write_compressed(struct rb_image *img, const void *buf, uint64_t off,
                                   size_t len, struct rb_error *err)
{
    struct stream *s = S(img);
    uint64_t gc = off / s->c, at = 0, nb_sectors, entry;
    unsigned x = 62 - (qcow2w_log2(s->c) - 8);
    long clen;
    int ret = check_order(img, off, len, true, err);

    if (ret < 0)
        return ret;
    if (len > s->c || (len < s->c && off + s->c < img->size))
        return rb_error_set(err, EINVAL, "%s: compressed write of %zu bytes is not "
                            "one cluster", img->filename, len);
    if (len < s->c) { /* last cluster of the image: compress it zero-padded */
        memcpy(s->pad, buf, len);
        memset(s->pad + len, 0, s->c - len);
        buf = s->pad;
    }
    clen = squeeze(s, buf, err);
    if (clen < 0)
        return clen;
    if (clen == 0)
        return stream_write(img, buf, off, len, 0, err);
    ret = ensure_l2(img, gc, err);
    if (ret == 0)
        ret = alloc_bytes(img, (size_t)clen, &at, err);
    if (ret == 0)
        ret = put(img, s->cbuf, (size_t)clen, at, err);
    if (ret < 0)
        return ret;
    if (at + (uint64_t)clen > s->cdata_end)
        s->cdata_end = at + (uint64_t)clen;
    /* qcow2.txt "Compressed Clusters Descriptor": offset in bits 0..x-1,
     * additional 512-byte sectors in bits x..61 */
    nb_sectors = ((at + (uint64_t)clen - 1) >> 9) - (at >> 9);
    entry = QCOW2_OFLAG_COMPRESSED | nb_sectors << x | at;
    set_l2(s, gc, entry, 0);
    s->next_guest = off + len;
    return 0;
}

static int stream_flush(struct rb_image *img, struct rb_error *err)
{
    struct stream *s = S(img);
    uint64_t l1_bytes = s->lay.l1_entries * 8, rt_bytes = s->reftable_cap * 8;
    uint8_t *buf = malloc(l1_bytes > rt_bytes ? l1_bytes : rt_bytes);
    uint64_t end;
    int ret;

    if (!buf)
        return rb_error_set(err, ENOMEM, "out of memory");
    /* data is all written; the tables that point at it follow */
    ret = write_l2(img, err);
    if (ret == 0)
        ret = put(img, s->refblock, s->c, s->reftable[s->nb_refblocks - 1], err);
    if (ret == 0) {
        for (uint64_t i = 0; i < s->reftable_cap; i++)
            rb_store_be64(buf + i * 8, s->reftable[i]);
        ret = put(img, buf, rt_bytes, s->lay.reftable_off, err);
    }
    if (ret == 0 && l1_bytes) {
        for (uint64_t i = 0; i < s->lay.l1_entries; i++)
            rb_store_be64(buf + i * 8, s->l1[i]);
        ret = put(img, buf, l1_bytes, s->lay.l1_off, err);
    }
    free(buf);
    if (ret < 0)
        return ret;
    /* the file ends with the last byte written; a compressed cluster's
     * last sector is made whole (readers read whole sectors) */
    end = s->file_end;
    if (((s->cdata_end + 511) & ~511ull) > end)
        end = (s->cdata_end + 511) & ~511ull;
    if ((ret = rb_io_truncate(s->fd, end)) < 0)
        return io_err(img, ret, "cannot resize", err);
    /* header last: it makes the file a valid image */
    buf = malloc(s->c);
    if (!buf)
        return rb_error_set(err, ENOMEM, "out of memory");
    ret = qcow2w_build_header(&s->o, &s->lay, 0, buf, s->c, err);
    if (ret == 0)
        ret = put(img, buf, s->c < end ? s->c : end, 0, err);
    free(buf);
    if (ret == 0 && (ret = rb_io_sync(s->fd)) < 0)
        return io_err(img, ret, "sync failed", err);
    return ret;
}

static int stream_read(struct rb_image *img, void *buf, uint64_t off, size_t len,
                       struct rb_error *err)
{
    return rb_error_set(err, ENOTSUP, "%s: the sequential writer cannot read",
                        img->filename);
}

static int stream_block_status(struct rb_image *img, uint64_t off, uint64_t len,
                               struct rb_extent *ext, struct rb_error *err)
{
    return stream_read(img, NULL, off, len, err);
}

static void stream_close(struct rb_image *img)
{
    struct stream *s = S(img);

    if (!s)
        return;
    if (s->fd >= 0)
        close(s->fd);
    free(s->l1);
    free(s->reftable);
    free(s->refblock);
    free(s->l2);
    free(s->cbuf);
    free(s->pad);
    ZSTD_freeCCtx(s->zctx);
    free(s);
    img->priv = NULL;
}

static const struct rb_image_ops stream_ops = {
    .format = "qcow2",
    .read = stream_read,
    .write = stream_write,
    .write_zeroes = stream_write_zeroes,
    .flush = stream_flush,
    .block_status = stream_block_status,
    .write_compressed = stream_write_compressed,
    .close = stream_close,
};

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

/* Size the refcount table for the largest file the image can become
 * (every cluster written, every L2 table present), so it never grows. */
static void size_reftable(struct stream *s)
{
    uint64_t l1c = div_up(s->lay.l1_entries * 8, s->c);
    uint64_t data = div_up(s->o.size, s->c), l2s = s->lay.l1_entries;
    uint64_t most;

    if (s->o.data_bytes_hint && div_up(s->o.data_bytes_hint, s->c) < data)
        data = div_up(s->o.data_bytes_hint, s->c);
    if (data < l2s)
        l2s = data;
    most = 1 + (l1c ? l1c : 1) + l2s + data;
    uint64_t rt = 1, blocks;

    for (;;) {
        blocks = div_up(most + rt + div_up(most + rt, s->ref_entries) + 1, s->ref_entries);
        if (div_up(blocks * 8, s->c) <= rt)
            break;
        rt = div_up(blocks * 8, s->c);
    }
    if (rt * s->c > QCOW2_MAX_REFTABLE_BYTES)
        rt = QCOW2_MAX_REFTABLE_BYTES / s->c;
    s->lay.reftable_clusters = (uint32_t)rt;
    s->reftable_cap = rt * s->c / 8;
}

static int stream_start(struct rb_image *img, struct rb_error *err)
{
    struct stream *s = S(img);
    uint64_t host;
    int ret;

    s->c = s->o.cluster_bytes;
    s->order = qcow2w_log2(s->o.refcount_bits);
    s->ref_entries = s->c * 8 / s->o.refcount_bits;
    s->ref_max = qcow2w_ref_max(s->order);
    s->l2_entries = qcow2w_l2_entries(&s->o);
    s->l2_esz = s->o.extended_l2 ? 16 : 8;
    s->l2_index = UINT64_MAX;
    s->lay.cluster_bits = qcow2w_log2(s->c);
    s->lay.l1_entries = qcow2w_l1_entries(&s->o);
    s->lay.reftable_off = s->c;
    size_reftable(s);
    s->l1 = calloc(s->lay.l1_entries ? s->lay.l1_entries : 1, 8);
    s->reftable = calloc(s->reftable_cap, 8);
    s->refblock = calloc(1, s->c);
    s->l2 = calloc(1, s->c);
    s->cbuf = malloc(s->c);
    s->pad = malloc(s->c);
    s->zctx = ZSTD_createCCtx();
    if (!s->l1 || !s->reftable || !s->refblock || !s->l2 || !s->cbuf || !s->pad || !s->zctx)
        return rb_error_set(err, ENOMEM, "out of memory");
    /* header and refcount table first, then refcount block 0, then L1 */
    s->next_cluster = 1 + s->lay.reftable_clusters;
    ret = alloc_cluster(img, &host, err); /* also places refcount block 0 */
    if (ret < 0)
        return ret;
    /* that cluster is the L1's first; header and table were pre-placed */
    for (uint64_t i = 0; i <= s->lay.reftable_clusters; i++) {
        ret = ref_set(img, i, 1, err);
        if (ret < 0)
            return ret;
    }
    s->lay.l1_off = host * s->c;
    for (uint64_t i = 1; i < div_up(s->lay.l1_entries * 8, s->c); i++) {
        ret = alloc_cluster(img, &host, err);
        if (ret < 0)
            return ret;
    }
    /* the file reaches at least the end of the L1 table */
    if (s->lay.l1_off + s->lay.l1_entries * 8 > s->file_end)
        s->file_end = s->lay.l1_off + s->lay.l1_entries * 8;
    if (s->file_end < s->lay.l1_off + 8)
        s->file_end = s->next_cluster * s->c; /* empty L1: whole cluster */
    return 0;
}

struct rb_image *rb_qcow2_stream_create(int fd, const char *path,
                                        const struct rb_qcow2_create_opts *opts,
                                        struct rb_error *err)
{
    struct rb_qcow2_create_opts o = *opts;
    struct rb_image *img;
    struct stream *s;
    uint64_t bytes;
    int ret;

    o.size = rb_qcow2_round_size(o.size);
    if (rb_qcow2_check_opts(&o, err) < 0)
        goto fail_fd;
    if (o.backing_file || o.preallocation != RB_QCOW2_PREALLOC_OFF) {
        rb_error_set(err, EINVAL, "%s: the sequential writer makes images without "
                     "backing file or preallocation", path);
        goto fail_fd;
    }
    /* never lay an image over something: the caller empties its output */
    if ((ret = rb_io_size(fd, &bytes)) < 0) {
        rb_error_errno(err, -ret, "%s: cannot get size", path);
        goto fail_fd;
    }
    if (rb_io_is_blockdev(fd) || bytes != 0) {
        rb_error_set(err, EINVAL, "%s: a new qcow2 image needs an empty file", path);
        goto fail_fd;
    }
    img = rb_image_new(&stream_ops, path);
    s = calloc(1, sizeof(*s));
    if (!img || !s) {
        free(s);
        rb_image_close(img);
        rb_error_set(err, ENOMEM, "out of memory");
        goto fail_fd;
    }
    img->priv = s;
    s->o = o;
    s->fd = fd;
    img->size = o.size;
    img->cluster_bytes = o.cluster_bytes;
    if (stream_start(img, err) < 0) {
        rb_image_close(img);
        return NULL;
    }
    return img;
fail_fd:
    close(fd);
    return NULL;
}
