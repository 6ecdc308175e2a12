"""The user map (frontend `user_map`, config/README.md "User map"): per user or @group, the
backend and the account used toward it, against a real vsftpd whose log shows the account
that logged in:

- auth = file: "keep" sends another name with the client's password; a password file makes
  a fixed account (the client's own password is never sent); a @group rule matches the
  users file's groups; the users file's own backend_user= wins over the map; an unmapped
  user goes as the same name;
- auth = backend: a rule routes a name to its backend (vsftpd or pyftpdlib, counted) and
  renames the account, the client's password going to the backend that checks it;
- `ftpsgate -t` refuses a bad map, an unknown backend, a password file others may read,
  and what auth = backend cannot honour (@group rules, fixed passwords).
No password may appear in the gateway's log."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
from pathlib import Path

import peers
from peers import HOST, Control, ftplib_download, ftplib_session
from test_edge_auth import mkpasswd, no_password_in, users_file

REPO = Path(__file__).resolve().parents[2]


def private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def vsftpd_since(backend, offset: int) -> str:
    with open(backend.log, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def log_size(backend) -> int:
    return backend.log.stat().st_size if backend.log.exists() else 0


def logged_in_as(vs_log: str) -> list[str]:
    """The accounts vsftpd logged in ("[NAME] OK LOGIN")."""
    return re.findall(r"\[([^\]]+)\] OK LOGIN", vs_log)


def test_file_auth_maps_accounts(gateway, vsftpd, test_user, blobs, client_ctx, tmp_path):
    sysuser, password = test_user
    other_pw = "pw-" + secrets.token_hex(8)  # the partner's own: vsftpd never knows it
    h, h2 = mkpasswd("yescrypt", password), mkpasswd("sha512crypt", other_pw)
    users = users_file(tmp_path / "users", [
        f"alias:{h}",
        f"partner:{h2}:groups=staff partners",
        f"direct:{h}:groups=others,backend_user={sysuser}",
        f"plain:{h}"])
    svc_pw = private(tmp_path / "svc.pw", password + "\n")
    umap = tmp_path / "map"
    umap.write_text(f"# gateway user -> backend account\n"
                    f"alias be:{sysuser}:keep\n"
                    f"@partners *:{sysuser}:{svc_pw}\n"
                    f"@others be:no_such_account\n")
    gw = gateway(vsftpd, extra={"frontend fe": {"auth": "file", "auth_file": users,
                                                "user_map": umap}})
    digest = vsftpd.put(blobs, "map-down.bin", 120_000)
    before, since = vsftpd.connections(), log_size(vsftpd)
    mark = gw.mark()

    for user, pw in (("alias", password), ("partner", other_pw), ("direct", password)):
        with ftplib_session(gw.port, user, pw, client_ctx) as ftp:
            ftplib_download(ftp, "map-down.bin", tmp_path / f"{user}.bin")
        assert peers.sha256_file(tmp_path / f"{user}.bin") == digest
    # unmapped: the same name, which vsftpd does not know
    c = Control.implicit(gw.port, client_ctx)
    assert c.reply()[0] == 220
    assert c.cmd("USER plain")[0] == 331
    assert c.cmd(f"PASS {password}")[0] == 530
    c.close()

    mark.wait("event=backend_login_refused", 10)
    vs = vsftpd_since(vsftpd, since)
    assert logged_in_as(vs) == [sysuser] * 3, vs[-3000:]
    assert '"USER alias"' not in vs and '"USER partner"' not in vs
    assert '"USER direct"' not in vs and '"USER plain"' in vs
    assert vsftpd.connections() == before + 4
    assert mark.count(f'user="alias" backend_user="{sysuser}" password=client backend=be map_line=2') == 1
    assert mark.count(f'user="partner" backend_user="{sysuser}" password=fixed map_line=3') == 1
    # the users file's backend_user= wins over the @others rule's account
    assert mark.count(f'user="direct" backend_user="{sysuser}" password=client backend=be '
                      'map_line=4') == 1
    assert mark.count('user="plain" backend_user="plain" password=client') == 1
    assert mark.count('event=backend_login_refused user="plain" backend_user="plain"') == 1
    no_password_in(mark.text(), password, other_pw)


def test_backend_auth_routes_and_renames(gateway, vsftpd, pyftpdlib, test_user, client_ctx,
                                         tmp_path):
    """auth = backend: "alias py:SYSUSER" goes to pyftpdlib as SYSUSER, "vsalias
    vs:SYSUSER" to vsftpd; the backend checks the client's password (a wrong one: 530)."""
    sysuser, password = test_user
    umap = tmp_path / "map"
    umap.write_text(f"alias py:{sysuser}\nvsalias vs:{sysuser}:keep\n")
    gw = gateway(vsftpd, extra={
        "frontend fe": {"backend": "vs, py", "user_map": umap},
        "backend vs": {"address": vsftpd.address, "tls": "none"},
        "backend py": {"address": pyftpdlib.address, "tls": "none"}})
    vs_before, py_before, since = vsftpd.connections(), pyftpdlib.connections(), log_size(vsftpd)
    mark = gw.mark()
    for _ in range(2):
        with ftplib_session(gw.port, "alias", password, client_ctx) as ftp:
            assert ftp.pwd()
    assert pyftpdlib.connections() == py_before + 2 and vsftpd.connections() == vs_before
    with ftplib_session(gw.port, "vsalias", password, client_ctx) as ftp:
        assert ftp.pwd()
    c = Control.implicit(gw.port, client_ctx)
    assert c.reply()[0] == 220
    assert c.cmd("USER vsalias")[0] == 331
    assert c.cmd("PASS wrong")[0] == 530  # the backend decides, as without a map
    c.close()
    mark.wait("event=login_failed count=1")
    assert vsftpd.connections() == vs_before + 2
    vs = vsftpd_since(vsftpd, since)
    assert logged_in_as(vs) == [sysuser], vs[-2000:]
    assert '"USER vsalias"' not in vs
    assert mark.count(f"event=user_mapped map_line=1 backend=py backend_user={sysuser}") == 2
    assert mark.count(f"event=user_mapped map_line=2 backend=vs backend_user={sysuser}") == 2
    no_password_in(mark.text(), password)


def check(conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "build" / "ftpsgate"), "-t", "-c", str(conf)],
                          capture_output=True, text=True, timeout=60)


def test_check_refuses_bad_maps(tmp_path, ports, vsftpd, test_user):
    umap, pw = tmp_path / "map", private(tmp_path / "svc.pw", "secret\n")
    users = users_file(tmp_path / "users", [f"a:{mkpasswd('yescrypt', test_user[1])}"])
    conf = tmp_path / "gw.conf"

    def config(auth: str = "backend", more: str = "") -> Path:
        file_keys = f"auth = file\nauth_file = {users}\n" if auth == "file" else ""
        conf.write_text(f"""[global]
control_socket = off
[frontend f]
listen = {HOST}:{ports.port()}
mode = plain
backend = b
user_map = {umap}
{file_keys}{more}[backend b]
address = {vsftpd.address}
health_interval = 0
""")
        return conf

    res = check(config())
    assert res.returncode == 1 and f"{umap}: cannot read" in res.stderr, res.stderr
    for text, auth, want in [
        ("a b\nb\n", "backend", f"{umap}:2: expected \"user-or-@group backend"),
        ("a nowhere\n", "backend", f"{umap}:1: a: backend nowhere is not one of"),
        ("@g b\n", "backend", f"{umap}:1: @g: groups are known only when the gateway checks"),
        (f"a b:svc:{pw}\n", "backend", f"{umap}:1: a: a fixed account's password needs auth"),
        ("a b:svc:pw\n", "file", f"{umap}:1: a: expected keep or the absolute path"),
    ]:
        umap.write_text(text)
        res = check(config(auth))
        assert res.returncode == 1 and want in res.stderr, (text, res.stderr)
    umap.write_text(f"@g b:svc:{pw}\n")
    pw.chmod(0o644)
    res = check(config("file"))
    assert res.returncode == 1 and "mode 0644: readable or writable by group or others" in \
        res.stderr, res.stderr
    pw.chmod(0o600)
    res = check(config("file"))
    assert res.returncode == 0 and res.stdout.strip() == "ok", (res.stdout, res.stderr)
    umap.write_text("a *:acct\n")
    res = check(config("backend", "route_user = yes\n"))
    assert res.returncode == 1 and "user_map: not with route_user" in res.stderr, res.stderr
    res = check(config())
    assert res.returncode == 0, res.stderr


def test_reload_rereads_the_map(gateway, vsftpd, pyftpdlib, test_user, client_ctx, tmp_path):
    """SIGHUP reads the map again (new sessions follow the new rules); a map that no longer
    loads fails the reload and the old one keeps serving."""
    sysuser, password = test_user
    umap = tmp_path / "map"
    umap.write_text(f"alias py:{sysuser}\n")
    gw = gateway(vsftpd, extra={
        "frontend fe": {"backend": "vs, py", "user_map": umap},
        "backend vs": {"address": vsftpd.address, "tls": "none"},
        "backend py": {"address": pyftpdlib.address, "tls": "none"}})
    vs_before, py_before = vsftpd.connections(), pyftpdlib.connections()
    with ftplib_session(gw.port, "alias", password, client_ctx) as ftp:
        assert ftp.pwd()
    assert (vsftpd.connections(), pyftpdlib.connections()) == (vs_before, py_before + 1)
    umap.write_text(f"# now on vsftpd\nalias vs:{sysuser}\n")
    mark = gw.mark()
    os.kill(gw.pid, signal.SIGHUP)
    mark.wait("event=reload_complete ", 20)
    with ftplib_session(gw.port, "alias", password, client_ctx) as ftp:
        assert ftp.pwd()
    assert (vsftpd.connections(), pyftpdlib.connections()) == (vs_before + 1, py_before + 1)
    mark.wait(f"event=user_mapped map_line=2 backend=vs backend_user={sysuser}", 5)
    umap.write_text("alias nowhere\n")
    mark = gw.mark()
    os.kill(gw.pid, signal.SIGHUP)
    mark.wait("event=reload_failed .*backend nowhere is not one of", 20)
    with ftplib_session(gw.port, "alias", password, client_ctx) as ftp:
        assert ftp.pwd()
    assert vsftpd.connections() == vs_before + 2
