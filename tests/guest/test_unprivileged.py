"""A guest mounts a share served by a daemon that an ordinary host user started (the rootless
recipe of the Rust README: ``--sandbox none`` and ``--translate-uid/gid map:0:<own id>:1``).

Guest root is the user on the host: what it creates lands with the user's ids and shows as
0:0 in the guest; a chown to an id the user does not own, and a creation by a guest user the
map does not cover, fail cleanly (EPERM) and the share keeps working.  One boot per daemon.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from support import unprivileged

from . import runner

WORKLOAD = """
check root_creates touch /mnt/by-root
expect root_sees_itself_as_owner 0:0 stat -c %u:%g /mnt/by-root
check root_mkdir mkdir /mnt/open
check chmod_works chmod 0777 /mnt/open
check chown_to_a_mapped_id chown 0:0 /mnt/by-root
expect chown_outside_the_map_is_eperm "chown: /mnt/by-root: Operation not permitted" \
    sh -c 'if chown 5 /mnt/by-root 2>&1; then exit 1; fi' 
refuse guest_user_outside_the_map_cannot_create as_user "touch /mnt/open/by-user"
check share_still_serves sh -c 'echo after > /mnt/after && cat /mnt/after'
"""

CHECKS = ("root_creates", "root_sees_itself_as_owner", "root_mkdir", "chmod_works",
          "chown_to_a_mapped_id", "chown_outside_the_map_is_eperm",
          "guest_user_outside_the_map_cannot_create", "share_still_serves")


@pytest.fixture(scope="module")
def user():
    return unprivileged.ordinary_user()


def test_rootless_daemon_maps_guest_root_onto_its_user(daemon_name: str, user, tmp_path) -> None:
    if daemon_name == "ours":
        command = unprivileged.daemon_command_as(user, unprivileged.daemon_tree())
    else:
        command = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                   *runner.daemon_command("rust")]
    share = unprivileged.user_folder(user, "vfs-rootless-share-")
    try:
        result = runner.boot(
            daemon_name, share, runner.guest_script(prelude=WORKLOAD), timeout=240,
            log_dir=tmp_path, command=command, socket_owner=(user.pw_uid, user.pw_gid),
            daemon_args=["--sandbox", "none",
                         "--translate-uid", f"map:0:{user.pw_uid}:1",
                         "--translate-gid", f"map:0:{user.pw_gid}:1"])
        reported = {check.name: check for check in result.checks}
        assert sorted(reported) == sorted(CHECKS), result.console_tail()
        failed = [check for check in result.checks if not check.ok]
        assert not failed, f"{failed}\n{result.daemon_log[-3000:]}"
        for name in ("by-root", "open", "after"):
            st = os.lstat(share / name)
            assert (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid), name
        assert not (share / "open" / "by-user").exists()
        processes = subprocess.run(["ps", "-o", "user=", "-u", str(user.pw_uid)],
                                   capture_output=True, text=True).stdout
        assert processes.strip() == "", f"the daemon outlived the guest: {processes}"
    finally:
        shutil.rmtree(share, ignore_errors=True)
