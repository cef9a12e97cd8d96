#!/usr/bin/env bash
# Installs everything the daemon, its tests and the real-guest harness need on Debian 12.
# Idempotent: packages already present are not reinstalled and apt-get update runs at most once.
# Needs root for apt-get.  Usage: scripts/install-deps.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

packages=(
  qemu-system-x86   # the guest's virtual machine (TCG; no KVM needed)
  busybox-static    # the guest's whole userland
  cpio              # initramfs inspection by hand (the harness writes cpio itself)
  libcap-dev        # python-prctl builds against it
  gcc libc6-dev python3-dev  # python-prctl is a C extension with no wheel; the bench builds a static tool
  python3 python3-venv python3-pip
  strace            # the O_DIRECT test watches the daemon's open flags
  attr acl libcap2-bin  # guest tests of --xattr/--posix-acl run setfattr, setfacl, setcap from the host root
  uidmap            # newuidmap/newgidmap: --uid-map/--gid-map and unshare --map-auto as an ordinary user
  stress-ng         # the conformance boot runs its file-system stressors in the guest (host root)
  ca-certificates
)

missing=()
for package in "${packages[@]}"; do
  if [[ $(dpkg-query -W -f='${Status}' "$package" 2>/dev/null) != "install ok installed" ]]; then
    missing+=("$package")
  fi
done
# The guest kernel is fetched with apt-get download, which needs package lists even when
# every package above is already installed (container images often ship without lists).
if ((${#missing[@]})) || ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
  if ((EUID != 0)); then
    echo "install-deps: need root to install: ${missing[*]:-(package lists)}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
fi
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  source "$REPO/scripts/common.sh"
fi

# Debian's own python3 refuses pip installs into the system (PEP 668): use a venv then.
if [[ $PYTHON != "$REPO/.venv/bin/python" ]] &&
   "$PYTHON" -c 'import sys, sysconfig, pathlib; sys.exit(0 if sys.prefix == sys.base_prefix and pathlib.Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED").exists() else 1)'; then
  echo "install-deps: $PYTHON is externally managed; creating $REPO/.venv"
  "$PYTHON" -m venv "$REPO/.venv"
  source "$REPO/scripts/common.sh"
fi
"$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e "$REPO[test]"
echo "install-deps: ready ($("$PYTHON" --version), $(qemu-system-x86_64 --version | head -1))"
