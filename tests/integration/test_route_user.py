"""Routing by user: `route_user = yes` (USER name@BACKEND), `balance = user` (hash of the
USER name) and `greeting` (the gateway greets itself and connects the backend at USER).
Three pyftpdlib servers, each with a marker file of its own size in its root (as in
test_balance.py), so SIZE tells a client which backend served it; the test user exists in
each."""

from __future__ import annotations

import ftplib
from collections import Counter

import pytest

import peers
from peers import HOST, frontend

NAMES = {1: "be", 2: "b", 3: "c"}
MARKER = {"be": "x", "b": "xx", "c": "xxx"}


def start(gateway, three, **keys):
    """Frontends "p" (plain), "x" (explicit) and the implicit "fe", all over be, b, c with
    the given keys (route_user, balance, greeting)."""
    names = "be, b, c"
    keys = {k: ("yes" if v is True else v) for k, v in keys.items()}
    extra = {"frontend fe": {"backend": names, **keys}}
    for name, be in zip(["be", "b", "c"], three):
        extra[f"backend {name}"] = {"address": be.address, "tls": "none", "connect_timeout": 2}
    return gateway(backend_address=three[0].address, extra=extra,
                   frontends={"p": frontend("plain", backend=names, **keys),
                              "x": frontend("explicit", backend=names, **keys)})


def connect(gw, mode="plain", ctx=None):
    if mode == "implicit":
        ftp = peers.ImplicitFTPS(context=ctx, timeout=10)
        ftp.connect(HOST, gw.port)
        return ftp
    if mode == "explicit":
        ftp = peers.ExplicitFTPS(context=ctx, timeout=10)
        ftp.connect(HOST, gw.fport("x"))
        ftp.auth()
        return ftp
    ftp = ftplib.FTP(timeout=10)
    ftp.connect(HOST, gw.fport("p"))
    return ftp


def which(ftp) -> str:
    ftp.voidcmd("TYPE I")
    return NAMES[ftp.size("marker")]


def served_by(gw, user, password, mode="plain", ctx=None) -> str:
    ftp = connect(gw, mode, ctx)
    try:
        ftp.login(user, password)
        got = which(ftp)
        ftp.quit()
        return got
    finally:
        ftp.close()


def total_connections(three) -> int:
    return sum(be.connections() for be in three)


@pytest.mark.parametrize("mode", ["plain", "explicit", "implicit"])
def test_route_user_picks_named_backend(gateway, three, test_user, client_ctx, mode):
    user, password = test_user
    gw = start(gateway, three, route_user=True)
    for name in ["b", "c", "be", "b"]:
        assert served_by(gw, f"{user}@{name}", password, mode, client_ctx) == name
    assert "event=backend_chosen backend=c policy=route_user" in gw.log
    # A plain name: the frontend's policy (roundrobin over the three).
    got = Counter(served_by(gw, user, password, mode, client_ctx) for _ in range(3))
    assert got == {"be": 1, "b": 1, "c": 1}, got


def test_route_user_unknown_backend(gateway, three, test_user):
    user, password = test_user
    gw = start(gateway, three, route_user=True)
    before = total_connections(three)
    ftp = connect(gw)
    try:
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftp.sendcmd(f"USER {user}@nosuch")
        assert total_connections(three) == before  # nothing was connected
        ftp.login(f"{user}@c", password)  # the session goes on
        assert which(ftp) == "c"
    finally:
        ftp.close()
    assert 'event=route_refused backend="nosuch" reason=unknown' in gw.log


def test_balance_user_sticky_and_spread(gateway, three, test_user):
    user, password = test_user
    gw = start(gateway, three, balance="user")
    got = {served_by(gw, user, password) for _ in range(5)}
    assert len(got) == 1, got
    assert "policy=user" in gw.log
    # Other names (unknown to the servers: their USER still reaches the chosen backend).
    chosen = {}
    for k in range(6):
        name = f"someone{k}"
        for _ in range(2):
            cur = gw.mark()
            ftp = connect(gw)
            try:
                resp = ftp.sendcmd(f"USER {name}")
                assert resp.startswith("331"), resp
            finally:
                ftp.close()
            line = cur.wait("backend_chosen", 5).string
            be = line.split("backend=")[1].split()[0]
            assert chosen.setdefault(name, be) == be, (name, chosen[name], be)
    assert len(set(chosen.values())) >= 2, chosen


def test_greeting_and_commands_before_user(gateway, three, test_user):
    user, password = test_user
    gw = start(gateway, three, balance="user", greeting="Welcome to the routing gateway")
    before = total_connections(three)
    ftp = connect(gw)
    try:
        assert ftp.getwelcome() == "220 Welcome to the routing gateway"
        feat = ftp.sendcmd("FEAT")
        assert feat.startswith("211") and "EPSV" in feat and "UTF8" in feat, feat
        assert "AUTH" not in feat  # a plain frontend
        assert ftp.sendcmd("SYST") == "215 UNIX Type: L8"
        assert ftp.sendcmd("NOOP").startswith("200")
        assert ftp.sendcmd("HELP").startswith("214")
        assert ftp.sendcmd("OPTS UTF8 ON").startswith("200")
        with pytest.raises(ftplib.error_perm, match="^530 Please login with USER and PASS"):
            ftp.sendcmd("PWD")
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftp.sendcmd("PASV")
        assert total_connections(three) == before  # no backend connection yet
        ftp.login(user, password)
        assert total_connections(three) == before + 1
        assert ftp.pwd() == "/"
        feat = ftp.sendcmd("FEAT")  # after login: the backend's, rewritten
        assert "MDTM" in feat or "SIZE" in feat, feat
        which(ftp)
        ftp.quit()
    finally:
        ftp.close()
    assert "leg=backend from=greeting to=utf8" in gw.log  # OPTS UTF8 ON replayed before USER
    # An explicit frontend's FEAT before AUTH names AUTH TLS.
    ftp = ftplib.FTP(timeout=10)
    ftp.connect(HOST, gw.fport("x"))
    try:
        feat = ftp.sendcmd("FEAT")
        assert "AUTH TLS" in feat and "PBSZ" in feat and "PROT" in feat, feat
    finally:
        ftp.close()
    # QUIT before USER: 221 without a backend.
    ftp = connect(gw)
    try:
        assert ftp.quit().startswith("221")
    finally:
        ftp.close()
    assert total_connections(three) == before + 1


def test_default_greeting_when_implied(gateway, three, test_user, client_ctx):
    gw = start(gateway, three, route_user=True)
    ftp = connect(gw, "implicit", client_ctx)
    try:
        assert ftp.getwelcome() == "220 FTP gateway ready"
    finally:
        ftp.close()


def test_rein_then_login_again(gateway, three, test_user):
    user, password = test_user
    gw = start(gateway, three, route_user=True)
    ftp = connect(gw)  # plain: REIN under TLS ends the protection (test_client_sessions.py)
    try:
        ftp.login(f"{user}@b", password)
        assert which(ftp) == "b"
        assert ftp.sendcmd("REIN").startswith("220")
        assert ftp.sendcmd("SYST") == "215 UNIX Type: L8"  # no backend again
        # Another backend: refused (the session keeps its backend); the same one works.
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftp.sendcmd(f"USER {user}@c")
        ftp.login(f"{user}@b", password)
        assert which(ftp) == "b"
        assert "marker" in ftp.nlst()  # a data connection on the reconnected backend
        assert ftp.sendcmd("REIN").startswith("220")
        ftp.login(user, password)  # a plain name: the kept backend
        assert which(ftp) == "b"
        ftp.quit()
    finally:
        ftp.close()


def test_curl_through_route_user(gateway, three, test_user):
    user, password = test_user
    gw = start(gateway, three, route_user=True)
    for name in ["b", "c"]:
        res = peers.check(peers.curl(f"ftp://{user}%40{name}:{password}@{HOST}:{gw.fport('x')}"
                                     "/marker"))
        assert res.stdout == MARKER[name]
        res = peers.check(peers.curl(f"ftps://{user}%40{name}:{password}@{HOST}:{gw.port}"
                                     "/marker"))
        assert res.stdout == MARKER[name]


def test_lftp_through_route_user(gateway, three, test_user):
    user, password = test_user
    gw = start(gateway, three, route_user=True)
    res = peers.check(peers.lftp(f"ftps://{HOST}:{gw.port}", f"{user}@c", password,
                                 ["cat marker"]))
    assert res.stdout.strip() == MARKER["c"]
    res = peers.check(peers.lftp_explicit(gw.fport("x"), f"{user}@b", password, ["cat marker"]))
    assert res.stdout.strip() == MARKER["b"]
