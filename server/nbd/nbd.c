/* SPDX-License-Identifier: MIT */
/* nbd.c - the NBD protocol as seen by server/core. */
#include "nbd/nbd.h"

static void nbd_serve(struct rb_conn *c)
{
    struct nbd_session s;

    if (nbd_handshake(c, &s) != 0)
        return;
    rb_conn_handshake_done(c);
    nbd_transmission(c, &s);
}

const struct rb_protocol rb_nbd_protocol = {
    .name = "nbd",
    .id = RB_PROTO_NBD,
    .handshake_deadline = true,
    .serve = nbd_serve,
};
