/* SPDX-License-Identifier: MIT */
/*
 * test_output.c - rb_output_open/close (rblock/output.h) on files made in
 * a scratch folder: what is created, emptied, kept, refused and removed.
 * The lock conflict comes from a second open file description of this
 * process (OFD locks conflict between descriptions, as between processes).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "rblock/image.h"
#include "rblock/output.h"

static char dir[] = "/tmp/rb-output-XXXXXX";

static const char *at(const char *name)
{
    static char buf[4][256];
    static int n;
    char *p = buf[n++ % 4];

    snprintf(p, sizeof(buf[0]), "%s/%s", dir, name);
    return p;
}

static void put_file(const char *name, const char *data)
{
    FILE *f = fopen(at(name), "wb");

    assert_non_null(f);
    fputs(data, f);
    fclose(f);
}

static off_t size_of(const char *name)
{
    struct stat st;

    return stat(at(name), &st) == 0 ? st.st_size : -1;
}

static void new_file_removed_on_failure_only(void **state)
{
    struct rb_error err = {0};
    struct rb_output *o;

    (void)state;
    o = rb_output_open(at("new"), NULL, 0, 0, &err);
    assert_non_null(o);
    assert_true(o->created && !o->truncated && !o->blockdev);
    assert_string_equal(rb_output_fate(o), " (partial output removed)");
    rb_output_close(o, true);
    assert_int_equal(size_of("new"), -1);
    o = rb_output_open(at("new"), NULL, 0, 0, &err);
    assert_non_null(o);
    rb_output_close(o, false);
    assert_int_equal(size_of("new"), 0);
    unlink(at("new"));
}

static void existing_file_emptied_and_kept(void **state)
{
    struct rb_error err = {0};
    struct rb_output *o;

    (void)state;
    put_file("old", "precious");
    o = rb_output_open(at("old"), NULL, 0, 0, &err);
    assert_non_null(o);
    assert_true(!o->created && o->truncated);
    assert_non_null(strstr(rb_output_fate(o), "emptied"));
    rb_output_close(o, true);
    assert_int_equal(size_of("old"), 0); /* kept: it was not ours to remove */
    put_file("old", "precious");
    o = rb_output_open(at("old"), NULL, 0, RB_OUTPUT_IN_PLACE, &err);
    assert_non_null(o);
    assert_true(!o->created && !o->truncated);
    assert_string_equal(rb_output_fate(o), "");
    rb_output_close(o, true);
    assert_int_equal(size_of("old"), 8);
    assert_null(rb_output_open(at("missing"), NULL, 0, RB_OUTPUT_IN_PLACE, &err));
    assert_int_equal(err.code, ENOENT);
    assert_int_equal(size_of("missing"), -1);
    unlink(at("old"));
}

static void locked_file_untouched(void **state)
{
    struct rb_error err = {0};
    struct rb_output *o;
    int fd;

    (void)state;
    put_file("held", "in use");
    fd = open(at("held"), O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(rb_image_lock(fd, at("held"), true, &err), 0);
    o = rb_output_open(at("held"), NULL, 0, 0, &err);
    assert_null(o);
    assert_int_equal(err.code, EAGAIN);
    assert_non_null(strstr(err.msg, "failed to get \"write\" lock"));
    assert_int_equal(size_of("held"), 6);
    close(fd);
    unlink(at("held"));
}

static void special_files_refused(void **state)
{
    struct rb_error err = {0};
    struct stat st;

    (void)state;
    assert_int_equal(mkfifo(at("fifo"), 0600), 0);
    assert_null(rb_output_open(at("fifo"), NULL, 0, RB_OUTPUT_BLOCKDEV, &err));
    assert_non_null(strstr(err.msg, "is a FIFO"));
    assert_int_equal(lstat(at("fifo"), &st), 0);
    assert_true(S_ISFIFO(st.st_mode));
    rb_error_clear(&err);
    assert_null(rb_output_open(dir, NULL, 0, 0, &err));
    assert_non_null(strstr(err.msg, "is a directory"));
    rb_error_clear(&err);
    assert_int_equal(symlink("nowhere", at("dangling")), 0);
    assert_null(rb_output_open(at("dangling"), NULL, 0, 0, &err));
    assert_int_equal(lstat(at("nowhere"), &st), -1);
    unlink(at("fifo"));
    unlink(at("dangling"));
}

static void inputs_refused(void **state)
{
    struct rb_open_opts ro = {.format = "raw"};
    struct rb_error err = {0};
    struct rb_image *img;

    (void)state;
    put_file("in.raw", "input bytes");
    assert_int_equal(symlink("in.raw", at("link")), 0);
    img = rb_image_open(at("in.raw"), &ro, &err);
    assert_non_null(img);
    assert_int_equal(rb_output_check_inputs(at("link"), &img, 1, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "refusing to overwrite"));
    rb_error_clear(&err);
    assert_null(rb_output_open(at("link"), &img, 1, 0, &err));
    assert_non_null(strstr(err.msg, "refusing to overwrite"));
    assert_int_equal(size_of("in.raw"), 11);
    rb_error_clear(&err);
    assert_int_equal(rb_output_check_inputs(at("other"), &img, 1, &err), 0);
    rb_image_close(img);
    unlink(at("link"));
    unlink(at("in.raw"));
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(new_file_removed_on_failure_only),
        cmocka_unit_test(existing_file_emptied_and_kept),
        cmocka_unit_test(locked_file_untouched),
        cmocka_unit_test(special_files_refused),
        cmocka_unit_test(inputs_refused),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
