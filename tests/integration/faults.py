"""Helpers for the fault-injection, soak and security tests (test_faults.py, test_soak.py,
test_security.py): a scriptable fake FTP backend, a TLS client over memory BIOs that can
inject raw and encrypted records (alerts, truncated records), /proc readers for the
gateway's memory, CPU and descriptors, and log helpers keyed by session id.

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
from typing import Callable

import pytest

import peers
from peers import HOST, MiB, GatewayFactory

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
# Gateway logs


def log_from(gw: peers.Gateway, offset: int) -> str:
    """Everything the gateway logged since `offset` (no line cap, unlike log_since)."""
    with open(gw.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def session_of(gw: peers.Gateway, local_port: int, offset: int = 0,
               timeout: float = 5) -> str:
    """The session id the gateway gave the client connection whose source port is
    `local_port` (from its `event=session_start ... peer=127.0.0.1:PORT` line)."""
    pat = re.compile(rf"session=(\d+) event=session_start frontend=\S+ "
                     rf"peer=127\.0\.0\.1:{local_port}\b")

    def find():
        m = pat.search(log_from(gw, offset))
        return m.group(1) if m else None

    return peers.wait_for(find, timeout, f"session_start of peer port {local_port}")


def session_log(gw: peers.Gateway, sid: str, offset: int = 0) -> list[str]:
    return [line for line in log_from(gw, offset).splitlines() if f" session={sid} " in line]


def wait_session_end(gw: peers.Gateway, sid: str, offset: int = 0,
                     timeout: float = 10) -> list[str]:
    """Wait for `event=session_end` of session `sid`; return its log lines."""
    peers.wait_for(lambda: any("event=session_end" in line
                               for line in session_log(gw, sid, offset)),
                   timeout, f"session {sid} to end")
    return session_log(gw, sid, offset)


def wait_log(gw: peers.Gateway, pattern: str, offset: int = 0, timeout: float = 10) -> str:
    """Wait until a log line since `offset` matches the regex `pattern`; return it."""
    rx = re.compile(pattern)

    def find():
        for line in log_from(gw, offset).splitlines():
            if rx.search(line):
                return line
        return None

    try:
        return peers.wait_for(find, timeout, f"a log line matching {pattern!r}")
    except TimeoutError:
        tail = "\n".join(log_from(gw, offset).splitlines()[-60:])
        raise AssertionError(f"no gateway log line matches {pattern!r} within {timeout} s; "
                             f"log since the test started (tail):\n{tail}") from None


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


def set_rst_on_close(sock: socket.socket) -> None:
    """close() then sends a TCP reset instead of a FIN (an abrupt kill)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


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
# A scriptable fake FTP backend


def _pasv_text(host: str, port: int) -> str:
    return ("227 Entering Passive Mode (" + host.replace(".", ",")
            + f",{port >> 8},{port & 255}).")


class FakeSession:
    """One control connection accepted by FakeFTP. `run()` plays the connection's plan."""

    def __init__(self, server: "FakeFTP", sock: socket.socket, index: int):
        self.server, self.sock, self.index = server, sock, index
        self.buf = b""
        self.data_listener: socket.socket | None = None
        self.active_to: tuple[str, int] | None = None  # PORT/EPRT's address
        self.logged_in = False
        self.user = ""
        self.sock.settimeout(None)

    # -- wire

    def event(self, what: str) -> None:
        self.server.record(self.index, what)

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError as e:
            self.event(f"send failed: {e!r}")
            return False

    def reply(self, text: str) -> bool:
        return self.send(text.encode() + CRLF)

    def readline(self) -> bytes | None:
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return None
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def hold(self) -> None:
        """Say nothing more; return when the peer closes (or the server stops)."""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                self.event("peer closed")
                return

    def close(self, reset: bool = False) -> None:
        if reset:
            set_rst_on_close(self.sock)
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.data_listener:
            with contextlib.suppress(OSError):
                self.data_listener.close()

    # -- a normal FTP dialogue with hooks

    def accept_data(self, timeout: float = 10) -> socket.socket | None:
        if self.active_to:  # PORT/EPRT: connect to the gateway's listener
            to, self.active_to = self.active_to, None
            try:
                conn = socket.create_connection(to, timeout=timeout)
            except OSError as e:
                self.event(f"no data connection: {e!r}")
                return None
            self.event(f"data connection to {to[0]}")
            return conn
        if not self.data_listener:
            return None
        self.data_listener.settimeout(timeout)
        try:
            conn, peer = self.data_listener.accept()
        except OSError as e:
            self.event(f"no data connection: {e!r}")
            return None
        finally:
            with contextlib.suppress(OSError):
                self.data_listener.close()
            self.data_listener = None
        self.event(f"data connection from {peer[0]}")
        self.server.data_peers.append(peer[0])
        return conn

    def serve(self, hooks: dict[str, Callable[["FakeSession", str], bool]] | None = None,
              greeting: str = "220 fake FTP server ready") -> None:
        """RFC 959 enough for the gateway and ftplib. hooks[VERB](session, arg) returns True
        when it handled the command; hooks may also end the connection."""
        hooks = hooks or {}
        if not self.reply(greeting):
            return
        files, uploads = self.server.files, self.server.uploads
        while True:
            line = self.readline()
            if line is None:
                self.event("peer closed")
                return
            text = line.decode("latin-1")
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            self.server.commands.append((self.index, verb, "***" if verb == "PASS" else arg))
            hook = hooks.get(verb)
            if hook and hook(self, arg):
                if self.sock.fileno() < 0:
                    return
                continue
            if verb == "USER":
                self.user = arg
                self.reply("331 Password required.")
            elif verb == "PASS":
                if self.server.password is None or arg == self.server.password:
                    self.logged_in = True
                    self.reply("230 Logged in.")
                else:
                    self.reply("530 Login incorrect.")
            elif verb == "QUIT":
                self.reply("221 Goodbye.")
                self.close()
                return
            elif verb in ("SYST",):
                self.reply("215 UNIX Type: L8")
            elif verb in ("TYPE", "MODE", "STRU", "NOOP", "OPTS"):
                self.reply("200 OK.")
            elif verb == "PWD":
                self.reply('257 "/" is the current directory.')
            elif verb == "CWD":
                self.reply("250 OK.")
            elif verb == "FEAT":
                self.send(b"211-Features:\r\n SIZE\r\n UTF8\r\n211 End\r\n")
            elif verb == "SIZE":
                if arg in files:
                    self.reply(f"213 {len(files[arg])}")
                else:
                    self.reply("550 No such file.")
            elif verb == "DELE":
                uploads.pop(arg, None)
                self.reply("250 Deleted.")
            elif verb == "EPSV" and not self.server.epsv:
                self.reply("500 EPSV not understood.")
            elif verb in ("PORT", "EPRT"):
                if verb == "PORT":
                    n = arg.split(",")
                    self.active_to = (".".join(n[:4]), int(n[4]) * 256 + int(n[5]))
                else:
                    f = arg[1:].split(arg[0])
                    self.active_to = (f[1], int(f[2]))
                self.reply(f"200 {verb} command successful.")
            elif verb in ("PASV", "EPSV"):
                self.active_to = None
                if self.data_listener:
                    self.data_listener.close()
                self.data_listener = socket.create_server((HOST, 0))
                port = self.data_listener.getsockname()[1]
                if verb == "PASV":
                    self.reply(_pasv_text(self.server.pasv_host, port))
                else:
                    self.reply(f"229 Entering Extended Passive Mode (|||{port}|)")
            elif verb in ("RETR", "LIST", "NLST", "MLSD"):
                if verb == "RETR":
                    body = files.get(arg, uploads.get(arg))
                    if body is None:
                        self.reply("550 No such file.")
                        continue
                else:
                    names = sorted(set(files) | set(uploads))
                    body = "".join(f"-rw-r--r-- 1 ftp ftp {len(files.get(n, uploads.get(n, b'')))}"
                                   f" Jan 01 00:00 {n}\r\n" for n in names).encode()
                conn = self.accept_data()
                if conn is None:
                    self.reply("425 Can't open data connection.")
                    continue
                self.reply("150 Opening BINARY mode data connection.")
                try:
                    conn.sendall(body)
                    conn.shutdown(socket.SHUT_WR)
                    conn.settimeout(10)
                    with contextlib.suppress(OSError):
                        while conn.recv(65536):
                            pass
                    ok = True
                except OSError as e:
                    self.event(f"data send failed: {e!r}")
                    ok = False
                finally:
                    conn.close()
                self.reply("226 Transfer complete." if ok else "426 Transfer aborted.")
            elif verb in ("STOR", "APPE", "STOU"):
                conn = self.accept_data()
                if conn is None:
                    self.reply("425 Can't open data connection.")
                    continue
                self.reply("150 Ok to send data.")
                chunks = []
                ok = True
                conn.settimeout(30)
                try:
                    while True:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        chunks.append(chunk)
                except OSError as e:
                    self.event(f"data recv failed: {e!r}")
                    ok = False
                finally:
                    conn.close()
                uploads[arg] = b"".join(chunks)
                self.reply("226 Transfer complete." if ok else "426 Transfer aborted.")
            elif verb == "ABOR":
                self.reply("226 ABOR successful.")
            else:
                self.reply("502 Command not implemented.")

    # -- the plans

    def run(self, fault: str, params: dict) -> None:
        self.event(f"plan {fault} {params}")
        try:
            getattr(self, "plan_" + fault)(**params)
        except OSError as e:
            self.event(f"ended by {e!r}")
        finally:
            self.close()

    def plan_normal(self) -> None:
        self.serve()

    def plan_stall(self) -> None:
        """Accept, then never greet."""
        self.hold()

    def plan_half_greeting(self) -> None:
        """Half a greeting line, then close."""
        self.send(b"220 fake FTP ser")
        time.sleep(0.2)

    def plan_half_reply(self, verb: str = "PWD") -> None:
        """Normal until `verb`, whose reply is cut after half a line; then close."""
        def cut(s: FakeSession, arg: str) -> bool:
            s.send(b'257 "/half-a-rep')
            time.sleep(0.2)
            s.close()
            return True
        self.serve({verb: cut})

    def plan_garbage(self, size: int = 4096) -> None:
        """Random bytes instead of the greeting (starting with a byte no reply starts with),
        then silence."""
        self.send(b"\xfe" + os.urandom(size))
        self.hold()

    def plan_garbage_reply(self, verb: str = "PWD", size: int = 4096) -> None:
        """Normal until `verb`, answered with random binary bytes; then silence."""
        def junk(s: FakeSession, arg: str) -> bool:
            s.send(b"\x00\x01\xfe garbage " + os.urandom(size) + CRLF)
            s.hold()
            s.close()
            return True
        self.serve({verb: junk})

    def plan_huge_line(self, verb: str = "PWD", size: int = 10 * MiB) -> None:
        """Normal until `verb`, answered with one reply line of `size` bytes."""
        def huge(s: FakeSession, arg: str) -> bool:
            sent = 0
            if not s.send(b'257 "'):
                return True
            chunk = b"x" * (256 * 1024)
            while sent < size:
                if not s.send(chunk[:size - sent]):
                    break
                sent += min(len(chunk), size - sent)
            else:
                s.send(b'"' + CRLF)
            s.event(f"huge line: {sent} bytes sent")
            s.server.huge_sent.append(sent)
            s.hold()
            s.close()
            return True
        self.serve({verb: huge})

    def plan_fail_login(self) -> None:
        """Every PASS gets 530 at once (no delay of the server's own)."""
        def refuse(s: FakeSession, arg: str) -> bool:
            s.reply("530 Login incorrect.")
            return True
        self.serve({"PASS": refuse})

    def plan_mid_transfer(self, nbytes: int = 64 * 1024, then: str = "silent",
                          reset: bool = False) -> None:
        """RETR: 150, `nbytes` of the file on the data connection, the data connection closed
        (FIN, or a reset), then the control connection silent or closed."""
        def broken(s: FakeSession, arg: str) -> bool:
            body = s.server.files.get(arg)
            if body is None:
                s.reply("550 No such file.")
                return True
            conn = s.accept_data()
            if conn is None:
                s.reply("425 Can't open data connection.")
                return True
            s.reply("150 Opening BINARY mode data connection.")
            with contextlib.suppress(OSError):
                conn.sendall(body[:nbytes])
            time.sleep(0.2)
            if reset:
                set_rst_on_close(conn)
            conn.close()
            s.event(f"data closed after {nbytes} bytes")
            if then == "close":
                time.sleep(0.2)
                s.close()
            else:
                s.hold()
                s.close()
            return True
        self.serve({"RETR": broken})


class FakeFTP:
    """A fake FTP backend on a free loopback port, driven by a plan.

    Each accepted control connection takes the next entry of `plan` (a deque of
    (fault, params)), or plays `default` (normally "normal": a working FTP server serving
    `files` and storing uploads in `uploads`). `pasv_host` is the address its 227 names,
    while it really listens on 127.0.0.1 (e.g. "10.1.2.3"). Use as a context manager."""

    def __init__(self, files: dict[str, bytes] | None = None, password: str | None = None,
                 pasv_host: str = HOST, default: str = "normal"):
        self.files = dict(files or {})
        self.uploads: dict[str, bytes] = {}
        self.password = password
        self.pasv_host = pasv_host
        self.epsv = True  # False: a legacy server that answers EPSV with 500
        self.default = default
        self.plan: collections.deque[tuple[str, dict]] = collections.deque()
        self.events: list[tuple[int, str]] = []
        self.commands: list[tuple[int, str, str]] = []
        self.data_peers: list[str] = []
        self.huge_sent: list[int] = []
        self.accepted = 0
        self._lock = threading.Lock()
        self._sessions: list[FakeSession] = []
        self.listener = socket.create_server((HOST, 0), backlog=512)
        self.port = self.listener.getsockname()[1]
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="fake-ftp")
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def queue(self, fault: str, **params) -> None:
        """The next control connection plays `fault` (plan_<fault> of FakeSession)."""
        with self._lock:
            self.plan.append((fault, params))

    def record(self, index: int, what: str) -> None:
        with self._lock:
            self.events.append((index, what))

    def describe(self) -> str:
        return "\n".join(f"conn {i}: {w}" for i, w in self.events[-60:])

    def _accept(self) -> None:
        while not self._stopped:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                index = self.accepted
                fault, params = self.plan.popleft() if self.plan else (self.default, {})
                session = FakeSession(self, sock, index)
                self._sessions.append(session)
            threading.Thread(target=session.run, args=(fault, params), daemon=True,
                             name=f"fake-ftp-{index}").start()

    def close(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self.listener.close()
        for s in list(self._sessions):
            s.close()

    def __enter__(self) -> "FakeFTP":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
