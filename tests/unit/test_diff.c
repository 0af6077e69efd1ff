/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of rb_diff over a fake in-memory image driver whose extents
 * (data, zero, unallocated) have random, unaligned boundaries, with and
 * without a shared backing layer.  The expected runs are computed by
 * comparing the two materialized images granule by granule.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rblock/diff.h"

/* A layer: bytes plus a segment map. */
enum seg_kind { SEG_DATA, SEG_ZERO, SEG_UNALLOC };

#define MAX_SEGS 64

struct fake {
    uint8_t *bytes;             /* what this layer's data segments hold */
    uint64_t seg_end[MAX_SEGS]; /* increasing; the last is the size */
    enum seg_kind kind[MAX_SEGS];
    unsigned nsegs;
    unsigned reads;
};

static unsigned seg_of(const struct fake *f, uint64_t off)
{
    unsigned i = 0;

    while (f->seg_end[i] <= off)
        i++;
    return i;
}

static int fake_read(struct rb_image *img, void *buf, uint64_t off, size_t len,
                     struct rb_error *err);

static int fake_block_status(struct rb_image *img, uint64_t off, uint64_t len,
                             struct rb_extent *ext, struct rb_error *err)
{
    struct fake *f = img->priv;
    unsigned i = seg_of(f, off);
    uint64_t n = f->seg_end[i] - off;

    ext->length = n < len ? n : len;
    switch (f->kind[i]) {
    case SEG_DATA:
        ext->flags = RB_BS_DATA | RB_BS_ALLOCATED;
        break;
    case SEG_ZERO:
        ext->flags = RB_BS_ZERO | RB_BS_ALLOCATED;
        break;
    case SEG_UNALLOC:
        ext->flags = 0;
        break;
    }
    return 0;
}

static int fake_read(struct rb_image *img, void *buf, uint64_t off, size_t len,
                     struct rb_error *err)
{
    struct fake *f = img->priv;
    uint8_t *p = buf;

    f->reads++;
    while (len > 0) {
        unsigned i = seg_of(f, off);
        uint64_t n = f->seg_end[i] - off;

        if (n > len)
            n = len;
        if (f->kind[i] == SEG_DATA)
            memcpy(p, f->bytes + off, n);
        else if (f->kind[i] == SEG_ZERO || !img->backing)
            memset(p, 0, n);
        else if (rb_image_read_zeropad(img->backing, p, off, n, err) < 0)
            return -1;
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

static const struct rb_image_ops fake_ops = {
    .format = "fake",
    .read = fake_read,
    .block_status = fake_block_status,
};

static uint64_t rnd_state = 88172645463325252ull;

static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

/* A random layer of @size bytes; @similar (may be NULL) is copied first so
 * that two layers share most content. */
static struct rb_image *fake_new(uint64_t size, const struct fake *similar, ino_t ino)
{
    struct rb_image *img = calloc(1, sizeof(*img));
    struct fake *f = calloc(1, sizeof(*f));
    uint64_t pos = 0;

    assert_non_null(img);
    assert_non_null(f);
    img->ops = &fake_ops;
    img->filename = (char *)"fake";
    img->size = size;
    img->ino = ino;
    img->dev = 1;
    img->priv = f;
    f->bytes = malloc(size ? size : 1);
    assert_non_null(f->bytes);
    for (uint64_t i = 0; i < size; i++)
        f->bytes[i] = (uint8_t)(rnd() % 4 ? rnd() : 0); /* some zero bytes */
    if (similar) {
        uint64_t n = size < similar->seg_end[similar->nsegs - 1]
                         ? size
                         : similar->seg_end[similar->nsegs - 1];
        memcpy(f->bytes, similar->bytes, n);
        for (uint64_t k = rnd() % 6; k > 0; k--) { /* a few changed byte runs */
            uint64_t at = rnd() % size, len = 1 + rnd() % 3000;
            for (uint64_t j = at; j < at + len && j < size; j++)
                f->bytes[j] = (uint8_t)(rnd() % 3 ? rnd() : 0);
        }
    }
    while (pos < size && f->nsegs < MAX_SEGS - 1) {
        static const uint64_t spans[] = {700, 40000, 40000, 300000};
        uint64_t len = 1 + rnd() % spans[rnd() % 4];
        pos = pos + len > size ? size : pos + len;
        f->seg_end[f->nsegs] = pos;
        f->kind[f->nsegs++] = (enum seg_kind)(rnd() % 3);
    }
    if (pos < size) {
        f->seg_end[f->nsegs] = size;
        f->kind[f->nsegs++] = SEG_DATA;
    }
    if (size == 0) {
        f->seg_end[0] = 0;
        f->nsegs = 1;
    }
    return img;
}

static void fake_free(struct rb_image *img)
{
    struct fake *f = img->priv;

    free(f->bytes);
    free(f);
    free(img);
}

/* What the image reads as, padded with zeros to @size. */
static uint8_t *materialize(struct rb_image *img, uint64_t size)
{
    uint8_t *buf = calloc(1, size ? size : 1);

    assert_non_null(buf);
    assert_int_equal(rb_image_read_zeropad(img, buf, 0, size, NULL), 0);
    return buf;
}

struct collect {
    const uint8_t *ma, *mb; /* materialized A and B */
    uint64_t g;
    uint64_t *runs; /* pairs off,len */
    size_t nruns, cap;
};

static int on_run(void *opaque, const struct rb_diff_run *run, struct rb_error *err)
{
    struct collect *c = opaque;

    /* the data handed out is what the images hold; NULL means zeros */
    for (uint64_t i = 0; i < run->len; i++) {
        assert_int_equal(run->a ? run->a[i] : 0, c->ma[run->off + i]);
        assert_int_equal(run->b ? run->b[i] : 0, c->mb[run->off + i]);
    }
    assert_int_equal(run->off % c->g, 0);
    if (c->nruns == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->runs = realloc(c->runs, c->cap * 2 * sizeof(uint64_t));
        assert_non_null(c->runs);
    }
    /* merge runs that touch, as a caller listing ranges would */
    if (c->nruns && c->runs[2 * c->nruns - 2] + c->runs[2 * c->nruns - 1] == run->off) {
        c->runs[2 * c->nruns - 1] += run->len;
    } else {
        c->runs[2 * c->nruns] = run->off;
        c->runs[2 * c->nruns + 1] = run->len;
        c->nruns++;
    }
    return 0;
}

static void expect_runs(const struct collect *c, uint64_t size)
{
    size_t k = 0;
    uint64_t i = 0;

    while (i < size) {
        uint64_t n = size - i < c->g ? size - i : c->g;
        if (memcmp(c->ma + i, c->mb + i, n) != 0) {
            uint64_t start = i;
            while (i < size) {
                n = size - i < c->g ? size - i : c->g;
                if (memcmp(c->ma + i, c->mb + i, n) == 0)
                    break;
                i += n;
            }
            assert_true(k < c->nruns);
            assert_int_equal(c->runs[2 * k], start);
            assert_int_equal(c->runs[2 * k + 1], i - start);
            k++;
        } else {
            i += n;
        }
    }
    assert_int_equal(k, c->nruns);
}

static void diff_and_check(struct rb_image *a, struct rb_image *b, uint64_t g,
                           size_t chunk, bool thread, struct rb_diff_stats *st)
{
    uint64_t size = a->size > b->size ? a->size : b->size;
    struct collect c = {.g = g};
    struct rb_diff_opts o = {
        .granule_bytes = g,
        .chunk_bytes = chunk,
        .serial_reads = !thread,
        .on_run = on_run,
        .opaque = &c,
    };
    struct rb_error err = {0};
    uint8_t *ma = materialize(a, size), *mb = materialize(b, size);

    c.ma = ma;
    c.mb = mb;
    assert_int_equal(rb_diff(a, b, &o, st, &err), 0);
    expect_runs(&c, size);
    free(c.runs);
    free(ma);
    free(mb);
}

static const uint64_t granules[] = {1, 512, 1000, 4096, 65536};

static void test_random_layers(void **state)
{
    (void)state;
    for (int iter = 0; iter < 120; iter++) {
        uint64_t sa = rnd() % 300000, sb = rnd() % 4 ? sa : rnd() % 300000;
        struct rb_image *a = fake_new(sa, NULL, 1);
        struct rb_image *b = fake_new(sb, a->priv, 2);
        uint64_t g = granules[iter % 5];

        diff_and_check(a, b, g, 8192 + (rnd() % 4) * 4096, iter % 2, NULL);
        diff_and_check(b, a, g, 0, iter % 3 == 0, NULL);
        fake_free(a);
        fake_free(b);
    }
}

static void test_shared_backing(void **state)
{
    (void)state;
    for (int iter = 0; iter < 60; iter++) {
        uint64_t size = 50000 + rnd() % 250000;
        struct rb_image *base = fake_new(size - rnd() % 20000, NULL, 7);
        struct rb_image *ta = fake_new(size, base->priv, 8);
        struct rb_image *tb = fake_new(size, base->priv, 9);
        struct rb_diff_stats st;
        uint64_t g = granules[iter % 5];

        ta->backing = base;
        tb->backing = base;
        diff_and_check(ta, tb, g, 16384, iter % 2, &st);
        assert_int_equal(st.size_bytes, size);
        /* an overlay against its own backing file */
        diff_and_check(ta, base, g, 0, false, &st);
        diff_and_check(base, tb, g, 0, true, &st);
        fake_free(ta);
        fake_free(tb);
        fake_free(base);
    }
}

/* The same layer on both sides is never read. */
static void test_shared_not_read(void **state)
{
    struct rb_image *base = fake_new(1 << 20, NULL, 7);
    struct fake *f = base->priv;
    struct rb_image *ta = fake_new(1 << 20, f, 8), *tb = fake_new(1 << 20, f, 9);
    struct fake *fa = ta->priv, *fb = tb->priv;
    struct rb_diff_stats st;

    (void)state;
    f->nsegs = 1;
    f->seg_end[0] = 1 << 20;
    f->kind[0] = SEG_DATA;
    fa->nsegs = fb->nsegs = 1;
    fa->seg_end[0] = fb->seg_end[0] = 1 << 20;
    fa->kind[0] = fb->kind[0] = SEG_UNALLOC;
    ta->backing = tb->backing = base;
    diff_and_check(ta, tb, 512, 0, false, &st);
    assert_int_equal(st.shared_bytes, 1 << 20);
    assert_int_equal(st.read_a_bytes + st.read_b_bytes, 0);
    /* zero on both sides: skipped without reading */
    fa->kind[0] = fb->kind[0] = SEG_ZERO;
    diff_and_check(ta, tb, 512, 0, true, &st);
    assert_int_equal(st.zero_bytes, 1 << 20);
    assert_int_equal(st.read_a_bytes + st.read_b_bytes, 0);
    /* zero on one side only: only the other side is read */
    fa->kind[0] = SEG_DATA;
    diff_and_check(ta, tb, 512, 0, false, &st);
    assert_int_equal(st.read_a_bytes, 1 << 20);
    assert_int_equal(st.read_b_bytes, 0);
    fake_free(ta);
    fake_free(tb);
    fake_free(base);
}

static int fail_run(void *opaque, const struct rb_diff_run *run, struct rb_error *err)
{
    (void)opaque;
    (void)run;
    return rb_error_set(err, 28, "stop here");
}

static void test_callback_error_stops(void **state)
{
    struct rb_image *a = fake_new(200000, NULL, 1), *b = fake_new(200000, NULL, 2);
    struct rb_error err = {0};
    struct rb_diff_opts o = {
        .granule_bytes = 512, .chunk_bytes = 4096, .on_run = fail_run};

    (void)state;
    assert_int_equal(rb_diff(a, b, &o, NULL, &err), -28);
    assert_string_equal(err.msg, "stop here");
    o.granule_bytes = 0;
    assert_int_equal(rb_diff(a, b, &o, NULL, NULL), -22);
    fake_free(a);
    fake_free(b);
}

/* One data segment holding @bytes (copied). */
static struct rb_image *fake_data(const uint8_t *bytes, uint64_t size, ino_t ino)
{
    struct rb_image *img = calloc(1, sizeof(*img));
    struct fake *f = calloc(1, sizeof(*f));

    assert_non_null(img);
    assert_non_null(f);
    img->ops = &fake_ops;
    img->filename = (char *)"fake";
    img->size = size;
    img->ino = ino;
    img->dev = 1;
    img->priv = f;
    f->bytes = malloc(size);
    assert_non_null(f->bytes);
    memcpy(f->bytes, bytes, size);
    f->seg_end[0] = size;
    f->kind[0] = SEG_DATA;
    f->nsegs = 1;
    return img;
}

/* Differing runs with whole identical 64 KiB blocks between them, read in
 * tasks larger than a block: each run is reported alone, never merged
 * across the identical blocks. */
static void test_runs_split_by_identical_blocks(void **state)
{
    const uint64_t size = 1 << 20;
    uint8_t *x = malloc(size), *y;
    static const uint64_t at[][2] = {{1000, 4000}, {200 << 10, 4096}, {(200 << 10) + 70000, 1},
                                     {900 << 10, 65536}};

    (void)state;
    assert_non_null(x);
    for (uint64_t i = 0; i < size; i++)
        x[i] = (uint8_t)rnd();
    y = malloc(size);
    assert_non_null(y);
    memcpy(y, x, size);
    for (size_t k = 0; k < sizeof(at) / sizeof(at[0]); k++)
        for (uint64_t i = at[k][0]; i < at[k][0] + at[k][1]; i++)
            y[i] ^= 0x5a;
    struct rb_image *a = fake_data(x, size, 1), *b = fake_data(y, size, 2);
    for (size_t gi = 0; gi < sizeof(granules) / sizeof(granules[0]); gi++) {
        diff_and_check(a, b, granules[gi], size, false, NULL);
        diff_and_check(b, a, granules[gi], 0, true, NULL);
    }
    fake_free(a);
    fake_free(b);
    free(x);
    free(y);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_layers),
        cmocka_unit_test(test_shared_backing),
        cmocka_unit_test(test_shared_not_read),
        cmocka_unit_test(test_callback_error_stops),
        cmocka_unit_test(test_runs_split_by_identical_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
