/* SPDX-License-Identifier: MIT */
/*
 * test_exports.c - the table of exports (server/core/export.h) over raw
 * images in a scratch folder: names and the default export, lookups,
 * removal while a user holds an export (safe: it waits; hard: the user's
 * connection is shut down for reading first), and that a removed export's
 * image is closed (its lock released) when the removal returns.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/conn.h"
#include "core/export.h"

static char dir[] = "/tmp/rb-exports-XXXXXX";
static char img_a[64], img_b[64];

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(dir))
        return -1;
    snprintf(img_a, sizeof(img_a), "%s/a.raw", dir);
    snprintf(img_b, sizeof(img_b), "%s/b.raw", dir);
    for (int i = 0; i < 2; i++) {
        int fd = open(i ? img_b : img_a, O_CREAT | O_RDWR | O_TRUNC, 0600);
        if (fd < 0 || ftruncate(fd, 1 << 20) < 0)
            return -1;
        close(fd);
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(img_a);
    unlink(img_b);
    rmdir(dir);
    return 0;
}

static struct rb_export_config cfg(const char *name, const char *path)
{
    return (struct rb_export_config){.path = path, .format = "raw", .name = name};
}

static bool listed(struct rb_exports *t, const char *name)
{
    struct rb_export_name *v;
    long n = rb_exports_names(t, &v);
    bool found = false;

    assert_true(n >= 0);
    for (long i = 0; i < n; i++)
        found |= strcmp(v[i].name, name) == 0;
    rb_exports_names_free(v, n);
    return found;
}

static void test_names_and_lookups(void **state)
{
    struct rb_exports *t = rb_exports_new();
    struct rb_export_config a = cfg("", img_a), b = cfg("b", img_b), dup = cfg("b", img_a);
    struct rb_error err = {0};
    struct rb_export_name *v;
    struct rb_export *e;
    long n;

    (void)state;
    assert_non_null(rb_exports_add(t, &a, true, &err));
    assert_non_null(rb_exports_add(t, &b, false, &err));
    /* a taken name, and an empty one that is not the default */
    assert_null(rb_exports_add(t, &dup, false, &err));
    assert_int_equal(err.code, EEXIST);
    memset(&err, 0, sizeof(err));
    struct rb_export_config anon = cfg("", img_b);
    assert_null(rb_exports_add(t, &anon, false, &err));
    assert_int_equal(err.code, EINVAL);

    n = rb_exports_names(t, &v);
    assert_int_equal(n, 2);
    assert_string_equal(v[0].name, "");
    assert_true(v[0].is_default);
    assert_string_equal(v[1].name, "b");
    assert_false(v[1].is_default);
    rb_exports_names_free(v, n);

    e = rb_exports_get(t, "", 0, NULL);
    assert_non_null(e);
    assert_string_equal(rb_export_path(e), img_a);
    rb_exports_put(t, e, NULL);
    e = rb_exports_get(t, "b", 1, NULL);
    assert_non_null(e);
    assert_string_equal(rb_export_path(e), img_b);
    rb_exports_put(t, e, NULL);
    assert_null(rb_exports_get(t, "bb", 2, NULL));
    assert_null(rb_exports_get(t, "zz", 2, NULL));
    assert_int_equal(rb_exports_remove(t, "zz", false, NULL), -ENOENT);
    assert_int_equal(rb_exports_free(t, NULL), 0);
}

struct remover {
    struct rb_exports *t;
    const char *name;
    bool hard;
    int ret;
    atomic_bool done;
};

static void *remove_thread(void *arg)
{
    struct remover *r = arg;

    r->ret = rb_exports_remove(r->t, r->name, r->hard, NULL);
    atomic_store(&r->done, true);
    return NULL;
}

/* Safe removal waits for the user; the export is out of the table at once. */
static void test_safe_removal_waits(void **state)
{
    struct rb_exports *t = rb_exports_new();
    struct rb_export_config b = cfg("b", img_b);
    struct remover r = {.t = t, .name = "b"};
    struct rb_export *e;
    pthread_t th;
    char byte = 7;

    (void)state;
    assert_non_null(rb_exports_add(t, &b, false, NULL));
    e = rb_exports_get(t, "b", 1, NULL);
    assert_non_null(e);
    assert_int_equal(pthread_create(&th, NULL, remove_thread, &r), 0);
    while (listed(t, "b"))
        ; /* the remover takes it out first */
    assert_null(rb_exports_get(t, "b", 1, NULL));
    /* the user still works on it, and its image is still open */
    assert_int_equal(rb_export_write(e, RB_PROTO_NONE, &byte, 0, 1, 0, NULL), 0);
    assert_int_equal(rb_export_flush(e, RB_PROTO_NONE, NULL), 0);
    assert_false(atomic_load(&r.done));
    rb_exports_put(t, e, NULL);
    pthread_join(th, NULL);
    assert_int_equal(r.ret, 0);
    /* closed and unlocked: the name may be served again */
    assert_non_null(rb_exports_add(t, &b, false, NULL));
    assert_int_equal(rb_exports_free(t, NULL), 0);
}

/* Hard removal shuts the user's connection down for reading first. */
static void test_hard_removal_shuts_connections(void **state)
{
    struct rb_exports *t = rb_exports_new();
    struct rb_export_config b = cfg("b", img_b);
    struct remover r = {.t = t, .name = "b", .hard = true};
    struct rb_conn conn = {0};
    struct rb_export *e;
    pthread_t th;
    int sv[2];
    char c;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    conn.fd = sv[0];
    assert_non_null(rb_exports_add(t, &b, false, NULL));
    e = rb_exports_get(t, "b", 1, &conn);
    assert_non_null(e);
    assert_int_equal(pthread_create(&th, NULL, remove_thread, &r), 0);
    /* the read side ends: as a reader waiting for the next request sees */
    assert_int_equal(recv(sv[0], &c, 1, 0), 0);
    assert_false(atomic_load(&r.done));
    rb_exports_put(t, e, &conn);
    pthread_join(th, NULL);
    assert_int_equal(r.ret, 0);
    close(sv[0]);
    close(sv[1]);
    assert_int_equal(rb_exports_free(t, NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_lookups),
        cmocka_unit_test(test_safe_removal_waits),
        cmocka_unit_test(test_hard_removal_shuts_connections),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
