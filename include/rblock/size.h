/* SPDX-License-Identifier: MIT */
/*
 * size.h - parsing sizes as qemu-img does (command lines and -o size=).
 */
#ifndef RBLOCK_SIZE_H
#define RBLOCK_SIZE_H

#include <stdint.h>

/*
 * Parse @s as QEMU's qemu_strtosz (util/cutils.c), nothing allowed after
 * it: decimal bytes ("1000"), a decimal number with one suffix b/B (bytes),
 * k/K, m/M, g/G, t/T, p/P, e/E (powers of 1024), also with a fraction that
 * needs such a scale ("1.5G", ".5k", "1.k"; "1.5" and "1.5b" are refused),
 * or "0x" and hex digits alone.  The fraction is exact to 2^-64 and
 * rounded half up.  "1KB", "1KiB", "-1", "" are refused.
 * Returns 0 with *out set, or -EINVAL (also on overflow past 2^64 - 1).
 */
int rb_parse_size(const char *s, uint64_t *out);

#endif
