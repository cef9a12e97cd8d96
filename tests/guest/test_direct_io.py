"""O_DIRECT from the guest, with and without --allow-direct-io: two small boots per daemon.

What the Rust reference does (and so what is asserted here, measured on Debian 12, ext4):

* without the flag the daemon drops O_DIRECT when it opens the host file, so guest direct I/O
  goes through the host page cache and even an unaligned O_DIRECT write succeeds;
* with the flag the host file is opened O_DIRECT, so the host filesystem's alignment rule
  applies and the same unaligned write fails with EINVAL in the guest.

Aligned direct reads and writes work in both cases.  The daemon runs under strace, so the
host side can also check the open flags themselves.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pathlib
import re
import shutil
import tempfile

import pytest

from . import runner

PATTERN = bytes(range(256)) * 256
UNALIGNED_OFFSET, UNALIGNED_LENGTH = 20000, 1000
DIRECT_OPEN = re.compile(r"\bopen(?:at2?)?\(.*\bO_DIRECT\b(?!ORY)")
CHECKS = ("direct_read", "direct_write", "direct_write_size")


def host_enforces_direct_io_alignment(directory: pathlib.Path) -> bool:
    """Whether an unaligned O_DIRECT write fails on the host filesystem under ``directory``."""
    with tempfile.NamedTemporaryFile(dir=directory) as probe:
        probe.write(PATTERN)
        probe.flush()
        try:
            descriptor = os.open(probe.name, os.O_WRONLY | os.O_DIRECT)
        except OSError as error:
            if error.errno == errno.EINVAL:
                return False
            raise
        try:
            os.pwrite(descriptor, bytes(UNALIGNED_LENGTH), UNALIGNED_OFFSET)
        except OSError as error:
            return error.errno == errno.EINVAL
        finally:
            os.close(descriptor)
        return False


def run_direct_workload(daemon_name: str, allowed: bool, root: pathlib.Path):
    share = root / "share"
    share.mkdir()
    (share / "direct.bin").write_bytes(PATTERN)
    trace = root / "strace.txt"
    wrapper = []
    if shutil.which("strace"):
        wrapper = ["strace", "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(trace)]
    result = runner.boot(
        daemon_name, share, runner.guest_script("direct_io.sh"),
        daemon_args=["--allow-direct-io"] if allowed else [],
        wrapper=wrapper, timeout=180, log_dir=root / "logs",
    )
    return allowed, result, share, trace if wrapper else None


@pytest.fixture(params=[False, True], ids=["default", "allow-direct-io"])
def direct_boot(request, daemon_name: str, boot_once, tmp_path_factory: pytest.TempPathFactory):
    allowed = request.param
    variant = "allowed" if allowed else "default"
    return boot_once(
        ("direct", daemon_name, allowed),
        lambda: run_direct_workload(daemon_name, allowed, tmp_path_factory.mktemp(f"direct-{daemon_name}-{variant}")),
    )


@pytest.mark.parametrize("check_name", CHECKS)
def test_guest_direct_io_check(direct_boot, check_name: str) -> None:
    _, result, _, _ = direct_boot
    check = result.check(check_name)
    assert check is not None, f"guest never reported {check_name}\n{result.console_tail(15)}"
    assert check.ok, f"guest check {check_name} failed: {check.detail}"


def test_guest_direct_read_returns_host_data(direct_boot) -> None:
    _, result, _, _ = direct_boot
    assert result.values.get("direct_read_sha256") == hashlib.sha256(PATTERN).hexdigest()


def test_unaligned_direct_write_follows_the_flag(direct_boot) -> None:
    allowed, result, share, _ = direct_boot
    if not host_enforces_direct_io_alignment(share):
        pytest.skip("the host filesystem accepts unaligned O_DIRECT writes; nothing to tell apart")
    outcome = result.values.get("unaligned_write", "")
    if allowed:
        assert outcome.endswith("exit 1") and "Invalid argument" in outcome, (
            f"with --allow-direct-io the host file must be opened O_DIRECT, so an unaligned "
            f"direct write must fail with EINVAL; the guest saw: {outcome}"
        )
    else:
        assert outcome.endswith("exit 0"), (
            f"without --allow-direct-io O_DIRECT must be dropped on the host, so an unaligned "
            f"direct write must succeed; the guest saw: {outcome}"
        )


def test_host_file_after_direct_writes(direct_boot) -> None:
    allowed, _, share, _ = direct_boot
    expected = bytearray(PATTERN)
    expected[4096:12288] = bytes(8192)
    if not allowed or not host_enforces_direct_io_alignment(share):
        expected[UNALIGNED_OFFSET:UNALIGNED_OFFSET + UNALIGNED_LENGTH] = bytes(UNALIGNED_LENGTH)
    assert (share / "direct.bin").read_bytes() == bytes(expected)


def test_host_open_flags_follow_the_flag(direct_boot) -> None:
    allowed, _, _, trace = direct_boot
    if trace is None:
        pytest.skip("strace is not installed")
    direct_opens = [line for line in trace.read_text().splitlines() if DIRECT_OPEN.search(line)]
    if allowed:
        assert direct_opens, "with --allow-direct-io no host file was opened with O_DIRECT"
    else:
        assert not direct_opens, f"without --allow-direct-io the daemon still opened O_DIRECT: {direct_opens}"


def test_daemon_exits_zero(direct_boot) -> None:
    _, result, _, _ = direct_boot
    assert result.daemon_returncode == 0, runner.tail(result.daemon_log, 20)
