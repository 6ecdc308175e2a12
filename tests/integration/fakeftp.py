"""The fake FTP backend of the integration tests: FakeFTP, a server on a free loopback port
(or a given one) whose every accepted connection plays a plan.

A plan is one of
  - Plan(greeting=..., replies={VERB: ...}, header=..., then=..., delay=...): a greeting
    (a line, raw bytes or none), then the working server below with some verbs answered
    otherwise (a reply line, no answer, or a hook), or silence ("hold"), or a close;
  - a name of the faults FakeConn plays (queue(name, **params)): "normal", "stall",
    "close", "half_greeting", "half_reply", "garbage", "garbage_reply", "huge_line",
    "fail_login", "mid_transfer" (FakeConn.plan_NAME);
  - a script, script(conn): anything else, written with conn.reply(), conn.readline(),
    conn.starttls(), conn.serve() ... relay(port, delay) is one: the connection relayed to
    a real backend (a slow link; with queue("close"), a backend that briefly fails).

FakeFTP(default) plays `default` ("normal" unless given) on each connection, unless queue()
put a plan before it. The working server: USER/PASS (any password, or `password`), PWD, CWD,
TYPE, FEAT, SIZE, DELE, PASV/EPSV (`pasv_host` is the address a 227 names; `epsv = False`
answers EPSV with 500) and PORT/EPRT, RETR/LIST/NLST/MLSD of `files` and of what STOR,
APPE and STOU stored in `uploads`, ABOR, QUIT.

What it saw: `accepts` (connections), `received[i]` (connection i's lines, PASS masked),
`commands` ((i, VERB, arg) of every connection), `headers` (PROXY headers read),
`data_peers`, `events` (what each connection did, describe()), `errors` (what a script
raised, or a send of a script that failed: tests assert it is empty). `connections=N`:
accept N connections only; wait_done() waits for them and for their plans to end.

Stdlib only. Everything listens on 127.0.0.1. Use as a context manager.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Union

HOST = "127.0.0.1"
CRLF = b"\r\n"
GREETING = "220 fake FTP server ready"
PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"

# hook(conn, arg) -> True when it answered the command itself.
Hook = Callable[["FakeConn", str], bool]


def set_rst_on_close(sock: socket.socket) -> None:
    """close() then sends a TCP reset instead of a FIN (an abrupt kill)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _pasv_text(host: str, port: int) -> str:
    return ("227 Entering Passive Mode (" + host.replace(".", ",")
            + f",{port >> 8},{port & 255}).")


@dataclass
class Plan:
    """What one connection does, declared. `greeting`: a line (str), bytes sent as they are,
    or None (nothing). `then`: "serve" commands, "hold" (say nothing more until the peer
    closes) or "close". `replies` by verb ("*": every verb not named; QUIT, unless named,
    always gets 221 and the close): a reply line, None (no answer) or a Hook; verbs it does
    not name get the working server's answer; a QUIT answered ends the connection. `header`: read a PROXY header (v1 or v2)
    first, into FakeFTP.headers. `delay`: seconds before the greeting."""

    greeting: str | bytes | None = GREETING
    then: str = "serve"
    replies: dict[str, str | Hook | None] = field(default_factory=dict)
    header: bool = False
    delay: float = 0

    def __call__(self, conn: "FakeConn") -> None:
        conn.play(self)


PlanLike = Union[str, Plan, Callable[["FakeConn"], None]]


class FakeConn:
    """One accepted control connection, as a plan sees it."""

    def __init__(self, server: "FakeFTP", sock: socket.socket, index: int, strict: bool):
        self.server, self.sock, self.index = server, sock, index
        # A script's failed send is an error of the test; a fault plan's is expected.
        self.strict = strict
        self.buf = b""
        self.data_listener: socket.socket | None = None
        self.active_to: tuple[str, int] | None = None  # PORT/EPRT's address
        self.logged_in = False
        self.user = ""
        self.sock.settimeout(server.timeout)

    # -- wire

    def event(self, what: str) -> None:
        self.server.record(self.index, what)

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError as e:
            self.event(f"send failed: {e!r}")
            if self.strict:
                self.server.error(f"connection {self.index}: send failed: {e!r}")
            return False

    def reply(self, text: str) -> bool:
        return self.send(text.encode() + CRLF)

    def send_raw(self, data: bytes) -> None:
        """Bytes on the TCP connection itself, past any TLS layer."""
        raw = socket.socket(fileno=os.dup(self.sock.fileno()))
        try:
            raw.sendall(data)
        finally:
            raw.close()

    def readline(self) -> str | None:
        """The next command line (recorded), or None once the peer closed. A timeout of
        FakeFTP(timeout=...) raises."""
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        text = line.rstrip(b"\r").decode("latin-1")
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if verb == "PASS":  # recorded masked, returned whole
            self.server.log_command(self.index, f"{text.partition(' ')[0]} ***", verb, "***")
        else:
            self.server.log_command(self.index, text, verb, arg)
        return text

    def read_header(self) -> bytes:
        """A PROXY header (v2 block, or v1 line), recorded in FakeFTP.headers."""
        first = self.sock.recv(16, socket.MSG_WAITALL)
        if first.startswith(PROXY_V2_SIG):
            n = struct.unpack("!H", first[14:16])[0]
            header = first + (self.sock.recv(n, socket.MSG_WAITALL) if n else b"")
        else:
            header = first
            while not header.endswith(CRLF):
                byte = self.sock.recv(1)
                if not byte:
                    break
                header += byte
        self.server.headers.append(header)
        return header

    def starttls(self, cert, key) -> None:
        """Server side of a TLS handshake on this connection (after 234)."""
        assert not self.buf, f"clear bytes before the handshake: {self.buf!r}"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.sock = ctx.wrap_socket(self.sock, server_side=True)

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

    def shut(self) -> None:
        """End the connection from another thread (close alone wakes no blocked recv)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.close()

    # -- a declared plan

    def play(self, plan: Plan) -> None:
        if plan.header:
            self.read_header()
        if plan.delay:
            time.sleep(plan.delay)
        if isinstance(plan.greeting, str):
            if not self.reply(plan.greeting):
                return
        elif plan.greeting is not None and not self.send(plan.greeting):
            return
        if plan.then == "hold":
            self.hold()
        elif plan.then == "serve":
            self.serve(plan.replies)

    # -- the working server, with hooks

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

    def serve(self, replies: dict[str, str | Hook | None] | None = None) -> None:
        """Commands until the peer closes or QUIT: `replies` first (see Plan), then RFC 959
        enough for the gateway and ftplib."""
        replies = replies or {}
        while True:
            text = self.readline()
            if text is None:
                self.event("peer closed")
                return
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            answer = replies.get(verb, replies.get("*", "") if verb != "QUIT" else "")
            if callable(answer):
                if answer(self, arg):
                    if self.sock.fileno() < 0:
                        return
                    continue
            elif answer is None:
                continue
            elif answer:
                self.reply(answer)
                if verb == "QUIT":
                    return
                continue
            if not self.standard(verb, arg):
                return

    def standard(self, verb: str, arg: str) -> bool:
        """The working server's answer to one command; False once the connection ended."""
        files, uploads = self.server.files, self.server.uploads
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
            return False
        elif verb == "SYST":
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
                    return True
            else:
                names = sorted(set(files) | set(uploads))
                body = "".join(f"-rw-r--r-- 1 ftp ftp {len(files.get(n, uploads.get(n, b'')))}"
                               f" Jan 01 00:00 {n}\r\n" for n in names).encode()
            conn = self.accept_data()
            if conn is None:
                self.reply("425 Can't open data connection.")
                return True
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
                return True
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
        return True

    # -- the faults, by name (FakeFTP.queue(name, **params))

    def plan_normal(self) -> None:
        self.play(Plan())

    def plan_stall(self) -> None:
        """Accept, then never greet."""
        self.play(Plan(greeting=None, then="hold"))

    def plan_close(self) -> None:
        """Accept and close at once (a server that dies before its 220)."""
        self.play(Plan(greeting=None, then="close"))

    def plan_half_greeting(self) -> None:
        """Half a greeting line, then close."""
        self.send(b"220 fake FTP ser")
        time.sleep(0.2)

    def plan_half_reply(self, verb: str = "PWD") -> None:
        """Normal until `verb`, whose reply is cut after half a line; then close."""
        def cut(s: FakeConn, arg: str) -> bool:
            s.send(b'257 "/half-a-rep')
            time.sleep(0.2)
            s.close()
            return True
        self.play(Plan(replies={verb: cut}))

    def plan_garbage(self, size: int = 4096) -> None:
        """Random bytes instead of the greeting (starting with a byte no reply starts with),
        then silence."""
        self.play(Plan(greeting=b"\xfe" + os.urandom(size), then="hold"))

    def plan_garbage_reply(self, verb: str = "PWD", size: int = 4096) -> None:
        """Normal until `verb`, answered with random binary bytes; then silence."""
        def junk(s: FakeConn, arg: str) -> bool:
            s.send(b"\x00\x01\xfe garbage " + os.urandom(size) + CRLF)
            s.hold()
            s.close()
            return True
        self.play(Plan(replies={verb: junk}))

    def plan_huge_line(self, verb: str = "PWD", size: int = 10 * 1024 * 1024) -> None:
        """Normal until `verb`, answered with one reply line of `size` bytes."""
        def huge(s: FakeConn, arg: str) -> bool:
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
        self.play(Plan(replies={verb: huge}))

    def plan_fail_login(self) -> None:
        """Every PASS gets 530 at once (no delay of the server's own)."""
        self.play(Plan(replies={"PASS": "530 Login incorrect."}))

    def plan_mid_transfer(self, nbytes: int = 64 * 1024, then: str = "silent",
                          reset: bool = False) -> None:
        """RETR: 150, `nbytes` of the file on the data connection, the data connection closed
        (FIN, or a reset), then the control connection silent or closed."""
        def broken(s: FakeConn, arg: str) -> bool:
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
        self.play(Plan(replies={"RETR": broken}))


def relay(port: int, delay: float = 0) -> Callable[[FakeConn], None]:
    """A script: the connection relayed to 127.0.0.1:`port`, every chunk toward it held
    `delay` seconds (a slow link to a real backend; with queue("close"), a backend that
    briefly fails)."""
    def pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while chunk := src.recv(65536):
                if delay:
                    time.sleep(delay)
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def script(conn: FakeConn) -> None:
        try:
            up = socket.create_connection((HOST, port), timeout=10)
        except OSError as e:
            conn.event(f"relay: no connection to port {port}: {e!r}")
            return
        up.settimeout(None)
        back = threading.Thread(target=pump, args=(up, conn.sock, 0), daemon=True)
        back.start()
        try:
            pump(conn.sock, up, delay)
            back.join(10)
        finally:
            up.close()
    return script


class FakeFTP:
    """A fake FTP backend driven by plans (see the module's docstring)."""

    def __init__(self, default: PlanLike = "normal", files: dict[str, bytes] | None = None, *,
                 password: str | None = None, pasv_host: str = HOST, port: int = 0,
                 connections: int | None = None, timeout: float | None = None):
        self.default = default
        self.files = dict(files or {})
        self.uploads: dict[str, bytes] = {}
        self.password = password
        self.pasv_host = pasv_host
        self.epsv = True  # False: a legacy server that answers EPSV with 500
        self.connections, self.timeout = connections, timeout
        self.queued: collections.deque[tuple[PlanLike, dict]] = collections.deque()
        self.events: list[tuple[int, str]] = []
        self.commands: list[tuple[int, str, str]] = []
        self.received: list[list[str]] = []
        self.headers: list[bytes] = []
        self.errors: list[str] = []
        self.data_peers: list[str] = []
        self.huge_sent: list[int] = []
        self.accepts = 0
        self._lock = threading.Lock()
        self._conns: list[FakeConn] = []
        self._threads: list[threading.Thread] = []
        self.listener = socket.create_server((HOST, port), backlog=512)
        self.port = self.listener.getsockname()[1]
        self._stopped = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True, name="fake-ftp")
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def queue(self, plan: PlanLike, **params) -> None:
        """The next connection plays `plan` (a fault's name takes `params`)."""
        with self._lock:
            self.queued.append((plan, params))

    def record(self, index: int, what: str) -> None:
        with self._lock:
            self.events.append((index, what))

    def error(self, what: str) -> None:
        with self._lock:
            self.errors.append(what)

    def log_command(self, index: int, line: str, verb: str, arg: str) -> None:
        with self._lock:
            self.received[index].append(line)
            self.commands.append((index, verb, arg))

    def describe(self) -> str:
        return "\n".join(f"conn {i}: {w}" for i, w in self.events[-60:])

    def _accept(self) -> None:
        while not self._stopped and (self.connections is None
                                     or self.accepts < self.connections):
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                index = self.accepts
                self.accepts += 1
                plan, params = self.queued.popleft() if self.queued else (self.default, {})
                self.received.append([])
                conn = FakeConn(self, sock, index, strict=not isinstance(plan, (str, Plan)))
                self._conns.append(conn)
                t = threading.Thread(target=self._run, args=(conn, plan, params), daemon=True,
                                     name=f"fake-ftp-{index}")
                self._threads.append(t)
            t.start()

    def _run(self, conn: FakeConn, plan: PlanLike, params: dict) -> None:
        name = plan if isinstance(plan, str) else getattr(plan, "__name__", type(plan).__name__)
        conn.event(f"plan {name} {params}")
        try:
            if isinstance(plan, str):
                getattr(conn, "plan_" + plan)(**params)
            else:
                plan(conn)
        except OSError as e:
            conn.event(f"ended by {e!r}")
            if conn.strict:
                self.error(f"connection {conn.index}: {e!r}")
        except Exception as e:  # a script's assertion: the test reads `errors`
            conn.event(f"ended by {e!r}")
            self.error(f"connection {conn.index}: {e!r}")
        finally:
            conn.close()

    def wait_done(self, timeout: float | None = None) -> None:
        """Wait for the `connections` accepts (when given) and every plan's end (by default
        the read timeout and 5 s more)."""
        if timeout is None:
            timeout = (self.timeout or 10) + 5
        deadline = time.monotonic() + timeout
        if self.connections is not None:
            self._acceptor.join(timeout)
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        with contextlib.suppress(OSError):
            self.listener.close()
        for c in list(self._conns):
            c.shut()

    def __enter__(self) -> "FakeFTP":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
