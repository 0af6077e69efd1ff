/* SPDX-License-Identifier: MIT */
/*
 * backend.c - the JSON-RPC methods' backend over server/core/export.h:
 * the same open image, the same locks and write path as NBD, counted as
 * JSON-RPC in the statistics.  Also the protocol entry point.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/export.h"
#include "core/tls.h"
#include "jsonrpc/jsonrpc.h"
#include "rblock/qcow2.h"

/* The opaque of every operation: the connection, and for a call on an
 * export (acquire), that export. */
#define ctx rb_rpc_ctx

static struct rb_export *ex(void *o)
{
    return ((struct ctx *)o)->e;
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

/* Keys as qemu-img's JSON: dashed.  Connections are the server's (every
 * export's), requests and bytes the export's. */
static json_t *be_stats(void *o, struct rb_error *err)
{
    struct rb_export *e = ex(o), *srv_e = ((struct ctx *)o)->c->srv->export;
    json_t *protos = json_object();

    for (int p = 0; protos && p < RB_PROTO_COUNT; p++) {
        struct rb_proto_stats s, conns;
        rb_export_stats(e, (enum rb_proto_id)p, &s);
        rb_export_stats(srv_e ? srv_e : e, (enum rb_proto_id)p, &conns);
        json_t *j = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "connections-total",
                              (json_int_t)conns.connections_total, "connections-now",
                              (json_int_t)conns.connections_now, "connections-closing",
                              (json_int_t)conns.connections_closing, "requests",
                              (json_int_t)s.requests, "errors", (json_int_t)s.errors,
                              "bytes-read", (json_int_t)s.bytes_read, "bytes-written",
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
    return json_pack("{s:I, s:{s:s, s:s, s:I, s:b}, s:o}", "uptime-ms",
                     (json_int_t)(rb_export_uptime(srv_e ? srv_e : e) * 1000), "export",
                     "name", rb_export_name(e), "format", rb_export_format(e), "size",
                     (json_int_t)rb_export_size(e), "read-only", rb_export_read_only(e),
                     "protocols", protos);
}

/* ---- the exports ---------------------------------------------------------- */

static void *be_acquire(void *o, const char *name, struct rb_error *err)
{
    struct ctx *base = o, *h;
    struct rb_export *e;

    e = rb_exports_get(base->c->srv->exports, name ? name : "", name ? strlen(name) : 0,
                       NULL);
    if (!e) {
        if (name && *name)
            rb_error_set(err, ENOENT, "no export named '%.200s'", name);
        else
            rb_error_set(err, ENOENT, "no default export (name one with \"export\")");
        return NULL;
    }
    h = malloc(sizeof(*h));
    if (!h) {
        rb_exports_put(base->c->srv->exports, e, NULL);
        rb_error_set(err, ENOMEM, "out of memory");
        return NULL;
    }
    h->c = base->c;
    h->e = e;
    return h;
}

static void be_release(void *o, void *handle)
{
    struct ctx *h = handle;

    rb_exports_put(h->c->srv->exports, h->e, NULL);
    free(h);
}

static json_t *be_export_list(void *o, struct rb_error *err)
{
    struct ctx *base = o;
    struct rb_export_name *v;
    long n = rb_exports_names(base->c->srv->exports, &v);
    json_t *arr = n >= 0 ? json_array() : NULL;

    for (long i = 0; arr && i < n; i++) {
        json_t *j = json_pack("{s:s, s:b}", "name", v[i].name, "default", v[i].is_default);
        if (j && v[i].description)
            json_object_set_new(j, "description", json_string(v[i].description));
        if (!j || json_array_append_new(arr, j) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    if (n >= 0)
        rb_exports_names_free(v, n);
    if (!arr)
        rb_error_set(err, ENOMEM, "out of memory");
    return arr;
}

static int be_export_add(void *o, const struct rb_rpc_export_spec *spec,
                         struct rb_error *err)
{
    struct ctx *base = o;
    struct rb_export_config cfg = {
        .path = spec->image,
        .format = spec->format,
        .read_only = spec->read_only,
        .name = spec->name,
        .description = spec->description,
        .bitmaps = spec->bitmaps,
        .nb_bitmaps = spec->nb_bitmaps,
    };

    return rb_exports_add(base->c->srv->exports, &cfg, false, err) ? 0
           : err && err->code                                       ? -err->code
                                                                    : -EIO;
}

static int be_export_remove(void *o, const char *name, bool hard, struct rb_error *err)
{
    struct ctx *base = o;

    return rb_exports_remove(base->c->srv->exports, name, hard, err);
}

static json_t *be_export_info(void *handle, struct rb_error *err)
{
    struct rb_export *e = ex(handle);
    unsigned caps = rb_export_caps(e);
    json_t *bm = json_array();
    json_t *o;

    for (size_t i = 0; bm && i < rb_export_nb_bitmaps(e); i++)
        if (json_array_append_new(bm, json_string(rb_export_bitmap(e, i))) != 0) {
            json_decref(bm);
            bm = NULL;
        }
    o = bm ? json_pack("{s:s, s:s, s:s, s:I, s:b, s:b, s:b, s:I, s:o}", "name",
                       rb_export_name(e), "image", rb_export_path(e), "format",
                       rb_export_format(e), "size", (json_int_t)rb_export_size(e),
                       "read-only", rb_export_read_only(e), "can-trim",
                       (caps & RB_EXPORT_CAN_TRIM) != 0, "can-zero",
                       (caps & RB_EXPORT_CAN_ZERO) != 0, "cluster-size",
                       (json_int_t)rb_export_cluster_bytes(e), "bitmaps", bm)
           : NULL;
    if (o && rb_export_description(e))
        json_object_set_new(o, "description", json_string(rb_export_description(e)));
    if (!o)
        rb_error_set(err, ENOMEM, "out of memory");
    return o;
}

static int be_bitmap(void *handle, const char *name, const struct rb_qcow2_bitmap_op *op,
                     struct rb_error *err)
{
    struct rb_export *e = ex(handle);
    struct rb_image *img = rb_export_image(e);

    if (!rb_qcow2_is(img))
        return rb_error_set(err, ENOTSUP, "%s: format '%s' does not support bitmaps",
                            rb_export_path(e), rb_export_format(e));
    if (rb_export_read_only(e))
        return rb_error_set(err, EROFS, "export '%s' is served read-only",
                            rb_export_name(e));
    /* A bitmap served as an NBD context is in use: keep it as it is. */
    if (op->kind != RB_QCOW2_BITMAP_ADD)
        for (size_t i = 0; i < rb_export_nb_bitmaps(e); i++)
            if (strcmp(rb_export_bitmap(e, i), name) == 0)
                return rb_error_set(err, EBUSY, "bitmap '%s' is served to NBD clients",
                                    name);
    return rb_qcow2_bitmap_apply(img, name, op, 1, err);
}

/* Like NBD's handshake: until its first real request, a connection may be
 * dropped to make room when --max-connections are open, so that idle or
 * half-open clients cannot starve real ones (server/core/conn.c). */
static void be_spoke(void *o)
{
    struct rb_conn *c = ((struct ctx *)o)->c;

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
    .acquire = be_acquire,
    .release = be_release,
    .export_list = be_export_list,
    .export_add = be_export_add,
    .export_remove = be_export_remove,
    .export_info = be_export_info,
    .bitmap = be_bitmap,
};

void rb_rpc_backend_for(struct rb_rpc_ctx *base, struct rb_conn *c, struct rb_rpc_backend *be)
{
    base->c = c;
    base->e = NULL;
    be->ops = &export_ops;
    be->opaque = base;
}

/*
 * JSON-RPC over TLS.  There is no STARTTLS: with --tls, a JSON-RPC client
 * on TCP speaks TLS from its first byte (HTTPS for HTTP).  The framing
 * works on a plain socket, so it gets one end of a socketpair, and two
 * threads carry the bytes between the other end and the TLS session (one
 * receiving, one sending: GnuTLS allows that at once on one session).
 */
struct pump {
    struct rb_conn *c;
    int fd;
};

static void *pump_in(void *arg) /* TLS -> framing */
{
    struct pump *p = arg;
    char buf[16384];

    for (;;) {
        long n = p->c->tr->recv(p->c->tr_ctx, buf, sizeof(buf));
        if (n == -EINTR || n == -EAGAIN)
            continue;
        if (n <= 0)
            break;
        for (long off = 0; off < n;) {
            ssize_t k = send(p->fd, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0)
                goto out;
            off += k;
        }
    }
out:
    shutdown(p->fd, SHUT_WR); /* the framing sees the end of stream */
    return NULL;
}

static void *pump_out(void *arg) /* framing -> TLS */
{
    struct pump *p = arg;
    char buf[65536];

    for (;;) {
        ssize_t n = recv(p->fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (rb_conn_send(p->c, buf, (size_t)n) < 0) {
            /* the client is gone: make the framing's sends fail too */
            shutdown(p->fd, SHUT_RDWR);
            break;
        }
    }
    return NULL;
}

static void serve_tls(struct rb_conn *c, const struct rb_rpc_backend *be,
                      const struct rb_rpc_limits *lim)
{
    struct pump in, out;
    pthread_t tin, tout;
    int sv[2];

    if (rb_tls_start(c, c->srv->tls) < 0)
        return;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return;
    in = (struct pump){c, sv[1]};
    out = (struct pump){c, sv[1]};
    if (pthread_create(&tin, NULL, pump_in, &in) != 0) {
        close(sv[0]);
        close(sv[1]);
        return;
    }
    if (pthread_create(&tout, NULL, pump_out, &out) != 0) {
        rb_conn_abort(c);
        pthread_join(tin, NULL);
        close(sv[0]);
        close(sv[1]);
        return;
    }
    rb_rpc_serve_fd(sv[0], be, lim);
    /* Every reply queued is sent (pump_out drains to the end of stream),
     * then the receiving side is woken by shutting the socket down. */
    shutdown(sv[0], SHUT_WR);
    pthread_join(tout, NULL);
    rb_conn_abort(c);
    pthread_join(tin, NULL);
    close(sv[0]);
    close(sv[1]);
}

static void rpc_serve(struct rb_conn *c)
{
    const struct rb_rpc_limits *conf = c->srv->proto_config[RB_PROTO_JSONRPC];
    struct rb_rpc_limits lim = conf ? *conf : (struct rb_rpc_limits){0};
    struct rb_rpc_backend be;
    struct ctx base;

    lim.log_peer = c->srv->verbose ? c->peer : NULL;
    rb_rpc_backend_for(&base, c, &be);
    /* --tls: JSON-RPC on TCP is TLS only (a unix socket, mode 0600, is
     * reachable by its owner only, and stays plain for socat). */
    if (rb_tls_mode(c->srv->tls) != RB_TLS_OFF && strcmp(c->peer, "unix") != 0) {
        serve_tls(c, &be, &lim);
        return;
    }
    rb_rpc_serve_fd(c->fd, &be, &lim);
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
