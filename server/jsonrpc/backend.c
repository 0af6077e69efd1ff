/* SPDX-License-Identifier: MIT */
/*
 * backend.c - the JSON-RPC methods' backend over server/core/export.h:
 * the same open image, the same locks and write path as NBD, counted as
 * JSON-RPC in the statistics.  Also the protocol entry point.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/export.h"
#include "jsonrpc/jsonrpc.h"

static struct rb_export *ex(void *o)
{
    return ((struct rb_conn *)o)->srv->export;
}

static uint64_t be_size(void *o)
{
    return rb_export_size(ex(o));
}

static bool be_read_only(void *o)
{
    return rb_export_read_only(ex(o));
}

static int be_read(void *o, void *buf, uint64_t off, size_t len, struct rb_error *err)
{
    return rb_export_read(ex(o), RB_PROTO_JSONRPC, buf, off, len, err);
}

static int be_write(void *o, const void *buf, uint64_t off, size_t len, unsigned flags,
                    struct rb_error *err)
{
    return rb_export_write(ex(o), RB_PROTO_JSONRPC, buf, off, len, flags, err);
}

static int be_write_zeroes(void *o, uint64_t off, uint64_t len, unsigned flags,
                           struct rb_error *err)
{
    return rb_export_write_zeroes(ex(o), RB_PROTO_JSONRPC, off, len, flags, err);
}

static int be_trim(void *o, uint64_t off, uint64_t len, struct rb_error *err)
{
    return rb_export_trim(ex(o), RB_PROTO_JSONRPC, off, len, 0, err);
}

static int be_flush(void *o, struct rb_error *err)
{
    return rb_export_flush(ex(o), RB_PROTO_JSONRPC, err);
}

static int be_block_status(void *o, uint64_t off, uint64_t len, struct rb_extent *ext,
                           struct rb_error *err)
{
    return rb_export_block_status(ex(o), RB_PROTO_JSONRPC, off, len, ext, err);
}

static int be_bitmap_extent(void *o, const char *name, uint64_t off, uint64_t len,
                            bool *dirty, uint64_t *bytes, struct rb_error *err)
{
    struct rb_export *e = ex(o);

    for (size_t i = 0; i < rb_export_nb_bitmaps(e); i++)
        if (strcmp(rb_export_bitmap(e, i), name) == 0)
            return rb_export_bitmap_extent(e, RB_PROTO_JSONRPC, i, off, len, dirty, bytes,
                                           err);
    return rb_error_set(err, ENOENT, "bitmap '%s' is not served (serve -B NAME)", name);
}

static json_t *be_info(void *o, bool chain, struct rb_error *err)
{
    return rb_rpc_info_json(ex(o), chain, err);
}

static json_t *be_check(void *o, struct rb_error *err)
{
    return rb_rpc_check_json(ex(o), err);
}

static json_t *be_layout(void *o, struct rb_error *err)
{
    return rb_rpc_layout_json(ex(o), err);
}

static json_t *be_stats(void *o, struct rb_error *err)
{
    struct rb_export *e = ex(o);
    json_t *protos = json_object();

    for (int p = 0; protos && p < RB_PROTO_COUNT; p++) {
        struct rb_proto_stats s;
        rb_export_stats(e, (enum rb_proto_id)p, &s);
        json_t *j = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "connections_total",
                              (json_int_t)s.connections_total, "connections_now",
                              (json_int_t)s.connections_now, "connections_closing",
                              (json_int_t)s.connections_closing, "requests",
                              (json_int_t)s.requests, "errors", (json_int_t)s.errors,
                              "bytes_read", (json_int_t)s.bytes_read, "bytes_written",
                              (json_int_t)s.bytes_written);
        if (!j ||
            json_object_set_new(protos, rb_proto_name((enum rb_proto_id)p), j) != 0) {
            json_decref(protos);
            protos = NULL;
        }
    }
    if (!protos) {
        rb_error_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    return json_pack("{s:I, s:{s:s, s:s, s:I, s:b}, s:o}", "uptime_ms",
                     (json_int_t)(rb_export_uptime(e) * 1000), "export", "name",
                     rb_export_name(e), "format", rb_export_format(e), "size",
                     (json_int_t)rb_export_size(e), "read-only", rb_export_read_only(e),
                     "protocols", protos);
}

/* Like NBD's handshake: until its first real request, a connection may be
 * dropped to make room when --max-connections are open, so that idle or
 * half-open clients cannot starve real ones (server/core/conn.c). */
static void be_spoke(void *o)
{
    struct rb_conn *c = o;

    if (atomic_load(&c->in_handshake))
        (void)rb_conn_handshake_done(c); /* evicted: the reply fails to send */
}

static const struct rb_rpc_backend_ops export_ops = {
    .size = be_size,
    .read_only = be_read_only,
    .read = be_read,
    .write = be_write,
    .write_zeroes = be_write_zeroes,
    .trim = be_trim,
    .flush = be_flush,
    .block_status = be_block_status,
    .bitmap_extent = be_bitmap_extent,
    .info = be_info,
    .check = be_check,
    .stats = be_stats,
    .layout = be_layout,
    .spoke = be_spoke,
};

void rb_rpc_backend_for(struct rb_conn *c, struct rb_rpc_backend *be)
{
    be->ops = &export_ops;
    be->opaque = c;
}

static void rpc_serve(struct rb_conn *c)
{
    struct rb_rpc_backend be;

    /* TLS is NBD's: JSON-RPC listens on loopback or unix
     * sockets only in plain text. */
    if (c->tr)
        return;
    rb_rpc_backend_for(c, &be);
    rb_rpc_serve_fd(c->fd, &be, c->srv->proto_config[RB_PROTO_JSONRPC]);
}

const struct rb_protocol rb_jsonrpc_protocol = {
    .name = "jsonrpc",
    .id = RB_PROTO_JSONRPC,
    /* Evictable until it speaks (be_spoke), but without NBD's handshake
     * deadline: a person typing into socat is a fine client. */
    .handshake_deadline = false,
    .evictable_until_done = true,
    .serve = rpc_serve,
};

int rb_rpc_export_env(const struct rb_listeners *ls, struct rb_error *err)
{
    for (size_t i = 0; i < ls->n; i++) {
        const struct rb_listener *l = &ls->v[i];
        char addr[512];
        if (l->proto != &rb_jsonrpc_protocol)
            continue;
        if (l->unix_path) {
            snprintf(addr, sizeof(addr), "unix:%s", l->unix_path);
            if (setenv("rpc_unixsocket", l->unix_path, 1) < 0)
                return rb_error_set(err, errno, "cannot set $rpc_unixsocket");
        } else if (l->host) {
            snprintf(addr, sizeof(addr),
                     strchr(l->host, ':') ? "tcp:[%s]:%u" : "tcp:%s:%u", l->host,
                     l->port);
        } else {
            snprintf(addr, sizeof(addr), "%s", l->addr);
        }
        if (setenv("rpc", addr, 1) < 0)
            return rb_error_set(err, errno, "cannot set $rpc");
        return 0;
    }
    return 0;
}
