/* SPDX-License-Identifier: MIT */
/*
 * nbd.h - the NBD protocol (fixed newstyle handshake, then transmission)
 * as a server/core protocol.  See docs/nbd.md.
 *
 *   handshake.c     option haggling: EXPORT_NAME, ABORT, LIST, INFO, GO,
 *                   STRUCTURED_REPLY, LIST/SET_META_CONTEXT
 *   transmission.c  requests: a reader per connection, a small pool of
 *                   workers, replies out of order under the send lock
 *   meta.c          the metadata contexts, one table row each
 *   errno.c         errno -> NBD error values
 */
#ifndef RBLOCK_NBD_H
#define RBLOCK_NBD_H

#include <stdbool.h>
#include <stdint.h>

#include "core/conn.h"
#include "nbd/meta.h"

extern const struct rb_protocol rb_nbd_protocol;

/* What the handshake agreed, used by the transmission phase. */
struct nbd_session {
    bool fixed_newstyle;
    bool no_zeroes;
    bool tls;        /* NBD_OPT_STARTTLS done: the stream is TLS */
    bool structured; /* NBD_OPT_STRUCTURED_REPLY acknowledged */
    nbd_meta_set meta; /* the metadata contexts selected (meta.h) */
    const void *meta_export; /* the export @meta was selected for (identity) */
    uint16_t tflags; /* transmission flags sent */
    /* The export chosen by GO / EXPORT_NAME, with a use taken for this
     * connection (rb_exports_get): given back when the connection ends. */
    struct rb_export *export;
    /* Largest READ / WRITE accepted: NBD_MAX_REQUEST_BYTES when the client
     * asked for block sizes (it was told so), else up to
     * NBD_MAX_UNNEGOTIATED_BYTES (what clients that never ask send). */
    uint32_t max_request_bytes;
};

/* Run the handshake on @c.  Returns 0 when the client entered
 * transmission, or -errno when the connection is to be closed (the client
 * aborted, broke the protocol, or the deadline passed). */
int nbd_handshake(struct rb_conn *c, struct nbd_session *s);

/* Serve requests until the client disconnects or the socket is shut
 * down; returns after every in-flight request has been answered. */
void nbd_transmission(struct rb_conn *c, const struct nbd_session *s);

/* NBD error value (NBD_EIO...) for a negative errno. */
uint32_t nbd_errno(int neg_errno);

#endif
