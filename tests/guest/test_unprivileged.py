"""A guest mounts a share served by a daemon that an ordinary host user started, in each
rootless recipe of the Rust README.  One boot per recipe and daemon.

``--sandbox none`` with ``--translate-uid/gid map:0:<own id>:1``: guest root is the user on the
host: what it creates lands with the user's ids and shows as 0:0 in the guest; a chown to an id
the user does not own, and a creation by a guest user the map does not cover, fail cleanly
(EPERM) and the share keeps working.

The two user-namespace recipes, where the user's subordinate ids (/etc/subuid, /etc/subgid) give
the guest a whole range of ids: the namespace sandbox with ``--uid-map/--gid-map
:0:100000:65536:`` (guest id N is host 100000+N), and ``unshare -r --map-auto -- virtiofsd
--sandbox chroot`` (guest root is the user, guest id N >= 1 is host 100000+N-1).  Guest root and
a guest user create files that land with the mapped host ids, a chown inside the range works,
one outside it fails with the kernel's EINVAL and the share keeps working.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

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


MAPPED_WORKLOAD = """
check root_creates touch /mnt/by-root
expect root_sees_itself_as_owner 0:0 stat -c %u:%g /mnt/by-root
check root_mkdir mkdir /mnt/open
check chmod_works chmod 0777 /mnt/open
check user_creates as_user "touch /mnt/open/by-user"
expect user_sees_itself_as_owner 1000:1000 stat -c %u:%g /mnt/open/by-user
check chown_inside_the_range chown 5:7 /mnt/by-root
expect chown_shows_in_the_guest 5:7 stat -c %u:%g /mnt/by-root
expect chown_outside_the_range_is_einval "chown: /mnt/by-root: Invalid argument" \
    sh -c 'if chown 70000 /mnt/by-root 2>&1; then exit 1; fi'
expect owner_unchanged_after_the_refusal 5:7 stat -c %u:%g /mnt/by-root
check share_still_serves sh -c 'echo after > /mnt/after && cat /mnt/after'
"""

MAPPED_CHECKS = ("root_creates", "root_sees_itself_as_owner", "root_mkdir", "chmod_works",
                 "user_creates", "user_sees_itself_as_owner", "chown_inside_the_range",
                 "chown_shows_in_the_guest", "chown_outside_the_range_is_einval",
                 "owner_unchanged_after_the_refusal", "share_still_serves")

BASE = unprivileged.SUBORDINATE_BASE


def _namespace_maps(user, daemon_command: list[str]):
    """--uid-map/--gid-map :0:100000:65536:; the share belongs to the new namespace root."""
    maps = f":0:{BASE}:{unprivileged.SUBORDINATE_COUNT}:"
    return ([*unprivileged.as_user(user), *daemon_command],
            ["--uid-map", maps, "--gid-map", maps], (BASE, BASE), lambda guest_id: BASE + guest_id)


def _unshare_chroot(user, daemon_command: list[str]):
    """unshare -r --map-auto -- virtiofsd --sandbox chroot; namespace root is the user."""
    return ([*unprivileged.as_user(user), "unshare", "-r", "--map-auto", "--", *daemon_command],
            ["--sandbox", "chroot"], (user.pw_uid, user.pw_gid),
            lambda guest_id: (user.pw_uid if guest_id == 0 else BASE + guest_id - 1))


@pytest.mark.parametrize("recipe", [_namespace_maps, _unshare_chroot],
                         ids=["namespace-uid-map", "unshare-map-auto-chroot"])
def test_rootless_recipes_with_subordinate_ids(daemon_name: str, recipe: Callable, user,
                                               tmp_path) -> None:
    unprivileged.require_newuidmap()
    unprivileged.give_subordinate_ids(user)
    if daemon_name == "ours":
        daemon = unprivileged.daemon_command_from(unprivileged.daemon_tree())
    else:
        daemon = runner.daemon_command("rust")
    command, daemon_args, share_owner, host_id = recipe(user, daemon)
    share = unprivileged.user_folder(user, "vfs-rootless-share-")
    os.chown(share, *share_owner)
    try:
        result = runner.boot(
            daemon_name, share, runner.guest_script(prelude=MAPPED_WORKLOAD), timeout=240,
            log_dir=tmp_path, command=command, socket_owner=(user.pw_uid, user.pw_gid),
            daemon_args=daemon_args)
        reported = {check.name: check for check in result.checks}
        assert sorted(reported) == sorted(MAPPED_CHECKS), result.console_tail()
        failed = [check for check in result.checks if not check.ok]
        assert not failed, f"{failed}\n{result.daemon_log[-3000:]}"
        expected = {"by-root": (host_id(5), host_id(7)), "open": (host_id(0), host_id(0)),
                    "open/by-user": (host_id(1000), host_id(1000)),
                    "after": (host_id(0), host_id(0))}
        for name, ids in expected.items():
            st = os.lstat(share / name)
            assert (st.st_uid, st.st_gid) == ids, name
        for uid in (user.pw_uid, BASE):
            processes = subprocess.run(["ps", "-o", "user=", "-u", str(uid)],
                                       capture_output=True, text=True).stdout
            assert processes.strip() == "", f"the daemon outlived the guest: {processes}"
    finally:
        shutil.rmtree(share, ignore_errors=True)
