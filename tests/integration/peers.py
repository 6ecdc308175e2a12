"""Real peers for the integration tests: backends (vsftpd, pyftpdlib), the gateway process,
and the clients (curl, lftp, ftplib, raw TLS sockets).

Stdlib only. Everything listens on 127.0.0.1; the tests run as root (vsftpd needs it).
What each peer does differently is noted where a test depends on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ftplib
import hashlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterable

REPO = Path(__file__).resolve().parents[2]
GATEWAY_BIN = Path(os.environ.get("FTPSGATE_BIN", REPO / "build" / "ftpsgate"))
# A command put in front of the gateway, e.g. "valgrind --error-exitcode=99 -q" (valgrind
# runs the gateway in the same process, so pid and fd counts stay meaningful).
GATEWAY_WRAPPER = shlex.split(os.environ.get("FTPSGATE_WRAPPER", ""))
PYTHON = "/usr/bin/python3"  # Debian's, which has pyftpdlib; not the pyenv one on PATH
HOST = "127.0.0.1"
KiB = 1024
MiB = 1024 * KiB

TEST_USER = "ftpgw"
PAM_SERVICE = "ftpsgate-test"
PAM_FILE = Path("/etc/pam.d") / PAM_SERVICE
# Root-only file holding the test user's password, so concurrent runs agree on it and no
# password is written into the repository.
PASSWORD_FILE = Path("/var/lib/ftpsgate-test/ftpgw.password")

# Markers of a sanitizer report in the gateway's log.
CRASH_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")


# ---------------------------------------------------------------------------------------
# Small utilities


def metric_series(text: str, name: str, **labels) -> list[float]:
    """The values of the series `name` in a Prometheus exposition whose labels include
    `labels`."""
    values = []
    for line in text.splitlines():
        m = re.match(r"^(\w+)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            values.append(float(m.group(3)))
    return values


def metric(text: str, name: str, **labels) -> float:
    """The sum of those series (0 when absent)."""
    return sum(metric_series(text, name, **labels))


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval=0.02):
    """Poll until predicate() is truthy; return its value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def run(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run a client command; never raises on a non-zero exit (the test asserts)."""
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, **kw)


def describe(res: subprocess.CompletedProcess) -> str:
    return (f"command: {' '.join(res.args)}\nexit: {res.returncode}\n"
            f"stdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-4000:]}")


def check(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, describe(res)
    return res


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_random(path: Path, size: int) -> str:
    """Write `size` random bytes to path; return their SHA-256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MiB))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


class Blobs:
    """Random files, generated once per size and copied where needed."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._cache: dict[int, tuple[Path, str]] = {}

    def blob(self, size: int) -> tuple[Path, str]:
        if size not in self._cache:
            path = self.dir / f"blob-{size}"
            self._cache[size] = (path, write_random(path, size))
        return self._cache[size]

    def copy_to(self, dest: Path, size: int) -> str:
        """Copy the shared blob of `size` bytes to dest; return its SHA-256."""
        src, digest = self.blob(size)
        shutil.copyfile(src, dest)
        return digest

    def unique(self, dest: Path, size: int) -> str:
        """Fresh random content (for tests that must tell files apart)."""
        return write_random(dest, size)


def global_ipv6_address() -> str | None:
    """The interface of a non-loopback IPv6 address of global scope, or None.

    lftp (4.9, GnuTLS build) reaches [::1] only on such a machine: with the loopback alone,
    or with link-local addresses only (fe80::), it says `open: ::1: No address found`
    (checked in a namespace from `unshare -n` with lo up, then with a veth pair, then with
    an fd01:: address added). Python's getaddrinfo("::1", port, flags=AI_ADDRCONFIG)
    answers in all three cases, so it cannot tell; /proc/net/if_inet6 can (columns:
    address, ifindex, prefix length, scope, flags, name; scope 00 is global)."""
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) == 6 and fields[3] == "00" and fields[5] != "lo":
            return fields[5]
    return None


LFTP_IPV6_SKIP = ("lftp resolves [::1] only where a non-loopback interface has a global "
                  "IPv6 address (none here: /proc/net/if_inet6)")


# ---------------------------------------------------------------------------------------
# Ports


def _bindable(port: int) -> bool:
    # SO_REUSEADDR, as every server of the tests sets it (ftpsgate, vsftpd, pyftpdlib,
    # HAProxy, the tests' own listeners): a listener makes the port busy, a connection of
    # the past minute in TIME_WAIT does not (it would leave few ranges of 500 free ports).
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


class _Slice:
    """Ports lo-hi: single ports from the top SINGLES, ranges from the rest (single ports held
    for a whole session, a test's listener or a module's backend, would otherwise be
    scattered over the slice and leave no room for a range of 500)."""

    def __init__(self, lo: int, hi: int, singles: int, offset: int = 0,
                 resume: dict[bool, int] | None = None):
        self.lo, self.hi, self.split = lo, hi, hi - singles + 1
        self.next = {False: lo + offset % ((self.split - lo) // 2),
                     True: self.split + offset % (singles // 2)}
        for single, at in (resume or {}).items():  # where the slice's last holder stopped
            if (self.split <= at <= hi) if single else (lo <= at < self.split):
                self.next[single] = at

    def take(self, n: int, given: set[int]) -> int | None:
        single = n == 1
        lo, hi = (self.split, self.hi) if single else (self.lo, self.split - 1)
        first, scanned = self.next[single], 0
        while scanned <= 2 * (hi - lo + 1):
            if first + n - 1 > hi:
                scanned += hi - first + 1
                first = lo
                continue
            # The first port in the way: the next try starts after it.
            busy = next((p for p in range(first, first + n)
                         if p in given or not _bindable(p)), None)
            if busy is None:
                self.next[single] = first + n
                return first
            scanned += busy - first + 1
            first = busy + 1
        return None


class PortAllocator:
    """Hands out distinct ports and port ranges that are free right now.

    Uses 2000-29999: below Linux's ephemeral range (32768+) and away from the gateway's
    embedded default passive range (30000-30099), in slices of SLICE ports. Each allocator
    (one per test process: a pytest-xdist worker, a run) holds a slice of its own through an
    flock on a file per slice, for as long as it lives, and one more when its slices are
    full. So no two processes hand out the same port, even one picked by one process and
    bound only later (a passive range the backend binds at PASV, a gateway started after
    the pick): checking that a port is bindable cannot see that. With every slice held, it
    falls back to the whole range from an offset of its own, as runs on one machine did
    before.
    """

    LO, HI = 2000, 29999
    SLICE = 1750  # sixteen slices: a run's eight workers, each can take one more
    SINGLES = 500
    LOCK_DIR = Path("/var/lib/ftpsgate-test/ports")

    def __init__(self):
        self._locks: list = []
        self._slices: list[_Slice] = []
        self._given: set[int] = set()
        self.LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self._claim():  # no slice free: the whole range, from an offset of its own
            self._slices.append(_Slice(self.LO, self.HI, self.SINGLES, os.getpid() * 211))

    def _claim(self) -> bool:
        for first in range(self.LO, self.HI + 1, self.SLICE):
            f = open(self.LOCK_DIR / f"{first}.lock", "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            self._locks.append(f)  # held (and the slice with it) until this process ends
            # Go on where the slice's previous holder stopped (a run's serial part starts
            # right after its parallel workers end): ports its servers just used may still
            # be bound by their last sessions or waiting in TIME_WAIT.
            resume = {}
            try:
                r, one = (int(x) for x in Path(f.name).read_text().split())
                resume = {False: r, True: one}
            except (OSError, ValueError):
                pass
            self._slices.append(_Slice(first, min(first + self.SLICE - 1, self.HI),
                                       self.SINGLES, resume=resume))
            return True
        return False

    def _take(self, n: int) -> int:
        while True:
            for i, sl in enumerate(self._slices):
                first = sl.take(n, self._given)
                if first is not None:
                    self._given.update(range(first, first + n))
                    if i < len(self._locks):  # a claimed slice: note where the next holder goes on
                        f = self._locks[i]
                        f.seek(0)
                        f.truncate()
                        f.write(f"{sl.next[False]} {sl.next[True]}\n")
                        f.flush()
                    return first
            if not self._locks or not self._claim():
                break
        held = ", ".join(f"{sl.lo}-{sl.hi}" for sl in self._slices)
        raise RuntimeError(f"no {n} free consecutive ports in {held} ({len(self._given)} "
                           f"handed out and not given back)")

    def port(self) -> int:
        return self._take(1)

    def range(self, n: int) -> tuple[int, int]:
        first = self._take(n)
        return first, first + n - 1

    def release(self, ports: Iterable[int]) -> None:
        """Give ports back once nothing listens on them any more (a stopped gateway): the
        whole suite starts a few hundred gateways of ~45 ports each, more than the range
        holds. A released port is handed out again only while nothing listens on it."""
        self._given.difference_update(ports)


# ---------------------------------------------------------------------------------------
# Processes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    return inodes


def is_listening(pid: int, port: int) -> bool:
    """True when process `pid` holds a socket listening on TCP `port`."""
    return bool(_listening_inodes(port) & _socket_inodes(pid))


def wait_listening(proc: subprocess.Popen, port: int, timeout: float, what: str,
                   log: Path | None = None) -> None:
    """Wait until proc listens on port (the kernel then accepts TCP connections)."""
    deadline = time.monotonic() + timeout
    while not is_listening(proc.pid, port):
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on "
                               f"{port}\n{tail}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not listening on {port} after {timeout} s")
        time.sleep(0.02)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen, timeout: float = 5) -> None:
    """SIGKILL a process and everything it started (vsftpd's session processes outlive the
    listener and would be re-parented away if the listener died first)."""
    pids = descendants(proc.pid)
    for pid in [proc.pid, *pids]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # started with start_new_session=True
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)


# ---------------------------------------------------------------------------------------
# Test user and TLS material


@contextlib.contextmanager
def _machine_setup_lock():
    """Held while the test user, its password and the PAM service are set up: pytest-xdist
    workers and concurrent runs do it at the same time (useradd twice, a password file
    read before it is written, a PAM file read half-written)."""
    PASSWORD_FILE.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(PASSWORD_FILE.parent / "setup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_test_user() -> tuple[str, str]:
    """Create the system user for vsftpd logins once; (re)set its SHA-512 password.

    Debian hashes with yescrypt by default, which makes every login slow."""
    if os.geteuid() != 0:
        raise RuntimeError("the integration tests run as root (vsftpd, useradd, chpasswd)")
    with _machine_setup_lock():
        try:
            pwd.getpwnam(TEST_USER)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin",
                            "--comment", "ftpsgate integration tests", TEST_USER],
                           check=True, timeout=30)
        if not PASSWORD_FILE.exists():
            fd = os.open(PASSWORD_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(12))  # URL-safe: it goes into ftp:// URLs
        password = PASSWORD_FILE.read_text().strip()
        subprocess.run(["chpasswd", "-c", "SHA512"], input=f"{TEST_USER}:{password}\n",
                       text=True, check=True, timeout=30)
    return TEST_USER, password


def ensure_pam_service() -> str:
    """A minimal PAM service for vsftpd: pam_unix only (no ftpusers or shells checks)."""
    text = ("# ftpsgate integration tests (tests/integration/peers.py)\n"
            "auth     required pam_unix.so\n"
            "account  required pam_unix.so\n"
            "session  required pam_unix.so\n")
    with _machine_setup_lock():
        if not PAM_FILE.exists() or PAM_FILE.read_text() != text:
            tmp = PAM_FILE.with_name(f".{PAM_SERVICE}.{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, PAM_FILE)  # a vsftpd login never reads half a file
    return PAM_SERVICE


def make_cert(directory: Path, stem: str = "gateway", cn: str = "localhost",
              san: str = "DNS:localhost,IP:127.0.0.1") -> tuple[Path, Path]:
    """Self-signed EC P-256 certificate (default: CN=localhost, SAN DNS:localhost,
    IP:127.0.0.1) as directory/STEM.crt and STEM.key. Each call makes a new key, so two
    calls give two certificates that do not trust each other."""
    cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", f"/CN={cn}",
         "-addext", f"subjectAltName={san}"],
        check=True, capture_output=True, timeout=60)
    return cert, key


# ---------------------------------------------------------------------------------------
# Backends


@dataclass
class Backend:
    """A running plain FTP server: where it listens, who may log in, where its files are."""

    name: str
    port: int
    user: str
    password: str
    root: Path  # the login directory: what the FTP client sees as "."
    banner: str  # the greeting is "220 " + banner
    proc: subprocess.Popen
    log: Path
    owner: tuple[int, int] | None = None  # uid, gid that files in root should have
    host: str = HOST
    tls: str = "none"  # what the server itself speaks: none | explicit | implicit
    cert: Path | None = None  # its certificate (the ca_file that trusts it) when tls != none
    # Where its ports came from, given back at stop() (a test process has a slice of ports).
    ports: "PortAllocator | None" = None
    allocated: tuple[int, ...] = ()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def path(self, name: str) -> Path:
        return self.root / name

    def adopt(self, name: str) -> Path:
        """Give a file put into root by the test to the FTP user."""
        p = self.path(name)
        if self.owner:
            os.chown(p, *self.owner)
        return p

    def put(self, blobs: Blobs, name: str, size: int, unique: bool = False) -> str:
        """Put a random file of `size` bytes on the backend; return its SHA-256."""
        dest = self.path(name)
        digest = blobs.unique(dest, size) if unique else blobs.copy_to(dest, size)
        self.adopt(name)
        return digest

    def put_bytes(self, name: str, data: bytes) -> None:
        self.path(name).write_bytes(data)
        self.adopt(name)

    def url(self, path: str = "") -> str:
        return f"ftp://{self.user}:{self.password}@{self.host}:{self.port}/{path}"

    def stop(self) -> None:
        kill_tree(self.proc)
        release = getattr(self.ports, "release", None)  # a test's own port source may not
        if release and self.proc.poll() is not None:
            release(self.allocated)

    def connections(self) -> int:
        """Control connections the server has logged so far (vsftpd: "CONNECT: Client",
        pyftpdlib: "FTP session opened"): a test compares two counts."""
        if not self.log.exists():
            return 0
        text = self.log.read_text(errors="replace")
        return text.count("CONNECT: Client") + text.count("FTP session opened")


VSFTPD_CONF = """\
listen=YES
listen_ipv6=NO
listen_address={host}
listen_port={port}
background=NO
seccomp_sandbox=NO
secure_chroot_dir={empty}
pam_service_name={pam}
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
local_root={root}
chroot_local_user=NO
pasv_enable=YES
pasv_min_port={pasv_lo}
pasv_max_port={pasv_hi}
port_enable=YES
connect_from_port_20=NO
ftpd_banner={banner}
max_clients=0
max_per_ip=0
use_localtime=NO
xferlog_enable=YES
xferlog_std_format=NO
log_ftp_protocol=YES
vsftpd_log_file={log}
"""


@dataclass
class VsftpdTLS:
    """vsftpd doing FTPS itself (ssl_enable=YES) with its own certificate.

    The defaults are the strict ones: logins and data must be protected, and data TLS must
    resume the control session (require_ssl_reuse). vsftpd 3.0.3 (Debian 12) knows only
    `ssl_tlsv1` (no ssl_tlsv1_2 / ssl_tlsv1_3 and no min/max version): it offers whatever
    OpenSSL allows, TLS 1.2 and 1.3. To force TLS 1.2 on the wire, set the gateway's backend
    `max_version = TLSv1.2`. `options` adds or overrides raw vsftpd.conf keys (an unknown key
    makes vsftpd exit with "500 OOPS: unrecognised variable in config file")."""

    cert: Path
    key: Path
    implicit: bool = False  # implicit_ssl=YES: TLS from the first byte on the control port
    require_ssl_reuse: bool = True
    force_local_logins_ssl: bool = True
    force_local_data_ssl: bool = True
    options: dict[str, object] = field(default_factory=dict)

    def conf(self) -> str:
        yes = {True: "YES", False: "NO"}
        keys: dict[str, object] = {
            "ssl_enable": "YES",
            "rsa_cert_file": self.cert,
            "rsa_private_key_file": self.key,
            "implicit_ssl": yes[self.implicit],
            "require_ssl_reuse": yes[self.require_ssl_reuse],
            "force_local_logins_ssl": yes[self.force_local_logins_ssl],
            "force_local_data_ssl": yes[self.force_local_data_ssl],
            "allow_anon_ssl": "NO",
            "ssl_sslv2": "NO",
            "ssl_sslv3": "NO",
            "ssl_tlsv1": "YES",
            # vsftpd's built-in default (DES-CBC3-SHA) leaves OpenSSL 3 nothing for TLS 1.2.
            "ssl_ciphers": "HIGH",
            "debug_ssl": "YES",
        }
        keys.update(self.options)
        return "".join(f"{k}={v}\n" for k, v in keys.items())


def start_vsftpd(workdir: Path, ports: PortAllocator, user: str, password: str,
                 tls: VsftpdTLS | None = None, pasv_ports: int = 50) -> Backend:
    """vsftpd in the foreground with its own configuration, serving `user`'s logins in a
    fresh directory (local_root) that the user owns. With `tls`, it does FTPS itself
    (explicit AUTH TLS, or implicit with tls.implicit).

    vsftpd picks a passive port at random and gives up after 9 tries that find it listened
    on ("500 OOPS: vsf_sysutil_bind"): with k sessions between PASV and their data
    connection, about 1 PASV in (range/k)^9 fails. A backend shared by tests that start 30
    transfers at once needs more than 50 ports (30 of 50: about 1 % per PASV)."""
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    empty = workdir / "empty"  # secure_chroot_dir: exists, empty, owned by root
    empty.mkdir(mode=0o755, exist_ok=True)
    root = workdir / "root"
    root.mkdir(exist_ok=True)
    pw = pwd.getpwnam(user)
    os.chown(root, pw.pw_uid, pw.pw_gid)
    os.chmod(root, 0o755)
    port = ports.port()
    pasv_lo, pasv_hi = ports.range(pasv_ports)
    banner = "ftpsgate-test vsftpd ready"
    conf = workdir / "vsftpd.conf"
    log = workdir / "vsftpd.log"
    conf.write_text(VSFTPD_CONF.format(
        host=HOST, port=port, empty=empty, pam=ensure_pam_service(), root=root,
        pasv_lo=pasv_lo, pasv_hi=pasv_hi, banner=banner, log=log)
        + (tls.conf() if tls else ""))
    os.chmod(conf, 0o600)  # vsftpd refuses config files others may write
    # vsftpd writes its start-up errors ("500 OOPS: ...") to fd 0: make that the log too.
    out = open(workdir / "vsftpd.stderr", "wb")
    proc = subprocess.Popen(["/usr/sbin/vsftpd", str(conf)], stdin=out, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    try:
        wait_listening(proc, port, 10, "vsftpd", workdir / "vsftpd.stderr")
    except Exception:
        kill_tree(proc)
        raise
    name, mode = "vsftpd", "none"
    if tls:
        mode = "implicit" if tls.implicit else "explicit"
        name = f"vsftpd-ftps-{mode}"
    return Backend(name, port, user, password, root, banner, proc, log,
                   owner=(pw.pw_uid, pw.pw_gid), tls=mode, cert=tls.cert if tls else None,
                   ports=ports, allocated=(port, *range(pasv_lo, pasv_hi + 1)))


PYFTPDLIB_SERVER = """\
import logging, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

host, port, root, user, password, pasv_lo, pasv_hi, banner = sys.argv[1:]
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s %(message)s")
authorizer = DummyAuthorizer()
authorizer.add_user(user, password, root, perm="elradfmwMT")
handler = FTPHandler
handler.authorizer = authorizer
handler.banner = banner
handler.passive_ports = range(int(pasv_lo), int(pasv_hi) + 1)
# EXTRA
server = FTPServer((host, int(port)), handler)
server.max_cons = 512
server.serve_forever()
"""


def start_pyftpdlib(workdir: Path, ports: PortAllocator, user: str, password: str,
                    extra: str = "", port: int | None = None, max_cons: int = 512) -> Backend:
    """pyftpdlib's plain FTPServer with one virtual user that may write in its root.
    `extra`: Python lines run before the server starts (handler settings). `port`: listen
    there (a restart on a stopped server's port) instead of a fresh one from `ports`.
    `max_cons`: its connection limit (over it a client is greeted with 421 and closed)."""
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "root"
    root.mkdir(exist_ok=True)
    script = workdir / "server.py"
    script.write_text(PYFTPDLIB_SERVER.replace("# EXTRA", extra)
                      .replace("server.max_cons = 512", f"server.max_cons = {int(max_cons)}"))
    fresh = not port
    port = port or ports.port()
    pasv_lo, pasv_hi = ports.range(50)
    banner = "ftpsgate-test pyftpdlib ready"
    log = workdir / "pyftpdlib.log"
    out = open(log, "wb")
    proc = subprocess.Popen(
        [PYTHON, str(script), HOST, str(port), str(root), user, password, str(pasv_lo),
         str(pasv_hi), banner],
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True)
    out.close()
    try:
        wait_listening(proc, port, 15, "pyftpdlib", log)
    except Exception:
        kill_tree(proc)
        raise
    # A restart on a given port keeps it: the first server's stop() gives it back.
    return Backend("pyftpdlib", port, user, password, root, banner, proc, log, ports=ports,
                   allocated=(*((port,) if fresh else ()), *range(pasv_lo, pasv_hi + 1)))


# pure-ftpd conflicts with vsftpd in apt: .ci/pure-ftpd.sh unpacks it here.
PURE_FTPD_DIR = Path(os.environ.get("FTPSGATE_PEER_CACHE", "/var/cache/ftpsgate-peers")) / "pure-ftpd"


def pure_ftpd_available() -> bool:
    return (PURE_FTPD_DIR / "usr/sbin/pure-ftpd").exists() and \
        (PURE_FTPD_DIR / "usr/bin/pure-pw").exists()


def start_pure_ftpd(workdir: Path, ports: PortAllocator, user: str, password: str,
                    tls_pem: Path | None = None) -> Backend:
    """pure-ftpd in the foreground, one virtual user (its own password database) mapped to
    the system `user`, whose home is a fresh directory. `tls_pem` (certificate and key in one
    file, as pure-ftpd wants): explicit TLS offered (-Y 1), else plain."""
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    root = workdir / "root"
    root.mkdir(exist_ok=True)
    pw = pwd.getpwnam(user)
    os.chown(root, pw.pw_uid, pw.pw_gid)
    passwd, pdb = workdir / "pureftpd.passwd", workdir / "pureftpd.pdb"
    for f in (passwd, pdb):
        f.unlink(missing_ok=True)
    subprocess.run([str(PURE_FTPD_DIR / "usr/bin/pure-pw"), "useradd", user,
                    "-u", str(pw.pw_uid), "-g", str(pw.pw_gid), "-D", str(root),
                    "-f", str(passwd), "-F", str(pdb), "-m"],
                   input=f"{password}\n{password}\n", text=True, check=True, timeout=30,
                   capture_output=True)
    # pure-pw hashes with argon2id: 2-6 s per login here. The system user's SHA-512 hash
    # (ensure_test_user) is as good for a test and costs nothing.
    shadow = {ln.split(":")[0]: ln.split(":")[1]
              for ln in Path("/etc/shadow").read_text().splitlines() if ":" in ln}
    fields = passwd.read_text().strip().split(":")
    fields[1] = shadow[user]
    passwd.write_text(":".join(fields) + "\n")
    subprocess.run([str(PURE_FTPD_DIR / "usr/bin/pure-pw"), "mkdb", str(pdb), "-f", str(passwd)],
                   check=True, timeout=30, capture_output=True)
    port = ports.port()
    pasv_lo, pasv_hi = ports.range(50)
    log = workdir / "pure-ftpd.log"
    args = [str(PURE_FTPD_DIR / "usr/sbin/pure-ftpd"), "-S", f"{HOST},{port}",
            "-l", f"puredb:{pdb}", "-E", "-H", "-f", "none", "-d",
            "-p", f"{pasv_lo}:{pasv_hi}", "-c", "200", "-C", "200",
            "-O", f"clf:{workdir / 'transfer.log'}"]
    if tls_pem:
        args += ["-Y", "1", "-2", str(tls_pem)]
    out = open(log, "wb")
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    try:
        wait_listening(proc, port, 10, "pure-ftpd", log)
    except Exception:
        kill_tree(proc)
        raise
    return Backend("pure-ftpd", port, user, password, root, "pure-ftpd", proc, log,
                   owner=(pw.pw_uid, pw.pw_gid), tls="explicit" if tls_pem else "none")


# ---------------------------------------------------------------------------------------
# The gateway


def kill_after_progress(args: list[str], moved: Path, at_least: int, timeout: float = 15) -> None:
    """Start `args` (a client transfer), wait until `moved` holds `at_least` bytes, kill it:
    a client that dies in the middle of a transfer."""
    proc = subprocess.Popen([str(a) for a in args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: moved.exists() and moved.stat().st_size >= at_least, timeout,
                 "the transfer to start")
    finally:
        proc.kill()
        proc.wait(10)


def put_sparse(backend, name, size):
    """A big file that costs nothing to create (the transfers are cut long before its end)."""
    path = backend.path(name)
    if not path.exists() or path.stat().st_size != size:
        with open(path, "wb") as f:
            f.truncate(size)
        backend.adopt(name)
    return path


def render_ini(sections: dict[str, dict[str, object]]) -> str:
    out = []
    for section, keys in sections.items():
        out.append(f"[{section}]")
        out.extend(f"{k} = {v}" for k, v in keys.items())
        out.append("")
    return "\n".join(out)


def merge_sections(base: dict[str, dict[str, object]],
                   extra: dict[str, dict[str, object]] | None) -> dict[str, dict[str, object]]:
    merged = {s: dict(keys) for s, keys in base.items()}
    for section, keys in (extra or {}).items():
        merged.setdefault(section, {}).update(keys)
    return merged


def _ini_value(v: object) -> object:
    return {True: "yes", False: "no"}.get(v, v) if isinstance(v, bool) else v


def _keys(**keys) -> dict[str, object]:
    """INI keys from keyword arguments: None leaves a key out (the gateway's default),
    booleans become yes/no."""
    return {k: _ini_value(v) for k, v in keys.items() if v is not None}


def frontend(mode: str = "explicit", *, require_tls: bool | None = None,
             require_prot_p: bool | None = None, allow_ccc: bool | None = None,
             **more) -> dict[str, object]:
    """Keys of an extra [frontend NAME] for GatewayFactory(frontends={NAME: frontend(...)}):
    mode implicit | explicit | plain and its policies; None keeps the gateway's default.
    `listen`, `backend` and `pasv_ports` are filled in by the factory unless given."""
    return _keys(mode=mode, require_tls=require_tls, require_prot_p=require_prot_p,
                 allow_ccc=allow_ccc, **more)


def backend_tls(tls: str = "explicit", *, tls_verify: bool | None = None,
                ca_file: Path | str | None = None, sni: str | None = None,
                min_version: str | None = None, max_version: str | None = None,
                **more) -> dict[str, object]:
    """Keys of the [backend be] section for the gateway's TLS toward the backend:
    GatewayFactory(backend, backend_keys=backend_tls("explicit", ca_file=cert))."""
    return _keys(tls=tls, tls_verify=tls_verify, ca_file=ca_file, sni=sni,
                 min_version=min_version, max_version=max_version, **more)


class LogCursor:
    """A gateway's log from a point on: `cur = gw.mark()` before acting, then

        m = cur.wait(r"event=session_end .*bytes=(\\d+)", timeout=10)  # the re.Match
        cur.lines(), cur.grep(regex), cur.count(regex), cur.text()   # what came since
        sid = cur.sid(local_port); cur.session(sid); cur.ended(sid)  # one session's lines

    Regexes are searched in each line (re.search); a wait that times out fails the test
    with the log's tail since the mark."""

    def __init__(self, path: Path, offset: int):
        self.path, self.offset = path, offset

    def text(self) -> str:
        if not self.path.exists():
            return ""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def grep(self, regex: str | re.Pattern) -> list[str]:
        rx = re.compile(regex)
        return [line for line in self.lines() if rx.search(line)]

    def count(self, regex: str | re.Pattern) -> int:
        return len(self.grep(regex))

    def session(self, sid: str) -> list[str]:
        """The lines of session `sid`."""
        return [line for line in self.lines() if f" session={sid} " in line]

    def tail(self, max_lines: int = 400) -> str:
        lines = self.lines()
        if len(lines) > max_lines:
            lines = [f"... ({len(lines) - max_lines} lines left out)"] + lines[-max_lines:]
        return "\n".join(lines)

    def wait(self, regex: str | re.Pattern, timeout: float = 10, n: int = 1) -> re.Match:
        """Wait for the `n`-th line matching `regex`; return its match (.string: the line)."""
        rx = re.compile(regex)
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in map(rx.search, self.lines()) if m]
            if len(found) >= n:
                return found[n - 1]
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{len(found)} of {n} log lines match {rx.pattern!r} after {timeout} s; "
                    f"the log since the mark (tail):\n{self.tail(60)}")
            time.sleep(0.02)

    def sid(self, local_port: int, timeout: float = 5) -> str:
        """The session id of the client connection from source port `local_port`."""
        return self.wait(rf"session=(\d+) event=session_start frontend=\S+ "
                         rf"peer=127\.0\.0\.1:{local_port}\b", timeout).group(1)

    def ended(self, sid: str, timeout: float = 10) -> list[str]:
        """Wait for session `sid`'s session_end; return its lines."""
        self.wait(rf" session={sid} (.* )?event=session_end\b", timeout)
        return self.session(sid)


@dataclass(eq=False)
class Gateway:
    """One build/ftpsgate process with its configuration file and log."""

    name: str
    port: int  # the implicit frontend's listening port
    pasv_ports: tuple[int, int]
    config: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    signals_sent: list[int] = field(default_factory=list)
    # The test stopped it with its own signals and checked the exit itself.
    stopped_by_test: bool = False
    # Every frontend's listening port by section name ("fe" is the implicit one, `port`).
    frontends: dict[str, int] = field(default_factory=dict)
    # Ports the factory allocated for it, given back when it is stopped.
    allocated: list[int] = field(default_factory=list)

    live: ClassVar[set["Gateway"]] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fport(self, frontend: str) -> int:
        """The listening port of [frontend NAME]."""
        return self.frontends[frontend]

    def ftp_url(self, frontend: str, path: str, user: str, password: str) -> str:
        """An ftp:// URL on an explicit or plain frontend (curl --ssl-reqd: AUTH, then TLS)."""
        return f"ftp://{user}:{password}@{HOST}:{self.fport(frontend)}/{path}"

    @property
    def log(self) -> str:
        """The whole log, as text (gw.mark(0).text())."""
        return self.mark(0).text()

    def mark(self, at: int | None = None) -> "LogCursor":
        """A cursor on the log from now on (`at`: a byte offset; 0 is the log's start)."""
        if at is None:
            at = self.log_path.stat().st_size if self.log_path.exists() else 0
        return LogCursor(self.log_path, at)

    def url(self, path: str, user: str, password: str) -> str:
        return f"ftps://{user}:{password}@{HOST}:{self.port}/{path}"

    def start(self, timeout: float | None = None) -> "Gateway":
        if not GATEWAY_BIN.exists():
            raise RuntimeError(f"{GATEWAY_BIN} does not exist: run `make` first")
        if timeout is None:
            timeout = 60 if GATEWAY_WRAPPER else 15
        env = dict(os.environ)
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        out = open(self.log_path, "wb")
        self.proc = subprocess.Popen([*GATEWAY_WRAPPER, str(GATEWAY_BIN), "-c", str(self.config)],
                                     cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env=env)
        out.close()
        Gateway.live.add(self)
        try:
            for port in dict.fromkeys([self.port, *self.frontends.values()]):
                wait_listening(self.proc, port, timeout, f"ftpsgate ({self.config})",
                               self.log_path)
        except Exception:
            self.stop()
            raise
        return self

    def started(self, timeout: float = 30) -> "Gateway":
        """Wait for the `event=started` line (every worker ready: the ports listen before,
        and start-up is slow under valgrind); return the gateway."""
        self.mark(0).wait("event=started ", timeout)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def settled_fd_count(self, timeout: float = 5, quiet: float = 0.3) -> int:
        """The fd count once it has not changed for `quiet` seconds."""
        last, since = self.fd_count(), time.monotonic()
        deadline = since + timeout
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.fd_count()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return now
        return last

    def wait_fd_count(self, expected: int, timeout: float = 5) -> int:
        """Poll until the fd count is back to `expected`; return the last count seen."""
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: self.fd_count() == expected, timeout, "fd count")
        return self.fd_count()

    def stop(self) -> list[str]:
        """SIGTERM, then SIGKILL after 5 s (30 s under a wrapper); return the problems found
        (it exited early, crashed, hung, or a sanitizer reported an error)."""
        Gateway.live.discard(self)
        if self.proc is None:
            return []
        problems = []
        if self.proc.poll() is not None:
            if not (self.stopped_by_test and self.proc.returncode == 0):
                problems.append(f"ftpsgate exited by itself with status {self.proc.returncode}")
        else:
            self.signals_sent.append(signal.SIGTERM)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30 if GATEWAY_WRAPPER else 5)
            except subprocess.TimeoutExpired:
                self.signals_sent.append(signal.SIGKILL)
                problems.append("ftpsgate did not exit after SIGTERM (SIGKILL sent)")
                self.proc.kill()
                self.proc.wait(10)
        rc = self.proc.returncode
        if rc < 0 and -rc not in self.signals_sent:
            problems.append(f"ftpsgate died of signal {signal.Signals(-rc).name}")
        elif rc > 0 and not problems:
            problems.append(f"ftpsgate exited with status {rc} after SIGTERM (expected 0)")
        log = self.log
        for marker in CRASH_MARKERS:
            if marker in log:
                problems.append(f"sanitizer report in the log ({marker!r})")
        if problems:
            problems.append(f"--- {self.log_path} (tail) ---\n{log[-12000:]}")
        return problems


class GatewayFactory:
    """Starts gateways in front of a backend: gateway(backend, extra={...})."""

    def __init__(self, workdir: Path, ports: PortAllocator, cert: Path, key: Path):
        self.workdir, self.ports, self.cert, self.key = workdir, ports, cert, key
        self.instances: list[Gateway] = []

    def base_sections(self, port: int, pasv: tuple[int, int], backend_address: str):
        return {
            # control_socket off: the default path (STATE_DIR/control.sock) is one per
            # machine, and parallel tests' gateways would race for it (tests of `-s reload`
            # set their own path).
            "global": {"log_level": "debug", "idle_timeout": 120, "login_timeout": 30,
                       "control_socket": "off"},
            "tls": {"cert": self.cert, "key": self.key},
            # active_source_port 0 (any port): the default source ports 989 and 20 are one
            # per machine, and active transfers of parallel tests from them collide
            # ("address already in use" for a 4-tuple still in TIME_WAIT). The default is
            # tested in test_data_channel.py (test_default_active_source_port).
            "frontend fe": {"listen": f"{HOST}:{port}", "mode": "implicit", "backend": "be",
                            "pasv_ports": f"{pasv[0]}-{pasv[1]}", "active_source_port": 0},
            "backend be": {"address": backend_address, "tls": "none"},
        }

    def __call__(self, backend: Backend | None = None, *, backend_address: str | None = None,
                 extra: dict[str, dict[str, object]] | None = None,
                 frontends: dict[str, dict[str, object]] | None = None,
                 backend_keys: dict[str, object] | None = None,
                 data_session_reuse: str | None = None) -> Gateway:
        """Start a gateway; `extra` adds or overrides INI keys: {"global": {"k": "v"}}.

        `frontends` adds frontends next to the implicit "fe": {"x": frontend("explicit",
        allow_ccc=True), "p": frontend("plain")}; each gets its own listening port
        (gw.fport("x")), backend "be" and fe's passive range unless its keys say otherwise.
        `backend_keys` goes into [backend be] (see backend_tls()), `data_session_reuse`
        (required | optional) into [tls]."""
        if backend_address is None:
            backend_address = backend.address
        self.workdir.mkdir(parents=True, exist_ok=True)
        n = len(self.instances) + 1
        name = f"gw{n}-{backend.name if backend else 'custom'}"
        port = self.ports.port()
        pasv = self.ports.range(40)  # enough for 20 parallel sessions and their TIME_WAITs
        sections = self.base_sections(port, pasv, backend_address)
        fports = {"fe": port}
        allocated = [port, *range(pasv[0], pasv[1] + 1)]
        for fname, keys in (frontends or {}).items():
            section = dict(keys)
            if "listen" not in section:
                fports[fname] = self.ports.port()
                allocated.append(fports[fname])
                section["listen"] = f"{HOST}:{fports[fname]}"
            else:
                fports[fname] = int(str(section["listen"]).rsplit(":", 1)[1])
            section.setdefault("backend", "be")
            section.setdefault("pasv_ports", f"{pasv[0]}-{pasv[1]}")
            section.setdefault("active_source_port", 0)  # as on fe
            sections[f"frontend {fname}"] = section
        if backend_keys:
            sections["backend be"].update(backend_keys)
        if data_session_reuse is not None:
            sections["tls"]["data_session_reuse"] = data_session_reuse
        sections = merge_sections(sections, extra)
        # No health probes unless a test asks for them (test_health.py): a probe every 10 s
        # (the default) would add connections to backend counts and logs, descriptors to
        # the leak check, and scripted fake backends would answer a probe instead of a
        # session.
        for section, keys in sections.items():
            if section.startswith("backend "):
                keys.setdefault("health_interval", 0)
        config = self.workdir / f"{name}.ini"
        config.write_text(render_ini(sections))
        gw = Gateway(name, port, pasv, config, self.workdir / f"{name}.log", frontends=fports,
                     allocated=allocated)
        self.instances.append(gw)
        return gw.start()

    def close_all(self) -> list[str]:
        problems = []
        for gw in self.instances:
            found = gw.stop()
            if found:
                problems.append(f"{gw.name}: " + "\n".join(found))
            elif gw.proc is not None and gw.proc.poll() is not None:
                self.ports.release(gw.allocated)
        self.instances.clear()
        return problems


# ---------------------------------------------------------------------------------------
# Clients


CURL_BASE = ["curl", "-sS", "--globoff", "--ssl-reqd", "-k", "--ftp-pasv", "--max-time", "120"]


def curl(*args, timeout: float = 150) -> subprocess.CompletedProcess:
    return run([*CURL_BASE, *args], timeout=timeout)


def lftp(url: str, user: str, password: str, commands: Iterable[str],
         timeout: float = 150, settings: Iterable[str] = ()) -> subprocess.CompletedProcess:
    """Run lftp commands on an implicit FTPS URL (ftps://host:port) and exit. `settings`
    are more `set ...` commands, given before `open`."""
    script = "; ".join([
        "set cmd:fail-exit yes",
        "set ssl:verify-certificate no",
        "set ftp:ssl-protect-data true",
        "set net:max-retries 1",
        "set net:timeout 30",
        "set net:reconnect-interval-base 1",
        "set xfer:clobber yes",
        *settings,
        f"open -u {user},{password} {url}",
        *commands,
    ])
    return run(["lftp", "-c", script], timeout=timeout)


def lftp_explicit(port: int, user: str, password: str, commands: Iterable[str],
                  timeout: float = 150) -> subprocess.CompletedProcess:
    """lftp on an explicit FTPS frontend (ftp://host:port): AUTH TLS before USER, PROT P."""
    return lftp(f"ftp://{HOST}:{port}", user, password, commands, timeout,
                settings=["set ftp:ssl-force true", "set ftp:ssl-protect-data true",
                          "set ftp:ssl-allow true"])


class ImplicitFTPS(ftplib.FTP_TLS):
    """ftplib has no implicit FTPS: wrap the socket before reading the greeting, and resume
    the control connection's TLS session on data connections (vsftpd and the gateway
    require it)."""

    def connect(self, host="", port=0, timeout=-999, source_address=None):
        if host:
            self.host = host
        if port:
            self.port = port
        if timeout != -999:
            self.timeout = timeout
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.af = raw.family
        self.sock = self.context.wrap_socket(raw, server_hostname=self.host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


class ExplicitFTPS(ftplib.FTP_TLS):
    """Explicit FTPS (AUTH TLS) that resumes the control connection's TLS session on data
    connections (stock FTP_TLS does not: under data_session_reuse = required its transfers
    get 522)."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


@contextlib.contextmanager
def ftplib_explicit_session(port: int, user: str, password: str, ctx: ssl.SSLContext,
                            timeout: float = 30, reuse: bool = True):
    """A logged-in explicit FTPS ftplib session (AUTH TLS, PBSZ 0, PROT P); reuse=False
    uses the stock FTP_TLS, which does not resume the session on data connections."""
    ftp = (ExplicitFTPS if reuse else ftplib.FTP_TLS)(context=ctx, timeout=timeout)
    ftp.connect(HOST, port)
    try:
        ftp.auth()
        ftp.login(user, password)
        ftp.prot_p()
        yield ftp
        ftp.quit()
    finally:
        ftp.close()


def client_context(cafile: Path) -> ssl.SSLContext:
    """A client TLS context that trusts exactly the gateway's test certificate."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@contextlib.contextmanager
def ftplib_session(port: int, user: str, password: str, ctx: ssl.SSLContext,
                   timeout: float = 30):
    """A logged-in implicit FTPS ftplib session with PBSZ 0 / PROT P done."""
    ftp = ImplicitFTPS(context=ctx, timeout=timeout)
    ftp.connect(HOST, port)
    try:
        ftp.login(user, password)
        ftp.prot_p()
        yield ftp
        ftp.quit()
    finally:
        ftp.close()


def ftplib_download(ftp: ftplib.FTP, name: str, dest: Path, rest: int | None = None):
    with open(dest, "ab" if rest else "wb") as f:
        ftp.retrbinary(f"RETR {name}", f.write, rest=rest)


def ftplib_upload(ftp: ftplib.FTP, src: Path, name: str):
    with open(src, "rb") as f:
        ftp.storbinary(f"STOR {name}", f)


# ---------------------------------------------------------------------------------------
# Raw control connections, for byte-exact checks


REPLY_END = re.compile(rb"^(\d{3}) ")


class Control:
    """A control connection read and written byte by byte: send raw bytes, read whole
    replies (multi-line aware)."""

    def __init__(self, sock: socket.socket, timeout: float = 10):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = b""

    @classmethod
    def implicit(cls, port: int, ctx: ssl.SSLContext, timeout: float = 10) -> "Control":
        raw = socket.create_connection((HOST, port), timeout=timeout)
        return cls(ctx.wrap_socket(raw, server_hostname="localhost"), timeout)

    @classmethod
    def plain(cls, port: int, timeout: float = 10) -> "Control":
        """A control connection in clear (explicit or plain frontends); nothing read yet."""
        return cls(socket.create_connection((HOST, port), timeout=timeout), timeout)

    @classmethod
    def explicit(cls, port: int, ctx: ssl.SSLContext, timeout: float = 10,
                 mechanism: str = "TLS") -> "Control":
        """Greeting, AUTH <mechanism> (234), TLS handshake: ready for USER inside TLS."""
        c = cls.plain(port, timeout)
        try:
            code, text = c.reply()
            assert code == 220, text
            code, text = c.cmd(f"AUTH {mechanism}")
            assert code == 234, text
            c.starttls(ctx)
        except BaseException:
            c.close()
            raise
        return c

    def starttls(self, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> None:
        """TLS handshake on the connection as it is (after 234, or after REIN on an
        implicit frontend)."""
        assert not self.buf, f"clear bytes left before the handshake: {self.buf[:200]!r}"
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost", session=session)

    def unwrap(self) -> None:
        """Answer the peer's close_notify with ours and go on in clear (CCC, REIN)."""
        assert not self.buf, f"protected bytes left after close_notify: {self.buf[:200]!r}"
        tls = self.sock.unwrap()
        family, timeout = tls.family, tls.gettimeout()
        self.sock = socket.socket(family, socket.SOCK_STREAM, fileno=tls.detach())
        self.sock.settimeout(timeout)

    @property
    def tls(self) -> bool:
        return isinstance(self.sock, ssl.SSLSocket)

    @property
    def session(self) -> ssl.SSLSession | None:
        return self.sock.session

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; unfinished line {self.buf[:200]!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, str]:
        """(code, text of all lines)."""
        first = self.line()
        assert re.match(rb"^\d{3}[ -]", first), f"not a reply line: {first[:200]!r}"
        lines = [first]
        if first[3:4] == b"-":
            end = first[:3] + b" "
            while not lines[-1].startswith(end):
                lines.append(self.line())
        return int(first[:3]), "\r\n".join(x.decode(errors="replace") for x in lines)

    def cmd(self, line: str) -> tuple[int, str]:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def login(self, user: str, password: str) -> None:
        code, text = self.cmd(f"USER {user}")
        assert code == 331, text
        code, text = self.cmd(f"PASS {password}")
        assert code == 230, text

    def closed_by_peer(self, timeout: float = 10) -> bool:
        """True when the peer ends the connection (close_notify, FIN or reset) without
        sending anything more first."""
        self.sock.settimeout(timeout)
        try:
            extra = self.buf + self.sock.recv(65536)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError,
                BrokenPipeError):
            return not self.buf
        except (socket.timeout, TimeoutError):
            return False
        return extra == b""

    def gets_421_then_close(self) -> bytes:
        """The fault skeleton's end: the next line is a 421, then the gateway closes the
        connection. Returns the line."""
        first = self.line()
        assert first.startswith(b"421 "), f"the client got {first[:100]!r}"
        assert self.closed_by_peer(), "the connection stayed open after 421"
        return first

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def parse_227(text: str) -> tuple[str, int]:
    """(host, port) from a 227 reply (six numbers, parentheses optional)."""
    nums = re.findall(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", text)
    assert nums, f"no address in {text!r}"
    h1, h2, h3, h4, p1, p2 = map(int, nums[0])
    return f"{h1}.{h2}.{h3}.{h4}", p1 * 256 + p2


def parse_229(text: str) -> int:
    """The port of a 229 reply: (|||port|)."""
    m = re.search(r"\((.)\1\1(\d+)\1\)", text)
    assert m, f"no port in {text!r}"
    return int(m.group(2))


def raw_transfer(ctl: Control, command: str, ctx: ssl.SSLContext | None,
                 upload: bytes | None = None, session: ssl.SSLSession | None = None,
                 timeout: float = 20) -> tuple[bytes, tuple[int, str]]:
    """PASV, connect, `command` (LIST, RETR x, STOR x), TLS on the data connection when ctx
    is given (resuming `session`, by default the control connection's), send `upload` or
    read until the end; return (bytes read, final reply). Asserts 227 and 125/150."""
    code, text = ctl.cmd("PASV")
    assert code == 227, text
    host, port = parse_227(text)
    data = socket.create_connection((host, port), timeout=timeout)
    try:
        code, text = ctl.cmd(command)
        assert code in (125, 150), text
        if ctx is not None:
            data = ctx.wrap_socket(data, server_hostname="localhost",
                                   session=session if session is not None else ctl.session)
        got = b""
        if upload is not None:
            data.sendall(upload)
            if isinstance(data, ssl.SSLSocket):
                data = data.unwrap()
            data.shutdown(socket.SHUT_WR)
            recv_until_closed(data, timeout)
        else:
            got, _ = recv_until_closed(data, timeout)
    finally:
        data.close()
    return got, ctl.reply()


def recv_until_closed(sock: socket.socket, timeout: float = 10) -> tuple[bytes, str]:
    """Read until the peer closes; return (bytes received, how it ended: "eof", "reset",
    or "timeout")."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, "reset"
        except (socket.timeout, TimeoutError):
            return data, "timeout"
        if not chunk:
            return data, "eof"
        data += chunk
    return data, "timeout"


def unused_dir(prefix: str) -> Path:
    """A fresh world-traversable directory under /tmp (pytest's tmp dirs are 0700, and
    vsftpd's sessions run as the test user)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, 0o755)
    return d
