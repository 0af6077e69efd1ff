/* SPDX-License-Identifier: MIT */
/*
 * convert_rbd.c - convert's output on Ceph RBD: "rblock convert SRC
 * rbd:POOL/IMAGE" creates the image (the source's size, the cluster's
 * default features) and copies only what the source holds, writes queued
 * -m deep; with -n it writes into an existing image (at least as large),
 * zeroing what the source does not hold.  An image this run created is
 * removed on failure; an existing one is never removed.  The output may
 * not be a layer of the source.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "convert_rbd.h"
#include "rblock/ops.h"
#include "rblock/rbd.h"

static void on_progress(void *opaque, uint64_t done)
{
    progress_update(opaque, done);
}

int convert_to_rbd(struct rb_image *src, const char *dst_name, bool existing, unsigned depth,
                   bool show_progress)
{
    struct rb_open_opts oo = {.write = true, .sequential = true, .queue_depth = depth};
    struct rb_rbd_name n;
    struct rb_error err = {0};
    struct rb_image *dst = NULL;
    struct rb_copy_opts co = {0};
    struct progress *prog = NULL;
    bool created = false;
    int ret;

    ret = rb_rbd_parse_name(dst_name, &n, &err);
    if (ret == 0 && n.snap[0])
        ret = rb_error_set(&err, EROFS, "%s: a snapshot is read-only; name the image", dst_name);
    for (struct rb_image *l = src; ret == 0 && l; l = l->backing)
        if (rb_rbd_same_image(l->filename, dst_name))
            ret = rb_error_set(&err, EINVAL, "%s: is '%s', an input; refusing to overwrite it",
                               dst_name, l->filename);
    if (ret == 0 && !existing) {
        ret = rb_rbd_create(dst_name, src->size, &err);
        created = ret == 0;
    }
    if (ret == 0 && !(dst = rb_image_open(dst_name, &oo, &err)))
        ret = -EIO;
    if (ret == 0 && dst->size < src->size)
        ret = rb_error_set(&err, ENOSPC, "%s: image is %" PRIu64 " bytes, smaller than the "
                           "source (%" PRIu64 " bytes)", dst_name, dst->size, src->size);
    if (ret == 0) {
        prog = progress_new(show_progress, src->size);
        co.dst_zeroed = created; /* a new image reads as zeros */
        co.progress = on_progress;
        co.opaque = prog;
        ret = rb_copy_image(src, dst, &co, &err);
        if (ret == 0)
            ret = rb_image_flush(dst, &err);
        progress_done(prog);
    }
    rb_image_close(dst);
    if (ret < 0) {
        struct rb_error rerr = {0};
        const char *fate = "";

        if (created)
            fate = rb_rbd_remove(dst_name, &rerr) == 0 ? " (partial image removed)"
                                                      : " (could not remove the partial image)";
        else if (existing && dst)
            fate = " (the existing image may hold an incomplete copy)";
        complain("convert: %s%s", rb_error_msg(&err, ret), fate);
        return 1;
    }
    return 0;
}
