"""Helpers for the fault-injection, soak and security tests (test_faults.py, test_soak.py,
test_security.py): a TLS client over memory BIOs that can inject raw and encrypted records
(alerts, truncated records), /proc readers for the gateway's memory, CPU and descriptors.
The fake backend is fakeftp.FakeFTP; the gateway's log is read with `gw.mark()`.

Stdlib only, except `cryptography` (Debian's python3-cryptography) for the one AES-GCM
record that carries a TLS 1.3 alert. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import collections
import contextlib
import ftplib
import hashlib
import hmac
import os
import re
import select
import socket
import ssl
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import peers
from fakeftp import set_rst_on_close
from peers import HOST, GatewayFactory

CRLF = b"\r\n"


# ---------------------------------------------------------------------------------------
# The gateway process: /proc readers


def proc_status_kib(pid: int, key: str) -> int:
    """A `key:  N kB` line of /proc/PID/status (VmRSS, VmHWM ...), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_kib(pid: int) -> int:
    return proc_status_kib(pid, "VmRSS")


def pss_kib(pid: int) -> int:
    """Proportional set size from /proc/PID/smaps_rollup, in KiB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise KeyError("Pss")


def pss_breakdown(pid: int) -> dict[str, int]:
    """Pss, Pss_Anon, Pss_File, Pss_Shmem ... from /proc/PID/smaps_rollup, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key.startswith("Pss") and rest.strip().endswith("kB"):
            out[key] = int(rest.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process, in seconds (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_list(pid: int) -> list[str]:
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        with contextlib.suppress(OSError):
            out.append(f"{fd} -> {os.readlink(f'/proc/{pid}/fd/{fd}')}")
    return out


def assert_fds_back(gw: peers.Gateway, baseline: int, timeout: float = 8) -> None:
    """The gateway's descriptor count returns to `baseline` (data legs linger up to 5 s)."""
    got = gw.wait_fd_count(baseline, timeout=timeout)
    assert got == baseline, (f"descriptor leak: {got} open, baseline {baseline}\n"
                             + "\n".join(fd_list(gw.pid)))


# ---------------------------------------------------------------------------------------
# Gateways owned by a module (independent of conftest's factories)


@contextlib.contextmanager
def gateway_factory(workdir: Path, ports: peers.PortAllocator, tls_cert, name: str):
    """A GatewayFactory whose gateways are stopped on exit; a crash, a hang at SIGTERM or
    a sanitizer report fails the test (like conftest's `gateway`)."""
    factory = GatewayFactory(workdir / "gateways" / name, ports, *tls_cert)
    try:
        yield factory
    finally:
        problems = factory.close_all()
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


def closed_port(ports: peers.PortAllocator) -> int:
    """A loopback port nothing listens on (connections are refused)."""
    port = ports.port()
    with socket.socket() as s:
        assert s.connect_ex((HOST, port)) != 0, f"port {port} unexpectedly accepts"
    return port


# ---------------------------------------------------------------------------------------
# Client-side helpers


def recv_all_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, str]:
    """Like peers.recv_until_closed but also counts an SSL-level EOF/reset as the end."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return data, "reset"
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return data, "eof"
        except ssl.SSLError as e:
            return data, f"tls-error: {e}"
        except (socket.timeout, TimeoutError):
            return data, "timeout"
        if not chunk:
            return data, "eof"
        data += chunk
    return data, "timeout"


def kill_socket(sock: socket.socket | None) -> None:
    """Close abruptly with a reset, whatever TLS state the socket is in."""
    if sock is None:
        return
    with contextlib.suppress(OSError, ValueError):
        fd = sock.fileno()
        if fd >= 0:
            raw = socket.socket(fileno=os.dup(fd))
            set_rst_on_close(raw)
            raw.close()
    with contextlib.suppress(OSError):
        set_rst_on_close(sock)
    with contextlib.suppress(OSError):
        sock.close()


def normal_session(port: int, user: str, password: str, ctx: ssl.SSLContext,
                   download: str | None = None, expect: bytes | None = None,
                   upload: bytes | None = None, explicit: bool = False,
                   timeout: float = 30) -> None:
    """A short healthy session: login, PWD, LIST, optionally RETR `download` (compared with
    `expect`) and STOR of `upload` (compared by SIZE ... or read back), QUIT."""
    session = peers.ftplib_explicit_session if explicit else peers.ftplib_session
    with session(port, user, password, ctx, timeout=timeout) as ftp:
        ftp.pwd()
        ftp.retrlines("LIST", lambda line: None)
        if download is not None:
            chunks: list[bytes] = []
            ftp.retrbinary(f"RETR {download}", chunks.append)
            got = b"".join(chunks)
            if expect is not None:
                assert hashlib.sha256(got).hexdigest() == hashlib.sha256(expect).hexdigest(), \
                    f"RETR {download}: {len(got)} bytes, expected {len(expect)}"
        if upload is not None:
            import io
            name = f"healthy-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}.bin"
            ftp.storbinary(f"STOR {name}", io.BytesIO(upload))
            chunks = []
            ftp.retrbinary(f"RETR {name}", chunks.append)
            assert b"".join(chunks) == upload, f"read back of {name} differs"
            with contextlib.suppress(ftplib.Error):
                ftp.delete(name)


# ---------------------------------------------------------------------------------------
# TLS over memory BIOs: every record we send is ours to count, cut or forge


def _hkdf_expand_label(secret: bytes, label: str, length: int, hash_name: str) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context (RFC 8446 §7.1)."""
    full = b"tls13 " + label.encode()
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([i]), hash_name).digest()
        out += block
        i += 1
    return out[:length]


class RawTLS:
    """A TLS client on a connected socket, driven through ssl.MemoryBIO so that the test
    sees every record it sends: it can send raw bytes between records (a truncated record)
    and, with a context whose keylog_filename is set, forge an encrypted TLS 1.3 alert with
    the right sequence number (Python's ssl cannot send alerts)."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext,
                 session: ssl.SSLSession | None = None, hostname: str = "localhost"):
        self.sock = sock
        self.ctx = ctx
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=hostname, session=session)
        self.app_records = 0  # encrypted (type 23) records sent, the client Finished included
        self.client_random: bytes | None = None
        self._pending = b""  # outgoing bytes not yet split into records

    def _count(self, data: bytes) -> None:
        self._pending += data
        while len(self._pending) >= 5:
            ctype, _, length = struct.unpack("!BHH", self._pending[:5])
            if len(self._pending) < 5 + length:
                break
            record, self._pending = self._pending[:5 + length], self._pending[5 + length:]
            if ctype == 22 and self.client_random is None and record[5] == 1:
                self.client_random = record[11:43]
            if ctype == 23:
                self.app_records += 1

    def _flush(self) -> None:
        data = self.out.read()
        if data:
            self._count(data)
            self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            self.inc.write_eof()
            return False
        self.inc.write(chunk)
        return True

    def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionError("peer closed during the TLS handshake") from None

    @property
    def session(self) -> ssl.SSLSession | None:
        return self.obj.session

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self.obj.write(view[:16384])
            view = view[n:]
            self._flush()

    def recv(self, n: int = 65536) -> bytes:
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    try:
                        return self.obj.read(n)
                    except ssl.SSLWantReadError:
                        return b""
            except ssl.SSLZeroReturnError:
                return b""

    def close_notify(self) -> None:
        with contextlib.suppress(ssl.SSLError):
            self.obj.unwrap()
        self._flush()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def alert_record(self, description: int = 80, level: int = 2) -> bytes:
        """An encrypted TLS 1.3 alert record (default: fatal internal_error) with the next
        sequence number of the client's application traffic keys. Needs the context's
        keylog_filename and a TLS 1.3 AES-GCM suite."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        version = self.obj.version()
        cipher = self.obj.cipher()[0]
        assert version == "TLSv1.3", f"alert forging needs TLS 1.3, got {version}"
        suites = {"TLS_AES_128_GCM_SHA256": (16, "sha256"),
                  "TLS_AES_256_GCM_SHA384": (32, "sha384")}
        assert cipher in suites, f"alert forging needs an AES-GCM suite, got {cipher}"
        key_len, hash_name = suites[cipher]
        keylog = Path(self.ctx.keylog_filename)
        secret = None
        want = self.client_random.hex()
        for line in keylog.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "CLIENT_TRAFFIC_SECRET_0" and \
                    parts[1].lower() == want:
                secret = bytes.fromhex(parts[2])
        assert secret, f"no CLIENT_TRAFFIC_SECRET_0 for this connection in {keylog}"
        key = _hkdf_expand_label(secret, "key", key_len, hash_name)
        iv = _hkdf_expand_label(secret, "iv", 12, hash_name)
        seq = self.app_records - 1  # the first encrypted record was the client Finished
        nonce = bytes(a ^ b for a, b in zip(iv, seq.to_bytes(12, "big")))
        inner = bytes([level, description, 21])  # alert, then the real content type
        header = struct.pack("!BHH", 23, 0x0303, len(inner) + 16)
        record = header + AESGCM(key).encrypt(nonce, inner, header)
        self.app_records += 1
        return record


def keylog_context(cafile: Path, keylog: Path) -> ssl.SSLContext:
    """A client context like peers.client_context that writes its secrets to `keylog`."""
    ctx = peers.client_context(cafile)
    ctx.keylog_filename = str(keylog)
    return ctx


# ---------------------------------------------------------------------------------------
# A raw implicit or explicit control connection over RawTLS (for byte-exact faults)


class RawControl:
    """Control connection whose TLS is a RawTLS (so faults can be injected on it)."""

    def __init__(self, port: int, ctx: ssl.SSLContext, explicit: bool = False,
                 timeout: float = 10):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.local_port = self.sock.getsockname()[1]
        self.buf = b""
        self.tls: RawTLS | None = None
        if explicit:
            code, text = self.reply()
            assert code == 220, text
            self.send(b"AUTH TLS\r\n")
            code, text = self.reply()
            assert code == 234, text
        self.tls = RawTLS(self.sock, ctx)
        self.tls.handshake()

    def send(self, data: bytes) -> None:
        if self.tls:
            self.tls.send(data)
        else:
            self.sock.sendall(data)

    def _recv(self) -> bytes:
        return self.tls.recv() if self.tls else self.sock.recv(65536)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self._recv()
            if not chunk:
                raise ConnectionError(f"closed; unfinished line {self.buf[:200]!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, str]:
        first = self.line()
        lines = [first]
        if first[3:4] == b"-":
            while not lines[-1].startswith(first[:3] + b" "):
                lines.append(self.line())
        return int(first[:3]), "\r\n".join(x.decode(errors="replace") for x in lines)

    def cmd(self, text: str) -> tuple[int, str]:
        self.send(text.encode() + CRLF)
        return self.reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# ---------------------------------------------------------------------------------------
# openssl s_client


def s_client(port: int, *args: str, starttls: bool = False, stdin: bytes = b"",
             timeout: float = 15) -> subprocess.CompletedProcess:
    """Run `openssl s_client` against 127.0.0.1:port (with -starttls ftp for explicit
    frontends), feed `stdin`, return the completed process (text output)."""
    cmd = ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", "localhost",
           *(["-starttls", "ftp"] if starttls else []), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)


def s_client_protocol(res: subprocess.CompletedProcess) -> str | None:
    """The negotiated protocol from s_client's output, or None when no handshake."""
    out = res.stdout.decode(errors="replace")
    m = re.search(r"^\s*Protocol\s*:\s*(\S+)", out, re.M) or \
        re.search(r"New, (TLSv[\d.]+), Cipher is (?!\(NONE\))", out)
    if not m:
        return None
    if "Cipher is (NONE)" in out or "no peer certificate available" in out:
        return None
    return m.group(1)


@dataclass
class Figures:
    """Counters printed at the end of a soak round."""
    transfers_ok: int = 0
    transfers_failed_reported: int = 0
    bytes_ok: int = 0
    kills: int = 0
    data_resets: int = 0
    sessions: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **kw) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)


def wait_readable_all(socks: list[socket.socket],
                      timeout: float) -> dict[int, tuple[bytes, str, float]]:
    """Wait until every socket has been closed by its peer (EOF or reset); return, by index,
    (bytes received, how it ended, time.monotonic() when it ended). Sockets still open at
    the deadline end as "timeout"."""
    result: dict[int, tuple[bytes, str, float]] = {}
    fdmap = {s.fileno(): i for i, s in enumerate(socks)}
    got: dict[int, bytes] = collections.defaultdict(bytes)
    poller = select.poll()
    for fd in fdmap:
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    deadline = time.monotonic() + timeout
    while fdmap and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            i = fdmap.get(fd)
            if i is None:
                continue
            try:
                chunk = socks[i].recv(65536)
                how = "eof"
            except ConnectionResetError:
                chunk, how = b"", "reset"
            if chunk:
                got[i] += chunk
                continue
            result[i] = (got[i], how, time.monotonic())
            poller.unregister(fd)
            del fdmap[fd]
    for i in fdmap.values():
        result[i] = (got[i], "timeout", time.monotonic())
    return result


# ---------------------------------------------------------------------------------------
# A pyftpdlib backend for many concurrent sessions


def start_pyftpdlib_many(workdir: Path, ports: peers.PortAllocator, user: str, password: str,
                         max_cons: int = 4096) -> peers.Backend:
    """peers.start_pyftpdlib with a higher connection cap: pyftpdlib's max_cons counts every
    socket it holds (control, data, passive listeners), so 512 is too few for 200 sessions
    transferring at once. Same script otherwise."""
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "root"
    root.mkdir(exist_ok=True)
    script = workdir / "server.py"
    text = peers.PYFTPDLIB_SERVER.replace("server.max_cons = 512",
                                          f"server.max_cons = {max_cons}")
    assert f"max_cons = {max_cons}" in text, "peers.PYFTPDLIB_SERVER changed"
    script.write_text(text)
    port = ports.port()
    pasv_lo, pasv_hi = ports.range(50)
    banner = "ftpsgate-test pyftpdlib (soak) ready"
    log = workdir / "pyftpdlib.log"
    out = open(log, "wb")
    proc = subprocess.Popen(
        [peers.PYTHON, str(script), HOST, str(port), str(root), user, password, str(pasv_lo),
         str(pasv_hi), banner],
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True)
    out.close()
    try:
        peers.wait_listening(proc, port, 15, "pyftpdlib", log)
    except Exception:
        peers.kill_tree(proc)
        raise
    return peers.Backend("pyftpdlib-soak", port, user, password, root, banner, proc, log)


def report(request, text: str) -> None:
    """Print a figure to the terminal even when pytest captures output."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
    with ctx:
        print(text, flush=True)


def trimmed_anon_kib(pid: int) -> int | None:
    """Diagnostic only: make the process call malloc_trim(0) (gdb attach) and return its
    anonymous PSS afterwards, i.e. what is live rather than freed heap kept by glibc.
    None when gdb is not available or the call failed."""
    import shutil as _shutil
    if not _shutil.which("gdb"):
        return None
    res = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "call (int)malloc_trim(0)"],
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        return None
    time.sleep(0.3)
    return pss_breakdown(pid).get("Pss_Anon")
