/* SPDX-License-Identifier: MIT */
/*
 * probe.c - what format a file's bytes say it is: one table row per
 * format.  Used to choose a format only when the user gave none (never for
 * a backing file), and to refuse every format rblock does not read.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rblock/image.h"
#include "rblock/io.h"
#include "util/endian.h"

/*
 * Format probing: one row per format, a name and a match over the first
 * and last RB_PROBE_BYTES of the file.  The signatures are those of the
 * formats' specifications (and what QEMU's block drivers accept); rblock
 * reads only qcow2 and raw, and names the others to refuse them, so that
 * a vmdk or a LUKS volume is never served or converted as raw bytes.
 */
struct probe_in {
    const uint8_t *head, *tail; /* tail NULL when the file is shorter */
    size_t head_len, tail_len;
};

static bool has(const uint8_t *buf, size_t len, size_t off, const char *magic, size_t n)
{
    return buf && off <= len && n <= len - off && memcmp(buf + off, magic, n) == 0;
}

static uint32_t le32_at(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

/* "QFI\xfb"; any version (the driver names an unsupported one, qcow v1 too) */
static bool match_qcow2(const struct probe_in *in)
{
    return has(in->head, in->head_len, 0, "QFI\xfb", 4);
}

/* A line of a vmdk text descriptor that may come before "version=": a
 * comment or a blank line.  Returns the start of the next line, or NULL
 * when @p starts another kind of line. */
static const uint8_t *vmdk_skip_line(const uint8_t *p, const uint8_t *end)
{
    if (*p == '#') {
        while (p < end && *p != '\n')
            p++;
        return p < end ? p + 1 : end;
    }
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    if (p < end && *p == '\r')
        p++;
    if (p < end && *p == '\n')
        return p + 1;
    return p == end ? end : NULL;
}

/* Binary sparse extents ("KDMV", hosted "COWD"), or a text descriptor:
 * the "# Disk DescriptorFile" line, or comments and blank lines followed
 * by "version=1|2|3". */
static bool match_vmdk(const struct probe_in *in)
{
    const uint8_t *p = in->head, *end = in->head + in->head_len;

    if (has(in->head, in->head_len, 0, "KDMV", 4) || has(in->head, in->head_len, 0, "COWD", 4) ||
        has(in->head, in->head_len, 0, "# Disk DescriptorFile", 21))
        return true;
    while (p && p < end) {
        size_t left = (size_t)(end - p);
        if (left >= 10 && memcmp(p, "version=", 8) == 0 && p[8] >= '1' && p[8] <= '3' &&
            (p[9] == '\n' || (p[9] == '\r' && left >= 11 && p[10] == '\n')))
            return true;
        p = vmdk_skip_line(p, end);
    }
    return false;
}

/* VirtualBox: a 64-byte text, then the signature 0xbeda107f (LE) */
static bool match_vdi(const struct probe_in *in)
{
    return in->head_len >= 0x44 && le32_at(in->head + 0x40) == 0xbeda107f;
}

static bool match_vhdx(const struct probe_in *in)
{
    return has(in->head, in->head_len, 0, "vhdxfile", 8);
}

/* Dynamic VHD: the footer copy at 0; fixed VHD: only the footer, in the
 * last 512 bytes. */
static bool match_vpc(const struct probe_in *in)
{
    return has(in->head, in->head_len, 0, "conectix", 8) ||
           (in->tail_len >= 512 && has(in->tail, in->tail_len, in->tail_len - 512, "conectix", 8));
}

static bool match_qed(const struct probe_in *in)
{
    return has(in->head, in->head_len, 0, "QED\0", 4);
}

/* LUKS1 and LUKS2 primary headers (LUKS2's secondary is "SKUL\xba\xbe") */
static bool match_luks(const struct probe_in *in)
{
    return has(in->head, in->head_len, 0, "LUKS\xba\xbe", 6);
}

/* Parallels: either magic (16 bytes), then version 2 (LE) */
static bool match_parallels(const struct probe_in *in)
{
    return (has(in->head, in->head_len, 0, "WithoutFreeSpace", 16) ||
            has(in->head, in->head_len, 0, "WithouFreSpacExt", 16)) &&
           in->head_len >= 20 && le32_at(in->head + 16) == 2;
}

/* Bochs: magic, type and subtype as NUL-terminated strings in fixed
 * fields (32, 16 and 16 bytes) */
static bool match_bochs(const struct probe_in *in)
{
    return has(in->head, in->head_len, 0, "Bochs Virtual HD Image", 23) &&
           has(in->head, in->head_len, 32, "Redolog", 8);
}

/* cloop V2.0: a shell script header */
static bool match_cloop(const struct probe_in *in)
{
    static const char magic[] = "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && "
                                "mount -r -t iso9660 /dev/cloop $1\n";

    return has(in->head, in->head_len, 0, magic, sizeof(magic) - 1);
}

/* Apple UDIF: the "koly" trailer, 512 bytes from the end, whose header
 * size field (BE, offset 8) says 512 */
static bool match_dmg(const struct probe_in *in)
{
    size_t at = in->tail_len - 512;

    return in->tail_len >= 512 && has(in->tail, in->tail_len, at, "koly", 4) &&
           rb_load_be32(in->tail + at + 8) == 512;
}

static const struct probe_fmt {
    const char *name;
    bool (*match)(const struct probe_in *in);
} probe_table[] = {
    {"qcow2", match_qcow2},
    {"vmdk", match_vmdk},
    {"vdi", match_vdi},
    {"vhdx", match_vhdx},
    {"vpc", match_vpc},
    {"qed", match_qed},
    {"luks", match_luks},
    {"parallels", match_parallels},
    {"bochs", match_bochs},
    {"cloop", match_cloop},
    {"dmg", match_dmg},
};

const char *rb_image_probe_buf(const uint8_t *head, size_t head_len, const uint8_t *tail,
                               size_t tail_len)
{
    struct probe_in in = {.head = head, .head_len = head ? head_len : 0,
                          .tail = tail, .tail_len = tail ? tail_len : 0};

    if (in.head_len > RB_PROBE_BYTES)
        in.head_len = RB_PROBE_BYTES;
    for (size_t i = 0; i < sizeof(probe_table) / sizeof(probe_table[0]); i++)
        if (probe_table[i].match(&in))
            return probe_table[i].name;
    return "raw";
}

const char *rb_image_probe_first_sector(const uint8_t *head, size_t head_len)
{
    const char *fmt = rb_image_probe_buf(head, head_len, NULL, 0);

    return strcmp(fmt, "raw") == 0 ? NULL : fmt;
}

/* Head and tail of a file of @size bytes through @rd; "raw" on errors. */
static const char *probe_with(uint64_t size, int (*rd)(void *, void *, size_t, uint64_t),
                              void *opaque)
{
    uint8_t head[RB_PROBE_BYTES], tail[RB_PROBE_BYTES];
    size_t head_len = size < RB_PROBE_BYTES ? (size_t)size : RB_PROBE_BYTES;
    bool with_tail = size >= RB_PROBE_BYTES;

    if (head_len && rd(opaque, head, head_len, 0) < 0)
        return "raw";
    if (with_tail && rd(opaque, tail, RB_PROBE_BYTES, size - RB_PROBE_BYTES) < 0)
        with_tail = false;
    return rb_image_probe_buf(head, head_len, with_tail ? tail : NULL,
                              with_tail ? RB_PROBE_BYTES : 0);
}

/*
 * The probe reads no hole: on some file systems (ext4, xfs) reading a
 * preallocated (unwritten) range puts pages in the cache that SEEK_DATA
 * then reports as data, so a read would change what map says of the
 * file.  A hole reads as zeros, which match no signature.
 */
static int read_fd(void *opaque, void *buf, size_t len, uint64_t off)
{
    int fd = *(int *)opaque;
    off_t data = lseek(fd, (off_t)off, SEEK_DATA);

    if ((data < 0 && errno == ENXIO) || (data >= 0 && (uint64_t)data >= off + len)) {
        memset(buf, 0, len);
        return 0;
    }
    return rb_io_pread_exact(fd, buf, len, off);
}

static int read_image(void *opaque, void *buf, size_t len, uint64_t off)
{
    struct rb_image *img = opaque;
    struct rb_extent ext;

    if (rb_image_block_status_top(img, off, len, &ext, NULL) == 0 &&
        !(ext.flags & RB_BS_DATA) && (ext.flags & RB_BS_ZERO) && ext.length >= len) {
        memset(buf, 0, len);
        return 0;
    }
    return rb_image_read(img, buf, off, len, NULL);
}

const char *rb_image_probe_layer(struct rb_image *img)
{
    return probe_with(img->size, read_image, img);
}

const char *rb_image_probe(int fd)
{
    uint64_t size;

    if (rb_io_size(fd, &size) < 0)
        return "raw";
    return probe_with(size, read_fd, &fd);
}

