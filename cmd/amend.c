/* SPDX-License-Identifier: MIT */
#include "cmd.h"
int cmd_amend(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return 1;
}
