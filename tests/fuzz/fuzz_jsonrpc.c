/* SPDX-License-Identifier: MIT */
/*
 * fuzz_jsonrpc.c - libFuzzer target: the input is what a client sends to
 * the JSON-RPC server.  Each line goes through rb_rpc_handle, then the
 * whole input through the real protocol handler (rb_jsonrpc_protocol.serve:
 * framing, envelope, methods, the backend over server/core/exports.c) on
 * one end of a socketpair, with a small line cap, over a 1 MiB export in a
 * memfd; a thread writes the input and closes, a long-lived thread drains the
 * replies.  The input's first byte is the harness's: bit 0 serves
 * read-only, bit 1 a qcow2 image (else raw).
 */
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>

#define FUZZ_WANT_EXPORT
#define FUZZ_WANT_FEED
#include "fuzz_common.h"
#include "core/conn.h"
#include "core/export.h"
#include "jsonrpc/framing.h"
#include "jsonrpc/jsonrpc.h"
#include "jsonrpc/rpc.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rb_export_config cfg = {.name = "fuzz"};
    struct rb_rpc_limits lim = {.max_line = 4096, .max_backlog = 1u << 20,
                                .send_timeout_ms = 5000};
    struct rb_server srv = {0};
    struct rb_error err = {0};
    struct rb_rpc_backend be;
    struct rb_conn *c;
    pthread_t wt;
    char path[64];
    int sv[2];

    if (size < 1)
        return 0;
    cfg.read_only = data[0] & 1;
    cfg.format = data[0] & 2 ? "qcow2" : "raw";
    fuzz_export_image(data[0] & 2, path);
    data++;
    size--;
    cfg.path = path;
    fuzz_sandbox = true;
    srv.export = rb_export_open(&cfg, &err);
    if (!srv.export) {
        fprintf(stderr, "fuzz_jsonrpc: %s\n", rb_error_msg(&err, -EIO));
        abort();
    }
    srv.proto_config[RB_PROTO_JSONRPC] = &lim;
    if (rb_server_init(&srv) < 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    c = calloc(1, sizeof(*c));
    if (!c)
        abort();
    c->fd = sv[0];
    c->proto = &rb_jsonrpc_protocol;
    c->srv = &srv;
    snprintf(c->peer, sizeof(c->peer), "fuzz");
    pthread_mutex_init(&c->send_lock, NULL);
    rb_rpc_backend_for(c, &be);

    /* Each line straight through the envelope (no framing). */
    for (size_t start = 0; start < size;) {
        const uint8_t *nl = memchr(data + start, '\n', size - start);
        size_t end = nl ? (size_t)(nl - data) : size;
        char *out = NULL;
        size_t out_len = 0;

        rb_rpc_handle(&be, (const char *)data + start, end - start, &out, &out_len);
        free(out);
        start = end + 1;
    }

    /* The same bytes over a socket, as served.  What fits the socket
     * buffer goes in at once; a thread sends the rest. */
    struct feed f = {sv[1], data, size, 0};
    bool inline_write = feed_now(&f);
    if (!inline_write && pthread_create(&wt, NULL, writer, &f))
        abort();
    drain_start(sv[1]);
    c->proto->serve(c);
    shutdown(sv[0], SHUT_RDWR);
    if (!inline_write)
        pthread_join(wt, NULL);
    drain_wait();
    close(sv[0]);
    close(sv[1]);
    pthread_mutex_destroy(&c->send_lock);
    free(c);
    rb_server_destroy(&srv);
    rb_export_close(srv.export, NULL);
    fuzz_sandbox = false;
    return 0;
}
