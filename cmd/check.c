/* SPDX-License-Identifier: MIT */
/*
 * check.c - `rblock check`: leaks and corruptions of a qcow2 image, with
 * qemu-img check's exit codes (0 clean, 1 the check could not run,
 * 2 corruptions, 3 leaks only; 63 for a format without checks, as qemu)
 * and its JSON keys.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "rblock/rbd.h"
#include "rblock/qcow2.h"
#include "rblock/view.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: rblock check [-r leaks|all] [--output=human|json] [-f FMT] IMAGE\n"
               "\nCheck a qcow2 image for leaked clusters and corruptions.\n"
               "  -r leaks  repair leaked clusters (refcounts above the references)\n"
               "  -r all    repair leaks and errors: refcounts below the references,\n"
               "            COPIED flags, the dirty and corrupt bits (rebuilding the\n"
               "            refcounts when they cannot be trusted)\n"
               "  -U, --force-share  check it even while another process writes it\n"
               "exit status: 0 clean, 1 check failed, 2 corruptions, 3 leaks only\n");
}

static double pct(uint64_t a, uint64_t b)
{
    return b ? 100.0 * (double)a / (double)b : 0.0;
}

static void print_human(const struct rb_qcow2_check *r)
{
    for (size_t i = 0; i < r->nb_problems; i++)
        printf("%s %s\n", r->problems[i].kind == RB_QCOW2_LEAK ? "Leaked:" : "ERROR:",
               r->problems[i].msg);
    if (r->problems_dropped)
        printf("(%" PRIu64 " more problems not shown)\n", r->problems_dropped);
    if (r->corruptions)
        printf("\n%" PRIu64 " errors were found on the image.\nData may be corrupted, or "
               "further writes to the image may corrupt it.\n", r->corruptions);
    if (r->leaks)
        printf("\n%" PRIu64 " leaked clusters were found on the image.\nThis means waste "
               "of disk space, but no harm to data.\n", r->leaks);
    if (r->check_errors)
        printf("\n%" PRIu64 " internal errors have occurred during the check.\n",
               r->check_errors);
    if (!r->corruptions && !r->leaks && !r->check_errors)
        printf("No errors were found on the image.\n");
    if (r->total_clusters)
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% "
               "compressed clusters\n", r->allocated_clusters, r->total_clusters,
               pct(r->allocated_clusters, r->total_clusters),
               pct(r->fragmented_clusters, r->allocated_clusters),
               pct(r->compressed_clusters, r->allocated_clusters));
    printf("Image end offset: %" PRIu64 "\n", r->image_end_offset);
}

static int print_json(const char *filename, const struct rb_qcow2_check *r,
                      const struct rb_qcow2_repair *fixed)
{
    json_t *o = rb_view_check(filename, r);

    if (!o) {
        complain("%s: out of memory", filename);
        return -1;
    }
    /* as qemu-img check -r: present when non-zero */
    if (fixed && fixed->leaks_fixed)
        json_object_set_new(o, "leaks-fixed", json_integer((json_int_t)fixed->leaks_fixed));
    if (fixed && fixed->corruptions_fixed)
        json_object_set_new(o, "corruptions-fixed",
                            json_integer((json_int_t)fixed->corruptions_fixed));
    json_dumpf(o, stdout, JSON_INDENT(4));
    putchar('\n');
    json_decref(o);
    return 0;
}

/* -r: repair, then report what was repaired and the state after, as
 * qemu-img check -r does (the problems found before go to stderr). */
static int repair(struct rb_image *img, unsigned fix, bool json, struct rb_qcow2_check *r,
                  struct rb_qcow2_repair *fixed)
{
    struct rb_error err = {0};
    const struct rb_qcow2_check *f = &fixed->found;

    if (rb_qcow2_repair(img, fix, fixed, &err) < 0) {
        complain("%s", rb_error_msg(&err, -1));
        return -1;
    }
    for (size_t i = 0; i < f->nb_problems; i++)
        fprintf(stderr, "%s %s\n", f->problems[i].kind == RB_QCOW2_LEAK ? "Leaked:" : "ERROR:",
                f->problems[i].msg);
    if (!json && (fixed->leaks_fixed || fixed->corruptions_fixed))
        printf("The following inconsistencies were found and repaired:\n\n"
               "    %" PRIu64 " leaked clusters\n    %" PRIu64 " corruptions\n\n"
               "Double checking the fixed image now...\n", fixed->leaks_fixed,
               fixed->corruptions_fixed);
    *r = fixed->after;
    memset(&fixed->after, 0, sizeof(fixed->after));
    return 0;
}

int cmd_check(int argc, char **argv)
{
    static const struct option opts[] = {
        {"output", required_argument, NULL, 'o'},
        {"format", required_argument, NULL, 'f'},
        {"repair", required_argument, NULL, 'r'},
        {"force-share", no_argument, NULL, 'U'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct rb_open_opts oo = {.no_backing = true};
    struct rb_error err = {0};
    struct rb_qcow2_repair fixed = {0};
    struct rb_qcow2_check r;
    struct rb_image *img;
    unsigned fix = 0;
    bool json = false;
    int c, ret;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":f:hr:U", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            if (strcmp(optarg, "leaks") == 0) {
                fix = RB_QCOW2_FIX_LEAKS;
            } else if (strcmp(optarg, "all") == 0) {
                fix = RB_QCOW2_FIX_ALL;
            } else {
                complain("unknown option value for -r (expecting 'leaks' or 'all'): %s",
                         optarg);
                return 1;
            }
            /* open for writing: locked against every other user */
            oo.write = true;
            oo.repair = true;
            break;
        case 'o':
            if (parse_output(optarg, &json) < 0)
                return 1;
            break;
        case 'f':
            oo.format = optarg;
            break;
        case 'U':
            oo.force_share = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return bad_option("check", argv, c);
        }
    }
    if (optind != argc - 1) {
        bad_usage("check", "needs one IMAGE");
        return 1;
    }
    if (oo.write && oo.force_share) {
        /* as qemu-img: sharing everything is for readers only */
        complain("--force-share/-U cannot be used with -r (repairing writes the image)");
        return 1;
    }
    img = rb_image_open(argv[optind], &oo, &err);
    if (!img) {
        complain("%s", rb_error_msg(&err, -1));
        return 1;
    }
    if (rb_rbd_is_name(img->filename) && !fix) {
        /* nothing of the image's layout is rblock's to check */
        printf("%s: an rbd image has no metadata for rblock to check (Ceph checks its "
               "objects: 'ceph pg deep-scrub', 'rbd object-map check'); nothing checked\n",
               img->filename);
        rb_image_close(img);
        return 0;
    }
    if (!rb_qcow2_is(img)) {
        complain("%s: format '%s' does not support checks", img->filename,
                 img->ops->format);
        rb_image_close(img);
        return 63;
    }
    if (fix && repair(img, fix, json, &r, &fixed) < 0) {
        rb_image_close(img);
        return 1;
    }
    if (!fix && rb_qcow2_check(img, &r, &err) < 0) {
        complain("%s", rb_error_msg(&err, -1));
        rb_image_close(img);
        return 1;
    }
    if (json && print_json(img->filename, &r, fix ? &fixed : NULL) < 0) {
        rb_qcow2_check_free(&r);
        rb_qcow2_repair_free(&fixed);
        rb_image_close(img);
        return 1;
    }
    if (!json)
        print_human(&r);
    /* as qemu-img: errors of the check itself come first */
    ret = r.check_errors ? 1 : r.corruptions ? 2 : r.leaks ? 3 : 0;
    if (r.check_errors)
        complain("%s: check failed", img->filename);
    rb_qcow2_check_free(&r);
    rb_qcow2_repair_free(&fixed);
    rb_image_close(img);
    return ret;
}
