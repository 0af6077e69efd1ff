/* SPDX-License-Identifier: MIT */
/*
 * test_rbd_name.c - rbd: names (lib/rbd/name.c): pool, namespace, image,
 * snapshot, options, quoting, and what is refused.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "rblock/rbd.h"

static void parses(const char *name, const char *pool, const char *ns, const char *image,
                   const char *snap)
{
    struct rb_rbd_name n;
    struct rb_error err = {0};

    assert_int_equal(rb_rbd_parse_name(name, &n, &err), 0);
    assert_string_equal(n.pool, pool);
    assert_string_equal(n.ns, ns);
    assert_string_equal(n.image, image);
    assert_string_equal(n.snap, snap);
}

static void refused(const char *name, const char *word)
{
    struct rb_rbd_name n;
    struct rb_error err = {0};

    assert_int_equal(rb_rbd_parse_name(name, &n, &err), -EINVAL);
    assert_non_null(strstr(err.msg, word));
}

static void test_forms(void **state)
{
    parses("rbd:p/i", "p", "", "i", "");
    parses("rbd:p/i@s", "p", "", "i", "s");
    parses("rbd:p/n/i", "p", "n", "i", "");
    parses("rbd:p/n/i@s", "p", "n", "i", "s");
    parses("rbd:p/a\\:b", "p", "", "a:b", ""); /* a quoted colon */
    parses("rbd:p/a\\@b@s", "p", "", "a@b", "s");
}

static void test_options(void **state)
{
    struct rb_rbd_name n;

    assert_int_equal(rb_rbd_parse_name("rbd:p/i@s:conf=/x/c.conf:id=bob:timeout=5", &n, NULL),
                     0);
    assert_string_equal(n.conf, "/x/c.conf");
    assert_string_equal(n.id, "bob");
    assert_int_equal(n.timeout_sec, 5);
    assert_true(n.has_options);
    assert_int_equal(rb_rbd_parse_name("rbd:p/i", &n, NULL), 0);
    assert_false(n.has_options);
}

static void test_refused(void **state)
{
    refused("rbd:p", "no image name");
    refused("rbd:/i", "empty");
    refused("rbd:p//i", "empty");
    refused("rbd:p/i@", "empty snapshot");
    refused("rbd:a/b/c/d", "too many");
    refused("rbd:p/i:mon_host=1.2.3.4", "unknown option 'mon_host'");
    refused("rbd:p/i:conf", "needs a value");
    refused("rbd:p/i:timeout=0", "timeout");
    refused("rbd:p/i:timeout=9999", "timeout");
    refused("file.img", "not an rbd: name");
}

static void test_plain_and_same(void **state)
{
    struct rb_rbd_name n;
    char buf[1100];

    assert_int_equal(rb_rbd_parse_name("rbd:p/n/i@s:id=x", &n, NULL), 0);
    assert_string_equal(rb_rbd_plain_name(&n, buf, sizeof(buf)), "rbd:p/n/i@s");
    assert_true(rb_rbd_same_image("rbd:p/i@a", "rbd:p/i:id=x"));
    assert_false(rb_rbd_same_image("rbd:p/i", "rbd:p/n/i"));
    assert_false(rb_rbd_same_image("rbd:p/i", "rbd:q/i"));
    assert_false(rb_rbd_same_image("rbd:p/i", "/dev/null"));
    assert_true(rb_rbd_is_name("rbd:x"));
    assert_false(rb_rbd_is_name("./rbd:x"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forms),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_plain_and_same),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
