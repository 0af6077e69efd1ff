/* SPDX-License-Identifier: MIT */
/*
 * rblock compare - qemu-img compare: are two images' guest contents the
 * same?  Built on the diff engine (lib/ops/diff.c), which skips what both
 * images report as zeros or share as one layer and stops at the first
 * difference.  Messages and exit codes are qemu-img's:
 *   0 "Images are identical."     1 "Content mismatch at offset N!"
 *   2 an image cannot be opened   3 block status failed   4 read error
 * A difference is reported at the start of its 512-byte sector, as
 * qemu-img does.  -s
 * (strict) also fails on a size mismatch or a block status mismatch.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "rblock/diff.h"

#define STATUS_MASK (RB_BS_DATA | RB_BS_ZERO | RB_BS_ALLOCATED)

static void usage(FILE *f)
{
    fprintf(f,
            "usage: rblock compare [-f FMT] [-F FMT] [-T CACHE] [-p] [-q] [-s] [-U] FILE1 FILE2\n"
            "\n"
            "Compare the guest contents of FILE1 and FILE2 (raw or qcow2, whole chains), as\n"
            "qemu-img compare.  The shorter image reads as zeros past its end.\n"
            "  -s  strict: images of different sizes, or with a different allocation\n"
            "      state at some offset, are different\n"
            "Exit status: 0 identical, 1 different, 2 cannot open, 3 block status error,\n"
            "4 read error.\n");
}

struct first {
    bool found;
    uint64_t off;
    struct progress *prog;
};

static int on_run(void *opaque, const struct rb_diff_run *run, struct rb_error *err)
{
    struct first *f = opaque;

    (void)err;
    f->found = true;
    f->off = run->off;
    return -ECANCELED; /* the first difference is enough */
}

static void on_progress(void *opaque, uint64_t done)
{
    progress_update(((struct first *)opaque)->prog, done);
}

/* Strict mode: the first offset below @end where the two block statuses
 * differ, or @end.  Returns 0 or 3 (with the message printed). */
static int status_mismatch(struct rb_image *a, struct rb_image *b, const char *na,
                           const char *nb, uint64_t end, uint64_t *at)
{
    uint64_t off = 0;

    while (off < end) {
        struct rb_extent ea, eb;
        struct rb_error err = {0};

        if (rb_image_block_status(a, off, end - off, &ea, &err) < 0) {
            complain("sector allocation test failed for '%s': %s", na, rb_error_msg(&err, -EIO));
            return 3;
        }
        if (rb_image_block_status(b, off, end - off, &eb, &err) < 0) {
            complain("sector allocation test failed for '%s': %s", nb, rb_error_msg(&err, -EIO));
            return 3;
        }
        if ((ea.flags & STATUS_MASK) != (eb.flags & STATUS_MASK))
            break;
        off += ea.length < eb.length ? ea.length : eb.length;
    }
    *at = off < end ? off : end;
    return 0;
}

int cmd_compare(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt1 = NULL, *fmt2 = NULL;
    bool quiet = false, strict = false, show_progress = false, force_share = false;
    struct rb_image *a = NULL, *b = NULL;
    struct progress *prog = NULL;
    struct first first = {0};
    struct rb_error err = {0};
    uint64_t common, longer, limit;
    int c, ret = 2;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            return 0;
        case 'f':
            fmt1 = optarg;
            break;
        case 'F':
            fmt2 = optarg;
            break;
        case 'T': /* cache mode: rblock reads through the page cache */
            break;
        case 'p':
            show_progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 's':
            strict = true;
            break;
        case 'U':
            force_share = true;
            break;
        default:
            return bad_option("compare", argv, c);
        }
    }
    if (optind != argc - 2)
        return bad_usage("compare", "expecting two image file names");
    const char *n1 = argv[optind], *n2 = argv[optind + 1];
    struct rb_open_opts o1 = {.format = fmt1, .force_share = force_share};
    struct rb_open_opts o2 = {.format = fmt2, .force_share = force_share};
    a = rb_image_open(n1, &o1, &err);
    if (!a) {
        complain("%s", rb_error_msg(&err, -EIO));
        return 2;
    }
    b = rb_image_open(n2, &o2, &err);
    if (!b) {
        complain("%s", rb_error_msg(&err, -EIO));
        rb_image_close(a);
        return 2;
    }
    common = a->size < b->size ? a->size : b->size;
    longer = a->size < b->size ? b->size : a->size;
    if (strict && a->size != b->size) {
        if (!quiet)
            printf("Strict mode: Image size mismatch!\n");
        ret = 1;
        goto out;
    }
    limit = longer;
    if (strict) {
        ret = status_mismatch(a, b, n1, n2, common, &limit);
        if (ret)
            goto out;
    }
    prog = progress_new(show_progress && !quiet, longer);
    struct rb_diff_opts dopts = {
        .granule_bytes = 1,
        .limit_bytes = limit ? limit : 1,
        .on_run = on_run,
        .opaque = &first,
        .on_progress = on_progress,
    };
    first.prog = prog;
    if (limit) {
        int r = rb_diff(a, b, &dopts, NULL, &err);
        if (r < 0 && r != -ECANCELED) {
            complain("%s", rb_error_msg(&err, -EIO));
            ret = 4;
            goto out;
        }
    }
    progress_done(prog);
    prog = NULL;
    ret = 0;
    if (first.found) {
        uint64_t at = first.off;
        if (at >= common && !quiet)
            printf("Warning: Image size mismatch!\n");
        at &= ~(uint64_t)511; /* qemu-img reports the sector */
        if (!quiet)
            printf("Content mismatch at offset %" PRIu64 "!\n", at);
        ret = 1;
    } else if (strict && limit < common) {
        if (!quiet)
            printf("Strict mode: Offset %" PRIu64 " block status mismatch!\n", limit);
        ret = 1;
    } else {
        if (a->size != b->size && !quiet)
            printf("Warning: Image size mismatch!\n");
        if (!quiet)
            printf("Images are identical.\n");
    }
out:
    progress_done(prog);
    rb_image_close(a);
    rb_image_close(b);
    return ret;
}
