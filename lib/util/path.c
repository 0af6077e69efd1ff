/* SPDX-License-Identifier: MIT */
/*
 * path.c - resolving and opening names that come from disk (path.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/path.h"

char *rb_path_resolve(const char *file, const char *name)
{
    const char *slash = strrchr(file, '/');
    size_t dir_len;
    char *out;

    if (name[0] == '/' || !slash)
        return strdup(name);
    dir_len = (size_t)(slash - file) + 1;
    out = malloc(dir_len + strlen(name) + 1);
    if (!out)
        return NULL;
    memcpy(out, file, dir_len);
    strcpy(out + dir_len, name);
    return out;
}

int rb_open_untrusted(const char *path, int flags, struct stat *st, struct rb_error *err)
{
    int fd = open(path, flags | O_CLOEXEC | O_NONBLOCK);

    if (fd < 0)
        return rb_error_errno(err, errno, "%s", path);
    if (fstat(fd, st) < 0 || (!S_ISREG(st->st_mode) && !S_ISBLK(st->st_mode))) {
        close(fd);
        return rb_error_set(err, EINVAL, "%s: not a regular file or block device", path);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}
