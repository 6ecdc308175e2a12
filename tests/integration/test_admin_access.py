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
    assert http(gw, "GET", "/metrics", "mallory", "guess-1")[0] == 401
    wait_for(lambda: 'user="mallory" reason=unknown_user' in gw.log, 5, "unknown user logged")
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
    wait_for(lambda: "event=started " in gw.log, 30, "the started line")
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
    assert "admin_users" in res.stderr and "accessible by others (mode 644)" in res.stderr
    bad = tmp_path / "bad_users"
    bad.write_text("ops:plain-password operate\n")
    bad.chmod(0o600)
    res = check_conf(tmp_path, "bad", f"admin_users = {bad}\n")
    assert res.returncode == 1 and "line 1: user ops: expected a crypt(3) hash" in res.stderr
    res = check_conf(tmp_path, "missing", f"admin_users = {tmp_path / 'nope'}\n")
    assert res.returncode == 1 and "cannot open" in res.stderr
    cert, key = tls_cert
    res = check_conf(tmp_path, "tls", f"admin_tls_cert = {cert}\nadmin_tls_key = {key}\n")
    assert res.returncode == 0, res.stderr
    res = check_conf(tmp_path, "half", f"admin_tls_cert = {cert}\n")
    assert res.returncode == 1 and "go together" in res.stderr
    res = check_conf(tmp_path, "swap", f"admin_tls_cert = {key}\nadmin_tls_key = {cert}\n")
    assert res.returncode == 1 and "admin_tls_cert" in res.stderr
    res = check_conf(tmp_path, "nokey",
                     f"admin_tls_cert = {cert}\nadmin_tls_key = {tmp_path / 'nokey'}\n")
    assert res.returncode == 1 and "admin_tls_key" in res.stderr


def test_users_file_reread_on_reload(gateway, vsftpd, ports, tmp_path):
    f = users_file(tmp_path)
    gw = admin_gateway(gateway, vsftpd, ports, extra={"global": {"admin_users": f}})
    assert http(gw, "GET", "/metrics", *as_user("prom"))[0] == 200
    f.write_text(f"prom2:{sha512('new-Secret-3')} read\n")
    n = gw.log.count("event=reload_complete")
    os.kill(gw.pid, signal.SIGHUP)
    wait_for(lambda: gw.log.count("event=reload_complete") > n, 10, "reload")
    assert http(gw, "GET", "/metrics", *as_user("prom"))[0] == 401
    assert http(gw, "GET", "/metrics", "prom2", "new-Secret-3")[0] == 200
    # A file that fails keeps the users it replaced.
    f.chmod(0o644)
    os.kill(gw.pid, signal.SIGHUP)
    wait_for(lambda: "event=admin_users_failed" in gw.log, 10, "the refusal logged")
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
