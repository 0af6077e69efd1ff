/* SPDX-License-Identifier: MIT */
/*
 * convert.c - rblock convert [-f FMT] [-O raw|qcow2] [-o OPTIONS] [-c] [-p] SRC DST
 *
 * Opens the source (its whole chain), makes the destination, runs the copy
 * engine (lib/ops/convert.c) and flushes.  The destination is opened as
 * every output is (rblock/output.h): never the source or a layer of its
 * chain, locked before it is emptied, and removed on failure only when
 * this run created it.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd.h"
#include "convert_rbd.h"
#include "rbd_diff.h"
#include "rblock/diff.h"
#include "rblock/io.h"
#include "rblock/ops.h"
#include "rblock/output.h"
#include "rblock/qcow2-create.h"
#include "rblock/qcow2.h"
#include "rblock/rbd.h"
#include "rblock/size.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: rblock convert [-f FMT] [-O raw|qcow2] [-o OPTIONS] [-c] [-p] [-q] "
               "[-n [--target-is-zero]] [-S SIZE] [-B BACKING -F FMT] SRC DST\n\n"
               "  -f FMT      source format (raw, qcow2; probed by default)\n"
               "  -U          read SRC even while another process writes it\n"
               "  -O FMT      output format (default raw)\n"
               "  -o OPTIONS  qcow2 options as for 'rblock create' (compat, cluster_size,\n"
               "              refcount_bits, lazy_refcounts, extended_l2, compression_type)\n"
               "  -c          compress the output clusters (qcow2; zlib, or zstd with\n"
               "              -o compression_type=zstd)\n"
               "  -p          show progress on a terminal\n"
               "  --bitmaps   also copy the persistent dirty bitmaps of SRC (qcow2 to qcow2)\n"
               "  --skip-broken-bitmaps  with --bitmaps: leave out inconsistent (in use)\n"
               "              bitmaps instead of failing\n"
               "  -n          DST exists (file, block device or rbd: image): it is\n"
               "              written in place, not created; at least SRC's size\n"
               "  --target-is-zero  with -n: DST already reads as zeros (zeros not written)\n"
               "  -B BACKING  -O qcow2 output backed by BACKING (stored as given, read\n"
               "              from DST's folder) holding only what differs from it\n"
               "  -F FMT      format of BACKING (required with -B)\n"
               "  -S SIZE     zero runs of at least SIZE bytes stay sparse (default 4k,\n"
               "              a multiple of 512); -S 0: fully allocated output\n"
               "  -m N        writes in flight to an rbd: DST (default 16)\n"
               "DST may be rbd:POOL[/NAMESPACE]/IMAGE (see docs/ceph.md)\n"
               "-f rbd-diff: SRC is an rbd export-diff stream (see "
               "'rblock convert -f rbd-diff --help')\n");
}

static void on_progress(void *opaque, uint64_t done)
{
    progress_update(opaque, done);
}

/* The raw image over @out, which is made @size bytes long (a block device
 * must be at least that large; it does not read as zeros). */
static struct rb_image *make_raw(struct rb_output *out, uint64_t size, bool *zeroed,
                                 struct rb_error *err)
{
    struct rb_open_opts oo = {.format = "raw", .write = true, .sequential = true};
    struct rb_image *img;
    int fd;

    if (rb_output_size(out, size, err) < 0 || (fd = rb_output_dup(out, err)) < 0)
        return NULL;
    *zeroed = !out->blockdev;
    img = rb_image_open_fd(out->path, fd, &oo, err);
    if (img && out->blockdev && img->size > size)
        img->size = size; /* convert writes the source's bytes, no more */
    return img;
}

/* Size of the source file as the file system says now (to notice a source
 * that changes while we copy). */
static int source_size(const char *path, struct rb_image *src, uint64_t *size)
{
    struct stat st;

    if (stat(path, &st) < 0)
        return -errno;
    *size = S_ISREG(st.st_mode) ? (uint64_t)st.st_size : src->size;
    return 0;
}

struct job {
    const char *src_path, *dst_path, *src_fmt, *out_fmt;
    struct rb_qcow2_create_opts qo;
    bool compress, progress;
    bool force_share;
    bool bitmaps, skip_broken;  /* --bitmaps, --skip-broken-bitmaps */
    bool no_create;      /* -n: DST exists */
    bool target_is_zero; /* --target-is-zero */
    size_t min_sparse;   /* -S, 0 = default */
    bool no_sparse;      /* -S 0 */
    const char *backing, *backing_fmt; /* -B, -F */
    unsigned depth;      /* -m: writes in flight to rbd: */
};

/* convert -n: the existing output, locked by @out, opened in place in
 * the format of -O.  Like qemu-img, it must be at least @size bytes. */
static struct rb_image *open_existing(struct job *j, struct rb_output *out, uint64_t size,
                                      struct rb_error *err)
{
    struct rb_open_opts oo = {.format = j->out_fmt, .write = true};
    struct rb_image *img;
    int fd;

    if ((fd = rb_output_dup(out, err)) < 0)
        return NULL;
    img = rb_image_open_fd(j->dst_path, fd, &oo, err);
    if (img && img->size < size) {
        rb_error_set(err, ENOSPC,
                     "%s: output file is smaller than input file (%" PRIu64 " < %" PRIu64
                     " bytes)",
                     j->dst_path, img->size, size);
        rb_image_close(img);
        return NULL;
    }
    if (img && out->blockdev && img->size > size)
        img->size = size; /* convert writes the source's bytes, no more */
    return img;
}

/* convert -B BACKING -F FMT: a qcow2 backed by BACKING holding only what
 * SRC changes, written by the delta engine.  BACKING is stored as given
 * and, like every backing name, read from DST's folder. */
static int run_backed(struct job *j, char *optstr)
{
    struct rb_delta_opts o = {
        .base_format = j->backing_fmt,
        .new_format = j->src_fmt,
        .backing_name = j->backing,
        .create_options = optstr,
        .force_share = j->force_share,
    };
    struct rb_error err = {0};
    const char *slash = strrchr(j->dst_path, '/');
    char *base = NULL;
    int ret;

    if (j->backing[0] != '/' && slash) {
        int n = (int)(slash - j->dst_path);
        if (asprintf(&base, "%.*s/%s", n, j->dst_path, j->backing) < 0) {
            complain("convert: out of memory");
            return 1;
        }
    }
    ret = rb_delta(base ? base : j->backing, j->src_path, j->dst_path, &o, NULL, &err);
    free(base);
    if (ret < 0) {
        complain("convert: %s", rb_error_msg(&err, ret));
        return 1;
    }
    return 0;
}

static void skipped_bitmap(void *opaque, const char *name)
{
    complain("convert: warning: %s: skipping inconsistent bitmap '%s'",
             (const char *)opaque, name);
}

/* convert --bitmaps: the finished output reopened as a qcow2 image (on
 * the output's locked file) to receive the source's bitmaps. */
static int copy_bitmaps(struct job *j, struct rb_output *out, struct rb_image *src,
                        struct rb_error *err)
{
    struct rb_open_opts oo = {.format = "qcow2", .write = true, .no_backing = true};
    struct rb_image *dst;
    int fd, ret;

    if ((fd = rb_output_dup(out, err)) < 0)
        return fd;
    dst = rb_image_open_fd(j->dst_path, fd, &oo, err);
    if (!dst)
        return -EIO;
    ret = rb_qcow2_bitmaps_copy(dst, src, j->skip_broken, skipped_bitmap,
                                (void *)j->src_path, err);
    if (ret == 0)
        ret = rb_image_flush(dst, err);
    rb_image_close(dst);
    return ret;
}

static int run(struct job *j)
{
    struct rb_open_opts so = {.format = j->src_fmt, .force_share = j->force_share};
    struct rb_error err = {0};
    struct rb_image *src, *dst = NULL;
    struct rb_output *out = NULL;
    struct progress *prog = NULL;
    struct rb_copy_opts co = {0};
    uint64_t before = 0, after = 0;
    bool zeroed = true, raw = strcmp(j->out_fmt, "raw") == 0;
    int ret, fd;

    src = rb_image_open(j->src_path, &so, &err);
    if (!src) {
        complain("convert: cannot open source: %s", rb_error_msg(&err, -EIO));
        return 1;
    }
    if (rb_rbd_is_name(j->dst_path)) {
        ret = convert_to_rbd(src, j->dst_path, j->no_create, j->depth, j->progress);
        rb_image_close(src);
        return ret;
    }
    if (!raw && !j->no_create) {
        /* options first: a refused option must not cost the output */
        j->qo.size = src->size;
        j->qo.size_set = true;
        ret = rb_qcow2_check_opts(&j->qo, &err);
        if (ret == 0)
            ret = rb_copy_count_data(src, j->qo.cluster_bytes, &j->qo.data_bytes_hint, &err);
        if (ret < 0)
            goto fail;
        if (j->qo.data_bytes_hint == 0)
            j->qo.data_bytes_hint = 1; /* 0 would mean "unknown" */
    }
    /* --bitmaps: refused before the output exists, as qemu-img does */
    if (j->bitmaps && (ret = rb_qcow2_bitmaps_copy_check(src, j->skip_broken, &err)) < 0)
        goto fail;
    ret = source_size(j->src_path, src, &before);
    /* The output is never the source nor a layer of its chain; an
     * existing file is locked before it is emptied. */
    out = rb_output_open(j->dst_path, &src, 1,
                         j->no_create ? RB_OUTPUT_IN_PLACE | RB_OUTPUT_BLOCKDEV
                         : raw        ? RB_OUTPUT_BLOCKDEV
                                      : 0,
                         &err);
    if (!out) {
        ret = -EIO;
        goto fail;
    }
    if (j->no_create) {
        dst = open_existing(j, out, src->size, &err);
        zeroed = j->target_is_zero;
    } else if (raw) {
        dst = make_raw(out, src->size, &zeroed, &err);
    } else if ((fd = rb_output_dup(out, &err)) >= 0) {
        dst = rb_qcow2_stream_create(fd, j->dst_path, &j->qo, &err);
    }
    if (!dst) {
        ret = -EIO;
        goto fail;
    }
    prog = progress_new(j->progress, src->size);
    co.dst_zeroed = zeroed;
    co.compress = j->compress;
    co.min_sparse = j->min_sparse;
    co.no_sparse = j->no_sparse;
    co.progress = on_progress;
    co.opaque = prog;
    ret = rb_copy_image(src, dst, &co, &err);
    if (ret == 0)
        ret = rb_image_flush(dst, &err);
    if (ret == 0 && source_size(j->src_path, src, &after) == 0 && after != before)
        ret = rb_error_set(&err, EIO,
                           "%s: source changed size while converting (%" PRIu64
                           " -> %" PRIu64 " bytes)",
                           j->src_path, before, after);
    progress_done(prog);
    if (ret < 0)
        goto fail;
    rb_image_close(dst);
    dst = NULL;
    if (j->bitmaps && (ret = copy_bitmaps(j, out, src, &err)) < 0)
        goto fail;
    rb_output_close(out, false);
    rb_image_close(src);
    return 0;
fail:
    complain("convert: %s%s", rb_error_msg(&err, ret), rb_output_fate(out));
    rb_image_close(dst);
    rb_output_close(out, true);
    rb_image_close(src);
    return 1;
}

int cmd_convert(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"force-share", no_argument, NULL, 'U'},
        {"bitmaps", no_argument, NULL, 0x100},
        {"skip-broken-bitmaps", no_argument, NULL, 0x101},
        {"target-is-zero", no_argument, NULL, 0x102},
        {NULL, 0, NULL, 0},
    };
    struct rb_error err = {0};
    struct job j = {.out_fmt = "raw"};
    char *optstr = NULL;
    int c, ret = 1;

    if (rbd_diff_wanted(argc, argv, "-f"))
        return cmd_convert_rbd_diff(argc, argv);
    rb_qcow2_create_opts_init(&j.qo);
    while ((c = getopt_long(argc, argv, ":f:O:o:cpqUhnm:S:B:F:", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': j.src_fmt = optarg; break;
        case 'O': j.out_fmt = optarg; break;
        case 'o':
            free(optstr);
            optstr = strdup(optarg);
            if (!optstr || rb_qcow2_parse_options(optstr, &j.qo, &err) < 0) {
                complain("convert: %s", rb_error_msg(&err, -ENOMEM));
                goto out;
            }
            break;
        case 'c': j.compress = true; break;
        case 'p': j.progress = true; break;
        case 'q': j.progress = false; break;
        case 'U': j.force_share = true; break;
        case 0x100: j.bitmaps = true; break;
        case 0x101: j.skip_broken = true; break;
        case 'n': j.no_create = true; break;
        case 'B': j.backing = optarg; break;
        case 'F': j.backing_fmt = optarg; break;
        case 0x102: j.target_is_zero = true; break;
        case 'S': {
            uint64_t v;
            if (rb_parse_size(optarg, &v) < 0 || v % 512 || v > (16u << 20)) {
                complain("convert: invalid -S '%s': sizes for sparse output are multiples "
                         "of 512 up to 16777216 (0: fully allocated output)",
                         optarg);
                goto out;
            }
            j.min_sparse = (size_t)v;
            j.no_sparse = v == 0;
            break;
        }
        case 'm':
            j.depth = (unsigned)strtoul(optarg, NULL, 10);
            if (j.depth < 1 || j.depth > 256) {
                complain("convert: -m must be 1..256, not '%s'", optarg);
                goto out;
            }
            break;
        case 'h': usage(stdout); ret = 0; goto out;
        default:
            bad_option("convert", argv, c);
            goto out;
        }
    }
    if (argc - optind != 2) {
        bad_usage("convert", "needs SRC DST");
        goto out;
    }
    j.src_path = argv[optind];
    j.dst_path = argv[optind + 1];
    if (rb_rbd_is_name(j.dst_path) && strcmp(j.out_fmt, "qcow2") == 0) {
        complain("convert: an rbd: output holds raw bytes (-O raw or -O rbd)");
        goto out;
    }
    if (rb_rbd_is_name(j.dst_path) && strcmp(j.out_fmt, "rbd") == 0)
        j.out_fmt = "raw";
    if (j.depth && !rb_rbd_is_name(j.dst_path)) {
        complain("convert: -m is for an rbd: output");
        goto out;
    }
    if (rb_rbd_is_name(j.dst_path) && (j.target_is_zero || j.min_sparse || j.no_sparse)) {
        complain("convert: --target-is-zero and -S are not supported for an rbd: output");
        goto out;
    }
    if (j.target_is_zero && !j.no_create) {
        complain("convert: --target-is-zero requires use of -n");
        goto out;
    }
    if (j.no_create && optstr) {
        complain("convert: -o cannot be used with -n (the output exists)");
        goto out;
    }
    if (strcmp(j.out_fmt, "raw") != 0 && strcmp(j.out_fmt, "qcow2") != 0) {
        complain("convert: output format '%s' is not supported (raw, qcow2)", j.out_fmt);
        goto out;
    }
    if (strcmp(j.out_fmt, "raw") == 0 && (j.compress || optstr)) {
        complain("convert: -c and -o need -O qcow2");
        goto out;
    }
    if (j.skip_broken && !j.bitmaps) {
        complain("convert: --skip-broken-bitmaps needs --bitmaps");
        goto out;
    }
    if (j.bitmaps && strcmp(j.out_fmt, "qcow2") != 0) {
        complain("convert: --bitmaps needs -O qcow2 (format '%s' cannot store bitmaps)",
                 j.out_fmt);
        goto out;
    }
    if (j.qo.backing_file || j.qo.preallocation != RB_QCOW2_PREALLOC_OFF) {
        complain("convert: backing_file and preallocation are not supported by convert");
        goto out;
    }
    if (j.backing_fmt && !j.backing) {
        complain("convert: -F needs -B");
        goto out;
    }
    if (j.backing) {
        if (strcmp(j.out_fmt, "qcow2") != 0) {
            complain("convert: backing file not supported for file format '%s'", j.out_fmt);
            goto out;
        }
        if (!j.backing_fmt) {
            complain("convert: use of backing file requires explicit backing format (-F)");
            goto out;
        }
        if (j.no_create || j.compress || j.bitmaps || j.min_sparse || j.no_sparse) {
            complain("convert: -B cannot be used with -n, -c, -S or --bitmaps");
            goto out;
        }
        ret = run_backed(&j, optstr);
        goto out;
    }
    ret = run(&j);
out:
    free(optstr);
    return ret;
}
