/* SPDX-License-Identifier: MIT */
/*
 * methods.c - the method table: each method declares its parameters
 * (by name; an array gives them in the declared order), which are checked
 * here once, so that a method body only sees valid values.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonrpc/rpc.h"
#include "rblock/base64.h"
#include "rblock/io.h"

#ifndef RBLOCK_VERSION
#define RBLOCK_VERSION "unknown"
#endif

enum ptype { P_INT, P_BOOL, P_DATA };

struct param {
    const char *name;
    enum ptype type;
    bool required;
};

#define MAX_PARAMS 4

/* Parsed arguments, indexed as the method's params[]. */
struct args {
    bool present[MAX_PARAMS];
    uint64_t u[MAX_PARAMS];
    bool b[MAX_PARAMS];
    const char *s[MAX_PARAMS];
    size_t s_len[MAX_PARAMS];
};

struct call {
    const struct rb_rpc_backend *be;
    struct rb_rpc_data *data; /* NULL: no fast path */
    const struct method *m;
    struct args a;
    struct rb_rpc_budget *budget;
    struct rb_rpc_fault *f;
};

struct method {
    const char *name;
    const char *summary;
    bool writes; /* refused when the image is served read-only */
    int (*fn)(struct call *c, json_t **result);
    struct param params[MAX_PARAMS];
};

static const char *const type_names[] = {
    [P_INT] = "integer",
    [P_BOOL] = "boolean",
    [P_DATA] = "base64 string",
};

/* Largest data string accepted: the base64 of RB_RPC_MAX_DATA bytes. */
#define MAX_DATA_CHARS (((size_t)RB_RPC_MAX_DATA + 2) / 3 * 4)

/* Bytes one extent costs in a reply, charged to the batch's budget. */
#define EXTENT_COST 128

int rb_rpc_code_from_errno(int neg_errno)
{
    switch (-neg_errno) {
    case EROFS:
    case EPERM:
    case EACCES:
        return RB_RPC_READ_ONLY;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return RB_RPC_NO_SPACE;
    case ENOTSUP:
        return RB_RPC_NOT_SUPPORTED;
    case ESHUTDOWN:
        return RB_RPC_SHUTTING_DOWN;
    case ENOMEM:
        return RB_RPC_INTERNAL_ERROR;
    default:
        return RB_RPC_IO_ERROR;
    }
}

/* A failure of the backend -> fault, with errno's name in data. */
static int io_fault(struct call *c, int ret, const struct rb_error *err)
{
    const char *name = strerrorname_np(-ret);
    json_t *data = json_pack("{s:i, s:s}", "errno", -ret, "name", name ? name : "?");

    return rb_rpc_fault_set(c->f, rb_rpc_code_from_errno(ret), data, "%s: %s", c->m->name,
                            rb_error_msg(err, ret));
}

/* Check [off, off + len) against the virtual size (NBD's rule too). */
static int check_range(struct call *c, uint64_t off, uint64_t len)
{
    uint64_t size = c->be->ops->size(c->be->opaque), end;

    if (rb_add_ok(off, len, &end) && end <= size)
        return 0;
    return rb_rpc_fault_set(
        c->f, RB_RPC_OUT_OF_RANGE,
        json_pack("{s:I, s:I, s:I}", "offset", (json_int_t)off, "length", (json_int_t)len,
                  "size", (json_int_t)size),
        "offset %" PRIu64 " + length %" PRIu64 " is past the end of the image (size %" PRIu64
        ")",
        off, len, size);
}

static int param_fault(struct call *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int param_fault(struct call *c, const char *fmt, ...)
{
    char msg[RB_ERROR_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return rb_rpc_fault_set(c->f, RB_RPC_INVALID_PARAMS, NULL, "invalid params: %s", msg);
}

static int nparams(const struct method *m)
{
    int n = 0;

    while (n < MAX_PARAMS && m->params[n].name)
        n++;
    return n;
}

/* "offset, length" for messages. */
static void param_list(const struct method *m, char *buf, size_t size)
{
    size_t used = 0;

    buf[0] = 0;
    for (int i = 0; i < nparams(m) && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%s%s", i ? ", " : "",
                                 m->params[i].name, m->params[i].required ? "" : "?");
    if (nparams(m) == 0)
        snprintf(buf, size, "no parameters");
}

static int take_value(struct call *c, int i, json_t *v)
{
    const struct param *p = &c->m->params[i];

    switch (p->type) {
    case P_INT:
        if (!json_is_integer(v))
            return param_fault(c, "parameter '%s' must be a non-negative integer, not %s",
                               p->name, rb_rpc_type_name(v));
        if (json_integer_value(v) < 0)
            return param_fault(c, "parameter '%s' must not be negative (got %" JSON_INTEGER_FORMAT
                                  ")", p->name, json_integer_value(v));
        c->a.u[i] = (uint64_t)json_integer_value(v);
        break;
    case P_BOOL:
        if (!json_is_boolean(v))
            return param_fault(c, "parameter '%s' must be a boolean, not %s", p->name,
                               rb_rpc_type_name(v));
        c->a.b[i] = json_is_true(v);
        break;
    case P_DATA:
        if (!json_is_string(v))
            return param_fault(c, "parameter '%s' must be a base64 string, not %s", p->name,
                               rb_rpc_type_name(v));
        c->a.s[i] = json_string_value(v);
        c->a.s_len[i] = json_string_length(v);
        if (c->a.s_len[i] > MAX_DATA_CHARS)
            return param_fault(c, "parameter '%s' holds %zu characters of base64, over the "
                                  "limit of %zu (%u bytes)", p->name, c->a.s_len[i],
                               MAX_DATA_CHARS, RB_RPC_MAX_DATA);
        break;
    }
    c->a.present[i] = true;
    return 0;
}

static int parse_args(struct call *c, json_t *params)
{
    const struct method *m = c->m;
    int n = nparams(m);
    char list[128];

    param_list(m, list, sizeof(list));
    if (json_is_array(params)) {
        if (json_array_size(params) > (size_t)n)
            return param_fault(c, "method '%s' takes %d parameters (%s), got %zu", m->name,
                               n, list, json_array_size(params));
        for (size_t i = 0; i < json_array_size(params); i++)
            if (take_value(c, (int)i, json_array_get(params, i)) < 0)
                return -1;
    } else if (params) {
        const char *key;
        json_t *v;
        json_object_foreach(params, key, v) {
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
                return param_fault(c, "unknown parameter '%s' of method '%s' (it takes %s)",
                                   shown, m->name, list);
            }
            if (take_value(c, i, v) < 0)
                return -1;
        }
    }
    for (int i = 0; i < n; i++)
        if (m->params[i].required && !c->a.present[i])
            return param_fault(c, "missing parameter '%s' of method '%s' (it takes %s)",
                               m->params[i].name, m->name, list);
    return 0;
}

/* ---- methods ------------------------------------------------------------ */

static int m_get_version(struct call *c, json_t **result)
{
    *result = json_pack("{s:s, s:s}", "name", "rblock", "version", RBLOCK_VERSION);
    return 0;
}

static int m_list_methods(struct call *c, json_t **result);

static int m_info(struct call *c, json_t **result)
{
    struct rb_error err = {0};

    *result = c->be->ops->info(c->be->opaque, c->a.b[0], &err);
    return *result ? 0 : io_fault(c, -(err.code ? err.code : EIO), &err);
}

static int m_check(struct call *c, json_t **result)
{
    struct rb_error err = {0};

    *result = c->be->ops->check(c->be->opaque, &err);
    return *result ? 0 : io_fault(c, -(err.code ? err.code : EIO), &err);
}

static int m_stats(struct call *c, json_t **result)
{
    struct rb_error err = {0};

    *result = c->be->ops->stats(c->be->opaque, &err);
    return *result ? 0 : io_fault(c, -(err.code ? err.code : EIO), &err);
}

static int m_read(struct call *c, json_t **result)
{
    uint64_t off = c->a.u[0], len = c->a.u[1];
    struct rb_error err = {0};
    char *text;
    void *buf;
    int ret;

    if (len > RB_RPC_MAX_DATA)
        return param_fault(c, "parameter 'length' is %" PRIu64 ", over the limit of %u",
                           len, RB_RPC_MAX_DATA);
    if (check_range(c, off, len) < 0)
        return -1;
    if (len > c->budget->data_bytes)
        return rb_rpc_fault_set(c->f, RB_RPC_TOO_LARGE, NULL,
                                "read: the replies of this batch would carry more than %u "
                                "bytes; send the rest in another batch",
                                RB_RPC_MAX_BATCH_DATA);
    c->budget->data_bytes -= len;

    buf = malloc(len ? len : 1);
    text = malloc(rb_base64_encoded_len(len) + 1);
    if (!buf || !text) {
        free(buf);
        free(text);
        return io_fault(c, -ENOMEM, NULL);
    }
    ret = len ? c->be->ops->read(c->be->opaque, buf, off, len, &err) : 0;
    if (ret < 0) {
        free(buf);
        free(text);
        return io_fault(c, ret, &err);
    }
    size_t n = rb_base64_encode(text, buf, len);
    free(buf);
    if (c->data) {
        c->data->text = text;
        c->data->len = n;
        return 0;
    }
    /* No need to check base64 for UTF-8. */
    *result = json_pack("{s:o}", "data", json_stringn_nocheck(text, n));
    free(text);
    return 0;
}

static json_t *length_result(uint64_t len)
{
    return json_pack("{s:I}", "length", (json_int_t)len);
}

static int m_write(struct call *c, json_t **result)
{
    uint64_t off = c->a.u[0];
    struct rb_error err = {0};
    size_t bad = 0;
    long long n;
    void *buf;
    int ret;

    buf = malloc(rb_base64_decoded_max(c->a.s_len[1]));
    if (!buf)
        return io_fault(c, -ENOMEM, NULL);
    n = rb_base64_decode(buf, c->a.s[1], c->a.s_len[1], &bad);
    if (n < 0) {
        free(buf);
        if (bad == c->a.s_len[1])
            return param_fault(c, "parameter 'data' is not base64: its length %zu is not a "
                                  "multiple of 4", c->a.s_len[1]);
        return param_fault(c, "parameter 'data' is not base64: bad character at position %zu",
                           bad);
    }
    if (check_range(c, off, (uint64_t)n) < 0) {
        free(buf);
        return -1;
    }
    ret = n ? c->be->ops->write(c->be->opaque, buf, off, (size_t)n,
                                c->a.b[2] ? RB_WRITE_FUA : 0, &err)
            : 0;
    free(buf);
    if (ret < 0)
        return io_fault(c, ret, &err);
    *result = length_result((uint64_t)n);
    return 0;
}

static int m_write_zeroes(struct call *c, json_t **result)
{
    uint64_t off = c->a.u[0], len = c->a.u[1];
    unsigned flags = (c->a.b[2] ? RB_ZERO_MAY_UNMAP : 0) | (c->a.b[3] ? RB_WRITE_FUA : 0);
    struct rb_error err = {0};
    int ret;

    if (check_range(c, off, len) < 0)
        return -1;
    ret = len ? c->be->ops->write_zeroes(c->be->opaque, off, len, flags, &err) : 0;
    if (ret < 0)
        return io_fault(c, ret, &err);
    *result = length_result(len);
    return 0;
}

static int m_trim(struct call *c, json_t **result)
{
    uint64_t off = c->a.u[0], len = c->a.u[1];
    struct rb_error err = {0};
    int ret;

    if (check_range(c, off, len) < 0)
        return -1;
    ret = len ? c->be->ops->trim(c->be->opaque, off, len, &err) : 0;
    if (ret < 0)
        return io_fault(c, ret, &err);
    *result = length_result(len);
    return 0;
}

static int m_flush(struct call *c, json_t **result)
{
    struct rb_error err = {0};
    int ret = c->be->ops->flush(c->be->opaque, &err);

    if (ret < 0)
        return io_fault(c, ret, &err);
    *result = json_object();
    return 0;
}

/* How many extents this call may still return (at least one). */
static size_t extent_allowance(struct call *c)
{
    uint64_t n = c->budget->data_bytes / EXTENT_COST;

    if (n > RB_RPC_MAX_EXTENTS)
        n = RB_RPC_MAX_EXTENTS;
    return n ? (size_t)n : 1;
}

static void charge_extents(struct call *c, size_t n)
{
    uint64_t cost = (uint64_t)n * EXTENT_COST;

    c->budget->data_bytes = cost > c->budget->data_bytes ? 0 : c->budget->data_bytes - cost;
}

static int m_block_status(struct call *c, json_t **result)
{
    uint64_t off = c->a.u[0], len = c->a.u[1], end = off + len;
    size_t max = extent_allowance(c), n = 0;
    json_t *arr;

    if (len == 0)
        return param_fault(c, "parameter 'length' must be at least 1");
    if (check_range(c, off, len) < 0)
        return -1;
    arr = json_array();
    while (arr && off < end && n < max) {
        struct rb_extent ext = {0};
        struct rb_error err = {0};
        int ret = c->be->ops->block_status(c->be->opaque, off, end - off, &ext, &err);
        if (ret < 0) {
            json_decref(arr);
            return io_fault(c, ret, &err);
        }
        if (ext.length == 0 || ext.length > end - off)
            ext.length = end - off; /* a driver bug must not loop forever */
        json_t *e = json_pack("{s:I, s:I, s:b, s:b, s:b, s:b, s:i}", "offset",
                              (json_int_t)off, "length", (json_int_t)ext.length, "data",
                              !!(ext.flags & RB_BS_DATA), "zero", !!(ext.flags & RB_BS_ZERO),
                              "allocated", !!(ext.flags & RB_BS_ALLOCATED), "compressed",
                              !!(ext.flags & RB_BS_COMPRESSED), "depth", (int)ext.depth);
        if (!e || json_array_append_new(arr, e) != 0) {
            json_decref(arr);
            return io_fault(c, -ENOMEM, NULL);
        }
        off += ext.length;
        n++;
    }
    charge_extents(c, n);
    *result = arr;
    return 0;
}

/* One entry of `qemu-img map --output=json` (merged as its
 * entry_mergeable does). */
struct map_entry {
    uint64_t start, length, offset;
    unsigned depth;
    bool present, zero, data, compressed, has_offset;
};

static bool map_mergeable(const struct map_entry *a, const struct map_entry *b)
{
    if (a->depth != b->depth || a->present != b->present || a->zero != b->zero ||
        a->data != b->data || a->compressed != b->compressed ||
        a->has_offset != b->has_offset)
        return false;
    return !a->has_offset || a->offset + a->length == b->offset;
}

static json_t *map_json(const struct map_entry *e)
{
    /* The fields of qemu-img 7.2 and `rblock map`: "compressed" only
     * splits extents, as there (block_status reports it). */
    json_t *o = json_pack("{s:I, s:I, s:i, s:b, s:b, s:b}", "start", (json_int_t)e->start,
                          "length", (json_int_t)e->length, "depth", (int)e->depth, "present",
                          e->present, "zero", e->zero, "data", e->data);

    if (o && e->has_offset &&
        json_object_set_new(o, "offset", json_integer((json_int_t)e->offset)) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int m_map(struct call *c, json_t **result)
{
    uint64_t size = c->be->ops->size(c->be->opaque);
    uint64_t off = c->a.present[0] ? c->a.u[0] : 0;
    uint64_t len = c->a.present[1] ? c->a.u[1] : (off <= size ? size - off : 0), end;
    size_t max = extent_allowance(c), n = 0;
    struct map_entry cur = {0};
    bool have = false;
    json_t *arr;

    if (check_range(c, off, len) < 0)
        return -1;
    end = off + len;
    arr = json_array();
    while (arr && off < end) {
        struct rb_extent ext = {0};
        struct rb_error err = {0};
        int ret = c->be->ops->block_status(c->be->opaque, off, end - off, &ext, &err);
        if (ret < 0) {
            json_decref(arr);
            return io_fault(c, ret, &err);
        }
        if (ext.length == 0 || ext.length > end - off)
            ext.length = end - off;
        struct map_entry e = {
            .start = off,
            .length = ext.length,
            .present = ext.flags & RB_BS_ALLOCATED,
            .zero = ext.flags & RB_BS_ZERO,
            .data = ext.flags & RB_BS_DATA,
            .compressed = ext.flags & RB_BS_COMPRESSED,
            .has_offset = ext.flags & RB_BS_OFFSET_VALID, /* as qemu-img */
            .offset = ext.host_off,
            .depth = ext.depth, /* as qemu-img: the last layer asked */
        };
        off += ext.length;
        if (have && map_mergeable(&cur, &e)) {
            cur.length += e.length;
            continue;
        }
        if (have) {
            if (n == max)
                break; /* the reply ends before @end: the client asks again */
            json_t *j = map_json(&cur);
            if (!j || json_array_append_new(arr, j) != 0)
                goto oom;
            n++;
        }
        cur = e;
        have = true;
    }
    if (arr && have && n < max) {
        json_t *j = map_json(&cur);
        if (!j || json_array_append_new(arr, j) != 0)
            goto oom;
        n++;
    }
    if (!arr)
        return io_fault(c, -ENOMEM, NULL);
    charge_extents(c, n);
    *result = arr;
    return 0;
oom:
    json_decref(arr);
    return io_fault(c, -ENOMEM, NULL);
}

static const struct method methods[] = {
    {"get_version", "program name and version", false, m_get_version, {{0}}},
    {"list_methods", "the methods and their parameters", false, m_list_methods, {{0}}},
    {"info", "the image, as `rblock info --output=json [--backing-chain]`", false, m_info,
     {{"backing_chain", P_BOOL, false}}},
    {"map", "allocation map, as `rblock map --output=json`", false, m_map,
     {{"offset", P_INT, false}, {"length", P_INT, false}}},
    {"read", "read bytes, returned in base64", false, m_read,
     {{"offset", P_INT, true}, {"length", P_INT, true}}},
    {"write", "write base64 data", true, m_write,
     {{"offset", P_INT, true}, {"data", P_DATA, true}, {"fua", P_BOOL, false}}},
    {"write_zeroes", "make a range read as zeros", true, m_write_zeroes,
     {{"offset", P_INT, true},
      {"length", P_INT, true},
      {"may_unmap", P_BOOL, false},
      {"fua", P_BOOL, false}}},
    {"trim", "discard a range", true, m_trim,
     {{"offset", P_INT, true}, {"length", P_INT, true}}},
    {"flush", "make every acknowledged write durable", false, m_flush, {{0}}},
    {"block_status", "extents with data/zero/allocated flags and depth", false,
     m_block_status, {{"offset", P_INT, true}, {"length", P_INT, true}}},
    {"check", "read-only consistency check of the live image", false, m_check, {{0}}},
    {"stats", "connections, requests and bytes per protocol; uptime", false, m_stats, {{0}}},
};

#define N_METHODS (sizeof(methods) / sizeof(methods[0]))

static int m_list_methods(struct call *c, json_t **result)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr && i < N_METHODS; i++) {
        const struct method *m = &methods[i];
        json_t *ps = json_array();
        for (int k = 0; ps && k < nparams(m); k++)
            if (json_array_append_new(ps, json_pack("{s:s, s:s, s:b}", "name",
                                                    m->params[k].name, "type",
                                                    type_names[m->params[k].type],
                                                    "required", m->params[k].required)))
                break;
        json_t *o = json_pack("{s:s, s:s, s:o, s:b}", "name", m->name, "summary", m->summary,
                              "params", ps, "writes", m->writes);
        if (!o || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    if (!arr)
        return io_fault(c, -ENOMEM, NULL);
    *result = arr;
    return 0;
}

int rb_rpc_call(const struct rb_rpc_backend *be, const char *name, json_t *params,
                struct rb_rpc_budget *budget, json_t **result, struct rb_rpc_data *data,
                struct rb_rpc_fault *f)
{
    struct call c = {.be = be, .data = data, .budget = budget, .f = f};

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
    if (parse_args(&c, params) < 0)
        return -1;
    if (c.m->fn(&c, result) < 0)
        return -1;
    if (!*result && !(data && data->text))
        return io_fault(&c, -ENOMEM, NULL);
    return 0;
}
