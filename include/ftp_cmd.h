/* Pure, resumable FTP command-line parser with Telnet handling (RFC 959, RFC 1123 §3.2.1).
 * No libuv, no OpenSSL: unit-tested and fuzzed alone. */
#ifndef GW_FTP_CMD_H
#define GW_FTP_CMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_CMD_LINE_MAX 4096 /* bytes of command text, without CRLF */
/* The line buffer grows on demand from GW_CMD_LINE_MIN bytes; one grown past
 * GW_CMD_LINE_KEEP is freed once its line is taken, so an idle session holds little. */
#define GW_CMD_LINE_MIN 64
#define GW_CMD_LINE_KEEP 256

enum gw_cmd_status {
    GW_CMD_AGAIN = 0,   /* all input consumed, no complete line yet */
    GW_CMD_LINE = 1,    /* p->line holds a complete line */
    GW_CMD_TOOLONG = 2, /* a line longer than GW_CMD_LINE_MAX (or than the memory there was
                           for it) ended; its text was discarded */
};

typedef struct gw_cmd_parser {
    int tstate;           /* Telnet state machine position (private) */
    size_t len;           /* bytes in line */
    bool overflow;        /* current line passed the cap; discarding to LF */
    bool got_ip;          /* IAC IP seen since the caller last cleared it */
    uint8_t tn_reply[64]; /* Telnet refusals to send back (IAC WONT x / IAC DONT x) */
    size_t tn_reply_len;  /* caller sends and clears */
    char *line; /* NUL-terminated, no CR/LF; 0xFF is a literal byte (heap; "" until text) */
    size_t cap; /* bytes allocated at line, 0: line is a constant "" */
} gw_cmd_parser;

/* Fresh parser (on uninitialised memory; allocates nothing). */
void gw_cmd_init(gw_cmd_parser *p);
/* Release the line buffer; the parser is then as gw_cmd_init left it. */
void gw_cmd_free(gw_cmd_parser *p);
/* dst = a copy of src with its own line buffer (a speculative parse). false: no memory,
 * dst as gw_cmd_init leaves it. */
bool gw_cmd_clone(gw_cmd_parser *dst, const gw_cmd_parser *src);

/* Consume bytes until a line ends (LF) or input runs out. *used is set to the bytes consumed.
 * Telnet: IAC IAC -> literal 0xFF; IAC DO/DONT/WILL/WONT x -> refusal queued in tn_reply
 * (DO -> WONT, WILL -> DONT, nothing for WONT/DONT); IAC IP sets got_ip; IAC SB..IAC SE
 * (a LF also ends it, and the line), IAC DM and other IAC commands are dropped. CR and NUL bytes
 * are dropped. A line resets `len` at the next call after GW_CMD_LINE/GW_CMD_TOOLONG was returned.
 */
int gw_cmd_feed(gw_cmd_parser *p, const uint8_t *in, size_t n, size_t *used);

/* Commands the gateway tells apart. Anything else is GW_CMD_OTHER and relayed verbatim. */
enum gw_cmd_id {
    GW_CMD_OTHER = 0,
    /* RFC 959 */
    GW_CMD_USER,
    GW_CMD_PASS,
    GW_CMD_ACCT,
    GW_CMD_CWD,
    GW_CMD_CDUP,
    GW_CMD_SMNT,
    GW_CMD_REIN,
    GW_CMD_QUIT,
    GW_CMD_PORT,
    GW_CMD_PASV,
    GW_CMD_TYPE,
    GW_CMD_STRU,
    GW_CMD_MODE,
    GW_CMD_RETR,
    GW_CMD_STOR,
    GW_CMD_STOU,
    GW_CMD_APPE,
    GW_CMD_ALLO,
    GW_CMD_REST,
    GW_CMD_RNFR,
    GW_CMD_RNTO,
    GW_CMD_ABOR,
    GW_CMD_DELE,
    GW_CMD_RMD,
    GW_CMD_MKD,
    GW_CMD_PWD,
    GW_CMD_LIST,
    GW_CMD_NLST,
    GW_CMD_SITE,
    GW_CMD_SYST,
    GW_CMD_STAT,
    GW_CMD_HELP,
    GW_CMD_NOOP,
    /* RFC 2228, RFC 4217 */
    GW_CMD_AUTH,
    GW_CMD_PBSZ,
    GW_CMD_PROT,
    GW_CMD_CCC,
    /* RFC 2389, RFC 2640, RFC 2428, RFC 3659, RFC 7151 */
    GW_CMD_FEAT,
    GW_CMD_OPTS,
    GW_CMD_LANG,
    GW_CMD_EPRT,
    GW_CMD_EPSV,
    GW_CMD_MDTM,
    GW_CMD_SIZE,
    GW_CMD_MLST,
    GW_CMD_MLSD,
    GW_CMD_HOST,
    /* Non-standard TLS extensions for server-to-server transfers (refused: 502). */
    GW_CMD_CPSV,
    GW_CMD_SSCN,
};

/* What the session needs to know about a command. */
#define GW_CMDF_BEFORE_TLS 0x01  /* served in clear before AUTH when require_tls is set */
#define GW_CMDF_TRANSFER 0x02    /* opens the data connection (forwarded as a transfer) */
#define GW_CMDF_UPLOAD 0x04      /* with GW_CMDF_TRANSFER: data flows client -> server */
#define GW_CMDF_NEEDS_LOGIN 0x08 /* servers answer 530 before login (informational) */
#define GW_CMDF_LOCAL 0x10       /* answered by the gateway itself, never relayed */

typedef struct gw_cmd_def {
    const char *verb; /* upper case; "" for the GW_CMD_OTHER entry */
    enum gw_cmd_id id;
    unsigned flags; /* GW_CMDF_* */
} gw_cmd_def;

/* The entry for a verb (any case); unknown verbs get the GW_CMD_OTHER entry with flags 0.
 * Never returns NULL. */
const gw_cmd_def *gw_cmd_lookup(const char *verb);

/* The table sorted by verb, for tests: *n is set to its length. */
const gw_cmd_def *gw_cmd_table(size_t *n);

typedef struct gw_cmd {
    char verb[8];          /* upper-cased verb, NUL-terminated */
    const char *arg;       /* points into the line after the single space, or "" */
    const gw_cmd_def *def; /* gw_cmd_lookup(verb); the GW_CMD_OTHER entry if split failed */
} gw_cmd;

/* Split a line into verb and argument and look the verb up. Verb: 1-7 ASCII letters;
 * returns -1 otherwise. */
int gw_cmd_split(const char *line, gw_cmd *out);

/* Write line + CRLF to out, doubling 0xFF bytes (Telnet IAC). Returns bytes written, or 0
 * if cap is too small. */
size_t gw_cmd_format(char *out, size_t cap, const char *line);

#endif
