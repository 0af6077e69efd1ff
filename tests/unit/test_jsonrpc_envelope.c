/* SPDX-License-Identifier: MIT */
/*
 * test_jsonrpc_envelope.c - the JSON-RPC envelope and methods over a
 * memory disk: every rule of the specification we rely on, and the
 * parameter checks of each method.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "jsonrpc/rpc.h"
#include "rblock/base64.h"

#include "jsonrpc_memdisk.h"

/* ---- helpers ---------------------------------------------------------- */

/* The raw reply of one line (NULL when none); the caller frees. */
static char *raw(const char *line)
{
    char *out;
    size_t len;

    assert_int_equal(rb_rpc_handle(&be, line, strlen(line), &out, &len), 0);
    if (out) {
        assert_int_equal(out[len - 1], '\n');
        assert_null(memchr(out, '\n', len - 1)); /* one line */
        assert_int_equal(strlen(out), len);      /* no NUL inside */
    }
    return out;
}

static json_t *ask(const char *line)
{
    char *out = raw(line);
    json_error_t jerr;
    json_t *j;

    if (!out)
        return NULL;
    j = json_loads(out, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!j)
        fail_msg("reply is not JSON: %s (%s)", out, jerr.text);
    free(out);
    return j;
}

/* Check a reply is an error with @code; returns its message. */
static const char *expect_error(json_t *r, int code, json_t *id)
{
    json_t *e = json_object_get(r, "error");

    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(r, "jsonrpc")), "2.0");
    assert_null(json_object_get(r, "result"));
    assert_int_equal(json_integer_value(json_object_get(e, "code")), code);
    assert_true(json_is_string(json_object_get(e, "message")));
    assert_true(json_equal(json_object_get(r, "id"), id ? id : json_null()));
    json_decref(id);
    return json_string_value(json_object_get(e, "message"));
}

static void err_case(const char *line, int code, json_t *id, const char *needle)
{
    json_t *r = ask(line);

    assert_non_null(r);
    const char *msg = expect_error(r, code, id);
    if (needle && !strstr(msg, needle))
        fail_msg("%s: message \"%s\" lacks \"%s\"", line, msg, needle);
    json_decref(r);
}

/* ---- the seed's two requests, byte for byte --------------------------- */

static void test_seed_read(void **state)
{
    char *out = raw("{ \"jsonrpc\": \"2.0\", \"method\": \"read\", \"params\": "
                    "{ \"offset\": 4096, \"length\": 512 }, \"id\": 1 }");
    char b64[1024];
    char want[1200];
    size_t n = rb_base64_encode(b64, disk.bytes + 4096, 512);

    b64[n] = 0;
    snprintf(want, sizeof(want), "{\"jsonrpc\":\"2.0\",\"result\":{\"data\":\"%s\"},\"id\":1}\n",
             b64);
    assert_string_equal(out, want);
    free(out);
}

static void test_seed_get_version(void **state)
{
    char *out = raw("{ \"method\": \"get_version\", \"id\": 42 }");

    assert_string_equal(out, "{\"jsonrpc\":\"2.0\",\"result\":{\"name\":\"rblock\",\"version\":\""
                             RBLOCK_VERSION "\"},\"id\":42}\n");
    free(out);
}

/* ---- section 4 / 5: requests and errors -------------------------------- */

static void test_parse_errors(void **state)
{
    err_case("{", RB_RPC_PARSE_ERROR, NULL, "parse error");
    err_case("{\"method\": \"read\", \"id\": 1,}", RB_RPC_PARSE_ERROR, NULL, "parse error");
    err_case("\x01\x02\xff\xfe garbage", RB_RPC_PARSE_ERROR, NULL, "parse error");
    err_case("{\"method\": \"get_version\", \"id\": 1} {}", RB_RPC_PARSE_ERROR, NULL, NULL);
    /* invalid UTF-8 inside a string */
    err_case("{\"method\": \"get_\xc3\x28\", \"id\": 1}", RB_RPC_PARSE_ERROR, NULL, NULL);
    /* duplicate keys are refused (JSON_REJECT_DUPLICATES) */
    err_case("{\"method\": \"read\", \"method\": \"write\", \"id\": 1}", RB_RPC_PARSE_ERROR,
             NULL, "duplicate");
    /* spec example: invalid JSON inside a batch is one parse error */
    err_case("[{\"jsonrpc\": \"2.0\", \"method\": \"sum\", \"params\": [1,2,4], \"id\": \"1\"},"
             "{\"jsonrpc\": \"2.0\", \"method\"]",
             RB_RPC_PARSE_ERROR, NULL, NULL);
}

static void test_deep_nesting(void **state)
{
    size_t n = 100000;
    char *line = malloc(2 * n + 1);

    memset(line, '[', n);
    memset(line + n, ']', n);
    line[2 * n] = 0;
    err_case(line, RB_RPC_PARSE_ERROR, NULL, "nesting deeper than");
    /* brackets inside strings do not count */
    memset(line, 0, 2 * n + 1);
    strcpy(line, "{\"method\": \"get_version\", \"id\": \"");
    memset(line + strlen(line), '[', 1000);
    strcat(line, "\"}");
    json_t *r = ask(line);
    assert_non_null(json_object_get(r, "result"));
    json_decref(r);
    /* exactly at the limit is fine: params nested 32 deep is a params error */
    strcpy(line, "{\"method\":\"read\",\"id\":1,\"params\":");
    for (int i = 0; i < RB_RPC_MAX_DEPTH - 1; i++)
        strcat(line, "[");
    for (int i = 0; i < RB_RPC_MAX_DEPTH - 1; i++)
        strcat(line, "]");
    strcat(line, "}");
    err_case(line, RB_RPC_INVALID_PARAMS, json_integer(1), "must be a non-negative integer");
    free(line);
}

static void test_too_many_values(void **state)
{
    size_t n = 70000;
    char *line = malloc(n * 16 + 64);
    char *p = line;

    /* a flat array: the tree would be millions of values */
    *p++ = '[';
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "%s1", i ? "," : "");
    strcpy(p, "]");
    err_case(line, RB_RPC_PARSE_ERROR, NULL, "more than 65536 values in one line");
    /* an object with as many keys, inside params */
    p = line + sprintf(line, "{\"method\":\"read\",\"id\":1,\"params\":{");
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "%s\"k%zu\":0", i ? "," : "", i);
    strcpy(p, "}}");
    err_case(line, RB_RPC_PARSE_ERROR, NULL, "more than 65536 values");
    /* commas inside strings are not values */
    p = line + sprintf(line, "{\"method\":\"get_version\",\"id\":\"");
    memset(p, ',', n);
    strcpy(p + n, "\"}");
    json_t *r = ask(line);
    assert_non_null(json_object_get(r, "result"));
    json_decref(r);
    free(line);
}

static void test_invalid_requests(void **state)
{
    err_case("1", RB_RPC_INVALID_REQUEST, NULL, "must be an object");
    err_case("\"hello\"", RB_RPC_INVALID_REQUEST, NULL, "must be an object");
    err_case("null", RB_RPC_INVALID_REQUEST, NULL, "must be an object");
    err_case("{\"jsonrpc\": \"1.0\", \"method\": \"get_version\", \"id\": 3}",
             RB_RPC_INVALID_REQUEST, json_integer(3), "'jsonrpc' must be \"2.0\"");
    err_case("{\"jsonrpc\": 2.0, \"method\": \"get_version\", \"id\": 3}",
             RB_RPC_INVALID_REQUEST, json_integer(3), "'jsonrpc'");
    err_case("{\"jsonrpc\": \"2.0\", \"method\": 1, \"params\": \"bar\"}",
             RB_RPC_INVALID_REQUEST, NULL, "'method' must be a string");
    err_case("{\"jsonrpc\": \"2.0\", \"id\": \"x\"}", RB_RPC_INVALID_REQUEST,
             json_string("x"), "'method' is missing");
    err_case("{\"method\": \"read\", \"params\": 5, \"id\": 9}", RB_RPC_INVALID_REQUEST,
             json_integer(9), "'params' must be an object or an array");
    err_case("{\"method\": \"read\", \"params\": null, \"id\": 9}", RB_RPC_INVALID_REQUEST,
             json_integer(9), "'params'");
    err_case("{\"method\": \"get_version\", \"id\": [1]}", RB_RPC_INVALID_REQUEST, NULL,
             "'id' must be a string, a number or null");
    err_case("{\"method\": \"get_version\", \"id\": {}}", RB_RPC_INVALID_REQUEST, NULL, "'id'");
    err_case("{\"method\": \"get_version\", \"id\": true}", RB_RPC_INVALID_REQUEST, NULL,
             "'id'");
    err_case("{\"method\": \"get_version\", \"id\": 1, \"param\": {}}", RB_RPC_INVALID_REQUEST,
             json_integer(1), "unknown member 'param'");
}

static void test_ids_echoed(void **state)
{
    json_t *r = ask("{\"method\": \"get_version\", \"id\": \"abc\"}");
    assert_string_equal(json_string_value(json_object_get(r, "id")), "abc");
    json_decref(r);
    r = ask("{\"method\": \"get_version\", \"id\": 1.5}");
    assert_true(json_real_value(json_object_get(r, "id")) == 1.5);
    json_decref(r);
    r = ask("{\"method\": \"get_version\", \"id\": null}"); /* a request, not a notification */
    assert_non_null(r);
    assert_true(json_is_null(json_object_get(r, "id")));
    assert_non_null(json_object_get(r, "result"));
    json_decref(r);
    r = ask("{\"method\": \"get_version\", \"id\": -7}");
    assert_int_equal(json_integer_value(json_object_get(r, "id")), -7);
    json_decref(r);
}

static void test_method_not_found(void **state)
{
    err_case("{\"jsonrpc\": \"2.0\", \"method\": \"foobar\", \"id\": \"1\"}",
             RB_RPC_METHOD_NOT_FOUND, json_string("1"), "method 'foobar' not found");
    err_case("{\"method\": \"rpc.discover\", \"id\": 2}", RB_RPC_METHOD_NOT_FOUND,
             json_integer(2), "not found");
    err_case("{\"method\": \"READ\", \"id\": 2}", RB_RPC_METHOD_NOT_FOUND, json_integer(2),
             NULL);
}

static void test_notifications(void **state)
{
    assert_null(raw("{\"jsonrpc\": \"2.0\", \"method\": \"get_version\"}"));
    assert_null(raw("{\"jsonrpc\": \"2.0\", \"method\": \"foobar\"}"));
    assert_null(raw("{\"method\": \"read\", \"params\": {\"offset\": -1}}"));
    /* a notification is executed all the same */
    assert_null(raw("{\"method\": \"flush\"}"));
    assert_int_equal(disk.flushes, 1);
    assert_null(raw("{\"method\": \"write\", \"params\": {\"offset\": 0, \"data\": \"AAAA\"}}"));
    assert_int_equal(disk.bytes[0], 0);
    /* blank lines are skipped */
    assert_null(raw(""));
    assert_null(raw("  \t\r"));
}

/* ---- section 6: batches ------------------------------------------------ */

static void test_batches(void **state)
{
    json_t *r;

    err_case("[]", RB_RPC_INVALID_REQUEST, NULL, "empty batch");
    err_case(" [ ] ", RB_RPC_INVALID_REQUEST, NULL, "empty batch");

    r = ask("[1]");
    assert_true(json_is_array(r));
    assert_int_equal(json_array_size(r), 1);
    expect_error(json_array_get(r, 0), RB_RPC_INVALID_REQUEST, NULL);
    json_decref(r);

    r = ask("[1,2,3]");
    assert_int_equal(json_array_size(r), 3);
    for (int i = 0; i < 3; i++)
        expect_error(json_array_get(r, (size_t)i), RB_RPC_INVALID_REQUEST, NULL);
    json_decref(r);

    /* all notifications: nothing at all */
    assert_null(raw("[{\"jsonrpc\": \"2.0\", \"method\": \"flush\"},"
                    "{\"jsonrpc\": \"2.0\", \"method\": \"get_version\"}]"));

    /* the spec's mixed example, with our methods */
    r = ask("[{\"jsonrpc\": \"2.0\", \"method\": \"get_version\", \"id\": \"1\"},"
            "{\"jsonrpc\": \"2.0\", \"method\": \"flush\"},"
            "{\"jsonrpc\": \"2.0\", \"method\": \"read\", \"params\": {\"offset\": 0, "
            "\"length\": 3}, \"id\": \"2\"},"
            "{\"foo\": \"boo\"},"
            "{\"jsonrpc\": \"2.0\", \"method\": \"foo.get\", \"params\": {\"name\": "
            "\"myself\"}, \"id\": \"5\"},"
            "{\"jsonrpc\": \"2.0\", \"method\": \"stats\", \"id\": \"9\"}]");
    assert_int_equal(json_array_size(r), 5);
    assert_string_equal(json_string_value(json_object_get(json_array_get(r, 0), "id")), "1");
    assert_non_null(json_object_get(json_array_get(r, 0), "result"));
    assert_string_equal(json_string_value(json_object_get(json_array_get(r, 1), "id")), "2");
    expect_error(json_array_get(r, 2), RB_RPC_INVALID_REQUEST, NULL);
    expect_error(json_array_get(r, 3), RB_RPC_METHOD_NOT_FOUND, json_string("5"));
    const char *m = expect_error(json_array_get(r, 4), RB_RPC_IO_ERROR, json_string("9"));
    assert_non_null(strstr(m, "stats are broken today"));
    json_decref(r);

    /* nested batches are not requests */
    r = ask("[[{\"method\": \"get_version\", \"id\": 1}]]");
    assert_int_equal(json_array_size(r), 1);
    expect_error(json_array_get(r, 0), RB_RPC_INVALID_REQUEST, NULL);
    json_decref(r);
}

static void test_batch_limits(void **state)
{
    size_t n = RB_RPC_MAX_BATCH + 1;
    char *line = malloc(n * 2 + 2);
    char *p = line;

    *p++ = '[';
    for (size_t i = 0; i < n; i++) {
        *p++ = '1';
        *p++ = ',';
    }
    p[-1] = ']';
    *p = 0;
    err_case(line, RB_RPC_INVALID_REQUEST, NULL, "over the limit");
    free(line);

    /* five reads of 4 MiB: the reply may carry 8 MiB, the third is refused */
    char buf[1024];
    strcpy(buf, "[");
    for (int i = 0; i < 5; i++)
        sprintf(buf + strlen(buf), "%s{\"method\":\"read\",\"params\":{\"offset\":0,"
                                   "\"length\":%u},\"id\":%d}", i ? "," : "",
                RB_RPC_MAX_DATA, i);
    strcat(buf, "]");
    json_t *r = ask(buf);
    assert_int_equal(json_array_size(r), 5);
    for (int i = 0; i < 2; i++)
        assert_int_equal(json_string_length(json_object_get(
                             json_object_get(json_array_get(r, (size_t)i), "result"), "data")),
                         rb_base64_encoded_len(RB_RPC_MAX_DATA));
    for (int i = 2; i < 5; i++)
        expect_error(json_array_get(r, (size_t)i), RB_RPC_TOO_LARGE, json_integer(i));
    json_decref(r);
}

/* ---- parameters ----------------------------------------------------------- */

static void test_invalid_params(void **state)
{
    err_case("{\"method\":\"read\",\"params\":{\"offset\":\"4096\",\"length\":512},\"id\":1}",
             RB_RPC_INVALID_PARAMS, json_integer(1),
             "parameter 'offset' must be a non-negative integer, not a string");
    err_case("{\"method\":\"read\",\"params\":{\"offset\":-1,\"length\":512},\"id\":1}",
             RB_RPC_INVALID_PARAMS, json_integer(1), "must not be negative (got -1)");
    err_case("{\"method\":\"read\",\"params\":{\"offset\":1.0,\"length\":512},\"id\":1}",
             RB_RPC_INVALID_PARAMS, json_integer(1), "not a real number");
    err_case("{\"method\":\"read\",\"params\":{\"length\":512},\"id\":1}",
             RB_RPC_INVALID_PARAMS, json_integer(1), "missing parameter 'offset'");
    err_case("{\"method\":\"read\",\"id\":1}", RB_RPC_INVALID_PARAMS, json_integer(1),
             "missing parameter 'offset'");
    err_case("{\"method\":\"read\",\"params\":{\"offset\":0,\"length\":1,\"lenght\":2},"
             "\"id\":1}", RB_RPC_INVALID_PARAMS, json_integer(1),
             "unknown parameter 'lenght' of method 'read' (it takes offset, length, export?)");
    err_case("{\"method\":\"read\",\"params\":{\"offset\":0,\"length\":4194305},\"id\":1}",
             RB_RPC_INVALID_PARAMS, json_integer(1), "over the limit of 4194304");
    err_case("{\"method\":\"read\",\"params\":[0,1,\"\",3],\"id\":1}", RB_RPC_INVALID_PARAMS,
             json_integer(1), "takes 3 parameters");
    err_case("{\"method\":\"read\",\"params\":[0,1,2],\"id\":1}", RB_RPC_INVALID_PARAMS,
             json_integer(1), "parameter 'export' must be a string, not an integer");
    err_case("{\"method\":\"get_version\",\"params\":{\"x\":1},\"id\":1}",
             RB_RPC_INVALID_PARAMS, json_integer(1), "no parameters");
    err_case("{\"method\":\"write\",\"params\":{\"offset\":0,\"data\":\"AAA\"},\"id\":1}",
             RB_RPC_INVALID_PARAMS, json_integer(1), "not a multiple of 4");
    err_case("{\"method\":\"write\",\"params\":{\"offset\":0,\"data\":\"AA*A\"},\"id\":1}",
             RB_RPC_INVALID_PARAMS, json_integer(1), "bad character at position 2");
    err_case("{\"method\":\"write\",\"params\":{\"offset\":0,\"data\":1},\"id\":1}",
             RB_RPC_INVALID_PARAMS, json_integer(1), "must be a base64 string");
    err_case("{\"method\":\"write\",\"params\":{\"offset\":0,\"data\":\"AAAA\",\"fua\":1},"
             "\"id\":1}", RB_RPC_INVALID_PARAMS, json_integer(1), "must be a boolean");
    /* length 0: an empty result, as read and map (but still range-checked) */
    {
        json_t *r0 = ask("{\"method\":\"block_status\",\"params\":{\"offset\":0,"
                         "\"length\":0},\"id\":1}");
        assert_int_equal(json_array_size(json_object_get(r0, "result")), 0);
        assert_true(json_is_array(json_object_get(r0, "result")));
        json_decref(r0);
        r0 = ask("{\"method\":\"map\",\"params\":{\"offset\":0,\"length\":0},\"id\":1}");
        assert_true(json_is_array(json_object_get(r0, "result")));
        assert_int_equal(json_array_size(json_object_get(r0, "result")), 0);
        json_decref(r0);
    }
    err_case("{\"method\":\"block_status\",\"params\":{\"offset\":8388609,\"length\":0},"
             "\"id\":1}",
             RB_RPC_OUT_OF_RANGE, json_integer(1), "past the end");
    /* too large for an integer of JSON's usual 64 bits: a parse error */
    err_case("{\"method\":\"read\",\"params\":{\"offset\":99999999999999999999,\"length\":1},"
             "\"id\":1}", RB_RPC_PARSE_ERROR, NULL, "too big");

    /* the data cap is checked on the string's length, before decoding */
    size_t chars = rb_base64_encoded_len(RB_RPC_MAX_DATA) + 4;
    char *line = malloc(chars + 100);
    strcpy(line, "{\"method\":\"write\",\"params\":{\"offset\":0,\"data\":\"");
    size_t at = strlen(line);
    memset(line + at, 'A', chars);
    strcpy(line + at + chars, "\"},\"id\":1}");
    err_case(line, RB_RPC_INVALID_PARAMS, json_integer(1), "over the limit");
    free(line);
}

static void test_range_and_read_only(void **state)
{
    err_case("{\"method\":\"read\",\"params\":{\"offset\":8388096,\"length\":1024},\"id\":1}",
             RB_RPC_OUT_OF_RANGE, json_integer(1),
             "offset 8388096 + length 1024 is past the end of the image (size 8388608)");
    err_case("{\"method\":\"trim\",\"params\":{\"offset\":9223372036854775807,"
             "\"length\":9223372036854775807},\"id\":1}",
             RB_RPC_OUT_OF_RANGE, json_integer(1), "past the end");
    err_case("{\"method\":\"write\",\"params\":{\"offset\":8388607,\"data\":\"AAAA\"},\"id\":1}",
             RB_RPC_OUT_OF_RANGE, json_integer(1), "past the end");
    err_case("{\"method\":\"map\",\"params\":{\"offset\":8388609},\"id\":1}",
             RB_RPC_OUT_OF_RANGE, json_integer(1), "past the end");

    disk.read_only = true;
    err_case("{\"method\":\"write\",\"params\":{\"offset\":0,\"data\":\"AAAA\"},\"id\":1}",
             RB_RPC_READ_ONLY, json_integer(1), "write: the image is served read-only");
    err_case("{\"method\":\"write_zeroes\",\"params\":{\"offset\":0,\"length\":1},\"id\":1}",
             RB_RPC_READ_ONLY, json_integer(1), "read-only");
    err_case("{\"method\":\"trim\",\"params\":{\"offset\":0,\"length\":1},\"id\":1}",
             RB_RPC_READ_ONLY, json_integer(1), "read-only");
    json_t *r = ask("{\"method\":\"read\",\"params\":{\"offset\":0,\"length\":1},\"id\":1}");
    assert_non_null(json_object_get(r, "result"));
    json_decref(r);
    disk.read_only = false;
}

static void test_io_errors(void **state)
{
    disk.fail_errno = EIO;
    err_case("{\"method\":\"read\",\"params\":{\"offset\":0,\"length\":1},\"id\":1}",
             RB_RPC_IO_ERROR, json_integer(1), "read: memdisk: injected failure");
    disk.fail_errno = ENOSPC;
    err_case("{\"method\":\"write\",\"params\":{\"offset\":0,\"data\":\"AAAA\"},\"id\":1}",
             RB_RPC_NO_SPACE, json_integer(1), "injected");
    disk.fail_errno = ENOTSUP;
    err_case("{\"method\":\"write_zeroes\",\"params\":{\"offset\":0,\"length\":1},\"id\":1}",
             RB_RPC_NOT_SUPPORTED, json_integer(1), NULL);
    disk.fail_errno = EROFS;
    json_t *r = ask("{\"method\":\"flush\",\"id\":1}");
    expect_error(r, RB_RPC_READ_ONLY, json_integer(1));
    json_t *data = json_object_get(json_object_get(r, "error"), "data");
    assert_string_equal(json_string_value(json_object_get(data, "name")), "EROFS");
    json_decref(r);
    disk.fail_errno = ENOMEM;
    err_case("{\"method\":\"read\",\"params\":{\"offset\":0,\"length\":1},\"id\":2}",
             RB_RPC_INTERNAL_ERROR, json_integer(2), "read: memdisk: injected failure");
    assert_int_equal(rb_rpc_code_from_errno(-ENOMEM), RB_RPC_INTERNAL_ERROR);
    assert_int_equal(rb_rpc_code_from_errno(-ESHUTDOWN), RB_RPC_SHUTTING_DOWN);
}

/* ---- methods ---------------------------------------------------------- */

static void test_write_read_roundtrip(void **state)
{
    json_t *r = ask("{\"method\":\"write\",\"params\":{\"offset\":65536,"
                    "\"data\":\"aGVsbG8sIHdvcmxk\",\"fua\":true},\"id\":1}");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "result"), "length")),
                     12);
    json_decref(r);
    assert_memory_equal(disk.bytes + 65536, "hello, world", 12);

    /* params by position */
    r = ask("{\"method\":\"read\",\"params\":[65536, 12],\"id\":2}");
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "result"), "data")),
                        "aGVsbG8sIHdvcmxk");
    json_decref(r);

    r = ask("{\"method\":\"read\",\"params\":{\"offset\":0,\"length\":0},\"id\":3}");
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "result"), "data")),
                        "");
    json_decref(r);

    r = ask("{\"method\":\"write_zeroes\",\"params\":{\"offset\":65536,\"length\":5,"
            "\"may_unmap\":true},\"id\":4}");
    assert_non_null(json_object_get(r, "result"));
    json_decref(r);
    assert_memory_equal(disk.bytes + 65536, "\0\0\0\0\0, world", 12);

    r = ask("{\"method\":\"trim\",\"params\":{\"offset\":65536,\"length\":65536},\"id\":5}");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "result"), "length")),
                     65536);
    json_decref(r);

    r = ask("{\"method\":\"flush\",\"id\":6}");
    assert_true(json_is_object(json_object_get(r, "result")));
    json_decref(r);
    assert_int_equal(disk.flushes, 1);
}

static void test_block_status_and_map(void **state)
{
    json_t *r = ask("{\"method\":\"write\",\"params\":{\"offset\":131072,\"data\":\"AAAA\"},"
                    "\"id\":1}");
    json_decref(r);

    r = ask("{\"method\":\"block_status\",\"params\":{\"offset\":65536,\"length\":196608},"
            "\"id\":2}");
    json_t *a = json_object_get(r, "result");
    assert_int_equal(json_array_size(a), 3);
    json_t *e = json_array_get(a, 1);
    assert_int_equal(json_integer_value(json_object_get(e, "offset")), 131072);
    assert_int_equal(json_integer_value(json_object_get(e, "length")), 65536);
    assert_true(json_is_true(json_object_get(e, "data")));
    assert_true(json_is_true(json_object_get(e, "allocated")));
    assert_true(json_is_false(json_object_get(e, "zero")));
    assert_int_equal(json_integer_value(json_object_get(e, "depth")), 0);
    e = json_array_get(a, 2);
    assert_true(json_is_true(json_object_get(e, "zero")));
    assert_true(json_is_false(json_object_get(e, "allocated")));
    assert_int_equal(json_integer_value(json_object_get(e, "depth")), 0);
    json_decref(r);

    /* map: qemu-img's fields, whole image by default, merged */
    r = ask("{\"method\":\"map\",\"id\":3}");
    a = json_object_get(r, "result");
    assert_int_equal(json_array_size(a), 3);
    e = json_array_get(a, 0);
    assert_int_equal(json_integer_value(json_object_get(e, "start")), 0);
    assert_int_equal(json_integer_value(json_object_get(e, "length")), 131072);
    assert_true(json_is_false(json_object_get(e, "present")));
    assert_int_equal(json_integer_value(json_object_get(e, "depth")), 0);
    assert_null(json_object_get(e, "offset"));
    e = json_array_get(a, 1);
    assert_int_equal(json_integer_value(json_object_get(e, "offset")), 131072 + 0x50000);
    e = json_array_get(a, 2);
    assert_int_equal(json_integer_value(json_object_get(e, "start")), 196608);
    assert_int_equal(json_integer_value(json_object_get(e, "length")), DISK_BYTES - 196608);
    json_decref(r);

    r = ask("{\"method\":\"map\",\"params\":{\"offset\":8388608},\"id\":4}");
    assert_int_equal(json_array_size(json_object_get(r, "result")), 0);
    json_decref(r);
}

static void test_info_check_list(void **state)
{
    json_t *r = ask("{\"method\":\"info\",\"id\":1}");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(r, "result"), "format")), "mem");
    json_decref(r);
    r = ask("{\"method\":\"info\",\"params\":{\"backing_chain\":true},\"id\":1}");
    assert_true(json_is_array(json_object_get(r, "result")));
    json_decref(r);
    r = ask("{\"method\":\"check\",\"id\":1}");
    assert_non_null(json_object_get(r, "result"));
    json_decref(r);
    r = ask("{\"method\":\"list_methods\",\"id\":1}");
    json_t *a = json_object_get(r, "result");
    assert_true(json_array_size(a) >= 12);
    const char *want[] = {"get_version", "info", "map", "read", "write", "write_zeroes",
                          "trim", "flush", "block_status", "check", "stats", "list_methods"};
    for (size_t k = 0; k < sizeof(want) / sizeof(want[0]); k++) {
        bool found = false;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (strcmp(json_string_value(json_object_get(json_array_get(a, i), "name")),
                       want[k]) == 0)
                found = true;
        if (!found)
            fail_msg("list_methods lacks %s", want[k]);
    }
    json_decref(r);
}

/* ---- layout: the picture of the image, optional in a backend ----------- */

static json_t *md_layout(void *o, struct rb_error *err)
{
    return json_string("<svg xmlns=\"http://www.w3.org/2000/svg\"/>");
}

static void test_layout(void **state)
{
    struct rb_rpc_backend_ops with = md_ops;
    const struct rb_rpc_backend_ops *saved = be.ops;
    json_t *r;

    /* a backend without pictures: not supported, named */
    err_case("{\"method\":\"layout\",\"id\":1}", RB_RPC_NOT_SUPPORTED, json_integer(1),
             "layout");
    with.layout = md_layout;
    be.ops = &with;
    r = ask("{\"method\":\"layout\",\"id\":2}");
    assert_string_equal(json_string_value(json_object_get(r, "result")),
                        "<svg xmlns=\"http://www.w3.org/2000/svg\"/>");
    json_decref(r);
    /* it takes no parameters */
    err_case("{\"method\":\"layout\",\"params\":{\"offset\":0},\"id\":3}",
             RB_RPC_INVALID_PARAMS, json_integer(3), "offset");
    r = ask("{\"method\":\"list_methods\",\"id\":4}");
    bool found = false;
    for (size_t i = 0; i < json_array_size(json_object_get(r, "result")); i++) {
        json_t *m = json_array_get(json_object_get(r, "result"), i);
        if (strcmp(json_string_value(json_object_get(m, "name")), "layout") == 0)
            found = !json_is_true(json_object_get(m, "writes"));
    }
    assert_true(found);
    json_decref(r);
    be.ops = saved;
}

/* ---- base64 ------------------------------------------------------------- */

static void test_base64(void **state)
{
    const char *v[][2] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},
                          {"foo", "Zm9v"},   {"foob", "Zm9vYg=="},  {"fooba", "Zm9vYmE="},
                          {"foobar", "Zm9vYmFy"}}; /* RFC 4648 section 10 */
    char enc[32];
    uint8_t dec[32];
    size_t bad;

    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        size_t n = rb_base64_encode(enc, v[i][0], strlen(v[i][0]));
        assert_int_equal(n, strlen(v[i][1]));
        assert_memory_equal(enc, v[i][1], n);
        assert_int_equal(rb_base64_decode(dec, v[i][1], n, &bad), (long long)strlen(v[i][0]));
        assert_memory_equal(dec, v[i][0], strlen(v[i][0]));
    }
    /* every byte value, every length mod 3 */
    uint8_t all[256];
    char big[400];
    uint8_t back[400];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    for (size_t len = 253; len <= 256; len++) {
        size_t n = rb_base64_encode(big, all, len);
        assert_int_equal(rb_base64_decode(back, big, n, &bad), (long long)len);
        assert_memory_equal(back, all, len);
    }
    const struct {
        const char *s;
        size_t bad;
    } wrong[] = {{"Zg=", 3},  {"Zg", 2},   {"Z===", 1},  {"Zg=a", 3}, {"Zh==", 1},
                 {"Zm9=", 2}, {"Zg==Zg==", 2}, {"Zm 9", 2}, {"Zm9\n", 3}, {"=Zm9", 0}};
    for (size_t i = 0; i < sizeof(wrong) / sizeof(wrong[0]); i++) {
        bad = 999;
        assert_int_equal(rb_base64_decode(dec, wrong[i].s, strlen(wrong[i].s), &bad), -1);
        if (bad != wrong[i].bad)
            fail_msg("%s: bad at %zu, expected %zu", wrong[i].s, bad, wrong[i].bad);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_seed_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seed_get_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deep_nesting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_many_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ids_echoed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_method_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notifications, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_params, setup, teardown),
        cmocka_unit_test_setup_teardown(test_range_and_read_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_io_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_read_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_block_status_and_map, setup, teardown),
        cmocka_unit_test_setup_teardown(test_info_check_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_layout, setup, teardown),
        cmocka_unit_test(test_base64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
