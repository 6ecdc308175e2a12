/* OpenSSL contexts and the in-memory BIO engine. Nothing above this file sees an OpenSSL error
 * code: failures become GW_TLS_ERROR plus a text from gw_tls_last_error(). */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <pthread.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/core_names.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tls_hello.h"

struct gw_tls {
    SSL *ssl;
    BIO *rbio, *wbio; /* network -> SSL, SSL -> network */
    enum gw_tls_role role;
    bool handshake_done, close_notify_sent;
    uint8_t tag[GW_TLS_TAG_LEN];
    SSL_CTX *ctx0;        /* the context SSL_new took: its session cache holds TLS 1.2 IDs */
    SSL_SESSION *session; /* client control: newest session from the server, for data legs */
    char *out;            /* ciphertext written by OpenSSL, handed over whole to the socket */
    size_t out_len, out_cap;
    /* Ciphertext for OpenSSL to read: first what is kept from earlier reads (in, from
     * in_off), then the caller's buffer lent for one call (gw_tls_feed_lent). */
    char *in;
    size_t in_off, in_len, in_cap;
    const char *lent;
    size_t lent_len;
    char error[200];
};

static void set_error(gw_tls *t, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    char buf[120] = "";
    /* Without tls_verify the result is computed but ignored: it is not the error. */
    long v =
        SSL_get_verify_mode(t->ssl) & SSL_VERIFY_PEER ? SSL_get_verify_result(t->ssl) : X509_V_OK;
    if (v != X509_V_OK) /* a server's: the client certificate (client_cert) */
        snprintf(buf, sizeof buf, "%scertificate verify failed: %s",
                 SSL_is_server(t->ssl) ? "client " : "", X509_verify_cert_error_string(v));
    else if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    snprintf(t->error, sizeof t->error, "%s%s%s", what, *buf ? ": " : "", buf);
    ERR_clear_error();
}

static void ctx_error(char *err, size_t cap, const char *what, const char *path)
{
    unsigned long e = ERR_peek_last_error();
    char buf[120] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    snprintf(err, cap, "%s %s%s%s", what, path ? path : "", *buf ? ": " : "", buf);
    ERR_clear_error();
}

/* ---- TLS policy identity ----
 * SECURITY: every server context carries the identity of its frontend's TLS policy (name,
 * certificate, versions, ciphers, client-certificate rule, CA and CRL files): it is the
 * session ID context of every session the context issues, and a session (ticket or TLS 1.2
 * session ID, control or data) resumes only under the same identity. Virtual hosts switch
 * context before OpenSSL looks at the offered session (on_client_hello), so a session of
 * open.example is never resumed by strict.example, whose policy then runs a full handshake. */
static int policy_idx = -1;

static void policy_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    free(ptr);
}

static void policy_index_init(void)
{
    policy_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, policy_free);
}

static const uint8_t *ctx_policy(const SSL_CTX *ctx)
{
    return ctx && policy_idx >= 0 ? SSL_CTX_get_ex_data(ctx, policy_idx) : NULL;
}

static void digest_str(EVP_MD_CTX *md, const char *s)
{
    EVP_DigestUpdate(md, s, strlen(s) + 1); /* with the NUL: fields cannot run together */
}

/* A file's identity (a CA or CRL replaced in place is another policy after a reload). */
static void digest_file(EVP_MD_CTX *md, const char *path)
{
    struct stat st;
    digest_str(md, path);
    if (*path && stat(path, &st) == 0) {
        long long v[4] = {(long long)st.st_ino, (long long)st.st_size, (long long)st.st_mtime,
                          (long long)st.st_mtim.tv_nsec};
        EVP_DigestUpdate(md, v, sizeof v);
    }
}

int gw_tls_server_ctx_policy(SSL_CTX *ctx, const gw_frontend_conf *fc, const char *cert,
                             const char *key)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, policy_index_init);
    uint8_t *id = malloc(GW_TLS_POLICY_LEN);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int n = 0;
    int ints[3] = {(int)fc->mode, (int)fc->tls_min_version, (int)fc->client_cert};
    bool ok = id && md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
    if (ok) {
        digest_str(md, "ftpsgate policy 1");
        digest_str(md, fc->name);
        EVP_DigestUpdate(md, ints, sizeof ints);
        digest_file(md, cert);
        digest_str(md, key);
        digest_str(md, fc->ciphers);
        digest_str(md, fc->ciphersuites);
        digest_file(md, fc->client_cert != GW_CERT_NONE ? fc->client_ca : "");
        digest_file(md, fc->client_cert != GW_CERT_NONE ? fc->client_crl : "");
        ok = EVP_DigestFinal_ex(md, id, &n) == 1 && n == GW_TLS_POLICY_LEN && policy_idx >= 0 &&
             SSL_CTX_set_session_id_context(ctx, id, GW_TLS_POLICY_LEN) == 1 &&
             SSL_CTX_set_ex_data(ctx, policy_idx, id) == 1;
    }
    EVP_MD_CTX_free(md);
    if (!ok) {
        free(id);
        ERR_clear_error();
        return -1;
    }
    return 0;
}

/* Does the session belong to the policy of the context now in force on ssl? */
static bool session_of_policy(SSL *ssl, const SSL_SESSION *sess)
{
    const uint8_t *want = ctx_policy(SSL_get_SSL_CTX(ssl));
    unsigned int len = 0;
    const unsigned char *got = SSL_SESSION_get0_id_context(sess, &len);
    if (!want)
        return true; /* a context without a policy (unit tests): OpenSSL's own check only */
    return got && len == GW_TLS_POLICY_LEN && memcmp(got, want, len) == 0;
}

/* SECURITY: the ticket carries the tag of the control session that issued it, so a data
 * connection can prove it resumed *this* control connection's session, not any session. */
static int on_ticket_generate(SSL *ssl, void *arg)
{
    gw_tls *t = SSL_get_app_data(ssl);
    if (t && t->role == GW_TLS_SERVER_CONTROL)
        SSL_SESSION_set1_ticket_appdata(SSL_get0_session(ssl), t->tag, sizeof t->tag);
    return 1;
}

static SSL_TICKET_RETURN on_ticket_decrypt(SSL *ssl, SSL_SESSION *ss, const unsigned char *name,
                                           size_t name_len, SSL_TICKET_STATUS status, void *arg)
{
    switch (status) {
    case SSL_TICKET_SUCCESS:
    case SSL_TICKET_SUCCESS_RENEW:
        /* SECURITY: another frontend's (or an older policy's) ticket: a full handshake under
         * this policy (client certificate asked for), and a fresh ticket. */
        if (!ss || !session_of_policy(ssl, ss))
            return SSL_TICKET_RETURN_IGNORE_RENEW;
        return status == SSL_TICKET_SUCCESS ? SSL_TICKET_RETURN_USE : SSL_TICKET_RETURN_USE_RENEW;
    case SSL_TICKET_EMPTY:
    case SSL_TICKET_NO_DECRYPT:
        return SSL_TICKET_RETURN_IGNORE_RENEW;
    default:
        return SSL_TICKET_RETURN_ABORT;
    }
}

/* ---- routed tickets (pasv_shared_port) ----
 * On a shared passive port the data connection must be matched to its control connection
 * from the ClientHello alone, before any TLS engine runs. OpenSSL puts a ticket's 16-byte
 * key_name in clear at its start, and the name is ours to choose: it carries a magic, the
 * key generation and the route (a prefix of the issuing control connection's tag). The
 * encryption and HMAC keys do not depend on it: random per process and generation, rotated
 * every ROUTE_KEY_LIFETIME seconds, the previous generation still accepted (and renewed).
 * SECURITY: the route only chooses which waiting session may take the connection; the
 * proof of ownership is unchanged (the tag inside the encrypted ticket, gw_tls_resumed_from,
 * and the passive source address). */
#define ROUTE_KEY_LIFETIME 3600

typedef struct route_keys {
    uint8_t gen; /* 0..254 (0xff marks session IDs) */
    time_t born;
    unsigned char aes[32], hmac[32];
} route_keys;

static pthread_mutex_t route_lock = PTHREAD_MUTEX_INITIALIZER;
static route_keys route_cur, route_prev;
static bool route_have_cur, route_have_prev;

static int route_keys_fresh(route_keys *k, uint8_t gen)
{
    k->gen = gen;
    k->born = time(NULL);
    return RAND_priv_bytes(k->aes, sizeof k->aes) == 1 &&
                   RAND_priv_bytes(k->hmac, sizeof k->hmac) == 1
               ? 0
               : -1;
}

/* The keys to encrypt with now (rotating when due). */
static int route_keys_current(route_keys *out)
{
    int rc = 0;
    pthread_mutex_lock(&route_lock);
    if (!route_have_cur || time(NULL) - route_cur.born >= ROUTE_KEY_LIFETIME) {
        route_keys next;
        uint8_t gen = route_have_cur ? (uint8_t)((route_cur.gen + 1) % 0xff) : 0;
        if (route_keys_fresh(&next, gen) == 0) {
            route_prev = route_cur;
            route_have_prev = route_have_cur;
            route_cur = next;
            route_have_cur = true;
        } else {
            rc = -1;
        }
    }
    bool have = route_have_cur;
    if (have)
        *out = route_cur;
    pthread_mutex_unlock(&route_lock);
    return have ? 0 : rc;
}

/* The keys of generation gen: 1 current, 2 previous (renew), 0 unknown or expired. */
static int route_keys_find(uint8_t gen, route_keys *out)
{
    int r = 0;
    time_t now = time(NULL);
    pthread_mutex_lock(&route_lock);
    if (route_have_cur && route_cur.gen == gen) {
        *out = route_cur;
        r = 1;
    } else if (route_have_prev && route_prev.gen == gen &&
               now - route_prev.born < 2 * ROUTE_KEY_LIFETIME) {
        *out = route_prev;
        r = 2;
    }
    pthread_mutex_unlock(&route_lock);
    return r;
}

/* The route of the session being ticketed: its tag (set by on_ticket_generate), else the
 * control engine's own, else random (matches nothing). */
static void ticket_route(SSL *ssl, uint8_t route[GW_ROUTE_LEN])
{
    void *appdata = NULL;
    size_t len = 0;
    gw_tls *t = SSL_get_app_data(ssl);
    SSL_SESSION *sess = SSL_get0_session(ssl);
    if (sess && SSL_SESSION_get0_ticket_appdata(sess, &appdata, &len) && appdata &&
        len == GW_TLS_TAG_LEN)
        memcpy(route, appdata, GW_ROUTE_LEN);
    else if (t && t->role == GW_TLS_SERVER_CONTROL)
        memcpy(route, t->tag, GW_ROUTE_LEN);
    else
        RAND_bytes(route, GW_ROUTE_LEN);
}

static int set_ticket_mac(EVP_MAC_CTX *hctx, unsigned char *key)
{
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key, 32);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    return EVP_MAC_CTX_set_params(hctx, params);
}

/* The ticket cipher, fetched once: EVP_aes_256_cbc() in EVP_*Init_ex looks the provider's
 * implementation up again on every ticket (locks, property matching). Never freed: one
 * object for the process's life, like OpenSSL's own cached methods. */
static EVP_CIPHER *ticket_cipher_fetched;
static void ticket_cipher_fetch(void)
{
    ticket_cipher_fetched = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
}

static const EVP_CIPHER *ticket_cipher(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, ticket_cipher_fetch);
    return ticket_cipher_fetched ? ticket_cipher_fetched : EVP_aes_256_cbc();
}

static int on_ticket_key(SSL *ssl, unsigned char key_name[16], unsigned char *iv,
                         EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    route_keys k;
    if (enc) {
        uint8_t route[GW_ROUTE_LEN];
        if (route_keys_current(&k) != 0 || RAND_bytes(iv, 16) != 1)
            return 0; /* no ticket this time */
        ticket_route(ssl, route);
        gw_ticket_name_make(key_name, k.gen, route);
        int ok = EVP_EncryptInit_ex(cctx, ticket_cipher(), NULL, k.aes, iv) == 1 &&
                 set_ticket_mac(hctx, k.hmac) == 1;
        OPENSSL_cleanse(&k, sizeof k);
        return ok ? 1 : 0;
    }
    uint8_t route[GW_ROUTE_LEN], gen;
    if (!gw_route_from_identity(key_name, GW_TICKET_NAME_LEN, route, &gen) || gen == 0xff)
        return 0; /* not ours: a full handshake */
    int r = route_keys_find(gen, &k);
    if (r == 0)
        return 0;
    int ok = EVP_DecryptInit_ex(cctx, ticket_cipher(), NULL, k.aes, iv) == 1 &&
             set_ticket_mac(hctx, k.hmac) == 1;
    OPENSSL_cleanse(&k, sizeof k);
    return ok ? r : -1;
}

/* TLS 1.2 session-ID resumption: the ID carries the route too. */
static int on_generate_session_id(SSL *ssl, unsigned char *id, unsigned int *id_len)
{
    uint8_t route[GW_ROUTE_LEN], rnd[16];
    gw_tls *t = SSL_get_app_data(ssl);
    if (*id_len < GW_SESSION_ID_LEN || RAND_bytes(rnd, sizeof rnd) != 1)
        return 0;
    if (t && t->role == GW_TLS_SERVER_CONTROL)
        memcpy(route, t->tag, GW_ROUTE_LEN);
    else if (RAND_bytes(route, sizeof route) != 1)
        return 0;
    gw_session_id_make(id, route, rnd);
    *id_len = GW_SESSION_ID_LEN;
    return 1;
}

void gw_tls_server_ctx_route(SSL_CTX *ctx)
{
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket_key);
    SSL_CTX_set_generate_session_id(ctx, on_generate_session_id);
}

#define DEFAULT_CIPHERSUITES                                                                       \
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define DEFAULT_CIPHERS                                                                            \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

SSL_CTX *gw_tls_server_ctx_new(const char *cert, const char *key, enum gw_tls_version min,
                               const char *ciphers, const char *ciphersuites, char *err,
                               size_t errcap)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ctx_error(err, errcap, "cannot create TLS context", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, min == GW_TLS_1_3 ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_set_cipher_list(ctx, *ciphers ? ciphers : DEFAULT_CIPHERS) != 1) {
        ctx_error(err, errcap, "bad [tls] ciphers:", ciphers);
        goto fail;
    }
    if (SSL_CTX_set_ciphersuites(ctx, *ciphersuites ? ciphersuites : DEFAULT_CIPHERSUITES) != 1) {
        ctx_error(err, errcap, "bad [tls] ciphersuites:", ciphersuites);
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        ctx_error(err, errcap, "cannot load certificate", cert);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ctx_error(err, errcap, "cannot load private key", key);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ctx_error(err, errcap, "private key does not match certificate", key);
        goto fail;
    }
    /* Replaced by the frontend's policy identity (gw_tls_server_ctx_policy). */
    static const unsigned char sid_ctx[] = "ftpsgate";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(ctx, 20000);
    SSL_CTX_set_session_ticket_cb(ctx, on_ticket_generate, on_ticket_decrypt, NULL);
    /* One set of ticket keys for the process (rotated): a ticket opens in every context and
     * worker, and the policy identity inside it alone decides where it may resume. */
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket_key);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* SECURITY: optional still refuses a certificate that does not verify (OpenSSL's default
 * with SSL_VERIFY_PEER and no callback); required also refuses a client without one. */
int gw_tls_server_ctx_client_certs(SSL_CTX *ctx, enum gw_client_cert mode, const char *ca,
                                   const char *crl, char *err, size_t errcap)
{
    if (mode == GW_CERT_NONE)
        return 0;
    ERR_clear_error();
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        ctx_error(err, errcap, "cannot load client_ca", ca);
        return -1;
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
    if (names)
        SSL_CTX_set_client_CA_list(ctx, names); /* the CertificateRequest names them */
    if (crl && *crl) {
        X509_STORE *store = SSL_CTX_get_cert_store(ctx);
        X509_LOOKUP *lu = X509_STORE_add_lookup(store, X509_LOOKUP_file());
        if (!lu || X509_load_crl_file(lu, crl, X509_FILETYPE_PEM) < 1) {
            ctx_error(err, errcap, "cannot load client_crl", crl);
            return -1;
        }
        /* On the store: an SNI switch to this context keeps it (SSL_set_SSL_CTX). */
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
    }
    int v = SSL_VERIFY_PEER | (mode == GW_CERT_REQUIRED ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0);
    SSL_CTX_set_verify(ctx, v, NULL);
    SSL_CTX_set_verify_depth(ctx, 8);
    ERR_clear_error();
    return 0;
}

int gw_tls_peer_cert(const gw_tls *t, gw_tls_peer *out)
{
    X509 *x = SSL_get0_peer_certificate(t->ssl);
    if (!x || !out)
        return x != NULL;
    memset(out, 0, sizeof *out);
    struct {
        const X509_NAME *name;
        char *buf;
    } lines[] = {{X509_get_subject_name(x), out->subject}, {X509_get_issuer_name(x), out->issuer}};
    for (size_t i = 0; i < 2; i++) {
        BIO *b = BIO_new(BIO_s_mem());
        if (!b)
            continue;
        X509_NAME_print_ex(b, lines[i].name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
        int n = BIO_read(b, lines[i].buf, GW_TLS_NAME_MAX - 1);
        lines[i].buf[n > 0 ? n : 0] = 0;
        BIO_free(b);
    }
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, out->cn, sizeof out->cn);
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type != GEN_DNS && g->type != GEN_EMAIL)
            continue;
        const ASN1_IA5STRING *v = g->d.ia5;
        int n = ASN1_STRING_length(v);
        if (n > 0 && (size_t)n < sizeof out->san &&
            !memchr(ASN1_STRING_get0_data(v), 0, (size_t)n)) { /* SECURITY: no embedded NUL */
            memcpy(out->san, ASN1_STRING_get0_data(v), (size_t)n);
            out->san[n] = 0;
        }
        break;
    }
    GENERAL_NAMES_free(gens);
    unsigned int len = 0;
    X509_digest(x, EVP_sha256(), out->sha256, &len);
    return 1;
}

static gw_tls_sni_pick _Atomic sni_pick;

/* The host_name of a server_name extension (RFC 6066 §3) as a C string; false when absent
 * or malformed. */
static bool hello_sni(SSL *ssl, char *out, size_t cap)
{
    const unsigned char *p;
    size_t len;
    if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &len) || len < 2)
        return false;
    size_t list = (size_t)p[0] << 8 | p[1];
    if (list + 2 != len)
        return false;
    for (size_t i = 2; i + 3 <= len;) {
        unsigned type = p[i];
        size_t n = (size_t)p[i + 1] << 8 | p[i + 2];
        if (i + 3 + n > len)
            return false;
        if (type == TLSEXT_NAMETYPE_host_name) {
            if (n == 0 || n >= cap || memchr(p + i + 3, 0, n))
                return false;
            memcpy(out, p + i + 3, n);
            out[n] = 0;
            return true;
        }
        i += 3 + n;
    }
    return false;
}

/* Make ctx the policy of this handshake: certificate, verification, session ID context. */
static int switch_ctx(SSL *ssl, SSL_CTX *ctx)
{
    if (ctx == SSL_get_SSL_CTX(ssl))
        return 1;
    if (!SSL_set_SSL_CTX(ssl, ctx))
        return 0;
    /* SSL_set_SSL_CTX keeps the first context's verify mode and, when it was changed,
     * session ID context: the chosen frontend's, explicitly. */
    SSL_set_verify(ssl, SSL_CTX_get_verify_mode(ctx), NULL);
    SSL_set_verify_depth(ssl, SSL_CTX_get_verify_depth(ctx));
    const uint8_t *id = ctx_policy(ctx);
    return !id || SSL_set_session_id_context(ssl, id, GW_TLS_POLICY_LEN) == 1;
}

/* SECURITY: virtual hosts choose their context here, from the ClientHello's SNI, before
 * OpenSSL looks at the session the client offers (the servername callback runs after it:
 * a switch there let a session of one frontend resume under another's policy). Without
 * SNI the context stays: the listener's on a control connection, the control
 * connection's own on a data connection. */
static int on_client_hello(SSL *ssl, int *al, void *arg)
{
    char name[256];
    gw_tls_sni_pick pick = sni_pick;
    if (!pick || !hello_sni(ssl, name, sizeof name))
        return SSL_CLIENT_HELLO_SUCCESS;
    SSL_CTX *ctx = pick(arg, name);
    if (!ctx) {
        *al = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_CLIENT_HELLO_ERROR;
    }
    if (!switch_ctx(ssl, ctx)) {
        *al = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    return SSL_CLIENT_HELLO_SUCCESS;
}

/* The context was chosen in on_client_hello: acknowledge the name, switch nothing (for a
 * TLS 1.2 resumption OpenSSL would show the session's old name here). */
static int on_servername(SSL *ssl, int *al, void *arg)
{
    return SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) ? SSL_TLSEXT_ERR_OK
                                                              : SSL_TLSEXT_ERR_NOACK;
}

void gw_tls_server_ctx_set_sni(SSL_CTX *ctx, gw_tls_sni_pick pick, void *arg)
{
    sni_pick = pick;
    SSL_CTX_set_client_hello_cb(ctx, on_client_hello, arg);
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
}

SSL_CTX *gw_tls_ctx(const gw_tls *t)
{
    return SSL_get_SSL_CTX(t->ssl);
}

const char *gw_tls_sni(const gw_tls *t)
{
    return SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
}

/* TLS 1.3 sends tickets after the handshake: the session for data-leg resumption must be
 * taken here, not right after the handshake (vsftpd's require_ssl_reuse depends on it). */
static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    gw_tls *t = SSL_get_app_data(ssl);
    if (!t || t->role != GW_TLS_CLIENT_CONTROL)
        return 0;
    SSL_SESSION_free(t->session);
    t->session = sess;
    return 1; /* we keep the reference */
}

static int proto_version(enum gw_tls_version v)
{
    switch (v) {
    case GW_TLS_1_0:
        return TLS1_VERSION;
    case GW_TLS_1_1:
        return TLS1_1_VERSION;
    case GW_TLS_1_2:
        return TLS1_2_VERSION;
    case GW_TLS_1_3:
        return TLS1_3_VERSION;
    default:
        return 0;
    }
}

SSL_CTX *gw_tls_client_ctx_new(const gw_backend_conf *be, char *err, size_t errcap)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        ctx_error(err, errcap, "cannot create TLS context", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, proto_version(be->min_version));
    if (be->max_version)
        SSL_CTX_set_max_proto_version(ctx, proto_version(be->max_version));
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    /* A backend allowed below TLS 1.2 is an old server: OpenSSL 3 refuses servers without
     * RFC 5746 (secure renegotiation) by default; renegotiation itself stays off. This
     * backend only, and logged as event=weak_tls at start. TLS 1.0/1.1 and SHA-1
     * signatures also need "@SECLEVEL=0" in its ciphers. */
    if (be->min_version != GW_TLS_ANY && be->min_version < GW_TLS_1_2)
        SSL_CTX_set_options(ctx, SSL_OP_LEGACY_SERVER_CONNECT);
    if (be->ciphers[0] && SSL_CTX_set_cipher_list(ctx, be->ciphers) != 1) {
        ctx_error(err, errcap, "bad cipher list", be->ciphers);
        goto fail;
    }
    if (be->tls_verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        int ok = be->ca_file[0] ? SSL_CTX_load_verify_locations(ctx, be->ca_file, NULL)
                                : SSL_CTX_set_default_verify_paths(ctx);
        if (ok != 1) {
            ctx_error(err, errcap, "cannot load trust anchors", be->ca_file);
            goto fail;
        }
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

void gw_tls_ctx_free(SSL_CTX *ctx)
{
    SSL_CTX_free(ctx);
}

static int write_pem(const char *path, int mode, int (*fn)(FILE *, void *), void *obj)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0)
        return -1;
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        return -1;
    }
    int ok = fn(f, obj);
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

static int pem_key(FILE *f, void *k)
{
    return PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
}

static int pem_cert(FILE *f, void *x)
{
    return PEM_write_X509(f, x);
}

int gw_tls_ensure_selfsigned(const char *dir, char *cert, char *key, size_t cap, char *err,
                             size_t errcap)
{
    snprintf(cert, cap, "%s/gateway.crt", dir);
    snprintf(key, cap, "%s/gateway.key", dir);
    if (access(cert, R_OK) == 0 && access(key, R_OK) == 0)
        return 0;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errcap, "cannot create state directory %s: %s", dir, strerror(errno));
        return -1;
    }
    int rc = -1;
    X509 *x = NULL;
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    if (!pk || !(x = X509_new()))
        goto out;
    unsigned char serial[16];
    RAND_bytes(serial, sizeof serial);
    serial[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    X509_set_version(x, 2);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 10L * 365 * 24 * 3600);
    X509_set_pubkey(x, pk);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext =
        X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1,IP:::1");
    if (!ext)
        goto out;
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    if (!X509_sign(x, pk, EVP_sha256()))
        goto out;
    if (write_pem(key, 0600, pem_key, pk) != 0 || write_pem(cert, 0644, pem_cert, x) != 0) {
        snprintf(err, errcap, "cannot write %s or %s: %s", cert, key, strerror(errno));
        unlink(key);
        unlink(cert);
        X509_free(x);
        EVP_PKEY_free(pk);
        return -1;
    }
    rc = 0;
out:
    if (rc != 0)
        ctx_error(err, errcap, "cannot generate a self-signed certificate in", dir);
    X509_free(x);
    EVP_PKEY_free(pk);
    return rc;
}

/* The write side is a sink BIO that appends to t->out: the buffer then goes to the socket
 * as it is, one copy fewer than a memory BIO plus a read into a write request. */
static int sink_write(BIO *b, const char *data, int len)
{
    gw_tls *t = BIO_get_data(b);
    if (len <= 0)
        return 0;
    if (t->out_len + (size_t)len > t->out_cap) {
        size_t cap = t->out_cap ? t->out_cap : 4096;
        while (cap < t->out_len + (size_t)len)
            cap *= 2;
        char *n = realloc(t->out, cap);
        if (!n)
            return -1;
        t->out = n;
        t->out_cap = cap;
    }
    memcpy(t->out + t->out_len, data, (size_t)len);
    t->out_len += (size_t)len;
    return len;
}

static long sink_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    gw_tls *t = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_WPENDING:
    case BIO_CTRL_PENDING:
        return t ? (long)t->out_len : 0;
    default:
        return 0;
    }
}

/* The read side: OpenSSL takes its records straight from the socket's read buffer (lent
 * for the call) and from what earlier calls left, one copy fewer than a memory BIO. */
static int source_read(BIO *b, char *data, int len)
{
    gw_tls *t = BIO_get_data(b);
    size_t want = len > 0 ? (size_t)len : 0, got = 0;
    BIO_clear_retry_flags(b);
    if (t->in_off < t->in_len) {
        got = t->in_len - t->in_off < want ? t->in_len - t->in_off : want;
        memcpy(data, t->in + t->in_off, got);
        t->in_off += got;
    }
    if (got < want && t->lent_len) {
        size_t n = t->lent_len < want - got ? t->lent_len : want - got;
        memcpy(data + got, t->lent, n);
        t->lent += n;
        t->lent_len -= n;
        got += n;
    }
    if (got == 0) {
        BIO_set_retry_read(b); /* empty means "wait for more", never EOF */
        return -1;
    }
    return (int)got;
}

static size_t in_pending(const gw_tls *t)
{
    return t->in_len - t->in_off + t->lent_len;
}

static long source_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    gw_tls *t = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return t ? (long)in_pending(t) : 0;
    default:
        return 0;
    }
}

static BIO_METHOD *source_method;

static void make_source_method(void)
{
    source_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ftpsgate source");
    BIO_meth_set_read(source_method, source_read);
    BIO_meth_set_ctrl(source_method, source_ctrl);
}

static BIO *new_source(gw_tls *t)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, make_source_method);
    BIO *b = source_method ? BIO_new(source_method) : NULL;
    if (b) {
        BIO_set_data(b, t);
        BIO_set_init(b, 1);
    }
    return b;
}

/* Keep n bytes for later reads, after what is kept already. */
static int keep_in(gw_tls *t, const char *buf, size_t n)
{
    if (t->in_off == t->in_len) {
        t->in_off = t->in_len = 0;
    } else if (t->in_off && t->in_len + n > t->in_cap) {
        memmove(t->in, t->in + t->in_off, t->in_len - t->in_off);
        t->in_len -= t->in_off;
        t->in_off = 0;
    }
    if (t->in_len + n > t->in_cap) {
        size_t cap = t->in_cap ? t->in_cap : 4096;
        while (cap < t->in_len + n)
            cap *= 2;
        char *p = realloc(t->in, cap);
        if (!p)
            return -1;
        t->in = p;
        t->in_cap = cap;
    }
    memcpy(t->in + t->in_len, buf, n);
    t->in_len += n;
    return 0;
}

static BIO_METHOD *sink_method;

static void make_sink_method(void)
{
    sink_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ftpsgate sink");
    BIO_meth_set_write(sink_method, sink_write);
    BIO_meth_set_ctrl(sink_method, sink_ctrl);
}

static BIO *new_sink(gw_tls *t)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, make_sink_method);
    BIO *b = sink_method ? BIO_new(sink_method) : NULL;
    if (b) {
        BIO_set_data(b, t);
        BIO_set_init(b, 1);
    }
    return b;
}

gw_tls *gw_tls_new(SSL_CTX *ctx, enum gw_tls_role role)
{
    gw_tls *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    ERR_clear_error();
    t->role = role;
    t->ctx0 = ctx;
    t->ssl = SSL_new(ctx);
    t->rbio = new_source(t);
    t->wbio = new_sink(t);
    if (!t->ssl || !t->rbio || !t->wbio) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        free(t);
        return NULL;
    }
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_app_data(t->ssl, t);
    SSL_set_accept_state(t->ssl);
    /* TLS 1.3 tickets: one after a control connection's full handshake (OpenSSL's default
     * of two is for clients that open two connections at once; an FTP client's data
     * connections get a fresh one each, gw_tls_new_ticket), none on data connections. A
     * ticket costs a session copy, its encoding twice, a key derivation, AES and HMAC. */
    if (role == GW_TLS_SERVER_CONTROL) {
        RAND_bytes(t->tag, sizeof t->tag);
        SSL_set_num_tickets(t->ssl, 1);
    } else if (role == GW_TLS_SERVER_DATA) {
        SSL_set_num_tickets(t->ssl, 0);
    }
    /* A data leg lives for one transfer and moves bulk: it keeps OpenSSL's record buffers
     * instead of freeing and allocating them again for every record; control connections,
     * idle most of their life, release them (the context's mode). */
    if (role == GW_TLS_SERVER_DATA || role == GW_TLS_CLIENT_DATA)
        SSL_clear_mode(t->ssl, SSL_MODE_RELEASE_BUFFERS);
    return t;
}

static bool host_is_ip_literal(const char *host)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

gw_tls *gw_tls_new_client(SSL_CTX *ctx, enum gw_tls_role role, const char *host, bool verify,
                          const gw_tls *resume)
{
    gw_tls *t = gw_tls_new(ctx, role);
    if (!t)
        return NULL;
    SSL_set_connect_state(t->ssl);
    if (host && *host) {
        if (host_is_ip_literal(host)) {
            /* RFC 6066: no SNI for addresses; check the certificate's IP SAN instead. */
            if (verify)
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host);
        } else {
            SSL_set_tlsext_host_name(t->ssl, host);
            if (verify)
                SSL_set1_host(t->ssl, host);
        }
    }
    if (resume) {
        /* A copy for each data leg: OpenSSL marks a TLS 1.3 session it resumed with as not
         * resumable, which would make the control session useless for the next transfer. */
        SSL_SESSION *sess = resume->session ? resume->session : SSL_get0_session(resume->ssl);
        SSL_SESSION *copy = sess ? SSL_SESSION_dup(sess) : NULL;
        if (copy) {
            SSL_set_session(t->ssl, copy);
            SSL_SESSION_free(copy);
        }
    }
    return t;
}

size_t gw_tls_take_unread(gw_tls *t, void *buf, size_t cap)
{
    int r = BIO_read(t->rbio, buf, (int)(cap > 0x7fffffff ? 0x7fffffff : cap));
    gw_tls_feed_end(t);
    return r > 0 ? (size_t)r : 0;
}

bool gw_tls_resumed(const gw_tls *t)
{
    return SSL_session_reused(t->ssl);
}

void gw_tls_free(gw_tls *t)
{
    if (!t)
        return;
    SSL_SESSION_free(t->session);
    free(t->out);
    free(t->in);
    SSL_free(t->ssl); /* frees both BIOs */
    free(t);
}

int gw_tls_feed(gw_tls *t, const void *buf, size_t n)
{
    if (gw_tls_feed_end(t) != 0 || (n && keep_in(t, buf, n) != 0)) {
        snprintf(t->error, sizeof t->error, "out of memory");
        return GW_TLS_ERROR;
    }
    return 0;
}

void gw_tls_feed_lent(gw_tls *t, const void *buf, size_t n)
{
    t->lent = buf;
    t->lent_len = n;
}

int gw_tls_feed_end(gw_tls *t)
{
    const char *rest = t->lent;
    size_t n = t->lent_len;
    t->lent = NULL;
    t->lent_len = 0;
    int r = n ? keep_in(t, rest, n) : 0;
    bool control = t->role == GW_TLS_SERVER_CONTROL || t->role == GW_TLS_CLIENT_CONTROL;
    if (t->in_off == t->in_len && t->in && (control || t->in_cap > GW_TLS_KEEP_IN)) {
        /* idle control connections hold no buffer; a data leg keeps a small one for the
         * partial record each read leaves, not the backlog of a paused relay */
        free(t->in);
        t->in = NULL;
        t->in_off = t->in_len = t->in_cap = 0;
    }
    if (r == 0)
        return 0;
    snprintf(t->error, sizeof t->error, "out of memory");
    return GW_TLS_ERROR;
}

/* SECURITY: checked after every server handshake, full or resumed, control or data:
 * whatever path OpenSSL took, the session must be this policy's, and a client certificate
 * the policy requires must be there (a resumed session carries the one verified when it
 * was issued). NULL when the handshake stands. */
static const char *server_policy_refuses(gw_tls *t)
{
    if (t->role != GW_TLS_SERVER_CONTROL && t->role != GW_TLS_SERVER_DATA)
        return NULL;
    SSL *ssl = t->ssl;
    if (SSL_session_reused(ssl) && !session_of_policy(ssl, SSL_get0_session(ssl)))
        return "handshake refused: resumed a session of another TLS policy";
    int mode = SSL_get_verify_mode(ssl);
    if (!(mode & SSL_VERIFY_PEER))
        return NULL;
    if (!SSL_get0_peer_certificate(ssl))
        return mode & SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                   ? "handshake refused: no client certificate (client_cert = required)"
                   : NULL;
    if (SSL_get_verify_result(ssl) != X509_V_OK)
        return "handshake refused: the client certificate did not verify";
    return NULL;
}

/* A TLS 1.2 session is cached by the context SSL_new took (the listener's); a virtual
 * host's data connections start from the chosen frontend's context, whose cache must know
 * it too (a copy: a session object sits in one cache list only). */
static void cache_in_policy_ctx(gw_tls *t)
{
    SSL_CTX *ctx = SSL_get_SSL_CTX(t->ssl);
    SSL_SESSION *sess = SSL_get0_session(t->ssl);
    if (ctx == t->ctx0 || !sess || SSL_session_reused(t->ssl) ||
        SSL_version(t->ssl) >= TLS1_3_VERSION)
        return;
    SSL_SESSION *copy = SSL_SESSION_dup(sess);
    if (copy) {
        SSL_CTX_add_session(ctx, copy);
        SSL_SESSION_free(copy);
    }
    ERR_clear_error();
}

int gw_tls_handshake(gw_tls *t)
{
    if (t->handshake_done)
        return GW_TLS_DONE;
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        const char *refused = server_policy_refuses(t);
        if (refused) {
            snprintf(t->error, sizeof t->error, "%s", refused);
            return GW_TLS_ERROR;
        }
        t->handshake_done = true;
        /* TLS 1.2 session-id resumption reuses this cached object: tag it too. */
        if (t->role == GW_TLS_SERVER_CONTROL) {
            SSL_SESSION_set1_ticket_appdata(SSL_get0_session(t->ssl), t->tag, sizeof t->tag);
            cache_in_policy_ctx(t);
        }
        return GW_TLS_DONE;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return GW_TLS_AGAIN;
    set_error(t, "handshake failed");
    return GW_TLS_ERROR;
}

int gw_tls_new_ticket(gw_tls *t)
{
    /* TLS 1.2 resumes by session ID as often as it likes; only TLS 1.3 tickets are single
     * use in OpenSSL's client (and most others). */
    if (t->role != GW_TLS_SERVER_CONTROL || !t->handshake_done ||
        SSL_version(t->ssl) != TLS1_3_VERSION)
        return 0;
    ERR_clear_error();
    if (SSL_new_session_ticket(t->ssl) != 1) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

bool gw_tls_handshake_done(const gw_tls *t)
{
    return t->handshake_done;
}

int gw_tls_read(gw_tls *t, void *buf, size_t cap)
{
    ERR_clear_error();
    int r = SSL_read(t->ssl, buf, (int)(cap > 0x7fffffff ? 0x7fffffff : cap));
    if (r > 0)
        return r;
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return GW_TLS_AGAIN;
    if (e == SSL_ERROR_ZERO_RETURN)
        return GW_TLS_EOF;
    set_error(t, "read failed");
    return GW_TLS_ERROR;
}

/* Room for n bytes of plaintext as records (header, tag, padding): the sink grows once. */
static void reserve_out(gw_tls *t, size_t n)
{
    size_t need = t->out_len + n + (n / 16384 + 1) * 64;
    if (need <= t->out_cap)
        return;
    char *b = realloc(t->out, need);
    if (b) {
        t->out = b;
        t->out_cap = need;
    }
}

int gw_tls_write(gw_tls *t, const void *buf, size_t n)
{
    const char *p = buf;
    ERR_clear_error();
    reserve_out(t, n);
    /* One call for the whole buffer: OpenSSL cuts it into full 16 KiB records itself. */
    while (n) {
        int chunk = n > 0x40000000 ? 0x40000000 : (int)n;
        int r = SSL_write(t->ssl, p, chunk);
        if (r <= 0) {
            set_error(t, "write failed");
            return GW_TLS_ERROR;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

void gw_tls_close_notify(gw_tls *t)
{
    if (t->close_notify_sent || !t->handshake_done)
        return;
    t->close_notify_sent = true;
    ERR_clear_error();
    /* We never wait for the peer's close_notify here: 0 ("sent, not received") is fine. */
    SSL_shutdown(t->ssl);
    ERR_clear_error();
}

size_t gw_tls_out_pending(const gw_tls *t)
{
    return t->out_len;
}

size_t gw_tls_out_take_buffer(gw_tls *t, char **buf)
{
    size_t n = t->out_len;
    *buf = n ? t->out : NULL;
    if (n) {
        t->out = NULL;
        t->out_len = t->out_cap = 0;
    }
    return n;
}

size_t gw_tls_out_peek(const gw_tls *t, char **buf)
{
    *buf = t->out_len ? t->out : NULL;
    return t->out_len;
}

void gw_tls_out_sent(gw_tls *t)
{
    t->out_len = 0;
    if (t->out_cap < GW_TLS_KEEP_OUT) {
        free(t->out);
        t->out = NULL;
        t->out_cap = 0;
    }
}

const char *gw_tls_last_error(const gw_tls *t)
{
    return t->error[0] ? t->error : "unknown TLS error";
}

const char *gw_tls_describe(const gw_tls *t)
{
    static __thread char buf[96];
    snprintf(buf, sizeof buf, "%s/%s", SSL_get_version(t->ssl),
             SSL_CIPHER_get_name(SSL_get_current_cipher(t->ssl)));
    return buf;
}

const uint8_t *gw_tls_tag(const gw_tls *t)
{
    return t->tag;
}

int gw_tls_resumed_from(const gw_tls *data, const uint8_t *tag)
{
    if (!SSL_session_reused(data->ssl))
        return 0;
    void *appdata = NULL;
    size_t len = 0;
    SSL_SESSION *sess = SSL_get0_session(data->ssl);
    if (!sess || !SSL_SESSION_get0_ticket_appdata(sess, &appdata, &len))
        return -1;
    return (len == GW_TLS_TAG_LEN && memcmp(appdata, tag, len) == 0) ? 1 : -1;
}

int gw_tls_resumed_tag(const gw_tls *data, uint8_t out[GW_TLS_TAG_LEN])
{
    void *appdata = NULL;
    size_t len = 0;
    SSL_SESSION *sess = SSL_get0_session(data->ssl);
    if (!SSL_session_reused(data->ssl) || !sess ||
        !SSL_SESSION_get0_ticket_appdata(sess, &appdata, &len) || len != GW_TLS_TAG_LEN)
        return 0;
    memcpy(out, appdata, GW_TLS_TAG_LEN);
    return 1;
}
