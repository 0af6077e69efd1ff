/* SPDX-License-Identifier: MIT */
/*
 * quit.h - the server's one "time to stop" flag.
 *
 * SIGINT and SIGTERM (after rb_quit_init), the end of a --run command, or
 * any thread calling rb_quit_request set it.  The accept loop polls
 * rb_quit_fd(); long-running loops may test rb_quit_requested().  Clean
 * shutdown itself (in-flight requests finish, flush, close) is done by
 * rb_server_run (listen.h) once it sees the flag.
 */
#ifndef RBLOCK_SERVER_QUIT_H
#define RBLOCK_SERVER_QUIT_H

#include <stdbool.h>

/* Create the self-pipe and install the signal handlers (SIGINT, SIGTERM;
 * SIGPIPE ignored).  Call once, before starting threads.  0 or -errno. */
int rb_quit_init(void);
/* Ask the server to stop.  Async-signal-safe and thread-safe. */
void rb_quit_request(void);
bool rb_quit_requested(void);
/* A descriptor that becomes readable once quit is requested. */
int rb_quit_fd(void);
/* Close the self-pipe (at exit).  Signal handlers stay installed. */
void rb_quit_fini(void);

#endif
