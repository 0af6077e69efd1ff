/* SPDX-License-Identifier: MIT */
/*
 * path.h - file names that come from disk (backing and data file names in
 * an image header): resolving them as QEMU does, and opening them without
 * trusting what they name.
 */
#ifndef RBLOCK_UTIL_PATH_H
#define RBLOCK_UTIL_PATH_H

#include <sys/stat.h>

#include "rblock/error.h"

/*
 * @name as an image at @file names it: absolute names stay, relative ones
 * are relative to the folder of @file (QEMU's bdrv_get_full_backing_filename
 * rule).  Returns a malloc'd string, or NULL when out of memory.
 */
char *rb_path_resolve(const char *file, const char *name);

/*
 * Open @path (O_RDONLY or O_RDWR in @flags; O_CLOEXEC is added) when it is
 * a regular file or a block device, and fill @st.  Anything else is
 * refused without waiting: a FIFO named by a hostile header would block an
 * open or a read forever, so the open is non-blocking until the type is
 * known.  Returns the fd, or -errno with @err set ("PATH: ...").
 */
int rb_open_untrusted(const char *path, int flags, struct stat *st, struct rb_error *err);

#endif
