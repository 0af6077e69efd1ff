/* SPDX-License-Identifier: MIT */
/*
 * rpc.h - JSON-RPC 2.0 (jsonrpc.org/specification) on rblock's open image:
 * limits, error codes, and the backend interface the methods run over.
 *
 *   framing.c   newline-delimited JSON on a stream socket (framing.h)
 *   envelope.c  requests, batches, notifications -> response text
 *   methods.c   the method table and dispatch (methods.h, internal), with
 *               params.c (checking parameters), data.c (read, write, zeroes,
 *               trim, flush), extents.c (block_status, map), fault.c
 *               (errors and the errno mapping: every file may call it)
 *   backend.c   the backend over server/core/export.h (the shared image)
 *               and the protocol's entry point (jsonrpc.h)
 *   inspect.c   info and check, as `rblock info|check --output=json`
 *
 * The envelope and the methods never touch a socket or a global: every
 * call gets a struct rb_rpc_backend, so unit tests run them over a
 * memory disk.  server/nbd and server/jsonrpc never include each other.
 */
#ifndef RBLOCK_RPC_H
#define RBLOCK_RPC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rblock/error.h"
#include "rblock/image.h"
#include "rblock/qcow2.h"

/* ---- limits (documented in docs/jsonrpc.md) ---------------------------- */

/* Bytes of disk data in one read or write (4 MiB). */
#define RB_RPC_MAX_DATA (4u << 20)
/* Longest request line: the base64 of the largest write plus 1 MiB of
 * envelope.  A longer line is answered -32700 and skipped. */
#define RB_RPC_MAX_LINE (((RB_RPC_MAX_DATA + 2) / 3 * 4) + (1u << 20))
/* Deepest nesting of arrays and objects in a request (jansson's own cap
 * is 2048 and recursive; ours is checked first, without recursion). */
#define RB_RPC_MAX_DEPTH 32
/* Most JSON values in one line (a batch of 1024 requests needs ~20000):
 * bounds the memory of the parsed tree, whatever the line holds. */
#define RB_RPC_MAX_VALUES 65536
/* Most requests in one batch. */
#define RB_RPC_MAX_BATCH 1024
/* Most disk data one batch may read: later reads of that batch get
 * RB_RPC_TOO_LARGE, so a reply stays bounded whatever the batch. */
#define RB_RPC_MAX_BATCH_DATA (8u << 20)
/* Most extents in one block_status or map reply; the reply then covers
 * less than asked, and the client asks again from where it ends. */
#define RB_RPC_MAX_EXTENTS 16384

#define RB_RPC_STR_(x) #x
#define RB_RPC_STR(x) RB_RPC_STR_(x)

/* ---- error codes ------------------------------------------------------- */

enum {
    /* The specification's (section 5.1). */
    RB_RPC_PARSE_ERROR = -32700,
    RB_RPC_INVALID_REQUEST = -32600,
    RB_RPC_METHOD_NOT_FOUND = -32601,
    RB_RPC_INVALID_PARAMS = -32602,
    RB_RPC_INTERNAL_ERROR = -32603,
    /* Ours, in the server-error range -32000..-32099. */
    RB_RPC_IO_ERROR = -32000,      /* the image's I/O failed (EIO, ...) */
    RB_RPC_OUT_OF_RANGE = -32001,  /* offset + length past the end */
    RB_RPC_READ_ONLY = -32002,     /* write refused: served read-only */
    RB_RPC_NO_SPACE = -32003,      /* ENOSPC / EDQUOT / EFBIG on the host */
    RB_RPC_NOT_SUPPORTED = -32004, /* the image cannot do this */
    RB_RPC_TOO_LARGE = -32005,     /* the batch's reply would be too large */
    RB_RPC_SHUTTING_DOWN = -32006, /* the server is stopping */
    RB_RPC_NO_EXPORT = -32007,     /* no export by that name */
    RB_RPC_EXPORT_EXISTS = -32008, /* export_add: the name is taken */
    RB_RPC_OPEN_FAILED = -32009,   /* export_add: the image cannot be served */
    RB_RPC_BITMAP_ERROR = -32010,  /* a bitmap method was refused */
};

/* The JSON-RPC code for a negative errno from the image layer. */
int rb_rpc_code_from_errno(int neg_errno);

/* ---- the backend: the one open image and the server around it ---------- */

/* export_add's parameters (strings owned by the caller). */
struct rb_rpc_export_spec {
    const char *name;
    const char *image;
    const char *format;      /* NULL: probe */
    const char *description; /* NULL: none */
    bool read_only;
    const char *bitmaps[30];
    size_t nb_bitmaps;
};

/*
 * Every operation may be called from several connections' threads at
 * once; the backend does the locking (server/core/exports.c).  Ranges are
 * already checked against size() by the methods.  Failures return
 * -errno with @err set.  The json_t results are new references.
 */
struct rb_rpc_backend_ops {
    uint64_t (*size)(void *opaque);
    bool (*read_only)(void *opaque);
    int (*read)(void *opaque, void *buf, uint64_t off, size_t len, struct rb_error *err);
    int (*write)(void *opaque, const void *buf, uint64_t off, size_t len, unsigned flags,
                 struct rb_error *err);
    int (*write_zeroes)(void *opaque, uint64_t off, uint64_t len, unsigned flags,
                        struct rb_error *err);
    int (*trim)(void *opaque, uint64_t off, uint64_t len, struct rb_error *err);
    int (*flush)(void *opaque, struct rb_error *err);
    /* One extent at @off, at most @len long, through the chain. */
    int (*block_status)(void *opaque, uint64_t off, uint64_t len, struct rb_extent *ext,
                        struct rb_error *err);
    /* As `rblock info --output=json [--backing-chain]`. */
    json_t *(*info)(void *opaque, bool backing_chain, struct rb_error *err);
    /* Read-only consistency check of the live image. */
    json_t *(*check)(void *opaque, struct rb_error *err);
    /* Connections, requests, bytes per protocol; uptime. */
    json_t *(*stats)(void *opaque, struct rb_error *err);
    /* Optional (may be NULL: bitmaps not supported): the run at @off (at
     * most @len long) all dirty or all clean in the persistent dirty
     * bitmap @name, one of those served (`serve -B NAME`); -ENOENT when
     * @name is not served. */
    int (*bitmap_extent)(void *opaque, const char *name, uint64_t off, uint64_t len,
                         bool *dirty, uint64_t *bytes, struct rb_error *err);
    /* Optional (may be NULL: not supported): the picture of the image's
     * layout, as `rblock map --output=svg` draws it, a JSON string. */
    json_t *(*layout)(void *opaque, struct rb_error *err);
    /* Optional (may be NULL): a request named an existing method, i.e.
     * the client speaks JSON-RPC (the server stops treating it as a
     * possibly idle newcomer). */
    void (*spoke)(void *opaque);

    /*
     * Optional, the server's many exports (NULL: one image, and the
     * methods below answer -32601).  acquire() selects the export a call
     * works on (@name "" or NULL: the default) and returns the opaque
     * that every operation above then gets for that call, or NULL with
     * @err set (ENOENT: no such export); release() gives it back.
     */
    void *(*acquire)(void *opaque, const char *name, struct rb_error *err);
    void (*release)(void *opaque, void *handle);
    /* [{"name", "description"?, "default"}...] of every export. */
    json_t *(*export_list)(void *opaque, struct rb_error *err);
    /* Open and serve an image: EEXIST when the name is taken. */
    int (*export_add)(void *opaque, const struct rb_rpc_export_spec *spec,
                      struct rb_error *err);
    int (*export_remove)(void *opaque, const char *name, bool hard, struct rb_error *err);
    /* Of an acquired export (the handle): name, image, format, size... */
    json_t *(*export_info)(void *handle, struct rb_error *err);
    /* One qemu-img bitmap operation on bitmap @name of an acquired export. */
    int (*bitmap)(void *handle, const char *name, const struct rb_qcow2_bitmap_op *op,
                  struct rb_error *err);
};

struct rb_rpc_backend {
    const struct rb_rpc_backend_ops *ops;
    void *opaque;
};

/* ---- the envelope ------------------------------------------------------ */

/*
 * Handle one request line (a request or a batch, without its newline) of
 * @len bytes.  On return *out is NULL when nothing is to be sent
 * (notifications only, or a blank line), or a malloc'd response of
 * *out_len bytes ending in "\n", owned by the caller.  Returns 0, or
 * -ENOMEM when even the error response could not be built (the caller
 * drops the connection).  Never fails on what the client sent.
 */
int rb_rpc_handle(const struct rb_rpc_backend *be, const char *line, size_t len,
                  char **out, size_t *out_len);

/* ---- the methods (envelope <-> methods.c) ------------------------------ */

/* An error to send back: code, message, optional data (owned). */
struct rb_rpc_fault {
    int code;
    char msg[RB_ERROR_MSG_MAX];
    json_t *data;
};

/* Set @f (first error wins, as rb_error_set).  Returns -1. */
int rb_rpc_fault_set(struct rb_rpc_fault *f, int code, json_t *data, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* "an integer", "a string", "null"... for messages. */
const char *rb_rpc_type_name(const json_t *v);

/* What one batch may still spend; a single request gets a fresh one. */
struct rb_rpc_budget {
    uint64_t data_bytes;
};

/*
 * The fast path of `read`: its result {"data": BASE64} handed over as text,
 * so that the envelope writes it without jansson escaping it character by
 * character (half the cost of a 512-byte read).  Base64 needs no escaping.
 */
struct rb_rpc_data {
    char *text; /* malloc'd, owned by the caller once set */
    size_t len;
};

/*
 * Run method @name with @params (an object, an array, or NULL when
 * absent).  Returns 0 with *result a new reference -- or, when @data is
 * not NULL, possibly *result NULL and data->text set (see above) -- or
 * -1 with @f set (RB_RPC_METHOD_NOT_FOUND for an unknown name).
 */
int rb_rpc_call(const struct rb_rpc_backend *be, const char *name, json_t *params,
                struct rb_rpc_budget *budget, json_t **result, struct rb_rpc_data *data,
                struct rb_rpc_fault *f);

#endif
