/* SPDX-License-Identifier: MIT */
/*
 * info.c - `rblock info` (alias `rblock --inspect`): what qemu-img info
 * shows, with its JSON key names where the same fact exists, plus
 * rblock's own view of a qcow2 image under the "rblock" key: header
 * fields, features by name, extensions, L1/L2 and refcount layout.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cmd.h"
#include "rblock/qcow2.h"
#include "rblock/view.h"

/* qemu's size_to_str: three significant digits, 1000 KiB shows as MiB */
static void size_str(char *out, size_t n, uint64_t v)
{
    static const char *const sfx[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
    double x = (double)v * 1.024;
    int e = 0, i;

    while (x >= 2.0) {
        x /= 2;
        e++;
    }
    i = e / 10;
    if (i > 6)
        i = 6;
    snprintf(out, n, "%0.3g %sB", (double)v / (double)(1ull << (i * 10)), sfx[i]);
}

static uint64_t actual_size(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

/* qemu-img's "Snapshot list:" table (info and snapshot -l); nothing when
 * there are no snapshots. */
void print_snapshot_list(const struct rb_qcow2_info *q)
{
    if (!q->nb_snapshots)
        return;
    printf("Snapshot list:\n%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE",
           "DATE", "VM CLOCK", "ICOUNT");
    for (uint32_t i = 0; i < q->nb_snapshots; i++) {
        const struct rb_qcow2_snapshot *sn = &q->snapshots[i];
        time_t t = sn->date_sec;
        struct tm tm;
        char date[32], vm[32], ic[24] = "";
        uint64_t secs = sn->vm_clock_nsec / 1000000000;

        localtime_r(&t, &tm);
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
        size_str(vm, sizeof(vm), sn->vm_state_size);
        if (sn->icount != UINT64_MAX)
            snprintf(ic, sizeof(ic), "%" PRIu64, sn->icount);
        printf("%-9s %-16s %8s %19s %02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ".%03" PRIu64
               " %10s\n", sn->id, sn->name, vm, date, secs / 3600, secs / 60 % 60,
               secs % 60, sn->vm_clock_nsec / 1000000 % 1000, ic);
    }
}

static void print_human(struct rb_image *img, const struct rb_qcow2_info *q)
{
    char sz[32];

    printf("image: %s\nfile format: %s\n", img->filename, img->ops->format);
    size_str(sz, sizeof(sz), img->size);
    printf("virtual size: %s (%" PRIu64 " bytes)\n", sz, img->size);
    size_str(sz, sizeof(sz), actual_size(img->filename));
    printf("disk size: %s\n", sz);
    if (q)
        printf("cluster_size: %" PRIu32 "\n", q->cluster_bytes);
    if (img->backing_name) {
        printf("backing file: %s", img->backing_name);
        if (img->backing_path && strcmp(img->backing_path, img->backing_name))
            printf(" (actual path: %s)", img->backing_path);
        putchar('\n');
        if (img->backing_format)
            printf("backing file format: %s\n", img->backing_format);
    }
    if (!q)
        return;
    if (q->dirty)
        printf("cleanly shut down: no\n");
    print_snapshot_list(q);
    printf("Format specific information:\n    compat: %s\n    compression type: %s\n",
           q->compat, q->compression_name);
    if (q->version >= 3)
        printf("    lazy refcounts: %s\n", q->lazy_refcounts ? "true" : "false");
    if (q->nb_bitmaps) {
        printf("    bitmaps:\n");
        for (uint32_t i = 0; i < q->nb_bitmaps; i++) {
            const struct rb_qcow2_bitmap *b = &q->bitmaps[i];
            int k = 0;
            printf("        [%" PRIu32 "]:\n            flags:\n", i);
            if (b->in_use)
                printf("                [%d]: in-use\n", k++);
            if (b->autom)
                printf("                [%d]: auto\n", k++);
            printf("            name: %s\n            granularity: %" PRIu64 "\n", b->name,
                   b->granularity);
        }
    }
    printf("    refcount bits: %" PRIu32 "\n", q->refcount_bits);
    if (q->version >= 3)
        printf("    corrupt: %s\n    extended l2: %s\n", q->corrupt ? "true" : "false",
               q->extended_l2 ? "true" : "false");
    if (q->data_file)
        printf("    data file: %s\n    data file raw: %s\n", q->data_file,
               q->data_file_raw ? "true" : "false");
    printf("rblock:\n    header: version %" PRIu32 ", header length %" PRIu32
           ", cluster bits %" PRIu32 ", refcount order %" PRIu32 "\n",
           q->version, q->header_length, q->cluster_bits, q->refcount_order);
    printf("    features: incompatible 0x%" PRIx64 ", compatible 0x%" PRIx64
           ", autoclear 0x%" PRIx64 "\n", q->incompatible_features,
           q->compatible_features, q->autoclear_features);
    for (size_t i = 0; i < q->nb_features; i++) {
        static const char *const ft[] = {"incompatible", "compatible", "autoclear"};
        if (q->features[i].set)
            printf("        %s bit %u: %s\n", ft[q->features[i].type], q->features[i].bit,
                   q->features[i].name);
    }
    for (size_t i = 0; i < q->nb_extensions; i++)
        printf("    extension 0x%08" PRIx32 " (%s): %" PRIu32 " bytes at 0x%" PRIx64 "\n",
               q->extensions[i].type, q->extensions[i].name, q->extensions[i].length,
               q->extensions[i].offset);
    if (q->nb_bitmaps)
        printf("    bitmaps: %" PRIu32 ", directory at 0x%" PRIx64 " (%" PRIu64 " bytes)\n",
               q->nb_bitmaps, q->bitmap_directory_offset, q->bitmap_directory_size);
    for (uint32_t i = 0; i < q->nb_bitmaps; i++) {
        const struct rb_qcow2_bitmap *b = &q->bitmaps[i];
        if (b->has_dirty)
            printf("        '%s': %" PRIu64 " dirty bytes\n", b->name, b->dirty_bytes);
        else
            printf("        '%s': inconsistent (in use: not saved cleanly)\n", b->name);
    }
    printf("    L1 table: %" PRIu32 " entries at 0x%" PRIx64 ", %" PRIu64
           " L2 tables of %" PRIu32 " entries\n", q->l1_size, q->l1_table_offset,
           q->l2_tables, q->l2_entries);
    printf("    clusters: %" PRIu64 " allocated, %" PRIu64 " zero, %" PRIu64
           " compressed\n", q->data_clusters, q->zero_clusters, q->compressed_clusters);
    printf("    refcount table: %" PRIu32 " clusters at 0x%" PRIx64 ", %" PRIu64
           " entries, %" PRIu64 " refcount blocks of %" PRIu32 " entries\n",
           q->refcount_table_clusters, q->refcount_table_offset, q->reftable_entries,
           q->refcount_blocks, q->refblock_entries);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: rblock info [--output=human|json] [--backing-chain] [-f FMT] [-U] IMAGE\n"
               "\nShow an image's size, format, header, features, layout and chain.\n"
               "  --output=json    qemu-img info's keys, plus rblock's own under \"rblock\"\n"
               "  --backing-chain  every layer of the chain (a JSON array)\n"
               "  -f FMT           force the format (raw, qcow2)\n"
               "  -U, --force-share  open it even while another process writes it\n");
}

int cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {
        {"output", required_argument, NULL, 'o'},
        {"backing-chain", no_argument, NULL, 'b'},
        {"format", required_argument, NULL, 'f'},
        {"force-share", no_argument, NULL, 'U'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct rb_open_opts oo = {0};
    struct rb_error err = {0};
    bool json = false, chain = false;
    struct rb_image *img;
    int c, ret = 0;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":f:Uh", opts, NULL)) != -1) {
        switch (c) {
        case 'o':
            if (parse_output(optarg, &json) < 0)
                return 1;
            break;
        case 'b':
            chain = true;
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
            return bad_option("info", argv, c);
        }
    }
    if (optind != argc - 1) {
        bad_usage("info", "needs one IMAGE");
        return 1;
    }
    /* like qemu-img info: the backing chain only when asked for */
    oo.no_backing = !chain;
    img = rb_image_open(argv[optind], &oo, &err);
    if (!img) {
        complain("%s", rb_error_msg(&err, -1));
        return 1;
    }
    if (json) {
        json_t *o = rb_view_info(img, chain, &err);
        if (o) {
            json_dumpf(o, stdout, JSON_INDENT(4));
            putchar('\n');
            json_decref(o);
        } else {
            complain("%s", rb_error_msg(&err, -1));
            ret = 1;
        }
        rb_image_close(img);
        return ret;
    }
    for (struct rb_image *l = img; l; l = chain ? l->backing : NULL) {
        struct rb_qcow2_info q;
        bool is_q = rb_qcow2_is(l);

        if (is_q && rb_qcow2_get_info(l, &q, &err) < 0) {
            complain("%s", rb_error_msg(&err, -1));
            ret = 1;
            break;
        }
        if (l != img)
            putchar('\n');
        print_human(l, is_q ? &q : NULL);
        if (is_q)
            rb_qcow2_info_free(&q);
    }
    rb_image_close(img);
    return ret;
}
