"""Fixtures for the passthrough tests: a plugin manager with the passthrough file system over a
fresh folder, called through its hooks exactly as the router calls them."""

from __future__ import annotations

import contextlib
import os
import types
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

import pytest

from virtiofsd.config import Config, Sandbox
from virtiofsd.errors import FuseError
from virtiofsd.fuse.context import Request
from virtiofsd.manager import make_plugin_manager
from virtiofsd_plugins.inode_handles import never
from virtiofsd_plugins.passthrough import plugin, readonly

ROOT = 1


class ListSink:
    """The router's ReplySink stand-in: ``buffers(n)`` hands out views of a local buffer,
    split in ``parts`` pieces to exercise scatter reads."""

    def __init__(self, parts: int = 1) -> None:
        self.parts = parts
        self.buffer = bytearray()

    def buffers(self, size: int) -> list[memoryview]:
        self.buffer = bytearray(size)
        view = memoryview(self.buffer)
        step = max(1, -(-size // self.parts))
        return [view[start:start + step] for start in range(0, size, step)]


class Passthrough:
    """One configured passthrough file system and helpers to call its hooks."""

    def __init__(self, root: Path, session_flags: int = 0, readonly_policy: bool = False,
                 **config_fields: Any) -> None:
        self.root = root
        plugins = [plugin, never] + ([readonly] if readonly_policy else [])
        self.pm = make_plugin_manager(load_entry_points=False, plugins=plugins)
        self.config = Config(shared_dir=str(root), sandbox=Sandbox.NONE, **config_fields)
        self.session = types.SimpleNamespace(flags=session_flags)
        self.pm.hook.virtiofsd_configure(config=self.config, pm=self.pm)
        self.hook = self.pm.hook
        self.state = self.pm.get_plugin("passthrough.entry_ops")._state
        self.inodes = self.state.inodes

    def close(self) -> None:
        self.hook.virtiofsd_unconfigure(config=self.config)

    def req(self, uid: int = 0, gid: int = 0, groups: tuple[int, ...] = ()) -> Request:
        request = Request(unique=1, opcode=0, nodeid=0, uid=uid, gid=gid, pid=1,
                          session=self.session)
        request.supplementary_groups = groups
        return request

    def lookup(self, name: bytes, parent: int = ROOT) -> Any:
        return self.hook.virtiofsd_fuse_lookup(req=self.req(), parent=parent, name=name)

    def open(self, nodeid: int, flags: int = os.O_RDONLY) -> Any:
        return self.hook.virtiofsd_fuse_open(req=self.req(), nodeid=nodeid, flags=flags,
                                             open_flags=0)

    def create(self, name: bytes, flags: int = os.O_RDWR, mode: int = 0o644, parent: int = ROOT,
               req: Request | None = None) -> Any:
        return self.hook.virtiofsd_fuse_create(req=req or self.req(), parent=parent, name=name,
                                               mode=mode, flags=flags, umask=0, open_flags=0)

    def opendir(self, nodeid: int = ROOT) -> int:
        return self.hook.virtiofsd_fuse_opendir(req=self.req(), nodeid=nodeid,
                                                flags=os.O_RDONLY).fh

    def write(self, nodeid: int, fh: int, data: bytes, offset: int = 0, flags: int = 0,
              write_flags: int = 0) -> int:
        return self.hook.virtiofsd_fuse_write(req=self.req(), nodeid=nodeid, fh=fh,
                                              offset=offset, size=len(data),
                                              write_flags=write_flags, flags=flags,
                                              data=[memoryview(data)])

    def read(self, nodeid: int, fh: int, size: int, offset: int = 0, parts: int = 1) -> bytes:
        sink = ListSink(parts)
        count = self.hook.virtiofsd_fuse_read(req=self.req(), nodeid=nodeid, fh=fh,
                                              offset=offset, size=size, flags=0, sink=sink)
        return bytes(sink.buffer[:count])


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    folder = tmp_path / "shared"
    folder.mkdir()
    return folder


@pytest.fixture
def make_fs(shared: Path) -> Iterator[Callable[..., Passthrough]]:
    made: list[Passthrough] = []

    def make(**options: Any) -> Passthrough:
        fs = Passthrough(shared, **options)
        made.append(fs)
        return fs

    yield make
    for fs in reversed(made):
        fs.close()


@pytest.fixture
def fs(make_fs: Callable[..., Passthrough]) -> Passthrough:
    return make_fs()


@pytest.fixture
def expect_errno() -> Callable[[int], Any]:
    """``with expect_errno(errno.ENOENT): ...``: the block must fail with that errno, raised as
    ``FuseError`` or ``OSError`` (both reach the guest as ``-errno``)."""

    @contextlib.contextmanager
    def expect(code: int) -> Iterator[None]:
        with pytest.raises((FuseError, OSError)) as info:
            yield
        assert info.value.errno == code, f"expected errno {code}, got {info.value!r}"

    return expect
