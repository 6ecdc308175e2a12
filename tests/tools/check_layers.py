#!/usr/bin/env python3
"""The architecture as a check: every source file and header has a layer, and a file may
include only headers of its own layer or below. Prints each violation; exit 1 if any.
Layers (bottom to top) are described in proxy/ARCHITECTURE.md."""
import re
import sys
from pathlib import Path

LAYERS = [
    ("pure", ["ftp_cmd", "ftp_reply", "ftp_addr", "feat", "config", "ip_limit", "ftp_codes",
              "version", "log", "cidr", "ban", "notify", "xferlog", "logfile", "tls_hello",
              "proxy_proto", "admin_text", "admin_users", "metrics", "timeline", "siblings", "bug",
              "server_name", "inherit", "users_file", "cmd_policy", "crypt_check",
              "user_map", "textfile", "ldap_text", "pam_check", "rate"]),
    ("tls/conn", ["tls", "conn", "splice", "pasv_pool", "bans", "mailbox", "auth_ldap"]),
    ("generation", ["generation", "health", "balance"]),
    # Below data: the shared port hands a connection to a callback (on the waiter's loop,
    # through its mailbox) and knows nothing of data channels, so data -> shared_port only.
    ("shared port", ["shared_port"]),
    ("data", ["data", "data_int", "data_accept"]),
    ("session", ["session_int", "backend", "client_cmd", "reply_dispatch", "transfer", "session",
                 "session_info", "edge_auth"]),
    ("listener/workers", ["server", "listener", "worker", "admin", "control",
                          "upgrade"]),
    ("main", ["main"]),
]
LEVEL = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}

repo = Path(__file__).resolve().parents[2]
bad = 0
files = sorted(repo.glob("proxy/*.[ch]")) + sorted(repo.glob("include/*.h"))
for f in files:
    if f.stem not in LEVEL:
        print(f"{f.relative_to(repo)}: no layer assigned (add it to tests/tools/check_layers.py)")
        bad += 1
        continue
    mine = LEVEL[f.stem]
    for n, line in enumerate(f.read_text().splitlines(), 1):
        # The parsers stay testable and fuzzable alone.
        if mine == 0 and re.match(r"\s*#\s*include\s+<(uv\.h|openssl/)", line):
            print(f"{f.relative_to(repo)}:{n}: a pure module includes libuv or OpenSSL")
            bad += 1
        m = re.match(r'\s*#\s*include\s+"([\w.]+)\.h"', line)
        if not m:
            continue
        dep = m.group(1)
        if dep not in LEVEL:
            print(f"{f.relative_to(repo)}:{n}: includes {dep}.h, which has no layer")
            bad += 1
        elif LEVEL[dep] > mine:
            print(f"{f.relative_to(repo)}:{n}: includes {dep}.h ({LAYERS[LEVEL[dep]][0]}) "
                  f"from the {LAYERS[mine][0]} layer below it")
            bad += 1
print(f"check_layers: {len(files)} files, {bad} problem(s)")
sys.exit(1 if bad else 0)
