/* Inside a session: the struct, its state enums and what the session files call of each
 * other. Private to proxy/session.c (core: states, timers, the one fail/close path),
 * proxy/client_cmd.c (the client's command queue and the gateway's own commands),
 * proxy/backend.c (the backend control leg), proxy/relay.c (backend replies, data
 * channels, transfers), proxy/session_info.c (the admin view) and proxy/edge_auth.c (the
 * gateway's own login check and command policy). Nothing outside these six files sees a
 * gw_session's fields. */
#ifndef GW_SESSION_INT_H
#define GW_SESSION_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include "bug.h"
#include "conn.h"
#include "ftp_codes.h"
#include "ftp_cmd.h"
#include "ftp_reply.h"
#include "generation.h"
#include "session.h"
#include "timeline.h"

#define INBUF_MAX (16 * 1024) /* queued client bytes before we stop reading it */
#define HELD_MAX (8 * 1024)   /* a held reply larger than this is cut */

typedef struct gw_data gw_data;

enum gw_client_state {
    CS_HANDSHAKE, /* implicit: waiting for the ClientHello and handshake; nothing sent */
    CS_READY,     /* commands flow (implicit: TLS up, PBSZ 0 / PROT P implied) */
    CS_AUTH,      /* explicit: 234 sent, TLS handshake running, commands wait */
    CS_CLOSING,   /* final reply and close_notify sent; waiting for handles to close */
};

enum gw_backend_state {
    BS_IDLE,       /* not connected yet */
    BS_CONNECTING, /* TCP connect under connect_timeout */
    BS_GREETING,   /* waiting for the 220 (then AUTH/PBSZ/PROT when the backend is TLS) */
    BS_TLS,        /* AUTH TLS answered 234: handshake with the backend running */
    BS_READY,
    BS_CLOSED,
};

/* What the one outstanding command to the backend is waiting for. */
enum gw_pending {
    PEND_NONE,
    PEND_GREETING, /* backend greeting, relayed */
    PEND_RELAY,    /* plain relay of the reply */
    PEND_PASV,     /* internal PASV/EPSV: the backend's 227/229 is consumed */
    PEND_PORT,     /* internal PORT/EPRT toward an active-mode backend */
    PEND_ABORT,    /* ABOR during a transfer: the transfer's final reply, then ABOR's */
    PEND_FEAT,     /* buffered, rewritten */
    PEND_TRANSFER, /* 1yz relayed, final reply held until the data legs are done */
    PEND_QUIT,
    PEND_BE_AUTH, /* internal AUTH TLS toward the backend (234, then the handshake) */
    PEND_BE_PBSZ, /* internal PBSZ 0 toward the backend */
    PEND_BE_PROT, /* internal PROT P toward the backend */
    PEND_BE_OPTS, /* internal OPTS UTF8 ON (the client had the gateway's 200): swallowed */

    /* auth = file (edge_auth.c): the gateway checks PASS (thread pool) or delays its 530;
     * then the replayed USER and PASS toward the backend (a 2xx is the client's reply). */
    PEND_EDGE_CHECK,
    PEND_EDGE_USER,
    PEND_EDGE_PASS,
};
#define PEND_LAST PEND_EDGE_PASS

/* What one command carries across its round trip to the backend and back. Reset when the
 * next command is taken from the queue. */
typedef struct gw_cmd_ctx {
    char verb[8];
    /* PASV/EPSV/PORT/EPRT: what the client asked for on its leg, answered once the backend
     * leg is armed. */
    enum { WANT_PASV, WANT_EPSV, WANT_PORT, WANT_EPRT } want;
    gw_addr want_addr;  /* WANT_PORT/WANT_EPRT: the client's address */
    bool sent_extended; /* the backend leg was armed with EPSV/EPRT (fallback possible) */
    gw_addr be_listen;  /* backend leg active: where the gateway listens */
    /* A reply held back from the client: the transfer's final reply until its data legs are
     * done, a failed PASS's 530 until the delay has passed, or the 230 until PBSZ/PROT
     * toward the backend are answered. */
    char *held;
    size_t heldlen;
    int held_code; /* PEND_TRANSFER: the final reply's code once it is complete */
    /* PEND_TRANSFER: be_sent once the command reached the backend. An upload is deferred
     * (PROTOCOL.md §5): sent only when the client's data leg is accepted; own_1xx: the
     * client has the gateway's 150, the backend's 1yz is consumed. */
    bool deferred, be_sent, own_1xx;
    /* ABOR (PEND_ABORT) */
    int abort_expect;     /* final replies still due from the backend */
    bool abort_xfer_sent; /* the client has its reply for the transfer */
    bool abort_internal;  /* the gateway answered the transfer: the backend's replies are
                             consumed (PROTOCOL.md §5 "One reply per command") */
    int owed;             /* abort_internal: final replies the backend still owes */
    bool abort_marked;    /* abort_internal: ABOR and NOOP sent, the NOOP's 200 ends it */
    uint64_t abort_started_ms;
} gw_cmd_ctx;

struct gw_session {
    uint64_t id;
    gw_frontend *fe;
    gw_backend_rt *be;      /* chosen at the start, kept for the session's life (REIN too) */
    uint32_t *be_tried;     /* bitmap of fe->backends[] tried by this session (heap) */
    bool be_counted;        /* be->live counts this session */
    bool be_committed;      /* a 220 arrived: the client talks to this backend, no failover */
    bool be_reported;       /* this connect attempt's outcome went to health */
    bool be_pinned;         /* route_user named it: no failover to another */
    bool self_greet;        /* the gateway sent the 220; the backend is connected at USER */
    bool user_waiting;      /* self_greet: the client's USER waits for the backend's 220 */
    bool utf8_replay;       /* self_greet: send OPTS UTF8 ON to the backend before USER */
    bool be_resolving;      /* uv_getaddrinfo pending on resolve_req */
    bool vh_none;           /* virtual hosts without a default: no frontend chosen yet */
    bool vh_sni;            /* the client's TLS SNI chose s->fe: HOST cannot change it */
    SSL_CTX *ctl_ctx;       /* the control TLS's context (its tickets): data legs use it */
    uint64_t be_attempt_ms; /* the connect attempt, then the wait for its 220, started
                               (connect_timeout each) */
    uv_loop_t *loop;
    gw_conn *client, *backend;
    uv_timer_t timer;
    uv_getaddrinfo_t resolve_req; /* backend names are resolved per session */
    enum gw_client_state cstate;
    enum gw_backend_state bstate;
    enum gw_pending pending;
    gw_cmd_ctx cur; /* the command in progress */
    gw_cmd_parser cmd;
    gw_reply_parser reply;
    char *inbuf; /* client bytes not yet parsed: the ordered command queue */
    size_t inlen, incap;
    char *featbuf; /* PEND_FEAT: backend reply so far */
    size_t featlen;
    gw_data *data;
    bool data_finished, data_ok;
    bool xfer_open; /* a transfer started and is not recorded yet (gw_relay_record_transfer) */
    uint64_t xfer_bytes, xfer_started_ms, data_done_ms;
    char xfer_arg[256];                  /* the transfer command's argument, for the transfer log */
    char xfer_line[GW_CMD_LINE_MAX + 1]; /* a deferred upload's command line */
    char user[64]; /* the USER argument, for the transfer log (never the password) */
    char be_user[GW_CMD_LINE_MAX + 1]; /* self_greet: the name sent to the backend's USER */
    char data_fail_reply[128];
    bool prot_p, pbsz, logged_in, epsv_all, user_sent;
    bool type_ascii;       /* TYPE A in force (the wu-ftpd transfer log says a or b) */
    bool tls_up;           /* the control connection is protected now */
    bool ccc;              /* CCC cleared it: no AUTH, PBSZ or PROT any more */
    bool swallow_greeting; /* REIN: the client already got its 220 */
    bool has_tag;
    uint8_t tag[GW_TLS_TAG_LEN]; /* the client control session's tag (survives CCC) */
    gw_tls_peer *cert;           /* the client's certificate (client_cert), NULL: none (heap) */
    int8_t data_resumed; /* the last TLS data connection: 1 resumed, -1 did not, 0 none yet */
    bool be_prot_p;      /* the backend accepted PROT P: its data legs are TLS */
    bool be_prot_later;  /* it refused PBSZ/PROT before login: send them after its 230 */
    bool be_after_login; /* PEND_BE_PBSZ/PROT are the after-230 round; `held` holds the 230 */
    int too_long, failed_logins;
    uint64_t reply_delay_until; /* a failed PASS is answered only then (slows guessing) */
    gw_addr client_peer, client_local, backend_peer;
    gw_addr client_reached; /* the address the client connected to: the PROXY header's
                               destination, else client_local (pasv_address = auto) */
    uint64_t started_ms, last_active_ms;
    int handles;                   /* open uv handles; the session is freed when this drops to 0 */
    const gw_session_hooks *hooks; /* the listener's: on_end(host) once it is freed */
    void *host;
    gw_timeline tl; /* the admin endpoint's recent events (session_info.c) */

    /* prelogin_backend_per_ip / _max: this session holds one of prelogin_fe's pre-login
     * backend places (health.h) until it logs in or ends. */
    bool prelogin_counted;
    gw_frontend *prelogin_fe;

    struct gw_edge *edge; /* edge_auth.c: the gateway's login check (heap, NULL: none yet) */
};

/* session.c: the core */
void gw_sess_set_client_state(gw_session *s, enum gw_client_state st);
void gw_sess_set_backend_state(gw_session *s, enum gw_backend_state st);
void gw_sess_set_pending(gw_session *s, enum gw_pending p);
uint64_t gw_sess_now(gw_session *s);
/* A reply to the client (dropped unless its control leg is ready). */
void gw_sess_reply(gw_session *s, const char *text);
/* self_greet: the frontend's own "220 <greeting>". */
void gw_sess_greet(gw_session *s);
/* Virtual hosts: the session serves fe (of those sharing its address) from now on. */
void gw_sess_set_frontend(gw_session *s, gw_frontend *fe, const char *by);
/* Start the client control TLS on s->fe's context. 0 or a libuv error. */
int gw_sess_start_tls(gw_session *s);
/* Append to a held buffer (cut at max). */
void gw_sess_append(char **buf, size_t *len, const char *p, size_t n, size_t max);
void gw_sess_drop_data(gw_session *s, bool ok);
/* The single way a session ends: `text` is the client's last reply (or NULL). */
void gw_sess_fail(gw_session *s, const char *text, const char *why);
/* A "cannot happen" inside session s (bug.h): aborts in SAN/fuzz builds; in release it is
 * logged with the session and ends just that session (421) through gw_sess_fail. true when
 * cond held: the caller returns. */
#define GW_SESS_BUG_ON(s, cond)                                                                    \
    (__builtin_expect(!!(cond), 0) ? gw_sess_bug((s), __FILE__, __LINE__, #cond) : false)
bool gw_sess_bug(gw_session *s, const char *file, int line, const char *cond);
void gw_sess_rearm(gw_session *s);
/* One of the session's handles (or a pending lookup) is gone; the last frees it. */
void gw_sess_release(gw_session *s);
/* The outstanding exchange is over: take the next command. */
void gw_sess_command_done(gw_session *s);

/* client_cmd.c: the command queue */
void gw_cmdq_receive(gw_session *s, const char *buf, size_t n);
void gw_cmdq_pump(gw_session *s);

/* backend.c: the backend control leg */
/* Choose s->be among the frontend's eligible backends not tried yet (counted in its live
 * sessions, logged). false when none is eligible. */
bool gw_backend_choose(gw_session *s);
/* route_user: s->be = the frontend's backends[i], whatever the policy and health (pinned:
 * no failover). false when it is full. */
bool gw_backend_choose_index(gw_session *s, int i);
/* s->be no longer counts this session (at its end, or when it fails over). */
void gw_backend_uncount(gw_session *s);
/* A connect attempt failed before the 220: reported to health; when nothing of the client's
 * has reached a backend yet, the next eligible backend is tried (true: a new attempt runs,
 * the caller does nothing more). */
bool gw_backend_failover(gw_session *s, const char *reason);
void gw_backend_connect(gw_session *s);
/* prelogin_backend_per_ip / _max: may the backend be connected before any command? true:
 * counted. false: over a bound (the session greets itself and connects at USER). */
bool gw_backend_prelogin_admit(gw_session *s);
/* The session logged in or ends: its pre-login place is given back (once). */
void gw_backend_prelogin_release(gw_session *s);
void gw_backend_send(gw_session *s, const char *line, enum gw_pending pending);
void gw_backend_ready(gw_session *s);
void gw_backend_greeting_line(gw_session *s, gw_reply_parser *r);
void gw_backend_tls_reply(gw_session *s, gw_reply_parser *r);

/* relay.c: backend replies by what is pending, data channels, transfers */
void gw_relay_line(gw_session *s, gw_reply_parser *r);
void gw_relay_arm_backend_leg(gw_session *s);
void gw_relay_abort_transfer(gw_session *s, const char *text, const char *why);
/* The transfer's one record (the transfer_end line, the transfer log, the metrics), once
 * however it ended: `reply` is the final reply the client got for it (NULL: none), result
 * ok | failed | aborted | unused, why the reason of a failure (or NULL). */
void gw_relay_record_transfer(gw_session *s, const char *reply, const char *result,
                              const char *why);
/* The backend owes replies the gateway consumes (cur.owed) and is overdue: ABOR, then a
 * NOOP whose 200 marks the end of what it owes. */
void gw_relay_abort_marked(gw_session *s);
/* STOR/APPE/STOU: keep `line` from the backend until the client's data leg is accepted. */
void gw_relay_defer_upload(gw_session *s, const char *line);
/* A deferred upload ends before the backend had its command: `text` is the client's final
 * reply (NULL: none), recorded with `result` (gw_relay_record_transfer); the caller ends
 * the command. */
void gw_relay_end_unsent(gw_session *s, const char *text, const char *result, const char *why);
/* The address a 227 names for this client (pasv_address_for, pasv_address = auto or an
 * address, else bind). false when it is not IPv4. */
bool gw_relay_pasv_addr(gw_session *s, const gw_addr *bind, gw_addr *adv);

/* edge_auth.c: authentication at the gateway (auth = file) and the command policy */
/* USER on an auth = file frontend (after the client_cert checks): answered by the gateway.
 * false: not such a frontend, the caller goes on. */
bool gw_edge_user(gw_session *s, const char *arg);
/* PASS on an auth = file frontend, and a logged-in session's command under its [policy]
 * (550 when refused): true when the gateway took the command. */
bool gw_edge_command(gw_session *s, const gw_cmd_def *def, const char *verb, const char *arg);
/* The backend is ready after a gateway login: true when the replayed USER was sent. */
bool gw_edge_backend_ready(gw_session *s);
/* A backend reply while PEND_EDGE_USER or PEND_EDGE_PASS. */
void gw_edge_reply(gw_session *s, gw_reply_parser *r);
void gw_edge_free(gw_session *s);

/* session_info.c: the admin endpoint's view (timeline ring, metrics of session events) */
void gw_sinfo_start(gw_session *s);
void gw_sinfo_end(gw_session *s);
void gw_sinfo_frontend(gw_session *s, gw_frontend *to);
void gw_sinfo_handshake(gw_session *s);
void gw_sinfo_command(gw_session *s, const char *verb, const char *arg);
void gw_sinfo_reply(gw_session *s, const char *text);
void gw_sinfo_login(gw_session *s, bool ok);
void gw_sinfo_backend(gw_session *s, bool ok, const char *why);
void gw_sinfo_backend_busy(gw_session *s, int code);
void gw_sinfo_transfer_end(gw_session *s, const char *result);
void gw_sinfo_data_done(gw_session *s, int result, uint64_t bytes); /* enum gw_data_result */

#endif
