/* SPDX-License-Identifier: MIT */
/*
 * fault.c - fault injection for the crash tests (io.h: rb_io_fault_*):
 * fail or simulate a power loss at the Nth write or sync, with an undo
 * log of everything not yet synced.  io.c routes its writes and syncs here
 * only while a plan is set.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rblock/io.h"
#include "util/fault.h"

bool rb_fault_on; /* a plan is set: the only cost without one */

/*
 * Fault injection (see io.h).  Everything below runs only while a plan is
 * set, under fault_lock, so the undo log and the file it records always
 * agree: an entry is logged and its write done in one critical section.
 */
struct undo_file {
    dev_t dev;
    ino_t ino;
    int fd;               /* our own dup: the caller may close its fd */
    uint64_t synced_size; /* size at the first unsynced write */
};

struct undo_entry {
    size_t file;
    uint64_t off, len;
    uint64_t old_at;  /* spill offset of the old bytes */
    uint64_t new_at;  /* spill offset of the new bytes, NO_DATA: zeros */
};
#define NO_DATA UINT64_MAX

static pthread_mutex_t fault_lock = PTHREAD_MUTEX_INITIALIZER;
static struct rb_io_fault_plan fault_plan;
static uint64_t fault_writes, fault_syncs;
static bool fault_overflowed;
static bool fault_report_registered;
static int spill_fd = -1;
static uint64_t spill_end;
static struct undo_file *ufiles;
static size_t n_ufiles;
static struct undo_entry *uentries;
static size_t n_uentries, cap_uentries;

static bool power_mode(void)
{
    return fault_plan.mode == RB_IO_FAULT_POWER_WRITE ||
           fault_plan.mode == RB_IO_FAULT_POWER_SYNC;
}

static void log_reset(void)
{
    for (size_t i = 0; i < n_ufiles; i++)
        close(ufiles[i].fd);
    free(ufiles);
    free(uentries);
    ufiles = NULL;
    uentries = NULL;
    n_ufiles = n_uentries = cap_uentries = 0;
    spill_end = 0;
    if (spill_fd >= 0 && ftruncate(spill_fd, 0) < 0) {
        /* the space is reused from offset 0 anyway */
    }
}

/* Logging stops for good when the cap is hit: a partial log could not
 * undo consistently, so a power loss then keeps everything (a kill -9). */
static void log_overflow(void)
{
    fault_overflowed = true;
    log_reset();
}

/* Copy @len bytes at @off of @src (zeros past its end) to the spill file. */
static int spill_copy_from(int src, uint64_t off, uint64_t len, uint64_t *at)
{
    uint8_t buf[65536];

    *at = spill_end;
    while (len > 0) {
        size_t n = len < sizeof(buf) ? (size_t)len : sizeof(buf);
        int ret = rb_io_pread(src, buf, n, off);
        if (ret < 0)
            return ret;
        ret = rb_io_sys_pwrite(spill_fd, buf, n, spill_end);
        if (ret < 0)
            return ret;
        spill_end += n;
        off += n;
        len -= n;
    }
    return 0;
}

/* Copy @len bytes at spill offset @at (zeros when NO_DATA) to @dst. */
static void spill_copy_to(int dst, uint64_t at, uint64_t off, uint64_t len)
{
    static const uint8_t zeros[65536];
    uint8_t buf[65536];

    while (len > 0) {
        size_t n = len < sizeof(buf) ? (size_t)len : sizeof(buf);
        const uint8_t *p = zeros;
        if (at != NO_DATA) {
            if (rb_io_pread(spill_fd, buf, n, at) < 0)
                _exit(RB_IO_FAULT_EXIT + 1);
            p = buf;
            at += n;
        }
        if (rb_io_sys_pwrite(dst, p, n, off) < 0)
            _exit(RB_IO_FAULT_EXIT + 1);
        off += n;
        len -= n;
    }
}

static ssize_t ufile_find(const struct stat *st)
{
    for (size_t i = 0; i < n_ufiles; i++) {
        if (ufiles[i].dev == st->st_dev && ufiles[i].ino == st->st_ino)
            return (ssize_t)i;
    }
    return -1;
}

/* Record the old (and new) bytes of a write before it is done. */
static int log_write(int op, int fd, const void *buf, uint64_t len, uint64_t off)
{
    struct stat st;
    struct undo_entry e;
    ssize_t f;
    int fl, ret;

    if (fault_overflowed || !power_mode())
        return 0;
    fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & (O_SYNC | O_DSYNC)))
        return 0; /* durable as soon as written */
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        return 0;
    if (op == RB_IO_OP_TRUNCATE) { /* shrinking loses the tail: save it */
        if (len >= (uint64_t)st.st_size && ufile_find(&st) >= 0)
            return 0;
        off = len < (uint64_t)st.st_size ? len : (uint64_t)st.st_size;
        len = (uint64_t)st.st_size - off;
    }
    if (spill_end + 2 * len > RB_IO_FAULT_LOG_MAX || n_uentries >= RB_IO_FAULT_ENTRIES_MAX) {
        log_overflow();
        return 0;
    }
    f = ufile_find(&st);
    if (f < 0) {
        struct undo_file *nf = realloc(ufiles, (n_ufiles + 1) * sizeof(*nf));
        int dupfd;
        if (!nf)
            return -ENOMEM;
        ufiles = nf;
        dupfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (dupfd < 0)
            return -errno;
        ufiles[n_ufiles] = (struct undo_file){st.st_dev, st.st_ino, dupfd, (uint64_t)st.st_size};
        f = (ssize_t)n_ufiles++;
    }
    if (len == 0)
        return 0;
    if (n_uentries == cap_uentries) {
        size_t cap = cap_uentries ? 2 * cap_uentries : 256;
        struct undo_entry *ne = realloc(uentries, cap * sizeof(*ne));
        if (!ne)
            return -ENOMEM;
        uentries = ne;
        cap_uentries = cap;
    }
    e = (struct undo_entry){.file = (size_t)f, .off = off, .len = len, .new_at = NO_DATA};
    ret = spill_copy_from(fd, off, len, &e.old_at);
    if (ret < 0)
        return ret;
    if (op == RB_IO_OP_PWRITE) {
        e.new_at = spill_end;
        ret = rb_io_sys_pwrite(spill_fd, buf, (size_t)len, spill_end);
        if (ret < 0)
            return ret;
        spill_end += len;
    }
    uentries[n_uentries++] = e;
    return 0;
}

/* A successful sync of a file makes its logged writes durable. */
static void log_synced(int fd)
{
    struct stat st;
    ssize_t f;
    size_t j = 0;

    if (n_ufiles == 0 || fstat(fd, &st) < 0 || (f = ufile_find(&st)) < 0)
        return;
    for (size_t i = 0; i < n_uentries; i++) {
        if (uentries[i].file == (size_t)f)
            continue;
        uentries[j] = uentries[i];
        if (uentries[j].file > (size_t)f)
            uentries[j].file--;
        j++;
    }
    n_uentries = j;
    close(ufiles[f].fd);
    memmove(&ufiles[f], &ufiles[f + 1], (n_ufiles - (size_t)f - 1) * sizeof(*ufiles));
    n_ufiles--;
    if (n_uentries == 0) {
        spill_end = 0;
        if (ftruncate(spill_fd, 0) < 0) {
            /* reused from offset 0 anyway */
        }
    }
}

static uint64_t rng_next(uint64_t *x) /* splitmix64 */
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The power goes out: undo what was not synced, make that durable, die. */
__attribute__((noreturn)) static void power_loss(void)
{
    uint64_t rng = fault_plan.seed;
    bool keep_some = rng != 0;

    for (size_t i = n_uentries; i-- > 0;) {
        const struct undo_entry *e = &uentries[i];
        spill_copy_to(ufiles[e->file].fd, e->old_at, e->off, e->len);
    }
    for (size_t i = 0; keep_some && i < n_uentries; i++) {
        struct undo_entry *e = &uentries[i];
        if (rng_next(&rng) & 1) {
            spill_copy_to(ufiles[e->file].fd, e->new_at, e->off, e->len);
            if (e->off + e->len > ufiles[e->file].synced_size)
                ufiles[e->file].synced_size = e->off + e->len;
        }
    }
    for (size_t i = 0; i < n_ufiles; i++) {
        struct stat st;
        if (fstat(ufiles[i].fd, &st) == 0 && S_ISREG(st.st_mode) &&
            (uint64_t)st.st_size > ufiles[i].synced_size &&
            rb_io_sys_truncate(ufiles[i].fd, ufiles[i].synced_size) < 0)
            _exit(RB_IO_FAULT_EXIT + 1);
        if (fsync(ufiles[i].fd) < 0)
            _exit(RB_IO_FAULT_EXIT + 1);
    }
    _exit(RB_IO_FAULT_EXIT);
}

static bool fault_hits(uint64_t n)
{
    return n == fault_plan.n || (!fault_plan.once && n > fault_plan.n);
}

/* One trace line (fault_lock held); best effort, like fault_report. */
static void fault_trace(const char *what, uint64_t n, int fd, uint64_t off, uint64_t len)
{
    struct stat st;
    char line[160];
    int k;

    if (fstat(fd, &st) < 0)
        st.st_ino = 0;
    if (len == UINT64_MAX)
        k = snprintf(line, sizeof(line), "rblock-fault: %s %" PRIu64 " ino=%" PRIu64 "\n", what,
                     n, (uint64_t)st.st_ino);
    else
        k = snprintf(line, sizeof(line),
                     "rblock-fault: %s %" PRIu64 " ino=%" PRIu64 " off=%" PRIu64 " len=%" PRIu64
                     "\n",
                     what, n, (uint64_t)st.st_ino, off, len);
    if (k > 0 && write(2, line, (size_t)k) < 0) {
        /* a trace that cannot be written is only missing lines */
    }
}

int rb_fault_write(int op, int fd, const void *buf, uint64_t len, uint64_t off,
                       bool may_unmap)
{
    int ret;

    pthread_mutex_lock(&fault_lock);
    uint64_t n = ++fault_writes;
    if (fault_plan.trace)
        fault_trace("write", n, fd, op == RB_IO_OP_TRUNCATE ? len : off, op == RB_IO_OP_TRUNCATE ? 0 : len);
    if (fault_plan.mode == RB_IO_FAULT_FAIL_WRITE && fault_hits(n)) {
        pthread_mutex_unlock(&fault_lock);
        return -EIO;
    }
    if (fault_plan.mode == RB_IO_FAULT_POWER_WRITE && n == fault_plan.n)
        power_loss();
    ret = log_write(op, fd, buf, len, off);
    if (ret == 0) {
        switch (op) {
        case RB_IO_OP_PWRITE: ret = rb_io_sys_pwrite(fd, buf, (size_t)len, off); break;
        case RB_IO_OP_ZERO: ret = rb_io_sys_zero(fd, off, len, may_unmap); break;
        case RB_IO_OP_PUNCH: ret = rb_io_sys_punch(fd, off, len); break;
        default: ret = rb_io_sys_truncate(fd, len); break;
        }
    }
    pthread_mutex_unlock(&fault_lock);
    return ret;
}

int rb_fault_sync(int fd)
{
    int ret;

    pthread_mutex_lock(&fault_lock);
    uint64_t n = ++fault_syncs;
    if (fault_plan.trace)
        fault_trace("sync", n, fd, 0, UINT64_MAX);
    if (fault_plan.mode == RB_IO_FAULT_FAIL_SYNC && fault_hits(n)) {
        pthread_mutex_unlock(&fault_lock);
        return -EIO;
    }
    if (fault_plan.mode == RB_IO_FAULT_POWER_SYNC && n == fault_plan.n)
        power_loss();
    ret = rb_io_sys_sync(fd);
    if (ret == 0)
        log_synced(fd);
    pthread_mutex_unlock(&fault_lock);
    return ret;
}

static void fault_report(void)
{
    uint64_t w, s;
    bool over;
    char line[128];
    int n;

    rb_io_fault_counts(&w, &s, &over);
    n = snprintf(line, sizeof(line), "rblock-fault: writes=%" PRIu64 " syncs=%" PRIu64 "%s\n",
                 w, s, over ? " log-overflowed" : "");
    if (n > 0 && write(2, line, (size_t)n) < 0) {
        /* nothing to do at exit */
    }
}

int rb_io_fault_set(const struct rb_io_fault_plan *plan)
{
    struct rb_io_fault_plan p = plan ? *plan : (struct rb_io_fault_plan){0};

    if ((unsigned)p.mode > RB_IO_FAULT_POWER_SYNC ||
        (p.mode > RB_IO_FAULT_COUNT && p.n == 0))
        return -EINVAL;
    pthread_mutex_lock(&fault_lock);
    log_reset();
    fault_writes = fault_syncs = 0;
    fault_overflowed = false;
    fault_plan = p;
    if ((p.mode == RB_IO_FAULT_POWER_WRITE || p.mode == RB_IO_FAULT_POWER_SYNC) &&
        spill_fd < 0) {
        spill_fd = open(P_tmpdir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (spill_fd < 0) {
            char path[] = P_tmpdir "/rblock-undo-XXXXXX";
            spill_fd = mkostemp(path, O_CLOEXEC);
            if (spill_fd >= 0)
                unlink(path);
        }
        if (spill_fd < 0) {
            int ret = -errno;
            fault_plan.mode = RB_IO_FAULT_OFF;
            pthread_mutex_unlock(&fault_lock);
            return ret;
        }
    }
    if (p.report_at_exit && !fault_report_registered)
        fault_report_registered = atexit(fault_report) == 0;
    rb_fault_on = p.mode != RB_IO_FAULT_OFF;
    pthread_mutex_unlock(&fault_lock);
    return 0;
}

void rb_io_fault_counts(uint64_t *writes, uint64_t *syncs, bool *overflowed)
{
    pthread_mutex_lock(&fault_lock);
    *writes = fault_writes;
    *syncs = fault_syncs;
    if (overflowed)
        *overflowed = fault_overflowed;
    pthread_mutex_unlock(&fault_lock);
}

static bool parse_u64(const char *s, const char **end, uint64_t *v)
{
    char *e;

    if (*s < '0' || *s > '9')
        return false;
    errno = 0;
    *v = strtoull(s, &e, 10);
    *end = e;
    return errno == 0;
}

int rb_io_fault_parse(const char *spec, struct rb_io_fault_plan *plan)
{
    static const struct {
        const char *name;
        enum rb_io_fault_mode mode;
    } modes[] = {
        {"fail-write:", RB_IO_FAULT_FAIL_WRITE},   {"fail-sync:", RB_IO_FAULT_FAIL_SYNC},
        {"power-write:", RB_IO_FAULT_POWER_WRITE}, {"power-sync:", RB_IO_FAULT_POWER_SYNC},
    };
    const char *p;

    *plan = (struct rb_io_fault_plan){.report_at_exit = true};
    if (strcmp(spec, "count") == 0 || strcmp(spec, "trace") == 0) {
        plan->mode = RB_IO_FAULT_COUNT;
        plan->trace = spec[0] == 't';
        return 0;
    }
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        size_t k = strlen(modes[i].name);
        if (strncmp(spec, modes[i].name, k) != 0)
            continue;
        plan->mode = modes[i].mode;
        if (!parse_u64(spec + k, &p, &plan->n) || plan->n == 0)
            return -EINVAL;
        if (*p == 0)
            return 0;
        if (plan->mode <= RB_IO_FAULT_FAIL_SYNC)
            return strcmp(p, ":once") == 0 ? (plan->once = true, 0) : -EINVAL;
        if (*p != ':' || !parse_u64(p + 1, &p, &plan->seed) || plan->seed == 0 || *p)
            return -EINVAL;
        return 0;
    }
    return -EINVAL;
}
