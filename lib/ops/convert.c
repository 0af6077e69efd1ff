/* SPDX-License-Identifier: MIT */
/*
 * convert.c - the copy engine: copy what block status reports as data
 * from one image to another, chunk by chunk, in ascending order.
 *
 * The loop keeps one invariant: `off` is granule-aligned.  A range the
 * source reports as zero (hole, zero cluster, unallocated in the whole
 * chain) is skipped in whole granules without being read; anything else
 * is read a chunk at a time (only its data sub-ranges are read, the rest
 * of the buffer is zero-filled) and written granule run by granule run,
 * leaving out all-zero granules.
 *
 * Two stages overlap: reader threads (NB_READERS) plan steps in guest
 * order under one mutex (block status at a cursor) and fill chunk buffers
 * in parallel (NB_BUFS of them: memory is bounded); the calling thread
 * writes the steps strictly in order.  Readers only touch the source, the
 * caller only the destination.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "rblock/io.h"
#include "rblock/ops.h"

#define NB_READERS 2
#define NB_BUFS 3 /* chunk buffers shared by the readers and the writer */
#define RING 8    /* steps planned and not yet written (zero steps need no buffer) */

/* One step of the copy, planned by a reader and written by the writer. */
struct step {
    uint64_t off, len;
    bool zero;    /* the range reads as zeros: nothing was read */
    bool ready;   /* filled (data) or nothing to fill (zero) */
    int buf;      /* with !zero: index of the buffer holding the bytes */
};

struct copy {
    struct rb_image *src, *dst;
    const struct rb_copy_opts *o;
    uint64_t size;   /* bytes to copy: the source's virtual size */
    size_t granule;  /* zero-detection and write alignment unit */
    size_t chunk;    /* multiple of granule */
    bool merge_zero; /* -S above the granule, raw destination */
    uint8_t *wbuf;   /* the buffer flush_chunk writes (writer side) */
    struct rb_error *err;  /* the writer's (the caller's) */

    /* shared between readers and the writer, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct step ring[RING];  /* step seq lives at ring[seq % RING] */
    uint64_t next_seq;       /* next step to plan */
    uint64_t head_seq;       /* next step to write */
    uint64_t cursor;         /* guest bytes planned so far */
    uint8_t *bufs[NB_BUFS + 1]; /* + a zero buffer for -S 0 */
    bool buf_busy[NB_BUFS];
    unsigned readers;        /* reader threads still running */
    bool stop;               /* a failure: everybody ends */
    int reader_ret;
    struct rb_error rerr;    /* the first reader failure */
};

static bool reads_zero(const struct rb_extent *e)
{
    return (e->flags & RB_BS_ZERO) != 0;
}

static int put_data(struct copy *c, const uint8_t *buf, uint64_t off, size_t len);

/* Zero [off, off + len) of the destination unless it already reads as
 * zeros. */
static int put_zeroes(struct copy *c, uint64_t off, uint64_t len)
{
    if (c->o->no_sparse) {
        /* -S 0: zeros are written as data (bufs[NB_BUFS] stays zero) */
        while (len > 0) {
            size_t n = len < c->chunk ? (size_t)len : c->chunk;
            int ret = put_data(c, c->bufs[NB_BUFS], off, n);
            if (ret < 0)
                return ret;
            off += n;
            len -= n;
        }
        return 0;
    }
    if (c->o->dst_zeroed || len == 0)
        return 0;
    return rb_image_write_zeroes(c->dst, off, len, RB_ZERO_MAY_UNMAP, c->err);
}

/* Write the non-zero run buf[0, len) at guest offset off. */
static int put_data(struct copy *c, const uint8_t *buf, uint64_t off, size_t len)
{
    if (!c->o->compress)
        return rb_image_write(c->dst, buf, off, len, 0, c->err);
    /* one cluster at a time: the last one may be short (end of image) */
    for (size_t done = 0; done < len; done += c->granule) {
        size_t n = len - done < c->granule ? len - done : c->granule;
        int ret = c->dst->ops->write_compressed(c->dst, buf + done, off + done, n, c->err);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* Fill @buf with the guest bytes of [off, off + len), reading only the
 * sub-ranges that hold data.  @first is the status already known at off. */
static int fill_chunk(struct copy *c, uint8_t *buf, uint64_t off, size_t len,
                      struct rb_extent first, struct rb_error *err)
{
    size_t pos = 0;
    struct rb_extent e = first;
    int ret;

    while (pos < len) {
        size_t n;
        if (pos > 0) {
            ret = rb_image_block_status(c->src, off + pos, len - pos, &e, err);
            if (ret < 0)
                return ret;
        }
        n = e.length < len - pos ? (size_t)e.length : len - pos;
        if (reads_zero(&e)) {
            memset(buf + pos, 0, n);
        } else {
            ret = rb_image_read(c->src, buf + pos, off + pos, n, err);
            if (ret < 0)
                return ret;
        }
        pos += n;
    }
    return 0;
}

/* Write c->wbuf[0, len) (guest [off, off + len)) skipping zero granules.
 * With a raw destination and min_sparse above the granule (-S), a zero
 * run shorter than min_sparse between data is written as data. */
static int flush_chunk(struct copy *c, uint64_t off, size_t len)
{
    size_t pos = 0, dstart = 0, dend = 0; /* pending data [dstart, dend) */
    size_t min = c->merge_zero ? c->o->min_sparse : 0;
    int ret;

    while (pos < len) {
        size_t start = pos;
        bool zero = !c->o->no_sparse &&
                    rb_is_zero(c->wbuf + pos, len - pos < c->granule ? len - pos : c->granule);

        /* extend the run while granules have the same kind */
        do {
            pos += len - pos < c->granule ? len - pos : c->granule;
        } while (pos < len &&
                 (!c->o->no_sparse &&
                  rb_is_zero(c->wbuf + pos, len - pos < c->granule ? len - pos : c->granule)) ==
                     zero);
        if (!zero || (min && dend > dstart && pos - start < min)) {
            if (dend == dstart)
                dstart = start;
            dend = pos; /* data, or a short zero run after data */
            continue;
        }
        if (dend > dstart) {
            ret = put_data(c, c->wbuf + dstart, off + dstart, dend - dstart);
            if (ret < 0)
                return ret;
            dstart = dend = 0;
        }
        ret = put_zeroes(c, off + start, pos - start);
        if (ret < 0)
            return ret;
    }
    if (dend > dstart)
        return put_data(c, c->wbuf + dstart, off + dstart, dend - dstart);
    return 0;
}

static int free_buf(struct copy *c)
{
    for (int i = 0; i < NB_BUFS; i++) {
        if (!c->buf_busy[i])
            return i;
    }
    return -1;
}

/* A reader thread: plan the next step under mu, fill it outside. */
static void *reader(void *arg)
{
    struct copy *c = arg;
    struct rb_error err = {0};
    int ret = 0;

    pthread_mutex_lock(&c->mu);
    for (;;) {
        struct rb_extent e;
        struct step st = {0};
        uint64_t seq, end;
        int bi;

        /* a free ring slot and a free buffer before planning */
        while (!c->stop && c->cursor < c->size &&
               (c->next_seq - c->head_seq >= RING || free_buf(c) < 0))
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->stop || c->cursor >= c->size)
            break;
        st.off = c->cursor;
        ret = rb_image_block_status(c->src, st.off, c->size - st.off, &e, &err);
        if (ret < 0)
            break;
        if (reads_zero(&e)) {
            /* skip whole granules; a partial one is handled as a chunk */
            end = st.off + e.length;
            if (end < c->size)
                end -= end % c->granule;
            if (end > st.off) {
                st.len = end - st.off;
                st.zero = st.ready = true;
                c->ring[c->next_seq++ % RING] = st;
                c->cursor = end;
                pthread_cond_broadcast(&c->cv);
                continue;
            }
        }
        /* a chunk ending on a chunk boundary keeps writes aligned */
        end = st.off - st.off % c->chunk + c->chunk;
        if (c->merge_zero && st.off + e.length < end) {
            /* -S: a chunk stops where the source's data does, so that
             * only zeros inside data are measured against min_sparse */
            end = st.off + e.length;
            end += (c->granule - end % c->granule) % c->granule;
        }
        if (end > c->size)
            end = c->size;
        bi = free_buf(c);
        c->buf_busy[bi] = true;
        st.len = end - st.off;
        st.buf = bi;
        seq = c->next_seq++;
        c->ring[seq % RING] = st;
        c->cursor = end;
        pthread_mutex_unlock(&c->mu);

        ret = fill_chunk(c, c->bufs[bi], st.off, (size_t)st.len, e, &err);

        pthread_mutex_lock(&c->mu);
        if (ret < 0)
            break;
        c->ring[seq % RING].ready = true;
        pthread_cond_broadcast(&c->cv);
    }
    if (ret < 0 && !c->stop) {
        c->stop = true;
        c->reader_ret = ret;
        c->rerr = err;
    }
    c->readers--;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* The writer (the calling thread): the steps strictly in order. */
static int writer(struct copy *c)
{
    int ret = 0;

    pthread_mutex_lock(&c->mu);
    for (;;) {
        struct step st;

        while (!c->stop && !(c->head_seq < c->next_seq && c->ring[c->head_seq % RING].ready) &&
               !(c->head_seq == c->next_seq && c->readers == 0))
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->stop) {
            ret = c->reader_ret;
            break;
        }
        if (c->head_seq == c->next_seq) /* readers done, all written */
            break;
        st = c->ring[c->head_seq % RING];
        pthread_mutex_unlock(&c->mu);

        if (st.zero) {
            ret = put_zeroes(c, st.off, st.len);
        } else {
            c->wbuf = c->bufs[st.buf];
            ret = flush_chunk(c, st.off, (size_t)st.len);
        }
        if (ret == 0 && c->o->progress)
            c->o->progress(c->o->opaque, st.off + st.len);

        pthread_mutex_lock(&c->mu);
        if (!st.zero)
            c->buf_busy[st.buf] = false;
        c->head_seq++;
        if (ret < 0)
            c->stop = true;
        pthread_cond_broadcast(&c->cv);
        if (ret < 0)
            break;
    }
    pthread_mutex_unlock(&c->mu);
    return ret;
}

static int copy_loop(struct copy *c)
{
    pthread_t t[NB_READERS];
    unsigned started = 0;
    int ret;

    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    pthread_mutex_lock(&c->mu);
    for (unsigned i = 0; i < NB_READERS; i++) {
        if (pthread_create(&t[i], NULL, reader, c) != 0)
            break;
        started++;
        c->readers++;
    }
    pthread_mutex_unlock(&c->mu);
    if (!started) {
        ret = rb_error_set(c->err, EAGAIN, "cannot start a reader thread");
    } else {
        ret = writer(c);
        /* writer() ends with stop set on failure: the readers see it */
        for (unsigned i = 0; i < started; i++)
            pthread_join(t[i], NULL);
        if (ret < 0 && c->reader_ret < 0 && c->rerr.msg[0])
            rb_error_set(c->err, c->rerr.code, "%s", c->rerr.msg);
    }
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    return ret;
}

int rb_copy_image(struct rb_image *src, struct rb_image *dst,
                  const struct rb_copy_opts *opts, struct rb_error *err)
{
    static const struct rb_copy_opts defaults;
    struct copy c = {.src = src, .dst = dst, .o = opts ? opts : &defaults, .err = err};
    int ret;

    c.size = src->size;
    if (dst->size < c.size)
        return rb_error_set(err, ENOSPC,
                            "%s: destination is smaller (%" PRIu64 " bytes) than the "
                            "source (%" PRIu64 " bytes)",
                            dst->filename, dst->size, c.size);
    if (c.o->compress && !dst->ops->write_compressed)
        return rb_error_set(err, ENOTSUP, "%s: format '%s' cannot store compressed data",
                            dst->filename, dst->ops->format);
    c.granule = dst->cluster_bytes                              ? dst->cluster_bytes
                : c.o->min_sparse >= 512 && c.o->min_sparse < 4096 ? c.o->min_sparse
                                                                : 4096;
    c.merge_zero = !dst->cluster_bytes && c.o->min_sparse > c.granule;
    c.chunk = c.o->chunk_bytes ? c.o->chunk_bytes : RB_COPY_DEFAULT_CHUNK;
    if (c.chunk < c.granule)
        c.chunk = c.granule;
    c.chunk -= c.chunk % c.granule;
    for (int i = 0; i < NB_BUFS; i++)
        c.bufs[i] = aligned_alloc(4096, (c.chunk + 4095) & ~(size_t)4095);
    if (c.o->no_sparse)
        c.bufs[NB_BUFS] = calloc(1, c.chunk);
    ret = 0;
    for (int i = 0; i < NB_BUFS; i++)
        if (!c.bufs[i])
            ret = -ENOMEM;
    if (c.o->no_sparse && !c.bufs[NB_BUFS])
        ret = -ENOMEM;
    if (ret < 0)
        ret = rb_error_set(err, ENOMEM, "out of memory for %zu-byte copy buffers", c.chunk);
    else
        ret = copy_loop(&c);
    for (int i = 0; i <= NB_BUFS; i++)
        free(c.bufs[i]);
    return ret;
}

int rb_copy_count_data(struct rb_image *src, uint64_t granule, uint64_t *bytes,
                       struct rb_error *err)
{
    uint64_t off = 0, total = 0, last_end = 0; /* granule already counted */

    while (off < src->size) {
        struct rb_extent e;
        int ret = rb_image_block_status(src, off, src->size - off, &e, err);
        if (ret < 0)
            return ret;
        if (!reads_zero(&e)) {
            uint64_t first = off - off % granule, end = off + e.length;
            if (first < last_end)
                first = last_end;
            end += (granule - end % granule) % granule;
            if (end > first)
                total += end - first;
            last_end = end;
        }
        off += e.length;
    }
    *bytes = total;
    return 0;
}
