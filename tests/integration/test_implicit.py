"""The implicit FTPS frontend in front of each plain backend (PROTOCOL.md §2, §4, §5).

Real clients (curl, lftp, Python ftplib) for transfers; raw sockets + ssl for the
byte-exact rules of MS-FTPS.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from peers import (HOST, KiB, MiB, Control, check, curl, ftplib_download, ftplib_session,
                   ftplib_upload, lftp, parse_227, recv_until_closed, sha256_file)

CLIENTS = ["curl", "lftp", "ftplib"]
SIZES = [pytest.param(1 * MiB, id="1MiB"), pytest.param(64 * MiB, id="64MiB")]


# ---------------------------------------------------------------------------------------
# One operation, done by each real client


def client_list(client, gw, backend, ctx, path) -> str:
    user, password = backend.user, backend.password
    if client == "curl":
        return check(curl(gw.url(path + "/", user, password))).stdout
    if client == "lftp":
        return check(lftp(f"ftps://{HOST}:{gw.port}", user, password, [f"cls -1 {path}"])).stdout
    lines: list[str] = []
    with ftplib_session(gw.port, user, password, ctx) as ftp:
        ftp.retrlines(f"LIST {path}", lines.append)
    return "\n".join(lines)


def client_download(client, gw, backend, ctx, name, dest):
    user, password = backend.user, backend.password
    if client == "curl":
        check(curl("-o", dest, gw.url(name, user, password)))
    elif client == "lftp":
        check(lftp(f"ftps://{HOST}:{gw.port}", user, password, [f"get {name} -o {dest}"]))
    else:
        with ftplib_session(gw.port, user, password, ctx) as ftp:
            ftplib_download(ftp, name, dest)


def client_upload(client, gw, backend, ctx, src, name):
    user, password = backend.user, backend.password
    if client == "curl":
        check(curl("-T", src, gw.url(name, user, password)))
    elif client == "lftp":
        check(lftp(f"ftps://{HOST}:{gw.port}", user, password, [f"put {src} -o {name}"]))
    else:
        with ftplib_session(gw.port, user, password, ctx) as ftp:
            ftplib_upload(ftp, src, name)


# ---------------------------------------------------------------------------------------
# Transfers with real clients


@pytest.mark.parametrize("client", CLIENTS)
def test_list_directory(gw, backend, client_ctx, client):
    folder = backend.path("list-dir")
    folder.mkdir(exist_ok=True)
    for name in ("alpha.txt", "beta.bin"):
        backend.put_bytes(f"list-dir/{name}", name.encode() * 10)
    listing = client_list(client, gw, backend, client_ctx, "list-dir")
    assert "alpha.txt" in listing and "beta.bin" in listing, listing


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("client", CLIENTS)
def test_download(gw, backend, client_ctx, blobs, scratch, client, size):
    name = f"down-{size}.bin"
    if not backend.path(name).exists():
        backend.put(blobs, name, size)
    digest = sha256_file(backend.path(name))
    dest = scratch / name
    client_download(client, gw, backend, client_ctx, name, dest)
    assert dest.stat().st_size == size
    assert sha256_file(dest) == digest


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("client", CLIENTS)
def test_upload(gw, backend, client_ctx, blobs, scratch, client, size):
    src = scratch / "upload.bin"
    digest = blobs.copy_to(src, size)
    name = f"up-{client}-{size}.bin"
    client_upload(client, gw, backend, client_ctx, src, name)
    arrived = backend.path(name)
    assert arrived.stat().st_size == size
    assert sha256_file(arrived) == digest
    arrived.unlink()


# A local prefix that differs from the remote file proves that only the rest was fetched:
# a client that downloaded everything again would not keep the zeros.
RESUME_SIZE, RESUME_FROM = 4 * MiB, 1_500_000


def _resume_setup(backend, blobs, scratch, name):
    backend.put(blobs, name, RESUME_SIZE, unique=True)
    remote = backend.path(name).read_bytes()
    local = scratch / name
    local.write_bytes(b"\0" * RESUME_FROM)
    return local, b"\0" * RESUME_FROM + remote[RESUME_FROM:]


def test_resume_download_curl(gw, backend, blobs, scratch):
    local, expected = _resume_setup(backend, blobs, scratch, "resume-curl.bin")
    check(curl("-C", "-", "-o", local, gw.url("resume-curl.bin", backend.user,
                                               backend.password)))
    assert local.read_bytes() == expected


def test_resume_download_ftplib(gw, backend, client_ctx, blobs, scratch):
    local, expected = _resume_setup(backend, blobs, scratch, "resume-ftplib.bin")
    with ftplib_session(gw.port, backend.user, backend.password, client_ctx) as ftp:
        ftplib_download(ftp, "resume-ftplib.bin", local, rest=RESUME_FROM)
    assert local.read_bytes() == expected


def test_parallel_sessions(gw, backend, client_ctx, blobs, scratch):
    """20 sessions at once, each downloading and uploading its own distinct file."""
    n = 20
    down = {i: backend.put(blobs, f"par-down-{i}.bin", 1 * MiB, unique=True) for i in range(n)}
    up = {i: blobs.unique(scratch / f"par-up-{i}.bin", 1 * MiB) for i in range(n)}
    start = threading.Barrier(n, timeout=30)

    def session(i):
        start.wait()
        with ftplib_session(gw.port, backend.user, backend.password, client_ctx,
                            timeout=60) as ftp:
            ftplib_download(ftp, f"par-down-{i}.bin", scratch / f"par-got-{i}.bin")
            ftplib_upload(ftp, scratch / f"par-up-{i}.bin", f"par-up-{i}.bin")

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(session, i) for i in range(n)]
        errors = [f"session {i}: {f.exception()!r}" for i, f in enumerate(futures)
                  if f.exception()]
    assert not errors, "\n".join(errors)
    for i in range(n):
        assert sha256_file(scratch / f"par-got-{i}.bin") == down[i], f"download {i}"
        assert sha256_file(backend.path(f"par-up-{i}.bin")) == up[i], f"upload {i}"


def test_fd_count_back_to_baseline(gateway, backend, client_ctx, blobs, scratch):
    gw = gateway(backend)
    backend.put(blobs, "fd-down.bin", 1 * MiB)
    src = scratch / "fd-up.bin"
    blobs.copy_to(src, 256 * KiB)

    def one_session():
        with ftplib_session(gw.port, backend.user, backend.password, client_ctx) as ftp:
            ftp.retrlines("LIST", lambda line: None)
            ftplib_download(ftp, "fd-down.bin", scratch / "fd-got.bin")
            ftplib_upload(ftp, src, "fd-up.bin")

    one_session()  # warm-up: files opened lazily on first use count from here on
    baseline = gw.settled_fd_count()
    one_session()
    assert gw.wait_fd_count(baseline, timeout=5) == baseline, os.listdir(f"/proc/{gw.pid}/fd")


# ---------------------------------------------------------------------------------------
# MS-FTPS, byte by byte


def test_silent_until_handshake_then_backend_greeting(gw, backend, client_ctx):
    raw = socket.create_connection((HOST, gw.port), timeout=10)
    try:
        time.sleep(1)  # the rule is about silence: give the gateway a chance to break it
        raw.setblocking(False)
        try:
            early = raw.recv(4096, socket.MSG_PEEK)
        except BlockingIOError:
            early = None
        assert early is None, (f"before the TLS handshake the gateway sent {early!r}" if early
                               else "the gateway closed the connection before the handshake")
        raw.settimeout(10)
        ctl = Control(client_ctx.wrap_socket(raw, server_hostname="localhost"))
    except BaseException:
        raw.close()
        raise
    try:
        assert ctl.line() == f"220 {backend.banner}".encode()
    finally:
        ctl.close()


@pytest.fixture
def ctl(gw, client_ctx):
    """An implicit control connection past the greeting."""
    c = Control.implicit(gw.port, client_ctx)
    code, text = c.reply()
    assert code == 220, text
    yield c
    c.close()


@pytest.mark.parametrize("command, code", [
    ("AUTH TLS", 503), ("AUTH SSL", 503), ("CCC", 534),
    ("PBSZ 0", 200), ("PROT P", 200), ("PROT C", 200),
])
def test_security_commands(ctl, backend, command, code):
    """Answered by the gateway itself, before and after login; the session goes on."""
    got, text = ctl.cmd(command)
    assert got == code, text
    ctl.login(backend.user, backend.password)
    got, text = ctl.cmd(command)
    assert got == code, text
    assert ctl.cmd("QUIT")[0] == 221


def test_prot_c_transfer_refused(ctl, backend):
    """require_prot_p (default yes): a transfer under PROT C gets 521 before any 1yz."""
    ctl.login(backend.user, backend.password)
    assert ctl.cmd("PROT C")[0] == 200
    code, text = ctl.cmd("PASV")
    assert code == 227, text
    code, text = ctl.cmd("LIST")
    assert code == 521, text
    assert ctl.cmd("NOOP")[0] == 200


def test_backend_down_gets_421_inside_tls(gateway, ports, client_ctx):
    closed_port = ports.port()  # allocated to us, nothing listens on it
    gw = gateway(backend_address=f"{HOST}:{closed_port}")
    ctl = Control.implicit(gw.port, client_ctx)  # the handshake itself must succeed
    try:
        ctl.gets_421_then_close()
    finally:
        ctl.close()


def test_garbage_instead_of_client_hello(gw, backend, client_ctx):
    with socket.create_connection((HOST, gw.port), timeout=10) as raw:
        raw.sendall(b"GARBAGE\r\n" + bytes(range(256)) * 4)
        data, ended = recv_until_closed(raw, timeout=10)
    assert ended in ("eof", "reset"), "the gateway kept a garbage connection open"
    # Nothing in clear: at most a TLS alert record (content type 21).
    assert data == b"" or data[0] == 0x15, f"gateway answered garbage with {data[:80]!r}"
    assert gw.alive()
    with ftplib_session(gw.port, backend.user, backend.password, client_ctx) as ftp:
        assert ftp.voidcmd("NOOP").startswith("200")


def test_long_command_line(ctl, backend):
    ctl.login(backend.user, backend.password)
    ctl.send(b"NOOP " + b"x" * (100 * KiB) + b"\r\n")
    code, text = ctl.reply()
    assert code == 500, text[:200]
    assert ctl.cmd("NOOP")[0] == 200
    code, text = ctl.cmd("PWD")  # still relayed to the backend
    assert code == 257, text


def test_pipelined_replies_keep_order(ctl, gw, backend):
    """One ordered queue: TYPE's 200 (relayed) comes before PASV's 227 (local)."""
    ctl.login(backend.user, backend.password)
    ctl.send(b"TYPE I\r\nPASV\r\n")
    first, second = ctl.reply(), ctl.reply()
    assert (first[0], second[0]) == (200, 227), (first, second)
    host, port = parse_227(second[1])
    assert host == HOST
    lo, hi = gw.pasv_ports
    assert lo <= port <= hi, f"227 names port {port}, outside the gateway's {lo}-{hi}"


def connect_and_read(host, port, source):
    """Connect from `source`, read until the peer closes: (bytes, how it ended). A reset
    can arrive while connect() is still waiting: that is a refusal too."""
    try:
        sock = socket.create_connection((host, port), timeout=10, source_address=(source, 0))
    except (ConnectionResetError, ConnectionRefusedError):
        return b"", "refused"
    with sock:
        return recv_until_closed(sock, timeout=10)


def test_passive_port_theft_refused(ctl, gw, backend, client_ctx):
    backend.put_bytes("theft-check.txt", b"only for the real client\n")
    ctl.login(backend.user, backend.password)
    code, text = ctl.cmd("PASV")
    assert code == 227, text
    host, port = parse_227(text)

    stolen, ended = connect_and_read(host, port, source="127.0.0.2")
    assert ended in ("refused", "eof", "reset") and stolen == b"", (ended, stolen[:80])

    data = socket.create_connection((host, port), timeout=10)
    with data:
        code, text = ctl.cmd("LIST")
        assert code in (125, 150), text
        with client_ctx.wrap_socket(data, server_hostname="localhost",
                                    session=ctl.session) as tls:
            listing, ended = recv_until_closed(tls, timeout=20)
            assert ended == "eof", ended
            assert tls.session_reused
    code, text = ctl.reply()
    assert code == 226, text
    assert b"theft-check.txt" in listing
    assert "127.0.0.2" in gw.log, "the refused data connection was not logged"
