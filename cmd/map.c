/* SPDX-License-Identifier: MIT */
/*
 * map.c - `rblock map`: the guest-to-host layout of an image and its
 * chain.  --output=json prints exactly what `qemu-img map --output=json`
 * prints (same merging of extents, same fields); the human form is
 * qemu-img's table followed, for a qcow2 image, by its L1/L2 structure.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "rblock/ops.h"
#include "rblock/picture.h"
#include "rblock/qcow2.h"

static void print_entry(const struct rb_map_entry *e, bool json, bool more,
                        struct rb_image *img)
{
    if (json) {
        printf("{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %u,"
               " \"present\": %s, \"zero\": %s, \"data\": %s",
               e->start, e->length, e->depth, e->present ? "true" : "false",
               e->zero ? "true" : "false", e->data ? "true" : "false");
        if (e->has_offset)
            printf(", \"offset\": %" PRIu64, e->offset);
        putchar('}');
        if (more)
            puts(",");
        return;
    }
    if (e->data && !e->zero) {
        struct rb_image *layer = rb_image_layer(img, e->depth);
        char start[24], len[24], off[24];

        snprintf(start, sizeof(start), "%#" PRIx64, e->start);
        snprintf(len, sizeof(len), "%#" PRIx64, e->length);
        if (e->has_offset)
            snprintf(off, sizeof(off), "%#" PRIx64, e->offset);
        else
            snprintf(off, sizeof(off), "%s", e->compressed ? "compressed" : "-");
        printf("%-16s%-16s%-16s%s\n", start, len, off,
               layer ? rb_qcow2_data_file_name(layer) : "");
    }
}

static int print_l2(void *opaque, const struct rb_qcow2_l2_summary *l2)
{
    (void)opaque;
    printf("  L1[%" PRIu64 "] = 0x%016" PRIx64 "  L2 at 0x%" PRIx64 "  guest 0x%" PRIx64
           "..0x%" PRIx64 ": %" PRIu32 " data, %" PRIu32 " zero, %" PRIu32
           " compressed, %" PRIu32 " unallocated",
           l2->l1_index, l2->l1_entry, l2->l2_offset, l2->guest_start,
           l2->guest_start + l2->guest_bytes, l2->data, l2->zero, l2->compressed,
           l2->unallocated);
    if (l2->partial)
        printf(" (%" PRIu32 " with mixed subclusters)", l2->partial);
    putchar('\n');
    return 0;
}

static int print_tables(struct rb_image *img)
{
    struct rb_qcow2_info info;
    struct rb_error err = {0};
    int ret = rb_qcow2_get_info(img, &info, &err);

    if (ret == 0) {
        printf("\nL1 table at 0x%" PRIx64 ": %" PRIu32 " entries, %" PRIu64
               " L2 tables of %" PRIu32 " entries (cluster size %" PRIu32 ")\n",
               info.l1_table_offset, info.l1_size, info.l2_tables, info.l2_entries,
               info.cluster_bytes);
        rb_qcow2_info_free(&info);
        ret = rb_qcow2_walk_l2(img, print_l2, NULL, &err);
    }
    if (ret < 0) {
        fflush(stdout);
        complain("%s", rb_error_msg(&err, ret));
        return 1;
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: rblock map [--output=human|json|svg|html] [--bitmap NAME]\n"
               "                  [--start-offset OFF] [--max-length LEN] [-f FMT] [-U] IMAGE\n"
               "\nPrint the guest-to-host mapping of IMAGE and its backing chain.\n"
               "  --output=json   exactly the schema of qemu-img map --output=json\n"
               "  --output=human  a table of data extents, then the L1/L2 tables\n"
               "  --output=svg    a picture: guest view by layer, host view by what each\n"
               "                  cluster holds, legend and the figures of qemu-img check\n"
               "  --output=html   the same picture in a page, with details on hover\n"
               "  --bitmap NAME   (svg, html) also draw the dirty ranges of bitmap NAME\n"
               "  --start-offset OFF, --max-length LEN  (human, json) map [OFF, OFF + LEN) only\n"
               "  -f FMT          force the format (raw, qcow2)\n"
               "  -U, --force-share  map it even while another process writes it\n");
}

static int walk(struct rb_image *img, bool json, uint64_t start, uint64_t end)
{
    struct rb_map_walk w;
    struct rb_map_entry cur, next;
    struct rb_error err = {0};
    int ret;

    if (json)
        printf("[");
    else
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    rb_map_init(&w, rb_map_image_status, img, start, end > start ? end : start);
    ret = rb_map_next(&w, &cur, &err);
    if (ret == 0 && json) /* an empty range: qemu-img prints one empty entry */
        printf("{ \"start\": %" PRIu64 ", \"length\": 0, \"depth\": 0, \"present\": false,"
               " \"zero\": false, \"data\": false}", start);
    while (ret > 0) {
        ret = rb_map_next(&w, &next, &err);
        print_entry(&cur, json, ret > 0, img);
        cur = next;
    }
    if (json)
        printf("]\n");
    if (ret < 0) {
        fflush(stdout);
        complain("%s", rb_error_msg(&err, ret));
        return 1;
    }
    return 0;
}

/* --output=svg|html: the picture (lib/ops/picture.c) on stdout. */
static int picture(struct rb_image *img, const struct rb_picture_opts *po)
{
    struct rb_error err = {0};
    char *doc;
    size_t len;
    int ret = rb_picture_render(img, po, &doc, &len, &err);

    if (ret < 0) {
        complain("%s", rb_error_msg(&err, ret));
        return 1;
    }
    ret = fwrite(doc, 1, len, stdout) == len && fflush(stdout) == 0 ? 0 : 1;
    free(doc);
    if (ret)
        complain("cannot write the picture: %s", strerror(errno));
    return ret;
}

int cmd_map(int argc, char **argv)
{
    static const struct option opts[] = {
        {"output", required_argument, NULL, 'o'},
        {"format", required_argument, NULL, 'f'},
        {"force-share", no_argument, NULL, 'U'},
        {"bitmap", required_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'},
        {"start-offset", required_argument, NULL, 'S'},
        {"max-length", required_argument, NULL, 'L'},
        {NULL, 0, NULL, 0},
    };
    struct rb_open_opts oo = {0};
    struct rb_error err = {0};
    uint64_t start = 0, max_len = UINT64_MAX, end;
    bool json = false, draw = false;
    struct rb_picture_opts po = {0};
    struct rb_image *img;
    int c, ret;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":f:Uh", opts, NULL)) != -1) {
        switch (c) {
        case 'o':
            draw = strcmp(optarg, "svg") == 0 || strcmp(optarg, "html") == 0;
            po.html = strcmp(optarg, "html") == 0;
            json = strcmp(optarg, "json") == 0;
            if (!draw && !json && strcmp(optarg, "human") != 0) {
                complain("--output must be 'human', 'json', 'svg' or 'html', not '%s'",
                         optarg);
                return 1;
            }
            break;
        case 'b':
            po.bitmap = optarg;
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
        case 'S':
        case 'L':
            /* as qemu-img map: [start, min(start + max-length, size)) */
            if (parse_size(optarg, c == 'S' ? &start : &max_len) < 0) {
                complain("map: invalid %s '%s'", c == 'S' ? "start offset" : "max length",
                         optarg);
                return 1;
            }
            break;
        default:
            return bad_option("map", argv, c);
        }
    }
    if (optind != argc - 1) {
        bad_usage("map", "needs one IMAGE");
        return 1;
    }
    if (po.bitmap && !draw) {
        bad_usage("map", "--bitmap draws: it needs --output=svg or --output=html");
        return 1;
    }
    img = rb_image_open(argv[optind], &oo, &err);
    if (!img) {
        complain("%s", rb_error_msg(&err, -EIO));
        return 1;
    }
    if (draw) {
        ret = picture(img, &po);
        rb_image_close(img);
        return ret;
    }
    end = max_len > img->size - (start < img->size ? start : img->size)
              ? img->size : start + max_len;
    ret = walk(img, json, start, end);
    if (ret == 0 && !json && rb_qcow2_is(img))
        ret = print_tables(img);
    rb_image_close(img);
    return ret;
}
