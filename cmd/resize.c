/* SPDX-License-Identifier: MIT */
/*
 * rblock resize - qemu-img resize [--shrink] [-f FMT] [-q] IMAGE [+|-]SIZE
 *
 * The image is opened in place (lib/util/output.c RB_OUTPUT_IN_PLACE: it
 * must exist, is write-locked as QEMU locks images, never truncated before
 * the new size is known, never removed).  A raw file is resized with
 * ftruncate; a qcow2 image by rb_qcow2_resize (tables in crash-safe
 * order, bitmaps resized).  Shrinking needs --shrink, as qemu-img; a
 * refusal changes nothing.  Messages and exit status (0, 1) as qemu-img.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cmd.h"
#include "rblock/io.h"
#include "rblock/lifecycle.h"
#include "rblock/output.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: rblock resize [--shrink] [--preallocation=off] [-f FMT] [-q] IMAGE [+|-]SIZE\n"
            "\n"
            "Change the virtual size of IMAGE (raw or qcow2) to SIZE, or by +SIZE / -SIZE.\n"
            "Shrinking deletes everything past the new end and needs --shrink.\n");
}

static int resize_raw(struct rb_output *out, uint64_t cur, uint64_t size)
{
    struct rb_error err = {0};
    int ret;

    if (out->blockdev) {
        complain("%s: cannot resize a block device (%" PRIu64 " bytes)", out->path, cur);
        return -EINVAL;
    }
    ret = rb_output_size(out, size, &err);
    if (ret == 0 && (ret = rb_io_sync(out->fd)) < 0)
        rb_error_errno(&err, -ret, "%s: sync failed", out->path);
    if (ret < 0)
        complain("%s", rb_error_msg(&err, ret));
    return ret;
}

int cmd_resize(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"shrink", no_argument, NULL, 'S'},
        {"preallocation", required_argument, NULL, 'P'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *size_arg, *path;
    bool shrink = false, quiet = false;
    struct rb_output *out = NULL;
    struct rb_image *img = NULL;
    struct rb_error err = {0};
    uint64_t n, cur, size;
    int c, relative = 0, ret = 1;

    opterr = 0;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
    /* the size goes first, so that "-1G" is not taken for an option */
    if (argc < 3)
        return bad_usage("resize", "not enough arguments");
    size_arg = argv[--argc];
    while ((c = getopt_long(argc, argv, ":hf:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f':
            fmt = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'S':
            shrink = true;
            break;
        case 'P':
            if (strcmp(optarg, "off") != 0) {
                complain("resize: --preallocation=%s is not supported (only off)", optarg);
                return 1;
            }
            break;
        case 'U':
            complain("resize: -U (force share) cannot be used on an image that is written");
            return 1;
        default:
            return bad_option("resize", argv, c);
        }
    }
    if (optind != argc - 1)
        return bad_usage("resize", "expecting image file name and size");
    path = argv[optind];
    if (*size_arg == '+' || *size_arg == '-')
        relative = *size_arg++ == '+' ? 1 : -1;
    if (parse_size(size_arg, &n) < 0) {
        complain("resize: invalid size '%s'", argv[argc]);
        return 1;
    }
    if (fmt && strcmp(fmt, "raw") != 0 && strcmp(fmt, "qcow2") != 0) {
        complain("resize: format '%s' cannot be resized (raw or qcow2)", fmt);
        return 1;
    }
    out = rb_output_open(path, NULL, 0, RB_OUTPUT_IN_PLACE | RB_OUTPUT_BLOCKDEV, &err);
    if (!out) {
        complain("%s", rb_error_msg(&err, -EIO));
        return 1;
    }
    if (!fmt) {
        fmt = rb_image_probe(out->fd);
        if (strcmp(fmt, "raw") != 0 && strcmp(fmt, "qcow2") != 0) {
            complain("%s: is a %s image; rblock resizes raw and qcow2", path, fmt);
            goto done;
        }
    }
    if (strcmp(fmt, "qcow2") == 0) {
        struct rb_open_opts oo = {.format = "qcow2", .write = true, .no_backing = true};
        int fd = rb_output_dup(out, &err);
        img = fd < 0 ? NULL : rb_image_open_fd(path, fd, &oo, &err);
        if (!img) {
            complain("%s", rb_error_msg(&err, -EIO));
            goto done;
        }
        cur = img->size;
    } else if (out->blockdev) {
        cur = out->dev_bytes;
    } else if (rb_io_size(out->fd, &cur) < 0) {
        complain("%s: cannot get the current size", path);
        goto done;
    } else {
        cur = (cur + 511) / 512 * 512; /* as QEMU: whole sectors (bdrv_getlength) */
    }
    if (relative > 0) {
        if (cur + n < cur) {
            complain("%s: new size %s%s is too large", path, "+", size_arg);
            goto done;
        }
        size = cur + n;
    } else if (relative < 0) {
        size = n >= cur ? 0 : cur - n;
    } else {
        size = n;
    }
    if (size == 0) {
        complain("%s: new image size must be positive", path);
        goto done;
    }
    if (size < cur && !shrink) {
        complain("%s: use the --shrink option to perform a shrink operation (%" PRIu64
                 " bytes is smaller than %" PRIu64 ")", path, size, cur);
        complain("warning: shrinking an image deletes all data beyond the shrunken "
                 "image's end; make sure there is no important data there");
        goto done;
    }
    if (img) {
        if (rb_qcow2_resize(img, size, shrink, &err) < 0 || rb_image_flush(img, &err) < 0) {
            complain("%s", rb_error_msg(&err, -EIO));
            goto done;
        }
    } else if (resize_raw(out, cur, size) < 0) {
        goto done;
    }
    if (!quiet)
        printf("Image resized.\n");
    ret = 0;
done:
    rb_image_close(img);
    rb_output_close(out, false);
    return ret;
}
