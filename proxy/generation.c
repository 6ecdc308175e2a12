/* Configuration generations: see generation.h. Built on the worker's thread at start and on
 * SIGHUP; freed by whoever drops the last reference (the worker or the last session). */
#include "generation.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "logfile.h"
#include "server_name.h"

int gw_resolve_host(const char *host, uint16_t port, gw_addr *out)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
        return -1;
    /* Prefer IPv4: legacy servers and 227 replies are IPv4. */
    struct addrinfo *pick = res;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
        if (ai->ai_family == AF_INET) {
            pick = ai;
            break;
        }
    gw_addr_from_sockaddr(out, pick->ai_addr);
    out->port = port;
    freeaddrinfo(res);
    return 0;
}

/* Live counts by backend name. Counters are handed out as pointers and must never move:
 * the table is a list of fixed chunks, a new one added when the last is full. */
#define LIVE_CHUNK 64

struct live_chunk {
    struct live_chunk *next;
    int n;
    struct {
        char name[GW_NAME_MAX];
        _Atomic int live;
    } slot[LIVE_CHUNK];
};

struct gw_live_table {
    pthread_mutex_t lock; /* guards the chunk list and the names; the counts are atomic */
    struct live_chunk *first;
};

gw_live_table *gw_live_table_new(void)
{
    gw_live_table *t = calloc(1, sizeof *t);
    if (t)
        pthread_mutex_init(&t->lock, NULL);
    return t;
}

void gw_live_table_free(gw_live_table *t)
{
    if (!t)
        return;
    for (struct live_chunk *c = t->first, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    pthread_mutex_destroy(&t->lock);
    free(t);
}

_Atomic int *gw_live_counter(gw_live_table *t, const char *name)
{
    if (!t)
        return NULL;
    _Atomic int *c = NULL;
    pthread_mutex_lock(&t->lock);
    struct live_chunk **tail = &t->first, *last = NULL;
    for (struct live_chunk *k = t->first; k && !c; k = k->next) {
        for (int i = 0; i < k->n && !c; i++)
            if (strcmp(k->slot[i].name, name) == 0)
                c = &k->slot[i].live;
        last = k;
        tail = &k->next;
    }
    if (!c && (!last || last->n == LIVE_CHUNK)) {
        last = calloc(1, sizeof *last); /* NULL: the caller counts per worker */
        if (last)
            *tail = last;
    }
    if (!c && last) {
        snprintf(last->slot[last->n].name, sizeof last->slot[last->n].name, "%s", name);
        c = &last->slot[last->n++].live;
    }
    pthread_mutex_unlock(&t->lock);
    return c;
}

static void blame(gw_cfg_where *w, const char *section, int index, const char *key)
{
    if (w)
        *w = (gw_cfg_where){section, index, key};
}

/* The key a TLS context's message is about (tls.c names what failed first). */
static const char *tls_key(const char *msg)
{
    static const struct {
        const char *prefix, *key;
    } map[] = {
        {"cannot load certificate", "cert"},         {"cannot load private key", "key"},
        {"private key does not match", "key"},       {"bad [tls] ciphers:", "ciphers"},
        {"bad [tls] ciphersuites:", "ciphersuites"}, {"cannot load client_ca", "client_ca"},
        {"cannot load client_crl", "client_crl"},    {"bad cipher list", "ciphers"},
        {"cannot load trust anchors", "ca_file"},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strncmp(msg, map[i].prefix, strlen(map[i].prefix)) == 0)
            return map[i].key;
    return NULL;
}

/* A backend some frontend uses: its address (resolved now when it is an IP literal), TLS
 * context and live counter. Once per generation. */
static int prepare_backend(gw_backend_rt *be, const gw_backend_conf *bc, int k, gw_live_table *live,
                           gw_cfg_where *where, char *err, size_t cap)
{
    if (be->prepared)
        return 0;
    be->prepared = true;
    be->conf = bc;
    be->live = gw_live_counter(live, bc->name);
    if (!be->live) {
        if (live) /* no table at all: a check (-t), not a serving generation */
            GW_LOG_WARN(0,
                        "event=backend_counter_local backend=%s note=\"max_sessions counts "
                        "this worker's sessions only\"",
                        bc->name);
        be->live = &be->own_live;
    }
    unsigned char probe[16];
    be->by_name = inet_pton(AF_INET, bc->address.host, probe) != 1 &&
                  inet_pton(AF_INET6, bc->address.host, probe) != 1;
    /* A name is resolved again for every session (containers come and go); failing now is
     * only a warning, so the gateway can start before its backend. */
    if (gw_resolve_host(bc->address.host, bc->address.port, &be->addr)) {
        if (!be->by_name) {
            blame(where, "backend", k, "address");
            snprintf(err, cap, "bad address %s", bc->address.host);
            return -1;
        }
        GW_LOG_WARN(0, "event=backend_unresolved backend=%s host=%s note=\"retried per session\"",
                    bc->name, bc->address.host);
    }
    if (bc->tls != GW_BE_TLS_NONE) {
        be->tls_ctx = gw_tls_client_ctx_new(bc, err, cap);
        if (!be->tls_ctx) {
            blame(where, "backend", k, tls_key(err));
            return -1;
        }
        be->host = bc->sni[0] ? bc->sni : bc->address.host;
        if (!bc->tls_verify)
            GW_LOG_WARN(0,
                        "event=tls_verify_off backend=%s note=\"the backend's certificate "
                        "is not checked\"",
                        bc->name);
    }
    return 0;
}

/* user_map: read at start and at every reload. Its backends must be the frontend's. With
 * auth = backend nobody knows a user's groups, and a fixed account's password would let
 * any client in under a mapped name: both are refused. */
static int load_user_map(gw_frontend *fe, int index, gw_cfg_where *where, char *err, size_t cap)
{
    const gw_frontend_conf *fc = fe->conf;
    fe->user_map = calloc(1, sizeof *fe->user_map);
    if (!fe->user_map) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    blame(where, "frontend", index, "user_map");
    if (gw_user_map_load_file(fc->user_map, fe->user_map, err, cap) != 0)
        return -1;
    for (size_t i = 0; i < fe->user_map->n; i++) {
        const gw_map_rule *r = &fe->user_map->v[i];
        bool found = !r->backend[0];
        for (int j = 0; j < fe->n_backends && !found; j++)
            found = strcmp(fe->backends[j]->conf->name, r->backend) == 0;
        if (!found) {
            snprintf(err, cap, "%s:%d: %s%s: backend %s is not one of this frontend's backends",
                     fc->user_map, r->line, r->group ? "@" : "", r->who, r->backend);
            return -1;
        }
        if (fc->auth == GW_AUTH_BACKEND && r->group) {
            snprintf(err, cap,
                     "%s:%d: @%s: groups are known only when the gateway checks the login "
                     "(auth = file)",
                     fc->user_map, r->line, r->who);
            return -1;
        }
        if (fc->auth == GW_AUTH_BACKEND && r->pass_file) {
            snprintf(err, cap,
                     "%s:%d: %s: a fixed account's password needs auth = file (with auth = "
                     "backend nobody would check the client's)",
                     fc->user_map, r->line, r->who);
            return -1;
        }
    }
    GW_LOG_INFO(0, "event=user_map frontend=%s path=%s rules=%zu", fc->name, fc->user_map,
                fe->user_map->n);
    blame(where, NULL, 0, NULL);
    return 0;
}

/* auth = file: the users file, read at start and at every reload (a new generation). Its
 * backend= and policy= attributes must name what exists; rates are not built yet. */
static int load_users(gw_frontend *fe, const gw_config *cfg, int index, gw_cfg_where *where,
                      char *err, size_t cap)
{
    const gw_frontend_conf *fc = fe->conf;
    fe->users = calloc(1, sizeof *fe->users);
    if (!fe->users) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    blame(where, "frontend", index, "auth_file");
    if (gw_users_load_file(fc->auth_file, fe->users, err, cap) != 0)
        return -1;
    for (size_t i = 0; i < fe->users->n; i++) {
        const gw_user_entry *e = &fe->users->v[i];
        bool found = !e->backend[0];
        for (int j = 0; j < fe->n_backends && !found; j++)
            found = strcmp(fe->backends[j]->conf->name, e->backend) == 0;
        if (!found) {
            snprintf(err, cap, "%s:%d: user %s: backend=%s is not one of this frontend's backends",
                     fc->auth_file, e->line, e->name, e->backend);
            return -1;
        }
        if (e->policy[0] && gw_config_policy(cfg, e->policy) < 0) {
            snprintf(err, cap, "%s:%d: user %s: policy=%s: no [policy %s] section", fc->auth_file,
                     e->line, e->name, e->policy, e->policy);
            return -1;
        }
    }
    GW_LOG_INFO(0, "event=users_file frontend=%s path=%s users=%zu", fc->name, fc->auth_file,
                fe->users->n);
    blame(where, NULL, 0, NULL);
    return 0;
}

/* Everything a frontend needs except its listening socket. */
static int prepare_frontend(gw_generation *g, gw_frontend *fe, int index, gw_live_table *live,
                            gw_cfg_where *where, char *err, size_t cap)
{
    const gw_frontend_conf *fc = fe->conf;
    const gw_config *cfg = &g->cfg;
    fe->cfg = cfg;
    fe->gen = g;
    fe->backends = calloc((size_t)(fc->n_backends ? fc->n_backends : 1), sizeof *fe->backends);
    if (!fe->backends || gw_bal_state_init(&fe->bal, fc->n_backends) != 0) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    for (int i = 0; i < fc->n_backends; i++) {
        int k = fc->backend_list[i];
        if (prepare_backend(&g->backends[k], &cfg->backends[k], k, live, where, err, cap) != 0)
            return -1;
        fe->backends[fe->n_backends++] = &g->backends[k];
    }
    fe->pasv_auto = strcmp(fc->pasv_address, "auto") == 0;
    if (fc->pasv_address[0] && !fe->pasv_auto &&
        (gw_resolve_host(fc->pasv_address, 0, &fe->pasv_addr) || fe->pasv_addr.family != 4)) {
        blame(where, "frontend", index, "pasv_address");
        snprintf(err, cap, "%s does not resolve to an IPv4 address", fc->pasv_address);
        return -1;
    }
    if (fc->pasv_address[0] && !fe->pasv_auto)
        GW_LOG_INFO(0, "event=pasv_address frontend=%s name=%s addr=%s", fc->name, fc->pasv_address,
                    gw_addr_str(&fe->pasv_addr));
    /* pasv_ports empty: no range (PASV uses the shared port, or gets 425). */
    fe->pool = fc->pasv_port_min ? gw_pasv_pool_get(fc->pasv_port_min, fc->pasv_port_max) : NULL;
    if (fc->pasv_port_min && !fe->pool) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    if (fc->mode != GW_FE_PLAIN) {
        const char *cert = fc->cert[0] ? fc->cert : cfg->cert;
        const char *key = fc->key[0] ? fc->key : cfg->key;
        /* The frontend's TLS policy: its own keys, else the [tls] values (config.c). */
        fe->tls_ctx = gw_tls_server_ctx_new(cert, key, fc->tls_min_version, fc->ciphers,
                                            fc->ciphersuites, err, cap);
        if (!fe->tls_ctx ||
            gw_tls_server_ctx_client_certs(fe->tls_ctx, fc->client_cert, fc->client_ca,
                                           fc->client_crl, err, cap) != 0) {
            blame(where, "frontend", index, tls_key(err));
            return -1;
        }
        if (gw_tls_server_ctx_policy(fe->tls_ctx, fc, cert, key) != 0) {
            snprintf(err, cap, "[frontend %s] cannot set the TLS session context", fc->name);
            return -1;
        }
        if (fc->pasv_shared_port > 0)
            gw_tls_server_ctx_route(fe->tls_ctx);
    }
    if (fc->auth == GW_AUTH_FILE && load_users(fe, cfg, index, where, err, cap) != 0)
        return -1;
    if (fc->auth == GW_AUTH_LDAP) {
        blame(where, "frontend", index,
              fc->ldap_bind_password_file[0] ? "ldap_bind_password_file" : "ldap_ca_file");
        if (gw_ldap_open(fc, &fe->ldap, err, cap) != 0) {
            if (fc->ldap_ca_file[0] &&
                strncmp(err, fc->ldap_ca_file, strlen(fc->ldap_ca_file)) == 0)
                blame(where, "frontend", index, "ldap_ca_file");
            return -1;
        }
        blame(where, NULL, 0, NULL);
    }
    if (fc->user_map[0] && load_user_map(fe, index, where, err, cap) != 0)
        return -1;
    if (fc->auth == GW_AUTH_PAM) {
        /* A missing service would make PAM use its "other" service: refused at load. */
        char path[GW_NAME_MAX + 16];
        snprintf(path, sizeof path, "/etc/pam.d/%s", fc->pam_service);
        if (access(path, R_OK) != 0) {
            blame(where, "frontend", index, "pam_service");
            snprintf(err, cap, "pam_service %s: cannot read %s: %s", fc->pam_service, path,
                     strerror(errno));
            return -1;
        }
        GW_LOG_INFO(0, "event=pam_service frontend=%s service=%s", fc->name, fc->pam_service);
    }
    return 0;
}

gw_frontend *gw_vhost_find(gw_frontend *lfe, const char *name)
{
    gw_generation *g = lfe->gen;
    gw_frontend *dflt = NULL;
    for (int i = 0; i < g->n_frontends; i++) {
        gw_frontend *fe = &g->frontends[i];
        if (fe->vh_listen != lfe)
            continue;
        if (!fe->conf->server_name[0])
            dflt = fe;
        else if (gw_server_name_match(fe->conf->server_name, name))
            return fe;
    }
    return dflt;
}

static SSL_CTX *vhost_ctx(void *arg, const char *name)
{
    gw_frontend *fe = gw_vhost_find(arg, name);
    return fe ? fe->tls_ctx : NULL;
}

static bool same_address(const gw_frontend_conf *a, const gw_frontend_conf *b)
{
    return a->listen.port == b->listen.port && strcmp(a->listen.host, b->listen.host) == 0;
}

/* Frontends sharing a listen address: one listener (the default's, else the first's), and
 * TLS contexts that switch to the frontend the client's SNI names. */
static void group_vhosts(gw_generation *g)
{
    for (int i = 0; i < g->n_frontends; i++) {
        gw_frontend *fe = &g->frontends[i], *first = NULL, *dflt = NULL;
        int n = 0;
        for (int j = 0; j < g->n_frontends; j++) {
            gw_frontend *o = &g->frontends[j];
            if (!same_address(fe->conf, o->conf))
                continue;
            n++;
            if (!first)
                first = o;
            if (!o->conf->server_name[0] && !dflt)
                dflt = o;
        }
        fe->vh_listen = dflt ? dflt : first;
        fe->vhosted = n > 1 || fe->conf->server_name[0];
    }
    for (int i = 0; i < g->n_frontends; i++) {
        gw_frontend *fe = &g->frontends[i];
        if (fe->vhosted && fe->tls_ctx)
            gw_tls_server_ctx_set_sni(fe->tls_ctx, vhost_ctx, fe->vh_listen);
    }
}

static void free_generation(gw_generation *g)
{
    gw_logfile_close(g->xferlog_fd);
    for (int i = 0; i < g->n_frontends; i++) {
        gw_tls_ctx_free(g->frontends[i].tls_ctx);
        free(g->frontends[i].backends);
        gw_bal_state_free(&g->frontends[i].bal);
        gw_users_free(g->frontends[i].users);
        free(g->frontends[i].users);
        gw_ldap_close(g->frontends[i].ldap);
        gw_user_map_free(g->frontends[i].user_map);
        free(g->frontends[i].user_map);
    }
    for (int i = 0; g->backends && i < g->cfg.n_backends; i++)
        gw_tls_ctx_free(g->backends[i].tls_ctx);
    free(g->frontends);
    free(g->backends);
    gw_config_free(&g->cfg);
    free(g);
}

void gw_generation_ref(gw_generation *g)
{
    g->refs++;
}

void gw_generation_unref(gw_generation *g)
{
    if (--g->refs == 0)
        free_generation(g);
}

gw_generation *gw_generation_new(const gw_config *cfg, gw_health *health, gw_live_table *live,
                                 gw_cfg_where *where, char *err, size_t cap)
{
    blame(where, NULL, 0, NULL);
    gw_generation *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    static _Atomic uint64_t made;
    g->seq = ++made;
    g->xferlog_fd = -1;
    if (gw_config_copy(&g->cfg, cfg) != 0 ||
        !(g->backends =
              calloc((size_t)(cfg->n_backends ? cfg->n_backends : 1), sizeof *g->backends)) ||
        !(g->frontends =
              calloc((size_t)(cfg->n_frontends ? cfg->n_frontends : 1), sizeof *g->frontends))) {
        snprintf(err, cap, "out of memory");
        free_generation(g);
        return NULL;
    }
    g->refs = 1;
    g->health = health;
    if (g->cfg.xferlog[0]) {
        g->xferlog_fd = gw_logfile_open(g->cfg.xferlog, err, cap); /* SIGUSR1 reopens */
        if (g->xferlog_fd < 0) {
            blame(where, "global", 0, "xferlog");
            free_generation(g);
            return NULL;
        }
    }
    for (int i = 0; i < g->cfg.n_frontends; i++) {
        gw_frontend *fe = &g->frontends[i];
        fe->conf = &g->cfg.frontends[i];
        g->n_frontends = i + 1;
        if (prepare_frontend(g, fe, i, live, where, err, cap) != 0) {
            free_generation(g);
            return NULL;
        }
    }
    group_vhosts(g);
    return g;
}

void gw_cfg_where_format(const gw_config *cfg, const gw_cfg_where *w, const char *problem,
                         char *out, size_t cap)
{
    if (!w || !w->section) {
        snprintf(out, cap, "%s", problem);
        return;
    }
    char at[GW_PATH_MAX + GW_NAME_MAX + 64];
    gw_config_where(cfg, w->section, w->index, w->key, at, sizeof at);
    snprintf(out, cap, "%s: %s", at, problem);
}

/* Binding port 0 on the address proves it is one of this host's, without taking the
 * port a running gateway holds. */
static int check_local(const char *host, char *err, size_t cap)
{
    gw_addr a;
    struct sockaddr_storage ss;
    if (gw_resolve_host(host, 0, &a)) {
        snprintf(err, cap, "cannot resolve %s", host);
        return -1;
    }
    gw_addr_to_sockaddr(&a, &ss);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    socklen_t len =
        ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    int r = fd >= 0 ? bind(fd, (struct sockaddr *)&ss, len) : -1, e = errno;
    if (fd >= 0)
        close(fd);
    if (r != 0) {
        snprintf(err, cap, "%s is not an address of this host: %s", host, strerror(e));
        return -1;
    }
    return 0;
}

int gw_generation_check(const gw_config *cfg, gw_cfg_where *where, char *err, size_t cap)
{
    gw_generation *g = gw_generation_new(cfg, NULL, NULL, where, err, cap);
    if (!g)
        return -1;
    gw_generation_unref(g);
    for (int i = 0; i < cfg->n_frontends; i++)
        if (check_local(cfg->frontends[i].listen.host, err, cap) != 0) {
            blame(where, "frontend", i, "listen");
            return -1;
        }
    if (cfg->admin_listen.port && check_local(cfg->admin_listen.host, err, cap) != 0) {
        blame(where, "global", 0, "admin_listen");
        return -1;
    }
    return 0;
}
