/* SPDX-License-Identifier: MIT */
/*
 * test_jsonrpc_framing.c - line framing on buffers, and the connection
 * loop over a socketpair: long lines skipped, replies in order, a final
 * line without newline, a client that never reads its replies.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "jsonrpc/framing.h"
#include "jsonrpc_memdisk.h"

/* Feed @s into @in as if read from a socket, in pieces of @step bytes. */
static void feed(struct rb_rpc_in *in, const char *s, size_t len, size_t step)
{
    while (len) {
        char *p;
        size_t room;
        assert_int_equal(rb_rpc_in_space(in, &p, &room), 0);
        assert_true(room >= 1);
        size_t n = len < step ? len : step;
        if (n > room)
            n = room;
        memcpy(p, s, n);
        rb_rpc_in_added(in, n);
        s += n;
        len -= n;
    }
}

static void test_lines(void **state)
{
    struct rb_rpc_in in;
    const char *line;
    size_t len;

    for (size_t step = 1; step <= 40; step += 13) {
        rb_rpc_in_init(&in, 100);
        const char *txt = "one\ntwo\r\n\nthree";
        feed(&in, txt, strlen(txt), step);
        assert_int_equal(rb_rpc_in_next(&in, &line, &len), RB_RPC_IN_LINE);
        assert_int_equal(len, 3);
        assert_memory_equal(line, "one", 3);
        assert_int_equal(rb_rpc_in_next(&in, &line, &len), RB_RPC_IN_LINE);
        assert_int_equal(len, 4);
        assert_memory_equal(line, "two\r", 4);
        assert_int_equal(rb_rpc_in_next(&in, &line, &len), RB_RPC_IN_LINE);
        assert_int_equal(len, 0);
        assert_int_equal(rb_rpc_in_next(&in, &line, &len), RB_RPC_IN_NONE);
        feed(&in, "\n", 1, 1);
        assert_int_equal(rb_rpc_in_next(&in, &line, &len), RB_RPC_IN_LINE);
        assert_int_equal(len, 5);
        assert_memory_equal(line, "three", 5);
        rb_rpc_in_free(&in);
    }
}

static void test_long_lines(void **state)
{
    struct rb_rpc_in in;
    const char *line;
    size_t len;
    char *big = malloc(300000);

    memset(big, 'x', 300000);
    /* exactly at the cap: fine */
    rb_rpc_in_init(&in, 1000);
    feed(&in, big, 1000, 333);
    feed(&in, "\n", 1, 1);
    assert_int_equal(rb_rpc_in_next(&in, &line, &len), RB_RPC_IN_LINE);
    assert_int_equal(len, 1000);

    /* one over, trickling: reported once, skipped to its newline */
    feed(&in, big, 700, 700);
    assert_int_equal(rb_rpc_in_next(&in, &line, &len), RB_RPC_IN_NONE);
    feed(&in, big, 301, 301);
    assert_int_equal(rb_rpc_in_next(&in, &line, &len), RB_RPC_IN_TOO_LONG);
    for (int i = 0; i < 100; i++) { /* the rest of it never piles up */
        feed(&in, big, 3000, 3000);
        assert_int_equal(rb_rpc_in_next(&in, &line, &len), RB_RPC_IN_NONE);
        assert_true(in.cap <= 1000 + RB_RPC_READ_CHUNK);
    }
    feed(&in, "xx\nok\n", 6, 6);
    assert_int_equal(rb_rpc_in_next(&in, &line, &len), RB_RPC_IN_LINE);
    assert_int_equal(len, 2);
    assert_memory_equal(line, "ok", 2);

    /* over the cap but whole in one read, followed by a good line */
    memcpy(big + 5000, "\n{}\n", 4);
    feed(&in, big, 5004, 100000);
    assert_int_equal(rb_rpc_in_next(&in, &line, &len), RB_RPC_IN_TOO_LONG);
    assert_int_equal(rb_rpc_in_next(&in, &line, &len), RB_RPC_IN_LINE);
    assert_int_equal(len, 2);
    assert_int_equal(rb_rpc_in_next(&in, &line, &len), RB_RPC_IN_NONE);
    rb_rpc_in_free(&in);
    free(big);
}

static void test_out(void **state)
{
    struct rb_rpc_out out;
    char chunk[1000];

    memset(chunk, 'a', sizeof(chunk));
    rb_rpc_out_init(&out);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(rb_rpc_out_append(&out, chunk, sizeof(chunk)), 0);
    assert_int_equal(rb_rpc_out_pending(&out), 1000000);
    rb_rpc_out_consumed(&out, 999999);
    assert_int_equal(rb_rpc_out_pending(&out), 1);
    assert_int_equal(rb_rpc_out_append(&out, "bc", 2), 0);
    assert_memory_equal(rb_rpc_out_data(&out), "abc", 3);
    rb_rpc_out_consumed(&out, 3);
    assert_int_equal(rb_rpc_out_pending(&out), 0);
    assert_null(out.buf); /* a big buffer is given back once drained */
    rb_rpc_out_free(&out);
}

/* ---- the loop over a socketpair ---------------------------------------- */

struct server {
    pthread_t tid;
    int fd;
    struct rb_rpc_limits lim;
    enum rb_rpc_end end;
};

static void *server_thread(void *arg)
{
    struct server *s = arg;

    s->end = rb_rpc_serve_fd(s->fd, &be, &s->lim);
    close(s->fd);
    return NULL;
}

static int start(struct server *s, const struct rb_rpc_limits *lim)
{
    int sv[2];

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    s->fd = sv[1];
    s->lim = *lim;
    assert_int_equal(pthread_create(&s->tid, NULL, server_thread, s), 0);
    return sv[0];
}

static void send_all(int fd, const char *s, size_t len)
{
    while (len) {
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
        assert_true(n > 0);
        s += n;
        len -= (size_t)n;
    }
}

/* Read one reply line (malloc'd, without "\n"), NULL at EOF. */
static char *read_line(int fd)
{
    size_t cap = 256, len = 0;
    char *buf = malloc(cap);

    for (;;) {
        char c;
        ssize_t n = recv(fd, &c, 1, 0);
        if (n <= 0) {
            free(buf);
            return NULL;
        }
        if (c == '\n')
            break;
        if (len + 2 > cap)
            buf = realloc(buf, cap *= 2);
        buf[len++] = c;
    }
    buf[len] = 0;
    return buf;
}

static void test_serve_lines(void **state)
{
    struct rb_rpc_limits lim = {.max_line = 4096};
    struct server s;
    int fd = start(&s, &lim);
    char *r;

    /* two requests in one write, one notification, a blank line */
    const char *reqs = "{\"method\":\"get_version\",\"id\":1}\n\n"
                       "{\"method\":\"flush\"}\n"
                       "{\"method\":\"get_version\",\"id\":2}\n";
    send_all(fd, reqs, strlen(reqs));
    r = read_line(fd);
    assert_non_null(strstr(r, "\"id\":1}"));
    free(r);
    r = read_line(fd);
    assert_non_null(strstr(r, "\"id\":2}"));
    free(r);

    /* a line over the cap: one -32700, then the connection goes on */
    char *big = malloc(10000);
    memset(big, ' ', 10000);
    send_all(fd, big, 10000);
    send_all(fd, "\n", 1);
    free(big);
    r = read_line(fd);
    assert_non_null(strstr(r, "\"code\":-32700"));
    assert_non_null(strstr(r, "line longer than 4096 bytes"));
    free(r);

    /* garbage with NUL bytes */
    send_all(fd, "\0\0\xff{]\n", 6);
    r = read_line(fd);
    assert_non_null(strstr(r, "\"code\":-32700"));
    free(r);

    /* the last line needs no newline */
    const char *last = "{\"method\":\"get_version\",\"id\":3}";
    send_all(fd, last, strlen(last));
    shutdown(fd, SHUT_WR);
    r = read_line(fd);
    assert_non_null(strstr(r, "\"id\":3}"));
    free(r);
    assert_null(read_line(fd)); /* then the server ends */
    pthread_join(s.tid, NULL);
    assert_int_equal(s.end, RB_RPC_END_EOF);
    close(fd);
}

static void test_serve_backlog(void **state)
{
    struct rb_rpc_limits lim = {.max_backlog = 1 << 20};
    struct server s;
    int fd = start(&s, &lim);
    const char *req = "{\"method\":\"read\",\"params\":{\"offset\":0,\"length\":1048576},"
                      "\"id\":1}\n";

    /* never read: the server must give up on us, not grow without bound */
    for (int i = 0; i < 10000; i++) {
        ssize_t n = send(fd, req, strlen(req), MSG_NOSIGNAL);
        if (n < 0)
            break; /* EPIPE / ECONNRESET: dropped */
    }
    pthread_join(s.tid, NULL);
    assert_int_equal(s.end, RB_RPC_END_BACKLOG);
    close(fd);
}

static void test_serve_send_timeout(void **state)
{
    struct rb_rpc_limits lim = {.send_timeout_ms = 200};
    struct server s;
    int fd = start(&s, &lim);
    const char *req = "{\"method\":\"read\",\"params\":{\"offset\":0,\"length\":4194304},"
                      "\"id\":1}\n";

    /* one big reply that we never read, and no more requests */
    send_all(fd, req, strlen(req));
    pthread_join(s.tid, NULL);
    assert_int_equal(s.end, RB_RPC_END_TIMEOUT);
    close(fd);
}

/* Which streams are taken for HTTP: an RFC 9110 method and a space. */
static void test_sniff_http(void **state)
{
    (void)state;
    assert_int_equal(rb_rpc_sniff_http("POST / HTTP/1.1\r\n", 17), 1);
    assert_int_equal(rb_rpc_sniff_http("GET ", 4), 1);
    assert_int_equal(rb_rpc_sniff_http("DELETE /x", 9), 1);
    assert_int_equal(rb_rpc_sniff_http("PO", 2), -1); /* not yet known */
    assert_int_equal(rb_rpc_sniff_http("POST", 4), -1);
    assert_int_equal(rb_rpc_sniff_http("POST\r\n", 6), 0);
    assert_int_equal(rb_rpc_sniff_http("GETX ", 5), 0);
    assert_int_equal(rb_rpc_sniff_http("{\"method\"", 9), 0);
    assert_int_equal(rb_rpc_sniff_http("[", 1), 0);
    assert_int_equal(rb_rpc_sniff_http(" POST ", 6), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sniff_http),
        cmocka_unit_test(test_lines),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_out),
        cmocka_unit_test_setup_teardown(test_serve_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_serve_backlog, setup, teardown),
        cmocka_unit_test_setup_teardown(test_serve_send_timeout, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
