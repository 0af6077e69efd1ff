/* SPDX-License-Identifier: MIT */
/*
 * cmd.h - subcommands of the rblock program.  Each cmd_<name> gets the
 * argv that starts with its own name and returns the process exit code.
 * Options are parsed with getopt_long; errors go to stderr as
 * "rblock: <message>" (see die/complain in common.c).
 */
#ifndef RBLOCK_CMD_H
#define RBLOCK_CMD_H

#include <stdbool.h>
#include <stdint.h>

#include "rblock/error.h"
#include "rblock/image.h"

int cmd_info(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_create(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_diff(int argc, char **argv);
int cmd_delta(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_bitmap(int argc, char **argv);
int cmd_measure(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_resize(int argc, char **argv);
int cmd_amend(int argc, char **argv);
int cmd_commit(int argc, char **argv);
int cmd_rebase(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);

/* Print "rblock: <formatted message>\n" to stderr. */
void complain(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Usage errors, one line each, exit status 1:
 *   rblock map: invalid option -s (try 'rblock map --help')
 * bad_option after getopt_long returned '?' or ':' (@c; option strings
 * start with ':', and main() sets opterr = 0, so getopt prints nothing
 * itself); bad_usage for wrong operands. */
int bad_option(const char *cmd, char **argv, int c);
int bad_usage(const char *cmd, const char *what);

/* Parse a size as qemu-img does: bytes, or a decimal number (a fraction
 * such as 1.5 too) with one suffix b/B (bytes), k/K, M, G, T, P, E (powers
 * of 1024), or 0x and hex digits.  Returns 0 or -EINVAL. */
int parse_size(const char *s, uint64_t *out);

/* Parse "human" or "json" for --output.  Returns 0 or -EINVAL. */
int parse_output(const char *s, bool *json);

/* Open an image for a command: @fmt may be NULL (probe).  On failure
 * prints the error and returns NULL. */
struct rb_image *open_image(const char *path, const char *fmt, bool write);

/* Progress on a terminal: percent, rate, time left; nothing when stderr is
 * not a terminal or when disabled. */
struct progress;
struct progress *progress_new(bool enabled, uint64_t total_bytes);
void progress_update(struct progress *p, uint64_t done_bytes);
void progress_done(struct progress *p);

struct rb_qcow2_info;
/* Print qemu-img's "Snapshot list:" table of @q (nothing without
 * snapshots); info and snapshot -l. */
void print_snapshot_list(const struct rb_qcow2_info *q);

#endif
