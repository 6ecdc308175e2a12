"""The ban list ([global] ban_after, ban_window, ban_time, ban_exempt; config/README.md "Ban
list"): failed logins (the backend's 530 to PASS) are counted per client address across
sessions and workers; a banned address gets 421 in clear on explicit and plain frontends
and a bare close on implicit ones, before any backend connection; bans expire; exempt
networks are never banned; one `event=ban` line per ban, matched by the fail2ban filter in
config/. Real clients (Python ftplib, curl) against a real server (pyftpdlib, its own
failed-login delay turned off so that only the gateway's 1 s remains); several client
hosts are 127.0.0.x source addresses."""

from __future__ import annotations

import ftplib
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import peers
from peers import HOST, curl, frontend, recv_until_closed, sha256_file

REPO = Path(__file__).resolve().parents[2]
BANNED = "421 Too many failed logins from your address, try again later."


@pytest.fixture(scope="module")
def server(workdir, ports, test_user):
    """pyftpdlib without its own 3 s delay after a failed login."""
    b = peers.start_pyftpdlib(workdir / "ban-pyftpdlib", ports, *test_user,
                              extra="handler.auth_failed_timeout = 0")
    yield b
    b.stop()


def start(gateway, server, **glob):
    """fe implicit, x explicit, p plain; glob: [global] keys."""
    gw = gateway(server, frontends={"x": frontend("explicit"), "p": frontend("plain")},
                 extra={"global": {"max_sessions_per_ip": 500, **glob}})
    gw.started()
    return gw


def explicit(gw, src: str, ctx) -> ftplib.FTP_TLS:
    """An explicit FTPS ftplib connection from source address src, TLS up, not logged in."""
    ftp = ftplib.FTP_TLS(context=ctx, timeout=15)
    ftp.connect(HOST, gw.fport("x"), source_address=(src, 0))
    ftp.auth()
    return ftp


def attempt(ftp: ftplib.FTP, user: str, password: str) -> str:
    """USER/PASS; the reply to PASS ("230 ...", "530 ...", "421 ...")."""
    try:
        return ftp.login(user, password)
    except (ftplib.error_perm, ftplib.error_temp) as e:
        return str(e)


def fail_once(gw, src, ctx, user) -> str:
    """A new session from src that fails one login and quits (unless it was closed)."""
    ftp = explicit(gw, src, ctx)
    try:
        reply = attempt(ftp, user, "wrong-password")
        if reply.startswith("530"):
            ftp.quit()
        return reply
    finally:
        ftp.close()


def refused_in_clear(port: int, src: str) -> bytes:
    with socket.create_connection((HOST, port), timeout=10, source_address=(src, 0)) as s:
        data, ended = recv_until_closed(s, timeout=10)
    assert ended in ("eof", "reset"), (data, ended)
    return data


def assert_refused(gw, src: str, client_ctx) -> None:
    """Explicit and plain: 421 in clear then close; implicit: not one byte."""
    for name in ("x", "p"):
        assert refused_in_clear(gw.fport(name), src) == (BANNED + "\r\n").encode()
    with socket.create_connection((HOST, gw.port), timeout=10, source_address=(src, 0)) as s:
        data, ended = recv_until_closed(s, timeout=10)
    assert data == b"" and ended in ("eof", "reset"), (data, ended)
    # ftplib sees the 421 as the greeting
    with pytest.raises(ftplib.error_temp, match="^421 Too many failed logins from your"):
        ftplib.FTP().connect(HOST, gw.fport("p"), timeout=10, source_address=(src, 0))


def test_ban_after_failures_and_another_address_works(gateway, server, test_user, client_ctx,
                                                      tmp_path, blobs, ports):
    """ban_after = 3 from 127.0.0.2, spread over three sessions with a successful login in
    between (which does not reset the count): the third failure ends its session with the
    ban's 421, then every frontend refuses 127.0.0.2 before the backend hears of it, while
    127.0.0.3 logs in and downloads. The ban is logged once, survives SIGHUP, and the
    fail2ban filter in config/ matches its line."""
    user, password = test_user
    admin = ports.port()
    gw = start(gateway, server, ban_after=3, ban_window=60, ban_time=60,
               admin_listen=f"{HOST}:{admin}")
    cur = gw.mark()
    ftp = explicit(gw, "127.0.0.2", client_ctx)
    try:
        assert attempt(ftp, user, "wrong-1").startswith("530")
        assert attempt(ftp, user, "wrong-2").startswith("530")
        ftp.quit()
    finally:
        ftp.close()
    with peers.ftplib_explicit_session(gw.fport("x"), user, password, client_ctx) as ok:
        ok.voidcmd("NOOP")  # 230: the count is not reset
    # (that session came from 127.0.0.1; log in from 127.0.0.2 itself too)
    ftp = explicit(gw, "127.0.0.2", client_ctx)
    try:
        assert attempt(ftp, user, password).startswith("230")
        ftp.quit()
    finally:
        ftp.close()
    assert "event=ban " not in cur.text()
    assert fail_once(gw, "127.0.0.2", client_ctx, user) == BANNED
    line = cur.wait(r"event=ban ").string
    assert re.search(r"level=warn session=\d+ event=ban peer=127\.0\.0\.2 failures=3 "
                     r"ban_time=60$", line), line

    before = server.connections()
    assert_refused(gw, "127.0.0.2", client_ctx)
    # Another address of the host is served: an implicit FTPS download with curl.
    digest = server.put(blobs, "ban-ok.bin", 256 * 1024, unique=True)
    got = tmp_path / "got.bin"
    peers.check(curl("--interface", "127.0.0.3", "-o", got,
                     gw.url("ban-ok.bin", user, password)))
    assert sha256_file(got) == digest
    # Only 127.0.0.3's session reached the backend.
    time.sleep(0.3)
    assert server.connections() == before + 1, (before, server.connections())
    log = cur.text()
    assert len(re.findall(r"event=ban ", log)) == 1, log
    assert len(re.findall(r"event=session_refused peer=127\.0\.0\.2:\d+ reason=banned", log)) >= 4
    # The admin endpoint counts it: one ban in all, one in force.
    with urllib.request.urlopen(f"http://{HOST}:{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert re.search(r"^ftpsgate_bans_total 1$", text, re.M), text
    assert re.search(r"^ftpsgate_bans_active 1$", text, re.M), text

    # SIGHUP keeps the ban.
    reload_at = gw.mark()
    gw.proc.send_signal(signal.SIGHUP)
    reload_at.wait(r"event=reload")
    assert refused_in_clear(gw.fport("x"), "127.0.0.2").startswith(b"421 Too many failed")

    # fail2ban's own tool matches the ban line (and only it) with the shipped filter.
    if shutil.which("fail2ban-regex"):
        res = subprocess.run(["fail2ban-regex", str(gw.log_path),
                              str(REPO / "config" / "fail2ban-ftpsgate.conf")],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        assert re.search(r"Lines: \d+ lines, 0 ignored, 1 matched", res.stdout), res.stdout


def test_ban_expires(gateway, server, test_user, client_ctx):
    """ban_time = 2: refused at once, served again after it, `event=ban_expired` logged."""
    user, password = test_user
    gw = start(gateway, server, ban_after=2, ban_time=2)
    cur = gw.mark()
    assert fail_once(gw, "127.0.0.4", client_ctx, user).startswith("530")
    t0 = time.monotonic()
    assert fail_once(gw, "127.0.0.4", client_ctx, user) == BANNED
    assert refused_in_clear(gw.fport("p"), "127.0.0.4").startswith(b"421 Too many failed")
    cur.wait(r"event=ban_expired peer=127\.0\.0\.4$", 6)
    assert time.monotonic() - t0 >= 1.5
    ftp = explicit(gw, "127.0.0.4", client_ctx)
    try:
        assert attempt(ftp, user, password).startswith("230")
        ftp.quit()
    finally:
        ftp.close()
    # after the ban the count starts from zero: one failure is not a ban
    assert fail_once(gw, "127.0.0.4", client_ctx, user).startswith("530")


def test_ban_exempt(gateway, server, test_user, client_ctx):
    """ban_after = 1: 127.0.0.5 (in ban_exempt) is never banned, 127.0.0.6 at once."""
    user, password = test_user
    gw = start(gateway, server, ban_after=1, ban_exempt="127.0.0.5/32, 10.0.0.0/8")
    cur = gw.mark()
    for _ in range(3):
        assert fail_once(gw, "127.0.0.5", client_ctx, user).startswith("530")
    ftp = explicit(gw, "127.0.0.5", client_ctx)
    try:
        assert attempt(ftp, user, password).startswith("230")
        ftp.quit()
    finally:
        ftp.close()
    assert fail_once(gw, "127.0.0.6", client_ctx, user) == BANNED
    assert_refused(gw, "127.0.0.6", client_ctx)
    log = cur.text()
    assert "peer=127.0.0.5" not in " ".join(re.findall(r"event=ban .*", log)), log
    assert len(re.findall(r"event=ban peer=127\.0\.0\.6 failures=1 ", log)) == 1, log


def test_ban_across_workers(gateway, server, test_user, client_ctx):
    """workers = 2, ban_after = 4: one session of 127.0.0.7 on each worker, two failures
    each (under the per-session three); the fourth bans, and both workers refuse then."""
    user, _ = test_user
    gw = start(gateway, server, workers=2, ban_after=4)
    cur = gw.mark()
    held: dict[str, ftplib.FTP_TLS] = {}
    spare = []
    try:
        for _ in range(40):
            ftp = explicit(gw, "127.0.0.7", client_ctx)
            port = ftp.sock.getsockname()[1]
            worker = cur.wait(rf"event=session_start frontend=x peer=127\.0\.0\.7:{port} "
                              r".*worker=(\d+)").group(1)
            if worker in held:
                spare.append(ftp)
            else:
                held[worker] = ftp
            if len(held) == 2:
                break
        assert set(held) == {"0", "1"}, "40 connections, all on one worker"
        for ftp in spare:
            ftp.quit()
            ftp.close()
        spare = []
        replies = []
        for worker in ("0", "1", "0", "1"):
            replies.append(attempt(held[worker], user, f"wrong-{worker}"))
        assert [r[:3] for r in replies] == ["530", "530", "530", "421"], replies
        assert replies[3] == BANNED
    finally:
        for ftp in [*held.values(), *spare]:
            ftp.close()
    log = cur.text()
    sessions = {m.group(1): m.group(2) for m in re.finditer(
        r"session=(\d+) event=session_start frontend=x peer=127\.0\.0\.7:\d+ worker=(\d+)", log)}
    failed = set(re.findall(r"session=(\d+) event=login_failed", log))
    assert {sessions[s] for s in failed} == {"0", "1"}, log
    assert len(re.findall(r"event=ban peer=127\.0\.0\.7 failures=4 ", log)) == 1, log
    # Both workers refuse it now.
    for _ in range(12):
        assert refused_in_clear(gw.fport("x"), "127.0.0.7").startswith(b"421 Too many failed")
    refusers = set(re.findall(r"event=session_refused peer=127\.0\.0\.7:\d+ reason=banned "
                              r"worker=(\d+)", cur.text()))
    assert refusers == {"0", "1"} or len(refusers) == 1  # (12 connections may hash alike)


def test_session_rules_stay(gateway, server, test_user, client_ctx):
    """With the ban list on (ban_after = 10), a failed PASS is still answered after ~1 s and
    the third failure of a session still ends it with 421 Too many failed logins."""
    user, _ = test_user
    gw = start(gateway, server, ban_after=10)
    ftp = explicit(gw, "127.0.0.8", client_ctx)
    try:
        t0 = time.monotonic()
        assert attempt(ftp, user, "wrong-1").startswith("530")
        assert time.monotonic() - t0 >= 0.9
        assert attempt(ftp, user, "wrong-2").startswith("530")
        assert attempt(ftp, user, "wrong-3") == "421 Too many failed logins."
    finally:
        ftp.close()
    assert "event=ban " not in gw.log
    # not banned: 3 < 10
    ftp = explicit(gw, "127.0.0.8", client_ctx)
    ftp.close()


def test_ban_off_by_default(gateway, server, test_user, client_ctx):
    """ban_after = 0 (the default): six failures from one address ban nothing."""
    user, password = test_user
    gw = start(gateway, server)
    for _ in range(2):
        ftp = explicit(gw, "127.0.0.9", client_ctx)
        try:
            for i in range(2):
                assert attempt(ftp, user, f"wrong-{i}").startswith("530")
        finally:
            ftp.close()
    ftp = explicit(gw, "127.0.0.9", client_ctx)
    try:
        assert attempt(ftp, user, password).startswith("230")
        ftp.quit()
    finally:
        ftp.close()
    assert "event=ban" not in gw.log
