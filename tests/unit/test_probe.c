/* SPDX-License-Identifier: MIT */
/* Format probing on buffers built here: every signature, its limits, and
 * what must stay raw. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rblock/image.h"

#define S RB_PROBE_BYTES

static const char *head(const void *p, size_t n)
{
    uint8_t buf[S] = {0};

    memcpy(buf, p, n < S ? n : S);
    return rb_image_probe_buf(buf, S, NULL, 0);
}

static void test_signatures(void **state)
{
    uint8_t b[S];
    (void)state;

    assert_string_equal(head("QFI\xfb\0\0\0\3", 8), "qcow2");
    assert_string_equal(head("QFI\xfb\0\0\0\1", 8), "qcow2"); /* driver names v1 */
    assert_string_equal(head("KDMV", 4), "vmdk");
    assert_string_equal(head("COWD", 4), "vmdk");
    assert_string_equal(head("vhdxfile", 8), "vhdx");
    assert_string_equal(head("conectix", 8), "vpc");
    assert_string_equal(head("QED\0", 4), "qed");
    assert_string_equal(head("LUKS\xba\xbe\0\1", 8), "luks");
    assert_string_equal(head("LUKS\xba\xbe\0\2", 8), "luks");
    assert_string_equal(head("WithoutFreeSpace\2\0\0\0", 20), "parallels");
    assert_string_equal(head("WithouFreSpacExt\2\0\0\0", 20), "parallels");

    memset(b, 0, S);
    memcpy(b, "<<< Oracle VM VirtualBox Disk Image >>>\n", 40);
    memcpy(b + 0x40, "\x7f\x10\xda\xbe", 4);
    assert_string_equal(rb_image_probe_buf(b, S, NULL, 0), "vdi");

    memset(b, 0, S);
    memcpy(b, "Bochs Virtual HD Image", 22);
    memcpy(b + 32, "Redolog", 7);
    assert_string_equal(rb_image_probe_buf(b, S, NULL, 0), "bochs");

    static const char cloop[] = "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount "
                                "-r -t iso9660 /dev/cloop $1\n";
    assert_string_equal(head(cloop, sizeof(cloop) - 1), "cloop");
    /* cut short: not cloop (nor vmdk: a comment, then a command line) */
    assert_string_equal(rb_image_probe_buf((const uint8_t *)cloop, 30, NULL, 0), "raw");
}

static void test_vmdk_descriptor(void **state)
{
    (void)state;
    static const char *const yes[] = {
        "# Disk DescriptorFile\nversion=1\n",
        "# Disk DescriptorFile",
        "version=2\n",
        "version=3\r\n",
        "# a comment\n\n   \n \r\nversion=1\nCID=fffffffe\n",
    };
    static const char *const no[] = {
        "version=4\n", "version=1", "  version=1\n", "x\nversion=1\n",
        "# only a comment\n", "version=\n", "#", "\r\r\nversion=1\n",
    };

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        assert_string_equal(rb_image_probe_buf((const uint8_t *)yes[i], strlen(yes[i]),
                                               NULL, 0), "vmdk");
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        assert_string_equal(rb_image_probe_buf((const uint8_t *)no[i], strlen(no[i]),
                                               NULL, 0), "raw");
}

static void test_trailers(void **state)
{
    uint8_t h[S] = {0}, t[S] = {0};
    (void)state;

    memcpy(t, "conectix", 8);
    assert_string_equal(rb_image_probe_buf(h, S, t, S), "vpc");
    memset(t, 0, S);
    memcpy(t, "koly\0\0\0\4\0\0\2\0", 12);
    assert_string_equal(rb_image_probe_buf(h, S, t, S), "dmg");
    t[10] = 1; /* header size 256: not a UDIF trailer */
    assert_string_equal(rb_image_probe_buf(h, S, t, S), "raw");
    /* a tail shorter than a sector, or none: no trailer */
    memcpy(t, "conectix", 8);
    assert_string_equal(rb_image_probe_buf(h, S, t, S - 1), "raw");
    assert_string_equal(rb_image_probe_buf(h, S, NULL, S), "raw");
    /* the first-sector check knows no trailers: "koly" at 0 is data */
    memset(t, 0, S);
    memcpy(t, "koly\0\0\0\4\0\0\2\0", 12);
    assert_null(rb_image_probe_first_sector(t, S));
    /* while "conectix" at 0 is a dynamic VHD's header */
    memcpy(t, "conectix", 8);
    assert_string_equal(rb_image_probe_first_sector(t, S), "vpc");
}

static void test_raw_stays_raw(void **state)
{
    uint8_t b[S] = {0};
    (void)state;

    assert_string_equal(rb_image_probe_buf(b, S, b, S), "raw");
    assert_string_equal(rb_image_probe_buf(NULL, 0, NULL, 0), "raw");
    b[510] = 0x55;
    b[511] = 0xaa;
    memcpy(b, "\xeb\x63\x90", 3);
    assert_string_equal(rb_image_probe_buf(b, S, NULL, 0), "raw");
    assert_null(rb_image_probe_first_sector(b, S));
    /* magics cut by the end of a short file match nothing */
    assert_string_equal(rb_image_probe_buf((const uint8_t *)"QFI", 3, NULL, 0), "raw");
    assert_string_equal(rb_image_probe_buf((const uint8_t *)"vhdxfil", 7, NULL, 0), "raw");
    assert_string_equal(rb_image_probe_buf((const uint8_t *)"WithoutFreeSpace\2", 17, NULL,
                                           0), "raw");
    /* parallels needs version 2 */
    assert_string_equal(head("WithoutFreeSpace\1\0\0\0", 20), "raw");
    assert_string_equal(rb_image_probe_first_sector((const uint8_t *)"QFI\xfb", 4), "qcow2");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signatures),
        cmocka_unit_test(test_vmdk_descriptor),
        cmocka_unit_test(test_trailers),
        cmocka_unit_test(test_raw_stays_raw),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
