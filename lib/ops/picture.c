/* SPDX-License-Identifier: MIT */
/*
 * picture.c - the layout of an image drawn as SVG (picture.h): the guest
 * view from the chain's block status (lib/ops/map.c's model, as `rblock
 * map` prints it), the host view from lib/qcow2/layout.c, the figures
 * from the same walk as `rblock check`.  Everything is folded into
 * columns first; the document is written from the columns only, into
 * memory (the library never prints).
 */
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rblock/ops.h"
#include "rblock/picture.h"
#include "rblock/qcow2.h"

/* ---- geometry (px) ------------------------------------------------------ */

#define X0 20          /* left edge of the bands */
#define WIDTH 1000     /* width of a band */
#define BAND_H 48      /* height of a band */
#define MARK_H 5       /* strips under the guest band */
#define MAX_LAYERS 64  /* deeper layers share the last color */

/* ---- one band: columns x classes of bytes -------------------------------- */

struct band {
    const char *id;       /* "guest", "host" */
    uint64_t span;        /* bytes drawn */
    uint64_t col_bytes;
    uint32_t cols;
    unsigned nclasses;
    uint64_t *bytes;      /* cols * nclasses */
    uint64_t *total;      /* nclasses */
    char **names;         /* nclasses, owned */
    unsigned background;  /* the class of "nothing here" */
    const char **colors;  /* nclasses */
    int y;                /* top of the band, once placed */
};

static int band_init(struct band *b, const char *id, uint64_t span, uint64_t col_bytes,
                     unsigned nclasses)
{
    *b = (struct band){.id = id, .span = span ? span : 1, .nclasses = nclasses};
    b->col_bytes = col_bytes ? col_bytes : (b->span + RB_PICTURE_COLUMNS - 1) /
                                               RB_PICTURE_COLUMNS;
    b->cols = (uint32_t)((b->span + b->col_bytes - 1) / b->col_bytes);
    b->bytes = calloc((size_t)b->cols * nclasses, sizeof(*b->bytes));
    b->total = calloc(nclasses, sizeof(*b->total));
    b->names = calloc(nclasses, sizeof(*b->names));
    b->colors = calloc(nclasses, sizeof(*b->colors));
    return b->bytes && b->total && b->names && b->colors ? 0 : -ENOMEM;
}

static void band_free(struct band *b)
{
    for (unsigned k = 0; b->names && k < b->nclasses; k++)
        free(b->names[k]);
    free(b->names);
    free(b->colors);
    free(b->bytes);
    free(b->total);
}

/* Add [off, off + len) of class @k to the columns it covers. */
static void band_add(struct band *b, uint64_t *cols, unsigned stride, unsigned k,
                     uint64_t off, uint64_t len)
{
    uint64_t end = len > b->span - off ? b->span : off + len;

    if (off >= b->span)
        return;
    while (off < end) {
        uint64_t col = off / b->col_bytes;
        uint64_t col_end = (col + 1) * b->col_bytes;
        uint64_t n = (end < col_end ? end : col_end) - off;

        cols[col * stride + k] += n;
        off += n;
    }
}

/* ---- the guest view -------------------------------------------------------- */

struct guest {
    struct band band;
    unsigned layers;       /* classes 0..layers-1: data of layer d */
    uint64_t *compressed;  /* per column */
    uint64_t *dirty;       /* per column, with a bitmap */
    uint64_t compressed_total, dirty_total;
};

static const char *const layer_colors[] = {
    "#2f6fbf", "#f28e2b", "#59a14f", "#b07aa1", "#edc948",
    "#76b7b2", "#ff9da7", "#9c755f", "#8cd17d", "#d4a6c8",
};
#define ZERO_COLOR "#bcc6cc"
#define UNALLOC_COLOR "#f4f4f4"
#define COMPRESSED_COLOR "#7b3294"
#define DIRTY_COLOR "#d62728"

static char *dupf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *dupf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

static int guest_build(struct guest *g, struct rb_image *img, const char *bitmap,
                       struct rb_error *err)
{
    struct band *b = &g->band;
    unsigned layers = rb_image_chain_length(img);
    struct rb_map_walk w;
    struct rb_map_entry e;
    int ret;

    if (layers > MAX_LAYERS)
        layers = MAX_LAYERS;
    g->layers = layers;
    if (band_init(b, "guest", img->size, 0, layers + 2) < 0)
        return rb_error_set(err, ENOMEM, "out of memory");
    g->compressed = calloc(b->cols, sizeof(uint64_t));
    g->dirty = calloc(b->cols, sizeof(uint64_t));
    if (!g->compressed || !g->dirty)
        return rb_error_set(err, ENOMEM, "out of memory");
    for (unsigned d = 0; d < layers; d++) {
        /* a backing file by the name its overlay records, as qemu-img
         * info shows it */
        struct rb_image *above = d ? rb_image_layer(img, d - 1) : NULL;
        struct rb_image *l = rb_image_layer(img, d);
        const char *name = above && above->backing_name ? above->backing_name
                           : l                          ? l->filename
                                                        : "?";
        b->names[d] = d == 0 ? dupf("this layer (%s)", name)
                             : dupf("backing %u (%s)%s", d, name,
                                    d == MAX_LAYERS - 1 ? " and deeper" : "");
        b->colors[d] = layer_colors[d % (sizeof(layer_colors) / sizeof(layer_colors[0]))];
    }
    b->names[layers] = dupf("zero");
    b->colors[layers] = ZERO_COLOR;
    b->names[layers + 1] = dupf("unallocated");
    b->background = layers + 1;
    b->colors[layers + 1] = UNALLOC_COLOR;
    for (unsigned k = 0; k < b->nclasses; k++)
        if (!b->names[k])
            return rb_error_set(err, ENOMEM, "out of memory");

    rb_map_init(&w, rb_map_image_status, img, 0, img->size);
    while ((ret = rb_map_next(&w, &e, err)) > 0) {
        unsigned k;

        if (!e.present)
            k = layers + 1;
        else if (e.zero)
            k = layers;
        else
            k = e.depth < layers ? e.depth : layers - 1;
        band_add(b, b->bytes, b->nclasses, k, e.start, e.length);
        b->total[k] += e.length;
        if (e.compressed) {
            band_add(b, g->compressed, 1, 0, e.start, e.length);
            g->compressed_total += e.length;
        }
    }
    if (ret < 0)
        return ret;
    for (uint64_t off = 0; bitmap && off < img->size;) {
        bool dirty;
        uint64_t n;

        ret = rb_image_bitmap_extent(img, bitmap, off, img->size - off, &dirty, &n, err);
        if (ret < 0)
            return ret;
        if (dirty) {
            band_add(b, g->dirty, 1, 0, off, n);
            g->dirty_total += n;
        }
        off += n;
    }
    return 0;
}

/* ---- the host view ------------------------------------------------------------ */

static const char *const host_colors[RB_QCOW2_HOST_CLASSES] = {
    [RB_QCOW2_HOST_HEADER] = "#1f3b73",
    [RB_QCOW2_HOST_REFTABLE] = "#8c564b",
    [RB_QCOW2_HOST_REFBLOCK] = "#c49c7a",
    [RB_QCOW2_HOST_L1] = "#2ca02c",
    [RB_QCOW2_HOST_L2] = "#98df8a",
    [RB_QCOW2_HOST_DATA] = "#2f6fbf",
    [RB_QCOW2_HOST_COMPRESSED] = COMPRESSED_COLOR,
    [RB_QCOW2_HOST_SNAPSHOT] = "#edc948",
    [RB_QCOW2_HOST_BITMAP_TABLES] = "#f28e2b",
    [RB_QCOW2_HOST_BITMAP_DATA] = "#ffbe7d",
    [RB_QCOW2_HOST_FREE] = "#e4e4e4",
    [RB_QCOW2_HOST_LEAKED] = "#e41a1c",
};

struct host {
    struct band band;
    bool qcow2;
    uint64_t file_bytes;
    struct rb_qcow2_layout layout; /* qcow2: columns and figures */
    uint64_t data_bytes;           /* raw: bytes holding data */
};

static int host_build(struct host *h, struct rb_image *img, struct rb_error *err)
{
    struct band *b = &h->band;
    int ret;

    h->qcow2 = rb_qcow2_is(img);
    if (h->qcow2) {
        ret = rb_qcow2_layout(img, RB_PICTURE_COLUMNS, &h->layout, err);
        if (ret < 0)
            return ret;
        h->file_bytes = h->layout.file_bytes;
        if (band_init(b, "host", h->layout.span_bytes, h->layout.column_bytes,
                      RB_QCOW2_HOST_CLASSES) < 0)
            return rb_error_set(err, ENOMEM, "out of memory");
        if (b->cols != h->layout.columns)
            return rb_error_set(err, EIO, "%s: layout of %" PRIu32 " columns, expected %"
                                PRIu32, img->filename, h->layout.columns, b->cols);
        memcpy(b->bytes, h->layout.bytes,
               (size_t)b->cols * RB_QCOW2_HOST_CLASSES * sizeof(uint64_t));
        memcpy(b->total, h->layout.total, sizeof(h->layout.total));
    } else {
        /* raw: the file is the disk, holes and all */
        struct rb_extent ext;

        h->file_bytes = img->size;
        if (band_init(b, "host", img->size, 0, RB_QCOW2_HOST_CLASSES) < 0)
            return rb_error_set(err, ENOMEM, "out of memory");
        for (uint64_t off = 0; off < img->size; off += ext.length) {
            unsigned k;

            ret = rb_image_block_status_top(img, off, img->size - off, &ext, err);
            if (ret < 0)
                return ret;
            if (ext.length == 0 || ext.length > img->size - off)
                ext.length = img->size - off;
            k = (ext.flags & RB_BS_DATA) ? RB_QCOW2_HOST_DATA : RB_QCOW2_HOST_FREE;
            band_add(b, b->bytes, b->nclasses, k, off, ext.length);
            b->total[k] += ext.length;
            if (k == RB_QCOW2_HOST_DATA)
                h->data_bytes += ext.length;
        }
    }
    b->background = RB_QCOW2_HOST_FREE;
    for (unsigned k = 0; k < RB_QCOW2_HOST_CLASSES; k++) {
        b->names[k] = dupf("%s", rb_qcow2_host_class_name(k));
        b->colors[k] = host_colors[k];
        if (!b->names[k])
            return rb_error_set(err, ENOMEM, "out of memory");
    }
    return 0;
}

/* ---- writing ----------------------------------------------------------------- */

static void put_escaped(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default:
            /* control characters are not allowed in XML 1.0 */
            fputc((unsigned char)*s < 0x20 ? '?' : *s, f);
        }
    }
}

/* JSON string for a <script> element: no "</" can close it. */
static void put_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == '<' || c == '>' || c == '&' || c == '"' || c == '\\')
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

/* "1 TiB", "1.5 GiB", "512 bytes" */
static void human(char *buf, size_t n, uint64_t v)
{
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double x = (double)v;
    int u = -1;

    if (v < 1024) {
        snprintf(buf, n, "%" PRIu64 " bytes", v);
        return;
    }
    while (x >= 1024 && u < 5) {
        x /= 1024;
        u++;
    }
    char num[24];
    size_t len;

    if (x >= 100)
        snprintf(num, sizeof(num), "%.0f", x);
    else {
        len = (size_t)snprintf(num, sizeof(num), x < 10 ? "%.2f" : "%.1f", x);
        while (len > 0 && num[len - 1] == '0')
            num[--len] = 0;
        if (len > 0 && num[len - 1] == '.')
            num[--len] = 0;
    }
    snprintf(buf, n, "%s %s", num, units[u]);
}

/* A coordinate with at most two decimals, trailing zeros dropped. */
static void put_num(FILE *f, double v)
{
    char buf[32];
    size_t n = (size_t)snprintf(buf, sizeof(buf), "%.2f", v);

    while (n > 0 && buf[n - 1] == '0')
        buf[--n] = 0;
    if (n > 0 && buf[n - 1] == '.')
        buf[--n] = 0;
    fputs(buf, f);
}

/* Pixel heights of one column's classes: each present class gets at least
 * MIN_H pixels (the background class one) so that 1 MiB of data in a
 * column of 1 GiB still shows; the rest goes by share, the largest class
 * taking the rounding. */
#define MIN_H (BAND_H / 6)

static void column_heights(const uint64_t *bytes, unsigned n, unsigned background,
                           int height, int *h)
{
    uint64_t total = 0;
    int sum = 0, largest = -1;

    for (unsigned k = 0; k < n; k++)
        total += bytes[k];
    for (unsigned k = 0; k < n; k++) {
        int min = k == background ? 1 : MIN_H;

        h[k] = 0;
        if (!bytes[k])
            continue;
        h[k] = (int)((double)bytes[k] * height / (double)total + 0.5);
        if (h[k] < min)
            h[k] = min;
        sum += h[k];
        if (largest < 0 || bytes[k] > bytes[largest])
            largest = (int)k;
    }
    if (largest < 0)
        return;
    h[largest] += height - sum;
    /* the minimums may have taken more than the largest had: take back
     * from the tallest others, one pixel at a time */
    while (h[largest] < 1) {
        int tallest = -1;
        for (unsigned k = 0; k < n; k++)
            if ((int)k != largest && h[k] > 1 && (tallest < 0 || h[k] > h[tallest]))
                tallest = (int)k;
        if (tallest < 0)
            break;
        h[tallest]--;
        h[largest]++;
    }
    if (h[largest] < 0) /* more classes than pixels: never drawn upside down */
        h[largest] = 0;
}

static double col_x(const struct band *b, uint64_t col)
{
    return X0 + (double)col * WIDTH / b->cols;
}

/* One path per class; runs of columns with the same height and offset of
 * that class merge into one rectangle. */
static int draw_band(FILE *f, const struct band *b)
{
    int *h = calloc((size_t)b->cols * b->nclasses, sizeof(int));

    if (!h)
        return -ENOMEM;
    for (uint32_t c = 0; c < b->cols; c++)
        column_heights(b->bytes + (size_t)c * b->nclasses, b->nclasses, b->background, BAND_H,
                       h + (size_t)c * b->nclasses);
    fprintf(f, "<g id=\"%s-band\">\n<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
               "fill=\"none\" stroke=\"#888\" stroke-width=\"0.5\"/>\n",
            b->id, X0, b->y, WIDTH, BAND_H);
    for (unsigned k = 0; k < b->nclasses; k++) {
        bool open = false;

        if (!b->total[k])
            continue;
        for (uint32_t c = 0; c < b->cols;) {
            const int *hc = h + (size_t)c * b->nclasses;
            int y = 0;
            uint32_t e = c + 1;

            for (unsigned j = 0; j < k; j++)
                y += hc[j];
            if (!hc[k]) {
                c++;
                continue;
            }
            for (; e < b->cols; e++) {
                const int *he = h + (size_t)e * b->nclasses;
                int ye = 0;
                for (unsigned j = 0; j < k; j++)
                    ye += he[j];
                if (he[k] != hc[k] || ye != y)
                    break;
            }
            if (!open) {
                fprintf(f, "<path class=\"%s-%u\" fill=\"%s\" d=\"", b->id, k, b->colors[k]);
                open = true;
            }
            fputc('M', f);
            put_num(f, col_x(b, c));
            fprintf(f, " %dh", b->y + y);
            put_num(f, col_x(b, e) - col_x(b, c));
            fprintf(f, "v%dH", hc[k]);
            put_num(f, col_x(b, c));
            fputc('z', f);
            c = e;
        }
        if (open) {
            fprintf(f, "\"><title>");
            put_escaped(f, b->names[k]);
            fprintf(f, "</title></path>\n");
        }
    }
    fprintf(f, "</g>\n");
    free(h);
    return 0;
}

/* A strip of columns where @v is non-zero. */
static void draw_marks(FILE *f, const struct band *b, const uint64_t *v, int y,
                       const char *color, const char *id, const char *title)
{
    bool open = false;

    for (uint32_t c = 0; c < b->cols;) {
        uint32_t e = c + 1;

        if (!v[c]) {
            c++;
            continue;
        }
        while (e < b->cols && v[e])
            e++;
        if (!open) {
            fprintf(f, "<path id=\"%s\" fill=\"%s\" d=\"", id, color);
            open = true;
        }
        fputc('M', f);
        put_num(f, col_x(b, c));
        fprintf(f, " %dh", y);
        put_num(f, col_x(b, e) - col_x(b, c));
        fprintf(f, "v%dH", MARK_H);
        put_num(f, col_x(b, c));
        fputc('z', f);
        c = e;
    }
    if (open)
        fprintf(f, "\"><title>%s</title></path>\n", title);
}

/* Ticks at a power-of-two step, 4..8 of them, labelled. */
static void draw_scale(FILE *f, const struct band *b, uint64_t bytes, int y)
{
    uint64_t step = 1;
    double px_per_byte = (double)WIDTH / ((double)b->cols * (double)b->col_bytes);
    char label[32];

    while (bytes / step > 8)
        step *= 2;
    fprintf(f, "<g class=\"scale\" font-size=\"10\" fill=\"#333\">\n"
               "<path stroke=\"#333\" stroke-width=\"1\" d=\"M%d %dH", X0, y);
    put_num(f, X0 + (double)bytes * px_per_byte);
    for (uint64_t t = 0; t <= bytes; t += step) {
        fputc('M', f);
        put_num(f, X0 + (double)t * px_per_byte);
        fprintf(f, " %dv4", y);
        if (t > UINT64_MAX - step)
            break;
    }
    fprintf(f, "\"/>\n");
    for (uint64_t t = 0; t <= bytes; t += step) {
        human(label, sizeof(label), t);
        fprintf(f, "<text x=\"");
        put_num(f, X0 + (double)t * px_per_byte);
        fprintf(f, "\" y=\"%d\" text-anchor=\"%s\">%s</text>\n", y + 14,
                t == 0 ? "start" : (double)(bytes - t) * px_per_byte < 30 ? "end" : "middle",
                t == 0 ? "0" : label);
        if (t > UINT64_MAX - step)
            break;
    }
    fprintf(f, "</g>\n");
}

/* Swatches of the classes present; returns the y below them. */
static int draw_legend(FILE *f, const struct band *b, int y, const char *heading)
{
    int x = X0, row_h = 16;
    char size[32];

    fprintf(f, "<g class=\"legend\" font-size=\"11\" fill=\"#222\">\n"
               "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">%s</text>\n", X0, y + 11,
            heading);
    y += row_h;
    for (unsigned k = 0; k < b->nclasses; k++) {
        size_t chars;

        if (!b->total[k])
            continue;
        human(size, sizeof(size), b->total[k]);
        chars = strlen(b->names[k]) + strlen(size) + 3;
        if (chars > 60)
            chars = 60;
        if (x > X0 && x + 18 + (int)chars * 6 > X0 + WIDTH) {
            x = X0;
            y += row_h;
        }
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%s\" "
                   "stroke=\"#888\" stroke-width=\"0.5\"/><text x=\"%d\" y=\"%d\">",
                x, y, b->colors[k], x + 16, y + 10);
        put_escaped(f, b->names[k]);
        fprintf(f, " (%s)</text>\n", size);
        x += 18 + (int)chars * 6 + 14;
    }
    fprintf(f, "</g>\n");
    return y + row_h + 4;
}

static double pct(uint64_t a, uint64_t b)
{
    return b ? 100.0 * (double)a / (double)b : 0.0;
}

static void draw_caption(FILE *f, struct rb_image *img, const struct guest *g,
                         const struct host *h, int y)
{
    char vs[32], fs[32], al[32];

    human(vs, sizeof(vs), img->size);
    human(fs, sizeof(fs), h->file_bytes);
    fprintf(f, "<text id=\"caption\" x=\"%d\" y=\"%d\" font-size=\"12\" fill=\"#111\">"
               "<tspan x=\"%d\">virtual size %s (%" PRIu64 " bytes), file size %s (%" PRIu64
               " bytes)",
            X0, y, X0, vs, img->size, fs, h->file_bytes);
    if (h->qcow2) {
        const struct rb_qcow2_check *c = &h->layout.check;
        uint64_t cb = h->layout.cluster_bytes;

        human(al, sizeof(al), c->allocated_clusters * cb);
        fprintf(f, ", image end offset %" PRIu64 "</tspan>"
                   "<tspan x=\"%d\" dy=\"16\">allocated %" PRIu64 "/%" PRIu64
                   " clusters (%.2f%%, %s), fragmented %" PRIu64 " (%.2f%% of allocated)"
                   ", compressed %" PRIu64 ", leaked %" PRIu64 ", corruptions %" PRIu64
                   "</tspan>",
                c->image_end_offset, X0, c->allocated_clusters, c->total_clusters,
                pct(c->allocated_clusters, c->total_clusters), al, c->fragmented_clusters,
                pct(c->fragmented_clusters, c->allocated_clusters), c->compressed_clusters,
                c->leaks, c->corruptions);
    } else {
        human(al, sizeof(al), h->data_bytes);
        fprintf(f, "</tspan><tspan x=\"%d\" dy=\"16\">raw image: %s of data (%.2f%%), the "
                   "rest holes</tspan>",
                X0, al, pct(h->data_bytes, img->size));
    }
    if (g->dirty_total || g->compressed_total) {
        fprintf(f, "<tspan x=\"%d\" dy=\"16\">", X0);
        if (g->compressed_total) {
            human(al, sizeof(al), g->compressed_total);
            fprintf(f, "guest bytes in compressed clusters: %s. ", al);
        }
        if (g->dirty_total) {
            human(al, sizeof(al), g->dirty_total);
            fprintf(f, "dirty in the bitmap: %s.", al);
        }
        fprintf(f, "</tspan>");
    }
    fprintf(f, "</text>\n");
}

/* Per-column details for the page's script: runs of columns alike. */
static void put_band_json(FILE *f, const struct band *b)
{
    fprintf(f, "{\"id\":\"%s\",\"y\":%d,\"h\":%d,\"x0\":%d,\"width\":%d,\"cols\":%" PRIu32
               ",\"colBytes\":%" PRIu64 ",\"span\":%" PRIu64 ",\"names\":[",
            b->id, b->y, BAND_H, X0, WIDTH, b->cols, b->col_bytes, b->span);
    for (unsigned k = 0; k < b->nclasses; k++) {
        if (k)
            fputc(',', f);
        put_json_string(f, b->names[k]);
    }
    fprintf(f, "],\"runs\":[");
    for (uint32_t c = 0; c < b->cols;) {
        const uint64_t *v = b->bytes + (size_t)c * b->nclasses;
        uint32_t e = c + 1;

        while (e < b->cols &&
               memcmp(v, b->bytes + (size_t)e * b->nclasses, b->nclasses * sizeof(*v)) == 0)
            e++;
        fprintf(f, "%s[%" PRIu32 ",%" PRIu32 ",[", c ? "," : "", c, e);
        for (unsigned k = 0; k < b->nclasses; k++)
            fprintf(f, "%s%" PRIu64, k ? "," : "", v[k]);
        fprintf(f, "]]");
        c = e;
    }
    fprintf(f, "]}");
}

static const char page_style[] =
    "body{font-family:sans-serif;margin:1em;color:#222}"
    "#details{font-family:monospace;white-space:pre;min-height:6em;background:#f7f7f7;"
    "padding:.5em;border:1px solid #ddd}"
    "table{border-collapse:collapse;margin-top:1em}td,th{padding:2px 8px;text-align:left}"
    "td.n{text-align:right;font-family:monospace}"
    ".sw{display:inline-block;width:12px;height:12px;border:1px solid #888}";

/* The page's script: the column under the pointer, in words. */
static const char page_script[] =
    "(function(){\n"
    "var d=JSON.parse(document.getElementById('layout-data').textContent);\n"
    "var svg=document.querySelector('#picture svg'),out=document.getElementById('details');\n"
    "function hb(v){var u=['bytes','KiB','MiB','GiB','TiB','PiB'],i=0;"
    "while(v>=1024&&i<5){v/=1024;i++;}return (i?v.toFixed(2):v)+' '+u[i];}\n"
    "svg.addEventListener('mousemove',function(ev){\n"
    " var p=svg.createSVGPoint();p.x=ev.clientX;p.y=ev.clientY;\n"
    " p=p.matrixTransform(svg.getScreenCTM().inverse());\n"
    " for(var i=0;i<d.bands.length;i++){var b=d.bands[i];\n"
    "  if(p.y<b.y||p.y>b.y+b.h||p.x<b.x0||p.x>=b.x0+b.width)continue;\n"
    "  var c=Math.floor((p.x-b.x0)*b.cols/b.width),r=null;\n"
    "  for(var j=0;j<b.runs.length;j++)if(c>=b.runs[j][0]&&c<b.runs[j][1]){r=b.runs[j];break;}\n"
    "  if(!r)return;var s=c*b.colBytes,e=Math.min(s+b.colBytes,b.span);\n"
    "  var t=b.id+' bytes '+s+'..'+e+' ('+hb(s)+' .. '+hb(e)+')\\n';\n"
    "  for(var k=0;k<b.names.length;k++)if(r[2][k])t+='  '+b.names[k]+': '+hb(r[2][k])+'\\n';\n"
    "  out.textContent=t;return;}\n"
    "});\n"
    "})();\n";

static void put_legend_table(FILE *f, const struct band *b, const char *heading)
{
    char size[32];
    uint64_t sum = 0;

    for (unsigned k = 0; k < b->nclasses; k++)
        sum += b->total[k];
    fprintf(f, "<tr><th colspan=\"4\">%s</th></tr>\n", heading);
    for (unsigned k = 0; k < b->nclasses; k++) {
        if (!b->total[k])
            continue;
        human(size, sizeof(size), b->total[k]);
        fprintf(f, "<tr><td><span class=\"sw\" style=\"background:%s\"></span></td><td>",
                b->colors[k]);
        put_escaped(f, b->names[k]);
        fprintf(f, "</td><td class=\"n\">%" PRIu64 "</td><td class=\"n\">%s (%.2f%%)</td>"
                   "</tr>\n",
                b->total[k], size, pct(b->total[k], sum));
    }
}

/* The drawing, inside the root element; returns the height used, or
 * -errno. */
static int draw_all(FILE *f, struct rb_image *img, const struct rb_picture_opts *o,
                    const char *title, struct guest *g, struct host *h)
{
    int y, guest_scale, host_scale, ret;
    char span[32];

    fprintf(f, "<title>layout of ");
    put_escaped(f, title);
    fprintf(f, "</title>\n<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n"
               "<text x=\"%d\" y=\"24\" font-size=\"16\" font-weight=\"bold\">layout of ",
            X0);
    put_escaped(f, title);
    fprintf(f, " (%s)</text>\n", img->ops->format);

    g->band.y = 58;
    human(span, sizeof(span), img->size);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"12\">guest view: the virtual disk, 0 .. "
               "%s, by where each run's data comes from</text>\n",
            X0, g->band.y - 6, span);
    if ((ret = draw_band(f, &g->band)) < 0)
        return ret;
    y = g->band.y + BAND_H + 2;
    draw_marks(f, &g->band, g->compressed, y, COMPRESSED_COLOR, "compressed-marks",
               "compressed clusters");
    y += MARK_H + 2;
    if (o->bitmap) {
        draw_marks(f, &g->band, g->dirty, y, DIRTY_COLOR, "dirty-marks",
                   "dirty in the bitmap");
        y += MARK_H + 2;
    }
    guest_scale = y + 2;
    draw_scale(f, &g->band, img->size, guest_scale);

    h->band.y = guest_scale + 46;
    human(span, sizeof(span), h->file_bytes);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"12\">host view: the file, 0 .. %s, by "
               "what each cluster holds</text>\n",
            X0, h->band.y - 6, span);
    if ((ret = draw_band(f, &h->band)) < 0)
        return ret;
    host_scale = h->band.y + BAND_H + 4;
    draw_scale(f, &h->band, h->file_bytes, host_scale);

    y = draw_legend(f, &g->band, host_scale + 30, "guest view");
    if (g->compressed_total || o->bitmap) {
        int x = X0;
        fprintf(f, "<g font-size=\"11\" fill=\"#222\">");
        if (g->compressed_total) {
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"%d\" fill=\"%s\"/>"
                       "<text x=\"%d\" y=\"%d\">compressed (strip under the guest band)"
                       "</text>",
                    x, y + 3, MARK_H, COMPRESSED_COLOR, x + 16, y + 10);
            x += 300;
        }
        if (o->bitmap) {
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"%d\" fill=\"%s\"/>"
                       "<text x=\"%d\" y=\"%d\">dirty in bitmap '",
                    x, y + 3, MARK_H, DIRTY_COLOR, x + 16, y + 10);
            put_escaped(f, o->bitmap);
            fprintf(f, "'</text>");
        }
        fprintf(f, "</g>\n");
        y += 20;
    }
    y = draw_legend(f, &h->band, y, "host view");
    draw_caption(f, img, g, h, y + 12);
    return y + 12 + 16 * 3;
}

static int write_doc(FILE *f, struct rb_image *img, const struct rb_picture_opts *o,
                     struct guest *g, struct host *h)
{
    const char *title = o->title ? o->title : img->filename;
    char *body = NULL;
    size_t body_len = 0;
    FILE *bf = open_memstream(&body, &body_len);
    int height;

    if (!bf)
        return -ENOMEM;
    height = draw_all(bf, img, o, title, g, h);
    if (fclose(bf) != 0 && height >= 0)
        height = -ENOMEM;
    if (height < 0) {
        free(body);
        return height;
    }
    if (o->html) {
        fprintf(f, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                   "<title>layout of ");
        put_escaped(f, title);
        fprintf(f, "</title>\n<style>%s</style></head><body>\n<h1>layout of ", page_style);
        put_escaped(f, title);
        fprintf(f, "</h1>\n<div id=\"picture\">\n");
    }
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\">\n",
            2 * X0 + WIDTH, height, 2 * X0 + WIDTH, height);
    fwrite(body, 1, body_len, f);
    fprintf(f, "</svg>\n");
    free(body);
    if (o->html) {
        fprintf(f, "</div>\n<div id=\"details\">point at a band for the details of a "
                   "column</div>\n<table id=\"legend\">\n");
        put_legend_table(f, &g->band, "guest view: bytes by where they come from");
        put_legend_table(f, &h->band, "host view: bytes by what they hold");
        fprintf(f, "</table>\n<script type=\"application/json\" id=\"layout-data\">"
                   "{\"bands\":[");
        put_band_json(f, &g->band);
        fputc(',', f);
        put_band_json(f, &h->band);
        fprintf(f, "]}</script>\n<script>\n%s</script>\n</body></html>\n", page_script);
    }
    return 0;
}

int rb_picture_render(struct rb_image *img, const struct rb_picture_opts *opts, char **out,
                      size_t *len, struct rb_error *err)
{
    struct guest g = {0};
    struct host h = {0};
    char *buf = NULL;
    size_t n = 0;
    FILE *f;
    int ret;

    *out = NULL;
    *len = 0;
    ret = guest_build(&g, img, opts->bitmap, err);
    if (ret == 0)
        ret = host_build(&h, img, err);
    if (ret == 0) {
        f = open_memstream(&buf, &n);
        if (!f)
            ret = rb_error_set(err, ENOMEM, "out of memory");
        else {
            ret = write_doc(f, img, opts, &g, &h);
            if (fclose(f) != 0 && ret == 0)
                ret = -ENOMEM;
            if (ret < 0) {
                free(buf);
                rb_error_set(err, -ret, "%s: cannot draw the layout", img->filename);
            }
        }
    }
    if (ret == 0) {
        *out = buf;
        *len = n;
    }
    band_free(&g.band);
    free(g.compressed);
    free(g.dirty);
    band_free(&h.band);
    rb_qcow2_layout_free(&h.layout);
    return ret;
}
