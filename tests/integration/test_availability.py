"""Availability (issue 18, item 8): one backend's brief refusals never take the gateway down
for everyone.

- A backend that greets with 421 (pyftpdlib at max_cons) is busy, not dead: the extra
  clients get 421, it is not counted toward health_fall, and the next client is served.
- With two backends, a session greeted 421 by one fails over to the other.
- Session connects that fail (closed before the greeting) never mark the last backend of a
  frontend down by themselves: a probe is started at once, and it decides.
- Silent TCP connections to an explicit frontend open at most prelogin_backend_per_ip /
  prelogin_backend_max backend connections; the others are greeted by the gateway and
  connect at USER.

Real peers: pyftpdlib (its log counts the sessions it opened), ftplib, a relay in this
process that drops its first connections before pyftpdlib's greeting, and a socket server
that greets 421."""

from __future__ import annotations

import ftplib
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

import fakeftp
import peers
from fakeftp import FakeFTP, Plan
from peers import HOST, frontend, wait_for

# Probes slow enough that a short burst cannot fill health_fall with bad probes, fast
# enough that a confirmation probe is seen within the test.
PROBES = {"health_interval": 3, "health_timeout": 2, "health_rise": 1, "health_fall": 3}


def metric(gw, name: str, **labels) -> float:
    """One series of the gateway's /metrics (admin_listen from with_admin)."""
    with urllib.request.urlopen(f"http://{HOST}:{gw.admin_port}/metrics", timeout=10) as r:
        values = peers.metric_series(r.read().decode(), name, **labels)
    assert values, f"no {name}{labels} in /metrics"
    return values[0]


def with_admin(ports, extra: dict | None = None) -> tuple[dict, int]:
    extra = {k: dict(v) for k, v in (extra or {}).items()}
    port = ports.port()
    extra.setdefault("global", {})["admin_listen"] = f"{HOST}:{port}"
    return extra, port


def served(gw, port: int, user: str, password: str) -> None:
    """A client that logs in on the plain frontend and lists: it must work."""
    ftp = ftplib.FTP(timeout=15)
    try:
        ftp.connect(HOST, port)
        ftp.login(user, password)
        ftp.nlst()
        ftp.quit()
    finally:
        ftp.close()


@pytest.fixture
def full_pyftpdlib(workdir, ports, test_user, request):
    """pyftpdlib with max_cons = 4 (its listener counts as one: three sessions at a time)."""
    be = peers.start_pyftpdlib(workdir / f"avail-{request.node.name}", ports, *test_user,
                               max_cons=4)
    yield be
    be.stop()


@pytest.fixture
def plain_pyftpdlib(workdir, ports, test_user, request):
    be = peers.start_pyftpdlib(workdir / f"avail-{request.node.name}", ports, *test_user)
    yield be
    be.stop()


def test_max_cons_burst_never_takes_the_frontend_down(gateway, full_pyftpdlib, test_user,
                                                      ports):
    """Ten clients at once on a backend that takes three: the extra ones get 421 (the
    backend's refusal, named busy), none of it counts toward health_fall (three in a row
    marked the only backend down before), and a client right after is served."""
    extra, admin = with_admin(ports)
    gw = gateway(full_pyftpdlib, backend_keys=PROBES, extra=extra,
                 frontends={"p": frontend("plain")})
    gw.admin_port = admin
    gw.started()
    user, password = test_user
    barrier = threading.Barrier(10)

    def one(_):
        ftp = ftplib.FTP(timeout=20)
        try:
            barrier.wait(10)
            ftp.connect(HOST, gw.fport("p"))
            ftp.login(user, password)
            time.sleep(1.5)  # hold the place: the others arrive while the backend is full
            ftp.quit()
            return "ok"
        except ftplib.error_temp as e:
            return str(e)
        finally:
            ftp.close()

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, range(10)))
    refused = [r for r in results if r != "ok"]
    assert results.count("ok") >= 1, results
    assert len(refused) >= 3, results  # three in a row would have marked it down
    time.sleep(0.5)  # pyftpdlib has closed the sessions that quit
    served(gw, gw.fport("p"), user, password)
    assert not gw.mark(0).grep(r"event=backend_down |event=frontend_unavailable "), gw.log[-4000:]
    assert all(r.startswith("421") and "busy" in r for r in refused), results
    assert len(gw.mark(0).grep(r"event=backend_busy backend=be code=421")) >= len(refused)
    time.sleep(PROBES["health_interval"] + 1)  # a probe after the burst: still up
    served(gw, gw.fport("p"), user, password)
    assert not gw.mark(0).grep(r"event=backend_down |event=frontend_unavailable "), gw.log[-4000:]
    assert metric(gw, "ftpsgate_backend_up", backend="be") == 1
    assert metric(gw, "ftpsgate_backend_connects_total", backend="be",
                  result="busy") == len(refused)


def test_busy_greeting_fails_over(gateway, plain_pyftpdlib, test_user, ports):
    """Two backends, one full (421 greeting): every client is served by the other, the
    busy one is never marked down by the sessions it refused."""
    busy = FakeFTP(Plan(greeting="421 There are too many connected users, please try later.",
                        then="close"))  # a full vsftpd
    try:
        # Probes on, but only the start-up one within the test: it finds the 421 (one bad
        # probe of three); the sessions' 421s must not add the other two.
        extra, admin = with_admin(ports, {
            "backend busy": {"address": f"{HOST}:{busy.port}", "tls": "none",
                             "health_interval": 60, "health_fall": 3},
            "frontend fe": {"backend": "busy, be"}})
        gw = gateway(plain_pyftpdlib, extra=extra,
                     frontends={"p": frontend("plain", backend="busy, be")})
        gw.admin_port = admin
        wait_for(lambda: busy.accepts >= 1, 10, "the start-up probe")
        time.sleep(0.3)
        probes = busy.accepts
        for _ in range(6):  # roundrobin: every other session starts on the busy one
            ftp = ftplib.FTP(timeout=15)
            try:
                ftp.connect(HOST, gw.fport("p"))
                assert ftp.welcome.startswith("220 "), ftp.welcome
                ftp.login(*test_user)
                ftp.quit()
            finally:
                ftp.close()
        assert busy.accepts - probes >= 3
        failovers = gw.mark(0).grep(r"event=backend_failover from=busy reason=\"backend busy "
                                    r"\(greeted 421\)\" to=be")
        assert len(failovers) == busy.accepts - probes, gw.log[-4000:]
        assert not gw.mark(0).grep(r"event=backend_down ")
        assert metric(gw, "ftpsgate_backend_up", backend="busy") == 1
        assert metric(gw, "ftpsgate_backend_connects_total", backend="busy",
                      result="busy") == len(failovers)
        assert metric(gw, "ftpsgate_backend_connects_total", backend="busy",
                      result="failed") == 0
    finally:
        busy.close()


def test_session_failures_alone_never_mark_the_last_backend_down(gateway, plain_pyftpdlib,
                                                                  test_user):
    """The only backend drops three connections before its greeting, then is fine again:
    with health_fall = 3 the third failure starts a probe (event=backend_suspect), the
    probe finds it alive, nothing is marked down, the next client is served."""
    relay = FakeFTP(fakeftp.relay(plain_pyftpdlib.port))
    try:
        keys = {**PROBES, "health_interval": 60}  # no routine probe within the test
        gw = gateway(backend_address=f"{HOST}:{relay.port}", backend_keys=keys,
                     frontends={"p": frontend("plain")})
        wait_for(lambda: plain_pyftpdlib.connections() >= 1, 10, "the start-up probe")
        time.sleep(0.3)
        for _ in range(3):  # a backend that briefly fails: closed before a byte
            relay.queue("close")
        for _ in range(3):
            ctl = peers.Control.plain(gw.fport("p"))
            try:
                code, text = ctl.reply()
                assert code == 421, text
            finally:
                ctl.sock.close()
        time.sleep(1)  # the confirmation probe's time
        served(gw, gw.fport("p"), *test_user)
        assert not gw.mark(0).grep(r"event=backend_down |event=frontend_unavailable "), gw.log[-4000:]
        assert gw.mark(0).grep(r"event=backend_suspect backend=be ")
        assert relay.accepts >= 5  # start-up probe, three sessions, the confirmation probe
    finally:
        relay.close()


@pytest.mark.parametrize("bound,workers", [
    ({"prelogin_backend_per_ip": 5, "prelogin_backend_max": 0}, 1),
    ({"prelogin_backend_per_ip": 0, "prelogin_backend_max": 7}, 1),
    ({"prelogin_backend_per_ip": 6, "prelogin_backend_max": 0}, 2),
], ids=["per_ip", "max", "per_ip-2-workers"])
def test_silent_connections_open_bounded_backend_connections(gateway, plain_pyftpdlib,
                                                             test_user, client_ctx, bound,
                                                             workers):
    """200 TCP connections that never send a command: at most the bound of them reach the
    backend (counted over all workers); the rest are greeted by the gateway. A real client
    still logs in and works while they are held, and once they are gone a new connection
    is relayed again."""
    limit = max(bound.values())
    gw = gateway(plain_pyftpdlib,
                 extra={"global": {"max_sessions_per_ip": 1000, "workers": workers}},
                 frontends={"x": frontend("explicit", **bound)})
    before = plain_pyftpdlib.connections()
    banner = "220 " + plain_pyftpdlib.banner
    held, greetings = [], []
    try:
        for _ in range(200):
            c = peers.Control.plain(gw.fport("x"))
            held.append(c)
            greetings.append(c.reply())
        assert all(code == 220 for code, _ in greetings), greetings[:5]
        relayed = sum(1 for _, text in greetings if text.startswith(banner))
        assert relayed == limit, (relayed, greetings[:limit + 2])
        assert len(gw.mark(0).grep(r"event=prelogin_deferred frontend=x ")) == 200 - limit
        time.sleep(0.5)
        assert plain_pyftpdlib.connections() - before == limit

        # A client over the bound: connected at USER, works as through `greeting`.
        ftp = peers.ExplicitFTPS(context=client_ctx, timeout=15)
        try:
            ftp.connect(HOST, gw.fport("x"))
            assert ftp.welcome == "220 FTP gateway ready", ftp.welcome
            ftp.auth()
            ftp.login(*test_user)
            ftp.prot_p()
            ftp.nlst()
            ftp.quit()
        finally:
            ftp.close()
        assert plain_pyftpdlib.connections() - before == limit + 1
    finally:
        for c in held:
            c.sock.close()
    # Their places are given back: the next silent connection reaches the backend again.
    gw.mark(0).wait("event=session_end", 15, n=201)
    c = peers.Control.plain(gw.fport("x"))
    try:
        code, text = c.reply()
        assert text.startswith(banner), text
    finally:
        c.sock.close()


def test_descriptor_limit_is_not_the_backends_fault(gateway, plain_pyftpdlib, test_user):
    """The gateway at its own descriptor limit (RLIMIT_NOFILE lowered under it): the
    client's connection is accepted, the backend socket cannot be made (EMFILE). That
    client gets 421 naming the gateway; neither backend is counted a failure (health_fall
    = 1 would have marked both down) nor tried in turn; once descriptors are back, the
    next client is served."""
    addr = plain_pyftpdlib.address
    extra = {"backend b2": {"address": addr, "tls": "none", "health_interval": 60,
                            "health_fall": 1},
             "frontend fe": {"backend": "be, b2"}}
    gw = gateway(plain_pyftpdlib, extra=extra,
                 backend_keys={"health_interval": 60, "health_fall": 1},
                 frontends={"p": frontend("plain", backend="be, b2")})
    wait_for(lambda: plain_pyftpdlib.connections() >= 2, 10, "the start-up probes")
    n = gw.settled_fd_count()
    soft = subprocess.run(["prlimit", f"--pid={gw.pid}", "--nofile", "--noheadings",
                           "--output=SOFT"], check=True, capture_output=True,
                          text=True).stdout.strip()
    subprocess.run(["prlimit", f"--pid={gw.pid}", f"--nofile={n + 1}:"], check=True)
    try:
        ctl = peers.Control.plain(gw.fport("p"))
        try:
            code, text = ctl.reply()
            assert code == 421 and "gateway is short of resources" in text, text
        finally:
            ctl.sock.close()
    finally:
        subprocess.run(["prlimit", f"--pid={gw.pid}", f"--nofile={soft}:"], check=True)
    assert gw.mark(0).grep(r"event=backend_connect_failed .* side=gateway")
    assert not gw.mark(0).grep(r"event=backend_failover |event=backend_down "), gw.log[-4000:]
    served(gw, gw.fport("p"), *test_user)


def test_implicit_bound_applies_after_the_handshake(gateway, plain_pyftpdlib, client_ctx):
    """Implicit frontends connect the backend after the TLS handshake; past the bound the
    session gets the gateway's greeting inside TLS instead."""
    gw = gateway(plain_pyftpdlib, extra={"frontend fe": {"prelogin_backend_per_ip": 2}})
    held = []
    try:
        for _ in range(4):
            held.append(peers.Control.implicit(gw.port, client_ctx))
        texts = [c.reply()[1] for c in held]
    finally:
        for c in held:
            c.sock.close()
    assert texts[:2] == ["220 " + plain_pyftpdlib.banner] * 2, texts
    assert texts[2:] == ["220 FTP gateway ready"] * 2, texts
    assert plain_pyftpdlib.connections() == 2
