#!/usr/bin/python3
"""What authenticating at the gateway costs: login latency and sessions/s of `auth = file`
(yescrypt, bcrypt, sha512-crypt) and `auth = ldap` (cache cold and warm) against
`auth = backend`.

One gateway (build/ftpsgate) with seven implicit frontends in front of one plain vsftpd and
one slapd (the integration tests' set-ups: tests/integration/test_edge_auth.py and
test_edge_ldap.py):

- `fe`: auth = backend (vsftpd's PAM checks the password);
- `file-yescrypt`, `file-bcrypt`, `file-sha512`: auth = file, a users file with the test
  user's password hashed by `mkpasswd -m METHOD` at its default cost (yescrypt `$y$j9T$`,
  bcrypt `$2b$05$`, sha512-crypt 5000 rounds); the backend then gets the same name and
  password;
- `cold`: auth = ldap, auth_cache_ttl = 0 (every login binds), `tls-cold`: the same over
  ldaps:// with ldap_ca_file (a TLS handshake to slapd per login), `warm`: auth = ldap with
  auth_cache_ttl = 3600 (one bind, then the cache for the whole run).

Two measurements, both alternating between the frontends so that load on the shared machine
blurs them alike:

1. latency: fresh implicit FTPS connections, one at a time, the frontends in turn: TLS
   handshake, USER, PASS (timed from PASS sent to the 230), QUIT; the total is connect
   to 230;
2. sessions/s: `--threads` client threads per frontend, each doing connect, TLS, 220,
   USER, PASS, QUIT back to back for `--seconds`; `--rounds` rounds, each measuring every
   frontend once in an order rotated by the round. Sessions that did not get 230 are
   counted as refused and are not in the rate (the run recorded in RESULTS.md was before
   LDAP binds queued like PAM's: then a login past 3 binds at once got 421 reason=busy).

Run as root:

    /usr/bin/python3 tests/bench/edge_login.py [--n 40] [--threads 8] [--seconds 3]
                                               [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import peers  # noqa: E402
from peers import Control, GatewayFactory  # noqa: E402
from test_edge_auth import mkpasswd, users_file  # noqa: E402
from test_edge_ldap import PEOPLE, ldap_keys, start_slapd  # noqa: E402

BASE = "auth = backend"
HASHES = [("yescrypt", "yescrypt"), ("bcrypt", "bcrypt"), ("sha512", "sha512crypt")]


def hash_default(method: str, password: str) -> str:
    """mkpasswd at its default cost (the tests' helper lowers bcrypt's)."""
    if method != "bcrypt":
        return mkpasswd(method, password)
    res = subprocess.run(["mkpasswd", "-m", "bcrypt", "--stdin"], input=password,
                         capture_output=True, text=True, timeout=30, check=True)
    assert res.stdout.startswith("$2b$"), res.stdout
    return res.stdout.strip()


def crypt_cpu_ms(password: str, hashed: str, reps: int = 5) -> float:
    """CPU ms of one crypt(3) check of `hashed` in this process (libcrypt, as the gateway's
    crypt_r): what the hash alone costs, median of `reps`."""
    lib = ctypes.CDLL("libcrypt.so.1")
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    times = []
    for _ in range(reps):
        t = time.process_time()
        out = lib.crypt(password.encode(), hashed.encode())
        times.append(time.process_time() - t)
        assert out == hashed.encode(), "crypt(3) does not reproduce the hash"
    return statistics.median(times) * 1e3


def login(port: int, ctx, user: str, password: str) -> tuple[float, float]:
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
        return t2 - t1, t2 - t0
    finally:
        c.close()


def one_session(port: int, ctx, user: str, password: str) -> int:
    """One full session; the PASS reply code (0: the connection failed)."""
    try:
        c = Control.implicit(port, ctx, timeout=30)
    except OSError:
        return 0
    try:
        if c.reply()[0] != 220:
            return 0
        code = c.cmd(f"USER {user}")[0]
        if code != 331:
            return code
        code = c.cmd(f"PASS {password}")[0]
        if code == 230:
            c.cmd("QUIT")
        return code
    except (OSError, EOFError, ValueError):
        return 0
    finally:
        c.close()


def sessions(port: int, ctx, user: str, password: str, threads: int,
             seconds: float) -> tuple[float, int, Counter]:
    """(sessions/s, sessions with 230, the other outcomes by PASS code)."""
    codes: Counter = Counter()
    lock = threading.Lock()
    start = threading.Barrier(threads + 1)
    deadline = [0.0]

    def run() -> None:
        mine: Counter = Counter()
        start.wait()
        while time.perf_counter() < deadline[0]:
            mine[one_session(port, ctx, user, password)] += 1
        with lock:
            codes.update(mine)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0  # includes the last sessions' overrun
    ok = codes.pop(230, 0)
    return ok / elapsed, ok, codes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40, help="timed logins per frontend")
    ap.add_argument("--threads", type=int, default=8, help="concurrent clients (sessions/s)")
    ap.add_argument("--seconds", type=float, default=3.0, help="per frontend and round")
    ap.add_argument("--rounds", type=int, default=3, help="sessions/s rounds (medians)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: --n 8 --seconds 1 --rounds 1")
    args = ap.parse_args()
    if args.quick:
        args.n, args.seconds, args.rounds = 8, 1.0, 1
    if os.geteuid() != 0:
        sys.exit("edge_login.py: run as root (vsftpd, slapd, the test user)")
    if not (REPO / "build" / "ftpsgate").exists():
        sys.exit("edge_login.py: build/ftpsgate missing: make all")
    work = peers.unused_dir("ftpsgate-bench-login-")
    ports = peers.PortAllocator()
    sysuser, password = peers.ensure_test_user()
    (work / "tls").mkdir()
    cert, key = peers.make_cert(work / "tls")
    (work / "tls-ldap").mkdir()
    lcert, lkey = peers.make_cert(work / "tls-ldap", "slapd")
    vs = peers.start_vsftpd(work / "vsftpd", ports, sysuser, password)
    slapd = start_slapd(work / "slapd", ports, lcert, lkey, password)
    umap = work / "map"
    umap.write_text(f"@ftp-rw be:{sysuser}\n")
    factory = GatewayFactory(work, ports, cert, key)
    try:
        fes: dict[str, dict] = {}
        cost: dict[str, float] = {}
        for fe, method in HASHES:
            hashed = hash_default(method, password)
            cost[fe] = crypt_cpu_ms(password, hashed)
            users = users_file(work / f"users-{fe}", [f"{sysuser}:{hashed}"])
            fes[f"file-{fe}"] = {"mode": "implicit", "auth": "file", "auth_file": users}
        fes["cold"] = {"mode": "implicit", **ldap_keys(slapd.uri, user_map=umap, auth_cache_ttl=0)}
        fes["tls-cold"] = {"mode": "implicit",
                           **ldap_keys(slapd.ldaps_uri, user_map=umap, ldap_ca_file=lcert,
                                       auth_cache_ttl=0)}
        fes["warm"] = {"mode": "implicit",
                       **ldap_keys(slapd.uri, user_map=umap, auth_cache_ttl=3600)}
        gw = factory(vs, extra={"global": {"log_level": "info", "max_sessions_per_ip": 1000}},
                     frontends=fes)
        ctx = peers.client_context(cert)
        cases = [(BASE, gw.port, sysuser),
                 ("auth = file, yescrypt", gw.fport("file-yescrypt"), sysuser),
                 ("auth = file, bcrypt", gw.fport("file-bcrypt"), sysuser),
                 ("auth = file, sha512-crypt", gw.fport("file-sha512"), sysuser),
                 ("auth = ldap, cache cold", gw.fport("cold"), "alice"),
                 ("auth = ldap over ldaps://, cache cold", gw.fport("tls-cold"), "alice"),
                 ("auth = ldap, cache warm", gw.fport("warm"), "alice")]
        cold = {"auth = ldap, cache cold", "auth = ldap over ldaps://, cache cold"}
        for _, port, user in cases:  # warm-up (and the warm frontend's one bind)
            login(port, ctx, user, password)
        binds0 = slapd.binds(f"uid=alice,{PEOPLE}")
        lat: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in cases}
        for _ in range(args.n):
            for name, port, user in cases:
                lat[name].append(login(port, ctx, user, password))
        rate: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        refused: dict[str, Counter] = {name: Counter() for name, _, _ in cases}
        cold_checks = len(cold) * args.n
        for r in range(args.rounds):
            for name, port, user in cases[r % len(cases):] + cases[:r % len(cases)]:
                per_s, ok, other = sessions(port, ctx, user, password, args.threads, args.seconds)
                rate[name].append(per_s)
                refused[name].update(other)
                if name in cold:
                    cold_checks += ok
        binds = slapd.binds(f"uid=alice,{PEOPLE}") - binds0
        report(args, cases, lat, rate, refused, binds, cold_checks)
        print("crypt(3) alone, CPU ms per check (this process, median of 5): "
              + ", ".join(f"{fe} {ms:.1f}" for fe, ms in cost.items()))
    finally:
        factory.close_all()
        slapd.stop()
        vs.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(args, cases, lat, rate, refused, binds: int, cold_checks: int) -> None:
    p90 = lambda v: v[int(0.9 * (len(v) - 1))]  # noqa: E731
    base_p = statistics.median(p for p, _ in lat[BASE])
    base_t = statistics.median(t for _, t in lat[BASE])
    base_r = statistics.median(rate[BASE])
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{args.n} timed logins per frontend, alternating; {args.rounds} round(s) of "
          f"{args.threads} clients x {args.seconds:g} s per frontend for sessions/s; "
          f"load average at the end {load}")
    print(f"slapd: {binds} binds of alice during the run, {cold_checks} of them by the "
          f"cache-cold frontends' successful logins, so {binds - cold_checks} by the warm one")
    print()
    print("| frontend | PASS -> 230, ms | connect -> 230, ms | PASS ÷ backend | "
          "total ÷ backend | sessions/s | sessions/s ÷ backend | not 230 |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, _, _ in cases:
        p = sorted(x for x, _ in lat[name])
        t = sorted(y for _, y in lat[name])
        r = statistics.median(rate[name])
        bad = ", ".join(f"{n} × {code or 'no reply'}" for code, n in sorted(refused[name].items()))
        print(f"| {name} | {statistics.median(p) * 1e3:.1f} ({p90(p) * 1e3:.1f}) | "
              f"{statistics.median(t) * 1e3:.1f} ({p90(t) * 1e3:.1f}) | "
              f"{statistics.median(p) / base_p:.2f} | {statistics.median(t) / base_t:.2f} | "
              f"{r:.1f} | {r / base_r:.2f} | {bad or '0'} |")
    print()
    print("latency: medians (p90); sessions/s: median of the rounds; every round, sessions/s:")
    for name, _, _ in cases:
        print(f"  {name}: " + " ".join(f"{x:.1f}" for x in rate[name]))


if __name__ == "__main__":
    main()
