"""No fixed cap on sections: a fleet configuration with hundreds of [backend] and
[frontend] sections is accepted, and a gateway with 40 frontends (past the old limit of 16)
starts, listens on every one and routes the last one to its own backend. No cap on a line's
length either: one frontend balances over 100 backends named on one 2,000-character line."""

from __future__ import annotations

import ftplib
import subprocess

import peers
from peers import HOST, frontend, render_ini


def test_300_backends_200_frontends_accepted(workdir, tls_cert):
    sections = {"global": {"log_level": "info"}}
    for i in range(300):
        sections[f"backend b{i}"] = {"address": f"{HOST}:{20000 + i}", "tls": "none"}
    for i in range(200):  # -t binds nothing: any distinct ports do
        sections[f"frontend f{i}"] = {
            "listen": f"{HOST}:{40000 + i}", "mode": "plain",
            "backend": f"b{i}, b{i + 100}", "pasv_ports": "50000-50099"}
    conf = workdir / "scale-300-200.ini"
    workdir.mkdir(parents=True, exist_ok=True)
    conf.write_text(render_ini(sections))
    r = subprocess.run([*peers.GATEWAY_WRAPPER, str(peers.GATEWAY_BIN), "-t", "-c", str(conf)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_40_frontends_start_and_answer(gateway, pyftpdlib, test_user):
    n = 40
    extra = {f"backend b{i}": {"address": pyftpdlib.address, "tls": "none"} for i in range(n)}
    gw = gateway(pyftpdlib, extra=extra,
                 frontends={f"f{i}": frontend("plain", backend=f"b{i}") for i in range(n)})
    ftp = ftplib.FTP(timeout=10)
    ftp.connect(HOST, gw.fport(f"f{n - 1}"))
    try:
        assert ftp.welcome.startswith("220"), ftp.welcome
        ftp.login(*test_user)
        ftp.voidcmd("NOOP")
        ftp.quit()
    finally:
        ftp.close()
    assert f"event=backend_chosen backend=b{n - 1} " in gw.log
    assert gw.log.count("event=listening frontend=") == n + 1  # and the base "fe"


def test_backend_list_of_100_on_one_line(gateway, pyftpdlib, test_user, workdir):
    """inih cut lines at 198 characters: 100 names on one `backend =` line (over 1,000
    characters) load with -t, and the gateway starts with them and spreads sessions."""
    n = 100
    names = [f"backend-server-{i:03d}" for i in range(n)]
    line = ", ".join(names)
    assert len(line) > 1000
    extra = {f"backend {name}": {"address": pyftpdlib.address, "tls": "none"} for name in names}
    fe = frontend("plain", backend=line)
    sections = {"global": {"log_level": "info"}, **extra,
                "frontend big": {"listen": f"{HOST}:40000", "mode": "plain", "backend": line}}
    conf = workdir / "long-line.ini"
    workdir.mkdir(parents=True, exist_ok=True)
    conf.write_text(render_ini(sections))
    assert max(len(x) for x in conf.read_text().splitlines()) > 1000
    r = subprocess.run([*peers.GATEWAY_WRAPPER, str(peers.GATEWAY_BIN), "-t", "-c", str(conf)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"

    gw = gateway(pyftpdlib, extra=extra, frontends={"big": fe})
    chosen = set()
    for _ in range(3):  # roundrobin: three sessions, three backends of the list
        ftp = ftplib.FTP(timeout=10)
        ftp.connect(HOST, gw.fport("big"))
        try:
            ftp.login(*test_user)
            ftp.voidcmd("NOOP")
            ftp.quit()
        finally:
            ftp.close()
    for name in names:
        if f"event=backend_chosen backend={name} " in gw.log:
            chosen.add(name)
    assert len(chosen) == 3, gw.log[-3000:]
