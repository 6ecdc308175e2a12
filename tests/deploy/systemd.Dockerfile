# systemd 252 as PID 1 with the gateway built by docker/Dockerfile and a plain FTP backend on
# 127.0.0.1:2121 (the sample configuration's backend). config/ftpsgate.service is mounted at
# run time by tests/deploy/run.sh, so a change to the unit needs no new image.
# procps: /bin/kill, which a full Debian system has (minbase does not). The runtime libraries
# are docker/Dockerfile's (libldap and libpam: auth = ldap | pam).
ARG BASE=debian:bookworm-slim
ARG GATEWAY=localhost/ftpsgate:latest
FROM ${GATEWAY} AS gateway

FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      systemd procps libuv1 libssl3 libmicrohttpd12 libcrypt1 libldap-2.5-0 libpam0g \
      ca-certificates python3-pyftpdlib \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
 && useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin ftpsgate \
 && install -d -m 0755 /srv/ftp /etc/ftpsgate \
 && printf '[Service]\nExecStart=/usr/bin/python3 -m pyftpdlib -i 127.0.0.1 -p 2121 -d /srv/ftp -w\n[Install]\nWantedBy=multi-user.target\n' \
      >/etc/systemd/system/legacy-ftp.service \
 && systemctl enable legacy-ftp.service \
 && systemctl mask systemd-logind.service getty.target console-getty.service
COPY --from=gateway /usr/local/bin/ftpsgate /usr/local/bin/ftpsgate
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
