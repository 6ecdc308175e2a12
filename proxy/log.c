/* Logging: one line per event, written with a single write(2) so lines never interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Set by the main thread (start, reload), read by every worker. */
static _Atomic int current_level = GW_LOG_INFO;
static _Atomic bool json_format;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void gw_log_set_level(enum gw_log_level level)
{
    current_level = level;
}

void gw_log_set_json(bool json)
{
    json_format = json;
}

static size_t put_json_string(char *out, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    if (o < cap)
        out[o++] = '"';
    for (size_t i = 0; i < n && o + 7 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    if (o < cap)
        out[o++] = '"';
    return o;
}

/* Our lines are `key=value key="quoted value"`: turn them into one JSON object. */
static size_t to_json(const char *text, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    const char *p = text, *end = text + n;
    out[o++] = '{';
    while (p < end && o + 16 < cap) {
        while (p < end && *p == ' ')
            p++;
        const char *k = p;
        while (p < end && *p != '=' && *p != ' ')
            p++;
        if (p >= end || *p != '=')
            break;
        size_t klen = (size_t)(p - k);
        p++;
        const char *v = p;
        size_t vlen;
        if (p < end && *p == '"') {
            v = ++p;
            while (p < end && !(*p == '"' && (p + 1 == end || p[1] == ' ')))
                p++;
            vlen = (size_t)(p - v);
            if (p < end)
                p++;
        } else {
            while (p < end && *p != ' ')
                p++;
            vlen = (size_t)(p - v);
        }
        if (o > 1)
            out[o++] = ',';
        o += put_json_string(out + o, cap - o, k, klen);
        if (o < cap)
            out[o++] = ':';
        o += put_json_string(out + o, cap - o, v, vlen);
    }
    if (o < cap)
        out[o++] = '}';
    return o;
}

bool gw_log_enabled(enum gw_log_level level)
{
    return (int)level <= current_level;
}

void gw_log(enum gw_log_level level, uint64_t session, const char *fmt, ...)
{
    if (!gw_log_enabled(level))
        return;
    char line[2048];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    int k;
    if (session)
        k = snprintf(line + n, sizeof line - n, ".%03ldZ level=%s session=%llu ",
                     (long)tv.tv_usec / 1000, level_names[level], (unsigned long long)session);
    else
        k = snprintf(line + n, sizeof line - n, ".%03ldZ level=%s session=- ",
                     (long)tv.tv_usec / 1000, level_names[level]);
    n += (size_t)k;
    va_list ap;
    va_start(ap, fmt);
    k = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    n = (k < 0) ? n : (n + (size_t)k > sizeof line - 2 ? sizeof line - 2 : n + (size_t)k);
    if (json_format) {
        /* "ts level=.. session=.. ..." -> {"ts":..,"level":..,...} */
        char js[4096], tmp[2048 + 8];
        int t = snprintf(tmp, sizeof tmp, "ts=%.*s", (int)n, line);
        n = to_json(tmp, t < 0 ? 0 : (size_t)t, js, sizeof js - 1);
        js[n++] = '\n';
        ssize_t w = write(STDERR_FILENO, js, n);
        (void)w;
        return;
    }
    line[n++] = '\n';
    /* Best effort: a log that cannot be written must not stop the gateway. */
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}
