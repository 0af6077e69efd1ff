/* SPDX-License-Identifier: MIT */
/* Placeholder: replaced by the real 'info' command. */
#include "cmd.h"

int cmd_info(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    complain("'info' is not implemented yet");
    return 1;
}
