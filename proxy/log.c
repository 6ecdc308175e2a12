/* Logging: one line per event, written with a single write(2) so lines never interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static enum gw_log_level current_level = GW_LOG_INFO;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void gw_log_set_level(enum gw_log_level level)
{
    current_level = level;
}

bool gw_log_enabled(enum gw_log_level level)
{
    return level <= current_level;
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
    line[n++] = '\n';
    /* Best effort: a log that cannot be written must not stop the gateway. */
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}
