/* SPDX-License-Identifier: MIT */
/*
 * io.h - positional I/O on files and block devices.
 *
 * All offsets are uint64_t byte offsets; lengths in memory are size_t.
 * Every function loops over short transfers and EINTR.  Thread-safe: no
 * function touches a file position.
 */
#ifndef RBLOCK_IO_H
#define RBLOCK_IO_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "rblock/error.h"

/* Read exactly @len bytes at @off.  Bytes past the end of the file read as
 * zeros (a short file is not an error: a qcow2 may end before its last
 * cluster).  Returns 0 or -errno. */
int rb_io_pread(int fd, void *buf, size_t len, uint64_t off);

/* Read exactly @len bytes at @off; reaching EOF first is -EIO. */
int rb_io_pread_exact(int fd, void *buf, size_t len, uint64_t off);

/* Write exactly @len bytes at @off.  Returns 0 or -errno (-ENOSPC...). */
int rb_io_pwrite(int fd, const void *buf, size_t len, uint64_t off);

/* fdatasync(), retried on EINTR.  Returns 0 or -errno. */
int rb_io_sync(int fd);

/* Write-behind for a writer that fills a file in ascending order: once
 * [*started, end) reaches RB_WRITEBEHIND_BYTES, start writing it back to
 * the disk without waiting (sync_file_range SYNC_FILE_RANGE_WRITE) and
 * move *started to @end.  The disk then works while the writer fills the
 * page cache, and the final rb_io_sync has little left to do.  A hint,
 * not a durability point: errors show at that sync. */
#define RB_WRITEBEHIND_BYTES (16u << 20)
void rb_io_writebehind(int fd, uint64_t *started, uint64_t end);

/* Size in bytes of a regular file or a block device (BLKGETSIZE64).
 * Returns 0 and sets *size, or -errno. */
int rb_io_size(int fd, uint64_t *size);

/* True when @fd is a block device. */
bool rb_io_is_blockdev(int fd);

/*
 * Find the extent containing @off in a (possibly sparse) file using
 * SEEK_DATA/SEEK_HOLE.  On return *is_data says whether [off, off+*len)
 * is data (true) or a hole (false); *len is at least 1 and at most
 * @max_len.  Where the file system cannot tell, everything is data.
 * @size is the file size (reads past it are holes).  Returns 0 or -errno.
 */
int rb_io_extent(int fd, uint64_t off, uint64_t max_len, uint64_t size,
                 bool *is_data, uint64_t *len);

/* Punch a hole (FALLOC_FL_PUNCH_HOLE|KEEP_SIZE) or, where the file system
 * cannot, write zeros.  Returns 0 or -errno. */
int rb_io_punch(int fd, uint64_t off, uint64_t len);

/* Ensure [off, off+len) reads as zeros: FALLOC_FL_ZERO_RANGE, else punch,
 * else write zeros.  When @may_unmap is false, prefer zero-range that
 * keeps the allocation.  Returns 0 or -errno. */
int rb_io_zero(int fd, uint64_t off, uint64_t len, bool may_unmap);

/* Set the size of a regular file (ftruncate).  Counted as a write by the
 * fault layer below.  Returns 0 or -errno. */
int rb_io_truncate(int fd, uint64_t size);

/*
 * Fault injection (crash tests, SQLite's way).  Every rb_io_pwrite,
 * rb_io_zero, rb_io_punch and rb_io_truncate is one "write" and every
 * rb_io_sync one "sync"; both are counted from 1 in call order, process-
 * wide, once a plan is set.  Without a plan the cost is one predictable
 * branch per call.  The library never reads the environment: cmd/main.c
 * turns $RBLOCK_FAULT into a plan (see rb_io_fault_parse).
 *
 *   FAIL_WRITE/FAIL_SYNC: the Nth write (sync) returns -EIO without doing
 *     anything, and so does every later one (a disk that died), or only
 *     the Nth when @once is set (a transient error).
 *   POWER_WRITE/POWER_SYNC: at the Nth write (sync), before it happens,
 *     the machine "loses power": every write since the last successful
 *     rb_io_sync of its file is undone (old bytes restored from an undo
 *     log, newest first; a file that grew is cut back to its synced size),
 *     the files are fsync'ed and the process ends at once with _exit(99)
 *     (no atexit, no cleanup).  With @seed != 0, each unsynced write is
 *     instead kept or dropped at random (a disk that reorders its cache),
 *     the kept ones replayed in their order.
 *   COUNT: only count.  With @trace, also write one line per write and
 *     per sync to fd 2, in call order, so a crash test can find the points
 *     where given metadata is written:
 *       rblock-fault: write N ino=I off=O len=L
 *       rblock-fault: sync N ino=I
 *     (I is the inode number of the file, O and L the byte range; for a
 *     truncate, off is the new size and len 0).
 *
 * The undo log keeps the old and new bytes of each unsynced write in an
 * unlinked temporary file; a sync of a file (any fd of it: files are known
 * by device and inode) clears that file's entries.  Writes through an
 * O_SYNC/O_DSYNC fd are durable at once and not logged.  The log is capped
 * (RB_IO_FAULT_LOG_MAX bytes, RB_IO_FAULT_ENTRIES_MAX entries): past it,
 * logging stops and a power loss keeps the unlogged writes (like a kill -9
 * there); rb_io_fault_counts() then reports @overflowed.
 *
 * While a plan is set, writes and syncs are serialised by one mutex.
 */
#define RB_IO_FAULT_LOG_MAX (1ull << 30)
#define RB_IO_FAULT_ENTRIES_MAX (1u << 20)
#define RB_IO_FAULT_EXIT 99

enum rb_io_fault_mode {
    RB_IO_FAULT_OFF = 0,
    RB_IO_FAULT_COUNT,
    RB_IO_FAULT_FAIL_WRITE,
    RB_IO_FAULT_FAIL_SYNC,
    RB_IO_FAULT_POWER_WRITE,
    RB_IO_FAULT_POWER_SYNC,
};

struct rb_io_fault_plan {
    enum rb_io_fault_mode mode;
    uint64_t n;          /* 1-based index of the faulting write or sync */
    bool once;           /* FAIL_*: only the Nth fails */
    uint64_t seed;       /* POWER_*: 0 drops all unsynced writes */
    bool report_at_exit; /* write "rblock-fault: writes=W syncs=S" to fd 2 at exit */
    bool trace;          /* COUNT: a line per write and sync to fd 2 (see above) */
};

/* Install @plan (NULL or mode OFF: none) and reset the counters and the
 * undo log.  Call before any I/O, from one thread.  Returns 0 or -errno
 * (-EINVAL for a bad plan, or the error creating the undo log file). */
int rb_io_fault_set(const struct rb_io_fault_plan *plan);

/* Parse "count", "trace" (COUNT with @trace), "fail-write:N", "fail-sync:N" (":once" may follow),
 * "power-write:N" or "power-sync:N" (":SEED" may follow, a number > 0).
 * Every plan parsed from a string reports its counts at exit.  Returns 0
 * or -EINVAL. */
int rb_io_fault_parse(const char *spec, struct rb_io_fault_plan *plan);

/* Writes and syncs counted so far; @overflowed (may be NULL) is true once
 * the undo log hit its cap. */
void rb_io_fault_counts(uint64_t *writes, uint64_t *syncs, bool *overflowed);

/* True when all @len bytes of @buf are zero.  Runs at memory speed. */
bool rb_is_zero(const void *buf, size_t len);

/* Overflow-checked addition: returns false when a + b overflows. */
static inline bool rb_add_ok(uint64_t a, uint64_t b, uint64_t *sum)
{
    return !__builtin_add_overflow(a, b, sum);
}

#endif
