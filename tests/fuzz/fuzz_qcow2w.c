/* SPDX-License-Identifier: MIT */
/*
 * fuzz_qcow2w.c - libFuzzer target for the qcow2 write path: the input is
 * a qcow2 file; its last 24 bytes also script a few writes, zeroings and
 * discards.  Open it read-write without its backing chain, check it, run
 * the script (writes also record into the image's persistent dirty
 * bitmaps), add a bitmap (and merge the first one into it) as `rblock
 * bitmap` does, flush, check again, close (the bitmaps are written back),
 * reopen and check once more.
 *
 * Oracle: an image the check found clean (no corruption, no leak) must
 * still have no corruption after our own writes (DESIGN.md 4: refcounts
 * never too low).  Anything else is a finding.
 */
#include <stdint.h>

#include "fuzz_common.h"
#include "rblock/image.h"
#include "rblock/qcow2.h"

#define SCRIPT_BYTES 24
#define OPS 8

static int check(struct rb_image *img, uint64_t *corruptions, uint64_t *leaks)
{
    struct rb_qcow2_check res;
    struct rb_error err = {0};
    int ret;

    memset(&res, 0, sizeof(res));
    ret = rb_qcow2_check(img, &res, &err);
    if (ret == 0) {
        *corruptions = res.corruptions + res.check_errors;
        *leaks = res.leaks;
        rb_qcow2_check_free(&res);
    }
    return ret;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rb_open_opts opts = {.format = "qcow2", .no_backing = true, .write = true,
                                .cache_bytes = 128u << 10};
    struct rb_error err = {0};
    struct rb_image *img;
    uint64_t c0 = 1, l0 = 1, c1 = 0, l1 = 0;
    char path[64];
    int fd;

    if (size < SCRIPT_BYTES + 512)
        return 0;
    const uint8_t *script = data + size - SCRIPT_BYTES;

    fd = fuzz_memfd("fuzz.qcow2", data, size, 0, path);
    fuzz_sandbox = true;
    img = rb_image_open(path, &opts, &err);
    if (!img)
        goto out;
    bool was_clean = check(img, &c0, &l0) == 0 && c0 == 0 && l0 == 0;

    uint64_t cb = img->cluster_bytes ? img->cluster_bytes : 4096;
    uint8_t *buf = malloc(2 * cb);
    if (!buf)
        abort();
    memset(buf, 0xa5, 2 * cb);
    bool failed = false;
    for (unsigned i = 0; i < OPS && img->size && !failed; i++) {
        unsigned op = script[i] & 3;
        /* half-cluster granularity: aligned and unaligned, inside the disk */
        uint64_t off = ((uint64_t)script[OPS + i] * (cb / 2) +
                        (script[2 * OPS + i] & 0x80 ? 511 : 0)) % img->size;
        uint64_t len = (script[2 * OPS + i] & 0x7f) * (cb / 64) + 1;
        if (len > 2 * cb)
            len = 2 * cb;
        if (len > img->size - off)
            len = img->size - off;
        int ret = 0;
        switch (op) {
        case 0: ret = rb_image_write(img, buf, off, (size_t)len, 0, &err); break;
        case 1: ret = rb_image_write_zeroes(img, off, len, script[i] & 4 ? RB_ZERO_MAY_UNMAP : 0,
                                            &err); break;
        case 2: ret = rb_image_trim(img, off, len, &err); break;
        case 3: ret = rb_image_read(img, buf + cb, off, (size_t)(len < cb ? len : cb), &err);
                break;
        }
        /* A failed write may leave leaks, not corruption; but after an
         * I/O error on a corrupt-looking image we stop writing. */
        failed = ret < 0 && op != 3;
    }
    free(buf);
    if (!failed && img->size) {
        /* a new bitmap, stored with the ones the writes recorded into */
        struct rb_qcow2_info info;
        struct rb_qcow2_bitmap_op ops[2] = {
            {.kind = RB_QCOW2_BITMAP_ADD, .granularity = 512ull << (script[0] >> 5),
             .disabled = script[1] & 0x40},
            {.kind = RB_QCOW2_BITMAP_MERGE}};
        size_t nops = 1;
        char first[1024] = "";
        memset(&info, 0, sizeof(info));
        if (rb_qcow2_get_info(img, &info, &err) == 0) {
            if (info.nb_bitmaps && !info.bitmaps[0].in_use) {
                snprintf(first, sizeof(first), "%s", info.bitmaps[0].name);
                ops[1].source = first;
                nops = 2;
            }
            rb_qcow2_info_free(&info);
        }
        rb_qcow2_bitmap_apply(img, "fuzz", ops, nops, &err);
    }
    rb_image_flush(img, &err);
    if (was_clean && check(img, &c1, &l1) == 0 && c1 != 0) {
        fprintf(stderr, "fuzz_qcow2w: a clean image has %llu corruption(s) after writes\n",
                (unsigned long long)c1);
        abort();
    }
    rb_image_close(img);

    /* It must open again (read-only) after our writes, and the bitmaps'
     * write-back at close must not have corrupted it. */
    opts.write = false;
    img = rb_image_open(path, &opts, &err);
    if (!img && was_clean) {
        fprintf(stderr, "fuzz_qcow2w: a clean image does not reopen after writes: %s\n",
                rb_error_msg(&err, -EIO));
        abort();
    }
    if (img && was_clean && check(img, &c1, &l1) == 0 && c1 != 0) {
        fprintf(stderr, "fuzz_qcow2w: a clean image has %llu corruption(s) after the "
                "bitmaps were written back\n", (unsigned long long)c1);
        abort();
    }
    rb_image_close(img);
out:
    fuzz_sandbox = false;
    close(fd);
    return 0;
}
