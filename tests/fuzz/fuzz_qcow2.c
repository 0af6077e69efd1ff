/* SPDX-License-Identifier: MIT */
/*
 * fuzz_qcow2.c - libFuzzer target: the input is a qcow2 file.  Open it
 * read-only without its backing chain, ask for its info and L2 summary,
 * walk each persistent dirty bitmap's runs (bounded), walk block status
 * over the disk, read clusters (bounded), run the consistency check
 * (rb_qcow2_check, weak: skipped if not linked in), and draw the host
 * layout of `rblock map --output=svg` (rb_qcow2_layout).
 */
#include <stdint.h>

#include "fuzz_common.h"
#include "rblock/image.h"
#include "rblock/qcow2.h"

/* Check.c lands separately; skip the check until it is linked in. */
int rb_qcow2_check(struct rb_image *img, struct rb_qcow2_check *res,
                   struct rb_error *err) __attribute__((weak));
void rb_qcow2_check_free(struct rb_qcow2_check *res) __attribute__((weak));

#define MAX_EXTENTS 1024
#define MAX_READ_BYTES (1u << 20)
#define MAX_READS 256 /* calls: each walks the L2 path, the cost */
#define CHUNK (64u << 10)

static int count_l2(void *opaque, const struct rb_qcow2_l2_summary *l2)
{
    return ++*(unsigned *)opaque > 100000;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rb_open_opts opts = {.format = "qcow2", .no_backing = true,
                                .cache_bytes = 128u << 10};
    struct rb_error err = {0};
    struct rb_image *img;
    struct rb_qcow2_info info;
    char path[64];
    int fd;

    fd = fuzz_memfd("fuzz.qcow2", data, size, 0, path);
    fuzz_sandbox = true;
    img = rb_image_open(path, &opts, &err);
    if (!img)
        goto out;

    memset(&info, 0, sizeof(info));
    if (rb_qcow2_get_info(img, &info, &err) == 0) {
        /* the bitmaps' tables and bits, as serve -B and delta --bitmap use them */
        for (uint32_t b = 0; b < info.nb_bitmaps && b < 8; b++) {
            const char *name = info.bitmaps[b].name;
            uint64_t at = 0, n;
            bool dirty;
            if (rb_qcow2_bitmap_use(img, name, &err) < 0)
                continue;
            for (unsigned i = 0; i < MAX_EXTENTS && at < img->size; i++, at += n)
                if (rb_qcow2_bitmap_extent(img, name, at, img->size - at, &dirty, &n,
                                           &err) < 0 || n == 0 || n > img->size - at)
                    break;
        }
        rb_qcow2_info_free(&info);
    }
    unsigned l2s = 0;
    rb_qcow2_walk_l2(img, count_l2, &l2s, &err);

    /* Block status over the disk, reading the start of each extent. */
    size_t cb = img->cluster_bytes ? img->cluster_bytes : 4096;
    size_t chunk = cb > CHUNK ? cb : CHUNK;
    uint8_t *buf = malloc(chunk);
    uint64_t off = 0, read_bytes = 0;
    unsigned reads = 0;
    if (!buf)
        abort();
    for (unsigned i = 0; i < MAX_EXTENTS && off < img->size; i++) {
        struct rb_extent ext;
        if (rb_image_block_status(img, off, img->size - off, &ext, &err) < 0)
            break;
        if (ext.length == 0 || ext.length > img->size - off)
            abort(); /* the wrapper promises 0 < length <= asked */
        if (read_bytes < MAX_READ_BYTES && reads < MAX_READS) {
            size_t n = ext.length < cb ? (size_t)ext.length : cb;
            rb_image_read(img, buf, off, n, &err);
            read_bytes += n;
            reads++;
        }
        off += ext.length;
    }
    /* Every cluster from the start, several per read, within the budget. */
    for (off = 0; off < img->size && read_bytes < MAX_READ_BYTES && reads < MAX_READS;
         off += chunk, reads++) {
        size_t n = img->size - off < chunk ? (size_t)(img->size - off) : chunk;
        rb_image_read(img, buf, off, n, &err);
        read_bytes += n;
    }
    /* One unaligned read across a cluster boundary. */
    if (img->size > cb + 1) {
        uint64_t o = cb - 1;
        size_t n = img->size - o < cb ? (size_t)(img->size - o) : cb;
        rb_image_read(img, buf, o, n, &err);
    }
    free(buf);

    if (rb_qcow2_check) {
        struct rb_qcow2_check res;
        memset(&res, 0, sizeof(res));
        if (rb_qcow2_check(img, &res, &err) == 0)
            rb_qcow2_check_free(&res);
    }
    {
        /* the host layout: the check's walk, every reference put in columns */
        struct rb_qcow2_layout l;
        if (rb_qcow2_layout(img, 97, &l, &err) == 0)
            rb_qcow2_layout_free(&l);
    }
    rb_image_close(img);
out:
    fuzz_sandbox = false;
    close(fd);
    return 0;
}
