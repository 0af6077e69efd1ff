/* SPDX-License-Identifier: MIT */
/*
 * envelope.c - JSON-RPC 2.0 requests, notifications and batches
 * (jsonrpc.org/specification, sections 4-6) turned into response text.
 *
 * Leniency, on purpose and documented: a request without a "jsonrpc"
 * member is taken as 2.0 (the seed's control command is written that
 * way), and a blank line gets no reply.  Everything else is strict:
 * duplicate keys, unknown members, wrong types are errors that name what
 * was wrong.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonrpc/rpc.h"

/* True when a line holds only JSON whitespace (and a CR). */
static bool blank(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n')
            return false;
    return true;
}

/*
 * Checks before jansson sees the text, in one pass without recursion:
 *  - nesting: jansson recurses up to depth 2048; we refuse anything deeper
 *    than RB_RPC_MAX_DEPTH;
 *  - size of the tree: a 6 MB line of "[1,1,1,..." is 3 million values,
 *    ~100 MB once parsed; we refuse more than RB_RPC_MAX_VALUES (counted
 *    as separators and openings, an upper bound of the values).
 * Brackets and commas inside strings do not count.  Returns 0, or -1 with
 * *what set and *at the byte offset where the limit was passed.
 */
static int prescan(const char *p, size_t len, const char **what, size_t *at)
{
    size_t depth = 0, values = 1;
    bool in_str = false, esc = false;

    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            values++;
            if (++depth > RB_RPC_MAX_DEPTH) {
                *what = "nesting deeper than " RB_RPC_STR(RB_RPC_MAX_DEPTH) " levels";
                *at = i;
                return -1;
            }
        } else if (c == ',') {
            if (++values > RB_RPC_MAX_VALUES) {
                *what = "more than " RB_RPC_STR(RB_RPC_MAX_VALUES) " values in one line";
                *at = i;
                return -1;
            }
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    return 0;
}

/* jansson quotes the offending token, which may be any bytes: keep the
 * message printable ASCII so that it is valid UTF-8 in the reply. */
static void printable(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            *s = '?';
}

static json_t *error_response(json_t *id, int code, const char *msg, json_t *data)
{
    json_t *err = json_pack("{s:i, s:s}", "code", code, "message", msg);

    if (err && data)
        json_object_set(err, "data", data);
    json_decref(data);
    if (!err)
        return NULL;
    return json_pack("{s:s, s:o, s:O}", "jsonrpc", "2.0", "error", err, "id",
                     id ? id : json_null());
}

static json_t *fault_response(json_t *id, struct rb_rpc_fault *f)
{
    json_t *r = error_response(id, f->code, f->msg, f->data);

    f->data = NULL;
    return r;
}

static json_t *invalid(json_t *id, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static json_t *invalid(json_t *id, const char *fmt, ...)
{
    char msg[RB_ERROR_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return error_response(id, RB_RPC_INVALID_REQUEST, msg, NULL);
}

static const char *const request_members[] = {"jsonrpc", "method", "params", "id"};

/* A `read` reply to write by hand (rb_rpc_data). */
struct fast_reply {
    struct rb_rpc_data data;
    json_t *id; /* a reference */
};

/*
 * One request object (section 4) -> its response, or NULL for a
 * notification (and when memory ran out: *oom is then set).  With @fast,
 * a `read` may instead leave its reply in *fast (and return NULL).
 */
static json_t *handle_one(const struct rb_rpc_backend *be, json_t *req,
                          struct rb_rpc_budget *budget, bool *oom,
                          struct fast_reply *fast)
{
    json_t *id, *ver, *method, *params, *result = NULL, *resp;
    struct rb_rpc_fault f = {0};
    const char *key;
    json_t *val;

    if (!json_is_object(req)) {
        resp = invalid(NULL, "invalid request: a request must be an object, not %s",
                       rb_rpc_type_name(req));
        goto out;
    }
    /* The id first, so that later errors can echo it when it is valid. */
    id = json_object_get(req, "id");
    if (id && !json_is_string(id) && !json_is_number(id) && !json_is_null(id)) {
        resp = invalid(NULL,
                       "invalid request: member 'id' must be a string, a number or "
                       "null, not %s",
                       rb_rpc_type_name(id));
        goto out;
    }
    json_object_foreach(req, key, val)
    {
        size_t i;
        for (i = 0; i < sizeof(request_members) / sizeof(request_members[0]); i++)
            if (strcmp(key, request_members[i]) == 0)
                break;
        if (i == sizeof(request_members) / sizeof(request_members[0])) {
            char shown[64];
            snprintf(shown, sizeof(shown), "%s", key);
            printable(shown);
            resp = invalid(id,
                           "invalid request: unknown member '%s' (a request has "
                           "jsonrpc, method, params and id)",
                           shown);
            goto out;
        }
    }
    ver = json_object_get(req, "jsonrpc");
    if (ver && !(json_is_string(ver) && strcmp(json_string_value(ver), "2.0") == 0)) {
        resp = invalid(id, "invalid request: member 'jsonrpc' must be \"2.0\"");
        goto out;
    }
    method = json_object_get(req, "method");
    if (!method) {
        resp = invalid(id, "invalid request: member 'method' is missing");
        goto out;
    }
    if (!json_is_string(method)) {
        resp = invalid(id, "invalid request: member 'method' must be a string, not %s",
                       rb_rpc_type_name(method));
        goto out;
    }
    params = json_object_get(req, "params");
    if (params && !json_is_object(params) && !json_is_array(params)) {
        resp = invalid(id,
                       "invalid request: member 'params' must be an object or an "
                       "array, not %s",
                       rb_rpc_type_name(params));
        goto out;
    }

    if (rb_rpc_call(be, json_string_value(method), params, budget, &result,
                    fast ? &fast->data : NULL, &f) == 0) {
        if (!id) {
            json_decref(result);
            if (fast) {
                free(fast->data.text);
                fast->data.text = NULL;
            }
            return NULL; /* a notification is never answered (section 4.1) */
        }
        if (fast && fast->data.text) {
            fast->id = json_incref(id);
            return NULL;
        }
        resp = json_pack("{s:s, s:o, s:O}", "jsonrpc", "2.0", "result", result, "id", id);
    } else {
        if (!id) {
            json_decref(f.data);
            return NULL;
        }
        resp = fault_response(id, &f);
    }
out:
    if (!resp)
        *oom = true;
    return resp;
}

/* Output buffer for json_dump_callback. */
struct dump_buf {
    char *p;
    size_t len, cap;
};

static int dump_cb(const char *s, size_t n, void *opaque)
{
    struct dump_buf *b = opaque;

    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

/* {"jsonrpc":"2.0","result":{"data":"BASE64"},"id":ID}\n -- byte for byte
 * what jansson would write for that object; frees @f's parts. */
static int emit_fast(struct fast_reply *f, char **out, size_t *out_len)
{
    static const char head[] = "{\"jsonrpc\":\"2.0\",\"result\":{\"data\":\"";
    static const char mid[] = "\"},\"id\":";
    char *id = json_dumps(f->id, JSON_COMPACT | JSON_ENCODE_ANY);
    size_t hl = sizeof(head) - 1, ml = sizeof(mid) - 1, il = id ? strlen(id) : 0;
    char *p = id ? malloc(hl + f->data.len + ml + il + 3) : NULL;

    if (p) {
        memcpy(p, head, hl);
        memcpy(p + hl, f->data.text, f->data.len);
        memcpy(p + hl + f->data.len, mid, ml);
        memcpy(p + hl + f->data.len + ml, id, il);
        memcpy(p + hl + f->data.len + ml + il, "}\n", 3); /* with the NUL */
        *out = p;
        *out_len = hl + f->data.len + ml + il + 2;
    }
    free(id);
    free(f->data.text);
    json_decref(f->id);
    return p ? 0 : -ENOMEM;
}

/* Serialise @resp (stolen) as one line ending in "\n". */
static int emit(json_t *resp, char **out, size_t *out_len)
{
    struct dump_buf b = {0};
    int r = json_dump_callback(resp, dump_cb, &b, JSON_COMPACT | JSON_ENCODE_ANY);

    json_decref(resp);
    if (r != 0 || dump_cb("\n", 1, &b) != 0) {
        free(b.p);
        return -ENOMEM;
    }
    b.p[b.len] = 0; /* dump_cb keeps room for it: callers may print the reply */
    *out = b.p;
    *out_len = b.len;
    return 0;
}

int rb_rpc_handle(const struct rb_rpc_backend *be, const char *line, size_t len,
                  char **out, size_t *out_len)
{
    struct rb_rpc_budget budget = {RB_RPC_MAX_BATCH_DATA};
    json_error_t jerr;
    json_t *req, *resp;
    bool oom = false;
    const char *what;
    size_t at;

    *out = NULL;
    *out_len = 0;
    if (blank(line, len))
        return 0;

    if (prescan(line, len, &what, &at) < 0) {
        char msg[128];
        snprintf(msg, sizeof(msg), "parse error: %s at byte %zu", what, at);
        resp = error_response(NULL, RB_RPC_PARSE_ERROR, msg, NULL);
        return resp ? emit(resp, out, out_len) : -ENOMEM;
    }

    req = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!req) {
        char msg[RB_ERROR_MSG_MAX];
        printable(jerr.text);
        snprintf(msg, sizeof(msg), "parse error: %s at byte %d", jerr.text,
                 jerr.position);
        resp = error_response(NULL, RB_RPC_PARSE_ERROR, msg, NULL);
        return resp ? emit(resp, out, out_len) : -ENOMEM;
    }

    if (!json_is_array(req)) {
        struct fast_reply fast = {.id = NULL};
        resp = handle_one(be, req, &budget, &oom, &fast);
        json_decref(req);
        if (fast.data.text)
            return emit_fast(&fast, out, out_len);
        if (oom)
            return -ENOMEM;
        return resp ? emit(resp, out, out_len) : 0;
    }

    /* A batch (section 6). */
    size_t n = json_array_size(req);
    if (n == 0 || n > RB_RPC_MAX_BATCH) {
        if (n == 0)
            resp = invalid(NULL, "invalid request: empty batch");
        else
            resp = invalid(NULL,
                           "invalid request: batch of %zu requests is over the "
                           "limit of %d",
                           n, RB_RPC_MAX_BATCH);
        json_decref(req);
        return resp ? emit(resp, out, out_len) : -ENOMEM;
    }
    json_t *all = json_array();
    if (!all) {
        json_decref(req);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n && !oom; i++) {
        json_t *r = handle_one(be, json_array_get(req, i), &budget, &oom, NULL);
        if (r && json_array_append_new(all, r) != 0)
            oom = true;
    }
    json_decref(req);
    if (oom) {
        json_decref(all);
        return -ENOMEM;
    }
    if (json_array_size(all) == 0) { /* all notifications: nothing at all */
        json_decref(all);
        return 0;
    }
    return emit(all, out, out_len);
}
