/* SPDX-License-Identifier: MIT */
/* convert_rbd.h - convert into an RBD image (convert_rbd.c). */
#ifndef RBLOCK_CMD_CONVERT_RBD_H
#define RBLOCK_CMD_CONVERT_RBD_H

#include <stdbool.h>

#include "rblock/image.h"

/* Copy @src into the RBD image @dst_name: created unless @existing (-n),
 * @depth writes in flight (0 = default).  Prints errors; returns the exit
 * status (0 or 1).  Does not close @src. */
int convert_to_rbd(struct rb_image *src, const char *dst_name, bool existing, unsigned depth,
                   bool show_progress);

#endif
