/* SPDX-License-Identifier: MIT */
/*
 * rblock rebase - give an overlay another backing file, keeping its guest
 * content (or, with -u, only rewriting the name), as qemu-img rebase.
 * Exit status: 0 done, 1 failed.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "rblock/ops.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: rblock rebase [-u] [-c] [-p] [-q] [-f FMT] [-t CACHE] -b BACKING\n"
            "                     [-F BACKING_FMT] IMAGE\n"
            "\n"
            "Make BACKING the backing file of IMAGE (qcow2).  IMAGE reads the same\n"
            "afterwards: where it defines nothing and the old backing chain differs\n"
            "from BACKING, the old bytes are copied into it first.\n"
            "  -b BACKING  new backing file name, stored as given (relative names are\n"
            "              relative to IMAGE's folder); \"\" removes the backing file\n"
            "              after copying all of its data into IMAGE\n"
            "  -F FMT      format of BACKING (required with a name, as qemu-img)\n"
            "  -u          unsafe: only rewrite the name in the header; opens no\n"
            "              backing file (to fix a moved or renamed backing file)\n"
            "  -c          write the copied clusters compressed\n"
            "  -f FMT      format of IMAGE (default: probed)\n"
            "  -t CACHE    accepted for qemu-img compatibility\n"
            "  -p          show progress\n"
            "  -q          print nothing on success\n");
}

/* the bar is made at the first report, which knows the total */
static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct progress **p = opaque;

    if (!*p)
        *p = progress_new(true, total);
    progress_update(*p, done);
}

int cmd_rebase(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"progress", no_argument, NULL, 'p'},
        {"quiet", no_argument, NULL, 'q'},
        {"compress", no_argument, NULL, 'c'},
        {NULL, 0, NULL, 0},
    };
    struct rb_rebase_opts opts = {0};
    struct rb_rebase_stats st;
    struct rb_error err = {0};
    struct progress *prog = NULL;
    bool show_progress = false, quiet = false, have_b = false;
    int opt, ret;

    optind = 1;
    while ((opt = getopt_long(argc, argv, ":b:F:f:t:T:ucpqh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'b':
            opts.backing = optarg;
            have_b = true;
            break;
        case 'F':
            opts.backing_format = optarg;
            break;
        case 'f':
            opts.format = optarg;
            break;
        case 't':
        case 'T':
            break; /* cache modes: nothing to tune */
        case 'u':
            opts.unsafe = true;
            break;
        case 'c':
            opts.compress = true;
            break;
        case 'p':
            show_progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return bad_option("rebase", argv, opt);
        }
    }
    if (argc - optind != 1)
        return bad_usage("rebase", "needs one image");
    if (!have_b)
        return bad_usage("rebase", "needs -b BACKING (\"\" for none)");
    if (show_progress) {
        opts.progress = on_progress;
        opts.opaque = &prog;
    }
    ret = rb_rebase(argv[optind], &opts, &st, &err);
    progress_done(prog);
    if (ret < 0) {
        complain("%s", rb_error_msg(&err, ret));
        return 1;
    }
    (void)quiet;
    return 0;
}
