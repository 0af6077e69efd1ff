/* SPDX-License-Identifier: MIT */
/*
 * create.c - rblock create -f qcow2 [-o OPTIONS] [-b BACKING [-F FMT]] FILE [SIZE]
 *
 * As qemu-img create: the size defaults to the backing file's, is rounded
 * up to a multiple of 512, and the backing format is always recorded
 * (probed when -F is not given).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd.h"
#include "rblock/io.h"
#include "util/path.h"
#include "rblock/output.h"
#include "rblock/qcow2-create.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: rblock create [-f qcow2|raw] [-o OPTIONS] [-b BACKING [-F FMT]] [-q] "
               "FILE [SIZE]\n\n"
               "SIZE: bytes, or a number with a suffix k, M, G, T, P, E (1.5G, 512k);\n"
               "  rounded up to a multiple of 512, as qemu-img does\n"
               "options (-o key=value,...): compat=0.10|1.1, cluster_size, refcount_bits,\n"
               "  lazy_refcounts=on|off, extended_l2=on|off, compression_type=zlib|zstd,\n"
               "  preallocation=off|metadata, backing_file, backing_fmt, size\n");
}

/* Open the backing chain: it gives the size and format when they were not
 * given, and the layers the new file must not be.  @chain is the opened
 * chain (owned by the caller). */
static int probe_backing(const char *file, struct rb_qcow2_create_opts *o,
                         char **fmt_out, struct rb_image **chain)
{
    char *path = rb_path_resolve(file, o->backing_file);
    struct rb_image *b;

    if (!path) {
        complain("out of memory");
        return -ENOMEM;
    }
    /* as qemu-img create: the backing file is only read for its size and
     * format, with force-share, so an overlay of an image in use can be
     * made (a live snapshot) */
    struct rb_open_opts bo = {.format = o->backing_format, .force_share = true};
    struct rb_error berr = {0};
    b = rb_image_open(path, &bo, &berr);
    free(path);
    if (!b) {
        complain("%s", rb_error_msg(&berr, -EIO));
        complain("%s: cannot open backing file '%s'", file, o->backing_file);
        return -EINVAL;
    }
    *chain = b;
    if (!o->size_set) {
        o->size = b->size;
        o->size_set = true;
    }
    if (!o->backing_format) {
        *fmt_out = strdup(b->ops->format);
        if (!*fmt_out) {
            complain("out of memory");
            return -ENOMEM;
        }
        o->backing_format = *fmt_out;
    }
    return 0;
}

/* Write the new image into FILE, opened as every output is (rblock/output.h):
 * never a layer of its own backing chain, locked before it is emptied,
 * removed on failure only when this run created it. */
static int write_new(const char *file, const struct rb_qcow2_create_opts *o,
                     struct rb_image *chain)
{
    struct rb_error err = {0};
    struct rb_output *out;
    int ret = rb_qcow2_check_opts(o, &err);

    out = ret < 0 ? NULL : rb_output_open(file, &chain, chain ? 1 : 0, 0, &err);
    if (out)
        ret = rb_qcow2_create(out->fd, file, o, &err);
    else if (ret == 0)
        ret = -EIO;
    if (ret < 0)
        complain("create: %s%s", rb_error_msg(&err, ret), rb_output_fate(out));
    rb_output_close(out, ret < 0);
    return ret;
}

/* A sparse raw image of @size bytes rounded up to a sector, as qemu-img
 * create -f raw makes it, through the same output code. */
static int write_raw(const char *file, uint64_t size)
{
    struct rb_error err = {0};
    struct rb_output *out = rb_output_open(file, NULL, 0, 0, &err);
    int ret = out ? rb_output_size(out, rb_qcow2_round_size(size), &err) : -EIO;

    if (ret == 0)
        ret = rb_io_sync(out->fd);
    if (ret < 0)
        complain("create: %s%s", rb_error_msg(&err, ret), rb_output_fate(out));
    rb_output_close(out, ret < 0);
    return ret;
}

int cmd_create(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct rb_qcow2_create_opts o;
    struct rb_error err = {0};
    struct rb_image *chain = NULL;
    char *fmt_probed = NULL, *optstr = NULL;
    const char *file;
    bool quiet = false, raw = false;
    int c, ret = 1;

    rb_qcow2_create_opts_init(&o);
    while ((c = getopt_long(argc, argv, ":f:o:b:F:qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'f':
            if (strcmp(optarg, "qcow2") != 0 && strcmp(optarg, "raw") != 0) {
                complain("create: format '%s' is not supported (qcow2, raw)", optarg);
                goto out;
            }
            raw = strcmp(optarg, "raw") == 0;
            break;
        case 'o':
            free(optstr);
            optstr = strdup(optarg);
            if (!optstr || rb_qcow2_parse_options(optstr, &o, &err) < 0) {
                complain("create: %s", rb_error_msg(&err, -ENOMEM));
                goto out;
            }
            break;
        case 'b': o.backing_file = optarg; break;
        case 'F': o.backing_format = optarg; break;
        case 'q': quiet = true; break;
        case 'h': usage(stdout); ret = 0; goto out;
        default:
            bad_option("create", argv, c);
            goto out;
        }
    }
    if (optind >= argc || argc - optind > 2) {
        bad_usage("create", "needs FILE [SIZE]");
        goto out;
    }
    file = argv[optind];
    if (argc - optind == 2) {
        if (parse_size(argv[optind + 1], &o.size) < 0) {
            complain("create: invalid size '%s'", argv[optind + 1]);
            goto out;
        }
        o.size_set = true;
    }
    if (o.backing_format && !o.backing_file) {
        complain("create: -F needs a backing file (-b)");
        goto out;
    }
    if (raw && (optstr || o.backing_file)) {
        complain("create: -o and -b are for qcow2; a raw image is its bytes");
        goto out;
    }
    if (o.backing_file && probe_backing(file, &o, &fmt_probed, &chain) < 0)
        goto out;
    if (!o.size_set) {
        complain("create: %s: size is required without a backing file", file);
        goto out;
    }
    if ((raw ? write_raw(file, o.size) : write_new(file, &o, chain)) < 0)
        goto out;
    if (!quiet)
        printf("Formatting '%s', fmt=%s size=%llu%s%s%s%s\n", file, raw ? "raw" : "qcow2",
               (unsigned long long)o.size, o.backing_file ? " backing_file=" : "",
               o.backing_file ? o.backing_file : "", o.backing_format ? " backing_fmt=" : "",
               o.backing_format ? o.backing_format : "");
    ret = 0;
out:
    rb_image_close(chain);
    free(fmt_probed);
    free(optstr);
    return ret;
}
