/* Pure, resumable FTP reply parser: one line at a time, multi-line aware (RFC 959 §4.2). */
#ifndef GW_FTP_REPLY_H
#define GW_FTP_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_REPLY_LINE_MAX 8192 /* bytes per reply line without CRLF */
/* The line buffer grows on demand from GW_REPLY_LINE_MIN bytes; a buffer grown past
 * GW_REPLY_LINE_KEEP is freed once its line is consumed, so an idle connection holds at
 * most that much (most replies are under 100 bytes). */
#define GW_REPLY_LINE_MIN 128
#define GW_REPLY_LINE_KEEP 256

enum gw_reply_status {
    GW_REPLY_AGAIN = 0,   /* all input consumed, no complete line yet */
    GW_REPLY_LINE = 1,    /* one line ready in p->line */
    GW_REPLY_INVALID = 2, /* a reply's first line does not start with "ddd " or "ddd-" */
    GW_REPLY_TOOLONG = 3, /* a line passed GW_REPLY_LINE_MAX (or no memory to hold it) */
};

typedef struct gw_reply_parser {
    bool in_multi; /* inside a ddd- ... ddd reply */
    bool done;     /* previous call returned a line; reset on the next call */
    int code;      /* code of the reply the current line belongs to (100..599) */
    bool first;    /* this line starts a reply */
    bool last;     /* this line ends the reply */
    size_t len;    /* bytes in line including the trailing "\r\n" */
    char *line;    /* NUL-terminated, always ends in "\r\n" (heap; "" until bytes came) */
    size_t cap;    /* bytes allocated at line, 0: line is a constant "" */
} gw_reply_parser;

/* Fresh parser (on uninitialised memory; allocates nothing). */
void gw_reply_init(gw_reply_parser *p);
/* Release the line buffer; the parser is then as gw_reply_init left it. */
void gw_reply_free(gw_reply_parser *p);

/* Consume bytes until one line ends (LF; a CR before it is dropped and "\r\n" written) or
 * input runs out; *used is set to the bytes consumed. After INVALID or TOOLONG the parser
 * must be reset (gw_reply_free) before further use. */
int gw_reply_feed(gw_reply_parser *p, const uint8_t *in, size_t n, size_t *used);

#endif
