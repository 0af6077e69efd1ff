/* SPDX-License-Identifier: MIT */
/*
 * rblock amend - qemu-img amend [-f qcow2] [-p] [-q] -o OPTIONS IMAGE
 *
 * Options: compat=0.10|v2|1.1|v3, lazy_refcounts=on|off, refcount_bits=N,
 * size=SIZE, backing_file/backing_fmt (only their current values: a new
 * backing file is 'rblock rebase', as qemu-img says).  Options that only
 * creation takes are refused with qemu-img's words.  The image is opened
 * read-write, which locks it; every check runs before anything changes.
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
            "usage: rblock amend [-f qcow2] [-p] [-q] -o OPTIONS IMAGE\n"
            "\n"
            "Change options of the qcow2 image IMAGE in place, as qemu-img amend:\n"
            "  compat=0.10|1.1     downgrade (refused when v3 features are in use; zero\n"
            "                      clusters become data) or upgrade the format version\n"
            "  lazy_refcounts=on|off, refcount_bits=1|2|4|8|16|32|64, size=SIZE\n"
            "  backing_file, backing_fmt: only their current values (use rebase)\n");
}

static int parse(char *str, struct rb_qcow2_amend *a)
{
    static const char *const create_only[] = {
        "cluster_size", "preallocation", "extended_l2", "compression_type", "encryption",
        "encrypt.format", "data_file", "data_file_raw", NULL,
    };
    char *save = NULL;

    for (char *it = strtok_r(str, ",", &save); it; it = strtok_r(NULL, ",", &save)) {
        char *v = strchr(it, '=');

        if (!v) {
            complain("amend: option '%s' has no value (key=value)", it);
            return -EINVAL;
        }
        *v++ = '\0';
        if (strcmp(it, "compat") == 0) {
            if (strcmp(v, "0.10") == 0 || strcmp(v, "v2") == 0)
                a->version = 2;
            else if (strcmp(v, "1.1") == 0 || strcmp(v, "v3") == 0)
                a->version = 3;
            else {
                complain("amend: unknown compatibility level %s", v);
                return -EINVAL;
            }
        } else if (strcmp(it, "lazy_refcounts") == 0) {
            if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0) {
                complain("amend: parameter 'lazy_refcounts' expects 'on' or 'off'");
                return -EINVAL;
            }
            a->lazy_refcounts = strcmp(v, "on") == 0;
        } else if (strcmp(it, "refcount_bits") == 0) {
            char *end;
            unsigned long n = strtoul(v, &end, 10);
            if (*end || !*v || !n || n > 64 || (n & (n - 1))) {
                complain("amend: refcount width must be a power of two and may not exceed "
                         "64 bits");
                return -EINVAL;
            }
            a->refcount_bits = (unsigned)n;
        } else if (strcmp(it, "size") == 0) {
            if (parse_size(v, &a->size) < 0 || !a->size) {
                complain("amend: invalid size '%s'", v);
                return -EINVAL;
            }
        } else if (strcmp(it, "backing_file") == 0) {
            a->backing_file = v;
        } else if (strcmp(it, "backing_fmt") == 0) {
            a->backing_format = v;
        } else {
            bool creation = false;
            for (size_t i = 0; create_only[i]; i++)
                creation |= strcmp(it, create_only[i]) == 0;
            complain("amend: invalid parameter '%s'%s", it,
                     creation ? " (this option is only supported for image creation)" : "");
            return -EINVAL;
        }
    }
    return 0;
}

int cmd_amend(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"force", no_argument, NULL, 'F'},
        {NULL, 0, NULL, 0},
    };
    struct rb_qcow2_amend a = {.lazy_refcounts = -1};
    const char *fmt = NULL;
    char *opts = NULL;
    bool quiet = false;
    struct rb_error err = {0};
    struct rb_image *img;
    int c, ret = 1;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":ho:f:t:pq", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            free(opts);
            return 0;
        case 'o': {
            size_t n = (opts ? strlen(opts) + 1 : 0) + strlen(optarg) + 1;
            char *p = realloc(opts, n);
            if (!p) {
                free(opts);
                return 1;
            }
            if (opts)
                strcat(strcat(p, ","), optarg);
            else
                strcpy(p, optarg);
            opts = p;
            break;
        }
        case 'f':
            fmt = optarg;
            break;
        case 't': /* cache mode */
        case 'p': /* the steps are metadata-sized: no progress to show */
        case 'F':
            break;
        case 'q':
            quiet = true;
            break;
        default:
            free(opts);
            return bad_option("amend", argv, c);
        }
    }
    (void)quiet;
    if (!opts) {
        complain("amend: must specify options (-o)");
        return 1;
    }
    if (optind != argc - 1) {
        free(opts);
        return bad_usage("amend", "expecting one image file name");
    }
    if (parse(opts, &a) < 0)
        goto out_free;
    if (fmt && strcmp(fmt, "qcow2") != 0) {
        complain("amend: format '%s' does not support option amendment (qcow2 only)", fmt);
        goto out_free;
    }
    struct rb_open_opts oo = {.format = fmt, .write = true, .no_backing = true};
    img = rb_image_open(argv[optind], &oo, &err);
    if (!img) {
        complain("%s", rb_error_msg(&err, -EIO));
        goto out_free;
    }
    if (strcmp(img->ops->format, "qcow2") != 0)
        complain("%s: format '%s' does not support option amendment (qcow2 only)",
                 argv[optind], img->ops->format);
    else if (rb_qcow2_amend(img, &a, &err) < 0 || rb_image_flush(img, &err) < 0)
        complain("%s", rb_error_msg(&err, -EIO));
    else
        ret = 0;
    rb_image_close(img);
out_free:
    free(opts);
    return ret;
}
