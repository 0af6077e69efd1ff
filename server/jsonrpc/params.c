/* SPDX-License-Identifier: MIT */
/*
 * params.c - a method's parameters, by name (an object) or by position (an
 * array, in the declared order), checked once against its declaration so
 * that a method body only sees valid values; and the range check of an
 * offset and length against the image's size.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "jsonrpc/methods.h"
#include "rblock/io.h"

int rpc_param_fault(struct rpc_call *c, const char *fmt, ...)
{
    char msg[RB_ERROR_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return rb_rpc_fault_set(c->f, RB_RPC_INVALID_PARAMS, NULL, "invalid params: %s", msg);
}

int rpc_param_index(const struct rpc_method *m, const char *name)
{
    for (int i = 0; i < RPC_MAX_PARAMS && m->params[i].name; i++)
        if (strcmp(m->params[i].name, name) == 0)
            return i;
    return -1;
}

int rpc_nparams(const struct rpc_method *m)
{
    int n = 0;

    while (n < RPC_MAX_PARAMS && m->params[n].name)
        n++;
    return n;
}

/* "offset, length" for messages. */
static void param_list(const struct rpc_method *m, char *buf, size_t size)
{
    size_t used = 0;

    buf[0] = 0;
    for (int i = 0; i < rpc_nparams(m) && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%s%s", i ? ", " : "",
                                 m->params[i].name, m->params[i].required ? "" : "?");
    if (rpc_nparams(m) == 0)
        snprintf(buf, size, "no parameters");
}

static int take_value(struct rpc_call *c, int i, json_t *v)
{
    const struct rpc_param *p = &c->m->params[i];

    switch (p->type) {
    case P_INT:
        if (!json_is_integer(v))
            return rpc_param_fault(
                c, "parameter '%s' must be a non-negative integer, not %s", p->name,
                rb_rpc_type_name(v));
        if (json_integer_value(v) < 0)
            return rpc_param_fault(
                c, "parameter '%s' must not be negative (got %" JSON_INTEGER_FORMAT ")",
                p->name, json_integer_value(v));
        c->a.u[i] = (uint64_t)json_integer_value(v);
        break;
    case P_BOOL:
        if (!json_is_boolean(v))
            return rpc_param_fault(c, "parameter '%s' must be a boolean, not %s", p->name,
                                   rb_rpc_type_name(v));
        c->a.b[i] = json_is_true(v);
        break;
    case P_NAME:
        if (!json_is_string(v))
            return rpc_param_fault(c, "parameter '%s' must be a string, not %s", p->name,
                                   rb_rpc_type_name(v));
        c->a.s[i] = json_string_value(v);
        c->a.s_len[i] = json_string_length(v);
        if (strlen(c->a.s[i]) != c->a.s_len[i])
            return rpc_param_fault(c, "parameter '%s' holds a NUL character", p->name);
        if (c->a.s_len[i] > RPC_MAX_NAME)
            return rpc_param_fault(c, "parameter '%s' is longer than %d bytes", p->name,
                                   RPC_MAX_NAME);
        break;
    case P_ARRAY:
        if (!json_is_array(v))
            return rpc_param_fault(c, "parameter '%s' must be an array, not %s", p->name,
                                   rb_rpc_type_name(v));
        c->a.j[i] = v;
        break;
    case P_DATA:
        if (!json_is_string(v))
            return rpc_param_fault(c, "parameter '%s' must be a base64 string, not %s",
                                   p->name, rb_rpc_type_name(v));
        c->a.s[i] = json_string_value(v);
        c->a.s_len[i] = json_string_length(v);
        if (c->a.s_len[i] > RPC_MAX_DATA_CHARS)
            return rpc_param_fault(
                c,
                "parameter '%s' holds %zu characters of base64, over the "
                "limit of %zu (%u bytes)",
                p->name, c->a.s_len[i], RPC_MAX_DATA_CHARS, RB_RPC_MAX_DATA);
        break;
    case P_STR:
        if (!json_is_string(v))
            return rpc_param_fault(c, "parameter '%s' must be a string, not %s", p->name,
                                   rb_rpc_type_name(v));
        c->a.s[i] = json_string_value(v);
        c->a.s_len[i] = json_string_length(v);
        if (c->a.s_len[i] == 0 || c->a.s_len[i] > RPC_MAX_STR ||
            strlen(c->a.s[i]) != c->a.s_len[i])
            return rpc_param_fault(c, "parameter '%s' must be 1 to %d bytes, without NUL",
                                   p->name, RPC_MAX_STR);
        break;
    }
    c->a.present[i] = true;
    return 0;
}

int rpc_parse_args(struct rpc_call *c, json_t *params)
{
    const struct rpc_method *m = c->m;
    int n = rpc_nparams(m);
    char list[256];

    param_list(m, list, sizeof(list));
    if (json_is_array(params)) {
        if (json_array_size(params) > (size_t)n)
            return rpc_param_fault(c, "method '%s' takes %d parameters (%s), got %zu",
                                   m->name, n, list, json_array_size(params));
        for (size_t i = 0; i < json_array_size(params); i++)
            if (take_value(c, (int)i, json_array_get(params, i)) < 0)
                return -1;
    } else if (params) {
        const char *key;
        json_t *v;
        json_object_foreach(params, key, v)
        {
            int i;
            for (i = 0; i < n; i++)
                if (strcmp(key, m->params[i].name) == 0)
                    break;
            if (i == n) {
                char shown[64];
                snprintf(shown, sizeof(shown), "%s", key);
                for (char *p = shown; *p; p++)
                    if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
                        *p = '?';
                return rpc_param_fault(
                    c, "unknown parameter '%s' of method '%s' (it takes %s)", shown,
                    m->name, list);
            }
            if (take_value(c, i, v) < 0)
                return -1;
        }
    }
    for (int i = 0; i < n; i++)
        if (m->params[i].required && !c->a.present[i])
            return rpc_param_fault(c,
                                   "missing parameter '%s' of method '%s' (it takes %s)",
                                   m->params[i].name, m->name, list);
    return 0;
}

/* Check [off, off + len) against the virtual size (NBD's rule too). */
int rpc_check_range(struct rpc_call *c, uint64_t off, uint64_t len)
{
    uint64_t size = c->be->ops->size(c->be->opaque), end;

    if (rb_add_ok(off, len, &end) && end <= size)
        return 0;
    return rb_rpc_fault_set(c->f, RB_RPC_OUT_OF_RANGE,
                            json_pack("{s:I, s:I, s:I}", "offset", (json_int_t)off,
                                      "length", (json_int_t)len, "size",
                                      (json_int_t)size),
                            "offset %" PRIu64 " + length %" PRIu64
                            " is past the end of the image (size %" PRIu64 ")",
                            off, len, size);
}
