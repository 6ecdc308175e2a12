/* Pure, resumable FTP reply parser: one line at a time, multi-line aware (RFC 959 §4.2). */
#ifndef GW_FTP_REPLY_H
#define GW_FTP_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_REPLY_LINE_MAX 8192 /* bytes per reply line without CRLF */

enum gw_reply_status {
    GW_REPLY_AGAIN = 0,   /* all input consumed, no complete line yet */
    GW_REPLY_LINE = 1,    /* one line ready in p->line */
    GW_REPLY_INVALID = 2, /* a reply's first line does not start with "ddd " or "ddd-" */
    GW_REPLY_TOOLONG = 3, /* a line passed GW_REPLY_LINE_MAX */
};

typedef struct gw_reply_parser {
    bool in_multi;                    /* inside a ddd- ... ddd reply */
    bool done;                        /* previous call returned a line; reset on the next call */
    int code;                         /* code of the reply the current line belongs to (100..599) */
    bool first;                       /* this line starts a reply */
    bool last;                        /* this line ends the reply */
    size_t len;                       /* bytes in line including the trailing "\r\n" */
    char line[GW_REPLY_LINE_MAX + 3]; /* NUL-terminated, always ends in "\r\n" */
} gw_reply_parser;

void gw_reply_init(gw_reply_parser *p);

/* Consume bytes until one line ends (LF; a CR before it is dropped and "\r\n" written) or
 * input runs out; *used is set to the bytes consumed. After INVALID or TOOLONG the parser
 * must be re-initialised before further use. */
int gw_reply_feed(gw_reply_parser *p, const uint8_t *in, size_t n, size_t *used);

#endif
