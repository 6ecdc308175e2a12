"""PROXY protocol (HAProxy's v1 text and v2 binary headers) in front of control and passive
data connections, PROXY toward backends, and the passive address by the address the client
reached (pasv_address = auto) or by its network (pasv_address_for).

A raw client plays the load balancer: it connects from 127.0.0.1 (in proxy_protocol_from),
sends a header naming another loopback address as the client (127.0.0.5 ...), then speaks
FTP. Data connections without proxy_protocol_data come straight from the client, so the
test client opens them from the header's source address."""

from __future__ import annotations

import concurrent.futures
import ftplib
import io
import re
import subprocess
import socket
import ssl
import struct
import threading
import time

import pytest

import peers
from fakeftp import FakeFTP, Plan
from peers import HOST, frontend

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def header(version: int, src: tuple[str, int], dst: tuple[str, int], local=False) -> bytes:
    if version == 1:
        return f"PROXY TCP4 {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()
    if local:
        return SIG + bytes([0x20, 0x00, 0, 0])
    body = (socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) +
            struct.pack("!HH", src[1], dst[1]))
    return SIG + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ProxiedFTP(ftplib.FTP_TLS):
    """ftplib behind a pretend balancer: the control connection starts with `hdr`; data
    connections come from `data_from` (the client's own address), or, with `data_header`,
    from here with a header naming data_header[0] as the source. implicit: TLS at once."""

    def __init__(self, hdr: bytes, implicit: bool, data_from: str | None = None,
                 data_header: tuple[int, str] | None = None, **kw):
        super().__init__(context=unverified(), timeout=20, **kw)
        self.hdr, self.implicit = hdr, implicit
        self.data_from, self.data_header = data_from, data_header

    def connect(self, host="", port=0, timeout=-999, source_address=None):
        self.host, self.port = host, port
        raw = socket.create_connection((host, port), self.timeout)
        raw.sendall(self.hdr)
        self.af = raw.family
        self.sock = self.context.wrap_socket(raw, server_hostname=host) if self.implicit else raw
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome

    def ntransfercmd(self, cmd, rest=None):
        host, port = self.makepasv()
        if self.data_header:
            conn = socket.create_connection((host, port), self.timeout)
            version, src = self.data_header
            conn.sendall(header(version, (src, 50000), (host, port)))
        else:
            conn = socket.create_connection((host, port), self.timeout,
                                            source_address=(self.data_from, 0))
        try:
            if rest is not None:
                self.sendcmd(f"REST {rest}")
            resp = self.sendcmd(cmd)
            if resp[0] == "2":
                resp = self.getresp()
            if resp[0] != "1":
                raise ftplib.error_reply(resp)
        except Exception:
            conn.close()
            raise
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, None


def login(ftp: ProxiedFTP, user: str, password: str):
    if not ftp.implicit:
        ftp.auth()
    ftp.login(user, password)
    ftp.prot_p()


def get_bytes(ftp, name: str) -> bytes:
    chunks = []
    ftp.retrbinary(f"RETR {name}", chunks.append)
    return b"".join(chunks)


def pp_keys(mode="any", **more):
    return {"proxy_protocol": mode, "proxy_protocol_from": "127.0.0.1", **more}


@pytest.fixture(scope="module")
def pyftpd(workdir, ports, test_user):
    be = peers.start_pyftpdlib(workdir / "pp-pyftpdlib", ports, *test_user)
    yield be
    be.stop()


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("mode", ["implicit", "explicit"])
def test_header_names_the_client(gateway, pyftpd, blobs, workdir, test_user, version, mode):
    """v1 and v2 on implicit (header before the ClientHello) and explicit frontends: the
    session runs, the log's peer= and the xferlog name the header's source, the passive
    source check wants the header's source."""
    xferlog = workdir / f"pp-xfer-{version}-{mode}.log"
    gw = gateway(pyftpd, extra={"global": {"xferlog": xferlog}},
                 frontends={"x": frontend(mode, **pp_keys())})
    port = gw.fport("x")
    sha = pyftpd.put(blobs, f"pp{version}{mode}.bin", 300 * 1024)
    ftp = ProxiedFTP(header(version, ("127.0.0.5", 40123), (HOST, port)), mode == "implicit",
                     data_from="127.0.0.5")
    ftp.connect(HOST, port)
    login(ftp, *test_user)
    assert peers.sha256_bytes(get_bytes(ftp, f"pp{version}{mode}.bin")) == sha
    # From the balancer's address the data connection is not the client's: refused.
    ftp.data_from = HOST
    with pytest.raises((ftplib.Error, OSError, EOFError)):
        get_bytes(ftp, f"pp{version}{mode}.bin")
    ftp.close()
    gw.mark(0).wait("event=session_end", 10)
    log = gw.log
    assert "peer=127.0.0.5:40123 via=127.0.0.1" in log
    assert "event=data_refused leg=client-data peer=127.0.0.1" in log
    peers.wait_for(lambda: xferlog.exists() and xferlog.read_text(), 5, "xferlog")
    assert "peer=127.0.0.5:40123" in xferlog.read_text()


def raw_exchange(port: int, data: bytes, wait: float = 5) -> bytes:
    """Send data and read until the gateway closes (or `wait` seconds)."""
    s = socket.create_connection((HOST, port), 5)
    s.settimeout(wait)
    got = b""
    try:
        if data:
            s.sendall(data)
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    finally:
        s.close()
    return got


def test_refused_headers(gateway, pyftpd):
    """Malformed, missing, slow or unauthorised headers: closed without a byte, and logged;
    a v2 LOCAL (the balancer's health check) is closed quietly."""
    gw = gateway(pyftpd, extra={"global": {"login_timeout": 2}}, frontends={
        "x": frontend("explicit", **pp_keys()),
        "only9": frontend("explicit", **pp_keys(proxy_protocol_from="127.0.0.9/32")),
        "v2": frontend("explicit", **pp_keys("v2"))})
    x = gw.fport("x")
    start = gw.mark()
    assert raw_exchange(x, b"USER anonymous\r\n") == b""
    assert raw_exchange(x, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n") == b""
    assert raw_exchange(x, b"PROXY TCP4 1.2.3.4\r\nUSER x\r\n") == b""
    assert raw_exchange(gw.fport("v2"), header(1, ("127.0.0.5", 1), (HOST, x))) == b""
    assert raw_exchange(gw.fport("only9"), header(2, ("127.0.0.5", 1), (HOST, x))) == b""
    t0 = time.monotonic()
    assert raw_exchange(x, b"PROX", wait=8) == b""  # slow: login_timeout
    assert 1.5 < time.monotonic() - t0 < 6
    half = socket.create_connection((HOST, x), 5)
    half.sendall(b"PROXY TCP4 1.2")
    half.close()
    start.wait("closed inside the PROXY header", 5)
    log = start.text()
    assert log.count("event=proxy_refused") == 7, log
    for why in ["not a PROXY header", "v1: bad port", "v1: expected four fields",
                "v1 header where v2 is expected", "not in proxy_protocol_from",
                "no PROXY header within login_timeout", "closed inside the PROXY header"]:
        assert why in log, why
    assert "event=session_start" not in log
    # LOCAL, or a TCP check that sends nothing: closed, no session, no warning
    start = gw.mark()
    assert raw_exchange(x, header(2, None, None, local=True)) == b""
    socket.create_connection((HOST, x), 5).close()
    start.wait("event=proxy_missing", 5)
    log = start.text()
    assert "event=proxy_local" in log and "event=proxy_missing" in log
    assert "proxy_refused" not in log and "session_start" not in log and "session_end" not in log
    # A good header still works after all that.
    ftp = ProxiedFTP(header(1, ("127.0.0.5", 1000), (HOST, x)), False)
    assert ftp.connect(HOST, x).startswith("220")
    ftp.close()


def test_max_sessions_per_ip_counts_header_source(gateway, pyftpd):
    """Limit 1 per address: two header sources from one balancer are both admitted; the
    same source twice is refused (421 in clear on explicit)."""
    gw = gateway(pyftpd, extra={"global": {"max_sessions_per_ip": 1}},
                 frontends={"x": frontend("explicit", **pp_keys())})
    x = gw.fport("x")
    a = ProxiedFTP(header(2, ("127.0.0.5", 1), (HOST, x)), False)
    b = ProxiedFTP(header(1, ("127.0.0.6", 1), (HOST, x)), False)
    c = ProxiedFTP(header(2, ("127.0.0.5", 2), (HOST, x)), False)
    assert a.connect(HOST, x).startswith("220")
    assert b.connect(HOST, x).startswith("220")
    with pytest.raises(ftplib.error_temp, match="421"):
        c.connect(HOST, x)
    assert "peer=127.0.0.5:2 reason=\"max_sessions_per_ip reached\"" in gw.log
    for f in (a, b, c):
        f.close()


def test_port_bounce_check_uses_header_source(gateway, pyftpd, blobs, test_user):
    """PORT to the balancer's address (the real TCP peer) is a bounce; PORT to the header's
    source is the client's own: the gateway connects there."""
    gw = gateway(pyftpd, frontends={"p": frontend("plain", **pp_keys())})
    p = gw.fport("p")
    sha = pyftpd.put(blobs, "bounce.bin", 100 * 1024)
    ftp = ftplib.FTP(timeout=20)
    ftp.sock = socket.create_connection((HOST, p), 20)
    ftp.sock.sendall(header(1, ("127.0.0.5", 4000), (HOST, p)))
    ftp.af = socket.AF_INET
    ftp.file = ftp.sock.makefile("r", encoding=ftp.encoding)
    ftp.welcome = ftp.getresp()
    ftp.login(*test_user)
    with pytest.raises(ftplib.error_perm, match="500|501|504"):
        ftp.sendcmd("PORT 127,0,0,1,200,10")
    assert 'event=port_refused addr=127.0.0.1:51210 reason="not the control peer"' in gw.log
    lsock = socket.create_server(("127.0.0.5", 0))
    lport = lsock.getsockname()[1]
    ftp.sendcmd(f"PORT 127,0,0,5,{lport >> 8},{lport & 255}")
    got = []

    def accept():
        c, _ = lsock.accept()
        with c:
            while chunk := c.recv(65536):
                got.append(chunk)

    t = threading.Thread(target=accept)
    t.start()
    ftp.sendcmd("TYPE I")
    assert ftp.sendcmd("RETR bounce.bin")[0] == "1"
    t.join(20)
    assert ftp.voidresp().startswith("226")
    assert peers.sha256_bytes(b"".join(got)) == sha
    lsock.close()
    ftp.quit()


def test_proxy_protocol_data(gateway, pyftpd, blobs, test_user):
    """proxy_protocol_data = yes: passive data connections come from the balancer with a
    header naming the client; another source in the header is refused (port theft)."""
    gw = gateway(pyftpd, frontends={"x": frontend("implicit", **pp_keys(
        proxy_protocol_data="yes"))})
    x = gw.fport("x")
    sha = pyftpd.put(blobs, "ppdata.bin", 400 * 1024)
    ftp = ProxiedFTP(header(2, ("127.0.0.5", 7), (HOST, x)), True, data_header=(2, "127.0.0.5"))
    ftp.connect(HOST, x)
    login(ftp, *test_user)
    assert peers.sha256_bytes(get_bytes(ftp, "ppdata.bin")) == sha
    data = b"upload through a PROXY data header" * 3000
    ftp.storbinary("STOR ppup.bin", io.BytesIO(data))
    assert (pyftpd.root / "ppup.bin").read_bytes() == data
    ftp.data_header = (1, "127.0.0.5")  # v1 is accepted too (mode any)
    assert peers.sha256_bytes(get_bytes(ftp, "ppdata.bin")) == sha
    ftp.data_header = (2, "127.0.0.6")  # not this session's client
    with pytest.raises((ftplib.Error, OSError, EOFError)):
        get_bytes(ftp, "ppdata.bin")
    ftp.close()
    assert "reason=\"PROXY source not the control peer\"" in gw.log
    assert "event=data_refused leg=client-data peer=127.0.0.6" in gw.log


@pytest.mark.parametrize("splice", ["no", "yes"])
def test_proxy_protocol_data_in_clear(gateway, pyftpd, blobs, test_user, splice):
    """The same on a plain frontend (clear data legs, with and without the splice relay):
    the header is taken off and nothing more."""
    gw = gateway(pyftpd, extra={"global": {"splice": splice}}, frontends={
        "p": frontend("plain", **pp_keys(proxy_protocol_data="yes"))})
    p = gw.fport("p")
    sha = pyftpd.put(blobs, f"ppclear-{splice}.bin", 600 * 1024)
    ftp = ProxiedFTP(header(1, ("127.0.0.5", 7), (HOST, p)), False, data_header=(1, "127.0.0.5"))
    ftp.connect(HOST, p)
    ftplib.FTP.login(ftp, *test_user)
    assert peers.sha256_bytes(get_bytes(ftp, f"ppclear-{splice}.bin")) == sha
    data = bytes(range(256)) * 2000
    ftp.storbinary(f"STOR ppclear-up-{splice}.bin", io.BytesIO(data))
    assert (pyftpd.root / f"ppclear-up-{splice}.bin").read_bytes() == data
    ftp.quit()


def pasv_login(user: tuple[str, str], port: int, connect_to: str, source: str | None = None,
               hdr: bytes = b"") -> str:
    """Log in raw and return the address the 227 names."""
    s = socket.create_connection((connect_to, port), 10,
                                 source_address=(source, 0) if source else None)
    f = s.makefile("rb")
    try:
        if hdr:
            s.sendall(hdr)
        assert f.readline().startswith(b"220")
        s.sendall(f"USER {user[0]}\r\n".encode())
        assert f.readline().startswith(b"331")
        s.sendall(f"PASS {user[1]}\r\n".encode())
        assert f.readline().startswith(b"230")
        s.sendall(b"PASV\r\n")
        line = f.readline().decode()
        m = re.search(r"\((\d+),(\d+),(\d+),(\d+),", line)
        assert m, line
        s.sendall(b"QUIT\r\n")
        return ".".join(m.groups())
    finally:
        f.close()
        s.close()


def test_pasv_address_auto_and_for(gateway, pyftpd, ports, test_user):
    """auto: each client sees the address it connected to (127.0.0.2, .3), or the PROXY
    destination; pasv_address_for: the first network containing the client wins."""
    p1, p2 = ports.port(), ports.port()
    gateway(pyftpd, frontends={
        "auto": frontend("plain", listen=f"0.0.0.0:{p1}", pasv_address="auto",
                         pasv_address_for="127.0.0.5=10.1.1.1, 127.0.0.6/32=10.2.2.2"),
        "pp": frontend("plain", listen=f"0.0.0.0:{p2}", pasv_address="auto", **pp_keys(
            pasv_address_for="127.0.0.8/31=10.8.8.8"))})
    assert pasv_login(test_user, p1, "127.0.0.2") == "127.0.0.2"
    assert pasv_login(test_user, p1, "127.0.0.3") == "127.0.0.3"
    assert pasv_login(test_user, p1, "127.0.0.3", source="127.0.0.5") == "10.1.1.1"
    assert pasv_login(test_user, p1, "127.0.0.2", source="127.0.0.6") == "10.2.2.2"
    assert pasv_login(test_user, p2, HOST, hdr=header(2, ("203.0.113.9", 5), ("198.51.100.7", 21))) \
        == "198.51.100.7"
    assert pasv_login(test_user, p2, HOST, hdr=header(1, ("127.0.0.9", 5), ("198.51.100.7", 21))) \
        == "10.8.8.8"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_backend_receives_header(gateway, version):
    """[backend] proxy_protocol: the backend's control connection starts with a header
    naming the client (here the PROXY source of the frontend) and the address it reached."""
    # Reads the PROXY header first, records it, greets, answers QUIT.
    with FakeFTP(Plan(header=True, greeting="220 header backend", replies={"*": "502 no"})) as hb:
        gw = gateway(backend_address=hb.address,
                     backend_keys={"proxy_protocol": version},
                     frontends={"p": frontend("plain", **pp_keys())})
        p = gw.fport("p")
        s = socket.create_connection((HOST, p), 10)
        s.sendall(header(1, ("127.0.0.5", 4321), ("192.0.2.10", 2121)))
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 header backend")
        s.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"221")
        f.close()
        s.close()
        peers.wait_for(lambda: hb.headers, 5, "a header")
        got = hb.headers[0]
        if version == "v1":
            assert got == b"PROXY TCP4 127.0.0.5 192.0.2.10 4321 2121\r\n"
        else:
            assert got == header(2, ("127.0.0.5", 4321), ("192.0.2.10", 2121))


def test_config_errors(workdir):
    """proxy_protocol without proxy_protocol_from, or proxy_protocol_data alone: refused."""
    base = ("[frontend a]\nlisten = 127.0.0.1:2100\nmode = plain\n{}\n"
            "[backend b]\naddress = 127.0.0.1:21\n")
    for body, why in [("proxy_protocol = v2", "needs proxy_protocol_from"),
                      ("proxy_protocol_data = yes", "needs proxy_protocol"),
                      ("proxy_protocol = v3", "proxy_protocol"),
                      ("proxy_protocol = v1\nproxy_protocol_from = 10.0.0.0/33", "NETWORK/BITS"),
                      ("pasv_address_for = 10.0.0.0/8", "CIDR=IPV4ADDR")]:
        conf = workdir / "pp-bad.ini"
        conf.write_text(base.format(body))
        r = subprocess.run([str(peers.GATEWAY_BIN), "-t", "-c", str(conf)],
                           capture_output=True, text=True)
        assert r.returncode == 1 and why in r.stderr, (body, r.stderr)


def test_two_workers(gateway, pyftpd, blobs, test_user):
    """workers = 2: each worker reads its connections' headers; 12 parallel sessions from
    12 header sources, each with a transfer, all named right in the log."""
    gw = gateway(pyftpd, extra={"global": {"workers": 2}}, frontends={
        "x": frontend("implicit", **pp_keys(proxy_protocol_data="yes"))})
    x = gw.fport("x")
    sha = pyftpd.put(blobs, "w2.bin", 200 * 1024)

    def one(i: int) -> str:
        src = f"127.0.1.{i + 1}"
        ftp = ProxiedFTP(header(2 if i % 2 else 1, (src, 1000 + i), (HOST, x)), True,
                         data_header=(2, src))
        ftp.connect(HOST, x)
        login(ftp, *test_user)
        got = peers.sha256_bytes(get_bytes(ftp, "w2.bin"))
        ftp.quit()
        return got

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        assert list(pool.map(one, range(12))) == [sha] * 12
    log = gw.log
    for i in range(12):
        assert f"peer=127.0.1.{i + 1}:{1000 + i} via=127.0.0.1" in log
    assert "worker=0" in log and "worker=1" in log
