/* SPDX-License-Identifier: MIT */
/*
 * jsonrpc.h - JSON-RPC 2.0 as a server/core protocol (what cmd/serve.c
 * needs).  See docs/jsonrpc.md for the methods and error codes.
 *
 * Settings: srv->proto_config[RB_PROTO_JSONRPC] may point to a struct
 * rb_rpc_limits (framing.h); NULL means the defaults.
 */
#ifndef RBLOCK_JSONRPC_H
#define RBLOCK_JSONRPC_H

#include "core/conn.h"
#include "core/listen.h"
#include "jsonrpc/framing.h"

extern const struct rb_protocol rb_jsonrpc_protocol;

/* What a backend's operations get: the connection, and for a call on an
 * export, that export (set per call; NULL otherwise). */
struct rb_rpc_ctx {
    struct rb_conn *c;
    struct rb_export *e;
};

/* The backend of one connection (@ctx, owned by the caller, lives as long
 * as @be): the server's exports (srv->exports), counted under
 * RB_PROTO_JSONRPC. */
void rb_rpc_backend_for(struct rb_rpc_ctx *ctx, struct rb_conn *c, struct rb_rpc_backend *be);

/* `info` and `check` of the export's image (inspect.c), exactly as
 * `rblock info --output=json [--backing-chain]` and `rblock check
 * --output=json` print them: new references, or NULL with @err set
 * (ENOTSUP when the format has nothing to check). */
json_t *rb_rpc_info_json(struct rb_export *e, bool backing_chain, struct rb_error *err);
json_t *rb_rpc_check_json(struct rb_export *e, struct rb_error *err);
/* The SVG of `rblock map --output=svg` of the export's image, as a JSON
 * string (inspect.c). */
json_t *rb_rpc_layout_json(struct rb_export *e, struct rb_error *err);

/*
 * For --run: set $rpc to the address of the first JSON-RPC listener of
 * @ls ("unix:PATH" or "tcp:HOST:PORT", the port actually bound) and, for
 * a unix one, $rpc_unixsocket to its path.  Call before threads start
 * (setenv).  Returns 0 (nothing set when there is no such listener) or
 * -errno with @err set.
 */
int rb_rpc_export_env(const struct rb_listeners *ls, struct rb_error *err);

#endif
