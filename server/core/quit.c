/* SPDX-License-Identifier: MIT */
/*
 * quit.c - SIGINT/SIGTERM and programmatic stop requests, as one flag and
 * a self-pipe that poll() can wait on.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "core/quit.h"

static int quit_pipe[2] = {-1, -1};
static atomic_bool quit_flag;

static void on_signal(int sig)
{
    (void)sig;
    rb_quit_request();
}

int rb_quit_init(void)
{
    struct sigaction sa;

    if (pipe2(quit_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    return 0;
}

void rb_quit_request(void)
{
    int saved = errno;
    ssize_t r = 0;

    atomic_store(&quit_flag, true);
    if (quit_pipe[1] >= 0)
        r = write(quit_pipe[1], "q", 1); /* full pipe: already readable */
    (void)r;
    errno = saved;
}

bool rb_quit_requested(void)
{
    return atomic_load(&quit_flag);
}

int rb_quit_fd(void)
{
    return quit_pipe[0];
}

void rb_quit_fini(void)
{
    int r = quit_pipe[0], w = quit_pipe[1];

    quit_pipe[0] = quit_pipe[1] = -1;
    if (r >= 0)
        close(r);
    if (w >= 0)
        close(w);
}
