#!/usr/bin/env bash
# The project's test command: installs what is missing (scripts/install-deps.sh, and the Rust
# reference daemon when it is wanted), then runs every test under tests/, including the
# real-guest tests, which boot a Linux guest under QEMU against each daemon in
# $VIRTIOFSD_GUEST_DAEMONS (default "ours,rust").
# Extra arguments go to pytest, e.g.  scripts/test.sh -m "not guest"   or   scripts/test.sh -k rust
# VIRTIOFSD_SKIP_INSTALL=1 skips the installation step (the CI entry point does it itself).
# VIRTIOFSD_TEST_TIMEOUT (seconds, default 1800) bounds the whole run, so a hung test cannot
# hang CI: pytest gets SIGTERM (reported as an interruption, processes cleaned up), then SIGKILL.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO"
export VIRTIOFSD_GUEST_DAEMONS=${VIRTIOFSD_GUEST_DAEMONS:-ours,rust}

if [[ ${VIRTIOFSD_SKIP_INSTALL:-0} != 1 ]]; then
  bash "$REPO/scripts/install-deps.sh"
  source "$REPO/scripts/common.sh"
  reference_tool=$(dirname "$REPO")/shared/tools/reference-daemons.sh
  if [[ ,$VIRTIOFSD_GUEST_DAEMONS, == *,rust,* && -z ${VIRTIOFSD_RUST_REFERENCE:-} && -f $reference_tool ]]; then
    VIRTIOFSD_RUST_REFERENCE=$(bash "$reference_tool" | awk '$1 == "rust" {print $2}')
    export VIRTIOFSD_RUST_REFERENCE
  fi
  if [[ ,$VIRTIOFSD_GUEST_DAEMONS, == *,rust,* && ! -x ${VIRTIOFSD_RUST_REFERENCE:-/var/tmp/virtiofsd-reference/rust-virtiofsd} ]]; then
    echo "test.sh: the Rust reference daemon is not available (no $reference_tool);" \
         "guest tests run against ours only" >&2
    export VIRTIOFSD_GUEST_DAEMONS=ours
  fi
  if [[ -z ${VIRTIOFSD_QEMU_BACKPORTS:-} ]]; then
    VIRTIOFSD_QEMU_BACKPORTS=$(bash "$REPO/scripts/qemu-backports.sh")
    export VIRTIOFSD_QEMU_BACKPORTS
  fi
fi

status=0
timeout --kill-after=60 "${VIRTIOFSD_TEST_TIMEOUT:-1800}" \
  "$PYTEST" tests -p no:cacheprovider --durations=10 "$@" || status=$?
if ((status == 124)); then
  echo "test.sh: the test run exceeded ${VIRTIOFSD_TEST_TIMEOUT:-1800} s and was stopped" >&2
fi
if ((status == 5)); then
  # "No tests collected" always means a broken selection or collection here: fail loudly.
  echo "test.sh: pytest collected no tests" >&2
fi
exit "$status"
