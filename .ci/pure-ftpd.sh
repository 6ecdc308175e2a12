#!/usr/bin/env bash
# pure-ftpd as a test peer (tests/integration): it conflicts with vsftpd in apt, so
# its packages are downloaded and unpacked into a cache folder, never installed. Quick when
# the binary is there already. FTPSGATE_PEER_CACHE: where (default /var/cache/ftpsgate-peers).
set -euo pipefail

cache=${FTPSGATE_PEER_CACHE:-/var/cache/ftpsgate-peers}
dest=$cache/pure-ftpd
if [[ -x $dest/usr/sbin/pure-ftpd && -x $dest/usr/bin/pure-pw ]]; then
  echo "pure-ftpd: present in $dest"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 777 "$tmp" # apt's download user (_apt) writes there
fetch() { (cd "$tmp" && apt-get download -q pure-ftpd pure-ftpd-common >/dev/null); }
# A fresh machine may have no package lists yet.
fetch || { apt-get update -q >/dev/null && fetch; }
mkdir -p "$dest"
for deb in "$tmp"/*.deb; do
  dpkg -x "$deb" "$dest"
done
echo "pure-ftpd: unpacked into $dest"
