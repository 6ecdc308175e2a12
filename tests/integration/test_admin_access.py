"""Admin endpoint access (issue 23): a total deadline per request, so that trickling clients
cannot keep /healthz and /readyz from answering."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from peers import HOST, wait_for
from test_admin import admin_gateway, get


def trickle(port: int, source: str, stop: threading.Event, out: list) -> None:
    """One header line per second, never the blank line that ends the headers. Records
    (seconds the server kept it, how it ended)."""
    t0 = time.monotonic()
    try:
        s = socket.create_connection((HOST, port), timeout=5, source_address=(source, 0))
    except OSError as e:
        out.append((0.0, f"connect: {e}"))
        return
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        n = 0
        while not stop.is_set():
            time.sleep(1)
            n += 1
            s.sendall(b"X-Slow-%d: %s\r\n" % (n, b"a" * 10))
        out.append((time.monotonic() - t0, "kept"))
    except OSError as e:
        out.append((time.monotonic() - t0, f"closed: {e.__class__.__name__}"))
    finally:
        s.close()


def timed_get(port: int, path: str, source: str) -> tuple[int, float]:
    """The status of GET path from source, and the seconds it took."""
    t0 = time.monotonic()
    s = socket.create_connection((HOST, port), timeout=5, source_address=(source, 0))
    try:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, time.monotonic() - t0


def test_trickling_requests_cannot_starve_healthz(gateway, vsftpd, ports):
    gw = admin_gateway(gateway, vsftpd, ports)
    aport = int(gw.admin.rsplit(":", 1)[1])
    stop = threading.Event()
    results: list = []
    threads = [threading.Thread(target=trickle, args=(aport, src, stop, results), daemon=True)
               for src in ("127.0.0.2", "127.0.0.3") for _ in range(10)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)  # every trickler connected and sending
        worst = 0.0
        t_end = time.monotonic() + 14  # past the total deadline: freed slots are retaken
        while time.monotonic() < t_end:
            for path in ("/healthz", "/readyz"):
                status, took = timed_get(aport, path, "127.0.0.4")
                assert status == 200, (path, status)
                assert took < 1.0, (path, took)
                worst = max(worst, took)
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    # The total deadline (10 s for headers and body) ended every trickler that got in,
    # though each sent a line every second (the idle timeout alone never would).
    kept = [r for r in results if r[1] == "kept"]
    assert not kept, results
    cut = [r for r in results if r[1].startswith("closed")]
    assert cut and all(r[0] < 13 for r in cut), results
    assert "event=admin_deadline" in gw.log
