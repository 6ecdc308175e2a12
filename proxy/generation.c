/* Configuration generations: see generation.h. Built on the worker's thread at start and on
 * SIGHUP; freed by whoever drops the last reference (the worker or the last session). */
#include "generation.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"

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

/* Everything a frontend needs except its listening socket. */
static int prepare_frontend(gw_generation *g, gw_frontend *fe, char *err, size_t cap)
{
    const gw_frontend_conf *fc = fe->conf;
    const gw_config *cfg = &g->cfg;
    fe->cfg = cfg;
    fe->gen = g;
    fe->backend = &cfg->backends[fc->backend_index];
    unsigned char probe[16];
    fe->backend_by_name = inet_pton(AF_INET, fe->backend->address.host, probe) != 1 &&
                          inet_pton(AF_INET6, fe->backend->address.host, probe) != 1;
    /* A name is resolved again for every session (containers come and go); failing now is
     * only a warning, so the gateway can start before its backend. */
    if (gw_resolve_host(fe->backend->address.host, fe->backend->address.port, &fe->backend_addr)) {
        if (!fe->backend_by_name) {
            snprintf(err, cap, "[backend %s] address: bad address %s", fe->backend->name,
                     fe->backend->address.host);
            return -1;
        }
        GW_LOG_WARN(0,
                    "event=backend_unresolved backend=%s host=%s note=\"retried per "
                    "session\"",
                    fe->backend->name, fe->backend->address.host);
    }
    if (fc->pasv_address[0] &&
        (gw_resolve_host(fc->pasv_address, 0, &fe->pasv_addr) || fe->pasv_addr.family != 4)) {
        snprintf(err, cap, "[frontend %s] pasv_address: %s does not resolve to an IPv4 address",
                 fc->name, fc->pasv_address);
        return -1;
    }
    if (fc->pasv_address[0])
        GW_LOG_INFO(0, "event=pasv_address frontend=%s name=%s addr=%s", fc->name, fc->pasv_address,
                    gw_addr_str(&fe->pasv_addr));
    fe->pool = gw_pasv_pool_get(fc->pasv_port_min, fc->pasv_port_max);
    if (!fe->pool) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    char e[256];
    if (fc->mode != GW_FE_PLAIN) {
        const char *cert = fc->cert[0] ? fc->cert : cfg->cert;
        const char *key = fc->key[0] ? fc->key : cfg->key;
        fe->tls_ctx = gw_tls_server_ctx_new(cert, key, cfg->tls_min_version, cfg->ciphers,
                                            cfg->ciphersuites, e, sizeof e);
        if (!fe->tls_ctx) {
            snprintf(err, cap, "[frontend %s] %s", fc->name, e);
            return -1;
        }
    }
    if (fe->backend->tls != GW_BE_TLS_NONE) {
        fe->backend_tls_ctx = gw_tls_client_ctx_new(fe->backend, e, sizeof e);
        if (!fe->backend_tls_ctx) {
            snprintf(err, cap, "[backend %s] %s", fe->backend->name, e);
            return -1;
        }
        fe->backend_host = fe->backend->sni[0] ? fe->backend->sni : fe->backend->address.host;
        if (!fe->backend->tls_verify)
            GW_LOG_WARN(0,
                        "event=tls_verify_off backend=%s note=\"the backend's certificate "
                        "is not checked\"",
                        fe->backend->name);
    }
    return 0;
}

static void free_generation(gw_generation *g)
{
    if (g->xferlog_fd >= 0)
        close(g->xferlog_fd);
    for (int i = 0; i < g->n_frontends; i++) {
        gw_tls_ctx_free(g->frontends[i].tls_ctx);
        gw_tls_ctx_free(g->frontends[i].backend_tls_ctx);
    }
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

gw_generation *gw_generation_new(const gw_config *cfg, char *err, size_t cap)
{
    gw_generation *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    g->cfg = *cfg;
    g->refs = 1;
    g->xferlog_fd = -1;
    if (g->cfg.xferlog[0]) {
        g->xferlog_fd = open(g->cfg.xferlog, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (g->xferlog_fd < 0) {
            snprintf(err, cap, "[global] xferlog: cannot open %s: %s", g->cfg.xferlog,
                     strerror(errno));
            free(g);
            return NULL;
        }
    }
    for (int i = 0; i < g->cfg.n_frontends; i++) {
        gw_frontend *fe = &g->frontends[i];
        fe->conf = &g->cfg.frontends[i];
        g->n_frontends = i + 1;
        if (prepare_frontend(g, fe, err, cap) != 0) {
            free_generation(g);
            return NULL;
        }
    }
    return g;
}
