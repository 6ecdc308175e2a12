/* Resumable FTP command-line parser with Telnet handling (RFC 959, RFC 854, RFC 1123 §3.2.1).
 * Pure: libc only. The parser's position lives in p->tstate, so input may arrive in any
 * pieces; the result never depends on where the pieces were cut. */
#include "ftp_cmd.h"

#include <stdlib.h>
#include <string.h>

#include "bug.h"

/* Telnet bytes (RFC 854). */
#define TN_SE 240
#define TN_IP 244
#define TN_SB 250
#define TN_WILL 251
#define TN_WONT 252
#define TN_DO 253
#define TN_DONT 254
#define TN_IAC 255

/* Positions of the Telnet state machine, kept in p->tstate. */
enum {
    sw_data = 0, /* command text */
    sw_iac,      /* after IAC */
    sw_will,     /* after IAC WILL: the option byte follows */
    sw_wont,
    sw_do,
    sw_dont,
    sw_sb,     /* inside IAC SB ... IAC SE */
    sw_sb_iac, /* IAC inside a subnegotiation */
};

/* Set in p->tstate while a returned line is still in p->line: the next call clears it. */
#define LINE_DONE 0x100

void gw_cmd_init(gw_cmd_parser *p)
{
    memset(p, 0, sizeof(*p));
    p->line = (char *)"";
}

void gw_cmd_free(gw_cmd_parser *p)
{
    if (p->cap)
        free(p->line);
    gw_cmd_init(p);
}

bool gw_cmd_clone(gw_cmd_parser *dst, const gw_cmd_parser *src)
{
    *dst = *src;
    if (!src->cap)
        return true;
    dst->line = malloc(src->cap);
    if (!dst->line) {
        gw_cmd_init(dst);
        return false;
    }
    memcpy(dst->line, src->line, src->cap);
    return true;
}

/* Room for need bytes at p->line (need <= GW_CMD_LINE_MAX + 1), doubled from
 * GW_CMD_LINE_MIN. */
static bool reserve(gw_cmd_parser *p, size_t need)
{
    if (need <= p->cap)
        return true;
    size_t cap = p->cap ? p->cap : GW_CMD_LINE_MIN;
    while (cap < need)
        cap *= 2;
    if (cap > GW_CMD_LINE_MAX + 1)
        cap = GW_CMD_LINE_MAX + 1;
    char *n = realloc(p->cap ? p->line : NULL, cap);
    if (!n)
        return false;
    p->line = n;
    p->cap = cap;
    return true;
}

/* An empty line (the constant "" needs no write). */
static void clear_line(gw_cmd_parser *p)
{
    p->len = 0;
    if (p->cap > GW_CMD_LINE_KEEP) { /* a long line's buffer is not kept idle */
        free(p->line);
        p->line = (char *)"";
        p->cap = 0;
    } else if (p->cap) {
        p->line[0] = '\0';
    }
}

static void put_text(gw_cmd_parser *p, uint8_t ch)
{
    /* NUL is a Telnet no-op; CR only pairs with LF (or NUL) and carries no text. */
    if (ch == '\r' || ch == '\0')
        return;
    if (p->overflow)
        return;
    /* SECURITY: the line is capped; a longer line is discarded up to its LF (so is one
     * there is no memory for). */
    if (p->len == GW_CMD_LINE_MAX || !reserve(p, p->len + 2)) {
        p->overflow = true;
        return;
    }
    p->line[p->len++] = (char)ch;
    p->line[p->len] = '\0';
}

static void queue_refusal(gw_cmd_parser *p, uint8_t verb, uint8_t opt)
{
    /* SECURITY: a flood of option requests must not grow our output; once the queue is full
     * further refusals are dropped (the caller drains it after every call). */
    if (sizeof(p->tn_reply) - p->tn_reply_len < 3)
        return;
    p->tn_reply[p->tn_reply_len++] = TN_IAC;
    p->tn_reply[p->tn_reply_len++] = verb;
    p->tn_reply[p->tn_reply_len++] = opt;
}

/* The byte after IAC. Returns the next state, or -1 if ch is no Telnet command (a stray IAC:
 * the byte is then ordinary text, so a LF after it still ends the line). */
static int after_iac(gw_cmd_parser *p, uint8_t ch)
{
    switch (ch) {
    case TN_IAC:
        put_text(p, TN_IAC); /* escaped literal 0xFF */
        return sw_data;
    case TN_WILL:
        return sw_will;
    case TN_WONT:
        return sw_wont;
    case TN_DO:
        return sw_do;
    case TN_DONT:
        return sw_dont;
    case TN_SB:
        return sw_sb;
    case TN_IP:
        p->got_ip = true; /* the client is about to send ABOR */
        return sw_data;
    default:
        /* DM, NOP, AYT, AO, ... carry no text. */
        return ch >= TN_SE ? sw_data : -1;
    }
}

static int line_done(gw_cmd_parser *p, int state)
{
    p->tstate = state | LINE_DONE;
    if (p->overflow) {
        clear_line(p);
        return GW_CMD_TOOLONG;
    }
    return GW_CMD_LINE; /* put_text keeps line NUL-terminated */
}

int gw_cmd_feed(gw_cmd_parser *p, const uint8_t *in, size_t n, size_t *used)
{
    size_t i;
    uint8_t ch;
    int state;

    if (p->tstate & LINE_DONE) {
        clear_line(p);
        p->overflow = false;
    }
    state = p->tstate & ~LINE_DONE;

    for (i = 0; i < n; i++) {
        ch = in[i];

        switch (state) {
        case sw_iac:
            state = after_iac(p, ch);
            if (state >= 0)
                break;
            /* Not a command: the IAC was stray and the byte is text, so a LF still ends the
             * line. */
            state = sw_data;
            if (ch == '\n') {
                *used = i + 1;
                return line_done(p, state);
            }
            put_text(p, ch);
            break;

        case sw_data:
            if (ch == TN_IAC) {
                state = sw_iac;
            } else if (ch == '\n') {
                *used = i + 1;
                return line_done(p, state);
            } else {
                put_text(p, ch);
            }
            break;

        /* RFC 1123 §3.2.1: refuse every option; never answer a refusal (no loops). */
        case sw_will:
            queue_refusal(p, TN_DONT, ch);
            state = sw_data;
            break;
        case sw_do:
            queue_refusal(p, TN_WONT, ch);
            state = sw_data;
            break;
        case sw_wont:
        case sw_dont:
            state = sw_data;
            break;

        /* SECURITY: FTP negotiates no option, so no client has a subnegotiation to send; one
         * left open (IAC SB without IAC SE) must not swallow every later command until
         * idle_timeout: it also ends at the line's end, and the line with it. */
        case sw_sb:
        case sw_sb_iac:
            if (ch == '\n') {
                *used = i + 1;
                return line_done(p, sw_data);
            }
            /* IAC IAC is escaped data inside SB; IAC SE ends it. */
            if (state == sw_sb)
                state = ch == TN_IAC ? sw_sb_iac : sw_sb;
            else
                state = ch == TN_SE ? sw_data : sw_sb;
            break;

        default:
            /* Unreachable unless the caller scribbled on tstate: start over cleanly. */
            GW_BUG_ON(state < sw_data || state > sw_sb_iac);
            state = sw_data;
            break;
        }
    }

    p->tstate = state;
    *used = n;
    return GW_CMD_AGAIN;
}

static bool is_alpha(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* Short names keep the table one entry per line. */
#define BEFORE_TLS GW_CMDF_BEFORE_TLS
#define XFER GW_CMDF_TRANSFER
#define UPLOAD (GW_CMDF_TRANSFER | GW_CMDF_UPLOAD)
#define LOGIN GW_CMDF_NEEDS_LOGIN
#define LOCAL GW_CMDF_LOCAL

/* Sorted by verb (strcmp order) for bsearch; a unit test walks it. NEEDS_LOGIN follows
 * RFC 959 §4.1 and common servers: only the login sequence, session-level and TLS setup
 * commands work before login. */
static const gw_cmd_def cmd_table[] = {
    {"ABOR", GW_CMD_ABOR, LOGIN},
    {"ACCT", GW_CMD_ACCT, 0},
    {"ALLO", GW_CMD_ALLO, LOGIN},
    {"APPE", GW_CMD_APPE, UPLOAD | LOGIN},
    {"AUTH", GW_CMD_AUTH, BEFORE_TLS | LOCAL},
    {"CCC", GW_CMD_CCC, LOCAL},
    {"CDUP", GW_CMD_CDUP, LOGIN},
    {"CPSV", GW_CMD_CPSV, LOGIN | LOCAL},
    {"CWD", GW_CMD_CWD, LOGIN},
    {"DELE", GW_CMD_DELE, LOGIN},
    {"EPRT", GW_CMD_EPRT, LOGIN | LOCAL},
    {"EPSV", GW_CMD_EPSV, LOGIN | LOCAL},
    {"FEAT", GW_CMD_FEAT, BEFORE_TLS},
    {"HELP", GW_CMD_HELP, BEFORE_TLS},
    {"HOST", GW_CMD_HOST, 0},
    {"LANG", GW_CMD_LANG, 0},
    {"LIST", GW_CMD_LIST, XFER | LOGIN},
    {"MDTM", GW_CMD_MDTM, LOGIN},
    {"MKD", GW_CMD_MKD, LOGIN},
    {"MLSD", GW_CMD_MLSD, XFER | LOGIN},
    {"MLST", GW_CMD_MLST, LOGIN},
    {"MODE", GW_CMD_MODE, LOGIN},
    {"NLST", GW_CMD_NLST, XFER | LOGIN},
    {"NOOP", GW_CMD_NOOP, BEFORE_TLS},
    {"OPTS", GW_CMD_OPTS, BEFORE_TLS},
    {"PASS", GW_CMD_PASS, 0},
    {"PASV", GW_CMD_PASV, LOGIN | LOCAL},
    {"PBSZ", GW_CMD_PBSZ, BEFORE_TLS | LOCAL},
    {"PORT", GW_CMD_PORT, LOGIN | LOCAL},
    {"PROT", GW_CMD_PROT, BEFORE_TLS | LOCAL},
    {"PWD", GW_CMD_PWD, LOGIN},
    {"QUIT", GW_CMD_QUIT, BEFORE_TLS},
    {"REIN", GW_CMD_REIN, LOCAL},
    {"REST", GW_CMD_REST, LOGIN},
    {"RETR", GW_CMD_RETR, XFER | LOGIN},
    {"RMD", GW_CMD_RMD, LOGIN},
    {"RNFR", GW_CMD_RNFR, LOGIN},
    {"RNTO", GW_CMD_RNTO, LOGIN},
    {"SITE", GW_CMD_SITE, LOGIN},
    {"SIZE", GW_CMD_SIZE, LOGIN},
    {"SMNT", GW_CMD_SMNT, LOGIN},
    {"SSCN", GW_CMD_SSCN, LOGIN | LOCAL},
    {"STAT", GW_CMD_STAT, LOGIN},
    {"STOR", GW_CMD_STOR, UPLOAD | LOGIN},
    {"STOU", GW_CMD_STOU, UPLOAD | LOGIN},
    {"STRU", GW_CMD_STRU, LOGIN},
    {"SYST", GW_CMD_SYST, BEFORE_TLS},
    {"TYPE", GW_CMD_TYPE, LOGIN},
    {"USER", GW_CMD_USER, 0},
};

static const gw_cmd_def cmd_other = {"", GW_CMD_OTHER, 0};

static int cmp_def(const void *key, const void *elem)
{
    return strcmp(key, ((const gw_cmd_def *)elem)->verb);
}

const gw_cmd_def *gw_cmd_lookup(const char *verb)
{
    char up[8];
    const gw_cmd_def *d;
    size_t i;

    /* Verbs are short ASCII letters; anything else cannot be in the table. */
    for (i = 0; verb[i] != '\0'; i++) {
        if (i == sizeof(up) - 1 || !is_alpha(verb[i]))
            return &cmd_other;
        up[i] = (char)(verb[i] & ~0x20);
    }
    up[i] = '\0';
    d = bsearch(up, cmd_table, sizeof(cmd_table) / sizeof(cmd_table[0]), sizeof(cmd_table[0]),
                cmp_def);
    return d ? d : &cmd_other;
}

const gw_cmd_def *gw_cmd_table(size_t *n)
{
    *n = sizeof(cmd_table) / sizeof(cmd_table[0]);
    return cmd_table;
}

int gw_cmd_split(const char *line, gw_cmd *out)
{
    size_t i;

    out->verb[0] = '\0';
    out->arg = "";
    out->def = &cmd_other;

    for (i = 0; line[i] != '\0' && line[i] != ' '; i++) {
        if (i == sizeof(out->verb) - 1 || !is_alpha(line[i]))
            return -1;
        out->verb[i] = (char)(line[i] & ~0x20); /* ASCII upper case */
    }
    if (i == 0)
        return -1;

    out->verb[i] = '\0';
    out->arg = line[i] == ' ' ? line + i + 1 : line + i;
    out->def = gw_cmd_lookup(out->verb);
    return 0;
}

size_t gw_cmd_format(char *out, size_t cap, const char *line)
{
    const unsigned char *s;
    size_t need = 2 + 1, n = 0; /* CRLF and NUL */

    for (s = (const unsigned char *)line; *s != '\0'; s++) {
        /* SECURITY: a CR or LF would smuggle a second command to the peer. */
        if (*s == '\r' || *s == '\n')
            return 0;
        need += *s == TN_IAC ? 2 : 1;
    }
    if (need > cap)
        return 0;

    for (s = (const unsigned char *)line; *s != '\0'; s++) {
        out[n++] = (char)*s;
        if (*s == TN_IAC)
            out[n++] = (char)TN_IAC; /* literal 0xFF is IAC IAC on the wire */
    }
    out[n++] = '\r';
    out[n++] = '\n';
    out[n] = '\0';
    return n;
}
