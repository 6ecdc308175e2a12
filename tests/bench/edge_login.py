#!/usr/bin/python3
"""Login latency added by `auth = ldap` (cache cold and warm) against `auth = backend`.

One gateway (build/ftpsgate) with three implicit frontends in front of one plain vsftpd
and one slapd (the integration tests' set-up: tests/integration/test_edge_ldap.py):
`fe` (auth = backend: the backend checks), `cold` (auth = ldap, auth_cache_ttl = 0: every
login binds), `tls-cold` (the same over ldaps:// with ldap_ca_file: a TLS handshake to
slapd per login) and `warm` (auth = ldap, the default cache: one bind, then the cache).
Each login is a fresh implicit FTPS connection: TLS handshake, USER, PASS (timed from
PASS sent to the 230), QUIT; the total is connect to 230. The logins alternate between
the frontends, so load on the shared machine blurs them alike. Run as root:

    /usr/bin/python3 tests/bench/edge_login.py [--n 40]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import peers  # noqa: E402
from peers import Control, GatewayFactory  # noqa: E402
from test_edge_ldap import PEOPLE, ldap_keys, start_slapd  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40, help="logins per frontend")
    args = ap.parse_args()
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
        gw = factory(vs, extra={"global": {"log_level": "info", "max_sessions_per_ip": 1000}},
                     frontends={"cold": {"mode": "implicit",
                                         **ldap_keys(slapd.uri, user_map=umap,
                                                     auth_cache_ttl=0)},
                                "tls-cold": {"mode": "implicit",
                                             **ldap_keys(slapd.ldaps_uri, user_map=umap,
                                                         ldap_ca_file=lcert,
                                                         auth_cache_ttl=0)},
                                "warm": {"mode": "implicit",
                                         **ldap_keys(slapd.uri, user_map=umap)}})
        ctx = peers.client_context(cert)
        cases = [("auth = backend", gw.port, sysuser), ("auth = ldap, cache cold",
                                                        gw.fport("cold"), "alice"),
                 ("auth = ldap over ldaps://, cache cold", gw.fport("tls-cold"), "alice"),
                 ("auth = ldap, cache warm", gw.fport("warm"), "alice")]
        for _, port, user in cases:  # warm-up (and the warm frontend's one bind)
            login(port, ctx, user, password)
        binds0 = slapd.binds(f"uid=alice,{PEOPLE}")
        res: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in cases}
        for _ in range(args.n):
            for name, port, user in cases:
                res[name].append(login(port, ctx, user, password))
        binds = slapd.binds(f"uid=alice,{PEOPLE}") - binds0
        base = statistics.median(p for p, _ in res["auth = backend"])
        print(f"{args.n} logins per frontend, alternating; medians (p90) in ms; "
              f"slapd saw {binds} binds of alice during the run")
        print("| frontend | PASS -> 230 | connect -> 230 | PASS vs auth = backend |")
        print("|---|---:|---:|---:|")
        for name, _, _ in cases:
            p = sorted(x for x, _ in res[name])
            t = sorted(y for _, y in res[name])
            p90 = lambda v: v[int(0.9 * (len(v) - 1))]  # noqa: E731
            print(f"| {name} | {statistics.median(p) * 1e3:.1f} ({p90(p) * 1e3:.1f}) | "
                  f"{statistics.median(t) * 1e3:.1f} ({p90(t) * 1e3:.1f}) | "
                  f"{statistics.median(p) / base:.2f} × |")
    finally:
        factory.close_all()
        slapd.stop()
        vs.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
