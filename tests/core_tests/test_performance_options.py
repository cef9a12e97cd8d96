"""What the request-path options do, seen from outside: several request queues, the automatic
thread pool, and hooks resolved once without changing what a plugin sees."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from virtiofsd import hookimpl
from virtiofsd.cli import parse_config
from virtiofsd.config import THREAD_POOL_AUTO
from virtiofsd.errors import ConfigError
from virtiofsd.fuse import abi
from virtiofsd.fuse.abi import ROOT_ID, Opcode
from virtiofsd.manager import make_plugin_manager, resolve_hook
from virtiofsd.testing import FuseClient, running_daemon
from virtiofsd.testing.frontend import VhostUserFrontend
from virtiofsd.vhost_user import messages as vu


@pytest.fixture
def share(tmp_path: Path) -> Path:
    """A shared folder with one file."""
    (tmp_path / "file").write_bytes(b"contents")
    return tmp_path


def _config(*extra: str):
    return parse_config(["--socket-path", "/tmp/unused.sock", "--shared-dir", "/", *extra])[0]


# -- --num-request-queues ------------------------------------------------------------------------


def test_every_request_queue_is_served_and_advertised(command_of, share):
    """With 4 request queues the front-end may set up 5 rings (QEMU checks GET_QUEUE_NUM), the
    config space says 4, and a request on any of them is answered on that ring."""
    with running_daemon(command_of("ours", "--num-request-queues", "4", "--tag", "fs"), share,
                        connect_client=False) as session:
        frontend = VhostUserFrontend.connect(session.socket_path, timeout=10.0)
        frontend.start(num_queues=5)
        with FuseClient(frontend) as fuse:
            assert frontend.queue_num == 5
            config = vu.decode_config(frontend.query(vu.FrontendRequest.GET_CONFIG,
                                                     vu.encode_config(0, bytes(40))))
            assert config.data[36:] == struct.pack("<I", 4)
            fuse.init()
            inode = os.stat(share / "file").st_ino
            for queue in range(1, 5):
                payload = fuse.call(Opcode.LOOKUP, ROOT_ID, b"file\0", abi.ENTRY_OUT.size,
                                    queue=queue)
                assert struct.unpack_from("<Q", payload, 40)[0] == inode, f"queue {queue}"
                assert frontend.queues[queue].read_used_idx() == 1 + (queue == 1), \
                    "answered on the ring it came from (queue 1 also carried INIT)"


def test_one_request_queue_by_default_as_the_rust_daemon(command_of, share):
    with running_daemon(command_of("ours"), share) as session:
        assert session.client.frontend.queue_num == 2


@pytest.mark.parametrize("value", ["0", "65", "x"])
def test_request_queue_count_out_of_range_is_refused(value):
    with pytest.raises((ConfigError, SystemExit)):
        _config("--num-request-queues", value)


# -- --thread-pool-size auto ---------------------------------------------------------------------


def test_thread_pool_size_keeps_its_numbers_and_adds_auto():
    assert _config().thread_pool_size == 0, "no pool by default, as the Rust daemon"
    assert _config("--thread-pool-size", "8").thread_pool_size == 8
    assert _config("--thread-pool-size", "auto").thread_pool_size == THREAD_POOL_AUTO


@pytest.mark.parametrize("value", ["-1", "many"])
def test_thread_pool_size_refuses_what_is_neither_a_count_nor_auto(value, capsys):
    with pytest.raises(SystemExit):
        _config("--thread-pool-size", value)
    assert "thread-pool-size" in capsys.readouterr().err


def test_auto_pool_serves_small_big_and_blocking_requests(command_of, share):
    """In automatic mode a queue mixing small requests, 1 MiB reads waiting behind each other
    and fsyncs (handed to the pool) answers every one of them correctly."""
    data = os.urandom(1 << 20)
    (share / "big").write_bytes(data)
    with running_daemon(command_of("ours", "--thread-pool-size", "auto"), share) as session:
        fuse = session.client
        nodeid = fuse.lookup(ROOT_ID, "big").nodeid
        fh = fuse.open(nodeid, os.O_RDWR).fh
        tickets = []
        for index in range(6):
            tickets.append(("read", fuse.submit(
                Opcode.READ, nodeid, abi.READ_IN.pack(fh, 0, 1 << 20, 0, 0, os.O_RDWR, 0),
                1 << 20, kick=False)))
            tickets.append(("getattr", fuse.submit(
                Opcode.GETATTR, nodeid, abi.GETATTR_IN.pack(0, 0, 0), abi.ATTR_OUT.size,
                kick=False)))
            tickets.append(("fsync", fuse.submit(
                Opcode.FSYNC, nodeid, abi.FSYNC_IN.pack(fh, 0, 0), 0, kick=False)))
        fuse.frontend.queues[1].kick(force=True)
        for kind, ticket in tickets:
            error, payload = fuse.wait(ticket)
            assert error == 0, kind
            if kind == "read":
                assert payload == data
            elif kind == "getattr":
                assert struct.unpack_from("<Q", payload, 16 + 8)[0] == len(data), "attr.size"


# -- hooks resolved once ---------------------------------------------------------------------


class _Statfs:
    @hookimpl
    def virtiofsd_fuse_statfs(self, req, nodeid):
        return b"one"


class _OtherStatfs:
    @hookimpl(tryfirst=True)
    def virtiofsd_fuse_statfs(self, req, nodeid):
        return None


class _PartialStatfs:
    @hookimpl
    def virtiofsd_fuse_statfs(self, req):
        return b"partial"


def test_a_single_implementation_is_called_directly():
    plugin = _Statfs()
    hook = resolve_hook(make_plugin_manager(load_entry_points=False, plugins=[plugin]),
                        "virtiofsd_fuse_statfs")
    assert hook == plugin.virtiofsd_fuse_statfs
    assert hook(req=None, nodeid=1) == b"one"


@pytest.mark.parametrize("plugins", [[_Statfs(), _OtherStatfs()], [_PartialStatfs()], []])
def test_anything_else_keeps_the_pluggy_semantics(plugins):
    pm = make_plugin_manager(load_entry_points=False, plugins=plugins)
    hook = resolve_hook(pm, "virtiofsd_fuse_statfs")
    assert hook is pm.hook.virtiofsd_fuse_statfs
    expected = {2: b"one", 1: b"partial", 0: None}[len(plugins)]
    assert hook(req=None, nodeid=1) == expected


def test_help_names_both_options():
    text = subprocess.run([sys.executable, "-m", "virtiofsd", "--help"], capture_output=True,
                          text=True, check=True, timeout=30).stdout
    assert "--num-request-queues" in text and '"auto"' in text
