/* A chained hash of client addresses and their session counts. Entries are removed when the
 * count drops to zero, so memory follows the number of distinct live clients. */
#include "ip_limit.h"

#include <stdlib.h>
#include <string.h>

#define BUCKETS 4096

typedef struct entry {
    struct entry *next;
    int family, count;
    uint8_t ip[16];
} entry;

struct gw_ip_table {
    entry *bucket[BUCKETS];
};

gw_ip_table *gw_ip_table_new(void)
{
    return calloc(1, sizeof(gw_ip_table));
}

void gw_ip_table_free(gw_ip_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < BUCKETS; i++)
        while (t->bucket[i]) {
            entry *e = t->bucket[i];
            t->bucket[i] = e->next;
            free(e);
        }
    free(t);
}

static size_t hash(const gw_addr *a)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    size_t n = a->family == 4 ? 4 : 16;
    for (size_t i = 0; i < n; i++)
        h = (h ^ a->ip[i]) * 16777619u;
    return h % BUCKETS;
}

static entry **find(gw_ip_table *t, const gw_addr *a)
{
    entry **p = &t->bucket[hash(a)];
    size_t n = a->family == 4 ? 4 : 16;
    while (*p && ((*p)->family != a->family || memcmp((*p)->ip, a->ip, n) != 0))
        p = &(*p)->next;
    return p;
}

int gw_ip_acquire(gw_ip_table *t, const gw_addr *addr, int max)
{
    gw_addr a = *addr;
    gw_addr_normalize(&a);
    entry **p = find(t, &a);
    if (*p) {
        if ((*p)->count >= max)
            return -1;
        (*p)->count++;
        return 0;
    }
    if (max < 1)
        return -1;
    entry *e = calloc(1, sizeof *e);
    if (!e)
        return -1;
    e->family = a.family;
    memcpy(e->ip, a.ip, sizeof e->ip);
    e->count = 1;
    *p = e;
    return 0;
}

void gw_ip_release(gw_ip_table *t, const gw_addr *addr)
{
    gw_addr a = *addr;
    gw_addr_normalize(&a);
    entry **p = find(t, &a);
    if (!*p)
        return;
    if (--(*p)->count <= 0) {
        entry *e = *p;
        *p = e->next;
        free(e);
    }
}

int gw_ip_count(const gw_ip_table *t, const gw_addr *addr)
{
    gw_addr a = *addr;
    gw_addr_normalize(&a);
    entry **p = find((gw_ip_table *)t, &a);
    return *p ? (*p)->count : 0;
}
