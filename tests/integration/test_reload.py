"""A reload tells the truth: `ftpsgate -s reload` (through the control socket), READY/STATUS
(sd_notify) and ftpsgate_reloads_total{result} say "reloaded" only when every worker switched
to the new configuration. A reload that fails anywhere (a port in use, an xferlog that
cannot be opened, a missing key file, a file that does not parse) makes `-s reload` exit 1
with the reason, says `reload failed` and what failed in STATUS, counts as failed, and
leaves the old configuration serving on every worker (two workers here: each is seen
greeting with the old text, and a transfer works)."""

from __future__ import annotations

import os
import re
import signal
import shutil
import socket
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

import peers
from peers import HOST, check, curl, frontend, render_ini
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


@pytest.fixture
def short_dir():
    """A unix socket path must fit 107 bytes: tmp_path is too deep."""
    d = Path(tempfile.mkdtemp(prefix="fgctl-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start(gateway, backend, ports, ns, tmp_path, short_dir):
    admin = ports.port()
    gw = gateway(backend, extra={"global": {"workers": 2, "admin_listen": f"{HOST}:{admin}",
                                            "xferlog": tmp_path / "xferlog",
                                            "control_socket": short_dir / "ctl.sock"}},
                 frontends={"p": frontend("plain", greeting=OLD)})
    gw.admin_port = admin
    ns.wait("READY")
    gw.started()
    return gw


def greetings(gw, n: int = 16) -> tuple[set[str], set[str]]:
    """The greetings of n connections to the plain frontend, and the workers that took
    them (SO_REUSEPORT spreads connections by their source port)."""
    mark = gw.mark()
    seen = set()
    for _ in range(n):
        with socket.create_connection((HOST, gw.fport("p")), timeout=10) as s:
            seen.add(s.recv(4096).decode().strip())
    mark.wait("event=session_start ", 10, n=n)
    workers = set(re.findall(r"event=session_start .* worker=(\d+)", mark.text()))
    return seen, workers


def reload(gw, ns) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """`ftpsgate -s reload`, which returns once the reload's outcome is known; and the
    READY=1 that ended it (sent before the answer)."""
    n = len(ns.with_key("READY", "1"))
    res = subprocess.run([str(peers.GATEWAY_BIN), "-s", "reload", "-c", str(gw.config)],
                         capture_output=True, text=True, timeout=120)
    assert len(ns.with_key("READY", "1")) == n + 1 or ns.wait("READY", n + 1) is None
    return res, ns.with_key("READY", "1")[n]


def transfer_works(gw, backend, blobs, tmp_path, name):
    digest = backend.put(blobs, f"{name}.bin", 256 * 1024)
    out = tmp_path / f"{name}.got"
    check(curl("-o", str(out), gw.url(f"{name}.bin", backend.user, backend.password)))
    assert peers.sha256_file(out) == digest


def test_good_reload(gateway, pyftpdlib, ports, ns, tmp_path, blobs, short_dir):
    gw = start(gateway, pyftpdlib, ports, ns, tmp_path, short_dir)
    assert greetings(gw) == ({f"220 {OLD}"}, {"0", "1"})
    assert oct((short_dir / "ctl.sock").stat().st_mode & 0o777) == "0o600"
    ok = metric(gw, "ok")
    gw.config.write_text(gw.config.read_text().replace(OLD, NEW))
    res, ready = reload(gw, ns)
    assert (res.returncode, res.stdout, res.stderr) == (0, "reloaded\n", ""), res
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
                                                              tmp_path, blobs, what, short_dir):
    gw = start(gateway, pyftpdlib, ports, ns, tmp_path, short_dir)
    good = gw.config.read_text()
    holder = socket.socket()
    try:
        bad, reason = BREAKS[what](good.replace(OLD, NEW), tmp_path, ports, holder)
        gw.config.write_text(bad)
        ok, failed = metric(gw, "ok"), metric(gw, "failed")
        res, ready = reload(gw, ns)
        assert res.returncode == 1 and res.stdout == "", res
        assert res.stderr.startswith("ftpsgate: reload failed: ") and \
            re.search(reason, res.stderr), res.stderr
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
    res, ready = reload(gw, ns)
    assert res.returncode == 0 and ready["STATUS"].startswith("serving, reloaded"), res
    assert greetings(gw) == ({f"220 {NEW}"}, {"0", "1"})


def test_sighup_and_queued_requests(gateway, pyftpdlib, ports, ns, tmp_path, short_dir):
    """SIGHUP reloads as before (the same path); requests that arrive during a reload get
    the outcome of the next one, which runs once the first is over."""
    gw = start(gateway, pyftpdlib, ports, ns, tmp_path, short_dir)
    gw.config.write_text(gw.config.read_text().replace(OLD, NEW))
    os.kill(gw.pid, signal.SIGHUP)
    procs = [subprocess.Popen([str(peers.GATEWAY_BIN), "-s", "reload", "-c", str(gw.config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert (p.returncode, out) == (0, "reloaded\n"), err
    ns.wait("READY", 3)  # start, then at least the SIGHUP's
    statuses = [m["STATUS"] for m in ns.with_key("READY", "1")[1:]]
    assert all(s.startswith("serving, reloaded") for s in statuses), statuses
    assert greetings(gw) == ({f"220 {NEW}"}, {"0", "1"})


def test_no_gateway_to_answer(tmp_path, short_dir):
    """Nothing listens on the control socket: exit 2, the path named."""
    conf = tmp_path / "gw.conf"
    conf.write_text(f"[global]\ncontrol_socket = {short_dir}/none.sock\n[frontend f]\n"
                    "listen = 127.0.0.1:2990\nmode = plain\n[backend b]\n"
                    "address = 127.0.0.1:2121\n")
    res = subprocess.run([str(peers.GATEWAY_BIN), "-s", "reload", "-c", str(conf)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res
    assert f"cannot reach the running gateway at {short_dir}/none.sock" in res.stderr
    res = subprocess.run([str(peers.GATEWAY_BIN), "-s", "restart", "-c", str(conf)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "unknown command" in res.stderr


def test_control_socket_too_long(tmp_path):
    conf = tmp_path / "gw.conf"
    conf.write_text(f"[global]\ncontrol_socket = /{'x' * 120}/ctl.sock\n[frontend f]\n"
                    "listen = 127.0.0.1:2990\nmode = plain\n[backend b]\n"
                    "address = 127.0.0.1:2121\n")
    res = subprocess.run([str(peers.GATEWAY_BIN), "-t", "-c", str(conf)], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 1 and f"{conf}:2: [global] control_socket: " in res.stderr, res


@pytest.fixture(scope="module")
def failopen():
    """tests/tools/failopen.c built as an LD_PRELOAD shim (not under ASan, whose runtime
    must come first)."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build tests/tools/failopen.c")
    ldd = subprocess.run(["ldd", str(peers.GATEWAY_BIN)], capture_output=True, text=True)
    if "libasan" in ldd.stdout:
        pytest.skip("ASan build: its runtime must come first in LD_PRELOAD")
    out = peers.REPO / "build" / "failopen.so"
    out.parent.mkdir(exist_ok=True)
    subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-O2",
                    "-o", str(out), str(peers.REPO / "tests" / "tools" / "failopen.c"), "-ldl"],
                   check=True)
    return out


def test_one_worker_fails_and_the_other_rolls_back(gateway, pyftpdlib, ports, ns, tmp_path,
                                                   blobs, short_dir, failopen, monkeypatch,
                                                   tls_cert):
    """Only the second worker to read the new key file fails (the shim): the first had
    prepared everything, a new listener included, and must drop it. Both keep the old
    configuration, the new port is closed again, and no descriptor is left behind."""
    new_key = tmp_path / "new.key"
    shutil.copy(tls_cert[1], new_key)
    with monkeypatch.context() as m:
        m.setenv("LD_PRELOAD", str(failopen))
        m.setenv("FAILOPEN_PATH", str(new_key))
        m.setenv("FAILOPEN_NTH", "2")
        gw = start(gateway, pyftpdlib, ports, ns, tmp_path, short_dir)
    assert "failopen" in open(f"/proc/{gw.pid}/maps").read()
    assert greetings(gw) == ({f"220 {OLD}"}, {"0", "1"})
    good = gw.config.read_text()
    new_port = ports.port()
    bad = re.sub(r"^key = .*$", f"key = {new_key}", good.replace(OLD, NEW), flags=re.M)
    gw.config.write_text(bad + render_ini({"frontend added": {
        "listen": f"{HOST}:{new_port}", "mode": "plain", "backend": "be"}}))
    fds = gw.settled_fd_count()
    failed = metric(gw, "failed")
    res, ready = reload(gw, ns)
    assert res.returncode == 1, res
    assert re.search(r"\[tls\] key: cannot load private key .*new\.key", res.stderr), res.stderr
    assert "reload failed" in ready["STATUS"]
    assert metric(gw, "failed") == failed + 1
    # One worker had prepared (its TLS context, the new port) before the abort.
    assert gw.log.count("event=reload_prepare_failed ") == 1, gw.log[-3000:]
    assert "event=reloaded worker=" not in gw.log
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, new_port), timeout=5).close()
    assert greetings(gw, 24) == ({f"220 {OLD}"}, {"0", "1"})
    transfer_works(gw, pyftpdlib, blobs, tmp_path, "rolled-back")
    assert gw.wait_fd_count(fds) == fds
    # The key is read fine from now on: the next reload switches both.
    res, ready = reload(gw, ns)
    assert res.returncode == 0, res
    assert greetings(gw) == ({f"220 {NEW}"}, {"0", "1"})
    with socket.create_connection((HOST, new_port), timeout=5) as s:
        assert s.recv(4096).startswith(b"220")


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv absent (util-linux)")
def test_only_root_and_the_gateways_user(gateway, pyftpdlib, ports, ns, tmp_path, short_dir):
    """SECURITY: the socket is 0600 (another user cannot connect), and even on a socket
    opened up by mistake the peer's credentials are checked: nobody is refused, nothing is
    reloaded."""
    gw = start(gateway, pyftpdlib, ports, ns, tmp_path, short_dir)
    sock = short_dir / "ctl.sock"
    os.chmod(short_dir, 0o755)
    conf = tmp_path / "readable.conf"  # the client reads the file as nobody
    conf.write_text(f"[global]\ncontrol_socket = {sock}\n")
    conf.chmod(0o644)
    for p in [tmp_path, *tmp_path.parents]:
        if p != Path("/"):
            os.chmod(p, os.stat(p).st_mode | 0o005)
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                 str(peers.GATEWAY_BIN), "-s", "reload", "-c", str(conf)]
    res = subprocess.run(as_nobody, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "Permission denied" in res.stderr, res
    os.chmod(sock, 0o666)
    mark = gw.mark()
    res = subprocess.run(as_nobody, capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "permission denied" in res.stderr, res
    assert "event=control_refused" in mark.text()
    assert "event=control_command" not in mark.text()
    assert len(ns.with_key("RELOADING")) == 0
