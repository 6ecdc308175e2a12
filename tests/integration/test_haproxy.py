"""A real HAProxy (Debian's haproxy, TCP mode) in front of ftpsgate: send-proxy and
send-proxy-v2 toward one gateway (curl, lftp and ftplib transfers, SHA-256 checked, the
log naming the real client), and the scale-out of README "Behind HAProxy": one balancer
address, three gateways on 127.0.0.2/3/4 with disjoint passive ranges that HAProxy publishes
on the balancer address with a PROXY header each, health checks, one instance stopped
mid-run. docker/haproxy.cfg (the compose example) must parse with `haproxy -c`."""

from __future__ import annotations

import concurrent.futures
import ftplib
import io
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

import peers
from peers import HOST, frontend

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy missing")

BALANCER = "127.0.0.10"
CLIENT = "127.0.0.5"  # the clients' own address: HAProxy names it in the header


def haproxy_cfg(frontends: str) -> str:
    return f"""\
global
    maxconn 4000

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    retries 2
    option redispatch

{frontends}"""


class HAProxy:
    def __init__(self, workdir: Path, name: str, cfg: str):
        self.path = workdir / f"{name}.cfg"
        self.path.write_text(cfg)
        check = subprocess.run(["haproxy", "-c", "-f", str(self.path)], capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = workdir / f"{name}.log"
        out = open(self.log, "wb")
        self.proc = subprocess.Popen(["haproxy", "-f", str(self.path), "-db"],
                                     stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def wait(self, addr: str, port: int):
        def up():
            try:
                socket.create_connection((addr, port), 1).close()
                return True
            except OSError:
                return False
        peers.wait_for(up, 10, "haproxy listening")

    def stop(self):
        peers.kill_tree(self.proc)


def unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Implicit(peers.ImplicitFTPS):
    """ImplicitFTPS with a source address for control and data connections, and optionally
    a PROXY header (`proxy_header`, bytes) sent on the control connection first."""

    proxy_header = b""

    def connect(self, host="", port=0, timeout=-999, source_address=None):
        self.host, self.port = host, port
        raw = socket.create_connection((host, port), self.timeout,
                                       source_address=source_address or self.source_address)
        raw.sendall(self.proxy_header)
        self.af = raw.family
        self.sock = self.context.wrap_socket(raw, server_hostname=host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


def ftplib_roundtrip(host: str, port: int, user, name: str, data: bytes, source=None) -> bytes:
    ftp = Implicit(context=unverified(), timeout=60)
    ftp.source_address = (source, 0) if source else None
    try:
        ftp.connect(host, port)
        ftp.login(*user)
        ftp.prot_p()
        ftp.storbinary(f"STOR {name}", io.BytesIO(data))
        chunks = []
        ftp.retrbinary(f"RETR {name}", chunks.append)
        ftp.quit()
        return b"".join(chunks)
    finally:
        ftp.close()


@pytest.fixture(scope="module")
def legacy(workdir, ports, test_user):
    """The legacy server behind every gateway, with room for 50 parallel passive legs."""
    lo, hi = ports.range(150)
    be = peers.start_pyftpdlib(workdir / "haproxy-pyftpdlib", ports, *test_user,
                               extra=f"handler.passive_ports = range({lo}, {hi + 1})")
    yield be
    be.stop()


@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
def test_haproxy_in_front(gateway, legacy, blobs, workdir, ports, test_user, send):
    """HAProxy sends the header; curl (EPSV), lftp (PASV) and ftplib move files through it
    with SHA-256 checks, their data connections straight to the gateway; the gateway's log
    and xferlog name the client (127.0.0.5), not HAProxy."""
    xferlog = workdir / f"haproxy-{send}.xferlog"
    gw = gateway(legacy, extra={"global": {"xferlog": xferlog}}, frontends={
        "x": frontend("implicit", proxy_protocol="any", proxy_protocol_from="127.0.0.1")})
    hport = ports.port()
    ha = HAProxy(workdir, f"haproxy-{send}", haproxy_cfg(f"""\
frontend ftps
    bind {HOST}:{hport}
    default_backend gw
backend gw
    server g1 {HOST}:{gw.fport('x')} {send}
"""))
    try:
        ha.wait(HOST, hport)
        user, pw = test_user
        sha = legacy.put(blobs, f"ha-{send}.bin", 2 * peers.MiB)
        dest = workdir / f"ha-{send}.curl"
        peers.check(peers.curl("--interface", CLIENT, "-o", str(dest),
                               f"ftps://{user}:{pw}@{HOST}:{hport}/ha-{send}.bin"))
        assert peers.sha256_file(dest) == sha
        up, up_sha = workdir / f"ha-{send}.up", None
        up_sha = peers.write_random(up, 700 * 1024)
        peers.check(peers.curl("--interface", CLIENT, "-T", str(up),
                               f"ftps://{user}:{pw}@{HOST}:{hport}/ha-{send}-up.bin"))
        assert peers.sha256_file(legacy.path(f"ha-{send}-up.bin")) == up_sha
        got = workdir / f"ha-{send}.lftp"
        peers.check(peers.lftp(f"ftps://{HOST}:{hport}", user, pw,
                               [f"get ha-{send}.bin -o {got}"],
                               settings=[f"set net:socket-bind-ipv4 {CLIENT}"]))
        assert peers.sha256_file(got) == sha
        data = b"ftplib through haproxy " * 20000
        assert ftplib_roundtrip(HOST, hport, test_user, f"ha-{send}-ftplib.bin", data,
                                source=CLIENT) == data
        log = gw.log
        assert f"peer={CLIENT}:" in log and "via=127.0.0.1" in log
        assert "data_refused" not in log
        peers.wait_for(lambda: xferlog.exists() and xferlog.read_text().count("\n") >= 4, 5,
                       "xferlog")
        lines = xferlog.read_text().splitlines()
        assert all(f"peer={CLIENT}:" in line for line in lines), lines
    finally:
        ha.stop()


def test_haproxy_shared_port(gateway, legacy, blobs, workdir, ports, test_user):
    """Three published ports: HAProxy on 127.0.0.10 publishes the control port and the
    gateway's one pasv_shared_port, both with send-proxy-v2 (proxy_protocol_data = yes).
    curl (several URLs, EPSV), lftp (PASV, pasv_address = the balancer) and ftplib (resuming
    the session) move files through it, SHA-256 checked, with no pasv_ports at all; the log
    names the client (127.0.0.5) on the control and on every shared-port match."""
    sp = ports.port()
    gw = gateway(legacy, frontends={"x": frontend(
        "implicit", pasv_ports="", pasv_shared_port=sp, pasv_address=BALANCER,
        proxy_protocol="v2", proxy_protocol_from=HOST, proxy_protocol_data="yes")})
    hport = ports.port()
    ha = HAProxy(workdir, "haproxy-shared", haproxy_cfg(f"""\
frontend ftps
    bind {BALANCER}:{hport}
    default_backend gw
backend gw
    server g1 {HOST}:{gw.fport('x')} send-proxy-v2

frontend ftps_data
    bind {BALANCER}:{sp}
    default_backend gw_data
backend gw_data
    server g1 {HOST}:{sp} send-proxy-v2
"""))
    try:
        ha.wait(BALANCER, hport)
        user, pw = test_user
        sums = {f"hasp-{i}.bin": legacy.put(blobs, f"hasp-{i}.bin", 300 * 1024 + i, unique=True)
                for i in range(5)}
        args = []
        for name in sums:
            args += ["-o", str(workdir / f"{name}.curl"),
                     f"ftps://{user}:{pw}@{BALANCER}:{hport}/{name}"]
        peers.check(peers.curl("--interface", CLIENT, *args))
        assert {n: peers.sha256_file(workdir / f"{n}.curl") for n in sums} == sums
        up = workdir / "hasp.up"
        up_sha = peers.write_random(up, 700 * 1024)
        peers.check(peers.curl("--interface", CLIENT, "-T", str(up),
                               f"ftps://{user}:{pw}@{BALANCER}:{hport}/hasp-up.bin"))
        assert peers.sha256_file(legacy.path("hasp-up.bin")) == up_sha
        cmds = [f"get {n} -o {workdir / (n + '.lftp')}" for n in list(sums)[:3]]
        cmds.append(f"put {up} -o hasp-up-lftp.bin")
        peers.check(peers.lftp(f"ftps://{BALANCER}:{hport}", user, pw, cmds,
                               settings=[f"set net:socket-bind-ipv4 {CLIENT}"]))
        for n in list(sums)[:3]:
            assert peers.sha256_file(workdir / f"{n}.lftp") == sums[n]
        assert peers.sha256_file(legacy.path("hasp-up-lftp.bin")) == up_sha
        data = b"ftplib through haproxy and the shared port " * 20000
        assert ftplib_roundtrip(BALANCER, hport, test_user, "hasp-ftplib.bin", data,
                                source=CLIENT) == data
        log = gw.log
        assert f"event=session_start frontend=x peer={CLIENT}:" in log
        n_match = log.count("event=shared_port_match")
        assert n_match >= 5 + 1 + 4 + 2, n_match
        assert log.count(f"event=shared_port_match peer={CLIENT}:") == n_match
        assert "balancer=127.0.0.1" in log
        for bad in ("shared_port_unmatched", "data_refused", "proxy_refused",
                    "shared_port_refused"):
            assert bad not in log, bad
    finally:
        ha.stop()


def test_docker_example_parses():
    """docker/compose-haproxy.yml's and compose-haproxy-shared.yml's HAProxy and gateway
    configurations load."""
    cfg = peers.REPO / "docker" / "haproxy.cfg"
    for path in (cfg, peers.REPO / "docker" / "haproxy-shared.cfg"):
        r = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    assert len(list((peers.REPO / "docker").glob("ftpsgate-lb*-shared.conf"))) == 3
    for conf in sorted((peers.REPO / "docker").glob("ftpsgate-lb*.conf")):
        r = subprocess.run([str(peers.GATEWAY_BIN), "-t", "-c", str(conf)], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
    text = cfg.read_text()
    for directive in ["send-proxy-v2 check check-send-proxy", "option redispatch"]:
        assert directive in text and directive in haproxy_cfg(scaleout_cfg(1, [("a", 1, 2, 3)]))


def scaleout_cfg(ctrl: int, instances: list[tuple[str, int, int, int]]) -> str:
    """The balancer: control connections spread with send-proxy-v2 and health checks; each
    instance's passive range published on the balancer address, mapped to that instance
    with a header (a server without a port keeps the port the client connected to)."""
    servers = "\n".join(f"    server g{i + 1} {a}:{p}" for i, (a, p, _, _) in enumerate(instances))
    out = f"""\
frontend ftps_control
    bind {BALANCER}:{ctrl}
    default_backend gateways

backend gateways
    balance roundrobin
    default-server send-proxy-v2 check check-send-proxy inter 300ms fall 2 rise 2
{servers}
"""
    for i, (a, _, lo, hi) in enumerate(instances):
        ports_ = f"{lo}" if lo == hi else f"{lo}-{hi}"  # one port: a pasv_shared_port
        out += f"""
frontend pasv_g{i + 1}
    bind {BALANCER}:{ports_}
    default_backend pasv_g{i + 1}

backend pasv_g{i + 1}
    server g{i + 1} {a} send-proxy-v2
"""
    return out


def run_session(kind: str, i: int, ctrl: int, user, workdir: Path, blob: tuple[Path, str]):
    """One client session through the balancer: an upload and a download, both checked.
    Returns the uploaded file's name and SHA-256."""
    u, pw = user
    name = f"so-{kind}-{i}.bin"
    src = workdir / f"so-src-{kind}-{i}"
    sha = peers.write_random(src, 96 * 1024 + i * 512)
    blob_path, blob_sha = blob
    if kind == "curl":  # EPSV: only a port, so the data connection goes to the balancer
        base = f"ftps://{u}:{pw}@{BALANCER}:{ctrl}/"
        dest = workdir / f"so-dst-{i}"
        peers.check(peers.curl("-T", str(src), base + name))
        peers.check(peers.curl("-o", str(dest), base + blob_path.name))
        assert peers.sha256_file(dest) == blob_sha
    elif kind == "lftp":  # PASV: pasv_address is the balancer's
        dest = workdir / f"so-dst-{i}"
        peers.check(peers.lftp(f"ftps://{BALANCER}:{ctrl}", u, pw,
                               [f"put {src} -o {name}", f"get {blob_path.name} -o {dest}"],
                               timeout=90))
        assert peers.sha256_file(dest) == blob_sha
    else:
        data = src.read_bytes()
        assert ftplib_roundtrip(BALANCER, ctrl, user, name, data) == data
    return name, sha


@pytest.mark.parametrize("passive", ["range", "shared"])
def test_scale_out_three_instances(gateway, legacy, blobs, workdir, ports, test_user, passive):
    """50 parallel sessions (curl EPSV, lftp PASV, ftplib PASV) over three instances behind
    one HAProxy address, every transfer checked; then one instance stops: its sessions end,
    HAProxy's health check sends the next sessions to the other two. passive = shared: each
    instance has its own pasv_shared_port (and no range), the one port HAProxy publishes
    for it; every data connection is matched by its ClientHello among sessions that all
    share one client address (HAProxy's header names 127.0.0.1 for all of them)."""
    ctrl = ports.port()
    instances, gws = [], []
    for n, addr in enumerate(["127.0.0.2", "127.0.0.3", "127.0.0.4"]):
        if passive == "range":
            lo, hi = ports.range(40)
            pkeys = {"pasv_ports": f"{lo}-{hi}"}
        else:
            lo = hi = ports.port()
            pkeys = {"pasv_ports": "", "pasv_shared_port": lo}
        p = ports.port()
        gws.append(gateway(legacy, extra={"global": {"shutdown_grace": 1,
                                                     "max_sessions_per_ip": 200}},
                           frontends={"lb": frontend(
                               "implicit", listen=f"{addr}:{p}", **pkeys,
                               pasv_address=BALANCER, proxy_protocol="v2",
                               proxy_protocol_from="127.0.0.1", proxy_protocol_data="yes")}))
        instances.append((addr, p, lo, hi))
    ha = HAProxy(workdir, "haproxy-scaleout", haproxy_cfg(scaleout_cfg(ctrl, instances)))
    t0 = time.monotonic()
    try:
        ha.wait(BALANCER, ctrl)
        blob = blobs.blob(256 * 1024)
        shutil.copy(blob[0], legacy.path(blob[0].name))
        kinds = ["curl", "lftp", "ftplib"]
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            futs = [pool.submit(run_session, kinds[i % 3], i, ctrl, test_user, workdir, blob)
                    for i in range(50)]
            results = [f.result() for f in futs]
        for name, sha in results:
            assert peers.sha256_file(legacy.path(name)) == sha, name
        counts = [g.log.count("event=session_start frontend=lb") for g in gws]
        assert all(c >= 10 for c in counts), counts  # spread over all three
        for g in gws:
            assert "data_refused" not in g.log and "proxy_refused" not in g.log
            assert "shared_port_unmatched" not in g.log and "shared_port_refused" not in g.log
            if passive == "shared":
                assert g.log.count("event=shared_port_match") >= 20
            # HAProxy's checks (a v2 LOCAL header, often reset before the accept): quiet
            assert 'event=session_close reason="accept failed"' not in g.log
        # Stop one instance mid-run: idle sessions on every instance first.
        held = []
        for _ in range(6):
            ftp = Implicit(context=unverified(), timeout=30)
            ftp.source_address = None
            ftp.connect(BALANCER, ctrl)
            ftp.login(*test_user)
            held.append(ftp)
        victim = gws[1]
        victim.proc.send_signal(signal.SIGTERM)
        victim.signals_sent.append(signal.SIGTERM)
        victim.stopped_by_test = True
        victim.proc.wait(15)
        ended = 0
        for ftp in held:
            try:
                ftp.voidcmd("NOOP")
            except (ftplib.Error, OSError, EOFError):
                ended += 1
            ftp.close()
        assert ended == 2, ended  # roundrobin: two of the six were on the stopped instance
        before = [g.log.count("event=session_start frontend=lb") for g in gws]
        time.sleep(1)  # fall 2 x inter 300 ms: marked down
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            futs = [pool.submit(run_session, kinds[i % 3], 100 + i, ctrl, test_user, workdir,
                                blob) for i in range(12)]
            results = [f.result() for f in futs]
        for name, sha in results:
            assert peers.sha256_file(legacy.path(name)) == sha, name
        after = [g.log.count("event=session_start frontend=lb") for g in gws]
        assert after[1] == before[1]
        sessions = sum(2 if kinds[i % 3] == "curl" else 1 for i in range(12))  # curl: 2
        assert after[0] + after[2] - before[0] - before[2] == sessions
    finally:
        ha.stop()
    assert time.monotonic() - t0 < 120


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_backend_haproxy_accept_proxy(gateway, legacy, blobs, workdir, ports, test_user,
                                      version):
    """[backend] proxy_protocol toward a real HAProxy with accept-proxy in front of the
    legacy server: HAProxy's log names the gateway's client (127.0.0.5), not the gateway."""
    hport = ports.port()
    ha = HAProxy(workdir, f"haproxy-accept-{version}", f"""\
global
    log stdout format raw local0

defaults
    mode tcp
    log global
    log-format "client=%ci:%cp frontend=%ft"
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend legacy_in
    bind {HOST}:{hport} accept-proxy
    default_backend legacy
backend legacy
    server l1 {HOST}:{legacy.port}
""")
    try:
        ha.wait(HOST, hport)
        gw = gateway(backend_address=f"{HOST}:{hport}", backend_keys={"proxy_protocol": version},
                     frontends={"x": frontend("implicit", proxy_protocol="v1",
                                              proxy_protocol_from="127.0.0.1")})
        sha = legacy.put(blobs, f"accept-{version}.bin", 500 * 1024)
        dest = workdir / f"accept-{version}.out"
        user, pw = test_user
        # The gateway's client is 127.0.0.5: a v1 header says so (sent from 127.0.0.1, in
        # proxy_protocol_from); its data connections come from 127.0.0.5 itself.
        ftp = Implicit(context=unverified(), timeout=30)
        ftp.source_address = (CLIENT, 0)
        ftp.proxy_header = f"PROXY TCP4 {CLIENT} {HOST} 41000 {gw.fport('x')}\r\n".encode()
        ftp.connect(HOST, gw.fport("x"), source_address=(HOST, 0))
        ftp.login(user, pw)
        ftp.prot_p()
        with open(dest, "wb") as f:
            ftp.retrbinary(f"RETR accept-{version}.bin", f.write)
        ftp.quit()
        assert peers.sha256_file(dest) == sha
        peers.wait_for(lambda: f"client={CLIENT}:41000" in ha.log.read_text(errors="replace"),
                       10, "HAProxy's log line")
    finally:
        ha.stop()
