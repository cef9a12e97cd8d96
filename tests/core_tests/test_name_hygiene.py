"""Names from a hostile guest, on both daemons: every name-taking request refuses what is not
one path component, nothing outside the shared folder is reached, ``..`` of the root is the root.

A guest kernel never sends ``a/b``, ``..`` as a new name or an unterminated name; a hostile guest
can.  The checks live in ``plugins/passthrough/names.py`` and hold in every sandbox mode,
``--sandbox none`` included (these tests run with it).  LOOKUP then resolves through openat2
with RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS where the kernel has it
(``plugins/passthrough/state.py``).

Differences with the Rust daemon, asserted per ``workdir.kind`` (docs/hostile-input.md has the
table): ``RUST_ANSWERS`` lists where it answers another errno; none of them reaches outside the
share.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from virtiofsd.fuse import abi
from virtiofsd.fuse.abi import ROOT_ID, Opcode
from virtiofsd.testing import FuseReplyError

from hostile_helpers import (REPLY, fuse_error, outside, snapshot,  # noqa: F401 (fixtures)
                             still_serving)

MISSING_NUL = object()



def name_request(opcode: int, workdir, name: object, role: str = "new") -> tuple[int, bytes]:
    """The body of ``opcode`` with ``name`` where the guest chooses a name (MISSING_NUL: the
    body ends without the terminating NUL)."""
    fuse = workdir.client
    raw = b"hostile" if name is MISSING_NUL else name
    encoded = raw if name is MISSING_NUL else raw + b"\0"
    if opcode == Opcode.LOOKUP or opcode in (Opcode.UNLINK, Opcode.RMDIR):
        return workdir.nodeid, encoded
    if opcode == Opcode.MKDIR:
        return workdir.nodeid, abi.MKDIR_IN.pack(0o755, 0) + encoded
    if opcode == Opcode.MKNOD:
        return workdir.nodeid, abi.MKNOD_IN.pack(stat.S_IFIFO | 0o644, 0, 0, 0) + encoded
    if opcode == Opcode.CREATE:
        return workdir.nodeid, abi.CREATE_IN.pack(os.O_RDWR | os.O_CREAT, 0o644, 0, 0) + encoded
    if opcode == Opcode.SYMLINK:
        if name is MISSING_NUL:
            return workdir.nodeid, b"link\0target-without-nul"
        return workdir.nodeid, encoded + b"target\0"
    if opcode == Opcode.LINK:
        existing = fuse.lookup(workdir.nodeid, "existing").nodeid
        return workdir.nodeid, abi.LINK_IN.pack(existing) + encoded
    if opcode in (Opcode.RENAME, Opcode.RENAME2):
        head = (
            abi.RENAME_IN.pack(workdir.nodeid)
            if opcode == Opcode.RENAME
            else abi.RENAME2_IN.pack(workdir.nodeid, 0, 0)
        )
        if name is MISSING_NUL:
            return workdir.nodeid, head + b"existing\0unterminated"
        if role == "old":
            return workdir.nodeid, head + encoded + b"renamed\0"
        return workdir.nodeid, head + b"existing\0" + encoded
    raise AssertionError(opcode)


NAME_OPCODES = [
    Opcode.MKDIR,
    Opcode.MKNOD,
    Opcode.CREATE,
    Opcode.SYMLINK,
    Opcode.LINK,
    Opcode.RENAME,
    Opcode.RENAME2,
    Opcode.UNLINK,
    Opcode.RMDIR,
]
BAD_NAMES = {
    "dot": (b".", errno.EINVAL),
    "dotdot": (b"..", errno.EINVAL),
    "slash": (b"a/b", errno.EINVAL),
    "climbing": (b"../escape", errno.EINVAL),
    "absolute": (b"/escape", errno.EINVAL),
    "empty": (b"", errno.ENOENT),  # what the kernel answers for an empty path
    "nul-inside": (b"a\0b", errno.EINVAL),
    "no-nul": (MISSING_NUL, errno.EINVAL),
}


@pytest.fixture
def name_targets(workdir, outside: Path) -> dict[str, tuple[int, int, int, int]]:
    """Things a request with a bad name could hit: a file and a folder named like the share's
    neighbours.  Returns the snapshot of the whole tree around the share, which the test
    compares afterwards."""
    (workdir.host / "existing").write_bytes(b"x")
    (workdir.host / "a").mkdir()
    (workdir.host / "a" / "b").mkdir()
    return snapshot(workdir.session.shared_dir.parent)


#: What the Rust daemon does instead (1.13, --sandbox none; measured by these very tests).
RUST_DIES = "the Rust daemon stops answering (the connection ends) on a name without its NUL " \
            "or with one inside; ours answers EINVAL"
RUST_DIFFERS = "the Rust daemon uses the name as a path (a/b, ../x and /x reach other folders, " \
               ". and .. get EEXIST/EISDIR/EBUSY); ours refuses it with EINVAL"


def expect_reference_shortfall(request, workdir, opcode: int, name: str) -> None:
    """On the Rust daemon, mark the cases where it falls short (see docs/hostile-input.md):
    skipped when it dies (a dead reference costs a timeout and a restart), strict xfail
    otherwise, so that a Rust release that fixes them is noticed."""
    if workdir.kind != "rust" or name == "empty" or (opcode == Opcode.RMDIR and name == "dot"):
        return
    creating = (Opcode.MKDIR, Opcode.MKNOD, Opcode.CREATE, Opcode.SYMLINK)
    if name == "no-nul" or (name == "nul-inside" and opcode not in creating):
        pytest.skip(RUST_DIES)
    request.applymarker(pytest.mark.xfail(strict=True, reason=RUST_DIFFERS))


def assert_refused_and_unchanged(request, workdir, before, opcode: int, name: str,
                                 role: str = "new") -> None:
    expect_reference_shortfall(request, workdir, opcode, name)
    raw, expected = BAD_NAMES[name]
    nodeid, body = name_request(opcode, workdir, raw, role)
    assert workdir.client.request(opcode, nodeid, body, REPLY) == (expected, b"")
    assert snapshot(workdir.session.shared_dir.parent) == before


@pytest.mark.parametrize("name", list(BAD_NAMES))
@pytest.mark.parametrize("opcode", NAME_OPCODES, ids=lambda opcode: Opcode(opcode).name)
def test_bad_new_names_are_refused_and_change_nothing(
    request, workdir, name_targets, opcode: int, name: str
) -> None:
    assert_refused_and_unchanged(request, workdir, name_targets, opcode, name)


@pytest.mark.parametrize("name", ["dot", "dotdot", "slash", "climbing", "empty"])
@pytest.mark.parametrize("opcode", [Opcode.RENAME, Opcode.RENAME2], ids=["RENAME", "RENAME2"])
def test_bad_old_names_in_rename_are_refused(request, workdir, name_targets, opcode: int,
                                             name: str) -> None:
    assert_refused_and_unchanged(request, workdir, name_targets, opcode, name, role="old")


@pytest.mark.parametrize("name", ["slash", "climbing", "absolute", "empty", "nul-inside", "no-nul"])
def test_bad_lookup_names_are_refused(request, workdir, name_targets, name: str) -> None:
    assert_refused_and_unchanged(request, workdir, name_targets, Opcode.LOOKUP, name)


def test_dotdot_lookup_at_the_root_stays_at_the_root(workdir) -> None:
    fuse = workdir.client
    share = workdir.session.shared_dir
    up = fuse.lookup(ROOT_ID, "..")
    assert up.nodeid == ROOT_ID
    assert up.attr.ino == os.stat(share).st_ino
    higher = fuse.lookup(up.nodeid, "..")
    assert higher.nodeid == ROOT_ID
    names = set(fuse.listdir(higher.nodeid))
    assert names == {b".", b".."} | {os.fsencode(name) for name in os.listdir(share)}
    made = fuse.mkdir(higher.nodeid, f"made-from-dotdot-{workdir.host.name}")
    assert (share / f"made-from-dotdot-{workdir.host.name}").is_dir()
    assert made.nodeid != ROOT_ID


def test_symlinks_pointing_outside_are_never_followed(workdir, outside: Path) -> None:
    fuse, host = workdir.client, workdir.host
    os.symlink(outside / "victim", host / "to-file")
    os.symlink(outside, host / "to-folder")
    to_file = fuse.lookup(workdir.nodeid, "to-file")
    to_folder = fuse.lookup(workdir.nodeid, "to-folder")
    assert stat.S_ISLNK(to_file.attr.mode) and stat.S_ISLNK(to_folder.attr.mode)
    assert fuse_error(fuse.lookup, to_folder.nodeid, "victim") == errno.ENOTDIR
    assert fuse_error(fuse.open, to_file.nodeid, os.O_WRONLY | os.O_TRUNC) in (
        errno.EBADF,
        errno.ELOOP,
    )
    assert fuse_error(fuse.open, to_file.nodeid, os.O_RDONLY) in (errno.EBADF, errno.ELOOP)
    assert fuse_error(fuse.opendir, to_folder.nodeid) in (errno.EBADF, errno.ELOOP, errno.ENOTDIR)
    try:
        fuse.setattr(to_file.nodeid, mode=stat.S_IFREG | 0o666)
    except FuseReplyError as err:
        assert err.errno in (errno.EOPNOTSUPP, errno.EPERM, errno.EBADF)
    assert fuse_error(fuse.setattr, to_file.nodeid, size=0) in (errno.EBADF, errno.ELOOP)
    fuse.setattr(to_file.nodeid, uid=1234, gid=1234)  # chown of the link itself
    assert os.lstat(host / "to-file").st_uid == 1234
    assert os.stat(outside / "victim").st_uid == os.getuid()
    fuse.setattr(to_file.nodeid, mtime_ns=10**9)
    assert os.stat(outside / "victim").st_mtime_ns != 10**9
    assert fuse_error(fuse.mkdir, to_folder.nodeid, "planted") in (errno.ENOTDIR, errno.EBADF)
    assert not (outside / "planted").exists()


def test_opening_a_fifo_is_refused_instead_of_blocking(workdir) -> None:
    fuse, host = workdir.client, workdir.host
    os.mkfifo(host / "fifo")
    nodeid = fuse.lookup(workdir.nodeid, "fifo").nodeid
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
        assert fuse_error(fuse.open, nodeid, flags) == errno.EBADF


