/* SPDX-License-Identifier: MIT */
/*
 * snapshot.c - the internal snapshot table (spec "Snapshots"): entries of
 * a 40-byte header, extra data, id and name, padded to 8 bytes.  Caps as
 * qemu's: at most 1024 bytes of extra data per entry, 64 MiB in all, and
 * each snapshot's L1 table cluster-aligned and at most 32 MiB.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "util/endian.h"
#include "rblock/io.h"

#define MAX_EXTRA_DATA 1024

/* Read @len bytes at @off of the table, checking it is inside the file. */
static int table_read(struct qcow2_state *s, void *buf, size_t len, uint64_t off,
                      unsigned index, struct rb_error *err)
{
    uint64_t end;
    int ret;

    if (!rb_add_ok(off, len, &end) || end > s->file_size)
        return rb_error_set(err, EINVAL, "%s: snapshot table entry %u at 0x%" PRIx64
                            " is past the end of the file (size %" PRIu64 ")",
                            s->name, index, off, s->file_size);
    if (end - s->h.snapshots_offset > QCOW2_MAX_SNAPSHOTS_BYTES)
        return rb_error_set(err, EFBIG, "%s: snapshot table is too large (limit %u "
                            "bytes)", s->name, QCOW2_MAX_SNAPSHOTS_BYTES);
    ret = rb_io_pread(s->fd, buf, len, off);
    if (ret < 0)
        return rb_error_errno(err, -ret, "%s: cannot read snapshot table", s->name);
    return 0;
}

static char *read_string(struct qcow2_state *s, uint64_t *off, size_t len, unsigned index,
                         struct rb_error *err)
{
    char *str = malloc(len + 1);

    if (!str) {
        rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        return NULL;
    }
    if (table_read(s, str, len, *off, index, err) < 0) {
        free(str);
        return NULL;
    }
    str[len] = '\0';
    *off += len;
    return str;
}

static int read_one(struct qcow2_state *s, struct qcow2_snapshot *sn, uint64_t *off,
                    unsigned index, struct rb_error *err)
{
    uint8_t h[40], extra[MAX_EXTRA_DATA];
    uint32_t id_len, name_len;
    int ret;

    ret = table_read(s, h, sizeof(h), *off, index, err);
    if (ret < 0)
        return ret;
    sn->l1_table_offset = rb_load_be64(h);
    sn->l1_size = (uint32_t)rb_load_be32(h + 8);
    id_len = (uint32_t)rb_load_be16(h + 12);
    name_len = (uint32_t)rb_load_be16(h + 14);
    sn->date_sec = (uint32_t)rb_load_be32(h + 16);
    sn->date_nsec = (uint32_t)rb_load_be32(h + 20);
    sn->vm_clock_nsec = rb_load_be64(h + 24);
    sn->vm_state_size = rb_load_be32(h + 32);
    sn->extra_data_size = (uint32_t)rb_load_be32(h + 36);
    sn->icount = UINT64_MAX;
    sn->disk_size = s->h.size;
    *off += sizeof(h);
    if (sn->extra_data_size > MAX_EXTRA_DATA)
        return rb_error_set(err, EINVAL, "%s: snapshot table entry %u has %" PRIu32
                            " bytes of extra data (limit %d)", s->name, index,
                            sn->extra_data_size, MAX_EXTRA_DATA);
    ret = table_read(s, extra, sn->extra_data_size, *off, index, err);
    if (ret < 0)
        return ret;
    if (sn->extra_data_size) {
        sn->extra = malloc(sn->extra_data_size);
        if (!sn->extra)
            return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
        memcpy(sn->extra, extra, sn->extra_data_size);
    }
    if (sn->extra_data_size >= 8)
        sn->vm_state_size = rb_load_be64(extra);
    if (sn->extra_data_size >= 16) {
        sn->disk_size = rb_load_be64(extra + 8);
        sn->has_disk_size = true;
    }
    if (sn->extra_data_size >= 24)
        sn->icount = rb_load_be64(extra + 16);
    *off += sn->extra_data_size;
    sn->id = read_string(s, off, id_len, index, err);
    if (!sn->id)
        return -EINVAL;
    sn->name = read_string(s, off, name_len, index, err);
    if (!sn->name)
        return -EINVAL;
    *off = (*off + 7) & ~7ull;

    if (sn->l1_size > QCOW2_MAX_L1_BYTES / 8)
        return rb_error_set(err, EFBIG, "%s: L1 table of snapshot '%s' is too large (%"
                            PRIu32 " entries, limit %u)", s->name, sn->id, sn->l1_size,
                            QCOW2_MAX_L1_BYTES / 8);
    if (sn->l1_size && (sn->l1_table_offset & (s->cluster_bytes - 1)))
        return rb_error_set(err, EINVAL, "%s: L1 table of snapshot '%s' at 0x%" PRIx64
                            " is not cluster-aligned (cluster size %" PRIu32 ")",
                            s->name, sn->id, sn->l1_table_offset, s->cluster_bytes);
    return 0;
}

int qcow2_snapshots_load(struct qcow2_state *s, struct rb_error *err)
{
    uint64_t off = s->h.snapshots_offset;

    if (!s->h.nb_snapshots)
        return 0;
    s->snapshots = calloc(s->h.nb_snapshots, sizeof(*s->snapshots));
    if (!s->snapshots)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    for (uint32_t i = 0; i < s->h.nb_snapshots; i++) {
        int ret = read_one(s, &s->snapshots[i], &off, i, err);
        if (ret < 0)
            return ret;
    }
    s->snapshots_bytes = off - s->h.snapshots_offset;
    return 0;
}

void qcow2_snapshots_free(struct qcow2_state *s)
{
    if (!s->snapshots)
        return;
    for (uint32_t i = 0; i < s->h.nb_snapshots; i++) {
        free(s->snapshots[i].id);
        free(s->snapshots[i].name);
        free(s->snapshots[i].extra);
    }
    free(s->snapshots);
    s->snapshots = NULL;
}

long qcow2_snapshot_find(const struct qcow2_state *s, const char *key)
{
    for (uint32_t i = 0; i < s->h.nb_snapshots; i++)
        if (strcmp(s->snapshots[i].id, key) == 0)
            return i;
    for (uint32_t i = 0; i < s->h.nb_snapshots; i++)
        if (strcmp(s->snapshots[i].name, key) == 0)
            return i;
    return -1;
}

int qcow2_snapshot_l1_read(struct qcow2_state *s, const struct qcow2_snapshot *sn,
                           uint64_t **l1, struct rb_error *err)
{
    uint64_t bytes = (uint64_t)sn->l1_size * 8, end;
    uint64_t *t = malloc(bytes ? bytes : 8);
    int ret;

    *l1 = NULL;
    if (!t)
        return rb_error_set(err, ENOMEM, "%s: out of memory", s->name);
    if (sn->l1_size && (!rb_add_ok(sn->l1_table_offset, bytes, &end) || end > s->file_size)) {
        free(t);
        return rb_error_set(err, EINVAL, "%s: L1 table of snapshot '%s' at 0x%" PRIx64
                            " is past the end of the file (size %" PRIu64 ")", s->name,
                            sn->id, sn->l1_table_offset, s->file_size);
    }
    ret = sn->l1_size ? rb_io_pread(s->fd, t, bytes, sn->l1_table_offset) : 0;
    if (ret < 0) {
        free(t);
        return rb_error_errno(err, -ret, "%s: cannot read the L1 table of snapshot '%s'",
                              s->name, sn->id);
    }
    if (!sn->l1_size)
        t[0] = 0;
    rb_load_be64_array(t, sn->l1_size);
    *l1 = t;
    return 0;
}

int qcow2_snapshot_select(struct rb_image *img, struct qcow2_state *s, const char *key,
                          struct rb_error *err)
{
    long i = qcow2_snapshot_find(s, key);
    uint64_t *l1;
    int ret;

    if (i < 0)
        return rb_error_set(err, ENOENT, "%s: no snapshot '%s' (id or name)", s->name, key);
    ret = qcow2_snapshot_l1_read(s, &s->snapshots[i], &l1, err);
    if (ret < 0)
        return ret;
    free(s->l1);
    s->l1 = l1;
    s->h.l1_size = s->snapshots[i].l1_size;
    s->h.size = s->snapshots[i].disk_size;
    img->size = s->h.size;
    return 0;
}
