/* SPDX-License-Identifier: MIT */
/*
 * fault.h - between io.c and fault.c (not installed): the system calls
 * without faults, and the faulting versions io.c uses while a plan is set.
 */
#ifndef RBLOCK_UTIL_FAULT_H
#define RBLOCK_UTIL_FAULT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum rb_io_op { RB_IO_OP_PWRITE, RB_IO_OP_ZERO, RB_IO_OP_PUNCH, RB_IO_OP_TRUNCATE };

/* True while a fault plan is set (rb_io_fault_set). */
extern bool rb_fault_on;

/* The operation through the fault plan: counted, logged for undo, maybe
 * failed.  @len is the new size for RB_IO_OP_TRUNCATE. */
int rb_fault_write(int op, int fd, const void *buf, uint64_t len, uint64_t off,
                   bool may_unmap);
int rb_fault_sync(int fd);

/* The plain operations of io.c (loops over short writes and EINTR). */
int rb_io_sys_pwrite(int fd, const void *buf, size_t len, uint64_t off);
int rb_io_sys_sync(int fd);
int rb_io_sys_truncate(int fd, uint64_t size);
int rb_io_sys_punch(int fd, uint64_t off, uint64_t len);
int rb_io_sys_zero(int fd, uint64_t off, uint64_t len, bool may_unmap);

#endif
