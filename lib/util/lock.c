/* SPDX-License-Identifier: MIT */
/*
 * lock.c - QEMU-compatible image locks (fcntl OFD locks on lock bytes).
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>

#include "rblock/image.h"

/*
 * Image locking, compatible with QEMU (block/file-posix.c, raw_apply_lock_bytes
 * and raw_check_lock_bytes): fcntl OFD locks on single bytes of the image
 * file.  A user of permission n holds a shared lock on byte 100 + n; a user
 * that does not let others have permission n holds one on byte 200 + n.
 * Permissions: 0 consistent read, 1 write, 2 write unchanged, 3 resize.
 * After taking its own locks, an opener fails when another open file
 * description locks byte 200 + n for a permission n it wants, or byte
 * 100 + n for one it refuses to share.  So a second writer (rblock or
 * qemu) is refused, and so is qemu-img info without -U on an image being
 * written (as with qemu-nbd).  OFD locks belong to the open file
 * description: they go away when the driver closes the fd.
 */
#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200
#define PERM_CONSISTENT_READ 0
#define PERM_WRITE 1
#define PERM_RESIZE 3

static int lock_byte(int fd, int cmd, short type, off_t byte, short *found)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};

    if (fcntl(fd, cmd, &fl) < 0)
        return -errno;
    if (found)
        *found = fl.l_type;
    return 0;
}

int rb_image_lock(int fd, const char *path, bool write, struct rb_error *err)
{
    /* What we use and what we refuse to share, as QEMU's format drivers
     * do for their file (metadata must stay consistent): a writer uses
     * read, write and resize; every opener refuses others write and resize. */
    static const int wr_use[] = {PERM_CONSISTENT_READ, PERM_WRITE, PERM_RESIZE};
    static const int rd_use[] = {PERM_CONSISTENT_READ};
    static const int unshare[] = {PERM_WRITE, PERM_RESIZE};
    const int *use = write ? wr_use : rd_use;
    size_t n_use = write ? 3 : 1;
    int ret = 0;

    for (size_t i = 0; i < n_use && ret == 0; i++)
        ret = lock_byte(fd, F_OFD_SETLK, F_RDLCK, LOCK_PERM_BASE + use[i], NULL);
    for (size_t i = 0; i < 2 && ret == 0; i++)
        ret = lock_byte(fd, F_OFD_SETLK, F_RDLCK, LOCK_SHARED_BASE + unshare[i], NULL);
    for (size_t i = 0; i < n_use && ret == 0; i++) {
        short t = F_UNLCK;
        ret = lock_byte(fd, F_OFD_GETLK, F_WRLCK, LOCK_SHARED_BASE + use[i], &t);
        if (ret == 0 && t != F_UNLCK)
            ret = -EAGAIN;
    }
    for (size_t i = 0; i < 2 && ret == 0; i++) {
        short t = F_UNLCK;
        ret = lock_byte(fd, F_OFD_GETLK, F_WRLCK, LOCK_PERM_BASE + unshare[i], &t);
        if (ret == 0 && t != F_UNLCK)
            ret = -EAGAIN;
    }
    /* Where the file system has no OFD locks, go on unlocked (QEMU does
     * the same, with a warning). */
    if (ret == -EINVAL || ret == -ENOTSUP || ret == -ENOLCK)
        return 0;
    if (ret == -EAGAIN || ret == -EACCES)
        return rb_error_set(err, EAGAIN, "%s: image is locked by another process "
                            "(is it in use by rblock serve or qemu?)", path);
    if (ret < 0)
        return rb_error_set(err, -ret, "%s: cannot lock the image: %s", path,
                            strerror(-ret));
    return 0;
}
