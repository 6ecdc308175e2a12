/* auth = ldap with libldap's synchronous API, run in libuv's thread pool (auth_ldap.h).
 * Each check opens its own connection (a handle is not shared between threads), with its
 * own TLS context (LDAP_OPT_X_TLS_NEWCTX: ldap_ca_file, certificate and name demanded),
 * LDAP_OPT_NETWORK_TIMEOUT for the connect and LDAP_OPT_TIMEOUT for every operation. */
#include "auth_ldap.h"

#include <errno.h>
#include <fcntl.h>
#include <ldap.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ldap_text.h"
#include "textfile.h"

#define CACHE_SLOTS 64

struct cache_entry {
    bool used, ok;
    uint64_t expires_ms;
    unsigned char digest[32];
    gw_user_entry who; /* ok: what the check found */
};

struct gw_ldap {
    const gw_frontend_conf *fc;
    char uris[GW_PATH_MAX]; /* ldap_initialize's form: blank-separated */
    char *bind_pw;          /* search-then-bind: the service account's (heap, wiped) */
    unsigned char salt[16];
    struct cache_entry cache[CACHE_SLOTS];
};

/* The service account's password: one line, the file private to the gateway. */
static int read_password(const char *path, char **out, char *err, size_t cap)
{
    *out = gw_textfile_secret_line(path, 512, err, cap);
    return *out ? 0 : -1;
}

/* ldap_ca_file: at least one PEM certificate (libldap would fail only at the first login). */
static int check_ca(const char *path, char *err, size_t cap)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(err, cap, "%s: %s", path, strerror(errno));
        return -1;
    }
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!x) {
        snprintf(err, cap, "%s: no PEM certificate", path);
        return -1;
    }
    X509_free(x);
    return 0;
}

int gw_ldap_open(const gw_frontend_conf *fc, gw_ldap **out, char *err, size_t cap)
{
    *out = NULL;
    gw_ldap *l = calloc(1, sizeof *l);
    if (!l) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    l->fc = fc;
    int n;
    bool ldaps;
    if (gw_ldap_uris_check(fc->ldap_uri, l->uris, sizeof l->uris, &n, &ldaps, err, cap) != 0 ||
        (fc->ldap_ca_file[0] && check_ca(fc->ldap_ca_file, err, cap) != 0) ||
        (fc->ldap_bind_dn[0] &&
         read_password(fc->ldap_bind_password_file, &l->bind_pw, err, cap))) {
        gw_ldap_close(l);
        return -1;
    }
    if (RAND_bytes(l->salt, sizeof l->salt) != 1) {
        snprintf(err, cap, "no random bytes for the cache's salt");
        gw_ldap_close(l);
        return -1;
    }
    /* libldap's global state is set up here, on one thread, before any check runs. */
    int v;
    ldap_get_option(NULL, LDAP_OPT_PROTOCOL_VERSION, &v);
    *out = l;
    return 0;
}

void gw_ldap_close(gw_ldap *l)
{
    if (!l)
        return;
    if (l->bind_pw) {
        explicit_bzero(l->bind_pw, strlen(l->bind_pw));
        free(l->bind_pw);
    }
    explicit_bzero(l, sizeof *l);
    free(l);
}

/* ---- the cache (the owning worker's loop only) ---- */

static void digest(const gw_ldap *l, gw_ldap_check *c)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned len = 0;
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(md, l->salt, sizeof l->salt) != 1 ||
        EVP_DigestUpdate(md, c->name, strlen(c->name) + 1) != 1 ||
        EVP_DigestUpdate(md, c->password, strlen(c->password)) != 1 ||
        EVP_DigestFinal_ex(md, c->digest, &len) != 1)
        memset(c->digest, 0, sizeof c->digest); /* all zero: never stored, never found */
    EVP_MD_CTX_free(md);
}

static bool zero(const unsigned char *d)
{
    unsigned char acc = 0;
    for (int i = 0; i < 32; i++)
        acc |= d[i];
    return acc == 0;
}

bool gw_ldap_lookup(gw_ldap *l, gw_ldap_check *c, uint64_t now_ms)
{
    c->cached = false;
    digest(l, c);
    if (l->fc->auth_cache_ttl == 0 || zero(c->digest))
        return false;
    for (int i = 0; i < CACHE_SLOTS; i++) {
        struct cache_entry *e = &l->cache[i];
        if (!e->used || memcmp(e->digest, c->digest, sizeof c->digest) != 0)
            continue;
        if (e->expires_ms <= now_ms) {
            e->used = false;
            return false;
        }
        c->cached = true;
        c->status = e->ok ? GW_LDAP_OK : GW_LDAP_DENIED;
        snprintf(c->reason, sizeof c->reason, "%s", e->ok ? "" : "cached_failure");
        if (e->ok)
            c->who = e->who;
        return true;
    }
    return false;
}

void gw_ldap_remember(gw_ldap *l, const gw_ldap_check *c, uint64_t now_ms)
{
    int ttl = l->fc->auth_cache_ttl;
    if (ttl == 0 || c->cached || c->status == GW_LDAP_UNAVAILABLE || zero(c->digest))
        return;
    bool ok = c->status == GW_LDAP_OK;
    if (!ok && ttl > GW_LDAP_NEGATIVE_TTL_S)
        ttl = GW_LDAP_NEGATIVE_TTL_S;
    /* the same key, else a free or expired slot, else the one expiring first */
    struct cache_entry *slot = NULL;
    for (int i = 0; i < CACHE_SLOTS && !slot; i++)
        if (l->cache[i].used && memcmp(l->cache[i].digest, c->digest, sizeof c->digest) == 0)
            slot = &l->cache[i];
    for (int i = 0; i < CACHE_SLOTS && !slot; i++)
        if (!l->cache[i].used || l->cache[i].expires_ms <= now_ms)
            slot = &l->cache[i];
    for (int i = 0; i < CACHE_SLOTS; i++)
        if (!slot || l->cache[i].expires_ms < slot->expires_ms)
            slot = &l->cache[i];
    slot->used = true;
    slot->ok = ok;
    slot->expires_ms = now_ms + (uint64_t)ttl * 1000;
    memcpy(slot->digest, c->digest, sizeof slot->digest);
    if (ok)
        slot->who = c->who;
    else
        memset(&slot->who, 0, sizeof slot->who);
}

/* ---- the check (thread pool) ---- */

static void result(gw_ldap_check *c, enum gw_ldap_status st, const char *reason)
{
    c->status = st;
    snprintf(c->reason, sizeof c->reason, "%s", reason);
}

/* An LDAP failure that is not the user's: the server is unreachable, slow, or refuses the
 * service account. The message (libldap's or the server's) kept for the log, sanitised. */
static void unavailable(gw_ldap_check *c, LDAP *ld, int rc, const char *during)
{
    const char *why = rc == LDAP_SERVER_DOWN                      ? "server_down"
                      : rc == LDAP_TIMEOUT                        ? "timeout"
                      : rc == LDAP_CONNECT_ERROR                  ? "connect_error"
                      : rc == LDAP_BUSY || rc == LDAP_UNAVAILABLE ? "server_busy"
                      : rc == LDAP_INVALID_CREDENTIALS            ? "service_bind_refused"
                                                                  : "ldap_error";
    char reason[48];
    snprintf(reason, sizeof reason, "%s", why);
    result(c, GW_LDAP_UNAVAILABLE, reason);
    char *diag = NULL;
    if (ld)
        ldap_get_option(ld, LDAP_OPT_DIAGNOSTIC_MESSAGE, &diag);
    snprintf(c->detail, sizeof c->detail, "%s: %s%s%s", during, ldap_err2string(rc),
             diag && diag[0] ? ": " : "", diag ? diag : "");
    for (char *p = c->detail; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f || *p == '"' || *p == '\\')
            *p = '?';
    ldap_memfree(diag);
}

static int simple_bind(LDAP *ld, const char *dn, const char *pw)
{
    struct berval cred = {.bv_len = strlen(pw), .bv_val = (char *)pw};
    return ldap_sasl_bind_s(ld, dn, LDAP_SASL_SIMPLE, &cred, NULL, NULL, NULL);
}

static LDAP *connect_ldap(const gw_ldap *l, gw_ldap_check *c)
{
    const gw_frontend_conf *fc = l->fc;
    LDAP *ld = NULL;
    int rc = ldap_initialize(&ld, l->uris);
    if (rc != LDAP_SUCCESS || !ld) {
        unavailable(c, NULL, rc, "initialize");
        return NULL;
    }
    int v3 = LDAP_VERSION3, demand = LDAP_OPT_X_TLS_DEMAND, zero_ = 0;
    int tls12 = LDAP_OPT_X_TLS_PROTOCOL_TLS1_2;
    struct timeval tv = {.tv_sec = fc->ldap_timeout};
    bool ok = ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &v3) == LDAP_OPT_SUCCESS &&
              ldap_set_option(ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF) == LDAP_OPT_SUCCESS &&
              ldap_set_option(ld, LDAP_OPT_NETWORK_TIMEOUT, &tv) == LDAP_OPT_SUCCESS &&
              ldap_set_option(ld, LDAP_OPT_TIMEOUT, &tv) == LDAP_OPT_SUCCESS &&
              ldap_set_option(ld, LDAP_OPT_X_TLS_REQUIRE_CERT, &demand) == LDAP_OPT_SUCCESS &&
              ldap_set_option(ld, LDAP_OPT_X_TLS_PROTOCOL_MIN, &tls12) == LDAP_OPT_SUCCESS &&
              (!fc->ldap_ca_file[0] || ldap_set_option(ld, LDAP_OPT_X_TLS_CACERTFILE,
                                                       fc->ldap_ca_file) == LDAP_OPT_SUCCESS) &&
              ldap_set_option(ld, LDAP_OPT_X_TLS_NEWCTX, &zero_) == LDAP_OPT_SUCCESS;
    if (!ok) {
        unavailable(c, ld, LDAP_OTHER, "options");
        ldap_unbind_ext_s(ld, NULL, NULL);
        return NULL;
    }
    if (fc->ldap_starttls && (rc = ldap_start_tls_s(ld, NULL, NULL)) != LDAP_SUCCESS) {
        unavailable(c, ld, rc, "starttls");
        ldap_unbind_ext_s(ld, NULL, NULL);
        return NULL;
    }
    return ld;
}

/* The user's groups and backend from its entry's attributes. */
static void read_attributes(const gw_ldap *l, LDAP *ld, LDAPMessage *entry, gw_ldap_check *c)
{
    const gw_frontend_conf *fc = l->fc;
    struct berval **vals =
        fc->ldap_group_attr[0] ? ldap_get_values_len(ld, entry, fc->ldap_group_attr) : NULL;
    size_t used = 0;
    for (int i = 0; vals && vals[i]; i++) {
        char g[GW_USER_NAME_MAX];
        if (gw_ldap_group_name(vals[i]->bv_val, vals[i]->bv_len, g, sizeof g) != 0)
            continue; /* not a name a rule could match */
        size_t n = strlen(g);
        if (used + (used ? 1 : 0) + n >= sizeof c->who.groups)
            break;
        if (used)
            c->who.groups[used++] = ' ';
        memcpy(c->who.groups + used, g, n + 1);
        used += n;
    }
    ldap_value_free_len(vals);
    if (!fc->ldap_backend_attr[0])
        return;
    vals = ldap_get_values_len(ld, entry, fc->ldap_backend_attr);
    if (vals && vals[0]) {
        size_t n = vals[0]->bv_len;
        if (n >= sizeof c->who.backend || memchr(vals[0]->bv_val, 0, n))
            n = sizeof c->who.backend - 1; /* cut: matches no backend (refused by the caller) */
        memcpy(c->who.backend, vals[0]->bv_val, n);
        c->who.backend[n] = 0;
    }
    ldap_value_free_len(vals);
}

/* The entry at dn or found by the filter (one: 0 ok, 1 none or several, -1 LDAP failed). */
static int find_entry(const gw_ldap *l, LDAP *ld, const char *base, int scope, const char *filter,
                      gw_ldap_check *c, char *dn, size_t dncap)
{
    const gw_frontend_conf *fc = l->fc;
    char *attrs[3] = {NULL, NULL, NULL};
    int na = 0;
    if (fc->ldap_group_attr[0])
        attrs[na++] = (char *)fc->ldap_group_attr;
    if (fc->ldap_backend_attr[0])
        attrs[na++] = (char *)fc->ldap_backend_attr;
    if (na == 0)
        attrs[na++] = (char *)LDAP_NO_ATTRS;
    struct timeval tv = {.tv_sec = fc->ldap_timeout};
    LDAPMessage *res = NULL;
    int rc = ldap_search_ext_s(ld, base, scope, filter, attrs, 0, NULL, NULL, &tv, 2, &res);
    if (rc == LDAP_SIZELIMIT_EXCEEDED) {
        ldap_msgfree(res);
        result(c, GW_LDAP_DENIED, "ambiguous_user");
        return 1;
    }
    if (rc == LDAP_NO_SUCH_OBJECT) {
        ldap_msgfree(res);
        result(c, GW_LDAP_DENIED, "unknown_user");
        return 1;
    }
    if (rc != LDAP_SUCCESS) {
        unavailable(c, ld, rc, "search");
        ldap_msgfree(res);
        return -1;
    }
    int n = ldap_count_entries(ld, res);
    if (n != 1) {
        ldap_msgfree(res);
        result(c, GW_LDAP_DENIED, n == 0 ? "unknown_user" : "ambiguous_user");
        return 1;
    }
    LDAPMessage *entry = ldap_first_entry(ld, res);
    char *found = ldap_get_dn(ld, entry);
    if (dn && (!found || strlen(found) >= dncap)) {
        ldap_memfree(found);
        ldap_msgfree(res);
        result(c, GW_LDAP_DENIED, "unknown_user");
        return 1;
    }
    if (dn)
        snprintf(dn, dncap, "%s", found);
    ldap_memfree(found);
    read_attributes(l, ld, entry, c);
    ldap_msgfree(res);
    return 0;
}

void gw_ldap_run(const gw_ldap *l, gw_ldap_check *c)
{
    const gw_frontend_conf *fc = l->fc;
    memset(&c->who, 0, sizeof c->who);
    c->detail[0] = 0;
    /* An empty password would be an unauthenticated bind, which servers accept (RFC 4513
     * 5.1.2): never a login. */
    if (!c->password[0]) {
        result(c, GW_LDAP_DENIED, "empty_password");
        return;
    }
    if (!c->name[0]) {
        result(c, GW_LDAP_DENIED, "unknown_user");
        return;
    }
    char esc[3 * GW_USER_NAME_MAX + 1], dn[1024];
    LDAP *ld = connect_ldap(l, c);
    if (!ld)
        return;
    int rc;
    if (fc->ldap_bind_dn[0]) { /* search-then-bind: the service account finds the DN */
        char filter[GW_PATH_MAX + 3 * GW_USER_NAME_MAX];
        if ((rc = simple_bind(ld, fc->ldap_bind_dn, l->bind_pw)) != LDAP_SUCCESS) {
            unavailable(c, ld, rc, "service bind");
            goto out;
        }
        if (gw_ldap_escape_filter(c->name, esc, sizeof esc) != 0 ||
            gw_ldap_expand(fc->ldap_filter, esc, filter, sizeof filter) != 0) {
            result(c, GW_LDAP_DENIED, "unknown_user");
            goto out;
        }
        if (find_entry(l, ld, fc->ldap_base, LDAP_SCOPE_SUBTREE, filter, c, dn, sizeof dn) != 0)
            goto out;
        if ((rc = simple_bind(ld, dn, c->password)) != LDAP_SUCCESS) {
            if (rc == LDAP_INVALID_CREDENTIALS)
                result(c, GW_LDAP_DENIED, "bad_password");
            else
                unavailable(c, ld, rc, "bind");
            goto out;
        }
    } else { /* direct bind at the template's DN, then the entry as the user reads it */
        if (gw_ldap_escape_dn(c->name, esc, sizeof esc) != 0 ||
            gw_ldap_expand(fc->ldap_user_dn, esc, dn, sizeof dn) != 0) {
            result(c, GW_LDAP_DENIED, "unknown_user");
            goto out;
        }
        if ((rc = simple_bind(ld, dn, c->password)) != LDAP_SUCCESS) {
            /* the server does not say whether the DN exists (RFC 4513 6.1) */
            if (rc == LDAP_INVALID_CREDENTIALS)
                result(c, GW_LDAP_DENIED, "invalid_credentials");
            else
                unavailable(c, ld, rc, "bind");
            goto out;
        }
        /* Bound, but the entry cannot be read: its groups (a read-only policy's, say) are
         * unknown, so no login (a directory's ACL to fix, not the user's failure). */
        int found = find_entry(l, ld, dn, LDAP_SCOPE_BASE, "(objectClass=*)", c, NULL, 0);
        if (found > 0) {
            result(c, GW_LDAP_UNAVAILABLE, "entry_unreadable");
            snprintf(c->detail, sizeof c->detail,
                     "the user's own entry is not readable after its bind");
        }
        if (found != 0)
            goto out;
    }
    snprintf(c->who.name, sizeof c->who.name, "%s", c->name);
    result(c, GW_LDAP_OK, "");
out:
    ldap_unbind_ext_s(ld, NULL, NULL);
}
