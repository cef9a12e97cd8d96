"""The host-root harness: a guest booted with ``host_root=True`` runs the host's own programs
(here the host's Python) on the virtio-fs share, and cannot write to the host through 9p.

Other guest suites (conformance, xattrs, escapes) rely on this to use real tools in a guest
whose own userland is only busybox; this boot proves the harness itself, once, against ours.
"""

from __future__ import annotations

import pathlib
import sys

from . import runner

WORKLOAD = """
value host_python in_host python3 -c 'import sys; print(sys.version_info[:2])'
check host_python_writes_share in_host python3 -c 'open("/mnt/from-host-python", "w").write("hello")'
expect host_python_reads_share hello in_host python3 -c 'print(open("/mnt/from-host-python").read())'
refuse host_root_is_read_only in_host sh -c 'echo x > /usr/virtiofsd-host-root-write-probe'
check guest_tmp_is_writable in_host sh -c 'echo x > /tmp/probe'
"""


def test_host_programs_run_on_the_share(tmp_path: pathlib.Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    result = runner.boot("ours", share, runner.guest_script(prelude=WORKLOAD), timeout=240,
                         log_dir=tmp_path / "logs", host_root=True)
    assert "GUEST-HOST-ROOT" in result.console, result.console_tail()
    failed = [check for check in result.checks if not check.ok]
    assert not failed, failed
    assert {check.name for check in result.checks} == {
        "host_python_writes_share", "host_python_reads_share", "host_root_is_read_only",
        "guest_tmp_is_writable"}
    assert result.values["host_python"] == str(tuple(sys.version_info[:2]))
    assert (share / "from-host-python").read_text() == "hello"
    assert not pathlib.Path("/usr/virtiofsd-host-root-write-probe").exists()
