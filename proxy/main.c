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
#include "health.h"
#include "log.h"
#include "logfile.h"
#include "notify.h"
#include "metrics.h"
#include "tls.h"
#include "version.h"
#include "worker.h"

static bool stopping;
static const char *config_path; /* NULL: the embedded default */
static uv_signal_t sig_int, sig_term, sig_hup, sig_usr1;
static gw_health *health;   /* backend health: probes on the main loop (worker 0) */
static uv_timer_t watchdog; /* systemd WatchdogSec: pings from the main loop, so a stuck loop
                             * stops them and systemd restarts the gateway */

static void usage(FILE *f)
{
    fprintf(f, "usage: ftpsgate [-c FILE]   run in the foreground (default: embedded config)\n"
               "       ftpsgate -t [-c FILE] check the configuration, print problems or \"ok\"\n"
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
static int gw_backend_weak_tls(const gw_backend_conf *b, char *out, size_t cap)
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
        if (gw_backend_weak_tls(&cfg->backends[i], what, sizeof what))
            GW_LOG_WARN(0,
                        "event=weak_tls backend=%s %s note=\"TLS toward this backend is "
                        "below the gateway's defaults\"",
                        cfg->backends[i].name, what);
}

static int load(gw_config *cfg, char *err, size_t cap)
{
    return config_path ? gw_config_load_file(config_path, cfg, err, cap)
                       : gw_config_parse(gw_config_default_ini, strlen(gw_config_default_ini),
                                         "<embedded default>", cfg, err, cap);
}

/* SIGHUP: new settings and certificates for new sessions; live sessions keep theirs. Each
 * worker switches on its own loop and logs the outcome. */
static bool reload(void)
{
    bool ok = false;
    if (stopping)
        return false;
    gw_config *cfg = calloc(1, sizeof *cfg);
    char err[1024] = "see the previous line";
    if (!cfg)
        return false;
    if (load(cfg, err, sizeof err) != 0 || ensure_cert(cfg) != 0) {
        GW_LOG_ERR(0, "event=reload_failed reason=\"%s\" note=\"old configuration stays\"", err);
        gw_metric_reload(false);
    } else {
        warn_weak_tls(cfg);
        gw_workers_reload(cfg); /* each worker gets its own copy */
        ok = true;
    }
    gw_config_free(cfg);
    free(cfg);
    return ok;
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
    gw_notify("WATCHDOG=1");
}

static void notify_ready(uv_loop_t *loop, const char *status)
{
    char msg[200];
    snprintf(msg, sizeof msg, "READY=1\nSTATUS=%s, %d worker(s)\nMAINPID=%ld", status,
             gw_workers_count(), (long)getpid());
    gw_notify(msg);
    uint64_t usec = gw_notify_watchdog_usec();
    if (usec && !uv_is_active((uv_handle_t *)&watchdog)) {
        uint64_t ms = usec / 2000 ? usec / 2000 : 1;
        uv_timer_init(loop, &watchdog);
        uv_timer_start(&watchdog, on_watchdog, 0, ms);
    }
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
        if (stopping)
            return; /* no READY=1 after STOPPING=1 */
        char msg[80];
        snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
                 (unsigned long long)gw_notify_monotonic_usec());
        gw_notify(msg);
        /* Parsed and posted to every worker (each applies it on its own loop). */
        notify_ready(h->loop, reload() ? "serving, reloaded"
                                       : "serving, reload failed: old configuration stays");
        return;
    }
    if (!stopping)
        gw_notify("STOPPING=1\nSTATUS=stopping: sessions finish within shutdown_grace");
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
    int opt;
    while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
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
    if (r != 0) {
        fprintf(stderr, "ftpsgate: %s\n", err);
        return 1;
    }
    if (test_only) {
        printf("ok\n");
        gw_config_free(&cfg);
        return 0;
    }
    config_path = path;
    gw_log_set_level(cfg.log_level);
    gw_log_set_json(cfg.log_json);
    signal(SIGPIPE, SIG_IGN);
    if (ensure_cert(&cfg) != 0) {
        gw_config_free(&cfg);
        return 2;
    }
    warn_weak_tls(&cfg);
    uv_loop_t *loop = uv_default_loop();
    /* Handlers first: a SIGHUP that arrives once the ports listen must not kill us. */
    uv_signal_init(loop, &sig_int);
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_hup);
    uv_signal_init(loop, &sig_usr1);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_start(&sig_hup, on_signal, SIGHUP);
    uv_signal_start(&sig_usr1, on_signal, SIGUSR1);
    health = gw_health_new();
    if (!health || gw_health_configure(health, &cfg) != 0) {
        GW_LOG_ERR(0, "event=start_failed reason=\"out of memory\"");
        gw_health_free(health);
        gw_config_free(&cfg);
        return 2;
    }
    if (gw_workers_start(cfg.workers, loop, &cfg, health, err, sizeof err) != 0) {
        GW_LOG_ERR(0, "event=start_failed reason=\"%s\"", err);
        fprintf(stderr, "ftpsgate: %s\n", err);
        gw_health_free(health);
        gw_config_free(&cfg);
        return 2;
    }
    if (gw_admin_start(&cfg, health, err, sizeof err) != 0) {
        GW_LOG_ERR(0, "event=start_failed reason=\"%s\"", err);
        fprintf(stderr, "ftpsgate: %s\n", err);
        gw_workers_stop();
        gw_workers_finish();
        gw_health_free(health);
        gw_config_free(&cfg);
        return 2;
    }
    if (drop_privileges(cfg.user) != 0 || gw_workers_run() != 0) {
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
    uv_run(loop, UV_RUN_DEFAULT);
    /* Worker 0's sessions are gone (its stop ended the loop): wait for the others. */
    gw_workers_finish();
    gw_admin_stop();
    gw_health_free(health); /* its handles closed with the loop's last run */
    health = NULL;
    uv_loop_close(loop);
    GW_LOG_INFO(0, "event=stopped");
    return 0;
}
