#!/usr/bin/env bash
# The deployment paths, end to end, with podman (no Docker engine, no registry: only
# Debian's archive). `bash tests/deploy/run.sh` as root; .ci/run's `deploy` stage.
#   1. the image from docker/Dockerfile, on a base made with debootstrap; run alone, -t
#   2. docker/compose.yaml (gateway + legacy server): curl transfers, SHA-256
#   3. docker/compose-haproxy.yml and compose-haproxy-shared.yml with podman-compose: curl,
#      lftp and a resuming ftplib client through HAProxy, again 35 s later (HAProxy's
#      resolver), one gateway stopped, again
#   4. config/ftpsgate.service under systemd 252 as PID 1 (beside 3): a configuration error
#      at start is not restarted, start waits for READY, reload, failing reloads (parse,
#      missing key, a port in use past -t) reported as failed, a hitless upgrade (`-s
#      upgrade`: MainPID follows, a download across it whole), watchdog restart, stop
# Everything it keeps (the base tarball, podman's storage with its layer cache, network
# definitions) lives in FTPSGATE_DEPLOY_CACHE (default /var/cache/ftpsgate-deploy): the
# first run builds (a few minutes), later runs reuse the layers. Containers run in a private
# network namespace, so the published ports (990, 21, 30000-30059...) touch nothing on the
# host. Each step prints its time. `run.sh --prepare` stops after the images.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$PWD

CACHE=${FTPSGATE_DEPLOY_CACHE:-/var/cache/ftpsgate-deploy}
BASE_IMAGE=localhost/ftpsgate-base:bookworm
GATEWAY_IMAGE=localhost/ftpsgate:latest
LEGACY_IMAGE=localhost/ftpsgate-legacy-ftp:latest
HAPROXY_IMAGE=docker.io/library/haproxy:2.6 # the name the compose files use
SYSTEMD_IMAGE=localhost/ftpsgate-systemd:latest
LB_NET=ftpsgate-lb
LB_SUBNET=172.28.0.0/24
NS=ftpsgate-deploy-$$
DEPLOY_PACKAGES=(podman podman-compose runc debootstrap
  golang-github-containernetworking-plugin-dnsname # service names on compose networks
  curl lftp python3 iproute2 util-linux)

((EUID == 0)) || { echo "deploy: must run as root (rootful podman, network namespaces)" >&2; exit 1; }

t_all=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
STEP_TIMES=()
step() { # step NAME CMD...: run CMD in a subshell that stops at its first error; its time
  local name=$1 t0 rc
  shift
  echo
  echo "--- deploy: $name"
  t0=$(date +%s.%N)
  # Not `"$@" || rc=$?`: bash ignores set -e inside a function called left of ||.
  set +e
  (
    set -e
    "$@"
  )
  rc=$?
  set -e
  STEP_TIMES+=("$(printf '%-34s %6s s  %s' "$name" "$(elapsed "$t0")" "$( ((rc == 0)) && echo ok || echo "FAILED ($rc)")")")
  echo "--- deploy: $name: $( ((rc == 0)) && echo ok || echo "FAILED ($rc)") in $(elapsed "$t0") s"
  return "$rc"
}
fail() { echo "deploy: FAIL: $*" >&2; return 1; }

WORK=$(mktemp -d /tmp/ftpsgate-deploy.XXXXXX)
cleanup() {
  local rc=$?
  set +e
  if ((rc != 0)) && [[ -n ${CONTAINERS_CONF:-} ]] && ip netns list 2>/dev/null | grep -qw "$NS"; then
    for f in compose.yaml compose-haproxy.yml compose-haproxy-shared.yml; do
      inns podman-compose -p "deploy-${f%%.*}" -f "docker/$f" down -v >/dev/null 2>&1
    done
    inns podman rm -f -t 0 ftpsgate-deploy-alone >/dev/null 2>&1
    inns podman rm -f -t 0 ftpsgate-deploy-systemd >/dev/null 2>&1
    podman network rm -f "$LB_NET" >/dev/null 2>&1
  fi
  ip netns del "$NS" 2>/dev/null
  echo
  echo "=== deploy summary"
  local line
  for line in "${STEP_TIMES[@]}"; do echo "  $line"; done
  echo "  total $(elapsed "$t_all") s, exit $rc"
  rm -rf "$WORK"
}
trap cleanup EXIT

# One run at a time: the cache, the network definitions and the image names are shared.
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -w 900 9 || { echo "deploy: another run holds $CACHE/lock" >&2; exit 1; }

install_packages() {
  local missing=() pkg
  for pkg in "${DEPLOY_PACKAGES[@]}"; do
    dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null | grep -q '^ii' || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    echo "all ${#DEPLOY_PACKAGES[@]} packages present"
    return 0
  fi
  echo "installing ${missing[*]}"
  local apt_opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
  DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update -q
  DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -q --no-install-recommends "${missing[@]}"
}

# Podman's settings for this machine (and any host without systemd as PID 1): runc (crun
# refuses hybrid cgroups), no default ulimits (their nofile exceeds what the host allows),
# cgroupfs and a file events log (no systemd), storage and networks inside the cache.
podman() { command podman "$@" 9>&-; }
configure_podman() {
  mkdir -p "$CACHE/networks" /run/ftpsgate-deploy
  cat >"$CACHE/containers.conf" <<EOF
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_config_dir = "$CACHE/networks"
EOF
  cat >"$CACHE/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$CACHE/storage"
runroot = "/run/ftpsgate-deploy/storage"
EOF
  export CONTAINERS_CONF=$CACHE/containers.conf CONTAINERS_STORAGE_CONF=$CACHE/storage.conf
  # podman-compose prints every podman command; BUILDAH_FORMAT keeps HEALTHCHECK.
  export BUILDAH_FORMAT=docker
  podman --version
}

# The base image: debootstrap's minbase, trimmed like Docker Hub's debian:bookworm-slim
# (no documentation or locales, apt keeps no lists or caches), kept as a tarball.
make_base() {
  local tarball=$CACHE/bookworm-minbase.tar
  if [[ ! -s $tarball ]]; then
    local root=$WORK/rootfs
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 ||
      { tail -n 20 "$WORK/debootstrap.log"; return 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
      "$root"/usr/share/{doc,man,locale,info}/*
    cat >"$root/etc/apt/sources.list" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    printf 'path-exclude /usr/share/%s/*\n' doc man locale info >"$root/etc/dpkg/dpkg.cfg.d/slim"
    printf 'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n' >"$root/etc/apt/apt.conf.d/slim"
    tar --numeric-owner -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  podman image exists "$BASE_IMAGE" || podman import -q "$tarball" "$BASE_IMAGE"
  podman image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{ printf "base image %.1f MB\n", $1 / 1e6 }'
}

build() { # build TAG DOCKERFILE CONTEXT [ARGS...]
  local tag=$1 file=$2 ctx=$3 log
  shift 3
  log=$WORK/build-${tag##*/}.log
  log=${log//:/-}
  if ! podman build --pull=never --build-arg "BASE=$BASE_IMAGE" -f "$file" -t "$tag" "$@" "$ctx" \
    >"$log" 2>&1; then
    tail -n 40 "$log"
    return 1
  fi
  podman image inspect -f '{{.Size}}' "$tag" | awk -v t="$tag" '{ printf "%s: %.1f MB\n", t, $1 / 1e6 }'
}

build_images() {
  # The two that compose builds, as compose would, but from the local base.
  build "$GATEWAY_IMAGE" docker/Dockerfile . &
  local p1=$!
  build "$LEGACY_IMAGE" docker/legacy-ftp/Dockerfile docker/legacy-ftp &
  local p2=$!
  { build "$HAPROXY_IMAGE" tests/deploy/haproxy.Dockerfile tests/deploy &&
    podman tag "$HAPROXY_IMAGE" localhost/haproxy:2.6; } &
  local p3=$!
  local rc=0
  wait $p1 || rc=1
  wait $p2 || rc=1
  wait $p3 || rc=1
  ((rc == 0)) || return 1
  build "$SYSTEMD_IMAGE" tests/deploy/systemd.Dockerfile tests/deploy --build-arg "GATEWAY=$GATEWAY_IMAGE"
  podman run --rm "$GATEWAY_IMAGE" -V 2>/dev/null
  podman run --rm --entrypoint stat "$GATEWAY_IMAGE" -c 'binary: %s bytes' /usr/local/bin/ftpsgate 2>/dev/null
}

# nsenter, not `ip netns exec`: that one remounts /sys, which hides the cgroup mounts from runc.
# Both close fd 9 (the lock): conmon, which outlives a run's containers, would inherit it.
inns() { nsenter --net="/run/netns/$NS" "$@" 9>&-; }

make_netns() {
  # Left by an interrupted run.
  podman rm -a -f -t 0 >/dev/null 2>&1 || true
  podman pod rm -a -f >/dev/null 2>&1 || true
  podman volume prune -f >/dev/null 2>&1 || true
  ip netns add "$NS"
  inns ip link set lo up
  podman network exists "$LB_NET" && podman network rm -f "$LB_NET" >/dev/null
  podman network create --subnet "$LB_SUBNET" "$LB_NET" >/dev/null
  echo "namespace $NS, network $LB_NET $LB_SUBNET"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }
same() { # same EXPECTED GOT WHAT
  if [[ $(sha "$1") == "$(sha "$2")" ]]; then
    echo "  $3: sha256 ok ($(stat -c %s "$2") bytes)"
  else
    fail "$3: sha256 differs"
  fi
}
CURL=(curl -sS -k --max-time 60)

wait_for() { # wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.3 s
  local limit=$1 what=$2 t0
  shift 2
  t0=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    (($(date +%s) - t0 < limit)) || fail "$what: not within $limit s"
    sleep 0.3
  done
}

# --- 1. the image alone ----------------------------------------------------------------
image_alone() {
  local out
  out=$(podman run --rm "$GATEWAY_IMAGE" -t -c /etc/ftpsgate/ftpsgate.conf 2>&1)
  echo "  -t (shipped sample): $out"
  [[ $out == *ok* ]] || fail "-t on the sample configuration"
  printf '[global]\nbogus = 1\n' >"$WORK/bad.conf"
  if out=$(podman run --rm -v "$WORK/bad.conf:/etc/ftpsgate/ftpsgate.conf:ro" "$GATEWAY_IMAGE" \
    -t -c /etc/ftpsgate/ftpsgate.conf 2>&1); then
    fail "-t accepted an unknown key"
  fi
  echo "  -t (unknown key): $out"
  # Alone, as docker/README.md runs it: non-root, no capability, read-only, the sysctl.
  # --add-host: legacy-ftp resolves at once (no DNS in the namespace) and refuses (no server).
  inns podman run -d --name ftpsgate-deploy-alone --add-host legacy-ftp:127.0.0.1 --cap-drop ALL \
    --security-opt no-new-privileges --read-only \
    --sysctl net.ipv4.ip_unprivileged_port_start=0 \
    -p 990:990 -p 21:21 -p 30000-30019:30000-30019 \
    -v "$REPO/docker/ftpsgate.docker.conf:/etc/ftpsgate/ftpsgate.conf:ro" \
    "$GATEWAY_IMAGE" >/dev/null
  # Its log, not a connect: podman holds the published ports before the gateway listens.
  wait_for 20 "the gateway alone starts" bash -c \
    "podman logs ftpsgate-deploy-alone 2>&1 | grep -q 'event=started'"
  # curl reports the 421 as "(28) Timeout"; the gateway's log says what happened.
  inns "${CURL[@]}" ftps://127.0.0.1/ >/dev/null 2>&1 && fail "a session without a backend succeeded"
  # (conmon writes the log file a moment after the client is told)
  wait_for 10 "the session ends with 'backend unreachable'" bash -c \
    "podman logs ftpsgate-deploy-alone 2>&1 | grep -q 'event=session_close reason=\"backend unreachable\"'"
  # Not asserted: a refused backend may end the session before its TLS handshake has
  # finished (seen with the fuzzers beside this stage); TLS through the image is checked by
  # the compose steps' transfers.
  podman logs ftpsgate-deploy-alone 2>&1 | grep -q 'event=tls_established' ||
    echo "  note: the session ended before its TLS handshake finished"
  echo "  an implicit TLS session without a backend: handshake, then 421 backend unreachable"
  local status
  status=$(inns podman exec ftpsgate-deploy-alone sh -c 'grep -E "^(Uid|CapEff|NoNewPrivs)" /proc/1/status' | tr -s '\t\n' '  ')
  echo "  running: $status"
  [[ $status == *"Uid: 990 990 990 990"* && $status == *"CapEff: 0000000000000000"* ]] ||
    fail "the gateway should run as uid 990 without capabilities"
  inns podman rm -f -t 5 ftpsgate-deploy-alone >/dev/null
}

# --- 2. compose.yaml -----------------------------------------------------------------
compose_demo() {
  local p=deploy-compose
  inns podman-compose -p $p -f docker/compose.yaml up -d >"$WORK/compose-up.log" 2>&1 ||
    { tail -n 30 "$WORK/compose-up.log"; return 1; }
  wait_for 30 "compose.yaml serves" inns "${CURL[@]}" --user demo:demo -o /dev/null ftps://127.0.0.1/hello.txt
  head -c 3000000 /dev/urandom >"$WORK/payload.bin"
  inns "${CURL[@]}" --user demo:demo -T "$WORK/payload.bin" ftps://127.0.0.1/payload.bin
  inns "${CURL[@]}" --user demo:demo --ssl-reqd -o "$WORK/got-explicit.bin" ftp://127.0.0.1/payload.bin
  same "$WORK/payload.bin" "$WORK/got-explicit.bin" "curl upload implicit, download explicit"
  inns "${CURL[@]}" --user demo:demo --disable-epsv -o "$WORK/got-pasv.bin" ftps://127.0.0.1/payload.bin
  same "$WORK/payload.bin" "$WORK/got-pasv.bin" "curl PASV download"
  local reply
  reply=$(inns "${CURL[@]}" --user demo:demo ftp://127.0.0.1/hello.txt 2>&1) &&
    fail "plain FTP login accepted: $reply"
  echo "  plain FTP login refused: $reply"
  inns podman-compose -p $p -f docker/compose.yaml down -v >"$WORK/compose-down.log" 2>&1
}

# --- 3. HAProxy examples -------------------------------------------------------------
gw_log() { inns podman logs "$1_$2_1" 2>&1; } # gw_log PROJECT SERVICE

clients_through_lb() { # one round of every client through the balancer on 127.0.0.1
  local tag=$1 lftp_set='set ssl:verify-certificate no; set ftp:ssl-force true; set ftp:ssl-protect-data true; set net:max-retries 1; set net:timeout 20'
  inns "${CURL[@]}" --user demo:demo -o "$WORK/lb-$tag-1.bin" ftps://127.0.0.1/payload.bin
  same "$WORK/payload.bin" "$WORK/lb-$tag-1.bin" "curl implicit EPSV ($tag)"
  inns "${CURL[@]}" --user demo:demo --disable-epsv -o "$WORK/lb-$tag-2.bin" ftps://127.0.0.1/payload.bin
  same "$WORK/payload.bin" "$WORK/lb-$tag-2.bin" "curl implicit PASV ($tag)"
  inns "${CURL[@]}" --user demo:demo --ssl-reqd -T "$WORK/payload.bin" "ftp://127.0.0.1/up-$tag.bin"
  inns "${CURL[@]}" --user demo:demo --ssl-reqd -o "$WORK/lb-$tag-3.bin" "ftp://127.0.0.1/up-$tag.bin"
  same "$WORK/payload.bin" "$WORK/lb-$tag-3.bin" "curl explicit upload + download ($tag)"
  rm -f "$WORK/lb-$tag-4.bin"
  inns timeout 60 lftp -u demo,demo -e "$lftp_set; get payload.bin -o $WORK/lb-$tag-4.bin; bye" ftp://127.0.0.1:21
  same "$WORK/payload.bin" "$WORK/lb-$tag-4.bin" "lftp explicit ($tag)"
  rm -f "$WORK/lb-$tag-5.bin"
  inns timeout 60 lftp -u demo,demo -e "$lftp_set; get payload.bin -o $WORK/lb-$tag-5.bin; bye" ftps://127.0.0.1:990
  same "$WORK/payload.bin" "$WORK/lb-$tag-5.bin" "lftp implicit ($tag)"
  inns timeout 60 /usr/bin/python3 tests/deploy/ftplib_resume.py 127.0.0.1 21 demo demo payload.bin "$WORK/payload.bin"
}

compose_haproxy() { # compose_haproxy FILE
  local file=$1 p=deploy-${1%%.*} gw n t0
  t0=$(date +%s.%N)
  local started=$SECONDS
  mark() { echo "  ($(elapsed "$t0") s) $*"; }
  inns podman-compose -p "$p" -f "docker/$file" up -d >"$WORK/$p-up.log" 2>&1 ||
    { tail -n 30 "$WORK/$p-up.log"; return 1; }
  mark "up"
  wait_for 40 "$file serves" inns "${CURL[@]}" --user demo:demo -o /dev/null ftps://127.0.0.1/hello.txt
  mark "serving"
  [[ -s $WORK/payload.bin ]] || head -c 3000000 /dev/urandom >"$WORK/payload.bin"
  inns "${CURL[@]}" --user demo:demo -T "$WORK/payload.bin" ftps://127.0.0.1/payload.bin
  local round
  for round in 1 2; do clients_through_lb "$p-$round"; done
  for gw in gw1 gw2 gw3; do
    n=$(gw_log "$p" $gw | grep -c 'event=session_start' || true)
    echo "  $gw: $n sessions, real client named: $(gw_log "$p" $gw | grep -c 'event=session_start.* via=' || true)"
    ((n > 0)) || fail "$gw got no session"
  done
  if [[ $file == compose-haproxy.yml ]]; then
    # The old failure: HAProxy's resolver (Docker's 127.0.0.11, absent under podman) timed
    # out about 30 s after start and put every gateway into maintenance. A round 35 s after
    # `up` began.
    local left=$((35 - (SECONDS - started)))
    ((left <= 0)) || sleep "$left"
    clients_through_lb "$p-35s"
    mark "clients 35 s after up: served"
  fi
  # One gateway gone: HAProxy's checks take it out (fall 2, inter 2s), the others serve.
  mark "two rounds of clients done"
  inns podman stop -t 10 "${p}_gw2_1" >/dev/null
  mark "gw2 stopped"
  wait_for 30 "HAProxy marks gw2 down" bash -c \
    "nsenter --net=/run/netns/$NS podman logs ${p}_haproxy_1 2>&1 | grep -q 'gateways_990/gw2 is DOWN' &&
     nsenter --net=/run/netns/$NS podman logs ${p}_haproxy_1 2>&1 | grep -q 'gateways_21/gw2 is DOWN'"
  echo "  gw2 stopped, HAProxy marked it down"
  clients_through_lb "$p-gw2-stopped"
  mark "clients done without gw2"
  inns podman-compose -p "$p" -f "docker/$file" down -v >"$WORK/$p-down.log" 2>&1
  mark "down"
}

# --- 4. the unit under systemd ---------------------------------------------------------
SD=ftpsgate-deploy-systemd
sdexec() { inns podman exec "$SD" "$@"; }
sd_ip() { inns podman inspect -f '{{.NetworkSettings.IPAddress}}' "$SD"; }
main_pid() { sdexec systemctl show -p MainPID --value ftpsgate; }

systemd_unit() {
  trap 'echo "--- journal"; sdexec journalctl -u ftpsgate --no-pager -n 40 || true' ERR
  inns podman run -d --name "$SD" --systemd=always --cap-add SYS_ADMIN \
    -v "$REPO/config/ftpsgate.service:/etc/systemd/system/ftpsgate.service:ro" \
    -v "$REPO/config/ftpsgate.conf:/etc/ftpsgate/ftpsgate.conf.sample:ro" \
    "$SYSTEMD_IMAGE" /lib/systemd/systemd >/dev/null
  wait_for 60 "systemd boots" bash -c \
    "nsenter --net=/run/netns/$NS podman exec $SD systemctl is-system-running | grep -Eq 'running|degraded'"
  echo "  systemd $(sdexec systemctl --version | head -n 1 | cut -d' ' -f2) is up: $(sdexec systemctl is-system-running || true)"
  sdexec cp /etc/ftpsgate/ftpsgate.conf.sample /etc/ftpsgate/ftpsgate.conf
  sdexec sh -c 'echo "hello through systemd" >/srv/ftp/hello.txt'
  # The test's watchdog period, so that a stopped process is caught in seconds.
  sdexec mkdir -p /etc/systemd/system/ftpsgate.service.d
  sdexec sh -c 'printf "[Service]\nWatchdogSec=3\n" >/etc/systemd/system/ftpsgate.service.d/deploy-test.conf'
  sdexec systemctl daemon-reload
  local ip
  ip=$(sd_ip)

  # A configuration error at start: exit 1, the key named in the journal, and never
  # restarted (RestartPreventExitStatus=1 matches the main process's status only).
  sdexec sh -c 'printf "\n[global]\nno_such_key = 1\n" >>/etc/ftpsgate/ftpsgate.conf'
  if sdexec systemctl start ftpsgate 2>/dev/null; then
    fail "systemctl start succeeded with a configuration error"
  fi
  sleep 3 # RestartSec=2: a restart would have come by now
  local nr st
  nr=$(sdexec systemctl show -p NRestarts --value ftpsgate)
  st=$(sdexec systemctl show -p ActiveState --value ftpsgate)
  [[ $nr == 0 && $st == failed ]] ||
    fail "a configuration error at start: NRestarts=$nr ActiveState=$st (restarted?)"
  sdexec sh -c 'journalctl -u ftpsgate --no-pager | grep -q "ftpsgate.conf:[0-9]*: "' ||
    fail "the journal does not name the file and line"
  echo "  configuration error at start: failed (exit $(sdexec systemctl show -p ExecMainStatus --value ftpsgate)), NRestarts=0, file and line in the journal"
  sdexec systemctl reset-failed ftpsgate
  sdexec cp /etc/ftpsgate/ftpsgate.conf.sample /etc/ftpsgate/ftpsgate.conf

  # start returns once the gateway said READY=1: the first connection must succeed.
  sdexec systemctl start ftpsgate || {
    sdexec journalctl -u ftpsgate --no-pager -n 40 || true
    fail "systemctl start ftpsgate failed"
  }
  inns "${CURL[@]}" -o "$WORK/sd-hello.txt" "ftps://$ip:990/hello.txt" ||
    fail "not serving right after 'systemctl start' returned"
  echo "  start: active ($(sdexec systemctl show -p StatusText --value ftpsgate)), served at once"
  local sandbox
  sandbox=$(sdexec sh -c 'grep -E "^(Uid|CapEff|NoNewPrivs)" /proc/$(systemctl show -p MainPID --value ftpsgate)/status' | tr -s '\t\n' '  ')
  echo "  sandbox: $sandbox"

  # A good reload: a changed setting applies; the same process keeps serving.
  local pid
  pid=$(main_pid)
  sdexec sed -i 's/^log_level = .*/log_level = debug/' /etc/ftpsgate/ftpsgate.conf
  sdexec systemctl reload ftpsgate || fail "a good reload failed"
  [[ $(main_pid) == "$pid" ]] || fail "reload changed the main process"
  inns "${CURL[@]}" -o /dev/null "ftps://$ip:990/hello.txt" || fail "not serving after a reload"
  echo "  good reload: ok ($(sdexec systemctl show -p StatusText --value ftpsgate))"

  # A failing reload: systemctl must say so, the old configuration keeps serving.
  sdexec cp /etc/ftpsgate/ftpsgate.conf "/etc/ftpsgate/ftpsgate.conf.good"
  sdexec sh -c 'printf "\n[global]\nno_such_key = 1\n" >>/etc/ftpsgate/ftpsgate.conf'
  if sdexec systemctl reload ftpsgate; then
    fail "systemctl reload reported success for a configuration that does not parse"
  fi
  echo "  failing reload: systemctl reload failed, as it should"
  sdexec systemctl is-active ftpsgate >/dev/null || fail "the service died on a failing reload"
  inns "${CURL[@]}" -o /dev/null "ftps://$ip:990/hello.txt" || fail "not serving after a failing reload"
  echo "  after the failing reload: still active and serving"
  # One that parses but cannot apply: a key file that is not there.
  sdexec cp /etc/ftpsgate/ftpsgate.conf.good /etc/ftpsgate/ftpsgate.conf
  sdexec sed -i 's|^cert *=.*|cert = /etc/ftpsgate/missing.crt|; s|^key *=.*|key = /etc/ftpsgate/missing.key|' \
    /etc/ftpsgate/ftpsgate.conf
  if sdexec systemctl reload ftpsgate 2>/dev/null; then
    fail "systemctl reload reported success with a missing key file"
  fi
  echo "  reload with a missing key file: failed, as it should"
  inns "${CURL[@]}" -o /dev/null "ftps://$ip:990/hello.txt" || fail "not serving after a failing reload"
  # One that passes `-t` and fails only in the workers: a new frontend on a port in use
  # (the legacy server's). ExecReload's `-t` lets it through; `-s reload` must fail.
  sdexec cp /etc/ftpsgate/ftpsgate.conf.good /etc/ftpsgate/ftpsgate.conf
  sdexec sh -c 'printf "\n[frontend busy]\nlisten = 127.0.0.1:2121\nmode = implicit\nbackend = legacy\n" >>/etc/ftpsgate/ftpsgate.conf'
  sdexec /usr/local/bin/ftpsgate -t -c /etc/ftpsgate/ftpsgate.conf >/dev/null 2>&1 ||
    fail "-t refused the port-in-use configuration (this check needs one that passes -t)"
  if sdexec systemctl reload ftpsgate 2>/dev/null; then
    fail "systemctl reload reported success with a port in use"
  fi
  echo "  reload with a port in use (passes -t): failed, as it should ($(sdexec systemctl show -p StatusText --value ftpsgate))"
  inns "${CURL[@]}" -o /dev/null "ftps://$ip:990/hello.txt" || fail "not serving after a failing reload"
  sdexec cp /etc/ftpsgate/ftpsgate.conf.good /etc/ftpsgate/ftpsgate.conf

  # Hitless upgrade: a new binary put in place (renamed in, as a package upgrade does), then
  # `ftpsgate -s upgrade` while a download runs. The unit's MainPID follows the new process
  # (NotifyAccess=all), the unit stays active and its watchdog fed, the download completes
  # whole, the old process exits once it has.
  sdexec sh -c 'head -c 48M /dev/urandom >/srv/ftp/big.bin && sha256sum </srv/ftp/big.bin' >"$WORK/big.sha"
  pid=$(main_pid)
  inns "${CURL[@]}" --limit-rate 8M -o "$WORK/big.bin" "ftps://$ip:990/big.bin" &
  local dl=$! newpid
  sleep 1
  sdexec sh -c 'cp -p /usr/local/bin/ftpsgate /usr/local/bin/ftpsgate.new &&
                mv /usr/local/bin/ftpsgate.new /usr/local/bin/ftpsgate'
  sdexec env FTPSGATE_STATE_DIR=/var/lib/ftpsgate /usr/local/bin/ftpsgate -s upgrade \
    -c /etc/ftpsgate/ftpsgate.conf || fail "ftpsgate -s upgrade failed"
  wait_for 10 "MainPID follows the new process" bash -c \
    "p=\$(nsenter --net=/run/netns/$NS podman exec $SD systemctl show -p MainPID --value ftpsgate);
     [[ \$p != 0 && \$p != $pid ]]"
  newpid=$(main_pid)
  inns "${CURL[@]}" -o /dev/null "ftps://$ip:990/hello.txt" || fail "not serving after the upgrade"
  wait "$dl" || fail "the download across the upgrade failed"
  [[ $(sha256sum <"$WORK/big.bin") == "$(cat "$WORK/big.sha")" ]] || fail "the download across the upgrade differs"
  wait_for 20 "the old process exits" bash -c "! nsenter --net=/run/netns/$NS podman exec $SD test -d /proc/$pid"
  sleep 4 # WatchdogSec=3: the new process must feed it
  [[ $(main_pid) == "$newpid" ]] || fail "the upgraded process was replaced (watchdog?)"
  sdexec systemctl is-active ftpsgate >/dev/null || fail "not active after the upgrade"
  echo "  upgrade: MainPID $pid -> $newpid, active ($(sdexec systemctl show -p StatusText --value ftpsgate)), download across it whole"

  # Watchdog: a stopped main loop gets the service restarted (new main process).
  pid=$(main_pid)
  sdexec kill -STOP "$pid"
  wait_for 30 "watchdog restart" bash -c \
    "p=\$(nsenter --net=/run/netns/$NS podman exec $SD systemctl show -p MainPID --value ftpsgate);
     [[ \$p != 0 && \$p != $pid ]] && nsenter --net=/run/netns/$NS podman exec $SD systemctl is-active ftpsgate"
  wait_for 10 "serving after the watchdog restart" inns "${CURL[@]}" -o /dev/null "ftps://$ip:990/hello.txt"
  echo "  watchdog: SIGSTOPped pid $pid replaced by $(main_pid) (NRestarts=$(sdexec systemctl show -p NRestarts --value ftpsgate)), serving"
  sdexec sh -c 'journalctl -u ftpsgate --no-pager | grep -m1 -i watchdog' || true

  sdexec systemctl stop ftpsgate
  [[ $(sdexec systemctl is-active ftpsgate || true) == inactive ]] || fail "not inactive after stop"
  echo "  stop: inactive"
  inns podman rm -f -t 5 "$SD" >/dev/null
}

step "packages" install_packages
configure_podman
step "base image (debootstrap)" make_base
step "images" build_images
# --prepare: only the cached part (packages, base, images), which waits on Debian's archive
# more than on the CPU; .ci/run starts it early at low priority, beside the test stages.
[[ ${1:-} == --prepare ]] && exit 0
step "network namespace" make_netns
step "image alone" image_alone
step "compose.yaml" compose_demo
# The unit under systemd talks to its own container's address, nothing the compose stacks
# publish: it runs beside them (the first HAProxy example mostly waits out its 35 s).
step "systemd unit" systemd_unit >"$WORK/systemd.log" 2>&1 &
sd_pid=$!
step "compose-haproxy.yml" compose_haproxy compose-haproxy.yml
step "compose-haproxy-shared.yml" compose_haproxy compose-haproxy-shared.yml
sd_rc=0
wait "$sd_pid" || sd_rc=$?
cat "$WORK/systemd.log"
STEP_TIMES+=("$(grep -o 'systemd unit: .*' "$WORK/systemd.log" | tail -n 1) (beside the HAProxy examples)")
exit "$sd_rc"
