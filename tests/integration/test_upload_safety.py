"""A refused or failed client data leg never touches the server's file (PROTOCOL.md §5,
"Deferred upload"): STOR reaches the backend only once the client's data connection is
accepted. Against vsftpd, pyftpdlib and pure-ftpd (skipped where .ci/pure-ftpd.sh did not
unpack it), implicit and explicit frontends, the backend leg passive and active, the
client passive and active. Every refused upload keeps the existing file byte for byte
(SHA-256 before and after), and the session goes on (NOOP gets its own 200).

Clients here start their data TLS only after the 150, as ftplib and curl do (the gateway
sends that 150 itself once the TCP leg exists); the control cases also start it before.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl

import pytest

import peers
from peers import HOST, Control, parse_227, recv_until_closed, sha256_file

BACKENDS = ["vsftpd", "pyftpdlib", "pure_ftpd"]
FRONTENDS = [f"{mode}-{dmode}" for mode in ("implicit", "explicit")
             for dmode in ("passive", "active")]
VICTIM = b"the server's file, 32 bytes long"


@pytest.fixture(scope="module", params=BACKENDS)
def up_backend(request) -> peers.Backend:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def upgw(request, up_backend, workdir, ports, tls_cert) -> peers.Gateway:
    """One gateway per backend; frontend `<mode>-<backend data_mode>`; data_connect_timeout
    1 s so that the waits stay short."""
    factory = peers.GatewayFactory(workdir / "gateways" / f"upload-safety-{up_backend.name}",
                                   ports, *tls_cert)
    frontends = {}
    for name in FRONTENDS:
        mode, dmode = name.split("-")
        frontends[name] = {"mode": mode, "backend": "be" if dmode == "passive" else "ba",
                           "active_source_port": 0}
    extra = {"global": {"data_connect_timeout": 1},
             "frontend fe": {"active_source_port": 0},
             "backend be": {"data_mode": "passive"},
             "backend ba": {"address": up_backend.address, "tls": "none",
                            "data_mode": "active"}}
    gw = factory(up_backend, extra=extra, frontends=frontends)
    yield gw
    problems = factory.close_all()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def login(gw: peers.Gateway, fe: str, backend: peers.Backend, ctx: ssl.SSLContext) -> Control:
    port = gw.fport(fe)
    if fe.startswith("implicit"):
        c = Control.implicit(port, ctx)
        code, text = c.reply()
        assert code == 220, text
    else:
        c = Control.explicit(port, ctx)
    c.login(backend.user, backend.password)
    for cmd in ("PBSZ 0", "PROT P", "TYPE I"):
        code, text = c.cmd(cmd)
        assert code == 200, (cmd, text)
    return c


@contextlib.contextmanager
def victim(backend: peers.Backend, name: str):
    """An existing file on the server that must come through unchanged."""
    backend.put_bytes(name, VICTIM)
    before = sha256_file(backend.path(name))
    yield name
    assert backend.path(name).exists(), f"{name} was removed"
    got = backend.path(name).read_bytes()
    assert sha256_file(backend.path(name)) == before, \
        f"{name} changed on the server: {len(got)} bytes now, {got[:40]!r}"


def data_leg(c: Control, active: bool,
             listener: socket.socket | None = None) -> socket.socket | None:
    """PASV and connect (passive), or PORT to `listener` (active)."""
    if active:
        assert listener is not None
        p = listener.getsockname()[1]
        code, text = c.cmd(f"PORT 127,0,0,1,{p >> 8},{p & 255}")
        assert code == 200, text
        return None
    code, text = c.cmd("PASV")
    assert code == 227, text
    host, port = parse_227(text)
    return socket.create_connection((host, port), timeout=10)


def finish(c: Control, replies: list[str]) -> int:
    """The final reply of the transfer, after any 1yz; then the session must go on."""
    code, text = c.reply()
    replies.append(text)
    while code < 200:
        code, text = c.reply()
        replies.append(text)
    noop = c.cmd("NOOP")
    assert noop[0] == 200, (replies, noop)
    return code


def close_quietly(s: socket.socket | None) -> None:
    if s is not None:
        with contextlib.suppress(OSError):
            s.close()


def tls_leg(sock: socket.socket, ctx: ssl.SSLContext,
            session: ssl.SSLSession | None) -> socket.socket | None:
    """Data TLS as a client does it; None when the gateway refused the handshake."""
    try:
        return ctx.wrap_socket(sock, server_hostname="localhost", session=session)
    except (ssl.SSLError, OSError):
        return None


@pytest.mark.parametrize("cmode", ["passive", "active"])
@pytest.mark.parametrize("fe", FRONTENDS)
def test_not_resumed(upgw, up_backend, client_ctx, fe, cmode):
    """Stock ftplib.FTP_TLS: a data TLS that does not resume the control session gets 522
    (after the gateway's 150), and the server never opens the file."""
    c = login(upgw, fe, up_backend, client_ctx)
    listener = socket.create_server((HOST, 0)) if cmode == "active" else None
    data = None
    try:
        with victim(up_backend, f"nr-{fe}-{cmode}.txt") as name:
            data = data_leg(c, cmode == "active", listener)
            code, text = c.cmd(f"STOR {name}")
            replies = [text]
            assert code == 150, replies
            if listener:
                data, _ = listener.accept()
            tls = tls_leg(data, client_ctx, None)
            if tls:
                data = tls
                with contextlib.suppress(OSError, ssl.SSLError):
                    data.sendall(b"must never reach the server\n")
                    recv_until_closed(data, 5)
            assert finish(c, replies) == 522, replies
    finally:
        close_quietly(data)
        close_quietly(listener)
        c.close()


@pytest.mark.parametrize("cmode", ["passive", "active"])
@pytest.mark.parametrize("fe", FRONTENDS)
def test_foreign_address(upgw, up_backend, client_ctx, fe, cmode):
    """Passive: the data connection comes from 127.0.0.2, not the control peer: reset, and
    nothing else comes before data_connect_timeout: 425. Active: PORT naming another host
    is refused (504), the STOR that follows gets 425."""
    c = login(upgw, fe, up_backend, client_ctx)
    data = None
    try:
        with victim(up_backend, f"fa-{fe}-{cmode}.txt") as name:
            if cmode == "passive":
                code, text = c.cmd("PASV")
                assert code == 227, text
                try:  # the gateway resets it: the connect itself may already see that
                    data = socket.create_connection(parse_227(text), timeout=10,
                                                    source_address=("127.0.0.2", 0))
                except ConnectionResetError:
                    pass
            else:
                code, text = c.cmd("PORT 127,0,0,2,200,10")
                assert code == 504, text
            c.send(f"STOR {name}\r\n".encode())
            assert finish(c, []) == 425
    finally:
        close_quietly(data)
        c.close()


@pytest.mark.parametrize("cmode", ["passive", "active"])
@pytest.mark.parametrize("fe", FRONTENDS)
def test_failed_handshake(upgw, up_backend, client_ctx, fe, cmode):
    """The client's data leg sends something that is not TLS: 425, the server untouched."""
    c = login(upgw, fe, up_backend, client_ctx)
    listener = socket.create_server((HOST, 0)) if cmode == "active" else None
    data = None
    try:
        with victim(up_backend, f"hs-{fe}-{cmode}.txt") as name:
            data = data_leg(c, cmode == "active", listener)
            code, text = c.cmd(f"STOR {name}")
            replies = [text]
            assert code == 150, replies
            if listener:
                data, _ = listener.accept()
            with contextlib.suppress(OSError):
                data.sendall(b"\x16\x03\x01\x00\x10not a ClientHello at all\r\n" * 4)
                recv_until_closed(data, 5)
            assert finish(c, replies) == 425, replies
    finally:
        close_quietly(data)
        close_quietly(listener)
        c.close()


@pytest.mark.parametrize("how", ["never", "refused"])
@pytest.mark.parametrize("cmode", ["passive", "active"])
@pytest.mark.parametrize("fe", FRONTENDS)
def test_no_data_connection(upgw, up_backend, client_ctx, fe, cmode, how):
    """No data connection before data_connect_timeout (passive: the client never connects;
    active: its listener never accepts, so no handshake comes), or a refused one (active:
    nobody listens at the PORT address): 425, the server untouched."""
    if cmode == "passive" and how == "refused":
        pytest.skip("a passive client that does not connect is the 'never' case")
    c = login(upgw, fe, up_backend, client_ctx)
    listener = None
    try:
        with victim(up_backend, f"nc-{fe}-{cmode}-{how}.txt") as name:
            if cmode == "passive":
                code, text = c.cmd("PASV")
                assert code == 227, text
            else:
                listener = socket.create_server((HOST, 0))
                data_leg(c, True, listener)
                if how == "refused":
                    listener.close()
                    listener = None
            c.send(f"STOR {name}\r\n".encode())
            assert finish(c, []) == 425
    finally:
        close_quietly(listener)
        c.close()


@pytest.mark.parametrize("timing", ["after_150", "eager"])
@pytest.mark.parametrize("cmode", ["passive", "active"])
@pytest.mark.parametrize("fe", FRONTENDS)
def test_accepted_upload_replaces(upgw, up_backend, client_ctx, fe, cmode, timing):
    """The control case: a resuming client's upload replaces the file (so the tests above
    can see a change). `eager`: the client starts its data TLS right after sending STOR,
    before the 150 arrives."""
    c = login(upgw, fe, up_backend, client_ctx)
    listener = socket.create_server((HOST, 0)) if cmode == "active" else None
    data = None
    content = os.urandom(200_000)
    name = f"ok-{fe}-{cmode}-{timing}.bin"
    up_backend.put_bytes(name, VICTIM)
    try:
        data = data_leg(c, cmode == "active", listener)
        c.send(f"STOR {name}\r\n".encode())
        replies = []
        if timing == "after_150":
            code, text = c.reply()
            replies.append(text)
            assert code == 150, replies
        if listener:
            data, _ = listener.accept()
        data = client_ctx.wrap_socket(data, server_hostname="localhost", session=c.session)
        if timing == "eager":
            code, text = c.reply()
            replies.append(text)
            assert code == 150, replies
        data.sendall(content)
        data = data.unwrap()
        data.shutdown(socket.SHUT_WR)
        recv_until_closed(data, 10)
        assert finish(c, replies) == 226, replies
        assert sha256_file(up_backend.path(name)) == hashlib.sha256(content).hexdigest()
    finally:
        close_quietly(data)
        close_quietly(listener)
        c.close()


@pytest.mark.parametrize("fe", ["implicit-passive", "explicit-active"])
def test_backend_refusal_reaches_client(upgw, up_backend, client_ctx, fe):
    """The server refuses the upload once it has the command (no such directory): the
    client has the gateway's 150, then the server's refusal as the final reply."""
    c = login(upgw, fe, up_backend, client_ctx)
    data = None
    try:
        data = data_leg(c, False)
        code, text = c.cmd("STOR no-such-dir/x.txt")
        replies = [text]
        assert code == 150, replies
        tls = tls_leg(data, client_ctx, c.session)
        if tls:
            data = tls
            with contextlib.suppress(OSError, ssl.SSLError):
                recv_until_closed(data, 5)
        code = finish(c, replies)
        assert 450 <= code < 600 and code not in (425, 426), replies
    finally:
        close_quietly(data)
        c.close()
