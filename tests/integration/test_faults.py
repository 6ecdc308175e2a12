"""Fault injection (README "Timeouts", "Security"; PROTOCOL.md §4, §5, §7).

Backend faults come from a scriptable fake FTP server (fakeftp.FakeFTP); client faults are
played against pyftpdlib. One gateway serves the whole module:

    fe    implicit  -> be    (the fake backend)        fx    explicit -> be
    good  implicit  -> real  (pyftpdlib)               goodx explicit -> real
    dead  implicit  -> dead  (a closed port)           deadx explicit -> dead

so that while one frontend suffers a fault, normal sessions on another run in parallel.
Every test checks: the expected reply or close, a gateway log line, that other sessions
still work, and that the gateway's descriptor count is back to its baseline. The gateway's
exit status and sanitizer output are checked when the module's gateways are stopped.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest

import faults
from fakeftp import FakeFTP
from faults import (RawControl, RawTLS, assert_fds_back, cpu_seconds, normal_session,
                    recv_all_until_closed, rss_kib, wait_readable_all)
from peers import HOST, KiB, MiB, Control, frontend, parse_227, raw_transfer

LOGIN_TIMEOUT = 3  # also the handshake timeout: min(login_timeout, 30)
DATA_TIMEOUT = 3

SMALL = os.urandom(100 * KiB)
BIG = os.urandom(4 * MiB)


@pytest.fixture(scope="module")
def fake():
    with FakeFTP(files={"small.bin": SMALL, "big.bin": BIG}) as f:
        yield f


@pytest.fixture(scope="module")
def fgw(workdir, ports, tls_cert, fake, pyftpdlib):
    dead = faults.closed_port(ports)
    with faults.gateway_factory(workdir, ports, tls_cert, "faults") as factory:
        yield factory(
            backend_address=fake.address,
            backend_keys={"connect_timeout": 2},
            frontends={
                "fx": frontend("explicit"),
                "good": frontend("implicit", backend="real"),
                "goodx": frontend("explicit", backend="real"),
                "dead": frontend("implicit", backend="dead"),
                "deadx": frontend("explicit", backend="dead"),
            },
            extra={
                "global": {"login_timeout": LOGIN_TIMEOUT, "idle_timeout": 30,
                           "data_timeout": DATA_TIMEOUT, "data_connect_timeout": 5,
                           "max_sessions_per_ip": 5000},
                "backend real": {"address": pyftpdlib.address, "tls": "none"},
                "backend dead": {"address": f"{HOST}:{dead}", "tls": "none",
                                 "connect_timeout": 2},
            })


SLOW = "slow-64M.bin"  # 64 MiB: far more than every buffer between backend and client


@pytest.fixture(scope="module")
def real_files(pyftpdlib):
    """Files on pyftpdlib for the healthy sessions, the slow reader and the alerts."""
    pyftpdlib.put_bytes("ok.bin", SMALL)
    pyftpdlib.put_bytes("big.bin", BIG)
    with open(pyftpdlib.path(SLOW), "wb") as f:
        for _ in range(16):
            f.write(BIG)
    return {"ok.bin": SMALL, "big.bin": BIG}


class Mark:
    """The log from the test's start on (`log`, a cursor) and the gateway's descriptor count
    then."""

    def __init__(self, gw):
        self.log = gw.mark()
        self.baseline = gw.settled_fd_count()


@pytest.fixture
def mark(fgw, fake, real_files):
    fake.queued.clear()
    fake.pasv_host = HOST
    fake.epsv = True
    return Mark(fgw)


def healthy(fgw, pyftpdlib, ctx, fake=None):
    """Normal sessions still work: on pyftpdlib (implicit and explicit) and, when given,
    on the fake backend (its default plan is a working server)."""
    user, password = pyftpdlib.user, pyftpdlib.password
    normal_session(fgw.fport("good"), user, password, ctx, download="ok.bin", expect=SMALL,
                   upload=os.urandom(64 * KiB))
    normal_session(fgw.fport("goodx"), user, password, ctx, download="ok.bin", expect=SMALL,
                   explicit=True)
    if fake is not None:
        fake.queued.clear()
        normal_session(fgw.port, "fake", "x", ctx, download="small.bin", expect=SMALL)


def finish(fgw, m: Mark, pyftpdlib, ctx, fake=None):
    assert fgw.alive(), "the gateway died"
    healthy(fgw, pyftpdlib, ctx, fake)
    assert_fds_back(fgw, m.baseline)


def ctl_for(fgw, name, ctx, explicit):
    """A raw control connection on frontend `name`, nothing read yet (implicit: TLS up)."""
    port = fgw.fport(name)
    if explicit:
        return Control.plain(port)
    return Control.implicit(port, ctx)


# ---------------------------------------------------------------------------------------
# Backend faults


@pytest.mark.parametrize("mode", ["implicit", "explicit"])
def test_backend_refuses_connection(fgw, mark, pyftpdlib, client_ctx, mode):
    c = ctl_for(fgw, "dead" if mode == "implicit" else "deadx", client_ctx,
                mode == "explicit")
    try:
        c.gets_421_then_close()
    finally:
        c.close()
    mark.log.wait(r"event=backend_connect_failed backend=127\.0\.0\.1:\d+ "
                  r"reason=\"connection refused\"")
    mark.log.wait(r'event=session_close reason="backend unreachable"')
    finish(fgw, mark, pyftpdlib, client_ctx)


@pytest.mark.parametrize("mode", ["implicit", "explicit"])
def test_backend_accepts_then_never_greets(fgw, mark, fake, pyftpdlib, client_ctx, mode):
    """The backend's TCP accept succeeds but no 220 ever comes: the client gets 421 once the
    backend's connect_timeout (2 s) has passed since the TCP connect (not the longer login
    timeout; with no other backend there is nothing to fail over to), and sessions in
    parallel are not held up."""
    fake.queue("stall")
    c = ctl_for(fgw, "fe" if mode == "implicit" else "fx", client_ctx, mode == "explicit")
    try:
        sid = mark.log.sid(c.sock.getsockname()[1])
        start = time.monotonic()
        # In parallel, on another frontend (the fake's next connection is a normal one).
        healthy(fgw, pyftpdlib, client_ctx)
        c.sock.settimeout(LOGIN_TIMEOUT + 5)
        code, text = c.reply()
        took = time.monotonic() - start
        assert code == 421 and "no greeting" in text, text
        assert took <= 2 + 3, f"421 after {took:.1f} s"  # connect_timeout, a 1 s tick, slack
        assert c.closed_by_peer(), "the connection stayed open after 421"
    finally:
        c.close()
    lines = mark.log.ended(sid)
    assert any('event=session_close reason="no greeting within 2 s"' in l for l in lines), lines
    finish(fgw, mark, pyftpdlib, client_ctx, fake)


# Backend faults the client sees as a 421 and a closed connection: the fake's plan and its
# parameters, whether the client logs in and sends PWD first, bytes of the fault that must
# not reach the client, and the session's close reason.
FAULTS_421 = {
    # Half a greeting line, then FIN: the half line is never relayed.
    "half_greeting": ("half_greeting", {}, False, b"fake FTP ser",
                      "backend closed the connection"),
    # After login, PWD's reply is cut after half a line and the backend closes.
    "half_reply": ("half_reply", {"verb": "PWD"}, True, b"half-a-rep",
                   "backend closed the connection"),
    # Random binary bytes instead of a reply (the 421 comes inside TLS).
    "garbage_greeting": ("garbage", {}, False, None, "backend sent an invalid reply"),
    "garbage_reply": ("garbage_reply", {}, True, None, "backend sent an invalid reply"),
    # A 10 MiB reply line: the gateway stops at its line cap without buffering the line.
    "10MiB_reply_line": ("huge_line", {"verb": "PWD", "size": 10 * MiB}, True, None,
                         "backend reply line too long"),
}


@pytest.mark.parametrize("fault, mode", [
    ("half_greeting", "implicit"), ("half_greeting", "explicit"), ("half_reply", "implicit"),
    ("garbage_greeting", "implicit"), ("garbage_reply", "implicit"),
    ("10MiB_reply_line", "implicit")])
def test_backend_fault_gets_421_then_close(fgw, mark, fake, pyftpdlib, client_ctx, fault, mode):
    """421, close, the reason in the log; the gateway's memory does not grow by anything
    near the fault's size (10 MiB for the long line)."""
    plan, params, login, hidden, reason = FAULTS_421[fault]
    fake.queue(plan, **params)
    rss_before = rss_kib(fgw.pid)
    c = ctl_for(fgw, "fe" if mode == "implicit" else "fx", client_ctx, mode == "explicit")
    try:
        sid = mark.log.sid(c.sock.getsockname()[1])
        if login:
            assert c.reply()[0] == 220
            c.login("fake", "x")
            c.send(b"PWD\r\n")
        first = c.gets_421_then_close()
        assert hidden is None or hidden not in first, first
    finally:
        c.close()
    lines = mark.log.ended(sid)
    assert any(f'reason="{reason}"' in l for l in lines), lines
    grew = rss_kib(fgw.pid) - rss_before
    assert grew < 4 * 1024, f"RSS grew by {grew} KiB ({fault})"
    finish(fgw, mark, pyftpdlib, client_ctx, fake)


def pasv_data(c: Control, timeout=10) -> socket.socket:
    code, text = c.cmd("PASV")
    assert code == 227, text
    host, port = parse_227(text)
    return socket.create_connection((host, port), timeout=timeout)


@pytest.mark.parametrize("then", ["close", "silent"])
@pytest.mark.parametrize("how", ["fin", "reset"])
def test_backend_breaks_mid_transfer(fgw, mark, fake, pyftpdlib, client_ctx, then, how):
    """RETR of 4 MiB: the backend sends 64 KiB on the data connection and closes it (FIN or
    reset); then its control connection closes, or stays silent for good. The client must
    never see a 226, and must get a final 4xx within the gateway's timeouts rather than
    wait forever."""
    nbytes = 64 * KiB
    fake.queue("mid_transfer", nbytes=nbytes, then=then, reset=how == "reset")
    c = Control.implicit(fgw.port, client_ctx)
    try:
        sid = mark.log.sid(c.sock.getsockname()[1])
        assert c.reply()[0] == 220
        c.login("fake", "x")
        assert c.cmd("TYPE I")[0] == 200
        data = pasv_data(c)
        code, text = c.cmd("RETR big.bin")
        assert code in (125, 150), text
        tls = client_ctx.wrap_socket(data, server_hostname="localhost", session=c.session)
        got, ended = recv_all_until_closed(tls, timeout=15)
        tls.close()
        assert len(got) <= nbytes and BIG.startswith(got), (len(got), ended)
        # The final reply: 426 (or 421 when the whole session ends), within
        # data_timeout / idle handling, never 226.
        c.sock.settimeout(DATA_TIMEOUT + 7)
        start = time.monotonic()
        try:
            code, text = c.reply()
        except (TimeoutError, socket.timeout):
            pytest.fail(f"no final reply to RETR {time.monotonic() - start:.0f} s after the "
                        f"backend's data connection ended ({how}, control {then}): the "
                        f"client waits forever (data_timeout = {DATA_TIMEOUT}); gateway log:\n"
                        + "\n".join(mark.log.session(sid)[-15:]))
        assert code in (426, 451, 421), f"RETR of a truncated file ended with {text!r}"
    finally:
        c.close()
    mark.log.ended(sid, timeout=15)
    finish(fgw, mark, pyftpdlib, client_ctx, fake)


def test_pasv_reply_naming_another_host(fgw, mark, fake, pyftpdlib, client_ctx):
    """The backend's 227 names 10.1.2.3 while it listens on 127.0.0.1: the gateway connects
    to the backend control peer's address and the transfers work (PROTOCOL.md §5). The fake
    is a legacy server here (EPSV gets 500), so the gateway has to use PASV."""
    fake.pasv_host = "10.1.2.3"
    fake.epsv = False
    try:
        before = len(fake.data_peers)
        commands_before = len(fake.commands)
        normal_session(fgw.port, "fake", "x", client_ctx, download="big.bin", expect=BIG,
                       upload=os.urandom(512 * KiB), timeout=20)
        assert fake.data_peers[before:] and set(fake.data_peers[before:]) == {HOST}, \
            fake.data_peers[before:]
        assert "PASV" in [v for _, v, _ in fake.commands[commands_before:]]
    finally:
        fake.pasv_host = HOST
        fake.epsv = True
    mark.log.wait(r"event=pasv_address_replaced named=10\.1\.2\.3:")
    finish(fgw, mark, pyftpdlib, client_ctx)


# ---------------------------------------------------------------------------------------
# Client faults (pyftpdlib behind the "good" frontends)


def _sslv2_hello() -> bytes:
    """A well-formed SSLv2-format ClientHello (offering TLS 1.0, one SSLv2 cipher)."""
    body = (b"\x01\x03\x01" + (3).to_bytes(2, "big") + (0).to_bytes(2, "big")
            + (16).to_bytes(2, "big") + b"\x01\x00\x80" + os.urandom(16))
    return (0x8000 | len(body)).to_bytes(2, "big") + body


GARBAGE = {
    "random": os.urandom(3000),
    "tls_header_junk": b"\x16\x03\x01\x02\x00" + os.urandom(512),
    "http": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "ftp_in_clear": b"USER ftpgw\r\nPASS secret\r\n",
    "sslv2_hello": _sslv2_hello(),
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_instead_of_client_hello(fgw, mark, pyftpdlib, client_ctx, kind):
    with socket.create_connection((HOST, fgw.fport("good")), timeout=10) as raw:
        sid = mark.log.sid(raw.getsockname()[1])
        raw.sendall(GARBAGE[kind])
        data, ended = recv_all_until_closed(raw, timeout=LOGIN_TIMEOUT + 3)
    assert ended in ("eof", "reset"), f"the gateway kept the connection open ({ended})"
    assert data == b"" or data[0] == 0x15, f"answered in clear: {data[:80]!r}"
    lines = mark.log.ended(sid)
    assert any('event=session_close reason="TLS handshake failed"' in l for l in lines), lines
    finish(fgw, mark, pyftpdlib, client_ctx)


IAC = 0xFF


def strip_telnet(data: bytes) -> bytes:
    """Drop the gateway's Telnet refusals (IAC WONT x / IAC DONT x) from a reply stream."""
    return re.sub(rb"\xff[\xfb-\xfe].", b"", data, flags=re.S)


@pytest.mark.parametrize("mode", ["implicit", "explicit"])
def test_binary_junk_after_tls(fgw, mark, pyftpdlib, client_ctx, mode):
    """50 lines of binary junk (and Telnet option requests) after login: each gets a reply
    (500 from the gateway or the backend's 5xx), nothing else breaks, and the session goes
    on (SYST, PWD, a transfer)."""
    rnd = random.Random(4217)
    alphabet = bytes(b for b in range(1, 255) if b not in (10, 13))
    lines = [b"Z" + bytes(rnd.choice(alphabet) for _ in range(rnd.randint(0, 300)))
             for _ in range(40)]
    lines += [bytes(rnd.choice(alphabet) for _ in range(rnd.randint(1, 300)))
              for _ in range(10)]
    lines.append(b"\xff\xfd\x18\xff\xfb\x01Zjunk with telnet options")
    if mode == "implicit":
        c = Control.implicit(fgw.fport("good"), client_ctx)
        assert c.reply()[0] == 220
    else:
        c = Control.explicit(fgw.fport("goodx"), client_ctx)
    try:
        c.login(pyftpdlib.user, pyftpdlib.password)
        c.send(b"".join(line + b"\r\n" for line in lines) + b"SYST\r\n")
        stream = b""
        c.sock.settimeout(20)
        while not re.search(rb"(^|\r\n)215 [^\r\n]*\r\n", strip_telnet(stream)):
            chunk = c.sock.recv(65536)
            assert chunk, f"closed after junk; got {stream[-300:]!r}"
            stream += chunk
        assert b"\xff\xfc\x18" in stream and b"\xff\xfe\x01" in stream, \
            "Telnet DO/WILL not refused with WONT/DONT"
        replies = strip_telnet(stream).split(b"\r\n")[:-1]
        codes = [r[:3] for r in replies if re.match(rb"^\d{3} ", r)]
        assert all(re.match(rb"^\d{3}[ -]", r) for r in replies), replies[:5]
        assert len(codes) == len(lines) + 1, (len(codes), len(lines) + 1, replies[-5:])
        assert all(code[:1] == b"5" for code in codes[:-1]), codes
        assert c.cmd("PWD")[0] == 257
        assert c.cmd("TYPE I")[0] == 200
        if mode == "explicit":
            assert c.cmd("PBSZ 0")[0] == 200 and c.cmd("PROT P")[0] == 200
        got, (code, text) = raw_transfer(c, "RETR ok.bin", client_ctx)
        assert code == 226 and got == SMALL, text
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    finish(fgw, mark, pyftpdlib, client_ctx)


def test_slow_reader_download(request, fgw, mark, pyftpdlib, client_ctx, workdir):
    """A client that stops reading its data connection mid-download (slowloris on the data
    leg): the gateway's memory stays bounded (backpressure) and data_timeout ends the
    transfer with 426; the control session goes on."""
    name = SLOW
    # Warm-up: one complete big download, so that buffers that stay allocated are counted.
    normal_session(fgw.fport("good"), pyftpdlib.user, pyftpdlib.password, client_ctx,
                   download="big.bin", expect=BIG)
    time.sleep(0.5)
    rss_before = rss_kib(fgw.pid)
    c = Control.implicit(fgw.fport("good"), client_ctx)
    try:
        sid = mark.log.sid(c.sock.getsockname()[1])
        assert c.reply()[0] == 220
        c.login(pyftpdlib.user, pyftpdlib.password)
        assert c.cmd("TYPE I")[0] == 200
        code, text = c.cmd("PASV")
        assert code == 227, text
        host, port = parse_227(text)
        data = socket.socket()
        data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * KiB)
        data.settimeout(10)
        data.connect((host, port))
        code, text = c.cmd(f"RETR {name}")
        assert code in (125, 150), text
        tls = client_ctx.wrap_socket(data, server_hostname="localhost", session=c.session)
        got = 0
        while got < 256 * KiB:
            got += len(tls.recv(65536))
        stalled = time.monotonic()
        # Stop reading. Sample the gateway's memory while it is stuck.
        peak = rss_before
        c.sock.settimeout(0.2)
        final = None
        while time.monotonic() - stalled < DATA_TIMEOUT + 6:
            peak = max(peak, rss_kib(fgw.pid))
            try:
                final = c.reply()
                break
            except (TimeoutError, socket.timeout):
                continue
        took = time.monotonic() - stalled
        assert final is not None, f"no reply {took:.1f} s after the client stopped reading"
        assert final[0] == 426, final
        assert took >= DATA_TIMEOUT - 1, f"426 after only {took:.1f} s"
        grew = peak - rss_before
        faults.report(request, f"\nslow reader: RSS before {rss_before} KiB, peak {peak} KiB (+{grew} KiB), "
              f"426 after {took:.1f} s")
        assert grew < 16 * 1024, f"gateway RSS grew by {grew} KiB for one stalled reader"
        tls.close()
        c.sock.settimeout(10)
        assert c.cmd("NOOP")[0] == 200, "the control session did not survive the 426"
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    lines = mark.log.ended(sid)
    assert any('event=data_failed reason="data timeout"' in l for l in lines), lines
    finish(fgw, mark, pyftpdlib, client_ctx)


@pytest.mark.parametrize("variant", ["explicit_clear", "implicit_tls", "tls_close_notify"])
def test_client_half_closes_control(fgw, mark, pyftpdlib, client_ctx, variant):
    """shutdown(SHUT_WR) on the control connection (with a NOOP just before it): the gateway
    ends the session and closes its side; nothing leaks."""
    if variant == "explicit_clear":
        sock = socket.create_connection((HOST, fgw.fport("goodx")), timeout=10)
        sid = mark.log.sid(sock.getsockname()[1])
        assert sock.recv(4096).startswith(b"220")
        sock.sendall(b"NOOP\r\n")
        sock.shutdown(socket.SHUT_WR)
        rest, ended = recv_all_until_closed(sock, timeout=10)
        sock.close()
    else:
        rc = RawControl(fgw.fport("good"), client_ctx)
        sid = mark.log.sid(rc.local_port)
        assert rc.reply()[0] == 220
        assert rc.cmd(f"USER {pyftpdlib.user}")[0] == 331
        assert rc.cmd(f"PASS {pyftpdlib.password}")[0] == 230
        rc.send(b"NOOP\r\n")
        if variant == "tls_close_notify":
            rc.tls.close_notify()
        rc.sock.shutdown(socket.SHUT_WR)
        rest, ended = recv_all_until_closed(rc.sock, timeout=10)
        rc.close()
    assert ended in ("eof", "reset"), f"the gateway kept a half-closed connection ({ended})"
    lines = mark.log.ended(sid)
    assert any(re.search(r'event=session_close reason="client (closed|error)', l)
               for l in lines), lines
    finish(fgw, mark, pyftpdlib, client_ctx)


@pytest.mark.serial  # 1000 connections: load
def test_1000_idle_connections_without_client_hello(request, fgw, mark, pyftpdlib, client_ctx):
    """1,000 TCP connections that never send a ClientHello are closed after the handshake
    timeout, min(login_timeout, 30 s), without a byte; normal sessions work meanwhile."""
    n = 1000
    socks, opened = [], []
    try:
        for _ in range(n):
            socks.append(socket.create_connection((HOST, fgw.fport("good")), timeout=10))
            opened.append(time.monotonic())
        all_open = time.monotonic()
        errors = []

        def parallel():
            try:
                for _ in range(3):
                    healthy(fgw, pyftpdlib, client_ctx)
            except Exception as e:  # reported below
                errors.append(repr(e))

        t = threading.Thread(target=parallel)
        t.start()
        ends = wait_readable_all(socks, timeout=LOGIN_TIMEOUT + 8)
        took = time.monotonic() - all_open
        t.join(60)
        assert not errors, f"a normal session failed next to the idle connections: {errors}"
        still_open = [i for i, (_, how, _) in ends.items() if how == "timeout"]
        talked = {i: d[:40] for i, (d, _, _) in ends.items() if d}
        lifetimes = [ends[i][2] - opened[i] for i in range(n)]
        assert not still_open, (f"{len(still_open)} of {n} idle connections still open "
                                f"{took:.1f} s after they were opened")
        assert not talked, f"bytes sent to connections that never said hello: {talked}"
        assert min(lifetimes) >= LOGIN_TIMEOUT - 0.5, \
            f"an idle connection was closed after {min(lifetimes):.1f} s, before the timeout"
        faults.report(request, f"\n{n} idle connections closed after {min(lifetimes):.1f}-"
                               f"{max(lifetimes):.1f} s (handshake timeout {LOGIN_TIMEOUT} s)")
    finally:
        for s in socks:
            s.close()
    log = mark.log.text()
    assert log.count('reason="TLS handshake timeout"') >= n, \
        log.count('reason="TLS handshake timeout"')
    finish(fgw, mark, pyftpdlib, client_ctx)


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_tls_alert_mid_transfer(fgw, mark, pyftpdlib, client_ctx, tls_cert, workdir,
                                direction):
    """The client's data connection sends a fatal TLS alert (internal_error, encrypted with
    the TLS 1.3 traffic keys) in the middle of a transfer: 426 on the control connection,
    the session goes on, the backend's copy of an upload is not reported complete."""
    keylog = workdir / f"keylog-{direction}-{time.monotonic_ns()}.txt"
    ctx = faults.keylog_context(tls_cert[0], keylog)
    c = RawControl(fgw.fport("good"), ctx)
    name = f"alert-up-{time.monotonic_ns()}.bin"
    try:
        sid = mark.log.sid(c.local_port)
        assert c.reply()[0] == 220
        assert c.cmd(f"USER {pyftpdlib.user}")[0] == 331
        assert c.cmd(f"PASS {pyftpdlib.password}")[0] == 230
        assert c.cmd("PBSZ 0")[0] == 200 and c.cmd("PROT P")[0] == 200
        assert c.cmd("TYPE I")[0] == 200
        code, text = c.cmd("PASV")
        assert code == 227, text
        host, port = parse_227(text)
        data = socket.create_connection((host, port), timeout=10)
        command = f"RETR {SLOW}" if direction == "download" else f"STOR {name}"
        code, text = c.cmd(command)
        assert code in (125, 150), text
        d = RawTLS(data, ctx, session=c.tls.session)
        d.handshake()
        if direction == "download":
            got = 0
            while got < 512 * KiB:
                chunk = d.recv()
                assert chunk, "data ended early"
                got += len(chunk)
        else:
            d.send(os.urandom(1 * MiB))
        d.send_raw(d.alert_record(description=80))  # fatal internal_error
        time.sleep(0.5)
        faults.kill_socket(data)
        code, text = c.reply()
        assert code == 426, f"{command} after a fatal alert: {text!r}"
        assert c.cmd("NOOP")[0] == 200
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    lines = mark.log.ended(sid)
    assert any(re.search(r"event=data_error leg=client-data reason=\"[^\"]*alert internal "
                         r"error", l) for l in lines), lines
    if direction == "upload":
        arrived = pyftpdlib.path(name)
        assert not arrived.exists() or arrived.stat().st_size < 1 * MiB + 1
        if arrived.exists():
            arrived.unlink()
    finish(fgw, mark, pyftpdlib, client_ctx)


def test_renegotiation_refused(fgw, mark, pyftpdlib, client_ctx, tls_cert):
    """A TLS 1.2 client asks to renegotiate (openssl s_client's `R` command; Python's ssl
    cannot): the gateway refuses (no_renegotiation alert); no second handshake happens, the
    gateway survives and other sessions are unaffected."""
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"{HOST}:{fgw.fport('good')}", "-tls1_2", "-crlf",
         "-CAfile", str(tls_cert[0]), "-servername", "localhost"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    os.set_blocking(proc.stdout.fileno(), False)
    out = b""

    def wait_output(marker: bytes | None, limit: float) -> None:
        """Collect s_client's output until `marker` shows up (or `limit` seconds pass)."""
        nonlocal out
        end = time.monotonic() + limit
        while time.monotonic() < end and (marker is None or marker not in out):
            chunk = proc.stdout.read()
            if chunk:
                out += chunk
            elif proc.poll() is not None:
                return
            else:
                time.sleep(0.05)

    def say(line: str) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()

    try:
        wait_output(b"220 ", 10)
        say(f"USER {pyftpdlib.user}")
        wait_output(b"331 ", 5)
        say(f"PASS {pyftpdlib.password}")
        wait_output(b"230 ", 5)
        say("R")  # s_client: renegotiate
        wait_output(None, 1.5)
        say("NOOP")
        wait_output(None, 1.0)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        out += proc.stdout.read() or b""
    text = out.decode(errors="replace")
    assert "230 " in text, text[-3000:]
    assert "RENEGOTIATING" in text, text[-3000:]
    assert "no renegotiation" in text, ("s_client did not report the gateway's "
                                        "no_renegotiation refusal:\n" + text[-3000:])
    # No second handshake: s_client prints its session block once.
    assert text.count("Server certificate") <= 1, text[-3000:]
    mark.log.wait(r"event=client_error reason=\"[^\"]*(alert|renegotiat)")
    finish(fgw, mark, pyftpdlib, client_ctx)


def test_truncated_tls_record_on_control(fgw, mark, pyftpdlib, client_ctx):
    """After login the client sends the first 15 bytes of a 69-byte TLS record, then FIN:
    the session ends (nothing relayed, no crash), logged as a close without close_notify."""
    rc = RawControl(fgw.fport("good"), client_ctx)
    try:
        sid = mark.log.sid(rc.local_port)
        assert rc.reply()[0] == 220
        assert rc.cmd(f"USER {pyftpdlib.user}")[0] == 331
        assert rc.cmd(f"PASS {pyftpdlib.password}")[0] == 230
        rc.sock.sendall(b"\x17\x03\x03\x00\x40" + os.urandom(10))
        rc.sock.shutdown(socket.SHUT_WR)
        rest, ended = recv_all_until_closed(rc.sock, timeout=10)
        assert ended in ("eof", "reset"), ended
    finally:
        rc.close()
    lines = mark.log.ended(sid)
    assert any('event=session_close reason="client closed without close_notify"' in l
               or 'event=session_close reason="client error"' in l for l in lines), lines
    finish(fgw, mark, pyftpdlib, client_ctx)


def test_truncated_tls_record_on_upload(fgw, mark, pyftpdlib, client_ctx):
    """Mid-upload the client sends the start of a record, then FIN without close_notify:
    the gateway logs a possible truncation and, with strict_tls_eof at its default (yes,
    README), answers 426 and resets the backend leg; the backend holds at most what was
    sent in whole records (a prefix) and is never reported complete."""
    payload = os.urandom(1 * MiB)
    name = f"trunc-up-{time.monotonic_ns()}.bin"
    rc = RawControl(fgw.fport("good"), client_ctx)
    try:
        sid = mark.log.sid(rc.local_port)
        assert rc.reply()[0] == 220
        assert rc.cmd(f"USER {pyftpdlib.user}")[0] == 331
        assert rc.cmd(f"PASS {pyftpdlib.password}")[0] == 230
        assert rc.cmd("TYPE I")[0] == 200
        code, text = rc.cmd("PASV")
        host, port = parse_227(text)
        data = socket.create_connection((host, port), timeout=10)
        code, text = rc.cmd(f"STOR {name}")
        assert code in (125, 150), text
        d = RawTLS(data, client_ctx, session=rc.tls.session)
        d.handshake()
        d.send(payload)
        d.send_raw(b"\x17\x03\x03\x40\x11" + os.urandom(100))
        data.shutdown(socket.SHUT_WR)
        recv_all_until_closed(data, timeout=10)
        data.close()
        code, text = rc.reply()
        assert code == 426, f"a truncated upload was answered {text!r}"
        assert rc.cmd("QUIT")[0] == 221
    finally:
        rc.close()
    lines = mark.log.ended(sid)
    assert any("event=data_eof leg=client-data close_notify=no" in l for l in lines), lines
    arrived = pyftpdlib.path(name)
    if arrived.exists():
        body = arrived.read_bytes()
        assert payload.startswith(body), "the backend got bytes the client never sent"
        arrived.unlink()
    finish(fgw, mark, pyftpdlib, client_ctx)


# ---------------------------------------------------------------------------------------
# Descriptor exhaustion


@pytest.mark.serial  # descriptor exhaustion under load
def test_emfile_overload(request, workdir, ports, tls_cert, pyftpdlib, client_ctx, real_files):
    """The gateway at RLIMIT_NOFILE = 64 with 100 connections: it neither dies nor spins
    (CPU time over 5 s of idle overload < 1 s), and after the connections close a normal
    session works."""
    with faults.gateway_factory(workdir, ports, tls_cert, "faults-emfile") as factory:
        gw = factory(pyftpdlib, extra={"global": {"max_sessions_per_ip": 1000,
                                                  "login_timeout": 30}})
        normal_session(gw.port, pyftpdlib.user, pyftpdlib.password, client_ctx,
                       download="ok.bin", expect=SMALL)
        baseline = gw.settled_fd_count()
        cur = gw.mark()
        subprocess.run(["prlimit", f"--pid={gw.pid}", "--nofile=64:64"], check=True)
        socks = []
        connected = 0
        try:
            for _ in range(100):
                try:
                    socks.append(socket.create_connection((HOST, gw.port), timeout=5))
                    connected += 1
                except OSError as e:
                    socks.append(None)
                    print(f"connect failed: {e!r}")
            time.sleep(1)
            cpu0, t0 = cpu_seconds(gw.pid), time.monotonic()
            time.sleep(5)
            cpu = cpu_seconds(gw.pid) - cpu0
            wall = time.monotonic() - t0
            fds = gw.fd_count()
            assert gw.alive(), "the gateway died at its descriptor limit"
            faults.report(request, f"\nEMFILE: {fds} descriptors open, CPU {cpu:.2f} s over {wall:.1f} s")
            assert cpu < 1.0, f"the gateway spins at EMFILE: {cpu:.2f} s CPU in {wall:.1f} s"
            # While overloaded, a new session is refused or closed, it does not hang.
            try:
                with socket.create_connection((HOST, gw.port), timeout=5) as extra:
                    connected += 1
                    extra.settimeout(10)
                    try:
                        tls = client_ctx.wrap_socket(extra, server_hostname="localhost")
                        tls.settimeout(10)
                        first = tls.recv(4096)
                        assert first == b"" or first.startswith(b"421"), first
                    except (ssl.SSLError, ConnectionError, OSError):
                        pass
            except OSError:
                pass
        finally:
            for s in socks:
                if s is not None:
                    s.close()
        peers_fd = gw.wait_fd_count(baseline, timeout=10)
        assert peers_fd == baseline, faults.fd_list(gw.pid)
        overload_log = cur.text()
        normal_session(gw.port, pyftpdlib.user, pyftpdlib.password, client_ctx,
                       download="ok.bin", expect=SMALL, upload=os.urandom(64 * KiB))
        assert gw.alive()
        # The connections it could not take must leave a trace for the operator.
        started = overload_log.count("event=session_start")
        faults.report(request, f"EMFILE: {started} of {connected} connections became sessions")
        if started < connected:
            # libuv's accept loop closes them itself; the gateway's descriptor probe (once a
            # second) or a failed accept must say so.
            assert re.search(r'event=(accept_failed frontend=fe reason="too many open files"'
                             r'|descriptor_limit)', overload_log), (
                f"{connected - started} of {connected} connections were dropped at the "
                f"descriptor limit without any log line (no event=descriptor_limit)")
