"""Backends that answer in unusual ways, played by scripts of the fake backend (fakeftp):
a non-220 greeting, a 120 before the 220, vsftpd's fatal "500 OOPS" to EPSV, and a TLS
error on a backend whose certificate is not verified (tls_verify = no).

Each fake accepts a fixed number of connections and runs a script for each in its own
thread; every line it receives is recorded (`received`), what a script raised is in
`errors`. Reads time out, so the threads end even when the gateway misbehaves.
"""

from __future__ import annotations

import contextlib
import re
import time

from fakeftp import FakeConn, FakeFTP, Plan
from peers import GATEWAY_WRAPPER, Control, backend_tls, frontend

# Counted from the fake backend's start, so it covers the gateway's start too: 30 s under
# valgrind (starts of 10 s and more were seen with two workers on a loaded machine).
TIMEOUT = 30 if GATEWAY_WRAPPER else 10


def fake_backend(script, connections: int = 1) -> FakeFTP:
    """A fake backend whose first `connections` connections run `script`; a timeout of its
    own ends every wait, so the threads end even when the gateway misbehaves."""
    return FakeFTP(script, connections=connections, timeout=TIMEOUT)


# A server that knows USER and QUIT only.
MINIMAL = {"USER": "331 password please", "QUIT": "221 bye", "*": "502 no"}


def plain_gateway(gateway, fake: FakeFTP, **kw):
    return gateway(backend_address=fake.address, frontends={"p": frontend("plain")}, **kw)


# ---------------------------------------------------------------------------------------
# 1. tls_verify = no: a TLS error is not reported as a certificate verification failure


def test_unverified_backend_tls_error_is_not_a_verify_failure(gateway, backend_cert):
    def script(c: FakeConn):
        c.reply("220 fake")
        assert c.readline() == "AUTH TLS"
        c.reply("234 go")
        c.starttls(*backend_cert)  # self-signed: would fail verification
        while (line := c.readline()) is not None:
            verb = line.split(" ", 1)[0].upper()
            if verb in ("PBSZ", "PROT"):
                c.reply("200 ok")
            elif verb == "USER":
                c.send_raw(b"garbage\r\n")  # not a TLS record
                with contextlib.suppress(OSError):
                    c.readline()  # until the gateway gives up on us
                return
            else:
                c.reply("502 no")

    with fake_backend(script) as fake:
        gw = plain_gateway(gateway, fake,
                           backend_keys=backend_tls("explicit", tls_verify=False))
        cur = gw.mark()
        ctl = Control.plain(gw.fport("p"))
        try:
            code, text = ctl.reply()
            assert code == 220, text
            ctl.send(b"USER someone\r\n")
            code, text = ctl.reply()
            assert code == 421, text
        finally:
            ctl.close()
        fake.wait_done()
        assert not fake.errors, fake.errors
        cur.wait(r"event=backend_error ", TIMEOUT)
        errors = re.findall(r"event=backend_error reason=\"([^\"]*)\"", cur.text())
        assert not any("certificate verify failed" in e for e in errors), errors


# ---------------------------------------------------------------------------------------
# 2. Greetings other than 220


def test_greeting_230_gets_a_421_naming_it(gateway):
    def script(c: FakeConn):
        c.reply("230 no login needed")
        c.readline()  # until the gateway closes

    with fake_backend(script) as fake:
        gw = plain_gateway(gateway, fake)
        cur = gw.mark()
        ctl = Control.plain(gw.fport("p"))
        try:
            code, text = ctl.reply()
            assert code == 421, text
            assert "230" in text, text
            assert ctl.closed_by_peer(), "the session goes on after a 230 greeting"
        finally:
            ctl.close()
        fake.wait_done()
        assert not fake.errors, fake.errors
        cur.wait(r"event=session_close reason=\"[^\"]*230", TIMEOUT)


def test_greeting_120_then_220_works(gateway):
    def script(c: FakeConn):
        c.reply("120 wait")
        time.sleep(0.2)
        c.play(Plan("220 ready", replies=MINIMAL))

    with fake_backend(script) as fake:
        gw = plain_gateway(gateway, fake)
        ctl = Control.plain(gw.fport("p"))
        try:
            code, text = ctl.reply()
            assert code == 120, text
            code, text = ctl.reply()
            assert code == 220, text
            code, text = ctl.cmd("USER someone")
            assert code == 331, text
            code, text = ctl.cmd("QUIT")
            assert code == 221, text
        finally:
            ctl.close()
        fake.wait_done()
        assert not fake.errors, fake.errors
        assert fake.received[0][:2] == ["USER someone", "QUIT"], fake.received


def test_rein_backend_greeting_120_then_220_is_swallowed(gateway):
    """REIN: the gateway answered 220 itself; the new backend's 120 and 220 are not relayed
    and the session goes on."""
    def script(c: FakeConn):
        if c.index == 1:
            c.reply("120 wait")
            time.sleep(0.2)
        c.play(Plan("220 ready", replies=MINIMAL))

    with fake_backend(script, connections=2) as fake:
        gw = plain_gateway(gateway, fake)
        ctl = Control.plain(gw.fport("p"))
        try:
            code, text = ctl.reply()
            assert code == 220, text
            code, text = ctl.cmd("REIN")
            assert code == 220, text
            code, text = ctl.cmd("USER someone")
            assert code == 331, text
            code, text = ctl.cmd("QUIT")
            assert code == 221, text
        finally:
            ctl.close()
        fake.wait_done()
        assert not fake.errors, fake.errors
        assert fake.received[1] == ["USER someone", "QUIT"], fake.received


# ---------------------------------------------------------------------------------------
# 3. vsftpd's "500 OOPS" to EPSV is fatal, not "EPSV unsupported"


def test_500_oops_to_epsv_is_not_remembered_as_no_epsv(gateway):
    def epsv(c: FakeConn, arg: str) -> bool:
        if c.index == 0:
            c.reply("500 OOPS: vsf_sysutil_bind")
            c.close()  # vsftpd exits after an OOPS
        else:
            c.reply("425 not today")
        return True

    def script(c: FakeConn):
        c.play(Plan("220 fake", replies={**MINIMAL, "PASS": "230 in", "EPSV": epsv,
                                         "PASV": "425 not today"}))

    with fake_backend(script, connections=2) as fake:
        gw = plain_gateway(gateway, fake)
        answers = []
        for session in range(2):
            ctl = Control.plain(gw.fport("p"))
            try:
                code, text = ctl.reply()
                assert code == 220, text
                ctl.login("someone", "secret")
                answers.append(ctl.cmd("PASV"))
                if session == 1:
                    ctl.cmd("QUIT")
            finally:
                ctl.close()
        fake.wait_done()
        assert not fake.errors, fake.errors
        verbs = [[line.split(" ", 1)[0] for line in lines] for lines in fake.received]
        # The second session still tries EPSV first: nothing was remembered.
        assert "EPSV" in verbs[1] and "PASV" not in verbs[1], verbs
        # The OOPS is the client's answer (the server is going away); no PASV retry.
        assert answers[0][0] == 500 and "OOPS" in answers[0][1], answers
        assert verbs[0][-1] == "EPSV", verbs
        assert answers[1][0] == 425, answers


# ---------------------------------------------------------------------------------------
# 5. A TLS backend that refuses PBSZ/PROT before login: they are sent again after its 230,
#    which the client gets only then (the set-up's late_pbsz/late_prot steps)


def test_backend_refusing_pbsz_before_login_gets_it_after_230(gateway, backend_cert):
    seen: list[str] = []

    def script(c: FakeConn):
        c.reply("220 fake")
        assert c.readline() == "AUTH TLS"
        c.reply("234 go")
        c.starttls(*backend_cert)
        logged = False
        while (line := c.readline()) is not None:
            seen.append(line)
            verb = line.split(" ", 1)[0].upper()
            if verb in ("PBSZ", "PROT"):
                c.reply("200 ok" if logged else "503 login first")
            elif verb == "USER":
                c.reply("331 pass")
            elif verb == "PASS":
                logged = True
                c.send(b"230-welcome\r\n230 in\r\n")
            elif verb == "QUIT":
                c.reply("221 bye")
                return
            else:
                c.reply("200 x")

    with fake_backend(script) as fake:
        gw = plain_gateway(gateway, fake,
                           backend_keys=backend_tls("explicit", tls_verify=False))
        cur = gw.mark(0)
        ctl = Control.plain(gw.fport("p"))
        try:
            assert ctl.reply()[0] == 220
            assert ctl.cmd("USER u")[0] == 331
            code, text = ctl.cmd("PASS p")
            assert code == 230 and "welcome" in text, text
            assert ctl.cmd("NOOP")[0] == 200
            assert ctl.cmd("QUIT")[0] == 221
        finally:
            ctl.close()
        fake.wait_done()
        assert not fake.errors, fake.errors
    assert seen[:6] == ["PBSZ 0", "USER u", "PASS p", "PBSZ 0", "PROT P", "NOOP"], seen
    steps = re.findall(r"event=state leg=backend from=(\w+) to=(\w+)", cur.text())
    assert steps[:9] == [("idle", "connecting"), ("connecting", "greeting"),
                         ("greeting", "auth"), ("auth", "tls"), ("tls", "pbsz"),
                         ("pbsz", "ready"), ("ready", "late_pbsz"),
                         ("late_pbsz", "late_prot"), ("late_prot", "ready")], steps
    assert "event=bug" not in cur.text()
