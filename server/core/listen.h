/* SPDX-License-Identifier: MIT */
/*
 * listen.h - listening sockets, socket activation, the accept loop and
 * the captive --run mode.
 *
 * Addresses are "tcp:HOST:PORT" (HOST may be a name, an IPv4 address or
 * "[v6]"; PORT 0 picks a free port) and "unix:PATH" (created with mode
 * 0600, a stale socket is replaced, removed at exit).  Each listener
 * carries the protocol of the clients it accepts.
 */
#ifndef RBLOCK_SERVER_LISTEN_H
#define RBLOCK_SERVER_LISTEN_H

#include <stdbool.h>
#include <stddef.h>

#include "core/conn.h"
#include "rblock/error.h"

struct rb_listener {
    int fd;
    const struct rb_protocol *proto;
    char *addr;      /* as given, or "systemd:N" */
    char *unix_path; /* unix socket we created (unlinked at close) */
    char *host;      /* tcp: numeric host we bound */
    unsigned port;   /* tcp: port we bound (after PORT 0) */
};

struct rb_listeners {
    struct rb_listener *v;
    size_t n;
    char *tmpdir; /* private folder of an automatic unix socket */
};

/* Parse @addr and listen on it (one listener per address getaddrinfo
 * returns).  Returns 0 or -errno with @err set ("tcp:x:y: ..."). */
int rb_listener_add(struct rb_listeners *ls, const char *addr,
                    const struct rb_protocol *proto, struct rb_error *err);

/*
 * Adopt sockets passed by systemd socket activation (LISTEN_PID equal to
 * our pid, LISTEN_FDS = n, descriptors 3..3+n-1) for @proto, and clear
 * the variables.  Returns the number adopted (0 when not activated).
 */
int rb_listener_adopt_systemd(struct rb_listeners *ls, const struct rb_protocol *proto,
                              struct rb_error *err);

/* Listen on a unix socket in a new private temporary folder (for --run
 * without an address). */
int rb_listener_add_private_unix(struct rb_listeners *ls, const struct rb_protocol *proto,
                                 struct rb_error *err);

/* Close every listener, unlink unix sockets, remove the private folder. */
void rb_listeners_close(struct rb_listeners *ls);

/*
 * Set, for a --run command, the variables nbdkit's captive mode sets,
 * from the first listener of @proto: uri, nbd, port, unixsocket,
 * exportname.  Call before any thread starts (setenv).
 */
int rb_listeners_export_env(const struct rb_listeners *ls,
                            const struct rb_protocol *proto, const char *export_name,
                            struct rb_error *err);

/*
 * The URI a client uses to reach @l: for NBD "nbd+unix:///NAME?socket=PATH"
 * or "nbd://HOST:PORT/NAME" (PORT as bound; "nbds" with @tls), for any
 * other protocol "unix:PATH" or "http://HOST:PORT/".  Empty for a socket
 * passed by systemd.  @name is the export (percent-encoded here).
 */
void rb_listener_uri(const struct rb_listener *l, bool nbd, bool tls, const char *name,
                     char *buf, size_t cap);

/*
 * Serve until quit (quit.h): accept on every listener and start a
 * connection for each client.  When @run_cmd is set, run it with
 * /bin/sh -c first and quit when it ends.  At quit: stop accepting, let
 * connections finish their in-flight requests (socket shut for reading;
 * after a grace period, for writing too), and return.  Returns the exit
 * status for the process: the --run command's (128+signal when killed),
 * otherwise 0.  The caller then closes the export (flush).
 */
int rb_server_run(struct rb_server *srv, struct rb_listeners *ls, const char *run_cmd);

#endif
