#!/usr/bin/env bash
# A first look: share a host folder with a Linux guest through the virtio-fs daemon.
# Installs the dependencies, creates a temporary folder with a file, starts the daemon on it,
# boots a small guest (QEMU, no KVM needed) that mounts the share, lists it, reads the file and
# writes one back, then shows that file from the host side.
#   scripts/demo.sh               our Python daemon
#   DAEMON=rust scripts/demo.sh   the Rust reference virtiofsd, for comparison
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
daemon=${DAEMON:-ours}

echo "== installing dependencies (Debian 12, needs root) =="
bash "$REPO/scripts/install-deps.sh"
if [[ $daemon == rust && -z ${VIRTIOFSD_RUST_REFERENCE:-} ]]; then
  reference_tool=$(dirname "$REPO")/shared/tools/reference-daemons.sh
  if [[ -f $reference_tool ]]; then
    export VIRTIOFSD_RUST_REFERENCE=$(bash "$reference_tool" | awk '$1 == "rust" {print $2}')
  fi
fi
exec "$PYTHON" "$REPO/scripts/demo.py" "$daemon"
