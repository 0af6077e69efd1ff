/* SPDX-License-Identifier: MIT */
/*
 * layout.c - what each host cluster of a qcow2 file holds, folded into
 * columns for a picture (`rblock map --output=svg`).  The classification
 * is check.c's walk, which knows every kind of metadata: it tells an
 * observer of each reference and of each unreferenced cluster, and this
 * file adds the bytes to the columns they fall in.  Nothing is kept per
 * cluster here, and the walk counts references in bounded windows, so a
 * file of any size is drawn in bounded memory.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"

/* Counters of one window of check.c's walk: 16 MiB. */
#define LAYOUT_WINDOW_CLUSTERS (1ull << 22)
#define LAYOUT_MAX_COLUMNS 65536u

static const char *const class_names[RB_QCOW2_HOST_CLASSES] = {
    [RB_QCOW2_HOST_HEADER] = "header",
    [RB_QCOW2_HOST_REFTABLE] = "refcount table",
    [RB_QCOW2_HOST_REFBLOCK] = "refcount blocks",
    [RB_QCOW2_HOST_L1] = "L1 table",
    [RB_QCOW2_HOST_L2] = "L2 tables",
    [RB_QCOW2_HOST_DATA] = "data",
    [RB_QCOW2_HOST_COMPRESSED] = "compressed data",
    [RB_QCOW2_HOST_SNAPSHOT] = "snapshot tables",
    [RB_QCOW2_HOST_BITMAP_TABLES] = "bitmap directory and tables",
    [RB_QCOW2_HOST_BITMAP_DATA] = "bitmap data",
    [RB_QCOW2_HOST_FREE] = "free",
    [RB_QCOW2_HOST_LEAKED] = "leaked",
};

const char *rb_qcow2_host_class_name(enum rb_qcow2_host_class cls)
{
    return (unsigned)cls < RB_QCOW2_HOST_CLASSES ? class_names[cls] : "unknown";
}

/* Add [off, off + bytes) of class @cls to the columns it covers (clipped
 * to the span: a reference may end inside a semi-allocated last cluster). */
static void add(void *opaque, uint64_t off, uint64_t bytes, enum rb_qcow2_host_class cls)
{
    struct rb_qcow2_layout *l = opaque;
    uint64_t end;

    if ((unsigned)cls >= RB_QCOW2_HOST_CLASSES || off >= l->span_bytes)
        return;
    end = bytes > l->span_bytes - off ? l->span_bytes : off + bytes;
    /* a table of 8 bytes still takes its whole cluster; compressed data
     * is drawn byte for byte (several may share a cluster) */
    if (cls != RB_QCOW2_HOST_COMPRESSED) {
        off -= off % l->cluster_bytes;
        if (end % l->cluster_bytes)
            end += l->cluster_bytes - end % l->cluster_bytes;
        if (end > l->span_bytes)
            end = l->span_bytes;
    }
    l->total[cls] += end - off;
    while (off < end) {
        uint64_t col = off / l->column_bytes;
        uint64_t col_end = (col + 1) * l->column_bytes;
        uint64_t n = (end < col_end ? end : col_end) - off;

        l->bytes[col * RB_QCOW2_HOST_CLASSES + cls] += n;
        off += n;
    }
}

int rb_qcow2_layout(struct rb_image *img, uint32_t columns, struct rb_qcow2_layout *out,
                    struct rb_error *err)
{
    struct qcow2_check_observer obs = {.ref = add, .opaque = out};
    struct qcow2_state *s;
    uint64_t clusters;
    int ret;

    memset(out, 0, sizeof(*out));
    if (!rb_qcow2_is(img))
        return rb_error_set(err, EINVAL, "%s: not a qcow2 image", img->filename);
    if (columns == 0 || columns > LAYOUT_MAX_COLUMNS)
        return rb_error_set(err, EINVAL, "%s: %" PRIu32 " columns asked (1..%u)",
                            img->filename, columns, LAYOUT_MAX_COLUMNS);
    s = img->priv;
    pthread_mutex_lock(&s->lock);
    out->file_bytes = s->file_size;
    out->cluster_bytes = s->cluster_bytes;
    pthread_mutex_unlock(&s->lock);
    clusters = (out->file_bytes + out->cluster_bytes - 1) / out->cluster_bytes;
    out->span_bytes = (clusters ? clusters : 1) * out->cluster_bytes;
    out->column_bytes = (out->span_bytes + columns - 1) / columns;
    out->column_bytes = (out->column_bytes + 511) & ~511ull;
    out->columns = (uint32_t)((out->span_bytes + out->column_bytes - 1) / out->column_bytes);
    out->bytes = calloc((size_t)out->columns * RB_QCOW2_HOST_CLASSES, sizeof(*out->bytes));
    if (!out->bytes)
        return rb_error_set(err, ENOMEM, "%s: out of memory", img->filename);
    /* the file may have grown since: the walk reads it under the
     * lock, and add() clips what lies past the span */
    ret = qcow2_check_walk(img, &out->check, &obs, LAYOUT_WINDOW_CLUSTERS, NULL, err);
    if (ret < 0) {
        free(out->bytes);
        memset(out, 0, sizeof(*out));
    }
    return ret;
}

void rb_qcow2_layout_free(struct rb_qcow2_layout *l)
{
    if (!l)
        return;
    free(l->bytes);
    rb_qcow2_check_free(&l->check);
    l->bytes = NULL;
}
