"""The harness itself: curl against each backend directly, in plain FTP, no gateway."""

import pytest

from peers import MiB, check, describe, run, sha256_file

CURL = ["curl", "-sS", "--ftp-pasv", "--max-time", "60"]


def test_list(backend, blobs):
    backend.put(blobs, "direct-list.bin", 1000)
    res = check(run([*CURL, "--list-only", backend.url()]))
    assert "direct-list.bin" in res.stdout.split()


def test_greeting_is_the_banner(backend):
    # -v shows the server's lines on stderr ("< 220 ...").
    res = check(run([*CURL, "-v", "--list-only", backend.url()]))
    assert f"< 220 {backend.banner}" in res.stderr


@pytest.mark.parametrize("size", [0, 1 * MiB], ids=["empty", "1MiB"])
def test_download(backend, blobs, tmp_path, size):
    name = f"direct-down-{size}.bin"
    digest = backend.put(blobs, name, size, unique=True)
    out = tmp_path / name
    check(run([*CURL, "-o", out, backend.url(name)]))
    assert sha256_file(out) == digest


def test_upload(backend, blobs, tmp_path):
    src = tmp_path / "up.bin"
    digest = blobs.unique(src, 1 * MiB)
    check(run([*CURL, "-T", src, backend.url("direct-up.bin")]))
    assert sha256_file(backend.path("direct-up.bin")) == digest


def test_resume_download(backend, blobs, tmp_path):
    name = "direct-resume.bin"
    digest = backend.put(blobs, name, 1 * MiB, unique=True)
    out = tmp_path / name
    out.write_bytes(backend.path(name).read_bytes()[:300_000])
    check(run([*CURL, "-C", "-", "-o", out, backend.url(name)]))
    assert sha256_file(out) == digest


def test_wrong_password_is_refused(backend):
    url = backend.url().replace(f":{backend.password}@", ":wrong-password@")
    res = run([*CURL, "--list-only", url])
    assert res.returncode == 67, describe(res)  # CURLE_LOGIN_DENIED
