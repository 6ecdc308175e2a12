"""Authentication at the edge with PAM (frontend `auth = pam`, config/README.md "auth =
pam"): pam_unix against a Unix user this module creates (useradd, its own group, a SHA-512
password) through a PAM service file it writes to /etc/pam.d/ftpsgate-test-*:

- a good login: the user's Unix group matches a user_map @group rule whose fixed account
  logs in to vsftpd (its log shows the account) and a read-only [policy] for that group;
  files move, SHA-256 compared, a DELE gets 550;
- a wrong password or an unknown user: 530 after the delay, no backend connection, logged
  with method=pam and the reason, counted as a failed login;
- conversations are bounded: with one worker and a service whose first module takes 0.4 s,
  six logins at once all succeed, never more than 2 conversations run at a time and the
  others wait in order (event=auth_queued);
- a service whose module cannot be loaded: 421 and event=auth_unavailable (not a failed
  login); `ftpsgate -t` refuses a pam_service without its /etc/pam.d file.
No password may appear in the gateway's log."""

from __future__ import annotations

import ftplib
import re
import secrets
import subprocess
import threading
import time
from pathlib import Path

import pytest

import peers
from peers import Control, ftplib_download, ftplib_session
from test_edge_auth import no_password_in

REPO = Path(__file__).resolve().parents[2]
PAM_DIR = Path("/etc/pam.d")


def run(*args: str, input: str | None = None) -> None:
    subprocess.run(list(args), input=input, text=True, check=True, timeout=60,
                   capture_output=True)


@pytest.fixture(scope="module")
def pam_env():
    """(user, password, group, services): a Unix user in its own group, and PAM services
    "plain" (pam_unix), "slow" (a 0.4 s pam_exec first) and "broken" (a missing module)."""
    tag = secrets.token_hex(4)
    user, group, password = f"fgpam{tag}", f"fgpg{tag}", "Pw-" + secrets.token_hex(10)
    services = {kind: f"ftpsgate-test-{kind}-{tag}" for kind in ("plain", "slow", "broken")}
    texts = {
        "plain": "auth required pam_unix.so\naccount required pam_unix.so\n",
        "slow": "auth requisite pam_exec.so quiet /usr/bin/sleep 0.4\n"
                "auth required pam_unix.so\naccount required pam_unix.so\n",
        "broken": "auth required pam_ftpsgate_no_such_module.so\n"
                  "account required pam_unix.so\n",
    }
    with peers._machine_setup_lock():  # useradd and groupadd lock /etc/passwd, /etc/group
        run("groupadd", group)
        run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--gid", group,
            "--comment", "ftpsgate PAM tests", user)
        run("chpasswd", "-c", "SHA512", input=f"{user}:{password}\n")
    for kind, name in services.items():
        (PAM_DIR / name).write_text(f"# ftpsgate tests/integration/test_edge_pam.py\n"
                                    f"{texts[kind]}")
    try:
        yield user, password, group, services
    finally:
        for name in services.values():
            (PAM_DIR / name).unlink(missing_ok=True)
        with peers._machine_setup_lock():
            subprocess.run(["userdel", user], capture_output=True, timeout=60)
            subprocess.run(["groupdel", group], capture_output=True, timeout=60)


def start(gateway, vsftpd, test_user, tmp_path, service: str, group: str, glob=None,
          sections=None):
    """auth = pam on the implicit frontend; members of `group` log in to vsftpd as the
    test user (a fixed account: its password from a private file)."""
    sysuser, sys_pw = test_user
    pw = tmp_path / "sys.pw"
    pw.write_text(sys_pw + "\n")
    pw.chmod(0o600)
    umap = tmp_path / "map"
    umap.write_text(f"@{group} be:{sysuser}:{pw}\n")
    return gateway(vsftpd, extra={"frontend fe": {"auth": "pam", "pam_service": service,
                                                  "user_map": umap},
                                  "global": {"max_sessions_per_ip": 100, **(glob or {})},
                                  **(sections or {})})


def test_pam_login_group_map_transfer(gateway, vsftpd, test_user, pam_env, blobs, client_ctx,
                                      tmp_path):
    user, password, group, services = pam_env
    sysuser = test_user[0]
    # the Unix group also selects a [policy] (users = @group): read-only
    gw = start(gateway, vsftpd, test_user, tmp_path, services["plain"], group,
               sections={"policy ro": {"read_only": "yes", "users": f"@{group}"}})
    digest = vsftpd.put(blobs, "pam-down.bin", 200_000)
    since = vsftpd.log.stat().st_size if vsftpd.log.exists() else 0
    mark = gw.mark()
    with ftplib_session(gw.port, user, password, client_ctx) as ftp:
        ftplib_download(ftp, "pam-down.bin", tmp_path / "d.bin")
        with pytest.raises(ftplib.error_perm, match="550 Permission denied"):
            ftp.delete("pam-down.bin")
    assert peers.sha256_file(tmp_path / "d.bin") == digest
    assert vsftpd.path("pam-down.bin").exists()
    assert mark.count("event=policy_refused verb=DELE policy=ro") == 1
    mark.wait(f'event=auth_ok method=pam user="{user}" backend_user="{sysuser}" '
              f"password=fixed backend=be map_line=1", 10)
    with open(vsftpd.log, "rb") as f:
        f.seek(since)
        vs = f.read().decode(errors="replace")
    assert re.findall(r"\[([^\]]+)\] OK LOGIN", vs) == [sysuser], vs[-2000:]
    assert f'"USER {user}"' not in vs
    no_password_in(mark.text(), password, test_user[1])


def test_pam_failures(gateway, vsftpd, test_user, pam_env, client_ctx, tmp_path):
    user, password, group, services = pam_env
    gw = start(gateway, vsftpd, test_user, tmp_path, services["plain"], group)
    before = vsftpd.connections()
    mark = gw.mark()
    for name, pw, reasons in ((user, password + "x", ("bad_password",)),
                              ("fgpam-nobody", password, ("unknown_user", "bad_password"))):
        c = Control.implicit(gw.port, client_ctx)
        assert c.reply()[0] == 220
        assert c.cmd(f"USER {name}")[0] == 331
        t0 = time.monotonic()
        code, text = c.cmd(f"PASS {pw}")
        assert code == 530 and "Login incorrect" in text, text
        assert time.monotonic() - t0 >= 0.9
        c.close()
        line = mark.wait(f'event=auth_failed method=pam user="{name}" reason=', 5).string
        assert any(f"reason={r}" in line for r in reasons), line
    assert mark.count("event=login_failed count=1") == 2
    time.sleep(0.3)
    assert vsftpd.connections() == before, "a failed PAM login reached the backend"
    assert mark.count("event=backend_connect") == 0
    no_password_in(mark.text(), password, password + "x")


@pytest.mark.serial  # a timing: other tests' load would blur it
def test_pam_conversations_bounded(gateway, vsftpd, test_user, pam_env, client_ctx, tmp_path):
    user, password, group, services = pam_env
    gw = start(gateway, vsftpd, test_user, tmp_path, services["slow"], group,
               glob={"workers": 1})
    mark = gw.mark()
    results: list[int] = []

    def login() -> None:
        c = Control.implicit(gw.port, client_ctx, timeout=30)
        try:
            assert c.reply()[0] == 220
            assert c.cmd(f"USER {user}")[0] == 331
            results.append(c.cmd(f"PASS {password}")[0])
            c.cmd("QUIT")
        finally:
            c.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=login) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    took = time.monotonic() - t0
    assert results == [230] * 6, results
    starts = [int(m.group(1)) for m in
              map(re.compile(r"event=auth_check_start method=pam running=(\d+)").search,
                  mark.lines()) if m]
    assert len(starts) == 6 and max(starts) <= 2, starts
    assert mark.count("event=auth_queued method=pam") >= 1
    assert took >= 3 * 0.4 * 0.9, took  # three rounds of two
    no_password_in(mark.text(), password)


def test_pam_service_failure_is_not_a_failed_login(gateway, vsftpd, test_user, pam_env,
                                                   client_ctx, tmp_path):
    user, password, group, services = pam_env
    gw = start(gateway, vsftpd, test_user, tmp_path, services["broken"], group)
    mark = gw.mark()
    c = Control.implicit(gw.port, client_ctx)
    assert c.reply()[0] == 220
    assert c.cmd(f"USER {user}")[0] == 331
    code, text = c.cmd(f"PASS {password}")
    c.close()
    assert code == 421, text
    mark.wait(f'event=auth_unavailable method=pam user="{user}" reason="', 5)
    assert mark.count("event=login_failed") == 0
    no_password_in(mark.text(), password)


def test_check_refuses_missing_pam_service(tmp_path, ports, vsftpd):
    conf = tmp_path / "gw.conf"
    name = f"ftpsgate-test-none-{secrets.token_hex(4)}"
    conf.write_text(f"""[global]
control_socket = off
[frontend f]
listen = {peers.HOST}:{ports.port()}
mode = plain
auth = pam
pam_service = {name}
[backend b]
address = {vsftpd.address}
health_interval = 0
""")
    res = subprocess.run([str(REPO / "build" / "ftpsgate"), "-t", "-c", str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and f"pam_service {name}: cannot read /etc/pam.d/{name}" in \
        res.stderr, res.stderr
