"""TLS and access policy (issue 14): client certificates (curl, lftp, ftplib), legacy TLS
toward old backends (TLS 1.0 and AES128-SHA-only pyftpdlib) while clients keep TLS 1.3,
data_session_reuse_exempt (stock ftplib.FTP_TLS from 127.0.0.2 vs 127.0.0.1),
strict_tls_eof per frontend and strict_tls_eof_exempt (Debian's netkit ftp-ssl), and
per-frontend [tls] overrides. Every transfer is checked by SHA-256."""

from __future__ import annotations

import datetime
import ftplib
import hashlib
import io
import os
import re
import socket
import ssl
import subprocess
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import faults
import peers
from peers import HOST, backend_tls, curl, frontend, lftp, sha256_bytes, sha256_file

EXEMPT_HOST = "127.0.0.2"  # "another host" for the per-network exemptions


# ---------------------------------------------------------------------------------------
# A test PKI: a CA, client certificates, one revoked in a CRL, one from another CA


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


class PKI:
    def __init__(self, d: Path):
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        self.start, self.end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7)
        self.ca_key, self.ca = self._ca("ftpsgate test CA", "ca")
        self.other_key, self.other = self._ca("another CA", "other-ca")
        self.certs: dict[str, tuple[Path, Path]] = {}
        self.serials: dict[str, int] = {}
        self.client("alice", san="alice@example.org")
        self.client("bob")
        self.client("carol")  # revoked below
        self.client("alice-other-ca", cn="alice", issuer=(self.other_key, self.other))
        self.crl = d / "crl.pem"
        crl = (x509.CertificateRevocationListBuilder().issuer_name(self.ca.subject)
               .last_update(self.start).next_update(self.end)
               .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                        .serial_number(self.serials["carol"])
                                        .revocation_date(self.start).build())
               .sign(self.ca_key, hashes.SHA256()))
        self.crl.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        self.ca_file = d / "ca.crt"

    def _ca(self, cn: str, stem: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(self.start).not_valid_after(self.end)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        (self.dir / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return key, cert

    def client(self, stem: str, cn: str | None = None, san: str | None = None, issuer=None):
        ikey, icert = issuer or (self.ca_key, self.ca)
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        b = (x509.CertificateBuilder().subject_name(_name(cn or stem)).issuer_name(icert.subject)
             .public_key(key.public_key()).serial_number(serial)
             .not_valid_before(self.start).not_valid_after(self.end)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                            critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 ikey.public_key()), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(san)]),
                                critical=False)
        cert = b.sign(ikey, hashes.SHA256())
        crt, kf = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(kf, key)
        self.certs[stem] = (crt, kf)
        self.serials[stem] = serial


@pytest.fixture(scope="module")
def pki(workdir):
    return PKI(workdir / "tls-policy-pki")


def cert_ctx(tls_cert, pki: PKI, who: str | None) -> ssl.SSLContext:
    ctx = peers.client_context(tls_cert[0])
    if who:
        ctx.load_cert_chain(*map(str, pki.certs[who]))
    return ctx


@pytest.fixture(scope="module")
def cgw(workdir, ports, tls_cert, pyftpdlib, pki):
    """fe: implicit, client_cert = required (with CRL); xr: explicit required;
    o: implicit optional; u: implicit required + client_cert_user; xo: explicit optional +
    client_cert_user."""
    req = {"client_cert": "required", "client_ca": pki.ca_file, "client_crl": pki.crl}
    with faults.gateway_factory(workdir, ports, tls_cert, "tls-policy-certs") as factory:
        yield factory(
            pyftpdlib,
            frontends={"xr": frontend("explicit", **req),
                       "o": frontend("implicit", client_cert="optional",
                                     client_ca=pki.ca_file, client_crl=pki.crl),
                       "u": frontend("implicit", client_cert_user=True, **req),
                       "xo": frontend("explicit", client_cert="optional",
                                      client_ca=pki.ca_file, client_cert_user=True),
                       "n": frontend("implicit"),
                       "xp": frontend("explicit", require_tls=False, **req)},
            extra={"frontend fe": req, "global": {"max_sessions_per_ip": 500}})


def curl_cert(pki: PKI, who: str | None) -> list[str]:
    if not who:
        return []
    crt, key = pki.certs[who]
    return ["--cert", str(crt), "--key", str(key)]


def curl_url(gw, fe: str, path: str, user: str, password: str) -> str:
    scheme = "ftps" if fe in ("fe", "o", "u", "n") else "ftp"
    return f"{scheme}://{user}:{password}@{HOST}:{gw.fport(fe)}/{path}"


# ---------------------------------------------------------------------------------------
# Client certificates


@pytest.mark.parametrize("fe", ["fe", "xr"], ids=["implicit", "explicit"])
def test_client_cert_required(cgw, pyftpdlib, blobs, pki, fe):
    """curl with a valid certificate downloads and uploads (SHA-256); without one, with a
    revoked one or one from another CA, the handshake fails and the gateway logs it."""
    src, _ = blobs.blob(700_000)
    pyftpdlib.put(blobs, "cert-src.bin", 700_000)
    u, p = pyftpdlib.user, pyftpdlib.password
    cur = cgw.mark()
    got = pyftpdlib.root.parent / f"cert-{fe}.out"
    res = curl(*curl_cert(pki, "alice"), "-o", str(got), curl_url(cgw, fe, "cert-src.bin", u, p))
    assert res.returncode == 0, peers.describe(res)
    assert sha256_file(got) == sha256_file(src)
    res = curl(*curl_cert(pki, "alice"), "-T", str(src),
               curl_url(cgw, fe, f"cert-up-{fe}.bin", u, p))
    assert res.returncode == 0, peers.describe(res)
    assert sha256_file(pyftpdlib.path(f"cert-up-{fe}.bin")) == sha256_file(src)
    line = cur.wait(r"event=client_cert subject=\"CN=alice\" "
                       r"issuer=\"CN=ftpsgate test CA\"").string
    cur.wait(r"event=login_cert user=\"%s\" subject=\"CN=alice\"" % u)
    assert "level=info" in line
    for who in (None, "carol", "alice-other-ca"):
        cur = cgw.mark()
        res = curl(*curl_cert(pki, who), "-o", os.devnull, curl_url(cgw, fe, "cert-src.bin", u, p))
        assert res.returncode != 0, f"{who}: " + peers.describe(res)
        reason = {None: "peer did not return a certificate",
                  "carol": "client certificate verify failed: certificate revoked",
                  "alice-other-ca": "client certificate verify failed: unable to get local "
                                    "issuer certificate"}[who]
        cur.wait(rf"event=client_error reason=\"handshake failed: .*{reason}")
        assert "event=client_cert " not in cur.text()


def test_client_cert_optional(cgw, pyftpdlib, blobs, pki):
    """optional: a client without a certificate logs in; with a valid one too; a certificate
    that does not verify (revoked, other CA) is still refused."""
    u, p = pyftpdlib.user, pyftpdlib.password
    for who in (None, "alice"):
        res = curl(*curl_cert(pki, who), curl_url(cgw, "o", "", u, p))
        assert res.returncode == 0, f"{who}: " + peers.describe(res)
    for who in ("carol", "alice-other-ca"):
        res = curl(*curl_cert(pki, who), curl_url(cgw, "o", "", u, p))
        assert res.returncode != 0, f"{who}: " + peers.describe(res)


def test_client_cert_lftp(cgw, pyftpdlib, blobs, pki, workdir):
    """lftp with ssl:cert-file/ssl:key-file through a required implicit frontend: upload and
    download, SHA-256 on both ends; without the certificate the connection fails."""
    src, _ = blobs.blob(700_000)
    crt, key = pki.certs["bob"]
    got = workdir / "lftp-cert.out"
    settings = [f"set ssl:cert-file {crt}", f"set ssl:key-file {key}"]
    res = lftp(f"ftps://{HOST}:{cgw.port}", pyftpdlib.user, pyftpdlib.password,
               [f"put {src} -o lftp-cert.bin", f"get lftp-cert.bin -o {got}"],
               settings=settings)
    assert res.returncode == 0, peers.describe(res)
    assert sha256_file(pyftpdlib.path("lftp-cert.bin")) == sha256_file(src)
    assert sha256_file(got) == sha256_file(src)
    res = lftp(f"ftps://{HOST}:{cgw.port}", pyftpdlib.user, pyftpdlib.password, ["ls"],
               timeout=60)
    assert res.returncode != 0, peers.describe(res)


def test_client_cert_user(cgw, pyftpdlib, tls_cert, pki):
    """client_cert_user: USER must be the certificate's CN (or first DNS/email SAN), else
    530 before the backend sees the USER; the matching user logs in and transfers."""
    u, p = pyftpdlib.user, pyftpdlib.password
    port = cgw.fport("u")
    # The backend's user is not "alice": the gateway answers 530 itself.
    for who in ("alice", "bob"):
        with peers.ImplicitFTPS(context=cert_ctx(tls_cert, pki, who), timeout=20) as ftp:
            ftp.connect(HOST, port)
            with pytest.raises(ftplib.error_perm, match=r"^530 USER does not match the TLS "
                                                        r"client certificate\."):
                ftp.sendcmd(f"USER {u}")
            # The CN and the first email SAN both match (and reach the backend's USER).
            assert ftp.sendcmd("USER alice" if who == "alice" else "USER bob").startswith("331")
            if who == "alice":
                assert ftp.sendcmd("USER alice@example.org").startswith("331")
            ftp.sendcmd("QUIT")
    # A certificate whose CN is the backend's user: a full session with a transfer.
    stem = f"user-{u}"
    if stem not in pki.certs:
        pki.client(stem, cn=u)
    data = os.urandom(300_000)
    with peers.ImplicitFTPS(context=cert_ctx(tls_cert, pki, stem), timeout=20) as ftp:
        ftp.connect(HOST, port)
        ftp.login(u, p)
        ftp.prot_p()
        ftp.storbinary("STOR cert-user.bin", io.BytesIO(data))
        chunks: list[bytes] = []
        ftp.retrbinary("RETR cert-user.bin", chunks.append)
        assert sha256_bytes(b"".join(chunks)) == sha256_bytes(data)
        ftp.quit()


def test_client_cert_user_optional_without_cert(cgw, pyftpdlib, client_ctx):
    """explicit + optional + client_cert_user: the handshake without a certificate completes,
    and USER gets the clear 530."""
    with ftplib.FTP_TLS(context=client_ctx, timeout=20) as ftp:
        ftp.connect(HOST, cgw.fport("xo"))
        ftp.auth()
        with pytest.raises(ftplib.error_perm, match=r"^530 USER does not match"):
            ftp.sendcmd(f"USER {pyftpdlib.user}")


def test_client_cert_data_leg(cgw, pyftpdlib, tls_cert, pki):
    """Data connections resume the control session and present no certificate of their own;
    a data handshake presenting another certificate than the control connection's is
    refused (522) while the same session's resumed transfers work."""
    ctx = cert_ctx(tls_cert, pki, "alice")
    other = cert_ctx(tls_cert, pki, "bob")
    data = os.urandom(100_000)
    pyftpdlib.put_bytes("cert-leg.bin", data)
    cur = cgw.mark()
    with peers.ftplib_session(cgw.fport("o"), pyftpdlib.user, pyftpdlib.password, ctx) as ftp:
        chunks: list[bytes] = []
        ftp.retrbinary("RETR cert-leg.bin", chunks.append)
        assert sha256_bytes(b"".join(chunks)) == sha256_bytes(data)
        # A fresh (not resumed) data handshake with bob's certificate: refused.
        ftp.voidcmd("TYPE I")
        host, port = peers.parse_227(ftp.sendcmd("PASV"))
        raw = socket.create_connection((host, port), timeout=10)
        ftp.putcmd("RETR cert-leg.bin")
        try:
            try:
                tls = other.wrap_socket(raw, server_hostname="localhost")
                tls.recv(1)
                tls.close()
            except (ssl.SSLError, OSError):
                raw.close()
            with pytest.raises(ftplib.error_perm, match=r"^522"):
                while ftp.getresp()[:3] in ("125", "150"):
                    pass
        finally:
            raw.close()
        chunks = []
        ftp.retrbinary("RETR cert-leg.bin", chunks.append)  # the session goes on
        assert sha256_bytes(b"".join(chunks)) == sha256_bytes(data)
    cur.wait(r"event=data_tls_refused reason=\"another client certificate\" "
                r"subject=\"CN=bob\"")


def test_no_client_cert_by_default(cgw, pyftpdlib, pki):
    """A frontend without client_cert does not ask: curl with and without a certificate."""
    for who in (None, "alice"):
        res = curl(*curl_cert(pki, who), curl_url(cgw, "n", "", pyftpdlib.user,
                                                  pyftpdlib.password))
        assert res.returncode == 0, peers.describe(res)


# ---------------------------------------------------------------------------------------
# data_session_reuse_exempt: stock ftplib (no resumption) from an exempt address


@pytest.fixture(scope="module")
def xgw(workdir, ports, tls_cert, pyftpdlib):
    """[tls] data_session_reuse_exempt = 127.0.0.2 (and a net): x (explicit) inherits it, xs
    replaces it with an empty list; eof: strict_tls_eof = no; eofx/eofn: exemptions of
    127.0.0.0/8 (where ftp-ssl connects from) and of 127.0.0.2 only."""
    admin = ports.port()
    with faults.gateway_factory(workdir, ports, tls_cert, "tls-policy-exempt") as factory:
        gw = factory(
            pyftpdlib,
            frontends={"x": frontend("explicit"),
                       "xs": frontend("explicit", data_session_reuse_exempt=""),
                       "eof": frontend("explicit", strict_tls_eof="no",
                                       data_session_reuse="optional"),
                       "eofx": frontend("explicit", data_session_reuse="optional",
                                        strict_tls_eof_exempt="::1, 127.0.0.0/8"),
                       "eofn": frontend("explicit", data_session_reuse="optional",
                                        strict_tls_eof_exempt=EXEMPT_HOST)},
            extra={"global": {"max_sessions_per_ip": 500, "admin_listen": f"{HOST}:{admin}"},
                   "tls": {"data_session_reuse_exempt": f"192.0.2.0/24, {EXEMPT_HOST}"}})
        gw.admin = f"http://{HOST}:{admin}"
        yield gw


def stock_ftplib(port: int, source: str, ctx: ssl.SSLContext) -> ftplib.FTP_TLS:
    ftp = ftplib.FTP_TLS(context=ctx, timeout=20, source_address=(source, 0))
    ftp.connect(HOST, port)
    ftp.auth()
    return ftp


def test_data_reuse_exempt(xgw, pyftpdlib, client_ctx):
    """Stock FTP_TLS does not resume: from 127.0.0.2 (exempt) it transfers (SHA-256 both
    ways, logged event=data_reuse_exempt), from 127.0.0.1 it gets 522 as before; on a
    frontend whose own (empty) list replaces [tls]'s, 127.0.0.2 gets 522 too."""
    data = os.urandom(500_000)
    pyftpdlib.put_bytes("exempt.bin", data)
    cur = xgw.mark()
    ftp = stock_ftplib(xgw.fport("x"), EXEMPT_HOST, client_ctx)
    try:
        ftp.login(pyftpdlib.user, pyftpdlib.password)
        ftp.prot_p()
        chunks: list[bytes] = []
        ftp.retrbinary("RETR exempt.bin", chunks.append)
        assert sha256_bytes(b"".join(chunks)) == sha256_bytes(data)
        ftp.storbinary("STOR exempt-up.bin", io.BytesIO(data))
        ftp.quit()
    finally:
        ftp.close()
    assert sha256_file(pyftpdlib.path("exempt-up.bin")) == sha256_bytes(data)
    lines = cur.grep(r"event=data_reuse_exempt")
    assert len(lines) == 2, cur.text()[-3000:]
    with urllib.request.urlopen(xgw.admin + "/metrics", timeout=10) as r:  # and counted
        assert re.search(r"^ftpsgate_data_reuse_exempt_total 2$", r.read().decode(), re.M)
    for port, source in ((xgw.fport("x"), HOST), (xgw.fport("xs"), EXEMPT_HOST)):
        cur = xgw.mark()
        ftp = stock_ftplib(port, source, client_ctx)
        try:
            ftp.login(pyftpdlib.user, pyftpdlib.password)
            ftp.prot_p()
            with pytest.raises(ftplib.error_perm, match=r"^522"):
                ftp.retrbinary("RETR exempt.bin", lambda b: None)
        finally:
            ftp.close()
        cur.wait(r"event=data_tls_refused reason=\"session not resumed\"")
        assert "event=data_reuse_exempt" not in cur.text()


# ---------------------------------------------------------------------------------------
# strict_tls_eof per frontend and strict_tls_eof_exempt: Debian's netkit ftp-ssl


def ftp_ssl_put(port: int, user: str, password: str, src: Path, name: str) -> str:
    """netkit ftp-ssl (explicit AUTH TLS, PROT P, passive) puts src as name; its output."""
    cmds = f"user {user} {password}\nbinary\npassive\nput {src} {name}\nquit\n"
    res = subprocess.run(["ftp-ssl", "-n", "-v", "-z", "secure", "-z", "verify=0", HOST,
                          str(port)], input=cmds.encode(), capture_output=True, timeout=60)
    return (res.stdout + res.stderr).decode(errors="replace")


@pytest.mark.parametrize("fe, strict", [("xs", True), ("eof", False), ("eofx", False),
                                        ("eofn", True)],
                         ids=["default", "strict_no", "exempt", "exempt-other-net"])
def test_ftp_ssl_strict_eof(xgw, pyftpdlib, blobs, fe, strict):
    """netkit ftp-ssl ends uploads without close_notify. Under the default strict_tls_eof
    its put gets 426 and the upload is aborted toward the server (which records a failure:
    client and server agree); with strict_tls_eof = no on its frontend, or its network
    (127.0.0.0/8: ftp-ssl cannot pick its source address) in strict_tls_eof_exempt, the
    same put gets 226 and the file arrives whole; an exemption for another network does not
    help."""
    src, digest = blobs.blob(700_000)
    name = f"netkit-{fe}.bin"
    cur = xgw.mark()
    out = ftp_ssl_put(xgw.fport(fe), pyftpdlib.user, pyftpdlib.password, src, name)
    assert re.search(r"^234 ", out, re.M) and re.search(r"^200 PROT", out, re.M), out
    if strict:
        assert "426 Transfer aborted: upload ended without TLS close_notify." in out, out
    else:
        # A 426 reply line, not the digits ("1426.4359 MB/s" was printed once).
        assert re.search(r"^226 ", out, re.M) and not re.search(r"^426 ", out, re.M), out
    cur.wait(r"event=data_eof leg=client-data close_notify=no")
    if strict:
        cur.wait(r"event=data_unsafe_eof")
        peers.wait_for(lambda: re.search(r"STOR .*%s completed=0" % re.escape(name),
                                         pyftpdlib.log.read_text(errors="replace")),
                       10, f"pyftpdlib to record {name} as failed")
        return
    # Exempt: every byte the client sent reaches the server, which counts it complete.
    peers.wait_for(lambda: pyftpdlib.path(name).exists() and
                   sha256_file(pyftpdlib.path(name)) == digest, 10, f"{name} complete")


# ---------------------------------------------------------------------------------------
# Legacy TLS toward old backends, while clients keep TLS 1.3

LEGACY_SERVER = """\
import sys
from OpenSSL import SSL
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import TLS_FTPHandler
from pyftpdlib.servers import FTPServer

host, port, root, user, password, pem, kind = sys.argv[1:]
ctx = SSL.Context(SSL.TLS_METHOD)
if kind == "tls1":  # an old server: TLS 1.0 only (OpenSSL 3 needs SECLEVEL 0 for it)
    ctx.set_min_proto_version(SSL.TLS1_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_VERSION)
    ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
else:  # TLS 1.2 with nothing but AES128-SHA (RSA key exchange, SHA-1 MAC)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(b"AES128-SHA:@SECLEVEL=0")
ctx.use_certificate_chain_file(pem)
ctx.use_privatekey_file(pem)
authorizer = DummyAuthorizer()
authorizer.add_user(user, password, root, perm="elradfmwMT")
handler = TLS_FTPHandler
handler.authorizer = authorizer
handler.ssl_context = ctx
handler.tls_control_required = True
handler.tls_data_required = True
server = FTPServer((host, int(port)), handler)
server.max_cons = 64
server.serve_forever()
"""

LEGACY = {"tls1": ({"min_version": "TLSv1", "ciphers": "DEFAULT:@SECLEVEL=0"}, "TLSv1/"),
          "aes128sha": ({"max_version": "TLSv1.2", "ciphers": "AES128-SHA"},
                        "TLSv1.2/AES128-SHA")}


@pytest.fixture(scope="module", params=list(LEGACY))
def legacy_backend(request, workdir, ports, test_user):
    kind = request.param
    d = workdir / f"legacy-{kind}"
    d.mkdir(exist_ok=True)
    root = d / "root"
    root.mkdir(exist_ok=True)
    # RSA: AES128-SHA has RSA key exchange only.
    cert, key = d / "server.crt", d / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "7", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True,
                   capture_output=True, timeout=60)
    pem = d / "server.pem"
    pem.write_text(cert.read_text() + key.read_text())
    script = d / "server.py"
    script.write_text(LEGACY_SERVER)
    port = ports.port()
    log = d / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([peers.PYTHON, str(script), HOST, str(port), str(root),
                                 *test_user, str(pem), kind], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    peers.wait_listening(proc, port, 15, f"legacy {kind} server", log)
    backend = replace(peers.Backend(f"legacy-{kind}", port, *test_user, root, "", proc, log),
                      tls="explicit", cert=cert)
    yield kind, backend
    backend.stop()


def test_legacy_backend(gateway, legacy_backend, client_ctx):
    """A backend limited to TLS 1.0 (or to TLS 1.2 with only AES128-SHA) is reached with
    min_version/ciphers lowered for it alone: the client negotiates TLS 1.3 with the
    gateway, the backend leg runs the legacy protocol, the upload and download match by
    SHA-256, and event=weak_tls backend=be is logged at start. The same backend without
    those keys (the strict default) fails cleanly: 421 to the client."""
    kind, server = legacy_backend
    keys, negotiated = LEGACY[kind]
    gw = gateway(server, backend_keys=backend_tls("explicit", ca_file=server.cert, **keys),
                 frontends={"x": frontend("explicit")})
    assert re.search(r"level=warn session=- event=weak_tls backend=be ", gw.log), gw.log[-2000:]
    data = os.urandom(1_200_000)
    cur = gw.mark()
    for port, session in ((gw.port, peers.ftplib_session),
                          (gw.fport("x"), peers.ftplib_explicit_session)):
        with session(port, server.user, server.password, client_ctx) as ftp:
            assert ftp.sock.version() == "TLSv1.3"
            name = f"legacy-{kind}-{port}.bin"
            ftp.storbinary(f"STOR {name}", io.BytesIO(data))
            chunks: list[bytes] = []
            ftp.retrbinary(f"RETR {name}", chunks.append)
            assert sha256_bytes(b"".join(chunks)) == sha256_bytes(data)
        assert sha256_file(server.path(name)) == sha256_bytes(data)
    log = cur.text()
    assert f"event=backend_tls tls={negotiated}" in log, log[-3000:]
    assert "event=tls_established tls=TLSv1.3/" in log, log[-3000:]
    if kind != "tls1":
        return  # OpenSSL's default list (empty ciphers) still has AES128-SHA at TLS 1.2

    # The strict default toward backends (TLS 1.2 and up) fails cleanly against it.
    strict = gateway(server, backend_keys=backend_tls("explicit", ca_file=server.cert))
    assert "event=weak_tls" not in strict.log
    cur = strict.mark()
    with pytest.raises(ftplib.error_temp, match=r"^421 .*backend TLS failed"):
        with peers.ftplib_session(strict.port, server.user, server.password, client_ctx):
            pass
    cur.wait(r"event=backend_\w+ .*(handshake|TLS)")


# ---------------------------------------------------------------------------------------
# Per-frontend [tls] overrides: one listener legacy, another strict


def test_frontend_tls_overrides(gateway, pyftpdlib, tls_cert):
    """[tls] min_version = TLSv1.3 for every frontend but "legacy", which sets TLSv1.2, a
    CBC cipher and data_session_reuse = optional for itself: a TLS 1.2 client (stock
    FTP_TLS, no resumption) transfers there with that cipher and is refused on the strict
    frontends (implicit "fe" and explicit "x")."""
    gw = gateway(pyftpdlib, frontends={
        "legacy": frontend("explicit", min_version="TLSv1.2",
                           ciphers="ECDHE-ECDSA-AES128-SHA", data_session_reuse="optional"),
        "x": frontend("explicit")},
        extra={"tls": {"min_version": "TLSv1.3"}})
    ctx12 = peers.client_context(tls_cert[0])
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx12.set_ciphers("ECDHE-ECDSA-AES128-SHA")
    data = os.urandom(400_000)
    ftp = ftplib.FTP_TLS(context=ctx12, timeout=20)
    ftp.connect(HOST, gw.fport("legacy"))
    try:
        ftp.auth()
        assert ftp.sock.version() == "TLSv1.2"
        assert ftp.sock.cipher()[0] == "ECDHE-ECDSA-AES128-SHA"
        ftp.login(pyftpdlib.user, pyftpdlib.password)
        ftp.prot_p()
        ftp.storbinary("STOR override.bin", io.BytesIO(data))
        chunks: list[bytes] = []
        ftp.retrbinary("RETR override.bin", chunks.append)
        assert sha256_bytes(b"".join(chunks)) == sha256_bytes(data)
        ftp.quit()
    finally:
        ftp.close()
    assert sha256_file(pyftpdlib.path("override.bin")) == sha256_bytes(data)
    with socket.create_connection((HOST, gw.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            ctx12.wrap_socket(raw, server_hostname="localhost")
    ftp = ftplib.FTP_TLS(context=ctx12, timeout=20)
    ftp.connect(HOST, gw.fport("x"))
    try:
        with pytest.raises(ssl.SSLError):
            ftp.auth()
    finally:
        ftp.close()


def test_client_cert_policy_follows_sni(gateway, pyftpdlib, ports, pki, tls_cert):
    """Virtual hosts on one address: the frontend SNI picks also brings its client_cert
    policy (the handshake switches context after the ClientHello): "secure.example" requires
    a certificate, the default frontend does not."""
    listen = f"{HOST}:{ports.port()}"
    gw = gateway(pyftpdlib, frontends={
        "d": frontend("implicit", listen=listen),
        "secure": frontend("implicit", listen=listen, server_name="secure.example",
                           client_cert="required", client_ca=pki.ca_file)})
    port = int(listen.rsplit(":", 1)[1])

    def handshake(sni: str, who: str | None) -> str:
        ctx = cert_ctx(tls_cert, pki, who)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection((HOST, port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=sni) as tls:
                return tls.recv(200).decode(errors="replace")  # TLS 1.3: the alert arrives here

    assert handshake("other.example", None).startswith("220 ")
    assert handshake("secure.example", "alice").startswith("220 ")
    cur = gw.mark()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake("secure.example", None)
    cur.wait(r"event=client_error reason=\"handshake failed: .*peer did not return a "
                r"certificate")


def test_client_cert_required_without_auth(cgw, pyftpdlib):
    """explicit + required + require_tls = no: a client that skips AUTH gets a clear 530
    at USER (no login without a verified certificate)."""
    with ftplib.FTP(timeout=20) as ftp:
        ftp.connect(HOST, cgw.fport("xp"))
        with pytest.raises(ftplib.error_perm, match=r"^530 A TLS client certificate is "
                                                    r"required"):
            ftp.sendcmd(f"USER {pyftpdlib.user}")
