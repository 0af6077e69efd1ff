/* SPDX-License-Identifier: MIT */
/*
 * The built-in page (server/web/web.c): "/" and nothing else, whatever
 * the spelling; the page's bytes are server/web/index.html's; the page
 * calls the read-only methods only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "web/web.h"

static void test_root(void **state)
{
    const struct rb_web_asset *a = rb_web_page("/", 1);

    (void)state;
    assert_non_null(a);
    assert_string_equal(a->content_type, "text/html; charset=utf-8");
    assert_true(a->len > 1000);
    assert_memory_equal(a->body, "<!DOCTYPE html>", 15);
    assert_int_equal(a->body[a->len], 0);
    assert_int_equal(strlen((const char *)a->body), a->len);
    assert_non_null(strstr(a->headers, "Content-Security-Policy: default-src 'none';"));
    assert_non_null(strstr(a->headers, "connect-src 'self'"));
    assert_non_null(strstr(a->headers, "X-Content-Type-Options: nosniff\r\n"));
    /* header lines end in CRLF, never a bare LF or CR */
    for (const char *p = a->headers; *p; p++) {
        if (*p == '\n')
            assert_true(p > a->headers && p[-1] == '\r');
        if (*p == '\r')
            assert_int_equal(p[1], '\n');
    }
    assert_true(a->headers[strlen(a->headers) - 1] == '\n');
    /* the same bytes as the file in the source tree */
    FILE *f = fopen(SRCDIR "/server/web/index.html", "rb");
    assert_non_null(f);
    char *file = malloc(a->len + 2);
    assert_int_equal(fread(file, 1, a->len + 1, f), a->len);
    assert_memory_equal(file, a->body, a->len);
    free(file);
    fclose(f);
}

/* Read-only: every JSON-RPC method the page names is one that changes
 * nothing; no markup is built from text; nothing is loaded from elsewhere. */
static void test_page_reads_only(void **state)
{
    const struct rb_web_asset *a = rb_web_page("/", 1);
    /* POST: fetch's HTTP method (JSON-RPC rides on POST /) */
    const char *ok[] = {"export_list", "stats", "layout", "POST"};
    const char *p = (const char *)a->body;
    int seen = 0;

    (void)state;
    while ((p = strstr(p, "method: \"")) != NULL) {
        bool allowed = false;
        p += strlen("method: \"");
        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
            if (strncmp(p, ok[i], strlen(ok[i])) == 0 && p[strlen(ok[i])] == '"')
                allowed = true;
        if (!allowed)
            fail_msg("the page calls %.20s", p);
        seen++;
    }
    assert_int_equal(seen, 4);
    assert_null(strstr((const char *)a->body, "innerHTML"));
    assert_null(strstr((const char *)a->body, "http://"));
    assert_null(strstr((const char *)a->body, "https://"));
}

static void test_anything_else(void **state)
{
    static const char *const bad[] = {
        "", "/index.html", "/../../etc/passwd", "/..", "//", "/./", "/%2e%2e/%2e%2e/etc/passwd",
        "/?", "/?x=1", "/#", "http://127.0.0.1/", "*", "/ ", " /", "\\", "/\\..\\..\\etc\\passwd",
        "/favicon.ico", "/etc/passwd", "%2f", "/index.html/../", "/web/index.html",
    };
    char *huge;

    (void)state;
    assert_null(rb_web_page(NULL, 1));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (rb_web_page(bad[i], strlen(bad[i])))
            fail_msg("'%s' has an asset", bad[i]);
    /* a NUL after the "/" is part of the target, not its end */
    assert_null(rb_web_page("/\0/../etc/passwd", 16));
    assert_null(rb_web_page("/\0", 2));
    /* the length counts, not a NUL: a longer buffer starting with "/" */
    assert_null(rb_web_page("/etc", 4));
    assert_non_null(rb_web_page("/etc", 1));
    huge = malloc(1 << 20);
    memset(huge, '/', 1 << 20);
    assert_null(rb_web_page(huge, 1 << 20));
    free(huge);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_root),
        cmocka_unit_test(test_page_reads_only),
        cmocka_unit_test(test_anything_else),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
