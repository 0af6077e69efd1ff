/* SPDX-License-Identifier: MIT */
/*
 * test_qcow2_race: readers racing a writer that discards a cluster and at
 * once reuses it for another guest offset.  A read of guest cluster A may
 * return A's data or zeros (it raced the discard), never the data the
 * writer put at guest cluster B: that would mean the read mapped A's host
 * cluster, the writer freed and reused it, and the read then fetched B's
 * bytes.  qcow2_state.data_rw exists to prevent exactly this.
 */
#include <errno.h>
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

#include "rblock/image.h"
#include "rblock/qcow2-create.h"

#define CLUSTER 65536u
#define ROUNDS 20000
#define READERS 2

struct race {
    struct rb_image *img;
    volatile int stop;
    volatile int bad; /* reads that returned B's pattern at A */
    unsigned long reads;
};


static void *reader(void *arg)
{
    struct race *r = arg;
    uint8_t *buf = malloc(CLUSTER);

    while (!r->stop && buf) {
        struct rb_error err = {0};
        if (rb_image_read(r->img, buf, 0, CLUSTER, &err) < 0)
            break;
        for (size_t i = 0; i < CLUSTER; i += 512) {
            if (buf[i] == 0xbb)
                r->bad++;
        }
        __atomic_add_fetch(&r->reads, 1, __ATOMIC_RELAXED);
    }
    free(buf);
    return NULL;
}

static void test_discard_reuse_race(void **state)
{
    char dir[] = "/tmp/rblock-race.XXXXXX";
    char path[64];
    struct rb_qcow2_create_opts o;
    struct rb_open_opts oo = {.format = "qcow2", .write = true, .unsafe_no_barriers = true};
    struct rb_error err = {0};
    struct race r = {0};
    pthread_t th[READERS];
    uint8_t *a = malloc(CLUSTER), *b = malloc(CLUSTER);

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/r.qcow2", dir);
    rb_qcow2_create_opts_init(&o);
    o.size = 16 * CLUSTER;
    assert_int_equal(create_qcow2(path, &o, &err), 0);
    r.img = rb_image_open(path, &oo, &err);
    assert_non_null(r.img);
    memset(a, 0xaa, CLUSTER);
    memset(b, 0xbb, CLUSTER);

    for (int i = 0; i < READERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader, &r), 0);
    for (int i = 0; i < ROUNDS; i++) {
        /* A gets a cluster; discarding it frees that host cluster, which
         * the write of B (the lowest free cluster) takes over */
        assert_int_equal(rb_image_write(r.img, a, 0, CLUSTER, 0, &err), 0);
        assert_int_equal(rb_image_trim(r.img, 0, CLUSTER, &err), 0);
        assert_int_equal(rb_image_write(r.img, b, 8 * CLUSTER, CLUSTER, 0, &err), 0);
        assert_int_equal(rb_image_trim(r.img, 8 * CLUSTER, CLUSTER, &err), 0);
    }
    r.stop = 1;
    for (int i = 0; i < READERS; i++)
        pthread_join(th[i], NULL);
    print_message("%lu reads raced %d rounds of discard and reuse\n", r.reads, ROUNDS);
    assert_int_equal(r.bad, 0);
    assert_true(r.reads > 0);

    assert_int_equal(rb_image_flush(r.img, &err), 0);
    rb_image_close(r.img);
    unlink(path);
    rmdir(dir);
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_discard_reuse_race),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
