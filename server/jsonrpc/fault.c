/* SPDX-License-Identifier: MIT */
/*
 * fault.c - JSON-RPC errors: setting a call's fault, naming JSON types in
 * messages, and the one mapping of the image layer's errno values to our
 * error codes (the twin of server/nbd/errno.c).  A leaf: every other file
 * of server/jsonrpc may call it, it calls none of them.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "jsonrpc/methods.h"

int rb_rpc_fault_set(struct rb_rpc_fault *f, int code, json_t *data, const char *fmt, ...)
{
    va_list ap;

    if (f->code) { /* keep the first error */
        json_decref(data);
        return -1;
    }
    f->code = code;
    f->data = data;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof(f->msg), fmt, ap);
    va_end(ap);
    return -1;
}

const char *rb_rpc_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a real number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "a value";
}

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
int rpc_io_fault(struct rpc_call *c, int ret, const struct rb_error *err)
{
    const char *name = strerrorname_np(-ret);
    json_t *data = json_pack("{s:i, s:s}", "errno", -ret, "name", name ? name : "?");

    return rb_rpc_fault_set(c->f, rb_rpc_code_from_errno(ret), data, "%s: %s", c->m->name,
                            rb_error_msg(err, ret));
}
