/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the fault-injection layer under rb_io_* (io.h): counting,
 * failing the Nth write or sync (once or for good), and "power loss" at
 * the Nth write or sync in a forked child, after which the file must hold
 * exactly what was synced (or, with a seed, a mix of whole unsynced
 * writes over it).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rblock/io.h"

#define BLK 4096

static char dir[] = P_tmpdir "/rb-fault-XXXXXX";

static int new_file(const char *name, uint8_t fill, size_t size)
{
    char path[256];
    uint8_t buf[BLK];
    int fd;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    memset(buf, fill, sizeof(buf));
    for (size_t off = 0; off < size; off += BLK)
        assert_int_equal(pwrite(fd, buf, BLK, (off_t)off), BLK);
    assert_int_equal(fsync(fd), 0);
    return fd;
}

static void expect_blocks(int fd, const uint8_t *fills, size_t nblocks)
{
    uint8_t buf[BLK];
    struct stat st;

    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_size, (off_t)(nblocks * BLK));
    for (size_t i = 0; i < nblocks; i++) {
        assert_int_equal(pread(fd, buf, BLK, (off_t)(i * BLK)), BLK);
        for (size_t j = 0; j < BLK; j++) {
            if (buf[j] != fills[i])
                fail_msg("block %zu byte %zu is %#x, not %#x", i, j, buf[j], fills[i]);
        }
    }
}

static void put(int fd, uint8_t fill, uint64_t blk)
{
    uint8_t buf[BLK];

    memset(buf, fill, sizeof(buf));
    assert_int_equal(rb_io_pwrite(fd, buf, BLK, blk * BLK), 0);
}

static int set_plan(const char *spec)
{
    struct rb_io_fault_plan plan;

    assert_int_equal(rb_io_fault_parse(spec, &plan), 0);
    plan.report_at_exit = false;
    return rb_io_fault_set(&plan);
}

/* Run @body in a child under @spec; return its exit status. */
static int in_child(const char *spec, void (*body)(int fd), int fd)
{
    pid_t pid = fork();
    int status;

    assert_true(pid >= 0);
    if (pid == 0) {
        if (set_plan(spec) < 0)
            _exit(2);
        body(fd);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void test_parse(void **state)
{
    struct rb_io_fault_plan p;

    (void)state;
    assert_int_equal(rb_io_fault_parse("count", &p), 0);
    assert_int_equal(p.mode, RB_IO_FAULT_COUNT);
    assert_int_equal(rb_io_fault_parse("fail-write:7", &p), 0);
    assert_int_equal(p.mode, RB_IO_FAULT_FAIL_WRITE);
    assert_int_equal(p.n, 7);
    assert_false(p.once);
    assert_int_equal(rb_io_fault_parse("fail-sync:3:once", &p), 0);
    assert_true(p.once);
    assert_int_equal(rb_io_fault_parse("power-sync:12:99", &p), 0);
    assert_int_equal(p.seed, 99);
    const char *bad[] = {"", "fail", "fail-write:", "fail-write:0", "fail-write:-1",
                         "fail-write:1x", "power-write:3:once", "power-write:3:0",
                         "fail-sync:2:twice", "power-sync:1:", "counts"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(rb_io_fault_parse(bad[i], &p), -EINVAL);
}

static void test_count_and_fail(void **state)
{
    uint64_t w, s;
    int fd = new_file("count", 'a', 4 * BLK);
    uint8_t buf[BLK] = {0};

    (void)state;
    assert_int_equal(set_plan("count"), 0);
    put(fd, 'b', 0);
    assert_int_equal(rb_io_zero(fd, BLK, BLK, false), 0);
    assert_int_equal(rb_io_punch(fd, 2 * BLK, BLK), 0);
    assert_int_equal(rb_io_sync(fd), 0);
    assert_int_equal(rb_io_truncate(fd, 4 * BLK), 0);
    rb_io_fault_counts(&w, &s, NULL);
    assert_int_equal(w, 4);
    assert_int_equal(s, 1);

    assert_int_equal(set_plan("fail-write:2"), 0);
    assert_int_equal(rb_io_pwrite(fd, buf, BLK, 0), 0);
    assert_int_equal(rb_io_pwrite(fd, buf, BLK, 0), -EIO);
    assert_int_equal(rb_io_zero(fd, 0, BLK, true), -EIO);
    assert_int_equal(rb_io_sync(fd), 0);

    assert_int_equal(set_plan("fail-write:2:once"), 0);
    assert_int_equal(rb_io_pwrite(fd, buf, BLK, 0), 0);
    assert_int_equal(rb_io_punch(fd, 0, BLK), -EIO);
    assert_int_equal(rb_io_pwrite(fd, buf, BLK, 0), 0);

    assert_int_equal(set_plan("fail-sync:1"), 0);
    assert_int_equal(rb_io_sync(fd), -EIO);
    assert_int_equal(rb_io_sync(fd), -EIO);
    assert_int_equal(rb_io_pwrite(fd, buf, BLK, 0), 0);

    assert_int_equal(rb_io_fault_set(NULL), 0);
    rb_io_fault_counts(&w, &s, NULL);
    assert_int_equal(w + s, 0);
    assert_int_equal(rb_io_sync(fd), 0);
    close(fd);
}

/* synced: A A A A; then B at 0, sync, C at 1, D at 4 (grows), zero 2, punch 3 */
static void workload(int fd)
{
    put(fd, 'B', 0);              /* write 1 */
    if (rb_io_sync(fd) < 0)       /* sync 1 */
        _exit(3);
    put(fd, 'C', 1);              /* write 2 */
    put(fd, 'D', 4);              /* write 3 */
    if (rb_io_zero(fd, 2 * BLK, BLK, false) < 0) /* write 4 */
        _exit(3);
    if (rb_io_punch(fd, 3 * BLK, BLK) < 0)        /* write 5 */
        _exit(3);
    put(fd, 'E', 1);              /* write 6 */
    if (rb_io_sync(fd) < 0)       /* sync 2 */
        _exit(3);
    put(fd, 'F', 0);              /* write 7 */
}

static void test_power(void **state)
{
    (void)state;
    for (unsigned n = 1; n <= 7; n++) {
        char spec[32];
        int fd = new_file("power", 'A', 4 * BLK);
        snprintf(spec, sizeof(spec), "power-write:%u", n);
        assert_int_equal(in_child(spec, workload, fd), RB_IO_FAULT_EXIT);
        if (n == 1)
            expect_blocks(fd, (const uint8_t *)"AAAA", 4);
        else if (n < 7)
            expect_blocks(fd, (const uint8_t *)"BAAA", 4);
        else
            expect_blocks(fd, (const uint8_t[]){'B', 'E', 0, 0, 'D'}, 5);
        close(fd);
    }
    for (unsigned n = 1; n <= 3; n++) {
        char spec[32];
        int fd = new_file("power", 'A', 4 * BLK);
        snprintf(spec, sizeof(spec), "power-sync:%u", n);
        assert_int_equal(in_child(spec, workload, fd), n <= 2 ? RB_IO_FAULT_EXIT : 0);
        if (n == 1)
            expect_blocks(fd, (const uint8_t *)"AAAA", 4);
        else if (n == 2)
            expect_blocks(fd, (const uint8_t *)"BAAA", 4);
        else
            expect_blocks(fd, (const uint8_t[]){'F', 'E', 0, 0, 'D'}, 5);
        close(fd);
    }
}

/* With a seed, each unsynced write is whole: old or new, never torn. */
static void test_power_seed(void **state)
{
    unsigned seen_new = 0, seen_old = 0;

    (void)state;
    for (unsigned seed = 1; seed <= 16; seed++) {
        char spec[32];
        uint8_t buf[BLK];
        struct stat st;
        int fd = new_file("seed", 'A', 4 * BLK);
        snprintf(spec, sizeof(spec), "power-sync:2:%u", seed);
        assert_int_equal(in_child(spec, workload, fd), RB_IO_FAULT_EXIT);
        assert_int_equal(fstat(fd, &st), 0);
        assert_true(st.st_size == 4 * BLK || st.st_size == 5 * BLK);
        assert_int_equal(pread(fd, buf, BLK, 0), BLK);
        assert_true(buf[0] == 'B' && buf[BLK - 1] == 'B');
        assert_int_equal(pread(fd, buf, BLK, BLK), BLK);
        assert_true(buf[0] == 'A' || buf[0] == 'C' || buf[0] == 'E');
        assert_int_equal(buf[0], buf[BLK - 1]);
        seen_new += buf[0] != 'A';
        seen_old += buf[0] == 'A';
        assert_int_equal(pread(fd, buf, BLK, 2 * BLK), BLK);
        assert_true(buf[0] == 'A' || buf[0] == 0);
        assert_int_equal(buf[0], buf[BLK - 1]);
        close(fd);
    }
    assert_true(seen_new > 0 && seen_old > 0);
}

/* The log follows the file, not the fd number: a write through a closed
 * fd is still undone, and a sync through another fd makes it durable. */
static void two_fds(int fd)
{
    char path[256];
    int fd2, fd3;

    snprintf(path, sizeof(path), "%s/power", dir);
    fd2 = open(path, O_RDWR);
    put(fd2, 'X', 0);            /* write 1 */
    close(fd2);
    fd3 = open(path, O_RDWR);
    if (rb_io_sync(fd3) < 0)     /* sync 1: X durable */
        _exit(3);
    put(fd3, 'Y', 1);            /* write 2 */
    close(fd3);
    put(fd, 'Z', 2);             /* write 3 */
    put(fd, 'W', 3);             /* write 4: power */
}

static void test_power_fds(void **state)
{
    int fd = new_file("power", 'A', 4 * BLK);

    (void)state;
    assert_int_equal(in_child("power-write:4", two_fds, fd), RB_IO_FAULT_EXIT);
    expect_blocks(fd, (const uint8_t *)"XAAA", 4);
    close(fd);
}

/* Write-behind starts writeback in steps of RB_WRITEBEHIND_BYTES, only
 * forward, and leaves the bytes alone. */
static void test_writebehind(void **state)
{
    const size_t mib = 1u << 20;
    int fd = new_file("wb", 0, 0);
    uint8_t *buf = malloc(mib), *back = malloc(mib);
    uint64_t started = 0;

    (void)state;
    assert_non_null(buf);
    assert_non_null(back);
    for (uint64_t i = 0; i < 40; i++) {
        memset(buf, (int)('a' + i % 26), mib);
        assert_int_equal(rb_io_pwrite(fd, buf, mib, i * mib), 0);
        rb_io_writebehind(fd, &started, (i + 1) * mib);
        /* moved at 16 and 32 MiB, nowhere else */
        assert_int_equal(started, (i + 1) / 16 * 16 * mib);
    }
    rb_io_writebehind(fd, &started, 8 * mib); /* behind: nothing */
    assert_int_equal(started, 32 * mib);
    assert_int_equal(rb_io_sync(fd), 0);
    for (uint64_t i = 0; i < 40; i++) {
        memset(buf, (int)('a' + i % 26), mib);
        assert_int_equal(rb_io_pread(fd, back, mib, i * mib), 0);
        assert_memory_equal(back, buf, mib);
    }
    free(buf);
    free(back);
    close(fd);
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[300];

    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_count_and_fail),
        cmocka_unit_test(test_power),
        cmocka_unit_test(test_power_seed),
        cmocka_unit_test(test_power_fds),
        cmocka_unit_test(test_writebehind),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
