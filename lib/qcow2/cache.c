/* SPDX-License-Identifier: MIT */
/*
 * cache.c - bounded metadata cache for cluster-sized tables (L2 tables,
 * refcount blocks).
 *
 * A fixed array of slots (count = max_bytes / entry_bytes, at least 2) is
 * set up at creation: memory never grows past it.  The table memory is an
 * anonymous mapping, so a slot costs RAM only once it is first used (a
 * small image never touches most of a large cache).  Lookup is by host offset in a
 * hash table; eviction takes the least recently used unpinned slot.  Dirty
 * slots are written back on eviction and on flush, and that is where the
 * write ordering of DESIGN.md section 4 is kept:
 *
 *  - dependency: before any dirty slot of a cache is written, the cache it
 *    depends on is written back and (with barriers) fdatasync'ed, so an L2
 *    table never reaches the disk before the refcount block that accounts
 *    for the cluster it references (refcount may be too high, never low);
 *  - depends-on-flush: before the next write-back, the given file (the data
 *    file) is fdatasync'ed, so an L2 entry never reaches the disk before
 *    the guest data it points at.
 *
 * Not thread-safe by itself: the caller holds qcow2_state.lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "qcow2/qcow2.h"
#include "rblock/io.h"

#define NONE (-1)
#define NO_OFF UINT64_MAX

struct slot {
    uint64_t off;    /* NO_OFF when free */
    uint32_t pins;
    bool dirty;
    bool dropped;    /* discarded while pinned: free at the last put */
    int32_t hnext;   /* hash chain, or free list */
    int32_t prev, next; /* LRU list: head = most recent */
};

struct qcow2_cache {
    int fd;
    size_t entry_bytes;
    int32_t n;
    uint8_t *mem;      /* n * entry_bytes, mmap'ed; MAP_FAILED when none */
    struct slot *slots;
    int32_t *buckets;
    uint32_t nbuckets; /* power of two */
    int32_t free_head; /* released slots */
    int32_t fresh;     /* slots [fresh, n) were never used */
    int32_t lru_head, lru_tail;
    struct qcow2_cache *dep;
    bool barriers;
    int flush_fd[2]; /* files to sync before the next write-back, -1 none */
};

static uint32_t hash_off(const struct qcow2_cache *c, uint64_t off)
{
    uint64_t h = (off / 512) * 0x9e3779b97f4a7c15ull;

    return (uint32_t)(h >> 32) & (c->nbuckets - 1);
}

struct qcow2_cache *qcow2_cache_new(int fd, size_t entry_bytes, size_t max_bytes)
{
    struct qcow2_cache *c = calloc(1, sizeof(*c));
    size_t n = entry_bytes ? max_bytes / entry_bytes : 0;

    if (!c || entry_bytes == 0)
        goto fail;
    if (n < 2)
        n = 2;
    if (n > (1u << 24))
        n = 1u << 24;
    c->fd = fd;
    c->entry_bytes = entry_bytes;
    c->n = (int32_t)n;
    c->nbuckets = 1;
    while (c->nbuckets < n)
        c->nbuckets <<= 1;
    c->mem = mmap(NULL, n * entry_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                  -1, 0);
    c->slots = calloc(n, sizeof(*c->slots));
    c->buckets = malloc(c->nbuckets * sizeof(*c->buckets));
    if (c->mem == MAP_FAILED || !c->slots || !c->buckets)
        goto fail;
    memset(c->buckets, 0xff, c->nbuckets * sizeof(*c->buckets)); /* all NONE */
    c->free_head = NONE;
    c->fresh = 0;
    c->lru_head = c->lru_tail = NONE;
    c->barriers = true;
    c->flush_fd[0] = c->flush_fd[1] = -1;
    return c;
fail:
    if (c) {
        if (c->mem && c->mem != MAP_FAILED)
            munmap(c->mem, (size_t)c->n * c->entry_bytes);
        free(c->slots);
        free(c->buckets);
        free(c);
    }
    return NULL;
}

void qcow2_cache_free(struct qcow2_cache *c)
{
    if (!c)
        return;
    munmap(c->mem, (size_t)c->n * c->entry_bytes);
    free(c->slots);
    free(c->buckets);
    free(c);
}

static void *slot_mem(struct qcow2_cache *c, int32_t i)
{
    return c->mem + (size_t)i * c->entry_bytes;
}

static int32_t slot_of(struct qcow2_cache *c, const void *table)
{
    size_t d = (size_t)((const uint8_t *)table - c->mem);

    return (int32_t)(d / c->entry_bytes);
}

static void lru_unlink(struct qcow2_cache *c, int32_t i)
{
    struct slot *s = &c->slots[i];

    if (s->prev != NONE)
        c->slots[s->prev].next = s->next;
    else
        c->lru_head = s->next;
    if (s->next != NONE)
        c->slots[s->next].prev = s->prev;
    else
        c->lru_tail = s->prev;
    s->prev = s->next = NONE;
}

static void lru_push_head(struct qcow2_cache *c, int32_t i)
{
    struct slot *s = &c->slots[i];

    s->prev = NONE;
    s->next = c->lru_head;
    if (c->lru_head != NONE)
        c->slots[c->lru_head].prev = i;
    c->lru_head = i;
    if (c->lru_tail == NONE)
        c->lru_tail = i;
}

static int32_t lookup(struct qcow2_cache *c, uint64_t off)
{
    for (int32_t i = c->buckets[hash_off(c, off)]; i != NONE; i = c->slots[i].hnext) {
        if (c->slots[i].off == off)
            return i;
    }
    return NONE;
}

static void hash_remove(struct qcow2_cache *c, int32_t i)
{
    int32_t *pp = &c->buckets[hash_off(c, c->slots[i].off)];

    while (*pp != i)
        pp = &c->slots[*pp].hnext;
    *pp = c->slots[i].hnext;
}

/* Return slot @i (removed from hash and LRU) to the free list. */
static void release_slot(struct qcow2_cache *c, int32_t i)
{
    hash_remove(c, i);
    lru_unlink(c, i);
    c->slots[i] = (struct slot){.off = NO_OFF, .hnext = c->free_head,
                                .prev = NONE, .next = NONE};
    c->free_head = i;
}

/* Everything that must be durable before this cache writes a slot. */
static int before_writeback(struct qcow2_cache *c)
{
    int ret;

    if (c->dep && qcow2_cache_has_dirty(c->dep)) {
        ret = qcow2_cache_write(c->dep);
        if (ret < 0)
            return ret;
        if (c->barriers && (ret = rb_io_sync(c->dep->fd)) < 0)
            return ret;
    }
    for (int k = 0; k < 2; k++) {
        if (c->flush_fd[k] >= 0) {
            if (c->barriers && (ret = rb_io_sync(c->flush_fd[k])) < 0)
                return ret;
            c->flush_fd[k] = -1;
        }
    }
    return 0;
}

static int write_slot(struct qcow2_cache *c, int32_t i)
{
    int ret;

    if (!c->slots[i].dirty)
        return 0;
    ret = before_writeback(c);
    if (ret < 0)
        return ret;
    ret = rb_io_pwrite(c->fd, slot_mem(c, i), c->entry_bytes, c->slots[i].off);
    if (ret < 0)
        return ret;
    c->slots[i].dirty = false;
    return 0;
}

/* A free slot, evicting the least recently used unpinned one if needed. */
static int get_slot(struct qcow2_cache *c, int32_t *out)
{
    int32_t i;
    int ret;

    if (c->free_head != NONE) {
        i = c->free_head;
        c->free_head = c->slots[i].hnext;
        *out = i;
        return 0;
    }
    if (c->fresh < c->n) {
        *out = c->fresh++;
        return 0;
    }
    for (i = c->lru_tail; i != NONE; i = c->slots[i].prev) {
        if (c->slots[i].pins == 0)
            break;
    }
    if (i == NONE)
        return -ENOMEM; /* every slot pinned: a caller holds too many */
    ret = write_slot(c, i);
    if (ret < 0)
        return ret;
    release_slot(c, i);
    c->free_head = c->slots[i].hnext;
    *out = i;
    return 0;
}

static int cache_get(struct qcow2_cache *c, uint64_t off, void **table, bool read)
{
    int32_t i = lookup(c, off);
    int ret;

    if (i == NONE) {
        ret = get_slot(c, &i);
        if (ret < 0)
            return ret;
        if (read) {
            ret = rb_io_pread(c->fd, slot_mem(c, i), c->entry_bytes, off);
            if (ret < 0) {
                c->slots[i].hnext = c->free_head;
                c->free_head = i;
                return ret;
            }
        }
        c->slots[i] = (struct slot){.off = off, .prev = NONE, .next = NONE};
        c->slots[i].hnext = c->buckets[hash_off(c, off)];
        c->buckets[hash_off(c, off)] = i;
    } else {
        lru_unlink(c, i);
    }
    if (!read) {
        memset(slot_mem(c, i), 0, c->entry_bytes);
        c->slots[i].dropped = false;
    }
    lru_push_head(c, i);
    c->slots[i].pins++;
    *table = slot_mem(c, i);
    return 0;
}

int qcow2_cache_get(struct qcow2_cache *c, uint64_t host_off, void **table)
{
    return cache_get(c, host_off, table, true);
}

int qcow2_cache_get_empty(struct qcow2_cache *c, uint64_t host_off, void **table)
{
    return cache_get(c, host_off, table, false);
}

void qcow2_cache_put(struct qcow2_cache *c, void *table)
{
    int32_t i;

    if (!table)
        return;
    i = slot_of(c, table);
    if (c->slots[i].pins > 0)
        c->slots[i].pins--;
    if (c->slots[i].pins == 0 && c->slots[i].dropped)
        release_slot(c, i);
}

void qcow2_cache_mark_dirty(struct qcow2_cache *c, void *table)
{
    c->slots[slot_of(c, table)].dirty = true;
}

void qcow2_cache_set_dependency(struct qcow2_cache *c, struct qcow2_cache *dep)
{
    c->dep = dep;
}

void qcow2_cache_set_barriers(struct qcow2_cache *c, bool barriers)
{
    c->barriers = barriers;
}

void qcow2_cache_depends_on_flush(struct qcow2_cache *c, int fd)
{
    if (c->flush_fd[0] == fd || c->flush_fd[1] == fd)
        return;
    if (c->flush_fd[0] < 0)
        c->flush_fd[0] = fd;
    else
        c->flush_fd[1] = fd;
}

bool qcow2_cache_has_dirty(const struct qcow2_cache *c)
{
    for (int32_t i = c->lru_head; i != NONE; i = c->slots[i].next) {
        if (c->slots[i].dirty)
            return true;
    }
    return false;
}

int qcow2_cache_write(struct qcow2_cache *c)
{
    int ret = 0;

    for (int32_t i = c->lru_head; i != NONE; i = c->slots[i].next) {
        int r = write_slot(c, i);
        if (r < 0 && ret == 0)
            ret = r; /* keep going: write what can be written */
    }
    return ret;
}

int qcow2_cache_flush(struct qcow2_cache *c)
{
    int ret = qcow2_cache_write(c);

    if (ret == 0 && c->barriers)
        ret = rb_io_sync(c->fd);
    return ret;
}

void qcow2_cache_discard(struct qcow2_cache *c, uint64_t host_off)
{
    int32_t i = lookup(c, host_off);

    if (i == NONE)
        return;
    c->slots[i].dirty = false;
    if (c->slots[i].pins)
        c->slots[i].dropped = true;
    else
        release_slot(c, i);
}

size_t qcow2_cache_entries(const struct qcow2_cache *c)
{
    return (size_t)c->n;
}
