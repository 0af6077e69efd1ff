/* SPDX-License-Identifier: MIT */
/*
 * methods.c - the method table and dispatch (methods.h lists the other
 * files), and the methods about the server itself: get_version,
 * list_methods, info, check, stats, layout.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "jsonrpc/methods.h"

#ifndef RBLOCK_VERSION
#define RBLOCK_VERSION "unknown"
#endif

static const char *const type_names[] = {
    [P_INT] = "integer",
    [P_BOOL] = "boolean",
    [P_DATA] = "base64 string",
    [P_STR] = "string",
    [P_ARRAY] = "array",
    [P_NAME] = "string",
};

static int m_list_methods(struct rpc_call *c, json_t **result);

static int m_get_version(struct rpc_call *c, json_t **result)
{
    *result = json_pack("{s:s, s:s}", "name", "rblock", "version", RBLOCK_VERSION);
    return 0;
}

static int m_info(struct rpc_call *c, json_t **result)
{
    struct rb_error err = {0};

    *result = c->be->ops->info(c->be->opaque, c->a.b[0], &err);
    return *result ? 0 : rpc_io_fault(c, -(err.code ? err.code : EIO), &err);
}

static int m_check(struct rpc_call *c, json_t **result)
{
    struct rb_error err = {0};

    *result = c->be->ops->check(c->be->opaque, &err);
    return *result ? 0 : rpc_io_fault(c, -(err.code ? err.code : EIO), &err);
}

static int m_stats(struct rpc_call *c, json_t **result)
{
    struct rb_error err = {0};

    *result = c->be->ops->stats(c->be->opaque, &err);
    return *result ? 0 : rpc_io_fault(c, -(err.code ? err.code : EIO), &err);
}

static int m_layout(struct rpc_call *c, json_t **result)
{
    struct rb_error err = {0};

    if (!c->be->ops->layout)
        return rb_rpc_fault_set(c->f, RB_RPC_NOT_SUPPORTED, NULL,
                                "layout: this export cannot be drawn");
    *result = c->be->ops->layout(c->be->opaque, &err);
    return *result ? 0 : rpc_io_fault(c, -(err.code ? err.code : EIO), &err);
}

#define EXPORT_P {"export", P_NAME, false}
#define BITMAP_M(verb, what, ...)                                                       \
    {"bitmap_" verb, what, true, rpc_m_bitmap,                                          \
     {{"name", P_STR, true}, EXPORT_P, __VA_ARGS__}}

static const struct rpc_method methods[] = {
    {"get_version", "program name and version", false, m_get_version, {{0}}},
    {"list_methods", "the methods and their parameters", false, m_list_methods, {{0}}},
    {"info",
     "the image, as `rblock info --output=json [--backing-chain]`",
     false,
     m_info,
     {{"backing_chain", P_BOOL, false}, EXPORT_P}},
    {"map",
     "allocation map, as `rblock map --output=json`; with bitmap: its dirty runs",
     false,
     rpc_m_map,
     {{"offset", P_INT, false}, {"length", P_INT, false}, {"bitmap", P_STR, false}, EXPORT_P}},
    {"read",
     "read bytes, returned in base64",
     false,
     rpc_m_read,
     {{"offset", P_INT, true}, {"length", P_INT, true}, EXPORT_P}},
    {"write",
     "write base64 data",
     true,
     rpc_m_write,
     {{"offset", P_INT, true}, {"data", P_DATA, true}, {"fua", P_BOOL, false}, EXPORT_P}},
    {"write_zeroes",
     "make a range read as zeros",
     true,
     rpc_m_write_zeroes,
     {{"offset", P_INT, true},
      {"length", P_INT, true},
      {"may_unmap", P_BOOL, false},
      {"fua", P_BOOL, false},
      EXPORT_P}},
    {"trim",
     "discard a range",
     true,
     rpc_m_trim,
     {{"offset", P_INT, true}, {"length", P_INT, true}, EXPORT_P}},
    {"flush", "make every acknowledged write durable", false, rpc_m_flush, {EXPORT_P}},
    {"block_status",
     "extents with data/zero/allocated flags and depth; with bitmap: dirty or clean",
     false,
     rpc_m_block_status,
     {{"offset", P_INT, true}, {"length", P_INT, true}, {"bitmap", P_STR, false}, EXPORT_P}},
    {"check", "read-only consistency check of the live image", false, m_check, {EXPORT_P}},
    {"stats",
     "connections, requests and bytes per protocol; uptime",
     false,
     m_stats,
     {EXPORT_P}},
    {"export_list", "the exports served, by name", false, rpc_m_export_list, {{0}}},
    {"export_add",
     "open an image and serve it under a new name",
     false,
     rpc_m_export_add,
     {{"name", P_NAME, true},
      {"image", P_NAME, true},
      {"read_only", P_BOOL, false},
      {"format", P_NAME, false},
      {"description", P_NAME, false},
      {"bitmaps", P_ARRAY, false}}},
    {"export_remove",
     "stop serving an export: safe waits for its clients, hard drops them",
     false,
     rpc_m_export_remove,
     {{"name", P_NAME, true}, {"mode", P_NAME, false}}},
    {"export_info", "one export: image, format, size, flags, clients", false,
     rpc_m_export_info, {{"name", P_NAME, true}}},
    BITMAP_M("add", "add a persistent dirty bitmap (qemu-img bitmap --add)",
             {"granularity", P_INT, false}, {"disabled", P_BOOL, false}),
    BITMAP_M("remove", "remove a persistent dirty bitmap", {0}),
    BITMAP_M("clear", "clear a persistent dirty bitmap", {0}),
    BITMAP_M("enable", "enable a persistent dirty bitmap", {0}),
    BITMAP_M("disable", "disable a persistent dirty bitmap", {0}),
    BITMAP_M("merge", "merge bitmap 'source' into bitmap 'name'",
             {"source", P_STR, true}),
    {"layout",
     "the picture of the image's layout (SVG), as `rblock map --output=svg`",
     false,
     m_layout,
     {EXPORT_P}},
};

#define N_METHODS (sizeof(methods) / sizeof(methods[0]))

static int m_list_methods(struct rpc_call *c, json_t **result)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr && i < N_METHODS; i++) {
        const struct rpc_method *m = &methods[i];
        json_t *ps = json_array();
        for (int k = 0; ps && k < rpc_nparams(m); k++)
            if (json_array_append_new(ps, json_pack("{s:s, s:s, s:b}", "name",
                                                    m->params[k].name, "type",
                                                    type_names[m->params[k].type],
                                                    "required", m->params[k].required)))
                break;
        json_t *o = json_pack("{s:s, s:s, s:o, s:b}", "name", m->name, "summary",
                              m->summary, "params", ps, "writes", m->writes);
        if (!o || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    if (!arr)
        return rpc_io_fault(c, -ENOMEM, NULL);
    *result = arr;
    return 0;
}

int rb_rpc_call(const struct rb_rpc_backend *be, const char *name, json_t *params,
                struct rb_rpc_budget *budget, json_t **result, struct rb_rpc_data *data,
                struct rb_rpc_fault *f)
{
    struct rpc_call c = {.be = be, .data = data, .budget = budget, .f = f};

    *result = NULL;
    for (size_t i = 0; i < N_METHODS; i++)
        if (strcmp(name, methods[i].name) == 0)
            c.m = &methods[i];
    if (!c.m) {
        char shown[64];
        snprintf(shown, sizeof(shown), "%s", name);
        for (char *p = shown; *p; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
                *p = '?';
        return rb_rpc_fault_set(f, RB_RPC_METHOD_NOT_FOUND,
                                json_pack("{s:s}", "method", name),
                                "method '%s' not found (list_methods lists them)", shown);
    }
    if (be->ops->spoke)
        be->ops->spoke(be->opaque);
    if (rpc_parse_args(&c, params) < 0)
        return -1;
    /* A method on an export: select it (the default without "export")
     * and run on it, the backend's handle standing for it. */
    int k = rpc_param_index(c.m, "export");
    struct rb_rpc_backend on = *be;
    void *handle = NULL;
    int ret = 0;
    if (k >= 0 && be->ops->acquire) {
        struct rb_error err = {0};
        const char *name = c.a.present[k] ? c.a.s[k] : "";
        handle = be->ops->acquire(be->opaque, name, &err);
        if (!handle) {
            if (err.code != ENOENT)
                return rpc_io_fault(&c, -err.code, &err);
            return rb_rpc_fault_set(f, RB_RPC_NO_EXPORT, json_pack("{s:s}", "export", name),
                                    "%s: %s", c.m->name, err.msg);
        }
        on.opaque = handle;
        c.be = &on;
    } else if (k >= 0 && c.a.present[k] && c.a.s_len[k]) {
        return rb_rpc_fault_set(f, RB_RPC_NO_EXPORT, NULL, "%s: no export named '%s'",
                                c.m->name, c.a.s[k]);
    }
    if (c.m->writes && c.be->ops->read_only(c.be->opaque)) {
        ret = rb_rpc_fault_set(f, RB_RPC_READ_ONLY, NULL,
                               "%s: the image is served read-only", c.m->name);
    } else if (c.m->fn(&c, result) < 0) {
        ret = -1;
    } else if (!*result && !(data && data->text)) {
        ret = rpc_io_fault(&c, -ENOMEM, NULL);
    }
    if (handle)
        be->ops->release(be->opaque, handle);
    return ret;
}
