/* The process's ban list: the pure table of ban.c behind one mutex. Created at the first
 * failed login counted (nothing is allocated while ban_after = 0), kept across reloads. */
#include "bans.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <uv.h>

#include "ban.h"
#include "log.h"
#include "metrics.h"

static pthread_mutex_t bans_lock = PTHREAD_MUTEX_INITIALIZER;
static gw_ban_table *bans_table; /* guarded by bans_lock */
static _Atomic uint64_t bans_total, bans_active;

static uint64_t bans_now_ms(void)
{
    return uv_hrtime() / 1000000u; /* monotonic, and the same for every worker's thread */
}

static gw_ban_policy bans_policy(const gw_config *cfg)
{
    gw_ban_policy p = {.after = cfg->ban_after,
                       .window = cfg->ban_window,
                       .time = cfg->ban_time,
                       .exempt = cfg->ban_exempt};
    return p;
}

/* "peer=1.2.3.4" or, for IPv6, "peer=2001:db8::1 prefix=2001:db8::/64" (the /64 is banned) */
static const char *bans_peer(const gw_addr *a, const gw_addr *key, char *buf, size_t cap)
{
    char ip[64], net[64];
    gw_addr_ip_str(a, ip, sizeof ip);
    if (key->family == 6)
        snprintf(buf, cap, "peer=%s prefix=%s/64", ip, gw_addr_ip_str(key, net, sizeof net));
    else
        snprintf(buf, cap, "peer=%s", ip);
    return buf;
}

static void on_ban_expired(const gw_addr *key, void *arg)
{
    (void)arg;
    char ip[64];
    gw_addr_ip_str(key, ip, sizeof ip);
    GW_LOG_INFO(0, "event=ban_expired peer=%s%s", ip, key->family == 6 ? "/64" : "");
    bans_active--;
}

/* Under bans_lock. */
static void bans_expire(const gw_ban_policy *p, uint64_t now)
{
    if (bans_table)
        gw_ban_expire(bans_table, now, p, on_ban_expired, NULL);
}

bool gw_bans_login_failed(const gw_config *cfg, const gw_addr *a, uint64_t session)
{
    gw_ban_policy p = bans_policy(cfg);
    if (p.after <= 0)
        return false;
    gw_ban_result r;
    uint64_t now = bans_now_ms();
    pthread_mutex_lock(&bans_lock);
    if (!bans_table)
        bans_table = gw_ban_table_new(0);
    bans_expire(&p, now);
    if (bans_table)
        gw_ban_fail(bans_table, a, now, &p, &r);
    else
        r.what = GW_BAN_IGNORED;
    pthread_mutex_unlock(&bans_lock);
    char who[160];
    if (r.evicted_ban) {
        char ip[64];
        GW_LOG_WARN(session, "event=ban_dropped peer=%s reason=\"table full\"",
                    gw_addr_ip_str(&r.evicted_key, ip, sizeof ip));
        bans_active--;
    }
    switch (r.what) {
    case GW_BAN_NEW:
        bans_total++;
        gw_metric_ban();
        bans_active++;
        GW_LOG_WARN(session, "event=ban %s failures=%d ban_time=%d",
                    bans_peer(a, &r.key, who, sizeof who), r.failures, p.time);
        return true;
    case GW_BAN_ALREADY:
        return true;
    case GW_BAN_COUNTED:
        GW_LOG_DEBUG(session, "event=ban_count %s failures=%d ban_after=%d",
                     bans_peer(a, &r.key, who, sizeof who), r.failures, p.after);
        return false;
    default:
        return false;
    }
}

bool gw_bans_check(const gw_config *cfg, const gw_addr *a)
{
    gw_ban_policy p = bans_policy(cfg);
    if (p.after <= 0)
        return false;
    uint64_t now = bans_now_ms();
    pthread_mutex_lock(&bans_lock);
    bans_expire(&p, now);
    bool banned = gw_ban_left(bans_table, a, now, &p) > 0;
    pthread_mutex_unlock(&bans_lock);
    return banned;
}

void gw_bans_tick(const gw_config *cfg)
{
    gw_ban_policy p = bans_policy(cfg);
    uint64_t now = bans_now_ms();
    pthread_mutex_lock(&bans_lock);
    bans_expire(&p, now);
    pthread_mutex_unlock(&bans_lock);
}

uint64_t gw_bans_total(void)
{
    return bans_total;
}

uint64_t gw_bans_active(void)
{
    return bans_active;
}

void gw_bans_each(void (*fn)(const gw_addr *key, uint64_t until_ms, void *arg), void *arg)
{
    pthread_mutex_lock(&bans_lock);
    gw_ban_each(bans_table, fn, arg);
    pthread_mutex_unlock(&bans_lock);
}

int gw_bans_restore(const gw_addr *key, uint64_t until_ms)
{
    if (until_ms <= bans_now_ms())
        return 0; /* ended on the way */
    pthread_mutex_lock(&bans_lock);
    if (!bans_table)
        bans_table = gw_ban_table_new(0);
    size_t before = gw_ban_banned(bans_table);
    int r = bans_table ? gw_ban_restore(bans_table, key, until_ms) : -1;
    bool added = gw_ban_banned(bans_table) > before;
    pthread_mutex_unlock(&bans_lock);
    if (added)
        bans_active++;
    return r;
}

void gw_bans_free_all(void)
{
    pthread_mutex_lock(&bans_lock);
    gw_ban_table_free(bans_table);
    bans_table = NULL;
    bans_active = 0;
    pthread_mutex_unlock(&bans_lock);
}
