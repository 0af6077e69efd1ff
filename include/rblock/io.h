/* SPDX-License-Identifier: MIT */
/*
 * io.h - positional I/O on files and block devices.
 *
 * All offsets are uint64_t byte offsets; lengths in memory are size_t.
 * Every function loops over short transfers and EINTR.  Thread-safe: no
 * function touches a file position.
 */
#ifndef RBLOCK_IO_H
#define RBLOCK_IO_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "rblock/error.h"

/* Read exactly @len bytes at @off.  Bytes past the end of the file read as
 * zeros (a short file is not an error: a qcow2 may end before its last
 * cluster).  Returns 0 or -errno. */
int rb_io_pread(int fd, void *buf, size_t len, uint64_t off);

/* Read exactly @len bytes at @off; reaching EOF first is -EIO. */
int rb_io_pread_exact(int fd, void *buf, size_t len, uint64_t off);

/* Write exactly @len bytes at @off.  Returns 0 or -errno (-ENOSPC...). */
int rb_io_pwrite(int fd, const void *buf, size_t len, uint64_t off);

/* fdatasync(), retried on EINTR.  Returns 0 or -errno. */
int rb_io_sync(int fd);

/* Size in bytes of a regular file or a block device (BLKGETSIZE64).
 * Returns 0 and sets *size, or -errno. */
int rb_io_size(int fd, uint64_t *size);

/* True when @fd is a block device. */
bool rb_io_is_blockdev(int fd);

/*
 * Find the extent containing @off in a (possibly sparse) file using
 * SEEK_DATA/SEEK_HOLE.  On return *is_data says whether [off, off+*len)
 * is data (true) or a hole (false); *len is at least 1 and at most
 * @max_len.  Where the file system cannot tell, everything is data.
 * @size is the file size (reads past it are holes).  Returns 0 or -errno.
 */
int rb_io_extent(int fd, uint64_t off, uint64_t max_len, uint64_t size,
                 bool *is_data, uint64_t *len);

/* Punch a hole (FALLOC_FL_PUNCH_HOLE|KEEP_SIZE) or, where the file system
 * cannot, write zeros.  Returns 0 or -errno. */
int rb_io_punch(int fd, uint64_t off, uint64_t len);

/* Ensure [off, off+len) reads as zeros: FALLOC_FL_ZERO_RANGE, else punch,
 * else write zeros.  When @may_unmap is false, prefer zero-range that
 * keeps the allocation.  Returns 0 or -errno. */
int rb_io_zero(int fd, uint64_t off, uint64_t len, bool may_unmap);

/* True when all @len bytes of @buf are zero.  Runs at memory speed. */
bool rb_is_zero(const void *buf, size_t len);

/* Overflow-checked addition: returns false when a + b overflows. */
static inline bool rb_add_ok(uint64_t a, uint64_t b, uint64_t *sum)
{
    return !__builtin_add_overflow(a, b, sum);
}

#endif
