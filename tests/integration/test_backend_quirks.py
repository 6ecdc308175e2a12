"""Backends that answer in unusual ways, played by scripted fake backends written here:
a non-220 greeting, a 120 before the 220, vsftpd's fatal "500 OOPS" to EPSV, and a TLS
error on a backend whose certificate is not verified (tls_verify = no).

Each fake listens on 127.0.0.1, accepts a fixed number of connections and runs a script
for each in its own thread; every line it receives is recorded. Scripts use timeouts, so
the threads end even when the gateway misbehaves.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import threading
import time
from typing import Callable

import pytest

from peers import GATEWAY_WRAPPER, HOST, Control, backend_tls, frontend, wait_for

# Counted from the fake backend's start, so it covers the gateway's start too: 30 s under
# valgrind (starts of 10 s and more were seen with two workers on a loaded machine).
TIMEOUT = 30 if GATEWAY_WRAPPER else 10


class FakeConn:
    """One accepted backend connection, as a script sees it."""

    def __init__(self, index: int, sock: socket.socket, received: list[str]):
        self.index, self.sock, self.received = index, sock, received
        self.buf = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def readline(self) -> str | None:
        """The next line (recorded), or None when the peer closed."""
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        text = line.decode(errors="replace")
        self.received.append(text)
        return text

    def starttls(self, cert, key) -> None:
        """Server side of a TLS handshake on this connection (after 234)."""
        assert not self.buf, f"clear bytes before the handshake: {self.buf!r}"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.sock = ctx.wrap_socket(self.sock, server_side=True)

    def send_raw(self, data: bytes) -> None:
        """Bytes on the TCP connection itself, past any TLS layer."""
        raw = socket.socket(fileno=os.dup(self.sock.fileno()))
        try:
            raw.sendall(data)
        finally:
            raw.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class FakeBackend:
    """Accepts `connections` connections and runs script(conn) on each in a thread."""

    def __init__(self, script: Callable[[FakeConn], None], connections: int = 1):
        self.script, self.connections = script, connections
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.received: list[list[str]] = []
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _accept(self) -> None:
        for i in range(self.connections):
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.settimeout(TIMEOUT)
            self.received.append([])
            t = threading.Thread(target=self._serve, args=(FakeConn(i, sock, self.received[i]),),
                                 daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: FakeConn) -> None:
        try:
            self.script(conn)
        except Exception as e:  # reported by close()
            self.errors.append(f"connection {conn.index}: {e!r}")
        finally:
            conn.close()

    def wait_done(self, timeout: float = TIMEOUT + 5) -> None:
        self._acceptor.join(timeout)
        for t in list(self.threads):
            t.join(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        self.wait_done()

    def __enter__(self) -> "FakeBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plain_gateway(gateway, fake: FakeBackend, **kw):
    return gateway(backend_address=fake.address, frontends={"p": frontend("plain")}, **kw)


# ---------------------------------------------------------------------------------------
# 1. tls_verify = no: a TLS error is not reported as a certificate verification failure


def test_unverified_backend_tls_error_is_not_a_verify_failure(gateway, backend_cert):
    def script(c: FakeConn):
        c.send("220 fake")
        assert c.readline() == "AUTH TLS"
        c.send("234 go")
        c.starttls(*backend_cert)  # self-signed: would fail verification
        while (line := c.readline()) is not None:
            verb = line.split(" ", 1)[0].upper()
            if verb in ("PBSZ", "PROT"):
                c.send("200 ok")
            elif verb == "USER":
                c.send_raw(b"garbage\r\n")  # not a TLS record
                with contextlib.suppress(OSError):
                    c.readline()  # until the gateway gives up on us
                return
            else:
                c.send("502 no")

    with FakeBackend(script) as fake:
        gw = plain_gateway(gateway, fake,
                           backend_keys=backend_tls("explicit", tls_verify=False))
        offset = gw.log_size()
        ctl = Control.plain(gw.fport("p"))
        try:
            code, text = ctl.reply()
            assert code == 220, text
            ctl.send(b"USER someone\r\n")
            code, text = ctl.reply()
            assert code == 421, text
        finally:
            ctl.close()
        fake.wait_done()
        assert not fake.errors, fake.errors
        errors = wait_for(lambda: re.findall(r"event=backend_error reason=\"([^\"]*)\"",
                                             gw.log_since(offset)), TIMEOUT, "backend_error")
        assert not any("certificate verify failed" in e for e in errors), errors


# ---------------------------------------------------------------------------------------
# 2. Greetings other than 220


def test_greeting_230_gets_a_421_naming_it(gateway):
    def script(c: FakeConn):
        c.send("230 no login needed")
        c.readline()  # until the gateway closes

    with FakeBackend(script) as fake:
        gw = plain_gateway(gateway, fake)
        offset = gw.log_size()
        ctl = Control.plain(gw.fport("p"))
        try:
            code, text = ctl.reply()
            assert code == 421, text
            assert "230" in text, text
            assert ctl.closed_by_peer(), "the session goes on after a 230 greeting"
        finally:
            ctl.close()
        fake.wait_done()
        assert not fake.errors, fake.errors
        wait_for(lambda: re.search(r"event=session_close reason=\"[^\"]*230",
                                   gw.log_since(offset)), TIMEOUT, "session_close naming 230")


def test_greeting_120_then_220_works(gateway):
    def script(c: FakeConn):
        c.send("120 wait")
        time.sleep(0.2)
        c.send("220 ready")
        while (line := c.readline()) is not None:
            verb = line.split(" ", 1)[0].upper()
            if verb == "USER":
                c.send("331 password please")
            elif verb == "QUIT":
                c.send("221 bye")
                return
            else:
                c.send("502 no")

    with FakeBackend(script) as fake:
        gw = plain_gateway(gateway, fake)
        ctl = Control.plain(gw.fport("p"))
        try:
            code, text = ctl.reply()
            assert code == 120, text
            code, text = ctl.reply()
            assert code == 220, text
            code, text = ctl.cmd("USER someone")
            assert code == 331, text
            code, text = ctl.cmd("QUIT")
            assert code == 221, text
        finally:
            ctl.close()
        fake.wait_done()
        assert not fake.errors, fake.errors
        assert fake.received[0][:2] == ["USER someone", "QUIT"], fake.received


def test_rein_backend_greeting_120_then_220_is_swallowed(gateway):
    """REIN: the gateway answered 220 itself; the new backend's 120 and 220 are not relayed
    and the session goes on."""
    def script(c: FakeConn):
        if c.index == 1:
            c.send("120 wait")
            time.sleep(0.2)
        c.send("220 ready")
        while (line := c.readline()) is not None:
            verb = line.split(" ", 1)[0].upper()
            if verb == "USER":
                c.send("331 password please")
            elif verb == "QUIT":
                c.send("221 bye")
                return
            else:
                c.send("502 no")

    with FakeBackend(script, connections=2) as fake:
        gw = plain_gateway(gateway, fake)
        ctl = Control.plain(gw.fport("p"))
        try:
            code, text = ctl.reply()
            assert code == 220, text
            code, text = ctl.cmd("REIN")
            assert code == 220, text
            code, text = ctl.cmd("USER someone")
            assert code == 331, text
            code, text = ctl.cmd("QUIT")
            assert code == 221, text
        finally:
            ctl.close()
        fake.wait_done()
        assert not fake.errors, fake.errors
        assert fake.received[1] == ["USER someone", "QUIT"], fake.received


# ---------------------------------------------------------------------------------------
# 3. vsftpd's "500 OOPS" to EPSV is fatal, not "EPSV unsupported"


def test_500_oops_to_epsv_is_not_remembered_as_no_epsv(gateway):
    def script(c: FakeConn):
        c.send("220 fake")
        while (line := c.readline()) is not None:
            verb = line.split(" ", 1)[0].upper()
            if verb == "USER":
                c.send("331 password please")
            elif verb == "PASS":
                c.send("230 in")
            elif verb == "EPSV" and c.index == 0:
                c.send("500 OOPS: vsf_sysutil_bind")
                return  # vsftpd exits after an OOPS
            elif verb in ("EPSV", "PASV"):
                c.send("425 not today")
            elif verb == "QUIT":
                c.send("221 bye")
                return
            else:
                c.send("502 no")

    with FakeBackend(script, connections=2) as fake:
        gw = plain_gateway(gateway, fake)
        answers = []
        for session in range(2):
            ctl = Control.plain(gw.fport("p"))
            try:
                code, text = ctl.reply()
                assert code == 220, text
                ctl.login("someone", "secret")
                answers.append(ctl.cmd("PASV"))
                if session == 1:
                    ctl.cmd("QUIT")
            finally:
                ctl.close()
        fake.wait_done()
        assert not fake.errors, fake.errors
        verbs = [[line.split(" ", 1)[0] for line in lines] for lines in fake.received]
        # The second session still tries EPSV first: nothing was remembered.
        assert "EPSV" in verbs[1] and "PASV" not in verbs[1], verbs
        # The OOPS is the client's answer (the server is going away); no PASV retry.
        assert answers[0][0] == 500 and "OOPS" in answers[0][1], answers
        assert verbs[0][-1] == "EPSV", verbs
        assert answers[1][0] == 425, answers
