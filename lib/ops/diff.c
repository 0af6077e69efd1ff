/* SPDX-License-Identifier: MIT */
/*
 * diff.c - walk two images side by side and report where they differ
 * (contract in include/rblock/diff.h).
 *
 * The walk plans granule-aligned steps from both images' block status:
 * a step is skipped (zero on both sides, or the same layer file on both
 * sides), or read from the side(s) that are not zero and compared.  When
 * both sides are read, a helper thread reads B while this thread reads A
 * (two copies out of the page cache or two disk streams at once), then
 * this thread compares while both buffers are still in the CPU cache and
 * calls on_run for each run of differing granules, in order.
 * Every step starts on a granule boundary, so each run handed to on_run
 * holds whole granules (a delta writes whole clusters from it).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "rblock/diff.h"
#include "rblock/io.h"

#define PARALLEL_MIN_BYTES ((uint64_t)64 << 10) /* smaller reads: one thread */
#define BLOCK_BYTES ((uint64_t)64 << 10)        /* first-level compare unit */
#define SKIP_FLUSH_BYTES ((uint64_t)1 << 30)    /* report progress over long skips */

enum task_kind { T_SKIP, T_READ, T_END, T_ERROR };

struct task {
    enum task_kind kind;
    uint64_t off, len;
    bool read_a, read_b; /* false: that side reads as zeros, not read */
    uint8_t *buf_a, *buf_b;
};

/* The extent of one image that contains the walk position. */
struct side {
    struct rb_image *img;
    uint64_t size;
    uint64_t ext_off, ext_end;
    bool valid;
    bool zero;              /* reads as zeros */
    struct rb_image *layer; /* layer defining the extent, NULL when none */
};

/* Reads side B of a step while the walking thread reads side A. */
struct helper {
    pthread_t tid;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool has_job, done, quit;
    struct side *s;
    uint8_t *buf;
    uint64_t off, len;
    int ret;
    struct rb_error err;
};

struct ctx {
    struct side a, b;
    uint64_t end;      /* max of the sizes, or the limit */
    uint64_t g;        /* granule */
    uint64_t chunk;    /* multiple of g */
    uint64_t pos;      /* walk position */
    uint64_t skip_len; /* pending skip ending at pos */
    const struct rb_diff_opts *opts;
    struct rb_diff_stats st;
    struct task task;
    struct helper h;
    struct rb_error rerr; /* the reading side's error */
};

static uint64_t min_u64(uint64_t x, uint64_t y)
{
    return x < y ? x : y;
}

/* ---- the reader ---------------------------------------------------------- */

static int side_at(struct side *s, uint64_t pos, struct rb_error *err)
{
    struct rb_extent e;
    int ret;

    if (pos >= s->size) { /* past the end: zeros (as qemu-img compare) */
        s->valid = true;
        s->zero = true;
        s->layer = NULL;
        s->ext_off = s->size;
        s->ext_end = UINT64_MAX;
        return 0;
    }
    if (s->valid && pos >= s->ext_off && pos < s->ext_end)
        return 0;
    ret = rb_image_block_status(s->img, pos, s->size - pos, &e, err);
    if (ret < 0)
        return ret;
    s->valid = true;
    s->ext_off = pos;
    s->ext_end = pos + e.length;
    s->zero = e.flags & RB_BS_ZERO;
    s->layer = (e.flags & RB_BS_ALLOCATED) ? rb_image_layer(s->img, e.depth) : NULL;
    return 0;
}

/* Same file through the same driver: the same bytes at the same offset. */
static bool same_layer(const struct side *a, const struct side *b)
{
    return a->layer && b->layer && a->layer->ops == b->layer->ops &&
           a->layer->dev == b->layer->dev && a->layer->ino == b->layer->ino;
}

static int read_side(struct side *s, uint8_t *buf, uint64_t off, uint64_t len,
                     struct rb_error *err)
{
    return rb_image_read_zeropad(s->img, buf, off, (size_t)len, err);
}

/*
 * Decide the next task at c->pos and advance.  Skips are merged into one
 * task, which is returned before the next read (or at the end).
 */
static int plan(struct ctx *c, struct task *t, struct rb_error *err)
{
    while (c->pos < c->end) {
        uint64_t pos = c->pos, step_end, len;
        bool skip_zero = false, skip_shared = false;
        int ret;

        if ((ret = side_at(&c->a, pos, err)) < 0 || (ret = side_at(&c->b, pos, err)) < 0)
            return ret;
        step_end = min_u64(min_u64(c->a.ext_end, c->b.ext_end), c->end);
        if (step_end < c->end)
            step_end -= step_end % c->g;
        if (step_end <= pos) {
            /* An extent boundary inside this granule: read both sides. */
            len = min_u64(c->g, c->end - pos);
            t->read_a = t->read_b = true;
        } else if (c->a.zero && c->b.zero) {
            skip_zero = true;
            len = step_end - pos;
        } else if (same_layer(&c->a, &c->b)) {
            skip_shared = true;
            len = step_end - pos;
        } else {
            len = min_u64(step_end - pos, c->chunk);
            t->read_a = !c->a.zero;
            t->read_b = !c->b.zero;
        }
        if (skip_zero || skip_shared) {
            if (skip_zero)
                c->st.zero_bytes += len;
            else
                c->st.shared_bytes += len;
            c->skip_len += len;
            c->pos += len;
            if (c->skip_len >= SKIP_FLUSH_BYTES)
                break;
            continue;
        }
        if (c->skip_len)
            break; /* report the skip first; this step is planned again */
        t->kind = T_READ;
        t->off = pos;
        t->len = len;
        c->pos += len;
        return 0;
    }
    if (c->skip_len) {
        t->kind = T_SKIP;
        t->off = c->pos - c->skip_len;
        t->len = c->skip_len;
        c->skip_len = 0;
        return 0;
    }
    t->kind = T_END;
    return 0;
}

static void *helper_main(void *arg)
{
    struct helper *h = arg;

    pthread_mutex_lock(&h->lock);
    for (;;) {
        while (!h->has_job && !h->quit)
            pthread_cond_wait(&h->cond, &h->lock);
        if (h->quit)
            break;
        h->has_job = false;
        pthread_mutex_unlock(&h->lock);
        int ret = read_side(h->s, h->buf, h->off, h->len, &h->err);
        pthread_mutex_lock(&h->lock);
        h->ret = ret;
        h->done = true;
        pthread_cond_broadcast(&h->cond);
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

static void helper_start(struct helper *h)
{
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->cond, NULL);
    h->started = pthread_create(&h->tid, NULL, helper_main, h) == 0;
}

static void helper_stop(struct helper *h)
{
    if (h->started) {
        pthread_mutex_lock(&h->lock);
        h->quit = true;
        pthread_cond_broadcast(&h->cond);
        pthread_mutex_unlock(&h->lock);
        pthread_join(h->tid, NULL);
    }
    pthread_cond_destroy(&h->cond);
    pthread_mutex_destroy(&h->lock);
}

/* Read both sides of a step: B in the helper, A here, at the same time. */
static int read_both(struct ctx *c, struct task *t)
{
    struct helper *h = &c->h;
    int ret;

    pthread_mutex_lock(&h->lock);
    h->s = &c->b;
    h->buf = t->buf_b;
    h->off = t->off;
    h->len = t->len;
    h->done = false;
    h->has_job = true;
    pthread_cond_broadcast(&h->cond);
    pthread_mutex_unlock(&h->lock);

    ret = read_side(&c->a, t->buf_a, t->off, t->len, &c->rerr);

    pthread_mutex_lock(&h->lock);
    while (!h->done)
        pthread_cond_wait(&h->cond, &h->lock);
    pthread_mutex_unlock(&h->lock);
    if (ret == 0 && h->ret < 0) {
        ret = h->ret;
        rb_error_set(&c->rerr, h->err.code, "%s", h->err.msg);
    }
    return ret;
}

static void produce(struct ctx *c, struct task *t)
{
    int ret = plan(c, t, &c->rerr);

    if (ret == 0 && t->kind == T_READ) {
        c->st.read_a_bytes += t->read_a ? t->len : 0;
        c->st.read_b_bytes += t->read_b ? t->len : 0;
        if (t->read_a && t->read_b && c->h.started && t->len >= PARALLEL_MIN_BYTES) {
            ret = read_both(c, t);
        } else {
            if (t->read_a)
                ret = read_side(&c->a, t->buf_a, t->off, t->len, &c->rerr);
            if (ret == 0 && t->read_b)
                ret = read_side(&c->b, t->buf_b, t->off, t->len, &c->rerr);
        }
    }
    if (ret < 0) {
        if (!c->rerr.msg[0])
            rb_error_errno(&c->rerr, -ret, "read failed");
        t->kind = T_ERROR;
    }
}

/* ---- the comparer -------------------------------------------------------- */

/* NULL stands for zeros. */
static bool same(const uint8_t *a, const uint8_t *b, size_t n)
{
    if (a && b)
        return memcmp(a, b, n) == 0;
    if (a)
        return rb_is_zero(a, n);
    if (b)
        return rb_is_zero(b, n);
    return true;
}

static int emit(struct ctx *c, const struct task *t, const uint8_t *a, const uint8_t *b,
                uint64_t from, uint64_t to, struct rb_error *err)
{
    struct rb_diff_run run = {
        .off = t->off + from,
        .len = to - from,
        .a = a ? a + from : NULL,
        .b = b ? b + from : NULL,
    };

    c->st.diff_bytes += run.len;
    return c->opts->on_run ? c->opts->on_run(c->opts->opaque, &run, err) : 0;
}

/* Compare one read task: whole blocks first, granules only inside blocks
 * that differ; runs of differing granules go to on_run. */
static int consume(struct ctx *c, const struct task *t, struct rb_error *err)
{
    const uint8_t *a = t->read_a ? t->buf_a : NULL;
    const uint8_t *b = t->read_b ? t->buf_b : NULL;
    uint64_t blk = BLOCK_BYTES > c->g ? BLOCK_BYTES - BLOCK_BYTES % c->g : c->g;
    uint64_t run_from = 0;
    bool in_run = false;
    int ret;

    for (uint64_t bo = 0; bo < t->len; bo += blk) {
        uint64_t n = min_u64(blk, t->len - bo);

        if (same(a ? a + bo : NULL, b ? b + bo : NULL, (size_t)n)) {
            if (in_run && (ret = emit(c, t, a, b, run_from, bo, err)) < 0)
                return ret;
            in_run = false;
            continue;
        }
        for (uint64_t go = bo; go < bo + n; go += c->g) {
            uint64_t gn = min_u64(c->g, t->len - go);
            bool differ = !same(a ? a + go : NULL, b ? b + go : NULL, (size_t)gn);

            if (differ && !in_run) {
                run_from = go;
                in_run = true;
            } else if (!differ && in_run) {
                if ((ret = emit(c, t, a, b, run_from, go, err)) < 0)
                    return ret;
                in_run = false;
            }
        }
    }
    if (in_run)
        return emit(c, t, a, b, run_from, t->len, err);
    return 0;
}

/* Handle one task from the reader; returns 1 at the end. */
static int handle(struct ctx *c, const struct task *t, struct rb_error *err)
{
    int ret = 0;

    switch (t->kind) {
    case T_END:
        return 1;
    case T_ERROR:
        return rb_error_set(err, c->rerr.code, "%s", c->rerr.msg);
    case T_READ:
        ret = consume(c, t, err);
        break;
    case T_SKIP:
        break;
    }
    if (ret == 0 && c->opts->on_progress)
        c->opts->on_progress(c->opts->opaque, t->off + t->len);
    return ret;
}

static int walk(struct ctx *c, struct rb_error *err)
{
    int ret;

    do {
        produce(c, &c->task);
        ret = handle(c, &c->task, err);
    } while (ret == 0);
    return ret > 0 ? 0 : ret;
}

int rb_diff(struct rb_image *a, struct rb_image *b, const struct rb_diff_opts *opts,
            struct rb_diff_stats *stats, struct rb_error *err)
{
    struct ctx *c;
    uint64_t chunk;
    int ret = 0;

    if (opts->granule_bytes == 0 || opts->granule_bytes > RB_DIFF_MAX_GRANULE)
        return rb_error_set(err, EINVAL,
                            "granule of %" PRIu64 " bytes is out of range "
                            "(1 to %" PRIu64 ")",
                            opts->granule_bytes, RB_DIFF_MAX_GRANULE);
    c = calloc(1, sizeof(*c));
    if (!c)
        return rb_error_set(err, ENOMEM, "out of memory");
    c->opts = opts;
    c->a = (struct side){.img = a, .size = a->size};
    c->b = (struct side){.img = b, .size = b->size};
    c->end = a->size > b->size ? a->size : b->size;
    if (opts->limit_bytes && opts->limit_bytes < c->end)
        c->end = opts->limit_bytes;
    c->g = opts->granule_bytes;
    chunk = opts->chunk_bytes ? opts->chunk_bytes : RB_DIFF_DEFAULT_CHUNK;
    c->chunk = chunk > c->g ? chunk - chunk % c->g : c->g;
    c->st.size_bytes = c->end;
    c->task.buf_a = aligned_alloc(4096, (c->chunk + 4095) & ~(uint64_t)4095);
    c->task.buf_b = aligned_alloc(4096, (c->chunk + 4095) & ~(uint64_t)4095);
    if (!c->task.buf_a || !c->task.buf_b) {
        ret = rb_error_set(
            err, ENOMEM, "out of memory for %" PRIu64 "-byte compare buffers", c->chunk);
    } else {
        if (!opts->serial_reads)
            helper_start(&c->h);
        ret = walk(c, err);
        if (!opts->serial_reads)
            helper_stop(&c->h);
    }
    if (stats)
        *stats = c->st;
    free(c->task.buf_a);
    free(c->task.buf_b);
    free(c);
    return ret;
}
