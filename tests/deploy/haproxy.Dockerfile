# A stand-in for Docker Hub's haproxy:2.6 (no registry in CI): Debian 12's HAProxy 2.6, run
# the way the official image runs it (user haproxy, configuration at
# /usr/local/etc/haproxy/haproxy.cfg, master-worker in the foreground, logs on stderr).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
 && install -d /usr/local/etc/haproxy
USER haproxy
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
