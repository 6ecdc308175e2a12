"""[global] admin_listen: the HTTP admin endpoint (libmicrohttpd). A real Prometheus from
Debian scrapes /metrics every second while the test moves files, and its HTTP API must
report the sessions, the bytes the test transferred, a refused data connection and the
backend's health; `promtool check metrics` accepts the exposition. /readyz turns 503 when
the only backend dies (health probes) and 200 when it is back. /sessions lists a session
mid-transfer with growing bytes, across two workers; /sessions/ID shows its commands with
PASS masked and the password appears nowhere; the HTML page parses and shows the backends,
with client input escaped; oversized, malformed and slow requests get 4xx or are timed out
without touching FTP sessions; an admin_listen on a frontend's address is refused."""

from __future__ import annotations

import html.parser
import json
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import peers
from fakeftp import FakeFTP, Plan
from peers import HOST, MiB, Control, check, curl, metric, sha256_file, wait_for

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="Debian package prometheus missing (make deps)")


def admin_gateway(factory, backend=None, ports=None, workers=1, **kw):
    aport = ports.port()
    extra = kw.pop("extra", {})
    extra.setdefault("global", {}).update({"admin_listen": f"{HOST}:{aport}",
                                           "workers": workers})
    gw = factory(backend, extra=extra, **kw)
    gw.admin = f"http://{HOST}:{aport}"
    gw.started()
    return gw


def get(gw, path: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(gw.admin + path, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def raw_request(port: int, data: bytes, source: str | None = None) -> bytes:
    s = socket.create_connection((HOST, port), timeout=10,
                                 source_address=(source, 0) if source else None)
    try:
        s.sendall(data)
        return s.recv(4096)
    finally:
        s.close()


class Prometheus:
    """A real Prometheus scraping `target` every second."""

    def __init__(self, workdir, port: int, target: str, scheme: str = "http",
                 basic_auth: tuple[str, str] | None = None, ca_file=None):
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = workdir / "prometheus.yml"
        job = f"  - job_name: ftpsgate\n    scheme: {scheme}\n"
        if basic_auth:  # the password from a file of its own, as in production
            pw = workdir / "scrape.password"
            pw.write_text(basic_auth[1])
            job += (f"    basic_auth:\n      username: {basic_auth[0]}\n"
                    f"      password_file: {pw}\n")
        if ca_file:
            job += f"    tls_config:\n      ca_file: {ca_file}\n"
        cfg.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                       "scrape_configs:\n" + job + "    static_configs:\n"
                       f"      - targets: ['{target}']\n")
        self.url = f"http://{HOST}:{port}"
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address={HOST}:{port}"], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self.ready, 30, "prometheus ready", interval=0.2)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> float | None:
        q = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=5) as r:
            res = json.load(r)
        assert res["status"] == "success", res
        data = res["data"]["result"]
        return float(data[0]["value"][1]) if data else None

    def wait_value(self, expr: str, want: float, timeout: float = 15) -> None:
        seen = []
        try:
            wait_for(lambda: seen.append(self.query(expr)) or seen[-1] == want, timeout,
                     f"prometheus: {expr} == {want}", interval=0.3)
        except TimeoutError:
            pytest.fail(f"prometheus: {expr} = {seen[-1] if seen else None}, want {want}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def pasv_port(text: str) -> int:
    nums = [int(x) for x in re.search(r"\((\d+,\d+,\d+,\d+,\d+,\d+)\)", text).group(1).split(",")]
    return nums[4] * 256 + nums[5]


def test_prometheus_scrapes_sessions_bytes_refusals_and_health(gateway, pyftpdlib, ports,
                                                                blobs, tmp_path, client_ctx):
    gw = admin_gateway(gateway, pyftpdlib, ports, workers=2)
    target = gw.admin.split("//")[1]
    prom = Prometheus(tmp_path / "prom", ports.port(), target)
    try:
        u, p = pyftpdlib.user, pyftpdlib.password
        down = pyftpdlib.put(blobs, "adm-prom-down.bin", 3 * MiB, unique=True)
        src = tmp_path / "up.bin"
        up = blobs.unique(src, 2 * MiB)
        got = tmp_path / "got.bin"
        check(curl("-o", got, gw.url("adm-prom-down.bin", u, p)))
        check(curl("-T", src, gw.url("adm-prom-up.bin", u, p)))
        assert sha256_file(got) == down
        assert sha256_file(pyftpdlib.path("adm-prom-up.bin")) == up
        # A data connection from a foreign address (127.0.0.2) to this session's passive
        # port: refused (port theft), counted as foreign_address.
        c = Control.implicit(gw.port, client_ctx)
        try:
            assert c.reply()[0] == 220
            assert c.cmd(f"USER {u}")[0] == 331
            assert c.cmd(f"PASS {p}")[0] == 230
            code, text = c.cmd("PASV")
            assert code == 227, text
            try:
                with socket.create_connection((HOST, pasv_port(text)), timeout=5,
                                              source_address=("127.0.0.2", 0)) as thief:
                    assert thief.recv(10) == b""  # reset or closed by the gateway
            except ConnectionResetError:
                pass
            # The real client's data connection, but its TLS does not resume the control
            # session (data_session_reuse = required): refused, counted as not_resumed.
            data = socket.create_connection((HOST, pasv_port(text)), timeout=10)
            c.send(b"RETR adm-prom-down.bin\r\n")
            try:
                with client_ctx.wrap_socket(data, server_hostname="localhost") as tdata:
                    assert not tdata.session_reused
                    while tdata.recv(65536):
                        pass
            except (ssl.SSLError, OSError):
                pass
            codes = []
            while not codes or codes[-1] < 200:
                codes.append(c.reply()[0])
            assert codes[-1] == 522, codes
            c.cmd("QUIT")
        finally:
            c.sock.close()

        prom.wait_value('up{job="ftpsgate"}', 1)
        prom.wait_value('sum(ftpsgate_transfer_bytes_total{direction="download"})', 3 * MiB)
        prom.wait_value('sum(ftpsgate_transfer_bytes_total{direction="upload"})', 2 * MiB)
        prom.wait_value('ftpsgate_transfers_total{direction="download",result="ok"}', 1)
        prom.wait_value('ftpsgate_transfers_total{direction="upload",result="ok"}', 1)
        prom.wait_value('sum(ftpsgate_sessions_total{frontend="fe"})', 3)
        prom.wait_value('ftpsgate_logins_total{frontend="fe",result="ok"}', 3)
        prom.wait_value('ftpsgate_data_connections_refused_total{reason="foreign_address"}', 1)
        prom.wait_value('ftpsgate_data_connections_refused_total{reason="not_resumed"}', 1)
        prom.wait_value('sum(ftpsgate_tls_handshakes_total{side="data",result="ok"})', 3)
        prom.wait_value('ftpsgate_backend_up{backend="be"}', 1)
        prom.wait_value('ftpsgate_backend_connects_total{backend="be",result="ok"}', 3)
        prom.wait_value('ftpsgate_transfers_total{direction="download",result="failed"}', 1)
        prom.wait_value('ftpsgate_transfer_duration_seconds_count', 3)
        prom.wait_value('sum(ftpsgate_tls_handshakes_total{side="client",result="ok"})', 3)
        prom.wait_value('count(ftpsgate_build_info{version!=""})', 1)
        prom.wait_value('sum(ftpsgate_sessions_active)', 0)
        pasv = gw.pasv_ports
        prom.wait_value(f'count(ftpsgate_pasv_ports_in_use{{range="{pasv[0]}-{pasv[1]}"}})', 1)
        prom.wait_value('sum(ftpsgate_pasv_ports_exhausted_total)', 0)
        # What the shipped alert (config/ftpsgate.rules.yml) divides by: the range's size.
        prom.wait_value(f'ftpsgate_pasv_ports_capacity{{range="{pasv[0]}-{pasv[1]}"}}',
                        pasv[1] - pasv[0] + 1)
    finally:
        prom.stop()
    status, text = get(gw, "/metrics")
    assert status == 200
    res = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                         capture_output=True, timeout=30)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    assert metric(text, "ftpsgate_pasv_ports_in_use") == 0


# For health probes: 220, then 221 to QUIT (502 to anything else).
GREETER = Plan(greeting="220 greeter", replies={"*": "502 no"})


def test_readyz_follows_backend_health(gateway, ports):
    greeter = FakeFTP(GREETER)
    port = greeter.port
    try:
        gw = admin_gateway(gateway, None, ports, backend_address=f"{HOST}:{port}",
                           backend_keys={"health_interval": 1, "health_timeout": 1,
                                         "health_rise": 1, "health_fall": 1})
        assert get(gw, "/healthz") == (200, "ok\n")
        wait_for(lambda: get(gw, "/readyz")[0] == 200, 10, "ready")
        greeter.close()
        wait_for(lambda: get(gw, "/readyz")[0] == 503, 10, "not ready once the backend died")
        status, body = get(gw, "/readyz")
        assert "frontend fe has no healthy backend" in body, body
        assert get(gw, "/healthz")[0] == 200  # the process still serves
        assert metric(get(gw, "/metrics")[1], "ftpsgate_backend_up", backend="be") == 0
        greeter = FakeFTP(GREETER, port=port)
        wait_for(lambda: get(gw, "/readyz")[0] == 200, 10, "ready again")
        assert metric(get(gw, "/metrics")[1], "ftpsgate_backend_up", backend="be") == 1
    finally:
        greeter.close()


class Text(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        if data.strip():
            self.cells.append(data.strip())


def test_sessions_timeline_and_status_page(gateway, pyftpdlib, ports, blobs, client_ctx):
    gw = admin_gateway(gateway, pyftpdlib, ports, workers=2)
    u, p = pyftpdlib.user, pyftpdlib.password
    pyftpdlib.put(blobs, "adm-live.bin", 24 * MiB)
    # Client input with markup: shown escaped, never as markup.
    marked = Control.implicit(gw.port, client_ctx)
    assert marked.reply()[0] == 220
    assert marked.cmd("USER <b>x</b>&")[0] == 331
    ftp = peers.ImplicitFTPS(context=client_ctx, timeout=30)
    ftp.connect(HOST, gw.port)
    try:
        ftp.login(u, p)
        ftp.prot_p()
        conn = ftp.transfercmd("RETR adm-live.bin")
        got = conn.recv(256 * 1024)

        def live():
            status, body = get(gw, "/sessions")
            assert status == 200
            rows = [s for s in json.loads(body) if s.get("transfer")]
            assert len(rows) == 1, body
            return rows[0]

        first = live()
        for key in ("id", "frontend", "client", "user", "backend", "state", "tls",
                    "age_seconds", "idle_seconds"):
            assert key in first, first
        assert first["user"] == u and first["frontend"] == "fe" and first["backend"] == "be"
        assert first["state"] == "transfer" and first["tls"].startswith("TLSv1.")
        assert first["transfer"]["verb"] == "RETR"
        status, body = get(gw, f"/sessions/{first['id']}")  # mid-transfer, by name
        assert status == 200 and json.loads(body)["state"] == {
            "client": "ready", "backend": "ready", "pending": "transfer",
            "transfer": "running"}, body
        assert first["transfer"]["file"] == "adm-live.bin"
        n = len(got)
        while n < 8 * MiB:
            n += len(conn.recv(1024 * 1024))
        second = live()
        assert second["id"] == first["id"]
        assert second["transfer"]["bytes"] > first["transfer"]["bytes"], (first, second)
        while conn.recv(1024 * 1024):
            pass
        conn.close()
        ftp.voidresp()
        ftp.voidcmd("NOOP")

        status, body = get(gw, f"/sessions/{first['id']}")
        assert status == 200, body
        # Its states by name: logged in, its transfer over, nothing outstanding.
        assert json.loads(body)["state"] == {"client": "ready", "backend": "ready",
                                             "pending": "none", "transfer": "none"}, body
        events = json.loads(body)["events"]
        details = [e["detail"] for e in events]
        assert f"USER {u}" in details and "PASS ****" in details, details
        assert "RETR adm-live.bin" in details, details
        assert all({"time", "event", "detail"} <= set(e) for e in events)
        assert any(e["event"] == "login" for e in events)
        assert any(e["event"] == "handshake" for e in events)

        # Every admin page, and the password is nowhere.
        pages = {path: get(gw, path) for path in
                 ("/", "/metrics", "/sessions", f"/sessions/{first['id']}", "/readyz")}
        for path, (status, body) in pages.items():
            assert status == 200, (path, body)
            assert p not in body, f"the password appears in {path}"
        page = Text()
        page.feed(pages["/"][1])
        page.close()
        assert "Backends" in page.cells and "be" in page.cells and "UP" in page.cells
        assert "Frontends" in page.cells and "fe" in page.cells
        assert "<b>x</b>&" in page.cells  # the user name, as text
        assert "b" not in page.tags and "script" not in page.tags
        assert "&lt;b&gt;x&lt;/b&gt;&amp;" in pages["/"][1]
        assert get(gw, "/sessions/999999")[0] == 404
        assert get(gw, "/sessions/abc")[0] == 400
    finally:
        ftp.close()
        marked.sock.close()


def test_bad_and_slow_requests_do_not_touch_ftp(gateway, pyftpdlib, ports, blobs, tmp_path):
    gw = admin_gateway(gateway, pyftpdlib, ports)
    aport = int(gw.admin.rsplit(":", 1)[1])
    cases = {
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n": b" 414 ",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 30000 + b"\r\n\r\n": b" 431 ",
        b"GET /metrics HTTP/1.1\r\n\r\n": b" 400 ",  # HTTP/1.1 without Host
        b"GET /metrics HTTP/1.1\r\nHost x\r\n\r\n": b" 400 ",
        b"GET /metrics HTTP/9.9\r\nHost: x\r\n\r\n": b" 505 ",
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc": b" 405 ",
        # The runtime API needs admin_users (an operate user), even on loopback.
        b"DELETE /sessions/1 HTTP/1.1\r\nHost: x\r\n\r\n": b" 403 ",
        b"POST /backends/be/state HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}": b" 403 ",
        b"GET /backends/be/state HTTP/1.1\r\nHost: x\r\n\r\n": b" 405 ",
        b"POST /backends/../state HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}": b" 400 ",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello": b" 413 ",
        b"GET /sessions/1%2F.. HTTP/1.1\r\nHost: x\r\n\r\n": b" 400 ",
    }
    for request, want in cases.items():
        answer = raw_request(aport, request)
        assert want in answer.split(b"\r\n")[0], (request[:60], answer[:80])
    # Slow clients: connections that send nothing, from their own address (the per-address
    # limit is theirs). FTP transfers and other admin clients go on; the idle ones are
    # closed after the connection timeout.
    idle = [socket.create_connection((HOST, aport), timeout=15,
                                     source_address=("127.0.0.3", 0)) for _ in range(8)]
    try:
        partial = socket.create_connection((HOST, aport), timeout=15,
                                           source_address=("127.0.0.3", 0))
        idle.append(partial)
        partial.sendall(b"GET /metrics HTTP/1.1\r\nHo")  # never finished
        t0 = time.monotonic()
        digest = pyftpdlib.put(blobs, "adm-slow.bin", 4 * MiB)
        got = tmp_path / "got.bin"
        check(curl("-o", got, gw.url("adm-slow.bin", pyftpdlib.user, pyftpdlib.password)))
        assert sha256_file(got) == digest
        assert get(gw, "/healthz") == (200, "ok\n")
        assert time.monotonic() - t0 < 5
        for s in idle:  # ADMIN_TIMEOUT_S (5 s) after their last byte
            s.settimeout(max(0.5, t0 + 12 - time.monotonic()))
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
            except socket.timeout:
                pytest.fail("an idle admin connection was not timed out")
    finally:
        for s in idle:
            s.close()


def test_workers_aggregate(gateway, pyftpdlib, ports, client_ctx):
    gw = admin_gateway(gateway, pyftpdlib, ports, workers=2)
    u, p = pyftpdlib.user, pyftpdlib.password
    sessions = []
    try:
        for _ in range(12):
            c = Control.implicit(gw.port, client_ctx)
            sessions.append(c)
            assert c.reply()[0] == 220
            assert c.cmd(f"USER {u}")[0] == 331
            assert c.cmd(f"PASS {p}")[0] == 230
        status, body = get(gw, "/sessions")
        rows = json.loads(body)
        assert len(rows) == 12
        assert {r["worker"] for r in rows} == {0, 1}, rows  # both workers answered
        assert all(r["state"] == "idle" and r["user"] == u for r in rows)
        text = get(gw, "/metrics")[1]
        assert metric(text, "ftpsgate_sessions_active", frontend="fe") == 12
        assert metric(text, "ftpsgate_sessions_total", frontend="fe") == 12
        assert metric(text, "ftpsgate_logins_total", frontend="fe", result="ok") == 12
    finally:
        for c in sessions:
            c.sock.close()
    wait_for(lambda: metric(get(gw, "/metrics")[1], "ftpsgate_sessions_active") == 0, 10,
             "every session ended")
    assert get(gw, "/sessions") == (200, "[]\n")


def test_admin_listen_on_a_frontend_address_is_refused(tmp_path):
    conf = tmp_path / "gw.conf"
    for admin in ("127.0.0.1:2990", "0.0.0.0:2990"):
        conf.write_text(f"[global]\nadmin_listen = {admin}\n[frontend a]\n"
                        "listen = 127.0.0.1:2990\nmode = plain\n[backend b]\n"
                        "address = 127.0.0.1:2121\n")
        res = subprocess.run([str(peers.GATEWAY_BIN), "-t", "-c", str(conf)],
                             capture_output=True, timeout=10)
        assert res.returncode == 1
        assert b"admin_listen" in res.stderr + res.stdout
        assert b"frontend a" in res.stderr + res.stdout
    conf.write_text("[global]\nadmin_listen = 127.0.0.1:2991\n[frontend a]\n"
                    "listen = 127.0.0.1:2990\nmode = plain\n[backend b]\n"
                    "address = 127.0.0.1:2121\n")
    res = subprocess.run([str(peers.GATEWAY_BIN), "-t", "-c", str(conf)], capture_output=True,
                         timeout=10)
    assert res.returncode == 0, res.stderr
