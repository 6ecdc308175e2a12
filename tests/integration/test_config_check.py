"""`ftpsgate -t` checks what start checks: certificates and keys load and match (per frontend
too), CA and CRL files read, the transfer log opens for appending, listen addresses are this
host's. A problem exits 1 naming FILE:LINE and the key; start exits 1 on the same problems
(the same code runs), so a unit with RestartPreventExitStatus=1 does not loop. The sample
files in config/ pass."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

import peers

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path):
    """A state directory of the test's own (the generated certificate of configurations
    without [tls] cert lands there, not in the tester's home)."""
    return dict(os.environ, FTPSGATE_STATE_DIR=str(tmp_path / "state"))


def check(conf: Path, env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(peers.GATEWAY_BIN), *args, "-t", "-c", str(conf)],
                          capture_output=True, text=True, timeout=30, env=env)


def line_of(conf: Path, needle: str) -> int:
    for n, line in enumerate(conf.read_text().splitlines(), 1):
        if line.startswith(needle):
            return n
    raise AssertionError(f"{needle!r} not in {conf}")


@pytest.fixture
def base(tmp_path, tls_cert, ports):
    """A configuration that passes; tests break one thing in it."""
    cert, key = tls_cert
    sections = {
        "global": {"xferlog": tmp_path / "logs" / "xferlog"},
        "tls": {"cert": cert, "key": key},
        "frontend fe": {"listen": f"{peers.HOST}:{ports.port()}", "mode": "implicit",
                        "backend": "be"},
        "frontend x": {"listen": f"{peers.HOST}:{ports.port()}", "mode": "explicit",
                       "backend": "be"},
        "backend be": {"address": "127.0.0.1:2121"},
    }
    (tmp_path / "logs").mkdir()

    def write(extra=None, drop=()):
        merged = peers.merge_sections(sections, extra)
        for section, key in drop:
            del merged[section][key]
        conf = tmp_path / "gw.conf"
        conf.write_text(peers.render_ini(merged))
        return conf
    return write


@pytest.mark.parametrize("name", ["ftpsgate.conf", "minimal.conf", "three-backends.conf"])
def test_sample_configs_pass(name, env):
    res = check(REPO / "config" / name, env)
    assert res.returncode == 0 and res.stdout == "ok\n", res.stdout + res.stderr


def test_good_file_passes_and_creates_only_the_log(base, tmp_path, env):
    conf = base()
    res = check(conf, env)
    assert res.returncode == 0 and res.stdout == "ok\n", res.stdout + res.stderr
    # Opened for appending as start would: the file may now exist, empty.
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["xferlog"]
    assert (tmp_path / "logs" / "xferlog").read_bytes() == b""


def expect_failure(conf: Path, env, key_line: str, label: str, words: str):
    res = check(conf, env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout == ""
    line = line_of(conf, key_line)
    pattern = rf"^ftpsgate: {re.escape(str(conf))}:{line}: {re.escape(label)}: .*{words}"
    assert re.search(pattern, res.stderr, re.M), (pattern, res.stderr)
    return res


def test_missing_key(base, tmp_path, env):
    conf = base({"tls": {"key": tmp_path / "no-such.key"}})
    expect_failure(conf, env, "key = ", "[tls] key", "cannot load private key .*no-such.key")


def test_missing_frontend_key(base, tmp_path, tls_cert, env):
    """A frontend's own cert/key: its own line is named."""
    conf = base({"frontend x": {"cert": tls_cert[0], "key": tmp_path / "gone.key"}})
    res = check(conf, env)
    assert res.returncode == 1
    text = conf.read_text().splitlines()
    line = next(n for n, t in enumerate(text, 1) if t == f"key = {tmp_path / 'gone.key'}")
    assert f"{conf}:{line}: [frontend x] key: cannot load private key" in res.stderr, res.stderr


def test_cert_key_mismatch(base, tmp_path, env):
    other_cert, other_key = peers.make_cert(tmp_path, "other")
    conf = base({"tls": {"key": other_key}})
    expect_failure(conf, env, "key = ", "[tls] key", "mismatch")


def test_missing_cert(base, tmp_path, env):
    conf = base({"tls": {"cert": tmp_path / "no-such.crt"}})
    expect_failure(conf, env, "cert = ", "[tls] cert", "cannot load certificate")


def test_unreadable_client_ca(base, tmp_path, env):
    """An unreadable CA: a directory where the PEM file should be (root reads any file)."""
    (tmp_path / "ca-dir").mkdir()
    conf = base({"frontend x": {"client_cert": "optional", "client_ca": tmp_path / "ca-dir"}})
    expect_failure(conf, env, "client_ca = ", "[frontend x] client_ca", "client_ca")


def test_missing_client_crl(base, tmp_path, tls_cert, env):
    conf = base({"tls": {"client_cert": "optional", "client_ca": tls_cert[0],
                         "client_crl": tmp_path / "none.crl"}})
    expect_failure(conf, env, "client_crl = ", "[tls] client_crl", "client_crl")


def test_unreadable_backend_ca_file(base, tmp_path, env):
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    conf = base({"backend be": {"tls": "explicit", "ca_file": tmp_path / "garbage.pem"}})
    expect_failure(conf, env, "ca_file = ", "[backend be] ca_file", "trust anchors")


@pytest.mark.parametrize("where", ["missing-dir", "file-as-dir"])
def test_unwritable_xferlog_directory(base, tmp_path, env, where):
    """Tests run as root, which ignores permissions: a directory that does not exist, or a
    file where the directory should be."""
    if where == "missing-dir":
        path = tmp_path / "no" / "such" / "xferlog"
    else:
        (tmp_path / "plain-file").write_text("")
        path = tmp_path / "plain-file" / "xferlog"
    conf = base({"global": {"xferlog": path}})
    expect_failure(conf, env, "xferlog = ", "[global] xferlog", re.escape(str(path)))
    assert not path.parent.exists() or path.parent.is_file()


def test_listen_address_not_of_this_host(base, env):
    conf = base({"frontend x": {"listen": "192.0.2.1:2121"}})  # TEST-NET-1: never local
    res = check(conf, env)
    assert res.returncode == 1
    line = line_of(conf, "listen = 192.0.2.1")
    assert f"{conf}:{line}: [frontend x] listen: 192.0.2.1 is not an address" in res.stderr


def test_start_exits_1_on_the_same_problem(base, tmp_path, env):
    """Start runs the same check before binding: exit 1 (a configuration error, which the
    unit does not restart), the problem named, nothing left listening."""
    conf = base({"tls": {"key": tmp_path / "no-such.key"}})
    res = subprocess.run([str(peers.GATEWAY_BIN), "-c", str(conf)], capture_output=True,
                         text=True, timeout=30, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"{conf}:{line_of(conf, 'key = ')}: [tls] key: cannot load private key" in res.stderr


def test_unresolvable_backend_name_warns(base, env):
    """A backend host name is resolved per session (containers start in any order): -t,
    like start, warns about a name that does not resolve yet and passes."""
    conf = base({"backend be": {"address": "no-such-host.invalid:21"}})
    res = check(conf, env)
    assert res.returncode == 0, res.stderr
    assert "event=backend_unresolved backend=be host=no-such-host.invalid" in res.stderr
