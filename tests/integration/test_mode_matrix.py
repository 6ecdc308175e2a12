"""Every frontend mode (implicit, explicit, plain) in front of every backend mode (plain,
explicit FTPS, implicit FTPS vsftpd with require_ssl_reuse=YES), for curl, lftp and ftplib:
a listing, a download and an upload each, checked by SHA-256 (uploads on the backend's disk).
One gateway per backend carries the three frontends."""

from __future__ import annotations

import ftplib
import subprocess
from dataclasses import replace

import pytest

import peers
from peers import (HOST, MiB, backend_tls, check, curl, frontend, ftplib_download,
                   ftplib_explicit_session, ftplib_session, ftplib_upload, lftp, lftp_explicit,
                   run, sha256_file)

BACKENDS = ["vsftpd", "vsftpd_ftps", "vsftpd_implicit", "pyftpdlib_tls"]

PYFTPDLIB_TLS_SERVER = """\
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import TLS_FTPHandler
from pyftpdlib.servers import FTPServer

host, port, root, user, password, pem = sys.argv[1:]
authorizer = DummyAuthorizer()
authorizer.add_user(user, password, root, perm="elradfmwMT")
handler = TLS_FTPHandler
handler.authorizer = authorizer
handler.certfile = pem
handler.tls_control_required = True
handler.tls_data_required = True
server = FTPServer((host, int(port)), handler)
server.max_cons = 512
server.serve_forever()
"""


@pytest.fixture(scope="module")
def pyftpdlib_tls(workdir, ports, test_user, backend_cert):
    """pyftpdlib's TLS_FTPHandler (explicit FTPS, TLS required on control and data)."""
    d = workdir / "pyftpdlib-tls"
    d.mkdir(exist_ok=True)
    root = d / "root"
    root.mkdir(exist_ok=True)
    cert, key = backend_cert
    pem = d / "server.pem"
    pem.write_text(cert.read_text() + key.read_text())
    script = d / "server.py"
    script.write_text(PYFTPDLIB_TLS_SERVER)
    port = ports.port()
    log = d / "pyftpdlib.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([peers.PYTHON, str(script), HOST, str(port), str(root),
                                 *test_user, str(pem)], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    peers.wait_listening(proc, port, 15, "pyftpdlib TLS", log)
    backend = peers.Backend("pyftpdlib-tls", port, *test_user, root, "", proc, log)
    backend = replace(backend, tls="explicit", cert=cert)
    yield backend
    backend.stop()
FRONTENDS = ["implicit", "explicit", "plain"]
CLIENTS = ["curl", "lftp", "ftplib"]


@pytest.fixture(scope="module", params=BACKENDS)
def matrix_gw(request, module_gateway):
    server = request.getfixturevalue(request.param)
    keys = {}
    if server.tls:
        keys = backend_tls(server.tls, ca_file=server.cert)
    gw = module_gateway(server, backend_keys=keys,
                                frontends={"x": frontend("explicit"),
                                           "p": frontend("plain")})
    return gw, server


def plain_curl(*args):
    return run(["curl", "-sS", "--globoff", "--ftp-pasv", "--max-time", "120", *args],
               timeout=150)


def do_curl(gw, fe, server, remote_down, local_down, local_up, remote_up):
    user, pw = server.user, server.password
    if fe == "implicit":
        check(curl("-o", local_down, gw.url(remote_down, user, pw)))
        check(curl("-T", local_up, gw.url(remote_up, user, pw)))
        return check(curl(gw.url("", user, pw))).stdout
    port_name = "x" if fe == "explicit" else "p"
    get = curl if fe == "explicit" else plain_curl
    check(get("-o", local_down, gw.ftp_url(port_name, remote_down, user, pw)))
    check(get("-T", local_up, gw.ftp_url(port_name, remote_up, user, pw)))
    return check(get(gw.ftp_url(port_name, "", user, pw))).stdout


def do_lftp(gw, fe, server, remote_down, local_down, local_up, remote_up):
    cmds = [f"get {remote_down} -o {local_down}", f"put {local_up} -o {remote_up}", "cls -1"]
    user, pw = server.user, server.password
    if fe == "implicit":
        res = lftp(f"ftps://{HOST}:{gw.port}", user, pw, cmds)
    elif fe == "explicit":
        res = lftp_explicit(gw.fport("x"), user, pw, cmds)
    else:
        res = lftp(f"ftp://{HOST}:{gw.fport('p')}", user, pw, cmds,
                   settings=["set ftp:ssl-allow false", "set ftp:ssl-protect-data false"])
    return check(res).stdout


def do_ftplib(gw, fe, server, remote_down, local_down, local_up, remote_up, ctx):
    user, pw = server.user, server.password
    if fe == "implicit":
        session = ftplib_session(gw.port, user, pw, ctx)
    elif fe == "explicit":
        session = ftplib_explicit_session(gw.fport("x"), user, pw, ctx)
    else:
        session = ftplib.FTP()
        session.connect(HOST, gw.fport("p"), timeout=60)
        session.login(user, pw)
    with session as ftp:
        ftplib_download(ftp, remote_down, local_down)
        ftplib_upload(ftp, local_up, remote_up)
        return "\n".join(ftp.nlst())


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("fe", FRONTENDS)
def test_mode_matrix(matrix_gw, fe, client, client_ctx, blobs, tmp_path):
    gw, server = matrix_gw
    tag = f"m-{fe}-{client}"
    down = server.put(blobs, f"{tag}-down.bin", 1 * MiB, unique=True)
    src = tmp_path / "up.bin"
    up = blobs.unique(src, 1 * MiB)
    got = tmp_path / "got.bin"
    args = (gw, fe, server, f"{tag}-down.bin", got, src, f"{tag}-up.bin")
    if client == "curl":
        listing = do_curl(*args)
    elif client == "lftp":
        listing = do_lftp(*args)
    else:
        listing = do_ftplib(*args, client_ctx)
    assert sha256_file(got) == down
    assert sha256_file(server.path(f"{tag}-up.bin")) == up
    assert f"{tag}-down.bin" in listing
