/* Pure, resumable FTP command-line parser with Telnet handling (RFC 959, RFC 1123 §3.2.1).
 * No libuv, no OpenSSL: unit-tested and fuzzed alone. */
#ifndef GW_FTP_CMD_H
#define GW_FTP_CMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_CMD_LINE_MAX 4096 /* bytes of command text, without CRLF */

enum gw_cmd_status {
    GW_CMD_AGAIN = 0,   /* all input consumed, no complete line yet */
    GW_CMD_LINE = 1,    /* p->line holds a complete line */
    GW_CMD_TOOLONG = 2, /* a line longer than GW_CMD_LINE_MAX ended; its text was discarded */
};

typedef struct gw_cmd_parser {
    int tstate;                 /* Telnet state machine position (private) */
    size_t len;                 /* bytes in line */
    bool overflow;              /* current line passed the cap; discarding to LF */
    bool got_ip;                /* IAC IP seen since the caller last cleared it */
    uint8_t tn_reply[64];       /* Telnet refusals to send back (IAC WONT x / IAC DONT x) */
    size_t tn_reply_len;        /* caller sends and clears */
    char line[GW_CMD_LINE_MAX + 1]; /* NUL-terminated, no CR/LF; 0xFF is a literal byte */
} gw_cmd_parser;

void gw_cmd_init(gw_cmd_parser *p);

/* Consume bytes until a line ends (LF) or input runs out. *used is set to the bytes consumed.
 * Telnet: IAC IAC -> literal 0xFF; IAC DO/DONT/WILL/WONT x -> refusal queued in tn_reply
 * (DO -> WONT, WILL -> DONT, nothing for WONT/DONT); IAC IP sets got_ip; IAC SB..IAC SE,
 * IAC DM and other IAC commands are dropped. CR and NUL bytes are dropped. A line resets
 * `len` at the next call after GW_CMD_LINE/GW_CMD_TOOLONG was returned. */
int gw_cmd_feed(gw_cmd_parser *p, const uint8_t *in, size_t n, size_t *used);

typedef struct gw_cmd {
    char verb[8];    /* upper-cased verb, NUL-terminated */
    const char *arg; /* points into the line after the single space, or "" */
} gw_cmd;

/* Split a line into verb and argument. Verb: 1-7 ASCII letters; returns -1 otherwise. */
int gw_cmd_split(const char *line, gw_cmd *out);

/* Write line + CRLF to out, doubling 0xFF bytes (Telnet IAC). Returns bytes written, or 0
 * if cap is too small. */
size_t gw_cmd_format(char *out, size_t cap, const char *line);

#endif
