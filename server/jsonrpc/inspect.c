/* SPDX-License-Identifier: MIT */
/*
 * inspect.c - the `info` and `check` methods: the live image described
 * exactly as `rblock info --output=json` and `rblock check --output=json`
 * describe a file, by the same builders (rblock/view.h), over the qcow2
 * driver's public API, which takes the image's lock itself.
 * tests/interop/test_rpc.py compares the two.
 */
#include <errno.h>
#include <stdlib.h>

#include "core/export.h"
#include "jsonrpc/jsonrpc.h"
#include "rblock/picture.h"
#include "rblock/qcow2.h"
#include "rblock/view.h"

json_t *rb_rpc_info_json(struct rb_export *e, bool chain, struct rb_error *err)
{
    return rb_view_info(rb_export_image(e), chain, err);
}

json_t *rb_rpc_check_json(struct rb_export *e, struct rb_error *err)
{
    struct rb_image *img = rb_export_image(e);
    struct rb_qcow2_check r = {0};
    json_t *o;

    if (!rb_qcow2_is(img)) {
        rb_error_set(err, ENOTSUP, "%s: format '%s' does not support checks",
                     img->filename, img->ops->format);
        return NULL;
    }
    if (rb_qcow2_check(img, &r, err) < 0)
        return NULL;
    o = rb_view_check(img->filename, &r);
    rb_qcow2_check_free(&r);
    if (!o)
        rb_error_set(err, ENOMEM, "out of memory");
    return o;
}

json_t *rb_rpc_layout_json(struct rb_export *e, struct rb_error *err)
{
    struct rb_picture_opts po = {0};
    char *svg;
    size_t len;
    json_t *o;

    if (rb_picture_render(rb_export_image(e), &po, &svg, &len, err) < 0)
        return NULL;
    o = json_stringn(svg, len);
    free(svg);
    if (!o)
        rb_error_set(err, ENOMEM, "out of memory");
    return o;
}
