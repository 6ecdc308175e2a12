/* Small text files the gateway reads whole: users files, user maps, admin users, password
 * files. One reader (regular file, size bound, "private": nobody but the owner may read or
 * write it, since hashes and passwords are offline guessing targets) and one line walker
 * (comments, blanks, CR, bad bytes) for their parsers. Pure: no libuv, no OpenSSL. */
#ifndef GW_TEXTFILE_H
#define GW_TEXTFILE_H

#include <stdbool.h>
#include <stddef.h>

/* Modes a secret's file may not have (forbid of gw_textfile_read). */
#define GW_TEXTFILE_OWNER_ONLY 077u /* hashes read by the gateway's own user */
#define GW_TEXTFILE_NO_OTHERS 007u  /* also a group (root:ftpsgate 0640), as admin_users */

/* The whole file, NUL-terminated (heap; *len without the NUL), or NULL with the problem in
 * err as "PATH: problem". forbid: mode bits that refuse it (0: any mode). */
char *gw_textfile_read(const char *path, size_t max, unsigned forbid, size_t *len, char *err,
                       size_t cap);

/* "ORIGIN:LINE: problem" (LINE 0: "ORIGIN: problem") into err; returns -1. */
__attribute__((format(printf, 5, 6))) int
gw_textfile_fail(char *err, size_t cap, const char *origin, int line, const char *fmt, ...);

/* Walks text line by line (LF or CRLF), skipping blank lines and '#' comments. */
typedef struct gw_lines {
    const char *p, *end;
    int line;          /* the current line's number (1-based) */
    unsigned char bad; /* the walk stopped at this byte: NUL or another control character
                          (a tab is a blank); 0: it ended normally */
} gw_lines;

gw_lines gw_lines_start(const char *text, size_t len);
/* The next line with content, blanks at both ends removed: true with [*s, *s + *n). false at
 * the end, or at a line holding a bad byte (it->bad, it->line). */
bool gw_lines_next(gw_lines *it, const char **s, size_t *n);
/* "a NUL byte" or "control character 0xNN in line", for it->bad. */
const char *gw_lines_bad_text(const gw_lines *it, char *buf, size_t cap);

#endif
