/* SPDX-License-Identifier: MIT */
/*
 * drivers.c - the formats rblock reads and writes, one row each.
 */
#include <stdio.h>
#include <string.h>

#include "image/drivers.h"

static const struct rb_driver drivers[] = {
    {"raw", rb_raw_open},
    {"qcow2", rb_qcow2_open},
};

const struct rb_driver *rb_driver_find(const char *name)
{
    for (size_t i = 0; i < sizeof(drivers) / sizeof(drivers[0]); i++)
        if (strcmp(drivers[i].name, name) == 0)
            return &drivers[i];
    return NULL;
}

const char *rb_driver_names(char *buf, size_t len)
{
    size_t n = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < sizeof(drivers) / sizeof(drivers[0]) && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%s", i ? ", " : "", drivers[i].name);
    return buf;
}
