/* SPDX-License-Identifier: MIT */
/*
 * test_size.c - rb_parse_size against what qemu-img create accepts and
 * refuses (values from qemu-img 7.2 create, and QEMU's tests/unit/
 * test-cutils.c for the fractions and limits).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "rblock/size.h"

static void accepted(void **state)
{
    static const struct {
        const char *s;
        uint64_t v;
    } cases[] = {
        {"0", 0},
        {"1000", 1000},
        {"1b", 1},
        {"1B", 1},
        {"512k", 512 << 10},
        {"512K", 512 << 10},
        {"3M", 3 << 20},
        {"1.5G", 3ull << 29},
        {"2T", 2ull << 40},
        {"1P", 1ull << 50},
        {"1E", 1ull << 60},
        {"15E", 15ull << 60},
        {"1.k", 1024},
        {".5k", 512},
        {"0.5M", 512 << 10},
        {"1.0", 1},
        {"0x1000", 4096},
        {"0X10", 16},
        {"12.345M", 12944671},            /* 12.345 * 2^20 = 12944670.72, rounded up */
        {"1.00000000000000000001E", 1ull << 60}, /* below a double's resolution */
        {"18446744073709551615", UINT64_MAX},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 0;

        assert_int_equal(rb_parse_size(cases[i].s, &v), 0);
        assert_true(v == cases[i].v);
    }
}

static void refused(void **state)
{
    static const char *const cases[] = {
        "", "k", ".", "1.5", "1.5b", "1KB", "1KiB", "-1", " 1x", "1 k", "1kk",
        "0x", "0x1k", "0x1.5", "16E", "18446744073709551616", "1.5x", "abc", "1e3",
        "16.0E",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 7;

        assert_int_equal(rb_parse_size(cases[i], &v), -EINVAL);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(accepted),
        cmocka_unit_test(refused),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
