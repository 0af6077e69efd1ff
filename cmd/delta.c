/* SPDX-License-Identifier: MIT */
/*
 * rblock delta - write a qcow2 overlay of BASE holding only what NEW
 * changed.  Exit status: 0 done, 1 failed (DELTA is then removed).
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "rbd_diff.h"
#include "rblock/diff.h"

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: rblock delta [-o OPTIONS] [-b BACKING_NAME] [-f NEW_FMT] [-F BASE_FMT]\n"
        "                    [--bitmap NAME] [-p] [-q] [-U] BASE NEW DELTA\n"
        "\n"
        "Write DELTA, a qcow2 image whose backing file is BASE, holding only the\n"
        "clusters where NEW differs from BASE (zero clusters where NEW is zeros).\n"
        "  --bitmap NAME  do not compare: copy the clusters dirty in NEW's persistent\n"
        "                 bitmap NAME (an incremental backup onto BASE, the\n"
        "                 previous one); reads nothing else of NEW, nothing of BASE\n"
        "  -o OPTIONS   qcow2 creation options, as qemu-img create -o "
        "(cluster_size=...)\n"
        "  -b NAME      backing file name to store (default: BASE's path relative to\n"
        "               DELTA's folder); it must lead to BASE from DELTA's folder\n"
        "  -f NEW_FMT   format of NEW (default: probed)\n"
        "  -F BASE_FMT  format of BASE, recorded as the backing format (default: "
        "probed)\n"
        "  -U           read BASE and NEW even while another process writes them\n"
        "  -p           show progress\n"
        "  -q           print nothing on success\n"
        "  --output-format=rbd-diff  write Ceph's export-diff stream instead (see\n"
        "               'rblock delta --output-format=rbd-diff --help')\n");
}

static void on_progress(void *opaque, uint64_t done)
{
    progress_update(opaque, done);
}

/* Join repeated -o arguments with commas, as qemu-img does. */
static int add_options(char **all, const char *more)
{
    size_t n = *all ? strlen(*all) + 1 : 0;
    char *t = realloc(*all, n + strlen(more) + 1);

    if (!t)
        return -1;
    if (n)
        t[n - 1] = ',';
    strcpy(t + n, more);
    *all = t;
    return 0;
}

int cmd_delta(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"progress", no_argument, NULL, 'p'},
        {"quiet", no_argument, NULL, 'q'},
        {"force-share", no_argument, NULL, 'U'},
        {"bitmap", required_argument, NULL, 'B'},
        {NULL, 0, NULL, 0},
    };
    struct rb_delta_opts opts = {0};
    struct rb_delta_stats st;
    struct rb_error err = {0};
    struct progress *prog = NULL;
    char *options = NULL;
    bool show_progress = false, quiet = false;
    int opt, ret, rc = 1;

    if (rbd_diff_wanted(argc, argv, "--output-format"))
        return cmd_delta_rbd_diff(argc, argv);
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":o:b:f:F:pqUh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'o':
            if (add_options(&options, optarg) < 0) {
                complain("out of memory");
                goto out;
            }
            break;
        case 'b':
            opts.backing_name = optarg;
            break;
        case 'f':
            opts.new_format = optarg;
            break;
        case 'F':
            opts.base_format = optarg;
            break;
        case 'p':
            show_progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 'U':
            opts.force_share = true;
            break;
        case 'B':
            opts.bitmap = optarg;
            break;
        case 'h':
            usage(stdout);
            rc = 0;
            goto out;
        default:
            bad_option("delta", argv, opt);
            goto out;
        }
    }
    if (argc - optind != 3) {
        bad_usage("delta", "needs BASE NEW DELTA");
        goto out;
    }
    opts.create_options = options;
    if (show_progress) {
        struct rb_open_opts no = {.format = opts.new_format, .force_share = opts.force_share};
        struct rb_image *n = rb_image_open(argv[optind + 1], &no, &err);

        if (!n) {
            complain("%s", rb_error_msg(&err, -1));
            goto out;
        }
        prog = progress_new(true, n->size); /* the walk covers NEW's size */
        rb_image_close(n);
        opts.on_progress = on_progress;
        opts.opaque = prog;
    }
    ret = rb_delta(argv[optind], argv[optind + 1], argv[optind + 2], &opts, &st, &err);
    progress_done(prog);
    if (ret < 0) {
        complain("%s", rb_error_msg(&err, ret));
        goto out;
    }
    if (!quiet && opts.bitmap)
        printf("%s: %" PRIu64 " data clusters, %" PRIu64 " zero clusters; "
               "read %" PRIu64 " bytes of new (dirty in bitmap '%s'), none of base, "
               "%" PRIu64 " bytes skipped unread\n",
               argv[optind + 2], st.data_clusters, st.zero_clusters, st.diff.read_b_bytes,
               opts.bitmap,
               st.diff.size_bytes > st.diff.read_b_bytes
                   ? st.diff.size_bytes - st.diff.read_b_bytes
                   : 0);
    else if (!quiet)
        printf("%s: %" PRIu64 " data clusters, %" PRIu64 " zero clusters; "
               "read %" PRIu64 " bytes of base and %" PRIu64 " of new, "
               "%" PRIu64 " bytes skipped unread\n",
               argv[optind + 2], st.data_clusters, st.zero_clusters, st.diff.read_a_bytes,
               st.diff.read_b_bytes, st.diff.shared_bytes + st.diff.zero_bytes);
    rc = 0;
out:
    free(options);
    return rc;
}
