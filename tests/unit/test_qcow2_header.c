/* SPDX-License-Identifier: MIT */
/* qcow2 header parsing at every limit, on buffers built here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qcow2/qcow2.h"

#define BUF 65536
#define FILE_SIZE (1ull << 40)

static void be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void be64(uint8_t *p, uint64_t v)
{
    be32(p, (uint32_t)(v >> 32));
    be32(p + 4, (uint32_t)v);
}

/* A valid v3 header: 64 KiB clusters, 1 GiB, L1 at 0x30000, reftable at
 * 0x10000, header_length 112, end of extensions right after. */
static uint8_t *make(uint32_t version)
{
    uint8_t *b = calloc(1, BUF);

    be32(b, QCOW2_MAGIC);
    be32(b + 4, version);
    be32(b + 20, 16);
    be64(b + 24, 1ull << 30);
    be32(b + 36, 2);
    be64(b + 40, 0x30000);
    be64(b + 48, 0x10000);
    be32(b + 56, 1);
    if (version == 3) {
        be32(b + 96, 4);
        be32(b + 100, 112);
    }
    return b;
}

static int parse(uint8_t *b, size_t len, struct qcow2_header *h, struct rb_error *e)
{
    rb_error_clear(e);
    return qcow2_header_parse(b, len, "t.qcow2", FILE_SIZE, h, e);
}

static void expect_fail(uint8_t *b, size_t len, const char *needle)
{
    struct qcow2_header h;
    struct rb_error e;
    int ret = parse(b, len, &h, &e);

    if (ret == 0 || !strstr(e.msg, needle))
        fail_msg("expected failure with '%s', got %d '%s'", needle, ret, e.msg);
    assert_true(strncmp(e.msg, "t.qcow2: ", 9) == 0);
}

static void expect_ok(uint8_t *b, size_t len)
{
    struct qcow2_header h;
    struct rb_error e;
    int ret = parse(b, len, &h, &e);

    if (ret != 0)
        fail_msg("expected success, got '%s'", e.msg);
    qcow2_header_free(&h);
}

static void test_valid_v2_v3(void **state)
{
    struct qcow2_header h;
    struct rb_error e;
    uint8_t *b = make(2);

    assert_int_equal(parse(b, BUF, &h, &e), 0);
    assert_int_equal(h.version, 2);
    assert_int_equal(h.refcount_order, 4);
    assert_int_equal(h.header_length, 72);
    assert_int_equal(h.cluster_bits, 16);
    assert_int_equal(h.size, 1ull << 30);
    qcow2_header_free(&h);
    free(b);
    b = make(3);
    assert_int_equal(parse(b, BUF, &h, &e), 0);
    assert_int_equal(h.header_length, 112);
    qcow2_header_free(&h);
    expect_fail(b, 71, "too short");
    expect_fail(b, 100, "too short");
    be32(b, 0x514649fa);
    expect_fail(b, BUF, "bad magic");
    free(b);
}

static void test_version(void **state)
{
    for (uint32_t v = 0; v < 6; v++) {
        uint8_t *b = make(3);
        be32(b + 4, v);
        if (v == 2 || v == 3)
            expect_ok(b, BUF);
        else
            expect_fail(b, BUF, "version");
        free(b);
    }
}

static void test_cluster_bits(void **state)
{
    for (uint32_t cb = 0; cb < 64; cb++) {
        uint8_t *b = make(3);
        be32(b + 20, cb);
        be32(b + 36, 1u << 20); /* enough L1 entries for 1 GiB at any size */
        be64(b + 40, 1ull << 30);
        be64(b + 48, 1ull << 31);
        if (cb >= 9 && cb <= 21)
            expect_ok(b, BUF);
        else
            expect_fail(b, BUF, "cluster_bits");
        free(b);
    }
}

static void test_header_length(void **state)
{
    static const struct { uint32_t len; bool ok; } cases[] = {
        {0, false}, {72, false}, {103, false}, {104, true}, {108, false},
        {112, true}, {65536, true}, {65544, false}, {0xfffffff8u, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t *b = make(3);
        be32(b + 100, cases[i].len);
        if (cases[i].ok)
            expect_ok(b, BUF);
        else
            expect_fail(b, BUF, "header_length");
        free(b);
    }
}

static void test_refcount_order(void **state)
{
    for (uint32_t o = 0; o < 10; o++) {
        uint8_t *b = make(3);
        be32(b + 96, o);
        if (o <= 6)
            expect_ok(b, BUF);
        else
            expect_fail(b, BUF, "refcount_order");
        free(b);
    }
}

static void test_l1_limits(void **state)
{
    uint8_t *b = make(3);
    struct qcow2_header h;
    struct rb_error e;

    /* 1 GiB at 64 KiB clusters needs 2 L1 entries */
    be32(b + 36, 1);
    expect_fail(b, BUF, "L1 table is too small");
    be32(b + 36, QCOW2_MAX_L1_BYTES / 8);
    expect_ok(b, BUF);
    be32(b + 36, QCOW2_MAX_L1_BYTES / 8 + 1);
    expect_fail(b, BUF, "L1 table is too large");
    be32(b + 36, 2);
    be64(b + 40, 0x30200);
    expect_fail(b, BUF, "not cluster-aligned");
    be64(b + 40, FILE_SIZE - 8);
    expect_fail(b, BUF, "not cluster-aligned");
    be64(b + 40, FILE_SIZE - 65536);
    expect_ok(b, BUF);
    be32(b + 36, 8193);
    expect_fail(b, BUF, "past the end");
    be64(b + 40, UINT64_MAX - 65535);
    expect_fail(b, BUF, "past the end");
    /* virtual size too large for the L1 cap at 512-byte clusters */
    be64(b + 40, 0x30000);
    be32(b + 20, 9);
    be32(b + 36, QCOW2_MAX_L1_BYTES / 8);
    be64(b + 24, (uint64_t)(QCOW2_MAX_L1_BYTES / 8) * 512 * 64);
    expect_ok(b, BUF);
    be64(b + 24, (uint64_t)(QCOW2_MAX_L1_BYTES / 8) * 512 * 64 + 1);
    expect_fail(b, BUF, "too large");
    be64(b + 24, UINT64_MAX);
    expect_fail(b, BUF, "too large");
    /* size 0 needs no L1 entries */
    be64(b + 24, 0);
    be32(b + 36, 0);
    assert_int_equal(parse(b, BUF, &h, &e), 0);
    qcow2_header_free(&h);
    free(b);
}

static void test_reftable_limits(void **state)
{
    for (uint32_t cb = 9; cb <= 21; cb++) {
        uint8_t *b = make(3);
        uint32_t max = QCOW2_MAX_REFTABLE_BYTES >> cb;
        be32(b + 20, cb);
        be32(b + 36, 1u << 20);
        be64(b + 40, 1ull << 30);
        be64(b + 48, 1ull << 31);
        be32(b + 56, 0);
        expect_fail(b, BUF, "no refcount table");
        be32(b + 56, max ? max : 1);
        expect_ok(b, BUF);
        be32(b + 56, max + 1);
        expect_fail(b, BUF, "refcount table is too large");
        be32(b + 56, 1);
        be64(b + 48, (1ull << 31) + 512 * 3);
        if (cb > 9)
            expect_fail(b, BUF, "not cluster-aligned");
        be64(b + 48, FILE_SIZE);
        expect_fail(b, BUF, "past the end");
        free(b);
    }
}

static void test_snapshot_limits(void **state)
{
    uint8_t *b = make(3);

    be64(b + 64, 0x40000);
    be32(b + 60, QCOW2_MAX_SNAPSHOTS);
    expect_ok(b, BUF);
    be32(b + 60, QCOW2_MAX_SNAPSHOTS + 1);
    expect_fail(b, BUF, "too many snapshots");
    be32(b + 60, 1);
    be64(b + 64, 0x40008);
    expect_fail(b, BUF, "snapshot table");
    be64(b + 64, FILE_SIZE);
    expect_fail(b, BUF, "snapshot table");
    free(b);
}

static void test_backing_file(void **state)
{
    uint8_t *b = make(3);
    struct qcow2_header h;
    struct rb_error e;

    memcpy(b + 0x200, "base.qcow2", 10);
    be64(b + 8, 0x200);
    be32(b + 16, 10);
    assert_int_equal(parse(b, BUF, &h, &e), 0);
    assert_string_equal(h.backing_file, "base.qcow2");
    assert_null(h.backing_format);
    qcow2_header_free(&h);
    be32(b + 16, QCOW2_MAX_BACKING_NAME);
    expect_ok(b, BUF);
    be32(b + 16, QCOW2_MAX_BACKING_NAME + 1);
    expect_fail(b, BUF, "backing_file_size");
    be32(b + 16, 10);
    be64(b + 8, 65536 - 9);
    expect_fail(b, BUF, "backing_file_size");
    be64(b + 8, 65537);
    expect_fail(b, BUF, "backing_file_offset");
    be64(b + 8, 0x200);
    expect_fail(b, 0x205, "past the end");
    free(b);
}

static void put_ext(uint8_t *b, size_t *off, uint32_t type, const void *data, uint32_t len)
{
    be32(b + *off, type);
    be32(b + *off + 4, len);
    memcpy(b + *off + 8, data, len);
    *off += 8 + ((len + 7u) & ~7u);
}

static void test_extensions(void **state)
{
    uint8_t *b = make(3), ft[48 * 2] = {0}, bm[24] = {0};
    struct qcow2_header h;
    struct rb_error e;
    size_t off = 112;

    put_ext(b, &off, QCOW2_EXT_BACKING_FORMAT, "raw", 3);
    ft[0] = 0;
    ft[1] = 40;
    strcpy((char *)ft + 2, "fancy feature");
    ft[48] = 1;
    ft[49] = 0;
    strcpy((char *)ft + 50, "lazy refcounts");
    put_ext(b, &off, QCOW2_EXT_FEATURE_TABLE, ft, sizeof(ft));
    put_ext(b, &off, 0x12345678, "xyz", 3);
    put_ext(b, &off, QCOW2_EXT_DATA_FILE, "data.bin", 8);
    be32(bm, 1);
    be64(bm + 8, 40);
    be64(bm + 16, 0x50000);
    put_ext(b, &off, QCOW2_EXT_BITMAPS, bm, 24);
    be64(b + 88, QCOW2_AUTOCLEAR_BITMAPS);
    assert_int_equal(parse(b, BUF, &h, &e), 0);
    assert_string_equal(h.backing_format, "raw");
    assert_string_equal(h.data_file, "data.bin");
    assert_int_equal(h.nb_feature_names, 2);
    assert_string_equal(h.feature_names[0].name, "fancy feature");
    assert_int_equal(h.nb_exts, 5);
    assert_int_equal(h.exts[2].type, 0x12345678);
    assert_int_equal(h.exts[2].length, 3);
    assert_int_equal(h.nb_bitmaps, 1);
    assert_int_equal(h.bitmap_directory_offset, 0x50000);
    qcow2_header_free(&h);

    /* unknown incompatible bit: named from the table */
    be64(b + 72, 1ull << 40);
    expect_fail(b, BUF, "'fancy feature' (bit 40)");
    be64(b + 72, 1ull << 41);
    expect_fail(b, BUF, "bit 41");
    be64(b + 72, 0);
    /* the data file bit needs the extension, and the raw bit the data bit */
    be64(b + 72, QCOW2_INCOMPAT_DATA_FILE);
    expect_ok(b, BUF);
    be64(b + 72, 0);
    be64(b + 88, QCOW2_AUTOCLEAR_DATA_FILE_RAW | QCOW2_AUTOCLEAR_BITMAPS);
    expect_fail(b, BUF, "raw external data");
    be64(b + 88, QCOW2_AUTOCLEAR_BITMAPS);
    /* bitmaps: count 0 and directory limits */
    be32(b + off - 32 + 8, 0);
    expect_fail(b, BUF, "bitmaps");
    be32(b + off - 32 + 8, 65536);
    expect_fail(b, BUF, "bitmaps");
    be32(b + off - 32 + 8, 1);
    be64(b + off - 32 + 16, (64u << 20) + 1);
    expect_fail(b, BUF, "bitmap directory is too large");
    be64(b + off - 32 + 16, 40);
    expect_ok(b, BUF);
    /* an extension running past the cluster */
    be32(b + off, 0x1);
    be32(b + off + 4, BUF);
    expect_fail(b, BUF, "too large");
    be32(b + off + 4, BUF - (uint32_t)off - 8);
    expect_ok(b, BUF);
    /* backing format longer than qemu's 16-byte buffer */
    be32(b + 112 + 4, 16);
    expect_fail(b, BUF, "backing format");
    free(b);
}

static void test_compression_and_features(void **state)
{
    uint8_t *b = make(3);

    b[104] = 1;
    expect_fail(b, BUF, "compression");
    be64(b + 72, QCOW2_INCOMPAT_COMPRESSION);
    expect_ok(b, BUF);
    b[104] = 2;
    expect_fail(b, BUF, "compression_type");
    b[104] = 0;
    expect_fail(b, BUF, "compression");
    be64(b + 72, 0);
    be32(b + 100, 104); /* field absent: zlib */
    b[104] = 1;
    expect_ok(b, BUF);
    be32(b + 100, 112);
    b[104] = 0;
    be32(b + 32, 1);
    expect_fail(b, BUF, "encrypted");
    be32(b + 32, 0);
    /* extended L2 needs 16 KiB clusters */
    be64(b + 72, QCOW2_INCOMPAT_EXTL2);
    be32(b + 36, 1u << 20);
    be64(b + 40, 1ull << 30);
    be64(b + 48, 1ull << 31);
    be32(b + 20, 13);
    expect_fail(b, BUF, "extended L2");
    be32(b + 20, 14);
    expect_ok(b, BUF);
    /* known incompatible bits are accepted (dirty, corrupt) */
    be64(b + 72, QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT);
    expect_ok(b, BUF);
    be64(b + 72, 1ull << 63);
    expect_fail(b, BUF, "bit 63");
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_v2_v3),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_cluster_bits),
        cmocka_unit_test(test_header_length),
        cmocka_unit_test(test_refcount_order),
        cmocka_unit_test(test_l1_limits),
        cmocka_unit_test(test_reftable_limits),
        cmocka_unit_test(test_snapshot_limits),
        cmocka_unit_test(test_backing_file),
        cmocka_unit_test(test_extensions),
        cmocka_unit_test(test_compression_and_features),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
