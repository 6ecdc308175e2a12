"""Fixtures for the integration tests: real backends on loopback, the gateway in front of
them, TLS material and random files. Run as root with /usr/bin/python3 (`make integration`).

Scopes keep the suite fast: the test user, the certificate and both backends live for the
whole session; `gw` (one gateway in front of `backend`) lives for a module and backend;
`gateway` starts extra gateways that are stopped at the end of the test, `module_gateway`
at the end of the module. `vsftpd_ftps` and `vsftpd_implicit` are vsftpd doing FTPS itself
(explicit and implicit) with `backend_cert`, for the gateway's backend TLS leg.

`scratch` is a client-side directory for one test; `three` is three pyftpdlib backends for
balancing and routing (a module's); `fake_ftp(plan, ...)` starts a fake backend
(fakeftp.FakeFTP: each connection plays a plan, see that module) stopped at the end of the
test.

The gateway's log: `cur = gw.mark()` before acting, then `cur.wait(regex, timeout=10)`
(the re.Match of the first line matching; `n=3` for the third; a timeout fails the test with
the log's tail), `cur.grep(regex)`, `cur.count(regex)`, `cur.lines()`, `cur.text()` for what
came since the mark, `cur.sid(client_port)`, `cur.session(sid)`, `cur.ended(sid)` for one
session. `gw.mark(0)` reads from the log's start; `gw.log` is the whole log as text
(peers.LogCursor); `gw.started()` waits for the `event=started` line (every worker ready).

Parallel runs (pytest-xdist, `make integration`): each worker is a session of its own (its
own backends, work directory and slice of ports, peers.PortAllocator). A test marked
`@pytest.mark.serial` runs alone (load, CPU-spread and timing tests): `make integration`
runs them in a second pytest after the parallel part; in any other xdist run a serial test
waits until the tests running on other workers end, and none starts until it is done.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
import time

import pytest

import peers
from fakeftp import FakeFTP
from peers import Gateway, GatewayFactory


def fd_targets(pid: int) -> list[str]:
    """Each open descriptor with what it points at (socket:[inode], a path), for diagnosis."""
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            out.append(f"{fd}->{os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except OSError:
            out.append(fd)
    return out


@pytest.fixture(scope="session")
def workdir(request):
    """Scratch space for the session, world-traversable (vsftpd sessions run as the test
    user). Kept when a test failed, so logs and configs can be read afterwards."""
    d = peers.unused_dir("ftpsgate-it-")
    yield d
    if request.session.testsfailed:
        print(f"\nintegration work directory kept: {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def ports():
    return peers.PortAllocator()


@pytest.fixture(scope="session")
def test_user():
    """(user, password) of the system user that vsftpd logs in; pyftpdlib uses the same."""
    return peers.ensure_test_user()


@pytest.fixture(scope="session")
def tls_cert(workdir):
    """(cert, key) of the gateway: self-signed EC P-256, CN=localhost."""
    d = workdir / "tls"
    d.mkdir()
    return peers.make_cert(d)


@pytest.fixture
def client_ctx(tls_cert):
    """Client TLS context trusting only the gateway's test certificate; one per test, so
    that a test which lowers its maximum_version or sets options cannot carry them into
    the next tests of its worker (a session-wide one once did)."""
    return peers.client_context(tls_cert[0])


@pytest.fixture(scope="session")
def blobs(workdir):
    return peers.Blobs(workdir / "blobs")


# The passive ports of the session-wide vsftpd backends: test_upgrade_under_load starts 30
# transfers on one at once, and vsftpd gives up after 9 random picks that are taken
# (start_vsftpd).
SHARED_VSFTPD_PASV_PORTS = 200


@pytest.fixture(scope="session")
def vsftpd(workdir, ports, test_user):
    backend = peers.start_vsftpd(workdir / "vsftpd", ports, *test_user,
                                 pasv_ports=SHARED_VSFTPD_PASV_PORTS)
    yield backend
    backend.stop()


@pytest.fixture(scope="session")
def backend_cert(workdir):
    """(cert, key) of the FTPS backends: self-signed, CN=localhost, SAN DNS:localhost and
    IP:127.0.0.1, distinct from the gateway's (so each is a wrong ca_file for the other)."""
    d = workdir / "tls-backend"
    d.mkdir()
    return peers.make_cert(d, "vsftpd")


@pytest.fixture(scope="session")
def vsftpd_ftps(workdir, ports, test_user, backend_cert):
    """vsftpd doing explicit FTPS itself: require_ssl_reuse, forced TLS logins and data,
    TLS 1.2 and 1.3 (its defaults). Same user and files layout as `vsftpd`."""
    backend = peers.start_vsftpd(workdir / "vsftpd-ftps", ports, *test_user,
                                 tls=peers.VsftpdTLS(*backend_cert),
                                 pasv_ports=SHARED_VSFTPD_PASV_PORTS)
    yield backend
    backend.stop()


@pytest.fixture(scope="session")
def vsftpd_implicit(workdir, ports, test_user, backend_cert):
    """vsftpd with implicit_ssl=YES (TLS from the first byte), otherwise like vsftpd_ftps."""
    backend = peers.start_vsftpd(workdir / "vsftpd-implicit", ports, *test_user,
                                 tls=peers.VsftpdTLS(*backend_cert, implicit=True),
                                 pasv_ports=SHARED_VSFTPD_PASV_PORTS)
    yield backend
    backend.stop()


@pytest.fixture(scope="session")
def pyftpdlib(workdir, ports, test_user):
    backend = peers.start_pyftpdlib(workdir / "pyftpdlib", ports, *test_user)
    yield backend
    backend.stop()


@pytest.fixture(scope="session")
def pure_ftpd(workdir, ports, test_user):
    """pure-ftpd, plain, unpacked by .ci/pure-ftpd.sh (it conflicts with vsftpd in apt);
    tests using it skip where it is absent."""
    if not peers.pure_ftpd_available():
        pytest.skip(f"pure-ftpd not unpacked in {peers.PURE_FTPD_DIR} (.ci/pure-ftpd.sh)")
    backend = peers.start_pure_ftpd(workdir / "pure-ftpd", ports, *test_user)
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def three(request, workdir, ports, test_user):
    """Three pyftpdlib backends for balancing and routing ("be", "b", "c"), told apart by
    the size of their file `marker` (1, 2, 3 bytes)."""
    backends = []
    for i, name in enumerate(["be", "b", "c"], 1):
        be = peers.start_pyftpdlib(workdir / f"{request.module.__name__}-{name}", ports,
                                   *test_user)
        (be.root / "marker").write_bytes(b"x" * i)
        backends.append(be)
    yield backends
    for be in backends:
        be.stop()


@pytest.fixture(scope="module", params=["vsftpd", "pyftpdlib"])
def backend(request) -> peers.Backend:
    """Each backend in turn (tests using it run once per backend)."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def scratch(workdir, request):
    """The client's local directory for one test (downloads, big files), removed after it."""
    name = f"{request.module.__name__}-{request.node.name}"
    d = workdir / "client" / re.sub(r"[^\w.-]", "_", name)
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fake_ftp():
    """Factory: fake_ftp(plan, **kw) starts a fakeftp.FakeFTP (a fake backend, each of its
    connections playing `plan`), closed at the end of the test."""
    made: list[FakeFTP] = []

    def make(*args, **kw) -> FakeFTP:
        made.append(FakeFTP(*args, **kw))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


def _factory(workdir, ports, tls_cert, name):
    return GatewayFactory(workdir / "gateways" / name, ports, *tls_cert)


def _close(factory: GatewayFactory):
    problems = factory.close_all()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def gateway(request, workdir, ports, tls_cert):
    """Factory: gateway(backend) or gateway(backend_address="127.0.0.1:PORT",
    extra={"global": {"key": "value"}}) starts build/ftpsgate and returns a peers.Gateway
    (port, pid, log, fd_count()...). Stopped at the end of the test; a crash fails it."""
    factory = _factory(workdir, ports, tls_cert, re.sub(r"[^\w.-]", "_", request.node.name))
    yield factory
    _close(factory)


@pytest.fixture(scope="module")
def module_gateway(request, workdir, ports, tls_cert):
    """Like `gateway`, for gateways shared by the tests of a module (module fixtures)."""
    factory = _factory(workdir, ports, tls_cert,
                       "module-" + re.sub(r"[^\w.-]", "_", request.node.name))
    yield factory
    _close(factory)


@pytest.fixture(scope="module")
def gw(request, backend, workdir, ports, tls_cert) -> Gateway:
    """One gateway in front of `backend`, shared by the tests of a module."""
    factory = _factory(workdir, ports, tls_cert,
                       f"{request.module.__name__}-{backend.name}")
    yield factory(backend)
    _close(factory)


# ---------------------------------------------------------------------------------------
# `serial` tests run alone under pytest-xdist: a readers-writer lock over the run's workers
# (flock on files the controller creates). Every other test holds it shared; a serial one
# exclusive. The gate keeps a waiting serial test from being starved by shared holders.

_LOCK_DIR_KEY = "ftpsgate_lock_dir"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "serial: run alone, with no other test of a parallel (xdist) run at the "
                   "same time: load, timing and SO_REUSEPORT spread tests")
    config.addinivalue_line(
        "markers", "measure: a measurement printed for tests/bench/RESULTS.md, not a check "
                   "(`make test` leaves it out; `make bench-edge` and `make bench-upgrade` run them)")
    if not hasattr(config, "workerinput"):  # the controller, or a run without xdist
        config._ftpsgate_lock_dir = tempfile.mkdtemp(prefix="ftpsgate-it-lock-")


def pytest_unconfigure(config):
    d = getattr(config, "_ftpsgate_lock_dir", None)
    if d:
        shutil.rmtree(d, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):  # xdist: the controller hands the lock to each worker
    node.workerinput[_LOCK_DIR_KEY] = node.config._ftpsgate_lock_dir


@pytest.fixture(autouse=True)
def _run_alone_if_serial(request):
    d = getattr(request.config, "workerinput", {}).get(_LOCK_DIR_KEY)
    if not d:  # not under xdist: tests run one at a time anyway
        yield
        return
    serial = request.node.get_closest_marker("serial") is not None
    with open(os.path.join(d, "gate"), "a") as gate, open(os.path.join(d, "rw"), "a") as rw:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(rw, fcntl.LOCK_EX if serial else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        yield  # the lock goes with the files' closing


# ---------------------------------------------------------------------------------------
# Attach the gateway's log (what it wrote during the test) to every failure.

_LOG_MARKS = pytest.StashKey[dict]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    item.stash[_LOG_MARKS] = {g: g.mark() for g in Gateway.live}
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed or report.when == "teardown":
        return  # a teardown failure carries the log in its message
    marks = item.stash.get(_LOG_MARKS, {})
    for g in sorted(Gateway.live, key=lambda g: g.name):
        report.sections.append((f"ftpsgate log {g.name} ({g.log_path})",
                                marks.get(g, g.mark(0)).tail()))
    funcargs = item.funcargs if hasattr(item, "funcargs") else {}
    backends = {id(b): b for b in funcargs.values() if isinstance(b, peers.Backend)}
    for backend in backends.values():  # `backend`, vsftpd_ftps, vsftpd_implicit ...
        if backend.log.exists():
            lines = backend.log.read_text(errors="replace").splitlines()[-80:]
            report.sections.append((f"{backend.name} log (tail)", "\n".join(lines)))


# ---------------------------------------------------------------------------------------
# No test may leave descriptors behind in a gateway that outlives it (issue: "descriptor
# counts before and after each integration test are equal").

FD_SETTLE_SECONDS = 6  # lingering data legs close at the peer's FIN, or after 5 s


@pytest.fixture(autouse=True)
def no_descriptor_leak(request):
    before = {}
    for g in list(Gateway.live):
        if g.proc is not None and g.proc.poll() is None:
            try:
                before[g] = g.fd_count()
            except FileNotFoundError:
                pass
    yield
    leaks = []
    for g, count in before.items():
        deadline = time.monotonic() + FD_SETTLE_SECONDS
        while g in Gateway.live and g.proc.poll() is None:
            try:
                now = g.fd_count()
            except FileNotFoundError:
                break
            if now <= count:
                break
            if time.monotonic() > deadline:
                leaks.append(f"{g.name}: {count} descriptors before the test, {now} after "
                             f"{FD_SETTLE_SECONDS} s: {fd_targets(g.pid)}")
                break
            time.sleep(0.05)
    if leaks:
        pytest.fail("descriptor leak in a gateway:\n" + "\n".join(leaks))
