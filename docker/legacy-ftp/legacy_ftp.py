#!/usr/bin/python3
"""A plain-FTP "legacy" server for the ftpsgate compose demo (pyftpdlib, no TLS).

One virtual user (no system account): FTP_USER / FTP_PASSWORD (default demo / demo) with
full rights in FTP_ROOT. It is reachable only on the compose network, through ftpsgate.
"""
import logging
import os
import signal
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def main():
    port = int(os.environ.get("FTP_PORT", "2121"))
    root = os.environ.get("FTP_ROOT", "/srv/ftp")
    low, high = (int(p) for p in os.environ.get("FTP_PASV_PORTS", "2150-2199").split("-"))
    logging.basicConfig(level=logging.INFO, format="legacy-ftp %(levelname)s %(message)s")

    authorizer = DummyAuthorizer()
    authorizer.add_user(os.environ.get("FTP_USER", "demo"), os.environ.get("FTP_PASSWORD", "demo"),
                        root, perm="elradfmwMT")
    handler = FTPHandler
    handler.authorizer = authorizer
    handler.banner = "legacy FTP server (plain, behind ftpsgate)"
    handler.passive_ports = range(low, high + 1)
    server = FTPServer(("0.0.0.0", port), handler)
    # As PID 1 in a container SIGTERM is ignored unless handled: stop cleanly on it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
