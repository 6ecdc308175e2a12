/* The ban table: a chained hash of client addresses (IPv6 by /64), each either watched (the
 * times of its recent failures, newest GW_BAN_AFTER_MAX kept) or banned (until a time).
 * Watched entries are listed by last failure, oldest first: the oldest is evicted when the
 * table is full and dropped once its failures are older than the window. Banned ones are
 * listed by the end of their ban, soonest first, so expiry costs only what expires. */
#include "ban.h"

#include <stdlib.h>
#include <string.h>

#include "cidr.h"

#define BAN_BUCKETS 16384

typedef struct bentry {
    struct bentry *hnext;       /* hash chain */
    struct bentry *prev, *next; /* the watch list or the ban list */
    gw_addr key;
    uint64_t until_ms; /* banned until (0: watched) */
    uint32_t last_s;   /* last failure, seconds */
    uint8_t n, head;   /* failure times in ring: n of them, the oldest at head */
    uint32_t ring[GW_BAN_AFTER_MAX];
} bentry;

typedef struct blist {
    bentry *first, *last;
} blist;

struct gw_ban_table {
    size_t cap, tracked, banned;
    blist watch, bans;
    bentry *bucket[BAN_BUCKETS];
};

gw_ban_table *gw_ban_table_new(size_t cap)
{
    gw_ban_table *t = calloc(1, sizeof *t);
    if (t)
        t->cap = cap ? cap : GW_BAN_CAP;
    return t;
}

static void free_list(bentry *e)
{
    while (e) {
        bentry *n = e->next;
        free(e);
        e = n;
    }
}

void gw_ban_table_free(gw_ban_table *t)
{
    if (!t)
        return;
    free_list(t->watch.first);
    free_list(t->bans.first);
    free(t);
}

void gw_ban_key(const gw_addr *a, gw_addr *key)
{
    gw_addr k = *a;
    gw_addr_normalize(&k);
    k.port = 0;
    if (k.family == 6)
        memset(k.ip + 8, 0, 8);
    else if (k.family == 4)
        memset(k.ip + 4, 0, 12);
    *key = k;
}

static size_t ban_hash(const gw_addr *k)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    size_t n = k->family == 4 ? 4 : 8;
    for (size_t i = 0; i < n; i++)
        h = (h ^ k->ip[i]) * 16777619u;
    return (h ^ (uint32_t)k->family) % BAN_BUCKETS;
}

static bentry **ban_find(const gw_ban_table *t, const gw_addr *k)
{
    bentry **p = (bentry **)&t->bucket[ban_hash(k)];
    while (*p && ((*p)->key.family != k->family || memcmp((*p)->key.ip, k->ip, 16) != 0))
        p = &(*p)->hnext;
    return p;
}

static void unlink_entry(blist *l, bentry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        l->first = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        l->last = e->prev;
    e->prev = e->next = NULL;
}

static void append_entry(blist *l, bentry *e)
{
    e->next = NULL;
    e->prev = l->last;
    if (l->last)
        l->last->next = e;
    else
        l->first = e;
    l->last = e;
}

/* The ban list stays sorted by until_ms: a new ban usually ends last (same ban_time). */
static void insert_ban(blist *l, bentry *e)
{
    bentry *after = l->last;
    while (after && after->until_ms > e->until_ms)
        after = after->prev;
    e->prev = after;
    e->next = after ? after->next : l->first;
    if (e->next)
        e->next->prev = e;
    else
        l->last = e;
    if (after)
        after->next = e;
    else
        l->first = e;
}

/* Remove e from its hash chain and list, and free it. */
static void drop_entry(gw_ban_table *t, bentry *e)
{
    bentry **p = ban_find(t, &e->key);
    if (*p == e)
        *p = e->hnext;
    if (e->until_ms) {
        unlink_entry(&t->bans, e);
        t->banned--;
    } else {
        unlink_entry(&t->watch, e);
    }
    t->tracked--;
    free(e);
}

static bool ban_exempt(const gw_ban_policy *p, const gw_addr *a)
{
    return p->exempt && p->exempt[0] && gw_cidr_list_match(p->exempt, a);
}

void gw_ban_fail(gw_ban_table *t, const gw_addr *a, uint64_t now_ms, const gw_ban_policy *p,
                 gw_ban_result *r)
{
    memset(r, 0, sizeof *r);
    gw_ban_key(a, &r->key);
    r->what = GW_BAN_IGNORED;
    if (p->after <= 0 || ban_exempt(p, a))
        return;
    uint32_t now_s = (uint32_t)(now_ms / 1000);
    bentry **slot = ban_find(t, &r->key);
    bentry *e = *slot;
    if (e && e->until_ms > now_ms) {
        r->what = GW_BAN_ALREADY;
        return;
    }
    if (e && e->until_ms) { /* ended but not expired yet: watched from nothing again */
        unlink_entry(&t->bans, e);
        t->banned--;
        e->until_ms = 0;
        e->n = e->head = 0;
        append_entry(&t->watch, e);
    }
    if (!e) {
        if (t->tracked >= t->cap) {
            bentry *old = t->watch.first ? t->watch.first : t->bans.first;
            if (!old)
                return;
            r->evicted = true;
            if (old->until_ms) {
                r->evicted_ban = true;
                r->evicted_key = old->key;
            }
            drop_entry(t, old);
            slot = ban_find(t, &r->key); /* the chain may have changed */
        }
        e = calloc(1, sizeof *e);
        if (!e)
            return;
        e->key = r->key;
        e->hnext = *slot;
        *slot = e;
        t->tracked++;
        append_entry(&t->watch, e);
    }
    /* record now, the oldest time making room when the ring is full */
    if (e->n < GW_BAN_AFTER_MAX) {
        e->ring[(e->head + e->n) % GW_BAN_AFTER_MAX] = now_s;
        e->n++;
    } else {
        e->ring[e->head] = now_s;
        e->head = (uint8_t)((e->head + 1) % GW_BAN_AFTER_MAX);
    }
    e->last_s = now_s;
    int count = 0;
    for (int i = 0; i < e->n; i++) {
        uint32_t ts = e->ring[(e->head + i) % GW_BAN_AFTER_MAX];
        if (now_s - ts < (uint32_t)p->window)
            count++;
    }
    r->failures = count;
    unlink_entry(&t->watch, e); /* the newest failure goes last */
    if (count < p->after) {
        append_entry(&t->watch, e);
        r->what = GW_BAN_COUNTED;
        return;
    }
    e->until_ms = now_ms + (uint64_t)p->time * 1000;
    if (e->until_ms == 0)
        e->until_ms = 1;
    e->n = e->head = 0;
    insert_ban(&t->bans, e);
    t->banned++;
    r->what = GW_BAN_NEW;
}

uint64_t gw_ban_left(const gw_ban_table *t, const gw_addr *a, uint64_t now_ms,
                     const gw_ban_policy *p)
{
    if (!t || p->after <= 0 || ban_exempt(p, a))
        return 0;
    gw_addr k;
    gw_ban_key(a, &k);
    bentry *e = *ban_find(t, &k);
    return e && e->until_ms > now_ms ? e->until_ms - now_ms : 0;
}

size_t gw_ban_expire(gw_ban_table *t, uint64_t now_ms, const gw_ban_policy *p,
                     void (*cb)(const gw_addr *key, void *arg), void *arg)
{
    size_t ended = 0;
    while (t->bans.first && t->bans.first->until_ms <= now_ms) {
        gw_addr k = t->bans.first->key;
        drop_entry(t, t->bans.first);
        ended++;
        if (cb)
            cb(&k, arg);
    }
    uint32_t now_s = (uint32_t)(now_ms / 1000);
    uint32_t window = p->window > 0 ? (uint32_t)p->window : 1;
    while (t->watch.first && now_s - t->watch.first->last_s >= window)
        drop_entry(t, t->watch.first);
    return ended;
}

size_t gw_ban_tracked(const gw_ban_table *t)
{
    return t ? t->tracked : 0;
}

size_t gw_ban_banned(const gw_ban_table *t)
{
    return t ? t->banned : 0;
}

void gw_ban_each(const gw_ban_table *t,
                 void (*fn)(const gw_addr *key, uint64_t until_ms, void *arg), void *arg)
{
    for (const bentry *e = t ? t->bans.first : NULL; e; e = e->next)
        fn(&e->key, e->until_ms, arg);
}

int gw_ban_restore(gw_ban_table *t, const gw_addr *a, uint64_t until_ms)
{
    gw_addr k;
    gw_ban_key(a, &k);
    if (until_ms == 0)
        return -1;
    bentry **slot = ban_find(t, &k);
    bentry *e = *slot;
    if (e && e->until_ms) { /* banned already: the later end wins */
        if (e->until_ms < until_ms) {
            unlink_entry(&t->bans, e);
            e->until_ms = until_ms;
            insert_ban(&t->bans, e);
        }
        return 0;
    }
    if (e) { /* watched: banned now */
        unlink_entry(&t->watch, e);
    } else {
        if (t->tracked >= t->cap || !(e = calloc(1, sizeof *e)))
            return -1;
        e->key = k;
        e->hnext = *slot;
        *slot = e;
        t->tracked++;
    }
    e->until_ms = until_ms;
    e->n = e->head = 0;
    insert_ban(&t->bans, e);
    t->banned++;
    return 0;
}
