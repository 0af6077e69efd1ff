/* SPDX-License-Identifier: MIT */
/* Placeholder: replaced by the real 'diff' command. */
#include "cmd.h"

int cmd_diff(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    complain("'diff' is not implemented yet");
    return 1;
}
