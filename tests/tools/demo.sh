#!/usr/bin/env bash
# `make run`: a plain FTP backend on 127.0.0.1:2121 serving build/demo/ftproot, and
# build/ftpsgate with its embedded default configuration in front of it (implicit FTPS on
# 127.0.0.1:9990, explicit FTPS on 127.0.0.1:2100). Ctrl-C stops both (exit status 0).
#
# The backend is vsftpd with anonymous logins: read everything, upload only into upload/.
# (Anonymous rather than a demo/demo account, so the demo adds no system user with a known
# password.) Without root or without vsftpd, pyftpdlib serves the same folder the same way.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

GATEWAY=${FTPSGATE_BIN:-build/ftpsgate}
PYTHON=/usr/bin/python3
DEMO=$PWD/build/demo
ROOT=$DEMO/ftproot
HOST=127.0.0.1
BACKEND_PORT=2121
PASV_PORTS=(2150 2199) # the backend's passive ports (the gateway's are 30000-30099)

die() { echo "demo: $*" >&2; exit 1; }

[[ -x $GATEWAY ]] || die "$GATEWAY is missing: run 'make' first"

listener_on() { # what listens on TCP port $1: ss names the process; without iproute2
  # (`make run` does not install it), /proc/net/tcp says that something does
  if command -v ss >/dev/null; then
    ss -Hltnp "sport = :$1" 2>/dev/null
  else
    awk -v port="$(printf ':%04X' "$1")" -v n="$1" '$4 == "0A" && substr($2, length($2) - 4) == port {
      print "a listener on port " n; exit }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
  fi
}
for port in "$BACKEND_PORT" 9990 2100; do
  if [[ -n $(listener_on "$port") ]]; then
    echo "demo: port $port is already taken on this machine:" >&2
    listener_on "$port" >&2
    case $port in
      "$BACKEND_PORT") echo "demo: the demo backend must listen on $HOST:$port (the gateway's embedded default backend); stop whatever holds it, then run 'make run' again" >&2 ;;
      *) echo "demo: the gateway's embedded default listens on $HOST:$port; stop whatever holds it, then run 'make run' again" >&2 ;;
    esac
    exit 1
  fi
done

# --- the folder served -------------------------------------------------------------------
mkdir -p "$ROOT/upload" "$DEMO/empty"
cat >"$ROOT/README.txt" <<'TXT'
This folder is served by a plain FTP server on 127.0.0.1:2121, and through ftpsgate as
FTPS on 127.0.0.1:9990 (implicit) and 127.0.0.1:2100 (explicit).
Log in anonymously. Everything here can be downloaded; uploads go into upload/.
TXT
[[ -s $ROOT/sample-1MiB.bin ]] || head -c 1048576 /dev/urandom >"$ROOT/sample-1MiB.bin"
chmod 755 "$ROOT" "$ROOT/upload" "$DEMO/empty"
chmod 644 "$ROOT/README.txt" "$ROOT/sample-1MiB.bin"

backend_pid=
backend_name=

# vsftpd: anonymous only, chrooted into ftproot (root-owned, not writable by the ftp user),
# uploads into upload/ (owned by the ftp user).
start_vsftpd() {
  ((EUID == 0)) || { echo "demo: vsftpd needs root; using pyftpdlib" >&2; return 1; }
  [[ -x /usr/sbin/vsftpd ]] || { echo "demo: vsftpd is not installed; using pyftpdlib" >&2; return 1; }
  id ftp >/dev/null 2>&1 || { echo "demo: no 'ftp' user for anonymous vsftpd; using pyftpdlib" >&2; return 1; }
  chown root:root "$ROOT" "$DEMO/empty"
  chown ftp:ftp "$ROOT/upload"
  cat >"$DEMO/vsftpd.conf" <<CONF
listen=YES
listen_ipv6=NO
listen_address=$HOST
listen_port=$BACKEND_PORT
background=NO
seccomp_sandbox=NO
secure_chroot_dir=$DEMO/empty
local_enable=NO
anonymous_enable=YES
anon_root=$ROOT
no_anon_password=YES
write_enable=YES
anon_upload_enable=YES
anon_mkdir_write_enable=YES
anon_umask=022
pasv_enable=YES
pasv_min_port=${PASV_PORTS[0]}
pasv_max_port=${PASV_PORTS[1]}
connect_from_port_20=NO
ftpd_banner=ftpsgate demo backend (vsftpd)
xferlog_enable=YES
xferlog_std_format=NO
log_ftp_protocol=YES
vsftpd_log_file=$DEMO/vsftpd.log
CONF
  chmod 600 "$DEMO/vsftpd.conf"
  : >"$DEMO/vsftpd.out"
  # vsftpd prints start-up errors ("500 OOPS: ...") on fd 0.
  setsid /usr/sbin/vsftpd "$DEMO/vsftpd.conf" 0<>"$DEMO/vsftpd.out" >&0 2>&0 &
  backend_pid=$!
  backend_name="vsftpd (log: build/demo/vsftpd.log)"
  wait_backend || { echo "demo: vsftpd did not start: $(cat "$DEMO/vsftpd.out")" >&2; return 1; }
}

start_pyftpdlib() {
  "$PYTHON" -c 'import pyftpdlib' 2>/dev/null ||
    { echo "demo: pyftpdlib is not installed either: run 'make run' as root (vsftpd), or install python3-pyftpdlib" >&2; return 1; }
  cat >"$DEMO/pyftpd.py" <<'PY'
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
host, port, root, lo, hi = sys.argv[1:]
auth = DummyAuthorizer()
auth.add_anonymous(root, perm="elr")
auth.override_perm("anonymous", root + "/upload", perm="elrwM", recursive=True)
FTPHandler.authorizer = auth
FTPHandler.banner = "ftpsgate demo backend (pyftpdlib)"
FTPHandler.passive_ports = range(int(lo), int(hi) + 1)
FTPServer((host, int(port)), FTPHandler).serve_forever()
PY
  setsid "$PYTHON" -W ignore "$DEMO/pyftpd.py" "$HOST" "$BACKEND_PORT" "$ROOT" \
    "${PASV_PORTS[@]}" </dev/null >"$DEMO/pyftpdlib.log" 2>&1 &
  backend_pid=$!
  backend_name="pyftpdlib (log: build/demo/pyftpdlib.log)"
  wait_backend || { cat "$DEMO/pyftpdlib.log" >&2; return 1; }
}

wait_backend() { # up to 5 s for the backend to listen
  local i
  for ((i = 0; i < 100; i++)); do
    [[ -n $(listener_on "$BACKEND_PORT") ]] && return 0
    kill -0 "$backend_pid" 2>/dev/null || break
    sleep 0.05
  done
  stop_backend
  return 1
}

tree_pids() { # a process and all its descendants
  local child
  echo "$1"
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree_pids "$child"; done
}

stop_backend() { # the backend and its session processes (vsftpd's outlive the listener)
  [[ -n $backend_pid ]] || return 0
  local pids
  pids=$(tree_pids "$backend_pid")
  kill -TERM $pids 2>/dev/null || true
  sleep 0.2
  kill -KILL $pids 2>/dev/null || true
  wait "$backend_pid" 2>/dev/null || true
  backend_pid=
}

trap stop_backend EXIT
# Ctrl-C is how the demo ends: exit 0, so that make does not report "Error 130". (bash runs
# this once the gateway, which gets the same SIGINT from the terminal, has exited.)
trap 'exit 0' INT
trap 'exit 143' TERM

start_vsftpd || start_pyftpdlib || die "no FTP backend could be started on $HOST:$BACKEND_PORT"

cat <<EOF

ftpsgate demo
  backend  $backend_name
           plain FTP on $HOST:$BACKEND_PORT, serving build/demo/ftproot
           anonymous login: download anything, upload into upload/
  gateway  $GATEWAY with its embedded default configuration:
           implicit FTPS on $HOST:9990, explicit FTPS on $HOST:2100,
           a self-signed certificate (hence -k / verify-certificate no)

From another terminal, with lftp (implicit FTPS on 9990, then explicit FTPS on 2100):
  lftp -e 'set ssl:verify-certificate no; set ftp:ssl-protect-data true' ftps://$HOST:9990
  lftp -e 'set ssl:verify-certificate no; set ftp:ssl-allow-anonymous true; set ftp:ssl-force true; set ftp:ssl-protect-data true' ftp://$HOST:2100
(lftp logs in anonymously when the URL names no user, and on an ftp:// URL it skips
AUTH TLS for anonymous logins unless ftp:ssl-allow-anonymous is set: the gateway would then
refuse the login.) Or with curl (\`make deps\` installs it):
  curl -k --ssl-reqd ftps://$HOST:9990/
  curl -k --ssl-reqd -O ftps://$HOST:9990/sample-1MiB.bin
  curl -k --ssl-reqd -T /etc/os-release ftps://$HOST:9990/upload/
  curl -k --ssl-reqd ftp://$HOST:2100/

Ctrl-C stops the gateway and the backend. Gateway log follows.

EOF

"$GATEWAY"
