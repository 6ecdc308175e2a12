#!/usr/bin/env bash
# Install the Debian packages needed to build and test ftpsgate, only those missing.
# Quick (one line of output) when everything is present; needs root only to install.
#   .ci/deps.sh        everything: build, `make test`, lint, fuzz, valgrind (`make deps`)
#   .ci/deps.sh demo   only what `make run` needs: a C compiler and the libraries, the demo
#                      server (vsftpd) and a client (lftp); 62 packages on a minbase Debian 12
#                      where everything is 199 (README "Checked on a fresh machine")
#   .ci/deps.sh bench  only the extra tools of `make bench-floor` / `make bench QUICK=1`
#                      (tests/bench/floor.py): not needed by CI or `make test`
set -euo pipefail

# `make run` (tests/tools/demo.sh): gcc rather than build-essential (no g++, dpkg-dev, perl);
# no libmicrohttpd-dev (its GnuTLS development chain is 14 packages: `make run` builds with
# ADMIN=no when it is missing); vsftpd as the plain-FTP backend; lftp; ps (procps).
DEMO_PACKAGES=(
  gcc make libc6-dev pkg-config libuv1-dev libssl-dev
  libcrypt-dev  # crypt_r (proxy/crypt_check.c): auth = file users, admin_users
  libldap-dev  # libldap (proxy/auth_ldap.c): auth = ldap
  libpam0g-dev  # auth = pam (proxy/pam_check.c)
  vsftpd lftp procps
)
# The rest of `make test` and CI.
TEST_PACKAGES=(
  whois  # mkpasswd: users-file hashes in tests/integration/test_edge_auth.py
  build-essential libcmocka-dev clang clang-format libclang-rt-14-dev valgrind
  libmicrohttpd-dev  # admin_listen (proxy/admin.c)
  python3-pyftpdlib python3-pytest python3-openssl python3-cryptography
  python3-pytest-xdist  # the integration suite runs in parallel (Makefile TEST_JOBS)
  curl wget openssl iproute2 util-linux haproxy
  fail2ban  # fail2ban-regex checks config/fail2ban-ftpsgate.conf (tests/integration/test_ban.py)
  systemd logrotate prometheus strace
  ftp-ssl  # netkit ftp-ssl: uploads without close_notify (tests/integration/test_tls_policy.py)
  slapd ldap-utils  # a real LDAP server for auth = ldap (tests/integration/test_edge_ldap.py)
  rclone  # Go's shared TLS session cache: sibling resumption (tests/integration/test_resumption.py)
)

# The relay floor (socat) and the CPU budget (perf) of tests/bench/floor.py.
BENCH_PACKAGES=(socat linux-perf)

case ${1:-all} in
  demo) PACKAGES=("${DEMO_PACKAGES[@]}") set=demo ;;
  bench) PACKAGES=("${BENCH_PACKAGES[@]}") set=bench ;;
  all) PACKAGES=("${DEMO_PACKAGES[@]}" "${TEST_PACKAGES[@]}") set=all ;;
  *) echo "usage: $0 [demo|all|bench]" >&2; exit 2 ;;
esac

# pure-ftpd (a test peer, not for the demo) is unpacked apart: it conflicts with vsftpd in apt.
if [[ $set == all ]]; then
  "$(dirname "$0")/pure-ftpd.sh" || echo "deps: pure-ftpd not available (its tests skip)" >&2
fi

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
  echo "deps ($set): all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "deps ($set): installing ${missing[*]}"
if ((EUID != 0)); then
  echo "deps: must run as root to install packages" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive

# No FTP daemon may start on port 21 when vsftpd is installed, nor slapd on 389 (the tests
# start their own): a policy-rc.d that refuses every service start, created before any
# install and only if there is none yet.
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\n# created by ftpsgate .ci/deps.sh: no service starts on install\nexit 101\n' \
    >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
fi

apt_opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
apt-get "${apt_opts[@]}" update -q
apt-get "${apt_opts[@]}" install -y -q --no-install-recommends "${missing[@]}"
echo "deps: done"
