"""Allocation failures in accept (README "Faults"): a connection the gateway cannot serve
for lack of memory is closed, and the listener goes on accepting.

The gateway runs under tests/tools/failalloc.c (LD_PRELOAD): while the trigger file exists
the next calloc fails and the file is removed, so exactly one allocation fails, the first
one the test's connection causes (an idle gateway allocates nothing). libuv stops watching
a listener whose connection callback returned without uv_accept(); before the fix a single
failure stopped a frontend for good, and a data listener until its timeout.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from peers import (HOST, KiB, REPO, ftplib_download, ftplib_session, parse_227, sha256_bytes,
                   sha256_file, wait_for)

PAYLOAD = bytes(range(256)) * (64 * KiB // 256)
CONNECT_TIMEOUT = 20  # data_connect_timeout: far longer than the tests wait for a reply
QUICK = 5  # seconds within which the gateway must react to the failure


@pytest.fixture(scope="module")
def shim(workdir):
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build tests/tools/failalloc.c")
    # In this test process's own directory: parallel workers building one build/failalloc.so
    # preloaded each other's half-written file.
    out = workdir / "failalloc.so"
    subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-O2",
                    "-o", str(out), str(REPO / "tests" / "tools" / "failalloc.c"), "-ldl"],
                   check=True)
    ldd = subprocess.run(["ldd", str(REPO / "build" / "ftpsgate")], capture_output=True,
                         text=True)
    if "libasan" in ldd.stdout:
        pytest.skip("ASan build: its allocator must come first in LD_PRELOAD")
    return out


@pytest.fixture
def failing_gateway(gateway, pyftpdlib, shim, tmp_path, monkeypatch):
    """A gateway in front of pyftpdlib under the shim; returns (gateway, trigger path,
    skip setter). The shim reads its environment once, so each gateway has one skip."""
    pyftpdlib.put_bytes("alloc.bin", PAYLOAD)
    trigger = tmp_path / "failalloc.trigger"

    def start(skip: int = 0):
        with monkeypatch.context() as m:
            m.setenv("LD_PRELOAD", str(shim))
            m.setenv("FAILALLOC_TRIGGER", str(trigger))
            m.setenv("FAILALLOC_SKIP", str(skip))
            return gateway(pyftpdlib, extra={"global": {"data_connect_timeout":
                                                        CONNECT_TIMEOUT}})
    return start, trigger


def fail_next_alloc(trigger, connect):
    """Arm the shim, make the connection, wait until the shim has failed an allocation."""
    trigger.touch()
    sock = connect()
    wait_for(lambda: not trigger.exists(), QUICK, "the shim to fail an allocation")
    return sock


def closed_soon(sock: socket.socket) -> bool:
    """True if the peer closes the connection within QUICK seconds (EOF or reset)."""
    sock.settimeout(QUICK)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    finally:
        sock.close()


def download_ok(gw, test_user, client_ctx, dest):
    with ftplib_session(gw.port, *test_user, client_ctx, timeout=QUICK) as ftp:
        ftplib_download(ftp, "alloc.bin", dest)
    assert sha256_file(dest) == sha256_bytes(PAYLOAD)


# skip=0: the listener's entry for the new session (its counters and list link) fails;
# skip=1: the client connection's (gw_conn_new) does, after the entry was allocated.
@pytest.mark.parametrize("skip", [0, 1], ids=["session", "conn"])
def test_frontend_accept_survives_alloc_failure(failing_gateway, test_user, client_ctx,
                                                tmp_path, skip):
    start, trigger = failing_gateway
    gw = start(skip)
    download_ok(gw, test_user, client_ctx, tmp_path / "before.bin")
    baseline = gw.settled_fd_count()
    cur = gw.mark()

    sock = fail_next_alloc(trigger, lambda: socket.create_connection((HOST, gw.port), QUICK))
    # The frontend still accepts: a full session with a transfer.
    download_ok(gw, test_user, client_ctx, tmp_path / "after.bin")
    assert closed_soon(sock), "the connection that hit the failure was left hanging"
    cur.wait(r'event=accept_failed .*reason="out of memory"', QUICK)
    assert gw.wait_fd_count(baseline) == baseline, cur.text()


def test_data_accept_survives_alloc_failure(failing_gateway, test_user, client_ctx,
                                            tmp_path):
    start, trigger = failing_gateway
    gw = start()
    baseline = gw.settled_fd_count()
    cur = gw.mark()

    with ftplib_session(gw.port, *test_user, client_ctx, timeout=QUICK) as ftp:
        host, port = parse_227(ftp.sendcmd("PASV"))
        data = fail_next_alloc(trigger, lambda: socket.create_connection((host, port), QUICK))
        assert closed_soon(data), "the data connection that hit the failure was left hanging"
        cur.wait(r'event=accept_failed .*reason="out of memory"', QUICK)

        # The transfer cannot use that channel: a clear final reply, at once.
        started = time.monotonic()
        ftp.sock.settimeout(QUICK)
        ftp.putcmd("RETR alloc.bin")
        resp = ""
        while not (resp[3:4] == " " and resp[:1] in "2345"):  # skip 1xx and continuations
            try:
                resp = ftp.getline()
            except (socket.timeout, TimeoutError):
                pytest.fail(f"no final reply to RETR within {QUICK} s")
        assert resp[:3] in ("425", "426"), resp
        assert time.monotonic() - started < QUICK

        # The next PASV and transfer on the same session work.
        ftp.sock.settimeout(30)
        dest = tmp_path / "after.bin"
        ftplib_download(ftp, "alloc.bin", dest)
        assert sha256_file(dest) == sha256_bytes(PAYLOAD)

    assert gw.wait_fd_count(baseline) == baseline, cur.text()
