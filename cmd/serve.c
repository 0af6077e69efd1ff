/* SPDX-License-Identifier: MIT */
/* Placeholder: replaced by the real 'serve' command. */
#include "cmd.h"

int cmd_serve(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    complain("'serve' is not implemented yet");
    return 1;
}
