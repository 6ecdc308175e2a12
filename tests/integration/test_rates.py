"""Bandwidth limits (rate_down/rate_up per session, [policy] rate_* per user,
frontend_rate_* per frontend) against vsftpd with curl: the rate measured by the client over
several seconds, per transfer and in aggregate, with SHA-256 of every file; implicit TLS,
plain and spliced relays; two workers sharing a frontend's bucket; the admin endpoint's
view; the gateway's memory under a limited fast backend."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

import peers
from peers import HOST, MiB, check, run, sha256_file


@pytest.fixture(scope="module")
def backend(vsftpd):
    return vsftpd


def curl(*args, max_time: int = 60):
    """curl reporting its transfer time: the seconds from the data connection's start (after
    the login and PASV) to the end (`time_total - time_pretransfer`)."""
    return run(["curl", "-sS", "--globoff", "-k", "--ftp-pasv", "--max-time", str(max_time),
                "-w", "\n%{time_pretransfer} %{time_total}\n", *map(str, args)],
               timeout=max_time + 30)


def seconds(res) -> tuple[float, float]:
    """(start, duration) of the transfer curl reported, start relative to curl's own."""
    pre, total = map(float, res.stdout.strip().splitlines()[-1].split())
    return pre, total - pre


def parallel(jobs):
    """Run each callable in its own thread at once; their results in order, with each one's
    start and end on the monotonic clock."""
    out = [None] * len(jobs)

    def one(i, job):
        t0 = time.monotonic()
        res = job()
        out[i] = (res, t0, time.monotonic())

    threads = [threading.Thread(target=one, args=(i, j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def within(value: float, want: float, tolerance: float) -> bool:
    return abs(value - want) <= want * tolerance


def urls(gw, backend, front: str, name: str) -> tuple[str, list[str]]:
    """The URL of `name` through frontend `front` and curl's options for it."""
    if front == "plain":
        return gw.ftp_url("p", name, backend.user, backend.password), []
    return gw.url(name, backend.user, backend.password), ["--ssl-reqd"]


def test_session_rate_both_ways(gateway, backend, blobs, tmp_path):
    """rate_down = rate_up = 1M per session: a download and an upload on implicit TLS and on a
    plain frontend, all four at once (each its own session), each runs at 1 MiB/s within 10 %
    over 10 s; the bytes arrive whole."""
    size = 10 * MiB
    limits = {"rate_down": "1M", "rate_up": "1M"}
    gw = gateway(backend, extra={"frontend fe": limits},
                 frontends={"p": peers.frontend("plain", **limits)})
    jobs, checks = [], []
    for front in ("implicit", "plain"):
        down = backend.put(blobs, f"rate-{front}.bin", size, unique=True)
        src = tmp_path / f"up-{front}.bin"
        up = blobs.unique(src, size)
        got = tmp_path / f"down-{front}.bin"
        url_down, opts = urls(gw, backend, front, f"rate-{front}.bin")
        url_up, _ = urls(gw, backend, front, f"rate-{front}-up.bin")
        jobs.append(lambda u=url_down, o=opts, g=got: curl(*o, "-o", g, u))
        jobs.append(lambda u=url_up, o=opts, s=src: curl(*o, "-T", s, u))
        checks.append((got, down, f"rate-{front}-up.bin", up))
    results = parallel(jobs)
    for got, down, upname, up in checks:
        assert sha256_file(got) == down
        assert sha256_file(backend.path(upname)) == up
    for (res, _, _), what in zip(results, ["implicit down", "implicit up", "plain down",
                                           "plain up"]):
        check(res)
        rate = size / seconds(res)[1]
        assert within(rate, MiB, 0.10), f"{what}: {rate / MiB:.3f} MiB/s"


def admin_sessions(aport: int) -> list[dict]:
    with urllib.request.urlopen(f"http://{HOST}:{aport}/sessions", timeout=10) as r:
        body = json.loads(r.read())
    return body.get("sessions", body) if isinstance(body, dict) else body


def logged_in(gw, backend, ctx, n: int) -> list:
    """n implicit FTPS ftplib sessions, logged in, PROT P, TYPE I: the transfers can then
    start together (curl's logins straggle on a busy machine)."""
    out = []
    for _ in range(n):
        ftp = peers.ImplicitFTPS(context=ctx, timeout=60)
        ftp.connect(HOST, gw.port)
        ftp.login(backend.user, backend.password)
        ftp.prot_p()
        ftp.voidcmd("TYPE I")
        out.append(ftp)
    return out


def together(ftps, name: str, dests) -> list[tuple[float, float]]:
    """RETR name on every session at once; each one's (start, end), monotonic."""
    barrier = threading.Barrier(len(ftps))

    def one(ftp, dest):
        barrier.wait()
        t0 = time.monotonic()
        peers.ftplib_download(ftp, name, dest)
        return t0, time.monotonic()

    out = parallel([lambda f=f, d=d: one(f, d) for f, d in zip(ftps, dests)])
    for ftp in ftps:
        ftp.quit()
    return [r for r, _, _ in out]


@pytest.mark.parametrize("workers", [1, 2])
def test_frontend_rate_shared_fairly(gateway, backend, blobs, tmp_path, ports, client_ctx,
                                     workers):
    """frontend_rate_down = 4M shared by 4 sessions (over two workers too: the bucket is the
    process's): each gets about 1 MiB/s (within 20 %, by the client's clock and by the bytes
    the admin endpoint shows 1.5 s apart), all together 4 MiB/s within 10 %; the admin
    endpoint shows the limits, each transfer's share and its measured rate; the time waited
    is counted in /metrics."""
    size = 6 * MiB
    aport = ports.port()
    gw = gateway(backend, extra={"global": {"workers": workers, "admin_listen": f"{HOST}:{aport}"},
                                 "frontend fe": {"frontend_rate_down": "4M"}})
    gw.started()
    digest = backend.put(blobs, f"fe-rate-{workers}.bin", size, unique=True)
    if workers == 1:
        ftps = logged_in(gw, backend, client_ctx, 4)
    else:  # two sessions on each worker (SO_REUSEPORT spreads them: log in until it did)
        ftps, spare, by_worker = [], [], {0: [], 1: []}
        while min(map(len, by_worker.values())) < 2 and len(spare) < 16:
            ftp = logged_in(gw, backend, client_ctx, 1)[0]
            spare.append(ftp)
            client = f"{HOST}:{ftp.sock.getsockname()[1]}"
            worker = {x["client"]: x["worker"] for x in admin_sessions(aport)}[client]
            by_worker[worker].append(ftp)
        ftps = by_worker[0][:2] + by_worker[1][:2]
        for ftp in spare:
            if ftp not in ftps:
                ftp.quit()
        assert len(ftps) == 4, "16 sessions all on one worker"
    seen = []

    def watch():
        time.sleep(1.5)
        for _ in range(2):
            seen.append((time.monotonic(), admin_sessions(aport)))
            time.sleep(1.5)

    watcher = threading.Thread(target=watch)
    watcher.start()
    spans = together(ftps, f"fe-rate-{workers}.bin", [tmp_path / f"d{i}.bin" for i in range(4)])
    watcher.join()
    for i in range(4):
        assert sha256_file(tmp_path / f"d{i}.bin") == digest
    check_spans(spans, size, MiB)
    (t1, first), (t2, second) = seen
    before = {s["id"]: s["transfer"]["bytes"] for s in first if "transfer" in s}
    after = {s["id"]: s for s in second if "transfer" in s}
    assert len(before) == 4 and set(before) == set(after), (first, second)
    deltas = [(after[i]["transfer"]["bytes"] - before[i]) / (t2 - t1) for i in before]
    for r in deltas:
        assert within(r, MiB, 0.20), [f"{x / MiB:.3f}" for x in deltas]
    assert within(sum(deltas), 4 * MiB, 0.10), [f"{x / MiB:.3f}" for x in deltas]
    if workers == 2:
        assert sorted(s["worker"] for s in after.values()) == [0, 0, 1, 1], after
    for s in after.values():
        assert s["rate_limits"]["down"] == {"session": 0, "user": 0, "frontend": 4 * MiB}, s
        assert s["rate_limits"]["up"] == {"session": 0, "user": 0, "frontend": 0}, s
        assert s["transfer"]["rate"]["limit"] == MiB, s  # a fourth of the frontend's
        assert within(s["transfer"]["rate"]["current"], MiB, 0.25), s
    with urllib.request.urlopen(f"http://{HOST}:{aport}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    waited = re.search(r'^ftpsgate_rate_limited_seconds_total\{frontend="fe",direction="down"\} '
                       r'([\d.]+)$', metrics, re.M)
    assert waited and float(waited.group(1)) > 1, metrics  # four transfers, mostly waiting
    assert 'direction="up"' not in metrics


def check_spans(spans, size: int, each: float) -> None:
    """Every transfer at `each` bytes/s within 20 %, all together within 10 %."""
    rates = [size / (t1 - t0) for t0, t1 in spans]
    for r in rates:
        assert within(r, each, 0.20), [f"{x / MiB:.3f}" for x in rates]
    total = len(spans) * size / (max(t1 for _, t1 in spans) - min(t0 for t0, _ in spans))
    assert within(total, len(spans) * each, 0.10), f"aggregate {total / MiB:.3f} MiB/s"


def test_user_rate_across_sessions(gateway, backend, blobs, tmp_path, client_ctx):
    """A [policy] naming the user with rate_down = 2M: two sessions of that user share it
    (about 1 MiB/s each, 2 MiB/s together)."""
    size = 5 * MiB
    gw = gateway(backend, extra={"policy slow": {"users": backend.user, "rate_down": "2M"}})
    digest = backend.put(blobs, "user-rate.bin", size, unique=True)
    spans = together(logged_in(gw, backend, client_ctx, 2), "user-rate.bin",
                     [tmp_path / f"u{i}.bin" for i in range(2)])
    for i in range(2):
        assert sha256_file(tmp_path / f"u{i}.bin") == digest
    check_spans(spans, size, MiB)


def test_splice_respects_limits(gateway, backend, blobs, tmp_path):
    """splice = yes on a plain frontend: the spliced relay takes only what the buckets allow
    (rate_down = rate_up = 2M): 2 MiB/s within 10 % both ways, and the log says splice."""
    size = 10 * MiB
    gw = gateway(backend, extra={"global": {"splice": "yes"}},
                 frontends={"p": peers.frontend("plain", rate_down="2M", rate_up="2M")})
    down = backend.put(blobs, "splice-rate.bin", size, unique=True)
    src = tmp_path / "up.bin"
    up = blobs.unique(src, size)
    mark = gw.mark()
    results = parallel([
        lambda: curl("-o", tmp_path / "got.bin",
                     gw.ftp_url("p", "splice-rate.bin", backend.user, backend.password)),
        lambda: curl("-T", src, gw.ftp_url("p", "splice-rate-up.bin", backend.user,
                                           backend.password)),
    ])
    assert sha256_file(tmp_path / "got.bin") == down
    assert sha256_file(backend.path("splice-rate-up.bin")) == up
    for (res, _, _), what in zip(results, ["download", "upload"]):
        check(res)
        rate = size / seconds(res)[1]
        assert within(rate, 2 * MiB, 0.10), f"{what}: {rate / MiB:.3f} MiB/s"
    paths = re.findall(r"event=data_relay direction=(\w+) path=(\w+)", mark.text())
    assert sorted(paths) == [("download", "splice"), ("upload", "splice")], paths


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def test_memory_flat_under_limit(gateway, backend, blobs, tmp_path):
    """A fast backend and a fast client under rate_down = rate_up = 1M (TLS both): the relay
    stops reading instead of buffering, so the gateway's RSS stays flat while both transfers
    run (curl is stopped after 5 s)."""
    size = 64 * MiB
    gw = gateway(backend, extra={"frontend fe": {"rate_down": "1M", "rate_up": "1M"}})
    backend.put(blobs, "rss-rate.bin", size)
    src = tmp_path / "up.bin"
    blobs.unique(src, size)
    samples = []

    def sample():
        time.sleep(1.5)
        for _ in range(8):
            samples.append(rss_kib(gw.pid))
            time.sleep(0.4)

    sampler = threading.Thread(target=sample)
    sampler.start()
    results = parallel([
        lambda: curl("--ssl-reqd", "-o", tmp_path / "got.bin",
                     gw.url("rss-rate.bin", backend.user, backend.password), max_time=5),
        lambda: curl("--ssl-reqd", "-T", src,
                     gw.url("rss-rate-up.bin", backend.user, backend.password), max_time=5),
    ])
    sampler.join()
    for res, _, _ in results:
        assert res.returncode == 28, res.stderr  # cut by --max-time, as intended
    got = (tmp_path / "got.bin").stat().st_size
    assert 3 * MiB < got < 6 * MiB, got  # limited, not a fast copy
    assert max(samples) - min(samples) < 2048, samples  # KiB


@pytest.mark.parametrize("path", ["copy", "splice"])
@pytest.mark.parametrize("direction", ["download", "upload"])
def test_client_killed_while_limited(gateway, backend, blobs, tmp_path, direction, path):
    """curl killed while its transfer waits for tokens (rate 1M, copying and spliced
    relays): the gateway's descriptors come back to the count before it (the rate timer and
    the legs closed), and the next limited transfer of the frontend is whole and limited."""
    gw = gateway(backend, extra={"global": {"splice": "yes" if path == "splice" else "no"}},
                 frontends={"p": peers.frontend("plain", rate_down="1M", rate_up="1M",
                                                frontend_rate_down="4M",
                                                frontend_rate_up="4M")})
    peers.put_sparse(backend, "rate-big.bin", 64 * MiB)
    digest = backend.put(blobs, "rate-after.bin", 1 * MiB, unique=True)
    src = tmp_path / "src.bin"
    with open(src, "wb") as f:
        f.truncate(64 * MiB)
    url_after = gw.ftp_url("p", "rate-after.bin", backend.user, backend.password)
    check(curl("-o", tmp_path / "warm.bin", url_after))
    baseline = gw.settled_fd_count()
    name_up = f"rate-killed-{direction}-{path}.bin"
    backend.path(name_up).unlink(missing_ok=True)
    got = tmp_path / "got.bin"
    url = gw.ftp_url("p", "rate-big.bin" if direction == "download" else name_up,
                     backend.user, backend.password)
    args = ["curl", "-sS", "--ftp-pasv",
            *(["-o", str(got), url] if direction == "download" else ["-T", str(src), url])]
    mark = gw.mark()
    peers.kill_after_progress(args, got if direction == "download" else backend.path(name_up),
                              300 * 1024)
    assert re.findall(r"event=data_relay direction=(\w+) path=(\w+)", mark.text()) == \
        [(direction, path)]
    mark.wait(r"event=data_failed|event=session_end", 10)
    now = gw.wait_fd_count(baseline, timeout=8)
    assert now == baseline, f"gateway fds: {now}, {baseline} before the transfer"
    res = check(curl("-o", tmp_path / "after.bin", url_after))
    assert sha256_file(tmp_path / "after.bin") == digest
    rate = MiB / seconds(res)[1]
    assert rate < 1.25 * MiB, f"{rate / 1024:.0f} KiB/s"  # the burst is a tenth of it


def test_users_file_rate(gateway, backend, blobs, tmp_path, client_ctx):
    """auth = file: a users file's rate_down=1M limits that user's sessions together (two
    downloads at about 512 KiB/s each, 1 MiB/s in all); the file is accepted, no longer
    refused."""
    hashed = subprocess.run(["mkpasswd", "-m", "sha512crypt", "--stdin"], input=backend.password,
                            capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    users = tmp_path / "users"
    users.write_text(f"{backend.user}:{hashed}:rate_down=1M\n")
    users.chmod(0o600)
    gw = gateway(backend, extra={"frontend fe": {"auth": "file", "auth_file": users}})
    size = 5 * MiB // 2
    digest = backend.put(blobs, "file-rate.bin", size, unique=True)
    spans = together(logged_in(gw, backend, client_ctx, 2), "file-rate.bin",
                     [tmp_path / f"f{i}.bin" for i in range(2)])
    for i in range(2):
        assert sha256_file(tmp_path / f"f{i}.bin") == digest
    check_spans(spans, size, MiB / 2)


def test_reload_keeps_sharing_new_rate(gateway, backend, blobs, tmp_path):
    """frontend_rate_down 1M -> 3M by SIGHUP while a download runs: a session started after
    the reload shares the same bucket (1.5 MiB/s each while both run) and the new rate
    applies to the old transfer too, which ends long before 8 s at the old rate."""
    gw = gateway(backend, extra={"frontend fe": {"frontend_rate_down": "1M"}})
    first = backend.put(blobs, "reload-rate-a.bin", 8 * MiB, unique=True)
    second = backend.put(blobs, "reload-rate-b.bin", 4 * MiB, unique=True)
    out = {}

    def download_first():
        out["a"] = curl("--ssl-reqd", "-o", tmp_path / "a.bin",
                        gw.url("reload-rate-a.bin", backend.user, backend.password))

    ta = threading.Thread(target=download_first)
    mark = gw.mark()
    ta.start()
    mark.wait(r"event=data_relay direction=download", 10)
    time.sleep(1)
    text = gw.config.read_text()
    assert "frontend_rate_down = 1M" in text, text
    gw.config.write_text(text.replace("frontend_rate_down = 1M", "frontend_rate_down = 3M"))
    os.kill(gw.pid, signal.SIGHUP)
    mark.wait("event=reload_complete ", 20)
    res_b = check(curl("--ssl-reqd", "-o", tmp_path / "b.bin",
                       gw.url("reload-rate-b.bin", backend.user, backend.password)))
    ta.join()
    res_a = check(out["a"])
    assert sha256_file(tmp_path / "a.bin") == first
    assert sha256_file(tmp_path / "b.bin") == second
    rate_b = 4 * MiB / seconds(res_b)[1]
    assert within(rate_b, 1.5 * MiB, 0.20), f"{rate_b / MiB:.3f} MiB/s"
    assert seconds(res_a)[1] < 6.5, seconds(res_a)  # 8 s at the old rate
