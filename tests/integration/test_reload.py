"""A reload tells the truth: READY/STATUS (sd_notify) and ftpsgate_reloads_total{result}
say "reloaded" only when every worker switched to the new configuration. A reload that
fails anywhere (a port in use, an xferlog that cannot be opened, a missing key file, a file
that does not parse) says `reload failed` and what failed, counts as failed, and leaves the
old configuration serving on every worker (two workers here: each is seen greeting with
the old text, and a transfer works)."""

from __future__ import annotations

import re
import signal
import os
import socket
import time
import urllib.request

import pytest

import peers
from peers import HOST, check, curl, frontend, render_ini, wait_for
from test_systemd import NotifySocket

OLD, NEW = "old generation here", "new generation here"


@pytest.fixture
def ns(tmp_path, monkeypatch):
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
    yield sock
    sock.close()


def metric(gw, result: str) -> int:
    with urllib.request.urlopen(f"http://{HOST}:{gw.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf'^ftpsgate_reloads_total{{result="{result}"}} (\d+)$', text, re.M)
    assert m, text[:2000]
    return int(m.group(1))


def start(gateway, backend, ports, ns, tmp_path):
    admin = ports.port()
    gw = gateway(backend, extra={"global": {"workers": 2, "admin_listen": f"{HOST}:{admin}",
                                            "xferlog": tmp_path / "xferlog"}},
                 frontends={"p": frontend("plain", greeting=OLD)})
    gw.admin_port = admin
    ns.wait("READY")
    wait_for(lambda: "event=started " in gw.log, 30, "the started line")
    return gw


def greetings(gw, n: int = 16) -> tuple[set[str], set[str]]:
    """The greetings of n connections to the plain frontend, and the workers that took
    them (SO_REUSEPORT spreads connections by their source port)."""
    mark = gw.log_size()
    seen = set()
    for _ in range(n):
        with socket.create_connection((HOST, gw.fport("p")), timeout=10) as s:
            seen.add(s.recv(4096).decode().strip())
    wait_for(lambda: gw.log_since(mark).count("event=session_start ") >= n, 10, "session lines")
    workers = set(re.findall(r"event=session_start .* worker=(\d+)", gw.log_since(mark)))
    return seen, workers


def reload(gw, ns) -> dict[str, str]:
    """SIGHUP; the READY=1 that ends it."""
    n = len(ns.with_key("READY", "1"))
    os.kill(gw.pid, signal.SIGHUP)
    ns.wait("READY", n + 1, timeout=30)
    return ns.with_key("READY", "1")[n]


def transfer_works(gw, backend, blobs, tmp_path, name):
    digest = backend.put(blobs, f"{name}.bin", 256 * 1024)
    out = tmp_path / f"{name}.got"
    check(curl("-o", str(out), gw.url(f"{name}.bin", backend.user, backend.password)))
    assert peers.sha256_file(out) == digest


def test_good_reload(gateway, pyftpdlib, ports, ns, tmp_path, blobs):
    gw = start(gateway, pyftpdlib, ports, ns, tmp_path)
    assert greetings(gw) == ({f"220 {OLD}"}, {"0", "1"})
    ok = metric(gw, "ok")
    gw.config.write_text(gw.config.read_text().replace(OLD, NEW))
    ready = reload(gw, ns)
    assert ready["STATUS"].startswith("serving, reloaded"), ready
    assert metric(gw, "ok") == ok + 1
    assert gw.log.count("event=reloaded worker=") == 2
    assert greetings(gw) == ({f"220 {NEW}"}, {"0", "1"})
    transfer_works(gw, pyftpdlib, blobs, tmp_path, "good-reload")


def _port_in_use(text, tmp_path, ports, holder):
    holder.bind((HOST, 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    return text + render_ini({"frontend taken": {
        "listen": f"{HOST}:{port}", "mode": "plain", "backend": "be"}}), \
        rf"\[frontend taken\] listen: cannot listen on 127\.0\.0\.1:{port}: address already in use"


BREAKS = {
    "port-in-use": _port_in_use,
    "xferlog-unwritable": lambda text, tmp_path, ports, holder: (
        re.sub(r"^xferlog = .*$", f"xferlog = {tmp_path}/no/such/dir/xferlog", text,
               flags=re.M),
        r"\[global\] xferlog: cannot open .*no/such/dir/xferlog"),
    "missing-key": lambda text, tmp_path, ports, holder: (
        re.sub(r"^key = .*$", f"key = {tmp_path}/no-such.key", text, flags=re.M),
        r"\[tls\] key: cannot load private key .*no-such\.key"),
    "does-not-parse": lambda text, tmp_path, ports, holder: (
        text + "\n[global]\nno_such_key = 1\n", r"duplicate section|unknown key"),
}


@pytest.mark.parametrize("what", list(BREAKS))
def test_failed_reload_keeps_the_old_configuration_everywhere(gateway, pyftpdlib, ports, ns,
                                                              tmp_path, blobs, what):
    gw = start(gateway, pyftpdlib, ports, ns, tmp_path)
    good = gw.config.read_text()
    holder = socket.socket()
    try:
        bad, reason = BREAKS[what](good.replace(OLD, NEW), tmp_path, ports, holder)
        gw.config.write_text(bad)
        ok, failed = metric(gw, "ok"), metric(gw, "failed")
        ready = reload(gw, ns)
        status = ready["STATUS"]
        assert "reload failed" in status and re.search(reason, status), status
        assert re.search(rf"{re.escape(str(gw.config))}:\d+: ", status)
        assert (metric(gw, "ok"), metric(gw, "failed")) == (ok, failed + 1)
        assert "event=reloaded worker=" not in gw.log
        # Every worker still serves the old configuration.
        assert greetings(gw, 24) == ({f"220 {OLD}"}, {"0", "1"})
        transfer_works(gw, pyftpdlib, blobs, tmp_path, f"failed-{what}")
    finally:
        holder.close()
    # Fixed: the next reload succeeds on both.
    gw.config.write_text(good.replace(OLD, NEW))
    assert reload(gw, ns)["STATUS"].startswith("serving, reloaded")
    assert greetings(gw) == ({f"220 {NEW}"}, {"0", "1"})
