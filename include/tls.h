/* TLS engine over in-memory BIOs: hides OpenSSL's handshake/read/write dance and its error
 * codes. The caller moves ciphertext in (gw_tls_feed, or lends its read buffer:
 * gw_tls_feed_lent / gw_tls_feed_end) and out (gw_tls_out_peek / gw_tls_out_sent, or
 * gw_tls_out_take_buffer). */
#ifndef GW_TLS_H
#define GW_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "config.h"

typedef struct ssl_ctx_st SSL_CTX;
typedef struct gw_tls gw_tls;

enum gw_tls_status {
    GW_TLS_AGAIN = 0,  /* needs more input */
    GW_TLS_DONE = 1,   /* handshake complete */
    GW_TLS_ERROR = -1, /* fatal: see gw_tls_last_error */
    GW_TLS_EOF = -2,   /* peer sent close_notify */
};

enum gw_tls_role {
    GW_TLS_SERVER_CONTROL, /* client-facing control: tagged session, tickets on */
    GW_TLS_SERVER_DATA,    /* client-facing data: no tickets (clients never read them) */
    GW_TLS_CLIENT_CONTROL, /* backend control: keeps the newest session for the data legs */
    GW_TLS_CLIENT_DATA,    /* backend data: offers the control session for resumption */
};

#define GW_TLS_TAG_LEN 16

/* A server context with certificate, key, protocol floor, session cache and tagged tickets.
 * NULL with a message in err. */
/* ciphers (TLS <= 1.2) and ciphersuites (TLS 1.3): empty means the gateway's default, which
 * prefers AES-128-GCM (as strong as needed, and the fastest here). */
SSL_CTX *gw_tls_server_ctx_new(const char *cert, const char *key, enum gw_tls_version min,
                               const char *ciphers, const char *ciphersuites, char *err,
                               size_t errcap);
void gw_tls_ctx_free(SSL_CTX *ctx);
/* The identity of a frontend's TLS policy (SHA-256 of its name, certificate, versions,
 * ciphers, client-certificate rule and CA/CRL files): the session ID context of ctx. A
 * session resumes only under the policy that issued it; every server handshake is checked
 * against it (and against a required client certificate), full or resumed. 0 or -1. */
#define GW_TLS_POLICY_LEN 32
int gw_tls_server_ctx_policy(SSL_CTX *ctx, const gw_frontend_conf *fc, const char *cert,
                             const char *key);
/* pasv_shared_port: tickets and TLS 1.2 session IDs of ctx carry the route of the control
 * connection that got them, readable in the ClientHello (tls_hello.h). */
void gw_tls_server_ctx_route(SSL_CTX *ctx);

/* Client certificates on a server context: optional asks for one and refuses one that does
 * not verify against ca (PEM) and crl (PEM, may be empty: no revocation check); required also
 * fails the handshake without one. none: nothing. 0 or -1 with a message. */
int gw_tls_server_ctx_client_certs(SSL_CTX *ctx, enum gw_client_cert mode, const char *ca,
                                   const char *crl, char *err, size_t errcap);

/* The client certificate of a server engine (the resumed session's on a data leg): subject and
 * issuer (one line each, RFC 2253), its CN and first DNS or email SAN (empty when absent) and
 * its SHA-256. 1 with the fields filled, 0 when the peer sent none. Any pointer may be NULL. */
#define GW_TLS_NAME_MAX 256
typedef struct gw_tls_peer {
    char subject[GW_TLS_NAME_MAX], issuer[GW_TLS_NAME_MAX];
    char cn[GW_TLS_NAME_MAX], san[GW_TLS_NAME_MAX];
    uint8_t sha256[32];
} gw_tls_peer;
int gw_tls_peer_cert(const gw_tls *t, gw_tls_peer *out);

/* Virtual hosts: pick(arg, name) gives the context for a client's SNI name (the handshake
 * switches to it, from the ClientHello on: its certificate, client-certificate rule and
 * policy identity), or NULL to refuse the handshake (unrecognized_name). Without SNI the
 * context stays. pick is the same function for every context. */
typedef SSL_CTX *(*gw_tls_sni_pick)(void *arg, const char *name);
void gw_tls_server_ctx_set_sni(SSL_CTX *ctx, gw_tls_sni_pick pick, void *arg);
/* The SNI name a server engine's client sent, NULL when none. */
const char *gw_tls_sni(const gw_tls *t);
/* The context whose policy the engine runs under (after a virtual-host switch: the chosen
 * frontend's). */
SSL_CTX *gw_tls_ctx(const gw_tls *t);

/* Make sure DIR holds a self-signed certificate and key (creating them if missing); writes
 * their paths. 0 or -1 with a message. */
int gw_tls_ensure_selfsigned(const char *dir, char *cert, char *key, size_t cap, char *err,
                             size_t errcap);

/* A client context toward one backend: verification (ca_file or the system store),
 * protocol range, ciphers, and a client session cache fed by the new-session callback. */
SSL_CTX *gw_tls_client_ctx_new(const gw_backend_conf *be, char *err, size_t errcap);

gw_tls *gw_tls_new(SSL_CTX *ctx, enum gw_tls_role role);
/* A client engine. host: SNI and name check (an IP literal: no SNI, IP SAN check); verify:
 * check the certificate; resume: the backend control engine whose session a data leg offers. */
gw_tls *gw_tls_new_client(SSL_CTX *ctx, enum gw_tls_role role, const char *host, bool verify,
                          const gw_tls *resume);
/* Bytes fed in but not consumed by OpenSSL (after a close_notify, say): moved to buf. */
size_t gw_tls_take_unread(gw_tls *t, void *buf, size_t cap);
bool gw_tls_resumed(const gw_tls *t);
void gw_tls_free(gw_tls *t);

int gw_tls_feed(gw_tls *t, const void *buf, size_t n); /* 0 or GW_TLS_ERROR (copies) */
/* Lend buf to the engine for the reads that follow (no copy); gw_tls_feed_end, before buf
 * is reused, keeps what was not read. 0, or GW_TLS_ERROR (out of memory). */
void gw_tls_feed_lent(gw_tls *t, const void *buf, size_t n);
int gw_tls_feed_end(gw_tls *t);
#define GW_TLS_KEEP_IN (32 * 1024) /* a larger input buffer is freed once empty */
int gw_tls_handshake(gw_tls *t);   /* DONE, AGAIN or ERROR */
bool gw_tls_handshake_done(const gw_tls *t);
/* Control connection under TLS 1.3: queue one more tagged ticket; it leaves with the next
 * write. A client that resumes each ticket once (OpenSSL's) needs one per data connection.
 * 0 (also when nothing is needed: TLS 1.2, not a server control engine) or -1. */
int gw_tls_new_ticket(gw_tls *t);
int gw_tls_read(gw_tls *t, void *buf, size_t cap);      /* >0 bytes, AGAIN, EOF or ERROR */
int gw_tls_write(gw_tls *t, const void *buf, size_t n); /* 0 or ERROR; all bytes taken */
void gw_tls_close_notify(gw_tls *t);                    /* queue our close_notify once */
size_t gw_tls_out_pending(const gw_tls *t);             /* ciphertext waiting to be sent */
/* Hand the waiting ciphertext over: *buf is malloc'ed and now the caller's to free. */
size_t gw_tls_out_take_buffer(gw_tls *t, char **buf);
/* The waiting ciphertext, still the engine's (NULL when none). */
size_t gw_tls_out_peek(const gw_tls *t, char **buf);
/* All of it was sent: the buffer is kept for the next records when it is a bulk one
 * (GW_TLS_KEEP_OUT or more), so that a relay neither allocates per write nor writes into
 * cold memory; a smaller one (control replies) is freed, idle sessions hold none. */
void gw_tls_out_sent(gw_tls *t);
#define GW_TLS_KEEP_OUT (64 * 1024)
const char *gw_tls_last_error(const gw_tls *t);
const char *gw_tls_describe(const gw_tls *t); /* "TLSv1.3/TLS_AES_256_GCM_SHA384" */

/* The tag of a control connection's session (random per connection). */
const uint8_t *gw_tls_tag(const gw_tls *t);
/* Data-leg resumption check: 1 resumed the session tagged `tag`; 0 not resumed; -1 resumed
 * another session (another client's). */
int gw_tls_resumed_from(const gw_tls *data, const uint8_t *tag);
/* The tag of the control connection whose session a data leg resumed: 1 with out set, 0
 * when it did not resume or the session carries no tag. */
int gw_tls_resumed_tag(const gw_tls *data, uint8_t out[GW_TLS_TAG_LEN]);

#endif
