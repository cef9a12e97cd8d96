"""The shared inode store and the ``never`` strategy (O_PATH descriptors)."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from virtiofsd.config import Config, Sandbox
from virtiofsd.errors import ConfigError, FuseError
from virtiofsd_plugins.inode_handles import never
from virtiofsd_plugins.inode_handles.store import O_PATH_FLAGS, InodeKey

ROOT = 1


@pytest.fixture
def store(tmp_path):
    made = never.virtiofsd_make_inode_store(
        config=Config(shared_dir=str(tmp_path), sandbox=Sandbox.NONE))
    yield made
    made.close()


def _claim(store, folder, name):
    fd = os.open(name, O_PATH_FLAGS, dir_fd=folder)
    return store.claim_or_insert(fd, os.stat(fd))


def test_root_is_node_one_and_an_o_path_descriptor(store, tmp_path):
    root = store.get(ROOT)
    assert root.is_dir and root.reopenable
    assert root.key == InodeKey(os.stat(tmp_path).st_dev, os.stat(tmp_path).st_ino, 0)
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
    second = store.claim_or_insert(fd, os.stat(fd))
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
    fd = inode.fd
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
