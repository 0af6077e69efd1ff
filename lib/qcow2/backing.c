/* SPDX-License-Identifier: MIT */
/*
 * backing.c - rewrite the backing file name and format recorded in a
 * qcow2 header (rebase, rebase -u), as QEMU's qcow2_change_backing_file:
 * the header cluster is rebuilt with every other extension kept in order,
 * the backing format extension first (or none), the end marker, then the
 * name; written in one write and synced; then parsed again into s->h.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "qcow2/qcow2w.h"
#include "rblock/io.h"
#include "util/endian.h"

int rb_qcow2_set_backing(struct rb_image *img, const char *name, const char *format,
                         struct rb_error *err)
{
    struct qcow2_state *s;
    uint64_t c, hl, pos, out, end, bf_off, bf_len, used;
    size_t name_len = name ? strlen(name) : 0, fmt_len = format ? strlen(format) : 0;
    uint8_t *old = NULL, *buf = NULL;
    int ret;

    if (!qcow2_is_qcow2(img))
        return rb_error_set(err, ENOTSUP, "%s: a %s image has no backing file to change",
                            img->filename, img->ops->format);
    s = qcow2_state_of(img);
    if (!s->writable || img->read_only)
        return rb_error_set(err, EROFS, "%s: image is read-only", img->filename);
    if (name_len == 0 && fmt_len)
        return rb_error_set(err, EINVAL, "%s: a backing format without a backing file",
                            img->filename);
    if (name_len > QCOW2_MAX_BACKING_NAME)
        return rb_error_set(err, EINVAL, "%s: backing file name of %zu bytes is too long "
                            "(at most %u)", img->filename, name_len,
                            QCOW2_MAX_BACKING_NAME);
    if (fmt_len > 16)
        return rb_error_set(err, EINVAL, "%s: backing format '%s' is too long",
                            img->filename, format);
    pthread_mutex_lock(&s->lock);
    c = s->cluster_bytes;
    hl = s->h.version >= 3 ? s->h.header_length : 72;
    bf_off = s->h.backing_file_offset;
    bf_len = s->h.backing_file_size;
    old = malloc(c);
    buf = calloc(1, c);
    if (!old || !buf) {
        ret = rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        goto out;
    }
    ret = rb_io_pread(s->fd, old, (size_t)c, 0);
    if (ret < 0) {
        ret = rb_error_errno(err, -ret, "%s: cannot read the header", s->name);
        goto out;
    }
    /* the extensions end at the end marker, or at the old name */
    end = bf_off && bf_off < c ? bf_off : c;
    used = bf_off && bf_off < c && bf_len <= c - bf_off ? bf_off + bf_len : hl;
    memcpy(buf, old, (size_t)hl);
    out = hl;
    if (fmt_len) {
        /* qcow2.txt "Backing file format name" */
        rb_store_be32(buf + out, QCOW2_EXT_BACKING_FORMAT);
        rb_store_be32(buf + out + 4, (uint32_t)fmt_len);
        memcpy(buf + out + 8, format, fmt_len);
        out += 8 + ((fmt_len + 7) & ~(size_t)7);
    }
    for (pos = hl; pos + 8 <= end;) {
        uint32_t type = rb_load_be32(old + pos), len = rb_load_be32(old + pos + 4);
        uint64_t step = 8 + (((uint64_t)len + 7) & ~7ull);

        if (type == QCOW2_EXT_END)
            break;
        if (step > c - pos) {
            ret = rb_error_set(err, EINVAL, "%s: header extension at 0x%" PRIx64
                               " is too large", s->name, pos);
            goto out;
        }
        if (type != QCOW2_EXT_BACKING_FORMAT) {
            if (out + step > c) {
                ret = rb_error_set(err, ENOSPC, "%s: no room in the header cluster",
                                   s->name);
                goto out;
            }
            memcpy(buf + out, old + pos, (size_t)step);
            out += step;
        }
        pos += step;
    }
    if (pos + 8 > used)
        used = pos + 8;
    out += 8; /* end of extensions: zeros */
    if (out + name_len > c) {
        ret = rb_error_set(err, ENOSPC, "%s: no room in the header cluster of %" PRIu64
                           " bytes for a backing file name of %zu bytes", s->name, c,
                           name_len);
        goto out;
    }
    if (name_len)
        memcpy(buf + out, name, name_len);
    rb_store_be64(buf + 8, name_len ? out : 0);
    rb_store_be32(buf + 16, (uint32_t)name_len);
    out += name_len;
    /* one write of what either header occupies (zeros after the new one),
     * so a torn write can only hit bytes QEMU also rewrites here */
    if (out > used)
        used = out;
    used = (used + 511) & ~(uint64_t)511;
    if (used > c)
        used = c;
    ret = qcow2_header_replace(s, buf, (size_t)used, err);
out:
    pthread_mutex_unlock(&s->lock);
    free(old);
    free(buf);
    return ret;
}
