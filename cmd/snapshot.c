/* SPDX-License-Identifier: MIT */
/*
 * snapshot.c - `rblock snapshot`: list, create, apply and delete the
 * internal snapshots of a qcow2 image, with qemu-img snapshot's syntax,
 * output and exit codes (0 done, 1 error).  One difference: -c refuses a
 * name that a snapshot already has (qemu-img would add a second one).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "rblock/qcow2.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: rblock snapshot [-l | -c NAME | -a NAME | -d NAME] [-f FMT] [-U] "
               "IMAGE\n"
               "\nList or change the internal snapshots of the qcow2 IMAGE, as qemu-img "
               "snapshot.\n"
               "  -l         list them (the default)\n"
               "  -c NAME    create snapshot NAME of the disk as it is now\n"
               "  -a NAME    apply snapshot NAME (id or name): the disk returns to it\n"
               "  -d NAME    delete snapshot NAME (id or name)\n"
               "  -f FMT     the image's format (qcow2; raw has no snapshots)\n"
               "  -U         with -l: read the image even while another process writes it\n"
               "Each change is switched in by one header write: a crash leaves the image "
               "as it was before or after.\n");
}

int cmd_snapshot(int argc, char **argv)
{
    static const struct option opts[] = {
        {"format", required_argument, NULL, 'f'},
        {"force-share", no_argument, NULL, 'U'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *name = NULL;
    struct rb_image *img = NULL;
    struct rb_error err = {0};
    bool share = false;
    int action = 0, c, ret = 1;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":lc:a:d:f:Uqh", opts, NULL)) != -1) {
        switch (c) {
        case 'l': case 'c': case 'a': case 'd':
            if (action) {
                complain("cannot mix '-l', '-a', '-c', '-d'");
                return 1;
            }
            action = c;
            name = c == 'l' ? NULL : optarg;
            break;
        case 'f': fmt = optarg; break;
        case 'U': share = true; break;
        case 'q': break; /* qemu-img's quiet: there is nothing to silence */
        case 'h': usage(stdout); return 0;
        default:
            return bad_option("snapshot", argv, c);
        }
    }
    if (optind != argc - 1)
        return bad_usage("snapshot", "expecting one image file name");
    if (!action)
        action = 'l';
    if (share && action != 'l') {
        /* as qemu-img: sharing everything is for readers only */
        complain("%s: -U can only be used with -l (the image is written)", argv[optind]);
        return 1;
    }
    if (action != 'l' && !*name) {
        complain("a snapshot name must not be empty");
        return 1;
    }
    {
        /* snapshots live in the top image: no backing chain needed */
        struct rb_open_opts o = {.format = fmt, .write = action != 'l', .lock = true,
                                 .no_backing = true, .force_share = share};
        img = rb_image_open(argv[optind], &o, &err);
        if (!img) {
            complain("%s", rb_error_msg(&err, -1));
            return 1;
        }
    }
    if (action == 'l') {
        struct rb_qcow2_info q;
        ret = 0;
        /* qemu-img lists nothing for a format without snapshots */
        if (rb_qcow2_is(img)) {
            if (rb_qcow2_get_info(img, &q, &err) < 0) {
                complain("%s", rb_error_msg(&err, -1));
                ret = 1;
            } else {
                print_snapshot_list(&q);
                rb_qcow2_info_free(&q);
            }
        }
    } else {
        enum rb_qcow2_snapshot_op op = action == 'c'   ? RB_QCOW2_SNAPSHOT_CREATE
                                       : action == 'a' ? RB_QCOW2_SNAPSHOT_APPLY
                                                       : RB_QCOW2_SNAPSHOT_DELETE;
        const char *verb = action == 'c' ? "create" : action == 'a' ? "apply" : "delete";
        if (rb_qcow2_snapshot(img, op, name, &err) < 0)
            complain("could not %s snapshot '%s': %s", verb, name, rb_error_msg(&err, -1));
        else
            ret = 0;
    }
    rb_image_close(img);
    return ret;
}
