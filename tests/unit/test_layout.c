/* SPDX-License-Identifier: MIT */
/*
 * The host layout (lib/qcow2/layout.c) and the windowed walk of the check
 * under it (check.c, qcow2_check_walk):
 *  - the check counted in windows of 1, 2, 3, 7, 64 clusters gives the
 *    figures of the check in one window (leaks, allocated, fragmented,
 *    compressed, image end offset, problems: the leaks the comparison
 *    finds and a corruption the walk finds, reported once), and tells the
 *    observer the same bytes of each class;
 *  - the layout's columns add up to its totals, every host byte of the
 *    file is drawn once (no snapshots: no cluster has two owners), and
 *    the leaked clusters made here are the leaked bytes.
 * 512-byte clusters, so a small file has hundreds of clusters.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "qcow2_file.h"

#include "qcow2/qcow2.h"
#include "rblock/io.h"
#include "rblock/qcow2-create.h"
#include "rblock/qcow2.h"

static char dir[] = "/tmp/rb-layout-XXXXXX";
static char path[512];

#define CLUSTER 512u
#define LEAKS 3u

/* An image of 4 MiB: scattered writes (fragmented), compressed ones, and
 * LEAKS clusters past the end with refcount 1 that nothing references. */
static int setup(void **state)
{
    struct rb_qcow2_create_opts o;
    struct rb_open_opts oo = {.format = "qcow2", .write = true, .unsafe_no_barriers = true};
    struct rb_error err = {0};
    struct rb_image *img;
    uint8_t buf[4096];
    uint64_t refblock, end, l2_entry_off = 0;
    uint8_t entry[8];
    int fd;

    (void)state;
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof(path), "%s/l.qcow2", dir);
    rb_qcow2_create_opts_init(&o);
    o.cluster_bytes = CLUSTER;
    o.size = 4 << 20;
    if (create_qcow2(path, &o, &err) < 0 || !(img = rb_image_open(path, &oo, &err)))
        return -1;
    memset(buf, 0x5a, sizeof(buf));
    for (uint64_t off = 0; off < (256u << 10); off += 3 * CLUSTER)
        if (rb_image_write(img, buf, (3u << 20) - off, CLUSTER, 0, &err) < 0)
            return -1;
    for (uint64_t off = 1 << 20; off < (1 << 20) + 16 * CLUSTER; off += CLUSTER)
        if (qcow2_write_compressed(img, buf, off, CLUSTER, &err) < 0)
            return -1;
    if (rb_image_flush(img, &err) < 0)
        return -1;
    refblock = ((struct qcow2_state *)img->priv)->reftable[0] & QCOW2_REFT_OFFSET_MASK;
    {
        /* one corruption the walk finds (not the comparison): reserved
         * bit 1 set in the first entry of the last L2 table, which maps
         * the plain data cluster written at 3 MiB */
        struct qcow2_state *s = img->priv;
        for (uint32_t i = 0; i < s->h.l1_size; i++)
            if (s->l1[i] & QCOW2_L1E_OFFSET_MASK)
                l2_entry_off = s->l1[i] & QCOW2_L1E_OFFSET_MASK;
    }
    rb_image_close(img);

    /* LEAKS clusters at the end, refcount 1 (16-bit refcounts); the first
     * refcount block covers 256 clusters: keep inside it */
    fd = open(path, O_RDWR);
    if (fd < 0)
        return -1;
    end = (uint64_t)lseek(fd, 0, SEEK_END);
    end = (end + CLUSTER - 1) / CLUSTER * CLUSTER;
    if (end / CLUSTER + LEAKS > CLUSTER / 2 || ftruncate(fd, (off_t)(end + LEAKS * CLUSTER)))
        return -1;
    for (unsigned i = 0; i < LEAKS; i++) {
        uint8_t one[2] = {0, 1};
        if (rb_io_pwrite(fd, one, 2, refblock + (end / CLUSTER + i) * 2) < 0)
            return -1;
    }
    if (!l2_entry_off || rb_io_pread(fd, entry, 8, l2_entry_off) < 0 ||
        (entry[0] & 0xc0) != 0x80) /* COPIED, not compressed */
        return -1;
    entry[7] |= 0x02;
    if (rb_io_pwrite(fd, entry, 8, l2_entry_off) < 0)
        return -1;
    close(fd);
    return 0;
}

static int teardown(void **state)
{
    char cmd[600];

    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static struct rb_image *open_ro(void)
{
    struct rb_open_opts oo = {.format = "qcow2"};
    struct rb_error err = {0};
    struct rb_image *img = rb_image_open(path, &oo, &err);

    if (!img)
        fail_msg("open: %s", err.msg);
    return img;
}

static void count(void *opaque, uint64_t off, uint64_t bytes, enum rb_qcow2_host_class cls)
{
    uint64_t *totals = opaque;

    (void)off;
    assert_true((unsigned)cls < RB_QCOW2_HOST_CLASSES);
    totals[cls] += bytes;
}

static void test_windows_agree(void **state)
{
    struct rb_image *img = open_ro();
    struct rb_qcow2_check one, w;
    struct rb_error err = {0};
    uint64_t t_one[RB_QCOW2_HOST_CLASSES] = {0};
    struct qcow2_check_observer obs = {count, t_one};
    static const uint64_t windows[] = {1, 2, 3, 7, 64};

    (void)state;
    assert_int_equal(qcow2_check_walk(img, &one, &obs, 0, NULL, &err), 0);
    assert_int_equal(one.leaks, LEAKS);
    assert_int_equal(one.corruptions, 1);
    assert_non_null(strstr(one.problems[0].msg, "reserved bits"));
    assert_int_equal(one.check_errors, 0);
    assert_true(one.fragmented_clusters > 40);
    assert_int_equal(one.compressed_clusters, 16);
    assert_int_equal(t_one[RB_QCOW2_HOST_LEAKED], LEAKS * CLUSTER);
    assert_true(t_one[RB_QCOW2_HOST_COMPRESSED] > 0);

    for (size_t i = 0; i < sizeof(windows) / sizeof(windows[0]); i++) {
        uint64_t t[RB_QCOW2_HOST_CLASSES] = {0};
        obs.opaque = t;
        assert_int_equal(qcow2_check_walk(img, &w, &obs, windows[i], NULL, &err), 0);
        assert_int_equal(w.leaks, one.leaks);
        assert_int_equal(w.corruptions, one.corruptions);
        assert_int_equal(w.check_errors, one.check_errors);
        assert_int_equal(w.allocated_clusters, one.allocated_clusters);
        assert_int_equal(w.fragmented_clusters, one.fragmented_clusters);
        assert_int_equal(w.compressed_clusters, one.compressed_clusters);
        assert_int_equal(w.image_end_offset, one.image_end_offset);
        assert_int_equal(w.nb_problems, one.nb_problems);
        for (size_t p = 0; p < w.nb_problems; p++)
            assert_string_equal(w.problems[p].msg, one.problems[p].msg);
        assert_memory_equal(t, t_one, sizeof(t));
        rb_qcow2_check_free(&w);
    }
    rb_qcow2_check_free(&one);
    rb_image_close(img);
}

static void test_columns_add_up(void **state)
{
    struct rb_image *img = open_ro();
    struct rb_qcow2_layout l;
    struct rb_error err = {0};
    static const uint32_t asked[] = {1, 7, 100, 1000, 65536};

    (void)state;
    for (size_t a = 0; a < sizeof(asked) / sizeof(asked[0]); a++) {
        uint64_t sum[RB_QCOW2_HOST_CLASSES] = {0}, all = 0;

        assert_int_equal(rb_qcow2_layout(img, asked[a], &l, &err), 0);
        assert_true(l.columns >= 1 && l.columns <= asked[a]);
        assert_true((uint64_t)l.columns * l.column_bytes >= l.span_bytes);
        assert_int_equal(l.span_bytes % CLUSTER, 0);
        assert_true(l.span_bytes >= l.file_bytes && l.span_bytes - l.file_bytes < CLUSTER);
        for (uint32_t c = 0; c < l.columns; c++) {
            uint64_t col = 0;
            for (unsigned k = 0; k < RB_QCOW2_HOST_CLASSES; k++) {
                sum[k] += l.bytes[(size_t)c * RB_QCOW2_HOST_CLASSES + k];
                col += l.bytes[(size_t)c * RB_QCOW2_HOST_CLASSES + k];
            }
            assert_true(col <= l.column_bytes);
        }
        assert_memory_equal(sum, l.total, sizeof(sum));
        for (unsigned k = 0; k < RB_QCOW2_HOST_CLASSES; k++)
            all += k == RB_QCOW2_HOST_COMPRESSED ? 0 : l.total[k];
        /* every cluster drawn once, but those holding compressed data
         * only for its bytes */
        assert_true(all < l.span_bytes && all + 16 * CLUSTER >= l.span_bytes);
        assert_int_equal(l.total[RB_QCOW2_HOST_LEAKED], LEAKS * CLUSTER);
        assert_int_equal(l.check.leaks, LEAKS);
        /* the leaked clusters are the last ones */
        assert_int_equal(l.bytes[(size_t)(l.columns - 1) * RB_QCOW2_HOST_CLASSES +
                                 RB_QCOW2_HOST_LEAKED] > 0, 1);
        rb_qcow2_layout_free(&l);
    }
    assert_int_equal(rb_qcow2_layout(img, 0, &l, &err), -EINVAL);
    assert_int_equal(rb_qcow2_layout(img, 65537, &l, &err), -EINVAL);
    rb_image_close(img);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_windows_agree),
        cmocka_unit_test(test_columns_add_up),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
