/* SPDX-License-Identifier: MIT */
/* Placeholder: replaced by the real 'convert' command. */
#include "cmd.h"

int cmd_convert(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    complain("'convert' is not implemented yet");
    return 1;
}
