"""The shared inode store under each strategy (entry points ``never``, ``prefer``, ``mandatory``),
the descriptor budget and the mount-fd table."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from importlib import metadata

from virtiofsd.config import Config, Sandbox
from virtiofsd.errors import ConfigError, FuseError
from virtiofsd.manager import GROUP_INODE_STORE
from virtiofsd.sys import ffi
from virtiofsd_plugins.inode_handles import never
from virtiofsd_plugins.inode_handles.budget import FdBudget, headroom_for
from virtiofsd_plugins.inode_handles.mount_fds import MountFds, mount_points
from virtiofsd_plugins.inode_handles.store import O_PATH_FLAGS, HandleUse, InodeKey, InodeStore

ROOT = 1
STRATEGIES = ("never", "prefer", "mandatory")


def make_store(name, shared_dir):
    """The store the entry point ``name`` of the inode-store group builds for ``shared_dir``."""
    (entry_point,) = metadata.entry_points(group=GROUP_INODE_STORE, name=name)
    return entry_point.load().virtiofsd_make_inode_store(
        config=Config(shared_dir=str(shared_dir), sandbox=Sandbox.NONE))


@pytest.fixture(params=STRATEGIES)
def store(request, tmp_path):
    made = make_store(request.param, tmp_path)
    yield made
    made.close()


def _claim(store, folder, name):
    return store.claim(os.open(name, O_PATH_FLAGS, dir_fd=folder))[0]


def test_root_is_node_one_and_an_o_path_descriptor(store, tmp_path):
    root = store.get(ROOT)
    assert root.is_dir and root.reopenable
    mnt_id = ffi.statx(root.fd, b"", ffi.AT_EMPTY_PATH).mnt_id
    assert root.key == InodeKey(os.stat(tmp_path).st_dev, os.stat(tmp_path).st_ino, mnt_id)
    assert mnt_id > 0
    with pytest.raises(OSError) as info:
        os.read(root.fd, 1)
    assert info.value.errno == errno.EBADF  # O_PATH: no I/O through it


def test_missing_shared_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        never.virtiofsd_make_inode_store(
            config=Config(shared_dir=str(tmp_path / "missing"), sandbox=Sandbox.NONE))


def test_same_inode_same_node_and_extra_descriptor_closed(store, tmp_path):
    (tmp_path / "file").touch()
    first = _claim(store, store.root.fd, "file")
    fd = os.open("file", O_PATH_FLAGS, dir_fd=store.root.fd)
    second, _ = store.claim(fd)
    assert second is first and first.refcount == 2
    with pytest.raises(OSError):
        os.fstat(fd)  # the duplicate descriptor was closed
    assert len(store) == 2


def test_unknown_node_is_ebadf(store):
    with pytest.raises(FuseError) as info:
        store.get(42)
    assert info.value.errno == errno.EBADF


def test_forget_saturates_and_removes(store, tmp_path):
    (tmp_path / "file").touch()
    inode = _claim(store, store.root.fd, "file")
    fd = int(inode.fd)
    store.forget(inode.nodeid, 10)
    assert inode.nodeid not in store and store.refcount(inode.nodeid) == 0
    del inode
    with pytest.raises(OSError):
        os.fstat(fd)  # the last reference is gone: the descriptor is closed
    store.forget(12345, 1)  # unknown ids are ignored


def test_node_ids_are_not_reused(store, tmp_path):
    (tmp_path / "file").touch()
    first = _claim(store, store.root.fd, "file").nodeid
    store.forget(first, 1)
    assert _claim(store, store.root.fd, "file").nodeid > first


def test_root_survives_forget_and_clear(store, tmp_path):
    (tmp_path / "file").touch()
    child = _claim(store, store.root.fd, "file").nodeid
    store.forget(ROOT, 2**64 - 1)
    assert store.get(ROOT) is store.root
    store.clear()
    assert ROOT in store and child not in store and len(store) == 1
    assert store.refcount(ROOT) == 2
    assert _claim(store, store.root.fd, ".").nodeid == ROOT


def test_forget_many(store, tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).touch()
    a = _claim(store, store.root.fd, "a").nodeid
    b = _claim(store, store.root.fd, "b").nodeid
    store.forget_many([(a, 1), (b, 0), (999, 1)])
    assert a not in store and store.refcount(b) == 1


def test_concurrent_claims_and_forgets_balance(store, tmp_path):
    (tmp_path / "file").touch()

    def worker():
        for _ in range(200):
            inode = _claim(store, store.root.fd, "file")
            store.forget(inode.nodeid, 1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store) == 1  # every lookup was forgotten again


def test_strategies_hold_inodes_as_their_names_say(store, tmp_path):
    (tmp_path / "file").write_bytes(b"data")
    inode = _claim(store, store.root.fd, "file")
    assert (inode.handle is not None) == (store.handles is not HandleUse.NEVER)
    assert os.stat(inode.fd).st_ino == os.stat(tmp_path / "file").st_ino
    used = store.fd_budget.used
    assert used == (1 if store.handles is HandleUse.NEVER else 0), "one descriptor per fd inode"


def test_an_adopted_inode_is_held_and_found_as_a_looked_up_one(store, tmp_path):
    """A migrated inode keeps the source's node id and count, costs a descriptor only where a
    lookup would, and a later lookup of the same file counts on it."""
    (tmp_path / "file").write_bytes(b"data")
    adopted = store.adopt(7, os.open(tmp_path / "file", O_PATH_FLAGS), 3)
    assert (adopted.nodeid, adopted.refcount) == (7, 3) and store.get(7) is adopted
    assert (adopted.handle is not None) == (store.handles is not HandleUse.NEVER)
    assert store.fd_budget.used == (1 if store.handles is HandleUse.NEVER else 0)
    assert _claim(store, store.root.fd, "file") is adopted and adopted.refcount == 4


def test_a_handle_inode_survives_rename_and_stays_one_node(store, tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"data")
    inode = _claim(store, store.root.fd, "file")
    os.rename(tmp_path / "file", tmp_path / "dir" / "moved")
    assert os.stat(inode.fd).st_ino == os.stat(tmp_path / "dir" / "moved").st_ino
    folder = _claim(store, store.root.fd, "dir")
    folder_fd = folder.fd
    assert _claim(store, folder_fd, "moved") is inode and inode.refcount == 2
    assert _claim(store, folder_fd, "..") is store.root, "the root is found again by its ids"


def test_handle_inode_of_a_deleted_file_is_stale_and_not_confused_with_a_new_one(tmp_path):
    store = make_store("mandatory", tmp_path)
    try:
        (tmp_path / "file").touch()
        old = _claim(store, store.root.fd, "file")
        os.unlink(tmp_path / "file")
        with pytest.raises(OSError) as info:
            old.fd
        assert info.value.errno == errno.ESTALE
        (tmp_path / "file").touch()  # may well get the same inode number
        assert _claim(store, store.root.fd, "file") is not old
    finally:
        store.close()


def test_budget_spent_answers_enfile_and_forget_gives_it_back(tmp_path):
    store = InodeStore.open_shared_dir(str(tmp_path), HandleUse.NEVER)
    store.fd_budget = FdBudget(2)
    try:
        for name in "abc":
            (tmp_path / name).touch()
        a = _claim(store, store.root.fd, "a")
        _claim(store, store.root.fd, "b")
        open_before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(FuseError) as info:
            _claim(store, store.root.fd, "c")
        assert info.value.errno == errno.ENFILE
        assert len(os.listdir("/proc/self/fd")) == open_before, "the refused descriptor closed"
        assert _claim(store, store.root.fd, "a") is a, "a known inode costs nothing"
        store.forget(a.nodeid, 2)
        del a
        assert _claim(store, store.root.fd, "c").fd >= 0
    finally:
        store.close()


def test_headroom_keeps_descriptors_for_the_daemon():
    assert headroom_for(4096) == 256 and headroom_for(256) == 64 and headroom_for(10**6) == 256
    assert 4096 - headroom_for(4096) == 3840


def test_mount_fds_open_the_mount_root_and_check_it(tmp_path):
    fd = os.open(tmp_path, O_PATH_FLAGS)
    mount_fds = MountFds()
    try:
        mnt_id = ffi.statx(fd, b"", ffi.AT_EMPTY_PATH).mnt_id
        mount_fd = mount_fds.get(mnt_id, fd, 0o040000)
        assert mount_fds.get(mnt_id, fd, 0o040000) == mount_fd and len(mount_fds) == 1
        assert ffi.statx(mount_fd, b"", ffi.AT_EMPTY_PATH).mnt_id == mnt_id
        point = mount_points(open("/proc/self/mountinfo").read())[mnt_id]
        assert os.stat(mount_fd).st_ino == os.stat(point).st_ino, "the mount's root"
        assert not os.O_PATH & int(open(f"/proc/self/fdinfo/{mount_fd}").read().split()[3], 8)
    finally:
        os.close(fd)
        mount_fds.close()


def test_mount_fds_without_mountinfo_use_the_folder_looked_up(tmp_path):
    fd = os.open(tmp_path, O_PATH_FLAGS)
    mount_fds = MountFds(str(tmp_path / "no-mountinfo"))
    try:
        mnt_id = ffi.statx(fd, b"", ffi.AT_EMPTY_PATH).mnt_id
        mount_fd = mount_fds.get(mnt_id, fd, 0o040000)
        assert os.stat(mount_fd).st_ino == os.stat(tmp_path).st_ino
        with pytest.raises(OSError) as info:
            mount_fds.get(mnt_id + 100000, fd, 0o100000)
        assert info.value.errno == errno.ENOENT
    finally:
        os.close(fd)
        mount_fds.close()


def test_mountinfo_parsing_decodes_escapes():
    text = ("27 1 254:0 / / rw - ext4 /dev/vda rw\n"
            "40 27 0:40 / /srv/a\\040b rw - tmpfs tmpfs rw\n")
    assert mount_points(text.replace("\\n", "\n")) == {27: "/", 40: "/srv/a b"}


def test_equal_handles_on_two_mounts_are_two_inodes(tmp_path):
    """A handle is only unique on its file system: the store keys handles by mount id too."""
    store = make_store("mandatory", tmp_path)
    try:
        (tmp_path / "file").touch()
        fd = os.open("file", O_PATH_FLAGS, dir_fd=store.root.fd)
        found = ffi.statx(fd, b"", ffi.AT_EMPTY_PATH)
        handle, mount_fd = store._handle_of(fd, found)
        first = store._claim(fd, found, handle, mount_fd)
        # As if another file system gave an equal handle:
        on_other_mount = found._replace(mnt_id=found.mnt_id + 1)
        fd = os.open("file", O_PATH_FLAGS, dir_fd=store.root.fd)
        second = store._claim(fd, on_other_mount, handle, mount_fd)
        assert second is not first and len(store) == 3
    finally:
        store.close()
