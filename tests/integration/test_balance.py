"""Several backends behind one frontend (`backend = be, b, c`): the balance policies,
max_sessions, failover before the greeting, REIN keeping the backend, and the 421 / bare
close when no backend is eligible. Three pyftpdlib servers, each with a marker file of its
own size in its root, so SIZE tells a client which backend served it."""

from __future__ import annotations

import contextlib
import os
import signal
import ftplib
import re
import socket
import ssl
import time
from collections import Counter

import pytest

import peers
from fakeftp import FakeFTP
from peers import HOST, frontend

NAMES = {1: "be", 2: "b", 3: "c"}


def start(gateway, three, *, policy="roundrobin", weights=None, max_sessions=None,
          addresses=None, mode="plain", names="be, b, c", backend_keys=None):
    """A gateway whose frontend "p" (mode) and implicit "fe" balance over be, b, c.
    `backend_keys`: merged into every [backend NAME] section (health probes, ...)."""
    addresses = addresses or {n: be.address for n, be in zip(["be", "b", "c"], three)}
    extra = {"frontend fe": {"backend": names, "balance": policy}}
    for name, addr in addresses.items():
        section = extra.setdefault(f"backend {name}", {})
        section.update({"address": addr, "tls": "none", "connect_timeout": 2})
        section.update(backend_keys or {})
        if weights and name in weights:
            section["weight"] = weights[name]
        if max_sessions and name in max_sessions:
            section["max_sessions"] = max_sessions[name]
    return gateway(backend_address=addresses["be"], extra=extra,
                   frontends={"p": frontend(mode, backend=names, balance=policy)})


def login(gw, user, password, mode="plain", source=None, ctx=None):
    if mode == "implicit":
        ftp = peers.ImplicitFTPS(context=ctx, timeout=10)
        ftp.connect(HOST, gw.port)
        ftp.login(user, password)
        return ftp
    ftp = peers.ExplicitFTPS(context=ctx, timeout=10) if mode == "explicit" else \
        ftplib.FTP(timeout=10)
    ftp.connect(HOST, gw.fport("p"), source_address=(source, 0) if source else None)
    if mode == "explicit":
        ftp.auth()
    ftp.login(user, password)
    return ftp


def which(ftp) -> str:
    ftp.voidcmd("TYPE I")
    return NAMES[ftp.size("marker")]


def served(gw, user, password, n, **kw) -> Counter:
    counts = Counter()
    for _ in range(n):
        ftp = login(gw, user, password, **kw)
        try:
            counts[which(ftp)] += 1
            ftp.quit()
        finally:
            ftp.close()
    return counts


def test_roundrobin_even(gateway, three, test_user):
    gw = start(gateway, three)
    assert served(gw, *test_user, 60) == {"be": 20, "b": 20, "c": 20}
    assert "event=backend_chosen backend=b policy=roundrobin" in gw.log


def test_roundrobin_weighted(gateway, three, test_user):
    gw = start(gateway, three, weights={"be": 3})
    assert served(gw, *test_user, 60) == {"be": 36, "b": 12, "c": 12}


def test_random_weighted_reaches_all(gateway, three, test_user):
    gw = start(gateway, three, policy="random", weights={"be": 3})
    counts = served(gw, *test_user, 60)
    assert set(counts) == {"be", "b", "c"} and counts["be"] > counts["b"], counts


def test_source_sticky(gateway, three, test_user):
    gw = start(gateway, three, policy="source")
    seen = {}
    for last in range(2, 12):
        src = f"127.0.0.{last}"
        got = {which_once(gw, test_user, src) for _ in range(3)}
        assert len(got) == 1, (src, got)
        seen[src] = got.pop()
    assert len(set(seen.values())) >= 2, seen


def which_once(gw, test_user, source):
    ftp = login(gw, *test_user, source=source)
    try:
        return which(ftp)
    finally:
        ftp.close()


def test_leastconn(gateway, three, test_user):
    gw = start(gateway, three, policy="leastconn")
    held = [login(gw, *test_user) for _ in range(3)]
    try:
        on = [which(f) for f in held]
        assert sorted(on) == ["b", "be", "c"], on
        # Two more on each but one: the next goes to the least loaded.
        more = [login(gw, *test_user) for _ in range(3)]
        held += more
        assert sorted(which(f) for f in more) == ["b", "be", "c"]
        gone = on[1]
        for f in held:
            if which(f) == gone:
                f.quit()
                f.close()
                held.remove(f)
                break
        gw.mark(0).wait("event=session_end", 5)
        nxt = login(gw, *test_user)
        held.append(nxt)
        assert which(nxt) == gone
    finally:
        for f in held:
            f.close()


def test_max_sessions_skips_full_backend(gateway, three, test_user):
    gw = start(gateway, three, max_sessions={"be": 1})
    first = login(gw, *test_user)
    try:
        assert which(first) == "be"
        counts = served(gw, *test_user, 8)
        assert "be" not in counts and counts["b"] + counts["c"] == 8, counts
    finally:
        first.quit()
        first.close()
    gw.mark(0).wait("event=session_end", 5, n=9)
    assert served(gw, *test_user, 3)["be"] == 1


def closed_port(ports) -> str:
    port = ports.port()  # allocated for us: nobody listens there
    return f"{HOST}:{port}"


@pytest.mark.parametrize("mode", ["plain", "explicit", "implicit"])
@pytest.mark.parametrize("kind", ["refused", "closes"])
def test_failover(gateway, three, test_user, ports, client_ctx, mode, kind):
    with contextlib.ExitStack() as stack:
        dead = (closed_port(ports) if kind == "refused"  # nothing listens, or it
                else stack.enter_context(FakeFTP("close")).address)  # dies before 220
        gw = start(gateway, three, mode=mode, addresses={"be": three[0].address, "b": dead,
                                                         "c": three[2].address})
        counts = Counter()
        for _ in range(9):
            ftp = login(gw, *test_user, mode=mode, ctx=client_ctx)
            try:
                assert ftp.welcome.startswith("220 "), ftp.welcome
                counts[which(ftp)] += 1
                ftp.quit()
            finally:
                ftp.close()
        assert set(counts) == {"be", "c"} and sum(counts.values()) == 9, counts
        assert re.search(r"event=backend_failover from=b reason=\"[^\"]+\" to=(be|c)", gw.log)
        assert gw.log.count("event=backend_failover") == 3


def test_all_refused_gives_421(gateway, three, test_user, ports):
    gw = start(gateway, three, addresses={"be": closed_port(ports), "b": closed_port(ports),
                                          "c": closed_port(ports)})
    ctl = peers.Control.plain(gw.fport("p"))
    try:
        code, text = ctl.reply()
        assert code == 421, text
    finally:
        ctl.close()
    assert "to=none" in gw.log


def test_none_eligible_421_or_bare_close(gateway, three, test_user, client_ctx):
    gw = start(gateway, three, max_sessions={"be": 1, "b": 1, "c": 1})
    held = [login(gw, *test_user) for _ in range(3)]
    try:
        assert sorted(which(f) for f in held) == ["b", "be", "c"]
        ctl = peers.Control.plain(gw.fport("p"))
        try:
            code, text = ctl.reply()
            assert code == 421 and "Service not available" in text, text
        finally:
            ctl.close()
        # Implicit: not a byte in clear, no handshake: the connection is just closed.
        raw = socket.create_connection((HOST, gw.port), timeout=10)
        try:
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                client_ctx.wrap_socket(raw, server_hostname="localhost").recv(100)
        finally:
            raw.close()
        assert "event=no_backend frontend=p" in gw.log
        assert "event=no_backend frontend=fe" in gw.log
    finally:
        for f in held:
            f.close()


def test_rein_keeps_backend(gateway, three, test_user):
    gw = start(gateway, three)
    for _ in range(4):
        ftp = login(gw, *test_user)
        try:
            before = which(ftp)
            assert ftp.sendcmd("REIN").startswith("220")
            ftp.login(*test_user)
            assert which(ftp) == before
            with open(three[0].root.parent / "dl", "wb") as f:  # a data transfer too
                ftp.retrbinary("RETR marker", f.write)
            ftp.quit()
        finally:
            ftp.close()


@contextlib.contextmanager
def blackhole():
    """A listener whose backlog is full and never accepted: connects to it hang (SYNs are
    dropped), so the gateway's connect_timeout runs out."""
    srv = socket.socket()
    srv.bind((HOST, 0))
    srv.listen(0)
    addr = srv.getsockname()
    fillers = []
    try:
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(addr)
            fillers.append(f)
        yield f"{HOST}:{addr[1]}"
    finally:
        for f in fillers:
            f.close()
        srv.close()


def test_failover_on_connect_timeout(gateway, three, test_user):
    with blackhole() as hole:
        gw = start(gateway, three, addresses={"be": hole, "b": three[1].address,
                                              "c": three[2].address})
        counts = served(gw, *test_user, 3)  # be, b, c: the first waits out connect_timeout
        assert set(counts) <= {"b", "c"} and sum(counts.values()) == 3, counts
        assert re.search(r"event=backend_failover from=be reason=\"connect timeout\"", gw.log)


def test_max_sessions_across_workers(gateway, three, test_user):
    gw2 = gateway(backend_address=three[0].address, extra={
        "global": {"workers": 2},
        "frontend fe": {"backend": "be, b, c"},
        "backend be": {"max_sessions": 1},
        "backend b": {"address": three[1].address, "tls": "none"},
        "backend c": {"address": three[2].address, "tls": "none"}},
        frontends={"p": frontend("plain", backend="be, b, c")})
    first = login(gw2, *test_user)
    try:
        assert which(first) == "be"  # each worker's round robin starts with be
        counts = served(gw2, *test_user, 10)  # spread over both workers by the kernel
        assert "be" not in counts and sum(counts.values()) == 10, counts
        assert "worker=0" in gw2.log and "worker=1" in gw2.log
    finally:
        first.close()


def test_reload_keeps_live_counts(gateway, three, test_user):
    gw = start(gateway, three, max_sessions={"be": 1})
    first = login(gw, *test_user)
    try:
        assert which(first) == "be"
        mark = gw.mark()
        gw.config.write_text(gw.config.read_text().replace("idle_timeout = 120",
                                                           "idle_timeout = 100"))
        os.kill(gw.pid, signal.SIGHUP)
        mark.wait("event=reloaded", 10)
        counts = served(gw, *test_user, 6)  # the new generation still sees be full
        assert "be" not in counts and sum(counts.values()) == 6, counts
        assert which(first) == "be"  # the old generation's session goes on
    finally:
        first.quit()
        first.close()
    gw.mark(0).wait("event=session_end", 5, n=7)
    assert served(gw, *test_user, 3)["be"] == 1


MIDRUN_HEALTH = {"health_interval": 1, "health_rise": 2, "health_fall": 2, "health_timeout": 1}


def test_backend_out_of_service_midrun(gateway, workdir, ports, test_user):
    """An operator pulls b out of service while clients keep coming: no session fails
    (failover until the probes mark b down, then b is not tried at all), and once b is
    back on the same port and root the probes bring it up and round robin reaches it."""
    h = MIDRUN_HEALTH
    servers = {}

    def serve(name, i, port=None):
        be = peers.start_pyftpdlib(workdir / f"midrun-{name}", ports, *test_user, port=port)
        (be.root / "marker").write_bytes(b"x" * i)
        servers[name] = be
        return be

    try:
        for i, name in NAMES.items():
            serve(name, i)
        gw = start(gateway, list(servers.values()), backend_keys=h,
                   addresses={n: be.address for n, be in servers.items()})
        runs = []  # (monotonic start, log cursor at start, backend that served it)

        def session():
            t0, mark = time.monotonic(), gw.mark()
            ftp = login(gw, *test_user)  # any failure here fails the test
            try:
                who = which(ftp)
                ftp.quit()
            finally:
                ftp.close()
            runs.append((t0, mark, who))
            time.sleep(0.05)
            return who

        for _ in range(10):
            session()
        assert {w for _, _, w in runs} == {"be", "b", "c"}, runs

        port_b = servers["b"].port
        servers["b"].stop()
        killed = time.monotonic()
        while time.monotonic() - killed < 6:
            session()
        after = [r for r in runs if r[0] > killed]
        assert {w for _, _, w in after} <= {"be", "c"}, after
        assert "event=backend_down backend=b " in gw.log
        settle = h["health_fall"] * h["health_interval"] + h["health_timeout"] + 1
        late = [r for r in after if r[0] > killed + settle]
        assert len(late) >= 6, (len(late), settle)
        assert "backend_failover from=b" not in late[0][1].text()
        failovers = gw.log.count("backend_failover from=b")
        down_by = [t for t, m, _ in after
                   if "event=backend_down backend=b " not in m.text()]
        print(f"midrun: {len(after)} sessions in 6 s after the kill, {failovers} failovers "
              f"from b, b down by {down_by[0] - killed:.2f} s, {len(late)} sessions after "
              f"{settle} s")

        mark = gw.mark()
        serve("b", 2, port=port_b)
        back = time.monotonic()
        deadline = back + h["health_rise"] * h["health_interval"] + 2
        while "event=backend_up backend=b " not in mark.text():
            assert time.monotonic() < deadline, "b not back up in time"
            session()
        up_after = time.monotonic() - back
        nxt = [session() for _ in range(3)]
        assert "b" in nxt, nxt
        print(f"midrun: b up {up_after:.2f} s after the restart, next sessions {nxt}")
    finally:
        for be in servers.values():
            be.stop()


FAST_HEALTH = {"health_interval": 1, "health_timeout": 1, "health_rise": 1, "health_fall": 1}


def test_health_down_backends_skipped_then_421(gateway, three, test_user, ports, client_ctx):
    """With probes: a backend marked down is not tried at all (no failover needed); all
    down: 421 in clear on plain, a bare close on implicit."""
    dead = closed_port(ports)
    addresses = {"be": three[0].address, "b": dead, "c": three[2].address}
    extra = {"frontend fe": {"backend": "be, b, c"}}
    for name, addr in addresses.items():
        extra[f"backend {name}"] = {"address": addr, "tls": "none", **FAST_HEALTH}
    gw = gateway(backend_address=three[0].address, extra=extra,
                 frontends={"p": frontend("plain", backend="be, b, c")})
    gw.mark(0).wait("event=backend_down backend=b ", 10)
    mark = gw.mark()
    counts = served(gw, *test_user, 6)
    assert counts == {"be": 3, "c": 3}, counts
    assert "event=backend_failover" not in mark.text()

    # Every backend down: the frontend is unavailable.
    text = gw.config.read_text().replace(three[0].address, closed_port(ports)) \
        .replace(three[2].address, closed_port(ports))
    gw.config.write_text(text)
    mark = gw.mark()
    os.kill(gw.pid, signal.SIGHUP)
    mark.wait("event=frontend_unavailable frontend=p", 15)
    ctl = peers.Control.plain(gw.fport("p"))
    try:
        code, text = ctl.reply()
        assert code == 421 and "Service not available" in text, text
        assert ctl.closed_by_peer()
    finally:
        ctl.close()
    raw = socket.create_connection((HOST, gw.port), timeout=10)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            client_ctx.wrap_socket(raw, server_hostname="localhost").recv(100)
    finally:
        raw.close()
    assert "event=no_backend frontend=p" in mark.text()


@pytest.mark.parametrize("mode", ["plain", "implicit"])
def test_failover_on_no_greeting(gateway, three, test_user, client_ctx, mode):
    """A backend that accepts but never greets is left after its connect_timeout (counted
    from the TCP connect), not after login_timeout: failover to the next one."""
    with FakeFTP("stall") as fake:  # accepts, never greets
        mute = fake.address
        addresses = {"be": mute, "b": three[1].address}
        extra = {"frontend fe": {"backend": "be, b", "balance": "roundrobin"}}
        for name, addr in addresses.items():
            extra[f"backend {name}"] = {"address": addr, "tls": "none", "connect_timeout": 1}
        gw = gateway(backend_address=mute, extra=extra,
                     frontends={"p": frontend(mode, backend="be, b", balance="roundrobin")})
        for _ in range(4):  # roundrobin: every other session starts on the silent one
            ftp = login(gw, *test_user, mode=mode, ctx=client_ctx)
            try:
                assert ftp.welcome.startswith("220 "), ftp.welcome
                assert which(ftp) == "b"
                ftp.quit()
            finally:
                ftp.close()
        assert re.search(r"event=backend_failover from=be reason=\"no greeting within 1 s\" "
                         r"to=b", gw.log), gw.log
        assert "login timeout" not in gw.log


def test_no_greeting_anywhere_gives_421(gateway, three, test_user):
    with FakeFTP("stall") as fake:  # accepts, never greets
        mute = fake.address
        extra = {"backend be": {"address": mute, "tls": "none", "connect_timeout": 1}}
        gw = gateway(backend_address=mute, extra=extra,
                     frontends={"p": frontend("plain", backend="be")})
        ctl = peers.Control.plain(gw.fport("p"))
        try:
            code, text = ctl.reply()
            assert code == 421 and "no greeting" in text, text
        finally:
            ctl.close()
        assert 'reason="no greeting within 1 s" to=none' in gw.log
