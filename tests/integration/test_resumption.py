"""TLS session resumption across policies and between sibling connections (issue 18).

1. A TLS session (ticket or session ID, TLS 1.2 and 1.3) resumes only on the frontend whose
   TLS policy issued it: virtual hosts on one address chosen by SNI or HOST, a session of
   open.example (no client certificate) offered to strict.example (client_cert = required
   or optional, other ciphers) is never resumed there: a full handshake asks for the
   certificate (none: refused).
2. Sibling resumption: a data connection that resumes a session issued to another control
   connection of the same user from the same address is accepted (rule=sibling, counted);
   another user's session is refused with 522 and a reason naming it.
Real clients: Python ssl/ftplib (session=), openssl s_client, curl, rclone."""

from __future__ import annotations

import ftplib
import io
import os
import re
import shutil
import socket
import ssl
import subprocess
import urllib.request

import pytest

import faults
import peers
from peers import HOST, frontend
from test_tls_policy import PKI

# "1.2-id": TLS 1.2 without tickets (session-ID resumption only).
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.2-id": ssl.TLSVersion.TLSv1_2,
            "1.3": ssl.TLSVersion.TLSv1_3}


@pytest.fixture(scope="module")
def pki(workdir):
    return PKI(workdir / "resumption-pki")


def tls_ctx(version: str, pki: PKI | None = None, who: str | None = None,
            ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = VERSIONS[version]
    if version == "1.2-id":
        ctx.options |= ssl.OP_NO_TICKET
    if ciphers:
        ctx.set_ciphers(ciphers)
    if who:
        ctx.load_cert_chain(*map(str, pki.certs[who]))
    return ctx


def vhosts(gateway, pyftpdlib, ports, mode: str, strict: dict, open_keys: dict | None = None):
    """Frontends "open" (open.example, no client certificate) and "strict" (strict.example,
    the given policy) on one address; returns (gw, port)."""
    listen = f"{HOST}:{ports.port()}"
    gw = gateway(pyftpdlib, frontends={
        "open": frontend(mode, listen=listen, server_name="open.example", **(open_keys or {})),
        "strict": frontend(mode, listen=listen, server_name="strict.example", **strict)})
    return gw, int(listen.rsplit(":", 1)[1])


def required(pki: PKI) -> dict:
    return {"client_cert": "required", "client_ca": pki.ca_file}


def implicit_conn(port: int, ctx: ssl.SSLContext, sni: str,
                  session: ssl.SSLSession | None = None) -> peers.Control:
    raw = socket.create_connection((HOST, port), 10)
    try:
        tls = ctx.wrap_socket(raw, server_hostname=sni, session=session)
    except BaseException:
        raw.close()
        raise
    return peers.Control(tls)


def explicit_conn(port: int, ctx: ssl.SSLContext, sni: str | None,
                  session: ssl.SSLSession | None = None, host: str | None = None
                  ) -> peers.Control:
    """AUTH TLS with the given SNI (None: no SNI), after HOST host when given."""
    ctl = peers.Control(socket.create_connection((HOST, port), 10))
    try:
        assert ctl.reply()[0] == 220
        if host:
            assert ctl.cmd(f"HOST {host}")[0] == 220
        assert ctl.cmd("AUTH TLS")[0] == 234
        ctl.sock = ctx.wrap_socket(ctl.sock, server_hostname=sni, session=session)
    except BaseException:
        ctl.close()
        raise
    return ctl


def take_session(ctl: peers.Control, implicit: bool) -> ssl.SSLSession:
    """Read past the greeting (TLS 1.3 tickets come after the handshake) and keep the
    session."""
    if implicit:
        assert ctl.reply()[0] == 220
    assert ctl.cmd("NOOP")[0] == 200
    sess = ctl.sock.session
    ctl.close()
    return sess


def login_outcome(ctl: peers.Control, implicit: bool, user: str, password: str) -> str:
    """What a client gets after a handshake: 'refused' (the handshake or the first read
    fails) or the codes of greeting, USER, PASS."""
    try:
        codes = []
        if implicit:
            codes.append(ctl.reply()[0])
        codes.append(ctl.cmd(f"USER {user}")[0])
        if codes[-1] == 331:
            codes.append(ctl.cmd(f"PASS {password}")[0])
        return " ".join(map(str, codes))
    except (ssl.SSLError, ConnectionError, TimeoutError, EOFError, OSError):
        return "refused"
    finally:
        ctl.close()


@pytest.mark.parametrize("version", ["1.2", "1.2-id", "1.3"])
@pytest.mark.parametrize("mode", ["implicit", "explicit"])
def test_no_resumption_across_sni_policies(gateway, pyftpdlib, ports, pki, mode, version):
    """The issue's bypass: a session of open.example offered with SNI strict.example
    (client_cert = required) is not resumed; without a certificate the full handshake
    fails, with one it succeeds (the certificate was asked for) and logs in."""
    user, password = pyftpdlib.user, pyftpdlib.password
    gw, port = vhosts(gateway, pyftpdlib, ports, mode, required(pki))
    implicit = mode == "implicit"
    connect = implicit_conn if implicit else explicit_conn
    for who in [None, "alice"]:
        ctx = tls_ctx(version, pki, who)
        sess = take_session(connect(port, ctx, "open.example"), implicit)
        assert sess is not None
        # The session resumes on its own frontend (so the test can fail).
        ctl = connect(port, ctx, "open.example", session=sess)
        assert ctl.sock.session_reused, "resumption on the issuing frontend"
        ctl.close()
        cur = gw.mark()
        try:
            ctl = connect(port, ctx, "strict.example", session=sess)
        except (ssl.SSLError, ConnectionError):
            assert who is None, "a client with a certificate completes a full handshake"
            continue
        assert not ctl.sock.session_reused, f"{mode} TLS {version}: resumed across policies"
        got = login_outcome(ctl, implicit, user, password)
        if who is None:
            assert got == "refused", f"without a certificate: {got}"
        else:
            want = "220 331 230" if implicit else "331 230"
            assert got == want, cur.text()
            assert "event=client_cert subject=\"CN=alice\"" in cur.text()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_no_resumption_into_optional_or_other_ciphers(gateway, pyftpdlib, ports, pki, version):
    """client_cert = optional and other ciphers: the session of open.example is not resumed
    on strict.example (a full handshake, with strict's own cipher)."""
    gw, port = vhosts(gateway, pyftpdlib, ports, "implicit",
                      {"client_cert": "optional", "client_ca": pki.ca_file,
                       "ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384",
                       "ciphersuites": "TLS_AES_256_GCM_SHA384"},
                      {"ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256",
                       "ciphersuites": "TLS_AES_128_GCM_SHA256"})
    ctx = tls_ctx(version)
    sess = take_session(implicit_conn(port, ctx, "open.example"), True)
    ctl = implicit_conn(port, ctx, "strict.example", session=sess)
    try:
        assert not ctl.sock.session_reused
        assert "AES_256" in ctl.sock.cipher()[0] or "AES256" in ctl.sock.cipher()[0]
        assert ctl.reply()[0] == 220
    finally:
        ctl.close()


@pytest.mark.parametrize("version", ["1.2", "1.2-id", "1.3"])
def test_no_resumption_across_host_policies(gateway, pyftpdlib, ports, pki, version):
    """HOST chooses before AUTH (no SNI): a session taken after HOST open.example is not
    resumed after HOST strict.example; HOST after AUTH cannot move the session to a
    frontend of another TLS policy (504)."""
    user, password = pyftpdlib.user, pyftpdlib.password
    gw, port = vhosts(gateway, pyftpdlib, ports, "explicit", required(pki))
    ctx = tls_ctx(version)
    sess = take_session(explicit_conn(port, ctx, None, host="open.example"), False)
    ctl = explicit_conn(port, ctx, None, host="open.example", session=sess)
    assert ctl.sock.session_reused
    ctl.close()
    try:
        ctl = explicit_conn(port, ctx, None, session=sess, host="strict.example")
    except (ssl.SSLError, ConnectionError):
        pass
    else:
        assert not ctl.sock.session_reused
        assert login_outcome(ctl, False, user, password) == "refused"
    # TLS negotiated for open.example (no SNI, no HOST: the listener's), then HOST strict.
    ctl = explicit_conn(port, ctx, None)
    try:
        code, text = ctl.cmd("HOST strict.example")
        assert code == 504, text
        assert ctl.cmd("HOST open.example")[0] == 220  # the policy the handshake ran under
        assert ctl.cmd(f"USER {user}")[0] == 331
    finally:
        ctl.close()


def s_client(port: int, version: str, sni: str, *more) -> subprocess.CompletedProcess:
    """One s_client connection that reads the greeting, sends NOOP (TLS 1.3 tickets come
    after the handshake) and QUIT."""
    return subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{port}", version,
                           "-servername", sni, "-ign_eof", *map(str, more)],
                          input="NOOP\r\nQUIT\r\n", capture_output=True, text=True,
                          timeout=20)


def test_openssl_s_client_sess_in(gateway, pyftpdlib, ports, pki, tmp_path):
    """openssl s_client -sess_out on open.example, -sess_in with -servername strict.example
    (TLS 1.2 and 1.3): never 'Reused'."""
    gw, port = vhosts(gateway, pyftpdlib, ports, "implicit", required(pki))
    for version in ["-tls1_2", "-tls1_3"]:
        sess = tmp_path / f"sess{version}.pem"
        res = s_client(port, version, "open.example", "-sess_out", sess)
        assert sess.exists(), peers.describe(res)
        res = s_client(port, version, "open.example", "-sess_in", sess)
        assert "Reused," in res.stdout, peers.describe(res)
        res = s_client(port, version, "strict.example", "-sess_in", sess)
        assert "Reused," not in res.stdout, peers.describe(res)
        assert "\n220 " not in res.stdout, peers.describe(res)


# ---------------------------------------------------------------------------------------
# Sibling resumption: another control connection of the same user and address

OTHER_USER, OTHER_PASSWORD = "sibling-other", "other-secret-7"
OTHER_HOST = "127.0.0.2"


@pytest.fixture(scope="module")
def two_users(workdir, ports, test_user):
    """pyftpdlib with the test user and OTHER_USER, sharing one root."""
    be = peers.start_pyftpdlib(
        workdir / "resumption-pyftpdlib", ports, *test_user,
        extra=f"authorizer.add_user({OTHER_USER!r}, {OTHER_PASSWORD!r}, root, "
              f"perm='elradfmwMT')")
    yield be
    be.stop()


@pytest.fixture(scope="module")
def sgw(workdir, ports, tls_cert, two_users):
    """fe: implicit, x: explicit, sp: explicit with a shared passive port; /metrics."""
    admin = ports.port()
    with faults.gateway_factory(workdir, ports, tls_cert, "resumption-siblings") as factory:
        gw = factory(two_users,
                     frontends={"x": frontend("explicit"),
                                "sp": frontend("explicit", pasv_shared_port=ports.port())},
                     extra={"global": {"admin_listen": f"{HOST}:{admin}",
                                       "data_connect_timeout": 3}})
        gw.admin = f"http://{HOST}:{admin}"
        yield gw


def metric(gw, name: str) -> int:
    with urllib.request.urlopen(gw.admin + "/metrics", timeout=10) as r:
        m = re.search(rf"^{name} (\d+)$", r.read().decode(), re.M)
    assert m, name
    return int(m.group(1))


def control(gw, fe: str, ctx: ssl.SSLContext, user: str, password: str,
            source: str = HOST) -> peers.Control:
    port = gw.fport(fe)
    raw = socket.create_connection((HOST, port), 10, source_address=(source, 0))
    if fe == "fe":
        ctl = peers.Control(ctx.wrap_socket(raw, server_hostname="localhost"))
        assert ctl.reply()[0] == 220
    else:
        ctl = peers.Control(raw)
        assert ctl.reply()[0] == 220
        assert ctl.cmd("AUTH TLS")[0] == 234
        ctl.starttls(ctx)
    ctl.login(user, password)
    assert ctl.cmd("PBSZ 0")[0] == 200
    assert ctl.cmd("PROT P")[0] == 200
    assert ctl.cmd("TYPE I")[0] == 200
    return ctl


def retr(ctl: peers.Control, ctx: ssl.SSLContext, name: str, session: ssl.SSLSession,
         source: str = HOST) -> tuple[bytes, int, bool]:
    """EPSV, RETR name, data TLS resuming `session`: (bytes, final code, resumed)."""
    code, text = ctl.cmd("EPSV")
    assert code == 229, text
    data = socket.create_connection((HOST, peers.parse_229(text)), 10,
                                    source_address=(source, 0))
    reused = False
    try:
        code, text = ctl.cmd(f"RETR {name}")
        assert code in (125, 150), text
        try:
            data = ctx.wrap_socket(data, server_hostname="localhost", session=session)
            reused = data.session_reused
            got, _ = peers.recv_until_closed(data, 20)
        except (ssl.SSLError, ConnectionError):
            got = b""
    finally:
        data.close()
    return got, ctl.reply()[0], reused


@pytest.mark.parametrize("version", ["1.2", "1.2-id", "1.3"])
@pytest.mark.parametrize("fe", ["fe", "x", "sp"], ids=["implicit", "explicit", "shared-port"])
def test_sibling_resumption(sgw, two_users, fe, version):
    """A and B: same user, same address; B's data connection resumes A's session: accepted
    (rule=sibling, counted), the file arrives whole. C (another user) and D (the same user
    from 127.0.0.2) offering A's session get 522 and a reason naming which."""
    blob = bytes(range(256)) * 4000
    two_users.put_bytes("sibling.bin", blob)
    ctx = tls_ctx(version)
    user, password = two_users.user, two_users.password
    a = control(sgw, fe, ctx, user, password)
    b = control(sgw, fe, ctx, user, password)
    try:
        # The own session first (so the test can fail), then A's through B.
        got, code, reused = retr(b, ctx, "sibling.bin", b.session)
        assert (got, code, reused) == (blob, 226, True)
        before = metric(sgw, "ftpsgate_data_tls_sibling_resumptions_total")
        cur = sgw.mark()
        got, code, reused = retr(b, ctx, "sibling.bin", a.session)
        assert code == 226 and reused and got == blob, cur.text()
        cur.wait(r"event=data_tls_resumed rule=sibling")
        assert metric(sgw, "ftpsgate_data_tls_sibling_resumptions_total") == before + 1
        for who, source, reason in [((OTHER_USER, OTHER_PASSWORD), HOST, "another user"),
                                    ((user, password), OTHER_HOST, "another client address")]:
            c = control(sgw, fe, ctx, *who, source=source)
            try:
                cur = sgw.mark()
                got, code, _ = retr(c, ctx, "sibling.bin", a.session, source=source)
                # The shared port hands the connection to no one (425 after
                # data_connect_timeout); elsewhere the data handshake is refused (522).
                assert code == (425 if fe == "sp" else 522) and got == b"", \
                    cur.text()
                event = "shared_port_unmatched .*" if fe == "sp" else "data_tls_refused "
                cur.wait(rf"event={event}reason=\"resumed the session of {reason}\"")
            finally:
                c.close()
        # A ended: "recently ended" still counts.
        a_session = a.session
        a.close()
        got, code, reused = retr(b, ctx, "sibling.bin", a_session)
        assert code == 226 and reused and got == blob
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("version", ["1.2", "1.2-id", "1.3"])
def test_data_leg_no_resumption_across_policies(gateway, pyftpdlib, ports, pki, version):
    """A data connection of a strict.example session (alice's certificate) offering a
    session of open.example is not resumed: 522; its own session works."""
    user, password = pyftpdlib.user, pyftpdlib.password
    pyftpdlib.put_bytes("policy.bin", b"x" * 10000)
    gw, port = vhosts(gateway, pyftpdlib, ports, "implicit", required(pki))
    ctx = tls_ctx(version, pki, "alice")
    open_sess = take_session(implicit_conn(port, ctx, "open.example"), True)
    ctl = implicit_conn(port, ctx, "strict.example")
    try:
        assert ctl.reply()[0] == 220
        ctl.login(user, password)
        for cmd in ("PBSZ 0", "PROT P", "TYPE I"):
            assert ctl.cmd(cmd)[0] == 200
        for sess, want in [(ctl.sock.session, 226), (open_sess, 522)]:
            code, text = ctl.cmd("EPSV")
            assert code == 229, text
            data = socket.create_connection((HOST, peers.parse_229(text)), 10)
            try:
                assert ctl.cmd("RETR policy.bin")[0] in (125, 150)
                try:
                    data = ctx.wrap_socket(data, server_hostname="strict.example",
                                           session=sess)
                    reused = data.session_reused
                    got, _ = peers.recv_until_closed(data, 20)
                except (ssl.SSLError, ConnectionError):
                    reused, got = False, b""
            finally:
                data.close()
            assert ctl.reply()[0] == want
            assert reused == (want == 226) and len(got) == (10000 if want == 226 else 0)
    finally:
        ctl.close()


class SiblingFTPS(peers.ExplicitFTPS):
    """ftplib.FTP_TLS whose data connections offer `data_session` (another control
    connection's session), as Go's shared session cache does."""

    data_session: ssl.SSLSession | None = None

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.data_session or self.sock.session)
        return conn, size


def test_sibling_ftplib(sgw, two_users, client_ctx):
    """Two ftplib FTP_TLS control connections A and B of the same user: B's data
    connections offering A's session download and upload (SHA-256); C, another user,
    offering A's session gets 522 and the log says another user."""
    blob = os.urandom(300_000)
    two_users.put_bytes("sib-ftplib.bin", blob)
    conns = []

    def connect(user, password):
        ftp = SiblingFTPS(context=client_ctx, timeout=20)
        conns.append(ftp)
        ftp.connect(HOST, sgw.fport("x"))
        ftp.auth()
        ftp.login(user, password)
        ftp.prot_p()
        return ftp

    try:
        a = connect(two_users.user, two_users.password)
        b = connect(two_users.user, two_users.password)
        a.voidcmd("NOOP")  # TLS 1.3: A's tickets arrive after the handshake
        b.data_session = a.sock.session
        cur = sgw.mark()
        got: list[bytes] = []
        b.retrbinary("RETR sib-ftplib.bin", got.append)
        assert peers.sha256_bytes(b"".join(got)) == peers.sha256_bytes(blob)
        b.storbinary("STOR sib-ftplib-up.bin", io.BytesIO(blob))
        assert peers.sha256_file(two_users.path("sib-ftplib-up.bin")) == \
            peers.sha256_bytes(blob)
        assert cur.count(r"event=data_tls_resumed rule=sibling") == 2
        c = connect(OTHER_USER, OTHER_PASSWORD)
        c.data_session = a.sock.session
        cur = sgw.mark()
        with pytest.raises(ftplib.error_perm, match="^522"):
            c.retrbinary("RETR sib-ftplib.bin", lambda _: None)
        cur.wait(r"event=data_tls_refused reason=\"resumed the session of another user\"")
    finally:
        for ftp in conns:
            ftp.close()


# ---------------------------------------------------------------------------------------
# rclone (Go's TLS: one session cache per host:port for all its connections)


def rclone_env(gw, fe: str, user: str, password: str, implicit: bool, tmp_path) -> dict:
    obscured = peers.run(["rclone", "obscure", password], timeout=30)
    peers.check(obscured)
    env = dict(os.environ)
    env.update({
        "RCLONE_CONFIG": str(tmp_path / "rclone.conf"),  # none of the user's remotes
        "RCLONE_CONFIG_GW_TYPE": "ftp",
        "RCLONE_CONFIG_GW_HOST": HOST,
        "RCLONE_CONFIG_GW_PORT": str(gw.fport(fe)),
        "RCLONE_CONFIG_GW_USER": user,
        "RCLONE_CONFIG_GW_PASS": obscured.stdout.strip(),
        "RCLONE_CONFIG_GW_NO_CHECK_CERTIFICATE": "true",
        "RCLONE_CONFIG_GW_TLS": "true" if implicit else "false",
        "RCLONE_CONFIG_GW_EXPLICIT_TLS": "false" if implicit else "true",
    })
    return env


def rclone(env: dict, *args) -> subprocess.CompletedProcess:
    # No retries: a refused data connection must show, not be papered over.
    return subprocess.run(["rclone", "--transfers", "4", "--checkers", "4", "--retries", "1",
                           "--low-level-retries", "1", "--contimeout", "10s", "--timeout",
                           "60s", *args], env=env, capture_output=True, text=True, timeout=300)


def tree_digests(root) -> dict[str, str]:
    return {str(p.relative_to(root)): peers.sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sgw2(workdir, ports, tls_cert, two_users):
    """Like sgw, with two workers: siblings on different workers (process-wide tickets and
    registry)."""
    with faults.gateway_factory(workdir, ports, tls_cert, "resumption-workers") as factory:
        yield factory(two_users, frontends={"x": frontend("explicit")},
                      extra={"global": {"workers": 2}})


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed")
@pytest.mark.parametrize("fe,workers", [("fe", 1), ("x", 1), ("x", 2)],
                         ids=["implicit", "explicit", "explicit-2-workers"])
def test_rclone(request, two_users, fe, workers, tmp_path):
    """rclone copy up and down with --transfers 4 (12 files), check, sync, purge through
    the gateway to pyftpdlib; every file compared by SHA-256."""
    sgw = request.getfixturevalue("sgw2" if workers == 2 else "sgw")
    fe_dir = f"{fe}-{workers}"
    env = rclone_env(sgw, fe, two_users.user, two_users.password, fe == "fe", tmp_path)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(12):
        d = src / "sub" if i % 3 == 0 else src
        (d / f"f{i:02}.bin").write_bytes(os.urandom(50_000 + i * 37_000))
    remote = f"gw:rclone-{fe_dir}"
    # pyftpdlib answers MLSD of a missing directory with 501, which rclone takes for an
    # error (it expects 550): the destination exists beforehand.
    (two_users.root / f"rclone-{fe_dir}").mkdir()
    cur = sgw.mark()
    res = rclone(env, "copy", str(src), remote)
    assert res.returncode == 0, peers.describe(res) + cur.text()[-6000:]
    assert tree_digests(two_users.root / f"rclone-{fe_dir}") == tree_digests(src)
    down = tmp_path / "down"
    res = rclone(env, "copy", remote, str(down))
    assert res.returncode == 0, peers.describe(res) + cur.text()[-6000:]
    assert tree_digests(down) == tree_digests(src)
    res = rclone(env, "check", str(src), remote)
    assert res.returncode == 0, peers.describe(res)
    # sync: one file changed, one removed, one added.
    (src / "f01.bin").write_bytes(os.urandom(70_000))
    (src / "f02.bin").unlink()
    (src / "new.bin").write_bytes(os.urandom(30_000))
    res = rclone(env, "sync", str(src), remote)
    assert res.returncode == 0, peers.describe(res) + cur.text()[-6000:]
    assert tree_digests(two_users.root / f"rclone-{fe_dir}") == tree_digests(src)
    res = rclone(env, "purge", remote)
    assert res.returncode == 0, peers.describe(res)
    assert not (two_users.root / f"rclone-{fe_dir}").exists()
    log = cur.text()
    assert "event=data_tls_refused" not in log
    print(f"rclone {fe_dir}: {log.count('rule=sibling')} sibling resumptions, "
          f"{log.count('event=transfer_end')} transfers, "
          f"{log.count('event=session_start')} sessions ({log.count('worker=1')} on worker 1)")
