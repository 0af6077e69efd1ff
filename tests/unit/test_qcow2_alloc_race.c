/* SPDX-License-Identifier: MIT */
/*
 * test_qcow2_alloc_race: guest writes that allocate run side by side.
 *
 *  - two (and more) writes allocating the same guest cluster at once, each
 *    into its own 4 KiB of it: the cluster is allocated once (no leak),
 *    and every write's bytes read back (none linked over another);
 *  - reads racing the allocation of their cluster, into host clusters
 *    that held other data before (freed by a discard, then reused): a read
 *    sees the cluster as it was (zeros) or with the new bytes, never the
 *    old data of the reused host cluster (zeroed before it is linked, and
 *    linked only after its data is written).  The clusters are freed by
 *    zeroing with unmap, which leaves their old bytes on disk.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#include <cmocka.h>

#include "qcow2_file.h"

#include "rblock/image.h"
#include "rblock/qcow2-create.h"
#include "rblock/qcow2.h"

#define CLUSTER 65536u
#define SLOT 4096u
#define WRITERS 4
#define ROUNDS 300

static char dir[] = "/tmp/rb-alloc-race-XXXXXX";

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

static struct rb_image *make_and_open(const char *name, uint64_t size, bool extended)
{
    struct rb_qcow2_create_opts o;
    struct rb_open_opts oo = {.format = "qcow2", .write = true, .unsafe_no_barriers = true};
    struct rb_error err = {0};
    struct rb_image *img;
    char path[512];

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    rb_qcow2_create_opts_init(&o);
    o.cluster_bytes = CLUSTER;
    o.size = size;
    o.extended_l2 = extended;
    if (create_qcow2(path, &o, &err) < 0)
        fail_msg("create: %s", err.msg);
    img = rb_image_open(path, &oo, &err);
    if (!img)
        fail_msg("open: %s", err.msg);
    return img;
}

static void want_clean(struct rb_image *img)
{
    struct rb_qcow2_check r;
    struct rb_error err = {0};

    if (rb_qcow2_check(img, &r, &err) < 0)
        fail_msg("check: %s", err.msg);
    if (r.corruptions || r.check_errors || r.leaks)
        fail_msg("check: %llu corruptions, %llu errors, %llu leaks: %s",
                 (unsigned long long)r.corruptions, (unsigned long long)r.check_errors,
                 (unsigned long long)r.leaks, r.nb_problems ? r.problems[0].msg : "");
    rb_qcow2_check_free(&r);
}

/* Free guest clusters [@first, @first + @n) with their bytes left in place
 * on disk: zeroing with unmap drops the clusters (a discard would punch
 * them, and they would read as zeros anyway). */
static void free_stale(struct rb_image *img, unsigned first, unsigned n)
{
    struct rb_error err = {0};

    assert_int_equal(rb_image_write_zeroes(img, (uint64_t)first * CLUSTER,
                                           (uint64_t)n * CLUSTER, RB_ZERO_MAY_UNMAP, &err),
                     0);
}

/* ---- same cluster ----------------------------------------------------------- */

struct same {
    struct rb_image *img;
    pthread_barrier_t go;
    int failed;
};

struct writer {
    struct same *sh;
    unsigned id;
};

static void *same_writer(void *arg)
{
    struct writer *w = arg;
    uint8_t buf[SLOT];

    memset(buf, 0x10 + w->id, sizeof(buf));
    for (unsigned k = 0; k < ROUNDS; k++) {
        struct rb_error err = {0};
        /* every writer into its own slot of guest cluster k, at once */
        pthread_barrier_wait(&w->sh->go);
        if (rb_image_write(w->sh->img, buf, (uint64_t)k * CLUSTER + w->id * 3 * SLOT,
                           SLOT, 0, &err) < 0)
            __atomic_store_n(&w->sh->failed, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static void same_cluster(bool extended)
{
    struct same sh = {0};
    struct writer w[WRITERS];
    pthread_t th[WRITERS];
    uint8_t *buf = malloc(CLUSTER);
    struct rb_error err = {0};

    assert_non_null(buf);
    sh.img = make_and_open(extended ? "same-ext.qcow2" : "same.qcow2",
                           (uint64_t)2 * ROUNDS * CLUSTER, extended);
    /* freed host clusters for the allocations to reuse: each is zeroed
     * before its data goes in, which widens the window of the race */
    memset(buf, 0xee, CLUSTER);
    for (unsigned k = ROUNDS; k < 2 * ROUNDS; k++)
        assert_int_equal(rb_image_write(sh.img, buf, (uint64_t)k * CLUSTER, CLUSTER, 0,
                                        &err), 0);
    free_stale(sh.img, ROUNDS, ROUNDS);
    pthread_barrier_init(&sh.go, NULL, WRITERS);
    for (unsigned i = 0; i < WRITERS; i++) {
        w[i] = (struct writer){&sh, i};
        assert_int_equal(pthread_create(&th[i], NULL, same_writer, &w[i]), 0);
    }
    for (unsigned i = 0; i < WRITERS; i++)
        pthread_join(th[i], NULL);
    assert_false(sh.failed);
    for (unsigned k = 0; k < ROUNDS; k++) {
        assert_int_equal(rb_image_read(sh.img, buf, (uint64_t)k * CLUSTER, CLUSTER, &err), 0);
        for (unsigned i = 0; i < WRITERS; i++) {
            const uint8_t *slot = buf + i * 3 * SLOT;
            for (unsigned b = 0; b < SLOT; b++)
                if (slot[b] != 0x10 + i)
                    fail_msg("cluster %u: writer %u's bytes lost (0x%02x at %u)", k, i,
                             slot[b], b);
            /* and zeros between the slots */
            for (unsigned b = SLOT; b < 3 * SLOT && i * 3 * SLOT + b < CLUSTER; b++)
                if (slot[b] != 0)
                    fail_msg("cluster %u: 0x%02x between slots", k, slot[b]);
        }
    }
    want_clean(sh.img);
    pthread_barrier_destroy(&sh.go);
    rb_image_close(sh.img);
    free(buf);
}

static void test_same_cluster(void **state)
{
    (void)state;
    same_cluster(false);
}

static void test_same_cluster_extended_l2(void **state)
{
    (void)state;
    same_cluster(true);
}

/* ---- a read racing the allocation of its cluster -------------------------- */

#define RCLUSTERS 64

struct racing {
    struct rb_image *img;
    int stop;
    int bad;          /* reads that saw the stale bytes */
    unsigned long reads;
};

static void *racing_reader(void *arg)
{
    struct racing *r = arg;
    uint8_t *buf = malloc(CLUSTER);
    unsigned k = 0;

    while (buf && !__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
        struct rb_error err = {0};
        if (rb_image_read(r->img, buf, (uint64_t)(k++ % RCLUSTERS) * CLUSTER, CLUSTER,
                          &err) < 0) {
            __atomic_store_n(&r->bad, 1, __ATOMIC_RELAXED);
            break;
        }
        for (unsigned b = 0; b < CLUSTER; b += 512)
            if (buf[b] == 0xee || (b >= SLOT && buf[b] != 0))
                __atomic_store_n(&r->bad, 1, __ATOMIC_RELAXED);
        r->reads++;
    }
    free(buf);
    return NULL;
}

static void test_read_races_allocation(void **state)
{
    struct racing r = {0};
    pthread_t th[2];
    uint8_t *stale = malloc(CLUSTER), data[SLOT];
    struct rb_error err = {0};
    uint8_t *buf = malloc(CLUSTER);

    (void)state;
    assert_non_null(stale);
    assert_non_null(buf);
    r.img = make_and_open("racing.qcow2", 2 * RCLUSTERS * CLUSTER, false);
    /* host clusters full of 0xee, freed: the writes below reuse them */
    memset(stale, 0xee, CLUSTER);
    for (unsigned k = RCLUSTERS; k < 2 * RCLUSTERS; k++)
        assert_int_equal(rb_image_write(r.img, stale, (uint64_t)k * CLUSTER, CLUSTER, 0,
                                        &err), 0);
    free_stale(r.img, RCLUSTERS, RCLUSTERS);
    memset(data, 0xaa, sizeof(data));
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, racing_reader, &r), 0);
    for (unsigned k = 0; k < RCLUSTERS; k++)
        assert_int_equal(rb_image_write(r.img, data, (uint64_t)k * CLUSTER, SLOT, 0, &err),
                         0);
    __atomic_store_n(&r.stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_false(r.bad);
    /* and afterwards: the new bytes, zeros around them */
    for (unsigned k = 0; k < RCLUSTERS; k++) {
        assert_int_equal(rb_image_read(r.img, buf, (uint64_t)k * CLUSTER, CLUSTER, &err), 0);
        for (unsigned b = 0; b < CLUSTER; b++)
            if (buf[b] != (b < SLOT ? 0xaa : 0))
                fail_msg("cluster %u: 0x%02x at %u", k, buf[b], b);
    }
    want_clean(r.img);
    rb_image_close(r.img);
    free(stale);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_cluster),
        cmocka_unit_test(test_same_cluster_extended_l2),
        cmocka_unit_test(test_read_races_allocation),
    };

    return cmocka_run_group_tests(tests, setup_dir, remove_dir);
}
