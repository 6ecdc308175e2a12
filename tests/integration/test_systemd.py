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
    peers.wait_for(lambda: gw.log.count("event=reloaded ") >= 2, 10, "both workers reloaded")
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
    execs = set(re.findall(r"^Exec(?:Start|StartPre)=(\S+)", text, re.M))
    assert execs == {"/usr/local/bin/ftpsgate"}, execs
    installed = dest / "usr/local/bin/ftpsgate"
    assert installed.read_bytes() == (REPO / "build" / "ftpsgate").read_bytes()
    shipped = dest / "usr/local/share/doc/ftpsgate/config/ftpsgate.service"
    assert shipped.read_text() == text, "make install ships the unit"
    for directive in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=",
                      "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                      "AmbientCapabilities=CAP_NET_BIND_SERVICE"):
        assert directive in text, directive
    # The same ExecStart/ExecStartPre check the configuration: `-t` must accept the file.
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
