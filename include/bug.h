/* "Cannot happen" checks (HAProxy's BUG_ON, vsftpd's bug()). Pure: usable from every module.
 *
 *   if (GW_BUG_ON(st > CS_CLOSING))  -- true when the invariant is broken; the caller backs out
 *       return;
 *
 * Built with GW_BUG_ABORT (SAN=1, the fuzz targets) a broken invariant aborts at once with
 * file:line and the condition, so that tests and fuzzers stop on it. In a release build it is
 * logged (`level=error ... event=bug at=FILE:LINE cond="..."`) and the process goes on: the
 * caller fails what it holds (GW_SESS_BUG_ON in session_int.h ends just that session). */
#ifndef GW_BUG_H
#define GW_BUG_H

#include <stdbool.h>
#include <stdint.h>

/* Report a broken invariant (session: the one it belongs to, 0 when none is at hand): with
 * fatal, abort after writing file:line and cond to stderr; else log it and return true. */
bool gw_bug(uint64_t session, const char *file, int line, const char *cond, bool fatal);

#ifdef GW_BUG_ABORT
#define GW_BUG_FATAL true
#else
#define GW_BUG_FATAL false
#endif

/* An expression: false, or (cond held) reported and true. */
#define GW_BUG_ON(cond) GW_BUG_ON_SID(0, cond)
/* The same for code that knows its session (logged with session=ID). */
#define GW_BUG_ON_SID(sid, cond)                                                                   \
    (__builtin_expect(!!(cond), 0) ? gw_bug((sid), __FILE__, __LINE__, #cond, GW_BUG_FATAL) : false)

#endif
