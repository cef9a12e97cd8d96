"""Several request queues under a guest kernel that uses them (Debian 13's Linux 6.12).

One boot of our daemon with ``--num-request-queues 4`` behind QEMU's
``vhost-user-fs-pci,num-request-queues=4``, 4 vCPUs (TCG, one host thread each) and a reader
pinned to each vCPU.  The daemon logs every request with its queue (``--log-level debug``), so
the host sees which rings carried the reads.  The Rust daemon offers one request queue only.
"""

from __future__ import annotations

import re

import pytest

from . import runner

QUEUES = 4
READ_BYTES = 256 * 1024
REQUEST_LINE = re.compile(r"queue (\d+): READ unique=")


@pytest.fixture(scope="module")
def multiqueue_boot(tmp_path_factory, boot_once):
    def run() -> runner.BootResult:
        root = tmp_path_factory.mktemp("multiqueue")
        share = root / "share"
        share.mkdir()
        for cpu in range(QUEUES):
            (share / f"reader{cpu}.bin").write_bytes(bytes([cpu]) * READ_BYTES)
        script = runner.guest_script("multiqueue.sh")
        return runner.boot("ours", share, script, timeout=300,
                           daemon_args=["--num-request-queues", str(QUEUES), "--cache", "never",
                                        "--log-level", "debug"],
                           kernel="trixie", cpus=QUEUES, request_queues=QUEUES,
                           log_dir=root / "logs")
    return boot_once(("multiqueue", "ours"), run)


def test_guest_sees_four_cpus_and_reads_everything(multiqueue_boot) -> None:
    result = multiqueue_boot
    assert result.values.get("guest_cpus") == str(QUEUES), result.console_tail()
    check = result.check("readers_done")
    assert check is not None and check.ok, result.console_tail()


def test_reads_are_served_on_several_request_queues(multiqueue_boot) -> None:
    queues = {int(match) for match in REQUEST_LINE.findall(multiqueue_boot.daemon_log)}
    assert queues <= set(range(1, QUEUES + 1)), "queue 0 is the hiprio queue"
    assert len(queues) >= 2, f"READs seen only on queues {sorted(queues)}"
