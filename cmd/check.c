/* SPDX-License-Identifier: MIT */
/* Placeholder: replaced by the real 'check' command. */
#include "cmd.h"

int cmd_check(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    complain("'check' is not implemented yet");
    return 1;
}
