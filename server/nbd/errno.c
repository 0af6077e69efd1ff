/* SPDX-License-Identifier: MIT */
/* errno.c - the one mapping from errno to NBD error values (proto.md,
 * "Error values"). */
#include <errno.h>

#include "nbd/nbd.h"
#include "nbd/proto.h"

uint32_t nbd_errno(int neg_errno)
{
    switch (-neg_errno) {
    case 0:
        return 0;
    case EPERM:
    case EROFS: /* the spec: EPERM for writes to a read-only export */
    case EACCES:
        return NBD_EPERM;
    case ENOMEM:
        return NBD_ENOMEM;
    case EINVAL:
    case ERANGE:
        return NBD_EINVAL;
    case ENOSPC:
    case EDQUOT: /* the spec: map EDQUOT and EFBIG to ENOSPC */
    case EFBIG:
        return NBD_ENOSPC;
    case EOVERFLOW:
        return NBD_EOVERFLOW;
    case ENOTSUP:
        return NBD_ENOTSUP;
    case ESHUTDOWN:
        return NBD_ESHUTDOWN;
    default:
        return NBD_EIO;
    }
}
