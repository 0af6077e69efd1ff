/* SPDX-License-Identifier: MIT */
/*
 * rblock measure - the size a new image needs, as qemu-img measure:
 *   rblock measure [--output=human|json] [-O FMT] [-o OPTIONS] [-f FMT] [-U]
 *                  (--size SIZE | IMAGE)
 * Human output and JSON keys ("bitmaps", "required", "fully-allocated")
 * are qemu-img's, in its order.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "rblock/lifecycle.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: rblock measure [--output=human|json] [-O raw|qcow2] [-o OPTIONS] [-f FMT] [-U]\n"
            "                      (--size SIZE | IMAGE)\n"
            "\n"
            "Print the size a new image of format -O (default raw) needs: 'required' for\n"
            "IMAGE's data (its whole chain) or an empty disk of SIZE, 'fully allocated'\n"
            "with every cluster allocated, and for qcow2 the space of IMAGE's persistent\n"
            "bitmaps.  Numbers equal qemu-img measure's.\n"
            "  -o OPTIONS  qcow2 options: compat, cluster_size, refcount_bits, extended_l2,\n"
            "              preallocation=off|metadata|falloc|full, backing_file, ...\n");
}

/* Take preallocation=falloc|full out of @opts (qemu counts every cluster
 * then); the rest is parsed as create's options. */
static int take_prealloc(char *opts, bool *full)
{
    char *p = opts, *w = opts;

    *full = false;
    while (*p) {
        char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if ((n == 20 && strncmp(p, "preallocation=falloc", 20) == 0) ||
            (n == 18 && strncmp(p, "preallocation=full", 18) == 0)) {
            *full = true;
        } else {
            if (w != opts)
                *w++ = ',';
            memmove(w, p, n);
            w += n;
        }
        p += n + (end ? 1 : 0);
    }
    *w = '\0';
    return 0;
}

int cmd_measure(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"output", required_argument, NULL, 'j'},
        {"size", required_argument, NULL, 's'},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    struct rb_measure_opts mo = {.out_format = "raw"};
    struct rb_open_opts oo = {0};
    struct rb_measure m;
    struct rb_error err = {0};
    struct rb_image *img = NULL;
    char *optstr = NULL;
    const char *size_arg = NULL;
    bool json = false;
    uint64_t size = 0;
    int c, ret = 1;

    opterr = 0;
    rb_qcow2_create_opts_init(&mo.q);
    while ((c = getopt_long(argc, argv, ":hO:o:f:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            free(optstr);
            return 0;
        case 'j':
            if (parse_output(optarg, &json) < 0)
                goto out;
            break;
        case 's':
            size_arg = optarg;
            break;
        case 'O':
            mo.out_format = optarg;
            break;
        case 'o': {
            size_t n = (optstr ? strlen(optstr) + 1 : 0) + strlen(optarg) + 1;
            char *p = realloc(optstr, n);
            if (!p)
                goto out;
            if (optstr)
                strcat(strcat(p, ","), optarg);
            else
                strcpy(p, optarg);
            optstr = p;
            break;
        }
        case 'f':
            oo.format = optarg;
            break;
        case 'U':
            oo.force_share = true;
            break;
        default:
            free(optstr);
            return bad_option("measure", argv, c);
        }
    }
    if (size_arg && optind < argc) {
        complain("--size N cannot be used together with a filename");
        goto out;
    }
    if (!size_arg && optind != argc - 1) {
        complain(optind < argc ? "measure: expecting one filename"
                               : "either --size N or one filename must be specified");
        goto out;
    }
    if (strcmp(mo.out_format, "raw") != 0 && strcmp(mo.out_format, "qcow2") != 0) {
        complain("measure: format '%s' cannot be measured (raw or qcow2)", mo.out_format);
        goto out;
    }
    if (optstr) {
        if (strcmp(mo.out_format, "qcow2") != 0) {
            complain("measure: -o options apply to -O qcow2 only");
            goto out;
        }
        take_prealloc(optstr, &mo.prealloc_full);
        if (*optstr && rb_qcow2_parse_options(optstr, &mo.q, &err) < 0) {
            complain("%s", rb_error_msg(&err, -EINVAL));
            goto out;
        }
    }
    if (size_arg) {
        if (parse_size(size_arg, &size) < 0) {
            complain("invalid size '%s'", size_arg);
            goto out;
        }
        mo.q.size = size;
        mo.q.size_set = true;
    } else {
        img = rb_image_open(argv[optind], &oo, &err);
        if (!img) {
            complain("%s", rb_error_msg(&err, -EIO));
            goto out;
        }
    }
    if (rb_measure(img, &mo, &m, &err) < 0) {
        complain("%s", rb_error_msg(&err, -EIO));
        goto out;
    }
    if (json) {
        printf("{\n");
        if (m.has_bitmaps)
            printf("    \"bitmaps\": %" PRIu64 ",\n", m.bitmaps);
        printf("    \"required\": %" PRIu64 ",\n    \"fully-allocated\": %" PRIu64 "\n}\n",
               m.required, m.fully_allocated);
    } else {
        printf("required size: %" PRIu64 "\nfully allocated size: %" PRIu64 "\n", m.required,
               m.fully_allocated);
        if (m.has_bitmaps)
            printf("bitmaps size: %" PRIu64 "\n", m.bitmaps);
    }
    ret = 0;
out:
    rb_image_close(img);
    free(optstr);
    return ret;
}
