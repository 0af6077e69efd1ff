/* SPDX-License-Identifier: MIT */
/*
 * inspect.c - the `info` and `check` methods: the live image described
 * with the field names of `qemu-img info --output=json` and `qemu-img
 * check --output=json`, through the qcow2 driver's public API
 * (include/rblock/qcow2.h), which takes the image's lock itself.
 */
#include <errno.h>
#include <stdint.h>
#include <sys/stat.h>

#include "core/export.h"
#include "jsonrpc/jsonrpc.h"
#include "rblock/qcow2.h"

/* Set @key to a new value; on failure drop @o (returns NULL). */
static json_t *put(json_t *o, const char *key, json_t *v)
{
    if (!o || !v || json_object_set_new(o, key, v) != 0) {
        json_decref(o);
        json_decref(v);
        return NULL;
    }
    return o;
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *qcow2_specific(const struct rb_qcow2_info *q)
{
    json_t *d = json_object();

    d = put(d, "compat", json_string(q->compat));
    if (q->version >= 3) {
        d = put(d, "compression-type", json_string(q->compression_name));
        d = put(d, "lazy-refcounts", json_boolean(q->lazy_refcounts));
    }
    d = put(d, "refcount-bits", json_integer(q->refcount_bits));
    d = put(d, "corrupt", json_boolean(q->corrupt));
    d = put(d, "extended-l2", json_boolean(q->extended_l2));
    if (d && q->data_file) {
        d = put(d, "data-file", json_string(q->data_file));
        d = put(d, "data-file-raw", json_boolean(q->data_file_raw));
    }
    /* rblock's own, beyond qemu-img's: the metadata at a glance */
    d = put(d, "l1-size", json_integer(q->l1_size));
    d = put(d, "l2-tables", json_integer((json_int_t)q->l2_tables));
    d = put(d, "data-clusters", json_integer((json_int_t)q->data_clusters));
    d = put(d, "zero-clusters", json_integer((json_int_t)q->zero_clusters));
    d = put(d, "compressed-clusters", json_integer((json_int_t)q->compressed_clusters));
    d = put(d, "snapshots", json_integer(q->nb_snapshots));
    d = put(d, "bitmaps", json_integer(q->nb_bitmaps));
    return put(json_pack("{s:s}", "type", "qcow2"), "data", d);
}

static json_t *layer_json(struct rb_image *img, struct rb_error *err)
{
    struct stat st;
    json_t *o = json_object();

    o = put(o, "virtual-size", json_integer((json_int_t)img->size));
    o = put(o, "filename", json_string(img->filename));
    if (o && img->cluster_bytes)
        o = put(o, "cluster-size", json_integer(img->cluster_bytes));
    o = put(o, "format", json_string(img->ops->format));
    if (o && stat(img->filename, &st) == 0)
        o = put(o, "actual-size", json_integer((json_int_t)st.st_blocks * 512));
    if (o && img->backing_name) {
        o = put(o, "backing-filename", json_string(img->backing_name));
        o = put(o, "full-backing-filename", str_or_null(img->backing_path));
        if (o && img->backing_format)
            o = put(o, "backing-filename-format", json_string(img->backing_format));
    }
    if (o && rb_qcow2_is(img)) {
        struct rb_qcow2_info q = {0};
        int ret = rb_qcow2_get_info(img, &q, err);
        if (ret < 0) {
            json_decref(o);
            return NULL;
        }
        o = put(o, "format-specific", qcow2_specific(&q));
        o = put(o, "dirty-flag", json_boolean(q.dirty));
        rb_qcow2_info_free(&q);
    }
    return o;
}

json_t *rb_rpc_info_json(struct rb_export *e, struct rb_error *err)
{
    struct rb_image *img = rb_export_image(e);
    json_t *top = layer_json(img, err), *chain = json_array();

    top = put(top, "read-only", json_boolean(rb_export_read_only(e)));
    /* Every layer, as `qemu-img info --backing-chain` lists them. */
    for (struct rb_image *l = img; top && chain && l; l = l->backing) {
        json_t *j = layer_json(l, err);
        if (!j || json_array_append_new(chain, j) != 0) {
            json_decref(chain);
            chain = NULL;
        }
    }
    top = put(top, "backing-chain", chain);
    if (!top)
        rb_error_set(err, ENOMEM, "out of memory");
    return top;
}

json_t *rb_rpc_check_json(struct rb_export *e, struct rb_error *err)
{
    struct rb_image *img = rb_export_image(e);
    struct rb_qcow2_check r = {0};
    json_t *o, *probs;

    if (!rb_qcow2_is(img)) {
        rb_error_set(err, ENOTSUP, "'%s': %s images have no metadata to check",
                     img->filename, img->ops->format);
        return NULL;
    }
#ifdef RB_HAVE_QCOW2_CHECK
    if (rb_qcow2_check(img, &r, err) < 0)
        return NULL;
#else
    /* lib/qcow2/check.c has not landed yet */
    rb_error_set(err, ENOTSUP, "'%s': this build cannot check qcow2 images yet", img->filename);
    return NULL;
#endif
    o = json_object();
    o = put(o, "image-end-offset", json_integer((json_int_t)r.image_end_offset));
    o = put(o, "total-clusters", json_integer((json_int_t)r.total_clusters));
    o = put(o, "check-errors", json_integer((json_int_t)r.check_errors));
    o = put(o, "allocated-clusters", json_integer((json_int_t)r.allocated_clusters));
    o = put(o, "filename", json_string(img->filename));
    o = put(o, "format", json_string("qcow2"));
    o = put(o, "fragmented-clusters", json_integer((json_int_t)r.fragmented_clusters));
    o = put(o, "compressed-clusters", json_integer((json_int_t)r.compressed_clusters));
    o = put(o, "corruptions", json_integer((json_int_t)r.corruptions));
    o = put(o, "leaks", json_integer((json_int_t)r.leaks));
    probs = json_array();
    for (size_t i = 0; probs && i < r.nb_problems; i++) {
        const struct rb_qcow2_problem *p = &r.problems[i];
        json_t *j = json_pack("{s:s, s:s}", "kind",
                              p->kind == RB_QCOW2_LEAK ? "leak" : "corruption", "message",
                              p->msg);
        if (j && p->host_off != UINT64_MAX)
            j = put(j, "offset", json_integer((json_int_t)p->host_off));
        if (!j || json_array_append_new(probs, j) != 0) {
            json_decref(probs);
            probs = NULL;
        }
    }
    o = put(o, "problems", probs);
    o = put(o, "problems-dropped", json_integer((json_int_t)r.problems_dropped));
#ifdef RB_HAVE_QCOW2_CHECK
    rb_qcow2_check_free(&r);
#endif
    if (!o)
        rb_error_set(err, ENOMEM, "out of memory");
    return o;
}
