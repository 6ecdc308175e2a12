/* The admin endpoint's users file and failed-login throttle: see admin_users.h. */
#include "admin_users.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "textfile.h"

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_' || c == '@';
}

/* crypt(3)'s modular alphabet and separators: no spaces, no colon, nothing a log or the
 * file's syntax could trip on. */
static bool hash_char(char c)
{
    return name_char(c) || c == '$' || c == '/' || c == '=' || c == ',' || c == '+';
}

static int parse_line(const char *p, size_t n, gw_admin_user *u, char *why, size_t cap)
{
    size_t i = 0;
    while (i < n && name_char(p[i]))
        i++;
    if (i == 0 || i == n || p[i] != ':') {
        snprintf(why, cap, "expected \"name:crypt-hash role\" (name: letters, digits, . - _ @)");
        return -1;
    }
    if (i >= GW_ADMIN_USER_MAX) {
        snprintf(why, cap, "user name longer than %d characters", GW_ADMIN_USER_MAX - 1);
        return -1;
    }
    memcpy(u->name, p, i);
    u->name[i] = 0;
    size_t h = ++i;
    while (i < n && hash_char(p[i]))
        i++;
    size_t hl = i - h;
    if (hl == 0 || p[h] != '$' || (i < n && p[i] != ' ' && p[i] != '\t')) {
        snprintf(why, cap,
                 "user %s: expected a crypt(3) hash such as $y$... or $6$... "
                 "(mkpasswd), not a password",
                 u->name);
        return -1;
    }
    if (hl >= GW_ADMIN_HASH_MAX) {
        snprintf(why, cap, "user %s: hash longer than %d characters", u->name,
                 GW_ADMIN_HASH_MAX - 1);
        return -1;
    }
    memcpy(u->hash, p + h, hl);
    u->hash[hl] = 0;
    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    size_t r = i;
    while (i < n && p[i] != ' ' && p[i] != '\t')
        i++;
    size_t rl = i - r;
    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    if (rl == 4 && memcmp(p + r, "read", 4) == 0)
        u->role = GW_ADMIN_ROLE_READ;
    else if (rl == 7 && memcmp(p + r, "operate", 7) == 0)
        u->role = GW_ADMIN_ROLE_OPERATE;
    else
        u->role = GW_ADMIN_ROLE_NONE;
    if (u->role == GW_ADMIN_ROLE_NONE || i != n) {
        snprintf(why, cap, "user %s: expected the role read or operate after the hash", u->name);
        return -1;
    }
    return 0;
}

int gw_admin_users_parse(const char *text, size_t len, gw_admin_users *out, char *err, size_t cap)
{
    out->u = NULL;
    out->n = 0;
    size_t cap_users = 0;
    char why[200];
    gw_lines it = gw_lines_start(text, len);
    const char *p;
    size_t n;
    while (gw_lines_next(&it, &p, &n)) {
        int line = it.line;
        gw_admin_user u;
        if (parse_line(p, n, &u, why, sizeof why) != 0) {
            snprintf(err, cap, "line %d: %s", line, why);
            goto fail;
        }
        if (gw_admin_users_find(out, u.name)) {
            snprintf(err, cap, "line %d: user %s is already defined", line, u.name);
            goto fail;
        }
        if (out->n == GW_ADMIN_USERS_MAX) {
            snprintf(err, cap, "line %d: more than %d users", line, GW_ADMIN_USERS_MAX);
            goto fail;
        }
        if (out->n == cap_users) {
            size_t c = cap_users ? cap_users * 2 : 8;
            gw_admin_user *q = realloc(out->u, c * sizeof *q);
            if (!q) {
                snprintf(err, cap, "out of memory");
                goto fail;
            }
            out->u = q;
            cap_users = c;
        }
        out->u[out->n++] = u;
    }
    if (it.bad) {
        snprintf(err, cap, "line %d: %s", it.line, gw_lines_bad_text(&it, why, sizeof why));
        goto fail;
    }
    return 0;
fail:
    gw_admin_users_free(out);
    return -1;
}

const gw_admin_user *gw_admin_users_find(const gw_admin_users *u, const char *name)
{
    for (size_t i = 0; u && name && i < u->n; i++)
        if (strcmp(u->u[i].name, name) == 0)
            return &u->u[i];
    return NULL;
}

void gw_admin_users_free(gw_admin_users *u)
{
    if (!u)
        return;
    /* SECURITY: hashes do not linger in freed memory. */
    for (size_t i = 0; i < u->n; i++)
        memset(u->u[i].hash, 0, sizeof u->u[i].hash);
    free(u->u);
    u->u = NULL;
    u->n = 0;
}

const char *gw_admin_role_name(enum gw_admin_role r)
{
    return r == GW_ADMIN_ROLE_OPERATE ? "operate" : r == GW_ADMIN_ROLE_READ ? "read" : "none";
}

/* ---- throttle ---- */

static gw_throttle_entry *t_find(const gw_throttle *t, const char *addr)
{
    for (size_t i = 0; i < GW_THROTTLE_SLOTS; i++)
        if (t->e[i].addr[0] && strcmp(t->e[i].addr, addr) == 0)
            return (gw_throttle_entry *)&t->e[i];
    return NULL;
}

unsigned gw_throttle_locked(const gw_throttle *t, const char *addr, int64_t now_ms)
{
    const gw_throttle_entry *e = t_find(t, addr);
    if (!e || e->locked_until_ms <= now_ms)
        return 0;
    return (unsigned)((e->locked_until_ms - now_ms + 999) / 1000);
}

bool gw_throttle_fail(gw_throttle *t, const char *addr, int64_t now_ms)
{
    gw_throttle_entry *e = t_find(t, addr);
    if (!e) {
        /* A free slot, else the one least recently failed (never one locked out now,
         * unless all are). */
        gw_throttle_entry *pick = NULL;
        for (size_t i = 0; i < GW_THROTTLE_SLOTS && !(pick && !pick->addr[0]); i++) {
            gw_throttle_entry *c = &t->e[i];
            bool c_locked = c->locked_until_ms > now_ms;
            bool p_locked = pick && pick->locked_until_ms > now_ms;
            if (!pick || !c->addr[0] || (p_locked && !c_locked) ||
                (p_locked == c_locked && c->last_ms < pick->last_ms))
                pick = c;
        }
        e = pick;
        memset(e, 0, sizeof *e);
        snprintf(e->addr, sizeof e->addr, "%s", addr);
    }
    if (e->fails == 0 || now_ms - e->first_ms > GW_THROTTLE_WINDOW_MS) {
        e->fails = 0;
        e->first_ms = now_ms;
    }
    e->fails++;
    e->last_ms = now_ms;
    if (e->fails >= GW_THROTTLE_FAILS) {
        e->locked_until_ms = now_ms + GW_THROTTLE_LOCK_MS;
        e->fails = 0;
        return true;
    }
    return false;
}

void gw_throttle_ok(gw_throttle *t, const char *addr)
{
    gw_throttle_entry *e = t_find(t, addr); /* (a locked-out address is never checked) */
    if (e)
        memset(e, 0, sizeof *e);
}
