/* TEMPORARY stand-in for proxy/health.c (branch wt-health): every backend is up, reports are
 * ignored. Delete this file when the real implementation of include/health.h is merged. */
#include "health.h"

#include <stdlib.h>

struct gw_health {
    int unused;
};

gw_health *gw_health_new(void)
{
    return calloc(1, sizeof(gw_health));
}

int gw_health_configure(gw_health *h, const gw_config *cfg)
{
    return 0;
}

int gw_health_start(gw_health *h, uv_loop_t *loop)
{
    return 0;
}

void gw_health_stop(gw_health *h) {}

void gw_health_free(gw_health *h)
{
    free(h);
}

bool gw_health_is_up(gw_health *h, const char *backend)
{
    return true;
}

void gw_health_report(gw_health *h, const char *backend, bool ok, const char *reason) {}
