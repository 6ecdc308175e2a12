/* The users file (users_file.h): one "user:crypt-hash[:attr=value,...]" line per user, '#'
 * comments and blank lines; checked with crypt_r. Every problem names its line. */
#include "users_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypt_check.h"
#include "textfile.h"

#define USERS_FILE_MAX (4 * 1024 * 1024)
#define RATE_MAX (1ULL << 40) /* 1 TiB/s: more is a typo */

static bool is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.';
}

/* A section name (backend=, policy=) or a group: [A-Za-z0-9._-], 1..63 bytes. */
static bool valid_name(const char *s, size_t n)
{
    if (n == 0 || n >= GW_USER_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_name_char(s[i]))
            return false;
    return true;
}

/* A login name: printable, no blank, no ':' (the separator), 1..63 bytes. */
static bool valid_login(const char *s, size_t n)
{
    if (n == 0 || n >= GW_USER_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == 0x7f || c == ':' || c == ',')
            return false;
    }
    return true;
}

/* Only the methods the gateway promises: yescrypt ($y$), bcrypt ($2b$, $2a$, $2y$) and
 * sha512-crypt ($6$); crypt's alphabet only, so a typo is found at load, not at login. */
static const char *hash_problem(const char *h, size_t n)
{
    static const char *const prefixes[] = {"$y$", "$2b$", "$2a$", "$2y$", "$6$"};
    bool known = false;
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (n > strlen(prefixes[i]) && strncmp(h, prefixes[i], strlen(prefixes[i])) == 0)
            known = true;
    if (!known)
        return "not a yescrypt ($y$), bcrypt ($2b$) or sha512-crypt ($6$) hash";
    if (n >= GW_USER_HASH_MAX)
        return "hash too long";
    for (size_t i = 0; i < n; i++) {
        char c = h[i];
        if (!is_name_char(c) && c != '/' && c != '$')
            return "hash has a character outside crypt's alphabet";
    }
    if (n < 20)
        return "hash too short";
    return NULL;
}

int gw_parse_rate(const char *s, uint64_t *out)
{
    uint64_t n = 0, mul = 1;
    size_t i = 0;
    if (!s[0])
        return -1;
    for (; s[i] >= '0' && s[i] <= '9'; i++) {
        n = n * 10 + (uint64_t)(s[i] - '0');
        if (n > RATE_MAX)
            return -1;
    }
    if (i == 0)
        return -1;
    switch (s[i]) {
    case '\0':
        break;
    case 'k':
    case 'K':
        mul = 1024;
        break;
    case 'm':
    case 'M':
        mul = 1024 * 1024;
        break;
    case 'g':
    case 'G':
        mul = 1024 * 1024 * 1024;
        break;
    default:
        return -1;
    }
    if (s[i] && s[i + 1])
        return -1;
    if (n > RATE_MAX / mul)
        return -1;
    *out = n * mul;
    return 0;
}

/* [p, p+n) without blanks at both ends. */
static void trim(const char **p, size_t *n)
{
    while (*n && (**p == ' ' || **p == '\t'))
        (*p)++, (*n)--;
    while (*n && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t'))
        (*n)--;
}

/* groups=a b c: names separated by blanks, stored with one blank between them. */
static const char *parse_groups(const char *v, size_t n, char *out)
{
    size_t used = 0;
    size_t i = 0;
    out[0] = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t'))
            i++;
        size_t start = i;
        while (i < n && v[i] != ' ' && v[i] != '\t')
            i++;
        if (i == start)
            break;
        if (!valid_name(v + start, i - start))
            return "groups: a group name is letters, digits, '.', '-', '_' (at most 63)";
        if (used + (i - start) + 2 > GW_USER_GROUPS_MAX)
            return "groups: too long";
        if (used)
            out[used++] = ' ';
        memcpy(out + used, v + start, i - start);
        used += i - start;
        out[used] = 0;
    }
    if (!used)
        return "groups: empty";
    return NULL;
}

static const char *set_name(char *dst, const char *v, size_t n, bool login)
{
    if (login ? !valid_login(v, n) : !valid_name(v, n))
        return login ? "expected a user name (no blank, ':' or ',', at most 63 bytes)"
                     : "expected a name (letters, digits, '.', '-', '_'; at most 63)";
    memcpy(dst, v, n);
    dst[n] = 0;
    return NULL;
}

/* One "key=value" attribute into e; NULL or the problem (key in *key for the message). */
static const char *parse_attr(gw_user_entry *e, const char *a, size_t n, unsigned *seen, char *key,
                              size_t keycap)
{
    static const char *const names[] = {"groups", "backend",   "backend_user",
                                        "policy", "rate_down", "rate_up"};
    const char *eq = memchr(a, '=', n);
    if (!eq) {
        snprintf(key, keycap, "%.*s", (int)(n < 40 ? n : 40), a);
        return "expected attr=value";
    }
    const char *k = a, *v = eq + 1;
    size_t kn = (size_t)(eq - a), vn = n - kn - 1;
    trim(&k, &kn);
    trim(&v, &vn);
    snprintf(key, keycap, "%.*s", (int)(kn < 40 ? kn : 40), k);
    int which = -1;
    for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++)
        if (strlen(names[i]) == kn && memcmp(names[i], k, kn) == 0)
            which = i;
    if (which < 0)
        return "unknown attribute (groups, backend, backend_user, policy, rate_down, rate_up)";
    if (*seen & (1u << which))
        return "given twice";
    *seen |= 1u << which;
    char buf[32];
    switch (which) {
    case 0:
        return parse_groups(v, vn, e->groups);
    case 1:
        return set_name(e->backend, v, vn, false);
    case 2:
        return set_name(e->backend_user, v, vn, true);
    case 3:
        return set_name(e->policy, v, vn, false);
    default:
        if (vn == 0 || vn >= sizeof buf)
            return "expected bytes/s with an optional K, M or G";
        memcpy(buf, v, vn);
        buf[vn] = 0;
        if (gw_parse_rate(buf, which == 4 ? &e->rate_down : &e->rate_up) != 0)
            return "expected bytes/s with an optional K, M or G (at most 1 TiB/s)";
        return NULL;
    }
}

/* One line (no newline, blanks trimmed, not a comment) into e. */
static int parse_entry(const char *p, size_t n, gw_user_entry *e, const char *origin, int line,
                       char *err, size_t cap)
{
    memset(e, 0, sizeof *e);
    e->line = line;
    const char *c1 = memchr(p, ':', n);
    if (!c1)
        return gw_textfile_fail(err, cap, origin, line,
                                "expected user:crypt-hash[:attr=value,...]");
    size_t un = (size_t)(c1 - p);
    if (!valid_login(p, un))
        return gw_textfile_fail(err, cap, origin, line,
                                "bad user name (1..63 bytes, no blank, ':' or ',')");
    memcpy(e->name, p, un);
    const char *h = c1 + 1;
    size_t rest = n - un - 1;
    const char *c2 = memchr(h, ':', rest);
    size_t hn = c2 ? (size_t)(c2 - h) : rest;
    const char *why = hash_problem(h, hn);
    if (why)
        return gw_textfile_fail(err, cap, origin, line, "user %s: %s", e->name, why);
    memcpy(e->hash, h, hn);
    if (!c2)
        return 0;
    const char *a = c2 + 1, *end = p + n;
    unsigned seen = 0;
    while (a <= end) {
        const char *comma = memchr(a, ',', (size_t)(end - a));
        const char *item = a;
        size_t in = (size_t)((comma ? comma : end) - a);
        trim(&item, &in);
        char key[48];
        if (in == 0)
            return gw_textfile_fail(err, cap, origin, line, "user %s: empty attribute", e->name);
        why = parse_attr(e, item, in, &seen, key, sizeof key);
        if (why)
            return gw_textfile_fail(err, cap, origin, line, "user %s: attribute %s: %s", e->name,
                                    key, why);
        if (!comma)
            break;
        a = comma + 1;
    }
    return 0;
}

int gw_users_parse(const char *text, size_t len, const char *origin, gw_users *u, char *err,
                   size_t errcap)
{
    size_t cap = 0;
    int line = 0;
    memset(u, 0, sizeof *u);
    if (err && errcap)
        err[0] = 0;
    origin = origin ? origin : "<users>";
    gw_lines it = gw_lines_start(text, len);
    const char *l;
    size_t n;
    while (gw_lines_next(&it, &l, &n)) {
        line = it.line;
        if (u->n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            gw_user_entry *v = realloc(u->v, ncap * sizeof *v);
            if (!v) {
                gw_textfile_fail(err, errcap, origin, line, "out of memory");
                goto bad;
            }
            u->v = v;
            cap = ncap;
        }
        gw_user_entry *e = &u->v[u->n];
        if (parse_entry(l, n, e, origin, line, err, errcap) != 0)
            goto bad;
        const gw_user_entry *dup = gw_users_find(u, e->name);
        if (dup) {
            gw_textfile_fail(err, errcap, origin, line, "user %s: listed twice (first on line %d)",
                             e->name, dup->line);
            goto bad;
        }
        u->n++;
    }
    if (it.bad) {
        char why[64];
        gw_textfile_fail(err, errcap, origin, it.line, "%s",
                         gw_lines_bad_text(&it, why, sizeof why));
        goto bad;
    }
    return 0;
bad:
    gw_users_free(u);
    return -1;
}

int gw_users_load_file(const char *path, gw_users *u, char *err, size_t errcap)
{
    memset(u, 0, sizeof *u);
    size_t len;
    char *buf = gw_textfile_read(path, USERS_FILE_MAX, GW_TEXTFILE_OWNER_ONLY, &len, err, errcap);
    if (!buf)
        return -1;
    int rc = gw_users_parse(buf, len, path, u, err, errcap);
    free(buf);
    return rc;
}

void gw_users_free(gw_users *u)
{
    if (!u)
        return;
    free(u->v);
    u->v = NULL;
    u->n = 0;
}

const gw_user_entry *gw_users_find(const gw_users *u, const char *name)
{
    for (size_t i = 0; u && i < u->n; i++)
        if (strcmp(u->v[i].name, name) == 0)
            return &u->v[i];
    return NULL;
}

bool gw_user_in_group(const gw_user_entry *e, const char *group)
{
    size_t gn = strlen(group);
    for (const char *p = e->groups; *p;) {
        size_t n = strcspn(p, " ");
        if (n == gn && memcmp(p, group, n) == 0)
            return true;
        p += n;
        p += *p == ' ';
    }
    return false;
}

bool gw_users_verify(const gw_users *u, const char *name, const char *password,
                     const gw_user_entry **who)
{
    if (who)
        *who = NULL;
    const gw_user_entry *e = gw_users_find(u, name);
    /* An unknown name pays for a hash too (the first entry's settings), then fails. */
    const char *setting = e ? e->hash : u && u->n ? u->v[0].hash : GW_CRYPT_STAND_IN;
    bool ok = gw_crypt_check(password, setting, NULL) && e;
    if (ok && who)
        *who = e;
    return ok;
}
