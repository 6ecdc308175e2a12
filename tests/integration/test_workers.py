"""[global] workers: several event loops, each listening on every frontend address with
SO_REUSEPORT. Sessions land on every worker and their files arrive whole, the process-wide
limits hold across workers, SIGHUP reaches every worker (a frontend added by a reload
answers on all of them), and SIGTERM stops them all with status 0 (checked when the
factory stops the gateway). Reload is also checked with one worker."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import peers
from peers import HOST, MiB, Control, check, curl, render_ini, sha256_file


def workers_of(log: str) -> set[str]:
    """The workers that took a connection (started or refused a session)."""
    return set(re.findall(r"event=session_(?:start|refused) .* worker=(\d+)", log))


@pytest.mark.serial  # SO_REUSEPORT spread over both workers
def test_sessions_spread_over_workers(gateway, backend, blobs, tmp_path):
    gw = gateway(backend, extra={"global": {"workers": 2}}).started()
    assert "event=workers count=2" in gw.log
    digest = backend.put(blobs, "workers-down.bin", 4 * MiB, unique=True)
    src = tmp_path / "up.bin"
    up = blobs.unique(src, 4 * MiB)

    def one(i):
        got = tmp_path / f"d{i}.bin"
        check(curl("-o", got, gw.url("workers-down.bin", backend.user, backend.password)))
        check(curl("-T", src, gw.url(f"workers-up-{i}.bin", backend.user, backend.password)))
        return sha256_file(got), sha256_file(backend.path(f"workers-up-{i}.bin"))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    assert results == [(digest, up)] * 16
    # 32 connections hashed over two listening sockets: both workers served some.
    assert workers_of(gw.log) == {"0", "1"}, gw.log[-3000:]


@pytest.mark.serial  # SO_REUSEPORT spread over the workers
def test_limits_are_process_wide(gateway, backend, client_ctx):
    """max_sessions_per_ip = 3 with 4 workers: the fourth to eighth connections are refused
    whichever worker took them; closing one frees a place."""
    gw = gateway(backend, extra={"global": {"workers": 4, "max_sessions_per_ip": 3}}).started()
    held, refused = [], 0
    try:
        for _ in range(8):
            try:
                c = Control.implicit(gw.port, client_ctx)
                if c.reply()[0] == 220:
                    held.append(c)
                    continue
                c.close()
            except (OSError, ConnectionError):
                pass
            refused += 1
        assert (len(held), refused) == (3, 5)
        assert len(workers_of(gw.log)) >= 2, "all 8 connections went to one worker"
        held.pop().close()
        time.sleep(0.5)
        c = Control.implicit(gw.port, client_ctx)
        held.append(c)
        assert c.reply()[0] == 220
    finally:
        for c in held:
            c.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_reaches_every_worker(gateway, backend, ports, workers):
    """SIGHUP with a frontend added: it answers on every connection (each worker opened its
    listener), the old frontend still works, and a broken file changes nothing."""
    gw = gateway(backend, extra={"global": {"workers": workers}}).started()
    text = gw.config.read_text()
    new_port = ports.port()
    gw.config.write_text(text + render_ini({"frontend added": {
        "listen": f"{HOST}:{new_port}", "mode": "plain", "backend": "be",
        "pasv_ports": f"{gw.pasv_ports[0]}-{gw.pasv_ports[1]}"}}))
    mark = gw.mark()
    os.kill(gw.pid, signal.SIGHUP)
    try:
        mark.wait("event=reloaded", 10, n=workers)
        assert mark.count("event=reloaded") == workers
    except AssertionError:
        pytest.fail("not every worker reloaded:\n" + mark.text())
    for _ in range(12):
        with socket.create_connection((HOST, new_port), timeout=10) as s:
            assert s.recv(4096).startswith(b"220")
    check(curl("-o", "/dev/null", gw.url("", backend.user, backend.password)))
    # A broken file: the running configuration stays.
    gw.config.write_text(text + "[frontend broken]\nlisten = nowhere\n")
    mark = gw.mark()
    os.kill(gw.pid, signal.SIGHUP)
    mark.wait("event=reload_failed", 10)
    with socket.create_connection((HOST, new_port), timeout=10) as s:
        assert s.recv(4096).startswith(b"220")
    gw.config.write_text(text)


def test_workers_auto(gateway, backend):
    gw = gateway(backend, extra={"global": {"workers": "auto"}}).started()
    n = len(os.sched_getaffinity(0))  # what uv_available_parallelism() counts
    assert f"workers={n}" in gw.log, gw.log[-2000:]
    check(curl("-o", "/dev/null", gw.url("", backend.user, backend.password)))


def test_second_sigterm_with_a_finished_worker(gateway, backend, client_ctx):
    """SIGTERM with one idle worker (it finishes at once) and one holding a session (it
    waits for shutdown_grace): a second SIGTERM closes that session at once and the gateway
    exits 0, whichever worker had finished."""
    gw = gateway(backend, extra={"global": {"workers": 2, "shutdown_grace": 30}}).started()
    held = []
    try:
        c = Control.implicit(gw.port, client_ctx)  # one session: one worker busy, one idle
        held.append(c)
        assert c.reply()[0] == 220
        gw.proc.send_signal(signal.SIGTERM)
        gw.mark(0).wait("event=stopping worker=", 10, n=2)
        assert gw.mark(0).count("event=stopping worker=") == 2
        time.sleep(0.5)  # the idle worker is done by now
        assert gw.alive(), "the session's worker must wait for its session"
        gw.stopped_by_test = True
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(10)
        assert gw.proc.returncode == 0, gw.log[-3000:]
        assert "event=stop_now" in gw.log
    finally:
        for c in held:
            c.close()
