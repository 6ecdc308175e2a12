/* The transfer log's lines ([global] xferlog, xferlog_format): pure formatting, no I/O.
 *   kv:     `2026-12-03T17:57:53Z session=7 peer=ADDR:PORT user="u" verb=RETR file="f"
 *            bytes=N ms=N code=226 result=ok` (every transfer, listings included)
 *   wuftpd: the wu-ftpd/vsftpd line of xferlog(5), for xferstats, fail2ban, webalizer:
 *           `Thu Dec  3 17:57:53 2026 1 127.0.0.1 1024 /f b _ o r user ftp 0 * c`
 *           (file transfers only: RETR, STOR, STOU, APPE) */
#ifndef GW_XFERLOG_H
#define GW_XFERLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include "config.h"

typedef struct gw_xfer_rec {
    time_t end;         /* wall clock when the transfer ended */
    uint64_t ms;        /* how long it ran */
    uint64_t session;   /* session id */
    const char *peer;   /* the client, ADDR:PORT (kv) */
    const char *host;   /* the client's address alone (wuftpd) */
    const char *user;   /* the USER argument, "" before USER (never a password) */
    const char *verb;   /* RETR, STOR, STOU, APPE, LIST, NLST, MLSD */
    const char *file;   /* the command's argument */
    uint64_t bytes;     /* data bytes relayed */
    int code;           /* the backend's final reply code, 0 when none came */
    const char *result; /* ok | failed | unused (no data connection was used) */
    bool ascii;         /* TYPE A was in force */
} gw_xfer_rec;

/* Longest user and address text written; longer ones are cut. */
#define GW_XFERLOG_FIELD_MAX 128

/* rec as one line in format f, '\n' included, NUL-terminated in out (cap bytes). A file
 * name that does not fit is cut, the other fields never are. Returns the line's length, or
 * 0 when f does not log this transfer (wuftpd: a listing) or cap cannot hold the fixed
 * fields. wuftpd writes spaces in names as '_' (as wu-ftpd and vsftpd do) and control
 * bytes as '?', so that every line has exactly 18 blank-separated fields. */
size_t gw_xferlog_line(char *out, size_t cap, enum gw_xferlog_format f, const gw_xfer_rec *rec);

#endif
