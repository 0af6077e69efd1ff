/* SPDX-License-Identifier: MIT */
/* Placeholder: replaced by the real 'delta' command. */
#include "cmd.h"

int cmd_delta(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    complain("'delta' is not implemented yet");
    return 1;
}
