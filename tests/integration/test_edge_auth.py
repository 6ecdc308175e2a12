"""Authentication at the edge (frontend `auth = file`, config/README.md "Authentication at
the edge") and command policies (`[policy NAME]`), against a real vsftpd:

- a good login (yescrypt, bcrypt and sha512-crypt hashes made by mkpasswd) transfers files
  both ways, SHA-256 compared, and the backend saw the mapped account log in;
- a wrong password or an unknown user gets 530 after the login delay and the backend sees
  no connection at all (its log counts them); failures count toward the ban list;
- a backend that refuses the replayed login: 530, logged as its refusal;
- a read-only policy refuses every write verb with 550 and the backend's log has none of
  them; a whitelist policy chosen by group; the refusals are counted in a metric;
- `ftpsgate -t` refuses a users file that is missing, unparsable or readable by others;
- SIGHUP rereads the users file.
No password may appear in the gateway's log."""

from __future__ import annotations

import ftplib
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import peers
from peers import HOST, Control, ftplib_download, ftplib_session, ftplib_upload

REPO = Path(__file__).resolve().parents[2]
WRITE_VERBS = ["STOR w.bin", "APPE w.bin", "STOU", "DELE f.bin", "RMD d", "XRMD d", "MKD d2",
               "XMKD d2", "RNFR f.bin", "RNTO g.bin", "SITE CHMOD 600 f.bin"]


def mkpasswd(method: str, password: str) -> str:
    args = ["mkpasswd", "-m", method, "--stdin"]
    if method == "bcrypt":
        args[3:3] = ["-R", "5"]  # the lowest cost: the tests make many logins
    res = subprocess.run(args, input=password, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith({"yescrypt": "$y$", "bcrypt": "$2b$",
                                  "sha512crypt": "$6$"}[method]), res.stdout
    return res.stdout.strip()


def users_file(path: Path, lines: list[str], mode: int = 0o600) -> Path:
    path.write_text("# ftpsgate users (test)\n" + "\n".join(lines) + "\n")
    os.chmod(path, mode)
    return path


def start(gateway, backend, users: Path, fe: dict | None = None, sections: dict | None = None,
          glob: dict | None = None):
    extra = {"frontend fe": {"auth": "file", "auth_file": users, **(fe or {})},
             "global": {"max_sessions_per_ip": 500, **(glob or {})}}
    extra.update(sections or {})
    return gateway(backend, extra=extra)


def attempt(port: int, ctx, user: str, password: str,
            timeout: float = 10) -> tuple[int, str, float]:
    """A fresh implicit session: USER, PASS; (code, text, seconds PASS took)."""
    c = Control.implicit(port, ctx, timeout=timeout)
    try:
        code, text = c.reply()
        assert code == 220, text
        code, text = c.cmd(f"USER {user}")
        assert code == 331, text
        t0 = time.monotonic()
        code, text = c.cmd(f"PASS {password}")
        return code, text, time.monotonic() - t0
    finally:
        c.close()


def no_password_in(log: str, *passwords: str) -> None:
    for p in passwords:
        assert p not in log, f"a password reached the log: {p!r}"


@pytest.mark.parametrize("method", ["yescrypt", "bcrypt", "sha512crypt"])
def test_good_login_transfers(gateway, vsftpd, test_user, workdir, blobs, client_ctx, tmp_path,
                              method):
    """Gateway user "edge_METHOD" is checked against its hash, then the backend gets the
    system account (backend_user) with the client's password: files move both ways."""
    sysuser, password = test_user
    name = f"edge_{method}"
    users = users_file(tmp_path / "users",
                       [f"{name}:{mkpasswd(method, password)}:backend_user={sysuser}"])
    gw = start(gateway, vsftpd, users)
    digest = vsftpd.put(blobs, f"down-{method}.bin", 300_000)
    src, up_digest = blobs.blob(200_000)
    before = vsftpd.connections()
    mark = gw.mark()
    with ftplib_session(gw.port, name, password, client_ctx) as ftp:
        ftplib_download(ftp, f"down-{method}.bin", tmp_path / "down.bin")
        ftplib_upload(ftp, src, f"up-{method}.bin")
    assert peers.sha256_file(tmp_path / "down.bin") == digest
    assert peers.sha256_file(vsftpd.path(f"up-{method}.bin")) == up_digest
    assert vsftpd.connections() == before + 1
    mark.wait("event=session_end")
    mark.wait(f'event=auth_ok method=file user="{name}" backend_user="{sysuser}"', 0)
    # the backend's set-up ends with the replayed login, step by step (backend.c)
    steps = [m.group(1) for m in map(re.compile(r"event=state leg=backend (from=\S+ to=\S+)")
                                     .search, mark.lines()) if m]
    i = steps.index("from=greeting to=login_user")
    assert steps[i:i + 3] == ["from=greeting to=login_user", "from=login_user to=login_pass",
                              "from=login_pass to=ready"], steps
    assert f'OK LOGIN: Client "{HOST}"' in vsftpd.log.read_text(errors="replace")
    no_password_in(gw.log, password)


def test_failures_open_no_backend_connection(gateway, vsftpd, test_user, client_ctx, tmp_path):
    """Wrong password and unknown user: 530 after the 1 s delay, nothing reaches the
    backend (its connection count does not move), logged with method and reason."""
    sysuser, password = test_user
    users = users_file(tmp_path / "users", [f"{sysuser}:{mkpasswd('yescrypt', password)}"])
    gw = start(gateway, vsftpd, users)
    before = vsftpd.connections()
    code, text, took = attempt(gw.port, client_ctx, sysuser, password + "x")
    assert code == 530 and "Login incorrect" in text, text
    assert took >= 0.9, took
    code, text, took = attempt(gw.port, client_ctx, "nobody-here", password)
    assert code == 530, text
    assert took >= 0.9, took
    # a name longer than the gateway keeps, whose first 63 bytes are a listed user's
    users_file(users, [f"{sysuser}:{mkpasswd('yescrypt', password)}",
                       f"{'L' * 63}:{mkpasswd('yescrypt', password)}:backend_user={sysuser}"])
    mark = gw.mark()
    os.kill(gw.pid, signal.SIGHUP)
    mark.wait("event=reload_complete ", 20)
    assert attempt(gw.port, client_ctx, "L" * 63 + "x", password)[0] == 530
    # a name that tries to end its quoted log value and forge a field
    assert attempt(gw.port, client_ctx, 'x" event=ban peer=1.2.3.4', "p")[0] == 530
    # PASS before USER, and a session that never logs in
    c = Control.implicit(gw.port, client_ctx)
    assert c.reply()[0] == 220
    assert c.cmd("PASS x")[0] == 503
    assert c.cmd("PWD")[0] == 530
    c.close()
    time.sleep(0.5)
    assert vsftpd.connections() == before, "a failed gateway login reached the backend"
    log = gw.log
    assert f'event=auth_failed method=file user="{sysuser}" reason=bad_password' in log
    assert 'event=auth_failed method=file user="nobody-here" reason=unknown_user' in log
    assert 'user="x? event=ban peer=1.2.3.4" reason=unknown_user' in log
    assert "event=backend_connect" not in log
    no_password_in(log, password, password + "x")
    # the right password still works, and only then is the backend connected
    with ftplib_session(gw.port, sysuser, password, client_ctx) as ftp:
        assert ftp.pwd()
    assert vsftpd.connections() == before + 1


def test_failures_count_toward_bans(gateway, vsftpd, test_user, client_ctx, tmp_path):
    sysuser, password = test_user
    users = users_file(tmp_path / "users", [f"{sysuser}:{mkpasswd('sha512crypt', password)}"])
    gw = start(gateway, vsftpd, users, glob={"ban_after": 3, "ban_window": 600, "ban_time": 60})
    before = vsftpd.connections()
    mark = gw.mark()
    c = Control.implicit(gw.port, client_ctx)
    assert c.reply()[0] == 220
    for i in range(2):
        assert c.cmd(f"USER {sysuser}")[0] == 331
        assert c.cmd("PASS wrong")[0] == 530
    c.close()
    code, text, _ = attempt(gw.port, client_ctx, "ghost", "wrong")  # the third: banned
    assert code == 421 and "Too many failed logins from your address" in text, text
    mark.wait("event=ban ")
    # banned: a new implicit connection is closed before anything, even a good login
    with pytest.raises((ConnectionError, OSError, ftplib.Error, EOFError)):
        with ftplib_session(gw.port, sysuser, password, client_ctx, timeout=5):
            pass
    assert vsftpd.connections() == before


def test_backend_refusal(gateway, vsftpd, test_user, client_ctx, tmp_path):
    """The gateway accepts, the backend refuses the mapped account: 530, logged as the
    backend's refusal; the backend saw that one connection. The session may retry."""
    sysuser, password = test_user
    users = users_file(tmp_path / "users", [
        f"mapped:{mkpasswd('yescrypt', password)}:backend_user=no_such_account",
        f"{sysuser}:{mkpasswd('yescrypt', password)}"])
    gw = start(gateway, vsftpd, users)
    before = vsftpd.connections()
    c = Control.implicit(gw.port, client_ctx)
    assert c.reply()[0] == 220
    assert c.cmd("USER mapped")[0] == 331
    code, text = c.cmd(f"PASS {password}")
    assert code == 530, text
    assert vsftpd.connections() == before + 1
    # the same session logs in as another user afterwards
    c.login(sysuser, password)
    assert c.cmd("PWD")[0] == 257
    c.cmd("QUIT")
    c.close()
    log = gw.log
    assert 'event=backend_login_refused user="mapped" backend_user="no_such_account"' in log
    assert "event=auth_failed" not in log
    no_password_in(log, password)


def backend_log_size(backend) -> int:
    return backend.log.stat().st_size if backend.log.exists() else 0


def backend_commands(backend, since: int) -> str:
    """The FTP commands vsftpd logged (log_ftp_protocol) after offset `since` (the fixture's
    server is shared by the tests of a worker)."""
    with open(backend.log, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return "\n".join(l for l in text.splitlines() if "FTP command:" in l)


def test_read_only_policy(gateway, vsftpd, test_user, blobs, client_ctx, tmp_path, ports):
    """Every write verb gets 550 from the gateway and never reaches vsftpd; reading works;
    the refusals are counted in ftpsgate_policy_refused_total."""
    sysuser, password = test_user
    users = users_file(tmp_path / "users", [f"{sysuser}:{mkpasswd('bcrypt', password)}"])
    admin = ports.port()
    gw = start(gateway, vsftpd, users, fe={"policy": "ro"},
               sections={"policy ro": {"read_only": "yes"}},
               glob={"admin_listen": f"{HOST}:{admin}"})
    digest = vsftpd.put(blobs, "ro-down.bin", 100_000)
    vsftpd.put_bytes("f.bin", b"keep me")
    (vsftpd.root / "d").mkdir(exist_ok=True)
    since = backend_log_size(vsftpd)
    c = Control.implicit(gw.port, client_ctx)
    assert c.reply()[0] == 220
    c.login(sysuser, password)
    for line in WRITE_VERBS:
        code, text = c.cmd(line)
        assert (code, text) == (550, "550 Permission denied."), (line, text)
    assert c.cmd("SIZE f.bin") == (213, "213 7")
    c.cmd("QUIT")
    c.close()
    with ftplib_session(gw.port, sysuser, password, client_ctx) as ftp:
        ftplib_download(ftp, "ro-down.bin", tmp_path / "ro.bin")
        with pytest.raises(ftplib.error_perm, match="550 Permission denied"):
            ftplib_upload(ftp, tmp_path / "ro.bin", "nope.bin")
    assert peers.sha256_file(tmp_path / "ro.bin") == digest
    assert (vsftpd.root / "f.bin").read_bytes() == b"keep me"
    assert (vsftpd.root / "d").is_dir() and not (vsftpd.root / "nope.bin").exists()
    sent = backend_commands(vsftpd, since)
    for verb in ("STOR", "APPE", "STOU", "DELE", "RMD", "XRMD", "MKD", "XMKD", "RNFR", "RNTO",
                 "SITE"):
        assert f'"{verb}' not in sent, (verb, sent[-2000:])
    assert '"RETR ro-down.bin"' in sent and '"SIZE f.bin"' in sent
    for verb in ("STOR", "DELE", "SITE"):
        assert f"event=policy_refused verb={verb} policy=ro" in gw.log
    text = urllib.request.urlopen(f"http://{HOST}:{admin}/metrics", timeout=10).read().decode()
    assert peers.metric(text, "ftpsgate_policy_refused_total", frontend="fe") == \
        len(WRITE_VERBS) + 1


def test_whitelist_policy_by_group(gateway, vsftpd, test_user, blobs, client_ctx, tmp_path):
    """[policy fetch] allow = RETR applies to @partners (a group from the users file): SIZE
    and DELE get 550, RETR and the session verbs work. A user outside the group is not
    restricted; a user's own policy= wins."""
    sysuser, password = test_user
    h = mkpasswd("yescrypt", password)
    users = users_file(tmp_path / "users", [
        f"partner:{h}:groups=staff partners,backend_user={sysuser}",
        f"{sysuser}:{h}",
        f"own:{h}:groups=partners,policy=nodel,backend_user={sysuser}"])
    gw = start(gateway, vsftpd, users,
               sections={"policy fetch": {"allow": "RETR", "users": "@partners"},
                         "policy nodel": {"deny": "DELE"}})
    digest = vsftpd.put(blobs, "wl.bin", 50_000)
    vsftpd.put_bytes("wl-del.bin", b"x")
    with ftplib_session(gw.port, "partner", password, client_ctx) as ftp:
        assert ftp.pwd()
        ftp.cwd(".")
        ftplib_download(ftp, "wl.bin", tmp_path / "wl.bin")
        for cmd in ("SIZE wl.bin", "DELE wl-del.bin", "MDTM wl.bin"):
            with pytest.raises(ftplib.error_perm, match="550 Permission denied"):
                ftp.sendcmd(cmd)
    assert peers.sha256_file(tmp_path / "wl.bin") == digest
    with ftplib_session(gw.port, "own", password, client_ctx) as ftp:
        assert ftp.sendcmd("SIZE wl.bin").startswith("213")
        with pytest.raises(ftplib.error_perm, match="550 Permission denied"):
            ftp.sendcmd("DELE wl-del.bin")
    with ftplib_session(gw.port, sysuser, password, client_ctx) as ftp:
        assert ftp.sendcmd("SIZE wl.bin").startswith("213")
        ftp.delete("wl-del.bin")
    assert not (vsftpd.root / "wl-del.bin").exists()
    assert "event=policy_refused verb=SIZE policy=fetch" in gw.log
    assert "event=policy_refused verb=DELE policy=nodel" in gw.log


def check_config(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "build" / "ftpsgate"), "-t", "-c", str(config)],
                          capture_output=True, text=True, timeout=60)


def test_check_refuses_bad_users_files(tmp_path, ports, vsftpd, test_user):
    users = tmp_path / "users"
    conf = tmp_path / "gw.conf"
    conf.write_text(f"""[global]
control_socket = off
[frontend f]
listen = {HOST}:{ports.port()}
mode = plain
auth = file
auth_file = {users}
[backend b]
address = {vsftpd.address}
health_interval = 0
""")
    res = check_config(conf)
    assert res.returncode == 1 and "auth_file" in res.stderr and "cannot read" in res.stderr, \
        res.stderr
    good = mkpasswd("yescrypt", test_user[1])
    users_file(users, [f"a:{good}"], mode=0o644)
    res = check_config(conf)
    assert res.returncode == 1 and "mode 0644: readable or writable by group or others" in \
        res.stderr, res.stderr
    users_file(users, [f"a:{good}", "b:not-a-hash"])
    res = check_config(conf)
    assert res.returncode == 1 and f"{users}:3: user b: not a yescrypt" in res.stderr, res.stderr
    users_file(users, [f"a:{good}:backend=elsewhere"])
    res = check_config(conf)
    assert res.returncode == 1 and "backend=elsewhere is not one of" in res.stderr, res.stderr
    users_file(users, [f"a:{good}:rate_down=1X"])
    res = check_config(conf)
    assert res.returncode == 1 and "rate_down: expected bytes/s" in res.stderr, res.stderr
    users_file(users, [f"a:{good}:rate_down=1M,rate_up=512K"])
    res = check_config(conf)
    assert res.returncode == 0, res.stderr
    users_file(users, [f"a:{good}:backend=b"])
    res = check_config(conf)
    assert res.returncode == 0 and res.stdout.strip() == "ok", (res.stdout, res.stderr)
    conf.write_text(conf.read_text().replace("auth = file", "auth = pam"))
    res = check_config(conf)
    assert res.returncode == 1 and "auth_file: set without auth = file" in res.stderr, res.stderr
    conf.write_text(conf.read_text().replace("auth = pam", "auth = ldap\nldap_uri = ldap://x\n"
                                             "ldap_user_dn = uid=%u"))
    res = check_config(conf)
    assert res.returncode == 1 and "auth_file: set without auth = file" in res.stderr, res.stderr


def test_reload_rereads_users_file(gateway, vsftpd, test_user, client_ctx, tmp_path):
    sysuser, password = test_user
    h = mkpasswd("yescrypt", password)
    users = users_file(tmp_path / "users", [f"first:{h}:backend_user={sysuser}"])
    gw = start(gateway, vsftpd, users)
    with ftplib_session(gw.port, "first", password, client_ctx) as ftp:
        assert ftp.pwd()
    assert attempt(gw.port, client_ctx, "second", password)[0] == 530
    users_file(users, [f"second:{h}:backend_user={sysuser}"])
    mark = gw.mark()
    os.kill(gw.pid, signal.SIGHUP)
    mark.wait("event=reload_complete ", 20)
    with ftplib_session(gw.port, "second", password, client_ctx) as ftp:
        assert ftp.pwd()
    assert attempt(gw.port, client_ctx, "first", password)[0] == 530
    # a users file that no longer loads fails the reload: the old one keeps serving
    os.chmod(users, 0o644)
    mark = gw.mark()
    os.kill(gw.pid, signal.SIGHUP)
    mark.wait("event=reload_failed ", 20)
    with ftplib_session(gw.port, "second", password, client_ctx) as ftp:
        assert ftp.pwd()


@pytest.mark.serial  # a timing: other tests' load would blur it
def test_slow_hash_does_not_stall_the_worker(gateway, vsftpd, test_user, client_ctx, tmp_path):
    """The check runs in the thread pool: while a costly bcrypt (cost 14, about a second)
    is checked, another session of the same (single) worker is answered at once; a client
    that leaves during its check ends cleanly (no backend connection, no crash)."""
    sysuser, password = test_user
    t0 = time.monotonic()
    slow = subprocess.run(["mkpasswd", "-m", "bcrypt", "-R", "14", "--stdin"], input=password,
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    hash_s = time.monotonic() - t0
    users = users_file(tmp_path / "users", [f"slow:{slow}:backend_user={sysuser}"])
    gw = start(gateway, vsftpd, users, glob={"workers": 1})
    before = vsftpd.connections()
    mark = gw.mark()
    a = Control.implicit(gw.port, client_ctx)
    assert a.reply()[0] == 220
    assert a.cmd("USER slow")[0] == 331
    a.send(b"PASS wrong\r\n")
    time.sleep(0.05)
    b = Control.implicit(gw.port, client_ctx)
    t1 = time.monotonic()
    assert b.reply()[0] == 220
    assert b.cmd("NOOP")[0] == 200
    answered = time.monotonic() - t1
    assert answered < max(0.3, hash_s / 3), (answered, hash_s)
    a.close()  # gone before its check ends
    b.cmd("QUIT")
    b.close()
    mark.wait("event=session_end", 10 + 2 * hash_s, n=2)
    time.sleep(hash_s + 0.5)  # the abandoned check has finished by now
    assert gw.alive()
    assert vsftpd.connections() == before


def test_explicit_frontend_curl_pyftpdlib(gateway, pyftpdlib, test_user, blobs, tmp_path):
    """curl on an explicit frontend with auth = file in front of pyftpdlib: a good login
    downloads and uploads (SHA-256 compared); a wrong password is refused (530) with no
    session opened on pyftpdlib; USER before AUTH TLS is still refused (require_tls)."""
    sysuser, password = test_user
    users = users_file(tmp_path / "users",
                       [f"web:{mkpasswd('sha512crypt', password)}:backend_user={sysuser}"])
    gw = gateway(pyftpdlib, frontends={"x": peers.frontend("explicit", auth="file",
                                                           auth_file=users)})
    digest = pyftpdlib.put(blobs, "x-down.bin", 400_000)
    src, up_digest = blobs.blob(150_000)
    before = pyftpdlib.connections()
    peers.check(peers.curl("-o", tmp_path / "x.bin", gw.ftp_url("x", "x-down.bin", "web",
                                                                 password)))
    peers.check(peers.curl("-T", src, gw.ftp_url("x", "x-up.bin", "web", password)))
    assert peers.sha256_file(tmp_path / "x.bin") == digest
    assert peers.sha256_file(pyftpdlib.path("x-up.bin")) == up_digest
    assert pyftpdlib.connections() == before + 2
    res = peers.curl("-o", tmp_path / "no.bin", gw.ftp_url("x", "x-down.bin", "web", "nope"))
    assert res.returncode == 67, peers.describe(res)  # CURLE_LOGIN_DENIED
    c = Control.plain(gw.fport("x"))
    assert c.reply()[0] == 220
    assert c.cmd("USER web")[0] == 530  # before AUTH TLS
    c.close()
    time.sleep(0.5)
    assert pyftpdlib.connections() == before + 2
    assert 'event=auth_failed method=file user="web" reason=bad_password' in gw.log
    no_password_in(gw.log, password)


def test_rein_resets_the_gateway_login(gateway, vsftpd, test_user, client_ctx, tmp_path):
    """REIN resets the login part whole, the gateway's check with it: the session is logged
    out (530 before a new login, no policy of the old user), its next login is checked
    again (a wrong password: 530 after the delay, counted) and a right one works."""
    sysuser, password = test_user
    h = mkpasswd("yescrypt", password)
    users = users_file(tmp_path / "users", [
        f"ro:{h}:policy=ro,backend_user={sysuser}", f"{sysuser}:{h}"])
    gw = gateway(vsftpd, frontends={"p": peers.frontend("plain", auth="file", auth_file=users,
                                                         policy="")},
                 extra={"policy ro": {"read_only": "yes"}})
    vsftpd.put_bytes("rein.bin", b"x")
    before = vsftpd.connections()
    mark = gw.mark()
    c = Control.plain(gw.fport("p"))
    assert c.reply()[0] == 220
    c.login("ro", password)
    assert c.cmd("DELE rein.bin") == (550, "550 Permission denied.")
    assert c.cmd("REIN")[0] == 220
    assert c.cmd("PWD")[0] == 530  # logged out: nothing reaches the backend
    assert c.cmd("USER ro")[0] == 331
    t0 = time.monotonic()
    assert c.cmd("PASS wrong")[0] == 530
    assert time.monotonic() - t0 >= 0.9
    c.login(sysuser, password)  # another user: no read-only policy any more
    assert c.cmd("DELE rein.bin")[0] == 250
    c.cmd("QUIT")
    c.close()
    mark.wait("event=session_end")
    assert mark.count("event=auth_ok method=file") == 2
    assert mark.count(r"event=login_failed count=1\b") == 1
    assert mark.count("event=policy_refused verb=DELE policy=ro") == 1
    assert not (vsftpd.root / "rein.bin").exists()
    assert vsftpd.connections() == before + 2  # one per checked login
    no_password_in(mark.text(), password)
