/* SPDX-License-Identifier: MIT */
/*
 * fuzz_probe.c - libFuzzer target: format probing and the first-sector
 * guard of a raw image whose format was guessed.
 *
 * The input is a file (in a memfd, at least 1 KiB: zeros pad it).  Its
 * first 5 bytes also script one change of it: offset (LE16 % 1024),
 * length (LE16 % 1024), kind (% 3: write of the input's own bytes from
 * byte 5, write_zeroes, trim).  Checks:
 * - rb_image_probe(fd) equals rb_image_probe_buf over the same head and
 *   tail (and a file that probes as a format rblock does not read is
 *   refused by rb_image_open);
 * - opened read-write with the format guessed, a raw image refuses the
 *   change with EPERM and leaves the file as it was, or makes it and the
 *   first sector still probes as raw.  Anything else aborts.
 */
#include <errno.h>
#include <stdint.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "rblock/image.h"

#define MIN_FILE 1024
#define MAX_FILE (64u << 10)

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t file[MAX_FILE], after[MAX_FILE], wbuf[1024];
    struct rb_open_opts ro = {.no_backing = true, .cache_bytes = 128u << 10};
    struct rb_open_opts rw = {.write = true, .no_backing = true};
    struct rb_error err = {0};
    struct rb_image *img;
    char path[64];
    size_t n = size < MIN_FILE ? MIN_FILE : size;
    int fd, ret;

    if (size < 5 || size > MAX_FILE)
        return 0;
    memset(file, 0, n);
    memcpy(file, data, size);

    const char *by_buf = rb_image_probe_buf(file, RB_PROBE_BYTES, file + n - RB_PROBE_BYTES,
                                            RB_PROBE_BYTES);
    fd = fuzz_memfd("fuzz.img", file, n, 0, path);
    fuzz_sandbox = true;
    if (strcmp(rb_image_probe(fd), by_buf) != 0)
        abort();

    img = rb_image_open(path, &ro, &err);
    if (strcmp(by_buf, "raw") != 0 && strcmp(by_buf, "qcow2") != 0 && img)
        abort(); /* a format rblock does not read was opened */
    rb_image_close(img);
    if (strcmp(by_buf, "raw") != 0)
        goto out;

    uint64_t off = le16(data) % 1024, len = le16(data + 2) % 1024;
    unsigned kind = data[4] % 3;
    memset(wbuf, 0, sizeof(wbuf));
    memcpy(wbuf, data + 5, size - 5 < len ? size - 5 : len);
    img = rb_image_open(path, &rw, &err);
    if (!img || !img->format_guessed)
        abort();
    if (kind == 0)
        ret = rb_image_write(img, wbuf, off, len, 0, &err);
    else if (kind == 1)
        ret = rb_image_write_zeroes(img, off, len, 0, &err);
    else
        ret = rb_image_trim(img, off, len, &err);
    rb_image_close(img);
    if (pread(fd, after, n, 0) != (ssize_t)n)
        abort();
    if (ret == -EPERM && memcmp(after, file, n) != 0)
        abort(); /* refused, yet changed */
    if (ret == 0 && rb_image_probe_first_sector(after, RB_PROBE_BYTES))
        abort(); /* a guessed raw image now probes as another format */
out:
    fuzz_sandbox = false;
    close(fd);
    return 0;
}
