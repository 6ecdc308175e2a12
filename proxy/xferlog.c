/* Transfer log lines: see xferlog.h. */
#include "xferlog.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Locale-independent names for the wu-ftpd date (ctime(3)'s form). */
static const char wdays[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

static void utc(time_t t, struct tm *tm)
{
    if (!gmtime_r(&t, tm))
        memset(tm, 0, sizeof *tm); /* a time gmtime cannot express: never in practice */
}

/* s copied into out (room for n bytes, cut to fit). SECURITY: a line break would forge a
 * log line: CR and LF become '?'; with wu, other control bytes too, and blanks '_'. Returns
 * the bytes written. */
static size_t put_name(char *out, size_t n, const char *s, bool wu)
{
    size_t o = 0;
    for (; s && *s && o < n; s++, o++) {
        unsigned char c = (unsigned char)*s;
        out[o] = (char)c;
        if (wu && (c == ' ' || c == '\t'))
            out[o] = '_';
        else if (c == '\r' || c == '\n' || (wu && (c < 0x20 || c == 0x7f)))
            out[o] = '?';
    }
    return o;
}

/* prefix + file (cut to fit) + suffix into out. */
static size_t assemble(char *out, size_t cap, const char *prefix, int plen, const char *file,
                       const char *suffix, int slen, bool wu)
{
    if (plen < 0 || slen < 0 || (size_t)plen + (size_t)slen + 2 > cap)
        return 0;
    size_t o = (size_t)plen;
    memcpy(out, prefix, o);
    if (wu && (!file || !*file))
        file = "-";
    o += put_name(out + o, cap - 1 - o - (size_t)slen, file, wu);
    memcpy(out + o, suffix, (size_t)slen);
    o += (size_t)slen;
    out[o] = 0;
    return o;
}

static size_t kv_line(char *out, size_t cap, const gw_xfer_rec *r)
{
    char prefix[3 * GW_XFERLOG_FIELD_MAX + 128], suffix[160], user[GW_XFERLOG_FIELD_MAX + 1],
        peer[GW_XFERLOG_FIELD_MAX + 1], verb[17], result[17];
    user[put_name(user, GW_XFERLOG_FIELD_MAX, r->user, false)] = 0;
    peer[put_name(peer, GW_XFERLOG_FIELD_MAX, r->peer, false)] = 0;
    verb[put_name(verb, 16, r->verb, false)] = 0;
    result[put_name(result, 16, r->result, false)] = 0;
    struct tm tm;
    utc(r->end, &tm);
    int plen = snprintf(prefix, sizeof prefix,
                        "%04d-%02d-%02dT%02d:%02d:%02dZ session=%llu peer=%s user=\"%s\" "
                        "verb=%s file=\"",
                        tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                        tm.tm_sec, (unsigned long long)r->session, peer, user, verb);
    int slen = snprintf(suffix, sizeof suffix, "\" bytes=%llu ms=%llu code=%d result=%s\n",
                        (unsigned long long)r->bytes, (unsigned long long)r->ms, r->code, result);
    return assemble(out, cap, prefix, plen, r->file, suffix, slen, false);
}

static size_t wuftpd_line(char *out, size_t cap, const gw_xfer_rec *r)
{
    char direction;
    const char *v = r->verb ? r->verb : "";
    if (!strcasecmp(v, "RETR"))
        direction = 'o';
    else if (!strcasecmp(v, "STOR") || !strcasecmp(v, "STOU") || !strcasecmp(v, "APPE"))
        direction = 'i';
    else
        return 0; /* listings are not file transfers in xferlog(5) */
    char prefix[GW_XFERLOG_FIELD_MAX + 128], suffix[GW_XFERLOG_FIELD_MAX + 64],
        user[GW_XFERLOG_FIELD_MAX + 1], host[GW_XFERLOG_FIELD_MAX + 1];
    user[put_name(user, GW_XFERLOG_FIELD_MAX, r->user, true)] = 0;
    host[put_name(host, GW_XFERLOG_FIELD_MAX, r->host, true)] = 0;
    struct tm tm;
    utc(r->end, &tm);
    /* Whole seconds, rounded up and at least 1 (as vsftpd: xferstats divides by it). */
    uint64_t secs = r->ms / 1000 + (r->ms % 1000 != 0);
    int plen = snprintf(
        prefix, sizeof prefix, "%s %s %2d %02d:%02d:%02d %d %llu %s %llu ", wdays[tm.tm_wday % 7],
        months[tm.tm_mon % 12], tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, tm.tm_year + 1900,
        (unsigned long long)(secs ? secs : 1), host[0] ? host : "-", (unsigned long long)r->bytes);
    /* Access mode: a(nonymous) for the anonymous names, else r(eal); wu-ftpd's username
     * field of an anonymous login is its password (an e-mail): never logged here. */
    bool anon = !strcasecmp(user, "anonymous") || !strcasecmp(user, "ftp");
    bool complete = r->result && !strcmp(r->result, "ok") && r->code >= 200 && r->code < 300;
    int slen = snprintf(suffix, sizeof suffix, " %c _ %c %c %s ftp 0 * %c\n", r->ascii ? 'a' : 'b',
                        direction, anon ? 'a' : 'r', user[0] ? user : "*", complete ? 'c' : 'i');
    return assemble(out, cap, prefix, plen, r->file, suffix, slen, true);
}

size_t gw_xferlog_line(char *out, size_t cap, enum gw_xferlog_format f, const gw_xfer_rec *rec)
{
    if (cap)
        out[0] = 0;
    return f == GW_XFERLOG_WUFTPD ? wuftpd_line(out, cap, rec) : kv_line(out, cap, rec);
}
