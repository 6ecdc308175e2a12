"""pasv_shared_port: every PASV/EPSV names one port, and each data connection to it is matched
to its own session: by the route in its TLS ClientHello (the ticket or session ID the
gateway gave that session's control connection), else by client address when only that
session from the address waits. Never handed to another session: two clients behind one
address with crossed timing, several addresses, clients that do not resume, clear data,
strays and forged tickets, two workers.
"""

from __future__ import annotations

import ftplib
import os
import re
import signal
import socket
import ssl
import struct
import threading
import time

import pytest

from peers import (HOST, KiB, Control, check, curl, ftplib_download, ftplib_explicit_session,
                   ftplib_session, ftplib_upload, lftp, lftp_explicit, parse_227, parse_229,
                   recv_until_closed, sha256_bytes, sha256_file, wait_listening)


def wait_shared_port(gw):
    """The gateway fixture waited for the first frontend's port; the shared port opens after
    it (a slow start, under valgrind, refused a test's first connection)."""
    wait_listening(gw.proc, gw.shared_port, 30, "the gateway's shared port")


def shared_gateway(gateway, backend, ports, *, ranges=True, workers=1, reuse=None, plain=False):
    """A gateway whose implicit "fe" and explicit "x" frontends (and a plain "p" when asked)
    share one pasv_shared_port. ranges=False: pasv_ports empty everywhere."""
    sp = ports.port()
    keys = {"pasv_shared_port": sp}
    if not ranges:
        keys["pasv_ports"] = ""
    fronts = {"x": {"mode": "explicit", **keys}}
    if plain:
        fronts["p"] = {"mode": "plain", **keys}
    gw = gateway(backend, extra={"frontend fe": dict(keys), "global": {"workers": workers}},
                 frontends=fronts, data_session_reuse=reuse)
    gw.shared_port = sp
    wait_shared_port(gw)
    return gw


def tls13(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def control_from(src: str, port: int, ctx: ssl.SSLContext | None, implicit=True) -> Control:
    raw = socket.create_connection((HOST, port), timeout=20, source_address=(src, 0))
    c = Control(ctx.wrap_socket(raw, server_hostname="localhost") if implicit else raw, 20)
    assert c.reply()[0] == 220
    if implicit:
        return c
    if ctx is not None:
        assert c.cmd("AUTH TLS")[0] == 234
        c.starttls(ctx)
    return c


def logged_in(c: Control, backend, prot: str | None = "P") -> Control:
    c.login(backend.user, backend.password)
    assert c.cmd("TYPE I")[0] == 200
    if prot:
        assert c.cmd("PBSZ 0")[0] == 200
        assert c.cmd(f"PROT {prot}")[0] == 200
    return c


def pasv(c: Control) -> tuple[str, int]:
    code, text = c.cmd("PASV")
    assert code == 227, text
    return parse_227(text)


def data_socket(src: str, port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=20, source_address=(src, 0))


def finish_retr(c: Control, data: socket.socket, name: str, ctx, session) -> bytes:
    code, text = c.cmd(f"RETR {name}")
    assert code in (125, 150), text
    if ctx is not None:
        data = ctx.wrap_socket(data, server_hostname="localhost", session=session)
    got, _ = recv_until_closed(data, 20)
    data.close()
    code, text = c.reply()
    assert code == 226, text
    return got


def retr(c: Control, name: str, ctx, src=HOST, expect_port=None) -> bytes:
    _, port = pasv(c)
    if expect_port is not None:
        assert port == expect_port
    return finish_retr(c, data_socket(src, port), name, ctx, c.session if ctx else None)


def matches(log: str, rule: str) -> int:
    return len(re.findall(rf"event=shared_port_match .*rule={rule}", log))


# ---------------------------------------------------------------------------------------
# Real clients through the shared port


@pytest.mark.parametrize("frontend", ["implicit", "explicit"])
def test_curl_many_urls(gateway, pyftpdlib, ports, blobs, scratch, frontend):
    gw = shared_gateway(gateway, pyftpdlib, ports)
    names, sums = [], {}
    for i in range(12):
        name = f"sp-curl-{frontend}-{i}.bin"
        sums[name] = pyftpdlib.put(blobs, name, 96 * KiB + i, unique=True)
        names.append(name)
    args = []
    for name in names:
        url = (gw.url(name, pyftpdlib.user, pyftpdlib.password) if frontend == "implicit"
               else gw.ftp_url("x", name, pyftpdlib.user, pyftpdlib.password))
        args += ["-o", str(scratch / name), url]
    start = gw.mark()
    check(curl(*args))
    assert {n: sha256_file(scratch / n) for n in names} == sums
    log = start.text()
    assert matches(log, "resumption") == len(names), log
    assert f"event=client_data_armed port={gw.shared_port}" in log
    assert "shared_port_unmatched" not in log and "data_tls_refused" not in log


def test_curl_uploads(gateway, pyftpdlib, ports, scratch):
    gw = shared_gateway(gateway, pyftpdlib, ports)
    args, sums = [], {}
    for i in range(8):
        name = f"sp-up-{i}.bin"
        (scratch / name).write_bytes(os.urandom(80 * KiB + i))
        sums[name] = sha256_file(scratch / name)
        args += ["-T", str(scratch / name), gw.url(name, pyftpdlib.user, pyftpdlib.password)]
    start = gw.mark()
    check(curl(*args))
    assert {n: sha256_file(pyftpdlib.path(n)) for n in sums} == sums
    assert matches(start.text(), "resumption") == len(sums)


@pytest.mark.parametrize("frontend", ["implicit", "explicit"])
def test_lftp_several_gets_and_puts(gateway, pyftpdlib, ports, blobs, scratch, frontend):
    gw = shared_gateway(gateway, pyftpdlib, ports)
    sums = {f"sp-lftp-{frontend}-{i}.bin": pyftpdlib.put(blobs, f"sp-lftp-{frontend}-{i}.bin",
                                                         200 * KiB + i, unique=True)
            for i in range(4)}
    up = scratch / "lftp-up.bin"
    up.write_bytes(os.urandom(300 * KiB))
    cmds = [f"get {n} -o {scratch / n}" for n in sums] + [f"put {up} -o sp-lftp-up-{frontend}"]
    start = gw.mark()
    if frontend == "implicit":
        check(lftp(f"ftps://{HOST}:{gw.port}", pyftpdlib.user, pyftpdlib.password, cmds))
    else:
        check(lftp_explicit(gw.fport("x"), pyftpdlib.user, pyftpdlib.password, cmds))
    assert {n: sha256_file(scratch / n) for n in sums} == sums
    assert sha256_file(pyftpdlib.path(f"sp-lftp-up-{frontend}")) == sha256_file(up)
    log = start.text()
    assert matches(log, "resumption") >= len(sums) + 1, log
    assert "shared_port_unmatched" not in log


@pytest.mark.parametrize("frontend", ["implicit", "explicit"])
def test_ftplib_resuming(gateway, backend, ports, blobs, scratch, client_ctx, frontend):
    gw = shared_gateway(gateway, backend, ports)
    name = f"sp-ftplib-{frontend}.bin"
    want = backend.put(blobs, name, 512 * KiB, unique=True)
    up = scratch / "up.bin"
    up.write_bytes(os.urandom(256 * KiB))
    session = (ftplib_session(gw.port, backend.user, backend.password, client_ctx)
               if frontend == "implicit" else
               ftplib_explicit_session(gw.fport("x"), backend.user, backend.password, client_ctx))
    start = gw.mark()
    with session as ftp:
        for i in range(3):
            ftplib_download(ftp, name, scratch / f"d{i}")
            assert sha256_file(scratch / f"d{i}") == want
            ftplib_upload(ftp, up, f"sp-up-{frontend}-{i}")
            assert sha256_file(backend.path(f"sp-up-{frontend}-{i}")) == sha256_file(up)
    assert matches(start.text(), "resumption") == 6


# ---------------------------------------------------------------------------------------
# Several sessions behind one address: never crossed


def test_two_clients_one_address_crossed_timing(gateway, pyftpdlib, ports, client_ctx):
    gw = shared_gateway(gateway, pyftpdlib, ports)
    ctx = tls13(client_ctx)
    pyftpdlib.put_bytes("sp-a.txt", b"A" * 70000)
    pyftpdlib.put_bytes("sp-b.txt", b"B" * 90000)
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx.maximum_version = version
        a = logged_in(control_from(HOST, gw.port, ctx), pyftpdlib)
        b = logged_in(control_from(HOST, gw.port, ctx), pyftpdlib)
        try:
            for _ in range(3):
                # Both wait on the shared port before either connects; B connects first.
                _, pa = pasv(a)
                _, pb = pasv(b)
                assert pa == pb == gw.shared_port
                db = data_socket(HOST, pb)
                da = data_socket(HOST, pa)
                assert finish_retr(b, db, "sp-b.txt", ctx, b.session) == b"B" * 90000
                assert finish_retr(a, da, "sp-a.txt", ctx, a.session) == b"A" * 70000
        finally:
            a.close()
            b.close()
    assert "shared_port_unmatched" not in gw.log


def test_parallel_sessions_one_and_several_addresses(gateway, backend, ports, blobs,
                                                     client_ctx):
    gw = shared_gateway(gateway, backend, ports)
    ctx = tls13(client_ctx)
    files = {f"sp-par-{i}.bin": backend.put(blobs, f"sp-par-{i}.bin", 128 * KiB + 7 * i,
                                            unique=True) for i in range(6)}
    errors: list[str] = []
    barrier = threading.Barrier(6)

    def worker(i: int, src: str):
        try:
            c = logged_in(control_from(src, gw.port if i % 2 else gw.fport("x"), ctx,
                                       implicit=bool(i % 2)), backend)
            try:
                for k in range(4):
                    name = f"sp-par-{(i + k) % 6}.bin"
                    if k == 0:
                        barrier.wait(20)
                    got = retr(c, name, ctx, src, gw.shared_port)
                    if sha256_bytes(got) != files[name]:
                        errors.append(f"session {i} ({src}) got the wrong bytes for {name}")
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"session {i} ({src}): {e!r}")

    srcs = [HOST, HOST, HOST, "127.0.0.2", "127.0.0.3", "127.0.0.3"]
    threads = [threading.Thread(target=worker, args=(i, s)) for i, s in enumerate(srcs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    log = gw.log
    assert matches(log, "resumption") == 24
    assert "shared_port_unmatched" not in log


# ---------------------------------------------------------------------------------------
# Clients that do not resume, and clear data: matched by address, or the range


def test_stock_ftplib_alone_uses_the_shared_port(gateway, pyftpdlib, ports, client_ctx):
    gw = shared_gateway(gateway, pyftpdlib, ports, reuse="optional")
    pyftpdlib.put_bytes("sp-stock.txt", b"stock ftplib\n" * 1000)
    start = gw.mark()
    with ftplib_explicit_session(gw.fport("x"), pyftpdlib.user, pyftpdlib.password, client_ctx,
                                 reuse=False) as ftp:
        for _ in range(3):
            assert ftp.sendcmd("PASV").startswith("227")  # an unused listener: dropped next
            chunks: list[bytes] = []
            ftp.retrbinary("RETR sp-stock.txt", chunks.append)
            assert b"".join(chunks) == b"stock ftplib\n" * 1000
    log = start.text()
    assert matches(log, "address") == 3, log


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_stock_ftplib_beside_a_waiting_session(gateway, pyftpdlib, ports, client_ctx, ranges):
    """Another session from the same address waits on the shared port: a client that does
    not resume cannot be matched there; it gets a port of the range, or 425 without one."""
    gw = shared_gateway(gateway, pyftpdlib, ports, reuse="optional", ranges=ranges)
    ctx = tls13(client_ctx)
    pyftpdlib.put_bytes("sp-w.txt", b"waiting session\n" * 500)
    pyftpdlib.put_bytes("sp-s.txt", b"stock session\n" * 700)
    waiting = logged_in(control_from(HOST, gw.port, ctx), pyftpdlib)
    try:
        _, wport = pasv(waiting)
        assert wport == gw.shared_port
        stock = logged_in(control_from(HOST, gw.fport("x"), ctx, implicit=False), pyftpdlib)
        try:
            code, text = stock.cmd("PASV")
            if ranges:
                assert code == 227, text
                _, port = parse_227(text)
                assert gw.pasv_ports[0] <= port <= gw.pasv_ports[1]
                # Stock FTP_TLS: a data TLS handshake without the control session.
                got = finish_retr(stock, data_socket(HOST, port), "sp-s.txt", ctx, None)
                assert got == b"stock session\n" * 700
                assert "event=shared_port_fallback" in gw.log
            else:
                assert code == 425 and "shared data port" in text, text
                assert "event=shared_port_refused" in gw.log
        finally:
            stock.close()
        # The waiting session was not disturbed.
        got = finish_retr(waiting, data_socket(HOST, wport), "sp-w.txt", ctx, waiting.session)
        assert got == b"waiting session\n" * 500
    finally:
        waiting.close()


def test_clear_data_on_a_plain_frontend(gateway, pyftpdlib, ports):
    gw = shared_gateway(gateway, pyftpdlib, ports, plain=True)
    pyftpdlib.put_bytes("sp-c1.txt", b"1" * 50000)
    pyftpdlib.put_bytes("sp-c2.txt", b"2" * 60000)
    one = logged_in(control_from(HOST, gw.fport("p"), None, implicit=False), pyftpdlib, None)
    two = logged_in(control_from(HOST, gw.fport("p"), None, implicit=False), pyftpdlib, None)
    try:
        # Alone: the shared port, by address (a clear download's client sends nothing).
        assert retr(one, "sp-c1.txt", None, expect_port=gw.shared_port) == b"1" * 50000
        # Two clear sessions from one address: the second cannot be told apart, so it gets
        # a port of the range while the first waits on the shared port.
        _, p1 = pasv(one)
        _, p2 = pasv(two)
        assert p1 == gw.shared_port
        assert gw.pasv_ports[0] <= p2 <= gw.pasv_ports[1]
        d2 = data_socket(HOST, p2)
        d1 = data_socket(HOST, p1)
        assert finish_retr(two, d2, "sp-c2.txt", None, None) == b"2" * 60000
        assert finish_retr(one, d1, "sp-c1.txt", None, None) == b"1" * 50000
        # From another address the shared port is free for it again.
        three = logged_in(control_from("127.0.0.2", gw.fport("p"), None, implicit=False),
                          pyftpdlib, None)
        try:
            _, p1 = pasv(one)
            _, p3 = pasv(three)
            assert p1 == p3 == gw.shared_port
            d3 = data_socket("127.0.0.2", p3)
            d1 = data_socket(HOST, p1)
            assert finish_retr(three, d3, "sp-c2.txt", None, None) == b"2" * 60000
            assert finish_retr(one, d1, "sp-c1.txt", None, None) == b"1" * 50000
        finally:
            three.close()
    finally:
        one.close()
        two.close()
    assert matches(gw.log, "address") == 4


# ---------------------------------------------------------------------------------------
# Strays: closed and logged, never handed on


def client_hello(ticket: bytes) -> bytes:
    """A TLS 1.2 ClientHello offering `ticket` in its session_ticket extension."""
    ext = struct.pack("!HH", 35, len(ticket)) + ticket
    body = (b"\x03\x03" + os.urandom(32) + b"\x00" + struct.pack("!H", 2) + b"\xc0\x2f"
            + b"\x01\x00" + struct.pack("!H", len(ext)) + ext)
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def closed(sock: socket.socket) -> bool:
    sock.settimeout(15)
    try:
        return sock.recv(100) == b""
    except (ConnectionResetError, socket.timeout, TimeoutError):
        return True


def test_unmatched_connections_are_closed(gateway, pyftpdlib, ports, client_ctx):
    gw = shared_gateway(gateway, pyftpdlib, ports)
    ctx = tls13(client_ctx)
    pyftpdlib.put_bytes("sp-v.txt", b"victim\n" * 4000)
    # Nothing waits: closed at once.
    start = gw.mark()
    with data_socket(HOST, gw.shared_port) as s:
        assert closed(s)
    start.wait("event=shared_port_unmatched", 5)
    assert "no session from this address waits" in start.text()
    victim = logged_in(control_from(HOST, gw.port, ctx), pyftpdlib)
    try:
        assert retr(victim, "sp-v.txt", ctx) == b"victim\n" * 4000  # it resumes: proven
        _, port = pasv(victim)
        assert port == gw.shared_port
        # A forged ticket in the gateway's format with an unknown route, an unknown
        # foreign ticket, and bytes that are no TLS at all: each closed and logged.
        for junk, why in ((client_hello(b"fgw\x00" + os.urandom(12) + os.urandom(80)),
                           "resumes no waiting session"),
                          (client_hello(os.urandom(120)), "resumes no session of this gateway"),
                          (b"GET / HTTP/1.0\r\n\r\n", "not a TLS ClientHello")):
            start = gw.mark()
            with data_socket(HOST, port) as s:
                s.sendall(junk)
                assert closed(s)
            start.wait("event=shared_port_unmatched", 5)
            assert why in start.text(), start.text()
        # The victim's own data connection still finds it.
        got = finish_retr(victim, data_socket(HOST, port), "sp-v.txt", ctx, victim.session)
        assert got == b"victim\n" * 4000
    finally:
        victim.close()


# ---------------------------------------------------------------------------------------
# Workers: a connection accepted by another worker is handed to the session's


@pytest.mark.serial  # SO_REUSEPORT spread over both workers
def test_two_workers(gateway, pyftpdlib, ports, blobs, client_ctx):
    gw = shared_gateway(gateway, pyftpdlib, ports, workers=2)
    ctx = tls13(client_ctx)
    files = {f"sp-w2-{i}.bin": pyftpdlib.put(blobs, f"sp-w2-{i}.bin", 64 * KiB + i, unique=True)
             for i in range(4)}
    errors: list[str] = []

    def worker(i: int):
        try:
            c = logged_in(control_from(HOST, gw.port, ctx), pyftpdlib)
            try:
                for k in range(10):
                    name = f"sp-w2-{(i + k) % 4}.bin"
                    if sha256_bytes(retr(c, name, ctx, expect_port=gw.shared_port)) != files[name]:
                        errors.append(f"session {i}: wrong bytes for {name}")
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001
            errors.append(f"session {i}: {e!r}")

    def workers_seen() -> set[str]:
        return set(re.findall(r"event=session_start .*worker=(\d)", gw.log))

    # The kernel spreads connections over the workers by hash: idle connections make sure
    # both workers hold a session (six sessions alone all land on one worker 1 time in 32).
    pins: list[socket.socket] = []
    try:
        for _ in range(40):
            if workers_seen() == {"0", "1"}:
                break
            pins.append(socket.create_connection((HOST, gw.port), timeout=10))
            time.sleep(0.05)
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for p in pins:
            p.close()
    assert not errors, errors
    log = gw.log
    assert matches(log, "resumption") == 60
    assert "shared_port_unmatched" not in log
    assert workers_seen() == {"0", "1"}
    assert "via=worker" in log, "no connection was handed from one worker to another"


# ---------------------------------------------------------------------------------------
# Reload: a kept port keeps its listener (a session waiting across the reload is served);
# a changed port is opened, the old one closed.


def test_reload_keeps_or_moves_the_port(gateway, pyftpdlib, ports, client_ctx):
    gw = shared_gateway(gateway, pyftpdlib, ports, workers=2)
    ctx = tls13(client_ctx)
    pyftpdlib.put_bytes("sp-r.txt", b"reload\n" * 3000)
    c = logged_in(control_from(HOST, gw.port, ctx), pyftpdlib)
    try:
        _, port = pasv(c)
        text = gw.config.read_text()
        mark = gw.mark()
        gw.config.write_text(text.replace("idle_timeout = 120", "idle_timeout = 121"))
        os.kill(gw.pid, signal.SIGHUP)
        mark.wait("event=reloaded", 10, n=2)
        got = finish_retr(c, data_socket(HOST, port), "sp-r.txt", ctx, c.session)
        assert got == b"reload\n" * 3000
        new = ports.port()
        mark = gw.mark()
        gw.config.write_text(text.replace(f"pasv_shared_port = {gw.shared_port}",
                                          f"pasv_shared_port = {new}"))
        os.kill(gw.pid, signal.SIGHUP)
        mark.wait("event=reloaded", 10, n=2)
        # The live session keeps its generation (the old port) until it ends; new ones
        # get the new port.
        d = logged_in(control_from(HOST, gw.port, ctx), pyftpdlib)
        try:
            assert retr(d, "sp-r.txt", ctx, expect_port=new) == b"reload\n" * 3000
        finally:
            d.close()
        with pytest.raises(OSError):
            socket.create_connection((HOST, gw.shared_port), timeout=5).close()
    finally:
        c.close()


def test_stock_ftplib_gets_522_when_reuse_required(gateway, pyftpdlib, ports, client_ctx):
    """Under data_session_reuse = required a client that never resumed is presumed to: alone
    on its address, its ticketless ClientHello is still given to it, and the resumption
    check answers with the clear 522 (not a bare close)."""
    gw = shared_gateway(gateway, pyftpdlib, ports)
    ctx = tls13(client_ctx)
    pyftpdlib.put_bytes("sp-522.txt", b"x" * 1000)
    c = logged_in(control_from(HOST, gw.fport("x"), ctx, implicit=False), pyftpdlib)
    try:
        _, port = pasv(c)
        assert port == gw.shared_port
        data = data_socket(HOST, port)
        code, text = c.cmd("RETR sp-522.txt")
        assert code in (125, 150), text
        tls = ctx.wrap_socket(data, server_hostname="localhost")  # no session: stock
        got, _ = recv_until_closed(tls, 10)
        assert got == b""  # closed cleanly after the handshake, nothing sent
        tls.close()
        code, text = c.reply()
        assert code == 522, text
        assert c.cmd("NOOP")[0] == 200
    finally:
        c.close()
    log = gw.log
    assert matches(log, "address") == 1 and "event=data_tls_refused" in log


def test_late_connection_after_the_wait_ended(gateway, pyftpdlib, ports, client_ctx):
    gw = shared_gateway(gateway, pyftpdlib, ports)
    gw.stop()
    gw.config.write_text(gw.config.read_text().replace("[global]\n",
                                                       "[global]\ndata_connect_timeout = 1\n"))
    gw.start()
    ctx = tls13(client_ctx)
    c = logged_in(control_from(HOST, gw.port, ctx), pyftpdlib)
    try:
        _, port = pasv(c)
        gw.mark(0).wait("event=data_listener_timeout", 10)
        start = gw.mark()
        with data_socket(HOST, port) as s:
            assert closed(s)
        start.wait("event=shared_port_unmatched", 5)
        assert "no session from this address waits" in start.text()
        assert c.cmd("NOOP")[0] == 200
    finally:
        c.close()


# ---------------------------------------------------------------------------------------
# Behind a load balancer (proxy_protocol_data): the shared port's connections come from the
# balancer (127.0.0.1 here) with a PROXY header naming the client; the header's source is
# the client for the match and for the session's passive source check.

PP_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def pp_header(src: str, dst_port: int, version: int = 2, local: bool = False) -> bytes:
    if version == 1:
        return f"PROXY TCP4 {src} {HOST} 40000 {dst_port}\r\n".encode()
    if local:
        return PP_SIG + bytes([0x20, 0x00, 0, 0])
    body = socket.inet_aton(src) + socket.inet_aton(HOST) + struct.pack("!HH", 40000, dst_port)
    return PP_SIG + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def pp_gateway(gateway, backend, ports, admin_port=None, workers=1):
    sp = ports.port()
    keys = {"pasv_shared_port": sp, "proxy_protocol": "v2", "proxy_protocol_from": HOST,
            "proxy_protocol_data": "yes"}
    glob = {"workers": workers}
    if admin_port:
        glob["admin_listen"] = f"{HOST}:{admin_port}"
    gw = gateway(backend, extra={"frontend fe": keys, "global": glob})
    gw.shared_port = sp
    wait_shared_port(gw)
    return gw


def balanced_control(src: str, port: int, ctx: ssl.SSLContext) -> Control:
    """An implicit control connection through a pretend balancer: from 127.0.0.1, with a
    v2 header naming src."""
    raw = socket.create_connection((HOST, port), timeout=20)
    raw.sendall(pp_header(src, port))
    c = Control(ctx.wrap_socket(raw, server_hostname="localhost"), 20)
    assert c.reply()[0] == 220
    return c


def balanced_data(src: str, port: int, version: int = 2, local_src: str = HOST,
                  local: bool = False) -> socket.socket:
    s = data_socket(local_src, port)
    s.sendall(pp_header(src, port, version, local))
    return s


@pytest.mark.parametrize("workers", [1, 2])
def test_behind_a_balancer_two_clients_crossed_timing(gateway, pyftpdlib, ports, client_ctx,
                                                      workers):
    """Two clients behind one balancer (one TCP peer), with different header sources and
    with the same one: both wait before either connects, the later one connects first;
    each gets its own file (SHA-256), the log names the header's source and the balancer.
    Two workers: a connection accepted by the other worker is handed over with its header's
    source."""
    gw = pp_gateway(gateway, pyftpdlib, ports, workers=workers)
    ctx = tls13(client_ctx)
    body = {"a": os.urandom(70000), "b": os.urandom(90000)}
    for k, v in body.items():
        pyftpdlib.put_bytes(f"spp-{k}.bin", v)
    for sa, sb in (("127.0.0.5", "127.0.0.6"), ("127.0.0.7", "127.0.0.7")):
        a = logged_in(balanced_control(sa, gw.port, ctx), pyftpdlib)
        b = logged_in(balanced_control(sb, gw.port, ctx), pyftpdlib)
        try:
            for _ in range(3 if workers == 1 else 6):
                _, pa = pasv(a)
                _, pb = pasv(b)
                assert pa == pb == gw.shared_port
                db = balanced_data(sb, pb)
                da = balanced_data(sa, pa)
                got_b = finish_retr(b, db, "spp-b.bin", ctx, b.session)
                got_a = finish_retr(a, da, "spp-a.bin", ctx, a.session)
                assert sha256_bytes(got_b) == sha256_bytes(body["b"])
                assert sha256_bytes(got_a) == sha256_bytes(body["a"])
        finally:
            a.close()
            b.close()
    log = gw.log
    assert "shared_port_unmatched" not in log and "data_refused" not in log
    assert matches(log, "resumption") + matches(log, "address") == (12 if workers == 1 else 24)
    if workers == 2:
        assert "via=worker balancer=127.0.0.1" in log and "via=direct balancer=" in log
    for src in ("127.0.0.5", "127.0.0.6", "127.0.0.7"):
        assert re.search(rf"event=shared_port_match peer={src}:40000 .*balancer=127\.0\.0\.1",
                         log), src


def shared_metric(admin_port: int, match: str) -> int:
    import urllib.request
    with urllib.request.urlopen(f"http://{HOST}:{admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf'^ftpsgate_shared_port_connections_total\{{match="{match}"\}} (\d+)$', text,
                  re.M)
    return int(m.group(1)) if m else -1


def test_behind_a_balancer_strays(gateway, pyftpdlib, ports, client_ctx):
    """A header naming a source with no waiting session, no header, a LOCAL header, a v1
    header where v2 is expected, a header from outside proxy_protocol_from: each closed,
    logged and counted as unmatched; the waiting session is unaffected."""
    aport = ports.port()
    gw = pp_gateway(gateway, pyftpdlib, ports, admin_port=aport)
    gw.started()
    ctx = tls13(client_ctx)
    victim_bytes = os.urandom(50000)
    pyftpdlib.put_bytes("spp-v.bin", victim_bytes)
    victim = logged_in(balanced_control("127.0.0.5", gw.port, ctx), pyftpdlib)
    try:
        _, port = pasv(victim)
        got = finish_retr(victim, balanced_data("127.0.0.5", port), "spp-v.bin", ctx,
                          victim.session)
        assert sha256_bytes(got) == sha256_bytes(victim_bytes)
        _, port = pasv(victim)
        assert port == gw.shared_port
        before = shared_metric(aport, "unmatched")
        hello = client_hello(os.urandom(120))
        cases = [
            (lambda: balanced_data("127.0.0.9", port), "no session from this address waits"),
            (lambda: data_socket(HOST, port), "not a PROXY header"),
            (lambda: balanced_data("127.0.0.5", port, local=True), "PROXY LOCAL header"),
            (lambda: balanced_data("127.0.0.5", port, version=1),
             "v1 header where v2 is expected"),
            (lambda: balanced_data("127.0.0.5", port, local_src="127.0.0.2"),
             "not in proxy_protocol_from"),
        ]
        for open_it, why in cases:
            start = gw.mark()
            with open_it() as s:
                try:
                    s.sendall(hello)
                except OSError:
                    pass
                assert closed(s)
            start.wait(re.escape(why), 5)
            assert "event=shared_port_unmatched" in start.text()
        assert shared_metric(aport, "unmatched") - before == len(cases)
        # The victim's own data connection still finds it.
        got = finish_retr(victim, balanced_data("127.0.0.5", port), "spp-v.bin", ctx,
                          victim.session)
        assert sha256_bytes(got) == sha256_bytes(victim_bytes)
    finally:
        victim.close()
    assert "data_refused" not in gw.log


def test_behind_a_balancer_config_must_agree(workdir):
    """Frontends sharing one pasv_shared_port must agree on proxy_protocol_data (one
    acceptor reads the port's connections before any frontend is known)."""
    import subprocess
    import peers
    conf = workdir / "spp-bad.ini"
    conf.write_text("[frontend a]\nlisten = 127.0.0.1:2100\nmode = implicit\n"
                    "pasv_shared_port = 2200\nproxy_protocol = v2\n"
                    "proxy_protocol_from = 127.0.0.1\nproxy_protocol_data = yes\n"
                    "[frontend b]\nlisten = 127.0.0.1:2101\nmode = explicit\n"
                    "pasv_shared_port = 2200\n"
                    "[backend b]\naddress = 127.0.0.1:21\n")
    r = subprocess.run([str(peers.GATEWAY_BIN), "-t", "-c", str(conf)], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "proxy_protocol_data" in r.stderr, r.stderr


def test_behind_a_balancer_reload_switches_the_header(gateway, pyftpdlib, ports, client_ctx):
    """A reload that turns proxy_protocol_data off keeps the shared port's listener and
    stops expecting a header there: a new session's client connects straight (from the
    control header's source) and transfers; the balancer's connection (now taken for a
    client at 127.0.0.1) matches nothing."""
    gw = pp_gateway(gateway, pyftpdlib, ports, workers=2)
    ctx = tls13(client_ctx)
    body = os.urandom(40000)
    pyftpdlib.put_bytes("spp-r.bin", body)
    c = logged_in(balanced_control("127.0.0.5", gw.port, ctx), pyftpdlib)
    try:
        _, port = pasv(c)
        got = finish_retr(c, balanced_data("127.0.0.5", port), "spp-r.bin", ctx, c.session)
        assert sha256_bytes(got) == sha256_bytes(body)
    finally:
        c.close()
    mark = gw.mark()
    gw.config.write_text(gw.config.read_text().replace("proxy_protocol_data = yes",
                                                       "proxy_protocol_data = no"))
    os.kill(gw.pid, signal.SIGHUP)
    mark.wait("event=reloaded", 10, n=2)
    c = logged_in(balanced_control("127.0.0.5", gw.port, ctx), pyftpdlib)
    try:
        _, port = pasv(c)
        assert port == gw.shared_port
        start = gw.mark()
        with balanced_data("127.0.0.5", port) as s:
            assert closed(s)
        start.wait(r"peer=127\.0\.0\.1:", 5)
        start.wait("no session from this address waits", 5)
        got = finish_retr(c, data_socket("127.0.0.5", port), "spp-r.bin", ctx, c.session)
        assert sha256_bytes(got) == sha256_bytes(body)
    finally:
        c.close()
