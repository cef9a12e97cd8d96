#!/usr/bin/env bash
# Fetches QEMU 10.0 from Debian 12's bookworm-backports into a cache folder, without installing it
# (the machine's own QEMU 7.2 stays), and prints the path of a wrapper that runs it with its own
# firmware.  The guest tests boot the main workload under both versions, since the daemon must
# handle what each sends.  Idempotent; needs root (apt-get).
# Usage: scripts/qemu-backports.sh [CACHE_DIR]      (default /var/tmp/qemu-backports)
set -euo pipefail
cache=${1:-/var/tmp/qemu-backports}
wrapper=$cache/qemu-system-x86_64
if [[ ! -x $wrapper ]]; then
  mkdir -p "$cache/apt/lists/partial" "$cache/debs"
  # The Debian archive this machine already uses (first stanza of its sources), suite backports.
  sed -n '0,/^$/p' /etc/apt/sources.list.d/debian.sources |
    sed 's/^Suites:.*/Suites: bookworm-backports/' >"$cache/apt/backports.sources"
  opts=(-o Dir::Etc::sourcelist="$cache/apt/backports.sources" -o Dir::Etc::sourceparts=/dev/null
        -o Dir::State::Lists="$cache/apt/lists" -o Dir::Cache::archives="$cache/apt")
  apt-get "${opts[@]}" update -qq >/dev/null
  (cd "$cache/debs" &&
   apt-get "${opts[@]}" download qemu-system-x86/bookworm-backports \
     qemu-system-common/bookworm-backports qemu-system-data/bookworm-backports \
     seabios/bookworm-backports >/dev/null 2>&1)
  rm -rf "$cache/root"
  for deb in "$cache"/debs/*.deb; do dpkg -x "$deb" "$cache/root"; done
  share=$cache/root/usr/share
  cat >"$wrapper" <<WRAPPER
#!/bin/sh
exec $cache/root/usr/bin/qemu-system-x86_64 -L $share/qemu -L $share/seabios "\$@"
WRAPPER
  chmod +x "$wrapper"
fi
"$wrapper" --version | head -1 >&2
echo "$wrapper"
