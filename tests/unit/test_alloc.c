/* SPDX-License-Identifier: MIT */
/*
 * The qcow2 allocator and refcount updates (lib/qcow2/alloc.c) and the
 * write path (write.c) on real files in a temporary folder: refcount
 * entries at every width, allocation past the first refcount block and
 * past the refcount table (growth), random writes (unaligned, spanning
 * clusters, over a backing file) against a reference buffer, and the
 * consistency check (ours, and qemu-img's).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "qcow2_file.h"

#include "qcow2/qcow2.h"
#include "qcow2/qcow2w.h"
#include "rblock/qcow2-create.h"
#include "rblock/qcow2.h"


static char dir[] = "/tmp/rb-alloc-XXXXXX";

static int setup_dir(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    char cmd[256];

    (void)state;
    if (getenv("RB_KEEP"))
        return 0;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static char *path_of(const char *name)
{
    static char p[4][512];
    static int n;
    char *out = p[n++ % 4];

    snprintf(out, 512, "%s/%s", dir, name);
    return out;
}

/* ---- refcount entries at every width ------------------------------------ */

/* Entry @i of a block as qcow2.txt lays it out, read bit by bit: entries
 * narrower than a byte are packed from the least significant bit, wider
 * ones are big-endian.  An oracle independent of refcount.c's codec. */
static uint64_t spec_entry(const uint8_t *block, unsigned order, uint64_t i)
{
    unsigned bits = 1u << order;
    uint64_t v = 0;

    if (bits < 8) {
        for (unsigned k = 0; k < bits; k++) {
            uint64_t bit = i * bits + k;
            v |= (uint64_t)((block[bit / 8] >> (bit % 8)) & 1) << k;
        }
        return v;
    }
    for (unsigned k = 0; k < bits / 8; k++)
        v = v << 8 | block[i * (bits / 8) + k];
    return v;
}

static void test_refcount_widths(void **state)
{
    uint8_t block[512];

    (void)state;
    for (unsigned order = 0; order <= 6; order++) {
        uint64_t max = qcow2w_ref_max(order), n = sizeof(block) * 8 >> order;
        memset(block, 0, sizeof(block));
        for (uint64_t i = 0; i < n; i++)
            qcow2_refblock_set(block, order, i, (i * 2654435761u) & max);
        for (uint64_t i = 0; i < n; i++) {
            assert_int_equal(spec_entry(block, order, i), (i * 2654435761u) & max);
            assert_int_equal(qcow2_refblock_get(block, order, i), (i * 2654435761u) & max);
        }
        /* setting one entry leaves its neighbours alone */
        qcow2_refblock_set(block, order, n - 1, max);
        assert_int_equal(spec_entry(block, order, n - 1), max);
        assert_int_equal(qcow2_refblock_get(block, order, n - 2),
                         ((n - 2) * 2654435761u) & max);
    }
}

/* ---- helpers ---------------------------------------------------------- */

static struct rb_image *make_and_open(const char *name, unsigned cluster, unsigned bits,
                                      unsigned version, uint64_t size, const char *backing,
                                      bool barriers)
{
    struct rb_qcow2_create_opts o;
    struct rb_open_opts oo = {.format = "qcow2", .write = true,
                              .unsafe_no_barriers = !barriers};
    struct rb_error err = {0};
    struct rb_image *img;

    rb_qcow2_create_opts_init(&o);
    o.cluster_bytes = cluster;
    o.refcount_bits = bits;
    o.version = version;
    o.size = size;
    o.backing_file = backing;
    o.backing_format = backing ? "raw" : NULL;
    if (create_qcow2(path_of(name), &o, &err) < 0)
        fail_msg("create: %s", err.msg);
    img = rb_image_open(path_of(name), &oo, &err);
    if (!img)
        fail_msg("open: %s", err.msg);
    return img;
}

/* Our check and qemu-img's on the closed file (qemu-img is the oracle:
 * scripts/install-deps installs it, so its absence fails the test). */
static void check_file(const char *name, uint64_t expect_leaks)
{
    struct rb_open_opts oo = {.format = "qcow2", .no_backing = true};
    struct rb_error err = {0};
    struct rb_qcow2_check res;
    struct rb_image *img = rb_image_open(path_of(name), &oo, &err);
    char cmd[600];

    if (!img)
        fail_msg("reopen: %s", err.msg);
    assert_int_equal(rb_qcow2_check(img, &res, &err), 0);
    if (res.corruptions || res.leaks != expect_leaks)
        fail_msg("%s: %llu corruptions, %llu leaks (expected %llu): %s", name,
                 (unsigned long long)res.corruptions, (unsigned long long)res.leaks,
                 (unsigned long long)expect_leaks,
                 res.nb_problems ? res.problems[0].msg : "");
    rb_qcow2_check_free(&res);
    rb_image_close(img);
    if (system("qemu-img --version >/dev/null 2>&1") != 0)
        fail_msg("qemu-img is missing (scripts/install-deps installs it)");
    /* qemu-img check: 0 clean, 3 leaks only */
    snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s' >/dev/null 2>&1", path_of(name));
    int st = system(cmd);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), expect_leaks ? 3 : 0);
}

/* ---- allocation past refcount blocks and the refcount table ------------- */

static void alloc_many(unsigned bits, uint64_t count)
{
    struct rb_image *img = make_and_open("a.qcow2", 512, bits, 3, 1 << 20, NULL, false);
    struct qcow2_state *s = qcow2_state_of(img);
    struct rb_error err = {0};
    uint64_t host = 0, rc, table0 = s->h.refcount_table_offset;
    uint8_t *seen = calloc(1, 1 << 20);
    uint64_t blocks0 = 0, blocks = 0;

    for (uint64_t i = 0; i < s->reftable_entries; i++)
        blocks0 += s->reftable[i] != 0;
    pthread_mutex_lock(&s->lock);
    for (uint64_t i = 0; i < count; i++) {
        if (qcow2_alloc_cluster(s, &host, &err) < 0)
            fail_msg("alloc %llu (%u bits): %s", (unsigned long long)i, bits, err.msg);
        assert_int_equal(host % 512, 0);
        assert_true(host / 512 < (1 << 20));
        assert_false(seen[host / 512]); /* never handed out twice */
        seen[host / 512] = 1;
        assert_int_equal(qcow2_refcount_get(s, host / 512, &rc, &err), 0);
        assert_int_equal(rc, 1);
    }
    /* the refcount of a cluster can be raised to the width's maximum */
    assert_int_equal(qcow2_refcount_set(s, host / 512, qcow2w_ref_max(s->h.refcount_order),
                                        &err), 0);
    assert_true(qcow2_refcount_add(s, host / 512, 1, &err) < 0);
    rb_error_clear(&err);
    assert_int_equal(qcow2_refcount_set(s, host / 512, 1, &err), 0);
    pthread_mutex_unlock(&s->lock);
    for (uint64_t i = 0; i < s->reftable_entries; i++)
        blocks += s->reftable[i] != 0;
    assert_true(blocks > blocks0); /* went past the first refcount block */
    if (count * 512 > s->refblock_entries * 512ull * 64)
        assert_true(s->h.refcount_table_offset != table0); /* the table grew */
    assert_int_equal(rb_image_flush(img, &err), 0);
    /* nothing was written into the clusters: make the file reach them, so
     * that the checks (which stop at the end of the file) see them */
    assert_int_equal(ftruncate(s->fd, (off_t)s->file_size), 0);
    rb_image_close(img);
    /* every allocated cluster is referenced by nothing: exactly leaks,
     * nothing counted too low */
    check_file("a.qcow2", count);
    free(seen);
}

static void test_alloc_every_width(void **state)
{
    (void)state;
    for (unsigned bits = 1; bits <= 64; bits *= 2)
        alloc_many(bits, 512 * 8 / bits * 2 + 100); /* > two refcount blocks */
}

static void test_reftable_growth(void **state)
{
    (void)state;
    /* 512-byte clusters, 64-bit refcounts: a block counts 64 clusters, the
     * one-cluster table 64 blocks, so 4096 clusters outgrow it */
    alloc_many(64, 5000);
    alloc_many(32, 9000);
    alloc_many(16, 40000);
}

/* ---- random writes against a reference buffer ---------------------------- */

static uint64_t rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void random_writes(unsigned cluster, unsigned bits, unsigned version, bool backing,
                          bool barriers)
{
    const uint64_t size = 4u << 20;
    uint8_t *ref = malloc(size), *got = malloc(size), *buf = malloc(300000);
    struct rb_error err = {0};
    struct rb_image *img;
    uint64_t x = 0x9e3779b97f4a7c15ull ^ cluster ^ bits << 8 ^ version << 16;
    FILE *f;

    assert_non_null(ref);
    memset(ref, 0, size);
    if (backing) {
        for (uint64_t i = 0; i < size; i++)
            ref[i] = (uint8_t)(i * 7 + i / 4096);
        memset(ref + size / 2, 0, 1 << 20); /* a hole in the backing */
        f = fopen(path_of("base.raw"), "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(ref, 1, size - 5000, f), size - 5000); /* shorter */
        fclose(f);
        memset(ref + size - 5000, 0, 5000);
    }
    img = make_and_open("w.qcow2", cluster, bits, version, size,
                        backing ? "base.raw" : NULL, barriers);
    for (int op = 0; op < 300; op++) {
        uint64_t off = rnd(&x) % size, len = rnd(&x) % (op % 10 == 0 ? 300000 : 9000) + 1;
        unsigned kind = (unsigned)(rnd(&x) % 10);
        if (off + len > size)
            len = size - off;
        if (kind < 7) {
            for (uint64_t i = 0; i < len; i++)
                buf[i] = (uint8_t)rnd(&x);
            if (rb_image_write(img, buf, off, len, kind == 0 ? RB_WRITE_FUA : 0, &err) < 0)
                fail_msg("write %llu+%llu: %s", (unsigned long long)off,
                         (unsigned long long)len, err.msg);
            memcpy(ref + off, buf, len);
        } else if (kind < 9) {
            if (rb_image_write_zeroes(img, off, len, kind == 8 ? RB_ZERO_MAY_UNMAP : 0,
                                      &err) < 0)
                fail_msg("zeroes: %s", err.msg);
            memset(ref + off, 0, len);
        } else {
            /* whole clusters read as the backing afterwards */
            uint64_t a = (off + cluster - 1) / cluster * cluster, b = (off + len) / cluster * cluster;
            if (rb_image_trim(img, off, len, &err) < 0)
                fail_msg("trim: %s", err.msg);
            for (uint64_t i = a; i < b; i++)
                ref[i] = backing && i < size - 5000 && (i < size / 2 || i >= size / 2 + (1 << 20))
                             ? (uint8_t)(i * 7 + i / 4096) : 0;
        }
    }
    assert_int_equal(rb_image_read(img, got, 0, size, &err), 0);
    assert_memory_equal(got, ref, size);
    assert_int_equal(rb_image_flush(img, &err), 0);
    rb_image_close(img);
    check_file("w.qcow2", 0);
    /* and from disk again */
    {
        struct rb_open_opts oo = {.format = "qcow2"};
        img = rb_image_open(path_of("w.qcow2"), &oo, &err);
        assert_non_null(img);
        assert_int_equal(rb_image_read(img, got, 0, size, &err), 0);
        assert_memory_equal(got, ref, size);
        rb_image_close(img);
    }
    free(ref);
    free(got);
    free(buf);
}

static void test_random_writes(void **state)
{
    (void)state;
    random_writes(65536, 16, 3, false, true);
    random_writes(65536, 16, 3, true, false);
    random_writes(65536, 16, 2, true, false);
    random_writes(4096, 1, 3, true, false);
    random_writes(512, 64, 3, true, false);
    random_writes(2u << 20, 8, 3, true, false);
    random_writes(16384, 16, 2, false, false);
    random_writes(16384, 4, 3, false, false);
}

/* ---- header bits: dirty (lazy refcounts), corrupt, autoclear ------------- */

static uint64_t header_u64(const char *name, unsigned off)
{
    uint8_t b[8];
    FILE *f = fopen(path_of(name), "rb");
    uint64_t v = 0;

    assert_non_null(f);
    assert_int_equal(fseek(f, off, SEEK_SET), 0);
    assert_int_equal(fread(b, 1, 8, f), 8);
    fclose(f);
    for (int i = 0; i < 8; i++)
        v = v << 8 | b[i];
    return v;
}

static void header_set_u64(const char *name, unsigned off, uint64_t v)
{
    uint8_t b[8];
    FILE *f = fopen(path_of(name), "r+b");

    assert_non_null(f);
    rb_store_be64(b, v);
    assert_int_equal(fseek(f, off, SEEK_SET), 0);
    assert_int_equal(fwrite(b, 1, 8, f), 8);
    fclose(f);
}

static void test_header_bits(void **state)
{
    struct rb_qcow2_create_opts o;
    struct rb_open_opts rw = {.format = "qcow2", .write = true};
    struct rb_error err = {0};
    struct rb_image *img;
    uint8_t data[4096];

    (void)state;
    memset(data, 0x5a, sizeof(data));
    rb_qcow2_create_opts_init(&o);
    o.size = 1 << 20;
    o.lazy_refcounts = true;
    assert_int_equal(create_qcow2(path_of("h.qcow2"), &o, &err), 0);
    /* an unknown autoclear bit (5), and the bitmaps bit without a bitmaps
     * extension (an error, spec): cleared on write */
    header_set_u64("h.qcow2", 88, (1ull << 5) | QCOW2_AUTOCLEAR_BITMAPS);
    img = rb_image_open(path_of("h.qcow2"), &rw, &err);
    assert_non_null(img);
    assert_int_equal(header_u64("h.qcow2", 72) & QCOW2_INCOMPAT_DIRTY, 0);
    assert_int_equal(rb_image_write(img, data, 0, sizeof(data), 0, &err), 0);
    /* dirty while open with lazy refcounts, autoclear bits gone */
    assert_int_equal(header_u64("h.qcow2", 72) & QCOW2_INCOMPAT_DIRTY, QCOW2_INCOMPAT_DIRTY);
    assert_int_equal(header_u64("h.qcow2", 88), 0);
    rb_image_close(img);
    assert_int_equal(header_u64("h.qcow2", 72) & QCOW2_INCOMPAT_DIRTY, 0);
    check_file("h.qcow2", 0);
    /* left dirty (a crash): a write open repairs it first, as QEMU */
    header_set_u64("h.qcow2", 72, QCOW2_INCOMPAT_DIRTY);
    rb_error_clear(&err);
    img = rb_image_open(path_of("h.qcow2"), &rw, &err);
    assert_non_null(img);
    assert_int_equal(header_u64("h.qcow2", 72) & QCOW2_INCOMPAT_DIRTY, 0);
    rb_image_close(img);
    check_file("h.qcow2", 0);
    /* the corrupt bit: never written */
    header_set_u64("h.qcow2", 72, QCOW2_INCOMPAT_CORRUPT);
    rb_error_clear(&err);
    assert_null(rb_image_open(path_of("h.qcow2"), &rw, &err));
    assert_non_null(strstr(err.msg, "corrupt"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refcount_widths),
        cmocka_unit_test(test_alloc_every_width),
        cmocka_unit_test(test_reftable_growth),
        cmocka_unit_test(test_random_writes),
        cmocka_unit_test(test_header_bits),
    };
    return cmocka_run_group_tests(tests, setup_dir, remove_dir);
}
