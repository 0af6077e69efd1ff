/* SPDX-License-Identifier: MIT */
/*
 * qcow2 reads with a tiny metadata cache (every lookup evicts) from several
 * threads at once, compared with qemu-img's raw conversion; block status
 * with a tiny cache equals block status with the default one.  Images are
 * made with qemu-img/qemu-io; the test fails where they are missing.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "rblock/image.h"
#include "rblock/io.h"

static char dir[64];

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    return system(cmd);
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long n;

    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

struct job {
    struct rb_image *img;
    const uint8_t *ref;
    size_t len;
    unsigned seed;
    int bad;
};

static void *reader(void *arg)
{
    struct job *j = arg;
    uint8_t *buf = malloc(256 * 1024);

    for (int i = 0; i < 300 && !j->bad; i++) {
        size_t off = (size_t)rand_r(&j->seed) % j->len;
        size_t n = 1 + (size_t)rand_r(&j->seed) % (256 * 1024);
        struct rb_error err = {0};

        if (n > j->len - off)
            n = j->len - off;
        if (rb_image_read(j->img, buf, off, n, &err) < 0) {
            fprintf(stderr, "read failed: %s\n", err.msg);
            j->bad = 1;
        } else if (memcmp(buf, j->ref + off, n) != 0) {
            fprintf(stderr, "data differs at %zu+%zu\n", off, n);
            j->bad = 1;
        }
    }
    free(buf);
    return NULL;
}

static void check_image(const char *name)
{
    char path[128], raw[128];
    struct rb_open_opts small = {.cache_bytes = 1}; /* two slots per cache */
    struct rb_error err = {0};
    struct rb_image *img, *big;
    pthread_t th[4];
    struct job jobs[4];
    uint8_t *ref;
    size_t len;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    snprintf(raw, sizeof(raw), "%s/%s.raw", dir, name);
    assert_int_equal(sh("qemu-img convert -O raw %s %s", path, raw), 0);
    ref = slurp(raw, &len);
    img = rb_image_open(path, &small, &err);
    if (!img)
        fail_msg("%s", err.msg);
    assert_int_equal(img->size, len);
    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct job){.img = img, .ref = ref, .len = len, .seed = 17u + (unsigned)i};
        assert_int_equal(pthread_create(&th[i], NULL, reader, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(jobs[i].bad, 0);
    }
    /* block status does not depend on the cache size */
    big = rb_image_open(path, NULL, &err);
    assert_non_null(big);
    for (uint64_t off = 0; off < img->size;) {
        struct rb_extent a, b;
        assert_int_equal(rb_image_block_status(img, off, img->size - off, &a, &err), 0);
        assert_int_equal(rb_image_block_status(big, off, img->size - off, &b, &err), 0);
        assert_int_equal(a.length, b.length);
        assert_int_equal(a.flags, b.flags);
        assert_int_equal(a.depth, b.depth);
        assert_int_equal(a.host_off, b.host_off);
        off += a.length;
    }
    rb_image_close(big);
    rb_image_close(img);
    free(ref);
}

static const char *const writes =
    "-c 'write -P 0x11 0 300k' -c 'write -P 0x22 1M 8k' -c 'write -z 2M 64k' "
    "-c 'write -P 0x33 3M 1M' -c 'discard 3200k 64k' -c 'write -P 0x44 6M 5k' "
    "-c 'write -P 0x55 8M 3M' -c 'write -P 0x66 15M 1M'";

static void test_small_clusters(void **state)
{
    assert_int_equal(sh("qemu-img create -q -f qcow2 -o cluster_size=4k %s/a.qcow2 16M && "
                        "qemu-io %s %s/a.qcow2 >/dev/null", dir, writes, dir), 0);
    check_image("a.qcow2");
}

static void test_extended_l2(void **state)
{
    assert_int_equal(sh("qemu-img create -q -f qcow2 -o cluster_size=16k,extended_l2=on "
                        "%s/e.qcow2 16M && qemu-io %s %s/e.qcow2 >/dev/null", dir, writes,
                        dir), 0);
    check_image("e.qcow2");
}

static void test_compressed_chain(void **state)
{
    assert_int_equal(sh("qemu-img create -q -f qcow2 -o cluster_size=4k %s/b.qcow2 16M && "
                        "qemu-io %s %s/b.qcow2 >/dev/null && "
                        "qemu-img convert -c -O qcow2 -o cluster_size=8k %s/b.qcow2 "
                        "%s/c.qcow2 && qemu-img create -q -f qcow2 -b c.qcow2 -F qcow2 "
                        "%s/top.qcow2 20M && qemu-io -c 'write -P 0x77 2M 2M' "
                        "-c 'write -z 8M 64k' %s/top.qcow2 >/dev/null",
                        dir, writes, dir, dir, dir, dir, dir), 0);
    check_image("top.qcow2");
}

static int setup(void **state)
{
    /* qemu-img and qemu-io are the oracle (scripts/install-deps installs
     * them): without them the test fails, it is not skipped */
    if (system("qemu-img --version >/dev/null 2>&1 && qemu-io --version >/dev/null 2>&1")) {
        fprintf(stderr, "test_qcow2_read: qemu-img or qemu-io is missing\n");
        return -1;
    }
    strcpy(dir, "/tmp/rb-qcow2-read-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    if (dir[0])
        sh("rm -rf %s", dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_clusters),
        cmocka_unit_test(test_extended_l2),
        cmocka_unit_test(test_compressed_chain),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
