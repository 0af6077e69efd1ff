/* SPDX-License-Identifier: MIT */
/*
 * output.c - opening the file a command writes, so that nothing it was not
 * asked to write is ever changed (contract in include/rblock/output.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rblock/io.h"
#include "rblock/output.h"

/* An existing path is looked at again when it vanishes or appears between
 * the stat and the open; a few rounds are plenty. */
#define OPEN_TRIES 4

static const char *kind_of(mode_t mode)
{
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISFIFO(mode))
        return "a FIFO";
    if (S_ISCHR(mode))
        return "a character device";
    if (S_ISSOCK(mode))
        return "a socket";
    if (S_ISBLK(mode))
        return "a block device";
    return "not a regular file";
}

static int check_stat(const char *path, const struct stat *st,
                      struct rb_image *const *inputs, size_t n_inputs,
                      struct rb_error *err)
{
    for (size_t i = 0; i < n_inputs; i++) {
        unsigned depth = 0;

        for (struct rb_image *l = inputs[i]; l; l = l->backing, depth++) {
            if (l->dev != st->st_dev || l->ino != st->st_ino)
                continue;
            if (depth == 0)
                return rb_error_set(err, EINVAL,
                                    "%s: is the input '%s'; refusing to overwrite it",
                                    path, l->filename);
            return rb_error_set(err, EINVAL,
                                "%s: is '%s', layer %u of the backing chain of the "
                                "input '%s'; refusing to overwrite it",
                                path, l->filename, depth, inputs[i]->filename);
        }
    }
    return 0;
}

int rb_output_check_inputs(const char *path, struct rb_image *const *inputs,
                           size_t n_inputs, struct rb_error *err)
{
    struct stat st;

    /* stat follows symlinks: a link to an input is that input */
    if (stat(path, &st) < 0)
        return 0;
    return check_stat(path, &st, inputs, n_inputs, err);
}

static struct rb_output *new_output(const char *path, int fd, const struct stat *st,
                                    bool created, struct rb_error *err)
{
    struct rb_output *out = calloc(1, sizeof(*out));

    if (out)
        out->path = strdup(path);
    if (!out || !out->path) {
        free(out);
        rb_error_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    out->fd = fd;
    out->created = created;
    out->blockdev = S_ISBLK(st->st_mode);
    out->dev = st->st_dev;
    out->ino = st->st_ino;
    return out;
}

/* Lock @fd for writing; QEMU's words when another process holds it. */
static int lock_output(int fd, const char *path, struct rb_error *err)
{
    int ret = rb_image_lock(fd, path, true, err);

    if (ret == -EAGAIN)
        rb_error_reset(err, EAGAIN,
                       "%s: failed to get \"write\" lock: is it in use by rblock serve "
                       "or qemu? (left unchanged)",
                       path);
    return ret;
}

/* A path that did not exist: create it, never following a link or
 * opening something that appeared meanwhile (O_EXCL). */
static struct rb_output *create_new(const char *path, int *again, struct rb_error *err)
{
    struct rb_output *out;
    struct stat st;
    int fd;

    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        if (errno == EEXIST) {
            *again = 1;
            return NULL;
        }
        rb_error_errno(err, errno, "%s: cannot create", path);
        return NULL;
    }
    if (fstat(fd, &st) < 0 || lock_output(fd, path, err) < 0 ||
        !(out = new_output(path, fd, &st, true, err))) {
        rb_error_set(err, errno ? errno : EIO, "%s: cannot set up the new file", path);
        unlink(path);
        close(fd);
        return NULL;
    }
    return out;
}

/* An existing file or block device: open without truncating, make sure
 * it is still what was looked at, lock, and only then empty a file. */
static struct rb_output *open_existing(const char *path, const struct stat *st,
                                       unsigned flags, int *again, struct rb_error *err)
{
    struct rb_output *out;
    struct stat now;
    int fd, ret;

    /* O_NONBLOCK: should a FIFO have replaced the file, the open must not
     * wait for a reader; it is refused by the fstat below. */
    fd = open(path, O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT) {
            *again = 1;
            return NULL;
        }
        rb_error_errno(err, errno, "%s: cannot open for writing", path);
        return NULL;
    }
    if (fstat(fd, &now) < 0 || now.st_dev != st->st_dev || now.st_ino != st->st_ino) {
        close(fd);
        *again = 1;
        return NULL;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    if (lock_output(fd, path, err) < 0) {
        close(fd);
        return NULL;
    }
    out = new_output(path, fd, &now, false, err);
    if (!out) {
        close(fd);
        return NULL;
    }
    if (out->blockdev) {
        ret = rb_io_size(fd, &out->dev_bytes);
        if (ret < 0) {
            rb_error_errno(err, -ret, "%s: cannot get the size of the block device",
                           path);
            rb_output_close(out, false);
            return NULL;
        }
        return out;
    }
    if (flags & RB_OUTPUT_IN_PLACE)
        return out;
    ret = rb_io_truncate(fd, 0);
    if (ret < 0) {
        rb_error_errno(err, -ret, "%s: cannot truncate", path);
        rb_output_close(out, false);
        return NULL;
    }
    out->truncated = true;
    return out;
}

struct rb_output *rb_output_open(const char *path, struct rb_image *const *inputs,
                                 size_t n_inputs, unsigned flags, struct rb_error *err)
{
    for (int tries = 0; tries < OPEN_TRIES; tries++) {
        struct rb_output *out;
        struct stat st;
        int again = 0;

        if (stat(path, &st) < 0) {
            if (errno != ENOENT) {
                rb_error_errno(err, errno, "%s", path);
                return NULL;
            }
            if (flags & RB_OUTPUT_IN_PLACE) {
                rb_error_errno(err, ENOENT, "%s", path);
                return NULL;
            }
            if (lstat(path, &st) == 0) {
                rb_error_set(err, ENOENT,
                             "%s: is a symbolic link to a missing file; "
                             "refusing to create its target",
                             path);
                return NULL;
            }
            out = create_new(path, &again, err);
        } else {
            if (check_stat(path, &st, inputs, n_inputs, err) < 0)
                return NULL;
            if (!S_ISREG(st.st_mode) &&
                !(S_ISBLK(st.st_mode) && (flags & RB_OUTPUT_BLOCKDEV))) {
                rb_error_set(err, EINVAL,
                             "%s: is %s; an output must be a regular file%s (left "
                             "unchanged)",
                             path, kind_of(st.st_mode),
                             flags & RB_OUTPUT_BLOCKDEV ? " or a block device" : "");
                return NULL;
            }
            out = open_existing(path, &st, flags, &again, err);
        }
        if (out || !again)
            return out;
    }
    rb_error_set(err, EAGAIN, "%s: keeps changing while being opened", path);
    return NULL;
}

int rb_output_size(struct rb_output *out, uint64_t bytes, struct rb_error *err)
{
    int ret;

    if (out->blockdev) {
        if (bytes > out->dev_bytes)
            return rb_error_set(err, ENOSPC,
                                "%s: block device of %" PRIu64 " bytes is too small for "
                                "%" PRIu64 " bytes",
                                out->path, out->dev_bytes, bytes);
        return 0;
    }
    ret = rb_io_truncate(out->fd, bytes);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot resize to %" PRIu64 " bytes",
                              out->path, bytes);
    return 0;
}

int rb_output_dup(struct rb_output *out, struct rb_error *err)
{
    int fd = fcntl(out->fd, F_DUPFD_CLOEXEC, 0);

    if (fd < 0)
        return rb_error_errno(err, errno, "%s", out->path);
    out->handed_out = true;
    return fd;
}

const char *rb_output_fate(const struct rb_output *out)
{
    if (!out)
        return "";
    if (out->created)
        return " (partial output removed)";
    if (out->truncated)
        return " (the existing output file was emptied and holds an incomplete image)";
    if (out->blockdev && out->handed_out)
        return " (the block device may hold an incomplete image)";
    return "";
}

void rb_output_close(struct rb_output *out, bool failed)
{
    struct stat st;

    if (!out)
        return;
    /* Remove only the file this run made, and only while the name still
     * leads to it: unlinked under the lock, so no other rblock or QEMU
     * can have opened it for writing meanwhile. */
    if (failed && out->created && lstat(out->path, &st) == 0 && st.st_dev == out->dev &&
        st.st_ino == out->ino)
        unlink(out->path);
    close(out->fd);
    free(out->path);
    free(out);
}
