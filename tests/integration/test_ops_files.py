"""The Prometheus alerting rules shipped in config/: `promtool check rules` accepts them,
and `promtool test rules` (config/ftpsgate.rules.test.yml) proves each alert fires on the
input series it is written for and stays quiet before. A rule whose threshold is broken
makes the unit tests fail (so they can). The metric names are part of the configuration contract (config/README.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "config" / "ftpsgate.rules.yml"
RULES_TEST = REPO / "config" / "ftpsgate.rules.test.yml"
# The names every deployment can rely on (kept across releases).
FIXED_NAMES = {
    "ftpsgate_sessions_active", "ftpsgate_sessions_total", "ftpsgate_logins_total",
    "ftpsgate_tls_handshakes_total", "ftpsgate_transfers_total",
    "ftpsgate_transfer_bytes_total", "ftpsgate_transfer_duration_seconds",
    "ftpsgate_data_connections_refused_total", "ftpsgate_pasv_ports_in_use",
    "ftpsgate_pasv_ports_exhausted_total", "ftpsgate_backend_up",
    "ftpsgate_backend_connects_total", "ftpsgate_backend_connect_seconds", "ftpsgate_bans_total",
    "ftpsgate_reloads_total", "ftpsgate_build_info",
}
# Beyond the fixed names: the size of each passive range (admin endpoint, metrics.c).
EXTRA_NAMES = {"ftpsgate_pasv_ports_capacity"}

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None,
                                reason="promtool absent (Debian package prometheus)")


def promtool(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def test_check_rules():
    res = promtool("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 8 rules found" in res.stdout


def test_rules_use_known_metric_names():
    used = set(re.findall(r"\b(ftpsgate_[a-z_]+)\b", RULES.read_text()))
    assert used - FIXED_NAMES <= EXTRA_NAMES, used - FIXED_NAMES
    for must in ("ftpsgate_backend_up", "ftpsgate_pasv_ports_in_use",
                 "ftpsgate_pasv_ports_exhausted_total", "ftpsgate_tls_handshakes_total"):
        assert must in used


def test_rules_unit_tests():
    res = promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout
    # Every alert of the rules file is exercised by a test that expects it to fire.
    alerts = set(re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.M))
    fired = set(re.findall(r"alertname: (\w+)\n\s*exp_alerts:\n\s*- exp_labels",
                           RULES_TEST.read_text()))
    assert alerts == fired, alerts ^ fired


@pytest.mark.parametrize("old,new", [
    ("expr: ftpsgate_backend_up == 0", "expr: ftpsgate_backend_up == 2"),
    ("ftpsgate_pasv_ports_capacity > 0.9", "ftpsgate_pasv_ports_capacity > 0.99"),
    ('{result!="ok"}[5m])) > 0.1', '{result!="ok"}[5m])) > 10'),
])
def test_broken_rule_fails_its_unit_test(tmp_path, old, new):
    text = RULES.read_text()
    assert old in text
    (tmp_path / RULES.name).write_text(text.replace(old, new))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    res = promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert res.returncode != 0 and "FAILED" in res.stdout + res.stderr
