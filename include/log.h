/* Levelled key=value logging to stderr. Every line names its session ("session=-" for the
 * process itself). */
#ifndef GW_LOG_H
#define GW_LOG_H

#include <stdint.h>
#include "config.h"

void gw_log_set_level(enum gw_log_level level);
/* log_format = json: every line becomes one JSON object with the same keys. */
void gw_log_set_json(bool json);
bool gw_log_enabled(enum gw_log_level level);
/* fmt continues the line after "level=... session=...": write key=value pairs. */
void gw_log(enum gw_log_level level, uint64_t session, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define GW_LOG_ERR(sid, ...) gw_log(GW_LOG_ERROR, (sid), __VA_ARGS__)
#define GW_LOG_WARN(sid, ...) gw_log(GW_LOG_WARN, (sid), __VA_ARGS__)
#define GW_LOG_INFO(sid, ...) gw_log(GW_LOG_INFO, (sid), __VA_ARGS__)
#define GW_LOG_DEBUG(sid, ...)                                                                     \
    do {                                                                                           \
        if (gw_log_enabled(GW_LOG_DEBUG))                                                          \
            gw_log(GW_LOG_DEBUG, (sid), __VA_ARGS__);                                              \
    } while (0)

#endif
