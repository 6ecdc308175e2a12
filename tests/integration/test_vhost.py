"""Virtual hosts: several frontends on one listen address, told apart by TLS SNI (implicit:
the ClientHello; explicit: the handshake after AUTH) or by HOST (RFC 7151) before USER.
Two pyftpdlib servers with a marker file each (its content names the backend); each
frontend has a certificate of its own (the handshake must present the chosen one)."""

from __future__ import annotations

import ftplib
import socket
import ssl

import pytest

import peers
from peers import HOST, frontend


@pytest.fixture(scope="module")
def two(workdir, ports, test_user):
    backends = {}
    for name in ["A", "B"]:
        be = peers.start_pyftpdlib(workdir / f"vhost-{name}", ports, *test_user)
        (be.root / "marker").write_bytes(name.encode())
        backends[name] = be
    yield backends
    for be in backends.values():
        be.stop()


@pytest.fixture(scope="module")
def certs(workdir):
    d = workdir / "vhost-certs"
    d.mkdir()
    return {n: peers.make_cert(d, n, cn=f"{n}.example", san=f"DNS:{n}.example")
            for n in ["a", "b", "d"]}


def der(cert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def no_verify() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def start(gateway, ports, two, certs, mode, default=True):
    """Frontends va (a.example -> A), vb (*.b.example -> B) and, with default, vd (no
    server_name -> B, certificate d) on one port of the given mode."""
    port = ports.port()
    listen = f"{HOST}:{port}"
    tls = mode != "plain"

    def keys(name, backend, server_name):
        k = {"listen": listen, "backend": backend}
        if server_name:
            k["server_name"] = server_name
        if tls:
            k["cert"], k["key"] = certs[name]
        return frontend(mode, **k)

    fes = {"va": keys("a", "bA", "a.example"), "vb": keys("b", "bB", "*.b.example")}
    if default:
        fes["vd"] = keys("d", "bB", None)
    extra = {f"backend b{n}": {"address": be.address, "tls": "none"} for n, be in two.items()}
    return gateway(backend_address=two["A"].address, extra=extra, frontends=fes), port


def curl(url, name, port, user, password, *more):
    res = peers.run(["curl", "-sS", "-k", "--resolve", f"{name}:{port}:{HOST}", "--user",
                     f"{user}:{password}", "--max-time", "20", *more, url])
    return res


def handshake(port, sni, ctx=None) -> bytes:
    """Implicit: the certificate the gateway presents for sni (DER)."""
    with socket.create_connection((HOST, port), 10) as raw:
        with (ctx or no_verify()).wrap_socket(raw, server_hostname=sni) as s:
            return s.getpeercert(binary_form=True)


def explicit_with_sni(port, sni) -> ftplib.FTP_TLS:
    """Explicit FTPS whose AUTH handshake sends sni (ftplib would send the IP: no SNI)."""
    ftp = peers.ExplicitFTPS(context=no_verify(), timeout=10)
    ftp.connect(HOST, port)
    ftp.voidcmd("AUTH TLS")
    ftp.sock = ftp.context.wrap_socket(ftp.sock, server_hostname=sni)
    ftp.file = ftp.sock.makefile("r", encoding=ftp.encoding)
    return ftp


def marker(ftp) -> bytes:
    got = []
    ftp.retrbinary("RETR marker", got.append)
    return b"".join(got)


def test_implicit_sni_chooses_frontend(gateway, ports, two, certs, test_user):
    user, password = test_user
    gw, port = start(gateway, ports, two, certs, "implicit")
    for name, want in [("a.example", b"A"), ("x.b.example", b"B"), ("zzz.example", b"B")]:
        res = curl(f"ftps://{name}:{port}/marker", name, port, user, password)
        assert res.returncode == 0 and res.stdout.encode() == want, peers.describe(res)
    # TLS 1.2: the data leg resumes the control session (tickets of the listening context).
    res = curl(f"ftps://a.example:{port}/marker", "a.example", port, user, password,
               "--tls-max", "1.2")
    assert res.returncode == 0 and res.stdout == "A", peers.describe(res)
    assert handshake(port, "a.example") == der(certs["a"][0])
    assert handshake(port, "X.B.Example") == der(certs["b"][0])
    assert handshake(port, "zzz.example") == der(certs["d"][0])  # unknown: the default
    assert handshake(port, None) == der(certs["d"][0])
    assert "event=vhost frontend=va from=vd by=sni" in gw.log
    # SNI chose: HOST naming another frontend is refused, the same one accepted.
    ftp = peers.ImplicitFTPS(context=no_verify(), timeout=10)
    raw = socket.create_connection((HOST, port), 10)
    ftp.sock = ftp.context.wrap_socket(raw, server_hostname="a.example")
    ftp.af, ftp.host = raw.family, HOST
    ftp.file = ftp.sock.makefile("r", encoding=ftp.encoding)
    try:
        assert ftp.getresp().startswith("220")
        with pytest.raises(ftplib.error_perm, match="^504"):
            ftp.sendcmd("HOST x.b.example")
        assert ftp.sendcmd("HOST a.example").startswith("220")
        ftp.login(user, password)
        ftp.prot_p()
        assert marker(ftp) == b"A"
        with pytest.raises(ftplib.error_perm, match="^503"):
            ftp.sendcmd("HOST a.example")
        ftp.quit()
    finally:
        ftp.close()


def test_explicit_sni_and_host(gateway, ports, two, certs, test_user):
    user, password = test_user
    gw, port = start(gateway, ports, two, certs, "explicit")
    for name, want in [("a.example", b"A"), ("y.b.example", b"B"), ("zzz.example", b"B")]:
        res = curl(f"ftp://{name}:{port}/marker", name, port, user, password, "--ssl-reqd")
        assert res.returncode == 0 and res.stdout.encode() == want, peers.describe(res)
    # SNI after AUTH: the certificate of a, backend A; HOST naming b is refused.
    ftp = explicit_with_sni(port, "a.example")
    try:
        assert ftp.sock.getpeercert(binary_form=True) == der(certs["a"][0])
        with pytest.raises(ftplib.error_perm, match="^504"):
            ftp.sendcmd("HOST x.b.example")
        ftp.login(user, password)
        ftp.prot_p()
        assert marker(ftp) == b"A"
        ftp.quit()
    finally:
        ftp.close()
    # No SNI (ftplib sends none for an IP): HOST before AUTH chooses.
    ftp = peers.ExplicitFTPS(context=no_verify(), timeout=10)
    ftp.connect(HOST, port)
    try:
        assert ftp.sendcmd("HOST a.example").startswith("220")
        ftp.auth()
        assert ftp.sock.getpeercert(binary_form=True) == der(certs["a"][0])
        ftp.login(user, password)
        ftp.prot_p()
        assert marker(ftp) == b"A"
        ftp.quit()
    finally:
        ftp.close()
    assert "by=host" in gw.log


def test_plain_host(gateway, ports, two, certs, test_user):
    user, password = test_user
    gw, port = start(gateway, ports, two, certs, "plain")
    for host, want in [("a.example", b"A"), ("q.b.example", b"B"), ("zzz.example", b"B"),
                       (None, b"B")]:
        ftp = ftplib.FTP(timeout=10)
        ftp.connect(HOST, port)
        try:
            assert ftp.welcome.startswith("220 FTP gateway ready")
            if host:
                assert ftp.sendcmd(f"HOST {host}").startswith("220")
            ftp.login(user, password)
            assert marker(ftp) == b"B" if host is None else marker(ftp) == want
            ftp.quit()
        finally:
            ftp.close()


def test_no_default(gateway, ports, two, certs, test_user):
    user, password = test_user
    gw, port = start(gateway, ports, two, certs, "implicit", default=False)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME|unrecognized"):
        handshake(port, "zzz.example")
    assert handshake(port, "a.example") == der(certs["a"][0])
    res = curl(f"ftps://a.example:{port}/marker", "a.example", port, user, password)
    assert res.returncode == 0 and res.stdout == "A", peers.describe(res)
    gw2, port2 = start(gateway, ports, two, certs, "plain", default=False)
    ftp = ftplib.FTP(timeout=10)
    ftp.connect(HOST, port2)
    try:
        with pytest.raises(ftplib.error_perm, match="^504"):
            ftp.sendcmd("HOST zzz.example")
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftp.sendcmd(f"USER {user}")
        assert ftp.sendcmd("HOST x.b.example").startswith("220")
        ftp.login(user, password)
        assert marker(ftp) == b"B"
        ftp.quit()
    finally:
        ftp.close()
