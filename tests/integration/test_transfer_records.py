"""Transfers as the client, the gateway and the server each record them (issue 18, items
4-7 and 9): every transfer that started has exactly one transfer log line however it ended
(client killed, backend killed, gateway stopped), with the reply the client got; an upload
the gateway does not trust is aborted toward the server, so that the server records a
failure too; Telnet subnegotiations cannot swallow commands; transfers before login get
530; `auth_ssl_protects_data` for AUTH SSL clients that never send PBSZ/PROT."""

from __future__ import annotations

import re
import socket
import ssl
import time

import pytest

from peers import HOST, Control, parse_227

PRELOGIN = "530 Please login with USER and PASS."


# ---------------------------------------------------------------------------------------
# Item 9: Telnet subnegotiation, transfer verbs before login


def test_unterminated_subnegotiation_does_not_swallow_commands(gateway, vsftpd, client_ctx):
    """IAC SB without IAC SE: the line end closes it, the next command is answered at once
    (not after idle_timeout)."""
    gw = gateway(vsftpd)
    ctl = Control.implicit(gw.port, client_ctx, timeout=5)
    try:
        assert ctl.reply()[0] == 220
        ctl.send(b"NO\xff\xfa\x18xterm\r\n")
        code, text = ctl.reply()  # the line "NO": the server's 5xx
        assert 500 <= code < 600, text
        code, text = ctl.cmd(f"USER {vsftpd.user}")
        assert code == 331, text
    finally:
        ctl.close()


@pytest.mark.parametrize("verb", ["LIST", "NLST", "MLSD", "RETR x", "STOR x", "APPE x", "STOU",
                                  "PASV", "EPSV", "PORT 127,0,0,1,200,10",
                                  "EPRT |1|127.0.0.1|51210|"])
def test_transfer_verbs_before_login_get_530(gateway, vsftpd, client_ctx, verb):
    """As vsftpd and pyftpdlib answer them (530), not 425/521 from the gateway."""
    gw = gateway(vsftpd)
    ctl = Control.implicit(gw.port, client_ctx, timeout=5)
    try:
        assert ctl.reply()[0] == 220
        assert ctl.cmd(verb) == (530, PRELOGIN)
        # after login the same session transfers as usual
        ctl.login(vsftpd.user, vsftpd.password)
        code, text = ctl.cmd("PBSZ 0")
        assert code == 200, text
        code, text = ctl.cmd("PASV")
        assert code == 227, text
        parse_227(text)
    finally:
        ctl.close()
