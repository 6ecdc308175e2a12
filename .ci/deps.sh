#!/usr/bin/env bash
# Install the Debian packages needed to build and test ftpsgate, only those missing.
# Quick (one line of output) when everything is present; needs root only to install.
set -euo pipefail

PACKAGES=(
  build-essential pkg-config libuv1-dev libssl-dev libinih-dev libcmocka-dev
  clang clang-format libclang-rt-14-dev valgrind
  vsftpd python3-pyftpdlib python3-pytest python3-openssl python3-cryptography
  curl lftp wget openssl procps iproute2 util-linux haproxy
  fail2ban  # fail2ban-regex checks config/fail2ban-ftpsgate.conf (tests/integration/test_ban.py)
  systemd logrotate prometheus strace
  ftp-ssl  # netkit ftp-ssl: uploads without close_notify (tests/integration/test_tls_policy.py)
  libmicrohttpd-dev  # admin_listen (proxy/admin.c)
)

# pure-ftpd (a test peer) is unpacked apart: it conflicts with vsftpd in apt.
"$(dirname "$0")/pure-ftpd.sh" || echo "deps: pure-ftpd not available (its tests skip)" >&2

# One dpkg-query for all: it prints the installed ones ("ii "), and skips unknown names.
declare -A installed=()
while read -r pkg status; do
  [[ $status == ii* ]] && installed[${pkg%%:*}]=1
done < <(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null || true)
missing=()
for pkg in "${PACKAGES[@]}"; do
  [[ -n ${installed[$pkg]:-} ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  echo "deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "deps: installing ${missing[*]}"
if ((EUID != 0)); then
  echo "deps: must run as root to install packages" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive

# No FTP daemon may start on port 21 when vsftpd is installed: a policy-rc.d that refuses
# every service start, created before any install and only if there is none yet.
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\n# created by ftpsgate .ci/deps.sh: no service starts on install\nexit 101\n' \
    >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
fi

apt_opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
apt-get "${apt_opts[@]}" update -q
apt-get "${apt_opts[@]}" install -y -q --no-install-recommends "${missing[@]}"
echo "deps: done"
