/* SPDX-License-Identifier: MIT */
/* wire.h - NBD's names for the big-endian loads and stores of
 * lib/util/endian.h, which qcow2 uses too. */
#ifndef RBLOCK_NBD_WIRE_H
#define RBLOCK_NBD_WIRE_H

#include "util/endian.h"

#define put16 rb_store_be16
#define put32 rb_store_be32
#define put64 rb_store_be64
#define get16 rb_load_be16
#define get32 rb_load_be32
#define get64 rb_load_be64

#endif
