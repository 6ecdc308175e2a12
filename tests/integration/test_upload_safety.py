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
import ftplib
import hashlib
import io
import os
import random
import socket
import ssl
import struct
import subprocess
import threading

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


@pytest.mark.parametrize("fe", ["explicit-passive", "explicit-active"])
def test_stock_ftplib_refused(upgw, up_backend, client_ctx, fe):
    """The issue's own reproduction, by the real client: stock ftplib.FTP_TLS (its data TLS
    never resumes) storing over an existing file gets 522, and the file stays whole."""
    ftp = ftplib.FTP_TLS(context=client_ctx, timeout=20)
    try:
        ftp.connect(HOST, upgw.fport(fe))
        ftp.auth()
        ftp.login(up_backend.user, up_backend.password)
        ftp.prot_p()
        with victim(up_backend, f"stock-{fe}.txt") as name:
            try:
                ftp.storbinary(f"STOR {name}", io.BytesIO(b"must never reach the server\n"))
                reply = "no error"
            except ftplib.error_perm as e:
                reply = str(e)
            except (OSError, ssl.SSLError):  # the leg closed under sendall: the reply waits
                reply = ftp.getline()
            assert reply.startswith("522"), reply
        assert ftp.voidcmd("NOOP").startswith("200")
    finally:
        with contextlib.suppress(Exception):
            ftp.close()


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


# ---------------------------------------------------------------------------------------
# One reply per command (PROTOCOL.md §5): what the backend still owes for a command the
# gateway answered itself is consumed, never relayed as the next command's reply.

RACE_RUNS = int(os.environ.get("FTPSGATE_RACE_RUNS", "50"))  # per backend and frontend


@contextlib.contextmanager
def cpu_hog():
    """A busy process beside the test: the gateway, the server and the client get their
    turns late, which is when a late reply used to overtake the next command's."""
    hog = subprocess.Popen([peers.PYTHON, "-c", "while True: pass"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        hog.kill()
        hog.wait(10)


@pytest.mark.parametrize("fe", ["implicit-passive", "implicit-active"])
def test_refused_active_race(upgw, up_backend, client_ctx, fe):
    """The refused-active case, RACE_RUNS times (FTPSGATE_RACE_RUNS) with a CPU hog beside:
    PORT to a port where nobody listens, RETR: the client gets 425 (after any 150), and
    the NOOP that follows gets its own 200, never a late 150/226 of the server's. Issue
    18: 6 of 10 runs desynchronised against pyftpdlib."""
    up_backend.put_bytes("race.txt", b"race\n")
    desyncs: list[list[str]] = []
    c = login(upgw, fe, up_backend, client_ctx)
    try:
        with cpu_hog():
            for _ in range(RACE_RUNS):
                with socket.create_server((HOST, 0)) as gone:
                    port = gone.getsockname()[1]
                code, text = c.cmd(f"PORT 127,0,0,1,{port >> 8},{port & 255}")
                assert code == 200, text
                code, text = c.cmd("RETR race.txt")
                replies = [text]
                if code in (125, 150):
                    code, text = c.reply()
                    replies.append(text)
                code, text = c.cmd("NOOP")
                replies.append(text)
                if [r[:3] for r in replies] not in (["425", "200"], ["150", "425", "200"],
                                                    ["125", "425", "200"]):
                    desyncs.append(replies)
                    break  # after a desync every later reply is off by one
    finally:
        c.close()
    assert not desyncs, desyncs


def async_retr(fake):
    """A RETR hook that plays pyftpdlib's model: 150 at once, the data connection served
    beside the control connection, the final reply whenever the data side is done (after
    later commands' replies, possibly)."""
    def hook(sess, arg):
        body = fake.files.get(arg)
        if body is None:
            return False
        sess.reply("150 File status okay. About to open data connection.")

        def serve():
            conn = sess.accept_data(timeout=3)
            if conn is None:
                sess.reply("425 Can't open data connection.")
                return
            ok = True
            try:
                conn.sendall(body)
                conn.shutdown(socket.SHUT_WR)
                recv_until_closed(conn, 5)
            except OSError:
                ok = False
            finally:
                conn.close()
            sess.reply("226 Transfer complete." if ok else "426 Transfer aborted.")

        threading.Thread(target=serve, daemon=True).start()
        return True
    return hook


@pytest.mark.parametrize("server", ["sync", "async"])
def test_one_final_reply_per_command(gateway, client_ctx, server):
    """Property: random command sequences with random data-leg failures, against the
    scripted fake backend (fakeftp.FakeFTP, through a plain frontend, its data legs passive
    and active at random): every command gets exactly one final reply, of the kind that
    command gets, in order. `async`: the fake serves RETR's data beside its control
    connection (pyftpdlib's model), so a transfer's final reply may come late.
    FTPSGATE_PROPERTY_STEPS steps (default 120), seeded by FTPSGATE_PROPERTY_SEED (printed
    on failure)."""
    from fakeftp import FakeFTP, Plan

    seed = int(os.environ.get("FTPSGATE_PROPERTY_SEED", str(random.randrange(1 << 30))))
    steps = int(os.environ.get("FTPSGATE_PROPERTY_STEPS", "120"))
    rnd = random.Random(seed)
    body = os.urandom(3000)
    with FakeFTP(files={"f.bin": body}) as fake:
        if server == "async":
            fake.default = Plan(replies={"RETR": async_retr(fake)})
        gw = gateway(backend_address=fake.address,
                     frontends={"p": peers.frontend("plain", active_source_port=0),
                                "pa": peers.frontend("plain", backend="ba",
                                                     active_source_port=0)},
                     extra={"global": {"data_connect_timeout": 1},
                            "backend ba": {"address": fake.address, "tls": "none",
                                           "data_mode": "active"}})
        ctls = {}
        for fe in ("p", "pa"):
            ctl = Control.plain(gw.fport(fe))
            assert ctl.reply()[0] == 220
            ctl.login("u", "p")
            ctls[fe] = ctl
        history: list[str] = []

        def expect(ctl, line, finals, prelim=False):
            code, text = ctl.cmd(line)
            got = [text]
            if prelim and code in (125, 150):
                code, text = ctl.reply()
                got.append(text)
            history.append(f"{line} -> {[g[:3] for g in got]}")
            assert code in finals, (seed, history[-12:])

        def transfer(ctl, verb, fault):
            """One transfer with the client's leg healthy or failing in one way."""
            listener = None
            data = None
            try:
                if fault == "refused" or (fault == "ok" and rnd.random() < 0.5):
                    listener = socket.create_server((HOST, 0))
                    p = listener.getsockname()[1]
                    if fault == "refused":
                        listener.close()
                        listener = None
                    expect(ctl, f"PORT 127,0,0,1,{p >> 8},{p & 255}", {200})
                else:
                    code, text = ctl.cmd("PASV")
                    history.append(f"PASV -> {code}")
                    assert code == 227, (seed, history[-12:])
                    if fault == "ok":
                        data = socket.create_connection(parse_227(text), timeout=10)
                    elif fault == "reset":
                        data = socket.create_connection(parse_227(text), timeout=10)
                ctl.send(f"{verb}\r\n".encode())
                code, text = ctl.reply()
                got = [text]
                if code in (125, 150):
                    if listener:
                        data, _ = listener.accept()
                    if data is None:  # "never": a read's 150 is the server's, then 425
                        pass
                    elif fault == "reset":
                        data.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                        data.close()
                        data = None
                    elif verb.startswith("STOR"):
                        data.sendall(body)
                        data.shutdown(socket.SHUT_WR)
                        recv_until_closed(data, 10)
                    else:
                        recv_until_closed(data, 10)
                    code, text = ctl.reply()
                    got.append(text)
                history.append(f"{verb} [{fault}] -> {[g[:3] for g in got]}")
                assert code >= 200, (seed, history[-12:])
                if fault == "ok" and not verb.endswith("missing.bin"):
                    assert code == 226, (seed, history[-12:])
                elif fault != "ok":
                    assert code in (425, 426, 226), (seed, history[-12:])
            finally:
                close_quietly(data)
                close_quietly(listener)

        simple = [("NOOP", {200}), ("PWD", {257}), ("TYPE I", {200}), ("SYST", {215}),
                  ("CWD /", {250}), ("XYZZY", {500, 502})]
        for _ in range(steps):
            ctl = ctls[rnd.choice(("p", "pa"))]
            r = rnd.random()
            if r < 0.4:
                line, finals = rnd.choice(simple)
                expect(ctl, line, finals)
            else:
                verb = rnd.choice(("RETR f.bin", "LIST", "STOR up.bin", "RETR missing.bin"))
                fault = rnd.choices(("ok", "refused", "reset", "never"), (4, 4, 2, 1))[0]
                if verb == "RETR missing.bin":
                    fault = "ok"
                transfer(ctl, verb, fault)
            # nothing may be left over on the wire: the next reply is the next command's
            expect(ctl, "NOOP", {200})
        for ctl in ctls.values():
            expect(ctl, "QUIT", {221})
            ctl.close()
