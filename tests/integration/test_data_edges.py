"""Data-channel edges not covered by the matrix: an IPv6-only backend behind IPv4 clients
(the gateway speaks EPSV/EPRT toward it), and an exhausted passive port range (425 and a
log line, the range usable again once the listener is gone)."""

from __future__ import annotations

import re
import subprocess

import pytest

import peers
from peers import (HOST, MiB, Control, check, curl, ftplib_download, ftplib_session,
                   ftplib_upload, sha256_file)

PYFTPDLIB_V6 = """\
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

port, root, user, password = sys.argv[1:]
authorizer = DummyAuthorizer()
authorizer.add_user(user, password, root, perm="elradfmwMT")
handler = FTPHandler
handler.authorizer = authorizer
FTPServer(("::1", int(port)), handler).serve_forever()
"""


@pytest.fixture(scope="module")
def v6_backend(workdir, ports, test_user):
    """pyftpdlib listening on ::1 only."""
    d = workdir / "pyftpdlib-v6"
    d.mkdir(exist_ok=True)
    root = d / "root"
    root.mkdir(exist_ok=True)
    script = d / "server.py"
    script.write_text(PYFTPDLIB_V6)
    port = ports.port()
    log = d / "pyftpdlib.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([peers.PYTHON, str(script), str(port), str(root), *test_user],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    peers.wait_for(lambda: re.search(rb"serving|>>>", log.read_bytes()) or
                   proc.poll() is not None, 15, "pyftpdlib on ::1")
    backend = peers.Backend("pyftpdlib-v6", port, *test_user, root, "", proc, log, host="::1")
    yield backend
    backend.stop()


@pytest.mark.parametrize("dmode", ["passive", "active"])
def test_ipv4_client_ipv6_backend(gateway, v6_backend, client_ctx, blobs, tmp_path, dmode):
    gw = gateway(v6_backend, backend_address=f"[::1]:{v6_backend.port}",
                 extra={"backend be": {"data_mode": dmode}})
    user, pw = v6_backend.user, v6_backend.password
    down = v6_backend.put(blobs, f"v6-{dmode}.bin", 1 * MiB, unique=True)
    check(curl("-o", tmp_path / "c.bin", gw.url(f"v6-{dmode}.bin", user, pw)))
    assert sha256_file(tmp_path / "c.bin") == down
    src = tmp_path / "up.bin"
    up = blobs.unique(src, 1 * MiB)
    with ftplib_session(gw.port, user, pw, client_ctx) as ftp:
        ftp.set_pasv(dmode == "passive")  # both client modes, one per backend mode
        ftplib_download(ftp, f"v6-{dmode}.bin", tmp_path / "f.bin")
        ftplib_upload(ftp, src, f"v6-{dmode}-up.bin")
    assert sha256_file(tmp_path / "f.bin") == down
    assert sha256_file(v6_backend.path(f"v6-{dmode}-up.bin")) == up
    # The backend listens on ::1 only, where a 227 or PORT could not even name it: the
    # transfers above went over EPSV/EPRT.
    assert f"backend=[::1]:{v6_backend.port}" in gw.log


def test_exhausted_passive_range(gateway, backend, client_ctx, ports):
    """A range of one port: the second PASV while the first listener is open gets 425 and a
    log line; after the first listener is gone the port is handed out again."""
    only = ports.port()
    gw = gateway(backend, extra={"frontend fe": {"pasv_ports": f"{only}-{only}"}})
    a = Control.implicit(gw.port, client_ctx)
    b = Control.implicit(gw.port, client_ctx)
    try:
        a.reply()  # greetings
        b.reply()
        a.login(backend.user, backend.password)
        b.login(backend.user, backend.password)
        code, text = a.cmd("PASV")
        assert code == 227, text
        assert text.rstrip(").\r\n").endswith(f",{only >> 8},{only & 255}"), text
        code, text = b.cmd("PASV")
        assert code == 425, text
        assert re.search(r"event=pasv_failed reason=\"no free port", gw.log)
        code, text = a.cmd("ABOR")  # closes a's listener
        assert code in (225, 226), text
        code, text = b.cmd("PASV")
        assert code == 227, text
    finally:
        a.close()
        b.close()
