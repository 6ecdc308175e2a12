"""A resuming ftplib client (explicit FTPS): its data connections resume the control
connection's TLS session, and it completes a partial download with REST.

usage: ftplib_resume.py HOST PORT USER PASSWORD REMOTE LOCAL_FULL_COPY
LOCAL_FULL_COPY is the expected content: its first half stands for the part already
downloaded; the rest is fetched with REST and the whole compared by SHA-256. Exit 0 if equal.
"""
import ftplib
import hashlib
import ssl
import sys


class ResumingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections reuse the control connection's TLS session, as
    vsftpd's require_ssl_reuse and most servers expect (ftplib does not by default)."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


def main():
    host, port, user, password, remote, expected = sys.argv[1:]
    data = open(expected, "rb").read()
    half = len(data) // 2
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ftp = ResumingFTP_TLS(context=ctx, timeout=30)
    ftp.connect(host, int(port))
    ftp.auth()
    ftp.login(user, password)
    ftp.prot_p()
    got = bytearray(data[:half])
    sessions = []

    def keep(chunk):
        got.extend(chunk)

    ftp.voidcmd("TYPE I")
    conn, _ = ftp.ntransfercmd(f"RETR {remote}", rest=half)
    sessions.append(conn.session_reused)
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        keep(chunk)
    try:
        conn.unwrap()  # close_notify, as ftplib's own retrbinary does
    except (OSError, ssl.SSLError):
        pass
    conn.close()
    ftp.voidresp()
    size = ftp.size(remote)
    ftp.quit()
    ok = hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    print(f"ftplib: REST {half}, {len(got)} bytes, size {size}, data TLS session reused "
          f"{all(sessions)}, sha256 {'ok' if ok else 'MISMATCH'}")
    return 0 if ok and all(sessions) and size == len(data) else 1


if __name__ == "__main__":
    sys.exit(main())
