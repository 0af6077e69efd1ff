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
 * qemu) is refused, and so is a reader (rblock info, qemu-img info without
 * -U) of an image being written, and a writer of an image being read.
 * OFD locks belong to the open file description: they go away when the
 * driver closes the fd.  Two descriptions of one process conflict as two
 * processes do, so a process must not open for reading a file it holds
 * open for writing (the server inspects its own open image instead).
 */
#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200
#define PERM_CONSISTENT_READ 0
#define PERM_WRITE 1
#define PERM_RESIZE 3

static const char *const perm_name[] = {"consistent read", "write", "write unchanged",
                                        "resize"};

static int lock_byte(int fd, int cmd, short type, off_t byte, short *found)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};

    if (fcntl(fd, cmd, &fl) < 0)
        return -errno;
    if (found)
        *found = fl.l_type;
    return 0;
}

/* -EAGAIN when another open file description holds a lock on @byte. */
static int held_elsewhere(int fd, off_t byte)
{
    short t = F_UNLCK;
    int ret = lock_byte(fd, F_OFD_GETLK, F_WRLCK, byte, &t);

    if (ret == 0 && t != F_UNLCK)
        ret = -EAGAIN;
    return ret;
}

static int lock_perms(int fd, const char *path, enum rb_lock_mode mode,
                      struct rb_error *err)
{
    /* What we use and what we refuse to share, as QEMU's format drivers
     * do for their file (metadata must stay consistent): a writer uses
     * read, write and resize; a reader uses read; both refuse others
     * write and resize.  A reader with force-share refuses nothing and
     * checks nothing: it only says that it reads (qemu-img -U). */
    static const int wr_use[] = {PERM_CONSISTENT_READ, PERM_WRITE, PERM_RESIZE};
    static const int rd_use[] = {PERM_CONSISTENT_READ};
    static const int unshare[] = {PERM_WRITE, PERM_RESIZE};
    const int *use = mode == RB_LOCK_WRITE ? wr_use : rd_use;
    size_t n_use = mode == RB_LOCK_WRITE ? 3 : 1;
    size_t n_unshare = mode == RB_LOCK_SHARE_ALL ? 0 : 2;
    const char *what = NULL;
    bool shared = false;
    int ret = 0;

    for (size_t i = 0; i < n_use && ret == 0; i++)
        ret = lock_byte(fd, F_OFD_SETLK, F_RDLCK, LOCK_PERM_BASE + use[i], NULL);
    for (size_t i = 0; i < n_unshare && ret == 0; i++)
        ret = lock_byte(fd, F_OFD_SETLK, F_RDLCK, LOCK_SHARED_BASE + unshare[i], NULL);
    if (mode == RB_LOCK_SHARE_ALL)
        goto done;
    /* QEMU's wording: "write" lock = we cannot get the permission (someone
     * refuses to share it); shared "write" lock = we cannot refuse it
     * (someone uses it). */
    for (size_t i = 0; i < n_use && ret == 0; i++)
        if ((ret = held_elsewhere(fd, LOCK_SHARED_BASE + use[i])) == -EAGAIN)
            what = perm_name[use[i]];
    for (size_t i = 0; i < n_unshare && ret == 0; i++)
        if ((ret = held_elsewhere(fd, LOCK_PERM_BASE + unshare[i])) == -EAGAIN) {
            what = perm_name[unshare[i]];
            shared = true;
        }
done:
    /* Where the file system has no OFD locks, go on unlocked (QEMU does
     * the same, with a warning). */
    if (ret == -EINVAL || ret == -ENOTSUP || ret == -ENOLCK)
        return 0;
    if (ret == -EAGAIN || ret == -EACCES)
        return rb_error_set(err, EAGAIN, "%s: image is locked by another process "
                            "(is it in use by rblock serve or qemu?): failed to get %s\"%s\" "
                            "lock%s", path, shared ? "shared " : "",
                            what ? what : "consistent read",
                            mode == RB_LOCK_READ ? "; -U/--force-share reads it anyway" : "");
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot lock the image", path);
    return 0;
}

int rb_image_lock_mode(int fd, const char *path, enum rb_lock_mode mode,
                       struct rb_error *err)
{
    return lock_perms(fd, path, mode, err);
}

int rb_image_lock(int fd, const char *path, bool write, struct rb_error *err)
{
    return lock_perms(fd, path, write ? RB_LOCK_WRITE : RB_LOCK_READ, err);
}
