/* SPDX-License-Identifier: MIT */
/*
 * bitmap.c - `rblock bitmap`: add, remove, clear, enable, disable and
 * merge persistent dirty bitmaps of a qcow2 image, with qemu-img bitmap's
 * syntax and meaning.  The operations apply in order and reach the disk
 * together (rb_qcow2_bitmap_apply).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "rblock/qcow2.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: rblock bitmap (--add [-g GRANULARITY] [--disable] | --remove | "
               "--clear |\n"
               "                     --enable | --disable | --merge SOURCE "
               "[-b SOURCE_IMAGE [-F FMT]])...\n"
               "                     [-f FMT] IMAGE BITMAP\n"
               "\nChange the persistent dirty bitmap BITMAP of the qcow2 IMAGE, as "
               "qemu-img bitmap.\n"
               "  --add          create it (enabled: it records every write)\n"
               "  -g SIZE        its granularity (512 B..2 GiB, a power of two; default: "
               "the\n"
               "                 cluster size within 4 KiB..64 KiB)\n"
               "  --remove       delete it\n"
               "  --clear        mark every granule clean\n"
               "  --enable       record writes from now on\n"
               "  --disable      stop recording writes\n"
               "  --merge SRC    add the dirty granules of bitmap SRC (of IMAGE, or of\n"
               "                 SOURCE_IMAGE with -b)\n"
               "Several operations apply in order and are written together.\n");
}

enum { OPT_ADD = 256, OPT_REMOVE, OPT_CLEAR, OPT_ENABLE, OPT_DISABLE, OPT_MERGE };

int cmd_bitmap(int argc, char **argv)
{
    static const struct option opts[] = {
        {"add", no_argument, NULL, OPT_ADD},
        {"remove", no_argument, NULL, OPT_REMOVE},
        {"clear", no_argument, NULL, OPT_CLEAR},
        {"enable", no_argument, NULL, OPT_ENABLE},
        {"disable", no_argument, NULL, OPT_DISABLE},
        {"merge", required_argument, NULL, OPT_MERGE},
        {"granularity", required_argument, NULL, 'g'},
        {"source-file", required_argument, NULL, 'b'},
        {"source-format", required_argument, NULL, 'F'},
        {"format", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct rb_qcow2_bitmap_op *ops = NULL;
    const char *fmt = NULL, *src_file = NULL, *src_fmt = NULL;
    struct rb_image *img = NULL, *src = NULL;
    struct rb_error err = {0};
    uint64_t granularity = 0;
    bool add = false, merge = false;
    size_t nb = 0;
    int c, ret = 1;

    optind = 1;
    while ((c = getopt_long(argc, argv, "g:b:F:f:h", opts, NULL)) != -1) {
        struct rb_qcow2_bitmap_op *o;

        switch (c) {
        case OPT_ADD: case OPT_REMOVE: case OPT_CLEAR: case OPT_ENABLE:
        case OPT_DISABLE: case OPT_MERGE:
            o = realloc(ops, (nb + 1) * sizeof(*ops));
            if (!o) {
                complain("out of memory");
                goto out;
            }
            ops = o;
            o = &ops[nb++];
            memset(o, 0, sizeof(*o));
            o->kind = c == OPT_ADD      ? RB_QCOW2_BITMAP_ADD
                      : c == OPT_REMOVE ? RB_QCOW2_BITMAP_REMOVE
                      : c == OPT_CLEAR  ? RB_QCOW2_BITMAP_CLEAR
                      : c == OPT_ENABLE ? RB_QCOW2_BITMAP_ENABLE
                      : c == OPT_DISABLE ? RB_QCOW2_BITMAP_DISABLE
                                         : RB_QCOW2_BITMAP_MERGE;
            if (c == OPT_MERGE)
                o->source = optarg;
            add |= c == OPT_ADD;
            merge |= c == OPT_MERGE;
            break;
        case 'g':
            if (parse_size(optarg, &granularity) < 0 || granularity == 0) {
                complain("invalid granularity '%s'", optarg);
                goto out;
            }
            break;
        case 'b':
            src_file = optarg;
            break;
        case 'F':
            src_fmt = optarg;
            break;
        case 'f':
            fmt = optarg;
            break;
        case 'h':
            usage(stdout);
            ret = 0;
            goto out;
        default:
            usage(stderr);
            goto out;
        }
    }
    /* qemu-img bitmap's rules */
    if (!nb) {
        complain("need at least one of --add, --remove, --clear, --enable, --disable, "
                 "or --merge");
        goto out;
    }
    if (granularity && !add) {
        complain("granularity only supported with --add");
        goto out;
    }
    if (src_fmt && !src_file) {
        complain("-F only supported with -b");
        goto out;
    }
    if (src_file && !merge) {
        complain("merge bitmap source file only supported with --merge");
        goto out;
    }
    if (optind != argc - 2) {
        complain(optind >= argc ? "expecting image file name and bitmap name"
                                : "expecting a bitmap name after the image file name");
        goto out;
    }
    {
        /* the bitmaps live in the top image: no backing chain needed */
        struct rb_open_opts o = {.format = fmt, .write = true, .lock = true,
                                 .no_backing = true};
        img = rb_image_open(argv[optind], &o, &err);
        if (!img) {
            complain("%s", rb_error_msg(&err, -1));
            goto out;
        }
    }
    if (!rb_qcow2_is(img)) {
        complain("%s: format '%s' does not support bitmaps", img->filename,
                 img->ops->format);
        goto out;
    }
    if (src_file) {
        struct rb_open_opts so = {.format = src_fmt, .no_backing = true, .lock = true};
        src = rb_image_open(src_file, &so, &err);
        if (!src) {
            complain("%s", rb_error_msg(&err, -1));
            goto out;
        }
    }
    for (size_t i = 0; i < nb; i++) {
        ops[i].granularity = granularity;
        ops[i].source_img = src;
    }
    if (rb_qcow2_bitmap_apply(img, argv[optind + 1], ops, nb, &err) < 0) {
        complain("%s", rb_error_msg(&err, -1));
        goto out;
    }
    ret = 0;
out:
    rb_image_close(src);
    rb_image_close(img);
    free(ops);
    return ret;
}
