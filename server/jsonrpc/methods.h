/* SPDX-License-Identifier: MIT */
/*
 * methods.h - internal to server/jsonrpc: how a method is declared and
 * called (not a public contract; see rpc.h for that).
 *
 *   methods.c  the table, dispatch, and the methods about the server
 *   params.c   parameters by name or position, checked once
 *   data.c     read, write, write_zeroes, trim, flush
 *   fault.c    faults, JSON type names, errno -> error code (a leaf)
 *   extents.c  block_status and map
 */
#ifndef RBLOCK_RPC_METHODS_H
#define RBLOCK_RPC_METHODS_H

#include "jsonrpc/rpc.h"

enum rpc_ptype { P_INT, P_BOOL, P_DATA, P_STR, P_ARRAY, P_NAME };

/* Longest P_STR accepted (a bitmap name: 1023 bytes in qcow2). */
#define RPC_MAX_STR 1023
/* P_NAME: a string of 0 to 4096 bytes without NUL (export names, where ""
 * is the default export; image paths; modes). */
#define RPC_MAX_NAME 4096

struct rpc_param {
    const char *name;
    enum rpc_ptype type;
    bool required;
};

#define RPC_MAX_PARAMS 8

/* Parsed arguments, indexed as the method's params[]. */
struct rpc_args {
    bool present[RPC_MAX_PARAMS];
    uint64_t u[RPC_MAX_PARAMS];
    bool b[RPC_MAX_PARAMS];
    const char *s[RPC_MAX_PARAMS];
    size_t s_len[RPC_MAX_PARAMS];
    json_t *j[RPC_MAX_PARAMS]; /* P_ARRAY: borrowed from the request */
};

struct rpc_call {
    const struct rb_rpc_backend *be;
    struct rb_rpc_data *data; /* NULL: no fast path */
    const struct rpc_method *m;
    struct rpc_args a;
    struct rb_rpc_budget *budget;
    struct rb_rpc_fault *f;
};

struct rpc_method {
    const char *name;
    const char *summary;
    bool writes; /* refused when the image is served read-only */
    int (*fn)(struct rpc_call *c, json_t **result);
    struct rpc_param params[RPC_MAX_PARAMS];
};

/* Largest data string accepted: the base64 of RB_RPC_MAX_DATA bytes. */
#define RPC_MAX_DATA_CHARS (((size_t)RB_RPC_MAX_DATA + 2) / 3 * 4)

/* Number of parameters @m declares. */
int rpc_nparams(const struct rpc_method *m);
/* Parse @params against c->m's declaration into c->a.  0 or -1 with c->f
 * set (-32602). */
int rpc_parse_args(struct rpc_call *c, json_t *params);
/* Set c->f to a -32602 "invalid params: ..." error.  Returns -1. */
int rpc_param_fault(struct rpc_call *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Set c->f from a backend failure (code from the errno, errno's name in
 * data).  Returns -1. */
int rpc_io_fault(struct rpc_call *c, int ret, const struct rb_error *err);
/* 0 when [off, off + len) lies in the image, else -1 with c->f set
 * (-32001, offset/length/size in data). */
int rpc_check_range(struct rpc_call *c, uint64_t off, uint64_t len);

/* The methods of data.c and extents.c (the table is in methods.c). */
int rpc_m_read(struct rpc_call *c, json_t **result);
int rpc_m_write(struct rpc_call *c, json_t **result);
int rpc_m_write_zeroes(struct rpc_call *c, json_t **result);
int rpc_m_trim(struct rpc_call *c, json_t **result);
int rpc_m_flush(struct rpc_call *c, json_t **result);
int rpc_m_block_status(struct rpc_call *c, json_t **result);
int rpc_m_map(struct rpc_call *c, json_t **result);
/* control.c: the exports and their bitmaps */
int rpc_m_export_list(struct rpc_call *c, json_t **result);
int rpc_m_export_add(struct rpc_call *c, json_t **result);
int rpc_m_export_remove(struct rpc_call *c, json_t **result);
int rpc_m_export_info(struct rpc_call *c, json_t **result);
int rpc_m_bitmap(struct rpc_call *c, json_t **result);
/* The index of parameter @name of c->m, or -1. */
int rpc_param_index(const struct rpc_method *m, const char *name);

#endif
