#!/usr/bin/python3
"""Relay budget: ftpsgate's CPU per GiB against the physical floor, HAProxy, and a build of
another commit (before/after), all in one run, alternating, as ratios.

    tests/bench/floor.py --quick          under 3 minutes: 128 MiB, 3 repetitions
    tests/bench/floor.py                  1 GiB, 5 repetitions, 1,000 idle sessions
    tests/bench/floor.py --before BIN     the "before" gateway (default: FTPSGATE_BEFORE,
                                          else build/bench/before-af78c49/build/ftpsgate,
                                          which `make bench-floor` builds)

What it measures and how: tests/bench/README.md, "Relay floor". Writes
build/bench/FLOOR.md (--results moves it). Root, stdlib only, uses tests/bench/bench.py's
servers and CPU accounting (a cgroup per server).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402

HOST = B.HOST
MiB, GiB = B.MiB, B.GiB
SUITE = "TLS_AES_128_GCM_SHA256"
BEFORE_DEFAULT = Path(os.environ.get(
    "FTPSGATE_BEFORE", B.REPO / "build" / "bench" / "before-af78c49" / "build" / "ftpsgate"))


def log(msg: str) -> None:
    B.log(msg)


class Table:
    """values[(row, col)] = [one per repetition]; the report shows medians and ratios."""

    def __init__(self):
        self.v: dict[tuple[str, str], list[float]] = {}
        self.notes: list[str] = []

    def add(self, row: str, col: str, x: float) -> None:
        self.v.setdefault((row, col), []).append(x)

    def med(self, row: str, col: str) -> float | None:
        x = self.v.get((row, col))
        return statistics.median(x) if x else None

    def paired(self, row: str, a: str = "after", b: str = "before") -> float | None:
        """Median of after/before taken repetition by repetition (the two ran back to
        back, so a slow phase of the machine hits both)."""
        xa, xb = self.v.get((row, a), []), self.v.get((row, b), [])
        r = [x / y for x, y in zip(xa, xb) if y]
        return statistics.median(r) if r else None

    def paired_quartiles(self, row: str, a: str, b: str) -> tuple[float, float, float] | None:
        """(q25, median, q75) of a/b taken round by round."""
        xa, xb = self.v.get((row, a), []), self.v.get((row, b), [])
        r = sorted(x / y for x, y in zip(xa, xb) if y)
        if not r:
            return None
        q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
        return q[0], statistics.median(r), q[2]

    def reps(self, row: str, col: str) -> str:
        return " ".join(f"{x:.3g}" for x in self.v.get((row, col), []))


# ---------------------------------------------------------------------------------------
# Relays that are not FTP: a byte stream from a source to a sink through one process.


def _listener() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind((HOST, 0))
    s.listen(8)
    return s, s.getsockname()[1]


def _send_file(sock: socket.socket, path: Path, size: int) -> None:
    """What vsftpd does for a RETR: sendfile(2) from the tmpfs file."""
    with open(path, "rb") as f:
        off = 0
        while off < size:
            off += os.sendfile(sock.fileno(), f.fileno(), off, size - off)
    sock.shutdown(socket.SHUT_WR)


def _sink(sock, size: int | None = None) -> int:
    buf = bytearray(256 * 1024)
    got = 0
    while True:
        n = sock.recv_into(buf)
        if not n:
            return got
        got += n


def socat_relay(data: B.Data) -> float:
    """CPU s/GiB of `socat -b 65536` relaying the file in clear (its rusage at exit)."""
    lsink, psink = _listener()
    port = B.Ports().take()
    proc = subprocess.Popen(["socat", "-b", "65536", f"TCP-LISTEN:{port},bind={HOST},reuseaddr",
                             f"TCP:{HOST}:{psink}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    got = [0]

    def sink():
        c, _ = lsink.accept()
        got[0] = _sink(c)
        c.close()
    th = threading.Thread(target=sink)
    th.start()
    deadline = time.monotonic() + 10
    while True:
        try:
            src = socket.create_connection((HOST, port))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    _send_file(src, data.big, data.size)
    th.join(120)
    src.close()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = status
    lsink.close()
    if got[0] != data.size:
        raise RuntimeError(f"socat relayed {got[0]} of {data.size} bytes")
    return (ru.ru_utime + ru.ru_stime) / (data.size / GiB)


def openssl_speed(decrypt: bool, seconds: int) -> float:
    """CPU s/GiB of AES-128-GCM on 16 KiB records (openssl speed is single-threaded: its
    bytes per second of CPU)."""
    cmd = ["openssl", "speed", "-evp", "aes-128-gcm", "-bytes", "16384", "-seconds", str(seconds)]
    if decrypt:
        cmd.insert(2, "-decrypt")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"^AES-128-GCM\s+([\d.]+)k", out, re.M)
    if not m:
        raise RuntimeError(f"openssl speed: {out[-300:]}")
    return GiB / (float(m.group(1)) * 1000)


HAPROXY_CONF = """\
global
    nbthread 1
    maxconn 4000
    ssl-default-bind-ciphersuites {suite}
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend tls
    bind {host}:{port} ssl crt {pem}
    default_backend be
backend be
    server s {host}:{be}
"""


def start_haproxy(workdir: Path, name: str, cert: tuple[Path, Path] | None, be_port: int
                  ) -> B.Server:
    """HAProxy terminating TLS (TCP mode) in front of be_port, one thread like the gateway's
    one worker; cert None: the same relay without TLS."""
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    pem = d / "crt.pem"
    if cert:
        pem.write_text(cert[0].read_text() + cert[1].read_text())
    port = B.Ports().take()
    conf = d / "haproxy.cfg"
    text = HAPROXY_CONF.format(suite=SUITE, host=HOST, port=port, pem=pem, be=be_port)
    conf.write_text(text if cert else text.replace(f" ssl crt {pem}", ""))
    log_ = d / "haproxy.log"
    proc = B.spawn(["haproxy", "-db", "-f", conf], log_, nofile=65536)
    B.wait_listening(proc, port, 10, name, log_)
    return B.Server(name, port, proc, log_, forks=False)


def tls_client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def haproxy_relay(hp: B.Server, lsrv: socket.socket, data: B.Data, direction: str) -> float:
    """One stream through HAProxy: RETR = the server side sends the file (sendfile) and a TLS
    client reads it; STOR = a TLS client sends it and the server side reads. CPU s/GiB of
    HAProxy from its cgroup."""
    result = [0]

    def server():
        c, _ = lsrv.accept()
        if direction == "RETR":
            _send_file(c, data.big, data.size)
            _sink(c)
        else:
            result[0] = _sink(c)
        c.close()
    cpu0 = hp.cpu_s()
    th = threading.Thread(target=server)
    th.start()
    with socket.create_connection((HOST, hp.port)) as raw:
        s = tls_client_ctx().wrap_socket(raw)
        if direction == "RETR":
            result[0] = _sink(s)
        else:
            chunk = 256 * 1024
            with open(data.big, "rb") as f:
                while True:
                    b = f.read(chunk)
                    if not b:
                        break
                    s.sendall(b)
            s.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                _sink(s)
        with contextlib.suppress(OSError):
            s.close()
    th.join(120)
    time.sleep(0.1)
    if result[0] != data.size:
        raise RuntimeError(f"haproxy moved {result[0]} of {data.size} bytes")
    return (hp.cpu_s() - cpu0) / (data.size / GiB)


# ---------------------------------------------------------------------------------------
# perf: where one transfer's CPU goes


def _frames(block: list[str]) -> list[tuple[str, str]]:
    out = []
    for ln in block[1:]:
        m = re.match(r"\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", ln)
        if m:
            out.append((re.sub(r"\+0x[0-9a-f]+$", "", m.group(1)), m.group(2)))
    return out


BUCKETS = ["kernel: receive copy (tcp_recvmsg)", "kernel: send + loopback (tcp_sendmsg)",
           "kernel: splice", "kernel: other (syscall entry, epoll, softirq, scheduler)",
           "crypto (libcrypto)", "TLS records (libssl)", "libc (memcpy, malloc)", "libuv",
           "ftpsgate", "other"]


GATEWAY_DSOS: set[str] = set()  # the basenames of the gateway binaries measured


def bucket(frames: list[tuple[str, str]]) -> str:
    if not frames:
        return "other"
    leaf_sym, leaf_dso = frames[0]
    if "kernel" in leaf_dso:
        names = [f[0] for f in frames]
        if any(n.startswith("tcp_recvmsg") for n in names):
            return BUCKETS[0]
        if any(n.startswith("tcp_sendmsg") for n in names):
            return BUCKETS[1]
        if any("splice" in n for n in names):
            return BUCKETS[2]
        return BUCKETS[3]
    dso = os.path.basename(leaf_dso)
    if dso.startswith("libcrypto"):
        return BUCKETS[4]
    if dso.startswith("libssl"):
        return BUCKETS[5]
    if dso.startswith("libc.") or dso.startswith("libc-"):
        return BUCKETS[6]
    if dso.startswith("libuv"):
        return BUCKETS[7]
    if dso.startswith("ftpsgate") or dso in GATEWAY_DSOS:
        return BUCKETS[8]
    return BUCKETS[9]


def perf_shares(datafile: Path) -> dict[str, float]:
    out = subprocess.run(["perf", "script", "-i", datafile], capture_output=True, text=True,
                         timeout=300).stdout
    counts: dict[str, int] = {}
    total = 0
    for block in out.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        b = bucket(_frames(lines))
        counts[b] = counts.get(b, 0) + 1
        total += 1
    return {k: v / total for k, v in counts.items()} if total else {}


@contextlib.contextmanager
def perf_record(pid: int, datafile: Path):
    p = subprocess.Popen(["perf", "record", "-q", "-g", "-F", "2000", "-p", str(pid), "-o",
                          datafile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(60)


# ---------------------------------------------------------------------------------------
# Handshakes per CPU second


def _full_handshake(ctx: ssl.SSLContext, port: int) -> None:
    with socket.create_connection((HOST, port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw) as s:
            s.recv(1)  # implicit FTPS: the greeting; HAProxy: the backend's 220


def _turns(count: int):
    """Indexes 0..count-1 over and over, each pass in a new random order: a fixed order
    made every server follow the same neighbour, whose code left the caches warm or cold
    for it (an A/A run of one binary as two gateways differed by 5-6 %)."""
    import random
    rnd = random.Random(os.getpid() ^ time.monotonic_ns())
    while True:
        yield from rnd.sample(range(count), count)


def _full_loop(ports: list[int], until: float, q) -> None:
    """Full handshakes to each port in turn, one connection at a time."""
    ctx = tls_client_ctx()
    n = [0] * len(ports)
    turns = _turns(len(ports))
    while time.monotonic() < until:
        k = next(turns)
        try:
            _full_handshake(ctx, ports[k])
            n[k] += 1
        except OSError:
            time.sleep(0.01)
    q.put((n, n))


class _GatewayData:
    """One logged-in implicit session doing protected data connections: PASV, RETR of a
    small file, the data TLS resuming the control session, 226."""

    def __init__(self, ctx: ssl.SSLContext, port: int, user: str, password: str, path: str,
                 clear: bool = False):
        self.ctx, self.path, self.clear = ctx, path, clear
        self.c = B.login("implicit", port, user, password, ctx)
        self.c.expect(200, "TYPE I")
        if clear:  # the same data connections without TLS (the difference is its cost)
            self.c.expect(200, "PBSZ 0")
            self.c.expect(200, "PROT C")

    def one(self) -> bool:
        c = self.c
        d = socket.create_connection((HOST, B.pasv_port(c)), timeout=30)
        c.sock.sendall(f"RETR {self.path}\r\n".encode())
        code, text = c.reply()
        if code not in (125, 150):
            raise RuntimeError(f"RETR: {text[:150]!r}")
        reused = True
        if not self.clear:
            d = self.ctx.wrap_socket(d, session=c.sock.session)
            reused = d.session_reused
        while d.recv(65536):
            pass
        d.close()
        c.expect(226)
        return reused

    def close(self) -> None:
        self.c.expect(221, "QUIT")
        self.c.close()


def _resumed_loop(targets: list[tuple], until: float, q) -> None:
    """In turn: a bare TLS connection resuming the previous one's ticket (a target
    (port, None): HAProxy), the same in clear (a target (port, "clear"): HAProxy without
    TLS), or one data connection of a logged-in gateway session (a target (port, (user,
    password, path, clear))), protected or, with clear, PROT C."""
    ctx = tls_client_ctx()
    gws = [_GatewayData(ctx, port, *g) if isinstance(g, tuple) else None
           for port, g in targets]
    sess = [None] * len(targets)
    n, resumed = [0] * len(targets), [0] * len(targets)
    turns = _turns(len(targets))
    while time.monotonic() < until:
        k = next(turns)
        if gws[k]:
            resumed[k] += gws[k].one()
            n[k] += 1
            continue
        try:
            with socket.create_connection((HOST, targets[k][0]), timeout=10) as raw:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if targets[k][1] == "clear":
                    raw.recv(1)
                    n[k] += 1
                    resumed[k] += 1
                    continue
                with ctx.wrap_socket(raw, session=sess[k]) as s:
                    s.recv(1)  # the backend's greeting; the ticket came before it
                    n[k] += 1
                    resumed[k] += s.session_reused
                    sess[k] = s.session
        except OSError:
            time.sleep(0.01)
    for g in gws:
        if g:
            g.close()
    q.put((n, resumed))


def interleaved_rates(servers: list[B.Server], loop, targets: list, seconds: float,
                      clients: int = 2) -> list[tuple[float, float]]:
    """Per server (connections per CPU second of it, share resumed). Each client process
    goes through the servers connection by connection (each pass in a random order), so all of them
    run under the same conditions of this VM at the same moments: its speed drifts by
    +-30 % within seconds, which measuring one server after the other did not cancel."""
    import multiprocessing
    mp = multiprocessing.get_context("fork")
    q = mp.Queue()
    cpu0 = [srv.cpu_s() for srv in servers]
    until = time.monotonic() + 0.5 + seconds
    procs = [mp.Process(target=loop, args=(targets, until, q)) for _ in range(clients)]
    for p in procs:
        p.start()
    outs = [q.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(30)
    time.sleep(0.3)
    res = []
    for k, srv in enumerate(servers):
        n = sum(o[0][k] for o in outs)
        r = sum(o[1][k] for o in outs)
        res.append((n / max(srv.cpu_s() - cpu0[k], 1e-6), r / max(n, 1)))
    return res


# ---------------------------------------------------------------------------------------


# --- scale: N simultaneous transfers through one gateway process


def _fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _rss_kib(pid: int, key: str = "VmRSS") -> int:
    with contextlib.suppress(OSError):
        for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
            if ln.startswith(key + ":"):
                return int(ln.split()[1])
    return -1


def scale_transfers(port: int, pid: int, n: int, user: str, password: str, path: str,
                    size: int, login_slots: int = 48, timeout: float = 600) -> dict:
    """n implicit-FTPS sessions, each with a protected PASV RETR of `path` (size bytes),
    all open at once: every session reads its first data bytes, then waits at a barrier
    until all n are there (so n transfers, 4n gateway descriptors, are in flight at the same
    moment), then reads the rest, checks the byte count and the 226, and quits. Logins go
    `login_slots` at a time (the listen backlog). The gateway's descriptors and VmRSS are
    sampled every 50 ms. Returns the figures (failures with their first error)."""
    ctx = B.client_ctx()
    gate = threading.BoundedSemaphore(login_slots)
    at_barrier = {}

    def snapshot() -> None:  # run once all n+1 are at the barrier, before any goes on
        at_barrier["fds"], at_barrier["rss"] = _fd_count(pid), _rss_kib(pid)
        at_barrier["s"] = time.monotonic() - t0

    barrier = threading.Barrier(n + 1, action=snapshot, timeout=timeout)
    fails: list[str] = []
    lock = threading.Lock()

    def fail(msg: str) -> None:
        with lock:
            fails.append(msg)

    def one(i: int) -> None:
        c = d = None
        got = 0
        try:
            with gate:
                c = B.login("implicit", port, user, password, ctx, timeout=timeout)
                c.expect(200, "TYPE I")
                raw = socket.create_connection((HOST, B.pasv_port(c)), timeout=timeout)
                c.sock.sendall(f"RETR {path}\r\n".encode())
                code, text = c.reply()
                if code not in (125, 150):
                    raw.close()
                    raise RuntimeError(f"RETR: {text[:120]!r}")
                d = ctx.wrap_socket(raw, server_hostname="localhost", session=c.sock.session)
                first = d.recv(65536)
                if not first:
                    raise RuntimeError("no data before the barrier")
                got = len(first)
        except Exception as e:  # noqa: BLE001
            fail(f"session {i}: {e!r}")
            barrier.abort()
            for x in (d, c):
                if x is not None:
                    with contextlib.suppress(Exception):
                        x.close()
            return
        try:
            barrier.wait()
            while True:
                b = d.recv(262144)
                if not b:
                    break
                got += len(b)
            d.close()
            c.expect(226)
            if got != size:
                raise RuntimeError(f"{got} bytes of {size}")
            c.expect(221, "QUIT")
        except Exception as e:  # noqa: BLE001
            fail(f"session {i}: {e!r}")
            barrier.abort()
        finally:
            for x in (d, c):
                if x is not None:
                    with contextlib.suppress(Exception):
                        x.close()

    base_fds, base_rss = _fd_count(pid), _rss_kib(pid)
    peak = {"fds": base_fds, "rss": base_rss}
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            peak["fds"] = max(peak["fds"], _fd_count(pid))
            peak["rss"] = max(peak["rss"], _rss_kib(pid))
            time.sleep(0.05)

    threading.stack_size(512 * 1024)
    smp = threading.Thread(target=sampler, daemon=True)
    smp.start()
    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for th in threads:
        th.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()  # the main thread is the n+1st: every session is in its transfer
    for th in threads:
        th.join(timeout)
    took = time.monotonic() - t0
    stop.set()
    smp.join()
    # back to baseline: the gateway closes its legs once the sessions are gone
    deadline = time.monotonic() + 30
    while _fd_count(pid) > base_fds and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    return {"n": n, "fails": len(fails), "first_error": fails[0] if fails else "",
            "all_in_s": at_barrier.get("s"), "took_s": took, "base_fds": base_fds, "base_rss": base_rss,
            "peak_fds": peak["fds"], "peak_rss": peak["rss"],
            "barrier_fds": at_barrier.get("fds", -1), "barrier_rss": at_barrier.get("rss", -1),
            "after_fds": _fd_count(pid), "after_rss": _rss_kib(pid),
            "hwm": _rss_kib(pid, "VmHWM")}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reps", type=int)
    p.add_argument("--size-mib", type=int)
    p.add_argument("--before", type=Path, default=BEFORE_DEFAULT)
    p.add_argument("--only", default="relay,handshakes,redesign",
                   help="comma-separated: relay, handshakes, redesign, scale (not by default: "
                        "N simultaneous transfers through workers = 2)")
    p.add_argument("--no-perf", action="store_true")
    p.add_argument("--no-mod-proxy", action="store_true",
                   help="relay: leave out ProFTPD mod_proxy (bench.py's extracted .debs)")
    p.add_argument("--ab", action="store_true",
                   help="only the gateway's copy paths, after against before (an A/B of one "
                        "change: no floor, HAProxy, splice or perf)")
    p.add_argument("--mem-sessions", type=int)
    p.add_argument("--hs-rounds", type=int,
                   help="handshakes: rounds, each measuring all servers for --hs-seconds, "
                        "interleaved connection by connection (default 20; --quick 4)")
    p.add_argument("--hs-seconds", type=float, default=1.0,
                   help="handshakes: seconds of each measurement (default 1)")
    p.add_argument("--scale-transfers", type=int,
                   help="scale: simultaneous transfers (default 2,000; --quick 200)")
    p.add_argument("--scale-kib", type=int, default=1024,
                   help="scale: the size of each transfer in KiB (default 1024)")
    p.add_argument("--scale-rate", default="",
                   help="scale: the frontend's rate_down per session (e.g. 16K): the gateway "
                        "then reads each backend leg slowly, so no leg finishes into the "
                        "kernel's buffers before all are in flight (4 descriptors each)")
    p.add_argument("--results", type=Path, default=B.BENCH_BUILD / "FLOOR.md")
    p.add_argument("--keep", action="store_true")
    a = p.parse_args(argv)
    a.reps = a.reps or (3 if a.quick else 5)
    a.size_mib = a.size_mib or (128 if a.quick else 1024)
    a.mem_sessions = a.mem_sessions or (200 if a.quick else 1000)
    a.hs_rounds = a.hs_rounds or (4 if a.quick else 20)
    a.scale_transfers = a.scale_transfers or (200 if a.quick else 2000)
    cases = set(a.only.split(","))
    B.ensure_root_and_limits()
    for tool in ("curl", "socat", "haproxy", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing")
    use_perf = not a.no_perf and shutil.which("perf")
    before = a.before if a.before.exists() else None
    GATEWAY_DSOS.update(x.name for x in (B.GATEWAY_BIN, before) if x)
    B.CPUACCT = B.CpuAcct()
    B.CURL_TLS13_CIPHERS = SUITE
    B.BENCH_BUILD.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ftpsgate-floor-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    t0 = time.monotonic()
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    sys0 = B.system_cpu()
    T = Table()
    budgets: dict[str, dict[str, float]] = {}
    try:
        user, password = B.ensure_test_user()
        data = B.ensure_data(a.size_mib * MiB)
        certs = B.make_certs(workdir / "tls")
        ports = B.Ports()
        be = B.start_vsftpd(workdir, "vsftpd-backend", ports, data)
        be_tls = B.start_vsftpd(workdir, "vsftpd-backend-tls", ports, data, tls=certs["ec"])
        more = {"betls": {"address": f"{HOST}:{be_tls.port}", "tls": "implicit",
                          "tls_verify": "no"}}
        fronts = {"imp": {"mode": "implicit"},
                  "imp_rsa": {"mode": "implicit", "cert": certs["rsa"][0],
                              "key": certs["rsa"][1]},
                  "imptls": {"mode": "implicit", "backend": "betls"},
                  "plain": {"mode": "plain"}}
        builds = {"after": None}
        if before:
            builds["before"] = before
        else:
            T.notes.append(f"no before build at {a.before}: before/after left out")
        gws: dict[str, tuple[B.Server, dict[str, int]]] = {}
        for tag, binary in builds.items():
            gws[tag] = B.start_ftpsgate(workdir, f"ftpsgate-{tag}", ports, be, certs, fronts,
                                        None, more,
                                        binary=binary)
            gws[f"{tag}-splice"] = B.start_ftpsgate(workdir, f"ftpsgate-{tag}-splice", ports,
                                                    be, certs, {"plain": {"mode": "plain"}},
                                                    {"splice": "yes"}, binary=binary)
        size_gib = data.size / GiB

        def target(tag: str, front: str, kind: str, backend: B.Server) -> B.Target:
            g, fp = gws[tag]
            return B.Target(f"{tag}-{front}", tag, f"ftpsgate {tag} {front}", kind, fp[front],
                            g, backend)

        paths = [  # (row label, prot, frontend, kind, backend, splice gateway?)
            ("TLS client, plain backend", "P", "imp", "implicit", be, False),
            ("TLS client, TLS backend", "P", "imptls", "implicit", be_tls, False),
            ("clear both, copy", "-", "plain", "plain", be, False),
            ("clear both, splice", "-", "plain", "plain", be, True),
        ]
        if "relay" in cases:
            lsrv, psrv = _listener()
            hp = start_haproxy(workdir, "haproxy-relay", certs["ec"], psrv)
            mp = None  # ProFTPD + mod_proxy (explicit FTPS front, plain vsftpd behind)
            if not a.ab and not a.no_mod_proxy:
                try:
                    pf_root, pf_env = B.ensure_proftpd()
                    mps = B.start_proftpd(workdir, "proftpd-relay", ports, pf_root, pf_env, be,
                                          certs["ec"], "ec")
                    mp = B.Target("mp-exp", "mp", "ProFTPD mod_proxy", "explicit", mps.port,
                                  mps, be)
                except Exception as e:  # noqa: BLE001 - reported, the rest goes on
                    T.notes.append(f"ProFTPD mod_proxy left out: {e}")
            log(f"== relay: {a.reps} repetitions of {a.size_mib} MiB")
            if a.ab:
                paths = [p_ for p_ in paths if not p_[5]]
            for rep in range(a.reps):
                if a.ab:
                    pass
                else:  # the floor, in the same repetition
                    T.add("floor: plain relay (socat -b 65536)", "s/GiB", socat_relay(data))
                    T.add("floor: AES-128-GCM encrypt (openssl speed)", "s/GiB",
                          openssl_speed(False, 1))
                    T.add("floor: AES-128-GCM decrypt (openssl speed -decrypt)", "s/GiB",
                          openssl_speed(True, 1))
                for direction in ("RETR", "STOR"):
                    if not a.ab:
                        T.add(f"HAProxy TLS->TCP {direction}", "s/GiB",
                              haproxy_relay(hp, lsrv, data, direction))
                    if mp is not None:
                        cpu0 = mp.server.cpu_s()
                        try:
                            B.curl_transfer(mp, "P", direction, data, user, password,
                                            data.size)
                            mp.settle()
                            time.sleep(0.1)
                            x = (mp.server.cpu_s() - cpu0) / size_gib
                            T.add(f"mod_proxy {direction}", "s/GiB", x)
                            log(f"  rep {rep + 1} {direction} ProFTPD mod_proxy {x:5.2f} s/GiB")
                        except Exception as e:  # noqa: BLE001
                            T.notes.append(f"{direction} mod_proxy: {e}")
                    for label, prot, front, kind, backend, spl in paths:
                        tags = [t for t in builds]
                        for tag in B.rotate(tags, rep):
                            t = target(f"{tag}-splice" if spl else tag, front, kind, backend)
                            cpu0 = t.server.cpu_s()
                            try:
                                mbs, _ = B.curl_transfer(t, prot, direction, data, user,
                                                         password, data.size)
                            except Exception as e:  # noqa: BLE001
                                T.notes.append(f"{direction} {label} {tag}: {e}")
                                continue
                            t.settle()
                            time.sleep(0.1)
                            cpu = (t.server.cpu_s() - cpu0) / size_gib
                            T.add(f"{direction} {label}", tag, cpu)
                            T.add(f"{direction} {label} MB/s", tag, mbs)
                            log(f"  rep {rep + 1} {direction} {label:28} {tag:7} {cpu:5.2f} "
                                f"s/GiB {mbs:6.0f} MB/s")
            if use_perf:
                # after alone; with --ab both builds, on the TLS paths (the changes' place)
                prof = [t_ for t_ in builds] if a.ab else ["after"]
                log(f"== perf: one profiled transfer per path ({', '.join(prof)})")
                for direction in ("RETR", "STOR"):
                    for label, prot, front, kind, backend, spl in paths:
                        for tag in prof:
                            if a.ab and prot != "P":
                                continue
                            t = target(f"{tag}-splice" if spl else tag, front, kind, backend)
                            pf = workdir / f"perf-{tag}-{direction}-{front}-{spl}.data"
                            with perf_record(t.server.pid, pf):
                                B.curl_transfer(t, prot, direction, data, user, password,
                                                data.size)
                            budgets[(f"{direction} {label}", tag)] = perf_shares(pf)
        if "handshakes" in cases:
            log(f"== handshakes per CPU second (TLS 1.3, 2 clients, {a.hs_rounds} rounds of "
                f"{a.hs_seconds:g} s, servers interleaved connection by connection)")
            hps = {k: start_haproxy(workdir, f"haproxy-{k}", certs[k], be.port)
                   for k in ("ec", "rsa")}
            hp_clear = start_haproxy(workdir, "haproxy-clear", None, be.port)
            clear_gws = {tag: B.start_ftpsgate(
                workdir, f"ftpsgate-{tag}-clear", ports, be, certs,
                {"imp": {"mode": "implicit", "require_prot_p": "no"}}, binary=binary)
                for tag, binary in builds.items()}
            # Each round: every server at once, connection by connection in turn
            # (interleaved_rates), so a round's ratios are paired under one state of the VM.
            secs = a.hs_seconds
            for rep in range(a.hs_rounds):
                for k, front in (("ec", "imp"), ("rsa", "imp_rsa")):
                    name = "ECDSA P-256" if k == "ec" else "RSA-2048"
                    order = B.rotate([("haproxy", hps[k], hps[k].port)] + [
                        (tag, gws[tag][0], gws[tag][1][front]) for tag in builds], rep)
                    rates = interleaved_rates([o[1] for o in order], _full_loop,
                                              [o[2] for o in order], secs)
                    for (col, _, _), (r, _) in zip(order, rates):
                        T.add(f"handshakes/CPU s, {name}", col, r)
                    log(f"  round {rep + 1} handshakes {name}: " + ", ".join(
                        f"{col} {r:.0f}/CPU s" for (col, _, _), (r, _) in zip(order, rates)))
                    be.idle()
                # resumed: HAProxy's bare resumptions against the gateway's whole data
                # connections (ECDSA); each also in clear (HAProxy without TLS, the
                # gateway's data connections after PROT C), so that the difference, the
                # resumed handshake's own cost, can be compared alone
                path = f"{data.small_dir}/f0000.bin"
                order = B.rotate([("haproxy", hps["ec"], hps["ec"].port, None),
                                  ("haproxy clear", hp_clear, hp_clear.port, "clear")] + [
                    (tag, gws[tag][0], gws[tag][1]["imp"], (user, password, path, False))
                    for tag in builds] + [
                    (f"{tag} clear", clear_gws[tag][0], clear_gws[tag][1]["imp"],
                     (user, password, path, True)) for tag in builds], rep)
                rates = interleaved_rates([o[1] for o in order], _resumed_loop,
                                          [(o[2], o[3]) for o in order], secs)
                got = {col: r for (col, *_), (r, _) in zip(order, rates)}
                row = ("resumed, ECDSA: HAProxy bare handshakes; the gateway whole "
                       "protected data connections")
                for (col, *_), (r, share) in zip(order, rates):
                    if not col.endswith(" clear"):
                        T.add(row, col, r)
                        T.add("share of resumed handshakes", col, share)
                for col in ["haproxy"] + list(builds):
                    extra = 1 / got[col] - 1 / got[f"{col} clear"]
                    if extra > 0:
                        T.add("resumed, ECDSA: the handshake alone (a connection with TLS "
                              "less the same in clear)", col, 1 / extra)
                log(f"  round {rep + 1} resumed: " + ", ".join(
                    f"{col} {r:.0f}/CPU s ({share:.0%} resumed)"
                    for (col, *_), (r, share) in zip(order, rates)))
                be.idle()
        if "redesign" in cases and before:
            log("== before/after: sessions/s and idle memory")
            secs = 2 if a.quick else 3
            for rep in range(a.reps):
                for tag in B.rotate(list(builds), rep):
                    t = target(tag, "imp", "implicit", be)
                    rate, errs, err, cpu_ms, _ = B.session_rate(t, user, password, secs, 1)
                    T.add("sessions/s (implicit, 1 client)", tag, rate)
                    T.add("gateway CPU ms/session", tag, cpu_ms)
                    log(f"  rep {rep + 1} sessions {tag:7} {rate:6.1f}/s {cpu_ms:5.2f} ms")
            # memory: a fresh gateway of each build, pyftpdlib behind (vsftpd forks per
            # session)
            pyb = B.start_pyftpdlib(workdir, ports, data, user, password)
            for tag in builds:
                g, fp = B.start_ftpsgate(workdir, f"ftpsgate-mem-{tag}", ports, pyb, certs,
                                         {"imp": {"mode": "implicit"}}, binary=builds[tag])
                t = B.Target(f"mem-{tag}", tag, f"ftpsgate {tag}", "implicit", fp["imp"], g,
                             pyb)
                env = argparse.Namespace(user=user, password=password)
                kib, base, loaded, fails, err, osecs = B.measure_memory(t, a.mem_sessions, env)
                T.add(f"PSS KiB per idle TLS session ({a.mem_sessions})", tag, kib)
                log(f"  memory {tag}: {kib:.1f} KiB/session ({fails} failed)")
                B.kill_tree(g.proc)
        if "scale" in cases:
            n = a.scale_transfers
            log(f"== scale: {n} simultaneous {a.scale_kib} KiB protected RETRs, workers = 2"
                + (f", rate_down = {a.scale_rate}" if a.scale_rate else ""))
            pw = __import__("pwd").getpwnam(B.TEST_USER)
            name = f"scale-{a.scale_kib}K.bin"
            f = data.root / name
            if not f.exists() or f.stat().st_size != a.scale_kib * 1024:
                f.write_bytes(os.urandom(a.scale_kib * 1024))
            os.chown(f, pw.pw_uid, pw.pw_gid)
            pys = B.start_pyftpdlib(workdir, ports, data, user, password)
            lo, hi = ports.range(n + 100)
            g, fp = B.start_ftpsgate(workdir, "ftpsgate-scale", ports, pys, certs,
                                     {"imp": {"mode": "implicit", "pasv_ports": f"{lo}-{hi}",
                                              **({"rate_down": a.scale_rate}
                                                 if a.scale_rate else {})}},
                                     {"workers": 2, "log_level": "warn"})
            B.login("implicit", fp["imp"], user, password, B.client_ctx()).close()
            time.sleep(0.5)
            r = scale_transfers(fp["imp"], g.pid, n, user, password, name, a.scale_kib * 1024)
            cpu = g.cpu_s()
            T.scale = r
            T.scale["cpu_s"] = cpu
            log(f"  {n} transfers: {r['fails']} failed {r['first_error'][:200]}; all in flight "
                f"after {r['all_in_s'] or 0:.1f} s, done in {r['took_s']:.1f} s; gateway descriptors "
                f"{r['base_fds']} -> peak {r['peak_fds']} (at the barrier {r['barrier_fds']}) "
                f"-> {r['after_fds']}; VmRSS {r['base_rss']} -> peak {r['peak_rss']} -> "
                f"{r['after_rss']} KiB (VmHWM {r['hwm']}); gateway CPU {cpu:.1f} s")
            B.kill_tree(g.proc)
    finally:
        B.stop_all()
        B.CPUACCT.cleanup()
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    sys1 = B.system_cpu()
    body = report(a, T, budgets, load0, sys0, sys1, time.monotonic() - t0, before)
    print(body)
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.write_text(body)
    log(f"written to {a.results}")
    return 0


def f3(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def report(a, T: Table, budgets, load0, sys0, sys1, wall, before) -> str:
    out = []
    busy = (sys1[0] - sys0[0]) / max(sys1[1] - sys0[1], 1)
    out.append(f"floor.py {'--quick ' if a.quick else ''}{a.size_mib} MiB, {a.reps} "
               f"repetitions, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
               f"{os.cpu_count()} CPUs, load {' '.join(load0)} at start, machine busy "
               f"{busy * 100:.0f} % over {wall:.0f} s (all processes, this run's included)")
    out.append("")
    fl = T.med("floor: plain relay (socat -b 65536)", "s/GiB")
    enc = T.med("floor: AES-128-GCM encrypt (openssl speed)", "s/GiB")
    dec = T.med("floor: AES-128-GCM decrypt (openssl speed -decrypt)", "s/GiB")
    if fl is not None:
        out += ["| floor (medians) | CPU s/GiB | repetitions |", "|---|---:|---|"]
        for r in ("floor: plain relay (socat -b 65536)",
                  "floor: AES-128-GCM encrypt (openssl speed)",
                  "floor: AES-128-GCM decrypt (openssl speed -decrypt)"):
            out.append(f"| {r[7:]} | {f3(T.med(r, 's/GiB'))} | {T.reps(r, 's/GiB')} |")
        out.append(f"| TLS relay floor RETR (relay + encrypt) | {f3(fl + enc)} | |")
        out.append(f"| TLS relay floor STOR (relay + decrypt) | {f3(fl + dec)} | |")
        out.append("")
    if any(r.startswith(("RETR", "STOR")) for (r, c) in T.v):
        out += ["| relay CPU s/GiB (medians) | after | before | after/before | after/before "
                "paired | after/floor | HAProxy | after/HAProxy | mod_proxy | after/mod_proxy |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for d in ("RETR", "STOR"):
            if fl is not None:
                floor_tls = fl + (enc if d == "RETR" else dec)
                floors = (floor_tls, fl + enc + dec, fl, fl)
            else:
                floors = (None,) * 4
            for label, floor in zip(("TLS client, plain backend", "TLS client, TLS backend",
                                     "clear both, copy", "clear both, splice"), floors):
                row = f"{d} {label}"
                af, bf = T.med(row, "after"), T.med(row, "before")
                hp = T.med(f"HAProxy TLS->TCP {d}", "s/GiB") if "plain backend" in label else None
                mpx = T.med(f"mod_proxy {d}", "s/GiB") if "plain backend" in label else None
                out.append(f"| {row} | {f3(af)} | {f3(bf)} | "
                           f"{f3(af / bf) if af and bf else '—'} | {f3(T.paired(row))} | "
                           f"{f3(af / floor) if af and floor else '—'} | {f3(hp)} | "
                           f"{f3(af / hp) if af and hp else '—'} | {f3(mpx)} | "
                           f"{f3(af / mpx) if af and mpx else '—'} |")
        out.append("")
        out.append("TLS backend floor = relay + encrypt + decrypt. mod_proxy: ProFTPD 1.3.8 + "
                   "mod_proxy, explicit FTPS front (PROT P), the same plain vsftpd behind, its "
                   "cgroup (master and session processes). Every repetition "
                   "(after | before | HAProxy | mod_proxy):")
        out.append("")
        for (row, col), xs in sorted(T.v.items()):
            if not row.startswith("floor"):
                out.append(f"- {row}, {col}: {' '.join(f'{x:.3g}' for x in xs)}")
        out.append("")
    if budgets:
        out += ["| CPU budget, s/GiB (perf shares × median) | " +
                " | ".join(b for b in BUCKETS) + " |",
                "|---|" + "---:|" * len(BUCKETS)]
        for (row, tag), shares in budgets.items():
            tot = T.med(row, tag) or 0
            out.append(f"| {row}, {tag} ({tot:.2f}) | " +
                       " | ".join(f"{shares.get(b, 0) * tot:.3f}" for b in BUCKETS) + " |")
        out.append("")
    hs = [r for (r, c) in T.v if r.startswith(("handshakes", "resumed", "share of"))]
    if hs:
        out += [f"| TLS 1.3 handshakes per CPU second (medians of {a.hs_rounds} rounds) | "
                "after | before | HAProxy | after/HAProxy, paired: median (quartiles) | "
                "after/before, paired |", "|---|---:|---:|---:|---:|---:|"]
        for r in sorted(set(hs)):
            af, bf, hp = T.med(r, "after"), T.med(r, "before"), T.med(r, "haproxy")
            fmt = (lambda x: x and f"{x:.2f}") if r.startswith("share") else (
                lambda x: x and f"{x:.0f}")
            label = r[18:] if r.startswith("handshakes") else r
            label = f"full, {label}" if r.startswith("handshakes") else label
            q = T.paired_quartiles(r, "after", "haproxy")
            vs_hp = f"{f3(q[1])} ({f3(q[0])}-{f3(q[2])})" if q and hp else "—"
            pb = T.paired(r, "after", "before")
            out.append(f"| {label} | {fmt(af)} | {fmt(bf)} | {fmt(hp)} | "
                       f"{vs_hp if not r.startswith('share') else '—'} | "
                       f"{f3(pb) if pb and not r.startswith('share') else '—'} |")
        out.append("")
    red = [r for (r, c) in T.v if r.startswith(("sessions", "gateway CPU", "PSS"))]
    if red:
        out += ["| before/after (issue 20 item 8), medians | after | before | after/before |",
                "|---|---:|---:|---:|"]
        for r in sorted(set(red)):
            af, bf = T.med(r, "after"), T.med(r, "before")
            out.append(f"| {r} | {f3(af)} | {f3(bf)} | {f3(af / bf) if af and bf else '—'} |")
        out.append("")
    sc = getattr(T, "scale", None)
    if sc:
        kib = a.scale_kib
        all_in = "—" if sc["all_in_s"] is None else f"{sc['all_in_s']:.1f}"
        out += [f"| scale: {sc['n']:,} simultaneous {kib} KiB protected RETRs (implicit FTPS, "
                "PASV, data TLS resumed), one process, workers = 2, pyftpdlib behind"
                + (f", rate_down = {a.scale_rate}" if a.scale_rate else "") + " | |",
                "|---|---:|",
                f"| failed | {sc['fails']} {sc['first_error'][:200]} |",
                f"| all {sc['n']:,} in flight after (s) | {all_in} |",
                f"| whole run (s) | {sc['took_s']:.1f} |",
                f"| gateway descriptors: before / peak / with all in flight / after | "
                f"{sc['base_fds']:,} / {sc['peak_fds']:,} / {sc['barrier_fds']:,} / "
                f"{sc['after_fds']:,} |",
                f"| gateway VmRSS KiB: before / peak / with all in flight / after (VmHWM) | "
                f"{sc['base_rss']:,} / {sc['peak_rss']:,} / {sc['barrier_rss']:,} / "
                f"{sc['after_rss']:,} ({sc['hwm']:,}) |",
                f"| gateway CPU s (whole process life) | {sc['cpu_s']:.1f} |", ""]
    if before:
        out.append(f"before = {before}")
    for n in T.notes:
        out.append(f"- note: {n}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
