/* SPDX-License-Identifier: MIT */
/*
 * rblock diff - list the sectors where two disks differ.
 *
 * Exit codes as cmp(1): 0 same, 1 different, 2 trouble.  Ranges are
 * streamed: human output and --count print as they go; JSON keeps the
 * documented key order ("differing-sectors" before "ranges") by spooling
 * the ranges to an unlinked temporary file, so memory stays bounded.
 *
 * With --bitmap NAME nothing is read: the ranges listed are those dirty in
 * DISK_B's persistent bitmap NAME (what `delta --bitmap` would copy onto
 * DISK_A, the previous backup), widened to whole sectors.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "rblock/diff.h"

struct out {
    uint64_t ss; /* sector size */
    bool json, count_only;
    FILE *f; /* stdout, or the JSON spool */
    uint64_t sectors, ranges;
    uint64_t pend_start, pend_count; /* run being merged (sectors) */
    struct progress *progress;
};

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: rblock diff [--sector-size 512|4096|N] [--output=human|json] [--count]\n"
        "                   [--bitmap NAME] [-p] [-U] [-f FMT_A] [-F FMT_B] DISK_A DISK_B\n"
        "\n"
        "List the sectors where DISK_A and DISK_B differ (raw files, block devices or\n"
        "qcow2 images and chains, in any mix).  The shorter disk reads as zeros past\n"
        "its end.  Exit status: 0 same, 1 different, 2 trouble.\n"
        "  -U, --force-share  read them even while another process writes them\n"
        "  --bitmap NAME      read nothing: list the ranges dirty in DISK_B's persistent\n"
        "                     bitmap NAME (qcow2), what delta --bitmap would copy\n");
}

static struct rb_image *open_input(const char *path, const char *fmt, bool force_share)
{
    struct rb_open_opts oo = {.format = fmt, .force_share = force_share};
    struct rb_error err = {0};
    struct rb_image *img = rb_image_open(path, &oo, &err);

    if (!img)
        complain("%s", rb_error_msg(&err, -EIO));
    return img;
}

static void flush_range(struct out *o)
{
    if (!o->pend_count)
        return;
    if (o->count_only) {
        /* the total only */
    } else if (o->json) {
        fprintf(o->f, "%s\n    {\"start\": %" PRIu64 ", \"count\": %" PRIu64 "}",
                o->ranges ? "," : "", o->pend_start, o->pend_count);
    } else {
        uint64_t first = o->pend_start * o->ss;
        uint64_t last = (o->pend_start + o->pend_count) * o->ss - 1;

        printf("sectors %" PRIu64 "-%" PRIu64 " (%" PRIu64 "): bytes 0x%" PRIx64
               "-0x%" PRIx64 "\n",
               o->pend_start, o->pend_start + o->pend_count - 1, o->pend_count, first,
               last);
    }
    o->ranges++;
    o->pend_count = 0;
}

static int on_run(void *opaque, const struct rb_diff_run *run, struct rb_error *err)
{
    struct out *o = opaque;
    uint64_t start = run->off / o->ss;
    uint64_t count = (run->len + o->ss - 1) / o->ss;

    o->sectors += count;
    if (o->pend_count && o->pend_start + o->pend_count == start) {
        o->pend_count += count;
        return 0;
    }
    flush_range(o);
    o->pend_start = start;
    o->pend_count = count;
    if (ferror(o->f))
        return rb_error_set(err, EIO, "cannot write the list of ranges");
    return 0;
}

static void on_progress(void *opaque, uint64_t done)
{
    progress_update(((struct out *)opaque)->progress, done);
}

static int copy_spool(FILE *spool)
{
    char buf[65536];
    size_t n;

    rewind(spool);
    while ((n = fread(buf, 1, sizeof(buf), spool)) > 0)
        fwrite(buf, 1, n, stdout);
    return ferror(spool) ? -EIO : 0;
}

/* The runs dirty in @b's bitmap @name, widened to sectors, as diff runs. */
static int bitmap_runs(struct out *o, struct rb_image *b, const char *name,
                       struct rb_diff_stats *st, struct rb_error *err)
{
    uint64_t off = 0;

    memset(st, 0, sizeof(*st));
    st->size_bytes = b->size;
    while (off < b->size) {
        uint64_t n, s, e;
        bool dirty;
        int ret = rb_image_bitmap_extent(b, name, off, b->size - off, &dirty, &n, err);

        if (ret < 0)
            return ret;
        if (dirty) {
            s = off / o->ss * o->ss;
            e = (off + n + o->ss - 1) / o->ss * o->ss;
            struct rb_diff_run run = {.off = s, .len = e - s};
            if (o->pend_count && (o->pend_start + o->pend_count) * o->ss > s) {
                /* a sector shared with the previous run: counted once */
                run.off += o->ss;
                run.len -= o->ss;
            }
            st->diff_bytes += n;
            if (run.len && (ret = on_run(o, &run, err)) < 0)
                return ret;
        }
        off += n;
        progress_update(o->progress, off);
    }
    return 0;
}

static void print_json(struct out *o, struct rb_image *a, struct rb_image *b,
                       const struct rb_diff_stats *st)
{
    printf("{\n  \"sector-size\": %" PRIu64 ",\n  \"size-a\": %" PRIu64
           ",\n  \"size-b\": %" PRIu64 ",\n  \"differing-sectors\": %" PRIu64
           ",\n  \"ranges\": [",
           o->ss, a->size, b->size, o->sectors);
    copy_spool(o->f);
    printf("%s],\n  \"identical\": %s,\n  \"bytes-read-a\": %" PRIu64
           ",\n  \"bytes-read-b\": %" PRIu64 ",\n  \"bytes-skipped-zero\": %" PRIu64
           ",\n  \"bytes-skipped-shared\": %" PRIu64 "\n}\n",
           o->ranges ? "\n  " : "", o->sectors ? "false" : "true", st->read_a_bytes,
           st->read_b_bytes, st->zero_bytes, st->shared_bytes);
}

static void print_note(struct rb_image *a, struct rb_image *b)
{
    if (a->size != b->size)
        fprintf(stderr, "rblock diff: note: sizes differ (%s: %" PRIu64 " bytes, %s: %" PRIu64
               " bytes); the shorter disk reads as zeros past its end\n",
               a->filename, a->size, b->filename, b->size);
}

static void print_human(struct out *o, const char *bitmap)
{
    if (bitmap && o->sectors)
        printf("%" PRIu64 " dirty sectors of %" PRIu64 " bytes in %" PRIu64
               " range%s (bitmap '%s')\n",
               o->sectors, o->ss, o->ranges, o->ranges == 1 ? "" : "s", bitmap);
    else if (bitmap)
        printf("nothing dirty (bitmap '%s')\n", bitmap);
    else if (o->sectors)
        printf("%" PRIu64 " differing sectors of %" PRIu64 " bytes in %" PRIu64
               " range%s\n",
               o->sectors, o->ss, o->ranges, o->ranges == 1 ? "" : "s");
    else
        printf("identical\n");
}

int cmd_diff(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"sector-size", required_argument, NULL, 's'},
        {"output", required_argument, NULL, 'o'},
        {"count", no_argument, NULL, 'c'},
        {"progress", no_argument, NULL, 'p'},
        {"force-share", no_argument, NULL, 'U'},
        {"bitmap", required_argument, NULL, 'B'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt_a = NULL, *fmt_b = NULL, *bitmap = NULL;
    struct out o = {.ss = 512, .f = stdout};
    struct rb_image *a = NULL, *b = NULL;
    struct rb_error err = {0};
    struct rb_diff_stats st;
    bool show_progress = false, force_share = false;
    int opt, ret, rc = 2;

    optind = 1;
    while ((opt = getopt_long(argc, argv, ":f:F:s:o:cpUh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'f':
            fmt_a = optarg;
            break;
        case 'F':
            fmt_b = optarg;
            break;
        case 's':
            if (parse_size(optarg, &o.ss) < 0 || o.ss == 0 ||
                o.ss > RB_DIFF_MAX_GRANULE) {
                complain("invalid sector size '%s' (1 byte to 64 MiB)", optarg);
                return 2;
            }
            break;
        case 'o':
            if (parse_output(optarg, &o.json) < 0)
                return 2;
            break;
        case 'c':
            o.count_only = true;
            break;
        case 'p':
            show_progress = true;
            break;
        case 'U':
            force_share = true;
            break;
        case 'B':
            bitmap = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            bad_option("diff", argv, opt);
            return 2;
        }
    }
    if (argc - optind != 2) {
        bad_usage("diff", "needs DISK_A DISK_B");
        return 2;
    }
    if (!(a = open_input(argv[optind], fmt_a, force_share)) ||
        !(b = open_input(argv[optind + 1], fmt_b, force_share)))
        goto out;
    if (o.json && !o.count_only && !(o.f = tmpfile())) {
        complain("cannot create a temporary file: %s", strerror(errno));
        goto out;
    }
    o.progress = progress_new(show_progress, a->size > b->size ? a->size : b->size);
    struct rb_diff_opts dopts = {
        .granule_bytes = o.ss,
        .on_run = on_run,
        .on_progress = on_progress,
        .opaque = &o,
    };
    if (!o.json && !o.count_only)
        print_note(a, b);
    ret = bitmap ? bitmap_runs(&o, b, bitmap, &st, &err) : rb_diff(a, b, &dopts, &st, &err);
    flush_range(&o);
    progress_done(o.progress);
    if (ret < 0) {
        complain("%s", rb_error_msg(&err, ret));
        goto out;
    }
    if (o.count_only && o.json)
        printf("{\"sector-size\": %" PRIu64 ", \"size-a\": %" PRIu64
               ", \"size-b\": %" PRIu64 ", \"differing-sectors\": %" PRIu64 "}\n",
               o.ss, a->size, b->size, o.sectors);
    else if (o.count_only)
        printf("%" PRIu64 "\n", o.sectors);
    else if (o.json)
        print_json(&o, a, b, &st);
    else
        print_human(&o, bitmap);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        complain("cannot write the output: %s", strerror(errno));
        goto out;
    }
    rc = o.sectors ? 1 : 0;
out:
    if (o.f && o.f != stdout)
        fclose(o.f);
    rb_image_close(a);
    rb_image_close(b);
    return rc;
}
