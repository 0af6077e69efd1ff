/* SPDX-License-Identifier: MIT */
/*
 * open.c - opening an image by name: the untrusted open of each layer, its
 * QEMU-compatible lock, the format (given, or probed for the top layer
 * only), the driver from the table (drivers.c), and the backing chain
 * (names resolved as QEMU does, the recorded format, loops and depth
 * refused).  The only place above the drivers that knows them all.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image/drivers.h"
#include "rblock/image.h"
#include "rblock/io.h"
#include "rblock/rbd.h"
#include "util/path.h"

static struct rb_image *open_one(const char *path, const struct rb_open_opts *opts,
                                 bool top, struct rb_error *err)
{
    struct rb_open_opts o = *opts;
    const char *fmt;
    struct stat st;
    int fd;

    if (strncmp(path, "json:", 5) == 0) {
        rb_error_set(err, EINVAL, "%s: json: pseudo-filenames are not supported", path);
        return NULL;
    }
    if (!top) {
        o.write = false;
        o.snapshot = NULL; /* the top layer's snapshot only */
    }
    /* "rbd:" names an image of a Ceph cluster, not a file (QEMU's protocol
     * prefix); a file of that name is "./rbd:..." */
    if (rb_rbd_is_name(path) && o.snapshot) {
        rb_error_set(err, ENOTSUP, "%s: rbd images are served without internal snapshots "
                     "(-l)", path);
        return NULL;
    }
    if (rb_rbd_is_name(path))
        return rb_rbd_open(path, &o, err);
    /* a backing name from an untrusted header may name a FIFO or a device */
    fd = rb_open_untrusted(path, o.write ? O_RDWR : O_RDONLY, &st, err);
    if (fd < 0)
        return NULL;
    /* Every layer is locked as QEMU locks it, before a byte is read: the
     * top one written, or any one read, is refused while another process
     * writes it (or, for a writer, reads it); -U only marks it read. */
    if (rb_image_lock_mode(fd, path, o.write ? RB_LOCK_WRITE
                                    : o.force_share ? RB_LOCK_SHARE_ALL : RB_LOCK_READ,
                           err) < 0) {
        close(fd);
        return NULL;
    }
    fmt = o.format ? o.format : rb_image_probe(fd);
    const struct rb_driver *drv = rb_driver_find(fmt);
    struct rb_image *img;
    if (drv && o.snapshot && strcmp(fmt, "qcow2") != 0) {
        rb_error_set(err, ENOTSUP, "%s: format '%s' has no internal snapshots", path, fmt);
        close(fd);
        return NULL;
    } else if (drv) {
        img = drv->open(path, fd, &o, err);
    } else if (!o.format) {
        rb_error_set(err, EMEDIUMTYPE, "%s: this is a %s image; rblock reads qcow2 and raw "
                     "(use -f raw to read it as raw)", path, fmt);
        close(fd);
        return NULL;
    } else {
        char names[64];
        rb_error_set(err, EINVAL, "%s: unknown format '%s' (known: %s)", path, fmt,
                     rb_driver_names(names, sizeof(names)));
        close(fd);
        return NULL;
    }
    if (img) {
        img->dev = st.st_dev;
        img->ino = st.st_ino;
        img->format_guessed = !o.format;
    }
    return img;
}

/*
 * May the backing name "rbd:..." recorded in @cur (at @depth in the chain,
 * 1 = the image the user named) be followed?  Bytes on disk never choose
 * a host file or a format: the name must be plain (no ":conf=", ":id=",
 * ":timeout=": the cluster, its configuration file and the identity are
 * the user's), its recorded format raw (or none), and it must be the
 * backing of the image named on the command line, not of a backing file
 * (whose header the user never named).  See docs/safety.md.
 */
static int check_rbd_backing(struct rb_image *cur, unsigned depth, struct rb_error *err)
{
    struct rb_rbd_name n;

    if (depth > 1)
        return rb_error_set(err, EPERM, "%s: backing file name '%s' is an rbd: name in a "
                            "backing file; only the image named on the command line may "
                            "have an rbd backing", cur->filename, cur->backing_name);
    if (rb_rbd_parse_name(cur->backing_name, &n, err) < 0)
        return -EINVAL;
    if (n.has_options)
        return rb_error_reset(err, EPERM, "%s: backing file name '%s' carries options; an "
                              "rbd backing uses the user's ceph configuration "
                              "(CEPH_CONF), never one named on disk", cur->filename,
                              cur->backing_name);
    if (cur->backing_format && strcmp(cur->backing_format, "raw") != 0)
        return rb_error_set(err, EINVAL, "%s: backing file '%s' has format '%s'; an rbd "
                            "backing holds raw bytes", cur->filename, cur->backing_name,
                            cur->backing_format);
    return 0;
}

struct rb_image *rb_image_open_fd(const char *path, int fd, const struct rb_open_opts *opts,
                                  struct rb_error *err)
{
    const struct rb_driver *drv = opts->format ? rb_driver_find(opts->format) : NULL;

    if (!drv) {
        close(fd);
        rb_error_set(err, EINVAL, "%s: format '%s' is not one rblock writes", path,
                     opts->format ? opts->format : "(none)");
        return NULL;
    }
    return drv->open(path, fd, opts, err);
}

struct rb_image *rb_image_open(const char *path, const struct rb_open_opts *opts,
                               struct rb_error *err)
{
    static const struct rb_open_opts defaults;
    struct rb_image *top, *cur;
    unsigned max_depth, depth = 0;

    if (!opts)
        opts = &defaults;
    max_depth = opts->max_depth ? opts->max_depth : RB_MAX_CHAIN;
    top = open_one(path, opts, true, err);
    if (!top)
        return NULL;
    if (opts->no_backing) {
        /* say where the backing file would be, without opening it */
        if (top->backing_name && strncmp(top->backing_name, "json:", 5) != 0 &&
            !(top->backing_path = rb_path_resolve(top->filename, top->backing_name))) {
            rb_error_set(err, ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        return top;
    }

    for (cur = top; cur->backing_name; cur = cur->backing) {
        struct rb_open_opts bo = *opts;

        if (++depth > max_depth) {
            rb_error_set(err, ELOOP, "%s: backing chain is deeper than %u layers",
                         path, max_depth);
            goto fail;
        }
        if (strncmp(cur->backing_name, "json:", 5) == 0) {
            rb_error_set(err, EINVAL,
                         "%s: backing file name '%s' is a json: pseudo-filename, "
                         "which is not supported", cur->filename, cur->backing_name);
            goto fail;
        }
        if (rb_rbd_is_name(cur->backing_name)) {
            if (check_rbd_backing(cur, depth, err) < 0 ||
                !(cur->backing_path = strdup(cur->backing_name)) ||
                !(cur->backing = rb_rbd_open(cur->backing_name, &(struct rb_open_opts){
                                                 .format = "raw"}, err))) {
                rb_error_set(err, ENOMEM, "%s: out of memory", path);
                rb_error_prefix(err, "%s: cannot open backing file", cur->filename);
                goto fail;
            }
            break; /* an rbd image has no backing in rblock's chain */
        }
        cur->backing_path = rb_path_resolve(cur->filename, cur->backing_name);
        if (!cur->backing_path) {
            rb_error_set(err, ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        /* The recorded backing format is used and a backing file is never
         * probed: a raw disk a guest wrote can hold a qcow2 header naming
         * any host file.  Without a recorded format (images of QEMU
         * before -F was required) it is raw, and refused when it looks
         * like qcow2, with the fix in the message. */
        bo.format = cur->backing_format ? cur->backing_format : "raw";
        cur->backing = open_one(cur->backing_path, &bo, false, err);
        if (!cur->backing) {
            rb_error_prefix(err, "%s: cannot open backing file", cur->filename);
            goto fail;
        }
        const char *seen = cur->backing_format ? "raw" : rb_image_probe_layer(cur->backing);
        if (strcmp(seen, "qcow2") == 0) {
            rb_error_set(err, EINVAL, "%s: backing file '%s' has no recorded format and "
                         "holds a qcow2 header; backing files are not probed: record "
                         "its format with 'qemu-img rebase -u -b %s -F qcow2 %s' (or -F raw)",
                         cur->filename, cur->backing_name, cur->backing_name,
                         cur->filename);
            goto fail;
        }
        if (strcmp(seen, "raw") != 0) {
            rb_error_set(err, EMEDIUMTYPE, "%s: backing file '%s' has no recorded format "
                         "and is a %s image, which rblock does not read; backing files are "
                         "not probed: to read it as raw, record that with 'qemu-img rebase "
                         "-u -b %s -F raw %s'", cur->filename, cur->backing_name, seen,
                         cur->backing_name, cur->filename);
            goto fail;
        }
        /* A loop: the new layer is a file already in the chain. */
        for (struct rb_image *p = top; p != cur->backing; p = p->backing) {
            if (p->dev == cur->backing->dev && p->ino == cur->backing->ino) {
                rb_error_set(err, ELOOP, "%s: backing chain has a loop: '%s' is "
                             "its own backing file", path, cur->backing_path);
                goto fail;
            }
        }
    }
    return top;
fail:
    rb_image_close(top);
    return NULL;
}

