/* SPDX-License-Identifier: MIT */
/*
 * rbd_diff.c - Ceph's export-diff stream on the command line:
 *   rblock delta --output-format=rbd-diff BASE NEW OUT|-   (rbd import-diff's input)
 *   rblock convert -f rbd-diff STREAM|- -B BASE [-O qcow2] OUT   (rbd export-diff's output
 *                                                            as a qcow2 overlay of BASE)
 * delta and convert hand their argv over when they see these options
 * (rbd_diff_wanted), so their own parsers stay as they are.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd.h"
#include "rbd_diff.h"
#include "rblock/output.h"
#include "rblock/rbd-diff.h"

bool rbd_diff_wanted(int argc, char **argv, const char *opt)
{
    size_t n = strlen(opt);

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0)
            break;
        if (strncmp(a, opt, n) == 0 && a[n] == '=' && strncmp(a + n + 1, "rbd-diff", 8) == 0)
            return true;
        if (strncmp(a, opt, n) == 0 && a[n] == '\0' && i + 1 < argc &&
            strncmp(argv[i + 1], "rbd-diff", 8) == 0)
            return true;
        /* -frbd-diff */
        if (n == 2 && strncmp(a, opt, 2) == 0 && strncmp(a + 2, "rbd-diff", 8) == 0)
            return true;
    }
    return false;
}

static void on_progress(void *opaque, uint64_t done)
{
    progress_update(opaque, done);
}

static int parse_version(const char *v, unsigned *version)
{
    if (strcmp(v, "rbd-diff") == 0 || strcmp(v, "rbd-diff-v1") == 0)
        *version = 1;
    else if (strcmp(v, "rbd-diff-v2") == 0)
        *version = 2;
    else
        return -1;
    return 0;
}

static void delta_usage(FILE *f)
{
    fprintf(f, "usage: rblock delta --output-format=rbd-diff[-v2] [--from-snap NAME] "
               "[--to-snap NAME]\n"
               "                    [--bitmap NAME] [-f NEW_FMT] [-F BASE_FMT] [-U] [-p] [-q] "
               "BASE NEW OUT|-\n\n"
               "Write Ceph's export-diff stream (v1; v2 with rbd-diff-v2) of what NEW changed\n"
               "against BASE, for 'rbd import-diff - POOL/IMAGE'; '-' is standard output.\n"
               "  --from-snap NAME  record the start snapshot (import-diff checks that the\n"
               "                    image has it)\n"
               "  --to-snap NAME    record the end snapshot (import-diff creates it)\n"
               "  --bitmap NAME     the ranges dirty in NEW's persistent bitmap NAME, BASE\n"
               "                    unread\n");
}

int cmd_delta_rbd_diff(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"output-format", required_argument, NULL, 'T'},
        {"from-snap", required_argument, NULL, 'a'},
        {"to-snap", required_argument, NULL, 'z'},
        {"bitmap", required_argument, NULL, 'B'},
        {"progress", no_argument, NULL, 'p'},
        {"quiet", no_argument, NULL, 'q'},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    struct rb_rbd_diff_out_opts o = {0};
    struct rb_rbd_diff_stats st;
    struct rb_open_opts bo = {0}, no = {0};
    struct rb_error err = {0};
    struct rb_image *base = NULL, *newi = NULL, *inputs[2];
    struct rb_output *out = NULL;
    struct progress *prog = NULL;
    bool quiet = false, show = false, to_stdout;
    const char *outp;
    int c, ret = -EINVAL, fd;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":f:F:pqUh", longopts, NULL)) != -1) {
        switch (c) {
        case 'T':
            if (parse_version(optarg, &o.version) < 0) {
                complain("delta: --output-format must be rbd-diff or rbd-diff-v2 "
                         "(or leave it out for a qcow2 delta), not '%s'", optarg);
                return 1;
            }
            break;
        case 'a': o.from_snap = optarg; break;
        case 'z': o.to_snap = optarg; break;
        case 'B': o.bitmap = optarg; break;
        case 'f': no.format = optarg; break;
        case 'F': bo.format = optarg; break;
        case 'p': show = true; break;
        case 'q': quiet = true; break;
        case 'U': bo.force_share = no.force_share = true; break;
        case 'h': delta_usage(stdout); return 0;
        default: return bad_option("delta", argv, c);
        }
    }
    if (argc - optind != 3)
        return bad_usage("delta", "needs BASE NEW OUT (OUT '-' is standard output)");
    outp = argv[optind + 2];
    to_stdout = strcmp(outp, "-") == 0;
    if (to_stdout && isatty(STDOUT_FILENO)) {
        complain("delta: refusing to write an rbd diff stream to a terminal");
        return 1;
    }
    if (!(base = rb_image_open(argv[optind], &bo, &err)) ||
        !(newi = rb_image_open(argv[optind + 1], &no, &err)))
        goto fail;
    if (to_stdout) {
        fd = STDOUT_FILENO;
    } else {
        inputs[0] = base;
        inputs[1] = newi;
        if (!(out = rb_output_open(outp, inputs, 2, 0, &err)))
            goto fail;
        fd = out->fd;
    }
    prog = progress_new(show, newi->size);
    o.on_progress = show ? on_progress : NULL;
    o.opaque = prog;
    ret = rb_rbd_diff_write(base, newi, fd, &o, &st, &err);
    progress_done(prog);
    if (ret == 0 && out && fsync(out->fd) < 0)
        ret = rb_error_errno(&err, errno, "%s: cannot sync", outp);
    if (ret < 0)
        goto fail;
    rb_output_close(out, false);
    if (!quiet)
        fprintf(to_stdout ? stderr : stdout,
                "%s: rbd diff v%u, %" PRIu64 " records: %" PRIu64 " bytes of data, %" PRIu64
                " bytes of zeros\n", to_stdout ? "(stdout)" : outp, o.version ? o.version : 1,
                st.records, st.data_bytes, st.zero_bytes);
    rb_image_close(base);
    rb_image_close(newi);
    return 0;
fail:
    complain("delta: %s%s", rb_error_msg(&err, ret), rb_output_fate(out));
    rb_output_close(out, true);
    rb_image_close(base);
    rb_image_close(newi);
    return 1;
}

static void convert_usage(FILE *f)
{
    fprintf(f, "usage: rblock convert -f rbd-diff -B BASE [-F BASE_FMT] [-b BACKING_NAME]\n"
               "                      [-O qcow2] [-o OPTIONS] [-U] [-q] STREAM|- OUT\n\n"
               "Turn a Ceph export-diff stream (rbd export-diff, v1 or v2; '-' is standard\n"
               "input) into OUT, a new qcow2 overlay of BASE holding its changes.  A cut or\n"
               "corrupt stream is refused and OUT removed.\n");
}

int cmd_convert_rbd_diff(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"backing", required_argument, NULL, 'B'},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    struct rb_rbd_diff_in_opts o = {0};
    struct rb_rbd_diff_stats st;
    struct rb_error err = {0};
    const char *base = NULL, *fmt = NULL, *ofmt = "qcow2", *in;
    bool quiet = false;
    int c, fd, ret;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":f:B:F:b:O:o:Uqph", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'B': base = optarg; break;
        case 'F': o.base_format = optarg; break;
        case 'b': o.backing_name = optarg; break;
        case 'O': ofmt = optarg; break;
        case 'o': o.create_options = optarg; break;
        case 'U': o.force_share = true; break;
        case 'q': quiet = true; break;
        case 'p': break;
        case 'h': convert_usage(stdout); return 0;
        default: return bad_option("convert", argv, c);
        }
    }
    if (!fmt || strcmp(fmt, "rbd-diff") != 0) {
        complain("convert: -f rbd-diff expected");
        return 1;
    }
    if (strcmp(ofmt, "qcow2") != 0) {
        complain("convert: an rbd diff stream becomes a qcow2 overlay (-O qcow2), not '%s'",
                 ofmt);
        return 1;
    }
    if (!base)
        return bad_usage("convert", "-f rbd-diff needs -B BASE, the image the stream applies to");
    if (argc - optind != 2)
        return bad_usage("convert", "needs STREAM OUT (STREAM '-' is standard input)");
    in = argv[optind];
    if (strcmp(in, "-") == 0) {
        fd = STDIN_FILENO;
    } else if ((fd = open(in, O_RDONLY | O_CLOEXEC)) < 0) {
        complain("convert: %s: %s", in, strerror(errno));
        return 1;
    }
    ret = rb_rbd_diff_to_qcow2(fd, strcmp(in, "-") ? in : "(stdin)", base, argv[optind + 1],
                               &o, &st, &err);
    if (fd != STDIN_FILENO)
        close(fd);
    if (ret < 0) {
        complain("convert: %s", rb_error_msg(&err, ret));
        return 1;
    }
    if (!quiet)
        printf("%s: %" PRIu64 " records applied: %" PRIu64 " bytes of data, %" PRIu64
               " bytes of zeros\n", argv[optind + 1], st.records, st.data_bytes, st.zero_bytes);
    return 0;
}
