/* SPDX-License-Identifier: MIT */
/* nbd.c - the NBD protocol as seen by server/core. */
#include "nbd/nbd.h"

static void nbd_serve(struct rb_conn *c)
{
    struct nbd_session s;

    /* the handshake ends with rb_conn_handshake_done (before its last reply) */
    if (nbd_handshake(c, &s) == 0)
        nbd_transmission(c, &s);
    rb_exports_put(c->srv->exports, s.export, c);
}

const struct rb_protocol rb_nbd_protocol = {
    .name = "nbd",
    .id = RB_PROTO_NBD,
    .handshake_deadline = true,
    .serve = nbd_serve,
};
