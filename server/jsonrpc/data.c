/* SPDX-License-Identifier: MIT */
/*
 * data.c - the methods that move data: read, write, write_zeroes, trim,
 * flush.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "jsonrpc/methods.h"
#include "rblock/base64.h"
#include "rblock/io.h"

int rpc_m_read(struct rpc_call *c, json_t **result)
{
    uint64_t off = c->a.u[0], len = c->a.u[1];
    struct rb_error err = {0};
    char *text;
    void *buf;
    int ret;

    if (len > RB_RPC_MAX_DATA)
        return rpc_param_fault(c,
                               "parameter 'length' is %" PRIu64 ", over the limit of %u",
                               len, RB_RPC_MAX_DATA);
    if (rpc_check_range(c, off, len) < 0)
        return -1;
    if (len > c->budget->data_bytes)
        return rb_rpc_fault_set(
            c->f, RB_RPC_TOO_LARGE, NULL,
            "read: the replies of this batch would carry more than %u "
            "bytes; send the rest in another batch",
            RB_RPC_MAX_BATCH_DATA);
    c->budget->data_bytes -= len;

    buf = malloc(len ? len : 1);
    text = malloc(rb_base64_encoded_len(len) + 1);
    if (!buf || !text) {
        free(buf);
        free(text);
        return rpc_io_fault(c, -ENOMEM, NULL);
    }
    ret = len ? c->be->ops->read(c->be->opaque, buf, off, len, &err) : 0;
    if (ret < 0) {
        free(buf);
        free(text);
        return rpc_io_fault(c, ret, &err);
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

int rpc_m_write(struct rpc_call *c, json_t **result)
{
    uint64_t off = c->a.u[0];
    struct rb_error err = {0};
    size_t bad = 0;
    long long n;
    void *buf;
    int ret;

    buf = malloc(rb_base64_decoded_max(c->a.s_len[1]));
    if (!buf)
        return rpc_io_fault(c, -ENOMEM, NULL);
    n = rb_base64_decode(buf, c->a.s[1], c->a.s_len[1], &bad);
    if (n < 0) {
        free(buf);
        if (bad == c->a.s_len[1])
            return rpc_param_fault(
                c,
                "parameter 'data' is not base64: its length %zu is not a "
                "multiple of 4",
                c->a.s_len[1]);
        return rpc_param_fault(
            c, "parameter 'data' is not base64: bad character at position %zu", bad);
    }
    if (rpc_check_range(c, off, (uint64_t)n) < 0) {
        free(buf);
        return -1;
    }
    ret = n ? c->be->ops->write(c->be->opaque, buf, off, (size_t)n,
                                c->a.b[2] ? RB_WRITE_FUA : 0, &err)
            : 0;
    free(buf);
    if (ret < 0)
        return rpc_io_fault(c, ret, &err);
    *result = length_result((uint64_t)n);
    return 0;
}

int rpc_m_write_zeroes(struct rpc_call *c, json_t **result)
{
    uint64_t off = c->a.u[0], len = c->a.u[1];
    unsigned flags = (c->a.b[2] ? RB_ZERO_MAY_UNMAP : 0) | (c->a.b[3] ? RB_WRITE_FUA : 0);
    struct rb_error err = {0};
    int ret;

    if (rpc_check_range(c, off, len) < 0)
        return -1;
    ret = len ? c->be->ops->write_zeroes(c->be->opaque, off, len, flags, &err) : 0;
    if (ret < 0)
        return rpc_io_fault(c, ret, &err);
    *result = length_result(len);
    return 0;
}

int rpc_m_trim(struct rpc_call *c, json_t **result)
{
    uint64_t off = c->a.u[0], len = c->a.u[1];
    struct rb_error err = {0};
    int ret;

    if (rpc_check_range(c, off, len) < 0)
        return -1;
    ret = len ? c->be->ops->trim(c->be->opaque, off, len, &err) : 0;
    if (ret < 0)
        return rpc_io_fault(c, ret, &err);
    *result = length_result(len);
    return 0;
}

int rpc_m_flush(struct rpc_call *c, json_t **result)
{
    struct rb_error err = {0};
    int ret = c->be->ops->flush(c->be->opaque, &err);

    if (ret < 0)
        return rpc_io_fault(c, ret, &err);
    *result = json_object();
    return 0;
}
