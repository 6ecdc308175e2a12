/* Session timelines and summaries: see timeline.h. */
#include "timeline.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static const char *const kind_names[GW_TL_KINDS] = {
    "connect",      "handshake", "backend",  "command",      "login",
    "login_failed", "data",      "transfer", "reply_failed", "close",
};

const char *gw_tl_kind_name(int kind)
{
    return kind >= 0 && kind < GW_TL_KINDS ? kind_names[kind] : "unknown";
}

uint64_t gw_tl_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void gw_tl_add(gw_timeline *t, enum gw_tl_kind kind, const char *fmt, ...)
{
    gw_tl_event *e = &t->ev[t->total % GW_TL_EVENTS];
    t->total++;
    e->ms = gw_tl_wall_ms();
    e->kind = (uint8_t)kind;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->detail, sizeof e->detail, fmt, ap);
    va_end(ap);
    for (char *p = e->detail; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
}

void gw_tl_command(gw_timeline *t, const char *verb, const char *arg)
{
    if (strcasecmp(verb, "PASS") == 0 || strcasecmp(verb, "ACCT") == 0)
        arg = arg && arg[0] ? "****" : "";
    if (arg && arg[0])
        gw_tl_add(t, GW_TL_COMMAND, "%.8s %s", verb, arg);
    else
        gw_tl_add(t, GW_TL_COMMAND, "%.8s", verb);
}

static void iso_time(uint64_t ms, char *out, size_t cap)
{
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    char base[32];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, cap, "%s.%03uZ", base, (unsigned)(ms % 1000));
}

void gw_tl_json(const gw_timeline *t, uint64_t id, const gw_sess_states *st, gw_sbuf *o)
{
    gw_sbuf_printf(o, "{\"id\":%llu", (unsigned long long)id);
    if (st) {
        const struct {
            const char *key, *val;
        } states[] = {{"client", st->client},
                      {"backend", st->backend},
                      {"pending", st->pending},
                      {"transfer", st->transfer}};
        for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) {
            char v[sizeof st->client + 1];
            /* bounded even when not terminated ("%s" would read on to a NUL) */
            snprintf(v, sizeof v, "%.*s", (int)sizeof st->client, states[i].val);
            gw_sbuf_printf(o, "%s\"%s\":", i ? "," : ",\"state\":{", states[i].key);
            gw_sbuf_json(o, v);
        }
        gw_sbuf_str(o, "}");
    }
    gw_sbuf_printf(o, ",\"events_total\":%u,\"events\":[", t->total);
    uint32_t n = t->total < GW_TL_EVENTS ? t->total : GW_TL_EVENTS;
    for (uint32_t i = 0; i < n; i++) {
        const gw_tl_event *e = &t->ev[(t->total - n + i) % GW_TL_EVENTS];
        char when[48], detail[GW_TL_DETAIL];
        iso_time(e->ms, when, sizeof when);
        memcpy(detail, e->detail, sizeof detail);
        detail[sizeof detail - 1] = '\0';
        gw_sbuf_printf(o, "%s{\"time\":\"%s\",\"event\":", i ? "," : "", when);
        gw_sbuf_json(o, gw_tl_kind_name(e->kind));
        gw_sbuf_str(o, ",\"detail\":");
        gw_sbuf_json(o, detail);
        gw_sbuf_str(o, "}");
    }
    gw_sbuf_str(o, "]}");
}

void gw_sess_summary_json(const gw_sess_summary *s, gw_sbuf *o)
{
    const struct {
        const char *key, *val;
    } strs[] = {{"frontend", s->frontend}, {"client", s->client}, {"user", s->user},
                {"backend", s->backend},   {"state", s->state},   {"tls", s->tls}};
    gw_sbuf_printf(o, "{\"id\":%llu,\"worker\":%d", (unsigned long long)s->id, s->worker);
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        gw_sbuf_printf(o, ",\"%s\":", strs[i].key);
        char v[256];
        snprintf(v, sizeof v, "%s", strs[i].val); /* bounded even when not terminated */
        gw_sbuf_json(o, v);
    }
    gw_sbuf_printf(o, ",\"age_seconds\":%llu,\"idle_seconds\":%llu", (unsigned long long)s->age_s,
                   (unsigned long long)s->idle_s);
    if (s->has_rates) {
        static const char *const dirs[2] = {"down", "up"};
        gw_sbuf_str(o, ",\"rate_limits\":{");
        for (int d = 0; d < 2; d++)
            gw_sbuf_printf(o, "%s\"%s\":{\"session\":%llu,\"user\":%llu,\"frontend\":%llu}",
                           d ? "," : "", dirs[d], (unsigned long long)s->rate_limits[d][0],
                           (unsigned long long)s->rate_limits[d][1],
                           (unsigned long long)s->rate_limits[d][2]);
        gw_sbuf_str(o, "}");
    }
    if (s->in_transfer) {
        char verb[sizeof s->verb + 1], file[sizeof s->file + 1];
        snprintf(verb, sizeof verb, "%.*s", (int)sizeof s->verb, s->verb);
        snprintf(file, sizeof file, "%.*s", (int)sizeof s->file, s->file);
        gw_sbuf_str(o, ",\"transfer\":{\"verb\":");
        gw_sbuf_json(o, verb);
        gw_sbuf_str(o, ",\"file\":");
        gw_sbuf_json(o, file);
        gw_sbuf_printf(o, ",\"bytes\":%llu", (unsigned long long)s->bytes);
        if (s->rate_running)
            gw_sbuf_printf(o,
                           ",\"rate\":{\"limit\":%llu,\"current\":%llu,"
                           "\"limited_ms\":%llu}",
                           (unsigned long long)s->rate_limit, (unsigned long long)s->rate_current,
                           (unsigned long long)s->rate_limited_ms);
        gw_sbuf_str(o, "}");
    }
    gw_sbuf_str(o, "}");
}
