/* Frontends: resolve addresses, build TLS contexts, listen, and hand accepted connections
 * to sessions. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "conn.h"
#include "log.h"
#include "server.h"
#include "session.h"

static int resolve(const char *host, uint16_t port, gw_addr *out)
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

static void on_connection(uv_stream_t *server, int status)
{
    gw_frontend *fe = server->data;
    if (status < 0) {
        /* libuv closes the pending connection itself on EMFILE (its spare descriptor), so
         * the loop neither spins nor dies; we only keep the log readable. */
        uint64_t now = uv_now(fe->srv->loop);
        if (now - fe->srv->last_accept_warn >= 1000) {
            fe->srv->last_accept_warn = now;
            GW_LOG_WARN(0, "event=accept_failed frontend=%s reason=\"%s\"", fe->conf->name,
                        uv_strerror(status));
        }
        return;
    }
    gw_session_accept(fe, server);
}

static int start_frontend(gw_server *srv, gw_frontend *fe, char *err, size_t cap)
{
    const gw_frontend_conf *fc = fe->conf;
    const gw_config *cfg = srv->cfg;
    fe->srv = srv;
    fe->backend = &cfg->backends[fc->backend_index];
    unsigned char probe[16];
    fe->backend_by_name = inet_pton(AF_INET, fe->backend->address.host, probe) != 1 &&
                          inet_pton(AF_INET6, fe->backend->address.host, probe) != 1;
    /* A name is resolved again for every session (containers come and go); failing now is
     * only a warning, so the gateway can start before its backend. */
    if (resolve(fe->backend->address.host, fe->backend->address.port, &fe->backend_addr)) {
        if (!fe->backend_by_name) {
            snprintf(err, cap, "[backend %s] address: bad address %s", fe->backend->name,
                     fe->backend->address.host);
            return -1;
        }
        GW_LOG_WARN(0, "event=backend_unresolved backend=%s host=%s note=\"retried per "
                       "session\"",
                    fe->backend->name, fe->backend->address.host);
    }
    if (fc->pasv_address[0] &&
        (resolve(fc->pasv_address, 0, &fe->pasv_addr) || fe->pasv_addr.family != 4)) {
        snprintf(err, cap, "[frontend %s] pasv_address: %s does not resolve to an IPv4 address",
                 fc->name, fc->pasv_address);
        return -1;
    }
    if (fc->pasv_address[0])
        GW_LOG_INFO(0, "event=pasv_address frontend=%s name=%s addr=%s", fc->name,
                    fc->pasv_address, gw_addr_str(&fe->pasv_addr));
    fe->pool = gw_pasv_pool_get(fc->pasv_port_min, fc->pasv_port_max);
    if (fc->mode != GW_FE_PLAIN) {
        const char *cert = fc->cert[0] ? fc->cert : cfg->cert;
        const char *key = fc->key[0] ? fc->key : cfg->key;
        char e[256];
        fe->tls_ctx = gw_tls_server_ctx_new(cert, key, cfg->tls_min_version, cfg->ciphers,
                                            cfg->ciphersuites, e, sizeof e);
        if (!fe->tls_ctx) {
            snprintf(err, cap, "[frontend %s] %s", fc->name, e);
            return -1;
        }
    }
    if (fe->backend->tls != GW_BE_TLS_NONE) {
        char e[256];
        fe->backend_tls_ctx = gw_tls_client_ctx_new(fe->backend, e, sizeof e);
        if (!fe->backend_tls_ctx) {
            snprintf(err, cap, "[backend %s] %s", fe->backend->name, e);
            return -1;
        }
        fe->backend_host = fe->backend->sni[0] ? fe->backend->sni : fe->backend->address.host;
        if (!fe->backend->tls_verify)
            GW_LOG_WARN(0, "event=tls_verify_off backend=%s note=\"the backend's certificate "
                           "is not checked\"",
                        fe->backend->name);
    }
    gw_addr la;
    if (resolve(fc->listen.host, fc->listen.port, &la)) {
        snprintf(err, cap, "[frontend %s] listen: cannot resolve %s", fc->name, fc->listen.host);
        return -1;
    }
    struct sockaddr_storage ss;
    gw_addr_to_sockaddr(&la, &ss);
    uv_tcp_init(srv->loop, &fe->listener);
    fe->listener.data = fe;
    fe->listening = true;
    int r = uv_tcp_bind(&fe->listener, (struct sockaddr *)&ss, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&fe->listener, 511, on_connection);
    if (r != 0) {
        snprintf(err, cap, "[frontend %s] cannot listen on %s: %s", fc->name, gw_addr_str(&la),
                 uv_strerror(r));
        return -1;
    }
    char backend[80];
    snprintf(backend, sizeof backend, "%s", gw_addr_str(&fe->backend_addr));
    GW_LOG_INFO(0, "event=listening frontend=%s mode=%s addr=%s backend=%s", fc->name,
                fc->mode == GW_FE_IMPLICIT ? "implicit" : fc->mode == GW_FE_EXPLICIT ? "explicit"
                                                                                      : "plain",
                gw_addr_str(&la), backend);
    return 0;
}

int gw_server_start(gw_server *srv, uv_loop_t *loop, gw_config *cfg, char *err, size_t cap)
{
    memset(srv, 0, sizeof *srv);
    srv->loop = loop;
    srv->cfg = cfg;
    srv->per_ip = gw_ip_table_new();
    if (!srv->per_ip) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    for (int i = 0; i < cfg->n_frontends; i++) {
        gw_frontend *fe = &srv->frontends[i];
        fe->conf = &cfg->frontends[i];
        srv->n_frontends = i + 1;
        if (start_frontend(srv, fe, err, cap) != 0)
            return -1;
    }
    return 0;
}

void gw_server_stop_listening(gw_server *srv)
{
    for (int i = 0; i < srv->n_frontends; i++) {
        gw_frontend *fe = &srv->frontends[i];
        if (fe->listening && !uv_is_closing((uv_handle_t *)&fe->listener))
            uv_close((uv_handle_t *)&fe->listener, NULL);
    }
}

void gw_server_free(gw_server *srv)
{
    for (int i = 0; i < srv->n_frontends; i++)
    {
        gw_tls_ctx_free(srv->frontends[i].tls_ctx);
        gw_tls_ctx_free(srv->frontends[i].backend_tls_ctx);
    }
    gw_pasv_pool_free_all();
    gw_ip_table_free(srv->per_ip);
}
