#!/usr/bin/python3
"""Relay CPU with a bandwidth limit set against none (issue 22's "relay CPU with a rate
limit set vs none"): the gateway's own CPU (utime + stime of its process, /proc/PID/stat)
per GiB relayed, vsftpd behind it, curl in front over implicit TLS (PROT P), RETR and
STOR. Cases, each repeated and alternated, medians:

  none        no limit
  unbinding   rate_down = rate_up = 10G: every read goes through the limiter, which never
              waits (the bookkeeping alone)
  binding     rate_down = rate_up = 100M: the relay waits on the buckets (reads cut to the
              256 KiB chunk, a timer per wait)
  slow        4 sessions at 1M each for 8 s: CPU seconds per second of wall time (the cost
              of many short waits; no GiB to divide by)

    /usr/bin/python3 tests/bench/rate_cpu.py [--size-mib 256] [--reps 3]

Runs as the integration tests do (root: vsftpd logs in a test user), with their helpers
(tests/integration/peers.py); build/ftpsgate must exist.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))
import peers  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def curl(*args) -> None:
    peers.check(subprocess.run(["curl", "-sS", "-k", "--ssl-reqd", "--ftp-pasv",
                                "--max-time", "300", *map(str, args)],
                               capture_output=True, text=True, timeout=330))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    size = a.size_mib * peers.MiB
    work = peers.unused_dir("ftpsgate-ratecpu-")
    ports = peers.PortAllocator()
    user, password = peers.ensure_test_user()
    vs = peers.start_vsftpd(work / "vsftpd", ports, user, password)
    cert = peers.make_cert(work)
    factory = peers.GatewayFactory(work / "gw", ports, *cert)
    blobs = peers.Blobs(work / "blobs")
    vs.put(blobs, "big.bin", size)
    src = work / "up.bin"
    blobs.copy_to(src, size)
    cases = {"none": {}, "unbinding": {"rate_down": "10G", "rate_up": "10G"},
             "binding": {"rate_down": "100M", "rate_up": "100M"}}
    gws = {name: factory(vs, extra={"frontend fe": keys}) for name, keys in cases.items()}
    res: dict[tuple[str, str], list[float]] = {}
    wall: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(a.reps):
            for name, gw in gws.items():
                for d in ("RETR", "STOR"):
                    c0, t0 = cpu_s(gw.pid), time.monotonic()
                    if d == "RETR":
                        curl("-o", "/dev/null", gw.url("big.bin", user, password))
                    else:
                        curl("-T", src, gw.url("up.bin", user, password))
                    res.setdefault((name, d), []).append(
                        (cpu_s(gw.pid) - c0) / (size / (1024 * peers.MiB)))
                    wall.setdefault((name, d), []).append(size / peers.MiB
                                                          / (time.monotonic() - t0))
        slow = factory(vs, extra={"frontend fe": {"rate_down": "1M"}})
        c0 = cpu_s(slow.pid)
        threads = [threading.Thread(target=lambda: subprocess.run(
            ["curl", "-sS", "-k", "--ssl-reqd", "--ftp-pasv", "--max-time", "8", "-o",
             "/dev/null", slow.url("big.bin", user, password)], capture_output=True))
            for _ in range(4)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        slow_cpu = (cpu_s(slow.pid) - c0) / (time.monotonic() - t0)
    finally:
        factory.close_all()
        vs.stop()
    print(f"file {a.size_mib} MiB, {a.reps} repetitions, medians; implicit TLS (PROT P), "
          f"vsftpd, curl")
    print("| case | RETR CPU s/GiB | STOR CPU s/GiB | RETR MiB/s | STOR MiB/s |")
    print("|---|---:|---:|---:|---:|")
    for name in cases:
        m = {d: statistics.median(res[(name, d)]) for d in ("RETR", "STOR")}
        w = {d: statistics.median(wall[(name, d)]) for d in ("RETR", "STOR")}
        print(f"| {name} | {m['RETR']:.3f} | {m['STOR']:.3f} | {w['RETR']:.0f} | "
              f"{w['STOR']:.0f} |")
    base = {d: statistics.median(res[("none", d)]) for d in ("RETR", "STOR")}
    for name in ("unbinding", "binding"):
        print(f"ratio {name}/none: RETR {statistics.median(res[(name, 'RETR')]) / base['RETR']:.2f}"
              f", STOR {statistics.median(res[(name, 'STOR')]) / base['STOR']:.2f}")
    print(f"slow: 4 sessions at 1 MiB/s: {slow_cpu * 100:.2f} % of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
