/* SPDX-License-Identifier: MIT */
/*
 * rblock commit - write an overlay's data into its backing file (or a
 * layer further down) and empty it, as qemu-img commit.  Exit status: 0
 * done, 1 failed.
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
            "usage: rblock commit [-b BASE] [-d] [-p] [-q] [-f FMT] [-t CACHE] TOP\n"
            "\n"
            "Write every cluster TOP defines (data, and zero clusters as zeros) into\n"
            "its backing file, then empty TOP so that it reads through to it.\n"
            "  -b BASE   commit into BASE, a layer further down TOP's chain: the\n"
            "            layers in between are committed too; implies -d\n"
            "  -d        leave TOP as it is (do not empty it)\n"
            "  -f FMT    format of TOP (default: probed)\n"
            "  -t CACHE  accepted for qemu-img compatibility (writes are always\n"
            "            flushed before TOP is emptied)\n"
            "  -p        show progress\n"
            "  -q        print nothing on success\n");
}

/* the bar is made at the first report, which knows the total */
static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct progress **p = opaque;

    if (!*p)
        *p = progress_new(true, total);
    progress_update(*p, done);
}

int cmd_commit(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"progress", no_argument, NULL, 'p'},
        {"quiet", no_argument, NULL, 'q'},
        {NULL, 0, NULL, 0},
    };
    struct rb_commit_opts opts = {0};
    struct rb_commit_stats st;
    struct rb_error err = {0};
    struct progress *prog = NULL;
    bool show_progress = false, quiet = false;
    int opt, ret;

    optind = 1;
    while ((opt = getopt_long(argc, argv, ":b:df:t:r:pqh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'b':
            opts.base = optarg;
            break;
        case 'd':
            opts.drop = true;
            break;
        case 'f':
            opts.format = optarg;
            break;
        case 't':
        case 'r':
            break; /* cache mode, rate limit: nothing to tune */
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
            return bad_option("commit", argv, opt);
        }
    }
    if (argc - optind != 1)
        return bad_usage("commit", "needs one image (TOP)");
    if (show_progress) {
        opts.progress = on_progress;
        opts.opaque = &prog;
    }
    ret = rb_commit(argv[optind], &opts, &st, &err);
    progress_done(prog);
    if (ret < 0) {
        complain("%s", rb_error_msg(&err, ret));
        return 1;
    }
    if (!quiet)
        printf("Image committed.\n");
    return 0;
}
