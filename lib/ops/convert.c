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
 * Two stages overlap: a reader thread walks block status and fills chunk
 * buffers (two, so memory stays at two chunks), the calling thread writes
 * them in order.  Only the reader touches the source, only the caller the
 * destination, so neither needs the other's lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "rblock/io.h"
#include "rblock/ops.h"

#define NB_BUFS 2

/* One step of the copy handed from the reader to the writer. */
struct step {
    uint64_t off, len;
    bool zero;    /* the range reads as zeros: nothing was read */
    uint8_t *buf; /* with !zero: the guest bytes */
};

struct copy {
    struct rb_image *src, *dst;
    const struct rb_copy_opts *o;
    uint64_t size;   /* bytes to copy: the source's virtual size */
    size_t granule;  /* zero-detection and write alignment unit */
    size_t chunk;    /* multiple of granule */
    uint8_t *buf;    /* the buffer fill_chunk fills (reader side) */
    uint8_t *wbuf;   /* the buffer flush_chunk writes (writer side) */
    struct rb_error *err;  /* the writer's (the caller's) */
    struct rb_error rerr;  /* the reader's, copied to err on failure */

    /* the queue between the stages: steps[head..head+count) are full */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct step steps[NB_BUFS + 1];
    unsigned head, count;
    uint8_t *bufs[NB_BUFS];
    bool buf_busy[NB_BUFS];
    bool done, stop; /* reader finished / writer gave up */
    int reader_ret;
};

static bool reads_zero(const struct rb_extent *e)
{
    return (e->flags & RB_BS_ZERO) != 0;
}

/* Zero [off, off + len) of the destination unless it already reads as
 * zeros. */
static int put_zeroes(struct copy *c, uint64_t off, uint64_t len)
{
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

/* Fill c->buf with the guest bytes of [off, off + len), reading only the
 * sub-ranges that hold data.  @first is the status already known at off. */
static int fill_chunk(struct copy *c, uint64_t off, size_t len, struct rb_extent first)
{
    size_t pos = 0;
    struct rb_extent e = first;
    int ret;

    while (pos < len) {
        size_t n;
        if (pos > 0) {
            ret = rb_image_block_status(c->src, off + pos, len - pos, &e, &c->rerr);
            if (ret < 0)
                return ret;
        }
        n = e.length < len - pos ? (size_t)e.length : len - pos;
        if (reads_zero(&e)) {
            memset(c->buf + pos, 0, n);
        } else {
            ret = rb_image_read(c->src, c->buf + pos, off + pos, n, &c->rerr);
            if (ret < 0)
                return ret;
        }
        pos += n;
    }
    return 0;
}

/* Write c->wbuf[0, len) (guest [off, off + len)) skipping zero granules. */
static int flush_chunk(struct copy *c, uint64_t off, size_t len)
{
    size_t pos = 0;

    while (pos < len) {
        size_t start = pos;
        bool zero = rb_is_zero(c->wbuf + pos, len - pos < c->granule ? len - pos : c->granule);
        int ret;

        /* extend the run while granules have the same kind */
        do {
            pos += len - pos < c->granule ? len - pos : c->granule;
        } while (pos < len &&
                 rb_is_zero(c->wbuf + pos, len - pos < c->granule ? len - pos : c->granule) ==
                     zero);
        ret = zero ? put_zeroes(c, off + start, pos - start)
                   : put_data(c, c->wbuf + start, off + start, pos - start);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* Reader side: hand a step to the writer (a slot is known to be free). */
static void publish(struct copy *c, const struct step *st)
{
    pthread_mutex_lock(&c->mu);
    c->steps[(c->head + c->count) % (NB_BUFS + 1)] = *st;
    c->count++;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* Reader side: wait for a free buffer and a free queue slot; NULL when
 * the writer stopped. */
static uint8_t *take_buf(struct copy *c)
{
    uint8_t *b = NULL;

    pthread_mutex_lock(&c->mu);
    while (!c->stop) {
        int i = 0;
        while (i < NB_BUFS && c->buf_busy[i])
            i++;
        if (i < NB_BUFS && c->count < NB_BUFS + 1) {
            c->buf_busy[i] = true;
            b = c->bufs[i];
            break;
        }
        pthread_cond_wait(&c->cv, &c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return b;
}

static bool wait_slot(struct copy *c)
{
    bool ok;

    pthread_mutex_lock(&c->mu);
    while (!c->stop && c->count >= NB_BUFS + 1)
        pthread_cond_wait(&c->cv, &c->mu);
    ok = !c->stop;
    pthread_mutex_unlock(&c->mu);
    return ok;
}

static void *reader(void *arg)
{
    struct copy *c = arg;
    uint64_t off = 0;
    int ret = 0;

    while (off < c->size) {
        struct rb_extent e;
        struct step st = {.off = off};
        uint64_t end;

        ret = rb_image_block_status(c->src, off, c->size - off, &e, &c->rerr);
        if (ret < 0)
            break;
        if (reads_zero(&e)) {
            /* skip whole granules; a partial one is handled as a chunk */
            end = off + e.length;
            if (end < c->size)
                end -= end % c->granule;
            if (end > off) {
                if (!wait_slot(c))
                    break;
                st.len = end - off;
                st.zero = true;
                publish(c, &st);
                off = end;
                continue;
            }
        }
        /* a chunk ending on a chunk boundary keeps writes aligned */
        end = off - off % c->chunk + c->chunk;
        if (end > c->size)
            end = c->size;
        c->buf = take_buf(c);
        if (!c->buf)
            break;
        ret = fill_chunk(c, off, (size_t)(end - off), e);
        if (ret < 0)
            break;
        st.len = end - off;
        st.buf = c->buf;
        publish(c, &st);
        off = end;
    }
    pthread_mutex_lock(&c->mu);
    c->reader_ret = ret;
    c->done = true;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* Writer side: the steps in order, until the reader is done. */
static int writer(struct copy *c)
{
    for (;;) {
        struct step st;
        int ret;

        pthread_mutex_lock(&c->mu);
        while (c->count == 0 && !c->done)
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->count == 0) {
            ret = c->reader_ret;
            pthread_mutex_unlock(&c->mu);
            return ret;
        }
        st = c->steps[c->head];
        pthread_mutex_unlock(&c->mu);

        if (st.zero) {
            ret = put_zeroes(c, st.off, st.len);
        } else {
            c->wbuf = st.buf;
            ret = flush_chunk(c, st.off, (size_t)st.len);
        }
        pthread_mutex_lock(&c->mu);
        c->head = (c->head + 1) % (NB_BUFS + 1);
        c->count--;
        for (int i = 0; i < NB_BUFS; i++) {
            if (!st.zero && c->bufs[i] == st.buf)
                c->buf_busy[i] = false;
        }
        if (ret < 0)
            c->stop = true;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        if (ret < 0)
            return ret;
        if (c->o->progress)
            c->o->progress(c->o->opaque, st.off + st.len);
    }
}

static int copy_loop(struct copy *c)
{
    pthread_t t;
    int ret;

    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    if (pthread_create(&t, NULL, reader, c) != 0) {
        ret = rb_error_set(c->err, EAGAIN, "cannot start the reader thread");
    } else {
        ret = writer(c);
        if (ret < 0) { /* stop the reader: it may wait for a buffer */
            pthread_mutex_lock(&c->mu);
            c->stop = true;
            pthread_cond_broadcast(&c->cv);
            pthread_mutex_unlock(&c->mu);
        }
        pthread_join(t, NULL);
        if (ret < 0 && c->reader_ret < 0 && c->rerr.msg[0] && !(c->err && c->err->msg[0]))
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
    c.granule = dst->cluster_bytes ? dst->cluster_bytes : 4096;
    c.chunk = c.o->chunk_bytes ? c.o->chunk_bytes : RB_COPY_DEFAULT_CHUNK;
    if (c.chunk < c.granule)
        c.chunk = c.granule;
    c.chunk -= c.chunk % c.granule;
    for (int i = 0; i < NB_BUFS; i++)
        c.bufs[i] = aligned_alloc(4096, (c.chunk + 4095) & ~(size_t)4095);
    if (!c.bufs[0] || !c.bufs[1])
        ret = rb_error_set(err, ENOMEM, "out of memory for %zu-byte copy buffers", c.chunk);
    else
        ret = copy_loop(&c);
    for (int i = 0; i < NB_BUFS; i++)
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
