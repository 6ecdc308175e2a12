/* Configuration: INI -> an immutable, validated struct gw_config. Pure: no libuv, no
 * OpenSSL. Reference: config/README.md (checked against keys[] by
 * tests/unit/test_config_doc.c). */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_NAME_MAX 64
#define GW_PATH_MAX 512
#define GW_HOST_MAX 256
#define GW_LIST_MAX 8192 /* a frontend's backend list: 100 names of 63 characters fit */

enum gw_log_level { GW_LOG_ERROR = 0, GW_LOG_WARN, GW_LOG_INFO, GW_LOG_DEBUG };
enum gw_fe_mode { GW_FE_IMPLICIT = 0, GW_FE_EXPLICIT, GW_FE_PLAIN };
enum gw_be_tls { GW_BE_TLS_NONE = 0, GW_BE_TLS_EXPLICIT, GW_BE_TLS_IMPLICIT };
enum gw_data_mode { GW_DATA_PASSIVE = 0, GW_DATA_ACTIVE };
/* How a frontend picks one of its backends for a new session. */
enum gw_balance {
    GW_BALANCE_ROUNDROBIN = 0,
    GW_BALANCE_LEASTCONN,
    GW_BALANCE_RANDOM,
    GW_BALANCE_SOURCE,
    GW_BALANCE_USER /* hash of the USER name: needs the gateway's own greeting */
};
/* client_cert: ask clients for a certificate (none), verify one when sent, or demand it. */
enum gw_client_cert { GW_CERT_NONE = 0, GW_CERT_OPTIONAL, GW_CERT_REQUIRED };
enum gw_tls_version {
    GW_TLS_ANY = 0,
    GW_TLS_1_0 = 10,
    GW_TLS_1_1 = 11,
    GW_TLS_1_2 = 12,
    GW_TLS_1_3 = 13
};

/* Who checks USER/PASS: the backend (relayed, today's behaviour) or the gateway first. */
enum gw_auth { GW_AUTH_BACKEND = 0, GW_AUTH_FILE, GW_AUTH_LDAP, GW_AUTH_PAM };

typedef struct gw_hostport {
    char host[GW_HOST_MAX]; /* as written, brackets removed for IPv6 */
    uint16_t port;
} gw_hostport;

typedef struct gw_frontend_conf {
    char name[GW_NAME_MAX];
    gw_hostport listen;
    enum gw_fe_mode mode;
    char backend[GW_LIST_MAX]; /* as written: one or more names, comma-separated */
    int n_backends;            /* resolved by validation: */
    int *backend_list;         /* n_backends indexes into backends[], in the written order (heap) */
    int backend_index;         /* backend_list[0] */
    enum gw_balance balance;
    bool require_tls;
    bool require_prot_p;
    bool allow_ccc;
    bool auth_ssl_protects_data;           /* AUTH SSL implies PROT P (vsftpd), not only AUTH TLS */
    bool route_user;                       /* USER name@BACKEND picks BACKEND */
    char greeting[GW_HOST_MAX];            /* set: the gateway greets itself ("220 <greeting>") */
    char pasv_address[GW_HOST_MAX];        /* empty: local address of the control connection */
    uint16_t pasv_port_min, pasv_port_max; /* 0-0: no range (pasv_ports empty) */
    int pasv_shared_port;   /* -1: none; else every PASV/EPSV names it (shared_port.h) */
    int active_source_port; /* -1: not set (mode default: 989 implicit, 20 explicit/plain) */
    /* Not set in the section: the [tls] values, merged in by the parser (cert and key
     * empty there too: the generated certificate, gw_config's). */
    char cert[GW_PATH_MAX], key[GW_PATH_MAX];
    char server_name[GW_PATH_MAX]; /* virtual hosts: names, *.suffix; empty: the default */
    /* TLS policy: the [tls] keys of the same names (one row each in config.c's table); one
     * not set in the section holds the [tls] value after parsing (per-frontend keys
     * replace, lists are not merged). */
    enum gw_tls_version tls_min_version;
    char ciphers[GW_PATH_MAX], ciphersuites[GW_PATH_MAX];
    bool data_session_reuse_required;
    int strict_tls_eof; /* -1 unset (= yes), 0 no, 1 yes */
    enum gw_client_cert client_cert;
    char client_ca[GW_PATH_MAX], client_crl[GW_PATH_MAX];
    bool client_cert_user;                       /* USER must equal the certificate's name */
    char data_session_reuse_exempt[GW_PATH_MAX]; /* CIDR list (gw_cidr_list_match) */
    char strict_tls_eof_exempt[GW_PATH_MAX];     /* CIDR list */
    /* PROXY protocol from a load balancer (proxy_proto.h), pasv_address = auto/_for */
    int proxy_protocol;                    /* enum gw_pp_mode: 0 no, 1 v1, 2 v2, 3 any */
    char proxy_protocol_from[GW_PATH_MAX]; /* CIDR list allowed to send it */
    bool proxy_protocol_data;              /* passive data connections carry one too */
    char pasv_address_for[GW_PATH_MAX];    /* CIDR=ADDR, ...: first match names the 227 address */

    /* Backend connections held by sessions not logged in yet, per client address and for
     * the whole frontend (0: no bound); over either one a new connection is greeted by the
     * gateway and its backend connection waits for USER. */
    int prelogin_backend_per_ip, prelogin_backend_max;

    /* Authentication at the edge (users_file.h) and the command policy (cmd_policy.h). */
    enum gw_auth auth;
    char auth_file[GW_PATH_MAX]; /* auth = file: the users file */
    /* auth = ldap (auth_ldap.h): bind as the user, by DN template or search-then-bind */
    char ldap_uri[GW_PATH_MAX]; /* as written: ldap:// or ldaps:// URIs */
    bool ldap_starttls;
    char ldap_ca_file[GW_PATH_MAX];
    char ldap_bind_dn[GW_PATH_MAX]; /* set: search-then-bind with this service account */
    char ldap_bind_password_file[GW_PATH_MAX];
    char ldap_user_dn[GW_PATH_MAX]; /* direct bind: a %u template */
    char ldap_base[GW_PATH_MAX];
    char ldap_filter[GW_PATH_MAX]; /* a %u template */
    char ldap_group_attr[GW_NAME_MAX], ldap_backend_attr[GW_NAME_MAX];
    int ldap_timeout;              /* seconds, each of connect and every operation */
    int auth_cache_ttl;            /* seconds a successful check is remembered; 0: no cache */
    char user_map[GW_PATH_MAX];    /* user_map.h file: backend and account per user; "": none */
    char pam_service[GW_NAME_MAX]; /* auth = pam: the service (/etc/pam.d/NAME) */
    char policy[GW_NAME_MAX];      /* a [policy] for every session; empty: none */
    int policy_index;              /* resolved by validation: policies[] index, -1: none */
    /* Bandwidth limits (rate.h), bytes/s, 0: none: per session, and shared by all sessions
     * of this frontend (across workers). */
    uint64_t rate_down, rate_up, frontend_rate_down, frontend_rate_up;
} gw_frontend_conf;

/* [policy NAME]: commands refused with 550 by the gateway (cmd_policy.h). Verb lists are
 * upper-cased, blank-separated ("DELE RMD"). */
typedef struct gw_policy_conf {
    char name[GW_NAME_MAX];
    bool read_only;
    char deny[GW_PATH_MAX];
    char allow[GW_PATH_MAX];
    char users[GW_PATH_MAX];     /* user names and @groups it applies to */
    uint64_t rate_down, rate_up; /* per user (all of its sessions together), bytes/s, 0: none */
} gw_policy_conf;

typedef struct gw_backend_conf {
    char name[GW_NAME_MAX];
    gw_hostport address;
    enum gw_be_tls tls;
    bool tls_verify;
    char ca_file[GW_PATH_MAX];
    char sni[GW_HOST_MAX];
    enum gw_tls_version min_version, max_version;
    char ciphers[GW_PATH_MAX];
    enum gw_data_mode data_mode;
    int connect_timeout;
    int weight;       /* share under roundrobin and random */
    int max_sessions; /* 0: no limit; a full backend is skipped */
    int health_interval, health_timeout, health_rise, health_fall; /* interval 0: no probes */
    int proxy_protocol; /* 0 no, 1 v1, 2 v2: a PROXY header names the client to it */
} gw_backend_conf;

enum gw_splice_mode { GW_SPLICE_NO, GW_SPLICE_DOWNLOADS, GW_SPLICE_YES };
enum gw_xferlog_format { GW_XFERLOG_KV, GW_XFERLOG_WUFTPD }; /* xferlog.h */

typedef struct gw_config {
    /* [global] */
    int workers; /* 0 = auto */
    char user[GW_NAME_MAX];
    enum gw_log_level log_level;
    bool log_json;
    char xferlog[GW_PATH_MAX];
    enum gw_xferlog_format xferlog_format;
    int max_sessions, max_sessions_per_ip;
    int idle_timeout, login_timeout, data_connect_timeout, data_timeout, shutdown_grace;
    int upgrade_grace; /* after `ftpsgate -s upgrade`: the old process's sessions (0: no limit) */
    enum gw_splice_mode splice; /* which clear-to-clear relays use splice(2) */
    /* the ban list (bans.h): ban_after failed logins within ban_window seconds ban the
     * client address for ban_time seconds; ban_after 0: off; ban_exempt: a CIDR list */
    int ban_after, ban_window, ban_time;
    char ban_exempt[GW_PATH_MAX];
    gw_hostport admin_listen;      /* HTTP admin endpoint; port 0: off */
    char admin_users[GW_PATH_MAX]; /* admin_users.h file; empty: no basic auth */
    char admin_tls_cert[GW_PATH_MAX], admin_tls_key[GW_PATH_MAX]; /* both: HTTPS only */
    char control_socket[GW_PATH_MAX]; /* control.h; empty: STATE_DIR/control.sock, "off" */
    /* [tls] */
    char cert[GW_PATH_MAX], key[GW_PATH_MAX]; /* empty: generated self-signed in state dir */
    enum gw_tls_version tls_min_version;
    char ciphers[GW_PATH_MAX], ciphersuites[GW_PATH_MAX];
    bool data_session_reuse_required;
    int strict_tls_eof; /* -1 unset (default), 0 no, 1 yes */
    enum gw_client_cert client_cert;
    char client_ca[GW_PATH_MAX], client_crl[GW_PATH_MAX];
    bool client_cert_user;
    char data_session_reuse_exempt[GW_PATH_MAX], strict_tls_eof_exempt[GW_PATH_MAX];

    /* As many sections as the file has: heap arrays owned by the gw_config. Copy one with
     * gw_config_copy, release it with gw_config_free (never a plain struct assignment). */
    int n_frontends, n_backends, n_policies;
    gw_frontend_conf *frontends;
    gw_backend_conf *backends;
    gw_policy_conf *policies;
    /* Where the parsed text set each key (gw_config_where): for messages about the running
     * configuration. Owned; NULL in a copy (gw_config_copy does not carry it). */
    struct gw_config_lines *lines;
} gw_config;

/* The embedded default configuration (INI text) used when no -c is given. */
extern const char gw_config_default_ini[];

/* Parse INI text. `origin` names the file in messages ("<embedded default>" for the
 * default). Returns 0, or -1 with a message "ORIGIN:LINE: [section] key: problem" (LINE 0
 * when the problem is not on one line) written to err. cfg is fully initialised with
 * defaults first (its previous contents are not freed: gw_config_free them before reusing
 * a cfg); on success release it with gw_config_free, on failure it holds nothing. */
int gw_config_parse(const char *text, size_t len, const char *origin, gw_config *cfg, char *err,
                    size_t errcap);

/* A deep copy of src into dst (dst's previous contents are not freed). 0, or -1 when out
 * of memory (dst is then empty: nothing to free). */
int gw_config_copy(gw_config *dst, const gw_config *src);

/* Free the section arrays and leave cfg empty (NULL arrays, no sections); idempotent on a
 * zeroed, freed or failed-to-parse cfg. */
void gw_config_free(gw_config *cfg);

/* Read the file and parse it (error message names the file on read failure too). */
int gw_config_load_file(const char *path, gw_config *cfg, char *err, size_t errcap);

/* "HOST:PORT" or "[V6]:PORT" -> hp. 0 or -1. */
int gw_parse_hostport(const char *s, gw_hostport *hp);

/* A TLS version as a file spells it ("TLSv1" ... "TLSv1.3"; "" for GW_TLS_ANY). */
const char *gw_tls_version_name(enum gw_tls_version v);

/* "ORIGIN:LINE: [section] key" of a key of the parsed file, for problems found after
 * parsing (a certificate that does not load, a port in use). section: "global", "tls",
 * "frontend", "backend" or "policy"; index: the frontend or backend; key NULL: the section itself.
 * A frontend key it did not set names the [tls] line of the same key when [tls] set it
 * (the frontend inherits it), else the frontend's header line. LINE 0 when unknown (a
 * copy, a default value). */
void gw_config_where(const gw_config *cfg, const char *section, int index, const char *key,
                     char *out, size_t cap);

/* The [policy] section named name, or -1. */
int gw_config_policy(const gw_config *cfg, const char *name);

/* The key table, for documentation checks: the i-th (key, section) pair, its name returned
 * and its section kind ("global", "tls", "frontend", "backend", "policy") in *section; a [tls] key
 * comes twice, as "tls" then "frontend". NULL past the last pair. */
const char *gw_config_key(size_t i, const char **section);

#endif
