"""systemd: the notify protocol (sd_notify(3)) against a datagram socket the test listens
on, in both its forms (a path, and "@name" in the abstract namespace), and the shipped
unit (config/ftpsgate.service) through `systemd-analyze verify`, on the binary that
`make install` puts where its ExecStart says.

READY=1 must mean "every listener accepts": when it arrives, the test connects to every
frontend at once. RELOADING=1 (with MONOTONIC_USEC, as systemd >= 253 requires) and READY=1
frame a SIGHUP; STOPPING=1 comes on SIGTERM; WATCHDOG=1 every WATCHDOG_USEC/2."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

import peers
from peers import HOST

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "config" / "ftpsgate.service"


class NotifySocket:
    """The service manager's side: an AF_UNIX datagram socket; every message is kept with
    its arrival time. On READY=1 the receiving thread connects at once to every `listen`
    address of the configuration the sender runs (its MAINPID's `-c FILE`) and records
    whether each one accepted."""

    def __init__(self, address: str):
        self.address = address  # the NOTIFY_SOCKET value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.probes: list[dict[int, bool]] = []
        self.lock = threading.Lock()
        self.done = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _probe(pid: str) -> dict[int, bool]:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        config = Path(argv[argv.index(b"-c") + 1].decode())
        result = {}
        for port in re.findall(r"^listen = [\d.]+:(\d+)$", config.read_text(), re.M):
            port = int(port)
            try:
                with socket.create_connection((HOST, port), timeout=2):
                    result[port] = True
            except OSError:
                result[port] = False
        return result

    def _run(self):
        while not self.done:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            if fields.get("READY") == "1":
                probe = self._probe(fields["MAINPID"])
                with self.lock:
                    self.probes.append(probe)
            with self.lock:
                self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str, value: str | None = None) -> list[dict[str, str]]:
        with self.lock:
            return [m for _, m in self.messages
                    if key in m and (value is None or m[key] == value)]

    def sequence(self) -> list[str]:
        """The state words in arrival order (WATCHDOG pings left out)."""
        out = []
        with self.lock:
            for _, m in self.messages:
                out += [k for k in ("READY", "RELOADING", "STOPPING") if k in m]
        return out

    def wait(self, key: str, count: int = 1, timeout: float = 15):
        peers.wait_for(lambda: len(self.with_key(key)) >= count, timeout, f"{count} x {key}")

    def close(self):
        self.done = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path, monkeypatch):
    """A factory: notify(address) listens and exports NOTIFY_SOCKET for the gateways the
    test starts."""
    made = []

    def make(address: str | None = None):
        address = address or str(tmp_path / "notify.sock")
        ns = NotifySocket(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.close()


def stop_by_test(gw) -> int:
    gw.signals_sent.append(signal.SIGTERM)
    gw.proc.send_signal(signal.SIGTERM)
    gw.stopped_by_test = True
    return gw.proc.wait(10)


def start_with_notify(gateway, backend, notify, address=None, workers=2):
    """Two frontends, two workers; READY=1 probes both frontends' ports."""
    ns = notify(address)
    gw = gateway(backend, extra={"global": {"workers": workers}},
                 frontends={"x": peers.frontend("explicit")})
    ns.wait("READY")
    assert set(ns.probes[0]) == {gw.port, gw.fport("x")}
    return gw, ns


def test_ready_reload_stopping(gateway, pyftpdlib, notify):
    gw, ns = start_with_notify(gateway, pyftpdlib, notify)
    first = ns.with_key("READY", "1")[0]
    assert first["MAINPID"] == str(gw.pid)
    assert first["STATUS"].startswith("serving"), first
    # SECURITY of the contract: READY=1 only once every frontend accepts connections.
    assert ns.probes[0] and all(ns.probes[0].values()), ns.probes
    assert "event=started " in gw.log

    before = time.monotonic()
    os.kill(gw.pid, signal.SIGHUP)
    ns.wait("READY", 2)
    after = time.monotonic()
    reloading = ns.with_key("RELOADING", "1")
    assert len(reloading) == 1
    # CLOCK_MONOTONIC, the clock Python's time.monotonic() reads on Linux.
    assert before * 1e6 <= int(reloading[0]["MONOTONIC_USEC"]) <= after * 1e6
    assert ns.sequence() == ["READY", "RELOADING", "READY"]
    assert "reloaded" in ns.with_key("READY")[1]["STATUS"]
    gw.mark(0).wait("event=reloaded ", 10, n=2)
    assert all(ns.probes[1].values()), ns.probes

    # A configuration that no longer loads: still READY=1 (the old one serves), and said so.
    good = gw.config.read_text()
    gw.config.write_text(good + "\n[global]\nno_such_key = 1\n")
    os.kill(gw.pid, signal.SIGHUP)
    ns.wait("READY", 3)
    assert "reload failed" in ns.with_key("READY")[2]["STATUS"]
    gw.config.write_text(good)

    assert stop_by_test(gw) == 0
    assert ns.sequence() == ["READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"]
    assert not ns.with_key("WATCHDOG"), "no WATCHDOG_USEC, no pings"


def test_abstract_namespace_and_watchdog(gateway, pyftpdlib, notify, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # pings every 100 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    address = f"@ftpsgate-test-{os.getpid()}-{time.monotonic_ns()}"
    gw, ns = start_with_notify(gateway, pyftpdlib, notify, address=address)
    assert all(ns.probes[0].values())
    time.sleep(1.5)
    pings = [t for t, m in ns.messages if m.get("WATCHDOG") == "1"]
    assert len(pings) >= 8, pings  # 15 expected in 1.5 s
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < 0.5, gaps  # well inside WATCHDOG_USEC
    # A stopped process (a stand-in for a stuck loop) stops pinging; it resumes afterwards.
    os.kill(gw.pid, signal.SIGSTOP)
    try:
        time.sleep(0.3)
        n = len(ns.with_key("WATCHDOG"))
        time.sleep(0.6)
        assert len(ns.with_key("WATCHDOG")) == n
    finally:
        os.kill(gw.pid, signal.SIGCONT)
    ns.wait("WATCHDOG", n + 3, timeout=5)
    assert stop_by_test(gw) == 0
    assert ns.sequence() == ["READY", "STOPPING"]


def test_watchdog_for_another_pid(gateway, pyftpdlib, notify, monkeypatch):
    """WATCHDOG_PID names another process (say, a wrapper): the gateway must not ping."""
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    gw, ns = start_with_notify(gateway, pyftpdlib, notify, workers=1)
    time.sleep(0.6)
    assert not ns.with_key("WATCHDOG")
    assert stop_by_test(gw) == 0


def _verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze absent (Debian package systemd)")
def test_unit_verifies(tmp_path):
    """`make install` into a DESTDIR puts the binary where the unit's ExecStart says; the
    unit, pointed at that installed binary, verifies without a single complaint. A unit with
    a misspelt key or a missing binary does not (so the check can fail)."""
    dest = tmp_path / "dest"
    # -o: install the binary under test as it is (a SAN=1 build stays one).
    res = subprocess.run(["make", "-s", "-o", "build/ftpsgate", "install", f"DESTDIR={dest}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    text = UNIT.read_text()
    execs = set(re.findall(r"^Exec(?:Start|StartPre|Reload)=(\S+)", text, re.M))
    assert execs == {"/usr/local/bin/ftpsgate"}, execs
    installed = dest / "usr/local/bin/ftpsgate"
    assert installed.read_bytes() == (REPO / "build" / "ftpsgate").read_bytes()
    shipped = dest / "usr/local/share/doc/ftpsgate/config/ftpsgate.service"
    assert shipped.read_text() == text, "make install ships the unit"
    # systemctl reload fails when the reload fails (systemd 252 has no Type=notify-reload):
    # the file is checked, then `-s reload` waits for every worker's answer.
    reloads = re.findall(r"^ExecReload=(.*)$", text, re.M)
    assert reloads == ["/usr/local/bin/ftpsgate -t -c /etc/ftpsgate/ftpsgate.conf",
                       "/usr/local/bin/ftpsgate -s reload -c /etc/ftpsgate/ftpsgate.conf"]
    # A configuration error (exit 1) is not retried; other start failures only a few times.
    assert re.search(r"^RestartPreventExitStatus=1$", text, re.M)
    # ...which systemd matches against the main process only: a `-t` in ExecStartPre would
    # fail as a control process and be retried (start runs the same checks itself).
    assert not re.search(r"^ExecStartPre=", text, re.M)
    assert re.search(r"^StartLimitBurst=\d+$", text, re.M)
    for directive in ("Type=notify", "WatchdogSec=",
                      "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                      "AmbientCapabilities=CAP_NET_BIND_SERVICE"):
        assert directive in text, directive
    # ExecReload's `-t` and ExecStart check the configuration: `-t` must accept the file.
    assert subprocess.run([str(installed), "-t", "-c", str(REPO / "config/ftpsgate.conf")],
                          capture_output=True, timeout=30).returncode == 0

    unit = tmp_path / "ftpsgate.service"
    unit.write_text(text.replace("/usr/local/bin/ftpsgate", str(installed)))
    res = _verify(unit)
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr

    bad = tmp_path / "bad" / "ftpsgate.service"
    bad.parent.mkdir()
    bad.write_text(unit.read_text().replace("Type=notify", "Typ=notify"))
    res = _verify(bad)
    assert "Unknown key" in res.stdout + res.stderr
    missing = tmp_path / "missing" / "ftpsgate.service"
    missing.parent.mkdir()
    missing.write_text(text)  # /usr/local/bin/ftpsgate is not installed on this machine
    if not Path("/usr/local/bin/ftpsgate").exists():
        assert _verify(missing).returncode != 0


def _filter_group(name: str, seen: set[str]) -> set[str]:
    """The system calls of a systemd filter group (@name), sub-groups expanded."""
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    calls = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        calls |= _filter_group(word, seen) if word.startswith("@") else {word}
    return calls


def _unit_syscalls() -> tuple[set[str], set[str]]:
    """(allowed, denied) system calls by the unit's SystemCallFilter= lines."""
    allow, deny = set(), set()
    for value in re.findall(r"^SystemCallFilter=(.+)$", UNIT.read_text(), re.M):
        target = deny if value.startswith("~") else allow
        for word in value.lstrip("~").split():
            target |= _filter_group(word, set()) if word.startswith("@") else {word}
    return allow - deny, deny


@pytest.mark.skipif(shutil.which("systemd-analyze") is None or shutil.which("strace") is None,
                    reason="systemd-analyze or strace absent (Debian packages systemd, strace)")
def test_sandbox_allows_what_the_gateway_does(pyftpdlib, blobs, tls_cert, client_ctx, ports,
                                              tmp_path):
    """There is no systemd as PID 1 here to run the unit, so the gateway runs under strace
    through start (two workers, notify and watchdog), TLS sessions with downloads and
    uploads, a reload, a log reopen and the stop; every system call it makes must pass the
    unit's SystemCallFilter, every socket its RestrictAddressFamilies, and no mapping may be
    writable and executable (MemoryDenyWriteExecute)."""
    allowed, denied = _unit_syscalls()
    assert {"socket", "accept4", "epoll_wait", "sendto"} <= allowed
    assert {"setuid", "capset"} <= denied
    port, pasv = ports.port(), ports.range(10)
    cert, key = tls_cert
    config = tmp_path / "gw.ini"
    control = Path(tempfile.mkdtemp(prefix="fgsbx-")) / "ctl.sock"  # fits sun_path
    config.write_text(peers.render_ini({
        "global": {"workers": 2, "xferlog": tmp_path / "xferlog", "log_level": "debug",
                   "control_socket": control},
        "tls": {"cert": cert, "key": key},
        "frontend fe": {"listen": f"{HOST}:{port}", "mode": "implicit", "backend": "be",
                        "pasv_ports": f"{pasv[0]}-{pasv[1]}"},
        "backend be": {"address": pyftpdlib.address, "health_interval": 1},
    }))
    ns = NotifySocket(str(tmp_path / "notify.sock"))
    trace = tmp_path / "strace.out"
    env = dict(os.environ, NOTIFY_SOCKET=ns.address, WATCHDOG_USEC="200000")
    # A SAN=1 build: LeakSanitizer cannot run under ptrace (the other tests check leaks).
    env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "detect_leaks=0"]))
    log = open(tmp_path / "gw.log", "wb")
    proc = subprocess.Popen(["strace", "-f", "-qq", "-o", str(trace), str(peers.GATEWAY_BIN),
                             "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        ns.wait("READY", timeout=30)
        pid = int(ns.with_key("READY")[0]["MAINPID"])
        digest = pyftpdlib.put(blobs, "sandbox.bin", 512 * 1024)
        src = tmp_path / "up.bin"
        up = blobs.unique(src, 256 * 1024)
        for i in range(3):
            with peers.ftplib_session(port, pyftpdlib.user, pyftpdlib.password,
                                      client_ctx) as ftp:
                peers.ftplib_download(ftp, "sandbox.bin", tmp_path / f"got{i}.bin")
                peers.ftplib_upload(ftp, src, f"sandbox-up{i}.bin")
                ftp.retrlines("LIST", lambda _: None)
            assert sha256_file_(tmp_path / f"got{i}.bin") == digest
            assert sha256_file_(pyftpdlib.path(f"sandbox-up{i}.bin")) == up
            if i == 0:  # as the unit's ExecReload: through the control socket
                res = subprocess.run([str(peers.GATEWAY_BIN), "-s", "reload", "-c",
                                      str(config)], capture_output=True, text=True, timeout=60)
                assert res.returncode == 0, res.stderr
                ns.wait("READY", 2)
            if i == 1:
                (tmp_path / "xferlog").rename(tmp_path / "xferlog.1")
                os.kill(pid, signal.SIGUSR1)
        ns.wait("WATCHDOG", 3)
        time.sleep(1.2)  # a health probe or two
        os.kill(pid, signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            peers.kill_tree(proc)
        log.close()
        ns.close()
        shutil.rmtree(control.parent, ignore_errors=True)
    assert ns.sequence() == ["READY", "RELOADING", "READY", "STOPPING"]
    assert len((tmp_path / "xferlog").read_text().splitlines()) == 3  # RETR, STOR, LIST
    text = trace.read_text()
    used = set(re.findall(r"^\d+ +([a-z_0-9]+)\(", text, re.M))
    assert {"accept4", "sendto", "epoll_wait", "dup3"} <= used, sorted(used)
    # execve is strace starting the gateway; systemd applies the filter before it.
    assert used - allowed == set(), sorted(used - allowed)
    families = set(re.findall(r"\bsocket\((AF_\w+)", text))
    assert families <= {"AF_INET", "AF_INET6", "AF_UNIX"}, families
    wx = re.findall(r"^\d+ +(?:mmap|mprotect|pkey_mprotect)\(.*PROT_WRITE\|PROT_EXEC.*$", text,
                    re.M)
    assert not wx, wx[:5]


def sha256_file_(path: Path) -> str:
    return peers.sha256_file(path)
