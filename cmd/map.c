/* SPDX-License-Identifier: MIT */
/* Placeholder: replaced by the real 'map' command. */
#include "cmd.h"

int cmd_map(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    complain("'map' is not implemented yet");
    return 1;
}
