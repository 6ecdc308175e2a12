/* The user map (user_map.h): "WHO BACKEND[:ACCOUNT[:PASSWORD-FILE|keep]]" rules, '#'
 * comments and blank lines, each problem named by its line; password files read at load
 * and kept private. */
#include "user_map.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "textfile.h"

#define MAP_FILE_MAX (4 * 1024 * 1024)

/* A login name or a group: printable, no blank, no ':' (the separator), 1..63 bytes. */
static bool valid_name(const char *s, size_t n)
{
    if (n == 0 || n >= GW_MAP_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c >= 0x7f || c == ':')
            return false;
    }
    return true;
}

static bool blank(char c)
{
    return c == ' ' || c == '\t';
}

/* One rule from p[0..n) (no newline, comments and blanks already skipped). */
static int parse_rule(const char *p, size_t n, const char *origin, int line, gw_map_rule *r,
                      char *err, size_t cap)
{
    memset(r, 0, sizeof *r);
    r->line = line;
    size_t w = 0;
    while (w < n && !blank(p[w]))
        w++;
    size_t s = w;
    while (s < n && blank(p[s]))
        s++;
    size_t e = s;
    while (e < n && !blank(p[e]))
        e++;
    size_t t = e;
    while (t < n && blank(p[t]))
        t++;
    if (s == n || t != n)
        return gw_textfile_fail(
            err, cap, origin, line,
            "expected \"user-or-@group backend[:account[:password-file|keep]]\"");
    const char *who = p;
    size_t wn = w;
    if (who[0] == '@') {
        r->group = true;
        who++;
        wn--;
    }
    if (!valid_name(who, wn))
        return gw_textfile_fail(err, cap, origin, line,
                                "%s: not a %s name (1..63 printable bytes, no ':')",
                                r->group ? "@group" : "user", r->group ? "group" : "user");
    memcpy(r->who, who, wn);
    /* BACKEND[:ACCOUNT[:REST]]: REST is all after the second ':' (a path may hold ':') */
    const char *spec = p + s, *end = p + e;
    const char *c1 = memchr(spec, ':', (size_t)(end - spec));
    const char *c2 = c1 ? memchr(c1 + 1, ':', (size_t)(end - c1 - 1)) : NULL;
    size_t bn = (size_t)((c1 ? c1 : end) - spec);
    if (bn == 1 && spec[0] == '*') {
        r->backend[0] = 0; /* the frontend's balance */
    } else if (valid_name(spec, bn)) {
        memcpy(r->backend, spec, bn);
    } else {
        return gw_textfile_fail(err, cap, origin, line,
                                "%s: backend: a backend's name or * (its balance)", r->who);
    }
    if (!c1)
        return 0;
    const char *acct = c1 + 1;
    size_t an = (size_t)((c2 ? c2 : end) - acct);
    if (an && !valid_name(acct, an))
        return gw_textfile_fail(
            err, cap, origin, line,
            "%s: account: 1..63 printable bytes, no ':' (empty: the client's name)", r->who);
    memcpy(r->account, acct, an);
    if (!c2)
        return 0;
    const char *rest = c2 + 1;
    size_t rn = (size_t)(end - rest);
    if (rn == 4 && memcmp(rest, "keep", 4) == 0)
        return 0;
    if (rn == 0 || rest[0] != '/')
        return gw_textfile_fail(err, cap, origin, line,
                                "%s: expected keep or the absolute path of a password file",
                                r->who);
    if (rn >= GW_MAP_PATH_MAX)
        return gw_textfile_fail(err, cap, origin, line, "%s: password file path too long", r->who);
    if (!an)
        return gw_textfile_fail(err, cap, origin, line,
                                "%s: a password file is a fixed account's: name the account",
                                r->who);
    r->pass_file = strndup(rest, rn);
    if (!r->pass_file)
        return gw_textfile_fail(err, cap, origin, line, "out of memory");
    return 0;
}

void gw_user_map_free(gw_user_map *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++) {
        free(m->v[i].pass_file);
        if (m->v[i].password) {
            explicit_bzero(m->v[i].password, strlen(m->v[i].password));
            free(m->v[i].password);
        }
    }
    free(m->v);
    m->v = NULL;
    m->n = 0;
}

int gw_user_map_parse(const char *text, size_t len, const char *origin, gw_user_map *m, char *err,
                      size_t errcap)
{
    memset(m, 0, sizeof *m);
    size_t cap = 0;
    int line = 0;
    gw_lines it = gw_lines_start(text, len);
    const char *l;
    size_t n;
    while (gw_lines_next(&it, &l, &n)) {
        line = it.line;
        if (m->n == cap) {
            size_t c = cap ? cap * 2 : 8;
            gw_map_rule *v = realloc(m->v, c * sizeof *v);
            if (!v) {
                gw_textfile_fail(err, errcap, origin, line, "out of memory");
                goto bad;
            }
            m->v = v;
            cap = c;
        }
        if (parse_rule(l, n, origin, line, &m->v[m->n], err, errcap) != 0)
            goto bad;
        m->n++;
    }
    if (it.bad) {
        char why[64];
        gw_textfile_fail(err, errcap, origin, it.line, "%s",
                         gw_lines_bad_text(&it, why, sizeof why));
        goto bad;
    }
    return 0;
bad:
    gw_user_map_free(m);
    return -1;
}

/* The first line of a private password file (heap), or NULL with the problem in err. */
static char *read_password(const char *path, const char *origin, int line, char *err, size_t cap)
{
    char why[4400];
    size_t len;
    char *buf = gw_textfile_read(path, 64 * 1024, GW_TEXTFILE_OWNER_ONLY, &len, why, sizeof why);
    if (!buf) {
        gw_textfile_fail(err, cap, origin, line, "password file %s", why);
        return NULL;
    }
    size_t n = 0;
    while (n < len && buf[n] != '\n' && buf[n] != '\r' && buf[n] != '\0')
        n++;
    char *out = NULL;
    if (n == 0)
        gw_textfile_fail(err, cap, origin, line, "password file %s: the first line is empty", path);
    else if (n >= GW_MAP_PASSWORD_MAX)
        gw_textfile_fail(err, cap, origin, line, "password file %s: longer than %d bytes", path,
                         GW_MAP_PASSWORD_MAX - 1);
    else if (!(out = strndup(buf, n)))
        gw_textfile_fail(err, cap, origin, line, "out of memory");
    explicit_bzero(buf, len);
    free(buf);
    return out;
}

int gw_user_map_load_file(const char *path, gw_user_map *m, char *err, size_t errcap)
{
    memset(m, 0, sizeof *m);
    size_t len;
    char *buf = gw_textfile_read(path, MAP_FILE_MAX, 0, &len, err, errcap);
    if (!buf)
        return -1;
    int rc = gw_user_map_parse(buf, len, path, m, err, errcap);
    for (size_t i = 0; rc == 0 && i < m->n; i++) {
        gw_map_rule *r = &m->v[i];
        if (r->pass_file &&
            !(r->password = read_password(r->pass_file, path, r->line, err, errcap))) {
            gw_user_map_free(m);
            rc = -1;
        }
    }
    free(buf);
    return rc;
}

/* Is `group` one of the blank-separated names of groups? */
static bool in_groups(const char *groups, const char *group)
{
    size_t gn = strlen(group);
    for (const char *p = groups; p && *p;) {
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, " ");
        if (n == gn && n && memcmp(p, group, n) == 0)
            return true;
        p += n;
    }
    return false;
}

const gw_map_rule *gw_user_map_find(const gw_user_map *m, const char *user, const char *groups)
{
    for (size_t i = 0; m && i < m->n; i++) {
        const gw_map_rule *r = &m->v[i];
        if (r->group ? in_groups(groups, r->who) : strcmp(r->who, user) == 0)
            return r;
    }
    return NULL;
}
