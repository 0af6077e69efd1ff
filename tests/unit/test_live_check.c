/* SPDX-License-Identifier: MIT */
/*
 * The consistency check on an image that is being written.  A write
 * allocates a cluster under the image's lock, drops the lock to write the
 * data, and links the cluster from its L2 entry afterwards; a check in
 * between must count that cluster as in flight, not leaked, and must size
 * everything it walks from the state it walks (refcount table growth).
 *
 *  - a paused allocation (the write's first step, done here by hand):
 *    clean check, one cluster in flight; an abandoned one is given back;
 *  - a data write that fails: the cluster goes back, nothing in flight;
 *  - a writer thread (512-byte clusters, so the refcount table grows
 *    several times; plain, zero and compressed writes) and a checker
 *    thread: every check clean.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>

#include <cmocka.h>

#include "qcow2_file.h"

#include "qcow2/qcow2.h"
#include "qcow2/qcow2w.h"
#include "rblock/io.h"
#include "rblock/qcow2-create.h"
#include "rblock/qcow2.h"

static char dir[] = "/tmp/rb-live-XXXXXX";

static int setup_dir(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    char cmd[256];

    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static struct rb_image *make_and_open(const char *name, unsigned cluster, uint64_t size)
{
    struct rb_qcow2_create_opts o;
    struct rb_open_opts oo = {.format = "qcow2", .write = true,
                              .unsafe_no_barriers = true};
    struct rb_error err = {0};
    struct rb_image *img;
    char path[512];

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    rb_qcow2_create_opts_init(&o);
    o.cluster_bytes = cluster;
    o.size = size;
    if (create_qcow2(path, &o, &err) < 0)
        fail_msg("create: %s", err.msg);
    img = rb_image_open(path, &oo, &err);
    if (!img)
        fail_msg("open: %s", err.msg);
    return img;
}

/* Check @img; fail with its first problem unless it has exactly @leaks
 * leaks (at @leak_off when one), no corruption, no check error. */
static void want_check(struct rb_image *img, uint64_t leaks, uint64_t leak_off,
                         uint64_t in_flight)
{
    struct rb_qcow2_check r;
    struct rb_error err = {0};

    if (rb_qcow2_check(img, &r, &err) < 0)
        fail_msg("check: %s", err.msg);
    if (r.corruptions || r.check_errors || r.leaks != leaks)
        fail_msg("check: %llu corruptions, %llu errors, %llu leaks (want %llu): %s",
                 (unsigned long long)r.corruptions, (unsigned long long)r.check_errors,
                 (unsigned long long)r.leaks, (unsigned long long)leaks,
                 r.nb_problems ? r.problems[0].msg : "");
    if (leaks == 1)
        assert_int_equal(r.problems[0].host_off, leak_off);
    assert_int_equal(r.in_flight_clusters, in_flight);
    rb_qcow2_check_free(&r);
}

static uint64_t refcount(struct qcow2_state *s, uint64_t host_off)
{
    uint64_t rc = 99;

    pthread_mutex_lock(&s->lock);
    assert_int_equal(qcow2_refcount_get(s, host_off / s->cluster_bytes, &rc, NULL), 0);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static void test_paused_allocation(void **state)
{
    struct rb_image *img = make_and_open("paused.qcow2", 4096, 1 << 20);
    struct qcow2_state *s = qcow2_state_of(img);
    struct qcow2_inflight f, g;
    struct rb_error err = {0};
    uint8_t buf[4096];

    (void)state;
    memset(buf, 0x5a, sizeof(buf));
    assert_int_equal(rb_image_write(img, buf, 0, sizeof(buf), 0, &err), 0);
    want_check(img, 0, 0, 0);

    /* the first step of a write: allocated, registered, lock dropped */
    pthread_mutex_lock(&s->lock);
    assert_int_equal(qcow2_alloc_inflight(s, &f, &err), 0);
    assert_int_equal(qcow2_alloc_inflight(s, &g, &err), 0);
    pthread_mutex_unlock(&s->lock);
    assert_int_equal(refcount(s, f.host_off), 1);
    want_check(img, 0, 0, 2);

    /* given up: back to refcount 0, nothing in flight, still clean */
    pthread_mutex_lock(&s->lock);
    qcow2_inflight_end(s, &f, false);
    pthread_mutex_unlock(&s->lock);
    assert_int_equal(refcount(s, f.host_off), 0);
    want_check(img, 0, 0, 1);

    /* the check does see leaks: end @g as if linked without linking it */
    pthread_mutex_lock(&s->lock);
    qcow2_inflight_end(s, &g, true);
    pthread_mutex_unlock(&s->lock);
    assert_null(s->inflight);
    want_check(img, 1, g.host_off, 0);
    rb_image_close(img);
}

static void test_failed_data_write(void **state)
{
    struct rb_image *img = make_and_open("failed.qcow2", 65536, 1 << 20);
    struct qcow2_state *s = qcow2_state_of(img);
    struct rb_io_fault_plan plan = {.mode = RB_IO_FAULT_FAIL_WRITE, .n = 1, .once = true};
    struct rb_error err = {0};
    uint8_t *buf = malloc(65536);
    uint64_t hint;

    (void)state;
    assert_non_null(buf);
    memset(buf, 0x33, 65536);
    /* the L2 table exists: the next write's first I/O is its data */
    assert_int_equal(rb_image_write(img, buf, 0, 65536, 0, &err), 0);
    hint = s->free_cluster_hint;
    assert_int_equal(rb_io_fault_set(&plan), 0);
    assert_true(rb_image_write(img, buf, 65536, 65536, 0, &err) < 0);
    assert_int_equal(rb_io_fault_set(NULL), 0);
    assert_null(s->inflight);
    assert_int_equal(refcount(s, hint * 65536), 0); /* given back */
    want_check(img, 0, 0, 0);
    /* and reused by the next write */
    assert_int_equal(rb_image_write(img, buf, 65536, 65536, 0, &err), 0);
    assert_int_equal(refcount(s, hint * 65536), 1);
    want_check(img, 0, 0, 0);
    free(buf);
    rb_image_close(img);
}

struct race {
    struct rb_image *img;
    int stop;
    unsigned long checks, in_flight;
    char failure[1024];
};

static void *checker(void *arg)
{
    struct race *r = arg;

    while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
        struct rb_qcow2_check res;
        struct rb_error err = {0};

        if (rb_qcow2_check(r->img, &res, &err) < 0) {
            snprintf(r->failure, sizeof(r->failure), "check: %s", err.msg);
            break;
        }
        r->checks++;
        r->in_flight += res.in_flight_clusters != 0;
        if (res.leaks || res.corruptions || res.check_errors) {
            snprintf(r->failure, sizeof(r->failure), "live check %lu: %llu leaks, %llu "
                     "corruptions, %llu errors: %s", r->checks,
                     (unsigned long long)res.leaks, (unsigned long long)res.corruptions,
                     (unsigned long long)res.check_errors,
                     res.nb_problems ? res.problems[0].msg : "");
            rb_qcow2_check_free(&res);
            break;
        }
        rb_qcow2_check_free(&res);
    }
    return NULL;
}

static void test_check_while_writing(void **state)
{
    /* 512-byte clusters: the first refcount table covers 8 MiB of file;
     * 12 MiB written in order outgrow it (twice), random rewrites and
     * zeroes in between */
    const uint64_t size = 16u << 20, chunk = 65536;
    struct race r = {.img = make_and_open("race.qcow2", 512, size)};
    struct qcow2_state *s = qcow2_state_of(r.img);
    uint32_t table0 = s->h.refcount_table_clusters;
    uint8_t *buf = malloc(chunk);
    uint64_t x = 0x2545f4914f6cdd1dull;
    struct rb_error err = {0};
    pthread_t th;

    (void)state;
    assert_non_null(buf);
    assert_int_equal(pthread_create(&th, NULL, checker, &r), 0);
    for (uint64_t i = 0; i < 192 && !r.failure[0]; i++) {
        memset(buf, (int)(i + 1), chunk);
        if (rb_image_write(r.img, buf, i * chunk, chunk, 0, &err) < 0)
            fail_msg("write: %s", err.msg);
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t off = x % (i * chunk + chunk), n = x >> 40 & 8191;
        if (off + n > size)
            n = size - off;
        if (x & 1)
            assert_int_equal(rb_image_write(r.img, buf, off, n, 0, &err), 0);
        else
            assert_int_equal(rb_image_write_zeroes(r.img, off, n, 0, &err), 0);
        /* a compressed cluster where nothing else writes (past 12 MiB) */
        if (r.img->ops->write_compressed(r.img, buf, size - (i + 1) * 512, 512, &err) < 0)
            fail_msg("compressed write: %s", err.msg);
    }
    __atomic_store_n(&r.stop, 1, __ATOMIC_RELEASE);
    assert_int_equal(pthread_join(th, NULL), 0);
    if (r.failure[0])
        fail_msg("%s", r.failure);
    assert_true(r.checks > 0);
    assert_true(s->h.refcount_table_clusters > table0);
    {
        struct rb_qcow2_check res;
        assert_int_equal(rb_qcow2_check(r.img, &res, &err), 0);
        assert_int_equal(res.compressed_clusters, 192); /* the path was taken */
        rb_qcow2_check_free(&res);
    }
    print_message("%lu live checks, %lu saw clusters in flight\n", r.checks, r.in_flight);
    want_check(r.img, 0, 0, 0);
    free(buf);
    rb_image_close(r.img);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paused_allocation),
        cmocka_unit_test(test_failed_data_write),
        cmocka_unit_test(test_check_while_writing),
    };

    return cmocka_run_group_tests(tests, setup_dir, remove_dir);
}
