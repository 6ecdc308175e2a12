"""Admin endpoint access and runtime API: a total deadline per request (trickling clients
from two addresses cannot keep /healthz and /readyz from answering a third within 1 s);
admin_users (basic auth, crypt hashes, roles read and operate, failures logged without the
password and locked out per address, the file refused when others may read it, reread on
reload); without admin_users only the probes answer on a non-loopback address; HTTPS
(admin_tls_cert/key) with curl --cacert and a real Prometheus scraping with basic_auth and
tls_config; backend runtime state (drain, maint, ready) across two workers and a reload with
real vsftpd backends; DELETE /sessions/ID ends a session with 421, logged with who asked."""

from __future__ import annotations

import base64
import http.client as http_client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import warnings
from pathlib import Path

import peers
from fakeftp import Plan
from peers import HOST, Control, backend_tls, metric, wait_for
from test_admin import Prometheus, admin_gateway


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


# ---------------------------------------------------------------------------------------
# admin_users: basic auth, roles, the failed-login throttle; without it, by address

def sha512(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # Debian's python3.11 still has it (libcrypt underneath)
        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))


USERS = {"prom": ("scrape-Secret-1", "read"), "ops": ("Operate-Secret-2", "operate")}


def users_file(directory: Path, mode: int = 0o600) -> Path:
    f = directory / "admin_users"
    f.write_text("# ftpsgate admins\n" + "".join(f"{n}:{sha512(p)} {r}\n"
                                                 for n, (p, r) in USERS.items()))
    f.chmod(mode)
    return f


def http(gw, method: str, path: str, user: str | None = None, password: str | None = None,
         body: bytes | None = None, source: str | None = None, context=None):
    """(status, headers, text) of one request, with basic auth when user is given."""
    url = gw.admin + path
    parsed = urllib.parse.urlsplit(url)
    cls = http_client.HTTPSConnection if parsed.scheme == "https" else http_client.HTTPConnection
    kw = {"context": context} if parsed.scheme == "https" else {}
    conn = cls(parsed.hostname, parsed.port, timeout=10,
               source_address=(source, 0) if source else None, **kw)
    headers = {}
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode()
    finally:
        conn.close()


def as_user(name: str) -> tuple[str, str]:
    return name, USERS[name][0]


def set_state(gw, backend: str, state: str, user: str = "ops", **kw):
    return http(gw, "POST", f"/backends/{backend}/state", *as_user(user),
                body=json.dumps({"state": state}).encode(), **kw)


def test_basic_auth_roles_failures_and_lockout(gateway, vsftpd, ports, tmp_path, client_ctx):
    gw = admin_gateway(gateway, vsftpd, ports,
                       extra={"global": {"admin_users": users_file(tmp_path)}})
    assert "auth=basic" in gw.log
    # Probes need no credentials; everything else does.
    assert http(gw, "GET", "/healthz")[0] == 200
    assert http(gw, "GET", "/readyz")[0] == 200
    for path in ("/", "/metrics", "/sessions", "/sessions/1"):
        status, headers, _ = http(gw, "GET", path)
        assert status == 401, path
        assert headers.get("WWW-Authenticate", "").startswith("Basic realm="), headers
    # Wrong password, unknown user: 401, logged with the name, never the password.
    assert http(gw, "GET", "/metrics", "prom", "not-the-password")[0] == 401
    cur = gw.mark()
    assert http(gw, "GET", "/metrics", "mallory", "guess-1")[0] == 401
    cur.wait(r'user="mallory" reason=unknown_user', 5)
    assert re.search(r'event=admin_auth_failed client=127\.0\.0\.1 user="prom" '
                     r'reason=wrong_password', gw.log)
    # read sees everything, changes nothing; operate can.
    status, _, text = http(gw, "GET", "/metrics", *as_user("prom"))
    assert status == 200
    assert metric(text, "ftpsgate_admin_auth_failures_total") == 2
    assert metric(text, "ftpsgate_backend_admin_state", backend="be", state="ready") == 1
    assert http(gw, "GET", "/sessions", *as_user("prom"))[0] == 200
    assert http(gw, "GET", "/", *as_user("prom"))[0] == 200
    status, _, text = set_state(gw, "be", "drain", user="prom")
    assert status == 403, text
    assert http(gw, "DELETE", "/sessions/1", *as_user("prom"))[0] == 403
    assert 'event=admin_forbidden user="prom"' in gw.log
    status, _, text = set_state(gw, "be", "drain")
    assert status == 200, text
    assert json.loads(text) == {"backend": "be", "state": "drain", "previous": "ready"}
    assert re.search(r'event=backend_admin_state backend=be state=drain previous=ready '
                     r'user="ops" client=127\.0\.0\.1', gw.log)
    assert set_state(gw, "be", "ready")[0] == 200
    assert set_state(gw, "nosuch", "drain")[0] == 404
    for bad in (b'{"state":"down"}', b'{"state":"drain","x":1}', b"drain", b"{}"):
        status, _, _ = http(gw, "POST", "/backends/be/state", *as_user("ops"), body=bad)
        assert status == 400, bad
    # Five failures within a minute lock that address out: even the right password gets 429
    # (not checked); another address is not affected.
    for i in range(5):
        assert http(gw, "GET", "/metrics", "ops", f"wrong-{i}", source="127.0.0.5")[0] == 401
    status, headers, _ = http(gw, "GET", "/metrics", *as_user("ops"), source="127.0.0.5")
    assert status == 429
    assert 50 <= int(headers["Retry-After"]) <= 60
    assert "event=admin_auth_lockout client=127.0.0.5" in gw.log
    assert http(gw, "GET", "/healthz", source="127.0.0.5")[0] == 200  # probes still answer
    assert http(gw, "GET", "/metrics", *as_user("ops"), source="127.0.0.6")[0] == 200
    for name, (password, _) in USERS.items():
        assert password not in gw.log
    for i in range(5):
        assert f"wrong-{i}" not in gw.log


def test_without_admin_users_by_address(gateway, vsftpd, ports):
    # A non-loopback address (the wildcard): only the probes answer.
    aport = ports.port()
    gw = gateway(vsftpd, extra={"global": {"admin_listen": f"0.0.0.0:{aport}"}})
    gw.admin = f"http://{HOST}:{aport}"
    gw.started()
    assert "auth=probes_only" in gw.log
    assert http(gw, "GET", "/healthz")[0] == 200
    assert http(gw, "GET", "/readyz")[0] == 200
    for path in ("/", "/metrics", "/sessions", "/sessions/1"):
        status, headers, text = http(gw, "GET", path)
        assert status == 401 and "admin_users is not set" in text, (path, status)
    assert set_state(gw, "be", "drain")[0] == 401
    # Loopback: the read-only paths as before, the runtime API refused.
    gw2 = admin_gateway(gateway, vsftpd, ports)
    assert "auth=none_loopback" in gw2.log
    assert http(gw2, "GET", "/metrics")[0] == 200
    assert http(gw2, "GET", "/sessions")[0] == 200
    status, _, text = http(gw2, "POST", "/backends/be/state", body=b'{"state":"drain"}')
    assert status == 403 and "needs admin_users" in text


def check_conf(tmp_path, name: str, extra: str) -> subprocess.CompletedProcess:
    conf = tmp_path / f"{name}.conf"
    conf.write_text(f"[global]\nadmin_listen = 127.0.0.1:2991\ncontrol_socket = off\n{extra}"
                    "[frontend a]\nlisten = 127.0.0.1:2990\nmode = plain\n[backend b]\n"
                    "address = 127.0.0.1:2121\n")
    return subprocess.run([str(peers.GATEWAY_BIN), "-t", "-c", str(conf)], capture_output=True,
                          text=True, timeout=10)


def test_config_check_refuses_bad_admin_files(tmp_path, tls_cert):
    good = users_file(tmp_path)
    res = check_conf(tmp_path, "good", f"admin_users = {good}\n")
    assert res.returncode == 0, res.stderr
    # Readable by others: refused, by -t as by start.
    d = tmp_path / "open"
    d.mkdir()
    res = check_conf(tmp_path, "open", f"admin_users = {users_file(d, 0o644)}\n")
    assert res.returncode == 1
    assert "admin_users" in res.stderr and "mode 0644: readable or writable by others" in res.stderr
    bad = tmp_path / "bad_users"
    bad.write_text("ops:plain-password operate\n")
    bad.chmod(0o600)
    res = check_conf(tmp_path, "bad", f"admin_users = {bad}\n")
    assert res.returncode == 1 and "line 1: user ops: expected a crypt(3) hash" in res.stderr
    res = check_conf(tmp_path, "missing", f"admin_users = {tmp_path / 'nope'}\n")
    assert res.returncode == 1 and "nope: cannot read: No such file" in res.stderr
    cert, key = tls_cert
    res = check_conf(tmp_path, "tls", f"admin_tls_cert = {cert}\nadmin_tls_key = {key}\n")
    assert res.returncode == 0, res.stderr
    res = check_conf(tmp_path, "half", f"admin_tls_cert = {cert}\n")
    assert res.returncode == 1 and "go together" in res.stderr
    res = check_conf(tmp_path, "swap", f"admin_tls_cert = {key}\nadmin_tls_key = {cert}\n")
    assert res.returncode == 1 and "admin_tls_cert" in res.stderr
    other_cert, other_key = peers.make_cert(tmp_path, "other")
    res = check_conf(tmp_path, "mismatch", f"admin_tls_cert = {cert}\nadmin_tls_key = {other_key}\n")
    assert res.returncode == 1 and "not the certificate's" in res.stderr, res.stderr
    res = check_conf(tmp_path, "nokey",
                     f"admin_tls_cert = {cert}\nadmin_tls_key = {tmp_path / 'nokey'}\n")
    assert res.returncode == 1 and "admin_tls_key" in res.stderr


def test_users_file_reread_on_reload(gateway, vsftpd, ports, tmp_path):
    f = users_file(tmp_path)
    gw = admin_gateway(gateway, vsftpd, ports, extra={"global": {"admin_users": f}})
    assert http(gw, "GET", "/metrics", *as_user("prom"))[0] == 200
    f.write_text(f"prom2:{sha512('new-Secret-3')} read\n")
    cur = gw.mark()
    os.kill(gw.pid, signal.SIGHUP)
    cur.wait(r"event=reload_complete", 10)
    assert http(gw, "GET", "/metrics", *as_user("prom"))[0] == 401
    assert http(gw, "GET", "/metrics", "prom2", "new-Secret-3")[0] == 200
    # A file that fails keeps the users it replaced.
    f.chmod(0o644)
    cur = gw.mark()
    os.kill(gw.pid, signal.SIGHUP)
    cur.wait(r"event=admin_users_failed", 10)
    assert http(gw, "GET", "/metrics", "prom2", "new-Secret-3")[0] == 200


# ---------------------------------------------------------------------------------------
# HTTPS (admin_tls_cert, admin_tls_key): curl and a real Prometheus

def test_https_curl_and_prometheus_with_basic_auth(gateway, vsftpd, ports, tmp_path,
                                                    tls_cert):
    cert, key = tls_cert
    gw = admin_gateway(gateway, vsftpd, ports, extra={"global": {
        "admin_users": users_file(tmp_path), "admin_tls_cert": cert, "admin_tls_key": key}})
    assert "scheme=https" in gw.log
    gw.admin = gw.admin.replace("http://", "https://")
    user, password = as_user("prom")
    def admin_curl(*args):  # not peers.curl: that one passes -k (no verification)
        return peers.run(["curl", "-sS", "--max-time", "20", *args], timeout=30)

    res = admin_curl("--cacert", cert, "-u", f"{user}:{password}", "-o", "-", "-w",
                     "%{http_code}", gw.admin + "/metrics")
    assert res.returncode == 0, res.stderr
    assert res.stdout.endswith("200") and "ftpsgate_backend_admin_state" in res.stdout
    # HTTPS only: clear HTTP gets no page; an untrusted certificate is refused by curl.
    plain = admin_curl("-o", "/dev/null", "-w", "%{http_code}",
                       gw.admin.replace("https://", "http://") + "/healthz")
    assert plain.returncode != 0 and plain.stdout != "200", plain
    untrusted = admin_curl("-u", f"{user}:{password}", gw.admin + "/metrics")
    assert untrusted.returncode == 60, untrusted  # peer certificate cannot be authenticated
    wrong = admin_curl("--cacert", cert, "-u", f"{user}:nope", "-o", "/dev/null", "-w",
                       "%{http_code}", gw.admin + "/metrics")
    assert wrong.stdout == "401"
    ctx = ssl.create_default_context(cafile=str(cert))
    assert http(gw, "GET", "/healthz", context=ctx)[0] == 200
    status, _, text = set_state(gw, "be", "maint", context=ctx)
    assert status == 200, text
    # Prometheus: https, basic_auth, tls_config with the CA.
    aport = int(gw.admin.rsplit(":", 1)[1])
    prom = Prometheus(tmp_path / "prom", ports.port(), f"{HOST}:{aport}", scheme="https",
                      basic_auth=(user, password), ca_file=cert)
    try:
        prom.wait_value('up{job="ftpsgate"}', 1, timeout=30)
        prom.wait_value('ftpsgate_backend_admin_state{backend="be",state="maint"}', 1)
        prom.wait_value('ftpsgate_backend_admin_state{backend="be",state="ready"}', 0)
    finally:
        prom.stop()
    assert password not in gw.log


# ---------------------------------------------------------------------------------------
# Runtime API: backend state across workers and a reload; ending a session

def sessions(gw) -> list[dict]:
    status, _, text = http(gw, "GET", "/sessions", *as_user("prom"))
    assert status == 200, text
    return json.loads(text)


def admin_metrics(gw) -> str:
    status, _, text = http(gw, "GET", "/metrics", *as_user("prom"))
    assert status == 200
    return text


def state_is(gw, backend: str, state: str) -> bool:
    text = admin_metrics(gw)
    return all(metric(text, "ftpsgate_backend_admin_state", backend=backend, state=s) ==
               (1 if s == state else 0) for s in ("ready", "drain", "maint"))


def open_sessions(gw, n: int, backend, ctx) -> list[Control]:
    out = []
    for _ in range(n):
        c = Control.implicit(gw.port, ctx)
        assert c.reply()[0] == 220
        c.login(backend.user, backend.password)
        out.append(c)
    return out


def reload_and_wait(gw) -> None:
    cur = gw.mark()
    os.kill(gw.pid, signal.SIGHUP)
    cur.wait(r"event=reload_complete", 15)


def two_vsftpd_gateway(gateway, vsftpd, vsftpd_ftps, ports, tmp_path, workers=2, **more):
    b2 = {"address": vsftpd_ftps.address,
          **backend_tls("explicit", ca_file=vsftpd_ftps.cert)}
    return admin_gateway(gateway, vsftpd, ports, workers=workers, extra={
        "global": {"admin_users": users_file(tmp_path)},
        "frontend fe": {"backend": "be, b2", "balance": "roundrobin"},
        "backend b2": b2, **more})


def test_drain_across_workers_and_reload(gateway, vsftpd, vsftpd_ftps, ports, tmp_path, blobs,
                                         client_ctx):
    gw = two_vsftpd_gateway(gateway, vsftpd, vsftpd_ftps, ports, tmp_path)
    size = 4 * peers.MiB
    digest = vsftpd.put(blobs, "drain.bin", size)
    assert vsftpd_ftps.put(blobs, "drain.bin", size) == digest
    running = open_sessions(gw, 20, vsftpd, client_ctx)
    downloads = []
    try:
        before = sessions(gw)
        assert len(before) == 20
        on = {b: [s["id"] for s in before if s["backend"] == b] for b in ("be", "b2")}
        assert on["be"] and on["b2"], on  # roundrobin used both
        assert {s["worker"] for s in before} == {0, 1}  # both workers have sessions
        # Slow downloads (4 s each) under way when the drain comes, two of them on be at
        # least: started one by one until there are (each worker keeps its own roundrobin).
        transferring_on_be = []
        for i in range(8):
            known = {r["id"] for r in sessions(gw)}
            out = tmp_path / f"drain-{i}.got"
            downloads.append((out, subprocess.Popen(
                [*peers.CURL_BASE, "--limit-rate", "1M", "-o", str(out),
                 gw.url("drain.bin", vsftpd.user, vsftpd.password)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
            wait_for(lambda: [r for r in sessions(gw) if r["id"] not in known], 10,
                     "the download's session")
            new = [r for r in sessions(gw) if r["id"] not in known]
            transferring_on_be += [r["id"] for r in new if r["backend"] == "be"]
            if len(transferring_on_be) >= 2:
                break
        assert len(transferring_on_be) >= 2, "no download ran on be"
        status, _, text = set_state(gw, "be", "drain")
        assert status == 200, text
        assert state_is(gw, "be", "drain") and state_is(gw, "b2", "ready")
        # New sessions, on both workers, all go to b2.
        known = {s["id"] for s in sessions(gw)}
        fresh = open_sessions(gw, 10, vsftpd, client_ctx)
        new = [s for s in sessions(gw) if s["id"] not in known]
        assert len(new) == 10 and {s["backend"] for s in new} == {"b2"}, new
        for c in fresh:
            assert c.cmd("QUIT")[0] == 221
        # Running sessions on be go on, and finish normally; so do its transfers.
        for c in running:
            assert c.cmd("PWD")[0] == 257
            assert c.cmd("NOOP")[0] == 200
        for out, p in downloads:
            assert p.wait(60) == 0, p.stderr.read()
            assert peers.sha256_file(out) == digest
        # The state is the process's, kept across a reload.
        reload_and_wait(gw)
        assert state_is(gw, "be", "drain")
        known = {s["id"] for s in sessions(gw)}
        after = open_sessions(gw, 6, vsftpd, client_ctx)
        assert {s["backend"] for s in sessions(gw) if s["id"] not in known} == {"b2"}
        for c in after:
            assert c.cmd("QUIT")[0] == 221
        page = http(gw, "GET", "/", *as_user("prom"))[2]
        assert re.search(r"<td>be</td>.*?<td>drain</td>", page), page
        # ready: be takes sessions again.
        assert set_state(gw, "be", "ready")[0] == 200
        known = {s["id"] for s in sessions(gw)}
        back = open_sessions(gw, 6, vsftpd, client_ctx)
        assert "be" in {s["backend"] for s in sessions(gw) if s["id"] not in known}
        for c in back:
            assert c.cmd("QUIT")[0] == 221
        for c in running:
            assert c.cmd("QUIT")[0] == 221
    finally:
        for c in running:
            c.sock.close()
        for _, p in downloads:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_maint_pauses_probes_ready_resumes(gateway, vsftpd, ports, tmp_path, client_ctx,
                                          fake_ftp):
    from test_health import FAST
    probe = fake_ftp(Plan(greeting=b"220 tiny\r\n", replies={"*": None}))
    gw = admin_gateway(gateway, vsftpd, ports, workers=2, extra={
        "global": {"admin_users": users_file(tmp_path)},
        "frontend fe": {"backend": "be, tiny", "route_user": "yes"},
        "backend tiny": {"address": probe.address, **FAST}})
    wait_for(lambda: probe.accepts >= 2, 10, "probes of tiny")
    assert set_state(gw, "tiny", "maint")[0] == 200
    assert state_is(gw, "tiny", "maint")
    time.sleep(2)  # a probe under way finishes
    paused = probe.accepts
    time.sleep(4)  # four intervals
    assert probe.accepts == paused, "probes went on in maint"
    assert "event=health_probe_skipped backend=tiny state=maint" in gw.log
    # No sessions either: every new one goes to be.
    fresh = open_sessions(gw, 6, vsftpd, client_ctx)
    assert {s["backend"] for s in sessions(gw)} == {"be"}
    for c in fresh:
        assert c.cmd("QUIT")[0] == 221
    # Nor when a client names it (route_user: USER name@BACKEND).
    named = Control.implicit(gw.port, client_ctx)
    try:
        assert named.reply()[0] == 220
        assert named.cmd(f"USER {vsftpd.user}@tiny")[0] == 421
    finally:
        named.sock.close()
    assert "event=backend_unavailable backend=tiny policy=route_user state=maint" in gw.log
    # Kept across a reload, then ready resumes the probes.
    reload_and_wait(gw)
    assert state_is(gw, "tiny", "maint")
    time.sleep(2)
    assert probe.accepts == paused
    assert set_state(gw, "tiny", "ready")[0] == 200
    wait_for(lambda: probe.accepts >= paused + 2, 6, "probes again after ready")


def test_delete_session_ends_it_with_421(gateway, vsftpd, ports, tmp_path, client_ctx):
    gw = admin_gateway(gateway, vsftpd, ports, workers=2,
                       extra={"global": {"admin_users": users_file(tmp_path)}})
    victims = []
    try:
        # Until both workers have one (the kernel spreads connections over SO_REUSEPORT).
        while len(victims) < 16 and {r["worker"] for r in sessions(gw)} != {0, 1}:
            victims += open_sessions(gw, 1, vsftpd, client_ctx)
        rows = sessions(gw)
        assert {r["worker"] for r in rows} == {0, 1}, rows
        rows = [next(r for r in rows if r["worker"] == w) for w in (0, 1)]
        for row in rows:  # one on each worker
            sid = row["id"]
            assert http(gw, "DELETE", f"/sessions/{sid}", *as_user("prom"))[0] == 403
            status, _, text = http(gw, "DELETE", f"/sessions/{sid}", *as_user("ops"))
            assert status == 200 and json.loads(text) == {"session": sid, "result": "closed"}
            assert re.search(rf'session={sid} .*event=admin_session_kill session_id={sid} '
                             rf'user="ops" client=127\.0\.0\.1 result=closed', gw.log)
            assert re.search(rf'session={sid} .*event=session_close reason="ended by admin '
                             rf'user ops from 127\.0\.0\.1"', gw.log)
        wait_for(lambda: len(sessions(gw)) == len(victims) - 2, 10, "the others left")
        killed = {r["id"] for r in rows}
        left = {r["id"] for r in sessions(gw)}
        assert not killed & left
        ended = 0
        for c in victims:  # the two ended ones got 421 and a close, the others answer
            c.sock.settimeout(2)
            try:
                code, text = c.reply()
            except (TimeoutError, socket.timeout):
                c.sock.settimeout(10)
                assert c.cmd("NOOP")[0] == 200
                continue
            assert code == 421, text
            assert c.closed_by_peer()
            ended += 1
        assert ended == 2
        assert http(gw, "DELETE", f"/sessions/{rows[0]['id']}", *as_user("ops"))[0] == 404
    finally:
        for c in victims:
            c.sock.close()
