/* SPDX-License-Identifier: MIT */
/*
 * view.c - the JSON views of `info` and `check` (see rblock/view.h),
 * shared by cmd/info.c, cmd/check.c and the JSON-RPC methods
 * (server/jsonrpc/inspect.c).  Keys are added in qemu-img's order:
 * jansson keeps insertion order, and tests compare the text.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>

#include "rblock/view.h"

/* Builds stay NULL-safe: any failed allocation poisons the object, which
 * is then dropped whole (put returns NULL) and reported as ENOMEM. */
static json_t *put(json_t *o, const char *key, json_t *v)
{
    if (!o || !v || json_object_set_new(o, key, v) != 0) {
        json_decref(o);
        json_decref(v);
        return NULL;
    }
    return o;
}

static json_t *push(json_t *a, json_t *v)
{
    if (!a || !v || json_array_append_new(a, v) != 0) {
        json_decref(a);
        json_decref(v);
        return NULL;
    }
    return a;
}

static json_t *jint(uint64_t v)
{
    return json_integer((json_int_t)v);
}

/* Offsets and feature masks: numbers, as every other number in the JSON
 * of rblock (and of qemu-img); the text output shows them in hex. */
static json_t *hex(uint64_t v)
{
    return jint(v);
}

static json_t *snapshots_json(const struct rb_qcow2_info *q)
{
    json_t *a = json_array();

    for (uint32_t i = 0; a && i < q->nb_snapshots; i++) {
        const struct rb_qcow2_snapshot *sn = &q->snapshots[i];
        json_t *o = json_object();
        if (sn->icount != UINT64_MAX)
            o = put(o, "icount", jint(sn->icount));
        o = put(o, "vm-clock-nsec", jint(sn->vm_clock_nsec % 1000000000));
        o = put(o, "name", json_string(sn->name));
        o = put(o, "date-sec", jint(sn->date_sec));
        o = put(o, "date-nsec", jint(sn->date_nsec));
        o = put(o, "vm-clock-sec", jint(sn->vm_clock_nsec / 1000000000));
        o = put(o, "id", json_string(sn->id));
        o = put(o, "vm-state-size", jint(sn->vm_state_size));
        o = put(o, "rblock-disk-size", jint(sn->disk_size));
        o = put(o, "rblock-l1-table-offset", jint(sn->l1_table_offset));
        o = put(o, "rblock-l1-size", jint(sn->l1_size));
        a = push(a, o);
    }
    return a;
}

static json_t *format_specific(const struct rb_qcow2_info *q)
{
    json_t *d = json_object();

    d = put(d, "compat", json_string(q->compat));
    d = put(d, "compression-type", json_string(q->compression_name));
    if (q->version >= 3)
        d = put(d, "lazy-refcounts", json_boolean(q->lazy_refcounts));
    if (q->nb_bitmaps) {
        json_t *bm = json_array();
        for (uint32_t i = 0; i < q->nb_bitmaps; i++) {
            json_t *b = json_object(), *fl = json_array();
            if (q->bitmaps[i].in_use)
                fl = push(fl, json_string("in-use"));
            if (q->bitmaps[i].autom)
                fl = push(fl, json_string("auto"));
            b = put(b, "flags", fl);
            b = put(b, "name", json_string(q->bitmaps[i].name));
            b = put(b, "granularity", jint(q->bitmaps[i].granularity));
            bm = push(bm, b);
        }
        d = put(d, "bitmaps", bm);
    }
    d = put(d, "refcount-bits", jint(q->refcount_bits));
    if (q->version >= 3) {
        d = put(d, "corrupt", json_boolean(q->corrupt));
        d = put(d, "extended-l2", json_boolean(q->extended_l2));
    }
    if (q->data_file) {
        d = put(d, "data-file", json_string(q->data_file));
        d = put(d, "data-file-raw", json_boolean(q->data_file_raw));
    }
    return put(put(json_object(), "type", json_string("qcow2")), "data", d);
}

static json_t *rblock_json(const struct rb_qcow2_info *q)
{
    static const char *const ftype[] = {"incompatible", "compatible", "autoclear"};
    json_t *h = json_object(), *f = json_array(), *e = json_array();
    json_t *l1 = json_object(), *cl = json_object(), *rt = json_object();
    json_t *r = json_object();

    h = put(h, "version", jint(q->version));
    h = put(h, "backing-file-offset", hex(q->backing_file_offset));
    h = put(h, "backing-file-size", jint(q->backing_file_size));
    h = put(h, "cluster-bits", jint(q->cluster_bits));
    h = put(h, "size", jint(q->size));
    h = put(h, "crypt-method", jint(q->crypt_method));
    h = put(h, "l1-size", jint(q->l1_size));
    h = put(h, "l1-table-offset", hex(q->l1_table_offset));
    h = put(h, "refcount-table-offset", hex(q->refcount_table_offset));
    h = put(h, "refcount-table-clusters", jint(q->refcount_table_clusters));
    h = put(h, "nb-snapshots", jint(q->nb_snapshots));
    h = put(h, "snapshots-offset", hex(q->snapshots_offset));
    h = put(h, "incompatible-features", hex(q->incompatible_features));
    h = put(h, "compatible-features", hex(q->compatible_features));
    h = put(h, "autoclear-features", hex(q->autoclear_features));
    h = put(h, "refcount-order", jint(q->refcount_order));
    h = put(h, "header-length", jint(q->header_length));
    h = put(h, "compression-type", jint(q->compression_type));
    r = put(r, "header", h);
    for (size_t i = 0; i < q->nb_features; i++) {
        json_t *o = json_object();
        o = put(o, "type", json_string(ftype[q->features[i].type % 3]));
        o = put(o, "bit", jint(q->features[i].bit));
        o = put(o, "name", json_string(q->features[i].name));
        o = put(o, "set", json_boolean(q->features[i].set));
        f = push(f, o);
    }
    r = put(r, "features", f);
    for (size_t i = 0; i < q->nb_extensions; i++) {
        json_t *o = json_object();
        o = put(o, "type", jint(q->extensions[i].type));
        o = put(o, "name", json_string(q->extensions[i].name));
        o = put(o, "length", jint(q->extensions[i].length));
        o = put(o, "offset", hex(q->extensions[i].offset));
        e = push(e, o);
    }
    r = put(r, "extensions", e);
    if (q->nb_bitmaps) {
        json_t *b = json_object();
        b = put(b, "count", jint(q->nb_bitmaps));
        b = put(b, "directory-offset", hex(q->bitmap_directory_offset));
        b = put(b, "directory-size", jint(q->bitmap_directory_size));
        r = put(r, "bitmaps", b);
        /* each bitmap with its dirty bytes, in the keys of QEMU's
         * query-block "dirty-bitmaps" (BlockDirtyInfo) */
        json_t *d = json_array();
        for (uint32_t i = 0; i < q->nb_bitmaps; i++) {
            const struct rb_qcow2_bitmap *bm = &q->bitmaps[i];
            json_t *o = json_object();
            o = put(o, "name", json_string(bm->name));
            o = put(o, "granularity", jint(bm->granularity));
            o = put(o, "recording", json_boolean(bm->autom && !bm->in_use));
            o = put(o, "inconsistent", json_boolean(bm->in_use));
            if (bm->has_dirty)
                o = put(o, "count", jint(bm->dirty_bytes));
            d = push(d, o);
        }
        r = put(r, "dirty-bitmaps", d);
    }
    l1 = put(l1, "offset", hex(q->l1_table_offset));
    l1 = put(l1, "entries", jint(q->l1_size));
    l1 = put(l1, "l2-tables", jint(q->l2_tables));
    l1 = put(l1, "l2-entries", jint(q->l2_entries));
    r = put(r, "l1", l1);
    cl = put(cl, "allocated", jint(q->data_clusters));
    cl = put(cl, "zero", jint(q->zero_clusters));
    cl = put(cl, "compressed", jint(q->compressed_clusters));
    r = put(r, "clusters", cl);
    rt = put(rt, "offset", hex(q->refcount_table_offset));
    rt = put(rt, "clusters", jint(q->refcount_table_clusters));
    rt = put(rt, "entries", jint(q->reftable_entries));
    rt = put(rt, "refcount-blocks", jint(q->refcount_blocks));
    rt = put(rt, "refcounts-per-block", jint(q->refblock_entries));
    r = put(r, "refcount-table", rt);
    r = put(r, "file-size", jint(q->file_size));
    return r;
}

/* One layer of the chain. */
static json_t *layer_json(struct rb_image *img, struct rb_error *err)
{
    struct rb_qcow2_info qi, *q = NULL;
    struct stat st;
    json_t *o = json_object();

    if (rb_qcow2_is(img)) {
        if (rb_qcow2_get_info(img, &qi, err) < 0) {
            json_decref(o);
            return NULL;
        }
        q = &qi;
    }
    if (q && q->nb_snapshots)
        o = put(o, "snapshots", snapshots_json(q));
    o = put(o, "virtual-size", jint(img->size));
    o = put(o, "filename", json_string(img->filename));
    if (q)
        o = put(o, "cluster-size", jint(q->cluster_bytes));
    o = put(o, "format", json_string(img->ops->format));
    o = put(o, "actual-size",
            jint(stat(img->filename, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0));
    if (q)
        o = put(o, "format-specific", format_specific(q));
    if (img->backing_name) {
        o = put(o, "backing-filename", json_string(img->backing_name));
        if (img->backing_path)
            o = put(o, "full-backing-filename", json_string(img->backing_path));
        if (img->backing_format)
            o = put(o, "backing-filename-format", json_string(img->backing_format));
    }
    o = put(o, "dirty-flag", json_boolean(q && q->dirty));
    if (q) {
        o = put(o, "rblock", rblock_json(q));
        rb_qcow2_info_free(q);
    }
    if (!o)
        rb_error_set(err, ENOMEM, "out of memory");
    return o;
}

json_t *rb_view_info(struct rb_image *img, bool backing_chain, struct rb_error *err)
{
    json_t *arr;

    if (!backing_chain)
        return layer_json(img, err);
    arr = json_array();
    for (struct rb_image *l = img; l; l = l->backing) {
        json_t *o = layer_json(l, err);
        if (!o) {
            json_decref(arr);
            return NULL;
        }
        arr = push(arr, o);
    }
    if (!arr)
        rb_error_set(err, ENOMEM, "out of memory");
    return arr;
}

json_t *rb_view_check(const char *filename, const struct rb_qcow2_check *r)
{
    json_t *o = json_object(), *p = json_array();

    o = put(o, "image-end-offset", jint(r->image_end_offset));
    o = put(o, "total-clusters", jint(r->total_clusters));
    o = put(o, "check-errors", jint(r->check_errors));
    if (r->leaks)
        o = put(o, "leaks", jint(r->leaks));
    if (r->corruptions)
        o = put(o, "corruptions", jint(r->corruptions));
    o = put(o, "allocated-clusters", jint(r->allocated_clusters));
    o = put(o, "filename", json_string(filename));
    o = put(o, "format", json_string("qcow2"));
    /* qemu-img leaves these out when zero */
    if (r->fragmented_clusters)
        o = put(o, "fragmented-clusters", jint(r->fragmented_clusters));
    if (r->compressed_clusters)
        o = put(o, "compressed-clusters", jint(r->compressed_clusters));
    /* a live image only (JSON-RPC check while it is written) */
    if (r->in_flight_clusters)
        o = put(o, "rblock-in-flight-clusters", jint(r->in_flight_clusters));
    for (size_t i = 0; p && i < r->nb_problems; i++) {
        json_t *x = json_object();
        x = put(x, "kind",
                json_string(r->problems[i].kind == RB_QCOW2_LEAK ? "leak" : "corruption"));
        if (r->problems[i].host_off != UINT64_MAX)
            x = put(x, "offset", jint(r->problems[i].host_off));
        x = put(x, "message", json_string(r->problems[i].msg));
        p = push(p, x);
    }
    return put(o, "rblock-problems", p);
}
