#!/usr/bin/env bash
# The oldest nginx the project supports, for the tests: Debian bullseye's nginx-core 1.18 (the
# same release and the same module set as Ubuntu 22.04's `nginx` package, which is nginx-core:
# the base of vLLM's images; docs/facts/nginx.md, "Versions"). Not nginx-light: it lacks modules
# the config uses (geo).
#   bash .ci/old-nginx.sh DEST     -> prints DEST/bin/nginx, a wrapper that runs it
# It downloads three packages from Debian's archive with a private package list (the machine's
# own apt configuration is not touched), verified with Debian's archive keyring, and unpacks them
# under DEST (no install, no root needed). The tests find it in $LLM_TEST_NGINX_OLD.
set -Eeuo pipefail
dest=${1:?usage: $0 DEST}
wrapper="$dest/bin/nginx"
package=nginx-core
if [ -x "$wrapper" ] && [ "$(cat "$dest/package" 2>/dev/null)" = "$package" ] \
  && "$wrapper" -v 2>&1 | grep -q 'nginx/1\.18\.'; then
  echo "$wrapper"
  exit 0
fi
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [ ! -r "$keyring" ]; then
  echo "old-nginx: $keyring is missing: apt-get install debian-archive-keyring" >&2
  exit 1
fi
rm -rf "$dest"
mkdir -p "$dest/apt/lists/partial" "$dest/apt/cache/archives/partial" "$dest/debs" "$dest/root" \
  "$dest/bin"
cat > "$dest/apt/sources.list" <<EOF
deb [signed-by=$keyring] http://deb.debian.org/debian bullseye main
deb [signed-by=$keyring] http://deb.debian.org/debian-security bullseye-security main
EOF
: > "$dest/apt/status" # no installed packages: the candidates are bullseye's, not this machine's
apt_options=(
  -o "Dir::Etc::SourceList=$dest/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
  -o "Dir::State::Lists=$dest/apt/lists" -o "Dir::Cache=$dest/apt/cache"
  -o "Dir::State::status=$dest/apt/status" -o Debug::NoLocking=1
)
# As root, apt would hand the download to its `_apt` user, who cannot write under DEST.
if [ "$(id -u)" -eq 0 ]; then apt_options+=(-o APT::Sandbox::User=root); fi
apt-get "${apt_options[@]}" -qq update
# nginx 1.18 and the two libraries bookworm and later no longer ship. (nginx-core's other
# dependencies are dynamic modules, loaded only by `load_module`, which the config never uses.)
(cd "$dest/debs" && apt-get "${apt_options[@]}" -qq download "$package" libssl1.1 libpcre3)
for deb in "$dest"/debs/*.deb; do
  dpkg-deb -x "$deb" "$dest/root"
done
libs=$(find "$dest/root" \( -name 'libssl.so.1.1' -o -name 'libpcre.so.3' \) -printf '%h\n' | sort -u | paste -sd:)
cat > "$wrapper" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$libs" exec "$dest/root/usr/sbin/nginx" "\$@"
EOF
chmod 755 "$wrapper"
if ! "$wrapper" -v 2>&1 | grep -q 'nginx/1\.18\.'; then
  echo "old-nginx: $wrapper does not run as nginx 1.18:" >&2
  "$wrapper" -v >&2 || true
  exit 1
fi
echo "$package" > "$dest/package"
echo "$wrapper"
