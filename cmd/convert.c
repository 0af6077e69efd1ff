/* SPDX-License-Identifier: MIT */
/*
 * convert.c - rblock convert [-f FMT] [-O raw|qcow2] [-o OPTIONS] [-c] [-p] SRC DST
 *
 * Opens the source (its whole chain), makes the destination, runs the copy
 * engine (lib/ops/convert.c) and flushes.  A destination file this command
 * created is removed on any failure, so a partial output never survives.
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
#include "rblock/io.h"
#include "rblock/ops.h"
#include "rblock/qcow2-create.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: rblock convert [-f FMT] [-O raw|qcow2] [-o OPTIONS] [-c] [-p] [-q] "
               "SRC DST\n\n"
               "  -f FMT      source format (raw, qcow2; probed by default)\n"
               "  -O FMT      output format (default raw)\n"
               "  -o OPTIONS  qcow2 options as for 'rblock create' (compat, cluster_size,\n"
               "              refcount_bits, lazy_refcounts, extended_l2, compression_type)\n"
               "  -c          compress the output clusters (qcow2; zlib, or zstd with\n"
               "              -o compression_type=zstd)\n"
               "  -p          show progress on a terminal\n");
}

static void on_progress(void *opaque, uint64_t done)
{
    progress_update(opaque, done);
}

/* Make a raw destination of @size bytes.  A block device is used as it is
 * (it must be large enough and is not removed on failure). */
static struct rb_image *make_raw(const char *path, uint64_t size, bool *created,
                                 bool *zeroed, struct rb_error *err)
{
    struct rb_open_opts oo = {.format = "raw", .write = true, .lock = true,
                              .sequential = true};
    struct stat st;
    int fd, ret;

    if (stat(path, &st) == 0 && S_ISBLK(st.st_mode)) {
        *zeroed = false;
        return rb_image_open(path, &oo, err);
    }
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rb_error_set(err, errno, "cannot create '%s': %s", path, strerror(errno));
        return NULL;
    }
    *created = true;
    *zeroed = true;
    if ((ret = rb_io_truncate(fd, size)) < 0) {
        rb_error_set(err, -ret, "%s: cannot resize to %" PRIu64 " bytes: %s", path, size,
                     strerror(-ret));
        close(fd);
        return NULL;
    }
    close(fd);
    return rb_image_open(path, &oo, err);
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
};

static int run(struct job *j)
{
    struct rb_open_opts so = {.format = j->src_fmt};
    struct rb_error err = {0};
    struct rb_image *src, *dst = NULL;
    struct progress *prog = NULL;
    struct rb_copy_opts co = {0};
    uint64_t before = 0, after = 0;
    bool created = false, zeroed = true;
    struct stat sst, dstst;
    int ret;

    src = rb_image_open(j->src_path, &so, &err);
    if (!src) {
        complain("convert: cannot open source: %s", rb_error_msg(&err, -EIO));
        return 1;
    }
    if (stat(j->dst_path, &dstst) == 0 && stat(j->src_path, &sst) == 0 &&
        sst.st_dev == dstst.st_dev && sst.st_ino == dstst.st_ino) {
        complain("convert: '%s' is the source itself", j->dst_path);
        rb_image_close(src);
        return 1;
    }
    ret = source_size(j->src_path, src, &before);
    if (strcmp(j->out_fmt, "raw") == 0) {
        dst = make_raw(j->dst_path, src->size, &created, &zeroed, &err);
    } else {
        /* qcow2 sizes are whole sectors, as qemu-img makes them */
        j->qo.size = (src->size + 511) & ~511ull;
        j->qo.size_set = true;
        ret = rb_copy_count_data(src, j->qo.cluster_bytes, &j->qo.data_bytes_hint, &err);
        if (ret < 0)
            goto fail;
        if (j->qo.data_bytes_hint == 0)
            j->qo.data_bytes_hint = 1; /* 0 would mean "unknown" */
        dst = rb_qcow2_stream_create(j->dst_path, &j->qo, &err);
        created = dst != NULL;
    }
    if (!dst) {
        ret = -EIO;
        goto fail;
    }
    prog = progress_new(j->progress, src->size);
    co.dst_zeroed = zeroed;
    co.compress = j->compress;
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
    rb_image_close(src);
    return 0;
fail:
    complain("convert: %s%s", rb_error_msg(&err, ret),
             created ? " (partial output removed)" : "");
    rb_image_close(dst);
    rb_image_close(src);
    if (created)
        unlink(j->dst_path);
    return 1;
}

int cmd_convert(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct rb_error err = {0};
    struct job j = {.out_fmt = "raw"};
    char *optstr = NULL;
    int c, ret = 1;

    rb_qcow2_create_opts_init(&j.qo);
    while ((c = getopt_long(argc, argv, "f:O:o:cpqh", longopts, NULL)) != -1) {
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
        case 'h': usage(stdout); ret = 0; goto out;
        default: usage(stderr); goto out;
        }
    }
    if (argc - optind != 2) {
        usage(stderr);
        goto out;
    }
    j.src_path = argv[optind];
    j.dst_path = argv[optind + 1];
    if (strcmp(j.out_fmt, "raw") != 0 && strcmp(j.out_fmt, "qcow2") != 0) {
        complain("convert: output format '%s' is not supported (raw, qcow2)", j.out_fmt);
        goto out;
    }
    if (strcmp(j.out_fmt, "raw") == 0 && (j.compress || optstr)) {
        complain("convert: -c and -o need -O qcow2");
        goto out;
    }
    if (j.qo.backing_file || j.qo.preallocation != RB_QCOW2_PREALLOC_OFF) {
        complain("convert: backing_file and preallocation are not supported by convert");
        goto out;
    }
    ret = run(&j);
out:
    free(optstr);
    return ret;
}
