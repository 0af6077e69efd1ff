/* SPDX-License-Identifier: MIT */
/* Placeholder: replaced by the real 'create' command. */
#include "cmd.h"

int cmd_create(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    complain("'create' is not implemented yet");
    return 1;
}
