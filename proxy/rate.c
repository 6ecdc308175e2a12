/* Token buckets and the per-transfer limiter (rate.h). */
#include "rate.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define NS 1000000000ull

uint64_t gw_rate_burst(uint64_t rate)
{
    uint64_t b = rate / 10;
    return b < GW_RATE_MIN_CHUNK ? GW_RATE_MIN_CHUNK : b;
}

void gw_bucket_init(gw_bucket *b, uint64_t rate, uint64_t now_ns)
{
    b->rate = rate;
    b->burst = gw_rate_burst(rate);
    b->tokens = (int64_t)b->burst;
    b->last_ns = now_ns;
}

/* Tokens earned since last_ns; the nanoseconds not yet worth a token stay counted. */
static void refill(gw_bucket *b, uint64_t now_ns)
{
    if (!b->rate || now_ns <= b->last_ns)
        return;
    uint64_t elapsed = now_ns - b->last_ns;
    unsigned __int128 room = (unsigned __int128)((int64_t)b->burst - b->tokens);
    if ((unsigned __int128)elapsed * b->rate >= room * NS) {
        b->tokens = (int64_t)b->burst;
        b->last_ns = now_ns;
        return;
    }
    uint64_t add = (uint64_t)((unsigned __int128)elapsed * b->rate / NS);
    b->tokens += (int64_t)add;
    b->last_ns += (uint64_t)((unsigned __int128)add * NS / b->rate);
}

void gw_bucket_set_rate(gw_bucket *b, uint64_t rate, uint64_t now_ns)
{
    if (rate == b->rate)
        return;
    refill(b, now_ns);
    b->rate = rate;
    b->burst = gw_rate_burst(rate);
    b->last_ns = now_ns;
    if (b->tokens > (int64_t)b->burst)
        b->tokens = (int64_t)b->burst;
}

int64_t gw_bucket_tokens(gw_bucket *b, uint64_t now_ns)
{
    refill(b, now_ns);
    return b->tokens;
}

void gw_bucket_take(gw_bucket *b, uint64_t n, uint64_t now_ns)
{
    if (!b->rate)
        return;
    refill(b, now_ns);
    b->tokens -= (int64_t)n;
}

uint64_t gw_bucket_wait_ns(gw_bucket *b, uint64_t now_ns)
{
    if (!b->rate)
        return 0;
    refill(b, now_ns);
    if (b->tokens > 0)
        return 0;
    uint64_t need = (uint64_t)(1 - b->tokens);
    uint64_t ns = (uint64_t)(((unsigned __int128)need * NS + b->rate - 1) / b->rate);
    uint64_t done = now_ns > b->last_ns ? now_ns - b->last_ns : 0; /* toward the next token */
    return ns > done ? ns - done : 1;
}

/* ---- shared buckets: one process-wide list, found by key ---- */

struct gw_rate_shared {
    pthread_mutex_t mu; /* the bucket's */
    gw_bucket b;
    uint64_t seq;       /* of the configuration that set b.rate */
    _Atomic int active; /* limiters attached */
    int refs;           /* under list_lock */
    gw_rate_shared *next;
    char key[];
};

static pthread_mutex_t list_lock = PTHREAD_MUTEX_INITIALIZER;
static gw_rate_shared *list_head;
static int list_count;

gw_rate_shared *gw_rate_shared_get(const char *key, uint64_t rate, uint64_t seq, uint64_t now_ns)
{
    pthread_mutex_lock(&list_lock);
    gw_rate_shared *sh = list_head;
    while (sh && strcmp(sh->key, key) != 0)
        sh = sh->next;
    if (!sh) {
        size_t n = strlen(key) + 1;
        sh = calloc(1, sizeof *sh + n);
        if (!sh) {
            pthread_mutex_unlock(&list_lock);
            return NULL;
        }
        memcpy(sh->key, key, n);
        pthread_mutex_init(&sh->mu, NULL);
        gw_bucket_init(&sh->b, rate, now_ns);
        sh->next = list_head;
        list_head = sh;
        list_count++;
    }
    sh->refs++;
    sh->active++;
    pthread_mutex_unlock(&list_lock);
    pthread_mutex_lock(&sh->mu);
    if (seq >= sh->seq) { /* a reload's new rate; an older configuration's never comes back */
        sh->seq = seq;
        gw_bucket_set_rate(&sh->b, rate, now_ns);
    }
    pthread_mutex_unlock(&sh->mu);
    return sh;
}

void gw_rate_shared_put(gw_rate_shared *sh)
{
    if (!sh)
        return;
    pthread_mutex_lock(&list_lock);
    sh->active--;
    if (--sh->refs > 0) {
        pthread_mutex_unlock(&list_lock);
        return;
    }
    gw_rate_shared **pp = &list_head;
    while (*pp != sh)
        pp = &(*pp)->next;
    *pp = sh->next;
    list_count--;
    pthread_mutex_unlock(&list_lock);
    pthread_mutex_destroy(&sh->mu);
    free(sh);
}

int gw_rate_shared_active(gw_rate_shared *sh)
{
    return sh->active;
}

int gw_rate_shared_count(void)
{
    pthread_mutex_lock(&list_lock);
    int n = list_count;
    pthread_mutex_unlock(&list_lock);
    return n;
}

/* ---- the limiter ---- */

int gw_rate_spec_any(const gw_rate_spec *spec)
{
    return spec->session || (spec->user && spec->user_key && spec->user_key[0]) ||
           (spec->frontend && spec->frontend_key && spec->frontend_key[0]);
}

/* This transfer's fair share of a shared bucket: its rate over the transfers drawing from
 * it now, so that every one of them gets as much (none takes another's turn). */
static void update_share(gw_rate_lim *l, int i, uint64_t now_ns)
{
    gw_rate_shared *sh = l->shared[i];
    int n = sh->active;
    uint64_t rate = sh->b.rate / (uint64_t)(n > 0 ? n : 1);
    gw_bucket_set_rate(&l->share[i], rate ? rate : 1, now_ns);
}

int gw_rate_lim_attach(gw_rate_lim *l, const gw_rate_spec *spec, uint64_t now_ns)
{
    memset(l, 0, sizeof *l);
    gw_bucket_init(&l->own, spec->session, now_ns);
    const char *keys[GW_RATE_NSHARED] = {spec->user ? spec->user_key : NULL,
                                         spec->frontend ? spec->frontend_key : NULL};
    const uint64_t rates[GW_RATE_NSHARED] = {spec->user, spec->frontend};
    for (int i = 0; i < GW_RATE_NSHARED; i++) {
        if (!keys[i] || !keys[i][0])
            continue;
        l->shared[i] = gw_rate_shared_get(keys[i], rates[i], spec->seq, now_ns);
        if (!l->shared[i]) {
            gw_rate_lim_detach(l);
            return -1;
        }
        gw_bucket_init(&l->share[i], 1, now_ns);
        update_share(l, i, now_ns);
        l->share[i].tokens = (int64_t)l->share[i].burst;
    }
    l->window_ns = now_ns;
    return 0;
}

void gw_rate_lim_detach(gw_rate_lim *l)
{
    for (int i = 0; i < GW_RATE_NSHARED; i++) {
        gw_rate_shared_put(l->shared[i]);
        l->shared[i] = NULL;
    }
}

void gw_rate_lim_charge(gw_rate_lim *l, uint64_t n, uint64_t now_ns)
{
    gw_bucket_take(&l->own, n, now_ns);
    for (int i = 0; i < GW_RATE_NSHARED; i++) {
        gw_rate_shared *sh = l->shared[i];
        if (!sh)
            continue;
        pthread_mutex_lock(&sh->mu);
        gw_bucket_take(&sh->b, n, now_ns);
        pthread_mutex_unlock(&sh->mu);
        update_share(l, i, now_ns);
        gw_bucket_take(&l->share[i], n, now_ns);
    }
    l->window_bytes += n;
    if (now_ns - l->window_ns >= NS) {
        l->current = (uint64_t)((unsigned __int128)l->window_bytes * NS / (now_ns - l->window_ns));
        l->window_ns = now_ns;
        l->window_bytes = 0;
    }
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

uint64_t gw_rate_lim_wait_ns(gw_rate_lim *l, uint64_t now_ns)
{
    uint64_t w = gw_bucket_wait_ns(&l->own, now_ns);
    for (int i = 0; i < GW_RATE_NSHARED; i++) {
        gw_rate_shared *sh = l->shared[i];
        if (!sh)
            continue;
        pthread_mutex_lock(&sh->mu);
        w = max_u64(w, gw_bucket_wait_ns(&sh->b, now_ns));
        pthread_mutex_unlock(&sh->mu);
        update_share(l, i, now_ns);
        w = max_u64(w, gw_bucket_wait_ns(&l->share[i], now_ns));
    }
    return w;
}

size_t gw_rate_lim_chunk(const gw_rate_lim *l)
{
    uint64_t c = GW_RATE_MAX_CHUNK;
    if (l->own.rate && l->own.burst < c)
        c = l->own.burst;
    for (int i = 0; i < GW_RATE_NSHARED; i++)
        if (l->shared[i] && l->share[i].burst < c)
            c = l->share[i].burst;
    return c < GW_RATE_MIN_CHUNK ? GW_RATE_MIN_CHUNK : (size_t)c;
}

uint64_t gw_rate_lim_limit(const gw_rate_lim *l)
{
    uint64_t r = l->own.rate;
    for (int i = 0; i < GW_RATE_NSHARED; i++)
        if (l->shared[i] && (!r || l->share[i].rate < r))
            r = l->share[i].rate;
    return r;
}
