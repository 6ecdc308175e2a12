/* The sibling registry (siblings.h): a hash table of tags, chained, under one mutex. Tags
 * are random, so their first bytes (part of the route) spread them over the buckets and a
 * route finds its tag's bucket too. */
#include "siblings.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS 4096
#define USER_MAX 64 /* the session keeps 63 characters of USER too */
#define BACKEND_MAX 64

typedef struct entry {
    struct entry *next;
    uint8_t tag[GW_SIB_TAG_LEN];
    gw_addr client;
    bool logged_in, ended;
    uint64_t expires; /* ended: when it stops being a sibling */
    char user[USER_MAX], backend[BACKEND_MAX];
} entry;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static entry *table[BUCKETS];
static int count;

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
            free(e);
            count--;
        } else {
            pp = &e->next;
        }
    }
}

void gw_sib_issued(const uint8_t tag[GW_SIB_TAG_LEN], const gw_addr *client, uint64_t now_s)
{
    entry *n = calloc(1, sizeof *n);
    if (!n)
        return; /* not a sibling of anyone: its tickets serve its own data connections only */
    memcpy(n->tag, tag, GW_SIB_TAG_LEN);
    n->client = *client;
    gw_addr_normalize(&n->client);
    n->client.port = 0;
    unsigned b = bucket(tag);
    pthread_mutex_lock(&lock);
    prune(b, now_s);
    for (unsigned i = 1; count >= GW_SIB_MAX && i < BUCKETS; i++)
        prune((b + i) % BUCKETS, now_s + GW_SIB_GRACE_S); /* full: ended ones go early */
    if (count < GW_SIB_MAX) {
        n->next = table[b];
        table[b] = n;
        count++;
        n = NULL;
    }
    pthread_mutex_unlock(&lock);
    free(n);
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
            free(e);
        }
    count = 0;
    pthread_mutex_unlock(&lock);
}

size_t gw_sib_bytes(void)
{
    pthread_mutex_lock(&lock);
    size_t n = (size_t)count * sizeof(entry);
    pthread_mutex_unlock(&lock);
    return n;
}
