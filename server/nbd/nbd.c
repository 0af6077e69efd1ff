/* SPDX-License-Identifier: MIT */
/* nbd.c - the NBD protocol as seen by server/core. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "nbd/nbd.h"

static void nbd_serve(struct rb_conn *c)
{
    struct nbd_session s;

    /* the handshake ends with rb_conn_handshake_done (before its last reply) */
    int ret = nbd_handshake(c, &s);

    if (ret == 0)
        nbd_transmission(c, &s);
    else if (c->srv->verbose && ret != -ECONNRESET) /* -v: why it ended */
        fprintf(stderr, "rblock: nbd %s: handshake failed: %s\n", c->peer,
                ret == -ENOENT ? "unknown export" : strerror(-ret));
    rb_exports_put(c->srv->exports, s.export, c);
}

const struct rb_protocol rb_nbd_protocol = {
    .name = "nbd",
    .id = RB_PROTO_NBD,
    .handshake_deadline = true,
    .serve = nbd_serve,
};
