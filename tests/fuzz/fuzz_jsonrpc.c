/* SPDX-License-Identifier: MIT */
/*
 * fuzz_jsonrpc.c - libFuzzer target: the input is what a client sends to
 * the JSON-RPC server.  Each line goes through rb_rpc_handle, then the
 * whole input through the real protocol handler (rb_jsonrpc_protocol.serve:
 * framing, envelope, methods, the backend over server/core/exports.c) on
 * one end of a socketpair, with a small line cap, over a 64 KiB export in a
 * memfd; a thread writes the input and closes, a long-lived thread drains the
 * replies.  The input's first byte is the harness's: bit 0 serves
 * read-only, bit 1 a qcow2 image (else raw).
 */
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>

/* 64 KiB, not the 1 MiB of fuzz_nbd: a valid read's reply is its data in
 * base64, and late in a long run inputs that read the whole export came to
 * dominate (under perf: base64 23%, page faults of the big buffers 15%,
 * inputs per second halved), time spent on no parser.  Every method
 * still reaches data, holes, the end of the export and past it. */
#define FUZZ_EXPORT_BYTES (64u << 10)
#define FUZZ_WANT_EXPORT
#define FUZZ_WANT_FEED
#include "fuzz_common.h"
#include "jsonrpc/framing.h"
#include "jsonrpc/jsonrpc.h"
#include "jsonrpc/rpc.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rb_export_config cfg = {.name = "fuzz"};
    struct rb_rpc_limits lim = {.max_line = 4096, .max_backlog = 1u << 20,
                                .send_timeout_ms = 5000};
    struct fuzz_session fs = {.srv.proto_config[RB_PROTO_JSONRPC] = &lim};
    struct rb_rpc_backend be;
    struct rb_rpc_ctx ctx;

    if (size < 1)
        return 0;
    fuzz_session_open(&fs, &cfg, &rb_jsonrpc_protocol, &data, &size);
    rb_rpc_backend_for(&ctx, fs.c, &be);

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

    /* The same bytes over a socket, as served. */
    fuzz_session_serve(&fs, data, size);
    fuzz_session_close(&fs);
    return 0;
}
