"""One guest boot per daemon with --posix-acl and an xattr map, the host's own tools (attr,
acl, libcap2-bin, cp, tar) working on the share; each check of scripts/xattrs.sh is a test, and
the host side then looks at what was stored under which name.

The map: the guest's ``security.selinux`` and ``security.capability`` (the README's SELinux
recipe, and the CVE-2021-20263 case), and its ``trusted.*``, are stored under
``trusted.virtiofs.``; the host's other ``trusted.*`` and its ``user.host.*`` are hidden;
everything else, the ACLs included, passes unchanged.

A second device (``xattrnever``) serves another folder with the same options and ``--cache
never``, for the CVE-2021-20263 sequence (setcap, write, getcap).  On the main share the guest
kernel removes ``security.capability`` itself before a cached write (``file_remove_privs``
sends a REMOVEXATTR, which the map renames), with or without ``--killpriv-v2``; a direct-I/O
write skips that, so there the capability is cleared only by the daemon's guard for the
remapped name (CapabilityGuard, docs/xattrs.md).
"""

from __future__ import annotations

import os
import pathlib
import re

import pytest


from . import runner

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "xattrs.sh"
GUEST_CHECKS = re.findall(r"^(?:check|expect|refuse)\s+(\w+)", SCRIPT.read_text(), re.MULTILINE)
BOOT_TIMEOUT = float(os.environ.get("VIRTIOFSD_GUEST_TIMEOUT", "600"))
NEVER_TAG = "xattrnever"  # mounted by scripts/xattrs.sh

XATTR_MAP = """
:prefix:all:security.selinux:trusted.virtiofs.:
/prefix/all/security.capability/trusted.virtiofs./
:prefix:all:trusted.:trusted.virtiofs.:
:bad:server::trusted.:
:bad:server::user.host.:
:ok:all:::
"""


#: trusted.* needs CAP_SYS_ADMIN, which both daemons keep only when told (the Rust README's
#: recipe).
DAEMON_ARGS = ("--posix-acl", f"--xattrmap={XATTR_MAP}", "--modcaps=+sys_admin")


def run_xattr_workload(daemon_name: str, root: pathlib.Path) -> tuple[runner.BootResult,
                                                                       pathlib.Path]:
    share = root / "share"
    share.mkdir()
    never_share = root / "share-never"
    never_share.mkdir()
    hosted = share / "hosted"
    hosted.write_text("the host's\n")
    os.setxattr(hosted, "user.host.secret", b"1")
    os.setxattr(hosted, "trusted.hostonly", b"1")
    os.setxattr(hosted, "user.visible", b"yes")
    never = runner.ExtraShare(NEVER_TAG, never_share,
                              (*DAEMON_ARGS, "--cache", "never"))
    result = runner.boot(daemon_name, share, runner.guest_script("xattrs.sh"),
                         daemon_args=list(DAEMON_ARGS), timeout=BOOT_TIMEOUT,
                         log_dir=root / "logs", host_root=True, extra_shares=[never])
    return result, share / "xattrs"


@pytest.fixture
def xattr_boot(daemon_name: str, boot_once, tmp_path_factory: pytest.TempPathFactory):
    return boot_once(("xattrs", daemon_name),
                     lambda: run_xattr_workload(daemon_name,
                                                tmp_path_factory.mktemp(f"xattrs-{daemon_name}")))


@pytest.mark.parametrize("check_name", GUEST_CHECKS)
def test_guest_check(xattr_boot, check_name: str) -> None:
    result, _ = xattr_boot
    check = result.check(check_name)
    assert check is not None, (f"the guest never reported {check_name!r}\n"
                               f"{result.console_tail(15)}")
    assert check.ok, f"guest check {check_name} failed: {check.detail}"


def stored(path: pathlib.Path) -> dict[bytes, bytes]:
    return {os.fsencode(name): os.getxattr(path, name, follow_symlinks=False)
            for name in os.listxattr(path, follow_symlinks=False)}


def test_host_stores_guest_names_under_the_map(xattr_boot) -> None:
    _, work = xattr_boot
    on_file = stored(work / "file")
    assert on_file[b"user.colour"] == b"blue"
    assert on_file[b"trusted.virtiofs.security.selinux"] == b"guest_label"
    assert b"security.selinux" not in on_file
    assert stored(work / "link")[b"trusted.virtiofs.trusted.kind"] == b"link"
    assert stored(work / "fifo")[b"trusted.virtiofs.trusted.kind"] == b"fifo"
    assert b"trusted.virtiofs.security.capability" not in stored(work / "capped")
    assert b"trusted.virtiofs.security.capability" not in stored(
        work.parent.parent / "share-never" / "capped")


def test_host_sees_the_guests_acls(xattr_boot) -> None:
    _, work = xattr_boot
    assert b"system.posix_acl_default" in stored(work / "inherit" / "sub")
    assert b"system.posix_acl_access" in stored(work / "inherit" / "new")


NO_XATTR_WORKLOAD = """
check no_xattr_file sh -c "echo data > /mnt/plain"
refuse no_xattr_set_1 in_host setfattr -n user.a -v 1 /mnt/plain
refuse no_xattr_set_2 in_host setfattr -n user.b -v 2 /mnt/plain
refuse no_xattr_get_1 in_host getfattr --absolute-names -n user.a /mnt/plain
refuse no_xattr_get_2 in_host getfattr --absolute-names -n user.b /mnt/plain
"""


def test_without_xattr_the_guest_stops_asking(tmp_path: pathlib.Path) -> None:
    """Without --xattr every xattr opcode is ENOSYS, which the Linux guest remembers: the
    second setfattr and getfattr never reach the daemon (ours only: the count comes from its
    debug log)."""
    share = tmp_path / "share"
    share.mkdir()
    result = runner.boot("ours", share, runner.guest_script(prelude=NO_XATTR_WORKLOAD),
                         daemon_args=["--log-level", "debug"], timeout=BOOT_TIMEOUT,
                         log_dir=tmp_path / "logs", host_root=True)
    failed = [check for check in result.checks if not check.ok]
    assert len(result.checks) == 5 and not failed, (failed, result.console_tail(15))
    assert len(re.findall(r": SETXATTR unique=", result.daemon_log)) == 1
    assert len(re.findall(r": GETXATTR unique=", result.daemon_log)) == 1
