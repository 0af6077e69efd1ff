/* SPDX-License-Identifier: MIT */
/*
 * info.c - `rblock info` (alias `rblock --inspect`): what qemu-img info
 * shows, with its JSON key names where the same fact exists, plus
 * rblock's own view of a qcow2 image under the "rblock" key: header
 * fields, features by name, extensions, L1/L2 and refcount layout.
 */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cmd.h"
#include "rblock/qcow2.h"

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

static json_t *hex(uint64_t v)
{
    char buf[24];

    snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
    return json_string(buf);
}

static json_t *snapshots_json(const struct rb_qcow2_info *q)
{
    json_t *a = json_array();

    for (uint32_t i = 0; i < q->nb_snapshots; i++) {
        const struct rb_qcow2_snapshot *sn = &q->snapshots[i];
        json_t *o = json_object();
        if (sn->icount != UINT64_MAX)
            json_object_set_new(o, "icount", json_integer((json_int_t)sn->icount));
        json_object_set_new(o, "vm-clock-nsec",
                            json_integer((json_int_t)(sn->vm_clock_nsec % 1000000000)));
        json_object_set_new(o, "name", json_string(sn->name));
        json_object_set_new(o, "date-sec", json_integer(sn->date_sec));
        json_object_set_new(o, "date-nsec", json_integer(sn->date_nsec));
        json_object_set_new(o, "vm-clock-sec",
                            json_integer((json_int_t)(sn->vm_clock_nsec / 1000000000)));
        json_object_set_new(o, "id", json_string(sn->id));
        json_object_set_new(o, "vm-state-size", json_integer((json_int_t)sn->vm_state_size));
        json_object_set_new(o, "rblock-disk-size", json_integer((json_int_t)sn->disk_size));
        json_object_set_new(o, "rblock-l1-table-offset", json_integer((json_int_t)sn->l1_table_offset));
        json_object_set_new(o, "rblock-l1-size", json_integer(sn->l1_size));
        json_array_append_new(a, o);
    }
    return a;
}

static json_t *format_specific(const struct rb_qcow2_info *q)
{
    json_t *fs = json_object(), *d = json_object();

    json_object_set_new(fs, "type", json_string("qcow2"));
    json_object_set_new(d, "compat", json_string(q->compat));
    json_object_set_new(d, "compression-type", json_string(q->compression_name));
    if (q->version >= 3)
        json_object_set_new(d, "lazy-refcounts", json_boolean(q->lazy_refcounts));
    if (q->nb_bitmaps) {
        json_t *bm = json_array();
        for (uint32_t i = 0; i < q->nb_bitmaps; i++) {
            json_t *b = json_object(), *fl = json_array();
            if (q->bitmaps[i].in_use)
                json_array_append_new(fl, json_string("in-use"));
            if (q->bitmaps[i].autom)
                json_array_append_new(fl, json_string("auto"));
            json_object_set_new(b, "flags", fl);
            json_object_set_new(b, "name", json_string(q->bitmaps[i].name));
            json_object_set_new(b, "granularity",
                                json_integer((json_int_t)q->bitmaps[i].granularity));
            json_array_append_new(bm, b);
        }
        json_object_set_new(d, "bitmaps", bm);
    }
    json_object_set_new(d, "refcount-bits", json_integer(q->refcount_bits));
    if (q->version >= 3) {
        json_object_set_new(d, "corrupt", json_boolean(q->corrupt));
        json_object_set_new(d, "extended-l2", json_boolean(q->extended_l2));
    }
    if (q->data_file) {
        json_object_set_new(d, "data-file", json_string(q->data_file));
        json_object_set_new(d, "data-file-raw", json_boolean(q->data_file_raw));
    }
    json_object_set_new(fs, "data", d);
    return fs;
}

static json_t *rblock_json(const struct rb_qcow2_info *q)
{
    json_t *r = json_object(), *h = json_object(), *f = json_array(), *e = json_array();
    json_t *l1 = json_object(), *cl = json_object(), *rt = json_object();
    static const char *const ftype[] = {"incompatible", "compatible", "autoclear"};

    json_object_set_new(h, "version", json_integer(q->version));
    json_object_set_new(h, "backing-file-offset", hex(q->backing_file_offset));
    json_object_set_new(h, "backing-file-size", json_integer(q->backing_file_size));
    json_object_set_new(h, "cluster-bits", json_integer(q->cluster_bits));
    json_object_set_new(h, "size", json_integer((json_int_t)q->size));
    json_object_set_new(h, "crypt-method", json_integer(q->crypt_method));
    json_object_set_new(h, "l1-size", json_integer(q->l1_size));
    json_object_set_new(h, "l1-table-offset", hex(q->l1_table_offset));
    json_object_set_new(h, "refcount-table-offset", hex(q->refcount_table_offset));
    json_object_set_new(h, "refcount-table-clusters", json_integer(q->refcount_table_clusters));
    json_object_set_new(h, "nb-snapshots", json_integer(q->nb_snapshots));
    json_object_set_new(h, "snapshots-offset", hex(q->snapshots_offset));
    json_object_set_new(h, "incompatible-features", hex(q->incompatible_features));
    json_object_set_new(h, "compatible-features", hex(q->compatible_features));
    json_object_set_new(h, "autoclear-features", hex(q->autoclear_features));
    json_object_set_new(h, "refcount-order", json_integer(q->refcount_order));
    json_object_set_new(h, "header-length", json_integer(q->header_length));
    json_object_set_new(h, "compression-type", json_integer(q->compression_type));
    json_object_set_new(r, "header", h);
    for (size_t i = 0; i < q->nb_features; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "type", json_string(ftype[q->features[i].type]));
        json_object_set_new(o, "bit", json_integer(q->features[i].bit));
        json_object_set_new(o, "name", json_string(q->features[i].name));
        json_object_set_new(o, "set", json_boolean(q->features[i].set));
        json_array_append_new(f, o);
    }
    json_object_set_new(r, "features", f);
    for (size_t i = 0; i < q->nb_extensions; i++) {
        json_t *o = json_object();
        char t[16];
        snprintf(t, sizeof(t), "0x%08" PRIx32, q->extensions[i].type);
        json_object_set_new(o, "type", json_string(t));
        json_object_set_new(o, "name", json_string(q->extensions[i].name));
        json_object_set_new(o, "length", json_integer(q->extensions[i].length));
        json_object_set_new(o, "offset", hex(q->extensions[i].offset));
        json_array_append_new(e, o);
    }
    json_object_set_new(r, "extensions", e);
    if (q->nb_bitmaps) {
        json_t *b = json_object();
        json_object_set_new(b, "count", json_integer(q->nb_bitmaps));
        json_object_set_new(b, "directory-offset", hex(q->bitmap_directory_offset));
        json_object_set_new(b, "directory-size", json_integer((json_int_t)q->bitmap_directory_size));
        json_object_set_new(r, "bitmaps", b);
    }
    json_object_set_new(l1, "offset", hex(q->l1_table_offset));
    json_object_set_new(l1, "entries", json_integer(q->l1_size));
    json_object_set_new(l1, "l2-tables", json_integer((json_int_t)q->l2_tables));
    json_object_set_new(l1, "l2-entries", json_integer(q->l2_entries));
    json_object_set_new(r, "l1", l1);
    json_object_set_new(cl, "allocated", json_integer((json_int_t)q->data_clusters));
    json_object_set_new(cl, "zero", json_integer((json_int_t)q->zero_clusters));
    json_object_set_new(cl, "compressed", json_integer((json_int_t)q->compressed_clusters));
    json_object_set_new(r, "clusters", cl);
    json_object_set_new(rt, "offset", hex(q->refcount_table_offset));
    json_object_set_new(rt, "clusters", json_integer(q->refcount_table_clusters));
    json_object_set_new(rt, "entries", json_integer((json_int_t)q->reftable_entries));
    json_object_set_new(rt, "refcount-blocks", json_integer((json_int_t)q->refcount_blocks));
    json_object_set_new(rt, "refcounts-per-block", json_integer(q->refblock_entries));
    json_object_set_new(r, "refcount-table", rt);
    json_object_set_new(r, "file-size", json_integer((json_int_t)q->file_size));
    return r;
}

static json_t *layer_json(struct rb_image *img, const struct rb_qcow2_info *q)
{
    json_t *o = json_object();

    if (q && q->nb_snapshots)
        json_object_set_new(o, "snapshots", snapshots_json(q));
    json_object_set_new(o, "virtual-size", json_integer((json_int_t)img->size));
    json_object_set_new(o, "filename", json_string(img->filename));
    if (q)
        json_object_set_new(o, "cluster-size", json_integer(q->cluster_bytes));
    json_object_set_new(o, "format", json_string(img->ops->format));
    json_object_set_new(o, "actual-size", json_integer((json_int_t)actual_size(img->filename)));
    if (q)
        json_object_set_new(o, "format-specific", format_specific(q));
    if (img->backing_name) {
        json_object_set_new(o, "backing-filename", json_string(img->backing_name));
        if (img->backing_path)
            json_object_set_new(o, "full-backing-filename", json_string(img->backing_path));
        if (img->backing_format)
            json_object_set_new(o, "backing-filename-format", json_string(img->backing_format));
    }
    json_object_set_new(o, "dirty-flag", json_boolean(q && q->dirty));
    if (q)
        json_object_set_new(o, "rblock", rblock_json(q));
    return o;
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
    if (q->nb_snapshots) {
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
    fprintf(f, "usage: rblock info [--output=human|json] [--backing-chain] [-f FMT] IMAGE\n"
               "\nShow an image's size, format, header, features, layout and chain.\n"
               "  --output=json    qemu-img info's keys, plus rblock's own under \"rblock\"\n"
               "  --backing-chain  every layer of the chain (a JSON array)\n"
               "  -f FMT           force the format (raw, qcow2)\n");
}

int cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {
        {"output", required_argument, NULL, 'o'},
        {"backing-chain", no_argument, NULL, 'b'},
        {"format", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct rb_open_opts oo = {0};
    struct rb_error err = {0};
    bool json = false, chain = false;
    json_t *arr = NULL;
    struct rb_image *img;
    int c, ret = 0;

    optind = 1;
    while ((c = getopt_long(argc, argv, "f:h", opts, NULL)) != -1) {
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
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 1;
    }
    /* like qemu-img info: the backing chain only when asked for */
    oo.no_backing = !chain;
    img = rb_image_open(argv[optind], &oo, &err);
    if (!img) {
        complain("%s", rb_error_msg(&err, -1));
        return 1;
    }
    if (json && chain)
        arr = json_array();
    for (struct rb_image *l = img; l; l = chain ? l->backing : NULL) {
        struct rb_qcow2_info q;
        bool is_q = rb_qcow2_is(l);

        if (is_q && rb_qcow2_get_info(l, &q, &err) < 0) {
            complain("%s", rb_error_msg(&err, -1));
            ret = 1;
            break;
        }
        if (json) {
            json_t *o = layer_json(l, is_q ? &q : NULL);
            if (arr) {
                json_array_append_new(arr, o);
            } else {
                json_dumpf(o, stdout, JSON_INDENT(4));
                putchar('\n');
                json_decref(o);
            }
        } else {
            if (l != img)
                putchar('\n');
            print_human(l, is_q ? &q : NULL);
        }
        if (is_q)
            rb_qcow2_info_free(&q);
    }
    if (arr) {
        if (ret == 0) {
            json_dumpf(arr, stdout, JSON_INDENT(4));
            putchar('\n');
        }
        json_decref(arr);
    }
    rb_image_close(img);
    return ret;
}
