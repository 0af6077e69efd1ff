/* SPDX-License-Identifier: MIT */
/*
 * web.c - the built-in page (web.h): one table row per asset, matched
 * byte for byte against the request target.  Nothing is decoded or
 * normalised, so no spelling of a path can reach another asset, let alone
 * a file.
 */
#include <string.h>

#include "web/web.h"
#include "web_assets.h" /* scripts/embed, from server/web/index.html */

/* The page runs its own inline script and style and talks to this origin
 * only; it loads nothing from anywhere else and may not be framed. */
#define PAGE_HEADERS                                                                    \
    "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "         \
    "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "                   \
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'\r\n"                   \
    "X-Content-Type-Options: nosniff\r\n"                                                \
    "Cache-Control: no-store\r\n"                                                        \
    "Referrer-Policy: no-referrer\r\n"

static const struct {
    const char *target;
    struct rb_web_asset asset;
} assets[] = {
    {"/",
     {"text/html; charset=utf-8", PAGE_HEADERS, rb_web_index_html, RB_WEB_INDEX_HTML_LEN}},
};

const struct rb_web_asset *rb_web_page(const char *path, size_t path_len)
{
    if (!path)
        return NULL;
    for (size_t i = 0; i < sizeof(assets) / sizeof(assets[0]); i++) {
        size_t n = strlen(assets[i].target);

        if (path_len == n && memcmp(path, assets[i].target, n) == 0)
            return &assets[i].asset;
    }
    return NULL;
}
