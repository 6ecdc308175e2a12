"""Backend health probes ([backend] health_interval, health_timeout, health_rise,
health_fall): a backend that stops answering is marked down after health_fall bad probes
(with the reason: refused, timeout, the greeting's code, TLS), up again after health_rise
good ones; a frontend whose backends are all down is logged unavailable once, and available
once when one comes back. health_interval = 0 probes nothing and never marks a backend down.
A reload keeps the state of a backend whose name and address stay, and starts a changed one
up. Probes cancelled by a reload leave no descriptor behind.

The peers are real: pyftpdlib, vsftpd with implicit TLS, and the fake backend (fakeftp,
the `fake_ftp` fixture) for the odd ones (one that never greets, one that greets 421)."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import time

import peers
from fakeftp import Plan
from peers import HOST, backend_tls, wait_for

FAST = {"health_interval": 1, "health_timeout": 1, "health_rise": 2, "health_fall": 2}
# interval * fall + timeout, and slack for a loaded machine.
DOWN_WITHIN = 1 * 2 + 1 + 4


def try_client(gw) -> None:
    """A client on the implicit frontend; what it gets is the session side's business."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((HOST, gw.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.recv(512)
    except (OSError, ssl.SSLError):
        pass


def reload(gw, cur: peers.LogCursor, **replace: str) -> None:
    """Rewrite the configuration (each key's old text -> new) and SIGHUP; wait for worker
    0's reload line."""
    text = gw.config.read_text()
    for old, new in replace.items():
        assert old in text, (old, text)
        text = text.replace(old, new)
    gw.config.write_text(text)
    os.kill(gw.pid, signal.SIGHUP)
    cur.wait(r"event=reloaded worker=0", 10)


# ---------------------------------------------------------------------------------------
# (a) + (b): a real backend stops and comes back


def test_backend_down_and_up(gateway, workdir, ports, test_user, fake_ftp):
    be = peers.start_pyftpdlib(workdir / "health-pyftpdlib", ports, *test_user)
    try:
        gw = gateway(be, backend_keys=FAST).started()
        time.sleep(2.5)  # a few good probes: nothing is logged while the state holds
        assert not gw.mark(0).grep(r"event=backend_(down|up)|event=frontend_"), gw.log[-3000:]
        assert be.connections() >= 2  # the probes reached pyftpdlib
    finally:
        be.stop()
    cur = gw.mark()
    t0 = time.monotonic()
    down = cur.wait(r"event=backend_down backend=be ", DOWN_WITHIN).string
    assert time.monotonic() - t0 < DOWN_WITHIN
    assert re.search(r'reason="connect refused"', down), down
    cur.wait(r"event=frontend_unavailable frontend=fe", 5)
    for _ in range(3):
        try_client(gw)  # clients do not log the transition again
    time.sleep(2.5)  # more bad probes: no more transitions
    assert len(cur.grep(r"event=backend_down ")) == 1
    assert len(cur.grep(r"event=frontend_unavailable ")) == 1

    # Back on the same port: up after health_rise good probes, the frontend available.
    cur = gw.mark()
    again = fake_ftp(Plan(greeting=b"220 back again\r\n", replies={"*": None}), port=be.port)
    cur.wait(r"event=backend_up backend=be ", 2 * 1 + 5)
    cur.wait(r"event=frontend_available frontend=fe", 5)
    assert again.accepts >= 2
    time.sleep(1.5)
    assert len(cur.grep(r"event=backend_up ")) == 1
    assert len(cur.grep(r"event=frontend_available ")) == 1
    assert not cur.grep(r"event=backend_down ")


# ---------------------------------------------------------------------------------------
# (c), (d): odd greetings


def test_never_greets_is_a_timeout(gateway, fake_ftp):
    silent = fake_ftp("stall")
    gw = gateway(backend_address=silent.address, backend_keys=FAST).started()
    down = gw.mark(0).wait(r"event=backend_down backend=be ", DOWN_WITHIN + 2).string
    assert 'reason="timeout after 1 s"' in down, down
    gw.mark(0).wait(r"event=frontend_unavailable frontend=fe", 5)


def test_greets_421(gateway, fake_ftp):
    busy = fake_ftp(Plan(greeting=b"421 Too many users, try later\r\n", then="close"))
    gw = gateway(backend_address=busy.address, backend_keys=FAST).started()
    down = gw.mark(0).wait(r"event=backend_down backend=be ", DOWN_WITHIN).string
    assert 'reason="greeted 421"' in down, down


def test_multiline_220_is_good(gateway, fake_ftp):
    """A greeting in several lines (and a 120 first) is one good probe."""
    chatty = fake_ftp(Plan(greeting=b"120 in a moment\r\n220-Welcome\r\n220-to the\r\n220 server\r\n",
                           replies={"*": None}))
    gw = gateway(backend_address=chatty.address, backend_keys=FAST).started()
    wait_for(lambda: chatty.accepts >= 3, 10, "three probes")
    assert not gw.mark(0).grep(r"event=backend_down ")


# ---------------------------------------------------------------------------------------
# (e): health_interval = 0


def test_interval_zero_probes_nothing(gateway, fake_ftp):
    busy = fake_ftp(Plan(greeting=b"421 go away\r\n", then="close"))
    gw = gateway(backend_address=busy.address,
                 backend_keys={**FAST, "health_interval": 0}).started()
    time.sleep(3.5)
    assert busy.accepts == 0
    assert not gw.mark(0).grep(r"event=backend_down |event=frontend_unavailable ")


# ---------------------------------------------------------------------------------------
# (f): reload


def test_reload_keeps_down_and_changed_address_starts_up(gateway, ports, fake_ftp):
    dead = ports.port()  # nothing listens: refused
    gw = gateway(backend_address=f"{HOST}:{dead}", backend_keys=FAST).started()
    gw.mark(0).wait(r"event=backend_down backend=be .*reason=\"connect refused\"", DOWN_WITHIN)
    gw.mark(0).wait(r"event=frontend_unavailable frontend=fe", 5)

    # Same name and address (another key changed): still down, nothing logged again.
    cur = gw.mark()
    reload(gw, cur, **{"login_timeout = 30": "login_timeout = 31"})
    time.sleep(3)
    assert not cur.grep(r"event=backend_(up|down) |event=frontend_"), \
        cur.text()

    # A changed address is a new backend: it starts up, the frontend is available.
    good = fake_ftp(Plan(greeting=b"220 fresh\r\n", replies={"*": None}))
    cur = gw.mark()
    reload(gw, cur, **{f"address = {HOST}:{dead}": f"address = {good.address}"})
    cur.wait(r"event=frontend_available frontend=fe", 5)
    wait_for(lambda: good.accepts >= 2, 10, "probes of the new address")
    assert not cur.grep(r"event=backend_down |event=frontend_unavailable ")


# ---------------------------------------------------------------------------------------
# (g): probes cancelled by a reload leave no descriptor behind


def test_cancelled_probes_leave_no_descriptors(gateway, ports, fake_ftp):
    silent = fake_ftp("stall")
    gw = gateway(backend_address=silent.address,
                 backend_keys={**FAST, "health_timeout": 3, "health_interval": 0}).started()
    base = gw.settled_fd_count()
    cur = gw.mark()
    reload(gw, cur, **{"health_interval = 0": "health_interval = 1"})
    wait_for(lambda: silent.accepts >= 2, 10, "probes")  # each hangs until its timeout
    assert gw.fd_count() > base  # a probe is open right now
    cur = gw.mark()
    reload(gw, cur, **{"health_interval = 1": "health_interval = 0"})
    assert gw.wait_fd_count(base, 5) == base, sorted(os.listdir(f"/proc/{gw.pid}/fd"))
    n = silent.accepts
    time.sleep(2)
    assert silent.accepts == n  # the timer stopped too


# ---------------------------------------------------------------------------------------
# Implicit TLS backends


def test_implicit_tls_probe(gateway, vsftpd_implicit):
    before = vsftpd_implicit.connections()
    gw = gateway(vsftpd_implicit, backend_keys=backend_tls(
        "implicit", ca_file=vsftpd_implicit.cert, **FAST)).started()
    wait_for(lambda: vsftpd_implicit.connections() - before >= 3, 15, "three TLS probes")
    assert not gw.mark(0).grep(r"event=backend_down ")


def test_implicit_tls_probe_untrusted(gateway, vsftpd_implicit, tls_cert):
    """The probe checks the certificate as sessions do: the wrong CA is a bad probe."""
    gw = gateway(vsftpd_implicit, backend_keys=backend_tls(
        "implicit", ca_file=tls_cert[0], **FAST)).started()
    down = gw.mark(0).wait(r"event=backend_down backend=be ", DOWN_WITHIN).string
    assert 'reason="TLS handshake failed' in down, down


def test_backend_by_name(gateway, fake_ftp):
    """A host name is resolved for every probe, as for every session."""
    busy = fake_ftp(Plan(greeting=b"421 not today\r\n", then="close"))
    gw = gateway(backend_address=f"localhost:{busy.port}", backend_keys=FAST).started()
    down = gw.mark(0).wait(r"event=backend_down backend=be ", DOWN_WITHIN).string
    assert 'reason="greeted 421"' in down, down
