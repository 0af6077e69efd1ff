/* SPDX-License-Identifier: MIT */
/*
 * tls.h - TLS for server connections (GnuTLS), as NBD's STARTTLS uses it.
 *
 * cmd/serve.c loads the credentials once at start-up (rb_tls_new: X.509
 * from a qemu/nbdkit-style folder, or a psktool key file) and hangs them
 * on srv->tls.  A protocol that agrees to TLS calls rb_tls_start on its
 * connection's own thread: the TLS handshake runs on the socket (within
 * the connection's handshake deadline), and from then on rb_conn_recv /
 * rb_conn_sendv go through the TLS session (rb_conn_set_transport).  The
 * session is freed with the connection.  A failed handshake concerns that
 * connection only.
 */
#ifndef RBLOCK_SERVER_TLS_H
#define RBLOCK_SERVER_TLS_H

#include <stdbool.h>

#include "rblock/error.h"

struct rb_conn;

enum rb_tls_mode {
    RB_TLS_OFF,     /* STARTTLS refused (NBD_REP_ERR_POLICY) */
    RB_TLS_ON,      /* STARTTLS offered, plaintext allowed */
    RB_TLS_REQUIRE, /* nothing but STARTTLS and ABORT before TLS */
};

struct rb_tls_config {
    enum rb_tls_mode mode;
    const char *cert_dir; /* ca-cert.pem, server-cert.pem, server-key.pem */
    const char *psk_file; /* psktool's "username:hexkey" lines */
    bool verify_peer;     /* require a client certificate signed by the CA */
};

struct rb_tls;

/* True when this build has TLS (GnuTLS). */
bool rb_tls_available(void);

/*
 * Load credentials for @cfg (exactly one of cert_dir and psk_file; mode
 * not OFF).  Returns an owned struct rb_tls, or NULL with @err set (a
 * missing or unreadable file, a bad certificate or key, a key that does
 * not match its certificate, a PSK file without a usable key, a build
 * without GnuTLS).
 */
struct rb_tls *rb_tls_new(const struct rb_tls_config *cfg, struct rb_error *err);
void rb_tls_free(struct rb_tls *tls);

/* The mode of @tls; RB_TLS_OFF for NULL. */
enum rb_tls_mode rb_tls_mode(const struct rb_tls *tls);

/*
 * Run the TLS handshake as the server on @c's socket, then switch @c's
 * transport to the session.  Call on the connection's thread, while no
 * other thread uses @c, with nothing left unread from the plain stream.
 * Honours @c's handshake deadline.  Returns 0, or -errno (the connection
 * is to be closed; a one-line reason goes to stderr).
 */
int rb_tls_start(struct rb_conn *c, struct rb_tls *tls);

#endif
