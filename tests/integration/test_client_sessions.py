"""What real clients do in one session: many transfers on one control connection, commands
pipelined behind REIN, a refused data connection followed by more commands.

Each test here failed before the fix of a defect seen with a real client (the README's
"What works" section describes the behaviour now).
"""

from __future__ import annotations

import contextlib
import ftplib
import socket
import ssl
import threading
import time

import pytest

from peers import (HOST, KiB, Control, backend_tls, check, curl, parse_227, raw_transfer,
                   recv_until_closed, sha256_file, start_pyftpdlib)

TRANSFERS = 30


def tls13_only(gw_port: int) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((HOST, gw_port), 5) as raw:
        with ctx.wrap_socket(raw) as s:
            return s.version() == "TLSv1.3"


# ---------------------------------------------------------------------------------------
# curl with 30 URLs on one command line: one control connection, 30 data connections, each
# resuming a ticket it took once (OpenSSL's client uses a TLS 1.3 ticket once).


@pytest.mark.parametrize("frontend", ["implicit", "explicit"])
def test_curl_30_downloads_one_session(gateway, backend, blobs, scratch, frontend):
    gw = gateway(backend, frontends={"x": {"mode": "explicit"}})
    assert tls13_only(gw.port)
    names, sums = [], {}
    for i in range(TRANSFERS):
        name = f"many-{frontend}-{i}.bin"
        sums[name] = backend.put(blobs, name, 64 * KiB + i, unique=True)
        names.append(name)
    args = []
    for name in names:
        url = (gw.url(name, backend.user, backend.password) if frontend == "implicit"
               else gw.ftp_url("x", name, backend.user, backend.password))
        args += ["-o", str(scratch / name), url]
    start = gw.mark()
    check(curl(*args))
    got = {n: sha256_file(scratch / n) for n in names if (scratch / n).exists()}
    assert got == sums
    log = start.text()
    assert "data_tls_refused" not in log
    assert log.count("event=session_start") == 1, "curl had to reconnect"


@pytest.mark.parametrize("frontend", ["implicit", "explicit"])
def test_curl_30_uploads_one_session(gateway, backend, blobs, scratch, frontend):
    gw = gateway(backend, frontends={"x": {"mode": "explicit"}})
    args, sums = [], {}
    for i in range(TRANSFERS):
        name = f"up-{frontend}-{i}.bin"
        src = scratch / name
        src.write_bytes(bytes([i]) * (48 * KiB + i))
        sums[name] = sha256_file(src)
        url = (gw.url(name, backend.user, backend.password) if frontend == "implicit"
               else gw.ftp_url("x", name, backend.user, backend.password))
        args += ["-T", str(src), url]
    start = gw.mark()
    check(curl(*args))
    got = {n: sha256_file(backend.path(n)) for n in sums if backend.path(n).exists()}
    assert got == sums
    log = start.text()
    assert "data_tls_refused" not in log
    assert log.count("event=session_start") == 1, "curl had to reconnect"


class OneTicketFTPS(ftplib.FTP_TLS):
    """Takes the newest session of the control connection before each data connection and
    uses it for exactly that one: a client that never resumes a ticket twice."""

    used: list[bytes]
    reused: list[bool]

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        session = self.sock.session
        assert session is not None
        assert session.id not in self.used, "no fresh session on the control connection"
        self.used.append(session.id)
        conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
        self.reused.append(conn.session_reused)
        return conn, size


def test_each_data_connection_gets_a_fresh_ticket(gateway, backend, client_ctx):
    gw = gateway(backend, frontends={"x": {"mode": "explicit"}})
    backend.put_bytes("ticket.txt", b"one ticket per transfer\n")
    ctx = client_ctx
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ftp = OneTicketFTPS(context=ctx, timeout=30)
    ftp.used, ftp.reused = [], []
    ftp.connect(HOST, gw.fport("x"))
    try:
        ftp.auth()
        assert ftp.sock.version() == "TLSv1.3"
        ftp.login(backend.user, backend.password)
        ftp.prot_p()
        for i in range(50):
            chunks: list[bytes] = []
            ftp.retrbinary("RETR ticket.txt", chunks.append)
            assert b"".join(chunks) == b"one ticket per transfer\n", f"transfer {i}"
        ftp.quit()
    finally:
        ftp.close()
    assert ftp.reused == [True] * 50


# ---------------------------------------------------------------------------------------
# Commands pipelined behind REIN: every one gets a reply.


def test_commands_pipelined_after_rein_on_plain(gateway, backend):
    gw = gateway(backend, frontends={"p": {"mode": "plain"}})
    c = Control.plain(gw.fport("p"))
    try:
        assert c.reply()[0] == 220
        c.login(backend.user, backend.password)
        start = gw.mark()
        c.send(f"NOOP\r\nREIN\r\nUSER {backend.user}\r\nPASS {backend.password}\r\n"
               "PWD\r\n".encode())
        codes = [c.reply()[0] for _ in range(5)]
        assert codes == [200, 220, 331, 230, 257]
        assert c.cmd("NOOP")[0] == 200
        assert "event=rein" in start.text()
    finally:
        c.close()


def test_commands_pipelined_after_rein_under_tls_are_answered(gateway, backend, client_ctx):
    """Under TLS the reset ends the protection: what the client queued behind REIN gets a
    503 inside TLS (nothing of it runs in clear), then the close_notify."""
    gw = gateway(backend, frontends={"x": {"mode": "explicit"}})
    c = Control.explicit(gw.fport("x"), client_ctx)
    try:
        c.login(backend.user, backend.password)
        start = gw.mark()
        c.send(b"NOOP\r\nREIN\r\nPWD\r\nSYST\r\n")
        codes = [c.reply()[0] for _ in range(4)]
        assert codes == [200, 220, 503, 503]
        c.unwrap()
        assert c.cmd("FEAT")[0] == 211  # in clear again, a fresh session
        log = start.text()
        assert 'event=rein_pipelined answered=2' in log
    finally:
        c.close()


# ---------------------------------------------------------------------------------------
# A refused data connection must not cost the session: the backend's data leg ends cleanly
# (vsftpd ends the whole session when a data handshake of its own is cut).


def refused_then_transfer(gw, server, ctx, name):
    c = Control.implicit(gw.port, ctx)
    try:
        assert c.reply()[0] == 220
        c.login(server.user, server.password)
        assert c.cmd("PBSZ 0")[0] == 200 and c.cmd("PROT P")[0] == 200
        code, text = c.cmd("PASV")
        assert code == 227, text
        host, port = parse_227(text)
        data = socket.create_connection((host, port), timeout=10)
        fresh = ssl.create_default_context()
        fresh.check_hostname, fresh.verify_mode = False, ssl.CERT_NONE

        def handshake():  # a full handshake, sent before RETR: it races the backend's leg
            with contextlib.suppress(OSError):
                recv_until_closed(fresh.wrap_socket(data, server_hostname="localhost"), 10)

        t = threading.Thread(target=handshake)
        t.start()
        try:
            code, text = c.cmd(f"RETR {name}")
            if code in (125, 150):
                code, text = c.reply()
            assert code == 522, text
        finally:
            t.join(15)
            data.close()
        code, text = c.cmd("PWD")
        assert code == 257, f"the session did not survive the refusal: {text}"
        got, (code, text) = raw_transfer(c, f"RETR {name}", ctx)
        assert code == 226, text
        return got
    finally:
        c.close()


def test_refused_data_connection_keeps_the_session(gateway, vsftpd_ftps, client_ctx):
    gw = gateway(vsftpd_ftps, backend_keys=backend_tls("explicit", ca_file=vsftpd_ftps.cert))
    vsftpd_ftps.put_bytes("refused.txt", b"still here\n" * 1000)
    start = gw.mark()
    for _ in range(10):
        assert refused_then_transfer(gw, vsftpd_ftps, client_ctx, "refused.txt") == \
            b"still here\n" * 1000
    log = start.text()
    assert log.count("data_tls_refused") == 10
    assert "backend closed the connection" not in log


# ---------------------------------------------------------------------------------------
# The backend's passive port is connected when its 227/229 arrives, as a client would: a
# server with a short accept window (curl's test server waits 2 s) must not time out while
# the client is still between PASV and RETR.


@pytest.fixture
def impatient_pyftpdlib(workdir, ports, test_user):
    server = start_pyftpdlib(workdir / "pyftpdlib-impatient", ports, *test_user,
                             extra="from pyftpdlib.handlers import PassiveDTP\n"
                                   "PassiveDTP.timeout = 1\n")
    yield server
    server.stop()


def test_backend_passive_port_connected_at_once(gateway, impatient_pyftpdlib, client_ctx):
    server = impatient_pyftpdlib
    server.put_bytes("early.txt", b"connected early\n")
    gw = gateway(server, frontends={"p": {"mode": "plain"}})
    for port, ctx in ((gw.fport("p"), None), (gw.port, client_ctx)):
        c = Control.plain(port) if ctx is None else Control.implicit(port, ctx)
        try:
            assert c.reply()[0] == 220
            c.login(server.user, server.password)
            if ctx is not None:
                assert c.cmd("PBSZ 0")[0] == 200 and c.cmd("PROT P")[0] == 200
            assert c.cmd("TYPE I")[0] == 200
            code, text = c.cmd("PASV")
            assert code == 227, text
            host, dport = parse_227(text)
            data = socket.create_connection((host, dport), timeout=10)
            time.sleep(2)  # past the server's accept window
            code, text = c.cmd("RETR early.txt")
            assert code in (125, 150), text
            if ctx is not None:
                data = ctx.wrap_socket(data, server_hostname="localhost", session=c.session)
            got, _ = recv_until_closed(data, 10)
            data.close()
            assert got == b"connected early\n"
            assert c.reply()[0] == 226
        finally:
            c.close()
