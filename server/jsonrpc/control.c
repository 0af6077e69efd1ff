/* SPDX-License-Identifier: MIT */
/*
 * control.c - the control plane: export_list, export_add, export_remove,
 * export_info, and the bitmap methods (bitmap_add/remove/clear/enable/
 * disable/merge), as qemu-storage-daemon's block-export-add/del,
 * query-block-exports and block-dirty-bitmap-* over QMP.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "jsonrpc/methods.h"

/* The backend serves one image only (no table of exports). */
static int no_exports(struct rpc_call *c)
{
    return rb_rpc_fault_set(c->f, RB_RPC_METHOD_NOT_FOUND, NULL,
                            "%s: this server has no table of exports", c->m->name);
}

int rpc_m_export_list(struct rpc_call *c, json_t **result)
{
    struct rb_error err = {0};

    if (!c->be->ops->export_list)
        return no_exports(c);
    *result = c->be->ops->export_list(c->be->opaque, &err);
    return *result ? 0 : rpc_io_fault(c, -(err.code ? err.code : ENOMEM), &err);
}

int rpc_m_export_add(struct rpc_call *c, json_t **result)
{
    struct rb_rpc_export_spec spec = {
        .name = c->a.s[0],
        .image = c->a.s[1],
        .read_only = c->a.b[2],
        .format = c->a.present[3] ? c->a.s[3] : NULL,
        .description = c->a.present[4] ? c->a.s[4] : NULL,
    };
    struct rb_error err = {0};
    int ret;

    if (!c->be->ops->export_add)
        return no_exports(c);
    if (!*spec.name)
        return rpc_param_fault(c, "parameter 'name' must not be empty (\"\" is the default "
                                  "export's)");
    if (!*spec.image)
        return rpc_param_fault(c, "parameter 'image' must not be empty");
    if (spec.format && strcmp(spec.format, "raw") != 0 && strcmp(spec.format, "qcow2") != 0)
        return rpc_param_fault(c, "parameter 'format' must be \"raw\" or \"qcow2\", not '%.64s'",
                               spec.format);
    if (c->a.j[5]) {
        size_t i;
        json_t *v;
        if (json_array_size(c->a.j[5]) > sizeof(spec.bitmaps) / sizeof(spec.bitmaps[0]))
            return rpc_param_fault(c, "parameter 'bitmaps' holds more than %zu names",
                                   sizeof(spec.bitmaps) / sizeof(spec.bitmaps[0]));
        json_array_foreach(c->a.j[5], i, v)
        {
            if (!json_is_string(v) || !*json_string_value(v))
                return rpc_param_fault(c, "parameter 'bitmaps' must hold bitmap names "
                                          "(non-empty strings)");
            spec.bitmaps[spec.nb_bitmaps++] = json_string_value(v);
        }
    }
    ret = c->be->ops->export_add(c->be->opaque, &spec, &err);
    if (ret == -EEXIST)
        return rb_rpc_fault_set(c->f, RB_RPC_EXPORT_EXISTS,
                                json_pack("{s:s}", "export", spec.name), "export_add: %s",
                                err.msg);
    if (ret < 0) {
        const char *name = strerrorname_np(-ret);
        return rb_rpc_fault_set(c->f, ret == -ENOMEM ? RB_RPC_INTERNAL_ERROR : RB_RPC_OPEN_FAILED,
                                json_pack("{s:i, s:s}", "errno", -ret, "name", name ? name : "?"),
                                "export_add: %s", rb_error_msg(&err, ret));
    }
    *result = json_pack("{s:s}", "name", spec.name);
    return 0;
}

int rpc_m_export_remove(struct rpc_call *c, json_t **result)
{
    const char *mode = c->a.present[1] ? c->a.s[1] : "safe";
    struct rb_error err = {0};
    bool hard;
    int ret;

    if (!c->be->ops->export_remove)
        return no_exports(c);
    if (strcmp(mode, "safe") != 0 && strcmp(mode, "hard") != 0)
        return rpc_param_fault(c, "parameter 'mode' must be \"safe\" or \"hard\", not '%.64s'",
                               mode);
    hard = strcmp(mode, "hard") == 0;
    ret = c->be->ops->export_remove(c->be->opaque, c->a.s[0], hard, &err);
    if (ret == -ENOENT)
        return rb_rpc_fault_set(c->f, RB_RPC_NO_EXPORT,
                                json_pack("{s:s}", "export", c->a.s[0]), "export_remove: %s",
                                err.msg);
    if (ret < 0) /* removed, but its last flush failed */
        return rpc_io_fault(c, ret, &err);
    *result = json_pack("{s:s, s:s}", "name", c->a.s[0], "mode", mode);
    return 0;
}

int rpc_m_export_info(struct rpc_call *c, json_t **result)
{
    struct rb_error err = {0};
    void *h;

    if (!c->be->ops->acquire || !c->be->ops->export_info)
        return no_exports(c);
    h = c->be->ops->acquire(c->be->opaque, c->a.s[0], &err);
    if (!h)
        return rb_rpc_fault_set(c->f, RB_RPC_NO_EXPORT,
                                json_pack("{s:s}", "export", c->a.s[0]), "export_info: %s",
                                err.msg);
    *result = c->be->ops->export_info(h, &err);
    c->be->ops->release(c->be->opaque, h);
    return *result ? 0 : rpc_io_fault(c, -(err.code ? err.code : ENOMEM), &err);
}

int rpc_m_bitmap(struct rpc_call *c, json_t **result)
{
    static const struct {
        const char *method;
        enum rb_qcow2_bitmap_op_kind kind;
    } kinds[] = {
        {"bitmap_add", RB_QCOW2_BITMAP_ADD},         {"bitmap_remove", RB_QCOW2_BITMAP_REMOVE},
        {"bitmap_clear", RB_QCOW2_BITMAP_CLEAR},     {"bitmap_enable", RB_QCOW2_BITMAP_ENABLE},
        {"bitmap_disable", RB_QCOW2_BITMAP_DISABLE}, {"bitmap_merge", RB_QCOW2_BITMAP_MERGE},
    };
    struct rb_qcow2_bitmap_op op = {0};
    struct rb_error err = {0};
    size_t i;
    int ret;

    if (!c->be->ops->bitmap)
        return no_exports(c);
    for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        if (strcmp(kinds[i].method, c->m->name) == 0)
            break;
    op.kind = kinds[i].kind;
    if (op.kind == RB_QCOW2_BITMAP_ADD) {
        uint64_t g = c->a.present[2] ? c->a.u[2] : 0;
        /* qemu's rule: a power of two from 512 bytes to 2 GiB */
        if (c->a.present[2] && (g < 512 || g > (1ull << 31) || (g & (g - 1))))
            return rpc_param_fault(c, "parameter 'granularity' must be a power of two "
                                      "from 512 to 2147483648, not %" PRIu64, g);
        op.granularity = g;
        op.disabled = c->a.b[3];
    } else if (op.kind == RB_QCOW2_BITMAP_MERGE) {
        op.source = c->a.s[2];
    }
    ret = c->be->ops->bitmap(c->be->opaque, c->a.s[0], &op, &err);
    if (ret < 0) {
        const char *name = strerrorname_np(-ret);
        return rb_rpc_fault_set(c->f, ret == -ENOMEM ? RB_RPC_INTERNAL_ERROR : RB_RPC_BITMAP_ERROR,
                                json_pack("{s:i, s:s}", "errno", -ret, "name", name ? name : "?"),
                                "%s: %s", c->m->name, rb_error_msg(&err, ret));
    }
    *result = json_object();
    return 0;
}
