"""The guest runner's own decisions, without a guest."""

from __future__ import annotations

from . import runner


def test_a_guest_kernel_dying_before_the_mount_is_told_from_a_failed_workload():
    """runner.boot boots again only when the guest kernel died in its own start-up (a TCG
    oops while bringing up vCPUs), never when the guest had reached the share."""
    oops = "[    3.566505] Oops: int3: 0000 [#2] PREEMPT SMP NOPTI\n"
    panic = "[   12.000000] Kernel panic - not syncing: Attempted to kill init!\n"
    assert runner.guest_kernel_crashed_before_mount("[    0.000000] Linux version\n" + oops)
    assert runner.guest_kernel_crashed_before_mount(panic)
    assert not runner.guest_kernel_crashed_before_mount("GUEST-MOUNTED\n" + oops)
    assert not runner.guest_kernel_crashed_before_mount("[    1.0] booting\nGUEST-ERROR mount failed\n")
