/* ftpsgate: command line, configuration, signals, graceful stop. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "admin.h"
#include "config.h"
#include "control.h"
#include "generation.h"
#include "health.h"
#include "log.h"
#include "logfile.h"
#include "notify.h"
#include "metrics.h"
#include "tls.h"
#include "upgrade.h"
#include "version.h"
#include "worker.h"

static bool stopping;
static bool upgrading;          /* a new process is starting (ftpsgate -s upgrade) */
static bool handed_over;        /* it serves: this process only finishes its sessions */
static const char *config_path; /* NULL: the embedded default */
static uv_signal_t sig_int, sig_term, sig_hup, sig_usr1, sig_usr2;
static gw_health *health;   /* backend health: probes on the main loop (worker 0) */
static uv_timer_t watchdog; /* systemd WatchdogSec: pings from the main loop, so a stuck loop
                             * stops them and systemd restarts the gateway */

static void usage(FILE *f)
{
    fprintf(f, "usage: ftpsgate [-c FILE]   run in the foreground (default: embedded config)\n"
               "       ftpsgate -t [-c FILE] check the configuration, print problems or \"ok\"\n"
               "       ftpsgate -s reload [-c FILE]\n"
               "                             reload the running gateway (its control_socket),\n"
               "                             wait: exit 0 once the new configuration serves\n"
               "       ftpsgate -s upgrade [-c FILE]\n"
               "                             start the binary on disk in place of the running\n"
               "                             gateway without closing a port; exit 0 once it\n"
               "                             serves (the old one finishes its sessions)\n"
               "       ftpsgate -V           print versions\n"
               "       ftpsgate -h           this help\n");
}

/* Where the generated certificate lives when [tls] names none. */
static void state_dir(char *out, size_t cap)
{
    const char *d = getenv("FTPSGATE_STATE_DIR"), *x = getenv("XDG_STATE_HOME"),
               *h = getenv("HOME");
    if (d && *d)
        snprintf(out, cap, "%s", d);
    else if (x && *x)
        snprintf(out, cap, "%s/ftpsgate", x);
    else if (h && *h)
        snprintf(out, cap, "%s/.local/state/ftpsgate", h);
    else
        snprintf(out, cap, "/tmp/ftpsgate-%u", (unsigned)getuid());
}

static int mkdirs(const char *path)
{
    char tmp[GW_PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return (mkdir(tmp, 0700) == 0 || errno == EEXIST) ? 0 : -1;
}

static int ensure_cert(gw_config *cfg)
{
    if (cfg->cert[0])
        return 0;
    char dir[GW_PATH_MAX - 32], err[512];
    state_dir(dir, sizeof dir);
    if (mkdirs(dir) != 0 ||
        gw_tls_ensure_selfsigned(dir, cfg->cert, cfg->key, sizeof cfg->cert, err, sizeof err)) {
        GW_LOG_ERR(0,
                   "event=start_failed reason=\"cannot prepare a self-signed certificate in "
                   "%s\"",
                   dir);
        return -1;
    }
    GW_LOG_INFO(0, "event=selfsigned_cert state_dir=%s cert=%s", dir, cfg->cert);
    return 0;
}

/* Whether the backend's TLS settings are below the gateway's defaults (min_version or
 * max_version below TLSv1.2, any ciphers list, @SECLEVEL=0/1): 1 with what was lowered
 * written to out as key=value pairs ("min_version=TLSv1 ciphers=\"DEFAULT:@SECLEVEL=0\"
 * seclevel=lowered"), else 0. A backend without TLS is never weak. */
static int backend_weak_tls(const gw_backend_conf *b, char *out, size_t cap)
{
    size_t used = 0;
    if (cap)
        out[0] = '\0';
    if (b->tls == GW_BE_TLS_NONE)
        return 0; /* no TLS toward it: nothing was lowered */
    if (b->min_version != GW_TLS_ANY && b->min_version < GW_TLS_1_2) {
        int n = snprintf(out, cap, "min_version=%s", gw_tls_version_name(b->min_version));
        used = n > 0 && (size_t)n < cap ? (size_t)n : used;
    }
    if (b->max_version != GW_TLS_ANY && b->max_version < GW_TLS_1_2) {
        int n = snprintf(out + used, cap - used, "%smax_version=%s", used ? " " : "",
                         gw_tls_version_name(b->max_version));
        used = n > 0 && (size_t)n < cap - used ? used + (size_t)n : used;
    }
    if (b->ciphers[0]) {
        /* Any list replaces OpenSSL's secure default; @SECLEVEL=0/1 also allows SHA-1 and
         * short keys. The list is quoted, it may hold spaces. */
        int n = snprintf(out + used, cap - used, "%sciphers=\"%s\"", used ? " " : "", b->ciphers);
        used = n > 0 && (size_t)n < cap - used ? used + (size_t)n : used;
        if (strstr(b->ciphers, "@SECLEVEL=0") || strstr(b->ciphers, "@SECLEVEL=1")) {
            n = snprintf(out + used, cap - used, " seclevel=lowered");
            used = n > 0 && (size_t)n < cap - used ? used + (size_t)n : used;
        }
    }
    return used > 0;
}

/* A backend whose TLS was lowered below the gateway's defaults (for a legacy server) says so
 * at start and at every reload, once per backend. */
static void warn_weak_tls(const gw_config *cfg)
{
    char what[GW_PATH_MAX + 96];
    for (int i = 0; i < cfg->n_backends; i++)
        if (backend_weak_tls(&cfg->backends[i], what, sizeof what))
            GW_LOG_WARN(0,
                        "event=weak_tls backend=%s %s note=\"TLS toward this backend is "
                        "below the gateway's defaults\"",
                        cfg->backends[i].name, what);
}

/* What start needs beyond a file that parses (-t checks the same, and start before binding,
 * so a file that cannot start exits 1 with its line): err gets "FILE:LINE: [section] key:
 * problem". */
static int check_config(const gw_config *cfg, char *err, size_t cap)
{
    gw_cfg_where where = {NULL, 0, NULL};
    char problem[1024];
    int r = 0;
    char dir[GW_PATH_MAX], path[GW_PATH_MAX];
    state_dir(dir, sizeof dir);
    if (cfg->user[0] && geteuid() == 0 && !getpwnam(cfg->user)) { /* as drop_privileges */
        where = (gw_cfg_where){"global", 0, "user"};
        snprintf(problem, sizeof problem, "no such user %s", cfg->user);
        r = -1;
    } else if (gw_control_path(cfg, dir, path, sizeof path, problem, sizeof problem) != 0) {
        where = (gw_cfg_where){"global", 0, "control_socket"};
        r = -1;
    } else {
        r = gw_generation_check(cfg, &where, problem, sizeof problem);
    }
    const char *key = NULL;
    if (r == 0 && (r = gw_admin_check(cfg, &key, problem, sizeof problem)) != 0)
        where = (gw_cfg_where){"global", 0, key};
    if (r != 0)
        gw_cfg_where_format(cfg, &where, problem, err, cap);
    return r;
}

static int load(gw_config *cfg, char *err, size_t cap)
{
    return config_path ? gw_config_load_file(config_path, cfg, err, cap)
                       : gw_config_parse(gw_config_default_ini, strlen(gw_config_default_ini),
                                         "<embedded default>", cfg, err, cap);
}

/* Reload (SIGHUP): new settings and certificates for new sessions; live sessions keep
 * theirs. The file is parsed here, then every worker prepares it and all switch, or none
 * (worker.c); reload_finished hears the outcome. One at a time: a request meanwhile runs
 * once the current one is over (it may have read the file before the last edit). */
static gw_config *reloading; /* the configuration being applied, NULL when none */
static bool reload_again;

static void notify_ready(uv_loop_t *loop, const char *status);
static void start_reload(void);
static void start_upgrade(void);

/* systemd hears the process that serves: after a hand-over, the new one (MAINPID=). */
static void notify(const char *text)
{
    if (!handed_over)
        (void)gw_notify(text);
}

/* The outcome, told to the log, the metric and systemd. */
static void reload_finished(bool ok, const char *why)
{
    gw_metric_reload(ok);
    char status[1200];
    if (ok) {
        GW_LOG_INFO(0, "event=reload_complete workers=%d", gw_workers_count());
        snprintf(status, sizeof status, "serving, reloaded");
    } else {
        GW_LOG_ERR(0, "event=reload_failed reason=\"%s\" note=\"old configuration stays\"", why);
        snprintf(status, sizeof status, "serving, reload failed: %s; old configuration stays", why);
    }
    for (char *p = status; *p; p++)
        if (*p == '\n')
            *p = ' '; /* STATUS= is one line */
    if (!stopping)    /* no READY=1 after STOPPING=1 */
        notify_ready(uv_default_loop(), status);
    gw_control_reload_finished(ok, why);
}

/* Every worker switched (ok) or every one kept the old generation. */
static void on_reload_done(bool ok, const char *err, void *arg)
{
    gw_config *cfg = reloading;
    reloading = NULL;
    if (ok) {
        /* Process-wide settings, on the main thread where the probes run. */
        gw_log_set_level(cfg->log_level);
        gw_log_set_json(cfg->log_json);
        if (health && gw_health_configure(health, cfg) != 0)
            GW_LOG_ERR(0, "event=health_reload_failed reason=\"out of memory\"");
        gw_admin_config(cfg);
    }
    reload_finished(ok, err);
    gw_config_free(cfg);
    free(cfg);
    if (reload_again && !stopping) {
        reload_again = false;
        start_reload();
    }
}

static void start_reload(void)
{
    if (stopping)
        return;
    if (reloading) {
        reload_again = true;
        return;
    }
    if (handed_over) {
        GW_LOG_INFO(0, "event=reload_ignored note=\"handed over to a new process\"");
        return;
    }
    char msg[80];
    snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)gw_notify_monotonic_usec());
    notify(msg);
    gw_control_reload_started(); /* who asked until now hears this reload's outcome */
    if (upgrading) {
        reload_finished(false, "an upgrade is under way");
        return;
    }
    gw_config *cfg = calloc(1, sizeof *cfg);
    char err[1024] = "out of memory";
    int r = cfg ? load(cfg, err, sizeof err) : -1;
    if (r == 0 && ensure_cert(cfg) != 0) {
        snprintf(err, sizeof err, "cannot prepare a self-signed certificate");
        r = -1;
    }
    if (r != 0) {
        gw_config_free(cfg);
        free(cfg);
        reload_finished(false, err);
        return;
    }
    warn_weak_tls(cfg);
    reloading = cfg;
    if (gw_workers_reload(cfg, on_reload_done, NULL) != 0)
        on_reload_done(false, "a reload is already under way", NULL);
}

/* control_socket from a file that does not parse, read leniently: the [global] line
 * "control_socket = VALUE" (comments after a blank cut); empty when absent. */
static void peek_control_socket(const char *file, char *out, size_t cap)
{
    char line[1024];
    bool global = false;
    FILE *f = fopen(file, "r");
    out[0] = 0;
    while (f && fgets(line, sizeof line, f)) {
        char *p = line + strspn(line, " \t");
        p[strcspn(p, "\r\n")] = 0;
        if (*p == '[') {
            global = strncmp(p, "[global]", 8) == 0;
            continue;
        }
        size_t k = strlen("control_socket");
        if (!global || strncmp(p, "control_socket", k) != 0)
            continue;
        p += k + strspn(p + k, " \t");
        if (*p++ != '=')
            continue;
        p += strspn(p, " \t");
        for (char *c = p; *c; c++)
            if ((*c == ';' || *c == '#') && (c == p || c[-1] == ' ' || c[-1] == '\t')) {
                *c = 0;
                break;
            }
        size_t n = strlen(p);
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            p[--n] = 0;
        snprintf(out, cap, "%s", p);
    }
    if (f)
        fclose(f);
}

/* -s COMMAND: to the running gateway through its control socket; its answer decides the
 * exit status (0 done, 1 the gateway says it failed, 2 no answer). */
static int send_command(gw_config *cfg, const char *command)
{
    char dir[GW_PATH_MAX], sock[GW_PATH_MAX], out[1400];
    state_dir(dir, sizeof dir);
    int r = gw_control_path(cfg, dir, sock, sizeof sock, out, sizeof out);
    gw_config_free(cfg);
    if (r != 0) {
        fprintf(stderr, "ftpsgate: control_socket: %s\n", out);
        return 1;
    }
    if (!sock[0]) {
        fprintf(stderr, "ftpsgate: control_socket = off: no way to reach the gateway\n");
        return 2;
    }
    r = gw_control_send(sock, command, 90, out, sizeof out);
    if (r == 0)
        printf("%s\n", out);
    else
        fprintf(stderr, "ftpsgate: %s%s%s\n", r == 1 ? command : "", r == 1 ? " failed: " : "",
                out);
    return r;
}

/* The control socket (-s reload): a gateway without one still serves. */
static void start_control(const gw_config *cfg, uv_loop_t *loop)
{
    char dir[GW_PATH_MAX], sock[GW_PATH_MAX], err[GW_PATH_MAX + 128];
    state_dir(dir, sizeof dir);
    if (gw_control_path(cfg, dir, sock, sizeof sock, err, sizeof err) != 0 || !sock[0])
        return; /* off (checked by check_config) */
    if (!cfg->control_socket[0])
        (void)mkdirs(dir);
    gw_control_on_upgrade(start_upgrade);
    if (gw_control_start(loop, sock, start_reload, err, sizeof err) != 0)
        GW_LOG_WARN(0,
                    "event=control_socket_failed reason=\"%s\" note=\"ftpsgate -s cannot "
                    "reach this gateway\"",
                    err);
}

/* [global] user: after binding (990/21 need root), run as an unprivileged user. Ports below
 * 1024 cannot be bound again afterwards: active_source_port falls back to any port, and a
 * reload cannot add a privileged listener. */
static int drop_privileges(const char *user)
{
    if (!user[0])
        return 0;
    if (geteuid() != 0) {
        GW_LOG_INFO(0, "event=user_ignored user=%s note=\"not started as root\"", user);
        return 0;
    }
    struct passwd *pw = getpwnam(user);
    if (!pw) {
        GW_LOG_ERR(0, "event=start_failed reason=\"[global] user: no such user %s\"", user);
        fprintf(stderr, "ftpsgate: [global] user: no such user %s\n", user);
        return -1;
    }
    if (setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0 ||
        setuid(0) == 0) {
        GW_LOG_ERR(0, "event=start_failed reason=\"cannot drop privileges to %s\"", user);
        fprintf(stderr, "ftpsgate: cannot drop privileges to %s\n", user);
        return -1;
    }
    GW_LOG_INFO(0, "event=privileges_dropped user=%s uid=%u", user, (unsigned)pw->pw_uid);
    return 0;
}

/* systemd (Type=notify): the readiness protocol, see notify.h. Without NOTIFY_SOCKET these
 * do nothing. */
static void on_watchdog(uv_timer_t *t)
{
    notify("WATCHDOG=1");
}

static void notify_ready(uv_loop_t *loop, const char *status)
{
    char msg[1400];
    snprintf(msg, sizeof msg, "READY=1\nSTATUS=%s, %d worker(s)\nMAINPID=%ld", status,
             gw_workers_count(), (long)getpid());
    notify(msg);
    uint64_t usec = gw_notify_watchdog_usec();
    if (usec && !uv_is_active((uv_handle_t *)&watchdog)) {
        uint64_t ms = usec / 2000 ? usec / 2000 : 1;
        uv_timer_init(loop, &watchdog);
        uv_timer_start(&watchdog, on_watchdog, 0, ms);
    }
}

/* Hitless upgrade (upgrade.h). Every worker has stopped accepting: from now on every new
 * connection is the new process's, and `ftpsgate -s upgrade` may say so. */
static long new_pid;

static void on_listeners_closed(void)
{
    char msg[128];
    snprintf(msg, sizeof msg, "upgraded: new process %ld serves", new_pid);
    gw_control_upgrade_finished(true, msg);
    gw_control_release();
}

/* The new process serves or failed. */
static void on_upgrade_done(bool ok, long pid, const char *text)
{
    upgrading = false;
    char msg[256];
    if (!ok) {
        gw_control_upgrade_finished(false, text);
        snprintf(msg, sizeof msg, "STATUS=serving, upgrade failed: %s", text);
        notify(msg);
        return;
    }
    if (stopping) { /* a stop asked meanwhile wins: the new process stops too */
        GW_LOG_INFO(0, "event=upgrade_stopped new_pid=%ld reason=\"stopping\"", pid);
        kill((pid_t)pid, SIGTERM);
        return;
    }
    GW_LOG_INFO(0,
                "event=upgrade_handed_over new_pid=%ld note=\"sessions here finish within "
                "upgrade_grace\"",
                pid);
    new_pid = pid;
    handed_over = true; /* from now on systemd hears the new process only */
    if (uv_is_active((uv_handle_t *)&watchdog))
        uv_timer_stop(&watchdog);
    gw_admin_quiesce();
    gw_health_stop(health);
    gw_workers_hand_over(on_listeners_closed); /* then `-s upgrade` hears "ok" */
}

static void start_upgrade(void)
{
    if (upgrading)
        return; /* its client hears the outcome of the one under way */
    char err[512];
    if (stopping || handed_over || reloading) {
        gw_control_upgrade_finished(false, reloading ? "a reload is under way"
                                                     : "the gateway is stopping");
        return;
    }
    if (gw_upgrade_start(uv_default_loop(), health, on_upgrade_done, err, sizeof err) != 0) {
        GW_LOG_ERR(0, "event=upgrade_failed reason=\"%s\"", err);
        gw_control_upgrade_finished(false, err);
        return;
    }
    upgrading = true;
}

static void on_signal(uv_signal_t *h, int signum)
{
    if (signum == SIGUSR1) { /* log rotation: the xferlog is reopened by path */
        char err[GW_PATH_MAX + 64] = "";
        int failed, n = gw_logfile_reopen_all(&failed, err, sizeof err);
        if (failed)
            GW_LOG_ERR(0, "event=logs_reopen_failed reopened=%d failed=%d reason=\"%s\"", n, failed,
                       err);
        else
            GW_LOG_INFO(0, "event=logs_reopened files=%d", n);
        return;
    }
    if (signum == SIGHUP) {
        start_reload();
        return;
    }
    if (signum == SIGUSR2) { /* as `-s upgrade`, for a gateway without control_socket */
        GW_LOG_INFO(0, "event=upgrade_requested signal=%d", signum);
        start_upgrade();
        return;
    }
    if (!stopping)
        notify("STOPPING=1\nSTATUS=stopping: sessions finish within shutdown_grace");
    gw_control_stop(); /* a client waiting for a reload hears the connection close */
    GW_LOG_INFO(0, "event=%s signal=%d", stopping ? "stop_now_requested" : "stop_requested",
                signum);
    stopping = true;
    gw_admin_set_stopping();
    gw_health_stop(health);
    gw_workers_stop();
}

int main(int argc, char **argv)
{
    const char *path = NULL; /* as given; config_path once running */
    bool test_only = false;
    const char *command = NULL; /* -s */
    int opt;
    gw_upgrade_remember(argc, argv);
    while ((opt = getopt(argc, argv, "c:ts:Vh")) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 's':
            if (strcmp(optarg, "reload") != 0 && strcmp(optarg, "upgrade") != 0) {
                fprintf(stderr, "ftpsgate: -s %s: unknown command (reload, upgrade)\n", optarg);
                return 1;
            }
            command = optarg;
            break;
        case 't':
            test_only = true;
            break;
        case 'V':
            printf("ftpsgate %s\nOpenSSL %s\nlibuv %s\n", GW_VERSION,
                   OpenSSL_version(OPENSSL_VERSION), uv_version_string());
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 1;
    }
    static gw_config cfg;
    char err[1024];
    int r = path ? gw_config_load_file(path, &cfg, err, sizeof err)
                 : gw_config_parse(gw_config_default_ini, strlen(gw_config_default_ini),
                                   "<embedded default>", &cfg, err, sizeof err);
    if (r != 0 && command && path && access(path, R_OK) == 0) {
        /* The running gateway is asked all the same: it says why the file does not load,
         * counts the failure and tells systemd. */
        memset(&cfg, 0, sizeof cfg);
        peek_control_socket(path, cfg.control_socket, sizeof cfg.control_socket);
        r = 0;
    }
    if (r != 0) {
        fprintf(stderr, "ftpsgate: %s\n", err);
        return 1;
    }
    if (command)
        return send_command(&cfg, command);
    config_path = path;
    /* -t: warnings (weak TLS, a backend name that does not resolve yet) but not the
     * information lines of a start. */
    gw_log_set_level(test_only && cfg.log_level > GW_LOG_WARN ? GW_LOG_WARN : cfg.log_level);
    gw_log_set_json(cfg.log_json);
    signal(SIGPIPE, SIG_IGN);
    if (ensure_cert(&cfg) != 0) {
        gw_config_free(&cfg);
        return 2;
    }
    if (!test_only) /* the workers log the same warnings once, building their own */
        gw_log_set_level(GW_LOG_ERROR);
    r = check_config(&cfg, err, sizeof err);
    gw_log_set_level(test_only && cfg.log_level > GW_LOG_WARN ? GW_LOG_WARN : cfg.log_level);
    if (r != 0) {
        if (!test_only)
            GW_LOG_ERR(0, "event=start_failed reason=\"%s\"", err);
        fprintf(stderr, "ftpsgate: %s\n", err);
        gw_config_free(&cfg);
        return 1;
    }
    if (test_only) {
        warn_weak_tls(&cfg);
        printf("ok\n");
        gw_config_free(&cfg);
        return 0;
    }
    warn_weak_tls(&cfg);
    if (gw_upgrade_child_init(err, sizeof err) != 0) { /* before the listeners: adopted */
        GW_LOG_ERR(0, "event=start_failed reason=\"%s\"", err);
        fprintf(stderr, "ftpsgate: %s\n", err);
        gw_config_free(&cfg);
        return 2;
    }
    uv_loop_t *loop = uv_default_loop();
    /* Handlers first: a SIGHUP that arrives once the ports listen must not kill us. */
    uv_signal_init(loop, &sig_int);
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_hup);
    uv_signal_init(loop, &sig_usr1);
    uv_signal_init(loop, &sig_usr2);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_start(&sig_hup, on_signal, SIGHUP);
    uv_signal_start(&sig_usr1, on_signal, SIGUSR1);
    uv_signal_start(&sig_usr2, on_signal, SIGUSR2);
    health = gw_health_new();
    if (!health || gw_health_configure(health, &cfg) != 0) {
        GW_LOG_ERR(0, "event=start_failed reason=\"out of memory\"");
        gw_health_free(health);
        gw_config_free(&cfg);
        return 2;
    }
    gw_upgrade_apply_health(health); /* started by an upgrade: what the old process knew */
    if (gw_workers_start(cfg.workers, loop, &cfg, health, err, sizeof err) != 0) {
        GW_LOG_ERR(0, "event=start_failed reason=\"%s\"", err);
        fprintf(stderr, "ftpsgate: %s\n", err);
        gw_health_free(health);
        gw_config_free(&cfg);
        return 2;
    }
    start_control(&cfg, loop); /* before any thread: it sets the umask around bind */
    if (gw_admin_start(&cfg, health, err, sizeof err) != 0) {
        GW_LOG_ERR(0, "event=start_failed reason=\"%s\"", err);
        fprintf(stderr, "ftpsgate: %s\n", err);
        gw_control_stop();
        gw_workers_stop();
        gw_workers_finish();
        gw_health_free(health);
        gw_config_free(&cfg);
        return 2;
    }
    if (drop_privileges(cfg.user) != 0 || gw_workers_run() != 0) {
        gw_control_stop();
        gw_admin_stop();
        gw_workers_stop();
        gw_workers_finish();
        gw_health_free(health);
        gw_config_free(&cfg);
        return 2;
    }
    gw_health_start(health, loop);
    GW_LOG_INFO(0, "event=started version=%s config=\"%s\" workers=%d", GW_VERSION,
                path ? path : "<embedded default>", gw_workers_count());
    gw_config_free(&cfg);          /* the generations and health hold their own copies */
    notify_ready(loop, "serving"); /* every listener bound, every worker running */
    if (gw_upgrade_is_child()) {   /* MAINPID= above first: systemd follows, then the old stops */
        gw_control_serving();
        GW_LOG_INFO(0, "event=upgraded pid=%ld", (long)getpid());
    }
    gw_upgrade_child_ready();
    uv_run(loop, UV_RUN_DEFAULT);
    /* Worker 0's sessions are gone (its stop ended the loop): wait for the others. */
    gw_control_stop();
    gw_workers_finish();
    if (reloading) { /* stopped while every worker was asked: nothing will answer now */
        gw_config_free(reloading);
        free(reloading);
        reloading = NULL;
    }
    gw_admin_stop();
    gw_health_free(health); /* its handles closed with the loop's last run */
    health = NULL;
    uv_loop_close(loop);
    GW_LOG_INFO(0, "event=stopped");
    return 0;
}
