/* Configuration: INI text -> validated struct gw_config (reference: config/README.md).
 *
 * Our own reader (parse_text): sections, KEY = VALUE, ';' and '#' comments, no line length
 * limit. It replaced inih, which did only the KEY = VALUE split yet cut lines at 198
 * characters (Debian builds it with INI_MAX_LINE 200). Every key is described by one row of
 * `keys[]` below, naming the sections it may appear in. */
#include "config.h"
#include "proxy_proto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ban.h"  /* GW_BAN_AFTER_MAX */
#include "cidr.h" /* CIDR lists */
#include "ldap_text.h"
#include "users_file.h" /* gw_parse_rate */

/* config/README.md, "File format": implicit on 9990, explicit on 2100, plain backend. */
const char gw_config_default_ini[] =
    "; ftpsgate embedded default configuration (used when no -c is given)\n"
    "[global]\n"
    "workers = 1\n"
    "log_level = info\n"
    "log_format = text\n"
    "max_sessions = 10000\n"
    "max_sessions_per_ip = 50\n"
    "idle_timeout = 600\n"
    "login_timeout = 60\n"
    "data_connect_timeout = 60\n"
    "data_timeout = 300\n"
    "shutdown_grace = 30\n"
    "\n"
    "[tls]\n"
    "; empty cert and key: a self-signed certificate is generated on first start\n"
    "cert =\n"
    "key =\n"
    "min_version = TLSv1.2\n"
    "data_session_reuse = required\n"
    "\n"
    "[frontend implicit]\n"
    "listen = 127.0.0.1:9990\n"
    "mode = implicit\n"
    "backend = legacy\n"
    "pasv_ports = 30000-30099\n"
    "\n"
    "[frontend explicit]\n"
    "listen = 127.0.0.1:2100\n"
    "mode = explicit\n"
    "backend = legacy\n"
    "require_tls = yes\n"
    "pasv_ports = 30000-30099\n"
    "\n"
    "[backend legacy]\n"
    "address = 127.0.0.1:2121\n"
    "tls = none\n";

#define MAX_DURATION 86400 /* one day: longer is a typo, not a policy */
#define MAX_SESSIONS 1000000
#define MAX_WORKERS 1024
#define MAX_FILE (1024 * 1024)

enum sect { S_NONE = -1, S_GLOBAL, S_TLS, S_FRONTEND, S_BACKEND, S_POLICY };
#define N_SECT 5

/* keydef.in: the sections a key may appear in, plus TLS_ONLY (a frontend key refused on
 * mode = plain frontends, as every [tls] key is). */
enum {
    IN_GLOBAL = 1 << S_GLOBAL,
    IN_TLS = 1 << S_TLS,
    IN_FRONTEND = 1 << S_FRONTEND,
    IN_BACKEND = 1 << S_BACKEND,
    IN_POLICY = 1 << S_POLICY,
    TLS_ONLY = 1 << N_SECT,
};

struct word {
    const char *name;
    int value;
};

struct keydef;
/* Parse `v` into the field at `out`; 0, or -1 with the problem in why. */
typedef int (*parse_fn)(const struct keydef *k, const char *v, void *out, char *why, size_t cap);

struct keydef {
    const char *name;
    unsigned in; /* IN_* sections, TLS_ONLY */
    parse_fn parse;
    /* The field: in gw_config ([global], [tls]), gw_frontend_conf, gw_backend_conf or
     * gw_policy_conf; a
     * [tls] key's field in gw_frontend_conf is at fe_off. */
    size_t off, size, fe_off;
    const char *def;          /* default as written in a file; NULL: the key is required */
    long min, max;            /* integer range */
    const struct word *words; /* enum names; for integers extra names such as "auto" */
};

/* Enum fields are stored through an int. */
_Static_assert(sizeof(enum gw_log_level) == sizeof(int), "enum size");
_Static_assert(sizeof(enum gw_fe_mode) == sizeof(int), "enum size");
_Static_assert(sizeof(enum gw_be_tls) == sizeof(int), "enum size");
_Static_assert(sizeof(enum gw_data_mode) == sizeof(int), "enum size");
_Static_assert(sizeof(enum gw_tls_version) == sizeof(int), "enum size");
_Static_assert(sizeof(enum gw_auth) == sizeof(int), "enum size");
/* pasv_ports fills both fields as one uint16_t[2]. */
_Static_assert(offsetof(gw_frontend_conf, pasv_port_max) ==
                   offsetof(gw_frontend_conf, pasv_port_min) + sizeof(uint16_t),
               "pasv_port_min/max adjacent");

/* ---- value parsers ---- */

static bool is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.';
}

/* Section names and backend references: [A-Za-z0-9._-], 1..GW_NAME_MAX-1 characters. */
static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= GW_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_name_char(s[i]))
            return false;
    return true;
}

/* Decimal integer, optional '-'; 0, -1 not a number, -2 too big to be in any range. */
static int parse_long(const char *v, long *out)
{
    const char *p = v;
    bool neg = false;
    long n = 0;
    if (*p == '-') {
        neg = true;
        p++;
    }
    if (*p == '\0')
        return -1;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        if (n > 100000000L)
            return -2;
        n = n * 10 + (*p - '0');
    }
    *out = neg ? -n : n;
    return 0;
}

static void words_list(const struct word *w, const char *sep, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (; w && w->name; w++) {
        if (w->name[0] == '\0')
            continue; /* the "unset" spelling is not advertised */
        int n = snprintf(buf + used, cap - used, "%s%s", used ? sep : "", w->name);
        if (n < 0 || (size_t)n >= cap - used)
            break;
        used += (size_t)n;
    }
}

static const struct word *find_word(const struct word *w, const char *v)
{
    for (; w && w->name; w++)
        if (strcasecmp(w->name, v) == 0)
            return w;
    return NULL;
}

static int p_int(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    const struct word *w = find_word(k->words, v);
    long n = 0;
    int value;
    char alt[64];
    words_list(k->words, " or ", alt, sizeof alt);
    if (w) {
        value = w->value;
    } else {
        int rc = parse_long(v, &n);
        if (rc == -1) {
            snprintf(why, cap, "\"%s\" is not a number (expected %s%s%ld..%ld)", v, alt,
                     alt[0] ? " or " : "", k->min, k->max);
            return -1;
        }
        if (rc == -2 || n < k->min || n > k->max) {
            snprintf(why, cap, "%s is out of range (expected %s%s%ld..%ld)", v, alt,
                     alt[0] ? " or " : "", k->min, k->max);
            return -1;
        }
        value = (int)n;
    }
    memcpy(out, &value, sizeof value);
    return 0;
}

/* Empty: not set (-1); otherwise an integer in range. */
static int p_int_opt(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    if (v[0] == '\0') {
        int unset = -1;
        memcpy(out, &unset, sizeof unset);
        return 0;
    }
    return p_int(k, v, out, why, cap);
}

static int parse_bool(const char *v, bool *b)
{
    static const struct word yes_no[] = {{"yes", 1},   {"true", 1}, {"on", 1}, {"1", 1}, {"no", 0},
                                         {"false", 0}, {"off", 0},  {"0", 0},  {NULL, 0}};
    const struct word *w = find_word(yes_no, v);
    if (!w)
        return -1;
    *b = w->value != 0;
    return 0;
}

static int p_bool(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    (void)k;
    bool b;
    if (parse_bool(v, &b) < 0) {
        snprintf(why, cap, "\"%s\": expected yes or no", v);
        return -1;
    }
    memcpy(out, &b, sizeof b);
    return 0;
}

/* Empty: unset (-1), else yes (1) / no (0) into an int. */
static int p_tristate(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    (void)k;
    bool b = false;
    int value = -1;
    if (v[0] != '\0') {
        if (parse_bool(v, &b) < 0) {
            snprintf(why, cap, "\"%s\": expected yes, no or empty", v);
            return -1;
        }
        value = b ? 1 : 0;
    }
    memcpy(out, &value, sizeof value);
    return 0;
}

static const struct word *enum_word(const struct keydef *k, const char *v, char *why, size_t cap)
{
    const struct word *w = find_word(k->words, v);
    if (!w) {
        char alt[128];
        words_list(k->words, " | ", alt, sizeof alt);
        snprintf(why, cap, "\"%s\": expected %s", v, alt);
    }
    return w;
}

static int p_enum(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    const struct word *w = enum_word(k, v, why, cap);
    if (!w)
        return -1;
    memcpy(out, &w->value, sizeof w->value);
    return 0;
}

/* An enum with two words stored in a bool field. */
static int p_enum_bool(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    const struct word *w = enum_word(k, v, why, cap);
    if (!w)
        return -1;
    bool b = w->value != 0;
    memcpy(out, &b, sizeof b);
    return 0;
}

static int p_str(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    size_t n = strlen(v);
    if (n >= k->size) {
        snprintf(why, cap, "too long (at most %zu characters)", k->size - 1);
        return -1;
    }
    memcpy(out, v, n + 1);
    return 0;
}

/* Lists are comma-separated and spaces around items are ignored: the item starting at p
 * (*item, *n, trimmed). Returns the comma after it, or NULL for the last item. */
static const char *list_next(const char *p, const char **item, size_t *n)
{
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    while (len && (*p == ' ' || *p == '\t'))
        p++, len--;
    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
        len--;
    *item = p;
    *n = len;
    return comma;
}

/* server_name: host names or *.suffix, separated by commas. */
static int p_server_names(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    const char *p = v;
    while (*p) {
        const char *name;
        size_t n;
        const char *comma = list_next(p, &name, &n);
        if (n == 0 || n >= GW_HOST_MAX) {
            snprintf(why, cap, "\"%s\": expected host names separated by commas", v);
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            char c = name[i];
            bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '.' || c == '_' || (c == '*' && i == 0);
            if (!ok || (c == '*' && (n < 3 || name[1] != '.'))) {
                snprintf(why, cap, "\"%.*s\": not a host name or *.suffix", (int)n, name);
                return -1;
            }
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    return p_str(k, v, out, why, cap);
}

/* pasv_address_for: CIDR=IPV4ADDR, ... */
static int p_addr_for(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    if (gw_pp_addr_for_check(v, why, cap) != 0)
        return -1;
    return p_str(k, v, out, why, cap);
}

/* backend: section names, checked against the [backend] sections by validate(). */
static int p_name_list(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    char item[GW_NAME_MAX + 1];
    const char *p = v;
    while (*p) {
        const char *name;
        size_t n;
        const char *comma = list_next(p, &name, &n);
        if (n == 0 || n >= sizeof item) {
            snprintf(why, cap, "\"%s\": expected section names separated by commas", v);
            return -1;
        }
        memcpy(item, name, n);
        item[n] = 0;
        if (!valid_name(item)) {
            snprintf(why, cap, "\"%s\": not a section name", item);
            return -1;
        }
        if (!comma)
            break;
        p = comma + 1;
        if (!*p) {
            snprintf(why, cap, "\"%s\": ends with a comma", v);
            return -1;
        }
    }
    return p_str(k, v, out, why, cap);
}

static bool is_ip_literal(const char *host)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* The NAT address advertised in 227 replies: an IPv4 literal (227 cannot carry a name). */
/* pasv_address: an IPv4 address or a host name resolved to one (a 227 carries IPv4 only). */
static int p_pasv_host(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    unsigned char buf[4];
    bool name = v[0] &&
                strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                          "0123456789-.") == strlen(v) &&
                strpbrk(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ");
    if (v[0] != '\0' && inet_pton(AF_INET, v, buf) != 1 && !name) {
        snprintf(why, cap, "\"%s\": expected an IPv4 address or a host name", v);
        return -1;
    }
    return p_str(k, v, out, why, cap);
}

static int p_hostport(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    (void)k;
    gw_hostport hp;
    if (gw_parse_hostport(v, &hp) < 0) {
        snprintf(why, cap, "\"%s\": expected HOST:PORT or [IPv6]:PORT with PORT 1..65535", v);
        return -1;
    }
    memcpy(out, &hp, sizeof hp);
    return 0;
}

/* admin_listen: empty is off (port 0), else like listen. */
static int p_admin_listen(const struct keydef *k, const char *v, void *out, char *why, size_t cap);

/* Listening needs an address, not a name: we bind without resolving. */
static int p_listen(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    (void)k;
    gw_hostport hp;
    if (gw_parse_hostport(v, &hp) < 0 || !is_ip_literal(hp.host)) {
        snprintf(why, cap, "\"%s\": expected IP:PORT or [IPv6]:PORT with PORT 1..65535", v);
        return -1;
    }
    memcpy(out, &hp, sizeof hp);
    return 0;
}

static int p_admin_listen(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    if (v[0] == '\0') {
        memset(out, 0, sizeof(gw_hostport));
        return 0;
    }
    return p_listen(k, v, out, why, cap);
}

static int p_portrange(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    (void)k;
    if (v[0] == '\0') { /* no range */
        memset(out, 0, 2 * sizeof(uint16_t));
        return 0;
    }
    char buf[32];
    long lo, hi;
    const char *dash = strchr(v, '-');
    size_t n = dash ? (size_t)(dash - v) : 0;
    if (!dash || n == 0 || n >= sizeof buf)
        goto bad;
    memcpy(buf, v, n);
    buf[n] = '\0';
    if (parse_long(buf, &lo) < 0 || dash[1] == '-' || parse_long(dash + 1, &hi) < 0)
        goto bad;
    if (lo < 1024 || lo > hi || hi > 65535)
        goto bad;
    uint16_t r[2] = {(uint16_t)lo, (uint16_t)hi};
    memcpy(out, r, sizeof r);
    return 0;
bad:
    snprintf(why, cap, "expected LOW-HIGH with 1024 <= LOW <= HIGH <= 65535");
    return -1;
}

/* A CIDR list (cidr.h): ban_exempt, the *_exempt lists, proxy_protocol_from. */
static int p_cidr_list(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    if (gw_cidr_list_check(v, why, cap) != 0)
        return -1;
    return p_str(k, v, out, why, cap);
}

/* deny, allow: FTP verbs (3 or 4 letters) separated by blanks or commas, stored upper-case
 * with one blank between them. */
static int p_verbs(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    char norm[GW_PATH_MAX];
    size_t used = 0;
    for (const char *p = v; *p;) {
        p += strspn(p, " \t,");
        size_t n = strcspn(p, " \t,");
        if (n == 0)
            break;
        if (n < 3 || n > 4) {
            snprintf(why, cap, "\"%.*s\": not an FTP verb (3 or 4 letters)", (int)(n < 40 ? n : 40),
                     p);
            return -1;
        }
        for (size_t i = 0; i < n; i++)
            if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z'))) {
                snprintf(why, cap, "\"%.*s\": not an FTP verb (3 or 4 letters)", (int)n, p);
                return -1;
            }
        if (used + n + 2 > sizeof norm || used + n + 2 > k->size) {
            snprintf(why, cap, "too long");
            return -1;
        }
        if (used)
            norm[used++] = ' ';
        for (size_t i = 0; i < n; i++)
            norm[used++] = (char)(p[i] & ~0x20);
        p += n;
    }
    norm[used] = 0;
    return p_str(k, norm, out, why, cap);
}

/* users: user names and @groups separated by blanks or commas. */
static int p_user_list(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    for (const char *p = v; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == ':' || c >= 0x7f) {
            snprintf(why, cap, "\"%s\": expected user names and @groups", v);
            return -1;
        }
    }
    return p_str(k, v, out, why, cap);
}

/* ldap_uri: ldap:// and ldaps:// URIs (ldap_text.h). */
static int p_ldap_uri(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    int n;
    bool ldaps;
    if (v[0] && gw_ldap_uris_check(v, NULL, 0, &n, &ldaps, why, cap) != 0)
        return -1;
    return p_str(k, v, out, why, cap);
}

/* ldap_user_dn, ldap_filter: %u templates. */
static int p_ldap_template(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    if (v[0] && gw_ldap_template_check(v, why, cap) != 0)
        return -1;
    return p_str(k, v, out, why, cap);
}

/* ldap_group_attr, ldap_backend_attr: an attribute name. */
static int p_ldap_attr(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    if (v[0] && !gw_ldap_attr_ok(v)) {
        snprintf(why, cap, "\"%s\": not an attribute name", v);
        return -1;
    }
    return p_str(k, v, out, why, cap);
}

/* rate_down, rate_up and the frontend's: bytes/s with an optional K, M or G (1024s); 0:
 * no limit. */
static int p_rate(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    uint64_t n;
    if (gw_parse_rate(v, &n) != 0) {
        snprintf(why, cap, "\"%s\": expected bytes/s (digits with an optional K, M or G)", v);
        return -1;
    }
    memcpy(out, &n, sizeof n);
    return 0;
}

/* pam_service: a file name under /etc/pam.d. */
static int p_pam_service(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    if (!valid_name(v)) {
        snprintf(why, cap, "\"%s\": not a PAM service name (letters, digits, . _ -)", v);
        return -1;
    }
    return p_str(k, v, out, why, cap);
}

/* policy: a section name (checked against the [policy] sections by validate()). */
static int p_section_ref(const struct keydef *k, const char *v, void *out, char *why, size_t cap)
{
    if (v[0] && !valid_name(v)) {
        snprintf(why, cap, "\"%s\": not a section name", v);
        return -1;
    }
    return p_str(k, v, out, why, cap);
}

/* ---- the key table ---- */

#define G(f) offsetof(gw_config, f), sizeof(((gw_config *)0)->f), 0
#define F(f) offsetof(gw_frontend_conf, f), sizeof(((gw_frontend_conf *)0)->f), 0
#define B(f) offsetof(gw_backend_conf, f), sizeof(((gw_backend_conf *)0)->f), 0
#define P(f) offsetof(gw_policy_conf, f), sizeof(((gw_policy_conf *)0)->f), 0
#define PASV_RANGE offsetof(gw_frontend_conf, pasv_port_min), 2 * sizeof(uint16_t), 0
/* A [tls] key: the same field in gw_config and gw_frontend_conf (sizes must agree: the
 * array size is negative, a compile error, when they do not). */
#define SAME_SIZE(f)                                                                               \
    (sizeof(((gw_config *)0)->f) +                                                                 \
     0 * sizeof(char[sizeof(((gw_config *)0)->f) == sizeof(((gw_frontend_conf *)0)->f) ? 1 : -1]))
#define TF(f) offsetof(gw_config, f), SAME_SIZE(f), offsetof(gw_frontend_conf, f)
#define DUR 1, MAX_DURATION

static const struct word w_auto[] = {{"auto", 0}, {NULL, 0}};
static const struct word w_log_level[] = {{"error", GW_LOG_ERROR},
                                          {"warn", GW_LOG_WARN},
                                          {"info", GW_LOG_INFO},
                                          {"debug", GW_LOG_DEBUG},
                                          {NULL, 0}};
static const struct word w_log_format[] = {{"text", 0}, {"json", 1}, {NULL, 0}};
static const struct word w_xferlog_format[] = {
    {"kv", GW_XFERLOG_KV}, {"wuftpd", GW_XFERLOG_WUFTPD}, {NULL, 0}};
static const struct word w_reuse[] = {{"required", 1}, {"optional", 0}, {NULL, 0}};
static const struct word w_tls_front[] = {
    {"TLSv1.2", GW_TLS_1_2}, {"TLSv1.3", GW_TLS_1_3}, {NULL, 0}};
static const struct word w_tls_back[] = {{"TLSv1", GW_TLS_1_0},   {"TLSv1.1", GW_TLS_1_1},
                                         {"TLSv1.2", GW_TLS_1_2}, {"TLSv1.3", GW_TLS_1_3},
                                         {"", GW_TLS_ANY},        {NULL, 0}};
static const struct word w_fe_mode[] = {
    {"implicit", GW_FE_IMPLICIT}, {"explicit", GW_FE_EXPLICIT}, {"plain", GW_FE_PLAIN}, {NULL, 0}};
static const struct word w_be_tls[] = {{"none", GW_BE_TLS_NONE},
                                       {"explicit", GW_BE_TLS_EXPLICIT},
                                       {"implicit", GW_BE_TLS_IMPLICIT},
                                       {NULL, 0}};
static const struct word w_splice[] = {
    {"no", GW_SPLICE_NO}, {"downloads", GW_SPLICE_DOWNLOADS}, {"yes", GW_SPLICE_YES}, {NULL, 0}};
static const struct word w_balance[] = {{"roundrobin", GW_BALANCE_ROUNDROBIN},
                                        {"leastconn", GW_BALANCE_LEASTCONN},
                                        {"random", GW_BALANCE_RANDOM},
                                        {"source", GW_BALANCE_SOURCE},
                                        {"user", GW_BALANCE_USER},
                                        {NULL, 0}};
static const struct word w_client_cert[] = {{"none", GW_CERT_NONE},
                                            {"optional", GW_CERT_OPTIONAL},
                                            {"required", GW_CERT_REQUIRED},
                                            {NULL, 0}};
static const struct word w_pp_in[] = {
    {"no", GW_PP_OFF}, {"v1", GW_PP_V1}, {"v2", GW_PP_V2}, {"any", GW_PP_ANY}, {NULL, 0}};
static const struct word w_pp_out[] = {
    {"no", GW_PP_OFF}, {"v1", GW_PP_V1}, {"v2", GW_PP_V2}, {NULL, 0}};
static const struct word w_auth[] = {{"backend", GW_AUTH_BACKEND},
                                     {"file", GW_AUTH_FILE},
                                     {"pam", GW_AUTH_PAM},
                                     {"ldap", GW_AUTH_LDAP},
                                     {NULL, 0}};
static const struct word w_data_mode[] = {
    {"passive", GW_DATA_PASSIVE}, {"active", GW_DATA_ACTIVE}, {NULL, 0}};

/* One row per key, naming every section it may appear in (as nginx's NGX_MAIL_MAIN_CONF |
 * NGX_MAIL_SRV_CONF). A [tls] key is also a [frontend] key: a frontend that does not set it
 * takes the [tls] value (merge_tls_policy, the one merge step). The same name in another
 * section (a backend's min_version) is another key with its own row. */
static const struct keydef keys[] = {
    /* name, sections, parser, field, default (NULL: required), min, max, words */
    {"workers", IN_GLOBAL, p_int, G(workers), "1", 1, MAX_WORKERS, w_auto},
    {"user", IN_GLOBAL, p_str, G(user), "", 0, 0, NULL},
    {"log_level", IN_GLOBAL, p_enum, G(log_level), "info", 0, 0, w_log_level},
    {"log_format", IN_GLOBAL, p_enum_bool, G(log_json), "text", 0, 0, w_log_format},
    {"xferlog", IN_GLOBAL, p_str, G(xferlog), "", 0, 0, NULL},
    {"xferlog_format", IN_GLOBAL, p_enum, G(xferlog_format), "kv", 0, 0, w_xferlog_format},
    {"max_sessions", IN_GLOBAL, p_int, G(max_sessions), "10000", 1, MAX_SESSIONS, NULL},
    {"max_sessions_per_ip", IN_GLOBAL, p_int, G(max_sessions_per_ip), "50", 1, MAX_SESSIONS, NULL},
    {"idle_timeout", IN_GLOBAL, p_int, G(idle_timeout), "600", DUR, NULL},
    {"login_timeout", IN_GLOBAL, p_int, G(login_timeout), "60", DUR, NULL},
    {"data_connect_timeout", IN_GLOBAL, p_int, G(data_connect_timeout), "60", DUR, NULL},
    {"data_timeout", IN_GLOBAL, p_int, G(data_timeout), "300", DUR, NULL},
    {"shutdown_grace", IN_GLOBAL, p_int, G(shutdown_grace), "30", DUR, NULL},
    {"upgrade_grace", IN_GLOBAL, p_int, G(upgrade_grace), "0", 0, MAX_DURATION, NULL},
    {"splice", IN_GLOBAL, p_enum, G(splice), "no", 0, 0, w_splice},
    {"ban_after", IN_GLOBAL, p_int, G(ban_after), "0", 0, GW_BAN_AFTER_MAX, NULL},
    {"ban_window", IN_GLOBAL, p_int, G(ban_window), "600", DUR, NULL},
    {"ban_time", IN_GLOBAL, p_int, G(ban_time), "900", DUR, NULL},
    {"ban_exempt", IN_GLOBAL, p_cidr_list, G(ban_exempt), "", 0, 0, NULL},
    {"admin_listen", IN_GLOBAL, p_admin_listen, G(admin_listen), "", 0, 0, NULL},
    {"admin_users", IN_GLOBAL, p_str, G(admin_users), "", 0, 0, NULL},
    {"admin_tls_cert", IN_GLOBAL, p_str, G(admin_tls_cert), "", 0, 0, NULL},
    {"admin_tls_key", IN_GLOBAL, p_str, G(admin_tls_key), "", 0, 0, NULL},
    {"control_socket", IN_GLOBAL, p_str, G(control_socket), "", 0, 0, NULL},

    {"cert", IN_TLS | IN_FRONTEND, p_str, TF(cert), "", 0, 0, NULL},
    {"key", IN_TLS | IN_FRONTEND, p_str, TF(key), "", 0, 0, NULL},
    {"min_version", IN_TLS | IN_FRONTEND, p_enum, TF(tls_min_version), "TLSv1.2", 0, 0,
     w_tls_front},
    {"ciphers", IN_TLS | IN_FRONTEND, p_str, TF(ciphers), "", 0, 0, NULL},
    {"ciphersuites", IN_TLS | IN_FRONTEND, p_str, TF(ciphersuites), "", 0, 0, NULL},
    {"data_session_reuse", IN_TLS | IN_FRONTEND, p_enum_bool, TF(data_session_reuse_required),
     "required", 0, 0, w_reuse},
    {"strict_tls_eof", IN_TLS | IN_FRONTEND, p_tristate, TF(strict_tls_eof), "", 0, 0, NULL},
    {"client_cert", IN_TLS | IN_FRONTEND, p_enum, TF(client_cert), "none", 0, 0, w_client_cert},
    {"client_ca", IN_TLS | IN_FRONTEND, p_str, TF(client_ca), "", 0, 0, NULL},
    {"client_crl", IN_TLS | IN_FRONTEND, p_str, TF(client_crl), "", 0, 0, NULL},
    {"client_cert_user", IN_TLS | IN_FRONTEND, p_bool, TF(client_cert_user), "no", 0, 0, NULL},
    {"data_session_reuse_exempt", IN_TLS | IN_FRONTEND, p_cidr_list, TF(data_session_reuse_exempt),
     "", 0, 0, NULL},
    {"strict_tls_eof_exempt", IN_TLS | IN_FRONTEND, p_cidr_list, TF(strict_tls_eof_exempt), "", 0,
     0, NULL},

    {"listen", IN_FRONTEND, p_listen, F(listen), NULL, 0, 0, NULL},
    {"mode", IN_FRONTEND, p_enum, F(mode), "implicit", 0, 0, w_fe_mode},
    {"backend", IN_FRONTEND, p_name_list, F(backend), "", 0, 0, NULL},
    {"balance", IN_FRONTEND, p_enum, F(balance), "roundrobin", 0, 0, w_balance},
    {"require_tls", IN_FRONTEND | TLS_ONLY, p_bool, F(require_tls), "yes", 0, 0, NULL},
    {"require_prot_p", IN_FRONTEND | TLS_ONLY, p_bool, F(require_prot_p), "yes", 0, 0, NULL},
    {"allow_ccc", IN_FRONTEND | TLS_ONLY, p_bool, F(allow_ccc), "no", 0, 0, NULL},
    {"auth_ssl_protects_data", IN_FRONTEND | TLS_ONLY, p_bool, F(auth_ssl_protects_data), "no", 0,
     0, NULL},
    {"route_user", IN_FRONTEND, p_bool, F(route_user), "no", 0, 0, NULL},
    {"greeting", IN_FRONTEND, p_str, F(greeting), "", 0, 0, NULL},
    {"prelogin_backend_per_ip", IN_FRONTEND, p_int, F(prelogin_backend_per_ip), "20", 0,
     MAX_SESSIONS, NULL},
    {"prelogin_backend_max", IN_FRONTEND, p_int, F(prelogin_backend_max), "100", 0, MAX_SESSIONS,
     NULL},
    {"pasv_address", IN_FRONTEND, p_pasv_host, F(pasv_address), "", 0, 0, NULL},
    {"pasv_ports", IN_FRONTEND, p_portrange, PASV_RANGE, "30000-30099", 0, 0, NULL},
    {"pasv_shared_port", IN_FRONTEND, p_int_opt, F(pasv_shared_port), "", 1024, 65535, NULL},
    {"active_source_port", IN_FRONTEND, p_int_opt, F(active_source_port), "", 0, 65535, NULL},
    {"server_name", IN_FRONTEND, p_server_names, F(server_name), "", 0, 0, NULL},
    {"proxy_protocol", IN_FRONTEND, p_enum, F(proxy_protocol), "no", 0, 0, w_pp_in},
    {"proxy_protocol_from", IN_FRONTEND, p_cidr_list, F(proxy_protocol_from), "", 0, 0, NULL},
    {"proxy_protocol_data", IN_FRONTEND, p_bool, F(proxy_protocol_data), "no", 0, 0, NULL},
    {"pasv_address_for", IN_FRONTEND, p_addr_for, F(pasv_address_for), "", 0, 0, NULL},
    {"auth", IN_FRONTEND, p_enum, F(auth), "backend", 0, 0, w_auth},
    {"auth_file", IN_FRONTEND, p_str, F(auth_file), "", 0, 0, NULL},
    {"pam_service", IN_FRONTEND, p_pam_service, F(pam_service), "ftpsgate", 0, 0, NULL},
    {"ldap_uri", IN_FRONTEND, p_ldap_uri, F(ldap_uri), "", 0, 0, NULL},
    {"ldap_starttls", IN_FRONTEND, p_bool, F(ldap_starttls), "no", 0, 0, NULL},
    {"ldap_ca_file", IN_FRONTEND, p_str, F(ldap_ca_file), "", 0, 0, NULL},
    {"ldap_bind_dn", IN_FRONTEND, p_str, F(ldap_bind_dn), "", 0, 0, NULL},
    {"ldap_bind_password_file", IN_FRONTEND, p_str, F(ldap_bind_password_file), "", 0, 0, NULL},
    {"ldap_user_dn", IN_FRONTEND, p_ldap_template, F(ldap_user_dn), "", 0, 0, NULL},
    {"ldap_base", IN_FRONTEND, p_str, F(ldap_base), "", 0, 0, NULL},
    {"ldap_filter", IN_FRONTEND, p_ldap_template, F(ldap_filter), "(uid=%u)", 0, 0, NULL},
    {"ldap_group_attr", IN_FRONTEND, p_ldap_attr, F(ldap_group_attr), "memberOf", 0, 0, NULL},
    {"ldap_backend_attr", IN_FRONTEND, p_ldap_attr, F(ldap_backend_attr), "", 0, 0, NULL},
    {"ldap_timeout", IN_FRONTEND, p_int, F(ldap_timeout), "5", 1, 300, NULL},
    {"auth_cache_ttl", IN_FRONTEND, p_int, F(auth_cache_ttl), "60", 0, 86400, NULL},
    {"user_map", IN_FRONTEND, p_str, F(user_map), "", 0, 0, NULL},
    {"policy", IN_FRONTEND, p_section_ref, F(policy), "", 0, 0, NULL},
    {"rate_down", IN_FRONTEND, p_rate, F(rate_down), "0", 0, 0, NULL},
    {"rate_up", IN_FRONTEND, p_rate, F(rate_up), "0", 0, 0, NULL},
    {"frontend_rate_down", IN_FRONTEND, p_rate, F(frontend_rate_down), "0", 0, 0, NULL},
    {"frontend_rate_up", IN_FRONTEND, p_rate, F(frontend_rate_up), "0", 0, 0, NULL},

    {"address", IN_BACKEND, p_hostport, B(address), NULL, 0, 0, NULL},
    {"tls", IN_BACKEND, p_enum, B(tls), "none", 0, 0, w_be_tls},
    {"tls_verify", IN_BACKEND, p_bool, B(tls_verify), "yes", 0, 0, NULL},
    {"ca_file", IN_BACKEND, p_str, B(ca_file), "", 0, 0, NULL},
    {"sni", IN_BACKEND, p_str, B(sni), "", 0, 0, NULL},
    {"min_version", IN_BACKEND, p_enum, B(min_version), "TLSv1.2", 0, 0, w_tls_back},
    {"max_version", IN_BACKEND, p_enum, B(max_version), "", 0, 0, w_tls_back},
    {"ciphers", IN_BACKEND, p_str, B(ciphers), "", 0, 0, NULL},
    {"data_mode", IN_BACKEND, p_enum, B(data_mode), "passive", 0, 0, w_data_mode},
    {"connect_timeout", IN_BACKEND, p_int, B(connect_timeout), "10", DUR, NULL},
    {"weight", IN_BACKEND, p_int, B(weight), "1", 1, 1000, NULL},
    {"max_sessions", IN_BACKEND, p_int, B(max_sessions), "0", 0, MAX_SESSIONS, NULL},
    {"health_interval", IN_BACKEND, p_int, B(health_interval), "10", 0, 3600, NULL},
    {"health_timeout", IN_BACKEND, p_int, B(health_timeout), "5", 1, 3600, NULL},
    {"health_rise", IN_BACKEND, p_int, B(health_rise), "2", 1, 100, NULL},
    {"health_fall", IN_BACKEND, p_int, B(health_fall), "3", 1, 100, NULL},
    {"proxy_protocol", IN_BACKEND, p_enum, B(proxy_protocol), "no", 0, 0, w_pp_out},

    {"read_only", IN_POLICY, p_bool, P(read_only), "no", 0, 0, NULL},
    {"deny", IN_POLICY, p_verbs, P(deny), "", 0, 0, NULL},
    {"allow", IN_POLICY, p_verbs, P(allow), "", 0, 0, NULL},
    {"users", IN_POLICY, p_user_list, P(users), "", 0, 0, NULL},
    {"rate_down", IN_POLICY, p_rate, P(rate_down), "0", 0, 0, NULL},
    {"rate_up", IN_POLICY, p_rate, P(rate_up), "0", 0, 0, NULL},
};
#define NKEYS (sizeof keys / sizeof keys[0])

/* ---- parse state ---- */

struct state {
    gw_config *cfg;
    const char *origin;
    char *err;
    size_t errcap;
    /* reader */
    const char *p, *end;
    int lineno;
    /* current section */
    enum sect sect;
    int idx;        /* frontend/backend index */
    int sect_line;  /* line of its header */
    char label[80]; /* "frontend NAME", for messages */
    int *key_line;  /* line each key of this section was set on (0: not set) */
    int global_line, tls_line;
    int global_keys[NKEYS], tls_keys[NKEYS];
    /* Per frontend/backend/policy section, grown with cfg->frontends/backends/policies
     * (room for *_cap). */
    int fe_cap, be_cap, pol_cap;
    int *fe_line, *be_line, *pol_line;
    int (*fe_keys)[NKEYS], (*be_keys)[NKEYS], (*pol_keys)[NKEYS];
};

/* The key lines kept after a successful parse (gw_config_where). */
struct gw_config_lines {
    char origin[GW_PATH_MAX];
    int global[NKEYS], tls[NKEYS];
    int global_line, tls_line;
    int *fe_line, *be_line, *pol_line;
    int (*fe_keys)[NKEYS], (*be_keys)[NKEYS], (*pol_keys)[NKEYS];
};

/* Room for one more frontend, backend or policy section: 0, or -1 when out of memory. */
static int grow_sections(struct state *st, enum sect s)
{
    bool fe = s == S_FRONTEND, pol = s == S_POLICY;
    int *cap = fe ? &st->fe_cap : pol ? &st->pol_cap : &st->be_cap;
    int count = fe ? st->cfg->n_frontends : pol ? st->cfg->n_policies : st->cfg->n_backends;
    if (count < *cap)
        return 0;
    int ncap = *cap ? *cap * 2 : 8;
    size_t conf = fe    ? sizeof(gw_frontend_conf)
                  : pol ? sizeof(gw_policy_conf)
                        : sizeof(gw_backend_conf);
    void **arr = fe    ? (void **)&st->cfg->frontends
                 : pol ? (void **)&st->cfg->policies
                       : (void **)&st->cfg->backends;
    int **lines = fe ? &st->fe_line : pol ? &st->pol_line : &st->be_line;
    int(**kl)[NKEYS] = fe ? &st->fe_keys : pol ? &st->pol_keys : &st->be_keys;
    void *a = realloc(*arr, (size_t)ncap * conf);
    if (!a)
        return -1;
    *arr = a;
    int *l = realloc(*lines, (size_t)ncap * sizeof **lines);
    if (!l)
        return -1;
    *lines = l;
    int(*k)[NKEYS] = realloc(*kl, (size_t)ncap * sizeof **kl);
    if (!k)
        return -1;
    *kl = k;
    *cap = ncap;
    return 0;
}

/* Every step returns 0, or -1 after one call of fail(): the first -1 stops the parse, so
 * the message written is the one reported. Writes "ORIGIN:LINE: [label] key: problem". */
__attribute__((format(printf, 5, 6))) static int fail(struct state *st, int line, const char *label,
                                                      const char *key, const char *fmt, ...)
{
    if (!st->err || st->errcap == 0)
        return -1;
    char problem[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(problem, sizeof problem, fmt, ap);
    va_end(ap);
    bool has_label = label != NULL;
    bool has_key = key != NULL;
    snprintf(st->err, st->errcap, "%s:%d: %s%s%s%s%s%s%s", st->origin, line, has_label ? "[" : "",
             has_label ? label : "", has_label ? "]" : "", has_label && has_key ? " " : "",
             has_key ? key : "", has_label || has_key ? ": " : "", problem);
    return -1;
}

static char *section_base(struct state *st, enum sect s, int idx)
{
    switch (s) {
    case S_GLOBAL:
    case S_TLS:
        return (char *)st->cfg;
    case S_FRONTEND:
        return (char *)&st->cfg->frontends[idx];
    case S_BACKEND:
        return (char *)&st->cfg->backends[idx];
    case S_POLICY:
        return (char *)&st->cfg->policies[idx];
    default:
        return NULL;
    }
}

static bool key_in(const struct keydef *k, enum sect s)
{
    return s != S_NONE && (k->in & (1u << s));
}

/* The row of the key `name` of section s, or -1. A key's lines are kept per section
 * under its row, so a [tls] key has one in [tls] and one in each [frontend]. */
static int key_index(enum sect s, const char *name)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (key_in(&keys[i], s) && strcmp(keys[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* Key k's field in section s of the current section's struct (base). */
static char *field(const struct keydef *k, enum sect s, char *base)
{
    return base + (s == S_FRONTEND && (k->in & IN_TLS) ? k->fe_off : k->off);
}

/* Scratch space big enough for any field. */
union scratch {
    char list[GW_LIST_MAX]; /* the largest field */
    gw_hostport hp;
    max_align_t align;
};
_Static_assert(sizeof(union scratch) >= sizeof(gw_hostport), "scratch size");

/* Parse `v` for key k into its field of section s (base: the section's struct); the field
 * is left as it was when v is not valid. */
static int set_value(struct state *st, int line, const struct keydef *k, enum sect s, char *base,
                     const char *v)
{
    union scratch val;
    char why[400];
    if (k->size > sizeof val)
        return fail(st, line, st->label, k->name, "internal: field size");
    memset(&val, 0, sizeof val);
    if (k->parse(k, v, &val, why, sizeof why) < 0)
        return fail(st, line, st->label, k->name, "%s", why);
    memcpy(field(k, s, base), &val, k->size);
    return 0;
}

static int apply_defaults(struct state *st, enum sect s, char *base)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (key_in(&keys[i], s) && keys[i].def &&
            set_value(st, 0, &keys[i], s, base, keys[i].def) != 0)
            return -1;
    return 0;
}

/* ---- section handling (driven by the reader, which sees every header) ---- */

static int close_section(struct state *st)
{
    if (st->sect == S_NONE)
        return 0;
    /* Required keys are reported at the section header. */
    for (size_t i = 0; i < NKEYS; i++)
        if (key_in(&keys[i], st->sect) && !keys[i].def && !st->key_line[i])
            return fail(st, st->sect_line, st->label, keys[i].name, "missing (required)");

    if (st->sect == S_TLS || st->sect == S_FRONTEND) {
        int c = key_index(st->sect, "cert"), k = key_index(st->sect, "key");
        char *base = section_base(st, st->sect, st->idx);
        const char *cert = field(&keys[c], st->sect, base);
        const char *key = field(&keys[k], st->sect, base);
        if (cert[0] && !key[0])
            return fail(st, st->key_line[c], st->label, "cert",
                        "set without key (set both, or neither)");
        if (key[0] && !cert[0])
            return fail(st, st->key_line[k], st->label, "key",
                        "set without cert (set both, or neither)");
    }
    if (st->sect == S_FRONTEND && st->cfg->frontends[st->idx].mode == GW_FE_PLAIN) {
        for (size_t i = 0; i < NKEYS; i++) {
            bool tls = key_in(&keys[i], S_FRONTEND) && (keys[i].in & (IN_TLS | TLS_ONLY));
            if (tls && st->key_line[i])
                return fail(st, st->key_line[i], st->label, keys[i].name,
                            "not allowed on a mode = plain frontend");
        }
    }
    if (st->sect == S_FRONTEND) { /* PROXY protocol: only from the balancers named */
        const gw_frontend_conf *f = &st->cfg->frontends[st->idx];
        int kp = key_index(S_FRONTEND, "proxy_protocol");
        int kd = key_index(S_FRONTEND, "proxy_protocol_data");
        if (f->proxy_protocol && !f->proxy_protocol_from[0])
            return fail(st, st->key_line[kp], st->label, "proxy_protocol",
                        "needs proxy_protocol_from (the load balancers' addresses)");
        if (f->proxy_protocol_data && !f->proxy_protocol)
            return fail(st, st->key_line[kd], st->label, "proxy_protocol_data",
                        "needs proxy_protocol on the control connections too");
    }
    if (st->sect == S_BACKEND) {
        const gw_backend_conf *b = &st->cfg->backends[st->idx];
        if (b->max_version != GW_TLS_ANY && b->min_version > b->max_version)
            return fail(st, st->key_line[key_index(S_BACKEND, "max_version")], st->label,
                        "max_version", "is below min_version");
    }
    st->sect = S_NONE;
    return 0;
}

/* `inner` is the trimmed text between '[' and ']'. */
static int open_section(struct state *st, const char *inner)
{
    static const char *const types[] = {"global", "tls", "frontend", "backend", "policy"};
    char name[GW_NAME_MAX];
    size_t n = strcspn(inner, " \t");
    const char *p = inner + n + strspn(inner + n, " \t");
    int line = st->lineno;
    enum sect s = S_NONE;

    if (close_section(st) != 0)
        return -1;
    for (int i = 0; i < N_SECT; i++)
        if (strlen(types[i]) == n && memcmp(types[i], inner, n) == 0)
            s = (enum sect)i;
    if (s == S_NONE)
        return fail(st, line, inner, NULL,
                    "unknown section (expected [global], [tls], [frontend NAME], "
                    "[backend NAME] or [policy NAME])");
    const char *type = types[s];
    if (p[0] && (s == S_GLOBAL || s == S_TLS))
        return fail(st, line, inner, NULL, "[%s] takes no name", type);
    if (p[0] && !valid_name(p))
        return fail(st, line, inner, NULL,
                    "invalid section name (letters, digits, '.', '-', '_'; at most %d "
                    "characters)",
                    GW_NAME_MAX - 1);
    snprintf(name, sizeof name, "%s", p[0] ? p : "default");

    if (s == S_GLOBAL || s == S_TLS) {
        int *seen = s == S_GLOBAL ? &st->global_line : &st->tls_line;
        if (*seen)
            return fail(st, line, type, NULL, "duplicate section (first on line %d)", *seen);
        *seen = line;
        st->idx = 0;
        st->key_line = s == S_GLOBAL ? st->global_keys : st->tls_keys;
        snprintf(st->label, sizeof st->label, "%s", type);
    } else {
        bool fe = s == S_FRONTEND, pol = s == S_POLICY;
        int *count = fe ? &st->cfg->n_frontends : pol ? &st->cfg->n_policies : &st->cfg->n_backends;
        int *lines = fe ? st->fe_line : pol ? st->pol_line : st->be_line;
        snprintf(st->label, sizeof st->label, "%s %s", type, name);
        for (int i = 0; i < *count; i++) {
            const char *other = fe    ? st->cfg->frontends[i].name
                                : pol ? st->cfg->policies[i].name
                                      : st->cfg->backends[i].name;
            if (strcmp(other, name) == 0)
                return fail(st, line, st->label, NULL, "duplicate section (first on line %d)",
                            lines[i]);
        }
        if (grow_sections(st, s) != 0)
            return fail(st, line, st->label, NULL, "out of memory");
        st->idx = (*count)++;
        (fe ? st->fe_line : pol ? st->pol_line : st->be_line)[st->idx] = line;
        st->key_line = fe    ? st->fe_keys[st->idx]
                       : pol ? st->pol_keys[st->idx]
                             : st->be_keys[st->idx];
        if (pol) {
            gw_policy_conf *pc = &st->cfg->policies[st->idx];
            memset(pc, 0, sizeof *pc);
            memcpy(pc->name, name, sizeof name);
        } else if (fe) {
            gw_frontend_conf *f = &st->cfg->frontends[st->idx];
            memset(f, 0, sizeof *f);
            memcpy(f->name, name, sizeof name);
            f->backend_index = -1;
            f->policy_index = -1;
        } else {
            gw_backend_conf *b = &st->cfg->backends[st->idx];
            memset(b, 0, sizeof *b);
            memcpy(b->name, name, sizeof name);
        }
    }
    st->sect = s;
    st->sect_line = line;
    memset(st->key_line, 0, NKEYS * sizeof st->key_line[0]);
    if ((s == S_FRONTEND || s == S_BACKEND || s == S_POLICY) &&
        apply_defaults(st, s, section_base(st, s, st->idx)) != 0)
        return -1;
    return 0;
}

/* ---- the reader: sections, KEY = VALUE, comments ---- */

static int set_key(struct state *st, const char *name, const char *value)
{
    int line = st->lineno;
    if (st->sect == S_NONE)
        return fail(st, line, NULL, name,
                    "outside of any section (start with [global], [tls], "
                    "[frontend NAME], [backend NAME] or [policy NAME])");
    int k = key_index(st->sect, name);
    if (k < 0)
        return fail(st, line, st->label, name, "unknown key");
    if (st->key_line[k])
        return fail(st, line, st->label, name, "duplicate key (first set on line %d)",
                    st->key_line[k]);
    if (set_value(st, line, &keys[k], st->sect, section_base(st, st->sect, st->idx), value) != 0)
        return -1;
    st->key_line[k] = line;
    return 0;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* s[0..n) without the blanks around it, copied NUL-terminated to out. */
static char *trim_copy(const char *s, size_t n, char *out)
{
    while (n && is_blank(*s))
        s++, n--;
    while (n && is_blank(s[n - 1]))
        n--;
    memmove(out, s, n); /* out may be s itself, or before it */
    out[n] = '\0';
    return out;
}

/* One line (len bytes, no newline) with its comment removed: a header opens its section,
 * KEY = VALUE (or KEY: VALUE, as inih read them) sets a key. */
static int parse_line(struct state *st, const char *line, size_t len, char *buf)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return fail(st, st->lineno, NULL, NULL, "control character 0x%02x in line", c);
    }
    /* Comments: ';' or '#' at the start, or after a blank anywhere. */
    for (size_t i = 0; i < len; i++)
        if ((line[i] == ';' || line[i] == '#') && (i == 0 || is_blank(line[i - 1]))) {
            len = i;
            break;
        }
    char *text = trim_copy(line, len, buf);
    size_t n = strlen(text);
    if (n == 0)
        return 0;
    const char *label = st->sect == S_NONE ? NULL : st->label;
    if (text[0] == '[') {
        if (text[n - 1] != ']')
            return fail(st, st->lineno, NULL, NULL,
                        "syntax error: a section header is [NAME] alone on its line");
        return open_section(st, trim_copy(text + 1, n - 2, text));
    }
    size_t sep = strcspn(text, "=:");
    if (sep == n)
        return fail(st, st->lineno, label, NULL, "syntax error: expected KEY = VALUE");
    if (sep == 0)
        return fail(st, st->lineno, label, NULL, "syntax error: missing key before '%c'", text[0]);
    /* Both trimmed in place: the value first, it lies after the key. */
    char *value = trim_copy(text + sep + 1, n - sep - 1, text + sep + 1);
    return set_key(st, trim_copy(text, sep, text), value);
}

/* Every line of the text, without a length limit: a value's own limit is its field's
 * (a `backend` list holds a hundred names). */
static int parse_text(struct state *st)
{
    char *buf = NULL;
    size_t cap = 0;
    int rc = 0;
    while (rc == 0 && st->p < st->end) {
        const char *line = st->p;
        const char *nl = memchr(line, '\n', (size_t)(st->end - line));
        size_t len = (size_t)((nl ? nl : st->end) - line);
        st->p = nl ? nl + 1 : st->end;
        st->lineno++;
        if (len > 0 && line[len - 1] == '\r')
            len--;
        if (st->lineno == 1 && len >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) {
            line += 3; /* UTF-8 byte order mark */
            len -= 3;
        }
        if (len + 1 > cap) {
            char *b = realloc(buf, len + 1);
            if (!b) {
                rc = fail(st, st->lineno, NULL, NULL, "out of memory");
                break;
            }
            buf = b;
            cap = len + 1;
        }
        rc = parse_line(st, line, len, buf);
    }
    free(buf);
    return rc;
}

/* ---- whole-file checks ---- */

static bool same_listen(const gw_hostport *a, const gw_hostport *b)
{
    unsigned char x[16], y[16];
    if (a->port != b->port)
        return false;
    if (inet_pton(AF_INET, a->host, x) == 1 && inet_pton(AF_INET, b->host, y) == 1)
        return memcmp(x, y, 4) == 0;
    if (inet_pton(AF_INET6, a->host, x) == 1 && inet_pton(AF_INET6, b->host, y) == 1)
        return memcmp(x, y, 16) == 0;
    return strcasecmp(a->host, b->host) == 0;
}

/* SECURITY: the admin endpoint never shares a port with a frontend (a wildcard address
 * overlaps every address of its port). */
static int validate_admin(struct state *st)
{
    const gw_hostport *a = &st->cfg->admin_listen;
    /* HTTPS needs both halves: one alone would silently serve clear HTTP. */
    if (!st->cfg->admin_tls_cert[0] != !st->cfg->admin_tls_key[0]) {
        const char *set = st->cfg->admin_tls_cert[0] ? "admin_tls_cert" : "admin_tls_key";
        return fail(st, st->global_keys[key_index(S_GLOBAL, set)], "global", set,
                    "admin_tls_cert and admin_tls_key go together (set both, or neither)");
    }
    if (a->port == 0)
        return 0;
    for (int i = 0; i < st->cfg->n_frontends; i++) {
        const gw_hostport *l = &st->cfg->frontends[i].listen;
        bool wild = strcmp(a->host, "0.0.0.0") == 0 || strcmp(a->host, "::") == 0 ||
                    strcmp(l->host, "0.0.0.0") == 0 || strcmp(l->host, "::") == 0;
        if (same_listen(a, l) || (wild && a->port == l->port))
            return fail(st, st->global_keys[key_index(S_GLOBAL, "admin_listen")], "global",
                        "admin_listen", "%s:%u is the listen address of [frontend %s]", a->host,
                        a->port, st->cfg->frontends[i].name);
    }
    return 0;
}

/* frontend backend = a, b, c -> backend_list (p_name_list checked the syntax). */
static int resolve_backend_list(struct state *st, gw_frontend_conf *f, int line, const char *label)
{
    const gw_config *cfg = st->cfg;
    char list[sizeof f->backend];
    snprintf(list, sizeof list, "%s", f->backend);
    f->n_backends = 0;
    size_t most = 1;
    for (const char *c = list; *c; c++)
        most += *c == ',';
    free(f->backend_list);
    f->backend_list = malloc(most * sizeof *f->backend_list);
    if (!f->backend_list)
        return fail(st, line, label, "backend", "out of memory");
    for (char *save = NULL, *item = strtok_r(list, ",", &save); item;
         item = strtok_r(NULL, ",", &save)) {
        item += strspn(item, " \t");
        size_t n = strlen(item);
        while (n && (item[n - 1] == ' ' || item[n - 1] == '\t'))
            item[--n] = 0;
        int found = -1;
        for (int j = 0; j < cfg->n_backends; j++)
            if (strcmp(cfg->backends[j].name, item) == 0)
                found = j;
        if (found < 0)
            return fail(st, line, label, "backend", "no [backend %s] section", item);
        for (int j = 0; j < f->n_backends; j++)
            if (f->backend_list[j] == found)
                return fail(st, line, label, "backend", "%s named twice", item);
        f->backend_list[f->n_backends++] = found;
    }
    f->backend_index = f->backend_list[0];
    return 0;
}

/* The merge step: a [tls] key not set in a [frontend] section takes the [tls] value
 * (replace semantics: a set key, lists included, is the frontend's alone). Then the
 * combinations of the merged policy. */
static int merge_tls_policy(struct state *st, int i, const char *label)
{
    gw_frontend_conf *f = &st->cfg->frontends[i];
    for (size_t k = 0; k < NKEYS; k++)
        if ((keys[k].in & IN_TLS) && !st->fe_keys[i][k])
            memcpy(field(&keys[k], S_FRONTEND, (char *)f), field(&keys[k], S_TLS, (char *)st->cfg),
                   keys[k].size);
    if (f->mode == GW_FE_PLAIN)
        return 0;
    int line = st->fe_keys[i][key_index(S_FRONTEND, "client_cert")];
    if (f->client_cert != GW_CERT_NONE && !f->client_ca[0])
        return fail(st, line ? line : st->tls_keys[key_index(S_TLS, "client_cert")], label,
                    "client_cert", "needs client_ca (the trust anchors for client certificates)");
    line = st->fe_keys[i][key_index(S_FRONTEND, "client_cert_user")];
    if (f->client_cert_user && f->client_cert == GW_CERT_NONE)
        return fail(st, line ? line : st->tls_keys[key_index(S_TLS, "client_cert_user")], label,
                    "client_cert_user", "needs client_cert = optional or required");
    return 0;
}

/* pasv_shared_port: outside every passive range and listen port; frontends naming the same
 * port share its listener, so they must listen on the same host. */
static int validate_shared_port(struct state *st, int i, int line, const char *label)
{
    const gw_config *cfg = st->cfg;
    const gw_frontend_conf *f = &cfg->frontends[i];
    int port = f->pasv_shared_port;
    if (port < 0)
        return 0;
    for (int j = 0; j < cfg->n_frontends; j++) {
        const gw_frontend_conf *o = &cfg->frontends[j];
        if (o->listen.port == port)
            return fail(st, line, label, "pasv_shared_port",
                        "%d is the listen port of [frontend %s]", port, o->name);
        if (o->pasv_port_min && port >= o->pasv_port_min && port <= o->pasv_port_max)
            return fail(st, line, label, "pasv_shared_port",
                        "%d is inside pasv_ports %u-%u of [frontend %s]", port, o->pasv_port_min,
                        o->pasv_port_max, o->name);
        if (j != i && o->pasv_shared_port == port && strcmp(o->listen.host, f->listen.host) != 0)
            return fail(st, line, label, "pasv_shared_port",
                        "%d is shared with [frontend %s], which listens on another host", port,
                        o->name);
        /* One acceptor reads the port's connections before any frontend is known: either
         * all expect a PROXY header (the same versions, from the same balancers) or none. */
        if (j != i && o->pasv_shared_port == port &&
            (f->proxy_protocol_data != o->proxy_protocol_data ||
             (f->proxy_protocol_data &&
              (f->proxy_protocol != o->proxy_protocol ||
               strcmp(f->proxy_protocol_from, o->proxy_protocol_from) != 0))))
            return fail(st, line, label, "pasv_shared_port",
                        "%d is shared with [frontend %s], whose proxy_protocol_data (or "
                        "proxy_protocol, proxy_protocol_from) differs",
                        port, o->name);
    }
    return 0;
}

/* auth = ldap: the URIs, and either a DN template (direct bind) or a service account with
 * a search base (search-then-bind). The password and CA files are read by the generation. */
static int validate_ldap(struct state *st, int i, const char *label)
{
    gw_frontend_conf *f = &st->cfg->frontends[i];
    const int *kl = st->fe_keys[i];
#define LINE(key) kl[key_index(S_FRONTEND, key)]
    if (f->auth != GW_AUTH_LDAP) {
        static const char *const only[] = {"ldap_uri", "ldap_bind_dn", "ldap_user_dn", "ldap_base"};
        for (size_t j = 0; j < sizeof only / sizeof only[0]; j++)
            if (LINE(only[j]))
                return fail(st, LINE(only[j]), label, only[j], "set without auth = ldap");
        return 0;
    }
    int n;
    bool ldaps;
    char why[160];
    if (!f->ldap_uri[0])
        return fail(st, LINE("auth"), label, "auth", "ldap needs ldap_uri");
    if (gw_ldap_uris_check(f->ldap_uri, NULL, 0, &n, &ldaps, why, sizeof why) != 0)
        return fail(st, LINE("ldap_uri"), label, "ldap_uri", "%s", why);
    if (f->ldap_starttls && ldaps)
        return fail(st, LINE("ldap_starttls"), label, "ldap_starttls",
                    "StartTLS is for ldap:// URIs (ldaps:// is TLS from the start)");
    if (f->route_user)
        return fail(st, LINE("route_user"), label, "route_user",
                    "not with auth = ldap (ldap_backend_attr names a user's backend)");
    if (f->ldap_bind_dn[0]) {
        if (!f->ldap_bind_password_file[0])
            return fail(st, LINE("ldap_bind_dn"), label, "ldap_bind_dn",
                        "needs ldap_bind_password_file (the service account's password)");
        if (!f->ldap_base[0])
            return fail(st, LINE("ldap_bind_dn"), label, "ldap_bind_dn",
                        "needs ldap_base (where search-then-bind looks for the user)");
        if (f->ldap_user_dn[0])
            return fail(st, LINE("ldap_user_dn"), label, "ldap_user_dn",
                        "not with ldap_bind_dn (search-then-bind finds the user's DN)");
    } else {
        if (!f->ldap_user_dn[0])
            return fail(st, LINE("auth"), label, "auth",
                        "ldap needs ldap_user_dn (direct bind) or ldap_bind_dn and ldap_base "
                        "(search-then-bind)");
        if (f->ldap_bind_password_file[0])
            return fail(st, LINE("ldap_bind_password_file"), label, "ldap_bind_password_file",
                        "set without ldap_bind_dn");
        if (f->ldap_base[0])
            return fail(st, LINE("ldap_base"), label, "ldap_base",
                        "set without ldap_bind_dn (direct bind searches nothing)");
    }
#undef LINE
    return 0;
}

/* auth, auth_file, user_map and policy (the users file and the map are read by the
 * generation: -t and start refuse one that is missing or unparsable, a users file or a
 * password file readable by others). */
static int validate_auth(struct state *st, int i, const char *label)
{
    gw_frontend_conf *f = &st->cfg->frontends[i];
    const int *kl = st->fe_keys[i];
    int k_auth = key_index(S_FRONTEND, "auth"), k_file = key_index(S_FRONTEND, "auth_file");
    int k_policy = key_index(S_FRONTEND, "policy");
    if (f->auth == GW_AUTH_FILE && !f->auth_file[0])
        return fail(st, kl[k_auth], label, "auth", "file needs auth_file (the users file)");
    if (f->auth != GW_AUTH_FILE && f->auth_file[0])
        return fail(st, kl[k_file], label, "auth_file", "set without auth = file");
    if (f->auth != GW_AUTH_BACKEND && f->route_user)
        return fail(st, kl[key_index(S_FRONTEND, "route_user")], label, "route_user",
                    "not with auth = file, pam or ldap (the gateway's login names no backend: "
                    "user_map or the users file's backend= do)");
    if (validate_ldap(st, i, label) != 0)
        return -1;
    if (f->user_map[0] && f->route_user)
        return fail(st, kl[key_index(S_FRONTEND, "user_map")], label, "user_map",
                    "not with route_user (the map names a user's backend)");
    f->policy_index = -1;
    if (f->policy[0]) {
        f->policy_index = gw_config_policy(st->cfg, f->policy);
        if (f->policy_index < 0)
            return fail(st, kl[k_policy], label, "policy", "no [policy %s] section", f->policy);
    }
    return 0;
}

static int validate(struct state *st)
{
    gw_config *cfg = st->cfg;
    char label[80];
    int k_backend = key_index(S_FRONTEND, "backend");
    int k_listen = key_index(S_FRONTEND, "listen");
    int k_pasv = key_index(S_FRONTEND, "pasv_ports");
    int k_shared = key_index(S_FRONTEND, "pasv_shared_port");

    if (cfg->n_frontends == 0)
        return fail(st, 0, NULL, NULL, "no [frontend NAME] section: nothing to listen on");
    if (validate_admin(st) != 0)
        return -1;
    if (cfg->n_backends == 0)
        return fail(st, 0, NULL, NULL, "no [backend NAME] section: nowhere to forward to");

    for (int i = 0; i < cfg->n_frontends; i++) {
        gw_frontend_conf *f = &cfg->frontends[i];
        const int *kl = st->fe_keys[i];
        snprintf(label, sizeof label, "frontend %s", f->name);
        if (!f->backend[0]) {
            if (cfg->n_backends != 1)
                return fail(st, st->fe_line[i], label, "backend",
                            "missing (required when there is more than one [backend])");
            snprintf(f->backend, sizeof f->backend, "%s", cfg->backends[0].name);
        }
        if (resolve_backend_list(st, f, kl[k_backend], label) != 0)
            return -1;
        if (merge_tls_policy(st, i, label) != 0)
            return -1;
        if (validate_shared_port(st, i, kl[k_shared] ? kl[k_shared] : st->fe_line[i], label) != 0)
            return -1;
        if (validate_auth(st, i, label) != 0)
            return -1;

        for (int j = 0; j < i; j++) {
            const gw_frontend_conf *o = &cfg->frontends[j];
            /* Virtual hosts: one address, told apart by server_name (SNI or HOST). */
            if (same_listen(&f->listen, &o->listen) && (!f->server_name[0] && !o->server_name[0]))
                return fail(st, kl[k_listen], label, "listen",
                            "same address as [frontend %s] (line %d): set server_name on all "
                            "but one of them",
                            o->name, st->fe_keys[j][k_listen]);
            if (same_listen(&f->listen, &o->listen) &&
                (f->proxy_protocol != o->proxy_protocol ||
                 strcmp(f->proxy_protocol_from, o->proxy_protocol_from) != 0))
                return fail(st, kl[k_listen], label, "proxy_protocol",
                            "differs from [frontend %s] on the same address (the header is read "
                            "before the frontend is known)",
                            o->name);
            if (same_listen(&f->listen, &o->listen) && f->mode != o->mode)
                return fail(st, kl[k_listen], label, "listen",
                            "same address as [frontend %s] (line %d) with another mode", o->name,
                            st->fe_keys[j][k_listen]);
            /* One pool per range: ranges are either identical (shared) or disjoint. */
            bool same =
                f->pasv_port_min == o->pasv_port_min && f->pasv_port_max == o->pasv_port_max;
            bool overlap = f->pasv_port_min && o->pasv_port_min &&
                           f->pasv_port_min <= o->pasv_port_max &&
                           o->pasv_port_min <= f->pasv_port_max;
            if (overlap && !same)
                return fail(st, kl[k_pasv] ? kl[k_pasv] : st->fe_line[i], label, "pasv_ports",
                            "overlaps %u-%u of [frontend %s] (use the same range to share a "
                            "pool, or disjoint ranges)",
                            o->pasv_port_min, o->pasv_port_max, o->name);
        }
    }
    return 0;
}

/* ---- public API ---- */

static void keep_lines(struct state *st)
{
    struct gw_config_lines *l = calloc(1, sizeof *l);
    if (!l)
        return; /* messages then say line 0 */
    snprintf(l->origin, sizeof l->origin, "%s", st->origin);
    memcpy(l->global, st->global_keys, sizeof l->global);
    memcpy(l->tls, st->tls_keys, sizeof l->tls);
    l->global_line = st->global_line;
    l->tls_line = st->tls_line;
    l->fe_line = st->fe_line;
    l->be_line = st->be_line;
    l->fe_keys = st->fe_keys;
    l->be_keys = st->be_keys;
    l->pol_line = st->pol_line;
    l->pol_keys = st->pol_keys;
    st->fe_line = st->be_line = st->pol_line = NULL;
    st->fe_keys = st->be_keys = st->pol_keys = NULL;
    st->cfg->lines = l;
}

static void free_lines(struct gw_config_lines *l)
{
    if (!l)
        return;
    free(l->fe_line);
    free(l->be_line);
    free(l->fe_keys);
    free(l->be_keys);
    free(l->pol_line);
    free(l->pol_keys);
    free(l);
}

void gw_config_where(const gw_config *cfg, const char *section, int index, const char *key,
                     char *out, size_t cap)
{
    const struct gw_config_lines *l = cfg->lines;
    enum sect s = strcmp(section, "global") == 0     ? S_GLOBAL
                  : strcmp(section, "tls") == 0      ? S_TLS
                  : strcmp(section, "frontend") == 0 ? S_FRONTEND
                  : strcmp(section, "policy") == 0   ? S_POLICY
                                                     : S_BACKEND;
    bool fe = s == S_FRONTEND, pol = s == S_POLICY;
    const char *name = fe               ? cfg->frontends[index].name
                       : s == S_BACKEND ? cfg->backends[index].name
                       : pol            ? cfg->policies[index].name
                                        : NULL;
    int k = key ? key_index(s, key) : -1, line = 0;
    if (l) {
        const int *kl = s == S_GLOBAL ? l->global
                        : s == S_TLS  ? l->tls
                        : fe          ? l->fe_keys[index]
                        : pol         ? l->pol_keys[index]
                                      : l->be_keys[index];
        line = k >= 0 ? kl[k] : 0;
        int tk = fe && key ? key_index(S_TLS, key) : -1;
        if (!line && tk >= 0 && l->tls[tk]) {
            line = l->tls[tk]; /* inherited from [tls] */
            s = S_TLS;
            name = NULL;
        }
        if (!line)
            line = s == S_GLOBAL ? l->global_line
                   : s == S_TLS  ? l->tls_line
                   : fe          ? l->fe_line[index]
                   : pol         ? l->pol_line[index]
                                 : l->be_line[index];
    }
    const char *kind = s == S_GLOBAL ? "global"
                       : s == S_TLS  ? "tls"
                       : fe          ? "frontend"
                       : pol         ? "policy"
                                     : "backend";
    snprintf(out, cap, "%s:%d: [%s%s%s]%s%s", l ? l->origin : "<config>", line, kind,
             name ? " " : "", name ? name : "", key ? " " : "", key ? key : "");
}

int gw_config_parse(const char *text, size_t len, const char *origin, gw_config *cfg, char *err,
                    size_t errcap)
{
    struct state *st = calloc(1, sizeof *st);
    int rc;

    if (err && errcap)
        err[0] = '\0';
    memset(cfg, 0, sizeof *cfg);
    if (!st) {
        if (err && errcap)
            snprintf(err, errcap, "%s:0: out of memory", origin ? origin : "<config>");
        return -1;
    }
    st->cfg = cfg;
    st->origin = origin ? origin : "<config>";
    st->err = err;
    st->errcap = errcap;
    st->p = text ? text : "";
    st->end = text ? text + len : st->p;
    st->sect = S_NONE;

    rc = apply_defaults(st, S_GLOBAL, (char *)cfg);
    if (rc == 0)
        rc = apply_defaults(st, S_TLS, (char *)cfg);
    if (rc == 0)
        rc = parse_text(st);
    if (rc == 0)
        rc = close_section(st);
    if (rc == 0)
        rc = validate(st);
    if (rc != 0)
        gw_config_free(cfg);
    else
        keep_lines(st); /* the arrays move to cfg->lines (or are freed: out of memory) */
    free(st->fe_line);
    free(st->be_line);
    free(st->fe_keys);
    free(st->be_keys);
    free(st->pol_line);
    free(st->pol_keys);
    free(st);
    return rc;
}

void gw_config_free(gw_config *cfg)
{
    if (!cfg)
        return;
    for (int i = 0; cfg->frontends && i < cfg->n_frontends; i++)
        free(cfg->frontends[i].backend_list);
    free(cfg->frontends);
    free(cfg->backends);
    free(cfg->policies);
    free_lines(cfg->lines);
    cfg->frontends = NULL;
    cfg->backends = NULL;
    cfg->policies = NULL;
    cfg->lines = NULL;
    cfg->n_frontends = cfg->n_backends = cfg->n_policies = 0;
}

int gw_config_copy(gw_config *dst, const gw_config *src)
{
    *dst = *src;
    dst->frontends = NULL;
    dst->backends = NULL;
    dst->lines = NULL;
    dst->policies = NULL;
    dst->n_frontends = dst->n_backends = dst->n_policies = 0;
    if (src->n_policies > 0) {
        dst->policies = malloc((size_t)src->n_policies * sizeof *dst->policies);
        if (!dst->policies)
            return -1;
        memcpy(dst->policies, src->policies, (size_t)src->n_policies * sizeof *dst->policies);
        dst->n_policies = src->n_policies;
    }
    if (src->n_backends > 0) {
        dst->backends = malloc((size_t)src->n_backends * sizeof *dst->backends);
        if (!dst->backends)
            goto nomem;
        memcpy(dst->backends, src->backends, (size_t)src->n_backends * sizeof *dst->backends);
        dst->n_backends = src->n_backends;
    }
    if (src->n_frontends > 0) {
        dst->frontends = calloc((size_t)src->n_frontends, sizeof *dst->frontends);
        if (!dst->frontends)
            goto nomem;
        for (int i = 0; i < src->n_frontends; i++) {
            const gw_frontend_conf *f = &src->frontends[i];
            dst->frontends[i] = *f;
            dst->frontends[i].backend_list = NULL;
            dst->n_frontends = i + 1;
            if (f->n_backends > 0 && f->backend_list) {
                size_t sz = (size_t)f->n_backends * sizeof *f->backend_list;
                dst->frontends[i].backend_list = malloc(sz);
                if (!dst->frontends[i].backend_list)
                    goto nomem;
                memcpy(dst->frontends[i].backend_list, f->backend_list, sz);
            }
        }
    }
    return 0;
nomem:
    gw_config_free(dst);
    return -1;
}

int gw_config_load_file(const char *path, gw_config *cfg, char *err, size_t errcap)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0;
    int rc = -1;

    memset(cfg, 0, sizeof *cfg);
    if (!f)
        goto io_error;
    buf = malloc(MAX_FILE + 1);
    if (!buf) {
        errno = ENOMEM;
        goto io_error;
    }
    len = fread(buf, 1, MAX_FILE + 1, f);
    if (ferror(f)) {
        errno = errno ? errno : EIO;
        goto io_error;
    }
    if (len > MAX_FILE) {
        if (err && errcap)
            snprintf(err, errcap, "%s:0: file too large (more than %d bytes)", path, MAX_FILE);
        goto out;
    }
    rc = gw_config_parse(buf, len, path, cfg, err, errcap);
    goto out;
io_error:
    if (err && errcap)
        snprintf(err, errcap, "%s:0: cannot read: %s", path, strerror(errno));
out:
    free(buf);
    if (f)
        fclose(f);
    return rc;
}

/* DNS name: labels of [A-Za-z0-9_-] separated by dots; all-numeric means IPv4. */
static bool valid_hostname(const char *h)
{
    size_t n = strlen(h), label = 0;
    bool numeric = true;
    if (n == 0 || n > 253)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = h[i];
        if (c == '.') {
            if (label == 0)
                return false;
            label = 0;
            continue;
        }
        if (!is_name_char(c))
            return false;
        if (c < '0' || c > '9')
            numeric = false;
        if (++label > 63)
            return false;
    }
    if (label == 0 && n > 1 && h[n - 1] == '.')
        label = 1; /* trailing dot: FQDN */
    if (label == 0)
        return false;
    if (numeric) {
        unsigned char a[4];
        return inet_pton(AF_INET, h, a) == 1;
    }
    return true;
}

int gw_parse_hostport(const char *s, gw_hostport *hp)
{
    const char *host, *colon;
    size_t hlen;
    long port;

    memset(hp, 0, sizeof *hp);
    if (!s)
        return -1;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return -1;
        host = s + 1;
        hlen = (size_t)(close - host);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || memchr(s, ':', (size_t)(colon - s)))
            return -1; /* v6 needs brackets */
        host = s;
        hlen = (size_t)(colon - s);
    }
    if (hlen == 0 || hlen >= sizeof hp->host)
        return -1;
    if (strlen(colon + 1) > 5 || parse_long(colon + 1, &port) < 0 || port < 1 || port > 65535)
        return -1;
    memcpy(hp->host, host, hlen);
    hp->host[hlen] = '\0';
    unsigned char a6[16];
    if (s[0] == '[' ? inet_pton(AF_INET6, hp->host, a6) != 1 : !valid_hostname(hp->host)) {
        memset(hp, 0, sizeof *hp);
        return -1;
    }
    hp->port = (uint16_t)port;
    return 0;
}

/* ---- questions about a loaded configuration ---- */

const char *gw_tls_version_name(enum gw_tls_version v)
{
    for (const struct word *w = w_tls_back; w->name; w++)
        if (w->value == (int)v)
            return w->name;
    return "?";
}

int gw_config_policy(const gw_config *cfg, const char *name)
{
    for (int i = 0; i < cfg->n_policies; i++)
        if (strcmp(cfg->policies[i].name, name) == 0)
            return i;
    return -1;
}

const char *gw_config_key(size_t i, const char **section)
{
    static const char *const names[] = {[S_GLOBAL] = "global",
                                        [S_TLS] = "tls",
                                        [S_FRONTEND] = "frontend",
                                        [S_BACKEND] = "backend",
                                        [S_POLICY] = "policy"};
    for (size_t k = 0; k < NKEYS; k++)
        for (int s = 0; s < N_SECT; s++)
            if (key_in(&keys[k], (enum sect)s) && i-- == 0) {
                if (section)
                    *section = names[s];
                return keys[k].name;
            }
    return NULL;
}
