/* SPDX-License-Identifier: MIT */
/* qcow2 index math for every cluster size, subcluster types, compressed
 * descriptors, refcounts at every width, and the metadata cache. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "qcow2/qcow2.h"
#include "rblock/io.h"

static void test_index_math(void **state)
{
    for (uint32_t cb = 9; cb <= 21; cb++) {
        for (int ext = 0; ext <= 1; ext++) {
            struct qcow2_state s = {0};
            uint64_t cluster = 1ull << cb;
            uint32_t entries = qcow2_l2_entries_for(cb, ext);
            uint64_t span;

            assert_int_equal(entries, cluster / (ext ? 16 : 8));
            s.h.cluster_bits = cb;
            s.cluster_bytes = (uint32_t)cluster;
            s.l2_entries = entries;
            s.l2_bits = cb - (ext ? 4 : 3);
            s.extended_l2 = ext;
            s.subcluster_bytes = ext ? (uint32_t)cluster / 32 : (uint32_t)cluster;
            span = cluster * entries;
            assert_int_equal(qcow2_l1_entries_for(0, cb, ext), 0);
            assert_int_equal(qcow2_l1_entries_for(1, cb, ext), 1);
            assert_int_equal(qcow2_l1_entries_for(span, cb, ext), 1);
            assert_int_equal(qcow2_l1_entries_for(span + 1, cb, ext), 2);
            assert_int_equal(qcow2_l1_entries_for(UINT64_MAX, cb, ext),
                             (UINT64_MAX >> (cb + s.l2_bits)) + 1);
            assert_int_equal(qcow2_l1_index(&s, 0), 0);
            assert_int_equal(qcow2_l1_index(&s, span - 1), 0);
            assert_int_equal(qcow2_l1_index(&s, span), 1);
            assert_int_equal(qcow2_l1_index(&s, 5 * span + 3 * cluster + 7), 5);
            assert_int_equal(qcow2_l2_index(&s, 5 * span + 3 * cluster + 7), 3);
            assert_int_equal(qcow2_l2_index(&s, span - 1), entries - 1);
            assert_int_equal(qcow2_l2_index(&s, span), 0);
            if (ext) {
                assert_int_equal(qcow2_sc_index(&s, cluster / 32 * 5 + 1), 5);
                assert_int_equal(qcow2_sc_index(&s, 7 * cluster + cluster - 1), 31);
            } else {
                assert_int_equal(qcow2_sc_index(&s, cluster - 1), 0);
            }
        }
    }
}

static void test_compressed_descriptor(void **state)
{
    for (uint32_t cb = 9; cb <= 21; cb++) {
        unsigned shift = 62 - (cb - 8);
        uint64_t max_sectors = 1ull << (cb - 8);
        uint64_t offs[] = {0x200, 0x12345, (1ull << shift) - 1};

        for (size_t i = 0; i < 3; i++) {
            for (uint64_t nb = 1; nb <= max_sectors; nb = nb * 3 + 1) {
                uint64_t e = QCOW2_OFLAG_COMPRESSED | ((nb - 1) << shift) | offs[i];
                uint64_t off, bytes;
                qcow2_compressed_parse(e, cb, &off, &bytes);
                assert_int_equal(off, offs[i]);
                assert_int_equal(bytes, nb * 512 - (offs[i] & 511));
            }
        }
    }
}

static void test_subcluster_types(void **state)
{
    const uint64_t host = 0x50000;

    /* standard L2 entries */
    assert_int_equal(qcow2_sc_type_of(0, 0, 0, false, false), QCOW2_SC_UNALLOCATED_PLAIN);
    assert_int_equal(qcow2_sc_type_of(host, 0, 0, false, false), QCOW2_SC_NORMAL);
    assert_int_equal(qcow2_sc_type_of(host | QCOW2_OFLAG_COPIED, 0, 0, false, false),
                     QCOW2_SC_NORMAL);
    assert_int_equal(qcow2_sc_type_of(1, 0, 0, false, false), QCOW2_SC_ZERO_PLAIN);
    assert_int_equal(qcow2_sc_type_of(host | 1, 0, 0, false, false), QCOW2_SC_ZERO_ALLOC);
    assert_int_equal(qcow2_sc_type_of(QCOW2_OFLAG_COMPRESSED | 5, 0, 0, false, false),
                     QCOW2_SC_COMPRESSED);
    /* offset 0 in an external data file */
    assert_int_equal(qcow2_sc_type_of(QCOW2_OFLAG_COPIED, 0, 0, false, true),
                     QCOW2_SC_NORMAL);
    assert_int_equal(qcow2_sc_type_of(QCOW2_OFLAG_COPIED, 0, 0, false, false),
                     QCOW2_SC_UNALLOCATED_PLAIN);
    /* extended: bitmaps per subcluster; bit 0 of the entry is reserved */
    for (unsigned sc = 0; sc < 32; sc++) {
        uint64_t alloc = 1ull << sc, zero = 1ull << (32 + sc);
        assert_int_equal(qcow2_sc_type_of(host, alloc, sc, true, false), QCOW2_SC_NORMAL);
        assert_int_equal(qcow2_sc_type_of(host, zero, sc, true, false),
                         QCOW2_SC_ZERO_ALLOC);
        assert_int_equal(qcow2_sc_type_of(host, 0, sc, true, false),
                         QCOW2_SC_UNALLOCATED_ALLOC);
        assert_int_equal(qcow2_sc_type_of(host, alloc | zero, sc, true, false),
                         QCOW2_SC_INVALID);
        assert_int_equal(qcow2_sc_type_of(0, zero, sc, true, false), QCOW2_SC_ZERO_PLAIN);
        assert_int_equal(qcow2_sc_type_of(0, 0, sc, true, false),
                         QCOW2_SC_UNALLOCATED_PLAIN);
        assert_int_equal(qcow2_sc_type_of(0, alloc, sc, true, false), QCOW2_SC_INVALID);
        assert_int_equal(qcow2_sc_type_of(1, 0, sc, true, false),
                         QCOW2_SC_UNALLOCATED_PLAIN);
        /* the other subclusters' bits do not matter */
        assert_int_equal(qcow2_sc_type_of(host, ~alloc & ~zero & 0xffffffffull, sc, true,
                                          false), QCOW2_SC_UNALLOCATED_ALLOC);
    }
}

static void test_refcount_widths(void **state)
{
    uint8_t block[4096];

    for (uint32_t order = 0; order <= 6; order++) {
        unsigned bits = 1u << order;
        uint64_t n = sizeof(block) * 8 / bits;
        uint64_t mask = bits == 64 ? UINT64_MAX : (1ull << bits) - 1;

        memset(block, 0, sizeof(block));
        for (uint64_t i = 0; i < n; i++)
            qcow2_refblock_set(block, order, i, (i * 0x9e3779b97f4a7c15ull) & mask);
        for (uint64_t i = 0; i < n; i++)
            assert_int_equal(qcow2_refblock_get(block, order, i),
                             (i * 0x9e3779b97f4a7c15ull) & mask);
        /* setting one entry leaves its neighbours alone */
        qcow2_refblock_set(block, order, 5, mask);
        assert_int_equal(qcow2_refblock_get(block, order, 4), (4 * 0x9e3779b97f4a7c15ull) & mask);
        assert_int_equal(qcow2_refblock_get(block, order, 6), (6 * 0x9e3779b97f4a7c15ull) & mask);
        assert_int_equal(qcow2_refblock_get(block, order, 5), mask);
        qcow2_refblock_set(block, order, 5, 0);
        assert_int_equal(qcow2_refblock_get(block, order, 5), 0);
    }
    /* on-disk layout: sub-byte widths from the least significant bit,
     * wider ones big-endian */
    memset(block, 0, 16);
    qcow2_refblock_set(block, 0, 1, 1);
    assert_int_equal(block[0], 0x02);
    memset(block, 0, 16);
    qcow2_refblock_set(block, 1, 1, 3);
    assert_int_equal(block[0], 0x0c);
    memset(block, 0, 16);
    qcow2_refblock_set(block, 2, 1, 0xa);
    assert_int_equal(block[0], 0xa0);
    memset(block, 0, 16);
    qcow2_refblock_set(block, 4, 1, 0x0102);
    assert_int_equal(block[2], 1);
    assert_int_equal(block[3], 2);
    memset(block, 0, 16);
    qcow2_refblock_set(block, 6, 1, 0x0102030405060708ull);
    assert_int_equal(block[8], 1);
    assert_int_equal(block[15], 8);
}

/* A file of @n tables of 512 bytes, table i filled with byte i. */
static int make_file(char *path, int n)
{
    uint8_t buf[512];
    int fd;

    strcpy(path, "/tmp/rb-cache-XXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    for (int i = 0; i < n; i++) {
        memset(buf, i, sizeof(buf));
        assert_int_equal(rb_io_pwrite(fd, buf, sizeof(buf), (uint64_t)i * 512), 0);
    }
    return fd;
}

static void test_cache(void **state)
{
    char path[64], path2[64];
    int fd = make_file(path, 8), fd2 = make_file(path2, 2);
    struct qcow2_cache *c = qcow2_cache_new(fd, 512, 3 * 512);
    struct qcow2_cache *dep = qcow2_cache_new(fd2, 512, 512);
    uint8_t *t[4], buf[512];

    assert_non_null(c);
    assert_int_equal(qcow2_cache_entries(c), 3);
    assert_int_equal(qcow2_cache_entries(dep), 2); /* at least two */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(qcow2_cache_get(c, (uint64_t)i * 512, (void **)&t[i]), 0);
        assert_int_equal(t[i][0], i);
        assert_int_equal(t[i][511], i);
    }
    /* all pinned: no room */
    assert_int_equal(qcow2_cache_get(c, 3 * 512, (void **)&t[3]), -ENOMEM);
    /* the same table twice is the same memory */
    assert_int_equal(qcow2_cache_get(c, 512, (void **)&t[3]), 0);
    assert_ptr_equal(t[3], t[1]);
    qcow2_cache_put(c, t[3]);
    /* dirty table 0, unpin all; reading a 4th evicts the LRU (table 0),
     * which is written back first */
    t[0][0] = 0xee;
    qcow2_cache_mark_dirty(c, t[0]);
    assert_true(qcow2_cache_has_dirty(c));
    for (int i = 0; i < 3; i++)
        qcow2_cache_put(c, t[i]);
    /* dependency: dep's dirty table reaches its file before c writes */
    qcow2_cache_set_dependency(c, dep);
    qcow2_cache_set_barriers(c, false);
    assert_int_equal(qcow2_cache_get_empty(dep, 512, (void **)&t[3]), 0);
    assert_int_equal(t[3][7], 0);
    t[3][7] = 0x77;
    qcow2_cache_mark_dirty(dep, t[3]);
    qcow2_cache_put(dep, t[3]);
    assert_int_equal(qcow2_cache_get(c, 3 * 512, (void **)&t[3]), 0);
    assert_int_equal(t[3][0], 3);
    assert_int_equal(rb_io_pread(fd, buf, 512, 0), 0);
    assert_int_equal(buf[0], 0xee);
    assert_int_equal(buf[1], 0);
    assert_int_equal(rb_io_pread(fd2, buf, 512, 512), 0);
    assert_int_equal(buf[7], 0x77);
    assert_false(qcow2_cache_has_dirty(dep));
    qcow2_cache_put(c, t[3]);
    /* LRU: 1 and 2 were used before 3; get 1 again, then 4 evicts 2 */
    assert_int_equal(qcow2_cache_get(c, 512, (void **)&t[1]), 0);
    qcow2_cache_put(c, t[1]);
    assert_int_equal(qcow2_cache_get(c, 4 * 512, (void **)&t[0]), 0);
    qcow2_cache_put(c, t[0]);
    memset(buf, 0x55, sizeof(buf));
    assert_int_equal(rb_io_pwrite(fd, buf, 512, 512), 0);
    assert_int_equal(rb_io_pwrite(fd, buf, 512, 1024), 0);
    assert_int_equal(qcow2_cache_get(c, 512, (void **)&t[1]), 0);
    assert_int_equal(t[1][0], 1);      /* still cached */
    assert_int_equal(qcow2_cache_get(c, 1024, (void **)&t[2]), 0);
    assert_int_equal(t[2][0], 0x55);   /* was evicted, read again */
    /* discard drops a dirty table without writing it */
    t[2][0] = 0x99;
    qcow2_cache_mark_dirty(c, t[2]);
    qcow2_cache_put(c, t[2]);
    qcow2_cache_discard(c, 1024);
    qcow2_cache_put(c, t[1]);
    assert_int_equal(qcow2_cache_flush(c), 0);
    assert_int_equal(rb_io_pread(fd, buf, 512, 1024), 0);
    assert_int_equal(buf[0], 0x55);
    /* flush writes dirty tables */
    assert_int_equal(qcow2_cache_get(c, 6 * 512, (void **)&t[0]), 0);
    t[0][100] = 0x42;
    qcow2_cache_mark_dirty(c, t[0]);
    qcow2_cache_put(c, t[0]);
    qcow2_cache_depends_on_flush(c, fd2);
    assert_int_equal(qcow2_cache_flush(c), 0);
    assert_int_equal(rb_io_pread(fd, buf, 512, 6 * 512), 0);
    assert_int_equal(buf[100], 0x42);
    assert_false(qcow2_cache_has_dirty(c));

    qcow2_cache_free(c);
    qcow2_cache_free(dep);
    close(fd);
    close(fd2);
    unlink(path);
    unlink(path2);
}

static void test_compress_roundtrip(void **state)
{
    enum { N = 65536 };
    uint8_t *src = malloc(N), *cmp = malloc(N), *out = malloc(N);

    for (size_t i = 0; i < N; i++)
        src[i] = (uint8_t)(i / 100);
    for (uint8_t type = 0; type <= 1; type++) {
        long n = qcow2_compress(type, src, N, cmp, N - 512);
        assert_true(n > 0 && n < N);
        /* trailing garbage after the stream (sector rounding) is fine */
        memset(cmp + n, 0xa5, 512);
        assert_int_equal(qcow2_decompress(type, cmp, (size_t)n + 512, out, N), 0);
        assert_memory_equal(src, out, N);
        /* truncated or corrupt input fails cleanly */
        assert_int_not_equal(qcow2_decompress(type, cmp, (size_t)n / 2, out, N), 0);
        memset(cmp, 0xff, 16);
        assert_int_not_equal(qcow2_decompress(type, cmp, (size_t)n, out, N), 0);
    }
    /* random data does not fit: stored uncompressed */
    for (size_t i = 0; i < N; i++)
        src[i] = (uint8_t)(rand() >> 7);
    assert_int_equal(qcow2_compress(0, src, N, cmp, N - 512), 0);
    assert_int_equal(qcow2_compress(1, src, N, cmp, N - 512), 0);
    assert_int_equal(qcow2_decompress(7, src, N, out, N), -ENOTSUP);
    free(src);
    free(cmp);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index_math),
        cmocka_unit_test(test_compressed_descriptor),
        cmocka_unit_test(test_subcluster_types),
        cmocka_unit_test(test_refcount_widths),
        cmocka_unit_test(test_cache),
        cmocka_unit_test(test_compress_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
