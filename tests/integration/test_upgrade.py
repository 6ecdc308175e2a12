"""Hitless binary upgrade (`ftpsgate -s upgrade`): the running gateway starts the binary on
disk with its own command line and hands it every listening socket; the new process serves
every connection from then on, the old one finishes its sessions (their data connections
included) and exits; a new binary that cannot start leaves the old one serving and makes the
command exit non-zero. Real peers: vsftpd plain and vsftpd doing explicit FTPS as backends,
ftplib clients (implicit and explicit, passive and active, downloads and uploads).

The gateway runs from a copy of build/ftpsgate in the test's own directory, so that the
copy can be replaced by a program that exits at once. Sizes: FTPSGATE_UPGRADE_MIB=LO-HI
(default 2-8 MiB, paced so that every transfer lasts several seconds and spans both
upgrades; the issue's 64-256 MiB with FTPSGATE_UPGRADE_MIB=64-256, which takes minutes) and
FTPSGATE_UPGRADE_TRANSFERS (default 50)."""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import peers
from peers import GATEWAY_BIN, HOST, MiB, backend_tls, frontend, render_ini, wait_for

GREETING = "upgrade test gateway"
READY_LINE = re.compile(r"upgraded: new process (\d+) serves")


def _range_env(name: str, default: tuple[int, int]) -> tuple[int, int]:
    value = os.environ.get(name)
    if not value:
        return default
    lo, _, hi = value.partition("-")
    return int(lo), int(hi or lo)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
        if m:
            return int(m.group(1))
    return 0


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
                if t.startswith("socket:["):
                    out.add(t[8:-1])
    return out


def server_side_owner(port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of pids holds the gateway's end of the connection from client_port to port."""
    want_local = f"0100007F:{port:04X}"
    want_remote = f"0100007F:{client_port:04X}"
    inode = None
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == want_local and fields[2] == want_remote:
                inode = fields[9]
                break
    if inode is None or inode == "0":
        return None
    for pid in pids:
        if inode in _socket_inodes(pid):
            return pid
    return None


class NotifyListener:
    """systemd's side of sd_notify, with the sender's PID of every message (SCM_CREDENTIALS)."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[int, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.done = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        size = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self.done:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, size)
            except socket.timeout:
                continue
            except OSError:
                return
            pid = 0
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:12])[0]
            fields = dict(x.split("=", 1) for x in data.decode().split("\n") if "=" in x)
            with self.lock:
                self.messages.append((pid, fields))

    def from_pid(self, pid: int) -> list[dict[str, str]]:
        with self.lock:
            return [m for p, m in self.messages if p == pid]

    def close(self):
        self.done = True
        self.thread.join(2)
        self.sock.close()


class Upgradable:
    """A gateway started from a copy of the binary (bin/ftpsgate in its directory), whose
    processes (the first and every one an upgrade started) are tracked and all stopped at
    the end."""

    def __init__(self, directory: Path, ports: "RecordedPorts", sections: dict,
                 env: dict[str, str] | None = None):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "bin").mkdir(exist_ok=True)
        self.bin = self.dir / "bin" / "ftpsgate"
        shutil.copy2(GATEWAY_BIN, self.bin)
        self.config = self.dir / "gw.ini"
        self.config.write_text(render_ini(sections))
        self.log_path = self.dir / "gw.log"
        self.ports = ports
        self.sections = sections
        out = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(self.bin), "-c", str(self.config)], cwd=self.dir,
                                     stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        out.close()
        self.pids = [self.proc.pid]
        self.first_exit: float | None = None
        self.first_status: int | None = None
        threading.Thread(target=self._reap_first, daemon=True).start()
        port = int(str(sections["frontend fe"]["listen"]).rsplit(":", 1)[1])
        peers.wait_listening(self.proc, port, 15, "ftpsgate", self.log_path)
        self.mark(0).wait(r"event=started ", 15)

    def _reap_first(self):
        self.first_status = self.proc.wait()
        self.first_exit = time.monotonic()

    def mark(self, at: int | None = None) -> peers.LogCursor:
        """The log cursor of peers.Gateway.mark, on this process's log."""
        if at is None:
            at = self.log_path.stat().st_size if self.log_path.exists() else 0
        return peers.LogCursor(self.log_path, at)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def port(self, frontend_name: str) -> int:
        return int(str(self.sections[f"frontend {frontend_name}"]["listen"]).rsplit(":", 1)[1])

    def upgrade(self) -> tuple[subprocess.CompletedProcess, int | None]:
        """`ftpsgate -s upgrade` (the client from the build tree: the copy may be broken)."""
        res = subprocess.run([str(GATEWAY_BIN), "-s", "upgrade", "-c", str(self.config)],
                             capture_output=True, text=True, timeout=120)
        m = READY_LINE.search(res.stdout)
        pid = int(m.group(1)) if m else None
        if pid:
            self.pids.append(pid)
        return res, pid

    def stop(self) -> list[str]:
        problems = []
        for pid in self.pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in self.pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self.pids:
            if alive(pid):
                problems.append(f"pid {pid} did not stop after SIGTERM")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        log = self.log
        for marker in peers.CRASH_MARKERS:
            if marker in log:
                problems.append(f"sanitizer report in the log ({marker!r})")
        return problems


class RecordedPorts:
    """The test's ports, given back to the allocator once its gateways have stopped."""

    def __init__(self, ports: peers.PortAllocator):
        self.ports, self.given = ports, []

    def port(self) -> int:
        self.given.append(self.ports.port())
        return self.given[-1]

    def range(self, n: int) -> tuple[int, int]:
        lo, hi = self.ports.range(n)
        self.given += range(lo, hi + 1)
        return lo, hi


@pytest.fixture
def uports(ports):
    recorded = RecordedPorts(ports)
    yield recorded
    ports.release(recorded.given)


@pytest.fixture
def upgradable(tmp_path, uports):
    made: list[Upgradable] = []
    # A unix socket path must fit 107 bytes: tmp_path may be too deep for the control socket.
    short = Path(tempfile.mkdtemp(prefix="fgupg-"))

    def make(sections: dict, env: dict[str, str] | None = None) -> Upgradable:
        sections["global"].setdefault("control_socket", short / f"ctl{len(made)}.sock")
        gw = Upgradable(tmp_path / f"gw{len(made)}", uports, sections, env)
        made.append(gw)
        return gw

    yield make
    problems = []
    for gw in made:
        problems += gw.stop()
    shutil.rmtree(short, ignore_errors=True)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def base_sections(uports, tls_cert, plain_be: peers.Backend, tls_be: peers.Backend | None,
                  **global_keys) -> dict:
    """Frontends fe (implicit) and x (explicit) toward the plain vsftpd; fi and xt toward
    the FTPS one; p (plain, the gateway's own greeting: no backend connection) for probes."""
    pasv = uports.range(150)
    cert, key = tls_cert
    sections = {
        "global": {"log_level": "info", "idle_timeout": 120, "login_timeout": 30,
                   "max_sessions_per_ip": 1000, "admin_listen": f"{HOST}:{uports.port()}",
                   **global_keys},
        "tls": {"cert": cert, "key": key},
        "backend be": {"address": plain_be.address, "tls": "none", "health_interval": 0},
    }
    fronts = {"fe": ("implicit", "be"), "x": ("explicit", "be"), "p": ("plain", "be")}
    if tls_be is not None:
        sections["backend bt"] = {"address": tls_be.address, "health_interval": 0,
                                  **backend_tls("explicit", ca_file=tls_be.cert)}
        fronts.update({"fi": ("implicit", "bt"), "xt": ("explicit", "bt")})
    for name, (mode, be) in fronts.items():
        keys = frontend(mode, listen=f"{HOST}:{uports.port()}", backend=be,
                        pasv_ports=f"{pasv[0]}-{pasv[1]}", active_source_port=0)
        if name == "p":
            keys["greeting"] = GREETING
        sections[f"frontend {name}"] = keys
    return sections


# ---------------------------------------------------------------------------------------
# Clients


class Prober(threading.Thread):
    """A client connecting every `interval` seconds to the probe frontend: the time to the
    greeting (accept latency), the process that holds the connection, refusals."""

    def __init__(self, gw: Upgradable, interval: float, owners: bool = True):
        super().__init__(daemon=True)
        self.gw, self.interval, self.owners = gw, interval, owners
        self.port = gw.port("p")
        self.results: list[tuple[float, float, int | None, str]] = []  # start, latency, pid, err
        self.stopping = threading.Event()

    def one(self) -> tuple[float, float, int | None, str]:
        t0 = time.monotonic()
        try:
            with socket.create_connection((HOST, self.port), timeout=10) as s:
                buf = b""
                while b"\r\n" not in buf:
                    chunk = s.recv(1024)
                    if not chunk:
                        return t0, time.monotonic() - t0, None, f"closed after {buf!r}"
                    buf += chunk
                latency = time.monotonic() - t0
                if not buf.startswith(b"220 "):
                    return t0, latency, None, f"greeting {buf!r}"
                pid = None
                if self.owners:
                    pid = server_side_owner(self.port, s.getsockname()[1], self.gw.pids)
                s.sendall(b"QUIT\r\n")
                with contextlib.suppress(OSError):
                    s.recv(1024)
                return t0, latency, pid, ""
        except OSError as e:
            return t0, time.monotonic() - t0, None, f"{type(e).__name__}: {e}"

    def run(self):
        nxt = time.monotonic()
        while not self.stopping.is_set():
            self.results.append(self.one())
            nxt += self.interval
            delay = nxt - time.monotonic()
            if delay > 0:
                self.stopping.wait(delay)
            else:
                nxt = time.monotonic()

    def stop(self):
        self.stopping.set()
        self.join(30)

    def errors(self) -> list[str]:
        return [f"probe at {t:.3f}: {err}" for t, _, _, err in self.results if err]


@dataclass
class Transfer:
    name: str
    frontend: str
    implicit: bool
    upload: bool
    active: bool
    backend: peers.Backend
    size: int
    pace: float  # seconds the first transfer should last
    again: bool = False  # a second, small transfer in the same session afterwards
    sha_expected: str = ""
    sha_got: str = ""
    second_ok: bool | None = None
    error: str = ""
    started: threading.Event = field(default_factory=threading.Event)
    ended: float = 0.0
    thread: threading.Thread | None = None


def _session(t: Transfer, port: int, ctx: ssl.SSLContext, user: str, password: str):
    if t.implicit:
        return peers.ftplib_session(port, user, password, ctx, timeout=60)
    return peers.ftplib_explicit_session(port, user, password, ctx, timeout=60)


def _paced(t0: float, done: int, size: int, pace: float):
    """Sleep so that `done` bytes of `size` took about `pace` seconds in all."""
    ahead = t0 + pace * done / size - time.monotonic()
    if ahead > 0:
        time.sleep(min(ahead, 0.5))


def run_transfer(t: Transfer, port: int, ctx: ssl.SSLContext, user: str, password: str,
                 source: Path | None):
    try:
        with _session(t, port, ctx, user, password) as ftp:
            ftp.set_pasv(not t.active)
            ftp.voidcmd("TYPE I")
            h = hashlib.sha256()
            t0 = time.monotonic()
            if t.upload:
                with ftp.transfercmd(f"STOR {t.name}") as conn, open(source, "rb") as f:
                    t.started.set()
                    done = 0
                    while chunk := f.read(64 * 1024):
                        conn.sendall(chunk)
                        done += len(chunk)
                        _paced(t0, done, t.size, t.pace)
                    if isinstance(conn, ssl.SSLSocket):
                        conn.unwrap()
                ftp.voidresp()
                t.sha_got = peers.sha256_file(t.backend.path(t.name))
            else:
                with ftp.transfercmd(f"RETR {t.name}") as conn:
                    t.started.set()
                    done = 0
                    while data := conn.recv(64 * 1024):
                        h.update(data)
                        done += len(data)
                        _paced(t0, done, t.size, t.pace)
                    if isinstance(conn, ssl.SSLSocket):
                        conn.unwrap()
                ftp.voidresp()
                t.sha_got = h.hexdigest()
            t.ended = time.monotonic()
            if t.again:  # a new data connection of the old process's session
                got = []
                ftp.retrbinary(f"RETR {t.name}.small", got.append)
                t.second_ok = b"".join(got) == b"small file\n" * 1000
    except Exception as e:  # noqa: BLE001 - recorded and asserted by the test
        t.error = f"{type(e).__name__}: {e}"
        t.started.set()
        t.ended = t.ended or time.monotonic()


# ---------------------------------------------------------------------------------------
# Tests


@pytest.mark.serial  # 50 paced transfers and a probe every 50 ms: load, timing
def test_upgrade_under_load(upgradable, uports, tls_cert, vsftpd, vsftpd_ftps, blobs,
                            client_ctx, test_user, tmp_path):
    n = int(os.environ.get("FTPSGATE_UPGRADE_TRANSFERS", "50"))
    lo, hi = _range_env("FTPSGATE_UPGRADE_MIB", (2, 8))
    user, password = test_user
    # Two workers: each frontend has two listening sockets (SO_REUSEPORT), both handed over.
    sections = base_sections(uports, tls_cert, vsftpd, vsftpd_ftps, workers=2)
    sections["frontend s"] = frontend("implicit", listen=f"{HOST}:{uports.port()}",
                                      backend="be", active_source_port=0,
                                      pasv_ports=sections["frontend fe"]["pasv_ports"],
                                      pasv_shared_port=uports.port())
    gw = upgradable(sections)
    first_pid = gw.proc.pid
    rnd = random.Random(23)
    kinds = [(fe, up, act, be)
             for fe, be in (("fe", vsftpd), ("x", vsftpd), ("fi", vsftpd_ftps),
                            ("xt", vsftpd_ftps), ("s", vsftpd))
             for up in (False, True) for act in (False, True)]
    sizes = sorted({rnd.randint(lo, hi) * MiB + rnd.randint(0, 4095) for _ in range(4)})
    transfers: list[Transfer] = []
    sources: dict[int, Path] = {}
    tag = uuid.uuid4().hex[:8]
    for i in range(n):
        fe, up, act, be = kinds[i % len(kinds)]
        size = sizes[i % len(sizes)]
        t = Transfer(name=f"upg-{tag}-{i}", frontend=fe, implicit=fe in ("fe", "fi", "s"),
                     upload=up, active=act, backend=be, size=size,
                     pace=6.0 + (size / MiB) / 8,
                     again=i % 5 == 0 or (fe == "s" and not act))
        src, digest = blobs.blob(size)
        t.sha_expected = digest
        if up:
            sources[i] = src
        else:
            be.put(blobs, t.name, size)
        if t.again:
            be.put_bytes(f"{t.name}.small", b"small file\n" * 1000)
        transfers.append(t)
    prober = Prober(gw, 0.05)
    prober.start()
    for i, t in enumerate(transfers):
        t.thread = threading.Thread(target=run_transfer, daemon=True,
                                    args=(t, gw.port(t.frontend), client_ctx, user, password,
                                          sources.get(i)))
        t.thread.start()
    for t in transfers:
        assert t.started.wait(60), f"{t.name} did not start"
    errors_before = [t.error for t in transfers if t.error]
    assert not errors_before, errors_before

    # Upgrade 1: to the same binary (copied again: what a package upgrade does).
    shutil.copy2(GATEWAY_BIN, gw.bin.with_suffix(".new"))
    os.replace(gw.bin.with_suffix(".new"), gw.bin)
    t_up1 = time.monotonic()
    res, new_pid = gw.upgrade()
    t_ok1 = time.monotonic()
    assert res.returncode == 0, (res.stdout, res.stderr, gw.log[-4000:])
    assert new_pid and new_pid != first_pid and alive(new_pid)
    running = [t.name for t in transfers if not t.ended]
    assert running, "every transfer ended before the upgrade: nothing was tested"

    # Upgrade 2: to a binary that exits at once. The new process serves on.
    time.sleep(0.5)
    broken = gw.bin.with_suffix(".broken")
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    os.replace(broken, gw.bin)
    res2, pid2 = gw.upgrade()
    assert res2.returncode != 0 and pid2 is None, (res2.stdout, res2.stderr)
    assert "exited with status 1" in res2.stderr, res2.stderr
    assert alive(new_pid)

    for t in transfers:
        t.thread.join(600)
    time.sleep(1)  # probes after the last transfer too
    prober.stop()

    failed = [f"{t.name} ({t.frontend} {'up' if t.upload else 'down'} "
              f"{'active' if t.active else 'passive'}): {t.error or 'SHA-256 differs'}"
              for t in transfers if t.error or t.sha_got != t.sha_expected]
    assert not failed, "\n".join(failed) + "\n" + gw.log[-6000:]
    assert all(t.second_ok for t in transfers if t.again), \
        [(t.name, t.second_ok) for t in transfers if t.again]
    assert not prober.errors(), prober.errors()[:20]
    after = [(t, pid) for t, _, pid, _ in prober.results if t > t_ok1]
    assert len(after) > 20
    wrong = [(round(t - t_ok1, 3), pid) for t, pid in after if pid != new_pid]
    assert not wrong, f"sessions after the hand-over not served by {new_pid}: {wrong[:20]}"
    before = {pid for t, _, pid, _ in prober.results if t < t_up1}
    assert before <= {first_pid, None} and first_pid in before

    # The old process exits after its last transfer, not before.
    wait_for(lambda: gw.first_exit is not None, 30, "the old process's exit")
    last_end = max(t.ended for t in transfers)
    assert gw.first_status == 0, gw.log[-4000:]
    assert gw.first_exit >= max(t.ended for t in transfers if t.name in running) - 0.2
    assert gw.first_exit <= last_end + 15, (gw.first_exit - last_end)
    log = gw.log
    assert f"event=upgrade_handed_over new_pid={new_pid}" in log
    # The shared port's second transfers of old sessions went back to the old process.
    assert log.count("event=shared_port_forwarded") >= sum(
        1 for t in transfers if t.again and t.frontend == "s"), log[-4000:]
    assert "event=upgrade_failed" in log
    lat = [lat for _, lat, _, _ in prober.results]
    print(f"\nupgrade under load: {n} transfers of {lo}-{hi} MiB, "
          f"{len(running)} running at the hand-over; {len(prober.results)} probes, "
          f"max greeting latency {max(lat) * 1000:.1f} ms; old pid exited "
          f"{gw.first_exit - last_end:+.2f} s after the last transfer ended")


def test_upgrade_grace_cuts_old_sessions(upgradable, uports, tls_cert, vsftpd, blobs,
                                         client_ctx, test_user, tmp_path):
    """upgrade_grace = 2: a download still running 2 s after the hand-over gets 421 and the
    old process exits; the new one serves."""
    user, password = test_user
    gw = upgradable(base_sections(uports, tls_cert, vsftpd, None, upgrade_grace=2))
    vsftpd.put(blobs, "grace-slow.bin", 8 * MiB)
    ftp = peers.ImplicitFTPS(context=client_ctx, timeout=30)
    ftp.connect(HOST, gw.port("fe"))
    try:
        ftp.login(user, password)
        ftp.prot_p()
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd("RETR grace-slow.bin")
        conn.recv(16 * 1024)
        res, new_pid = gw.upgrade()
        t_ok = time.monotonic()
        assert res.returncode == 0, (res.stdout, res.stderr)
        got, err = 0, ""
        try:
            while True:  # 64 KiB/s: 2 minutes for the file, unless cut
                data = conn.recv(16 * 1024)
                if not data:
                    break
                got += len(data)
                time.sleep(0.25)
                if time.monotonic() - t_ok > 30:
                    break
        except OSError as e:
            err = str(e)
        with contextlib.suppress(OSError):
            conn.close()
        replies = []
        while not replies or not replies[-1].startswith("421"):
            try:  # the transfer's final reply (426), if any, then the 421
                replies.append(ftp.getresp())
            except (ftplib.error_temp, ftplib.error_perm) as e:
                replies.append(str(e))
            except EOFError:
                break
        assert replies and replies[-1].startswith("421"), (replies, err)
        cut_after = time.monotonic() - t_ok
    finally:
        ftp.close()
    assert 1.5 <= cut_after <= 8, cut_after
    assert got < 8 * MiB
    wait_for(lambda: gw.first_exit is not None, 15, "the old process's exit")
    assert gw.first_status == 0
    assert "event=upgrade_grace_over" in gw.log
    assert alive(new_pid)
    with peers.ftplib_session(gw.port("fe"), user, password, client_ctx) as ftp2:
        assert ftp2.size("grace-slow.bin") == 8 * MiB


def test_upgrade_systemd_notify_and_failed_start(upgradable, uports, tls_cert, vsftpd,
                                                 tmp_path):
    """Under systemd (NotifyAccess=all) the new process announces itself: READY=1 with
    MAINPID= its own PID; the old one says nothing after the hand-over (no STOPPING=1 that
    would stop the unit). A binary that is not there: exit 1, the old serves on."""
    ns = NotifyListener(str(tmp_path / "notify.sock"))
    try:
        gw = upgradable(base_sections(uports, tls_cert, vsftpd, None),
                        env={"NOTIFY_SOCKET": ns.path})
        first = gw.proc.pid
        wait_for(lambda: any(m.get("READY") == "1" for m in ns.from_pid(first)), 10, "READY")
        gw.bin.unlink()
        res, pid = gw.upgrade()
        assert res.returncode == 1 and pid is None, (res.stdout, res.stderr)
        assert "cannot start" in res.stderr or "exited" in res.stderr, res.stderr
        shutil.copy2(GATEWAY_BIN, gw.bin)
        seen_old = len(ns.from_pid(first))
        res, new_pid = gw.upgrade()
        assert res.returncode == 0, (res.stdout, res.stderr)
        wait_for(lambda: any(m.get("READY") == "1" and m.get("MAINPID") == str(new_pid)
                             for m in ns.from_pid(new_pid)), 10, "the new READY=1 MAINPID=")
        wait_for(lambda: gw.first_exit is not None, 15, "the old process's exit")
        late = ns.from_pid(first)[seen_old:]
        assert all("STOPPING" not in m and "READY" not in m for m in late), late
        # The new process answers the control socket: a reload works and a second upgrade too.
        res = subprocess.run([str(GATEWAY_BIN), "-s", "reload", "-c", str(gw.config)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, (res.stdout, res.stderr)
        with socket.create_connection((HOST, gw.port("p")), timeout=5) as s:
            assert s.recv(100).startswith(b"220 ")
        # The admin endpoint's socket was handed over too: the new process answers on it.
        admin = gw.sections["global"]["admin_listen"]
        with urllib.request.urlopen(f"http://{admin}/healthz", timeout=5) as r:
            assert r.status == 200
        assert "event=admin_listening" in gw.log.split(f"event=upgrade_started pid={new_pid}")[1]
        assert "inherited=yes" in gw.log.split(f"event=upgrade_started pid={new_pid}")[1]
    finally:
        ns.close()


@pytest.mark.measure  # printed for RESULTS.md: `make bench-upgrade` runs it
@pytest.mark.serial  # a client every 10 ms: timing
def test_upgrade_accept_latency_and_memory(upgradable, uports, tls_cert, vsftpd, blobs,
                                           client_ctx, test_user):
    """Measured, not asserted (tests/bench/RESULTS.md): the longest a new connection waits
    for its greeting while the gateway upgrades (a client every 10 ms), and the memory of
    the two processes side by side while the old one drains 20 downloads. No connection
    may be refused."""
    user, password = test_user
    gw = upgradable(base_sections(uports, tls_cert, vsftpd, None))
    size = 4 * MiB
    transfers = []
    tag = uuid.uuid4().hex[:8]
    for i in range(20):
        t = Transfer(name=f"lat-{tag}-{i}", frontend="fe", implicit=True, upload=False,
                     active=False, backend=vsftpd, size=size, pace=6.0)
        t.sha_expected = vsftpd.put(blobs, t.name, size)
        t.thread = threading.Thread(target=run_transfer, daemon=True,
                                    args=(t, gw.port("fe"), client_ctx, user, password, None))
        transfers.append(t)
        t.thread.start()
    for t in transfers:
        assert t.started.wait(60)
    prober = Prober(gw, 0.01, owners=False)
    prober.start()
    time.sleep(1.0)
    rss_before = rss_kib(gw.proc.pid)
    t_up = time.monotonic()
    res, new_pid = gw.upgrade()
    t_ok = time.monotonic()
    assert res.returncode == 0, (res.stdout, res.stderr)
    time.sleep(0.5)
    rss_old, rss_new = rss_kib(gw.proc.pid), rss_kib(new_pid)
    time.sleep(1.0)
    prober.stop()
    for t in transfers:
        t.thread.join(120)
    assert not [t.error for t in transfers if t.error]
    assert all(t.sha_got == t.sha_expected for t in transfers)
    assert not prober.errors(), prober.errors()[:20]

    def worst(a, b):
        lats = [lat for t, lat, _, _ in prober.results if a <= t < b]
        return (max(lats) * 1000 if lats else 0.0), len(lats)

    w_before, n_before = worst(0, t_up)
    w_during, n_during = worst(t_up, t_ok + 0.2)
    w_after, n_after = worst(t_ok + 0.2, float("inf"))
    print(f"\naccept latency (greeting, a client every 10 ms): max {w_before:.1f} ms before "
          f"({n_before} probes), {w_during:.1f} ms during the upgrade ({n_during} probes, "
          f"{(t_ok - t_up) * 1000:.0f} ms from the command to its answer), {w_after:.1f} ms "
          f"after ({n_after} probes); 0 refused")
    print(f"memory (VmRSS): {rss_before} KiB before; side by side while draining 20 "
          f"downloads: old {rss_old} KiB, new {rss_new} KiB")


def test_upgrade_keeps_bans_and_backend_health(upgradable, uports, tls_cert, vsftpd, test_user):
    """The ban list and the backends health checks marked down pass to the new process: a
    banned address is still refused by it, and a dead backend is down there at once."""
    user, _ = test_user
    dead = uports.port()  # nothing listens there
    sections = base_sections(uports, tls_cert, vsftpd, None, ban_after=2, ban_time=120)
    sections["backend dead"] = {"address": f"{HOST}:{dead}", "tls": "none",
                                "health_interval": 1, "health_fall": 1}
    gw = upgradable(sections)
    gw.mark(0).wait(r"event=backend_down backend=dead", 15)

    def greeting() -> bytes:
        with socket.create_connection((HOST, gw.port("p")), timeout=5) as s:
            return s.recv(200)

    for _ in range(2):  # two failed logins ban 127.0.0.1
        with socket.create_connection((HOST, gw.port("p")), timeout=10) as s:
            f = s.makefile("rb")
            assert f.readline().startswith(b"220")
            s.sendall(f"USER {user}\r\n".encode())
            assert f.readline().startswith(b"331")
            s.sendall(b"PASS wrong-password\r\n")
            f.readline()
    gw.mark(0).wait(r"event=ban ", 10)
    assert greeting().startswith(b"421 Too many failed logins")
    res, new_pid = gw.upgrade()
    assert res.returncode == 0, (res.stdout, res.stderr)
    wait_for(lambda: gw.first_exit is not None, 15, "the old process's exit")
    assert greeting().startswith(b"421 Too many failed logins")  # the new process refuses
    log = gw.log
    assert re.search(r"event=upgrade_state bans=1 bans_failed=0 backends_down=1", log), log[-3000:]
    assert 'event=backend_down backend=dead' in log.split("event=upgrade_state ")[1]
    assert 'reason="down before the upgrade"' in log


def test_upgrade_keeps_backend_runtime_state(upgradable, uports, tls_cert, vsftpd, tmp_path):
    """A backend drained (or in maint) through the admin endpoint stays so in the new
    process, like across a reload, until an operator changes it."""
    from test_admin_access import as_user, http, set_state, users_file
    sections = base_sections(uports, tls_cert, vsftpd, None, admin_users=users_file(tmp_path))
    sections["backend spare"] = {"address": vsftpd.address, "tls": "none", "health_interval": 0}
    sections["frontend x"]["backend"] = "be, spare"
    gw = upgradable(sections)
    gw.admin = f"http://{sections['global']['admin_listen']}"
    assert set_state(gw, "be", "drain")[0] == 200
    assert set_state(gw, "spare", "maint")[0] == 200
    res, new_pid = gw.upgrade()
    assert res.returncode == 0, (res.stdout, res.stderr)
    wait_for(lambda: gw.first_exit is not None, 15, "the old process's exit")
    gw.mark(0).wait(r"event=backend_admin_state backend=be state=drain from=upgrade", 10)
    status, _, text = http(gw, "GET", "/metrics", *as_user("prom"))
    assert status == 200
    for backend, state in (("be", "drain"), ("spare", "maint")):
        for s in ("ready", "drain", "maint"):
            assert peers.metric(text, "ftpsgate_backend_admin_state", backend=backend,
                                state=s) == (1 if s == state else 0), (backend, s)
    assert set_state(gw, "be", "ready")[0] == 200  # the new process takes changes


@pytest.mark.skipif(shutil.which("systemd-analyze") is None or shutil.which("strace") is None,
                    reason="systemd-analyze or strace absent (Debian packages systemd, strace)")
def test_upgrade_passes_the_unit_sandbox(upgradable, uports, tls_cert, vsftpd, blobs,
                                         client_ctx, test_user, tmp_path):
    """The upgrade's system calls (socketpair, clone, execve of the new binary, the
    hand-over) pass config/ftpsgate.service's SystemCallFilter: the old and the new process
    run under strace -f through an upgrade with a download across it."""
    from test_systemd import _unit_syscalls

    allowed, _ = _unit_syscalls()
    user, password = test_user
    sections = base_sections(uports, tls_cert, vsftpd, None, workers=2)
    short = Path(tempfile.mkdtemp(prefix="fgupgs-"))
    sections["global"]["control_socket"] = short / "ctl.sock"
    config = tmp_path / "gw.ini"
    config.write_text(render_ini(sections))
    trace = tmp_path / "strace.out"
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "detect_leaks=0"]))
    log = open(tmp_path / "gw.log", "wb")
    proc = subprocess.Popen(["strace", "-f", "-qq", "-o", str(trace), str(GATEWAY_BIN), "-c",
                             str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
    new_pid = None
    port = int(str(sections["frontend fe"]["listen"]).rsplit(":", 1)[1])
    try:
        peers.LogCursor(tmp_path / "gw.log", 0).wait(r"event=started ", 30)
        digest = vsftpd.put(blobs, "sandbox-upg.bin", 2 * MiB)
        with peers.ftplib_session(port, user, password, client_ctx) as ftp:
            ftp.voidcmd("TYPE I")
            h = hashlib.sha256()
            with ftp.transfercmd("RETR sandbox-upg.bin") as conn:
                h.update(conn.recv(64 * 1024))
                res = subprocess.run([str(GATEWAY_BIN), "-s", "upgrade", "-c", str(config)],
                                     capture_output=True, text=True, timeout=120)
                assert res.returncode == 0, (res.stdout, res.stderr)
                new_pid = int(READY_LINE.search(res.stdout).group(1))
                while data := conn.recv(64 * 1024):
                    h.update(data)
                conn.unwrap()
            ftp.voidresp()
            assert h.hexdigest() == digest
        with peers.ftplib_session(port, user, password, client_ctx) as ftp:
            ftp.retrlines("LIST", lambda _: None)
        peers.LogCursor(tmp_path / "gw.log", 0).wait(r"event=stopped", 15)
        os.kill(new_pid, signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        for pid in (new_pid, proc.pid):
            if pid and alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        log.close()
        shutil.rmtree(short, ignore_errors=True)
    text = trace.read_text()
    used = set(re.findall(r"^\d+ +([a-z_0-9]+)\(", text, re.M))
    assert {"socketpair", "execve"} <= used, sorted(used)
    assert used - allowed == set(), sorted(used - allowed)


def test_failed_start_after_adoption_leaves_everything_serving(upgradable, uports, tls_cert,
                                                               vsftpd, test_user):
    """A new process that adopts the sockets and then fails (the configuration on disk now
    names a port in use): the old process still accepts on every socket (frontends, admin,
    the control socket and its file), `-s upgrade` exits 1 with the reason."""
    gw = upgradable(base_sections(uports, tls_cert, vsftpd, None, workers=2))
    busy = socket.socket()
    busy.bind((HOST, 0))
    busy.listen(1)
    sections = dict(gw.sections)
    sections["frontend extra"] = frontend("plain", listen=f"{HOST}:{busy.getsockname()[1]}",
                                          backend="be", active_source_port=0,
                                          pasv_ports=sections["frontend fe"]["pasv_ports"])
    gw.config.write_text(render_ini(sections))
    try:
        res, pid = gw.upgrade()
    finally:
        busy.close()
    assert res.returncode == 1 and pid is None, (res.stdout, res.stderr)
    assert "exited with status 2" in res.stderr, res.stderr
    log = gw.log
    assert "event=listener_inherited" in log and "cannot listen on" in log, log[-3000:]
    assert gw.proc.poll() is None
    for _ in range(20):  # both workers' sockets (SO_REUSEPORT spreads by source port)
        with socket.create_connection((HOST, gw.port("p")), timeout=5) as s:
            assert s.recv(100).startswith(b"220 ")
    admin = gw.sections["global"]["admin_listen"]
    with urllib.request.urlopen(f"http://{admin}/healthz", timeout=5) as r:
        assert r.status == 200
    gw.config.write_text(render_ini(gw.sections))
    res = subprocess.run([str(GATEWAY_BIN), "-s", "reload", "-c", str(gw.config)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, (res.stdout, res.stderr)  # the control socket: still there
    res, pid = gw.upgrade()  # and a good upgrade afterwards
    assert res.returncode == 0 and pid, (res.stdout, res.stderr)


def test_old_sessions_keep_using_the_shared_passive_port(upgradable, uports, tls_cert, vsftpd,
                                                         blobs, client_ctx, test_user):
    """pasv_shared_port after an upgrade: the new process holds the port; a data connection
    for a session of the old process (TLS, matched by its ticket; clear, matched by
    address) goes back to the old process, which serves it; the new process's own
    sessions are matched there as usual."""
    user, password = test_user
    sections = base_sections(uports, tls_cert, vsftpd, None)
    fe = sections["frontend fe"]
    sections["frontend s"] = frontend("implicit", listen=f"{HOST}:{uports.port()}", backend="be",
                                      pasv_ports=fe["pasv_ports"], active_source_port=0,
                                      pasv_shared_port=uports.port())
    sections["frontend c"] = frontend("plain", listen=f"{HOST}:{uports.port()}", backend="be",
                                      pasv_ports=fe["pasv_ports"], active_source_port=0,
                                      pasv_shared_port=uports.port())
    gw = upgradable(sections)
    digest = vsftpd.put(blobs, "shport-upg.bin", 3 * MiB + 17)

    def get(ftp) -> str:
        h = hashlib.sha256()
        ftp.retrbinary("RETR shport-upg.bin", h.update)
        return h.hexdigest()

    def pasv_port(ftp) -> int:
        return peers.parse_227(ftp.sendcmd("PASV"))[1]

    with contextlib.ExitStack() as stack:
        tls = stack.enter_context(peers.ftplib_session(gw.port("s"), user, password, client_ctx))
        clear = ftplib.FTP()
        clear.connect(HOST, gw.port("c"), timeout=30)
        stack.callback(clear.close)
        clear.login(user, password)
        assert get(tls) == digest and get(clear) == digest
        res, new_pid = gw.upgrade()
        assert res.returncode == 0, (res.stdout, res.stderr)
        mark = len(gw.log)
        for ftp, name in ((tls, "s"), (clear, "c")):  # sessions of the old process
            for _ in range(2):
                assert get(ftp) == digest
        assert gw.log[mark:].count("event=shared_port_forwarded") >= 4, gw.log[mark:][-3000:]
        assert "event=shared_port_unmatched" not in gw.log[mark:]
        with peers.ftplib_session(gw.port("s"), user, password, client_ctx) as fresh:
            assert get(fresh) == digest  # the new process's own session
        assert pasv_port(tls) == sections["frontend s"]["pasv_shared_port"]
        tls.voidcmd("NOOP")
        assert gw.first_exit is None  # the old process still serves its two sessions
        clear.quit()  # tls: quit on leaving
    wait_for(lambda: gw.first_exit is not None, 15, "the old process's exit")
    assert gw.first_status == 0


def test_sigusr2_upgrades_without_control_socket(upgradable, uports, tls_cert, vsftpd,
                                                 client_ctx, test_user):
    """SIGUSR2 does what `-s upgrade` does, for a gateway with control_socket = off: the new
    process serves (the outcome is in the log), the old one exits once idle."""
    user, password = test_user
    gw = upgradable(base_sections(uports, tls_cert, vsftpd, None, control_socket="off"))
    os.kill(gw.proc.pid, signal.SIGUSR2)
    new_pid = int(gw.mark(0).wait(r"event=upgrade_handed_over new_pid=(\d+)", 30).group(1))
    gw.pids.append(new_pid)
    wait_for(lambda: gw.first_exit is not None, 15, "the old process's exit")
    assert alive(new_pid) and gw.first_status == 0
    with peers.ftplib_session(gw.port("fe"), user, password, client_ctx) as ftp:
        ftp.voidcmd("NOOP")
    owner = None
    with socket.create_connection((HOST, gw.port("p")), timeout=5) as s:
        assert s.recv(100).startswith(b"220 ")
        owner = server_side_owner(gw.port("p"), s.getsockname()[1], gw.pids)
    assert owner == new_pid
