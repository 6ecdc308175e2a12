/* The sibling registry (siblings.h): a hash table of tags, chained, under one mutex. Tags
 * are random, so their first bytes (part of the route) spread them over the buckets and a
 * route finds its tag's bucket too.
 *
 * Entries live in blocks of their own (mmap), not on the malloc heap: an entry outlives its
 * session by GW_SIB_GRACE_S, and ~200-byte chunks left among a burst's freed session memory
 * pinned a page each (malloc_trim cannot give a page back that holds a live chunk): the
 * soak measured ~300 KiB of anonymous memory per 200 sessions for 37 KiB of entries. */
#include "siblings.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define BUCKETS 4096
#define USER_MAX 64 /* the session keeps 63 characters of USER too */
#define BACKEND_MAX 64

struct block;

typedef struct entry {
    struct entry *next;
    struct block *blk; /* the block holding it */
    uint8_t tag[GW_SIB_TAG_LEN];
    gw_addr client;
    bool logged_in, ended;
    uint64_t expires; /* ended: when it stops being a sibling */
    char user[USER_MAX], backend[BACKEND_MAX];
} entry;

/* A block: this header, then its entries, handed out in address order (untouched pages
 * stay unmapped) and reused from its free list; unmapped once empty. */
#define BLOCK_BYTES (64 * 1024)

typedef struct block {
    struct block *next, *prev; /* the blocks with room, the one to take from first */
    entry *free;               /* freed entries of this block */
    unsigned used, fresh;      /* entries held; entries ever handed out (a prefix) */
    size_t touched;            /* bytes of the block's pages written to */
} block;

#define BLOCK_ENTRIES ((BLOCK_BYTES - sizeof(block)) / sizeof(entry))

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static entry *table[BUCKETS];
static int count;
static block *with_room; /* blocks with a free entry */
static size_t touched;   /* the blocks' touched pages: the memory the entries cost */

static entry *block_entries(block *b)
{
    return (entry *)(b + 1);
}

static size_t page_up(size_t n)
{
    static size_t page;
    if (!page) {
        long p = sysconf(_SC_PAGESIZE);
        page = p > 0 ? (size_t)p : 4096;
    }
    return (n + page - 1) / page * page;
}

static void room_add(block *b)
{
    b->prev = NULL;
    b->next = with_room;
    if (with_room)
        with_room->prev = b;
    with_room = b;
}

static void room_remove(block *b)
{
    if (b->prev)
        b->prev->next = b->next;
    else
        with_room = b->next;
    if (b->next)
        b->next->prev = b->prev;
    b->next = b->prev = NULL;
}

/* Under the lock: a zeroed entry, NULL when out of memory. */
static entry *entry_alloc(void)
{
    block *b = with_room;
    if (!b) {
        void *m =
            mmap(NULL, BLOCK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
            return NULL;
        b = m;
        b->touched = page_up(sizeof(block));
        touched += b->touched;
        room_add(b);
    }
    entry *e = b->free;
    if (e) {
        b->free = e->next;
    } else {
        e = &block_entries(b)[b->fresh++];
        size_t t = page_up((size_t)((char *)(e + 1) - (char *)b));
        if (t > b->touched) {
            touched += t - b->touched;
            b->touched = t;
        }
    }
    if (++b->used == BLOCK_ENTRIES)
        room_remove(b);
    memset(e, 0, sizeof *e);
    e->blk = b;
    return e;
}

/* Under the lock. */
static void entry_free(entry *e)
{
    block *b = e->blk;
    if (b->used-- == BLOCK_ENTRIES)
        room_add(b);
    if (b->used > 0) {
        e->next = b->free;
        b->free = e;
        return;
    }
    size_t head = page_up(sizeof(block));
    if (with_room == b && !b->next) {
        /* The last block with room stays, emptied (no mmap and munmap per session when
         * one session comes and goes). */
        if (b->touched > head)
            madvise((char *)b + head, b->touched - head, MADV_DONTNEED);
        touched -= b->touched - head;
        b->touched = head;
        b->free = NULL;
        b->fresh = 0;
        return;
    }
    room_remove(b);
    touched -= b->touched;
    munmap(b, BLOCK_BYTES);
}

static unsigned bucket(const uint8_t *tag)
{
    return ((unsigned)tag[0] << 8 | tag[1]) % BUCKETS;
}

/* Under the lock. len: GW_SIB_TAG_LEN (a tag) or GW_SIB_ROUTE_LEN (a route). */
static entry *find(const uint8_t *key, size_t len, uint64_t now_s)
{
    for (entry *e = table[bucket(key)]; e; e = e->next)
        if (memcmp(e->tag, key, len) == 0)
            return e->ended && e->expires <= now_s ? NULL : e;
    return NULL;
}

/* Under the lock: drop the expired entries of one bucket. */
static void prune(unsigned b, uint64_t now_s)
{
    for (entry **pp = &table[b]; *pp;) {
        entry *e = *pp;
        if (e->ended && e->expires <= now_s) {
            *pp = e->next;
            entry_free(e);
            count--;
        } else {
            pp = &e->next;
        }
    }
}

void gw_sib_issued(const uint8_t tag[GW_SIB_TAG_LEN], const gw_addr *client, uint64_t now_s)
{
    gw_addr addr = *client;
    gw_addr_normalize(&addr);
    addr.port = 0;
    unsigned b = bucket(tag);
    pthread_mutex_lock(&lock);
    prune(b, now_s);
    for (unsigned i = 1; count >= GW_SIB_MAX && i < BUCKETS; i++)
        prune((b + i) % BUCKETS, now_s + GW_SIB_GRACE_S); /* full: ended ones go early */
    /* Full or out of memory: not a sibling of anyone; its tickets serve its own data
     * connections only. */
    entry *n = count < GW_SIB_MAX ? entry_alloc() : NULL;
    if (n) {
        memcpy(n->tag, tag, GW_SIB_TAG_LEN);
        n->client = addr;
        n->next = table[b];
        table[b] = n;
        count++;
    }
    pthread_mutex_unlock(&lock);
}

void gw_sib_login(const uint8_t tag[GW_SIB_TAG_LEN], const char *user, const char *backend)
{
    pthread_mutex_lock(&lock);
    entry *e = find(tag, GW_SIB_TAG_LEN, 0);
    if (e) {
        e->logged_in = user != NULL;
        snprintf(e->user, sizeof e->user, "%s", user ? user : "");
        snprintf(e->backend, sizeof e->backend, "%s", backend ? backend : "");
    }
    pthread_mutex_unlock(&lock);
}

void gw_sib_ended(const uint8_t tag[GW_SIB_TAG_LEN], uint64_t now_s)
{
    pthread_mutex_lock(&lock);
    entry *e = find(tag, GW_SIB_TAG_LEN, 0);
    if (e && !e->ended) {
        e->ended = true;
        /* Never logged in: it can be nobody's sibling, so it goes at the next prune. */
        e->expires = e->logged_in ? now_s + GW_SIB_GRACE_S : now_s;
    }
    pthread_mutex_unlock(&lock);
}

static enum gw_sib_verdict compare(const entry *a, const entry *b)
{
    if (!a || !b)
        return GW_SIB_UNKNOWN;
    if (!a->logged_in || !b->logged_in)
        return GW_SIB_NOT_LOGGED_IN;
    /* SECURITY: the user name as logged in (exact), on the same backend (one name may be two
     * accounts on two servers), from the same address. */
    if (strcmp(a->user, b->user) != 0 || strcmp(a->backend, b->backend) != 0)
        return GW_SIB_OTHER_USER;
    if (!gw_addr_same_host(&a->client, &b->client))
        return GW_SIB_OTHER_ADDRESS;
    return GW_SIB_SIBLING;
}

static enum gw_sib_verdict check(const uint8_t *own, const uint8_t *other, size_t len,
                                 uint64_t now_s)
{
    pthread_mutex_lock(&lock);
    enum gw_sib_verdict v = compare(find(own, len, 0), find(other, len, now_s));
    pthread_mutex_unlock(&lock);
    return v;
}

enum gw_sib_verdict gw_sib_check(const uint8_t own[GW_SIB_TAG_LEN],
                                 const uint8_t other[GW_SIB_TAG_LEN], uint64_t now_s)
{
    return check(own, other, GW_SIB_TAG_LEN, now_s);
}

enum gw_sib_verdict gw_sib_check_route(const uint8_t own[GW_SIB_ROUTE_LEN],
                                       const uint8_t other[GW_SIB_ROUTE_LEN], uint64_t now_s)
{
    return check(own, other, GW_SIB_ROUTE_LEN, now_s);
}

const char *gw_sib_reason(enum gw_sib_verdict v)
{
    switch (v) {
    case GW_SIB_SIBLING:
        return "sibling";
    case GW_SIB_NOT_LOGGED_IN:
        return "resumed the session of a connection not logged in";
    case GW_SIB_OTHER_USER:
        return "resumed the session of another user";
    case GW_SIB_OTHER_ADDRESS:
        return "resumed the session of another client address";
    case GW_SIB_UNKNOWN:
    default:
        return "resumed a session unknown here (or ended long ago)";
    }
}

int gw_sib_count(void)
{
    pthread_mutex_lock(&lock);
    int n = count;
    pthread_mutex_unlock(&lock);
    return n;
}

void gw_sib_reset(void)
{
    pthread_mutex_lock(&lock);
    for (unsigned b = 0; b < BUCKETS; b++)
        while (table[b]) {
            entry *e = table[b];
            table[b] = e->next;
            entry_free(e);
        }
    count = 0;
    pthread_mutex_unlock(&lock);
}

size_t gw_sib_bytes(void)
{
    pthread_mutex_lock(&lock);
    size_t n = touched;
    pthread_mutex_unlock(&lock);
    return n;
}
