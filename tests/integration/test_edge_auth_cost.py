"""What authenticating at the edge costs a login (issue 22, "Measure"): the same vsftpd
backend behind one gateway with five implicit-FTPS frontends, auth = backend, auth = file
with a yescrypt, a sha512-crypt and a bcrypt (cost 5) users file, and auth = pam (pam_unix,
SHA-512). For each: 30 logins one after another (connect to 230, and PASS to 230 alone),
then logins per second with 4 clients for 4 s. Printed (pytest -s) for
tests/bench/RESULTS.md by `make bench-edge` (marked `measure`: `make test` leaves it out,
its 28 s ran alone and held every other test); asserted: every login succeeded, each
reached vsftpd once, none took 2.5 s or more."""

from __future__ import annotations

import statistics
import threading
import time

import pytest

import peers
from peers import Control
from test_edge_auth import mkpasswd, users_file
from test_edge_pam import pam_env  # noqa: F401 (the fixture)

SEQUENTIAL = 30
RATE_SECONDS, RATE_CLIENTS = 4.0, 4


def one_login(port: int, ctx, user: str, password: str) -> tuple[float, float]:
    """(connect to 230, PASS to 230) in seconds; QUIT after."""
    t0 = time.perf_counter()
    c = Control.implicit(port, ctx, timeout=30)
    try:
        assert c.reply()[0] == 220
        assert c.cmd(f"USER {user}")[0] == 331
        t1 = time.perf_counter()
        code, text = c.cmd(f"PASS {password}")
        t2 = time.perf_counter()
        assert code == 230, text
        c.cmd("QUIT")
    finally:
        c.close()
    return t2 - t0, t2 - t1


def rate(port: int, ctx, user: str, password: str) -> int:
    done, stop = [], time.monotonic() + RATE_SECONDS

    def client() -> None:
        n = 0
        while time.monotonic() < stop:
            one_login(port, ctx, user, password)
            n += 1
        done.append(n)

    threads = [threading.Thread(target=client) for _ in range(RATE_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(done) == RATE_CLIENTS
    return sum(done)


@pytest.mark.measure  # speed is measured, not asserted: `make bench-edge` runs it
@pytest.mark.serial  # timings: other tests' load would blur them
def test_login_cost_by_method(gateway, vsftpd, test_user, pam_env, client_ctx,  # noqa: F811
                              tmp_path):
    sysuser, password = test_user
    pam_user, pam_pw, pam_group, services = pam_env
    users = {}
    for method in ("yescrypt", "sha512crypt", "bcrypt"):
        users[method] = users_file(tmp_path / f"users-{method}", [
            f"u:{mkpasswd(method, password)}:backend_user={sysuser}"])
    pw = tmp_path / "sys.pw"
    pw.write_text(password + "\n")
    pw.chmod(0o600)
    umap = tmp_path / "map"
    umap.write_text(f"@{pam_group} be:{sysuser}:{pw}\n")
    frontends = {f"file_{m}": peers.frontend("implicit", auth="file", auth_file=users[m])
                 for m in users}
    frontends["pam"] = peers.frontend("implicit", auth="pam", pam_service=services["plain"],
                                      user_map=umap)
    gw = gateway(vsftpd, frontends=frontends,
                 extra={"global": {"log_level": "info", "max_sessions_per_ip": 1000}})
    cases = [("backend", gw.port, sysuser, password)]
    cases += [(f"file {m}", gw.fport(f"file_{m}"), "u", password) for m in users]
    cases += [("pam (pam_unix)", gw.fport("pam"), pam_user, pam_pw)]
    rows = []
    for name, port, user, pw_ in cases:
        before = vsftpd.connections()
        one_login(port, client_ctx, user, pw_)  # warm: TLS contexts, caches
        samples = [one_login(port, client_ctx, user, pw_) for _ in range(SEQUENTIAL)]
        n = rate(port, client_ctx, user, pw_)
        assert vsftpd.connections() == before + 1 + SEQUENTIAL + n, name
        whole = sorted(s[0] for s in samples)
        # no login stalls (a PAM_RHOST that modules resolved cost 5 s under concurrency)
        assert whole[-1] < 2.5, (name, whole[-5:])
        pas = sorted(s[1] for s in samples)
        rows.append((name, statistics.median(whole) * 1000, whole[int(0.9 * len(whole))] * 1000,
                     statistics.median(pas) * 1000, n / RATE_SECONDS))
    print("\n| auth | connect to 230, median | p90 | PASS to 230, median | logins/s "
          f"({RATE_CLIENTS} clients) |\n|---|---:|---:|---:|---:|")
    for name, med, p90, pas, per_s in rows:
        print(f"| {name} | {med:.1f} ms | {p90:.1f} ms | {pas:.1f} ms | {per_s:.0f} |")
