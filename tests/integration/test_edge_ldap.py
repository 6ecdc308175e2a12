"""Authentication at the edge with LDAP (frontend `auth = ldap`, config/README.md "LDAP"),
against a real OpenLDAP slapd started here (its own slapd.conf, mdb database, ldap:// and
ldaps:// on free loopback ports, a test certificate; users with {SSHA} and {CRYPT}
passwords, groupOfNames groups turned into memberOf by the memberof overlay) and a real
vsftpd (and pyftpdlib) behind the gateway:

- a direct bind (ldap_user_dn) logs in; the user_map's @group rule renames the account
  toward vsftpd; files move both ways, SHA-256 compared;
- a wrong password and an unknown user get 530 after the login delay, logged with the
  method and reason, and the backend sees no connection; an empty password never binds;
- ldap_backend_attr picks the backend, a group's [policy] refuses STOR with 550;
- search-then-bind with a service account (ldap_bind_dn, ldap_bind_password_file);
- StartTLS and ldaps:// with ldap_ca_file; a wrong CA fails closed (421);
- slapd killed: 421 and event=auth_unavailable, while another frontend of the same
  gateway still serves;
- a slow server (a delaying TCP proxy in front of slapd): other sessions, on another
  frontend and from the cache, are not held up; past ldap_timeout: 421 reason=timeout;
- the cache: a second login does not reach slapd (the proxy counts connections, slapd's
  log counts BINDs); a wrong password is not taken from a good one's entry;
- `ftpsgate -t` refuses a service password file readable by others and a bad CA file.
No password may appear in the gateway's log."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

import peers
from peers import HOST, Control, ftplib_download, ftplib_session, ftplib_upload
from test_edge_auth import attempt as edge_attempt, no_password_in

REPO = Path(__file__).resolve().parents[2]
SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SUFFIX = "dc=example,dc=org"
PEOPLE = f"ou=people,{SUFFIX}"
ADMIN_DN, ADMIN_PW = f"cn=admin,{SUFFIX}", "admin-secret"
SVC_DN = f"uid=svc-ftp,ou=services,{SUFFIX}"
SVC_PW = "svc-" + os.urandom(6).hex()
OWN_PW = "own-" + os.urandom(6).hex()  # users whose password vsftpd does not know

pytestmark = pytest.mark.skipif(not os.path.exists(SLAPD), reason="slapd not installed")


def slappasswd(password: str, scheme: str) -> str:
    res = subprocess.run(["slappasswd", "-h", scheme, "-s", password], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


class Slapd:
    """A slapd of the test's own: slapd.conf, mdb database and log in `directory`."""

    def __init__(self, directory: Path, ports: peers.PortAllocator, cert: Path, key: Path):
        self.dir, self.cert, self.key = directory, cert, key
        self.dir.mkdir(parents=True)
        (self.dir / "db").mkdir()
        self.port, self.tls_port = ports.port(), ports.port()
        self.log = self.dir / "slapd.log"
        self.proc: subprocess.Popen | None = None
        self.conf = self.dir / "slapd.conf"
        self.conf.write_text(f"""include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {self.dir}/slapd.pid
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
database mdb
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PW}
directory {self.dir}/db
overlay memberof
access to attrs=userPassword by anonymous auth by self read by * none
access to dn.exact="uid=eve,{PEOPLE}" by * none
access to * by users read by * none
""")

    @property
    def uri(self) -> str:
        return f"ldap://{HOST}:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        # an IP (the certificate's IP SAN): libldap checks "localhost" as this host's name
        return f"ldaps://{HOST}:{self.tls_port}"

    def seed(self, entries: list[str], later: list[str]) -> None:
        """`entries` loaded offline (slapadd), `later` added through the running server
        (so that the memberof overlay writes the members' memberOf)."""
        ldif = self.dir / "seed.ldif"
        ldif.write_text("\n".join(entries))
        peers.check(peers.run(["slapadd", "-f", str(self.conf), "-l", str(ldif)], timeout=60))
        self.start()
        if later:
            ldif = self.dir / "later.ldif"
            ldif.write_text("\n".join(later))
            peers.check(peers.run(["ldapadd", "-x", "-H", self.uri, "-D", ADMIN_DN, "-w",
                                   ADMIN_PW, "-f", str(ldif)], timeout=60))

    def start(self) -> None:
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [SLAPD, "-f", str(self.conf), "-h",
             f"ldap://{HOST}:{self.port}/ ldaps://{HOST}:{self.tls_port}/", "-d", "256"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        peers.wait_listening(self.proc, self.port, 20, "slapd", self.log)
        peers.wait_listening(self.proc, self.tls_port, 20, "slapd", self.log)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def binds(self, dn: str) -> int:
        return self.log.read_text(errors="replace").count(f'BIND dn="{dn}" mech=SIMPLE')


def entry(dn: str, *lines: str) -> str:
    return f"dn: {dn}\n" + "\n".join(lines) + "\n"


def person(uid: str, password_hash: str, *extra: str) -> str:
    return entry(f"uid={uid},{PEOPLE}", "objectClass: inetOrgPerson", f"uid: {uid}",
                 f"cn: {uid}", f"sn: {uid}", f"userPassword: {password_hash}", *extra)


def group(name: str, *uids: str) -> str:
    return entry(f"cn={name},ou=groups,{SUFFIX}", "objectClass: groupOfNames", f"cn: {name}",
                 *[f"member: uid={u},{PEOPLE}" for u in uids])


def start_slapd(directory: Path, ports, cert, key, password: str) -> Slapd:
    """Users: alice ({SSHA}, group ftp-rw), bob ({CRYPT}, group ftp-ro, backend be2),
    carol (her own password: vsftpd would refuse it; ftp-rw), dave (a backend the
    gateway does not have), eve (an ACL hides her entry from herself), and the service
    account."""
    s = Slapd(directory, ports, cert, key)
    crypt = "{CRYPT}" + subprocess.run(["mkpasswd", "-m", "sha512crypt", "--stdin"],
                                       input=password, capture_output=True, text=True,
                                       check=True, timeout=30).stdout.strip()
    s.seed([
        entry(SUFFIX, "objectClass: dcObject", "objectClass: organization", "o: example",
              "dc: example"),
        entry(PEOPLE, "objectClass: organizationalUnit", "ou: people"),
        entry(f"ou=groups,{SUFFIX}", "objectClass: organizationalUnit", "ou: groups"),
        entry(f"ou=services,{SUFFIX}", "objectClass: organizationalUnit", "ou: services"),
        entry(SVC_DN, "objectClass: inetOrgPerson", "uid: svc-ftp", "cn: svc", "sn: svc",
              f"userPassword: {slappasswd(SVC_PW, '{SSHA}')}"),
        person("alice", slappasswd(password, "{SSHA}")),
        person("bob", crypt, "employeeType: be2"),
        person("carol", slappasswd(OWN_PW, "{SSHA}")),
        person("dave", slappasswd(password, "{SSHA}"), "employeeType: nowhere"),
        person("eve", slappasswd(password, "{SSHA}")),  # may bind, not read her entry
    ], [group("ftp-rw", "alice", "carol"), group("ftp-ro", "bob")])
    return s


@pytest.fixture(scope="module")
def ldap_cert(workdir):
    d = workdir / "tls-ldap"
    d.mkdir(exist_ok=True)
    cert, key = peers.make_cert(d, "slapd")
    wrong, _ = peers.make_cert(d, "other")
    return cert, key, wrong


@pytest.fixture(scope="module")
def slapd(workdir, ports, ldap_cert, test_user):
    s = start_slapd(workdir / f"slapd-{os.urandom(4).hex()}", ports, ldap_cert[0],
                    ldap_cert[1], test_user[1])
    yield s
    s.stop()


class DelayProxy:
    """TCP proxy to slapd that holds every server-to-client chunk `delay` seconds and
    counts the connections it accepted."""

    def __init__(self, target_port: int, port: int):
        self.target, self.delay, self.connections = target_port, 0.0, 0
        self.lsock = socket.create_server((HOST, port))
        self.port = port
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"ldap://{HOST}:{self.port}"

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.connections += 1
            u = socket.create_connection((HOST, self.target))
            self.socks += [c, u]
            threading.Thread(target=self._pump, args=(c, u, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, True), daemon=True).start()

    def _pump(self, src, dst, slow):
        try:
            while data := src.recv(65536):
                if slow and self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.lsock.close()
        for s in self.socks:
            s.close()


def ldap_keys(uri: str, **keys) -> dict:
    k = {"auth": "ldap", "ldap_uri": uri, "ldap_user_dn": f"uid=%u,{PEOPLE}",
         "ldap_timeout": 5}
    k.update(keys)
    return {key: v for key, v in k.items() if v is not None}


def user_map(path: Path, sysuser: str, lines: list[str] | None = None) -> Path:
    """Both groups go to vsftpd's system account with the client's password."""
    path.write_text("\n".join(lines or [f"@ftp-rw be:{sysuser}", f"@ftp-ro *:{sysuser}"]) + "\n")
    return path


def start(gateway, backend, fe: dict, sections: dict | None = None, **kw):
    extra = {"frontend fe": fe, "global": {"max_sessions_per_ip": 500}}
    extra.update(sections or {})
    return gateway(backend, extra=extra, **kw)


def attempt(port: int, ctx, user: str, password: str) -> tuple[int, str, float]:
    return edge_attempt(port, ctx, user, password, timeout=30)  # a slowed directory


def test_direct_bind_transfers(gateway, vsftpd, slapd, test_user, blobs, client_ctx, tmp_path):
    """alice binds at uid=alice,ou=people; her group ftp-rw maps her to vsftpd's account:
    a download and an upload, SHA-256 compared; the backend saw one connection."""
    sysuser, password = test_user
    gw = start(gateway, vsftpd, ldap_keys(slapd.uri, user_map=user_map(tmp_path / "map",
                                                                        sysuser)))
    digest = vsftpd.put(blobs, "ldap-down.bin", 300_000)
    src, up_digest = blobs.blob(200_000)
    before = vsftpd.connections()
    mark = gw.mark()
    with ftplib_session(gw.port, "alice", password, client_ctx) as ftp:
        ftplib_download(ftp, "ldap-down.bin", tmp_path / "down.bin")
        ftplib_upload(ftp, src, "ldap-up.bin")
    assert peers.sha256_file(tmp_path / "down.bin") == digest
    assert peers.sha256_file(vsftpd.path("ldap-up.bin")) == up_digest
    assert vsftpd.connections() == before + 1
    mark.wait(f'event=auth_ok method=ldap user="alice" backend_user="{sysuser}" '
              r'password=client backend=be map_line=1')
    assert slapd.binds(f"uid=alice,{PEOPLE}") >= 1
    no_password_in(gw.log, password)


def test_failures_open_no_backend_connection(gateway, vsftpd, slapd, test_user, client_ctx,
                                             tmp_path):
    sysuser, password = test_user
    gw = start(gateway, vsftpd, ldap_keys(slapd.uri, user_map=user_map(tmp_path / "map",
                                                                        sysuser)))
    before = vsftpd.connections()
    for user, pw in [("alice", password + "x"), ("nobody-here", password), ("alice", ""),
                     ("x*)(uid=*", password), ("alice,ou=people", password)]:
        code, text, took = attempt(gw.port, client_ctx, user, pw)
        assert code == 530 and "Login incorrect" in text, (user, text)
        assert took >= 0.9, took
    assert vsftpd.connections() == before
    log = gw.log
    assert 'event=auth_failed method=ldap user="alice" reason=invalid_credentials' in log
    assert 'event=auth_failed method=ldap user="nobody-here" reason=invalid_credentials' in log
    assert 'event=auth_failed method=ldap user="alice" reason=empty_password' in log
    assert "event=backend_connect" not in log
    no_password_in(log, password, password + "x")
    # the right password: only now is the backend connected
    with ftplib_session(gw.port, "alice", password, client_ctx) as ftp:
        assert ftp.pwd()
    assert vsftpd.connections() == before + 1


def test_failures_count_toward_bans(gateway, vsftpd, slapd, test_user, client_ctx):
    sysuser, password = test_user
    gw = start(gateway, vsftpd, ldap_keys(slapd.uri),
               {"global": {"max_sessions_per_ip": 500, "ban_after": 2, "ban_window": 600,
                           "ban_time": 60}})
    before = vsftpd.connections()
    assert attempt(gw.port, client_ctx, "alice", "wrong")[0] == 530
    code, text, _ = attempt(gw.port, client_ctx, "ghost", "wrong")
    assert code == 421 and "Too many failed logins" in text, text
    gw.mark(0).wait("event=ban ")
    assert vsftpd.connections() == before


def test_group_backend_and_policy(gateway, vsftpd, pyftpdlib, slapd, test_user, client_ctx,
                                  blobs, tmp_path):
    """bob's employeeType names backend be2 (pyftpdlib) and his group ftp-ro a read-only
    policy: STOR gets 550 and never reaches the backend. alice (ftp-rw) writes on vsftpd.
    dave's employeeType names no backend of the frontend, eve may bind but not read her
    entry (her groups are unknown): both refused (421), nothing opened."""
    sysuser, password = test_user
    gw = start(gateway, vsftpd,
               ldap_keys(slapd.uri, backend="be, be2", ldap_backend_attr="employeeType",
                         user_map=user_map(tmp_path / "map", sysuser)),
               {"backend be2": {"address": pyftpdlib.address, "tls": "none",
                                "health_interval": 0},
                "policy ro": {"read_only": "yes", "users": "@ftp-ro"}})
    vs0, py0 = vsftpd.connections(), pyftpdlib.connections()
    pyftpdlib.put(blobs, "ro.bin", 10_000)
    src, _ = blobs.blob(10_000)
    mark = gw.mark()
    with ftplib_session(gw.port, "bob", password, client_ctx) as ftp:
        assert "ro.bin" in ftp.nlst()
        c = ftp.sendcmd("TYPE I")
        assert c.startswith("200")
        with pytest.raises(Exception) as err:
            ftplib_upload(ftp, src, "ro-up.bin")
        assert "550" in str(err.value)
    assert pyftpdlib.connections() == py0 + 1 and vsftpd.connections() == vs0
    assert not pyftpdlib.path("ro-up.bin").exists()
    mark.wait('event=auth_ok method=ldap user="bob" .* backend=be2')
    mark.wait("event=policy_refused verb=STOR policy=ro")
    with ftplib_session(gw.port, "alice", password, client_ctx) as ftp:
        ftplib_upload(ftp, src, "rw-up.bin")
    assert vsftpd.path("rw-up.bin").exists()
    assert vsftpd.connections() == vs0 + 1
    code, text, _ = attempt(gw.port, client_ctx, "dave", password)
    assert code == 421, text
    mark.wait('event=auth_unavailable method=ldap user="dave" reason=unknown_backend')
    code, text, _ = attempt(gw.port, client_ctx, "eve", password)
    assert code == 421, text
    mark.wait('event=auth_unavailable method=ldap user="eve" reason=entry_unreadable')
    assert vsftpd.connections() == vs0 + 1 and pyftpdlib.connections() == py0 + 1


def test_search_then_bind(gateway, vsftpd, slapd, test_user, client_ctx, tmp_path):
    sysuser, password = test_user
    svc = tmp_path / "svc.pw"
    svc.write_text(SVC_PW + "\n")
    svc.chmod(0o600)
    gw = start(gateway, vsftpd, ldap_keys(
        slapd.uri, ldap_user_dn=None, ldap_bind_dn=SVC_DN, ldap_bind_password_file=svc,
        ldap_base=SUFFIX, ldap_filter="(&(objectClass=inetOrgPerson)(uid=%u))",
        user_map=user_map(tmp_path / "map", sysuser)))
    before = vsftpd.connections()
    svc_binds = slapd.binds(SVC_DN)
    with ftplib_session(gw.port, "alice", password, client_ctx) as ftp:
        assert ftp.pwd()
    assert slapd.binds(SVC_DN) == svc_binds + 1
    for user, reason in [("nobody-here", "unknown_user"), ("x*)(uid=*", "unknown_user"),
                         ("alice", "bad_password")]:
        assert attempt(gw.port, client_ctx, user, "wrong")[0] == 530
        gw.mark(0).wait(re.escape(f'event=auth_failed method=ldap user="{user}" '
                                  f'reason={reason}'))
    assert vsftpd.connections() == before + 1
    no_password_in(gw.log, password, SVC_PW)


def test_reload_rereads_service_password(gateway, vsftpd, slapd, test_user, client_ctx,
                                         tmp_path):
    """SIGHUP reads the service password file again: a wrong password there makes the
    directory refuse the service account (421, reason=service_bind_refused); a file others
    may read fails the reload and the old configuration keeps serving; the cache is the
    generation's, so a reload empties it."""
    sysuser, password = test_user
    svc = tmp_path / "svc.pw"
    svc.write_text(SVC_PW + "\n")
    svc.chmod(0o600)
    gw = start(gateway, vsftpd, ldap_keys(
        slapd.uri, ldap_user_dn=None, ldap_bind_dn=SVC_DN, ldap_bind_password_file=svc,
        ldap_base=PEOPLE, user_map=user_map(tmp_path / "map", sysuser)))
    with ftplib_session(gw.port, "alice", password, client_ctx) as ftp:
        assert ftp.pwd()
    svc.write_text("not-the-password\n")
    mark = gw.mark()
    os.kill(gw.pid, signal.SIGHUP)
    mark.wait("event=reload_complete ", 20)
    code, text, _ = attempt(gw.port, client_ctx, "alice", password)
    assert code == 421, text
    mark.wait('event=auth_unavailable method=ldap user="alice" reason=service_bind_refused')
    svc.write_text(SVC_PW + "\n")
    svc.chmod(0o644)
    mark = gw.mark()
    os.kill(gw.pid, signal.SIGHUP)
    mark.wait("event=reload_failed .*readable or writable by group or others", 20)
    assert attempt(gw.port, client_ctx, "alice", password)[0] == 421  # the old one serves
    svc.chmod(0o600)
    mark = gw.mark()
    os.kill(gw.pid, signal.SIGHUP)
    mark.wait("event=reload_complete ", 20)
    with ftplib_session(gw.port, "alice", password, client_ctx) as ftp:
        assert ftp.pwd()
    no_password_in(gw.log, password, SVC_PW, "not-the-password")


@pytest.mark.parametrize("how", ["ldaps", "starttls"])
def test_tls_verifies_the_server(gateway, vsftpd, slapd, ldap_cert, test_user, client_ctx,
                                 tmp_path, how):
    """ldaps:// and StartTLS with ldap_ca_file: logins pass (slapd's log shows the bind
    over TLS); with another CA the check fails closed (421), the backend sees nothing."""
    sysuser, password = test_user
    cert, _, wrong = ldap_cert
    uri = slapd.ldaps_uri if how == "ldaps" else slapd.uri
    starttls = "yes" if how == "starttls" else None
    umap = user_map(tmp_path / "map", sysuser)
    good = start(gateway, vsftpd, ldap_keys(uri, ldap_ca_file=cert, ldap_starttls=starttls,
                                            user_map=umap))
    bad = start(gateway, vsftpd, ldap_keys(uri, ldap_ca_file=wrong, ldap_starttls=starttls,
                                           user_map=umap))
    before = vsftpd.connections()
    with ftplib_session(good.port, "alice", password, client_ctx) as ftp:
        assert ftp.pwd()
    assert vsftpd.connections() == before + 1
    last_bind = [line for line in slapd.log.read_text(errors="replace").splitlines()
                 if 'BIND dn="uid=alice,' in line][-1]
    assert re.search(r" ssf=([1-9]\d*)", last_bind), last_bind  # over TLS
    code, text, _ = attempt(bad.port, client_ctx, "alice", password)
    assert code == 421, text
    bad.mark(0).wait("event=auth_unavailable method=ldap user=\"alice\" reason=")
    assert vsftpd.connections() == before + 1
    no_password_in(good.log + bad.log, password)


def test_ldap_down(gateway, vsftpd, workdir, ports, ldap_cert, test_user, client_ctx, tmp_path):
    """slapd killed: 421 and event=auth_unavailable; the gateway's auth = backend frontend
    still serves, and so does the LDAP frontend once slapd is back."""
    sysuser, password = test_user
    s = start_slapd(workdir / f"slapd-down-{os.urandom(4).hex()}", ports, ldap_cert[0],
                    ldap_cert[1], password)
    try:
        gw = start(gateway, vsftpd, ldap_keys(s.uri, user_map=user_map(tmp_path / "map",
                                                                        sysuser),
                                              auth_cache_ttl=0),
                   frontends={"b": {"mode": "implicit"}})
        with ftplib_session(gw.port, "alice", password, client_ctx) as ftp:
            assert ftp.pwd()
        s.stop()
        before = vsftpd.connections()
        mark = gw.mark()
        code, text, took = attempt(gw.port, client_ctx, "alice", password)
        assert code == 421, text
        mark.wait('event=auth_unavailable method=ldap user="alice" reason=server_down')
        assert vsftpd.connections() == before
        with ftplib_session(gw.fport("b"), sysuser, password, client_ctx) as ftp:
            assert ftp.pwd()
        assert vsftpd.connections() == before + 1
        assert gw.alive()
        s.start()
        with ftplib_session(gw.port, "alice", password, client_ctx) as ftp:
            assert ftp.pwd()
        no_password_in(gw.log, password)
    finally:
        s.stop()


def test_slow_ldap_holds_up_no_one_else(gateway, vsftpd, slapd, ports, test_user, client_ctx,
                                        tmp_path):
    """Every LDAP answer delayed 2 s (a proxy): that login takes seconds, while a login
    answered from the cache and one on an auth = backend frontend are not held up;
    past ldap_timeout the check gives up: 421 reason=timeout."""
    sysuser, password = test_user
    proxy = DelayProxy(slapd.port, ports.port())
    try:
        # 5 s: the search answer may come as two chunks (entry, then done), 4 s delayed
        gw = start(gateway, vsftpd, ldap_keys(proxy.uri, ldap_timeout=5,
                                              user_map=user_map(tmp_path / "map", sysuser)),
                   frontends={"b": {"mode": "implicit"}})
        with ftplib_session(gw.port, "alice", password, client_ctx) as ftp:  # warm
            assert ftp.pwd()
        proxy.delay = 2.0  # per answer: bind, then search: 4 s at least
        slow: dict = {}

        def slow_login():
            t0 = time.monotonic()
            slow["result"] = attempt(gw.port, client_ctx, "carol", OWN_PW)
            slow["took"] = time.monotonic() - t0

        t = threading.Thread(target=slow_login)
        t.start()
        time.sleep(0.3)
        for port, user in [(gw.fport("b"), sysuser), (gw.port, "alice")]:
            t0 = time.monotonic()
            with ftplib_session(port, user, password, client_ctx) as ftp:
                assert ftp.pwd()
            assert time.monotonic() - t0 < 1.5, (user, time.monotonic() - t0)
            assert t.is_alive(), "the slow login ended before the others were tried"
        t.join(30)
        # carol passed LDAP; vsftpd refuses her mapped login (her password is her own)
        assert slow["took"] >= 4, slow
        gw.mark(0).wait('event=auth_ok method=ldap user="carol"')
        proxy.delay = 6.0  # > ldap_timeout
        mark = gw.mark()
        code, text, took = attempt(gw.port, client_ctx, "bob", password)
        assert code == 421, text
        assert 3.5 < took < 12, took
        mark.wait('event=auth_unavailable method=ldap user="bob" reason=timeout')
    finally:
        proxy.close()


def test_bounded_checks_queue(gateway, vsftpd, slapd, ports, test_user, client_ctx, tmp_path):
    """At most 2 binds run at once per worker (with PAM's conversations: the thread pool is
    shared with name lookups): with a slow server, 5 logins at once make 2 binds, the others
    wait their turn (event=auth_queued) and every one logs in; none is refused."""
    sysuser, password = test_user
    proxy = DelayProxy(slapd.port, ports.port())
    try:
        gw = start(gateway, vsftpd, ldap_keys(proxy.uri, auth_cache_ttl=0,
                                              user_map=user_map(tmp_path / "map", sysuser)),
                   {"global": {"max_sessions_per_ip": 500, "log_level": "debug"}})
        proxy.delay = 1.0
        mark = gw.mark()
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(
            attempt(gw.port, client_ctx, "alice", password))) for _ in range(5)]
        for t in threads:
            t.start()
        peers.wait_for(lambda: proxy.connections == 2, 5, "2 binds under way")
        mark.wait(r"event=auth_queued method=ldap running=2", 5)
        time.sleep(0.5)
        assert proxy.connections == 2, "more than 2 binds at once"
        for t in threads:
            t.join(30)
        assert sorted(r[0] for r in results) == [230] * 5, results
        assert proxy.connections == 5
        assert max(r[2] for r in results) > 2.0  # the last waited for two rounds
        assert "reason=busy" not in mark.text()
    finally:
        proxy.close()


def test_cache(gateway, vsftpd, slapd, ports, test_user, client_ctx, tmp_path):
    """A second login within auth_cache_ttl is answered without slapd (no new connection
    through the proxy, no new BIND in slapd's log); another password is not; a failure is
    remembered only briefly; with auth_cache_ttl = 0 every login binds."""
    sysuser, password = test_user
    proxy = DelayProxy(slapd.port, ports.port())
    try:
        umap = user_map(tmp_path / "map", sysuser)
        gw = start(gateway, vsftpd, ldap_keys(proxy.uri, user_map=umap))
        nocache = start(gateway, vsftpd, ldap_keys(proxy.uri, user_map=umap, auth_cache_ttl=0))
        dn = f"uid=alice,{PEOPLE}"
        binds = slapd.binds(dn)
        for i in range(3):
            with ftplib_session(gw.port, "alice", password, client_ctx) as ftp:
                assert ftp.pwd()
        assert proxy.connections == 1
        assert slapd.binds(dn) == binds + 1
        assert attempt(gw.port, client_ctx, "alice", password + "x")[0] == 530
        assert proxy.connections == 2
        assert attempt(gw.port, client_ctx, "alice", password + "x")[0] == 530
        assert proxy.connections == 2  # the failure, remembered briefly
        assert gw.log.count("reason=cached_failure") == 1
        for i in range(2):
            with ftplib_session(nocache.port, "alice", password, client_ctx) as ftp:
                assert ftp.pwd()
        assert proxy.connections == 4
        no_password_in(gw.log + nocache.log, password)
    finally:
        proxy.close()


def check_config(conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "build" / "ftpsgate"), "-t", "-c", str(conf)],
                          capture_output=True, text=True, timeout=60)


def test_check_files(tmp_path, ports, vsftpd, ldap_cert):
    """-t: the service password file (missing, readable by others, empty) and the CA file
    (missing, not a certificate); key combinations that cannot work."""
    svc, ca = tmp_path / "svc.pw", tmp_path / "ca.pem"
    svc.write_text("secret\n")
    svc.chmod(0o600)
    ca.write_bytes(ldap_cert[0].read_bytes())
    base = f"""[global]
control_socket = off
[frontend fe]
listen = {HOST}:{ports.port()}
mode = plain
auth = ldap
ldap_uri = ldap://{HOST}:1 ldaps://localhost:2
"""
    search = (f"ldap_bind_dn = {SVC_DN}\nldap_bind_password_file = {svc}\nldap_base = {SUFFIX}\n"
              f"ldap_ca_file = {ca}\n")
    be = f"[backend be]\naddress = {vsftpd.address}\n"
    conf = tmp_path / "gw.conf"

    def check(fe_extra: str) -> subprocess.CompletedProcess:
        conf.write_text(base + fe_extra + be)
        return check_config(conf)

    assert check(search).returncode == 0, check(search).stderr
    svc.chmod(0o644)
    res = check(search)
    assert res.returncode == 1 and "ldap_bind_password_file" in res.stderr, res.stderr
    assert "readable or writable by group or others" in res.stderr
    svc.chmod(0o600)
    svc.write_text("\n")
    assert "empty" in check(search).stderr
    svc.write_text("secret\n")
    ca.write_text("not a certificate\n")
    res = check(search)
    assert res.returncode == 1 and "ldap_ca_file" in res.stderr and "no PEM" in res.stderr
    ca.unlink()
    assert check(search).returncode == 1
    for extra, words in [
            ("", "ldap_user_dn"),
            (f"ldap_user_dn = uid=%s,{PEOPLE}\n", "%u"),
            (f"ldap_user_dn = ou=people\n", "needs %u"),
            (f"ldap_user_dn = uid=%u\nldap_starttls = yes\n", "StartTLS"),
            (f"ldap_bind_dn = {SVC_DN}\nldap_base = {SUFFIX}\n", "ldap_bind_password_file"),
            (f"ldap_user_dn = uid=%u\nldap_group_attr = mem ber\n", "not an attribute"),
    ]:
        res = check(extra)
        assert res.returncode == 1 and words in res.stderr, (extra, res.stderr)
    conf.write_text(base.replace("ldap_uri = ", "ldap_uri = http://x ") +
                    "ldap_user_dn = uid=%u\n" + be)
    res = check_config(conf)
    assert res.returncode == 1 and "ldap://" in res.stderr, res.stderr
    conf.write_text(base.replace("auth = ldap\n", "") + be)
    res = check_config(conf)
    assert res.returncode == 1 and "set without auth = ldap" in res.stderr, res.stderr
