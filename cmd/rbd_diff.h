/* SPDX-License-Identifier: MIT */
/* rbd_diff.h - Ceph export-diff streams in delta and convert (rbd_diff.c). */
#ifndef RBLOCK_CMD_RBD_DIFF_H
#define RBLOCK_CMD_RBD_DIFF_H

#include <stdbool.h>

/* Does argv give option @opt ("--output-format" or "-f") the value
 * "rbd-diff..."? */
bool rbd_diff_wanted(int argc, char **argv, const char *opt);

/* delta --output-format=rbd-diff and convert -f rbd-diff: exit status. */
int cmd_delta_rbd_diff(int argc, char **argv);
int cmd_convert_rbd_diff(int argc, char **argv);

#endif
