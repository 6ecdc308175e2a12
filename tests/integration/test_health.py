"""Backend health probes ([backend] health_interval, health_timeout, health_rise,
health_fall): a backend that stops answering is marked down after health_fall bad probes
(with the reason: refused, timeout, the greeting's code, TLS), up again after health_rise
good ones; a frontend whose backends are all down is logged unavailable once, and available
once when one comes back. health_interval = 0 probes nothing and never marks a backend down.
A reload keeps the state of a backend whose name and address stay, and starts a changed one
up. Probes cancelled by a reload leave no descriptor behind.

The peers are real: pyftpdlib, vsftpd with implicit TLS, and tiny socket servers in this
process for the odd backends (one that never greets, one that greets 421)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import threading
import time

import pytest

import peers
from peers import HOST, backend_tls, wait_for

FAST = {"health_interval": 1, "health_timeout": 1, "health_rise": 2, "health_fall": 2}
# interval * fall + timeout, and slack for a loaded machine.
DOWN_WITHIN = 1 * 2 + 1 + 4


class TinyServer:
    """A TCP server on loopback that counts accepted connections and answers each with
    `greeting` (None: says nothing and keeps the connection open until the peer closes)."""

    def __init__(self, greeting: bytes | None, port: int = 0, close_after: bool = False):
        self.greeting, self.close_after = greeting, close_after
        self.accepts = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _run(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepts += 1
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket):
        try:
            if self.greeting is not None:
                c.sendall(self.greeting)
                if self.close_after:
                    return
            c.settimeout(30)
            while not self.stopped:
                data = c.recv(4096)
                if not data:
                    return
                if b"QUIT" in data:
                    c.sendall(b"221 bye\r\n")
                    return
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.stopped = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        self.sock.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(5)


@pytest.fixture
def servers():
    made: list[TinyServer] = []

    def make(*args, **kw) -> TinyServer:
        s = TinyServer(*args, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def lines(gw, offset: int, pattern: str) -> list[str]:
    return [l for l in gw.log_since(offset, max_lines=100000).splitlines()
            if re.search(pattern, l)]


def wait_line(gw, offset: int, pattern: str, timeout: float) -> str:
    try:
        return wait_for(lambda: (lines(gw, offset, pattern) or [None])[0], timeout,
                        f"a log line matching {pattern!r}")
    except TimeoutError:
        raise AssertionError(f"no log line matches {pattern!r} within {timeout} s:\n"
                             f"{gw.log_since(offset)[-6000:]}") from None


def started(gw):
    wait_for(lambda: "event=started " in gw.log, 30, "the started line")
    return gw


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


def reload(gw, offset: int, **replace: str) -> None:
    """Rewrite the configuration (each key's old text -> new) and SIGHUP; wait for worker
    0's reload line."""
    text = gw.config.read_text()
    for old, new in replace.items():
        assert old in text, (old, text)
        text = text.replace(old, new)
    gw.config.write_text(text)
    os.kill(gw.pid, signal.SIGHUP)
    wait_line(gw, offset, r"event=reloaded worker=0", 10)


# ---------------------------------------------------------------------------------------
# (a) + (b): a real backend stops and comes back


def test_backend_down_and_up(gateway, workdir, ports, test_user, servers):
    be = peers.start_pyftpdlib(workdir / "health-pyftpdlib", ports, *test_user)
    try:
        gw = started(gateway(be, backend_keys=FAST))
        time.sleep(2.5)  # a few good probes: nothing is logged while the state holds
        assert not lines(gw, 0, r"event=backend_(down|up)|event=frontend_"), gw.log[-3000:]
        assert be.connections() >= 2  # the probes reached pyftpdlib
    finally:
        be.stop()
    offset = gw.log_size()
    t0 = time.monotonic()
    down = wait_line(gw, offset, r"event=backend_down backend=be ", DOWN_WITHIN)
    assert time.monotonic() - t0 < DOWN_WITHIN
    assert re.search(r'reason="connect refused"', down), down
    wait_line(gw, offset, r"event=frontend_unavailable frontend=fe", 5)
    for _ in range(3):
        try_client(gw)  # clients do not log the transition again
    time.sleep(2.5)  # more bad probes: no more transitions
    assert len(lines(gw, offset, r"event=backend_down ")) == 1
    assert len(lines(gw, offset, r"event=frontend_unavailable ")) == 1

    # Back on the same port: up after health_rise good probes, the frontend available.
    offset = gw.log_size()
    again = servers(b"220 back again\r\n", port=be.port)
    wait_line(gw, offset, r"event=backend_up backend=be ", 2 * 1 + 5)
    wait_line(gw, offset, r"event=frontend_available frontend=fe", 5)
    assert again.accepts >= 2
    time.sleep(1.5)
    assert len(lines(gw, offset, r"event=backend_up ")) == 1
    assert len(lines(gw, offset, r"event=frontend_available ")) == 1
    assert not lines(gw, offset, r"event=backend_down ")


# ---------------------------------------------------------------------------------------
# (c), (d): odd greetings


def test_never_greets_is_a_timeout(gateway, servers):
    silent = servers(None)
    gw = started(gateway(backend_address=silent.address, backend_keys=FAST))
    down = wait_line(gw, 0, r"event=backend_down backend=be ", DOWN_WITHIN + 2)
    assert 'reason="timeout after 1 s"' in down, down
    wait_line(gw, 0, r"event=frontend_unavailable frontend=fe", 5)


def test_greets_421(gateway, servers):
    busy = servers(b"421 Too many users, try later\r\n", close_after=True)
    gw = started(gateway(backend_address=busy.address, backend_keys=FAST))
    down = wait_line(gw, 0, r"event=backend_down backend=be ", DOWN_WITHIN)
    assert 'reason="greeted 421"' in down, down


def test_multiline_220_is_good(gateway, servers):
    """A greeting in several lines (and a 120 first) is one good probe."""
    chatty = servers(b"120 in a moment\r\n220-Welcome\r\n220-to the\r\n220 server\r\n")
    gw = started(gateway(backend_address=chatty.address, backend_keys=FAST))
    wait_for(lambda: chatty.accepts >= 3, 10, "three probes")
    assert not lines(gw, 0, r"event=backend_down ")


# ---------------------------------------------------------------------------------------
# (e): health_interval = 0


def test_interval_zero_probes_nothing(gateway, servers):
    busy = servers(b"421 go away\r\n", close_after=True)
    gw = started(gateway(backend_address=busy.address,
                         backend_keys={**FAST, "health_interval": 0}))
    time.sleep(3.5)
    assert busy.accepts == 0
    assert not lines(gw, 0, r"event=backend_down |event=frontend_unavailable ")


# ---------------------------------------------------------------------------------------
# (f): reload


def test_reload_keeps_down_and_changed_address_starts_up(gateway, ports, servers):
    dead = ports.port()  # nothing listens: refused
    gw = started(gateway(backend_address=f"{HOST}:{dead}", backend_keys=FAST))
    wait_line(gw, 0, r"event=backend_down backend=be .*reason=\"connect refused\"", DOWN_WITHIN)
    wait_line(gw, 0, r"event=frontend_unavailable frontend=fe", 5)

    # Same name and address (another key changed): still down, nothing logged again.
    offset = gw.log_size()
    reload(gw, offset, **{"login_timeout = 30": "login_timeout = 31"})
    time.sleep(3)
    assert not lines(gw, offset, r"event=backend_(up|down) |event=frontend_"), \
        gw.log_since(offset)

    # A changed address is a new backend: it starts up, the frontend is available.
    good = servers(b"220 fresh\r\n")
    offset = gw.log_size()
    reload(gw, offset, **{f"address = {HOST}:{dead}": f"address = {good.address}"})
    wait_line(gw, offset, r"event=frontend_available frontend=fe", 5)
    wait_for(lambda: good.accepts >= 2, 10, "probes of the new address")
    assert not lines(gw, offset, r"event=backend_down |event=frontend_unavailable ")


# ---------------------------------------------------------------------------------------
# (g): probes cancelled by a reload leave no descriptor behind


def test_cancelled_probes_leave_no_descriptors(gateway, ports, servers):
    silent = servers(None)
    gw = started(gateway(backend_address=silent.address,
                         backend_keys={**FAST, "health_timeout": 3, "health_interval": 0}))
    base = gw.settled_fd_count()
    offset = gw.log_size()
    reload(gw, offset, **{"health_interval = 0": "health_interval = 1"})
    wait_for(lambda: silent.accepts >= 2, 10, "probes")  # each hangs until its timeout
    assert gw.fd_count() > base  # a probe is open right now
    offset = gw.log_size()
    reload(gw, offset, **{"health_interval = 1": "health_interval = 0"})
    assert gw.wait_fd_count(base, 5) == base, sorted(os.listdir(f"/proc/{gw.pid}/fd"))
    n = silent.accepts
    time.sleep(2)
    assert silent.accepts == n  # the timer stopped too


# ---------------------------------------------------------------------------------------
# Implicit TLS backends


def test_implicit_tls_probe(gateway, vsftpd_implicit):
    before = vsftpd_implicit.connections()
    gw = started(gateway(vsftpd_implicit, backend_keys=backend_tls(
        "implicit", ca_file=vsftpd_implicit.cert, **FAST)))
    wait_for(lambda: vsftpd_implicit.connections() - before >= 3, 15, "three TLS probes")
    assert not lines(gw, 0, r"event=backend_down ")


def test_implicit_tls_probe_untrusted(gateway, vsftpd_implicit, tls_cert):
    """The probe checks the certificate as sessions do: the wrong CA is a bad probe."""
    gw = started(gateway(vsftpd_implicit, backend_keys=backend_tls(
        "implicit", ca_file=tls_cert[0], **FAST)))
    down = wait_line(gw, 0, r"event=backend_down backend=be ", DOWN_WITHIN)
    assert 'reason="TLS handshake failed' in down, down


def test_backend_by_name(gateway, servers):
    """A host name is resolved for every probe, as for every session."""
    busy = servers(b"421 not today\r\n", close_after=True)
    gw = started(gateway(backend_address=f"localhost:{busy.port}", backend_keys=FAST))
    down = wait_line(gw, 0, r"event=backend_down backend=be ", DOWN_WITHIN)
    assert 'reason="greeted 421"' in down, down
