/* libFuzzer target: arbitrary text through gw_config_parse. It must never crash, errors must
 * be NUL-terminated and start with the origin, and a success must be self-consistent. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define ORIGIN "fuzz.conf"

static gw_config cfg;

static void check(int ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    memset(err, 'X', sizeof err);
    int rc = gw_config_parse((const char *)data, size, ORIGIN, &cfg, err, sizeof err);
    if (rc != 0) {
        check(rc == -1);
        check(memchr(err, '\0', sizeof err) != NULL);
        check(strncmp(err, ORIGIN ":", strlen(ORIGIN ":")) == 0);
        /* A tiny buffer still gets a terminated prefix of the message. */
        char tiny[5];
        check(gw_config_parse((const char *)data, size, ORIGIN, &cfg, tiny, sizeof tiny) == -1);
        check(strcmp(tiny, "fuzz") == 0);
        return 0;
    }
    check(cfg.n_frontends >= 1 && cfg.n_backends >= 1);
    for (int i = 0; i < cfg.n_frontends; i++) {
        const gw_frontend_conf *f = &cfg.frontends[i];
        check(f->n_backends >= 1 && f->n_backends <= cfg.n_backends && f->backend_list);
        check(f->backend_index == f->backend_list[0]);
        for (int j = 0; j < f->n_backends; j++)
            check(f->backend_list[j] >= 0 && f->backend_list[j] < cfg.n_backends);
        check(f->listen.port != 0 && memchr(f->listen.host, '\0', sizeof f->listen.host));
        /* pasv_ports: a range of unprivileged ports, or none at all ("pasv_ports =") */
        check((f->pasv_port_min == 0 && f->pasv_port_max == 0) ||
              (f->pasv_port_min >= 1024 && f->pasv_port_min <= f->pasv_port_max));
        check(memchr(f->name, '\0', sizeof f->name) && f->name[0]);
        check(memchr(f->backend, '\0', sizeof f->backend) != NULL);
        /* The TLS policy after the merge from [tls] is consistent on its own. */
        check(f->mode == GW_FE_PLAIN || f->client_cert == GW_CERT_NONE || f->client_ca[0]);
        check(f->mode == GW_FE_PLAIN || !f->client_cert_user || f->client_cert != GW_CERT_NONE);
        check(!f->cert[0] == !f->key[0]);
    }
    for (int i = 0; i < cfg.n_backends; i++)
        check(cfg.backends[i].address.port != 0 && cfg.backends[i].connect_timeout > 0);
    check(cfg.idle_timeout > 0 && cfg.login_timeout > 0);
    /* A deep copy matches and outlives the original (leaks are caught by libFuzzer). */
    gw_config copy;
    if (gw_config_copy(&copy, &cfg) == 0) {
        check(copy.n_frontends == cfg.n_frontends && copy.n_backends == cfg.n_backends);
        for (int i = 0; i < cfg.n_frontends; i++)
            check(memcmp(copy.frontends[i].backend_list, cfg.frontends[i].backend_list,
                         (size_t)cfg.frontends[i].n_backends * sizeof(int)) == 0);
        gw_config_free(&cfg);
        check(copy.backends[0].name[0] != '\0'); /* still readable */
        gw_config_free(&copy);
    }
    gw_config_free(&cfg);
    return 0;
}
