/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rblock/io.h"
#include "util/fault.h"

int rb_io_pread(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;

    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0) { /* past EOF reads as zeros */
            memset(p, 0, len);
            return 0;
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int rb_io_pread_exact(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;

    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int rb_io_sys_pwrite(int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;

    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -ENOSPC;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int rb_io_pwrite(int fd, const void *buf, size_t len, uint64_t off)
{
    if (__builtin_expect(rb_fault_on, 0))
        return rb_fault_write(RB_IO_OP_PWRITE, fd, buf, len, off, false);
    return rb_io_sys_pwrite(fd, buf, len, off);
}

int rb_io_sys_sync(int fd)
{
    while (fdatasync(fd) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

int rb_io_sync(int fd)
{
    if (__builtin_expect(rb_fault_on, 0))
        return rb_fault_sync(fd);
    return rb_io_sys_sync(fd);
}

void rb_io_writebehind(int fd, uint64_t *started, uint64_t end)
{
    /* Not counted by the fault layer: no durability is promised. */
    if (end < *started + RB_WRITEBEHIND_BYTES || end > INT64_MAX)
        return;
    (void)sync_file_range(fd, (off_t)*started, (off_t)(end - *started), SYNC_FILE_RANGE_WRITE);
    *started = end;
}

int rb_io_sys_truncate(int fd, uint64_t size)
{
    if (size > INT64_MAX)
        return -EFBIG;
    while (ftruncate(fd, (off_t)size) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

int rb_io_truncate(int fd, uint64_t size)
{
    if (__builtin_expect(rb_fault_on, 0))
        return rb_fault_write(RB_IO_OP_TRUNCATE, fd, NULL, size, 0, false);
    return rb_io_sys_truncate(fd, size);
}

bool rb_io_is_blockdev(int fd)
{
    struct stat st;

    return fstat(fd, &st) == 0 && S_ISBLK(st.st_mode);
}

int rb_io_size(int fd, uint64_t *size)
{
    struct stat st;

    if (fstat(fd, &st) < 0)
        return -errno;
    if (S_ISBLK(st.st_mode)) {
        uint64_t bytes;
        if (ioctl(fd, BLKGETSIZE64, &bytes) < 0)
            return -errno;
        *size = bytes;
        return 0;
    }
    if (!S_ISREG(st.st_mode))
        return -EINVAL;
    *size = (uint64_t)st.st_size;
    return 0;
}

int rb_io_extent(int fd, uint64_t off, uint64_t max_len, uint64_t size,
                 bool *is_data, uint64_t *len)
{
    off_t data, hole;
    uint64_t end;

    if (max_len == 0)
        return -EINVAL;
    if (off >= size) {
        *is_data = false;
        *len = max_len;
        return 0;
    }
    end = size - off < max_len ? size : off + max_len;
    data = lseek(fd, (off_t)off, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) { /* only a hole up to the end of the file */
            *is_data = false;
            *len = end - off;
            return 0;
        }
        /* the file system cannot tell: everything is data */
        *is_data = true;
        *len = end - off;
        return 0;
    }
    if ((uint64_t)data > off) {
        *is_data = false;
        *len = ((uint64_t)data < end ? (uint64_t)data : end) - off;
        return 0;
    }
    hole = lseek(fd, (off_t)off, SEEK_HOLE);
    if (hole < 0 || (uint64_t)hole <= off)
        hole = (off_t)end;
    *is_data = true;
    *len = ((uint64_t)hole < end ? (uint64_t)hole : end) - off;
    return 0;
}

static int write_zero_bytes(int fd, uint64_t off, uint64_t len)
{
    static const uint8_t zeros[65536];

    while (len > 0) {
        size_t n = len < sizeof(zeros) ? (size_t)len : sizeof(zeros);
        int ret = rb_io_sys_pwrite(fd, zeros, n, off);
        if (ret < 0)
            return ret;
        off += n;
        len -= n;
    }
    return 0;
}

int rb_io_sys_punch(int fd, uint64_t off, uint64_t len)
{
    if (len == 0)
        return 0;
    if (!rb_io_is_blockdev(fd) &&
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                  (off_t)len) == 0)
        return 0;
    return write_zero_bytes(fd, off, len);
}

int rb_io_punch(int fd, uint64_t off, uint64_t len)
{
    if (__builtin_expect(rb_fault_on, 0) && len > 0)
        return rb_fault_write(RB_IO_OP_PUNCH, fd, NULL, len, off, true);
    return rb_io_sys_punch(fd, off, len);
}

int rb_io_sys_zero(int fd, uint64_t off, uint64_t len, bool may_unmap)
{
    if (len == 0)
        return 0;
    if (rb_io_is_blockdev(fd)) {
        uint64_t range[2] = {off, len};
        if (ioctl(fd, BLKZEROOUT, range) == 0)
            return 0;
        return write_zero_bytes(fd, off, len);
    }
    if (may_unmap &&
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                  (off_t)len) == 0)
        return 0;
    if (fallocate(fd, FALLOC_FL_ZERO_RANGE, (off_t)off, (off_t)len) == 0)
        return 0;
    return write_zero_bytes(fd, off, len);
}

int rb_io_zero(int fd, uint64_t off, uint64_t len, bool may_unmap)
{
    if (__builtin_expect(rb_fault_on, 0) && len > 0)
        return rb_fault_write(RB_IO_OP_ZERO, fd, NULL, len, off, may_unmap);
    return rb_io_sys_zero(fd, off, len, may_unmap);
}

bool rb_is_zero(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    size_t head = len < 16 ? len : 16;

    /* Check a short prefix byte by byte, then compare the buffer with
     * itself shifted by 16 bytes: memcmp runs at memory speed. */
    for (size_t i = 0; i < head; i++) {
        if (p[i])
            return false;
    }
    if (len <= 16)
        return true;
    return memcmp(p, p + 16, len - 16) == 0;
}
