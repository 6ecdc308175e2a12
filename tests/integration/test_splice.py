"""Clear-to-clear data relays with splice(2) ([global] splice = no | downloads | yes): the
bytes and their count arrive whole both ways, the log names the path taken, and a transfer
cut in the middle (client killed, ABOR, backend gone) leaves no descriptor behind (the
splice relay holds two duplicates and a pipe per transfer)."""

from __future__ import annotations

import ftplib
import hashlib
import re
import time

import pytest

import peers
from peers import (HOST, KiB, MiB, check, kill_after_progress, put_sparse, run, sha256_file)

SIZE = 24 * MiB + 12345  # not a multiple of the pipe, the read size or a page


def curl(*args):
    """curl without peers.curl's --ssl-reqd: the data connections here are in clear."""
    return run(["curl", "-sS", "--globoff", "-k", "--ftp-pasv", "--max-time", "120",
                *map(str, args)], timeout=150)


def relay_paths(log: str) -> list[tuple[str, str]]:
    return re.findall(r"event=data_relay direction=(\w+) path=(\w+)", log)


def done_bytes(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"event=data_done direction=\w+ bytes=(\d+)", log)]


@pytest.mark.parametrize("splice", ["no", "downloads", "yes"])
@pytest.mark.parametrize("front", ["plain", "protc"])
def test_clear_relay_both_ways(gateway, backend, blobs, tmp_path, splice, front):
    """curl RETR and STOR through a plain frontend and an implicit one with PROT C: SHA-256
    of both files, the byte count in the log, and splice exactly where configured."""
    gw = gateway(backend, extra={"global": {"splice": splice}},
                 frontends={"p": peers.frontend("plain"),
                            "c": peers.frontend("implicit", require_prot_p=False)})
    name = f"splice-{splice}-{front}"
    down = backend.put(blobs, f"{name}.bin", SIZE, unique=True)
    src = tmp_path / "up.bin"
    up = blobs.unique(src, SIZE)
    got = tmp_path / "down.bin"
    if front == "plain":
        base = gw.ftp_url("p", "", backend.user, backend.password)
        opts = []
    else:
        base = f"ftps://{backend.user}:{backend.password}@{HOST}:{gw.fport('c')}/"
        opts = ["--ftp-ssl-control"]  # TLS on the control connection only: PROT C
    mark = gw.mark()
    check(curl(*opts, "-o", got, base + f"{name}.bin"))
    check(curl(*opts, "-T", src, base + f"{name}-up.bin"))
    assert sha256_file(got) == down
    assert sha256_file(backend.path(f"{name}-up.bin")) == up
    log = mark.text()
    want = {"no": ("copy", "copy"), "downloads": ("splice", "copy"),
            "yes": ("splice", "splice")}[splice]
    assert relay_paths(log) == [("download", want[0]), ("upload", want[1])], log
    assert done_bytes(log) == [SIZE, SIZE], log


def test_protected_legs_never_splice(gateway, backend, blobs, tmp_path):
    """PROT P: the client leg is TLS, so the relay copies through OpenSSL whatever the key."""
    gw = gateway(backend, extra={"global": {"splice": "yes"}})
    digest = backend.put(blobs, "splice-protp.bin", 1 * MiB, unique=True)
    mark = gw.mark()
    check(curl("--ssl-reqd", "-o", tmp_path / "p.bin",
               gw.url("splice-protp.bin", backend.user, backend.password)))
    assert sha256_file(tmp_path / "p.bin") == digest
    assert relay_paths(mark.text()) == [("download", "copy")]


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_client_killed_mid_splice(gateway, backend, blobs, tmp_path, direction):
    """curl killed while a spliced transfer runs: the gateway's descriptors (legs, their
    duplicates, the pipe) are back to the count before it, and the next transfer works."""
    gw = gateway(backend, extra={"global": {"splice": "yes"}},
                 frontends={"p": peers.frontend("plain")})
    put_sparse(backend, "splice-big.bin", 512 * MiB)
    digest = backend.put(blobs, "splice-after.bin", 1 * MiB, unique=True)
    src = tmp_path / "src.bin"
    with open(src, "wb") as f:
        f.truncate(512 * MiB)
    check(curl("-o", tmp_path / "warm.bin", gw.ftp_url("p", "splice-after.bin",
                                                       backend.user, backend.password)))
    baseline = gw.settled_fd_count()
    name_up = f"splice-killed-{direction}.bin"
    backend.path(name_up).unlink(missing_ok=True)
    got = tmp_path / "got.bin"
    url = gw.ftp_url("p", "splice-big.bin" if direction == "download" else name_up,
                     backend.user, backend.password)
    args = ["curl", "-sS", "--ftp-pasv", "--limit-rate", "4M",
            *(["-o", str(got), url] if direction == "download" else ["-T", str(src), url])]
    mark = gw.mark()
    kill_after_progress(args, got if direction == "download" else backend.path(name_up),
                        512 * KiB)
    assert relay_paths(mark.text()) == [(direction, "splice")]
    now = gw.wait_fd_count(baseline, timeout=8)
    assert now == baseline, f"gateway fds: {now}, {baseline} before the transfer"
    mark.wait(r"event=data_failed|event=session_end", 10)
    check(curl("-o", tmp_path / "after.bin", gw.ftp_url("p", "splice-after.bin",
                                                        backend.user, backend.password)))
    assert sha256_file(tmp_path / "after.bin") == digest


def test_abor_mid_splice(gateway, backend, blobs):
    """ABOR while a spliced download runs: 426 then 226/225, then a whole transfer on the
    same session."""
    gw = gateway(backend, extra={"global": {"splice": "yes"}},
                 frontends={"p": peers.frontend("plain")})
    put_sparse(backend, "splice-big.bin", 512 * MiB)
    digest = backend.put(blobs, "splice-after.bin", 1 * MiB, unique=True)
    ftp = ftplib.FTP()
    ftp.connect(HOST, gw.fport("p"), timeout=30)
    ftp.login(backend.user, backend.password)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR splice-big.bin")
    got = 0
    while got < 2 * MiB:
        chunk = conn.recv(256 * KiB)
        assert chunk, "data connection ended early"
        got += len(chunk)
    started = time.monotonic()
    ftp.sock.sendall(b"ABOR\r\n")
    conn.close()
    first = ftp.getmultiline()
    second = ftp.getmultiline() if first[:3] == "426" else ""
    assert first[:3] in ("426", "226"), (first, second)
    assert time.monotonic() - started < 4
    h = hashlib.sha256()
    ftp.retrbinary("RETR splice-after.bin", h.update)
    assert h.hexdigest() == digest
    ftp.quit()
