/* SPDX-License-Identifier: MIT */
/*
 * image.c - format probing, the backing chain, and range-checked wrappers
 * around the driver operations.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rblock/image.h"
#include "rblock/io.h"
#include "util/endian.h"

struct rb_image *rb_image_new(const struct rb_image_ops *ops, const char *path)
{
    struct rb_image *img = calloc(1, sizeof(*img));

    if (!img)
        return NULL;
    img->ops = ops;
    img->filename = strdup(path);
    if (!img->filename) {
        free(img);
        return NULL;
    }
    return img;
}

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

/* What the first and last sectors of an open layer look like. */
static const char *probe_layer(struct rb_image *img)
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

/* Resolve a backing name against the folder of the overlay, as QEMU does:
 * absolute names stay, relative ones are relative to the overlay's folder. */
static char *resolve_backing(const char *overlay, const char *name)
{
    const char *slash;
    size_t dir_len;
    char *out;

    if (name[0] == '/')
        return strdup(name);
    slash = strrchr(overlay, '/');
    if (!slash)
        return strdup(name);
    dir_len = (size_t)(slash - overlay) + 1;
    out = malloc(dir_len + strlen(name) + 1);
    if (!out)
        return NULL;
    memcpy(out, overlay, dir_len);
    strcpy(out + dir_len, name);
    return out;
}

static struct rb_image *open_one(const char *path, const struct rb_open_opts *opts,
                                 bool top, struct rb_error *err)
{
    struct rb_open_opts o = *opts;
    const char *fmt;
    struct stat st;
    int fd;

    if (strncmp(path, "json:", 5) == 0) {
        rb_error_set(err, EINVAL, "%s: json: pseudo-filenames are not supported", path);
        return NULL;
    }
    if (!top)
        o.write = false;
    /* O_NONBLOCK: a backing name from an untrusted header may name a FIFO,
     * whose open would wait forever for a writer; it is refused below. */
    fd = open(path, (o.write ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        rb_error_set(err, errno, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) < 0 || (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))) {
        rb_error_set(err, EINVAL, "%s: not a regular file or block device", path);
        close(fd);
        return NULL;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    /* Every layer is locked as QEMU locks it, before a byte is read: the
     * top one written, or any one read, is refused while another process
     * writes it (or, for a writer, reads it); -U only marks it read. */
    if (rb_image_lock_mode(fd, path, o.write ? RB_LOCK_WRITE
                                    : o.force_share ? RB_LOCK_SHARE_ALL : RB_LOCK_READ,
                           err) < 0) {
        close(fd);
        return NULL;
    }
    fmt = o.format ? o.format : rb_image_probe(fd);
    struct rb_image *img;
    if (strcmp(fmt, "qcow2") == 0) {
        img = rb_qcow2_open(path, fd, &o, err);
    } else if (strcmp(fmt, "raw") == 0) {
        img = rb_raw_open(path, fd, &o, err);
    } else if (!o.format) {
        rb_error_set(err, EMEDIUMTYPE, "%s: this is a %s image; rblock reads qcow2 and raw "
                     "(use -f raw to read it as raw)", path, fmt);
        close(fd);
        return NULL;
    } else {
        rb_error_set(err, EINVAL, "%s: unknown format '%s' (known: raw, qcow2)", path, fmt);
        close(fd);
        return NULL;
    }
    if (img) {
        img->dev = st.st_dev;
        img->ino = st.st_ino;
        img->format_guessed = !o.format;
    }
    return img;
}

struct rb_image *rb_image_open(const char *path, const struct rb_open_opts *opts,
                               struct rb_error *err)
{
    static const struct rb_open_opts defaults;
    struct rb_image *top, *cur;
    unsigned max_depth, depth = 0;

    if (!opts)
        opts = &defaults;
    max_depth = opts->max_depth ? opts->max_depth : RB_MAX_CHAIN;
    top = open_one(path, opts, true, err);
    if (!top)
        return NULL;
    if (opts->no_backing) {
        /* say where the backing file would be, without opening it */
        if (top->backing_name && strncmp(top->backing_name, "json:", 5) != 0 &&
            !(top->backing_path = resolve_backing(top->filename, top->backing_name))) {
            rb_error_set(err, ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        return top;
    }

    for (cur = top; cur->backing_name; cur = cur->backing) {
        struct rb_open_opts bo = *opts;

        if (++depth > max_depth) {
            rb_error_set(err, ELOOP, "%s: backing chain is deeper than %u layers",
                         path, max_depth);
            goto fail;
        }
        if (strncmp(cur->backing_name, "json:", 5) == 0) {
            rb_error_set(err, EINVAL,
                         "%s: backing file name '%s' is a json: pseudo-filename, "
                         "which is not supported", cur->filename, cur->backing_name);
            goto fail;
        }
        cur->backing_path = resolve_backing(cur->filename, cur->backing_name);
        if (!cur->backing_path) {
            rb_error_set(err, ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        /* The recorded backing format is used and a backing file is never
         * probed: a raw disk a guest wrote can hold a qcow2 header naming
         * any host file.  Without a recorded format (images of QEMU
         * before -F was required) it is raw, and refused when it looks
         * like qcow2, with the fix in the message. */
        bo.format = cur->backing_format ? cur->backing_format : "raw";
        cur->backing = open_one(cur->backing_path, &bo, false, err);
        if (!cur->backing) {
            rb_error_prefix(err, "%s: cannot open backing file", cur->filename);
            goto fail;
        }
        const char *seen = cur->backing_format ? "raw" : probe_layer(cur->backing);
        if (strcmp(seen, "qcow2") == 0) {
            rb_error_set(err, EINVAL, "%s: backing file '%s' has no recorded format and "
                         "holds a qcow2 header; backing files are not probed: record "
                         "its format with 'qemu-img rebase -u -b %s -F qcow2 %s' (or -F raw)",
                         cur->filename, cur->backing_name, cur->backing_name,
                         cur->filename);
            goto fail;
        }
        if (strcmp(seen, "raw") != 0) {
            rb_error_set(err, EMEDIUMTYPE, "%s: backing file '%s' has no recorded format "
                         "and is a %s image, which rblock does not read; backing files are "
                         "not probed: to read it as raw, record that with 'qemu-img rebase "
                         "-u -b %s -F raw %s'", cur->filename, cur->backing_name, seen,
                         cur->backing_name, cur->filename);
            goto fail;
        }
        /* A loop: the new layer is a file already in the chain. */
        for (struct rb_image *p = top; p != cur->backing; p = p->backing) {
            if (p->dev == cur->backing->dev && p->ino == cur->backing->ino) {
                rb_error_set(err, ELOOP, "%s: backing chain has a loop: '%s' is "
                             "its own backing file", path, cur->backing_path);
                goto fail;
            }
        }
    }
    return top;
fail:
    rb_image_close(top);
    return NULL;
}

void rb_image_close(struct rb_image *img)
{
    while (img) {
        struct rb_image *next = img->backing;
        if (img->ops && img->ops->close)
            img->ops->close(img);
        free(img->filename);
        free(img->backing_name);
        free(img->backing_format);
        free(img->backing_path);
        free(img);
        img = next;
    }
}

unsigned rb_image_chain_length(const struct rb_image *img)
{
    unsigned n = 0;

    for (; img; img = img->backing)
        n++;
    return n;
}

struct rb_image *rb_image_layer(struct rb_image *img, unsigned depth)
{
    while (img && depth--)
        img = img->backing;
    return img;
}

static int check_range(struct rb_image *img, uint64_t off, uint64_t len, int code,
                       struct rb_error *err)
{
    uint64_t end;

    if (!rb_add_ok(off, len, &end) || end > img->size)
        return rb_error_set(err, code,
                            "%s: request at offset %" PRIu64 " length %" PRIu64
                            " is past the end of the image (size %" PRIu64 ")",
                            img->filename, off, len, img->size);
    return 0;
}

static int check_writable(struct rb_image *img, struct rb_error *err)
{
    if (img->read_only)
        return rb_error_set(err, EROFS, "%s: image is read-only", img->filename);
    return 0;
}

int rb_image_read(struct rb_image *img, void *buf, uint64_t off, size_t len,
                  struct rb_error *err)
{
    int ret = check_range(img, off, len, EINVAL, err);

    if (ret < 0 || len == 0)
        return ret;
    return img->ops->read(img, buf, off, len, err);
}

int rb_image_read_zeropad(struct rb_image *img, void *buf, uint64_t off, size_t len,
                          struct rb_error *err)
{
    size_t in = 0;

    if (off < img->size)
        in = img->size - off < len ? (size_t)(img->size - off) : len;
    if (in < len)
        memset((uint8_t *)buf + in, 0, len - in);
    if (in == 0)
        return 0;
    return img->ops->read(img, buf, off, in, err);
}

int rb_image_write(struct rb_image *img, const void *buf, uint64_t off, size_t len,
                   unsigned flags, struct rb_error *err)
{
    int ret = check_writable(img, err);

    if (ret == 0)
        ret = check_range(img, off, len, ENOSPC, err);
    if (ret < 0 || len == 0)
        return ret;
    if (!img->ops->write)
        return rb_error_set(err, ENOTSUP, "%s: format does not support writing",
                            img->filename);
    return img->ops->write(img, buf, off, len, flags, err);
}

int rb_image_write_zeroes(struct rb_image *img, uint64_t off, uint64_t len,
                          unsigned flags, struct rb_error *err)
{
    int ret = check_writable(img, err);

    if (ret == 0)
        ret = check_range(img, off, len, ENOSPC, err);
    if (ret < 0 || len == 0)
        return ret;
    if (!img->ops->write_zeroes)
        return rb_error_set(err, ENOTSUP, "%s: format does not support writing",
                            img->filename);
    return img->ops->write_zeroes(img, off, len, flags, err);
}

int rb_image_trim(struct rb_image *img, uint64_t off, uint64_t len, struct rb_error *err)
{
    int ret = check_writable(img, err);

    if (ret == 0)
        ret = check_range(img, off, len, ENOSPC, err);
    if (ret < 0 || len == 0)
        return ret;
    if (!img->ops->trim)
        return 0; /* discard is advisory */
    return img->ops->trim(img, off, len, err);
}

int rb_image_flush(struct rb_image *img, struct rb_error *err)
{
    if (img->read_only || !img->ops->flush)
        return 0;
    return img->ops->flush(img, err);
}

int rb_image_block_status_top(struct rb_image *img, uint64_t off, uint64_t len,
                              struct rb_extent *ext, struct rb_error *err)
{
    int ret = check_range(img, off, len, EINVAL, err);

    if (ret < 0)
        return ret;
    if (len == 0)
        return rb_error_set(err, EINVAL, "%s: block status of an empty range",
                            img->filename);
    memset(ext, 0, sizeof(*ext));
    ret = img->ops->block_status(img, off, len, ext, err);
    if (ret == 0 && (ext->length == 0 || ext->length > len))
        return rb_error_set(err, EIO, "%s: driver returned a bad extent", img->filename);
    return ret;
}

int rb_image_block_status(struct rb_image *img, uint64_t off, uint64_t len,
                          struct rb_extent *ext, struct rb_error *err)
{
    struct rb_image *layer = img;
    unsigned depth = 0;
    int ret;

    ret = rb_image_block_status_top(img, off, len, ext, err);
    if (ret < 0)
        return ret;
    /*
     * As qemu's bdrv_co_block_status + qemu-img map: a layer defines the
     * range when it reports data or zeros.  Otherwise, without a backing
     * file (or past the end of a shorter backing) the range reads as zeros
     * and is reported at this layer's depth, not allocated, keeping a host
     * offset the driver gave (an allocated cluster's unallocated
     * subcluster).  Else ask the backing for the same range, which only
     * ever shrinks, so the answer holds for the whole extent.
     */
    for (;;) {
        struct rb_image *next = layer->backing;
        uint64_t n = ext->length;

        if (ext->flags & (RB_BS_DATA | RB_BS_ZERO)) {
            ext->flags |= RB_BS_ALLOCATED;
            break;
        }
        ext->flags &= ~(unsigned)RB_BS_ALLOCATED;
        if (!next || off >= next->size) {
            ext->flags |= RB_BS_ZERO;
            break;
        }
        if (n > next->size - off)
            n = next->size - off;
        layer = next;
        depth++;
        memset(ext, 0, sizeof(*ext));
        ret = layer->ops->block_status(layer, off, n, ext, err);
        if (ret < 0)
            return ret;
        if (ext->length == 0 || ext->length > n)
            return rb_error_set(err, EIO, "%s: driver returned a bad extent",
                                layer->filename);
    }
    ext->depth = depth;
    if (!(ext->flags & RB_BS_OFFSET_VALID))
        ext->host_off = 0;
    return 0;
}
