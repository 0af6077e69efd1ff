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

static const struct rpc_method methods[] = {
    {"get_version", "program name and version", false, m_get_version, {{0}}},
    {"list_methods", "the methods and their parameters", false, m_list_methods, {{0}}},
    {"info",
     "the image, as `rblock info --output=json [--backing-chain]`",
     false,
     m_info,
     {{"backing_chain", P_BOOL, false}}},
    {"map",
     "allocation map, as `rblock map --output=json`; with bitmap: its dirty runs",
     false,
     rpc_m_map,
     {{"offset", P_INT, false}, {"length", P_INT, false}, {"bitmap", P_STR, false}}},
    {"read",
     "read bytes, returned in base64",
     false,
     rpc_m_read,
     {{"offset", P_INT, true}, {"length", P_INT, true}}},
    {"write",
     "write base64 data",
     true,
     rpc_m_write,
     {{"offset", P_INT, true}, {"data", P_DATA, true}, {"fua", P_BOOL, false}}},
    {"write_zeroes",
     "make a range read as zeros",
     true,
     rpc_m_write_zeroes,
     {{"offset", P_INT, true},
      {"length", P_INT, true},
      {"may_unmap", P_BOOL, false},
      {"fua", P_BOOL, false}}},
    {"trim",
     "discard a range",
     true,
     rpc_m_trim,
     {{"offset", P_INT, true}, {"length", P_INT, true}}},
    {"flush", "make every acknowledged write durable", false, rpc_m_flush, {{0}}},
    {"block_status",
     "extents with data/zero/allocated flags and depth; with bitmap: dirty or clean",
     false,
     rpc_m_block_status,
     {{"offset", P_INT, true}, {"length", P_INT, true}, {"bitmap", P_STR, false}}},
    {"check", "read-only consistency check of the live image", false, m_check, {{0}}},
    {"stats",
     "connections, requests and bytes per protocol; uptime",
     false,
     m_stats,
     {{0}}},
    {"layout",
     "the picture of the image's layout (SVG), as `rblock map --output=svg`",
     false,
     m_layout,
     {{0}}},
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
    if (c.m->writes && be->ops->read_only(be->opaque))
        return rb_rpc_fault_set(f, RB_RPC_READ_ONLY, NULL,
                                "%s: the image is served read-only", c.m->name);
    if (rpc_parse_args(&c, params) < 0)
        return -1;
    if (c.m->fn(&c, result) < 0)
        return -1;
    if (!*result && !(data && data->text))
        return rpc_io_fault(&c, -ENOMEM, NULL);
    return 0;
}
