/* Backend selection: see balance.h. */
#include "balance.h"

#include <stdlib.h>
#include <string.h>

static int grow(gw_bal_state *st, int n)
{
    if (n <= st->n_current)
        return 0;
    int *cur = realloc(st->current, (size_t)n * sizeof *cur);
    if (!cur)
        return -1;
    memset(cur + st->n_current, 0, (size_t)(n - st->n_current) * sizeof *cur);
    st->current = cur;
    st->n_current = n;
    return 0;
}

int gw_bal_state_init(gw_bal_state *st, int n)
{
    memset(st, 0, sizeof *st);
    return grow(st, n);
}

void gw_bal_state_free(gw_bal_state *st)
{
    free(st->current);
    memset(st, 0, sizeof *st);
}

bool gw_balance_eligible(const gw_bal_cand *c, int i, uint32_t exclude)
{
    if (i < 32 && (exclude & (1u << i)))
        return false;
    if (!c[i].up || c[i].weight <= 0)
        return false;
    return c[i].max_sessions <= 0 || c[i].live < c[i].max_sessions;
}

/* Smooth weighted round robin: every eligible backend gains its weight, the highest is
 * picked and loses the eligible total. With weights 3,1,1 the order is a a b a c ... */
static int pick_rr(const gw_bal_cand *c, int n, gw_bal_state *st, uint32_t exclude)
{
    int best = -1, total = 0;
    if (grow(st, n) != 0) { /* out of memory: the first eligible one */
        for (int i = 0; i < n; i++)
            if (gw_balance_eligible(c, i, exclude))
                return i;
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (!gw_balance_eligible(c, i, exclude))
            continue;
        st->current[i] += c[i].weight;
        total += c[i].weight;
        if (best < 0 || st->current[i] > st->current[best])
            best = i;
    }
    if (best >= 0)
        st->current[best] -= total;
    return best;
}

/* Fewest live sessions relative to weight (live/weight compared as products); equals are
 * taken in turn, starting after the last one picked. */
static int pick_leastconn(const gw_bal_cand *c, int n, gw_bal_state *st, uint32_t exclude)
{
    int best = -1;
    int start = st->next >= 0 && st->next < n ? st->next : 0;
    for (int k = 0; k < n; k++) {
        int i = (start + k) % n;
        if (!gw_balance_eligible(c, i, exclude))
            continue;
        if (best < 0 ||
            (long long)c[i].live * c[best].weight < (long long)c[best].live * c[i].weight)
            best = i;
    }
    if (best >= 0)
        st->next = (best + 1) % n;
    return best;
}

static int pick_random(const gw_bal_cand *c, int n, uint32_t exclude, uint32_t rnd)
{
    uint32_t total = 0;
    for (int i = 0; i < n; i++)
        if (gw_balance_eligible(c, i, exclude))
            total += (uint32_t)c[i].weight;
    if (total == 0)
        return -1;
    uint32_t r = rnd % total;
    for (int i = 0; i < n; i++) {
        if (!gw_balance_eligible(c, i, exclude))
            continue;
        if (r < (uint32_t)c[i].weight)
            return i;
        r -= (uint32_t)c[i].weight;
    }
    return -1;
}

/* The key's slot among all backends (weighted, whatever their state), then the first
 * eligible one from there on: a client keeps its backend while that one is eligible. */
static int pick_source(const gw_bal_cand *c, int n, uint32_t exclude, const uint8_t *key,
                       size_t keylen)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; key && i < keylen; i++) {
        h ^= key[i];
        h *= 16777619u;
    }
    h ^= h >> 15; /* neighbouring addresses differ in the last byte only */
    h *= 0x2c1b3c6du;
    h ^= h >> 12;
    uint32_t total = 0;
    for (int i = 0; i < n; i++)
        if (c[i].weight > 0)
            total += (uint32_t)c[i].weight;
    if (total == 0)
        return -1;
    uint32_t r = h % total;
    int home = 0;
    for (int i = 0; i < n; i++) {
        if (c[i].weight <= 0)
            continue;
        if (r < (uint32_t)c[i].weight) {
            home = i;
            break;
        }
        r -= (uint32_t)c[i].weight;
    }
    for (int k = 0; k < n; k++) {
        int i = (home + k) % n;
        if (gw_balance_eligible(c, i, exclude))
            return i;
    }
    return -1;
}

int gw_balance_pick(enum gw_balance policy, const gw_bal_cand *c, int n, gw_bal_state *st,
                    uint32_t exclude, uint32_t rnd, const uint8_t *key, size_t keylen)
{
    if (!c || n <= 0)
        return -1;
    switch (policy) {
    case GW_BALANCE_LEASTCONN:
        return pick_leastconn(c, n, st, exclude);
    case GW_BALANCE_RANDOM:
        return pick_random(c, n, exclude, rnd);
    case GW_BALANCE_SOURCE:
    case GW_BALANCE_USER: /* the key is the USER name instead of the client address */
        return pick_source(c, n, exclude, key, keylen);
    case GW_BALANCE_ROUNDROBIN:
    default:
        return pick_rr(c, n, st, exclude);
    }
}

const char *gw_balance_name(enum gw_balance policy)
{
    switch (policy) {
    case GW_BALANCE_LEASTCONN:
        return "leastconn";
    case GW_BALANCE_RANDOM:
        return "random";
    case GW_BALANCE_SOURCE:
        return "source";
    case GW_BALANCE_USER:
        return "user";
    default:
        return "roundrobin";
    }
}

char *gw_route_user_split(char *user)
{
    char *at = strrchr(user, '@');
    if (!at || !at[1])
        return NULL;
    *at = 0;
    return at + 1;
}
