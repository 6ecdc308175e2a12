"""Security defaults (README "Security", PROTOCOL.md §3, §7): no password in any log, TLS
versions, AUTH/require_tls rules, command injection after AUTH, per-IP limits, failed
logins.

Failed logins are played against a fake backend that answers 530 at once, so the delay the
client sees is the gateway's own (pyftpdlib and vsftpd delay failed logins themselves).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

import faults
import peers
from fakeftp import FakeFTP
from faults import s_client, s_client_protocol
from peers import HOST, Control, frontend, recv_until_closed

FAKE_PASSWORD = "fake-right-" + secrets.token_hex(4)
# Every password this module sends starts with this; no gateway log may ever contain it.
CANARY = "CanaryPw-" + secrets.token_hex(6)


def gateway_logs(workdir: Path) -> list[Path]:
    """The logs of every gateway started in this run (all factories write under
    workdir/gateways)."""
    return sorted((workdir / "gateways").rglob("*.log")) if (workdir / "gateways").exists() \
        else []


def leaks(workdir: Path, secrets_: list[str]) -> list[str]:
    found = []
    for log in gateway_logs(workdir):
        text = log.read_text(errors="replace")
        for secret in secrets_:
            for line in text.splitlines():
                if secret in line:
                    found.append(f"{log}: {line[:300]}")
    return found


@pytest.fixture(scope="session", autouse=True)
def password_audit_at_session_end(workdir, test_user):
    """At the very end of the run (after every other module's gateways have been stopped),
    grep all gateway logs of the run for the test user's password and this module's
    canaries. Reported as an error at session teardown if anything leaked."""
    yield
    found = leaks(workdir, [test_user[1], CANARY])
    assert not found, "password in a gateway log:\n" + "\n".join(found[:20])


@pytest.fixture(scope="module")
def fake():
    with FakeFTP(password=FAKE_PASSWORD) as f:
        yield f


@pytest.fixture(scope="module")
def sgw(workdir, ports, tls_cert, pyftpdlib, fake):
    """fe implicit and x explicit in front of pyftpdlib; ff implicit and fx explicit in
    front of the fake backend."""
    with faults.gateway_factory(workdir, ports, tls_cert, "security") as factory:
        yield factory(
            pyftpdlib,
            frontends={"x": frontend("explicit"),
                       "ff": frontend("implicit", backend="fake"),
                       "fx": frontend("explicit", backend="fake")},
            extra={"global": {"max_sessions_per_ip": 500, "login_timeout": 20},
                   "backend fake": {"address": fake.address, "tls": "none"}})


@pytest.fixture
def cur(sgw):
    """The log of `sgw` from the test's start on."""
    return sgw.mark()


def explicit_clear(port: int) -> Control:
    c = Control.plain(port)
    code, text = c.reply()
    assert code == 220, text
    return c


# ---------------------------------------------------------------------------------------
# PASS never in logs


def test_pass_never_logged(sgw, cur, pyftpdlib, fake, client_ctx):
    """Passwords in every shape a client may send them (failed, successful, lower case,
    extra spaces, pipelined, Telnet-escaped, over-long, in clear before AUTH) never reach
    the gateway's log, which runs at debug level and logs every other command."""
    pw = [f"{CANARY}-{i}" for i in range(8)]
    # Failed logins on the fake backend (answers at once), one session each (3 fail = 421).
    c = Control.implicit(sgw.fport("ff"), client_ctx)
    try:
        assert c.reply()[0] == 220
        assert c.cmd("USER someone")[0] == 331
        assert c.cmd(f"PASS {pw[0]}")[0] == 530
        assert c.cmd("USER someone")[0] == 331
        assert c.cmd(f"pass {pw[1]}")[0] == 530
    finally:
        c.close()
    c = Control.implicit(sgw.fport("ff"), client_ctx)
    try:
        assert c.reply()[0] == 220
        c.send(f"USER someone\r\nPASS  {pw[2]}\r\n".encode())
        assert c.reply()[0] == 331 and c.reply()[0] == 530
        c.send(b"USER someone\r\nPA\xff\xf1SS " + pw[3].encode() + b"\r\n")  # IAC NOP
        assert c.reply()[0] == 331 and c.reply()[0] == 530
    finally:
        c.close()
    c = Control.implicit(sgw.fport("ff"), client_ctx)
    try:
        assert c.reply()[0] == 220
        assert c.cmd("USER someone")[0] == 331
        c.send(f"PASS {pw[4]}{'x' * 5000}\r\n".encode())  # over-long: 500
        assert c.reply()[0] == 500
        # And the successful case, through to the fake's 230.
        assert c.cmd(f"PASS {FAKE_PASSWORD}")[0] == 230
    finally:
        c.close()
    # In clear on the explicit frontend, refused by require_tls.
    c = explicit_clear(sgw.fport("fx"))
    try:
        assert c.cmd("USER someone")[0] == 530
        assert c.cmd(f"PASS {pw[5]}")[0] == 530
    finally:
        c.close()
    # A real login on pyftpdlib with the test user's password.
    faults.normal_session(sgw.port, pyftpdlib.user, pyftpdlib.password, client_ctx)
    time.sleep(0.3)
    log = cur.text()
    assert 'verb=PASS arg="***"' in log, "PASS commands are not logged at all: the check is void"
    assert "verb=USER" in log
    for secret in [*pw, FAKE_PASSWORD, pyftpdlib.password]:
        hits = [line for line in log.splitlines() if secret in line]
        assert not hits, f"password {secret!r} in the gateway log:\n" + "\n".join(hits)


def test_no_password_in_any_gateway_log_of_the_run(workdir, test_user):
    """Every gateway started so far in this run (all modules): the test user's password and
    this module's canaries never appear. (Repeated at session end by an autouse fixture.)"""
    logs = gateway_logs(workdir)
    assert logs, f"no gateway logs under {workdir / 'gateways'}"
    found = leaks(workdir, [test_user[1], CANARY])
    assert not found, f"password in gateway logs ({len(logs)} scanned):\n" + "\n".join(found[:20])


# ---------------------------------------------------------------------------------------
# TLS versions


@pytest.fixture(scope="module")
def openssl_can_do_old_tls(tls_cert, ports):
    """Positive control: this openssl s_client really speaks TLS 1.0 and 1.1 when a server
    allows them (so a refusal below is the gateway's)."""
    for flag in ("-tls1", "-tls1_1"):
        port = ports.port()
        server = subprocess.Popen(
            ["openssl", "s_server", "-accept", f"{HOST}:{port}", "-cert", str(tls_cert[0]),
             "-key", str(tls_cert[1]), flag, "-cipher", "DEFAULT@SECLEVEL=0", "-naccept", "1",
             "-quiet"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            peers.wait_listening(server, port, 10, "openssl s_server")
            res = s_client(port, flag, "-cipher", "DEFAULT@SECLEVEL=0")
            assert s_client_protocol(res) in ("TLSv1", "TLSv1.1"), res.stdout[-1500:]
        finally:
            server.kill()
            server.wait(5)
    return True


OLD = [("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")]
NEW = [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")]


@pytest.mark.parametrize("mode", ["implicit", "explicit"])
@pytest.mark.parametrize("flag, name", OLD)
def test_old_tls_versions_refused(sgw, cur, openssl_can_do_old_tls, mode, flag, name):
    port = sgw.port if mode == "implicit" else sgw.fport("x")
    res = s_client(port, flag, "-cipher", "DEFAULT@SECLEVEL=0", starttls=mode == "explicit")
    out = (res.stdout + res.stderr).decode(errors="replace")
    assert s_client_protocol(res) is None, f"{name} handshake succeeded:\n{out[-2000:]}"
    assert re.search(r"alert protocol version|unsupported protocol|no protocols available|"
                     r"handshake failure|wrong version", out, re.I), out[-2000:]
    cur.wait(r'event=client_error reason="[^"]*(unsupported protocol|version)')
    assert sgw.alive()


@pytest.mark.parametrize("mode", ["implicit", "explicit"])
@pytest.mark.parametrize("flag, name", NEW)
def test_tls12_and_tls13_accepted(sgw, cur, tls_cert, mode, flag, name):
    port = sgw.port if mode == "implicit" else sgw.fport("x")
    res = s_client(port, flag, "-CAfile", str(tls_cert[0]), starttls=mode == "explicit",
                   stdin=b"QUIT\r\n")
    out = res.stdout.decode(errors="replace")
    assert s_client_protocol(res) == name, out[-2000:]
    assert "Verify return code: 0 (ok)" in out, out[-2000:]
    cur.wait(rf"event=tls_established tls={re.escape(name)}/")


# The gateway is not asked to reach these backends: the warning is about the configuration,
# logged at start and again at every reload (SIGHUP), once per backend.
WEAK_TLS = re.compile(r"level=warn session=- event=weak_tls backend=be (.*)")


@pytest.mark.parametrize("keys, logged", [
    ({"min_version": "TLSv1", "ciphers": "DEFAULT:@SECLEVEL=0"},
     'min_version=TLSv1 ciphers="DEFAULT:@SECLEVEL=0" seclevel=lowered'),
    ({"min_version": "TLSv1.1"}, "min_version=TLSv1.1"),
    ({"ciphers": "ECDHE+AESGCM"}, 'ciphers="ECDHE+AESGCM"'),
], ids=["tls1-seclevel0", "tls1_1", "ciphers"])
def test_weak_backend_tls_warned(gateway, pyftpdlib, keys, logged):
    gw = gateway(pyftpdlib, backend_keys=peers.backend_tls("explicit", **keys))
    lines = WEAK_TLS.findall(gw.log)
    assert len(lines) == 1 and lines[0].startswith(logged + " "), gw.log[-3000:]
    cur = gw.mark()
    os.kill(gw.pid, signal.SIGHUP)
    cur.wait(r"event=reloaded")
    assert len(WEAK_TLS.findall(cur.text())) == 1, cur.text()


@pytest.mark.parametrize("keys", [
    {"tls": "explicit"},
    {"tls": "implicit", "min_version": "TLSv1.2", "max_version": "TLSv1.3"},
    {"tls": "none", "ciphers": "DEFAULT:@SECLEVEL=0"},  # no TLS toward it: nothing lowered
], ids=["defaults", "tls1_2-1_3", "plain-backend"])
def test_default_backend_tls_not_warned(gateway, pyftpdlib, keys):
    gw = gateway(pyftpdlib, backend_keys=keys)
    assert "event=weak_tls" not in gw.log, gw.log[-3000:]


def test_min_version_tls13_refuses_tls12(workdir, ports, tls_cert, pyftpdlib, tls_cert_ctx13):
    with faults.gateway_factory(workdir, ports, tls_cert, "security-tls13") as factory:
        gw = factory(pyftpdlib, frontends={"x": frontend("explicit")},
                     extra={"tls": {"min_version": "TLSv1.3"}})
        cur = gw.mark()
        for port, explicit in ((gw.port, False), (gw.fport("x"), True)):
            res = s_client(port, "-tls1_2", starttls=explicit)
            out = res.stdout.decode(errors="replace")
            assert s_client_protocol(res) is None, f"TLS 1.2 accepted:\n{out[-2000:]}"
            res = s_client(port, "-tls1_3", "-CAfile", str(tls_cert[0]), starttls=explicit,
                           stdin=b"QUIT\r\n")
            assert s_client_protocol(res) == "TLSv1.3", res.stdout.decode()[-2000:]
        # Python's ssl capped at TLS 1.2 is refused too; uncapped it works.
        ctx12, ctx = tls_cert_ctx13
        with socket.create_connection((HOST, gw.port), timeout=10) as raw:
            with pytest.raises(ssl.SSLError):
                ctx12.wrap_socket(raw, server_hostname="localhost")
        faults.normal_session(gw.port, pyftpdlib.user, pyftpdlib.password, ctx)
        cur.wait(r'event=client_error reason="[^"]*(unsupported protocol|version)')


@pytest.fixture
def tls_cert_ctx13(tls_cert):
    ctx12 = peers.client_context(tls_cert[0])
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx12, peers.client_context(tls_cert[0])


# ---------------------------------------------------------------------------------------
# AUTH and require_tls


def test_auth_on_implicit_gets_503(sgw, pyftpdlib, client_ctx):
    c = Control.implicit(sgw.port, client_ctx)
    try:
        assert c.reply()[0] == 220
        for mech in ("TLS", "SSL", "TLS-C"):
            code, text = c.cmd(f"AUTH {mech}")
            assert code == 503, text
        c.login(pyftpdlib.user, pyftpdlib.password)
        assert c.cmd("AUTH TLS")[0] == 503
        assert c.cmd("PWD")[0] == 257
    finally:
        c.close()


def test_plaintext_user_under_require_tls(sgw, cur, fake):
    """Before AUTH on an explicit frontend with require_tls (the default): USER and PASS get
    530 and never reach the backend."""
    before = len(fake.commands)
    c = explicit_clear(sgw.fport("fx"))
    try:
        code, text = c.cmd("USER someone")
        assert code == 530 and "TLS" in text, text
        code, text = c.cmd(f"PASS {CANARY}-clear")
        assert code == 530, text
        assert c.cmd("CWD /")[0] == 530
        assert c.cmd("NOOP")[0] in (200, 250)
    finally:
        c.close()
    time.sleep(0.2)
    relayed = [v for _, v, _ in fake.commands[before:]]
    assert "USER" not in relayed and "PASS" not in relayed and "CWD" not in relayed, relayed


@pytest.mark.parametrize("how", ["one_segment", "separate_segment", "after_234"])
def test_pipelined_plaintext_after_auth_not_executed(sgw, cur, fake, client_ctx, how):
    """AUTH TLS then USER in clear: the USER must never be taken as a protected command
    (RFC 4217 §10, the STARTTLS injection class). one_segment: both lines in one TCP
    segment (discarded and logged); separate_segment: USER in its own segment while the
    gateway waits for the ClientHello; after_234: USER sent in clear after reading 234."""
    before = len(fake.commands)
    c = Control.plain(sgw.fport("fx"))
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    handshake_ok = None
    try:
        assert c.reply()[0] == 220
        if how == "one_segment":
            c.send(b"AUTH TLS\r\nUSER injected\r\nPASS " + CANARY.encode() + b"\r\n")
        elif how == "separate_segment":
            c.send(b"AUTH TLS\r\n")
            time.sleep(0.2)
            c.send(b"USER injected\r\n")
        else:
            c.send(b"AUTH TLS\r\n")
        code, text = c.reply()
        assert code == 234, text
        if how == "after_234":
            c.send(b"USER injected\r\n")
        try:
            c.starttls(client_ctx)
            handshake_ok = True
        except (ssl.SSLError, ConnectionError, OSError):
            handshake_ok = False  # clear bytes where the ClientHello was due: session over
        if handshake_ok:
            code, text = c.cmd("NOOP")
            assert code == 200, f"first reply inside TLS: {text!r} (a pipelined command ran?)"
            code, text = c.cmd(f"PASS {CANARY}-after")
            assert code in (503, 530), text
    finally:
        c.close()
    time.sleep(0.3)
    relayed = [(v, a) for _, v, a in fake.commands[before:]]
    assert ("USER", "injected") not in relayed, relayed
    if how == "one_segment":
        assert handshake_ok
        cur.wait(r"event=auth_pipelined discarded=\d+")
    else:
        assert handshake_ok is False, "a handshake over clear bytes succeeded"
        cur.wait(r'event=client_error reason="handshake failed')


# ---------------------------------------------------------------------------------------
# Limits


def test_max_sessions_per_ip(workdir, ports, tls_cert, fake, client_ctx):
    """max_sessions_per_ip = 2: a third connection from the same address gets 421 on an
    explicit frontend and a bare close (not one byte) on an implicit one; another address
    is not affected; closing one session frees its place."""
    with faults.gateway_factory(workdir, ports, tls_cert, "security-perip") as factory:
        gw = factory(backend_address=fake.address, frontends={"x": frontend("explicit")},
                     extra={"global": {"max_sessions_per_ip": 2}})
        cur = gw.mark()
        first = Control.implicit(gw.port, client_ctx)
        second = explicit_clear(gw.fport("x"))
        try:
            assert first.reply()[0] == 220
            # Third, explicit: 421 in clear, then close.
            with socket.create_connection((HOST, gw.fport("x")), timeout=10) as third:
                data, ended = recv_until_closed(third, timeout=10)
            assert data.startswith(b"421 ") and data.endswith(b"\r\n"), data
            assert ended in ("eof", "reset"), ended
            # Third, implicit: closed without a single byte (no alert, no 421 in clear).
            with socket.create_connection((HOST, gw.port), timeout=10) as third:
                data, ended = recv_until_closed(third, timeout=10)
            assert data == b"" and ended in ("eof", "reset"), (data[:80], ended)
            # ... also when it sends a ClientHello.
            with socket.create_connection((HOST, gw.port), timeout=10) as third:
                with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                    client_ctx.wrap_socket(third, server_hostname="localhost")
            # From another address of the host: not counted against 127.0.0.1.
            other = socket.create_connection((HOST, gw.port), timeout=10,
                                             source_address=("127.0.0.2", 0))
            with client_ctx.wrap_socket(other, server_hostname="localhost") as tls:
                assert tls.recv(4096).startswith(b"220")
            log = cur.text()
            assert len(re.findall(r'event=session_refused peer=127\.0\.0\.1:\d+ '
                                  r'reason="max_sessions_per_ip reached"', log)) >= 3, log
        finally:
            first.close()
            second.close()
        # A place is free again once a session has ended.
        time.sleep(0.5)
        c = Control.implicit(gw.port, client_ctx)
        try:
            assert c.reply()[0] == 220
        finally:
            c.close()


def test_three_failed_logins_end_the_session(sgw, cur, client_ctx):
    c = Control.implicit(sgw.fport("ff"), client_ctx)
    try:
        sid = cur.sid(c.sock.getsockname()[1])
        assert c.reply()[0] == 220
        codes = []
        for i in range(3):
            assert c.cmd("USER someone")[0] == 331
            code, text = c.cmd(f"PASS {CANARY}-f{i}")
            codes.append(code)
        assert codes == [530, 530, 421], codes
        assert c.closed_by_peer(), "the session stayed open after 421"
    finally:
        c.close()
    lines = cur.ended(sid)
    assert any('event=session_close reason="3 failed logins"' in l for l in lines), lines
    assert sum("event=login_failed" in l for l in lines) == 3, lines


@pytest.mark.serial  # timing: other sessions answered within 0.5 s
def test_failed_pass_reply_is_delayed(sgw, cur, client_ctx, fake):
    """The fake backend answers 530 at once; the client gets it only after ~1 s. A correct
    password is not delayed, and other sessions are served during the delay."""
    c = Control.implicit(sgw.fport("ff"), client_ctx)
    other = Control.implicit(sgw.fport("ff"), client_ctx)
    try:
        assert c.reply()[0] == 220 and other.reply()[0] == 220
        assert c.cmd("USER someone")[0] == 331
        start = time.monotonic()
        c.send(f"PASS {CANARY}-slow\r\n".encode())
        # Meanwhile another session is answered at once.
        t0 = time.monotonic()
        assert other.cmd("NOOP")[0] == 200
        other_took = time.monotonic() - t0
        code, text = c.reply()
        took = time.monotonic() - start
        assert code == 530, text
        assert took >= 0.9, f"failed PASS answered after {took:.2f} s"
        assert took < 5, f"failed PASS answered after {took:.2f} s"
        assert other_took < 0.5, f"another session waited {other_took:.2f} s during the delay"
        assert c.cmd("USER someone")[0] == 331
        start = time.monotonic()
        assert c.cmd(f"PASS {FAKE_PASSWORD}")[0] == 230
        assert time.monotonic() - start < 0.5, "a successful PASS was delayed"
    finally:
        c.close()
        other.close()
