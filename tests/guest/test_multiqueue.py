"""What needs a guest kernel newer than Debian 12's 6.1, in one boot of Debian 13's Linux 6.12:
several request queues, and ``--allow-mmap`` with ``--cache never``.

Our daemon runs with ``--num-request-queues 4`` behind QEMU's
``vhost-user-fs-pci,num-request-queues=4``, 4 vCPUs (TCG, one host thread each) and a reader
pinned to each vCPU.  The daemon logs every request with its queue (``--log-level debug``), so
the host sees which rings carried the reads.  The Rust daemon offers one request queue only.

A second device (``fsmmap``) is served with ``--cache never --allow-mmap``, next to the first
one's ``--cache never`` alone: Linux 6.6+ maps direct-I/O files shared and writable only when
the daemon negotiated DIRECT_IO_ALLOW_MMAP, so the same program on the same kernel is refused
on one and writes through the daemon on the other (a 6.1 guest refuses both; the negotiation
itself is proven for both daemons through the front-end, test_daemon_options.py).
"""

from __future__ import annotations

import re

import pytest

from . import runner

QUEUES = 4
READ_BYTES = 256 * 1024
REQUEST_LINE = re.compile(r"queue (\d+): READ unique=")
MAPPED, MAPPED_BYTES = "mapped.bin", 8192


@pytest.fixture(scope="module")
def multiqueue_boot(tmp_path_factory, boot_once):
    def run() -> runner.BootResult:
        root = tmp_path_factory.mktemp("multiqueue")
        share = root / "share"
        share.mkdir()
        for cpu in range(QUEUES):
            (share / f"reader{cpu}.bin").write_bytes(bytes([cpu]) * READ_BYTES)
        mmap_share = root / "mmap-share"
        mmap_share.mkdir()
        for folder in (share, mmap_share):
            (folder / MAPPED).write_bytes(bytes(MAPPED_BYTES))
        script = runner.guest_script("multiqueue.sh", "allow_mmap.sh")
        result = runner.boot("ours", share, script, timeout=300,
                             daemon_args=["--num-request-queues", str(QUEUES), "--cache", "never",
                                          "--log-level", "debug"],
                             kernel="trixie", cpus=QUEUES, request_queues=QUEUES,
                             log_dir=root / "logs", host_root=True,
                             extra_shares=[runner.ExtraShare("fsmmap", mmap_share,
                                                             ("--cache", "never", "--allow-mmap"))])
        return result, share, mmap_share
    return boot_once(("multiqueue", "ours"), run)


def test_guest_sees_four_cpus_and_reads_everything(multiqueue_boot) -> None:
    result, _, _ = multiqueue_boot
    assert result.values.get("guest_cpus") == str(QUEUES), result.console_tail()
    check = result.check("readers_done")
    assert check is not None and check.ok, result.console_tail()


def test_reads_are_served_on_several_request_queues(multiqueue_boot) -> None:
    result, _, _ = multiqueue_boot
    queues = {int(match) for match in REQUEST_LINE.findall(result.daemon_log)}
    assert queues <= set(range(1, QUEUES + 1)), "queue 0 is the hiprio queue"
    assert len(queues) >= 2, f"READs seen only on queues {sorted(queues)}"


def test_allow_mmap_lets_the_guest_map_direct_io_files_shared(multiqueue_boot) -> None:
    """Without --allow-mmap a 6.12 guest refuses a shared writable mapping of a --cache never
    file (ENODEV) and nothing reaches the host; with it the mapping works and the write, flushed
    by msync, reaches the host file through the daemon."""
    result, share, mmap_share = multiqueue_boot
    assert result.values.get("mmap_never") == "ENODEV", result.console_tail()
    assert (share / MAPPED).read_bytes() == bytes(MAPPED_BYTES)
    assert result.values.get("mmap_never_allow_mmap") == "mapped", result.console_tail()
    assert (mmap_share / MAPPED).read_bytes()[100:110] == b"via-mmap!!"


def test_daemons_exit_zero(multiqueue_boot) -> None:
    result, _, _ = multiqueue_boot
    assert "GUEST-ERROR" not in result.console, result.console_tail()
    assert result.daemon_returncode == 0, runner.tail(result.daemon_log, 20)
    assert result.extra_daemon_returncodes == {"fsmmap": 0}
